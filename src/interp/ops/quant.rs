//! `quantize` and `dequantize` (quant-formats.md §2–§3).
//!
//! - Integer storage: `q = cast(RNE(x / s) + z)`, i.e. `clamp(RNE(x/s) + z, qmin, qmax)`; without a
//!   zero point `q = cast(x / s)`. FP8/FP4 storage: `q = cast(x / s)` (RNE, saturating to ±max).
//!   All conversions go through `numerics::cast`, so NaN → 0 for integers, NaN for FP8, +6 for FP4.
//! - `x / s` is a true `f32` division, not a multiplication by `1/s` (ONNX's definition). GPU
//!   kernels that multiply by a reciprocal may differ by one step on rounding ties.
//! - `dequantize`: `x = (q − z)·s` in `f32`, then rounded to the output dtype.
//! - Scales follow the granularity: per tensor (an input scale may be `[]` or `[1]`), per channel
//!   along `axis`, per token (one per row of the last axis, shape `data[..-1] ++ [1]`), or blocks of
//!   `(axis, size)` with ragged last blocks. A literal scale applies to every region.
//! - Dynamic scales: `s = amax(|x| over the region) / qmax(storage)` in `f32`, then rounded to the
//!   scale dtype (`f32` as is, `e8m0` with the spec's rounding, others with `numerics::cast`). NaN
//!   elements are ignored by `amax` (like CUDA's `fmaxf`). A region whose `amax` is 0, or whose
//!   rounded scale underflows to 0, gets `s = 1`, so nothing is divided by zero (its elements then
//!   quantize to 0 or to values below the storage's resolution). The scales are the second output.

use super::{f32s, finish, for_rows, take_f32, OutType};
use crate::interp::tensor::{strides, Tensor};
use crate::ir::{normalize_axis, DType, Granularity, QuantSpec, ScaleSource, ZeroPoint};
use crate::numerics::{self, E8M0Rounding};
use std::ops::Range;
use std::sync::Arc;

/// Which scale each element of a tensor uses.
struct ScaleMap {
    /// Data extents (a rank-0 tensor is treated as `[1]`).
    dims: Vec<usize>,
    /// Per data axis: the scale extent along it (1 where the axis shares one scale).
    full: Vec<usize>,
    /// Per data axis: how many consecutive indices share a scale (the block size, else 1).
    div: Vec<usize>,
    /// Per data axis: the scale-index stride (0 where `full` is 1).
    st: Vec<usize>,
    /// The scale tensor's declared shape (`Granularity::scale_shape`).
    shape: Vec<usize>,
}

impl ScaleMap {
    fn new(g: &Granularity, data: &[usize]) -> Result<Self, String> {
        let r = data.len();
        let dims = if r == 0 { vec![1] } else { data.to_vec() };
        let mut div = vec![1; dims.len()];
        let axis = |a: i64| normalize_axis(a, r).ok_or_else(|| format!("axis {a} out of range for rank {r}"));
        let (full, shape) = match g {
            Granularity::PerTensor => (vec![1; dims.len()], vec![]),
            Granularity::PerChannel { axis: a } => {
                let a = axis(*a)?;
                let full = (0..r).map(|d| if d == a { dims[d] } else { 1 }).collect();
                (full, vec![dims[a]])
            }
            Granularity::PerToken if r == 0 => return Err("per-token quantization needs rank ≥ 1".into()),
            Granularity::PerToken => {
                let full: Vec<usize> = dims[..r - 1].iter().copied().chain([1]).collect();
                (full.clone(), full)
            }
            Granularity::Block { blocks } => {
                let mut full = dims.clone();
                for &(a, size) in blocks {
                    let a = axis(a)?;
                    let size = usize::try_from(size).ok().filter(|&s| s > 0).ok_or("block size must be positive")?;
                    div[a] = size;
                    full[a] = dims[a].div_ceil(size);
                }
                (full.clone(), full)
            }
        };
        let st = strides(&full).iter().zip(&full).map(|(&s, &f)| if f == 1 { 0 } else { s }).collect();
        Ok(ScaleMap { dims, full, div, st, shape })
    }

    fn numel(&self) -> usize {
        self.full.iter().product()
    }

    fn row_len(&self) -> usize {
        *self.dims.last().unwrap_or(&1)
    }

    /// Scale index of the first element of row `row` (a row-major index over all axes but the last).
    fn row_base(&self, mut row: usize) -> usize {
        let r = self.dims.len();
        let mut base = 0;
        for d in (0..r - 1).rev() {
            let n = self.dims[d].max(1);
            base += (row % n) / self.div[d] * self.st[d];
            row /= n;
        }
        base
    }

    /// The stretches of row `row` that share one scale, with that scale's index.
    fn segments(&self, row: usize) -> impl Iterator<Item = (Range<usize>, usize)> {
        let (base, len) = (self.row_base(row), self.row_len());
        let (div, st) = (self.div[self.dims.len() - 1], self.st[self.dims.len() - 1]);
        let step = if st == 0 { len.max(1) } else { div };
        (0..len).step_by(step).map(move |j| (j..(j + step).min(len), base + j / div * st))
    }

    /// True when every row owns a distinct, contiguous run of `full[last]` scales.
    fn rows_disjoint(&self) -> bool {
        let r = self.dims.len();
        (0..r - 1).all(|d| self.full[d] == self.dims[d] && self.div[d] == 1)
    }

    /// Checks an input scale (or zero-point) tensor against the expected scale shape.
    fn check(&self, t: &Tensor, what: &str) -> Result<(), String> {
        let per_tensor_ok = self.shape.is_empty() && t.numel() == 1;
        if t.shape != self.shape && !per_tensor_ok {
            return Err(format!("{what} shape {:?} does not match the expected {:?}", t.shape, self.shape));
        }
        Ok(())
    }
}

/// The scale and zero point of every region.
struct Params {
    scales: Vec<f32>,
    zeros: Option<Vec<f32>>,
}

/// Reads literal or input scales and zero points (`extra` = the op's inputs after the data).
fn static_params(spec: &QuantSpec, map: &ScaleMap, extra: &[Arc<Tensor>]) -> Result<Params, String> {
    let mut extra = extra.iter();
    let n = map.numel();
    let scales = match spec.scale {
        ScaleSource::Literal(s) => vec![s; n],
        ScaleSource::Input => {
            let t = extra.next().ok_or("missing scale operand")?;
            map.check(t, "scale")?;
            f32s(t)?.to_vec()
        }
        ScaleSource::Dynamic { .. } => vec![],
    };
    let zeros = match spec.zero_point {
        None => None,
        Some(_) if !spec.storage.is_int() => return Err(format!("a zero point needs integer storage, not {}", spec.storage)),
        Some(ZeroPoint::Literal(z)) => Some(vec![z as f32; n]),
        Some(ZeroPoint::Input) => {
            let t = extra.next().ok_or("missing zero-point operand")?;
            map.check(t, "zero point")?;
            Some(t.to_f32_vec())
        }
    };
    Ok(Params { scales, zeros })
}

/// The shape of the scales of `g` over data of shape `data`.
pub(super) fn scale_shape(g: &Granularity, data: &[usize]) -> Result<Vec<usize>, String> {
    Ok(ScaleMap::new(g, data)?.shape)
}

/// `quantize`: the quantized tensor, plus the scales when they are dynamic.
pub(super) fn quantize(spec: &QuantSpec, x: Arc<Tensor>, extra: Vec<Arc<Tensor>>, outs: &[OutType]) -> Result<Vec<Tensor>, String> {
    let map = ScaleMap::new(&spec.granularity, &x.shape)?;
    let mut p = static_params(spec, &map, &extra)?;
    let dynamic = match spec.scale {
        ScaleSource::Dynamic { dtype, rounding } => {
            p.scales = dynamic_scales(&map, f32s(&x)?, spec.storage, dtype, rounding);
            Some(dtype)
        }
        _ => None,
    };
    let (storage, row) = (spec.storage, map.row_len());
    let mut q = take_f32(x)?;
    for_rows(&mut q, row, |i, row| {
        for (range, si) in map.segments(i) {
            let s = p.scales[si];
            match &p.zeros {
                Some(z) => row[range].iter_mut().for_each(|v| *v = numerics::cast(numerics::round_half_even(*v / s) + z[si], storage)),
                None => row[range].iter_mut().for_each(|v| *v = numerics::cast(*v / s, storage)),
            }
        }
    });
    let q_out = outs.first().ok_or("missing output")?;
    let mut res = vec![finish(q_out, q)];
    if let Some(dtype) = dynamic {
        let s_out = outs.get(1).ok_or("a dynamic quantize needs a scale output")?;
        if s_out.shape != map.shape || s_out.dtype != dtype {
            return Err(format!("scale output {}{:?}, expected {dtype}{:?}", s_out.dtype, s_out.shape, map.shape));
        }
        res.push(finish(s_out, p.scales));
    }
    Ok(res)
}

/// Per-region `amax / qmax`, rounded to the scale dtype (1 for all-zero regions).
fn dynamic_scales(map: &ScaleMap, x: &[f32], storage: DType, dtype: DType, rounding: E8M0Rounding) -> Vec<f32> {
    let mut amax = vec![0f32; map.numel()];
    let row = map.row_len();
    let fold = |acc: &mut [f32], i: usize, xr: &[f32], off: usize| {
        for (range, si) in map.segments(i) {
            let a = xr[range].iter().fold(0f32, |m, v| m.max(v.abs()));
            acc[si - off] = acc[si - off].max(a);
        }
    };
    if map.rows_disjoint() && row > 0 {
        let per = map.full[map.dims.len() - 1];
        for_rows(&mut amax, per, |i, acc| fold(acc, i, &x[i * row..][..row], i * per));
    } else if row > 0 {
        x.chunks(row).enumerate().for_each(|(i, xr)| fold(&mut amax, i, xr, 0));
    }
    let qmax = storage.max_finite() as f32;
    amax.iter()
        .map(|&a| {
            let s = round_scale(a / qmax, dtype, rounding);
            if a == 0.0 || s == 0.0 {
                1.0
            } else {
                s
            }
        })
        .collect()
}

/// Rounds a computed scale to its storage dtype.
fn round_scale(s: f32, dtype: DType, rounding: E8M0Rounding) -> f32 {
    match dtype {
        DType::E8M0 => numerics::e8m0_to_f32(numerics::f32_to_e8m0(s, rounding)),
        other => numerics::cast(s, other),
    }
}

/// `dequantize`: `(q − z)·s` rounded to the output dtype.
pub(super) fn dequantize(spec: &QuantSpec, q: Arc<Tensor>, extra: Vec<Arc<Tensor>>, out: &OutType) -> Result<Tensor, String> {
    if spec.is_dynamic() {
        return Err("dequantize cannot compute its own scale".into());
    }
    let map = ScaleMap::new(&spec.granularity, &q.shape)?;
    let p = static_params(spec, &map, &extra)?;
    let mut x = take_f32(q)?;
    for_rows(&mut x, map.row_len(), |i, row| {
        for (range, si) in map.segments(i) {
            let s = p.scales[si];
            match &p.zeros {
                Some(z) => row[range].iter_mut().for_each(|v| *v = (*v - z[si]) * s),
                None => row[range].iter_mut().for_each(|v| *v *= s),
            }
        }
    });
    Ok(finish(out, x))
}
