// thread_pool.c - persistent workers for data-parallel loops.
//
// A job is split into chunks. Chunks are claimed through one 64-bit atomic
// holding (job number << 32 | next chunk), so a worker that wakes up late can
// never take a chunk of a later job, and the caller waits only for the chunks
// to be done, not for every worker to check in: a worker the OS has
// descheduled does not hold up the forward pass.
#include "thread_pool.h"
#include "../../common/common.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

// Spin this many pause instructions before sleeping: long enough to bridge
// the gap between the back-to-back jobs of a forward pass, short enough that
// a loaded machine (more runnable threads than cores) is not starved.
#define SPIN_ITERS 20000

struct vm_thread_pool {
    int n_threads;              // including the caller
    pthread_t *threads;
    pthread_mutex_t mu;         // guards sleeping only
    pthread_cond_t start_cv;
    // the current job (written before `claim` publishes it)
    vm_parallel_fn fn;
    void *ctx;
    int n, chunk, n_chunks;
    _Atomic uint64_t claim;     // job << 32 | next chunk index
    atomic_int done;            // chunks finished of the current job
    atomic_int stop;
};

typedef struct { vm_thread_pool *p; int index; } worker_arg;

#define CLOSED 0x7fffffffu // chunk index of a closed job: never below n_chunks

// Claims and runs chunks of job `job` until none are left (or a newer job
// has replaced it). Returns the number of chunks this thread ran.
static void run_chunks(vm_thread_pool *p, uint32_t job, int thread_index) {
    for (;;) {
        uint64_t c = atomic_load_explicit(&p->claim, memory_order_acquire);
        if ((uint32_t)(c >> 32) != job) return;
        // The job's fields are read after seeing its number (acquire), and the
        // claim below only succeeds while that job is still the current one.
        vm_parallel_fn fn = p->fn;
        void *ctx = p->ctx;
        int n = p->n, chunk = p->chunk, n_chunks = p->n_chunks;
        uint32_t idx = (uint32_t)c;
        if (idx >= (uint32_t)n_chunks) return;
        if (!atomic_compare_exchange_weak_explicit(&p->claim, &c, c + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        int begin = (int)idx * chunk;
        int end = begin + chunk < n ? begin + chunk : n;
        fn(ctx, begin, end, thread_index);
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
    }
}

static uint32_t current_job(vm_thread_pool *p) {
    return (uint32_t)(atomic_load_explicit(&p->claim, memory_order_acquire) >> 32);
}

static void *worker_main(void *arg) {
    worker_arg *wa = arg;
    vm_thread_pool *p = wa->p;
    int index = wa->index;
    free(wa);
    uint32_t seen = 0;
    for (;;) {
        for (int spin = 0; spin < SPIN_ITERS && !atomic_load(&p->stop) && current_job(p) == seen; spin++)
            if (spin % 1024 == 1023) sched_yield(); else vm_cpu_relax();
        if (current_job(p) == seen && !atomic_load(&p->stop)) {
            pthread_mutex_lock(&p->mu);
            while (!atomic_load(&p->stop) && current_job(p) == seen) pthread_cond_wait(&p->start_cv, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop)) break;
        seen = current_job(p);
        run_chunks(p, seen, index);
    }
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
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->start_cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->start_cv);
    free(p->threads);
    free(p);
}

int vm_thread_pool_size(const vm_thread_pool *p) { return p->n_threads; }

static void run_job(vm_thread_pool *p, int n, int chunk, vm_parallel_fn fn, void *ctx);

void vm_parallel_for(vm_thread_pool *p, int n, int grain, vm_parallel_fn fn, void *ctx) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    int nt = p->n_threads;
    // ~4 chunks a thread for balance, but never below the grain.
    int chunk = (n + nt * 4 - 1) / (nt * 4);
    if (chunk < grain) chunk = grain;
    if (nt == 1 || chunk >= n) { fn(ctx, 0, n, 0); return; }
    run_job(p, n, chunk, fn, ctx);
}

void vm_parallel_items(vm_thread_pool *p, int n, vm_parallel_fn fn, void *ctx) {
    if (n <= 0) return;
    if (p->n_threads == 1 || n == 1) {
        for (int i = 0; i < n; i++) fn(ctx, i, i + 1, 0);
        return;
    }
    run_job(p, n, 1, fn, ctx);
}

static void run_job(vm_thread_pool *p, int n, int chunk, vm_parallel_fn fn, void *ctx) {
    // Close the previous job first (its number + 1, no chunks left): a late
    // worker still holding the previous job's claim value then fails its
    // compare-exchange instead of claiming a chunk with the fields being
    // rewritten below. Jobs are numbered in steps of 2.
    uint32_t job = current_job(p) + 2;
    atomic_store_explicit(&p->claim, ((uint64_t)(job - 1) << 32) | CLOSED, memory_order_seq_cst);
    p->fn = fn;
    p->ctx = ctx;
    p->n = n;
    p->chunk = chunk;
    p->n_chunks = (n + chunk - 1) / chunk;
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    atomic_store_explicit(&p->claim, (uint64_t)job << 32, memory_order_release);  // publish
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->start_cv);
    pthread_mutex_unlock(&p->mu);
    run_chunks(p, job, 0);
    // The caller runs chunks too, so only chunks already claimed by others
    // remain: wait for those, yielding now and then.
    for (int spin = 1; atomic_load_explicit(&p->done, memory_order_acquire) < p->n_chunks; spin++)
        if (spin % 256 == 0) sched_yield(); else vm_cpu_relax();
}
