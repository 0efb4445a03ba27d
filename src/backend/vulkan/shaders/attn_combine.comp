#version 450
// Merges the per-split partial softmax results of attention.comp:
// out = sum_s o_s * e^(m_s - M) / sum_s l_s * e^(m_s - M). One workgroup per (token, head).
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"

layout(local_size_x = 64) in;
layout(push_constant, std430) uniform Params {
    F32 part; F32 out_;
    uint head_dim, n_splits;
} pc;

void main() {
    const uint item = gl_WorkGroupID.x, hd = pc.head_dim, stride = hd + 2u;
    const uint base = item * pc.n_splits * stride;
    float mx = -1.0 / 0.0;
    for (uint s = 0; s < pc.n_splits; s++) mx = max(mx, pc.part.v[base + s * stride]);
    float l = 0.0;
    for (uint s = 0; s < pc.n_splits; s++) {
        float ms = pc.part.v[base + s * stride];
        if (ms > -1.0 / 0.0) l += pc.part.v[base + s * stride + 1u] * exp(ms - mx);
    }
    for (uint d = gl_LocalInvocationIndex; d < hd; d += 64u) {
        float acc = 0.0;
        for (uint s = 0; s < pc.n_splits; s++) {
            float ms = pc.part.v[base + s * stride];
            if (ms > -1.0 / 0.0) acc += pc.part.v[base + s * stride + 2u + d] * exp(ms - mx);
        }
        pc.out_.v[item * hd + d] = acc / l;
    }
}
