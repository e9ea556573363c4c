//! `fold-constants`: quantizes and casts of weights are computed once, at compile time.
//!
//! ```text
//! before:  %1 = weight @L.weight : f32[384,384] loc("L")
//!          %2 = cast %1 : f16[384,384] loc("L")
//!          %3 = quantize %2 {f8e4m3, per_tensor, scale=0.002} : f8e4m3[384,384] loc("L:b.q")
//!          %4 = dequantize %3 {f8e4m3, per_tensor, scale=0.002} : f32[384,384] loc("L:b.dq")
//! after:   %1 = weight @L.weight.f8e4m3 : f8e4m3[384,384] loc("L:b.q")
//!          %2 = dequantize %1 {f8e4m3, per_tensor, scale=0.002} : f32[384,384] loc("L:b.dq")
//! ```
//!
//! Rule `fold_weight`: a `quantize` or `cast` whose data input is a constant chain (a `weight`
//! seen through any number of `cast`s) and whose scale / zero-point inputs, if any, are `weight`
//! or `scalar` nodes is evaluated with the reference interpreter on a graph holding only that
//! cone. The result goes into the weight store as `<root weight>.<dtype>` (the storage dtype of a
//! quantize, the target of a cast; a dynamic quantize's scales as `<root>.<storage>.scale`), and
//! a `weight` node with the folded node's loc replaces it. Quantizes fold before casts, and a cast
//! whose live readers all fold through it is not folded on its own, so the recipe's
//! `quantize(cast(w))` stores one tensor, `w.f8e4m3`, and no `w.f16`. If the store holds the name
//! with other contents (one weight quantized with two scales), `.1`, `.2`, … is appended; equal
//! contents are shared. A folded quantize is reported folded, "weights quantized offline"; a
//! quantize of a weight that cannot fold (symbolic shape, a scale computed at run time) declined.
//!
//! Preconditions: the weights the graph names are in `cx.weights`. Postcondition: every live
//! `quantize` or `cast` of a constant chain is folded, except declined quantizes. `dequantize` is
//! never folded (that would undo the quantization `fuse-dq-matmul` builds on).
//!
//! Bit-exact: the folded tensor is what the interpreter computes for the node. Idempotent: the new
//! `weight` nodes match nothing. A changed graph is compacted (README.md §4).
//!
//! Interactions: runs first, so `cse` sees one `weight` per folded tensor and `fuse-dq-matmul`
//! finds `dequantize(weight)`.

use super::{loc, Pass, PassCx, PassError, Weights};
use crate::interp::{self, Tensor, WeightSource};
use crate::ir::{order, Graph, NodeId, Op, TensorType, ValueId};
use std::collections::HashMap;
use std::sync::Arc;

/// `fold-constants`.
pub struct FoldConstants;

impl Pass for FoldConstants {
    fn name(&self) -> &'static str {
        "fold-constants"
    }

    fn run(&self, g: &mut Graph, cx: &mut PassCx) -> Result<bool, PassError> {
        // Quantizes first, so a cast they fold through is dead before casts are considered.
        let quantized = fold_all(g, cx, |op| matches!(op, Op::Quantize(_)))?;
        let cast = fold_all(g, cx, |op| matches!(op, Op::Cast))?;
        if quantized || cast {
            *g = order::compact(g);
        }
        Ok(quantized || cast)
    }
}

/// Applies `fold_weight` to every live node whose op `pick` selects, in canonical order.
fn fold_all(g: &mut Graph, cx: &mut PassCx, pick: fn(&Op) -> bool) -> Result<bool, PassError> {
    let order = order::canonical_order(g).ok_or_else(|| fail("the graph has a cycle".into()))?;
    let live = g.live_nodes();
    let mut changed = false;
    let picked: Vec<NodeId> = order.into_iter().filter(|id| live[id.index()] && pick(&g.nodes[*id].op)).collect();
    for id in picked {
        match match_fold_weight(g, id) {
            Some(Match::Fold(f)) => {
                apply_fold(g, cx, f)?;
                changed = true;
            }
            Some(Match::Decline { loc, reason }) => cx.report.declined(&loc, reason),
            None => {}
        }
    }
    Ok(changed)
}

/// What a match found.
enum Match {
    Fold(Fold),
    Decline { loc: String, reason: String },
}

/// A node to evaluate and replace by weights.
struct Fold {
    node: NodeId,
    /// `<root weight>.<dtype>`.
    base: String,
    /// The checkpoint tensor at the root of the folded chain.
    root: String,
}

fn fail(message: String) -> PassError {
    PassError::Failed { pass: "fold-constants", message }
}

/// The checkpoint name at the root of `v` when `v` is a `weight` seen through `cast`s.
pub(super) fn constant_root(g: &Graph, v: ValueId) -> Option<&str> {
    let node = g.producer(v);
    match &node.op {
        Op::Weight { name } => Some(name),
        Op::Cast => constant_root(g, node.inputs[0]),
        _ => None,
    }
}

/// `quantize(w)` / `cast(w)` of a constant chain `w` → `weight @<root>.<dtype>`.
fn match_fold_weight(g: &Graph, id: NodeId) -> Option<Match> {
    let node = &g.nodes[id];
    let dtype = match &node.op {
        Op::Quantize(spec) => spec.storage,
        Op::Cast => g.ty(node.outputs[0]).dtype,
        _ => return None,
    };
    let root = constant_root(g, node.inputs[0])?;
    let decline = |reason: &str| matches!(node.op, Op::Quantize(_)).then(|| Match::Decline { loc: loc(g, id), reason: reason.into() });
    let constant = |v: &ValueId| matches!(g.producer(*v).op, Op::Weight { .. } | Op::Scalar { .. });
    if !node.inputs[1..].iter().all(constant) {
        return decline("the weight's scale or zero point is not a constant");
    }
    if !node.outputs.iter().all(|&v| g.ty(v).fixed_numel().is_some()) {
        return decline("the weight has a symbolic shape");
    }
    if matches!(node.op, Op::Cast) && is_interior(g, id) {
        return None;
    }
    Some(Match::Fold(Fold { node: id, base: format!("{root}.{dtype}"), root: root.to_string() }))
}

/// True when every live reader of the cast `id` folds through it and it is no graph output.
fn is_interior(g: &Graph, id: NodeId) -> bool {
    let v = g.nodes[id].outputs[0];
    let users = super::dce::live_users(g);
    let through = |&u: &NodeId| {
        let n = &g.nodes[u];
        let reads_data_only = n.inputs[0] == v && !n.inputs[1..].contains(&v);
        reads_data_only && matches!(match_fold_weight(g, u), Some(Match::Fold(_)))
    };
    super::dce::output_uses(g, v) == 0 && !users[v].is_empty() && users[v].iter().all(through)
}

fn apply_fold(g: &mut Graph, cx: &mut PassCx, f: Fold) -> Result<(), PassError> {
    let node = g.nodes[f.node].clone();
    let tensors = evaluate(g, f.node, cx.weights).map_err(|e| fail(format!("evaluating {} ({}): {e}", f.node, loc(g, f.node))))?;
    for (slot, (&old, t)) in node.outputs.iter().zip(tensors).enumerate() {
        let base = if slot == 0 { f.base.clone() } else { format!("{}.scale", f.base) };
        let name = store(cx.weights, base, t);
        let ty: TensorType = g.ty(old).clone();
        let new = g.add_node(Op::Weight { name }, &[], vec![ty], node.name.clone());
        let new_value = g.nodes[new].outputs[0];
        g.replace_all_uses(old, new_value);
    }
    tracing::debug!(rule = "fold_weight", node = %f.node);
    if !reads_weight(g, &f.root) {
        cx.weights.release(&f.root);
    }
    if matches!(node.op, Op::Quantize(_)) {
        cx.report.folded(&loc(g, f.node), "weights quantized offline");
    }
    Ok(())
}

/// True when a live `weight` node (one whose value reaches a graph output) reads the checkpoint
/// tensor `name`.
fn reads_weight(g: &Graph, name: &str) -> bool {
    let live = g.live_nodes();
    g.nodes.iter().any(|(id, n)| live[id.index()] && matches!(&n.op, Op::Weight { name: w } if w == name))
}

/// The node's results, computed by the interpreter on a graph holding only the node's cone.
pub(super) fn evaluate(g: &Graph, id: NodeId, weights: &dyn Weights) -> Result<Vec<Tensor>, String> {
    let mut cone = Graph { name: "fold".into(), symbols: g.symbols.clone(), ..Default::default() };
    let mut map = HashMap::new();
    let root = copy_cone(g, id, &mut cone, &mut map);
    cone.outputs = cone.nodes[root].outputs.iter().enumerate().map(|(i, &v)| (i.to_string(), v)).collect();
    let outs = interp::run(&cone, &Source(weights), &[]).map_err(|e| e.to_string())?;
    Ok(outs.into_iter().map(|(_, t)| t).collect())
}

/// Copies `id` and its ancestors into `cone` (memoised in `map`); returns the copy of `id`.
fn copy_cone(g: &Graph, id: NodeId, cone: &mut Graph, map: &mut HashMap<NodeId, NodeId>) -> NodeId {
    if let Some(&done) = map.get(&id) {
        return done;
    }
    let node = &g.nodes[id];
    let inputs: Vec<ValueId> = node
        .inputs
        .iter()
        .map(|&v| {
            let info = &g.values[v];
            let copy = copy_cone(g, info.producer, cone, map);
            cone.nodes[copy].outputs[info.slot as usize]
        })
        .collect();
    let types = node.outputs.iter().map(|&v| g.ty(v).clone()).collect();
    let copy = cone.add_node(node.op.clone(), &inputs, types, None);
    map.insert(id, copy);
    copy
}

/// Puts `t` in the store under `base` (or `base.1`, `base.2`, … when `base` holds other data)
/// and returns the name used; a name already holding equal data is reused without an insert.
pub(super) fn store(weights: &dyn Weights, base: String, t: Tensor) -> String {
    let mut name = base.clone();
    for k in 1.. {
        match weights.weight(&name) {
            Ok(existing) if *existing == t => return name,
            Ok(_) => name = format!("{base}.{k}"),
            Err(_) => break,
        }
    }
    weights.insert(name.clone(), t);
    name
}

/// The pass context's weights as the interpreter's weight source.
struct Source<'a>(&'a dyn Weights);

impl WeightSource for Source<'_> {
    fn weight(&self, name: &str) -> Result<Arc<Tensor>, String> {
        self.0.weight(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::MemoryWeights;

    const TWO_SCALES: &str = r#"
graph "t" {
  %0 = input "x" : f32[2,4]
  %1 = weight @w : f32[4,4]
  %2 = quantize %1 {i8, per_tensor, scale=0.01} : i8[4,4] loc("a:b.q")
  %3 = dequantize %2 {i8, per_tensor, scale=0.01} : f32[4,4] loc("a:b.dq")
  %4 = quantize %1 {i8, per_tensor, scale=0.02} : i8[4,4] loc("c:b.q")
  %5 = dequantize %4 {i8, per_tensor, scale=0.02} : f32[4,4] loc("c:b.dq")
  %6 = matmul %0, %3 {transpose_b} : f32[2,4]
  %7 = matmul %0, %5 {transpose_b} : f32[2,4]
  return "a" = %6, "c" = %7
}"#;

    /// One weight quantized with two scales gets two names; the report lists both quantizes.
    #[test]
    fn same_weight_two_scales_get_distinct_names() {
        let mut g = crate::ir::parse(TWO_SCALES).unwrap();
        let w = MemoryWeights::default();
        w.insert("w".into(), Tensor::f32(vec![4, 4], (0..16).map(|i| i as f32 * 0.1 - 0.8).collect()));
        let mut cx = PassCx::new(&w);
        assert!(FoldConstants.run(&mut g, &mut cx).unwrap());
        let text = crate::ir::print(&g);
        assert!(text.contains("weight @w.i8 : i8[4,4]") && text.contains("weight @w.i8.1 : i8[4,4]"), "{text}");
        assert_ne!(*w.weight("w.i8").unwrap(), *w.weight("w.i8.1").unwrap());
        let report = cx.report.finish(&g);
        let folded: Vec<&str> =
            report.iter().filter(|e| matches!(e.outcome, crate::passes::report::Outcome::Folded { .. })).map(|e| e.qdq.as_str()).collect();
        assert_eq!(folded, ["a:b.q", "c:b.q"]);
        // A second run over the same store reuses the names (equal data), and finds nothing to do.
        assert!(!FoldConstants.run(&mut g, &mut cx).unwrap());
    }
}
