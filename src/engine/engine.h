// engine.h - the serving engine: vLLM v1 semantics (scheduler, paged KV cache
// with prefix caching, SamplingParams, incremental detokenization) over one
// batched forward pass per step.
//
// Threads: one engine thread steps (vm_engine_start, or call vm_engine_step
// yourself); any thread may submit, abort and read streams. Each request has
// one output stream (vm_stream) that the submitter owns and releases.
#ifndef VM_ENGINE_H
#define VM_ENGINE_H

#include <stdint.h>

#include "../common/common.h"
#include "../model/model.h"
#include "../platform/platform.h"
#include "../vision/vision.h"

// ---------------------------------------------------------------- sampling

// vLLM's SamplingParams. Fill with vm_sampling_params_init, then set fields.
// Arrays are borrowed by vm_engine_submit (it copies them).
typedef struct vm_sampling_params {
    int n;                       // sequences per request (>= 1)
    float temperature;           // 0 = greedy; (0, 0.01) is raised to 0.01 as vLLM does
    float top_p;                 // (0, 1]
    int top_k;                   // -1 or 0 = off, else >= 1
    float min_p;                 // [0, 1]
    float presence_penalty;      // [-2, 2]
    float frequency_penalty;     // [-2, 2]
    float repetition_penalty;    // > 0 (1 = off)
    int has_seed;
    uint64_t seed;
    int max_tokens;              // >= 1; -1 = up to max_model_len
    int min_tokens;              // [0, max_tokens]
    int ignore_eos;
    int logprobs;                // -1 = none, else top-k (0 = only the sampled token)
    int prompt_logprobs;         // -1 = none, else top-k per prompt token
    const char *const *stop; int n_stop;
    const int32_t *stop_token_ids; int n_stop_token_ids;
    const int32_t *logit_bias_ids; const float *logit_bias_values; int n_logit_bias;
    const int32_t *allowed_token_ids; int n_allowed_token_ids; // NULL = all allowed
    const char *const *bad_words; int n_bad_words;
    int skip_special_tokens;     // default 1
    int include_stop_str_in_output;
    int detokenize;              // default 1
} vm_sampling_params;

void vm_sampling_params_init(vm_sampling_params *p);
// vLLM's range checks and messages. vocab_size <= 0 skips the token-id checks;
// max_logprobs < 0 skips the logprobs cap.
int vm_sampling_params_validate(const vm_sampling_params *p, int vocab_size, int max_logprobs,
                                vm_err *e);

// ---------------------------------------------------------------- outputs

typedef enum {
    VM_FINISH_NONE = 0, VM_FINISH_STOP, VM_FINISH_LENGTH, VM_FINISH_ABORT, VM_FINISH_ERROR
} vm_finish_reason;

const char *vm_finish_reason_name(vm_finish_reason r); // "stop", "length", "abort", "error", NULL

typedef struct vm_logprob {
    int32_t token_id;
    float logprob;               // log_softmax of the raw logits
    int rank;                    // 1 = most likely
} vm_logprob;

// Logprobs at one position: entries[0] is the chosen token, then the top-k (by rank).
typedef struct vm_position_logprobs {
    int n;
    vm_logprob *entries;
} vm_position_logprobs;

// One chunk of a request's output stream (deltas since the previous chunk).
typedef struct vm_request_output {
    uint64_t request_id;
    int index;                       // which of the n sequences
    int n_tokens;
    int32_t *token_ids;              // new tokens
    char *text;                      // new text ("" when none); NULL when detokenize=0
    vm_position_logprobs *logprobs;  // [n_tokens] when logprobs >= 0, else NULL
    int n_prompt_logprobs;           // first chunk only: [n_prompt] (entry 0 has n = 0)
    vm_position_logprobs *prompt_logprobs;
    int n_prompt_tokens;
    int n_cached_tokens;             // prompt tokens served by the prefix cache
    int n_output_tokens;             // total so far for this index
    vm_finish_reason finish_reason;  // NONE while running
    char *stop_str;                  // the stop string that ended it, or NULL
    int32_t stop_token_id;           // the stop_token_ids entry that ended it, or -1
    char *error;                     // VM_FINISH_ERROR message
    // timestamps (vm_now_seconds) for metrics
    double arrival_time, scheduled_time, first_token_time, last_token_time, finish_time;
} vm_request_output;

void vm_request_output_free(vm_request_output *o);

// ---------------------------------------------------------------- pluggable pieces

// Text <-> token ids (bound to src/tokenizer by the worker; fakes in tests).
typedef struct vm_text_codec {
    void *ctx;
    // ids: malloc'ed array the caller frees
    int (*encode)(void *ctx, const char *text, int add_special, int32_t **ids, int *n, vm_err *e);
    // malloc'ed UTF-8 text; invalid/incomplete UTF-8 becomes U+FFFD or stays raw bytes
    char *(*decode)(void *ctx, const int32_t *ids, int n, int skip_special);
    void (*destroy)(void *ctx);
} vm_text_codec;

// codec.c: the project's tokenizer as a codec (tokenizer.json beside an HF/MLX
// model, or a GGUF file's vocabulary). NULL + error when there is none.
vm_text_codec *vm_codec_for_model(const char *path, vm_err *e);
// The tokenizer's EOS ids (0 when c is not a tokenizer codec).
int vm_codec_eos_ids(vm_text_codec *c, int32_t *out, int cap);
// The vm_tokenizer behind a codec (NULL for other codecs), e.g. for chat templates.
void *vm_codec_tokenizer(vm_text_codec *c);

// ---------------------------------------------------------------- engine

typedef struct vm_engine_args {
    const char *model;              // path (HF dir, .safetensors, .gguf)
    int block_size;                 // 0: VLLM_METAL_BLOCK_SIZE or 16 (8/16/32/64/128)
    int max_num_seqs;               // 0: 256
    int max_num_batched_tokens;     // 0: 2048 (>= max_num_seqs is not required)
    int max_model_len;              // 0: the model's max_position_embeddings
    int enable_prefix_caching;      // default 1
    int enable_chunked_prefill;     // default 1
    const char *memory_fraction;    // NULL: VLLM_METAL_MEMORY_FRACTION or "auto"
    int num_kv_blocks;              // 0: from the memory budget; else exactly this (incl. block 0)
    int max_logprobs;               // 0: 20
    int n_threads;                  // CPU backend threads, 0 = all cores
    int eos_token_ids[8], n_eos_token_ids; // with an executor; the worker fills these itself
} vm_engine_args;

void vm_engine_args_init(vm_engine_args *a);

typedef struct vm_engine vm_engine;
typedef struct vm_stream vm_stream;

// Loads the model (worker: backend + model + KV cache sized from the memory budget).
vm_engine *vm_engine_create(const vm_engine_args *a, vm_err *e);
// Drives the given executor/codec (the engine takes ownership of both and frees the
// heap-allocated codec struct after codec->destroy; codec may be NULL:
// token ids only). num_kv_blocks must be set.
vm_engine *vm_engine_create_with(const vm_engine_args *a, vm_executor exec, vm_text_codec *codec,
                                 vm_err *e);
void vm_engine_free(vm_engine *eng); // stops the thread, aborts what is left

// The engine's settings after defaults (block size, max_model_len, num blocks, ...).
const vm_engine_args *vm_engine_get_args(const vm_engine *eng);
int vm_engine_num_kv_blocks(const vm_engine *eng);
int vm_engine_vocab_size(const vm_engine *eng);
vm_text_codec *vm_engine_codec(vm_engine *eng);

// ---------------------------------------------------------------- images (VLMs)

// One image for a request: encoded bytes (JPEG/PNG/WebP) or decoded RGB8 pixels.
typedef struct vm_image_input {
    const void *bytes; size_t n_bytes; // encoded, or
    const vm_image *pixels;            // decoded (when bytes is NULL)
} vm_image_input;

// A request's images, preprocessed for the model's vision tower (shared by the
// n sequences of a request; reference-counted). The engine runs the tower once
// per image when it admits the request and keeps the features until it finishes.
typedef struct vm_mm_inputs vm_mm_inputs;

// Whether the engine's model takes images.
int vm_engine_is_vlm(const vm_engine *eng);
int vm_engine_image_token_id(const vm_engine *eng);           // -1: text-only
int vm_engine_vision_token_id(const vm_engine *eng, int end); // vision_start (0) / vision_end (1)
int vm_engine_bos_token_id(const vm_engine *eng);             // the model config's, -1: unknown
// Decodes (bytes) and preprocesses images; NULL + a message naming the image on a
// bad image or a text-only model. max_pixels <= 0: VM_IMAGE_DEFAULT_MAX_PIXELS.
vm_mm_inputs *vm_engine_prepare_images(vm_engine *eng, const vm_image_input *images, int n,
                                       int64_t max_pixels, vm_err *e);
void vm_mm_inputs_release(vm_mm_inputs *mm);
int vm_mm_inputs_count(const vm_mm_inputs *mm);
// 64-bit content hash of image i (pixels + size): the prefix cache's extra key.
uint64_t vm_mm_inputs_hash(const vm_mm_inputs *mm, int i);
// Expands the prompt's image placeholders: each image_token_id run of length 1
// becomes the image's t*h*w/merge^2 tokens (runs already that long are kept).
// Errors when the number of runs is not the number of images. *out: malloc'ed.
int vm_mm_expand_prompt(const vm_mm_inputs *mm, const int32_t *ids, int n, int32_t **out,
                        int *n_out, vm_err *e);
// vm_engine_submit with images (mm may be NULL): expands the prompt's image
// placeholders, computes the M-RoPE positions and takes a reference on mm.
vm_stream *vm_engine_submit_mm(vm_engine *eng, const char *text, const int32_t *ids, int n_ids,
                               vm_mm_inputs *mm, const vm_sampling_params *p, vm_err *e);

// Submits a prompt (token ids, or text when ids is NULL) -> stream (NULL + error on
// validation failure: bad params, prompt longer than max_model_len, empty prompt).
vm_stream *vm_engine_submit(vm_engine *eng, const char *text, const int32_t *ids, int n_ids,
                            const vm_sampling_params *p, vm_err *e);
uint64_t vm_stream_id(const vm_stream *s);
// Next output chunk; blocks up to timeout_s (< 0: forever). NULL when the stream has ended
// (every sequence finished and read) or on timeout (then vm_stream_finished() says 0).
vm_request_output *vm_stream_next(vm_stream *s, double timeout_s);
int vm_stream_finished(vm_stream *s);
// Asks the engine to abort; blocks are freed at its next step; a final chunk
// with finish_reason abort follows.
void vm_stream_abort(vm_stream *s);
// Drops the caller's reference (aborts the request if still running).
void vm_stream_release(vm_stream *s);
int vm_engine_abort(vm_engine *eng, uint64_t request_id); // 0 if found

// One scheduling step + forward + sampling. Returns the number of requests
// scheduled (0 when idle), -1 on error.
int vm_engine_step(vm_engine *eng, vm_err *e);
int vm_engine_has_work(vm_engine *eng);
// Background stepping thread.
int vm_engine_start(vm_engine *eng, vm_err *e);
void vm_engine_stop(vm_engine *eng);

typedef struct vm_engine_stats {
    int num_running, num_waiting;
    int num_kv_blocks, num_free_blocks;
    double kv_usage;                 // fraction of usable blocks in use (0..1)
    uint64_t prefix_cache_queries, prefix_cache_hits; // in tokens, as vLLM counts
    uint64_t num_preemptions;
    uint64_t prompt_tokens, generation_tokens;
    uint64_t num_steps, requests_finished;
} vm_engine_stats;
void vm_engine_get_stats(vm_engine *eng, vm_engine_stats *st);

// Offline helper: runs n prompts (text or ids) together to completion with the
// engine stepping on the calling thread. outs[i] gets the whole output of prompt i
// (index 0 only; all tokens and text concatenated). Returns 0 or -1.
typedef struct vm_offline_result {
    int n_tokens;
    int32_t *token_ids;
    char *text;
    vm_finish_reason finish_reason;
    int n_cached_tokens;
    vm_position_logprobs *logprobs;  // [n_tokens] or NULL
} vm_offline_result;
int vm_engine_generate(vm_engine *eng, int n, const char *const *texts, const int32_t *const *ids,
                       const int *n_ids, const vm_sampling_params *p, vm_offline_result *outs,
                       vm_err *e);
// vm_engine_generate with images: mm[i] (may be NULL) for prompt i.
int vm_engine_generate_mm(vm_engine *eng, int n, const char *const *texts, const int32_t *const *ids,
                          const int *n_ids, vm_mm_inputs *const *mm, const vm_sampling_params *p,
                          vm_offline_result *outs, vm_err *e);
void vm_offline_result_free(vm_offline_result *r);

// CLI entry points (argv[0] is the subcommand name).
int vm_cli_generate(int argc, char **argv);
int vm_cli_throughput(int argc, char **argv);

#endif
