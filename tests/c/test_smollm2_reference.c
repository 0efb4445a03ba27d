// test_smollm2_reference.c - the real default model (SmolLM2-135M-Instruct,
// Q4_1 GGUF) against two independent references on the same file:
//  - llama.cpp (llama-cpp-python): first 32 greedy tokens for 20 prompts and
//    teacher-forced top-1 at every position (tests/data/smollm2/llamacpp_golden.json);
//  - transformers' GGUF loader (dequantized f32): last-position logits and
//    greedy tokens, against our f32-activation run (VLLM_METAL_Q8_ACTIVATIONS=0).
// Skipped when the model file is absent (scripts/setup.sh model fetches it).
// VLLM_METAL_TEST_BACKEND=vulkan runs both on the Vulkan backend (a GPU sums
// in its own orders: no bit-exact checks, and against llama.cpp the lines for
// other arithmetic below). VM_TEST_PROMPTS / VM_TEST_GREEDY narrow the run
// (scripts/run_tests.sh: on lavapipe, 2 prompts x 4 greedy tokens).
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/cpu/kernels.h"
#include "backend/vulkan/vulkan_backend.h"
#include "model/session.h"

static const char *model_path(void) {
    const char *p = getenv("VLLM_METAL_TEST_MODEL");
    static char buf[1024];
    if (p) return p;
    snprintf(buf, sizeof buf, "%s/.cache/vllm-metal/SmolLM2-135M-Instruct.Q4_1.gguf", getenv("HOME"));
    return buf;
}

// VM_TEST_PROMPTS / VM_TEST_GREEDY, when below `full`: how far the run is narrowed
static int narrowed(const char *name, int full) {
    const char *v = getenv(name);
    return v && atoi(v) < full ? atoi(v) : full;
}

static int on_gpu(void) {
    const char *b = getenv("VLLM_METAL_TEST_BACKEND");
    return b && !strcmp(b, "vulkan");
}

static int32_t *ids_of(json_t *arr, int *n) {
    *n = (int)json_array_size(arr);
    int32_t *v = malloc(sizeof(int32_t) * (*n + 1));
    for (int i = 0; i < *n; i++) v[i] = (int32_t)json_integer_value(json_array_get(arr, i));
    return v;
}

// Near ties: where the reference's own top-2 logits are closer than this, the
// top-1 flips under rounding differences alone (llama.cpp's logits move by up
// to ~1.0 between its own f16 and f32 KV cache, and by ~0.9 with flash
// attention on), so a disagreement there says nothing about correctness.
#define NEAR_TIE 0.5

typedef struct {
    int prompts, prompts_equal, positions, positions_equal;
    int confident_positions, confident_equal;  // reference margin >= NEAR_TIE
    int greedy_diverged_confidently;           // greedy differed where the reference was sure
    double worst_logit_rel;
    int bit_checks, bit_exact;                 // logits checksums equal to the reference's
} agreement;

// The golden's checksum of exact float32 logits: sum over i of (bits_i + 1) * (2i + 1)
// mod 2^64, i counting over all rows (scripts/oracles/make_smollm2_goldens.py).
static uint64_t bitsum_add(uint64_t acc, const float *x, size_t n, uint64_t *idx) {
    for (size_t i = 0; i < n; i++) {
        uint32_t b;
        memcpy(&b, x + i, 4);
        acc += ((uint64_t)b + 1) * (2 * (*idx)++ + 1);
    }
    return acc;
}

static void bit_check(agreement *a, json_t *p, const char *what, uint64_t ours) {
    json_t *sums = json_object_get(p, "logits_bitsum");
    const char *ref = json_string_value(json_object_get(sums, what));
    if (!ref) return;
    a->bit_checks++;
    if (strtoull(ref, NULL, 16) == ours) a->bit_exact++;
    else cr_log_info("%s: %s logits not bit-exact", json_string_value(json_object_get(p, "name")), what);
}

// Greedy 32 tokens and teacher-forced top-1 for every prompt of a golden file.
static agreement compare(const char *golden_file, int check_logits) {
    agreement a = {0};
    json_error_t je;
    json_t *root = json_load_file(golden_file, 0, &je);
    cr_assert(root, "%s: %s", golden_file, je.text);
    vm_err e = {{0}};
    vm_backend *be = on_gpu() ? vm_backend_vulkan_create(NULL, &e) : vm_backend_cpu_create(0, &e);
    cr_assert(be, "%s", e.msg);
    if (on_gpu()) cr_log_info("on %s", vm_backend_vulkan_device_name(be));
    vm_model *m = vm_model_create(model_path(), be, 512, &e);
    cr_assert(m, "%s", e.msg);
    const int vocab = vm_model_get_config(m)->vocab_size;
    float *logits = malloc(sizeof(float) * vocab * 256);
    // a narrowed run (a software GPU): the first N prompts, the first K greedy
    // tokens of each (teacher forcing then covers the prompt and those K tokens)
    const int max_prompts = narrowed("VM_TEST_PROMPTS", INT32_MAX), max_greedy = narrowed("VM_TEST_GREEDY", INT32_MAX);
    size_t i; json_t *p;
    json_array_foreach(json_object_get(root, "prompts"), i, p) {
        if (i >= (size_t)max_prompts) break;
        int np, ng, nt;
        int32_t *prompt = ids_of(json_object_get(p, "prompt_tokens"), &np);
        int32_t *greedy = ids_of(json_object_get(p, "greedy_tokens"), &ng);
        int32_t *top1 = ids_of(json_object_get(p, "teacher_forced_top1"), &nt);
        json_t *margin = json_object_get(p, "teacher_forced_margin");
        if (np + ng > 256 || nt != np + ng) { free(prompt); free(greedy); free(top1); continue; }
        const int whole = ng <= max_greedy;   // the checksums cover all the golden's tokens
        if (!whole) ng = max_greedy;
        vm_session *s = vm_session_create(m, np + ng + 1, 16, &e);
        cr_assert(s, "%s", e.msg);
        // greedy
        cr_assert(vm_session_eval(s, prompt, np, 0, logits, &e) == 0, "%s", e.msg);
        json_t *ref_logits = json_object_get(p, "last_prompt_logits");
        if (check_logits && json_array_size(ref_logits) == (size_t)vocab) {
            double maxg = 0, maxd = 0;
            for (int j = 0; j < vocab; j++) {
                double g = json_number_value(json_array_get(ref_logits, j));
                maxg = fmax(maxg, fabs(g));
                maxd = fmax(maxd, fabs(g - logits[j]));
            }
            a.worst_logit_rel = fmax(a.worst_logit_rel, maxd / maxg);
        }
        uint64_t idx = 0;
        bit_check(&a, p, "last_prompt", bitsum_add(0, logits, (size_t)vocab, &idx));
        uint64_t dsum = 0, didx = 0;
        int equal = 1, first_diff = -1;
        for (int t = 0; t < ng; t++) {
            int32_t tok = vm_argmax(logits, vocab);
            if (tok != greedy[t]) { equal = 0; first_diff = t; break; }
            if (t + 1 < ng) {
                cr_assert(vm_session_eval(s, &tok, 1, 0, logits, &e) == 0, "%s", e.msg);
                dsum = bitsum_add(dsum, logits, (size_t)vocab, &didx);
            }
        }
        if (equal && whole) bit_check(&a, p, "greedy_decode", dsum);
        a.prompts++;
        a.prompts_equal += equal;
        if (!equal && json_number_value(json_array_get(margin, np - 1 + first_diff)) >= NEAR_TIE) {
            a.greedy_diverged_confidently++;
            cr_log_error("%s: greedy token %d differs where the reference margin is %.3f",
                         json_string_value(json_object_get(p, "name")), first_diff,
                         json_number_value(json_array_get(margin, np - 1 + first_diff)));
        }
        // teacher forced: the reference's own tokens, top-1 at every position
        int32_t *all = malloc(sizeof(int32_t) * (np + ng));
        memcpy(all, prompt, sizeof(int32_t) * np);
        memcpy(all + np, greedy, sizeof(int32_t) * ng);
        vm_session_reset(s);
        cr_assert(vm_session_eval(s, all, np + ng, 1, logits, &e) == 0, "%s", e.msg);
        idx = 0;
        if (whole) bit_check(&a, p, "teacher_forced", bitsum_add(0, logits, (size_t)(np + ng) * vocab, &idx));
        int same = 0;
        for (int t = 0; t < np + ng; t++) {
            int ok = vm_argmax(logits + (size_t)t * vocab, vocab) == top1[t];
            same += ok;
            if (json_number_value(json_array_get(margin, t)) >= NEAR_TIE) {
                a.confident_positions++;
                a.confident_equal += ok;
            }
        }
        a.positions += np + ng;
        a.positions_equal += same;
        cr_log_info("%-24s greedy %s (first difference at %d), teacher-forced top-1 %d/%d",
                    json_string_value(json_object_get(p, "name")), equal ? "equal" : "differs",
                    first_diff, same, np + ng);
        free(all); free(prompt); free(greedy); free(top1);
        vm_session_free(s);
    }
    free(logits);
    vm_model_free(m);
    be->destroy(be);
    json_decref(root);
    return a;
}

Test(smollm2, agrees_with_llama_cpp, .timeout = 600) {
    if (access(model_path(), R_OK) != 0) cr_skip_test("model %s absent", model_path());
    setenv("VLLM_METAL_Q8_ACTIVATIONS", "1", 1);
    agreement a = compare("tests/data/smollm2/llamacpp_golden.json", 1);
    cr_log_info("llama.cpp: %d/%d prompts with equal greedy tokens, teacher-forced top-1 %d/%d (%.2f%%), "
                "worst last-logit difference %.2e of max",
                a.prompts_equal, a.prompts, a.positions_equal, a.positions, 100.0 * a.positions_equal / a.positions,
                a.worst_logit_rel);
    cr_log_info("llama.cpp: away from near ties (margin >= %.1f): top-1 %d/%d; greedy runs that left the "
                "reference where it was sure: %d", NEAR_TIE, a.confident_equal, a.confident_positions,
                a.greedy_diverged_confidently);
    const int want = narrowed("VM_TEST_PROMPTS", 20);
    cr_expect(a.prompts == want, "expected %d prompts, found %d", want, a.prompts);
    cr_expect(a.confident_equal == a.confident_positions, "top-1 differs at %d positions where llama.cpp is sure",
              a.confident_positions - a.confident_equal);
    cr_expect(a.greedy_diverged_confidently == 0, "%d greedy runs diverged away from a near tie",
              a.greedy_diverged_confidently);
    cr_log_info("llama.cpp: logits bit-exact in %d/%d checks (last prompt position, greedy decode steps, "
                "teacher-forced rows; %s)", a.bit_exact, a.bit_checks,
                on_gpu() ? "Vulkan backend" : vm_cpu_kernels_select()->name);
    if (!on_gpu() && strcmp(vm_cpu_kernels_select()->name, "avx2") == 0) {
        // llama.cpp's x86 build runs AVX2 code and our AVX2 kernels reproduce
        // its arithmetic exactly, so: every checked logit bit-exact, >= 18/20
        // greedy runs equal and >= 99% teacher-forced top-1.
        cr_expect(a.bit_exact == a.bit_checks && a.bit_checks >= 40, "logits bit-exact in %d/%d checks",
                  a.bit_exact, a.bit_checks);
        cr_expect(a.prompts_equal >= 18, "greedy tokens equal on %d/%d prompts", a.prompts_equal, a.prompts);
        cr_expect(a.positions_equal >= 0.99 * a.positions, "teacher-forced top-1 agreement %d/%d",
                  a.positions_equal, a.positions);
    } else {
        // Other summation orders (the generic and NEON kernels, a GPU): what
        // llama.cpp itself meets against this golden run with another
        // attention arithmetic (scripts/oracles/llamacpp_self_agreement.py:
        // flash attention on, 9/20 greedy runs equal, 97.45% top-1; the
        // generic kernels here: 9/20, 97.88%). Near ties then decide whole
        // greedy strings, so their count is logged, not required; top-1 away
        // from near ties and greedy runs not leaving the reference there are
        // required above; and >= 97% top-1 at every position.
        cr_expect(a.positions_equal >= 0.97 * a.positions, "teacher-forced top-1 agreement %d/%d",
                  a.positions_equal, a.positions);
    }
}

// Dequantized f32 run against transformers' GGUF loader (dequantizes to f32).
// Tolerance 1e-4 of max|logit|: same weights, f32 math on both sides.
Test(smollm2, dequantized_f32_matches_transformers, .timeout = 600) {
    if (access(model_path(), R_OK) != 0) cr_skip_test("model %s absent", model_path());
    setenv("VLLM_METAL_Q8_ACTIVATIONS", "0", 1);
    setenv("VLLM_METAL_KV_CACHE_DTYPE", "f32", 1);
    agreement a = compare("tests/data/smollm2/transformers_gguf_golden.json", 1);
    unsetenv("VLLM_METAL_Q8_ACTIVATIONS");
    unsetenv("VLLM_METAL_KV_CACHE_DTYPE");
    cr_log_info("transformers: %d/%d prompts with equal greedy tokens, top-1 %d/%d, worst last-logit error %.2e of max",
                a.prompts_equal, a.prompts, a.positions_equal, a.positions, a.worst_logit_rel);
    cr_expect(a.prompts >= narrowed("VM_TEST_PROMPTS", 3));
    cr_expect(a.worst_logit_rel <= 1e-4, "last-position logits differ by %.3g of max", a.worst_logit_rel);
    cr_expect(a.prompts_equal == a.prompts, "greedy differs on %d prompts", a.prompts - a.prompts_equal);
}

// The CPU backend's attention block in one job (qkv_attention: q/k/v, RoPE,
// cache write and attention of a one-token step) against the separate ops
// (VLLM_METAL_CPU_FUSE_ATTN=0): the same logits, bit for bit, over one-token
// steps between steps of 2 and 3 tokens (those run the separate ops either
// way), on 2 and 4 threads, with the f16 and the f32 cache.
Test(smollm2, cpu_fused_attention_block_bit_identical, .timeout = 600) {
    if (access(model_path(), R_OK) != 0) cr_skip_test("model %s absent", model_path());
    if (on_gpu()) cr_skip_test("CPU backend only");
    setenv("VLLM_METAL_Q8_ACTIVATIONS", "1", 1);
    enum { NP = 40, STEPS = 9 };
    const int chunk[STEPS] = { 1, 2, 1, 3, 1, 1, 2, 1, 1 };
    int32_t ids[NP + 16];
    for (int i = 0; i < NP + 16; i++) ids[i] = 100 + (i * 7919 + 104729) % 40000;
    for (int kv = 0; kv < 2; kv++)
        for (int threads = 2; threads <= 4; threads += 2) {
            setenv("VLLM_METAL_KV_CACHE_DTYPE", kv ? "f32" : "f16", 1);
            float *lg[2] = { NULL, NULL };
            int vocab = 0;
            for (int fused = 0; fused < 2; fused++) {
                setenv("VLLM_METAL_CPU_FUSE_ATTN", fused ? "1" : "0", 1);
                vm_err e = {{0}};
                vm_backend *be = vm_backend_cpu_create(threads, &e);
                cr_assert(be, "%s", e.msg);
                vm_model *m = vm_model_create(model_path(), be, 512, &e);
                cr_assert(m, "%s", e.msg);
                vocab = vm_model_get_config(m)->vocab_size;
                vm_session *s = vm_session_create(m, NP + 32, 16, &e);
                cr_assert(s, "%s", e.msg);
                lg[fused] = malloc(sizeof(float) * vocab * 3 * (STEPS + 1));
                float *o = lg[fused];
                cr_assert(vm_session_eval(s, ids, NP, 0, o, &e) == 0, "%s", e.msg);
                int at = NP;
                for (int k = 0; k < STEPS; k++) {
                    o += vocab * 3;
                    cr_assert(vm_session_eval(s, ids + at, chunk[k], 1, o, &e) == 0, "%s", e.msg);
                    at += chunk[k];
                }
                vm_session_free(s);
                vm_model_free(m);
                be->destroy(be);
            }
            for (int k = 0; k <= STEPS; k++) {
                const size_t n = (size_t)vocab * (k ? chunk[k - 1] : 1);
                cr_expect(memcmp(lg[0] + (size_t)k * vocab * 3, lg[1] + (size_t)k * vocab * 3, n * sizeof(float)) == 0,
                          "%s cache, %d threads: step %d's logits differ with the fused block", kv ? "f32" : "f16",
                          threads, k);
            }
            free(lg[0]);
            free(lg[1]);
        }
    unsetenv("VLLM_METAL_CPU_FUSE_ATTN");
    unsetenv("VLLM_METAL_KV_CACHE_DTYPE");
    unsetenv("VLLM_METAL_Q8_ACTIVATIONS");
}
