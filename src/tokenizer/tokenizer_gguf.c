// tokenizer_gguf.c - builds a vm_tokenizer from GGUF metadata (tokenizer.ggml.*), laid out
// as Hugging Face lays out the same vocabulary:
//   "gpt2":  byte-level BPE from tokens + merges; the pre-tokenizer regex from
//            tokenizer.ggml.pre (gpt2/default, smollm/starcoder: digits split first,
//            llama-bpe: Llama-3 regex + ignore_merges, qwen2: NFC + Qwen2 regex)
//   "llama": SentencePiece BPE from tokens + scores + token types: merges are every split
//            of a normal piece into two normal pieces, ranked by the piece's score, then
//            the halves' scores (descending); byte_fallback over <0xXX> tokens, "▁" for
//            spaces (prepended unless tokenizer.ggml.add_space_prefix is false).
// Token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
// Control and unknown tokens become special added tokens, user-defined ones plain added tokens.
#include "tokenizer_internal.h"
#include "../loader/weights.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5, TT_BYTE = 6 };

static int gguf_int(const vm_gguf *g, const char *key, int64_t dflt) {
    int64_t v;
    return vm_gguf_get_int(g, key, &v) == 0 ? (int)v : (int)dflt;
}

static int pre_regex(vm_tokenizer *t, const char *pat, vm_err *e) {
    tok_pretok pt = {0};
    pt.kind = PRE_SPLIT; pt.behavior = SPLIT_ISOLATED;
    if (!(pt.re = tok_compile_regex(pat, strlen(pat), e))) return -1;
    tok_pretok *p = realloc(t->pres, (t->n_pres + 2) * sizeof *p);
    if (!p) { pcre2_code_free(pt.re); return vm_errf(e, "tokenizer: out of memory"); }
    t->pres = p; t->pres[t->n_pres++] = pt;
    return 0;
}

static int push_tail(vm_tokenizer *t, tok_pretok pt, vm_err *e) {
    tok_pretok *p = realloc(t->pres, (t->n_pres + 1) * sizeof *p);
    if (!p) return vm_errf(e, "tokenizer: out of memory");
    t->pres = p; t->pres[t->n_pres++] = pt;
    return 0;
}

static int add_decoder(vm_tokenizer *t, tok_dec_kind k, const char *a, const char *b, int start, vm_err *e) {
    tok_decoder *p = realloc(t->decs, (t->n_decs + 1) * sizeof *p);
    if (!p) return vm_errf(e, "tokenizer: out of memory");
    t->decs = p;
    tok_decoder d = {0};
    d.kind = k; d.start = start;
    if (a) { d.a_len = strlen(a); d.a = strdup(a); }
    if (b) { d.b_len = strlen(b); d.b = strdup(b); }
    t->decs[t->n_decs++] = d;
    t->has_decoder = 1;
    return 0;
}

static int add_norm(vm_tokenizer *t, tok_norm_kind k, const char *a, const char *b, vm_err *e) {
    tok_normalizer *p = realloc(t->norms, (t->n_norms + 1) * sizeof *p);
    if (!p) return vm_errf(e, "tokenizer: out of memory");
    t->norms = p;
    tok_normalizer nz = {0};
    nz.kind = k;
    if (a) { nz.a_len = strlen(a); nz.a = strdup(a); }
    if (b) { nz.b_len = strlen(b); nz.b = strdup(b); }
    t->norms[t->n_norms++] = nz;
    return 0;
}

static int setup_gpt2(vm_tokenizer *t, const vm_gguf *g, vm_err *e) {
    vm_gguf_str pre = {"default", 7};
    vm_gguf_get_str(g, "tokenizer.ggml.pre", &pre);
    char name[64];
    snprintf(name, sizeof name, "%.*s", (int)VM_MIN(pre.len, sizeof name - 1), pre.s);
    tok_pretok bl = {0};
    bl.kind = PRE_BYTELEVEL;
    t->byte_level = 1;
    if (!strcmp(name, "default") || !strcmp(name, "gpt2") || !strcmp(name, "gpt-2") ||
        !strcmp(name, "olmo") || !strcmp(name, "phi-2")) {
        if (!(bl.re = tok_compile_regex(TOK_GPT2_PATTERN, strlen(TOK_GPT2_PATTERN), e))) return -1;
    } else if (!strcmp(name, "smollm") || !strcmp(name, "starcoder") || !strcmp(name, "refact") ||
               !strcmp(name, "codeshell")) {
        if (pre_regex(t, "\\p{N}", e)) return -1; // HF: Digits(individual_digits=true)
        if (!(bl.re = tok_compile_regex(TOK_GPT2_PATTERN, strlen(TOK_GPT2_PATTERN), e))) return -1;
    } else if (!strcmp(name, "llama-bpe") || !strcmp(name, "llama3") || !strcmp(name, "llama-v3") ||
               !strcmp(name, "smaug-bpe")) {
        if (pre_regex(t, TOK_LLAMA3_PATTERN, e)) return -1;
        t->ignore_merges = 1;
    } else if (!strcmp(name, "qwen2") || !strcmp(name, "deepseek-r1-qwen")) {
        if (add_norm(t, NORM_NFC, NULL, NULL, e)) return -1;
        if (pre_regex(t, TOK_QWEN2_PATTERN, e)) return -1;
    } else {
        return vm_errf(e, "tokenizer: unsupported tokenizer.ggml.pre '%s' (known: default, gpt2, "
                          "smollm, starcoder, llama-bpe, qwen2)", name);
    }
    if (push_tail(t, bl, e)) { if (bl.re) pcre2_code_free(bl.re); return -1; }
    if (add_decoder(t, DEC_BYTELEVEL, NULL, NULL, 0, e)) return -1;

    vm_gguf_array merges;
    if (vm_gguf_get_array(g, "tokenizer.ggml.merges", &merges) || merges.type != VM_GGUF_STRING)
        return vm_errf(e, "tokenizer: GGUF has no tokenizer.ggml.merges");
    if (tok_finish(t, e)) return -1; // builds the byte-keyed vocab map used below
    char buf[1024];
    for (uint64_t i = 0; i < merges.n; i++) {
        const vm_gguf_str *m = &merges.strs[i];
        const char *sp = memchr(m->s, ' ', m->len);
        if (!sp || m->len >= sizeof buf) return vm_errf(e, "tokenizer: bad GGUF merge %llu", (unsigned long long)i);
        size_t al = (size_t)(sp - m->s), bl2 = m->len - al - 1;
        int32_t a = tok_lookup_token(t, m->s, al), b = tok_lookup_token(t, sp + 1, bl2);
        memcpy(buf, m->s, al); memcpy(buf + al, sp + 1, bl2);
        int32_t ab = tok_lookup_token(t, buf, al + bl2);
        if (a < 0 || b < 0 || ab < 0)
            return vm_errf(e, "tokenizer: GGUF merge %llu '%.*s' uses tokens not in the vocab",
                           (unsigned long long)i, (int)VM_MIN(m->len, 200), m->s);
        if (tok_add_merge(t, a, b, (uint32_t)i, ab, e)) return -1;
    }
    return 0;
}

typedef struct { int32_t left, right, piece; float s_piece, s_left, s_right; uint32_t order; } spm_merge;

static int spm_merge_cmp(const void *x, const void *y) {
    const spm_merge *a = x, *b = y;
    if (a->s_piece != b->s_piece) return a->s_piece > b->s_piece ? -1 : 1;
    if (a->piece != b->piece) return a->piece < b->piece ? -1 : 1;
    if (a->s_left != b->s_left) return a->s_left > b->s_left ? -1 : 1;
    if (a->s_right != b->s_right) return a->s_right > b->s_right ? -1 : 1;
    return a->order < b->order ? -1 : a->order > b->order;
}

static int setup_llama_scored(vm_tokenizer *t, const vm_gguf *g, const int32_t *types, size_t n,
                              const float *scores, vm_err *e);

static int setup_llama(vm_tokenizer *t, const vm_gguf *g, const int32_t *types, size_t n, vm_err *e) {
    vm_gguf_array sc;
    if (vm_gguf_get_array(g, "tokenizer.ggml.scores", &sc) || sc.type != VM_GGUF_F32 || sc.n != n)
        return vm_errf(e, "tokenizer: GGUF llama vocabulary needs tokenizer.ggml.scores (f32, one per token)");
    float *scores = malloc(n * sizeof *scores); // the array may be unaligned in the mapping
    if (!scores) return vm_errf(e, "tokenizer: out of memory");
    memcpy(scores, sc.data, n * sizeof *scores);
    int rc = setup_llama_scored(t, g, types, n, scores, e);
    free(scores);
    return rc;
}

static int setup_llama_scored(vm_tokenizer *t, const vm_gguf *g, const int32_t *types, size_t n,
                              const float *scores, vm_err *e) {
    int64_t asp = 1;
    vm_gguf_get_int(g, "tokenizer.ggml.add_space_prefix", &asp);
    if (asp && add_norm(t, NORM_PREPEND, "\xe2\x96\x81", NULL, e)) return -1;
    if (add_norm(t, NORM_REPLACE, " ", "\xe2\x96\x81", e)) return -1;
    if (add_decoder(t, DEC_REPLACE, "\xe2\x96\x81", " ", 0, e) ||
        add_decoder(t, DEC_BYTEFALLBACK, NULL, NULL, 0, e) ||
        add_decoder(t, DEC_FUSE, NULL, NULL, 0, e)) return -1;
    if (asp && add_decoder(t, DEC_STRIP, " ", NULL, 1, e)) return -1;
    t->byte_fallback = 1; t->fuse_unk = 1;
    if (tok_finish(t, e)) return -1;

    spm_merge *ms = NULL; size_t nm = 0, cap = 0;
    uint32_t order = 0;
    for (size_t id = 0; id < n; id++) {
        if (types && types[id] != TT_NORMAL) continue;
        const char *s = t->tokens[id]; size_t len = t->token_len[id];
        for (size_t k = 1; k < len; k++) {
            if (((uint8_t)s[k] & 0xc0) == 0x80) continue; // split at character boundaries
            int32_t l = tok_map_get(&t->vocab, s, k), r = tok_map_get(&t->vocab, s + k, len - k);
            if (l < 0 || r < 0) continue;
            if (types && (types[l] != TT_NORMAL || types[r] != TT_NORMAL)) continue;
            if (nm == cap) {
                cap = cap ? cap * 2 : 4096;
                spm_merge *p = realloc(ms, cap * sizeof *p);
                if (!p) { free(ms); return vm_errf(e, "tokenizer: out of memory"); }
                ms = p;
            }
            ms[nm++] = (spm_merge){l, r, (int32_t)id, scores[id], scores[l], scores[r], order++};
        }
    }
    qsort(ms, nm, sizeof *ms, spm_merge_cmp);
    for (size_t i = 0; i < nm; i++)
        if (tok_add_merge(t, ms[i].left, ms[i].right, (uint32_t)i, ms[i].piece, e)) { free(ms); return -1; }
    free(ms);
    return 0;
}

vm_tokenizer *vm_tokenizer_from_gguf(const vm_gguf *g, vm_err *e) {
    if (!g) { vm_errf(e, "tokenizer: no GGUF metadata"); return NULL; }
    vm_gguf_str model;
    if (vm_gguf_get_str(g, "tokenizer.ggml.model", &model)) {
        vm_errf(e, "tokenizer: GGUF has no tokenizer.ggml.model"); return NULL;
    }
    int is_gpt2 = model.len == 4 && !memcmp(model.s, "gpt2", 4);
    int is_llama = model.len == 5 && !memcmp(model.s, "llama", 5);
    if (!is_gpt2 && !is_llama) {
        vm_errf(e, "tokenizer: unsupported tokenizer.ggml.model '%.*s' (gpt2 and llama are supported)",
                (int)VM_MIN(model.len, 64), model.s);
        return NULL;
    }
    vm_gguf_array toks, tt;
    if (vm_gguf_get_array(g, "tokenizer.ggml.tokens", &toks) || toks.type != VM_GGUF_STRING || !toks.n) {
        vm_errf(e, "tokenizer: GGUF has no tokenizer.ggml.tokens"); return NULL;
    }
    int32_t *types = NULL;
    if (!vm_gguf_get_array(g, "tokenizer.ggml.token_type", &tt) && tt.n == toks.n &&
        (tt.type == VM_GGUF_I32 || tt.type == VM_GGUF_U32)) {
        types = malloc(tt.n * sizeof *types);
        if (types) memcpy(types, tt.data, tt.n * sizeof *types);
    }
    vm_tokenizer *t = tok_new();
    if (!t) { free(types); vm_errf(e, "tokenizer: out of memory"); return NULL; }
    size_t n = toks.n;
    for (size_t i = 0; i < n; i++)
        if (tok_set_token(t, (int32_t)i, toks.strs[i].s, toks.strs[i].len, e)) goto fail;
    if (types)
        for (size_t i = 0; i < n; i++) {
            int ty = types[i];
            if (ty == TT_CONTROL || ty == TT_UNKNOWN || ty == TT_USER) {
                int special = ty != TT_USER;
                if (tok_add_added(t, (int32_t)i, toks.strs[i].s, toks.strs[i].len, special, 0, 0, 0, 0, e)) goto fail;
                if (ty == TT_CONTROL) t->flags[i] |= TOKF_CONTROL;
            }
        }
    t->unk_id = gguf_int(g, "tokenizer.ggml.unknown_token_id", -1);
    if (t->unk_id < 0 && is_llama) t->unk_id = tok_map_get(&t->added_map, "<unk>", 5);
    if (is_gpt2 ? setup_gpt2(t, g, e) : setup_llama(t, g, types, n, e)) goto fail;
    if (t->unk_id < 0 && is_llama) t->unk_id = tok_lookup_token(t, "<unk>", 5);
    if (t->unk_id >= (int32_t)n) t->unk_id = -1;
    if (!is_llama) t->unk_id = -1; // HF's byte-level BPE has no unk (every byte is a token)
    t->bos_id = gguf_int(g, "tokenizer.ggml.bos_token_id", -1);
    t->pad_id = gguf_int(g, "tokenizer.ggml.padding_token_id", -1);
    int32_t eos = gguf_int(g, "tokenizer.ggml.eos_token_id", -1);
    if (eos >= 0) {
        t->eos_ids = malloc(sizeof *t->eos_ids);
        if (!t->eos_ids) { vm_errf(e, "tokenizer: out of memory"); goto fail; }
        t->eos_ids[0] = eos; t->n_eos = 1;
    }
    int32_t eot = gguf_int(g, "tokenizer.ggml.eot_token_id", -1);
    if (eot >= 0 && eot != eos) {
        int32_t *p = realloc(t->eos_ids, (t->n_eos + 1) * sizeof *p);
        if (!p) { vm_errf(e, "tokenizer: out of memory"); goto fail; }
        t->eos_ids = p; p[t->n_eos++] = eot;
    }
    int add_bos = gguf_int(g, "tokenizer.ggml.add_bos_token", is_llama);
    int add_eos = gguf_int(g, "tokenizer.ggml.add_eos_token", 0);
    if (add_bos && t->bos_id >= 0) {
        t->prefix_ids = malloc(sizeof(int32_t));
        if (!t->prefix_ids) { vm_errf(e, "tokenizer: out of memory"); goto fail; }
        t->prefix_ids[0] = t->bos_id; t->n_prefix = 1;
    }
    if (add_eos && eos >= 0) {
        t->suffix_ids = malloc(sizeof(int32_t));
        if (!t->suffix_ids) { vm_errf(e, "tokenizer: out of memory"); goto fail; }
        t->suffix_ids[0] = eos; t->n_suffix = 1;
    }
    free(types);
    return t;
fail:
    free(types);
    vm_tokenizer_free(t);
    return NULL;
}
