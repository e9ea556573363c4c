// qfuse GEMM epilogue, shared by templates/gemm.cu and templates/gemm_wonly.cu (inserted as
// their `epilogue` parameter, inside the template's namespace): the never-contracted f32 type the printed
// epilogue expression computes in, 4-element loads of the epilogue inputs (widened to f32 exactly)
// and 4-element stores of the output (f16/bf16/f32 RNE, FP8 E4M3 per-tensor quantize).
//
// (The text below the first empty line is what gets inserted.)

// ---- epilogue arithmetic -------------------------------------------------------------------------
// The epilogue's f32 values (`acc` and every `<input>_v`) are qf_rn_f32: each +, -, *, / that
// involves one is a single IEEE round-to-nearest operation that the compiler never contracts
// into an FMA (plain `a * b + c` may become one FFMA, rounding once where the interpreter rounds
// twice). The printed expression (src/codegen/expr.rs) keeps its form; functions (qf_round_f16, qf_gelu, ...)
// take and return float through the implicit conversions.
struct qf_rn_f32 {
    float v;
    QF_DEVICE qf_rn_f32(float x) : v(x) {}
    QF_DEVICE operator float() const { return v; }
};
#define QF_F32_OP(op, fn)                                                                          \
    QF_DEVICE qf_rn_f32 operator op(qf_rn_f32 a, qf_rn_f32 b) { return qf_rn_f32(fn(a.v, b.v)); } \
    QF_DEVICE qf_rn_f32 operator op(qf_rn_f32 a, float b) { return qf_rn_f32(fn(a.v, b)); }        \
    QF_DEVICE qf_rn_f32 operator op(float a, qf_rn_f32 b) { return qf_rn_f32(fn(a, b.v)); }
QF_F32_OP(+, __fadd_rn)
QF_F32_OP(-, __fsub_rn)
QF_F32_OP(*, __fmul_rn)
QF_F32_OP(/, __fdiv_rn)
#undef QF_F32_OP

// ---- epilogue loads and stores: 4 consecutive elements (VEC) --------------------------------------
// Loads widen to f32 exactly; `p` is 4-element aligned (n % 4 == 0, N % 64 == 0).
QF_DEVICE void qf_ld4_f32(const float* p, float (&v)[4]) {
    const float4 x = *reinterpret_cast<const float4*>(p);
    v[0] = x.x;
    v[1] = x.y;
    v[2] = x.z;
    v[3] = x.w;
}

QF_DEVICE void qf_ld4_f16(const uint16_t* p, float (&v)[4]) {
    const uint2 x = *reinterpret_cast<const uint2*>(p);
    v[0] = qf_f16_to_f32(static_cast<uint16_t>(x.x & 0xffffu));
    v[1] = qf_f16_to_f32(static_cast<uint16_t>(x.x >> 16));
    v[2] = qf_f16_to_f32(static_cast<uint16_t>(x.y & 0xffffu));
    v[3] = qf_f16_to_f32(static_cast<uint16_t>(x.y >> 16));
}

QF_DEVICE void qf_ld4_bf16(const uint16_t* p, float (&v)[4]) {
    const uint2 x = *reinterpret_cast<const uint2*>(p);
    v[0] = __uint_as_float(x.x << 16);
    v[1] = __uint_as_float(x.x & 0xffff0000u);
    v[2] = __uint_as_float(x.y << 16);
    v[3] = __uint_as_float(x.y & 0xffff0000u);
}

// One element broadcast to the 4 (per-row and single-element inputs).
QF_DEVICE void qf_ldb4_f32(const float* p, float (&v)[4]) { v[0] = v[1] = v[2] = v[3] = *p; }
QF_DEVICE void qf_ldb4_f16(const uint16_t* p, float (&v)[4]) { v[0] = v[1] = v[2] = v[3] = qf_f16_to_f32(*p); }
QF_DEVICE void qf_ldb4_bf16(const uint16_t* p, float (&v)[4]) { v[0] = v[1] = v[2] = v[3] = qf_bf16_to_f32(*p); }

// Stores: element j at p + j (lower address = lower element).
QF_DEVICE void qf_st4_f32(float* p, const float (&y)[4]) {
    *reinterpret_cast<float4*>(p) = make_float4(y[0], y[1], y[2], y[3]);
}

QF_DEVICE void qf_st4_f16(uint16_t* p, const float (&y)[4]) {
    *reinterpret_cast<uint2*>(p) = make_uint2(qf_pack_f16x2(y[0], y[1]), qf_pack_f16x2(y[2], y[3]));
}

QF_DEVICE void qf_st4_bf16(uint16_t* p, const float (&y)[4]) {
    const uint32_t lo = static_cast<uint32_t>(qf_f32_to_bf16(y[0])) | (static_cast<uint32_t>(qf_f32_to_bf16(y[1])) << 16);
    const uint32_t hi = static_cast<uint32_t>(qf_f32_to_bf16(y[2])) | (static_cast<uint32_t>(qf_f32_to_bf16(y[3])) << 16);
    *reinterpret_cast<uint2*>(p) = make_uint2(lo, hi);
}

// Per-tensor static FP8 E4M3 quantization of each element: qf_quantize_e4m3(y, scale), i.e.
// the true quotient y / scale, then RNE with saturation.
QF_DEVICE void qf_st4_e4m3(uint8_t* p, const float (&y)[4], float scale, float rcp) {
    uint32_t w = 0;
#pragma unroll
    for (int j = 0; j < 4; ++j) w |= static_cast<uint32_t>(qf_f32_to_e4m3(qf_div_by_scale(y[j], scale, rcp))) << (8 * j);
    *reinterpret_cast<uint32_t*>(p) = w;
}

// Per-tensor static i8 quantization of each element: qf_quantize_i8(y, scale), i.e. the true
// quotient y / scale (through qf_div_by_scale), then RNE, saturation to [-128, 127], NaN -> 0.
QF_DEVICE void qf_st4_i8(int8_t* p, const float (&y)[4], float scale, float rcp) {
    uint32_t w = 0;
#pragma unroll
    for (int j = 0; j < 4; ++j) w |= static_cast<uint32_t>(static_cast<uint8_t>(qf_f32_to_i8(qf_div_by_scale(y[j], scale, rcp)))) << (8 * j);
    *reinterpret_cast<uint32_t*>(p) = w;
}

