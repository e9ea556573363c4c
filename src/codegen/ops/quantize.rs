//! `quantize`, `dequantize`, `requantize` and `quant_round_trip`.
//!
//! - Static quantize (literal or operand scale, per tensor / per channel / per token / blocks
//!   along the last axis, optional literal or operand zero point) and every dequantize/requantize
//!   are element-wise kernels ([`super::elementwise::emit`], `templates/elementwise.cu`): operands
//!   `in0` = data, then the scale and zero-point operands (broadcast along their granularity),
//!   output `out`; literal scales and zero points are `float` parameters (`c<k>`; requantize:
//!   `from_scale`, `to_scale`, `zero`), so every layer's (de)quantize of one shape is one kernel. `q = cast(x / s)` (true division; integers `cast(rint(x / s) + z)`),
//!   `x = (q − z)·s` (`__fmul_rn`, then one rounding to the output dtype).
//! - Block scales (`block(a:G, …)`, e.g. activations `block(-1:G)` with scales `[.., K/G]`, FP8
//!   weights `block(0:128,1:128)`): the walk splits every blocked axis into `[d/G, G]` and the
//!   scales broadcast along the inner part ([`View`]); d must be a fixed multiple of G (a ragged
//!   last block has no kernel yet).
//! - Packed 4-bit codes (`f4e2m1`, dequantize only): one walk index per code byte, i.e. per pair
//!   of elements (low nibble first, `src/compile/bytes.rs`), stored as a `qf_pack<T, 2>`.
//! - Dynamic quantize is a row kernel (`templates/quantize.cu`, the row engine of
//!   [`super::norm`]): signature `(x, q, scales, long long rows[, long long n])`; per token one
//!   scale per row `amax / qmax` (1 for an all-zero row) written as `f32[rows]`, per block of G
//!   along the last axis `[rows, K/G]` scales in the spec's dtype (4-bit codes packed).
//!
//! Unsupported (specific errors): dynamic per-tensor scales (a grid-wide amax), dynamic blocks off
//! the last axis, ragged static blocks, static quantize to packed 4-bit storage, i4/u4 storage.

use super::common::{broadcast_strides, literal_f32, params_of, trait_or_err, Prod};
use super::elementwise::{emit, out_extents, terms_to_exprs, Load, Operand, Spec, Term};
use super::norm::{row_launch, row_quant, Norm, RowSpec, Source};
use crate::codegen::expr::{Expr, Fn2};
use crate::codegen::kernel::{Launch, LowerCx, LowerError, Lowered};
use crate::codegen::template::Template;
use crate::ir::{normalize_axis, DType, Dim, Granularity, NodeId, Op, QuantSpec, RoundTripNorm, ScaleSource, ValueId, ZeroPoint};

const QUANTIZE: Template = Template { name: "quantize.cu", text: include_str!("../../../templates/quantize.cu") };

/// `quant_round_trip` as a row kernel (`templates/quantize.cu`, the row engine with
/// `ROUND_TRIP`): each row (with `norm`, normalised first, rounded to the result's dtype) times `pre`, quantized as `quant` says (literal, dynamic per-token or
/// dynamic blocks along the last axis), the codes dequantized in registers with the scales they
/// were made with, times `post`; only the result reaches memory.
fn round_trip(
    cx: &LowerCx,
    node: NodeId,
    norm: Option<RoundTripNorm>,
    quant: &QuantSpec,
    pre_post: (f32, f32),
) -> Result<Launch, LowerError> {
    let n = &cx.graph.nodes[node];
    let (row_norm, eps) = match norm {
        None => (Norm::None, 0.0),
        Some(RoundTripNorm { kind, eps }) => (super::norm::fused_norm(kind, &n.inputs), eps),
    };
    let (x, y) = (n.inputs[0], n.outputs[0]);
    let len = *cx.graph.shape(x).last().ok_or_else(|| cx.error(node, "a round trip needs rank ≥ 1"))?;
    let q = row_quant(cx, node, quant, (None, cx.graph.shape(x).len()), None, None)?;
    let spec = RowSpec {
        family: "quantize",
        template: QUANTIZE,
        source: Source::Dense(x),
        norm: row_norm,
        eps,
        y_dtype: cx.graph.ty(y).dtype,
        y: Some(y),
        quant: Some(q),
        round_trip: Some(pre_post),
        rows: cx.rows(x),
        len,
    };
    row_launch(cx, node, &spec)
}

/// Lowers `quantize`, `dequantize` and `requantize`.
pub fn lower(cx: &LowerCx, node: NodeId) -> Result<Lowered, LowerError> {
    let n = &cx.graph.nodes[node];
    let launch = match &n.op {
        Op::Quantize(spec) if spec.is_dynamic() => {
            let x = n.inputs[0];
            let q = row_quant(cx, node, spec, (Some(n.outputs[0]), cx.graph.shape(x).len()), n.outputs.get(1).copied(), None)?;
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
                round_trip: None,
                rows: cx.rows(x),
                len,
            };
            row_launch(cx, node, &spec)?
        }
        Op::Quantize(spec) => {
            let (x, q) = (n.inputs[0], n.outputs[0]);
            check_storage(cx, node, spec, false)?;
            let qt = trait_or_err(cx, node, spec.storage, "the quantized result")?;
            let view = View::new(cx, node, spec, cx.graph.shape(q))?;
            let mut terms = vec![view.data_term(cx, node, x)?];
            let (s, z) = scale_zero_terms(cx, node, spec, &view, &n.inputs[1..], &mut terms)?;
            let (operands, exprs, _) = terms_to_exprs(terms);
            let scalars = params_of(&exprs);
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
                extents: view.extents(),
                operands,
                compute,
                scalars,
            };
            emit(cx, node, spec)?
        }
        Op::Dequantize(spec) => dequantize(cx, node, spec)?,
        Op::QuantRoundTrip { norm, pre, quant, post } => round_trip(cx, node, *norm, quant, (*pre, *post))?,
        Op::Requantize { from_scale, via, to } => {
            let (qv, y) = (n.inputs[0], n.outputs[0]);
            check_storage(cx, node, to, false)?;
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
            // Both scales and the zero point are per layer: kernel parameters.
            let div = Expr::var("x0").mul(Expr::param("from_scale", *from_scale)).round(*via).div(Expr::param("to_scale", *to_scale));
            let mut scalars = div.params();
            let value = match to.zero_point {
                Some(ZeroPoint::Literal(z)) => {
                    let zero = Expr::param("zero", z as f32);
                    scalars.extend(zero.params());
                    format!("rintf({}) + {}", div.to_cuda(), zero.to_cuda())
                }
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
                scalars,
            };
            emit(cx, node, spec)?
        }
        other => return Err(cx.error(node, format!("internal: {} is not a quantize op", other.mnemonic()))),
    };
    Ok(Lowered::Launches(vec![launch]))
}

/// `dequantize`: `x = (q − z)·s` per element (per pair of elements for packed 4-bit codes), one
/// `__fmul_rn` in f32, rounded once to the output dtype.
fn dequantize(cx: &LowerCx, node: NodeId, spec: &QuantSpec) -> Result<Launch, LowerError> {
    let n = &cx.graph.nodes[node];
    let (qv, y) = (n.inputs[0], n.outputs[0]);
    check_storage(cx, node, spec, true)?;
    let out_dt = cx.graph.ty(y).dtype;
    let yt = trait_or_err(cx, node, out_dt, "the result")?;
    let view = View::new(cx, node, spec, cx.graph.shape(y))?;
    let mut terms = vec![view.data_term(cx, node, qv)?];
    let (s, z) = scale_zero_terms(cx, node, spec, &view, &n.inputs[1..], &mut terms)?;
    let (operands, exprs, _) = terms_to_exprs(terms);
    let scalars = params_of(&exprs);
    let value = |q: Expr| {
        let centered = match z {
            Some(z) => q.bin(Fn2::Sub, pick(&exprs, z)),
            None => q,
        };
        format!("__fmul_rn({}, {})", centered.to_cuda(), pick(&exprs, s).to_cuda())
    };
    let (out_c_type, compute) = if view.pack == 2 {
        // `x0` holds two codes, element 2i in the low nibble (src/compile/bytes.rs); the pair is
        // stored as one aligned `qf_pack<T, 2>` (ops.cuh).
        let (byte, ct) = (exprs[0].to_cuda(), PACKED_E2M1);
        let lo = value(Expr::var("q0"));
        let hi = value(Expr::var("q1"));
        (
            format!("qf_pack<{yt}::T, 2>"),
            format!(
                "        const float q0 = {ct}::load({byte} & 0xf), q1 = {ct}::load({byte} >> 4);\n        \
                 qf_pack<{yt}::T, 2> y;\n        y.e[0] = {yt}::store({lo});\n        y.e[1] = {yt}::store({hi});\n        \
                 out[i] = y;\n"
            ),
        )
    } else {
        (format!("{yt}::T"), format!("        out[i] = {yt}::store({});\n", value(exprs[0].clone())))
    };
    let spec = Spec {
        doc: format!("dequantize {} {} -> {out_dt}", spec.storage, granularity_name(&spec.granularity)),
        out: y,
        out_c_type,
        extents: view.extents(),
        operands,
        compute,
        scalars,
    };
    emit(cx, node, spec)
}

/// The `ops.cuh` trait of the one packed 4-bit storage with a kernel (its codes, one per nibble).
const PACKED_E2M1: &str = "qf_e2m1";

fn granularity_name(g: &Granularity) -> String {
    match g {
        Granularity::PerTensor => "per_tensor".into(),
        Granularity::PerChannel { axis } => format!("per_channel({axis})"),
        Granularity::PerToken => "per_token".into(),
        Granularity::Block { blocks } => {
            let b: Vec<String> = blocks.iter().map(|(a, g)| format!("{a}:{g}")).collect();
            format!("block({})", b.join(","))
        }
    }
}

/// Storage with a static kernel: f8e4m3, f8e5m2, i8, u8, and with `packed` f4e2m1 (dequantize).
fn check_storage(cx: &LowerCx, node: NodeId, spec: &QuantSpec, packed: bool) -> Result<(), LowerError> {
    if matches!(spec.storage, DType::F8E4M3 | DType::F8E5M2 | DType::I8 | DType::U8) || (packed && spec.storage == DType::F4E2M1) {
        Ok(())
    } else {
        let also = if packed { ", f4e2m1" } else { "" };
        Err(cx.error(node, format!("{} storage has no kernel yet (f8e4m3, f8e5m2, i8, u8{also})", spec.storage)))
    }
}

/// How a static (de)quantize walks its output: the output's axes, each blocked axis split into
/// `[d / G, G]` (its scales broadcast along the inner part), the last axis counted in pairs for
/// packed 4-bit codes (one code byte per walk index). Contract: a blocked axis has a fixed extent
/// that G divides; packed codes need an even, fixed last extent (and G along it), so that a pair
/// never straddles a row or a block.
struct View {
    /// Walk axes, outer → inner (the output's shape when nothing is split or packed).
    dims: Vec<Dim>,
    /// Per output axis: split into blocks.
    blocked: Vec<bool>,
    /// Elements per walk index: 2 for packed 4-bit codes, else 1.
    pack: u64,
}

impl View {
    fn new(cx: &LowerCx, node: NodeId, spec: &QuantSpec, shape: &[Dim]) -> Result<Self, LowerError> {
        let rank = shape.len();
        let pack = if spec.storage.bits() == 4 { 2 } else { 1 };
        let mut group = vec![None; rank];
        if let Granularity::Block { blocks } = &spec.granularity {
            for &(axis, g) in blocks {
                let a =
                    normalize_axis(axis, rank).filter(|_| g > 0).ok_or_else(|| cx.error(node, format!("block axis {axis} of size {g}")))?;
                group[a] = Some(g);
            }
        }
        if pack == 2 {
            if let Granularity::PerChannel { axis } = spec.granularity {
                if rank > 0 && normalize_axis(axis, rank) == Some(rank - 1) {
                    return Err(cx.error(node, "per-channel scales along the packed last axis have no kernel yet"));
                }
            }
            if rank == 0 {
                return Err(cx.error(node, "packed 4-bit codes need rank ≥ 1"));
            }
        }
        let mut dims = Vec::with_capacity(rank + 2);
        for (a, &d) in shape.iter().enumerate() {
            let p = if a + 1 == rank { pack } else { 1 };
            if group[a].is_none() && p == 1 {
                dims.push(d);
                continue;
            }
            let Dim::Fixed(k) = d else {
                return Err(cx.error(node, format!("block scales / packed codes need a fixed extent along axis {a}")));
            };
            let g = group[a].unwrap_or(k);
            if k % g != 0 {
                return Err(cx.error(node, format!("a ragged last block (axis {a} of {k}, blocks of {g}) has no kernel yet")));
            }
            if g % p != 0 {
                return Err(cx.error(node, format!("4-bit codes are packed two per byte: {g} elements (a block or a row) must be even")));
            }
            if group[a].is_some() {
                dims.push(Dim::Fixed(k / g));
            }
            dims.push(Dim::Fixed(g / p));
        }
        Ok(View { dims, blocked: group.iter().map(Option::is_some).collect(), pack })
    }

    fn rank(&self) -> usize {
        self.dims.len()
    }

    fn extents(&self) -> Vec<Prod> {
        self.dims.iter().map(|&d| Prod::of(d)).collect()
    }

    /// The walk strides of a block-scale operand of shape `scales` (one extent per output axis,
    /// `d / G` along blocked ones): broadcast along the inner part of every split axis.
    fn block_scale_strides(&self, scales: &[Dim]) -> Option<Vec<Option<Prod>>> {
        if scales.len() != self.blocked.len() {
            return None;
        }
        let mut shape = Vec::with_capacity(self.rank());
        for (&d, &b) in scales.iter().zip(&self.blocked) {
            shape.push(d);
            if b {
                shape.push(Dim::Fixed(1));
            }
        }
        Some(broadcast_strides(&shape, self.rank()))
    }

    /// The data operand (same shape as the output): a literal, a pointer read as f32, or for
    /// packed codes a pointer to raw bytes of two codes each.
    fn data_term(&self, cx: &LowerCx, node: NodeId, v: ValueId) -> Result<Term, LowerError> {
        let strides = broadcast_strides(&self.dims, self.rank());
        if self.pack == 2 {
            return Ok(Term::Ptr(Operand { value: v, c_type: "uint8_t".into(), load: Load::Raw, strides }));
        }
        if let Some(x) = literal_f32(cx, v) {
            return Ok(Term::Lit(x));
        }
        let t = trait_or_err(cx, node, cx.graph.ty(v).dtype, "the operand")?;
        Ok(Term::Ptr(Operand { value: v, c_type: format!("{t}::T"), load: Load::Float(t), strides }))
    }
}

/// Index of a term in the expression list.
#[derive(Clone, Copy)]
struct TermIx(usize);

fn pick(exprs: &[Expr], t: TermIx) -> Expr {
    exprs[t.0].clone()
}

/// Appends the scale and zero-point terms of a static spec walked as `view` (operands `extra`:
/// scale then zero point, as `QuantSpec::extra_inputs`), returning their positions.
fn scale_zero_terms(
    cx: &LowerCx,
    node: NodeId,
    spec: &QuantSpec,
    view: &View,
    extra: &[ValueId],
    terms: &mut Vec<Term>,
) -> Result<(TermIx, Option<TermIx>), LowerError> {
    let rank = view.rank();
    // Strides of a scale-shaped operand against the walk.
    let strides = |v: ValueId| -> Result<Vec<Option<Prod>>, LowerError> {
        match &spec.granularity {
            Granularity::PerTensor => Ok(vec![None; rank]),
            Granularity::PerToken => Ok(broadcast_strides(cx.graph.shape(v), rank)),
            Granularity::PerChannel { axis } => {
                let a = normalize_axis(*axis, rank).ok_or_else(|| cx.error(node, format!("per-channel axis {axis} out of range")))?;
                Ok((0..rank).map(|i| (i == a && view.dims[a] != Dim::Fixed(1)).then(Prod::one)).collect())
            }
            // Scales `[.., K/G]` against the walk `[.., K/G, G / pack]`: broadcast along the block.
            Granularity::Block { .. } => {
                let shape = cx.graph.shape(v);
                view.block_scale_strides(shape)
                    .ok_or_else(|| cx.error(node, format!("block scales of rank {} for data of rank {}", shape.len(), view.blocked.len())))
            }
        }
    };
    let mut extra = extra.iter().copied();
    let operand = |v: ValueId, what: &str, terms: &mut Vec<Term>| -> Result<TermIx, LowerError> {
        let t = match literal_f32(cx, v) {
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
