//! `merge-sibling-gemms`: `qmatmul`s reading one activation with weights of one format become one
//! `qmatmul_split` over their row-concatenated weights — a decoder's Q, K and V projections one
//! GEMM instead of three (issue 13).
//!
//! ```text
//! before:
//!   %9  = rmsnorm_quantize %7, %8 {eps=1e-5, via=f16, f8e4m3, per_tensor, scale=0.0103} : f8e4m3[B,S,576] loc("L.input_layernorm")
//!   %10 = weight @L.q_proj.weight.f8e4m3 : f8e4m3[576,576] loc("L.q_proj:b.q")
//!   %11 = qmatmul %9, %10 {transpose_b, alpha=9.8e-6, acc=f32, epilogue=[cast(f16)]} : f16[B,S,576] loc("L.q_proj")
//!   %12 = weight @L.k_proj.weight.f8e4m3 : f8e4m3[192,576] loc("L.k_proj:b.q")
//!   %13 = qmatmul %9, %12 {transpose_b, alpha=9.9e-6, acc=f32, epilogue=[cast(f16)]} : f16[B,S,192] loc("L.k_proj")
//!   %15 = weight @L.v_proj.weight.f8e4m3 : f8e4m3[192,576] loc("L.v_proj:b.q")
//!   %16 = qmatmul %9, %15 {transpose_b, alpha=1.0e-5, acc=f32, epilogue=[cast(f16)], out=f8e4m3, out_scale=0.0099} : f8e4m3[B,S,192] loc("L.v_proj")
//! after:
//!   %10 = weight @L.{q,k,v}_proj.weight.f8e4m3 : f8e4m3[960,576] loc("L.{q,k,v}_proj")
//!   %11, %12, %13 = qmatmul_split %9, %10 {transpose_b, segments=[seg(n=576, alpha=9.8e-6, acc=f32, epilogue=[cast(f16)]),
//!       seg(n=192, alpha=9.9e-6, …), seg(n=192, alpha=1.0e-5, acc=f32, epilogue=[cast(f16)], out=f8e4m3, out_scale=0.0099)]}
//!       : f16[B,S,576], f16[B,S,192], f8e4m3[B,S,192] loc("L.{q,k,v}_proj")
//! ```
//!
//! Rule `siblings`: the live `qmatmul`s reading a value `a` as their first operand, grouped by
//! everything one GEMM must share — `a`'s per-row scale operand, `transpose_b`, `b_scale`,
//! `b_dequant` (format, granularity), `b`'s dtype and K — become one `qmatmul_split` whose segments
//! are their payloads in node order. `b` and the weight-side operands (`b_dequant`'s scale and
//! zero point, `b_scale`) are concatenated along rows at compile time into the weight store
//! (`fold-constants`' `store`, named `<common prefix>{a,b,c}<common suffix>`); epilogue operands
//! (biases, residuals) stay per segment. The fusion report's entries fused into the siblings now
//! read as fused into the split (`refused`).
//!
//! Preconditions, each a decline (a `tracing` debug line naming the reason; no Q/DQ is involved, so
//! the fusion report has nothing to say) when it fails for a group of two or more:
//! - no sibling's epilogue operand depends on another sibling's result (a gated MLP's
//!   `mul(up)` reads the up projection: one GEMM cannot produce an operand of its own epilogue;
//!   such a sibling is left out, and the rest still merge when two or more remain);
//! - `b` and every weight-side operand is a `weight` node (concatenation happens at compile time);
//! - each segment's N is a multiple of the kernels' N tile ([`DEFAULT_TILE_N`] for the tiled
//!   GEMM and the skinny kernel both): a tile never straddles two segments, whose epilogues and
//!   result dtypes differ;
//! - each segment's N is a multiple of `b_dequant`'s row block (`block(0:R, …)`), so every scale
//!   row belongs to one segment.
//!
//! Exact: segment `i` of `qmatmul_split` is defined as the `qmatmul` of its payload on `a` and its
//! rows of the concatenated operands (`src/ir/split_types.rs`), which are the sibling's own
//! weight, scales and zero points; the interpreter runs exactly that. Idempotent: the split is no
//! `qmatmul`, and a group of one merges nothing. A changed graph is compacted.
//!
//! Interactions: runs after every fusion that shapes a `qmatmul` (epilogues, output quantizes) and
//! before `cse`/`dce`. On by default in decoder plans (`compile::decoder_passes`: its kernels,
//! `codegen::ops::split`, matched the interpreter on an H100); opt-in for encoders
//! ([`crate::passes::pipeline::OPT_IN`]) until an encoder plan with it has run on a GPU.

use super::dce::{live_users, Users};
use super::fold_constants::store;
use super::{loc, Pass, PassCx, PassError};
use crate::interp::Tensor;
use crate::ir::{order, Builder, DType, Dim, Graph, NodeId, Op, QMatMul, QuantSpec, Segment, SplitMatMul, ValueId};
use std::collections::HashSet;

/// The smallest N tile of the GEMM kernels (`codegen::gemm`'s tiled GEMM; the skinny kernel's
/// column tiles divide it): segment boundaries must fall on it.
pub const DEFAULT_TILE_N: u64 = 64;

/// `merge-sibling-gemms`, with the N tile segment boundaries must fall on.
pub struct MergeSiblingGemms {
    /// Segment boundaries are multiples of this many rows.
    pub tile_n: u64,
}

impl Default for MergeSiblingGemms {
    fn default() -> Self {
        MergeSiblingGemms { tile_n: DEFAULT_TILE_N }
    }
}

impl Pass for MergeSiblingGemms {
    fn name(&self) -> &'static str {
        "merge-sibling-gemms"
    }

    fn run(&self, g: &mut Graph, cx: &mut PassCx) -> Result<bool, PassError> {
        let users = live_users(g);
        let values: Vec<ValueId> = g.values.ids().collect();
        let mut groups = vec![];
        for v in values {
            for m in match_siblings(g, &users, v, self.tile_n) {
                match m {
                    Match::Apply(members) => groups.push(members),
                    Match::Decline(reason) => tracing::debug!(rule = "siblings", value = %v, declined = %reason),
                }
            }
        }
        for members in &groups {
            apply_siblings(g, cx, members)?;
        }
        if !groups.is_empty() {
            *g = order::compact(g);
        }
        Ok(!groups.is_empty())
    }
}

/// What the rule found for one group of siblings.
#[derive(Debug, PartialEq)]
pub enum Match {
    /// Merge these `qmatmul`s, in this order.
    Apply(Vec<NodeId>),
    /// Two or more siblings that do not merge, and why.
    Decline(String),
}

/// Everything sibling `qmatmul`s must share to be one GEMM.
#[derive(PartialEq)]
pub(crate) struct Key {
    a_scale: Option<ValueId>,
    b_scale: bool,
    b_dequant: Option<QuantSpec>,
    b: DType,
    k: Option<Dim>,
}

/// `qmatmul(a, b_i; p_i)… => qmatmul_split(a, concat(b_i); p_1, …)`: the siblings reading `a`,
/// grouped by [`Key`], each group of two or more checked by [`check_group`].
pub fn match_siblings(g: &Graph, users: &Users, a: ValueId, tile_n: u64) -> Vec<Match> {
    let mut readers: Vec<NodeId> = users[a].to_vec();
    readers.sort();
    readers.dedup();
    let mut groups: Vec<(Key, Vec<NodeId>)> = vec![];
    for u in readers {
        let Some(key) = key_of(g, u, a) else { continue };
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push(u),
            None => groups.push((key, vec![u])),
        }
    }
    groups.into_iter().filter(|(_, m)| m.len() >= 2).map(|(_, m)| check_group(g, m, tile_n)).collect()
}

/// The sharing key of `u` when it is a `qmatmul` reading `a` as its first operand.
pub(crate) fn key_of(g: &Graph, u: NodeId, a: ValueId) -> Option<Key> {
    let node = &g.nodes[u];
    let Op::QMatMul(q) = &node.op else { return None };
    if node.inputs.first() != Some(&a) || !q.transpose_b || node.inputs.len() != q.arity() {
        return None;
    }
    let a_scale = q.a_scale.then(|| node.inputs[2 + dequant_operands(q)]);
    let b = g.ty(node.inputs[1]);
    Some(Key { a_scale, b_scale: q.b_scale, b_dequant: q.b_dequant.clone(), b: b.dtype, k: b.shape.get(1).copied() })
}

/// The siblings that merge, or why they do not.
fn check_group(g: &Graph, members: Vec<NodeId>, tile_n: u64) -> Match {
    let members = independent(g, members);
    if members.len() < 2 {
        return Match::Decline("an epilogue reads a sibling's result: one GEMM cannot produce an operand of its own epilogue".into());
    }
    for &m in &members {
        if let Err(reason) = check_member(g, m, tile_n) {
            return Match::Decline(format!("{}: {reason}", loc(g, m)));
        }
    }
    Match::Apply(members)
}

/// The members none of whose epilogue operands depends on another member's result.
fn independent(g: &Graph, members: Vec<NodeId>) -> Vec<NodeId> {
    let set: HashSet<NodeId> = members.iter().copied().collect();
    let prefix = |m: NodeId| match &g.nodes[m].op {
        Op::QMatMul(q) => q.arity() - crate::ir::epilogue_operands(q),
        _ => 0,
    };
    members.into_iter().filter(|&m| g.nodes[m].inputs[prefix(m)..].iter().all(|&v| !depends_on(g, v, &set))).collect()
}

/// True when `v` is computed from a result of a node of `set`.
fn depends_on(g: &Graph, v: ValueId, set: &HashSet<NodeId>) -> bool {
    let mut stack = vec![g.values[v].producer];
    let mut seen = HashSet::new();
    while let Some(n) = stack.pop() {
        if set.contains(&n) {
            return true;
        }
        if seen.insert(n) {
            stack.extend(g.nodes[n].inputs.iter().map(|&i| g.values[i].producer));
        }
    }
    false
}

/// A member's own side conditions: stored weight-side operands, N on the tile and the scale rows.
fn check_member(g: &Graph, m: NodeId, tile_n: u64) -> Result<(), String> {
    let node = &g.nodes[m];
    let Op::QMatMul(q) = &node.op else { return Err("not a qmatmul".into()) };
    for i in weight_side(q) {
        if !matches!(g.producer(node.inputs[i]).op, Op::Weight { .. }) {
            return Err(format!("operand {i} is not a stored weight; concatenation happens at compile time"));
        }
    }
    let n = rows(g, m).ok_or("b is not a fixed 2-D [N, K] weight")?;
    if tile_n == 0 || n % tile_n != 0 {
        return Err(format!("N = {n} is not a multiple of the GEMM's {tile_n}-column tile: a tile would straddle two segments"));
    }
    let block = crate::ir::split_types::scale_row_block(q.b_dequant.as_ref());
    if n % block != 0 {
        return Err(format!("N = {n} is not a multiple of the weight scale's {block}-row blocks"));
    }
    Ok(())
}

/// N of a member: `b`'s rows.
pub(crate) fn rows(g: &Graph, m: NodeId) -> Option<u64> {
    match g.ty(g.nodes[m].inputs[1]).shape.as_slice() {
        [Dim::Fixed(n), Dim::Fixed(_)] => Some(*n),
        _ => None,
    }
}

/// `b_dequant`'s scale and zero-point operand count.
fn dequant_operands(q: &QMatMul) -> usize {
    q.b_dequant.as_ref().map_or(0, QuantSpec::extra_inputs)
}

/// The operand slots concatenated along rows: `b`, `b_dequant`'s, `b_scale`.
pub(crate) fn weight_side(q: &QMatMul) -> Vec<usize> {
    let prefix = q.arity() - crate::ir::epilogue_operands(q);
    (1..prefix).filter(|&i| crate::ir::split_types::is_weight_side(q, i)).collect()
}

/// Builds the split over concatenated weights and redirects the siblings' readers to it.
fn apply_siblings(g: &mut Graph, cx: &mut PassCx, members: &[NodeId]) -> Result<(), PassError> {
    let fail = |message: String| PassError::Failed { pass: "merge-sibling-gemms", message };
    let first = &g.nodes[members[0]];
    let Op::QMatMul(q) = first.op.clone() else { return Err(fail(format!("{} is not a qmatmul", members[0]))) };
    let prefix = q.arity() - crate::ir::epilogue_operands(&q);
    let name = brace_join(&members.iter().map(|&m| loc(g, m)).collect::<Vec<_>>());
    let mut inputs: Vec<ValueId> = first.inputs[..prefix].to_vec();
    for i in weight_side(&q) {
        inputs[i] = concat_weights(g, cx, members, i, &name).map_err(fail)?;
    }
    let mut segments = vec![];
    for &m in members {
        let Op::QMatMul(mm) = g.nodes[m].op.clone() else { return Err(fail(format!("{m} is not a qmatmul"))) };
        inputs.extend_from_slice(&g.nodes[m].inputs[prefix..]);
        segments.push(Segment { n: rows(g, m).ok_or_else(|| fail(format!("{m}: b has no fixed rows")))?, mm });
    }
    let mut b = Builder::new(g);
    b.scope = Some(name.clone());
    let outs = b.add(Op::SplitMatMul(SplitMatMul { segments }), &inputs, None).map_err(|e| fail(format!("{name}: {e}")))?;
    for (&m, &new) in members.iter().zip(&outs) {
        let old = g.nodes[m].outputs[0];
        if g.ty(old) != g.ty(new) {
            return Err(fail(format!("{name}: segment {} changed its result type", loc(g, m))));
        }
        g.replace_all_uses(old, new);
        cx.report.refused("qmatmul", &loc(g, m), "qmatmul_split", &name);
    }
    tracing::debug!(rule = "siblings", node = %name, segments = members.len());
    Ok(())
}

/// A new `weight` node holding the members' operand `slot` concatenated along rows.
fn concat_weights(g: &mut Graph, cx: &mut PassCx, members: &[NodeId], slot: usize, loc: &str) -> Result<ValueId, String> {
    joined_weight(g, cx, members, slot, loc, &|parts| Tensor::concat_rows(parts))
}

/// A new `weight` node holding `join` of the members' operand `slot` (each a `weight`), stored
/// as `<common prefix>{a,b,c}<common suffix>` of their names, typed as the first member's with
/// the joined rows.
pub(crate) fn joined_weight(
    g: &mut Graph,
    cx: &mut PassCx,
    members: &[NodeId],
    slot: usize,
    loc: &str,
    join: &dyn Fn(&[&Tensor]) -> Result<Tensor, String>,
) -> Result<ValueId, String> {
    let mut names = vec![];
    let mut parts = vec![];
    for &m in members {
        let Op::Weight { name } = &g.producer(g.nodes[m].inputs[slot]).op else {
            return Err(format!("{m}: operand {slot} is not a weight"));
        };
        parts.push(cx.weights.weight(name)?);
        names.push(name.clone());
    }
    let refs: Vec<&Tensor> = parts.iter().map(|t| &**t).collect();
    let joined = join(&refs).map_err(|e| format!("{loc}: joining {}: {e}", names.join(", ")))?;
    let mut ty = g.ty(g.nodes[members[0]].inputs[slot]).clone();
    let total: usize = joined.shape.first().copied().unwrap_or(0);
    if let Some(d) = ty.shape.first_mut() {
        *d = Dim::Fixed(total as u64);
    }
    let stored = store(cx.weights, brace_join(&names), joined);
    let node = g.add_node(Op::Weight { name: stored }, &[], vec![ty], Some(loc.to_string()));
    Ok(g.nodes[node].outputs[0])
}

/// `names` as `<common prefix>{a,b,c}<common suffix>` (`L.{q,k,v}_proj`); one name stays as is.
pub fn brace_join(names: &[String]) -> String {
    let Some(first) = names.first() else { return String::new() };
    if names.iter().all(|n| n == first) {
        return first.clone();
    }
    let common = |f: &dyn Fn(&String) -> Vec<char>| {
        let seqs: Vec<Vec<char>> = names.iter().map(f).collect();
        (0..seqs.iter().map(Vec::len).min().unwrap_or(0)).take_while(|&i| seqs.iter().all(|s| s[i] == seqs[0][i])).count()
    };
    let pre = common(&|n| n.chars().collect());
    let shortest = names.iter().map(|n| n.chars().count()).min().unwrap_or(0);
    let suf = common(&|n| n.chars().rev().collect()).min(shortest - pre);
    let chars: Vec<char> = first.chars().collect();
    let middle: Vec<String> = names.iter().map(|n| n.chars().skip(pre).take(n.chars().count() - pre - suf).collect()).collect();
    let head: String = chars[..pre].iter().collect();
    let tail: String = chars[chars.len() - suf..].iter().collect();
    format!("{head}{{{}}}{tail}", middle.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp::WeightSource;
    use crate::passes::{MemoryWeights, Weights};

    fn case(name: &str) -> Graph {
        crate::passes::case_graph("merge-sibling-gemms", name)
    }

    /// Each must-not-fire case declines once, naming the failed condition.
    #[test]
    fn declines_name_their_reason() {
        for (name, reason) in [
            ("gate_reads_up", "an epilogue reads a sibling's result"),
            ("n_off_the_tile", "L.k_proj: N = 32 is not a multiple of the GEMM's 64-column tile"),
            ("computed_weight_scale", "L.k_proj: operand 2 is not a stored weight"),
        ] {
            let g = case(name);
            let users = live_users(&g);
            let found: Vec<Match> = g.values.ids().flat_map(|v| match_siblings(&g, &users, v, DEFAULT_TILE_N)).collect();
            assert!(matches!(found.as_slice(), [Match::Decline(r)] if r.contains(reason)), "{name}: {found:?}");
        }
    }

    /// Q/DQs the report had fused into a sibling read as fused into the split.
    #[test]
    fn report_follows_the_siblings_into_the_split() {
        let mut g = case("fp8_qkv_fp8_value");
        let w = MemoryWeights::default();
        for (name, rows) in [("L.q_proj.weight.f8e4m3", 128), ("L.k_proj.weight.f8e4m3", 64), ("L.v_proj.weight.f8e4m3", 64)] {
            w.insert(name.into(), Tensor::from_f32_as(DType::F8E4M3, vec![rows, 16], vec![0.5; rows * 16]));
        }
        let mut cx = PassCx::new(&w);
        cx.report.fused("L.v_proj:a.q", "qmatmul", "L.v_proj");
        assert!(MergeSiblingGemms::default().run(&mut g, &mut cx).expect("pass"));
        let entries = cx.report.finish(&g);
        assert_eq!(entries.iter().map(|e| e.to_string()).collect::<Vec<_>>(), ["L.v_proj:a.q: fused into qmatmul_split L.{q,k,v}_proj"]);
        assert_eq!(w.weight("L.{q,k,v}_proj.weight.f8e4m3").expect("concatenated").shape, [256, 16]);
    }

    /// Random weights for every `weight` node of `g`, by type (for running the pass).
    fn weights_of(g: &Graph) -> MemoryWeights {
        let w = MemoryWeights::default();
        for n in g.nodes.values() {
            if let Op::Weight { name } = &n.op {
                let ty = g.ty(n.outputs[0]);
                let shape: Vec<usize> = ty.shape.iter().map(|d| d.fixed().unwrap_or(1) as usize).collect();
                let len = shape.iter().product();
                w.insert(name.clone(), Tensor::from_f32_as(ty.dtype, shape, (0..len).map(|i| (i % 7) as f32 * 0.25).collect()));
            }
        }
        w
    }

    /// The split prints and parses back to the same graph (shared `b_dequant` and `b_scale`
    /// references, per-segment epilogue operands and output quantizes).
    #[test]
    fn merged_graphs_round_trip_through_text() {
        for name in
            ["fp8_qkv_fp8_value", "f16_qkv_biases", "int8_per_channel_scales", "w4a16_groups_zero_points", "fp8_dynamic_shared_row_scales"]
        {
            let mut g = case(name);
            let w = weights_of(&g);
            assert!(MergeSiblingGemms::default().run(&mut g, &mut PassCx::new(&w)).expect("pass"), "{name}");
            let text = crate::ir::print(&g);
            let back = crate::ir::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
            assert_eq!(back, g, "{name}");
        }
    }

    /// Names share their longest prefix and suffix outside the braces; equal names stay whole.
    #[test]
    fn brace_join_keeps_common_ends() {
        let s = |v: &[&str]| brace_join(&v.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        assert_eq!(s(&["L.q_proj", "L.k_proj", "L.v_proj"]), "L.{q,k,v}_proj");
        assert_eq!(s(&["ab", "abc"]), "ab{,c}");
        assert_eq!(s(&["x", "x"]), "x");
        assert_eq!(s(&["aa", "aaa"]), "aa{,a}");
    }
}
