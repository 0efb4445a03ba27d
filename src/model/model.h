// model.h - model description (from config.json or GGUF metadata) and the
// decoder forward pass over one flat, paged batch.
#ifndef VM_MODEL_H
#define VM_MODEL_H

#include "../backend/backend.h"

typedef enum { VM_ARCH_LLAMA, VM_ARCH_QWEN2, VM_ARCH_QWEN3, VM_ARCH_MISTRAL } vm_arch;

#define VM_SUPPORTED_ARCHS \
    "LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, MistralForCausalLM " \
    "(GGUF: llama, qwen2, qwen3, mistral)"

typedef struct vm_model_config {
    vm_arch arch;
    char arch_name[64];        // as written in the file
    int vocab_size, hidden_size, intermediate_size;
    int n_layers, n_heads, n_kv_heads, head_dim;
    int max_position_embeddings;
    float rms_norm_eps, rope_theta;
    int tie_word_embeddings;
    int attention_bias;        // q/k/v biases (Qwen2)
    int qk_norm;               // RMSNorm on q and k per head (Qwen3)
    int rope_interleaved;      // GGUF llama: Q/K rows permuted -> pairwise rotary
    // rope_scaling "llama3"
    int rope_llama3;
    float rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_original_max_pos;
    int bos_token_id;
    int eos_token_ids[8], n_eos_token_ids;
    int mrope_section[3];      // Qwen2-VL M-RoPE: rotary pairs per t/h/w axis (all 0: plain RoPE)
} vm_model_config;

// Reads <dir>/config.json (HF / MLX) or the GGUF metadata of ws.
int vm_model_config_load(vm_model_config *c, const char *path, const vm_weight_store *ws, vm_err *e);

typedef struct vm_layer {
    vm_weight q, k, v, o, gate, up, down;
    const vm_tensor *attn_norm, *mlp_norm;
    const vm_tensor *q_bias, *k_bias, *v_bias; // Qwen2
    const vm_tensor *q_norm, *k_norm;          // Qwen3
} vm_layer;

// A model's KV cache: per layer one K and one V buffer of
// [n_kv_heads][num_blocks][block_size][head_dim] (f32 or f16). Block 0 is reserved.
typedef struct vm_kv_cache {
    int num_blocks, block_size, n_layers;
    vm_dtype dtype;            // F32 or F16 (vm_model_kv_dtype)
    vm_buf **k, **v;
} vm_kv_cache;

typedef struct vm_model vm_model;

// One step's flat batch (host memory; the model copies it to the backend).
// Tokens of one sequence are contiguous; seq_start has n_seqs+1 entries.
typedef struct vm_batch {
    int n_tokens;
    const int32_t *tokens;       // [n_tokens]
    const int32_t *positions;    // [n_tokens]
    int n_seqs;
    const int32_t *seq_start;    // [n_seqs+1]
    const int32_t *ctx_len;      // [n_seqs] KV length after this step
    int max_blocks_per_seq;
    const int32_t *block_table;  // [n_seqs * max_blocks_per_seq]
    const int32_t *slot_mapping; // [n_tokens]
    int n_logits;
    const int32_t *logit_rows;   // [n_logits] rows of the flat batch that need logits
    // [n_seqs] or NULL (all prompt): positions >= decode_from[s] are generated
    // tokens (see vm_attn_meta.decode_from)
    const int32_t *decode_from;
    // [n_logits] or NULL: when set, the forward draws one token id per logit row
    // on the backend (vm_backend.sample with sample_params: NULL = argmax, else
    // VM_SAMPLE_PARAM_WORDS words per row) and returns those instead of logits.
    int32_t *ids_out;
    const void *sample_params;
} vm_batch;

// Loads weights (mmap) and config; max_batch_tokens sizes the activation scratch.
vm_model *vm_model_create(const char *path, vm_backend *be, int max_batch_tokens, vm_err *e);
void vm_model_free(vm_model *m);
const vm_model_config *vm_model_get_config(const vm_model *m);
const vm_weight_store *vm_model_weights(const vm_model *m);
vm_backend *vm_model_backend(const vm_model *m);
int vm_model_max_batch_tokens(const vm_model *m);

// KV cache element type: F16 for GGUF models (as llama.cpp), F32 otherwise
// (as the f32 references compute); VLLM_METAL_KV_CACHE_DTYPE=f16|f32 overrides.
vm_dtype vm_model_kv_dtype(const vm_model *m);
// Bytes of KV cache one block takes across all layers (K and V).
size_t vm_model_kv_block_bytes(const vm_model *m, int block_size);
vm_kv_cache *vm_kv_cache_create(vm_model *m, int num_blocks, int block_size, vm_err *e);
void vm_kv_cache_free(vm_model *m, vm_kv_cache *kv);

// Runs the decoder over the batch, writes K/V into kv and fills
// logits [n_logits, vocab] (host memory).
int vm_model_forward(vm_model *m, vm_kv_cache *kv, const vm_batch *b, float *logits, vm_err *e);

// vm_model_forward for vision-language models (src/vision):
//   embeds:      NULL, or n_embeds rows (n_embeds, hidden) that replace the token
//                embeddings of batch rows embed_rows[i] (image features at image-pad tokens);
//   mrope_pos:   NULL (rotary at b->positions), or [3][n_tokens] t/h/w rotary positions
//                for a model with mrope_section (b->positions still give the KV
//                slots and the causal mask: a token's index in its sequence).
int vm_model_forward_embeds(vm_model *m, vm_kv_cache *kv, const vm_batch *b, const float *embeds,
                            const int32_t *embed_rows, int n_embeds, const int32_t *mrope_pos,
                            float *logits, vm_err *e);

#endif
