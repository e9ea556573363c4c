//! `fuse-dq-matmul`: a matmul of two dequantized operands becomes a `qmatmul` that reads the
//! quantized tensors and applies the scales once, to the f32 accumulator.
//!
//! ```text
//! before:
//!   %d = dequantize %q {f8e4m3, per_tensor, scale=0.0123} : f32[B,S,384] loc("L:a.dq")
//!   %wd = dequantize %wq {f8e4m3, per_channel(0), scale=%s} : f32[1536,384] loc("L:b.dq")
//!   %y = matmul %d, %wd {transpose_b} : f32[B,S,1536] loc("L")
//! after:
//!   %y = qmatmul %q, %wq {transpose_b, alpha=0.0123, b_scale=%s, acc=f32} : f32[B,S,1536] loc("L")
//! ```
//!
//! Rule `dq_matmul`: `matmul(dequantize(qa, sa), dequantize(qb, sb))` ⇒ `qmatmul(qa, qb)`
//! with `alpha` = the product of the literal (per-tensor) scales, 1.0 if there are none;
//! `a_scale` = a's per-token scale input (`[.., M, 1]`); `b_scale` = b's per-channel scale input
//! on the output-feature axis (axis 0 of `[N, K]` with `transpose_b`, the last axis of `[K, N]`
//! without); `acc` = the matmul's output dtype; empty epilogue. Batched operands (attention's
//! `[B, H, S, D]` products, with or without `transpose_b`) fuse the same way.
//!
//! Numerics: the unfused graph computes `Σ (qa·sa)(qb·sb)`, the fused op `(Σ qa·qb)·sa·sb`, so the
//! results differ by f32 reassociation. That error scales with `Σ |a·b|`, not with the result, so
//! where the sum cancels it exceeds an ulp of the output (docs/passes.md, "Numerics"); pass cases
//! use `# tolerance: ulp` for wide-float outputs and `code` for quantized ones.
//!
//! Declined, with the reason recorded on the dequantize(s) concerned: `transpose_a`; only one
//! operand dequantized; zero points; block granularities; a per-tensor scale that is a graph value
//! rather than a literal; per-channel scales on the reduction axis, a batch axis or a's rows;
//! per-token scales on b; a dequantize producing f16/bf16 (the unfused matmul would multiply
//! rounded operands); a dequantize whose result a non-matmul (or a graph output) also reads, since
//! it must then stay; and any operand combination the `qmatmul` type rule rejects (an `a_scale`
//! that does not match the result's rows, non-f32 scale vectors), with the type rule's message.
//!
//! Idempotent: the fused node is not a matmul. Readers are counted among live nodes only
//! (`dce::live_users`), so a dequantize shared by matmuls fuses into each as they are rewritten; a
//! changed graph is compacted, which drops the matmul and the dequantizes no one reads any more.
//!
//! Interacting passes: `fold-constants` quantizes weights offline (the `b` dequantize then reads a
//! quantized weight); `fold-scales` turns constant scale inputs into literals; a dequantize shared
//! by several matmuls fuses into each; `fuse-epilogue` then grows the qmatmul's epilogue.

use super::dce::output_uses;
use super::dce::Users;
use super::rule::{self, Applied, Found};
use super::{loc, Pass, PassCx, PassError};
use crate::ir::{infer, normalize_axis, print, Builder, DType, Granularity, Graph, NodeId, Op, QMatMul, ScaleSource, TensorType, ValueId};

/// `fuse-dq-matmul`.
pub struct FuseDqMatmul;

impl Pass for FuseDqMatmul {
    fn name(&self) -> &'static str {
        "fuse-dq-matmul"
    }

    fn run(&self, g: &mut Graph, cx: &mut PassCx) -> Result<bool, PassError> {
        rule::run(g, cx, "dq_matmul", match_dq_matmul, |g, id, f: Fusion| {
            let node = apply_dq_matmul(g, id, f.op, &f.inputs)?;
            Ok(Applied { node, into: "qmatmul", fused: f.dqs.to_vec(), declined: vec![] })
        })
    }
}

/// The qmatmul that replaces a matmul, and the dequantizes it absorbs.
struct Fusion {
    op: Op,
    inputs: Vec<ValueId>,
    dqs: [NodeId; 2],
}

/// What one dequantized operand brings to the qmatmul.
struct Operand {
    /// The quantized tensor.
    q: ValueId,
    /// The literal per-tensor scale (1.0 when the scale is a vector).
    literal: f32,
    /// The per-token (a) or per-channel (b) scale vector.
    vector: Option<ValueId>,
}

/// Which matmul operand a dequantize feeds.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    A,
    B,
}

/// `matmul(dequantize(qa, sa), dequantize(qb, sb)) => qmatmul(qa, qb; alpha, a_scale, b_scale)`:
/// the scales leave the sum (`Σ (qa·sa)(qb·sb) = (Σ qa·qb)·sa·sb`, up to f32 reassociation).
fn match_dq_matmul(g: &Graph, users: &Users, id: NodeId) -> Option<Found<Fusion>> {
    let node = &g.nodes[id];
    let Op::MatMul { transpose_a, transpose_b } = node.op else { return None };
    let (da, db) = (dequantize_of(g, node.inputs[0]), dequantize_of(g, node.inputs[1]));
    let live = !users[node.outputs[0]].is_empty() || output_uses(g, node.outputs[0]) > 0;
    if !live || (da.is_none() && db.is_none()) {
        return None;
    }
    let (Some(da), Some(db)) = (da, db) else {
        let reason = "the other matmul operand is not dequantized; qmatmul needs both operands quantized";
        return Some(Found::Decline(da.or(db).map(|d| (d, reason.to_string())).into_iter().collect()));
    };
    if transpose_a {
        let reason = "transpose_a is not supported by qmatmul";
        return Some(Found::Decline(vec![(da, reason.into()), (db, reason.into())]));
    }
    let a = operand(g, users, da, Side::A, transpose_b);
    let b = operand(g, users, db, Side::B, transpose_b);
    let other = |d: NodeId, why: &str| format!("the other operand's dequantize ({}) does not fuse: {why}", loc(g, d));
    Some(match (a, b) {
        (Ok(a), Ok(b)) => match build(g, id, transpose_b, a, b) {
            Ok((op, inputs)) => Found::Apply(Fusion { op, inputs, dqs: [da, db] }),
            Err(reason) => Found::Decline(vec![(da, reason.clone()), (db, reason)]),
        },
        (Err(ra), Err(rb)) => Found::Decline(vec![(da, ra), (db, rb)]),
        (Err(ra), Ok(_)) => Found::Decline(vec![(db, other(da, &ra)), (da, ra)]),
        (Ok(_), Err(rb)) => Found::Decline(vec![(da, other(db, &rb)), (db, rb)]),
    })
}

/// The dequantize producing `v`, if any.
fn dequantize_of(g: &Graph, v: ValueId) -> Option<NodeId> {
    let producer = g.values[v].producer;
    matches!(g.nodes[producer].op, Op::Dequantize(_)).then_some(producer)
}

/// Checks one dequantized operand and reads its scales.
fn operand(g: &Graph, users: &Users, dq: NodeId, side: Side, transpose_b: bool) -> Result<Operand, String> {
    let node = &g.nodes[dq];
    let Op::Dequantize(spec) = &node.op else { unreachable!("dequantize_of returned a dequantize") };
    let out = node.outputs[0];
    if spec.zero_point.is_some() {
        return Err("zero points are not supported by qmatmul".into());
    }
    let dtype = g.ty(out).dtype;
    if dtype != DType::F32 {
        return Err(format!("the dequantize produces {dtype}, not f32: the unfused matmul multiplies operands rounded to {dtype}, which qmatmul's f32 accumulation would not reproduce"));
    }
    if let Some(other) = non_matmul_reader(g, users, out) {
        return Err(format!("the dequantized value is also read by {other}, so the dequantize must stay"));
    }
    let (q, rank) = (node.inputs[0], g.ty(out).rank());
    match (&spec.scale, &spec.granularity) {
        (ScaleSource::Literal(s), _) => Ok(Operand { q, literal: *s, vector: None }),
        (_, Granularity::Block { .. }) => Err("block granularities are not supported by qmatmul".into()),
        (_, Granularity::PerTensor) => {
            Err("the per-tensor scale is a graph value, not a literal (fold-scales turns constant scales into literals)".into())
        }
        (_, Granularity::PerToken) if side == Side::B => Err("per-token scale on b: qmatmul scales b per output channel only".into()),
        (_, Granularity::PerToken) => Ok(Operand { q, literal: 1.0, vector: Some(node.inputs[1]) }),
        (_, Granularity::PerChannel { axis }) => {
            channel_axis(*axis, rank, side, transpose_b)?;
            Ok(Operand { q, literal: 1.0, vector: Some(node.inputs[1]) })
        }
    }
}

/// Accepts a per-channel axis only where qmatmul has a `b_scale`: b's output-feature axis.
fn channel_axis(axis: i64, rank: usize, side: Side, transpose_b: bool) -> Result<(), String> {
    let axis = normalize_axis(axis, rank).ok_or_else(|| format!("per-channel axis {axis} out of range"))?;
    let (k, n) = match side {
        Side::A => (rank - 1, usize::MAX),
        Side::B if transpose_b => (rank - 1, rank - 2),
        Side::B => (rank - 2, rank - 1),
    };
    match axis {
        a if a == n => Ok(()),
        a if a == k => Err("per-channel scale on the reduction axis".into()),
        a if side == Side::A && a == rank - 2 => {
            Err("per-channel scale on a's rows: qmatmul takes row scales of a as per_token ([.., M, 1])".into())
        }
        _ => Err("per-channel scale on a batch axis".into()),
    }
}

/// The qmatmul op and inputs, checked by its type rule against the matmul's result type.
fn build(g: &Graph, matmul: NodeId, transpose_b: bool, a: Operand, b: Operand) -> Result<(Op, Vec<ValueId>), String> {
    let want = g.ty(g.nodes[matmul].outputs[0]);
    let op = Op::QMatMul(QMatMul {
        transpose_b,
        alpha: a.literal * b.literal,
        a_scale: a.vector.is_some(),
        b_scale: b.vector.is_some(),
        acc_dtype: want.dtype,
        epilogue: vec![],
        output: None,
        b_dequant: None,
    });
    let inputs: Vec<ValueId> = [a.q, b.q].into_iter().chain(a.vector).chain(b.vector).collect();
    let tys: Vec<&TensorType> = inputs.iter().map(|&v| g.ty(v)).collect();
    let got = infer::infer(&op, &tys, &[]).map_err(|m| format!("qmatmul would not type-check: {m}"))?;
    if got[0] != *want {
        return Err(format!("qmatmul would produce {}, not the matmul's {}", print::ty(g, &got[0]), print::ty(g, want)));
    }
    Ok((op, inputs))
}

/// Adds the qmatmul (with the matmul's loc) and redirects the matmul's readers to it.
fn apply_dq_matmul(g: &mut Graph, matmul: NodeId, op: Op, inputs: &[ValueId]) -> Result<NodeId, PassError> {
    let (old, name) = (g.nodes[matmul].outputs[0], g.nodes[matmul].name.clone());
    let mut b = Builder::new(g);
    b.scope = name;
    let out = b
        .add1(op, inputs, None)
        .map_err(|message| PassError::Failed { pass: "fuse-dq-matmul", message: format!("{matmul}: {message}") })?;
    g.replace_all_uses(old, out);
    Ok(g.values[out].producer)
}

/// A live reader of `v` that is not a matmul (or the graph output that returns `v`), described.
fn non_matmul_reader(g: &Graph, users: &Users, v: ValueId) -> Option<String> {
    if let Some((name, _)) = g.outputs.iter().find(|&&(_, o)| o == v) {
        return Some(format!("the graph output {name:?}"));
    }
    let other = users[v].iter().find(|&&r| !matches!(g.nodes[r].op, Op::MatMul { .. }))?;
    Some(format!("{} {:?}", g.nodes[*other].op.mnemonic(), loc(g, *other)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The report lines ending in `.dq` after running the pass on a case file (twice: the
    /// second run must change nothing).
    fn report(case: &str) -> Vec<String> {
        crate::passes::report_of_case(&FuseDqMatmul, "fuse-dq-matmul", case, ".dq")
    }

    #[test]
    fn both_dequantizes_fuse() {
        assert_eq!(report("dynamic_per_token"), ["L:a.dq: fused into qmatmul L", "L:b.dq: fused into qmatmul L"]);
    }

    #[test]
    fn declines_name_the_operand_at_fault() {
        assert_eq!(
            report("per_channel_reduction_axis"),
            [
                "L:a.dq: standalone, the other operand's dequantize (L:b.dq) does not fuse: per-channel scale on the reduction axis",
                "L:b.dq: standalone, per-channel scale on the reduction axis",
            ]
        );
        assert_eq!(report("dequantize_other_reader"), [
            "L:a.dq: standalone, the dequantized value is also read by add \"residual\", so the dequantize must stay",
            "L:b.dq: standalone, the other operand's dequantize (L:a.dq) does not fuse: the dequantized value is also read by add \"residual\", so the dequantize must stay",
        ]);
        assert_eq!(
            report("weight_only"),
            ["L:b.dq: standalone, the other matmul operand is not dequantized; qmatmul needs both operands quantized"]
        );
    }
}
