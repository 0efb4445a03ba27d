// weight.glsl - device weight layouts (made by weight_prepare):
//   WT 0: f32 [rows][cols]         WT 1: f16        WT 2: bf16
//   WT 3/4/5: affine 4/8/2-bit: words [rows][cols*bits/32] LSB-first (MLX order),
//            then f32 scales and biases [rows][cols/group]: w = scale*q + bias.
//   GGUF Q4_0/Q4_1 become affine 4-bit (group 32), Q8_0 affine 8-bit (q+128, bias -128d).
#if WT == 3
#define BITS 4
#elif WT == 4
#define BITS 8
#elif WT == 5
#define BITS 2
#endif

// One weight element (row r, column c), for gathers (embedding).
float weight_at(U32 w, F32 sc, F32 bi, uint cols, uint group, uint r, uint c) {
    uint i = r * cols + c;
#if WT == 0
    return uintBitsToFloat(w.v[i]);
#elif WT == 1
    return f16_at(w, i);
#elif WT == 2
    uint u = w.v[i >> 1];
    return (i & 1u) != 0u ? bf16_hi(u) : bf16_lo(u);
#else
    const uint per_word = 32u / BITS;
    uint q = (w.v[i / per_word] >> ((i % per_word) * BITS)) & ((1u << BITS) - 1u);
    uint g = r * (cols / group) + c / group;
    return sc.v[g] * float(q) + bi.v[g];
#endif
}

// Eight consecutive weights of row r from column 8*c (one 16-byte load for
// f16/bf16; a chunk of 8 lies inside one quantization group).
void weight_chunk8(U32 w, F32 sc, F32 bi, uint cols, uint group, uint r, uint c, out vec4 w0, out vec4 w1) {
    uint e = r * cols + c * 8u;   // first element of the chunk
#if WT == 0
    w0 = uintBitsToFloat(U32x4(w).v[e / 4u]);
    w1 = uintBitsToFloat(U32x4(w).v[e / 4u + 1u]);
#elif WT == 1
    uvec4 u = U32x4(w).v[e / 8u];
    w0 = vec4(unpackHalf2x16(u.x), unpackHalf2x16(u.y));
    w1 = vec4(unpackHalf2x16(u.z), unpackHalf2x16(u.w));
#elif WT == 2
    uvec4 u = U32x4(w).v[e / 8u];
    w0 = vec4(bf16_lo(u.x), bf16_hi(u.x), bf16_lo(u.y), bf16_hi(u.y));
    w1 = vec4(bf16_lo(u.z), bf16_hi(u.z), bf16_lo(u.w), bf16_hi(u.w));
#else
    uint g = r * (cols / group) + (c * 8u) / group;
    float s = sc.v[g], b = bi.v[g];
#if WT == 3
    uint q = w.v[e / 8u];
    w0 = vec4(q & 15u, (q >> 4) & 15u, (q >> 8) & 15u, (q >> 12) & 15u);
    w1 = vec4((q >> 16) & 15u, (q >> 20) & 15u, (q >> 24) & 15u, q >> 28);
#elif WT == 4
    uvec2 q = U32x2(w).v[e / 8u];
    w0 = vec4(q.x & 255u, (q.x >> 8) & 255u, (q.x >> 16) & 255u, q.x >> 24);
    w1 = vec4(q.y & 255u, (q.y >> 8) & 255u, (q.y >> 16) & 255u, q.y >> 24);
#else
    uint q = w.v[e / 16u] >> ((e % 16u) * 2u);
    w0 = vec4(q & 3u, (q >> 2) & 3u, (q >> 4) & 3u, (q >> 6) & 3u);
    w1 = vec4((q >> 8) & 3u, (q >> 10) & 3u, (q >> 12) & 3u, (q >> 14) & 3u);
#endif
    w0 = w0 * s + b;
    w1 = w1 * s + b;
#endif
}
