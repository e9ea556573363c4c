//! Normalisations over the last axis, with row statistics accumulated in `f64`:
//! - `layernorm`: `(x − mean) / √(var + eps) · γ + β`, biased variance (two-pass);
//! - `rmsnorm`: `x / √(mean(x²) + eps) · γ`;
//! - `l2_normalize`: `x / max(‖x‖₂, eps)`.

use super::{f32s, finish, for_rows, take_f32, OutType};
use crate::interp::tensor::Tensor;
use std::sync::Arc;

/// The last extent of `x` and a check that each parameter has exactly that many elements.
fn row_len(x: &Tensor, params: &[&Tensor]) -> Result<usize, String> {
    let h = *x.shape.last().ok_or("operand needs rank ≥ 1")?;
    for p in params {
        if p.shape != [h] {
            return Err(format!("parameter shape {:?} must be [{h}]", p.shape));
        }
    }
    Ok(h)
}

/// `layernorm` (and, without `beta`, the same with β = 0).
pub(super) fn layer_norm(x: Arc<Tensor>, gamma: &Tensor, beta: Option<&Tensor>, eps: f32, out: &OutType) -> Result<Tensor, String> {
    let params: Vec<&Tensor> = std::iter::once(gamma).chain(beta).collect();
    let h = row_len(&x, &params)?;
    let g = f32s(gamma)?;
    let b = beta.map(f32s).transpose()?;
    let mut d = take_f32(x)?;
    for_rows(&mut d, h, |_, row| {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / h as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / h as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        for (i, v) in row.iter_mut().enumerate() {
            let y = ((*v as f64 - mean) * inv) as f32 * g[i];
            *v = b.map_or(y, |b| y + b[i]);
        }
    });
    Ok(finish(out, d))
}

/// `rmsnorm`.
pub(super) fn rms_norm(x: Arc<Tensor>, gamma: &Tensor, eps: f32, out: &OutType) -> Result<Tensor, String> {
    let h = row_len(&x, &[gamma])?;
    let g = f32s(gamma)?;
    let mut d = take_f32(x)?;
    for_rows(&mut d, h, |_, row| {
        let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / h as f64;
        let inv = 1.0 / (ms + eps as f64).sqrt();
        row.iter_mut().zip(g).for_each(|(v, &g)| *v = (*v as f64 * inv) as f32 * g);
    });
    Ok(finish(out, d))
}

/// `l2_normalize`.
pub(super) fn l2_normalize(x: Arc<Tensor>, eps: f32, out: &OutType) -> Result<Tensor, String> {
    let h = row_len(&x, &[])?;
    let mut d = take_f32(x)?;
    for_rows(&mut d, h, |_, row| {
        let norm = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        let denom = norm.max(eps as f64);
        row.iter_mut().for_each(|v| *v = (*v as f64 / denom) as f32);
    });
    Ok(finish(out, d))
}
