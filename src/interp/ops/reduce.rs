//! Reductions: `softmax`, `reduce_{sum,mean,max}` and `mean_pool`.
//!
//! - `softmax` subtracts the row max, exponentiates in `f32` and divides by the `f64` sum; a row that
//!   is all −inf (or holds a NaN) becomes NaN, as in PyTorch.
//! - `reduce_sum`/`reduce_mean` accumulate in `f64`; `reduce_max` propagates NaN (like
//!   `torch.amax`) and gives −inf (`i64::MIN` for integers) over an empty extent.
//! - `mean_pool`: `Σ_s hidden[b,s,:]·mask[b,s] / max(Σ_s mask[b,s], 1e-9)`, summing in `f64`; tokens
//!   whose mask is 0 are skipped, so padding rows never contribute (not even NaN or inf).

use super::{f32s, finish, finish_i64, for_rows, row_offset, split_at_axis, take_f32, OutType};
use crate::interp::perturb::{Function, Perturbation};
use crate::interp::tensor::{strides, Tensor, TensorData};
use crate::ir::{normalize_axis, ReduceOp};
use rayon::prelude::*;
use std::sync::Arc;

/// `softmax` along `axis`.
pub(super) fn softmax(x: Arc<Tensor>, axis: i64, out: &OutType) -> Result<Tensor, String> {
    softmax_with(x, axis, out, None)
}

/// `softmax` along `axis`; with `perturb`, as the GPU's `attention` computes it: each `exp` moved
/// within CUDA's `expf` bound and the denominator summed in f32, in key order.
pub(super) fn softmax_with(x: Arc<Tensor>, axis: i64, out: &OutType, perturb: Option<Perturbation>) -> Result<Tensor, String> {
    let a = normalize_axis(axis, x.rank()).ok_or_else(|| format!("axis {axis} out of range for rank {}", x.rank()))?;
    let (_, n, inner) = split_at_axis(&x.shape, a);
    let mut d = take_f32(x)?;
    if inner == 1 {
        for_rows(&mut d, n, |_, row| softmax_strided(row, n, 1, perturb));
    } else {
        for_rows(&mut d, n * inner, |_, blk| (0..inner).for_each(|j| softmax_strided(&mut blk[j..], n, inner, perturb)));
    }
    Ok(finish(out, d))
}

/// Softmax of the `n` elements `v[0], v[stride], …` (f64 sum; see [`softmax_with`] for `perturb`).
pub(super) fn softmax_strided(v: &mut [f32], n: usize, stride: usize, perturb: Option<Perturbation>) {
    let max = (0..n).map(|i| v[i * stride]).fold(f32::NEG_INFINITY, f32::max);
    let (mut sum, mut sum32) = (0f64, 0f32);
    for i in 0..n {
        let x = v[i * stride] - max;
        let e = perturb.map_or(x.exp(), |p| p.apply(Function::Exp, x, x.exp()));
        v[i * stride] = e;
        sum += e as f64;
        sum32 += e;
    }
    if perturb.is_some() {
        sum = f64::from(sum32);
    }
    for i in 0..n {
        v[i * stride] = (v[i * stride] as f64 / sum) as f32;
    }
}

/// `reduce_*` over `axes`; the result shape (with or without kept axes) is the declared one.
pub(super) fn reduce(x: &Tensor, op: ReduceOp, axes: &[i64], out: &OutType) -> Result<Tensor, String> {
    let r = x.rank();
    let mut reduced = vec![false; r];
    for &ax in axes {
        let a = normalize_axis(ax, r).ok_or_else(|| format!("axis {ax} out of range for rank {r}"))?;
        reduced[a] = true;
    }
    let kept: usize = x.shape.iter().zip(&reduced).filter(|(_, &red)| !red).map(|(&d, _)| d).product();
    if kept != out.shape.iter().product::<usize>() {
        return Err(format!("result shape {:?} does not match reducing {:?} over {axes:?}", out.shape, x.shape));
    }
    let count: usize = x.shape.iter().zip(&reduced).filter(|(_, &red)| red).map(|(&d, _)| d).product();
    let shape = ReduceShape { dims: &x.shape, reduced: &reduced, kept };
    match (&x.data, op) {
        (TensorData::I64(v), ReduceOp::Max) => Ok(finish_i64(out, shape.fold(v, i64::MIN, |a, b| a.max(b)))),
        (TensorData::I64(_), _) => Err("sum/mean of integers is not defined".into()),
        (TensorData::F32(v), ReduceOp::Max) => Ok(finish(out, shape.fold(v, f32::NEG_INFINITY, nan_max))),
        (TensorData::F32(v), ReduceOp::Sum | ReduceOp::Mean) => {
            let sums = shape.fold(v, 0f64, |a, b| a + b as f64);
            let div = if op == ReduceOp::Mean { count as f64 } else { 1.0 };
            Ok(finish(out, sums.into_iter().map(|s| (s / div) as f32).collect()))
        }
    }
}

fn nan_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.max(b)
    }
}

/// The geometry of one reduction.
struct ReduceShape<'a> {
    dims: &'a [usize],
    reduced: &'a [bool],
    kept: usize,
}

impl ReduceShape<'_> {
    /// Folds every element into the accumulator of its output position.
    fn fold<T: Copy + Sync, A: Copy + Send + Sync>(&self, x: &[T], init: A, f: impl Fn(A, T) -> A + Sync + Send) -> Vec<A> {
        let mut acc = vec![init; self.kept];
        let r = self.dims.len();
        if x.is_empty() || self.kept == 0 {
            return acc;
        }
        let tail = self.reduced.iter().rev().take_while(|&&red| red).count();
        if self.reduced[..r - tail].iter().all(|&red| !red) {
            // Only a contiguous suffix is reduced: one output per row.
            let row = x.len() / self.kept;
            acc.par_iter_mut().zip(x.par_chunks(row)).with_min_len(64).for_each(|(a, c)| *a = c.iter().fold(*a, |a, &v| f(a, v)));
            return acc;
        }
        let kept_dims: Vec<usize> = self.dims.iter().zip(self.reduced).map(|(&d, &red)| if red { 1 } else { d }).collect();
        let ost: Vec<usize> = strides(&kept_dims).iter().zip(self.reduced).map(|(&s, &red)| if red { 0 } else { s }).collect();
        let (last, inner) = (self.dims[r - 1], ost[r - 1]);
        for (i, row) in x.chunks(last.max(1)).enumerate() {
            let base = row_offset(i, &self.dims[..r - 1], &ost[..r - 1]);
            row.iter().enumerate().for_each(|(j, &v)| acc[base + j * inner] = f(acc[base + j * inner], v));
        }
        acc
    }
}

/// `mean_pool`: masked mean of `hidden [B,S,H]` over tokens.
pub(super) fn mean_pool(hidden: &Tensor, mask: &Tensor, out: &OutType) -> Result<Tensor, String> {
    let h = f32s(hidden)?;
    let (&[b, s, dim], &[mb, ms]) = (hidden.shape.as_slice(), mask.shape.as_slice()) else {
        return Err(format!("wants hidden [B,S,H] and mask [B,S], got {:?} and {:?}", hidden.shape, mask.shape));
    };
    if (b, s) != (mb, ms) || out.shape != [b, dim] {
        return Err(format!("hidden {:?}, mask {:?} and result {:?} disagree", hidden.shape, mask.shape, out.shape));
    }
    let m = mask.to_f32_vec();
    let mut res = vec![0f32; b * dim];
    for_rows(&mut res, dim, |bi, row| {
        let mut acc = vec![0f64; dim];
        let mut count = 0f64;
        for si in 0..s {
            let w = m[bi * s + si];
            if w != 0.0 {
                let tok = &h[(bi * s + si) * dim..][..dim];
                acc.iter_mut().zip(tok).for_each(|(a, &v)| *a += v as f64 * w as f64);
                count += w as f64;
            }
        }
        let denom = count.max(1e-9);
        row.iter_mut().zip(&acc).for_each(|(o, &a)| *o = (a / denom) as f32);
    });
    Ok(finish(out, res))
}
