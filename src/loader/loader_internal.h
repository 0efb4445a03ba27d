// loader_internal.h - what the format readers (safetensors.c, gguf.c) share
// with the store (weights.c). Not part of the public interface.
#ifndef VM_LOADER_INTERNAL_H
#define VM_LOADER_INTERNAL_H

#include "weights.h"

// One mmap'ed file. `base` is a read-only MAP_PRIVATE mapping of `size` bytes.
typedef struct vm_mapped_file {
    char *path;
    const uint8_t *base;
    size_t size;
} vm_mapped_file;

// An MLX per-layer quantization override from config.json:
// "model.layers.0.mlp.down_proj": {"group_size": 64, "bits": 8} or false.
typedef struct vm_quant_override {
    char *module;      // module path, e.g. "model.layers.0.mlp.down_proj"
    int quantized;     // 0 when the config says false
    int bits, group_size;
} vm_quant_override;

struct vm_weight_store {
    vm_weight_format format;
    char *path;

    vm_mapped_file *files;      // every mapped file (shards); owned
    size_t n_files, cap_files;

    vm_tensor *tensors;         // owned; tensor names are heap strings owned here
    size_t n_tensors, cap_tensors;
    size_t *sorted;             // indices into tensors, sorted by name (for find)

    // MLX affine quantization (from config.json); has_quant is 0 otherwise.
    int has_quant;
    int quant_bits, quant_group_size;
    vm_quant_override *overrides;
    size_t n_overrides;

    vm_gguf *gguf;              // GGUF metadata; NULL for safetensors
};

// Maps `path` read-only. Returns the index of the new file in ws->files, or -1.
int vm_store_map_file(vm_weight_store *ws, const char *path, vm_err *e);

// Appends a tensor (name is copied). Returns a pointer to it or NULL (out of memory).
vm_tensor *vm_store_add_tensor(vm_weight_store *ws, const char *name, size_t name_len,
                               size_t file_index, vm_err *e);

// Decoder-name aliasing applied to every tensor name and MLX override key
// (language_model.model.* -> model.*, ...): the length of the prefix to drop,
// *repl its replacement; 0 and "" when the name stays.
size_t vm_name_alias(const char *name, size_t name_len, const char **repl);

// Readers: fill ws (tensors, files, metadata). Return 0 or -1 with a message.
int vm_safetensors_load_file(vm_weight_store *ws, const char *path, vm_err *e);
int vm_safetensors_load_index(vm_weight_store *ws, const char *index_path, vm_err *e);
int vm_mlx_load_config(vm_weight_store *ws, const char *config_path, vm_err *e);
int vm_gguf_load(vm_weight_store *ws, const char *path, vm_err *e);
void vm_gguf_free(vm_gguf *g);

// Checks that no two tensors of one file overlap (used by both readers).
// `what` names the field in messages ("data_offsets" / "offset").
int vm_check_overlaps(const vm_weight_store *ws, size_t first, const char *what, vm_err *e);

#endif
