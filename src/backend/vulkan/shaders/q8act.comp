#version 450
// llama.cpp's 8-bit activations for GGUF block weights, as values: every
// 32-element block of x (rows, cols) is replaced by d16 * q, where
// d = max|x| / 127, q = round(x / d) (half away from zero, as roundf) and d16
// is d rounded to f16 (what a q8_0/q8_1 block stores). A matmul of a GGUF
// weight on these sums the products llama.cpp's integer dots sum (the q8_1
// block sum there is f16(d * sum q), here d16 * sum q). One invocation per block.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(local_size_x = 64) in;
layout(push_constant, std430) uniform Params {
    F32 x; F32 y;
    uint blocks;
} pc;

void main() {
    const uint b = gl_GlobalInvocationID.x + gl_GlobalInvocationID.y * 65535u * 64u;
    if (b >= pc.blocks) return;
    const uint base = b * 32u;
    float v[32], amax = 0.0;
    for (uint i = 0; i < 32u; i++) { v[i] = pc.x.v[base + i]; amax = max(amax, abs(v[i])); }
    const float d = amax / 127.0, id = d != 0.0 ? 1.0 / d : 0.0;
    const float d16 = unpackHalf2x16(packHalf2x16(vec2(d, 0.0))).x;
    for (uint i = 0; i < 32u; i++) {
        float s = v[i] * id;
        pc.y.v[base + i] = d16 * (sign(s) * floor(abs(s) + 0.5));
    }
}
