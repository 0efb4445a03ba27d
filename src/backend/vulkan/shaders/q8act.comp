#version 450
// llama.cpp's 8-bit activations for GGUF block weights, as values: every
// 32-element block of x (rows, cols) is replaced by d16 * q, where
// d = max|x| / 127, q = round(x * 127 / max|x|) (ties to even) and d16
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

// x rounded to the nearest f16 (ties to even), for 0 <= x < 65504, with
// exact operations (a driver's f32 -> f16 conversion may round otherwise)
float f16_round(float x) {
    int e;
    frexp(x, e);
    const int sh = max(e - 11, -24);   // the f16 ulp at x: 2^(e-11), 2^-24 below f16's normals
    return ldexp(roundEven(ldexp(x, -sh)), sh);
}

void main() {
    const uint b = gl_GlobalInvocationID.x + gl_GlobalInvocationID.y * 65535u * 64u;
    if (b >= pc.blocks) return;
    const uint base = b * 32u;
    float v[32], amax = 0.0;
    for (uint i = 0; i < 32u; i++) { v[i] = pc.x.v[base + i]; amax = max(amax, abs(v[i])); }
    // d = amax / 127 and id = 127 / amax correctly rounded, as the CPU's
    // divisions (a GPU's division may be off by an ulp or two: one Newton step
    // with fused multiply-adds makes both exact but for rare ties)
    const float q0 = amax * (1.0 / 127.0);
    precise const float r0 = fma(-q0, 127.0, amax);
    precise const float d = fma(r0, 1.0 / 127.0, q0);
    float id = 0.0;
    if (amax > 0.0) {
        const float y = 1.0 / amax, p0 = 127.0 * y;
        precise const float r1 = fma(-p0, amax, 127.0);
        id = fma(r1, y, p0);
    }
    const float d16 = f16_round(d);
    float sum = 0.0;   // of q: an integer, exact
    for (uint i = 0; i < 32u; i++) {
        float q = roundEven(v[i] * id);   // nearest, ties to even (the CPU's nearbyintf)
        sum += q;
        pc.y.v[base + i] = d16 * q;
    }
    // llama.cpp's q8_1 block sum is f16(d * sum q); the block's values sum to
    // d16 * sum q (exact): the difference, for the Q4_1 min term (matvec.comp
    // and gemm.comp add min * corr per block, flag 16)
    pc.corr.v[b] = sign(sum) * f16_round(abs(d * sum)) - d16 * sum;
}
