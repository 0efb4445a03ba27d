// kernels_avx512.c - x86-64 AVX-512 (F, BW, VL, VNNI) versions of the one-token
// matvec kernels over repacked 8-row groups (gemv8_*), of the 8-token row
// kernels (dot8_*, prefill and batched decode) and of decode attention's
// f16-cache kernels (dots_f16 with 32 partial sums, axpy_lanes_f16) and of
// the activations' quantizer (quantize_q8); every other entry is the AVX2
// set's. Compiled with AVX-512 flags; only called when the CPU has them
// (vm_cpu_kernels_select).
//
// A zmm holds two of the AVX2 kernels' 8-lane vectors (lanes 0-7 one 4-byte
// chunk of each row's block, lanes 8-15 the next), so every lane runs the
// same chain of fused multiply-adds as there, and VPDPBUSD's sums of four
// u8 x s8 products are the maddubs + madd sums (which never saturate for
// these operands: nibbles, or |q8| <= 128 against q8): same bits.
#if defined(__x86_64__)
#include "kernels.h"
#include "kernels_x86.h"

#include <immintrin.h>
#include <pthread.h>
#include <string.h>

// Lanes 0-7: the 32-bit word a of the activations' 32 bytes, lanes 8-15: word b.
static inline __m512i words2(__m512i x, int a, int b) {
    return _mm512_permutexvar_epi32(_mm512_set_epi32(b, b, b, b, b, b, b, b, a, a, a, a, a, a, a, a), x);
}

// The low and high 8 lanes of z.
static inline __m256 lo8(__m512 z) { return _mm512_castps512_ps256(z); }
static inline __m256 hi8(__m512 z) { return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(z), 1)); }

// The AVX2 kernels' final sum over their 8 vectors a[0..7], per lane
// ((a0+a4) + (a2+a6)) + ((a1+a5) + (a3+a7)), from zmm pairs [a0|a1], [a2|a3],
// [a4|a5], [a6|a7].
static inline __m256 sum_pairs(__m512 a01, __m512 a23, __m512 a45, __m512 a67) {
    const __m512 u = _mm512_add_ps(_mm512_add_ps(a01, a45), _mm512_add_ps(a23, a67));   // [t0+t2 | t1+t3]
    return _mm256_add_ps(lo8(u), hi8(u));
}

// [v | v]
static inline __m512 twice(__m256 v) {
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(v)), _mm256_castps_pd(v), 1));
}

static inline __m512i x_block(const vm_q8_block *x) {
    return _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)x->q));
}

// Q4_0 and Q4_1 (with_min): the AVX2 gemv8_q4's arithmetic, two chunks a zmm.
static inline void gemv8_q4(int with_min, const void *g, const vm_q8_block *x, int n, float out[8]) {
    const size_t bsz = with_min ? sizeof(vm_block_q4_1x8) : sizeof(vm_block_q4_0x8);
    const __m512i m4 = _mm512_set1_epi8(0x0f), zero = _mm512_setzero_si512();
    __m512 lo01 = _mm512_setzero_ps(), lo23 = _mm512_setzero_ps(), hi01 = _mm512_setzero_ps(), hi23 = _mm512_setzero_ps();
    __m256 extra = _mm256_setzero_ps();
    for (int ib = 0; ib < n / 32; ib++) {
        const uint8_t *blk = (const uint8_t *)g + (size_t)ib * bsz;
        const uint8_t *q = blk + (with_min ? 32 : 16);   // after d[8] (and m[8])
        VM_PF3(blk);
        const __m256 dd = q4x8_scales(with_min, blk, &x[ib], &extra);
        const __m512 dd2 = twice(dd);
        const __m512i xb = x_block(&x[ib]);
        const __m512i c01 = _mm512_loadu_si512((const void *)q), c23 = _mm512_loadu_si512((const void *)(q + 64));
        const __m512i l01 = _mm512_and_si512(c01, m4), h01 = _mm512_and_si512(_mm512_srli_epi16(c01, 4), m4);
        const __m512i l23 = _mm512_and_si512(c23, m4), h23 = _mm512_and_si512(_mm512_srli_epi16(c23, 4), m4);
        lo01 = _mm512_fmadd_ps(dd2, _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, l01, words2(xb, 0, 1))), lo01);
        lo23 = _mm512_fmadd_ps(dd2, _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, l23, words2(xb, 2, 3))), lo23);
        hi01 = _mm512_fmadd_ps(dd2, _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, h01, words2(xb, 4, 5))), hi01);
        hi23 = _mm512_fmadd_ps(dd2, _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, h23, words2(xb, 6, 7))), hi23);
    }
    const __m256 h = sum_pairs(lo01, lo23, hi01, hi23);
    _mm256_storeu_ps(out, with_min ? _mm256_add_ps(h, extra) : _mm256_sub_ps(h, extra));
}
static void gemv8_q4_0_q8(const void *g, const vm_q8_block *x, int n, float out[8]) { gemv8_q4(0, g, x, n, out); }
static void gemv8_q4_1_q8(const void *g, const vm_q8_block *x, int n, float out[8]) { gemv8_q4(1, g, x, n, out); }

// x with the sign of w (w < 0: -x, w == 0: 0), as _mm256_sign_epi8 (-(-128) stays -128)
static inline __m512i sign_by(__m512i x, __mmask64 neg, __mmask64 nz) {
    return _mm512_maskz_mov_epi8(nz, _mm512_mask_sub_epi8(x, neg, _mm512_setzero_si512(), x));
}

// Q8_0: w + 128 (as u8) against x, less 128 * (x's word sums), started from
// in VPDPBUSD's accumulator: exactly sum(w * x), as the AVX2 kernel's sign
// trick gives it for every x the quantizer makes (|x| <= 127), in fewer
// instructions than the sign trick in zmm.
static void gemv8_q8_0_q8(const void *g, const vm_q8_block *x, int n, float out[8]) {
    const vm_block_q8_0x8 *b = g;
    const __m512i c80 = _mm512_set1_epi8((char)0x80);
    __m512 acc[4] = { _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps() };
    for (int ib = 0; ib < n / 32; ib++) {
        VM_PF5(b + ib);
        const __m256 dd = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)b[ib].d)), _mm256_set1_ps(x[ib].d));
        const __m512 dd2 = twice(dd);
        const __m512i xb = x_block(&x[ib]);
        // -128 * (sum of each 4-byte word of x), word k in lane k
        const __m256i ws = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm512_castsi512_si256(c80), _mm512_castsi512_si256(xb));
        const __m512i negc = _mm512_castsi256_si512(_mm256_sub_epi32(_mm256_setzero_si256(), ws));
        for (int j = 0; j < 4; j++) {   // chunks 2j, 2j+1
            const __m512i wu = _mm512_xor_si512(_mm512_loadu_si512((const void *)(b[ib].q + 64 * j)), c80);
            const __m512i is = _mm512_dpbusd_epi32(words2(negc, 2 * j, 2 * j + 1), wu, words2(xb, 2 * j, 2 * j + 1));
            acc[j] = _mm512_fmadd_ps(dd2, _mm512_cvtepi32_ps(is), acc[j]);
        }
    }
    // acc[j] = [a(2j) | a(2j+1)]
    _mm256_storeu_ps(out, sum_pairs(acc[0], acc[1], acc[2], acc[3]));
}

// dot8_*: token pairs (t, t+1) share a zmm (lanes 0-7 token t's 8 partial
// sums, 8-15 token t+1's) against the block's 32 weights in both halves; each
// token's lane of d_w * d_x is the AVX2 kernel's product, its chain of
// fused multiply-adds the same, and the final sum is the AVX2 kernel's
// hsum8x8 over the 8 accumulators.
#define DOT8_ACC_DECL __m512 p01 = _mm512_setzero_ps(), p23 = p01, p45 = p01, p67 = p01
// ddv: d_w * d_x[0..7]; IS(t): the int32 sums of tokens t, t+1 (t even)
#define DOT8_STEP(ddv, IS)                                                                          \
    do {                                                                                            \
        const __m512 dz_ = _mm512_castps256_ps512(ddv);                                             \
        p01 = _mm512_fmadd_ps(_mm512_permutexvar_ps(pair_idx(0), dz_), _mm512_cvtepi32_ps(IS(0)), p01); \
        p23 = _mm512_fmadd_ps(_mm512_permutexvar_ps(pair_idx(2), dz_), _mm512_cvtepi32_ps(IS(2)), p23); \
        p45 = _mm512_fmadd_ps(_mm512_permutexvar_ps(pair_idx(4), dz_), _mm512_cvtepi32_ps(IS(4)), p45); \
        p67 = _mm512_fmadd_ps(_mm512_permutexvar_ps(pair_idx(6), dz_), _mm512_cvtepi32_ps(IS(6)), p67); \
    } while (0)
#define DOT8_HSUM() hsum8x8(lo8(p01), hi8(p01), lo8(p23), hi8(p23), lo8(p45), hi8(p45), lo8(p67), hi8(p67))

// lanes 0-7: element t, lanes 8-15: element t + 1
static inline __m512i pair_idx(int t) {
    return _mm512_set_epi32(t + 1, t + 1, t + 1, t + 1, t + 1, t + 1, t + 1, t + 1, t, t, t, t, t, t, t, t);
}
static inline __m512i both_halves(__m256i v) { return _mm512_inserti64x4(_mm512_castsi256_si512(v), v, 1); }
static inline __m512i tokens2(const vm_q8_x8 *x, int t) { return _mm512_loadu_si512((const void *)x->q[t]); }

// Q4_0 (the -8 offset as corr += dd * 8 * isum) and Q4_1 (with_min: msum +=
// m * s), as the AVX2 kernels.
static inline void dot8_q4(int with_min, const void *w, const vm_q8_x8 *x, int n, float out[8]) {
    const size_t bsz = with_min ? sizeof(vm_block_q4_1) : sizeof(vm_block_q4_0);
    const __m512i zero = _mm512_setzero_si512();
    DOT8_ACC_DECL;
    __m256 extra = _mm256_setzero_ps();
    for (int ib = 0; ib < n / 32; ib++) {
        const uint8_t *blk = (const uint8_t *)w + (size_t)ib * bsz;
        uint16_t dh, mh;
        memcpy(&dh, blk, 2);
        const __m512i wq = both_halves(nibbles_u8(blk + (with_min ? 4 : 2)));
        const __m256 d = _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(dh)), _mm256_loadu_ps(x[ib].d));
        if (with_min) {
            memcpy(&mh, blk + 2, 2);
            extra = _mm256_add_ps(extra, _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(mh)), _mm256_loadu_ps(x[ib].s)));
        } else {
            extra = _mm256_add_ps(extra, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_slli_epi32(
                                         _mm256_loadu_si256((const __m256i *)x[ib].isum), 3))));
        }
#define IS(t) _mm512_dpbusd_epi32(zero, wq, tokens2(&x[ib], t))
        DOT8_STEP(d, IS);
#undef IS
    }
    _mm256_storeu_ps(out, with_min ? _mm256_add_ps(DOT8_HSUM(), extra) : _mm256_sub_ps(DOT8_HSUM(), extra));
}
static void dot8_q4_0_q8(const void *w, const vm_q8_x8 *x, int n, float out[8]) { dot8_q4(0, w, x, n, out); }
static void dot8_q4_1_q8(const void *w, const vm_q8_x8 *x, int n, float out[8]) { dot8_q4(1, w, x, n, out); }

static void dot8_q8_0_q8(const void *w, const vm_q8_x8 *x, int n, float out[8]) {
    const vm_block_q8_0 *b = w;
    const __m512i zero = _mm512_setzero_si512();
    DOT8_ACC_DECL;
    for (int ib = 0; ib < n / 32; ib++) {
        const __m512i wq = both_halves(_mm256_loadu_si256((const __m256i *)b[ib].qs));
        const __m512i aw = _mm512_abs_epi8(wq);
        const __mmask64 neg = _mm512_movepi8_mask(wq), nz = _mm512_test_epi8_mask(wq, wq);
        const __m256 d = _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(b[ib].d)), _mm256_loadu_ps(x[ib].d));
#define IS(t) _mm512_dpbusd_epi32(zero, aw, sign_by(tokens2(&x[ib], t), neg, nz))
        DOT8_STEP(d, IS);
#undef IS
    }
    _mm256_storeu_ps(out, DOT8_HSUM());
}
#undef DOT8_ACC_DECL
#undef DOT8_STEP
#undef DOT8_HSUM

// ---- activations to 8-bit blocks ----
// The AVX2 set's quantize_q8, eight blocks at a time: each block's maximum
// and integer sum (exact in any order), then the eight scales' divisions
// and f16 roundings as one vector each (the same IEEE operations as the
// scalar ones); q = round-to-nearest-even(x * id) as there.
static void quantize_q8(const float *x, vm_q8_block *out, int n) {
    const int nb = n / 32;
    int ib = 0;
    for (; ib + 8 <= nb; ib += 8) {
        __m512 v[8][2];
        _Alignas(32) float amax[8];
        for (int b = 0; b < 8; b++) {
            const float *xb = x + (size_t)(ib + b) * 32;
            v[b][0] = _mm512_loadu_ps(xb);
            v[b][1] = _mm512_loadu_ps(xb + 16);
            amax[b] = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[b][0]), _mm512_abs_ps(v[b][1])));
        }
        const __m256 am = _mm256_load_ps(amax), c127 = _mm256_set1_ps(127.0f);
        const __m256 d = _mm256_div_ps(am, c127);
        const __m256 id = _mm256_blendv_ps(_mm256_setzero_ps(), _mm256_div_ps(c127, am),
                                           _mm256_cmp_ps(am, _mm256_setzero_ps(), _CMP_GT_OQ));
        _Alignas(32) float idv[8];
        _Alignas(32) int32_t isum[8];
        _mm256_store_ps(idv, id);
        for (int b = 0; b < 8; b++) {
            const __m512 mul = _mm512_set1_ps(idv[b]);
            const __m512i q0 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(v[b][0], mul), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            const __m512i q1 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(v[b][1], mul), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            _mm_storeu_si128((__m128i *)out[ib + b].q, _mm512_cvtsepi32_epi8(q0));
            _mm_storeu_si128((__m128i *)(out[ib + b].q + 16), _mm512_cvtsepi32_epi8(q1));
            isum[b] = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        }
        const __m256 dr = _mm256_cvtph_ps(_mm256_cvtps_ph(d, _MM_FROUND_TO_NEAREST_INT));
        const __m256 sr = _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_load_si256((const __m256i *)isum))),
                                                          _MM_FROUND_TO_NEAREST_INT));
        _Alignas(32) float dv[8], sv[8];
        _mm256_store_ps(dv, dr);
        _mm256_store_ps(sv, sr);
        for (int b = 0; b < 8; b++) {
            out[ib + b].d = dv[b];
            out[ib + b].s = sv[b];
            out[ib + b].isum = isum[b];
        }
    }
    if (ib < nb) vm_kernels_avx2.quantize_q8(x + (size_t)ib * 32, out + ib, n - ib * 32);
}

// ---- decode attention over an f16 cache ----
// The AVX2 set's dots_f16 (acc32) keeps a row's 32 partial sums in four
// 8-lane accumulators s0..s3 (dims 32i + 0-7, 8-15, 16-23, 24-31) and ends
// with (s0 + s2) + (s1 + s3). Here [s0|s1] and [s2|s3] are two zmm, so every
// lane runs the same chain; [s0+s2 | s1+s3] halves added give the same sum.
static inline __m512 f16x16(const uint16_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }

static inline __attribute__((always_inline)) void dots_f16_acc32_q(const uint16_t *const *rows, int n, const float *qf,
                                                                   const int nq, int hd, float *out, size_t ostride) {
    __m256 sv[4][8];
    for (int p = 0; p < n; p += 8) {
        const int m = n - p < 8 ? n - p : 8;
        for (int u = 0; u < m; u++) {
            const uint16_t *r = rows[p + u];
            __m512 a[4], b[4];
            _Pragma("GCC unroll 4")
            for (int j = 0; j < nq; j++) a[j] = b[j] = _mm512_setzero_ps();
            for (int i = 0; i < hd; i += 32) {
                const __m512 k01 = f16x16(r + i), k23 = f16x16(r + i + 16);
                _Pragma("GCC unroll 4")
                for (int j = 0; j < nq; j++) {
                    a[j] = _mm512_fmadd_ps(k01, _mm512_load_ps(qf + 256 * j + i), a[j]);
                    b[j] = _mm512_fmadd_ps(k23, _mm512_load_ps(qf + 256 * j + i + 16), b[j]);
                }
            }
            _Pragma("GCC unroll 4")
            for (int j = 0; j < nq; j++) {
                const __m512 t = _mm512_add_ps(a[j], b[j]);
                sv[j][u] = _mm256_add_ps(lo8(t), hi8(t));
            }
        }
        _Pragma("GCC unroll 4")
        for (int j = 0; j < nq; j++) {
            float *o = out + j * ostride + p;
            if (m == 8) _mm256_storeu_ps(o, hsum_pairs8x8(sv[j]));
            else for (int u = 0; u < m; u++) o[u] = hsum_acc32(sv[j][u]);
        }
    }
}

static void dots_f16(const uint16_t *const *rows, int n, const uint16_t *q, int nq, int hd, int acc32, float *out,
                     size_t ostride) {
    if (!acc32 || hd > 256 || hd % 32) {   // (one 8-lane chain: the AVX2 set's)
        vm_kernels_avx2.dots_f16(rows, n, q, nq, hd, acc32, out, ostride);
        return;
    }
    _Alignas(64) float qf[4 * 256];
    for (int j0 = 0; j0 < nq; j0 += 4) {
        const int g = nq - j0 < 4 ? nq - j0 : 4;
        for (int j = 0; j < g; j++)
            for (int i = 0; i < hd; i += 16) _mm512_store_ps(qf + 256 * j + i, f16x16(q + (size_t)(j0 + j) * hd + i));
        float *o = out + j0 * ostride;
        switch (g) {   // constant query counts: the loops over them unroll
        case 1: dots_f16_acc32_q(rows, n, qf, 1, hd, o, ostride); break;
        case 2: dots_f16_acc32_q(rows, n, qf, 2, hd, o, ostride); break;
        case 3: dots_f16_acc32_q(rows, n, qf, 3, hd, o, ostride); break;
        default: dots_f16_acc32_q(rows, n, qf, 4, hd, o, ostride); break;
        }
    }
}

// axpy_lanes_f16's registers: 2 x 16 columns a query (the AVX2 set's 4 x 8)
static inline __attribute__((always_inline)) void lanes_slice(float *a, size_t astride, const float *w, size_t wstride,
                                                              const int nq, const uint16_t *const *rows, int first,
                                                              int n, int lanes, int d) {
    __m512 s[3][2];
    _Pragma("GCC unroll 4")
    for (int j = 0; j < nq; j++)
        for (int c = 0; c < 2; c++) s[j][c] = _mm512_loadu_ps(a + j * astride + 16 * c);
    for (int p = first; p < n; p += lanes) {
        const uint16_t *r = rows[p] + d;
        const __m512 v0 = f16x16(r), v1 = f16x16(r + 16);
        _Pragma("GCC unroll 4")
        for (int j = 0; j < nq; j++) {
            const __m512 wv = _mm512_set1_ps(w[j * wstride + p]);
            s[j][0] = _mm512_fmadd_ps(wv, v0, s[j][0]);
            s[j][1] = _mm512_fmadd_ps(wv, v1, s[j][1]);
        }
    }
    _Pragma("GCC unroll 4")
    for (int j = 0; j < nq; j++)
        for (int c = 0; c < 2; c++) _mm512_storeu_ps(a + j * astride + 16 * c, s[j][c]);
}

static void axpy_lanes_f16(float *acc, size_t astride, const float *w, size_t wstride, int nq, int lanes, int p0,
                           const uint16_t *const *rows, int n, int hd) {
    if (hd % 32) vm_kernels_avx2.axpy_lanes_f16(acc, astride, w, wstride, nq, lanes, p0, rows, n, hd);
    else axpy_lanes_x86(acc, astride, w, wstride, nq, lanes, p0, rows, n, hd);
}

static vm_cpu_kernels table;
static pthread_once_t table_once = PTHREAD_ONCE_INIT;
static void table_init(void) {
    table = vm_kernels_avx2;
    table.name = "avx512";
    table.gemv8_q4_0_q8 = gemv8_q4_0_q8;
    table.gemv8_q4_1_q8 = gemv8_q4_1_q8;
    table.gemv8_q8_0_q8 = gemv8_q8_0_q8;
    table.dot8_q4_0_q8 = dot8_q4_0_q8;
    table.dot8_q4_1_q8 = dot8_q4_1_q8;
    table.dot8_q8_0_q8 = dot8_q8_0_q8;
    table.dots_f16 = dots_f16;
    table.axpy_lanes_f16 = axpy_lanes_f16;
    table.quantize_q8 = quantize_q8;
}

const vm_cpu_kernels *vm_kernels_avx512(void) {
    pthread_once(&table_once, table_init);
    return &table;
}
#endif
