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
