{{prelude}}
{{ops}}
// qfuse rope (src/codegen/ops/decoder.rs): rotary position embedding of x [B, S, N·D] at positions
// cache_len[b] + s, as the interpreter (src/interp/ops/decoder.rs `rope`): pair i of every head
// ({{pairs_doc}}) turns by angle p · inv_freq[i]; the angle, its cos and sin are computed in f64
// (inv_freq: the interpreter's `inverse_frequencies`, printed exactly) and rounded to f32; the
// rotation is (x1·cos − x2·sin, x2·cos + x1·sin) in f32 with every product and sum rounded
// separately (no FMA), stored in y's dtype.
// One CTA per token row (grid rows = B·S, block {{threads}}): the D/2 cos/sin pairs of the row's
// position go to shared memory once, then the threads rotate the N·D/2 pairs of the row.

typedef {{t}} T;  // dtype trait of x and y (ops.cuh)

#define QF_N {{heads}}
#define QF_D {{head_dim}}
#define QF_HALF ({{head_dim}} / 2)
#define QF_ADJACENT {{adjacent}}

__constant__ double qf_inv_freq[QF_HALF] = { {{inv_freq}} };

extern "C" __global__ void __launch_bounds__({{threads}}) {{kernel_name}}(const typename T::T* __restrict__ x,
        const long long* __restrict__ cache_len, typename T::T* __restrict__ y, long long rows, long long S) {
    qf_pdl_enter();
    __shared__ float cs[QF_HALF];
    __shared__ float sn[QF_HALF];
    const long long row = blockIdx.x;
    if (row >= rows) return;
    const long long pos = cache_len[row / S] + row % S;
    for (int i = threadIdx.x; i < QF_HALF; i += blockDim.x) {
        double s, c;
        sincos(static_cast<double>(pos) * qf_inv_freq[i], &s, &c);
        cs[i] = static_cast<float>(c);
        sn[i] = static_cast<float>(s);
    }
    __syncthreads();
    const typename T::T* xr = x + row * (QF_N * QF_D);
    typename T::T* yr = y + row * (QF_N * QF_D);
    for (int p = threadIdx.x; p < QF_N * QF_HALF; p += blockDim.x) {
        const int head = p / QF_HALF, i = p % QF_HALF;
        const int a = head * QF_D + (QF_ADJACENT ? 2 * i : i);
        const int b = a + (QF_ADJACENT ? 1 : QF_HALF);
        const float x1 = T::load(xr[a]), x2 = T::load(xr[b]);
        const float c = cs[i], s = sn[i];
        yr[a] = T::store(__fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s)));
        yr[b] = T::store(__fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s)));
    }
}
