// worker.c - owns the compute backend, the model and its paged KV cache, and
// offers them to the engine as one executor (a forward pass over a vm_batch).
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "platform.h"

typedef struct vm_worker {
    vm_backend *be;
    vm_model *model;
    vm_kv_cache *kv;
    vm_vision *vision;       // vision-language models: the image tower
    vm_vision_info vinfo;
} vm_worker;

static int worker_forward(void *ctx, const vm_batch *b, float *logits, vm_err *e) {
    vm_worker *w = ctx;
    return vm_model_forward(w->model, w->kv, b, logits, e);
}

static int worker_forward_mm(void *ctx, const vm_batch *b, const float *embeds, const int32_t *embed_rows,
                             int n_embeds, const int32_t *mrope_pos, float *logits, vm_err *e) {
    vm_worker *w = ctx;
    return vm_model_forward_embeds(w->model, w->kv, b, embeds, embed_rows, n_embeds, mrope_pos, logits, e);
}

static int worker_encode_image(void *ctx, const float *pixels, const int grid_thw[3], float **features,
                               int *n_features, vm_err *e) {
    vm_worker *w = ctx;
    int thw[1][3] = {{ grid_thw[0], grid_thw[1], grid_thw[2] }};
    return vm_vision_forward(w->vision, pixels, 1, (const int (*)[3])thw, features, n_features, e);
}

// A model folder whose config.json has a "vision_config" is a vision-language model.
static bool has_vision_config(const char *path) {
    char cfg[4096];
    snprintf(cfg, sizeof cfg, "%s/config.json", path);
    json_error_t je;
    json_t *root = json_load_file(cfg, 0, &je);
    bool yes = root && json_is_object(json_object_get(root, "vision_config"));
    json_decref(root);
    return yes;
}

static void worker_destroy(void *ctx) {
    vm_worker *w = ctx;
    if (!w) return;
    if (w->kv) vm_kv_cache_free(w->model, w->kv);
    if (w->vision) vm_vision_free(w->vision);
    if (w->model) vm_model_free(w->model);
    if (w->be) w->be->destroy(w->be);
    free(w);
}

int vm_worker_create(const vm_worker_config *cfg, vm_executor *out, vm_worker_info *info, vm_err *e) {
    memset(info, 0, sizeof *info);
    vm_worker *w = calloc(1, sizeof *w);
    if (!w) return vm_errf(e, "out of memory");
    if (!(w->be = vm_platform_create_backend(cfg->n_threads, e))) goto fail;
    if (!(w->model = vm_model_create(cfg->model, w->be, cfg->max_num_batched_tokens, e))) goto fail;
    const vm_model_config *c = vm_model_get_config(w->model);

    int max_len = cfg->max_model_len > 0 ? cfg->max_model_len : c->max_position_embeddings;
    if (max_len <= 0) max_len = 2048;
    if (c->max_position_embeddings > 0 && max_len > c->max_position_embeddings) {
        vm_errf(e, "max_model_len (%d) is greater than the model's max_position_embeddings (%d); "
                   "lower --max-model-len", max_len, c->max_position_embeddings);
        goto fail;
    }
    size_t block_bytes = vm_model_kv_block_bytes(w->model, cfg->block_size);
    int n_blocks = cfg->num_kv_blocks;
    if (n_blocks <= 0) {
        n_blocks = vm_platform_kv_blocks(cfg->memory_fraction, vm_weights_total_bytes(vm_model_weights(w->model)),
                                         block_bytes, cfg->block_size, max_len, cfg->max_num_seqs, e);
        if (n_blocks < 0) goto fail;
    }
    if (!(w->kv = vm_kv_cache_create(w->model, n_blocks, cfg->block_size, e))) goto fail;

    if (has_vision_config(cfg->model)) {
        if (!(w->vision = vm_vision_create(cfg->model, w->be, e))) goto fail;
        const vm_vision_config *vc = vm_vision_get_config(w->vision);
        if (vm_vision_preproc_load(&w->vinfo.preproc, cfg->model, e)) goto fail;
        w->vinfo.image_token_id = vc->image_token_id;
        w->vinfo.vision_start_token_id = vc->vision_start_token_id;
        w->vinfo.vision_end_token_id = vc->vision_end_token_id;
        w->vinfo.merge_size = vc->merge_size;
        w->vinfo.feature_dim = vc->out_dim;
        if (vc->out_dim != c->hidden_size) {
            vm_errf(e, "%s: vision features (%d) do not match the decoder's hidden size (%d)", cfg->model,
                    vc->out_dim, c->hidden_size);
            goto fail;
        }
    }
    info->num_kv_blocks = n_blocks;
    info->max_model_len = max_len;
    info->vocab_size = c->vocab_size;
    info->bos_token_id = c->bos_token_id;
    info->n_eos_token_ids = VM_MIN(c->n_eos_token_ids, 8);
    for (int i = 0; i < info->n_eos_token_ids; i++) info->eos_token_ids[i] = c->eos_token_ids[i];
    *out = (vm_executor){ .ctx = w, .vocab_size = c->vocab_size,
                          .max_position_embeddings = c->max_position_embeddings,
                          .forward = worker_forward, .destroy = worker_destroy, .device_sample = 1 };
    if (w->vision) {
        out->vision = &w->vinfo;
        out->encode_image = worker_encode_image;
        out->forward_mm = worker_forward_mm;
    }
    return 0;
fail:
    worker_destroy(w);
    return -1;
}
