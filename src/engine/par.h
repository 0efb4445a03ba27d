// par.h - a few sleeping worker threads for the engine's per-row work
// (sampling): items are claimed one at a time, the caller's thread takes part.
#ifndef VM_PAR_H
#define VM_PAR_H

typedef struct vm_par vm_par;

// n_threads counts the caller; <= 1 gives a pool that runs everything inline.
vm_par *vm_par_create(int n_threads);
void vm_par_free(vm_par *p);
int vm_par_threads(const vm_par *p);
// Runs fn(ctx, item, thread) for item in [0, n) on up to `threads` threads
// (thread 0 is the caller); returns when all are done.
void vm_par_run(vm_par *p, int n, int threads, void (*fn)(void *ctx, int item, int thread), void *ctx);

#endif
