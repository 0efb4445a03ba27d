// session.c - a single sequence over its own run of KV blocks (1..N; block 0
// stays reserved as in the engine), fed in chunks of the model's batch size.
#include "session.h"

#include <stdint.h>

#include <stdlib.h>

struct vm_session {
    vm_model *m;
    vm_kv_cache *kv;
    int max_ctx, block_size, n_blocks, n_past;
    int32_t *block_table, *positions, *slots, *rows;
};

vm_session *vm_session_create(vm_model *m, int max_ctx, int block_size, vm_err *e) {
    if (max_ctx <= 0) max_ctx = vm_model_get_config(m)->max_position_embeddings;
    if (block_size <= 0) block_size = 16;
    vm_session *s = calloc(1, sizeof *s);
    if (!s) { vm_errf(e, "out of memory"); return NULL; }
    s->m = m;
    s->max_ctx = max_ctx;
    s->block_size = block_size;
    s->n_blocks = (max_ctx + block_size - 1) / block_size;
    int chunk = vm_model_max_batch_tokens(m);
    s->block_table = malloc(sizeof(int32_t) * s->n_blocks);
    s->positions = malloc(sizeof(int32_t) * chunk);
    s->slots = malloc(sizeof(int32_t) * chunk);
    s->rows = malloc(sizeof(int32_t) * chunk);
    if (!s->block_table || !s->positions || !s->slots || !s->rows) {
        vm_errf(e, "out of memory");
        vm_session_free(s);
        return NULL;
    }
    for (int i = 0; i < s->n_blocks; i++) s->block_table[i] = i + 1;
    if (!(s->kv = vm_kv_cache_create(m, s->n_blocks + 1, block_size, e))) {
        vm_session_free(s);
        return NULL;
    }
    return s;
}

void vm_session_free(vm_session *s) {
    if (!s) return;
    vm_kv_cache_free(s->m, s->kv);
    free(s->block_table);
    free(s->positions);
    free(s->slots);
    free(s->rows);
    free(s);
}

void vm_session_reset(vm_session *s) { s->n_past = 0; }
int vm_session_n_past(const vm_session *s) { return s->n_past; }

// next: NULL, or where the last token's greedy successor goes (drawn on the
// backend; logits then unused)
static int session_eval(vm_session *s, const int32_t *tokens, int n, int all_logits, float *logits,
                        int32_t *next, vm_err *e) {
    if (n <= 0) return vm_errf(e, "nothing to evaluate");
    if (s->n_past + n > s->max_ctx)
        return vm_errf(e, "sequence of %d tokens exceeds the context of %d", s->n_past + n, s->max_ctx);
    const int vocab = vm_model_get_config(s->m)->vocab_size;
    const int chunk = vm_model_max_batch_tokens(s->m);
    for (int done = 0; done < n;) {
        int len = VM_MIN(chunk, n - done);
        for (int i = 0; i < len; i++) {
            int pos = s->n_past + i;
            s->positions[i] = pos;
            s->slots[i] = s->block_table[pos / s->block_size] * s->block_size + pos % s->block_size;
            s->rows[i] = i;
        }
        int last_chunk = done + len == n;
        int32_t seq_start[2] = { 0, len }, ctx_len[1] = { s->n_past + len };
        // a one-token call is a decode step, a longer one a prompt batch (as in llama.cpp)
        int32_t decode_from[1] = { n == 1 ? s->n_past : INT32_MAX };
        vm_batch b = { len, tokens + done, s->positions, 1, seq_start, ctx_len, s->n_blocks,
                       s->block_table, s->slots, 0, s->rows, decode_from, NULL, NULL };
        float *out = NULL;
        if (next && last_chunk) { b.n_logits = 1; b.logit_rows = &s->rows[len - 1]; b.ids_out = next; }
        else if (logits && all_logits) { b.n_logits = len; out = logits + (size_t)done * vocab; }
        else if (logits && last_chunk) { b.n_logits = 1; b.logit_rows = &s->rows[len - 1]; out = logits; }
        if (vm_model_forward(s->m, s->kv, &b, out, e) != 0) return -1;
        s->n_past += len;
        done += len;
    }
    return 0;
}

int vm_session_eval(vm_session *s, const int32_t *tokens, int n, int all_logits, float *logits, vm_err *e) {
    return session_eval(s, tokens, n, all_logits, logits, NULL, e);
}

int vm_session_eval_greedy(vm_session *s, const int32_t *tokens, int n, int32_t *next, vm_err *e) {
    if (!next) return vm_errf(e, "no place for the next token");
    return session_eval(s, tokens, n, 0, NULL, next, e);
}
