// preprocess.c - the HF Qwen2VLImageProcessor (transformers 5, default
// torchvision backend) in C, and transformers' get_rope_index for M-RoPE.
#include "vision.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

void vm_vision_preproc_default(vm_vision_preproc *p) {
    static const float clip_mean[3] = { 0.48145466f, 0.4578275f, 0.40821073f };
    static const float clip_std[3] = { 0.26862954f, 0.26130258f, 0.27577711f };
    p->min_pixels = 56 * 56;
    p->max_pixels = 28 * 28 * 1280;
    p->patch_size = 14;
    p->temporal_patch_size = 2;
    p->merge_size = 2;
    memcpy(p->mean, clip_mean, sizeof clip_mean);
    memcpy(p->std, clip_std, sizeof clip_std);
    p->rescale = 1.0f / 255.0f;
}

static int get_int(json_t *o, const char *key, int64_t *out) {
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v)) return 0;
    *out = json_integer_value(v);
    return 1;
}

static int get_vec3(json_t *o, const char *key, float out[3]) {
    json_t *v = json_object_get(o, key);
    if (!json_is_array(v) || json_array_size(v) != 3) return 0;
    for (int i = 0; i < 3; i++) out[i] = (float)json_number_value(json_array_get(v, i));
    return 1;
}

int vm_vision_preproc_load(vm_vision_preproc *p, const char *dir, vm_err *e) {
    vm_vision_preproc_default(p);
    char path[4096];
    snprintf(path, sizeof path, "%s/preprocessor_config.json", dir);
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    fclose(f);
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) return vm_errf(e, "%s:%d: %s", path, je.line, je.text);
    int64_t v;
    json_t *size = json_object_get(root, "size");
    if (json_is_object(size)) {
        if (get_int(size, "shortest_edge", &v)) p->min_pixels = v;
        if (get_int(size, "longest_edge", &v)) p->max_pixels = v;
        if (get_int(size, "min_pixels", &v)) p->min_pixels = v;
        if (get_int(size, "max_pixels", &v)) p->max_pixels = v;
    }
    if (get_int(root, "min_pixels", &v)) p->min_pixels = v;   // older files say both; these win, as in HF
    if (get_int(root, "max_pixels", &v)) p->max_pixels = v;
    if (get_int(root, "patch_size", &v)) p->patch_size = (int)v;
    if (get_int(root, "temporal_patch_size", &v)) p->temporal_patch_size = (int)v;
    if (get_int(root, "merge_size", &v)) p->merge_size = (int)v;
    get_vec3(root, "image_mean", p->mean);
    get_vec3(root, "image_std", p->std);
    json_t *rf = json_object_get(root, "rescale_factor");
    if (json_is_number(rf)) p->rescale = (float)json_number_value(rf);
    json_decref(root);
    if (p->patch_size <= 0 || p->merge_size <= 0 || p->temporal_patch_size <= 0 || p->min_pixels <= 0 ||
        p->max_pixels < p->min_pixels)
        return vm_errf(e, "%s: invalid patch/merge sizes or pixel limits", path);
    return 0;
}

int vm_smart_resize(int height, int width, int factor, int64_t min_pixels, int64_t max_pixels,
                    int *out_h, int *out_w, vm_err *e) {
    if (height <= 0 || width <= 0) return vm_errf(e, "image of %dx%d pixels", width, height);
    double ratio = (double)VM_MAX(height, width) / VM_MIN(height, width);
    if (ratio > 200) return vm_errf(e, "absolute aspect ratio must be smaller than 200, got %g", ratio);
    // Python's round(): half to even, which is rint() in the default rounding mode.
    int64_t h = (int64_t)rint((double)height / factor) * factor;
    int64_t w = (int64_t)rint((double)width / factor) * factor;
    if (h * w > max_pixels) {
        double beta = sqrt((double)height * width / (double)max_pixels);
        h = VM_MAX((int64_t)factor, (int64_t)floor(height / beta / factor) * factor);
        w = VM_MAX((int64_t)factor, (int64_t)floor(width / beta / factor) * factor);
    } else if (h * w < min_pixels) {
        double beta = sqrt((double)min_pixels / ((double)height * width));
        h = (int64_t)ceil(height * beta / factor) * factor;
        w = (int64_t)ceil(width * beta / factor) * factor;
    }
    if (h <= 0 || w <= 0 || h > 65535 || w > 65535) return vm_errf(e, "resized image %lldx%lld out of range",
                                                                   (long long)w, (long long)h);
    *out_h = (int)h;
    *out_w = (int)w;
    return 0;
}

int vm_vision_preprocess(const vm_vision_preproc *p, const vm_image *im, float **pixels,
                         int *n_patches, int grid_thw[3], vm_err *e) {
    *pixels = NULL;
    const int ps = p->patch_size, ms = p->merge_size, tp = p->temporal_patch_size;
    int h, w;
    if (vm_smart_resize(im->height, im->width, ps * ms, p->min_pixels, p->max_pixels, &h, &w, e) != 0) return -1;
    vm_image rs = {0};
    const vm_image *src = im;
    if (h != im->height || w != im->width) {
        if (vm_image_resize_bicubic(im, w, h, &rs, e) != 0) return -1;
        src = &rs;
    }
    // torchvision: normalize((x - mean/rescale) / (std/rescale)) on the f32 image (rescale fused in)
    float mean[3], std[3];
    for (int c = 0; c < 3; c++) {
        mean[c] = p->mean[c] * (float)(1.0 / (double)p->rescale);
        std[c] = p->std[c] * (float)(1.0 / (double)p->rescale);
    }
    const int gh = h / ps, gw = w / ps, n = gh * gw, dim = 3 * tp * ps * ps;
    float *out = malloc(sizeof(float) * (size_t)n * dim);
    if (!out) { vm_image_free(&rs); return vm_errf(e, "out of memory"); }
    // patch order: (gh/ms, gw/ms, ms, ms); inside a patch: (channel, temporal copy, py, px)
    size_t k = 0;
    for (int by = 0; by < gh / ms; by++)
        for (int bx = 0; bx < gw / ms; bx++)
            for (int my = 0; my < ms; my++)
                for (int mx = 0; mx < ms; mx++, k++) {
                    float *row = out + k * dim;
                    const int y0 = (by * ms + my) * ps, x0 = (bx * ms + mx) * ps;
                    for (int c = 0; c < 3; c++)
                        for (int py = 0; py < ps; py++)
                            for (int px = 0; px < ps; px++) {
                                float v = ((float)src->rgb[((size_t)(y0 + py) * w + x0 + px) * 3 + c] - mean[c]) / std[c];
                                for (int t = 0; t < tp; t++) row[((c * tp + t) * ps + py) * ps + px] = v;
                            }
                }
    vm_image_free(&rs);
    *pixels = out;
    *n_patches = n;
    grid_thw[0] = 1;
    grid_thw[1] = gh;
    grid_thw[2] = gw;
    return 0;
}

int vm_mrope_positions(const int32_t *tokens, int n, int image_token_id, int merge_size,
                       int n_images, const int (*grid_thw)[3], int32_t *positions,
                       int32_t *rope_delta, vm_err *e) {
    int32_t *pt = positions, *ph = positions + n, *pw = positions + 2 * (size_t)n;
    int32_t cur = 0, maxpos = -1;
    int img = 0;
    for (int i = 0; i < n;) {
        if (tokens[i] != image_token_id) {
            pt[i] = ph[i] = pw[i] = cur++;
            maxpos = VM_MAX(maxpos, pt[i]);
            i++;
            continue;
        }
        int j = i;
        while (j < n && tokens[j] == image_token_id) j++;
        // a run may hold several images back to back: take grids until it is used up
        while (i < j) {
            if (img >= n_images) return vm_errf(e, "more image tokens in the prompt than images given (%d)", n_images);
            const int gt = grid_thw[img][0], gh = grid_thw[img][1] / merge_size, gw = grid_thw[img][2] / merge_size;
            const int len = gt * gh * gw;
            if (i + len > j)
                return vm_errf(e, "image %d needs %d image tokens, the prompt has %d", img, len, j - i);
            for (int t = 0; t < gt; t++)
                for (int y = 0; y < gh; y++)
                    for (int x = 0; x < gw; x++, i++) {
                        pt[i] = cur + t;
                        ph[i] = cur + y;
                        pw[i] = cur + x;
                        maxpos = VM_MAX(maxpos, VM_MAX(pt[i], VM_MAX(ph[i], pw[i])));
                    }
            cur += VM_MAX(gh, gw);   // transformers 5: next text position after an image (t = 1)
            img++;
        }
    }
    if (img != n_images) return vm_errf(e, "%d images given, the prompt has image tokens for %d", n_images, img);
    *rope_delta = maxpos + 1 - n;
    return 0;
}
