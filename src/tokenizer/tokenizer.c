// tokenizer.c - encode/decode for Hugging Face style tokenizers (see tokenizer.h).
//
// Encoding, as HF tokenizers does it:
//   text -> split out non-normalized added tokens (leftmost-longest)
//        -> each remaining segment: normalizers -> split out normalized added tokens
//        -> each remaining piece: pre-tokenizers (regex splits, ByteLevel, Metaspace, ...)
//        -> each word: BPE (merge the lowest-ranked adjacent pair first, leftmost on ties)
//        -> post-processor (template prefix/suffix ids)
// Byte-level vocabularies are stored with their keys un-mapped back to raw bytes, so a
// word is merged over its raw bytes and the GPT-2 byte<->char table is only needed to
// load the vocabulary and to decode.
#include "tokenizer_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

const char *const TOK_GPT2_PATTERN =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
const char *const TOK_LLAMA3_PATTERN =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+"
    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char *const TOK_QWEN2_PATTERN =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+"
    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

// ---------------------------------------------------------------------------------------
// Small helpers: growable buffers, UTF-8
// ---------------------------------------------------------------------------------------

typedef struct { char *p; size_t n, cap; } sbuf;
typedef struct { int32_t *p; size_t n, cap; } ibuf;

static int sbuf_reserve(sbuf *b, size_t extra) {
    if (b->n + extra + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->n + extra + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p; b->cap = cap; return 0;
}
static int sbuf_add(sbuf *b, const void *s, size_t n) {
    if (sbuf_reserve(b, n)) return -1;
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n; b->p[b->n] = 0; return 0;
}
static int ibuf_push(ibuf *b, int32_t v) {
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        int32_t *p = realloc(b->p, cap * sizeof *p);
        if (!p) return -1;
        b->p = p; b->cap = cap;
    }
    b->p[b->n++] = v; return 0;
}
static int ibuf_add(ibuf *b, const int32_t *v, size_t n) {
    for (size_t i = 0; i < n; i++) if (ibuf_push(b, v[i])) return -1;
    return 0;
}

// Decodes one UTF-8 sequence at s[0..n). Returns its length (1..4) and sets *cp when valid;
// when invalid returns -(k) where k >= 1 is the length of the maximal valid prefix to
// replace with one U+FFFD (as Rust's from_utf8_lossy and the WHATWG decoder do), and sets
// *incomplete when the whole rest of the input is a valid but unfinished prefix.
static int utf8_step(const uint8_t *s, size_t n, uint32_t *cp, int *incomplete) {
    uint8_t c = s[0];
    if (incomplete) *incomplete = 0;
    if (c < 0x80) { *cp = c; return 1; }
    int need; uint32_t v; uint8_t lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) { need = 1; v = c & 0x1f; }
    else if (c >= 0xe0 && c <= 0xef) {
        need = 2; v = c & 0x0f;
        if (c == 0xe0) lo = 0xa0;
        if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        need = 3; v = c & 0x07;
        if (c == 0xf0) lo = 0x90;
        if (c == 0xf4) hi = 0x8f;
    } else return -1;
    size_t i = 1;
    for (; i <= (size_t)need; i++) {
        if (i >= n) { if (incomplete) *incomplete = 1; return -(int)i; }
        uint8_t d = s[i];
        if (d < lo || d > hi) return -(int)i;
        lo = 0x80; hi = 0xbf;
        v = (v << 6) | (d & 0x3f);
    }
    *cp = v; return need + 1;
}

static size_t utf8_encode(uint32_t cp, char *out) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xc0 | (cp >> 6)); out[1] = (char)(0x80 | (cp & 0x3f)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12)); out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f)); return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18)); out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f)); out[3] = (char)(0x80 | (cp & 0x3f)); return 4;
}

static size_t utf8_len_at(const char *s, size_t n) { // length of the (valid) char at s
    uint8_t c = (uint8_t)s[0];
    size_t l = c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
    return l <= n ? l : n;
}

static uint32_t utf8_cp_at(const char *s, size_t n) {
    uint32_t cp = 0xfffd;
    if (n && utf8_step((const uint8_t *)s, n, &cp, NULL) <= 0) cp = 0xfffd;
    return cp;
}

// Appends src to out replacing invalid sequences with U+FFFD (Rust from_utf8_lossy).
// *tail_incomplete (if non-NULL) is set when the input ends inside a valid prefix.
static int utf8_lossy_append(sbuf *out, const uint8_t *s, size_t n, int *tail_incomplete) {
    size_t i = 0, run = 0;
    if (tail_incomplete) *tail_incomplete = 0;
    while (i < n) {
        uint32_t cp; int inc;
        int k = utf8_step(s + i, n - i, &cp, &inc);
        if (k > 0) { i += (size_t)k; continue; }
        if (sbuf_add(out, s + run, i - run)) return -1;
        if (sbuf_add(out, "\xef\xbf\xbd", 3)) return -1;
        if (inc && tail_incomplete) *tail_incomplete = 1;
        i += (size_t)(-k); run = i;
    }
    return sbuf_add(out, s + run, n - run);
}

// Unicode White_Space (what Rust's char::is_whitespace and regex \s use).
static int is_white_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
           c == 0x205f || c == 0x3000;
}

static int is_word_char(uint32_t c) { // regex \w: letters, marks, Nd/Nl, Pc, joiners
    if (c == 0x200c || c == 0x200d || c == '_') return 1;
    switch (utf8proc_category((utf8proc_int32_t)c)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME: case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_PC: return 1;
    default: return 0;
    }
}

static uint32_t utf8_last_cp(const char *s, size_t n, size_t *start) {
    size_t i = n;
    while (i > 0 && ((uint8_t)s[i - 1] & 0xc0) == 0x80) i--;
    if (i > 0) i--;
    if (start) *start = i;
    return utf8_cp_at(s + i, n - i);
}

// ---------------------------------------------------------------------------------------
// Hash map: byte string -> int32
// ---------------------------------------------------------------------------------------

uint64_t tok_hash(const void *p, size_t n) { // FNV-1a, 8 bytes at a time
    const uint8_t *s = p;
    uint64_t h = 0xcbf29ce484222325ull ^ (uint64_t)n;
    while (n >= 8) {
        uint64_t w; memcpy(&w, s, 8);
        h = (h ^ w) * 0x100000001b3ull; h ^= h >> 29;
        s += 8; n -= 8;
    }
    while (n--) h = (h ^ *s++) * 0x100000001b3ull;
    h ^= h >> 32; h *= 0x9e3779b97f4a7c15ull; h ^= h >> 29;
    return h;
}

static int tok_map_grow(tok_map *m) {
    uint32_t cap = m->cap ? m->cap * 2 : 1024;
    uint32_t *slots = calloc(cap, sizeof *slots);
    if (!slots) return -1;
    for (uint32_t i = 0; i < m->n; i++) {
        uint32_t j = (uint32_t)m->entries[i].hash & (cap - 1);
        while (slots[j]) j = (j + 1) & (cap - 1);
        slots[j] = i + 1;
    }
    free(m->slots); m->slots = slots; m->cap = cap;
    return 0;
}

int tok_map_put(tok_map *m, const char *k, size_t n, int32_t val) {
    if (n > UINT32_MAX) return -1;
    if ((uint64_t)(m->n + 1) * 4 > (uint64_t)m->cap * 3 && tok_map_grow(m)) return -1;
    uint64_t h = tok_hash(k, n);
    uint32_t j = (uint32_t)h & (m->cap - 1);
    while (m->slots[j]) {
        struct tok_map_entry *en = &m->entries[m->slots[j] - 1];
        if (en->hash == h && en->len == n && !memcmp(m->arena + en->off, k, n)) {
            en->val = val; return 0;
        }
        j = (j + 1) & (m->cap - 1);
    }
    if (m->n == m->entries_cap) {
        uint32_t c = m->entries_cap ? m->entries_cap * 2 : 1024;
        void *p = realloc(m->entries, c * sizeof *m->entries);
        if (!p) return -1;
        m->entries = p; m->entries_cap = c;
    }
    if (m->arena_len + n + 1 > m->arena_cap) {
        size_t c = m->arena_cap ? m->arena_cap : 4096;
        while (c < m->arena_len + n + 1) c *= 2;
        char *p = realloc(m->arena, c);
        if (!p) return -1;
        m->arena = p; m->arena_cap = c;
    }
    if (n) memcpy(m->arena + m->arena_len, k, n);
    m->entries[m->n] = (struct tok_map_entry){h, (uint32_t)m->arena_len, (uint32_t)n, val};
    m->arena_len += n;
    m->slots[j] = ++m->n;
    return 0;
}

int32_t tok_map_get(const tok_map *m, const char *k, size_t n) {
    if (!m->cap) return -1;
    uint64_t h = tok_hash(k, n);
    uint32_t j = (uint32_t)h & (m->cap - 1);
    while (m->slots[j]) {
        const struct tok_map_entry *en = &m->entries[m->slots[j] - 1];
        if (en->hash == h && en->len == n && !memcmp(m->arena + en->off, k, n)) return en->val;
        j = (j + 1) & (m->cap - 1);
    }
    return -1;
}

void tok_map_free(tok_map *m) {
    free(m->slots); free(m->entries); free(m->arena);
    memset(m, 0, sizeof *m);
}

// ---------------------------------------------------------------------------------------
// GPT-2 byte <-> char table: printable Latin-1 bytes map to themselves, the other 68
// bytes to U+0100.. in byte order.
// ---------------------------------------------------------------------------------------

static int bytelevel_byte(uint32_t cp) { // char -> byte; -1 if cp is not in the table
    if ((cp >= 0x21 && cp <= 0x7e) || (cp >= 0xa1 && cp <= 0xac) || (cp >= 0xae && cp <= 0xff))
        return (int)cp;
    if (cp < 256 || cp >= 256 + 68) return -1;
    uint32_t k = cp - 256; // the 68 unprintable bytes, in order: 0x00-0x20, 0x7f-0xa0, 0xad
    return k <= 32 ? (int)k : k <= 66 ? (int)(0x7f + k - 33) : 0xad;
}

// Un-maps a ByteLevel token string into raw bytes; -1 if some char is not in the table.
static int bytelevel_unmap(const char *s, size_t n, sbuf *out) {
    out->n = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp; int k = utf8_step((const uint8_t *)s + i, n - i, &cp, NULL);
        if (k <= 0) return -1;
        int b = bytelevel_byte(cp);
        if (b < 0) return -1;
        uint8_t c = (uint8_t)b;
        if (sbuf_add(out, &c, 1)) return -1;
        i += (size_t)k;
    }
    return 0;
}

// ---------------------------------------------------------------------------------------
// Building
// ---------------------------------------------------------------------------------------

vm_tokenizer *tok_new(void) {
    vm_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->unk_id = -1; t->bos_id = -1; t->pad_id = -1;
    for (int i = 0; i < 256; i++) { t->byte_ids[i] = -1; t->fallback_ids[i] = -1; }
    pthread_mutex_init(&t->cache.lock, NULL);
    return t;
}

int tok_set_token(vm_tokenizer *t, int32_t id, const char *s, size_t len, vm_err *e) {
    if (id < 0 || id >= (1 << 30)) return vm_errf(e, "tokenizer: token id %d out of range", (int)id);
    if ((size_t)id >= t->n_tokens) {
        size_t n = (size_t)id + 1, cap = t->tokens_cap;
        if (n > cap) {
            size_t c = cap ? cap : 1024;
            while (c < n) c *= 2;
            char **tk = realloc(t->tokens, c * sizeof *tk);
            if (tk) t->tokens = tk;
            uint32_t *tl = realloc(t->token_len, c * sizeof *tl);
            if (tl) t->token_len = tl;
            uint8_t *fl = realloc(t->flags, c);
            if (fl) t->flags = fl;
            if (!tk || !tl || !fl) return vm_errf(e, "tokenizer: out of memory");
            for (size_t i = cap; i < c; i++) { t->tokens[i] = NULL; t->token_len[i] = 0; t->flags[i] = 0; }
            t->tokens_cap = c;
        }
        t->n_tokens = n;
    }
    // tokens[] has capacity rounded up to a power of two; n_tokens is the logical size.
    char *c = malloc(len + 1);
    if (!c) return vm_errf(e, "tokenizer: out of memory");
    memcpy(c, s, len); c[len] = 0;
    free(t->tokens[id]);
    t->tokens[id] = c; t->token_len[id] = (uint32_t)len;
    return 0;
}

static uint64_t merge_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }
static uint32_t merge_slot(uint64_t key, uint32_t cap) {
    return (uint32_t)((key * 0x9e3779b97f4a7c15ull) >> 32) & (cap - 1);
}

static int merges_grow(vm_tokenizer *t) {
    uint32_t cap = t->merges_cap ? t->merges_cap * 2 : 4096;
    tok_merge_slot *m = malloc((size_t)cap * sizeof *m);
    if (!m) return -1;
    for (uint32_t i = 0; i < cap; i++) m[i].new_id = -1;
    for (uint32_t i = 0; i < t->merges_cap; i++) {
        if (t->merges[i].new_id < 0) continue;
        uint32_t j = merge_slot(t->merges[i].key, cap);
        while (m[j].new_id >= 0) j = (j + 1) & (cap - 1);
        m[j] = t->merges[i];
    }
    free(t->merges); t->merges = m; t->merges_cap = cap;
    return 0;
}

int tok_add_merge(vm_tokenizer *t, int32_t left, int32_t right, uint32_t rank, int32_t new_id,
                  vm_err *e) {
    if ((uint64_t)(t->merges_n + 1) * 2 > t->merges_cap && merges_grow(t))
        return vm_errf(e, "tokenizer: out of memory"); // load factor stays under 1/2
    uint64_t key = merge_key(left, right);
    uint32_t j = merge_slot(key, t->merges_cap);
    while (t->merges[j].new_id >= 0 && t->merges[j].key != key) j = (j + 1) & (t->merges_cap - 1);
    if (t->merges[j].new_id < 0) t->merges_n++;
    // A repeated pair keeps the later rank (HF builds its map from the list in order).
    t->merges[j] = (tok_merge_slot){key, rank, new_id};
    return 0;
}

static inline const tok_merge_slot *merge_find(const vm_tokenizer *t, int32_t a, int32_t b) {
    if (!t->merges_cap) return NULL;
    uint64_t key = merge_key(a, b);
    uint32_t j = merge_slot(key, t->merges_cap);
    for (;;) {
        const tok_merge_slot *s = &t->merges[j];
        if (s->new_id < 0) return NULL;
        if (s->key == key) return s;
        j = (j + 1) & (t->merges_cap - 1);
    }
}

int tok_add_added(vm_tokenizer *t, int32_t id, const char *s, size_t len, int special,
                  int lstrip, int rstrip, int single_word, int normalized, vm_err *e) {
    tok_added *a = realloc(t->added, (t->n_added + 1) * sizeof *a);
    if (!a) return vm_errf(e, "tokenizer: out of memory");
    t->added = a;
    char *c = malloc(len + 1);
    if (!c) return vm_errf(e, "tokenizer: out of memory");
    memcpy(c, s, len); c[len] = 0;
    t->added[t->n_added++] = (tok_added){id, c, len, special, lstrip, rstrip, single_word, normalized};
    return 0;
}

pcre2_code *tok_compile_regex(const char *pat, size_t len, vm_err *e) {
    int err; PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, len, PCRE2_UTF | PCRE2_UCP, &err, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        vm_errf(e, "tokenizer: bad regex at offset %zu: %s", (size_t)off, (char *)msg);
        return NULL;
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); // falls back to the interpreter if JIT is absent
    return re;
}

static int trie_add(tok_trie *tr, const char *s, size_t n, int32_t added_index) {
    if (!tr->n) {
        tr->cap = 64;
        tr->nodes = malloc(tr->cap * sizeof *tr->nodes);
        if (!tr->nodes) return -1;
        tr->nodes[0] = (struct tok_trie_node){-1, -1, 0, -1};
        tr->n = 1;
    }
    int32_t cur = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t b = (uint8_t)s[i];
        int32_t c = tr->nodes[cur].child0;
        while (c >= 0 && tr->nodes[c].byte != b) c = tr->nodes[c].next;
        if (c < 0) {
            if (tr->n == tr->cap) {
                void *p = realloc(tr->nodes, tr->cap * 2 * sizeof *tr->nodes);
                if (!p) return -1;
                tr->nodes = p; tr->cap *= 2;
            }
            c = (int32_t)tr->n++;
            tr->nodes[c] = (struct tok_trie_node){-1, tr->nodes[cur].child0, b, -1};
            tr->nodes[cur].child0 = c;
        }
        cur = c;
    }
    if (n) tr->nodes[cur].added = added_index; // a later duplicate wins
    return 0;
}

static int apply_normalizers(const vm_tokenizer *t, const char *s, size_t n, sbuf *out, vm_err *e);

int tok_finish(vm_tokenizer *t, vm_err *e) {
    sbuf raw = {0};
    // Model vocabulary map (added tokens that are not part of the model vocab are only in
    // added_map; tokens[] holds both).
    for (size_t id = 0; id < t->n_tokens; id++) {
        const char *s = t->tokens[id];
        if (!s || (t->flags[id] & TOKF_ADDED)) continue;
        if (t->byte_level) {
            if (bytelevel_unmap(s, t->token_len[id], &raw)) continue; // unreachable by input
            if (tok_map_put(&t->vocab, raw.p ? raw.p : "", raw.n, (int32_t)id)) goto oom;
            if (raw.n == 1) t->byte_ids[(uint8_t)raw.p[0]] = (int32_t)id;
        } else {
            if (tok_map_put(&t->vocab, s, t->token_len[id], (int32_t)id)) goto oom;
        }
    }
    // HF looks <0xXX> up with uppercase hex; prefer an exact "<0x%02X>" spelling.
    for (int b = 0; b < 256; b++) {
        char k[8]; snprintf(k, sizeof k, "<0x%02X>", b);
        int32_t id = -1;
        if (!t->byte_level) id = tok_map_get(&t->vocab, k, 6);
        else if (!bytelevel_unmap(k, 6, &raw)) id = tok_map_get(&t->vocab, raw.p, raw.n);
        t->fallback_ids[b] = id;
        if (id >= 0) t->flags[id] |= TOKF_BYTE;
    }
    // Added tokens: flags, lookup map, tries.
    for (size_t i = 0; i < t->n_added; i++) {
        tok_added *a = &t->added[i];
        if (a->id < 0 || (size_t)a->id >= t->n_tokens || !t->tokens[a->id])
            if (tok_set_token(t, a->id, a->content, a->len, e)) { free(raw.p); return -1; }
        t->flags[a->id] |= TOKF_ADDED | (a->special ? TOKF_SPECIAL : 0);
        if (tok_map_put(&t->added_map, a->content, a->len, a->id)) goto oom;
    }
    for (size_t i = 0; i < t->n_added; i++) {
        tok_added *a = &t->added[i];
        if (!a->normalized) {
            if (trie_add(&t->trie_raw, a->content, a->len, (int32_t)i)) goto oom;
        } else {
            sbuf nb = {0};
            if (apply_normalizers(t, a->content, a->len, &nb, e)) { free(nb.p); free(raw.p); return -1; }
            int r = trie_add(&t->trie_norm, nb.p ? nb.p : "", nb.n, (int32_t)i);
            free(nb.p);
            if (r) goto oom;
        }
    }
    free(raw.p);
    return 0;
oom:
    free(raw.p);
    return vm_errf(e, "tokenizer: out of memory");
}

int32_t tok_lookup_token(const vm_tokenizer *t, const char *s, size_t len) {
    int32_t id = tok_map_get(&t->added_map, s, len);
    if (id >= 0) return id;
    if (!t->byte_level) return tok_map_get(&t->vocab, s, len);
    sbuf raw = {0};
    if (!bytelevel_unmap(s, len, &raw)) id = tok_map_get(&t->vocab, raw.p ? raw.p : "", raw.n);
    free(raw.p);
    return id;
}

static void cache_clear_locked(tok_cache *c) {
    for (uint32_t i = 0; i < c->cap; i++) {
        free(c->slots[i].key); free(c->slots[i].ids);
        c->slots[i] = (struct tok_cache_entry){0};
    }
    c->n = 0;
}

void vm_tokenizer_free(vm_tokenizer *t) {
    if (!t) return;
    for (size_t i = 0; i < t->n_tokens; i++) free(t->tokens[i]);
    free(t->tokens); free(t->token_len); free(t->flags);
    tok_map_free(&t->vocab); tok_map_free(&t->added_map);
    free(t->merges);
    if (t->cache.slots) cache_clear_locked(&t->cache);
    free(t->cache.slots);
    pthread_mutex_destroy(&t->cache.lock);
    for (size_t i = 0; i < t->n_norms; i++) {
        free(t->norms[i].a); free(t->norms[i].b);
        if (t->norms[i].re) pcre2_code_free(t->norms[i].re);
    }
    free(t->norms);
    for (size_t i = 0; i < t->n_pres; i++) {
        if (t->pres[i].re) pcre2_code_free(t->pres[i].re);
        free(t->pres[i].lit);
    }
    free(t->pres);
    for (size_t i = 0; i < t->n_decs; i++) { free(t->decs[i].a); free(t->decs[i].b); }
    free(t->decs);
    for (size_t i = 0; i < t->n_added; i++) free(t->added[i].content);
    free(t->added);
    free(t->trie_raw.nodes); free(t->trie_norm.nodes);
    free(t->prefix_ids); free(t->suffix_ids); free(t->eos_ids);
    free(t);
}

void vm_tokenizer_free_buffer(void *p) { free(p); }

// ---------------------------------------------------------------------------------------
// Normalizers
// ---------------------------------------------------------------------------------------

static int replace_literal(const char *s, size_t n, const char *pat, size_t pn,
                           const char *with, size_t wn, sbuf *out) {
    out->n = 0;
    if (sbuf_reserve(out, n)) return -1;
    if (!pn) return sbuf_add(out, s, n);
    size_t i = 0, run = 0;
    while (i + pn <= n) {
        const char *hit = memmem(s + i, n - i, pat, pn);
        if (!hit) break;
        size_t at = (size_t)(hit - s);
        if (sbuf_add(out, s + run, at - run) || sbuf_add(out, with, wn)) return -1;
        i = run = at + pn;
    }
    return sbuf_add(out, s + run, n - run);
}

// Finds the next match of re in s[0..n) at or after *pos; returns 1 with [*ms,*me), 0 if
// none, -1 on error. Empty matches advance one character, as the Rust iterators do.
static int regex_next(pcre2_code *re, pcre2_match_data *md, const char *s, size_t n,
                      size_t *pos, size_t *ms, size_t *me, vm_err *e) {
    while (*pos <= n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, *pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) return 0;
        if (rc < 0 && rc != PCRE2_ERROR_PARTIAL) {
            if (rc == PCRE2_ERROR_JIT_STACKLIMIT || rc == PCRE2_ERROR_MATCHLIMIT ||
                rc == PCRE2_ERROR_HEAPLIMIT || rc == PCRE2_ERROR_NOMEMORY) {
                // Retry with the interpreter and a larger heap.
                pcre2_match_context *mc = pcre2_match_context_create(NULL);
                if (mc) pcre2_set_heap_limit(mc, 1u << 20); // in KiB: 1 GiB
                rc = pcre2_match(re, (PCRE2_SPTR)s, n, *pos,
                                 PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, mc);
                pcre2_match_context_free(mc);
                if (rc == PCRE2_ERROR_NOMATCH) return 0;
            }
            if (rc < 0) {
                PCRE2_UCHAR msg[128];
                pcre2_get_error_message(rc, msg, sizeof msg);
                return vm_errf(e, "tokenizer: regex match failed: %s", (char *)msg);
            }
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        *ms = ov[0]; *me = ov[1];
        if (*me > *ms) { *pos = *me; return 1; }
        // Empty match: skip it (it would give an empty piece) and move one character on.
        *pos = *me + (*me < n ? utf8_len_at(s + *me, n - *me) : 1);
    }
    return 0;
}

static int normalize_one(const tok_normalizer *nz, const char *s, size_t n, sbuf *out, vm_err *e) {
    out->n = 0;
    switch (nz->kind) {
    case NORM_NFC: case NORM_NFD: case NORM_NFKC: case NORM_NFKD: {
        if (!n) return sbuf_add(out, "", 0);
        utf8proc_option_t opt = UTF8PROC_STABLE;
        if (nz->kind == NORM_NFC || nz->kind == NORM_NFKC) opt |= UTF8PROC_COMPOSE;
        else opt |= UTF8PROC_DECOMPOSE;
        if (nz->kind == NORM_NFKC || nz->kind == NORM_NFKD) opt |= UTF8PROC_COMPAT;
        utf8proc_uint8_t *dst = NULL;
        utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &dst, opt);
        if (r < 0) return vm_errf(e, "tokenizer: normalization failed: %s", utf8proc_errmsg(r));
        int rc = sbuf_add(out, dst, (size_t)r);
        free(dst);
        return rc ? vm_errf(e, "tokenizer: out of memory") : 0;
    }
    case NORM_LOWERCASE:
        for (size_t i = 0; i < n;) {
            size_t l = utf8_len_at(s + i, n - i);
            uint32_t cp = utf8_cp_at(s + i, l);
            char b[8];
            if (cp == 0x130) { if (sbuf_add(out, "i\xcc\x87", 3)) return -1; }
            else if (sbuf_add(out, b, utf8_encode((uint32_t)utf8proc_tolower((utf8proc_int32_t)cp), b)))
                return vm_errf(e, "tokenizer: out of memory");
            i += l;
        }
        return sbuf_add(out, "", 0);
    case NORM_PREPEND:
        if (n && sbuf_add(out, nz->a, nz->a_len)) return vm_errf(e, "tokenizer: out of memory");
        return sbuf_add(out, s, n);
    case NORM_REPLACE:
        if (!nz->re) return replace_literal(s, n, nz->a, nz->a_len, nz->b, nz->b_len, out);
        else {
            pcre2_match_data *md = pcre2_match_data_create(1, NULL);
            if (!md) return vm_errf(e, "tokenizer: out of memory");
            size_t pos = 0, run = 0, ms, me; int r;
            while ((r = regex_next(nz->re, md, s, n, &pos, &ms, &me, e)) == 1) {
                sbuf_add(out, s + run, ms - run); sbuf_add(out, nz->b, nz->b_len);
                run = me;
            }
            pcre2_match_data_free(md);
            if (r < 0) return -1;
            return sbuf_add(out, s + run, n - run);
        }
    case NORM_STRIP: {
        size_t a = 0, b = n, st;
        if (nz->left)
            while (a < b) {
                size_t l = utf8_len_at(s + a, b - a);
                if (!is_white_space(utf8_cp_at(s + a, l))) break;
                a += l;
            }
        if (nz->right)
            while (b > a) {
                uint32_t cp = utf8_last_cp(s + a, b - a, &st);
                if (!is_white_space(cp)) break;
                b = a + st;
            }
        return sbuf_add(out, s + a, b - a);
    }
    }
    return vm_errf(e, "tokenizer: unknown normalizer");
}

static int apply_normalizers(const vm_tokenizer *t, const char *s, size_t n, sbuf *out, vm_err *e) {
    out->n = 0;
    if (sbuf_add(out, s, n)) return vm_errf(e, "tokenizer: out of memory");
    sbuf tmp = {0};
    for (size_t i = 0; i < t->n_norms; i++) {
        if (normalize_one(&t->norms[i], out->p, out->n, &tmp, e)) { free(tmp.p); return -1; }
        sbuf sw = *out; *out = tmp; tmp = sw;
    }
    free(tmp.p);
    return 0;
}

// ---------------------------------------------------------------------------------------
// Pieces: slices of text that move through the pre-tokenizers. New text (a Metaspace
// replacement, a ByteLevel prefix space) goes into chunks that never move.
// ---------------------------------------------------------------------------------------

typedef struct { const char *p; size_t n; int at_start; } piece;
typedef struct { piece *p; size_t n, cap; } piece_list;
typedef struct chunk { struct chunk *next; size_t used, cap; char data[]; } chunk;

typedef struct enc_ctx {
    const vm_tokenizer *t;
    pcre2_match_data *md;
    chunk *chunks;
    piece_list a, b;          // ping-pong lists for the pre-tokenizer chain
    // BPE scratch
    int32_t *sym_id, *sym_prev, *sym_next; uint32_t *sym_len; size_t sym_cap;
    struct heap_item { uint32_t rank, pos; int32_t new_id; } *heap; size_t heap_cap;
    ibuf word_ids;
    vm_err *e;
} enc_ctx;

static int pl_push(piece_list *l, const char *p, size_t n, int at_start) {
    if (!n) return 0; // empty pieces never reach the model
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        piece *q = realloc(l->p, cap * sizeof *q);
        if (!q) return -1;
        l->p = q; l->cap = cap;
    }
    l->p[l->n++] = (piece){p, n, at_start};
    return 0;
}

static char *ctx_alloc(enc_ctx *c, size_t n) {
    if (!c->chunks || c->chunks->cap - c->chunks->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        chunk *k = malloc(sizeof *k + cap);
        if (!k) return NULL;
        k->next = c->chunks; k->used = 0; k->cap = cap; c->chunks = k;
    }
    char *p = c->chunks->data + c->chunks->used;
    c->chunks->used += n;
    return p;
}

// Splits one piece by the matches of re (or a literal) per HF's SplitDelimiterBehavior.
static int split_piece(enc_ctx *c, const tok_pretok *pt, pcre2_code *re, const char *lit,
                       size_t lit_n, tok_split_behavior beh, int invert, const piece *in,
                       piece_list *out) {
    // Collect (start, end, is_match) covering the piece.
    struct seg { size_t a, b; int m; } stackbuf[64], *segs = stackbuf;
    size_t nseg = 0, segcap = 64, pos = 0, prev = 0, ms, me;
    int rc = 0;
    (void)pt;
    for (;;) {
        int r;
        if (re) r = regex_next(re, c->md, in->p, in->n, &pos, &ms, &me, c->e);
        else {
            const char *hit = lit_n && pos < in->n ? memmem(in->p + pos, in->n - pos, lit, lit_n) : NULL;
            r = hit ? 1 : 0;
            if (hit) { ms = (size_t)(hit - in->p); me = ms + lit_n; pos = me; }
        }
        if (r < 0) { rc = -1; goto done; }
        size_t need = nseg + 3;
        if (need > segcap) {
            size_t cap = segcap * 2;
            struct seg *q = segs == stackbuf ? malloc(cap * sizeof *q) : realloc(segs, cap * sizeof *q);
            if (!q) { rc = vm_errf(c->e, "tokenizer: out of memory"); goto done; }
            if (segs == stackbuf) memcpy(q, stackbuf, sizeof stackbuf);
            segs = q; segcap = cap;
        }
        if (!r) {
            if (prev < in->n) segs[nseg++] = (struct seg){prev, in->n, 0};
            break;
        }
        if (ms > prev) segs[nseg++] = (struct seg){prev, ms, 0};
        segs[nseg++] = (struct seg){ms, me, 1};
        prev = me;
    }
    if (invert) for (size_t i = 0; i < nseg; i++) segs[i].m = !segs[i].m;
    // Apply the behavior: produce (a, b, remove) in order.
    {
        size_t k = 0;
        int prev_match = 0;
        switch (beh) {
        case SPLIT_ISOLATED:
            for (size_t i = 0; i < nseg; i++) segs[i].m = 0;
            k = nseg; break;
        case SPLIT_REMOVED: k = nseg; break;
        case SPLIT_CONTIGUOUS:
            for (size_t i = 0; i < nseg; i++) {
                int m = segs[i].m;
                if (m == prev_match && k) segs[k - 1].b = segs[i].b;
                else segs[k++] = (struct seg){segs[i].a, segs[i].b, 0};
                prev_match = m;
            }
            break;
        case SPLIT_MERGED_PREV:
            for (size_t i = 0; i < nseg; i++) {
                int m = segs[i].m;
                if (m && !prev_match && k) segs[k - 1].b = segs[i].b;
                else segs[k++] = (struct seg){segs[i].a, segs[i].b, 0};
                prev_match = m;
            }
            break;
        case SPLIT_MERGED_NEXT: {
            // Walk backwards, merging a match into the piece after it; then reverse.
            size_t w = nseg;
            for (size_t i = nseg; i-- > 0;) {
                int m = segs[i].m;
                if (m && !prev_match && w < nseg) segs[w].a = segs[i].a;
                else segs[--w] = (struct seg){segs[i].a, segs[i].b, 0};
                prev_match = m;
            }
            memmove(segs, segs + w, (nseg - w) * sizeof *segs);
            k = nseg - w;
            break;
        }
        }
        for (size_t i = 0; i < k; i++) {
            if (segs[i].m) continue; // removed
            if (pl_push(out, in->p + segs[i].a, segs[i].b - segs[i].a, in->at_start && segs[i].a == 0)) {
                rc = vm_errf(c->e, "tokenizer: out of memory"); goto done;
            }
        }
    }
done:
    if (segs != stackbuf) free(segs);
    return rc;
}

static int pretok_step(enc_ctx *c, const tok_pretok *pt, const piece_list *in, piece_list *out) {
    out->n = 0;
    for (size_t i = 0; i < in->n; i++) {
        const piece *pc = &in->p[i];
        switch (pt->kind) {
        case PRE_SPLIT:
            if (split_piece(c, pt, pt->re, pt->lit, pt->lit_len, pt->behavior, pt->invert, pc, out)) return -1;
            break;
        case PRE_DIGITS: case PRE_WHITESPACE:
            if (split_piece(c, pt, pt->re, NULL, 0, pt->behavior, pt->invert, pc, out)) return -1;
            break;
        case PRE_WHITESPACE_SPLIT:
            if (split_piece(c, pt, pt->re, NULL, 0, SPLIT_REMOVED, 0, pc, out)) return -1;
            break;
        case PRE_BYTELEVEL: {
            piece p = *pc;
            if (pt->add_prefix_space && p.p[0] != ' ') {
                char *q = ctx_alloc(c, p.n + 1);
                if (!q) return vm_errf(c->e, "tokenizer: out of memory");
                q[0] = ' '; memcpy(q + 1, p.p, p.n);
                p.p = q; p.n++;
            }
            if (pt->re) { if (split_piece(c, pt, pt->re, NULL, 0, SPLIT_ISOLATED, 0, &p, out)) return -1; }
            else if (pl_push(out, p.p, p.n, p.at_start)) return vm_errf(c->e, "tokenizer: out of memory");
            break;
        }
        case PRE_METASPACE: {
            // Replace ' ' by the replacement, maybe prepend it, maybe split before each one.
            size_t spaces = 0;
            for (size_t j = 0; j < pc->n; j++) spaces += pc->p[j] == ' ';
            size_t cap = pc->n + spaces * pt->repl_len + pt->repl_len;
            char *q = ctx_alloc(c, cap);
            if (!q) return vm_errf(c->e, "tokenizer: out of memory");
            size_t w = 0;
            for (size_t j = 0; j < pc->n; j++) {
                if (pc->p[j] == ' ') { memcpy(q + w, pt->repl, pt->repl_len); w += pt->repl_len; }
                else q[w++] = pc->p[j];
            }
            int starts = w >= pt->repl_len && !memcmp(q, pt->repl, pt->repl_len);
            if (!starts && (pt->prepend == PREPEND_ALWAYS ||
                            (pt->prepend == PREPEND_FIRST && pc->at_start))) {
                memmove(q + pt->repl_len, q, w);
                memcpy(q, pt->repl, pt->repl_len);
                w += pt->repl_len;
            }
            piece p = {q, w, pc->at_start};
            if (pt->split) {
                if (split_piece(c, pt, NULL, pt->repl, pt->repl_len, SPLIT_MERGED_NEXT, 0, &p, out)) return -1;
            } else if (pl_push(out, q, w, pc->at_start)) return vm_errf(c->e, "tokenizer: out of memory");
            break;
        }
        }
    }
    return 0;
}

// ---------------------------------------------------------------------------------------
// BPE
// ---------------------------------------------------------------------------------------

static int heap_less(const struct heap_item *x, const struct heap_item *y) {
    return x->rank < y->rank || (x->rank == y->rank && x->pos < y->pos);
}
static void heap_push(struct heap_item *h, size_t *n, struct heap_item it) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(&it, &h[p])) break;
        h[i] = h[p]; i = p;
    }
    h[i] = it;
}
static struct heap_item heap_pop(struct heap_item *h, size_t *n) {
    struct heap_item top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const struct heap_item *best = &last;
        if (l < *n && heap_less(&h[l], best)) { m = l; best = &h[l]; }
        if (r < *n && heap_less(&h[r], best)) { m = r; }
        if (m == i) break;
        h[i] = h[m]; i = m;
    }
    if (*n) h[i] = last;
    return top;
}

static int ctx_reserve_syms(enc_ctx *c, size_t n) {
    if (n <= c->sym_cap) return 0;
    size_t cap = c->sym_cap ? c->sym_cap : 256;
    while (cap < n) cap *= 2;
    int32_t *a = realloc(c->sym_id, cap * sizeof *a); if (a) c->sym_id = a;
    int32_t *b = realloc(c->sym_prev, cap * sizeof *b); if (b) c->sym_prev = b;
    int32_t *d = realloc(c->sym_next, cap * sizeof *d); if (d) c->sym_next = d;
    uint32_t *l = realloc(c->sym_len, cap * sizeof *l); if (l) c->sym_len = l;
    struct heap_item *h = realloc(c->heap, cap * 2 * sizeof *h); if (h) c->heap = h;
    if (!a || !b || !d || !l || !h) return -1;
    c->sym_cap = cap; c->heap_cap = cap * 2;
    return 0;
}

// Merges one word (raw bytes when byte_level, UTF-8 text otherwise) into c->word_ids.
static int bpe_word(enc_ctx *c, const char *w, size_t n) {
    const vm_tokenizer *t = c->t;
    c->word_ids.n = 0;
    if (ctx_reserve_syms(c, n + 1)) return vm_errf(c->e, "tokenizer: out of memory");
    size_t ns = 0;
    int32_t unk_pending = -1; uint32_t unk_len = 0;
    for (size_t i = 0; i < n;) {
        size_t l = t->byte_level ? 1 : utf8_len_at(w + i, n - i);
        int32_t id = t->byte_level ? t->byte_ids[(uint8_t)w[i]] : tok_map_get(&t->vocab, w + i, l);
        if (id >= 0) {
            if (unk_pending >= 0) { c->sym_id[ns] = unk_pending; c->sym_len[ns++] = unk_len; unk_pending = -1; }
            c->sym_id[ns] = id; c->sym_len[ns++] = (uint32_t)l;
        } else {
            int done = 0;
            if (t->byte_fallback) {
                size_t k = 0;
                while (k < l && t->fallback_ids[(uint8_t)w[i + k]] >= 0) k++;
                if (k == l) {
                    for (k = 0; k < l; k++) { c->sym_id[ns] = t->fallback_ids[(uint8_t)w[i + k]]; c->sym_len[ns++] = 1; }
                    done = 1;
                }
            }
            if (!done && t->unk_id >= 0) {
                if (unk_pending >= 0 && t->fuse_unk) unk_len += (uint32_t)l;
                else {
                    if (unk_pending >= 0) { c->sym_id[ns] = unk_pending; c->sym_len[ns++] = unk_len; }
                    unk_pending = t->unk_id; unk_len = (uint32_t)l;
                }
            }
            // without unk or fallback the character is dropped, as HF does
        }
        i += l;
    }
    if (unk_pending >= 0) { c->sym_id[ns] = unk_pending; c->sym_len[ns++] = unk_len; }
    for (size_t i = 0; i < ns; i++) { c->sym_prev[i] = (int32_t)i - 1; c->sym_next[i] = i + 1 < ns ? (int32_t)i + 1 : -1; }

    size_t hn = 0;
    for (size_t i = 0; i + 1 < ns; i++) {
        const tok_merge_slot *m = merge_find(t, c->sym_id[i], c->sym_id[i + 1]);
        if (m) heap_push(c->heap, &hn, (struct heap_item){m->rank, (uint32_t)i, m->new_id});
    }
    while (hn) {
        struct heap_item top = heap_pop(c->heap, &hn);
        uint32_t p = top.pos;
        if (!c->sym_len[p]) continue;
        int32_t q = c->sym_next[p];
        if (q < 0) continue;
        const tok_merge_slot *m = merge_find(t, c->sym_id[p], c->sym_id[q]);
        if (!m || m->new_id != top.new_id) continue; // stale entry
        c->sym_id[p] = top.new_id;
        c->sym_len[p] += c->sym_len[q];
        c->sym_len[q] = 0;
        c->sym_next[p] = c->sym_next[q];
        if (c->sym_next[q] >= 0) c->sym_prev[c->sym_next[q]] = (int32_t)p;
        if (hn + 2 > c->heap_cap) { // cannot happen: at most one live entry per pair + stale
            size_t cap = c->heap_cap * 2;
            struct heap_item *h = realloc(c->heap, cap * sizeof *h);
            if (!h) return vm_errf(c->e, "tokenizer: out of memory");
            c->heap = h; c->heap_cap = cap;
        }
        int32_t pv = c->sym_prev[p];
        if (pv >= 0) {
            const tok_merge_slot *mm = merge_find(t, c->sym_id[pv], c->sym_id[p]);
            if (mm) heap_push(c->heap, &hn, (struct heap_item){mm->rank, (uint32_t)pv, mm->new_id});
        }
        int32_t nx = c->sym_next[p];
        if (nx >= 0) {
            const tok_merge_slot *mm = merge_find(t, c->sym_id[p], c->sym_id[nx]);
            if (mm) heap_push(c->heap, &hn, (struct heap_item){mm->rank, p, mm->new_id});
        }
    }
    for (int32_t i = ns ? 0 : -1; i >= 0; i = c->sym_next[i])
        if (ibuf_push(&c->word_ids, c->sym_id[i])) return vm_errf(c->e, "tokenizer: out of memory");
    return 0;
}

#define CACHE_CAP 16384u
#define CACHE_MAX_WORD 256u

// Looks the word up in the shared cache; on a miss merges it and stores the result.
static int bpe_cached(enc_ctx *c, const char *w, size_t n, ibuf *out) {
    const vm_tokenizer *t = c->t;
    tok_cache *cache = (tok_cache *)&t->cache; // the cache is the one mutable part
    if (t->ignore_merges) {
        int32_t id = tok_map_get(&t->vocab, w, n);
        if (id >= 0) return ibuf_push(out, id) ? vm_errf(c->e, "tokenizer: out of memory") : 0;
    }
    uint64_t h = 0;
    if (n < CACHE_MAX_WORD) {
        h = tok_hash(w, n);
        if (pthread_mutex_trylock(&cache->lock) == 0) {
            if (cache->slots) {
                uint32_t j = (uint32_t)h & (cache->cap - 1);
                for (uint32_t probe = 0; probe < 8 && cache->slots[j].key; probe++) {
                    struct tok_cache_entry *en = &cache->slots[j];
                    if (en->hash == h && en->klen == n && !memcmp(en->key, w, n)) {
                        int rc = ibuf_add(out, en->ids, en->n);
                        pthread_mutex_unlock(&cache->lock);
                        return rc ? vm_errf(c->e, "tokenizer: out of memory") : 0;
                    }
                    j = (j + 1) & (cache->cap - 1);
                }
            }
            pthread_mutex_unlock(&cache->lock);
        }
    }
    if (bpe_word(c, w, n)) return -1;
    if (ibuf_add(out, c->word_ids.p, c->word_ids.n)) return vm_errf(c->e, "tokenizer: out of memory");
    if (n < CACHE_MAX_WORD && pthread_mutex_trylock(&cache->lock) == 0) {
        if (!cache->slots) {
            cache->slots = calloc(CACHE_CAP, sizeof *cache->slots);
            cache->cap = cache->slots ? CACHE_CAP : 0;
        }
        if (cache->slots) {
            if (cache->n >= cache->cap / 2) cache_clear_locked(cache);
            uint32_t j = (uint32_t)h & (cache->cap - 1);
            uint32_t probe = 0;
            while (cache->slots[j].key && probe < 8) { j = (j + 1) & (cache->cap - 1); probe++; }
            if (!cache->slots[j].key) {
                char *k = malloc(n ? n : 1);
                int32_t *ids = malloc((c->word_ids.n ? c->word_ids.n : 1) * sizeof *ids);
                if (k && ids) {
                    memcpy(k, w, n);
                    if (c->word_ids.n) memcpy(ids, c->word_ids.p, c->word_ids.n * sizeof *ids);
                    cache->slots[j] = (struct tok_cache_entry){h, k, (uint32_t)n, (uint32_t)c->word_ids.n, ids};
                    cache->n++;
                } else { free(k); free(ids); }
            }
        }
        pthread_mutex_unlock(&cache->lock);
    }
    return 0;
}

// ---------------------------------------------------------------------------------------
// Added tokens
// ---------------------------------------------------------------------------------------

typedef struct { size_t a, b; int32_t added; } span; // added = index into t->added or -1
typedef struct { span *p; size_t n, cap; } span_list;

static int spans_push(span_list *l, size_t a, size_t b, int32_t added) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        span *q = realloc(l->p, cap * sizeof *q);
        if (!q) return -1;
        l->p = q; l->cap = cap;
    }
    l->p[l->n++] = (span){a, b, added};
    return 0;
}

// HF AddedVocabulary::find_matches: leftmost-longest non-overlapping matches, filtered by
// single_word, widened by lstrip/rstrip; the spans cover all of s.
static int find_added(const vm_tokenizer *t, const tok_trie *tr, const char *s, size_t n,
                      span_list *out) {
    out->n = 0;
    size_t start_offset = 0;
    if (tr->n > 1) {
        const struct tok_trie_node *nd = tr->nodes;
        size_t i = 0;
        while (i < n) {
            // longest match starting at i
            int32_t cur = 0, best = -1; size_t best_end = 0;
            for (size_t j = i; j < n; j++) {
                int32_t ch = nd[cur].child0;
                while (ch >= 0 && nd[ch].byte != (uint8_t)s[j]) ch = nd[ch].next;
                if (ch < 0) break;
                cur = ch;
                if (nd[cur].added >= 0) { best = nd[cur].added; best_end = j + 1; }
            }
            if (best < 0) { i++; continue; }
            size_t ms = i, me = best_end;
            i = me;
            const tok_added *a = &t->added[best];
            if (a->single_word) {
                size_t st;
                int start_space = ms == 0 || !is_word_char(utf8_last_cp(s, ms, &st));
                int stop_space = me == n || !is_word_char(utf8_cp_at(s + me, n - me));
                if (!start_space || !stop_space) continue;
            }
            if (a->lstrip) {
                size_t ns = ms, st;
                while (ns > 0 && is_white_space(utf8_last_cp(s, ns, &st))) ns = st;
                ms = ns > start_offset ? ns : start_offset;
            }
            if (a->rstrip)
                while (me < n) {
                    size_t l = utf8_len_at(s + me, n - me);
                    if (!is_white_space(utf8_cp_at(s + me, l))) break;
                    me += l;
                }
            if (start_offset < ms && spans_push(out, start_offset, ms, -1)) return -1;
            if (spans_push(out, ms, me, best)) return -1;
            start_offset = me;
            if (i < me) i = me;
        }
    }
    if (start_offset < n || n == 0) if (spans_push(out, start_offset, n, -1)) return -1;
    return 0;
}

// ---------------------------------------------------------------------------------------
// Encode
// ---------------------------------------------------------------------------------------

static int validate_utf8(const char *s, size_t n, vm_err *e) {
    for (size_t i = 0; i < n;) {
        if ((uint8_t)s[i] < 0x80) { i++; continue; }
        uint32_t cp; int k = utf8_step((const uint8_t *)s + i, n - i, &cp, NULL);
        if (k <= 0) return vm_errf(e, "tokenizer: invalid UTF-8 at byte offset %zu", i);
        i += (size_t)k;
    }
    return 0;
}

// Pre-tokenizes and merges one piece of normalized text.
static int encode_piece(enc_ctx *c, const char *s, size_t n, int at_start, ibuf *out) {
    const vm_tokenizer *t = c->t;
    c->a.n = 0;
    if (pl_push(&c->a, s, n, at_start)) return vm_errf(c->e, "tokenizer: out of memory");
    piece_list *cur = &c->a, *nxt = &c->b;
    for (size_t i = 0; i < t->n_pres; i++) {
        if (pretok_step(c, &t->pres[i], cur, nxt)) return -1;
        piece_list *sw = cur; cur = nxt; nxt = sw;
    }
    for (size_t i = 0; i < cur->n; i++)
        if (bpe_cached(c, cur->p[i].p, cur->p[i].n, out)) return -1;
    return 0;
}

static int encode_impl(const vm_tokenizer *t, const char *text, size_t len, int add_special,
                       ibuf *out, vm_err *e) {
    if (!text && len) return vm_errf(e, "tokenizer: NULL text");
    if (validate_utf8(text, len, e)) return -1;
    enc_ctx c = {.t = t, .e = e};
    span_list raw = {0}, nspans = {0};
    sbuf norm = {0};
    int rc = -1;
    c.md = pcre2_match_data_create(4, NULL);
    if (!c.md) { vm_errf(e, "tokenizer: out of memory"); goto done; }
    if (add_special && ibuf_add(out, t->prefix_ids, t->n_prefix)) goto oom;
    if (find_added(t, &t->trie_raw, text ? text : "", len, &raw)) goto oom;
    for (size_t i = 0; i < raw.n; i++) {
        span sp = raw.p[i];
        if (sp.added >= 0) { if (ibuf_push(out, t->added[sp.added].id)) goto oom; continue; }
        if (sp.b == sp.a) continue;
        if (apply_normalizers(t, text + sp.a, sp.b - sp.a, &norm, e)) goto done;
        if (!norm.n) continue;
        if (find_added(t, &t->trie_norm, norm.p, norm.n, &nspans)) goto oom;
        for (size_t j = 0; j < nspans.n; j++) {
            span q = nspans.p[j];
            if (q.added >= 0) { if (ibuf_push(out, t->added[q.added].id)) goto oom; continue; }
            if (q.b == q.a) continue;
            if (encode_piece(&c, norm.p + q.a, q.b - q.a, sp.a == 0 && q.a == 0, out)) goto done;
        }
        // reset the chunk arena between segments
        while (c.chunks && c.chunks->next) { chunk *k = c.chunks; c.chunks = k->next; free(k); }
        if (c.chunks) c.chunks->used = 0;
    }
    if (add_special && ibuf_add(out, t->suffix_ids, t->n_suffix)) goto oom;
    rc = 0;
    goto done;
oom:
    vm_errf(e, "tokenizer: out of memory");
done:
    while (c.chunks) { chunk *k = c.chunks; c.chunks = k->next; free(k); }
    free(c.a.p); free(c.b.p);
    free(c.sym_id); free(c.sym_prev); free(c.sym_next); free(c.sym_len); free(c.heap);
    free(c.word_ids.p);
    if (c.md) pcre2_match_data_free(c.md);
    free(raw.p); free(nspans.p); free(norm.p);
    return rc;
}

int vm_tokenizer_encode(const vm_tokenizer *t, const char *text, size_t len,
                        int add_special_tokens, int32_t **ids, size_t *n, vm_err *e) {
    ibuf out = {0};
    *ids = NULL; *n = 0;
    if (encode_impl(t, text, len, add_special_tokens, &out, e)) { free(out.p); return -1; }
    if (!out.p) out.p = malloc(sizeof(int32_t)); // a valid pointer even for no ids
    if (!out.p) return vm_errf(e, "tokenizer: out of memory");
    *ids = out.p; *n = out.n;
    return 0;
}

long vm_tokenizer_encode_into(const vm_tokenizer *t, const char *text, size_t len,
                              int add_special_tokens, int32_t *out, size_t cap,
                              char *errbuf, size_t errcap) {
    vm_err e = {{0}};
    int32_t *ids; size_t n;
    if (vm_tokenizer_encode(t, text, len, add_special_tokens, &ids, &n, &e)) {
        if (errbuf && errcap) snprintf(errbuf, errcap, "%s", e.msg);
        return -1;
    }
    memcpy(out, ids, VM_MIN(n, cap) * sizeof *ids);
    free(ids);
    return (long)n;
}

// ---------------------------------------------------------------------------------------
// Decode: tokens -> the decoder chain -> one string
// ---------------------------------------------------------------------------------------

typedef struct { sbuf *s; size_t n, cap; } str_list; // list of owned strings

static int sl_push(str_list *l, const char *p, size_t n) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        sbuf *q = realloc(l->s, cap * sizeof *q);
        if (!q) return -1;
        l->s = q; l->cap = cap;
    }
    sbuf b = {0};
    if (sbuf_add(&b, p, n)) return -1;
    l->s[l->n++] = b;
    return 0;
}
static void sl_free(str_list *l) {
    for (size_t i = 0; i < l->n; i++) free(l->s[i].p);
    free(l->s); memset(l, 0, sizeof *l);
}

static int parse_byte_token(const char *s, size_t n, uint8_t *b) {
    if (n != 6 || memcmp(s, "<0x", 3) || s[5] != '>') return 0;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char ch = s[i]; int d;
        if (ch >= '0' && ch <= '9') d = ch - '0';
        else if (ch >= 'a' && ch <= 'f') d = ch - 'a' + 10;
        else if (ch >= 'A' && ch <= 'F') d = ch - 'A' + 10;
        else return 0;
        v = v * 16 + d;
    }
    *b = (uint8_t)v; return 1;
}

// Runs one decoder over the list in place. *tail_incomplete: the text ends inside a
// UTF-8 sequence that more bytes could complete (for streaming).
static int decode_step(const tok_decoder *d, str_list *l, int *tail_incomplete) {
    str_list out = {0};
    sbuf tmp = {0};
    int rc = -1;
    switch (d->kind) {
    case DEC_BYTELEVEL: {
        sbuf bytes = {0};
        for (size_t i = 0; i < l->n; i++) {
            const char *s = l->s[i].p; size_t n = l->s[i].n;
            size_t mark = bytes.n, j = 0;
            for (; j < n;) {
                uint32_t cp; int k = utf8_step((const uint8_t *)s + j, n - j, &cp, NULL);
                int b = k > 0 ? bytelevel_byte(cp) : -1;
                if (b < 0) break;
                uint8_t c = (uint8_t)b;
                if (sbuf_add(&bytes, &c, 1)) { free(bytes.p); goto done; }
                j += (size_t)k;
            }
            if (j < n) { bytes.n = mark; if (sbuf_add(&bytes, s, n)) { free(bytes.p); goto done; } }
        }
        int inc = 0;
        if (utf8_lossy_append(&tmp, (const uint8_t *)(bytes.p ? bytes.p : ""), bytes.n, &inc)) { free(bytes.p); goto done; }
        free(bytes.p);
        if (tail_incomplete) *tail_incomplete = inc;
        if (sl_push(&out, tmp.p ? tmp.p : "", tmp.n)) goto done;
        break;
    }
    case DEC_METASPACE:
        for (size_t i = 0; i < l->n; i++) {
            tmp.n = 0;
            const char *s = l->s[i].p; size_t n = l->s[i].n;
            for (size_t j = 0; j < n;) {
                if (d->a_len && j + d->a_len <= n && !memcmp(s + j, d->a, d->a_len)) {
                    if (!(i == 0 && d->prepend != PREPEND_NEVER) && sbuf_add(&tmp, " ", 1)) goto done;
                    j += d->a_len;
                } else {
                    size_t k = utf8_len_at(s + j, n - j);
                    if (sbuf_add(&tmp, s + j, k)) goto done;
                    j += k;
                }
            }
            if (sl_push(&out, tmp.p ? tmp.p : "", tmp.n)) goto done;
        }
        break;
    case DEC_REPLACE:
        for (size_t i = 0; i < l->n; i++) {
            if (replace_literal(l->s[i].p, l->s[i].n, d->a, d->a_len, d->b, d->b_len, &tmp)) goto done;
            if (sl_push(&out, tmp.p ? tmp.p : "", tmp.n)) goto done;
        }
        break;
    case DEC_BYTEFALLBACK: {
        sbuf run = {0};
        for (size_t i = 0; i <= l->n; i++) {
            uint8_t b;
            if (i < l->n && parse_byte_token(l->s[i].p, l->s[i].n, &b)) {
                if (sbuf_add(&run, &b, 1)) { free(run.p); goto done; }
                continue;
            }
            if (run.n) {
                size_t j = 0; int inc = 0, bad = 0;
                while (j < run.n) {
                    uint32_t cp; int k = utf8_step((uint8_t *)run.p + j, run.n - j, &cp, &inc);
                    if (k <= 0) { bad = 1; break; }
                    j += (size_t)k;
                }
                if (!bad) { if (sl_push(&out, run.p, run.n)) { free(run.p); goto done; } }
                else {
                    if (i == l->n && inc && tail_incomplete) *tail_incomplete = 1;
                    for (size_t k = 0; k < run.n; k++)
                        if (sl_push(&out, "\xef\xbf\xbd", 3)) { free(run.p); goto done; }
                }
                run.n = 0;
            }
            if (i < l->n && sl_push(&out, l->s[i].p, l->s[i].n)) { free(run.p); goto done; }
        }
        free(run.p);
        break;
    }
    case DEC_FUSE:
        for (size_t i = 0; i < l->n; i++) if (sbuf_add(&tmp, l->s[i].p, l->s[i].n)) goto done;
        if (sl_push(&out, tmp.p ? tmp.p : "", tmp.n)) goto done;
        break;
    case DEC_STRIP:
        for (size_t i = 0; i < l->n; i++) {
            const char *s = l->s[i].p; size_t n = l->s[i].n, a = 0, b = n;
            for (int k = 0; k < d->start && a < n; k++) {
                if (n - a >= d->a_len && !memcmp(s + a, d->a, d->a_len)) a += d->a_len; else break;
            }
            for (int k = 0; k < d->stop && b > a; k++) {
                if (b - a >= d->a_len && !memcmp(s + b - d->a_len, d->a, d->a_len)) b -= d->a_len; else break;
            }
            if (sl_push(&out, s + a, b - a)) goto done;
        }
        break;
    }
    sl_free(l);
    *l = out; out = (str_list){0};
    rc = 0;
done:
    sl_free(&out); free(tmp.p);
    return rc;
}

static char *decode_impl(const vm_tokenizer *t, const int32_t *ids, size_t n, int skip_special,
                         size_t *out_len, int *tail_incomplete, vm_err *e) {
    str_list l = {0};
    sbuf res = {0};
    if (tail_incomplete) *tail_incomplete = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || (size_t)id >= t->n_tokens || !t->tokens[id]) {
            sl_free(&l);
            vm_errf(e, "tokenizer: token id %d out of range (vocab size %zu)", (int)id, t->n_tokens);
            return NULL;
        }
        if (skip_special && (t->flags[id] & TOKF_SPECIAL)) continue;
        if (sl_push(&l, t->tokens[id], t->token_len[id])) goto oom;
    }
    for (size_t i = 0; i < t->n_decs; i++) {
        int inc = 0;
        if (decode_step(&t->decs[i], &l, &inc)) goto oom;
        if (tail_incomplete && inc) *tail_incomplete = 1;
    }
    for (size_t i = 0; i < l.n; i++) {
        if (!t->has_decoder && i && sbuf_add(&res, " ", 1)) goto oom;
        if (sbuf_add(&res, l.s[i].p, l.s[i].n)) goto oom;
    }
    if (!res.p && sbuf_add(&res, "", 0)) goto oom;
    sl_free(&l);
    if (out_len) *out_len = res.n;
    return res.p;
oom:
    sl_free(&l); free(res.p);
    vm_errf(e, "tokenizer: out of memory");
    return NULL;
}

char *vm_tokenizer_decode(const vm_tokenizer *t, const int32_t *ids, size_t n,
                          int skip_special_tokens, size_t *out_len, vm_err *e) {
    return decode_impl(t, ids, n, skip_special_tokens, out_len, NULL, e);
}

// ---------------------------------------------------------------------------------------
// Incremental detokenization: decode a short window of ids and emit what the newest id
// added. The window starts where the previous emitted text ended at a character
// boundary (prefix) and keeps the ids whose text was already emitted (read) so decoders
// that look at the first token (Strip, Metaspace) treat both decodes alike.
// ---------------------------------------------------------------------------------------

struct vm_detok_state {
    const vm_tokenizer *t;
    int skip_special;
    int32_t *ids; size_t n, cap; // ids[0..n): the window
    size_t read;                 // ids[0..read) produced the text already emitted
    char *prefix_text; size_t prefix_len; // decode(ids[0..read))
    char *out;                   // last returned text
};

vm_detok_state *vm_detok_create(const vm_tokenizer *t, int skip_special_tokens, vm_err *e) {
    vm_detok_state *s = calloc(1, sizeof *s);
    if (!s) { vm_errf(e, "tokenizer: out of memory"); return NULL; }
    s->t = t; s->skip_special = skip_special_tokens;
    return s;
}

void vm_detok_free(vm_detok_state *s) {
    if (!s) return;
    free(s->ids); free(s->prefix_text); free(s->out); free(s);
}

static int detok_emit(vm_detok_state *s, int final, const char **text, size_t *len, vm_err *e) {
    size_t nl; int inc;
    free(s->out); s->out = NULL;
    *text = ""; *len = 0;
    char *full = decode_impl(s->t, s->ids, s->n, 0, &nl, &inc, e);
    if (!full) return -1;
    if (inc && !final) { free(full); return 0; } // hold the incomplete character back
    size_t common = 0; // normally the old text is a prefix of the new one
    while (common < s->prefix_len && common < nl && s->prefix_text[common] == full[common]) common++;
    while (common > 0 && ((uint8_t)full[common] & 0xc0) == 0x80) common--;
    s->out = malloc(nl - common + 1);
    if (!s->out) { free(full); return vm_errf(e, "tokenizer: out of memory"); }
    memcpy(s->out, full + common, nl - common);
    s->out[nl - common] = 0;
    *text = s->out; *len = nl - common;
    // New window: drop the ids before `read`; the ids just emitted become the prefix.
    size_t drop = s->read;
    memmove(s->ids, s->ids + drop, (s->n - drop) * sizeof *s->ids);
    s->n -= drop; s->read = s->n;
    free(s->prefix_text);
    s->prefix_text = decode_impl(s->t, s->ids, s->n, 0, &s->prefix_len, NULL, e);
    free(full);
    return s->prefix_text ? 0 : -1;
}

int vm_detok_feed(vm_detok_state *s, int32_t id, const char **text, size_t *len, vm_err *e) {
    *text = ""; *len = 0;
    const vm_tokenizer *t = s->t;
    if (id < 0 || (size_t)id >= t->n_tokens || !t->tokens[id])
        return vm_errf(e, "tokenizer: token id %d out of range (vocab size %zu)", (int)id, t->n_tokens);
    if (s->skip_special && (t->flags[id] & TOKF_SPECIAL)) return 0;
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        int32_t *p = realloc(s->ids, cap * sizeof *p);
        if (!p) return vm_errf(e, "tokenizer: out of memory");
        s->ids = p; s->cap = cap;
    }
    s->ids[s->n++] = id;
    return detok_emit(s, 0, text, len, e);
}

int vm_detok_flush(vm_detok_state *s, const char **text, size_t *len, vm_err *e) {
    *text = ""; *len = 0;
    if (s->n == s->read) return 0;
    return detok_emit(s, 1, text, len, e);
}

// ---------------------------------------------------------------------------------------
// Accessors
// ---------------------------------------------------------------------------------------

size_t vm_tokenizer_vocab_size(const vm_tokenizer *t) { return t->n_tokens; }
int32_t vm_tokenizer_bos_id(const vm_tokenizer *t) { return t->bos_id; }
int32_t vm_tokenizer_eos_id(const vm_tokenizer *t) { return t->n_eos ? t->eos_ids[0] : -1; }
size_t vm_tokenizer_eos_ids(const vm_tokenizer *t, const int32_t **ids) {
    if (ids) *ids = t->eos_ids;
    return t->n_eos;
}
int32_t vm_tokenizer_pad_id(const vm_tokenizer *t) { return t->pad_id; }
int32_t vm_tokenizer_unk_id(const vm_tokenizer *t) { return t->unk_id; }
int vm_tokenizer_add_bos(const vm_tokenizer *t) {
    return t->bos_id >= 0 && t->n_prefix && t->prefix_ids[0] == t->bos_id;
}
int vm_tokenizer_add_eos(const vm_tokenizer *t) {
    for (size_t i = 0; i < t->n_eos; i++)
        if (t->n_suffix && t->suffix_ids[t->n_suffix - 1] == t->eos_ids[i]) return 1;
    return 0;
}
const char *vm_tokenizer_id_to_token(const vm_tokenizer *t, int32_t id, size_t *len) {
    if (id < 0 || (size_t)id >= t->n_tokens || !t->tokens[id]) return NULL;
    if (len) *len = t->token_len[id];
    return t->tokens[id];
}
int32_t vm_tokenizer_token_to_id(const vm_tokenizer *t, const char *tok, size_t len) {
    return tok_lookup_token(t, tok, len);
}
int vm_tokenizer_is_special(const vm_tokenizer *t, int32_t id) {
    if (id < 0 || (size_t)id >= t->n_tokens) return 0;
    return (t->flags[id] & (TOKF_SPECIAL | TOKF_CONTROL)) != 0;
}
