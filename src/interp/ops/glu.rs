//! `qmatmul_glu`: the up projection is the `qmatmul` of its payload on `a` and its rows of the
//! interleaved weight-side operands, and the result is the gate's `qmatmul` on its rows with
//! that result as its `up_operand`-th epilogue operand ([`crate::ir::GluMatMul`]): bit for bit
//! the two `qmatmul`s the op replaces.

use super::{fused, Numerics, OutType};
use crate::interp::tensor::Tensor;
use crate::ir::glu_types::{float_result, piece_rows};
use crate::ir::GluMatMul;
use std::sync::Arc;

/// Runs the up projection, then the gate reading it (see the module doc).
pub(super) fn glu_matmul(s: &GluMatMul, args: Vec<Arc<Tensor>>, outs: &[OutType], num: Numerics) -> Result<Vec<Tensor>, String> {
    let [out] = outs else { return Err(format!("qmatmul_glu has one result, not {}", outs.len())) };
    if args.len() != s.arity() {
        return Err(format!("qmatmul_glu takes {} operands, got {}", s.arity(), args.len()));
    }
    let (mut gate, mut up) = (Vec::with_capacity(args.len() + 1), Vec::with_capacity(args.len()));
    for (i, t) in args.iter().take(s.prefix()).enumerate() {
        if crate::ir::split_types::is_weight_side(&s.gate, i) {
            let piece = usize::try_from(piece_rows(&s.gate, i, s.tile)).map_err(|_| "the piece does not fit in memory")?;
            let (g, u) = t.deinterleave_rows(piece)?;
            gate.push(Arc::new(g));
            up.push(Arc::new(u));
        } else {
            gate.push(t.clone());
            up.push(t.clone());
        }
    }
    let ((g0, gn), (u0, un)) = s.operand_ranges();
    up.extend(args[u0..u0 + un].iter().cloned());
    let up_ty = OutType { dtype: float_result(&s.up), shape: out.shape.clone() };
    let [u] =
        <[Tensor; 1]>::try_from(fused::qmatmul(&s.up, up.into_iter(), &[up_ty], num)?).map_err(|_| "the up projection has one result")?;
    let own = &args[g0..g0 + gn];
    gate.extend(own[..s.up_operand].iter().cloned());
    gate.push(Arc::new(u));
    gate.extend(own[s.up_operand..].iter().cloned());
    fused::qmatmul(&s.gate, gate.into_iter(), outs, num)
}
