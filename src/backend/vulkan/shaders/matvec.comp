#version 450
// out (n, rows) = x (n, cols) @ W^T for few tokens (decode), one weight type
// (WT, see weight.glsl).
// A workgroup's invocations walk the columns 8 at a time (one 16-byte load
// of f16/bf16 weights per row, the x chunk loaded once for the workgroup's
// rows), then subgroupAdd and shared memory sum the lanes.
//   TN 1 (one token): 64 invocations own RS = 2 weight rows (a gate/up pair
//     when dual); each invocation loads U chunks of both rows before it
//     sums them: 4 (2 for affine weights), 1 for rows of at most 2048
//     columns (the host picks the form; all sum in the same order). (A
//     subgroup a row, more rows, larger workgroups: all measured slower on
//     the H100; 1.5B bf16 decode with 2 on every row 477-501 tok/s, 1 on the
//     short rows 517, and 4 on the long ones (down) 518 -> 522; its MLX
//     4-bit form gave no clear change with 4.)
//   TN 4 / 8 (token tiles): 64 invocations own NR = 8 output rows and TN
//     tokens (workgroup y = token tile), each weight used for the TN tokens.
// Invocation i sums chunks i, i + 64, i + 128, ... in that order in both
// forms, so a token's result does not depend on the batch it is in.
// flags:
//   1 (bias): adds bias[row] (a folded add_bias);
//   2 (res):  also adds the result into res (a folded residual add: res += out);
//   4 (norm): x is the input of an rmsnorm with weight nw: the workgroup
//             sums x^2 on the way and multiplies by nw and 1/rms itself;
//   16 (corr): adds min * corr[token][block] once per 32-column block (group
//             32: GGUF Q4_1 on q8act.comp's activations), right after the
//             block's first chunk, in every token tile alike;
//   8 (dual): two weights of equal shape (w: gate, w2: up) on the same x, NR/2
//             rows of each a workgroup: y = gate, res = up, bias = silu(gate) * up
//             (a folded swiglu);
//   32 (rope, one token): corr is a RopeDesc; workgroup j owns rope pair
//             j (head j / half, pair j % half) and writes it rotated (q, k) as
//             rope_kv.comp would, k's and v's pair also to the caches at the
//             token's slot.
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#include "common.glsl"
#include "weight.glsl"
#include "rope.glsl"

#ifndef TN
#define TN 1
#endif
#if TN == 1
#extension GL_EXT_control_flow_attributes : require
#extension GL_EXT_buffer_reference_uvec2 : require
// flag 32: rope and the cache write of q, k or v (kind 0, 1, 2) in the epilogue
layout(buffer_reference, std430, buffer_reference_align = 8) buffer RopeDesc {
    I32 pos; F32 inv_freq; I32 slots; U32 kc; U32 vc;
    uint head_dim, half_rot, interleaved, block_size, n_kv_heads, kind, kv16; float theta_scale;
    uint n_blocks, pad_;
};
#define NR 2          // (corr_term's dual split: j 0 = gate, 1 = up)
#define RS 2          // weight rows a workgroup (a gate/up pair when dual)
#ifndef U
#define U (WT <= 2 ? 4 : 2)   // chunks of each row an invocation loads before it sums them (16/32-bit weights: 4)
#endif
#else
#define NR 8
#endif
#define NH (NR / 2)
#define WG 64
layout(local_size_x = WG) in;
layout(push_constant, std430) uniform Params {
    U32 w; F32 sc; F32 bi; F32x4 x; F32 y; F32 bias; F32 res;
    U32 w2; F32 sc2; F32 bi2; F32x4 nw;
    uint rows, cols, n, group, flags; float eps;
    F32 corr;   // flags 16: per (token, 32-column block) Q4_1 min-term correction (q8act.comp)
} pc;

#if TN != 1
shared float red[NR * TN + TN][WG / 4];   // per subgroup partial sums (subgroups of 4 lanes at least)
#endif

// the flag-16 term of row rr (weight j of a dual pair: w2's biases) for token t at chunk c
float corr_term(uint j, uint rr, uint t, uint c) {
    if ((c & 3u) != 0u) return 0.0;
    const uint g = rr * (pc.cols / 32u) + c / 4u;
    const float mn = ((pc.flags & 8u) != 0u && j >= NH) ? pc.bi2.v[g] : pc.bi.v[g];
    return mn * pc.corr.v[t * (pc.cols / 32u) + c / 4u];
}

#if TN == 1
shared float red1[RS + 1][WG / 4];   // per subgroup partial sums: RS rows and the norm's sum of squares

// flag 32: rows ra, rb of the pair from the partial sums, rotated (q, k) and
// stored; k and v also to the caches
void rope_epilogue(uint ra, uint rb, bool norm, uint nsg) {
    RopeDesc d = RopeDesc(uvec2(pc.corr));
    float s0 = 0.0, s1 = 0.0;
    for (uint k = 0; k < nsg; k++) s0 += red1[0][k];
    for (uint k = 0; k < nsg; k++) s1 += red1[1][k];
    if (norm) {
        float q = 0.0;
        for (uint k = 0; k < nsg; k++) q += red1[RS][k];
        const float inv = 1.0 / sqrt(q / float(pc.cols) + pc.eps);
        s0 *= inv;
        s1 *= inv;
    }
    if ((pc.flags & 1u) != 0u) {
        s0 += pc.bias.v[ra];
        s1 += pc.bias.v[rb];
    }
    const uint h = gl_WorkGroupID.x / d.half_rot, i = gl_WorkGroupID.x % d.half_rot;
    float o0 = s0, o1 = s1;
    if (d.kind != 2u) {
        float cs, sn;
        sincos_accurate(rope_angle(float(d.pos.v[0]), i, d.theta_scale, d.inv_freq), sn, cs);
        o0 = s0 * cs - s1 * sn;
        o1 = s1 * cs + s0 * sn;
    }
    pc.y.v[ra] = o0;
    pc.y.v[rb] = o1;
    const int slot = d.slots.v[0];
    if (d.kind == 0u || slot < 0) return;
    const uint blk = uint(slot) / d.block_size, off = uint(slot) % d.block_size;
    const uint dst = ((h * d.n_blocks + blk) * d.block_size + off) * d.head_dim, a = ra - h * d.head_dim, b = rb - h * d.head_dim;
    U32 c = d.kind == 1u ? d.kc : d.vc;
    if (d.kv16 != 0u) {
        c.v[(dst + a) / 2u] = packHalf2x16(vec2(o0, o1));   // interleaved pairs: one word
    } else {
        c.v[dst + a] = floatBitsToUint(o0);
        c.v[dst + b] = floatBitsToUint(o1);
    }
}
void main() {
    const uint tid = gl_LocalInvocationIndex, chunks = pc.cols / 8u;
    const bool norm = (pc.flags & 4u) != 0u, dual = (pc.flags & 8u) != 0u, corr = (pc.flags & 16u) != 0u;
    const uint P = dual ? RS / 2u : RS;   // output rows of the workgroup
    const uint r0 = gl_WorkGroupID.x * P;
    // weight row of slot i: r0 + i; dual: gate (i even) and up (i odd) of row r0 + i/2
    uint rr[RS];
    float acc[RS], ss = 0.0;
    [[unroll]] for (uint i = 0; i < RS; i++) {
        rr[i] = min(r0 + (dual ? i / 2u : i), pc.rows - 1u);   // rows past the end: computed, not stored
        acc[i] = 0.0;
    }
    const bool rope = (pc.flags & 32u) != 0u;
    if (rope) {   // rows a and b of the pair
        RopeDesc d = RopeDesc(uvec2(pc.corr));
        const uint h = gl_WorkGroupID.x / d.half_rot, i = gl_WorkGroupID.x % d.half_rot;
        rr[0] = h * d.head_dim + (d.interleaved != 0u ? 2u * i : i);
        rr[1] = h * d.head_dim + (d.interleaved != 0u ? 2u * i + 1u : i + d.half_rot);
    }
    for (uint c0 = tid; c0 < chunks; c0 += U * WG) {
        wchunk wk[U][RS];
        vec4 xa[U], xb[U];
        [[unroll]] for (uint u = 0; u < U; u++) {
            const uint c = min(c0 + u * WG, chunks - 1u);   // past the end: loaded, not summed
            [[unroll]] for (uint i = 0; i < RS; i++)
                wk[u][i] = dual && (i & 1u) != 0u ? weight_load(pc.w2, pc.sc2, pc.bi2, pc.cols, pc.group, rr[i], c)
                                                  : weight_load(pc.w, pc.sc, pc.bi, pc.cols, pc.group, rr[i], c);
            xa[u] = pc.x.v[2u * c];
            xb[u] = pc.x.v[2u * c + 1u];
        }
        [[unroll]] for (uint u = 0; u < U; u++) {
            const uint c = c0 + u * WG;
            if (c >= chunks) break;
            if (norm) {
                ss += dot(xa[u], xa[u]) + dot(xb[u], xb[u]);
                xa[u] *= pc.nw.v[2u * c];
                xb[u] *= pc.nw.v[2u * c + 1u];
            }
            [[unroll]] for (uint i = 0; i < RS; i++) {
                vec4 w0, w1;
                weight_unpack(wk[u][i], w0, w1);
                acc[i] += dot(w0, xa[u]) + dot(w1, xb[u]);
                if (corr) acc[i] += corr_term(dual ? (i & 1u) : 0u, rr[i], 0u, c);
            }
        }
    }
    const uint sg = gl_SubgroupID, nsg = gl_NumSubgroups;
    [[unroll]] for (uint i = 0; i < RS; i++) {
        const float t = subgroupAdd(acc[i]);
        if (subgroupElect()) red1[i][sg] = t;
    }
    if (norm) {
        const float t = subgroupAdd(ss);
        if (subgroupElect()) red1[RS][sg] = t;
    }
    barrier();
    if (rope) {
        if (tid == 0u) rope_epilogue(rr[0], rr[1], norm, nsg);
        return;
    }
    if (tid < P) {
        const uint r = r0 + tid;
        float s = 0.0, s2 = 0.0;
        for (uint k = 0; k < nsg; k++) s += red1[dual ? 2u * tid : tid][k];
        if (dual) for (uint k = 0; k < nsg; k++) s2 += red1[2u * tid + 1u][k];
        if (norm) {
            float q = 0.0;
            for (uint k = 0; k < nsg; k++) q += red1[RS][k];
            const float inv = 1.0 / sqrt(q / float(pc.cols) + pc.eps);
            s *= inv;
            s2 *= inv;
        }
        if (r < pc.rows) {
            if (dual) {
                pc.res.v[r] = s2;
                pc.y.v[r] = s;
                pc.bias.v[r] = s / (1.0 + exp(-s)) * s2;
            } else {
                if ((pc.flags & 1u) != 0u) s += pc.bias.v[r];
                pc.y.v[r] = s;
                if ((pc.flags & 2u) != 0u) pc.res.v[r] += s;
            }
        }
    }
}
#else
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
#endif
