#version 450
// llama.cpp's 8-bit activations for GGUF block weights, as values: every
// 32-element block of x (rows, cols) is replaced by d16 * q, where
// d = max|x| / 127, q = round(x / d) (half away from zero, as roundf) and d16
// is d rounded to f16 (what a q8_0/q8_1 block stores). A matmul of a GGUF
// weight on these sums the products llama.cpp's integer dots sum; corr[block]
// carries what the Q4_1 min term needs on top (see below). One invocation per block.
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(local_size_x = 64) in;
layout(push_constant, std430) uniform Params {
    F32 x; F32 y; F32 corr;
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
    float sum = 0.0;   // of q: an integer, exact
    for (uint i = 0; i < 32u; i++) {
        float s = v[i] * id, q = sign(s) * floor(abs(s) + 0.5);
        sum += q;
        pc.y.v[base + i] = d16 * q;
    }
    // llama.cpp's q8_1 block sum is f16(d * sum q); the block's values sum to
    // d16 * sum q (exact): the difference, for the Q4_1 min term (matvec.comp
    // and gemm.comp add min * corr per block, flag 16)
    pc.corr.v[b] = unpackHalf2x16(packHalf2x16(vec2(d * sum, 0.0))).x - d16 * sum;
}
