// qfuse skinny GEMM ("TN", M <= 16 rows) for sm_90a: the decode-time kernel of a `qmatmul`
// (src/codegen/ops/skinny.rs), launched instead of the tiled GEMM (gemm.cu, gemm_wonly.cu) when
// the row count M is at most 16 (Guard::RowsAtMost). Memory-bound by design: it streams the
// weight once at (close to) copy bandwidth and hides the arithmetic behind the loads.
//
//   acc[m,n] = sum_k A[m,k] * W[n,k]            (KIND = Wide / E4M3: f32 accumulation; products of
//                                                 f16 / bf16 / e4m3 values are exact in f32.
//                                                 KIND = I8: exact s32 sums, converted to f32 once
//                                                 with RNE, as gemm.cu)
//   W[n,k]   = B[n,k]                            (KIND = Wide, E4M3, I8: same dtype as A)
//   W[n,k]   = ACT((code[n,k] - z) * s)          (KIND = Wonly: computed in f32, rounded to ACT =
//                                                 A's f16 / bf16; gemm_dequant.cuh, exactly as
//                                                 gemm_wonly.cu)
//   Y[m,n]   = STORE( EPILOGUE(acc[m,n], inputs at (m,n)) )   (gemm_epilogue.cuh +
//                                                 gemm_store_tile.cuh, the same printed Expr as the
//                                                 tiled GEMMs)
//
// The kernels differ from the interpreter only in the order of the f32 sums (I8: not at all).
//
// Norm prologue (PROLOGUE != 0; src/codegen/ops/prologue.rs, the `prologue` flag of an RMSNorm):
// A is not the activation operand but the norm's input x [M, K] (PX elements), and the operand is
//   a[m,k] = PY(f32(f64(x[m,k]) * inv[m]) * gamma[k])       (PROLOGUE 1: ACT = PY)
//   a[m,k] = cast_E4M3(a_PY[m,k] / QSCALE) (2), cast_I8(a_PY[m,k] / QSCALE) (3)   (the true
//            quotient through qf_div_by_scale, as the GEMM epilogues' output quantize)
// with inv[m] = 1 / sqrt(sum_k x[m,k]^2 / K + eps) in f64 (qf_rms_inv) and the element rounding
// of qf_rms_element: the norm kernel's arithmetic (ops.cuh, qf_row_main NORM 2 and QUANT 1), so
// only the order of the f64 sum of squares differs. Every block computes inv for the M rows
// (warp w: rows w, w + WARPS, ...) after qf_pdl_enter, then normalises each activation chunk as it
// loads it. GAMMA [K] (PG elements) and QSCALE are the last two parameters. Requires K % 8 == 0.
// A is [M,K] row-major (the IR's [.., M, K] flattened), ACT (Wide, Wonly) or bytes (E4M3, I8); B
// is [N,K] row-major: ACT, bytes, or Wonly codes (I8, U8, E4M3 bytes; I4, U4, E2M1 two per byte
// along K, element 0 in the low nibble) with the scale / zero point layout of gemm_wonly.cu.
// N, K and the tiles are compile-time constants; M (1..16) is a run-time argument: rows >= M are
// neither read nor stored (the result is unspecified for M > 16: the plans never launch it so).
// Requires K * W_BITS / 8 % 16 == 0 (whole 16-byte chunks of a weight row; the row's last 64-byte
// step may hold fewer than four, e.g. 4-bit codes at SmolLM2's K = 576), N % BN == 0, 16-byte
// aligned pointers (every IR value is 256-byte aligned).
//
// ---- design ----------------------------------------------------------------------------------
// Swapped operands: the weight is the MMA's A operand (16 output columns n per m16 tile, K-major
// rows = "row" layout) and the activations are its B operand (the M rows as n8 tiles, NT = 1 for
// M <= 8, else 2), so one mma.sync m16n8k16 (f16 / bf16; E4M3 converted exactly to f16; Wonly
// dequantized to ACT) or m16n8k32 (s8) consumes 16 weight columns whatever M is, and the tensor
// cores do the multiply-adds that would otherwise bound the kernel at M = 16.
//
// Block b owns the BN = 16 * CT output columns n0 = b*BN .. (CT column tiles); grid (N / BN, 1, 1),
// no split-K across blocks (see skinny.rs: BN and WARPS are chosen so N / BN blocks of WARPS warps
// fill the 132 SMs of an H100). Its WARPS warps split the weight rows' bytes along K in steps of 64
// bytes (4 lanes x 16): warp w takes the runs of UNROLL consecutive steps starting at
// (w + i * WARPS) * UNROLL. In step s, lane (g = lane/4, q = lane%4) loads the 16-byte chunk at
// byte s*64 + 16q of weight rows n0 + ct*16 + g and n0 + ct*16 + g + 8 for every column tile ct
// with ld.global.nc.L1::no_allocate (read once: not kept in L1); a run's 2 * CT * UNROLL chunks
// (8 at the default specs: 128 bytes per lane) are all issued, with their scales, before any is
// used. A chunk holds EPC = 8
// (Wide), 16 (bytes) or 32 (nibbles) elements from k0 = (s*64 + 16q) * 8 / W_BITS; the lane then
// reads the same k0 .. k0+EPC-1 of activation row nt*8 + g (L1-cached __ldg: every block reads all
// of A; zero for rows >= M).
//
// k permutation: mma pairs A's and B's k by fragment position, so any map of physical k to
// fragment slots used for both operands leaves the sum unchanged. For ACT MMAs (k16), MMA j of a
// group of 8 elements uses packed pairs 2j, 2j+1 (4 consecutive physical k) as the fragment's
// logical k {2q, 2q+1} and {2q+8, 2q+9}: a0/a2 from weight row g, a1/a3 from row g+8, b0/b1 from the
// activation row; for s8 MMAs (k32), MMA j of a chunk uses words 2j, 2j+1 (8 consecutive k) as
// logical k {4q..4q+3} and {16+4q..16+4q+3} the same way.
//
// Accumulators: acc[ct][nt][2h + e] = output column ct*16 + g + 8h, output row nt*8 + 2q + e. Each
// warp stages its partial sums in shared memory (tile w: [16 rows][BN + 8] f32; s32 bits for I8);
// they are added in warp order 0, 1, ..., WARPS-1 for rows < M by one thread per element
// (deterministic: no atomics, the same bits every run; I8 adds exactly in s32 and converts once),
// and the sum (tile 0) is the staged tile of the shared epilogue stage 2 (gemm_store_tile.cuh, BM =
// 16 rows, EPI_THREADS threads, 4 consecutive columns per thread).

{{prelude}}
{{ops}}

namespace qf_skinny {

enum class Kind { Wide, E4M3, I8, Wonly };
enum class Act { F16, BF16 };
enum class Code { I8, U8, I4, U4, E4M3, E2M1 };
enum class Zero { None, Literal, Input };
constexpr Kind KIND = Kind::{{kind}};
constexpr Act ACT = Act::{{act}};  // MMA type: A's dtype (Wide, Wonly), F16 for E4M3, unused for I8
constexpr Code CODE = Code::{{code}};  // Wonly only (the rest ignore the dequantization constants)
constexpr Zero ZERO = Zero::{{zero}};
constexpr int ZERO_VALUE = {{zero_value}};  // exact in f32 (|z| < 2^24)
constexpr bool ZP_SIGNED = {{zp_signed}};
constexpr int N = {{n}};
constexpr int K = {{k}};
constexpr int SCALE_ROWS = {{scale_rows}};
constexpr int SCALE_K = {{scale_k}};
constexpr int SCALE_COLS = (K + SCALE_K - 1) / SCALE_K;
constexpr int CT = {{col_tiles}};  // 16-column tiles per block (and per warp)
constexpr int WARPS = {{warps}};  // warps splitting K
constexpr int UNROLL = {{unroll}};  // consecutive 64-byte steps per warp run
constexpr int PROLOGUE = {{prologue}};  // 0: A is the operand; 1: RMSNorm to ACT; 2: + E4M3; 3: + I8
typedef {{pro_x}} PX;                   // PROLOGUE: x's dtype trait (ops.cuh)
typedef {{pro_gamma}} PG;               // PROLOGUE: gamma's
typedef {{pro_y}} PY;                   // PROLOGUE: the norm's result (`via`) dtype
QF_DEVICE double pro_eps() { return static_cast<double>({{pro_eps}}); }  // PROLOGUE: the norm's f32 epsilon

constexpr bool INT8 = KIND == Kind::I8;
constexpr bool NIBBLES = KIND == Kind::Wonly && (CODE == Code::I4 || CODE == Code::U4 || CODE == Code::E2M1);
constexpr int W_BITS = KIND == Kind::Wide ? 16 : NIBBLES ? 4 : 8;  // bits per weight element
constexpr int X_BYTES = KIND == Kind::Wide || KIND == Kind::Wonly ? 2 : 1;  // bytes per activation
constexpr int EPC = 128 / W_BITS;                // elements per 16-byte weight chunk
constexpr int X_CHUNKS = EPC * X_BYTES / 16;     // 16-byte activation pieces per chunk
constexpr int SCALES = NIBBLES && SCALE_K % 32 != 0 ? 2 : 1;  // Wonly: distinct scales per chunk
constexpr int ROW_BYTES = K * W_BITS / 8;        // bytes of one weight row
constexpr int STEPS = (ROW_BYTES + 63) / 64;     // 64-byte steps; the last may be partial (16-byte chunks)
constexpr int BM = 16;
constexpr int BN = 16 * CT;
constexpr int THREADS = 32 * WARPS;
constexpr int OUT_STRIDE = BN + 8;               // floats per staged output row
constexpr int VEC = 4;                           // output columns per thread in stage 2
constexpr int EPI_THREADS = BM * BN / VEC < THREADS ? BM * BN / VEC : THREADS;

static_assert(ROW_BYTES % 16 == 0 && N % BN == 0, "whole 16-byte chunks per weight row, whole column tiles");

// Whether lane q's 16-byte chunk of step st lies inside the weight row (a row of 4-bit codes at
// K = 576 is 288 bytes: its last step holds two chunks; lanes past the row load zeros and zero
// activations, so their MMAs add exact zeros).
QF_DEVICE bool chunk_live(int st, int q) { return st < STEPS && st * 64 + 16 * q < ROW_BYTES; }
static_assert(SCALE_K % 16 == 0 && SCALE_ROWS >= 1, "16 consecutive codes share one scale");
static_assert(PROLOGUE == 0 || K % 8 == 0, "the prologue loads x and gamma 8 elements at a time");
static_assert(PROLOGUE != 1 || (KIND == Kind::Wide || KIND == Kind::Wonly), "an ACT prologue feeds f16 / bf16 MMAs");
static_assert(PROLOGUE != 2 || KIND == Kind::E4M3, "an E4M3 prologue feeds E4M3 operands");
static_assert(PROLOGUE != 3 || KIND == Kind::I8, "an I8 prologue feeds I8 operands");
static_assert((BM * BN / VEC) % EPI_THREADS == 0, "even epilogue split");

// The accumulator type: exact s32 sums for I8, f32 otherwise.
template <bool I>
struct AccOf {
    using T = float;
};
template <>
struct AccOf<true> {
    using T = int32_t;
};
using Acc = AccOf<INT8>::T;

{{dequant}}

// ---- loads and MMAs ----------------------------------------------------------------------------

// 16 bytes of the weight stream: read once, so not allocated in L1 (L2 fetches 256-byte lines).
QF_DEVICE uint4 ld_stream(const uint8_t* p) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

QF_DEVICE uint32_t word(const uint4& v, int i) { return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w; }

// Two e4m3 bytes (the low 16 bits of `w` shifted by 16 * half) -> packed f16 pair, exactly.
QF_DEVICE uint32_t e4m3x2_to_f16x2(uint32_t w, int half) {
    uint32_t r;
    asm("{ .reg .b16 t; mov.b16 t, %1; cvt.rn.f16x2.e4m3x2 %0, t; }\n"
        : "=r"(r)
        : "h"(static_cast<uint16_t>((w >> (16 * half)) & 0xffffu)));
    return r;
}

// Element group p (8 consecutive elements) of a weight chunk as 4 packed ACT pairs.
QF_DEVICE void weight_pairs(uint32_t (&w)[4], const uint4& c, int p, float s, float z) {
    if constexpr (KIND == Kind::Wide) {
#pragma unroll
        for (int i = 0; i < 4; ++i) w[i] = word(c, i);
    } else if constexpr (KIND == Kind::E4M3) {
#pragma unroll
        for (int i = 0; i < 4; ++i) w[i] = e4m3x2_to_f16x2(word(c, 2 * p + i / 2), i % 2);
    } else {
        dequant8(w, NIBBLES ? word(c, p) : word(c, 2 * p), NIBBLES ? 0u : word(c, 2 * p + 1), s, z);
    }
}

// The activation pairs matching element group p of a chunk (the row's `x` pieces).
QF_DEVICE void act_pairs(uint32_t (&b)[4], const uint4 (&x)[X_CHUNKS], int p) {
    if constexpr (KIND == Kind::E4M3) {
#pragma unroll
        for (int i = 0; i < 4; ++i) b[i] = e4m3x2_to_f16x2(word(x[0], 2 * p + i / 2), i % 2);
    } else {
#pragma unroll
        for (int i = 0; i < 4; ++i) b[i] = word(x[p], i);
    }
}

// The MMAs of one chunk for weight rows g (`c`), g+8 (`c8`) and one activation n8 tile `x`, with
// the scales s[h][i] and zero points z[h][i] of row g + 8h's 16-element half i (Wonly).
// (A template so that only the accumulator type's branch is instantiated.)
template <typename T>
QF_DEVICE void mma_chunk(T (&d)[4], const uint4& c, const uint4& c8, const uint4 (&x)[X_CHUNKS], const float (&s)[2][2],
                         const float (&z)[2][2]) {
    if constexpr (INT8) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            const uint32_t a[4] = {word(c, 2 * j), word(c8, 2 * j), word(c, 2 * j + 1), word(c8, 2 * j + 1)};
            const uint32_t b[2] = {word(x[0], 2 * j), word(x[0], 2 * j + 1)};
            qf_mma_s8_16832(d, a, b);
        }
    } else {
        constexpr int GROUPS = EPC / 8;
#pragma unroll
        for (int p = 0; p < GROUPS; ++p) {
            uint32_t w[4], w8[4], b[4];
            // Group p sits in the chunk's 16-element half p / 2 (its own scale when SCALES = 2).
            weight_pairs(w, c, p, s[0][p / 2 % SCALES], z[0][p / 2 % SCALES]);
            weight_pairs(w8, c8, p, s[1][p / 2 % SCALES], z[1][p / 2 % SCALES]);
            act_pairs(b, x, p);
#pragma unroll
            for (int j = 0; j < 2; ++j) mma_act(d, w[2 * j], w8[2 * j], w[2 * j + 1], w8[2 * j + 1], b[2 * j], b[2 * j + 1]);
        }
    }
}

// ---- norm prologue ------------------------------------------------------------------------------

// What the mainloop needs of the prologue: gamma, the rows' inv (shared memory), the quantize scale.
struct Prologue {
    const uint8_t* gamma;
    const double* inv;
    float scale;
    float rcp;  // RN(1 / scale), for qf_div_by_scale (math.cuh): the true quotient without a division
};

// inv[m] for rows m < M (warp w takes rows w, w + WARPS, ...): the f64 sum of x^2 over the row,
// lane-strided in 8-element vectors (unrolled, so a lane's loads are in flight together: the row
// costs one memory round trip, not one per vector), then a butterfly over the warp.
QF_DEVICE void prologue_rows(double* inv, const uint8_t* X, int M, int warp, int lane) {
    const typename PX::T* x = reinterpret_cast<const typename PX::T*>(X);
#pragma unroll 1
    for (int m = warp; m < M; m += WARPS) {
        double s = 0.0;
#pragma unroll 8
        for (int v = lane; v < K / 8; v += 32) {
            float e[8];
            qf_load_vec<PX, 8>(x + (size_t)m * K + 8 * v, e);
#pragma unroll
            for (int i = 0; i < 8; ++i) s += static_cast<double>(e[i]) * static_cast<double>(e[i]);
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0) inv[m] = qf_rms_inv(s, static_cast<double>(K), pro_eps());
    }
}

// The operand chunk of activation row `row` at k0 .. k0 + EPC - 1 (row < M), normalised (and
// quantized) from x: X_CHUNKS 16-byte pieces, as the plain load would have read them.
QF_DEVICE void prologue_chunk(uint4 (&out)[X_CHUNKS], const uint8_t* X, const Prologue& p, int row, int k0) {
    const typename PX::T* x = reinterpret_cast<const typename PX::T*>(X) + (size_t)row * K + k0;
    const typename PG::T* gamma = reinterpret_cast<const typename PG::T*>(p.gamma) + k0;
    const double inv = p.inv[row];
    float y[EPC];
#pragma unroll
    for (int j = 0; j < EPC / 8; ++j) {
        float xv[8], gv[8];
        qf_load_vec<PX, 8>(x + 8 * j, xv);
        qf_load_vec<PG, 8>(gamma + 8 * j, gv);
#pragma unroll
        for (int i = 0; i < 8; ++i) y[8 * j + i] = qf_rms_element<PY>(xv[i], inv, gv[i]);
    }
    if constexpr (PROLOGUE == 1) {
#pragma unroll
        for (int c = 0; c < X_CHUNKS; ++c) {
            qf_pack<uint16_t, 8> k;
#pragma unroll
            for (int i = 0; i < 8; ++i) k.e[i] = PY::store(y[8 * c + i]);
            out[c] = *reinterpret_cast<const uint4*>(&k);
        }
    } else {
        qf_pack<uint8_t, 16> k;
#pragma unroll
        for (int i = 0; i < 16; ++i) {
            // qf_quantize_e4m3 / qf_quantize_i8's true quotient y / scale, exactly, by Markstein's
            // correction instead of an IEEE division per element.
            const float x = qf_div_by_scale(y[i], p.scale, p.rcp);
            k.e[i] = PROLOGUE == 2 ? qf_f32_to_e4m3(x) : static_cast<uint8_t>(qf_f32_to_i8(x));
        }
        out[0] = *reinterpret_cast<const uint4*>(&k);
    }
}

// ---- mainloop ----------------------------------------------------------------------------------

// This warp's runs of steps into acc[CT][NT] (NT n8 tiles of activation rows).
template <int NT>
QF_DEVICE void mainloop(Acc (&acc)[CT][NT][4], const uint8_t* A, const uint8_t* B, const float* scale, const uint8_t* zp,
                        const Prologue& pro, int n0, int M, int warp, int lane) {
    const int g = lane >> 2;
    const int q = lane & 3;
    const uint4 zero4 = make_uint4(0u, 0u, 0u, 0u);
#pragma unroll 1
    for (int s0 = warp * UNROLL; s0 < STEPS; s0 += WARPS * UNROLL) {
        uint4 c[UNROLL][CT][2];
        float s[UNROLL][CT][2][2], z[UNROLL][CT][2][2];
        // Issue every weight load (and its scales) of the run before any math.
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int st = s0 + u;
#pragma unroll
            for (int ct = 0; ct < CT; ++ct)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int n = n0 + ct * 16 + g + 8 * h;
                    c[u][ct][h] = chunk_live(st, q) ? ld_stream(B + (size_t)n * ROW_BYTES + st * 64 + 16 * q) : zero4;
                    if constexpr (KIND == Kind::Wonly) {
                        const int k0 = (st * 64 + 16 * q) * 8 / W_BITS;
#pragma unroll
                        for (int i = 0; i < 2; ++i) {
                            const int si = scale_index(n, k0 + 16 * (i % SCALES));
                            const bool ok = chunk_live(st, q) && i < SCALES;
                            s[u][ct][h][i] = ok ? __ldg(scale + si) : i > 0 ? s[u][ct][h][0] : 0.0f;
                            z[u][ct][h][i] = ok && ZERO != Zero::None ? zero_at(zp, si) : i > 0 ? z[u][ct][h][0] : 0.0f;
                        }
                    } else {
                        s[u][ct][h][0] = s[u][ct][h][1] = z[u][ct][h][0] = z[u][ct][h][1] = 0.0f;
                    }
                }
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int st = s0 + u;
            if (st >= STEPS) break;  // warp-uniform
            const int k0 = (st * 64 + 16 * q) * 8 / W_BITS;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                const int row = nt * 8 + g;
                uint4 x[X_CHUNKS];
                const bool live = row < M && chunk_live(st, q);
                if constexpr (PROLOGUE != 0) {
                    if (live) {
                        prologue_chunk(x, A, pro, row, k0);
                    } else {
#pragma unroll
                        for (int i = 0; i < X_CHUNKS; ++i) x[i] = zero4;
                    }
                } else {
                    const uint4* xp = reinterpret_cast<const uint4*>(A + ((size_t)row * K + k0) * X_BYTES);
#pragma unroll
                    for (int i = 0; i < X_CHUNKS; ++i) x[i] = live ? __ldg(xp + i) : zero4;
                }
#pragma unroll
                for (int ct = 0; ct < CT; ++ct) mma_chunk(acc[ct][nt], c[u][ct][0], c[u][ct][1], x, s[u][ct], z[u][ct]);
            }
        }
    }
}

// The warp's fragments into its partial tile (rows = output rows m, columns = output columns).
template <int NT>
QF_DEVICE void stage_partial(float* tile, const Acc (&acc)[CT][NT][4], int lane) {
    const int g = lane >> 2;
    const int q = lane & 3;
#pragma unroll
    for (int ct = 0; ct < CT; ++ct)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    float v;
                    if constexpr (INT8) {
                        v = __int_as_float(acc[ct][nt][2 * h + e]);  // s32 bits, added exactly later
                    } else {
                        v = acc[ct][nt][2 * h + e];
                    }
                    tile[(nt * 8 + 2 * q + e) * OUT_STRIDE + ct * 16 + g + 8 * h] = v;
                }
}

// Mainloop for NT activation n8 tiles, then stage 1 of the epilogue into the warp's tile.
template <int NT>
QF_DEVICE void run(float* tiles, const uint8_t* A, const uint8_t* B, const float* scale, const uint8_t* zp,
                   const Prologue& pro, int n0, int M, int warp, int lane) {
    Acc acc[CT][NT][4];
#pragma unroll
    for (int ct = 0; ct < CT; ++ct)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[ct][nt][e] = 0;
    mainloop<NT>(acc, A, B, scale, zp, pro, n0, M, warp, lane);
    stage_partial<NT>(tiles + warp * BM * OUT_STRIDE, acc, lane);
}

// Adds the WARPS partial tiles of rows < rows into tile 0, in warp order (the same bits every
// run); I8 partials are s32 bit patterns, added exactly and converted to f32 once (RNE).
QF_DEVICE void reduce_partials(float* tile, int tid, int rows) {
    const int elems = rows * OUT_STRIDE;
#pragma unroll 1
    for (int i = tid; i < elems; i += THREADS) {
        if constexpr (INT8) {
            int32_t v = __float_as_int(tile[i]);
#pragma unroll
            for (int w = 1; w < WARPS; ++w) v += __float_as_int(tile[w * BM * OUT_STRIDE + i]);
            tile[i] = __int2float_rn(v);
        } else {
            float v = tile[i];
#pragma unroll
            for (int w = 1; w < WARPS; ++w) v = __fadd_rn(v, tile[w * BM * OUT_STRIDE + i]);
            tile[i] = v;
        }
    }
}

{{epilogue}}

}  // namespace qf_skinny

using namespace qf_skinny;

extern "C" __global__ void __launch_bounds__(THREADS)
{{kernel_name}}({{params}}) {
    // The block's BN weight rows (contiguous, ROW_BYTES each, a multiple of 16) are read once and
    // written by no kernel: L2 fetches them while this grid waits for its predecessor.
    qf_prefetch_l2(reinterpret_cast<const uint8_t*>(B) + (size_t)blockIdx.x * BN * ROW_BYTES, (unsigned long long)BN * ROW_BYTES);
    qf_pdl_enter();
    extern __shared__ __align__(16) uint8_t smem_raw[];
    float* tile = reinterpret_cast<float*>(smem_raw);
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int m0 = 0;
    const int n0 = blockIdx.x * BN;
    const uint8_t* a_bytes = reinterpret_cast<const uint8_t*>(A);
    __shared__ double row_inv[PROLOGUE != 0 ? BM : 1];
    if constexpr (PROLOGUE != 0) {
        prologue_rows(row_inv, a_bytes, M < BM ? M : BM, warp, lane);
        __syncthreads();
    }
    const float pro_scale = {{pro_scale_arg}};
    const Prologue pro = { {{pro_gamma_arg}}, row_inv, pro_scale, __frcp_rn(pro_scale) };
    if (M <= 8) {
        run<1>(tile, a_bytes, B, {{scale}}, {{zp}}, pro, n0, M, warp, lane);
    } else {
        run<2>(tile, a_bytes, B, {{scale}}, {{zp}}, pro, n0, M, warp, lane);
    }
    __syncthreads();
    reduce_partials(tile, tid, M < BM ? M : BM);
    __syncthreads();

    if (tid < EPI_THREADS) {
        constexpr int THREADS = EPI_THREADS;  // the threads stage 2 splits the tile among
{{store_tile}}    }
}
