#version 450
// gemm.comp on cooperative matrices (VK_NV_cooperative_matrix; f16, bf16 or
// affine 4/8-bit weights, which are GGUF's block types too): out (n, rows) =
// x (n, cols) @ W^T with 16x16x16 f16 products
// accumulated in f32. The weights are exact in f16 (bf16 values between 2^-14
// and 65504; smaller ones round to f16 subnormals, 2^-24 apart). The f32
// activations are split as x = hi + lo/2048, hi and lo both f16 (hi by
// truncating the mantissa, lo scaled up
// so that it stays clear of f16 subnormals, which a driver may flush), and
// both halves multiply the weights into separate accumulators, so the
// products carry ~22 bits of x (what the f32 path's 1e-4 agreement with the
// CPU needs). Affine weights (WT 3, 4) are dequantized in f32 as the CPU does
// and split the same way (w = whi + wlo/2048): three products per step
// (whi x, whi xlo, wlo xhi), in steps of BK = 32 to stay within 48 KB of
// shared memory. A workgroup of 4 subgroups (of 32) computes
// 64 rows x 64 tokens, each subgroup 32 x 32 (2 x 2 matrices), over steps of
// BK = 64 columns staged in shared memory (f16); the global loads of the next
// step are issued before the products of this one (held raw in registers and
// converted at the next step), so their latency hides behind the arithmetic.
// The matrices are separate variables, not arrays (the shader is built
// without spirv-opt, which crashes on it: no array of matrices for the driver
// to lower). The result goes through shared memory for the epilogue (flags as
// matvec.comp: 1 bias, 2 residual add). Split K (grid z > 1, for grids of few
// tiles): workgroup z sums columns [z ksplit, (z+1) ksplit) into its own slice
// of part, and splitk.comp adds the slices in order and does the epilogue.
#extension GL_GOOGLE_include_directive : require
#extension GL_NV_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_KHR_shader_subgroup_basic : require
#include "common.glsl"
#include "weight.glsl"

#define BM 64
#define BN 64
#if WT >= 3
#define QW 1            // affine weights: split in two halves, like x
#define BK 32
#else
#define QW 0
#define BK 64
#endif
#define WQ (BM * BK / 8 / 128)   // weight chunks (8 halves) per invocation per step
#define XQ (BN * BK / 4 / 128)   // activation vec4s per invocation per step
#define SK (BK + 8)     // row stride of the staged tiles (halves)
#define SC (BM + 4)     // token stride of the result tile (floats)
#define CM16 fcoopmatNV<16, gl_ScopeSubgroup, 16, 16>
#define CM32 fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>
layout(local_size_x = 128) in;
layout(push_constant, std430) uniform Params {
    U32 w; F32 sc; F32 bi; F32x4 x; F32 y; F32 bias; F32 res;
    U32 w2; F32 sc2; F32 bi2; F32x4 nw;
    uint rows, cols, n, group, flags; float eps;
    F32 part; uint ksplit;
} pc;

shared float16_t Ws[BM * SK];   // [row][k]
#if QW
shared float16_t Wl[BM * SK];   // the weights' low halves
#endif
shared float16_t Xh[BN * SK];   // [token][k]
shared float16_t Xl[BN * SK];
shared float Cs[BN * SC];       // [token][row]

// This invocation's share of a step: weight chunks (8 halves) i = tid + 128 q
// (row i / 4, chunk i % 4) and token vec4s i = tid + 128 q (token i / 8, vec4 i % 8).
#if QW
#define WRAW wchunk
wchunk ld_w(uint tid, uint q, uint r0, uint k0) {
    uint i = tid + 128u * q, r = r0 + i / (BK / 8u), c = k0 / 8u + i % (BK / 8u);
    wchunk k;
    k.q = uvec4(0u); k.q2 = uvec4(0u); k.s = 0.0; k.b = 0.0;
    if (r < pc.rows && c < pc.cols / 8u) k = weight_load(pc.w, pc.sc, pc.bi, pc.cols, pc.group, r, c);
    return k;
}
#else
#define WRAW uvec4
uvec4 ld_w(uint tid, uint q, uint r0, uint k0) {
    uint i = tid + 128u * q, r = r0 + i / (BK / 8u), c = k0 / 8u + i % (BK / 8u);
    return r < pc.rows && c < pc.cols / 8u ? U32x4(pc.w).v[(r * pc.cols) / 8u + c] : uvec4(0u);
}
#endif
vec4 ld_x(uint tid, uint q, uint t0, uint k0) {
    uint i = tid + 128u * q, t = t0 + i / (BK / 4u), c = k0 + (i % (BK / 4u)) * 4u;
    return t < pc.n && c < pc.cols ? pc.x.v[(t * pc.cols + c) / 4u] : vec4(0.0);
}
// v = hi + lo / 2048, both f16: hi by cutting the mantissa to 10 bits (bit
// masking: a compiler may take f32(f16(v)) for v), lo the exact rest, scaled
void split_f16(vec4 v, out f16vec4 hi, out f16vec4 lo) {
    v = clamp(v, -65504.0, 65504.0);
    vec4 h32 = uintBitsToFloat(floatBitsToUint(v) & 0xffffe000u);
    hi = f16vec4(h32);
    lo = f16vec4((v - h32) * 2048.0);
}
void st_w(uint tid, uint q, WRAW u) {
    uint i = tid + 128u * q, o = (i / (BK / 8u)) * SK + (i % (BK / 8u)) * 8u;
#if QW
    vec4 w0, w1;
    weight_unpack(u, w0, w1);
    f16vec4 h0, h1, l0, l1;
    split_f16(w0, h0, l0);
    split_f16(w1, h1, l1);
    Wl[o] = l0.x; Wl[o + 1u] = l0.y; Wl[o + 2u] = l0.z; Wl[o + 3u] = l0.w;
    Wl[o + 4u] = l1.x; Wl[o + 5u] = l1.y; Wl[o + 6u] = l1.z; Wl[o + 7u] = l1.w;
#else
#if WT == 1
    vec4 w0 = vec4(unpackHalf2x16(u.x), unpackHalf2x16(u.y)), w1 = vec4(unpackHalf2x16(u.z), unpackHalf2x16(u.w));
#else
    vec4 w0 = vec4(bf16_lo(u.x), bf16_hi(u.x), bf16_lo(u.y), bf16_hi(u.y));
    vec4 w1 = vec4(bf16_lo(u.z), bf16_hi(u.z), bf16_lo(u.w), bf16_hi(u.w));
#endif
    f16vec4 h0 = f16vec4(clamp(w0, -65504.0, 65504.0)), h1 = f16vec4(clamp(w1, -65504.0, 65504.0));
#endif
    Ws[o] = h0.x; Ws[o + 1u] = h0.y; Ws[o + 2u] = h0.z; Ws[o + 3u] = h0.w;
    Ws[o + 4u] = h1.x; Ws[o + 5u] = h1.y; Ws[o + 6u] = h1.z; Ws[o + 7u] = h1.w;
}
void st_x(uint tid, uint q, vec4 xv) {
    uint i = tid + 128u * q, o = (i / (BK / 4u)) * SK + (i % (BK / 4u)) * 4u;
    f16vec4 hi, lo;
    split_f16(xv, hi, lo);
    Xh[o] = hi.x; Xh[o + 1u] = hi.y; Xh[o + 2u] = hi.z; Xh[o + 3u] = hi.w;
    Xl[o] = lo.x; Xl[o + 1u] = lo.y; Xl[o + 2u] = lo.z; Xl[o + 3u] = lo.w;
}

void main() {
    const uint tid = gl_LocalInvocationIndex, sg = gl_SubgroupID;
    const uint r0 = gl_WorkGroupID.x * BM, t0 = gl_WorkGroupID.y * BN;
    const uint wr = (sg & 1u) * 32u, wt = (sg >> 1) * 32u;   // this subgroup's rows and tokens in the tile
    CM32 c00 = CM32(0.0), c01 = CM32(0.0), c10 = CM32(0.0), c11 = CM32(0.0);
    CM32 l00 = CM32(0.0), l01 = CM32(0.0), l10 = CM32(0.0), l11 = CM32(0.0);
#if QW
    CM32 m00 = CM32(0.0), m01 = CM32(0.0), m10 = CM32(0.0), m11 = CM32(0.0);   // wlo xhi
#endif
    // split K: workgroup z takes columns [kb, ke) (ksplit a multiple of BK)
    const uint kb = gl_WorkGroupID.z * pc.ksplit, ke = min(pc.cols, kb + pc.ksplit);
    WRAW wq[WQ];
    vec4 xq[XQ];
    for (uint q = 0; q < WQ; q++) wq[q] = ld_w(tid, q, r0, kb);
    for (uint q = 0; q < XQ; q++) xq[q] = ld_x(tid, q, t0, kb);
    for (uint k0 = kb; k0 < ke; k0 += BK) {
        for (uint q = 0; q < WQ; q++) st_w(tid, q, wq[q]);
        for (uint q = 0; q < XQ; q++) st_x(tid, q, xq[q]);
        barrier();
        if (k0 + BK < ke) {        // the next step's loads, in flight during the products
            uint k1 = k0 + BK;
            for (uint q = 0; q < WQ; q++) wq[q] = ld_w(tid, q, r0, k1);
            for (uint q = 0; q < XQ; q++) xq[q] = ld_x(tid, q, t0, k1);
        }
        for (uint kk = 0; kk < BK; kk += 16u) {
            CM16 a0, a1, h0, h1, g0, g1;
            coopMatLoadNV(a0, Ws, wr * SK + kk, SK, false);
            coopMatLoadNV(a1, Ws, (wr + 16u) * SK + kk, SK, false);
            coopMatLoadNV(h0, Xh, wt * SK + kk, SK, true);
            coopMatLoadNV(h1, Xh, (wt + 16u) * SK + kk, SK, true);
            coopMatLoadNV(g0, Xl, wt * SK + kk, SK, true);
            coopMatLoadNV(g1, Xl, (wt + 16u) * SK + kk, SK, true);
            c00 = coopMatMulAddNV(a0, h0, c00); c01 = coopMatMulAddNV(a0, h1, c01);
            c10 = coopMatMulAddNV(a1, h0, c10); c11 = coopMatMulAddNV(a1, h1, c11);
            l00 = coopMatMulAddNV(a0, g0, l00); l01 = coopMatMulAddNV(a0, g1, l01);
            l10 = coopMatMulAddNV(a1, g0, l10); l11 = coopMatMulAddNV(a1, g1, l11);
#if QW
            CM16 b0, b1;
            coopMatLoadNV(b0, Wl, wr * SK + kk, SK, false);
            coopMatLoadNV(b1, Wl, (wr + 16u) * SK + kk, SK, false);
            m00 = coopMatMulAddNV(b0, h0, m00); m01 = coopMatMulAddNV(b0, h1, m01);
            m10 = coopMatMulAddNV(b1, h0, m10); m11 = coopMatMulAddNV(b1, h1, m11);
#endif
        }
        barrier();
    }
#if QW
    l00 = l00 + m00; l01 = l01 + m01; l10 = l10 + m10; l11 = l11 + m11;
#endif
    c00 = c00 + l00 * (1.0 / 2048.0); c01 = c01 + l01 * (1.0 / 2048.0);
    c10 = c10 + l10 * (1.0 / 2048.0); c11 = c11 + l11 * (1.0 / 2048.0);
    coopMatStoreNV(c00, Cs, wt * SC + wr, SC, true);
    coopMatStoreNV(c01, Cs, (wt + 16u) * SC + wr, SC, true);
    coopMatStoreNV(c10, Cs, wt * SC + wr + 16u, SC, true);
    coopMatStoreNV(c11, Cs, (wt + 16u) * SC + wr + 16u, SC, true);
    barrier();
    for (uint i = tid; i < BM * BN; i += 128u) {
        uint row = i % BM, tok = i / BM, r = r0 + row, t = t0 + tok;
        if (r >= pc.rows || t >= pc.n) continue;
        float s = Cs[tok * SC + row];
        uint o = t * pc.rows + r;
        if (gl_NumWorkGroups.z > 1u) {   // a partial sum: splitk.comp adds them up and does the epilogue
            pc.part.v[gl_WorkGroupID.z * pc.n * pc.rows + o] = s;
            continue;
        }
        if ((pc.flags & 1u) != 0u) s += pc.bias.v[r];
        pc.y.v[o] = s;
        if ((pc.flags & 2u) != 0u) pc.res.v[o] += s;
    }
}
