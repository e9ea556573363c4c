// qfuse paged KV-cache tile loaders, shared by paged_attention.cu and paged_prefill.cu (inlined
// as `{{paged_load}}`; no placeholders of its own). The including template defines CT_ (cache
// storage trait), QF_KV, QF_PAGE, QF_D, QF_TK, QF_THREADS, QF_EP, QF_PACKS, QF_INFLIGHT, QF_CODES,
// QF_NVFP4, QF_VIA(x), the rounding of a dequantized element (the cache's `via` dtype; identity
// for f32), and QF_RAW_TILE: 1 when the tile's dtype DT is the cache's own float dtype and rows
// are 16-byte aligned, so qf_load_tile copies the 16-byte packs as they are. The loaders write each element as DT::store(value) into a tile of DT elements: qf_f32
// for the CUDA-core kernel, the compute dtype (qf_f16, qf_bf16) for the tensor-core prefill, which
// takes only caches whose values its dtype holds exactly (PagedAttentionSpec::tensor_core_support).

// The value of one cache element (dequantized for code caches).
QF_DEVICE float qf_cache_value(CT_::T code, float scale) {
    const float f = CT_::load(code);
#if QF_CODES
    return QF_VIA(__fmul_rn(f, scale));
#else
    (void)scale;
    return f;
#endif
}

// Element offset in a pool of the 16-byte pack at element d0 of key t's row (KV head g): key t
// lives in page table[t / PAGE], slot t % PAGE, a contiguous row of D elements (HND within a page).
QF_DEVICE long long qf_pack_at(const int* __restrict__ table, int g, long long t, int d0) {
    const long long page = table[t / QF_PAGE];
    return ((page * QF_KV + g) * QF_PAGE + t % QF_PAGE) * QF_D + d0;
}

#if !QF_NVFP4
// Copies, raw, the 16-byte packs of the K or V tile of keys t0 .. t0 + live − 1 that lie below
// position `below` into `stage` [PACKS] (shared memory, pack pk at stage[pk]) with cp.async (L2
// path); packs of keys at or past `below` are not copied. The caller commits and waits. Meant to
// run before the kernel's griddepcontrol.wait, for keys an earlier step wrote (paged_attention.cu
// "Staging").
QF_DEVICE void qf_stage_tile(const CT_::T* pool, const int* __restrict__ table, int g, long long t0, int live, long long below,
                             uint4* stage) {
    for (int pk = threadIdx.x; pk < QF_PACKS; pk += QF_THREADS) {
        const int j = pk * QF_EP / QF_D, d0 = pk * QF_EP % QF_D;
        if (j < live && t0 + j < below) qf_cp_async_16(qf_smem_addr(stage + pk), pool + qf_pack_at(table, g, t0 + j, d0), 16u);
    }
}
#endif

// Dequantizes the K or V elements of keys t0 .. t0 + TK − 1 into `dst` ([TK][ld] DT elements)
// (qf_pack_at: where a key's row lives). Keys at or past t0 + live are zero (never read from
// memory); packs of keys below `staged_below` come from `staged` [PACKS] (qf_stage_tile's copy,
// complete and visible: the caller waited and synchronised), the rest from the pool. Each thread
// issues up to QF_INFLIGHT independent 16-byte loads (packs pk, pk + THREADS, …) before
// converting any, so several loads per thread are in flight instead of one.
template <class DT>
QF_DEVICE void qf_load_tile(const CT_::T* pool, const int* __restrict__ table, int g, long long t0, int live,
                            typename DT::T* dst, int ld, float scale, const uint4* staged, long long staged_below) {
    for (int base = threadIdx.x; base < QF_PACKS; base += QF_THREADS * QF_INFLIGHT) {
        uint4 w[QF_INFLIGHT];
#pragma unroll
        for (int u = 0; u < QF_INFLIGHT; ++u) {
            const int pk = base + u * QF_THREADS;
            const int j = pk * QF_EP / QF_D, d0 = pk * QF_EP % QF_D;
            w[u] = make_uint4(0u, 0u, 0u, 0u);  // all-zero bits: 0 in every cache format
            if (pk < QF_PACKS && j < live) {
                const long long t = t0 + j;
                w[u] = t < staged_below ? staged[pk] : *reinterpret_cast<const uint4*>(pool + qf_pack_at(table, g, t, d0));
            }
        }
#pragma unroll
        for (int u = 0; u < QF_INFLIGHT; ++u) {
            const int pk = base + u * QF_THREADS;
            if (pk < QF_PACKS) {
                const int j = pk * QF_EP / QF_D, d0 = pk * QF_EP % QF_D;
                typename DT::T* row = dst + j * ld + d0;
#if QF_RAW_TILE
                // The tile's dtype is the cache's (a float cache of q's dtype): its bits, one
                // 16-byte store (the caller's rows are 16-byte aligned).
                static_assert(sizeof(typename DT::T) == sizeof(CT_::T), "a raw tile holds the cache's own elements");
                (void)scale;
                *reinterpret_cast<uint4*>(row) = w[u];
#else
                const CT_::T* e = reinterpret_cast<const CT_::T*>(&w[u]);
#pragma unroll
                for (int v = 0; v < QF_EP; ++v) row[v] = DT::store(qf_cache_value(e[v], scale));
#endif
            }
        }
    }
}

#if QF_NVFP4
// E2M1 codes per 16-byte pack, and packs of one K or V tile.
#define QF_NV_EP 32
#define QF_NV_PACKS (QF_TK * QF_D / QF_NV_EP)
static_assert(QF_D % QF_NV_EP == 0, "an NVFP4 row is whole 16-byte packs");

// qf_load_tile for an NVFP4 cache: codes from `pool`, the E4M3 block scales from `scales` (one
// byte per 16 codes, same page and slot), `global` the per-tensor scale.
template <class DT>
QF_DEVICE void qf_load_tile_nvfp4(const uint8_t* __restrict__ pool, const uint8_t* __restrict__ scales,
                                  const int* __restrict__ table, int g, long long t0, int live, typename DT::T* dst, int ld,
                                  float global) {
    for (int base = threadIdx.x; base < QF_NV_PACKS; base += QF_THREADS * QF_INFLIGHT) {
        uint4 w[QF_INFLIGHT];
        uint16_t sc[QF_INFLIGHT];
#pragma unroll
        for (int u = 0; u < QF_INFLIGHT; ++u) {
            const int pk = base + u * QF_THREADS;
            const int j = pk * QF_NV_EP / QF_D, d0 = pk * QF_NV_EP % QF_D;
            w[u] = make_uint4(0u, 0u, 0u, 0u);  // code 0 under scale 0: value 0
            sc[u] = 0;
            if (pk < QF_NV_PACKS && j < live) {
                const long long at = qf_pack_at(table, g, t0 + j, d0);  // element index
                w[u] = *reinterpret_cast<const uint4*>(pool + at / 2);
                sc[u] = *reinterpret_cast<const uint16_t*>(scales + at / 16);
            }
        }
#pragma unroll
        for (int u = 0; u < QF_INFLIGHT; ++u) {
            const int pk = base + u * QF_THREADS;
            if (pk < QF_NV_PACKS) {
                const int j = pk * QF_NV_EP / QF_D, d0 = pk * QF_NV_EP % QF_D;
                typename DT::T* row = dst + j * ld + d0;
                const uint32_t words[4] = {w[u].x, w[u].y, w[u].z, w[u].w};
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    float x[8];
                    qf_e2m1x8_scaled(words[q], qf_e4m3_to_f32(static_cast<uint8_t>(sc[u] >> (8 * (q / 2)))), x);
#pragma unroll
                    for (int n = 0; n < 8; ++n) row[q * 8 + n] = DT::store(QF_VIA(__fmul_rn(QF_VIA(x[n]), global)));
                }
            }
        }
    }
}
#define QF_NV_PARAMS , const uint8_t* __restrict__ ks_pool, const uint8_t* __restrict__ vs_pool
#else
#define QF_NV_PARAMS
#endif

// o's stores (QF_OUT_CODES, ops.cuh qf_out): OT_ values, or with a fused output quantize their
// E4M3 / I8 codes under the per-tensor scale `out_scale`, the kernel's last parameter.
typedef qf_out<OT_, QF_OUT_CODES> OUT_;
#if QF_OUT_CODES
#define QF_OUT_PARAMS , float out_scale
#define QF_OUT_SCALE out_scale
#else
#define QF_OUT_PARAMS
#define QF_OUT_SCALE 1.0f
#endif
