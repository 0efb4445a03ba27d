#version 450
// out (n, rows) = x (n, cols) @ W^T for one weight type (WT, see weight.glsl).
// A subgroup owns an output row: its lanes walk the row 8 columns at a time,
// each for TN tokens at once, and subgroupAdd sums the lanes. A workgroup
// covers rows_per_wg rows (its subgroups loop over them, whatever their size);
// workgroup y is a tile of TN tokens (4, or 16 for batches). With has_bias,
// bias[row] is added (a folded add_bias).
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#include "common.glsl"
#include "weight.glsl"

layout(local_size_x = 128) in;
layout(push_constant, std430) uniform Params {
    U32 w; F32 sc; F32 bi; F32x4 x; F32 y; F32 bias;
    uint rows, cols, n, rows_per_wg, group, has_bias;
} pc;

#ifndef TN
#define TN 4
#endif

void main() {
    const uint chunks = pc.cols / 8u;
    const uint t0 = gl_WorkGroupID.y * TN;
    const uint nt = min(TN, pc.n - t0);
    for (uint rr = gl_SubgroupID; rr < pc.rows_per_wg; rr += gl_NumSubgroups) {
        uint r = gl_WorkGroupID.x * pc.rows_per_wg + rr;
        if (r >= pc.rows) break;
        float acc[TN];
        for (uint t = 0; t < TN; t++) acc[t] = 0.0;
        for (uint c = gl_SubgroupInvocationID; c < chunks; c += gl_SubgroupSize) {
            vec4 w0, w1;
            uint e = r * pc.cols + c * 8u;   // first element of the chunk
#if WT == 0
            w0 = uintBitsToFloat(U32x4(pc.w).v[e / 4u]);
            w1 = uintBitsToFloat(U32x4(pc.w).v[e / 4u + 1u]);
#elif WT == 1
            uvec4 u = U32x4(pc.w).v[e / 8u];
            w0 = vec4(unpackHalf2x16(u.x), unpackHalf2x16(u.y));
            w1 = vec4(unpackHalf2x16(u.z), unpackHalf2x16(u.w));
#elif WT == 2
            uvec4 u = U32x4(pc.w).v[e / 8u];
            w0 = vec4(bf16_lo(u.x), bf16_hi(u.x), bf16_lo(u.y), bf16_hi(u.y));
            w1 = vec4(bf16_lo(u.z), bf16_hi(u.z), bf16_lo(u.w), bf16_hi(u.w));
#else
            uint g = r * (pc.cols / pc.group) + (c * 8u) / pc.group;
            float s = pc.sc.v[g], b = pc.bi.v[g];
#if WT == 3
            uint q = pc.w.v[e / 8u];
            w0 = vec4(q & 15u, (q >> 4) & 15u, (q >> 8) & 15u, (q >> 12) & 15u);
            w1 = vec4((q >> 16) & 15u, (q >> 20) & 15u, (q >> 24) & 15u, q >> 28);
#elif WT == 4
            uvec2 q = U32x2(pc.w).v[e / 8u];
            w0 = vec4(q.x & 255u, (q.x >> 8) & 255u, (q.x >> 16) & 255u, q.x >> 24);
            w1 = vec4(q.y & 255u, (q.y >> 8) & 255u, (q.y >> 16) & 255u, q.y >> 24);
#else
            uint q = pc.w.v[e / 16u] >> ((e % 16u) * 2u);
            w0 = vec4(q & 3u, (q >> 2) & 3u, (q >> 4) & 3u, (q >> 6) & 3u);
            w1 = vec4((q >> 8) & 3u, (q >> 10) & 3u, (q >> 12) & 3u, (q >> 14) & 3u);
#endif
            w0 = w0 * s + b;
            w1 = w1 * s + b;
#endif
            for (uint t = 0; t < TN; t++) {
                if (t < nt) {
                    uint xi = ((t0 + t) * pc.cols + c * 8u) / 4u;
                    acc[t] += dot(w0, pc.x.v[xi]) + dot(w1, pc.x.v[xi + 1u]);
                }
            }
        }
        const float b = pc.has_bias != 0u ? pc.bias.v[r] : 0.0;
        for (uint t = 0; t < TN; t++) {
            float s = subgroupAdd(acc[t]) + b;
            if (subgroupElect() && t < nt) pc.y.v[(t0 + t) * pc.rows + r] = s;
        }
    }
}
