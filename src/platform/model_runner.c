// model_runner.c - turns one scheduler step into one flat batch: token ids,
// positions, per-sequence KV lengths and block tables, the slot of each token
// in the paged KV cache, and the rows whose logits are needed; then runs one
// forward pass over it.
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "platform.h"
#include "common/prof.h"

struct vm_model_runner {
    int block_size, vocab_size;
    int32_t *tokens, *positions, *slots, *rows, *ids; int cap_tokens;
    int32_t *seq_start, *ctx_len, *decode_from; int cap_seqs;
    int32_t *block_table; size_t cap_table;
    float *logits; size_t cap_logits;
    // vision-language steps
    int32_t *mrope; int cap_mrope;           // [3][n_tokens]
    float *embeds; size_t cap_embeds;        // (n_embeds, feature_dim)
    int32_t *embed_rows; int cap_embed_rows;
};

vm_model_runner *vm_model_runner_create(int block_size, int vocab_size, vm_err *e) {
    vm_model_runner *r = calloc(1, sizeof *r);
    if (!r) { vm_errf(e, "out of memory"); return NULL; }
    r->block_size = block_size; r->vocab_size = vocab_size;
    return r;
}

void vm_model_runner_free(vm_model_runner *r) {
    if (!r) return;
    free(r->tokens); free(r->positions); free(r->slots); free(r->rows); free(r->ids);
    free(r->seq_start); free(r->ctx_len); free(r->decode_from); free(r->block_table); free(r->logits);
    free(r->mrope); free(r->embeds); free(r->embed_rows);
    free(r);
}

static int reserve(vm_model_runner *r, int n_tokens, int n_seqs, size_t table, size_t logits) {
    if (n_tokens > r->cap_tokens) {
        int32_t **arrs[] = { &r->tokens, &r->positions, &r->slots, &r->rows, &r->ids };
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
        void *d = realloc(r->decode_from, (size_t)(n_seqs + 1) * sizeof(int32_t));
        if (!d) return -1;
        r->decode_from = d;
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
                            int n_seqs, int want_ids, const void *sample_params, float **logits, int32_t **ids,
                            int *n_logits, vm_err *e) {
    const bool prof = vm_prof_on();
    double t0 = prof ? vm_prof_now() : 0;
    int n_tokens = 0, n_rows = 0, max_blocks = 1;
    for (int s = 0; s < n_seqs; s++) {
        n_tokens += seqs[s].n_new;
        n_rows += seqs[s].start + seqs[s].n_new - VM_MAX(seqs[s].logits_from, seqs[s].start);
        max_blocks = VM_MAX(max_blocks, seqs[s].n_blocks);
    }
    if (reserve(r, VM_MAX(n_tokens, 1), n_seqs, (size_t)n_seqs * (size_t)max_blocks,
                want_ids ? 1 : (size_t)VM_MAX(n_rows, 1) * (size_t)r->vocab_size))
        return vm_errf(e, "model runner: out of memory for a batch of %d tokens", n_tokens);

    const int bs = r->block_size;
    int t = 0, row = 0;
    for (int s = 0; s < n_seqs; s++) {
        const vm_runner_seq *q = &seqs[s];
        r->seq_start[s] = t;
        r->ctx_len[s] = q->start + q->n_new;
        r->decode_from[s] = q->decode_from;
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

    // Vision-language requests in the batch: M-RoPE positions for every row
    // (text rows: the same position on all three axes) and the image features
    // of the image-pad rows that fall inside this step.
    bool any_mm = false;
    for (int s = 0; s < n_seqs; s++) if (seqs[s].mrope_pos) any_mm = true;
    int n_embeds = 0;
    if (any_mm) {
        if (!ex->forward_mm || !ex->vision) return vm_errf(e, "model runner: this model takes no images");
        const int D = ex->vision->feature_dim;
        if (n_tokens > r->cap_mrope) {
            void *p = realloc(r->mrope, (size_t)n_tokens * 3 * sizeof(int32_t));
            void *q = p ? realloc(r->embed_rows, (size_t)n_tokens * sizeof(int32_t)) : NULL;
            if (p) r->mrope = p;
            if (q) r->embed_rows = q;
            if (!p || !q) return vm_errf(e, "model runner: out of memory");
            r->cap_mrope = r->cap_embed_rows = n_tokens;
        }
        int rows_img = 0;
        for (int s = 0; s < n_seqs; s++) {
            const vm_runner_seq *q = &seqs[s];
            for (int i = 0; i < q->n_images; i++) {
                int lo = VM_MAX(q->start, q->image_offset[i]);
                int hi = VM_MIN(q->start + q->n_new, q->image_offset[i] + q->image_tokens[i]);
                if (hi > lo) rows_img += hi - lo;
            }
        }
        if ((size_t)rows_img * D > r->cap_embeds) {
            void *p = realloc(r->embeds, (size_t)rows_img * D * sizeof(float));
            if (!p) return vm_errf(e, "model runner: out of memory");
            r->embeds = p; r->cap_embeds = (size_t)rows_img * D;
        }
        for (int s = 0; s < n_seqs; s++) {
            const vm_runner_seq *q = &seqs[s];
            int t0 = r->seq_start[s];
            for (int p = q->start; p < q->start + q->n_new; p++) {
                int t = t0 + p - q->start;
                for (int a = 0; a < 3; a++)
                    r->mrope[a * n_tokens + t] = !q->mrope_pos ? p
                        : p < q->n_mrope ? q->mrope_pos[a * q->n_mrope + p] : p + q->rope_delta;
            }
            for (int i = 0; i < q->n_images; i++) {
                int lo = VM_MAX(q->start, q->image_offset[i]);
                int hi = VM_MIN(q->start + q->n_new, q->image_offset[i] + q->image_tokens[i]);
                for (int p = lo; p < hi; p++, n_embeds++) {
                    r->embed_rows[n_embeds] = t0 + p - q->start;
                    memcpy(r->embeds + (size_t)n_embeds * D,
                           q->image_features[i] + (size_t)(p - q->image_offset[i]) * D, (size_t)D * sizeof(float));
                }
            }
        }
    }

    vm_batch b = {
        .n_tokens = n_tokens, .tokens = r->tokens, .positions = r->positions,
        .n_seqs = n_seqs, .seq_start = r->seq_start, .ctx_len = r->ctx_len,
        .max_blocks_per_seq = max_blocks, .block_table = r->block_table,
        .slot_mapping = r->slots, .n_logits = n_rows, .logit_rows = r->rows, .decode_from = r->decode_from,
        .ids_out = want_ids ? r->ids : NULL, .sample_params = want_ids ? sample_params : NULL,
    };
    double t1 = prof ? vm_prof_now() : 0;
    if (prof) vm_prof_add(VM_PROF_PACK, t1 - t0);
    if (any_mm) {
        if (ex->forward_mm(ex->ctx, &b, n_embeds ? r->embeds : NULL, n_embeds ? r->embed_rows : NULL, n_embeds,
                           r->mrope, r->logits, e)) return -1;
    } else if (ex->forward(ex->ctx, &b, r->logits, e)) return -1;
    if (prof) vm_prof_add(VM_PROF_RECORD, vm_prof_now() - t1);  // the report takes WAIT and COPY out
    *logits = want_ids ? NULL : r->logits;
    *ids = want_ids ? r->ids : NULL;
    *n_logits = n_rows;
    return 0;
}
