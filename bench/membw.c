// membw.c - STREAM-like memory read bandwidth with N threads, for the decode
// roofline in `make bench`.
//
//   membw [--threads N] [--mib M] [--reps R]
//
// Each thread sums its own contiguous slice of one M-MiB buffer (default 256:
// far beyond any L3, so every pass comes from DRAM) with 4 independent
// 256-bit accumulators, the way a decode step streams weights. Threads are
// started once and meet at a barrier before each pass; a pass's time is the
// slowest thread's. Prints one line per pass and a summary:
//   read GB/s best X median Y (threads N, M MiB)
// (GB = 1e9 bytes). Best is what the memory system can do (STREAM reports
// best); median shows how much the shared machine took away. The buffer is
// on transparent huge pages where Linux gives them (as vllm-metal's weights
// and KV cache are): 4 KiB pages read slower here.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <immintrin.h>
#include <pthread.h>
#include <sys/mman.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct job {
    const float *data;
    size_t n;          // floats in this thread's slice (multiple of 32)
    int reps;
    double *seconds;   // [reps], written by thread 0 only (time of the whole pass)
    float sink;
} job;

static pthread_barrier_t start_barrier, end_barrier;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

__attribute__((target("avx2")))
static float sum_avx2(const float *p, size_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < n; i += 32) {
        a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
        a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
    float out[8];
    _mm256_storeu_ps(out, s);
    return out[0] + out[1] + out[2] + out[3] + out[4] + out[5] + out[6] + out[7];
}

static float sum_generic(const float *p, size_t n) {
    float a[8] = {0};
    for (size_t i = 0; i < n; i += 8)
        for (int k = 0; k < 8; k++) a[k] += p[i + k];
    return a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
}

static int have_avx2;

static void *run(void *arg) {
    job *j = arg;
    for (int r = 0; r < j->reps; r++) {
        pthread_barrier_wait(&start_barrier);
        double t0 = now();
        j->sink += have_avx2 ? sum_avx2(j->data, j->n) : sum_generic(j->data, j->n);
        pthread_barrier_wait(&end_barrier);
        if (j->seconds) j->seconds[r] = now() - t0;
    }
    return NULL;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    int threads = 1, reps = 20;
    size_t mib = 256;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--mib") && i + 1 < argc) mib = (size_t)atol(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else { fprintf(stderr, "usage: membw [--threads N] [--mib M] [--reps R]\n"); return 2; }
    }
    if (threads < 1 || threads > 256 || reps < 1 || mib < 1) { fprintf(stderr, "membw: bad arguments\n"); return 2; }
    __builtin_cpu_init();
    have_avx2 = __builtin_cpu_supports("avx2");

    size_t n = mib * 1024 * 1024 / sizeof(float);
    size_t per = n / threads / 32 * 32;   // floats per thread
    n = per * threads;
    const size_t huge = (size_t)2 << 20, bytes_alloc = (n * sizeof(float) + huge - 1) & ~(huge - 1);
    float *data = aligned_alloc(huge, bytes_alloc);
#ifdef MADV_HUGEPAGE
    if (data) (void)madvise(data, bytes_alloc, MADV_HUGEPAGE);
#endif
    if (!data) { fprintf(stderr, "membw: out of memory\n"); return 1; }
    for (size_t i = 0; i < n; i++) data[i] = (float)(i & 1023) * 1e-3f;  // touch every page

    double *seconds = calloc(reps, sizeof(double));
    job *jobs = calloc(threads, sizeof(job));
    pthread_t *tid = calloc(threads, sizeof(pthread_t));
    pthread_barrier_init(&start_barrier, NULL, threads);
    pthread_barrier_init(&end_barrier, NULL, threads);
    for (int t = 0; t < threads; t++) {
        jobs[t] = (job){data + per * t, per, reps, t == 0 ? seconds : NULL, 0};
        pthread_create(&tid[t], NULL, run, &jobs[t]);
    }
    float sink = 0;
    for (int t = 0; t < threads; t++) { pthread_join(tid[t], NULL); sink += jobs[t].sink; }

    double bytes = (double)n * sizeof(float);
    for (int r = 0; r < reps; r++) printf("pass %d: %.2f GB/s\n", r, bytes / seconds[r] / 1e9);
    qsort(seconds, reps, sizeof(double), cmp_double);
    printf("read GB/s best %.2f median %.2f (threads %d, %zu MiB, %s) [sink %g]\n",
           bytes / seconds[0] / 1e9, bytes / seconds[reps / 2] / 1e9, threads,
           n * sizeof(float) >> 20, have_avx2 ? "avx2" : "generic", (double)sink);
    free(seconds); free(jobs); free(tid); free(data);
    return 0;
}
