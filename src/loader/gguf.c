// gguf.c - GGUF v2/v3 reader (llama.cpp's single-file format).
//
// Layout (all integers little-endian):
//   "GGUF"  u32 version (2 or 3)  u64 n_tensors  u64 n_kv
//   n_kv x  { gguf_string key, u32 value_type, value }
//   n_tensors x { gguf_string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset }
//   padding up to general.alignment (default 32), counted from the file start
//   data: each tensor at data_start + offset (offset a multiple of the alignment)
// gguf_string = u64 len + len bytes (no NUL). Arrays = u32 elem_type + u64 count
// + elements. ne[0] is the innermost (fastest) dimension, so HF shape = reverse(ne):
// a linear weight with ne = [in, out] is [rows=out, cols=in].
//
// Quantized types store rows of ne[0] elements as blocks of 32 (see common.h).
//
// Names: llama.cpp names ("blk.3.attn_q.weight") are mapped to HF names
// ("model.layers.3.self_attn.q_proj.weight"); unknown names are kept.
//
// NOTE on Q/K: llama.cpp's convert_hf_to_gguf.py permutes the rows of
// attn_q / attn_k for llama-architecture models so that rotary embedding can
// rotate adjacent pairs (x[2i], x[2i+1]) instead of HF's halves (x[i],
// x[i+d/2]). We deliberately do NOT undo this here (it would need a copy, and
// quantized rows cannot be reordered within a block anyway): model code must use
// the interleaved ("GPT-J"/"normal" in llama.cpp terms) rotary form for
// GGUF llama weights, as llama.cpp itself does.
//
// Every count read from the file is checked against the bytes that remain
// before anything is allocated from it.
#include "loader_internal.h"

// GGML tensors have at most 4 dimensions (VM_MAX_DIMS allows 5 for safetensors conv weights).
#define GGUF_MAX_DIMS 4

#include <stdio.h>
#include <stdlib.h>

#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_ARRAY_DEPTH 8

typedef struct gguf_kv {
    const char *key;      // inside the mapping, not NUL-terminated
    uint64_t key_len;
    vm_gguf_type type;
    union { uint64_t u; int64_t i; double f; } num; // numeric and bool values
    vm_gguf_str str;                                // STRING
    vm_gguf_array arr;                              // ARRAY (arr.strs owned)
} gguf_kv;

struct vm_gguf {
    uint32_t version;
    uint32_t alignment;
    gguf_kv *kv;
    uint64_t n_kv;
};

// ---------------------------------------------------------------- reader ----

typedef struct reader {
    const uint8_t *base;
    size_t size, pos;
    const char *path;
    vm_err *e;
} reader;

static uint64_t le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static size_t remaining(const reader *r) { return r->size - r->pos; }

// Reads an n-byte little-endian integer; `what` names the field for messages.
static int rd_uint(reader *r, int n, uint64_t *out, const char *what, const char *who) {
    *out = 0;
    if (remaining(r) < (size_t)n)
        return vm_errf(r->e, "%s: %s%s%s: file truncated at byte %zu", r->path, who, *who ? ": " : "",
                       what, r->pos);
    *out = le(r->base + r->pos, n);
    r->pos += (size_t)n;
    return 0;
}

static int rd_string(reader *r, vm_gguf_str *s, const char *what, const char *who) {
    uint64_t len;
    s->s = NULL;
    s->len = 0;
    if (rd_uint(r, 8, &len, what, who)) return -1;
    if (len > remaining(r))
        return vm_errf(r->e, "%s: %s%s%s: string length %llu exceeds the %zu bytes left in the file",
                       r->path, who, *who ? ": " : "", what, (unsigned long long)len, remaining(r));
    s->s = (const char *)r->base + r->pos;
    s->len = len;
    r->pos += (size_t)len;
    return 0;
}

static size_t scalar_size(vm_gguf_type t) {
    switch (t) {
    case VM_GGUF_U8: case VM_GGUF_I8: case VM_GGUF_BOOL: return 1;
    case VM_GGUF_U16: case VM_GGUF_I16: return 2;
    case VM_GGUF_U32: case VM_GGUF_I32: case VM_GGUF_F32: return 4;
    case VM_GGUF_U64: case VM_GGUF_I64: case VM_GGUF_F64: return 8;
    default: return 0;
    }
}

// Numeric value at p (little-endian) into the kv's union.
static void decode_scalar(vm_gguf_type t, const uint8_t *p, gguf_kv *kv) {
    uint64_t raw = le(p, (int)scalar_size(t));
    switch (t) {
    case VM_GGUF_I8: kv->num.i = (int8_t)raw; break;
    case VM_GGUF_I16: kv->num.i = (int16_t)raw; break;
    case VM_GGUF_I32: kv->num.i = (int32_t)raw; break;
    case VM_GGUF_I64: kv->num.i = (int64_t)raw; break;
    case VM_GGUF_F32: { uint32_t b = (uint32_t)raw; float f; memcpy(&f, &b, 4); kv->num.f = f; break; }
    case VM_GGUF_F64: { double d; memcpy(&d, &raw, 8); kv->num.f = d; break; }
    default: kv->num.u = raw; break; // unsigned and bool
    }
}

// Skips one array (used for arrays nested in arrays, which we expose only as raw data).
static int skip_array(reader *r, int depth, const char *who) {
    uint64_t et, n;
    if (depth > GGUF_MAX_ARRAY_DEPTH)
        return vm_errf(r->e, "%s: %s: arrays nested too deeply", r->path, who);
    if (rd_uint(r, 4, &et, "array element type", who) || rd_uint(r, 8, &n, "array count", who)) return -1;
    if (et == VM_GGUF_STRING || et == VM_GGUF_ARRAY) {
        size_t min = et == VM_GGUF_STRING ? 8 : 12;
        if (n > remaining(r) / min)
            return vm_errf(r->e, "%s: %s: array count %llu exceeds the file",
                           r->path, who, (unsigned long long)n);
        for (uint64_t i = 0; i < n; i++) {
            vm_gguf_str s;
            if (et == VM_GGUF_STRING ? rd_string(r, &s, "array string", who) : skip_array(r, depth + 1, who))
                return -1;
        }
        return 0;
    }
    size_t es = scalar_size((vm_gguf_type)et);
    if (!es) return vm_errf(r->e, "%s: %s: unknown array element type %llu",
                            r->path, who, (unsigned long long)et);
    if (n > remaining(r) / es)
        return vm_errf(r->e, "%s: %s: array count %llu exceeds the file",
                       r->path, who, (unsigned long long)n);
    r->pos += (size_t)(n * es);
    return 0;
}

static int read_value(reader *r, gguf_kv *kv, const char *who) {
    if (kv->type == VM_GGUF_STRING) return rd_string(r, &kv->str, "string value", who);
    if (kv->type != VM_GGUF_ARRAY) {
        size_t es = scalar_size(kv->type);
        if (!es) return vm_errf(r->e, "%s: %s: unknown value type %d", r->path, who, (int)kv->type);
        if (remaining(r) < es) return vm_errf(r->e, "%s: %s: value: file truncated", r->path, who);
        decode_scalar(kv->type, r->base + r->pos, kv);
        r->pos += es;
        return 0;
    }
    uint64_t et, n;
    if (rd_uint(r, 4, &et, "array element type", who) || rd_uint(r, 8, &n, "array count", who)) return -1;
    if (et > VM_GGUF_F64)
        return vm_errf(r->e, "%s: %s: unknown array element type %llu",
                       r->path, who, (unsigned long long)et);
    kv->arr.type = (vm_gguf_type)et;
    kv->arr.n = n;
    kv->arr.data = r->base + r->pos;
    if (et == VM_GGUF_STRING) {
        if (n > remaining(r) / 8) // every string takes at least its 8-byte length
            return vm_errf(r->e, "%s: %s: array count %llu exceeds the file",
                           r->path, who, (unsigned long long)n);
        vm_gguf_str *strs = malloc((n ? n : 1) * sizeof *strs);
        if (!strs) return vm_errf(r->e, "%s: %s: out of memory", r->path, who);
        kv->arr.strs = strs;
        for (uint64_t i = 0; i < n; i++)
            if (rd_string(r, &strs[i], "array string", who)) return -1;
        return 0;
    }
    if (et == VM_GGUF_ARRAY) {
        if (n > remaining(r) / 12)
            return vm_errf(r->e, "%s: %s: array count %llu exceeds the file",
                           r->path, who, (unsigned long long)n);
        for (uint64_t i = 0; i < n; i++)
            if (skip_array(r, 1, who)) return -1;
        return 0;
    }
    size_t es = scalar_size(kv->arr.type);
    if (n > remaining(r) / es)
        return vm_errf(r->e, "%s: %s: array count %llu exceeds the file",
                       r->path, who, (unsigned long long)n);
    r->pos += (size_t)(n * es);
    return 0;
}

// ----------------------------------------------------------- name mapping ---

static const struct { const char *gguf, *hf; } layer_names[] = {
    {"attn_norm", "input_layernorm"},
    {"ffn_norm", "post_attention_layernorm"},
    {"attn_q", "self_attn.q_proj"},
    {"attn_k", "self_attn.k_proj"},
    {"attn_v", "self_attn.v_proj"},
    {"attn_output", "self_attn.o_proj"},
    {"attn_q_norm", "self_attn.q_norm"},
    {"attn_k_norm", "self_attn.k_norm"},
    {"ffn_gate", "mlp.gate_proj"},
    {"ffn_up", "mlp.up_proj"},
    {"ffn_down", "mlp.down_proj"},
};
static const struct { const char *gguf, *hf; } global_names[] = {
    {"token_embd", "model.embed_tokens"},
    {"output_norm", "model.norm"},
    {"output", "lm_head"},
};

// name (NUL-terminated) -> HF name in out (cap bytes). Splits "<module>.<suffix>"
// at the last dot; the suffix (weight/bias) is kept.
static void map_name(const char *name, char *out, size_t cap) {
    const char *dot = strrchr(name, '.');
    snprintf(out, cap, "%s", name);
    if (!dot) return;
    size_t mod_len = (size_t)(dot - name);
    const char *suffix = dot + 1;
    for (size_t i = 0; i < VM_ARRAY_LEN(global_names); i++)
        if (strlen(global_names[i].gguf) == mod_len && memcmp(name, global_names[i].gguf, mod_len) == 0) {
            snprintf(out, cap, "%s.%s", global_names[i].hf, suffix);
            return;
        }
    if (strncmp(name, "blk.", 4) != 0) return;
    const char *p = name + 4, *digits = p;
    while (*p >= '0' && *p <= '9') p++;
    if (p == digits || p - digits > 9 || *p != '.' || p >= dot) return;
    const char *base = p + 1;
    size_t base_len = (size_t)(dot - base);
    for (size_t i = 0; i < VM_ARRAY_LEN(layer_names); i++)
        if (strlen(layer_names[i].gguf) == base_len && memcmp(base, layer_names[i].gguf, base_len) == 0) {
            snprintf(out, cap, "model.layers.%.*s.%s.%s", (int)(p - digits), digits,
                     layer_names[i].hf, suffix);
            return;
        }
}

// ggml type id -> our dtype; -1 when unsupported.
static int ggml_type_to_dtype(uint64_t t, vm_dtype *out) {
    switch (t) {
    case 0: *out = VM_DTYPE_F32; return 0;
    case 1: *out = VM_DTYPE_F16; return 0;
    case 2: *out = VM_DTYPE_Q4_0; return 0;
    case 3: *out = VM_DTYPE_Q4_1; return 0;
    case 8: *out = VM_DTYPE_Q8_0; return 0;
    case 30: *out = VM_DTYPE_BF16; return 0;
    default: return -1;
    }
}

// ------------------------------------------------------------------ load ----

static int cmp_kv_key(const void *a, const void *b) {
    const gguf_kv *x = *(const gguf_kv *const *)a, *y = *(const gguf_kv *const *)b;
    size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
    int c = memcmp(x->key, y->key, n);
    if (c) return c;
    return x->key_len < y->key_len ? -1 : x->key_len > y->key_len;
}

static int check_duplicate_keys(const vm_gguf *g, const char *path, vm_err *e) {
    if (g->n_kv < 2) return 0;
    const gguf_kv **ord = malloc(g->n_kv * sizeof *ord);
    if (!ord) return vm_errf(e, "%s: out of memory", path);
    for (uint64_t i = 0; i < g->n_kv; i++) ord[i] = &g->kv[i];
    qsort(ord, g->n_kv, sizeof *ord, cmp_kv_key);
    int rc = 0;
    for (uint64_t i = 1; i < g->n_kv && rc == 0; i++)
        if (cmp_kv_key(&ord[i - 1], &ord[i]) == 0)
            rc = vm_errf(e, "%s: metadata key '%.*s' appears twice", path,
                         (int)VM_MIN(ord[i]->key_len, 200), ord[i]->key);
    free(ord);
    return rc;
}

static const gguf_kv *find_kv(const vm_gguf *g, const char *key) {
    if (!g || !key) return NULL;
    size_t n = strlen(key);
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (g->kv[i].key_len == n && memcmp(g->kv[i].key, key, n) == 0) return &g->kv[i];
    return NULL;
}

// Raw tensor info, before data placement is known.
typedef struct tensor_info {
    vm_gguf_str name;
    uint32_t n_dims;
    uint64_t ne[VM_MAX_DIMS];
    uint64_t type, offset;
} tensor_info;

static int read_tensor_info(reader *r, uint64_t index, tensor_info *ti) {
    char who[320];
    snprintf(who, sizeof who, "tensor info #%llu", (unsigned long long)index);
    if (rd_string(r, &ti->name, "name", who)) return -1;
    if (memchr(ti->name.s, 0, ti->name.len))
        return vm_errf(r->e, "%s: %s: name contains a NUL byte", r->path, who);
    if (ti->name.len > 255)
        return vm_errf(r->e, "%s: %s: name is %llu bytes long", r->path, who, (unsigned long long)ti->name.len);
    snprintf(who, sizeof who, "tensor '%.*s'", (int)ti->name.len, ti->name.s);
    uint64_t v;
    if (rd_uint(r, 4, &v, "n_dims", who)) return -1;
    if (v < 1 || v > GGUF_MAX_DIMS)
        return vm_errf(r->e, "%s: %s: n_dims %llu is not in 1..%d", r->path, who, (unsigned long long)v, GGUF_MAX_DIMS);
    ti->n_dims = (uint32_t)v;
    for (uint32_t d = 0; d < ti->n_dims; d++) {
        if (rd_uint(r, 8, &ti->ne[d], "ne", who)) return -1;
        if (ti->ne[d] > (uint64_t)INT64_MAX)
            return vm_errf(r->e, "%s: %s: ne[%u] = %llu is out of range", r->path, who, d,
                           (unsigned long long)ti->ne[d]);
    }
    if (rd_uint(r, 4, &ti->type, "type", who) || rd_uint(r, 8, &ti->offset, "offset", who)) return -1;
    return 0;
}

int vm_gguf_load(vm_weight_store *ws, const char *path_in, vm_err *e) {
    int fi = vm_store_map_file(ws, path_in, e);
    if (fi < 0) return -1;
    const vm_mapped_file *f = &ws->files[fi];
    reader r = {.base = f->base, .size = f->size, .pos = 0, .path = f->path, .e = e};
    const char *path = f->path;

    if (f->size < 4 || memcmp(f->base, "GGUF", 4) != 0)
        return vm_errf(e, "%s: magic: not a GGUF file", path);
    r.pos = 4;
    uint64_t version, n_tensors, n_kv;
    if (rd_uint(&r, 4, &version, "version", "header")) return -1;
    if (version != 2 && version != 3)
        return vm_errf(e, "%s: version: GGUF version %llu is not supported (2 or 3)", path,
                       (unsigned long long)version);
    if (rd_uint(&r, 8, &n_tensors, "n_tensors", "header") || rd_uint(&r, 8, &n_kv, "n_kv", "header"))
        return -1;
    // Smallest possible entries: kv = 8 (key len) + 4 (type) + 1 (u8 value);
    // tensor info = 8 (name len) + 4 (n_dims) + 8 (ne[0]) + 4 (type) + 8 (offset).
    if (n_kv > remaining(&r) / 13)
        return vm_errf(e, "%s: header: n_kv %llu is impossible for a file of %zu bytes", path,
                       (unsigned long long)n_kv, f->size);
    if (n_tensors > remaining(&r) / 32)
        return vm_errf(e, "%s: header: n_tensors %llu is impossible for a file of %zu bytes", path,
                       (unsigned long long)n_tensors, f->size);

    vm_gguf *g = ws->gguf = calloc(1, sizeof *g);
    if (!g) return vm_errf(e, "%s: out of memory", path);
    g->version = (uint32_t)version;
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    g->kv = calloc(n_kv ? n_kv : 1, sizeof *g->kv);
    if (!g->kv) return vm_errf(e, "%s: out of memory", path);

    // Metadata. g->n_kv counts parsed entries so vm_gguf_free frees exactly those.
    for (uint64_t i = 0; i < n_kv; i++) {
        gguf_kv *kv = &g->kv[g->n_kv++];
        char who[320];
        snprintf(who, sizeof who, "metadata entry #%llu", (unsigned long long)i);
        vm_gguf_str key;
        if (rd_string(&r, &key, "key", who)) return -1;
        kv->key = key.s;
        kv->key_len = key.len;
        snprintf(who, sizeof who, "metadata key '%.*s'", (int)VM_MIN(key.len, 256), key.s);
        uint64_t type;
        if (rd_uint(&r, 4, &type, "value type", who)) return -1;
        if (type > VM_GGUF_F64)
            return vm_errf(e, "%s: %s: unknown value type %llu", path, who,
                           (unsigned long long)type);
        kv->type = (vm_gguf_type)type;
        if (read_value(&r, kv, who)) return -1;
    }
    if (check_duplicate_keys(g, path, e)) return -1;

    const gguf_kv *al = find_kv(g, "general.alignment");
    if (al) {
        int is_int = al->type == VM_GGUF_U8 || al->type == VM_GGUF_U16 || al->type == VM_GGUF_U32 ||
                     al->type == VM_GGUF_U64 || al->type == VM_GGUF_I8 || al->type == VM_GGUF_I16 ||
                     al->type == VM_GGUF_I32 || al->type == VM_GGUF_I64;
        uint64_t a = al->num.u;
        if (!is_int || a == 0 || (a & (a - 1)) != 0 || a > (1u << 30))
            return vm_errf(e, "%s: metadata key 'general.alignment': %s%llu is not a power of two",
                           path, is_int ? "" : "non-integer value ", (unsigned long long)a);
        g->alignment = (uint32_t)a;
    }

    // Tensor infos.
    tensor_info *infos = calloc(n_tensors ? n_tensors : 1, sizeof *infos);
    if (!infos) return vm_errf(e, "%s: out of memory", path);
    int rc = 0;
    for (uint64_t i = 0; i < n_tensors && rc == 0; i++) rc = read_tensor_info(&r, i, &infos[i]);

    // Data section: starts at the first multiple of the alignment after the infos.
    uint64_t data_start = 0, data_size = 0;
    if (rc == 0) {
        data_start = ((uint64_t)r.pos + g->alignment - 1) / g->alignment * g->alignment;
        if (data_start > f->size)
            rc = vm_errf(e, "%s: data section: starts at byte %llu, past the end of the file (%zu bytes)",
                         path, (unsigned long long)data_start, f->size);
        else data_size = f->size - data_start;
    }
    size_t first = ws->n_tensors;
    for (uint64_t i = 0; i < n_tensors && rc == 0; i++) {
        const tensor_info *ti = &infos[i];
        char name[256], hf[320];
        snprintf(name, sizeof name, "%.*s", (int)ti->name.len, ti->name.s);
        vm_dtype dtype;
        if (ggml_type_to_dtype(ti->type, &dtype) != 0) {
            rc = vm_errf(e, "%s: tensor '%s': ggml type id %llu is not supported "
                            "(F32=0, F16=1, Q4_0=2, Q4_1=3, Q8_0=8, BF16=30)",
                         path, name, (unsigned long long)ti->type);
            break;
        }
        if (ti->ne[0] > (uint64_t)1 << 40) {
            rc = vm_errf(e, "%s: tensor '%s': ne[0] = %llu is out of range", path, name,
                         (unsigned long long)ti->ne[0]);
            break;
        }
        size_t row = vm_dtype_row_bytes(dtype, (int64_t)ti->ne[0]);
        if (row == 0 && ti->ne[0] != 0) {
            rc = vm_errf(e, "%s: tensor '%s': ne[0] = %llu is not a multiple of the %s block size %d",
                         path, name, (unsigned long long)ti->ne[0], vm_dtype_name(dtype), VM_QK);
            break;
        }
        // nbytes = row bytes x product of the outer dimensions, overflow-checked.
        uint64_t nbytes = row, nrows = 1;
        int ok = 1;
        for (uint32_t d = 1; d < ti->n_dims && ok; d++) ok = vm_mul_ok(nrows, ti->ne[d], &nrows);
        if (ok) ok = vm_mul_ok(nbytes, nrows, &nbytes);
        if (!ok) {
            rc = vm_errf(e, "%s: tensor '%s': shape overflows", path, name);
            break;
        }
        if (ti->offset % g->alignment != 0) {
            rc = vm_errf(e, "%s: tensor '%s': offset %llu is not a multiple of the alignment %u",
                         path, name, (unsigned long long)ti->offset, g->alignment);
            break;
        }
        if (ti->offset > data_size || nbytes > data_size - ti->offset) {
            rc = vm_errf(e, "%s: tensor '%s': offset %llu + %llu bytes runs past the end of the "
                            "data section (%llu bytes; file truncated?)", path, name,
                         (unsigned long long)ti->offset, (unsigned long long)nbytes,
                         (unsigned long long)data_size);
            break;
        }
        map_name(name, hf, sizeof hf);
        vm_tensor *t = vm_store_add_tensor(ws, hf, strlen(hf), (size_t)fi, e);
        if (!t) { rc = -1; break; }
        t->dtype = dtype;
        t->ndim = (int)ti->n_dims;
        for (uint32_t d = 0; d < ti->n_dims; d++) t->shape[d] = (int64_t)ti->ne[ti->n_dims - 1 - d];
        t->data = f->base + data_start + ti->offset;
        t->nbytes = nbytes;
    }
    free(infos);
    if (rc == 0) rc = vm_check_overlaps(ws, first, "offset", e);
    return rc;
}

void vm_gguf_free(vm_gguf *g) {
    if (!g) return;
    for (uint64_t i = 0; i < g->n_kv; i++) free((void *)g->kv[i].arr.strs);
    free(g->kv);
    free(g);
}

// -------------------------------------------------------------- accessors ---

int vm_gguf_get_int(const vm_gguf *g, const char *key, int64_t *out) {
    const gguf_kv *kv = find_kv(g, key);
    if (!kv) return -1;
    switch (kv->type) {
    case VM_GGUF_U8: case VM_GGUF_U16: case VM_GGUF_U32: case VM_GGUF_BOOL:
        *out = (int64_t)kv->num.u; return 0;
    case VM_GGUF_U64:
        if (kv->num.u > (uint64_t)INT64_MAX) return -1;
        *out = (int64_t)kv->num.u; return 0;
    case VM_GGUF_I8: case VM_GGUF_I16: case VM_GGUF_I32: case VM_GGUF_I64:
        *out = kv->num.i; return 0;
    default: return -1;
    }
}

int vm_gguf_get_float(const vm_gguf *g, const char *key, double *out) {
    const gguf_kv *kv = find_kv(g, key);
    if (!kv) return -1;
    switch (kv->type) {
    case VM_GGUF_F32: case VM_GGUF_F64: *out = kv->num.f; return 0;
    case VM_GGUF_U8: case VM_GGUF_U16: case VM_GGUF_U32: case VM_GGUF_U64:
        *out = (double)kv->num.u; return 0;
    case VM_GGUF_I8: case VM_GGUF_I16: case VM_GGUF_I32: case VM_GGUF_I64:
        *out = (double)kv->num.i; return 0;
    default: return -1;
    }
}

int vm_gguf_get_str(const vm_gguf *g, const char *key, vm_gguf_str *out) {
    const gguf_kv *kv = find_kv(g, key);
    if (!kv || kv->type != VM_GGUF_STRING) return -1;
    *out = kv->str;
    return 0;
}

// Numeric array elements are packed little-endian inside the mapping and are
// generally unaligned (they follow variable-length strings): read with memcpy.
int vm_gguf_get_array(const vm_gguf *g, const char *key, vm_gguf_array *out) {
    const gguf_kv *kv = find_kv(g, key);
    if (!kv || kv->type != VM_GGUF_ARRAY) return -1;
    *out = kv->arr;
    return 0;
}
