// qfuse KV-cache append of one 16-byte (or smaller) pack: kv_append.cu's per-pack math, shared by
// kv_append.cu and paged_attention.cu's fused decode append (inlined as `{{kv_row}}`; no
// placeholders of its own). This step's k, v [B, S, KV, D] are token-major rows of QF_R packs of
// type P; pack i of row (b, s, g) goes to the HND page pool [num_pages, KV, PAGE, D] at position
// t = cache_len[b] + s: page page_table[b·MAX_PAGES + t/PAGE], slot t % PAGE. A position outside
// the table (t < 0, t/PAGE ≥ MAX_PAGES) or a negative page id is skipped (nothing written).
// The including template defines P, QF_R, QF_KV, QF_PAGE, QF_MAX_PAGES and QF_KEY_ROPE; with
// QF_KEY_ROPE = 1 (fuse-rope's rope(keys)) also ops.cuh, KT_ (the unrotated keys' dtype trait), CT_
// (the cache's), QF_KEY_CODES (1: a code cache), QF_D, QF_ROPE_ADJ and the table qf_inv_freq.

// The pool index (HND pages) of pack i of a token-major step tensor of rows of `packs` packs, or
// -1 when its token's page is skipped; `row` (b, s, g) and `t` (the token's position) as well.
QF_DEVICE long long qf_slot(const int* __restrict__ page_table, const long long* __restrict__ cache_len, long long i,
                            long long packs, long long S, long long& row, long long& t) {
    const long long c = i % packs;
    row = i / packs;  // (b, s, g): token-major
    const long long g = row % QF_KV;
    const long long s = (row / QF_KV) % S;
    const long long b = row / (S * QF_KV);
    t = cache_len[b] + s;
    const long long slot_page = t / QF_PAGE;
    if (t < 0 || slot_page >= QF_MAX_PAGES) return -1;
    const int page = page_table[b * QF_MAX_PAGES + slot_page];
    if (page < 0) return -1;
    return ((static_cast<long long>(page) * QF_KV + g) * QF_PAGE + t % QF_PAGE) * packs + c;
}

// Copies pack i of a token-major step tensor of rows of `packs` packs into `pool` (HND pages);
// returns false when its token's page is skipped (nothing written), else true with the pack in
// `written`.
template <typename T>
QF_DEVICE bool qf_append(const T* __restrict__ src, T* __restrict__ pool, const int* __restrict__ page_table,
                         const long long* __restrict__ cache_len, long long i, long long packs, long long S, T& written) {
    long long row, t;
    const long long dst = qf_slot(page_table, cache_len, i, packs, S, row, t);
    if (dst < 0) return false;
    written = src[i];
    pool[dst] = written;
    return true;
}

#if QF_KEY_ROPE
// Elements of the cache dtype per pack P.
#define QF_PACK_ELEMS (sizeof(P) / sizeof(CT_::T))
// The rotation factors (ops.cuh qf_rope_factors) of the elements of key pack c at position t.
struct qf_key_factors {
    float c[QF_PACK_ELEMS], s[QF_PACK_ELEMS];
};

QF_DEVICE qf_key_factors qf_key_pack_factors(long long c, long long t) {
    qf_key_factors f;
#pragma unroll
    for (int e = 0; e < static_cast<int>(QF_PACK_ELEMS); ++e) {
        const int d = static_cast<int>(c) * static_cast<int>(QF_PACK_ELEMS) + e;
        qf_rope_factors(static_cast<double>(t) * qf_inv_freq[qf_rope_pair<QF_D, QF_ROPE_ADJ>(d)], f.c[e], f.s[e]);
    }
    return f;
}

// RoPE on append (fuse-rope): k arrives unrotated (KT_ elements, rows of D); each key element is
// rotated by its factors `f` (qf_key_pack_factors at its token's position: the `rope` op it
// replaces) and rounded to KT_, then (QF_KEY_CODES) quantized as the cache's quantize does,
// cast(x / k_scale): pack c of the cache row `row`.
QF_DEVICE P qf_rotated_keys(const P* __restrict__ k, long long row, long long c, const qf_key_factors& f, float k_scale) {
    const typename KT_::T* x = reinterpret_cast<const typename KT_::T*>(k) + row * QF_D;
    P out;
    typename CT_::T* y = reinterpret_cast<typename CT_::T*>(&out);
#pragma unroll
    for (int e = 0; e < static_cast<int>(QF_PACK_ELEMS); ++e) {
        const int d = static_cast<int>(c) * static_cast<int>(QF_PACK_ELEMS) + e;
        const float r = qf_round<KT_>(qf_rope_turn<KT_, QF_D, QF_ROPE_ADJ>(x, d, f.c[e], f.s[e]));
#if QF_KEY_CODES
        y[e] = CT_::store(__fdiv_rn(r, k_scale));
#else
        (void)k_scale;
        y[e] = CT_::store(r);
#endif
    }
    return out;
}
#else
struct qf_key_factors {};  // no key rotation: nothing to precompute
#endif

// Appends pack i (rows of QF_R packs) of this step's keys (`key`) or values: V packs and keys
// without QF_KEY_ROPE are copied as they are (already in the cache dtype); with QF_KEY_ROPE a key
// pack is rotated (and quantized) from the unrotated row, by `factors` when the caller computed
// them (qf_key_pack_factors at the token's position; nullptr: computed here), and written to the
// pool and to k_out[i] (the attention's second result). k_out, k_scale and factors are unused
// without QF_KEY_ROPE. Returns false when the token's page is skipped (nothing written), else
// true with the pack now in the pool in `written`.
QF_DEVICE bool qf_append_pack(bool key, const P* __restrict__ k, const P* __restrict__ v, P* k_pool, P* v_pool,
                              const int* __restrict__ page_table, const long long* __restrict__ cache_len, long long i,
                              long long S, P* __restrict__ k_out, float k_scale, const qf_key_factors* factors, P& written) {
#if QF_KEY_ROPE
    if (key) {
        long long row, t;
        const long long dst = qf_slot(page_table, cache_len, i, QF_R, S, row, t);
        if (dst < 0) return false;
        const qf_key_factors f = factors ? *factors : qf_key_pack_factors(i % QF_R, t);
        written = qf_rotated_keys(k, row, i % QF_R, f, k_scale);
        k_pool[dst] = written;
        k_out[i] = written;
        return true;
    }
#else
    (void)k_out;
    (void)k_scale;
    (void)factors;
#endif
    return qf_append(key ? k : v, key ? k_pool : v_pool, page_table, cache_len, i, QF_R, S, written);
}
