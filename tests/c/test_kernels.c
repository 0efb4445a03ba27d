// test_kernels.c - every SIMD kernel against the generic C reference on random
// rows of every dtype, plus the thread pool.
#include <criterion/criterion.h>
#include <math.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/backend.h"
#include "backend/cpu/kernels.h"
#include "backend/cpu/thread_pool.h"

static uint32_t rng = 12345;
static float frand(void) { rng = rng * 1664525u + 1013904223u; return (float)(rng >> 8) / (1 << 24) * 2 - 1; }
static uint8_t brand(void) { rng = rng * 1664525u + 1013904223u; return (uint8_t)(rng >> 24); }

// Fills a weight of the given dtype with random content (valid scales).
static void *random_rows(vm_dtype t, int rows, int cols, vm_weight *w, int bits, int gs) {
    memset(w, 0, sizeof *w);
    w->dtype = t; w->rows = rows; w->cols = cols; w->name = "test";
    size_t row_bytes = t == VM_DTYPE_MLX_AFFINE ? (size_t)cols * bits / 8 : vm_dtype_row_bytes(t, cols);
    uint8_t *d = malloc(row_bytes * rows + 1);
    uint8_t *p = d + 1; // deliberately unaligned, as MLX files may be
    for (size_t i = 0; i < row_bytes * rows; i++) p[i] = brand();
    if (t == VM_DTYPE_F32) for (int i = 0; i < rows * cols; i++) { float f = frand(); memcpy(p + 4 * i, &f, 4); }
    if (t == VM_DTYPE_F16) for (int i = 0; i < rows * cols; i++) { uint16_t h = vm_f32_to_f16(frand()); memcpy(p + 2 * i, &h, 2); }
    if (t == VM_DTYPE_BF16) for (int i = 0; i < rows * cols; i++) { uint16_t h = vm_f32_to_bf16(frand()); memcpy(p + 2 * i, &h, 2); }
    if (t == VM_DTYPE_Q4_0 || t == VM_DTYPE_Q4_1 || t == VM_DTYPE_Q8_0) {
        size_t bsz = vm_dtype_row_bytes(t, 32);
        for (size_t b = 0; b < row_bytes * rows / bsz; b++) {
            uint16_t d16 = vm_f32_to_f16(frand() * 0.1f), m16 = vm_f32_to_f16(frand() * 0.1f);
            memcpy(p + b * bsz, &d16, 2);
            if (t == VM_DTYPE_Q4_1) memcpy(p + b * bsz + 2, &m16, 2);
        }
    }
    if (t == VM_DTYPE_MLX_AFFINE) {
        w->bits = bits; w->group_size = gs; w->scale_dtype = VM_DTYPE_BF16;
        int groups = cols / gs;
        uint16_t *sc = malloc(2 * rows * groups), *bi = malloc(2 * rows * groups);
        for (int i = 0; i < rows * groups; i++) { sc[i] = vm_f32_to_bf16(frand() * 0.1f); bi[i] = vm_f32_to_bf16(frand()); }
        w->scales = sc; w->biases = bi;
    }
    w->data = p;
    return d;
}

static float ref_dot(const vm_cpu_kernels *k, const vm_weight *w, int r, const vm_xrow *x) {
    const uint8_t *row = (const uint8_t *)w->data + (size_t)r * vm_weight_row_bytes(w);
    switch (w->dtype) {
    case VM_DTYPE_F32: return k->dot_f32(row, x, (int)w->cols);
    case VM_DTYPE_F16: return k->dot_f16(row, x, (int)w->cols);
    case VM_DTYPE_BF16: return k->dot_bf16(row, x, (int)w->cols);
    case VM_DTYPE_Q4_0: return k->dot_q4_0(row, x, (int)w->cols);
    case VM_DTYPE_Q4_1: return k->dot_q4_1(row, x, (int)w->cols);
    case VM_DTYPE_Q8_0: return k->dot_q8_0(row, x, (int)w->cols);
    default: return k->dot_mlx(w, r, x);
    }
}

static void check_dtype(vm_dtype t, int bits, int gs) {
    const vm_cpu_kernels *simd = vm_cpu_kernels_select();
    const int rows = 7, cols = 256 + 32 * (t == VM_DTYPE_F32); // odd tails for the float paths
    vm_weight w;
    void *mem = random_rows(t, rows, cols, &w, bits, gs);
    float x[512], gsum[64], deq[512];
    for (int i = 0; i < cols; i++) x[i] = frand();
    int group = t == VM_DTYPE_MLX_AFFINE ? gs : 32;
    for (int g = 0; g < cols / group; g++) { gsum[g] = 0; for (int i = 0; i < group; i++) gsum[g] += x[g * group + i]; }
    vm_xrow xr = { x, gsum };
    for (int r = 0; r < rows; r++) {
        float a = ref_dot(&vm_kernels_generic, &w, r, &xr), b = ref_dot(simd, &w, r, &xr);
        // dequantize + plain dot: a third, independent route
        vm_dequant_row(&w, r, deq);
        double c = 0, mag = 0;
        for (int i = 0; i < cols; i++) { c += (double)deq[i] * x[i]; mag += fabs(deq[i] * x[i]); }
        cr_expect(fabs(a - b) <= 1e-5 * mag + 1e-6, "%s %s row %d: generic %g vs %s %g", vm_dtype_name(t), simd->name, r, a, simd->name, b);
        cr_expect(fabs(a - c) <= 1e-5 * mag + 1e-6, "%s row %d: generic %g vs dequantized %g", vm_dtype_name(t), r, a, c);
    }
    // GGUF types also run on 8-bit activations: SIMD equals generic, and both
    // stay within the activation quantization error of the float dot.
    if (t == VM_DTYPE_Q4_0 || t == VM_DTYPE_Q4_1 || t == VM_DTYPE_Q8_0) {
        vm_q8_block qa[16], qb[16];
        vm_kernels_generic.quantize_q8(x, qa, cols);
        simd->quantize_q8(x, qb, cols);
        cr_expect(memcmp(qa, qb, sizeof(vm_q8_block) * (cols / 32)) == 0, "quantize_q8 differs");
        for (int r = 0; r < rows; r++) {
            const uint8_t *row = (const uint8_t *)w.data + (size_t)r * vm_weight_row_bytes(&w);
            float (*g)(const void *, const vm_q8_block *, int) = t == VM_DTYPE_Q4_0 ? vm_kernels_generic.dot_q4_0_q8
                : t == VM_DTYPE_Q4_1 ? vm_kernels_generic.dot_q4_1_q8 : vm_kernels_generic.dot_q8_0_q8;
            float (*f)(const void *, const vm_q8_block *, int) = t == VM_DTYPE_Q4_0 ? simd->dot_q4_0_q8
                : t == VM_DTYPE_Q4_1 ? simd->dot_q4_1_q8 : simd->dot_q8_0_q8;
            float a = g(row, qa, cols), b = f(row, qa, cols), exact = ref_dot(&vm_kernels_generic, &w, r, &xr);
            double mag = 0;
            vm_dequant_row(&w, r, deq);
            for (int i = 0; i < cols; i++) mag += fabs(deq[i] * x[i]);
            cr_expect(fabs(a - b) <= 1e-5 * mag + 1e-6, "%s q8 row %d: generic %g vs %s %g", vm_dtype_name(t), r, a, simd->name, b);
            cr_expect(fabs(a - exact) <= 1e-2 * mag, "%s q8 row %d: %g vs float %g", vm_dtype_name(t), r, a, exact);
            // four tokens at once equal four single dots
            vm_q8_block x4[4 * 16];
            for (int k = 0; k < 4; k++) {
                float xr4[512];
                for (int i = 0; i < cols; i++) xr4[i] = frand();
                vm_kernels_generic.quantize_q8(xr4, x4 + k * (cols / 32), cols);
            }
            void (*d4)(const void *, const vm_q8_block *, size_t, int, float *) = t == VM_DTYPE_Q4_0 ? simd->dot4_q4_0_q8
                : t == VM_DTYPE_Q4_1 ? simd->dot4_q4_1_q8 : simd->dot4_q8_0_q8;
            float o4[4];
            d4(row, x4, (size_t)(cols / 32), cols, o4);
            for (int k = 0; k < 4; k++) {
                float one = g(row, x4 + k * (cols / 32), cols);
                cr_expect(fabsf(o4[k] - one) <= 1e-4f * (fabsf(one) + 1), "%s dot4 token %d: %g vs %g", vm_dtype_name(t), k, o4[k], one);
            }
        }
    }
    free(mem);
    if (t == VM_DTYPE_MLX_AFFINE) { free((void *)w.scales); free((void *)w.biases); }
}

// Activation quantization, bit for bit the generic kernel's in the selected
// set (AVX-512 where the CPU has it: eight blocks at a time, lengths with and
// without a tail of fewer) and the AVX2 one, over blocks of zeros, halves
// that round to even, tiny and large values.
Test(kernels, quantize_q8_matches_generic) {
    const vm_cpu_kernels *sets[2] = { vm_cpu_kernels_select(), NULL };
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        sets[1] = &vm_kernels_avx2;
#endif
    static float x[64 * 32];
    static vm_q8_block qa[64], qb[64];
    const int lens[] = { 32, 96, 256, 288, 576, 1536, 1568, 64 * 32 };
    for (int round = 0; round < 4; round++) {
        for (int i = 0; i < 64 * 32; i++) {
            float v = frand();
            if (round == 1) v *= (i / 32) % 5 == 0 ? 0.0f : 1e-30f;
            if (round == 2) v = (float)((int)(v * 16)) * 0.25f;   // quarters: times id = 2, halves (ties to even)
            if (round == 3) v *= (i % 97 == 0) ? 3e4f : 1.0f;
            x[i] = v;
        }
        if (round == 2) for (int b = 0; b < 64; b++) x[b * 32 + 31] = 63.5f;   // amax 63.5: id = 127 / 63.5 = 2
        for (size_t l = 0; l < sizeof lens / sizeof lens[0]; l++) {
            const int n = lens[l];
            vm_kernels_generic.quantize_q8(x, qa, n);
            for (int k = 0; k < 2; k++) {
                if (!sets[k]) continue;
                memset(qb, 0x5a, sizeof qb);
                sets[k]->quantize_q8(x, qb, n);
                cr_expect(memcmp(qa, qb, sizeof(vm_q8_block) * (size_t)(n / 32)) == 0,
                          "quantize_q8 of %s differs from generic (round %d, %d values)", sets[k]->name, round, n);
            }
        }
    }
}

Test(kernels, f32) { check_dtype(VM_DTYPE_F32, 0, 0); }
Test(kernels, f16) { check_dtype(VM_DTYPE_F16, 0, 0); }
Test(kernels, bf16) { check_dtype(VM_DTYPE_BF16, 0, 0); }
Test(kernels, q4_0) { check_dtype(VM_DTYPE_Q4_0, 0, 0); }
Test(kernels, q4_1) { check_dtype(VM_DTYPE_Q4_1, 0, 0); }
Test(kernels, q8_0) { check_dtype(VM_DTYPE_Q8_0, 0, 0); }
Test(kernels, mlx_4bit_g32) { check_dtype(VM_DTYPE_MLX_AFFINE, 4, 32); }
Test(kernels, mlx_4bit_g64) { check_dtype(VM_DTYPE_MLX_AFFINE, 4, 64); }
Test(kernels, mlx_8bit_g128) { check_dtype(VM_DTYPE_MLX_AFFINE, 8, 128); }
Test(kernels, mlx_2bit_g64) { check_dtype(VM_DTYPE_MLX_AFFINE, 2, 64); }

typedef float (*row_dot_q8_fn)(const void *, const vm_q8_block *, int);
// the single-token row kernel of a GGUF type: the reference of the kernels below
static row_dot_q8_fn row_dot_q8(const vm_cpu_kernels *k, vm_dtype t) {
    return t == VM_DTYPE_Q4_0 ? k->dot_q4_0_q8 : t == VM_DTYPE_Q4_1 ? k->dot_q4_1_q8 : k->dot_q8_0_q8;
}

// The 8-token kernels (vm_q8_x8) against the single-token kernel of the same
// table: every output bit-identical, for random rows, activations and widths.
static void check_dot8(const vm_cpu_kernels *k, vm_dtype t) {
    const row_dot_q8_fn one = row_dot_q8(k, t);
    void (*d8)(const void *, const vm_q8_x8 *, int, float *) = t == VM_DTYPE_Q4_0 ? k->dot8_q4_0_q8
        : t == VM_DTYPE_Q4_1 ? k->dot8_q4_1_q8 : k->dot8_q8_0_q8;
    for (int round = 0; round < 40; round++) {
        const int nb = 1 + (int)(brand() % 64), cols = 32 * nb, rows = 3;
        vm_weight w;
        void *mem = random_rows(t, rows, cols, &w, 0, 0);
        vm_q8_block *xq = malloc(sizeof *xq * 8 * nb);
        vm_q8_x8 *x8 = malloc(sizeof *x8 * nb);
        float *x = malloc(sizeof(float) * cols);
        for (int tok = 0; tok < 8; tok++) {
            // widely varying scales and some all-zero blocks
            float scale = round % 3 == 0 ? 1e-3f : round % 3 == 1 ? 1.0f : 300.0f;
            for (int i = 0; i < cols; i++) x[i] = frand() * scale * (1 + tok);
            if (tok == 5) memset(x, 0, sizeof(float) * 32);
            k->quantize_q8(x, xq + (size_t)tok * nb, cols);
        }
        vm_q8_pack8(xq, (size_t)nb, nb, x8);
        for (int r = 0; r < rows; r++) {
            const uint8_t *row = (const uint8_t *)w.data + (size_t)r * vm_weight_row_bytes(&w);
            float o8[8];
            d8(row, x8, cols, o8);
            for (int tok = 0; tok < 8; tok++) {
                float o1 = one(row, xq + (size_t)tok * nb, cols);
                cr_expect(memcmp(&o1, &o8[tok], sizeof o1) == 0, "%s %s dot8 cols %d row %d token %d: %.9g vs single %.9g",
                          k->name, vm_dtype_name(t), cols, r, tok, o8[tok], o1);
            }
        }
        free(x); free(x8); free(xq); free(mem);
    }
}

Test(kernels, dot8_bit_identical) {
    const vm_dtype types[] = { VM_DTYPE_Q4_0, VM_DTYPE_Q4_1, VM_DTYPE_Q8_0 };
    for (int i = 0; i < 3; i++) {
        check_dot8(vm_cpu_kernels_select(), types[i]);
        check_dot8(&vm_kernels_generic, types[i]);
    }
}

// The 8-row repacked kernels (vm_q_repack8) against the row-major
// single-token kernel of the same table: every output bit-identical; and
// unpack8 gives back the rows.
static void check_gemv8(const vm_cpu_kernels *k, vm_dtype t) {
    const row_dot_q8_fn one = row_dot_q8(k, t);
    void (*g8)(const void *, const vm_q8_block *, int, float *) = t == VM_DTYPE_Q4_0 ? k->gemv8_q4_0_q8
        : t == VM_DTYPE_Q4_1 ? k->gemv8_q4_1_q8 : k->gemv8_q8_0_q8;
    if (!g8) return;   // this kernel set keeps row-major weights
    cr_expect(vm_q_repack8_bytes(t, 12, 64) == 0, "rows not a multiple of 8 cannot be repacked");
    for (int round = 0; round < 30; round++) {
        const int nb = 1 + (int)(brand() % 48), cols = 32 * nb, rows = 8 * (1 + (int)(brand() % 3));
        vm_weight w;
        void *mem = random_rows(t, rows, cols, &w, 0, 0);
        size_t bytes = vm_q_repack8_bytes(t, rows, cols);
        cr_assert(bytes == (size_t)rows * vm_weight_row_bytes(&w), "a repacked weight keeps its size");
        const size_t gb = bytes / (size_t)(rows / 8);   // one group of 8 rows
        uint8_t *rp = malloc(bytes);
        // in two parts, as threads split it
        vm_q_repack8(t, w.data, cols, 0, 8, rp);
        vm_q_repack8(t, w.data, cols, 8, rows, rp);
        // unpacking a group gives back its 8 rows (generic and this table's)
        uint8_t *back = malloc(gb);
        for (int g = 0; g < rows / 8; g++) {
            const uint8_t *orig = (const uint8_t *)w.data + (size_t)g * gb;
            memset(back, 0xa5, gb);
            vm_q_unpack8(t, rp + (size_t)g * gb, cols, back);
            cr_expect(memcmp(back, orig, gb) == 0, "%s vm_q_unpack8 group %d", vm_dtype_name(t), g);
            memset(back, 0x5a, gb);
            k->unpack8(t, rp + (size_t)g * gb, cols, back);
            cr_expect(memcmp(back, orig, gb) == 0, "%s %s unpack8 group %d", k->name, vm_dtype_name(t), g);
        }
        free(back);
        vm_q8_block *xq = malloc(sizeof *xq * nb);
        float *x = malloc(sizeof(float) * cols);
        float scale = round % 3 == 0 ? 1e-3f : round % 3 == 1 ? 1.0f : 300.0f;
        for (int i = 0; i < cols; i++) x[i] = frand() * scale;
        if (round % 4 == 1) memset(x, 0, sizeof(float) * 32);
        k->quantize_q8(x, xq, cols);
        for (int g = 0; g < rows / 8; g++) {
            float o8[8];
            g8(rp + (size_t)g * gb, xq, cols, o8);
            for (int r = 0; r < 8; r++) {
                const uint8_t *row = (const uint8_t *)w.data + (size_t)(8 * g + r) * vm_weight_row_bytes(&w);
                float o1 = one(row, xq, cols);
                cr_expect(memcmp(&o1, &o8[r], sizeof o1) == 0, "%s %s gemv8 cols %d row %d: %.9g vs row-major %.9g",
                          k->name, vm_dtype_name(t), cols, 8 * g + r, o8[r], o1);
            }
        }
        free(x); free(xq); free(rp); free(mem);
    }
}

Test(kernels, gemv8_bit_identical) {
    const vm_dtype types[] = { VM_DTYPE_Q4_0, VM_DTYPE_Q4_1, VM_DTYPE_Q8_0 };
    for (int i = 0; i < 3; i++) {
        check_gemv8(vm_cpu_kernels_select(), types[i]);
        check_gemv8(&vm_kernels_generic, types[i]);
    }
}

// The CPU backend's matmuls (one job for q, k, v; gate and up with the
// swiglu) against separate matmul calls and the swiglu op: the same bits,
// for one token, a tail, 8-token groups and both together.
static vm_buf *buf_of(vm_backend *be, const float *src, size_t n) {
    vm_err e = {{0}};
    vm_buf *b = be->buf_alloc(be, n * 4, &e);
    cr_assert(b, "%s", e.msg);
    if (src) be->buf_write(be, b, 0, src, n * 4);
    return b;
}
static void expect_same(vm_backend *be, vm_buf *a, vm_buf *b, size_t n, const char *what, int tokens) {
    float *x = malloc(n * 4), *y = malloc(n * 4);
    be->buf_read(be, a, 0, x, n * 4);
    be->buf_read(be, b, 0, y, n * 4);
    cr_expect(memcmp(x, y, n * 4) == 0, "%s, %d tokens: matmuls differ from matmul", what, tokens);
    free(x); free(y);
}
// matmul_tile (dense weights against several tokens, register-blocked) gives
// each (row, token) exactly the bits of the table's dot for that pair: odd
// row and token counts (every tile shape), lengths with and without a tail.
static void check_matmul_tile(const vm_cpu_kernels *k, vm_dtype t) {
    if (!k->matmul_tile) return;
    // (rows, tokens, cols): tokens past full blocks of 6 (4) in every mix of the 4-, 2- and 1-token blocks
    const int shapes[][3] = { { 5, 11, 48 }, { 4, 5, 37 }, { 3, 13, 16 }, { 1, 3, 9 }, { 9, 2, 583 },
                              { 2, 9, 40 }, { 3, 7, 33 }, { 2, 6, 20 } };
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int rows = shapes[s][0], tokens = shapes[s][1], cols = shapes[s][2];
        vm_weight w;
        void *mem = random_rows(t, rows, cols, &w, 0, 0);
        const size_t xs = (size_t)cols + 3, os = (size_t)rows + 2;   // strides past the row ends
        float *x = malloc(sizeof(float) * xs * tokens), *out = malloc(sizeof(float) * os * tokens);
        for (size_t i = 0; i < xs * tokens; i++) x[i] = frand();
        k->matmul_tile(t, w.data, vm_weight_row_bytes(&w), rows, x, xs, tokens, cols, out, os);
        for (int tk = 0; tk < tokens; tk++)
            for (int r = 0; r < rows; r++) {
                vm_xrow xr = { x + (size_t)tk * xs, NULL };
                const float want = ref_dot(k, &w, r, &xr), got = out[(size_t)tk * os + r];
                cr_expect(memcmp(&want, &got, 4) == 0, "%s %s %dx%d (%d cols): row %d token %d: %.9g, dot %.9g",
                          k->name, vm_dtype_name(t), rows, tokens, cols, r, tk, got, want);
            }
        free(x); free(out); free(mem);
    }
}

// matmul_tile_mlx: every (row, token) the bits of dot_mlx for that pair
// (4 and 8 bits; 2 bits through its fallback), rows from an offset, token
// counts across the 8-token blocks and every tail.
static void check_matmul_tile_mlx(const vm_cpu_kernels *k, int bits, int gs) {
    if (!k->matmul_tile_mlx) return;
    const int rows = 7, cols = 4 * gs, r0 = 2, nr = 5, xs = cols + 5;
    vm_weight w;
    void *mem = random_rows(VM_DTYPE_MLX_AFFINE, rows, cols, &w, bits, gs);
    for (int tokens = 1; tokens <= 19; tokens += 3) {
        const int groups = cols / gs;
        float *x = malloc(sizeof(float) * (size_t)xs * tokens), *gsum = malloc(sizeof(float) * (size_t)groups * tokens);
        float *out = malloc(sizeof(float) * (size_t)(nr + 1) * tokens);
        // magnitudes a million apart, so that a sum in another order rounds differently
        for (int i = 0; i < xs * tokens; i++) x[i] = frand() * (i % 3 == 0 ? 1e3f : i % 3 == 1 ? 1.0f : 1e-3f);
        for (int t = 0; t < tokens; t++)
            for (int g = 0; g < groups; g++) {
                float s = 0;
                for (int i = 0; i < gs; i++) s += x[(size_t)t * xs + g * gs + i];
                gsum[(size_t)t * groups + g] = s;
            }
        k->matmul_tile_mlx(&w, r0, nr, x, (size_t)xs, gsum, (size_t)groups, tokens, out, (size_t)nr + 1);
        for (int t = 0; t < tokens; t++)
            for (int r = 0; r < nr; r++) {
                vm_xrow xr = { x + (size_t)t * xs, gsum + (size_t)t * groups };
                const float want = k->dot_mlx(&w, r0 + r, &xr), got = out[(size_t)t * (nr + 1) + r];
                cr_expect(memcmp(&want, &got, 4) == 0, "%s mlx %d-bit g%d, %d tokens: row %d token %d: %.9g, dot %.9g",
                          k->name, bits, gs, tokens, r0 + r, t, got, want);
            }
        free(x); free(gsum); free(out);
    }
    free((void *)w.scales); free((void *)w.biases); free(mem);
}

Test(kernels, matmul_tile_mlx_bit_identical) {
    const int cases[][2] = { { 4, 32 }, { 4, 64 }, { 4, 128 }, { 8, 32 }, { 8, 64 }, { 2, 64 } };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        check_matmul_tile_mlx(vm_cpu_kernels_select(), cases[i][0], cases[i][1]);
}

Test(kernels, matmul_tile_bit_identical) {
    const vm_dtype types[] = { VM_DTYPE_F32, VM_DTYPE_F16, VM_DTYPE_BF16 };
    for (int i = 0; i < 3; i++) {
        check_matmul_tile(vm_cpu_kernels_select(), types[i]);
        check_matmul_tile(&vm_kernels_generic, types[i]);
    }
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        for (int i = 0; i < 3; i++) check_matmul_tile(&vm_kernels_avx2, types[i]);
#endif
}

// The CPU backend's dense matmuls by step size: up to 64 tokens every token's
// row is bit-identical to that token alone (the tiles); beyond (OpenBLAS
// where built with it) within f32 rounding of it.
Test(cpu_backend, dense_matmul_by_step_size) {
    vm_err e = {{0}};
    vm_backend *be = vm_backend_cpu_create(2, &e);
    cr_assert(be, "%s", e.msg);
    const vm_dtype types[] = { VM_DTYPE_F32, VM_DTYPE_F16, VM_DTYPE_BF16, VM_DTYPE_MLX_AFFINE };
    const int rows = 136, cols = 192, ns[] = { 2, 7, 64, 65, 150 };
    for (int ti = 0; ti < 4; ti++) {
        vm_weight w;
        void *mem = random_rows(types[ti], rows, cols, &w, 4, 64);
        cr_assert(be->weight_prepare(be, &w, &e) == 0, "%s", e.msg);
        for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
            const int n = ns[k];
            float *xs = malloc(sizeof(float) * n * cols), *got = malloc(sizeof(float) * n * rows), one[136];
            for (int i = 0; i < n * cols; i++) xs[i] = frand();
            vm_buf *x = buf_of(be, xs, (size_t)n * cols), *o = buf_of(be, NULL, (size_t)n * rows);
            vm_buf *x1 = buf_of(be, NULL, cols), *o1 = buf_of(be, NULL, rows);
            be->matmul(be, &w, x, n, o);
            be->buf_read(be, o, 0, got, sizeof(float) * n * rows);
            for (int t = 0; t < n; t++) {
                be->buf_write(be, x1, 0, xs + (size_t)t * cols, sizeof(float) * cols);
                be->matmul(be, &w, x1, 1, o1);
                be->buf_read(be, o1, 0, one, sizeof(float) * rows);
                for (int r = 0; r < rows; r++) {
                    const float a = got[(size_t)t * rows + r], b = one[r];
                    if (n <= 64)
                        cr_expect(memcmp(&a, &b, 4) == 0, "%s, %d tokens: token %d row %d: %.9g alone %.9g",
                                  vm_dtype_name(types[ti]), n, t, r, a, b);
                    else   // |x| < 1, |w| < 1 (MLX: scale 0.1 * q <= 15, bias < 1): 1e-5 of 192 terms' scale
                        cr_expect(fabsf(a - b) <= 1e-5f * (types[ti] == VM_DTYPE_MLX_AFFINE ? 3000.0f : 192.0f),
                                  "%s, %d tokens: token %d row %d: %.9g alone %.9g", vm_dtype_name(types[ti]), n,
                                  t, r, a, b);
                }
            }
            be->buf_free(be, x); be->buf_free(be, o); be->buf_free(be, x1); be->buf_free(be, o1);
            free(xs); free(got);
        }
        if (types[ti] == VM_DTYPE_MLX_AFFINE) { free((void *)w.scales); free((void *)w.biases); }
        free(mem);
    }
    be->destroy(be);
}

Test(cpu_backend, matmuls_bit_identical) {
    vm_err e = {{0}};
    vm_backend *be = vm_backend_cpu_create(2, &e);
    cr_assert(be, "%s", e.msg);
    cr_assert(be->matmuls, "the CPU backend has matmuls");
    const int cols = 96;
    const vm_dtype types[3] = { VM_DTYPE_Q4_1, VM_DTYPE_Q4_0, VM_DTYPE_Q8_0 };
    const int rows[3] = { 48, 16, 24 };
    vm_weight w[3];
    void *mem[3];
    for (int i = 0; i < 3; i++) {
        mem[i] = random_rows(types[i], rows[i], cols, &w[i], 0, 0);
        cr_assert(be->weight_prepare(be, &w[i], &e) == 0, "%s", e.msg);
    }
    vm_weight up;   // the gate/up pair: two weights of w[0]'s shape
    void *mem_up = random_rows(VM_DTYPE_Q4_1, rows[0], cols, &up, 0, 0);
    cr_assert(be->weight_prepare(be, &up, &e) == 0, "%s", e.msg);
    const int ns[] = { 1, 3, 8, 13, 24 };
    for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
        const int n = ns[k];
        float *xs = malloc(sizeof(float) * n * cols);
        for (int i = 0; i < n * cols; i++) xs[i] = frand();
        vm_buf *x = buf_of(be, xs, (size_t)n * cols), *sep[3], *one[3];
        for (int i = 0; i < 3; i++) {
            sep[i] = buf_of(be, NULL, (size_t)n * rows[i]);
            one[i] = buf_of(be, NULL, (size_t)n * rows[i]);
            be->matmul(be, &w[i], x, n, sep[i]);
        }
        const vm_weight *ws[3] = { &w[0], &w[1], &w[2] };
        be->matmuls(be, 3, ws, x, n, one, NULL);
        for (int i = 0; i < 3; i++) expect_same(be, sep[i], one[i], (size_t)n * rows[i], vm_dtype_name(types[i]), n);
        // gate/up with the swiglu, written over the gate as the decoder does
        vm_buf *ups = buf_of(be, NULL, (size_t)n * rows[0]), *upo = buf_of(be, NULL, (size_t)n * rows[0]);
        be->matmul(be, &up, x, n, ups);
        be->swiglu(be, sep[0], ups, (size_t)n * rows[0], sep[0]);
        const vm_weight *gu[2] = { &w[0], &up };
        vm_buf *outs[2] = { one[0], upo };
        be->matmuls(be, 2, gu, x, n, outs, one[0]);
        expect_same(be, sep[0], one[0], (size_t)n * rows[0], "swiglu", n);
        be->buf_free(be, ups); be->buf_free(be, upo); be->buf_free(be, x);
        for (int i = 0; i < 3; i++) { be->buf_free(be, sep[i]); be->buf_free(be, one[i]); }
        free(xs);
    }
    be->destroy(be);
    for (int i = 0; i < 3; i++) free(mem[i]);
    free(mem_up);
}

// RMSNorm sums its squares eight at a time and falls back to the ordered
// chain only where that could change the f32 mean: every row must match the
// ordered f64 sum of f32 squares (ggml's) bit for bit, in place and not, for
// plain, heavy-tailed, tiny and huge rows, and rows built so that the mean
// lies on a rounding midpoint (1 + 2^-24 over 16: the fallback's case); and
// add_rmsnorm gives add's sums and then rmsnorm's numbers.
Test(cpu_backend, rmsnorm_matches_the_ordered_sum) {
    vm_err e = {{0}};
    vm_backend *be = vm_backend_cpu_create(2, &e);
    cr_assert(be, "%s", e.msg);
    const int dims[] = { 2, 16, 64, 100, 576, 1536, 4099 };
    cr_assert(be->add_rmsnorm, "the CPU backend has add_rmsnorm");
    for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++) {
        const int dim = dims[d], rows = 9;
        float *xs = malloc(sizeof(float) * rows * dim), *ws = malloc(sizeof(float) * dim);
        float *want = malloc(sizeof(float) * rows * dim), *got = malloc(sizeof(float) * rows * dim);
        for (int i = 0; i < dim; i++) ws[i] = 0.5f + frand();
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < dim; i++) {
                float v = frand();
                if (r == 1) v = v * v * v * v * v * 300.0f;           // heavy tails
                if (r == 2) v *= 1e-20f;                              // tiny squares (f32 subnormal)
                if (r == 3) v *= 1e18f;                               // huge squares
                if (r == 4) v = i == 0 ? 1.0f : i == 1 ? 0x1p-12f : 0.0f;   // mean on a midpoint
                if (r == 5) v = i % 7 == 0 ? 1e4f : v * 1e-4f;        // outliers over small values
                if (r == 6) v = 0.0f;
                xs[(size_t)r * dim + i] = v;
            }
        for (int r = 0; r < rows; r++) {
            const float *x = xs + (size_t)r * dim;
            double sum = 0;
            for (int i = 0; i < dim; i++) sum += (double)(x[i] * x[i]);
            const float inv = 1.0f / sqrtf((float)(sum / dim) + 1e-5f);
            for (int i = 0; i < dim; i++) want[(size_t)r * dim + i] = x[i] * inv * ws[i];
        }
        vm_tensor w = { 0 };
        w.dtype = VM_DTYPE_F32; w.data = ws;
        w.shape[0] = dim; w.ndim = 1; w.nbytes = sizeof(float) * dim;
        vm_buf *x = buf_of(be, xs, (size_t)rows * dim), *o = buf_of(be, NULL, (size_t)rows * dim);
        for (int in_place = 0; in_place < 2; in_place++)
            for (int n = 1; n <= rows; n += rows - 1) {   // one row (decode), then all of them
                vm_buf *dst = in_place ? x : o;
                be->buf_write(be, x, 0, xs, sizeof(float) * rows * dim);
                be->rmsnorm(be, x, &w, 1e-5f, n, dim, dst);
                be->buf_read(be, dst, 0, got, sizeof(float) * n * dim);
                for (int r = 0; r < n; r++)
                    cr_expect(!memcmp(got + (size_t)r * dim, want + (size_t)r * dim, sizeof(float) * dim),
                              "rmsnorm dim %d row %d of %d (in place %d) differs from the ordered sum's", dim, r, n,
                              in_place);
            }
        // add_rmsnorm: x += y, then the norm of the sums, the numbers of add then rmsnorm
        float *ys = malloc(sizeof(float) * rows * dim), *sums = malloc(sizeof(float) * rows * dim);
        for (int i = 0; i < rows * dim; i++) ys[i] = frand() * 4.0f;
        vm_buf *y = buf_of(be, ys, (size_t)rows * dim), *x2 = buf_of(be, NULL, (size_t)rows * dim);
        for (int n = 1; n <= rows; n += rows - 1) {
            be->buf_write(be, x, 0, xs, sizeof(float) * rows * dim);
            be->buf_write(be, x2, 0, xs, sizeof(float) * rows * dim);
            be->add(be, x2, y, (size_t)n * dim);
            be->rmsnorm(be, x2, &w, 1e-5f, n, dim, x2);
            be->buf_read(be, x2, 0, want, sizeof(float) * n * dim);
            be->add_rmsnorm(be, x, y, &w, 1e-5f, n, dim, o);
            be->buf_read(be, o, 0, got, sizeof(float) * n * dim);
            cr_expect(!memcmp(got, want, sizeof(float) * n * dim), "add_rmsnorm dim %d, %d rows: norm differs", dim, n);
            be->buf_read(be, x, 0, got, sizeof(float) * n * dim);
            for (int i = 0; i < n * dim; i++) sums[i] = xs[i] + ys[i];
            cr_expect(!memcmp(got, sums, sizeof(float) * n * dim), "add_rmsnorm dim %d, %d rows: sums differ", dim, n);
        }
        be->buf_free(be, y); be->buf_free(be, x2);
        free(ys); free(sums);
        be->buf_free(be, x); be->buf_free(be, o);
        free(xs); free(ws); free(want); free(got);
    }
    be->destroy(be);
}

// cpu_rope keeps the cos/sin table of its last call: a call with other
// positions, or the same vm_rope changed in place, must not reuse it. Each
// result is held to a backend that has seen no rope before.
Test(cpu_backend, rope_table_follows_its_inputs) {
    vm_err e = {{0}};
    vm_backend *be = vm_backend_cpu_create(2, &e);
    cr_assert(be, "%s", e.msg);
    const int n = 3, heads = 2, hd = 16, len = n * heads * hd;
    float inv[8], inv2[8];
    for (int i = 0; i < hd / 2; i++) { inv[i] = powf(10000.0f, -2.0f * i / hd); inv2[i] = 0.5f * inv[i]; }
    int32_t posv[2][3] = { { 5, 6, 7 }, { 5, 6, 900 } };
    float xs[96];
    for (int i = 0; i < len; i++) xs[i] = frand();
    vm_rope r = { hd, inv, 0, 0.0f };
    for (int step = 0; step < 7; step++) {
        const int32_t *pos = posv[step == 2 || step == 3];
        if (step == 4) r.interleaved = 1;
        if (step == 5) r.theta_scale = powf(10000.0f, -2.0f / hd);
        if (step == 6) { r.theta_scale = 0.0f; r.inv_freq = inv2; }
        vm_buf *x = buf_of(be, xs, (size_t)len), *p = be->buf_alloc(be, sizeof posv[0], &e);
        be->buf_write(be, p, 0, pos, sizeof posv[0]);
        be->rope(be, x, p, n, heads, hd, &r);
        vm_backend *fresh = vm_backend_cpu_create(1, &e);
        vm_buf *fx = buf_of(fresh, xs, (size_t)len), *fp = fresh->buf_alloc(fresh, sizeof posv[0], &e);
        fresh->buf_write(fresh, fp, 0, pos, sizeof posv[0]);
        fresh->rope(fresh, fx, fp, n, heads, hd, &r);
        float a[96], b[96];
        be->buf_read(be, x, 0, a, sizeof(float) * len);
        fresh->buf_read(fresh, fx, 0, b, sizeof(float) * len);
        cr_expect(!memcmp(a, b, sizeof(float) * len), "rope step %d differs from a fresh backend's", step);
        be->buf_free(be, x); be->buf_free(be, p);
        fresh->buf_free(fresh, fx); fresh->buf_free(fresh, fp);
        fresh->destroy(fresh);
    }
    be->destroy(be);
}

static void sum_range(void *ctx, int begin, int end, int thread_index) {
    long *hits = ctx;
    for (int i = begin; i < end; i++) __atomic_fetch_add(&hits[i], 1, __ATOMIC_RELAXED);
}

Test(kernels, attention_helpers) {
    const vm_cpu_kernels *simd = vm_cpu_kernels_select();
    float a[77], b[77], y1[77], y2[77];
    for (int i = 0; i < 77; i++) { a[i] = frand(); b[i] = frand(); y1[i] = y2[i] = frand(); }
    float d1 = vm_kernels_generic.vdot(a, b, 77), d2 = simd->vdot(a, b, 77);
    cr_expect(fabsf(d1 - d2) <= 1e-5f * 77, "vdot %g vs %g", d1, d2);
    vm_kernels_generic.axpy(y1, 0.37f, a, 77);
    simd->axpy(y2, 0.37f, a, 77);
    for (int i = 0; i < 77; i++) cr_expect(fabsf(y1[i] - y2[i]) <= 1e-6f, "axpy[%d]", i);
}

// llama.cpp's arithmetic: every kernel set must give the generic version's bits.
Test(kernels, ggml_arithmetic_bit_identical) {
    const vm_cpu_kernels *simd = vm_cpu_kernels_select(), *ref = &vm_kernels_generic;
    for (int n = 8; n <= 584; n += 24) {
        uint16_t a[584], b[584];
        for (int i = 0; i < n; i++) { a[i] = vm_f32_to_f16(frand() * 4); b[i] = vm_f32_to_f16(frand() * 4); }
        for (int acc32 = 0; acc32 < 2; acc32++) {  // one row of any length (the odd ones take fallbacks)
            float x, y = acc32 ? vm_generic_dot_f16_acc32(a, b, n) : vm_generic_dot_f16_chain8(a, b, n);
            const uint16_t *rows1[1] = { a };
            simd->dots_f16(rows1, 1, b, 1, n, acc32, &x, 1);
            cr_expect(memcmp(&x, &y, 4) == 0, "dots_f16 n=%d acc32=%d: %a vs %a", n, acc32, x, y);
        }
    }
    // attention helpers over row pointers (scattered rows, as cache blocks
    // are), for 1 to 7 queries at once (the heads of a KV head): each query
    // the same bits as the one-row kernels; every lane count and start
    for (int hd = 8; hd <= 136; hd += 8) {
        enum { NP = 45, NQ = 7 };
        uint16_t kb[NP * 136], q[NQ * 136];
        const uint16_t *rows[NP];
        for (int i = 0; i < NP * hd; i++) kb[i] = vm_f32_to_f16(frand());
        for (int i = 0; i < NQ * hd; i++) q[i] = vm_f32_to_f16(frand());
        for (int p = 0; p < NP; p++) rows[p] = kb + (size_t)((p * 7) % NP) * hd;
        for (int nq = 1; nq <= NQ; nq += 2 + (nq == 1)) {   // 1 3 5 7
            for (int acc32 = 0; acc32 < 2; acc32++) {
                for (int n = 1; n <= NP; n += 11) {
                    float o1[NQ * (NP + 3)], o2[NQ * (NP + 3)];
                    simd->dots_f16(rows, n, q, nq, hd, acc32, o1, NP + 3);
                    for (int i = 0; i < nq; i++)
                        for (int p = 0; p < n; p++)
                            o2[i * (NP + 3) + p] = acc32 ? vm_generic_dot_f16_acc32(rows[p], q + i * hd, hd)
                                                         : vm_generic_dot_f16_chain8(rows[p], q + i * hd, hd);
                    for (int i = 0; i < nq; i++)
                        cr_expect(memcmp(o1 + i * (NP + 3), o2 + i * (NP + 3), sizeof(float) * n) == 0,
                                  "dots_f16 hd=%d acc32=%d n=%d query %d of %d", hd, acc32, n, i, nq);
                }
            }
            float w[NQ * NP];
            for (int p = 0; p < NQ * NP; p++) w[p] = frand();
            for (int lanes = 8; lanes <= 32; lanes *= 4)
                for (int n = 1; n <= NP; n += 11) {
                    static float a1[NQ * (32 * 136 + 5)], a2[NQ * (32 * 136 + 5)];
                    const size_t as = 32 * (size_t)hd + 5;   // any stride
                    for (size_t i = 0; i < nq * as; i++) a1[i] = a2[i] = frand();
                    simd->axpy_lanes_f16(a1, as, w, NP, nq, lanes, 29, rows, n, hd);
                    ref->axpy_lanes_f16(a2, as, w, NP, nq, lanes, 29, rows, n, hd);
                    cr_expect(memcmp(a1, a2, sizeof(float) * nq * as) == 0, "axpy_lanes_f16 hd=%d lanes=%d n=%d nq=%d",
                              hd, lanes, n, nq);
                }
        }
    }
    for (int half = 1; half <= 64; half += 7)   // 1, 8, ... 64: whole heads and partial rotation
        for (int inter = 0; inter < 2; inter++) {
            enum { HEADS = 3, HD = 136 };
            static float x1[HEADS * HD], x2[HEADS * HD];
            float cs[64], sn[64];
            const int hd = 2 * half + 8;
            for (int i = 0; i < HEADS * hd; i++) x1[i] = x2[i] = frand() * 4;
            for (int i = 0; i < half; i++) { cs[i] = cosf(0.37f * i + 0.1f); sn[i] = sinf(0.37f * i + 0.1f); }
            simd->rope_rotate(x1, HEADS, hd, cs, sn, half, inter);
            ref->rope_rotate(x2, HEADS, hd, cs, sn, half, inter);
            cr_expect(memcmp(x1, x2, sizeof(float) * HEADS * hd) == 0, "rope_rotate half=%d interleaved=%d", half, inter);
        }
    for (int hd = 5; hd <= 72; hd += 9)   // 5, 14, ... 68: with and without an 8-wide tail
        for (int lanes = 8; lanes <= 32; lanes *= 4) {
            static float acc[32 * 72];
            float o1[72], o2[72];
            for (int i = 0; i < lanes * hd; i++) acc[i] = frand() * 10;
            simd->lanes_sum(o1, acc, lanes, hd);
            ref->lanes_sum(o2, acc, lanes, hd);
            int same = memcmp(o1, o2, sizeof(float) * hd) == 0;
            for (int d = 0; d < hd && same; d++) same = o2[d] == vm_lanes_sum_at(acc, lanes, hd, d);
            cr_expect(same, "lanes_sum hd=%d lanes=%d", hd, lanes);
        }
    for (int n = 1; n <= 300; n += 13) {
        float x[300], y1[300], y2[300], u[300];
        for (int i = 0; i < n; i++) { x[i] = frand() * 30; u[i] = frand(); }
        x[n / 2] = -INFINITY;                                  // masked
        if (n > 3) { x[1] = -200; x[2] = 100; }                // the slow path of the exponential
        {   // scale_max: the scaled row and its max (the same on -0 / +0 ties: lane order kept)
            float s1x[300], s2x[300];
            memcpy(s1x, x, sizeof(float) * n);
            if (n > 9) { s1x[3] = 0.0f; s1x[9] = -0.0f; }
            memcpy(s2x, s1x, sizeof(float) * n);
            float want = -INFINITY;
            for (int i = 0; i < n; i++) want = fmaxf(want, s1x[i] * 0.125f);
            float m1 = simd->scale_max(s1x, n, 0.125f), m2 = ref->scale_max(s2x, n, 0.125f);
            cr_expect(memcmp(&m1, &m2, 4) == 0 && memcmp(s1x, s2x, sizeof(float) * n) == 0 &&
                      (m2 == want || (want == 0 && m2 == 0)), "scale_max n=%d", n);
        }
        double s1 = simd->exp_sum(y1, x, 5.0f, n), s2 = ref->exp_sum(y2, x, 5.0f, n);
        cr_expect(s1 == s2 && memcmp(y1, y2, sizeof(float) * n) == 0, "exp_sum n=%d", n);
        x[n / 2] = frand();
        simd->silu_mul(y1, x, u, (size_t)n);
        ref->silu_mul(y2, x, u, (size_t)n);
        cr_expect(memcmp(y1, y2, sizeof(float) * n) == 0, "silu_mul n=%d", n);
        x[0] = 70000.0f; x[n - 1] = 1e-9f;                     // f16 overflow and subnormal
        simd->round_f16(y1, x, 0.5f, n);
        ref->round_f16(y2, x, 0.5f, n);
        cr_expect(memcmp(y1, y2, sizeof(float) * n) == 0, "round_f16 n=%d", n);
        uint16_t h1[300], h2[300];
        simd->to_f16(h1, x, n);
        ref->to_f16(h2, x, n);
        cr_expect(memcmp(h1, h2, 2 * (size_t)n) == 0, "to_f16 n=%d", n);
    }
}

// The emulated exponential is within 2 ulp of libm's over the range it is used on.
Test(kernels, ggml_expf_accuracy) {
    for (float x = -100.0f; x < 88.0f; x += 0.0137f) {
        float a = vm_ggml_expf(x), b = expf(x);
        if (b < 0x1p-126f) cr_expect(fabsf(a - b) <= 0x1p-148f, "exp(%g): %a vs %a", x, a, b); // subnormal
        else cr_expect(fabsf(a - b) <= 2.5e-7f * b, "exp(%g): %a vs %a", x, a, b);
    }
    cr_expect(vm_ggml_expf(-INFINITY) == 0.0f);
    cr_expect(vm_ggml_expf(-200.0f) == 0.0f);
    cr_expect(isinf(vm_ggml_expf(100.0f)));
    cr_expect(vm_ggml_expf(0.0f) == 1.0f);
}

typedef struct { int job; _Atomic int hits[16]; int bad; } tiny_job;

static void tiny_range(void *ctx, int begin, int end, int thread_index) {
    tiny_job *j = ctx;
    for (int i = begin; i < end; i++) atomic_fetch_add(&j->hits[i], 1);
}

// Back-to-back tiny jobs whose context lives on the caller's stack, as the
// backend's ops do: a worker that wakes late must never run a chunk of a
// finished job with the next job's fields.
Test(thread_pool, back_to_back_tiny_jobs, .timeout = 120) {
    vm_thread_pool *p = vm_thread_pool_create(3);
    for (int round = 0; round < 200000; round++) {
        tiny_job j = { round, { 0 }, 0 };
        int n = 2 + round % 15;
        vm_parallel_for(p, n, 1, tiny_range, &j);
        for (int i = 0; i < 16; i++)
            if (atomic_load(&j.hits[i]) != (i < n)) cr_assert_fail("round %d item %d ran %d times", round, i, atomic_load(&j.hits[i]));
    }
    vm_thread_pool_free(p);
}

Test(thread_pool, every_item_once) {
    vm_thread_pool *p = vm_thread_pool_create(3);
    static long hits[1000];
    for (int round = 0; round < 50; round++) {
        memset(hits, 0, sizeof hits);
        vm_parallel_for(p, 1000, 7, sum_range, hits);
        for (int i = 0; i < 1000; i++) cr_assert_eq(hits[i], 1);
    }
    vm_thread_pool_free(p);
}

typedef struct { _Atomic int seq[2][64]; _Atomic int n[2]; } order_job;

static void record_order(void *ctx, int begin, int end, int thread_index) {
    order_job *j = ctx;
    int k = atomic_fetch_add(&j->n[thread_index], 1);
    atomic_store(&j->seq[thread_index][k], begin);
    // the caller's first chunk lasts until the worker has one (or 2 s): both ends are claimed every round
    for (int w = 0; thread_index == 0 && k == 0 && w < 2000000 && !atomic_load(&j->n[1]); w++) sched_yield();
}

// vm_parallel_for's caller's thread runs chunks from the first on, the worker
// from the last back (what the prefetch hints count on), each chunk once.
Test(thread_pool, chunks_from_both_ends) {
    vm_thread_pool *p = vm_thread_pool_create(2);
    int worker_chunks = 0;
    for (int round = 0; round < 50; round++) {
        order_job j = { { { 0 } }, { 0 } };
        const int n = 40 + round, chunk = vm_parallel_chunk(p, n, 1);
        vm_parallel_for(p, n, 1, record_order, &j);
        const int n0 = atomic_load(&j.n[0]), n1 = atomic_load(&j.n[1]);
        cr_assert_eq((n0 + n1) * chunk >= n && (n0 + n1 - 1) * chunk < n, 1, "round %d: %d + %d chunks", round, n0, n1);
        for (int k = 0; k < n0; k++) cr_assert_eq(atomic_load(&j.seq[0][k]), k * chunk);
        const int last = (n - 1) / chunk;
        for (int k = 0; k < n1; k++) cr_assert_eq(atomic_load(&j.seq[1][k]), (last - k) * chunk);
        worker_chunks += n1;
    }
    cr_expect_geq(worker_chunks, 50, "the worker took %d chunks in 50 rounds", worker_chunks);
    vm_thread_pool_free(p);
}

typedef struct { _Atomic int done[64]; } chain_job;

static void chain_item(void *ctx, int begin, int end, int thread_index) {
    chain_job *j = ctx;
    for (int i = begin; i < end; i++) {
        if (i > 0) while (!atomic_load(&j->done[i - 1])) sched_yield();   // (claimed before it: running or done)
        atomic_store(&j->done[i], 1);
    }
}

typedef struct { _Atomic int calls[4]; _Atomic int left; } idle_count;

static int count_idle(void *ctx, int thread_index) {
    idle_count *c = ctx;
    atomic_fetch_add(&c->calls[thread_index & 3], 1);
    return atomic_fetch_sub(&c->left, 1) > 1;
}

// vm_parallel_items claims in increasing order only (an item waiting for the
// one before it never deadlocks), and idle work posted between jobs runs on
// the waiting workers until it reports none left, without disturbing jobs.
Test(thread_pool, items_in_order_and_idle_work, .timeout = 60) {
    vm_thread_pool *p = vm_thread_pool_create(3);
    static idle_count ic[3];   // (a post's context is reused two posts later)
    for (int round = 0; round < 2000; round++) {
        idle_count *c = &ic[round % 3];
        memset(c, 0, sizeof *c);
        atomic_store(&c->left, 50);
        vm_thread_pool_idle(p, count_idle, c);
        chain_job j = { { 0 } };
        vm_parallel_items(p, 64, chain_item, &j);
        for (int i = 0; i < 64; i++) cr_assert_eq(atomic_load(&j.done[i]), 1);
    }
    idle_count *c = &ic[2000 % 3];
    memset(c, 0, sizeof *c);
    atomic_store(&c->left, 1000);
    vm_thread_pool_idle(p, count_idle, c);
    for (int spin = 0; spin < 2000 && atomic_load(&c->left) > 0; spin++) usleep(1000);
    cr_expect_leq(atomic_load(&c->left), 0, "idle work left: %d", atomic_load(&c->left));
    cr_expect_eq(atomic_load(&c->calls[0]), 0, "the caller's thread ran idle work outside a job");
    vm_thread_pool_free(p);
}

Test(half, round_trip) {
    float vals[] = { 0.0f, 1.0f, -2.5f, 65504.0f, 6.1035156e-05f, 5.9604645e-08f, 1e-3f };
    for (size_t i = 0; i < VM_ARRAY_LEN(vals); i++) {
        float h = vm_f16_to_f32(vm_f32_to_f16(vals[i]));
        cr_expect(fabsf(h - vals[i]) <= fabsf(vals[i]) / 2048, "f16 %g -> %g", vals[i], h);
        float b = vm_bf16_to_f32(vm_f32_to_bf16(vals[i]));
        cr_expect(fabsf(b - vals[i]) <= fabsf(vals[i]) / 128, "bf16 %g -> %g", vals[i], b);
    }
}
