//! `lift-linear`: an f16/bf16 linear layer (`matmul` of an activation by a weight) becomes a
//! `qmatmul` over the same wide-float operands, so that `fuse-epilogue` fuses its bias, activation
//! and residual exactly as it does for FP8 GEMMs, and codegen sees one GEMM node per kernel
//! whatever the precision.
//!
//! ```text
//! before:
//!   %1 = weight @L.weight.f16 : f16[1536,384] loc("L")
//!   %2 = matmul %0, %1 {transpose_b} : f16[B,S,1536] loc("L")
//!   %4 = add %2, %3 : f16[B,S,1536] loc("L")
//! after:
//!   %1 = weight @L.weight.f16 : f16[1536,384] loc("L")
//!   %2 = qmatmul %0, %1 {transpose_b, alpha=1.0, acc=f16} : f16[B,S,1536] loc("L")
//!   %4 = add %2, %3 : f16[B,S,1536] loc("L")            (fuse-epilogue takes it next)
//! ```
//!
//! Rule `lift`: `matmul(a, w){transpose_b}` ⇒ `qmatmul(a, w){transpose_b, alpha=1, acc=T}` where
//! `a` and `w` are of one dtype T ∈ {f16, bf16} and `w` is a 2-D `[N, K]` value rooted at a
//! `weight` (seen through `cast`s, which `fold-constants` has normally folded already).
//!
//! Exact: `qmatmul` runs the interpreter's matmul kernel on the same operands into f32, multiplies
//! by `alpha = 1` (exact) and rounds to `acc = T`: the f32 GEMM the unfused matmul rounds to T.
//!
//! Not lifted (no Q/DQ involved, so nothing is reported): `f32` matmuls, `transpose_a`, a weight
//! without `transpose_b` (the `nn.Linear` layout is the one GEMM layout lowered), a `b` operand
//! that is not weight-rooted — attention's batched products between two activations stay
//! `matmul`s for `fuse-attention` — and a 1-D or batched weight.
//!
//! Idempotent: the lifted node is not a `matmul`. A changed graph is compacted.
//!
//! Interacting passes: runs after `fuse-dq-matmul` (whose FP8 qmatmuls it never touches) and right
//! before `fuse-epilogue`, which grows the lifted qmatmul's epilogue.

use super::{Pass, PassCx, PassError};
use crate::ir::{order, Builder, DType, Graph, NodeId, Op, QMatMul, ValueId};

/// `lift-linear`.
pub struct LiftLinear;

impl Pass for LiftLinear {
    fn name(&self) -> &'static str {
        "lift-linear"
    }

    fn run(&self, g: &mut Graph, _cx: &mut PassCx) -> Result<bool, PassError> {
        let mut changed = false;
        for id in g.nodes.ids().collect::<Vec<_>>() {
            let Some(lift) = match_lift(g, id) else { continue };
            apply_lift(g, id, lift)?;
            tracing::debug!(rule = "lift", node = %id);
            changed = true;
        }
        if changed {
            *g = order::compact(g);
        }
        Ok(changed)
    }
}

/// The qmatmul a matmul becomes.
struct Lift {
    op: QMatMul,
    inputs: [ValueId; 2],
}

/// `matmul(a, w){transpose_b} => qmatmul(a, w){transpose_b, alpha=1, acc=T}` for T ∈ {f16, bf16}
/// and `w` a 2-D weight-rooted value.
fn match_lift(g: &Graph, id: NodeId) -> Option<Lift> {
    let node = &g.nodes[id];
    let Op::MatMul { transpose_a: false, transpose_b: true } = node.op else { return None };
    let (a, w) = (node.inputs[0], node.inputs[1]);
    let dtype = g.ty(a).dtype;
    if !matches!(dtype, DType::F16 | DType::BF16) || g.ty(w).dtype != dtype || g.ty(w).rank() != 2 || !weight_rooted(g, w) {
        return None;
    }
    let op = QMatMul {
        transpose_b: true,
        alpha: 1.0,
        a_scale: false,
        b_scale: false,
        acc_dtype: dtype,
        epilogue: vec![],
        output: None,
        b_dequant: None,
    };
    Some(Lift { op, inputs: [a, w] })
}

/// True when `v` is a `weight` seen through any number of `cast`s.
fn weight_rooted(g: &Graph, mut v: ValueId) -> bool {
    loop {
        let node = g.producer(v);
        match node.op {
            Op::Weight { .. } => return true,
            Op::Cast => v = node.inputs[0],
            _ => return false,
        }
    }
}

/// Adds the qmatmul (with the matmul's loc) and redirects the matmul's readers to it.
fn apply_lift(g: &mut Graph, id: NodeId, lift: Lift) -> Result<(), PassError> {
    let (old, name) = (g.nodes[id].outputs[0], g.nodes[id].name.clone());
    let mut b = Builder::new(g);
    b.scope = name;
    let fail = |message: String| PassError::Failed { pass: "lift-linear", message: format!("{id}: {message}") };
    let out = b.add1(Op::QMatMul(lift.op), &lift.inputs, None).map_err(fail)?;
    if g.ty(out) != g.ty(old) {
        return Err(fail("the lifted qmatmul's type differs from the matmul's".into()));
    }
    g.replace_all_uses(old, out);
    Ok(())
}
