// backend.h - the compute interface the model code talks to.
//
// A backend owns device buffers (vm_buf) and runs ops on them. The CPU backend
// runs each op when called; a GPU backend records the same calls into a
// command list and submits at vm_backend->sync(). Only the model runner moves
// data across (buf_write / buf_read): token ids and metadata in, logits (or
// sampled ids) out. Activations are f32 rows unless said otherwise.
#ifndef VM_BACKEND_H
#define VM_BACKEND_H

#include "../loader/weights.h"

typedef struct vm_buf vm_buf;
typedef struct vm_backend vm_backend;

// Rotary embedding parameters (per-pair inverse frequencies precomputed by the model).
typedef struct vm_rope {
    int rot_dim;            // rotated dims per head (== head_dim for our models)
    const float *inv_freq;  // [rot_dim/2]
    int interleaved;        // 1: rotate pairs (2i, 2i+1) (GGUF llama layout);
                            // 0: rotate (i, i+rot_dim/2) (HF "rotate_half" layout)
    float theta_scale;      // > 0: angles as pos * theta_scale^i by repeated f32
                            // multiplication (how llama.cpp computes them, used for
                            // GGUF models); 0: pos * inv_freq[i]
} vm_rope;

// One step's flat batch, as attention sees it. Tokens of a sequence are
// contiguous in the batch; the KV cache holds blocks of block_size positions.
typedef struct vm_attn_meta {
    int n_tokens, n_seqs;
    int block_size, max_blocks_per_seq;
    int max_ctx_len;
    const vm_buf *positions;    // i32 [n_tokens]
    const vm_buf *seq_start;    // i32 [n_seqs+1]: tokens of seq s are [seq_start[s], seq_start[s+1])
    const vm_buf *ctx_len;      // i32 [n_seqs]: KV length of seq s including this step's tokens
    const vm_buf *block_table;  // i32 [n_seqs * max_blocks_per_seq]
    const vm_buf *slot_mapping; // i32 [n_tokens]: block*block_size + offset, or -1 to skip
    vm_dtype kv_dtype;          // F32 or F16
    // i32 [n_seqs], or NULL: positions >= decode_from[s] are tokens generated one
    // at a time. With an F16 cache the CPU backend sums such tokens' attention in
    // the order llama.cpp uses for a one-token batch, and every other token in
    // the order of its prompt-batch GEMM (results then match llama.cpp's bit for bit).
    const vm_buf *decode_from;
} vm_attn_meta;

#define VM_SAMPLE_PARAM_WORDS 4
#define VM_MATMULS_MAX 3

// KV cache layer layout: [n_kv_heads][num_blocks][block_size][head_dim] of kv_dtype
// (head-major: one KV head's rows of a sequence whose blocks were handed out in
// order are one run of memory). With an F16 cache, attention rounds q and the
// softmax weights to f16 as well (the arithmetic of llama.cpp's default f16
// cache, the reference for GGUF).
// num_blocks of a layer's K or V buffer of `bytes`:
static inline size_t vm_kv_num_blocks(size_t bytes, const vm_attn_meta *m, int n_kv_heads, int head_dim) {
    const size_t elem = m->kv_dtype == VM_DTYPE_F16 ? 2 : 4;
    return bytes / ((size_t)n_kv_heads * (size_t)m->block_size * (size_t)head_dim * elem);
}

struct vm_backend {
    const char *name;
    void *impl;

    vm_buf *(*buf_alloc)(vm_backend *be, size_t bytes, vm_err *e);
    void (*buf_free)(vm_backend *be, vm_buf *b);
    void (*buf_write)(vm_backend *be, vm_buf *b, size_t off, const void *src, size_t n);
    void (*buf_read)(vm_backend *be, const vm_buf *b, size_t off, void *dst, size_t n);
    // Make a weight usable by this backend (GPU: upload; CPU: check the dtype is supported).
    int (*weight_prepare)(vm_backend *be, vm_weight *w, vm_err *e);

    // out (n, dim) = rows of table for tokens (i32 [n])
    void (*embed)(vm_backend *be, const vm_weight *table, const vm_buf *tokens, int n, vm_buf *out);
    // out (rows, dim) = x / rms(x) * w   (w: F32/F16/BF16 vector [dim]); out may equal x
    void (*rmsnorm)(vm_backend *be, const vm_buf *x, const vm_tensor *w, float eps, int rows,
                    int dim, vm_buf *out);
    // Optional (NULL: add, then rmsnorm): x (rows, dim) += y, then out = x / rms(x) * w, the
    // numbers the two ops give; out is not x (the residual stream and its norm).
    void (*add_rmsnorm)(vm_backend *be, vm_buf *x, const vm_buf *y, const vm_tensor *w, float eps, int rows,
                        int dim, vm_buf *out);
    // out (n, W.rows) = x (n, W.cols) @ W^T
    void (*matmul)(vm_backend *be, const vm_weight *w, const vm_buf *x, int n, vm_buf *out);
    // Optional (NULL: the model calls matmul for each weight, then swiglu).
    // count (<= VM_MATMULS_MAX) weights of equal cols on one input:
    // outs[i] (n, ws[i]->rows) = x @ ws[i]^T, the same numbers count matmul
    // calls give; with swiglu_out (count 2, equal rows; it may be outs[0])
    // also swiglu_out = silu(outs[0]) * outs[1], as the swiglu op.
    void (*matmuls)(vm_backend *be, int count, const vm_weight *const *ws, const vm_buf *x, int n,
                    vm_buf *const *outs, vm_buf *swiglu_out);
    // Optional (NULL): a hint, queued in call order, that a coming matmul or
    // matmuls call of one token reads ws (n <= 2); a backend may bring them
    // in with threads that would otherwise wait. Changes no number.
    void (*prefetch)(vm_backend *be, const vm_weight *const *ws, int n);
    // Optional (NULL, or a return of 0 before anything is written: the model
    // calls the ops below one by one). A layer's attention block with one
    // RoPE: q, k, v = x @ ws^T (ws: q, k, v), plus bias[i] where not NULL
    // (add_bias); q and k rmsnormed per head where q_norm / k_norm are not
    // NULL (eps); RoPE of q and k at m->positions; k and v into the caches;
    // out = attention. The same numbers as those ops, in whatever jobs suit
    // the backend; 1 when done.
    int (*qkv_attention)(vm_backend *be, const vm_weight *const ws[3], const vm_tensor *const bias[3],
                          const vm_tensor *q_norm, const vm_tensor *k_norm, float eps, const vm_buf *x, int n,
                          vm_buf *q, vm_buf *k, vm_buf *v, const vm_rope *rope, const vm_attn_meta *m,
                          vm_buf *k_cache, vm_buf *v_cache, int n_heads, int n_kv_heads, int head_dim, float scale,
                          vm_buf *out);
    // x (n, dim) += bias [dim]
    void (*add_bias)(vm_backend *be, vm_buf *x, const vm_tensor *bias, int n, int dim);
    // rotate x (n, n_heads, head_dim) in place at positions (i32 [n])
    void (*rope)(vm_backend *be, vm_buf *x, const vm_buf *positions, int n, int n_heads,
                 int head_dim, const vm_rope *r);
    // write k, v (n_tokens, n_kv_heads, head_dim) into the caches at slot_mapping
    void (*cache_write)(vm_backend *be, const vm_buf *k, const vm_buf *v, const vm_attn_meta *m,
                        vm_buf *k_cache, vm_buf *v_cache, int n_kv_heads, int head_dim);
    // causal paged attention: out (n_tokens, n_heads, head_dim); query token t of seq s
    // at position p attends cache positions [0, p] of s. GQA: head h reads kv head h/(n_heads/n_kv_heads).
    void (*attention)(vm_backend *be, const vm_buf *q, const vm_buf *k_cache, const vm_buf *v_cache,
                      const vm_attn_meta *m, int n_heads, int n_kv_heads, int head_dim, float scale,
                      vm_buf *out);
    // out (n) = silu(gate) * up
    void (*swiglu)(vm_backend *be, const vm_buf *gate, const vm_buf *up, size_t n, vm_buf *out);
    // x (n) += y (n)
    void (*add)(vm_backend *be, vm_buf *x, const vm_buf *y, size_t n);
    // out (n_rows, dim) = x[rows[i]]   (rows: i32 [n_rows])
    void (*get_rows)(vm_backend *be, const vm_buf *x, const vm_buf *rows, int n_rows, int dim,
                     vm_buf *out);
    // out (i32 [rows]) = one token id per row of x (rows, cols), which may be
    // overwritten. params: NULL, or per row 4 words (VM_SAMPLE_PARAM_WORDS)
    // {temperature f32, u f32, u f64}: a temperature below 1e-5 (or no params)
    // takes the index of the first maximum (vm_argmax: NaNs never win, a row of
    // NaNs gives 0); else the inverse CDF of softmax(x / temperature) at u in
    // [0, 1) (vm_draw_u; the CPU uses the f64 u and gives vm_draw_u's token
    // exactly, a GPU sums in f32 in its own order). Steps whose rows all draw
    // this way read back ids instead of logits.
    void (*sample)(vm_backend *be, const vm_buf *x, int rows, int cols, const vm_buf *params, vm_buf *out);
    // Finish everything queued so far.
    int (*sync)(vm_backend *be, vm_err *e);
    void (*destroy)(vm_backend *be);
};

// CPU backend; n_threads <= 0 picks the number of online cores.
vm_backend *vm_backend_cpu_create(int n_threads, vm_err *e);

#endif
