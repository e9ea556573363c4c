{{prelude}}
// qfuse last_token (src/codegen/ops/shape.rs): out[b, 0, :] = x[b, S − 1, :] for x [B, S, H], rows
// of R packs (P: the widest unsigned type dividing the row's bytes, up to 16). One thread per pack:
// grid ceil_div(B·R, 256), block 256.

typedef {{pack_t}} P;

extern "C" __global__ void __launch_bounds__(256) {{kernel_name}}(const P* __restrict__ x, P* __restrict__ out, long long B,
                                                                  long long S, long long R) {
    qf_pdl_enter();
    const long long i = static_cast<long long>(blockIdx.x) * 256 + threadIdx.x;
    if (i >= B * R) return;
    const long long b = i / R, c = i % R;
    out[i] = x[(b * S + S - 1) * R + c];
}
