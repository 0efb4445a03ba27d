// test_vulkan.c - the Vulkan backend against the CPU backend: every op on
// random inputs, then whole-model logits (tiny models and, when present, the
// real SmolLM2 Q4_1 GGUF). Runs on whatever device vm_backend_vulkan_create
// picks (lavapipe in CI; VLLM_METAL_VULKAN_DEVICE chooses another) and skips
// when the library was built without Vulkan or no device exists.
//
// The CPU side runs with VLLM_METAL_Q8_ACTIVATIONS=0 (f32 activations against
// GGUF blocks, as the GPU computes). Tolerances, as max|gpu - cpu| over
// max|cpu| of an output: 1e-4 for f32 arithmetic that differs only in
// summation order; 3e-3 for attention over an f16 cache (the CPU rounds q and
// the softmax weights to f16 there, the GPU keeps them f32); 2e-3 for model
// logits (30 layers of such differences; the top token must agree too).
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/vulkan/vulkan_backend.h"
#include "model/session.h"

static vm_backend *gpu, *cpu;

static const char *q8_act = "0";   // VLLM_METAL_Q8_ACTIVATIONS for both backends

static void setup(void) {
    setenv("VLLM_METAL_Q8_ACTIVATIONS", q8_act, 1);
    vm_err e = {{0}};
    gpu = vm_backend_vulkan_create(NULL, &e);
    if (!gpu) {
        cr_log_warn("Vulkan backend unavailable, skipping: %s", e.msg);
        return;
    }
    cpu = vm_backend_cpu_create(2, &e);
    cr_assert(cpu, "%s", e.msg);
}

static void teardown(void) {
    if (gpu) gpu->destroy(gpu);
    if (cpu) cpu->destroy(cpu);
    gpu = cpu = NULL;
}

#define NEED_GPU() do { if (!gpu) cr_skip_test("no Vulkan device (or built without Vulkan)"); } while (0)

TestSuite(vulkan, .init = setup, .fini = teardown, .timeout = 300);

// ---- helpers -------------------------------------------------------------------------

static uint64_t rng = 88172645463325252ull;
static uint32_t rnd_u32(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return (uint32_t)(rng >> 11); }
static float rnd(void) { return (float)(rnd_u32() % 2000001) / 1000000.0f - 1.0f; } // [-1, 1]
static float *rnd_vec(size_t n, float amp) {
    float *v = malloc(n * sizeof *v);
    for (size_t i = 0; i < n; i++) v[i] = amp * rnd();
    return v;
}

typedef struct { vm_buf *g, *c; size_t bytes; } pair;

static pair pair_new(const void *host, size_t bytes) {
    vm_err e = {{0}};
    pair p = { gpu->buf_alloc(gpu, bytes, &e), cpu->buf_alloc(cpu, bytes, &e), bytes };
    cr_assert(p.g && p.c, "%s", e.msg);
    if (host) { gpu->buf_write(gpu, p.g, 0, host, bytes); cpu->buf_write(cpu, p.c, 0, host, bytes); }
    return p;
}

static void pair_free(pair p) { gpu->buf_free(gpu, p.g); cpu->buf_free(cpu, p.c); }

// max|gpu - cpu| / max|cpu| of a float buffer, after syncing both.
static double pair_rel(pair p, size_t n, const char *what) {
    vm_err e = {{0}};
    cr_assert(gpu->sync(gpu, &e) == 0, "%s: %s", what, e.msg);
    float *a = malloc(n * 4), *b = malloc(n * 4);
    gpu->buf_read(gpu, p.g, 0, a, n * 4);
    cpu->buf_read(cpu, p.c, 0, b, n * 4);
    double mx = 0, md = 0;
    size_t worst = 0;
    for (size_t i = 0; i < n; i++) {
        mx = fmax(mx, fabs(b[i]));
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= md)) { md = d; worst = i; }
    }
    double rel = md / (mx > 0 ? mx : 1);
    if (rel > 1e-5) cr_log_info("%s: max|diff| %.3g at %zu (gpu %g cpu %g), rel %.3g", what, md, worst, a[worst], b[worst], rel);
    free(a); free(b);
    return rel;
}

// ---- matmul and embedding over every weight type ------------------------------------------

typedef struct { vm_weight w; void *data, *scales, *biases; } test_weight;

static uint16_t f16_small(float lo, float hi) { return vm_f32_to_f16(lo + (hi - lo) * (rnd() * 0.5f + 0.5f)); }

static test_weight make_weight(vm_dtype dt, int rows, int cols, int bits, int group, vm_dtype sdt) {
    test_weight t = {0};
    vm_weight *w = &t.w;
    w->name = "test.weight";
    w->dtype = dt;
    w->rows = rows;
    w->cols = cols;
    w->bits = bits;
    w->group_size = group;
    w->scale_dtype = sdt;
    size_t n = (size_t)rows * cols;
    if (dt == VM_DTYPE_MLX_AFFINE) {
        size_t words = n * bits / 32, ng = n / group;
        uint32_t *q = malloc(words * 4);
        for (size_t i = 0; i < words; i++) q[i] = rnd_u32() ^ (rnd_u32() << 16);
        size_t es = sdt == VM_DTYPE_F32 ? 4 : 2;
        uint8_t *s = malloc(ng * es), *b = malloc(ng * es);
        for (size_t i = 0; i < ng; i++) {
            float sv = 0.01f + 0.05f * fabsf(rnd()), bv = 0.1f * rnd();
            if (sdt == VM_DTYPE_F32) { memcpy(s + 4 * i, &sv, 4); memcpy(b + 4 * i, &bv, 4); }
            else if (sdt == VM_DTYPE_BF16) { uint16_t a = vm_f32_to_bf16(sv), c = vm_f32_to_bf16(bv); memcpy(s + 2 * i, &a, 2); memcpy(b + 2 * i, &c, 2); }
            else { uint16_t a = vm_f32_to_f16(sv), c = vm_f32_to_f16(bv); memcpy(s + 2 * i, &a, 2); memcpy(b + 2 * i, &c, 2); }
        }
        t.data = q; t.scales = s; t.biases = b;
        w->data = q; w->scales = s; w->biases = b;
        return t;
    }
    size_t rb = vm_weight_row_bytes(w);
    uint8_t *d = malloc(rb * rows);
    for (int r = 0; r < rows; r++) {
        uint8_t *row = d + (size_t)r * rb;
        if (dt == VM_DTYPE_F32) for (int c = 0; c < cols; c++) { float f = rnd(); memcpy(row + 4 * c, &f, 4); }
        else if (dt == VM_DTYPE_F16) for (int c = 0; c < cols; c++) { uint16_t h = vm_f32_to_f16(rnd()); memcpy(row + 2 * c, &h, 2); }
        else if (dt == VM_DTYPE_BF16) for (int c = 0; c < cols; c++) { uint16_t h = vm_f32_to_bf16(rnd()); memcpy(row + 2 * c, &h, 2); }
        else {
            size_t bb = dt == VM_DTYPE_Q4_0 ? 18 : dt == VM_DTYPE_Q4_1 ? 20 : 34;
            for (int b = 0; b < cols / 32; b++) {
                uint8_t *blk = row + b * bb;
                for (size_t i = 0; i < bb; i++) blk[i] = (uint8_t)rnd_u32();
                uint16_t dd = f16_small(0.005f, 0.05f), mm = f16_small(-0.2f, 0.2f);
                memcpy(blk, &dd, 2);
                if (dt == VM_DTYPE_Q4_1) memcpy(blk + 2, &mm, 2);
            }
        }
    }
    t.data = d;
    w->data = d;
    return t;
}

static void free_weight(test_weight *t) { free(t->data); free(t->scales); free(t->biases); }

// Token counts cover the matvec tiles (1, 4, 8 tokens) and the GEMM tiles
// (32 and 64 tokens, partial tiles on both axes); float weights also take a
// column count that is no multiple of the GEMM's 32-column step. Each n also
// runs matmul + add_bias + a residual add (folded into the matmul on the GPU).
static int check_cols;   // > 0: this many columns (the split-K cases)
static double check_tol = 1e-4;   // matmul agreement (max|diff| / max|cpu|)

static void check_matmul(const char *what, vm_dtype dt, int bits, int group, vm_dtype sdt) {
    NEED_GPU();
    const int float_w = dt == VM_DTYPE_F32 || dt == VM_DTYPE_F16 || dt == VM_DTYPE_BF16;
    const int rows = 67, cols = check_cols > 0 ? check_cols : float_w ? 264 : 256;
    test_weight t = make_weight(dt, rows, cols, bits, group, sdt);
    vm_err e = {{0}};
    vm_weight wg = t.w, wc = t.w;
    cr_assert(gpu->weight_prepare(gpu, &wg, &e) == 0, "%s: %s", what, e.msg);
    cr_assert(cpu->weight_prepare(cpu, &wc, &e) == 0, "%s: %s", what, e.msg);
    float bias[67];
    for (int i = 0; i < rows; i++) bias[i] = rnd();
    vm_tensor bt = { .name = "bias", .dtype = VM_DTYPE_F32, .ndim = 1, .shape = { rows }, .data = bias };
    static const int ns[] = { 1, 3, 5, 9, 33, 70 };
    for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
        const int n = ns[k];
        float *x = rnd_vec((size_t)n * cols, 1.0f), *r = rnd_vec((size_t)n * rows, 1.0f);
        pair px = pair_new(x, (size_t)n * cols * 4), py = pair_new(NULL, (size_t)n * rows * 4);
        gpu->matmul(gpu, &wg, px.g, n, py.g);
        cpu->matmul(cpu, &wc, px.c, n, py.c);
        double rel = pair_rel(py, (size_t)n * rows, what);
        cr_expect(rel < check_tol, "%s matmul n=%d: rel %.3g", what, n, rel);
        // out = x @ W^T + bias; res += out
        pair pr = pair_new(r, (size_t)n * rows * 4);
        gpu->matmul(gpu, &wg, px.g, n, py.g);
        cpu->matmul(cpu, &wc, px.c, n, py.c);
        gpu->add_bias(gpu, py.g, &bt, n, rows);
        cpu->add_bias(cpu, py.c, &bt, n, rows);
        gpu->add(gpu, pr.g, py.g, (size_t)n * rows);
        cpu->add(cpu, pr.c, py.c, (size_t)n * rows);
        rel = pair_rel(py, (size_t)n * rows, what);
        cr_expect(rel < check_tol, "%s matmul+bias n=%d: rel %.3g", what, n, rel);
        rel = pair_rel(pr, (size_t)n * rows, what);
        cr_expect(rel < check_tol, "%s matmul+bias+residual n=%d: rel %.3g", what, n, rel);
        pair_free(pr);
        free(r);
        if (n <= 9) {
            // embedding: rows of the same table
            int32_t ids[9];
            for (int i = 0; i < n; i++) ids[i] = (int32_t)(rnd_u32() % rows);
            if (n > 1) ids[1] = -1;  // out of range gives zeros
            pair pi = pair_new(ids, (size_t)n * 4), pe = pair_new(NULL, (size_t)n * cols * 4);
            gpu->embed(gpu, &wg, pi.g, n, pe.g);
            cpu->embed(cpu, &wc, pi.c, n, pe.c);
            rel = pair_rel(pe, (size_t)n * cols, what);
            cr_expect(rel < 1e-6, "%s embed n=%d: rel %.3g", what, n, rel);
            pair_free(pi); pair_free(pe);
        }
        pair_free(px); pair_free(py);
        free(x);
    }
    free_weight(&t);
}

static void check_model(const char *path, int max_batch, int block_size);

// The same with every batch of more than 8 tokens through the tiled GEMM
// (by default small matrices such as these take the matvec up to 64 tokens).
static void setup_gemm(void) {
    setenv("VLLM_METAL_VULKAN_GEMM_MIN_TILES", "0", 1);
    setup();
    unsetenv("VLLM_METAL_VULKAN_GEMM_MIN_TILES");
}
// 1064 columns: on a cooperative-matrix device the GEMM splits K in 4 (3 x 320
// + 104: the last split ragged) and splitk.comp adds the parts and the epilogue.
static void setup_splitk(void) { setup_gemm(); check_cols = 1064; }
static void teardown_splitk(void) { check_cols = 0; teardown(); }
Test(vulkan, gemm_bf16_splitk, .init = setup_splitk, .fini = teardown_splitk) { check_matmul("gemm bf16 split-K", VM_DTYPE_BF16, 0, 0, 0); }
Test(vulkan, gemm_f16_splitk, .init = setup_splitk, .fini = teardown_splitk) { check_matmul("gemm f16 split-K", VM_DTYPE_F16, 0, 0, 0); }
// quantized weights take the tiled GEMM (gemm.comp), which splits K the same way
static void setup_splitk_q(void) { setup_gemm(); check_cols = 1088; }
Test(vulkan, gemm_mlx4_splitk, .init = setup_splitk_q, .fini = teardown_splitk) {
    check_matmul("gemm mlx4 g64 split-K", VM_DTYPE_MLX_AFFINE, 4, 64, VM_DTYPE_BF16);
}
Test(vulkan, gemm_q8_0_splitk, .init = setup_splitk_q, .fini = teardown_splitk) { check_matmul("gemm q8_0 split-K", VM_DTYPE_Q8_0, 0, 0, 0); }
Test(vulkan, gemm_f32, .init = setup_gemm) { check_matmul("gemm f32", VM_DTYPE_F32, 0, 0, 0); }
Test(vulkan, gemm_f16, .init = setup_gemm) { check_matmul("gemm f16", VM_DTYPE_F16, 0, 0, 0); }
Test(vulkan, gemm_bf16, .init = setup_gemm) { check_matmul("gemm bf16", VM_DTYPE_BF16, 0, 0, 0); }
Test(vulkan, gemm_q4_1, .init = setup_gemm) { check_matmul("gemm q4_1", VM_DTYPE_Q4_1, 0, 0, 0); }
Test(vulkan, gemm_q8_0, .init = setup_gemm) { check_matmul("gemm q8_0", VM_DTYPE_Q8_0, 0, 0, 0); }
Test(vulkan, gemm_mlx2_g64_f16, .init = setup_gemm) { check_matmul("gemm mlx2 g64", VM_DTYPE_MLX_AFFINE, 2, 64, VM_DTYPE_F16); }
Test(vulkan, model_tiny_bf16_gemm, .init = setup_gemm) { check_model("tests/data/tiny/qwen2_bf16", 512, 16); }

// GGUF block weights with llama.cpp's 8-bit activations on both backends (the
// default for GGUF models): the same quantized activations and, for Q4_1, the
// same f16 block sum (q8act.comp's correction), summed in other orders:
// agreement to 5e-5 of max (f32 activations on the GPU against 8-bit ones on
// the CPU differ by ~5e-3; without the Q4_1 correction, ~1.5e-4).
static void setup_q8(void) { q8_act = "1"; check_tol = 5e-5; setup(); }
static void teardown_q8(void) { q8_act = "0"; check_tol = 1e-4; teardown(); }
Test(vulkan, matmul_q4_0_q8act, .init = setup_q8, .fini = teardown_q8) { check_matmul("q4_0 q8act", VM_DTYPE_Q4_0, 0, 0, 0); }
Test(vulkan, matmul_q4_1_q8act, .init = setup_q8, .fini = teardown_q8) { check_matmul("q4_1 q8act", VM_DTYPE_Q4_1, 0, 0, 0); }
Test(vulkan, matmul_q8_0_q8act, .init = setup_q8, .fini = teardown_q8) { check_matmul("q8_0 q8act", VM_DTYPE_Q8_0, 0, 0, 0); }
Test(vulkan, gemm_q4_1_q8act, .init = setup_q8, .fini = teardown_q8) {
    setenv("VLLM_METAL_VULKAN_GEMM_MIN_TILES", "0", 1);   // (read when the backend is made: remade here)
    teardown(); setup();
    unsetenv("VLLM_METAL_VULKAN_GEMM_MIN_TILES");
    check_matmul("gemm q4_1 q8act", VM_DTYPE_Q4_1, 0, 0, 0);
}

Test(vulkan, matmul_f32) { check_matmul("f32", VM_DTYPE_F32, 0, 0, 0); }
Test(vulkan, matmul_f16) { check_matmul("f16", VM_DTYPE_F16, 0, 0, 0); }
Test(vulkan, matmul_bf16) { check_matmul("bf16", VM_DTYPE_BF16, 0, 0, 0); }
Test(vulkan, matmul_q4_0) { check_matmul("q4_0", VM_DTYPE_Q4_0, 0, 0, 0); }
Test(vulkan, matmul_q4_1) { check_matmul("q4_1", VM_DTYPE_Q4_1, 0, 0, 0); }
Test(vulkan, matmul_q8_0) { check_matmul("q8_0", VM_DTYPE_Q8_0, 0, 0, 0); }
Test(vulkan, matmul_mlx4_g64_f16) { check_matmul("mlx4 g64", VM_DTYPE_MLX_AFFINE, 4, 64, VM_DTYPE_F16); }
Test(vulkan, matmul_mlx4_g32_bf16) { check_matmul("mlx4 g32", VM_DTYPE_MLX_AFFINE, 4, 32, VM_DTYPE_BF16); }
Test(vulkan, matmul_mlx8_g128_f32) { check_matmul("mlx8 g128", VM_DTYPE_MLX_AFFINE, 8, 128, VM_DTYPE_F32); }
Test(vulkan, matmul_mlx2_g64_f16) { check_matmul("mlx2 g64", VM_DTYPE_MLX_AFFINE, 2, 64, VM_DTYPE_F16); }

// ---- norms, rotary, elementwise -------------------------------------------------------------

Test(vulkan, rmsnorm) {
    NEED_GPU();
    const int rows = 7, dim = 576;
    vm_dtype dts[] = { VM_DTYPE_F32, VM_DTYPE_BF16, VM_DTYPE_F16 };
    for (int k = 0; k < 3; k++) {
        uint8_t wb[576 * 4];
        for (int i = 0; i < dim; i++) {
            float f = 1.0f + 0.5f * rnd();
            if (dts[k] == VM_DTYPE_F32) memcpy(wb + 4 * i, &f, 4);
            else { uint16_t h = dts[k] == VM_DTYPE_BF16 ? vm_f32_to_bf16(f) : vm_f32_to_f16(f); memcpy(wb + 2 * i, &h, 2); }
        }
        vm_tensor w = { .name = "norm", .dtype = dts[k], .ndim = 1, .shape = { dim }, .data = wb };
        float *x = rnd_vec((size_t)rows * dim, 3.0f);
        pair px = pair_new(x, (size_t)rows * dim * 4), po = pair_new(NULL, (size_t)rows * dim * 4);
        gpu->rmsnorm(gpu, px.g, &w, 1e-5f, rows, dim, po.g);
        cpu->rmsnorm(cpu, px.c, &w, 1e-5f, rows, dim, po.c);
        cr_expect(pair_rel(po, (size_t)rows * dim, "rmsnorm") < 1e-5);
        // in place, per-head shape (Qwen3 q_norm): 21 rows of 64
        gpu->rmsnorm(gpu, px.g, &w, 1e-6f, 21, 64, px.g);
        cpu->rmsnorm(cpu, px.c, &w, 1e-6f, 21, 64, px.c);
        cr_expect(pair_rel(px, (size_t)rows * dim, "rmsnorm in place") < 1e-5);
        pair_free(px); pair_free(po);
        free(x);
    }
}

Test(vulkan, rope) {
    NEED_GPU();
    const int n = 6, heads = 3, hd = 64;
    int32_t pos[6] = { 0, 1, 17, 255, 1000, 4095 };
    float inv[32];
    for (int i = 0; i < hd / 2; i++) inv[i] = (float)(1.0 / pow(10000.0, 2.0 * i / hd));
    for (int mode = 0; mode < 4; mode++) {
        vm_rope r = { hd, inv, mode & 1, (mode & 2) ? powf(10000.0f, -2.0f / hd) : 0.0f };
        float *x = rnd_vec((size_t)n * heads * hd, 1.0f);
        pair px = pair_new(x, (size_t)n * heads * hd * 4), pp = pair_new(pos, sizeof pos);
        gpu->rope(gpu, px.g, pp.g, n, heads, hd, &r);
        cpu->rope(cpu, px.c, pp.c, n, heads, hd, &r);
        double rel = pair_rel(px, (size_t)n * heads * hd, "rope");
        cr_expect(rel < 1e-4, "rope mode %d: rel %.3g", mode, rel);
        pair_free(px); pair_free(pp);
        free(x);
    }
}

Test(vulkan, elementwise) {
    NEED_GPU();
    const int n = 5, dim = 1000;
    const size_t total = (size_t)n * dim;
    float *a = rnd_vec(total, 4.0f), *b = rnd_vec(total, 2.0f);
    pair pa = pair_new(a, total * 4), pb = pair_new(b, total * 4), po = pair_new(NULL, total * 4);
    gpu->swiglu(gpu, pa.g, pb.g, total, po.g);
    cpu->swiglu(cpu, pa.c, pb.c, total, po.c);
    cr_expect(pair_rel(po, total, "swiglu") < 1e-5);
    gpu->add(gpu, pa.g, pb.g, total);
    cpu->add(cpu, pa.c, pb.c, total);
    cr_expect(pair_rel(pa, total, "add") < 1e-6);
    uint16_t bias[1000];
    for (int i = 0; i < dim; i++) bias[i] = vm_f32_to_bf16(rnd());
    vm_tensor bt = { .name = "bias", .dtype = VM_DTYPE_BF16, .ndim = 1, .shape = { dim }, .data = bias };
    gpu->add_bias(gpu, pa.g, &bt, n, dim);
    cpu->add_bias(cpu, pa.c, &bt, n, dim);
    cr_expect(pair_rel(pa, total, "add_bias") < 1e-6);
    int32_t rows[3] = { 4, 0, 2 };
    pair pr = pair_new(rows, sizeof rows);
    gpu->get_rows(gpu, pa.g, pr.g, 3, dim, po.g);
    cpu->get_rows(cpu, pa.c, pr.c, 3, dim, po.c);
    cr_expect(pair_rel(po, 3 * (size_t)dim, "get_rows") < 1e-7);
    pair_free(pa); pair_free(pb); pair_free(po); pair_free(pr);
    free(a); free(b);
}

// ---- sample: argmax and the inverse-CDF draw on the device ---------------------------------

// Rows of logits (a vocabulary-sized row, ties, -inf, a NaN, a row of NaNs),
// greedy and tempered: argmax ids equal the CPU's exactly; a drawn id must
// lie in the CDF interval of u (computed here in f64), within 1e-4 of the
// total mass for the GPU's f32 sums, and the CPU's equals vm_draw_u's.
// This test is built without loop vectorization: aarch64 GCC 12 crashes
// vectorizing its f64 reductions (an internal compiler error).
#pragma GCC push_options
#pragma GCC optimize("no-tree-vectorize")

// sum of exp((x[c] - mx) / t) over c < n, in f64
static double mass(const float *x, int n, double mx, float t) {
    double s = 0;
    for (int c = 0; c < n; c++) s += exp(((double)x[c] - mx) / t);
    return s;
}

Test(vulkan, sample) {
    NEED_GPU();
    const int rows = 20, cols = 151936;
    float *x = rnd_vec((size_t)rows * cols, 8.0f);
    x[(size_t)1 * cols + 7] = x[(size_t)1 * cols + 90000] = 50.0f;            // tie: the first wins
    for (int c = 0; c < cols; c++) x[(size_t)2 * cols + c] = c % 3 ? -INFINITY : x[(size_t)2 * cols + c];
    x[(size_t)3 * cols + 5] = NAN;
    x[(size_t)3 * cols + 6] = 60.0f;                                          // NaN never wins
    for (int c = 0; c < cols; c++) x[(size_t)4 * cols + c] = NAN;             // all NaN: 0
    struct { float t, u32; double u; } prm[20];
    for (int r = 0; r < rows; r++) {   // rows 12-19: sharp (0.05) and flat (5) temperatures
        prm[r].t = r < 5 ? 0.0f : r >= 12 ? (r % 2 ? 0.05f : 5.0f) : r % 2 ? 0.7f : 1.3f;
        prm[r].u = (rnd() + 1.0) / 2.0 * 0.999;
        prm[r].u32 = (float)prm[r].u;
    }
    prm[11].u = 0.9999999; prm[11].u32 = (float)prm[11].u;                    // the far end of the CDF
    pair px = pair_new(x, (size_t)rows * cols * 4), pp = pair_new(prm, sizeof prm), po = pair_new(NULL, rows * 4);
    gpu->sample(gpu, px.g, rows, cols, pp.g, po.g);
    cpu->sample(cpu, px.c, rows, cols, pp.c, po.c);
    vm_err e = {{0}};
    cr_assert(gpu->sync(gpu, &e) == 0, "%s", e.msg);
    int32_t ig[20], ic[20];
    gpu->buf_read(gpu, po.g, 0, ig, sizeof ig);
    cpu->buf_read(cpu, po.c, 0, ic, sizeof ic);
    cr_expect(ic[1] == 7 && ic[3] == 6 && ic[4] == 0, "cpu argmax: %d %d %d", ic[1], ic[3], ic[4]);
    float *row = malloc((size_t)cols * 4);
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * cols;
        if (prm[r].t == 0.0f) {
            cr_expect(ig[r] == vm_argmax(xr, cols) && ic[r] == ig[r], "row %d: gpu %d cpu %d argmax %d", r, ig[r], ic[r], vm_argmax(xr, cols));
            continue;
        }
        memcpy(row, xr, (size_t)cols * 4);
        cr_expect(ic[r] == vm_draw_u(row, cols, prm[r].t, prm[r].u), "row %d: cpu %d", r, ic[r]);
        double mx = -INFINITY, total, below;
        for (int c = 0; c < cols; c++) mx = fmax(mx, xr[c]);
        total = mass(xr, cols, mx, prm[r].t);
        below = mass(xr, ig[r] < cols ? ig[r] : cols, mx, prm[r].t);
        double p = ig[r] >= 0 && ig[r] < cols ? exp(((double)xr[ig[r]] - mx) / prm[r].t) : -1, at = prm[r].u * total;
        cr_expect(p > 0 && below - 1e-4 * total <= at && at <= below + p + 1e-4 * total,
                  "row %d: gpu %d outside the CDF interval of u=%g (below %g, p %g, total %g)", r, ig[r], prm[r].u, below, p, total);
    }
    free(row);
    pair_free(px); pair_free(pp); pair_free(po);
    free(x);
}
#pragma GCC pop_options

// ---- KV cache and paged attention -------------------------------------------------------------

// Three sequences with their whole context written through cache_write, then
// queries: seq 0 decodes at position ctx-1, seq 1 prefills all of its tokens,
// seq 2 decodes at ctx-1. decode_only 1: one query token of seq 2 only; 2:
// one decode token of each sequence (a decode step); 3: as 1 over a
// 1200-token context.
enum { ATT_MIXED, ATT_DECODE, ATT_DECODE3, ATT_DECODE_LONG };
static void check_attention(vm_dtype kv, int decode_only) {
    NEED_GPU();
    const int bs = 16, kvh = 2, heads = 6, hd = 64, ctx[3] = { 150, 40, decode_only == ATT_DECODE_LONG ? 1200 : 300 };
    const int max_blocks = 80, n_blocks = 3 * max_blocks + 1;
    const size_t es = kv == VM_DTYPE_F16 ? 2 : 4, cache_bytes = (size_t)n_blocks * kvh * bs * hd * es;
    int32_t table[3 * 80];
    for (int i = 0; i < 3 * max_blocks; i++) table[i] = 1 + i;
    for (int i = 3 * max_blocks - 1; i > 0; i--) { int j = (int)(rnd_u32() % (i + 1)); int32_t t = table[i]; table[i] = table[j]; table[j] = t; }
    // write the contexts
    int total = ctx[0] + ctx[1] + ctx[2];
    int32_t *slots = malloc(sizeof(int32_t) * total);
    for (int s = 0, t = 0; s < 3; s++)
        for (int p = 0; p < ctx[s]; p++, t++) slots[t] = table[s * max_blocks + p / bs] * bs + p % bs;
    slots[5] = -1; // a skipped token (its slot keeps what was there: zeros)
    float *k = rnd_vec((size_t)total * kvh * hd, 1.0f), *v = rnd_vec((size_t)total * kvh * hd, 1.0f);
    void *zeros = calloc(1, cache_bytes);
    pair pk = pair_new(k, (size_t)total * kvh * hd * 4), pv = pair_new(v, (size_t)total * kvh * hd * 4);
    pair pkc = pair_new(zeros, cache_bytes), pvc = pair_new(zeros, cache_bytes), psl = pair_new(slots, (size_t)total * 4);
    vm_attn_meta mw = { .n_tokens = total, .block_size = bs, .slot_mapping = psl.g, .kv_dtype = kv };
    vm_attn_meta mc = mw;
    mc.slot_mapping = psl.c;
    gpu->cache_write(gpu, pk.g, pv.g, &mw, pkc.g, pvc.g, kvh, hd);
    cpu->cache_write(cpu, pk.c, pv.c, &mc, pkc.c, pvc.c, kvh, hd);
    vm_err e = {{0}};
    cr_assert(gpu->sync(gpu, &e) == 0, "%s", e.msg);
    uint8_t *cg = malloc(cache_bytes), *cc = malloc(cache_bytes);
    gpu->buf_read(gpu, pkc.g, 0, cg, cache_bytes);
    cpu->buf_read(cpu, pkc.c, 0, cc, cache_bytes);
    size_t diff = 0;
    for (size_t i = 0; i < cache_bytes; i++) diff += cg[i] != cc[i];
    cr_expect(diff == 0, "k cache differs in %zu bytes", diff);
    gpu->buf_read(gpu, pvc.g, 0, cg, cache_bytes);
    cpu->buf_read(cpu, pvc.c, 0, cc, cache_bytes);
    for (size_t i = 0, d = 0; i < cache_bytes; i++) d += cg[i] != cc[i], diff = d;
    cr_expect(diff == 0, "v cache differs in %zu bytes", diff);
    // queries
    int nq, n_seqs;
    int32_t pos[64], seq_start[4], ctx_len[3], qtable[3 * 80];
    memcpy(qtable, table, sizeof table);
    if (decode_only == ATT_DECODE3) {
        n_seqs = 3; nq = 3;
        for (int s = 0; s < 3; s++) { pos[s] = ctx[s] - 1; seq_start[s] = s; ctx_len[s] = ctx[s]; }
        seq_start[3] = 3;
    } else if (decode_only) {
        nq = 1; n_seqs = 1; pos[0] = ctx[2] - 1;
        seq_start[0] = 0; seq_start[1] = 1; ctx_len[0] = ctx[2];
        memcpy(qtable, table + 2 * max_blocks, sizeof(int32_t) * max_blocks);
    } else {
        n_seqs = 3; nq = 0;
        seq_start[0] = 0;
        pos[nq++] = ctx[0] - 1; seq_start[1] = nq;
        for (int p = 0; p < ctx[1]; p++) pos[nq++] = p;
        seq_start[2] = nq;
        pos[nq++] = ctx[2] - 1; seq_start[3] = nq;
        for (int s = 0; s < 3; s++) ctx_len[s] = ctx[s];
    }
    float *q = rnd_vec((size_t)nq * heads * hd, 1.0f);
    pair pq = pair_new(q, (size_t)nq * heads * hd * 4), po = pair_new(NULL, (size_t)nq * heads * hd * 4);
    pair ppos = pair_new(pos, (size_t)nq * 4), pss = pair_new(seq_start, (size_t)(n_seqs + 1) * 4);
    pair pcl = pair_new(ctx_len, (size_t)n_seqs * 4), ptb = pair_new(qtable, (size_t)n_seqs * max_blocks * 4);
    int max_ctx = ctx[2];
    vm_attn_meta ag = { nq, n_seqs, bs, max_blocks, max_ctx, ppos.g, pss.g, pcl.g, ptb.g, psl.g, kv, NULL };
    vm_attn_meta ac = { nq, n_seqs, bs, max_blocks, max_ctx, ppos.c, pss.c, pcl.c, ptb.c, psl.c, kv, NULL };
    float scale = 1.0f / 8.0f;
    gpu->attention(gpu, pq.g, pkc.g, pvc.g, &ag, heads, kvh, hd, scale, po.g);
    cpu->attention(cpu, pq.c, pkc.c, pvc.c, &ac, heads, kvh, hd, scale, po.c);
    double rel = pair_rel(po, (size_t)nq * heads * hd, "attention");
    double tol = kv == VM_DTYPE_F16 ? 3e-3 : 1e-4;
    cr_expect(rel < tol, "attention (%s cache%s): rel %.3g > %.0e", kv == VM_DTYPE_F16 ? "f16" : "f32",
              decode_only ? ", decode" : "", rel, tol);
    pair ps[] = { pk, pv, pkc, pvc, psl, pq, po, ppos, pss, pcl, ptb };
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) pair_free(ps[i]);
    free(k); free(v); free(q); free(zeros); free(slots); free(cg); free(cc);
}

Test(vulkan, attention_f32) { check_attention(VM_DTYPE_F32, 0); }
Test(vulkan, attention_f16) { check_attention(VM_DTYPE_F16, 0); }
Test(vulkan, attention_decode_f32) { check_attention(VM_DTYPE_F32, 1); }
Test(vulkan, attention_decode_f16) { check_attention(VM_DTYPE_F16, 1); }
Test(vulkan, attention_decode3_f32) { check_attention(VM_DTYPE_F32, ATT_DECODE3); }
Test(vulkan, attention_decode3_f16) { check_attention(VM_DTYPE_F16, ATT_DECODE3); }
Test(vulkan, attention_decode_long_f32) { check_attention(VM_DTYPE_F32, ATT_DECODE_LONG); }
Test(vulkan, attention_decode_long_f16) { check_attention(VM_DTYPE_F16, ATT_DECODE_LONG); }

// ---- whole models --------------------------------------------------------------------------------

// Prefill `n_prompt` tokens in chunks of max_batch, then decode `n_decode`
// tokens, on both backends; compares every position's logits.
static void check_model(const char *path, int max_batch, int block_size) {
    NEED_GPU();
    if (access(path, R_OK) != 0) cr_skip_test("%s not present", path);
    vm_err e = {{0}};
    vm_model *mg = vm_model_create(path, gpu, max_batch, &e);
    cr_assert(mg, "%s: %s", path, e.msg);
    vm_model *mc = vm_model_create(path, cpu, max_batch, &e);
    cr_assert(mc, "%s: %s", path, e.msg);
    const int vocab = vm_model_get_config(mc)->vocab_size, n_prompt = 13, n_decode = 4, n = n_prompt + n_decode;
    int32_t ids[17];
    for (int i = 0; i < n; i++) ids[i] = (int32_t)(1 + (rnd_u32() % (vocab - 1)));
    vm_session *sg = vm_session_create(mg, 64, block_size, &e), *sc = vm_session_create(mc, 64, block_size, &e);
    cr_assert(sg && sc, "%s", e.msg);
    float *lg = malloc(sizeof(float) * n * vocab), *lc = malloc(sizeof(float) * n * vocab);
    cr_assert(vm_session_eval(sg, ids, n_prompt, 1, lg, &e) == 0, "%s", e.msg);
    cr_assert(vm_session_eval(sc, ids, n_prompt, 1, lc, &e) == 0, "%s", e.msg);
    for (int i = n_prompt; i < n; i++) {
        cr_assert(vm_session_eval(sg, ids + i, 1, 1, lg + (size_t)i * vocab, &e) == 0, "%s", e.msg);
        cr_assert(vm_session_eval(sc, ids + i, 1, 1, lc + (size_t)i * vocab, &e) == 0, "%s", e.msg);
    }
    double worst = 0;
    int top_differs = 0;
    for (int i = 0; i < n; i++) {
        const float *a = lg + (size_t)i * vocab, *b = lc + (size_t)i * vocab;
        double mx = 0, md = 0;
        for (int j = 0; j < vocab; j++) { mx = fmax(mx, fabs(b[j])); md = fmax(md, fabs((double)a[j] - b[j])); }
        worst = fmax(worst, md / (mx > 0 ? mx : 1));
        int ta = vm_argmax(a, vocab), tb = vm_argmax(b, vocab);
        if (ta != tb && fabs(b[ta] - b[tb]) > 1e-3 * mx) top_differs++;
    }
    fprintf(stderr, "%s: worst logits rel diff %.3g over %d positions\n", path, worst, n);
    cr_expect(worst < 2e-3, "%s: logits differ by %.3g of max", path, worst);
    cr_expect(top_differs == 0, "%s: top token differs at %d positions", path, top_differs);
    // the same steps with the greedy id drawn on the GPU: the argmax of its own logits
    vm_session_reset(sg);
    for (int i = n_prompt - 1; i < n; i++) {
        int32_t next = -1;
        cr_assert(vm_session_eval_greedy(sg, i == n_prompt - 1 ? ids : ids + i, i == n_prompt - 1 ? n_prompt : 1,
                                         &next, &e) == 0, "%s", e.msg);
        cr_expect(next == vm_argmax(lg + (size_t)i * vocab, vocab), "%s: greedy id on the GPU %d at %d, argmax %d",
                  path, next, i, vm_argmax(lg + (size_t)i * vocab, vocab));
    }
    vm_session_free(sg); vm_session_free(sc);
    vm_model_free(mg); vm_model_free(mc);
    free(lg); free(lc);
}

Test(vulkan, model_tiny_f32) { check_model("tests/data/tiny/llama_gqa_tied", 5, 8); }
Test(vulkan, model_tiny_bf16) { check_model("tests/data/tiny/qwen2_bf16", 512, 16); }
Test(vulkan, model_tiny_qwen3_f32) { check_model("tests/data/tiny/qwen3", 512, 16); }
Test(vulkan, model_tiny_mlx_q4) { check_model("tests/data/tiny/qwen3_mlx_q4g64", 512, 16); }
Test(vulkan, model_tiny_mlx_mixed) { check_model("tests/data/tiny/llama_gqa_tied_mlx_mixed", 512, 16); }

Test(vulkan, model_smollm2_q4_1) {
    setenv("VLLM_METAL_KV_CACHE_DTYPE", "f32", 1);
    const char *p = getenv("VLLM_METAL_TEST_MODEL");
    char buf[1024];
    if (!p) { snprintf(buf, sizeof buf, "%s/.cache/vllm-metal/SmolLM2-135M-Instruct.Q4_1.gguf", getenv("HOME")); p = buf; }
    check_model(p, 512, 16);
    unsetenv("VLLM_METAL_KV_CACHE_DTYPE");
}
