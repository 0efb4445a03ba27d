// tokenizer_internal.h - the tokenizer's data model, shared by tokenizer.c (encode/decode),
// tokenizer_json.c (tokenizer.json loader) and tokenizer_gguf.c (GGUF vocabularies).
#ifndef VM_TOKENIZER_INTERNAL_H
#define VM_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>
#include "tokenizer.h"

// ---- byte-string -> int32 hash map (keys copied into the map's own arena) ----
typedef struct tok_map {
    uint32_t *slots;      // index+1 into entries, 0 = empty
    uint32_t cap;         // power of two
    struct tok_map_entry { uint64_t hash; uint32_t off, len; int32_t val; } *entries;
    uint32_t n, entries_cap;
    char *arena; size_t arena_len, arena_cap;
} tok_map;

uint64_t tok_hash(const void *p, size_t n);
int tok_map_put(tok_map *m, const char *k, size_t n, int32_t val); // overwrites; -1 on OOM
int32_t tok_map_get(const tok_map *m, const char *k, size_t n);   // -1 if absent
void tok_map_free(tok_map *m);

// ---- pipeline pieces ----
typedef enum { NORM_NFC, NORM_NFD, NORM_NFKC, NORM_NFKD, NORM_LOWERCASE, NORM_PREPEND,
               NORM_REPLACE, NORM_STRIP } tok_norm_kind;
typedef struct tok_normalizer {
    tok_norm_kind kind;
    char *a; size_t a_len;        // Prepend: text; Replace: literal pattern (if !re)
    char *b; size_t b_len;        // Replace: content
    pcre2_code *re;               // Replace with a Regex pattern
    int left, right;              // Strip
} tok_normalizer;

typedef enum { SPLIT_REMOVED, SPLIT_ISOLATED, SPLIT_MERGED_PREV, SPLIT_MERGED_NEXT,
               SPLIT_CONTIGUOUS } tok_split_behavior;
typedef enum { PRE_SPLIT, PRE_BYTELEVEL, PRE_METASPACE, PRE_DIGITS, PRE_WHITESPACE,
               PRE_WHITESPACE_SPLIT } tok_pre_kind;
typedef enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER } tok_prepend_scheme;
typedef struct tok_pretok {
    tok_pre_kind kind;
    pcre2_code *re;               // Split / ByteLevel(use_regex) / Digits / Whitespace
    char *lit; size_t lit_len;    // Split with a String pattern (matched literally)
    tok_split_behavior behavior;
    int invert;
    int add_prefix_space;         // ByteLevel
    char repl[8]; size_t repl_len; // Metaspace replacement (UTF-8)
    tok_prepend_scheme prepend;   // Metaspace
    int split;                    // Metaspace
} tok_pretok;

typedef enum { DEC_BYTELEVEL, DEC_METASPACE, DEC_REPLACE, DEC_BYTEFALLBACK, DEC_FUSE,
               DEC_STRIP } tok_dec_kind;
typedef struct tok_decoder {
    tok_dec_kind kind;
    char *a; size_t a_len;        // Replace pattern; Metaspace replacement; Strip content
    char *b; size_t b_len;        // Replace content
    tok_prepend_scheme prepend;   // Metaspace
    int start, stop;              // Strip
} tok_decoder;

typedef struct tok_added {
    int32_t id;
    char *content; size_t len;    // normalized content when `normalized` (matched after normalizing)
    int special, lstrip, rstrip, single_word, normalized;
} tok_added;

// Byte trie over added-token contents for leftmost-longest matching.
typedef struct tok_trie {
    struct tok_trie_node { int32_t child0; int32_t next; uint8_t byte; int32_t added; } *nodes;
    uint32_t n, cap;
} tok_trie;

typedef struct tok_merge_slot { uint64_t key; uint32_t rank; int32_t new_id; } tok_merge_slot;

typedef struct tok_cache {
    pthread_mutex_t lock;
    struct tok_cache_entry { uint64_t hash; char *key; uint32_t klen, n; int32_t *ids; } *slots;
    uint32_t cap, n;
} tok_cache;

struct vm_tokenizer {
    // vocabulary: id -> token text as stored (UTF-8); holes are NULL
    char **tokens; uint32_t *token_len; size_t n_tokens, tokens_cap;
    uint8_t *flags;               // per id: TOKF_*
    tok_map vocab;                // model vocab: key (raw bytes when byte_level) -> id
    tok_map added_map;            // added token content (as stored) -> id
    // BPE model
    int byte_level;               // units are bytes; vocab keys un-mapped from ByteLevel chars
    int ignore_merges, byte_fallback, fuse_unk;
    int32_t unk_id;
    int32_t byte_ids[256];        // single-unit lookups when byte_level; <0xXX> ids otherwise
    int32_t fallback_ids[256];    // <0xXX> tokens (-1 if missing)
    tok_merge_slot *merges; uint32_t merges_cap, merges_n; // open addressing on (left<<32|right)
    tok_cache cache;
    // pipeline
    tok_normalizer *norms; size_t n_norms;
    tok_pretok *pres; size_t n_pres;
    tok_decoder *decs; size_t n_decs;
    int has_decoder;
    tok_added *added; size_t n_added;
    tok_trie trie_raw, trie_norm; // non-normalized / normalized added tokens
    // post-processing
    int32_t *prefix_ids; size_t n_prefix; // added before the sequence when add_special_tokens
    int32_t *suffix_ids; size_t n_suffix;
    // special ids
    int32_t bos_id, pad_id;
    int32_t *eos_ids; size_t n_eos;
};

enum { TOKF_SPECIAL = 1, TOKF_ADDED = 2, TOKF_BYTE = 4, TOKF_CONTROL = 8 };

// Builders used by the loaders (tokenizer.c).
vm_tokenizer *tok_new(void);
int tok_set_token(vm_tokenizer *t, int32_t id, const char *s, size_t len, vm_err *e);
int tok_add_merge(vm_tokenizer *t, int32_t left, int32_t right, uint32_t rank, int32_t new_id,
                  vm_err *e);
int tok_add_added(vm_tokenizer *t, int32_t id, const char *s, size_t len, int special,
                  int lstrip, int rstrip, int single_word, int normalized, vm_err *e);
// After tokens/merges/added/pipeline are set: builds the vocab map, byte tables, tries.
int tok_finish(vm_tokenizer *t, vm_err *e);
pcre2_code *tok_compile_regex(const char *pat, size_t len, vm_err *e);
int32_t tok_lookup_token(const vm_tokenizer *t, const char *s, size_t len); // added, then vocab

extern const char *const TOK_GPT2_PATTERN, *const TOK_LLAMA3_PATTERN, *const TOK_QWEN2_PATTERN;

#endif
