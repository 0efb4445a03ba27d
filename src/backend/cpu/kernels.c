// kernels.c - generic C reference kernels: plain loops, one value at a time.
#include "kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static float dot_f32(const void *w, const vm_xrow *x, int n) {
    const uint8_t *p = w;
    float s = 0;
    for (int i = 0; i < n; i++) { float v; memcpy(&v, p + 4 * (size_t)i, 4); s += v * x->x[i]; }
    return s;
}

static float dot_f16(const void *w, const vm_xrow *x, int n) {
    const uint8_t *p = w;
    float s = 0;
    for (int i = 0; i < n; i++) s += vm_f16_to_f32(vm_load_u16(p + 2 * (size_t)i)) * x->x[i];
    return s;
}

static float dot_bf16(const void *w, const vm_xrow *x, int n) {
    const uint8_t *p = w;
    float s = 0;
    for (int i = 0; i < n; i++) s += vm_bf16_to_f32(vm_load_u16(p + 2 * (size_t)i)) * x->x[i];
    return s;
}

// Q4_0: byte j of a block holds element j (low nibble) and j+16 (high nibble); w = d*(q-8)
static float dot_q4_0(const void *w, const vm_xrow *x, int n) {
    const vm_block_q4_0 *b = w;
    float s = 0;
    for (int ib = 0; ib < n / VM_QK; ib++) {
        const float *xb = x->x + ib * VM_QK;
        float acc = 0;
        for (int j = 0; j < 16; j++) {
            acc += (float)((b[ib].qs[j] & 0x0f) - 8) * xb[j];
            acc += (float)((b[ib].qs[j] >> 4) - 8) * xb[j + 16];
        }
        s += vm_f16_to_f32(b[ib].d) * acc;
    }
    return s;
}

// Q4_1: w = d*q + m  ->  dot = d*(q.x) + m*sum(x)
static float dot_q4_1(const void *w, const vm_xrow *x, int n) {
    const vm_block_q4_1 *b = w;
    float s = 0;
    for (int ib = 0; ib < n / VM_QK; ib++) {
        const float *xb = x->x + ib * VM_QK;
        float acc = 0;
        for (int j = 0; j < 16; j++) {
            acc += (float)(b[ib].qs[j] & 0x0f) * xb[j];
            acc += (float)(b[ib].qs[j] >> 4) * xb[j + 16];
        }
        s += vm_f16_to_f32(b[ib].d) * acc + vm_f16_to_f32(b[ib].m) * x->gsum[ib];
    }
    return s;
}

static float dot_q8_0(const void *w, const vm_xrow *x, int n) {
    const vm_block_q8_0 *b = w;
    float s = 0;
    for (int ib = 0; ib < n / VM_QK; ib++) {
        const float *xb = x->x + ib * VM_QK;
        float acc = 0;
        for (int j = 0; j < 32; j++) acc += (float)b[ib].qs[j] * xb[j];
        s += vm_f16_to_f32(b[ib].d) * acc;
    }
    return s;
}

// MLX affine: values packed LSB-first in u32 words; w = scale*q + bias per group.
static float dot_mlx(const vm_weight *w, int64_t row, const vm_xrow *x) {
    const int bits = w->bits, gs = w->group_size;
    const int64_t n = w->cols, groups = n / gs;
    const uint8_t *rowp = (const uint8_t *)w->data + (size_t)row * (size_t)(n * bits / 8);
    const uint32_t mask = (1u << bits) - 1;
    const int per_word = 32 / bits;
    float s = 0;
    for (int64_t g = 0; g < groups; g++) {
        float acc = 0;
        for (int64_t i = g * gs; i < (g + 1) * gs; i += per_word) {
            uint32_t word = vm_load_u32(rowp + (size_t)(i / per_word) * 4);
            for (int k = 0; k < per_word; k++) acc += (float)((word >> (k * bits)) & mask) * x->x[i + k];
        }
        float sc = vm_load_scale(w->scale_dtype, w->scales, row * groups + g);
        float bi = vm_load_scale(w->scale_dtype, w->biases, row * groups + g);
        s += sc * acc + bi * x->gsum[g];
    }
    return s;
}

// x -> blocks of 32: d = max|x|/127, q = round(x/d)
static void quantize_q8(const float *x, vm_q8_block *out, int n) {
    for (int ib = 0; ib < n / 32; ib++) {
        const float *xb = x + ib * 32;
        float amax = 0;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(xb[j]));
        float d = amax / 127.0f, id = amax > 0 ? 127.0f / amax : 0.0f;
        int32_t sum = 0;
        for (int j = 0; j < 32; j++) {
            int q = (int)nearbyintf(xb[j] * id);
            out[ib].q[j] = (int8_t)q;
            sum += q;
        }
        out[ib].d = vm_f16_to_f32(vm_f32_to_f16(d));
        out[ib].s = vm_f16_to_f32(vm_f32_to_f16(d * (float)sum));
        out[ib].isum = sum;
    }
}

// One block's term of each 8-bit dot, shared by the single-token and the
// 8-token kernels so both round alike: (d, s, isum, q) are the activation
// block's fields.
static inline float blk_q4_0_q8(const vm_block_q4_0 *b, float d, int32_t isum, const int8_t *q) {
    int32_t acc = 0;
    for (int j = 0; j < 16; j++) acc += (b->qs[j] & 0x0f) * q[j] + (b->qs[j] >> 4) * q[j + 16];
    return vm_f16_to_f32(b->d) * d * (float)(acc - 8 * isum);
}

static inline float blk_q4_1_q8(const vm_block_q4_1 *b, float d, float s, const int8_t *q) {
    int32_t acc = 0;
    for (int j = 0; j < 16; j++) acc += (b->qs[j] & 0x0f) * q[j] + (b->qs[j] >> 4) * q[j + 16];
    return vm_f16_to_f32(b->d) * d * (float)acc + vm_f16_to_f32(b->m) * s;
}

static inline float blk_q8_0_q8(const vm_block_q8_0 *b, float d, const int8_t *q) {
    int32_t acc = 0;
    for (int j = 0; j < 32; j++) acc += b->qs[j] * q[j];
    return vm_f16_to_f32(b->d) * d * (float)acc;
}

static float dot_q4_0_q8(const void *w, const vm_q8_block *x, int n) {
    const vm_block_q4_0 *b = w;
    float s = 0;
    for (int ib = 0; ib < n / 32; ib++) s += blk_q4_0_q8(&b[ib], x[ib].d, x[ib].isum, x[ib].q);
    return s;
}

static float dot_q4_1_q8(const void *w, const vm_q8_block *x, int n) {
    const vm_block_q4_1 *b = w;
    float s = 0;
    for (int ib = 0; ib < n / 32; ib++) s += blk_q4_1_q8(&b[ib], x[ib].d, x[ib].s, x[ib].q);
    return s;
}

static float dot_q8_0_q8(const void *w, const vm_q8_block *x, int n) {
    const vm_block_q8_0 *b = w;
    float s = 0;
    for (int ib = 0; ib < n / 32; ib++) s += blk_q8_0_q8(&b[ib], x[ib].d, x[ib].q);
    return s;
}

static void dot4_q4_0_q8(const void *w, const vm_q8_block *x, size_t xs, int n, float out[4]) {
    for (int t = 0; t < 4; t++) out[t] = dot_q4_0_q8(w, x + t * xs, n);
}
static void dot4_q4_1_q8(const void *w, const vm_q8_block *x, size_t xs, int n, float out[4]) {
    for (int t = 0; t < 4; t++) out[t] = dot_q4_1_q8(w, x + t * xs, n);
}
static void dot4_q8_0_q8(const void *w, const vm_q8_block *x, size_t xs, int n, float out[4]) {
    for (int t = 0; t < 4; t++) out[t] = dot_q8_0_q8(w, x + t * xs, n);
}

static void dot8_q4_0_q8(const void *w, const vm_q8_x8 *x, int n, float out[8]) {
    const vm_block_q4_0 *b = w;
    for (int t = 0; t < 8; t++) {
        float s = 0;
        for (int ib = 0; ib < n / 32; ib++) s += blk_q4_0_q8(&b[ib], x[ib].d[t], x[ib].isum[t], x[ib].q[t]);
        out[t] = s;
    }
}
static void dot8_q4_1_q8(const void *w, const vm_q8_x8 *x, int n, float out[8]) {
    const vm_block_q4_1 *b = w;
    for (int t = 0; t < 8; t++) {
        float s = 0;
        for (int ib = 0; ib < n / 32; ib++) s += blk_q4_1_q8(&b[ib], x[ib].d[t], x[ib].s[t], x[ib].q[t]);
        out[t] = s;
    }
}
static void dot8_q8_0_q8(const void *w, const vm_q8_x8 *x, int n, float out[8]) {
    const vm_block_q8_0 *b = w;
    for (int t = 0; t < 8; t++) {
        float s = 0;
        for (int ib = 0; ib < n / 32; ib++) s += blk_q8_0_q8(&b[ib], x[ib].d[t], x[ib].q[t]);
        out[t] = s;
    }
}

// ---- 8-row repacked GGUF weights (kernels.h) ----

size_t vm_q_repack8_bytes(vm_dtype t, int64_t rows, int64_t cols) {
    if (rows % 8 || cols % VM_QK) return 0;
    size_t groups = (size_t)(rows / 8) * (size_t)(cols / VM_QK);
    switch (t) {
    case VM_DTYPE_Q4_0: return groups * sizeof(vm_block_q4_0x8);
    case VM_DTYPE_Q4_1: return groups * sizeof(vm_block_q4_1x8);
    case VM_DTYPE_Q8_0: return groups * sizeof(vm_block_q8_0x8);
    default: return 0;
    }
}

// Row r's part of one repacked block column (grp, a vm_block_*x8) <-> that
// row's GGUF block (blk): to_group 1 writes the group, 0 reads the row back.
// Every layout leads with d (the GGUF Q4_1 block with d, m; the group with
// d[8], m[8]); the quants follow, 4-byte word k of the row at word r of the
// group's 32-byte chunk k.
static void group_row(vm_dtype t, void *grp, int r, void *blk, int to_group) {
    const int q41 = t == VM_DTYPE_Q4_1, words = t == VM_DTYPE_Q8_0 ? 8 : 4;
    uint16_t *gd = grp, *bd = blk;
    uint8_t *gq = (uint8_t *)grp + (q41 ? 32 : 16), *bq = (uint8_t *)blk + (q41 ? 4 : 2);
    for (int i = 0; i <= q41; i++) {
        if (to_group) gd[8 * i + r] = bd[i];
        else bd[i] = gd[8 * i + r];
    }
    for (int k = 0; k < words; k++) {
        if (to_group) memcpy(gq + 32 * k + 4 * r, bq + 4 * k, 4);
        else memcpy(bq + 4 * k, gq + 32 * k + 4 * r, 4);
    }
}

void vm_q_repack8(vm_dtype t, const void *src, int64_t cols, int64_t r0, int64_t r1, void *dst) {
    const int64_t nb = cols / VM_QK;
    const size_t bsz = vm_dtype_row_bytes(t, VM_QK), gsz = vm_q_repack8_bytes(t, 8, VM_QK);
    for (int64_t row = r0; row < r1; row++)
        for (int64_t ib = 0; ib < nb; ib++)
            group_row(t, (uint8_t *)dst + (size_t)((row / 8) * nb + ib) * gsz, (int)(row % 8),
                      (uint8_t *)src + (size_t)(row * nb + ib) * bsz, 1);
}

void vm_q_unpack8(vm_dtype t, const void *group, int64_t cols, void *rows) {
    const int64_t nb = cols / VM_QK;
    const size_t bsz = vm_dtype_row_bytes(t, VM_QK), gsz = vm_q_repack8_bytes(t, 8, VM_QK);
    for (int r = 0; r < 8; r++)
        for (int64_t ib = 0; ib < nb; ib++)
            group_row(t, (uint8_t *)group + (size_t)ib * gsz, r, (uint8_t *)rows + (size_t)(r * nb + ib) * bsz, 0);
}

// Each row's blocks read back into GGUF form, then summed exactly as the
// row-major dots of this table sum them.
static void gemv8_rows(vm_dtype t, const void *g, const vm_q8_block *x, int n, float out[8]) {
    const size_t gsz = vm_q_repack8_bytes(t, 8, VM_QK);
    for (int r = 0; r < 8; r++) {
        float s = 0;
        for (int ib = 0; ib < n / 32; ib++) {
            union { vm_block_q4_0 a; vm_block_q4_1 b; vm_block_q8_0 c; } w;
            group_row(t, (uint8_t *)g + (size_t)ib * gsz, r, &w, 0);
            s += t == VM_DTYPE_Q4_0 ? blk_q4_0_q8(&w.a, x[ib].d, x[ib].isum, x[ib].q)
               : t == VM_DTYPE_Q4_1 ? blk_q4_1_q8(&w.b, x[ib].d, x[ib].s, x[ib].q) : blk_q8_0_q8(&w.c, x[ib].d, x[ib].q);
        }
        out[r] = s;
    }
}
static void gemv8_q4_0_q8(const void *g, const vm_q8_block *x, int n, float out[8]) { gemv8_rows(VM_DTYPE_Q4_0, g, x, n, out); }
static void gemv8_q4_1_q8(const void *g, const vm_q8_block *x, int n, float out[8]) { gemv8_rows(VM_DTYPE_Q4_1, g, x, n, out); }
static void gemv8_q8_0_q8(const void *g, const vm_q8_block *x, int n, float out[8]) { gemv8_rows(VM_DTYPE_Q8_0, g, x, n, out); }

void vm_q8_pack8(const vm_q8_block *x, size_t xs, int nb, vm_q8_x8 *x8) {
    for (int ib = 0; ib < nb; ib++)
        for (int t = 0; t < 8; t++) {
            const vm_q8_block *b = x + t * xs + ib;
            x8[ib].d[t] = b->d;
            x8[ib].s[t] = b->s;
            x8[ib].isum[t] = b->isum;
            memcpy(x8[ib].q[t], b->q, 32);
        }
}

static float vdot(const float *a, const float *b, int n) {
    float s = 0;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static void axpy(float *y, float a, const float *x, int n) {
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

static void axpy_f16(float *y, float a, const uint16_t *x, int n) {
    for (int i = 0; i < n; i++) y[i] = fmaf(a, vm_f16_to_f32(x[i]), y[i]);
}

// ---- llama.cpp's arithmetic, lane by lane -------------------------------------

static inline float f_of(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t u_of(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

float vm_ggml_expf(float x) {
    const float shift = 0x1.8p23f;
    float z = fmaf(x, 0x1.715476p+0f, shift);          // x / ln2, rounded by the shift
    float n = z - shift;
    float r = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x)); // x - n ln2 (two parts)
    uint32_t e = u_of(z) << 23;
    float k = f_of(e + u_of(1.0f));                    // 2^n for |n| <= 126
    float r2 = r * r;
    float p = fmaf(fmaf(fmaf(0x1.0e4020p-7f, r, 0x1.573e2ep-5f), r2, fmaf(0x1.555e66p-3f, r, 0x1.fffdb6p-2f)),
                   r2, 0x1.ffffecp-1f * r);           // exp(r) - 1
    if (!(fabsf(n) > 126)) return fmaf(p, k, k);
    uint32_t g = n <= 0 ? 0x82000000u : 0;             // split 2^n in two factors
    float s1 = f_of(g + 0x7f000000u), s2 = f_of(e - g);
    if (fabsf(n) > 192) return s1 * s1;               // over/underflow
    return fmaf(s2, p, s2) * s1;
}

float vm_generic_dot_f16_chain8(const uint16_t *a, const uint16_t *b, int n) {
    float acc[8] = { 0 };
    for (int i = 0; i < n; i += 8)
        for (int l = 0; l < 8; l++) acc[l] = fmaf(vm_f16_to_f32(a[i + l]), vm_f16_to_f32(b[i + l]), acc[l]);
    return vm_hsum8(acc);
}

float vm_generic_dot_f16_acc32(const uint16_t *a, const uint16_t *b, int n) {
    float acc[32] = { 0 };
    const int np = n - n % 32;
    for (int i = 0; i < np; i += 32)
        for (int l = 0; l < 32; l++) acc[l] = fmaf(vm_f16_to_f32(a[i + l]), vm_f16_to_f32(b[i + l]), acc[l]);
    float s[8];
    for (int l = 0; l < 8; l++) s[l] = (acc[l] + acc[16 + l]) + (acc[8 + l] + acc[24 + l]);
    float t0 = s[0] + s[4], t1 = s[1] + s[5], t2 = s[2] + s[6], t3 = s[3] + s[7];
    double sum = (t0 + t1) + (t2 + t3);
    for (int i = np; i < n; i++) sum += (double)(vm_f16_to_f32(a[i]) * vm_f16_to_f32(b[i]));
    return (float)sum;
}

float vm_generic_scale_max(float *x, int n, float scale) {
    float m8[8] = { -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY };
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) {
            x[i + l] *= scale;
            m8[l] = x[i + l] > m8[l] ? x[i + l] : m8[l];
        }
    return vm_scale_max_tail(x, i, n, scale, m8);
}

double vm_generic_exp_sum(float *y, const float *x, float max, int n) {
    double sum = 0;
    for (int i = 0; i < n; i += 8) {
        float v[8];
        for (int l = 0; l < 8; l++) v[l] = i + l < n ? vm_ggml_expf(x[i + l] - max) : 0.0f;
        for (int l = 0; l < 8 && i + l < n; l++) y[i + l] = v[l];
        sum += (double)vm_hsum8(v);
    }
    return sum;
}

void vm_generic_silu_mul(float *out, const float *g, const float *u, size_t n) {
    size_t i = 0, nv = n - n % 8;
    for (; i < nv; i++) out[i] = g[i] / (1.0f + vm_ggml_expf(0.0f - g[i])) * u[i];
    for (; i < n; i++) out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

void vm_generic_to_f16(uint16_t *dst, const float *src, int n) {
    for (int i = 0; i < n; i++) dst[i] = vm_f32_to_f16(src[i]);
}

void vm_generic_round_f16(float *dst, const float *src, float scale, int n) {
    for (int i = 0; i < n; i++) dst[i] = vm_f16_to_f32(vm_f32_to_f16(src[i] * scale));
}

void vm_generic_dots_f16(const uint16_t *const *rows, int n, const uint16_t *q, int nq, int hd, int acc32,
                         float *out, size_t ostride) {
    for (int i = 0; i < nq; i++)
        for (int p = 0; p < n; p++) {
            const uint16_t *qi = q + (size_t)i * hd;
            out[i * ostride + p] = acc32 ? vm_generic_dot_f16_acc32(rows[p], qi, hd) : vm_generic_dot_f16_chain8(rows[p], qi, hd);
        }
}

void vm_generic_axpy_lanes_f16(float *acc, size_t astride, const float *w, size_t wstride, int nq, int lanes, int p0,
                               const uint16_t *const *rows, int n, int hd) {
    for (int i = 0; i < nq; i++)
        for (int p = 0; p < n; p++)
            axpy_f16(acc + i * astride + (size_t)((p0 + p) & (lanes - 1)) * hd, w[i * wstride + p], rows[p], hd);
}

void vm_generic_lanes_sum(float *out, const float *acc, int lanes, int hd) {
    for (int d = 0; d < hd; d++) out[d] = vm_lanes_sum_at(acc, lanes, hd, d);
}

void vm_generic_rope_rotate(float *x, int n_heads, int head_dim, const float *cs, const float *sn, int half,
                            int interleaved) {
    for (int h = 0; h < n_heads; h++)
        for (int i = 0; i < half; i++) vm_generic_rope_rotate_pair(x + (size_t)h * head_dim, i, half, interleaved, cs[i], sn[i]);
}

const vm_cpu_kernels vm_kernels_generic = {
    "generic", dot_f32, dot_f16, dot_bf16, dot_q4_0, dot_q4_1, dot_q8_0, dot_mlx,
    quantize_q8, dot_q4_0_q8, dot_q4_1_q8, dot_q8_0_q8,
    dot4_q4_0_q8, dot4_q4_1_q8, dot4_q8_0_q8, dot8_q4_0_q8, dot8_q4_1_q8, dot8_q8_0_q8,
    gemv8_q4_0_q8, gemv8_q4_1_q8, gemv8_q8_0_q8, vm_q_unpack8,
    vdot, axpy, vm_generic_scale_max, vm_generic_exp_sum, vm_generic_silu_mul,
    vm_generic_to_f16, vm_generic_round_f16, vm_generic_dots_f16, vm_generic_axpy_lanes_f16,
    vm_generic_rope_rotate, vm_generic_lanes_sum, NULL, NULL,
};

void vm_dequant_row(const vm_weight *w, int64_t row, float *out) {
    const int64_t n = w->cols;
    const uint8_t *p = (const uint8_t *)w->data + (size_t)row * vm_weight_row_bytes(w);
    switch (w->dtype) {
    case VM_DTYPE_F32: memcpy(out, p, (size_t)n * 4); break;
    case VM_DTYPE_F16: for (int64_t i = 0; i < n; i++) out[i] = vm_f16_to_f32(vm_load_u16(p + 2 * i)); break;
    case VM_DTYPE_BF16: for (int64_t i = 0; i < n; i++) out[i] = vm_bf16_to_f32(vm_load_u16(p + 2 * i)); break;
    case VM_DTYPE_Q4_0: {
        const vm_block_q4_0 *b = (const void *)p;
        for (int64_t ib = 0; ib < n / VM_QK; ib++) {
            float d = vm_f16_to_f32(b[ib].d);
            for (int j = 0; j < 16; j++) {
                out[ib * 32 + j] = d * (float)((b[ib].qs[j] & 0x0f) - 8);
                out[ib * 32 + j + 16] = d * (float)((b[ib].qs[j] >> 4) - 8);
            }
        }
        break;
    }
    case VM_DTYPE_Q4_1: {
        const vm_block_q4_1 *b = (const void *)p;
        for (int64_t ib = 0; ib < n / VM_QK; ib++) {
            float d = vm_f16_to_f32(b[ib].d), m = vm_f16_to_f32(b[ib].m);
            for (int j = 0; j < 16; j++) {
                out[ib * 32 + j] = d * (float)(b[ib].qs[j] & 0x0f) + m;
                out[ib * 32 + j + 16] = d * (float)(b[ib].qs[j] >> 4) + m;
            }
        }
        break;
    }
    case VM_DTYPE_Q8_0: {
        const vm_block_q8_0 *b = (const void *)p;
        for (int64_t ib = 0; ib < n / VM_QK; ib++) {
            float d = vm_f16_to_f32(b[ib].d);
            for (int j = 0; j < 32; j++) out[ib * 32 + j] = d * (float)b[ib].qs[j];
        }
        break;
    }
    case VM_DTYPE_MLX_AFFINE: {
        const int bits = w->bits, gs = w->group_size, per_word = 32 / bits;
        const uint32_t mask = (1u << bits) - 1;
        const int64_t groups = n / gs;
        for (int64_t i = 0; i < n; i += per_word) {
            uint32_t word = vm_load_u32(p + (size_t)(i / per_word) * 4);
            for (int k = 0; k < per_word; k++) {
                int64_t g = (i + k) / gs;
                float sc = vm_load_scale(w->scale_dtype, w->scales, row * groups + g);
                float bi = vm_load_scale(w->scale_dtype, w->biases, row * groups + g);
                out[i + k] = sc * (float)((word >> (k * bits)) & mask) + bi;
            }
        }
        break;
    }
    default: memset(out, 0, (size_t)n * 4); break;
    }
}

const vm_cpu_kernels *vm_cpu_kernels_select(void) {
    const char *force = getenv("VLLM_METAL_KERNELS");
    if (force && strcmp(force, "generic") == 0) return &vm_kernels_generic;
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c")) {
        if (!(force && strcmp(force, "avx2") == 0) && __builtin_cpu_supports("avx512f") &&
            __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
            __builtin_cpu_supports("avx512vnni"))
            return vm_kernels_avx512();
        return &vm_kernels_avx2;
    }
#endif
#if defined(__aarch64__)
    if (force && strcmp(force, "neon") == 0) return &vm_kernels_neon;
    return vm_cpu_arm_dotprod() ? &vm_kernels_neon_dotprod : &vm_kernels_neon;
#endif
    return &vm_kernels_generic;
}
