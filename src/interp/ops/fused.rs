//! Fused ops, evaluated as the composition of the unfused kernels they replace, rounding at the
//! same points; so a fusion pass changes no number except the matmul's scale reassociation
//! (`Σ(qa·sa)(qb·sb)` becomes `(Σ qa·qb)·sa·sb`, as on the GPU).

use super::{elementwise, matmul, norm, quant, OutType};
use crate::interp::tensor::Tensor;
use crate::ir::{BinaryOp, EpilogueOp, Granularity, NormKind, QMatMul, QuantSpec, ScaleSource};
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

/// `qmatmul`: f32 accumulation over the quantized operands, scaling, epilogue, output quantize.
pub(super) fn qmatmul(q: &QMatMul, mut args: std::vec::IntoIter<Arc<Tensor>>, outs: &[OutType]) -> Result<Vec<Tensor>, String> {
    let mut next = || args.next().ok_or_else(|| "missing operand".to_string());
    let (a, b) = (next()?, next()?);
    let shape = outs[0].shape.clone();
    let acc = matmul::matmul(&a, &b, false, q.transpose_b, &OutType { dtype: crate::ir::DType::F32, shape: shape.clone() })?;
    let a_scale = if q.a_scale { Some(next()?) } else { None };
    let b_scale = if q.b_scale { Some(next()?) } else { None };
    let mut y = Arc::new(scale(acc, q.alpha, a_scale.as_deref(), b_scale.as_deref(), q.acc_dtype)?);
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
