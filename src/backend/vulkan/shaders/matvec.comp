#version 450
// out (n, rows) = x (n, cols) @ W^T for few tokens (decode), one weight type
// (WT, see weight.glsl). A workgroup of 64 invocations owns NR output rows
// (2 for one token, 8 for token tiles of 4 or 8) and TN tokens (workgroup y =
// token tile): its invocations walk the columns 8 at a time (one 16-byte load
// of f16/bf16 weights per row, NR rows in flight, each weight used for the TN
// tokens, the x chunk loaded once for the NR rows), then subgroupAdd and
// shared memory sum the lanes. A token's arithmetic (which lane sums which
// columns, in what order) is the same whatever TN and NR, so a token's result
// does not depend on the batch it is in. flags:
//   1 (bias): adds bias[row] (a folded add_bias);
//   2 (res):  also adds the result into res (a folded residual add: res += out);
//   4 (norm): x is the input of an rmsnorm with weight nw: the workgroup
//             sums x^2 on the way and multiplies by nw and 1/rms itself;
//   16 (corr): adds min * corr[token][block] once per 32-column block (group
//             32: GGUF Q4_1 on q8act.comp's activations), right after the
//             block's first chunk, in every token tile alike;
//   8 (dual): two weights of equal shape (w: gate, w2: up) on the same x, NR/2
//             rows of each a workgroup: y = gate, res = up, bias = silu(gate) * up
//             (a folded swiglu).
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#include "common.glsl"
#include "weight.glsl"

#define WG 64
#ifndef TN
#define TN 1
#endif
#if TN == 1
#define NR 2          // one token: many small workgroups keep enough loads in flight
#else
#define NR 8
#endif
#define NH (NR / 2)
layout(local_size_x = WG) in;
layout(push_constant, std430) uniform Params {
    U32 w; F32 sc; F32 bi; F32x4 x; F32 y; F32 bias; F32 res;
    U32 w2; F32 sc2; F32 bi2; F32x4 nw;
    uint rows, cols, n, group, flags; float eps;
    F32 corr;   // flags 16: per (token, 32-column block) Q4_1 min-term correction (q8act.comp)
} pc;

shared float red[NR * TN + TN][WG / 4];   // per subgroup partial sums (subgroups of 4 lanes at least)

// the flag-16 term of row rr (weight j of a dual pair: w2's biases) for token t at chunk c
float corr_term(uint j, uint rr, uint t, uint c) {
    if ((c & 3u) != 0u) return 0.0;
    const uint g = rr * (pc.cols / 32u) + c / 4u;
    const float mn = ((pc.flags & 8u) != 0u && j >= NH) ? pc.bi2.v[g] : pc.bi.v[g];
    return mn * pc.corr.v[t * (pc.cols / 32u) + c / 4u];
}

void main() {
    const uint tid = gl_LocalInvocationIndex, chunks = pc.cols / 8u;
    const bool norm = (pc.flags & 4u) != 0u, dual = (pc.flags & 8u) != 0u, corr = (pc.flags & 16u) != 0u;
    const uint r0 = gl_WorkGroupID.x * (dual ? NH : NR), t0 = gl_WorkGroupID.y * TN;
    const uint nt = min(TN, pc.n - t0);
    uint rr[NR];
    for (uint j = 0; j < NR; j++) rr[j] = min(r0 + (dual ? j % NH : j), pc.rows - 1u);   // rows past the end: computed, not stored
    float acc[NR][TN], ss[TN];
    for (uint t = 0; t < TN; t++) {
        ss[t] = 0.0;
        for (uint j = 0; j < NR; j++) acc[j][t] = 0.0;
    }
#if TN == 1
    // two chunks' loads issued before either is summed (same sums, same order)
    for (uint c = tid; c < chunks; c += 2u * WG) {
        const uint c2 = c + WG;
        const bool has2 = c2 < chunks;
        uint xi = (t0 * pc.cols + c * 8u) / 4u, xi2 = (t0 * pc.cols + min(c2, chunks - 1u) * 8u) / 4u;
        vec4 xa0 = pc.x.v[xi], xb0 = pc.x.v[xi + 1u], xa2 = pc.x.v[xi2], xb2 = pc.x.v[xi2 + 1u];
        vec4 w0[NR], w1[NR], v0[NR], v1[NR];
        for (uint j = 0; j < NR; j++) {
            if (dual && j >= NH) {
                weight_chunk8(pc.w2, pc.sc2, pc.bi2, pc.cols, pc.group, rr[j], c, w0[j], w1[j]);
                weight_chunk8(pc.w2, pc.sc2, pc.bi2, pc.cols, pc.group, rr[j], min(c2, chunks - 1u), v0[j], v1[j]);
            } else {
                weight_chunk8(pc.w, pc.sc, pc.bi, pc.cols, pc.group, rr[j], c, w0[j], w1[j]);
                weight_chunk8(pc.w, pc.sc, pc.bi, pc.cols, pc.group, rr[j], min(c2, chunks - 1u), v0[j], v1[j]);
            }
        }
        if (norm) {
            vec4 g0 = pc.nw.v[2u * c], g1 = pc.nw.v[2u * c + 1u];
            ss[0] += dot(xa0, xa0) + dot(xb0, xb0);
            xa0 *= g0;
            xb0 *= g1;
        }
        for (uint j = 0; j < NR; j++) acc[j][0] += dot(w0[j], xa0) + dot(w1[j], xb0);
        if (corr) for (uint j = 0; j < NR; j++) acc[j][0] += corr_term(j, rr[j], t0, c);
        if (has2) {
            if (norm) {
                vec4 g0 = pc.nw.v[2u * c2], g1 = pc.nw.v[2u * c2 + 1u];
                ss[0] += dot(xa2, xa2) + dot(xb2, xb2);
                xa2 *= g0;
                xb2 *= g1;
            }
            for (uint j = 0; j < NR; j++) acc[j][0] += dot(v0[j], xa2) + dot(v1[j], xb2);
            if (corr) for (uint j = 0; j < NR; j++) acc[j][0] += corr_term(j, rr[j], t0, c2);
        }
    }
#else
    for (uint c = tid; c < chunks; c += WG) {
        vec4 xa[TN], xb[TN];
        for (uint t = 0; t < TN; t++) {
            uint xi = ((t0 + min(t, nt - 1u)) * pc.cols + c * 8u) / 4u;
            xa[t] = pc.x.v[xi];
            xb[t] = pc.x.v[xi + 1u];
        }
        vec4 w0[NR], w1[NR];
        for (uint j = 0; j < NR; j++) {
            if (dual && j >= NH) weight_chunk8(pc.w2, pc.sc2, pc.bi2, pc.cols, pc.group, rr[j], c, w0[j], w1[j]);
            else weight_chunk8(pc.w, pc.sc, pc.bi, pc.cols, pc.group, rr[j], c, w0[j], w1[j]);
        }
        if (norm) {
            vec4 g0 = pc.nw.v[2u * c], g1 = pc.nw.v[2u * c + 1u];
            for (uint t = 0; t < TN; t++) {
                ss[t] += dot(xa[t], xa[t]) + dot(xb[t], xb[t]);
                xa[t] *= g0;
                xb[t] *= g1;
            }
        }
        for (uint j = 0; j < NR; j++)
            for (uint t = 0; t < TN; t++) acc[j][t] += dot(w0[j], xa[t]) + dot(w1[j], xb[t]);
        if (corr)
            for (uint j = 0; j < NR; j++)
                for (uint t = 0; t < TN; t++) acc[j][t] += corr_term(j, rr[j], t0 + min(t, nt - 1u), c);
    }
#endif
    const uint sg = gl_SubgroupID, nsg = gl_NumSubgroups;
    for (uint j = 0; j < NR; j++)
        for (uint t = 0; t < TN; t++) {
            float s = subgroupAdd(acc[j][t]);
            if (subgroupElect()) red[j * TN + t][sg] = s;
        }
    if (norm)
        for (uint t = 0; t < TN; t++) {
            float s = subgroupAdd(ss[t]);
            if (subgroupElect()) red[NR * TN + t][sg] = s;
        }
    barrier();
    if (tid < (dual ? NH : NR) * TN) {
        const uint j = tid / TN, t = tid % TN, r = r0 + j;
        float s = 0.0, s2 = 0.0, inv = 1.0;
        for (uint i = 0; i < nsg; i++) s += red[tid][i];
        if (dual) for (uint i = 0; i < nsg; i++) s2 += red[tid + NH * TN][i];
        if (norm) {
            float q = 0.0;
            for (uint i = 0; i < nsg; i++) q += red[NR * TN + t][i];
            inv = 1.0 / sqrt(q / float(pc.cols) + pc.eps);
            s *= inv;
            s2 *= inv;
        }
        if (r < pc.rows && t < nt) {
            uint o = (t0 + t) * pc.rows + r;
            if (dual) {
                pc.res.v[o] = s2;
                pc.y.v[o] = s;
                pc.bias.v[o] = s / (1.0 + exp(-s)) * s2;
            } else {
                if ((pc.flags & 1u) != 0u) s += pc.bias.v[r];
                pc.y.v[o] = s;
                if ((pc.flags & 2u) != 0u) pc.res.v[o] += s;
            }
        }
    }
}
