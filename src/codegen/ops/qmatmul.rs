//! `qmatmul`: one GEMM kernel from `templates/gemm.cu` per node (see [`crate::codegen::gemm`] and
//! the template's header for the design and every index mapping).
//!
//! Semantics (the reference interpreter's, `src/interp/ops/fused.rs`): for `a [.., M, K]` and a
//! weight `b [N, K]` (`transpose_b`), `acc = Σ_k a·b` in f32 (i8: exact in integers, then
//! one RNE conversion to f32); `x = acc·alpha` (`·a_scale[m]` with
//! a per-row `f32 [.., M, 1]` operand, then `·b_scale[n]` with a per-channel `f32 [N]` operand, in
//! that order, each product rounded to f32); `x = round(acc_dtype, x)`; then every epilogue step
//! in order: `cast(d)` → `round_d(x)`, `add(d)` → `round_d(x + operand)` (the next operand, read
//! in its own dtype), `unary(d)` → `round_d(f(x))`; finally the per-tensor output quantize
//! `qf_quantize_e4m3(x, scale)` or `qf_quantize_i8(x, scale)` if any, else `x` stored in the last
//! step's dtype. The whole chain is one [`Expr`], printed by the expression IR.
//!
//! Operands: `f8e4m3 × f8e4m3` (wgmma k32 with per-128 promotion, or exact `mma.sync`),
//! `i8 × i8` (`mma.sync` s8 with exact s32 sums, converted to f32 once with RNE, then the same
//! epilogue; K ≤ [`gemm::MAX_I8_K`]), `f16 × f16` and `bf16 × bf16` (wgmma k16, f32
//! accumulation). The output quantize is per-tensor with a literal scale, to `f8e4m3` or `i8`. `N` must be a multiple of 64 and `K` of 16
//! elements (FP8) or 8 (f16/bf16); `M` (the product of `a`'s leading extents) is a run-time
//! value.
//!
//! Kernel signature, in order: `A`, `B`, then `a_scale`, `b_scale` (when present) and one
//! `add<i>` per `add` step (exactly the node's operands after `a` and `b`), then `Y` (the result),
//! `M: i32`, and the per-launch `f32`s `alpha` (when ≠ 1), `out_scale` and `out_rcp` (with an
//! output quantize): per-layer constants are arguments, so every layer's GEMM of one shape is one
//! kernel. Grid `(ceil_div(M, tile_m) · N/tile_n, 1, 1)`.
//!
//! Decode (M ≤ 16): when M can be at most [`skinny::MAX_ROWS`], the node also gets the skinny
//! kernel ([`skinny`], weight streaming at memory bandwidth) with the same arguments, guarded by
//! `M ≤ 16`, the tiled GEMM then guarded by `M > 16`; when M is at most 16 in every shape of the
//! plan, only the skinny kernel. Shapes the skinny template does not take (a weight row not of
//! whole 64-byte steps) keep the tiled GEMM for every M.

use crate::codegen::expr::{Expr, Fn1};
use crate::codegen::gemm::{self, Epilogue, EpilogueInput, GemmError, GemmSpec, Index, Operand, Store};
use crate::codegen::kernel::{Arg, KernelDef, Launch, LowerCx, LowerError, Lowered};
use crate::codegen::ops::prologue::{self, NormPrologue};
use crate::codegen::ops::skinny::{self, Operands, SkinnySpec};
use crate::ir::{DType, Dim, EpilogueOp, Granularity, NodeId, Op, QMatMul, ScaleSource, ValueId};
use crate::plan::{DimExpr, Scalar};

/// Everything a `qmatmul` node's kernel is made of, before rendering: the bench tunes `spec`
/// and renders the rest unchanged, so benchmarks and plans share one code path.
#[derive(Debug, Clone, PartialEq)]
pub struct GemmPlan {
    /// Operands, tiles and mainloop (the defaults of [`GemmSpec::for_problem`] for M's maximum).
    pub spec: GemmSpec,
    /// The epilogue, from the node's payload.
    pub epilogue: Epilogue,
    /// M: the product of `a`'s leading extents.
    pub m: DimExpr,
    /// The launch arguments, one per kernel parameter (the same for both kernels).
    pub args: Vec<Arg>,
    /// The skinny kernel, when M can be at most [`skinny::MAX_ROWS`] and the shape fits it.
    pub skinny: Option<SkinnySpec>,
    /// Whether M can exceed [`skinny::MAX_ROWS`] (the tiled GEMM is needed).
    pub tiled: bool,
    /// The norm the skinny kernel computes as its prologue ([`prologue::of_reader`]), if any.
    pub prologue: Option<NormPrologue>,
}

impl GemmPlan {
    /// The tiled GEMM kernel.
    pub fn render(&self) -> Result<KernelDef, GemmError> {
        gemm::render(&self.spec, &self.epilogue, self.m.clone())
    }

    /// The tiled GEMM with its arguments, unguarded (the bench's kernels).
    pub fn launch(&self) -> Result<Launch, GemmError> {
        Ok(Launch { kernel: self.render()?, args: self.args.clone(), when: None })
    }

    /// The plan's launches: the skinny kernel and/or the tiled GEMM, guarded by `M ≤ 16` /
    /// `M > 16` when both exist.
    pub fn launches(&self) -> Result<Vec<Launch>, String> {
        let tiled = self.tiled || self.skinny.is_none();
        let guards = (self.skinny.is_some() && tiled).then(|| skinny::guards(&self.m));
        let mut out = Vec::new();
        if let Some(spec) = &self.skinny {
            let when = guards.as_ref().map(|g| g.0.clone());
            out.push(skinny::launch(spec, &self.epilogue, &self.args, when, self.prologue.as_ref()).map_err(|e| e.to_string())?);
        }
        if tiled {
            out.push(Launch { kernel: self.render().map_err(|e| e.to_string())?, args: self.args.clone(), when: guards.map(|g| g.1) });
        }
        Ok(out)
    }
}

/// Lowers a `qmatmul` node to its launches ([`GemmPlan::launches`]).
pub fn lower(cx: &LowerCx, node: NodeId) -> Result<Lowered, LowerError> {
    let plan = GemmPlan { prologue: prologue::of_reader(cx, node), ..plan(cx, node)? };
    plan.launches().map(Lowered::Launches).map_err(|e| cx.error(node, e))
}

/// Checks that the node fits the GEMM template and collects its kernel's ingredients.
pub fn plan(cx: &LowerCx, node: NodeId) -> Result<GemmPlan, LowerError> {
    let err = |reason: String| cx.error(node, reason);
    let g = cx.graph;
    let n = &g.nodes[node];
    let Op::QMatMul(q) = &n.op else { return Err(err(format!("`{}` is not a qmatmul", n.op.mnemonic()))) };
    if n.inputs.len() != q.arity() || n.outputs.len() != 1 {
        return Err(err(format!("{} operands and {} results; the payload wants {} and 1", n.inputs.len(), n.outputs.len(), q.arity())));
    }
    let (a, b, y) = (n.inputs[0], n.inputs[1], n.outputs[0]);
    let (ta, tb) = (g.ty(a), g.ty(b));
    let operand = match (Operand::from_dtype(ta.dtype), Operand::from_dtype(tb.dtype)) {
        (Some(x), Some(w)) if x == w => x,
        _ => {
            return Err(err(format!(
                "operands {} × {} are not supported: the GEMM takes f8e4m3 × f8e4m3, i8 × i8, f16 × f16 or bf16 × bf16",
                ta.dtype, tb.dtype
            )))
        }
    };
    if !q.transpose_b {
        return Err(err("b must be read as [N, K] (transpose_b); the GEMM has no [K, N] weight layout".into()));
    }
    if !weight_rooted(cx, b) {
        return Err(err(format!(
            "b (%{}) is not a weight: the GEMM's B operand is an [N, K] weight shared by every row (products of two activations are `attention`'s)",
            b.index()
        )));
    }
    let (nn, k) = match tb.shape.as_slice() {
        [Dim::Fixed(nn), Dim::Fixed(k)] => (*nn, *k),
        _ => return Err(err(format!("b must be a fixed 2-D [N, K] weight, got {}", shape_str(cx, &tb.shape)))),
    };
    if ta.shape.len() < 2 {
        return Err(err(format!("a must be [.., M, K], got {}", shape_str(cx, &ta.shape))));
    }
    if ta.shape.last() != Some(&Dim::Fixed(k)) {
        return Err(err(format!("a {} does not end in K = {k} (b is [{nn}, {k}])", shape_str(cx, &ta.shape))));
    }
    if nn == 0 || nn % 64 != 0 {
        return Err(err(format!("N = {nn} is not a multiple of 64, the GEMM's smallest N tile")));
    }
    let k_align = 16 / u64::from(operand.bytes());
    if k == 0 || k % k_align != 0 {
        return Err(err(format!("K = {k} is not a multiple of {k_align} ({} operands are copied in 16-byte chunks)", ta.dtype)));
    }
    let (n32, k32) = match (u32::try_from(nn), u32::try_from(k)) {
        (Ok(n32), Ok(k32)) if k.saturating_mul(u64::from(operand.bytes())) <= i32::MAX as u64 => (n32, k32),
        _ => return Err(err(format!("N = {nn} or K = {k} is too large"))),
    };

    // The result: [.., M, N] in the epilogue's last dtype (or the output quantize's storage).
    let out_shape = &g.ty(y).shape;
    let lead = &ta.shape[..ta.shape.len() - 1];
    if out_shape.len() != ta.shape.len() || &out_shape[..lead.len()] != lead || out_shape.last() != Some(&Dim::Fixed(nn)) {
        return Err(err(format!("result {} is not a's leading extents followed by N = {nn}", shape_str(cx, out_shape))));
    }
    let m = cx.rows(a);
    let max_m: u64 = cx.max_shape(a)[..lead.len()].iter().product();
    let spec = GemmSpec::for_problem(operand, n32, k32, max_m, cx.options.exact_fp8);
    spec.check_m(max_m).map_err(|_| err(format!("M up to {max_m} rows exceeds what one launch of the GEMM covers (i32)")))?;

    // Scale vectors and epilogue operands, in operand order.
    let mut rest = n.inputs[2..].iter().copied();
    let mut take = |what: &str| rest.next().ok_or_else(|| err(format!("missing {what} operand")));
    let mut scales = Vec::new();
    if q.a_scale {
        let v = take("a_scale")?;
        let want: Vec<Dim> = lead.iter().copied().chain([Dim::Fixed(1)]).collect();
        if g.ty(v).dtype != DType::F32 || g.ty(v).shape.as_slice() != want.as_slice() {
            return Err(err(format!("a_scale must be f32{}, got {}", shape_str(cx, &want), describe(cx, v))));
        }
        scales.push(v);
    }
    if q.b_scale {
        let v = take("b_scale")?;
        if g.ty(v).dtype != DType::F32 || g.ty(v).shape.as_slice() != [Dim::Fixed(nn)] {
            return Err(err(format!("b_scale must be f32[{nn}], got {}", describe(cx, v))));
        }
        scales.push(v);
    }
    let mut adds = Vec::new();
    for step in q.epilogue.iter().filter(|s| s.op.takes_operand()) {
        let v = take("epilogue")?;
        let t = g.ty(v);
        if !t.dtype.is_wide_float() {
            return Err(err(format!("epilogue operand {} must be f32, f16 or bf16", describe(cx, v))));
        }
        let index = classify(out_shape, &t.shape).ok_or_else(|| {
            err(format!(
                "epilogue operand {} of the add({}) step broadcasts to the result {} in a way the GEMM epilogue does not read \
                 (only [N], [.., M, N], [.., M, 1] or a single element)",
                describe(cx, v),
                step.dtype,
                shape_str(cx, out_shape)
            ))
        })?;
        adds.push((v, t.dtype, index));
    }

    let add_kinds: Vec<(DType, Index)> = adds.iter().map(|&(_, d, i)| (d, i)).collect();
    let epilogue = epilogue(q, &add_kinds).map_err(err)?;
    if epilogue.store.dtype() != g.ty(y).dtype {
        return Err(err(format!("the epilogue stores {} but the result is {}", epilogue.store.dtype(), g.ty(y).dtype)));
    }
    let mut args = vec![Arg::Value(a), Arg::Value(b)];
    args.extend(scales.into_iter().chain(adds.iter().map(|&(v, _, _)| v)).map(Arg::Value));
    args.push(Arg::Value(y));
    args.push(Arg::Scalar(Scalar::Dim(m.clone())));
    args.extend(gemm::scalar_args(&epilogue));
    // M can be small unless it is a constant above 16 (symbolic row counts start at 1).
    let small = m.as_const().is_none_or(|v| v <= skinny::MAX_ROWS);
    let skinny = small.then(|| skinny::spec_for(Operands::of_operand(operand), n32, k32)).flatten();
    Ok(GemmPlan { spec, epilogue, m, args, skinny, tiled: max_m > skinny::MAX_ROWS, prologue: None })
}

/// The epilogue of `q`, given the dtype and broadcast of each `add` step's operand in order:
/// inputs `a_scale` (per row), `b_scale` (per column), `add0`, `add1`, … and the value
/// `round_acc(acc·alpha·a_scale·b_scale)` followed by the steps, as one [`Expr`].
pub fn epilogue(q: &QMatMul, adds: &[(DType, Index)]) -> Result<Epilogue, String> {
    let mut inputs = Vec::new();
    let mut x = Expr::var("acc");
    // `acc · 1` is `acc` for every f32 (NaN, ±0, ±inf included): no multiplication printed.
    // alpha is per layer (static scales folded in): a kernel parameter, not a literal.
    if q.alpha != 1.0 {
        x = x.mul(Expr::param("alpha", q.alpha));
    }
    if q.a_scale {
        let s = EpilogueInput { name: "a_scale".into(), dtype: DType::F32, index: Index::PerRow };
        x = x.mul(s.value());
        inputs.push(s);
    }
    if q.b_scale {
        let s = EpilogueInput { name: "b_scale".into(), dtype: DType::F32, index: Index::PerColumn };
        x = x.mul(s.value());
        inputs.push(s);
    }
    if !q.acc_dtype.is_wide_float() {
        return Err(format!("acc_dtype {} is not f32, f16 or bf16", q.acc_dtype));
    }
    x = x.round(q.acc_dtype);
    let mut dtype = q.acc_dtype;
    let mut operands = adds.iter();
    for (i, step) in q.epilogue.iter().enumerate() {
        if !step.dtype.is_wide_float() {
            return Err(format!("epilogue step {i} rounds to {}, not f32, f16 or bf16", step.dtype));
        }
        x = match step.op {
            EpilogueOp::Cast => x,
            op @ (EpilogueOp::Add | EpilogueOp::Mul) => {
                let &(d, index) = operands.next().ok_or_else(|| format!("no operand for epilogue step {i} ({op:?})"))?;
                let input = EpilogueInput {
                    name: format!("add{}", inputs.len() - usize::from(q.a_scale) - usize::from(q.b_scale)),
                    dtype: d,
                    index,
                };
                let v = if op == EpilogueOp::Add { x.add(input.value()) } else { x.mul(input.value()) };
                inputs.push(input);
                v
            }
            EpilogueOp::Unary(u) => x.apply(Fn1::from_unary(u)),
        }
        .round(step.dtype);
        dtype = step.dtype;
    }
    if operands.next().is_some() {
        return Err(format!("{} operands for {} add/mul steps", adds.len(), q.epilogue.iter().filter(|s| s.op.takes_operand()).count()));
    }
    let store = match &q.output {
        None => Store::Float(dtype),
        Some(spec) => {
            let ScaleSource::Literal(scale) = spec.scale else {
                return Err("the output quantize must have a literal scale".into());
            };
            if spec.granularity != Granularity::PerTensor || spec.zero_point.is_some() {
                return Err("the output quantize must be per-tensor without a zero point".into());
            }
            if !(scale.is_finite() && scale > 0.0) {
                return Err(format!("output scale {scale} is not finite and positive"));
            }
            match spec.storage {
                DType::F8E4M3 => Store::E4M3 { scale },
                DType::I8 => Store::I8 { scale },
                other => return Err(format!("output quantize to {other} is not supported (only f8e4m3 and i8)")),
            }
        }
    };
    Ok(Epilogue { inputs, value: x, store, segments: vec![], glu: None })
}

/// How an operand of shape `t` broadcasts to the result `out = [.., M, N]`, if the epilogue can
/// read it.
pub(crate) fn classify(out: &[Dim], t: &[Dim]) -> Option<Index> {
    let r = out.len();
    if t.len() > r {
        return None;
    }
    let padded: Vec<Dim> = std::iter::repeat_n(Dim::Fixed(1), r - t.len()).chain(t.iter().copied()).collect();
    let ones = |s: &[Dim]| s.iter().all(|&d| d == Dim::Fixed(1));
    if padded == out {
        Some(Index::Full)
    } else if ones(&padded[..r - 1]) && padded[r - 1] == out[r - 1] {
        Some(Index::PerColumn)
    } else if padded[..r - 1] == out[..r - 1] && padded[r - 1] == Dim::Fixed(1) {
        Some(Index::PerRow)
    } else if ones(&padded) {
        Some(Index::Single)
    } else {
        None
    }
}

/// `b` is a weight, possibly through `cast`s (what `lift-linear` accepts).
pub(crate) fn weight_rooted(cx: &LowerCx, mut v: ValueId) -> bool {
    loop {
        let p = cx.graph.producer(v);
        match p.op {
            Op::Weight { .. } => return true,
            Op::Cast if p.inputs.len() == 1 => v = p.inputs[0],
            _ => return false,
        }
    }
}

/// `%7 (f16[B,S,384])`.
pub(crate) fn describe(cx: &LowerCx, v: ValueId) -> String {
    format!("%{} ({})", v.index(), crate::ir::print::ty(cx.graph, cx.graph.ty(v)))
}

/// `[B,S,384]`, with the symbols' names.
pub(crate) fn shape_str(cx: &LowerCx, shape: &[Dim]) -> String {
    let dims: Vec<String> = shape.iter().map(|&d| cx.dim(d).to_string()).collect();
    format!("[{}]", dims.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{EpilogueStep, QuantSpec, UnaryOp};

    fn q(epilogue: Vec<EpilogueStep>) -> QMatMul {
        QMatMul {
            transpose_b: true,
            alpha: 0.5,
            a_scale: true,
            b_scale: true,
            acc_dtype: DType::F32,
            epilogue,
            output: None,
            b_dequant: None,
        }
    }

    #[test]
    fn epilogue_rounds_every_step_in_order() {
        let steps = vec![
            EpilogueStep { op: EpilogueOp::Cast, dtype: DType::F16 },
            EpilogueStep { op: EpilogueOp::Add, dtype: DType::F16 },
            EpilogueStep { op: EpilogueOp::Unary(UnaryOp::Gelu), dtype: DType::F16 },
            EpilogueStep { op: EpilogueOp::Add, dtype: DType::F32 },
        ];
        let mut qm = q(steps);
        qm.output = Some(QuantSpec::per_tensor(DType::F8E4M3, 0.25));
        let e = epilogue(&qm, &[(DType::F16, Index::PerColumn), (DType::F16, Index::Full)]).expect("builds");
        assert_eq!(
            e.value.to_cuda(),
            "qf_round_f16(qf_gelu(qf_round_f16(qf_round_f16(acc * alpha * a_scale_v * b_scale_v) + add0_v))) + add1_v"
        );
        assert_eq!(e.scalars(), vec![("alpha".into(), 0.5), ("out_scale".into(), 0.25), ("out_rcp".into(), 4.0)]);
        let names: Vec<&str> = e.inputs.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["a_scale", "b_scale", "add0", "add1"]);
        assert_eq!(e.store, Store::E4M3 { scale: 0.25 });
        e.validate().expect("valid");
    }

    #[test]
    fn unsupported_outputs_and_operand_counts_are_errors() {
        let mut qm = q(vec![]);
        qm.output = Some(QuantSpec::per_tensor(DType::U8, 0.25));
        assert!(epilogue(&qm, &[]).unwrap_err().contains("only f8e4m3 and i8"));
        qm.output = Some(QuantSpec::per_tensor(DType::I8, 0.25));
        assert_eq!(epilogue(&qm, &[]).expect("i8 output").store, Store::I8 { scale: 0.25 });
        let qm = q(vec![EpilogueStep { op: EpilogueOp::Add, dtype: DType::F16 }]);
        assert!(epilogue(&qm, &[]).unwrap_err().contains("no operand"));
        assert!(epilogue(&q(vec![]), &[(DType::F16, Index::Full)]).unwrap_err().contains("operands for 0 add/mul steps"));
    }

    #[test]
    fn broadcasts() {
        let (b, s) = (Dim::Sym(crate::ir::SymId::from(0usize)), Dim::Sym(crate::ir::SymId::from(1usize)));
        let out = [b, s, Dim::Fixed(384)];
        assert_eq!(classify(&out, &[Dim::Fixed(384)]), Some(Index::PerColumn));
        assert_eq!(classify(&out, &[Dim::Fixed(1), Dim::Fixed(384)]), Some(Index::PerColumn));
        assert_eq!(classify(&out, &out), Some(Index::Full));
        assert_eq!(classify(&out, &[b, s, Dim::Fixed(1)]), Some(Index::PerRow));
        assert_eq!(classify(&out, &[]), Some(Index::Single));
        assert_eq!(classify(&out, &[s, Dim::Fixed(384)]), None);
        assert_eq!(classify(&out, &[b, Dim::Fixed(1), Dim::Fixed(384)]), None);
    }
}
