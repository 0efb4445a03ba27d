// kv_cache.c - the KV block pool: fixed-size blocks handed to requests, a free
// queue in LRU order (idle cached blocks stay reusable until evicted from its
// head), and the prefix-cache hash table over full blocks. Block 0 is reserved
// and never handed out.
#include <stdlib.h>

#include "engine_internal.h"

// ---------------------------------------------------------------- hashing

static uint64_t mix64(uint64_t x) { // splitmix64 finalizer
    x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27; x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

uint64_t vm_block_hash(uint64_t parent, const int32_t *tokens, int n, const uint64_t *extra,
                       int n_extra) {
    uint64_t h = mix64(parent ^ 0x9e3779b97f4a7c15ULL);
    for (int i = 0; i < n; i++) h = mix64(h ^ (uint64_t)(uint32_t)tokens[i]) + (uint64_t)i;
    h = mix64(h ^ (uint64_t)n);
    for (int i = 0; i < n_extra; i++) h = mix64(h ^ extra[i] ^ 0x5851f42d4c957f2dULL);
    return h ? h : 1;
}

// ---------------------------------------------------------------- free queue

static void fq_remove(vm_kv_pool *p, int id) {
    vm_kv_block *b = &p->blocks[id];
    if (!b->in_free) return;
    if (b->prev_free >= 0) p->blocks[b->prev_free].next_free = b->next_free;
    else p->free_head = b->next_free;
    if (b->next_free >= 0) p->blocks[b->next_free].prev_free = b->prev_free;
    else p->free_tail = b->prev_free;
    b->prev_free = b->next_free = -1;
    b->in_free = false;
    p->num_free--;
}

static void fq_push_tail(vm_kv_pool *p, int id) {
    vm_kv_block *b = &p->blocks[id];
    b->prev_free = p->free_tail; b->next_free = -1;
    if (p->free_tail >= 0) p->blocks[p->free_tail].next_free = id;
    else p->free_head = id;
    p->free_tail = id;
    b->in_free = true;
    p->num_free++;
}

// ---------------------------------------------------------------- hash table

static int bucket_of(const vm_kv_pool *p, uint64_t h) { return (int)(h & (uint64_t)(p->n_buckets - 1)); }

static void uncache(vm_kv_pool *p, int id) {
    vm_kv_block *b = &p->blocks[id];
    if (!b->cached) return;
    int *link = &p->buckets[bucket_of(p, b->hash)];
    while (*link >= 0 && *link != id) link = &p->blocks[*link].hash_next;
    if (*link == id) *link = b->hash_next;
    b->hash_next = -1;
    b->cached = false;
    b->hash = b->parent_hash = 0;
}

vm_kv_pool *vm_kv_pool_create(int num_blocks, int block_size, bool enable_caching, vm_err *e) {
    if (num_blocks < 2) { vm_errf(e, "KV cache needs at least 2 blocks (block 0 is reserved), got %d", num_blocks); return NULL; }
    if (block_size < 1) { vm_errf(e, "invalid block size %d", block_size); return NULL; }
    vm_kv_pool *p = calloc(1, sizeof *p);
    if (!p) { vm_errf(e, "out of memory"); return NULL; }
    p->num_blocks = num_blocks; p->block_size = block_size; p->enable_caching = enable_caching;
    p->blocks = calloc((size_t)num_blocks, sizeof *p->blocks);
    p->block_tokens = calloc((size_t)num_blocks * (size_t)block_size, sizeof(int32_t));
    p->n_buckets = 1;
    while (p->n_buckets < num_blocks) p->n_buckets <<= 1;
    p->buckets = malloc((size_t)p->n_buckets * sizeof(int));
    if (!p->blocks || !p->block_tokens || !p->buckets) { vm_kv_pool_free(p); vm_errf(e, "out of memory"); return NULL; }
    for (int i = 0; i < p->n_buckets; i++) p->buckets[i] = -1;
    p->free_head = p->free_tail = -1;
    for (int i = 0; i < num_blocks; i++) {
        p->blocks[i].prev_free = p->blocks[i].next_free = p->blocks[i].hash_next = -1;
        if (i > 0) fq_push_tail(p, i); // block 0 is reserved
    }
    p->blocks[0].ref = 1;
    return p;
}

void vm_kv_pool_free(vm_kv_pool *p) {
    if (!p) return;
    free(p->blocks); free(p->block_tokens); free(p->buckets); free(p);
}

int vm_kv_pool_alloc(vm_kv_pool *p, int n, int *out) {
    if (n > p->num_free) return -1;
    for (int i = 0; i < n; i++) {
        int id = p->free_head;
        fq_remove(p, id);
        uncache(p, id); // evict: the least recently freed cached block goes first
        p->blocks[id].ref = 1;
        out[i] = id;
    }
    return 0;
}

void vm_kv_pool_release(vm_kv_pool *p, const int *ids, int n) {
    for (int i = n - 1; i >= 0; i--) {
        int id = ids[i];
        if (id <= 0 || id >= p->num_blocks) continue;
        vm_kv_block *b = &p->blocks[id];
        if (b->ref <= 0) continue;
        if (--b->ref == 0) fq_push_tail(p, id);
    }
}

int vm_kv_pool_lookup(vm_kv_pool *p, uint64_t hash, uint64_t parent, const int32_t *tokens) {
    if (!p->enable_caching) return -1;
    for (int id = p->buckets[bucket_of(p, hash)]; id >= 0; id = p->blocks[id].hash_next) {
        const vm_kv_block *b = &p->blocks[id];
        if (b->hash == hash && b->parent_hash == parent &&
            !memcmp(p->block_tokens + (size_t)id * p->block_size, tokens,
                    (size_t)p->block_size * sizeof(int32_t)))
            return id;
    }
    return -1;
}

void vm_kv_pool_touch(vm_kv_pool *p, int id) {
    vm_kv_block *b = &p->blocks[id];
    if (b->ref == 0) fq_remove(p, id);
    b->ref++;
}

void vm_kv_pool_cache(vm_kv_pool *p, int id, uint64_t hash, uint64_t parent, const int32_t *tokens) {
    if (!p->enable_caching || id <= 0) return;
    vm_kv_block *b = &p->blocks[id];
    if (b->cached) return;
    if (vm_kv_pool_lookup(p, hash, parent, tokens) >= 0) return; // an equal block is cached already
    b->cached = true; b->hash = hash; b->parent_hash = parent;
    memcpy(p->block_tokens + (size_t)id * p->block_size, tokens, (size_t)p->block_size * sizeof(int32_t));
    int bk = bucket_of(p, hash);
    b->hash_next = p->buckets[bk];
    p->buckets[bk] = id;
}

int vm_kv_pool_num_free(const vm_kv_pool *p) { return p->num_free; }

double vm_kv_pool_usage(const vm_kv_pool *p) {
    int usable = p->num_blocks - 1;
    return usable > 0 ? 1.0 - (double)p->num_free / usable : 0.0;
}

void vm_kv_pool_reset_cache(vm_kv_pool *p) {
    for (int i = 1; i < p->num_blocks; i++) uncache(p, i);
}
