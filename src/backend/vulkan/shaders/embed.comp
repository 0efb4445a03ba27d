#version 450
// out (n, cols) = rows of the weight table for token ids (out-of-range ids give 0).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#include "weight.glsl"

layout(local_size_x = 256) in;
layout(push_constant, std430) uniform Params {
    U32 w; F32 sc; F32 bi; I32 ids; F32 y;
    uint rows, cols, n, group;
} pc;

void main() {
    uint c = gl_GlobalInvocationID.x, t = gl_GlobalInvocationID.y;
    if (c >= pc.cols || t >= pc.n) return;
    int id = pc.ids.v[t];
    float v = 0.0;
    if (id >= 0 && uint(id) < pc.rows) v = weight_at(pc.w, pc.sc, pc.bi, pc.cols, pc.group, uint(id), c);
    pc.y.v[t * pc.cols + c] = v;
}
