// thread_pool.h - a persistent pool of worker threads for data-parallel loops.
#ifndef VM_THREAD_POOL_H
#define VM_THREAD_POOL_H

typedef struct vm_thread_pool vm_thread_pool;

// fn(ctx, begin, end, thread_index) processes items [begin, end).
typedef void (*vm_parallel_fn)(void *ctx, int begin, int end, int thread_index);

vm_thread_pool *vm_thread_pool_create(int n_threads);
void vm_thread_pool_free(vm_thread_pool *p);
int vm_thread_pool_size(const vm_thread_pool *p);

// Splits [0, n) into chunks of at least `grain` items and runs them on all
// threads (the caller's thread included); returns when every chunk is done.
void vm_parallel_for(vm_thread_pool *p, int n, int grain, vm_parallel_fn fn, void *ctx);
// The chunk size vm_parallel_for uses for n items: the caller's thread runs
// chunks from the first on, the workers from the last one back.
int vm_parallel_chunk(const vm_thread_pool *p, int n, int grain);
// The same with every item its own chunk (beyond 65535 items, runs of
// consecutive items, each run in order), claimed in increasing order: an item
// may wait for work of lower items (claimed before it, so running or done),
// never of higher ones.
void vm_parallel_items(vm_thread_pool *p, int n, vm_parallel_fn fn, void *ctx);

// Optional work for waiting threads (bringing a later job's data into their
// caches): workers waiting for a job, and the caller's thread waiting for a
// job's last chunks, call fn(ctx, thread_index) over and over, a little work
// a call, until it returns 0 (or the wait ends). ctx must stay valid until
// the second vm_thread_pool_idle call after this one returns.
typedef int (*vm_idle_fn)(void *ctx, int thread_index);
void vm_thread_pool_idle(vm_thread_pool *p, vm_idle_fn fn, void *ctx);

#endif
