#version 450
// Rotary embedding in place on x (n, n_heads, head_dim); one invocation per
// (token, pair i, head) (rope.glsl: the angle, sin and cos).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(local_size_x = 64) in;
layout(push_constant, std430) uniform Params {
    F32 x; I32 pos; F32 inv_freq;
    uint n, n_heads, head_dim, half_rot, interleaved; float theta_scale;
} pc;

#include "rope.glsl"

void main() {
    uint i = gl_GlobalInvocationID.x, t = gl_GlobalInvocationID.y;
    if (i >= pc.half_rot || t >= pc.n) return;
    float cs, sn;
    sincos_accurate(rope_angle(float(pc.pos.v[t]), i, pc.theta_scale, pc.inv_freq), sn, cs);
    uint a = pc.interleaved != 0u ? 2u * i : i;
    uint b = pc.interleaved != 0u ? 2u * i + 1u : i + pc.half_rot;
    const uint h = gl_GlobalInvocationID.z;   // one head a workgroup layer: no chain of loads after stores
    uint base = (t * pc.n_heads + h) * pc.head_dim;
    float x0 = pc.x.v[base + a], x1 = pc.x.v[base + b];
    pc.x.v[base + a] = x0 * cs - x1 * sn;
    pc.x.v[base + b] = x1 * cs + x0 * sn;
}
