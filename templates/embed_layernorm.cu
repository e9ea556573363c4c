{{prelude}}
{{ops}}
// qfuse embedding sum + layernorm (+ quantize): x = round(round(word[ids] + pos[s]) + type[type_ids])
// with s = row % seq, then the layernorm / layernorm_quantize of the row engine. Out-of-range ids
// give NaN rows. Parameters: ids, type_ids, word, pos, type, gamma, beta[, scale_in][, q][, scales]
// [, y], rows, seq[, scale][, zero] (src/codegen/ops/embed.rs).
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
