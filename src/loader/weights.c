// weights.c - the weight store: opens a path (file or directory), dispatches to
// the safetensors / GGUF readers, indexes tensors by name and hands out
// matrices (vm_weights_linear) and vectors (vm_weights_vector) with their
// shapes checked. All tensor data stays inside read-only mmaps.
#include "loader_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

// ---------------------------------------------------------------- files ----

int vm_store_map_file(vm_weight_store *ws, const char *path, vm_err *e) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return vm_errf(e, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return vm_errf(e, "%s: cannot stat: %s", path, strerror(errno));
    }
    if (!S_ISREG(st.st_mode)) { close(fd); return vm_errf(e, "%s: not a regular file", path); }
    if (st.st_size <= 0) { close(fd); return vm_errf(e, "%s: file is empty", path); }
    if ((uint64_t)st.st_size > (uint64_t)SIZE_MAX) {
        close(fd); return vm_errf(e, "%s: file too large to map", path);
    }
    size_t size = (size_t)st.st_size;
    void *base = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd); // the mapping keeps the file alive
    if (base == MAP_FAILED) return vm_errf(e, "%s: mmap failed: %s", path, strerror(errno));

    if (ws->n_files == ws->cap_files) {
        size_t cap = ws->cap_files ? ws->cap_files * 2 : 4;
        vm_mapped_file *nf = realloc(ws->files, cap * sizeof *nf);
        if (!nf) { munmap(base, size); return vm_errf(e, "%s: out of memory", path); }
        ws->files = nf; ws->cap_files = cap;
    }
    char *p = strdup(path);
    if (!p) { munmap(base, size); return vm_errf(e, "%s: out of memory", path); }
    ws->files[ws->n_files] = (vm_mapped_file){.path = p, .base = base, .size = size};
    return (int)ws->n_files++;
}

// Checkpoint layouts that nest the text decoder under a prefix keep the
// decoder's names below it: mlx-vlm writes language_model.model.* and
// language_model.lm_head.*, transformers 5 model.language_model.*. The store
// indexes them under the plain decoder names (model.*, lm_head.*); other
// names (vision_tower.*, visual.*, GGUF's blk.*) pass unchanged.
// Returns the length of the prefix to drop and sets *repl to what replaces it.
size_t vm_name_alias(const char *name, size_t name_len, const char **repl) {
    static const struct { const char *from, *to; } map[] = {
        { "language_model.model.", "model." },
        { "language_model.lm_head.", "lm_head." },
        { "model.language_model.", "model." },
    };
    for (size_t i = 0; i < VM_ARRAY_LEN(map); i++) {
        size_t n = strlen(map[i].from);
        if (name_len >= n && memcmp(name, map[i].from, n) == 0) { *repl = map[i].to; return n; }
    }
    *repl = "";
    return 0;
}

vm_tensor *vm_store_add_tensor(vm_weight_store *ws, const char *name, size_t name_len,
                               size_t file_index, vm_err *e) {
    if (ws->n_tensors == ws->cap_tensors) {
        size_t cap = ws->cap_tensors ? ws->cap_tensors * 2 : 64;
        vm_tensor *nt = realloc(ws->tensors, cap * sizeof *nt);
        if (!nt) { vm_errf(e, "%s: out of memory", ws->files[file_index].path); return NULL; }
        ws->tensors = nt; ws->cap_tensors = cap;
    }
    const char *repl;
    size_t drop = vm_name_alias(name, name_len, &repl), rl = strlen(repl);
    char *copy = malloc(name_len - drop + rl + 1);
    if (!copy) { vm_errf(e, "%s: out of memory", ws->files[file_index].path); return NULL; }
    memcpy(copy, repl, rl);
    memcpy(copy + rl, name + drop, name_len - drop);
    copy[rl + name_len - drop] = 0;
    vm_tensor *t = &ws->tensors[ws->n_tensors++];
    memset(t, 0, sizeof *t);
    t->name = copy;
    t->file = ws->files[file_index].path;
    return t;
}

// ------------------------------------------------------------- overlaps ----

// qsort comparators get pointers to array elements; the arrays below hold
// tensor pointers, so no global state is needed.
static int cmp_by_data(const void *a, const void *b) {
    uintptr_t px = (uintptr_t)(*(const vm_tensor *const *)a)->data;
    uintptr_t py = (uintptr_t)(*(const vm_tensor *const *)b)->data;
    return px < py ? -1 : px > py;
}

// Tensors [first, n_tensors) all come from one file. Sorts them by start and
// checks that each ends before the next begins (empty tensors never overlap).
int vm_check_overlaps(const vm_weight_store *ws, size_t first, const char *what, vm_err *e) {
    size_t n = ws->n_tensors - first;
    if (n < 2) return 0;
    const vm_tensor **ord = malloc(n * sizeof *ord);
    if (!ord) return vm_errf(e, "%s: out of memory", ws->tensors[first].file);
    for (size_t i = 0; i < n; i++) ord[i] = &ws->tensors[first + i];
    qsort(ord, n, sizeof *ord, cmp_by_data);
    int rc = 0;
    const vm_tensor *prev = NULL;
    for (size_t i = 0; i < n; i++) {
        const vm_tensor *t = ord[i];
        if (t->nbytes == 0) continue;
        if (prev && (const uint8_t *)prev->data + prev->nbytes > (const uint8_t *)t->data) {
            rc = vm_errf(e, "%s: tensor '%s': %s overlap those of tensor '%s'",
                         t->file, t->name, what, prev->name);
            break;
        }
        prev = t;
    }
    free(ord);
    return rc;
}

// ----------------------------------------------------------------- index ---

static int cmp_by_name(const void *a, const void *b) {
    return strcmp((*(const vm_tensor *const *)a)->name, (*(const vm_tensor *const *)b)->name);
}

// Called once all tensors are in (the tensor array no longer moves).
static int build_index(vm_weight_store *ws, vm_err *e) {
    size_t n = ws->n_tensors;
    const vm_tensor **ord = malloc((n ? n : 1) * sizeof *ord);
    ws->sorted = malloc((n ? n : 1) * sizeof *ws->sorted);
    if (!ord || !ws->sorted) { free(ord); return vm_errf(e, "%s: out of memory", ws->path); }
    for (size_t i = 0; i < n; i++) ord[i] = &ws->tensors[i];
    qsort(ord, n, sizeof *ord, cmp_by_name);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        ws->sorted[i] = (size_t)(ord[i] - ws->tensors);
        if (i && rc == 0 && strcmp(ord[i - 1]->name, ord[i]->name) == 0)
            rc = vm_errf(e, "%s: tensor '%s' appears twice (also in %s)", ord[i]->file,
                         ord[i]->name, ord[i - 1]->file);
    }
    free(ord);
    return rc;
}

const vm_tensor *vm_weights_find(const vm_weight_store *ws, const char *name) {
    if (!ws || !name) return NULL;
    size_t lo = 0, hi = ws->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const vm_tensor *t = &ws->tensors[ws->sorted[mid]];
        int c = strcmp(name, t->name);
        if (c == 0) return t;
        if (c < 0) hi = mid; else lo = mid + 1;
    }
    return NULL;
}

// ------------------------------------------------------------------ open ----

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static char *join_path(const char *dir, const char *name) {
    size_t n = strlen(dir), m = strlen(name);
    char *p = malloc(n + m + 2);
    if (!p) return NULL;
    memcpy(p, dir, n);
    size_t k = n;
    if (k && p[k - 1] != '/') p[k++] = '/';
    memcpy(p + k, name, m + 1);
    return p;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

// A directory without model.safetensors / the index: load every *.safetensors
// file in it (sorted by name), or else a single *.gguf file.
static int load_dir_fallback(vm_weight_store *ws, const char *dir, vm_err *e) {
    DIR *d = opendir(dir);
    if (!d) return vm_errf(e, "%s: cannot open directory: %s", dir, strerror(errno));
    char **st = NULL, *gguf = NULL;
    size_t n_st = 0, cap = 0;
    int n_gguf = 0, rc = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') continue;
        if (ends_with(de->d_name, ".safetensors")) {
            if (n_st == cap) {
                cap = cap ? cap * 2 : 8;
                char **ns = realloc(st, cap * sizeof *ns);
                if (!ns) { rc = vm_errf(e, "%s: out of memory", dir); break; }
                st = ns;
            }
            if (!(st[n_st] = join_path(dir, de->d_name))) { rc = vm_errf(e, "%s: out of memory", dir); break; }
            n_st++;
        } else if (ends_with(de->d_name, ".gguf")) {
            n_gguf++;
            free(gguf);
            gguf = join_path(dir, de->d_name);
        }
    }
    closedir(d);
    if (rc == 0) {
        if (n_st) {
            qsort(st, n_st, sizeof *st, cmp_str);
            ws->format = VM_FORMAT_SAFETENSORS;
            for (size_t i = 0; i < n_st && rc == 0; i++) rc = vm_safetensors_load_file(ws, st[i], e);
        } else if (n_gguf == 1 && gguf) {
            ws->format = VM_FORMAT_GGUF;
            rc = vm_gguf_load(ws, gguf, e);
        } else if (n_gguf > 1) {
            rc = vm_errf(e, "%s: directory holds %d .gguf files; pass one of them", dir, n_gguf);
        } else {
            rc = vm_errf(e, "%s: no model.safetensors, model.safetensors.index.json, "
                            "*.safetensors or *.gguf file in directory", dir);
        }
    }
    for (size_t i = 0; i < n_st; i++) free(st[i]);
    free(st);
    free(gguf);
    return rc;
}

static int load_directory(vm_weight_store *ws, const char *dir, vm_err *e) {
    char *config = join_path(dir, "config.json");
    char *index = join_path(dir, "model.safetensors.index.json");
    char *single = join_path(dir, "model.safetensors");
    int rc = 0;
    if (!config || !index || !single) rc = vm_errf(e, "%s: out of memory", dir);
    else if (file_exists(index)) rc = vm_safetensors_load_index(ws, index, e);
    else if (file_exists(single)) rc = vm_safetensors_load_file(ws, single, e);
    else rc = load_dir_fallback(ws, dir, e);
    if (rc == 0 && ws->format != VM_FORMAT_GGUF && file_exists(config)) {
        rc = vm_mlx_load_config(ws, config, e);
        if (rc == 0 && ws->has_quant) ws->format = VM_FORMAT_MLX;
    }
    free(config); free(index); free(single);
    return rc;
}

vm_weight_store *vm_weights_open(const char *path, vm_err *e) {
    if (!path || !*path) { vm_errf(e, "weights: empty model path"); return NULL; }
    vm_weight_store *ws = calloc(1, sizeof *ws);
    if (!ws || !(ws->path = strdup(path))) {
        free(ws);
        vm_errf(e, "%s: out of memory", path);
        return NULL;
    }
    struct stat st;
    int rc;
    if (stat(path, &st) != 0) {
        rc = vm_errf(e, "%s: cannot open: %s", path, strerror(errno));
    } else if (S_ISDIR(st.st_mode)) {
        rc = load_directory(ws, path, e);
    } else if (ends_with(path, ".gguf")) {
        ws->format = VM_FORMAT_GGUF;
        rc = vm_gguf_load(ws, path, e);
    } else {
        // Anything else is sniffed: GGUF files start with the magic "GGUF".
        unsigned char magic[4] = {0};
        FILE *f = fopen(path, "rb");
        size_t got = f ? fread(magic, 1, 4, f) : 0;
        if (f) fclose(f);
        if (got == 4 && memcmp(magic, "GGUF", 4) == 0) {
            ws->format = VM_FORMAT_GGUF;
            rc = vm_gguf_load(ws, path, e);
        } else {
            ws->format = VM_FORMAT_SAFETENSORS;
            rc = vm_safetensors_load_file(ws, path, e);
        }
    }
    if (rc == 0) rc = build_index(ws, e);
    if (rc != 0) { vm_weights_free(ws); return NULL; }
    return ws;
}

void vm_weights_free(vm_weight_store *ws) {
    if (!ws) return;
    for (size_t i = 0; i < ws->n_tensors; i++) free((char *)ws->tensors[i].name);
    free(ws->tensors);
    free(ws->sorted);
    for (size_t i = 0; i < ws->n_files; i++) {
        munmap((void *)ws->files[i].base, ws->files[i].size);
        free(ws->files[i].path);
    }
    free(ws->files);
    for (size_t i = 0; i < ws->n_overrides; i++) free(ws->overrides[i].module);
    free(ws->overrides);
    vm_gguf_free(ws->gguf);
    free(ws->path);
    free(ws);
}

// ------------------------------------------------------------- accessors ---

vm_weight_format vm_weights_format(const vm_weight_store *ws) { return ws->format; }
const char *vm_weights_path(const vm_weight_store *ws) { return ws->path; }
size_t vm_weights_count(const vm_weight_store *ws) { return ws ? ws->n_tensors : 0; }
const vm_gguf *vm_weights_gguf(const vm_weight_store *ws) { return ws ? ws->gguf : NULL; }

const vm_tensor *vm_weights_at(const vm_weight_store *ws, size_t i) {
    return ws && i < ws->n_tensors ? &ws->tensors[i] : NULL;
}

uint64_t vm_weights_total_bytes(const vm_weight_store *ws) {
    uint64_t sum = 0;
    for (size_t i = 0; ws && i < ws->n_tensors; i++) sum += ws->tensors[i].nbytes;
    return sum;
}

size_t vm_weight_row_bytes(const vm_weight *w) {
    if (w->dtype == VM_DTYPE_MLX_AFFINE) return (size_t)w->cols * (size_t)w->bits / 8;
    return vm_dtype_row_bytes(w->dtype, w->cols);
}

// --------------------------------------------------------- linear/vector ---

static void shape_str(const vm_tensor *t, char *buf, size_t cap) {
    size_t k = 0;
    k += (size_t)snprintf(buf + k, cap - k, "[");
    for (int i = 0; i < t->ndim && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
}

static const vm_quant_override *find_override(const vm_weight_store *ws, const char *prefix) {
    for (size_t i = 0; i < ws->n_overrides; i++)
        if (strcmp(ws->overrides[i].module, prefix) == 0) return &ws->overrides[i];
    return NULL;
}

static int is_float_dtype(vm_dtype t) {
    return t == VM_DTYPE_F32 || t == VM_DTYPE_F16 || t == VM_DTYPE_BF16;
}

// MLX affine: prefix.weight is U32 [rows, cols*bits/32]; prefix.scales and
// prefix.biases are [rows, cols/group_size] in F16/BF16/F32.
static int mlx_linear(const vm_weight_store *ws, const char *prefix, const vm_tensor *wt,
                      int64_t rows, int64_t cols, int bits, int group_size,
                      vm_weight *w, vm_err *e) {
    char name[512], shp[96];
    if (wt->dtype != VM_DTYPE_U32)
        return vm_errf(e, "%s: tensor '%s': MLX quantized weight must be U32, found %s",
                       wt->file, wt->name, vm_dtype_name(wt->dtype));
    if ((cols * bits) % 32 != 0 || cols % group_size != 0)
        return vm_errf(e, "%s: tensor '%s': %lld columns do not fit %d-bit packing with group size %d",
                       wt->file, wt->name, (long long)cols, bits, group_size);
    int64_t packed = cols * bits / 32, groups = cols / group_size;
    if (wt->ndim != 2 || wt->shape[0] != rows || wt->shape[1] != packed) {
        shape_str(wt, shp, sizeof shp);
        return vm_errf(e, "%s: tensor '%s': shape %s, expected [%lld, %lld] "
                          "(logical [%lld, %lld] at %d bits)", wt->file, wt->name, shp,
                       (long long)rows, (long long)packed, (long long)rows, (long long)cols, bits);
    }
    const vm_tensor *parts[2];
    const char *suffix[2] = {"scales", "biases"};
    for (int i = 0; i < 2; i++) {
        snprintf(name, sizeof name, "%s.%s", prefix, suffix[i]);
        const vm_tensor *t = parts[i] = vm_weights_find(ws, name);
        if (!t)
            return vm_errf(e, "%s: tensor '%s' missing (needed by quantized '%s')",
                           wt->file, name, wt->name);
        if (!is_float_dtype(t->dtype))
            return vm_errf(e, "%s: tensor '%s': dtype %s, expected F16/BF16/F32",
                           t->file, t->name, vm_dtype_name(t->dtype));
        if (t->ndim != 2 || t->shape[0] != rows || t->shape[1] != groups) {
            shape_str(t, shp, sizeof shp);
            return vm_errf(e, "%s: tensor '%s': shape %s, expected [%lld, %lld] (group size %d)",
                           t->file, t->name, shp, (long long)rows, (long long)groups, group_size);
        }
    }
    if (parts[0]->dtype != parts[1]->dtype)
        return vm_errf(e, "%s: tensor '%s': dtype %s differs from scales' %s", parts[1]->file,
                       parts[1]->name, vm_dtype_name(parts[1]->dtype), vm_dtype_name(parts[0]->dtype));
    w->dtype = VM_DTYPE_MLX_AFFINE;
    w->bits = bits;
    w->group_size = group_size;
    w->scale_dtype = parts[0]->dtype;
    w->scales = parts[0]->data;
    w->biases = parts[1]->data;
    return 0;
}

int vm_weights_linear(const vm_weight_store *ws, const char *prefix,
                      int64_t rows, int64_t cols, vm_weight *w, vm_err *e) {
    char name[512], shp[96];
    memset(w, 0, sizeof *w);
    if (rows <= 0 || cols <= 0)
        return vm_errf(e, "%s: linear '%s': bad requested shape (%lld, %lld)", ws->path, prefix,
                       (long long)rows, (long long)cols);
    if ((size_t)snprintf(name, sizeof name, "%s.weight", prefix) >= sizeof name)
        return vm_errf(e, "%s: linear '%s': name too long", ws->path, prefix);
    const vm_tensor *wt = vm_weights_find(ws, name);
    if (!wt) return vm_errf(e, "%s: tensor '%s' missing", ws->path, name);
    w->name = wt->name;
    w->rows = rows;
    w->cols = cols;
    w->data = wt->data;

    // MLX quantization: the config says so (default or per-layer), or, when the
    // config gives nothing for this layer, a .scales tensor beside it does.
    char sname[520];
    snprintf(sname, sizeof sname, "%s.scales", prefix);
    const vm_quant_override *ov = find_override(ws, prefix);
    int quantized = 0, bits = 0, group = 0;
    if (ov) {
        quantized = ov->quantized; bits = ov->bits; group = ov->group_size;
    } else if (ws->has_quant && wt->dtype == VM_DTYPE_U32) {
        quantized = 1; bits = ws->quant_bits; group = ws->quant_group_size;
    } else if (wt->dtype == VM_DTYPE_U32 && vm_weights_find(ws, sname)) {
        // No config: infer bits and group size from the shapes.
        const vm_tensor *sc = vm_weights_find(ws, sname);
        if (wt->ndim == 2 && sc->ndim == 2 && wt->shape[1] > 0 && sc->shape[1] > 0 &&
            (wt->shape[1] * 32) % cols == 0 && cols % sc->shape[1] == 0) {
            quantized = 1;
            bits = (int)(wt->shape[1] * 32 / cols);
            group = (int)(cols / sc->shape[1]);
        }
    }
    if (quantized) return mlx_linear(ws, prefix, wt, rows, cols, bits, group, w, e);

    w->dtype = wt->dtype;
    switch (wt->dtype) {
    case VM_DTYPE_F32: case VM_DTYPE_F16: case VM_DTYPE_BF16: break;
    case VM_DTYPE_Q4_0: case VM_DTYPE_Q4_1: case VM_DTYPE_Q8_0:
        if (cols % VM_QK != 0)
            return vm_errf(e, "%s: tensor '%s': %s needs columns a multiple of %d, got %lld",
                           wt->file, wt->name, vm_dtype_name(wt->dtype), VM_QK, (long long)cols);
        break;
    default:
        return vm_errf(e, "%s: tensor '%s': dtype %s is not a matrix dtype%s", wt->file, wt->name,
                       vm_dtype_name(wt->dtype),
                       wt->dtype == VM_DTYPE_U32 ? " (quantized weight without quantization config/scales?)" : "");
    }
    if (wt->ndim != 2 || wt->shape[0] != rows || wt->shape[1] != cols) {
        shape_str(wt, shp, sizeof shp);
        return vm_errf(e, "%s: tensor '%s': shape %s, expected [%lld, %lld]", wt->file, wt->name,
                       shp, (long long)rows, (long long)cols);
    }
    return 0;
}

const vm_tensor *vm_weights_vector(const vm_weight_store *ws, const char *name,
                                   int64_t n, int required, vm_err *e) {
    char shp[96];
    const vm_tensor *t = vm_weights_find(ws, name);
    if (!t) {
        if (required) vm_errf(e, "%s: tensor '%s' missing", ws->path, name);
        else if (e) e->msg[0] = 0; // optional and absent: NULL with an empty message
        return NULL;
    }
    if (!is_float_dtype(t->dtype)) {
        vm_errf(e, "%s: tensor '%s': dtype %s, expected F32/F16/BF16", t->file, t->name,
                vm_dtype_name(t->dtype));
        return NULL;
    }
    if (t->ndim != 1 || t->shape[0] != n) {
        shape_str(t, shp, sizeof shp);
        vm_errf(e, "%s: tensor '%s': shape %s, expected [%lld]", t->file, t->name, shp, (long long)n);
        return NULL;
    }
    return t;
}
