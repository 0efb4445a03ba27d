// tower.c - the Qwen2-VL / Qwen2.5-VL vision transformer and patch merger.
//
//   x = patches (N, C*T*P*P) @ Wpatch^T                 Conv3d with stride = kernel, as a matmul
//   per block: x += proj(attn(rot2d(qkv(norm1(x)))))    bidirectional, within one image
//                                                        (Qwen2.5-VL: within a window, except
//                                                         the fullatt_block_indexes blocks)
//              x += mlp(norm2(x))                        Qwen2-VL: LayerNorm, fc2(quick_gelu(fc1))
//                                                        Qwen2.5-VL: RMSNorm, down(silu(gate)*up)
//   out = fc2(gelu(fc1(ln_q(x) viewed as (N/4, 4*D))))  the 2x2 patch merger
//
// Tokens stay in the processor's order (2x2 merge groups contiguous) throughout;
// Qwen2.5-VL's window permutation only groups each window's tokens for a
// variable-length kernel, so attending within the window in place is the same.
// Linear layers run through the backend's matmul; norms, activations, rotary
// and attention are host loops here (what the backend does not offer).
#include "vision.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct vision_block {
    const float *norm1_w, *norm1_b, *norm2_w, *norm2_b;   // b: LayerNorm only
    vm_weight qkv, proj, fc1, fc2, gate;                   // Qwen2-VL: fc1/fc2; Qwen2.5-VL: gate/up(fc1)/down(fc2)
    const float *qkv_b, *proj_b, *fc1_b, *fc2_b, *gate_b;
} vision_block;

struct vm_vision {
    vm_vision_config cfg;
    vm_backend *be;
    vm_weight_store *ws;
    vm_weight patch;
    void *patch_owned;          // the patch-embed weight reordered from channels-last (MLX), else NULL
    vision_block *blocks;
    const float *ln_q_w, *ln_q_b;
    vm_weight m_fc1, m_fc2;
    const float *m_fc1_b, *m_fc2_b;
    float *inv_freq;
    // f32 copies of vectors (norm weights, biases)
    float **owned;
    int n_owned, cap_owned;
    // backend scratch for linear layers
    vm_buf *bx, *by;
    size_t bx_cap, by_cap;
};

// ---- config -------------------------------------------------------------------

static int jint(json_t *o, const char *k, int dflt) {
    json_t *v = json_object_get(o, k);
    return json_is_integer(v) ? (int)json_integer_value(v) : dflt;
}

static int load_config(vm_vision_config *c, const char *dir, vm_err *e) {
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) return vm_errf(e, "%s:%d: %s", path, je.line, je.text);
    int rc = -1;
    json_t *vc = json_object_get(root, "vision_config");
    const char *mt = json_string_value(json_object_get(root, "model_type"));
    if (!json_is_object(vc) || !mt) { vm_errf(e, "%s: no vision_config / model_type", path); goto done; }
    memset(c, 0, sizeof *c);
    if (!strcmp(mt, "qwen2_vl")) c->kind = VM_VISION_QWEN2_VL;
    else if (!strcmp(mt, "qwen2_5_vl")) c->kind = VM_VISION_QWEN2_5_VL;
    else { vm_errf(e, "%s: model_type \"%s\" has no vision tower we run (qwen2_vl, qwen2_5_vl)", path, mt); goto done; }
    c->depth = jint(vc, "depth", 32);
    c->n_heads = jint(vc, "num_heads", 16);
    c->in_channels = jint(vc, "in_channels", jint(vc, "in_chans", 3));
    c->patch_size = jint(vc, "patch_size", jint(vc, "spatial_patch_size", 14));
    c->temporal_patch_size = jint(vc, "temporal_patch_size", 2);
    c->merge_size = jint(vc, "spatial_merge_size", 2);
    json_t *act = json_object_get(vc, "hidden_act");
    if (c->kind == VM_VISION_QWEN2_VL) {
        c->embed_dim = jint(vc, "embed_dim", 1280);
        c->out_dim = jint(vc, "hidden_size", 3584);
        json_t *r = json_object_get(vc, "mlp_ratio");
        double ratio = json_is_number(r) ? json_number_value(r) : 4.0;
        c->mlp_dim = (int)(c->embed_dim * ratio);
        c->quick_gelu = !json_is_string(act) || !strcmp(json_string_value(act), "quick_gelu");
        if (json_is_string(act) && strcmp(json_string_value(act), "quick_gelu") && strcmp(json_string_value(act), "gelu")) {
            vm_errf(e, "%s: vision hidden_act \"%s\" not supported", path, json_string_value(act));
            goto done;
        }
    } else {
        c->embed_dim = jint(vc, "hidden_size", 1280);
        c->out_dim = jint(vc, "out_hidden_size", 3584);
        c->mlp_dim = jint(vc, "intermediate_size", 3420);
        c->window_size = jint(vc, "window_size", 112);
        if (json_is_string(act) && strcmp(json_string_value(act), "silu")) {
            vm_errf(e, "%s: vision hidden_act \"%s\" not supported", path, json_string_value(act));
            goto done;
        }
        json_t *fa = json_object_get(vc, "fullatt_block_indexes");
        for (size_t i = 0; json_is_array(fa) && i < json_array_size(fa) && i < 64; i++)
            c->fullatt[c->n_fullatt++] = (int)json_integer_value(json_array_get(fa, i));
    }
    c->rope_theta = 10000.0f;
    json_t *vrp = json_object_get(vc, "rope_parameters");
    if (json_is_object(vrp) && json_is_number(json_object_get(vrp, "rope_theta")))
        c->rope_theta = (float)json_number_value(json_object_get(vrp, "rope_theta"));
    if (c->n_heads <= 0 || c->embed_dim % c->n_heads || (c->embed_dim / c->n_heads) % 4 || c->merge_size <= 0 ||
        c->depth <= 0 || c->out_dim <= 0 || c->mlp_dim <= 0) {
        vm_errf(e, "%s: inconsistent vision_config", path);
        goto done;
    }
    c->head_dim = c->embed_dim / c->n_heads;
    c->image_token_id = jint(root, "image_token_id", 151655);
    c->video_token_id = jint(root, "video_token_id", 151656);
    c->vision_start_token_id = jint(root, "vision_start_token_id", 151652);
    c->vision_end_token_id = jint(root, "vision_end_token_id", 151653);
    // mrope_section: rope_parameters (transformers 5) or rope_scaling (older), top level or text_config
    c->mrope_section[0] = 16; c->mrope_section[1] = 24; c->mrope_section[2] = 24;
    json_t *scopes[2] = { json_object_get(root, "text_config"), root };
    for (int s = 0; s < 2; s++) {
        if (!json_is_object(scopes[s])) continue;
        json_t *rp = json_object_get(scopes[s], "rope_parameters");
        if (!json_is_object(rp)) rp = json_object_get(scopes[s], "rope_scaling");
        json_t *ms = json_is_object(rp) ? json_object_get(rp, "mrope_section") : NULL;
        if (json_is_array(ms) && json_array_size(ms) == 3) {
            for (int i = 0; i < 3; i++) c->mrope_section[i] = (int)json_integer_value(json_array_get(ms, i));
            break;
        }
    }
    rc = 0;
done:
    json_decref(root);
    return rc;
}

// ---- weights ------------------------------------------------------------------

static const char *find_prefix(const vm_weight_store *ws) {
    static const char *prefixes[] = { "visual.", "model.visual.", "vision_tower." };
    char name[256];
    for (size_t i = 0; i < VM_ARRAY_LEN(prefixes); i++) {
        snprintf(name, sizeof name, "%spatch_embed.proj.weight", prefixes[i]);
        if (vm_weights_find(ws, name)) return prefixes[i];
    }
    return NULL;
}

static const float *vector_f32(vm_vision *v, const char *pre, const char *name, int64_t n, vm_err *e) {
    char full[256];
    snprintf(full, sizeof full, "%s%s", pre, name);
    const vm_tensor *t = vm_weights_vector(v->ws, full, n, 1, e);
    if (!t) return NULL;
    float *out = malloc(sizeof(float) * n);
    if (!out) { vm_errf(e, "out of memory"); return NULL; }
    const uint8_t *d = t->data;
    for (int64_t i = 0; i < n; i++) {
        if (t->dtype == VM_DTYPE_F32) memcpy(&out[i], d + 4 * i, 4);
        else {
            uint16_t h;
            memcpy(&h, d + 2 * i, 2);
            out[i] = t->dtype == VM_DTYPE_F16 ? vm_f16_to_f32(h) : vm_bf16_to_f32(h);
        }
    }
    if (v->n_owned == v->cap_owned) {
        int cap = v->cap_owned ? v->cap_owned * 2 : 64;
        float **no = realloc(v->owned, sizeof(float *) * cap);
        if (!no) { free(out); vm_errf(e, "out of memory"); return NULL; }
        v->owned = no;
        v->cap_owned = cap;
    }
    v->owned[v->n_owned++] = out;
    return out;
}

static int linear(vm_vision *v, const char *pre, const char *name, int64_t rows, int64_t cols,
                  vm_weight *w, const float **bias, vm_err *e) {
    char full[256];
    snprintf(full, sizeof full, "%s%s", pre, name);
    if (vm_weights_linear(v->ws, full, rows, cols, w, e) != 0) return -1;
    if (v->be->weight_prepare(v->be, w, e) != 0) return -1;
    if (bias) {
        snprintf(full, sizeof full, "%s.bias", name);
        if (!(*bias = vector_f32(v, pre, full, rows, e))) return -1;
    }
    return 0;
}

// Conv3d weight [D, C, T, P, P] (HF) viewed as a (D, C*T*P*P) matrix: the
// processor flattens each patch in the same (C, T, P, P) order. mlx-vlm
// stores it channels-last, [D, T, P, P, C] (MLX's Conv3d layout); that one is
// reordered once into an owned [D, C, T, P, P] copy (the tensor is small:
// D * 1176 elements).
static int patch_weight(vm_vision *v, const char *pre, vm_err *e) {
    const vm_vision_config *c = &v->cfg;
    char full[256];
    snprintf(full, sizeof full, "%spatch_embed.proj.weight", pre);
    const vm_tensor *t = vm_weights_find(v->ws, full);
    const int C = c->in_channels, T = c->temporal_patch_size, P = c->patch_size;
    const int64_t cols = (int64_t)C * T * P * P;
    if (!t) return vm_errf(e, "tensor %s missing", full);
    const int dims_ok = t->ndim == 5 && t->shape[0] == c->embed_dim;
    const int torch_layout = dims_ok && t->shape[1] == C && t->shape[2] == T && t->shape[3] == P && t->shape[4] == P;
    const int mlx_layout = !torch_layout && dims_ok && t->shape[1] == T && t->shape[2] == P && t->shape[3] == P &&
                           t->shape[4] == C;
    if (!torch_layout && !mlx_layout)
        return vm_errf(e, "%s: %s: expected Conv3d weight [%d, %d, %d, %d, %d] (or channels-last [%d, %d, %d, %d, %d])",
                       t->file, full, c->embed_dim, C, T, P, P, c->embed_dim, T, P, P, C);
    if (t->dtype != VM_DTYPE_F32 && t->dtype != VM_DTYPE_F16 && t->dtype != VM_DTYPE_BF16)
        return vm_errf(e, "%s: %s: dtype %s not supported", t->file, full, vm_dtype_name(t->dtype));
    memset(&v->patch, 0, sizeof v->patch);
    v->patch.name = t->name;
    v->patch.dtype = t->dtype;
    v->patch.rows = c->embed_dim;
    v->patch.cols = cols;
    v->patch.data = t->data;
    if (mlx_layout) {
        const size_t es = t->dtype == VM_DTYPE_F32 ? 4 : 2, spatial = (size_t)T * P * P;
        uint8_t *dst = malloc((size_t)c->embed_dim * cols * es);
        if (!dst) return vm_errf(e, "out of memory");
        const uint8_t *src = t->data;
        // dst[d][ch][s] = src[d][s][ch], s = (t, y, x) flattened
        for (int64_t d = 0; d < c->embed_dim; d++)
            for (size_t sp = 0; sp < spatial; sp++)
                for (int ch = 0; ch < C; ch++)
                    memcpy(dst + (((size_t)d * C + ch) * spatial + sp) * es,
                           src + (((size_t)d * spatial + sp) * C + ch) * es, es);
        v->patch_owned = dst;
        v->patch.data = dst;
    }
    return v->be->weight_prepare(v->be, &v->patch, e);
}

vm_vision *vm_vision_create(const char *dir, vm_backend *be, vm_err *e) {
    vm_vision *v = calloc(1, sizeof *v);
    if (!v) { vm_errf(e, "out of memory"); return NULL; }
    v->be = be;
    if (load_config(&v->cfg, dir, e) != 0) goto fail;
    if (!(v->ws = vm_weights_open(dir, e))) goto fail;
    const vm_vision_config *c = &v->cfg;
    const char *pre = find_prefix(v->ws);
    if (!pre) { vm_errf(e, "%s: no vision tower weights (visual.patch_embed.proj.weight)", dir); goto fail; }
    if (patch_weight(v, pre, e) != 0) goto fail;
    const int D = c->embed_dim, F = c->mlp_dim, M = D * c->merge_size * c->merge_size;
    if (!(v->blocks = calloc((size_t)c->depth, sizeof *v->blocks))) { vm_errf(e, "out of memory"); goto fail; }
    char n[128];
    for (int i = 0; i < c->depth; i++) {
        vision_block *B = &v->blocks[i];
#define VEC(field, suffix, len) \
        snprintf(n, sizeof n, "blocks.%d.%s", i, suffix); if (!(B->field = vector_f32(v, pre, n, len, e))) goto fail;
#define LIN(field, bfield, suffix, rows, cols) \
        snprintf(n, sizeof n, "blocks.%d.%s", i, suffix); if (linear(v, pre, n, rows, cols, &B->field, &B->bfield, e)) goto fail;
        VEC(norm1_w, "norm1.weight", D)
        VEC(norm2_w, "norm2.weight", D)
        if (c->kind == VM_VISION_QWEN2_VL) {
            VEC(norm1_b, "norm1.bias", D)
            VEC(norm2_b, "norm2.bias", D)
        }
        LIN(qkv, qkv_b, "attn.qkv", 3 * D, D)
        LIN(proj, proj_b, "attn.proj", D, D)
        if (c->kind == VM_VISION_QWEN2_VL) {
            LIN(fc1, fc1_b, "mlp.fc1", F, D)
            LIN(fc2, fc2_b, "mlp.fc2", D, F)
        } else {
            LIN(gate, gate_b, "mlp.gate_proj", F, D)
            LIN(fc1, fc1_b, "mlp.up_proj", F, D)
            LIN(fc2, fc2_b, "mlp.down_proj", D, F)
        }
#undef VEC
#undef LIN
    }
    if (!(v->ln_q_w = vector_f32(v, pre, "merger.ln_q.weight", D, e))) goto fail;
    if (c->kind == VM_VISION_QWEN2_VL && !(v->ln_q_b = vector_f32(v, pre, "merger.ln_q.bias", D, e))) goto fail;
    if (linear(v, pre, "merger.mlp.0", M, M, &v->m_fc1, &v->m_fc1_b, e) != 0) goto fail;
    if (linear(v, pre, "merger.mlp.2", c->out_dim, M, &v->m_fc2, &v->m_fc2_b, e) != 0) goto fail;
    // 2-D rotary: head_dim/4 frequencies, shared by the h and w halves
    const int nf = c->head_dim / 4, spatial = c->head_dim / 2;
    if (!(v->inv_freq = malloc(sizeof(float) * nf))) { vm_errf(e, "out of memory"); goto fail; }
    for (int i = 0; i < nf; i++) v->inv_freq[i] = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)spatial);
    return v;
fail:
    vm_vision_free(v);
    return NULL;
}

void vm_vision_free(vm_vision *v) {
    if (!v) return;
    for (int i = 0; i < v->n_owned; i++) free(v->owned[i]);
    free(v->owned);
    free(v->blocks);
    free(v->inv_freq);
    if (v->bx) v->be->buf_free(v->be, v->bx);
    if (v->by) v->be->buf_free(v->be, v->by);
    vm_weights_free(v->ws);
    free(v->patch_owned);
    free(v);
}

const vm_vision_config *vm_vision_get_config(const vm_vision *v) { return &v->cfg; }

// ---- host math ----------------------------------------------------------------

static int ensure(vm_backend *be, vm_buf **b, size_t *cap, size_t bytes, vm_err *e) {
    if (*b && *cap >= bytes) return 0;
    if (*b) be->buf_free(be, *b);
    *b = be->buf_alloc(be, bytes, e);
    *cap = *b ? bytes : 0;
    return *b ? 0 : -1;
}

// y (n, W.rows) = x (n, W.cols) @ W^T (+ bias)
static int run_linear(vm_vision *v, const vm_weight *w, const float *bias, const float *x, int n, float *y, vm_err *e) {
    vm_backend *be = v->be;
    const size_t in = (size_t)n * w->cols * 4, out = (size_t)n * w->rows * 4;
    if (ensure(be, &v->bx, &v->bx_cap, in, e) || ensure(be, &v->by, &v->by_cap, out, e)) return -1;
    be->buf_write(be, v->bx, 0, x, in);
    be->matmul(be, w, v->bx, n, v->by);
    if (be->sync(be, e) != 0) return -1;
    be->buf_read(be, v->by, 0, y, out);
    if (bias)
        for (int r = 0; r < n; r++)
            for (int64_t j = 0; j < w->rows; j++) y[(size_t)r * w->rows + j] += bias[j];
    return 0;
}

// LayerNorm (bias != NULL; torch: biased variance) or RMSNorm, eps 1e-6, rows of dim.
static void norm_rows(const float *x, const float *w, const float *b, int rows, int dim, float *out) {
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * dim;
        float *o = out + (size_t)r * dim;
        if (b) {
            double mean = 0, var = 0;
            for (int i = 0; i < dim; i++) mean += xr[i];
            mean /= dim;
            for (int i = 0; i < dim; i++) var += (xr[i] - mean) * (xr[i] - mean);
            var /= dim;
            const float inv = (float)(1.0 / sqrt(var + 1e-6));
            for (int i = 0; i < dim; i++) o[i] = ((xr[i] - (float)mean) * inv) * w[i] + b[i];
        } else {
            double ss = 0;
            for (int i = 0; i < dim; i++) ss += (double)xr[i] * xr[i];
            const float inv = (float)(1.0 / sqrt(ss / dim + 1e-6));
            for (int i = 0; i < dim; i++) o[i] = w[i] * (xr[i] * inv);
        }
    }
}

static float gelu_erf(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }
static float quick_gelu(float x) { return x / (1.0f + expf(-1.702f * x)); }
static float silu(float x) { return x / (1.0f + expf(-x)); }

// rotate_half rotary in place on the first rot_heads heads of each token of
// x (n, heads, hd): pair (j, j + hd/2) turns by angle h*inv_freq[j] for
// j < hd/4 and w*inv_freq[j - hd/4] otherwise.
static void rotary_2d(float *x, int n, int heads, int rot_heads, int hd, const int32_t *hpos, const int32_t *wpos, const float *inv_freq) {
    const int half = hd / 2, q = hd / 4;
    for (int t = 0; t < n; t++)
        for (int j = 0; j < half; j++) {
            float ang = j < q ? (float)hpos[t] * inv_freq[j] : (float)wpos[t] * inv_freq[j - q];
            float cs = cosf(ang), sn = sinf(ang);
            for (int h = 0; h < rot_heads; h++) {
                float *p = x + ((size_t)t * heads + h) * hd;
                float a = p[j], b = p[j + half];
                p[j] = a * cs - b * sn;
                p[j + half] = b * cs + a * sn;
            }
        }
}

// Bidirectional attention within segments: token i attends every token j with
// seg[j] == seg[i]. qkv (n, 3, heads, hd) -> out (n, heads, hd).
static int segment_attention(const float *qkv, int n, int heads, int hd, const int32_t *seg, int n_segs,
                             float *out, vm_err *e) {
    int *start = calloc((size_t)n_segs + 1, sizeof(int)), *members = malloc(sizeof(int) * n), *fill = NULL;
    float *scores = malloc(sizeof(float) * n);
    if (!start || !members || !scores || !(fill = calloc((size_t)n_segs, sizeof(int)))) {
        free(start); free(members); free(scores); free(fill);
        return vm_errf(e, "out of memory");
    }
    for (int i = 0; i < n; i++) start[seg[i] + 1]++;
    for (int s = 0; s < n_segs; s++) start[s + 1] += start[s];
    for (int i = 0; i < n; i++) members[start[seg[i]] + fill[seg[i]]++] = i;
    const float scale = 1.0f / sqrtf((float)hd);
    const size_t row = (size_t)3 * heads * hd;
    for (int s = 0; s < n_segs; s++) {
        const int *mem = members + start[s];
        const int len = start[s + 1] - start[s];
        for (int h = 0; h < heads; h++)
            for (int a = 0; a < len; a++) {
                const float *qv = qkv + (size_t)mem[a] * row + (size_t)h * hd;
                float mx = -INFINITY;
                for (int b = 0; b < len; b++) {
                    const float *kv = qkv + (size_t)mem[b] * row + (size_t)(heads + h) * hd;
                    float d = 0;
                    for (int i = 0; i < hd; i++) d += qv[i] * kv[i];
                    scores[b] = d * scale;
                    if (scores[b] > mx) mx = scores[b];
                }
                float sum = 0;
                for (int b = 0; b < len; b++) sum += (scores[b] = expf(scores[b] - mx));
                float *o = out + ((size_t)mem[a] * heads + h) * hd;
                memset(o, 0, sizeof(float) * hd);
                for (int b = 0; b < len; b++) {
                    const float *vv = qkv + (size_t)mem[b] * row + (size_t)(2 * heads + h) * hd;
                    const float p = scores[b] / sum;
                    for (int i = 0; i < hd; i++) o[i] += p * vv[i];
                }
            }
    }
    free(start); free(members); free(scores); free(fill);
    return 0;
}

// ---- forward ------------------------------------------------------------------

int vm_vision_forward(vm_vision *v, const float *pixels, int n_images, const int (*grid_thw)[3],
                      float **features, int *n_features, vm_err *e) {
    const vm_vision_config *c = &v->cfg;
    const int D = c->embed_dim, H = c->n_heads, hd = c->head_dim, F = c->mlp_dim, ms = c->merge_size;
    const int unit = ms * ms;
    *features = NULL;
    int n = 0;
    for (int i = 0; i < n_images; i++) {
        const int t = grid_thw[i][0], h = grid_thw[i][1], w = grid_thw[i][2];
        if (t <= 0 || h <= 0 || w <= 0 || h % ms || w % ms) return vm_errf(e, "image %d: bad grid %dx%dx%d", i, t, h, w);
        n += t * h * w;
    }
    if (n <= 0) return vm_errf(e, "no images");
    int32_t *hpos = malloc(sizeof(int32_t) * n), *wpos = malloc(sizeof(int32_t) * n);
    int32_t *seg_full = malloc(sizeof(int32_t) * n), *seg_win = malloc(sizeof(int32_t) * n);
    float *x = malloc(sizeof(float) * (size_t)n * D), *xn = malloc(sizeof(float) * (size_t)n * D);
    float *big = malloc(sizeof(float) * (size_t)n * VM_MAX(3 * D, F));
    float *big2 = malloc(sizeof(float) * (size_t)n * VM_MAX(D, F));
    float *out = NULL;
    int rc = -1, n_full = 0, n_win = 0;
    if (!hpos || !wpos || !seg_full || !seg_win || !x || !xn || !big || !big2) { vm_errf(e, "out of memory"); goto done; }

    // positions (row, column of the patch) in merge-block order, and attention segments
    {
        int k = 0;
        const int wm = c->kind == VM_VISION_QWEN2_5_VL ? c->window_size / ms / c->patch_size : 0;
        for (int i = 0; i < n_images; i++) {
            const int t = grid_thw[i][0], h = grid_thw[i][1], w = grid_thw[i][2];
            const int lh = h / ms, lw = w / ms;
            const int nwh = wm > 0 ? (lh + wm - 1) / wm : 1, nww = wm > 0 ? (lw + wm - 1) / wm : 1;
            for (int ti = 0; ti < t; ti++, n_full++) {
                for (int by = 0; by < lh; by++)
                    for (int bx = 0; bx < lw; bx++)
                        for (int my = 0; my < ms; my++)
                            for (int mx = 0; mx < ms; mx++, k++) {
                                hpos[k] = by * ms + my;
                                wpos[k] = bx * ms + mx;
                                seg_full[k] = n_full;
                                seg_win[k] = wm > 0 ? n_win + (by / wm) * nww + bx / wm : n_full;
                            }
                n_win += nwh * nww;
            }
        }
        if (wm <= 0) n_win = n_full;
    }

    if (run_linear(v, &v->patch, NULL, pixels, n, x, e) != 0) goto done;      // x (n, D)
    for (int l = 0; l < c->depth; l++) {
        const vision_block *B = &v->blocks[l];
        int full = c->kind == VM_VISION_QWEN2_VL;
        for (int i = 0; i < c->n_fullatt; i++) full |= c->fullatt[i] == l;
        norm_rows(x, B->norm1_w, B->norm1_b, n, D, xn);
        if (run_linear(v, &B->qkv, B->qkv_b, xn, n, big, e) != 0) goto done;  // (n, 3, H, hd)
        rotary_2d(big, n, 3 * H, 2 * H, hd, hpos, wpos, v->inv_freq);          // q and k heads
        if (segment_attention(big, n, H, hd, full ? seg_full : seg_win, full ? n_full : n_win, xn, e) != 0) goto done;
        if (run_linear(v, &B->proj, B->proj_b, xn, n, big2, e) != 0) goto done;
        for (size_t i = 0; i < (size_t)n * D; i++) x[i] += big2[i];
        norm_rows(x, B->norm2_w, B->norm2_b, n, D, xn);
        if (c->kind == VM_VISION_QWEN2_VL) {
            if (run_linear(v, &B->fc1, B->fc1_b, xn, n, big, e) != 0) goto done;
            for (size_t i = 0; i < (size_t)n * F; i++) big[i] = c->quick_gelu ? quick_gelu(big[i]) : gelu_erf(big[i]);
        } else {
            if (run_linear(v, &B->gate, B->gate_b, xn, n, big, e) != 0) goto done;
            if (run_linear(v, &B->fc1, B->fc1_b, xn, n, big2, e) != 0) goto done;
            for (size_t i = 0; i < (size_t)n * F; i++) big[i] = silu(big[i]) * big2[i];
        }
        if (run_linear(v, &B->fc2, B->fc2_b, big, n, big2, e) != 0) goto done;
        for (size_t i = 0; i < (size_t)n * D; i++) x[i] += big2[i];
    }
    // merger: ln_q per patch, then 2x2 groups as rows of unit*D
    norm_rows(x, v->ln_q_w, v->ln_q_b, n, D, xn);
    const int nm = n / unit;
    if (run_linear(v, &v->m_fc1, v->m_fc1_b, xn, nm, big, e) != 0) goto done;
    for (size_t i = 0; i < (size_t)nm * unit * D; i++) big[i] = gelu_erf(big[i]);
    if (!(out = malloc(sizeof(float) * (size_t)nm * c->out_dim))) { vm_errf(e, "out of memory"); goto done; }
    if (run_linear(v, &v->m_fc2, v->m_fc2_b, big, nm, out, e) != 0) goto done;
    *features = out;
    *n_features = nm;
    out = NULL;
    rc = 0;
done:
    free(hpos); free(wpos); free(seg_full); free(seg_win);
    free(x); free(xn); free(big); free(big2); free(out);
    return rc;
}
