{{prelude}}
// qfuse kv_append (src/codegen/ops/decoder.rs): the first launch of a causal_attention over the
// paged KV cache. Copies this step's keys and values k, v [B, S, KV, D] (token-major: a view of
// the projection's rows, dense, already in the cache dtype: the bytes are copied as they are) into
// the HND page pools [num_pages, KV, PAGE, D] at positions cache_len[b] + s: token t of sequence
// b goes to page table[b·MAX_PAGES + t/PAGE], slot t % PAGE. A row of D elements is R packs of {{pack_bytes}} bytes. Grid
// (ceil_div(B·S·KV·max(R, RS), {{threads}}), Y): y = 0 copies K, y = 1 copies V; block {{threads}}, one pack per
// thread. A page index outside the table (t/PAGE ≥ MAX_PAGES) or a negative page id is skipped:
// the runtime never hands out such tables.
// An NVFP4 cache (QF_SCALES = 1, Y = 4) also copies the E4M3 block scales k_s, v_s [B, S, KV, D/16]
// (y = 2: K's, y = 3: V's), rows of RS packs, into their own pools [num_pages, KV, PAGE, D/16],
// same pages and slots; the codes (two E2M1 per byte, low nibble first) are copied as bytes.
// With QF_ROPE (fuse-rope's rope(keys); never with QF_SCALES) y = 0 rotates (and quantizes) each
// key pack instead of copying it and also writes it to k_out (definitions above the kernel).

typedef {{pack_t}} P;
{{rope_defs}}
#define QF_KV {{kv_heads}}
#define QF_R {{packs}}
#define QF_PAGE {{page_size}}
#define QF_MAX_PAGES {{max_pages}}
#define QF_SCALES {{scales}}

// The pool index (HND pages) of pack i of a token-major step tensor of rows of `packs` packs, or
// -1 when its token's page is skipped; `row` (b, s, g) and `t` (the token's position) as well.
__device__ __forceinline__ long long qf_slot(const int* __restrict__ page_table, const long long* __restrict__ cache_len,
                                             long long i, long long packs, long long S, long long& row, long long& t) {
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

// Copies pack i of a token-major step tensor of rows of `packs` packs into `pool` (HND pages).
template <typename T>
__device__ __forceinline__ void qf_append(const T* __restrict__ src, T* __restrict__ pool, const int* __restrict__ page_table,
                                          const long long* __restrict__ cache_len, long long i, long long packs, long long S) {
    long long row, t;
    const long long dst = qf_slot(page_table, cache_len, i, packs, S, row, t);
    if (dst >= 0) pool[dst] = src[i];
}

#if QF_SCALES
typedef {{scale_pack_t}} SP;
#define QF_RS {{scale_packs}}
#define QF_SCALE_PARAMS , const SP* __restrict__ k_s, const SP* __restrict__ v_s, SP* __restrict__ ks_pool, SP* __restrict__ vs_pool
#else
#define QF_SCALE_PARAMS
#endif

extern "C" __global__ void __launch_bounds__({{threads}}) {{kernel_name}}(const P* __restrict__ k, const P* __restrict__ v,
        P* __restrict__ k_pool, P* __restrict__ v_pool, const int* __restrict__ page_table,
        const long long* __restrict__ cache_len, {{rope_param}}long long B, long long S QF_SCALE_PARAMS) {
    qf_pdl_enter();
    const long long i = static_cast<long long>(blockIdx.x) * {{threads}} + threadIdx.x;
    if (blockIdx.y < 2) {
        if (i >= B * S * QF_KV * QF_R) return;
#if QF_ROPE
        if (blockIdx.y == 0) {
            long long row, t;
            const long long dst = qf_slot(page_table, cache_len, i, QF_R, S, row, t);
            if (dst < 0) return;
            const P rotated = qf_rotated_keys(k, row, i % QF_R, t, k_scale);
            k_pool[dst] = rotated;
            k_out[i] = rotated;
            return;
        }
#endif
        qf_append(blockIdx.y == 0 ? k : v, blockIdx.y == 0 ? k_pool : v_pool, page_table, cache_len, i, QF_R, S);
    }
#if QF_SCALES
    else {
        if (i >= B * S * QF_KV * QF_RS) return;
        qf_append(blockIdx.y == 2 ? k_s : v_s, blockIdx.y == 2 ? ks_pool : vs_pool, page_table, cache_len, i, QF_RS, S);
    }
#endif
}
