{{prelude}}
{{ops}}
// qfuse softmax over the last axis: exp(x - max) (f64 exp rounded to f32) / sum in f64.
// Parameters: x, y, rows[, n] (src/codegen/ops/reduce.rs).
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
