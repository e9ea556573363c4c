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
// With QF_KEY_ROPE (fuse-rope's rope(keys); never with QF_SCALES) y = 0 rotates (and quantizes)
// each key pack instead of copying it and also writes it to k_out. The per-pack math is
// kv_row.cuh's, which paged_attention.cu's decode variant shares when it appends the step's token
// itself (the plan then launches kv_append only for prefill, S > 1).

typedef {{pack_t}} P;
{{rope_defs}}
#define QF_KV {{kv_heads}}
#define QF_R {{packs}}
#define QF_PAGE {{page_size}}
#define QF_MAX_PAGES {{max_pages}}
#define QF_SCALES {{scales}}
#if QF_KEY_ROPE
#define QF_K_OUT k_out
#define QF_K_SCALE k_scale
#else
#define QF_K_OUT nullptr
#define QF_K_SCALE 1.0f
#endif

{{kv_row}}

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
        P written;
        qf_append_pack(blockIdx.y == 0, k, v, k_pool, v_pool, page_table, cache_len, i, S, QF_K_OUT, QF_K_SCALE, nullptr, written);
    }
#if QF_SCALES
    else {
        if (i >= B * S * QF_KV * QF_RS) return;
        SP written;
        qf_append(blockIdx.y == 2 ? k_s : v_s, blockIdx.y == 2 ? ks_pool : vs_pool, page_table, cache_len, i, QF_RS, S, written);
    }
#endif
}
