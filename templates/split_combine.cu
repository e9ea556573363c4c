{{prelude}}
{{ops}}
// qfuse split_combine (src/codegen/ops/decoder.rs): the last launch of a split-KV decode
// causal_attention (S = 1). The split paged_attention wrote, for each query head h of each
// sequence b and each of its SPLITS = {{splits}} key ranges s, a partial record (m_s, l_s, acc_s[D])
// to `partials` [B, H, SPLITS, D + 2] (f32): the range's max score, its sum of exp(score − m_s),
// and its unnormalised output Σ exp(score − m_s)·v. An empty range is (−∞, 0, 0…).
//
// Merge (the log-sum-exp rule, exact up to f32 rounding): M = max_s m_s, w_s = exp(m_s − M) (0 for
// an empty range), L = Σ_s w_s·l_s, o[d] = (Σ_s w_s·acc_s[d]) / L, rounded once to o's dtype
// (trait {{o_t}}) into o [B, 1, H·D]: the value the unsplit kernel computes, up to the order of
// the f32 sums. Sums run over s in order with fmaf; CUDA's expf as in paged_attention.
//
// Work split: one CTA of {{threads}} threads per (head, sequence): grid (H, B). Thread 0 computes the
// weights w_s and L into shared memory; then each thread combines columns d = tid, tid + threads, ….

typedef {{o_t}} OT_;

#define QF_H {{heads}}
#define QF_D {{head_dim}}
#define QF_SPLITS {{splits}}
#define QF_REC (QF_D + 2)
#define QF_THREADS {{threads}}

extern "C" __global__ void __launch_bounds__(QF_THREADS) {{kernel_name}}(const float* __restrict__ partials, OT_::T* __restrict__ out) {
    __shared__ float w[QF_SPLITS];
    __shared__ float total;
    const long long h = blockIdx.x;
    const long long b = blockIdx.y;
    const float* rec = partials + (b * QF_H + h) * QF_SPLITS * QF_REC;

    if (threadIdx.x == 0) {
        const float neg_inf = -__int_as_float(0x7f800000);
        float m = neg_inf;
        for (int s = 0; s < QF_SPLITS; ++s) m = fmaxf(m, rec[s * QF_REC]);
        float l = 0.0f;
        for (int s = 0; s < QF_SPLITS; ++s) {
            const float ms = rec[s * QF_REC];
            const float ws = ms == neg_inf ? 0.0f : expf(ms - m);
            w[s] = ws;
            l = fmaf(ws, rec[s * QF_REC + 1], l);
        }
        total = l;
    }
    __syncthreads();
    for (int d = threadIdx.x; d < QF_D; d += QF_THREADS) {
        float o = 0.0f;
#pragma unroll
        for (int s = 0; s < QF_SPLITS; ++s) o = fmaf(w[s], rec[s * QF_REC + 2 + d], o);
        out[(b * QF_H + h) * QF_D + d] = OT_::store(__fdiv_rn(o, total));
    }
}
