// qfuse GEMM ("TN") for sm_90a: the kernel of the IR's `qmatmul` (src/codegen/ops/qmatmul.rs).
//
//   acc[m,n] = sum_k A[m,k] * B[n,k]                          (f32 accumulation)
//   Y[m,n]   = STORE( EPILOGUE(acc[m,n], inputs at (m,n)) )
//
// Operands (OPERAND): FP8 E4M3 x E4M3 (bytes), f16 x f16 or bf16 x bf16 (16-bit patterns), or
// s8 x s8 (bytes; exact s32 accumulators, converted to f32 once before the epilogue). A is
// [M,K] row-major (activations; the IR's [.., M, K] with the leading axes flattened into M), B is
// [N,K] row-major (weights, the nn.Linear layout), i.e. both K-major ("TN"). N, K, the tiles and
// the epilogue are compile-time constants; M is a run-time argument (any M >= 1; rows past M are
// neither loaded nor stored). Requires N % BN == 0 and K * ELEM_BYTES % 16 == 0 (K need not be a
// multiple of the k-tile: the last k-tile's chunks past K are zero-filled), 16-byte aligned A, B, Y
// (every IR value is 256-byte aligned).
//
// EPILOGUE is an f32 expression printed by the expression IR (src/codegen/expr.rs) over `acc` and
// one `<input>_v` per epilogue input (the IR's a_scale, b_scale and `add` operands, widened to
// f32); it performs every rounding step of the reference interpreter (scale, round to the
// accumulator dtype, each epilogue step rounded to its dtype), with every f32 +, -, *, / rounded
// once and never contracted into an FMA (qf_rn_f32). STORE converts the final value to the output:
// f16/bf16 (RNE, exact since the value is already rounded), f32, or FP8 E4M3 bytes as
// qf_quantize_e4m3(x, scale) computes them (the true quotient x / scale, RNE, saturating; the
// quotient through qf_div_by_scale, which is bit-identical to the division without its slow path).
//
// ---- Index mappings ----------------------------------------------------------------------------
// Block -> tile: blockIdx.x enumerates ceil(M/BM) * (N/BN) output tiles in groups of GROUP_M
// m-tiles: pid = blockIdx.x, group = pid / (GROUP_M * N_TILES); inside a group, consecutive pids
// walk the group's m-tiles first (tile_m = first_m + in_group % group_rows) and then the n-tiles
// (tile_n = in_group / group_rows), so the blocks running together share B columns and A rows in
// L2. The tile covers rows m0 = tile_m*BM .. m0+BM-1 and columns n0 = tile_n*BN .. n0+BN-1.
//
// Global -> shared: a k-tile is BK_BYTES = 128 (wgmma) or 64/128 (mma.sync) bytes of K, i.e. BK =
// BK_BYTES / ELEM_BYTES elements. Each thread copies 16-byte chunks: thread t owns chunk column
// ld_col = (t % CHUNKS_PER_ROW) * 16 bytes of rows ld_row + i * ROWS_PER_PASS (ld_row = t /
// CHUNKS_PER_ROW, i = 0..A_LOADS-1 for A, 0..B_LOADS-1 for B). Global byte address of A's chunk for
// k-tile t: A + (m0 + row) * K_BYTES + t * BK_BYTES + ld_col (same for B with n0).
// Shared byte address: stage + qf_swizzle128(row * BK_BYTES + ld_col) (+ A_BYTES for B): tile rows
// are BK_BYTES long, and the 16-byte chunk index inside each 128-byte line is XORed with the line
// index mod 8 (the hardware's 128-byte swizzle, 1024-byte aligned tiles). Rows of A past M are not
// copied (stale shared memory feeds only rows that are never stored); chunks past K (a partial last
// k-tile) are zero-filled for A and B alike, so they add 0 * 0.
//
// MAINLOOP = Wgmma / WgmmaWaitGroup (sm_90a): warpgroup wg = warp / 4 owns tile rows 64*wg ..
// 64*wg+63 and all BN columns (WARPS_M = BM / 16, WARPS_N = 1). Per k-tile it issues BK_BYTES / 32
// wgmmas m64nBNk32 (e4m3) or m64nBNk16 (f16/bf16): each consumes 32 bytes of K, so the k-step ks
// reads both operands through 128B-swizzle K-major descriptors at byte offset ks * 32 inside the
// rows (A rows start at 64*wg*BK_BYTES, B rows at 0). f16/bf16 wgmma accumulates all of K in f32
// registers. The FP8 tensor-core accumulation keeps fewer bits than f32: by default each 128-byte
// k-tile is summed into a fresh partial accumulator and added to f32 registers ("promotion");
// FAST_ACCUM accumulates all of K in the tensor cores instead.
// MAINLOOP = MmaSync (e4m3 or s8): mma.sync.m16n8k32 fed by ldmatrix; warp (wm, wn) = (warp /
// WARPS_N, warp % WARPS_N) owns rows wm*WM .. +WM-1 and columns wn*WN .. +WN-1 as (WM/16) x (WN/8)
// MMAs. On sm_90 ptxas lowers e4m3 to e4m3->f16 conversions and f16 HMMA; s8 runs as IMMA with
// s32 accumulators (exact while K * 128 * 128 < 2^31, which GemmSpec::validate checks).
//
// Accumulator fragments (both mainloops; the wgmma m64nN f32 layout restricted to one warp is the
// mma m16n8 layout): with g = lane / 4, q = lane % 4, acc[mt][nt][2*h + e] holds
//   row = wm*WM + mt*16 + g + 8*h,   col = wn*WN + nt*8 + 2*q + e      (h, e in {0, 1})
// (for wgmma: wm = warp, WM = 16, wn = 0, MT = 1).
//
// Epilogue, stage 1: every thread writes its fragments as float2 to a shared f32 tile [BM][BN + 8]
// (8 floats of padding: the 8 rows x 8 columns that a half-warp writes fall in 32 distinct banks).
// Stage 2: thread t handles, in pass p, the 4 consecutive columns col = (c % (BN/4)) * 4 of tile
// row row = c / (BN/4), c = t + p * THREADS: it reads them as one float4 (a quarter-warp reads 128
// contiguous bytes: conflict-free), loads its epilogue inputs with 4-element vector loads
// (per-column [N] inputs at n, full [M,N] inputs at m*N + n, per-row [M,1] inputs at m, single
// elements at 0; m = m0 + row, n = n0 + col), evaluates EPILOGUE for each of the 4 elements and
// stores them with one 4-element store at Y + m*N + n (consecutive threads write consecutive
// bytes). Rows with m >= M are skipped. Passes run in batches of up to 4 whose loads are all issued
// before their math (latency overlap).

{{prelude}}

// A named namespace (not an anonymous one): helpers a kernel does not use raise no NVRTC
// "declared but never referenced" warnings.
namespace qf_gemm {

enum class Operand { E4M3, F16, BF16, I8 };
constexpr Operand OPERAND = Operand::{{operand}};
constexpr bool WIDE = OPERAND == Operand::F16 || OPERAND == Operand::BF16;  // f16 or bf16 operands
constexpr bool INT8 = OPERAND == Operand::I8;  // s8 x s8, exact s32 accumulators
constexpr int ELEM_BYTES = WIDE ? 2 : 1;
constexpr int N = {{n}};
constexpr int K = {{k}};
constexpr int BM = {{tile_m}};
constexpr int BN = {{tile_n}};
constexpr int BK = {{tile_k}};  // elements of K per k-tile
constexpr int STAGES = {{stages}};
constexpr int WARPS_M = {{warps_m}};
constexpr int WARPS_N = {{warps_n}};
constexpr int GROUP_M = {{group_m}};
constexpr int CTAS_PER_SM = {{ctas_per_sm}};  // __launch_bounds__ minimum: caps registers per thread
enum class Mainloop { MmaSync, Wgmma, WgmmaWaitGroup };
constexpr Mainloop MAINLOOP = Mainloop::{{mainloop}};
constexpr bool WGMMA = MAINLOOP != Mainloop::MmaSync;
constexpr bool FAST_ACCUM = {{fast_accum}};
// FP8 promotion: the tensor cores' partial sums are added to f32 registers every PROMOTE_STEPS
// k-steps of 32 (1: after every wgmma; their internal accumulation keeps only ~14 mantissa bits,
// so shorter partial sums stay closer to an f32 sum).
constexpr int PROMOTE_STEPS = {{promote_steps}};
// Accumulate all of K in the wgmma accumulators (f16/bf16 always: their tensor-core sums are f32).
constexpr bool DIRECT_ACC = FAST_ACCUM || WIDE;

constexpr int K_BYTES = K * ELEM_BYTES;
constexpr int BK_BYTES = BK * ELEM_BYTES;
constexpr int THREADS = WARPS_M * WARPS_N * 32;
constexpr int WM = BM / WARPS_M;
constexpr int WN = BN / WARPS_N;
constexpr int MT = WM / 16;  // m16 tiles per warp
constexpr int NT = WN / 8;   // n8 tiles per warp
constexpr int KSTEPS = BK_BYTES / 32;  // MMAs per k-tile: each consumes 32 bytes of K
static_assert(PROMOTE_STEPS >= 1 && KSTEPS % PROMOTE_STEPS == 0, "promotion interval must divide the k-tile");
constexpr int KTILES = (K_BYTES + BK_BYTES - 1) / BK_BYTES;
constexpr bool K_TAIL = K_BYTES % BK_BYTES != 0;  // the last k-tile is partial
constexpr int N_TILES = N / BN;
constexpr int CHUNKS_PER_ROW = BK_BYTES / 16;
constexpr int ROWS_PER_PASS = THREADS / CHUNKS_PER_ROW;
constexpr int A_BYTES = BM * BK_BYTES;
constexpr int B_BYTES = BN * BK_BYTES;
constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
constexpr int A_LOADS = A_BYTES / 16 / THREADS;  // 16-byte chunks per thread per tile
constexpr int B_LOADS = B_BYTES / 16 / THREADS;
constexpr int OUT_STRIDE = BN + 8;  // floats per staged output row (padded: no bank conflicts)
constexpr int VEC = 4;              // output columns per thread in the epilogue's stage 2

static_assert(N % BN == 0 && K_BYTES % 16 == 0, "N must be a multiple of the tile, K of 16 bytes");
static_assert(BK_BYTES == 64 || BK_BYTES == 128, "swizzle assumes 64- or 128-byte tile rows");
static_assert(!WGMMA || (BK_BYTES == 128 && WM == 16 && WARPS_N == 1 && WARPS_M % 4 == 0 &&
                         (BN == 64 || BN == 128 || BN == 256)),
              "wgmma: 128-byte rows, whole warpgroups stacked along M, n in {64, 128, 256}");
static_assert(WGMMA || OPERAND == Operand::E4M3 || INT8, "the mma.sync mainloop takes 8-bit operands (e4m3, s8)");
static_assert(!WGMMA || !INT8, "s8 operands take the mma.sync mainloop");
static_assert(WM % 16 == 0 && WN % 16 == 0, "warp tile must be a multiple of 16x16");
static_assert(WGMMA || KSTEPS % 2 == 0, "fragment double buffer alternates per k-step");
static_assert(!WGMMA || STAGES >= 3, "wgmma: one tile in the tensor cores, one landing, one loading");
static_assert(!FAST_ACCUM || (WGMMA && OPERAND == Operand::E4M3), "fast accumulation is an FP8 wgmma option");
static_assert(A_BYTES % (16 * THREADS) == 0 && B_BYTES % (16 * THREADS) == 0, "even load split");
static_assert(THREADS % CHUNKS_PER_ROW == 0, "a thread keeps one column of chunks");
static_assert(ROWS_PER_PASS * BK_BYTES % 1024 == 0, "each copy pass moves by whole swizzle periods");
static_assert(A_BYTES % 1024 == 0 && B_BYTES % 1024 == 0, "tiles stay 1024-byte aligned");
static_assert(BN % (4 * VEC) == 0 && (BM * BN / VEC) % THREADS == 0, "even epilogue split");

// Issues the cp.async copies of k-tile t into the stage at shared address `stage`. `a_src`,
// `b_src` point at this thread's chunk of k-tile 0 (row ld_row, byte ld_col); `a_row_ok` bit i
// says whether A row ld_row + i*ROWS_PER_PASS lies inside M. Copies of A rows past M are skipped.
// A chunk past K (only in a partial last k-tile) is zero-filled: src-size 0 reads nothing, and
// the source address given is the row's start, which is valid.
QF_DEVICE void load_tile(uint32_t stage, const uint8_t* a_src, const uint8_t* b_src, int t,
                         uint32_t a_row_ok, uint32_t st_off, int ld_col) {
    const bool k_ok = !K_TAIL || t * BK_BYTES + ld_col < K_BYTES;
    const size_t k_off = k_ok ? (size_t)t * BK_BYTES : 0;
    const uint8_t* a_k = k_ok ? a_src + k_off : a_src - ld_col;
    const uint8_t* b_k = k_ok ? b_src + k_off : b_src - ld_col;
    const uint32_t bytes = k_ok ? 16u : 0u;
#pragma unroll
    for (int i = 0; i < A_LOADS; ++i) {
        // Adding whole multiples of 8 (128-byte rows) or 16 (64-byte rows) rows keeps the
        // swizzle phase.
        if ((a_row_ok >> i) & 1u)
            qf_cp_async_16(stage + st_off + i * ROWS_PER_PASS * BK_BYTES,
                           a_k + (size_t)i * ROWS_PER_PASS * K_BYTES, bytes);
    }
#pragma unroll
    for (int i = 0; i < B_LOADS; ++i)
        qf_cp_async_16(stage + A_BYTES + st_off + i * ROWS_PER_PASS * BK_BYTES,
                       b_k + (size_t)i * ROWS_PER_PASS * K_BYTES, bytes);
}

// ldmatrix of one k-step's fragments for this warp from the stage at shared address `stage`.
template <int MT_, int NP_>
QF_DEVICE void load_frags(uint32_t (&a)[MT_][4], uint32_t (&b)[NP_][4], uint32_t stage,
                          uint32_t a_off, uint32_t b_off) {
#pragma unroll
    for (int mt = 0; mt < MT_; ++mt) qf_ldmatrix_x4(a[mt], stage + a_off + mt * 16 * BK_BYTES);
#pragma unroll
    for (int np = 0; np < NP_; ++np)
        qf_ldmatrix_x4(b[np], stage + A_BYTES + b_off + np * 16 * BK_BYTES);
}

// The accumulator of the operand family: exact s32 sums for s8 operands, f32 otherwise.
template <bool Int>
struct AccOf {
    typedef float T;
};
template <>
struct AccOf<true> {
    typedef int32_t T;
};
typedef AccOf<INT8>::T Acc;

// An accumulator's f32 value: s32 sums are converted once, round to nearest even (the
// interpreter's integer sum `as f32`).
QF_DEVICE float acc_to_f32(float x) { return x; }
QF_DEVICE float acc_to_f32(int32_t x) { return __int2float_rn(x); }

// One m16n8k32 MMA of the operand family (e4m3 -> f32, s8 -> s32; the same fragment layouts).
QF_DEVICE void mma_16832(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) { qf_mma_e4m3_16832(d, a, b); }
QF_DEVICE void mma_16832(int32_t (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) { qf_mma_s8_16832(d, a, b); }

template <int MT_, int NT_>
QF_DEVICE void mma_step(Acc (&acc)[MT_][NT_][4], const uint32_t (&a)[MT_][4],
                        const uint32_t (&b)[NT_ / 2][4]) {
#pragma unroll
    for (int mt = 0; mt < MT_; ++mt) {
#pragma unroll
        for (int j = 0; j < NT_; ++j) {
            // Serpentine over n so consecutive MMAs share a B fragment.
            const int nt = (mt & 1) ? NT_ - 1 - j : j;
            const uint32_t bf[2] = {b[nt / 2][(nt & 1) * 2], b[nt / 2][(nt & 1) * 2 + 1]};
            mma_16832(acc[mt][nt], a[mt], bf);
        }
    }
}

// The mainloops are templates so that only the selected one is instantiated.

// mma.sync mainloop: STAGES-1 tiles in flight, ldmatrix fragments double-buffered per k-step.
template <bool Selected>
QF_DEVICE void mainloop_mma_sync(Acc (&acc)[MT][NT][4], uint32_t smem_base, const uint8_t* a_src,
                                 const uint8_t* b_src, uint32_t a_row_ok, uint32_t st_off, int ld_col,
                                 int warp, int lane) {
    const int wm = warp / WARPS_N;
    const int wn = warp % WARPS_N;
    // ldmatrix row addresses (see qf_ldmatrix_x4): A x4 = rows 0-15 x bytes {0-15, 16-31};
    // B x4 = n rows {0-7, 8-15} x bytes {0-15, 16-31}. Byte 32*ks of a row only flips bits 5-6,
    // which the swizzle XORs independently: offset(ks) = offset(0) ^ 32*ks. Adding 16 rows keeps
    // the swizzle phase.
    const uint32_t a_off0 = qf_swizzle128((wm * WM + (lane & 15)) * BK_BYTES + (lane >> 4) * 16);
    const uint32_t b_off0 =
        qf_swizzle128((wn * WN + ((lane >> 4) << 3) + (lane & 7)) * BK_BYTES + ((lane >> 3) & 1) * 16);

    // Prologue: STAGES-1 tiles in flight (one commit group each, empty past the end).
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < KTILES) load_tile(smem_base + s * STAGE_BYTES, a_src, b_src, s, a_row_ok, st_off, ld_col);
        qf_cp_async_commit();
    }
    qf_cp_async_wait<STAGES - 2>();
    __syncthreads();

    uint32_t fa[2][MT][4];
    uint32_t fb[2][NT / 2][4];
    int read_stage = 0;
    int write_stage = STAGES - 1;
    load_frags(fa[0], fb[0], smem_base, a_off0, b_off0);

#pragma unroll 1
    for (int kt = 0; kt < KTILES; ++kt) {
        const uint32_t rd = smem_base + read_stage * STAGE_BYTES;
#pragma unroll
        for (int ks = 0; ks < KSTEPS; ++ks) {
            if (ks == KSTEPS - 1) {
                // Tile kt+1 must have landed, and every warp must be done with the stage that the
                // next iteration's copies overwrite.
                qf_cp_async_wait<STAGES - 2>();
                __syncthreads();
                read_stage = read_stage == STAGES - 1 ? 0 : read_stage + 1;
            }
            const int nk = (ks + 1) % KSTEPS;
            const uint32_t next = ks == KSTEPS - 1 ? smem_base + read_stage * STAGE_BYTES : rd;
            if (ks < KSTEPS - 1 || kt + 1 < KTILES)
                load_frags(fa[(ks + 1) & 1], fb[(ks + 1) & 1], next, a_off0 ^ (nk * 32),
                           b_off0 ^ (nk * 32));
            if (ks == 0) {
                // Refill the stage read in iteration kt-1 (free after the barrier above).
                const int pf = kt + STAGES - 1;
                if (pf < KTILES)
                    load_tile(smem_base + write_stage * STAGE_BYTES, a_src, b_src, pf, a_row_ok, st_off,
                              ld_col);
                qf_cp_async_commit();
                write_stage = write_stage == STAGES - 1 ? 0 : write_stage + 1;
            }
            mma_step(acc, fa[ks & 1], fb[ks & 1]);
        }
    }
}

// wgmma copy pipeline. Tile t lives in stage t % STAGES and is loaded DIST tiles ahead of its use.
//
// Mainloop::Wgmma: no block-wide barrier in the loop. Per stage, a `full` mbarrier completes when
// every thread's cp.async copies of the tile have landed (cp.async.mbarrier.arrive), and an
// `empty` mbarrier when every thread has seen its wgmmas on the tile retire; a thread refills a
// stage only after `empty` says so. Warpgroups may therefore drift apart by up to a tile, which
// lets one's promotion FADDs overlap another's wgmmas. As in CUTLASS's cp.async + GMMA mainloop,
// the completed mbarrier phase is what publishes the copies to wgmma (no explicit proxy fence).
// Mainloop::WgmmaWaitGroup: cp.async.wait_group, a generic->async proxy fence and __syncthreads
// each k-tile (warpgroups in lockstep); the barrier also orders the refill after every warp's
// wgmma wait.
template <bool MBAR>  // a template, so that mma.sync kernels do not instantiate it
struct WgmmaPipe {
    // Direct accumulation retires tile t one iteration later (wait<1>) than promotion (wait<0>).
    static constexpr int DIST = DIRECT_ACC ? STAGES - 2 : STAGES - 1;
    uint32_t smem_base, bars, a_row_ok, st_off;  // bars: STAGES `full`, then STAGES `empty`
    const uint8_t* a_src;
    const uint8_t* b_src;
    int ld_col;

    QF_DEVICE uint32_t full(int t) const { return bars + 8 * (t % STAGES); }
    QF_DEVICE uint32_t empty(int t) const { return bars + 8 * (STAGES + t % STAGES); }

    QF_DEVICE void load(int t) {
        load_tile(smem_base + (t % STAGES) * STAGE_BYTES, a_src, b_src, t, a_row_ok, st_off, ld_col);
        if (MBAR) qf_cp_async_mbar_arrive(full(t));
    }

    QF_DEVICE void prologue() {
        if (MBAR) {
            if (threadIdx.x == 0) {
#pragma unroll
                for (int s = 0; s < 2 * STAGES; ++s) qf_mbar_init(bars + 8 * s, THREADS);
                qf_mbar_init_fence();
            }
            __syncthreads();
        }
#pragma unroll
        for (int t = 0; t < DIST; ++t) {
            if (t < KTILES) load(t);
            if (!MBAR) qf_cp_async_commit();
        }
    }

    // Waits until tile kt is in shared memory (for every thread) and returns its stage address.
    QF_DEVICE uint32_t wait_tile(int kt) const {
        if (MBAR) {
            qf_mbar_wait(full(kt), (kt / STAGES) & 1);
        } else {
            qf_cp_async_wait<DIST - 1>();  // groups 0..kt complete
            qf_fence_proxy_async();
            __syncthreads();
        }
        return smem_base + (kt % STAGES) * STAGE_BYTES;
    }

    // This thread's wgmmas on tile t have completed.
    QF_DEVICE void release(int t) const {
        if (MBAR) qf_mbar_arrive(empty(t));
    }

    // Loads tile kt + DIST, once every thread has released the tile that held its stage before.
    QF_DEVICE void produce(int kt) {
        const int t = kt + DIST;
        if (t < KTILES) {
            if (MBAR && t >= STAGES) qf_mbar_wait(empty(t), (t / STAGES - 1) & 1);
            load(t);
        }
        if (!MBAR) qf_cp_async_commit();
    }
};

// ---- f16 / bf16 warpgroup MMA (sm_90a) --------------------------------------------------------------
// D[64 x N] = A[64 x 16] * B[16 x N] + (accumulate ? D : 0), {{wide}} operands from shared memory
// (K-major descriptors: imm-trans-a = imm-trans-b = 0), f32 accumulators in the same fragment
// order as qf_wgmma_e4m3: d[n8 block][4].
template <int N_>
QF_DEVICE void qf_wgmma_wide(float (&d)[N_ / 8][4], uint64_t desc_a, uint64_t desc_b, int accumulate);

template <>
QF_DEVICE void qf_wgmma_wide<64>(float (&d)[8][4], uint64_t desc_a, uint64_t desc_b, int accumulate) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.{{wide}}.{{wide}} {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
        "}, %32, %33, p, 1, 1, 0, 0;\n"
        "}\n"
        :
          "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]),
          "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]),
          "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]),
          "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3])
        : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

template <>
QF_DEVICE void qf_wgmma_wide<128>(float (&d)[16][4], uint64_t desc_a, uint64_t desc_b, int accumulate) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.{{wide}}.{{wide}} {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
        "}, %64, %65, p, 1, 1, 0, 0;\n"
        "}\n"
        :
          "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]),
          "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]),
          "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]),
          "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]),
          "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]),
          "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]),
          "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]),
          "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
        : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

template <>
QF_DEVICE void qf_wgmma_wide<256>(float (&d)[32][4], uint64_t desc_a, uint64_t desc_b, int accumulate) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.{{wide}}.{{wide}} {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
        "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
        "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
        "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
        "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
        "}, %128, %129, p, 1, 1, 0, 0;\n"
        "}\n"
        :
          "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), "+f"(d[1][3]),
          "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]),
          "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]),
          "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]), "+f"(d[7][3]),
          "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]),
          "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]),
          "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]),
          "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]), "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3]),
          "+f"(d[16][0]), "+f"(d[16][1]), "+f"(d[16][2]), "+f"(d[16][3]), "+f"(d[17][0]), "+f"(d[17][1]), "+f"(d[17][2]), "+f"(d[17][3]),
          "+f"(d[18][0]), "+f"(d[18][1]), "+f"(d[18][2]), "+f"(d[18][3]), "+f"(d[19][0]), "+f"(d[19][1]), "+f"(d[19][2]), "+f"(d[19][3]),
          "+f"(d[20][0]), "+f"(d[20][1]), "+f"(d[20][2]), "+f"(d[20][3]), "+f"(d[21][0]), "+f"(d[21][1]), "+f"(d[21][2]), "+f"(d[21][3]),
          "+f"(d[22][0]), "+f"(d[22][1]), "+f"(d[22][2]), "+f"(d[22][3]), "+f"(d[23][0]), "+f"(d[23][1]), "+f"(d[23][2]), "+f"(d[23][3]),
          "+f"(d[24][0]), "+f"(d[24][1]), "+f"(d[24][2]), "+f"(d[24][3]), "+f"(d[25][0]), "+f"(d[25][1]), "+f"(d[25][2]), "+f"(d[25][3]),
          "+f"(d[26][0]), "+f"(d[26][1]), "+f"(d[26][2]), "+f"(d[26][3]), "+f"(d[27][0]), "+f"(d[27][1]), "+f"(d[27][2]), "+f"(d[27][3]),
          "+f"(d[28][0]), "+f"(d[28][1]), "+f"(d[28][2]), "+f"(d[28][3]), "+f"(d[29][0]), "+f"(d[29][1]), "+f"(d[29][2]), "+f"(d[29][3]),
          "+f"(d[30][0]), "+f"(d[30][1]), "+f"(d[30][2]), "+f"(d[30][3]), "+f"(d[31][0]), "+f"(d[31][1]), "+f"(d[31][2]), "+f"(d[31][3])
        : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

// One wgmma k-step (32 bytes of K) of the configured operand type.
template <int WN_>
QF_DEVICE void wgmma_k(float (&d)[WN_ / 8][4], uint64_t desc_a, uint64_t desc_b, int accumulate) {
    if constexpr (WIDE) {
        qf_wgmma_wide<WN_>(d, desc_a, desc_b, accumulate);
    } else {
        qf_wgmma_e4m3<WN_>(d, desc_a, desc_b, accumulate);
    }
}

// Issues this warpgroup's wgmmas for k-steps [ks0, ks0 + nks) of one k-tile against B rows
// [b_row, b_row + WN_) into `d` and commits them as one group; with !Accumulate the first one
// starts from zero. (Called with constants after unrolling.)
template <int WN_, bool Accumulate>
QF_DEVICE void wgmma_steps(float (&d)[WN_ / 8][4], uint32_t st, uint32_t a_wg, int b_row, int ks0, int nks) {
    qf_fence_acc(d);
    qf_wgmma_fence();
#pragma unroll
    for (int ks = ks0; ks < ks0 + nks; ++ks)
        wgmma_k<WN_>(d, qf_wgmma_desc_sw128(st + a_wg + ks * 32),
                     qf_wgmma_desc_sw128(st + A_BYTES + b_row * BK_BYTES + ks * 32), Accumulate || ks > ks0);
    qf_wgmma_commit();
}

// Issues this warpgroup's KSTEPS wgmmas of one k-tile against B rows [b_row, b_row + WN_) into
// `d` and commits them as one group. With !Accumulate the first k-step ignores the old contents
// of `d` (starts from zero).
template <int WN_, bool Accumulate>
QF_DEVICE void wgmma_tile(float (&d)[WN_ / 8][4], uint32_t st, uint32_t a_wg, int b_row) {
    wgmma_steps<WN_, Accumulate>(d, st, a_wg, b_row, 0, KSTEPS);
}

// wgmma mainloop.
// DIRECT_ACC: all of K accumulates in the wgmma accumulators (for FP8 the tensor cores' FP8
// accumulation keeps fewer bits than f32); one k-tile's wgmmas stay in flight while the next is
// issued. Otherwise (FP8) each k-tile is summed into a fresh partial accumulator, waited for, and
// added to the f32 accumulators ("promotion", as in CUTLASS's and DeepGEMM's FP8 mainloops), in
// column slices of 128 (or 64 under a tight register budget). Reading a partial accumulator
// while another wgmma is in flight would make ptxas serialize all wgmmas (C7514), so overlap
// comes from the other warpgroups instead.
template <bool Selected>
QF_DEVICE void mainloop_wgmma(float (&acc)[MT][NT][4], uint32_t smem_base, const uint8_t* a_src,
                              const uint8_t* b_src, uint32_t a_row_ok, uint32_t st_off, int ld_col, int warp) {
    __shared__ __align__(8) uint64_t bars[2 * STAGES];
    WgmmaPipe<MAINLOOP == Mainloop::Wgmma> pipe{smem_base, qf_smem_addr(bars), a_row_ok, st_off,
                                                a_src, b_src, ld_col};
    pipe.prologue();
    const uint32_t a_wg = (warp / 4) * 64 * BK_BYTES;  // this warpgroup's 64 rows of the A tile
    if constexpr (DIRECT_ACC) {
#pragma unroll 1
        for (int kt = 0; kt < KTILES; ++kt) {
            const uint32_t st = pipe.wait_tile(kt);
            wgmma_tile<BN, true>(acc[0], st, a_wg, 0);
            pipe.produce(kt);  // issue the next copies while the wgmmas run
            qf_wgmma_wait<1>();
            qf_fence_acc(acc[0]);
            if (kt > 0) pipe.release(kt - 1);
        }
        qf_wgmma_wait<0>();
        qf_fence_acc(acc[0]);
    } else {
        // Columns per partial accumulator: 128 (64 registers) when a thread may use up to 255
        // registers, else 64 (32 registers), to fit beside the BN/2 f32 accumulator registers.
        constexpr int REG_BUDGET = 65536 / (THREADS * CTAS_PER_SM);
        constexpr int PN = BN < (REG_BUDGET >= 200 ? 128 : 64) ? BN : (REG_BUDGET >= 200 ? 128 : 64);
        float part[PN / 8][4];
#pragma unroll 1
        for (int kt = 0; kt < KTILES; ++kt) {
            const uint32_t st = pipe.wait_tile(kt);
#pragma unroll
            for (int h = 0; h < BN / PN; ++h) {
#pragma unroll
                for (int g = 0; g < KSTEPS / PROMOTE_STEPS; ++g) {
                    wgmma_steps<PN, false>(part, st, a_wg, h * PN, g * PROMOTE_STEPS, PROMOTE_STEPS);
                    if (h == 0 && g == 0) pipe.produce(kt);  // issue the next copies while the wgmmas run
                    qf_wgmma_wait<0>();
                    qf_fence_acc(part);
                    if (h == BN / PN - 1 && g == KSTEPS / PROMOTE_STEPS - 1) pipe.release(kt);
#pragma unroll
                    for (int i = 0; i < PN / 8; ++i)
#pragma unroll
                        for (int j = 0; j < 4; ++j) acc[0][h * PN / 8 + i][j] += part[i][j];
                }
            }
        }
    }
}

template <bool Wgmma>
QF_DEVICE void mainloop(Acc (&acc)[MT][NT][4], uint32_t smem_base, const uint8_t* a_src,
                        const uint8_t* b_src, uint32_t a_row_ok, uint32_t st_off, int ld_col, int warp,
                        int lane) {
    if constexpr (Wgmma) {
        mainloop_wgmma<Wgmma>(acc, smem_base, a_src, b_src, a_row_ok, st_off, ld_col, warp);
    } else {
        mainloop_mma_sync<!Wgmma>(acc, smem_base, a_src, b_src, a_row_ok, st_off, ld_col, warp, lane);
    }
}

{{epilogue}}}  // namespace qf_gemm

using namespace qf_gemm;

extern "C" __global__ void __launch_bounds__(THREADS, CTAS_PER_SM)
{{kernel_name}}({{params}}) {
    qf_pdl_enter();
    // The host allocates 1024 bytes more than the tiles need; align up (the swizzle, and wgmma's
    // reading of it, work on absolute shared addresses).
    extern __shared__ __align__(1024) uint8_t smem_raw[];
    const uint32_t raw_base = qf_smem_addr(smem_raw);
    const uint32_t smem_base = (raw_base + 1023u) & ~1023u;
    uint8_t* smem = smem_raw + (smem_base - raw_base);

    // Grouped rasterization (see the header): GROUP_M consecutive m-tiles sweep all n-tiles
    // before moving on.
    const int m_tiles = (M + BM - 1) / BM;
    const int pid = blockIdx.x;
    const int group = pid / (GROUP_M * N_TILES);
    const int first_m = group * GROUP_M;
    const int group_rows = min(m_tiles - first_m, GROUP_M);
    const int in_group = pid - group * GROUP_M * N_TILES;
    const int tile_m = first_m + in_group % group_rows;
    const int tile_n = in_group / group_rows;
    const int m0 = tile_m * BM;
    const int n0 = tile_n * BN;

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int wm = warp / WARPS_N;
    const int wn = warp % WARPS_N;

    // This thread's copy sources (chunk ld_col of row ld_row, k-tile 0) and the rows (bit i =
    // pass i) that lie inside M.
    const int ld_row = tid / CHUNKS_PER_ROW;
    const int ld_col = (tid % CHUNKS_PER_ROW) * 16;
    uint32_t a_row_ok = 0;
#pragma unroll
    for (int i = 0; i < A_LOADS; ++i)
        a_row_ok |= (m0 + ld_row + i * ROWS_PER_PASS < M ? 1u : 0u) << i;
    const uint8_t* a_src = A + (size_t)(m0 + ld_row) * K_BYTES + ld_col;
    const uint8_t* b_src = B + (size_t)(n0 + ld_row) * K_BYTES + ld_col;
    const uint32_t st_off = qf_swizzle128(ld_row * BK_BYTES + ld_col);

    Acc acc[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mt][nt][e] = Acc(0);

    mainloop<WGMMA>(acc, smem_base, a_src, b_src, a_row_ok, st_off, ld_col, warp, lane);

    // Epilogue. Drain the (empty) trailing copy groups and let every warp finish reading the
    // pipeline before its shared memory is reused for the output tile.
    qf_cp_async_wait<0>();
    __syncthreads();

    // Stage 1: fragments -> shared f32 tile [BM][OUT_STRIDE] (mapping in the header).
    float* tile = reinterpret_cast<float*>(smem);
    const int g = lane >> 2;
    const int q = lane & 3;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        const int col = wn * WN + nt * 8 + q * 2;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int row = wm * WM + mt * 16 + g + h * 8;
                *reinterpret_cast<float2*>(tile + row * OUT_STRIDE + col) =
                    make_float2(acc_to_f32(acc[mt][nt][2 * h]), acc_to_f32(acc[mt][nt][2 * h + 1]));
            }
        }
    }
    __syncthreads();

{{store_tile}}}
