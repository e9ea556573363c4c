//! `fuse-norm-prologue`: an RMSNorm (alone or with a static quantize) whose only reader is a
//! GEMM's activation operand is marked `prologue`: where that GEMM runs its skinny kernel (few
//! rows: decode), the kernel normalises (and quantizes) each activation row itself as it loads
//! it, and the norm has no launch of its own — one launch fewer per norm and step.
//!
//! ```text
//! before:
//!   %5 = rmsnorm %0, %1 {eps=1e-05} : f16[B,S,576] loc("L.input_layernorm")
//!   %6, %7, %8 = qmatmul_split %5, %2 {transpose_b, segments=[…]} : f16[B,S,576], f16[B,S,192], f16[B,S,192] loc("L.{q,k,v}_proj")
//! after:
//!   %5 = rmsnorm %0, %1 {eps=1e-05, prologue=true} : f16[B,S,576] loc("L.input_layernorm")
//!   %6, %7, %8 = qmatmul_split %5, %2 {transpose_b, segments=[…]} : f16[B,S,576], f16[B,S,192], f16[B,S,192] loc("L.{q,k,v}_proj")
//! ```
//!
//! Rule `norm-prologue`: a live `rmsnorm` or `rmsnorm_quantize` meeting
//! [`crate::ir::prologue`]'s conditions (f16/bf16 rows of fixed length; a static per-tensor
//! `f8e4m3`/`i8` quantize without `keep_normed`; the result read once, as operand `a` of a
//! `qmatmul`, `qmatmul_split` or `qmatmul_glu`, and not a graph output) gets `prologue`.
//! A norm read by one GEMM but of another kind (a dynamic quantize, `keep_normed`, f32 rows) is
//! logged with the reason at debug level (the fusion report lists Q/DQ nodes only).
//!
//! Exact: the flag is a schedule hint; the interpreter ignores it and the values are those of the
//! unmarked graph. The kernel computes the same per-row f64 statistics and per-element roundings
//! as the norm kernel (`templates/ops.cuh`), so only the order of the f64 sum of squares differs.
//! Idempotent: a marked norm is left as it is.
//!
//! Interactions: runs after `merge-gate-up` and `merge-sibling-gemms`, which leave each decoder
//! norm with its one reader (the Q/K/V GEMM, the gate+up GEMM, the LM head); before them the
//! input norm has three readers. Opt-in ([`super::pipeline::OPT_IN`]): the kernels match the
//! interpreter on an H100, but a SmolLM2 decode step with the pass measured slower (each GEMM that
//! carries a norm starts its weight stream only after the rows' statistics; docs/decoders.md).

use super::{loc, Pass, PassCx, PassError};
use crate::ir::prologue::{prologue_kind_ok, prologue_reader};
use crate::ir::{Graph, Op};

/// `fuse-norm-prologue`.
pub struct FuseNormPrologue;

impl Pass for FuseNormPrologue {
    fn name(&self) -> &'static str {
        "fuse-norm-prologue"
    }

    fn run(&self, g: &mut Graph, _cx: &mut PassCx) -> Result<bool, PassError> {
        let live = g.live_nodes();
        let mut changed = false;
        for id in g.nodes.ids().collect::<Vec<_>>() {
            if !live[id.index()] || !is_unmarked_rmsnorm(&g.nodes[id].op) {
                continue;
            }
            let Ok(reader) = prologue_reader(g, &live, id) else { continue };
            if let Err(reason) = prologue_kind_ok(g, id) {
                tracing::debug!(rule = "norm-prologue", node = %loc(g, id), reader = %reader, "declined: {reason}");
                continue;
            }
            tracing::debug!(rule = "norm-prologue", node = %id, reader = %reader);
            mark(&mut g.nodes[id].op);
            changed = true;
        }
        Ok(changed)
    }
}

/// An `rmsnorm` or `rmsnorm_quantize` not yet marked.
fn is_unmarked_rmsnorm(op: &Op) -> bool {
    matches!(op, Op::RmsNorm { prologue: false, .. } | Op::NormQuantize { kind: crate::ir::NormKind::RmsNorm, prologue: false, .. })
}

/// Sets the `prologue` flag of a norm.
fn mark(op: &mut Op) {
    if let Op::RmsNorm { prologue, .. } | Op::NormQuantize { prologue, .. } = op {
        *prologue = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_only_rms_norms() {
        let mut op = Op::RmsNorm { eps: 1e-5, prologue: false };
        assert!(is_unmarked_rmsnorm(&op));
        mark(&mut op);
        assert_eq!(op, Op::RmsNorm { eps: 1e-5, prologue: true });
        assert!(!is_unmarked_rmsnorm(&op));
        assert!(!is_unmarked_rmsnorm(&Op::LayerNorm { eps: 1e-5 }));
    }
}
