// weights.h - one view over every weight format we load (safetensors, sharded
// safetensors, MLX affine-quantized safetensors, GGUF v3).
//
// Files are mmap'ed read-only; tensors point into the mapping (no copies, no
// conversion at load). Names are canonical Hugging Face names
// ("model.layers.0.self_attn.q_proj.weight"): the GGUF reader maps llama.cpp
// names onto them. Shapes are in HF order: a linear weight is [rows=out, cols=in].
#ifndef VM_WEIGHTS_H
#define VM_WEIGHTS_H

#include "../common/common.h"

#define VM_MAX_DIMS 5

typedef struct vm_tensor {
    const char *name;          // canonical HF name
    const char *file;          // path of the file it lives in (for messages)
    vm_dtype dtype;            // stored dtype (U32 for MLX packed weights)
    int ndim;
    int64_t shape[VM_MAX_DIMS]; // HF order, outermost first
    const void *data;          // inside the mapping; may be unaligned for MLX files
    uint64_t nbytes;
} vm_tensor;

// A matrix as a kernel reads it: W (rows, cols) @ x (cols,) -> (rows,)
typedef struct vm_weight {
    const char *name;          // canonical HF name of the .weight tensor
    vm_dtype dtype;            // F32/F16/BF16/Q4_0/Q4_1/Q8_0/MLX_AFFINE
    int64_t rows, cols;        // logical (dequantized) shape
    const void *data;          // row-major; a row is vm_weight_row_bytes() bytes
    // MLX affine quantization (dtype == VM_DTYPE_MLX_AFFINE):
    // w[r][c] = scales[r][c/group] * q[r][c] + biases[r][c/group]
    int bits, group_size;
    vm_dtype scale_dtype;      // F16, BF16 or F32
    const void *scales, *biases; // (rows, cols/group_size)
    void *device;              // backend-private: the GPU's copy, the CPU's repacked copy (or NULL)
    int gather_only;           // set before weight_prepare: only rows are looked up (an
                               // untied embedding table), never a matmul operand
} vm_weight;

size_t vm_weight_row_bytes(const vm_weight *w);

typedef enum { VM_FORMAT_SAFETENSORS, VM_FORMAT_MLX, VM_FORMAT_GGUF } vm_weight_format;

typedef struct vm_weight_store vm_weight_store;
typedef struct vm_gguf vm_gguf;

// path: a directory with model.safetensors / model.safetensors.index.json
// (+ config.json), a single .safetensors file, or a .gguf file.
// For directories, config.json's "quantization" (or "quantization_config")
// object gives MLX group_size/bits and per-layer overrides.
vm_weight_store *vm_weights_open(const char *path, vm_err *e);
void vm_weights_free(vm_weight_store *ws);

vm_weight_format vm_weights_format(const vm_weight_store *ws);
const char *vm_weights_path(const vm_weight_store *ws);
size_t vm_weights_count(const vm_weight_store *ws);
const vm_tensor *vm_weights_at(const vm_weight_store *ws, size_t i);
const vm_tensor *vm_weights_find(const vm_weight_store *ws, const char *name);
uint64_t vm_weights_total_bytes(const vm_weight_store *ws);

// Linear layer `prefix` (e.g. "model.layers.3.mlp.down_proj"): finds
// prefix.weight (and, for MLX, prefix.scales/prefix.biases), checks the
// logical shape equals (rows, cols) and fills *w. Errors name file and tensor.
int vm_weights_linear(const vm_weight_store *ws, const char *prefix,
                      int64_t rows, int64_t cols, vm_weight *w, vm_err *e);

// A 1-D tensor `name` of n elements in F32/F16/BF16 (norm weights, biases).
// Returns NULL with an error if missing (when required) or wrong shape/dtype.
const vm_tensor *vm_weights_vector(const vm_weight_store *ws, const char *name,
                                   int64_t n, int required, vm_err *e);

// GGUF metadata (NULL when the store is not GGUF).
const vm_gguf *vm_weights_gguf(const vm_weight_store *ws);

typedef enum {
    VM_GGUF_U8 = 0, VM_GGUF_I8, VM_GGUF_U16, VM_GGUF_I16, VM_GGUF_U32, VM_GGUF_I32,
    VM_GGUF_F32, VM_GGUF_BOOL, VM_GGUF_STRING, VM_GGUF_ARRAY, VM_GGUF_U64,
    VM_GGUF_I64, VM_GGUF_F64
} vm_gguf_type;

typedef struct vm_gguf_array {
    vm_gguf_type type;  // element type
    uint64_t n;
    const void *data;   // packed elements for numeric types (inside the mapping)
    const struct vm_gguf_str *strs; // for STRING arrays: n entries
} vm_gguf_array;

typedef struct vm_gguf_str { const char *s; uint64_t len; } vm_gguf_str; // not NUL-terminated

// Each returns 0 if found with a compatible type, -1 otherwise.
int vm_gguf_get_int(const vm_gguf *g, const char *key, int64_t *out);     // any int/bool type
int vm_gguf_get_float(const vm_gguf *g, const char *key, double *out);    // any numeric type
int vm_gguf_get_str(const vm_gguf *g, const char *key, vm_gguf_str *out);
int vm_gguf_get_array(const vm_gguf *g, const char *key, vm_gguf_array *out);

#endif
