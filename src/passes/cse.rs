//! `cse`: merges nodes that compute the same thing.
//!
//! ```text
//! before:  %5 = quantize %4 {f8e4m3, per_tensor, scale=0.02} : f8e4m3[B,S,384] loc("L.query:a.q")
//!          %6 = dequantize %5 {f8e4m3, per_tensor, scale=0.02} : f32[B,S,384] loc("L.query:a.dq")
//!          %9 = quantize %4 {f8e4m3, per_tensor, scale=0.02} : f8e4m3[B,S,384] loc("L.key:a.q")
//!          %10 = dequantize %9 {f8e4m3, per_tensor, scale=0.02} : f32[B,S,384] loc("L.key:a.dq")
//! after:   %5 = quantize %4 {f8e4m3, per_tensor, scale=0.02} : f8e4m3[B,S,384] loc("L.query:a.q")
//!          %6 = dequantize %5 {f8e4m3, per_tensor, scale=0.02} : f32[B,S,384] loc("L.query:a.dq")
//! ```
//!
//! Rule `merge_identical`: `op(xs) : ts` and a later `op(xs) : ts` ⇒ the later one's results are
//! the earlier one's. Two nodes are identical when their ops are equal (`PartialEq`, and equal
//! `Debug` text too, so `scale=0.0` and `scale=-0.0` stay apart; a NaN attribute never equals),
//! their operands are the same values and their result types are equal. This covers `weight`
//! nodes naming one tensor and `scalar`s of one value and type. `input` nodes are never merged:
//! each is a binding of the signature. Every op is a pure function of its operands, so merging is
//! exact.
//!
//! Nodes are visited in canonical (topological) order and operands are read through the merges
//! made so far, so a chain of duplicates (the three Q→DQ pairs that the Q, K and V projections
//! place on one LayerNorm output) collapses in one run. The first node keeps its loc; merged Q/DQ
//! nodes with another loc are reported folded, "identical quantize merged (CSE)" (or
//! `dequantize`/`requantize`). Dead nodes are neither merged nor kept.
//!
//! Idempotent: a second run finds no two identical nodes. A changed graph is compacted.
//! Interactions: runs after `fold-constants` (whose folded weights are then shared) and again after
//! the fusions (fused ops reading one quantized value).

use super::{Pass, PassCx, PassError};
use crate::ir::{order, Graph, NodeId, Op, TensorType, ValueId};
use std::collections::HashMap;

/// `cse`.
pub struct Cse;

impl Pass for Cse {
    fn name(&self) -> &'static str {
        "cse"
    }

    fn run(&self, g: &mut Graph, cx: &mut PassCx) -> Result<bool, PassError> {
        let order = order::canonical_order(g).ok_or_else(|| PassError::Failed { pass: "cse", message: "the graph has a cycle".into() })?;
        let live = g.live_nodes();
        let mut seen: HashMap<Key, Vec<NodeId>> = HashMap::new();
        let mut subst: Vec<Option<ValueId>> = vec![None; g.values.len()];
        let mut merged = false;
        for id in order.into_iter().filter(|id| live[id.index()] && !matches!(g.nodes[*id].op, Op::Input { .. })) {
            let key = key(g, id, &subst);
            let bucket = seen.entry(key).or_default();
            match bucket.iter().copied().find(|&first| same_op(&g.nodes[first].op, &g.nodes[id].op)) {
                Some(first) => {
                    merge(g, cx, first, id, &mut subst);
                    merged = true;
                }
                None => bucket.push(id),
            }
        }
        if merged {
            substitute(g, &subst);
            *g = order::compact(g);
        }
        Ok(merged)
    }
}

/// What two identical nodes share besides their op: mnemonic, operands (after merges), result types.
#[derive(PartialEq, Eq, Hash)]
struct Key {
    mnemonic: &'static str,
    inputs: Vec<ValueId>,
    types: Vec<TensorType>,
}

fn key(g: &Graph, id: NodeId, subst: &[Option<ValueId>]) -> Key {
    let node = &g.nodes[id];
    Key {
        mnemonic: node.op.mnemonic(),
        inputs: node.inputs.iter().map(|&v| subst[v.index()].unwrap_or(v)).collect(),
        types: node.outputs.iter().map(|&v| g.ty(v).clone()).collect(),
    }
}

/// `PartialEq` plus equal `Debug` text: `PartialEq` calls `0.0` and `-0.0` equal.
fn same_op(a: &Op, b: &Op) -> bool {
    a == b && format!("{a:?}") == format!("{b:?}")
}

/// `dup(xs) ≡ first(xs)` ⇒ every use of `dup`'s results reads `first`'s.
fn merge(g: &Graph, cx: &mut PassCx, first: NodeId, dup: NodeId, subst: &mut [Option<ValueId>]) {
    for (&old, &new) in g.nodes[dup].outputs.iter().zip(&g.nodes[first].outputs) {
        subst[old.index()] = Some(new);
    }
    tracing::debug!(rule = "merge_identical", node = %dup);
    let (kept, gone) = (&g.nodes[first].name, &g.nodes[dup].name);
    if let (Op::Quantize(_) | Op::Dequantize(_) | Op::Requantize { .. }, Some(gone)) = (&g.nodes[dup].op, gone) {
        if kept.as_ref() != Some(gone) {
            cx.report.folded(gone, &format!("identical {} merged (CSE)", g.nodes[dup].op.mnemonic()));
        }
    }
}

/// Rewrites every operand and graph output through `subst` (which maps to representatives only).
fn substitute(g: &mut Graph, subst: &[Option<ValueId>]) {
    let through = |v: &mut ValueId| *v = subst[v.index()].unwrap_or(*v);
    for id in g.nodes.ids().collect::<Vec<_>>() {
        g.nodes[id].inputs.iter_mut().for_each(through);
    }
    g.outputs.iter_mut().for_each(|(_, v)| through(v));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::report::Outcome;

    /// The Q/K/V case: the kept pair stays under the query's names, the others are reported folded.
    #[test]
    fn merged_qdq_are_reported_folded() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ir/cse/minilm_qkv_quantizes.ir")).unwrap();
        let mut g = crate::ir::parse(&text).unwrap();
        let w = crate::passes::MemoryWeights::default();
        let mut cx = PassCx::new(&w);
        assert!(Cse.run(&mut g, &mut cx).unwrap());
        let folded: Vec<String> = cx
            .report
            .finish(&g)
            .into_iter()
            .filter_map(|e| match e.outcome {
                Outcome::Folded { how } => Some(format!("{}: {how}", e.qdq)),
                _ => None,
            })
            .collect();
        assert_eq!(
            folded,
            [
                "k:a.dq: identical dequantize merged (CSE)",
                "k:a.q: identical quantize merged (CSE)",
                "v:a.dq: identical dequantize merged (CSE)",
                "v:a.q: identical quantize merged (CSE)",
            ]
        );
        assert!(!Cse.run(&mut g, &mut cx).unwrap(), "a second run finds nothing");
    }
}
