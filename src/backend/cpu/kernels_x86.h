// kernels_x86.h - AVX2 helpers shared by kernels_avx2.c and kernels_avx512.c
// (both compiled with AVX2+FMA+F16C, x86-64 only).
#ifndef VM_KERNELS_X86_H
#define VM_KERNELS_X86_H
#include "kernels.h"

#include <immintrin.h>
#include <stdint.h>

// How far ahead of the weights being read the one-token kernels prefetch
// (bytes; -D to try others). On a 2-core Xeon VM, decode of the default model
// took 3.98 ms a token at 1024 and 3.29 at 8192 (4096 and 16384 close to
// 8192): two threads keep more lines in flight than the hardware prefetchers
// do. On the 2-core EPYC, 512 to 8192 made no difference in a two-thread
// harness.
#ifndef VM_PF_DIST
#define VM_PF_DIST 8192
#endif
#ifndef VM_PF_HINT
#define VM_PF_HINT _MM_HINT_T0
#endif
// The three cache lines VM_PF_DIST past p (a repacked Q4 group's block:
// scales and quants)
#define VM_PF3(p) do { _mm_prefetch((const char *)(p) + VM_PF_DIST, VM_PF_HINT);       \
                       _mm_prefetch((const char *)(p) + VM_PF_DIST + 64, VM_PF_HINT);  \
                       _mm_prefetch((const char *)(p) + VM_PF_DIST + 128, VM_PF_HINT); } while (0)
// ... and two more: a repacked Q8_0 group's block (scales and 256 quants)
#define VM_PF5(p) do { VM_PF3(p);                                                      \
                       _mm_prefetch((const char *)(p) + VM_PF_DIST + 192, VM_PF_HINT); \
                       _mm_prefetch((const char *)(p) + VM_PF_DIST + 256, VM_PF_HINT); } while (0)

// 32 nibbles in element order as unsigned bytes: one 16-byte load into both
// halves, the high half shifted by 4
static inline __m256i nibbles_u8(const uint8_t *qs) {
    const __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));
    return _mm256_and_si256(_mm256_srlv_epi32(b, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)), _mm256_set1_epi8(0x0f));
}

// hsum8 of the 8 accumulators at once, token t in lane t: the same adds in
// the same order as hsum8 (halves, then lanes i and i+2, then the pair).
static inline __m256 hsum8x8(__m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4, __m256 a5, __m256 a6,
                             __m256 a7) {
#define HALVES(x, y) _mm256_add_ps(_mm256_permute2f128_ps(x, y, 0x20), _mm256_permute2f128_ps(x, y, 0x31))
    __m256 s01 = HALVES(a0, a1), s23 = HALVES(a2, a3), s45 = HALVES(a4, a5), s67 = HALVES(a6, a7);
#undef HALVES
    __m256 t0 = _mm256_add_ps(_mm256_shuffle_ps(s01, s23, _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm256_shuffle_ps(s01, s23, _MM_SHUFFLE(3, 2, 3, 2)));
    __m256 t1 = _mm256_add_ps(_mm256_shuffle_ps(s45, s67, _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm256_shuffle_ps(s45, s67, _MM_SHUFFLE(3, 2, 3, 2)));
    // lanes: tokens 0 2 4 6 | 1 3 5 7
    __m256 h = _mm256_hadd_ps(t0, t1);
    return _mm256_permutevar8x32_ps(h, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// One block column of a repacked Q4_0/Q4_1 group (with_min: Q4_1): the 8
// rows' d_w * d_x, and the block's term outside the integer dot added to
// *extra: Q4_1's m_w * s_x (fused, as dot_q4_1_q8), Q4_0's dd * 8 * isum (the
// -8 offset, unfused, as dot_q4_0_q8; subtracted at the end).
static inline __m256 q4x8_scales(int with_min, const uint8_t *blk, const vm_q8_block *x, __m256 *extra) {
    const __m256 dd = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)blk)), _mm256_set1_ps(x->d));
    if (with_min)
        *extra = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(blk + 16))), _mm256_set1_ps(x->s), *extra);
    else
        *extra = _mm256_add_ps(*extra, _mm256_mul_ps(dd, _mm256_set1_ps((float)(8 * x->isum))));
    return dd;
}

// dot_f16_acc32's reduction of its summed accumulators: low half + high
// half, then two horizontal adds
static inline float hsum_acc32(__m256 s) {
    __m128 t = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    t = _mm_hadd_ps(t, t);
    return _mm_cvtss_f32(_mm_hadd_ps(t, t));
}

// 8 vectors' horizontal sums at once, vector i's in lane i, in the order of
// dot_f16_acc32's reduction: t = low half + high half, then (t0+t1) + (t2+t3)
static inline __m256 hsum_pairs8x8(const __m256 v[8]) {
#define HALVES(x, y) _mm256_add_ps(_mm256_permute2f128_ps(x, y, 0x20), _mm256_permute2f128_ps(x, y, 0x31))
    __m256 s01 = HALVES(v[0], v[1]), s23 = HALVES(v[2], v[3]), s45 = HALVES(v[4], v[5]), s67 = HALVES(v[6], v[7]);
#undef HALVES
    __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(s01, s23), _mm256_hadd_ps(s45, s67));   // 0 2 4 6 | 1 3 5 7
    return _mm256_permutevar8x32_ps(h, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// ---- axpy_lanes_f16's loops (kernels.h), for both x86 sets ----
// Lane l of the reference's partial sums takes the positions p with
// p0 + p = l mod lanes; its sums stay in registers over them, 32 columns at a
// time, each a fused chain in increasing p (as the position-by-position loop
// makes them). Each set defines lanes_slice, the registers' part: lane
// positions first, first + lanes, ... (< n) of rows, columns [d, d + 32), for
// nq queries (at most 3, a constant after inlining), accumulators
// a + j * astride (the lane's row already added), weights w[j * wstride + p].
static inline __attribute__((always_inline)) void lanes_slice(float *a, size_t astride, const float *w, size_t wstride,
                                                              const int nq, const uint16_t *const *rows, int first,
                                                              int n, int lanes, int d);

static inline __attribute__((always_inline)) void axpy_lanes_q(float *acc, size_t astride, const float *w,
                                                               size_t wstride, const int nq, int lanes, int p0,
                                                               const uint16_t *const *rows, int n, int hd) {
    for (int l = 0; l < lanes; l++) {
        const int first = (l - p0 % lanes + lanes) & (lanes - 1);   // first p with (p0 + p) % lanes == l
        if (first >= n) continue;
        const size_t lane_off = (size_t)((p0 + first) & (lanes - 1)) * hd;
        for (int d = 0; d < hd; d += 32) lanes_slice(acc + lane_off + d, astride, w, wstride, nq, rows, first, n, lanes, d);
    }
}

// hd a multiple of 32: the queries 3 at a time, each count its own copy
static inline void axpy_lanes_x86(float *acc, size_t astride, const float *w, size_t wstride, int nq, int lanes,
                                  int p0, const uint16_t *const *rows, int n, int hd) {
    for (int j0 = 0; j0 < nq; j0 += 3) {
        float *a = acc + j0 * astride;
        const float *wj = w + j0 * wstride;
        switch (nq - j0 < 3 ? nq - j0 : 3) {
        case 1: axpy_lanes_q(a, astride, wj, wstride, 1, lanes, p0, rows, n, hd); break;
        case 2: axpy_lanes_q(a, astride, wj, wstride, 2, lanes, p0, rows, n, hd); break;
        default: axpy_lanes_q(a, astride, wj, wstride, 3, lanes, p0, rows, n, hd); break;
        }
    }
}

#endif
