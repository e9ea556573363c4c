//! `fuse-attention-output`: the static output quantize that reads a decoder attention's context
//! (the FP8/INT8 recipes' activation quantize before `o_proj`) becomes the attention's own
//! `out=…, out_scale=…`: the attention kernels store the codes, and the quantize has no launch of
//! its own — one launch and one round trip of the context fewer per layer and step.
//!
//! ```text
//! before:
//!   %12 = causal_attention %0, %4, %5, %2, %3, %1 {heads=9, kv_heads=3, scale=0.125} : f16[B,S,576] loc("L.self_attn")
//!   %13 = quantize %12 {f8e4m3, per_tensor, scale=0.0072762626} : f8e4m3[B,S,576] loc("L.o_proj:a.q")
//!   %15 = qmatmul %13, %14 {transpose_b, alpha=5.2e-5, acc=f32, epilogue=[cast(f16)]} : f16[B,S,576] loc("L.o_proj")
//! after:
//!   %12 = causal_attention %0, %4, %5, %2, %3, %1 {heads=9, kv_heads=3, scale=0.125, out=f8e4m3, out_scale=0.0072762626} : f8e4m3[B,S,576] loc("L.self_attn")
//!   %15 = qmatmul %12, %14 {transpose_b, alpha=5.2e-5, acc=f32, epilogue=[cast(f16)]} : f16[B,S,576] loc("L.o_proj")
//! ```
//!
//! Rule `attention-output`: a live `quantize` with a literal per-tensor scale and no zero point
//! to `f8e4m3` or `i8` whose operand is the context (first result) of a `causal_attention`
//! without an output quantize, when that context has no other reader and is not a graph output.
//! The quantize's readers then read the attention's result, retyped to the codes. A quantize of
//! another kind (per-token, dynamic, block, other codes) or a context with other readers is
//! declined in the fusion report with the reason.
//!
//! Exact: `causal_attention … out=…` is defined as the context rounded to q's dtype (the unfused
//! result) and then quantized exactly as the `quantize` it absorbs (`cast(o / scale)`).
//! Idempotent: an attention with an output quantize is left as it is.
//!
//! Interactions: the recipe's Q→DQ pair before `o_proj` has already become the `qmatmul`'s
//! quantized operand (`fuse-dq-matmul`), so the quantize reads the attention directly; runs after
//! `fuse-kv-cache` and `fuse-rope`, which rewrite the same node's operands and flags.

use super::dce::{live_users, output_uses};
use super::{loc, Pass, PassCx, PassError};
use crate::ir::{Builder, CausalAttention, DType, Graph, NodeId, Op, OutputQuant};

/// `fuse-attention-output`.
pub struct FuseAttentionOutput;

impl Pass for FuseAttentionOutput {
    fn name(&self) -> &'static str {
        "fuse-attention-output"
    }

    fn run(&self, g: &mut Graph, cx: &mut PassCx) -> Result<bool, PassError> {
        let live = g.live_nodes();
        let users = live_users(g);
        let mut changed = false;
        for id in g.nodes.ids().collect::<Vec<_>>() {
            if !live[id.index()] {
                continue;
            }
            let Op::Quantize(spec) = &g.nodes[id].op else { continue };
            let context = g.nodes[id].inputs[0];
            let attention = g.values[context].producer;
            let Op::CausalAttention(a) = g.nodes[attention].op else { continue };
            if a.output.is_some() || g.values[context].slot != 0 {
                continue;
            }
            let only_reader = users[context].as_slice() == [id] && output_uses(g, context) == 0;
            let matched = match OutputQuant::of_spec(spec) {
                _ if !only_reader => Err("the attention's context has another reader or is a graph output".to_string()),
                Some(out) if matches!(out.storage, DType::F8E4M3 | DType::I8) => Ok(out),
                Some(out) => Err(format!("{} codes: the attention stores f8e4m3 or i8", out.storage)),
                None => Err("not a per-tensor quantize with a literal scale and no zero point".to_string()),
            };
            match matched {
                Err(reason) => {
                    tracing::debug!(rule = "attention-output", node = %loc(g, id), "declined: {reason}");
                    cx.report.declined(&loc(g, id), reason);
                }
                Ok(out) => {
                    tracing::debug!(rule = "attention-output", node = %id, attention = %attention);
                    cx.report.fused(&loc(g, id), "causal_attention", &loc(g, attention));
                    absorb(g, id, attention, a, out)?;
                    changed = true;
                }
            }
        }
        Ok(changed)
    }
}

/// A new `causal_attention` with `attention`'s operands and the output quantize `out` of node
/// `quantize`: its context replaces the quantize's codes, its rotated keys (with `rope(keys)`)
/// the old ones; the old attention and the quantize are left dead for `dce`.
fn absorb(g: &mut Graph, quantize: NodeId, attention: NodeId, a: CausalAttention, out: OutputQuant) -> Result<(), PassError> {
    let (ins, old_outs) = (g.nodes[attention].inputs.clone(), g.nodes[attention].outputs.clone());
    let codes = g.nodes[quantize].outputs[0];
    let mut b = Builder::new(g);
    b.scope = b.graph.nodes[attention].name.clone();
    let new_outs = b
        .add(Op::CausalAttention(CausalAttention { output: Some(out), ..a }), &ins, None)
        .map_err(|message| PassError::Failed { pass: "fuse-attention-output", message: format!("{attention}: {message}") })?;
    g.replace_all_uses(codes, new_outs[0]);
    for (&old, &new) in old_outs.iter().zip(&new_outs).skip(1) {
        g.replace_all_uses(old, new);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(case: &str) -> Vec<String> {
        crate::passes::report_of_case(&FuseAttentionOutput, "fuse-attention-output", case, ".q")
    }

    #[test]
    fn the_report_says_where_the_quantize_went_or_why_not() {
        assert_eq!(report("fp8_context"), ["L.o_proj:a.q: fused into causal_attention L.self_attn"]);
        let declined = |case: &str, why: &str| {
            let lines = report(case);
            assert!(lines.len() == 1 && lines[0].contains(why), "{case}: {lines:?}");
        };
        declined("context_two_readers", "another reader");
        declined("context_graph_output", "another reader");
        declined("e5m2_codes", "f8e5m2 codes");
        declined("dynamic_quantize", "literal scale");
    }
}
