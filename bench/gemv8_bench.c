// gemv8_bench.c - one thread's one-token matvec (gemv8_*) over repacked GGUF
// weights, and its 8-token row kernel (dot8_*, prefill) over row-major ones,
// for each x86-64 kernel set this CPU runs, side by side:
//   gemv8_bench [rows cols]      (default: the shapes of SmolLM2-135M's matrices)
// Per dtype and shape: ns per 8-row group with the weight in cache (one
// group-tile reread) and streamed from memory (a 256 MiB ring of copies), and
// whether the sets' outputs are bit-identical; dot8: ns per row (8 tokens),
// weight in cache. Build: bench/gemv8_bench.sh.
#include "backend/cpu/kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static uint32_t rng = 12345;
static uint32_t rnd(void) { rng = rng * 1664525u + 1013904223u; return rng >> 8; }

typedef void (*gemv8_fn)(const void *, const vm_q8_block *, int, float *);
static gemv8_fn pick(const vm_cpu_kernels *k, vm_dtype t) {
    return t == VM_DTYPE_Q4_0 ? k->gemv8_q4_0_q8 : t == VM_DTYPE_Q4_1 ? k->gemv8_q4_1_q8 : k->gemv8_q8_0_q8;
}

// ns per group: `reps` passes over `groups` groups starting at each of `copies` copies in turn
static double run(gemv8_fn f, const uint8_t *w, size_t gb, int groups, int copies, size_t copy_bytes,
                  const vm_q8_block *x, int cols, int reps, float *out) {
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        const uint8_t *base = w + (size_t)(r % copies) * copy_bytes;
        double t0 = now();
        for (int g = 0; g < groups; g++) f(base + (size_t)g * gb, x, cols, out + 8 * g);
        double dt = now() - t0;
        if (dt < best) best = dt;
    }
    return best * 1e9 / groups;
}

int main(int argc, char **argv) {
    const vm_cpu_kernels *sets[2] = { &vm_kernels_avx2, NULL };
    int n_sets = 1;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2")) { printf("gemv8_bench: no AVX2 on this CPU\n"); return 0; }
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512vnni"))
        sets[n_sets++] = vm_kernels_avx512();
    struct { vm_dtype t; int rows, cols; } cases[] = {
        { VM_DTYPE_Q4_1, 1536, 576 }, { VM_DTYPE_Q4_1, 576, 1536 }, { VM_DTYPE_Q4_0, 1536, 576 },
        { VM_DTYPE_Q8_0, 8192, 576 } };
    int n_cases = 4;
    if (argc == 3) { cases[0].rows = atoi(argv[1]); cases[0].cols = atoi(argv[2]); n_cases = 1; }
    printf("| dtype | rows x cols | set | gemv8 cached ns/group | gemv8 streamed ns/group (GB/s) | dot8 ns/row (8 tokens) | same bits as avx2 |\n|---|---|---|---|---|---|---|\n");
    for (int c = 0; c < n_cases; c++) {
        const vm_dtype t = cases[c].t;
        const int rows = cases[c].rows / 8 * 8, cols = cases[c].cols / 32 * 32, groups = rows / 8;
        const size_t row_bytes = vm_dtype_row_bytes(t, cols), bytes = row_bytes * rows, gb = bytes / groups;
        uint8_t *src = malloc(bytes);
        for (size_t i = 0; i < bytes; i++) src[i] = (uint8_t)rnd();
        for (int r = 0; r < rows; r++)   // sane f16 scales (and mins) at the start of each block
            for (int b = 0; b < cols / 32; b++) {
                uint8_t *blk = src + (size_t)r * row_bytes + (size_t)b * vm_dtype_row_bytes(t, 32);
                uint16_t h = vm_f32_to_f16(0.01f * (float)(rnd() % 100) / 100.0f + 0.001f);
                memcpy(blk, &h, 2);
                if (t == VM_DTYPE_Q4_1) memcpy(blk + 2, &h, 2);
            }
        const int copies = (int)((256u << 20) / bytes) + 1;
        uint8_t *ring = malloc(bytes * copies);
        for (int k = 0; k < copies; k++) vm_q_repack8(t, src, cols, 0, rows, ring + (size_t)k * bytes);
        float *xf = malloc(sizeof(float) * cols);
        for (int i = 0; i < cols; i++) xf[i] = (float)((int)(rnd() % 2001) - 1000) / 700.0f;
        vm_q8_block *xq = malloc(sizeof(vm_q8_block) * (cols / 32));
        vm_kernels_avx2.quantize_q8(xf, xq, cols);
        float *ref = malloc(sizeof(float) * rows), *out = malloc(sizeof(float) * rows);
        // 8 tokens for dot8
        vm_q8_block *xt = malloc(sizeof(vm_q8_block) * (cols / 32) * 8);
        for (int t = 0; t < 8; t++) {
            for (int i = 0; i < cols; i++) xf[i] = (float)((int)(rnd() % 2001) - 1000) / 700.0f;
            vm_kernels_avx2.quantize_q8(xf, xt + (size_t)t * (cols / 32), cols);
        }
        vm_q8_x8 *x8 = malloc(sizeof(vm_q8_x8) * (cols / 32));
        vm_q8_pack8(xt, (size_t)(cols / 32), cols / 32, x8);
        float *ref8 = malloc(sizeof(float) * 8 * rows), *out8 = malloc(sizeof(float) * 8 * rows);
        for (int s = 0; s < n_sets; s++) {
            gemv8_fn f = pick(sets[s], t);
            double cached = run(f, ring, gb, groups, 1, bytes, xq, cols, 200, out);
            double streamed = run(f, ring, gb, groups, copies, bytes, xq, cols, copies, out);
            void (*d8)(const void *, const vm_q8_x8 *, int, float *) = t == VM_DTYPE_Q4_0 ? sets[s]->dot8_q4_0_q8
                : t == VM_DTYPE_Q4_1 ? sets[s]->dot8_q4_1_q8 : sets[s]->dot8_q8_0_q8;
            double best8 = 1e30;
            for (int r = 0; r < 50; r++) {
                double t0 = now();
                for (int row = 0; row < rows; row++) d8(src + (size_t)row * row_bytes, x8, cols, out8 + 8 * row);
                double dt = now() - t0;
                if (dt < best8) best8 = dt;
            }
            if (s == 0) { memcpy(ref, out, sizeof(float) * rows); memcpy(ref8, out8, sizeof(float) * 8 * rows); }
            const int same = !memcmp(ref, out, sizeof(float) * rows) && !memcmp(ref8, out8, sizeof(float) * 8 * rows);
            printf("| %s | %d x %d | %s | %.1f | %.1f (%.1f) | %.1f | %s |\n", vm_dtype_name(t), rows, cols, sets[s]->name,
                   cached, streamed, gb / streamed, best8 * 1e9 / rows, s == 0 ? "-" : same ? "yes" : "NO");
        }
        free(src); free(ring); free(xf); free(xq); free(ref); free(out); free(xt); free(x8); free(ref8); free(out8);
    }
    return 0;
}
