#version 450
// One token id per row of x (rows, cols): the index of the row's first
// maximum (NaNs never win, a row of NaNs gives 0: vm_argmax), or, where the
// row's parameters give a temperature T > 0, the inverse CDF of
// softmax(x / T) at the row's uniform u (vm_draw_u's definition, summed in
// f32 in this shader's order). One workgroup per row.
//   params (may be 0): per row 4 words {T (f32), u (f32), u as f64 (2 words, host only)}
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#include "common.glsl"

#define WG 256
#define NONE 0xffffffffu
layout(local_size_x = WG) in;
layout(push_constant, std430) uniform Params {
    F32 x; I32 y; F32 params;
    uint rows, cols, has_params;
} pc;

shared float sv[WG];
shared uint si[WG];
shared float s_sum[WG];
shared uint s_chunk;
shared float s_before, s_target;

#define NEG_INF uintBitsToFloat(0xff800000u)

void main() {
    const uint r = gl_WorkGroupID.x + gl_WorkGroupID.y * 65535u;
    if (r >= pc.rows) return;
    const uint base = r * pc.cols, t = gl_LocalInvocationIndex, cols = pc.cols;
    // ---- the first maximum
    float best = NEG_INF;
    uint bi = NONE;
    for (uint c = t; c < cols; c += WG) {          // ascending: strict > keeps the first
        float a = pc.x.v[base + c];
        if (a > best || (bi == NONE && a == best)) { best = a; bi = c; }
    }
    float m = subgroupMax(bi == NONE ? NEG_INF : best);
    uint i = subgroupMin((bi != NONE && best == m) ? bi : NONE);
    if (subgroupElect()) { sv[gl_SubgroupID] = m; si[gl_SubgroupID] = i; }
    barrier();
    float bm = NEG_INF;
    uint b = NONE;
    for (uint s = 0; s < gl_NumSubgroups; s++) {
        if (si[s] == NONE) continue;
        if (b == NONE || sv[s] > bm || (sv[s] == bm && si[s] < b)) { bm = sv[s]; b = si[s]; }
    }
    const float T = pc.has_params != 0u ? pc.params.v[4u * r] : 0.0;
    if (!(T >= 1e-5)) {                               // greedy
        if (t == 0u) pc.y.v[r] = b == NONE ? 0 : int(b);
        return;
    }
    // ---- the draw: p_i = exp(x_i / T - max / T); thread t sums a contiguous chunk
    const float mT = bm == NEG_INF ? 0.0 : bm / T;
    const uint chunk = (cols + WG - 1u) / WG, lo = min(t * chunk, cols), hi = min(lo + chunk, cols);
    float acc = 0.0;
    for (uint c = lo; c < hi; c++) acc += exp(pc.x.v[base + c] / T - mT);
    s_sum[t] = acc;
    barrier();
    if (t == 0u) {
        float total = 0.0;
        for (uint k = 0; k < WG; k++) total += s_sum[k];
        const float target = pc.params.v[4u * r + 1u] * total;
        float before = 0.0;
        uint last = NONE, k = 0;
        for (; k < WG; k++) {
            if (!(s_sum[k] > 0.0)) continue;
            last = k;
            if (target < before + s_sum[k]) break;
            before += s_sum[k];
        }
        if (k == WG) {                                // rounding: the last chunk with mass
            k = last;
            if (last != NONE) before -= s_sum[last];
        }
        s_chunk = k; s_before = before; s_target = target;
    }
    barrier();
    if (s_chunk == NONE) {                            // no mass at all
        if (t == 0u) pc.y.v[r] = b == NONE ? 0 : int(b);
        return;
    }
    if (t == s_chunk) {
        float in_ = s_before;
        int pick = -1;
        for (uint c = lo; c < hi; c++) {
            float p = exp(pc.x.v[base + c] / T - mT);
            if (p == 0.0) continue;
            in_ += p;
            pick = int(c);
            if (s_target < in_) break;
        }
        pc.y.v[r] = pick >= 0 ? pick : (b == NONE ? 0 : int(b));
    }
}
