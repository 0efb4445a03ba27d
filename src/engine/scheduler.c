// scheduler.c - vLLM v1's scheduling policy: each step spends a token budget
// on running requests first (decode tokens, then the rest of chunked prefills),
// then admits waiting requests in arrival order (FCFS), reusing cached prefix
// blocks. When blocks run out, the newest running request is preempted and
// will be recomputed from scratch (its blocks stay in the prefix cache).
#include <stdlib.h>

#include "engine_internal.h"


vm_scheduler *vm_scheduler_create(const vm_sched_config *cfg, vm_kv_pool *pool, vm_err *e) {
    if (cfg->max_num_seqs < 1 || cfg->max_num_batched_tokens < 1 || cfg->max_model_len < 1) {
        vm_errf(e, "scheduler: max_num_seqs, max_num_batched_tokens and max_model_len must be >= 1");
        return NULL;
    }
    if (!cfg->chunked_prefill && cfg->max_num_batched_tokens < cfg->max_model_len) {
        vm_errf(e, "max_num_batched_tokens (%d) is smaller than max_model_len (%d) with chunked "
                "prefill disabled: long prompts could never be scheduled; raise "
                "max_num_batched_tokens or enable chunked prefill",
                cfg->max_num_batched_tokens, cfg->max_model_len);
        return NULL;
    }
    vm_scheduler *s = calloc(1, sizeof *s);
    if (!s) { vm_errf(e, "out of memory"); return NULL; }
    s->cfg = *cfg; s->pool = pool;
    return s;
}

void vm_scheduler_free(vm_scheduler *s) {
    if (!s) return;
    free(s->running); free(s->waiting); free(s->step); free(s);
}

int vm_scheduler_add(vm_scheduler *s, vm_request *r) {
    if (vm_grow((void **)&s->waiting, &s->cap_waiting, s->n_waiting + 1, sizeof *s->waiting)) return -1;
    s->waiting[s->n_waiting++] = r;
    r->status = VM_REQ_WAITING;
    return 0;
}

void vm_request_hashes(vm_request *r, int bs, int n_full) {
    if (n_full <= r->n_hashes) return;
    if (vm_grow((void **)&r->hashes, &r->cap_hashes, n_full, sizeof *r->hashes)) return;
    for (int i = r->n_hashes; i < n_full; i++) {
        uint64_t parent = i ? r->hashes[i - 1] : 0;
        // blocks holding image tokens also key on the images' content (vLLM's extra keys)
        uint64_t extra[8]; int n_extra = 0;
        for (int k = 0; r->mm && k < r->mm->n_images; k++) {
            int lo = r->image_offset[k], hi = lo + r->image_tokens[k];
            if (hi <= i * bs || lo >= (i + 1) * bs) continue;
            uint64_t h = r->mm->images[k].hash ^ ((uint64_t)(lo - i * bs) << 1);
            if (n_extra < 8) extra[n_extra++] = h;
            else extra[7] = extra[7] * 0x9e3779b97f4a7c15ULL ^ h;
        }
        r->hashes[i] = vm_block_hash(parent, r->tokens + (size_t)i * bs, bs, extra, n_extra);
    }
    r->n_hashes = n_full;
}

static void free_blocks(vm_scheduler *s, vm_request *r) {
    vm_kv_pool_release(s->pool, r->blocks, r->n_blocks);
    r->n_blocks = 0;
    r->n_computed = 0;
}

// Finds the longest run of cached full blocks for r's tokens (never all of them:
// the last token is always recomputed to get its logits). Takes references.
static int take_prefix_hits(vm_scheduler *s, vm_request *r) {
    vm_kv_pool *p = s->pool;
    int bs = p->block_size;
    if (!p->enable_caching || r->sp.prompt_logprobs >= 0) return 0;
    int max_blocks = (r->n_tokens - 1) / bs;
    vm_request_hashes(r, bs, max_blocks);
    if (r->n_hashes < max_blocks) return 0;
    if (vm_grow((void **)&r->blocks, &r->cap_blocks, max_blocks + 1, sizeof *r->blocks)) return 0;
    int hits = 0;
    for (int i = 0; i < max_blocks; i++) {
        int id = vm_kv_pool_lookup(p, r->hashes[i], i ? r->hashes[i - 1] : 0, r->tokens + (size_t)i * bs);
        if (id < 0) break;
        vm_kv_pool_touch(p, id);
        r->blocks[r->n_blocks++] = id;
        hits++;
    }
    return hits;
}

// Makes room for r's KV up to n_computed + n_new tokens and registers its full
// blocks in the prefix cache. Returns -1 when the pool is out of blocks.
static int allocate_slots(vm_scheduler *s, vm_request *r, int n_new) {
    vm_kv_pool *p = s->pool;
    int bs = p->block_size;
    int total = r->n_computed + n_new;
    int need = (total + bs - 1) / bs - r->n_blocks;
    if (need > 0) {
        if (vm_grow((void **)&r->blocks, &r->cap_blocks, r->n_blocks + need, sizeof *r->blocks)) return -1;
        if (vm_kv_pool_alloc(p, need, r->blocks + r->n_blocks)) return -1;
        r->n_blocks += need;
    }
    if (p->enable_caching) {
        int n_full = total / bs;
        vm_request_hashes(r, bs, n_full);
        for (int i = r->n_computed / bs; i < n_full && i < r->n_hashes; i++)
            vm_kv_pool_cache(p, r->blocks[i], r->hashes[i], i ? r->hashes[i - 1] : 0,
                             r->tokens + (size_t)i * bs);
    }
    return 0;
}

static void remove_at(vm_request **arr, int *n, int i) {
    memmove(arr + i, arr + i + 1, (size_t)(*n - i - 1) * sizeof *arr);
    (*n)--;
}

static void preempt(vm_scheduler *s, vm_request *r) {
    for (int i = 0; i < s->n_running; i++)
        if (s->running[i] == r) { remove_at(s->running, &s->n_running, i); break; }
    free_blocks(s, r);
    r->status = VM_REQ_WAITING;
    r->num_preemptions++;
    s->num_preemptions++;
    if (vm_grow((void **)&s->waiting, &s->cap_waiting, s->n_waiting + 1, sizeof *s->waiting)) return;
    memmove(s->waiting + 1, s->waiting, (size_t)s->n_waiting * sizeof *s->waiting);
    s->waiting[0] = r;
    s->n_waiting++;
}

static int push_step(vm_scheduler *s, vm_request *r, int n_new) {
    if (vm_grow((void **)&s->step, &s->cap_step, s->n_step + 1, sizeof *s->step)) return -1;
    s->step[s->n_step++] = (vm_scheduled){ .req = r, .n_new = n_new, .start = r->n_computed };
    return 0;
}

int vm_scheduler_schedule(vm_scheduler *s) {
    int budget = s->cfg.max_num_batched_tokens;
    bool preempted = false;
    s->n_step = 0;

    // 1. running requests, oldest first
    for (int i = 0; i < s->n_running && budget > 0;) {
        vm_request *r = s->running[i];
        int n_new = r->n_tokens - r->n_computed;
        n_new = VM_MIN(n_new, budget);
        n_new = VM_MIN(n_new, s->cfg.max_model_len - r->n_computed);
        if (n_new <= 0) { i++; continue; }
        bool self_preempted = false;
        while (allocate_slots(s, r, n_new)) {
            vm_request *victim = s->running[s->n_running - 1];
            preempt(s, victim);
            preempted = true;
            if (victim == r) { self_preempted = true; break; }
        }
        if (self_preempted) break;
        push_step(s, r, n_new);
        budget -= n_new;
        i++;
    }

    // 2. waiting requests in arrival order (none after a preemption: memory is short)
    while (!preempted && s->n_waiting > 0 && budget > 0 && s->n_running < s->cfg.max_num_seqs) {
        vm_request *r = s->waiting[0];
        int hits = 0;
        if (r->n_blocks == 0) {
            hits = take_prefix_hits(s, r);
            r->n_computed = hits * s->pool->block_size;
        }
        int n_new = r->n_tokens - r->n_computed;
        if (!s->cfg.chunked_prefill && n_new > budget) { free_blocks(s, r); break; }
        n_new = VM_MIN(n_new, budget);
        if (allocate_slots(s, r, n_new)) { free_blocks(s, r); break; }
        if (!r->counted_cache) { // prefix-cache counters, in tokens, once per request
            s->pool->queries += (uint64_t)r->n_tokens;
            s->pool->hits += (uint64_t)r->n_computed;
            r->n_cached = r->n_computed;
            r->counted_cache = true;
        }
        remove_at(s->waiting, &s->n_waiting, 0);
        if (vm_grow((void **)&s->running, &s->cap_running, s->n_running + 1, sizeof *s->running)) break;
        s->running[s->n_running++] = r;
        r->status = VM_REQ_RUNNING;
        push_step(s, r, n_new);
        budget -= n_new;
    }
    return s->n_step;
}

void vm_scheduler_update(vm_scheduler *s) {
    for (int i = 0; i < s->n_step; i++) s->step[i].req->n_computed += s->step[i].n_new;
}

void vm_scheduler_finish(vm_scheduler *s, vm_request *r) {
    for (int i = 0; i < s->n_running; i++)
        if (s->running[i] == r) { remove_at(s->running, &s->n_running, i); break; }
    for (int i = 0; i < s->n_waiting; i++)
        if (s->waiting[i] == r) { remove_at(s->waiting, &s->n_waiting, i); break; }
    free_blocks(s, r);
    r->status = VM_REQ_FINISHED;
}
