// safetensors.c - safetensors files, sharded safetensors (index.json) and the
// MLX quantization block of config.json.
//
// A safetensors file is:
//   u64 N (little-endian)            length of the header
//   N bytes of JSON                  {"name": {"dtype": "F16", "shape": [r, c],
//                                              "data_offsets": [begin, end]}, ...,
//                                     "__metadata__": {"k": "v", ...}}
//   data                             tensor bytes; offsets are relative to 8+N
// Tensors are row-major, little-endian. Files written by MLX do not pad the
// header, so tensor data may sit at any byte offset: we never assume alignment.
//
// Sharded checkpoints have model.safetensors.index.json:
//   {"metadata": {...}, "weight_map": {"tensor name": "model-00001-of-00002.safetensors"}}
#include "loader_internal.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#define MAX_HEADER_BYTES (100u << 20)    // same cap as the reference implementation
#define MAX_INDEX_BYTES (64u << 20)
#define MAX_CONFIG_BYTES (16u << 20)

static int parse_dtype(const char *s, vm_dtype *out, size_t *elem_size) {
    static const struct { const char *name; vm_dtype t; size_t size; } table[] = {
        {"F32", VM_DTYPE_F32, 4}, {"F16", VM_DTYPE_F16, 2}, {"BF16", VM_DTYPE_BF16, 2},
        {"U32", VM_DTYPE_U32, 4}, {"I32", VM_DTYPE_I32, 4}, {"I64", VM_DTYPE_I64, 8},
        {"U8", VM_DTYPE_U8, 1},   {"I8", VM_DTYPE_I8, 1},   {"BOOL", VM_DTYPE_BOOL, 1},
    };
    for (size_t i = 0; i < VM_ARRAY_LEN(table); i++)
        if (strcmp(s, table[i].name) == 0) { *out = table[i].t; *elem_size = table[i].size; return 0; }
    return -1;
}

// One header entry -> one vm_tensor. `data` / `data_size` are the data section.
static int parse_entry(vm_weight_store *ws, size_t fi, const char *name, json_t *info,
                       const uint8_t *data, uint64_t data_size, vm_err *e) {
    const char *path = ws->files[fi].path;
    if (!json_is_object(info))
        return vm_errf(e, "%s: tensor '%s': header entry is not an object", path, name);

    json_t *jd = json_object_get(info, "dtype");
    if (!json_is_string(jd)) return vm_errf(e, "%s: tensor '%s': field 'dtype' missing or not a string", path, name);
    vm_dtype dtype;
    size_t esize;
    if (parse_dtype(json_string_value(jd), &dtype, &esize) != 0)
        return vm_errf(e, "%s: tensor '%s': unsupported dtype '%s'", path, name, json_string_value(jd));

    json_t *js = json_object_get(info, "shape");
    if (!json_is_array(js)) return vm_errf(e, "%s: tensor '%s': field 'shape' missing or not an array", path, name);
    size_t ndim = json_array_size(js);
    if (ndim > VM_MAX_DIMS)
        return vm_errf(e, "%s: tensor '%s': field 'shape' has %zu dimensions (at most %d supported)",
                       path, name, ndim, VM_MAX_DIMS);
    int64_t shape[VM_MAX_DIMS] = {0};
    uint64_t numel = 1;
    for (size_t i = 0; i < ndim; i++) {
        json_t *d = json_array_get(js, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return vm_errf(e, "%s: tensor '%s': field 'shape' entry %zu is not a non-negative integer",
                           path, name, i);
        shape[i] = json_integer_value(d);
        if (!vm_mul_ok(numel, (uint64_t)shape[i], &numel))
            return vm_errf(e, "%s: tensor '%s': field 'shape' overflows", path, name);
    }
    uint64_t expect;
    if (!vm_mul_ok(numel, esize, &expect))
        return vm_errf(e, "%s: tensor '%s': field 'shape' overflows", path, name);

    json_t *jo = json_object_get(info, "data_offsets");
    if (!json_is_array(jo) || json_array_size(jo) != 2 ||
        !json_is_integer(json_array_get(jo, 0)) || !json_is_integer(json_array_get(jo, 1)))
        return vm_errf(e, "%s: tensor '%s': field 'data_offsets' must be [begin, end]", path, name);
    json_int_t begin = json_integer_value(json_array_get(jo, 0));
    json_int_t end = json_integer_value(json_array_get(jo, 1));
    if (begin < 0 || end < 0)
        return vm_errf(e, "%s: tensor '%s': field 'data_offsets' [%lld, %lld] is negative "
                          "(would overlap the header)", path, name, (long long)begin, (long long)end);
    if (begin > end)
        return vm_errf(e, "%s: tensor '%s': field 'data_offsets' begin %lld > end %lld",
                       path, name, (long long)begin, (long long)end);
    if ((uint64_t)end > data_size)
        return vm_errf(e, "%s: tensor '%s': field 'data_offsets' end %lld is past the end of the "
                          "data (%llu bytes; file truncated?)", path, name, (long long)end,
                       (unsigned long long)data_size);
    uint64_t nbytes = (uint64_t)(end - begin);
    if (nbytes != expect)
        return vm_errf(e, "%s: tensor '%s': field 'data_offsets' spans %llu bytes but shape x %s "
                          "needs %llu", path, name, (unsigned long long)nbytes,
                       json_string_value(jd), (unsigned long long)expect);

    vm_tensor *t = vm_store_add_tensor(ws, name, strlen(name), fi, e);
    if (!t) return -1;
    t->dtype = dtype;
    t->ndim = (int)ndim;
    memcpy(t->shape, shape, sizeof shape);
    t->data = data + begin;
    t->nbytes = nbytes;
    return 0;
}

int vm_safetensors_load_file(vm_weight_store *ws, const char *path, vm_err *e) {
    int fi = vm_store_map_file(ws, path, e);
    if (fi < 0) return -1;
    const vm_mapped_file *f = &ws->files[fi];
    path = f->path; // stable copy
    if (f->size < 8)
        return vm_errf(e, "%s: header length: file is %zu bytes, too short for safetensors", path, f->size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | f->base[i]; // u64 little-endian
    if (n < 2 || n > f->size - 8)
        return vm_errf(e, "%s: header length %llu is invalid for a file of %zu bytes",
                       path, (unsigned long long)n, f->size);
    if (n > MAX_HEADER_BYTES)
        return vm_errf(e, "%s: header length %llu exceeds the %u byte limit",
                       path, (unsigned long long)n, MAX_HEADER_BYTES);

    json_error_t jerr;
    json_t *root = json_loadb((const char *)f->base + 8, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return vm_errf(e, "%s: header JSON invalid at byte %d: %s", path, jerr.position, jerr.text);
    if (!json_is_object(root)) {
        json_decref(root);
        return vm_errf(e, "%s: header JSON is not an object", path);
    }
    const uint8_t *data = f->base + 8 + n;
    uint64_t data_size = f->size - 8 - n;
    size_t first = ws->n_tensors;
    const char *name;
    json_t *info;
    int rc = 0;
    json_object_foreach(root, name, info) {
        if (strcmp(name, "__metadata__") == 0) {
            if (!json_is_object(info)) { rc = vm_errf(e, "%s: field '__metadata__' is not an object", path); break; }
            continue;
        }
        if ((rc = parse_entry(ws, (size_t)fi, name, info, data, data_size, e)) != 0) break;
    }
    json_decref(root);
    if (rc == 0) rc = vm_check_overlaps(ws, first, "data_offsets", e);
    return rc;
}

// ------------------------------------------------------------- sharding ----

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp((*(const vm_tensor *const *)a)->name, (*(const vm_tensor *const *)b)->name);
}

static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return strdup(".");
    size_t n = (size_t)(slash - path);
    char *d = malloc(n + 2);
    if (!d) return NULL;
    if (n == 0) { d[0] = '/'; d[1] = 0; return d; }
    memcpy(d, path, n);
    d[n] = 0;
    return d;
}

// Shard names come from a file we do not trust: only plain names in the
// index's own directory ("model-00001-of-00002.safetensors").
static int shard_name_ok(const char *s) {
    return *s && !strchr(s, '/') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

int vm_safetensors_load_index(vm_weight_store *ws, const char *index_path, vm_err *e) {
    size_t len;
    char *text = vm_read_file(index_path, &len, MAX_INDEX_BYTES, e);
    if (!text) return -1;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root) return vm_errf(e, "%s: JSON invalid at line %d: %s", index_path, jerr.line, jerr.text);
    json_t *map = json_object_get(root, "weight_map");
    char *dir = dir_of(index_path);
    const char **shards = NULL;
    size_t n_shards = 0;
    const vm_tensor **ord = NULL;
    int rc = 0;
    if (!dir) { rc = vm_errf(e, "%s: out of memory", index_path); goto done; }
    if (!json_is_object(map)) { rc = vm_errf(e, "%s: field 'weight_map' missing or not an object", index_path); goto done; }
    if (json_object_size(map) == 0) { rc = vm_errf(e, "%s: field 'weight_map' is empty", index_path); goto done; }

    // Distinct shard files, in order of first appearance.
    shards = calloc(json_object_size(map), sizeof *shards);
    if (!shards) { rc = vm_errf(e, "%s: out of memory", index_path); goto done; }
    const char *name;
    json_t *val;
    json_object_foreach(map, name, val) {
        if (!json_is_string(val) || !shard_name_ok(json_string_value(val))) {
            rc = vm_errf(e, "%s: field 'weight_map' entry for tensor '%s' is not a plain file name",
                         index_path, name);
            goto done;
        }
        const char *s = json_string_value(val);
        size_t k = 0;
        while (k < n_shards && strcmp(shards[k], s) != 0) k++;
        if (k == n_shards) shards[n_shards++] = s;
    }
    for (size_t k = 0; k < n_shards; k++) {
        size_t dl = strlen(dir), sl = strlen(shards[k]);
        char *p = malloc(dl + sl + 2);
        if (!p) { rc = vm_errf(e, "%s: out of memory", index_path); goto done; }
        snprintf(p, dl + sl + 2, "%s/%s", dir, shards[k]);
        rc = vm_safetensors_load_file(ws, p, e);
        free(p);
        if (rc) goto done;
    }

    // Every tensor the index names must be in the shard it names.
    ord = malloc((ws->n_tensors ? ws->n_tensors : 1) * sizeof *ord);
    if (!ord) { rc = vm_errf(e, "%s: out of memory", index_path); goto done; }
    for (size_t i = 0; i < ws->n_tensors; i++) ord[i] = &ws->tensors[i];
    qsort(ord, ws->n_tensors, sizeof *ord, cmp_tensor_name);
    for (size_t i = 1; i < ws->n_tensors; i++)
        if (strcmp(ord[i - 1]->name, ord[i]->name) == 0) {
            rc = vm_errf(e, "%s: tensor '%s' appears twice (also in %s)", ord[i]->file,
                         ord[i]->name, ord[i - 1]->file);
            goto done;
        }
    json_object_foreach(map, name, val) {
        // the store holds the aliased name (vm_name_alias); look that up
        char alias[512];
        const char *repl;
        size_t nl = strlen(name), drop = vm_name_alias(name, nl, &repl);
        if (drop) snprintf(alias, sizeof alias, "%s%s", repl, name + drop);
        vm_tensor key = {.name = drop ? alias : name};
        const vm_tensor *kp = &key;
        const vm_tensor **hit = bsearch(&kp, ord, ws->n_tensors, sizeof *ord, cmp_tensor_name);
        const char *shard = json_string_value(val);
        if (!hit) {
            rc = vm_errf(e, "%s: tensor '%s' listed in the index is missing from %s/%s",
                         index_path, name, dir, shard);
            goto done;
        }
        const char *base = strrchr((*hit)->file, '/');
        base = base ? base + 1 : (*hit)->file;
        if (strcmp(base, shard) != 0) {
            rc = vm_errf(e, "%s: tensor '%s' is listed in %s but found in %s",
                         index_path, name, shard, (*hit)->file);
            goto done;
        }
    }
done:
    free(ord);
    free(shards);
    free(dir);
    json_decref(root);
    return rc;
}

// --------------------------------------------------------- MLX config ------
//
// mlx-lm writes config.json "quantization" (and a copy as "quantization_config"):
//   {"group_size": 64, "bits": 4, ["mode": "affine"],
//    "model.layers.0.mlp.down_proj": {"group_size": 64, "bits": 8},   // override
//    "lm_head": false}                                                 // not quantized

static int quant_params_ok(int bits, int group_size) {
    return (bits == 2 || bits == 3 || bits == 4 || bits == 5 || bits == 6 || bits == 8) &&
           group_size > 0 && group_size <= 4096;
}

static int read_int_field(json_t *obj, const char *key, int *out) {
    json_t *v = json_object_get(obj, key);
    if (!v) return 1; // absent
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 1 << 20) return -1;
    *out = (int)json_integer_value(v);
    return 0;
}

int vm_mlx_load_config(vm_weight_store *ws, const char *config_path, vm_err *e) {
    size_t len;
    char *text = vm_read_file(config_path, &len, MAX_CONFIG_BYTES, e);
    if (!text) return -1;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, 0, &jerr);
    free(text);
    if (!root) return vm_errf(e, "%s: JSON invalid at line %d: %s", config_path, jerr.line, jerr.text);
    int rc = 0;
    const char *field = "quantization";
    json_t *q = json_object_get(root, field);
    if (!q) { field = "quantization_config"; q = json_object_get(root, field); }
    if (!q || json_is_null(q)) goto done;
    if (!json_is_object(q)) { rc = vm_errf(e, "%s: field '%s' is not an object", config_path, field); goto done; }

    json_t *method = json_object_get(q, "quant_method");
    if (method) { // transformers' GPTQ/AWQ/... configs: not MLX affine
        rc = vm_errf(e, "%s: field '%s.quant_method' = '%s' is not supported (only MLX affine)",
                     config_path, field, json_is_string(method) ? json_string_value(method) : "?");
        goto done;
    }
    json_t *mode = json_object_get(q, "mode");
    if (mode && (!json_is_string(mode) || strcmp(json_string_value(mode), "affine") != 0)) {
        rc = vm_errf(e, "%s: field '%s.mode' = '%s' is not supported (only affine)", config_path,
                     field, json_is_string(mode) ? json_string_value(mode) : "?");
        goto done;
    }
    int bits = 0, group = 0;
    if (read_int_field(q, "bits", &bits) != 0 || read_int_field(q, "group_size", &group) != 0 ||
        !quant_params_ok(bits, group)) {
        rc = vm_errf(e, "%s: field '%s': bits/group_size missing or invalid", config_path, field);
        goto done;
    }
    ws->has_quant = 1;
    ws->quant_bits = bits;
    ws->quant_group_size = group;

    size_t n = 0;
    const char *key;
    json_t *val;
    json_object_foreach(q, key, val) if (json_is_object(val) || json_is_boolean(val)) n++;
    if (n) {
        ws->overrides = calloc(n, sizeof *ws->overrides);
        if (!ws->overrides) { rc = vm_errf(e, "%s: out of memory", config_path); goto done; }
    }
    json_object_foreach(q, key, val) {
        if (!json_is_object(val) && !json_is_boolean(val)) continue;
        vm_quant_override ov = {.quantized = json_is_object(val) || json_is_true(val),
                                .bits = bits, .group_size = group};
        if (json_is_object(val) &&
            (read_int_field(val, "bits", &ov.bits) < 0 || read_int_field(val, "group_size", &ov.group_size) < 0 ||
             !quant_params_ok(ov.bits, ov.group_size))) {
            rc = vm_errf(e, "%s: field '%s.%s': bits/group_size invalid", config_path, field, key);
            goto done;
        }
        const char *repl;
        size_t klen = strlen(key), drop = vm_name_alias(key, klen, &repl), rl = strlen(repl);
        if (!(ov.module = malloc(klen - drop + rl + 1))) { rc = vm_errf(e, "%s: out of memory", config_path); goto done; }
        memcpy(ov.module, repl, rl);
        memcpy(ov.module + rl, key + drop, klen - drop + 1);
        ws->overrides[ws->n_overrides++] = ov;
    }
done:
    json_decref(root);
    return rc;
}
