#version 450
// out (n, rows) = x (n, cols) @ W^T for batches (prefill, many decode
// streams), one weight type (WT, see weight.glsl): a tiled GEMM through
// shared memory, f32 arithmetic (the portable path; gemm_cm.comp uses
// cooperative matrices where the device has them). A workgroup of 16 x 16
// invocations computes BM = 16*TR rows by BN = 16*TT tokens of out; the
// invocation (ry, tx) holds rows ry + 16*i and tokens tx + 16*j, so
// neighbouring invocations store neighbouring rows. Each step stages BK = 32
// columns of the weight rows (dequantized to f32) and of the token rows in
// shared memory, transposed (k-major), padded against bank conflicts.
// Epilogue flags as matvec.comp: 1 adds bias[row], 2 also adds into res.
// Split K (grid z > 1, never with flag 16): workgroup z sums columns
// [z ksplit, (z+1) ksplit) into its own slice of part (the corr slot), and
// splitk.comp adds the slices in order and does the epilogue.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#include "weight.glsl"

#ifndef TR
#define TR 4
#endif
#ifndef TT
#define TT 4
#endif
#define BM (16 * TR)
#define BN (16 * TT)
#define BK 32
layout(local_size_x = 256) in;
layout(push_constant, std430) uniform Params {
    U32 w; F32 sc; F32 bi; F32x4 x; F32 y; F32 bias; F32 res;
    U32 w2; F32 sc2; F32 bi2; F32x4 nw;
    uint rows, cols, n, group, flags; float eps;
    F32 corr;   // flags 16: Q4_1 min-term correction per (token, block), as matvec.comp; split K: the partial sums
    uint ksplit;
} pc;

shared float Ws[BK][BM + 1];
shared float Xs[BK][BN + 1];

void main() {
    const uint tid = gl_LocalInvocationIndex, ry = tid % 16u, tx = tid / 16u;
    const uint r0 = gl_WorkGroupID.x * BM, t0 = gl_WorkGroupID.y * BN;
    const uint chunks = pc.cols / 8u;
    float acc[TR][TT];
    for (uint i = 0; i < TR; i++)
        for (uint j = 0; j < TT; j++) acc[i][j] = 0.0;
    const bool split = gl_NumWorkGroups.z > 1u;
    const uint kb = split ? gl_WorkGroupID.z * pc.ksplit : 0u, ke = split ? min(pc.cols, kb + pc.ksplit) : pc.cols;
    for (uint k0 = kb; k0 < ke; k0 += BK) {
        // weights: BM rows x 4 chunks of 8
        for (uint i = tid; i < BM * 4u; i += 256u) {
            uint row = i / 4u, ch = i % 4u, r = r0 + row, c = k0 / 8u + ch;
            vec4 w0 = vec4(0.0), w1 = vec4(0.0);
            if (r < pc.rows && c < chunks && c * 8u < ke) weight_chunk8(pc.w, pc.sc, pc.bi, pc.cols, pc.group, r, c, w0, w1);
            uint k = ch * 8u;
            Ws[k][row] = w0.x; Ws[k + 1u][row] = w0.y; Ws[k + 2u][row] = w0.z; Ws[k + 3u][row] = w0.w;
            Ws[k + 4u][row] = w1.x; Ws[k + 5u][row] = w1.y; Ws[k + 6u][row] = w1.z; Ws[k + 7u][row] = w1.w;
        }
        // tokens: BN rows x 8 vec4
        for (uint i = tid; i < BN * 8u; i += 256u) {
            uint tok = i / 8u, q = i % 8u, t = t0 + tok, c = k0 + q * 4u;
            vec4 xv = t < pc.n && c < ke ? pc.x.v[(t * pc.cols + c) / 4u] : vec4(0.0);
            Xs[q * 4u][tok] = xv.x; Xs[q * 4u + 1u][tok] = xv.y; Xs[q * 4u + 2u][tok] = xv.z; Xs[q * 4u + 3u][tok] = xv.w;
        }
        barrier();
        for (uint k = 0; k < BK; k++) {
            float a[TR], b[TT];
            for (uint i = 0; i < TR; i++) a[i] = Ws[k][ry + 16u * i];
            for (uint j = 0; j < TT; j++) b[j] = Xs[k][tx + 16u * j];
            for (uint i = 0; i < TR; i++)
                for (uint j = 0; j < TT; j++) acc[i][j] = fma(a[i], b[j], acc[i][j]);
        }
        barrier();
    }
    for (uint i = 0; i < TR; i++) {
        uint r = r0 + ry + 16u * i;
        if (r >= pc.rows) continue;
        float b = (pc.flags & 1u) != 0u ? pc.bias.v[r] : 0.0;
        for (uint j = 0; j < TT; j++) {
            uint t = t0 + tx + 16u * j;
            if (t >= pc.n) continue;
            uint o = t * pc.rows + r;
            float s = acc[i][j];
            if (split) {   // a partial sum: splitk.comp adds them up and does the epilogue
                pc.corr.v[gl_WorkGroupID.z * pc.n * pc.rows + o] = s;
                continue;
            }
            if ((pc.flags & 16u) != 0u)
                for (uint g = 0; g < pc.cols / 32u; g++) s += pc.bi.v[r * (pc.cols / 32u) + g] * pc.corr.v[t * (pc.cols / 32u) + g];
            s += b;
            pc.y.v[o] = s;
            if ((pc.flags & 2u) != 0u) pc.res.v[o] += s;
        }
    }
}
