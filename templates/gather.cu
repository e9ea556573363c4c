{{prelude}}
// qfuse gather (src/codegen/ops/shape.rs): out[p, :] = table[idx[p], :] for the n indices p, rows
// of R packs (P: the widest unsigned type dividing the row's bytes, up to 16). One warp per index,
// 4 per 128-thread block; grid ceil_div(n, 4). An index outside [0, V) reads nothing and writes
// a poison row ({{poison_doc}}); the interpreter rejects such inputs.

typedef {{pack_t}} P;
typedef {{index_t}} I;

extern "C" __global__ void __launch_bounds__(128) {{kernel_name}}(const P* __restrict__ table, const I* __restrict__ idx,
                                                                  P* __restrict__ out, long long n, long long V, long long R) {
    qf_pdl_enter();
    const long long p = static_cast<long long>(blockIdx.x) * 4 + (threadIdx.x >> 5);
    if (p >= n) return;
    const long long id = static_cast<long long>(idx[p]);
    P* dst = out + p * R;
    if (id >= 0 && id < V) {
        const P* src = table + id * R;
        for (long long c = threadIdx.x & 31; c < R; c += 32) dst[c] = src[c];
    } else {
        const P poison = {{poison}};
        for (long long c = threadIdx.x & 31; c < R; c += 32) dst[c] = poison;
    }
}
