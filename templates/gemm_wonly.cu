// qfuse weight-only GEMM ("TN") for sm_90a: the tiled kernel of a `qmatmul` with `b_dequant`
// (src/codegen/ops/wonly.rs); rows M <= 16 run templates/gemm_skinny.cu instead (guarded launches).
//
//   w[n,k]   = ACT( (code[n,k] - z[n,k]) * s[n,k] )   computed in f32 (__fsub_rn, __fmul_rn), then
//                                                      rounded to ACT = f16 / bf16 (RNE)
//   acc[m,n] = sum_k A[m,k] * w[n,k]                    (f32 accumulation; ACT x ACT products are
//                                                      exact in f32)
//   Y[m,n]   = STORE( EPILOGUE(acc[m,n], inputs at (m,n)) )   (gemm_epilogue.cuh, as gemm.cu)
//
// A is ACT [M,K] row-major (the IR's [.., M, K], leading axes flattened into M; M a run-time int).
// B is [N,K] codes (CODE): I8, U8, E4M3 one byte each; I4, U4, E2M1 two per byte along K, element
// 0 in the low nibble (rows are K/2 bytes). The scale s (f32) of element (n,k) is
// S[(n / SCALE_ROWS) * SCALE_COLS + k / SCALE_K] with SCALE_COLS = ceil(K / SCALE_K): per channel
// (SCALE_ROWS = 1, SCALE_K = K), groups of G along K (1, G) or 2-D blocks (128, 128). The zero
// point z has the scale's layout (ZERO = Input: one byte each, ZP_SIGNED says i8 or u8), or is the
// constant ZERO_VALUE (ZERO = Literal), or absent (ZERO = None: w = code * s). Requires N % BN ==
// 0, K % 64 == 0, SCALE_K % 16 == 0 (a thread's 16 consecutive k of a 64-wide k-tile share one
// scale), 16-byte aligned pointers (every IR value is 256-byte aligned).
//
// ---- k permutation -----------------------------------------------------------------------------
// mma.sync.m16n8k16 pairs A's and B's k by fragment position, so any permutation of k applied to
// both operands leaves the sum unchanged. Lane (g = lane/4, q = lane%4) takes, in every 64-wide
// k-tile, the 16 physical k in [16q, 16q+16): half h (0, 1) covers k0 = 16q + 8h .. k0+7 and feeds
// two MMA k-steps; step j uses k0 + 4j .. k0+4j+3 as the fragment's logical k {2q, 2q+1} (first
// register pair) and {2q+8, 2q+9} (second). So A row r's 8 elements of a half are one 16-byte load
// (words 2j, 2j+1 are step j's a0/a2, or a1/a3 for row r+8), and column n's 8 codes are one 8-byte
// (bytes) or 4-byte (nibbles) piece, dequantized to 4 packed ACT pairs (b0, b1 of steps 0 and 1).
//
// ---- GEMM -----------------------------------------------------------------------------------------
// Block tile BM x BN, k-tiles of 64; blockIdx.x enumerates ceil(M/BM) * (N/BN) tiles in groups of
// GROUP_M m-tiles (as gemm.cu). A STAGES-deep cp.async ring: the A tile is BM rows of 128 bytes
// in the 128-byte XOR swizzle (qf_swizzle128; conflict-free 16-byte row reads: lanes 4i..4i+3
// read chunks 2q + h of rows g, g+1 which the swizzle spreads over all banks), the B tile BN rows
// of 64 (bytes) or 32 (nibbles) code bytes, unswizzled (a quarter/half warp reads one contiguous
// 128-byte line). Rows of A past M are zero-filled. Warp (wm, wn) = (warp / WARPS_N, warp %
// WARPS_N) owns rows wm*WM.. and columns wn*WN.. as MT x NT m16n8 tiles; per k-tile it dequantizes
// its NT columns' codes once per half and reuses them for all MT row tiles.
//
// ---- epilogue ----------------------------------------------------------------------------------
// Stage 1: accumulator fragments (acc[mt][nt][2*h + e] = row mt*16 + g + 8h, column nt*8 + 2q + e
// of the warp tile) -> shared f32 tile [BM][BN + 8]. Stage 2: gemm_store_tile.cuh (4 consecutive
// columns per thread; mapping in gemm.cu's header) run by EPI_THREADS threads.

{{prelude}}

namespace qf_wonly {

enum class Act { F16, BF16 };
enum class Code { I8, U8, I4, U4, E4M3, E2M1 };
enum class Zero { None, Literal, Input };
constexpr Act ACT = Act::{{act}};
constexpr Code CODE = Code::{{code}};
constexpr Zero ZERO = Zero::{{zero}};
constexpr int ZERO_VALUE = {{zero_value}};  // exact in f32 (|z| < 2^24)
constexpr bool ZP_SIGNED = {{zp_signed}};
constexpr int N = {{n}};
constexpr int K = {{k}};
constexpr int SCALE_ROWS = {{scale_rows}};
constexpr int SCALE_K = {{scale_k}};
constexpr int SCALE_COLS = (K + SCALE_K - 1) / SCALE_K;
constexpr int BM = {{tile_m}};
constexpr int BN = {{tile_n}};
constexpr int STAGES = {{stages}};
constexpr int WARPS_M = {{warps_m}};
constexpr int WARPS_N = {{warps_n}};
constexpr int GROUP_M = {{group_m}};

constexpr bool NIBBLES = CODE == Code::I4 || CODE == Code::U4 || CODE == Code::E2M1;
constexpr int BK = 64;                            // k per k-tile
constexpr int KTILES = K / BK;
constexpr int CODE_ROW_BYTES = NIBBLES ? K / 2 : K;
constexpr int BKC = NIBBLES ? BK / 2 : BK;        // code bytes of one row per k-tile
constexpr int THREADS = WARPS_M * WARPS_N * 32;
constexpr int WM = BM / WARPS_M;
constexpr int WN = BN / WARPS_N;
constexpr int MT = WM / 16;
constexpr int NT = WN / 8;
constexpr int A_BYTES = BM * BK * 2;              // one stage of A (128-byte rows)
constexpr int B_BYTES = BN * BKC;                 // one stage of codes
constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
constexpr int OUT_STRIDE = BN + 8;                // floats per staged output row
constexpr int VEC = 4;                            // output columns per thread in stage 2
constexpr int EPI_THREADS = BM * BN / VEC < THREADS ? BM * BN / VEC : THREADS;

static_assert(N % BN == 0 && K % BK == 0, "N must be a multiple of the tile, K of 64");
static_assert(SCALE_K % 16 == 0 && SCALE_ROWS >= 1, "a thread's 16 consecutive k share one scale");
static_assert((WM % 16 == 0 && WN % 8 == 0 && STAGE_BYTES % 1024 == 0 && STAGES >= 2),
              "warp tiles of m16n8 MMAs; stages stay 1024-byte aligned for the swizzle");
static_assert(BN % 16 == 0 && (BM * BN / VEC) % EPI_THREADS == 0, "even epilogue split");

{{dequant}}

// ---- MMA: `mma_act` (gemm_dequant.cuh) -------------------------------------------------------

// The MMAs of one half (two k-steps) for one m16 x n8 tile: `a` = 16-byte piece of row g (words
// 0-3) and `a8` of row g+8, `b` = the column's 4 dequantized pairs.
QF_DEVICE void mma_half(float (&d)[4], const uint4& a, const uint4& a8, const uint32_t (&b)[4]) {
    mma_act(d, a.x, a8.x, a.y, a8.y, b[0], b[1]);
    mma_act(d, a.z, a8.z, a.w, a8.w, b[2], b[3]);
}

// ---- GEMM mainloop --------------------------------------------------------------------------------

// cp.async of k-tile t into the stage at shared address `st`: A rows past M zero-filled.
QF_DEVICE void load_tile(uint32_t st, const uint8_t* A, const uint8_t* B, int m0, int n0, int M, int t, int tid) {
    constexpr int A_CHUNKS = BM * 8;  // 16-byte chunks: 8 per 128-byte row
#pragma unroll
    for (int c = tid; c < A_CHUNKS; c += THREADS) {
        const int row = c >> 3;
        const int ok = m0 + row < M;
        const uint8_t* src = A + (ok ? ((size_t)(m0 + row) * K * 2 + (size_t)t * BK * 2 + (c & 7) * 16) : 0);
        qf_cp_async_16(st + qf_swizzle128(row * 128 + (c & 7) * 16), src, ok ? 16u : 0u);
    }
    constexpr int B_CHUNKS = B_BYTES / 16;
    constexpr int CPR = BKC / 16;  // chunks per code row
#pragma unroll
    for (int c = tid; c < B_CHUNKS; c += THREADS) {
        const int row = c / CPR;
        const uint8_t* src = B + (size_t)(n0 + row) * CODE_ROW_BYTES + (size_t)t * BKC + (c % CPR) * 16;
        qf_cp_async_16(st + A_BYTES + c * 16, src, 16u);
    }
}

// The k-tile in shared memory at `st` (generic pointer `stp`) into the warp's accumulators.
QF_DEVICE void compute_tile(float (&acc)[MT][NT][4], const uint8_t* stp, int t, int wm, int wn, int n0, int lane,
                            const float* scale, const uint8_t* zp) {
    const int g = lane >> 2;
    const int q = lane & 3;
    const uint8_t* bt = stp + A_BYTES;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        uint32_t b[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            const int col = wn * WN + nt * 8 + g;
            const int si = scale_index(n0 + col, t * BK + 16 * q);
            // Only this half's 8 codes: 8 bytes at 16q + 8h, or 4 bytes of nibbles at 8q + 4h.
            const uint8_t* p = bt + col * BKC + (NIBBLES ? 8 * q + 4 * h : 16 * q + 8 * h);
            uint32_t lo, hi = 0u;
            if constexpr (NIBBLES) {
                lo = *reinterpret_cast<const uint32_t*>(p);
            } else {
                const uint2 v = *reinterpret_cast<const uint2*>(p);
                lo = v.x;
                hi = v.y;
            }
            dequant8(b[nt], lo, hi, __ldg(scale + si), zero_at(zp, si));
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            const int row = wm * WM + mt * 16 + g;
            const uint32_t chunk = (2 * q + h) * 16;
            const uint4 a = *reinterpret_cast<const uint4*>(stp + qf_swizzle128(row * 128 + chunk));
            const uint4 a8 = *reinterpret_cast<const uint4*>(stp + qf_swizzle128((row + 8) * 128 + chunk));
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) mma_half(acc[mt][nt], a, a8, b[nt]);
        }
    }
}

// STAGES-deep cp.async ring over the k-tiles of this block's tile.
QF_DEVICE void mainloop_gemm(float (&acc)[MT][NT][4], uint8_t* smem, const uint8_t* A, const uint8_t* B, int m0, int n0,
                             int M, int tid, int warp, int lane, const float* scale, const uint8_t* zp) {
    const uint32_t base = qf_smem_addr(smem);
    const int wm = warp / WARPS_N;
    const int wn = warp % WARPS_N;
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < KTILES) load_tile(base + s * STAGE_BYTES, A, B, m0, n0, M, s, tid);
        qf_cp_async_commit();
    }
#pragma unroll 1
    for (int t = 0; t < KTILES; ++t) {
        qf_cp_async_wait<STAGES - 2>();
        // Tile t has landed for every thread, and every warp is done with tile t-1's stage, which
        // the copies below overwrite.
        __syncthreads();
        const int pf = t + STAGES - 1;
        if (pf < KTILES) load_tile(base + (pf % STAGES) * STAGE_BYTES, A, B, m0, n0, M, pf, tid);
        qf_cp_async_commit();
        compute_tile(acc, smem + (t % STAGES) * STAGE_BYTES, t, wm, wn, n0, lane, scale, zp);
    }
    qf_cp_async_wait<0>();
    __syncthreads();
}

// Stage 1 of the epilogue: the warp's fragments into the f32 tile at `tile` (row stride
// OUT_STRIDE), its tile origin at (row0, col0).
QF_DEVICE void stage_fragments(float* tile, const float (&acc)[MT][NT][4], int row0, int col0, int lane) {
    const int g = lane >> 2;
    const int q = lane & 3;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int h = 0; h < 2; ++h)
                *reinterpret_cast<float2*>(tile + (row0 + mt * 16 + g + 8 * h) * OUT_STRIDE + col0 + nt * 8 + 2 * q) =
                    make_float2(acc[mt][nt][2 * h], acc[mt][nt][2 * h + 1]);
}

{{epilogue}}

}  // namespace qf_wonly

using namespace qf_wonly;

extern "C" __global__ void __launch_bounds__(THREADS, 1)
{{kernel_name}}({{params}}) {
    qf_pdl_enter();
    extern __shared__ __align__(1024) uint8_t smem_raw[];
    const uint32_t raw_base = qf_smem_addr(smem_raw);
    uint8_t* smem = smem_raw + (((raw_base + 1023u) & ~1023u) - raw_base);
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;

    // Grouped rasterization, as gemm.cu.
    constexpr int N_TILES = N / BN;
    const int m_tiles = (M + BM - 1) / BM;
    const int pid = blockIdx.x;
    const int group = pid / (GROUP_M * N_TILES);
    const int first_m = group * GROUP_M;
    const int group_rows = min(m_tiles - first_m, GROUP_M);
    const int in_group = pid - group * GROUP_M * N_TILES;
    const int m0 = (first_m + in_group % group_rows) * BM;
    const int n0 = (in_group / group_rows) * BN;

    float acc[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.0f;

    float* tile = reinterpret_cast<float*>(smem);
    mainloop_gemm(acc, smem, A, B, m0, n0, M, tid, warp, lane, SCALE, {{zp}});
    stage_fragments(tile, acc, (warp / WARPS_N) * WM, (warp % WARPS_N) * WN, lane);
    __syncthreads();

    if (tid < EPI_THREADS) {
        constexpr int THREADS = EPI_THREADS;  // the threads stage 2 splits the tile among
{{store_tile}}    }
}
