// thread_pool.c - workers wait on a generation counter; each job is split into
// chunks claimed with an atomic counter, so uneven chunks balance themselves.
#include "thread_pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

struct vm_thread_pool {
    int n_threads;              // including the caller
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t start_cv;
    unsigned long generation;   // bumped per job
    int stop;
    // the current job
    vm_parallel_fn fn;
    void *ctx;
    int n, chunk;
    atomic_int next_chunk;
    atomic_int workers_busy;
    atomic_ulong published;  // generation, readable without the mutex
    atomic_int stop_flag;
};

// Spin this many pause instructions before yielding the core: long enough to
// bridge the gap between the back-to-back jobs of a forward pass, short enough
// that a loaded machine (more runnable threads than cores) is not starved.
#define SPIN_ITERS 20000
#if defined(__x86_64__)
#include <immintrin.h>
static inline void vm_cpu_relax(void) { _mm_pause(); }
#elif defined(__aarch64__)
static inline void vm_cpu_relax(void) { __asm__ __volatile__("yield"); }
#else
static inline void vm_cpu_relax(void) {}
#endif

typedef struct { vm_thread_pool *p; int index; } worker_arg;

static void run_chunks(vm_thread_pool *p, int thread_index) {
    int n_chunks = (p->n + p->chunk - 1) / p->chunk;
    for (;;) {
        int c = atomic_fetch_add(&p->next_chunk, 1);
        if (c >= n_chunks) break;
        int begin = c * p->chunk;
        int end = begin + p->chunk < p->n ? begin + p->chunk : p->n;
        p->fn(p->ctx, begin, end, thread_index);
    }
}

static void *worker_main(void *arg) {
    worker_arg *wa = arg;
    vm_thread_pool *p = wa->p;
    int index = wa->index;
    free(wa);
    unsigned long seen = 0;
    for (;;) {
        // Spin briefly first: a forward pass issues hundreds of jobs back to back,
        // and sleeping/waking through the kernel costs more than the jobs.
        for (int spin = 0; spin < SPIN_ITERS && !atomic_load(&p->stop_flag) &&
                           atomic_load(&p->published) == seen; spin++)
            if (spin % 1024 == 1023) sched_yield(); else vm_cpu_relax();
        pthread_mutex_lock(&p->mu);
        while (!p->stop && p->generation == seen) pthread_cond_wait(&p->start_cv, &p->mu);
        if (p->stop) break;
        seen = p->generation;
        pthread_mutex_unlock(&p->mu);
        run_chunks(p, index);
        atomic_fetch_sub(&p->workers_busy, 1);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

vm_thread_pool *vm_thread_pool_create(int n_threads) {
    if (n_threads < 1) n_threads = 1;
    vm_thread_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n_threads = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->start_cv, NULL);
    p->threads = calloc((size_t)n_threads, sizeof(pthread_t));
    if (!p->threads) { free(p); return NULL; }
    for (int i = 1; i < n_threads; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (!wa) { p->n_threads = i; break; }
        wa->p = p; wa->index = i;
        if (pthread_create(&p->threads[i], NULL, worker_main, wa) != 0) {
            free(wa); p->n_threads = i; break;
        }
    }
    return p;
}

void vm_thread_pool_free(vm_thread_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    atomic_store(&p->stop_flag, 1);
    pthread_cond_broadcast(&p->start_cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->start_cv);
    free(p->threads);
    free(p);
}

int vm_thread_pool_size(const vm_thread_pool *p) { return p->n_threads; }

void vm_parallel_for(vm_thread_pool *p, int n, int grain, vm_parallel_fn fn, void *ctx) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    int nt = p->n_threads;
    // ~4 chunks a thread for balance, but never below the grain.
    int chunk = (n + nt * 4 - 1) / (nt * 4);
    if (chunk < grain) chunk = grain;
    if (nt == 1 || chunk >= n) { fn(ctx, 0, n, 0); return; }
    pthread_mutex_lock(&p->mu);
    p->fn = fn; p->ctx = ctx; p->n = n; p->chunk = chunk;
    atomic_store(&p->next_chunk, 0);
    atomic_store(&p->workers_busy, nt - 1);
    p->generation++;
    atomic_store(&p->published, p->generation);
    pthread_cond_broadcast(&p->start_cv);
    pthread_mutex_unlock(&p->mu);
    run_chunks(p, 0);
    // Jobs are short: wait by spinning (workers finish within microseconds),
    // yielding now and then in case a worker is waiting for a core.
    for (int spin = 1; atomic_load(&p->workers_busy) > 0; spin++)
        if (spin % 256 == 0) sched_yield(); else vm_cpu_relax();
}
