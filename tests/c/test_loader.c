// test_loader.c - weight loader tests. Every file is synthesized here into a
// temporary directory: valid safetensors (single, directory, sharded, MLX
// quantized, unaligned), valid GGUF v2/v3 with all metadata types, then a
// corrupted copy for each error case, asserting that the message names the
// file and the tensor or field. The real SmolLM2 GGUF is checked when present.
#include <criterion/criterion.h>
#include <ftw.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "loader/weights.h"

// ---------------------------------------------------------------- helpers ---

static char g_dir[256];

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb; (void)flag; (void)ftw;
    return remove(p);
}
static void setup(void) {
    const char *tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/vm_loader_XXXXXX", tmp && *tmp ? tmp : "/tmp");
    cr_assert_not_null(mkdtemp(g_dir));
}
static void teardown(void) { nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

TestSuite(loader, .init = setup, .fini = teardown);

// Path inside the temp dir (rotating static buffers; no leaks).
static const char *tp(const char *name) {
    static char bufs[16][512];
    static int k;
    char *b = bufs[k++ % 16];
    snprintf(b, 512, "%s/%s", g_dir, name);
    return b;
}

static void write_file(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "cannot write %s", path);
    if (n) cr_assert_eq(fwrite(p, 1, n, f), n);
    fclose(f);
}
static void write_text(const char *path, const char *s) { write_file(path, s, strlen(s)); }

// Overwrites one byte of an existing file in place.
static void poke(const char *path, size_t at, uint8_t v) {
    FILE *f = fopen(path, "r+b");
    cr_assert_not_null(f);
    fseek(f, (long)at, SEEK_SET);
    fputc(v, f);
    fclose(f);
}

typedef struct { uint8_t *p; size_t n, cap; } buf;
static void put(buf *b, const void *src, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
    }
    if (n) memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void put_u8(buf *b, uint8_t v) { put(b, &v, 1); }
static void put_u32(buf *b, uint32_t v) { uint8_t x[4]; for (int i = 0; i < 4; i++) x[i] = (uint8_t)(v >> 8 * i); put(b, x, 4); }
static void put_u64(buf *b, uint64_t v) { uint8_t x[8]; for (int i = 0; i < 8; i++) x[i] = (uint8_t)(v >> 8 * i); put(b, x, 8); }
static void put_str(buf *b, const char *s) { put_u64(b, strlen(s)); put(b, s, strlen(s)); }
static void pad_to(buf *b, size_t align) { while (b->n % align) put_u8(b, 0); }
static void buf_free(buf *b) { free(b->p); memset(b, 0, sizeof *b); }

// Opening `path` must fail with a message naming `file` and containing `what`.
static void expect_open_fail(const char *path, const char *file, const char *what) {
    vm_err e = {{0}};
    vm_weight_store *ws = vm_weights_open(path, &e);
    cr_assert_null(ws, "open of %s should fail (%s)", path, what);
    vm_weights_free(ws);
    cr_assert(strstr(e.msg, file) != NULL, "message should name file %s: %s", file, e.msg);
    cr_assert(strstr(e.msg, what) != NULL, "message should contain '%s': %s", what, e.msg);
}

static vm_weight_store *open_ok(const char *path) {
    vm_err e = {{0}};
    vm_weight_store *ws = vm_weights_open(path, &e);
    cr_assert_not_null(ws, "open %s: %s", path, e.msg);
    return ws;
}

// -------------------------------------------------------- safetensors -------

// Builder: header JSON object + data section.
typedef struct { json_t *hdr; buf data; } st_file;

static st_file st_new(void) { return (st_file){.hdr = json_object()}; }

static void st_add_at(st_file *s, const char *name, const char *dtype, int ndim, const int64_t *shape,
                      const void *bytes, size_t n, int64_t begin, int64_t end) {
    json_t *sh = json_array();
    for (int i = 0; i < ndim; i++) json_array_append_new(sh, json_integer(shape[i]));
    json_object_set_new(s->hdr, name, json_pack("{s:s, s:o, s:[I,I]}", "dtype", dtype, "shape", sh,
                                                "data_offsets", (json_int_t)begin, (json_int_t)end));
    (void)bytes; (void)n;
}

static void st_add(st_file *s, const char *name, const char *dtype, int ndim, const int64_t *shape,
                   const void *bytes, size_t n) {
    int64_t begin = (int64_t)s->data.n;
    put(&s->data, bytes, n);
    st_add_at(s, name, dtype, ndim, shape, bytes, n, begin, (int64_t)s->data.n);
}

// Writes the file. pad8: pad the header with spaces to a multiple of 8 (as the
// Python safetensors library does); 0 leaves it as is (as MLX does).
static void st_write(st_file *s, const char *path, int pad8) {
    char *h = json_dumps(s->hdr, JSON_COMPACT);
    buf out = {0};
    size_t hl = strlen(h), padded = hl;
    if (pad8) while ((8 + padded) % 8) padded++;
    put_u64(&out, padded);
    put(&out, h, hl);
    for (size_t i = hl; i < padded; i++) put_u8(&out, ' ');
    put(&out, s->data.p, s->data.n);
    write_file(path, out.p, out.n);
    free(h);
    buf_free(&out);
}
static void st_free(st_file *s) { json_decref(s->hdr); buf_free(&s->data); }

// A header given as text, with the declared length given separately.
static void write_st_raw(const char *path, uint64_t declared, const char *header, const void *data, size_t n) {
    buf out = {0};
    put_u64(&out, declared);
    put(&out, header, strlen(header));
    put(&out, data, n);
    write_file(path, out.p, out.n);
    buf_free(&out);
}

#define SHAPE(...) (sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), ((const int64_t[]){__VA_ARGS__})

Test(loader, safetensors_all_dtypes) {
    float f32[6] = {1, 2, 3, 4, 5, 6};
    uint16_t f16[4], bf16[3];
    for (int i = 0; i < 4; i++) f16[i] = vm_f32_to_f16((float)i + 0.5f);
    for (int i = 0; i < 3; i++) bf16[i] = vm_f32_to_bf16((float)-i);
    uint32_t u32[2] = {0xdeadbeef, 7};
    int32_t i32[3] = {-1, 0, 1};
    int64_t i64[2] = {-5, 1LL << 40};
    uint8_t u8[5] = {1, 2, 3, 4, 5};
    int8_t i8[2] = {-128, 127};
    uint8_t bo[3] = {1, 0, 1};
    float scalar = 42;
    st_file s = st_new();
    st_add(&s, "a.f32", "F32", SHAPE(2, 3), f32, sizeof f32);
    st_add(&s, "a.f16", "F16", SHAPE(4), f16, sizeof f16);
    st_add(&s, "a.bf16", "BF16", SHAPE(1, 3), bf16, sizeof bf16);
    st_add(&s, "a.u32", "U32", SHAPE(2), u32, sizeof u32);
    st_add(&s, "a.i32", "I32", SHAPE(3), i32, sizeof i32);
    st_add(&s, "a.i64", "I64", SHAPE(2, 1), i64, sizeof i64);
    st_add(&s, "a.u8", "U8", SHAPE(5), u8, sizeof u8);
    st_add(&s, "a.i8", "I8", SHAPE(2), i8, sizeof i8);
    st_add(&s, "a.bool", "BOOL", SHAPE(3), bo, sizeof bo);
    st_add_at(&s, "a.scalar", "F32", 0, NULL, NULL, 0, (int64_t)s.data.n, (int64_t)s.data.n + 4);
    put(&s.data, &scalar, 4);
    st_add(&s, "a.empty", "F32", SHAPE(0, 4), NULL, 0);
    json_object_set_new(s.hdr, "__metadata__", json_pack("{s:s}", "format", "pt"));
    st_write(&s, tp("m.safetensors"), 1);
    st_free(&s);

    vm_weight_store *ws = open_ok(tp("m.safetensors"));
    cr_assert_eq(vm_weights_format(ws), VM_FORMAT_SAFETENSORS);
    cr_assert_str_eq(vm_weights_path(ws), tp("m.safetensors"));
    cr_assert_eq(vm_weights_count(ws), 11);
    cr_assert_null(vm_weights_gguf(ws));
    cr_assert_null(vm_weights_find(ws, "__metadata__"));
    cr_assert_null(vm_weights_find(ws, "nope"));
    struct { const char *name; vm_dtype t; int ndim; int64_t s0, s1; const void *src; size_t n; } want[] = {
        {"a.f32", VM_DTYPE_F32, 2, 2, 3, f32, sizeof f32}, {"a.f16", VM_DTYPE_F16, 1, 4, 0, f16, sizeof f16},
        {"a.bf16", VM_DTYPE_BF16, 2, 1, 3, bf16, sizeof bf16}, {"a.u32", VM_DTYPE_U32, 1, 2, 0, u32, sizeof u32},
        {"a.i32", VM_DTYPE_I32, 1, 3, 0, i32, sizeof i32}, {"a.i64", VM_DTYPE_I64, 2, 2, 1, i64, sizeof i64},
        {"a.u8", VM_DTYPE_U8, 1, 5, 0, u8, sizeof u8}, {"a.i8", VM_DTYPE_I8, 1, 2, 0, i8, sizeof i8},
        {"a.bool", VM_DTYPE_BOOL, 1, 3, 0, bo, sizeof bo}, {"a.scalar", VM_DTYPE_F32, 0, 0, 0, &scalar, 4},
        {"a.empty", VM_DTYPE_F32, 2, 0, 4, NULL, 0},
    };
    uint64_t total = 0;
    for (size_t i = 0; i < VM_ARRAY_LEN(want); i++) {
        const vm_tensor *t = vm_weights_find(ws, want[i].name);
        cr_assert_not_null(t, "%s", want[i].name);
        cr_assert_str_eq(t->name, want[i].name);
        cr_assert_str_eq(t->file, tp("m.safetensors"));
        cr_assert_eq(t->dtype, want[i].t, "%s", want[i].name);
        cr_assert_eq(t->ndim, want[i].ndim, "%s", want[i].name);
        if (want[i].ndim > 0) cr_assert_eq(t->shape[0], want[i].s0);
        if (want[i].ndim > 1) cr_assert_eq(t->shape[1], want[i].s1);
        cr_assert_eq(t->nbytes, want[i].n);
        if (want[i].n) cr_assert(memcmp(t->data, want[i].src, want[i].n) == 0, "%s data", want[i].name);
        total += want[i].n;
    }
    cr_assert_eq(vm_weights_total_bytes(ws), total);
    size_t seen = 0;
    for (size_t i = 0; i < vm_weights_count(ws); i++) seen += vm_weights_at(ws, i) != NULL;
    cr_assert_eq(seen, 11);
    cr_assert_null(vm_weights_at(ws, 11));

    vm_err e = {{0}};
    vm_weight w;
    cr_assert_eq(vm_weights_linear(ws, "a", 2, 3, &w, &e), -1); // a.weight does not exist
    cr_assert(strstr(e.msg, "a.weight") && strstr(e.msg, "m.safetensors"), "%s", e.msg);
    vm_weights_free(ws);
}

// Directory with model.safetensors and a config.json without quantization.
static void make_plain_model_dir(const char *dir) {
    mkdir(dir, 0755);
    uint16_t w[4 * 8], nrm[8];
    for (int i = 0; i < 32; i++) w[i] = vm_f32_to_bf16((float)i);
    for (int i = 0; i < 8; i++) nrm[i] = vm_f32_to_f16(1.0f);
    int32_t ids[2] = {1, 2};
    st_file s = st_new();
    st_add(&s, "model.layers.0.mlp.up_proj.weight", "BF16", SHAPE(4, 8), w, sizeof w);
    st_add(&s, "model.norm.weight", "F16", SHAPE(8), nrm, sizeof nrm);
    st_add(&s, "ids", "I32", SHAPE(2), ids, sizeof ids);
    st_add(&s, "model.embed_tokens.weight", "F32", SHAPE(2, 8), (float[16]){0}, 64);
    char p[600];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    st_write(&s, p, 1);
    st_free(&s);
    snprintf(p, sizeof p, "%s/config.json", dir);
    write_text(p, "{\"model_type\": \"llama\", \"hidden_size\": 8}");
}

Test(loader, directory_linear_and_vector) {
    make_plain_model_dir(tp("plain"));
    vm_weight_store *ws = open_ok(tp("plain"));
    cr_assert_eq(vm_weights_format(ws), VM_FORMAT_SAFETENSORS);
    vm_err e = {{0}};
    vm_weight w;
    cr_assert_eq(vm_weights_linear(ws, "model.layers.0.mlp.up_proj", 4, 8, &w, &e), 0, "%s", e.msg);
    cr_assert_eq(w.dtype, VM_DTYPE_BF16);
    cr_assert_eq(w.rows, 4);
    cr_assert_eq(w.cols, 8);
    cr_assert_eq(vm_weight_row_bytes(&w), 16);
    cr_assert_str_eq(w.name, "model.layers.0.mlp.up_proj.weight");
    cr_assert_eq(vm_bf16_to_f32(((const uint16_t *)w.data)[9]), 9.0f);
    cr_assert_null(w.scales);
    cr_assert_eq(vm_weights_linear(ws, "model.embed_tokens", 2, 8, &w, &e), 0, "%s", e.msg);
    cr_assert_eq(w.dtype, VM_DTYPE_F32);

    // Shape that contradicts what the caller asked for.
    cr_assert_eq(vm_weights_linear(ws, "model.layers.0.mlp.up_proj", 8, 4, &w, &e), -1);
    cr_assert(strstr(e.msg, "model.layers.0.mlp.up_proj.weight") && strstr(e.msg, "plain/model.safetensors") &&
              strstr(e.msg, "[4, 8]"), "%s", e.msg);
    // Missing tensor.
    cr_assert_eq(vm_weights_linear(ws, "model.layers.1.mlp.up_proj", 4, 8, &w, &e), -1);
    cr_assert(strstr(e.msg, "model.layers.1.mlp.up_proj.weight") && strstr(e.msg, "plain"), "%s", e.msg);
    // Not a matrix dtype.
    cr_assert_eq(vm_weights_linear(ws, "ids", 1, 2, &w, &e), -1); // looks for ids.weight
    cr_assert(strstr(e.msg, "ids.weight"), "%s", e.msg);

    const vm_tensor *t = vm_weights_vector(ws, "model.norm.weight", 8, 1, &e);
    cr_assert_not_null(t, "%s", e.msg);
    cr_assert_eq(t->dtype, VM_DTYPE_F16);
    cr_assert_null(vm_weights_vector(ws, "model.norm.weight", 9, 1, &e));
    cr_assert(strstr(e.msg, "model.norm.weight") && strstr(e.msg, "model.safetensors") && strstr(e.msg, "[9]"), "%s", e.msg);
    cr_assert_null(vm_weights_vector(ws, "ids", 2, 1, &e));
    cr_assert(strstr(e.msg, "ids") && strstr(e.msg, "I32"), "%s", e.msg);
    cr_assert_null(vm_weights_vector(ws, "model.layers.0.mlp.up_proj.weight", 32, 1, &e)); // 2-D
    cr_assert(strstr(e.msg, "up_proj.weight"), "%s", e.msg);
    cr_assert_null(vm_weights_vector(ws, "model.norm.bias", 8, 1, &e));
    cr_assert(strstr(e.msg, "model.norm.bias") && strstr(e.msg, "missing"), "%s", e.msg);
    strcpy(e.msg, "stale");
    cr_assert_null(vm_weights_vector(ws, "model.norm.bias", 8, 0, &e)); // optional: empty message
    cr_assert_str_eq(e.msg, "");
    vm_weights_free(ws);
}

Test(loader, sharded_index) {
    mkdir(tp("sh"), 0755);
    float a[4] = {1, 2, 3, 4}, b[2] = {5, 6};
    st_file s1 = st_new(), s2 = st_new();
    st_add(&s1, "x.weight", "F32", SHAPE(2, 2), a, sizeof a);
    st_add(&s2, "y.weight", "F32", SHAPE(1, 2), b, sizeof b);
    st_add(&s2, "z", "F32", SHAPE(1), b, 4);
    st_write(&s1, tp("sh/model-00001-of-00002.safetensors"), 1);
    st_write(&s2, tp("sh/model-00002-of-00002.safetensors"), 0);
    write_text(tp("sh/model.safetensors.index.json"),
               "{\"metadata\": {\"total_size\": 28}, \"weight_map\": {"
               "\"x.weight\": \"model-00001-of-00002.safetensors\","
               "\"y.weight\": \"model-00002-of-00002.safetensors\","
               "\"z\": \"model-00002-of-00002.safetensors\"}}");
    vm_weight_store *ws = open_ok(tp("sh"));
    cr_assert_eq(vm_weights_count(ws), 3);
    const vm_tensor *x = vm_weights_find(ws, "x.weight"), *y = vm_weights_find(ws, "y.weight");
    cr_assert(x && y);
    cr_assert(strstr(x->file, "model-00001-of-00002") != NULL);
    cr_assert(strstr(y->file, "model-00002-of-00002") != NULL);
    cr_assert_eq(((const float *)x->data)[3], 4.0f);
    float yv[2];
    memcpy(yv, y->data, 8);
    cr_assert_eq(yv[1], 6.0f);
    cr_assert_eq(vm_weights_total_bytes(ws), 28);
    vm_weights_free(ws);

    // A tensor listed in the index but absent from its shard.
    write_text(tp("sh/model.safetensors.index.json"),
               "{\"weight_map\": {\"x.weight\": \"model-00001-of-00002.safetensors\","
               "\"w.weight\": \"model-00002-of-00002.safetensors\"}}");
    expect_open_fail(tp("sh"), "model.safetensors.index.json", "'w.weight'");
    // A tensor listed under the wrong shard.
    write_text(tp("sh/model.safetensors.index.json"),
               "{\"weight_map\": {\"x.weight\": \"model-00002-of-00002.safetensors\"}}");
    expect_open_fail(tp("sh"), "model.safetensors.index.json", "'x.weight'");
    // A shard that does not exist.
    write_text(tp("sh/model.safetensors.index.json"),
               "{\"weight_map\": {\"x.weight\": \"model-00003-of-00002.safetensors\"}}");
    expect_open_fail(tp("sh"), "model-00003-of-00002.safetensors", "cannot open");
    // A shard name that escapes the directory.
    write_text(tp("sh/model.safetensors.index.json"), "{\"weight_map\": {\"x.weight\": \"../evil.safetensors\"}}");
    expect_open_fail(tp("sh"), "model.safetensors.index.json", "'x.weight'");
    // No weight_map / invalid JSON.
    write_text(tp("sh/model.safetensors.index.json"), "{\"metadata\": {}}");
    expect_open_fail(tp("sh"), "model.safetensors.index.json", "weight_map");
    write_text(tp("sh/model.safetensors.index.json"), "{\"weight_map\": {\"x\": ");
    expect_open_fail(tp("sh"), "model.safetensors.index.json", "JSON");
    // The same tensor in two shards.
    st_file s3 = st_new();
    st_add(&s3, "x.weight", "F32", SHAPE(2, 2), a, sizeof a);
    st_write(&s3, tp("sh/model-00002-of-00002.safetensors"), 1);
    st_free(&s3);
    write_text(tp("sh/model.safetensors.index.json"),
               "{\"weight_map\": {\"x.weight\": \"model-00001-of-00002.safetensors\","
               "\"y.weight\": \"model-00002-of-00002.safetensors\"}}");
    expect_open_fail(tp("sh"), "model-0000", "'x.weight' appears twice");
    st_free(&s1);
    st_free(&s2);
}

Test(loader, directory_fallbacks) {
    // Shards without an index: every *.safetensors file in the directory.
    mkdir(tp("noidx"), 0755);
    float a[2] = {1, 2};
    st_file s1 = st_new(), s2 = st_new();
    st_add(&s1, "p", "F32", SHAPE(2), a, 8);
    st_add(&s2, "q", "F32", SHAPE(2), a, 8);
    st_write(&s1, tp("noidx/weights.00.safetensors"), 0);
    st_write(&s2, tp("noidx/weights.01.safetensors"), 0);
    st_free(&s1);
    st_free(&s2);
    vm_weight_store *ws = open_ok(tp("noidx"));
    cr_assert_eq(vm_weights_count(ws), 2);
    vm_weights_free(ws);
    // Empty directory.
    mkdir(tp("empty"), 0755);
    expect_open_fail(tp("empty"), tp("empty"), "no model.safetensors");
    // Nonexistent path.
    expect_open_fail(tp("nothere"), tp("nothere"), "cannot open");
}

// MLX writes headers without padding, so tensor data can start at any byte.
Test(loader, unaligned_mlx_data) {
    uint8_t odd = 7;
    float f[3] = {1.5f, -2, 3};
    uint16_t h[3] = {vm_f32_to_f16(1), vm_f32_to_f16(2), vm_f32_to_f16(3)};
    st_file s = st_new();
    st_add(&s, "b", "U8", SHAPE(1), &odd, 1);
    st_add(&s, "f", "F32", SHAPE(3), f, sizeof f);
    st_add(&s, "h", "F16", SHAPE(3), h, sizeof h);
    st_add(&s, "w.weight", "F32", SHAPE(1, 3), f, sizeof f);
    st_write(&s, tp("u.safetensors"), 0);
    st_free(&s);
    vm_weight_store *ws = open_ok(tp("u.safetensors"));
    const vm_tensor *t = vm_weights_find(ws, "f");
    cr_assert_not_null(t);
    uintptr_t addr = (uintptr_t)t->data, hb = (uintptr_t)vm_weights_find(ws, "b")->data;
    cr_assert_eq(addr, hb + 1);
    // The header of this file is not padded; at least one tensor is misaligned.
    int misaligned = (addr % 4) != 0 || ((uintptr_t)vm_weights_find(ws, "h")->data % 2) != 0;
    cr_assert(misaligned || (hb % 4) != 3, "test file should produce unaligned data");
    float got[3];
    memcpy(got, t->data, sizeof got);
    cr_assert(memcmp(got, f, sizeof f) == 0);
    vm_err e = {{0}};
    cr_assert_not_null(vm_weights_vector(ws, "h", 3, 1, &e), "%s", e.msg);
    vm_weight w;
    cr_assert_eq(vm_weights_linear(ws, "w", 1, 3, &w, &e), 0, "%s", e.msg);
    vm_weights_free(ws);
}

// ------------------------------------------------------- MLX quantization ---

// Writes an MLX-style quantized tensor triple for `prefix`.
static void mlx_add(st_file *s, const char *prefix, int64_t rows, int64_t cols, int bits, int group,
                    const char *sdtype) {
    char n[256];
    size_t words = (size_t)(rows * cols * bits / 32), groups = (size_t)(rows * cols / group);
    uint32_t *q = calloc(words, 4);
    for (size_t i = 0; i < words; i++) q[i] = (uint32_t)(i * 2654435761u);
    size_t ss = strcmp(sdtype, "F32") == 0 ? 4 : 2;
    uint8_t *sc = calloc(groups, ss);
    for (size_t i = 0; i < groups * ss; i++) sc[i] = (uint8_t)(i + 1);
    snprintf(n, sizeof n, "%s.weight", prefix);
    st_add(s, n, "U32", SHAPE(rows, cols * bits / 32), q, words * 4);
    snprintf(n, sizeof n, "%s.scales", prefix);
    st_add(s, n, sdtype, SHAPE(rows, cols / group), sc, groups * ss);
    snprintf(n, sizeof n, "%s.biases", prefix);
    st_add(s, n, sdtype, SHAPE(rows, cols / group), sc, groups * ss);
    free(q);
    free(sc);
}

static void make_mlx_dir(const char *dir, const char *config) {
    mkdir(dir, 0755);
    st_file s = st_new();
    mlx_add(&s, "model.embed_tokens", 16, 128, 4, 64, "BF16");
    mlx_add(&s, "model.layers.0.self_attn.q_proj", 8, 128, 4, 64, "F16");
    mlx_add(&s, "model.layers.0.mlp.down_proj", 8, 128, 8, 32, "F32");
    mlx_add(&s, "model.layers.0.mlp.up_proj", 4, 256, 4, 64, "F16");
    st_add(&s, "lm_head.weight", "F16", SHAPE(16, 128), (uint16_t[16 * 128]){0}, 16 * 128 * 2);
    st_add(&s, "model.norm.weight", "F16", SHAPE(128), (uint16_t[128]){0}, 256);
    char p[600];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    st_write(&s, p, 0);
    st_free(&s);
    snprintf(p, sizeof p, "%s/config.json", dir);
    write_text(p, config);
}

static const char *k_mlx_config =
    "{\"model_type\": \"llama\", \"quantization\": {\"group_size\": 64, \"bits\": 4,"
    " \"model.layers.0.mlp.down_proj\": {\"group_size\": 32, \"bits\": 8},"
    " \"lm_head\": false}}";

Test(loader, mlx_quantized) {
    make_mlx_dir(tp("mlx"), k_mlx_config);
    vm_weight_store *ws = open_ok(tp("mlx"));
    cr_assert_eq(vm_weights_format(ws), VM_FORMAT_MLX);
    vm_err e = {{0}};
    vm_weight w;

    cr_assert_eq(vm_weights_linear(ws, "model.embed_tokens", 16, 128, &w, &e), 0, "%s", e.msg);
    cr_assert_eq(w.dtype, VM_DTYPE_MLX_AFFINE);
    cr_assert_eq(w.rows, 16);
    cr_assert_eq(w.cols, 128);
    cr_assert_eq(w.bits, 4);
    cr_assert_eq(w.group_size, 64);
    cr_assert_eq(w.scale_dtype, VM_DTYPE_BF16);
    cr_assert_eq(vm_weight_row_bytes(&w), 64);
    cr_assert_eq(w.data, vm_weights_find(ws, "model.embed_tokens.weight")->data);
    cr_assert_eq(w.scales, vm_weights_find(ws, "model.embed_tokens.scales")->data);
    cr_assert_eq(w.biases, vm_weights_find(ws, "model.embed_tokens.biases")->data);
    uint32_t word1;
    memcpy(&word1, (const uint8_t *)w.data + 4, 4);
    cr_assert_eq(word1, 2654435761u);

    cr_assert_eq(vm_weights_linear(ws, "model.layers.0.self_attn.q_proj", 8, 128, &w, &e), 0, "%s", e.msg);
    cr_assert_eq(w.scale_dtype, VM_DTYPE_F16);
    cr_assert_eq(w.bits, 4);

    // Per-layer override: 8 bits, group 32, F32 scales.
    cr_assert_eq(vm_weights_linear(ws, "model.layers.0.mlp.down_proj", 8, 128, &w, &e), 0, "%s", e.msg);
    cr_assert_eq(w.bits, 8);
    cr_assert_eq(w.group_size, 32);
    cr_assert_eq(w.scale_dtype, VM_DTYPE_F32);
    cr_assert_eq(vm_weight_row_bytes(&w), 128);

    // "lm_head": false -> plain F16.
    cr_assert_eq(vm_weights_linear(ws, "lm_head", 16, 128, &w, &e), 0, "%s", e.msg);
    cr_assert_eq(w.dtype, VM_DTYPE_F16);
    cr_assert_null(w.scales);

    // Wrong logical shape: packed columns contradict.
    cr_assert_eq(vm_weights_linear(ws, "model.layers.0.self_attn.q_proj", 8, 256, &w, &e), -1);
    cr_assert(strstr(e.msg, "model.layers.0.self_attn.q_proj.weight") && strstr(e.msg, "mlx/model.safetensors"),
              "%s", e.msg);
    cr_assert_eq(vm_weights_linear(ws, "model.layers.0.self_attn.q_proj", 9, 128, &w, &e), -1);
    cr_assert(strstr(e.msg, "q_proj.weight"), "%s", e.msg);
    // Columns that are not a multiple of the group size.
    cr_assert_eq(vm_weights_linear(ws, "model.layers.0.self_attn.q_proj", 8, 136, &w, &e), -1);
    cr_assert(strstr(e.msg, "q_proj.weight"), "%s", e.msg);
    vm_weights_free(ws);

    // "quantization_config" spelling, and scales with the wrong shape.
    make_mlx_dir(tp("mlx2"), "{\"quantization_config\": {\"group_size\": 32, \"bits\": 4}}");
    ws = open_ok(tp("mlx2"));
    cr_assert_eq(vm_weights_format(ws), VM_FORMAT_MLX);
    cr_assert_eq(vm_weights_linear(ws, "model.layers.0.self_attn.q_proj", 8, 128, &w, &e), -1);
    cr_assert(strstr(e.msg, "model.layers.0.self_attn.q_proj.scales") && strstr(e.msg, "mlx2/model.safetensors"),
              "%s", e.msg);
    vm_weights_free(ws);
}

Test(loader, mlx_without_config_infers_params) {
    // No config.json: bits and group size are inferred from the shapes.
    mkdir(tp("nocfg"), 0755);
    st_file s = st_new();
    mlx_add(&s, "m", 4, 256, 8, 128, "F16");
    st_write(&s, tp("nocfg/model.safetensors"), 0);
    st_free(&s);
    vm_weight_store *ws = open_ok(tp("nocfg"));
    cr_assert_eq(vm_weights_format(ws), VM_FORMAT_SAFETENSORS);
    vm_err e = {{0}};
    vm_weight w;
    cr_assert_eq(vm_weights_linear(ws, "m", 4, 256, &w, &e), 0, "%s", e.msg);
    cr_assert_eq(w.dtype, VM_DTYPE_MLX_AFFINE);
    cr_assert_eq(w.bits, 8);
    cr_assert_eq(w.group_size, 128);
    vm_weights_free(ws);
}

Test(loader, mlx_errors) {
    // Missing biases.
    mkdir(tp("nb"), 0755);
    st_file s = st_new();
    uint32_t q[8 * 16] = {0};
    uint16_t sc[8 * 2] = {0};
    st_add(&s, "p.weight", "U32", SHAPE(8, 16), q, sizeof q);
    st_add(&s, "p.scales", "F16", SHAPE(8, 2), sc, sizeof sc);
    st_add(&s, "r.weight", "U32", SHAPE(8, 16), q, sizeof q);
    int32_t isc[8 * 2] = {0};
    st_add(&s, "r.scales", "I32", SHAPE(8, 2), isc, sizeof isc);
    st_add(&s, "r.biases", "F16", SHAPE(8, 2), sc, sizeof sc);
    st_write(&s, tp("nb/model.safetensors"), 0);
    st_free(&s);
    write_text(tp("nb/config.json"), "{\"quantization\": {\"group_size\": 64, \"bits\": 4}}");
    vm_weight_store *ws = open_ok(tp("nb"));
    vm_err e = {{0}};
    vm_weight w;
    cr_assert_eq(vm_weights_linear(ws, "p", 8, 128, &w, &e), -1);
    cr_assert(strstr(e.msg, "p.biases") && strstr(e.msg, "nb/model.safetensors"), "%s", e.msg);
    cr_assert_eq(vm_weights_linear(ws, "r", 8, 128, &w, &e), -1);
    cr_assert(strstr(e.msg, "r.scales") && strstr(e.msg, "I32"), "%s", e.msg);
    vm_weights_free(ws);

    // Bad config files.
    write_text(tp("nb/config.json"), "{\"quantization\": {\"group_size\": 64, \"bits\": 7}}");
    expect_open_fail(tp("nb"), "nb/config.json", "quantization");
    write_text(tp("nb/config.json"), "{\"quantization\": {\"group_size\": 64, \"bits\": 4, \"x\": {\"bits\": 9}}}");
    expect_open_fail(tp("nb"), "nb/config.json", "quantization.x");
    write_text(tp("nb/config.json"), "{\"quantization_config\": {\"quant_method\": \"gptq\", \"bits\": 4}}");
    expect_open_fail(tp("nb"), "nb/config.json", "quant_method");
    write_text(tp("nb/config.json"), "{\"quantization\": {\"group_size\": 64, \"bits\": 4, \"mode\": \"mxfp4\"}}");
    expect_open_fail(tp("nb"), "nb/config.json", "mode");
    write_text(tp("nb/config.json"), "{\"quantization\": [1]}");
    expect_open_fail(tp("nb"), "nb/config.json", "quantization");
    write_text(tp("nb/config.json"), "{\"hidden_size\": 8,");
    expect_open_fail(tp("nb"), "nb/config.json", "JSON");
    write_text(tp("nb/config.json"), "{\"name\": \"\xff\xfe\"}");
    expect_open_fail(tp("nb"), "nb/config.json", "JSON");
}

// ------------------------------------------------- safetensors corruption ---

// A good 2-tensor file's data section, for the raw-header cases below.
static const uint8_t k_data[24] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24};

static void raw_case(const char *header, const char *what) {
    const char *p = tp("bad.safetensors");
    write_st_raw(p, strlen(header), header, k_data, sizeof k_data);
    expect_open_fail(p, p, what);
}

Test(loader, safetensors_errors) {
    const char *p = tp("bad.safetensors");
    // Too short for the length field.
    write_file(p, "\x02\0\0", 3);
    expect_open_fail(p, p, "header length");
    // Empty file.
    write_file(p, "", 0);
    expect_open_fail(p, p, "empty");
    // Header length larger than the file / absurd / too small.
    write_st_raw(p, 1000, "{}", NULL, 0);
    expect_open_fail(p, p, "header length 1000");
    write_st_raw(p, UINT64_MAX, "{}", NULL, 0);
    expect_open_fail(p, p, "header length");
    write_st_raw(p, 0, "{}", NULL, 0);
    expect_open_fail(p, p, "header length 0");
    // Invalid JSON, non-UTF-8 JSON, non-object JSON.
    raw_case("{\"a\": {\"dtype\": \"F32\", ", "JSON");
    raw_case("{\"a\xff\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}", "JSON");
    raw_case("[1, 2]", "not an object");
    raw_case("{\"a\": 5}", "'a'");
    // Duplicate keys.
    raw_case("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
             " \"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}", "JSON");
    // Offsets out of range.
    raw_case("{\"w\": {\"dtype\": \"F32\", \"shape\": [8], \"data_offsets\": [0, 32]}}", "'w'");
    raw_case("{\"w\": {\"dtype\": \"F32\", \"shape\": [8], \"data_offsets\": [0, 32]}}", "data_offsets");
    // Offsets that would reach back into the header.
    raw_case("{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [-8, 0]}}", "'w': field 'data_offsets'");
    // begin > end.
    raw_case("{\"w\": {\"dtype\": \"U8\", \"shape\": [0], \"data_offsets\": [8, 4]}}", "'w': field 'data_offsets' begin 8 > end 4");
    // nbytes != shape x dtype size.
    raw_case("{\"w\": {\"dtype\": \"F16\", \"shape\": [3], \"data_offsets\": [0, 8]}}", "'w': field 'data_offsets' spans 8 bytes");
    // Unknown dtype.
    raw_case("{\"w\": {\"dtype\": \"F64\", \"shape\": [1], \"data_offsets\": [0, 8]}}", "'w': unsupported dtype 'F64'");
    raw_case("{\"w\": {\"dtype\": 3, \"shape\": [1], \"data_offsets\": [0, 8]}}", "'w': field 'dtype'");
    // Missing / malformed fields.
    raw_case("{\"w\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}", "'w': field 'shape'");
    raw_case("{\"w\": {\"dtype\": \"F32\", \"shape\": [1]}}", "'w': field 'data_offsets'");
    raw_case("{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0]}}", "'w': field 'data_offsets'");
    raw_case("{\"w\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", "'w': field 'shape'");
    raw_case("{\"w\": {\"dtype\": \"F32\", \"shape\": [1.5], \"data_offsets\": [0, 4]}}", "'w': field 'shape'");
    raw_case("{\"w\": {\"dtype\": \"F32\", \"shape\": [1,1,1,1,1,1], \"data_offsets\": [0, 4]}}", "'w': field 'shape'");
    raw_case("{\"w\": {\"dtype\": \"U8\", \"shape\": [4294967296, 4294967296, 4294967296], \"data_offsets\": [0, 4]}}",
             "'w': field 'shape' overflows");
    raw_case("{\"__metadata__\": 5}", "__metadata__");
    // Overlapping tensors.
    raw_case("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
             " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}", "overlap");
    raw_case("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
             " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}", "'b'");

    // A valid file truncated: the last tensor runs past the end.
    float f[6] = {0};
    st_file s = st_new();
    st_add(&s, "first", "F32", SHAPE(2), f, 8);
    st_add(&s, "last.weight", "F32", SHAPE(4), f, 16);
    st_write(&s, p, 1);
    st_free(&s);
    FILE *fp = fopen(p, "r+b");
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fclose(fp);
    cr_assert_eq(truncate(p, n - 4), 0);
    expect_open_fail(p, p, "'last.weight'");
    expect_open_fail(p, p, "truncated");
}

// Cut a valid file at every length and flip bytes in its header: the loader
// must fail cleanly (or succeed) without crashing; failures name the file.
Test(loader, safetensors_truncation_and_bitflips) {
    float f[8] = {0};
    st_file s = st_new();
    st_add(&s, "a", "F32", SHAPE(2, 2), f, 16);
    st_add(&s, "b", "BF16", SHAPE(8), f, 16);
    char *h = json_dumps(s.hdr, JSON_COMPACT);
    buf full = {0};
    put_u64(&full, strlen(h));
    put(&full, h, strlen(h));
    put(&full, s.data.p, s.data.n);
    free(h);
    st_free(&s);
    const char *p = tp("cut.safetensors");
    for (size_t len = 0; len < full.n; len++) {
        write_file(p, full.p, len);
        vm_err e = {{0}};
        vm_weight_store *ws = vm_weights_open(p, &e);
        cr_assert_null(ws, "truncated at %zu should fail", len);
        cr_assert(strstr(e.msg, p), "%s", e.msg);
    }
    write_file(p, full.p, full.n);
    for (size_t i = 0; i < full.n; i++) {
        for (int bit = 0; bit < 8; bit += 3) {
            poke(p, i, full.p[i] ^ (uint8_t)(1 << bit));
            vm_err e = {{0}};
            vm_weight_store *ws = vm_weights_open(p, &e);
            if (!ws) cr_assert(strstr(e.msg, p), "%s", e.msg);
            vm_weights_free(ws);
        }
        poke(p, i, full.p[i]);
    }
    buf_free(&full);
}

// --------------------------------------------------------------- GGUF -------

enum { T_U8, T_I8, T_U16, T_I16, T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR, T_U64, T_I64, T_F64 };

typedef struct {
    buf kv, info, data;
    uint64_t n_kv, n_tensors;
    uint32_t align;
} gguf_b;

static void kv_head(gguf_b *g, const char *key, uint32_t type) {
    put_str(&g->kv, key);
    put_u32(&g->kv, type);
    g->n_kv++;
}
static void kv_u32(gguf_b *g, const char *k, uint32_t v) { kv_head(g, k, T_U32); put_u32(&g->kv, v); }
static void kv_str(gguf_b *g, const char *k, const char *v) { kv_head(g, k, T_STR); put_str(&g->kv, v); }

// Adds a tensor; ne is in GGUF order (ne[0] innermost); data is n bytes.
static void gg_tensor(gguf_b *g, const char *name, int n_dims, const uint64_t *ne, uint32_t type,
                      const void *data, size_t n) {
    pad_to(&g->data, g->align);
    put_str(&g->info, name);
    put_u32(&g->info, (uint32_t)n_dims);
    for (int i = 0; i < n_dims; i++) put_u64(&g->info, ne[i]);
    put_u32(&g->info, type);
    put_u64(&g->info, g->data.n);
    if (data) put(&g->data, data, n);
    else for (size_t i = 0; i < n; i++) put_u8(&g->data, (uint8_t)(i * 7 + 1));
    g->n_tensors++;
}

// Serializes into *out: header, kv, infos, padding, data.
static void gg_build(gguf_b *g, uint32_t version, buf *out) {
    put(out, "GGUF", 4);
    put_u32(out, version);
    put_u64(out, g->n_tensors);
    put_u64(out, g->n_kv);
    put(out, g->kv.p, g->kv.n);
    put(out, g->info.p, g->info.n);
    pad_to(out, g->align);
    put(out, g->data.p, g->data.n);
}
static void gg_write(gguf_b *g, uint32_t version, const char *path) {
    buf out = {0};
    gg_build(g, version, &out);
    write_file(path, out.p, out.n);
    buf_free(&out);
}
static void gg_free(gguf_b *g) { buf_free(&g->kv); buf_free(&g->info); buf_free(&g->data); }

#define NE(...) (int)(sizeof((uint64_t[]){__VA_ARGS__}) / sizeof(uint64_t)), ((const uint64_t[]){__VA_ARGS__})

// A small llama-like GGUF: every metadata type and every supported tensor type.
static void make_gguf(gguf_b *g, uint32_t align) {
    memset(g, 0, sizeof *g);
    g->align = align;
    kv_str(g, "general.architecture", "llama");
    if (align != 32) kv_u32(g, "general.alignment", align);
    kv_u32(g, "llama.block_count", 2);
    kv_head(g, "t.u8", T_U8); put_u8(&g->kv, 200);
    kv_head(g, "t.i8", T_I8); put_u8(&g->kv, 0xfe);                    // -2
    kv_head(g, "t.u16", T_U16); put(&g->kv, "\x34\x12", 2);            // 0x1234
    kv_head(g, "t.i16", T_I16); put(&g->kv, "\xff\xff", 2);            // -1
    kv_head(g, "t.i32", T_I32); put_u32(&g->kv, (uint32_t)-100000);
    float fv = 0.25f; uint32_t fb; memcpy(&fb, &fv, 4);
    kv_head(g, "t.f32", T_F32); put_u32(&g->kv, fb);
    kv_head(g, "t.bool", T_BOOL); put_u8(&g->kv, 1);
    kv_head(g, "t.u64", T_U64); put_u64(&g->kv, 1ULL << 40);
    kv_head(g, "t.u64big", T_U64); put_u64(&g->kv, UINT64_MAX);
    kv_head(g, "t.i64", T_I64); put_u64(&g->kv, (uint64_t)-5);
    double dv = -1.5; uint64_t db; memcpy(&db, &dv, 8);
    kv_head(g, "t.f64", T_F64); put_u64(&g->kv, db);
    kv_head(g, "tokenizer.ggml.tokens", T_ARR); put_u32(&g->kv, T_STR); put_u64(&g->kv, 3);
    put_str(&g->kv, "<s>"); put_str(&g->kv, ""); put_str(&g->kv, "h\xc3\xa9llo");
    kv_head(g, "tokenizer.ggml.token_type", T_ARR); put_u32(&g->kv, T_I32); put_u64(&g->kv, 3);
    put_u32(&g->kv, 3); put_u32(&g->kv, 1); put_u32(&g->kv, (uint32_t)-7);
    kv_head(g, "tokenizer.ggml.scores", T_ARR); put_u32(&g->kv, T_F32); put_u64(&g->kv, 2);
    put_u32(&g->kv, fb); put_u32(&g->kv, fb);
    kv_head(g, "t.nested", T_ARR); put_u32(&g->kv, T_ARR); put_u64(&g->kv, 2);
    put_u32(&g->kv, T_U8); put_u64(&g->kv, 2); put_u8(&g->kv, 1); put_u8(&g->kv, 2);
    put_u32(&g->kv, T_STR); put_u64(&g->kv, 1); put_str(&g->kv, "x");
    kv_head(g, "t.empty", T_ARR); put_u32(&g->kv, T_STR); put_u64(&g->kv, 0);

    gg_tensor(g, "token_embd.weight", NE(64, 10), 8, NULL, 10 * 2 * 34);          // Q8_0
    gg_tensor(g, "output_norm.weight", NE(64), 0, NULL, 64 * 4);                  // F32
    gg_tensor(g, "output.weight", NE(64, 10), 30, NULL, 10 * 64 * 2);             // BF16
    gg_tensor(g, "blk.0.attn_q.weight", NE(64, 32), 2, NULL, 32 * 2 * 18);        // Q4_0
    gg_tensor(g, "blk.0.attn_k.weight", NE(64, 16), 3, NULL, 16 * 2 * 20);        // Q4_1
    gg_tensor(g, "blk.0.attn_v.weight", NE(64, 16), 1, NULL, 16 * 64 * 2);        // F16
    gg_tensor(g, "blk.0.attn_output.weight", NE(32, 64), 0, NULL, 32 * 64 * 4);   // F32
    gg_tensor(g, "blk.0.attn_q.bias", NE(32), 0, NULL, 128);
    gg_tensor(g, "blk.0.attn_k.bias", NE(16), 0, NULL, 64);
    gg_tensor(g, "blk.0.attn_v.bias", NE(16), 0, NULL, 64);
    gg_tensor(g, "blk.0.attn_q_norm.weight", NE(8), 0, NULL, 32);
    gg_tensor(g, "blk.0.attn_k_norm.weight", NE(8), 0, NULL, 32);
    gg_tensor(g, "blk.0.attn_norm.weight", NE(64), 0, NULL, 256);
    gg_tensor(g, "blk.0.ffn_norm.weight", NE(64), 0, NULL, 256);
    gg_tensor(g, "blk.12.ffn_gate.weight", NE(64, 96), 2, NULL, 96 * 2 * 18);
    gg_tensor(g, "blk.12.ffn_up.weight", NE(64, 96), 3, NULL, 96 * 2 * 20);
    gg_tensor(g, "blk.12.ffn_down.weight", NE(96, 64), 8, NULL, 64 * 3 * 34);
    gg_tensor(g, "rope_freqs.weight", NE(4), 0, NULL, 16);                       // unknown: kept
    gg_tensor(g, "blk.1.ffn_gate_inp.weight", NE(64, 4), 0, NULL, 64 * 16);       // unknown in blk: kept
    gg_tensor(g, "conv.weight", NE(2, 3, 4, 5), 0, NULL, 2 * 3 * 4 * 5 * 4);
}

static void check_gguf(vm_weight_store *ws, uint32_t align, const char *path) {
    cr_assert_eq(vm_weights_format(ws), VM_FORMAT_GGUF);
    cr_assert_eq(vm_weights_count(ws), 20);
    const vm_gguf *g = vm_weights_gguf(ws);
    cr_assert_not_null(g);
    int64_t iv;
    double dv;
    vm_gguf_str s;
    vm_gguf_array a;
    cr_assert_eq(vm_gguf_get_str(g, "general.architecture", &s), 0);
    cr_assert(s.len == 5 && memcmp(s.s, "llama", 5) == 0);
    cr_assert_eq(vm_gguf_get_int(g, "llama.block_count", &iv), 0); cr_assert_eq(iv, 2);
    cr_assert_eq(vm_gguf_get_int(g, "t.u8", &iv), 0); cr_assert_eq(iv, 200);
    cr_assert_eq(vm_gguf_get_int(g, "t.i8", &iv), 0); cr_assert_eq(iv, -2);
    cr_assert_eq(vm_gguf_get_int(g, "t.u16", &iv), 0); cr_assert_eq(iv, 0x1234);
    cr_assert_eq(vm_gguf_get_int(g, "t.i16", &iv), 0); cr_assert_eq(iv, -1);
    cr_assert_eq(vm_gguf_get_int(g, "t.i32", &iv), 0); cr_assert_eq(iv, -100000);
    cr_assert_eq(vm_gguf_get_int(g, "t.bool", &iv), 0); cr_assert_eq(iv, 1);
    cr_assert_eq(vm_gguf_get_int(g, "t.u64", &iv), 0); cr_assert_eq(iv, 1LL << 40);
    cr_assert_eq(vm_gguf_get_int(g, "t.u64big", &iv), -1);
    cr_assert_eq(vm_gguf_get_int(g, "t.i64", &iv), 0); cr_assert_eq(iv, -5);
    cr_assert_eq(vm_gguf_get_int(g, "t.f32", &iv), -1);
    cr_assert_eq(vm_gguf_get_int(g, "general.architecture", &iv), -1);
    cr_assert_eq(vm_gguf_get_int(g, "missing", &iv), -1);
    cr_assert_eq(vm_gguf_get_float(g, "t.f32", &dv), 0); cr_assert_eq(dv, 0.25);
    cr_assert_eq(vm_gguf_get_float(g, "t.f64", &dv), 0); cr_assert_eq(dv, -1.5);
    cr_assert_eq(vm_gguf_get_float(g, "t.i32", &dv), 0); cr_assert_eq(dv, -100000.0);
    cr_assert_eq(vm_gguf_get_float(g, "t.u16", &dv), 0); cr_assert_eq(dv, 4660.0);
    cr_assert_eq(vm_gguf_get_float(g, "t.bool", &dv), -1);
    cr_assert_eq(vm_gguf_get_str(g, "t.u8", &s), -1);
    cr_assert_eq(vm_gguf_get_array(g, "t.u8", &a), -1);
    cr_assert_eq(vm_gguf_get_array(g, "tokenizer.ggml.tokens", &a), 0);
    cr_assert_eq(a.type, VM_GGUF_STRING);
    cr_assert_eq(a.n, 3);
    cr_assert_not_null(a.strs);
    cr_assert(a.strs[0].len == 3 && memcmp(a.strs[0].s, "<s>", 3) == 0);
    cr_assert_eq(a.strs[1].len, 0);
    cr_assert(a.strs[2].len == 6 && memcmp(a.strs[2].s, "h\xc3\xa9llo", 6) == 0);
    cr_assert_eq(vm_gguf_get_array(g, "tokenizer.ggml.token_type", &a), 0);
    cr_assert_eq(a.type, VM_GGUF_I32);
    cr_assert_eq(a.n, 3);
    cr_assert_null(a.strs);
    int32_t tt[3];
    memcpy(tt, a.data, sizeof tt);
    cr_assert(tt[0] == 3 && tt[1] == 1 && tt[2] == -7);
    cr_assert_eq(vm_gguf_get_array(g, "tokenizer.ggml.scores", &a), 0);
    float sc;
    memcpy(&sc, (const uint8_t *)a.data + 4, 4);
    cr_assert_eq(sc, 0.25f);
    cr_assert_eq(vm_gguf_get_array(g, "t.nested", &a), 0);
    cr_assert_eq(a.type, VM_GGUF_ARRAY);
    cr_assert_eq(a.n, 2);
    cr_assert_eq(vm_gguf_get_array(g, "t.empty", &a), 0);
    cr_assert_eq(a.n, 0);

    // Names mapped to HF, shapes reversed.
    struct { const char *hf; vm_dtype t; int ndim; int64_t s0, s1; } want[] = {
        {"model.embed_tokens.weight", VM_DTYPE_Q8_0, 2, 10, 64},
        {"model.norm.weight", VM_DTYPE_F32, 1, 64, 0},
        {"lm_head.weight", VM_DTYPE_BF16, 2, 10, 64},
        {"model.layers.0.self_attn.q_proj.weight", VM_DTYPE_Q4_0, 2, 32, 64},
        {"model.layers.0.self_attn.k_proj.weight", VM_DTYPE_Q4_1, 2, 16, 64},
        {"model.layers.0.self_attn.v_proj.weight", VM_DTYPE_F16, 2, 16, 64},
        {"model.layers.0.self_attn.o_proj.weight", VM_DTYPE_F32, 2, 64, 32},
        {"model.layers.0.self_attn.q_proj.bias", VM_DTYPE_F32, 1, 32, 0},
        {"model.layers.0.self_attn.k_proj.bias", VM_DTYPE_F32, 1, 16, 0},
        {"model.layers.0.self_attn.v_proj.bias", VM_DTYPE_F32, 1, 16, 0},
        {"model.layers.0.self_attn.q_norm.weight", VM_DTYPE_F32, 1, 8, 0},
        {"model.layers.0.self_attn.k_norm.weight", VM_DTYPE_F32, 1, 8, 0},
        {"model.layers.0.input_layernorm.weight", VM_DTYPE_F32, 1, 64, 0},
        {"model.layers.0.post_attention_layernorm.weight", VM_DTYPE_F32, 1, 64, 0},
        {"model.layers.12.mlp.gate_proj.weight", VM_DTYPE_Q4_0, 2, 96, 64},
        {"model.layers.12.mlp.up_proj.weight", VM_DTYPE_Q4_1, 2, 96, 64},
        {"model.layers.12.mlp.down_proj.weight", VM_DTYPE_Q8_0, 2, 64, 96},
        {"rope_freqs.weight", VM_DTYPE_F32, 1, 4, 0},
        {"blk.1.ffn_gate_inp.weight", VM_DTYPE_F32, 2, 4, 64},
    };
    uint64_t total = 0;
    for (size_t i = 0; i < VM_ARRAY_LEN(want); i++) {
        const vm_tensor *t = vm_weights_find(ws, want[i].hf);
        cr_assert_not_null(t, "%s", want[i].hf);
        cr_assert_eq(t->dtype, want[i].t, "%s", want[i].hf);
        cr_assert_eq(t->ndim, want[i].ndim, "%s", want[i].hf);
        cr_assert_eq(t->shape[0], want[i].s0, "%s", want[i].hf);
        if (t->ndim > 1) cr_assert_eq(t->shape[1], want[i].s1, "%s", want[i].hf);
        total += t->nbytes;
    }
    const vm_tensor *c = vm_weights_find(ws, "conv.weight");
    cr_assert(c && c->ndim == 4 && c->shape[0] == 5 && c->shape[1] == 4 && c->shape[2] == 3 && c->shape[3] == 2);
    total += c->nbytes;
    cr_assert_eq(vm_weights_total_bytes(ws), total);
    cr_assert_null(vm_weights_find(ws, "token_embd.weight"));

    // Tensor data sits at multiples of the alignment (from the file start) and
    // holds what was written (first tensor's first byte is 1).
    const vm_tensor *emb = vm_weights_find(ws, "model.embed_tokens.weight");
    const vm_tensor *nrm = vm_weights_find(ws, "model.norm.weight");
    cr_assert_eq(((const uint8_t *)emb->data)[0], 1);
    cr_assert_eq(((const uint8_t *)emb->data)[1], 8);
    cr_assert_eq(((uintptr_t)nrm->data - (uintptr_t)emb->data) % align, 0);
    cr_assert_eq(emb->nbytes, 680);

    vm_err e = {{0}};
    vm_weight w;
    cr_assert_eq(vm_weights_linear(ws, "model.embed_tokens", 10, 64, &w, &e), 0, "%s", e.msg);
    cr_assert_eq(w.dtype, VM_DTYPE_Q8_0);
    cr_assert_eq(vm_weight_row_bytes(&w), 68);
    cr_assert_eq(w.data, emb->data);
    cr_assert_eq(vm_weights_linear(ws, "model.layers.0.self_attn.q_proj", 32, 64, &w, &e), 0, "%s", e.msg);
    cr_assert_eq(w.dtype, VM_DTYPE_Q4_0);
    cr_assert_eq(vm_weight_row_bytes(&w), 36);
    cr_assert_eq(vm_weights_linear(ws, "model.layers.0.self_attn.k_proj", 16, 64, &w, &e), 0, "%s", e.msg);
    cr_assert_eq(vm_weight_row_bytes(&w), 40);
    cr_assert_eq(vm_weights_linear(ws, "model.layers.12.mlp.down_proj", 64, 96, &w, &e), 0, "%s", e.msg);
    cr_assert_eq(vm_weights_linear(ws, "lm_head", 10, 64, &w, &e), 0, "%s", e.msg);
    cr_assert_eq(w.dtype, VM_DTYPE_BF16);
    cr_assert_eq(vm_weights_linear(ws, "model.layers.0.self_attn.q_proj", 64, 32, &w, &e), -1);
    cr_assert(strstr(e.msg, "model.layers.0.self_attn.q_proj.weight") && strstr(e.msg, path), "%s", e.msg);
    cr_assert_eq(vm_weights_linear(ws, "model.layers.12.mlp.down_proj", 64, 100, &w, &e), -1);
    cr_assert(strstr(e.msg, "down_proj.weight"), "%s", e.msg);
    cr_assert_not_null(vm_weights_vector(ws, "model.layers.0.self_attn.q_proj.bias", 32, 1, &e), "%s", e.msg);
    cr_assert_null(vm_weights_vector(ws, "model.layers.0.self_attn.q_proj.weight", 32, 1, &e));
    cr_assert(strstr(e.msg, "q_proj.weight") && strstr(e.msg, "Q4_0"), "%s", e.msg);
}

Test(loader, gguf_v3_default_alignment) {
    gguf_b g;
    make_gguf(&g, 32);
    gg_write(&g, 3, tp("m.gguf"));
    gg_free(&g);
    vm_weight_store *ws = open_ok(tp("m.gguf"));
    check_gguf(ws, 32, tp("m.gguf"));
    cr_assert_str_eq(vm_weights_find(ws, "model.norm.weight")->file, tp("m.gguf"));
    vm_weights_free(ws);
}

Test(loader, gguf_v2_custom_alignment_and_sniffing) {
    gguf_b g;
    make_gguf(&g, 64);
    gg_write(&g, 2, tp("model.bin")); // no .gguf suffix: sniffed by magic
    gg_free(&g);
    vm_weight_store *ws = open_ok(tp("model.bin"));
    check_gguf(ws, 64, tp("model.bin"));
    vm_weights_free(ws);
    // A directory holding one .gguf.
    mkdir(tp("gdir"), 0755);
    make_gguf(&g, 32);
    gg_write(&g, 3, tp("gdir/x.gguf"));
    gg_free(&g);
    ws = open_ok(tp("gdir"));
    check_gguf(ws, 32, tp("gdir/x.gguf"));
    vm_weights_free(ws);
}

// Builds the standard file, lets `patch` corrupt the bytes, expects failure.
static void gguf_case(void (*patch)(buf *, gguf_b *), const char *what) {
    gguf_b g;
    make_gguf(&g, 32);
    buf out = {0};
    if (patch) patch(&out, &g);
    else gg_build(&g, 3, &out);
    const char *p = tp("bad.gguf");
    write_file(p, out.p, out.n);
    buf_free(&out);
    gg_free(&g);
    expect_open_fail(p, p, what);
}

static void gguf_small(buf *out, void (*fill)(gguf_b *), uint32_t version) {
    gguf_b g = {.align = 32};
    fill(&g);
    gg_build(&g, version, out);
    gg_free(&g);
}

static void p_magic(buf *o, gguf_b *g) { gg_build(g, 3, o); o->p[0] = 'X'; }
static void p_v1(buf *o, gguf_b *g) { gg_build(g, 1, o); }
static void p_v4(buf *o, gguf_b *g) { gg_build(g, 4, o); }
static void p_ntensors(buf *o, gguf_b *g) { gg_build(g, 3, o); memset(o->p + 8, 0xff, 7); }
static void p_nkv(buf *o, gguf_b *g) { gg_build(g, 3, o); o->p[16 + 5] = 0x10; }
static void p_header_trunc(buf *o, gguf_b *g) { gg_build(g, 3, o); o->n = 14; }
static void p_key_len(buf *o, gguf_b *g) { gg_build(g, 3, o); o->p[24 + 6] = 0x01; } // first key length
static void f_bad_strval(gguf_b *g) { kv_head(g, "general.name", T_STR); put_u64(&g->kv, 1ULL << 40); put(&g->kv, "abc", 3); }
static void p_strval(buf *o, gguf_b *g) { (void)g; gguf_small(o, f_bad_strval, 3); }
static void f_bad_arrcount(gguf_b *g) { kv_head(g, "tokenizer.ggml.scores", T_ARR); put_u32(&g->kv, T_F32); put_u64(&g->kv, 1ULL << 60); put_u32(&g->kv, 0); }
static void p_arrcount(buf *o, gguf_b *g) { (void)g; gguf_small(o, f_bad_arrcount, 3); }
static void f_bad_strarr(gguf_b *g) { kv_head(g, "tokenizer.ggml.tokens", T_ARR); put_u32(&g->kv, T_STR); put_u64(&g->kv, 1000000); put_str(&g->kv, "a"); }
static void p_strarr(buf *o, gguf_b *g) { (void)g; gguf_small(o, f_bad_strarr, 3); }
static void f_bad_strarr_len(gguf_b *g) { kv_head(g, "tokenizer.ggml.merges", T_ARR); put_u32(&g->kv, T_STR); put_u64(&g->kv, 2); put_str(&g->kv, "a"); put_u64(&g->kv, 99); put(&g->kv, "zz", 2); }
static void p_strarr_len(buf *o, gguf_b *g) { (void)g; gguf_small(o, f_bad_strarr_len, 3); }
static void f_bad_type(gguf_b *g) { kv_head(g, "weird.key", 13); put_u32(&g->kv, 0); }
static void p_type(buf *o, gguf_b *g) { (void)g; gguf_small(o, f_bad_type, 3); }
static void f_bad_elemtype(gguf_b *g) { kv_head(g, "weird.arr", T_ARR); put_u32(&g->kv, 77); put_u64(&g->kv, 1); put_u32(&g->kv, 0); }
static void p_elemtype(buf *o, gguf_b *g) { (void)g; gguf_small(o, f_bad_elemtype, 3); }
static void f_deep(gguf_b *g) {
    kv_head(g, "deep.arr", T_ARR);
    for (int i = 0; i < 20; i++) { put_u32(&g->kv, T_ARR); put_u64(&g->kv, 1); }
    put_u32(&g->kv, T_U8); put_u64(&g->kv, 0);
}
static void p_deep(buf *o, gguf_b *g) { (void)g; gguf_small(o, f_deep, 3); }
static void f_dupkey(gguf_b *g) { kv_u32(g, "a.b", 1); kv_u32(g, "c", 1); kv_u32(g, "a.b", 2); }
static void p_dupkey(buf *o, gguf_b *g) { (void)g; gguf_small(o, f_dupkey, 3); }
static void f_align(gguf_b *g) { kv_u32(g, "general.alignment", 48); }
static void p_align(buf *o, gguf_b *g) { (void)g; gguf_small(o, f_align, 3); }
static void f_align0(gguf_b *g) { kv_u32(g, "general.alignment", 0); }
static void p_align0(buf *o, gguf_b *g) { (void)g; gguf_small(o, f_align0, 3); }
static void f_align_str(gguf_b *g) { kv_str(g, "general.alignment", "32"); }
static void p_align_str(buf *o, gguf_b *g) { (void)g; gguf_small(o, f_align_str, 3); }
static void f_qtype(gguf_b *g) { gg_tensor(g, "blk.3.ffn_down.weight", NE(256, 2), 12, NULL, 2 * 144); }
static void p_qtype(buf *o, gguf_b *g) { (void)g; gguf_small(o, f_qtype, 3); }
static void f_qcols(gguf_b *g) { gg_tensor(g, "blk.0.attn_q.weight", NE(48, 2), 2, NULL, 64); }
static void p_qcols(buf *o, gguf_b *g) { (void)g; gguf_small(o, f_qcols, 3); }
static void f_ndims0(gguf_b *g) { gg_tensor(g, "w0", 0, NULL, 0, NULL, 0); }
static void p_ndims0(buf *o, gguf_b *g) { (void)g; gguf_small(o, f_ndims0, 3); }
static void f_ndims5(gguf_b *g) { gg_tensor(g, "w5", NE(1, 1, 1, 1, 1), 0, NULL, 4); }
static void p_ndims5(buf *o, gguf_b *g) { (void)g; gguf_small(o, f_ndims5, 3); }
static void f_misaligned(gguf_b *g) {
    gg_tensor(g, "a", NE(4), 0, NULL, 16);
    put_str(&g->info, "b"); put_u32(&g->info, 1); put_u64(&g->info, 1); put_u32(&g->info, 0); put_u64(&g->info, 4);
    g->n_tensors++;
    put_u64(&g->data, 0); put_u64(&g->data, 0);
}
static void p_misaligned(buf *o, gguf_b *g) { (void)g; gguf_small(o, f_misaligned, 3); }
static void f_overlap(gguf_b *g) {
    gg_tensor(g, "a", NE(16), 0, NULL, 64);
    put_str(&g->info, "b"); put_u32(&g->info, 1); put_u64(&g->info, 16); put_u32(&g->info, 0); put_u64(&g->info, 32);
    g->n_tensors++;
    for (int i = 0; i < 64; i++) put_u8(&g->data, 0);
}
static void p_overlap(buf *o, gguf_b *g) { (void)g; gguf_small(o, f_overlap, 3); }
static void f_duptensor(gguf_b *g) {
    gg_tensor(g, "output_norm.weight", NE(4), 0, NULL, 16);
    gg_tensor(g, "model.norm.weight", NE(4), 0, NULL, 16); // maps to the same HF name
}
static void p_duptensor(buf *o, gguf_b *g) { (void)g; gguf_small(o, f_duptensor, 3); }
static void f_bigshape(gguf_b *g) { gg_tensor(g, "huge", NE(1ULL << 32, 1ULL << 32, 1ULL << 32), 0, NULL, 0); }
static void p_bigshape(buf *o, gguf_b *g) { (void)g; gguf_small(o, f_bigshape, 3); }
static void f_negne(gguf_b *g) { gg_tensor(g, "neg", NE(UINT64_MAX), 0, NULL, 0); }
static void p_negne(buf *o, gguf_b *g) { (void)g; gguf_small(o, f_negne, 3); }
static void p_trunc_data(buf *o, gguf_b *g) { gg_build(g, 3, o); o->n -= 1; }
static void f_info_trunc(gguf_b *g) { put_str(&g->info, "blk.0.attn_k.weight"); put_u32(&g->info, 2); g->n_tensors++; }
static void p_info_trunc(buf *o, gguf_b *g) {
    (void)g; gguf_small(o, f_info_trunc, 3);
    o->n = 24 + 8 + strlen("blk.0.attn_k.weight") + 4 + 8; // cut inside ne[]
}
static void f_data_past_end(gguf_b *g) { gg_tensor(g, "blk.0.attn_norm.weight", NE(1 << 20), 0, NULL, 16); }
static void p_data_past_end(buf *o, gguf_b *g) { (void)g; gguf_small(o, f_data_past_end, 3); }
static void f_name_nul(gguf_b *g) { put_u64(&g->info, 3); put(&g->info, "a\0b", 3); put_u32(&g->info, 1); put_u64(&g->info, 1); put_u32(&g->info, 0); put_u64(&g->info, 0); g->n_tensors++; put_u32(&g->data, 0); }
static void p_name_nul(buf *o, gguf_b *g) { (void)g; gguf_small(o, f_name_nul, 3); }

Test(loader, gguf_errors) {
    gguf_case(p_magic, "magic");
    gguf_case(p_v1, "version 1");
    gguf_case(p_v4, "version 4");
    gguf_case(p_ntensors, "n_tensors");
    gguf_case(p_nkv, "n_kv");
    gguf_case(p_header_trunc, "n_tensors: file truncated");
    gguf_case(p_key_len, "metadata entry #0: key: string length");
    gguf_case(p_strval, "metadata key 'general.name': string value: string length 1099511627776");
    gguf_case(p_arrcount, "metadata key 'tokenizer.ggml.scores': array count");
    gguf_case(p_strarr, "metadata key 'tokenizer.ggml.tokens': array count 1000000");
    gguf_case(p_strarr_len, "metadata key 'tokenizer.ggml.merges': array string: string length 99");
    gguf_case(p_type, "metadata key 'weird.key': unknown value type 13");
    gguf_case(p_elemtype, "metadata key 'weird.arr': unknown array element type 77");
    gguf_case(p_deep, "metadata key 'deep.arr': arrays nested too deeply");
    gguf_case(p_dupkey, "metadata key 'a.b' appears twice");
    gguf_case(p_align, "metadata key 'general.alignment': 48 is not a power of two");
    gguf_case(p_align0, "'general.alignment'");
    gguf_case(p_align_str, "'general.alignment'");
    gguf_case(p_qtype, "tensor 'blk.3.ffn_down.weight': ggml type id 12");
    gguf_case(p_qcols, "tensor 'blk.0.attn_q.weight': ne[0] = 48");
    gguf_case(p_ndims0, "tensor 'w0': n_dims 0");
    gguf_case(p_ndims5, "tensor 'w5': n_dims 5");
    gguf_case(p_misaligned, "tensor 'b': offset 4 is not a multiple of the alignment 32");
    gguf_case(p_overlap, "overlap");
    gguf_case(p_duptensor, "'model.norm.weight' appears twice");
    gguf_case(p_bigshape, "tensor 'huge': shape overflows");
    gguf_case(p_negne, "tensor 'neg': ne[0]");
    gguf_case(p_trunc_data, "tensor 'conv.weight': offset");
    gguf_case(p_trunc_data, "truncated");
    gguf_case(p_info_trunc, "tensor 'blk.0.attn_k.weight': ne: file truncated");
    gguf_case(p_data_past_end, "tensor 'blk.0.attn_norm.weight'");
    gguf_case(p_name_nul, "tensor info #0: name contains a NUL byte");
    // Two .gguf files in one directory are ambiguous.
    mkdir(tp("two"), 0755);
    write_text(tp("two/a.gguf"), "GGUF");
    write_text(tp("two/b.gguf"), "GGUF");
    expect_open_fail(tp("two"), tp("two"), "2 .gguf files");
}

// Cut the full GGUF at every length (it must fail, naming the file) and flip
// bits all over its header (it must not crash, hang, or leak).
Test(loader, gguf_truncation_and_bitflips) {
    gguf_b g;
    make_gguf(&g, 32);
    buf full = {0};
    gg_build(&g, 3, &full);
    size_t header_end = 24 + g.kv.n + g.info.n;
    gg_free(&g);
    const char *p = tp("cut.gguf");
    // Cut from the end backwards: each truncate() only shortens the file.
    write_file(p, full.p, full.n);
    for (size_t len = full.n - 1;; len -= (len > header_end + 64 ? 97 : 1)) {
        cr_assert_eq(truncate(p, (off_t)len), 0);
        vm_err e = {{0}};
        vm_weight_store *ws = vm_weights_open(p, &e);
        cr_assert_null(ws, "truncated at %zu should fail", len);
        cr_assert(strstr(e.msg, p), "%s", e.msg);
        if (len == 0) break;
    }
    write_file(p, full.p, full.n);
    for (size_t i = 0; i < header_end; i++) {
        for (int bit = 0; bit < 8; bit += 3) {
            poke(p, i, full.p[i] ^ (uint8_t)(1 << bit));
            vm_err e = {{0}};
            vm_weight_store *ws = vm_weights_open(p, &e);
            if (!ws) cr_assert(strstr(e.msg, p), "%s", e.msg);
            vm_weights_free(ws);
        }
        poke(p, i, full.p[i]);
    }
    buf_free(&full);
}

// ---------------------------------------------------------- the real model ---

Test(loader, real_smollm2_gguf) {
    const char *env = getenv("VLLM_METAL_TEST_MODEL");
    char path[1024];
    if (env && *env) snprintf(path, sizeof path, "%s", env);
    else snprintf(path, sizeof path, "%s/.cache/vllm-metal/SmolLM2-135M-Instruct.Q4_1.gguf",
                  getenv("HOME") ? getenv("HOME") : "");
    if (access(path, R_OK) != 0 || !strstr(path, ".gguf")) {
        cr_skip_test("real model not found at %s", path);
        return;
    }
    vm_weight_store *ws = open_ok(path);
    cr_assert_eq(vm_weights_format(ws), VM_FORMAT_GGUF);
    cr_assert_eq(vm_weights_count(ws), 272); // 30 layers x 9 + embed + norm (tied lm_head)
    const vm_gguf *g = vm_weights_gguf(ws);
    int64_t v;
    vm_gguf_str s;
    vm_gguf_array a;
    cr_assert_eq(vm_gguf_get_str(g, "general.architecture", &s), 0);
    cr_assert(s.len == 5 && memcmp(s.s, "llama", 5) == 0);
    cr_assert_eq(vm_gguf_get_int(g, "llama.block_count", &v), 0); cr_assert_eq(v, 30);
    cr_assert_eq(vm_gguf_get_int(g, "llama.embedding_length", &v), 0); cr_assert_eq(v, 576);
    cr_assert_eq(vm_gguf_get_array(g, "tokenizer.ggml.tokens", &a), 0);
    cr_assert_eq(a.type, VM_GGUF_STRING);
    cr_assert_eq(a.n, 49152);
    cr_assert(a.strs[0].len == 13 && memcmp(a.strs[0].s, "<|endoftext|>", 13) == 0);
    cr_assert_eq(vm_gguf_get_array(g, "tokenizer.ggml.merges", &a), 0);
    cr_assert_eq(a.type, VM_GGUF_STRING);
    cr_assert_gt(a.n, 1000);
    cr_assert_eq(vm_gguf_get_array(g, "tokenizer.ggml.token_type", &a), 0);
    cr_assert_eq(a.n, 49152);
    const vm_tensor *emb = vm_weights_find(ws, "model.embed_tokens.weight");
    cr_assert_not_null(emb);
    cr_assert_eq(emb->dtype, VM_DTYPE_Q8_0);
    cr_assert(emb->shape[0] == 49152 && emb->shape[1] == 576);
    vm_err e = {{0}};
    vm_weight w;
    cr_assert_eq(vm_weights_linear(ws, "model.embed_tokens", 49152, 576, &w, &e), 0, "%s", e.msg);
    cr_assert_eq(vm_weights_linear(ws, "model.layers.29.self_attn.k_proj", 192, 576, &w, &e), 0, "%s", e.msg);
    cr_assert_eq(w.dtype, VM_DTYPE_Q4_1);
    cr_assert_eq(vm_weights_linear(ws, "model.layers.0.mlp.down_proj", 576, 1536, &w, &e), 0, "%s", e.msg);
    cr_assert_not_null(vm_weights_vector(ws, "model.norm.weight", 576, 1, &e), "%s", e.msg);
    cr_assert_not_null(vm_weights_vector(ws, "model.layers.29.post_attention_layernorm.weight", 576, 1, &e), "%s", e.msg);
    cr_assert_null(vm_weights_find(ws, "lm_head.weight"));
    vm_weights_free(ws);
}
