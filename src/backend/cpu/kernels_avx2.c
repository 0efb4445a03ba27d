// kernels_avx2.c - x86-64 AVX2+FMA+F16C versions of the row kernels in kernels.c.
// Compiled with -mavx2 -mfma -mf16c; only called when the CPU has all three.
#if defined(__x86_64__)
#include "kernels.h"
#include "kernels_x86.h"

#include <immintrin.h>
#include <math.h>

// F16C conversion (the generic vm_f16_to_f32 branches on subnormals)
static inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

static inline float hsum8(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

static float dot_f32(const void *w, const vm_xrow *x, int n) {
    const float *p = w;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(p + i), _mm256_loadu_ps(x->x + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(p + i + 8), _mm256_loadu_ps(x->x + i + 8), a1);
    }
    float s = hsum8(_mm256_add_ps(a0, a1));
    for (; i < n; i++) { float v; memcpy(&v, p + i, 4); s += v * x->x[i]; }
    return s;
}

static float dot_f16(const void *w, const vm_xrow *x, int n) {
    const uint8_t *p = w;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 w0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 2 * i)));
        __m256 w1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 2 * i + 16)));
        a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x->x + i), a0);
        a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x->x + i + 8), a1);
    }
    float s = hsum8(_mm256_add_ps(a0, a1));
    for (; i < n; i++) s += vm_f16_to_f32(vm_load_u16(p + 2 * i)) * x->x[i];
    return s;
}

static inline __m256 bf16x8_to_f32(const uint8_t *p) {
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

static float dot_bf16(const void *w, const vm_xrow *x, int n) {
    const uint8_t *p = w;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(bf16x8_to_f32(p + 2 * i), _mm256_loadu_ps(x->x + i), a0);
        a1 = _mm256_fmadd_ps(bf16x8_to_f32(p + 2 * i + 16), _mm256_loadu_ps(x->x + i + 8), a1);
    }
    float s = hsum8(_mm256_add_ps(a0, a1));
    for (; i < n; i++) s += vm_bf16_to_f32(vm_load_u16(p + 2 * i)) * x->x[i];
    return s;
}

// 16 packed bytes -> 32 nibble values as floats, in element order:
// elements 0..15 are the low nibbles, 16..31 the high nibbles.
static inline void nibbles_to_f32(const uint8_t *qs, __m256 out[4]) {
    __m128i b = _mm_loadu_si128((const __m128i *)qs);
    __m128i lo = _mm_and_si128(b, _mm_set1_epi8(0x0f));
    __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(0x0f));
    out[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
    out[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
    out[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
    out[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
}

static inline __m256 block_dot32(const __m256 q[4], const float *xb) {
    __m256 acc = _mm256_mul_ps(q[0], _mm256_loadu_ps(xb));
    acc = _mm256_fmadd_ps(q[1], _mm256_loadu_ps(xb + 8), acc);
    acc = _mm256_fmadd_ps(q[2], _mm256_loadu_ps(xb + 16), acc);
    return _mm256_fmadd_ps(q[3], _mm256_loadu_ps(xb + 24), acc);
}

static float dot_q4_0(const void *w, const vm_xrow *x, int n) {
    const vm_block_q4_0 *b = w;
    __m256 total = _mm256_setzero_ps();
    const __m256 eight = _mm256_set1_ps(8.0f);
    for (int ib = 0; ib < n / VM_QK; ib++) {
        __m256 q[4];
        nibbles_to_f32(b[ib].qs, q);
        for (int k = 0; k < 4; k++) q[k] = _mm256_sub_ps(q[k], eight);
        __m256 d = _mm256_set1_ps(h2f(b[ib].d));
        total = _mm256_fmadd_ps(d, block_dot32(q, x->x + ib * VM_QK), total);
    }
    return hsum8(total);
}

static float dot_q4_1(const void *w, const vm_xrow *x, int n) {
    const vm_block_q4_1 *b = w;
    __m256 total = _mm256_setzero_ps();
    float msum = 0;
    for (int ib = 0; ib < n / VM_QK; ib++) {
        __m256 q[4];
        nibbles_to_f32(b[ib].qs, q);
        __m256 d = _mm256_set1_ps(h2f(b[ib].d));
        total = _mm256_fmadd_ps(d, block_dot32(q, x->x + ib * VM_QK), total);
        msum += h2f(b[ib].m) * x->gsum[ib];
    }
    return hsum8(total) + msum;
}

static float dot_q8_0(const void *w, const vm_xrow *x, int n) {
    const vm_block_q8_0 *b = w;
    __m256 total = _mm256_setzero_ps();
    for (int ib = 0; ib < n / VM_QK; ib++) {
        __m256 q[4];
        for (int k = 0; k < 4; k++)
            q[k] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b[ib].qs + 8 * k))));
        __m256 d = _mm256_set1_ps(h2f(b[ib].d));
        total = _mm256_fmadd_ps(d, block_dot32(q, x->x + ib * VM_QK), total);
    }
    return hsum8(total);
}

// MLX affine codes i..i+7 of a row (4 or 8 bits) as floats
static inline __m256 mlx_codes8(int bits, const uint8_t *rowp, int64_t i) {
    __m256i v;
    if (bits == 4) {
        // 8 nibbles in one u32, element k at bits 4k..4k+3
        uint32_t word = vm_load_u32(rowp + (size_t)i / 2);
        __m256i wv = _mm256_set1_epi32((int)word);
        v = _mm256_and_si256(_mm256_srlv_epi32(wv, _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28)),
                             _mm256_set1_epi32(0xf));
    } else {
        v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(rowp + (size_t)i)));
    }
    return _mm256_cvtepi32_ps(v);
}

// MLX affine 4- and 8-bit; other widths fall back to the generic kernel.
static float dot_mlx(const vm_weight *w, int64_t row, const vm_xrow *x) {
    const int bits = w->bits, gs = w->group_size;
    if ((bits != 4 && bits != 8) || gs % 32) return vm_kernels_generic.dot_mlx(w, row, x);
    const int64_t n = w->cols, groups = n / gs;
    const uint8_t *rowp = (const uint8_t *)w->data + (size_t)row * (size_t)(n * bits / 8);
    float s = 0;
    for (int64_t g = 0; g < groups; g++) {
        __m256 acc = _mm256_setzero_ps();
        for (int64_t i = g * gs; i < (g + 1) * gs; i += 8) {
            acc = _mm256_fmadd_ps(mlx_codes8(bits, rowp, i), _mm256_loadu_ps(x->x + i), acc);
        }
        float sc = vm_load_scale(w->scale_dtype, w->scales, row * groups + g);
        float bi = vm_load_scale(w->scale_dtype, w->biases, row * groups + g);
        s += sc * hsum8(acc) + bi * x->gsum[g];
    }
    return s;
}

static void quantize_q8(const float *x, vm_q8_block *out, int n) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int ib = 0; ib < n / 32; ib++) {
        const float *xb = x + ib * 32;
        __m256 v[4], amax = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) {
            v[k] = _mm256_loadu_ps(xb + 8 * k);
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[k]));
        }
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        float amax_s = _mm_cvtss_f32(m);
        float d = amax_s / 127.0f, id = amax_s > 0 ? 127.0f / amax_s : 0.0f;
        __m256 mul = _mm256_set1_ps(id);
        __m256i q[4];
        for (int k = 0; k < 4; k++)
            q[k] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[k], mul), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        __m256i sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        s4 = _mm_hadd_epi32(s4, s4);
        s4 = _mm_hadd_epi32(s4, s4);
        // pack 32 x i32 -> 32 x i8 in order
        __m256i p01 = _mm256_packs_epi32(q[0], q[1]), p23 = _mm256_packs_epi32(q[2], q[3]);
        __m256i p = _mm256_packs_epi16(p01, p23);
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)out[ib].q, p);
        int32_t isum = _mm_cvtsi128_si32(s4);
        out[ib].d = _cvtsh_ss(_cvtss_sh(d, 0));
        out[ib].s = _cvtsh_ss(_cvtss_sh(d * (float)isum, 0));
        out[ib].isum = isum;
    }
}

// sum of u8*s8 over 32 lanes, as 8 i32 partial sums converted to float
static inline __m256 dot_u8s8(__m256i u, __m256i s) {
    __m256i p16 = _mm256_maddubs_epi16(u, s);
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}

// Software prefetch VM_PF_DIST (kernels_x86.h) bytes ahead in a weight row
// (rows of a matrix are contiguous, so it runs on into the next rows): batch-1
// decode streams every weight from memory once per token.
#define PF(p) _mm_prefetch((const char *)(p) + VM_PF_DIST, _MM_HINT_T0)

static float dot_q4_0_q8(const void *w, const vm_q8_block *x, int n) {
    const vm_block_q4_0 *b = w;
    __m256 acc = _mm256_setzero_ps();
    float corr = 0;
    for (int ib = 0; ib < n / 32; ib++) {
        PF(b + ib);
        float dd = h2f(b[ib].d) * x[ib].d;
        __m256i xq = _mm256_loadu_si256((const __m256i *)x[ib].q);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dd), dot_u8s8(nibbles_u8(b[ib].qs), xq), acc);
        corr += dd * (float)(8 * x[ib].isum);
    }
    return hsum8(acc) - corr;
}

static float dot_q4_1_q8(const void *w, const vm_q8_block *x, int n) {
    const vm_block_q4_1 *b = w;
    __m256 acc = _mm256_setzero_ps();
    float msum = 0;
    for (int ib = 0; ib < n / 32; ib++) {
        PF(b + ib);
        __m256i xq = _mm256_loadu_si256((const __m256i *)x[ib].q);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(b[ib].d) * x[ib].d), dot_u8s8(nibbles_u8(b[ib].qs), xq), acc);
        msum = fmaf(h2f(b[ib].m), x[ib].s, msum);
    }
    return hsum8(acc) + msum;
}

static float dot_q8_0_q8(const void *w, const vm_q8_block *x, int n) {
    const vm_block_q8_0 *b = w;
    __m256 acc = _mm256_setzero_ps();
    for (int ib = 0; ib < n / 32; ib++) {
        PF(b + ib);
        float dd = h2f(b[ib].d) * x[ib].d;
        __m256i wq = _mm256_loadu_si256((const __m256i *)b[ib].qs);
        __m256i xq = _mm256_loadu_si256((const __m256i *)x[ib].q);
        // |w| * (x with w's sign): u8 * s8 as maddubs wants
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dd), dot_u8s8(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(xq, wq)), acc);
    }
    return hsum8(acc);
}

// 4 tokens per weight block: the block is unpacked once, then multiplied by
// each token's 8-bit activations.
static void dot4_q4_0_q8(const void *w, const vm_q8_block *x, size_t xs, int n, float out[4]) {
    const vm_block_q4_0 *b = w;
    __m256 acc[4] = { _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps() };
    float corr[4] = { 0, 0, 0, 0 };
    for (int ib = 0; ib < n / 32; ib++) {
        __m256i wq = nibbles_u8(b[ib].qs);
        float dw = h2f(b[ib].d);
        for (int t = 0; t < 4; t++) {
            const vm_q8_block *xb = x + t * xs + ib;
            float dd = dw * xb->d;
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dd), dot_u8s8(wq, _mm256_loadu_si256((const __m256i *)xb->q)), acc[t]);
            corr[t] += dd * (float)(8 * xb->isum);
        }
    }
    for (int t = 0; t < 4; t++) out[t] = hsum8(acc[t]) - corr[t];
}

static void dot4_q4_1_q8(const void *w, const vm_q8_block *x, size_t xs, int n, float out[4]) {
    const vm_block_q4_1 *b = w;
    __m256 acc[4] = { _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps() };
    float msum[4] = { 0, 0, 0, 0 };
    for (int ib = 0; ib < n / 32; ib++) {
        __m256i wq = nibbles_u8(b[ib].qs);
        float dw = h2f(b[ib].d), mw = h2f(b[ib].m);
        for (int t = 0; t < 4; t++) {
            const vm_q8_block *xb = x + t * xs + ib;
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * xb->d), dot_u8s8(wq, _mm256_loadu_si256((const __m256i *)xb->q)), acc[t]);
            msum[t] = fmaf(mw, xb->s, msum[t]);
        }
    }
    for (int t = 0; t < 4; t++) out[t] = hsum8(acc[t]) + msum[t];
}

static void dot4_q8_0_q8(const void *w, const vm_q8_block *x, size_t xs, int n, float out[4]) {
    const vm_block_q8_0 *b = w;
    __m256 acc[4] = { _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps() };
    for (int ib = 0; ib < n / 32; ib++) {
        __m256i wq = _mm256_loadu_si256((const __m256i *)b[ib].qs);
        __m256i aw = _mm256_sign_epi8(wq, wq);
        float dw = h2f(b[ib].d);
        for (int t = 0; t < 4; t++) {
            const vm_q8_block *xb = x + t * xs + ib;
            __m256i xq = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)xb->q), wq);
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * xb->d), dot_u8s8(aw, xq), acc[t]);
        }
    }
    for (int t = 0; t < 4; t++) out[t] = hsum8(acc[t]);
}

// 8 interleaved tokens per weight block: the block is unpacked once; the 8
// tokens' d_w * d_x (and m_w * s_x, 8 * isum) are one vector op each, lane t
// rounding exactly as the single-token kernel's scalar, and each token keeps
// its own accumulator fed in block order, so out[t] is bit-identical to it.
#define DOT8_ACC_DECL __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0
// acc_t = fma(broadcast(dd_t), v_t, acc_t) for the 8 tokens, dd_t = d_w * d_x[t]
// (lo: tokens 0-3 in both halves, hi: 4-7); V(t) gives v_t. The broadcasts are
// in-lane shuffles of lo and hi (about 10% faster here than storing dd and
// broadcasting from memory).
#define DOT8_STEP(lo, hi, V)                                                     \
    do {                                                                         \
        a0 = _mm256_fmadd_ps(_mm256_shuffle_ps(lo, lo, 0x00), V(0), a0);         \
        a1 = _mm256_fmadd_ps(_mm256_shuffle_ps(lo, lo, 0x55), V(1), a1);         \
        a2 = _mm256_fmadd_ps(_mm256_shuffle_ps(lo, lo, 0xaa), V(2), a2);         \
        a3 = _mm256_fmadd_ps(_mm256_shuffle_ps(lo, lo, 0xff), V(3), a3);         \
        a4 = _mm256_fmadd_ps(_mm256_shuffle_ps(hi, hi, 0x00), V(4), a4);         \
        a5 = _mm256_fmadd_ps(_mm256_shuffle_ps(hi, hi, 0x55), V(5), a5);         \
        a6 = _mm256_fmadd_ps(_mm256_shuffle_ps(hi, hi, 0xaa), V(6), a6);         \
        a7 = _mm256_fmadd_ps(_mm256_shuffle_ps(hi, hi, 0xff), V(7), a7);         \
    } while (0)
// d_w * d_x for tokens 0-3 and 4-7, each 4 repeated in both halves
#define DOT8_SCALES(dw, xd, lo, hi)                                              \
    const __m256 dw_ = _mm256_set1_ps(dw);                                       \
    const __m256 lo = _mm256_mul_ps(dw_, _mm256_broadcast_ps((const __m128 *)(xd))); \
    const __m256 hi = _mm256_mul_ps(dw_, _mm256_broadcast_ps((const __m128 *)((xd) + 4)))
#define DOT8_HSUM() hsum8x8(a0, a1, a2, a3, a4, a5, a6, a7)

static void dot8_q4_0_q8(const void *w, const vm_q8_x8 *x, int n, float out[8]) {
    const vm_block_q4_0 *b = w;
    const __m256i ones = _mm256_set1_epi16(1);
    DOT8_ACC_DECL;
    __m256 corr = _mm256_setzero_ps();
    for (int ib = 0; ib < n / 32; ib++) {
        const __m256i wq = nibbles_u8(b[ib].qs);
        DOT8_SCALES(h2f(b[ib].d), x[ib].d, lo, hi);
        const __m256 d = _mm256_mul_ps(dw_, _mm256_loadu_ps(x[ib].d));
        // corr += dd * (float)(8 * isum)
        corr = _mm256_add_ps(corr, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_slli_epi32(
                                   _mm256_loadu_si256((const __m256i *)x[ib].isum), 3))));
#define V(t) _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(wq, _mm256_loadu_si256((const __m256i *)x[ib].q[t])), ones))
        DOT8_STEP(lo, hi, V);
#undef V
    }
    _mm256_storeu_ps(out, _mm256_sub_ps(DOT8_HSUM(), corr));
}

static void dot8_q4_1_q8(const void *w, const vm_q8_x8 *x, int n, float out[8]) {
    const vm_block_q4_1 *b = w;
    const __m256i ones = _mm256_set1_epi16(1);
    DOT8_ACC_DECL;
    __m256 msum = _mm256_setzero_ps();
    for (int ib = 0; ib < n / 32; ib++) {
        const __m256i wq = nibbles_u8(b[ib].qs);
        DOT8_SCALES(h2f(b[ib].d), x[ib].d, lo, hi);
        msum = _mm256_add_ps(msum, _mm256_mul_ps(_mm256_set1_ps(h2f(b[ib].m)), _mm256_loadu_ps(x[ib].s)));
#define V(t) _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(wq, _mm256_loadu_si256((const __m256i *)x[ib].q[t])), ones))
        DOT8_STEP(lo, hi, V);
#undef V
    }
    _mm256_storeu_ps(out, _mm256_add_ps(DOT8_HSUM(), msum));
}

static void dot8_q8_0_q8(const void *w, const vm_q8_x8 *x, int n, float out[8]) {
    const vm_block_q8_0 *b = w;
    const __m256i ones = _mm256_set1_epi16(1);
    DOT8_ACC_DECL;
    for (int ib = 0; ib < n / 32; ib++) {
        const __m256i wq = _mm256_loadu_si256((const __m256i *)b[ib].qs);
        const __m256i aw = _mm256_sign_epi8(wq, wq);
        DOT8_SCALES(h2f(b[ib].d), x[ib].d, lo, hi);
#define V(t) _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)x[ib].q[t]), wq)), ones))
        DOT8_STEP(lo, hi, V);
#undef V
    }
    _mm256_storeu_ps(out, DOT8_HSUM());
}
#undef DOT8_ACC_DECL
#undef DOT8_STEP
#undef DOT8_SCALES
#undef DOT8_HSUM

// ---- 8 repacked rows against one token (kernels.h, vm_block_*x8) ----
// Vector j (acc[j]) holds, for the 8 rows in its lanes, what lane j of the
// row-at-a-time kernel's accumulator holds: the fused sum over blocks of
// dd * (elements 4j..4j+3 of the block's integer dot). The row-at-a-time
// kernel's hsum8 over its lanes is then the same adds across these vectors.

static inline __m256i bcast4(const int8_t *p) { int32_t v; memcpy(&v, p, 4); return _mm256_set1_epi32(v); }

// per lane, ((a0+a4) + (a2+a6)) + ((a1+a5) + (a3+a7)): hsum8's order
static inline __m256 hsum8_lanes(const __m256 a[8]) {
    __m256 t0 = _mm256_add_ps(a[0], a[4]), t1 = _mm256_add_ps(a[1], a[5]);
    __m256 t2 = _mm256_add_ps(a[2], a[6]), t3 = _mm256_add_ps(a[3], a[7]);
    return _mm256_add_ps(_mm256_add_ps(t0, t2), _mm256_add_ps(t1, t3));
}

// acc[k] and acc[k + 4] from one 32-byte load of nibbles: low nibbles are
// elements 4k.., high nibbles 16+4k.. of each row's block
#define Q4X8_STEP(acc, q, xq, dd, k)                                                              \
    do {                                                                                          \
        const __m256i c_ = _mm256_loadu_si256((const __m256i *)((q) + 32 * (k)));                 \
        const __m256i lo_ = _mm256_and_si256(c_, m4), hi_ = _mm256_and_si256(_mm256_srli_epi16(c_, 4), m4); \
        acc[k] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(_mm256_madd_epi16(                         \
                     _mm256_maddubs_epi16(lo_, bcast4((xq) + 4 * (k))), ones)), acc[k]);            \
        acc[(k) + 4] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(_mm256_madd_epi16(                   \
                     _mm256_maddubs_epi16(hi_, bcast4((xq) + 16 + 4 * (k))), ones)), acc[(k) + 4]); \
    } while (0)


// Q4_0 and Q4_1 (with_min, a constant in each caller): Q4_0's -8 offset
// leaves as corr += dd * 8 * isum (unfused, as dot_q4_0_q8), Q4_1's min term
// as msum = fma(m, s, msum) (as dot_q4_1_q8).
static inline void gemv8_q4(int with_min, const void *g, const vm_q8_block *x, int n, float out[8]) {
    const size_t bsz = with_min ? sizeof(vm_block_q4_1x8) : sizeof(vm_block_q4_0x8);
    const __m256i m4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
    __m256 acc[8], extra = _mm256_setzero_ps();
    for (int j = 0; j < 8; j++) acc[j] = _mm256_setzero_ps();
    for (int ib = 0; ib < n / 32; ib++) {
        const uint8_t *blk = (const uint8_t *)g + (size_t)ib * bsz;
        const uint8_t *q = blk + (with_min ? 32 : 16);   // after d[8] (and m[8])
        VM_PF3(blk);
        const __m256 dd = q4x8_scales(with_min, blk, &x[ib], &extra);
        Q4X8_STEP(acc, q, x[ib].q, dd, 0);
        Q4X8_STEP(acc, q, x[ib].q, dd, 1);
        Q4X8_STEP(acc, q, x[ib].q, dd, 2);
        Q4X8_STEP(acc, q, x[ib].q, dd, 3);
    }
    const __m256 h = hsum8_lanes(acc);
    _mm256_storeu_ps(out, with_min ? _mm256_add_ps(h, extra) : _mm256_sub_ps(h, extra));
}
static void gemv8_q4_0_q8(const void *g, const vm_q8_block *x, int n, float out[8]) { gemv8_q4(0, g, x, n, out); }
static void gemv8_q4_1_q8(const void *g, const vm_q8_block *x, int n, float out[8]) { gemv8_q4(1, g, x, n, out); }

static void gemv8_q8_0_q8(const void *g, const vm_q8_block *x, int n, float out[8]) {
    const vm_block_q8_0x8 *b = g;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[8];
    for (int j = 0; j < 8; j++) acc[j] = _mm256_setzero_ps();
    for (int ib = 0; ib < n / 32; ib++) {
        VM_PF5(b + ib);
        const __m256 dd = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)b[ib].d)), _mm256_set1_ps(x[ib].d));
        for (int j = 0; j < 8; j++) {
            const __m256i wq = _mm256_loadu_si256((const __m256i *)(b[ib].q + 32 * j));
            const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(bcast4(x[ib].q + 4 * j), wq));
            acc[j] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones)), acc[j]);
        }
    }
    _mm256_storeu_ps(out, hsum8_lanes(acc));
}
#undef Q4X8_STEP

// 4 loads of 8 lanes (32-bit words) -> 8 rows of 4 words: a 4x8 transpose;
// row r's 16 bytes are stored at dst + r * stride
static inline void transpose4x8_store(const uint8_t *q, uint8_t *dst, size_t stride) {
    const __m256i c0 = _mm256_loadu_si256((const __m256i *)q), c1 = _mm256_loadu_si256((const __m256i *)(q + 32));
    const __m256i c2 = _mm256_loadu_si256((const __m256i *)(q + 64)), c3 = _mm256_loadu_si256((const __m256i *)(q + 96));
    const __m256i t0 = _mm256_unpacklo_epi32(c0, c1), t1 = _mm256_unpackhi_epi32(c0, c1);
    const __m256i t2 = _mm256_unpacklo_epi32(c2, c3), t3 = _mm256_unpackhi_epi32(c2, c3);
    const __m256i u[4] = { _mm256_unpacklo_epi64(t0, t2), _mm256_unpackhi_epi64(t0, t2),
                           _mm256_unpacklo_epi64(t1, t3), _mm256_unpackhi_epi64(t1, t3) };   // rows r | r+4
    for (int r = 0; r < 4; r++) {
        _mm_storeu_si128((__m128i *)(dst + r * stride), _mm256_castsi256_si128(u[r]));
        _mm_storeu_si128((__m128i *)(dst + (r + 4) * stride), _mm256_extracti128_si256(u[r], 1));
    }
}

static void unpack8(vm_dtype t, const void *group, int64_t cols, void *rows) {
    vm_q_unpack8_by(t, group, cols, rows, transpose4x8_store);
}

static float vdot(const float *a, const float *b, int n) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    }
    float s = hsum8(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static void axpy(float *y, float a, const float *x, int n) {
    __m256 av = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

static void axpy_f16(float *y, float a, const uint16_t *x, int n) {
    __m256 av = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] = fmaf(a, h2f(x[i]), y[i]);
}

// ---- llama.cpp's arithmetic (lane for lane the same as kernels.c) -------------

static inline __m256 expf8(__m256 x) {
    const __m256 shift = _mm256_set1_ps(0x1.8p23f);
    const __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), shift);
    const __m256 n = _mm256_sub_ps(z, shift);
    const __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.7f7d1cp-20f),
                                      _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.62e4p-1f), x));
    const __m256i e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
    const __m256 k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_castps_si256(_mm256_set1_ps(1.0f))));
    const __m256 r2 = _mm256_mul_ps(r, r);
    const __m256 p = _mm256_fmadd_ps(
        _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), r, _mm256_set1_ps(0x1.573e2ep-5f)), r2,
                        _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), r, _mm256_set1_ps(0x1.fffdb6p-2f))),
        r2, _mm256_mul_ps(_mm256_set1_ps(0x1.ffffecp-1f), r));
    const __m256 absn = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), n);
    const __m256 big = _mm256_cmp_ps(absn, _mm256_set1_ps(126), _CMP_GT_OQ);
    const __m256 fast = _mm256_fmadd_ps(p, k, k);
    if (!_mm256_movemask_ps(big)) return fast;
    const __m256i g = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ)),
                                       _mm256_set1_epi32((int)0x82000000u));
    const __m256 s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f000000)));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
    const __m256 huge = _mm256_cmp_ps(absn, _mm256_set1_ps(192), _CMP_GT_OQ);
    const __m256 scaled = _mm256_mul_ps(_mm256_fmadd_ps(s2, p, s2), s1);
    __m256 out = _mm256_blendv_ps(fast, scaled, big);
    return _mm256_blendv_ps(out, _mm256_mul_ps(s1, s1), huge);
}

static inline __m256 f16x8(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

static float dot_f16_chain8(const uint16_t *a, const uint16_t *b, int n) {
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 8) acc = _mm256_fmadd_ps(f16x8(a + i), f16x8(b + i), acc);
    return hsum8(acc);
}

static float dot_f16_acc32(const uint16_t *a, const uint16_t *b, int n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    const int np = n - n % 32;
    for (int i = 0; i < np; i += 32) {
        s0 = _mm256_fmadd_ps(f16x8(a + i), f16x8(b + i), s0);
        s1 = _mm256_fmadd_ps(f16x8(a + i + 8), f16x8(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(f16x8(a + i + 16), f16x8(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(f16x8(a + i + 24), f16x8(b + i + 24), s3);
    }
    double sum = hsum_acc32(_mm256_add_ps(_mm256_add_ps(s0, s2), _mm256_add_ps(s1, s3)));
    for (int i = np; i < n; i++) sum += (double)(h2f(a[i]) * h2f(b[i]));
    return (float)sum;
}

// _mm256_max_ps(v, m) is v > m ? v : m lane by lane: vm_generic_scale_max's steps
static float scale_max(float *x, int n, float scale) {
    const __m256 sv = _mm256_set1_ps(scale);
    __m256 mv = _mm256_set1_ps(-INFINITY);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), sv);
        _mm256_storeu_ps(x + i, v);
        mv = _mm256_max_ps(v, mv);
    }
    float m8[8];
    _mm256_storeu_ps(m8, mv);
    return vm_scale_max_tail(x, i, n, scale, m8);
}

static double exp_sum(float *y, const float *x, float max, int n) {
    double sum = 0;
    const __m256 mv = _mm256_set1_ps(max);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = expf8(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv));
        _mm256_storeu_ps(y + i, v);
        sum += (double)hsum8(v);
    }
    if (i < n) {
        float t[8] = { 0 }, v[8];
        for (int l = 0; i + l < n; l++) t[l] = x[i + l];
        _mm256_storeu_ps(v, expf8(_mm256_sub_ps(_mm256_loadu_ps(t), mv)));
        for (int l = 0; l < 8; l++) {
            if (i + l < n) y[i + l] = v[l];
            else v[l] = 0.0f;
        }
        sum += (double)hsum8(_mm256_loadu_ps(v));
    }
    return sum;
}

static void silu_mul(float *out, const float *g, const float *u, size_t n) {
    size_t i = 0;
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(g + i);
        __m256 e = expf8(_mm256_sub_ps(_mm256_setzero_ps(), x));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
    }
    for (; i < n; i++) out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void to_f16(uint16_t *dst, const float *src, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) dst[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT);
}

static void round_f16(float *dst, const float *src, float scale, int n) {
    const __m256 sv = _mm256_set1_ps(scale);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_mul_ps(_mm256_loadu_ps(src + i), sv),
                                                                 _MM_FROUND_TO_NEAREST_INT)));
    for (; i < n; i++) dst[i] = _cvtsh_ss(_cvtss_sh(src[i] * scale, _MM_FROUND_TO_NEAREST_INT));
}

// nq (<= 4) queries (f32, 256 apart in qf) against rows 8 at a time: each
// row's f16 chunks are converted once for all the queries.
static inline __attribute__((always_inline)) void dots_f16_q(const uint16_t *const *rows, int n, const float *qf,
                                                             const int nq, int nv, int acc32, float *out,
                                                             size_t ostride) {
    __m256 sv[4][8];
    for (int p = 0; p < n; p += 8) {
        const int m = VM_MIN(8, n - p);
        for (int u = 0; u < m; u++) {
            const uint16_t *r = rows[p + u];
            if (acc32) {
                __m256 s[4][4];
                _Pragma("GCC unroll 4")
                for (int j = 0; j < nq; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = _mm256_setzero_ps();
                for (int i = 0; i < nv; i += 4) {
                    const __m256 k0 = f16x8(r + 8 * i), k1 = f16x8(r + 8 * i + 8);
                    const __m256 k2 = f16x8(r + 8 * i + 16), k3 = f16x8(r + 8 * i + 24);
                    _Pragma("GCC unroll 4")
                    for (int j = 0; j < nq; j++) {
                        const float *qj = qf + 256 * j + 8 * i;
                        s[j][0] = _mm256_fmadd_ps(k0, _mm256_load_ps(qj), s[j][0]);
                        s[j][1] = _mm256_fmadd_ps(k1, _mm256_load_ps(qj + 8), s[j][1]);
                        s[j][2] = _mm256_fmadd_ps(k2, _mm256_load_ps(qj + 16), s[j][2]);
                        s[j][3] = _mm256_fmadd_ps(k3, _mm256_load_ps(qj + 24), s[j][3]);
                    }
                }
                _Pragma("GCC unroll 4")
                for (int j = 0; j < nq; j++)
                    sv[j][u] = _mm256_add_ps(_mm256_add_ps(s[j][0], s[j][2]), _mm256_add_ps(s[j][1], s[j][3]));
            } else {
                __m256 a[4];
                _Pragma("GCC unroll 4")
                for (int j = 0; j < nq; j++) a[j] = _mm256_setzero_ps();
                for (int i = 0; i < nv; i++) {
                    const __m256 k = f16x8(r + 8 * i);
                    _Pragma("GCC unroll 4")
                    for (int j = 0; j < nq; j++) a[j] = _mm256_fmadd_ps(k, _mm256_load_ps(qf + 256 * j + 8 * i), a[j]);
                }
                _Pragma("GCC unroll 4")
                for (int j = 0; j < nq; j++) sv[j][u] = a[j];
            }
        }
        _Pragma("GCC unroll 4")
        for (int j = 0; j < nq; j++) {
            float *o = out + j * ostride + p;
            if (m == 8) {
                _mm256_storeu_ps(o, acc32 ? hsum_pairs8x8(sv[j]) : hsum8x8(sv[j][0], sv[j][1], sv[j][2], sv[j][3],
                                                                          sv[j][4], sv[j][5], sv[j][6], sv[j][7]));
            } else {
                for (int u = 0; u < m; u++) o[u] = acc32 ? hsum_acc32(sv[j][u]) : hsum8(sv[j][u]);
            }
        }
    }
}

static void dots_f16(const uint16_t *const *rows, int n, const uint16_t *q, int nq, int hd, int acc32, float *out,
                     size_t ostride) {
    if (hd > 256 || hd % (acc32 ? 32 : 8)) {
        for (int j = 0; j < nq; j++)
            for (int p = 0; p < n; p++)
                out[j * ostride + p] = acc32 ? dot_f16_acc32(rows[p], q + (size_t)j * hd, hd)
                                             : dot_f16_chain8(rows[p], q + (size_t)j * hd, hd);
        return;
    }
    _Alignas(32) float qf[4 * 256];
    const int nv = hd / 8;
    for (int j0 = 0; j0 < nq; j0 += 4) {
        const int g = VM_MIN(4, nq - j0);
        for (int j = 0; j < g; j++)
            for (int i = 0; i < nv; i++) _mm256_store_ps(qf + 256 * j + 8 * i, f16x8(q + (size_t)(j0 + j) * hd + 8 * i));
        float *o = out + j0 * ostride;
        switch (g) {   // constant query counts: the loops over them unroll
        case 1: dots_f16_q(rows, n, qf, 1, nv, acc32, o, ostride); break;
        case 2: dots_f16_q(rows, n, qf, 2, nv, acc32, o, ostride); break;
        case 3: dots_f16_q(rows, n, qf, 3, nv, acc32, o, ostride); break;
        default: dots_f16_q(rows, n, qf, 4, nv, acc32, o, ostride); break;
        }
    }
}

// axpy_lanes_f16's registers: 4 x 8 columns a query
static inline __attribute__((always_inline)) void lanes_slice(float *a, size_t astride, const float *w, size_t wstride,
                                                              const int nq, const uint16_t *const *rows, int first,
                                                              int n, int lanes, int d) {
    __m256 s[3][4];
    _Pragma("GCC unroll 4")
    for (int j = 0; j < nq; j++)
        _Pragma("GCC unroll 4")
        for (int c = 0; c < 4; c++) s[j][c] = _mm256_loadu_ps(a + j * astride + 8 * c);
    for (int p = first; p < n; p += lanes) {
        const uint16_t *r = rows[p] + d;
        __m256 wv[3];
        _Pragma("GCC unroll 4")
        for (int j = 0; j < nq; j++) wv[j] = _mm256_set1_ps(w[j * wstride + p]);
        _Pragma("GCC unroll 4")
        for (int c = 0; c < 4; c++) {
            const __m256 v = f16x8(r + 8 * c);
            _Pragma("GCC unroll 4")
            for (int j = 0; j < nq; j++) s[j][c] = _mm256_fmadd_ps(wv[j], v, s[j][c]);
        }
    }
    _Pragma("GCC unroll 4")
    for (int j = 0; j < nq; j++)
        _Pragma("GCC unroll 4")
        for (int c = 0; c < 4; c++) _mm256_storeu_ps(a + j * astride + 8 * c, s[j][c]);
}

static void axpy_lanes_f16(float *acc, size_t astride, const float *w, size_t wstride, int nq, int lanes, int p0,
                           const uint16_t *const *rows, int n, int hd) {
    if (hd % 32) {
        for (int j = 0; j < nq; j++)
            for (int p = 0; p < n; p++)
                axpy_f16(acc + j * astride + (size_t)((p0 + p) & (lanes - 1)) * hd, w[j * wstride + p], rows[p], hd);
        return;
    }
    axpy_lanes_x86(acc, astride, w, wstride, nq, lanes, p0, rows, n, hd);
}

// vm_generic_rope_rotate: pairs (i, i + half) 8 at a time (the same fused
// operations lane by lane); interleaved pairs one at a time
static void rope_rotate(float *x, int n_heads, int head_dim, const float *cs, const float *sn, int half,
                        int interleaved) {
    for (int h = 0; h < n_heads; h++) {
        float *v = x + (size_t)h * head_dim;
        int i = 0;
        if (!interleaved)
            for (; i + 8 <= half; i += 8) {
                const __m256 x0 = _mm256_loadu_ps(v + i), x1 = _mm256_loadu_ps(v + i + half);
                const __m256 c = _mm256_loadu_ps(cs + i), s = _mm256_loadu_ps(sn + i);
                _mm256_storeu_ps(v + i, _mm256_fmsub_ps(x0, c, _mm256_mul_ps(x1, s)));
                _mm256_storeu_ps(v + i + half, _mm256_fmadd_ps(x0, s, _mm256_mul_ps(x1, c)));
            }
        for (; i < half; i++) vm_generic_rope_rotate_pair(v, i, half, interleaved, cs[i], sn[i]);
    }
}

// vm_generic_lanes_sum, 8 values of d at a time
static void lanes_sum(float *out, const float *acc, int lanes, int hd) {
    int d = 0;
#define A(l) _mm256_loadu_ps(acc + (size_t)(l) * hd + d)
    for (; d + 8 <= hd; d += 8) {
        __m256 s[8];
        if (lanes == 32) {
            for (int l = 0; l < 8; l++)
                s[l] = _mm256_add_ps(_mm256_add_ps(A(l), A(16 + l)), _mm256_add_ps(A(8 + l), A(24 + l)));
            _mm256_storeu_ps(out + d, _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(s[0], s[4]), _mm256_add_ps(s[1], s[5])),
                                                    _mm256_add_ps(_mm256_add_ps(s[2], s[6]), _mm256_add_ps(s[3], s[7]))));
        } else {
            __m256 x0 = _mm256_add_ps(A(0), A(4)), x1 = _mm256_add_ps(A(1), A(5));
            __m256 x2 = _mm256_add_ps(A(2), A(6)), x3 = _mm256_add_ps(A(3), A(7));
            _mm256_storeu_ps(out + d, _mm256_add_ps(_mm256_add_ps(x0, x2), _mm256_add_ps(x1, x3)));
        }
    }
#undef A
    for (; d < hd; d++) out[d] = vm_lanes_sum_at(acc, lanes, hd, d);
}

// ---- matmul_tile: dense rows x tokens, register-blocked ----
// One row against T tokens (T <= 6, a constant after inlining): each
// 16-element weight chunk is loaded (and converted) once for the T tokens,
// and every token keeps dot_f32/f16/bf16's two accumulators (elements
// i..i+7 and i+8..i+15 of each 16) and tail, so each sum is that dot's,
// step for step.

static inline __attribute__((always_inline)) __m256 dense8(vm_dtype t, const uint8_t *p, int i) {
    if (t == VM_DTYPE_F32) return _mm256_loadu_ps((const float *)(const void *)p + i);
    if (t == VM_DTYPE_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 2 * i)));
    return bf16x8_to_f32(p + 2 * i);
}

static inline __attribute__((always_inline)) float dense1(vm_dtype t, const uint8_t *p, int i) {
    if (t == VM_DTYPE_F32) { float v; memcpy(&v, p + 4 * (size_t)i, 4); return v; }
    if (t == VM_DTYPE_F16) return vm_f16_to_f32(vm_load_u16(p + 2 * i));
    return vm_bf16_to_f32(vm_load_u16(p + 2 * i));
}

static inline __attribute__((always_inline)) void tile_rt(vm_dtype t, const int T, const uint8_t *w, const float *x,
                                                          size_t xs, int n, float *out, size_t os) {
    __m256 a[6][2];   // [token][accumulator]
    _Pragma("GCC unroll 6") for (int k = 0; k < T; k++) a[k][0] = a[k][1] = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256 w0 = dense8(t, w, i), w1 = dense8(t, w, i + 8);
        _Pragma("GCC unroll 6") for (int k = 0; k < T; k++) {
            a[k][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + (size_t)k * xs + i), a[k][0]);
            a[k][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + (size_t)k * xs + i + 8), a[k][1]);
        }
    }
    _Pragma("GCC unroll 6") for (int k = 0; k < T; k++) {
        float s = hsum8(_mm256_add_ps(a[k][0], a[k][1]));
        for (int j = i; j < n; j++) s += dense1(t, w, j) * x[(size_t)k * xs + j];
        out[(size_t)k * os] = s;
    }
}

// MLX affine 4/8-bit rows row0 .. row0 + R - 1 against T tokens (R and T
// constants after inlining, R * T <= 8): out[t * os + r] = dot_mlx of that
// row and token. Each 8-code chunk of a row is widened once for the T
// tokens and each x chunk loaded once for the R rows; every pair keeps
// dot_mlx's own chain (one accumulator a group, then its scale and bias
// terms), the R * T chains side by side.
static inline __attribute__((always_inline)) void mlx_tile_rt(const int R, const int T, const int bits,
                                                              const vm_weight *w, int64_t row0, const float *x,
                                                              size_t xs, const float *gsum, size_t gstride,
                                                              float *out, size_t os) {
    const int gs = w->group_size;
    const int64_t groups = w->cols / gs;
    const size_t rb = (size_t)(w->cols * bits / 8);
    const uint8_t *rowp = (const uint8_t *)w->data + (size_t)row0 * rb;
    float s[4][8];
    _Pragma("GCC unroll 4") for (int r = 0; r < R; r++)
        _Pragma("GCC unroll 8") for (int k = 0; k < T; k++) s[r][k] = 0;
    for (int64_t g = 0; g < groups; g++) {
        __m256 acc[4][8];
        _Pragma("GCC unroll 4") for (int r = 0; r < R; r++)
            _Pragma("GCC unroll 8") for (int k = 0; k < T; k++) acc[r][k] = _mm256_setzero_ps();
        for (int64_t i = g * gs; i < (g + 1) * gs; i += 8) {
            __m256 vf[4];
            _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) vf[r] = mlx_codes8(bits, rowp + (size_t)r * rb, i);
            _Pragma("GCC unroll 8") for (int k = 0; k < T; k++) {
                const __m256 xv = _mm256_loadu_ps(x + (size_t)k * xs + i);
                _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) acc[r][k] = _mm256_fmadd_ps(vf[r], xv, acc[r][k]);
            }
        }
        _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) {
            float sc = vm_load_scale(w->scale_dtype, w->scales, (row0 + r) * groups + g);
            float bi = vm_load_scale(w->scale_dtype, w->biases, (row0 + r) * groups + g);
            _Pragma("GCC unroll 8") for (int k = 0; k < T; k++)
                s[r][k] += sc * hsum8(acc[r][k]) + bi * gsum[(size_t)k * gstride + g];
        }
    }
    _Pragma("GCC unroll 4") for (int r = 0; r < R; r++)
        _Pragma("GCC unroll 8") for (int k = 0; k < T; k++) out[(size_t)k * os + r] = s[r][k];
}

#define VM_MLX_ROWS 4
#define VM_TILE_TOKENS 6
#define VM_MLX_TOKENS 8
#define VM_MLX_TILE_2BIT 0
#include "kernels_tile.h"

const vm_cpu_kernels vm_kernels_avx2 = {
    "avx2", dot_f32, dot_f16, dot_bf16, dot_q4_0, dot_q4_1, dot_q8_0, dot_mlx,
    quantize_q8, dot_q4_0_q8, dot_q4_1_q8, dot_q8_0_q8,
    dot4_q4_0_q8, dot4_q4_1_q8, dot4_q8_0_q8, dot8_q4_0_q8, dot8_q4_1_q8, dot8_q8_0_q8,
    gemv8_q4_0_q8, gemv8_q4_1_q8, gemv8_q8_0_q8, unpack8,
    vdot, axpy, scale_max, exp_sum, silu_mul, to_f16, round_f16, dots_f16, axpy_lanes_f16,
    rope_rotate, lanes_sum, matmul_tile, matmul_tile_mlx,
};
#endif
