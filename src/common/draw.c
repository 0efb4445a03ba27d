// draw.c - the argmax, and one draw from softmax(x / temperature) by the
// inverse CDF at a given uniform: the engine's sampler (with the request's
// generator) and the backends' sample op (vm_backend.sample) share them, so
// both pick the same token.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

// Written on 4-float vectors (GCC vector extensions: one SSE or NEON register),
// with no fused multiply-adds (ISO C mode): every lane computes the same
// roundings, so a row's result depends only on the row, never on the machine.

typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));

static inline v4f v4_load(const float *p) { v4f v; memcpy(&v, p, sizeof v); return v; }
static inline void v4_store(float *p, v4f v) { memcpy(p, &v, sizeof v); }
static inline v4f v4_set1(float x) { return (v4f){ x, x, x, x }; }
static inline v4f v4_select(v4i m, v4f a, v4f b) { return (v4f)((m & (v4i)a) | (~m & (v4i)b)); }
static inline v4f v4_max(v4f a, v4f b) { return v4_select(a > b, a, b); } // NaN in a: b

// exp(x) for x <= 0 (Cephes' expf: round to n = x/ln2, two-part ln 2, degree-5
// polynomial, 2^n through the exponent bits); 0 below -87 and for NaN.
static inline v4f v4_exp_neg(v4f x) {
    v4i keep = x > v4_set1(-87.0f);
    x = v4_select(keep, x, v4_set1(-87.0f));
    const v4f magic = v4_set1(12582912.0f); // 1.5 * 2^23: adding it rounds to an integer
    v4f n = (x * v4_set1(1.44269504088896341f) + magic) - magic;
    v4f r = x - n * v4_set1(0.693359375f) - n * v4_set1(-2.12194440e-4f);
    v4f q = v4_set1(1.9875691500e-4f);
    q = q * r + v4_set1(1.3981999507e-3f);
    q = q * r + v4_set1(8.3334519073e-3f);
    q = q * r + v4_set1(4.1665795894e-2f);
    q = q * r + v4_set1(1.6666665459e-1f);
    q = q * r + v4_set1(5.0000001201e-1f);
    v4f e = q * (r * r) + r + v4_set1(1.0f);
    v4i ni = __builtin_convertvector(n, v4i);
    v4f two_n = (v4f)((ni + 127) << 23);
    return (v4f)(keep & (v4i)(e * two_n));
}

// The vector starting at x[i], padded with `pad` past n.
static inline v4f v4_load_tail(const float *x, int i, int n, float pad) {
    float t[4];
    for (int k = 0; k < 4; k++) t[k] = i + k < n ? x[i + k] : pad;
    return v4_load(t);
}

static float row_max(const float *x, int n) {
    v4f m = v4_set1(-INFINITY);
    int i = 0;
    for (; i + 4 <= n; i += 4) m = v4_max(v4_load(x + i), m);
    if (i < n) m = v4_max(v4_load_tail(x, i, n, -INFINITY), m);
    float mx = -INFINITY;
    for (int k = 0; k < 4; k++) if (m[k] > mx) mx = m[k];
    return mx;
}

int vm_argmax(const float *x, int n) {
    const float mx = row_max(x, n);
    for (int t = 0; t < n; t++) if (x[t] == mx) return t;
    return 0;
}

#define DRAW_BLOCK 512

int32_t vm_draw_u(float *x, int n, float temperature, double u01) {
    // probabilities exp(x/T - max) in place, summed per block of DRAW_BLOCK
    const v4f T = v4_set1(temperature);
    const float mx = row_max(x, n) / temperature; // = max of x/T (division is monotonic)
    const v4f m = v4_set1(mx == -INFINITY ? 0.0f : mx);
    int n_blocks = (n + DRAW_BLOCK - 1) / DRAW_BLOCK;
    double bsum_stack[1024], *bsum = n_blocks <= 1024 ? bsum_stack : malloc((size_t)n_blocks * sizeof *bsum);
    if (!bsum) return vm_argmax(x, n);
    double total = 0;
    for (int b = 0; b < n_blocks; b++) {
        int lo = b * DRAW_BLOCK, hi = VM_MIN(lo + DRAW_BLOCK, n), i = lo;
        v4f acc = v4_set1(0.0f);
        if (temperature == 1.0f)
            for (; i + 4 <= hi; i += 4) {
                v4f e = v4_exp_neg(v4_load(x + i) - m);
                v4_store(x + i, e);
                acc += e;
            }
        else
            for (; i + 4 <= hi; i += 4) {
                v4f e = v4_exp_neg(v4_load(x + i) / T - m);
                v4_store(x + i, e);
                acc += e;
            }
        if (i < hi) {
            v4f e = v4_exp_neg(v4_load_tail(x, i, hi, -INFINITY) / T - m);
            for (int k = 0; i + k < hi; k++) x[i + k] = e[k];
            acc += e;
        }
        double s = 0;
        for (int k = 0; k < 4; k++) s += acc[k];
        bsum[b] = s;
        total += s;
    }
    // inverse CDF at u01: the block, then the token in it
    double u = u01 * total, cum = 0;
    int32_t pick = -1;
    int last = n_blocks - 1;
    while (last > 0 && !(bsum[last] > 0)) last--;
    for (int b = 0; b <= last && pick < 0; b++) {
        if (!(bsum[b] > 0)) continue;
        int lo = b * DRAW_BLOCK, hi = VM_MIN(lo + DRAW_BLOCK, n);
        if (!(u < cum + bsum[b]) && b < last) { cum += bsum[b]; continue; }
        // in this block (or, by rounding, past the end of the last one)
        double in = cum;
        for (int t = lo; t < hi; t++) {
            if (x[t] == 0.0f) continue;
            in += x[t];
            pick = t;
            if (u < in) break;
        }
    }
    if (bsum != bsum_stack) free(bsum);
    return pick >= 0 ? pick : 0;
}

