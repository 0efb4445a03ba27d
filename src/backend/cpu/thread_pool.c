// thread_pool.c - persistent workers for data-parallel loops.
//
// A job is split into chunks. Chunks are claimed through one 64-bit atomic
// holding (job number << 32 | first unclaimed chunk << 16 | last unclaimed
// chunk + 1), so a worker that wakes up late can never take a chunk of a
// later job, and the caller waits only for the chunks to be done, not for
// every worker to check in: a worker the OS has descheduled does not hold up
// the forward pass. vm_parallel_for's caller's thread claims from the front
// and its workers from the back (so each can tell which chunks of a coming
// job it will most likely run); vm_parallel_items claims from the front
// only. Threads that wait (workers for a job, the caller's thread for a
// job's last chunks) run the posted idle work meanwhile.
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
    int from_back;              // workers take the last chunks first (the caller's thread the first ones)
    _Atomic uint64_t claim;     // job << 32 | first unclaimed chunk << 16 | last unclaimed chunk + 1
    atomic_int done;            // chunks finished of the current job
    atomic_int stop;
    // work for waiting workers (vm_thread_pool_idle), in two slots so that a
    // worker still in a step of the last one reads no half-written slot
    struct { vm_idle_fn fn; void *ctx; } idle[2];
    atomic_uint idle_seq;       // posts so far; the latest is in idle[idle_seq & 1]
    unsigned caller_idle_done;  // the last post the caller's thread finished (its share, while it waits)
};

typedef struct { vm_thread_pool *p; int index; } worker_arg;

#define MAX_CHUNKS 0xffff   // (16 bits each end of the claim)

// Claims and runs chunks of job `job` until none are left (or a newer job
// has replaced it): the first unclaimed chunk, or for a worker of a job
// split from both ends the last one.
static void run_chunks(vm_thread_pool *p, uint32_t job, int thread_index) {
    for (;;) {
        uint64_t c = atomic_load_explicit(&p->claim, memory_order_acquire);
        if ((uint32_t)(c >> 32) != job) return;
        // The job's fields are read after seeing its number (acquire), and the
        // claim below only succeeds while that job is still the current one.
        vm_parallel_fn fn = p->fn;
        void *ctx = p->ctx;
        int n = p->n, chunk = p->chunk;
        const uint32_t front = (uint32_t)(c >> 16) & 0xffff, back = (uint32_t)c & 0xffff;
        if (front >= back) return;
        const int from_back = thread_index && p->from_back;
        if (!atomic_compare_exchange_weak_explicit(&p->claim, &c, from_back ? c - 1 : c + (1u << 16),
                                                   memory_order_acq_rel, memory_order_acquire))
            continue;
        int begin = (int)(from_back ? back - 1 : front) * chunk;
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
    unsigned idle_done = 0;
    for (;;) {
        for (int spin = 0; spin < SPIN_ITERS && !atomic_load(&p->stop) && current_job(p) == seen; spin++) {
            const unsigned is = atomic_load_explicit(&p->idle_seq, memory_order_acquire);
            if (is != idle_done) {   // a step of the idle work, then look for a job again
                if (!p->idle[is & 1].fn(p->idle[is & 1].ctx, index)) idle_done = is;
                continue;
            }
            if (spin % 1024 == 1023) sched_yield(); else vm_cpu_relax();
        }
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

static void run_job(vm_thread_pool *p, int n, int chunk, int from_back, vm_parallel_fn fn, void *ctx);

int vm_parallel_chunk(const vm_thread_pool *p, int n, int grain) {
    // ~4 chunks a thread for balance, but never below the grain.
    int chunk = (n + p->n_threads * 4 - 1) / (p->n_threads * 4);
    return chunk < grain ? (grain < 1 ? 1 : grain) : chunk;
}

void vm_thread_pool_idle(vm_thread_pool *p, vm_idle_fn fn, void *ctx) {
    if (p->n_threads < 2) return;
    const unsigned next = atomic_load_explicit(&p->idle_seq, memory_order_relaxed) + 1;
    p->idle[next & 1].fn = fn;
    p->idle[next & 1].ctx = ctx;
    atomic_store_explicit(&p->idle_seq, next, memory_order_release);
}

void vm_parallel_for(vm_thread_pool *p, int n, int grain, vm_parallel_fn fn, void *ctx) {
    if (n <= 0) return;
    int nt = p->n_threads, chunk = vm_parallel_chunk(p, n, grain);
    if (nt == 1 || chunk >= n) { fn(ctx, 0, n, 0); return; }
    run_job(p, n, chunk, 1, fn, ctx);
}

void vm_parallel_items(vm_thread_pool *p, int n, vm_parallel_fn fn, void *ctx) {
    if (n <= 0) return;
    if (p->n_threads == 1 || n == 1) {
        for (int i = 0; i < n; i++) fn(ctx, i, i + 1, 0);
        return;
    }
    run_job(p, n, (n + MAX_CHUNKS - 1) / MAX_CHUNKS, 0, fn, ctx);   // (a chunk's items run in order)
}

static void run_job(vm_thread_pool *p, int n, int chunk, int from_back, vm_parallel_fn fn, void *ctx) {
    // Close the previous job first (its number + 1, no chunks left): a late
    // worker still holding the previous job's claim value then fails its
    // compare-exchange instead of claiming a chunk with the fields being
    // rewritten below. Jobs are numbered in steps of 2.
    uint32_t job = current_job(p) + 2;
    atomic_store_explicit(&p->claim, (uint64_t)(job - 1) << 32, memory_order_seq_cst);   // (no chunks left)
    p->fn = fn;
    p->ctx = ctx;
    p->n = n;
    p->chunk = chunk;
    p->n_chunks = (n + chunk - 1) / chunk;
    p->from_back = from_back;
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    atomic_store_explicit(&p->claim, (uint64_t)job << 32 | (uint64_t)p->n_chunks, memory_order_release);  // publish
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->start_cv);
    pthread_mutex_unlock(&p->mu);
    run_chunks(p, job, 0);
    // The caller runs chunks too, so only chunks already claimed by others
    // remain: wait for those (doing its share of any idle work), yielding now and then.
    for (int spin = 1; atomic_load_explicit(&p->done, memory_order_acquire) < p->n_chunks; spin++) {
        const unsigned is = atomic_load_explicit(&p->idle_seq, memory_order_acquire);
        if (is != p->caller_idle_done) {
            if (!p->idle[is & 1].fn(p->idle[is & 1].ctx, 0)) p->caller_idle_done = is;
            continue;
        }
        if (spin % 256 == 0) sched_yield(); else vm_cpu_relax();
    }
}
