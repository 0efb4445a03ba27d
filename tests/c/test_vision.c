// test_vision.c - Qwen2-VL / Qwen2.5-VL image path against transformers:
// decoded+resized pixels (bit-exact), pixel_values (<= 1e-5), vision features,
// M-RoPE positions and the decoder's logits with images
// (goldens: scripts/oracles/make_tiny_vlm.py -> tests/data/tiny_vlm/).
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vision/vision.h"

#define VLM_DIR "tests/data/tiny_vlm"

static void *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    cr_assert(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = malloc(len > 0 ? (size_t)len : 1);
    cr_assert(fread(buf, 1, (size_t)len, f) == (size_t)len);
    fclose(f);
    *n = (size_t)len;
    return buf;
}

static json_t *load_json(const char *path) {
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    cr_assert(j, "%s: %s", path, je.text);
    return j;
}

Test(vision, preprocess_matches_hf_processor) {
    json_t *root = load_json(VLM_DIR "/preprocess.json");
    json_t *cases = json_object_get(root, "cases");
    size_t i; json_t *c;
    json_array_foreach(cases, i, c) {
        const char *name = json_string_value(json_object_get(c, "name"));
        char path[512];
        snprintf(path, sizeof path, VLM_DIR "/%s", json_string_value(json_object_get(c, "image")));
        vm_err e = {{0}};
        vm_image im;
        cr_assert(vm_image_load_file(path, 0, &im, &e) == 0, "%s: %s", name, e.msg);
        vm_vision_preproc p;
        vm_vision_preproc_default(&p);
        p.min_pixels = json_integer_value(json_object_get(c, "min_pixels"));
        p.max_pixels = json_integer_value(json_object_get(c, "max_pixels"));
        int rh = (int)json_integer_value(json_array_get(json_object_get(c, "resized_hw"), 0));
        int rw = (int)json_integer_value(json_array_get(json_object_get(c, "resized_hw"), 1));
        int h, w;
        cr_assert(vm_smart_resize(im.height, im.width, 28, p.min_pixels, p.max_pixels, &h, &w, &e) == 0);
        cr_assert(h == rh && w == rw, "%s: smart_resize %dx%d, HF %dx%d", name, h, w, rh, rw);
        // the resized uint8 image, bit for bit
        vm_image rs;
        cr_assert(vm_image_resize_bicubic(&im, w, h, &rs, &e) == 0, "%s", e.msg);
        size_t n;
        snprintf(path, sizeof path, VLM_DIR "/%s.u8", name);
        uint8_t *gold_u8 = read_all(path, &n);
        cr_assert(n == (size_t)h * w * 3);
        size_t diff = 0;
        for (size_t k = 0; k < n; k++) diff += gold_u8[k] != rs.rgb[k];
        cr_expect(diff == 0, "%s: %zu of %zu resized bytes differ from torch", name, diff, n);
        // pixel_values
        float *px;
        int np, thw[3];
        cr_assert(vm_vision_preprocess(&p, &im, &px, &np, thw, &e) == 0, "%s", e.msg);
        json_t *g = json_object_get(c, "grid_thw");
        for (int k = 0; k < 3; k++) cr_expect(thw[k] == json_integer_value(json_array_get(g, k)), "%s: grid", name);
        snprintf(path, sizeof path, VLM_DIR "/%s.f32", name);
        float *gold = read_all(path, &n);
        cr_assert(n == (size_t)np * 1176 * 4, "%s: %d patches", name, np);
        double worst = 0;
        for (size_t k = 0; k < n / 4; k++) worst = fmax(worst, fabs(gold[k] - px[k]));
        fprintf(stderr, "%s: pixel_values max diff %.3g\n", name, worst);
        cr_expect(worst <= 1e-5, "%s: pixel_values max diff %g", name, worst);
        free(gold); free(gold_u8); free(px);
        vm_image_free(&rs);
        vm_image_free(&im);
    }
    json_decref(root);
}

Test(vision, decode_errors_are_clear) {
    vm_err e = {{0}};
    vm_image im;
    cr_expect(vm_image_decode("not an image at all", 19, 0, &im, &e) != 0);
    cr_expect(strstr(e.msg, "unknown image format"), "%s", e.msg);
    size_t n;
    uint8_t *png = read_all(VLM_DIR "/images/rgb_60x90.png", &n);
    cr_expect(vm_image_decode(png, n / 2, 0, &im, &e) != 0);
    cr_expect(strstr(e.msg, "PNG"), "%s", e.msg);
    cr_expect(vm_image_decode(png, n, 1000, &im, &e) != 0);          // 5400 pixels > 1000
    cr_expect(strstr(e.msg, "larger than the limit"), "%s", e.msg);
    png[20] ^= 0xff;                                                   // width field: CRC mismatch
    cr_expect(vm_image_decode(png, n, 0, &im, &e) != 0);
    free(png);
    uint8_t *jpg = read_all(VLM_DIR "/images/wide_37x120.jpg", &n);
    cr_expect(vm_image_decode(jpg, n / 2, 0, &im, &e) != 0, "truncated JPEG accepted");
    cr_expect(strstr(e.msg, "JPEG"), "%s", e.msg);
    cr_expect(vm_image_decode(jpg, n, 0, &im, &e) == 0, "%s", e.msg);
    cr_expect(im.width == 120 && im.height == 37);
    vm_image_free(&im);
    free(jpg);
}

// Preprocess the prompt's images, run the tower, compare features.
static float *features_for(vm_vision *v, json_t *prompt, int (*thw)[3], int *n_images, int *n_feat) {
    json_t *images = json_object_get(prompt, "images");
    json_t *pre = load_json(VLM_DIR "/preprocess.json");
    *n_images = (int)json_array_size(images);
    float *all = NULL;
    size_t total = 0;
    for (int i = 0; i < *n_images; i++) {
        const char *case_name = json_string_value(json_array_get(images, i));
        size_t k; json_t *c; json_t *found = NULL;
        json_array_foreach(json_object_get(pre, "cases"), k, c)
            if (!strcmp(json_string_value(json_object_get(c, "name")), case_name)) found = c;
        cr_assert(found);
        char path[512];
        snprintf(path, sizeof path, VLM_DIR "/%s", json_string_value(json_object_get(found, "image")));
        vm_err e = {{0}};
        vm_image im;
        cr_assert(vm_image_load_file(path, 0, &im, &e) == 0, "%s", e.msg);
        vm_vision_preproc p;
        vm_vision_preproc_default(&p);
        p.min_pixels = json_integer_value(json_object_get(found, "min_pixels"));
        p.max_pixels = json_integer_value(json_object_get(found, "max_pixels"));
        float *px; int np;
        cr_assert(vm_vision_preprocess(&p, &im, &px, &np, thw[i], &e) == 0, "%s", e.msg);
        all = realloc(all, sizeof(float) * (total + (size_t)np * 1176));
        memcpy(all + total, px, sizeof(float) * (size_t)np * 1176);
        total += (size_t)np * 1176;
        free(px);
        vm_image_free(&im);
    }
    json_decref(pre);
    float *feat; vm_err e = {{0}};
    cr_assert(vm_vision_forward(v, all, *n_images, (const int (*)[3])thw, &feat, n_feat, &e) == 0, "%s", e.msg);
    free(all);
    return feat;
}

static void check_features(const char *model, double tol) {
    char dir[256], path[512];
    snprintf(dir, sizeof dir, VLM_DIR "/%s", model);
    snprintf(path, sizeof path, "%s/golden.json", dir);
    json_t *root = load_json(path);
    vm_err e = {{0}};
    vm_backend *be = vm_backend_cpu_create(2, &e);
    vm_vision *v = vm_vision_create(dir, be, &e);
    cr_assert(v, "%s", e.msg);
    const int out_dim = vm_vision_get_config(v)->out_dim;
    size_t pi; json_t *p;
    json_array_foreach(json_object_get(root, "prompts"), pi, p) {
        int thw[8][3], n_images, n_feat;
        float *feat = features_for(v, p, thw, &n_images, &n_feat);
        size_t off = 0, fi; json_t *ff;
        double worst = 0, scale = 0;
        json_array_foreach(json_object_get(p, "features"), fi, ff) {
            snprintf(path, sizeof path, "%s/%s", dir, json_string_value(ff));
            size_t n;
            float *gold = read_all(path, &n);
            cr_assert(off + n / 4 <= (size_t)n_feat * out_dim, "%s: feature count", model);
            for (size_t k = 0; k < n / 4; k++) {
                worst = fmax(worst, fabs(gold[k] - feat[off + k]));
                scale = fmax(scale, fabs(gold[k]));
            }
            off += n / 4;
            free(gold);
        }
        cr_expect(off == (size_t)n_feat * out_dim, "%s: %d features", model, n_feat);
        fprintf(stderr, "%s prompt %zu: features max diff %.3g (max |golden| %.3g)\n", model, pi, worst, scale);
        cr_expect(worst <= tol * scale, "%s prompt %zu: features max diff %g (max |golden| %g)", model, pi, worst, scale);
        // M-RoPE positions
        json_t *toks = json_object_get(p, "tokens");
        int n = (int)json_array_size(toks);
        int32_t *tk = malloc(4 * n), *pos = malloc(12 * n), delta;
        for (int i = 0; i < n; i++) tk[i] = (int32_t)json_integer_value(json_array_get(toks, i));
        cr_assert(vm_mrope_positions(tk, n, vm_vision_get_config(v)->image_token_id, 2, n_images,
                                     (const int (*)[3])thw, pos, &delta, &e) == 0, "%s", e.msg);
        cr_expect(delta == json_integer_value(json_object_get(p, "rope_delta")), "%s: delta %d", model, delta);
        json_t *gp = json_object_get(p, "positions");
        for (int a = 0; a < 3; a++)
            for (int i = 0; i < n; i++)
                cr_expect(pos[a * n + i] == json_integer_value(json_array_get(json_array_get(gp, a), i)),
                          "%s: position axis %d token %d", model, a, i);
        free(tk); free(pos); free(feat);
    }
    vm_vision_free(v);
    be->destroy(be);
    json_decref(root);
}

Test(vision, qwen2_vl_features) { check_features("qwen2_vl", 1e-4); }
Test(vision, qwen2_5_vl_features) { check_features("qwen2_5_vl", 1e-4); }
// mlx-vlm's conversion (scripts/oracles/make_tiny_vlm_mlx.py): vision_tower.*
// names, channels-last Conv3d patch embed; goldens from mlx-vlm on MLX's CPU.
Test(vision, qwen2_vl_mlx_q4_features) { check_features("qwen2_vl_mlx_q4", 1e-4); }

// Full pipeline: image features at the image-pad tokens, M-RoPE positions,
// decoder logits for prompt + greedy continuation. The prompt is prefilled in
// one batch, the continuation fed one token at a time through the KV cache
// (decode rotary position = index + rope_delta on all three axes).
#include "model/model.h"

static void check_logits(const char *model, double tol) {
    char dir[256], path[512];
    snprintf(dir, sizeof dir, VLM_DIR "/%s", model);
    snprintf(path, sizeof path, "%s/golden.json", dir);
    json_t *root = load_json(path);
    vm_err e = {{0}};
    vm_backend *be = vm_backend_cpu_create(2, &e);
    vm_vision *v = vm_vision_create(dir, be, &e);
    cr_assert(v, "%s", e.msg);
    vm_model *m = vm_model_create(dir, be, 256, &e);
    cr_assert(m, "%s: %s", model, e.msg);
    const vm_model_config *mc = vm_model_get_config(m);
    cr_assert(mc->mrope_section[0] == 2 && mc->mrope_section[1] == 3 && mc->mrope_section[2] == 3);
    const int V = mc->vocab_size, block = 16, nblocks = 16;
    vm_kv_cache *kv = vm_kv_cache_create(m, nblocks + 1, block, &e);
    cr_assert(kv, "%s", e.msg);
    size_t pi; json_t *p;
    json_array_foreach(json_object_get(root, "prompts"), pi, p) {
        int thw[8][3], n_images, n_feat;
        float *feat = features_for(v, p, thw, &n_images, &n_feat);
        json_t *toks = json_object_get(p, "tokens"), *gl = json_object_get(p, "logits");
        const int n = (int)json_array_size(toks), P = (int)json_integer_value(json_object_get(p, "prompt_len"));
        int32_t *tk = malloc(4 * n), *pos = malloc(12 * n), *seq_pos = malloc(4 * n), *slots = malloc(4 * n);
        int32_t *rows = malloc(4 * n), delta, bt[16];
        for (int i = 0; i < n; i++) {
            tk[i] = (int32_t)json_integer_value(json_array_get(toks, i));
            seq_pos[i] = i;
            slots[i] = (1 + i / block) * block + i % block;
        }
        for (int i = 0; i < nblocks; i++) bt[i] = 1 + i;
        cr_assert(vm_mrope_positions(tk, P, vm_vision_get_config(v)->image_token_id, 2, n_images,
                                     (const int (*)[3])thw, pos, &delta, &e) == 0, "%s", e.msg);
        int n_rows = 0;
        for (int i = 0; i < P; i++) if (tk[i] == vm_vision_get_config(v)->image_token_id) rows[n_rows++] = i;
        cr_assert(n_rows == n_feat, "%s: %d image tokens, %d features", model, n_rows, n_feat);
        float *logits = malloc(sizeof(float) * (size_t)n * V);
        // prefill: every prompt row's logits
        int32_t seq_start[2] = { 0, P }, ctx = P;
        int32_t *lrows = malloc(4 * n);
        for (int i = 0; i < P; i++) lrows[i] = i;
        vm_batch b = { P, tk, seq_pos, 1, seq_start, &ctx, nblocks, bt, slots, P, lrows, NULL, NULL, NULL };
        cr_assert(vm_model_forward_embeds(m, kv, &b, feat, rows, n_rows, pos, logits, &e) == 0, "%s", e.msg);
        // decode
        for (int i = P; i < n; i++) {
            int32_t one_start[2] = { 0, 1 }, one_ctx = i + 1, row0 = 0, mp[3];
            for (int a = 0; a < 3; a++) mp[a] = i + delta;
            vm_batch d = { 1, tk + i, seq_pos + i, 1, one_start, &one_ctx, nblocks, bt, slots + i, 1, &row0, NULL, NULL, NULL };
            cr_assert(vm_model_forward_embeds(m, kv, &d, NULL, NULL, 0, mp, logits + (size_t)i * V, &e) == 0, "%s", e.msg);
        }
        double worst = 0, scale = 0;
        for (int i = 0; i < n; i++) {
            json_t *row = json_array_get(gl, i);
            for (int j = 0; j < V; j++) {
                double g = json_number_value(json_array_get(row, j));
                worst = fmax(worst, fabs(g - logits[(size_t)i * V + j]));
                scale = fmax(scale, fabs(g));
            }
            if (i >= P - 1 && i + 1 < n) {
                int am = 0;
                for (int j = 1; j < V; j++) if (logits[(size_t)i * V + j] > logits[(size_t)i * V + am]) am = j;
                cr_expect(am == tk[i + 1], "%s prompt %zu: greedy token at %d: %d, reference %d", model, pi, i, am, tk[i + 1]);
            }
        }
        fprintf(stderr, "%s prompt %zu: logits max diff %.3g (max |golden| %.3g)\n", model, pi, worst, scale);
        cr_expect(worst <= tol * scale, "%s prompt %zu: logits max diff %g (max |golden| %g)", model, pi, worst, scale);
        free(tk); free(pos); free(seq_pos); free(slots); free(rows); free(logits); free(lrows); free(feat);
    }
    vm_kv_cache_free(m, kv);
    vm_model_free(m);
    vm_vision_free(v);
    be->destroy(be);
    json_decref(root);
}

Test(vision, qwen2_vl_logits) { check_logits("qwen2_vl", 1e-4); }
Test(vision, qwen2_5_vl_logits) { check_logits("qwen2_5_vl", 1e-4); }
// 4-bit MLX affine text decoder (language_model.* names, flat transformers-4
// config with rope_scaling mrope) against mlx-vlm's own logits.
Test(vision, qwen2_vl_mlx_q4_logits) { check_logits("qwen2_vl_mlx_q4", 1e-4); }

// Random and mutated bytes into the decoders (JPEG/PNG/WebP) and the base64 reader:
// every input either decodes to a sane image or fails with a message; never a crash.
// Run under ASan/UBSan with many more inputs by tests/fuzz/run_image_fuzz.sh
// (VM_FUZZ_ITERS, default 1500 here).
static uint64_t fuzz_rng(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

Test(vision, fuzz_decode, .timeout = 300) {
    const char *seeds[] = { "rgb_60x90.png", "wide_37x120.jpg", "rgba_45x70.png", "gray_56x84.png",
                            "tall_150x41.png" };
    const int n_seeds = (int)(sizeof seeds / sizeof *seeds);
    uint8_t *seed[8]; size_t seed_n[8];
    for (int i = 0; i < n_seeds; i++) {
        char path[256];
        snprintf(path, sizeof path, VLM_DIR "/images/%s", seeds[i]);
        seed[i] = read_all(path, &seed_n[i]);
    }
    // a tiny WebP (lossless 1x1) as a seed of its own
    static const uint8_t webp[] = { 'R','I','F','F',26,0,0,0,'W','E','B','P','V','P','8','L',13,0,0,0,
                                    0x2f,0,0,0,0x10,0x07,0x10,0x11,0x11,0x88,0x88,0xfe,0x07,0 };
    seed[n_seeds] = malloc(sizeof webp); memcpy(seed[n_seeds], webp, sizeof webp); seed_n[n_seeds] = sizeof webp;
    const int n_all = n_seeds + 1;
    int iters = getenv("VM_FUZZ_ITERS") ? atoi(getenv("VM_FUZZ_ITERS")) : 1500;
    uint64_t rs = 12345;
    int decoded = 0;
    for (int it = 0; it < iters; it++) {
        int k = (int)(fuzz_rng(&rs) % (uint64_t)n_all);
        size_t n = seed_n[k];
        uint8_t *buf = malloc(n + 64);
        memcpy(buf, seed[k], n);
        switch (fuzz_rng(&rs) % 5) {
        case 0: n = fuzz_rng(&rs) % (n + 1); break;                        // truncate
        case 1: for (int j = 0; j < 1 + (int)(fuzz_rng(&rs) % 8); j++)       // flip bits
                    buf[fuzz_rng(&rs) % n] ^= (uint8_t)(1u << (fuzz_rng(&rs) % 8));
                break;
        case 2: for (int j = 0; j < 1 + (int)(fuzz_rng(&rs) % 4); j++)       // overwrite header bytes
                    buf[fuzz_rng(&rs) % VM_MIN(n, (size_t)64)] = (uint8_t)fuzz_rng(&rs);
                break;
        case 3: { size_t keep = VM_MIN(n, (size_t)(4 + fuzz_rng(&rs) % 32)); // magic + random
                  for (size_t j = keep; j < n; j++) buf[j] = (uint8_t)fuzz_rng(&rs);
                  break; }
        default: { uint64_t v = fuzz_rng(&rs);                              // 32-bit fields to extremes
                  size_t at = fuzz_rng(&rs) % (n > 4 ? n - 4 : 1);
                  uint32_t x = (v & 1) ? 0xffffffffu : (uint32_t)(v >> 32);
                  if (n >= 4) memcpy(buf + at, &x, 4);
                  break; }
        }
        vm_err e = {{0}};
        vm_image im;
        if (vm_image_decode(buf, n, 1 << 20, &im, &e) == 0) {
            cr_assert(im.width > 0 && im.height > 0 && (int64_t)im.width * im.height <= (1 << 20) && im.rgb);
            volatile uint8_t sink = im.rgb[(size_t)im.width * im.height * 3 - 1]; (void)sink;
            vm_image_free(&im);
            decoded++;
        } else {
            cr_assert(e.msg[0], "decode failed without a message");
        }
        // the same bytes as base64 text
        void *out; size_t on;
        if (vm_base64_decode((const char *)buf, n, &out, &on, 1 << 20, &e) == 0) free(out);
        free(buf);
    }
    fprintf(stderr, "fuzz_decode: %d inputs, %d decoded\n", iters, decoded);
    for (int i = 0; i < n_all; i++) free(seed[i]);
}

// mlx-vlm's names: the decoder's language_model.model.* / language_model.lm_head.*
// are indexed as model.* / lm_head.* (the index file is checked against the
// aliased names); vision_tower.* stays; the Conv3d weight is channels-last.
#include "loader/weights.h"

Test(vision, mlx_vlm_names) {
    vm_err e = {{0}};
    vm_weight_store *ws = vm_weights_open(VLM_DIR "/qwen2_vl_mlx_q4", &e);
    cr_assert(ws, "%s", e.msg);
    cr_expect(vm_weights_find(ws, "model.embed_tokens.weight"));
    cr_expect(vm_weights_find(ws, "model.layers.1.mlp.down_proj.scales"));
    cr_expect(!vm_weights_find(ws, "language_model.model.embed_tokens.weight"));
    const vm_tensor *pe = vm_weights_find(ws, "vision_tower.patch_embed.proj.weight");
    cr_assert(pe && pe->ndim == 5);
    cr_expect(pe->shape[1] == 2 && pe->shape[4] == 3, "not channels-last: [%lld, %lld, ...]",
              (long long)pe->shape[0], (long long)pe->shape[1]);
    vm_weight w;
    cr_expect(vm_weights_linear(ws, "model.layers.0.mlp.down_proj", 64, 128, &w, &e) == 0, "%s", e.msg);
    cr_expect(w.dtype == VM_DTYPE_MLX_AFFINE && w.bits == 4 && w.group_size == 64);
    vm_weights_free(ws);
}
