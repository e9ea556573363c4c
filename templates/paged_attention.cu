{{prelude}}
{{ops}}
{{split_merge}}
// qfuse paged_attention (src/codegen/ops/decoder.rs): the attention of a causal_attention over
// the paged KV cache. The prefill variant runs after kv_append has written this step's keys and
// values; the decode variant (S ≤ 1) appends them itself (QF_APPEND, below) except over an
// NVFP4 cache.
//
// Operands: q [B, S, H·D] (dtype trait Q), the K and V page pools [num_pages, KV, PAGE, D] (cache
// dtype trait C), the page table i32 [B, MAX_PAGES], cache_len i64 [B]; result o [B, S, H·D]
// (trait O). Query s of sequence b sits at position cache_len[b] + s and attends to pool
// positions 0 ..= cache_len[b] + s; query head h reads KV head h / G (G = H / KV).
// Element values: {{cache_doc}}. Scores Σ q·k in f32 times the score scale, softmax in f32 with
// online (streaming) statistics and CUDA's expf, Σ p·v in f32, divided by the sum of
// exponentials and rounded once to o's dtype: the interpreter's math up to f32 rounding (the
// interpreter normalises p before the product and uses a two-pass softmax). The decode variant
// with D a multiple of 32 (QF_WARP_KEYS) deals a tile's keys to warps and the head's columns to
// lanes (qf_warp_tile, qf_warp_merge); otherwise one thread per score (sequential FMAs over d)
// and one warp per row's statistics. With a fused output quantize (QF_OUT_CODES, `out=… out_scale=…` of
// the op) o stores the E4M3 / I8 codes of that rounded value under the last parameter out_scale.
//
// Work split: one CTA of {{threads}} threads per (tile of QT = {{q_tokens}} query tokens, KV head, sequence):
// grid (ceil_div(S, QT), KV, B). The CTA serves all G = {{group}} query heads of its KV group for
// its QT tokens (ROWS = QT·G query rows; at decode, S = 1, only G rows are live) from one load of
// each K/V tile: it walks positions 0 ..= (last position of its tokens) in tiles of TK = {{tile_keys}}
// keys (whole pages of PAGE = {{page_size}}); per tile it dequantizes K and V [TK, D] into shared memory
// (f32; each thread keeps QF_INFLIGHT 16-byte loads in flight before converting them, finding each
// key's page in the page table), computes the live rows' TK scores (causally masked), updates each
// row's running max and sum (one warp per row), and rescales and accumulates the f32 outputs held
// in registers (each thread owns ceil(ROWS·D / threads) of them).
// Shared memory (f32): Q [ROWS][D+1] | K [TK][D+1] | V [TK][D] | P [ROWS][TK] | m, l, α [ROWS]
// (Q and K rows padded by one word so that threads of one warp reading different rows or keys
// hit different banks).
//
// NVFP4 cache (QF_NVFP4 = 1): the pools hold E2M1 codes (two per byte, low nibble first; a row of
// D codes is D/2 bytes) and two more pools, ks_pool and vs_pool [num_pages, KV, PAGE, D/16], the
// E4M3 scale of each 16 codes; k_scale and v_scale are the global scales. Element d of a key reads
// as via(via(code · block_scale[d / 16]) · global) (qf_load_tile_nvfp4: 16-byte code packs of 32
// elements with their two scale bytes).
//
// Split-KV (SPLITS = {{splits}}; 0: off): the decode variant (S = 1, QT = 1) splits each sequence's
// positions 0 ..= cache_len[b] over the sequence's LIVE = min(SPLITS, n) CTAs of grid
// (SPLITS, KV, B), n its tiles at this step (chosen at run time from cache_len: a short context
// wakes few CTAs and merges few records): CTA x < LIVE covers tiles [x·n/LIVE, (x+1)·n/LIVE), at
// least one, the splits' work differing by at most one tile. Each CTA writes, per query row (head
// h of sequence b), its partial f32 max m, sum of exponentials l and unnormalised output
// acc[D] = Σ exp(s − m)·v to `partials` [B, H, SPLITS, D + 2] as (m, l, acc[0..D)); a CTA x ≥ LIVE
// exits at once, before the wait, writing nothing (it would otherwise hold its SM slot through
// griddepcontrol.wait: 13 of 16 CTAs at a 3-tile context), since every merge reads the LIVE
// records only (split_combine takes LIVE from cache_len the same way). With LIVE = 1 the one
// live CTA also writes o itself (acc / l, the merge of one record, bit for bit). With LIVE ≥ 2 the
// partials follow QF_COUNTER_WORDS = {{counter_words}} u32 completion counters, one per (KV head,
// sequence), at the start of the runtime's zeroed `scratch`: after writing its records, a live CTA
// fences them (__threadfence), then one thread adds 1 to its counter; the CTA that brings it to
// LIVE (the last of its KV head and sequence to finish) merges the G heads' LIVE records
// (split_merge.cuh: the math of the split_combine kernel, bit for bit) into o, rounding once to
// o's dtype, and resets the counter to 0 for the next
// launch.
//
// Fused append (QF_APPEND = 1: decode variants over float and per-tensor code caches, S ≤ 1):
// this step's token-major k, v [B, 1, KV, D] (rows of QF_R packs P, the cache dtype; with
// QF_KEY_ROPE k is unrotated and the rotated, for codes quantized with k_scale, keys also go to
// k_out) arrive as the last parameters. For each (KV head, sequence) exactly one CTA owns the new
// position p = cache_len[b]: the CTA whose key range [lo, hi) holds p (the last non-empty split;
// unsplit, the only CTA), none when p lies past the page table. Before its first tile it writes
// the token's K and V rows to the pools with kv_row.cuh's qf_append_pack (kv_append's code: same
// bits), then the tile loop's barrier orders those writes before the tile loads. When p lies in
// the CTA's first tile (Staging), the same packs also go to the stage, so that tile takes them
// from shared memory instead of reading them back from the pools. With QF_KEY_ROPE the rotation
// factors of the key packs (cos and sin of the f64 angles at p, qf_key_pack_factors) and, for the
// decode variant, the query's (QF_PRE_ROPE) are computed before the wait: they depend on p only. The pools are
// then plain (neither const nor __restrict__) pointers, so the loads take the coherent path, not
// ld.global.nc, which could return the row as it was before the write. No other CTA reads
// position p, so the result is bit-identical to kv_append followed by the attention.
//
// Staging (QF_STAGE: every cache but NVFP4): before its griddepcontrol.wait (qf_pdl_enter) a CTA
// reads cache_len[b] and its page-table row and starts copying its first tile's K and V packs of
// keys below cache_len[b] raw into shared memory (cp.async, qf_stage_tile), so that those loads
// overlap the kernel before it instead of following it. This reads only what was written two or
// more launches earlier: cache_len and the page table by the host before the step, keys below
// cache_len by earlier steps. (The kernel before this one lets it start only after passing its own
// wait, so everything before that kernel is complete and visible; no kernel of this step writes
// those keys.) Keys at or past cache_len[b] (this step's) are read from the pools after the wait
// and the append; every write comes after the wait. The tile's values are the same bits either way.

typedef {{q_t}} QT_;   // q
typedef {{o_t}} OT_;   // o's float dtype (with an output quantize: the rounding before it)
typedef {{c_t}} CT_;   // cache storage

#define QF_H {{heads}}
#define QF_KV {{kv_heads}}
#define QF_G {{group}}
#define QF_D {{head_dim}}
#define QF_QTOK {{q_tokens}}
#define QF_ROWS (QF_QTOK * QF_G)
#define QF_PAGE {{page_size}}
#define QF_TK {{tile_keys}}
#define QF_MAX_PAGES {{max_pages}}
#define QF_THREADS {{threads}}
#define QF_WARPS (QF_THREADS / 32)
#define QF_QLD (QF_D + 1)
#define QF_KLD (QF_D + 1)
#define QF_OPT ((QF_ROWS * QF_D + QF_THREADS - 1) / QF_THREADS)
// Elements per 16-byte pack of the pools.
#define QF_EP (16 / sizeof(CT_::T))
#define QF_CODES {{codes}}
#define QF_OUT_CODES {{out_codes}}  // 0: o is OT_; 1, 2: E4M3 / I8 codes of it (out_scale)
#define QF_SPLITS {{splits}}
#define QF_REC (QF_D + 2)  // floats per partial record: m, l, acc[D]
#define QF_COUNTER_WORDS {{counter_words}}
#if QF_SPLITS
static_assert(QF_QTOK == 1, "split-KV serves the decode variant only");
static_assert(QF_SPLITS <= QF_TK, "the merge weights [G][SPLITS] fit the score tile [G][TK]");
#endif
// 16-byte packs of one K or V tile, and how many of them a thread loads before converting any.
#define QF_PACKS (QF_TK * QF_D / QF_EP)
#define QF_INFLIGHT {{inflight}}
#define QF_ROPE {{rope}}
#define QF_ROPE_ADJ {{rope_adjacent}}
#define QF_NVFP4 {{nvfp4}}

#define QF_VIA(x) {{via}}(x)
#define QF_RAW_TILE 0  // f32 tiles with padded (unaligned) rows
{{paged_load}}
// Staging (all but NVFP4 caches): the first tile's K and V packs, raw, at the start of shared
// memory (2 · PACKS 16-byte packs).
#define QF_STAGE (!QF_NVFP4)
#define QF_STAGE_WORDS (QF_STAGE ? 2 * QF_PACKS * 4 : 0)

// The decode variant takes the query's rotation factors before its wait (one position).
#define QF_PRE_ROPE (QF_ROPE && QF_QTOK == 1)
#if QF_ROPE
// RoPE on load (fuse-rope): q arrives unrotated; element d of the query row x at position pos is
// rotated as the `rope` op it replaces ({{rope_doc}}) and rounded to q's dtype before any
// product reads it.
__constant__ double qf_inv_freq[QF_D / 2] = { {{inv_freq}} };
QF_DEVICE float qf_rope_query(const QT_::T* x, int d, long long pos) {
    const double angle = static_cast<double>(pos) * qf_inv_freq[qf_rope_pair<QF_D, QF_ROPE_ADJ>(d)];
    return qf_round<QT_>(qf_rope_element<QT_, QF_D, QF_ROPE_ADJ>(x, d, angle));
}
#endif

{{append_defs}}
#if QF_APPEND
static_assert(QF_QTOK == 1, "the fused append serves the decode variant only");
// Written (the new token) and read by the owning CTA: no const, no __restrict__.
#define QF_POOL CT_::T*
#if QF_KEY_ROPE
#define QF_APPEND_PARAMS , const P* __restrict__ k, const P* __restrict__ v, P* __restrict__ k_out
#define QF_K_OUT k_out
#else
#define QF_APPEND_PARAMS , const P* __restrict__ k, const P* __restrict__ v
#define QF_K_OUT nullptr
#endif
#else
#define QF_POOL const CT_::T* __restrict__
#define QF_APPEND_PARAMS
#endif

// Element k of the outputs this thread owns: row r, column d; false past the live rows.
QF_DEVICE bool qf_owned(int k, int rows, int& r, int& d) {
    const int e = threadIdx.x + k * QF_THREADS;
    r = e / QF_D;
    d = e % QF_D;
    return r < rows;
}

// Offset of query row r (token s0 + r / G, head g·G + r % G) of sequence b in q and o.
QF_DEVICE long long qf_row_offset(long long b, long long S, long long s0, int g, int r) {
    return ((b * S + s0 + r / QF_G) * QF_H + g * QF_G + r % QF_G) * QF_D;
}

#if QF_SPLITS
// Key range [lo, hi) of split `split` of `live` over positions [0, end), `tiles` tiles: whole
// tiles, at least one for a live split, tile counts of the splits differing by at most one; empty
// (lo ≥ hi) for split ≥ live.
QF_DEVICE void qf_split_range(long long tiles, long long end, long long split, int live, long long& lo, long long& hi) {
    lo = split * tiles / live * QF_TK;
    const long long stop = (split + 1) * tiles / live * QF_TK;
    hi = stop < end ? stop : end;
}

// The partial record of query row r (decode: head g·G + r) of sequence b for split `split`.
QF_DEVICE long long qf_record(long long b, int g, int r, long long split) {
    return ((b * QF_H + g * QF_G + r) * QF_SPLITS + split) * QF_REC;
}

// Called by every thread of a live CTA after its record writes: true in the CTA whose arrival
// completes the `live` splits of its (KV head, sequence), which may then read their records.
// Release: each thread fences its writes before the barrier, then one thread counts the CTA in;
// acquire: the last CTA fences before reading.
QF_DEVICE bool qf_last_split(unsigned int* counter, int live) {
    __shared__ bool last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == static_cast<unsigned int>(live - 1);
    __syncthreads();
    if (last) __threadfence();
    return last;
}

// The merge of the `live` records of the G heads of KV head g of sequence b (the decode query
// rows r < rows) into o: weights into `w` [rows][SPLITS] and totals into `total` [rows] (shared
// memory), then every column, rounded once to o's dtype.
QF_DEVICE void qf_merge_group(const float* partials, OUT_::T* __restrict__ out, long long b, int g, int rows, int live,
                              float* w, float* total, float out_scale) {
    for (int r = threadIdx.x; r < rows; r += QF_THREADS) {
        total[r] = qf_merge_weights<QF_SPLITS, QF_REC>(partials + qf_record(b, g, r, 0), w + r * QF_SPLITS, live);
    }
    __syncthreads();
    for (int e = threadIdx.x; e < rows * QF_D; e += QF_THREADS) {
        const int r = e / QF_D, d = e % QF_D;
        const float o = qf_merge_column<QF_SPLITS, QF_REC>(partials + qf_record(b, g, r, 0), w + r * QF_SPLITS, live, total[r], d);
        out[qf_row_offset(b, 1, 0, g, r) + d] = OUT_::store(o, out_scale);
    }
}
#endif

// Decode compute (QF_WARP_KEYS: one query token and D a multiple of 32; otherwise the thread-
// per-score path below serves): lanes own the columns d = lane + 32·i (i < DL) of all G rows of
// the CTA's KV group, with q and the running output in registers, and key j of a tile goes to
// warp j mod WARPS (KPW keys per warp per tile).
#define QF_WARP_KEYS {{warp_keys}}  // PagedAttentionSpec::warp_keys: QT = 1, D % 32 == 0, not turned off
static_assert(!QF_WARP_KEYS || (QF_QTOK == 1 && QF_D % 32 == 0), "warps over keys serve one query token, D a multiple of 32");
#if QF_WARP_KEYS
#define QF_DL (QF_D / 32)
#define QF_KPW ((QF_TK + QF_WARPS - 1) / QF_WARPS)
static_assert(QF_WARPS * QF_G * (QF_D + 2) <= QF_TK * (2 * QF_D + 1), "the warps' partials fit the K and V tiles");
static_assert(QF_G * QF_WARPS <= QF_ROWS * QF_TK, "the merge weights fit the score tile");

// One warp's share of a CTA's decode attention: per row r < G its q columns, its running max m,
// sum of exponentials l and unnormalised output o over the keys it has seen.
struct qf_warp_state {
    float q[QF_G][QF_DL], o[QF_G][QF_DL], m[QF_G], l[QF_G];
};

QF_DEVICE void qf_warp_start(qf_warp_state& st, const float* Qs) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int r = 0; r < QF_G; ++r) {
        st.m[r] = -__int_as_float(0x7f800000);
        st.l[r] = 0.0f;
#pragma unroll
        for (int i = 0; i < QF_DL; ++i) {
            st.q[r][i] = Qs[r * QF_QLD + lane + 32 * i];
            st.o[r][i] = 0.0f;
        }
    }
}

// This warp's keys j < live of the tile in Ks, Vs: scores s = (Σ_d q·k)·scale — each lane sums
// its DL products with FMAs in i order, a butterfly of shuffles adds the 32 lane sums — then per
// row the online softmax over the warp's keys of the tile (one rescale by exp(m_old − m_new)) and
// o = o·α + Σ_j exp(s_j − m_new)·v_j (FMAs in key order). Warp-uniform control flow.
QF_DEVICE void qf_warp_tile(qf_warp_state& st, const float* Ks, const float* Vs, int live, float scale) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float s[QF_KPW][QF_G];
#pragma unroll
    for (int t = 0; t < QF_KPW; ++t) {
        const int j = warp + t * QF_WARPS;
#pragma unroll
        for (int r = 0; r < QF_G; ++r) {
            float dot = 0.0f;
            if (j < live) {
#pragma unroll
                for (int i = 0; i < QF_DL; ++i) dot = fmaf(st.q[r][i], Ks[j * QF_KLD + lane + 32 * i], dot);
            }
            s[t][r] = dot;
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
#pragma unroll
        for (int t = 0; t < QF_KPW; ++t)
#pragma unroll
            for (int r = 0; r < QF_G; ++r) s[t][r] += __shfl_xor_sync(0xffffffffu, s[t][r], o);
    }
#pragma unroll
    for (int r = 0; r < QF_G; ++r) {
        float mx = -__int_as_float(0x7f800000);
#pragma unroll
        for (int t = 0; t < QF_KPW; ++t) {
            s[t][r] = __fmul_rn(s[t][r], scale);
            if (warp + t * QF_WARPS < live) mx = fmaxf(mx, s[t][r]);
        }
        if (mx == -__int_as_float(0x7f800000)) continue;  // no key of this tile for this warp
        const float m_new = fmaxf(st.m[r], mx);
        const float alpha = expf(st.m[r] - m_new);  // 0 before the first key (m = −∞)
        float o[QF_DL], sum = 0.0f;
#pragma unroll
        for (int i = 0; i < QF_DL; ++i) o[i] = st.o[r][i] * alpha;
#pragma unroll
        for (int t = 0; t < QF_KPW; ++t) {
            const int j = warp + t * QF_WARPS;
            if (j < live) {
                const float p = expf(s[t][r] - m_new);
                sum += p;
#pragma unroll
                for (int i = 0; i < QF_DL; ++i) o[i] = fmaf(p, Vs[j * QF_D + lane + 32 * i], o[i]);
            }
        }
        st.l[r] = fmaf(st.l[r], alpha, sum);
        st.m[r] = m_new;
#pragma unroll
        for (int i = 0; i < QF_DL; ++i) st.o[r][i] = o[i];
    }
}

// The warps' partials merged by the log-sum-exp rule into the CTA's statistics (row_m, row_l:
// M = max_w m_w, L = Σ_w exp(m_w − M)·l_w in warp order) and the outputs this thread owns
// (qf_owned: acc = Σ_w exp(m_w − M)·o_w[d], FMAs in warp order), as the thread-per-score path
// leaves them. `part` [WARPS][G][D + 2] and `w` [G][WARPS]: shared memory free after the tiles.
QF_DEVICE void qf_warp_merge(const qf_warp_state& st, float* part, float* w, int rows, float* row_m, float* row_l,
                             float (&acc)[QF_OPT]) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const float neg_inf = -__int_as_float(0x7f800000);
    __syncthreads();  // the last tile is consumed
#pragma unroll
    for (int r = 0; r < QF_G; ++r) {
        float* rec = part + (warp * QF_G + r) * (QF_D + 2);
        if (lane == 0) {
            rec[0] = st.m[r];
            rec[1] = st.l[r];
        }
#pragma unroll
        for (int i = 0; i < QF_DL; ++i) rec[2 + lane + 32 * i] = st.o[r][i];
    }
    __syncthreads();
    for (int r = threadIdx.x; r < rows; r += QF_THREADS) {
        float m = neg_inf, l = 0.0f;
        for (int v = 0; v < QF_WARPS; ++v) m = fmaxf(m, part[(v * QF_G + r) * (QF_D + 2)]);
        for (int v = 0; v < QF_WARPS; ++v) {
            const float mv = part[(v * QF_G + r) * (QF_D + 2)];
            const float wv = mv == neg_inf ? 0.0f : expf(mv - m);
            w[r * QF_WARPS + v] = wv;
            l = fmaf(wv, part[(v * QF_G + r) * (QF_D + 2) + 1], l);
        }
        row_m[r] = m;
        row_l[r] = l;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < QF_OPT; ++k) {
        int r, d;
        if (qf_owned(k, rows, r, d)) {
            float o = 0.0f;
            for (int v = 0; v < QF_WARPS; ++v) o = fmaf(w[r * QF_WARPS + v], part[(v * QF_G + r) * (QF_D + 2) + 2 + d], o);
            acc[k] = o;
        }
    }
}
#endif

extern "C" __global__ void __launch_bounds__(QF_THREADS) {{kernel_name}}(const QT_::T* __restrict__ q,
        QF_POOL k_pool, QF_POOL v_pool, const int* __restrict__ page_table,
        const long long* __restrict__ cache_len, {{out_param}}, long long S, float k_scale, float v_scale QF_NV_PARAMS QF_APPEND_PARAMS QF_OUT_PARAMS) {
    // qfuse pre-wait begin (Staging: reads only, of what the host and earlier steps wrote)
    extern __shared__ __align__(16) float smem[];
#if QF_STAGE
    uint4* stage = reinterpret_cast<uint4*>(smem);  // the first tile's K, V packs
#endif
    float* Qs = smem + QF_STAGE_WORDS;
    float* Ks = Qs + QF_ROWS * QF_QLD;
    float* Vs = Ks + QF_TK * QF_KLD;
    float* Ps = Vs + QF_TK * QF_D;
    float* row_m = Ps + QF_ROWS * QF_TK;
    float* row_l = row_m + QF_ROWS;
    float* row_a = row_l + QF_ROWS;

    const int g = blockIdx.y;
    const long long b = blockIdx.z;
#if QF_SPLITS
    const long long split = blockIdx.x;  // S = 1: one query token
    const long long s0 = 0;
#else
    const long long s0 = static_cast<long long>(blockIdx.x) * QF_QTOK;
    if (s0 >= S) return;
#endif
    const int tokens = static_cast<int>(S - s0 < QF_QTOK ? S - s0 : QF_QTOK);
    const int rows = tokens * QF_G;
    // Read before the wait (Staging): the host wrote cache_len before the step.
    const long long base = cache_len[b];
    const float scale = __int_as_float({{scale_bits}});

    const long long last = base + s0 + tokens - 1;  // the last position any row attends to
    const int* table = page_table + b * QF_MAX_PAGES;
    // Keys past the page table (t / PAGE ≥ MAX_PAGES) are not read: the runtime never admits them.
    const long long end = last + 1 < static_cast<long long>(QF_MAX_PAGES) * QF_PAGE ? last + 1 : static_cast<long long>(QF_MAX_PAGES) * QF_PAGE;
#if QF_SPLITS
    const long long tiles = qf_tiles<QF_TK>(end);
    const int live = qf_live_ranges<QF_SPLITS>(tiles);
    // No tile at this context: nothing to do, not even the wait.
    if (split >= live) return;
    long long lo, hi;
    qf_split_range(tiles, end, split, live, lo, hi);
#else
    const long long lo = 0, hi = end;
#endif
#if QF_STAGE
    // The first tile's keys below base, written by earlier steps, start loading now.
    if (lo < hi) {
        const int first_live = static_cast<int>(hi - lo < QF_TK ? hi - lo : QF_TK);
        qf_stage_tile(k_pool, table, g, lo, first_live, base, stage);
        qf_stage_tile(v_pool, table, g, lo, first_live, base, stage + QF_PACKS);
    }
    qf_cp_async_commit();
#endif
#if QF_PRE_ROPE
    // The query's rotation factors at its position base (decode: one token), and with the fused
    // append those of the new key's packs this thread rotates: positions only, known now.
    float q_cf[QF_OPT], q_sf[QF_OPT];
#pragma unroll
    for (int k = 0; k < QF_OPT; ++k) {
        const int d = (threadIdx.x + k * QF_THREADS) % QF_D;
        qf_rope_factors(static_cast<double>(base) * qf_inv_freq[qf_rope_pair<QF_D, QF_ROPE_ADJ>(d)], q_cf[k], q_sf[k]);
    }
#endif
#if QF_APPEND
    // This CTA writes the new token (position base) when its key range holds it (at most one CTA
    // of a KV head and sequence does).
    const bool owner = tokens > 0 && lo <= base && base < hi;
    qf_key_factors key_factors;
#if QF_KEY_ROPE
    if (owner && threadIdx.x < QF_R) key_factors = qf_key_pack_factors(threadIdx.x, base);
#endif
#endif
    // qfuse pre-wait end
    qf_pdl_enter();
    // Query rows: r = token · G + head in group.
#if QF_PRE_ROPE
#pragma unroll
    for (int k = 0; k < QF_OPT; ++k) {
        const int e = threadIdx.x + k * QF_THREADS, r = e / QF_D, d = e % QF_D;
        if (r < rows) Qs[r * QF_QLD + d] = qf_round<QT_>(qf_rope_turn<QT_, QF_D, QF_ROPE_ADJ>(q + qf_row_offset(b, S, s0, g, r), d, q_cf[k], q_sf[k]));
    }
#endif
    for (int e = threadIdx.x; e < rows * QF_D && !QF_PRE_ROPE; e += QF_THREADS) {
        const int r = e / QF_D, d = e % QF_D;
#if QF_ROPE
        Qs[r * QF_QLD + d] = qf_rope_query(q + qf_row_offset(b, S, s0, g, r), d, base + s0 + r / QF_G);
#else
        Qs[r * QF_QLD + d] = QT_::load(q[qf_row_offset(b, S, s0, g, r) + d]);
#endif
    }
    for (int r = threadIdx.x; r < rows; r += QF_THREADS) {
        row_m[r] = -__int_as_float(0x7f800000);
        row_l[r] = 0.0f;
    }
    float acc[QF_OPT];
#pragma unroll
    for (int k = 0; k < QF_OPT; ++k) acc[k] = 0.0f;

#if QF_APPEND
    // The new token's K and V rows of KV head g (row (b, 0, g) of k, v), written by the CTA whose
    // range holds its position before the first tile load (the loop's first barrier orders them).
    // When that position lies in the CTA's first tile, the rows also go to the stage, so the tile
    // takes them from shared memory instead of reading them back from the pools.
    const bool stage_new = QF_STAGE && owner && base - lo < QF_TK;
    if (owner) {
        const long long row = b * S * QF_KV + g;
        for (int e = threadIdx.x; e < 2 * QF_R; e += QF_THREADS) {
            const bool key = e < QF_R;
            P written;
            const bool wrote = qf_append_pack(key, k, v, reinterpret_cast<P*>(k_pool), reinterpret_cast<P*>(v_pool), page_table,
                                              cache_len, row * QF_R + e % QF_R, S, QF_K_OUT, k_scale,
                                              key && e == static_cast<int>(threadIdx.x) ? &key_factors : nullptr, written);
#if QF_STAGE
            if (wrote && stage_new) {
                char* stage_row = reinterpret_cast<char*>(stage + (key ? 0 : QF_PACKS)) + (base - lo) * QF_D * sizeof(CT_::T);
                reinterpret_cast<P*>(stage_row)[e % QF_R] = written;
            }
#else
            (void)wrote;
#endif
        }
    }
#else
    const bool stage_new = false;
#endif
#if QF_STAGE
    qf_cp_async_wait<0>();  // this thread's staged packs have landed; the loop's barrier shares them
#endif
#if QF_WARP_KEYS
    qf_warp_state st;
    __syncthreads();  // Q is written
    qf_warp_start(st, Qs);
#endif
    for (long long first = lo; first < hi; first += QF_TK) {
        const int live = static_cast<int>(hi - first < QF_TK ? hi - first : QF_TK);
        __syncthreads();  // the previous tile is consumed (and Q, m, l, the appended token and the stage are written)
#if QF_NVFP4
        qf_load_tile_nvfp4<qf_f32>(k_pool, ks_pool, table, g, first, live, Ks, QF_KLD, k_scale);
        qf_load_tile_nvfp4<qf_f32>(v_pool, vs_pool, table, g, first, live, Vs, QF_D, v_scale);
#else
        // The first tile's keys below base come from the stage, every other key from the pools.
        const long long staged_below = first == lo ? base + (stage_new ? 1 : 0) : 0;
        qf_load_tile<qf_f32>(k_pool, table, g, first, live, Ks, QF_KLD, k_scale, stage, staged_below);
        qf_load_tile<qf_f32>(v_pool, table, g, first, live, Vs, QF_D, v_scale, stage + QF_PACKS, staged_below);
#endif
        __syncthreads();
#if QF_WARP_KEYS
        if (tokens > 0) qf_warp_tile(st, Ks, Vs, live, scale);  // decode: every key ≤ base, none masked
    }
    if (tokens > 0) qf_warp_merge(st, Ks, Ps, rows, row_m, row_l, acc);
#else
        // Scores, causally masked.
        for (int p = threadIdx.x; p < rows * QF_TK; p += QF_THREADS) {
            const int r = p / QF_TK, j = p % QF_TK;
            const long long pos_q = base + s0 + r / QF_G;
            float sc = -__int_as_float(0x7f800000);
            if (j < live && first + j <= pos_q) {
                const float* qr = Qs + r * QF_QLD;
                const float* kr = Ks + j * QF_KLD;
                float dot = 0.0f;
#pragma unroll 8
                for (int d = 0; d < QF_D; ++d) dot = fmaf(qr[d], kr[d], dot);
                sc = __fmul_rn(dot, scale);
            }
            Ps[r * QF_TK + j] = sc;
        }
        __syncthreads();
        // Online softmax statistics: one warp per row.
        const int lane = threadIdx.x & 31;
        for (int r = threadIdx.x >> 5; r < rows; r += QF_WARPS) {
            float* pr = Ps + r * QF_TK;
            float mx = -__int_as_float(0x7f800000);
            for (int j = lane; j < QF_TK; j += 32) mx = fmaxf(mx, pr[j]);
            mx = qf_warp_max(mx);
            const float m_old = row_m[r];
            const float m_new = fmaxf(m_old, mx);
            const bool none = m_new == -__int_as_float(0x7f800000);
            const float alpha = none ? 1.0f : expf(m_old - m_new);
            float sum = 0.0f;
            for (int j = lane; j < QF_TK; j += 32) {
                const float e = none ? 0.0f : expf(pr[j] - m_new);
                pr[j] = e;
                sum += e;
            }
            sum = qf_warp_sum(sum);
            if (lane == 0) {
                row_m[r] = m_new;
                row_l[r] = row_l[r] * alpha + sum;
                row_a[r] = alpha;
            }
        }
        __syncthreads();
        // o = o · α + Σ_j p_j · v_j.
#pragma unroll
        for (int k = 0; k < QF_OPT; ++k) {
            int r, d;
            if (qf_owned(k, rows, r, d)) {
                const float* pr = Ps + r * QF_TK;
                float o = acc[k] * row_a[r];
#pragma unroll 8
                for (int j = 0; j < QF_TK; ++j) o = fmaf(pr[j], Vs[j * QF_D + d], o);
                acc[k] = o;
            }
        }
    }
#endif
    __syncthreads();
#if QF_SPLITS
    // The partial statistics and unnormalised outputs (neutral −∞, 0, 0… when no tile ran).
    float* partials = scratch + QF_COUNTER_WORDS;
    for (int r = threadIdx.x; r < rows; r += QF_THREADS) {
        partials[qf_record(b, g, r, split)] = row_m[r];
        partials[qf_record(b, g, r, split) + 1] = row_l[r];
    }
#pragma unroll
    for (int k = 0; k < QF_OPT; ++k) {
        int r, d;
        if (qf_owned(k, rows, r, d)) partials[qf_record(b, g, r, split) + 2 + d] = acc[k];
    }
    if (live >= 2) {
        unsigned int* counter = reinterpret_cast<unsigned int*>(scratch) + b * QF_KV + g;
        if (!qf_last_split(counter, live)) return;
        qf_merge_group(partials, out, b, g, rows, live, Ps, row_l, QF_OUT_SCALE);
        if (threadIdx.x == 0) atomicExch(counter, 0u);  // ready for the next launch
        return;
    }
#endif
    // Unsplit, or the one live split: o = acc / l.
#pragma unroll
    for (int k = 0; k < QF_OPT; ++k) {
        int r, d;
        if (qf_owned(k, rows, r, d)) out[qf_row_offset(b, S, s0, g, r) + d] = OUT_::store(__fdiv_rn(acc[k], row_l[r]), QF_OUT_SCALE);
    }
}
