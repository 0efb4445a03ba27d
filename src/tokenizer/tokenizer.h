// tokenizer.h - Hugging Face compatible tokenizers: tokenizer.json (BPE, byte-level or
// SentencePiece-style) and GGUF vocabularies ("gpt2" and "llama" models).
//
// Encoding matches HF `tokenizers` (0.21) id for id: added tokens are split out first
// (special/lstrip/rstrip/single_word/normalized), then normalizers (NFC/NFD/NFKC/NFKD,
// Prepend, Replace, Lowercase, Strip, Sequence), pre-tokenizers (ByteLevel, Split with the
// file's own regex via PCRE2, Metaspace, Digits, Whitespace, WhitespaceSplit, Sequence),
// the BPE model (merge ranks through a priority queue, ignore_merges, byte_fallback,
// unk/fuse_unk, a word cache) and the post-processor (TemplateProcessing, Roberta/Bert,
// ByteLevel, Sequence). Decoding runs the file's decoder chain (ByteLevel, Metaspace,
// Replace, ByteFallback, Fuse, Strip, Sequence).
//
// A vm_tokenizer is immutable after loading and safe to use from many threads at once.
#ifndef VM_TOKENIZER_H
#define VM_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>
#include "../common/common.h"

typedef struct vm_tokenizer vm_tokenizer;
typedef struct vm_gguf vm_gguf; // src/loader/weights.h

// tokenizer.json plus, optionally, tokenizer_config.json (bos_token, eos_token,
// pad_token, add_bos_token, add_eos_token). When a config path is given,
// generation_config.json beside it (if present) supplies bos/eos ids too (eos may be a list).
vm_tokenizer *vm_tokenizer_load_json(const char *tokenizer_json_path,
                                     const char *tokenizer_config_path_or_NULL, vm_err *e);
// A model directory: dir/tokenizer.json (+ tokenizer_config.json, generation_config.json).
vm_tokenizer *vm_tokenizer_load_dir(const char *dir, vm_err *e);
// From a tokenizer.json held in memory (no config).
vm_tokenizer *vm_tokenizer_from_json_string(const char *json, size_t len, vm_err *e);
// From GGUF metadata: tokenizer.ggml.model "gpt2" (tokens + merges, byte-level, pre-tokenizer
// from tokenizer.ggml.pre) or "llama" (SentencePiece: tokens + scores + token_type).
vm_tokenizer *vm_tokenizer_from_gguf(const vm_gguf *g, vm_err *e);
void vm_tokenizer_free(vm_tokenizer *t);

// Encodes len bytes of UTF-8 text (need not be NUL-terminated; NUL bytes are text).
// *ids is malloc'd (free with free() or vm_tokenizer_free_buffer); *n its length.
// Invalid UTF-8 fails with a message naming the byte offset. Returns 0 / -1.
int vm_tokenizer_encode(const vm_tokenizer *t, const char *text, size_t len,
                        int add_special_tokens, int32_t **ids, size_t *n, vm_err *e);
// Decodes ids to a malloc'd NUL-terminated UTF-8 string (*out_len, if non-NULL, gets its
// length). Ids out of range fail. skip_special_tokens drops special added tokens.
char *vm_tokenizer_decode(const vm_tokenizer *t, const int32_t *ids, size_t n,
                          int skip_special_tokens, size_t *out_len, vm_err *e);
void vm_tokenizer_free_buffer(void *p);

size_t vm_tokenizer_vocab_size(const vm_tokenizer *t); // largest id + 1 (added tokens included)
int32_t vm_tokenizer_bos_id(const vm_tokenizer *t);    // -1 if none
int32_t vm_tokenizer_eos_id(const vm_tokenizer *t);    // the first eos id; -1 if none
size_t vm_tokenizer_eos_ids(const vm_tokenizer *t, const int32_t **ids); // all eos ids
int32_t vm_tokenizer_pad_id(const vm_tokenizer *t);    // -1 if none
int32_t vm_tokenizer_unk_id(const vm_tokenizer *t);    // -1 if none
int vm_tokenizer_add_bos(const vm_tokenizer *t); // encode(add_special_tokens=1) puts bos first
int vm_tokenizer_add_eos(const vm_tokenizer *t); // ... and eos last
// Token text as stored in the vocabulary (e.g. "Ġhello", "▁the", "<0x0A>"); NULL if unknown.
const char *vm_tokenizer_id_to_token(const vm_tokenizer *t, int32_t id, size_t *len);
int32_t vm_tokenizer_token_to_id(const vm_tokenizer *t, const char *tok, size_t len); // -1 if none
int vm_tokenizer_is_special(const vm_tokenizer *t, int32_t id); // special added/control token

// Incremental detokenization for streaming. Feed ids one at a time; each call yields the
// text newly completed by that id (possibly empty). Never yields part of a UTF-8 sequence:
// bytes are held back until their character completes. Output equals
// vm_tokenizer_decode of all ids fed so far (the text of feeds + flush concatenated).
typedef struct vm_detok_state vm_detok_state;
vm_detok_state *vm_detok_create(const vm_tokenizer *t, int skip_special_tokens, vm_err *e);
// *text stays valid until the next call on s. Returns 0 / -1 (bad id).
int vm_detok_feed(vm_detok_state *s, int32_t id, const char **text, size_t *len, vm_err *e);
// At end of stream: emits what is held back (an incomplete sequence becomes U+FFFD).
int vm_detok_flush(vm_detok_state *s, const char **text, size_t *len, vm_err *e);
void vm_detok_free(vm_detok_state *s);

// ctypes-friendly wrapper: encodes into caller memory. Returns the number of ids
// (which may exceed cap: then only cap were written), or -1 with errbuf filled.
long vm_tokenizer_encode_into(const vm_tokenizer *t, const char *text, size_t len,
                              int add_special_tokens, int32_t *out, size_t cap,
                              char *errbuf, size_t errcap);

#endif
