//! `merge-gate-up`: a gated MLP's up projection and the gate projection whose epilogue reads it
//! (`silu(gate) · up`, fused by `fuse-epilogue`'s `mul` rule) become one `qmatmul_glu` over
//! their row-interleaved weights — one GEMM launch instead of two per decoder layer (issue 13).
//!
//! ```text
//! before:
//!   %9  = rmsnorm_quantize %7, %8 {eps=1e-5, via=f16, f8e4m3, per_tensor, scale=0.0121} : f8e4m3[B,S,576] loc("L.post_attention_layernorm")
//!   %10 = weight @L.up_proj.weight.f8e4m3 : f8e4m3[1536,576] loc("L.up_proj:b.q")
//!   %11 = qmatmul %9, %10 {transpose_b, alpha=9.1e-6, acc=f32, epilogue=[cast(f16)]} : f16[B,S,1536] loc("L.up_proj")
//!   %12 = weight @L.gate_proj.weight.f8e4m3 : f8e4m3[1536,576] loc("L.gate_proj:b.q")
//!   %13 = qmatmul %9, %12 {transpose_b, alpha=8.7e-6, acc=f32, epilogue=[cast(f16), silu(f16), mul(%11, f16)],
//!       out=f8e4m3, out_scale=0.0042} : f8e4m3[B,S,1536] loc("L.gate_proj")
//! after:
//!   %10 = weight @L.{gate,up}_proj.weight.f8e4m3 : f8e4m3[3072,576] loc("L.{gate,up}_proj")
//!   %11 = qmatmul_glu %9, %10 {transpose_b, tile=8,
//!       gate=seg(alpha=8.7e-6, acc=f32, epilogue=[cast(f16), silu(f16), mul(up, f16)], out=f8e4m3, out_scale=0.0042),
//!       up=seg(alpha=9.1e-6, acc=f32, epilogue=[cast(f16)])} : f8e4m3[B,S,1536] loc("L.{gate,up}_proj")
//! ```
//!
//! Rule `gate-up`: a live `qmatmul` (the gate) one of whose `add`/`mul` epilogue operands is the
//! result of another `qmatmul` (the up projection) reading the same `a`, with everything one GEMM
//! must share equal (`merge_sibling_gemms::Key`: `a`'s per-row scale operand, `transpose_b`,
//! `b_scale`, `b_dequant`, `b`'s dtype and K) and the same N, becomes one `qmatmul_glu`. `b` and
//! the weight-side operands (`b_dequant`'s scale and zero point, `b_scale`) are interleaved along
//! rows at compile time in pieces of [`DEFAULT_TILE`] rows (gate piece, then up piece) into the
//! weight store (`fold-constants`' `store`, named `<common prefix>{gate,up}<common suffix>`), so
//! the GEMM's block that computes an output column holds both of its accumulators; the other
//! epilogue operands stay, the gate's then the up projection's. The fusion report's entries fused
//! into either projection now read as fused into the merged op (`refused`).
//!
//! Preconditions, each a decline (a `tracing` debug line naming the reason) once the gate's
//! operand is a sibling `qmatmul`'s result:
//! - the two share what one GEMM shares (above) and N;
//! - the up projection's result has no reader but that one gate operand and is no graph output
//!   (it is not computed any more; so no other operand of the gate depends on it, and the merged
//!   op's operands all exist before it). It is a float: an epilogue operand has the running
//!   dtype, so an up projection with an output quantize reaches a gate only through a
//!   `dequantize`, and nothing matches;
//! - `b` and every weight-side operand is a `weight` node (interleaving happens at compile time);
//! - N is a multiple of the piece, and the piece of `b_dequant`'s row block (`block(0:R, …)`).
//!
//! Exact: `qmatmul_glu` is defined as the up `qmatmul` on its rows followed by the gate `qmatmul`
//! on its rows reading that result (`src/ir/glu_types.rs`); the rows are the projections' own
//! weights, scales and zero points and the interpreter runs exactly that. Idempotent: the merged
//! op is no `qmatmul`. A changed graph is compacted.
//!
//! Interactions: after `fuse-epilogue` (which puts `silu, mul(up)` into the gate) and before
//! `merge-sibling-gemms` (whose `independent` filter leaves the gate out anyway, so the order only
//! saves it a decline) and `cse`/`dce` (which drop the dead up projection). On by default in
//! decoder plans (`compile::decoder_passes`), opt-in elsewhere ([`crate::passes::pipeline::OPT_IN`]).

use super::dce::{live_users, Users};
use super::merge_sibling_gemms::{brace_join, joined_weight, key_of, rows, weight_side};
use super::{loc, Pass, PassCx, PassError};
use crate::interp::Tensor;
use crate::ir::glu_types::piece_rows;
use crate::ir::split_types::scale_row_block;
use crate::ir::{epilogue_operands, order, Builder, GluMatMul, Graph, NodeId, Op, QMatMul, ValueId};

/// Rows per interleaved piece: the GEMM kernels' epilogue reads 4-column vectors and every N
/// tile (16·k columns: the skinny kernel's 16-column tiles, the tiled GEMMs' 64 to 256) holds
/// whole (gate, up) piece pairs, so one layout serves every kernel and row-count bucket.
pub const DEFAULT_TILE: u64 = 8;

/// `merge-gate-up`, with the rows per interleaved piece.
pub struct MergeGateUp {
    /// Rows per piece (N must be a multiple of it).
    pub tile: u64,
}

impl Default for MergeGateUp {
    fn default() -> Self {
        MergeGateUp { tile: DEFAULT_TILE }
    }
}

impl Pass for MergeGateUp {
    fn name(&self) -> &'static str {
        "merge-gate-up"
    }

    fn run(&self, g: &mut Graph, cx: &mut PassCx) -> Result<bool, PassError> {
        let users = live_users(g);
        let nodes: Vec<NodeId> = g.nodes.ids().collect();
        let mut pairs = vec![];
        for gate in nodes {
            match match_gate_up(g, &users, gate, self.tile) {
                Some(Match::Apply(pair)) => pairs.push(pair),
                Some(Match::Decline(reason)) => tracing::debug!(rule = "gate-up", node = %loc(g, gate), declined = %reason),
                None => {}
            }
        }
        for pair in &pairs {
            apply_gate_up(g, cx, pair, self.tile)?;
        }
        if !pairs.is_empty() {
            *g = order::compact(g);
        }
        Ok(!pairs.is_empty())
    }
}

/// A gate projection and the up projection its epilogue reads.
#[derive(Debug, PartialEq)]
pub struct Pair {
    /// The gate `qmatmul`.
    pub gate: NodeId,
    /// The up `qmatmul`.
    pub up: NodeId,
    /// Which of the gate's operand-reading epilogue steps reads the up result.
    pub up_operand: usize,
}

/// What the rule found for one gate.
#[derive(Debug, PartialEq)]
pub enum Match {
    /// Merge this pair.
    Apply(Pair),
    /// The gate reads a sibling's result but the pair does not merge, and why.
    Decline(String),
}

/// `qmatmul(a, Wg; …, mul(qmatmul(a, Wu; …))) => qmatmul_glu(a, interleave(Wg, Wu); …)`: `None`
/// unless `gate` is a live `qmatmul` whose epilogue reads another `qmatmul` over the same `a`.
pub fn match_gate_up(g: &Graph, users: &Users, gate: NodeId, tile: u64) -> Option<Match> {
    let node = &g.nodes[gate];
    let Op::QMatMul(q) = &node.op else { return None };
    let a = *node.inputs.first()?;
    let key = key_of(g, gate, a)?;
    if users[node.outputs[0]].is_empty() && !g.outputs.iter().any(|(_, v)| *v == node.outputs[0]) {
        return None;
    }
    let own = node.inputs.get(q.arity() - epilogue_operands(q)..)?;
    let (up_operand, up) = own.iter().enumerate().find_map(|(i, &v)| {
        let p = g.values[v].producer;
        (p != gate && key_of(g, p, a).is_some()).then_some((i, p))
    })?;
    let decline = |reason: String| Some(Match::Decline(format!("{}: {reason}", loc(g, up))));
    if key_of(g, up, a) != Some(key) || rows(g, up) != rows(g, gate) {
        return decline("the up projection differs from the gate in what one GEMM shares (scales, weight format, N or K)".into());
    }
    if let Err(reason) = check_pair(g, users, gate, up, tile) {
        return decline(reason);
    }
    Some(Match::Apply(Pair { gate, up, up_operand }))
}

/// The pair's side conditions (module doc), in order.
fn check_pair(g: &Graph, users: &Users, gate: NodeId, up: NodeId, tile: u64) -> Result<(), String> {
    let Op::QMatMul(gq) = &g.nodes[gate].op else { return Err("not a qmatmul".into()) };
    let u = g.nodes[up].outputs[0];
    if users[u].len() != 1 || g.outputs.iter().any(|(_, v)| *v == u) {
        return Err("the up projection's result has other readers; it would still be computed".into());
    }
    for m in [gate, up] {
        for i in weight_side(gq) {
            if !matches!(g.producer(g.nodes[m].inputs[i]).op, Op::Weight { .. }) {
                return Err(format!("{}: operand {i} is not a stored weight; interleaving happens at compile time", loc(g, m)));
            }
        }
    }
    check_rows(gq, rows(g, gate).ok_or("b is not a fixed 2-D [N, K] weight")?, tile)
}

/// N on the piece and the piece on the scale's row block.
fn check_rows(q: &QMatMul, n: u64, tile: u64) -> Result<(), String> {
    if tile == 0 || n % tile != 0 {
        return Err(format!("N = {n} is not a multiple of the {tile}-row interleaving piece"));
    }
    let block = scale_row_block(q.b_dequant.as_ref());
    if tile % block != 0 {
        return Err(format!("the weight scale's {block}-row blocks do not divide the {tile}-row piece"));
    }
    Ok(())
}

/// Builds the merged op over interleaved weights and redirects the gate's readers to it.
fn apply_gate_up(g: &mut Graph, cx: &mut PassCx, pair: &Pair, tile: u64) -> Result<(), PassError> {
    let fail = |message: String| PassError::Failed { pass: "merge-gate-up", message };
    let (Op::QMatMul(gate), Op::QMatMul(up)) = (g.nodes[pair.gate].op.clone(), g.nodes[pair.up].op.clone()) else {
        return Err(fail(format!("{} or {} is not a qmatmul", pair.gate, pair.up)));
    };
    let name = brace_join(&[loc(g, pair.gate), loc(g, pair.up)]);
    let prefix = gate.arity() - epilogue_operands(&gate);
    let mut inputs: Vec<ValueId> = g.nodes[pair.gate].inputs[..prefix].to_vec();
    for i in weight_side(&gate) {
        let piece = usize::try_from(piece_rows(&gate, i, tile)).map_err(|e| fail(e.to_string()))?;
        let join = move |parts: &[&Tensor]| match parts {
            [gw, uw] => Tensor::interleave_rows(gw, uw, piece),
            _ => Err("interleaving takes two weights".into()),
        };
        inputs[i] = joined_weight(g, cx, &[pair.gate, pair.up], i, &name, &join).map_err(fail)?;
    }
    let own = &g.nodes[pair.gate].inputs[prefix..];
    inputs.extend(own.iter().enumerate().filter(|&(i, _)| i != pair.up_operand).map(|(_, &v)| v));
    inputs.extend_from_slice(&g.nodes[pair.up].inputs[prefix..]);
    let op = Op::GluMatMul(GluMatMul { tile, gate, up, up_operand: pair.up_operand });
    let mut b = Builder::new(g);
    b.scope = Some(name.clone());
    let outs = b.add(op, &inputs, None).map_err(|e| fail(format!("{name}: {e}")))?;
    let old = g.nodes[pair.gate].outputs[0];
    if g.ty(old) != g.ty(outs[0]) {
        return Err(fail(format!("{name}: the merged op changed the gate's result type")));
    }
    g.replace_all_uses(old, outs[0]);
    for m in [pair.gate, pair.up] {
        cx.report.refused("qmatmul", &loc(g, m), "qmatmul_glu", &name);
    }
    tracing::debug!(rule = "gate-up", node = %name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp::WeightSource;
    use crate::passes::{MemoryWeights, Weights};

    fn case(name: &str) -> Graph {
        crate::passes::case_graph("merge-gate-up", name)
    }

    /// Each must-not-fire case declines once, naming the failed condition.
    #[test]
    fn declines_name_their_reason() {
        for (name, reason) in [
            ("up_read_twice", "the up projection's result has other readers"),
            ("different_formats", "differs from the gate in what one GEMM shares"),
            ("n_off_the_piece", "N = 12 is not a multiple of the 8-row interleaving piece"),
            ("scale_blocks_over_the_piece", "the weight scale's 16-row blocks do not divide the 8-row piece"),
            ("computed_weight", "operand 1 is not a stored weight"),
        ] {
            let g = case(name);
            let users = live_users(&g);
            let found: Vec<Match> = g.nodes.ids().filter_map(|n| match_gate_up(&g, &users, n, DEFAULT_TILE)).collect();
            assert!(matches!(found.as_slice(), [Match::Decline(r)] if r.contains(reason)), "{name}: {found:?}");
        }
        // A quantized up result reaches the gate through a dequantize: no sibling result read.
        let g = case("up_quantized");
        let users = live_users(&g);
        assert!(g.nodes.ids().all(|n| match_gate_up(&g, &users, n, DEFAULT_TILE).is_none()));
    }

    /// Weights for every `weight` node of `g`: row `r`, column `c` holds `r + c/64` (each row
    /// recognisable after interleaving).
    fn weights_of(g: &Graph) -> MemoryWeights {
        let w = MemoryWeights::default();
        for n in g.nodes.values() {
            if let Op::Weight { name } = &n.op {
                let ty = g.ty(n.outputs[0]);
                let shape: Vec<usize> = ty.shape.iter().map(|d| d.fixed().unwrap_or(1) as usize).collect();
                let cols = shape.iter().skip(1).product::<usize>().max(1);
                let len = shape.iter().product();
                let vals = (0..len).map(|i| ((i / cols) % 8) as f32 + (i % cols % 4) as f32 * 0.25).collect();
                w.insert(name.clone(), Tensor::from_f32_as(ty.dtype, shape, vals));
            }
        }
        w
    }

    /// The merged op prints and parses back to the same graph (shared scales, `up` in the gate's
    /// epilogue, each side's own operands and output quantize).
    #[test]
    fn merged_graphs_round_trip_through_text() {
        for name in ["fp8_static_swiglu", "int8_sq_dynamic_per_channel", "w4a16_groups_zero_points", "up_bias_and_residual"] {
            let mut g = case(name);
            let w = weights_of(&g);
            assert!(MergeGateUp::default().run(&mut g, &mut PassCx::new(&w)).expect("pass"), "{name}");
            let text = crate::ir::print(&g);
            let back = crate::ir::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}\n{text}"));
            assert_eq!(back, g, "{name}");
        }
    }

    /// The combined weight holds gate piece 0, up piece 0, gate piece 1, …; the scale rows follow.
    #[test]
    fn weights_interleave_by_pieces() {
        let mut g = case("int8_sq_dynamic_per_channel");
        let w = weights_of(&g);
        let gate = w.weight("L.gate_proj.weight.scale").expect("gate scale");
        let up = w.weight("L.up_proj.weight.scale").expect("up scale");
        assert!(MergeGateUp::default().run(&mut g, &mut PassCx::new(&w)).expect("pass"));
        let joined = w.weight("L.{gate,up}_proj.weight.scale").expect("interleaved");
        let want: Vec<f32> =
            [&gate, &up, &gate, &up].iter().zip([0, 0, 8, 8]).flat_map(|(t, r)| t.as_f32().expect("f32")[r..r + 8].to_vec()).collect();
        assert_eq!(joined.as_f32().expect("f32"), want.as_slice());
        assert_eq!(w.weight("L.{gate,up}_proj.weight.i8").expect("interleaved").shape, [32, 16]);
    }

    /// Q/DQs the report had fused into either projection read as fused into the merged op.
    #[test]
    fn report_follows_the_pair_into_the_merged_op() {
        let mut g = case("fp8_static_swiglu");
        let w = weights_of(&g);
        let mut cx = PassCx::new(&w);
        cx.report.fused("L.up_proj:b.q", "qmatmul", "L.up_proj");
        cx.report.fused("L.gate_proj:out.q", "qmatmul", "L.gate_proj");
        assert!(MergeGateUp::default().run(&mut g, &mut cx).expect("pass"));
        let entries: Vec<String> = cx.report.finish(&g).iter().map(|e| e.to_string()).collect();
        assert_eq!(
            entries,
            ["L.gate_proj:out.q: fused into qmatmul_glu L.{gate,up}_proj", "L.up_proj:b.q: fused into qmatmul_glu L.{gate,up}_proj"]
        );
    }
}
