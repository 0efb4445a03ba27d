// test_kv_cache.c - the KV block pool: block 0 reserved, LRU eviction of cached
// blocks, refcounts, prefix hash chain, everything free at the end.
#include <criterion/criterion.h>

#include "engine/engine_internal.h"

Test(kv_pool, block0_reserved_and_exhaustion) {
    vm_err e;
    vm_kv_pool *p = vm_kv_pool_create(9, 16, true, &e);
    cr_assert(p);
    cr_assert_eq(vm_kv_pool_num_free(p), 8);
    int ids[8];
    cr_assert_eq(vm_kv_pool_alloc(p, 8, ids), 0);
    for (int i = 0; i < 8; i++) cr_assert_neq(ids[i], 0);
    int more;
    cr_assert_eq(vm_kv_pool_alloc(p, 1, &more), -1);
    cr_assert_float_eq(vm_kv_pool_usage(p), 1.0, 1e-9);
    vm_kv_pool_release(p, ids, 8);
    cr_assert_eq(vm_kv_pool_num_free(p), 8);
    cr_assert_float_eq(vm_kv_pool_usage(p), 0.0, 1e-9);
    cr_assert_null(vm_kv_pool_create(1, 16, true, &e));
    vm_kv_pool_free(p);
}

Test(kv_pool, lru_evicts_least_recently_freed_cached_block) {
    vm_err e;
    vm_kv_pool *p = vm_kv_pool_create(5, 4, true, &e); // 4 usable
    int32_t toks[4][4] = { { 1, 2, 3, 4 }, { 5, 6, 7, 8 }, { 9, 10, 11, 12 }, { 13, 14, 15, 16 } };
    uint64_t h[4];
    int a[2], b[2];
    cr_assert_eq(vm_kv_pool_alloc(p, 2, a), 0);
    cr_assert_eq(vm_kv_pool_alloc(p, 2, b), 0);
    for (int i = 0; i < 4; i++) h[i] = vm_block_hash(0, toks[i], 4, NULL, 0);
    vm_kv_pool_cache(p, a[0], h[0], 0, toks[0]);
    vm_kv_pool_cache(p, a[1], h[1], 0, toks[1]);
    vm_kv_pool_cache(p, b[0], h[2], 0, toks[2]);
    vm_kv_pool_cache(p, b[1], h[3], 0, toks[3]);
    vm_kv_pool_release(p, a, 2); // a freed first: a[1] then a[0] (tail of a request goes first)
    vm_kv_pool_release(p, b, 2);
    cr_assert_eq(vm_kv_pool_num_free(p), 4);
    // all four are still cached
    for (int i = 0; i < 4; i++) cr_assert_geq(vm_kv_pool_lookup(p, h[i], 0, toks[i]), 1);
    int x;
    cr_assert_eq(vm_kv_pool_alloc(p, 1, &x), 0);
    cr_assert_eq(x, a[1], "evicted %d, expected a[1]=%d", x, a[1]);
    cr_assert_eq(vm_kv_pool_lookup(p, h[1], 0, toks[1]), -1);
    cr_assert_eq(vm_kv_pool_lookup(p, h[0], 0, toks[0]), a[0]);
    // touching a cached idle block takes it out of the free queue; it is not evicted
    vm_kv_pool_touch(p, a[0]);
    cr_assert_eq(vm_kv_pool_num_free(p), 2);
    int y[2];
    cr_assert_eq(vm_kv_pool_alloc(p, 2, y), 0);
    cr_assert(y[0] != a[0] && y[1] != a[0]);
    cr_assert_eq(vm_kv_pool_lookup(p, h[0], 0, toks[0]), a[0]);
    vm_kv_pool_release(p, &x, 1); vm_kv_pool_release(p, y, 2); vm_kv_pool_release(p, &a[0], 1);
    cr_assert_eq(vm_kv_pool_num_free(p), 4);
    vm_kv_pool_free(p);
}

Test(kv_pool, refcounts_shared_blocks) {
    vm_err e;
    vm_kv_pool *p = vm_kv_pool_create(4, 4, true, &e);
    int32_t t[4] = { 1, 2, 3, 4 };
    uint64_t h = vm_block_hash(0, t, 4, NULL, 0);
    int a;
    vm_kv_pool_alloc(p, 1, &a);
    vm_kv_pool_cache(p, a, h, 0, t);
    int hit = vm_kv_pool_lookup(p, h, 0, t);
    cr_assert_eq(hit, a);
    vm_kv_pool_touch(p, hit); // second holder
    vm_kv_pool_release(p, &a, 1);
    cr_assert_eq(vm_kv_pool_num_free(p), 2, "still held by the second request");
    vm_kv_pool_release(p, &hit, 1);
    cr_assert_eq(vm_kv_pool_num_free(p), 3);
    vm_kv_pool_free(p);
}

Test(kv_pool, caching_off_never_hits) {
    vm_err e;
    vm_kv_pool *p = vm_kv_pool_create(4, 4, false, &e);
    int32_t t[4] = { 1, 2, 3, 4 };
    int a;
    vm_kv_pool_alloc(p, 1, &a);
    vm_kv_pool_cache(p, a, 7, 0, t);
    cr_assert_eq(vm_kv_pool_lookup(p, 7, 0, t), -1);
    vm_kv_pool_release(p, &a, 1);
    vm_kv_pool_free(p);
}

Test(kv_hash, chain_depends_on_parent_tokens_and_extra_keys) {
    int32_t a[4] = { 1, 2, 3, 4 }, b[4] = { 1, 2, 3, 5 };
    uint64_t h1 = vm_block_hash(0, a, 4, NULL, 0);
    cr_assert_eq(h1, vm_block_hash(0, a, 4, NULL, 0));
    cr_assert_neq(h1, vm_block_hash(0, b, 4, NULL, 0));
    cr_assert_neq(vm_block_hash(h1, a, 4, NULL, 0), vm_block_hash(h1 + 1, a, 4, NULL, 0));
    uint64_t img = 0xabcdef;
    cr_assert_neq(h1, vm_block_hash(0, a, 4, &img, 1));
    cr_assert_neq(vm_block_hash(0, a, 4, NULL, 0), 0);
    // a lookup verifies tokens and parent, not just the hash
    vm_err e;
    vm_kv_pool *p = vm_kv_pool_create(4, 4, true, &e);
    int id;
    vm_kv_pool_alloc(p, 1, &id);
    vm_kv_pool_cache(p, id, h1, 0, a);
    cr_assert_eq(vm_kv_pool_lookup(p, h1, 0, b), -1);
    cr_assert_eq(vm_kv_pool_lookup(p, h1, 1, a), -1);
    cr_assert_eq(vm_kv_pool_lookup(p, h1, 0, a), id);
    vm_kv_pool_release(p, &id, 1);
    vm_kv_pool_free(p);
}

Test(kv_platform, memory_budget_messages) {
    vm_err e = { "" };
    // 0.x of physical memory cannot hold 1 PiB of weights
    int n = vm_platform_kv_blocks("0.5", (uint64_t)1 << 50, 1 << 20, 16, 2048, 4, &e);
    cr_assert_eq(n, -1);
    cr_assert(strstr(e.msg, "VLLM_METAL_MEMORY_FRACTION"), "%s", e.msg);
    n = vm_platform_kv_blocks("auto", (uint64_t)1 << 50, 1 << 20, 16, 2048, 4, &e);
    cr_assert_eq(n, -1);
    cr_assert(strstr(e.msg, "does not fit"), "%s", e.msg);
    // auto with a small need: exactly max_model_len * max_num_seqs (+ block 0)
    n = vm_platform_kv_blocks("auto", 1 << 20, 4096, 16, 256, 4, &e);
    cr_assert_eq(n, 16 * 4 + 1);
    n = vm_platform_kv_blocks("bogus", 1, 4096, 16, 256, 4, &e);
    cr_assert_eq(n, -1);
    cr_assert_eq(vm_platform_block_size(24, &e), -1);
    cr_assert_eq(vm_platform_block_size(32, &e), 32);
}
