// qfuse element-wise math: dtype conversions and the functions `src/codegen/expr.rs` prints.
// Inlined after common.cuh (whose typedefs it uses). Formulas follow the reference interpreter
// (src/interp/ops/elementwise.rs, src/numerics): every conversion rounds to nearest even; narrow
// floats saturate to +-max (NaN stays NaN), like the IR's `cast`.

// ---- f16 / bf16 (16-bit patterns in uint16_t) --------------------------------------------------
QF_DEVICE float qf_f16_to_f32(uint16_t h) {
    float f;
    asm("{ .reg .b16 t; mov.b16 t, %1; cvt.f32.f16 %0, t; }\n" : "=f"(f) : "h"(h));
    return f;
}

QF_DEVICE uint16_t qf_f32_to_f16(float f) {
    uint16_t h;
    asm("{ .reg .b16 t; cvt.rn.f16.f32 t, %1; mov.b16 %0, t; }\n" : "=h"(h) : "f"(f));
    return h;
}

QF_DEVICE float qf_bf16_to_f32(uint16_t h) { return __uint_as_float(static_cast<uint32_t>(h) << 16); }

QF_DEVICE uint16_t qf_f32_to_bf16(float f) {
    uint16_t h;
    asm("{ .reg .b16 t; cvt.rn.bf16.f32 t, %1; mov.b16 %0, t; }\n" : "=h"(h) : "f"(f));
    return h;
}

QF_DEVICE float qf_round_f16(float f) { return qf_f16_to_f32(qf_f32_to_f16(f)); }
QF_DEVICE float qf_round_bf16(float f) { return qf_bf16_to_f32(qf_f32_to_bf16(f)); }

// ---- FP8 (bytes) -------------------------------------------------------------------------------
QF_DEVICE uint8_t qf_f32_to_e4m3(float f) {
    uint16_t r;
    asm("{ .reg .b16 t; cvt.rn.satfinite.e4m3x2.f32 t, %1, %1; mov.b16 %0, t; }\n" : "=h"(r) : "f"(f));
    return static_cast<uint8_t>(r & 0xff);
}

QF_DEVICE uint8_t qf_f32_to_e5m2(float f) {
    uint16_t r;
    asm("{ .reg .b16 t; cvt.rn.satfinite.e5m2x2.f32 t, %1, %1; mov.b16 %0, t; }\n" : "=h"(r) : "f"(f));
    return static_cast<uint8_t>(r & 0xff);
}

QF_DEVICE float qf_e4m3_to_f32(uint8_t b) {
    uint32_t h2;
    asm("{ .reg .b16 t; mov.b16 t, %1; cvt.rn.f16x2.e4m3x2 %0, t; }\n" : "=r"(h2) : "h"(static_cast<uint16_t>(b)));
    return qf_f16_to_f32(static_cast<uint16_t>(h2 & 0xffff));
}

QF_DEVICE float qf_e5m2_to_f32(uint8_t b) {
    uint32_t h2;
    asm("{ .reg .b16 t; mov.b16 t, %1; cvt.rn.f16x2.e5m2x2 %0, t; }\n" : "=r"(h2) : "h"(static_cast<uint16_t>(b)));
    return qf_f16_to_f32(static_cast<uint16_t>(h2 & 0xffff));
}

QF_DEVICE float qf_round_e4m3(float f) { return qf_e4m3_to_f32(qf_f32_to_e4m3(f)); }
QF_DEVICE float qf_round_e5m2(float f) { return qf_e5m2_to_f32(qf_f32_to_e5m2(f)); }

// x / scale rounded to nearest even, for scale > 0 normal with rcp = RN(1 / scale) (compiled in
// by the caller), without the slow-path call of a full IEEE division (a call per element
// serializes a GEMM epilogue or an attention's probability quantize). Markstein's correction:
// q0 = RN(x * rcp) is within one ulp of x / scale, so e = x - q0 * scale is exact in one FMA and
// RN(q0 + e * rcp) = RN(x / scale) (no overflow or underflow; src/codegen/gemm.rs tests it
// against IEEE division). Zeros (keeping their sign), infinities, NaN and an overflowing product
// take q0 itself, which is then also x / scale or saturates as it would in the quantize after.
QF_DEVICE float qf_div_by_scale(float x, float scale, float rcp) {
    const float q0 = __fmul_rn(x, rcp);
    const float e = __fmaf_rn(-q0, scale, x);
    const float q1 = __fmaf_rn(e, rcp, q0);
    return (x != 0.0f && fabsf(q0) <= 3.40282347e38f) ? q1 : q0;
}

// Static quantization as the IR defines it: a true division x / s (not x * (1/s)), then RNE with
// saturation.
QF_DEVICE uint8_t qf_quantize_e4m3(float x, float scale) { return qf_f32_to_e4m3(__fdiv_rn(x, scale)); }

// ---- INT8 (signed bytes) -------------------------------------------------------------------------
// The IR's cast to i8 (numerics::cast): round to nearest even, saturate to [-128, 127], NaN -> 0,
// never -0. Clamping first is exact (the bounds are integers) and keeps the conversion in range.
QF_DEVICE int8_t qf_f32_to_i8(float f) {
    const int i = __float2int_rn(fminf(fmaxf(f, -128.0f), 127.0f));
    return static_cast<int8_t>(f == f ? i : 0);
}

// Static quantization to i8 as the IR defines it: a true division x / s, then qf_f32_to_i8.
QF_DEVICE int8_t qf_quantize_i8(float x, float scale) { return qf_f32_to_i8(__fdiv_rn(x, scale)); }

// ---- FP4 E2M1 (a code in the low nibble; storage packs two per byte, low nibble first) ----------
// numerics::f32_to_e2m1: RNE onto {0, 0.5, 1, 1.5, 2, 3, 4, 6} (ties to the even code: 0.25 -> 0,
// 0.75 -> 1, 1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4), saturating to 6 (also +-inf), the
// sign kept (bit 3, also for -0), NaN -> +6. (sm_90 has no cvt to e2m1.)
QF_DEVICE uint8_t qf_f32_to_e2m1(float f) {
    if (f != f) return 0x7;
    const uint32_t sign = (__float_as_uint(f) >> 28) & 0x8u;
    const float a = fabsf(f);
    const uint32_t c = a <= 0.25f ? 0u : a < 0.75f ? 1u : a <= 1.25f ? 2u : a < 1.75f ? 3u
                     : a <= 2.5f ? 4u : a < 3.5f ? 5u : a <= 5.0f ? 6u : 7u;
    return static_cast<uint8_t>(sign | c);
}

QF_DEVICE float qf_e2m1_to_f32(uint8_t b) {
    const uint32_t c = b & 0x7u;
    const float mag = c < 4u ? 0.5f * static_cast<float>(c) : (c == 4u ? 2.0f : c == 5u ? 3.0f : c == 6u ? 4.0f : 6.0f);
    return (b & 0x8u) ? -mag : mag;
}

// Eight E2M1 codes of a little-endian word (element n in bits 4n..4n+3: two per byte, low nibble
// first) times a block scale, each product in f32 (exact: 2 by 4 significant bits).
QF_DEVICE void qf_e2m1x8_scaled(uint32_t w, float scale, float* out) {
#pragma unroll
    for (int n = 0; n < 8; ++n) out[n] = __fmul_rn(qf_e2m1_to_f32(static_cast<uint8_t>((w >> (4 * n)) & 0xfu)), scale);
}

// Largest finite E4M3 value: dynamic scales are amax / 448.
#define QF_E4M3_MAX 448.0f

// The scale of a dynamic per-token/per-tensor region as the interpreter defines it: amax / qmax,
// and 1 where that is 0 (or underflows), so nothing divides by zero.
QF_DEVICE float qf_dynamic_scale(float amax, float qmax) {
    float s = __fdiv_rn(amax, qmax);
    return s > 0.0f ? s : 1.0f;
}

// ---- functions ---------------------------------------------------------------------------------
// Exact GeLU, x * Phi(x) = 0.5 x erfc(-x / sqrt 2) (accurate in the negative tail).
QF_DEVICE float qf_gelu(float x) { return 0.5f * x * erfcf(-x * 0.70710678118654752f); }

QF_DEVICE float qf_gelu_tanh(float x) {
    const float k = 0.7978845608028654f;  // sqrt(2 / pi)
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}

QF_DEVICE float qf_silu(float x) { return x / (1.0f + expf(-x)); }
// As the interpreter: NaN and -0 pass through (fmaxf would turn NaN into 0).
QF_DEVICE float qf_relu(float x) { return x < 0.0f ? 0.0f : x; }
QF_DEVICE float qf_rsqrt(float x) { return 1.0f / sqrtf(x); }

// ---- warp / block reductions -------------------------------------------------------------------
QF_DEVICE float qf_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

QF_DEVICE float qf_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
