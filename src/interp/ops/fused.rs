//! Fused ops, evaluated as the composition of the unfused kernels they replace, rounding at the
//! same points; so a fusion pass changes no number except the matmul's scale reassociation
//! (`Σ(qa·sa)(qb·sb)` becomes `(Σ qa·qb)·sa·sb`, as on the GPU).
//!
//! `attention` and `embed_layernorm` call the very kernels of the ops they replace, in the order
//! the unfused graph runs them (the importer's reshape/transpose/matmul/mul/add/softmax chain and
//! its gather/iota/add chain), so their results are bit-identical to the unfused graph's.

use super::{elementwise, matmul, norm, quant, reduce, shape, OutType};
use crate::interp::tensor::Tensor;
use crate::interp::Accumulation;
use crate::ir::{Attention, BinaryOp, DType, EmbedLayerNorm, EpilogueOp, Granularity, NormKind, QMatMul, QuantSpec, ScaleSource};
use std::sync::Arc;

/// `requantize`: dequantize per-tensor, round to `via`, quantize with `to`.
pub(super) fn requantize(
    q: Arc<Tensor>,
    from_scale: f32,
    via: crate::ir::DType,
    to: &QuantSpec,
    outs: &[OutType],
) -> Result<Vec<Tensor>, String> {
    let from =
        QuantSpec { storage: q.dtype, granularity: Granularity::PerTensor, scale: ScaleSource::Literal(from_scale), zero_point: None };
    let mid = OutType { dtype: via, shape: outs[0].shape.clone() };
    let x = quant::dequantize(&from, q, vec![], &mid)?;
    quant::quantize(to, Arc::new(x), vec![], outs)
}

/// `layernorm_quantize` / `rmsnorm_quantize`: the norm rounded to `via`, then the quantize.
pub(super) fn norm_quantize(
    kind: NormKind,
    eps: f32,
    via: crate::ir::DType,
    spec: &QuantSpec,
    keep_normed: bool,
    mut args: std::vec::IntoIter<Arc<Tensor>>,
    outs: &[OutType],
) -> Result<Vec<Tensor>, String> {
    let mut next = || args.next().ok_or_else(|| "missing operand".to_string());
    let (x, gamma) = (next()?, next()?);
    let mid = OutType { dtype: via, shape: outs[0].shape.clone() };
    let normed = match kind {
        NormKind::LayerNorm => norm::layer_norm(x, &gamma, Some(&*next()?), eps, &mid)?,
        NormKind::RmsNorm => norm::rms_norm(x, &gamma, eps, &mid)?,
    };
    let normed = Arc::new(normed);
    let n_quant = outs.len() - usize::from(keep_normed);
    let mut results = quant::quantize(spec, normed.clone(), args.collect(), &outs[..n_quant])?;
    if keep_normed {
        results.push(Arc::try_unwrap(normed).unwrap_or_else(|shared| (*shared).clone()));
    }
    Ok(results)
}

/// `qmatmul`: with `b_dequant`, `b` dequantized to `a`'s dtype first (the `dequantize` kernel);
/// then the accumulation — exact for 8-bit integer operands ([`matmul::matmul_f64`]), as `acc`
/// says otherwise — scaling, epilogue, output quantize.
pub(super) fn qmatmul(
    q: &QMatMul,
    mut args: std::vec::IntoIter<Arc<Tensor>>,
    outs: &[OutType],
    acc: Accumulation,
) -> Result<Vec<Tensor>, String> {
    let mut next = || args.next().ok_or_else(|| "missing operand".to_string());
    let (a, mut b) = (next()?, next()?);
    if let Some(spec) = &q.b_dequant {
        let qparams = (0..spec.extra_inputs()).map(|_| next()).collect::<Result<Vec<_>, _>>()?;
        let to = OutType { dtype: a.dtype, shape: b.shape.clone() };
        b = Arc::new(quant::dequantize(spec, b, qparams, &to)?);
    }
    let shape = outs[0].shape.clone();
    let acc_ty = OutType { dtype: DType::F32, shape: shape.clone() };
    let sums = match a.dtype {
        DType::I8 | DType::U8 => matmul::matmul_f64(&a, &b, false, q.transpose_b, &acc_ty)?,
        _ => matmul::matmul(&a, &b, false, q.transpose_b, &acc_ty, acc)?,
    };
    let a_scale = if q.a_scale { Some(next()?) } else { None };
    let b_scale = if q.b_scale { Some(next()?) } else { None };
    let mut y = Arc::new(scale(sums, q.alpha, a_scale.as_deref(), b_scale.as_deref(), q.acc_dtype)?);
    for step in &q.epilogue {
        let out = OutType { dtype: step.dtype, shape: shape.clone() };
        y = Arc::new(match step.op {
            EpilogueOp::Cast => elementwise::cast(y, &out),
            EpilogueOp::Add => elementwise::binary(BinaryOp::Add, y, next()?, &out)?,
            EpilogueOp::Unary(u) => elementwise::unary(u, y, &out)?,
        });
    }
    match &q.output {
        Some(spec) => quant::quantize(spec, y, vec![], outs),
        None => Ok(vec![Arc::try_unwrap(y).unwrap_or_else(|shared| (*shared).clone())]),
    }
}

/// `attention`: per batch and head, `softmax(round(round(round(q·kᵀ)·scale) + mask))·v`, rounded to
/// T at each step, computed exactly as the unfused graph does: `reshape` to `[B,S,H,D]`,
/// `transpose` to `[B,H,S,D]`, `matmul` (`transpose_b`), `mul` by the scalar, `add` of the mask
/// reshaped to `[B,1,1,S]`, `softmax` over the keys, `matmul` with v, `transpose` and `reshape`
/// back to `[B,S,H·D]`, then the optional output quantize. With `fp8`, the two products are the
/// unfused `qmatmul`s (f32 sums of the codes' values, times `qk_alpha` / `pv_alpha`, cast to T)
/// and the probabilities are quantized per tensor to E4M3 before P·V.
pub(super) fn attention(
    a: &Attention,
    mut args: std::vec::IntoIter<Arc<Tensor>>,
    outs: &[OutType],
    acc: Accumulation,
) -> Result<Vec<Tensor>, String> {
    let mut next = || args.next().ok_or_else(|| "missing operand".to_string());
    let (q, k, v) = (next()?, next()?, next()?);
    let mask = if a.mask { Some(next()?) } else { None };
    let dtype = a.fp8.map_or(q.dtype, |f| f.compute);
    let &[b, s, width] = q.shape.as_slice() else { return Err(format!("q must be [B, S, H·D], got {:?}", q.shape)) };
    let heads = a.heads as usize;
    if heads == 0 || width % heads != 0 {
        return Err(format!("{width} is not a multiple of {heads} heads"));
    }
    let d = width / heads;
    let ty = |shape: Vec<usize>| OutType { dtype, shape };
    let split = |x: Arc<Tensor>| -> Result<Tensor, String> {
        let operand = |shape: Vec<usize>| OutType { dtype: x.dtype, shape };
        let r = shape::reshape(x.clone(), &operand(vec![b, s, heads, d]))?;
        shape::transpose(&r, &[0, 2, 1, 3], &operand(vec![b, heads, s, d]))
    };
    let (qh, kh, vh) = (split(q)?, split(k)?, split(v)?);
    let scores_ty = ty(vec![b, heads, s, s]);
    let qk_alpha = a.fp8.map(|f| f.qk_alpha);
    let mut scores = Arc::new(attention_product(&qh, &kh, true, qk_alpha, &scores_ty, acc)?);
    drop((qh, kh));
    if let Some(scale) = a.scale {
        let c = Arc::new(elementwise::scalar(f64::from(scale), &ty(vec![])));
        scores = Arc::new(elementwise::binary(BinaryOp::Mul, scores, c, &scores_ty)?);
    }
    if let Some(m) = mask {
        let m = Arc::new(shape::reshape(m, &ty(vec![b, 1, 1, s]))?);
        scores = Arc::new(elementwise::binary(BinaryOp::Add, scores, m, &scores_ty)?);
    }
    let mut probs = reduce::softmax(scores, -1, &scores_ty)?;
    if let Some(f) = &a.fp8 {
        let spec = QuantSpec::per_tensor(DType::F8E4M3, f.p_scale);
        let codes = OutType { dtype: DType::F8E4M3, shape: vec![b, heads, s, s] };
        probs = quant::quantize(&spec, Arc::new(probs), vec![], &[codes])?.remove(0);
    }
    let pv_alpha = a.fp8.map(|f| f.pv_alpha);
    let ctx = attention_product(&probs, &vh, false, pv_alpha, &ty(vec![b, heads, s, d]), acc)?;
    drop((probs, vh));
    let ctx = shape::transpose(&ctx, &[0, 2, 1, 3], &ty(vec![b, s, heads, d]))?;
    let y = shape::reshape(Arc::new(ctx), &ty(vec![b, s, width]))?;
    match &a.output {
        Some(spec) => quant::quantize(spec, Arc::new(y), vec![], outs),
        None => Ok(vec![y]),
    }
}

/// One batched product of `attention`: a `matmul` rounded to `out.dtype`, or with `alpha` (FP8
/// operands) a `qmatmul`: f32 sums, times `alpha`, cast to `out.dtype`.
fn attention_product(
    x: &Tensor,
    y: &Tensor,
    transpose_b: bool,
    alpha: Option<f32>,
    out: &OutType,
    acc: Accumulation,
) -> Result<Tensor, String> {
    let Some(alpha) = alpha else { return matmul::matmul(x, y, false, transpose_b, out, acc) };
    let sums = matmul::matmul(x, y, false, transpose_b, &OutType { dtype: DType::F32, shape: out.shape.clone() }, acc)?;
    Ok(elementwise::cast(Arc::new(scale(sums, alpha, None, None, DType::F32)?), out))
}

/// `embed_layernorm`: `x = (word[ids] + pos[iota(S)]) + type[type_ids]`, each sum rounded to `via`
/// (the importer's `gather`, `iota`, `gather`, `add`, `gather`, `add`), then exactly `layernorm`
/// or `layernorm_quantize`.
pub(super) fn embed_layernorm(
    e: &EmbedLayerNorm,
    mut args: std::vec::IntoIter<Arc<Tensor>>,
    outs: &[OutType],
) -> Result<Vec<Tensor>, String> {
    let mut next = || args.next().ok_or_else(|| "missing operand".to_string());
    let (ids, type_ids, word, pos, types, gamma, beta) = (next()?, next()?, next()?, next()?, next()?, next()?, next()?);
    let &[b, s] = ids.shape.as_slice() else { return Err(format!("ids must be [B, S], got {:?}", ids.shape)) };
    let &[_, h] = word.shape.as_slice() else { return Err(format!("the word table must be [V, H], got {:?}", word.shape)) };
    let ty = |shape: Vec<usize>| OutType { dtype: e.via, shape };
    let w = shape::gather(&word, &ids, &ty(vec![b, s, h]))?;
    let positions = elementwise::iota(&OutType { dtype: DType::I64, shape: vec![s] })?;
    let p = shape::gather(&pos, &positions, &ty(vec![s, h]))?;
    let t = shape::gather(&types, &type_ids, &ty(vec![b, s, h]))?;
    let wp = elementwise::binary(BinaryOp::Add, Arc::new(w), Arc::new(p), &ty(vec![b, s, h]))?;
    let x = Arc::new(elementwise::binary(BinaryOp::Add, Arc::new(wp), Arc::new(t), &ty(vec![b, s, h]))?);
    match &e.quant {
        None => Ok(vec![norm::layer_norm(x, &gamma, Some(&*beta), e.eps, &outs[0])?]),
        Some(spec) => {
            let rest: Vec<Arc<Tensor>> = [x, gamma, beta].into_iter().chain(args).collect();
            norm_quantize(NormKind::LayerNorm, e.eps, e.via, spec, e.keep_normed, rest.into_iter(), outs)
        }
    }
}

/// `acc·alpha·a_scale[row]·b_scale[col]`, rounded to `dtype`.
fn scale(
    mut acc: Tensor,
    alpha: f32,
    a_scale: Option<&Tensor>,
    b_scale: Option<&Tensor>,
    dtype: crate::ir::DType,
) -> Result<Tensor, String> {
    let n = *acc.shape.last().ok_or("qmatmul result has rank 0")?;
    let rows = a_scale.map(|t| t.as_f32().ok_or("a_scale is not float")).transpose()?;
    let cols = b_scale.map(|t| t.as_f32().ok_or("b_scale is not float")).transpose()?;
    let crate::interp::tensor::TensorData::F32(data) = &mut acc.data else { return Err("qmatmul accumulator is not float".into()) };
    for (r, row) in data.chunks_mut(n).enumerate() {
        let row_scale = rows.map_or(1.0, |s| s[r]);
        for (c, y) in row.iter_mut().enumerate() {
            let mut v = *y * alpha;
            if rows.is_some() {
                v *= row_scale;
            }
            if let Some(s) = cols {
                v *= s[c];
            }
            *y = v;
        }
    }
    crate::numerics::cast_slice(data, dtype);
    acc.dtype = dtype;
    Ok(acc)
}
