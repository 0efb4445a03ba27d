// common.c - error formatting, dtype tables, small file helpers.
#include "common.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

int vm_errf(vm_err *e, const char *fmt, ...) {
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static const char *const dtype_names[VM_DTYPE_COUNT] = {
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0", "MLX_AFFINE",
    "U32", "I32", "I64", "U8", "I8", "BOOL",
};

const char *vm_dtype_name(vm_dtype t) {
    return (unsigned)t < VM_DTYPE_COUNT ? dtype_names[t] : "?";
}

size_t vm_dtype_row_bytes(vm_dtype t, int64_t n) {
    if (n < 0) return 0;
    switch (t) {
    case VM_DTYPE_F32: case VM_DTYPE_U32: case VM_DTYPE_I32: return (size_t)n * 4;
    case VM_DTYPE_F16: case VM_DTYPE_BF16: return (size_t)n * 2;
    case VM_DTYPE_I64: return (size_t)n * 8;
    case VM_DTYPE_U8: case VM_DTYPE_I8: case VM_DTYPE_BOOL: return (size_t)n;
    case VM_DTYPE_Q4_0: return n % VM_QK ? 0 : (size_t)(n / VM_QK) * sizeof(vm_block_q4_0);
    case VM_DTYPE_Q4_1: return n % VM_QK ? 0 : (size_t)(n / VM_QK) * sizeof(vm_block_q4_1);
    case VM_DTYPE_Q8_0: return n % VM_QK ? 0 : (size_t)(n / VM_QK) * sizeof(vm_block_q8_0);
    default: return 0;
    }
}

char *vm_read_file(const char *path, size_t *len, size_t max_len, vm_err *e) {
    FILE *f = fopen(path, "rb");
    if (!f) { vm_errf(e, "%s: cannot open: %s", path, strerror(errno)); return NULL; }
    if (fseek(f, 0, SEEK_END) != 0) { fclose(f); vm_errf(e, "%s: cannot seek", path); return NULL; }
    long sz = ftell(f);
    if (sz < 0 || (size_t)sz > max_len) {
        fclose(f);
        vm_errf(e, "%s: file size %ld exceeds the limit of %zu bytes", path, sz, max_len);
        return NULL;
    }
    rewind(f);
    char *buf = malloc((size_t)sz + 1);
    if (!buf) { fclose(f); vm_errf(e, "%s: out of memory", path); return NULL; }
    if (fread(buf, 1, (size_t)sz, f) != (size_t)sz) {
        free(buf); fclose(f); vm_errf(e, "%s: read error", path); return NULL;
    }
    fclose(f);
    buf[sz] = 0;
    if (len) *len = (size_t)sz;
    return buf;
}

double vm_now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void *vm_alloc_large(size_t bytes) {
    if (bytes < VM_LARGE_PAGE) return aligned_alloc(64, bytes ? (bytes + 63) & ~(size_t)63 : 64);
    size_t rounded = (bytes + VM_LARGE_PAGE - 1) & ~(VM_LARGE_PAGE - 1);
    void *p = aligned_alloc(VM_LARGE_PAGE, rounded);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (p) (void)madvise(p, rounded, MADV_HUGEPAGE);   // advice only: 4 KiB pages if refused
#endif
    return p;
}

int vm_grow(void **arr, int *cap, int need, size_t elem) {
    if (need <= *cap) return 0;
    int nc = *cap ? *cap : 8;
    while (nc < need) nc *= 2;
    void *p = realloc(*arr, (size_t)nc * elem);
    if (!p) return -1;
    *arr = p;
    *cap = nc;
    return 0;
}

int vm_text_append(char **text, size_t *len, size_t *cap, const char *s, size_t n) {
    if (*len + n + 1 > *cap) {
        size_t nc = *cap ? *cap : 256;
        while (nc < *len + n + 1) nc *= 2;
        char *p = realloc(*text, nc);
        if (!p) return -1;
        *text = p;
        *cap = nc;
    }
    memcpy(*text + *len, s, n);
    *len += n;
    (*text)[*len] = 0;
    return 0;
}
