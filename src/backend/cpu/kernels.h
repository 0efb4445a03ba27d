// kernels.h - CPU row kernels. Each has a generic C version (kernels.c) and,
// where it pays, a SIMD version (kernels_avx2.c, ...) chosen at run time.
// tests/c/test_kernels.c holds every SIMD path to its generic reference.
#ifndef VM_CPU_KERNELS_H
#define VM_CPU_KERNELS_H

#include "../../loader/weights.h"
#include <math.h>
#include <string.h>

// Per-activation-row precomputation shared by all output rows of a matmul:
// the sum of x over each group (32 for GGUF blocks, group_size for MLX),
// so affine formats (w = d*q + m) dot as d*(q.x) + m*sum(x).
typedef struct vm_xrow {
    const float *x;     // [n]
    const float *gsum;  // [n / group] sums of x per group, or NULL when not needed
} vm_xrow;

// An activation block quantized to 8 bits for the GGUF integer dot products
// (the way llama.cpp computes them): x[i] ~= d * q[i], isum = sum(q).
// d is rounded through f16 and s = f16(amax/127 * isum), as llama.cpp's
// q8_0/q8_1 activation blocks store them, so the dots round the same way.
typedef struct vm_q8_block {
    float d;
    float s;
    int32_t isum;
    int8_t q[32];
} vm_q8_block;

// The same blocks of 8 tokens interleaved (the batched kernels' layout):
// x8[ib] holds block ib of tokens 0..7, so per-token scales load as vectors.
// vm_q8_pack8 fills it from per-token blocks.
typedef struct vm_q8_x8 {
    float d[8];
    float s[8];
    int32_t isum[8];
    int8_t q[8][32];
} vm_q8_x8;

// x8[nb] <- tokens x, x + xstride, ..., x + 7 * xstride (nb blocks each)
void vm_q8_pack8(const vm_q8_block *x, size_t xstride, int nb, vm_q8_x8 *x8);

// GGUF block weights repacked 8 rows at a time, for the one-token decode
// (vm_q_repack8): for each block column, the 8 rows' f16 scales (and Q4_1
// mins), then their quants so that 32-bit lane r of a 32-byte load holds row
// r's bytes 4k..4k+3 of the block (Q4: nibbles of elements 4k.. and 16+4k..;
// Q8_0: elements 4k..4k+3). One vector instruction then works on 8 rows, and
// each lane keeps the very sums of the row-at-a-time kernels.
typedef struct vm_block_q4_0x8 { uint16_t d[8]; uint8_t q[128]; } vm_block_q4_0x8;
typedef struct vm_block_q4_1x8 { uint16_t d[8], m[8]; uint8_t q[128]; } vm_block_q4_1x8;
typedef struct vm_block_q8_0x8 { uint16_t d[8]; int8_t q[256]; } vm_block_q8_0x8;

// Bytes of a repacked weight (0 when t is not Q4_0/Q4_1/Q8_0 or rows % 8 != 0).
size_t vm_q_repack8_bytes(vm_dtype t, int64_t rows, int64_t cols);
// dst <- src (rows x cols of dtype t, row-major GGUF blocks), repacked; rows
// [r0, r1) only (multiples of 8), so callers can split the work.
void vm_q_repack8(vm_dtype t, const void *src, int64_t cols, int64_t r0, int64_t r1, void *dst);
// The inverse for one group: its 8 rows back in row-major GGUF blocks (the
// batched kernels unpack a group once, then reuse it for many tokens).
void vm_q_unpack8(vm_dtype t, const void *group, int64_t cols, void *rows);
// What vm_q_unpack8 does, for the SIMD kernel sets, with the word transpose
// given: words(q, dst, stride) takes 4 chunks of 8 32-bit words, 32 bytes
// apart from q, to 8 rows of 16 bytes at dst + r * stride (each set inlines
// its own vector version; test_kernels holds it to vm_q_unpack8).
static inline void vm_q_unpack8_by(vm_dtype t, const void *group, int64_t cols, void *rows,
                                   void (*words)(const uint8_t *q, uint8_t *dst, size_t stride)) {
    // every layout leads with d (a Q4_1 block: d, m; a group: d[8], m[8]), the quants follow
    const int64_t nb = cols / VM_QK;
    const int q41 = t == VM_DTYPE_Q4_1, q80 = t == VM_DTYPE_Q8_0;
    const size_t bsz = q41 ? sizeof(vm_block_q4_1) : q80 ? sizeof(vm_block_q8_0) : sizeof(vm_block_q4_0);
    const size_t gsz = q41 ? sizeof(vm_block_q4_1x8) : q80 ? sizeof(vm_block_q8_0x8) : sizeof(vm_block_q4_0x8);
    const size_t stride = (size_t)nb * bsz;   // from a row's block to the next row's
    for (int64_t ib = 0; ib < nb; ib++) {
        const uint8_t *g = (const uint8_t *)group + (size_t)ib * gsz;
        uint8_t *b = (uint8_t *)rows + (size_t)ib * bsz;
        for (int r = 0; r < 8; r++)
            for (int i = 0; i <= q41; i++) memcpy(b + r * stride + 2 * i, g + 16 * i + 2 * r, 2);
        const uint8_t *gq = g + (q41 ? 32 : 16);
        uint8_t *bq = b + (q41 ? 4 : 2);
        words(gq, bq, stride);
        if (q80) words(gq + 128, bq + 16, stride);   // Q8_0: 8 chunks, two transposes
    }
}

typedef struct vm_cpu_kernels {
    const char *name;
    // dot of one weight row (n logical elements) with x
    float (*dot_f32)(const void *w, const vm_xrow *x, int n);
    float (*dot_f16)(const void *w, const vm_xrow *x, int n);
    float (*dot_bf16)(const void *w, const vm_xrow *x, int n);
    float (*dot_q4_0)(const void *w, const vm_xrow *x, int n);
    float (*dot_q4_1)(const void *w, const vm_xrow *x, int n);   // needs gsum (group 32)
    float (*dot_q8_0)(const void *w, const vm_xrow *x, int n);
    // MLX affine: needs gsum over group_size
    float (*dot_mlx)(const vm_weight *w, int64_t row, const vm_xrow *x);
    // GGUF block rows against 8-bit activations (n a multiple of 32)
    void (*quantize_q8)(const float *x, vm_q8_block *out, int n);
    float (*dot_q4_0_q8)(const void *w, const vm_q8_block *x, int n);
    float (*dot_q4_1_q8)(const void *w, const vm_q8_block *x, int n);
    float (*dot_q8_0_q8)(const void *w, const vm_q8_block *x, int n);
    // The same against 4 activation rows at once (x, x + xstride, ... in blocks):
    // each weight block is unpacked once for 4 tokens (prefill).
    void (*dot4_q4_0_q8)(const void *w, const vm_q8_block *x, size_t xstride, int n, float out[4]);
    void (*dot4_q4_1_q8)(const void *w, const vm_q8_block *x, size_t xstride, int n, float out[4]);
    void (*dot4_q8_0_q8)(const void *w, const vm_q8_block *x, size_t xstride, int n, float out[4]);
    // The same against 8 interleaved tokens (vm_q8_x8[n / 32]); every out[t]
    // is bit-identical to the single-token kernel of the same table.
    void (*dot8_q4_0_q8)(const void *w, const vm_q8_x8 *x, int n, float out[8]);
    void (*dot8_q4_1_q8)(const void *w, const vm_q8_x8 *x, int n, float out[8]);
    void (*dot8_q8_0_q8)(const void *w, const vm_q8_x8 *x, int n, float out[8]);
    // The same for 8 repacked rows (a group of vm_block_*x8[n / 32]) against one
    // token: out[r] is bit-identical to dot_*_q8 of row r in this table. NULL
    // where a kernel set keeps row-major weights.
    void (*gemv8_q4_0_q8)(const void *g, const vm_q8_block *x, int n, float out[8]);
    void (*gemv8_q4_1_q8)(const void *g, const vm_q8_block *x, int n, float out[8]);
    void (*gemv8_q8_0_q8)(const void *g, const vm_q8_block *x, int n, float out[8]);
    // vm_q_unpack8 (the same bytes out)
    void (*unpack8)(vm_dtype t, const void *group, int64_t cols, void *rows);
    // attention helpers on f32 vectors
    float (*vdot)(const float *a, const float *b, int n);      // a . b
    void (*axpy)(float *y, float a, const float *x, int n);    // y += a * x
    // llama.cpp's CPU arithmetic for GGUF models (see docs/ARCHITECTURE.md, "GGUF
    // arithmetic"). Each is bit-identical across kernel sets (fused multiply-adds
    // in a fixed order), so results do not depend on the CPU's vector width.
    // x[i] *= scale for i < n; returns the maximum, taken in 8 lanes (lane
    // i % 8 for i < n - n % 8, the rest in lane 0; then lanes 1..7 into lane
    // 0), each step m = v > m ? v : m, starting from -inf
    float (*scale_max)(float *x, int n, float scale);
    // y[i] = vm_ggml_expf(x[i] - max) for i < n; returns the sum over 8-element
    // chunks (each vm_hsum8'd, lanes past n count 0) accumulated in double
    double (*exp_sum)(float *y, const float *x, float max, int n);
    // out = silu(g) * u with silu(x) = x / (1 + vm_ggml_expf(0 - x)), in 8-element
    // groups; the last n % 8 use libm expf
    void (*silu_mul)(float *out, const float *g, const float *u, size_t n);
    // f16 conversions, round to nearest even: dst = f16(src); dst = f32(f16(src * scale))
    void (*to_f16)(uint16_t *dst, const float *src, int n);
    void (*round_f16)(float *dst, const float *src, float scale, int n);
    // Attention over a sequence's cached positions, row p at rows[p] (head_dim
    // f16 each), for nq queries at once (the heads that share a KV head: each
    // row is converted once for all of them): out[i * ostride + p] =
    // dot(rows[p], q + i * hd) for p < n in the order of
    // vm_generic_dot_f16_acc32 (acc32 != 0) or _chain8; and for each query i,
    // acc_i[(p0 + p) % lanes] += w_i[p] * rows[p] (acc_i = acc + i * astride:
    // lanes rows of hd floats, fused, in increasing p; w_i = w + i * wstride;
    // lanes a power of two) for p < n. Every query's numbers are those of nq = 1.
    void (*dots_f16)(const uint16_t *const *rows, int n, const uint16_t *q, int nq, int hd, int acc32,
                     float *out, size_t ostride);
    void (*axpy_lanes_f16)(float *acc, size_t astride, const float *w, size_t wstride, int nq, int lanes, int p0,
                           const uint16_t *const *rows, int n, int hd);
    // RoPE of n_heads heads of head_dim at one position: for i < half, the pair
    // (a, b) = (2i, 2i+1) if interleaved else (i, i + half) becomes
    // (fma(x_a, cs[i], -(x_b * sn[i])), fma(x_a, sn[i], x_b * cs[i])) (the fused
    // forms of ggml's compiled loop); elements past 2 * half stay.
    void (*rope_rotate)(float *x, int n_heads, int head_dim, const float *cs, const float *sn, int half,
                        int interleaved);
    // out[d] = the sum of acc's lanes (lanes rows of hd floats; lanes 8 or 32)
    // at d, in the order of the reference for that many partial sums: 32 (its
    // f16 vec_dot) s_l = (a_l + a_16+l) + (a_8+l + a_24+l) for l < 8, then
    // ((s0+s4) + (s1+s5)) + ((s2+s6) + (s3+s7)); 8 (its f16 GEMM) vm_hsum8.
    void (*lanes_sum)(float *out, const float *acc, int lanes, int hd);
    // Dense weights against several tokens (prefill, decode batches):
    // out[t * ostride + r] = dot_f32/f16/bf16 (by t) of weight row r (w + r *
    // wstride bytes) with x + t * xstride, for r < rows and t < tokens, n
    // elements each, bit-identical to this table's dot of that one pair;
    // register-blocked, so that each weight chunk is loaded (and converted)
    // once for a block of tokens. NULL: the backend calls the dots pair by pair.
    void (*matmul_tile)(vm_dtype t, const void *w, size_t wstride, int rows, const float *x, size_t xstride,
                        int tokens, int n, float *out, size_t ostride);
    // The same for MLX affine rows r0 .. r0 + rows - 1 of w: out[t * ostride +
    // r - r0] = dot_mlx(w, r, x + t * xstride with gsum + t * gstride), each
    // chunk of codes widened once for a block of tokens; one token takes
    // several rows side by side instead. NULL: pair by pair.
    void (*matmul_tile_mlx)(const vm_weight *w, int64_t r0, int rows, const float *x, size_t xstride,
                            const float *gsum, size_t gstride, int tokens, float *out, size_t ostride);
} vm_cpu_kernels;

// The exponential llama.cpp's x86/ARM vector code uses (a degree-5 polynomial
// after range reduction by ln 2, exact special cases); one lane of it.
float vm_ggml_expf(float x);
// ((a0+a4) + (a2+a6)) + ((a1+a5) + (a3+a7)): the 8-lane horizontal sum order
static inline float vm_hsum8(const float a[8]) {
    float x0 = a[0] + a[4], x1 = a[1] + a[5], x2 = a[2] + a[6], x3 = a[3] + a[7];
    return (x0 + x2) + (x1 + x3);
}
// scale_max's end: elements [i, n) into lane 0, then the lanes' maximum
static inline float vm_scale_max_tail(float *x, int i, int n, float scale, float m8[8]) {
    for (; i < n; i++) {
        x[i] *= scale;
        m8[0] = x[i] > m8[0] ? x[i] : m8[0];
    }
    float m = m8[0];
    for (int l = 1; l < 8; l++) m = m8[l] > m ? m8[l] : m;
    return m;
}
// rope_rotate's step for pair i of one head
static inline void vm_generic_rope_rotate_pair(float *v, int i, int half, int interleaved, float cs, float sn) {
    const int a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + half;
    const float x0 = v[a], x1 = v[b];
    v[a] = fmaf(x0, cs, -(x1 * sn));
    v[b] = fmaf(x0, sn, x1 * cs);
}
// lanes_sum at one d (the generic kernel, and the SIMD kernels' tails)
static inline float vm_lanes_sum_at(const float *acc, int lanes, int hd, int d) {
    float s[8];
#define A(l) acc[(size_t)(l) * hd + d]
    if (lanes == 32) {
        for (int l = 0; l < 8; l++) s[l] = (A(l) + A(16 + l)) + (A(8 + l) + A(24 + l));
        return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
    }
    for (int l = 0; l < 8; l++) s[l] = A(l);
#undef A
    return vm_hsum8(s);
}
// The two f16 dot orders of ggml: one 8-lane fused chain then vm_hsum8 (its
// batched f16 GEMM; n % 8 == 0), and 4 x 8-lane chains over 32-element steps
// (its f16 vec_dot). The definitions dots_f16 follows.
float vm_generic_dot_f16_chain8(const uint16_t *a, const uint16_t *b, int n);
float vm_generic_dot_f16_acc32(const uint16_t *a, const uint16_t *b, int n);
// generic versions, shared by kernel sets without their own
float vm_generic_scale_max(float *x, int n, float scale);
double vm_generic_exp_sum(float *y, const float *x, float max, int n);
void vm_generic_silu_mul(float *out, const float *g, const float *u, size_t n);
void vm_generic_to_f16(uint16_t *dst, const float *src, int n);
void vm_generic_round_f16(float *dst, const float *src, float scale, int n);
void vm_generic_dots_f16(const uint16_t *const *rows, int n, const uint16_t *q, int nq, int hd, int acc32,
                         float *out, size_t ostride);
void vm_generic_lanes_sum(float *out, const float *acc, int lanes, int hd);
void vm_generic_rope_rotate(float *x, int n_heads, int head_dim, const float *cs, const float *sn, int half,
                            int interleaved);
void vm_generic_axpy_lanes_f16(float *acc, size_t astride, const float *w, size_t wstride, int nq, int lanes, int p0,
                               const uint16_t *const *rows, int n, int hd);

extern const vm_cpu_kernels vm_kernels_generic;
#if defined(__x86_64__)
extern const vm_cpu_kernels vm_kernels_avx2;
// kernels_avx512.c: the AVX2 set with AVX-512 (F, BW, VL, VNNI) gemv8_*, dot8_*, dots_f16,
// axpy_lanes_f16 and quantize_q8
const vm_cpu_kernels *vm_kernels_avx512(void);
#endif
#if defined(__aarch64__)
// kernels_neon.c: SDOT for the 8-bit dots where the CPU has DotProd, else SMULL.
extern const vm_cpu_kernels vm_kernels_neon, vm_kernels_neon_dotprod;
int vm_cpu_arm_dotprod(void); // run-time check (getauxval / sysctl)
#endif

// Best kernel set for this CPU (VLLM_METAL_KERNELS=generic forces the reference;
// on x86-64, VLLM_METAL_KERNELS=avx2 the AVX2 set where AVX-512 is there too; on
// arm64, VLLM_METAL_KERNELS=neon the NEON set without DotProd).
const vm_cpu_kernels *vm_cpu_kernels_select(void);

// Dequantize row `row` of w into out[w->cols] (any matrix dtype).
void vm_dequant_row(const vm_weight *w, int64_t row, float *out);

// Unaligned little-endian loads (MLX files need not be aligned).
static inline uint16_t vm_load_u16(const void *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t vm_load_u32(const void *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline float vm_load_scale(vm_dtype t, const void *base, int64_t i) {
    const uint8_t *p = base;
    if (t == VM_DTYPE_F32) { float f; memcpy(&f, p + i * 4, 4); return f; }
    if (t == VM_DTYPE_BF16) return vm_bf16_to_f32(vm_load_u16(p + i * 2));
    return vm_f16_to_f32(vm_load_u16(p + i * 2));
}

#endif
