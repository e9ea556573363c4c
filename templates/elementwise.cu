{{prelude}}
{{ops}}
// qfuse element-wise kernel (src/codegen/ops/elementwise.rs): y[i] = f(x0[off0(i)], x1[off1(i)], ...)
// over the n elements of a dense row-major output. Operands are read through per-axis strides
// (numpy broadcasting, per-channel / per-token scales, transposes); the index arithmetic, the
// math and the dtype conversions are generated. Each thread handles 4 elements 256 apart
// (coalesced); grid = ceil_div(n, 1024) blocks of 256 threads.
// {{doc}}

typedef {{idx_t}} idx_t;

extern "C" __global__ void __launch_bounds__(256) {{kernel_name}}({{params}}) {
    qf_pdl_enter();
{{prologue}}#pragma unroll
    for (int u = 0; u < 4; ++u) {
        const idx_t i = static_cast<idx_t>(blockIdx.x) * 1024u + threadIdx.x + u * 256u;
        if (i >= static_cast<idx_t>(n)) return;
{{body}}    }
}
