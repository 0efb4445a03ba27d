// test_model_golden.c - logits of every tiny model in tests/data/tiny/ against
// the goldens its reference implementation wrote (transformers for HF
// checkpoints, mlx-lm for MLX-quantized ones; see scripts/oracles/).
// Each prompt is prefilled, then the continuation is fed one token at a time
// through the KV cache; every position's logits are compared.
#include <criterion/criterion.h>
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "model/session.h"

#define TINY_DIR "tests/data/tiny"

// Tolerance on max|ours - golden| relative to max|golden| over a prompt.
// f32/f16/bf16 checkpoints: goldens are transformers in f32 on the very same
// (rounded) weights, so only summation order differs: 1e-4.
// MLX-quantized: mlx-lm dequantizes the same packed values; 1e-3 (issue bound).
static double tolerance_for(const char *name) {
    return strstr(name, "_mlx") ? 1e-3 : 1e-4;
}

typedef struct { int block_size, max_batch; } run_cfg;

static int check_model(const char *name, run_cfg rc, double *worst) {
    char dir[512], golden[600];
    snprintf(dir, sizeof dir, "%s/%s", TINY_DIR, name);
    snprintf(golden, sizeof golden, "%s/golden.json", dir);
    json_error_t je;
    json_t *root = json_load_file(golden, 0, &je);
    if (!root) return 0; // not a golden dir
    vm_err e = {{0}};
    vm_backend *be = vm_backend_cpu_create(2, &e);
    vm_model *m = vm_model_create(dir, be, rc.max_batch, &e);
    cr_assert(m, "%s: %s", name, e.msg);
    int vocab = vm_model_get_config(m)->vocab_size;
    json_t *prompts = json_object_get(root, "prompts");
    size_t pi; json_t *p;
    int failures = 0;
    json_array_foreach(prompts, pi, p) {
        json_t *toks = json_object_get(p, "tokens"), *lg = json_object_get(p, "logits");
        int n = (int)json_array_size(toks), plen = (int)json_integer_value(json_object_get(p, "prompt_len"));
        cr_assert(n > 0 && plen > 0 && (int)json_array_size(lg) == n, "%s: malformed golden", name);
        int32_t *ids = malloc(sizeof(int32_t) * n);
        float *ours = malloc(sizeof(float) * (size_t)n * vocab);
        for (int i = 0; i < n; i++) ids[i] = (int32_t)json_integer_value(json_array_get(toks, i));
        vm_session *s = vm_session_create(m, n, rc.block_size, &e);
        cr_assert(s, "%s", e.msg);
        cr_assert(vm_session_eval(s, ids, plen, 1, ours, &e) == 0, "%s: %s", name, e.msg);
        for (int i = plen; i < n; i++)
            cr_assert(vm_session_eval(s, ids + i, 1, 1, ours + (size_t)i * vocab, &e) == 0, "%s", e.msg);
        double maxg = 0, maxd = 0;
        for (int i = 0; i < n; i++) {
            json_t *row = json_array_get(lg, i);
            cr_assert((int)json_array_size(row) == vocab, "%s: golden row width", name);
            for (int j = 0; j < vocab; j++) {
                double g = json_number_value(json_array_get(row, j));
                maxg = fmax(maxg, fabs(g));
                maxd = fmax(maxd, fabs(g - ours[(size_t)i * vocab + j]));
            }
        }
        double rel = maxd / (maxg > 0 ? maxg : 1);
        if (rel > *worst) *worst = rel;
        if (rel > tolerance_for(name)) {
            failures++;
            cr_log_error("%s prompt %zu (block %d, chunk %d): max|diff| %.3g = %.3g of max|golden| (tolerance %.0e)",
                         name, pi, rc.block_size, rc.max_batch, maxd, rel, tolerance_for(name));
        }
        vm_session_free(s);
        free(ids);
        free(ours);
    }
    vm_model_free(m);
    be->destroy(be);
    json_decref(root);
    return failures;
}

static void check_all(run_cfg rc) {
    DIR *d = opendir(TINY_DIR);
    cr_assert(d, "missing %s", TINY_DIR);
    struct dirent *ent;
    int models = 0, failures = 0;
    while ((ent = readdir(d))) {
        if (ent->d_name[0] == '.') continue;
        double worst = 0;
        char g[600];
        snprintf(g, sizeof g, "%s/%s/golden.json", TINY_DIR, ent->d_name);
        FILE *f = fopen(g, "r");
        if (!f) continue;
        fclose(f);
        failures += check_model(ent->d_name, rc, &worst);
        cr_log_info("%-28s worst relative error %.2e", ent->d_name, worst);
        models++;
    }
    closedir(d);
    cr_assert(models >= 5, "only %d golden models found", models);
    cr_assert(failures == 0, "%d prompt(s) out of tolerance", failures);
}

Test(model_golden, prefill_then_decode_block16) { check_all((run_cfg){16, 512}); }
// Small chunks and blocks: prefill split over several forward passes and blocks.
Test(model_golden, chunked_prefill_block8) { check_all((run_cfg){8, 5}); }

// vm_session_eval_greedy draws the id on the backend: on the CPU backend it
// must be the argmax of the logits vm_session_eval gives for the same steps.
Test(model_golden, session_greedy_ids) {
    vm_err e = {{0}};
    vm_backend *be = vm_backend_cpu_create(2, &e);
    cr_assert(be, "%s", e.msg);
    vm_model *m = vm_model_create(TINY_DIR "/qwen2", be, 64, &e);
    cr_assert(m, "%s", e.msg);
    const int vocab = vm_model_get_config(m)->vocab_size;
    vm_session *a = vm_session_create(m, 64, 16, &e), *b = vm_session_create(m, 64, 16, &e);
    cr_assert(a && b, "%s", e.msg);
    int32_t prompt[7] = { 3, 17, 29, 4, 11, 40, 8 }, tok_a, tok_b;
    float *logits = malloc(sizeof(float) * vocab);
    cr_assert(vm_session_eval(a, prompt, 7, 0, logits, &e) == 0, "%s", e.msg);
    tok_a = vm_argmax(logits, vocab);
    cr_assert(vm_session_eval_greedy(b, prompt, 7, &tok_b, &e) == 0, "%s", e.msg);
    for (int step = 0; step < 8; step++) {
        cr_expect(tok_a == tok_b, "step %d: greedy id %d, argmax of the logits %d", step, tok_b, tok_a);
        cr_assert(vm_session_eval(a, &tok_a, 1, 0, logits, &e) == 0, "%s", e.msg);
        tok_a = vm_argmax(logits, vocab);
        cr_assert(vm_session_eval_greedy(b, &tok_b, 1, &tok_b, &e) == 0, "%s", e.msg);
    }
    cr_expect(vm_session_eval_greedy(b, &tok_b, 1, NULL, &e) != 0, "a NULL place for the id is an error");
    free(logits);
    vm_session_free(a); vm_session_free(b);
    vm_model_free(m);
    be->destroy(be);
}

// The CPU backend's one-job attention block (qkv_attention, one-token steps)
// against the separate ops (VLLM_METAL_CPU_FUSE_ATTN=0) on tiny models of
// dense f32/bf16/f16 and MLX affine weights, with q/k/v biases (Qwen2) and
// q/k norms (Qwen3): the same logits, bit for bit, over a 7-token prompt and
// 9 one-token steps.
static float *fused_run(const char *dir, int fused, int *vocab) {
    enum { NP = 7, STEPS = 9 };
    setenv("VLLM_METAL_CPU_FUSE_ATTN", fused ? "1" : "0", 1);
    vm_err e = {{0}};
    vm_backend *be = vm_backend_cpu_create(2, &e);
    cr_assert(be, "%s", e.msg);
    vm_model *m = vm_model_create(dir, be, 64, &e);
    cr_assert(m, "%s: %s", dir, e.msg);
    *vocab = vm_model_get_config(m)->vocab_size;
    vm_session *s = vm_session_create(m, NP + STEPS + 1, 16, &e);
    cr_assert(s, "%s", e.msg);
    float *lg = malloc(sizeof(float) * (size_t)*vocab * (STEPS + 1));
    int32_t ids[NP + STEPS];
    for (int i = 0; i < NP + STEPS; i++) ids[i] = (int32_t)((i * 37 + 11) % (*vocab < 500 ? *vocab : 500));
    cr_assert(vm_session_eval(s, ids, NP, 0, lg, &e) == 0, "%s", e.msg);
    for (int k = 0; k < STEPS; k++)
        cr_assert(vm_session_eval(s, ids + NP + k, 1, 0, lg + (size_t)(k + 1) * *vocab, &e) == 0, "%s", e.msg);
    vm_session_free(s);
    vm_model_free(m);
    be->destroy(be);
    unsetenv("VLLM_METAL_CPU_FUSE_ATTN");
    return lg;
}

Test(model_golden, cpu_fused_attention_block_bit_identical) {
    const char *names[] = { "llama_gqa_tied", "llama_gqa_tied_bf16", "llama_gqa_tied_f16", "llama_gqa_tied_mlx_q4g64",
                            "llama_gqa_tied_mlx_mixed", "llama_gqa_tied_mlx_q8g32", "llama3_untied", "mistral_bf16",
                            "qwen2", "qwen2_bf16", "qwen2_mlx_q4g64", "qwen3", "qwen3_f16", "qwen3_mlx_mixed" };
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        char dir[512];
        snprintf(dir, sizeof dir, "%s/%s", TINY_DIR, names[i]);
        int vocab = 0;
        float *a = fused_run(dir, 0, &vocab), *b = fused_run(dir, 1, &vocab);
        for (int k = 0; k < 10; k++)
            cr_expect(memcmp(a + (size_t)k * vocab, b + (size_t)k * vocab, sizeof(float) * (size_t)vocab) == 0,
                      "%s: step %d's logits differ with the fused block", names[i], k);
        free(a);
        free(b);
    }
}
