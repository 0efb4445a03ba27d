#version 450
// rope.comp on q and on k, then cache_write.comp of k and v, in one dispatch
// (the decoder's rope(q), rope(k), cache_write(k, v) with nothing between):
// one invocation per (token, pair i, head) rotates pair i of a q or k head in
// place, and for a k head writes k's and v's pair to the caches at the
// token's slot (-1: skip). The same arithmetic as the three dispatches. KV16: f16 caches, for
// interleaved pairs only (the pair is one packed word).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#include "rope.glsl"

layout(local_size_x = 64) in;
layout(push_constant, std430) uniform Params {
    F32 q; F32 k; F32 v; I32 pos; F32 inv_freq; I32 slots; U32 kc; U32 vc;
    uint n, n_heads, n_kv_heads, head_dim, half_rot, interleaved, block_size; float theta_scale; uint n_blocks;
} pc;

void main() {
    uint i = gl_GlobalInvocationID.x, t = gl_GlobalInvocationID.y;
    if (i >= pc.half_rot || t >= pc.n) return;
    float cs, sn;
    sincos_accurate(rope_angle(float(pc.pos.v[t]), i, pc.theta_scale, pc.inv_freq), sn, cs);
    uint a = pc.interleaved != 0u ? 2u * i : i;
    uint b = pc.interleaved != 0u ? 2u * i + 1u : i + pc.half_rot;
    // workgroup z: q head z, or kv head z - n_heads (one head each: no chain of loads after stores)
    const uint z = gl_GlobalInvocationID.z;
    if (z < pc.n_heads) {
        uint base = (t * pc.n_heads + z) * pc.head_dim;
        float x0 = pc.q.v[base + a], x1 = pc.q.v[base + b];
        pc.q.v[base + a] = x0 * cs - x1 * sn;
        pc.q.v[base + b] = x1 * cs + x0 * sn;
        return;
    }
    const uint h = z - pc.n_heads;
    int slot = pc.slots.v[t];
    uint blk = uint(max(slot, 0)) / pc.block_size, off = uint(max(slot, 0)) % pc.block_size;
    uint base = (t * pc.n_kv_heads + h) * pc.head_dim;
    float x0 = pc.k.v[base + a], x1 = pc.k.v[base + b], v0 = pc.v.v[base + a], v1 = pc.v.v[base + b];
    float k0 = x0 * cs - x1 * sn, k1 = x1 * cs + x0 * sn;
    pc.k.v[base + a] = k0;
    pc.k.v[base + b] = k1;
    if (slot < 0) return;
    uint dst = ((h * pc.n_blocks + blk) * pc.block_size + off) * pc.head_dim;
#if KV16
    pc.kc.v[(dst + a) / 2u] = packHalf2x16(vec2(k0, k1));
    pc.vc.v[(dst + a) / 2u] = packHalf2x16(vec2(v0, v1));
#else
    pc.kc.v[dst + a] = floatBitsToUint(k0);
    pc.kc.v[dst + b] = floatBitsToUint(k1);
    pc.vc.v[dst + a] = floatBitsToUint(v0);
    pc.vc.v[dst + b] = floatBitsToUint(v1);
#endif
}
