// par.c - see par.h. Workers sleep on a condition variable between jobs (one
// job per engine step: the wake-up costs microseconds, and idle workers take
// no CPU from a CPU backend's own threads).
#include "par.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

struct vm_par {
    int n_threads;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t start_cv, done_cv;
    unsigned job;              // bumped per job (under mu)
    int job_threads;           // workers 1..job_threads-1 take part
    void (*fn)(void *, int, int);
    void *ctx;
    int n;
    atomic_int next;           // next item to claim
    int active;                // workers still inside the job (under mu)
    int stop;
};

typedef struct { vm_par *p; int index; } par_arg;

static void run_items(vm_par *p, int thread) {
    for (;;) {
        int i = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (i >= p->n) return;
        p->fn(p->ctx, i, thread);
    }
}

static void *par_main(void *arg) {
    par_arg *a = arg;
    vm_par *p = a->p;
    int index = a->index;
    free(a);
    unsigned seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && (p->job == seen || index >= p->job_threads)) {
            if (p->job != seen) seen = p->job;  // a job without this thread
            else pthread_cond_wait(&p->start_cv, &p->mu);
        }
        if (p->stop) break;
        seen = p->job;
        pthread_mutex_unlock(&p->mu);
        run_items(p, index);
        pthread_mutex_lock(&p->mu);
        if (--p->active == 0) pthread_cond_signal(&p->done_cv);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

vm_par *vm_par_create(int n_threads) {
    vm_par *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->start_cv, NULL);
    pthread_cond_init(&p->done_cv, NULL);
    p->n_threads = 1;
    if (n_threads > 1 && (p->threads = calloc((size_t)n_threads, sizeof *p->threads))) {
        for (int i = 1; i < n_threads; i++) {
            par_arg *a = malloc(sizeof *a);
            if (!a) break;
            *a = (par_arg){ p, i };
            if (pthread_create(&p->threads[i], NULL, par_main, a)) { free(a); break; }
            p->n_threads = i + 1;
        }
    }
    return p;
}

void vm_par_free(vm_par *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->start_cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->start_cv);
    pthread_cond_destroy(&p->done_cv);
    free(p->threads);
    free(p);
}

int vm_par_threads(const vm_par *p) { return p ? p->n_threads : 1; }

void vm_par_run(vm_par *p, int n, int threads, void (*fn)(void *ctx, int item, int thread), void *ctx) {
    if (threads > n) threads = n;
    if (!p || threads > p->n_threads) threads = p ? p->n_threads : 1;
    if (threads <= 1) {
        for (int i = 0; i < n; i++) fn(ctx, i, 0);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn; p->ctx = ctx; p->n = n;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    p->job_threads = threads;
    p->active = threads - 1;
    p->job++;
    pthread_cond_broadcast(&p->start_cv);
    pthread_mutex_unlock(&p->mu);
    run_items(p, 0);
    pthread_mutex_lock(&p->mu);
    while (p->active > 0) pthread_cond_wait(&p->done_cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
