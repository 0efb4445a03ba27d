#version 450
// One token id per row of x (rows, cols): the index of the row's first
// maximum (NaNs never win, a row of NaNs gives 0: vm_argmax), or, where the
// row's parameters give a temperature T > 0, the inverse CDF of
// softmax(x / T) at the row's uniform u (vm_draw_u's definition, summed in
// f32 in this shader's order).
// groups == 1: one workgroup per row (grid x, y: rows). groups > 1: grid
// (groups, rows); each workgroup takes a run of the row's columns, writes
// its first maximum (value, index) to part and counts itself done; the last
// of the row's groups (an atomic count per row, which it sets back to 0)
// merges them (the larger value, then the smaller index: the row's first
// maximum whatever the order) and goes on alone. For a draw, each group also
// sums its mass relative to its own maximum; the last one rescales those to
// the row's maximum, finds the group where the CDF reaches u, and draws
// within that group's columns as the single workgroup does within the row.
//   params (may be 0): per row 4 words {T (f32), u (f32), u as f64 (2 words, host only)}
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#include "common.glsl"

#define WG 256
#define NONE 0xffffffffu
layout(local_size_x = WG) in;
layout(buffer_reference, std430, buffer_reference_align = 4) coherent buffer U32C { uint v[]; };
layout(push_constant, std430) uniform Params {
    F32 x; I32 y; F32 params;
    U32C part; U32C count;   // groups > 1: per (row, group) {max bits, index, mass bits}; per row, groups done
    uint rows, cols, has_params, groups;
} pc;

shared float sv[WG];
shared uint si[WG];
shared float s_sum[WG];
shared uint s_chunk;
shared float s_before, s_target;
shared bool s_last;

#define NEG_INF uintBitsToFloat(0xff800000u)

// The workgroup's first maximum of (value, index) pairs given per
// invocation (index NONE: none): the larger value, then the smaller index.
void wg_first_max(float best, uint bi, out float bm, out uint b) {
    float m = subgroupMax(bi == NONE ? NEG_INF : best);
    uint i = subgroupMin((bi != NONE && best == m) ? bi : NONE);
    if (subgroupElect()) { sv[gl_SubgroupID] = m; si[gl_SubgroupID] = i; }
    barrier();
    bm = NEG_INF;
    b = NONE;
    for (uint s = 0; s < gl_NumSubgroups; s++) {
        if (si[s] == NONE) continue;
        if (b == NONE || sv[s] > bm || (sv[s] == bm && si[s] < b)) { bm = sv[s]; b = si[s]; }
    }
    barrier();   // sv, si free again
}

// Thread 0: where the CDF over the masses s_sum[0, n) (entries not > 0
// skipped), starting at before, reaches the target (given, or u times the
// masses' total): s_chunk (NONE: no mass), the mass before it (s_before) and
// the target (s_target). Rounding past the end picks the last entry with mass.
void cdf_pick(uint n, bool given, float target, float before, float u) {
    if (!given) {
        float total = 0.0;
        for (uint k = 0; k < n; k++) if (s_sum[k] > 0.0) total += s_sum[k];
        target = u * total;
    }
    uint last = NONE, k = 0;
    for (; k < n; k++) {
        if (!(s_sum[k] > 0.0)) continue;
        last = k;
        if (target < before + s_sum[k]) break;
        before += s_sum[k];
    }
    if (k == n) {
        k = last;
        if (last != NONE) before -= s_sum[last];
    }
    s_chunk = k; s_before = before; s_target = target;
}

void main() {
    const bool grouped = pc.groups > 1u;
    const uint r = grouped ? gl_WorkGroupID.y : gl_WorkGroupID.x + gl_WorkGroupID.y * 65535u;
    if (r >= pc.rows) return;
    const uint base = r * pc.cols, t = gl_LocalInvocationIndex, cols = pc.cols;
    // ---- the first maximum (of this workgroup's run of columns when grouped)
    const uint run = grouped ? (cols + pc.groups - 1u) / pc.groups : cols, g = grouped ? gl_WorkGroupID.x : 0u;
    const uint c0 = min(g * run, cols), c1 = min(c0 + run, cols);
    float best = NEG_INF;
    uint bi = NONE;
    for (uint c = c0 + t; c < c1; c += WG) {       // ascending: strict > keeps the first
        float a = pc.x.v[base + c];
        if (a > best || (bi == NONE && a == best)) { best = a; bi = c; }
    }
    float bm;
    uint b;
    wg_first_max(best, bi, bm, b);
    const float T = pc.has_params != 0u ? pc.params.v[4u * r] : 0.0;
    const bool draw = T >= 1e-5;
    if (grouped) {
        // this group's mass relative to its own maximum (a draw only)
        float acc = 0.0;
        const float mg = bm == NEG_INF ? 0.0 : bm / T;
        if (draw)
            for (uint c = c0 + t; c < c1; c += WG) acc += exp(pc.x.v[base + c] / T - mg);
        if (draw) {
            s_sum[t] = acc;
            barrier();
            if (t == 0u) {
                float m = 0.0;
                for (uint k = 0; k < WG; k++) m += s_sum[k];
                s_before = m;
            }
            barrier();
        }
        const uint slot = 3u * (r * pc.groups + g);
        if (t == 0u) {
            pc.part.v[slot] = floatBitsToUint(bm);
            pc.part.v[slot + 1u] = b;
            pc.part.v[slot + 2u] = floatBitsToUint(draw ? s_before : 0.0);
        }
        memoryBarrierBuffer();
        barrier();
        if (t == 0u) s_last = atomicAdd(pc.count.v[r], 1u) == pc.groups - 1u;
        barrier();
        if (!s_last) return;
        memoryBarrierBuffer();
        best = NEG_INF;
        bi = NONE;
        for (uint k = t; k < pc.groups; k += WG) {
            const float a = uintBitsToFloat(pc.part.v[3u * (r * pc.groups + k)]);
            const uint ai = pc.part.v[3u * (r * pc.groups + k) + 1u];
            if (ai != NONE && (bi == NONE || a > best || (a == best && ai < bi))) { best = a; bi = ai; }
        }
        wg_first_max(best, bi, bm, b);
        if (t == 0u) pc.count.v[r] = 0u;   // ready for the next dispatch
    }
    if (!draw) {                                      // greedy
        if (t == 0u) pc.y.v[r] = b == NONE ? 0 : int(b);
        return;
    }
    // ---- the draw: p_i = exp(x_i / T - max / T)
    const float mT = bm == NEG_INF ? 0.0 : bm / T;
    // the columns [r0, r1) to draw in, the mass before them and the target
    // (grouped: the group where the CDF of the rescaled group masses reaches u)
    uint r0 = 0u, r1 = cols;
    if (grouped) {
        if (t < pc.groups) {   // (groups <= WG)
            const uint slot = 3u * (r * pc.groups + t);
            s_sum[t] = uintBitsToFloat(pc.part.v[slot + 2u]) * exp(uintBitsToFloat(pc.part.v[slot]) / T - mT);
        }
        barrier();
        if (t == 0u) cdf_pick(pc.groups, false, 0.0, 0.0, pc.params.v[4u * r + 1u]);
        barrier();
        if (s_chunk == NONE) {                        // no mass at all
            if (t == 0u) pc.y.v[r] = b == NONE ? 0 : int(b);
            return;
        }
        r0 = min(s_chunk * run, cols);
        r1 = min(r0 + run, cols);
    }
    const float pre = grouped ? s_before : 0.0, tgt = grouped ? s_target : 0.0;
    barrier();   // s_sum, s_chunk, s_before, s_target read: free again
    // thread t sums a contiguous chunk of [r0, r1)
    const uint chunk = (r1 - r0 + WG - 1u) / WG, lo = min(r0 + t * chunk, r1), hi = min(lo + chunk, r1);
    float acc = 0.0;
    for (uint c = lo; c < hi; c++) acc += exp(pc.x.v[base + c] / T - mT);
    s_sum[t] = acc;
    barrier();
    if (t == 0u) cdf_pick(WG, grouped, tgt, pre, pc.params.v[4u * r + 1u]);
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
