// test_engine_vlm.c - images through the serving engine (tests/data/tiny_vlm/qwen2_vl):
// prompts with one image placeholder each are expanded, the vision tower runs at
// admission, chunked prefill passes image features and M-RoPE positions, decode
// uses the rope delta; greedy tokens must equal transformers' (golden.json).
// Also: prefix caching keyed on image content, preemption, n > 1, and errors.
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine.h"

#define VLM "tests/data/tiny_vlm/qwen2_vl"
// the same model as mlx-vlm converts it (4-bit MLX text decoder, vision_tower.*
// names, channels-last patch embed); goldens from mlx-vlm itself
#define VLM_MLX "tests/data/tiny_vlm/qwen2_vl_mlx_q4"
#define IMAGE_TOKEN 252

static void *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    cr_assert(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = malloc((size_t)len + 1);
    cr_assert(fread(buf, 1, (size_t)len, f) == (size_t)len);
    fclose(f);
    *n = (size_t)len;
    return buf;
}

typedef struct golden {
    int32_t prompt[64]; int n_prompt;      // image runs collapsed to one placeholder
    int32_t expect[32]; int n_expect;      // transformers' greedy continuation
    const char *images[4]; int n_images;
} golden;

static const char *image_file(const char *name) {
    static const struct { const char *n, *f; } map[] = {
        {"rgb_60x90", "rgb_60x90.png"}, {"wide_37x120", "wide_37x120.jpg"}, {"tall_150x41", "tall_150x41.png"},
        {"gray_56x84", "gray_56x84.png"},
    };
    for (size_t i = 0; i < sizeof map / sizeof *map; i++) if (!strcmp(map[i].n, name)) return map[i].f;
    return NULL;
}

// prompts 0 and 1 of golden.json (default pixel limits)
static void load_golden_from(const char *dir, golden *g, int which) {
    json_error_t je;
    char path[256];
    snprintf(path, sizeof path, "%s/golden.json", dir);
    json_t *root = json_load_file(path, 0, &je);
    cr_assert(root, "%s", je.text);
    json_t *p = json_array_get(json_object_get(root, "prompts"), (size_t)which);
    json_t *toks = json_object_get(p, "tokens");
    int n = (int)json_array_size(toks), P = (int)json_integer_value(json_object_get(p, "prompt_len"));
    memset(g, 0, sizeof *g);
    for (int i = 0; i < P; i++) {
        int32_t t = (int32_t)json_integer_value(json_array_get(toks, (size_t)i));
        if (t == IMAGE_TOKEN && i > 0 && g->prompt[g->n_prompt - 1] == IMAGE_TOKEN) continue;
        g->prompt[g->n_prompt++] = t;
    }
    for (int i = P; i < n; i++) g->expect[g->n_expect++] = (int32_t)json_integer_value(json_array_get(toks, (size_t)i));
    json_t *imgs = json_object_get(p, "images");
    for (size_t i = 0; i < json_array_size(imgs); i++)
        g->images[g->n_images++] = image_file(json_string_value(json_array_get(imgs, i)));
    json_decref(root);
}

static void load_golden(golden *g, int which) { load_golden_from(VLM, g, which); }

static vm_engine *make_engine_model(const char *model, int batched, int blocks, int block_size, int caching) {
    vm_engine_args a;
    vm_engine_args_init(&a);
    a.model = model;
    a.max_num_batched_tokens = batched;
    a.num_kv_blocks = blocks;
    a.block_size = block_size;
    a.n_threads = 2;
    a.enable_prefix_caching = caching;
    vm_err e = {{0}};
    vm_engine *eng = vm_engine_create(&a, &e);
    cr_assert(eng, "%s", e.msg);
    cr_assert(vm_engine_is_vlm(eng));
    return eng;
}

static vm_engine *make_engine_cached(int batched, int blocks, int block_size, int caching) {
    return make_engine_model(VLM, batched, blocks, block_size, caching);
}

static vm_engine *make_engine(int batched, int blocks, int block_size) {
    return make_engine_cached(batched, blocks, block_size, 1);
}

static vm_mm_inputs *images_of(vm_engine *eng, const char *const *files, int n) {
    vm_image_input in[4];
    void *bufs[4];
    for (int i = 0; i < n; i++) {
        char path[256];
        snprintf(path, sizeof path, "tests/data/tiny_vlm/images/%s", files[i]);
        size_t len;
        bufs[i] = read_all(path, &len);
        in[i] = (vm_image_input){ .bytes = bufs[i], .n_bytes = len };
    }
    vm_err e = {{0}};
    vm_mm_inputs *mm = vm_engine_prepare_images(eng, in, n, 0, &e);
    cr_assert(mm, "%s", e.msg);
    for (int i = 0; i < n; i++) free(bufs[i]);
    return mm;
}

static void greedy(vm_sampling_params *sp, int max_tokens) {
    vm_sampling_params_init(sp);
    sp->temperature = 0;
    sp->max_tokens = max_tokens;
    sp->ignore_eos = 1;
}

// Runs the streams to the end; returns each one's tokens.
static void run_all(vm_engine *eng, vm_stream **st, int n, int32_t (*toks)[32], int *n_toks, int *cached) {
    vm_err e = {{0}};
    while (vm_engine_has_work(eng)) cr_assert(vm_engine_step(eng, &e) >= 0, "%s", e.msg);
    for (int i = 0; i < n; i++) {
        n_toks[i] = 0;
        vm_request_output *o;
        while ((o = vm_stream_next(st[i], 0))) {
            cr_assert(o->finish_reason != VM_FINISH_ERROR, "%s", o->error ? o->error : "");
            for (int k = 0; k < o->n_tokens && n_toks[i] < 32; k++) toks[i][n_toks[i]++] = o->token_ids[k];
            if (cached) cached[i] = o->n_cached_tokens;
            vm_request_output_free(o);
        }
        vm_stream_release(st[i]);
    }
}

static void expect_golden(const golden *g, const int32_t *toks, int n, const char *what) {
    cr_expect(n == g->n_expect, "%s: %d tokens", what, n);
    for (int i = 0; i < n && i < g->n_expect; i++)
        cr_expect(toks[i] == g->expect[i], "%s: token %d is %d, reference %d", what, i, toks[i], g->expect[i]);
}

// Whole prefill and chunked prefill (7-token chunks split the images).
Test(engine_vlm, matches_transformers) {
    int budgets[2] = { 2048, 7 };
    for (int b = 0; b < 2; b++) {
        vm_engine *eng = make_engine(budgets[b], 64, 8);
        for (int which = 0; which < 2; which++) {
            golden g;
            load_golden(&g, which);
            vm_mm_inputs *mm = images_of(eng, g.images, g.n_images);
            vm_sampling_params sp;
            greedy(&sp, g.n_expect);
            vm_err e = {{0}};
            vm_stream *st = vm_engine_submit_mm(eng, NULL, g.prompt, g.n_prompt, mm, &sp, &e);
            cr_assert(st, "%s", e.msg);
            vm_mm_inputs_release(mm);
            int32_t toks[1][32]; int n;
            run_all(eng, &st, 1, toks, &n, NULL);
            char what[64];
            snprintf(what, sizeof what, "prompt %d, budget %d", which, budgets[b]);
            expect_golden(&g, toks[0], n, what);
        }
        vm_engine_free(eng);
    }
}

// The mlx-community layout (mlx-vlm's converter): whole and chunked prefill,
// greedy tokens equal mlx-vlm's.
Test(engine_vlm, mlx_q4_matches_mlx_vlm) {
    int budgets[2] = { 2048, 7 };
    for (int b = 0; b < 2; b++) {
        vm_engine *eng = make_engine_model(VLM_MLX, budgets[b], 64, 8, 1);
        for (int which = 0; which < 2; which++) {
            golden g;
            load_golden_from(VLM_MLX, &g, which);
            vm_mm_inputs *mm = images_of(eng, g.images, g.n_images);
            vm_sampling_params sp;
            greedy(&sp, g.n_expect);
            vm_err e = {{0}};
            vm_stream *st = vm_engine_submit_mm(eng, NULL, g.prompt, g.n_prompt, mm, &sp, &e);
            cr_assert(st, "%s", e.msg);
            vm_mm_inputs_release(mm);
            int32_t toks[1][32]; int n;
            run_all(eng, &st, 1, toks, &n, NULL);
            char what[64];
            snprintf(what, sizeof what, "mlx q4 prompt %d, budget %d", which, budgets[b]);
            expect_golden(&g, toks[0], n, what);
        }
        vm_engine_free(eng);
    }
}

// The same image again reuses its blocks; another image with the same token ids never does.
Test(engine_vlm, prefix_cache_keys_on_image) {
    vm_engine *eng = make_engine(2048, 64, 8);
    golden g;
    load_golden(&g, 0);
    const char *other[1] = { "gray_56x84.png" }; // same 4x6 grid as rgb_60x90: identical token ids
    const char *const *sets[3] = { g.images, g.images, other };
    int32_t toks[3][32]; int n[3], cached[3];
    for (int i = 0; i < 3; i++) {
        vm_mm_inputs *mm = images_of(eng, sets[i], 1);
        if (i == 2) cr_expect(vm_mm_inputs_hash(mm, 0) != 0);
        vm_sampling_params sp;
        greedy(&sp, g.n_expect);
        vm_err e = {{0}};
        vm_stream *st = vm_engine_submit_mm(eng, NULL, g.prompt, g.n_prompt, mm, &sp, &e);
        cr_assert(st, "%s", e.msg);
        vm_mm_inputs_release(mm);
        run_all(eng, &st, 1, &toks[i], &n[i], &cached[i]);
    }
    expect_golden(&g, toks[0], n[0], "first");
    expect_golden(&g, toks[1], n[1], "cached");
    cr_expect(cached[0] == 0, "first run: %d cached", cached[0]);
    cr_expect(cached[1] >= 8, "same image: %d cached tokens", cached[1]);
    cr_expect(cached[2] == 0, "another image: %d cached tokens (false reuse)", cached[2]);
    vm_engine_free(eng);
}

// Few KV blocks: requests are preempted and recomputed (features kept), outputs unchanged;
// n = 2 shares one vision run.
Test(engine_vlm, preemption_and_n) {
    vm_engine *eng = make_engine_cached(2048, 1 + 7, 8, 0);
    golden g;
    load_golden(&g, 1);
    vm_stream *st[3];
    for (int i = 0; i < 3; i++) {
        vm_mm_inputs *mm = images_of(eng, g.images, g.n_images);
        vm_sampling_params sp;
        greedy(&sp, g.n_expect);
        vm_err e = {{0}};
        st[i] = vm_engine_submit_mm(eng, NULL, g.prompt, g.n_prompt, mm, &sp, &e);
        cr_assert(st[i], "%s", e.msg);
        vm_mm_inputs_release(mm);
    }
    int32_t toks[3][32]; int n[3];
    run_all(eng, st, 3, toks, n, NULL);
    for (int i = 0; i < 3; i++) expect_golden(&g, toks[i], n[i], "preempted");
    vm_engine_stats s;
    vm_engine_get_stats(eng, &s);
    cr_expect(s.num_preemptions > 0, "no preemption happened");
    // n = 2
    vm_mm_inputs *mm = images_of(eng, g.images, g.n_images);
    vm_sampling_params sp;
    greedy(&sp, g.n_expect);
    sp.n = 2;
    vm_err e = {{0}};
    vm_stream *s2 = vm_engine_submit_mm(eng, NULL, g.prompt, g.n_prompt, mm, &sp, &e);
    cr_assert(s2, "%s", e.msg);
    vm_mm_inputs_release(mm);
    while (vm_engine_has_work(eng)) cr_assert(vm_engine_step(eng, &e) >= 0, "%s", e.msg);
    int32_t t2[2][32]; int n2[2] = {0, 0};
    vm_request_output *o;
    while ((o = vm_stream_next(s2, 0))) {
        for (int k = 0; k < o->n_tokens; k++) t2[o->index][n2[o->index]++] = o->token_ids[k];
        vm_request_output_free(o);
    }
    vm_stream_release(s2);
    expect_golden(&g, t2[0], n2[0], "n=2 #0");
    expect_golden(&g, t2[1], n2[1], "n=2 #1");
    vm_engine_free(eng);
}

Test(engine_vlm, errors_are_clear) {
    vm_engine *eng = make_engine(2048, 64, 8);
    vm_err e = {{0}};
    vm_image_input bad = { .bytes = "\x89PNG\r\n\x1a\n garbage", .n_bytes = 17 };
    cr_expect(!vm_engine_prepare_images(eng, &bad, 1, 0, &e));
    cr_expect(strstr(e.msg, "image 1"), "%s", e.msg);
    golden g;
    load_golden(&g, 1);            // two placeholders
    vm_mm_inputs *mm = images_of(eng, g.images, 1);
    vm_sampling_params sp;
    greedy(&sp, 2);
    cr_expect(!vm_engine_submit_mm(eng, NULL, g.prompt, g.n_prompt, mm, &sp, &e));
    cr_expect(strstr(e.msg, "2 image placeholders but 1 image"), "%s", e.msg);
    // too long once expanded
    vm_mm_inputs_release(mm);
    vm_engine_free(eng);
}
