#version 450
// Rotary embedding in place on x (n, n_heads, head_dim); one invocation per
// (token, pair i), looping over heads. Angles as the CPU backend makes them:
// pos * theta_scale^i by repeated f32 multiplication, or pos * inv_freq[i].
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(local_size_x = 64) in;
layout(push_constant, std430) uniform Params {
    F32 x; I32 pos; F32 inv_freq;
    uint n, n_heads, head_dim, half_rot, interleaved; float theta_scale;
} pc;

// sin and cos to within f32 rounding on any device (GPU sin/cos are accurate
// only near 0): reduce by pi/2 with the constant split in three floats
// (Cody-Waite), then Taylor series on [-pi/4, pi/4] (truncation < 2e-9).
void sincos_accurate(float a, out float s, out float c) {
    float j = floor(a * 0.636619772367581343 + 0.5);
    float r = fma(-j, 1.5703125, a);
    r = fma(-j, 4.83751296997070312e-04, r);
    r = fma(-j, 7.54978995489188216e-08, r);
    float r2 = r * r;
    float ps = r + r * r2 * (-1.0 / 6.0 + r2 * (1.0 / 120.0 + r2 * (-1.0 / 5040.0 + r2 * (1.0 / 362880.0))));
    float pc = 1.0 + r2 * (-0.5 + r2 * (1.0 / 24.0 + r2 * (-1.0 / 720.0 + r2 * (1.0 / 40320.0))));
    int q = int(j) & 3;
    s = q == 0 ? ps : q == 1 ? pc : q == 2 ? -ps : -pc;
    c = q == 0 ? pc : q == 1 ? -ps : q == 2 ? -pc : ps;
}

void main() {
    uint i = gl_GlobalInvocationID.x, t = gl_GlobalInvocationID.y;
    if (i >= pc.half_rot || t >= pc.n) return;
    float p = float(pc.pos.v[t]), angle;
    if (pc.theta_scale > 0.0) {
        angle = p;
        for (uint k = 0; k < i; k++) angle *= pc.theta_scale;
    } else {
        angle = p * pc.inv_freq.v[i];
    }
    float cs, sn;
    sincos_accurate(angle, sn, cs);
    uint a = pc.interleaved != 0u ? 2u * i : i;
    uint b = pc.interleaved != 0u ? 2u * i + 1u : i + pc.half_rot;
    for (uint h = 0; h < pc.n_heads; h++) {
        uint base = (t * pc.n_heads + h) * pc.head_dim;
        float x0 = pc.x.v[base + a], x1 = pc.x.v[base + b];
        pc.x.v[base + a] = x0 * cs - x1 * sn;
        pc.x.v[base + b] = x1 * cs + x0 * sn;
    }
}
