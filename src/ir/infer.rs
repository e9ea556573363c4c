//! Type rules: the output types each op derives from its input types.
//!
//! Ops whose result type is not a function of their inputs (`input`, `weight`, `scalar`, `iota`,
//! `cast`, `reshape`, `dequantize`) take it from the *declared* type and check it instead.

use super::{
    normalize_axis, shape_text, Attention, DType, Dim, EmbedLayerNorm, Granularity, NormKind, Op, QMatMul, QuantSpec, ReduceOp,
    RoundTripNorm, ScaleSource, Shape, TensorType, ZeroPoint,
};

/// Result of a type rule: the output types, or why the node is ill-typed.
pub type InferResult = Result<Vec<TensorType>, String>;

/// Output types of `op` applied to `inputs`; `declared` supplies the types of ops that need them.
pub fn infer(op: &Op, inputs: &[&TensorType], declared: &[TensorType]) -> InferResult {
    expect_arity(op, inputs.len())?;
    let one = |t: TensorType| Ok(vec![t]);
    match op {
        Op::Input { .. } | Op::Weight { .. } => one(declared_first(declared)?),
        Op::Scalar { .. } => {
            let t = declared_first(declared)?;
            if t.rank() != 0 {
                return Err("scalar must have rank 0".into());
            }
            one(t)
        }
        Op::Iota => {
            let t = declared_first(declared)?;
            if t.rank() != 1 || !t.dtype.is_int() {
                return Err("iota must produce a rank-1 integer tensor".into());
            }
            one(t)
        }
        Op::Cast => one(inputs[0].with_dtype(declared_first(declared)?.dtype)),
        Op::Binary(_) => binary(inputs[0], inputs[1]).map(|t| vec![t]),
        Op::Unary(_) => {
            require_float(inputs[0], "operand")?;
            one(inputs[0].clone())
        }
        Op::Gather => gather(inputs[0], inputs[1]).map(|t| vec![t]),
        Op::MatMul { transpose_a, transpose_b } => matmul(inputs[0], inputs[1], *transpose_a, *transpose_b).map(|t| vec![t]),
        Op::LayerNorm { .. } | Op::RmsNorm { .. } => norm(inputs).map(|t| vec![t]),
        Op::Softmax { axis } => {
            require_float(inputs[0], "operand")?;
            inputs[0].axis(*axis).ok_or_else(|| format!("softmax axis {axis} out of range"))?;
            one(inputs[0].clone())
        }
        Op::Reshape => reshape(inputs[0], declared_first(declared)?).map(|t| vec![t]),
        Op::Transpose { perm } => transpose(inputs[0], perm).map(|t| vec![t]),
        Op::Reduce { op, axes, keep_dims } => reduce(inputs[0], *op, axes, *keep_dims).map(|t| vec![t]),
        Op::MeanPool => mean_pool(inputs[0], inputs[1]).map(|t| vec![t]),
        Op::LastToken => last_token(inputs[0]).map(|t| vec![t]),
        Op::L2Normalize { .. } => {
            require_float(inputs[0], "operand")?;
            one(inputs[0].clone())
        }
        Op::Quantize(spec) => quantize(spec, inputs),
        Op::Dequantize(spec) => dequantize(spec, inputs, declared_first(declared)?.dtype),
        Op::Requantize { via, to, .. } => requantize(inputs[0], *via, to).map(|t| vec![t]),
        Op::QuantRoundTrip { norm, quant, .. } => quant_round_trip(*norm, quant, inputs).map(|t| vec![t]),
        Op::NormQuantize { kind, via, quant, keep_normed, .. } => norm_quantize(*kind, *via, quant, *keep_normed, inputs),
        Op::QMatMul(q) => qmatmul(q, inputs).map(|t| vec![t]),
        Op::SplitMatMul(s) => super::split_types::split_matmul(s, inputs),
        Op::GluMatMul(s) => super::glu_types::glu_matmul(s, inputs),
        Op::Attention(a) => attention(a, inputs).map(|t| vec![t]),
        Op::EmbedLayerNorm(e) => embed_layernorm(e, inputs),
        Op::Rope(r) => super::decoder_types::rope(r, inputs).map(|t| vec![t]),
        Op::CausalAttention(a) => super::decoder_types::causal_attention(a, inputs),
    }
}

/// Number of inputs each op takes.
pub fn arity(op: &Op) -> usize {
    match op {
        Op::Input { .. } | Op::Weight { .. } | Op::Scalar { .. } | Op::Iota => 0,
        Op::Cast | Op::Unary(_) | Op::Softmax { .. } | Op::Reshape | Op::Transpose { .. } => 1,
        Op::Reduce { .. } | Op::L2Normalize { .. } | Op::LastToken => 1,
        Op::Binary(_) | Op::Gather | Op::MatMul { .. } | Op::RmsNorm { .. } | Op::MeanPool => 2,
        Op::LayerNorm { .. } => 3,
        Op::Quantize(s) | Op::Dequantize(s) => 1 + s.extra_inputs(),
        Op::Requantize { .. } => 1,
        Op::QuantRoundTrip { norm, .. } => 1 + norm.map_or(0, |n| norm_params(n.kind)),
        Op::NormQuantize { kind, quant, .. } => norm_params(*kind) + 1 + quant.extra_inputs(),
        Op::QMatMul(q) => q.arity(),
        Op::SplitMatMul(s) => s.arity(),
        Op::GluMatMul(s) => s.arity(),
        Op::Attention(a) => a.arity(),
        Op::EmbedLayerNorm(e) => e.arity(),
        Op::Rope(_) => 2,
        Op::CausalAttention(a) => a.arity(),
    }
}

/// Parameter inputs of a norm after `x`: gamma and beta, or gamma.
pub fn norm_params(kind: NormKind) -> usize {
    match kind {
        NormKind::LayerNorm => 2,
        NormKind::RmsNorm | NormKind::Scale => 1,
    }
}

fn expect_arity(op: &Op, n: usize) -> Result<(), String> {
    let want = arity(op);
    if n == want {
        Ok(())
    } else {
        Err(format!("{} takes {want} input(s), got {n}", op.mnemonic()))
    }
}

fn declared_first(declared: &[TensorType]) -> Result<TensorType, String> {
    declared.first().cloned().ok_or_else(|| "missing declared output type".into())
}

fn require_float(t: &TensorType, what: &str) -> Result<(), String> {
    if t.dtype.is_wide_float() {
        Ok(())
    } else {
        Err(format!("{what} must be f32/f16/bf16, got {}", t.dtype))
    }
}

/// NumPy broadcasting of two shapes; `Dim::Fixed(1)` stretches.
pub fn broadcast_shapes(a: &Shape, b: &Shape) -> Result<Shape, String> {
    let rank = a.len().max(b.len());
    let dim = |s: &Shape, i: usize| if i + s.len() >= rank { s[i + s.len() - rank] } else { Dim::Fixed(1) };
    (0..rank)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => Ok(x),
            (Dim::Fixed(1), y) => Ok(y),
            (x, Dim::Fixed(1)) => Ok(x),
            (x, y) => Err(format!("cannot broadcast {x} with {y}")),
        })
        .collect()
}

fn binary(a: &TensorType, b: &TensorType) -> Result<TensorType, String> {
    if a.dtype != b.dtype {
        return Err(format!("operand dtypes differ: {} vs {}", a.dtype, b.dtype));
    }
    Ok(TensorType { dtype: a.dtype, shape: broadcast_shapes(&a.shape, &b.shape)? })
}

fn gather(table: &TensorType, idx: &TensorType) -> Result<TensorType, String> {
    if table.rank() == 0 {
        return Err("gather table must have rank ≥ 1".into());
    }
    if !matches!(idx.dtype, DType::I32 | DType::I64) {
        return Err(format!("gather indices must be i32/i64, got {}", idx.dtype));
    }
    Ok(TensorType::new(table.dtype, idx.shape.iter().chain(&table.shape[1..]).copied()))
}

fn matmul(a: &TensorType, b: &TensorType, ta: bool, tb: bool) -> Result<TensorType, String> {
    require_float(a, "lhs")?;
    if a.dtype != b.dtype {
        return Err(format!("matmul operand dtypes differ: {} vs {}", a.dtype, b.dtype));
    }
    Ok(TensorType { dtype: a.dtype, shape: matmul_shape(a, b, ta, tb)? })
}

/// The result shape of a (batched) matmul.
fn matmul_shape(a: &TensorType, b: &TensorType, ta: bool, tb: bool) -> Result<Shape, String> {
    if a.rank() < 2 || b.rank() < 2 {
        return Err("matmul operands need rank ≥ 2".into());
    }
    let (ra, rb) = (a.rank(), b.rank());
    let (m, ka) = if ta { (a.shape[ra - 1], a.shape[ra - 2]) } else { (a.shape[ra - 2], a.shape[ra - 1]) };
    let (kb, n) = if tb { (b.shape[rb - 1], b.shape[rb - 2]) } else { (b.shape[rb - 2], b.shape[rb - 1]) };
    if ka != kb {
        return Err(format!("matmul contraction dims differ: {ka} vs {kb}"));
    }
    let batch = broadcast_shapes(&a.shape[..ra - 2].into(), &b.shape[..rb - 2].into())?;
    Ok(batch.into_iter().chain([m, n]).collect())
}

fn norm(inputs: &[&TensorType]) -> Result<TensorType, String> {
    let x = inputs[0];
    require_float(x, "operand")?;
    let last = *x.shape.last().ok_or("norm operand needs rank ≥ 1")?;
    for p in &inputs[1..] {
        if p.shape.as_slice() != [last] {
            return Err(format!("norm parameter shape {} must be [{last}]", shape_text(&p.shape)));
        }
        require_float(p, "norm parameter")?;
    }
    Ok(x.clone())
}

/// Checks that two shapes hold the same number of elements, symbol by symbol; `false` when a
/// fixed product overflows u64 (no tensor is that large).
fn same_numel(a: &Shape, b: &Shape) -> bool {
    let split = |s: &Shape| {
        let fixed = s.iter().filter_map(|d| d.fixed()).try_fold(1u64, u64::checked_mul)?;
        let mut syms: Vec<_> = s
            .iter()
            .filter_map(|d| match d {
                Dim::Sym(id) => Some(*id),
                Dim::Fixed(_) => None,
            })
            .collect();
        syms.sort();
        Some((fixed, syms))
    };
    split(a).is_some_and(|a| split(b) == Some(a))
}

fn reshape(x: &TensorType, to: TensorType) -> Result<TensorType, String> {
    if !same_numel(&x.shape, &to.shape) {
        return Err(format!("reshape changes the element count: {} → {}", shape_text(&x.shape), shape_text(&to.shape)));
    }
    Ok(to.with_dtype(x.dtype))
}

fn transpose(x: &TensorType, perm: &[usize]) -> Result<TensorType, String> {
    let mut seen = vec![false; x.rank()];
    if perm.len() != x.rank() || perm.iter().any(|&p| p >= x.rank() || std::mem::replace(&mut seen[p], true)) {
        return Err(format!("{perm:?} is not a permutation of rank {}", x.rank()));
    }
    Ok(TensorType::new(x.dtype, perm.iter().map(|&p| x.shape[p])))
}

fn reduce(x: &TensorType, op: ReduceOp, axes: &[i64], keep: bool) -> Result<TensorType, String> {
    if op != ReduceOp::Max {
        require_float(x, "operand")?;
    }
    let axes: Vec<usize> = axes
        .iter()
        .map(|&a| normalize_axis(a, x.rank()).ok_or_else(|| format!("reduce axis {a} out of range")))
        .collect::<Result<_, _>>()?;
    let dims = x.shape.iter().enumerate().filter_map(|(i, &d)| match (axes.contains(&i), keep) {
        (false, _) => Some(d),
        (true, true) => Some(Dim::Fixed(1)),
        (true, false) => None,
    });
    Ok(TensorType::new(x.dtype, dims))
}

fn mean_pool(h: &TensorType, mask: &TensorType) -> Result<TensorType, String> {
    require_float(h, "hidden")?;
    if h.rank() != 3 || mask.rank() != 2 || h.shape[..2] != mask.shape[..] {
        return Err(format!("mean_pool wants hidden [B,S,H] and mask [B,S], got {} and {}", shape_text(&h.shape), shape_text(&mask.shape)));
    }
    Ok(TensorType::new(h.dtype, [h.shape[0], h.shape[2]]))
}

fn last_token(x: &TensorType) -> Result<TensorType, String> {
    if x.rank() != 3 {
        return Err(format!("last_token wants [B,S,H], got {}", shape_text(&x.shape)));
    }
    Ok(TensorType::new(x.dtype, [x.shape[0], Dim::Fixed(1), x.shape[2]]))
}

/// Checks the optional scale and zero-point inputs of a Q/DQ against its spec.
fn check_qparams(spec: &QuantSpec, data: &Shape, extra: &[&TensorType]) -> Result<(), String> {
    let want = spec.granularity.scale_shape(data)?;
    let mut extra = extra.iter();
    if spec.scale == ScaleSource::Input {
        let s = extra.next().ok_or("missing scale input")?;
        let scalar_ok = spec.granularity == Granularity::PerTensor && s.shape.as_slice() == [Dim::Fixed(1)];
        if s.shape != want && !scalar_ok {
            return Err(format!("scale shape {} does not match the granularity, expected {}", shape_text(&s.shape), shape_text(&want)));
        }
        if !s.dtype.is_float() {
            return Err(format!("scale must be a float type, got {}", s.dtype));
        }
    }
    if spec.zero_point == Some(ZeroPoint::Input) {
        let z = extra.next().ok_or("missing zero-point input")?;
        if !z.dtype.is_int() {
            return Err(format!("a zero point must be an integer tensor, got {}", z.dtype));
        }
        if z.shape != want {
            return Err(format!("zero-point shape {} does not match the scale shape {}", shape_text(&z.shape), shape_text(&want)));
        }
    }
    if spec.zero_point.is_some() && !spec.storage.is_int() {
        return Err("a zero point needs integer storage".into());
    }
    Ok(())
}

/// Checks a spec on its own: block sizes and axes, and the dynamic scale's type and rounding.
fn check_spec(spec: &QuantSpec) -> Result<(), String> {
    if let Granularity::Block { blocks } = &spec.granularity {
        let mut axes: Vec<i64> = blocks.iter().map(|b| b.0).collect();
        axes.sort();
        axes.dedup();
        if axes.len() != blocks.len() || blocks.is_empty() {
            return Err("block axes must be distinct and non-empty".into());
        }
        if blocks.iter().any(|&(_, size)| size == 0 || size > i64::MAX as u64) {
            return Err("block sizes must be in 1..=2^63-1".into());
        }
    }
    if let ScaleSource::Dynamic { dtype, rounding } = spec.scale {
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F8E4M3 | DType::E8M0) {
            return Err(format!("a dynamic scale cannot be stored as {dtype}"));
        }
        if dtype != DType::E8M0 && rounding != crate::numerics::E8M0Rounding::Up {
            return Err("a rounding mode applies to e8m0 scales only".into());
        }
    }
    Ok(())
}

fn quantize(spec: &QuantSpec, inputs: &[&TensorType]) -> InferResult {
    check_spec(spec)?;
    let x = inputs[0];
    require_float(x, "quantize operand")?;
    if !spec.storage.is_quantized_storage() {
        return Err(format!("{} is not a quantized storage type", spec.storage));
    }
    check_qparams(spec, &x.shape, &inputs[1..])?;
    let mut outs = vec![x.with_dtype(spec.storage)];
    if let ScaleSource::Dynamic { dtype, .. } = spec.scale {
        outs.push(TensorType { dtype, shape: spec.granularity.scale_shape(&x.shape)? });
    }
    Ok(outs)
}

/// `quant_round_trip`: a float operand (with `norm`, the norm's operands), a quantization that
/// takes no operand; the result has the operand's type.
fn quant_round_trip(norm_op: Option<RoundTripNorm>, spec: &QuantSpec, inputs: &[&TensorType]) -> Result<TensorType, String> {
    let x = &match norm_op {
        Some(_) => norm(inputs)?,
        None => inputs[0].clone(),
    };
    if spec.extra_inputs() != 0 {
        return Err("quant_round_trip takes no scale or zero-point operand (dynamic or literal only)".into());
    }
    quantize(spec, &[x])?;
    if !x.dtype.is_wide_float() {
        return Err(format!("quant_round_trip rounds to its operand's dtype: f32/f16/bf16, got {}", x.dtype));
    }
    Ok(x.clone())
}

fn dequantize(spec: &QuantSpec, inputs: &[&TensorType], out: DType) -> InferResult {
    check_spec(spec)?;
    let q = inputs[0];
    if q.dtype != spec.storage {
        return Err(format!("dequantize input is {} but the spec stores {}", q.dtype, spec.storage));
    }
    if spec.is_dynamic() {
        return Err("dequantize cannot compute its scale: use scale=%value".into());
    }
    if !out.is_wide_float() {
        return Err(format!("dequantize must produce f32/f16/bf16, got {out}"));
    }
    check_qparams(spec, &q.shape, &inputs[1..])?;
    Ok(vec![q.with_dtype(out)])
}

/// A per-tensor quantization with a literal scale (the only kind fused outputs support).
fn require_static_per_tensor(spec: &QuantSpec, what: &str) -> Result<(), String> {
    check_spec(spec)?;
    let ok = spec.granularity == Granularity::PerTensor && matches!(spec.scale, ScaleSource::Literal(_)) && spec.zero_point.is_none();
    if !ok || !spec.storage.is_quantized_storage() {
        return Err(format!("{what} must be a per-tensor quantization with a literal scale and no zero point"));
    }
    Ok(())
}

fn requantize(q: &TensorType, via: DType, to: &QuantSpec) -> Result<TensorType, String> {
    if !q.dtype.is_quantized_storage() {
        return Err(format!("requantize input must be quantized storage, got {}", q.dtype));
    }
    if !via.is_wide_float() {
        return Err(format!("requantize rounds through f32/f16/bf16, not {via}"));
    }
    require_static_per_tensor(to, "requantize output")?;
    Ok(q.with_dtype(to.storage))
}

fn norm_quantize(kind: NormKind, via: DType, quant: &QuantSpec, keep_normed: bool, inputs: &[&TensorType]) -> InferResult {
    let n = 1 + norm_params(kind);
    let normed = norm(&inputs[..n])?;
    if !via.is_wide_float() {
        return Err(format!("the norm's result must round to f32/f16/bf16, not {via}"));
    }
    let normed = normed.with_dtype(via);
    let mut q_inputs = vec![&normed];
    q_inputs.extend_from_slice(&inputs[n..]);
    let mut outs = quantize(quant, &q_inputs)?;
    if keep_normed {
        outs.push(normed);
    }
    Ok(outs)
}

/// The GEMM operand families a `qmatmul` accepts: both operands of one family.
#[derive(PartialEq)]
enum GemmFamily {
    /// `f8e4m3` / `f8e5m2`, mixes allowed.
    Fp8,
    /// `i8` / `u8`.
    Int8,
    /// One wide float, f16 or bf16, on both sides.
    Wide(DType),
}

fn gemm_family(dtype: DType) -> Option<GemmFamily> {
    match dtype {
        DType::F8E4M3 | DType::F8E5M2 => Some(GemmFamily::Fp8),
        DType::I8 | DType::U8 => Some(GemmFamily::Int8),
        DType::F16 | DType::BF16 => Some(GemmFamily::Wide(dtype)),
        _ => None,
    }
}

pub(super) fn qmatmul(q: &QMatMul, inputs: &[&TensorType]) -> Result<TensorType, String> {
    let a = inputs[0];
    let n_dequant = q.b_dequant.as_ref().map_or(0, QuantSpec::extra_inputs);
    let dequantized;
    let b = match &q.b_dequant {
        Some(spec) => {
            dequantized = weight_only(q, spec, a, inputs[1], &inputs[2..2 + n_dequant])?;
            &dequantized
        }
        None => inputs[1],
    };
    for (t, what) in [(a, "lhs"), (b, "rhs")] {
        if gemm_family(t.dtype).is_none() {
            return Err(format!("qmatmul {what} must be FP8, 8-bit integer, f16 or bf16, got {}", t.dtype));
        }
    }
    let family = gemm_family(a.dtype);
    if family != gemm_family(b.dtype) {
        return Err(format!(
            "qmatmul operands must be of one family (both FP8, both 8-bit integer, or the same f16/bf16), got {} and {}",
            a.dtype, b.dtype
        ));
    }
    if matches!(family, Some(GemmFamily::Wide(_))) && (q.a_scale || q.b_scale) {
        return Err(format!("a qmatmul over {} operands takes no a_scale or b_scale", a.dtype));
    }
    let shape = matmul_shape(a, b, false, q.transpose_b)?;
    let mut rest = inputs[2 + n_dequant..].iter();
    if q.a_scale {
        let s = rest.next().ok_or("missing a_scale")?;
        let want: Shape = shape[..shape.len() - 1].iter().copied().chain([Dim::Fixed(1)]).collect();
        if s.shape != want || s.dtype != DType::F32 {
            return Err(format!("a_scale must be f32{}, got {}{}", shape_text(&want), s.dtype, shape_text(&s.shape)));
        }
    }
    if q.b_scale {
        let s = rest.next().ok_or("missing b_scale")?;
        let n = shape[shape.len() - 1];
        if s.shape.as_slice() != [n] || s.dtype != DType::F32 {
            return Err(format!("b_scale must be f32[{n}], got {}{}", s.dtype, shape_text(&s.shape)));
        }
    }
    if !q.acc_dtype.is_wide_float() {
        return Err(format!("acc_dtype must be f32/f16/bf16, got {}", q.acc_dtype));
    }
    let mut dtype = q.acc_dtype;
    for step in &q.epilogue {
        if !step.dtype.is_wide_float() {
            return Err(format!("epilogue steps round to f32/f16/bf16, not {}", step.dtype));
        }
        if step.op.takes_operand() {
            let t = rest.next().ok_or("missing epilogue operand")?;
            if t.dtype != dtype || broadcast_shapes(&shape, &t.shape)? != shape {
                return Err(format!(
                    "epilogue operand {}{} does not fit the {}{} result",
                    t.dtype,
                    shape_text(&t.shape),
                    dtype,
                    shape_text(&shape)
                ));
            }
        }
        dtype = step.dtype;
    }
    if let Some(out) = &q.output {
        require_static_per_tensor(out, "qmatmul output")?;
        dtype = out.storage;
    }
    Ok(TensorType { dtype, shape })
}

/// Storage types a weight-only `qmatmul` (`b_dequant`) reads its weight codes from.
const WEIGHT_ONLY_STORAGE: [DType; 6] = [DType::I8, DType::U8, DType::I4, DType::U4, DType::F8E4M3, DType::F4E2M1];

/// The type rule of `b_dequant` (weight-only quantization): `a` is f16/bf16; `b` is a 2-D `[N, K]`
/// weight (`transpose_b`) of the spec's storage, one of [`WEIGHT_ONLY_STORAGE`]; the granularity is
/// [`weight_only_granularity`]; the scale is an f32 input of the granularity's scale shape and the
/// zero point, if any, a `u8` input of that shape (integer storage only); `alpha` is 1 and there is
/// no `a_scale`/`b_scale`. Returns the type `b` dequantizes to: its shape in `a`'s dtype.
fn weight_only(q: &QMatMul, spec: &QuantSpec, a: &TensorType, b: &TensorType, qparams: &[&TensorType]) -> Result<TensorType, String> {
    if q.alpha != 1.0 || q.a_scale || q.b_scale {
        return Err("a weight-only qmatmul (b_dequant) takes alpha=1.0 and no a_scale or b_scale".into());
    }
    if !matches!(a.dtype, DType::F16 | DType::BF16) {
        return Err(format!("a weight-only qmatmul's lhs must be f16 or bf16, got {}", a.dtype));
    }
    if !WEIGHT_ONLY_STORAGE.contains(&spec.storage) {
        return Err(format!("b_dequant cannot read {} weights (i8, u8, i4, u4, f8e4m3 or f4e2m1)", spec.storage));
    }
    if b.dtype != spec.storage {
        return Err(format!("qmatmul rhs is {} but b_dequant stores {}", b.dtype, spec.storage));
    }
    if !q.transpose_b || b.rank() != 2 {
        return Err(format!("b_dequant needs a 2-D [N, K] weight read with transpose_b, got {}", shape_text(&b.shape)));
    }
    check_spec(spec)?;
    weight_only_granularity(&spec.granularity)?;
    if spec.scale != ScaleSource::Input || matches!(spec.zero_point, Some(ZeroPoint::Literal(_))) {
        return Err("b_dequant reads its scale (and zero point) from inputs: scale=%v[, zero=%v]".into());
    }
    check_qparams(spec, &b.shape, qparams)?;
    if qparams[0].dtype != DType::F32 {
        return Err(format!("b_dequant's scale must be f32, got {}", qparams[0].dtype));
    }
    if let Some(z) = qparams.get(1).filter(|z| z.dtype != DType::U8) {
        return Err(format!("b_dequant's zero point must be u8, got {}", z.dtype));
    }
    Ok(b.with_dtype(a.dtype))
}

/// The granularities of a weight-only `[N, K]` weight: `per_channel(0)` (one scale per output
/// feature), `block(1:G)` (groups of G along K: W4A16, NVFP4) or `block(0:R,1:C)` (R×C tiles: FP8
/// 128×128 blocks); axes may be spelled negative.
fn weight_only_granularity(g: &Granularity) -> Result<(), String> {
    let axis = |a: i64| normalize_axis(a, 2);
    let ok = match g {
        Granularity::PerChannel { axis: a } => axis(*a) == Some(0),
        Granularity::Block { blocks } => {
            let mut axes: Vec<Option<usize>> = blocks.iter().map(|&(a, _)| axis(a)).collect();
            axes.sort();
            axes == [Some(1)] || axes == [Some(0), Some(1)]
        }
        Granularity::PerTensor | Granularity::PerToken => false,
    };
    if ok {
        Ok(())
    } else {
        Err("b_dequant granularity must be per_channel(0), block(1:G) or block(0:R,1:C) of the [N, K] weight".into())
    }
}

/// `attention`: `q, k, v: T[B, S, H·D]` (T f16 or bf16, one shape), or, with `fp8(...)`, E4M3
/// codes of one shape computing in T = `via`; an optional `T[B, S]` mask bias; the result has q's
/// shape, in T or in the output quantize's storage.
fn attention(a: &Attention, inputs: &[&TensorType]) -> Result<TensorType, String> {
    let (q, k, v) = (inputs[0], inputs[1], inputs[2]);
    let dtype = attention_compute_dtype(a, q.dtype)?;
    for (t, what) in [(k, "k"), (v, "v")] {
        if *t != *q {
            return Err(format!("attention {what} is {}{} but q is {}{}", t.dtype, shape_text(&t.shape), q.dtype, shape_text(&q.shape)));
        }
    }
    if q.rank() != 3 {
        return Err(format!("attention operands must be [B, S, H·D], got {}", shape_text(&q.shape)));
    }
    if a.heads == 0 {
        return Err("attention needs at least one head".into());
    }
    let width = q.shape[2].fixed().ok_or("attention's last extent H·D must be fixed")?;
    if width % u64::from(a.heads) != 0 {
        return Err(format!("attention's last extent {width} is not a multiple of {} heads", a.heads));
    }
    if let Some(scale) = a.scale {
        if crate::numerics::cast(scale, dtype) != scale {
            return Err(format!("attention scale {scale:?} is not exactly representable in {dtype}"));
        }
    }
    if a.mask {
        let m = inputs[3];
        if m.dtype != dtype || m.shape.as_slice() != &q.shape[..2] {
            return Err(format!(
                "attention mask bias must be {dtype}{}, got {}{}",
                shape_text(&q.shape[..2]),
                m.dtype,
                shape_text(&m.shape)
            ));
        }
    }
    let mut out = q.clone();
    out.dtype = dtype;
    if let Some(spec) = &a.output {
        require_static_per_tensor(spec, "attention output")?;
        out.dtype = spec.storage;
    }
    Ok(out)
}

/// The dtype an attention computes in: its operands' (f16/bf16), or `fp8(via=…)` over E4M3
/// operands, whose three multipliers must be positive and finite.
fn attention_compute_dtype(a: &Attention, operands: DType) -> Result<DType, String> {
    let Some(f) = &a.fp8 else {
        if !matches!(operands, DType::F16 | DType::BF16) {
            return Err(format!("attention operands must be f16 or bf16 (or f8e4m3 with fp8(...)), got {operands}"));
        }
        return Ok(operands);
    };
    if operands != DType::F8E4M3 {
        return Err(format!("attention with fp8(...) takes f8e4m3 operands, got {operands}"));
    }
    if !matches!(f.compute, DType::F16 | DType::BF16) {
        return Err(format!("attention fp8(via=…) must be f16 or bf16, got {}", f.compute));
    }
    for (name, x) in [("qk_alpha", f.qk_alpha), ("p_scale", f.p_scale), ("pv_alpha", f.pv_alpha)] {
        if !(x.is_finite() && x > 0.0) {
            return Err(format!("attention fp8 {name} must be positive and finite, got {x:?}"));
        }
    }
    Ok(f.compute)
}

/// `embed_layernorm`: `ids, type_ids: i64[B, S]`, tables `via[·, H]`, `gamma, beta: via[H]`,
/// then `layernorm`'s result `via[B, S, H]` or `layernorm_quantize`'s results.
fn embed_layernorm(e: &EmbedLayerNorm, inputs: &[&TensorType]) -> InferResult {
    let (ids, type_ids) = (inputs[0], inputs[1]);
    if !e.via.is_wide_float() {
        return Err(format!("embed_layernorm computes in f32/f16/bf16, not {}", e.via));
    }
    for (t, what) in [(ids, "ids"), (type_ids, "type_ids")] {
        if t.dtype != DType::I64 || t.rank() != 2 {
            return Err(format!("embed_layernorm {what} must be i64[B, S], got {}{}", t.dtype, shape_text(&t.shape)));
        }
    }
    if type_ids.shape != ids.shape {
        return Err(format!("embed_layernorm type_ids {} differ from ids {}", shape_text(&type_ids.shape), shape_text(&ids.shape)));
    }
    let hidden = inputs[2].shape.last().copied().ok_or("embed_layernorm tables must be [rows, H]")?;
    for (t, what) in [(inputs[2], "word"), (inputs[3], "pos"), (inputs[4], "type")] {
        if t.dtype != e.via || t.rank() != 2 || t.shape[1] != hidden {
            return Err(format!("embed_layernorm {what} table must be {}[rows, {hidden}], got {}{}", e.via, t.dtype, shape_text(&t.shape)));
        }
    }
    for (t, what) in [(inputs[5], "gamma"), (inputs[6], "beta")] {
        if t.dtype != e.via || t.shape.as_slice() != [hidden] {
            return Err(format!("embed_layernorm {what} must be {}[{hidden}], got {}{}", e.via, t.dtype, shape_text(&t.shape)));
        }
    }
    let normed = TensorType::new(e.via, [ids.shape[0], ids.shape[1], hidden]);
    let Some(quant) = &e.quant else {
        if e.keep_normed {
            return Err("keep_normed needs a quantization".into());
        }
        return Ok(vec![normed]);
    };
    let mut q_inputs = vec![&normed];
    q_inputs.extend_from_slice(&inputs[7..]);
    let mut outs = quantize(quant, &q_inputs)?;
    if e.keep_normed {
        outs.push(normed);
    }
    Ok(outs)
}
