// qfuse fused multi-head attention (IR op `attention`) for sm_80+ (built for sm_90a), with
// mma.sync.m16n8k16 (f16 or bf16 operands, f32 accumulators), ldmatrix and cp.async; with FP8
// (E4M3 q, k, v: sm_89+) both products run on mma.sync.m16n8k32.e4m3 instead.
//
// Operands (T = f16 or bf16, 16-bit patterns; Op = T, or E4M3 bytes when FP8), token-major with
// the heads interleaved:
//   q, k, v    Op[B, S, H*D]: element (b, s, h, d) at ((b*S + s)*H + h)*D + d
//   mask_bias  T[B, S] (only when HAS_MASK): additive bias per key position
//   out        T[B, S, H*D], or FP8 E4M3 bytes (same indexing) when QUANT_OUT
// D, H, the scale, the mask flag and the output kind are compile-time constants; S is a run-time
// argument (any S >= 1; the launch is skipped for S = 0 or B = 0). B is implicit in the grid.
//
// Reference semantics (the interpreter), per batch b, head h and query row i, over keys j < S:
//   s_ij = T( sum_d q_id k_jd )            f32 accumulation
//   s_ij = T( s_ij * scale )               if a scale is given
//   s_ij = T( s_ij + mask_bias[b, j] )     if masked
//   p_ij = T( exp(s_ij - max_j s) / sum_j exp(s_ij - max_j s) )   max, exp, sum in f32
//   o_id = T( sum_j p_ij v_jd )            f32 accumulation
//   out  = o, or qf_quantize_e4m3(o, out_scale) (a true division, RNE, saturating), or with
//          OUT_I8 qf_quantize_i8(o, out_scale) (RNE, saturating to [-128, 127], NaN -> 0)
// With FP8 (the IR's `fp8(qk_alpha, p_scale, pv_alpha)`), the products are those of two qmatmuls
// and the probabilities are quantized between them:
//   s_ij = T( f32(sum_d q_id k_jd) * qk_alpha )
//   p_ij = T(...) as above, then P_ij = qf_quantize_e4m3(p_ij, p_scale)  (E4M3 codes)
//   o_id = T( f32(sum_j P_ij v_jd) * pv_alpha )
// The kernel performs every one of these rounding steps (T roundings two at a time with paired
// conversions, bit-identical to one at a time). The only intended deviations: the sum of
// exponentials is accumulated in f32 with online rescaling (the reference sums exp(s - final max)
// in f64 and divides in f64 before rounding to f32 and T; here one correctly rounded f32 division),
// the tensor cores' f32 accumulation order, and CUDA's expf (<= 2 ulp). These move a probability
// or an output by one T ulp on near-ties, or by more ulps only where a sum of products cancels to
// a value far below its terms (absolute error stays at the ulp of the terms). Measured on an H100
// against the interpreter (random f16/bf16 inputs, S = 1..512, D = 32/64/128): 0.002-0.7 % of
// outputs differ, none by more than 1 ulp of 1.0 in absolute terms; NaN rows agree.
//
// Work decomposition: one CTA per (64-query tile, head, batch) = (blockIdx.x, blockIdx.y,
// blockIdx.z); 4 warps, warp w owns query rows 16w..16w+15 of the tile (one m16 MMA row block).
// Keys are visited in tiles of 64, in TWO passes over all key tiles:
//   pass 1 (K tiles only): scores -> per-row running max m and sum l of exp(s - m), rescaled
//          whenever m grows (online softmax statistics);
//   pass 2 (K and V tiles): the scores are recomputed bit-identically (same MMAs, same order),
//          p = T(exp(s - m) / l) is formed BEFORE the product, exactly like the reference, and
//          packed straight from the score accumulators into MMA A fragments (no shared-memory
//          round trip), then o += p . V in f32.
// The 2*T steps (T = ceil(S/64) key tiles per pass) form one sequence that a double-buffered
// cp.async pipeline walks: step i+1's tiles load while step i computes.
//
// Shared memory (dynamic, 5 tiles of 64 x D operands, ROW_BYTES = D * sizeof(Op) a row):
// Q | K[2] | V[2]. Each tile is row-major (row = token, 16-byte chunks along d) with an XOR swizzle
// on the chunk index (tile_off) so the 8 row addresses of every ldmatrix 8x8 matrix hit 8 distinct
// 16-byte bank groups. Rows past S are zero-filled by cp.async (src_bytes = 0): zero Q rows only
// feed outputs that are never stored, zero V rows meet p = 0 (0 * 0, never 0 * garbage = NaN).
//
// FP8: an m16n8k32 A fragment holds 4 consecutive k of a row per register, where the score
// accumulators (C layout) hold pairs 2t, 2t+1 of each n8 tile. Rather than shuffling, P.V runs
// over the keys of each 32-key block in a permuted order: mma position kappa = 4t + i (i < 4) is
// key 8*(i/2) + 2t + i%2, and kappa + 16 is that key + 16 (so a0 = tiles 0 and 1 of row g, etc.).
// V is therefore stored transposed, d-major (V^T[d][kappa], 64 bytes a row, 4-byte words XOR-
// swizzled by (d/2)%4 * 4 so a warp's B-fragment loads hit 32 distinct banks): the V tile arrives
// by cp.async as in the f16 kernel (keys past S zero-filled) and is transposed shared -> shared
// after the step's Q.K^T, followed by one more barrier (a sixth tile of shared memory). Q.K^T needs no
// permutation: ldmatrix .b16 on byte rows delivers exactly the e4m3 A/B fragments (4 consecutive
// bytes of d per register), so the Q and K tiles are used as in the f16 kernel.
//
// Keys past S get the score -inf: they never raise the max and contribute exp(-inf) = 0. A row
// whose valid scores are all -inf (e.g. every key masked with -65504 and a score below -16, whose
// f16 sum overflows to -inf, exactly as in the reference) has max -inf; the reference then
// computes exp(-inf - -inf) = NaN for the whole row, and so does this kernel (pass 2 uses the true
// max). Pass 1 subtracts 0 instead of a -inf running max, so a leading run of -inf scores cannot
// poison the sum of a row whose final max is finite. A +inf or NaN score gives a NaN row in both.

{{prelude}}

namespace attn {

constexpr int D = {{head_dim}};  // head size
constexpr int H = {{heads}};  // heads
constexpr int HD = H * D;  // elements per token in q, k, v, out
constexpr bool BF16 = {{bf16}};  // T = bf16 (else f16)
constexpr bool FP8 = {{fp8}};    // q, k, v are E4M3 bytes (else T)
constexpr bool HAS_SCALE = {{has_scale}};
constexpr uint32_t SCALE_BITS = {{scale_bits}}u;  // the score scale, bit-exact (when HAS_SCALE)
constexpr bool HAS_MASK = {{has_mask}};
constexpr bool QUANT_OUT = {{quant_out}};  // store FP8 E4M3 bytes (or i8 codes when OUT_I8)
constexpr bool OUT_I8 = {{out_i8}};         // the output quantize stores i8: qf_quantize_i8

// The per-layer constants, kernel parameters (every layer's attention of one shape is one kernel);
// 0 where unused.
struct Consts {
    float qk_alpha;  // FP8: multiplier of Q.K^T's f32 sums
    float p_scale;   // FP8: the probabilities' quantize scale
    float p_rcp;     // FP8: RN(1 / p_scale), for qf_div_by_scale
    float pv_alpha;  // FP8: multiplier of P.V's f32 sums
    float out_scale; // QUANT_OUT: the output quantize's scale
};

constexpr int BQ = 64;                 // query rows per CTA
constexpr int BKV = 64;                // keys per tile
constexpr int WARPS = BQ / 16;         // one m16 row block per warp
constexpr int THREADS = WARPS * 32;
// __launch_bounds__ minimum CTAs per SM: caps registers at 65536 / (THREADS * MIN_CTAS), 128 for
// D <= 64 (4 CTAs, 16 warps per SM) and 255 for D = 128 (its 64 f32 output accumulators and 32
// Q fragment registers need ~245). Without a minimum, ptxas picked fewer registers and spilled.
constexpr int MIN_CTAS = D == 128 ? 1 : 4;
constexpr int ES = FP8 ? 1 : 2;        // bytes per operand element
constexpr int ROW_BYTES = D * ES;      // one token's head in a tile
constexpr int CH = ROW_BYTES / 16;     // 16-byte chunks per tile row
constexpr int TILE_BYTES = 64 * ROW_BYTES;  // one 64 x D tile of operands (V^T: D x 64 when FP8)
constexpr int Q_OFF = 0;
constexpr int K_OFF = TILE_BYTES;      // K[buf] at K_OFF + buf * TILE_BYTES
constexpr int V_OFF = 3 * TILE_BYTES;  // V[buf] at V_OFF + buf * TILE_BYTES
constexpr int KSTEPS_QK = ROW_BYTES / 32;  // k-steps of Q K^T over d: 32 bytes each (k16 / k32)
constexpr int NT_S = BKV / 8;          // n8 tiles of a 16 x 64 score block
constexpr int NT_O = D / 8;            // n8 tiles of a 16 x D output block
constexpr int VT_OFF = 5 * TILE_BYTES;  // FP8: V^T, the transposed V tile of the current step
constexpr int SMEM_BYTES = (FP8 ? 6 : 5) * TILE_BYTES;  // Q | K[2] | V[2] (| V^T)
// e / l with e < P_TINY and l >= 0.5 is below half of T's smallest subnormal (f16: 2^-24, bf16:
// 2^-133), so it rounds to 0: P_TINY = 2^-26 (f16) or 2^-135 (bf16, an f32 subnormal).
constexpr uint32_t P_TINY_BITS = BF16 ? 0x00004000u : 0x32800000u;

static_assert(D == 32 || D == 64 || D == 128, "head size must be 32, 64 or 128");
static_assert((64 * CH) % THREADS == 0, "a tile's 16-byte chunks split evenly over the threads");
static_assert(BQ == 64 && BKV == 64, "the indexing below assumes 64 x 64 blocks");

typedef uint16_t T;
template <bool F> struct OpSel { typedef uint16_t type; };  // T
template <> struct OpSel<true> { typedef uint8_t type; };   // E4M3 bytes
typedef OpSel<FP8>::type Op;
constexpr int CHUNK_ELEMS = 16 / ES;  // operand elements per 16-byte chunk
template <bool Q> struct OutSel { typedef uint16_t type; };  // T
template <> struct OutSel<true> { typedef uint8_t type; };  // FP8 E4M3 bytes
typedef OutSel<QUANT_OUT>::type OutT;

QF_DEVICE float neg_inf() { return __uint_as_float(0xff800000u); }

QF_DEVICE float to_f32(T x) {
    if constexpr (BF16) return qf_bf16_to_f32(x);
    else return qf_f16_to_f32(x);
}

// Two f32 -> packed T x2, round to nearest even; `lo` in the low half (lower address / lower k).
QF_DEVICE uint32_t pack2(float lo, float hi) {
    if constexpr (BF16) {
        uint32_t r;
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
        return r;
    } else {
        return qf_pack_f16x2(lo, hi);
    }
}

// Rounds two values to T at once: one paired conversion (each half RNE, overflow to +-inf, as
// qf_round_f16 / qf_round_bf16 do one at a time) and two exact widenings.
QF_DEVICE void round2(float& a, float& b) {
    const uint32_t p = pack2(a, b);
    if constexpr (BF16) {
        a = __uint_as_float(p << 16);
        b = __uint_as_float(p & 0xffff0000u);
    } else {
        a = qf_f16_to_f32(static_cast<uint16_t>(p & 0xffffu));
        b = qf_f16_to_f32(static_cast<uint16_t>(p >> 16));
    }
}

// D(16x8, f32) += A(16x16, row) * B(16x8, col), T operands. Fragment layouts (g = lane / 4,
// t = lane % 4): A regs {(g, 2t..2t+1), (g+8, 2t..), (g, 2t+8..), (g+8, 2t+8..)} as (row, k);
// B regs {(k 2t..2t+1, n g), (k 2t+8.., n g)}; C/D {(g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1)}.
QF_DEVICE void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    if constexpr (BF16) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
            "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
            "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
}

// ldmatrix .x4 .trans: as qf_ldmatrix_x4, but each 8x8 matrix is delivered transposed: thread i
// receives elements (row 2(i%4), col i/4) and (row 2(i%4)+1, col i/4) of the matrix whose rows
// lanes 8m..8m+7 address.
QF_DEVICE void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// One k-step of a product: k16 of T operands, or k32 of E4M3 bytes; B = {b0, b1}.
QF_DEVICE void mma_step(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    if constexpr (FP8) {
        const uint32_t b[2] = {b0, b1};
        qf_mma_e4m3_16832(d, a, b);
    } else {
        mma16816(d, a, b0, b1);
    }
}

// Byte offset of 16-byte chunk c of row r in a swizzled 64-row tile of ROW_BYTES a row.
// ROW_BYTES <= 64 (2 or 4 rows per 128-byte line): the 128-byte-line swizzle of common.cuh (the
// chunk index within the line is XORed with the line index mod 8). ROW_BYTES >= 128 (8 or 16
// chunks a row): the low 3 bits of c are XORed with r mod 8, staying inside the row. Either way
// the 8 rows r0..r0+7 (r0 % 8 == 0) at a fixed c land in 8 distinct 16-byte slots mod 128 bytes:
// conflict-free ldmatrix.
QF_DEVICE uint32_t tile_off(int r, int c) {
    if constexpr (ROW_BYTES <= 64) return qf_swizzle128(static_cast<uint32_t>(r * ROW_BYTES + c * 16));
    else return static_cast<uint32_t>(r * ROW_BYTES + ((c ^ (r & 7)) << 4));
}

// FP8: the mma position kappa of key < 64 of a tile (see the header): within each 32-key block,
// key 8a + 2t + b (a, b < 2, t < 4) of each 16-key half sits at 4t + 2a + b.
QF_DEVICE int kappa_of(int key) {
    return 32 * (key >> 5) + 16 * ((key >> 4) & 1) + 4 * ((key >> 1) & 3) + 2 * ((key >> 3) & 1) + (key & 1);
}

// FP8 V^T: the byte offset of (d, kappa), its 4-byte word XOR-swizzled by (d / 2) % 4 * 4.
QF_DEVICE uint32_t vt_off(int d, int kappa) {
    const int word = (kappa >> 2) ^ (((d >> 1) & 3) << 2);
    return static_cast<uint32_t>(d * 64 + word * 4 + (kappa & 3));
}

// cp.async of the 64 x D tile whose first token is `row0` into the tile at shared address `dst`.
// `head` points at element (b, 0, h, 0); token s of the head starts at head + s * HD. Chunk
// i = tid + THREADS * p of the tile is row i / CH, chunk i % CH. Tokens >= S are zero-filled
// (src_bytes = 0, source address clamped to `head`, which is valid).
QF_DEVICE void load_tile(uint32_t dst, const Op* head, int row0, int S, int tid) {
#pragma unroll
    for (int p = 0; p < 64 * CH / THREADS; ++p) {
        const int i = tid + THREADS * p;
        const int r = i / CH;
        const int c = i % CH;
        const int s = row0 + r;
        const bool ok = s < S;
        const Op* src = ok ? head + static_cast<size_t>(s) * HD + c * CHUNK_ELEMS : head;
        qf_cp_async_16(dst + tile_off(r, c), src, ok ? 16u : 0u);
    }
}

// FP8: stores the 4 bytes of `word` (d0..d0+3 of one key) into the V^T tile `vt`.
QF_DEVICE void store_vt_word(uint8_t* vt, uint32_t word, int d0, int kappa) {
#pragma unroll
    for (int b = 0; b < 4; ++b) vt[vt_off(d0 + b, kappa)] = static_cast<uint8_t>(word >> (8 * b));
}

// FP8: transposes the V tile at shared address `v` (as load_tile left it) into the V^T tile `vt`
// (shared memory): thread tid moves chunks i = tid + THREADS * p (key i / CH, d 16 (i % CH) ..).
QF_DEVICE void transpose_v(uint8_t* vt, uint32_t v, int tid) {
#pragma unroll
    for (int p = 0; p < 64 * CH / THREADS; ++p) {
        const int i = tid + THREADS * p;
        const int key = i / CH;
        const int c = i % CH;
        uint32_t w[4];
        asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3])
                     : "r"(v + tile_off(key, c)));
#pragma unroll
        for (int q = 0; q < 4; ++q) store_vt_word(vt, w[q], 16 * c + 4 * q, kappa_of(key));
    }
}

// The finished scores of one 16 x 64 block: this warp's 16 query rows against the keys
// key0..key0+63 of the K tile at shared address `kt`.
// acc[n][e] is the score of query row (16w +) g + 8*(e/2) and key key0 + 8n + 2t + (e%2), where
// g = lane / 4, t = lane % 4 (the m16n8 C fragment layout). Keys >= S get -inf.
QF_DEVICE void scores(float (&acc)[NT_S][4], const uint32_t (&qf)[KSTEPS_QK][4], uint32_t kt, int key0,
                      const T* mask_row, int S, int lane, float qk_alpha) {
#pragma unroll
    for (int n = 0; n < NT_S; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[n][e] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KSTEPS_QK; ++kk) {
#pragma unroll
        for (int np = 0; np < NT_S / 2; ++np) {
            // B operand = K^T: element (k = d, n = key) is K[key][d], i.e. the K tile's rows are
            // the B fragment's columns, so plain (non-transposed) ldmatrix delivers it. Lanes
            // 8m..8m+7 address matrix m: m = 0: keys 16np+0..7, d 16kk+0..7 (b0 of n-tile 2np);
            // m = 1: same keys, d 16kk+8..15 (b1 of 2np); m = 2, 3: keys 16np+8..15 (n-tile 2np+1).
            uint32_t kf[4];
            const int key = 16 * np + (lane & 7) + 8 * (lane >> 4);
            const int chunk = 2 * kk + ((lane >> 3) & 1);
            qf_ldmatrix_x4(kf, kt + tile_off(key, chunk));
            mma_step(acc[2 * np], qf[kk], kf[0], kf[1]);
            mma_step(acc[2 * np + 1], qf[kk], kf[2], kf[3]);
        }
    }
    // The reference's rounding steps, T(dot) (FP8: T(dot * qk_alpha)), T(* scale), T(+ bias), two
    // elements at a time (the pair (e, e+1) is one row, keys 2t and 2t+1); keys >= S become -inf.
    const int t = lane & 3;
#pragma unroll
    for (int n = 0; n < NT_S; ++n) {
        const int key = key0 + 8 * n + 2 * t;
        float bias0 = 0.0f, bias1 = 0.0f;
        if constexpr (HAS_MASK) {
            if (key < S) bias0 = to_f32(mask_row[key]);
            if (key + 1 < S) bias1 = to_f32(mask_row[key + 1]);
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {  // r = 0: row g (e = 0, 1); r = 1: row g + 8 (e = 2, 3)
            float a = acc[n][2 * r], b = acc[n][2 * r + 1];
            if constexpr (FP8) {
                a = __fmul_rn(a, qk_alpha);
                b = __fmul_rn(b, qk_alpha);
            }
            round2(a, b);
            if constexpr (HAS_SCALE) {
                a = __fmul_rn(a, __uint_as_float(SCALE_BITS));
                b = __fmul_rn(b, __uint_as_float(SCALE_BITS));
                round2(a, b);
            }
            if constexpr (HAS_MASK) {
                a = __fadd_rn(a, bias0);
                b = __fadd_rn(b, bias1);
                round2(a, b);
            }
            acc[n][2 * r] = key < S ? a : neg_inf();
            acc[n][2 * r + 1] = key + 1 < S ? b : neg_inf();
        }
    }
}

// a / b rounded to nearest even, for the operands prob() divides: b = l in [0.5, 2^31), a = e in
// [2^-26, 1] (f16) or [2^-135, 1] (bf16). This is the fast path of CUDA's IEEE division (refined
// MUFU reciprocal, quotient, fma residual, corrected quotient), which is correctly rounded when
// nothing overflows or underflows, as here (for bf16, quotients that are f32 subnormals may be
// off by one subnormal step, far below bf16's resolution). Without CUDA's range check it has no
// slow-path call. NaN in -> NaN out.
QF_DEVICE float div_rn(float a, float b) {
    float y;
    asm("rcp.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(b));
    y = fmaf(y, fmaf(-b, y, 1.0f), y);
    const float q = __fmul_rn(a, y);
    return fmaf(fmaf(-b, q, a), y, q);
}

// p = exp(s - m) / l in f32, the reference's probability before its rounding to T, which the
// packing into the MMA fragment (pack2, RNE) performs; a true division. When exp(s - m) is below
// P_TINY and l >= 0.5 (always so unless l is NaN or 0, i.e. the row is NaN anyway: m = -inf
// makes every exp(s - m) NaN), the quotient is below half of T's smallest subnormal and rounds
// to +0, so the division is skipped (peaky rows: most keys 90+ below the max).
QF_DEVICE float prob(float s, float m, float l) {
    const float e = expf(s - m);
    if (e < __uint_as_float(P_TINY_BITS) && l >= 0.5f) return 0.0f;
    return div_rn(e, l);
}

// FP8: the E4M3 code of a probability, qf_quantize_e4m3(p, p_scale) (the true quotient, through
// qf_div_by_scale without a division's slow path, RNE, saturating).
QF_DEVICE uint32_t quantize_p(float p, const Consts& c) {
    return qf_f32_to_e4m3(qf_div_by_scale(p, c.p_scale, c.p_rcp));
}

// The whole kernel; mask_bias is null without a mask.
QF_DEVICE void attention(const Op* __restrict__ q, const Op* __restrict__ k, const Op* __restrict__ v,
                         const T* __restrict__ mask_bias, OutT* __restrict__ out, int S, const Consts c) {
    extern __shared__ __align__(128) uint8_t smem[];
    const uint32_t sm = qf_smem_addr(smem);
    const int tid = threadIdx.x;
    const int warp = tid >> 5;
    const int lane = tid & 31;
    const int g = lane >> 2;  // fragment row (and row + 8)
    const int t = lane & 3;   // fragment column pair
    const int q0 = blockIdx.x * BQ;  // first query token of the tile
    const int h = blockIdx.y;
    const int b = blockIdx.z;
    // Element (b, 0, h, 0) of q, k, v, out; token s of this head is at + s * HD.
    const size_t head = (static_cast<size_t>(b) * S * H + h) * D;
    const T* mask_row = nullptr;
    if (HAS_MASK) mask_row = mask_bias + static_cast<size_t>(b) * S;
    const int tiles = (S + BKV - 1) / BKV;  // key tiles per pass
    const int steps = 2 * tiles;            // pass 1: steps 0..tiles-1, pass 2: tiles..steps-1

    // Prologue: Q and step 0 (K tile 0) in one group.
    load_tile(sm + Q_OFF, q + head, q0, S, tid);
    load_tile(sm + K_OFF, k + head, 0, S, tid);
    qf_cp_async_commit();

    uint32_t qf[KSTEPS_QK][4];  // this warp's Q rows as A fragments, k16 step kk = d 16kk..16kk+15
    float m[2] = {neg_inf(), neg_inf()};  // running max of rows g and g+8 (equal across a quad)
    float l[2] = {0.0f, 0.0f};  // pass 1: this thread's partial sum; pass 2: the row's full sum
    float o[NT_O][4];           // o[n][e]: row g + 8*(e/2), d = 8n + 2t + (e%2)
#pragma unroll
    for (int n = 0; n < NT_O; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[n][e] = 0.0f;

    for (int step = 0; step < steps; ++step) {
        // Prefetch step + 1 into the other buffer (freed by the trailing barrier of step - 1).
        const int next = step + 1;
        const bool next_has_v = next < steps && next >= tiles;
        if (next < steps) {
            const int buf = next & 1;
            const int j = next < tiles ? next : next - tiles;
            load_tile(sm + K_OFF + buf * TILE_BYTES, k + head, j * BKV, S, tid);
            if (next_has_v) load_tile(sm + V_OFF + buf * TILE_BYTES, v + head, j * BKV, S, tid);
        }
        qf_cp_async_commit();  // possibly empty: keeps the group count uniform
        qf_cp_async_wait<1>();  // everything but the newest group: step's tiles (and Q) landed
        __syncthreads();

        if (step == 0) {
            // A fragments of Q: lane l addresses row 16w + l%16, d 16kk + 8*(l/16), so the four
            // matrices are (rows 0-7 | 8-15) x (d 0-7 | 8-15) in the A register order.
#pragma unroll
            for (int kk = 0; kk < KSTEPS_QK; ++kk)
                qf_ldmatrix_x4(qf[kk], sm + Q_OFF + tile_off(16 * warp + (lane & 15), 2 * kk + (lane >> 4)));
        }

        const int buf = step & 1;
        const bool pass1 = step < tiles;
        const int j = pass1 ? step : step - tiles;
        float s[NT_S][4];
        scores(s, qf, sm + K_OFF + buf * TILE_BYTES, j * BKV, mask_row, S, lane, c.qk_alpha);
        if constexpr (FP8) {
            // This step's V tile (landed with the step's group) into V^T, which the trailing
            // barrier of step - 1 freed; the barrier after it publishes V^T to P.V. Uniform: the
            // condition is the same for every thread.
            if (!pass1) {
                transpose_v(smem + VT_OFF, sm + V_OFF + buf * TILE_BYTES, tid);
                __syncthreads();
            }
        }

        if (pass1) {
#pragma unroll
            for (int r = 0; r < 2; ++r) {  // r = 0: row g (e = 0, 1); r = 1: row g + 8 (e = 2, 3)
                float mt = neg_inf();
#pragma unroll
                for (int n = 0; n < NT_S; ++n) mt = fmaxf(mt, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
                // The quad (lanes 4g..4g+3) holds the row's 64 keys.
                mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
                mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 2));
                const float mnew = fmaxf(m[r], mt);
                const float base = mnew == neg_inf() ? 0.0f : mnew;
                float sum = 0.0f;
#pragma unroll
                for (int n = 0; n < NT_S; ++n) sum += expf(s[n][2 * r] - base) + expf(s[n][2 * r + 1] - base);
                l[r] = l[r] * expf(m[r] - base) + sum;  // m = -inf: 0 * 0; m unchanged: * 1
                m[r] = mnew;
            }
            if (step == tiles - 1) {
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
                    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
                }
            }
        } else if constexpr (FP8) {
            // P = E4M3(T(exp(s - max) / sum)), then the P.V product, k32 step kk = keys
            // 32kk..32kk+31 in the permuted order of the header: a0 = row g, score n-tiles 4kk
            // and 4kk+1 (keys 2t, 2t+1 of each); a1 the same for row g + 8; a2, a3 n-tiles 4kk+2,
            // 4kk+3. B fragments are words of V^T (vt_off): b0 = kappa 4t..4t+3, b1 = 16 + that.
            const uint32_t vt = sm + VT_OFF;
#pragma unroll
            for (int kk = 0; kk < BKV / 32; ++kk) {
                uint32_t pa[4];
#pragma unroll
                for (int half = 0; half < 2; ++half) {
#pragma unroll
                    for (int r = 0; r < 2; ++r) {
                        const float(&c0)[4] = s[4 * kk + 2 * half];
                        const float(&c1)[4] = s[4 * kk + 2 * half + 1];
                        float p0 = prob(c0[2 * r], m[r], l[r]), p1 = prob(c0[2 * r + 1], m[r], l[r]);
                        float p2 = prob(c1[2 * r], m[r], l[r]), p3 = prob(c1[2 * r + 1], m[r], l[r]);
                        round2(p0, p1);
                        round2(p2, p3);
                        pa[2 * half + r] = quantize_p(p0, c) | (quantize_p(p1, c) << 8) | (quantize_p(p2, c) << 16) | (quantize_p(p3, c) << 24);
                    }
                }
#pragma unroll
                for (int n = 0; n < NT_O; ++n) {
                    const int dcol = 8 * n + g;
                    uint32_t b0, b1;
                    asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(b0) : "r"(vt + vt_off(dcol, 32 * kk + 4 * t)));
                    asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(b1) : "r"(vt + vt_off(dcol, 32 * kk + 16 + 4 * t)));
                    mma_step(o[n], pa, b0, b1);
                }
            }
        } else {
            // p = T(exp(s - max) / sum), then the P.V product. The A fragment of k16 step kk
            // (keys 16kk..16kk+15) is score n-tiles 2kk (a0..a3: keys 2t, 2t+1 of rows g, g+8)
            // and 2kk+1 (a4..a7: keys 8+2t, 8+2t+1): the C layout of two n8 tiles is the A layout
            // of one k16 step.
            const uint32_t vt = sm + V_OFF + buf * TILE_BYTES;
#pragma unroll
            for (int kk = 0; kk < BKV / 16; ++kk) {
                uint32_t pa[4];
#pragma unroll
                for (int half = 0; half < 2; ++half) {
                    const float(&c)[4] = s[2 * kk + half];
                    // pack2 rounds each p to T (RNE): p = T(exp(s - max) / sum).
                    pa[2 * half] = pack2(prob(c[0], m[0], l[0]), prob(c[1], m[0], l[0]));      // row g
                    pa[2 * half + 1] = pack2(prob(c[2], m[1], l[1]), prob(c[3], m[1], l[1]));  // row g + 8
                }
#pragma unroll
                for (int dn = 0; dn < D / 16; ++dn) {
                    // B operand = V: element (k = key, n = d) is V[key][d]; the pair a thread
                    // needs (keys 2t, 2t+1 at d = g) runs down a column, hence .trans. Lanes
                    // 8m..8m+7 address matrix m: m = 0: keys 16kk+0..7, d 16dn+0..7 (b0 of
                    // n-tile 2dn); m = 1: keys 16kk+8..15, same d (b1 of 2dn); m = 2, 3: the same
                    // keys at d 16dn+8..15 (n-tile 2dn+1).
                    uint32_t vf[4];
                    const int key = 16 * kk + (lane & 7) + 8 * ((lane >> 3) & 1);
                    const int chunk = 2 * dn + (lane >> 4);
                    ldmatrix_x4_trans(vf, vt + tile_off(key, chunk));
                    mma_step(o[2 * dn], pa, vf[0], vf[1]);
                    mma_step(o[2 * dn + 1], pa, vf[2], vf[3]);
                }
            }
        }
        __syncthreads();  // every warp is done with buffer `buf` before step + 2 refills it
    }
    qf_cp_async_wait<0>();

    // Epilogue: o[n][e] is query token q0 + 16w + g + 8*(e/2), element d = 8n + 2t + (e%2) of
    // head h; each thread stores its two adjacent d values at once.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int sq = q0 + 16 * warp + g + 8 * r;
        if (sq >= S) continue;
        OutT* row = out + head + static_cast<size_t>(sq) * HD;
#pragma unroll
        for (int n = 0; n < NT_O; ++n) {
            const int d = 8 * n + 2 * t;
            float x0 = o[n][2 * r];
            float x1 = o[n][2 * r + 1];
            if constexpr (FP8) {
                x0 = __fmul_rn(x0, c.pv_alpha);
                x1 = __fmul_rn(x1, c.pv_alpha);
            }
            if constexpr (QUANT_OUT) {
                // T(o), then the output quantize: two bytes, d even -> 2-byte aligned.
                round2(x0, x1);
                const float sc = c.out_scale;
                const uint32_t b0 = OUT_I8 ? static_cast<uint8_t>(qf_quantize_i8(x0, sc)) : qf_quantize_e4m3(x0, sc);
                const uint32_t b1 = OUT_I8 ? static_cast<uint8_t>(qf_quantize_i8(x1, sc)) : qf_quantize_e4m3(x1, sc);
                *reinterpret_cast<uint16_t*>(row + d) = static_cast<uint16_t>(b0 | (b1 << 8));
            } else {
                // T(o) for both (pack2 rounds RNE); d even -> 4-byte aligned.
                *reinterpret_cast<uint32_t*>(row + d) = pack2(x0, x1);
            }
        }
    }
}

}  // namespace attn

// Grid (ceil_div(S, 64), H, B), block (128), attn::SMEM_BYTES of dynamic shared memory.
extern "C" __global__ void __launch_bounds__(attn::THREADS, attn::MIN_CTAS)
{{kernel_name}}(const attn::Op* __restrict__ q, const attn::Op* __restrict__ k, const attn::Op* __restrict__ v,
                {{mask_param}}attn::OutT* __restrict__ out, int S, float qk_alpha, float p_scale, float p_rcp,
                float pv_alpha, float out_scale) {
    qf_pdl_enter();
    attn::attention(q, k, v, {{mask_arg}}, out, S, attn::Consts{qk_alpha, p_scale, p_rcp, pv_alpha, out_scale});
}
