//! The quantize → dequantize pair on a weight `[N, K]`, with scales (and zero points) computed
//! offline from its data, or given by a weight algorithm (GPTQ).
//!
//! | scheme | quantize spec | scale input (f32) | zero point (u8) |
//! |---|---|---|---|
//! | per tensor | `per_tensor, scale=amax/qmax` | — | — |
//! | per channel | `per_channel(0)` | `[N]`: row amax / qmax (INT8 with [`ScaleRule::MseClip`]: `r·amax / 127`, `r` of least squared error) | — |
//! | groups of G along K (INT4) | `block(1:G)` | `[N, ⌈K/G⌉]` (RTN or, with [`ScaleRule::MseClip`], the clipped range of least squared error) | `[N, ⌈K/G⌉]` when asymmetric |
//! | NVFP4 (E2M1, 16 along K) | `block(1:16)` | `[N, K/16]`: `e4m3(amax_b / (6·s_g))·s_g` | — |
//! | 2-D blocks R×C (FP8) | `block(0:R, 1:C)` | `[⌈N/R⌉, ⌈K/C⌉]`: block amax / 448 | — |
//!
//! NVFP4's global scale is `s_g = amax / (6·448)` (ModelOpt's rule); the block scale is rounded
//! to E4M3 first and the product with `s_g` is the f32 multiplier the dequantize applies, so the
//! plan holds one f32 scale per block (the table's "weight bytes" counts the format's E4M3 scale
//! and one f32 global, [`super::recipe::Scheme::bits_per_element`]). A region whose range is 0
//! gets scale 1, so nothing divides by zero.
//!
//! The weight is read as the graph sees it: the checkpoint tensor rounded to the weight value's
//! dtype (the compute dtype), exactly what the quantize then reads.

use super::algo::{self, GroupQuant};
use super::recipe::{Granularity, ScaleRule, Scheme};
use crate::interp::Tensor;
use crate::ir::{self, Builder, DType, Graph, Op, QuantSpec, ScaleSource, TensorType, ValueId, ZeroPoint};
use crate::numerics;
use crate::passes::Weights;

/// A weight value to quantize: the graph value (a cast of the checkpoint tensor), the tensor's
/// name, and group parameters fixed by a weight algorithm.
pub struct WeightSite<'a> {
    /// The weight as the matmul reads it (`[N, K]`).
    pub value: ValueId,
    /// The store's tensor behind it.
    pub tensor: &'a str,
    /// Scales and zero points chosen by an algorithm (GPTQ); `None`: computed here.
    pub groups: Option<&'a GroupQuant>,
}

/// Inserts `quantize → dequantize(out)` on `site` per `scheme`; returns the dequantized value.
pub fn insert(g: &mut Graph, site: &WeightSite, scheme: &Scheme, loc: &str, weights: &dyn Weights, out: DType) -> Result<ValueId, String> {
    let ty = g.ty(site.value).clone();
    let (n, k) = match ty.shape.as_slice() {
        [n, k] => (n.fixed().ok_or("weight rows must be fixed")? as usize, k.fixed().ok_or("weight columns must be fixed")? as usize),
        _ => return Err(format!("weight `{}` must be [N, K]", site.tensor)),
    };
    let mut values = weights.weight(site.tensor)?.to_f32_vec();
    numerics::cast_slice(&mut values, ty.dtype);
    let params = scales(&values, n, k, scheme, site.groups)?;
    let mut b = Builder::new(g);
    b.scope = Some(format!("{loc}.scale"));
    let mut extra = vec![];
    let scale = match params.scale {
        ScaleData::Literal(s) => ScaleSource::Literal(s),
        ScaleData::Tensor(shape, data) => {
            let name = format!("{}.scale", site.tensor);
            weights.insert(name.clone(), Tensor::f32(shape.clone(), data));
            extra.push(b.weight(&name, TensorType::fixed(DType::F32, &shape.iter().map(|&d| d as u64).collect::<Vec<_>>()))?);
            ScaleSource::Input
        }
    };
    let zero_point = match params.zeros {
        None => None,
        Some((shape, data)) => {
            let name = format!("{}.zero", site.tensor);
            weights.insert(name.clone(), Tensor::from_f32_as(DType::U8, shape.clone(), data));
            extra.push(b.weight(&name, TensorType::fixed(DType::U8, &shape.iter().map(|&d| d as u64).collect::<Vec<_>>()))?);
            Some(ZeroPoint::Input)
        }
    };
    let spec = QuantSpec { storage: scheme.storage, granularity: params.granularity, scale, zero_point };
    b.scope = Some(format!("{loc}.q"));
    let q_inputs: Vec<ValueId> = std::iter::once(site.value).chain(extra.iter().copied()).collect();
    let q = b.add1(Op::Quantize(spec.clone()), &q_inputs, None)?;
    b.scope = Some(format!("{loc}.dq"));
    let dq_inputs: Vec<ValueId> = std::iter::once(q).chain(extra).collect();
    b.add1(Op::Dequantize(spec), &dq_inputs, Some(ty.with_dtype(out)))
}

/// A scale: one literal, or a tensor of `shape`.
enum ScaleData {
    Literal(f32),
    Tensor(Vec<usize>, Vec<f32>),
}

/// The scales, zero points and IR granularity of `scheme` on `w [n, k]`.
struct Params {
    granularity: ir::Granularity,
    scale: ScaleData,
    zeros: Option<(Vec<usize>, Vec<f32>)>,
}

fn scales(w: &[f32], n: usize, k: usize, scheme: &Scheme, fixed: Option<&GroupQuant>) -> Result<Params, String> {
    let qmax = scheme.storage.max_finite() as f32;
    let plain = |granularity, scale| Params { granularity, scale, zeros: None };
    Ok(match scheme.granularity {
        Granularity::PerTensor => plain(ir::Granularity::PerTensor, ScaleData::Literal(scale_of(absmax(w), qmax))),
        Granularity::PerChannel => {
            let rows = match scheme.scale {
                ScaleRule::MseClip => mse_channel_scales(w, n, k, scheme.storage)?,
                _ => w.chunks(k).map(|r| scale_of(absmax(r), qmax)).collect(),
            };
            plain(ir::Granularity::PerChannel { axis: 0 }, ScaleData::Tensor(vec![n], rows))
        }
        Granularity::Group { size } if scheme.storage == DType::F4E2M1 => {
            let blocks = block_amax(w, n, k, 1, size as usize);
            plain(
                ir::Granularity::Block { blocks: vec![(1, size)] },
                ScaleData::Tensor(vec![n, k.div_ceil(size as usize)], nvfp4_scales(&blocks, w)),
            )
        }
        Granularity::Group { size } => {
            let owned;
            let q = match fixed {
                Some(q) => q,
                None => {
                    let (bits, group, symmetric) = (scheme.storage.bits(), size as usize, !scheme.zero_point);
                    owned = match scheme.scale {
                        ScaleRule::MseClip => algo::mse_rtn(w, (n, k), bits, group, symmetric, &algo::MseClip::default()),
                        _ => algo::rtn(w, n, k, bits, group, symmetric),
                    }
                    .map_err(|e| e.to_string())?;
                    &owned
                }
            };
            let shape = vec![n, k.div_ceil(size as usize)];
            let zeros = q.zeros.as_ref().map(|z| (shape.clone(), z.iter().map(|&v| f32::from(v)).collect()));
            Params {
                granularity: ir::Granularity::Block { blocks: vec![(1, size)] },
                scale: ScaleData::Tensor(shape, q.scales.clone()),
                zeros,
            }
        }
        Granularity::Block { rows, cols } => {
            let amax = block_amax(w, n, k, rows as usize, cols as usize);
            let shape = vec![n.div_ceil(rows as usize), k.div_ceil(cols as usize)];
            plain(
                ir::Granularity::Block { blocks: vec![(0, rows), (1, cols)] },
                ScaleData::Tensor(shape, amax.iter().map(|&a| scale_of(a, qmax)).collect()),
            )
        }
        Granularity::PerToken => return Err("weights cannot be quantized per token".into()),
    })
}

/// Per-row scales of a symmetric INT8 weight `w [n, k]` clipped to the least squared rounding error
/// (one group per row, codes in `[−128, 127]` as the `i8` quantize clamps them). Errors for any other
/// storage: only INT8 has per-channel integer weights.
fn mse_channel_scales(w: &[f32], n: usize, k: usize, storage: DType) -> Result<Vec<f32>, String> {
    if storage != DType::I8 {
        return Err(format!("MSE-clipped per-channel scales need i8 weights, not {storage}"));
    }
    let p = algo::GroupParams::mse(w, (n, k), 8, k, true, &algo::MseClip::default()).map_err(|e| e.to_string())?;
    Ok(p.scales)
}

/// `amax / qmax`, or 1 for an all-zero (or non-finite) region.
fn scale_of(amax: f32, qmax: f32) -> f32 {
    let s = amax / qmax;
    if s > 0.0 && s.is_finite() {
        s
    } else {
        1.0
    }
}

fn absmax(xs: &[f32]) -> f32 {
    xs.iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

/// The amax of every `rows × cols` block of `w [n, k]`, row-major over blocks.
fn block_amax(w: &[f32], n: usize, k: usize, rows: usize, cols: usize) -> Vec<f32> {
    let (bn, bk) = (n.div_ceil(rows), k.div_ceil(cols));
    let mut amax = vec![0f32; bn * bk];
    for (r, row) in w.chunks(k).enumerate() {
        for (c, chunk) in row.chunks(cols).enumerate() {
            let a = &mut amax[(r / rows) * bk + c];
            *a = a.max(absmax(chunk));
        }
    }
    amax
}

/// NVFP4 multipliers `e4m3(amax_b / (6·s_g))·s_g` with `s_g = amax / (6·448)`.
fn nvfp4_scales(block_amax: &[f32], w: &[f32]) -> Vec<f32> {
    let global = scale_of(absmax(w), 6.0 * 448.0);
    block_amax
        .iter()
        .map(|&a| {
            let s = numerics::cast(a / (6.0 * global), DType::F8E4M3);
            if s > 0.0 {
                s * global
            } else {
                global
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Per-channel INT8 with MSE-clipped scales: each row's scale is at most `amax / 127` and its
    /// squared rounding error (codes clamped to `[−128, 127]`, as the `i8` quantize does) at most
    /// the unclipped one's. Row 0 is 127 and 63 halves 63.5: at `s = 1` every half is off by ½
    /// (15.75 in all), at the first shrink `r = 1 − 0.5/49` by 0.15 while 127 clips to `127·r`
    /// (about 3.1 in all), so it is clipped. Other storage is an error.
    #[test]
    fn mse_channel_scales_clip_int8_rows_only() {
        let (n, k) = (3, 64);
        let w: Vec<f32> = (0..n * k)
            .map(|i| match (i / k, i % k) {
                (0, 0) => 127.0,
                (0, _) => 63.5,
                (r, c) => ((c * 29 % 61) as f32 - 30.0) / (10.0 * r as f32),
            })
            .collect();
        let scales = mse_channel_scales(&w, n, k, DType::I8).unwrap();
        let err = |row: &[f32], s: f32| -> f64 {
            row.iter().map(|&x| f64::from(x - numerics::round_half_even(x / s).clamp(-128.0, 127.0) * s).powi(2)).sum()
        };
        for (r, (row, &s)) in w.chunks(k).zip(&scales).enumerate() {
            let plain = scale_of(absmax(row), 127.0);
            assert!(s <= plain && err(row, s) <= err(row, plain), "row {r}: scale {s} vs {plain}");
        }
        assert!(scales[0] < 1.0 && err(&w[..k], scales[0]) < 4.0, "row 0: scale {}", scales[0]);
        assert!(mse_channel_scales(&w, n, k, DType::F8E4M3).unwrap_err().contains("i8"));
    }
}
