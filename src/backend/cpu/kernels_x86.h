// kernels_x86.h - AVX2 helpers shared by kernels_avx2.c and kernels_avx512.c
// (both compiled with AVX2+FMA+F16C, x86-64 only).
#ifndef VM_KERNELS_X86_H
#define VM_KERNELS_X86_H
#include <immintrin.h>
#include <stdint.h>

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
#endif
