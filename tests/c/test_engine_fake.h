// test_engine_fake.h - a fake model and a fake tokenizer for engine tests.
//
// The fake model keeps its own "KV cache": the token id stored at each slot.
// A row's logits are a hash of every token of its sequence up to its position,
// read back through the block table - so a wrong block table, slot mapping,
// context length or prefix-cache hit changes the output. fake_logits() computes
// the same thing straight from a token list, as the reference.
#ifndef TEST_ENGINE_FAKE_H
#define TEST_ENGINE_FAKE_H

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"

#define FAKE_VOCAB 64
#define FAKE_EOS 0

typedef struct fake_model {
    int num_blocks, block_size;
    int32_t *slots;           // token at each slot (-1 = never written)
    long tokens_computed;     // total tokens run through forward
    int forwards;
    int fail_next;            // make the next forward fail
} fake_model;

static uint64_t fake_mix(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33;
    return x;
}

// logits of the next token after tokens[0..n)
static void fake_logits(const int32_t *tokens, int n, float *out) {
    uint64_t h = 1469598103934665603ULL;
    for (int i = 0; i < n; i++) h = fake_mix(h ^ (uint64_t)(tokens[i] + 1) * 0x9e3779b97f4a7c15ULL);
    h = fake_mix(h ^ (uint64_t)n);
    for (int t = 0; t < FAKE_VOCAB; t++) {
        uint64_t x = fake_mix(h + (uint64_t)t * 0x632be59bd9b4e019ULL);
        out[t] = (float)((double)(x >> 11) / 9007199254740992.0 * 8.0 - 4.0);
    }
    out[FAKE_EOS] -= 3.0f; // EOS is rarer, so sequences run a while
}

static int fake_forward(void *ctx, const vm_batch *b, float *logits, vm_err *e) {
    fake_model *m = ctx;
    if (m->fail_next) { m->fail_next = 0; return vm_errf(e, "fake forward failure"); }
    m->forwards++;
    m->tokens_computed += b->n_tokens;
    // write this step's tokens first (as cache_write precedes attention)
    for (int t = 0; t < b->n_tokens; t++) {
        int slot = b->slot_mapping[t];
        if (slot < m->block_size || slot >= m->num_blocks * m->block_size)
            return vm_errf(e, "slot %d out of range (or in reserved block 0)", slot);
        m->slots[slot] = b->tokens[t];
    }
    int row = 0;
    int32_t *ctxbuf = malloc(sizeof(int32_t) * 100000);
    for (int s = 0; s < b->n_seqs; s++) {
        for (int t = b->seq_start[s]; t < b->seq_start[s + 1]; t++) {
            int pos = b->positions[t];
            if (pos >= b->ctx_len[s]) { free(ctxbuf); return vm_errf(e, "position beyond ctx_len"); }
            bool need = false;
            for (int k = 0; k < b->n_logits; k++) if (b->logit_rows[k] == t) need = true;
            if (!need) continue;
            for (int p = 0; p <= pos; p++) {
                int blk = b->block_table[s * b->max_blocks_per_seq + p / m->block_size];
                if (blk <= 0) { free(ctxbuf); return vm_errf(e, "block table hole at pos %d", p); }
                ctxbuf[p] = m->slots[blk * m->block_size + p % m->block_size];
            }
            fake_logits(ctxbuf, pos + 1, logits + (size_t)row * FAKE_VOCAB);
            row++;
        }
    }
    free(ctxbuf);
    if (row != b->n_logits) return vm_errf(e, "logit rows not in batch order");
    return 0;
}

static void fake_destroy(void *ctx) {
    fake_model *m = ctx;
    free(m->slots);
    free(m);
}

static vm_executor fake_executor(int num_blocks, int block_size, fake_model **out) {
    fake_model *m = calloc(1, sizeof *m);
    m->num_blocks = num_blocks; m->block_size = block_size;
    m->slots = malloc(sizeof(int32_t) * (size_t)num_blocks * block_size);
    for (int i = 0; i < num_blocks * block_size; i++) m->slots[i] = -1;
    if (out) *out = m;
    return (vm_executor){ .ctx = m, .vocab_size = FAKE_VOCAB, .max_position_embeddings = 4096,
                          .forward = fake_forward, .destroy = fake_destroy };
}

// Fake tokenizer: 0 "<eos>" (special), 1..26 'a'..'z', 27 ' ', 28 '.', 29 "\xC3" and
// 30 "\xA9" (the two bytes of 'é'), 31.. two-letter pieces "aa", "ab", ...
static const char *fake_piece(int32_t id, char *buf) {
    if (id == 0) return "<eos>";
    if (id >= 1 && id <= 26) { buf[0] = (char)('a' + id - 1); buf[1] = 0; return buf; }
    if (id == 27) return " ";
    if (id == 28) return ".";
    if (id == 29) return "\xC3";
    if (id == 30) return "\xA9";
    int k = id - 31;
    buf[0] = (char)('a' + k / 26); buf[1] = (char)('a' + k % 26); buf[2] = 0;
    return buf;
}

static char *fake_decode(void *ctx, const int32_t *ids, int n, int skip_special) {
    (void)ctx;
    size_t cap = (size_t)n * 6 + 1, len = 0;
    char *s = malloc(cap), buf[4];
    for (int i = 0; i < n; i++) {
        if (ids[i] == 0 && skip_special) continue;
        const char *p = fake_piece(ids[i], buf);
        size_t l = strlen(p);
        memcpy(s + len, p, l); len += l;
    }
    s[len] = 0;
    // as HF decoding does: invalid or incomplete UTF-8 becomes U+FFFD
    char *o = malloc(len * 3 + 1);
    size_t k = 0;
    for (size_t i = 0; i < len;) {
        unsigned char c = (unsigned char)s[i];
        size_t n = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        bool ok = n > 0 && i + n <= len;
        for (size_t j = 1; ok && j < n; j++) if (((unsigned char)s[i + j] & 0xC0) != 0x80) ok = false;
        if (ok) { memcpy(o + k, s + i, n); k += n; i += n; }
        else { memcpy(o + k, "\xEF\xBF\xBD", 3); k += 3; i += 1; }
    }
    o[k] = 0;
    free(s);
    return o;
}

static int fake_encode(void *ctx, const char *text, int add_special, int32_t **ids, int *n, vm_err *e) {
    (void)ctx; (void)add_special;
    size_t L = strlen(text);
    *ids = malloc(sizeof(int32_t) * (L + 1));
    *n = 0;
    for (size_t i = 0; i < L; i++) {
        unsigned char c = (unsigned char)text[i];
        int32_t id;
        if (c >= 'a' && c <= 'z') id = c - 'a' + 1;
        else if (c == ' ') id = 27;
        else if (c == '.') id = 28;
        else if (c == 0xC3) id = 29;
        else if (c == 0xA9) id = 30;
        else { free(*ids); return vm_errf(e, "fake tokenizer: cannot encode byte 0x%02x", c); }
        (*ids)[(*n)++] = id;
    }
    return 0;
}

static vm_text_codec *fake_codec(void) {
    vm_text_codec *c = calloc(1, sizeof *c);
    c->encode = fake_encode; c->decode = fake_decode; c->destroy = NULL;
    return c;
}

// Engine over the fake model (the engine owns and frees the codec).
static vm_engine *fake_engine(int num_blocks, int block_size, int max_seqs, int max_batched,
                              int prefix_caching, fake_model **model) {
    vm_engine_args a;
    vm_engine_args_init(&a);
    a.num_kv_blocks = num_blocks; a.block_size = block_size;
    a.max_num_seqs = max_seqs; a.max_num_batched_tokens = max_batched;
    a.max_model_len = 2048;
    a.enable_prefix_caching = prefix_caching;
    a.eos_token_ids[0] = FAKE_EOS; a.n_eos_token_ids = 1;
    vm_err e = { "" };
    vm_engine *eng = vm_engine_create_with(&a, fake_executor(num_blocks, block_size, model), fake_codec(), &e);
    if (!eng) fprintf(stderr, "fake_engine: %s\n", e.msg);
    return eng;
}

// Greedy reference: argmax of fake_logits, stopping at EOS or max_tokens.
static int fake_greedy_ref(const int32_t *prompt, int n, int max_tokens, int32_t *out) {
    int32_t *seq = malloc(sizeof(int32_t) * (size_t)(n + max_tokens));
    memcpy(seq, prompt, sizeof(int32_t) * (size_t)n);
    float lg[FAKE_VOCAB];
    int k = 0;
    while (k < max_tokens) {
        fake_logits(seq, n + k, lg);
        int best = 0;
        for (int t = 1; t < FAKE_VOCAB; t++) if (lg[t] > lg[best]) best = t;
        seq[n + k] = best; out[k++] = best;
        if (best == FAKE_EOS) break;
    }
    free(seq);
    return k;
}

#endif
