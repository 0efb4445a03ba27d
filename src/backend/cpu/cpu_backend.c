// cpu_backend.c - the CPU implementation of vm_backend: every op runs when
// called, threaded over output rows / attention heads with vm_parallel_for.
#include "../backend.h"
#include "kernels.h"
#include "thread_pool.h"

#include <math.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#ifdef VM_HAVE_OPENBLAS
#include <cblas.h>
#endif
#include <string.h>
#include <unistd.h>

struct vm_buf {
    void *data;
    size_t size;
};

typedef struct cpu_impl {
    vm_thread_pool *pool;
    const vm_cpu_kernels *k;
    float *scratch;        // per-op temporary (group sums, attention scores)
    size_t scratch_floats;
    vm_q8_block *xq;       // activations quantized for the GGUF integer dots
    size_t xq_blocks;
    vm_q8_x8 *x8;          // the same, 8 tokens interleaved (batched kernels)
    size_t x8_blocks;
    int q8_activations;    // 1: GGUF matmuls on 8-bit activations (as llama.cpp); 0: f32
    int repack;            // GGUF weights repacked 8 rows at a time (VLLM_METAL_CPU_REPACK=0: off)
    int tile;              // dense and MLX weights through the tile kernels (VLLM_METAL_CPU_TILE=0: pair by pair)
    int blas;              // steps of more than 64 tokens through OpenBLAS (VLLM_METAL_CPU_BLAS=0: not)
    int prefetch;          // waiting threads fetch the coming matmuls' weights (VLLM_METAL_CPU_PREFETCH=0: not)
    int fuse_attn;         // q/k/v, RoPE, cache write and attention in one job (VLLM_METAL_CPU_FUSE_ATTN=0: not)
    struct pf_queue *pf;   // the prefetch hints (cpu_prefetch; NULL: none yet)
    float *fgsum;          // that job's group sums of x (MLX weights; the scratch holds attention's)
    size_t fgsum_floats;
    float **wtile;         // per thread (n_wtile): a block of weight rows as f32 for sgemm
    int n_wtile;
    size_t wtile_floats;
    // The repacked copies (vm_weight.device points into them), freed with the
    // backend: carved in load order out of large arenas, so that a decode
    // step streams them through few (huge) pages.
    void **rp;             // the arenas
    size_t rp_n, rp_cap;
    size_t arena_used, arena_cap;   // of the last arena
    // cpu_rope's cos/sin table, [rope_n][rot_dim/2][2], for positions rope_pos
    // under rope_key with inverse frequencies rope_inv (rope_n 0: none)
    vm_rope rope_key;
    float *rope_inv;
    int32_t *rope_pos;
    int rope_n;
    float *rope_tab;
    size_t rope_pos_cap, rope_tab_cap, rope_inv_cap;
} cpu_impl;

static cpu_impl *impl_of(vm_backend *be) { return be->impl; }

// ---- prefetch hints ------------------------------------------------------------
//
// Between two matmul jobs of a decode step the caller's thread runs small
// serial ops (a norm, a residual add, quantizing the activations) while the
// workers only wait, and at the end of each job the thread that ran out of
// chunks first waits for the other. The model tells the backend which
// weights the coming matmuls read (cpu_prefetch, in call order); waiting
// threads then fetch into their caches the chunks they will most likely run
// of the first of them whose job has not started: the caller's thread the
// first chunks, worker t the t-th from the end and every (nt-1)-th before it
// (vm_parallel_for's workers claim from the end). A job pops its hint when
// it starts. Only prefetch instructions read the queue's weights, so a slot
// rewritten under a reader costs time, never a wrong number.
#define PF_MAX_THREADS 16
#define PF_SLOTS 8
#define PF_MAX_BYTES ((size_t)256 << 10)   // a thread's share of one hint at most
typedef struct pf_queue {
    struct pf_hint {
        const char *base[2];    // the weights' repacked groups
        size_t gb[2];           // bytes a group of each
        int nw, groups, chunk, n_chunks;
    } slot[PF_SLOTS];           // hint i in slot[i % PF_SLOTS]
    _Atomic unsigned head, tail;   // hints [head, tail) are waiting for their jobs
    int nt;
    struct pf_cursor { unsigned hint; int i, wi; size_t off, bytes; char pad[40]; } cur[PF_MAX_THREADS];
} pf_queue;

static int pf_step(void *ctx, int t) {
    pf_queue *q = ctx;
    if (t < 0 || t >= q->nt || t >= PF_MAX_THREADS) return 0;
    struct pf_cursor *cu = &q->cur[t];
    const unsigned head = atomic_load_explicit(&q->head, memory_order_acquire);
    const unsigned tail = atomic_load_explicit(&q->tail, memory_order_acquire);
    if ((int)(cu->hint - head) < 0) *cu = (struct pf_cursor){ .hint = head };
    for (int lines = 16; lines > 0;) {
        if (cu->hint == tail) return 0;
        const struct pf_hint *h = &q->slot[cu->hint % PF_SLOTS];
        const int ch = t ? h->n_chunks - t - cu->i * (q->nt - 1) : cu->i;
        if ((t ? ch < h->n_chunks / q->nt : ch >= (h->n_chunks + q->nt - 1) / q->nt) || ch < 0 ||
            cu->bytes >= PF_MAX_BYTES) {   // its share done: the next hint
            *cu = (struct pf_cursor){ .hint = cu->hint + 1 };
            continue;
        }
        const size_t lo = (size_t)ch * h->chunk * h->gb[cu->wi];
        const size_t hi = (size_t)VM_MIN((ch + 1) * h->chunk, h->groups) * h->gb[cu->wi];
        for (; lines > 0 && lo + cu->off < hi; lines--, cu->off += 64, cu->bytes += 64)
            __builtin_prefetch(h->base[cu->wi] + lo + cu->off, 0, 2);
        if (lo + cu->off >= hi) {
            cu->off = 0;
            if (++cu->wi == h->nw) { cu->wi = 0; cu->i++; }
        }
    }
    return 1;
}

static size_t repack8_group_bytes(const vm_weight *w);
static int is_gguf_block(vm_dtype t);

// A coming matmul or matmuls call (one token) reads ws (n <= 2, equal rows)
static void cpu_prefetch(vm_backend *be, const vm_weight *const *ws, int n) {
    cpu_impl *c = impl_of(be);
    const int nt = vm_thread_pool_size(c->pool);
    if (!c->prefetch || nt < 2 || nt > PF_MAX_THREADS || n < 1 || n > 2 || !c->q8_activations) return;
    for (int i = 0; i < n; i++)
        if (!ws[i]->device || !is_gguf_block(ws[i]->dtype) || ws[i]->rows != ws[0]->rows || ws[i]->rows % 8) return;
    if (!c->pf) {
        if (!(c->pf = aligned_alloc(64, (sizeof *c->pf + 63) & ~(size_t)63))) return;
        memset(c->pf, 0, sizeof *c->pf);
        c->pf->nt = nt;
    }
    pf_queue *q = c->pf;
    const unsigned tail = atomic_load_explicit(&q->tail, memory_order_relaxed);
    if (tail - atomic_load_explicit(&q->head, memory_order_relaxed) >= PF_SLOTS / 2)   // (full: drop the oldest)
        atomic_store_explicit(&q->head, tail - (PF_SLOTS / 2 - 1), memory_order_release);
    struct pf_hint *h = &q->slot[tail % PF_SLOTS];
    h->nw = n;
    for (int i = 0; i < n; i++) { h->base[i] = ws[i]->device; h->gb[i] = repack8_group_bytes(ws[i]); }
    h->groups = (int)(ws[0]->rows / 8);
    h->chunk = vm_parallel_chunk(c->pool, h->groups, 2);   // (cpu_matmul's and cpu_matmuls' grain)
    h->n_chunks = (h->groups + h->chunk - 1) / h->chunk;
    atomic_store_explicit(&q->tail, tail + 1, memory_order_release);
    vm_thread_pool_idle(c->pool, pf_step, q);
}

// A job over w starts: its hint (and any older) leaves the queue
static void pf_pop(cpu_impl *c, const vm_weight *w) {
    pf_queue *q = c->pf;
    if (!q || !w->device) return;
    const unsigned tail = atomic_load_explicit(&q->tail, memory_order_relaxed);
    for (unsigned i = atomic_load_explicit(&q->head, memory_order_relaxed); i != tail; i++)
        if (q->slot[i % PF_SLOTS].base[0] == (const char *)w->device) {
            atomic_store_explicit(&q->head, i + 1, memory_order_release);
            return;
        }
}

static float *scratch_get(cpu_impl *c, size_t floats) {
    if (floats > c->scratch_floats) {
        float *p = realloc(c->scratch, floats * sizeof(float));
        if (!p) return NULL;
        c->scratch = p;
        c->scratch_floats = floats;
    }
    return c->scratch;
}

static vm_buf *cpu_buf_alloc(vm_backend *be, size_t bytes, vm_err *e) {
    vm_buf *b = calloc(1, sizeof *b);
    if (!b) { vm_errf(e, "out of memory"); return NULL; }
    // 64-byte alignment for SIMD loads, huge pages for large buffers. Not
    // cleared: a large buffer (the KV cache) then costs memory only as pages
    // are first written, and every op writes before it reads.
    b->data = vm_alloc_large(bytes);
    if (!b->data) {
        free(b);
        vm_errf(e, "cannot allocate %zu bytes on the CPU", bytes);
        return NULL;
    }
    b->size = bytes;
    return b;
}

static void cpu_buf_free(vm_backend *be, vm_buf *b) {
    if (!b) return;
    free(b->data);
    free(b);
}

static void cpu_buf_write(vm_backend *be, vm_buf *b, size_t off, const void *src, size_t n) {
    memcpy((char *)b->data + off, src, n);
}

static void cpu_buf_read(vm_backend *be, const vm_buf *b, size_t off, void *dst, size_t n) {
    memcpy(dst, (const char *)b->data + off, n);
}

static void *repack_weight(cpu_impl *c, const vm_weight *w);

static int cpu_weight_prepare(vm_backend *be, vm_weight *w, vm_err *e) {
    switch (w->dtype) {
    case VM_DTYPE_F32: case VM_DTYPE_F16: case VM_DTYPE_BF16:
        return 0;
    case VM_DTYPE_Q4_0: case VM_DTYPE_Q4_1: case VM_DTYPE_Q8_0:
        // matmul operands are repacked at load; w->device is then the copy
        // (struct copies of w, a tied lm_head, share it)
        w->device = !w->gather_only && impl_of(be)->q8_activations ? repack_weight(impl_of(be), w) : NULL;
        return 0;
    case VM_DTYPE_MLX_AFFINE:
        if (w->bits != 2 && w->bits != 4 && w->bits != 8)
            return vm_errf(e, "%s: MLX %d-bit weights are not supported (2, 4 or 8)", w->name, w->bits);
        if (w->group_size <= 0 || w->cols % w->group_size || w->group_size % (32 / w->bits))
            return vm_errf(e, "%s: MLX group_size %d does not divide %lld columns", w->name,
                           w->group_size, (long long)w->cols);
        return 0;
    default:
        return vm_errf(e, "%s: dtype %s cannot be used as a matrix", w->name, vm_dtype_name(w->dtype));
    }
}

// ---- embedding ------------------------------------------------------------

static void cpu_embed(vm_backend *be, const vm_weight *table, const vm_buf *tokens, int n, vm_buf *out) {
    const int32_t *ids = tokens->data;
    float *o = out->data;
    for (int t = 0; t < n; t++) {
        int32_t id = ids[t];
        if (id < 0 || id >= table->rows) { memset(o + (size_t)t * table->cols, 0, (size_t)table->cols * 4); continue; }
        vm_dequant_row(table, id, o + (size_t)t * table->cols);
    }
}

// ---- RMSNorm: out = x / sqrt(mean(x^2) + eps) * w --------------------------

static float vec_get(const vm_tensor *t, int i) { return vm_load_scale(t->dtype, t->data, i); }

typedef struct rmsnorm_job {
    const float *x;
    const float *w;    // [dim] as f32
    float eps;
    int dim;
    float *out;
    const float *y;    // add_rmsnorm: x += y first (x is then written), else NULL
} rmsnorm_job;

// (float)(s / n) for s the f64 sum of the f32 squares x[i] * x[i] in element
// order, the way ggml's RMSNorm sums them, without that order's chain of n
// dependent adds. Eight partial sums side by side give s'. Summed in any
// order, n terms >= 0 (every one 0 or a normal f64: f32 squares are at least
// 2^-149) lie within (n-1)u / (1-(n-1)u) of their exact sum (u = 2^-53), so
// the ordered sum lies within e = n * 2^-50 * s' of s' (four times that bound
// and more). Rounding to f32 is monotonic: where s' - e and s' + e give the
// same f32, that f32 is the ordered sum's. Otherwise (a rounding boundary
// within e: about one call in 2^16 at n = 576), or when s' is not finite, the
// ordered chain runs. Either way the result is the ordered sum's, bit for bit.
static float mean_sq(const float *x, int n) {
    double a[8] = { 0 };
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) a[k] += (double)(x[i + k] * x[i + k]);
    double s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    for (; i < n; i++) s += (double)(x[i] * x[i]);
    const double e = s * ((double)n * 0x1p-50);
    const float lo = (float)((s - e) / n), hi = (float)((s + e) / n);
    if (lo == hi && isfinite(s)) return lo;
    double t = 0;
    for (i = 0; i < n; i++) t += (double)(x[i] * x[i]);
    return (float)(t / n);
}

// out may be x: each element is read before it is written, index by index.
static void rmsnorm_rows(void *ctx, int begin, int end, int thread_index) {
    const rmsnorm_job *j = ctx;
    const int dim = j->dim;
    for (int b = 0; b < dim * 4; b += 64) __builtin_prefetch((const char *)j->w + b, 0, 3);
    for (int r = begin; r < end; r++) {
        const float *xr = j->x + (size_t)r * dim;
        float *orow = j->out + (size_t)r * dim;
        if (j->y) {   // (the add op's sums; x is add_rmsnorm's writable residual stream)
            float *xw = (float *)xr;
            const float *yr = j->y + (size_t)r * dim;
            for (int i = 0; i < dim; i++) xw[i] += yr[i];
        }
        const float inv = 1.0f / sqrtf(mean_sq(xr, dim) + j->eps);
        const float *w = j->w;
#pragma GCC ivdep
        for (int i = 0; i < dim; i++) orow[i] = xr[i] * inv * w[i];
    }
}

static void rmsnorm_run(cpu_impl *c, rmsnorm_job *j, const vm_tensor *w, int rows) {
    const int dim = j->dim;
    if (w->dtype != VM_DTYPE_F32) {   // the weight as f32 (exact), once per call
        float *t = scratch_get(c, (size_t)dim);
        if (!t) { memset(j->out, 0, (size_t)rows * dim * 4); return; }
        for (int i = 0; i < dim; i++) t[i] = vec_get(w, i);
        j->w = t;
    }
    vm_parallel_for(c->pool, rows, VM_MAX(4, 8192 / VM_MAX(dim, 1)), rmsnorm_rows, j);
}

static void cpu_rmsnorm(vm_backend *be, const vm_buf *x, const vm_tensor *w, float eps, int rows,
                        int dim, vm_buf *out) {
    rmsnorm_job j = { x->data, w->data, eps, dim, out->data, NULL };
    rmsnorm_run(impl_of(be), &j, w, rows);
}

// One pass instead of two: the sum's rows are this core's when the norm reads
// them, and the norm weight comes in while the sums are made.
static void cpu_add_rmsnorm(vm_backend *be, vm_buf *x, const vm_buf *y, const vm_tensor *w, float eps, int rows,
                            int dim, vm_buf *out) {
    rmsnorm_job j = { x->data, w->data, eps, dim, out->data, y->data };
    rmsnorm_run(impl_of(be), &j, w, rows);
}

// ---- matmul: out (n, rows) = x (n, cols) @ W^T -----------------------------

typedef struct matmul_job {
    const vm_cpu_kernels *k;
    const vm_weight *w;
    const float *x;
    const float *gsum;   // [n][cols/group]
    const vm_q8_block *xq; // [n][cols/32] when the integer path is used
    const vm_q8_x8 *x8;    // [n/8][cols/32]: tokens 0 .. 8*(n/8)-1 interleaved by 8
    int n, groups;
    float *out;
    const uint8_t *r8;     // the weight repacked 8 rows at a time (vm_q_repack8), or NULL
} matmul_job;

// This kernel set's 8-token (row-major) and repacked one-token kernels for a GGUF type.
typedef void (*dot8_fn)(const void *, const vm_q8_x8 *, int, float *);
typedef void (*gemv8_fn)(const void *, const vm_q8_block *, int, float *);
static dot8_fn dot8_of(const vm_cpu_kernels *k, vm_dtype t) {
    return t == VM_DTYPE_Q4_0 ? k->dot8_q4_0_q8 : t == VM_DTYPE_Q4_1 ? k->dot8_q4_1_q8 : k->dot8_q8_0_q8;
}
static gemv8_fn gemv8_of(const vm_cpu_kernels *k, vm_dtype t) {
    return t == VM_DTYPE_Q4_0 ? k->gemv8_q4_0_q8 : t == VM_DTYPE_Q4_1 ? k->gemv8_q4_1_q8 : k->gemv8_q8_0_q8;
}

static float row_dot(const matmul_job *j, int64_t r, const vm_xrow *xr) {
    const vm_weight *w = j->w;
    const uint8_t *row = (const uint8_t *)w->data + (size_t)r * vm_weight_row_bytes(w);
    switch (w->dtype) {
    case VM_DTYPE_F32: return j->k->dot_f32(row, xr, (int)w->cols);
    case VM_DTYPE_F16: return j->k->dot_f16(row, xr, (int)w->cols);
    case VM_DTYPE_BF16: return j->k->dot_bf16(row, xr, (int)w->cols);
    case VM_DTYPE_Q4_0: return j->k->dot_q4_0(row, xr, (int)w->cols);
    case VM_DTYPE_Q4_1: return j->k->dot_q4_1(row, xr, (int)w->cols);
    case VM_DTYPE_Q8_0: return j->k->dot_q8_0(row, xr, (int)w->cols);
    case VM_DTYPE_MLX_AFFINE: return j->k->dot_mlx(w, r, xr);
    default: return 0;
    }
}

static void matmul_rows_q8(const matmul_job *j, int begin, int end) {
    const vm_weight *w = j->w;
    const int64_t cols = w->cols, rows = w->rows, nb = cols / 32;
    const size_t rb = vm_weight_row_bytes(w);
    float (*dot)(const void *, const vm_q8_block *, int) =
        w->dtype == VM_DTYPE_Q4_0 ? j->k->dot_q4_0_q8 : w->dtype == VM_DTYPE_Q4_1 ? j->k->dot_q4_1_q8 : j->k->dot_q8_0_q8;
    void (*dot4)(const void *, const vm_q8_block *, size_t, int, float *) =
        w->dtype == VM_DTYPE_Q4_0 ? j->k->dot4_q4_0_q8 : w->dtype == VM_DTYPE_Q4_1 ? j->k->dot4_q4_1_q8 : j->k->dot4_q8_0_q8;
    const dot8_fn dot8 = dot8_of(j->k, w->dtype);
    const uint8_t *base = (const uint8_t *)w->data;
    // Tiles of rows (about 24 KiB of weights) x tiles of 16 token groups, so
    // a tile's weights and activations stay in cache while they meet; each
    // group's outputs are gathered per tile and stored as 8 contiguous runs.
    enum { MAX_RT = 64, GT = 16 };
    int rt = (int)(24576 / rb);
    rt = rt < 8 ? 8 : rt > MAX_RT ? MAX_RT : rt;
    const int groups = j->x8 ? j->n / 8 : 0;
    float o[8][MAX_RT];
    for (int g0 = 0; g0 < groups; g0 += GT) {
        const int g1 = g0 + GT < groups ? g0 + GT : groups;
        for (int r0 = begin; r0 < end; r0 += rt) {
            const int r1 = r0 + rt < end ? r0 + rt : end;
            for (int g = g0; g < g1; g++) {
                const vm_q8_x8 *xg = j->x8 + (size_t)g * nb;
                for (int r = r0; r < r1; r++) {
                    float o8[8];
                    dot8(base + (size_t)r * rb, xg, (int)cols, o8);
                    for (int k = 0; k < 8; k++) o[k][r - r0] = o8[k];
                }
                for (int k = 0; k < 8; k++)
                    memcpy(j->out + (size_t)(8 * g + k) * rows + r0, o[k], (size_t)(r1 - r0) * sizeof(float));
            }
        }
    }
    for (int r = begin; r < end; r++) {
        const uint8_t *row = base + (size_t)r * rb;
        int t = 8 * groups;
        for (; t + 4 <= j->n; t += 4) {
            float o[4];
            dot4(row, j->xq + (size_t)t * nb, (size_t)nb, (int)cols, o);
            for (int k = 0; k < 4; k++) j->out[(size_t)(t + k) * rows + r] = o[k];
        }
        for (; t < j->n; t++) j->out[(size_t)t * rows + r] = dot(row, j->xq + (size_t)t * nb, (int)cols);
    }
}

// ---- repacked GGUF weights: items are groups of 8 rows ----

static size_t repack8_group_bytes(const vm_weight *w) { return vm_q_repack8_bytes(w->dtype, 8, w->cols); }

typedef struct repack_job { const vm_weight *w; void *dst; } repack_job;

static void repack_groups(void *ctx, int begin, int end, int thread_index) {
    const repack_job *j = ctx;
    vm_q_repack8(j->w->dtype, j->w->data, j->w->cols, 8 * (int64_t)begin, 8 * (int64_t)end, j->dst);
}

#define REPACK_ARENA ((size_t)32 << 20)

// A repacked copy of w, or NULL to keep the row-major data: no kernel for
// its type, rows not a multiple of 8, or no memory.
static void *repack_weight(cpu_impl *c, const vm_weight *w) {
    size_t bytes = vm_q_repack8_bytes(w->dtype, w->rows, w->cols);
    if (!c->repack || !gemv8_of(c->k, w->dtype) || !c->k->unpack8 || !bytes) return NULL;
    bytes = (bytes + 63) & ~(size_t)63;
    if (!c->rp_n || c->arena_cap - c->arena_used < bytes) {
        if (c->rp_n == c->rp_cap) {
            size_t cap = c->rp_cap ? 2 * c->rp_cap : 16;
            void **t = realloc(c->rp, cap * sizeof *t);
            if (!t) return NULL;
            c->rp = t;
            c->rp_cap = cap;
        }
        size_t cap = VM_MAX(bytes, REPACK_ARENA);
        void *a = vm_alloc_large(cap);
        if (!a) return NULL;
        c->rp[c->rp_n++] = a;
        c->arena_used = 0;
        c->arena_cap = cap;
    }
    void *dst = (uint8_t *)c->rp[c->rp_n - 1] + c->arena_used;
    c->arena_used += bytes;
    repack_job rj = { w, dst };
    vm_parallel_for(c->pool, (int)(w->rows / 8), 64, repack_groups, &rj);
    return dst;
}

// Tiles of 8-row groups (about 24 KiB of weights) x every token, so a tile's
// weights stay in cache across the tokens of a step. Groups of 8 tokens take
// the row-major dot8 on the tile unpacked once (unpack8), the rest gemv8.
static void matmul_groups_r8(void *ctx, int begin, int end, int thread_index) {
    const matmul_job *j = ctx;
    const int64_t cols = j->w->cols, rows = j->w->rows, nb = cols / 32;
    const size_t gb = repack8_group_bytes(j->w), rb = gb / 8;
    const int gt = VM_MAX(1, (int)(24576 / gb)), tgroups = j->x8 ? j->n / 8 : 0;
    const dot8_fn dot8 = dot8_of(j->k, j->w->dtype);
    const gemv8_fn gemv8 = gemv8_of(j->k, j->w->dtype);
    enum { GT = 16 };   // token groups per tile
    uint8_t *rowbuf = tgroups ? malloc((size_t)gt * gb) : NULL;
    for (int g0 = begin; g0 < end; g0 += gt) {
        const int g1 = VM_MIN(g0 + gt, end);
        if (rowbuf) {
            for (int g = g0; g < g1; g++)
                j->k->unpack8(j->w->dtype, j->r8 + (size_t)g * gb, cols, rowbuf + (size_t)(g - g0) * gb);
            for (int tg0 = 0; tg0 < tgroups; tg0 += GT)
                for (int r = 0; r < 8 * (g1 - g0); r++)
                    for (int tg = tg0; tg < VM_MIN(tg0 + GT, tgroups); tg++) {
                        float o8[8];
                        dot8(rowbuf + (size_t)r * rb, j->x8 + (size_t)tg * nb, (int)cols, o8);
                        for (int t = 0; t < 8; t++) j->out[(size_t)(8 * tg + t) * rows + 8 * g0 + r] = o8[t];
                    }
        }
        for (int t = 8 * tgroups; t < j->n; t++)
            for (int g = g0; g < g1; g++)
                gemv8(j->r8 + (size_t)g * gb, j->xq + (size_t)t * nb, (int)cols, j->out + (size_t)t * rows + 8 * g);
    }
    free(rowbuf);
}

// Quantizes the activations for the integer dots: item i < n/8 is token
// group i (also interleaved into x8), the item after them the tail tokens.
static void quantize_rows(void *ctx, int begin, int end, int thread_index) {
    const matmul_job *j = ctx;
    const int64_t cols = j->w->cols, nb = cols / 32;
    const int groups = j->x8 ? j->n / 8 : 0;
    vm_q8_block *xq = (vm_q8_block *)j->xq;
    for (int i = begin; i < end; i++) {
        int t0 = i < groups ? 8 * i : 8 * groups, t1 = i < groups ? t0 + 8 : j->n;
        for (int t = t0; t < t1; t++) j->k->quantize_q8(j->x + (size_t)t * cols, xq + (size_t)t * nb, (int)cols);
        if (i < groups) vm_q8_pack8(xq + (size_t)t0 * nb, (size_t)nb, (int)nb, (vm_q8_x8 *)j->x8 + (size_t)i * nb);
    }
}

static void matmul_rows(void *ctx, int begin, int end, int thread_index) {
    const matmul_job *j = ctx;
    if (j->xq) { matmul_rows_q8(j, begin, end); return; }
    const int64_t cols = j->w->cols, rows = j->w->rows;
    for (int r = begin; r < end; r++) {
        for (int t = 0; t < j->n; t++) {
            vm_xrow xr = { j->x + (size_t)t * cols, j->gsum ? j->gsum + (size_t)t * j->groups : NULL };
            j->out[(size_t)t * rows + r] = row_dot(j, r, &xr);
        }
    }
}

// Dense and MLX affine weights against several tokens (prefill, decode
// batches): items are blocks of TILE_ROWS rows, each run against the tokens
// in blocks that stay in L2 (about 256 KiB of activations), through the
// kernel set's register-blocked matmul_tile / matmul_tile_mlx (the same bits
// as row_dot, pair by pair).
#define TILE_ROWS 32
static void matmul_tiles(void *ctx, int begin, int end, int thread_index) {
    const matmul_job *j = ctx;
    const int64_t cols = j->w->cols, rows = j->w->rows;
    const size_t rb = vm_weight_row_bytes(j->w);
    int tb = (int)(((size_t)256 << 10) / ((size_t)cols * 4)) & ~1;
    tb = VM_MAX(2, VM_MIN(tb, j->n));
    const int r0 = begin * TILE_ROWS, r1 = (int)VM_MIN((int64_t)end * TILE_ROWS, rows);
    for (int t0 = 0; t0 < j->n; t0 += tb) {
        if (j->w->dtype == VM_DTYPE_MLX_AFFINE)
            j->k->matmul_tile_mlx(j->w, r0, r1 - r0, j->x + (size_t)t0 * cols, (size_t)cols,
                                  j->gsum + (size_t)t0 * j->groups, (size_t)j->groups, VM_MIN(tb, j->n - t0),
                                  j->out + (size_t)t0 * rows + r0, (size_t)rows);
        else
            j->k->matmul_tile(j->w->dtype, (const uint8_t *)j->w->data + (size_t)r0 * rb, rb, r1 - r0,
                              j->x + (size_t)t0 * cols, (size_t)cols, VM_MIN(tb, j->n - t0), (int)cols,
                              j->out + (size_t)t0 * rows + r0, (size_t)rows);
    }
}

#ifdef VM_HAVE_OPENBLAS
// Steps of more than 64 tokens (prefill chunks) through OpenBLAS's sgemm, one
// thread of it per item of ours: items are blocks of weight rows (blas_rows);
// f16, bf16 and MLX affine rows are widened to f32 first (each thread's
// wtile), which costs 1/(2n) of the block's multiply-adds. Its sums run in
// another order than the dot kernels', so a token's last bits differ between
// steps of more and of at most 64 tokens, as on the Vulkan backend's GEMM;
// steps of at most 64 tokens (decode batches) stay bit-identical to one token
// alone.
#define BLAS_MIN_TOKENS 65
// rows an item: about two items a thread (sgemm packs x again for every
// item); rows widened to f32 first at most about 4 MiB of them (a large
// vocabulary's lm_head would otherwise want hundreds of MiB a thread)
static int blas_rows(const cpu_impl *c, const vm_weight *w) {
    int64_t per = w->rows / (2 * vm_thread_pool_size(c->pool));
    per = VM_MAX(64, (per + 15) / 16 * 16);
    if (w->dtype != VM_DTYPE_F32) per = VM_MIN(per, VM_MAX(64, ((int64_t)4 << 20) / (w->cols * 4) / 16 * 16));
    return (int)per;
}
static int blas_tiles_ready(cpu_impl *c, size_t floats) {
    if (floats <= c->wtile_floats) return 1;
    for (int i = 0; i < c->n_wtile; i++) {
        float *p = realloc(c->wtile[i], floats * sizeof(float));
        if (!p) return 0;   // the old (smaller) buffers stay valid
        c->wtile[i] = p;
    }
    c->wtile_floats = floats;
    return 1;
}
typedef struct { const matmul_job *j; cpu_impl *c; int block; } blas_job;
static void matmul_blas(void *ctx, int begin, int end, int thread_index) {
    const matmul_job *j = ((const blas_job *)ctx)->j;
    cpu_impl *c = ((const blas_job *)ctx)->c;
    const int block = ((const blas_job *)ctx)->block;
    const int64_t cols = j->w->cols, rows = j->w->rows;
    for (int item = begin; item < end; item++) {
        const int r0 = item * block, nr = (int)VM_MIN((int64_t)block, rows - r0);
        const float *wf;
        if (j->w->dtype == VM_DTYPE_F32) {
            wf = (const float *)j->w->data + (size_t)r0 * cols;
        } else {
            float *t = c->wtile[thread_index];
            for (int r = 0; r < nr; r++) vm_dequant_row(j->w, r0 + r, t + (size_t)r * cols);
            wf = t;
        }
        // out (n x rows, this block's columns) = x (n x cols) . wf (nr x cols)^T
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->n, nr, (int)cols, 1.0f, j->x, (int)cols, wf,
                    (int)cols, 0.0f, j->out + r0, (int)rows);
    }
}
#endif

static int is_gguf_block(vm_dtype t) { return t == VM_DTYPE_Q4_0 || t == VM_DTYPE_Q4_1 || t == VM_DTYPE_Q8_0; }

// Quantizes j's n activation rows of w->cols for the integer dots: j->xq,
// and j->x8 for the 8-token groups (NULL without memory for it: every token
// then takes the one-token kernels). -1: no memory at all.
static int q8_prepare(cpu_impl *c, matmul_job *j, const vm_weight *w, int n) {
    size_t nb = (size_t)(w->cols / 32), need = nb * n;
    if (need > c->xq_blocks) {
        vm_q8_block *p = realloc(c->xq, need * sizeof *p);
        if (!p) return -1;
        c->xq = p;
        c->xq_blocks = need;
    }
    j->xq = c->xq;
    if (n >= 8) {
        size_t need8 = nb * (size_t)(n / 8);
        if (need8 > c->x8_blocks) {
            free(c->x8);
            c->x8 = aligned_alloc(64, (need8 * sizeof *c->x8 + 63) & ~(size_t)63);
            c->x8_blocks = c->x8 ? need8 : 0;
        }
        j->x8 = c->x8;
    }
    // 8-token groups (quantized, then interleaved) and the tail tokens
    int items = j->x8 ? n / 8 + (n % 8 != 0) : 1;
    if (items > 1 && (size_t)n * nb >= 1024) vm_parallel_for(c->pool, items, 1, quantize_rows, j);
    else quantize_rows(j, 0, items, 0);
    return 0;
}

static void cpu_matmul(vm_backend *be, const vm_weight *w, const vm_buf *x, int n, vm_buf *out) {
    cpu_impl *c = impl_of(be);
    matmul_job j = { c->k, w, x->data, NULL, NULL, NULL, n, 0, out->data, NULL };
    if (c->q8_activations && is_gguf_block(w->dtype)) {
        if (q8_prepare(c, &j, w, n) != 0) { memset(out->data, 0, (size_t)n * w->rows * 4); return; }
        if ((j.r8 = w->device)) {
            pf_pop(c, w);
            vm_parallel_for(c->pool, (int)(w->rows / 8), 2, matmul_groups_r8, &j);
            return;
        }
        vm_parallel_for(c->pool, (int)w->rows, 16, matmul_rows, &j);
        return;
    }
#ifdef VM_HAVE_OPENBLAS
    if (n >= BLAS_MIN_TOKENS && c->blas && c->wtile &&
        (w->dtype == VM_DTYPE_F32 || w->dtype == VM_DTYPE_F16 || w->dtype == VM_DTYPE_BF16 ||
         w->dtype == VM_DTYPE_MLX_AFFINE)) {
        const int block = blas_rows(c, w);
        if (w->dtype == VM_DTYPE_F32 || blas_tiles_ready(c, (size_t)block * (size_t)w->cols)) {
            blas_job bj = { &j, c, block };
            vm_parallel_for(c->pool, (int)((w->rows + block - 1) / block), 1, matmul_blas, &bj);
            return;
        }
    }
#endif
    if (n >= 2 && c->tile && c->k->matmul_tile &&
        (w->dtype == VM_DTYPE_F32 || w->dtype == VM_DTYPE_F16 || w->dtype == VM_DTYPE_BF16)) {
        vm_parallel_for(c->pool, (int)((w->rows + TILE_ROWS - 1) / TILE_ROWS), 1, matmul_tiles, &j);
        return;
    }
    int group = 0;
    if (w->dtype == VM_DTYPE_Q4_1) group = VM_QK;
    else if (w->dtype == VM_DTYPE_MLX_AFFINE) group = w->group_size;
    if (group) {
        j.groups = (int)(w->cols / group);
        float *gs = scratch_get(c, (size_t)n * j.groups);
        if (!gs) { memset(out->data, 0, (size_t)n * w->rows * 4); return; }
        for (int t = 0; t < n; t++) {
            const float *xr = j.x + (size_t)t * w->cols;
            for (int g = 0; g < j.groups; g++) {
                float s = 0;
                for (int i = 0; i < group; i++) s += xr[g * group + i];
                gs[(size_t)t * j.groups + g] = s;
            }
        }
        j.gsum = gs;
    }
    if (c->tile && c->k->matmul_tile_mlx && w->dtype == VM_DTYPE_MLX_AFFINE) {   // (one token too: rows side by side)
        vm_parallel_for(c->pool, (int)((w->rows + TILE_ROWS - 1) / TILE_ROWS), 1, matmul_tiles, &j);
        return;
    }
    vm_parallel_for(c->pool, (int)w->rows, 16, matmul_rows, &j);
}

// Several repacked weights on one input (q, k, v; gate and up) as one job:
// items are the parts' 8-row groups in turn, or with swiglu (gate, up) group
// g of both, then silu(gate) * up of those rows.
typedef struct multi_job {
    matmul_job part[VM_MATMULS_MAX];   // sharing the quantized activations
    int first[VM_MATMULS_MAX + 1];     // first item of each part; first[count]: all
    int count;
    float *swiglu;
} multi_job;

static void matmul_groups_multi(void *ctx, int begin, int end, int thread_index) {
    const multi_job *m = ctx;
    if (m->swiglu) {
        const matmul_job *g = &m->part[0];
        matmul_groups_r8((void *)g, begin, end, thread_index);
        matmul_groups_r8((void *)&m->part[1], begin, end, thread_index);
        for (int t = 0; t < g->n; t++) {
            const size_t o = (size_t)t * g->w->rows + 8 * (size_t)begin;
            g->k->silu_mul(m->swiglu + o, g->out + o, m->part[1].out + o, 8 * (size_t)(end - begin));
        }
        return;
    }
    for (int i = 0; i < m->count; i++) {
        const int lo = VM_MAX(begin, m->first[i]), hi = VM_MIN(end, m->first[i + 1]);
        if (lo < hi) matmul_groups_r8((void *)&m->part[i], lo - m->first[i], hi - m->first[i], thread_index);
    }
}

static void cpu_swiglu(vm_backend *be, const vm_buf *gate, const vm_buf *up, size_t n, vm_buf *out);

static void cpu_matmuls(vm_backend *be, int count, const vm_weight *const *ws, const vm_buf *x, int n,
                        vm_buf *const *outs, vm_buf *swiglu_out) {
    cpu_impl *c = impl_of(be);
    int one_job = c->q8_activations && count >= 1 && count <= VM_MATMULS_MAX &&
                  (!swiglu_out || (count == 2 && ws[1]->rows == ws[0]->rows));
    for (int i = 0; i < count && one_job; i++)
        one_job = is_gguf_block(ws[i]->dtype) && ws[i]->device && ws[i]->cols == ws[0]->cols;
    if (!one_job) {
        for (int i = 0; i < count; i++) cpu_matmul(be, ws[i], x, n, outs[i]);
        if (swiglu_out) cpu_swiglu(be, outs[0], outs[1], (size_t)n * ws[0]->rows, swiglu_out);
        return;
    }
    multi_job m = { .count = count, .swiglu = swiglu_out ? swiglu_out->data : NULL };
    matmul_job j = { c->k, ws[0], x->data, NULL, NULL, NULL, n, 0, NULL, NULL };
    if (q8_prepare(c, &j, ws[0], n) != 0) {
        for (int i = 0; i < count; i++) memset(outs[i]->data, 0, (size_t)n * ws[i]->rows * 4);
        if (swiglu_out) memset(swiglu_out->data, 0, (size_t)n * ws[0]->rows * 4);
        return;
    }
    for (int i = 0; i < count; i++) {
        m.part[i] = j;
        m.part[i].w = ws[i];
        m.part[i].out = outs[i]->data;
        m.part[i].r8 = ws[i]->device;
        m.first[i + 1] = m.first[i] + (int)(ws[i]->rows / 8);
    }
    pf_pop(c, ws[0]);
    vm_parallel_for(c->pool, swiglu_out ? m.first[1] : m.first[count], 2, matmul_groups_multi, &m);
}

static void cpu_add_bias(vm_backend *be, vm_buf *x, const vm_tensor *bias, int n, int dim) {
    float *xi = x->data;
    for (int t = 0; t < n; t++)
        for (int i = 0; i < dim; i++) xi[(size_t)t * dim + i] += vec_get(bias, i);
}

// ---- RoPE --------------------------------------------------------------------

typedef struct rope_job {
    const vm_cpu_kernels *k;
    float *x;
    const int32_t *pos;
    int n_heads, head_dim;
    const vm_rope *r;
    float *cs_sn;   // [n][2][rot_dim/2]: each token's cos, then sin; made here when `fill` (NULL: no table)
    int fill;
} rope_job;

// The angle of pair i at position pos; *theta carries pos * theta_scale^i
// from pair to pair (start it at pos), the f32 products llama.cpp makes.
static inline float rope_angle(const vm_rope *r, int32_t pos, int i, float *theta) {
    const float angle = r->theta_scale > 0 ? *theta : (float)pos * r->inv_freq[i];
    *theta *= r->theta_scale;
    return angle;
}

static void rope_tokens(void *ctx, int begin, int end, int thread_index) {
    const rope_job *j = ctx;
    const vm_rope *r = j->r;
    const int half = r->rot_dim / 2;
    for (int t = begin; t < end; t++) {
        if (!j->cs_sn) {   // no table (no memory for it): pair by pair
            float theta = (float)j->pos[t];
            for (int i = 0; i < half; i++) {
                const float angle = rope_angle(r, j->pos[t], i, &theta), c = cosf(angle), s = sinf(angle);
                for (int h = 0; h < j->n_heads; h++)
                    vm_generic_rope_rotate_pair(j->x + ((size_t)t * j->n_heads + h) * j->head_dim, i, half, r->interleaved, c, s);
            }
            continue;
        }
        float *cs = j->cs_sn + (size_t)t * half * 2;
        if (j->fill) {
            float theta = (float)j->pos[t];
            for (int i = 0; i < half; i++) {
                const float angle = rope_angle(r, j->pos[t], i, &theta);
                cs[i] = cosf(angle);
                cs[half + i] = sinf(angle);
            }
        }
        // the fused forms of ggml's compiled loop (checked against its output)
        j->k->rope_rotate(j->x + (size_t)t * j->n_heads * j->head_dim, j->n_heads, j->head_dim, cs, cs + half, half,
                          r->interleaved);
    }
}

// Whether cpu_rope's table holds these positions under these parameters.
static int rope_table_holds(const cpu_impl *c, const vm_rope *r, const int32_t *pos, int n) {
    const vm_rope *k = &c->rope_key;
    const size_t half = (size_t)(r->rot_dim / 2);
    return c->rope_n == n && k->rot_dim == r->rot_dim && k->interleaved == r->interleaved &&
           !memcmp(&k->theta_scale, &r->theta_scale, sizeof r->theta_scale) &&
           (r->theta_scale > 0 || (r->inv_freq && !memcmp(c->rope_inv, r->inv_freq, half * 4))) &&
           !memcmp(c->rope_pos, pos, (size_t)n * 4);
}

// The cos/sin table for these positions: c->rope_tab, kept from the last
// call when it holds them (*fill 0), else to be filled (*fill 1); NULL where
// there is no memory for it (pair by pair then).
static float *rope_table(cpu_impl *c, const vm_rope *r, const int32_t *pos, int n, int *fill) {
    const size_t half = (size_t)(r->rot_dim / 2), floats = (size_t)n * half * 2;
    *fill = !rope_table_holds(c, r, pos, n);
    if (*fill) {
        c->rope_n = 0;
        if (half > c->rope_inv_cap) {
            float *f = realloc(c->rope_inv, half * 4);
            if (f) { c->rope_inv = f; c->rope_inv_cap = half; }
        }
        if ((size_t)n > c->rope_pos_cap) {
            int32_t *p = realloc(c->rope_pos, (size_t)n * 4);
            if (p) { c->rope_pos = p; c->rope_pos_cap = (size_t)n; }
        }
        if (floats > c->rope_tab_cap) {
            float *t = realloc(c->rope_tab, floats * 4);
            if (t) { c->rope_tab = t; c->rope_tab_cap = floats; }
        }
    }
    const int table = (size_t)n <= c->rope_pos_cap && floats <= c->rope_tab_cap && half <= c->rope_inv_cap;
    if (*fill && table) {
        memcpy(c->rope_pos, pos, (size_t)n * 4);
        c->rope_key = *r;
        if (r->inv_freq) memcpy(c->rope_inv, r->inv_freq, half * 4);
        c->rope_n = n;
    }
    return table ? c->rope_tab : NULL;
}

// The cos/sin table of the last call's positions is kept: a forward pass
// ropes q and k of every layer at the same positions, so it is made once.
static void cpu_rope(vm_backend *be, vm_buf *x, const vm_buf *positions, int n, int n_heads,
                     int head_dim, const vm_rope *r) {
    cpu_impl *c = impl_of(be);
    int fill;
    float *tab = rope_table(c, r, positions->data, n, &fill);
    rope_job j = { c->k, x->data, positions->data, n_heads, head_dim, r, tab, fill };
    vm_parallel_for(c->pool, n, 4, rope_tokens, &j);
}

// ---- KV cache and paged attention ---------------------------------------------

// A layer's cache is head-major (backend.h): the rows one KV head reads for a
// sequence whose blocks were handed out in order are one run of memory, which
// the hardware prefetchers stream; block-major, they were runs of block_size rows.

// Element offset of row (block, off) of KV head h.
static inline size_t kv_row(size_t n_blocks, int h, int32_t block, int off, int bs, int hd) {
    return (((size_t)h * n_blocks + (size_t)block) * (size_t)bs + (size_t)off) * (size_t)hd;
}

typedef struct cache_job {
    const vm_cpu_kernels *k;
    const float *kx, *vx;
    const vm_attn_meta *m;
    void *kc, *vc;
    size_t n_blocks;
    int n_kv_heads, head_dim;
} cache_job;

// token t's k and v rows of KV head h into the caches at its slot
static void cache_write_row(const cache_job *j, int t, int h) {
    const int32_t slot = ((const int32_t *)j->m->slot_mapping->data)[t];
    if (slot < 0) return;
    const int bs = j->m->block_size, hd = j->head_dim;
    const size_t dst = kv_row(j->n_blocks, h, slot / bs, slot % bs, bs, hd);
    const float *ks = j->kx + ((size_t)t * j->n_kv_heads + h) * hd;
    const float *vs = j->vx + ((size_t)t * j->n_kv_heads + h) * hd;
    if (j->m->kv_dtype == VM_DTYPE_F16) {
        j->k->to_f16((uint16_t *)j->kc + dst, ks, hd);
        j->k->to_f16((uint16_t *)j->vc + dst, vs, hd);
    } else {
        memcpy((float *)j->kc + dst, ks, (size_t)hd * 4);
        memcpy((float *)j->vc + dst, vs, (size_t)hd * 4);
    }
}

static void cache_write_tokens(void *ctx, int begin, int end, int thread_index) {
    const cache_job *j = ctx;
    for (int t = begin; t < end; t++)
        for (int h = 0; h < j->n_kv_heads; h++) cache_write_row(j, t, h);
}

static void cpu_cache_write(vm_backend *be, const vm_buf *k, const vm_buf *v, const vm_attn_meta *m,
                            vm_buf *k_cache, vm_buf *v_cache, int n_kv_heads, int head_dim) {
    cache_job j = { impl_of(be)->k, k->data, v->data, m, k_cache->data, v_cache->data,
                    vm_kv_num_blocks(k_cache->size, m, n_kv_heads, head_dim), n_kv_heads, head_dim };
    vm_parallel_for(impl_of(be)->pool, m->n_tokens, 8, cache_write_tokens, &j);
}

typedef struct attn_job {
    const vm_cpu_kernels *k;
    const vm_attn_meta *m;
    const float *q;
    const void *kc, *vc;
    size_t n_blocks;
    const int32_t *pos, *seq_of_token, *table, *decode_from;
    int n_heads, n_kv_heads, head_dim;
    float scale;
    float *scores;     // [n_threads][attn_scratch_floats()]
    size_t per_thread;
    float *out;
} attn_job;

// Per-thread scratch for one item (the `group` query heads of a KV head, one
// token): per head its scores (padded to 8), q as f16, and 32 partial-sum
// rows of head_dim (f16 cache); then (from attn_rows_at floats on) the K and
// V row pointers of each position.
static size_t attn_score_stride(int max_ctx_len) { return ((size_t)max_ctx_len + 8 + 7) & ~(size_t)7; }
static size_t attn_rows_at(int max_ctx_len, int head_dim, int group) {
    return ((size_t)group * (attn_score_stride(max_ctx_len) + (size_t)head_dim + 32 * (size_t)head_dim) + 15) &
           ~(size_t)15;
}
static size_t attn_scratch_floats(int max_ctx_len, int head_dim, int group) {
    return attn_rows_at(max_ctx_len, head_dim, group) + 2 * (size_t)max_ctx_len * (sizeof(void *) / sizeof(float));
}

// f32 cache: the g query heads that share a KV head over the sequence's
// cached positions (row p at krows[p] / vrows[p]): scores (each K row read
// once for all of them), the softmax through the kernel set's scale_max and
// exp_sum (its exponential, summed in f64), then weights.V, each V row read
// once for all of them.
static void attn_group_f32(const attn_job *j, const float *const *krows, const float *const *vrows, const float *q,
                           int g, int n_ctx, float *scratch, float *o) {
    const vm_cpu_kernels *k = j->k;
    const int hd = j->head_dim;
    const size_t ss = attn_score_stride(j->m->max_ctx_len);
    float *scores = scratch, *inv = scratch + (size_t)g * ss;   // (inv: in the f16 path's q room)
    for (int p = 0; p < n_ctx; p++)
        for (int h = 0; h < g; h++) scores[h * ss + p] = k->vdot(q + (size_t)h * hd, krows[p], hd);
    for (int h = 0; h < g; h++) {
        float *sc = scores + h * ss;
        const float mx = k->scale_max(sc, n_ctx, j->scale);
        inv[h] = (float)(1.0 / k->exp_sum(sc, sc, mx, n_ctx));
    }
    memset(o, 0, (size_t)g * hd * 4);
    for (int p = 0; p < n_ctx; p++)
        for (int h = 0; h < g; h++) k->axpy(o + (size_t)h * hd, scores[h * ss + p] * inv[h], vrows[p], hd);
}

// f16 cache: llama.cpp's CPU attention without flash attention, rounding for
// rounding, for the g query heads (q, o: g rows of head_dim) that share one
// KV head (the kernels convert each K and V row once for all of them). q and
// the softmax weights are rounded to f16; K.q and weights.V are f16 dot
// products whose summation order depends on how llama.cpp ran the token: a
// prompt batch goes through its f16 GEMM (one 8-lane chain per output), a
// single decoded token through its f16 vec_dot (32 partial sums). `single`
// picks the second. Positions past the context count as masked zeros, which
// leave every partial sum unchanged.
#define ATTN_V_AHEAD 32   // (a multiple of 8: dots_f16's row groups stay as they were)
static void attn_group_f16(const attn_job *j, const uint16_t *const *krows, const uint16_t *const *vrows,
                           const float *q, int g, int n_ctx, int single, float *scratch, float *o) {
    const vm_cpu_kernels *k = j->k;
    const vm_attn_meta *m = j->m;
    const int hd = j->head_dim;
    const size_t ss = attn_score_stride(m->max_ctx_len), as = 32 * (size_t)hd;
    float *scores = scratch;
    uint16_t *qh = (uint16_t *)(scratch + (size_t)g * ss);
    float *accs = scratch + (size_t)g * (ss + hd);
    k->to_f16(qh, q, g * hd);
    const int acc32 = single || hd % 8;
    // The scores in runs of ATTN_V_AHEAD positions, asking for the run's V rows
    // meanwhile (into L2, not waited for): weights.V then finds them there
    // instead of waiting on memory row by row, and the K and V streams overlap.
    for (int p0 = 0; p0 < n_ctx; p0 += ATTN_V_AHEAD) {
        const int n = VM_MIN(ATTN_V_AHEAD, n_ctx - p0);
        for (int p = p0; p < p0 + n; p++)
            for (int b = 0; b < 2 * hd; b += 64) __builtin_prefetch((const char *)vrows[p] + b, 0, 2);
        k->dots_f16(krows + p0, n, qh, g, hd, acc32, scores + p0, ss);
    }
    for (int h = 0; h < g; h++) {
        float *sc = scores + h * ss;
        const float mx = k->scale_max(sc, n_ctx, j->scale);   // (max is exact in any order)
        double sum = k->exp_sum(sc, sc, mx, n_ctx);
        k->round_f16(sc, sc, (float)(1.0 / sum), n_ctx);
    }
    // weights.V: lane p % lanes of the reference's partial sums gets position p
    const int lanes = single ? 32 : 8, used = VM_MIN(lanes, n_ctx);
    for (int h = 0; h < g; h++) memset(accs + h * as, 0, (size_t)used * hd * 4);
    k->axpy_lanes_f16(accs, as, scores, ss, g, lanes, 0, vrows, n_ctx, hd);
    for (int h = 0; h < g; h++) {
        float *a = accs + h * as;
        if (used < lanes) memset(a + (size_t)used * hd, 0, (size_t)(lanes - used) * hd * 4);
        k->lanes_sum(o + (size_t)h * hd, a, lanes, hd);   // the reference's order for that many partial sums
    }
}

// One item: the query heads of KV head kvh for token t (item = kvh * n_tokens
// + t). Items run KV head by KV head, so the tokens a thread takes in a row
// mostly share a sequence and KV head: the cache row pointers (f16 cache)
// are then built once and only extended as the context grows.
static void attn_items(void *ctx, int begin, int end, int thread_index) {
    const attn_job *j = ctx;
    const vm_attn_meta *m = j->m;
    const int hd = j->head_dim, group = j->n_heads / j->n_kv_heads, bs = m->block_size;
    float *scratch = j->scores + (size_t)thread_index * j->per_thread;
    const void **krows = (const void **)(scratch + attn_rows_at(m->max_ctx_len, hd, group));
    const void **vrows = krows + m->max_ctx_len;
    const size_t es = m->kv_dtype == VM_DTYPE_F16 ? 2 : 4;   // bytes an element
    int built_seq = -1, built_kvh = -1, built = 0;   // krows/vrows hold positions [0, built) of these
    for (int item = begin; item < end; item++) {
        int kvh = item / m->n_tokens, t = item % m->n_tokens;
        int s = j->seq_of_token[t];
        const int32_t *blocks = j->table + (size_t)s * m->max_blocks_per_seq;
        const float *q = j->q + ((size_t)t * j->n_heads + (size_t)kvh * group) * hd;
        float *o = j->out + ((size_t)t * j->n_heads + (size_t)kvh * group) * hd;
        int n_ctx = j->pos[t] + 1;
        if (s != built_seq || kvh != built_kvh) { built_seq = s; built_kvh = kvh; built = 0; }
        while (built < n_ctx) {   // a block at a time: its rows are hd apart
            const int off0 = built % bs, n = VM_MIN(bs - off0, n_ctx - built);
            const size_t row = kv_row(j->n_blocks, kvh, blocks[built / bs], off0, bs, hd);
            const char *kb = (const char *)j->kc + row * es, *vb = (const char *)j->vc + row * es;
            for (int r = 0; r < n; r++) {
                krows[built + r] = kb + (size_t)r * hd * es;
                vrows[built + r] = vb + (size_t)r * hd * es;
            }
            built += n;
        }
        if (m->kv_dtype == VM_DTYPE_F16) {
            int single = j->decode_from && j->pos[t] >= j->decode_from[s];
            attn_group_f16(j, (const uint16_t *const *)krows, (const uint16_t *const *)vrows, q, group, n_ctx,
                           single, scratch, o);
        } else {
            attn_group_f32(j, (const float *const *)krows, (const float *const *)vrows, q, group, n_ctx, scratch, o);
        }
    }
}

// An attention job over the scratch memory (-1: none to be had).
static int attn_setup(cpu_impl *c, const vm_buf *q, const vm_buf *k_cache, const vm_buf *v_cache,
                      const vm_attn_meta *m, int n_heads, int n_kv_heads, int head_dim, float scale, vm_buf *out,
                      attn_job *j) {
    int nt = vm_thread_pool_size(c->pool);
    size_t per = attn_scratch_floats(m->max_ctx_len, head_dim, n_heads / n_kv_heads);
    size_t need = (size_t)nt * per + (size_t)m->n_tokens;
    float *scratch = scratch_get(c, need);
    if (!scratch) return -1;
    int32_t *seq_of_token = (int32_t *)(scratch + (size_t)nt * per);
    const int32_t *starts = m->seq_start->data;
    for (int s = 0; s < m->n_seqs; s++)
        for (int t = starts[s]; t < starts[s + 1]; t++) seq_of_token[t] = s;
    *j = (attn_job){ c->k, m, q->data, k_cache->data, v_cache->data, vm_kv_num_blocks(k_cache->size, m, n_kv_heads, head_dim),
                     m->positions->data, seq_of_token,
                     m->block_table->data, m->decode_from ? m->decode_from->data : NULL,
                     n_heads, n_kv_heads, head_dim, scale, scratch, per, out->data };
    return 0;
}

static void cpu_attention(vm_backend *be, const vm_buf *q, const vm_buf *k_cache, const vm_buf *v_cache,
                          const vm_attn_meta *m, int n_heads, int n_kv_heads, int head_dim, float scale,
                          vm_buf *out) {
    cpu_impl *c = impl_of(be);
    attn_job j;
    if (attn_setup(c, q, k_cache, v_cache, m, n_heads, n_kv_heads, head_dim, scale, out, &j) != 0) {
        memset(out->data, 0, (size_t)m->n_tokens * n_heads * head_dim * 4);
        return;
    }
    vm_parallel_for(c->pool, m->n_tokens * n_kv_heads, 1, attn_items, &j);
}

// ---- q/k/v, RoPE, cache write and attention in one job ------------------------
//
// A decode step of one sequence has few attention items (3 KV heads on 2
// threads: one thread takes two, the other waits), and each op of the
// attention block is a job that ends when its slowest thread does. Here
// they are one job of units claimed in order: for each KV head g, its q
// heads', k's and v's rows in chunks of 64 (run as cpu_matmul runs them for
// one token: repacked GGUF groups, MLX tiles or dense rows; biases added
// there), and per KV head an item: the q/k norms (Qwen3) and RoPE of its q
// heads and k, the cache write of its k and v, then its attention. Head 0's item comes right after head 0's chunks,
// the others after all chunks: with 3 heads on 2 threads one thread takes
// items 0 and 2, the other the remaining chunks and item 1. An item waits
// (only for chunks claimed before it) until its head's rows are done.
// Every number is the one the separate ops make.
#define FUSE_ROWS 64   // rows a matmul unit (8 repacked groups)
#define FUSE_MAX_KV_HEADS 64
#define FUSE_MAX_UNITS 1024

typedef struct fused_job {
    matmul_job part[3];            // q, k, v
    attn_job at;
    cache_job cw;
    const vm_cpu_kernels *k;
    const vm_rope *rope;
    const float *rope_tab;         // [n][2][half]: cos, then sin
    const vm_tensor *bias[3];      // added to q, k, v rows (or NULL)
    const float *qn, *kn;          // per-head RMSNorm weights of q and k as f32 (or NULL)
    float eps;
    float *q, *kx;
    int n_heads, n_kv_heads, head_dim, group;
    struct fused_unit { int16_t kind, part, g; int lo, hi; } *units;   // kind 0: rows [lo, hi) of part; 1: item g
    _Atomic int *done;             // [n_kv_heads]: rows finished
    int want;                      // rows of one KV head: (group + 2) * head_dim
} fused_job;

static void fused_units(void *ctx, int begin, int end, int thread_index) {
    fused_job *f = ctx;
    for (int u = begin; u < end; u++) {
        const struct fused_unit *un = &f->units[u];
        if (un->kind == 0) {   // rows [lo, hi) of a part, as cpu_matmul runs them for one token
            const matmul_job *mj = &f->part[un->part];
            if (mj->r8)
                matmul_groups_r8((void *)mj, un->lo / 8, un->hi / 8, thread_index);
            else if (mj->w->dtype == VM_DTYPE_MLX_AFFINE)
                mj->k->matmul_tile_mlx(mj->w, un->lo, un->hi - un->lo, mj->x, (size_t)mj->w->cols, mj->gsum,
                                       (size_t)mj->groups, 1, mj->out + un->lo, (size_t)mj->w->rows);
            else
                matmul_rows((void *)mj, un->lo, un->hi, thread_index);
            if (f->bias[un->part])   // (add_bias's sums)
                for (int r = un->lo; r < un->hi; r++) mj->out[r] += vec_get(f->bias[un->part], r);
            atomic_fetch_add_explicit(&f->done[un->g], un->hi - un->lo, memory_order_release);
            continue;
        }
        const int g = un->g, hd = f->head_dim, G = f->group, half = f->rope->rot_dim / 2;
        for (int spin = 1; atomic_load_explicit(&f->done[g], memory_order_acquire) < f->want; spin++)
            if (spin % 256 == 0) sched_yield(); else vm_cpu_relax();
        if (f->qn) {   // rmsnorm_rows on the heads' rows, as cpu_rmsnorm runs it
            rmsnorm_job qj = { f->q, f->qn, f->eps, hd, f->q, NULL };
            rmsnorm_job kj = { f->kx, f->kn, f->eps, hd, f->kx, NULL };
            rmsnorm_rows(&qj, g * G, (g + 1) * G, thread_index);
            rmsnorm_rows(&kj, g, g + 1, thread_index);
        }
        const float *cs = f->rope_tab;   // (one token)
        f->k->rope_rotate(f->q + (size_t)g * G * hd, G, hd, cs, cs + half, half, f->rope->interleaved);
        f->k->rope_rotate(f->kx + (size_t)g * hd, 1, hd, cs, cs + half, half, f->rope->interleaved);
        cache_write_row(&f->cw, 0, g);
        attn_items(&f->at, g, g + 1, thread_index);
    }
}

// How the fused job runs a weight's rows for one token: 1 repacked GGUF
// groups (8-bit activations), 2 MLX affine tiles, 3 dense rows; 0: it does not.
static int fused_kind(const cpu_impl *c, const vm_weight *w) {
    if (c->q8_activations && is_gguf_block(w->dtype)) return w->device ? 1 : 0;
    if (w->dtype == VM_DTYPE_MLX_AFFINE) return c->tile && c->k->matmul_tile_mlx && w->group_size > 0 ? 2 : 0;
    return w->dtype == VM_DTYPE_F32 || w->dtype == VM_DTYPE_F16 || w->dtype == VM_DTYPE_BF16 ? 3 : 0;
}

static int cpu_qkv_attention(vm_backend *be, const vm_weight *const ws[3], const vm_tensor *const bias[3],
                              const vm_tensor *q_norm, const vm_tensor *k_norm, float eps, const vm_buf *x, int n,
                              vm_buf *q, vm_buf *k, vm_buf *v, const vm_rope *rope, const vm_attn_meta *m,
                              vm_buf *k_cache, vm_buf *v_cache, int n_heads, int n_kv_heads, int head_dim, float scale,
                              vm_buf *out) {
    cpu_impl *c = impl_of(be);
    const int nt = vm_thread_pool_size(c->pool), G = n_heads / n_kv_heads;
    const int qr = G * head_dim;   // q rows of a KV head (its k and v rows: head_dim each)
    const int chunk = FUSE_ROWS;
    int fuse = c->fuse_attn && nt > 1 && n == 1 && n_kv_heads < 2 * nt &&
               n_heads == G * n_kv_heads && head_dim % 8 == 0 && rope->rot_dim <= head_dim &&
               n_kv_heads <= FUSE_MAX_KV_HEADS &&
               n_kv_heads * ((qr + chunk - 1) / chunk + 2 * ((head_dim + chunk - 1) / chunk) + 1) <= FUSE_MAX_UNITS;
    int kinds[3] = { 0, 0, 0 }, any_q8 = 0;
    size_t gsum_floats = 0;
    for (int i = 0; i < 3 && fuse; i++) {
        kinds[i] = fused_kind(c, ws[i]);
        fuse = kinds[i] && ws[i]->cols == ws[0]->cols && ws[i]->rows == (int64_t)(i ? n_kv_heads : n_heads) * head_dim;
        any_q8 |= kinds[i] == 1;
        if (kinds[i] == 2) gsum_floats += (size_t)(ws[i]->cols / ws[i]->group_size);
    }
    for (int i = 0; i < 3 && fuse && any_q8; i++) fuse = kinds[i] == 1;   // one activation form for all three
    fuse = fuse && !q_norm == !k_norm;
    gsum_floats += q_norm ? 2 * (size_t)head_dim : 0;   // (and the norms' weights as f32)
    if (fuse && gsum_floats > c->fgsum_floats) {
        float *p = realloc(c->fgsum, gsum_floats * sizeof(float));
        if (p) { c->fgsum = p; c->fgsum_floats = gsum_floats; } else fuse = 0;
    }
    int fill = 0;
    float *tab = fuse ? rope_table(c, rope, m->positions->data, n, &fill) : NULL;
    if (tab && fill) {   // the table's rows (no heads to rotate)
        rope_job rj = { c->k, q->data, m->positions->data, 0, head_dim, rope, tab, 1 };
        rope_tokens(&rj, 0, n, 0);
    }
    attn_job at;
    matmul_job j = { c->k, ws[0], x->data, NULL, NULL, NULL, n, 0, NULL, NULL };
    if (!tab || attn_setup(c, q, k_cache, v_cache, m, n_heads, n_kv_heads, head_dim, scale, out, &at) != 0 ||
        (any_q8 && q8_prepare(c, &j, ws[0], n) != 0))
        return 0;   // the separate ops (the table, if made, holds these positions)
    fused_job f = { .at = at, .k = c->k, .rope = rope, .rope_tab = tab, .bias = { bias[0], bias[1], bias[2] },
                    .eps = eps, .q = q->data, .kx = k->data, .n_heads = n_heads, .n_kv_heads = n_kv_heads,
                    .head_dim = head_dim, .group = G, .want = qr + 2 * head_dim };
    f.cw = (cache_job){ c->k, k->data, v->data, m, k_cache->data, v_cache->data,
                        vm_kv_num_blocks(k_cache->size, m, n_kv_heads, head_dim), n_kv_heads, head_dim };
    vm_buf *outs[3] = { q, k, v };
    float *gs = c->fgsum;
    for (int i = 0; i < 3; i++) {
        f.part[i] = j;
        f.part[i].w = ws[i];
        f.part[i].out = outs[i]->data;
        f.part[i].r8 = kinds[i] == 1 ? ws[i]->device : NULL;
        if (kinds[i] == 2) {   // x's group sums, as cpu_matmul makes them
            const int group = ws[i]->group_size, groups = (int)(ws[i]->cols / group);
            const float *xr = x->data;
            for (int g = 0; g < groups; g++) {
                float s = 0;
                for (int e = 0; e < group; e++) s += xr[g * group + e];
                gs[g] = s;
            }
            f.part[i].gsum = gs;
            f.part[i].groups = groups;
            gs += groups;
        }
    }
    if (q_norm) {   // the norms' weights as f32 (exact), after the group sums
        float *qn = gs, *kn = gs + head_dim;
        for (int i = 0; i < head_dim; i++) { qn[i] = vec_get(q_norm, i); kn[i] = vec_get(k_norm, i); }
        f.qn = qn;
        f.kn = kn;
    }
    _Atomic int done[FUSE_MAX_KV_HEADS];
    struct fused_unit units[FUSE_MAX_UNITS];
    int nu = 0;
    for (int g = 0; g < n_kv_heads; g++) {
        atomic_init(&done[g], 0);
        for (int lo = 0; lo < qr; lo += chunk)
            units[nu++] = (struct fused_unit){ 0, 0, (int16_t)g, g * qr + lo, g * qr + VM_MIN(lo + chunk, qr) };
        for (int part = 1; part < 3; part++)
            for (int lo = 0; lo < head_dim; lo += chunk)
                units[nu++] = (struct fused_unit){ 0, (int16_t)part, (int16_t)g, g * head_dim + lo,
                                                   g * head_dim + VM_MIN(lo + chunk, head_dim) };
        if (g == 0) units[nu++] = (struct fused_unit){ 1, 0, 0, 0, 0 };
    }
    for (int g = 1; g < n_kv_heads; g++) units[nu++] = (struct fused_unit){ 1, 0, (int16_t)g, 0, 0 };
    f.units = units;
    f.done = done;
    vm_parallel_items(c->pool, nu, fused_units, &f);
    return 1;
}

// ---- elementwise ---------------------------------------------------------------

// Elementwise ops over 8-aligned chunks of 4096 elements (SiLU's 8-lane groups stay whole).
#define ELT_CHUNK 4096
typedef struct elt_job {
    const vm_cpu_kernels *k;
    float *out;
    const float *a, *b;
    size_t n;
} elt_job;

static void swiglu_chunks(void *ctx, int begin, int end, int thread_index) {
    const elt_job *j = ctx;
    size_t lo = (size_t)begin * ELT_CHUNK, hi = VM_MIN((size_t)end * ELT_CHUNK, j->n);
    j->k->silu_mul(j->out + lo, j->a + lo, j->b + lo, hi - lo);
}

static void add_chunks(void *ctx, int begin, int end, int thread_index) {
    const elt_job *j = ctx;
    size_t lo = (size_t)begin * ELT_CHUNK, hi = VM_MIN((size_t)end * ELT_CHUNK, j->n);
    for (size_t i = lo; i < hi; i++) j->out[i] += j->b[i];
}

static void cpu_swiglu(vm_backend *be, const vm_buf *gate, const vm_buf *up, size_t n, vm_buf *out) {
    elt_job j = { impl_of(be)->k, out->data, gate->data, up->data, n };
    vm_parallel_for(impl_of(be)->pool, (int)((n + ELT_CHUNK - 1) / ELT_CHUNK), 2, swiglu_chunks, &j);
}

static void cpu_add(vm_backend *be, vm_buf *x, const vm_buf *y, size_t n) {
    elt_job j = { impl_of(be)->k, x->data, NULL, y->data, n };
    vm_parallel_for(impl_of(be)->pool, (int)((n + ELT_CHUNK - 1) / ELT_CHUNK), 4, add_chunks, &j);
}

static void cpu_get_rows(vm_backend *be, const vm_buf *x, const vm_buf *rows, int n_rows, int dim,
                         vm_buf *out) {
    const int32_t *r = rows->data;
    for (int i = 0; i < n_rows; i++)
        memmove((float *)out->data + (size_t)i * dim, (const float *)x->data + (size_t)r[i] * dim,
                (size_t)dim * 4);
}

typedef struct { const vm_buf *x, *params; vm_buf *out; int cols; } sample_job;

static void sample_rows(void *ctx, int begin, int end, int thread_index) {
    (void)thread_index;
    const sample_job *j = ctx;
    int32_t *o = j->out->data;
    for (int i = begin; i < end; i++) {
        float *row = (float *)j->x->data + (size_t)i * j->cols, t = 0;
        double u = 0;
        if (j->params) {
            const char *p = (const char *)j->params->data + (size_t)i * VM_SAMPLE_PARAM_WORDS * 4;
            memcpy(&t, p, 4);
            memcpy(&u, p + 8, 8);
        }
        o[i] = t >= 1e-5f ? vm_draw_u(row, j->cols, t, u) : vm_argmax(row, j->cols);
    }
}

static void cpu_sample(vm_backend *be, const vm_buf *x, int rows, int cols, const vm_buf *params, vm_buf *out) {
    sample_job j = { x, params, out, cols };
    vm_parallel_for(impl_of(be)->pool, rows, 1, sample_rows, &j);
}

static int cpu_sync(vm_backend *be, vm_err *e) { return 0; }

static void cpu_destroy(vm_backend *be) {
    if (!be) return;
    cpu_impl *c = be->impl;
    if (c) {
        vm_thread_pool_free(c->pool);
        free(c->fgsum);
        free(c->pf);
        free(c->scratch);
        free(c->xq);
        free(c->x8);
        for (size_t i = 0; i < c->rp_n; i++) free(c->rp[i]);
        free(c->rp);
        free(c->rope_pos);
        free(c->rope_inv);
        free(c->rope_tab);
        for (int i = 0; i < c->n_wtile; i++) free(c->wtile[i]);
        free(c->wtile);
        free(c);
    }
    free(be);
}

vm_backend *vm_backend_cpu_create(int n_threads, vm_err *e) {
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    vm_backend *be = calloc(1, sizeof *be);
    cpu_impl *c = calloc(1, sizeof *c);
    if (!be || !c) { free(be); free(c); vm_errf(e, "out of memory"); return NULL; }
    c->pool = vm_thread_pool_create(n_threads);
    if (!c->pool) { free(be); free(c); vm_errf(e, "cannot start %d threads", n_threads); return NULL; }
    c->k = vm_cpu_kernels_select();
    const char *q8 = getenv("VLLM_METAL_Q8_ACTIVATIONS");
    c->q8_activations = !(q8 && strcmp(q8, "0") == 0);
    const char *rp = getenv("VLLM_METAL_CPU_REPACK");
    c->repack = !(rp && strcmp(rp, "0") == 0);
    const char *pfe = getenv("VLLM_METAL_CPU_PREFETCH");
    c->prefetch = !(pfe && strcmp(pfe, "0") == 0);
    const char *fa = getenv("VLLM_METAL_CPU_FUSE_ATTN");
    c->fuse_attn = !(fa && strcmp(fa, "0") == 0);
    const char *tl = getenv("VLLM_METAL_CPU_TILE");
    c->tile = !(tl && strcmp(tl, "0") == 0);
#ifdef VM_HAVE_OPENBLAS
    // our pool splits the rows; each of its threads runs sgemm on its own
    openblas_set_num_threads(1);
    const char *bl = getenv("VLLM_METAL_CPU_BLAS");
    c->blas = !(bl && strcmp(bl, "0") == 0);
    c->wtile = calloc((size_t)vm_thread_pool_size(c->pool), sizeof *c->wtile);
    c->n_wtile = c->wtile ? vm_thread_pool_size(c->pool) : 0;
#endif
    be->name = "cpu";
    be->impl = c;
    be->buf_alloc = cpu_buf_alloc;
    be->buf_free = cpu_buf_free;
    be->buf_write = cpu_buf_write;
    be->buf_read = cpu_buf_read;
    be->weight_prepare = cpu_weight_prepare;
    be->embed = cpu_embed;
    be->rmsnorm = cpu_rmsnorm;
    be->add_rmsnorm = cpu_add_rmsnorm;
    be->matmul = cpu_matmul;
    be->matmuls = cpu_matmuls;
    be->add_bias = cpu_add_bias;
    be->rope = cpu_rope;
    be->cache_write = cpu_cache_write;
    be->attention = cpu_attention;
    be->qkv_attention = cpu_qkv_attention;
    be->prefetch = cpu_prefetch;
    be->swiglu = cpu_swiglu;
    be->add = cpu_add;
    be->get_rows = cpu_get_rows;
    be->sample = cpu_sample;
    be->sync = cpu_sync;
    be->destroy = cpu_destroy;
    return be;
}
