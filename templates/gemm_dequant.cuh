// qfuse weight-code dequantization and the ACT x ACT MMA, shared by templates/gemm_wonly.cu and
// templates/gemm_skinny.cu
// (inserted as their `dequant` parameter, inside the template's namespace). Expects, declared
// before it: `enum class Act { F16, BF16 }`, `enum class Code { I8, U8, I4, U4, E4M3, E2M1 }`,
// `enum class Zero { None, Literal, Input }` and the constants ACT, CODE, ZERO, ZERO_VALUE,
// ZP_SIGNED, NIBBLES, SCALE_ROWS, SCALE_K, SCALE_COLS (meanings in gemm_wonly.cu's header).
// Semantics: w = ACT((code - z) * s), computed in f32 with single roundings (__fsub_rn,
// __fmul_rn; `code * s` without a zero point), then rounded to ACT (RNE).
//
// (The text below the first empty line is what gets inserted.)

// Two f32 -> packed ACT pair, each rounded to nearest even; `lo` in the low half.
QF_DEVICE uint32_t pack_act(float lo, float hi) {
    if constexpr (ACT == Act::F16) {
        return qf_pack_f16x2(lo, hi);
    } else {
        uint32_t r;
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
        return r;
    }
}

// 2^23 + u for an integer 0 <= u < 2^23: the f32 whose mantissa is u (one logic op).
QF_DEVICE float qf_magic(uint32_t u) { return __uint_as_float(0x4B000000u | u); }

// The value of code c (a byte, or a nibble in its low 4 bits), exactly. Integer codes go through
// the 2^23 magic number (a logic op and an exact subtraction) rather than I2F, which runs at a
// quarter of the FP32 rate and would bound the skinny kernel's W4 dequantization.
QF_DEVICE float decode(uint32_t c) {
    if constexpr (CODE == Code::I8) {
        return __fsub_rn(qf_magic((c ^ 0x80u) & 0xffu), 8388736.0f);  // (c + 128) - 128
    } else if constexpr (CODE == Code::U8) {
        return __fsub_rn(qf_magic(c & 0xffu), 8388608.0f);
    } else if constexpr (CODE == Code::I4) {
        return __fsub_rn(qf_magic((c ^ 0x8u) & 0xfu), 8388616.0f);  // (c + 8) - 8
    } else if constexpr (CODE == Code::U4) {
        return __fsub_rn(qf_magic(c & 0xfu), 8388608.0f);
    } else if constexpr (CODE == Code::E4M3) {
        return qf_e4m3_to_f32(static_cast<uint8_t>(c & 0xffu));
    } else {
        // E2M1: sign s, exponent e (bias 1), mantissa m: e == 0 -> m * 0.5, else 2^(e-1) * (1 + m/2).
        const uint32_t e = (c >> 1) & 3u;
        const uint32_t m = c & 1u;
        const float mag = e == 0 ? (m ? 0.5f : 0.0f) : __uint_as_float(((e + 126u) << 23) | (m << 22));
        return (c & 8u) ? -mag : mag;
    }
}

// Code k of a piece of 8 codes: `lo` holds codes 0..3 (bytes) or 0..7 (nibbles), `hi` codes 4..7.
QF_DEVICE uint32_t code_at(uint32_t lo, uint32_t hi, int k) {
    if constexpr (NIBBLES) {
        return (lo >> (4 * k)) & 0xfu;
    } else {
        return ((k < 4 ? lo : hi) >> (8 * (k & 3))) & 0xffu;
    }
}

// The zero point of scale element `si` (as f32; 0 without a zero point).
QF_DEVICE float zero_at(const uint8_t* zp, int si) {
    if constexpr (ZERO == Zero::Input) {
        const uint32_t b = __ldg(zp + si);
        return ZP_SIGNED ? static_cast<float>(static_cast<int>(b << 24) >> 24) : static_cast<float>(b);
    } else {
        return static_cast<float>(ZERO_VALUE);
    }
}

// Index of the scale (and zero point) of element (n, k).
QF_DEVICE int scale_index(int n, int k) { return (n / SCALE_ROWS) * SCALE_COLS + k / SCALE_K; }

// Dequantizes 8 consecutive codes of one weight row sharing scale s and zero point z into 4
// packed ACT pairs: b[p] = (w[2p], w[2p+1]), w = ACT((code - z) * s) in f32 with single roundings.
QF_DEVICE void dequant8(uint32_t (&b)[4], uint32_t lo, uint32_t hi, float s, float z) {
#pragma unroll
    for (int p = 0; p < 4; ++p) {
        float w[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const float v = decode(code_at(lo, hi, 2 * p + e));
            w[e] = ZERO == Zero::None ? __fmul_rn(v, s) : __fmul_rn(__fsub_rn(v, z), s);
        }
        b[p] = pack_act(w[0], w[1]);
    }
}

// D = A(16x16, row) * B(16x8, col) + D, ACT (f16 or bf16) operands, f32 accumulators.
QF_DEVICE void mma_act(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
    if constexpr (ACT == Act::F16) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %2, %3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %2, %3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    }
}
