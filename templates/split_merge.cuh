// qfuse split_merge.cuh: the merge of split-KV partial records, shared by the split decode
// paged_attention (its last CTA per KV head and sequence) and split_combine (inlined by the code
// generator through `{{split_merge}}`; src/codegen/ops/decoder.rs).
//
// A query head's SPLITS records lie `rec[s · REC ..]`, REC = D + 2 floats each: (m_s, l_s,
// acc_s[D]), the range's max score, its sum of exp(score − m_s) and its unnormalised output
// Σ exp(score − m_s)·v; an empty range is (−∞, 0, 0…). The log-sum-exp rule, exact up to f32
// rounding: M = max_s m_s, w_s = exp(m_s − M) (0 for an empty range), L = Σ_s w_s·l_s,
// o[d] = (Σ_s w_s·acc_s[d]) / L. Sums run over s in order with fmaf; CUDA's expf. Records are
// read through L2 (ld.global.cg): other CTAs of the running grid may have written them.

// An f32 load from global memory that bypasses L1 (which is not coherent across SMs).
QF_DEVICE float qf_load_cg(const float* p) {
    float v;
    asm volatile("ld.global.cg.f32 %0, [%1];\n" : "=f"(v) : "l"(p) : "memory");
    return v;
}

// The weights w_s of one head's first `count` (≤ SPLITS) records into `w` [SPLITS]; returns L.
// Records past `count` are neutral ones, which would add exact zeros.
template <int SPLITS, int REC>
QF_DEVICE float qf_merge_weights(const float* rec, float* w, int count) {
    const float neg_inf = -__int_as_float(0x7f800000);
    float m = neg_inf;
    for (int s = 0; s < count; ++s) m = fmaxf(m, qf_load_cg(rec + s * REC));
    float l = 0.0f;
    for (int s = 0; s < count; ++s) {
        const float ms = qf_load_cg(rec + s * REC);
        const float ws = ms == neg_inf ? 0.0f : expf(ms - m);
        w[s] = ws;
        l = fmaf(ws, qf_load_cg(rec + s * REC + 1), l);
    }
    return l;
}

// Column d of the merged output over the first `count` records, (Σ_s w_s·acc_s[d]) / total,
// before rounding to o's dtype.
template <int SPLITS, int REC>
QF_DEVICE float qf_merge_column(const float* rec, const float* w, int count, float total, int d) {
    float o = 0.0f;
#pragma unroll 4
    for (int s = 0; s < count; ++s) o = fmaf(w[s], qf_load_cg(rec + s * REC + 2 + d), o);
    return __fdiv_rn(o, total);
}
