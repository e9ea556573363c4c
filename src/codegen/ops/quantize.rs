//! `quantize`, `dequantize` and `requantize`.
//!
//! - Static quantize (literal or operand scale, per tensor / per channel / per token, optional
//!   literal or operand zero point) and every dequantize/requantize are element-wise kernels
//!   ([`super::elementwise::emit`], `templates/elementwise.cu`): operands `in0` = data, then the
//!   scale and zero-point operands (broadcast along their granularity), output `out`.
//!   `q = cast(x / s)` (true division; integers `cast(rint(x / s) + z)`), `x = (q − z)·s`.
//! - Dynamic per-token quantize is a row kernel (`templates/quantize.cu`, the row engine of
//!   [`super::norm`]): signature `(x, q, scales, long long rows[, long long n])`, one scale per
//!   row `amax / qmax` (1 for an all-zero row) written as `f32[rows]`.
//!
//! Unsupported (specific errors): dynamic per-tensor scales (a grid-wide amax), block scales,
//! packed 4-bit storage, dynamic scale dtypes other than f32.

use super::common::{trait_or_err, Prod};
use super::elementwise::{emit, float_term, out_extents, terms_to_exprs, Load, Operand, Spec, Term};
use super::norm::{row_launch, row_quant, Norm, RowSpec, Source};
use crate::codegen::expr::{Expr, Fn2};
use crate::codegen::kernel::{LowerCx, LowerError, Lowered};
use crate::codegen::template::Template;
use crate::ir::{normalize_axis, DType, Dim, Granularity, NodeId, Op, QuantSpec, ScaleSource, ValueId, ZeroPoint};

const QUANTIZE: Template = Template { name: "quantize.cu", text: include_str!("../../../templates/quantize.cu") };

/// Lowers `quantize`, `dequantize` and `requantize`.
pub fn lower(cx: &LowerCx, node: NodeId) -> Result<Lowered, LowerError> {
    let n = &cx.graph.nodes[node];
    let launch = match &n.op {
        Op::Quantize(spec) if spec.is_dynamic() => {
            let x = n.inputs[0];
            let q = row_quant(cx, node, spec, n.outputs[0], n.outputs.get(1).copied(), None)?;
            let len = *cx.graph.shape(x).last().ok_or_else(|| cx.error(node, "per-token quantization needs rank ≥ 1"))?;
            let spec = RowSpec {
                family: "quantize",
                template: QUANTIZE,
                source: Source::Dense(x),
                norm: Norm::None,
                eps: 0.0,
                y_dtype: cx.graph.ty(x).dtype,
                y: None,
                quant: Some(q),
                rows: cx.rows(x),
                len,
            };
            row_launch(cx, node, &spec)?
        }
        Op::Quantize(spec) => {
            let (x, q) = (n.inputs[0], n.outputs[0]);
            check_storage(cx, node, spec)?;
            let qt = trait_or_err(cx, node, spec.storage, "the quantized result")?;
            let mut terms = vec![float_term(cx, node, x, cx.graph.shape(q).len(), "the operand")?];
            let (s, z) = scale_zero_terms(cx, node, spec, x, &n.inputs[1..], &mut terms)?;
            let (operands, exprs, _) = terms_to_exprs(terms);
            let xe = exprs[0].clone();
            let div = xe.div(pick(&exprs, s));
            let value = match z {
                Some(z) => format!("rintf({}) + {}", div.to_cuda(), pick(&exprs, z).to_cuda()),
                None => div.to_cuda(),
            };
            let compute = format!("        out[i] = {qt}::store({value});\n");
            let spec = Spec {
                doc: format!("quantize -> {}", spec.storage),
                out: q,
                out_c_type: format!("{qt}::T"),
                extents: out_extents(cx, q),
                operands,
                compute,
            };
            emit(cx, node, spec)?
        }
        Op::Dequantize(spec) => {
            let (qv, y) = (n.inputs[0], n.outputs[0]);
            check_storage(cx, node, spec)?;
            let out_dt = cx.graph.ty(y).dtype;
            let yt = trait_or_err(cx, node, out_dt, "the result")?;
            let mut terms = vec![float_term(cx, node, qv, cx.graph.shape(y).len(), "the operand")?];
            let (s, z) = scale_zero_terms(cx, node, spec, qv, &n.inputs[1..], &mut terms)?;
            let (operands, exprs, _) = terms_to_exprs(terms);
            let centered = match z {
                Some(z) => exprs[0].clone().bin(Fn2::Sub, pick(&exprs, z)),
                None => exprs[0].clone(),
            };
            let compute = format!("        out[i] = {yt}::store({});\n", centered.mul(pick(&exprs, s)).to_cuda());
            let spec = Spec {
                doc: format!("dequantize {} -> {out_dt}", spec.storage),
                out: y,
                out_c_type: format!("{yt}::T"),
                extents: out_extents(cx, y),
                operands,
                compute,
            };
            emit(cx, node, spec)?
        }
        Op::Requantize { from_scale, via, to } => {
            let (qv, y) = (n.inputs[0], n.outputs[0]);
            check_storage(cx, node, to)?;
            let (ScaleSource::Literal(to_scale), Granularity::PerTensor) = (&to.scale, &to.granularity) else {
                return Err(cx.error(node, "requantize needs a per-tensor literal output scale"));
            };
            let qt = trait_or_err(cx, node, to.storage, "the result")?;
            let it = trait_or_err(cx, node, cx.graph.ty(qv).dtype, "the operand")?;
            trait_or_err(cx, node, *via, "via")?;
            let operand = Operand {
                value: qv,
                c_type: format!("{it}::T"),
                load: Load::Float(it),
                strides: super::common::dense_strides(cx.graph.shape(qv)),
            };
            let div = Expr::var("x0").mul(Expr::lit(*from_scale)).round(*via).div(Expr::lit(*to_scale));
            let value = match to.zero_point {
                Some(ZeroPoint::Literal(z)) => format!("rintf({}) + {}", div.to_cuda(), Expr::lit(z as f32).to_cuda()),
                Some(ZeroPoint::Input) => return Err(cx.error(node, "requantize with an operand zero point has no kernel")),
                None => div.to_cuda(),
            };
            let compute = format!("        out[i] = {qt}::store({value});\n");
            let spec = Spec {
                doc: format!("requantize {} -> {}", cx.graph.ty(qv).dtype, to.storage),
                out: y,
                out_c_type: format!("{qt}::T"),
                extents: out_extents(cx, y),
                operands: vec![operand],
                compute,
            };
            emit(cx, node, spec)?
        }
        other => return Err(cx.error(node, format!("internal: {} is not a quantize op", other.mnemonic()))),
    };
    Ok(Lowered::Launches(vec![launch]))
}

fn check_storage(cx: &LowerCx, node: NodeId, spec: &QuantSpec) -> Result<(), LowerError> {
    if matches!(spec.storage, DType::F8E4M3 | DType::F8E5M2 | DType::I8 | DType::U8) {
        Ok(())
    } else {
        Err(cx.error(node, format!("{} storage has no kernel yet (f8e4m3, f8e5m2, i8, u8)", spec.storage)))
    }
}

/// Index of a term in the expression list.
#[derive(Clone, Copy)]
struct TermIx(usize);

fn pick(exprs: &[Expr], t: TermIx) -> Expr {
    exprs[t.0].clone()
}

/// Appends the scale and zero-point terms of a static spec over data `data` (operands `extra`:
/// scale then zero point, as `QuantSpec::extra_inputs`), returning their positions.
fn scale_zero_terms(
    cx: &LowerCx,
    node: NodeId,
    spec: &QuantSpec,
    data: ValueId,
    extra: &[ValueId],
    terms: &mut Vec<Term>,
) -> Result<(TermIx, Option<TermIx>), LowerError> {
    let shape = cx.graph.shape(data).clone();
    let rank = shape.len();
    // Strides of a scale-shaped operand against the data.
    let strides = |v: ValueId| -> Result<Vec<Option<Prod>>, LowerError> {
        match &spec.granularity {
            Granularity::PerTensor => Ok(vec![None; rank]),
            Granularity::PerToken => Ok(super::common::broadcast_strides(cx.graph.shape(v), rank)),
            Granularity::PerChannel { axis } => {
                let a = normalize_axis(*axis, rank).ok_or_else(|| cx.error(node, format!("per-channel axis {axis} out of range")))?;
                Ok((0..rank).map(|i| (i == a && shape[a] != Dim::Fixed(1)).then(Prod::one)).collect())
            }
            Granularity::Block { .. } => Err(cx.error(node, "block-scaled quantization has no kernel yet")),
        }
    };
    let mut extra = extra.iter().copied();
    let operand = |v: ValueId, what: &str, terms: &mut Vec<Term>| -> Result<TermIx, LowerError> {
        let t = match super::common::literal_f32(cx, v) {
            Some(x) => Term::Lit(x),
            None => {
                let tr = trait_or_err(cx, node, cx.graph.ty(v).dtype, what)?;
                Term::Ptr(Operand { value: v, c_type: format!("{tr}::T"), load: Load::Float(tr), strides: strides(v)? })
            }
        };
        terms.push(t);
        Ok(TermIx(terms.len() - 1))
    };
    let s = match &spec.scale {
        ScaleSource::Literal(s) => {
            if matches!(spec.granularity, Granularity::Block { .. }) {
                return Err(cx.error(node, "block-scaled quantization has no kernel yet"));
            }
            terms.push(Term::Lit(*s));
            TermIx(terms.len() - 1)
        }
        ScaleSource::Input => {
            let v = extra.next().ok_or_else(|| cx.error(node, "internal: missing scale operand"))?;
            operand(v, "the scale", terms)?
        }
        ScaleSource::Dynamic { .. } => return Err(cx.error(node, "internal: dynamic scale in a static kernel")),
    };
    let z = match &spec.zero_point {
        None => None,
        Some(ZeroPoint::Literal(z)) => {
            terms.push(Term::Lit(*z as f32));
            Some(TermIx(terms.len() - 1))
        }
        Some(ZeroPoint::Input) => {
            let v = extra.next().ok_or_else(|| cx.error(node, "internal: missing zero-point operand"))?;
            Some(operand(v, "the zero point", terms)?)
        }
    };
    Ok((s, z))
}
