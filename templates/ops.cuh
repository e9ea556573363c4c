// qfuse device code shared by the non-GEMM kernels (src/codegen/ops/*): dtype traits, vector
// packs, f64 reductions and the row engine behind layernorm / rmsnorm / norm+quantize /
// embed+layernorm / per-token quantize / l2_normalize / softmax. Inlined after common.cuh and
// math.cuh (a template's prelude), whose typedefs and conversions it uses. No placeholders: every
// kernel-specific constant comes from a configuration struct the entry template defines.
//
// Numerics follow the reference interpreter (src/interp/ops): row statistics in f64 (like the
// interpreter), per-element f32 steps with explicit __fmul_rn / __fadd_rn / __fdiv_rn so that
// NVRTC's default FMA contraction cannot merge what the interpreter rounds twice.

// ---- dtype traits --------------------------------------------------------------------------------
// `T` is the storage type, `load` widens exactly to f32, `store` is the IR's `cast` to the dtype:
// RNE for floats (FP8 saturating, NaN kept); for integers RNE, clamp to the range the interpreter
// uses (numerics::int_range), NaN -> 0, never -0.

// Rounds half to even and clamps to [lo, hi]; NaN becomes 0 (numerics::saturate_int).
QF_DEVICE float qf_sat_int(float f, float lo, float hi) {
    if (f != f) return 0.0f;
    return fminf(fmaxf(rintf(f), lo), hi) + 0.0f;
}

struct qf_f32 {
    typedef float T;
    static QF_DEVICE float load(T v) { return v; }
    static QF_DEVICE T store(float f) { return f; }
};
struct qf_f16 {
    typedef uint16_t T;
    static QF_DEVICE float load(T v) { return qf_f16_to_f32(v); }
    static QF_DEVICE T store(float f) { return qf_f32_to_f16(f); }
};
struct qf_bf16 {
    typedef uint16_t T;
    static QF_DEVICE float load(T v) { return qf_bf16_to_f32(v); }
    static QF_DEVICE T store(float f) { return qf_f32_to_bf16(f); }
};
struct qf_e4m3 {
    typedef uint8_t T;
    static QF_DEVICE float load(T v) { return qf_e4m3_to_f32(v); }
    static QF_DEVICE T store(float f) { return qf_f32_to_e4m3(f); }
};
struct qf_e5m2 {
    typedef uint8_t T;
    static QF_DEVICE float load(T v) { return qf_e5m2_to_f32(v); }
    static QF_DEVICE T store(float f) { return qf_f32_to_e5m2(f); }
};
struct qf_i8 {
    typedef int8_t T;
    static QF_DEVICE float load(T v) { return static_cast<float>(v); }
    static QF_DEVICE T store(float f) { return qf_f32_to_i8(f); }
};
// FP4 E2M1: a code per element here; row kernels pack two per byte (qf_store_packed).
struct qf_e2m1 {
    typedef uint8_t T;
    static QF_DEVICE float load(T v) { return qf_e2m1_to_f32(v); }
    static QF_DEVICE T store(float f) { return qf_f32_to_e2m1(f); }
};
struct qf_u8 {
    typedef uint8_t T;
    static QF_DEVICE float load(T v) { return static_cast<float>(v); }
    static QF_DEVICE T store(float f) { return static_cast<T>(static_cast<int>(qf_sat_int(f, 0.0f, 255.0f))); }
};
struct qf_i32 {
    typedef int32_t T;
    static QF_DEVICE float load(T v) { return __int2float_rn(v); }
    // 2^31 - 128: the largest f32 inside the i32 range.
    static QF_DEVICE T store(float f) { return __float2int_rn(qf_sat_int(f, -2147483648.0f, 2147483520.0f)); }
};
struct qf_i64 {
    typedef int64_t T;
    static QF_DEVICE float load(T v) { return __ll2float_rn(v); }
    // 2^63 - 2^39: the largest f32 inside the i64 range.
    static QF_DEVICE T store(float f) {
        return __float2ll_rn(qf_sat_int(f, -9223372036854775808.0f, 9223371487098961920.0f));
    }
};

// One IR rounding step to D (identity for f32).
template <class D>
QF_DEVICE float qf_round(float f) {
    return D::load(D::store(f));
}

// What a kernel stores for a result of float dtype O (CODES 0: O itself) or, with a fused static
// output quantize, the codes of that O value: CODES 1 E4M3, 2 I8, `qf_quantize_*(round_O(x),
// scale)` exactly as the unfused `quantize {per_tensor, scale}` of the O tensor (math.cuh).
template <class O, int CODES>
struct qf_out {
    typedef typename O::T T;
    static QF_DEVICE T store(float x, float) { return O::store(x); }
};
template <class O>
struct qf_out<O, 1> {
    typedef uint8_t T;
    static QF_DEVICE T store(float x, float scale) { return qf_quantize_e4m3(qf_round<O>(x), scale); }
};
template <class O>
struct qf_out<O, 2> {
    typedef int8_t T;
    static QF_DEVICE T store(float x, float scale) { return qf_quantize_i8(qf_round<O>(x), scale); }
};

// ---- RMSNorm ---------------------------------------------------------------------------------------
// The interpreter's rms_norm: inv = 1 / sqrt(sum(x^2) / n + eps) in f64, then each element
// round_Y(f32(f64(x) * inv) * gamma) with one f32 product. Shared by the row engine (NORM 2) and
// the skinny GEMM's norm prologue (gemm_skinny.cu), which must compute the same values.
QF_DEVICE double qf_rms_inv(double sum_sq, double n, double eps) { return 1.0 / sqrt(sum_sq / n + eps); }

template <class Y>
QF_DEVICE float qf_rms_element(float x, double inv, float gamma) {
    return qf_round<Y>(__fmul_rn(static_cast<float>(static_cast<double>(x) * inv), gamma));
}

// ---- rotary embedding of one element -------------------------------------------------------------
// Element d of a head row x[0 .. D) turned by angle `angle` = position · inv_freq[i] (f64) as the
// interpreter's `rope` does: pairs (i, i + D/2) or, with ADJ, (2i, 2i + 1); cos and sin of the f64
// angle rounded to f32, then x1·cos − x2·sin (first of a pair) or x2·cos + x1·sin (second), every
// product and sum rounded separately. Unrounded to the operand's dtype (the caller rounds).
// qf_rope_pair gives d's pair index i (the caller looks up inv_freq[i]).
template <int D, bool ADJ>
QF_DEVICE int qf_rope_pair(int d) {
    return ADJ ? d / 2 : d % (D / 2);
}

// The factors an element turns by: cos and sin of its f64 angle, each rounded to f32. Split from
// qf_rope_turn so that a kernel may compute them early (they depend on positions only: the decode
// attention takes them before its griddepcontrol.wait).
QF_DEVICE void qf_rope_factors(double angle, float& cf, float& sf) {
    double s, c;
    sincos(angle, &s, &c);
    cf = static_cast<float>(c);
    sf = static_cast<float>(s);
}

template <class Tr, int D, bool ADJ>
QF_DEVICE float qf_rope_turn(const typename Tr::T* x, int d, float cf, float sf) {
    const bool first = ADJ ? (d & 1) == 0 : d < D / 2;
    const int partner = ADJ ? (d ^ 1) : (first ? d + D / 2 : d - D / 2);
    const float self = Tr::load(x[d]), other = Tr::load(x[partner]);
    return first ? __fsub_rn(__fmul_rn(self, cf), __fmul_rn(other, sf)) : __fadd_rn(__fmul_rn(self, cf), __fmul_rn(other, sf));
}

template <class Tr, int D, bool ADJ>
QF_DEVICE float qf_rope_element(const typename Tr::T* x, int d, double angle) {
    float cf, sf;
    qf_rope_factors(angle, cf, sf);
    return qf_rope_turn<Tr, D, ADJ>(x, d, cf, sf);
}

// ---- vector packs --------------------------------------------------------------------------------
// N consecutive elements moved with the widest aligned accesses (at most 16 bytes each). The
// caller guarantees the address is a multiple of the pack's alignment (rows are 256-byte aligned
// and row lengths are multiples of N).
template <int BYTES>
struct qf_pack_align {
    static constexpr int value = BYTES >= 16 ? 16 : BYTES;
};
template <typename T, int N>
struct alignas(qf_pack_align<sizeof(T) * N>::value) qf_pack {
    T e[N];
};

template <class D, int N>
QF_DEVICE void qf_load_vec(const typename D::T* p, float (&out)[N]) {
    const qf_pack<typename D::T, N> k = *reinterpret_cast<const qf_pack<typename D::T, N>*>(p);
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = D::load(k.e[i]);
}

template <class D, int N>
QF_DEVICE void qf_store_vec(typename D::T* p, const float (&in)[N]) {
    qf_pack<typename D::T, N> k;
#pragma unroll
    for (int i = 0; i < N; ++i) k.e[i] = D::store(in[i]);
    *reinterpret_cast<qf_pack<typename D::T, N>*>(p) = k;
}

// N 4-bit codes of D (N even) packed two per byte, element 2i in the low nibble of byte i (the
// storage layout of src/compile/bytes.rs), stored as N / 2 bytes at p.
template <class D, int N>
QF_DEVICE void qf_store_packed(uint8_t* p, const float (&in)[N]) {
    static_assert(N % 2 == 0, "whole bytes");
    qf_pack<uint8_t, N / 2> k;
#pragma unroll
    for (int i = 0; i < N / 2; ++i) k.e[i] = static_cast<uint8_t>((D::store(in[2 * i]) & 0xf) | ((D::store(in[2 * i + 1]) & 0xf) << 4));
    *reinterpret_cast<qf_pack<uint8_t, N / 2>*>(p) = k;
}

// The scale of a dynamic region as the interpreter defines it (src/interp/ops/quant.rs): amax /
// qmax in f32, rounded to the scale dtype S; 1 where that is 0 (amax = 0, or the rounded scale
// underflows), so nothing divides by zero.
template <class S>
QF_DEVICE float qf_dynamic_scale_as(float amax, float qmax) {
    const float s = S::load(S::store(__fdiv_rn(amax, qmax)));
    return s > 0.0f ? s : 1.0f;
}

// ---- f64 warp / row-group reductions -------------------------------------------------------------
// XOR butterflies: every lane ends with the bitwise-same result (IEEE + and max are commutative).
QF_DEVICE double qf_warp_sum_f64(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

QF_DEVICE double qf_warp_max_f64(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum (MAX = false) or NaN-ignoring max (MAX = true) over a row group of WPR warps. With WPR > 1
// the group is the whole block (the row engine then puts one row in a block) and every thread of
// the block must call it; `red` holds WPR doubles of shared memory. All threads get the same
// value: the per-warp partials are combined in warp order.
template <int WPR, bool MAX>
QF_DEVICE double qf_group_reduce(double v, double* red) {
    v = MAX ? qf_warp_max_f64(v) : qf_warp_sum_f64(v);
    if constexpr (WPR > 1) {
        __syncthreads();  // the previous reduction's readers are done with `red`
        if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
        __syncthreads();
        v = red[0];
#pragma unroll
        for (int w = 1; w < WPR; ++w) v = MAX ? fmax(v, red[w]) : v + red[w];
    }
    return v;
}

// ---- row engine -----------------------------------------------------------------------------------
// One row of length n (the last axis) per group of 32*WPR threads, RPB groups per block
// (WPR > 1 implies RPB == 1). Each thread keeps its elements in registers: vector k (VEC
// consecutive elements) of the row belongs to thread k % TPR. Pipeline:
//   load    SOURCE 0: x[row, :];  SOURCE 1 (embedding): round_Y(round_Y(word[id] + pos[s]) + type[tid])
//   norm    NORM 0: none; 1: layernorm; 2: rmsnorm; 3: l2_normalize; 4: softmax; 5: x * gamma
//           (a per-channel multiply, f32 product); result rounded to Y
//   outputs STORE_Y: y[row, :] in Y;  QUANT 1/2/3/4: q[row, :] = cast_Q(y / s) (+ zero point)
//           with s literal (1), per-tensor from scale_in[0] (2), dynamic per-token (3: amax / QMAX,
//           written to scales[row]) or per-token from scale_in[row] (4); QUANT 5: dynamic per block
//           of GROUP elements (qf_block_quant), NB scales per row in S, 4-bit codes PACKED.
//
// A configuration struct C provides:
//   typedefs X (source element), ID (index element, embedding only), G, BT (gamma, beta), Y, Q, S
//   constexpr int HMAX (row length, or its maximum when DYN), VEC, WPR, RPB, SOURCE, NORM, QUANT,
//     GROUP (QUANT 5: block length)
//   constexpr long long NB (QUANT 5: blocks per row)
//   constexpr bool DYN (row length from args.n at run time; VEC must be 1), BETA, STORE_Y, ZERO,
//     PACKED (QUANT 5: Q is a 4-bit type stored two codes per byte),
//     PREFETCH (load gamma / beta with the row rather than after the statistics),
//     ROUND_TRIP (quant_round_trip: the transformed row times `pre`, rounded to Y, is quantized
//     and the codes' dequantized values, times `post` and rounded to Y, are stored to y instead
//     of codes and scales; STORE_Y is then false)
//   constexpr long long V, P, TT (embedding table rows)
//   static device functions eps() (double), qmax() (float)
// The per-launch constants (a literal quantize scale, a zero point) are kernel parameters copied
// into qf_row_args (scale, zero), so every layer's kernel of one shape is the same kernel.

template <class C>
struct qf_row_args {
    const typename C::X::T* x;          // SOURCE 0: [rows, n]
    const typename C::ID::T* ids;       // SOURCE 1: [rows]
    const typename C::ID::T* type_ids;  // SOURCE 1: [rows]
    const typename C::X::T* word;       // SOURCE 1: [V, n]
    const typename C::X::T* pos;        // SOURCE 1: [P, n]
    const typename C::X::T* type;       // SOURCE 1: [TT, n]
    const typename C::G::T* gamma;      // NORM 1, 2, 5: [n]
    const typename C::BT::T* beta;      // NORM 1 with BETA: [n]
    const typename C::S::T* scale_in;   // QUANT 2: [1]; QUANT 4: [rows]
    typename C::Y::T* y;                // STORE_Y: [rows, n]
    typename C::Q::T* q;                // QUANT != 0: [rows, n]
    typename C::S::T* scales;           // QUANT 3: [rows]; QUANT 5: [rows, NB]
    long long rows;                     // number of rows
    long long n;                        // DYN: row length
    long long seq;                      // SOURCE 1: tokens per sequence (position = row % seq)
    float scale;                        // QUANT 1: the literal scale
    float zero;                         // ZERO: the zero point
    float pre, post;                    // ROUND_TRIP: the multipliers before and after
};

template <int N>
QF_DEVICE void qf_fill(float (&v)[N], float f) {
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = f;
}

// Loads elements [col, col + VEC) of row `row` (as f32, already rounded to their IR dtype).
template <class C>
QF_DEVICE void qf_row_load(const qf_row_args<C>& a, long long row, long long n, long long col, float (&v)[C::VEC]) {
    if constexpr (C::SOURCE == 0) {
        qf_load_vec<typename C::X>(a.x + row * n + col, v);
    } else {
        // An index outside its table (id >= V, id < 0, position >= P, type id >= TT) reads
        // nothing: its contribution is NaN, so the row's outputs are NaN (FP8 codes 0x7f,
        // integer codes 0; a dynamic scale ignores NaN and becomes 1).
        const float nan = __int_as_float(0x7fc00000);
        const long long id = static_cast<long long>(a.ids[row]);
        const long long tid = static_cast<long long>(a.type_ids[row]);
        const long long s = row % a.seq;
        float w[C::VEC], p[C::VEC], t[C::VEC];
        if (id >= 0 && id < C::V) qf_load_vec<typename C::X>(a.word + id * n + col, w); else qf_fill(w, nan);
        if (s < C::P) qf_load_vec<typename C::X>(a.pos + s * n + col, p); else qf_fill(p, nan);
        if (tid >= 0 && tid < C::TT) qf_load_vec<typename C::X>(a.type + tid * n + col, t); else qf_fill(t, nan);
#pragma unroll
        for (int i = 0; i < C::VEC; ++i) {
            v[i] = qf_round<typename C::Y>(__fadd_rn(qf_round<typename C::Y>(__fadd_rn(w[i], p[i])), t[i]));
        }
    }
}

// Stores the quantize quotients r (x / s; with ZERO rint(x / s) + zero) of the VEC elements at
// offset `at` of the rows: as codes in q (PACKED: two 4-bit codes per byte), or with ROUND_TRIP as
// the codes' dequantized values ((code − zero)·s rounded to Y, as dequantize computes) times
// post, rounded to Y, in y.
template <class C, int VEC>
QF_DEVICE void qf_quant_store(const qf_row_args<C>& a, long long at, float s, const float (&r)[VEC]) {
    if constexpr (C::ROUND_TRIP) {
        float y[VEC];
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            float c = C::Q::load(C::Q::store(r[i]));
            if constexpr (C::ZERO) c = __fsub_rn(c, a.zero);
            y[i] = qf_round<typename C::Y>(__fmul_rn(qf_round<typename C::Y>(__fmul_rn(c, s)), a.post));
        }
        qf_store_vec<typename C::Y>(a.y + at, y);
    } else if constexpr (C::PACKED) {
        qf_store_packed<typename C::Q>(reinterpret_cast<uint8_t*>(a.q) + at / 2, r);
    } else {
        qf_store_vec<typename C::Q>(a.q + at, r);
    }
}

// QUANT 5: dynamic scales per block of GROUP consecutive elements of the row (DeepSeek-style 1x128
// FP8 activation groups, NVFP4's 16-element blocks). The LANES = GROUP / VEC consecutive threads
// holding a block's vectors reduce its amax with XOR shuffles (f32 max, exact in any order; NaN
// ignored like the interpreter's f32::max); s = qf_dynamic_scale_as<S>(amax, QMAX), written by the
// block's first thread to scales[row * NB + block]; q = cast_Q(x / s) with a true division. A
// ragged last block is the row's tail (vectors past the row hold zeros). PACKED: 4-bit codes, two
// per byte (qf_store_packed) at byte (row * n + col) / 2.
template <class C, int NV>
QF_DEVICE void qf_block_quant(const qf_row_args<C>& a, long long row, long long n, long long nvec, int t,
                              const float (&v)[NV][C::VEC]) {
    constexpr int VEC = C::VEC;
    constexpr int TPR = 32 * C::WPR;
    constexpr int LANES = C::GROUP / VEC;
    static_assert(C::GROUP % VEC == 0 && LANES >= 1 && LANES <= 32 && (LANES & (LANES - 1)) == 0,
                  "a block spans a power-of-two number of lanes of one warp");
    static_assert(!C::PACKED || VEC % 2 == 0, "packed codes are stored in whole bytes");
#pragma unroll
    for (int j = 0; j < NV; ++j) {
        float m = 0.0f;
#pragma unroll
        for (int i = 0; i < VEC; ++i) m = fmaxf(m, fabsf(v[j][i]));
        // Every lane takes part (no early exit before the shuffles).
#pragma unroll
        for (int o = LANES / 2; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
        const long long k = t + j * TPR;
        if (k >= nvec) continue;
        const float s = qf_dynamic_scale_as<typename C::S>(m, C::qmax());
        const long long col = k * VEC;
        if (!C::ROUND_TRIP && col % C::GROUP == 0) a.scales[row * C::NB + col / C::GROUP] = C::S::store(s);
        float r[VEC];
#pragma unroll
        for (int i = 0; i < VEC; ++i) r[i] = __fdiv_rn(v[j][i], s);
        qf_quant_store<C>(a, row * n + col, s, r);
    }
}

template <class C>
QF_DEVICE void qf_row_main(const qf_row_args<C>& a) {
    constexpr int VEC = C::VEC;
    constexpr int TPR = 32 * C::WPR;
    constexpr int NV = (C::HMAX / VEC + TPR - 1) / TPR;  // vectors per thread (at most)
    static_assert(C::HMAX % VEC == 0, "row length must be a multiple of VEC");
    static_assert(!C::DYN || VEC == 1, "run-time row lengths use scalar accesses");
    static_assert(C::WPR == 1 || C::RPB == 1, "multi-warp rows take a whole block");
    __shared__ double red[C::WPR];

    const int t = threadIdx.x % TPR;
    const long long row = static_cast<long long>(blockIdx.x) * C::RPB + threadIdx.x / TPR;
    // Uniform per warp (WPR == 1, no block barriers) or per block (WPR > 1, RPB == 1).
    if (row >= a.rows) return;
    const long long n = C::DYN ? a.n : static_cast<long long>(C::HMAX);
    const long long nvec = n / VEC;
    const double count = static_cast<double>(n);

    // The row, and with PREFETCH gamma / beta (issued before the reductions, so that their
    // latency overlaps the row's instead of following it, at the cost of registers).
    float v[NV][VEC];
    constexpr bool GAMMA = C::NORM == 1 || C::NORM == 2 || C::NORM == 5;
    constexpr int NG = GAMMA ? NV : 1;
    constexpr int NB = (C::NORM == 1 && C::BETA) ? NV : 1;
    float gv[NG][VEC], bv[NB][VEC];
#pragma unroll
    for (int j = 0; j < NV; ++j) {
        const long long k = t + j * TPR;
        if (k < nvec) {
            qf_row_load<C>(a, row, n, k * VEC, v[j]);
            if constexpr (C::PREFETCH && GAMMA) qf_load_vec<typename C::G>(a.gamma + k * VEC, gv[j]);
            if constexpr (C::PREFETCH && C::NORM == 1 && C::BETA) qf_load_vec<typename C::BT>(a.beta + k * VEC, bv[j]);
        } else {
            qf_fill(v[j], 0.0f);
        }
    }

    if constexpr (C::NORM == 1) {  // layernorm: (x - mean) / sqrt(var + eps) * gamma + beta
        double s = 0.0;
#pragma unroll
        for (int j = 0; j < NV; ++j)
            if (t + j * TPR < nvec)
#pragma unroll
                for (int i = 0; i < VEC; ++i) s += static_cast<double>(v[j][i]);
        const double mean = qf_group_reduce<C::WPR, false>(s, red) / count;
        double q = 0.0;
#pragma unroll
        for (int j = 0; j < NV; ++j)
            if (t + j * TPR < nvec)
#pragma unroll
                for (int i = 0; i < VEC; ++i) {
                    const double d = static_cast<double>(v[j][i]) - mean;
                    q += d * d;
                }
        const double var = qf_group_reduce<C::WPR, false>(q, red) / count;
        const double inv = 1.0 / sqrt(var + C::eps());
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            const long long k = t + j * TPR;
            if (k >= nvec) continue;
            if constexpr (!C::PREFETCH) qf_load_vec<typename C::G>(a.gamma + k * VEC, gv[j]);
            if constexpr (!C::PREFETCH && C::BETA) qf_load_vec<typename C::BT>(a.beta + k * VEC, bv[j]);
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                float y = __fmul_rn(static_cast<float>((static_cast<double>(v[j][i]) - mean) * inv), gv[j][i]);
                if constexpr (C::BETA) y = __fadd_rn(y, bv[j][i]);
                v[j][i] = qf_round<typename C::Y>(y);
            }
        }
    } else if constexpr (C::NORM == 2) {  // rmsnorm: x / sqrt(mean(x^2) + eps) * gamma
        double s = 0.0;
#pragma unroll
        for (int j = 0; j < NV; ++j)
            if (t + j * TPR < nvec)
#pragma unroll
                for (int i = 0; i < VEC; ++i) {
                    const double d = static_cast<double>(v[j][i]);
                    s += d * d;
                }
        const double inv = qf_rms_inv(qf_group_reduce<C::WPR, false>(s, red), count, C::eps());
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            const long long k = t + j * TPR;
            if (k >= nvec) continue;
            if constexpr (!C::PREFETCH) qf_load_vec<typename C::G>(a.gamma + k * VEC, gv[j]);
#pragma unroll
            for (int i = 0; i < VEC; ++i) v[j][i] = qf_rms_element<typename C::Y>(v[j][i], inv, gv[j][i]);
        }
    } else if constexpr (C::NORM == 5) {  // x * gamma, as the interpreter's `mul`: f32 product, one rounding
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            const long long k = t + j * TPR;
            if (k >= nvec) continue;
            if constexpr (!C::PREFETCH) qf_load_vec<typename C::G>(a.gamma + k * VEC, gv[j]);
#pragma unroll
            for (int i = 0; i < VEC; ++i) v[j][i] = qf_round<typename C::Y>(__fmul_rn(v[j][i], gv[j][i]));
        }
    } else if constexpr (C::NORM == 3) {  // l2_normalize: x / max(||x||, eps)
        double s = 0.0;
#pragma unroll
        for (int j = 0; j < NV; ++j)
            if (t + j * TPR < nvec)
#pragma unroll
                for (int i = 0; i < VEC; ++i) {
                    const double d = static_cast<double>(v[j][i]);
                    s += d * d;
                }
        const double denom = fmax(sqrt(qf_group_reduce<C::WPR, false>(s, red)), C::eps());
#pragma unroll
        for (int j = 0; j < NV; ++j)
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                v[j][i] = qf_round<typename C::Y>(static_cast<float>(static_cast<double>(v[j][i]) / denom));
            }
    } else if constexpr (C::NORM == 4) {  // softmax: exp(x - max) / sum, the sum in f64
        double m = -__longlong_as_double(0x7ff0000000000000ll);
#pragma unroll
        for (int j = 0; j < NV; ++j)
            if (t + j * TPR < nvec)
#pragma unroll
                for (int i = 0; i < VEC; ++i) m = fmax(m, static_cast<double>(v[j][i]));
        const float mx = static_cast<float>(qf_group_reduce<C::WPR, true>(m, red));
        double s = 0.0;
#pragma unroll
        for (int j = 0; j < NV; ++j)
            if (t + j * TPR < nvec)
#pragma unroll
                for (int i = 0; i < VEC; ++i) {
                    // exp in f64, rounded once to f32: the correctly rounded expf (as glibc's,
                    // which the interpreter calls, is in all but rare cases).
                    v[j][i] = static_cast<float>(exp(static_cast<double>(__fsub_rn(v[j][i], mx))));
                    s += static_cast<double>(v[j][i]);
                }
        const double sum = qf_group_reduce<C::WPR, false>(s, red);
#pragma unroll
        for (int j = 0; j < NV; ++j)
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                v[j][i] = qf_round<typename C::Y>(static_cast<float>(static_cast<double>(v[j][i]) / sum));
            }
    }

    if constexpr (C::STORE_Y) {
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            const long long k = t + j * TPR;
            if (k < nvec) qf_store_vec<typename C::Y>(a.y + row * n + k * VEC, v[j]);
        }
    }

    static_assert(!C::ROUND_TRIP || (C::QUANT != 0 && !C::STORE_Y), "a round trip quantizes and stores only y");
    if constexpr (C::ROUND_TRIP) {
#pragma unroll
        for (int j = 0; j < NV; ++j)
#pragma unroll
            for (int i = 0; i < VEC; ++i) v[j][i] = qf_round<typename C::Y>(__fmul_rn(v[j][i], a.pre));
    }

    if constexpr (C::QUANT == 5) {
        qf_block_quant<C>(a, row, n, nvec, t, v);
    } else if constexpr (C::QUANT != 0) {
        float s;
        if constexpr (C::QUANT == 1) {
            s = a.scale;
        } else if constexpr (C::QUANT == 2) {
            s = C::S::load(a.scale_in[0]);
        } else if constexpr (C::QUANT == 4) {
            s = C::S::load(a.scale_in[row]);
        } else {  // dynamic per token: amax ignores NaN; an all-zero row gets scale 1
            double m = 0.0;
#pragma unroll
            for (int j = 0; j < NV; ++j)
                if (t + j * TPR < nvec)
#pragma unroll
                    for (int i = 0; i < VEC; ++i) m = fmax(m, static_cast<double>(fabsf(v[j][i])));
            const float amax = static_cast<float>(qf_group_reduce<C::WPR, true>(m, red));
            s = qf_dynamic_scale(amax, C::qmax());
            if (!C::ROUND_TRIP && t == 0) a.scales[row] = C::S::store(s);
        }
#pragma unroll
        for (int j = 0; j < NV; ++j) {
            const long long k = t + j * TPR;
            if (k >= nvec) continue;
            float r[VEC];
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                const float d = __fdiv_rn(v[j][i], s);
                r[i] = C::ZERO ? __fadd_rn(rintf(d), a.zero) : d;
            }
            qf_quant_store<C>(a, row * n + k * VEC, s, r);
        }
    }
}
