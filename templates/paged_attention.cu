{{prelude}}
{{ops}}
// qfuse paged_attention (src/codegen/ops/decoder.rs): the second launch of a causal_attention
// over the paged KV cache (kv_append has already written this step's keys and values).
//
// Operands: q [B, S, H·D] (dtype trait Q), the K and V page pools [num_pages, KV, PAGE, D] (cache
// dtype trait C), the page table i32 [B, MAX_PAGES], cache_len i64 [B]; result o [B, S, H·D]
// (trait O). Query s of sequence b sits at position cache_len[b] + s and attends to pool
// positions 0 ..= cache_len[b] + s; query head h reads KV head h / G (G = H / KV).
// Element values: {{cache_doc}}. Scores Σ q·k in f32 (one thread per score, sequential FMAs over
// d) times the score scale, softmax in f32 with online (streaming) statistics and CUDA's expf,
// Σ p·v in f32, divided by the sum of exponentials and rounded once to o's dtype: the
// interpreter's math up to f32 rounding (the interpreter normalises p before the product and
// uses a two-pass softmax).
//
// Work split: one CTA of {{threads}} threads per (tile of QT = {{q_tokens}} query tokens, KV head, sequence):
// grid (ceil_div(S, QT), KV, B). The CTA serves all G = {{group}} query heads of its KV group for
// its QT tokens (ROWS = QT·G query rows; at decode, S = 1, only G rows are live) from one load of
// each K/V page: it walks the pages 0 ..= (last position of its tokens) / PAGE in order; per page
// it dequantizes the K and V tiles [PAGE, D] into shared memory (f32), computes the live rows'
// PAGE scores (causally masked), updates each row's running max and sum, and rescales and
// accumulates the f32 outputs held in registers (each thread owns ceil(ROWS·D / threads) of them).
// Shared memory (f32): Q [ROWS][D+1] | K [PAGE][D+1] | V [PAGE][D] | P [ROWS][PAGE] | m, l, α [ROWS]
// (rows padded by one word so that threads of one warp reading different rows or keys hit
// different banks). No split-KV: long decode contexts run on B·KV CTAs.

typedef {{q_t}} QT_;   // q
typedef {{o_t}} OT_;   // o
typedef {{c_t}} CT_;   // cache storage

#define QF_H {{heads}}
#define QF_KV {{kv_heads}}
#define QF_G {{group}}
#define QF_D {{head_dim}}
#define QF_QTOK {{q_tokens}}
#define QF_ROWS (QF_QTOK * QF_G)
#define QF_PAGE {{page_size}}
#define QF_MAX_PAGES {{max_pages}}
#define QF_THREADS {{threads}}
#define QF_WARPS (QF_THREADS / 32)
#define QF_QLD (QF_D + 1)
#define QF_KLD (QF_D + 1)
#define QF_OPT ((QF_ROWS * QF_D + QF_THREADS - 1) / QF_THREADS)
#define QF_CODES {{codes}}
// Elements per 16-byte pack of the pools.
#define QF_EP (16 / sizeof(CT_::T))

// The value of one cache element: {{cache_doc}}.
QF_DEVICE float qf_cache_value(CT_::T code, float scale) {
    const float f = CT_::load(code);
#if QF_CODES
    return {{via}}(__fmul_rn(f, scale));
#else
    (void)scale;
    return f;
#endif
}

// Dequantizes PAGE × D elements of one pool page (contiguous: HND within a page) into `dst`
// ([PAGE][ld] f32); keys at or past `live` are zero (never read from memory).
QF_DEVICE void qf_load_tile(const CT_::T* __restrict__ src, float* dst, int ld, int live, float scale) {
    const uint4* src4 = reinterpret_cast<const uint4*>(src);
    for (int pk = threadIdx.x; pk < QF_PAGE * QF_D / QF_EP; pk += QF_THREADS) {
        const int e0 = pk * QF_EP;
        const int j = e0 / QF_D, d0 = e0 % QF_D;
        float* row = dst + j * ld + d0;
        if (j < live) {
            const uint4 w = src4[pk];
            const CT_::T* e = reinterpret_cast<const CT_::T*>(&w);
#pragma unroll
            for (int u = 0; u < QF_EP; ++u) row[u] = qf_cache_value(e[u], scale);
        } else {
#pragma unroll
            for (int u = 0; u < QF_EP; ++u) row[u] = 0.0f;
        }
    }
}

extern "C" __global__ void __launch_bounds__(QF_THREADS) {{kernel_name}}(const QT_::T* __restrict__ q,
        const CT_::T* __restrict__ k_pool, const CT_::T* __restrict__ v_pool, const int* __restrict__ page_table,
        const long long* __restrict__ cache_len, OT_::T* __restrict__ out, long long S, float k_scale, float v_scale) {
    extern __shared__ float smem[];
    float* Qs = smem;
    float* Ks = Qs + QF_ROWS * QF_QLD;
    float* Vs = Ks + QF_PAGE * QF_KLD;
    float* Ps = Vs + QF_PAGE * QF_D;
    float* row_m = Ps + QF_ROWS * QF_PAGE;
    float* row_l = row_m + QF_ROWS;
    float* row_a = row_l + QF_ROWS;

    const int g = blockIdx.y;
    const long long b = blockIdx.z;
    const long long s0 = static_cast<long long>(blockIdx.x) * QF_QTOK;
    if (s0 >= S) return;
    const int tokens = static_cast<int>(S - s0 < QF_QTOK ? S - s0 : QF_QTOK);
    const int rows = tokens * QF_G;
    const long long base = cache_len[b];
    const float scale = __int_as_float({{scale_bits}});

    // Query rows: r = token · G + head in group.
    for (int e = threadIdx.x; e < rows * QF_D; e += QF_THREADS) {
        const int r = e / QF_D, d = e % QF_D;
        const long long s = s0 + r / QF_G;
        const int h = g * QF_G + r % QF_G;
        Qs[r * QF_QLD + d] = QT_::load(q[((b * S + s) * QF_H + h) * QF_D + d]);
    }
    for (int r = threadIdx.x; r < rows; r += QF_THREADS) {
        row_m[r] = -__int_as_float(0x7f800000);
        row_l[r] = 0.0f;
    }
    float acc[QF_OPT];
#pragma unroll
    for (int k = 0; k < QF_OPT; ++k) acc[k] = 0.0f;

    const long long last = base + s0 + tokens - 1;  // the last position any row attends to
    const long long pages = last / QF_PAGE + 1;
    const int* table = page_table + b * QF_MAX_PAGES;
    for (long long pg = 0; pg < pages && pg < QF_MAX_PAGES; ++pg) {
        const long long page = table[pg];
        const long long first = pg * QF_PAGE;
        const int live = static_cast<int>(last - first + 1 < QF_PAGE ? last - first + 1 : QF_PAGE);
        const long long off = (page * QF_KV + g) * (static_cast<long long>(QF_PAGE) * QF_D);
        __syncthreads();  // the previous page's tiles are consumed (and Q, m, l are written)
        qf_load_tile(k_pool + off, Ks, QF_KLD, live, k_scale);
        qf_load_tile(v_pool + off, Vs, QF_D, live, v_scale);
        __syncthreads();
        // Scores, causally masked.
        for (int p = threadIdx.x; p < rows * QF_PAGE; p += QF_THREADS) {
            const int r = p / QF_PAGE, j = p % QF_PAGE;
            const long long pos_q = base + s0 + r / QF_G;
            float sc = -__int_as_float(0x7f800000);
            if (first + j <= pos_q) {
                const float* qr = Qs + r * QF_QLD;
                const float* kr = Ks + j * QF_KLD;
                float dot = 0.0f;
#pragma unroll 8
                for (int d = 0; d < QF_D; ++d) dot = fmaf(qr[d], kr[d], dot);
                sc = __fmul_rn(dot, scale);
            }
            Ps[r * QF_PAGE + j] = sc;
        }
        __syncthreads();
        // Online softmax statistics: one warp per row.
        const int lane = threadIdx.x & 31;
        for (int r = threadIdx.x >> 5; r < rows; r += QF_WARPS) {
            float* pr = Ps + r * QF_PAGE;
            float mx = -__int_as_float(0x7f800000);
            for (int j = lane; j < QF_PAGE; j += 32) mx = fmaxf(mx, pr[j]);
            mx = qf_warp_max(mx);
            const float m_old = row_m[r];
            const float m_new = fmaxf(m_old, mx);
            const bool none = m_new == -__int_as_float(0x7f800000);
            const float alpha = none ? 1.0f : expf(m_old - m_new);
            float sum = 0.0f;
            for (int j = lane; j < QF_PAGE; j += 32) {
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
            const int e = threadIdx.x + k * QF_THREADS;
            const int r = e / QF_D, d = e % QF_D;
            if (r < rows) {
                const float* pr = Ps + r * QF_PAGE;
                float o = acc[k] * row_a[r];
#pragma unroll 8
                for (int j = 0; j < QF_PAGE; ++j) o = fmaf(pr[j], Vs[j * QF_D + d], o);
                acc[k] = o;
            }
        }
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < QF_OPT; ++k) {
        const int e = threadIdx.x + k * QF_THREADS;
        const int r = e / QF_D, d = e % QF_D;
        if (r < rows) {
            const long long s = s0 + r / QF_G;
            const int h = g * QF_G + r % QF_G;
            out[((b * S + s) * QF_H + h) * QF_D + d] = OT_::store(__fdiv_rn(acc[k], row_l[r]));
        }
    }
}
