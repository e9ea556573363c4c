//! Element-wise ops: `scalar`, `iota`, `cast`, unary and binary (NumPy broadcasting) ops.
//!
//! - Binary ops on `f32`-held dtypes compute in `f32` and round to the output dtype; `max`/`min`
//!   propagate NaN (like `torch.maximum`). On `i32`/`i64` they compute in `i64` with wrapping
//!   `add`/`sub`/`mul`, truncating `div` (division by zero is an error), and wrap `i32` results.
//! - `gelu` is exact: `0.5·x·erfc(−x/√2)` (= `x·Φ(x)`, accurate also in the negative tail);
//!   `relu` keeps NaN.
//! - `cast` to `i32`/`i64` rounds half to even and saturates (NaN → 0), via `numerics::cast`;
//!   `i64` → `i32` saturates.

use super::{f32s, finish, finish_i64, for_rows, map_in_place, row_offset, take_f32, OutType, PAR_MIN};
use crate::interp::perturb::{Function, Perturbation};
use crate::interp::tensor::{f32_to_i64, stored_as_i64, strides, Tensor, TensorData};
use crate::ir::{BinaryOp, DType, UnaryOp};
use rayon::prelude::*;
use std::sync::Arc;

/// `scalar`: a rank-0 literal of the output dtype.
pub(super) fn scalar(value: f64, out: &OutType) -> Tensor {
    if stored_as_i64(out.dtype) {
        return finish_i64(out, vec![saturate_i64(value as i64, out.dtype)]);
    }
    finish(out, vec![value as f32])
}

/// `iota`: `0, 1, …, n−1`.
pub(super) fn iota(out: &OutType) -> Result<Tensor, String> {
    let &[n] = out.shape.as_slice() else { return Err(format!("iota output must be rank 1, got {:?}", out.shape)) };
    if stored_as_i64(out.dtype) {
        return Ok(finish_i64(out, (0..n as i64).map(|i| saturate_i64(i, out.dtype)).collect()));
    }
    Ok(finish(out, (0..n).map(|i| i as f32).collect()))
}

/// Clamps an `i64` into the range of `dt` (`i32` or `i64`).
fn saturate_i64(x: i64, dt: DType) -> i64 {
    match dt {
        DType::I32 => x.clamp(i32::MIN as i64, i32::MAX as i64),
        _ => x,
    }
}

/// `cast`: element-wise conversion to the output dtype.
pub(super) fn cast(x: Arc<Tensor>, out: &OutType) -> Tensor {
    match (&x.data, stored_as_i64(out.dtype)) {
        (TensorData::F32(v), true) => finish_i64(out, v.iter().map(|&e| f32_to_i64(e, out.dtype)).collect()),
        (TensorData::I64(v), true) => finish_i64(out, v.iter().map(|&e| saturate_i64(e, out.dtype)).collect()),
        (TensorData::I64(v), false) => finish(out, v.iter().map(|&e| e as f32).collect()),
        (TensorData::F32(_), false) => {
            let data = take_f32(x).unwrap_or_default();
            finish(out, data)
        }
    }
}

/// Element-wise unary ops on `f32`-held data; with `perturb`, the `erfc`, `exp` and `tanh` results
/// move within CUDA's bound ([`Perturbation::apply`]).
pub(super) fn unary(op: UnaryOp, x: Arc<Tensor>, out: &OutType, perturb: Option<Perturbation>) -> Result<Tensor, String> {
    let mut d = take_f32(x)?;
    let f = move |f: Function, x: f32, y: f32| perturb.map_or(y, |p| p.apply(f, x, y));
    match op {
        UnaryOp::Gelu => map_in_place(&mut d, |x| {
            let z = -x * std::f32::consts::FRAC_1_SQRT_2;
            0.5 * x * f(Function::Erfc, z, libm::erfcf(z))
        }),
        UnaryOp::GeluTanh => map_in_place(&mut d, |x| gelu_tanh(x, &|t| f(Function::Tanh, t, t.tanh()))),
        UnaryOp::Silu => map_in_place(&mut d, |x| x / (1.0 + f(Function::Exp, -x, (-x).exp()))),
        UnaryOp::Relu => map_in_place(&mut d, |x| if x < 0.0 { 0.0 } else { x }),
        UnaryOp::Exp => map_in_place(&mut d, |x| f(Function::Exp, x, x.exp())),
        UnaryOp::Tanh => map_in_place(&mut d, |x| f(Function::Tanh, x, x.tanh())),
        UnaryOp::Sqrt => map_in_place(&mut d, f32::sqrt),
        UnaryOp::Rsqrt => map_in_place(&mut d, |x| 1.0 / x.sqrt()),
        UnaryOp::Neg => map_in_place(&mut d, |x| -x),
        UnaryOp::Abs => map_in_place(&mut d, f32::abs),
    }
    Ok(finish(out, d))
}

/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, with `tanh` as given.
fn gelu_tanh(x: f32, tanh: &dyn Fn(f32) -> f32) -> f32 {
    const K: f32 = 0.797_884_6; // √(2/π)
    0.5 * x * (1.0 + tanh(K * (x + 0.044715 * x * x * x)))
}

/// Element-wise binary ops with NumPy broadcasting.
pub(super) fn binary(op: BinaryOp, a: Arc<Tensor>, b: Arc<Tensor>, out: &OutType) -> Result<Tensor, String> {
    if a.as_i64().is_some() || b.as_i64().is_some() {
        return binary_i64(op, &a, &b, out);
    }
    let nan_or = |x: f32, y: f32, v: f32| if x.is_nan() || y.is_nan() { f32::NAN } else { v };
    match op {
        BinaryOp::Add => binary_f32(a, b, out, |x, y| x + y),
        BinaryOp::Sub => binary_f32(a, b, out, |x, y| x - y),
        BinaryOp::Mul => binary_f32(a, b, out, |x, y| x * y),
        BinaryOp::Div => binary_f32(a, b, out, |x, y| x / y),
        BinaryOp::Max => binary_f32(a, b, out, move |x, y| nan_or(x, y, x.max(y))),
        BinaryOp::Min => binary_f32(a, b, out, move |x, y| nan_or(x, y, x.min(y))),
    }
}

fn binary_f32(a: Arc<Tensor>, b: Arc<Tensor>, out: &OutType, f: impl Fn(f32, f32) -> f32 + Sync + Send) -> Result<Tensor, String> {
    let data = if a.shape == out.shape {
        let mut buf = take_f32(a)?;
        bcast_apply(&mut buf, &out.shape, f32s(&b)?, &b.shape, |o, y| *o = f(*o, y))?;
        buf
    } else if b.shape == out.shape {
        let mut buf = take_f32(b)?;
        bcast_apply(&mut buf, &out.shape, f32s(&a)?, &a.shape, |o, x| *o = f(x, *o))?;
        buf
    } else {
        let mut buf = vec![0f32; out.shape.iter().product()];
        bcast_apply(&mut buf, &out.shape, f32s(&a)?, &a.shape, |o, x| *o = x)?;
        bcast_apply(&mut buf, &out.shape, f32s(&b)?, &b.shape, |o, y| *o = f(*o, y))?;
        buf
    };
    Ok(finish(out, data))
}

fn binary_i64(op: BinaryOp, a: &Tensor, b: &Tensor, out: &OutType) -> Result<Tensor, String> {
    let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) else {
        return Err(format!("operands {} and {} are held differently", a.dtype, b.dtype));
    };
    if op == BinaryOp::Div && y.contains(&0) {
        return Err("integer division by zero".into());
    }
    let f = |p: i64, q: i64| match op {
        BinaryOp::Add => p.wrapping_add(q),
        BinaryOp::Sub => p.wrapping_sub(q),
        BinaryOp::Mul => p.wrapping_mul(q),
        BinaryOp::Div => p.wrapping_div(q),
        BinaryOp::Max => p.max(q),
        BinaryOp::Min => p.min(q),
    };
    let mut buf = vec![0i64; out.shape.iter().product()];
    bcast_apply(&mut buf, &out.shape, x, &a.shape, |o, p| *o = p)?;
    bcast_apply(&mut buf, &out.shape, y, &b.shape, |o, q| *o = f(*o, q))?;
    if out.dtype == DType::I32 {
        buf.iter_mut().for_each(|v| *v = *v as i32 as i64);
    }
    Ok(finish_i64(out, buf))
}

/// Calls `f(&mut out[i], src[j])` for every element of `out`, where `src` (shape `sshape`) is
/// broadcast to `oshape`. Fast paths: equal shapes, a single element, and a trailing-suffix operand
/// (bias add); otherwise a strided walk by rows of the last axis.
pub(super) fn bcast_apply<T, F>(out: &mut [T], oshape: &[usize], src: &[T], sshape: &[usize], f: F) -> Result<(), String>
where
    T: Copy + Send + Sync,
    F: Fn(&mut T, T) + Sync + Send,
{
    let r = oshape.len();
    if sshape.len() > r {
        return Err(format!("cannot broadcast {sshape:?} to {oshape:?}"));
    }
    let s: Vec<usize> = std::iter::repeat_n(1, r - sshape.len()).chain(sshape.iter().copied()).collect();
    if s.iter().zip(oshape).any(|(&a, &b)| a != b && a != 1) || src.len() != s.iter().product::<usize>() {
        return Err(format!("cannot broadcast {sshape:?} to {oshape:?}"));
    }
    if out.is_empty() {
        return Ok(());
    }
    if s == oshape {
        let pair = |(o, x): (&mut T, &T)| f(o, *x);
        if out.len() < PAR_MIN {
            out.iter_mut().zip(src).for_each(pair);
        } else {
            let c = PAR_MIN / 2;
            out.par_chunks_mut(c).zip(src.par_chunks(c)).for_each(|(o, x)| o.iter_mut().zip(x).for_each(pair));
        }
        return Ok(());
    }
    if src.len() == 1 {
        for_rows(out, oshape[r - 1].max(1), |_, row| row.iter_mut().for_each(|o| f(o, src[0])));
        return Ok(());
    }
    let first = s.iter().position(|&d| d != 1).unwrap_or(r);
    if s[first..] == oshape[first..] {
        for_rows(out, src.len(), |_, row| row.iter_mut().zip(src).for_each(|(o, x)| f(o, *x)));
        return Ok(());
    }
    let st: Vec<usize> = strides(&s).iter().zip(&s).map(|(&st, &d)| if d == 1 { 0 } else { st }).collect();
    let (last, inner) = (oshape[r - 1], st[r - 1]);
    for_rows(out, last, |i, row| {
        let base = row_offset(i, &oshape[..r - 1], &st[..r - 1]);
        row.iter_mut().enumerate().for_each(|(j, o)| f(o, src[base + j * inner]));
    });
    Ok(())
}
