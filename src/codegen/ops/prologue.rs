//! Norm prologues of skinny GEMMs: a norm marked `prologue` (`fuse-norm-prologue`; invariants in
//! [`crate::ir::prologue`]) is computed by its reader's skinny kernel (`templates/gemm_skinny.cu`,
//! `PROLOGUE`) for the shapes where that kernel runs (`M ≤ 16`), and launches on its own only
//! where the reader runs the tiled GEMM.
//!
//! - The reader (`qmatmul`, `qmatmul_split`, `qmatmul_glu`, weight-only or not) asks
//!   [`of_reader`]: its skinny launch then reads the norm's `x` in place of `a`, and appends
//!   `GAMMA` (the norm's γ) and `QSCALE` (the literal quantize scale; 1 without a quantize) to its
//!   arguments ([`NormPrologue::skinny_args`]).
//! - The norm asks [`norm_guard`]: when its reader's launches include such a skinny launch, the
//!   norm's own launch gets the complement of that launch's guard (`M > 16`); a reader that always
//!   runs skinny leaves the norm a launch whose guard never holds.
//!
//! A prologue the skinny kernel cannot take (its operands do not match the norm's result) is
//! ignored: the reader runs the plain skinny kernel on the norm's result, and the norm launches.

use crate::codegen::kernel::{Arg, Launch, LowerCx, LowerError};
use crate::codegen::ops::skinny::{Operands, TEMPLATE as SKINNY};
use crate::ir::prologue::checked_reader;
use crate::ir::{DType, NodeId, Op, ScaleSource};
use crate::plan::{Guard, Scalar};

/// What the skinny kernel's prologue computes (part of the kernel's source).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PrologueSpec {
    /// The norm's input dtype (f16 / bf16).
    pub x: DType,
    /// γ's dtype (f16 / bf16 / f32).
    pub gamma: DType,
    /// The norm's result dtype, before any quantize (`via`).
    pub y: DType,
    /// The quantize's codes (`f8e4m3` or `i8`), or `None` for the norm alone.
    pub quant: Option<DType>,
    /// The norm's epsilon, as f32 bits.
    pub eps_bits: u32,
}

impl PrologueSpec {
    /// The template's `PROLOGUE`: 1 norm only, 2 with an E4M3 quantize, 3 with an I8 one.
    pub fn code(&self) -> u32 {
        match self.quant {
            None => 1,
            Some(DType::F8E4M3) => 2,
            Some(_) => 3,
        }
    }

    /// Whether a skinny kernel over `operands` can take this prologue: its activation operand is
    /// exactly what the prologue produces.
    pub fn fits(&self, operands: &Operands) -> bool {
        use crate::codegen::gemm::Operand;
        let act = |op: Operand| op.dtype() == self.y && self.quant.is_none();
        match operands {
            Operands::Wide(op) | Operands::Wonly { act: op, .. } => act(*op),
            Operands::E4M3 => self.quant == Some(DType::F8E4M3),
            Operands::I8 => self.quant == Some(DType::I8),
        }
    }
}

/// A reader's prologue: the kernel part and the launch's values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormPrologue {
    /// The source-level part.
    pub spec: PrologueSpec,
    /// The norm's input `x` (read in place of the GEMM's `a`).
    pub x: crate::ir::ValueId,
    /// The norm's γ.
    pub gamma: crate::ir::ValueId,
    /// The quantize's literal scale (1 without a quantize).
    pub scale: f32,
}

impl NormPrologue {
    /// The skinny launch's arguments from the GEMM's: `x` for `a`, then `GAMMA` and `QSCALE` last.
    pub fn skinny_args(&self, args: &[Arg]) -> Vec<Arg> {
        let mut out = args.to_vec();
        if let Some(a) = out.first_mut() {
            *a = Arg::Value(self.x);
        }
        out.push(Arg::Value(self.gamma));
        out.push(Arg::Scalar(Scalar::F32(self.scale)));
        out
    }
}

/// The prologue of GEMM node `gemm`: the norm producing its `a` when that norm is marked
/// `prologue` and `gemm` is its one reader.
pub fn of_reader(cx: &LowerCx, gemm: NodeId) -> Option<NormPrologue> {
    let g = cx.graph;
    let norm = g.values[*g.nodes[gemm].inputs.first()?].producer;
    let live = g.live_nodes();
    if checked_reader(g, &live, norm)? != Ok(gemm) {
        return None;
    }
    let n = &g.nodes[norm];
    let (eps, y, quant, scale) = match &n.op {
        Op::RmsNorm { eps, .. } => (*eps, g.ty(n.outputs[0]).dtype, None, 1.0),
        Op::NormQuantize { eps, via, quant, .. } => {
            let ScaleSource::Literal(s) = quant.scale else { return None };
            (*eps, *via, Some(quant.storage), s)
        }
        _ => return None,
    };
    let spec = PrologueSpec { x: g.ty(n.inputs[0]).dtype, gamma: g.ty(n.inputs[1]).dtype, y, quant, eps_bits: eps.to_bits() };
    Some(NormPrologue { spec, x: n.inputs[0], gamma: n.inputs[1], scale })
}

/// The guard of a `prologue` norm's own launch: the complement of its reader's skinny launch that
/// computes it, or `None` (launch always) when the reader has no such launch.
pub fn norm_guard(cx: &LowerCx, norm: NodeId) -> Result<Option<Guard>, LowerError> {
    let g = cx.graph;
    let live = g.live_nodes();
    let Some(Ok(reader)) = checked_reader(g, &live, norm) else { return Ok(None) };
    let crate::codegen::kernel::Lowered::Launches(launches) = super::lower_node(cx, reader)? else { return Ok(None) };
    let x = g.nodes[norm].inputs[0];
    let takes = |l: &&Launch| l.kernel.template == SKINNY && l.args.first() == Some(&Arg::Value(x));
    Ok(launches.iter().find(takes).map(|l| complement(l.when.as_ref(), cx.rows(x))))
}

/// The guard under which the skinny launch guarded by `when` does not run.
fn complement(when: Option<&Guard>, rows: crate::plan::DimExpr) -> Guard {
    match when {
        Some(Guard::RowsAtMost { rows, max }) => Guard::RowsAbove { rows: rows.clone(), min: *max },
        // Always skinny (M ≤ 16 in every shape of the plan): a guard that never holds.
        _ => Guard::RowsAbove { rows, min: u64::MAX },
    }
}
