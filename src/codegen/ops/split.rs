//! `qmatmul_split`: one GEMM over the concatenated weight with a segmented epilogue
//! ([`crate::codegen::segments`]), from the same templates and plans as `qmatmul`.
//!
//! The node is planned as its family's `qmatmul` over the whole `[Σ n, K]` weight with an empty
//! epilogue (a view node appended to a copy of the graph, so `qmatmul::plan` / `wonly::plan` make
//! every operand, shape and alignment check once); then the tiles are re-picked for the widest
//! N that divides every segment (so a block never straddles two segments), and the view's
//! epilogue, result and scalars are replaced by the segments': each segment's epilogue is what
//! `qmatmul::epilogue` builds for its payload and its own operands. Launches: the skinny kernel
//! and/or the tiled GEMM per row-count bucket, exactly as for `qmatmul`.
//!
//! Kernel signature: the family's operands (`A, B` [, `SCALE` [, `ZP`]]), the shared epilogue
//! inputs (`a_scale`, `b_scale` concatenated), each segment's inputs `s<i>_add<j>`, `Y0, Y1, …`,
//! `M`, each segment's `s<i>_alpha`, `s<i>_out_scale`, `s<i>_out_rcp`.

use super::prologue;
use super::qmatmul::{self, classify, describe, GemmPlan};
use super::skinny::{self, SkinnySpec};
use super::wonly::{self, WonlyPlan, WonlySpec};
use crate::codegen::gemm::{self, Epilogue, GemmSpec};
use crate::codegen::kernel::{Arg, LowerCx, LowerError, Lowered};
use crate::codegen::segments::{check_tile, EpilogueSegment};
use crate::ir::{Dim, Graph, NodeId, Op, QMatMul, SplitMatMul, TensorType, ValueId};

/// Lowers a `qmatmul_split` node to its launches.
pub fn lower(cx: &LowerCx, node: NodeId) -> Result<Lowered, LowerError> {
    let err = |reason: String| cx.error(node, reason);
    let n = &cx.graph.nodes[node];
    let Op::SplitMatMul(s) = &n.op else { return Err(err(format!("`{}` is not a qmatmul_split", n.op.mnemonic()))) };
    let first = s.first().ok_or_else(|| err("no segments".into()))?;
    if n.inputs.len() != s.arity() || n.outputs.len() != s.segments.len() || s.segments.len() < 2 {
        return Err(err(format!("{} operands and {} results for {} segments", n.inputs.len(), n.outputs.len(), s.segments.len())));
    }
    let segments = segment_epilogues(cx, node, s).map_err(err)?;
    let width = segments.iter().fold(0, |g, seg| gcd(g, seg.n));
    let epilogue = Epilogue::segmented(segments).map_err(err)?;
    let (view, vnode) = view(cx.graph, node, s, first).map_err(err)?;
    let sub = LowerCx { graph: &view, sm: cx.sm, options: cx.options, paged: cx.paged };
    let relabel = |e: LowerError| err(e.reason);
    let vy = view.nodes[vnode].outputs[0];
    let shape = cx.max_shape(n.inputs[0]);
    let max_m: u64 = shape[..shape.len().saturating_sub(1)].iter().product();
    let fit = Fit { width, max_m, exact_fp8: cx.options.exact_fp8 };
    let prologue = prologue::of_reader(cx, node);
    let launches = if first.b_dequant.is_some() {
        let plan = wonly::plan(&sub, vnode).map_err(relabel)?;
        let plan = WonlyPlan { prologue, ..wonly_segmented(plan, epilogue, fit, args_tail(cx, node, vy)).map_err(err)? };
        plan.launches().map_err(|e| e.to_string())
    } else {
        let plan = qmatmul::plan(&sub, vnode).map_err(relabel)?;
        GemmPlan { prologue, ..gemm_segmented(plan, epilogue, fit, args_tail(cx, node, vy)).map_err(err)? }.launches()
    };
    launches.map(Lowered::Launches).map_err(err)
}

/// The argument list after the family's operands and shared scales: each segment's epilogue
/// operands, its results, `M` — as a function of the view's arguments (cut at the view's result
/// `vy`) and the final epilogue (its scalars end the list).
fn args_tail<'a>(cx: &'a LowerCx<'a>, node: NodeId, vy: ValueId) -> impl Fn(&[Arg], &Epilogue) -> Result<Vec<Arg>, String> + 'a {
    move |view_args: &[Arg], epi: &Epilogue| {
        let n = &cx.graph.nodes[node];
        let Op::SplitMatMul(s) = &n.op else { return Err("not a qmatmul_split".into()) };
        let at = view_args.iter().position(|a| *a == Arg::Value(vy)).ok_or("the view's plan has no result argument")?;
        let mut args = view_args[..at].to_vec();
        args.extend(n.inputs[s.prefix()..].iter().map(|&v| Arg::Value(v)));
        args.extend(n.outputs.iter().map(|&y| Arg::Value(y)));
        args.push(view_args.get(at + 1).cloned().ok_or("the view's plan has no M argument")?);
        args.extend(gemm::scalar_args(epi));
        Ok(args)
    }
}

/// What the re-picked tiles must fit: every segment is a multiple of `width` columns.
#[derive(Clone, Copy)]
struct Fit {
    width: u32,
    max_m: u64,
    exact_fp8: bool,
}

/// The tiled/skinny plan with tiles re-picked for the segments and the segmented epilogue.
fn gemm_segmented(
    mut plan: GemmPlan,
    epilogue: Epilogue,
    fit: Fit,
    tail: impl Fn(&[Arg], &Epilogue) -> Result<Vec<Arg>, String>,
) -> Result<GemmPlan, String> {
    let (total, k) = (plan.spec.n, plan.spec.k);
    plan.spec = GemmSpec { n: total, ..GemmSpec::for_problem(plan.spec.operand, fit.width, k, fit.max_m, fit.exact_fp8) };
    check_tile(&epilogue.segments, plan.spec.tile_n)?;
    plan.skinny = skinny_for(plan.skinny, fit.width, total, &epilogue);
    plan.args = tail(&plan.args, &epilogue)?;
    plan.epilogue = epilogue;
    Ok(plan)
}

/// The weight-only plan with tiles re-picked for the segments and the segmented epilogue; the
/// GEMM serves every M when the skinny kernel's blocks do not fit the segments.
fn wonly_segmented(
    mut plan: WonlyPlan,
    epilogue: Epilogue,
    fit: Fit,
    tail: impl Fn(&[Arg], &Epilogue) -> Result<Vec<Arg>, String>,
) -> Result<WonlyPlan, String> {
    let total = epilogue.segments.iter().map(|s| s.n).sum();
    let skinny_act = plan.skinny.and_then(|s| match s.operands {
        skinny::Operands::Wonly { act, .. } => Some((act, s.k)),
        _ => None,
    });
    let (act, k) = plan.gemm.map(|g| (g.act, g.k)).or(skinny_act).ok_or("the weight-only plan has no kernel")?;
    plan.skinny = skinny_for(plan.skinny, fit.width, total, &epilogue);
    if plan.gemm.is_some() || plan.skinny.is_none() {
        let spec = WonlySpec { n: total, ..WonlySpec::gemm_for(act, fit.width, k, fit.max_m) };
        check_tile(&epilogue.segments, spec.tile_n)?;
        plan.gemm = Some(spec);
    }
    plan.args = tail(&plan.args, &epilogue)?;
    plan.epilogue = epilogue;
    Ok(plan)
}

/// The skinny kernel re-picked for `width` over `total` columns, if its blocks tile the segments.
fn skinny_for(spec: Option<SkinnySpec>, width: u32, total: u32, epi: &Epilogue) -> Option<SkinnySpec> {
    let s = skinny::spec_for(spec?.operands, width, spec?.k)?;
    let s = SkinnySpec { n: total, ..s };
    check_tile(&epi.segments, s.block_cols()).ok().map(|_| s)
}

/// Each segment's epilogue from its payload and operands, checked against its result.
fn segment_epilogues(cx: &LowerCx, node: NodeId, s: &SplitMatMul) -> Result<Vec<EpilogueSegment>, String> {
    let g = cx.graph;
    let n = &g.nodes[node];
    let mut out = Vec::with_capacity(s.segments.len());
    for ((seg, (lo, rows, operand, count)), &y) in s.segments.iter().zip(s.layout()).zip(&n.outputs) {
        let y_shape = &g.ty(y).shape;
        let mut kinds = Vec::with_capacity(count);
        for &v in &n.inputs[operand..operand + count] {
            let t = g.ty(v);
            let index = classify(y_shape, &t.shape).filter(|_| t.dtype.is_wide_float());
            kinds.push((t.dtype, index.ok_or_else(|| format!("epilogue operand {} does not broadcast to its segment", describe(cx, v)))?));
        }
        let epilogue = qmatmul::epilogue(&seg.mm, &kinds)?;
        if epilogue.store.dtype() != g.ty(y).dtype {
            return Err(format!("segment {} stores {} but its result is {}", out.len(), epilogue.store.dtype(), g.ty(y).dtype));
        }
        let to_u32 = |x: u64| u32::try_from(x).map_err(|_| format!("segment columns {x} are too many"));
        out.push(EpilogueSegment { lo: to_u32(lo)?, n: to_u32(rows)?, epilogue });
    }
    Ok(out)
}

/// A copy of the graph with the split's whole GEMM appended as a `qmatmul` without epilogue.
fn view(g: &Graph, node: NodeId, s: &SplitMatMul, first: &QMatMul) -> Result<(Graph, NodeId), String> {
    let n = &g.nodes[node];
    let a = g.ty(n.inputs[0]);
    let lead = a.shape.get(..a.rank().saturating_sub(1)).ok_or("a has no rows")?;
    let shape = lead.iter().copied().chain([Dim::Fixed(s.total_n())]).collect();
    let op = Op::QMatMul(QMatMul { epilogue: vec![], output: None, ..first.clone() });
    let mut view = g.clone();
    let ty = TensorType { dtype: first.acc_dtype, shape };
    let id = view.add_node(op, &n.inputs[..s.prefix()], vec![ty], n.name.clone());
    Ok((view, id))
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}
