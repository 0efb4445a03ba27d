// engine_internal.h - the engine's modules as they see each other:
// KV block pool (kv_cache.c), requests + scheduler (scheduler.c),
// sampler (sampler.c), incremental detokenizer (detok.c).
#ifndef VM_ENGINE_INTERNAL_H
#define VM_ENGINE_INTERNAL_H

#include <stdbool.h>

#include "engine.h"

bool vm_engine_is_threaded(const vm_engine *eng);

// ---------------------------------------------------------------- KV block pool

typedef struct vm_kv_block {
    int ref;                 // requests holding it
    int prev_free, next_free; // free queue links (-1 = none); in_free says membership
    bool in_free;
    bool cached;             // has a hash and is in the hash table
    uint64_t hash, parent_hash;
    int hash_next;           // bucket chain
} vm_kv_block;

typedef struct vm_kv_pool {
    int num_blocks, block_size;
    bool enable_caching;
    vm_kv_block *blocks;
    int32_t *block_tokens;   // [num_blocks * block_size]: token ids of cached blocks (to verify hits)
    int free_head, free_tail, num_free;
    int *buckets; int n_buckets; // hash -> first block id (-1)
    uint64_t queries, hits;  // prefix cache counters, in tokens
} vm_kv_pool;

vm_kv_pool *vm_kv_pool_create(int num_blocks, int block_size, bool enable_caching, vm_err *e);
void vm_kv_pool_free(vm_kv_pool *p);
// Takes n blocks from the head of the free queue (evicting their cached hashes).
// Returns 0, or -1 (nothing taken) when fewer than n are free.
int vm_kv_pool_alloc(vm_kv_pool *p, int n, int *out);
// Drops one reference of each block; blocks reaching 0 go to the free queue's tail
// in reverse order (a request's last blocks are evicted first).
void vm_kv_pool_release(vm_kv_pool *p, const int *ids, int n);
// Cached block with this hash/parent/tokens, or -1.
int vm_kv_pool_lookup(vm_kv_pool *p, uint64_t hash, uint64_t parent, const int32_t *tokens);
// Takes a reference on a block found by lookup (removing it from the free queue if idle).
void vm_kv_pool_touch(vm_kv_pool *p, int id);
// Records that full block `id` holds tokens with this hash (no-op if the hash is present).
void vm_kv_pool_cache(vm_kv_pool *p, int id, uint64_t hash, uint64_t parent, const int32_t *tokens);
int vm_kv_pool_num_free(const vm_kv_pool *p);
double vm_kv_pool_usage(const vm_kv_pool *p);
void vm_kv_pool_reset_cache(vm_kv_pool *p); // forget every cached hash (blocks stay where they are)

// hash(parent, tokens[0..n), extra keys) -> 64-bit chain hash (never 0)
uint64_t vm_block_hash(uint64_t parent, const int32_t *tokens, int n, const uint64_t *extra,
                       int n_extra);

// ---------------------------------------------------------------- detokenizer

typedef struct vm_seq_detok {
    int prefix_offset, read_offset; // into ids (prompt tail + outputs)
    int32_t *ids; int n_ids, cap_ids;
    char *text; size_t len, cap;      // full output text so far (after stop truncation)
    size_t emitted;                   // bytes handed out
    int stop_buffer;                  // bytes held back for stop strings (max stop len - 1)
} vm_seq_detok;

void vm_seq_detok_init(vm_seq_detok *d, const int32_t *prompt, int n_prompt, int stop_buffer);
void vm_seq_detok_free(vm_seq_detok *d);
// Adds one token (decode=0 just records it). Returns the stop index into
// stops[] matched (text truncated), or -1.
int vm_seq_detok_add(vm_seq_detok *d, vm_text_codec *c, int32_t tok, int skip_special, int decode,
                 const char *const *stops, int n_stops, int include_stop);
// Text ready to emit (finished: everything). Returns a malloc'ed string.
char *vm_seq_detok_take(vm_seq_detok *d, bool finished);

// ---------------------------------------------------------------- images (mm.c)

typedef struct vm_mm_image {
    float *pixels; int n_patches;   // pixel_values, freed once encoded
    int grid_thw[3];
    int n_tokens;                   // t*h*w / merge^2 image-pad tokens
    uint64_t hash;                  // sha256 of (width, height, RGB) -> 64 bits
    float *features;                // (n_tokens, feature_dim) once encoded
} vm_mm_image;

struct vm_mm_inputs {
    int refs;                       // atomic (__atomic builtins)
    int n_images;
    vm_mm_image *images;
    int image_token_id, merge_size;
    bool encoded;                   // engine thread only
};

vm_mm_inputs *vm_mm_inputs_retain(vm_mm_inputs *mm);
vm_mm_inputs *vm_mm_prepare(const vm_vision_info *vi, const vm_image_input *images, int n,
                            int64_t max_pixels, vm_err *e);
// Runs the executor's vision tower over every image of mm that has no features yet.
int vm_mm_encode(vm_mm_inputs *mm, const vm_executor *ex, vm_err *e);

// ---------------------------------------------------------------- requests

typedef enum { VM_REQ_WAITING, VM_REQ_RUNNING, VM_REQ_FINISHED } vm_req_status;

typedef struct vm_rng { uint64_t s[4]; } vm_rng;
void vm_rng_seed(vm_rng *r, uint64_t seed);
double vm_rng_uniform(vm_rng *r); // [0, 1)

typedef struct vm_token_seq { int32_t *ids; int n; } vm_token_seq;

typedef struct vm_request {
    uint64_t id;
    int index;               // 0..n-1 within its stream
    struct vm_stream *stream;
    // sampling params (deep copy)
    vm_sampling_params sp;
    char **stop; int32_t *stop_ids; int32_t *bias_ids; float *bias_vals; int32_t *allowed;
    vm_token_seq *bad_words; int n_bad_words;
    int max_tokens;          // resolved
    // tokens: prompt then outputs
    int32_t *tokens; int n_tokens, cap_tokens, n_prompt;
    int n_computed;          // tokens whose KV is in the cache
    int n_cached;            // prompt tokens found in the prefix cache (first schedule)
    bool counted_cache;
    int *blocks; int n_blocks, cap_blocks;
    // images (NULL/0 for text requests): M-RoPE positions of the prompt [3][n_prompt],
    // and each image's first pad token and count (prefix-cache extra keys)
    vm_mm_inputs *mm;
    int32_t *mrope_pos; int32_t rope_delta;
    int *image_offset, *image_tokens;
    const float **image_features;
    uint64_t *hashes; int n_hashes, cap_hashes; // chain hashes of the full blocks of tokens
    vm_req_status status;
    bool aborted;
    int num_preemptions;
    vm_rng rng;
    vm_seq_detok detok;
    // output state not yet delivered
    int n_pending_from;      // first output token not yet sent
    vm_position_logprobs *lp; int n_lp, cap_lp; // per output token (all, index = output pos)
    vm_position_logprobs *plp; int n_plp;       // prompt logprobs [n_prompt]
    bool plp_sent;
    vm_finish_reason finish;
    int stop_str_index; int32_t stop_token;
    double arrival_time, scheduled_time, first_token_time, last_token_time, finish_time;
} vm_request;

// ---------------------------------------------------------------- scheduler

typedef struct vm_sched_config {
    int max_num_seqs, max_num_batched_tokens, max_model_len;
    bool chunked_prefill;
} vm_sched_config;

typedef struct vm_scheduled {
    vm_request *req;
    int n_new;               // tokens computed this step
    int start;               // n_computed before the step
} vm_scheduled;

typedef struct vm_scheduler {
    vm_sched_config cfg;
    vm_kv_pool *pool;
    vm_request **running; int n_running, cap_running;
    vm_request **waiting; int n_waiting, cap_waiting; // FCFS (front = index 0)
    vm_scheduled *step; int n_step, cap_step;
    uint64_t num_preemptions;
} vm_scheduler;

vm_scheduler *vm_scheduler_create(const vm_sched_config *cfg, vm_kv_pool *pool, vm_err *e);
void vm_scheduler_free(vm_scheduler *s);
int vm_scheduler_add(vm_scheduler *s, vm_request *r);
// Picks this step's work into s->step. Returns the count.
int vm_scheduler_schedule(vm_scheduler *s);
// After the forward pass: advances n_computed of everything scheduled.
void vm_scheduler_update(vm_scheduler *s);
// Removes a request from running/waiting and frees its blocks.
void vm_scheduler_finish(vm_scheduler *s, vm_request *r);
// Chain hashes of r's full blocks up to n_full_blocks (computed lazily).
void vm_request_hashes(vm_request *r, int block_size, int n_full_blocks);

// ---------------------------------------------------------------- sampler

typedef struct vm_sample_ctx {
    int vocab_size;
    const int32_t *eos_ids; int n_eos;
    float *scratch;          // [vocab] work rows
    float *scratch2;
    int *idx;                // [vocab]
} vm_sample_ctx;

// log_softmax of row into out (length vocab)
void vm_log_softmax(const float *row, int n, float *out);
// logprobs entry for token `chosen` plus the top-k of lsm
void vm_logprobs_fill(const float *lsm, int n, int32_t chosen, int k, vm_position_logprobs *out);
// Applies every logits processor, penalty and truncation to logits (in place) as
// vLLM v1 does and draws a token. logits: one raw row of vocab floats.
int32_t vm_sample_row(vm_sample_ctx *c, vm_request *r, float *logits);
// True when vm_sample_row would use the raw logits as they are and only draw
// (the argmax for temperature 0, else vm_draw_row with no min_p/top-k/top-p)
// and nothing else is asked of them (no logprobs, bias, penalties, allowed or
// bad words, min_tokens in force): the backend can draw such a row itself.
bool vm_sample_is_plain(const vm_request *r, int vocab);
// One plain row's parameters for vm_backend.sample (VM_SAMPLE_PARAM_WORDS
// words): greedy leaves them 0; a draw takes the temperature and the next
// uniform of the request's own generator (what vm_sample_row would draw).
typedef struct vm_sample_param {
    float temperature;       // 0: argmax
    float u32;               // u for GPUs
    double u;                // u for the CPU (vm_draw_u's exact token)
} vm_sample_param;
void vm_sample_param_make(vm_request *r, vm_sample_param *q);
// Draws from softmax(x / temperature) with rng (one uniform); x is overwritten
// with the unnormalized probabilities. Tokens at -inf are never drawn.
int32_t vm_draw_row(float *x, int n, float temperature, vm_rng *rng);
// The individual steps (exposed for tests).
void vm_apply_penalties(float *logits, int vocab, const int32_t *prompt, int n_prompt,
                        const int32_t *out, int n_out, float presence, float frequency,
                        float repetition);
void vm_apply_top_k_top_p(float *logits, int vocab, int top_k, float top_p, int *idx);
void vm_apply_min_p(float *logits, int vocab, float min_p);

#endif
