// config.c - fills vm_model_config from config.json (HF and MLX checkpoints)
// or from GGUF metadata, and refuses architectures we do not run.
#include "model.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

// Supported families by config.json "architectures" and by model_type /
// GGUF general.architecture.
static const struct { const char *hf, *type; vm_arch arch; } arch_table[] = {
    {"LlamaForCausalLM", "llama", VM_ARCH_LLAMA}, {"Qwen2ForCausalLM", "qwen2", VM_ARCH_QWEN2},
    {"Qwen3ForCausalLM", "qwen3", VM_ARCH_QWEN3}, {"MistralForCausalLM", "mistral", VM_ARCH_MISTRAL},
    // vision-language: the text decoder is Qwen2 with M-RoPE (src/vision runs the tower)
    {"Qwen2VLForConditionalGeneration", "qwen2_vl", VM_ARCH_QWEN2},
    {"Qwen2_5_VLForConditionalGeneration", "qwen2_5_vl", VM_ARCH_QWEN2},
};

static int arch_lookup(const char *name, int by_hf_name, vm_arch *out) {
    for (size_t i = 0; i < VM_ARRAY_LEN(arch_table); i++)
        if (strcmp(name, by_hf_name ? arch_table[i].hf : arch_table[i].type) == 0) {
            *out = arch_table[i].arch;
            return 0;
        }
    return -1;
}

static void set_defaults(vm_model_config *c) {
    memset(c, 0, sizeof *c);
    c->rms_norm_eps = 1e-6f;
    c->rope_theta = 10000.0f;
    c->max_position_embeddings = 2048;
    c->bos_token_id = -1;
}

// Integer field: required fields must exist and be positive integers.
static int json_int(json_t *root, const char *file, const char *key, int required, int dflt, int *out,
                    vm_err *e) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (required) return vm_errf(e, "%s: missing field \"%s\"", file, key);
        *out = dflt;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > (1 << 30))
        return vm_errf(e, "%s: field \"%s\" must be a non-negative integer", file, key);
    *out = (int)json_integer_value(v);
    return 0;
}

static int json_float(json_t *root, const char *file, const char *key, float dflt, float *out, vm_err *e) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) { *out = dflt; return 0; }
    if (!json_is_number(v)) return vm_errf(e, "%s: field \"%s\" must be a number", file, key);
    *out = (float)json_number_value(v);
    return 0;
}

static int check_shapes(vm_model_config *c, const char *file, vm_err *e) {
    if (c->hidden_size <= 0 || c->n_layers <= 0 || c->n_heads <= 0 || c->vocab_size <= 0 ||
        c->intermediate_size <= 0)
        return vm_errf(e, "%s: hidden_size, num_hidden_layers, num_attention_heads, vocab_size and "
                       "intermediate_size must be positive", file);
    if (c->n_kv_heads <= 0 || c->n_heads % c->n_kv_heads)
        return vm_errf(e, "%s: num_key_value_heads (%d) must divide num_attention_heads (%d)", file,
                       c->n_kv_heads, c->n_heads);
    if (c->head_dim <= 0 || c->head_dim % 2 || c->head_dim > 1024)
        return vm_errf(e, "%s: head_dim %d is not a positive even number up to 1024", file, c->head_dim);
    if (c->max_position_embeddings <= 0) c->max_position_embeddings = 2048;
    return 0;
}

static int load_hf(vm_model_config *c, const char *dir, vm_err *e) {
    char file[4096];
    struct stat st;
    if (stat(dir, &st) == 0 && S_ISDIR(st.st_mode)) snprintf(file, sizeof file, "%s/config.json", dir);
    else {
        // a lone .safetensors file: config.json beside it
        const char *slash = strrchr(dir, '/');
        int len = slash ? (int)(slash - dir) : 1;
        snprintf(file, sizeof file, "%.*s/config.json", len, slash ? dir : ".");
    }
    json_error_t je;
    json_t *root = json_load_file(file, JSON_REJECT_DUPLICATES, &je);
    if (!root) return vm_errf(e, "%s: %s (line %d)", file, je.text, je.line);
    int rc = -1;
    if (!json_is_object(root)) { vm_errf(e, "%s: not a JSON object", file); goto done; }

    json_t *archs = json_object_get(root, "architectures");
    json_t *mt = json_object_get(root, "model_type");
    const char *arch = json_is_array(archs) && json_is_string(json_array_get(archs, 0))
                           ? json_string_value(json_array_get(archs, 0)) : NULL;
    if (arch) {
        snprintf(c->arch_name, sizeof c->arch_name, "%s", arch);
        if (arch_lookup(arch, 1, &c->arch) != 0) {
            vm_errf(e, "%s: architecture \"%s\" is not supported; supported: %s", file, arch, VM_SUPPORTED_ARCHS);
            goto done;
        }
    } else if (json_is_string(mt)) {
        snprintf(c->arch_name, sizeof c->arch_name, "%s", json_string_value(mt));
        if (arch_lookup(json_string_value(mt), 0, &c->arch) != 0) {
            vm_errf(e, "%s: model_type \"%s\" is not supported; supported: %s", file, c->arch_name, VM_SUPPORTED_ARCHS);
            goto done;
        }
    } else { vm_errf(e, "%s: missing field \"architectures\"", file); goto done; }
    // transformers 5 nests a VLM's text decoder in "text_config"; older VLM configs are flat.
    json_t *const top = root;
    if (json_is_object(json_object_get(top, "text_config"))) root = json_object_get(top, "text_config");

    if (json_int(root, file, "vocab_size", 1, 0, &c->vocab_size, e) ||
        json_int(root, file, "hidden_size", 1, 0, &c->hidden_size, e) ||
        json_int(root, file, "intermediate_size", 1, 0, &c->intermediate_size, e) ||
        json_int(root, file, "num_hidden_layers", 1, 0, &c->n_layers, e) ||
        json_int(root, file, "num_attention_heads", 1, 0, &c->n_heads, e) ||
        json_int(root, file, "num_key_value_heads", 0, c->n_heads, &c->n_kv_heads, e) ||
        json_int(root, file, "max_position_embeddings", 0, 2048, &c->max_position_embeddings, e) ||
        json_float(root, file, "rms_norm_eps", 1e-6f, &c->rms_norm_eps, e) ||
        json_float(root, file, "rope_theta", 10000.0f, &c->rope_theta, e))
        goto done;
    if (c->n_heads == 0) { vm_errf(e, "%s: num_attention_heads must be positive", file); goto done; }
    if (json_int(root, file, "head_dim", 0, c->hidden_size / c->n_heads, &c->head_dim, e)) goto done;

    json_t *tie = json_object_get(root, "tie_word_embeddings");
    if (!tie) tie = json_object_get(top, "tie_word_embeddings");
    c->tie_word_embeddings = tie ? json_is_true(tie) : 0;
    json_t *bias = json_object_get(root, "attention_bias");
    c->attention_bias = c->arch == VM_ARCH_QWEN2 ? 1 : (bias && json_is_true(bias));
    c->qk_norm = c->arch == VM_ARCH_QWEN3;

    // transformers 4 writes rope_theta + rope_scaling; transformers 5 writes
    // rope_parameters {rope_type, rope_theta, factor, ...}.
    json_t *rs = json_object_get(root, "rope_scaling");
    json_t *rp = json_object_get(root, "rope_parameters");
    if (json_is_object(rp)) {
        if (json_float(rp, file, "rope_theta", c->rope_theta, &c->rope_theta, e)) goto done;
        if (!json_is_object(rs)) rs = rp;
    }
    if (json_is_object(rs)) {
        json_t *type = json_object_get(rs, "rope_type");
        if (!type) type = json_object_get(rs, "type");
        const char *t = json_is_string(type) ? json_string_value(type) : "";
        if (strcmp(t, "llama3") == 0) {
            c->rope_llama3 = 1;
            if (json_float(rs, file, "factor", 8.0f, &c->rope_factor, e) ||
                json_float(rs, file, "low_freq_factor", 1.0f, &c->rope_low_freq_factor, e) ||
                json_float(rs, file, "high_freq_factor", 4.0f, &c->rope_high_freq_factor, e) ||
                json_int(rs, file, "original_max_position_embeddings", 0, 8192, &c->rope_original_max_pos, e))
                goto done;
        } else if (strcmp(t, "mrope") != 0 && strcmp(t, "default") != 0 && t[0]) {
            vm_errf(e, "%s: rope_scaling type \"%s\" is not supported (llama3 or none)", file, t);
            goto done;
        }
    }
    json_t *msec = json_is_object(rs) ? json_object_get(rs, "mrope_section") : NULL;
    if (json_is_array(msec) && json_array_size(msec) == 3) {      // Qwen2-VL M-RoPE: t/h/w frequency bands
        for (int i = 0; i < 3; i++) c->mrope_section[i] = (int)json_integer_value(json_array_get(msec, i));
        if (c->mrope_section[0] + c->mrope_section[1] + c->mrope_section[2] != c->head_dim / 2) {
            vm_errf(e, "%s: mrope_section must sum to head_dim/2 = %d", file, c->head_dim / 2);
            goto done;
        }
    }
    root = top;
    json_t *bos = json_object_get(root, "bos_token_id");
    if (json_is_integer(bos)) c->bos_token_id = (int)json_integer_value(bos);
    json_t *eos = json_object_get(root, "eos_token_id");
    if (json_is_integer(eos)) c->eos_token_ids[c->n_eos_token_ids++] = (int)json_integer_value(eos);
    else if (json_is_array(eos)) {
        size_t i; json_t *v;
        json_array_foreach(eos, i, v)
            if (json_is_integer(v) && c->n_eos_token_ids < 8) c->eos_token_ids[c->n_eos_token_ids++] = (int)json_integer_value(v);
    }
    rc = check_shapes(c, file, e);
done:
    json_decref(root);
    return rc;
}

static int gguf_int(const vm_gguf *g, const char *file, const char *arch, const char *key, int required,
                    int dflt, int *out, vm_err *e) {
    char full[256];
    snprintf(full, sizeof full, "%s.%s", arch, key);
    int64_t v;
    if (vm_gguf_get_int(g, full, &v) != 0) {
        if (required) return vm_errf(e, "%s: missing GGUF metadata \"%s\"", file, full);
        *out = dflt;
        return 0;
    }
    if (v < 0 || v > (1 << 30)) return vm_errf(e, "%s: GGUF metadata \"%s\" out of range", file, full);
    *out = (int)v;
    return 0;
}

static int load_gguf(vm_model_config *c, const vm_weight_store *ws, vm_err *e) {
    const vm_gguf *g = vm_weights_gguf(ws);
    const char *file = vm_weights_path(ws);
    vm_gguf_str s;
    if (vm_gguf_get_str(g, "general.architecture", &s) != 0)
        return vm_errf(e, "%s: missing GGUF metadata \"general.architecture\"", file);
    char arch[64];
    snprintf(arch, sizeof arch, "%.*s", (int)VM_MIN(s.len, 63), s.s);
    snprintf(c->arch_name, sizeof c->arch_name, "%s", arch);
    if (arch_lookup(arch, 0, &c->arch) != 0)
        return vm_errf(e, "%s: architecture \"%s\" is not supported; supported: %s", file, arch, VM_SUPPORTED_ARCHS);
    if (gguf_int(g, file, arch, "embedding_length", 1, 0, &c->hidden_size, e) ||
        gguf_int(g, file, arch, "feed_forward_length", 1, 0, &c->intermediate_size, e) ||
        gguf_int(g, file, arch, "block_count", 1, 0, &c->n_layers, e) ||
        gguf_int(g, file, arch, "attention.head_count", 1, 0, &c->n_heads, e) ||
        gguf_int(g, file, arch, "attention.head_count_kv", 0, c->n_heads, &c->n_kv_heads, e) ||
        gguf_int(g, file, arch, "context_length", 0, 2048, &c->max_position_embeddings, e))
        return -1;
    if (c->n_heads == 0) return vm_errf(e, "%s: %s.attention.head_count must be positive", file, arch);
    if (gguf_int(g, file, arch, "attention.key_length", 0, c->hidden_size / c->n_heads, &c->head_dim, e)) return -1;
    char key[256];
    double d;
    snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", arch);
    c->rms_norm_eps = vm_gguf_get_float(g, key, &d) == 0 ? (float)d : 1e-5f;
    snprintf(key, sizeof key, "%s.rope.freq_base", arch);
    c->rope_theta = vm_gguf_get_float(g, key, &d) == 0 ? (float)d : 10000.0f;
    // vocab size: metadata key, else the token list
    snprintf(key, sizeof key, "%s.vocab_size", arch);
    int64_t v;
    vm_gguf_array toks;
    if (vm_gguf_get_int(g, key, &v) == 0) c->vocab_size = (int)v;
    else if (vm_gguf_get_array(g, "tokenizer.ggml.tokens", &toks) == 0) c->vocab_size = (int)toks.n;
    else {
        const vm_tensor *emb = vm_weights_find(ws, "model.embed_tokens.weight");
        if (!emb) return vm_errf(e, "%s: cannot tell the vocabulary size", file);
        c->vocab_size = (int)emb->shape[0];
    }
    c->tie_word_embeddings = vm_weights_find(ws, "lm_head.weight") == NULL;
    c->attention_bias = vm_weights_find(ws, "model.layers.0.self_attn.q_proj.bias") != NULL;
    c->qk_norm = c->arch == VM_ARCH_QWEN3;
    // llama.cpp's converter permutes Q/K rows of llama-family models for its
    // pairwise rotary layout; rotating pairs (2i, 2i+1) undoes it exactly.
    c->rope_interleaved = c->arch == VM_ARCH_LLAMA || c->arch == VM_ARCH_MISTRAL;
    if (vm_gguf_get_int(g, "tokenizer.ggml.bos_token_id", &v) == 0) c->bos_token_id = (int)v;
    if (vm_gguf_get_int(g, "tokenizer.ggml.eos_token_id", &v) == 0) c->eos_token_ids[c->n_eos_token_ids++] = (int)v;
    return check_shapes(c, file, e);
}

int vm_model_config_load(vm_model_config *c, const char *path, const vm_weight_store *ws, vm_err *e) {
    set_defaults(c);
    if (vm_weights_format(ws) == VM_FORMAT_GGUF) return load_gguf(c, ws, e);
    return load_hf(c, path, e);
}
