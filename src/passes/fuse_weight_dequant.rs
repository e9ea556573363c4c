//! `fuse-weight-dequant`: a linear layer whose weight is dequantized to the activation's f16/bf16
//! dtype (weight-only quantization: W8A16, W4A16, FP8 or NVFP4 weights) becomes a `qmatmul` that
//! reads the weight codes and dequantizes them itself (`b_dequant`), so the GPU loads 4- or 8-bit
//! weights instead of a materialised f16 copy.
//!
//! ```text
//! before:
//!   %w = weight @L.weight.u4 : u4[1536,384] loc("L:b.q")
//!   %s = weight @L.weight.scale : f32[1536,3]
//!   %z = weight @L.weight.zero : u8[1536,3]
//!   %wd = dequantize %w {u4, block(1:128), scale=%s, zero=%z} : f16[1536,384] loc("L:b.dq")
//!   %y = matmul %x, %wd {transpose_b} : f16[B,S,1536] loc("L")
//! after:
//!   %y = qmatmul %x, %w {transpose_b, alpha=1.0, b_dequant(u4,block(1:128),scale=%s,zero=%z), acc=f16} : f16[B,S,1536] loc("L")
//! ```
//!
//! Rule `weight_dequant`: `matmul(a, dequantize(qw, spec) : T){transpose_b}` ⇒
//! `qmatmul(a, qw, spec's scale [, zero]){transpose_b, alpha=1, b_dequant=spec, acc=T}` where
//! `a : T[.., K]`, T ∈ {f16, bf16} is the dequantize's output dtype and `qw` is a `weight` (a
//! checkpoint tensor, or one `fold-constants` quantized offline). The `qmatmul` type rule decides
//! the rest: storage `i8`/`u8`/`i4`/`u4`/`f8e4m3`/`f4e2m1`, granularity `per_channel(0)`,
//! `block(1:G)` or `block(0:R,1:C)`, f32 scales, `u8` zero points.
//!
//! Exact: `qmatmul` with `b_dequant` runs the `dequantize` kernel to T on the same inputs, then the
//! matmul kernel into f32 and rounds to `acc = T` after multiplying by `alpha = 1`: what the
//! unfused dequantize and matmul compute, bit for bit.
//!
//! Not fired, without a report: a dequantize producing f32 (activation-quantized recipes, left to
//! `fuse-dq-matmul`, whose decline stands). An `a` dequantized to T too (the FP8-block and NVFP4
//! activations Hopper emulates) is just a T operand: the rule fires. Declined, with the reason on
//! the dequantize (`L:b.dq`): `transpose_a`, the `[K, N]` layout (no `transpose_b`), codes
//! that are not a `weight`, a dequantize that a node other than such a matmul (or a graph output)
//! also reads, since it would have to stay, and whatever the `qmatmul` type rule rejects
//! (granularity, storage, scale or zero-point types), with its message.
//!
//! Idempotent: the fused node is not a matmul. Readers are counted among live nodes only
//! (`dce::live_users`), so a dequantize shared by several fitting matmuls fuses into each; a
//! changed graph is compacted.
//!
//! Interacting passes: after `fold-constants` (which stores `quantize(weight)` as the codes) and
//! `fuse-dq-matmul` (f32 dequantizes), before `lift-linear` (which would otherwise see no weight
//! and leave the matmul alone) and `fuse-epilogue`, which grows the new qmatmul's epilogue.

use super::dce::output_uses;
use super::dce::Users;
use super::rule::{self, Applied, Found};
use super::{loc, Pass, PassCx, PassError};
use crate::ir::{infer, print, Builder, DType, Graph, NodeId, Op, QMatMul, TensorType, ValueId};

/// `fuse-weight-dequant`.
pub struct FuseWeightDequant;

impl Pass for FuseWeightDequant {
    fn name(&self) -> &'static str {
        "fuse-weight-dequant"
    }

    fn run(&self, g: &mut Graph, cx: &mut PassCx) -> Result<bool, PassError> {
        rule::run(g, cx, "weight_dequant", match_weight_dequant, |g, id, f: Fusion| {
            let node = apply_weight_dequant(g, id, f.op, &f.inputs)?;
            Ok(Applied { node, into: "qmatmul", fused: vec![f.dq], declined: vec![] })
        })
    }
}

/// The qmatmul that replaces a matmul, and the dequantize it absorbs.
struct Fusion {
    op: Op,
    inputs: Vec<ValueId>,
    dq: NodeId,
}

/// `matmul(a, dequantize(qw, spec) : T){transpose_b} => qmatmul(a, qw; b_dequant=spec, acc=T)`
/// for T ∈ {f16, bf16} and `qw` a weight: the qmatmul dequantizes to T exactly as the DQ did.
fn match_weight_dequant(g: &Graph, users: &Users, id: NodeId) -> Option<Found<Fusion>> {
    let node = &g.nodes[id];
    let Op::MatMul { .. } = node.op else { return None };
    let dq = g.values[node.inputs[1]].producer;
    let Op::Dequantize(spec) = &g.nodes[dq].op else { return None };
    if !matches!(g.ty(node.inputs[1]).dtype, DType::F16 | DType::BF16) {
        return None;
    }
    let live = !users[node.outputs[0]].is_empty() || output_uses(g, node.outputs[0]) > 0;
    if !live {
        return None;
    }
    let decline = |reason: String| Some(Found::Decline(vec![(dq, reason)]));
    if let Err(reason) = fits(g, id) {
        return decline(reason);
    }
    let qw = g.nodes[dq].inputs[0];
    if !matches!(g.producer(qw).op, Op::Weight { .. }) {
        let what = g.producer(qw).op.mnemonic();
        return decline(format!("the codes come from a `{what}`, not a weight: b_dequant reads constant weights only"));
    }
    if let Some(other) = blocking_reader(g, users, node.inputs[1]) {
        return decline(format!("the dequantized weight is also read by {other}, so the dequantize must stay"));
    }
    let op = Op::QMatMul(QMatMul::weight_only(spec.clone(), g.ty(node.outputs[0]).dtype, vec![]));
    let inputs: Vec<ValueId> = [node.inputs[0]].into_iter().chain(g.nodes[dq].inputs.iter().copied()).collect();
    match type_check(g, id, &op, &inputs) {
        Ok(()) => Some(Found::Apply(Fusion { op, inputs, dq })),
        Err(reason) => decline(reason),
    }
}

/// Checks the matmul `id` itself: the `nn.Linear` layout, `a` not transposed. An `a` that is itself
/// dequantized to T (FP8-block and NVFP4 activations emulated on Hopper) is an ordinary T operand.
fn fits(g: &Graph, id: NodeId) -> Result<(), String> {
    let node = &g.nodes[id];
    let Op::MatMul { transpose_a, transpose_b } = node.op else { return Err("not a matmul".into()) };
    if transpose_a {
        return Err("transpose_a is not supported by qmatmul".into());
    }
    if !transpose_b {
        return Err("the weight is read in the [K, N] layout; b_dequant needs the [N, K] layout (transpose_b)".into());
    }
    Ok(())
}

/// A live reader of the dequantized weight `v` that would keep the dequantize alive (anything but
/// a matmul reading it as a fitting `b`), or the graph output returning `v`, described.
fn blocking_reader(g: &Graph, users: &Users, v: ValueId) -> Option<String> {
    if let Some((name, _)) = g.outputs.iter().find(|&&(_, o)| o == v) {
        return Some(format!("the graph output {name:?}"));
    }
    let fuses = |r: NodeId| matches!(g.nodes[r].op, Op::MatMul { .. }) && g.nodes[r].inputs[1] == v && fits(g, r).is_ok();
    let other = users[v].iter().find(|&&r| !fuses(r))?;
    Some(format!("{} {:?}", g.nodes[*other].op.mnemonic(), loc(g, *other)))
}

/// Checks the qmatmul with its type rule against the matmul's result type.
fn type_check(g: &Graph, matmul: NodeId, op: &Op, inputs: &[ValueId]) -> Result<(), String> {
    let want = g.ty(g.nodes[matmul].outputs[0]);
    let tys: Vec<&TensorType> = inputs.iter().map(|&v| g.ty(v)).collect();
    let got = infer::infer(op, &tys, &[]).map_err(|m| format!("qmatmul would not type-check: {m}"))?;
    if got[0] != *want {
        return Err(format!("qmatmul would produce {}, not the matmul's {}", print::ty(g, &got[0]), print::ty(g, want)));
    }
    Ok(())
}

/// Adds the qmatmul (with the matmul's loc) and redirects the matmul's readers to it.
fn apply_weight_dequant(g: &mut Graph, matmul: NodeId, op: Op, inputs: &[ValueId]) -> Result<NodeId, PassError> {
    let (old, name) = (g.nodes[matmul].outputs[0], g.nodes[matmul].name.clone());
    let mut b = Builder::new(g);
    b.scope = name;
    let out = b
        .add1(op, inputs, None)
        .map_err(|message| PassError::Failed { pass: "fuse-weight-dequant", message: format!("{matmul}: {message}") })?;
    g.replace_all_uses(old, out);
    Ok(g.values[out].producer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The report lines of weight dequantizes (`:b.dq`) after running the pass on a case file
    /// (twice: the second run must change nothing).
    fn report(case: &str) -> Vec<String> {
        crate::passes::report_of_case(&FuseWeightDequant, "fuse-weight-dequant", case, ":b.dq")
    }

    #[test]
    fn weight_dequantize_fuses() {
        assert_eq!(report("w4a16_group_zero_point"), ["L:b.dq: fused into qmatmul L"]);
    }

    #[test]
    fn declines_name_their_reason() {
        assert_eq!(
            report("dequantize_other_reader"),
            ["L:b.dq: standalone, the dequantized weight is also read by add \"probe\", so the dequantize must stay"]
        );
        assert_eq!(report("activation_dequantized"), ["L:b.dq: fused into qmatmul L"]);
        let per_tensor = report("per_tensor_scale");
        assert!(per_tensor[0].contains("b_dequant granularity must be per_channel(0)"), "{per_tensor:?}");
    }
}
