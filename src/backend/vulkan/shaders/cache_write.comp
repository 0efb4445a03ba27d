#version 450
// Writes k, v (n_tokens, n_kv_heads, head_dim) into the paged caches
// [n_kv_heads][n_blocks][block_size][head_dim] at slot_mapping (-1: skip).
// KV16: the caches hold f16 (packed pairs; head_dim is even).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(local_size_x = 64) in;
layout(push_constant, std430) uniform Params {
    F32 k; F32 v; I32 slots; U32 kc; U32 vc;
    uint n_tokens, n_kv_heads, head_dim, block_size, n_blocks;
} pc;

void main() {
    uint t = gl_WorkGroupID.y, h = gl_WorkGroupID.z;
    int slot = pc.slots.v[t];
    if (slot < 0) return;
    uint blk = uint(slot) / pc.block_size, off = uint(slot) % pc.block_size;
    uint dst = ((h * pc.n_blocks + blk) * pc.block_size + off) * pc.head_dim;
    uint src = (t * pc.n_kv_heads + h) * pc.head_dim;
#if KV16
    uint i = gl_GlobalInvocationID.x * 2u;
    if (i >= pc.head_dim) return;
    pc.kc.v[(dst + i) / 2u] = packHalf2x16(vec2(pc.k.v[src + i], pc.k.v[src + i + 1u]));
    pc.vc.v[(dst + i) / 2u] = packHalf2x16(vec2(pc.v.v[src + i], pc.v.v[src + i + 1u]));
#else
    uint i = gl_GlobalInvocationID.x;
    if (i >= pc.head_dim) return;
    pc.kc.v[dst + i] = floatBitsToUint(pc.k.v[src + i]);
    pc.vc.v[dst + i] = floatBitsToUint(pc.v.v[src + i]);
#endif
}
