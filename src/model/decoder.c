// decoder.c - the one decoder-only transformer all supported families share:
//   x = embed(tokens)
//   per layer: x += o_proj(attn(rope(q), rope(k), v))  on rmsnorm(x)
//              x += down(silu(gate(h)) * up(h))       on h = rmsnorm(x)
//   logits = lm_head(rmsnorm(x)) for the rows that sample.
// Family switches: q/k/v bias (Qwen2), q/k RMSNorm (Qwen3), tied embeddings,
// llama3 rope scaling, pairwise rotary for GGUF llama weights.
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct vm_model {
    vm_model_config cfg;
    vm_weight_store *ws;
    vm_backend *be;
    vm_weight embed, lm_head;
    const vm_tensor *final_norm;
    vm_layer *layers;
    float *inv_freq;
    vm_rope rope;
    float *mrope_freq;         // M-RoPE: [3][head_dim/2] inv_freq, zero outside the axis' section
    vm_rope mrope[3];
    vm_buf *mrope_pos[3];      // i32 [max_tokens] per axis
    vm_dtype kv_dtype;
    int max_tokens;
    // activation scratch, sized for max_tokens rows
    vm_buf *x, *xn, *q, *k, *v, *attn, *proj, *gate, *up;
    // step metadata
    vm_buf *tokens, *positions, *seq_start, *ctx_len, *slots, *logit_rows, *block_table, *decode_from, *ids, *sparams;
    size_t block_table_cap, ids_cap, sparams_cap;
    vm_buf *logits;
    size_t logits_cap;
};

static int get_matrix(vm_model *m, const char *prefix, int64_t rows, int64_t cols, int gather_only, vm_weight *w,
                      vm_err *e) {
    if (vm_weights_linear(m->ws, prefix, rows, cols, w, e) != 0) return -1;
    w->gather_only = gather_only;
    return m->be->weight_prepare(m->be, w, e);
}

static int get_linear(vm_model *m, const char *prefix, int64_t rows, int64_t cols, vm_weight *w, vm_err *e) {
    return get_matrix(m, prefix, rows, cols, 0, w, e);
}

static int load_layer(vm_model *m, int i, vm_err *e) {
    const vm_model_config *c = &m->cfg;
    vm_layer *L = &m->layers[i];
    char p[256], n[256];
    const int64_t H = c->hidden_size, q_dim = (int64_t)c->n_heads * c->head_dim,
                  kv_dim = (int64_t)c->n_kv_heads * c->head_dim, F = c->intermediate_size;
#define LINEAR(field, name, rows, cols)                                             \
    snprintf(p, sizeof p, "model.layers.%d.%s", i, name);                            \
    if (get_linear(m, p, rows, cols, &L->field, e) != 0) return -1;
    LINEAR(q, "self_attn.q_proj", q_dim, H)
    LINEAR(k, "self_attn.k_proj", kv_dim, H)
    LINEAR(v, "self_attn.v_proj", kv_dim, H)
    LINEAR(o, "self_attn.o_proj", H, q_dim)
    LINEAR(gate, "mlp.gate_proj", F, H)
    LINEAR(up, "mlp.up_proj", F, H)
    LINEAR(down, "mlp.down_proj", H, F)
#undef LINEAR
#define VECTOR(field, name, len, required)                                          \
    snprintf(n, sizeof n, "model.layers.%d.%s", i, name);                            \
    L->field = vm_weights_vector(m->ws, n, len, required, e);                        \
    if ((required) && !L->field) return -1;
    VECTOR(attn_norm, "input_layernorm.weight", H, 1)
    VECTOR(mlp_norm, "post_attention_layernorm.weight", H, 1)
    if (c->attention_bias) {
        VECTOR(q_bias, "self_attn.q_proj.bias", q_dim, 1)
        VECTOR(k_bias, "self_attn.k_proj.bias", kv_dim, 1)
        VECTOR(v_bias, "self_attn.v_proj.bias", kv_dim, 1)
    }
    if (c->qk_norm) {
        VECTOR(q_norm, "self_attn.q_norm.weight", c->head_dim, 1)
        VECTOR(k_norm, "self_attn.k_norm.weight", c->head_dim, 1)
    }
#undef VECTOR
    return 0;
}

// inv_freq[i] = theta^(-2i/d), optionally reshaped by llama3 scaling or GGUF rope_freqs.
static int make_rope(vm_model *m, vm_err *e) {
    const vm_model_config *c = &m->cfg;
    int half = c->head_dim / 2;
    m->inv_freq = malloc(sizeof(float) * half);
    if (!m->inv_freq) return vm_errf(e, "out of memory");
    for (int i = 0; i < half; i++) {
        m->inv_freq[i] = (float)(1.0 / pow((double)c->rope_theta, (double)(2 * i) / c->head_dim));
        if (c->rope_llama3) {
            const double pi = 3.14159265358979323846;
            double low_wl = c->rope_original_max_pos / c->rope_low_freq_factor;
            double high_wl = c->rope_original_max_pos / c->rope_high_freq_factor;
            double f = m->inv_freq[i], wl = 2 * pi / f;
            if (wl > low_wl) f = f / c->rope_factor;
            else if (wl >= high_wl) {
                double smooth = (c->rope_original_max_pos / wl - c->rope_low_freq_factor) /
                                (c->rope_high_freq_factor - c->rope_low_freq_factor);
                f = (1 - smooth) * f / c->rope_factor + smooth * f;
            }
            m->inv_freq[i] = (float)f;
        }
    }
    const vm_tensor *rf = vm_weights_find(m->ws, "rope_freqs.weight");
    if (rf) {
        if (rf->dtype != VM_DTYPE_F32 || rf->ndim != 1 || rf->shape[0] != half)
            return vm_errf(e, "%s: tensor rope_freqs.weight must be F32 [%d]", rf->file, half);
        for (int i = 0; i < half; i++) {
            float f;
            memcpy(&f, (const char *)rf->data + 4 * i, 4);
            m->inv_freq[i] /= f;
        }
    }
    m->rope.rot_dim = c->head_dim;
    m->rope.inv_freq = m->inv_freq;
    m->rope.interleaved = c->rope_interleaved;
    if (vm_weights_format(m->ws) == VM_FORMAT_GGUF && !c->rope_llama3 && !rf)
        m->rope.theta_scale = powf(c->rope_theta, -2.0f / (float)c->head_dim);
    if (c->mrope_section[0] + c->mrope_section[1] + c->mrope_section[2] > 0) {
        // M-RoPE as three rotations, one per axis at its own positions: a pair
        // outside the axis' section has frequency 0, i.e. cos 1 / sin 0, exactly identity.
        if (!(m->mrope_freq = calloc((size_t)3 * half, sizeof(float)))) return vm_errf(e, "out of memory");
        for (int a = 0, i = 0; a < 3; a++)
            for (int k = 0; k < c->mrope_section[a] && i < half; k++, i++) m->mrope_freq[a * half + i] = m->inv_freq[i];
        for (int a = 0; a < 3; a++) {
            m->mrope[a] = m->rope;
            m->mrope[a].inv_freq = m->mrope_freq + a * half;
            m->mrope[a].theta_scale = 0; // per-axis frequencies, never the cumulative form
        }
    }
    return 0;
}

static int alloc_scratch(vm_model *m, vm_err *e) {
    const vm_model_config *c = &m->cfg;
    const size_t n = (size_t)m->max_tokens, f = 4;
    const size_t qd = (size_t)c->n_heads * c->head_dim, kvd = (size_t)c->n_kv_heads * c->head_dim;
    const size_t wide = VM_MAX(qd, (size_t)c->hidden_size);
    struct { vm_buf **b; size_t bytes; } want[] = {
        {&m->x, n * c->hidden_size * f}, {&m->xn, n * wide * f}, {&m->q, n * qd * f},
        {&m->k, n * kvd * f}, {&m->v, n * kvd * f}, {&m->attn, n * qd * f},
        {&m->proj, n * c->hidden_size * f}, {&m->gate, n * c->intermediate_size * f},
        {&m->up, n * c->intermediate_size * f}, {&m->tokens, n * 4}, {&m->positions, n * 4},
        {&m->seq_start, (n + 1) * 4}, {&m->ctx_len, n * 4}, {&m->decode_from, n * 4}, {&m->slots, n * 4},
        {&m->logit_rows, n * 4}, {&m->mrope_pos[0], n * 4}, {&m->mrope_pos[1], n * 4}, {&m->mrope_pos[2], n * 4},
    };
    for (size_t i = 0; i < VM_ARRAY_LEN(want); i++)
        if (!(*want[i].b = m->be->buf_alloc(m->be, want[i].bytes, e))) return -1;
    return 0;
}

vm_model *vm_model_create(const char *path, vm_backend *be, int max_batch_tokens, vm_err *e) {
    if (max_batch_tokens <= 0) max_batch_tokens = 512;
    vm_model *m = calloc(1, sizeof *m);
    if (!m) { vm_errf(e, "out of memory"); return NULL; }
    m->be = be;
    m->max_tokens = max_batch_tokens;
    if (!(m->ws = vm_weights_open(path, e))) goto fail;
    if (vm_model_config_load(&m->cfg, path, m->ws, e) != 0) goto fail;
    const vm_model_config *c = &m->cfg;
    if (get_matrix(m, "model.embed_tokens", c->vocab_size, c->hidden_size, !c->tie_word_embeddings, &m->embed, e) != 0)
        goto fail;
    if (c->tie_word_embeddings) m->lm_head = m->embed;
    else if (get_linear(m, "lm_head", c->vocab_size, c->hidden_size, &m->lm_head, e) != 0) goto fail;
    if (!(m->final_norm = vm_weights_vector(m->ws, "model.norm.weight", c->hidden_size, 1, e))) goto fail;
    if (!(m->layers = calloc((size_t)c->n_layers, sizeof *m->layers))) { vm_errf(e, "out of memory"); goto fail; }
    for (int i = 0; i < c->n_layers; i++)
        if (load_layer(m, i, e) != 0) goto fail;
    if (make_rope(m, e) != 0 || alloc_scratch(m, e) != 0) goto fail;
    m->kv_dtype = vm_weights_format(m->ws) == VM_FORMAT_GGUF ? VM_DTYPE_F16 : VM_DTYPE_F32;
    const char *kvd = getenv("VLLM_METAL_KV_CACHE_DTYPE");
    if (kvd && *kvd) {
        if (!strcmp(kvd, "f16") || !strcmp(kvd, "float16")) m->kv_dtype = VM_DTYPE_F16;
        else if (!strcmp(kvd, "f32") || !strcmp(kvd, "float32")) m->kv_dtype = VM_DTYPE_F32;
        else { vm_errf(e, "VLLM_METAL_KV_CACHE_DTYPE=%s: expected f16 or f32", kvd); goto fail; }
    }
    return m;
fail:
    vm_model_free(m);
    return NULL;
}

void vm_model_free(vm_model *m) {
    if (!m) return;
    vm_buf *bufs[] = { m->x, m->xn, m->q, m->k, m->v, m->attn, m->proj, m->gate, m->up, m->tokens,
                       m->positions, m->seq_start, m->ctx_len, m->decode_from, m->slots, m->logit_rows,
                       m->block_table, m->ids, m->sparams, m->logits, m->mrope_pos[0], m->mrope_pos[1], m->mrope_pos[2] };
    for (size_t i = 0; i < VM_ARRAY_LEN(bufs); i++)
        if (bufs[i]) m->be->buf_free(m->be, bufs[i]);
    free(m->layers);
    free(m->inv_freq);
    free(m->mrope_freq);
    vm_weights_free(m->ws);
    free(m);
}

const vm_model_config *vm_model_get_config(const vm_model *m) { return &m->cfg; }
const vm_weight_store *vm_model_weights(const vm_model *m) { return m->ws; }
vm_backend *vm_model_backend(const vm_model *m) { return m->be; }
int vm_model_max_batch_tokens(const vm_model *m) { return m->max_tokens; }

vm_dtype vm_model_kv_dtype(const vm_model *m) { return m->kv_dtype; }

size_t vm_model_kv_block_bytes(const vm_model *m, int block_size) {
    size_t elem = m->kv_dtype == VM_DTYPE_F16 ? 2 : 4;
    return (size_t)2 * m->cfg.n_layers * m->cfg.n_kv_heads * m->cfg.head_dim * block_size * elem;
}

vm_kv_cache *vm_kv_cache_create(vm_model *m, int num_blocks, int block_size, vm_err *e) {
    if (num_blocks < 2 || block_size <= 0) { vm_errf(e, "KV cache needs at least 2 blocks"); return NULL; }
    vm_kv_cache *kv = calloc(1, sizeof *kv);
    if (!kv) { vm_errf(e, "out of memory"); return NULL; }
    kv->num_blocks = num_blocks;
    kv->block_size = block_size;
    kv->n_layers = m->cfg.n_layers;
    kv->dtype = m->kv_dtype;
    kv->k = calloc((size_t)kv->n_layers, sizeof *kv->k);
    kv->v = calloc((size_t)kv->n_layers, sizeof *kv->v);
    if (!kv->k || !kv->v) { vm_errf(e, "out of memory"); vm_kv_cache_free(m, kv); return NULL; }
    size_t layer_bytes = vm_model_kv_block_bytes(m, block_size) / 2 / kv->n_layers * num_blocks;
    for (int l = 0; l < kv->n_layers; l++) {
        if (!(kv->k[l] = m->be->buf_alloc(m->be, layer_bytes, e)) ||
            !(kv->v[l] = m->be->buf_alloc(m->be, layer_bytes, e))) {
            vm_kv_cache_free(m, kv);
            return NULL;
        }
    }
    return kv;
}

void vm_kv_cache_free(vm_model *m, vm_kv_cache *kv) {
    if (!kv) return;
    for (int l = 0; l < kv->n_layers; l++) {
        if (kv->k && kv->k[l]) m->be->buf_free(m->be, kv->k[l]);
        if (kv->v && kv->v[l]) m->be->buf_free(m->be, kv->v[l]);
    }
    free(kv->k);
    free(kv->v);
    free(kv);
}

// x += y, then out = rmsnorm(x) * w: in one op where the backend has it.
static void add_norm(vm_backend *be, vm_buf *x, const vm_buf *y, const vm_tensor *w, float eps, int rows, int dim,
                     vm_buf *out) {
    if (be->add_rmsnorm) {
        be->add_rmsnorm(be, x, y, w, eps, rows, dim, out);
        return;
    }
    be->add(be, x, y, (size_t)rows * dim);
    be->rmsnorm(be, x, w, eps, rows, dim, out);
}

// Grows *b to at least `bytes`.
static int ensure_buf(vm_backend *be, vm_buf **b, size_t *cap, size_t bytes, vm_err *e) {
    if (*b && *cap >= bytes) return 0;
    if (*b) be->buf_free(be, *b);
    *b = be->buf_alloc(be, bytes, e);
    *cap = *b ? bytes : 0;
    return *b ? 0 : -1;
}

static int check_batch(const vm_model *m, const vm_kv_cache *kv, const vm_batch *b, vm_err *e) {
    if (b->n_tokens <= 0 || b->n_tokens > m->max_tokens)
        return vm_errf(e, "batch of %d tokens outside 1..%d", b->n_tokens, m->max_tokens);
    if (b->n_seqs <= 0 || b->n_seqs > b->n_tokens || b->seq_start[0] != 0 || b->seq_start[b->n_seqs] != b->n_tokens)
        return vm_errf(e, "batch: seq_start must run from 0 to n_tokens");
    for (int t = 0; t < b->n_tokens; t++) {
        if (b->tokens[t] < 0 || b->tokens[t] >= m->cfg.vocab_size)
            return vm_errf(e, "token id %d out of range (vocabulary %d)", b->tokens[t], m->cfg.vocab_size);
        if (b->slot_mapping[t] >= kv->num_blocks * kv->block_size)
            return vm_errf(e, "slot %d outside the KV cache", b->slot_mapping[t]);
    }
    for (int s = 0; s < b->n_seqs; s++) {
        if (b->seq_start[s + 1] < b->seq_start[s]) return vm_errf(e, "batch: seq_start not increasing");
        if (b->ctx_len[s] > b->max_blocks_per_seq * kv->block_size)
            return vm_errf(e, "sequence %d: context %d exceeds its block table", s, b->ctx_len[s]);
        for (int t = b->seq_start[s]; t < b->seq_start[s + 1]; t++)
            if (b->positions[t] < 0 || b->positions[t] >= b->ctx_len[s])
                return vm_errf(e, "sequence %d: position %d outside its context %d", s, b->positions[t], b->ctx_len[s]);
        int used = (b->ctx_len[s] + kv->block_size - 1) / kv->block_size;
        for (int i = 0; i < used; i++) {
            int32_t blk = b->block_table[(size_t)s * b->max_blocks_per_seq + i];
            if (blk < 0 || blk >= kv->num_blocks) return vm_errf(e, "sequence %d: block %d out of range", s, blk);
        }
    }
    for (int i = 0; i < b->n_logits; i++)
        if (b->logit_rows[i] < 0 || b->logit_rows[i] >= b->n_tokens)
            return vm_errf(e, "logit row %d out of range", b->logit_rows[i]);
    return 0;
}

int vm_model_forward(vm_model *m, vm_kv_cache *kv, const vm_batch *b, float *logits, vm_err *e) {
    return vm_model_forward_embeds(m, kv, b, NULL, NULL, 0, NULL, logits, e);
}

int vm_model_forward_embeds(vm_model *m, vm_kv_cache *kv, const vm_batch *b, const float *embeds,
                            const int32_t *embed_rows, int n_embeds, const int32_t *mrope_pos,
                            float *logits, vm_err *e) {
    if (check_batch(m, kv, b, e) != 0) return -1;
    if (mrope_pos && !m->mrope_freq) return vm_errf(e, "M-RoPE positions given to a model without mrope_section");
    for (int i = 0; i < n_embeds; i++)
        if (embed_rows[i] < 0 || embed_rows[i] >= b->n_tokens) return vm_errf(e, "embedding row %d out of range", embed_rows[i]);
    vm_backend *be = m->be;
    const vm_model_config *c = &m->cfg;
    const int n = b->n_tokens, H = c->hidden_size, hd = c->head_dim;
    const int qd = c->n_heads * hd, kvd = c->n_kv_heads * hd;

    // metadata in
    be->buf_write(be, m->tokens, 0, b->tokens, (size_t)n * 4);
    be->buf_write(be, m->positions, 0, b->positions, (size_t)n * 4);
    be->buf_write(be, m->seq_start, 0, b->seq_start, (size_t)(b->n_seqs + 1) * 4);
    be->buf_write(be, m->ctx_len, 0, b->ctx_len, (size_t)b->n_seqs * 4);
    if (b->decode_from) be->buf_write(be, m->decode_from, 0, b->decode_from, (size_t)b->n_seqs * 4);
    be->buf_write(be, m->slots, 0, b->slot_mapping, (size_t)n * 4);
    size_t bt_bytes = (size_t)b->n_seqs * b->max_blocks_per_seq * 4;
    if (ensure_buf(be, &m->block_table, &m->block_table_cap, bt_bytes ? bt_bytes : 4, e) != 0) return -1;
    be->buf_write(be, m->block_table, 0, b->block_table, bt_bytes);
    int max_ctx = 1;
    for (int s = 0; s < b->n_seqs; s++) max_ctx = VM_MAX(max_ctx, b->ctx_len[s]);
    vm_attn_meta meta = { n, b->n_seqs, kv->block_size, b->max_blocks_per_seq, max_ctx,
                          m->positions, m->seq_start, m->ctx_len, m->block_table, m->slots, kv->dtype,
                          b->decode_from ? m->decode_from : NULL };
    const float scale = 1.0f / sqrtf((float)hd);

    be->embed(be, &m->embed, m->tokens, n, m->x);                 // x (n, H)
    for (int i = 0; i < n_embeds; i++)                            // image features at their tokens
        be->buf_write(be, m->x, (size_t)embed_rows[i] * H * 4, embeds + (size_t)i * H, (size_t)H * 4);
    if (mrope_pos)
        for (int a = 0; a < 3; a++) be->buf_write(be, m->mrope_pos[a], 0, mrope_pos + (size_t)a * n, (size_t)n * 4);
    int every_row = b->n_logits == n;   // logits of rows 0..n-1 (a decode step): no gather
    for (int i = 0; every_row && i < n; i++) every_row = b->logit_rows[i] == i;
    for (int l = 0; l < c->n_layers; l++) {
        const vm_layer *L = &m->layers[l];
        if (l == 0) be->rmsnorm(be, m->x, L->attn_norm, c->rms_norm_eps, n, H, m->xn);   // (then at each layer's end)
        if (be->prefetch && n == 1) {   // hints: the layer's matmuls after the attention block, in order
            const vm_weight *o = &L->o, *gate_up[2] = { &L->gate, &L->up }, *down = &L->down, *lm = &m->lm_head;
            be->prefetch(be, &o, 1);
            be->prefetch(be, gate_up, be->matmuls ? 2 : 1);
            be->prefetch(be, &down, 1);
            if (l + 1 == c->n_layers && b->n_logits == 1) be->prefetch(be, &lm, 1);
        }
        const vm_weight *qkv[3] = { &L->q, &L->k, &L->v };
        const vm_tensor *qkv_bias[3] = { L->q_bias, L->k_bias, L->v_bias };
        if (!be->qkv_attention || mrope_pos ||                    // the attention block in one op, or op by op
            !be->qkv_attention(be, qkv, qkv_bias, L->q_norm, L->k_norm, c->rms_norm_eps, m->xn, n, m->q, m->k, m->v,
                               &m->rope, &meta, kv->k[l], kv->v[l], c->n_heads, c->n_kv_heads, hd, scale, m->attn)) {
            if (be->matmuls) {                                        // q (n, heads*hd), k and v (n, kv_heads*hd)
                vm_buf *outs[3] = { m->q, m->k, m->v };
                be->matmuls(be, 3, qkv, m->xn, n, outs, NULL);
            } else {
                be->matmul(be, &L->q, m->xn, n, m->q);
                be->matmul(be, &L->k, m->xn, n, m->k);
                be->matmul(be, &L->v, m->xn, n, m->v);
            }
            if (L->q_bias) {
                be->add_bias(be, m->q, L->q_bias, n, qd);
                be->add_bias(be, m->k, L->k_bias, n, kvd);
                be->add_bias(be, m->v, L->v_bias, n, kvd);
            }
            if (L->q_norm) {                                          // per-head RMSNorm (Qwen3)
                be->rmsnorm(be, m->q, L->q_norm, c->rms_norm_eps, n * c->n_heads, hd, m->q);
                be->rmsnorm(be, m->k, L->k_norm, c->rms_norm_eps, n * c->n_kv_heads, hd, m->k);
            }
            if (mrope_pos) {
                for (int a = 0; a < 3; a++) {
                    be->rope(be, m->q, m->mrope_pos[a], n, c->n_heads, hd, &m->mrope[a]);
                    be->rope(be, m->k, m->mrope_pos[a], n, c->n_kv_heads, hd, &m->mrope[a]);
                }
            } else {
                be->rope(be, m->q, m->positions, n, c->n_heads, hd, &m->rope);
                be->rope(be, m->k, m->positions, n, c->n_kv_heads, hd, &m->rope);
            }
            be->cache_write(be, m->k, m->v, &meta, kv->k[l], kv->v[l], c->n_kv_heads, hd);
            be->attention(be, m->q, kv->k[l], kv->v[l], &meta, c->n_heads, c->n_kv_heads, hd, scale, m->attn);
        }
        be->matmul(be, &L->o, m->attn, n, m->proj);               // (n, H)
        add_norm(be, m->x, m->proj, L->mlp_norm, c->rms_norm_eps, n, H, m->xn);
        if (be->matmuls) {                                        // gate = silu(gate) * up (n, F)
            const vm_weight *ws[2] = { &L->gate, &L->up };
            vm_buf *outs[2] = { m->gate, m->up };
            be->matmuls(be, 2, ws, m->xn, n, outs, m->gate);
        } else {
            be->matmul(be, &L->gate, m->xn, n, m->gate);
            be->matmul(be, &L->up, m->xn, n, m->up);
            be->swiglu(be, m->gate, m->up, (size_t)n * c->intermediate_size, m->gate);
        }
        be->matmul(be, &L->down, m->gate, n, m->proj);            // (n, H)
        if (l + 1 < c->n_layers)                                  // and the next layer's input norm
            add_norm(be, m->x, m->proj, m->layers[l + 1].attn_norm, c->rms_norm_eps, n, H, m->xn);
        else if (b->n_logits > 0 && every_row)                    // or the final one
            add_norm(be, m->x, m->proj, m->final_norm, c->rms_norm_eps, n, H, m->xn);
        else
            be->add(be, m->x, m->proj, (size_t)n * H);
    }
    if (b->n_logits > 0) {
        if (!every_row) {
            be->buf_write(be, m->logit_rows, 0, b->logit_rows, (size_t)b->n_logits * 4);
            be->get_rows(be, m->x, m->logit_rows, b->n_logits, H, m->xn);
            be->rmsnorm(be, m->xn, m->final_norm, c->rms_norm_eps, b->n_logits, H, m->xn);
        }
        size_t bytes = (size_t)b->n_logits * c->vocab_size * 4;
        if (ensure_buf(be, &m->logits, &m->logits_cap, bytes, e) != 0) return -1;
        be->matmul(be, &m->lm_head, m->xn, b->n_logits, m->logits); // (n_logits, vocab)
        if (b->ids_out) {   // tokens drawn on the backend: only the ids come back
            size_t pbytes = (size_t)b->n_logits * VM_SAMPLE_PARAM_WORDS * 4;
            if (ensure_buf(be, &m->ids, &m->ids_cap, (size_t)b->n_logits * 4, e) != 0 ||
                (b->sample_params && ensure_buf(be, &m->sparams, &m->sparams_cap, pbytes, e) != 0)) return -1;
            if (b->sample_params) be->buf_write(be, m->sparams, 0, b->sample_params, pbytes);
            be->sample(be, m->logits, b->n_logits, c->vocab_size, b->sample_params ? m->sparams : NULL, m->ids);
            if (be->sync(be, e) != 0) return -1;
            be->buf_read(be, m->ids, 0, b->ids_out, (size_t)b->n_logits * 4);
            return 0;
        }
        if (be->sync(be, e) != 0) return -1;
        be->buf_read(be, m->logits, 0, logits, bytes);
        return 0;
    }
    return be->sync(be, e);
}
