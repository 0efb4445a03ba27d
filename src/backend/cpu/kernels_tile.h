// kernels_tile.h - the drivers of matmul_tile and matmul_tile_mlx (kernels.h),
// shared by the SIMD kernel files, which include it after defining:
//   tile_rt(t, T, w, x, xs, n, out, os): dense weight row w (dtype t, n
//     elements) against tokens x, x + xs, ... (T of them, a constant) into
//     out, out + os, ...: each sum the file's dot_* of that pair;
//   mlx_tile_rt(R, T, bits, w, row0, x, xs, gsum, gstride, out, os): MLX
//     affine rows row0 .. row0 + R - 1 against T tokens (R and T constants:
//     1 x VM_MLX_TOKENS and smaller, VM_MLX_ROWS x 1), out[t * os + r] =
//     dot_mlx of that pair, the pairs' chains side by side (a one-token
//     matvec is otherwise bound by the latency of one row's chain);
//   dot_mlx, VM_TILE_TOKENS and VM_MLX_TOKENS (the tokens of a full block,
//     at least 4), VM_MLX_ROWS, and VM_MLX_TILE_2BIT (1 where mlx_tile_rt
//     takes 2 bits).
// Only the kernel files include it; each gets its own static copies.
#ifndef VM_KERNELS_TILE_H
#define VM_KERNELS_TILE_H

// The token blocks of a tile kernel (matmul_tile, matmul_tile_mlx): tokens
// [0, n) as blocks of `big` (at least 4), then at most one block each of 4, 2
// and 1; BLOCK(k, T) runs tokens k .. k + T - 1 with T a constant, so that
// every block size gets its own register-allocated copy.
#define VM_TOKEN_BLOCKS(n, big, BLOCK)                                \
    do {                                                              \
        int k_ = 0;                                                   \
        for (; k_ + (big) <= (n); k_ += (big)) BLOCK(k_, big);       \
        if (k_ + 4 <= (n)) { BLOCK(k_, 4); k_ += 4; }                 \
        if (k_ + 2 <= (n)) { BLOCK(k_, 2); k_ += 2; }                 \
        if (k_ < (n)) BLOCK(k_, 1);                                   \
    } while (0)

// One dtype's tile loop: one row at a time (its chunks in registers),
// VM_TILE_TOKENS tokens at a time against it.
static inline __attribute__((always_inline)) void matmul_tile_t(vm_dtype t, const uint8_t *w, size_t ws, int rows,
                                                                const float *x, size_t xs, int tokens, int n,
                                                                float *out, size_t os) {
    for (int r = 0; r < rows; r++) {
        const uint8_t *wr = w + (size_t)r * ws;
#define DENSE_BLOCK(k, T) tile_rt(t, T, wr, x + (size_t)(k) * xs, xs, n, out + (size_t)(k) * os + r, os)
        VM_TOKEN_BLOCKS(tokens, VM_TILE_TOKENS, DENSE_BLOCK);
#undef DENSE_BLOCK
    }
}

static void matmul_tile(vm_dtype t, const void *w, size_t wstride, int rows, const float *x, size_t xstride,
                        int tokens, int n, float *out, size_t ostride) {
    if (t == VM_DTYPE_F32) matmul_tile_t(VM_DTYPE_F32, w, wstride, rows, x, xstride, tokens, n, out, ostride);
    else if (t == VM_DTYPE_F16) matmul_tile_t(VM_DTYPE_F16, w, wstride, rows, x, xstride, tokens, n, out, ostride);
    else if (t == VM_DTYPE_BF16) matmul_tile_t(VM_DTYPE_BF16, w, wstride, rows, x, xstride, tokens, n, out, ostride);
}

static inline __attribute__((always_inline)) void mlx_tile_bits(const int bits, const vm_weight *w, int64_t r0,
                                                                int rows, const float *x, size_t xs,
                                                                const float *gsum, size_t gstride, int tokens,
                                                                float *out, size_t os) {
    if (tokens == 1) {   // rows side by side
        int r = 0;
        for (; r + VM_MLX_ROWS <= rows; r += VM_MLX_ROWS)
            mlx_tile_rt(VM_MLX_ROWS, 1, bits, w, r0 + r, x, xs, gsum, gstride, out + r, os);
        for (; r < rows; r++) mlx_tile_rt(1, 1, bits, w, r0 + r, x, xs, gsum, gstride, out + r, os);
        return;
    }
    for (int r = 0; r < rows; r++) {
#define MLX_BLOCK(k, T) mlx_tile_rt(1, T, bits, w, r0 + r, x + (size_t)(k) * xs, xs, gsum + (size_t)(k) * gstride, \
                                   gstride, out + (size_t)(k) * os + r, os)
        VM_TOKEN_BLOCKS(tokens, VM_MLX_TOKENS, MLX_BLOCK);
#undef MLX_BLOCK
    }
}

static void matmul_tile_mlx(const vm_weight *w, int64_t r0, int rows, const float *x, size_t xstride,
                            const float *gsum, size_t gstride, int tokens, float *out, size_t ostride) {
    const int bits = w->bits, gs = w->group_size;
    if (gs > 0 && gs % 32 == 0 && bits == 4) {
        mlx_tile_bits(4, w, r0, rows, x, xstride, gsum, gstride, tokens, out, ostride);
    } else if (gs > 0 && gs % 32 == 0 && bits == 8) {
        mlx_tile_bits(8, w, r0, rows, x, xstride, gsum, gstride, tokens, out, ostride);
    } else if (VM_MLX_TILE_2BIT && gs > 0 && gs % 32 == 0 && bits == 2) {
        mlx_tile_bits(2, w, r0, rows, x, xstride, gsum, gstride, tokens, out, ostride);
    } else {   // where dot_mlx falls back to the generic kernel: pair by pair
        for (int k = 0; k < tokens; k++)
            for (int r = 0; r < rows; r++) {
                vm_xrow xr = { x + (size_t)k * xstride, gsum + (size_t)k * gstride };
                out[(size_t)k * ostride + r] = dot_mlx(w, r0 + r, &xr);
            }
    }
}

#endif
