// common.glsl - buffer reference types shared by every shader. Buffers are
// reached through 64-bit device addresses in push constants (no descriptors).
#extension GL_EXT_buffer_reference : require
#extension GL_EXT_buffer_reference2 : require

layout(buffer_reference, std430, buffer_reference_align = 4) buffer F32 { float v[]; };
layout(buffer_reference, std430, buffer_reference_align = 8) buffer F32x2 { vec2 v[]; };
layout(buffer_reference, std430, buffer_reference_align = 16) buffer F32x4 { vec4 v[]; };
layout(buffer_reference, std430, buffer_reference_align = 4) buffer U32 { uint v[]; };
layout(buffer_reference, std430, buffer_reference_align = 8) buffer U32x2 { uvec2 v[]; };
layout(buffer_reference, std430, buffer_reference_align = 16) buffer U32x4 { uvec4 v[]; };
layout(buffer_reference, std430, buffer_reference_align = 4) buffer I32 { int v[]; };

float bf16_lo(uint u) { return uintBitsToFloat(u << 16); }
float bf16_hi(uint u) { return uintBitsToFloat(u & 0xffff0000u); }

// Element i of an f16 array stored as packed uint pairs.
float f16_at(U32 b, uint i) {
    vec2 p = unpackHalf2x16(b.v[i >> 1]);
    return (i & 1u) != 0u ? p.y : p.x;
}
