//! `propagate-qdq`: moves `quantize` backward and `dequantize` forward through `reshape` and
//! `transpose` (TensorRT's propagation, quant-formats.md §6.2), so Q/DQ meet the ops they fuse with.
//!
//! ```text
//! before:  %4 = add %2, %3 : f16[B,S,384] loc("L.query")
//!          %5 = reshape %4 : f16[B,S,12,32]
//!          %6 = quantize %5 {f8e4m3, per_tensor, scale=0.02} : f8e4m3[B,S,12,32] loc("attn:a.q")
//! after:   %4 = add %2, %3 : f16[B,S,384] loc("L.query")
//!          %5 = quantize %4 {f8e4m3, per_tensor, scale=0.02} : f8e4m3[B,S,384] loc("attn:a.q")
//!          %6 = reshape %5 : f8e4m3[B,S,12,32]
//! ```
//!
//! Rules (L is `reshape` or `transpose`, with its attributes and its result's shape kept):
//! - `quantize_up`: `quantize(L(x), s)` → `L(quantize(x, s))`, when L's result has no other use.
//! - `dequantize_down`: `L(dequantize(q, s))` → `dequantize(L(q), s)`, when the dequantize's result
//!   has no other use.
//!
//! Both are exact for a per-tensor spec (a literal scale, a scalar scale input, or a dynamic
//! per-tensor scale, whose amax does not depend on element order): every element is scaled and
//! rounded on its own, and L only moves elements. The moved Q/DQ keeps its loc and its scale /
//! zero-point inputs. Declined, with the reason in the fusion report under the Q/DQ's loc:
//! per-channel, per-token and block specs (the scale's axis would move), and a layout result (Q)
//! or dequantize result (DQ) with other uses, where moving would leave both copies running.
//!
//! Fixpoint: each round matches every live node, then applies the non-overlapping matches; a chain
//! of k layout ops needs k rounds. It terminates: a rewrite shortens by one the run of layout ops
//! above its quantize (or below its dequantize) and lengthens no other (the layout op it creates
//! sits on storage-typed data, which no quantize reads and no dequantize produces). More than
//! [`MAX_ROUNDS`] rounds is an error, not a loop.
//!
//! Idempotent once at the fixpoint. A changed graph is compacted after each round (README.md §4).
//! Interactions: after `cse` (one quantize per value), before `fold-scales` (a DQ moved forward and
//! a Q moved backward meet as DQ→Q) and the fusions (FP8 attention's Q/K/V quantizes reach the
//! bias add that ends each projection, so the projection GEMM can emit FP8).

use super::dce::{live_users, output_uses, Users};
use super::{loc, Pass, PassCx, PassError};
use crate::ir::{order, Builder, Granularity, Graph, NodeId, Op, QuantSpec, ValueId};
use std::collections::HashSet;

/// Rounds after which the pass gives up with an error.
pub const MAX_ROUNDS: usize = 64;

/// `propagate-qdq`.
pub struct PropagateQdq;

impl Pass for PropagateQdq {
    fn name(&self) -> &'static str {
        "propagate-qdq"
    }

    fn run(&self, g: &mut Graph, cx: &mut PassCx) -> Result<bool, PassError> {
        for round in 0..MAX_ROUNDS {
            if !run_round(g, cx)? {
                return Ok(round > 0);
            }
            *g = order::compact(g);
        }
        Err(fail(format!("no fixpoint after {MAX_ROUNDS} rounds")))
    }
}

/// One application of a rule: the Q/DQ node and the layout node it crosses.
#[derive(Clone, Copy)]
enum Rewrite {
    QuantizeUp { quantize: NodeId, layout: NodeId },
    DequantizeDown { dequantize: NodeId, layout: NodeId },
}

/// What a match found.
enum Match {
    Apply(Rewrite),
    Decline { qdq: NodeId, reason: String },
}

fn fail(message: String) -> PassError {
    PassError::Failed { pass: "propagate-qdq", message }
}

/// Matches every live node, then applies the matches that touch no node an earlier one touched.
fn run_round(g: &mut Graph, cx: &mut PassCx) -> Result<bool, PassError> {
    let order = order::canonical_order(g).ok_or_else(|| fail("the graph has a cycle".into()))?;
    let (live, users) = (g.live_nodes(), live_users(g));
    let mut rewrites = vec![];
    let mut claimed = HashSet::new();
    for id in order.into_iter().filter(|id| live[id.index()]) {
        match match_quantize_up(g, &users, id).or_else(|| match_dequantize_down(g, &users, id)) {
            Some(Match::Apply(rw)) => {
                let (a, b) = rw.nodes();
                if !claimed.contains(&a) && !claimed.contains(&b) {
                    claimed.extend([a, b]);
                    rewrites.push(rw);
                }
            }
            Some(Match::Decline { qdq, reason }) => cx.report.declined(&loc(g, qdq), reason),
            None => {}
        }
    }
    for &rw in &rewrites {
        apply(g, rw).map_err(|e| fail(format!("{e} (at {})", loc(g, rw.nodes().0))))?;
    }
    Ok(!rewrites.is_empty())
}

impl Rewrite {
    /// The Q/DQ node and the layout node.
    fn nodes(self) -> (NodeId, NodeId) {
        match self {
            Rewrite::QuantizeUp { quantize, layout } => (quantize, layout),
            Rewrite::DequantizeDown { dequantize, layout } => (dequantize, layout),
        }
    }
}

fn is_layout(op: &Op) -> bool {
    matches!(op, Op::Reshape | Op::Transpose { .. })
}

/// Why `spec` cannot cross `layout`, if it cannot.
fn spec_blocks(spec: &QuantSpec, layout: &Op) -> Option<String> {
    let what = match spec.granularity {
        Granularity::PerTensor => return None,
        Granularity::PerChannel { .. } => "per-channel",
        Granularity::PerToken => "per-token",
        Granularity::Block { .. } => "block",
    };
    Some(format!("{what} scales cannot cross a {}: the scale's axis would move", layout.mnemonic()))
}

/// `quantize(L(x), s) => L(quantize(x, s))`: per-tensor Q commutes with moving elements.
fn match_quantize_up(g: &Graph, users: &Users, id: NodeId) -> Option<Match> {
    let Op::Quantize(spec) = &g.nodes[id].op else { return None };
    let x = g.nodes[id].inputs[0];
    let layout = g.values[x].producer;
    let op = &g.nodes[layout].op;
    if !is_layout(op) {
        return None;
    }
    if let Some(reason) = spec_blocks(spec, op) {
        return Some(Match::Decline { qdq: id, reason });
    }
    let uses = users[x].len() + output_uses(g, x);
    if uses != 1 {
        let reason = format!("the {} it reads has {uses} uses; quantizing above it would keep both copies", op.mnemonic());
        return Some(Match::Decline { qdq: id, reason });
    }
    Some(Match::Apply(Rewrite::QuantizeUp { quantize: id, layout }))
}

/// `L(dequantize(q, s)) => dequantize(L(q), s)`: per-tensor DQ commutes with moving elements.
fn match_dequantize_down(g: &Graph, users: &Users, id: NodeId) -> Option<Match> {
    let op = &g.nodes[id].op;
    if !is_layout(op) {
        return None;
    }
    let d = g.nodes[id].inputs[0];
    let dequantize = g.values[d].producer;
    let Op::Dequantize(spec) = &g.nodes[dequantize].op else { return None };
    if let Some(reason) = spec_blocks(spec, op) {
        return Some(Match::Decline { qdq: dequantize, reason });
    }
    let uses = users[d].len() + output_uses(g, d);
    if uses != 1 {
        let reason = format!("its result has {uses} uses; dequantizing below the {} would keep both copies", op.mnemonic());
        return Some(Match::Decline { qdq: dequantize, reason });
    }
    Some(Match::Apply(Rewrite::DequantizeDown { dequantize, layout: id }))
}

fn apply(g: &mut Graph, rw: Rewrite) -> Result<(), String> {
    match rw {
        Rewrite::QuantizeUp { quantize, layout } => apply_quantize_up(g, quantize, layout),
        Rewrite::DequantizeDown { dequantize, layout } => apply_dequantize_down(g, dequantize, layout),
    }
}

fn apply_quantize_up(g: &mut Graph, quantize: NodeId, layout: NodeId) -> Result<(), String> {
    let (q, l) = (g.nodes[quantize].clone(), g.nodes[layout].clone());
    let inputs: Vec<ValueId> = std::iter::once(l.inputs[0]).chain(q.inputs[1..].iter().copied()).collect();
    let l_ty = g.ty(l.outputs[0]).with_dtype(g.ty(q.outputs[0]).dtype);
    let mut b = Builder::new(g);
    b.scope = q.name.clone();
    let moved = b.add(q.op.clone(), &inputs, None)?;
    b.scope = l.name.clone();
    let relaid = b.add1(l.op.clone(), &moved[..1], Some(l_ty))?;
    g.replace_all_uses(q.outputs[0], relaid);
    for (&old, &new) in q.outputs.iter().zip(&moved).skip(1) {
        g.replace_all_uses(old, new);
    }
    tracing::debug!(rule = "quantize_up", node = %quantize);
    Ok(())
}

fn apply_dequantize_down(g: &mut Graph, dequantize: NodeId, layout: NodeId) -> Result<(), String> {
    let (d, l) = (g.nodes[dequantize].clone(), g.nodes[layout].clone());
    let out_ty = g.ty(l.outputs[0]).clone();
    let l_ty = out_ty.with_dtype(g.ty(d.inputs[0]).dtype);
    let mut b = Builder::new(g);
    b.scope = l.name.clone();
    let relaid = b.add1(l.op.clone(), &d.inputs[..1], Some(l_ty))?;
    let inputs: Vec<ValueId> = std::iter::once(relaid).chain(d.inputs[1..].iter().copied()).collect();
    b.scope = d.name.clone();
    let moved = b.add1(d.op.clone(), &inputs, Some(out_ty))?;
    g.replace_all_uses(l.outputs[0], moved);
    tracing::debug!(rule = "dequantize_down", node = %dequantize);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::report::Outcome;
    use crate::passes::MemoryWeights;

    fn run(text: &str) -> (Result<bool, PassError>, Graph, Vec<(String, Outcome)>) {
        let mut g = crate::ir::parse(text).unwrap();
        let w = MemoryWeights::default();
        let mut cx = PassCx::new(&w);
        let r = PropagateQdq.run(&mut g, &mut cx);
        let report = cx.report.finish(&g).into_iter().map(|e| (e.qdq, e.outcome)).collect();
        (r, g, report)
    }

    /// A chain longer than the round cap is an error naming the pass, not an endless loop.
    #[test]
    fn round_cap_is_an_error() {
        let mut text = String::from("graph \"t\" {\n  %0 = input \"x\" : f32[4,4]\n");
        for i in 1..=MAX_ROUNDS + 2 {
            let shape = if i % 2 == 1 { "[16]" } else { "[4,4]" };
            text += &format!("  %{i} = reshape %{} : f32{shape}\n", i - 1);
        }
        let last = MAX_ROUNDS + 2;
        text += &format!("  %99 = quantize %{last} {{i8, per_tensor, scale=0.1}} : i8[4,4]\n  return \"q\" = %99\n}}");
        let (r, _, _) = run(&text);
        let err = r.expect_err("a 66-long chain needs 66 rounds").to_string();
        assert!(err.contains("propagate-qdq") && err.contains("no fixpoint after 64 rounds"), "{err}");
    }

    #[test]
    fn declines_are_reported_with_their_reason() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ir/propagate-qdq/per_channel_across_transpose.ir"))
            .unwrap();
        let (r, _, report) = run(&text);
        assert!(!r.unwrap());
        let reason = |name: &str| match report.iter().find(|(n, _)| n == name) {
            Some((_, Outcome::Standalone { reason })) => reason.clone(),
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(reason("L:b.dq"), "per-channel scales cannot cross a transpose: the scale's axis would move");
        assert_eq!(reason("M:a.q"), "per-token scales cannot cross a reshape: the scale's axis would move");
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ir/propagate-qdq/layout_result_shared.ir")).unwrap();
        let (_, _, report) = run(&text);
        let reasons: Vec<String> = report.into_iter().filter(|(n, _)| n.ends_with(".q")).map(|(n, o)| format!("{n}: {o:?}")).collect();
        assert_eq!(
            reasons,
            [
                r#"m:a.q: Standalone { reason: "the reshape it reads has 3 uses; quantizing above it would keep both copies" }"#,
                r#"n:a.q: Standalone { reason: "the transpose it reads has 2 uses; quantizing above it would keep both copies" }"#,
            ]
        );
    }
}
