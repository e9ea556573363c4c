{{prelude}}
{{ops}}
// qfuse paged_prefill (src/codegen/ops/decoder.rs): the prefill attention (guard S > 1) of a
// causal_attention over the paged KV cache on tensor cores (mma.sync.m16n8k16, {{mma_doc}} operands,
// f32 accumulators), FlashAttention-2 style. It replaces paged_attention.cu's prefill variant
// (CUDA-core FMAs, one thread per score) where PagedAttentionSpec::tensor_core_support allows; the
// decode variants (S = 1) stay on paged_attention.cu. kv_append has already written this step's
// keys and values.
//
// Operands: q [B, S, H·D] (dtype trait Q: f16 or bf16, also the MMA operand dtype), the K and V
// page pools [num_pages, KV, PAGE, D] (cache dtype trait C), the page table i32 [B, MAX_PAGES],
// cache_len i64 [B]; result o [B, S, H·D] (trait O: f16, bf16 or f32). Query s of sequence b sits
// at position cache_len[b] + s and attends to pool positions 0 ..= cache_len[b] + s; query head h
// reads KV head h / G (G = H / KV). Element values: {{cache_doc}}; every cache value is exactly
// representable in Q's dtype (the codegen admits only such caches), so the tiles hold them exactly.
//
// Work split: one CTA of 4 warps per (tile of QT = {{q_tokens}} query tokens, KV head, sequence):
// grid (ceil_div(S, QT), KV, B). Its ROWS = QT·G ≤ 64 query rows (row r = token r / G, head
// g·G + r % G of the KV group, so one K/V tile load serves all G = {{group}} heads) are split into
// four m16 row blocks, one per warp; rows past ROWS are zero and never stored. The CTA walks
// positions 0 ..= (its last token's position) in tiles of TK = {{tile_keys}} keys (whole pages of
// PAGE = {{page_size}}); per tile:
//   1. K and V [TK, D] are dequantized into shared memory in Q's dtype by paged_load.cuh's loaders
//      (those of paged_attention.cu: QF_INFLIGHT 16-byte loads in flight per thread, each key's
//      page found in the page table; keys past the range are zero; a cache of Q's own dtype is
//      copied 16 bytes at a time);
//   2. S = Q·Kᵀ on tensor cores (Q's A fragments stay in registers for the whole kernel; K's B
//      fragments are 32-bit shared loads), f32, times the score scale (__fmul_rn), causally
//      masked to −∞ (key past the row's position or past the range);
//   3. online softmax in registers: each row lives in one quad of a warp (shuffle reductions);
//      running max m, alpha = expf(m_old − m_new), p = expf(s − m_new), l = l·alpha + Σ p (f32,
//      CUDA's expf, as paged_attention.cu); a row with no live key yet keeps alpha = 1, p = 0;
//   4. O = O·alpha + P·V on tensor cores: P is split as P = P_hi + P_lo, both in Q's dtype
//      (P_hi = round(p), P_lo = round(p − P_hi): p to ~2^-22 relative for f16, ~2^-16 for bf16),
//      two MMAs per fragment with V's B fragments from ldmatrix.trans, so P·V keeps about f32
//      accuracy (the interpreter normalises p in f32; P rounded once to f16 would add ~2^-11).
// At the end o = O / l, rounded once to O's dtype (then, with QF_OUT_CODES, quantized to E4M3 / I8
// codes under out_scale: paged_attention.cu's output quantize).
// Deviations from the interpreter: f32 rounding order (tensor-core accumulation, online softmax,
// the division after the product instead of before), CUDA's expf, and P's split (above).
//
// Shared memory (Q's dtype, rows padded by 8 elements = 16 bytes so the 8 rows of a fragment
// load or an ldmatrix hit distinct banks): Q [64][D+8] | K [TK][D+8] | V [TK][D+8].
// RoPE (QF_ROPE): q arrives unrotated and each element is rotated at its position and rounded to
// Q's dtype as it is loaded (the `rope` op it replaces), exactly as paged_attention.cu does.
// NVFP4 cache (QF_NVFP4 = 1): as paged_attention.cu (codes two per byte, E4M3 block scales in
// ks_pool / vs_pool, k_scale / v_scale the globals).

typedef {{q_t}} QT_;   // q and the MMA operands (f16 or bf16)
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
#define QF_BF16 {{bf16}}
// Elements per 16-byte pack of the pools, and packs of one K or V tile (paged_load.cuh).
#define QF_EP (16 / sizeof(CT_::T))
#define QF_PACKS (QF_TK * QF_D / QF_EP)
#define QF_INFLIGHT {{inflight}}
#define QF_CODES {{codes}}
#define QF_OUT_CODES {{out_codes}}  // 0: o is OT_; 1, 2: E4M3 / I8 codes of it (out_scale)
#define QF_ROPE {{rope}}
#define QF_ROPE_ADJ {{rope_adjacent}}
#define QF_NVFP4 {{nvfp4}}
// Shared-memory row (elements), n8 score tiles per key tile, n8 output tiles, k16 steps over D.
#define QF_LD (QF_D + 8)
#define QF_NS (QF_TK / 8)
#define QF_NO (QF_D / 8)
#define QF_KQ (QF_D / 16)
static_assert(QF_WARPS * 16 >= QF_ROWS, "one m16 row block per warp covers the CTA's rows");
static_assert(QF_TK % 16 == 0 && QF_D % 16 == 0, "keys and head size are whole k16 steps");
static_assert(sizeof(QT_::T) == 2, "the MMA operands are f16 or bf16");

#define QF_VIA(x) {{via}}(x)
// A cache of q's own dtype is copied into the tiles as it is (rows of D + 8 elements: 16-byte aligned).
#define QF_RAW_TILE {{raw_tile}}
{{paged_load}}

#if QF_ROPE
// RoPE on load (fuse-rope): element d of the query row x at position pos is rotated as the `rope`
// op it replaces ({{rope_doc}}) and rounded to q's dtype.
__constant__ double qf_inv_freq[QF_D / 2] = { {{inv_freq}} };
QF_DEVICE float qf_rope_query(const QT_::T* x, int d, long long pos) {
    const double angle = static_cast<double>(pos) * qf_inv_freq[qf_rope_pair<QF_D, QF_ROPE_ADJ>(d)];
    return qf_round<QT_>(qf_rope_element<QT_, QF_D, QF_ROPE_ADJ>(x, d, angle));
}
#endif

// c += a·b on one m16n8k16 tile (row-major A fragment a, column-major B fragment b0 b1, f32 c).
QF_DEVICE void qf_pf_mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if QF_BF16
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// Four 8x8 b16 matrices delivered transposed (lanes 8i..8i+7 address the rows of matrix i): from a
// row-major [key][d] tile, register i of lane t holds matrix i's rows 2·(t%4), 2·(t%4) + 1 of
// column t/4, which is an m16n8k16 B fragment half (keys along k, d along n).
QF_DEVICE void qf_pf_ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// Two values already in Q's dtype (exact) as one operand register, the first in the low half.
QF_DEVICE uint32_t qf_pf_pack(float lo, float hi) {
    return static_cast<uint32_t>(QT_::store(lo)) | (static_cast<uint32_t>(QT_::store(hi)) << 16);
}

// The hi/lo split of two probabilities: hi = round(p), lo = round(p − hi) (p − hi exact in f32).
QF_DEVICE void qf_pf_split(float p0, float p1, uint32_t& hi, uint32_t& lo) {
    const float h0 = qf_round<QT_>(p0), h1 = qf_round<QT_>(p1);
    hi = qf_pf_pack(h0, h1);
    lo = qf_pf_pack(__fsub_rn(p0, h0), __fsub_rn(p1, h1));
}

// Sum or max over the quad of lanes holding one row.
QF_DEVICE float qf_pf_quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
QF_DEVICE float qf_pf_quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Offset of query row r (token s0 + r / G, head g·G + r % G) of sequence b in q and o.
QF_DEVICE long long qf_row_offset(long long b, long long S, long long s0, int g, int r) {
    return ((b * S + s0 + r / QF_G) * QF_H + g * QF_G + r % QF_G) * QF_D;
}

// Fills Qs [WARPS·16][LD] with the CTA's `rows` query rows (zero past them).
QF_DEVICE void qf_pf_load_q(const QT_::T* __restrict__ q, QT_::T* Qs, long long b, long long S, long long s0, int g, int rows,
                            long long base) {
    for (int e = threadIdx.x; e < QF_WARPS * 16 * QF_D; e += QF_THREADS) {
        const int r = e / QF_D, d = e % QF_D;
        QT_::T x = 0;  // +0 in f16 and bf16
        if (r < rows) {
#if QF_ROPE
            x = QT_::store(qf_rope_query(q + qf_row_offset(b, S, s0, g, r), d, base + s0 + r / QF_G));
#else
            (void)base;
            x = q[qf_row_offset(b, S, s0, g, r) + d];
#endif
        }
        Qs[r * QF_LD + d] = x;
    }
}

extern "C" __global__ void __launch_bounds__(QF_THREADS) {{kernel_name}}(const QT_::T* __restrict__ q,
        const CT_::T* __restrict__ k_pool, const CT_::T* __restrict__ v_pool, const int* __restrict__ page_table,
        const long long* __restrict__ cache_len, OUT_::T* __restrict__ out, long long S, float k_scale, float v_scale QF_NV_PARAMS QF_OUT_PARAMS) {
    qf_pdl_enter();
    extern __shared__ uint4 qf_smem[];
    QT_::T* Qs = reinterpret_cast<QT_::T*>(qf_smem);
    QT_::T* Ks = Qs + QF_WARPS * 16 * QF_LD;
    QT_::T* Vs = Ks + QF_TK * QF_LD;

    const int g = blockIdx.y;
    const long long b = blockIdx.z;
    const long long s0 = static_cast<long long>(blockIdx.x) * QF_QTOK;
    if (s0 >= S) return;
    const int tokens = static_cast<int>(S - s0 < QF_QTOK ? S - s0 : QF_QTOK);
    const int rows = tokens * QF_G;
    const long long base = cache_len[b];
    const float scale = __int_as_float({{scale_bits}});
    const float neg_inf = -__int_as_float(0x7f800000);

    qf_pf_load_q(q, Qs, b, S, s0, g, rows, base);
    __syncthreads();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gr = lane >> 2, tq = lane & 3;
    // This thread's two rows (C fragment rows gr and gr + 8 of the warp's block) and their
    // positions; a dead row gets −1, so every key is masked for it.
    const int r0 = warp * 16 + gr, r1 = r0 + 8;
    const long long pos[2] = {r0 < rows ? base + s0 + r0 / QF_G : -1, r1 < rows ? base + s0 + r1 / QF_G : -1};
    uint32_t qa[QF_KQ][4];
#pragma unroll
    for (int ks = 0; ks < QF_KQ; ++ks) {
        const QT_::T* p0 = Qs + r0 * QF_LD + ks * 16 + 2 * tq;
        const QT_::T* p1 = Qs + r1 * QF_LD + ks * 16 + 2 * tq;
        qa[ks][0] = *reinterpret_cast<const uint32_t*>(p0);
        qa[ks][1] = *reinterpret_cast<const uint32_t*>(p1);
        qa[ks][2] = *reinterpret_cast<const uint32_t*>(p0 + 8);
        qa[ks][3] = *reinterpret_cast<const uint32_t*>(p1 + 8);
    }
    float m[2] = {neg_inf, neg_inf}, l[2] = {0.0f, 0.0f};
    float acc[QF_NO][4];
#pragma unroll
    for (int n = 0; n < QF_NO; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;

    const long long last = base + s0 + tokens - 1;  // the last position any row attends to
    const int* table = page_table + b * QF_MAX_PAGES;
    // Keys past the page table (t / PAGE ≥ MAX_PAGES) are not read: the runtime never admits them.
    const long long end = last + 1 < static_cast<long long>(QF_MAX_PAGES) * QF_PAGE ? last + 1 : static_cast<long long>(QF_MAX_PAGES) * QF_PAGE;
    const int mat = lane >> 3, mrow = lane & 7;  // this lane's ldmatrix row: matrix mat, row mrow
    for (long long first = 0; first < end; first += QF_TK) {
        const int live = static_cast<int>(end - first < QF_TK ? end - first : QF_TK);
        __syncthreads();  // the previous tile is consumed
#if QF_NVFP4
        qf_load_tile_nvfp4<QT_>(k_pool, ks_pool, table, g, first, live, Ks, QF_LD, k_scale);
        qf_load_tile_nvfp4<QT_>(v_pool, vs_pool, table, g, first, live, Vs, QF_LD, v_scale);
#else
        qf_load_tile<QT_>(k_pool, table, g, first, live, Ks, QF_LD, k_scale, nullptr, 0);
        qf_load_tile<QT_>(v_pool, table, g, first, live, Vs, QF_LD, v_scale, nullptr, 0);
#endif
        __syncthreads();
        // S = Q·Kᵀ: score tile j holds keys 8j .. 8j + 7; c[e] is row e < 2 ? r0 : r1, key 8j + 2·tq + e % 2.
        float s[QF_NS][4];
#pragma unroll
        for (int j = 0; j < QF_NS; ++j) {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
            const QT_::T* kr = Ks + (j * 8 + gr) * QF_LD + 2 * tq;
#pragma unroll
            for (int ks = 0; ks < QF_KQ; ++ks) {
                const uint32_t b0 = *reinterpret_cast<const uint32_t*>(kr + ks * 16);
                const uint32_t b1 = *reinterpret_cast<const uint32_t*>(kr + ks * 16 + 8);
                qf_pf_mma(s[j], qa[ks], b0, b1);
            }
        }
        // Scale, causal mask, row maxima.
        float mx[2] = {neg_inf, neg_inf};
#pragma unroll
        for (int j = 0; j < QF_NS; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = j * 8 + 2 * tq + (e & 1);
                const bool ok = key < live && first + key <= pos[e >> 1];
                s[j][e] = ok ? __fmul_rn(s[j][e], scale) : neg_inf;
                mx[e >> 1] = fmaxf(mx[e >> 1], s[j][e]);
            }
        }
        float alpha[2];
        bool none[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const float m_new = fmaxf(m[i], qf_pf_quad_max(mx[i]));
            none[i] = m_new == neg_inf;
            alpha[i] = none[i] ? 1.0f : expf(m[i] - m_new);
            m[i] = m_new;
        }
        float sum[2] = {0.0f, 0.0f};
#pragma unroll
        for (int j = 0; j < QF_NS; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int i = e >> 1;
                const float p = none[i] ? 0.0f : expf(s[j][e] - m[i]);
                s[j][e] = p;
                sum[i] += p;
            }
        }
#pragma unroll
        for (int i = 0; i < 2; ++i) l[i] = l[i] * alpha[i] + qf_pf_quad_sum(sum[i]);
#pragma unroll
        for (int n = 0; n < QF_NO; ++n) {
            acc[n][0] *= alpha[0];
            acc[n][1] *= alpha[0];
            acc[n][2] *= alpha[1];
            acc[n][3] *= alpha[1];
        }
        // O += P·V over k16 steps of keys: P's A fragment straight from the score tiles 2kk, 2kk + 1.
#pragma unroll
        for (int kk = 0; kk < QF_TK / 16; ++kk) {
            uint32_t hi[4], lo[4];
            qf_pf_split(s[2 * kk][0], s[2 * kk][1], hi[0], lo[0]);
            qf_pf_split(s[2 * kk][2], s[2 * kk][3], hi[1], lo[1]);
            qf_pf_split(s[2 * kk + 1][0], s[2 * kk + 1][1], hi[2], lo[2]);
            qf_pf_split(s[2 * kk + 1][2], s[2 * kk + 1][3], hi[3], lo[3]);
            const QT_::T* vrow = Vs + (kk * 16 + (mat & 1) * 8 + mrow) * QF_LD + (mat >> 1) * 8;
#pragma unroll
            for (int dn = 0; dn < QF_D / 16; ++dn) {
                // Matrices: keys +0/+8 (mat & 1) of columns 16·dn + 0/+8 (mat >> 1): registers 0, 1
                // are output tile 2·dn's B fragment, 2, 3 tile 2·dn + 1's.
                uint32_t v[4];
                qf_pf_ldmatrix_x4_trans(v, qf_smem_addr(vrow + dn * 16));
                qf_pf_mma(acc[2 * dn], hi, v[0], v[1]);
                qf_pf_mma(acc[2 * dn], lo, v[0], v[1]);
                qf_pf_mma(acc[2 * dn + 1], hi, v[2], v[3]);
                qf_pf_mma(acc[2 * dn + 1], lo, v[2], v[3]);
            }
        }
    }
    // o = O / l, rounded once; column n·8 + 2·tq + e % 2 of row e < 2 ? r0 : r1.
#pragma unroll
    for (int n = 0; n < QF_NO; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int r = e < 2 ? r0 : r1;
            if (r < rows) {
                const int d = n * 8 + 2 * tq + (e & 1);
                out[qf_row_offset(b, S, s0, g, r) + d] = OUT_::store(__fdiv_rn(acc[n][e], l[e >> 1]), QF_OUT_SCALE);
            }
        }
    }
}
