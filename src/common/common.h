// common.h - error reporting, dtypes and half-precision conversion shared by every module.
#ifndef VM_COMMON_H
#define VM_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

// Every fallible internal function takes a vm_err* and returns 0 on success,
// -1 on failure (or NULL for constructors) after filling err->msg.
typedef struct vm_err {
    char msg[1024];
} vm_err;

// Formats into e->msg (if e is non-NULL) and returns -1.
int vm_errf(vm_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// Element / block types of stored tensors.
typedef enum vm_dtype {
    VM_DTYPE_F32 = 0,
    VM_DTYPE_F16,
    VM_DTYPE_BF16,
    VM_DTYPE_Q4_0,       // GGUF: blocks of 32: f16 d, 16 bytes of nibbles; w = d*(q-8)
    VM_DTYPE_Q4_1,       // GGUF: blocks of 32: f16 d, f16 m, 16 bytes; w = d*q + m
    VM_DTYPE_Q8_0,       // GGUF: blocks of 32: f16 d, 32 int8; w = d*q
    VM_DTYPE_MLX_AFFINE, // MLX: U32 words LSB-first, bits/group_size in vm_weight
    VM_DTYPE_U32,
    VM_DTYPE_I32,
    VM_DTYPE_I64,
    VM_DTYPE_U8,
    VM_DTYPE_I8,
    VM_DTYPE_BOOL,
    VM_DTYPE_COUNT
} vm_dtype;

const char *vm_dtype_name(vm_dtype t);

// GGUF block geometry (32 weights per block for all three supported types).
#define VM_QK 32
typedef struct { uint16_t d; uint8_t qs[16]; } vm_block_q4_0;          // 18 bytes
typedef struct { uint16_t d, m; uint8_t qs[16]; } vm_block_q4_1;       // 20 bytes
typedef struct { uint16_t d; int8_t qs[32]; } vm_block_q8_0;           // 34 bytes

// Bytes a row of `n` elements takes in dtype t (n must be a multiple of 32 for
// the GGUF block types); 0 for MLX_AFFINE (depends on bits) or unknown.
size_t vm_dtype_row_bytes(vm_dtype t, int64_t n);

static inline float vm_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else { // subnormal: renormalize
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            man &= 0x3ff;
            bits = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) bits = sign | 0x7f800000u | (man << 13);
    else bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    float f; memcpy(&f, &bits, 4); return f;
}

static inline uint16_t vm_f32_to_f16(float f) { // round to nearest even
    uint32_t x; memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    int32_t exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;
    uint32_t man = x & 0x7fffff;
    if (((x >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    if (exp >= 31) return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        man |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = man >> shift, rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = sign | ((uint32_t)exp << 10) | (man >> 13);
    uint32_t rem = man & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) half++;
    return (uint16_t)half;
}

static inline float vm_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16; float f; memcpy(&f, &bits, 4); return f;
}

static inline uint16_t vm_f32_to_bf16(float f) {
    uint32_t x; memcpy(&x, &f, 4);
    if ((x & 0x7fffffff) > 0x7f800000) return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

// Safe size arithmetic: returns 0 on overflow (sets *out), nonzero on success.
static inline int vm_mul_ok(uint64_t a, uint64_t b, uint64_t *out) {
    if (a && b > UINT64_MAX / a) return 0;
    *out = a * b; return 1;
}

// Reads a whole (small) file into a NUL-terminated heap buffer; NULL + error on failure.
char *vm_read_file(const char *path, size_t *len, size_t max_len, vm_err *e);

double vm_now_seconds(void);
// Memory for large, long-lived buffers that are streamed (weights, the KV
// cache): 64-byte aligned; from VM_LARGE_PAGE bytes up, aligned to and a
// multiple of VM_LARGE_PAGE and (Linux) marked for transparent huge pages, so
// a pass over it takes few TLB entries. Released with free(). NULL: no memory.
#define VM_LARGE_PAGE ((size_t)2 << 20)
void *vm_alloc_large(size_t bytes);

// One pause of a spin-wait loop (x86 pause, arm64 yield).
#if defined(__x86_64__)
#include <immintrin.h>
static inline void vm_cpu_relax(void) { _mm_pause(); }
#elif defined(__aarch64__)
static inline void vm_cpu_relax(void) { __asm__ __volatile__("yield"); }
#else
static inline void vm_cpu_relax(void) {}
#endif

// Growable arrays and strings: grow *arr (capacity *cap elements of elem bytes)
// to hold at least `need` (doubling); 0, or -1 when out of memory.
int vm_grow(void **arr, int *cap, int need, size_t elem);
// Index of the first maximum of x[0, n) (NaNs never win); 0 when n <= 0.
int vm_argmax(const float *x, int n);
// Draws from softmax(x / temperature) (temperature > 0) by the inverse CDF at
// u01 in [0, 1); x is overwritten (with unnormalized probabilities). Every
// machine computes the same roundings (common/draw.c), so the token depends
// only on the row and u01.
int32_t vm_draw_u(float *x, int n, float temperature, double u01);
// Appends n bytes to the NUL-terminated *text of length *len, capacity *cap.
int vm_text_append(char **text, size_t *len, size_t *cap, const char *s, size_t n);

#define VM_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define VM_MIN(a, b) ((a) < (b) ? (a) : (b))
#define VM_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
