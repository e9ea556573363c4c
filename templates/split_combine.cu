{{prelude}}
{{ops}}
{{split_merge}}
// qfuse split_combine (src/codegen/ops/decoder.rs): the last launch of a split-KV decode
// causal_attention (S = 1). The split paged_attention wrote, for each query head h of each
// sequence b and each of its SPLITS = {{splits}} key ranges s, a partial record (m_s, l_s, acc_s[D])
// to `partials` [B, H, SPLITS, D + 2] (f32): the range's max score, its sum of exp(score − m_s),
// and its unnormalised output Σ exp(score − m_s)·v, for its first LIVE ranges only: LIVE =
// min(SPLITS, tiles of {{tile_keys}} keys over positions 0 ..= cache_len[b], at most {{max_keys}}),
// computed here as the attention computes it (split_merge.cuh); the other records are never written.
//
// Merge: split_merge.cuh, rounded once to o's dtype (trait {{o_t}}) into o [B, 1, H·D]: the value
// the unsplit kernel computes, up to the order of the f32 sums. The split decode paged_attention
// merges in its last CTA with the same functions; this kernel is the two-launch form of that
// merge (tests pin the fused merge to it bit for bit).
//
// Work split: one CTA of {{threads}} threads per (head, sequence): grid (H, B). Thread 0 computes the
// weights w_s and L into shared memory; then each thread combines columns d = tid, tid + threads, ….

typedef {{o_t}} OT_;

#define QF_H {{heads}}
#define QF_D {{head_dim}}
#define QF_SPLITS {{splits}}
#define QF_REC (QF_D + 2)
#define QF_THREADS {{threads}}
#define QF_TK {{tile_keys}}
#define QF_MAX_KEYS {{max_keys}}LL

extern "C" __global__ void __launch_bounds__(QF_THREADS) {{kernel_name}}(const float* __restrict__ partials, const long long* __restrict__ cache_len,
                                                                       OT_::T* __restrict__ out) {
    qf_pdl_enter();
    __shared__ float w[QF_SPLITS];
    __shared__ float total;
    const long long h = blockIdx.x;
    const long long b = blockIdx.y;
    const float* rec = partials + (b * QF_H + h) * QF_SPLITS * QF_REC;
    const long long end = cache_len[b] + 1 < QF_MAX_KEYS ? cache_len[b] + 1 : QF_MAX_KEYS;  // S = 1
    const int live = qf_live_ranges<QF_SPLITS>(qf_tiles<QF_TK>(end));

    if (threadIdx.x == 0) total = qf_merge_weights<QF_SPLITS, QF_REC>(rec, w, live);
    __syncthreads();
    for (int d = threadIdx.x; d < QF_D; d += QF_THREADS) {
        out[(b * QF_H + h) * QF_D + d] = OT_::store(qf_merge_column<QF_SPLITS, QF_REC>(rec, w, live, total, d));
    }
}
