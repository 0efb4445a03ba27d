// rope.glsl - the rotary angle and its sine and cosine, shared by rope.comp
// and rope_kv.comp. Angles as the CPU backend makes them: pos * theta_scale^i
// by repeated f32 multiplication, or pos * inv_freq[i].

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

float rope_angle(float p, uint i, float theta_scale, F32 inv_freq) {
    if (theta_scale > 0.0) {
        float angle = p;
        for (uint k = 0; k < i; k++) angle *= theta_scale;
        return angle;
    }
    return p * inv_freq.v[i];
}
