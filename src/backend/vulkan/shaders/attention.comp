#version 450
// Causal paged attention. Workgroup (x = token*n_heads + head, y = split):
// the split covers cache positions [split*split_len, ...) up to the token's
// position; they are walked in tiles of 64 with an online softmax. With one
// split the result goes straight to out (n_tokens, n_heads, head_dim); with
// several, each writes (max, sum, unnormalized o[head_dim]) to part and
// attn_combine.comp merges them (decode over long contexts).
// Arithmetic is f32 throughout, also with an f16 cache (KV16).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

#define TILE 64
#define MAXD 256
#define DPT (MAXD / TILE)   // head dims per invocation

layout(local_size_x = TILE) in;
layout(push_constant, std430) uniform Params {
    F32 q; U32 kc; U32 vc; F32 out_; I32 pos; I32 seq_start; I32 table;
    uint n_heads, n_kv_heads, head_dim, block_size, max_blocks, n_seqs, n_splits, split_len;
    float scale;
} pc;

shared float qs[MAXD];
shared float sc[TILE];

float kv_at(U32 c, uint i) {
#if KV16
    return f16_at(c, i);
#else
    return uintBitsToFloat(c.v[i]);
#endif
}

void main() {
    const uint item = gl_WorkGroupID.x, split = gl_WorkGroupID.y, tid = gl_LocalInvocationIndex;
    const uint t = item / pc.n_heads, h = item % pc.n_heads;
    const uint kvh = h / (pc.n_heads / pc.n_kv_heads), hd = pc.head_dim;
    // sequence of token t: last s with seq_start[s] <= t
    uint lo = 0, hi = pc.n_seqs;
    while (hi - lo > 1u) { uint mid = (lo + hi) / 2u; if (uint(pc.seq_start.v[mid]) <= t) lo = mid; else hi = mid; }
    const uint table = lo * pc.max_blocks;
    const uint n_ctx = uint(pc.pos.v[t]) + 1u;
    const uint begin = split * pc.split_len, end = min(n_ctx, begin + pc.split_len);

    for (uint d = tid; d < hd; d += TILE) qs[d] = pc.q.v[item * hd + d];
    float o[DPT];
    for (uint i = 0; i < DPT; i++) o[i] = 0.0;
    float m = -1.0 / 0.0, l = 0.0;
    barrier();
    for (uint p0 = begin; p0 < end; p0 += TILE) {
        uint p = p0 + tid;
        float s = -1.0 / 0.0;
        if (p < end) {
            uint blk = uint(pc.table.v[table + p / pc.block_size]);
            uint base = ((blk * pc.n_kv_heads + kvh) * pc.block_size + p % pc.block_size) * hd;
            float d = 0.0;
            for (uint i = 0; i < hd; i++) d += qs[i] * kv_at(pc.kc, base + i);
            s = d * pc.scale;
        }
        sc[tid] = s;
        barrier();
        float tmax = m;
        uint cnt = min(uint(TILE), end - p0);
        for (uint j = 0; j < cnt; j++) tmax = max(tmax, sc[j]);
        barrier();
        sc[tid] = tid < cnt ? exp(s - tmax) : 0.0;
        barrier();
        float alpha = exp(m - tmax);
        float tsum = 0.0;
        for (uint j = 0; j < cnt; j++) tsum += sc[j];
        l = l * alpha + tsum;
        m = tmax;
        for (uint i = 0; i < DPT; i++) o[i] *= alpha;
        for (uint j = 0; j < cnt; j++) {
            uint pj = p0 + j;
            uint blk = uint(pc.table.v[table + pj / pc.block_size]);
            uint base = ((blk * pc.n_kv_heads + kvh) * pc.block_size + pj % pc.block_size) * hd;
            float wj = sc[j];
            for (uint i = 0; i < DPT; i++) {
                uint d = tid + i * TILE;
                if (d < hd) o[i] += wj * kv_at(pc.vc, base + d);
            }
        }
        barrier();
    }
    if (pc.n_splits == 1u) {
        float inv = 1.0 / l;
        for (uint i = 0; i < DPT; i++) {
            uint d = tid + i * TILE;
            if (d < hd) pc.out_.v[item * hd + d] = o[i] * inv;
        }
    } else {
        uint base = (item * pc.n_splits + split) * (hd + 2u);
        if (tid == 0u) { pc.out_.v[base] = m; pc.out_.v[base + 1u] = l; }
        for (uint i = 0; i < DPT; i++) {
            uint d = tid + i * TILE;
            if (d < hd) pc.out_.v[base + 2u + d] = o[i];
        }
    }
}
