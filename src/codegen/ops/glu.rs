//! `qmatmul_glu`: one GEMM over the interleaved gate/up weight with the GLU epilogue of
//! [`crate::codegen::glu`], from the same templates and plans as `qmatmul`.
//!
//! The node is planned as its family's `qmatmul` over the whole `[2·N, K]` weight with an empty
//! epilogue (a view node appended to a copy of the graph, as `qmatmul_split` does, so
//! `qmatmul::plan` / `wonly::plan` make every operand, shape and alignment check once); then the
//! view's epilogue, result and scalars are replaced by the combined epilogue of the gate's and
//! the up projection's (each what `qmatmul::epilogue` builds for its payload and its own
//! operands, the gate's up operand read as a full `[.., M, N]` tensor of the up result's dtype).
//! Every kernel's N tile (skinny 16·k columns, tiled 64 to 256) holds whole piece pairs for the
//! pass's 8-row pieces; a tile that would not is a lowering error. Launches: the skinny kernel
//! and/or the tiled GEMM per row-count bucket, exactly as for `qmatmul`.
//!
//! Kernel signature: the family's operands (`A, B` [, `SCALE` [, `ZP`]]), the shared epilogue
//! inputs (`a_scale`, the interleaved `b_scale`), the gate's own inputs `g_add<j>`, the up
//! projection's `u_add<j>`, `Y`, `M`, `g_alpha`, `u_alpha`, the gate's `out_scale`, `out_rcp`.

use super::prologue;
use super::qmatmul::{self, classify, describe};
use super::wonly;
use crate::codegen::gemm::{self, Epilogue, Index};
use crate::codegen::glu::{check_tile, combine};
use crate::codegen::kernel::{Arg, LowerCx, LowerError, Lowered};
use crate::ir::glu_types::float_result;
use crate::ir::{DType, Dim, GluMatMul, Graph, NodeId, Op, QMatMul, TensorType, ValueId};

/// Lowers a `qmatmul_glu` node to its launches.
pub fn lower(cx: &LowerCx, node: NodeId) -> Result<Lowered, LowerError> {
    let err = |reason: String| cx.error(node, reason);
    let n = &cx.graph.nodes[node];
    let Op::GluMatMul(s) = &n.op else { return Err(err(format!("`{}` is not a qmatmul_glu", n.op.mnemonic()))) };
    if n.inputs.len() != s.arity() || n.outputs.len() != 1 {
        return Err(err(format!("{} operands and {} results; the payload wants {} and 1", n.inputs.len(), n.outputs.len(), s.arity())));
    }
    let piece = u32::try_from(s.tile).map_err(|_| err(format!("piece {} is too large", s.tile)))?;
    let epilogue = glu_epilogue(cx, node, s, piece).map_err(err)?;
    let (view, vnode) = view(cx.graph, node, s).map_err(err)?;
    let sub = LowerCx { graph: &view, sm: cx.sm, options: cx.options, paged: cx.paged };
    let relabel = |e: LowerError| err(e.reason);
    let vy = view.nodes[vnode].outputs[0];
    let args = |view_args: &[Arg]| args_of(n.inputs[s.prefix()..].iter().copied(), n.outputs[0], vy, view_args, &epilogue);
    let prologue = prologue::of_reader(cx, node);
    let launches = if s.gate.b_dequant.is_some() {
        let mut plan = wonly::plan(&sub, vnode).map_err(relabel)?;
        plan.prologue = prologue;
        let tiles = plan.skinny.map(|k| k.block_cols()).into_iter().chain(plan.gemm.map(|g| g.tile_n));
        tiles.into_iter().try_for_each(|t| check_tile(t, piece)).map_err(err)?;
        plan.args = args(&plan.args).map_err(err)?;
        plan.epilogue = epilogue;
        plan.launches().map_err(|e| e.to_string())
    } else {
        let mut plan = qmatmul::plan(&sub, vnode).map_err(relabel)?;
        plan.prologue = prologue;
        let tiles = plan.skinny.map(|k| k.block_cols()).into_iter().chain([plan.spec.tile_n]);
        tiles.into_iter().try_for_each(|t| check_tile(t, piece)).map_err(err)?;
        plan.args = args(&plan.args).map_err(err)?;
        plan.epilogue = epilogue;
        plan.launches()
    };
    launches.map(Lowered::Launches).map_err(err)
}

/// The argument list: the view's up to its result `vy` (the family's operands and the shared
/// scales), the node's epilogue operands, its result `y`, `M`, the GLU epilogue's scalars.
fn args_of(
    operands: impl Iterator<Item = ValueId>,
    y: ValueId,
    vy: ValueId,
    view_args: &[Arg],
    epi: &Epilogue,
) -> Result<Vec<Arg>, String> {
    let at = view_args.iter().position(|a| *a == Arg::Value(vy)).ok_or("the view's plan has no result argument")?;
    let mut args = view_args[..at].to_vec();
    args.extend(operands.map(Arg::Value));
    args.push(Arg::Value(y));
    args.push(view_args.get(at + 1).cloned().ok_or("the view's plan has no M argument")?);
    args.extend(gemm::scalar_args(epi));
    Ok(args)
}

/// The combined epilogue of the gate and the up projection, checked against the result.
fn glu_epilogue(cx: &LowerCx, node: NodeId, s: &GluMatMul, piece: u32) -> Result<Epilogue, String> {
    let g = cx.graph;
    let n = &g.nodes[node];
    let y = n.outputs[0];
    let kinds = |vs: &[ValueId]| -> Result<Vec<(DType, Index)>, String> {
        vs.iter()
            .map(|&v| {
                let t = g.ty(v);
                let index = classify(&g.ty(y).shape, &t.shape).filter(|_| t.dtype.is_wide_float());
                Ok((t.dtype, index.ok_or_else(|| format!("epilogue operand {} does not broadcast to the result", describe(cx, v)))?))
            })
            .collect()
    };
    let ((g0, gn), (u0, un)) = s.operand_ranges();
    let mut gate_kinds = kinds(&n.inputs[g0..g0 + gn])?;
    gate_kinds.insert(s.up_operand.min(gate_kinds.len()), (float_result(&s.up), Index::Full));
    let gate = qmatmul::epilogue(&s.gate, &gate_kinds)?;
    let up = qmatmul::epilogue(&s.up, &kinds(&n.inputs[u0..u0 + un])?)?;
    let epilogue = combine(&gate, &up, &format!("add{}", s.up_operand), piece)?;
    if epilogue.store.dtype() != g.ty(y).dtype {
        return Err(format!("the epilogue stores {} but the result is {}", epilogue.store.dtype(), g.ty(y).dtype));
    }
    Ok(epilogue)
}

/// A copy of the graph with the op's whole GEMM appended as a `qmatmul` without epilogue.
fn view(g: &Graph, node: NodeId, s: &GluMatMul) -> Result<(Graph, NodeId), String> {
    let n = &g.nodes[node];
    let a = g.ty(n.inputs[0]);
    let lead = a.shape.get(..a.rank().saturating_sub(1)).ok_or("a has no rows")?;
    let rows = g.ty(n.inputs[1]).shape.first().copied().ok_or("b has no rows")?;
    let shape = lead.iter().copied().chain([rows]).collect::<Vec<Dim>>();
    let op = Op::QMatMul(QMatMul { epilogue: vec![], output: None, ..s.gate.clone() });
    let mut view = g.clone();
    let ty = TensorType { dtype: s.gate.acc_dtype, shape: shape.into() };
    let id = view.add_node(op, &n.inputs[..s.prefix()], vec![ty], n.name.clone());
    Ok((view, id))
}
