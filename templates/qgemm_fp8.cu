// qfuse FP8 E4M3 GEMM ("TN") for sm_90a, two mainloops over one pipeline and epilogue.
//
//   Y[M,N] = f16( f16(alpha * sum_k A[m,k] * B[n,k]) + bias[n] )     (bias optional)
//
// A [M,K] row-major e4m3 (activations), B [N,K] row-major e4m3 (weights, nn.Linear layout),
// f32 accumulators, f16 output, row-major [M,N]. N, K and the tiles are compile-time constants;
// M is a run-time argument (any M >= 1; rows past M are neither loaded nor stored). Requires
// N % BN == 0, K % BK == 0, 16-byte aligned A, B, Y (checked on the host).
//
// Global->shared (both): cp.async 16-byte chunks into a STAGES-deep ring of (A tile, B tile)
// pairs, each tile stored with the 128-byte XOR swizzle (qf_swizzle128), 1024-byte aligned.
//
// MAINLOOP = MmaSync: mma.sync.m16n8k32 e4m3. WARPS_M x WARPS_N warps each own a WM x WN sub-tile made
// of (WM/16) x (WN/8) MMAs; ldmatrix.x4 (one FP8 byte pair = one b16) reads conflict-free thanks
// to the swizzle; fragments are double-buffered across the BK/32 k-steps of a tile. Note: on
// sm_90 ptxas lowers this MMA to e4m3->f16 conversions + two f16 HMMA.16816 + FADDs (native QMMA
// exists on sm_89 only), so this path runs at the f16 mma.sync rate at best.
// MAINLOOP = Wgmma / WgmmaWaitGroup: wgmma.mma_async m64nNk32 e4m3, operands straight from the
// swizzled tiles (which are the K-major 128B-swizzle layout); warpgroup g owns rows 64g..64g+63,
// warp w rows 16w..16w+15 (WARPS_M = BM/16, WARPS_N = 1). The tensor cores' FP8 accumulation
// keeps fewer bits than f32: by default each 128-deep k-tile's partial sums are added to f32
// registers ("promotion"); FAST_ACCUM accumulates all of K in the tensor cores (cf. cuBLASLt's
// fast accumulation). See mainloop_wgmma and WgmmaPipe.
//
// Epilogue (both): accumulators in m16n8 fragment order -> scale, round, bias -> shared memory ->
// 16-byte coalesced stores.

{{common}}

namespace {

constexpr int N = {{n}};
constexpr int K = {{k}};
constexpr int BM = {{tile_m}};
constexpr int BN = {{tile_n}};
constexpr int BK = {{tile_k}};
constexpr int STAGES = {{stages}};
constexpr int WARPS_M = {{warps_m}};
constexpr int WARPS_N = {{warps_n}};
constexpr int GROUP_M = {{group_m}};
constexpr int CTAS_PER_SM = {{ctas_per_sm}};  // __launch_bounds__ minimum: caps registers per thread
enum class Mainloop { MmaSync, Wgmma, WgmmaWaitGroup };
constexpr Mainloop MAINLOOP = Mainloop::{{mainloop}};
constexpr bool WGMMA = MAINLOOP != Mainloop::MmaSync;
constexpr bool FAST_ACCUM = {{fast_accum}};
constexpr bool HAS_BIAS = {{has_bias}};
constexpr bool ALPHA_FROM_PTR = {{alpha_from_ptr}};
constexpr uint32_t ALPHA_BITS = {{alpha_bits}}u;

constexpr int THREADS = WARPS_M * WARPS_N * 32;
constexpr int WM = BM / WARPS_M;
constexpr int WN = BN / WARPS_N;
constexpr int MT = WM / 16;  // m16 tiles per warp
constexpr int NT = WN / 8;   // n8 tiles per warp
constexpr int KSTEPS = BK / 32;
constexpr int KTILES = K / BK;
constexpr int N_TILES = N / BN;
constexpr int CHUNKS_PER_ROW = BK / 16;
constexpr int A_BYTES = BM * BK;
constexpr int B_BYTES = BN * BK;
constexpr int STAGE_BYTES = A_BYTES + B_BYTES;
constexpr int A_LOADS = A_BYTES / 16 / THREADS;  // 16-byte chunks per thread per tile
constexpr int B_LOADS = B_BYTES / 16 / THREADS;
constexpr int OUT_STRIDE = BN * 2 + 16;  // bytes per staged output row (padded: no bank conflicts)

static_assert(N % BN == 0 && K % BK == 0, "N and K must be multiples of the tile");
static_assert(BK == 64 || BK == 128, "swizzle assumes 64- or 128-byte tile rows");
static_assert(!WGMMA || (BK == 128 && WM == 16 && WARPS_N == 1 && WARPS_M % 4 == 0 &&
                         (BN == 64 || BN == 128 || BN == 256)),
              "wgmma: 128-byte rows, whole warpgroups stacked along M, n in {64, 128, 256}");
static_assert(WM % 16 == 0 && WN % 16 == 0, "warp tile must be a multiple of 16x16");
static_assert(WGMMA || KSTEPS % 2 == 0, "fragment double buffer alternates per k-step");
static_assert(!WGMMA || STAGES >= 3, "wgmma: one tile in the tensor cores, one landing, one loading");
static_assert(!FAST_ACCUM || WGMMA, "fast accumulation is a wgmma option");
static_assert(A_BYTES % (16 * THREADS) == 0 && B_BYTES % (16 * THREADS) == 0, "even load split");
static_assert(THREADS % CHUNKS_PER_ROW == 0, "a thread keeps one column of chunks");
static_assert(A_BYTES % 1024 == 0 && B_BYTES % 1024 == 0, "tiles stay 1024-byte aligned");
static_assert((BM * BN * 2 / 16) % THREADS == 0, "even store split");

// Issues the cp.async copies of one k-tile into the stage at shared address `stage`; `a_k`, `b_k`
// point at this thread's first chunk of the tile in global memory. Copies of A rows past M are
// skipped: those shared rows keep stale data, which only feeds output rows that are never stored.
QF_DEVICE void load_tile(uint32_t stage, const uint8_t* a_k, const uint8_t* b_k, uint32_t a_row_ok,
                         uint32_t st_off) {
    constexpr int ROWS_PER_PASS = THREADS / CHUNKS_PER_ROW;
#pragma unroll
    for (int i = 0; i < A_LOADS; ++i) {
        // Adding whole multiples of 8 (BK=128) or 16 (BK=64) rows keeps the swizzle phase.
        if ((a_row_ok >> i) & 1u)
            qf_cp_async_16(stage + st_off + i * ROWS_PER_PASS * BK, a_k + (size_t)i * ROWS_PER_PASS * K,
                           16u);
    }
#pragma unroll
    for (int i = 0; i < B_LOADS; ++i)
        qf_cp_async_16(stage + A_BYTES + st_off + i * ROWS_PER_PASS * BK,
                       b_k + (size_t)i * ROWS_PER_PASS * K, 16u);
}

// ldmatrix of one k-step's fragments for this warp from the stage at shared address `stage`.
template <int MT_, int NP_>
QF_DEVICE void load_frags(uint32_t (&a)[MT_][4], uint32_t (&b)[NP_][4], uint32_t stage,
                          uint32_t a_off, uint32_t b_off) {
#pragma unroll
    for (int mt = 0; mt < MT_; ++mt) qf_ldmatrix_x4(a[mt], stage + a_off + mt * 16 * BK);
#pragma unroll
    for (int np = 0; np < NP_; ++np)
        qf_ldmatrix_x4(b[np], stage + A_BYTES + b_off + np * 16 * BK);
}

template <int MT_, int NT_>
QF_DEVICE void mma_step(float (&acc)[MT_][NT_][4], const uint32_t (&a)[MT_][4],
                        const uint32_t (&b)[NT_ / 2][4]) {
#pragma unroll
    for (int mt = 0; mt < MT_; ++mt) {
#pragma unroll
        for (int j = 0; j < NT_; ++j) {
            // Serpentine over n so consecutive MMAs share a B fragment.
            const int nt = (mt & 1) ? NT_ - 1 - j : j;
            const uint32_t bf[2] = {b[nt / 2][(nt & 1) * 2], b[nt / 2][(nt & 1) * 2 + 1]};
            qf_mma_e4m3_16832(acc[mt][nt], a[mt], bf);
        }
    }
}

// The mainloops are templates so that only the selected one is instantiated.

// mma.sync mainloop: STAGES-1 tiles in flight, ldmatrix fragments double-buffered per k-step.
template <bool Selected>
QF_DEVICE void mainloop_mma_sync(float (&acc)[MT][NT][4], uint32_t smem_base, const uint8_t* a_src,
                                 const uint8_t* b_src, uint32_t a_row_ok, uint32_t st_off, int warp,
                                 int lane) {
    const int wm = warp / WARPS_N;
    const int wn = warp % WARPS_N;
    // ldmatrix row addresses (see qf_ldmatrix_x4): A x4 = rows 0-15 x bytes {0-15, 16-31};
    // B x4 = n rows {0-7, 8-15} x bytes {0-15, 16-31}. Byte 32*ks of a row only flips bits 5-6,
    // which the swizzle XORs independently: offset(ks) = offset(0) ^ 32*ks. Adding 16 rows keeps
    // the swizzle phase.
    const uint32_t a_off0 = qf_swizzle128((wm * WM + (lane & 15)) * BK + (lane >> 4) * 16);
    const uint32_t b_off0 =
        qf_swizzle128((wn * WN + ((lane >> 4) << 3) + (lane & 7)) * BK + ((lane >> 3) & 1) * 16);

    // Prologue: STAGES-1 tiles in flight (one commit group each, empty past the end).
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < KTILES)
            load_tile(smem_base + s * STAGE_BYTES, a_src + s * BK, b_src + s * BK, a_row_ok, st_off);
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
                    load_tile(smem_base + write_stage * STAGE_BYTES, a_src + (size_t)pf * BK,
                              b_src + (size_t)pf * BK, a_row_ok, st_off);
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
    // Fast accumulation retires tile t one iteration later (wait<1>) than exact (wait<0>).
    static constexpr int DIST = FAST_ACCUM ? STAGES - 2 : STAGES - 1;
    uint32_t smem_base, bars, a_row_ok, st_off;  // bars: STAGES `full`, then STAGES `empty`
    const uint8_t* a_src;
    const uint8_t* b_src;

    QF_DEVICE uint32_t full(int t) const { return bars + 8 * (t % STAGES); }
    QF_DEVICE uint32_t empty(int t) const { return bars + 8 * (STAGES + t % STAGES); }

    QF_DEVICE void load(int t) {
        load_tile(smem_base + (t % STAGES) * STAGE_BYTES, a_src + (size_t)t * BK,
                  b_src + (size_t)t * BK, a_row_ok, st_off);
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

// Issues this warpgroup's BK/32 wgmmas of one k-tile against B rows [b_row, b_row + WN_) into `d`
// and commits them as one group. With !Accumulate the first k-step ignores the old contents of
// `d` (starts from zero).
template <int WN_, bool Accumulate>
QF_DEVICE void wgmma_tile(float (&d)[WN_ / 8][4], uint32_t st, uint32_t a_wg, int b_row) {
    qf_fence_acc(d);
    qf_wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ++ks)
        qf_wgmma_e4m3<WN_>(d, qf_wgmma_desc_sw128(st + a_wg + ks * 32),
                           qf_wgmma_desc_sw128(st + A_BYTES + b_row * BK + ks * 32),
                           Accumulate || ks > 0);
    qf_wgmma_commit();
}

// wgmma mainloop.
// FAST_ACCUM: all of K accumulates in the wgmma accumulators (the tensor cores' FP8 accumulation
// keeps fewer bits than f32); one k-tile's wgmmas stay in flight while the next is issued.
// Otherwise each k-tile (BK = 128) is summed into a fresh partial accumulator, waited for, and
// added to the f32 accumulators ("promotion", as in CUTLASS's and DeepGEMM's FP8 mainloops), in
// column slices of 128 (or 64 under a tight register budget). Reading a partial
// accumulator while another wgmma is in flight would make ptxas serialize all wgmmas (C7514), so
// overlap comes from the other warpgroups instead.
template <bool Selected>
QF_DEVICE void mainloop_wgmma(float (&acc)[MT][NT][4], uint32_t smem_base, const uint8_t* a_src,
                              const uint8_t* b_src, uint32_t a_row_ok, uint32_t st_off, int warp) {
    __shared__ __align__(8) uint64_t bars[2 * STAGES];
    WgmmaPipe<MAINLOOP == Mainloop::Wgmma> pipe{smem_base, qf_smem_addr(bars), a_row_ok, st_off,
                                                a_src, b_src};
    pipe.prologue();
    const uint32_t a_wg = (warp / 4) * 64 * BK;  // this warpgroup's 64 rows of the A tile
    if constexpr (FAST_ACCUM) {
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
                wgmma_tile<PN, false>(part, st, a_wg, h * PN);
                if (h == 0) pipe.produce(kt);  // issue the next copies while the wgmmas run
                qf_wgmma_wait<0>();
                qf_fence_acc(part);
                if (h == BN / PN - 1) pipe.release(kt);
#pragma unroll
                for (int i = 0; i < PN / 8; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) acc[0][h * PN / 8 + i][j] += part[i][j];
            }
        }
    }
}

template <bool Wgmma>
QF_DEVICE void mainloop(float (&acc)[MT][NT][4], uint32_t smem_base, const uint8_t* a_src,
                        const uint8_t* b_src, uint32_t a_row_ok, uint32_t st_off, int warp, int lane) {
    if constexpr (Wgmma) {
        mainloop_wgmma<Wgmma>(acc, smem_base, a_src, b_src, a_row_ok, st_off, warp);
    } else {
        mainloop_mma_sync<!Wgmma>(acc, smem_base, a_src, b_src, a_row_ok, st_off, warp, lane);
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(THREADS, CTAS_PER_SM)
{{kernel_name}}(const uint8_t* __restrict__ A, const uint8_t* __restrict__ B,
                uint16_t* __restrict__ Y, const uint16_t* __restrict__ bias,
                const float* __restrict__ alpha_ptr, int M) {
    // The host allocates 1024 bytes more than the tiles need; align up (the swizzle, and wgmma's
    // reading of it, work on absolute shared addresses).
    extern __shared__ __align__(1024) uint8_t smem_raw[];
    const uint32_t raw_base = qf_smem_addr(smem_raw);
    const uint32_t smem_base = (raw_base + 1023u) & ~1023u;
    uint8_t* smem = smem_raw + (smem_base - raw_base);

    // Grouped rasterization: GROUP_M consecutive m-tiles sweep all n-tiles before moving on, so
    // the A rows and B columns in flight stay in L2.
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

    // This thread's copy sources and the rows (bit i = pass i) that lie inside M.
    const int ld_row = tid / CHUNKS_PER_ROW;
    const int ld_col = (tid % CHUNKS_PER_ROW) * 16;
    constexpr int ROWS_PER_PASS = THREADS / CHUNKS_PER_ROW;
    static_assert(ROWS_PER_PASS * BK % 1024 == 0, "each copy pass moves by whole swizzle periods");
    uint32_t a_row_ok = 0;
#pragma unroll
    for (int i = 0; i < A_LOADS; ++i)
        a_row_ok |= (m0 + ld_row + i * ROWS_PER_PASS < M ? 1u : 0u) << i;
    const uint8_t* a_src = A + (size_t)(m0 + ld_row) * K + ld_col;
    const uint8_t* b_src = B + (size_t)(n0 + ld_row) * K + ld_col;
    const uint32_t st_off = qf_swizzle128(ld_row * BK + ld_col);

    float acc[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mt][nt][e] = 0.0f;

    mainloop<WGMMA>(acc, smem_base, a_src, b_src, a_row_ok, st_off, warp, lane);

    // Epilogue. Drain the (empty) trailing copy groups and let every warp finish reading the
    // pipeline before its shared memory is reused for the output tile.
    qf_cp_async_wait<0>();
    __syncthreads();

    float alpha;
    if (ALPHA_FROM_PTR) {
        alpha = *alpha_ptr;
    } else {
        alpha = __int_as_float(ALPHA_BITS);
    }
    const int g = lane >> 2;
    const int q = lane & 3;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        const int col = wn * WN + nt * 8 + q * 2;
        uint32_t b2 = 0;
        if (HAS_BIAS) b2 = *reinterpret_cast<const uint32_t*>(bias + n0 + col);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int row = wm * WM + mt * 16 + g + h * 8;
                uint32_t v = qf_pack_f16x2(alpha * acc[mt][nt][2 * h], alpha * acc[mt][nt][2 * h + 1]);
                if (HAS_BIAS) v = qf_add_f16x2(v, b2);
                *reinterpret_cast<uint32_t*>(smem + row * OUT_STRIDE + col * 2) = v;
            }
        }
    }
    __syncthreads();

    constexpr int CHUNKS_PER_OUT_ROW = BN * 2 / 16;
    constexpr int OUT_PASSES = BM * CHUNKS_PER_OUT_ROW / THREADS;
#pragma unroll
    for (int i = 0; i < OUT_PASSES; ++i) {
        const int c = tid + i * THREADS;
        const int row = c / CHUNKS_PER_OUT_ROW;
        const int col = (c % CHUNKS_PER_OUT_ROW) * 8;
        if (m0 + row < M) {
            const uint4 v = *reinterpret_cast<const uint4*>(smem + row * OUT_STRIDE + col * 2);
            *reinterpret_cast<uint4*>(Y + (size_t)(m0 + row) * N + n0 + col) = v;
        }
    }
}
