#version 450
// out (rows, dim) = x / sqrt(mean(x^2) + eps) * w; one workgroup per row. out may equal x.
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#include "common.glsl"

layout(local_size_x = 128) in;
layout(push_constant, std430) uniform Params {
    F32 x; F32 w; F32 y;
    uint rows, dim; float eps;
} pc;

shared float partial[128];

void main() {
    uint r = gl_WorkGroupID.x + gl_WorkGroupID.y * 65535u;
    if (r >= pc.rows) return;
    uint base = r * pc.dim;
    float ss = 0.0;
    for (uint i = gl_LocalInvocationIndex; i < pc.dim; i += 128u) { float v = pc.x.v[base + i]; ss += v * v; }
    ss = subgroupAdd(ss);
    if (subgroupElect()) partial[gl_SubgroupID] = ss;
    barrier();
    float total = 0.0;
    for (uint s = 0; s < gl_NumSubgroups; s++) total += partial[s];
    float inv = 1.0 / sqrt(total / float(pc.dim) + pc.eps);
    for (uint i = gl_LocalInvocationIndex; i < pc.dim; i += 128u)
        pc.y.v[base + i] = pc.x.v[base + i] * inv * pc.w.v[i];
}
