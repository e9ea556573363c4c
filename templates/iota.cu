{{prelude}}
{{ops}}
// qfuse iota (src/codegen/ops/shape.rs): out[i] = i for i < n, in the output's integer dtype.
// Grid ceil_div(n, 256), block 256.

typedef {{out_t}} D;

extern "C" __global__ void __launch_bounds__(256) {{kernel_name}}(D::T* __restrict__ out, long long n) {
    qf_pdl_enter();
    const long long i = static_cast<long long>(blockIdx.x) * 256 + threadIdx.x;
    if (i < n) out[i] = {{value}};
}
