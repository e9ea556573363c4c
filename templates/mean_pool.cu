{{prelude}}
{{ops}}
// qfuse mean_pool (src/codegen/ops/reduce.rs): out[b, h] = sum_s hidden[b, s, h] * mask[b, s] /
// max(sum_s mask[b, s], 1e-9), summing in f64 and skipping tokens whose mask is 0 (their hidden
// values never contribute, not even NaN), as the interpreter (src/interp/ops/reduce.rs).
// A block of 8 warps owns 64 columns of one sequence: lane l reads columns l and l + 32 (coalesced),
// warp w sums tokens w, w + 8, ...; the 8 partial sums are combined in warp order through shared
// memory. Grid (ceil_div(H, 64), B), block 256.

typedef {{hidden_t}} HD;
typedef {{mask_t}} MD;
typedef {{out_t}} OD;

extern "C" __global__ void __launch_bounds__(256) {{kernel_name}}(const HD::T* __restrict__ hidden, const MD::T* __restrict__ mask,
                                                                  OD::T* __restrict__ out, long long S, long long H) {
    qf_pdl_enter();
    constexpr int WARPS = 8, COLS = 64;
    __shared__ double acc_s[WARPS][COLS];
    __shared__ double cnt_s[WARPS];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const long long b = blockIdx.y;
    const long long c0 = static_cast<long long>(blockIdx.x) * COLS + lane, c1 = c0 + 32;
    double a0 = 0.0, a1 = 0.0, cnt = 0.0;
    for (long long s = warp; s < S; s += WARPS) {
        const float w = MD::load(mask[b * S + s]);
        if (w != 0.0f) {
            const HD::T* row = hidden + (b * S + s) * H;
            const double wd = static_cast<double>(w);
            if (c0 < H) a0 += static_cast<double>(HD::load(row[c0])) * wd;
            if (c1 < H) a1 += static_cast<double>(HD::load(row[c1])) * wd;
            cnt += wd;
        }
    }
    acc_s[warp][lane] = a0;
    acc_s[warp][lane + 32] = a1;
    if (lane == 0) cnt_s[warp] = cnt;
    __syncthreads();
    if (warp < 2) {
        const int col = lane + 32 * warp;
        const long long c = static_cast<long long>(blockIdx.x) * COLS + col;
        double a = acc_s[0][col], n = cnt_s[0];
#pragma unroll
        for (int w = 1; w < WARPS; ++w) {
            a += acc_s[w][col];
            n += cnt_s[w];
        }
        const double denom = fmax(n, 1e-9);
        if (c < H) out[b * H + c] = OD::store(static_cast<float>(a / denom));
    }
}
