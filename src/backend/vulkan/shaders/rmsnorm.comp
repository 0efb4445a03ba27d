#version 450
// out (rows, dim) = x / sqrt(mean(x^2) + eps) * w, in one pass over x: each
// invocation keeps up to VPT of its elements in registers between the sum of
// squares and the write (longer rows re-read the rest). per_sg = 1: one
// subgroup per row, gl_NumSubgroups rows per workgroup (short rows such as
// per-head norms), reduced with subgroupAdd; per_sg = 0: one workgroup per
// row, subgroupAdd then shared memory. out may equal x.
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#include "common.glsl"

#define WG 256
#define VPT 8
layout(local_size_x = WG) in;
layout(push_constant, std430) uniform Params {
    F32 x; F32 w; F32 y;
    uint rows, dim; float eps; uint per_sg;
} pc;

shared float partial[WG];

void main() {
    const uint wg = gl_WorkGroupID.x + gl_WorkGroupID.y * 65535u;
    uint r, t, T;
    if (pc.per_sg != 0u) { r = wg * gl_NumSubgroups + gl_SubgroupID; t = gl_SubgroupInvocationID; T = gl_SubgroupSize; }
    else { r = wg; t = gl_LocalInvocationIndex; T = WG; }
    if (r >= pc.rows) return;   // per_sg = 0: the whole workgroup
    const uint base = r * pc.dim, dim = pc.dim;
    float xv[VPT];
    float ss = 0.0;
    for (uint k = 0; k < VPT; k++) {
        uint i = t + k * T;
        xv[k] = i < dim ? pc.x.v[base + i] : 0.0;
        ss += xv[k] * xv[k];
    }
    for (uint i = t + VPT * T; i < dim; i += T) { float a = pc.x.v[base + i]; ss += a * a; }
    ss = subgroupAdd(ss);
    if (pc.per_sg == 0u) {
        if (subgroupElect()) partial[gl_SubgroupID] = ss;
        barrier();
        ss = 0.0;
        for (uint s = 0; s < gl_NumSubgroups; s++) ss += partial[s];
    }
    const float inv = 1.0 / sqrt(ss / float(dim) + pc.eps);
    for (uint i = t + VPT * T; i < dim; i += T) pc.y.v[base + i] = pc.x.v[base + i] * inv * pc.w.v[i];
    for (uint k = 0; k < VPT; k++) {
        uint i = t + k * T;
        if (i < dim) pc.y.v[base + i] = xv[k] * inv * pc.w.v[i];
    }
}
