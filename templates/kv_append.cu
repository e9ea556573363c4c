{{prelude}}
// qfuse kv_append (src/codegen/ops/decoder.rs): the first launch of a causal_attention over the
// paged KV cache. Copies this step's keys and values k, v [B, S, KV, D] (token-major: a view of
// the projection's rows, dense, already in the cache dtype: the bytes are copied as they are) into
// the HND page pools [num_pages, KV, PAGE, D] at positions cache_len[b] + s: token t of sequence
// b goes to page table[b·MAX_PAGES + t/PAGE], slot t % PAGE. A row of D elements is R packs of {{pack_bytes}} bytes. Grid
// (ceil_div(B·S·KV·R, {{threads}}), 2): y = 0 copies K, y = 1 copies V; block {{threads}}, one pack per
// thread. A page index outside the table (t/PAGE ≥ MAX_PAGES) or a negative page id is skipped:
// the runtime never hands out such tables.

typedef {{pack_t}} P;
{{rope_defs}}
#define QF_KV {{kv_heads}}
#define QF_R {{packs}}
#define QF_PAGE {{page_size}}
#define QF_MAX_PAGES {{max_pages}}

extern "C" __global__ void __launch_bounds__({{threads}}) {{kernel_name}}(const P* __restrict__ k, const P* __restrict__ v,
        P* __restrict__ k_pool, P* __restrict__ v_pool, const int* __restrict__ page_table,
        const long long* __restrict__ cache_len, {{rope_param}}long long B, long long S) {
    qf_pdl_enter();
    const long long i = static_cast<long long>(blockIdx.x) * {{threads}} + threadIdx.x;
    const long long total = B * S * QF_KV * QF_R;
    if (i >= total) return;
    const long long c = i % QF_R;
    const long long row = i / QF_R;  // (b, s, g): token-major
    const long long g = row % QF_KV;
    const long long s = (row / QF_KV) % S;
    const long long b = row / (S * QF_KV);
    const long long t = cache_len[b] + s;
    const long long slot_page = t / QF_PAGE;
    if (t < 0 || slot_page >= QF_MAX_PAGES) return;
    const int page = page_table[b * QF_MAX_PAGES + slot_page];
    if (page < 0) return;
    const long long dst = ((static_cast<long long>(page) * QF_KV + g) * QF_PAGE + t % QF_PAGE) * QF_R + c;
    if (blockIdx.y == 0) {
#if QF_ROPE
        const P rotated = qf_rotated_keys(k, row, c, t, k_scale);
        k_pool[dst] = rotated;
        k_out[i] = rotated;
#else
        k_pool[dst] = k[i];
#endif
    } else {
        v_pool[dst] = v[i];
    }
}
