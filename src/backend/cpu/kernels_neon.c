// kernels_neon.c - arm64 NEON versions of the row kernels in kernels.c.
//
// NEON (Advanced SIMD) and the f16<->f32 conversions are part of every arm64
// CPU, so this file needs no extra compiler flags. Two tables:
//   vm_kernels_neon_dotprod  8-bit integer dots with SDOT (ARMv8.2 DotProd:
//                            every Apple Silicon chip, Cortex-A76+, Neoverse)
//   vm_kernels_neon          the same with SMULL + SADALP (Cortex-A53/A72, ...)
// They differ only in the GGUF q8 kernels, which this file therefore holds
// once and compiles twice (it includes itself with VM_NEON_Q8 set, below);
// the SDOT copy carries a target attribute, so the file builds for plain
// armv8-a and the choice is made at run time (vm_cpu_arm_dotprod).
//
// Numerics follow kernels.c: quantize_q8 writes bit-identical blocks (f16
// rounding by the FCVT instructions, round-half-even by FCVTNS); the dots
// only add in another order.
#if defined(__aarch64__)

#ifndef VM_NEON_Q8 // ===================== first pass: everything else =====================
#include "kernels.h"

#include <arm_neon.h>
#include <math.h>

#if defined(__APPLE__)
#include <sys/sysctl.h>
#elif defined(__linux__) || defined(__FreeBSD__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif
#endif

// The SDOT kernels' target (GCC's arm_neon.h defines vdotq_s32 under
// arch=armv8.2-a+dotprod, so a plain "+dotprod" on armv8-a is not enough).
#if defined(__ARM_FEATURE_DOTPROD)
#define VM_TARGET_DOTPROD
#elif defined(__clang__)
#define VM_TARGET_DOTPROD __attribute__((target("dotprod")))
#else
#define VM_TARGET_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))
#endif

int vm_cpu_arm_dotprod(void) {
#if defined(__ARM_FEATURE_DOTPROD)
    return 1;
#elif defined(__APPLE__)
    int v = 0;
    size_t len = sizeof v;
    if (sysctlbyname("hw.optional.arm.FEAT_DotProd", &v, &len, NULL, 0) == 0) return v != 0;
    return 1; // macOS before 12 lacks the key; every Apple Silicon Mac has DotProd
#elif defined(__linux__)
    return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#elif defined(__FreeBSD__)
    unsigned long hw = 0;
    return elf_aux_info(AT_HWCAP, &hw, sizeof hw) == 0 && (hw & HWCAP_ASIMDDP) != 0;
#else
    return 0;
#endif
}

// ---- helpers ----

static inline float h2f(uint16_t h) {
    return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0);
}
static inline uint16_t f2h(float f) { // round to nearest even (FPCR default), as vm_f32_to_f16
    return vget_lane_u16(vreinterpret_u16_f16(vcvt_f16_f32(vdupq_n_f32(f))), 0);
}
// 4 / 8 f16 or bf16 values from any byte address
static inline float32x4_t f16x4_load(const uint8_t *p) {
    return vcvt_f32_f16(vreinterpret_f16_u8(vld1_u8(p)));
}
static inline float32x4_t bf16_lo(uint16x8_t v) { return vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(v), 16)); }
static inline float32x4_t bf16_hi(uint16x8_t v) { return vreinterpretq_f32_u32(vshll_high_n_u16(v, 16)); }
// 8 unsigned / signed bytes -> two float32x4 (elements 0..3, 4..7)
static inline void u8x8_to_f32(uint8x8_t b, float32x4_t *lo, float32x4_t *hi) {
    uint16x8_t w = vmovl_u8(b);
    *lo = vcvtq_f32_u32(vmovl_u16(vget_low_u16(w)));
    *hi = vcvtq_f32_u32(vmovl_high_u16(w));
}
static inline void s8x8_to_f32(int8x8_t b, float32x4_t *lo, float32x4_t *hi) {
    int16x8_t w = vmovl_s8(b);
    *lo = vcvtq_f32_s32(vmovl_s16(vget_low_s16(w)));
    *hi = vcvtq_f32_s32(vmovl_high_s16(w));
}
// sum over 16 signed bytes times 16 floats, added to acc
static inline float32x4_t fma_s8x16(float32x4_t acc, int8x16_t q, const float *x) {
    float32x4_t a, b, c, d;
    s8x8_to_f32(vget_low_s8(q), &a, &b);
    s8x8_to_f32(vget_high_s8(q), &c, &d);
    acc = vfmaq_f32(acc, a, vld1q_f32(x));
    acc = vfmaq_f32(acc, b, vld1q_f32(x + 4));
    acc = vfmaq_f32(acc, c, vld1q_f32(x + 8));
    return vfmaq_f32(acc, d, vld1q_f32(x + 12));
}

// ---- float weight rows ----

static float dot_f32(const void *w, const vm_xrow *x, int n) {
    const uint8_t *p = w;
    const float *xv = x->x;
    float32x4_t a0 = vdupq_n_f32(0), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const uint8_t *q = p + 4 * (size_t)i;
        a0 = vfmaq_f32(a0, vreinterpretq_f32_u8(vld1q_u8(q)), vld1q_f32(xv + i));
        a1 = vfmaq_f32(a1, vreinterpretq_f32_u8(vld1q_u8(q + 16)), vld1q_f32(xv + i + 4));
        a2 = vfmaq_f32(a2, vreinterpretq_f32_u8(vld1q_u8(q + 32)), vld1q_f32(xv + i + 8));
        a3 = vfmaq_f32(a3, vreinterpretq_f32_u8(vld1q_u8(q + 48)), vld1q_f32(xv + i + 12));
    }
    for (; i + 4 <= n; i += 4)
        a0 = vfmaq_f32(a0, vreinterpretq_f32_u8(vld1q_u8(p + 4 * (size_t)i)), vld1q_f32(xv + i));
    float s = vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));
    for (; i < n; i++) { float v; memcpy(&v, p + 4 * (size_t)i, 4); s += v * xv[i]; }
    return s;
}

static float dot_f16(const void *w, const vm_xrow *x, int n) {
    const uint8_t *p = w;
    const float *xv = x->x;
    float32x4_t a0 = vdupq_n_f32(0), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const uint8_t *q = p + 2 * (size_t)i;
        a0 = vfmaq_f32(a0, f16x4_load(q), vld1q_f32(xv + i));
        a1 = vfmaq_f32(a1, f16x4_load(q + 8), vld1q_f32(xv + i + 4));
        a2 = vfmaq_f32(a2, f16x4_load(q + 16), vld1q_f32(xv + i + 8));
        a3 = vfmaq_f32(a3, f16x4_load(q + 24), vld1q_f32(xv + i + 12));
    }
    for (; i + 4 <= n; i += 4) a0 = vfmaq_f32(a0, f16x4_load(p + 2 * (size_t)i), vld1q_f32(xv + i));
    float s = vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));
    for (; i < n; i++) s += h2f(vm_load_u16(p + 2 * (size_t)i)) * xv[i];
    return s;
}

static float dot_bf16(const void *w, const vm_xrow *x, int n) {
    const uint8_t *p = w;
    const float *xv = x->x;
    float32x4_t a0 = vdupq_n_f32(0), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        uint16x8_t v0 = vreinterpretq_u16_u8(vld1q_u8(p + 2 * (size_t)i));
        uint16x8_t v1 = vreinterpretq_u16_u8(vld1q_u8(p + 2 * (size_t)i + 16));
        a0 = vfmaq_f32(a0, bf16_lo(v0), vld1q_f32(xv + i));
        a1 = vfmaq_f32(a1, bf16_hi(v0), vld1q_f32(xv + i + 4));
        a2 = vfmaq_f32(a2, bf16_lo(v1), vld1q_f32(xv + i + 8));
        a3 = vfmaq_f32(a3, bf16_hi(v1), vld1q_f32(xv + i + 12));
    }
    float s = vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));
    for (; i < n; i++) s += vm_bf16_to_f32(vm_load_u16(p + 2 * (size_t)i)) * xv[i];
    return s;
}

// ---- GGUF blocks against f32 activations ----
// Q4 byte j holds element j (low nibble) and j+16 (high nibble).

static float dot_q4_0(const void *w, const vm_xrow *x, int n) {
    const vm_block_q4_0 *b = w;
    const uint8x16_t m4 = vdupq_n_u8(0x0f);
    const int8x16_t eight = vdupq_n_s8(8);
    float32x4_t total = vdupq_n_f32(0);
    for (int ib = 0; ib < n / VM_QK; ib++) {
        const float *xb = x->x + ib * VM_QK;
        uint8x16_t q = vld1q_u8(b[ib].qs);
        int8x16_t lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q, m4)), eight);
        int8x16_t hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(q, 4)), eight);
        float32x4_t acc = fma_s8x16(fma_s8x16(vdupq_n_f32(0), lo, xb), hi, xb + 16);
        total = vfmaq_n_f32(total, acc, h2f(b[ib].d));
    }
    return vaddvq_f32(total);
}

static float dot_q4_1(const void *w, const vm_xrow *x, int n) {
    const vm_block_q4_1 *b = w;
    const uint8x16_t m4 = vdupq_n_u8(0x0f);
    float32x4_t total = vdupq_n_f32(0);
    float msum = 0;
    for (int ib = 0; ib < n / VM_QK; ib++) {
        const float *xb = x->x + ib * VM_QK;
        uint8x16_t q = vld1q_u8(b[ib].qs);
        int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(q, m4)), hi = vreinterpretq_s8_u8(vshrq_n_u8(q, 4));
        float32x4_t acc = fma_s8x16(fma_s8x16(vdupq_n_f32(0), lo, xb), hi, xb + 16);
        total = vfmaq_n_f32(total, acc, h2f(b[ib].d));
        msum += h2f(b[ib].m) * x->gsum[ib];
    }
    return vaddvq_f32(total) + msum;
}

static float dot_q8_0(const void *w, const vm_xrow *x, int n) {
    const vm_block_q8_0 *b = w;
    float32x4_t total = vdupq_n_f32(0);
    for (int ib = 0; ib < n / VM_QK; ib++) {
        const float *xb = x->x + ib * VM_QK;
        float32x4_t acc = fma_s8x16(vdupq_n_f32(0), vld1q_s8(b[ib].qs), xb);
        acc = fma_s8x16(acc, vld1q_s8(b[ib].qs + 16), xb + 16);
        total = vfmaq_n_f32(total, acc, h2f(b[ib].d));
    }
    return vaddvq_f32(total);
}

// ---- MLX affine (w = scale*q + bias per group), values LSB-first in u32 words ----

// 4-bit: byte j of a run holds element 2j (low nibble) and 2j+1 (high);
// vld2q_f32 splits x into the matching even / odd lanes.
static inline float32x4_t mlx4_group(const uint8_t *q, const float *x, int gs) {
    const uint8x16_t m4 = vdupq_n_u8(0x0f);
    float32x4_t acc0 = vdupq_n_f32(0), acc1 = acc0;
    for (int i = 0; i < gs; i += 32, q += 16, x += 32) {
        uint8x16_t b = vld1q_u8(q);
        uint8x16_t ev = vandq_u8(b, m4), od = vshrq_n_u8(b, 4);
        float32x4_t e0, e1, e2, e3, o0, o1, o2, o3;
        u8x8_to_f32(vget_low_u8(ev), &e0, &e1);
        u8x8_to_f32(vget_high_u8(ev), &e2, &e3);
        u8x8_to_f32(vget_low_u8(od), &o0, &o1);
        u8x8_to_f32(vget_high_u8(od), &o2, &o3);
        float32x4x2_t x0 = vld2q_f32(x), x1 = vld2q_f32(x + 8), x2 = vld2q_f32(x + 16), x3 = vld2q_f32(x + 24);
        acc0 = vfmaq_f32(acc0, e0, x0.val[0]); acc1 = vfmaq_f32(acc1, o0, x0.val[1]);
        acc0 = vfmaq_f32(acc0, e1, x1.val[0]); acc1 = vfmaq_f32(acc1, o1, x1.val[1]);
        acc0 = vfmaq_f32(acc0, e2, x2.val[0]); acc1 = vfmaq_f32(acc1, o2, x2.val[1]);
        acc0 = vfmaq_f32(acc0, e3, x3.val[0]); acc1 = vfmaq_f32(acc1, o3, x3.val[1]);
    }
    return vaddq_f32(acc0, acc1);
}

// 8-bit: one byte per element, in order
static inline float32x4_t mlx8_group(const uint8_t *q, const float *x, int gs) {
    float32x4_t acc0 = vdupq_n_f32(0), acc1 = acc0;
    for (int i = 0; i < gs; i += 16, q += 16, x += 16) {
        uint8x16_t b = vld1q_u8(q);
        float32x4_t a, c, d, e;
        u8x8_to_f32(vget_low_u8(b), &a, &c);
        u8x8_to_f32(vget_high_u8(b), &d, &e);
        acc0 = vfmaq_f32(acc0, a, vld1q_f32(x));
        acc1 = vfmaq_f32(acc1, c, vld1q_f32(x + 4));
        acc0 = vfmaq_f32(acc0, d, vld1q_f32(x + 8));
        acc1 = vfmaq_f32(acc1, e, vld1q_f32(x + 12));
    }
    return vaddq_f32(acc0, acc1);
}

// 2-bit: byte j holds elements 4j..4j+3 (bits 0-1, 2-3, 4-5, 6-7);
// vld4q_f32 splits x into the four matching lane sets.
static inline float32x4_t mlx2_group(const uint8_t *q, const float *x, int gs) {
    const uint8x8_t m2 = vdup_n_u8(3);
    float32x4_t acc0 = vdupq_n_f32(0), acc1 = acc0;
    for (int i = 0; i < gs; i += 32, q += 8, x += 32) {
        uint8x8_t b = vld1_u8(q);
        float32x4x4_t x0 = vld4q_f32(x), x1 = vld4q_f32(x + 16);
        uint8x8_t f[4] = { vand_u8(b, m2), vand_u8(vshr_n_u8(b, 2), m2), vand_u8(vshr_n_u8(b, 4), m2), vshr_n_u8(b, 6) };
        for (int k = 0; k < 4; k++) {
            float32x4_t lo, hi;
            u8x8_to_f32(f[k], &lo, &hi);
            acc0 = vfmaq_f32(acc0, lo, x0.val[k]);
            acc1 = vfmaq_f32(acc1, hi, x1.val[k]);
        }
    }
    return vaddq_f32(acc0, acc1);
}

static float dot_mlx(const vm_weight *w, int64_t row, const vm_xrow *x) {
    const int bits = w->bits, gs = w->group_size;
    if ((bits != 2 && bits != 4 && bits != 8) || gs <= 0 || gs % 32) return vm_kernels_generic.dot_mlx(w, row, x);
    const int64_t n = w->cols, groups = n / gs;
    const size_t gbytes = (size_t)gs * (size_t)bits / 8;
    const uint8_t *rowp = (const uint8_t *)w->data + (size_t)row * (size_t)(n * bits / 8);
    float32x4_t total = vdupq_n_f32(0);
    float bsum = 0;
    for (int64_t g = 0; g < groups; g++) {
        const uint8_t *q = rowp + (size_t)g * gbytes;
        const float *xg = x->x + g * gs;
        float32x4_t acc = bits == 4 ? mlx4_group(q, xg, gs) : bits == 8 ? mlx8_group(q, xg, gs) : mlx2_group(q, xg, gs);
        float sc = vm_load_scale(w->scale_dtype, w->scales, row * groups + g);
        float bi = vm_load_scale(w->scale_dtype, w->biases, row * groups + g);
        total = vfmaq_n_f32(total, acc, sc);
        bsum += bi * x->gsum[g];
    }
    return vaddvq_f32(total) + bsum;
}

// ---- 8-bit activation blocks ----

static void quantize_q8(const float *x, vm_q8_block *out, int n) {
    for (int ib = 0; ib < n / 32; ib++) {
        const float *xb = x + ib * 32;
        float32x4_t v[8];
        float32x4_t m = vdupq_n_f32(0);
        for (int k = 0; k < 8; k++) {
            v[k] = vld1q_f32(xb + 4 * k);
            m = vmaxnmq_f32(m, vabsq_f32(v[k])); // maxNum ignores NaN, as fmaxf
        }
        float amax = vmaxnmvq_f32(m);
        float d = amax / 127.0f, id = amax > 0 ? 127.0f / amax : 0.0f;
        int32x4_t q[8], sum = vdupq_n_s32(0);
        for (int k = 0; k < 8; k++) {
            q[k] = vcvtnq_s32_f32(vmulq_n_f32(v[k], id)); // round half to even, as nearbyintf
            sum = vaddq_s32(sum, q[k]);
        }
        int16x8_t h0 = vcombine_s16(vmovn_s32(q[0]), vmovn_s32(q[1]));
        int16x8_t h1 = vcombine_s16(vmovn_s32(q[2]), vmovn_s32(q[3]));
        int16x8_t h2 = vcombine_s16(vmovn_s32(q[4]), vmovn_s32(q[5]));
        int16x8_t h3 = vcombine_s16(vmovn_s32(q[6]), vmovn_s32(q[7]));
        vst1q_s8(out[ib].q, vcombine_s8(vmovn_s16(h0), vmovn_s16(h1)));
        vst1q_s8(out[ib].q + 16, vcombine_s8(vmovn_s16(h2), vmovn_s16(h3)));
        int32_t isum = vaddvq_s32(sum);
        out[ib].d = h2f(f2h(d));
        out[ib].s = h2f(f2h(d * (float)isum));
        out[ib].isum = isum;
    }
}

// 16 signed bytes times 16 signed bytes, summed into 4 i32 lanes: SMULL+SADALP
static inline int32x4_t sdot_mull(int32x4_t acc, int8x16_t a, int8x16_t b) {
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b)));
    return vpadalq_s16(acc, vmull_high_s8(a, b));
}

// SDOT. Older clang's arm_neon.h declares vdotq_s32 only when the whole file
// is built with DotProd, so there the instruction is written out (the
// function's target attribute lets the assembler take it).
#if defined(__clang__) && !defined(__ARM_FEATURE_DOTPROD)
VM_TARGET_DOTPROD static inline int32x4_t sdot_dp(int32x4_t acc, int8x16_t a, int8x16_t b) {
    __asm__("sdot %0.4s, %1.16b, %2.16b" : "+w"(acc) : "w"(a), "w"(b));
    return acc;
}
#else
#define sdot_dp(acc, a, b) vdotq_s32(acc, a, b)
#endif

// The q8 kernels, twice: with SDOT and without.
#define VM_NEON_Q8 1
#define Q8_ATTR VM_TARGET_DOTPROD
#define Q8_SDOT(acc, a, b) sdot_dp(acc, a, b)
#define Q8_NAME(f) f##_dp
#define Q8_GEMV8 1
#include "kernels_neon.c"
#undef Q8_GEMV8
#undef Q8_ATTR
#undef Q8_SDOT
#undef Q8_NAME
#define Q8_ATTR
#define Q8_SDOT(acc, a, b) sdot_mull(acc, a, b)
#define Q8_NAME(f) f##_mull
#include "kernels_neon.c"
#undef VM_NEON_Q8

// ---- attention helpers ----

static float vdot(const float *a, const float *b, int n) {
    float32x4_t a0 = vdupq_n_f32(0), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = vfmaq_f32(a0, vld1q_f32(a + i), vld1q_f32(b + i));
        a1 = vfmaq_f32(a1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
        a2 = vfmaq_f32(a2, vld1q_f32(a + i + 8), vld1q_f32(b + i + 8));
        a3 = vfmaq_f32(a3, vld1q_f32(a + i + 12), vld1q_f32(b + i + 12));
    }
    for (; i + 4 <= n; i += 4) a0 = vfmaq_f32(a0, vld1q_f32(a + i), vld1q_f32(b + i));
    float s = vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static void axpy(float *y, float a, const float *x, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), vld1q_f32(x + i), a));
        vst1q_f32(y + i + 4, vfmaq_n_f32(vld1q_f32(y + i + 4), vld1q_f32(x + i + 4), a));
    }
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), vld1q_f32(x + i), a));
    for (; i < n; i++) y[i] += a * x[i];
}

static void axpy_f16(float *y, float a, const uint16_t *x, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        float16x8_t h = vreinterpretq_f16_u16(vld1q_u16(x + i));
        vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), vcvt_f32_f16(vget_low_f16(h)), a));
        vst1q_f32(y + i + 4, vfmaq_n_f32(vld1q_f32(y + i + 4), vcvt_high_f32_f16(h), a));
    }
    for (; i + 4 <= n; i += 4)
        vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(x + i))), a));
    for (; i < n; i++) y[i] = fmaf(a, h2f(x[i]), y[i]);
}

static void axpy_lanes_f16(float *acc, size_t astride, const float *w, size_t wstride, int nq, int lanes, int p0,
                           const uint16_t *const *rows, int n, int hd) {
    for (int i = 0; i < nq; i++)
        for (int p = 0; p < n; p++)
            axpy_f16(acc + i * astride + (size_t)((p0 + p) & (lanes - 1)) * hd, w[i * wstride + p], rows[p], hd);
}

// Repacked 8-row groups back to rows (kernels.h, vm_q_unpack8): 16 bytes of
// 4 chunks hold 4 rows' words; a 4x4 transpose of 32-bit words gives the rows.
static inline void transpose4x4_store(const uint8_t *q, size_t cstride, uint8_t *dst, size_t stride) {
    uint32x4_t a = vld1q_u32((const uint32_t *)q), b = vld1q_u32((const uint32_t *)(q + cstride));
    uint32x4_t c = vld1q_u32((const uint32_t *)(q + 2 * cstride)), d = vld1q_u32((const uint32_t *)(q + 3 * cstride));
    uint64x2_t t0 = vreinterpretq_u64_u32(vtrn1q_u32(a, b)), t1 = vreinterpretq_u64_u32(vtrn2q_u32(a, b));
    uint64x2_t t2 = vreinterpretq_u64_u32(vtrn1q_u32(c, d)), t3 = vreinterpretq_u64_u32(vtrn2q_u32(c, d));
    vst1q_u8(dst, vreinterpretq_u8_u64(vtrn1q_u64(t0, t2)));
    vst1q_u8(dst + stride, vreinterpretq_u8_u64(vtrn1q_u64(t1, t3)));
    vst1q_u8(dst + 2 * stride, vreinterpretq_u8_u64(vtrn2q_u64(t0, t2)));
    vst1q_u8(dst + 3 * stride, vreinterpretq_u8_u64(vtrn2q_u64(t1, t3)));
}

static void words4x8(const uint8_t *q, uint8_t *dst, size_t stride) {
    transpose4x4_store(q, 32, dst, stride);             // rows 0-3: the chunks' first 16 bytes
    transpose4x4_store(q + 16, 32, dst + 4 * stride, stride);
}

static void unpack8(vm_dtype t, const void *group, int64_t cols, void *rows) {
    vm_q_unpack8_by(t, group, cols, rows, words4x8);
}

// ---- matmul_tile: dense rows x tokens, register-blocked ----
// One row against T tokens (T <= 4, a constant after inlining: 16
// accumulators and the chunk's 4 vectors stay in NEON's 32 registers): each 16-element
// weight chunk is loaded and converted once for the T tokens, and every token
// keeps dot_f32/f16/bf16's four accumulators, 4-element loop (f32 and f16
// only) and scalar tail, so each (row, token) sum is that dot's, step for step.

// weight elements i..i+15 as four float32x4 (the dots' a0..a3 operands)
static inline __attribute__((always_inline)) void dense16(vm_dtype t, const uint8_t *p, int i, float32x4_t v[4]) {
    if (t == VM_DTYPE_F32) {
        const uint8_t *q = p + 4 * (size_t)i;
        for (int j = 0; j < 4; j++) v[j] = vreinterpretq_f32_u8(vld1q_u8(q + 16 * j));
    } else if (t == VM_DTYPE_F16) {
        const uint8_t *q = p + 2 * (size_t)i;
        for (int j = 0; j < 4; j++) v[j] = f16x4_load(q + 8 * j);
    } else {
        uint16x8_t v0 = vreinterpretq_u16_u8(vld1q_u8(p + 2 * (size_t)i));
        uint16x8_t v1 = vreinterpretq_u16_u8(vld1q_u8(p + 2 * (size_t)i + 16));
        v[0] = bf16_lo(v0); v[1] = bf16_hi(v0); v[2] = bf16_lo(v1); v[3] = bf16_hi(v1);
    }
}

// the tails' weight element i, converted as the dots convert it
static inline __attribute__((always_inline)) float dense1(vm_dtype t, const uint8_t *p, int i) {
    if (t == VM_DTYPE_F32) { float v; memcpy(&v, p + 4 * (size_t)i, 4); return v; }
    if (t == VM_DTYPE_F16) return h2f(vm_load_u16(p + 2 * (size_t)i));
    return vm_bf16_to_f32(vm_load_u16(p + 2 * (size_t)i));
}

static inline __attribute__((always_inline)) void tile_rt(vm_dtype t, const int T, const uint8_t *w, const float *x,
                                                          size_t xs, int n, float *out, size_t os) {
    float32x4_t a[4][4];   // [token][a0..a3]
    _Pragma("GCC unroll 4") for (int k = 0; k < T; k++) a[k][0] = a[k][1] = a[k][2] = a[k][3] = vdupq_n_f32(0);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        float32x4_t v[4];
        dense16(t, w, i, v);
        _Pragma("GCC unroll 4") for (int k = 0; k < T; k++) {
            const float *xk = x + (size_t)k * xs + i;
            a[k][0] = vfmaq_f32(a[k][0], v[0], vld1q_f32(xk));
            a[k][1] = vfmaq_f32(a[k][1], v[1], vld1q_f32(xk + 4));
            a[k][2] = vfmaq_f32(a[k][2], v[2], vld1q_f32(xk + 8));
            a[k][3] = vfmaq_f32(a[k][3], v[3], vld1q_f32(xk + 12));
        }
    }
    if (t != VM_DTYPE_BF16)   // dot_bf16 has no 4-element loop
        for (; i + 4 <= n; i += 4) {
            const float32x4_t v = t == VM_DTYPE_F32 ? vreinterpretq_f32_u8(vld1q_u8(w + 4 * (size_t)i))
                                                    : f16x4_load(w + 2 * (size_t)i);
            _Pragma("GCC unroll 4") for (int k = 0; k < T; k++)
                a[k][0] = vfmaq_f32(a[k][0], v, vld1q_f32(x + (size_t)k * xs + i));
        }
    _Pragma("GCC unroll 4") for (int k = 0; k < T; k++) {
        const float *xv = x + (size_t)k * xs;
        float s = vaddvq_f32(vaddq_f32(vaddq_f32(a[k][0], a[k][1]), vaddq_f32(a[k][2], a[k][3])));
        for (int j = i; j < n; j++) s += dense1(t, w, j) * xv[j];
        out[(size_t)k * os] = s;
    }
}

// ---- matmul_tile_mlx: MLX affine rows x tokens ----
// Rows row0 .. row0 + R - 1 against T tokens (R and T constants after
// inlining: 4 x 1 or 1 x up to 4): out[t * os + r] = dot_mlx of that row and
// token. Each chunk of a row's codes is widened once for the T tokens and
// each x chunk loaded once for the R rows; every pair keeps dot_mlx's order:
// per group its own acc0 / acc1, fed the products in the order mlx4_group /
// mlx8_group / mlx2_group feed them (the pairs' chains are independent, so
// running them side by side changes nothing), then
// total = vfmaq_n_f32(total, acc0 + acc1, sc), bsum += bi * gsum[g], and
// vaddvq_f32(total) + bsum.
static inline __attribute__((always_inline)) void mlx_tile_rt(const int R, const int T, const int bits,
                                                              const vm_weight *w, int64_t row0, const float *x,
                                                              size_t xs, const float *gsum, size_t gstride,
                                                              float *out, size_t os) {
    const int gs = w->group_size;
    const int64_t groups = w->cols / gs;
    const size_t gbytes = (size_t)gs * (size_t)bits / 8;
    const size_t rb = (size_t)(w->cols * bits / 8);
    const uint8_t *rowp = (const uint8_t *)w->data + (size_t)row0 * rb;
    float32x4_t total[4][4];
    float bsum[4][4];
    _Pragma("GCC unroll 4") for (int r = 0; r < R; r++)
        _Pragma("GCC unroll 4") for (int k = 0; k < T; k++) { total[r][k] = vdupq_n_f32(0); bsum[r][k] = 0; }
    for (int64_t g = 0; g < groups; g++) {
        const uint8_t *q = rowp + (size_t)g * gbytes;
        const float *xg = x + g * gs;
        float32x4_t acc0[4][4], acc1[4][4];
        _Pragma("GCC unroll 4") for (int r = 0; r < R; r++)
            _Pragma("GCC unroll 4") for (int k = 0; k < T; k++) acc0[r][k] = acc1[r][k] = vdupq_n_f32(0);
        if (bits == 4) {   // mlx4_group: e_j with the even x of elements 8j.., o_j with the odd
            const uint8x16_t m4 = vdupq_n_u8(0x0f);
            for (int i = 0; i < gs; i += 32, q += 16) {
                uint8x16_t b[4];
                _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) b[r] = vld1q_u8(q + (size_t)r * rb);
                _Pragma("GCC unroll 2") for (int h = 0; h < 2; h++) {   // e_2h, e_2h+1 and o_2h, o_2h+1
                    float32x4_t e0[4], e1[4], o0[4], o1[4];
                    _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) {
                        const uint8x16_t ev = vandq_u8(b[r], m4), od = vshrq_n_u8(b[r], 4);
                        u8x8_to_f32(h ? vget_high_u8(ev) : vget_low_u8(ev), &e0[r], &e1[r]);
                        u8x8_to_f32(h ? vget_high_u8(od) : vget_low_u8(od), &o0[r], &o1[r]);
                    }
                    _Pragma("GCC unroll 4") for (int k = 0; k < T; k++) {
                        const float *xk = xg + (size_t)k * xs + i + 16 * h;
                        const float32x4x2_t x0 = vld2q_f32(xk), x1 = vld2q_f32(xk + 8);
                        _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) {
                            acc0[r][k] = vfmaq_f32(acc0[r][k], e0[r], x0.val[0]);
                            acc1[r][k] = vfmaq_f32(acc1[r][k], o0[r], x0.val[1]);
                            acc0[r][k] = vfmaq_f32(acc0[r][k], e1[r], x1.val[0]);
                            acc1[r][k] = vfmaq_f32(acc1[r][k], o1[r], x1.val[1]);
                        }
                    }
                }
            }
        } else if (bits == 8) {   // mlx8_group: elements 0-3, 8-11 to acc0; 4-7, 12-15 to acc1
            for (int i = 0; i < gs; i += 16, q += 16) {
                float32x4_t c0[4], c1[4], c2[4], c3[4];
                _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) {
                    const uint8x16_t b = vld1q_u8(q + (size_t)r * rb);
                    u8x8_to_f32(vget_low_u8(b), &c0[r], &c1[r]);
                    u8x8_to_f32(vget_high_u8(b), &c2[r], &c3[r]);
                }
                _Pragma("GCC unroll 4") for (int k = 0; k < T; k++) {
                    const float *xk = xg + (size_t)k * xs + i;
                    const float32x4_t xa = vld1q_f32(xk), xb = vld1q_f32(xk + 4);
                    const float32x4_t xc = vld1q_f32(xk + 8), xd = vld1q_f32(xk + 12);
                    _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) {
                        acc0[r][k] = vfmaq_f32(acc0[r][k], c0[r], xa);
                        acc1[r][k] = vfmaq_f32(acc1[r][k], c1[r], xb);
                        acc0[r][k] = vfmaq_f32(acc0[r][k], c2[r], xc);
                        acc1[r][k] = vfmaq_f32(acc1[r][k], c3[r], xd);
                    }
                }
            }
        } else {   // mlx2_group: field f of bytes 0-7 against lane set f of x 0-15 (acc0), 16-31 (acc1)
            const uint8x8_t m2 = vdup_n_u8(3);
            for (int i = 0; i < gs; i += 32, q += 8) {
                uint8x8_t f[4][4];   // [row][field]
                _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) {
                    const uint8x8_t b = vld1_u8(q + (size_t)r * rb);
                    f[r][0] = vand_u8(b, m2);
                    f[r][1] = vand_u8(vshr_n_u8(b, 2), m2);
                    f[r][2] = vand_u8(vshr_n_u8(b, 4), m2);
                    f[r][3] = vshr_n_u8(b, 6);
                }
                _Pragma("GCC unroll 4") for (int k = 0; k < T; k++) {
                    const float32x4x4_t x0 = vld4q_f32(xg + (size_t)k * xs + i), x1 = vld4q_f32(xg + (size_t)k * xs + i + 16);
                    _Pragma("GCC unroll 4") for (int r = 0; r < R; r++)
                        _Pragma("GCC unroll 4") for (int fi = 0; fi < 4; fi++) {
                            float32x4_t lo, hi;
                            u8x8_to_f32(f[r][fi], &lo, &hi);
                            acc0[r][k] = vfmaq_f32(acc0[r][k], lo, x0.val[fi]);
                            acc1[r][k] = vfmaq_f32(acc1[r][k], hi, x1.val[fi]);
                        }
                }
            }
        }
        _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) {
            const float sc = vm_load_scale(w->scale_dtype, w->scales, (row0 + r) * groups + g);
            const float bi = vm_load_scale(w->scale_dtype, w->biases, (row0 + r) * groups + g);
            _Pragma("GCC unroll 4") for (int k = 0; k < T; k++) {
                total[r][k] = vfmaq_n_f32(total[r][k], vaddq_f32(acc0[r][k], acc1[r][k]), sc);
                bsum[r][k] += bi * gsum[(size_t)k * gstride + g];
            }
        }
    }
    _Pragma("GCC unroll 4") for (int r = 0; r < R; r++)
        _Pragma("GCC unroll 4") for (int k = 0; k < T; k++) out[(size_t)k * os + r] = vaddvq_f32(total[r][k]) + bsum[r][k];
}

#define VM_MLX_ROWS 4
#define VM_TILE_TOKENS 4
#define VM_MLX_TOKENS 4
#define VM_MLX_TILE_2BIT 1
#include "kernels_tile.h"

const vm_cpu_kernels vm_kernels_neon_dotprod = {
    "neon_dotprod", dot_f32, dot_f16, dot_bf16, dot_q4_0, dot_q4_1, dot_q8_0, dot_mlx,
    quantize_q8, dot_q4_0_q8_dp, dot_q4_1_q8_dp, dot_q8_0_q8_dp,
    dot4_q4_0_q8_dp, dot4_q4_1_q8_dp, dot4_q8_0_q8_dp,
    dot8_q4_0_q8_dp, dot8_q4_1_q8_dp, dot8_q8_0_q8_dp, gemv8_q4_0_q8_dp, gemv8_q4_1_q8_dp, gemv8_q8_0_q8_dp,
    unpack8, vdot, axpy,
    vm_generic_scale_max, vm_generic_exp_sum, vm_generic_silu_mul,
    vm_generic_to_f16, vm_generic_round_f16, vm_generic_dots_f16, axpy_lanes_f16,
    vm_generic_rope_rotate, vm_generic_lanes_sum, matmul_tile, matmul_tile_mlx,
};

const vm_cpu_kernels vm_kernels_neon = {
    "neon", dot_f32, dot_f16, dot_bf16, dot_q4_0, dot_q4_1, dot_q8_0, dot_mlx,
    quantize_q8, dot_q4_0_q8_mull, dot_q4_1_q8_mull, dot_q8_0_q8_mull,
    dot4_q4_0_q8_mull, dot4_q4_1_q8_mull, dot4_q8_0_q8_mull,
    dot8_q4_0_q8_mull, dot8_q4_1_q8_mull, dot8_q8_0_q8_mull, NULL, NULL, NULL, NULL, vdot, axpy,
    vm_generic_scale_max, vm_generic_exp_sum, vm_generic_silu_mul,
    vm_generic_to_f16, vm_generic_round_f16, vm_generic_dots_f16, axpy_lanes_f16,
    vm_generic_rope_rotate, vm_generic_lanes_sum, matmul_tile, matmul_tile_mlx,
};

#else // ===================== second pass: the GGUF q8 kernels =====================
// Included twice from above: Q8_SDOT(acc, a, b) adds the 16 products a[i]*b[i]
// of two int8x16 into 4 i32 lanes; Q8_ATTR is the functions' target
// attribute; Q8_NAME(f) their name. Integer block sums are exact, so only the
// float sum of d_w*d_x*acc over blocks may round differently from kernels.c.

// Q4_0: nibbles minus 8 as signed bytes (the same integer as acc - 8*isum)
Q8_ATTR static float Q8_NAME(dot_q4_0_q8)(const void *w, const vm_q8_block *x, int n) {
    const vm_block_q4_0 *b = w;
    const uint8x16_t m4 = vdupq_n_u8(0x0f);
    const int8x16_t eight = vdupq_n_s8(8);
    float32x4_t acc = vdupq_n_f32(0);
    for (int ib = 0; ib < n / 32; ib++) {
        uint8x16_t q = vld1q_u8(b[ib].qs);
        int8x16_t lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q, m4)), eight);
        int8x16_t hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(q, 4)), eight);
        int32x4_t s = Q8_SDOT(Q8_SDOT(vdupq_n_s32(0), lo, vld1q_s8(x[ib].q)), hi, vld1q_s8(x[ib].q + 16));
        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(s), h2f(b[ib].d) * x[ib].d);
    }
    return vaddvq_f32(acc);
}

Q8_ATTR static float Q8_NAME(dot_q4_1_q8)(const void *w, const vm_q8_block *x, int n) {
    const vm_block_q4_1 *b = w;
    const uint8x16_t m4 = vdupq_n_u8(0x0f);
    float32x4_t acc = vdupq_n_f32(0);
    float msum = 0;
    for (int ib = 0; ib < n / 32; ib++) {
        uint8x16_t q = vld1q_u8(b[ib].qs);
        int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(q, m4)), hi = vreinterpretq_s8_u8(vshrq_n_u8(q, 4));
        int32x4_t s = Q8_SDOT(Q8_SDOT(vdupq_n_s32(0), lo, vld1q_s8(x[ib].q)), hi, vld1q_s8(x[ib].q + 16));
        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(s), h2f(b[ib].d) * x[ib].d);
        msum = fmaf(h2f(b[ib].m), x[ib].s, msum);
    }
    return vaddvq_f32(acc) + msum;
}

Q8_ATTR static float Q8_NAME(dot_q8_0_q8)(const void *w, const vm_q8_block *x, int n) {
    const vm_block_q8_0 *b = w;
    float32x4_t acc = vdupq_n_f32(0);
    for (int ib = 0; ib < n / 32; ib++) {
        int32x4_t s = Q8_SDOT(Q8_SDOT(vdupq_n_s32(0), vld1q_s8(b[ib].qs), vld1q_s8(x[ib].q)),
                              vld1q_s8(b[ib].qs + 16), vld1q_s8(x[ib].q + 16));
        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(s), h2f(b[ib].d) * x[ib].d);
    }
    return vaddvq_f32(acc);
}

// 4 tokens per weight block: the block is unpacked once (prefill).
Q8_ATTR static void Q8_NAME(dot4_q4_0_q8)(const void *w, const vm_q8_block *x, size_t xs, int n, float out[4]) {
    const vm_block_q4_0 *b = w;
    const uint8x16_t m4 = vdupq_n_u8(0x0f);
    const int8x16_t eight = vdupq_n_s8(8);
    float32x4_t acc[4] = { vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0) };
    for (int ib = 0; ib < n / 32; ib++) {
        uint8x16_t q = vld1q_u8(b[ib].qs);
        int8x16_t lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q, m4)), eight);
        int8x16_t hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(q, 4)), eight);
        float dw = h2f(b[ib].d);
        for (int t = 0; t < 4; t++) {
            const vm_q8_block *xb = x + t * xs + ib;
            int32x4_t s = Q8_SDOT(Q8_SDOT(vdupq_n_s32(0), lo, vld1q_s8(xb->q)), hi, vld1q_s8(xb->q + 16));
            acc[t] = vfmaq_n_f32(acc[t], vcvtq_f32_s32(s), dw * xb->d);
        }
    }
    for (int t = 0; t < 4; t++) out[t] = vaddvq_f32(acc[t]);
}

Q8_ATTR static void Q8_NAME(dot4_q4_1_q8)(const void *w, const vm_q8_block *x, size_t xs, int n, float out[4]) {
    const vm_block_q4_1 *b = w;
    const uint8x16_t m4 = vdupq_n_u8(0x0f);
    float32x4_t acc[4] = { vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0) };
    float msum[4] = { 0, 0, 0, 0 };
    for (int ib = 0; ib < n / 32; ib++) {
        uint8x16_t q = vld1q_u8(b[ib].qs);
        int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(q, m4)), hi = vreinterpretq_s8_u8(vshrq_n_u8(q, 4));
        float dw = h2f(b[ib].d), mw = h2f(b[ib].m);
        for (int t = 0; t < 4; t++) {
            const vm_q8_block *xb = x + t * xs + ib;
            int32x4_t s = Q8_SDOT(Q8_SDOT(vdupq_n_s32(0), lo, vld1q_s8(xb->q)), hi, vld1q_s8(xb->q + 16));
            acc[t] = vfmaq_n_f32(acc[t], vcvtq_f32_s32(s), dw * xb->d);
            msum[t] = fmaf(mw, xb->s, msum[t]);
        }
    }
    for (int t = 0; t < 4; t++) out[t] = vaddvq_f32(acc[t]) + msum[t];
}

Q8_ATTR static void Q8_NAME(dot4_q8_0_q8)(const void *w, const vm_q8_block *x, size_t xs, int n, float out[4]) {
    const vm_block_q8_0 *b = w;
    float32x4_t acc[4] = { vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0), vdupq_n_f32(0) };
    for (int ib = 0; ib < n / 32; ib++) {
        int8x16_t w0 = vld1q_s8(b[ib].qs), w1 = vld1q_s8(b[ib].qs + 16);
        float dw = h2f(b[ib].d);
        for (int t = 0; t < 4; t++) {
            const vm_q8_block *xb = x + t * xs + ib;
            int32x4_t s = Q8_SDOT(Q8_SDOT(vdupq_n_s32(0), w0, vld1q_s8(xb->q)), w1, vld1q_s8(xb->q + 16));
            acc[t] = vfmaq_n_f32(acc[t], vcvtq_f32_s32(s), dw * xb->d);
        }
    }
    for (int t = 0; t < 4; t++) out[t] = vaddvq_f32(acc[t]);
}

// 8 interleaved tokens (vm_q8_x8): each token's arithmetic as in the
// single-token kernels above, so out[t] is bit-identical to them.
Q8_ATTR static void Q8_NAME(dot8_q4_0_q8)(const void *w, const vm_q8_x8 *x, int n, float out[8]) {
    const vm_block_q4_0 *b = w;
    const uint8x16_t m4 = vdupq_n_u8(0x0f);
    const int8x16_t eight = vdupq_n_s8(8);
    float32x4_t acc[8];
    for (int t = 0; t < 8; t++) acc[t] = vdupq_n_f32(0);
    for (int ib = 0; ib < n / 32; ib++) {
        uint8x16_t q = vld1q_u8(b[ib].qs);
        int8x16_t lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q, m4)), eight);
        int8x16_t hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(q, 4)), eight);
        float dw = h2f(b[ib].d);
        for (int t = 0; t < 8; t++) {
            int32x4_t s = Q8_SDOT(Q8_SDOT(vdupq_n_s32(0), lo, vld1q_s8(x[ib].q[t])), hi, vld1q_s8(x[ib].q[t] + 16));
            acc[t] = vfmaq_n_f32(acc[t], vcvtq_f32_s32(s), dw * x[ib].d[t]);
        }
    }
    for (int t = 0; t < 8; t++) out[t] = vaddvq_f32(acc[t]);
}

Q8_ATTR static void Q8_NAME(dot8_q4_1_q8)(const void *w, const vm_q8_x8 *x, int n, float out[8]) {
    const vm_block_q4_1 *b = w;
    const uint8x16_t m4 = vdupq_n_u8(0x0f);
    float32x4_t acc[8];
    float msum[8];
    for (int t = 0; t < 8; t++) { acc[t] = vdupq_n_f32(0); msum[t] = 0; }
    for (int ib = 0; ib < n / 32; ib++) {
        uint8x16_t q = vld1q_u8(b[ib].qs);
        int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(q, m4)), hi = vreinterpretq_s8_u8(vshrq_n_u8(q, 4));
        float dw = h2f(b[ib].d), mw = h2f(b[ib].m);
        for (int t = 0; t < 8; t++) {
            int32x4_t s = Q8_SDOT(Q8_SDOT(vdupq_n_s32(0), lo, vld1q_s8(x[ib].q[t])), hi, vld1q_s8(x[ib].q[t] + 16));
            acc[t] = vfmaq_n_f32(acc[t], vcvtq_f32_s32(s), dw * x[ib].d[t]);
            msum[t] += mw * x[ib].s[t];
        }
    }
    for (int t = 0; t < 8; t++) out[t] = vaddvq_f32(acc[t]) + msum[t];
}

Q8_ATTR static void Q8_NAME(dot8_q8_0_q8)(const void *w, const vm_q8_x8 *x, int n, float out[8]) {
    const vm_block_q8_0 *b = w;
    float32x4_t acc[8];
    for (int t = 0; t < 8; t++) acc[t] = vdupq_n_f32(0);
    for (int ib = 0; ib < n / 32; ib++) {
        int8x16_t w0 = vld1q_s8(b[ib].qs), w1 = vld1q_s8(b[ib].qs + 16);
        float dw = h2f(b[ib].d);
        for (int t = 0; t < 8; t++) {
            int32x4_t s = Q8_SDOT(Q8_SDOT(vdupq_n_s32(0), w0, vld1q_s8(x[ib].q[t])), w1, vld1q_s8(x[ib].q[t] + 16));
            acc[t] = vfmaq_n_f32(acc[t], vcvtq_f32_s32(s), dw * x[ib].d[t]);
        }
    }
    for (int t = 0; t < 8; t++) out[t] = vaddvq_f32(acc[t]);
}

#ifdef Q8_GEMV8
// 8 repacked rows (vm_block_*x8, kernels.h) against one token, with SDOT only:
// 32-bit lane r of a 16-byte half of a quant chunk is row r's 4 bytes (rows
// 0-3, then 4-7), so SDOT against the token's matching 4 bytes, repeated,
// gives each row's lane sum. acc[h][k] holds lane k of the row-at-a-time
// accumulators (block elements 4k..4k+3 and 16+4k..16+4k+3) of 4 rows, fed
// in the same order, and the closing adds are vaddvq's, so every output is
// bit-identical to dot_*_q8 above.
static inline int8x16_t rep4(const int8_t *p) { int32_t v; memcpy(&v, p, 4); return vreinterpretq_s8_s32(vdupq_n_s32(v)); }
static inline float32x4_t h2f4(const uint16_t *p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
static inline void rows8_out(float32x4_t acc[2][4], const float32x4_t add[2], float out[8]) {
    for (int h = 0; h < 2; h++) {
        float32x4_t v = vaddq_f32(vaddq_f32(acc[h][0], acc[h][1]), vaddq_f32(acc[h][2], acc[h][3]));
        vst1q_f32(out + 4 * h, add ? vaddq_f32(v, add[h]) : v);
    }
}

// t is a constant in each caller, so the branches fold away.
Q8_ATTR static inline void Q8_NAME(gemv8_at)(vm_dtype t, const void *g, const vm_q8_block *x, int n, float out[8]) {
    const size_t bsz = t == VM_DTYPE_Q4_0 ? sizeof(vm_block_q4_0x8)
                     : t == VM_DTYPE_Q4_1 ? sizeof(vm_block_q4_1x8) : sizeof(vm_block_q8_0x8);
    const uint8x16_t m4 = vdupq_n_u8(0x0f);
    const int8x16_t eight = vdupq_n_s8(t == VM_DTYPE_Q4_0 ? 8 : 0);
    float32x4_t acc[2][4], ms[2] = { vdupq_n_f32(0), vdupq_n_f32(0) };
    for (int h = 0; h < 2; h++) for (int k = 0; k < 4; k++) acc[h][k] = vdupq_n_f32(0);
    for (int ib = 0; ib < n / 32; ib++) {
        const uint8_t *blk = (const uint8_t *)g + (size_t)ib * bsz;
        const uint16_t *d = (const uint16_t *)blk;                        // d[8] leads every layout
        const uint8_t *q = blk + (t == VM_DTYPE_Q4_1 ? 32 : 16);          // after d[8] (and m[8])
        for (int h = 0; h < 2; h++) {
            const float32x4_t dd = vmulq_n_f32(h2f4(d + 4 * h), x[ib].d);
            if (t == VM_DTYPE_Q4_1) ms[h] = vfmaq_n_f32(ms[h], h2f4(d + 8 + 4 * h), x[ib].s);
            for (int k = 0; k < 4; k++) {
                int8x16_t w0, w1;   // the elements 4k.. and 16+4k.. of each row
                if (t == VM_DTYPE_Q8_0) {
                    w0 = vld1q_s8((const int8_t *)q + 32 * k + 16 * h);
                    w1 = vld1q_s8((const int8_t *)q + 32 * (k + 4) + 16 * h);
                } else {
                    uint8x16_t c = vld1q_u8(q + 32 * k + 16 * h);
                    w0 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(c, m4)), eight);
                    w1 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(c, 4)), eight);
                }
                int32x4_t s = Q8_SDOT(Q8_SDOT(vdupq_n_s32(0), w0, rep4(x[ib].q + 4 * k)), w1, rep4(x[ib].q + 16 + 4 * k));
                acc[h][k] = vfmaq_f32(acc[h][k], vcvtq_f32_s32(s), dd);
            }
        }
    }
    rows8_out(acc, t == VM_DTYPE_Q4_1 ? ms : NULL, out);
}

Q8_ATTR static void Q8_NAME(gemv8_q4_0_q8)(const void *g, const vm_q8_block *x, int n, float out[8]) {
    Q8_NAME(gemv8_at)(VM_DTYPE_Q4_0, g, x, n, out);
}
Q8_ATTR static void Q8_NAME(gemv8_q4_1_q8)(const void *g, const vm_q8_block *x, int n, float out[8]) {
    Q8_NAME(gemv8_at)(VM_DTYPE_Q4_1, g, x, n, out);
}
Q8_ATTR static void Q8_NAME(gemv8_q8_0_q8)(const void *g, const vm_q8_block *x, int n, float out[8]) {
    Q8_NAME(gemv8_at)(VM_DTYPE_Q8_0, g, x, n, out);
}
#endif // Q8_GEMV8

#endif // VM_NEON_Q8
#endif // __aarch64__
