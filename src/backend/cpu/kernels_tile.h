// kernels_tile.h - the drivers of matmul_tile and matmul_tile_mlx (kernels.h),
// shared by the SIMD kernel files, which include it after defining:
//   tile_rt(t, T, w, x, xs, n, out, os): dense weight row w (dtype t, n
//     elements) against tokens x, x + xs, ... (T of them, a constant) into
//     out, out + os, ...: each sum the file's dot_* of that pair;
//   mlx_row_tokens(T, bits, rowp, w, row, x, xs, gsum, gstride, out, os):
//     the same for MLX affine row `row` (codes at rowp) and dot_mlx;
//   dot_mlx, VM_TILE_TOKENS and VM_MLX_TOKENS (the tokens of a full block,
//     at least 4), and VM_MLX_TILE_2BIT (1 where mlx_row_tokens takes 2 bits);
//   VM_MLX_ROWS (0: none) and, where not 0, mlx_rows_token(R, bits, w, row0,
//     x, gsum, out): MLX affine rows row0 .. row0 + R - 1 (R a constant, at
//     most VM_MLX_ROWS) against one token, out[r] = dot_mlx of row row0 + r,
//     the rows' chains interleaved (a one-token matvec is otherwise bound by
//     the latency of one row's chain).
// Only the kernel files include it; each gets its own static copies.
#ifndef VM_KERNELS_TILE_H
#define VM_KERNELS_TILE_H

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
    const size_t rb = (size_t)(w->cols * bits / 8);
#if VM_MLX_ROWS
    if (tokens == 1) {   // rows side by side
        int r = 0;
        for (; r + VM_MLX_ROWS <= rows; r += VM_MLX_ROWS) mlx_rows_token(VM_MLX_ROWS, bits, w, r0 + r, x, gsum, out + r);
        for (; r < rows; r++) mlx_rows_token(1, bits, w, r0 + r, x, gsum, out + r);
        return;
    }
#endif
    for (int r = 0; r < rows; r++) {
        const int64_t row = r0 + r;
        const uint8_t *rowp = (const uint8_t *)w->data + (size_t)row * rb;
#define MLX_BLOCK(k, T) mlx_row_tokens(T, bits, rowp, w, row, x + (size_t)(k) * xs, xs, gsum + (size_t)(k) * gstride, \
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
