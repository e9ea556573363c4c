{{prelude}}
{{ops}}
// qfuse dynamic per-token quantize: one scale per row (the last axis), amax / qmax (1 for an
// all-zero row), written to scales; q = cast(x / scale). Parameters: x, q, scales, rows[, n]
// (src/codegen/ops/quantize.rs). Also the dynamic block quantize (scales per GROUP elements) and
// quant_round_trip (ROUND_TRIP: x·pre quantized, the codes' values times their scale times post
// stored as y; parameters x, y, rows, pre, post; codes and scales stay in registers).
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
