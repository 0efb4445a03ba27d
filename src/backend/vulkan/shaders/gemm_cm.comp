#version 450
// gemm.comp on cooperative matrices (VK_NV_cooperative_matrix; f16 or bf16
// weights): out (n, rows) = x (n, cols) @ W^T with 16x16x16 f16 products
// accumulated in f32. The weights are exact in f16 (bf16 values between 2^-14
// and 65504; smaller ones round to f16 subnormals, 2^-24 apart). The f32
// activations are split as x = hi + lo/2048, hi and lo both f16 (hi by
// truncating the mantissa, lo scaled up
// so that it stays clear of f16 subnormals, which a driver may flush), and
// both halves multiply the weights into separate accumulators, so the
// products carry ~22 bits of x (what the f32 path's 1e-4 agreement with the
// CPU needs). A workgroup of 4 subgroups (of 32) computes
// 64 rows x 64 tokens, each subgroup 32 x 32 (2 x 2 matrices), over steps of
// BK = 32 columns staged in shared memory; the result goes through shared
// memory for the epilogue (flags as matvec.comp: 1 bias, 2 residual add).
#extension GL_GOOGLE_include_directive : require
#extension GL_NV_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_KHR_shader_subgroup_basic : require
#include "common.glsl"
#include "weight.glsl"

#define BM 64
#define BN 64
#define BK 32
#define SK (BK + 8)     // row stride of the staged tiles (halves)
#define SC (BM + 4)     // token stride of the result tile (floats)
layout(local_size_x = 128) in;
layout(push_constant, std430) uniform Params {
    U32 w; F32 sc; F32 bi; F32x4 x; F32 y; F32 bias; F32 res;
    U32 w2; F32 sc2; F32 bi2; F32x4 nw;
    uint rows, cols, n, group, flags; float eps;
} pc;

shared float16_t Ws[BM * SK];   // [row][k]
shared float16_t Xh[BN * SK];   // [token][k]
shared float16_t Xl[BN * SK];
shared float Cs[BN * SC];       // [token][row]

void main() {
    const uint tid = gl_LocalInvocationIndex, sg = gl_SubgroupID;
    const uint r0 = gl_WorkGroupID.x * BM, t0 = gl_WorkGroupID.y * BN;
    const uint chunks = pc.cols / 8u;
    const uint wr = (sg & 1u) * 32u, wt = (sg >> 1) * 32u;   // this subgroup's rows and tokens in the tile
    fcoopmatNV<32, gl_ScopeSubgroup, 16, 16> acc[2][2], accl[2][2];
    for (uint i = 0; i < 2; i++)
        for (uint j = 0; j < 2; j++) {
            acc[i][j] = fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>(0.0);
            accl[i][j] = fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>(0.0);
        }
    for (uint k0 = 0; k0 < pc.cols; k0 += BK) {
        for (uint i = tid; i < BM * 4u; i += 128u) {
            uint row = i / 4u, ch = i % 4u, r = r0 + row, c = k0 / 8u + ch;
            vec4 w0 = vec4(0.0), w1 = vec4(0.0);
            if (r < pc.rows && c < chunks) weight_chunk8(pc.w, pc.sc, pc.bi, pc.cols, pc.group, r, c, w0, w1);
            w0 = clamp(w0, -65504.0, 65504.0);
            w1 = clamp(w1, -65504.0, 65504.0);
            uint o = row * SK + ch * 8u;
            Ws[o] = float16_t(w0.x); Ws[o + 1u] = float16_t(w0.y); Ws[o + 2u] = float16_t(w0.z); Ws[o + 3u] = float16_t(w0.w);
            Ws[o + 4u] = float16_t(w1.x); Ws[o + 5u] = float16_t(w1.y); Ws[o + 6u] = float16_t(w1.z); Ws[o + 7u] = float16_t(w1.w);
        }
        for (uint i = tid; i < BN * 8u; i += 128u) {
            uint tok = i / 8u, q = i % 8u, t = t0 + tok, c = k0 + q * 4u;
            vec4 xv = t < pc.n && c < pc.cols ? pc.x.v[(t * pc.cols + c) / 4u] : vec4(0.0);
            xv = clamp(xv, -65504.0, 65504.0);
            // hi: x with its mantissa cut to f16's 10 bits, by bit masking (a compiler
            // may take f32(f16(x)) for x); lo: the rest (exact in f32), scaled
            vec4 h32 = uintBitsToFloat(floatBitsToUint(xv) & 0xffffe000u);
            f16vec4 hi = f16vec4(h32);
            f16vec4 lo = f16vec4((xv - h32) * 2048.0);
            uint o = tok * SK + q * 4u;
            Xh[o] = hi.x; Xh[o + 1u] = hi.y; Xh[o + 2u] = hi.z; Xh[o + 3u] = hi.w;
            Xl[o] = lo.x; Xl[o + 1u] = lo.y; Xl[o + 2u] = lo.z; Xl[o + 3u] = lo.w;
        }
        barrier();
        for (uint kk = 0; kk < BK; kk += 16u) {
            fcoopmatNV<16, gl_ScopeSubgroup, 16, 16> a[2], bh[2], bl[2];
            for (uint i = 0; i < 2; i++) coopMatLoadNV(a[i], Ws, (wr + 16u * i) * SK + kk, SK, false);
            for (uint j = 0; j < 2; j++) {
                coopMatLoadNV(bh[j], Xh, (wt + 16u * j) * SK + kk, SK, true);
                coopMatLoadNV(bl[j], Xl, (wt + 16u * j) * SK + kk, SK, true);
            }
            for (uint i = 0; i < 2; i++)
                for (uint j = 0; j < 2; j++) {
                    acc[i][j] = coopMatMulAddNV(a[i], bh[j], acc[i][j]);
                    accl[i][j] = coopMatMulAddNV(a[i], bl[j], accl[i][j]);
                }
        }
        barrier();
    }
    for (uint i = 0; i < 2; i++)
        for (uint j = 0; j < 2; j++) {
            acc[i][j] = acc[i][j] + accl[i][j] * (1.0 / 2048.0);
            coopMatStoreNV(acc[i][j], Cs, (wt + 16u * j) * SC + wr + 16u * i, SC, true);
        }
    barrier();
    for (uint i = tid; i < BM * BN; i += 128u) {
        uint row = i % BM, tok = i / BM, r = r0 + row, t = t0 + tok;
        if (r >= pc.rows || t >= pc.n) continue;
        float s = Cs[tok * SC + row];
        if ((pc.flags & 1u) != 0u) s += pc.bias.v[r];
        uint o = t * pc.rows + r;
        pc.y.v[o] = s;
        if ((pc.flags & 2u) != 0u) pc.res.v[o] += s;
    }
}
