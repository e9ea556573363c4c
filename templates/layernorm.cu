{{prelude}}
{{ops}}
// qfuse layernorm / rmsnorm over the last axis, optionally fused with the quantize of its result
// (layernorm_quantize / rmsnorm_quantize: static literal or per-tensor scale, or dynamic
// per-token scales), optionally also storing the rounded norm (keep_normed). Statistics in f64.
// Parameters: x, gamma[, beta][, scale_in][, q][, scales][, y], rows[, n][, scale][, zero] (src/codegen/ops/norm.rs).
// The row engine (qf_row_main in ops.cuh) does the work; Cfg (generated) specialises it. Launch:
// grid ceil_div(rows, RPB), block 32 * WPR * RPB threads.

namespace {
struct Cfg {
{{config}}};
}  // namespace

extern "C" __global__ void __launch_bounds__({{threads}}) {{kernel_name}}({{params}}) {
    qf_pdl_enter();
    qf_row_args<Cfg> a = {};
{{bind}}    qf_row_main<Cfg>(a);
}
