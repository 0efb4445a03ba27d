// model_runner.c - turns one scheduler step into one flat batch: token ids,
// positions, per-sequence KV lengths and block tables, the slot of each token
// in the paged KV cache, and the rows whose logits are needed; then runs one
// forward pass over it.
#include <stdlib.h>

#include "platform.h"

struct vm_model_runner {
    int block_size, vocab_size;
    int32_t *tokens, *positions, *slots, *rows; int cap_tokens;
    int32_t *seq_start, *ctx_len; int cap_seqs;
    int32_t *block_table; size_t cap_table;
    float *logits; size_t cap_logits;
};

vm_model_runner *vm_model_runner_create(int block_size, int vocab_size, vm_err *e) {
    vm_model_runner *r = calloc(1, sizeof *r);
    if (!r) { vm_errf(e, "out of memory"); return NULL; }
    r->block_size = block_size; r->vocab_size = vocab_size;
    return r;
}

void vm_model_runner_free(vm_model_runner *r) {
    if (!r) return;
    free(r->tokens); free(r->positions); free(r->slots); free(r->rows);
    free(r->seq_start); free(r->ctx_len); free(r->block_table); free(r->logits);
    free(r);
}

static int reserve(vm_model_runner *r, int n_tokens, int n_seqs, size_t table, size_t logits) {
    if (n_tokens > r->cap_tokens) {
        int32_t **arrs[] = { &r->tokens, &r->positions, &r->slots, &r->rows };
        for (size_t i = 0; i < VM_ARRAY_LEN(arrs); i++) {
            void *p = realloc(*arrs[i], (size_t)n_tokens * sizeof(int32_t));
            if (!p) return -1;
            *arrs[i] = p;
        }
        r->cap_tokens = n_tokens;
    }
    if (n_seqs + 1 > r->cap_seqs) {
        void *a = realloc(r->seq_start, (size_t)(n_seqs + 1) * sizeof(int32_t));
        if (!a) return -1;
        r->seq_start = a;
        void *b = realloc(r->ctx_len, (size_t)(n_seqs + 1) * sizeof(int32_t));
        if (!b) return -1;
        r->ctx_len = b;
        r->cap_seqs = n_seqs + 1;
    }
    if (table > r->cap_table) {
        void *p = realloc(r->block_table, table * sizeof(int32_t));
        if (!p) return -1;
        r->block_table = p; r->cap_table = table;
    }
    if (logits > r->cap_logits) {
        void *p = realloc(r->logits, logits * sizeof(float));
        if (!p) return -1;
        r->logits = p; r->cap_logits = logits;
    }
    return 0;
}

int vm_model_runner_execute(vm_model_runner *r, const vm_executor *ex, const vm_runner_seq *seqs,
                            int n_seqs, float **logits, int *n_logits, vm_err *e) {
    int n_tokens = 0, n_rows = 0, max_blocks = 1;
    for (int s = 0; s < n_seqs; s++) {
        n_tokens += seqs[s].n_new;
        n_rows += seqs[s].start + seqs[s].n_new - VM_MAX(seqs[s].logits_from, seqs[s].start);
        max_blocks = VM_MAX(max_blocks, seqs[s].n_blocks);
    }
    if (reserve(r, VM_MAX(n_tokens, 1), n_seqs, (size_t)n_seqs * (size_t)max_blocks,
                (size_t)VM_MAX(n_rows, 1) * (size_t)r->vocab_size))
        return vm_errf(e, "model runner: out of memory for a batch of %d tokens", n_tokens);

    const int bs = r->block_size;
    int t = 0, row = 0;
    for (int s = 0; s < n_seqs; s++) {
        const vm_runner_seq *q = &seqs[s];
        r->seq_start[s] = t;
        r->ctx_len[s] = q->start + q->n_new;
        int32_t *bt = r->block_table + (size_t)s * max_blocks;
        for (int b = 0; b < max_blocks; b++) bt[b] = b < q->n_blocks ? q->blocks[b] : 0;
        for (int p = q->start; p < q->start + q->n_new; p++, t++) {
            r->tokens[t] = q->tokens[p];
            r->positions[t] = p;
            r->slots[t] = q->blocks[p / bs] * bs + p % bs;
            if (p >= q->logits_from) r->rows[row++] = t;
        }
    }
    r->seq_start[n_seqs] = t;

    vm_batch b = {
        .n_tokens = n_tokens, .tokens = r->tokens, .positions = r->positions,
        .n_seqs = n_seqs, .seq_start = r->seq_start, .ctx_len = r->ctx_len,
        .max_blocks_per_seq = max_blocks, .block_table = r->block_table,
        .slot_mapping = r->slots, .n_logits = n_rows, .logit_rows = r->rows,
    };
    if (ex->forward(ex->ctx, &b, r->logits, e)) return -1;
    *logits = r->logits;
    *n_logits = n_rows;
    return 0;
}
