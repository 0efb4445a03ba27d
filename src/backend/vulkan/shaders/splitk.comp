#version 450
// The end of a split-K GEMM (gemm_cm.comp or gemm.comp with grid z > 1): y[i] = the sum of
// the splits' partial results part[z][i] in order z = 0, 1, ... (i over n x
// rows), plus the bias (flags 1), also added to res (flags 2).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(local_size_x = 256) in;
layout(push_constant, std430) uniform Params {
    F32 part; F32 y; F32 bias; F32 res;
    uint total, rows, splits, flags;
} pc;

void main() {
    uint i = gl_GlobalInvocationID.x + gl_GlobalInvocationID.y * 65535u * 256u;
    if (i >= pc.total) return;
    float s = 0.0;
    for (uint z = 0; z < pc.splits; z++) s += pc.part.v[z * pc.total + i];
    if ((pc.flags & 1u) != 0u) s += pc.bias.v[i % pc.rows];
    pc.y.v[i] = s;
    if ((pc.flags & 2u) != 0u) pc.res.v[i] += s;
}
