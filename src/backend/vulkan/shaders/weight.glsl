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

// Eight consecutive weights of row r from column 8*c (a chunk of 8 lies
// inside one quantization group), as loaded: the words (one 16-byte load for
// f16/bf16) and, for the affine formats, the group's scale and bias.
// weight_unpack turns them into floats; a kernel that keeps many chunks in
// flight holds them packed until it sums them.
struct wchunk { uvec4 q, q2; float s, b; };   // q2: f32's second four

wchunk weight_load(U32 w, F32 sc, F32 bi, uint cols, uint group, uint r, uint c) {
    uint e = r * cols + c * 8u;   // first element of the chunk
    wchunk k;
    k.s = 0.0;
    k.b = 0.0;
    k.q2 = uvec4(0u);
#if WT == 0
    k.q = U32x4(w).v[e / 4u];
    k.q2 = U32x4(w).v[e / 4u + 1u];
#elif WT == 1 || WT == 2
    k.q = U32x4(w).v[e / 8u];
#else
    uint g = r * (cols / group) + (c * 8u) / group;
    k.s = sc.v[g];
    k.b = bi.v[g];
#if WT == 3
    k.q = uvec4(w.v[e / 8u], 0u, 0u, 0u);
#elif WT == 4
    k.q = uvec4(U32x2(w).v[e / 8u], 0u, 0u);
#else
    k.q = uvec4(w.v[e / 16u] >> ((e % 16u) * 2u), 0u, 0u, 0u);
#endif
#endif
    return k;
}

void weight_unpack(wchunk k, out vec4 w0, out vec4 w1) {
#if WT == 0
    w0 = uintBitsToFloat(k.q);
    w1 = uintBitsToFloat(k.q2);
#elif WT == 1
    w0 = vec4(unpackHalf2x16(k.q.x), unpackHalf2x16(k.q.y));
    w1 = vec4(unpackHalf2x16(k.q.z), unpackHalf2x16(k.q.w));
#elif WT == 2
    w0 = vec4(bf16_lo(k.q.x), bf16_hi(k.q.x), bf16_lo(k.q.y), bf16_hi(k.q.y));
    w1 = vec4(bf16_lo(k.q.z), bf16_hi(k.q.z), bf16_lo(k.q.w), bf16_hi(k.q.w));
#elif WT >= 3
#if WT == 3
    uint q = k.q.x;
    w0 = vec4(q & 15u, (q >> 4) & 15u, (q >> 8) & 15u, (q >> 12) & 15u);
    w1 = vec4((q >> 16) & 15u, (q >> 20) & 15u, (q >> 24) & 15u, q >> 28);
#elif WT == 4
    w0 = vec4(k.q.x & 255u, (k.q.x >> 8) & 255u, (k.q.x >> 16) & 255u, k.q.x >> 24);
    w1 = vec4(k.q.y & 255u, (k.q.y >> 8) & 255u, (k.q.y >> 16) & 255u, k.q.y >> 24);
#else
    uint q = k.q.x;
    w0 = vec4(q & 3u, (q >> 2) & 3u, (q >> 4) & 3u, (q >> 6) & 3u);
    w1 = vec4((q >> 8) & 3u, (q >> 10) & 3u, (q >> 12) & 3u, (q >> 14) & 3u);
#endif
    w0 = w0 * k.s + k.b;
    w1 = w1 * k.s + k.b;
#endif
}

// The chunk as floats (loaded and unpacked at once).
void weight_chunk8(U32 w, F32 sc, F32 bi, uint cols, uint group, uint r, uint c, out vec4 w0, out vec4 w1) {
    weight_unpack(weight_load(w, sc, bi, cols, group, r, c), w0, w1);
}
