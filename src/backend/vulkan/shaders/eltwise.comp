#version 450
// Elementwise ops, OP chosen at build time:
//   OP 0 add:      x[i] += y[i]
//   OP 1 swiglu:   out[i] = silu(a[i]) * b[i]      (x = gate, y = up, z = out)
//   OP 2 add_bias: x[t*dim + i] += bias[i]         (y = bias)
//   OP 3 get_rows: z[r*dim + i] = x[rows[r]*dim + i]   (w = rows)
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(local_size_x = 256) in;
layout(push_constant, std430) uniform Params {
    F32 x; F32 y; F32 z; I32 w;
    uint n, dim;
} pc;

void main() {
    uint i = gl_GlobalInvocationID.x + gl_GlobalInvocationID.y * 65535u * 256u;
    if (i >= pc.n) return;
#if OP == 0
    pc.x.v[i] += pc.y.v[i];
#elif OP == 1
    float g = pc.x.v[i];
    pc.z.v[i] = g / (1.0 + exp(-g)) * pc.y.v[i];
#elif OP == 2
    pc.x.v[i] += pc.y.v[i % pc.dim];
#else
    uint r = i / pc.dim, c = i % pc.dim;
    pc.z.v[i] = pc.x.v[uint(pc.w.v[r]) * pc.dim + c];
#endif
}
