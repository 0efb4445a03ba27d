// platform.h - what sits between the engine and the model: configuration from
// the environment and the memory budget (platform.c), the worker that owns the
// backend, the model and its KV cache (worker.c), and the model runner that
// turns one scheduler step into one flat batch (model_runner.c).
#ifndef VM_PLATFORM_H
#define VM_PLATFORM_H

#include <stdint.h>

#include "../common/common.h"
#include "../model/model.h"
#include "../vision/vision.h"

// What a vision-language executor tells the engine about its image side.
typedef struct vm_vision_info {
    vm_vision_preproc preproc;
    int image_token_id, vision_start_token_id, vision_end_token_id;
    int merge_size;
    int feature_dim;           // = the decoder's hidden size
} vm_vision_info;

// The forward pass the engine drives (the worker's model, or a fake one in tests).
// forward: KV for the batch's slots is written; logits [n_logits, vocab_size] filled.
// Vision-language models also set vision, encode_image and forward_mm
// (vm_model_forward_embeds: image features at embed_rows, M-RoPE positions).
typedef struct vm_executor {
    void *ctx;
    int vocab_size;
    int max_position_embeddings;
    int (*forward)(void *ctx, const vm_batch *b, float *logits, vm_err *e);
    void (*destroy)(void *ctx);
    int device_sample;            // forward honours vm_batch.ids_out / sample_params
    const vm_vision_info *vision; // NULL: text-only
    // one image's pixel_values -> features (n_features, feature_dim), malloc'ed
    int (*encode_image)(void *ctx, const float *pixels, const int grid_thw[3], float **features,
                        int *n_features, vm_err *e);
    int (*forward_mm)(void *ctx, const vm_batch *b, const float *embeds, const int32_t *embed_rows,
                      int n_embeds, const int32_t *mrope_pos, float *logits, vm_err *e);
} vm_executor;

// ---------------------------------------------------------------- platform.c

// Block size from VLLM_METAL_BLOCK_SIZE (default 16); -1 + error if not 8/16/32/64/128.
// The compute backend VLLM_MLX_DEVICE asks for: "gpu" (default) takes a
// hardware Vulkan device when there is one and falls back to the CPU with a
// warning otherwise (lavapipe is never preferred over the CPU;
// VLLM_METAL_VULKAN_DEVICE names a device explicitly, lavapipe included);
// "cpu" forces the CPU backend. Any other value is an error.
vm_backend *vm_platform_create_backend(int n_threads, vm_err *e);

int vm_platform_block_size(int requested, vm_err *e);
int vm_platform_valid_block_size(int bs);
uint64_t vm_platform_physical_memory(void);
uint64_t vm_platform_available_memory(void); // MemAvailable, or physical when unknown

// Number of KV blocks (including reserved block 0) for the budget.
// fraction: "auto" or "0.x" (NULL: VLLM_METAL_MEMORY_FRACTION, default "auto").
//  auto: weights + KV for max_model_len * max_num_seqs, capped by available memory.
//  0.x : that fraction of physical memory for weights + KV.
// Fails (with how much was needed and which setting to change) when not even one
// max_model_len sequence fits.
int vm_platform_kv_blocks(const char *fraction, uint64_t weight_bytes, size_t block_bytes,
                          int block_size, int max_model_len, int max_num_seqs, vm_err *e);

// ---------------------------------------------------------------- model_runner.c

// One sequence of a step: compute positions [start, start + n_new) of tokens.
typedef struct vm_runner_seq {
    const int32_t *tokens;   // the sequence's whole token list
    int start, n_new;
    const int *blocks; int n_blocks; // block table
    int logits_from;         // positions [logits_from, start + n_new) need logits
    int decode_from;         // positions >= decode_from are generated tokens (vm_batch.decode_from)
    // vision-language requests (NULL/0 otherwise)
    const int32_t *mrope_pos; int n_mrope; // [3][n_mrope] prompt positions (t, h, w)
    int32_t rope_delta;                    // position of token i >= n_mrope: i + rope_delta
    int n_images;
    const int *image_offset, *image_tokens; // prompt index of each image's first pad token, count
    const float *const *image_features;     // [n_images] (image_tokens[i], feature_dim)
} vm_runner_seq;

typedef struct vm_model_runner vm_model_runner;
vm_model_runner *vm_model_runner_create(int block_size, int vocab_size, vm_err *e);
void vm_model_runner_free(vm_model_runner *r);
// Packs the step into one vm_batch and runs ex->forward once. *logits points to
// [n_logits, vocab] rows in sequence order (owned by the runner, valid until the next call);
// with want_ids, the rows are drawn on the backend instead (vm_batch.ids_out,
// sample_params: NULL or VM_SAMPLE_PARAM_WORDS words per row): *logits is NULL and
// *ids points to one token id per row; else *ids is NULL.
int vm_model_runner_execute(vm_model_runner *r, const vm_executor *ex, const vm_runner_seq *seqs,
                            int n_seqs, int want_ids, const void *sample_params, float **logits,
                            int32_t **ids, int *n_logits, vm_err *e);

// ---------------------------------------------------------------- worker.c

typedef struct vm_worker_config {
    const char *model;
    int block_size, max_model_len, max_num_seqs, max_num_batched_tokens;
    const char *memory_fraction;
    int num_kv_blocks;       // 0 = from the budget
    int n_threads;
} vm_worker_config;

typedef struct vm_worker_info {
    int num_kv_blocks;
    int max_model_len;       // resolved (model's max_position_embeddings when 0)
    int vocab_size;
    int eos_token_ids[8], n_eos_token_ids;
    int bos_token_id;
} vm_worker_info;

// Builds the CPU backend, loads the model, sizes and creates the KV cache, and
// returns an executor owning all of it.
int vm_worker_create(const vm_worker_config *cfg, vm_executor *out, vm_worker_info *info, vm_err *e);

#endif
