#version 450
// Causal paged attention. Workgroup (x = token*n_heads + head, y = split):
// the split covers cache positions [split*split_len, ...) up to the token's
// position. Each subgroup walks its own positions, U at a time: its lanes
// hold the head dims as pairs (lane, lane+SG, ...), so K and V rows are read
// coalesced and the dot is a subgroupAdd; every subgroup keeps an online
// softmax (max, sum, o) that the workgroup merges at the end. With one split
// the result goes straight to out (n_tokens, n_heads, head_dim); with
// several, each writes (max, sum, unnormalized o[head_dim]) to part, and the
// last of an item's splits to finish (an atomic count per item, which it
// sets back to 0) merges them into out (max, then the weighted sums): decode
// attention is one dispatch. head_dim must be even.
// Arithmetic is f32 throughout; with an f16 cache (KV16) q is rounded to f16
// first, as the CPU does (the softmax weights are not: the CPU rounds them too).
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#include "common.glsl"

#define WG 128
#define MAXP 128            // head_dim / 2 at most
#define U 4                 // positions per subgroup per step
#define MB 4                // subgroups merged per round (all four of 32 lanes at once)
layout(constant_id = 0) const uint SG = 32u;   // the subgroup size (set at pipeline creation)
const uint PPL = (MAXP + SG - 1u) / SG;      // dim pairs per lane

layout(local_size_x = WG) in;
#if KV16
#define KVT U32
#else
#define KVT F32x2
#endif
// the split partials and the per-item counts: coherent, read by another workgroup
layout(buffer_reference, std430, buffer_reference_align = 4) coherent buffer F32C { float v[]; };
layout(buffer_reference, std430, buffer_reference_align = 4) coherent buffer U32C { uint v[]; };
layout(push_constant, std430) uniform Params {
    F32x2 q; KVT kc; KVT vc; F32C out_; I32 pos; I32 seq_start; I32 table;
    uint n_heads, n_kv_heads, head_dim, block_size, max_blocks, n_seqs, n_splits, split_len;
    float scale;
    U32C count; F32 final_;   // several splits: per-item counts, and where the merged result goes
    uint n_blocks;            // blocks in the cache, [n_kv_heads][n_blocks][block_size][head_dim] (block ids are clamped below it)
} pc;

shared float sm_m[WG], sm_l[WG];
shared vec2 so[MAXP], sob[MB][MAXP];
shared bool sm_last;

vec2 kv2(KVT c, uint i) {
#if KV16
    return unpackHalf2x16(c.v[i]);
#else
    return c.v[i];
#endif
}

void main() {
    const uint item = gl_WorkGroupID.x, split = gl_WorkGroupID.y, tid = gl_LocalInvocationIndex;
    const uint lane = gl_SubgroupInvocationID, sg = gl_SubgroupID, nsg = gl_NumSubgroups;
    const uint t = item / pc.n_heads, h = item % pc.n_heads;
    const uint kvh = h / (pc.n_heads / pc.n_kv_heads), hd = pc.head_dim, hp = hd / 2u;
    // sequence of token t: last s with seq_start[s] <= t
    uint lo = 0, hi = pc.n_seqs;
    while (hi - lo > 1u) { uint mid = (lo + hi) / 2u; if (uint(pc.seq_start.v[mid]) <= t) lo = mid; else hi = mid; }
    const uint table = lo * pc.max_blocks;
    const uint n_ctx = uint(pc.pos.v[t]) + 1u;
    const uint begin = split * pc.split_len, end = min(n_ctx, begin + pc.split_len);

    vec2 qr[PPL], o[PPL];
    for (uint k = 0; k < PPL; k++) {
        uint d = k * SG + lane;
        qr[k] = d < hp ? pc.q.v[item * hp + d] : vec2(0.0);
#if KV16
        qr[k] = unpackHalf2x16(packHalf2x16(qr[k]));   // q in f16, as the CPU's (and llama.cpp's) f16-cache dot
#endif
        o[k] = vec2(0.0);
    }
    float m = -1.0 / 0.0, l = 0.0;
    for (uint p0 = begin + sg * U; p0 < end; p0 += nsg * U) {
        float s[U];
        vec2 vv[U][PPL];   // V rows loaded with K's, before the softmax needs them
        for (uint j = 0; j < U; j++) {
            // loaded whether or not p is in the context (its table entry
            // clamped into the table, its block into the cache), so that the
            // loads need not wait for the token's position
            const uint p = p0 + j;
            const uint blk = min(uint(pc.table.v[table + min(p / pc.block_size, pc.max_blocks - 1u)]), pc.n_blocks - 1u);
            const uint rb = ((kvh * pc.n_blocks + blk) * pc.block_size + p % pc.block_size) * hp;
            float d = 0.0;
            for (uint k = 0; k < PPL; k++) {
                uint dd = k * SG + lane;
                vv[j][k] = vec2(0.0);
                if (dd < hp) {
                    d += dot(qr[k], kv2(pc.kc, rb + dd));
                    vv[j][k] = kv2(pc.vc, rb + dd);
                }
            }
            s[j] = p < end ? d : 0.0;
        }
        float mx = m;
        for (uint j = 0; j < U; j++) {
            s[j] = subgroupAdd(s[j]) * pc.scale;
            if (p0 + j < end) mx = max(mx, s[j]);
        }
        float alpha = exp(m - mx), ws = 0.0;
        for (uint j = 0; j < U; j++) { s[j] = p0 + j < end ? exp(s[j] - mx) : 0.0; ws += s[j]; }
        l = l * alpha + ws;
        m = mx;
        for (uint k = 0; k < PPL; k++) o[k] *= alpha;
        for (uint j = 0; j < U; j++) {
            if (p0 + j < end) {
                for (uint k = 0; k < PPL; k++) {
                    uint dd = k * SG + lane;
                    if (dd < hp) o[k] += s[j] * vv[j][k];
                }
            }
        }
    }
    // merge the subgroups
    if (subgroupElect()) { sm_m[sg] = m; sm_l[sg] = l; }
    for (uint d = tid; d < MAXP; d += WG) so[d] = vec2(0.0);
    barrier();
    float M = -1.0 / 0.0, L = 0.0;
    for (uint i = 0; i < nsg; i++) M = max(M, sm_m[i]);
    for (uint i = 0; i < nsg; i++) if (sm_m[i] > -1.0 / 0.0) L += sm_l[i] * exp(sm_m[i] - M);
    float f = m > -1.0 / 0.0 ? exp(m - M) : 0.0;
    // so += o * f of each subgroup in turn, MB subgroups a round
    for (uint i0 = 0; i0 < nsg; i0 += MB) {
        if (sg >= i0 && sg < i0 + MB)
            for (uint k = 0; k < PPL; k++) {
                uint dd = k * SG + lane;
                if (dd < hp) sob[sg - i0][dd] = f > 0.0 ? o[k] * f : vec2(0.0);
            }
        barrier();
        for (uint d = tid; d < hp; d += WG)
            for (uint i = i0; i < min(i0 + MB, nsg); i++) so[d] += sob[i - i0][d];
        barrier();
    }
    if (pc.n_splits == 1u) {
        float inv = 1.0 / L;
        for (uint d = tid; d < hp; d += WG) {
            vec2 r = so[d] * inv;
            pc.out_.v[item * hd + 2u * d] = r.x;
            pc.out_.v[item * hd + 2u * d + 1u] = r.y;
        }
        return;
    }
    uint base = (item * pc.n_splits + split) * (hd + 2u);
    if (tid == 0u) { pc.out_.v[base] = M; pc.out_.v[base + 1u] = L; }
    for (uint d = tid; d < hp; d += WG) {
        pc.out_.v[base + 2u + 2u * d] = so[d].x;
        pc.out_.v[base + 3u + 2u * d] = so[d].y;
    }
    // the last split of the item to get here merges them all
    memoryBarrierBuffer();
    barrier();
    if (tid == 0u) sm_last = atomicAdd(pc.count.v[item], 1u) == pc.n_splits - 1u;
    barrier();
    if (!sm_last) return;
    memoryBarrierBuffer();
    const uint stride = hd + 2u, b0 = item * pc.n_splits * stride;
    float mt = -1.0 / 0.0;
    for (uint s = 0; s < pc.n_splits; s++) mt = max(mt, pc.out_.v[b0 + s * stride]);
    float lt = 0.0;
    for (uint s = 0; s < pc.n_splits; s++) {
        float ms = pc.out_.v[b0 + s * stride];
        if (ms > -1.0 / 0.0) lt += pc.out_.v[b0 + s * stride + 1u] * exp(ms - mt);
    }
    for (uint d = tid; d < hd; d += WG) {
        float acc = 0.0;
        for (uint s = 0; s < pc.n_splits; s++) {
            float ms = pc.out_.v[b0 + s * stride];
            if (ms > -1.0 / 0.0) acc += pc.out_.v[b0 + s * stride + 2u + d] * exp(ms - mt);
        }
        pc.final_.v[item * hd + d] = acc / lt;
    }
    if (tid == 0u) pc.count.v[item] = 0u;   // ready for the next dispatch
}
