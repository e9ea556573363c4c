// qfuse split_merge.cuh: the merge of split-KV partial records, shared by the split decode
// paged_attention (its last CTA per KV head and sequence) and split_combine (inlined by the code
// generator through `{{split_merge}}`; src/codegen/ops/decoder.rs).
//
// A query head's SPLITS records lie `rec[s · REC ..]`, REC = D + 2 floats each: (m_s, l_s,
// acc_s[D]), the range's max score, its sum of exp(score − m_s) and its unnormalised output
// Σ exp(score − m_s)·v; an empty range is (−∞, 0, 0…). The log-sum-exp rule, exact up to f32
// rounding: M = max_s m_s, w_s = exp(m_s − M) (0 for an empty range), L = Σ_s w_s·l_s,
// o[d] = (Σ_s w_s·acc_s[d]) / L. Sums run over s in order with fmaf; CUDA's expf. Records are
// read through L2 (ld.global.cg, which bypasses L1, not coherent across SMs): other CTAs of the
// running grid may have written them.

// Key tiles of TK keys over positions [0, end).
template <int TK>
QF_DEVICE long long qf_tiles(long long end) {
    return (end + TK - 1) / TK;
}

// The live ranges of a split decode step whose keys span `tiles` tiles: one per tile, at most
// SPLITS, at least 1. The split paged_attention runs CTAs 0 .. live − 1 of its SPLITS (the others
// exit at once and write no record); both merges read the first `live` records only.
template <int SPLITS>
QF_DEVICE int qf_live_ranges(long long tiles) {
    return tiles < 1 ? 1 : (tiles < SPLITS ? static_cast<int>(tiles) : SPLITS);
}

// The weights w_s of one head's first `count` (≤ SPLITS) records into `w` [SPLITS]; returns L.
// Records past `count` are not read (an idle range writes none). The loops run over the
// compile-time SPLITS (unrolled) with the records past `count` skipped, and every (m_s, l_s) is
// loaded before any is used, so the loads are in flight together: one L2 round trip, not one per
// record (__ldcg: ld.global.cg, an ordinary load to the compiler, ordered by the caller's fences
// and barriers).
template <int SPLITS, int REC>
QF_DEVICE float qf_merge_weights(const float* rec, float* w, int count) {
    const float neg_inf = -__int_as_float(0x7f800000);
    float ms[SPLITS], ls[SPLITS];
#pragma unroll
    for (int s = 0; s < SPLITS; ++s) {
        ms[s] = s < count ? __ldcg(rec + s * REC) : neg_inf;
        ls[s] = s < count ? __ldcg(rec + s * REC + 1) : 0.0f;
    }
    float m = neg_inf;
#pragma unroll
    for (int s = 0; s < SPLITS; ++s) {
        if (s < count) m = fmaxf(m, ms[s]);
    }
    float l = 0.0f;
#pragma unroll
    for (int s = 0; s < SPLITS; ++s) {
        if (s < count) {
            const float ws = ms[s] == neg_inf ? 0.0f : expf(ms[s] - m);
            w[s] = ws;
            l = fmaf(ws, ls[s], l);
        }
    }
    return l;
}

// Column d of the merged output over the first `count` records, (Σ_s w_s·acc_s[d]) / total,
// before rounding to o's dtype (the column's records loaded together first, as above).
template <int SPLITS, int REC>
QF_DEVICE float qf_merge_column(const float* rec, const float* w, int count, float total, int d) {
    float acc[SPLITS];
#pragma unroll
    for (int s = 0; s < SPLITS; ++s) acc[s] = s < count ? __ldcg(rec + s * REC + 2 + d) : 0.0f;
    float o = 0.0f;
#pragma unroll
    for (int s = 0; s < SPLITS; ++s) {
        if (s < count) o = fmaf(w[s], acc[s], o);
    }
    return __fdiv_rn(o, total);
}
