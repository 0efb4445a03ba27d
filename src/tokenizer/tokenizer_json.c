// tokenizer_json.c - loads a Hugging Face tokenizer.json (+ tokenizer_config.json,
// generation_config.json) into a vm_tokenizer.
#include "tokenizer_internal.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *jstr(json_t *o, const char *k) {
    json_t *v = json_object_get(o, k);
    return json_is_string(v) ? json_string_value(v) : NULL;
}
static int jbool(json_t *o, const char *k, int dflt) {
    json_t *v = json_object_get(o, k);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

static char *dupn(const char *s, size_t n) {
    char *c = malloc(n + 1);
    if (c) { memcpy(c, s, n); c[n] = 0; }
    return c;
}

// A Split/Replace "pattern": {"String": "..."} or {"Regex": "..."}.
static int parse_pattern(json_t *pat, char **lit, size_t *lit_len, pcre2_code **re, vm_err *e) {
    json_t *s = json_object_get(pat, "String"), *r = json_object_get(pat, "Regex");
    if (json_is_string(s)) {
        *lit_len = json_string_length(s);
        *lit = dupn(json_string_value(s), *lit_len);
        return *lit ? 0 : vm_errf(e, "tokenizer: out of memory");
    }
    if (json_is_string(r)) {
        *re = tok_compile_regex(json_string_value(r), json_string_length(r), e);
        return *re ? 0 : -1;
    }
    return vm_errf(e, "tokenizer.json: pattern must be {\"String\": ...} or {\"Regex\": ...}");
}

static int add_norm(vm_tokenizer *t, tok_normalizer nz, vm_err *e) {
    tok_normalizer *p = realloc(t->norms, (t->n_norms + 1) * sizeof *p);
    if (!p) return vm_errf(e, "tokenizer: out of memory");
    t->norms = p; t->norms[t->n_norms++] = nz;
    return 0;
}

static int parse_normalizer(vm_tokenizer *t, json_t *n, vm_err *e) {
    if (json_is_null(n) || !n) return 0;
    const char *type = jstr(n, "type");
    if (!type) return vm_errf(e, "tokenizer.json: normalizer without a type");
    tok_normalizer nz = {0};
    if (!strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(n, "normalizers"), *it; size_t i;
        json_array_foreach(arr, i, it) if (parse_normalizer(t, it, e)) return -1;
        return 0;
    }
    if (!strcmp(type, "NFC")) nz.kind = NORM_NFC;
    else if (!strcmp(type, "NFD")) nz.kind = NORM_NFD;
    else if (!strcmp(type, "NFKC")) nz.kind = NORM_NFKC;
    else if (!strcmp(type, "NFKD")) nz.kind = NORM_NFKD;
    else if (!strcmp(type, "Lowercase")) nz.kind = NORM_LOWERCASE;
    else if (!strcmp(type, "Strip")) {
        nz.kind = NORM_STRIP;
        nz.left = jbool(n, "strip_left", 1); nz.right = jbool(n, "strip_right", 1);
    } else if (!strcmp(type, "Prepend")) {
        const char *p = jstr(n, "prepend");
        if (!p) return vm_errf(e, "tokenizer.json: Prepend without 'prepend'");
        nz.kind = NORM_PREPEND; nz.a_len = strlen(p); nz.a = dupn(p, nz.a_len);
    } else if (!strcmp(type, "Replace")) {
        const char *c = jstr(n, "content");
        if (!c) return vm_errf(e, "tokenizer.json: Replace without 'content'");
        nz.kind = NORM_REPLACE;
        if (parse_pattern(json_object_get(n, "pattern"), &nz.a, &nz.a_len, &nz.re, e)) return -1;
        nz.b_len = strlen(c); nz.b = dupn(c, nz.b_len);
    } else return vm_errf(e, "tokenizer.json: unsupported normalizer '%s'", type);
    return add_norm(t, nz, e);
}

static int add_pre(vm_tokenizer *t, tok_pretok pt, vm_err *e) {
    tok_pretok *p = realloc(t->pres, (t->n_pres + 1) * sizeof *p);
    if (!p) { if (pt.re) pcre2_code_free(pt.re); free(pt.lit); return vm_errf(e, "tokenizer: out of memory"); }
    t->pres = p; t->pres[t->n_pres++] = pt;
    return 0;
}

static int parse_behavior(const char *b, tok_split_behavior *out, vm_err *e) {
    if (!b) b = "Isolated";
    if (!strcasecmp(b, "Removed")) *out = SPLIT_REMOVED;
    else if (!strcasecmp(b, "Isolated")) *out = SPLIT_ISOLATED;
    else if (!strcasecmp(b, "MergedWithPrevious")) *out = SPLIT_MERGED_PREV;
    else if (!strcasecmp(b, "MergedWithNext")) *out = SPLIT_MERGED_NEXT;
    else if (!strcasecmp(b, "Contiguous")) *out = SPLIT_CONTIGUOUS;
    else return vm_errf(e, "tokenizer.json: unknown split behavior '%s'", b);
    return 0;
}

static int parse_prepend_scheme(json_t *n, tok_prepend_scheme *out) {
    const char *s = jstr(n, "prepend_scheme");
    if (s) *out = !strcmp(s, "never") ? PREPEND_NEVER : !strcmp(s, "first") ? PREPEND_FIRST : PREPEND_ALWAYS;
    else *out = jbool(n, "add_prefix_space", 1) ? PREPEND_ALWAYS : PREPEND_NEVER; // older files
    return 0;
}

static int set_replacement(json_t *n, char *repl, size_t *len, vm_err *e) {
    const char *r = jstr(n, "replacement");
    if (!r) r = "\xe2\x96\x81";
    size_t l = strlen(r);
    if (l == 0 || l > 4) return vm_errf(e, "tokenizer.json: bad Metaspace replacement");
    memcpy(repl, r, l); *len = l;
    return 0;
}

static int parse_pretok(vm_tokenizer *t, json_t *n, vm_err *e) {
    if (json_is_null(n) || !n) return 0;
    const char *type = jstr(n, "type");
    if (!type) return vm_errf(e, "tokenizer.json: pre_tokenizer without a type");
    tok_pretok pt = {0};
    if (!strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(n, "pretokenizers"), *it; size_t i;
        json_array_foreach(arr, i, it) if (parse_pretok(t, it, e)) return -1;
        return 0;
    }
    if (!strcmp(type, "Split")) {
        pt.kind = PRE_SPLIT;
        if (parse_behavior(jstr(n, "behavior"), &pt.behavior, e)) return -1;
        pt.invert = jbool(n, "invert", 0);
        if (parse_pattern(json_object_get(n, "pattern"), &pt.lit, &pt.lit_len, &pt.re, e)) return -1;
    } else if (!strcmp(type, "ByteLevel")) {
        pt.kind = PRE_BYTELEVEL;
        pt.add_prefix_space = jbool(n, "add_prefix_space", 1);
        if (jbool(n, "use_regex", 1)) {
            pt.re = tok_compile_regex(TOK_GPT2_PATTERN, strlen(TOK_GPT2_PATTERN), e);
            if (!pt.re) return -1;
        }
        t->byte_level = 1;
    } else if (!strcmp(type, "Metaspace")) {
        pt.kind = PRE_METASPACE;
        if (set_replacement(n, pt.repl, &pt.repl_len, e)) return -1;
        parse_prepend_scheme(n, &pt.prepend);
        pt.split = jbool(n, "split", 1);
    } else if (!strcmp(type, "Digits")) {
        pt.kind = PRE_DIGITS;
        int ind = jbool(n, "individual_digits", 0);
        const char *p = ind ? "\\p{N}" : "\\p{N}+";
        pt.behavior = SPLIT_ISOLATED;
        if (!(pt.re = tok_compile_regex(p, strlen(p), e))) return -1;
    } else if (!strcmp(type, "Whitespace")) {
        pt.kind = PRE_WHITESPACE;
        pt.behavior = SPLIT_REMOVED; pt.invert = 1;
        const char *p = "\\w+|[^\\w\\s]+";
        if (!(pt.re = tok_compile_regex(p, strlen(p), e))) return -1;
    } else if (!strcmp(type, "WhitespaceSplit")) {
        pt.kind = PRE_WHITESPACE_SPLIT;
        if (!(pt.re = tok_compile_regex("\\s+", 3, e))) return -1;
    } else return vm_errf(e, "tokenizer.json: unsupported pre_tokenizer '%s'", type);
    return add_pre(t, pt, e);
}

static int add_dec(vm_tokenizer *t, tok_decoder d, vm_err *e) {
    tok_decoder *p = realloc(t->decs, (t->n_decs + 1) * sizeof *p);
    if (!p) return vm_errf(e, "tokenizer: out of memory");
    t->decs = p; t->decs[t->n_decs++] = d;
    return 0;
}

static int parse_decoder(vm_tokenizer *t, json_t *n, vm_err *e) {
    if (json_is_null(n) || !n) return 0;
    const char *type = jstr(n, "type");
    if (!type) return vm_errf(e, "tokenizer.json: decoder without a type");
    t->has_decoder = 1;
    tok_decoder d = {0};
    if (!strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(n, "decoders"), *it; size_t i;
        json_array_foreach(arr, i, it) if (parse_decoder(t, it, e)) return -1;
        return 0;
    }
    if (!strcmp(type, "ByteLevel")) d.kind = DEC_BYTELEVEL;
    else if (!strcmp(type, "ByteFallback")) d.kind = DEC_BYTEFALLBACK;
    else if (!strcmp(type, "Fuse")) d.kind = DEC_FUSE;
    else if (!strcmp(type, "Metaspace")) {
        char r[8]; size_t rl;
        if (set_replacement(n, r, &rl, e)) return -1;
        d.kind = DEC_METASPACE; d.a = dupn(r, rl); d.a_len = rl;
        parse_prepend_scheme(n, &d.prepend);
    } else if (!strcmp(type, "Replace")) {
        const char *c = jstr(n, "content");
        pcre2_code *re = NULL;
        if (!c) return vm_errf(e, "tokenizer.json: Replace decoder without 'content'");
        d.kind = DEC_REPLACE;
        if (parse_pattern(json_object_get(n, "pattern"), &d.a, &d.a_len, &re, e)) return -1;
        if (re) { pcre2_code_free(re); return vm_errf(e, "tokenizer.json: regex Replace decoder is not supported"); }
        d.b_len = strlen(c); d.b = dupn(c, d.b_len);
    } else if (!strcmp(type, "Strip")) {
        const char *c = jstr(n, "content");
        d.kind = DEC_STRIP;
        if (!c) c = " ";
        d.a_len = strlen(c); d.a = dupn(c, d.a_len);
        d.start = (int)json_integer_value(json_object_get(n, "start"));
        d.stop = (int)json_integer_value(json_object_get(n, "stop"));
    } else return vm_errf(e, "tokenizer.json: unsupported decoder '%s'", type);
    return add_dec(t, d, e);
}

static int push_id(int32_t **arr, size_t *n, int32_t id, vm_err *e) {
    int32_t *p = realloc(*arr, (*n + 1) * sizeof *p);
    if (!p) return vm_errf(e, "tokenizer: out of memory");
    *arr = p; p[(*n)++] = id;
    return 0;
}

// TemplateProcessing "single": ids before and after $A.
static int parse_post(vm_tokenizer *t, json_t *n, vm_err *e) {
    if (json_is_null(n) || !n) return 0;
    const char *type = jstr(n, "type");
    if (!type) return vm_errf(e, "tokenizer.json: post_processor without a type");
    if (!strcmp(type, "Sequence")) {
        json_t *arr = json_object_get(n, "processors"), *it; size_t i;
        json_array_foreach(arr, i, it) if (parse_post(t, it, e)) return -1;
        return 0;
    }
    if (!strcmp(type, "ByteLevel")) return 0; // offsets only
    if (!strcmp(type, "TemplateProcessing")) {
        json_t *single = json_object_get(n, "single"), *sp = json_object_get(n, "special_tokens"), *it;
        size_t i; int seen_seq = 0;
        json_array_foreach(single, i, it) {
            json_t *st = json_object_get(it, "SpecialToken");
            if (json_object_get(it, "Sequence")) { seen_seq = 1; continue; }
            if (!st) continue;
            const char *name = jstr(st, "id");
            json_t *ent = name ? json_object_get(sp, name) : NULL, *ids = json_object_get(ent, "ids"), *x;
            if (!json_is_array(ids)) return vm_errf(e, "tokenizer.json: template token '%s' has no ids", name ? name : "?");
            size_t k;
            json_array_foreach(ids, k, x) {
                int32_t id = (int32_t)json_integer_value(x);
                if (push_id(seen_seq ? &t->suffix_ids : &t->prefix_ids, seen_seq ? &t->n_suffix : &t->n_prefix, id, e)) return -1;
            }
        }
        return 0;
    }
    if (!strcmp(type, "RobertaProcessing") || !strcmp(type, "BertProcessing")) {
        json_t *cls = json_object_get(n, "cls"), *sep = json_object_get(n, "sep");
        if (json_array_size(cls) == 2 && push_id(&t->prefix_ids, &t->n_prefix, (int32_t)json_integer_value(json_array_get(cls, 1)), e)) return -1;
        if (json_array_size(sep) == 2 && push_id(&t->suffix_ids, &t->n_suffix, (int32_t)json_integer_value(json_array_get(sep, 1)), e)) return -1;
        return 0;
    }
    return vm_errf(e, "tokenizer.json: unsupported post_processor '%s'", type);
}


static int parse_model_bpe(vm_tokenizer *t, json_t *m, vm_err *e) {
    const char *type = jstr(m, "type");
    if (type && strcmp(type, "BPE"))
        return vm_errf(e, "tokenizer.json: unsupported model type '%s' (only BPE)", type);
    const char *p = jstr(m, "continuing_subword_prefix"), *s = jstr(m, "end_of_word_suffix");
    if ((p && *p) || (s && *s))
        return vm_errf(e, "tokenizer.json: continuing_subword_prefix/end_of_word_suffix are not supported");
    json_t *vocab = json_object_get(m, "vocab"), *v;
    if (!json_is_object(vocab)) return vm_errf(e, "tokenizer.json: model.vocab missing");
    const char *k;
    json_object_foreach(vocab, k, v) {
        if (!json_is_integer(v)) return vm_errf(e, "tokenizer.json: vocab id of '%s' is not an integer", k);
        if (tok_set_token(t, (int32_t)json_integer_value(v), k, strlen(k), e)) return -1;
    }
    t->ignore_merges = jbool(m, "ignore_merges", 0);
    t->byte_fallback = jbool(m, "byte_fallback", 0);
    t->fuse_unk = jbool(m, "fuse_unk", 0);
    const char *unk = jstr(m, "unk_token");
    if (unk) {
        json_t *u = json_object_get(vocab, unk);
        if (!json_is_integer(u)) return vm_errf(e, "tokenizer.json: unk_token '%s' not in vocab", unk);
        t->unk_id = (int32_t)json_integer_value(u);
    }
    json_t *merges = json_object_get(m, "merges"), *it;
    size_t i;
    char buf[1024];
    json_array_foreach(merges, i, it) {
        const char *a, *b; size_t al, bl;
        if (json_is_string(it)) {
            const char *ms = json_string_value(it), *sp = strchr(ms, ' ');
            if (!sp || strchr(sp + 1, ' ')) return vm_errf(e, "tokenizer.json: bad merge '%s'", ms);
            a = ms; al = (size_t)(sp - ms); b = sp + 1; bl = strlen(b);
        } else if (json_is_array(it) && json_array_size(it) == 2 &&
                   json_is_string(json_array_get(it, 0)) && json_is_string(json_array_get(it, 1))) {
            a = json_string_value(json_array_get(it, 0)); al = json_string_length(json_array_get(it, 0));
            b = json_string_value(json_array_get(it, 1)); bl = json_string_length(json_array_get(it, 1));
        } else return vm_errf(e, "tokenizer.json: merge %zu is neither \"a b\" nor [a, b]", i);
        if (al + bl >= sizeof buf) return vm_errf(e, "tokenizer.json: merge %zu too long", i);
        memcpy(buf, a, al); buf[al] = 0;
        json_t *ja = json_object_get(vocab, buf);
        memcpy(buf, b, bl); buf[bl] = 0;
        json_t *jb = json_object_get(vocab, buf);
        memcpy(buf, a, al); memcpy(buf + al, b, bl); buf[al + bl] = 0;
        json_t *jab = json_object_get(vocab, buf);
        if (!ja || !jb) return vm_errf(e, "tokenizer.json: merge %zu uses a token not in the vocab", i);
        if (!jab) return vm_errf(e, "tokenizer.json: merge %zu result '%s' not in the vocab", i, buf);
        if (tok_add_merge(t, (int32_t)json_integer_value(ja), (int32_t)json_integer_value(jb),
                          (uint32_t)i, (int32_t)json_integer_value(jab), e)) return -1;
    }
    return 0;
}

static int parse_tokenizer_json(vm_tokenizer *t, json_t *root, vm_err *e) {
    json_t *model = json_object_get(root, "model");
    if (!json_is_object(model)) return vm_errf(e, "tokenizer.json: no model");
    if (parse_model_bpe(t, model, e)) return -1;
    json_t *added = json_object_get(root, "added_tokens"), *it;
    size_t i;
    json_array_foreach(added, i, it) {
        const char *c = jstr(it, "content");
        json_t *id = json_object_get(it, "id");
        if (!c || !json_is_integer(id)) return vm_errf(e, "tokenizer.json: added token %zu malformed", i);
        int special = jbool(it, "special", 0);
        if (tok_add_added(t, (int32_t)json_integer_value(id), c, json_string_length(json_object_get(it, "content")),
                          special, jbool(it, "lstrip", 0), jbool(it, "rstrip", 0),
                          jbool(it, "single_word", 0), jbool(it, "normalized", !special), e)) return -1;
    }
    if (parse_normalizer(t, json_object_get(root, "normalizer"), e)) return -1;
    if (parse_pretok(t, json_object_get(root, "pre_tokenizer"), e)) return -1;
    if (parse_decoder(t, json_object_get(root, "decoder"), e)) return -1;
    if (parse_post(t, json_object_get(root, "post_processor"), e)) return -1;
    if (tok_finish(t, e)) return -1;
    // Defaults before any config: bos from the template, eos none.
    if (t->n_prefix) t->bos_id = t->prefix_ids[0];
    return 0;
}

vm_tokenizer *vm_tokenizer_from_json_string(const char *json, size_t len, vm_err *e) {
    json_error_t je;
    json_t *root = json_loadb(json, len, 0, &je);
    if (!root) { vm_errf(e, "tokenizer.json: parse error line %d: %s", je.line, je.text); return NULL; }
    vm_tokenizer *t = tok_new();
    if (!t) { json_decref(root); vm_errf(e, "tokenizer: out of memory"); return NULL; }
    int rc = parse_tokenizer_json(t, root, e);
    json_decref(root);
    if (rc) { vm_tokenizer_free(t); return NULL; }
    return t;
}

// "bos_token": "<s>" or {"content": "<s>", ...}
static int32_t config_token(vm_tokenizer *t, json_t *cfg, const char *key) {
    json_t *v = json_object_get(cfg, key);
    const char *s = json_is_string(v) ? json_string_value(v) : jstr(v, "content");
    return s ? tok_lookup_token(t, s, strlen(s)) : -1;
}

static int add_eos(vm_tokenizer *t, int32_t id, vm_err *e) {
    if (id < 0) return 0;
    for (size_t i = 0; i < t->n_eos; i++) if (t->eos_ids[i] == id) return 0;
    return push_id(&t->eos_ids, &t->n_eos, id, e);
}

static int apply_config(vm_tokenizer *t, const char *config_path, vm_err *e) {
    // Integers as reals: many configs carry "model_max_length": 1e30 written as an
    // integer, beyond what jansson takes as one; only strings and booleans are read here.
    json_error_t je;
    json_t *cfg = json_load_file(config_path, JSON_DECODE_INT_AS_REAL, &je);
    if (!cfg) return vm_errf(e, "%s: %s (line %d)", config_path, je.text, je.line);
    int32_t bos = config_token(t, cfg, "bos_token"), eos = config_token(t, cfg, "eos_token");
    int32_t pad = config_token(t, cfg, "pad_token"), unk = config_token(t, cfg, "unk_token");
    if (bos >= 0) t->bos_id = bos;
    if (pad >= 0) t->pad_id = pad;
    if (unk >= 0 && t->unk_id < 0) t->unk_id = unk;
    int rc = add_eos(t, eos, e);
    // LlamaTokenizerFast/GemmaTokenizerFast rebuild the template from add_bos/add_eos.
    const char *cls = jstr(cfg, "tokenizer_class");
    if (!rc && cls && (strstr(cls, "Llama") || strstr(cls, "Gemma"))) {
        json_t *ab = json_object_get(cfg, "add_bos_token"), *ae = json_object_get(cfg, "add_eos_token");
        if (json_is_boolean(ab) && t->bos_id >= 0) {
            t->n_prefix = 0;
            if (json_is_true(ab)) rc = push_id(&t->prefix_ids, &t->n_prefix, t->bos_id, e);
        }
        if (!rc && json_is_boolean(ae) && t->n_eos) {
            t->n_suffix = 0;
            if (json_is_true(ae)) rc = push_id(&t->suffix_ids, &t->n_suffix, t->eos_ids[0], e);
        }
    }
    json_decref(cfg);
    if (rc) return -1;
    // generation_config.json beside it: eos_token_id may be a list.
    char path[4096];
    const char *slash = strrchr(config_path, '/');
    int dl = slash ? (int)(slash - config_path) : 0;
    snprintf(path, sizeof path, "%.*s%sgeneration_config.json", dl, config_path, slash ? "/" : "");
    json_t *gen = json_load_file(path, 0, &je);
    if (!gen) return 0;
    json_t *b = json_object_get(gen, "bos_token_id"), *eo = json_object_get(gen, "eos_token_id"), *x;
    if (json_is_integer(b) && t->bos_id < 0) t->bos_id = (int32_t)json_integer_value(b);
    if (json_is_integer(eo)) rc = add_eos(t, (int32_t)json_integer_value(eo), e);
    else if (json_is_array(eo)) {
        size_t i;
        json_array_foreach(eo, i, x) if (!rc && json_is_integer(x)) rc = add_eos(t, (int32_t)json_integer_value(x), e);
    }
    json_decref(gen);
    return rc;
}

vm_tokenizer *vm_tokenizer_load_json(const char *tokenizer_json_path,
                                     const char *tokenizer_config_path_or_NULL, vm_err *e) {
    size_t len;
    char *text = vm_read_file(tokenizer_json_path, &len, (size_t)1 << 31, e);
    if (!text) return NULL;
    vm_tokenizer *t = vm_tokenizer_from_json_string(text, len, e);
    free(text);
    if (!t) {
        char msg[sizeof e->msg];
        if (e) {
            snprintf(msg, sizeof msg, "%s", e->msg);
            vm_errf(e, "%s: %s", tokenizer_json_path, msg);
        }
        return NULL;
    }
    if (tokenizer_config_path_or_NULL && apply_config(t, tokenizer_config_path_or_NULL, e)) {
        vm_tokenizer_free(t);
        return NULL;
    }
    return t;
}

vm_tokenizer *vm_tokenizer_load_dir(const char *dir, vm_err *e) {
    char tj[4096], tc[4096];
    snprintf(tj, sizeof tj, "%s/tokenizer.json", dir);
    snprintf(tc, sizeof tc, "%s/tokenizer_config.json", dir);
    FILE *f = fopen(tc, "rb");
    if (f) fclose(f);
    return vm_tokenizer_load_json(tj, f ? tc : NULL, e);
}
