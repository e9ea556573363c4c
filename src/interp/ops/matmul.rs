//! `matmul`: batched matrix products on the `gemm` crate, in f32 ([`Accumulation::F32`]) or in f64
//! rounded to f32 once ([`Accumulation::F64`]; always so for 8-bit integer `qmatmul`s, where it is
//! exact), or element by element as tensor cores sum ([`Accumulation::TensorCore`],
//! [`Accumulation::Promoted`]), then rounded to the output dtype.
//!
//! Strategy:
//! - `b` without batch extent (`[N, K]` with `transpose_b`: a Linear) and `a` not transposed: all
//!   rows of `a` form one `[rows, K]` GEMM, parallelised inside `gemm` (`Parallelism::Rayon`).
//! - Otherwise batches (NumPy-broadcast over the leading axes, broadcast operands read with stride 0)
//!   run in parallel with rayon, one single-threaded GEMM each, when there are at least as many
//!   batches as threads (attention `[B,H,S,D]×[B,H,S,D]ᵀ`); fewer, larger batches run one after
//!   another with a parallel GEMM each.
//! - Transposed operands are never copied: `gemm` reads them through their strides.

use super::{f32s, finish, row_offset, OutType};
use crate::interp::tensor::{strides, Tensor};
use crate::interp::tensor_core::TensorCoreSums;
use crate::interp::Accumulation;
use crate::numerics::map_slice;
use gemm::Parallelism;
use rayon::prelude::*;

/// Logical matrix sizes of one product.
#[derive(Clone, Copy)]
struct Dims {
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
}

impl Dims {
    /// Element strides (column, row) of the m×k view of `a` and of the k×n view of `b`, each
    /// read transposed when `ta` (`tb`).
    fn strides(&self) -> ((usize, usize), (usize, usize)) {
        let a = if self.ta { (self.m, 1) } else { (1, self.k) };
        let b = if self.tb { (self.k, 1) } else { (1, self.n) };
        (a, b)
    }
}

/// `a · b` over the last two axes, batch axes broadcast, summed as `acc` says.
pub(super) fn matmul(a: &Tensor, b: &Tensor, ta: bool, tb: bool, out: &OutType, acc: Accumulation) -> Result<Tensor, String> {
    if acc == Accumulation::F64 {
        return matmul_f64(a, b, ta, tb, out);
    }
    let tensor_core = match acc {
        Accumulation::TensorCore(sums) => Some((sums, 0)),
        Accumulation::Promoted { sums, every } => Some((sums, every as usize)),
        _ => None,
    };
    if let Some(sums) = tensor_core {
        let dst = product_tensor_core(f32s(a)?, &a.shape, f32s(b)?, &b.shape, ta, tb, &out.shape, sums)?;
        return Ok(finish(out, dst));
    }
    let k_axis = |t: &Tensor, last: bool| if last { t.shape.len().wrapping_sub(1) } else { t.shape.len().wrapping_sub(2) };
    let (ka, kb) = (k_axis(a, !ta), k_axis(b, tb));
    let k = a.shape.get(ka).copied().unwrap_or(0);
    if let Accumulation::F32SplitK { parts } = acc {
        let parts = (parts as usize).min(k);
        if parts >= 2 {
            let mut dst: Option<Vec<f32>> = None;
            for p in 0..parts {
                let range = p * k / parts..(p + 1) * k / parts;
                let (ap, bp) = (slice_axis(a, ka, range.clone())?, slice_axis(b, kb, range)?);
                let part = product(&ap.0, &ap.1, &bp.0, &bp.1, ta, tb, &out.shape)?;
                match dst.as_mut() {
                    None => dst = Some(part),
                    Some(d) => d.iter_mut().zip(part).for_each(|(d, r)| *d += r),
                }
            }
            return Ok(finish(out, dst.unwrap_or_default()));
        }
    }
    let dst = product(f32s(a)?, &a.shape, f32s(b)?, &b.shape, ta, tb, &out.shape)?;
    Ok(finish(out, dst))
}

/// The elements of `t` whose index along `axis` lies in `range`, and their shape.
fn slice_axis(t: &Tensor, axis: usize, range: std::ops::Range<usize>) -> Result<(Vec<f32>, Vec<usize>), String> {
    let xs = f32s(t)?;
    let extent = *t.shape.get(axis).ok_or_else(|| format!("no axis {axis} in {:?}", t.shape))?;
    let inner: usize = t.shape[axis + 1..].iter().product();
    let mut shape = t.shape.clone();
    shape[axis] = range.len();
    let mut out = Vec::with_capacity(xs.len() / extent.max(1) * range.len());
    for outer in xs.chunks_exact(extent * inner) {
        out.extend_from_slice(&outer[range.start * inner..range.end * inner]);
    }
    Ok((out, shape))
}

/// `a · b` summed in `f64`, converted to `f32` once (round to nearest even) and rounded to
/// `out.dtype`. Exact for integer-valued operands (`i8`/`u8` codes, as `mma.sync … s32` sums,
/// then `cvt.rn.f32.s32`): every product and partial sum is an integer below 2^53 (K·2^16 ≪ 2^53),
/// so whatever order `gemm` adds in, each sum is exact; likewise for E4M3 values.
pub(super) fn matmul_f64(a: &Tensor, b: &Tensor, ta: bool, tb: bool, out: &OutType) -> Result<Tensor, String> {
    let widen = |t: &Tensor| -> Result<Vec<f64>, String> { Ok(map_slice(f32s(t)?, |&v| f64::from(v))) };
    let dst = product(&widen(a)?, &a.shape, &widen(b)?, &b.shape, ta, tb, &out.shape)?;
    Ok(finish(out, map_slice(&dst, |&v| v as f32)))
}

/// An element type the GEMM runs in (`f32`, or `f64` for exact integer sums).
trait Elem: Copy + Send + Sync + From<f32> + 'static {}
impl Elem for f32 {}
impl Elem for f64 {}

/// The sizes of the product of operands of shapes `sa` and `sb` and its broadcast batch
/// extents, checked against the declared result shape `want`.
fn layout(sa: &[usize], sb: &[usize], ta: bool, tb: bool, want: &[usize]) -> Result<(Dims, Vec<usize>), String> {
    let (ra, rb) = (sa.len(), sb.len());
    if ra < 2 || rb < 2 {
        return Err(format!("operands need rank ≥ 2, got {sa:?} and {sb:?}"));
    }
    let (m, k) = if ta { (sa[ra - 1], sa[ra - 2]) } else { (sa[ra - 2], sa[ra - 1]) };
    let (k2, n) = if tb { (sb[rb - 1], sb[rb - 2]) } else { (sb[rb - 2], sb[rb - 1]) };
    if k != k2 {
        return Err(format!("contraction extents differ: {sa:?} vs {sb:?}"));
    }
    let batch = broadcast_dims(&sa[..ra - 2], &sb[..rb - 2])?;
    let shape: Vec<usize> = batch.iter().copied().chain([m, n]).collect();
    if shape != want {
        return Err(format!("result shape {shape:?} differs from the declared {want:?}"));
    }
    Ok((Dims { m, n, k, ta, tb }, batch))
}

/// The product of `x` (shape `sa`) and `y` (shape `sb`), checked against `want`.
fn product<T: Elem>(x: &[T], sa: &[usize], y: &[T], sb: &[usize], ta: bool, tb: bool, want: &[usize]) -> Result<Vec<T>, String> {
    let (d, batch) = layout(sa, sb, ta, tb, want)?;
    let (Dims { m, n, k, .. }, abatch, bbatch) = (d, &sa[..sa.len() - 2], &sb[..sb.len() - 2]);
    let mut dst = vec![T::from(0.0); batch.iter().product::<usize>() * m * n];
    if !dst.is_empty() && k > 0 {
        if bbatch.iter().product::<usize>() == 1 && !ta {
            let rows = x.len() / k;
            gemm_into(&mut dst, x, y, Dims { m: rows, ..d }, Parallelism::Rayon(0));
        } else {
            batched(&mut dst, (x, abatch), (y, bbatch), &batch, d);
        }
    }
    Ok(dst)
}

/// The product of `x` (shape `sa`) and `y` (shape `sb`) summed as the tensor-core model `sums.0`
/// says, promoted every `sums.1` elements of K ([`TensorCoreSums::promoted_dot`]; 0: chained
/// over all of K, from 0), checked against `want`; rows in parallel.
#[allow(clippy::too_many_arguments)]
fn product_tensor_core(
    x: &[f32],
    sa: &[usize],
    y: &[f32],
    sb: &[usize],
    ta: bool,
    tb: bool,
    want: &[usize],
    (sums, every): (TensorCoreSums, usize),
) -> Result<Vec<f32>, String> {
    let (d, batch) = layout(sa, sb, ta, tb, want)?;
    let Dims { m, n, k, .. } = d;
    let ((a_cs, a_rs), (b_cs, b_rs)) = d.strides();
    let ast = batch_strides(&sa[..sa.len() - 2], batch.len(), m * k);
    let bst = batch_strides(&sb[..sb.len() - 2], batch.len(), k * n);
    let mut dst = vec![0f32; batch.iter().product::<usize>() * m * n];
    if n == 0 {
        return Ok(dst);
    }
    dst.par_chunks_mut(n).enumerate().for_each(|(row, out)| {
        let (i, r) = (row / m, row % m);
        let (ao, bo) = (row_offset(i, &batch, &ast) + r * a_rs, row_offset(i, &batch, &bst));
        for (c, o) in out.iter_mut().enumerate() {
            *o = sums.promoted_dot(every, k, |kk| (x[ao + kk * a_cs], y[bo + kk * b_rs + c * b_cs]));
        }
    });
    Ok(dst)
}

/// One product per broadcast batch index.
fn batched<T: Elem>(dst: &mut [T], a: (&[T], &[usize]), b: (&[T], &[usize]), batch: &[usize], d: Dims) {
    let ast = batch_strides(a.1, batch.len(), d.m * d.k);
    let bst = batch_strides(b.1, batch.len(), d.k * d.n);
    let one = |i: usize, out: &mut [T], par: Parallelism| {
        let ao = row_offset(i, batch, &ast);
        let bo = row_offset(i, batch, &bst);
        gemm_into(out, &a.0[ao..ao + d.m * d.k], &b.0[bo..bo + d.k * d.n], d, par);
    };
    let nb: usize = batch.iter().product();
    if nb >= rayon::current_num_threads() {
        dst.par_chunks_mut(d.m * d.n).enumerate().for_each(|(i, o)| one(i, o, Parallelism::None));
    } else {
        dst.chunks_mut(d.m * d.n).enumerate().for_each(|(i, o)| one(i, o, Parallelism::Rayon(0)));
    }
}

/// Strides (in elements) of each broadcast batch index into an operand with batch dims `dims`
/// (right-aligned to `rank` axes) and matrices of `mat` elements; 0 on broadcast axes.
fn batch_strides(dims: &[usize], rank: usize, mat: usize) -> Vec<usize> {
    let padded: Vec<usize> = std::iter::repeat_n(1, rank - dims.len()).chain(dims.iter().copied()).collect();
    strides(&padded).iter().zip(&padded).map(|(&s, &e)| if e == 1 { 0 } else { s * mat }).collect()
}

/// NumPy broadcast of two batch shapes.
fn broadcast_dims(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let r = a.len().max(b.len());
    let at = |s: &[usize], i: usize| if i + s.len() >= r { s[i + s.len() - r] } else { 1 };
    (0..r)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y || y == 1 => Ok(x),
            (1, y) => Ok(y),
            (x, y) => Err(format!("batch extents {x} and {y} do not broadcast")),
        })
        .collect()
}

/// `dst[m×n] = a[m×k] · b[k×n]`, reading `a` (`b`) transposed when `ta` (`tb`).
fn gemm_into<T: Elem>(dst: &mut [T], a: &[T], b: &[T], d: Dims, par: Parallelism) {
    let Dims { m, n, k, .. } = d;
    assert!(dst.len() >= m * n && a.len() >= m * k && b.len() >= k * n, "gemm operand sizes");
    let ((a_cs, a_rs), (b_cs, b_rs)) = d.strides();
    // SAFETY: the asserts above keep every access of the strided m×k, k×n and m×n views in bounds.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            T::from(0.0),
            T::from(1.0),
            false,
            false,
            false,
            par,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp::tensor_core::{Rounding, TensorCoreSums};
    use crate::ir::DType;

    /// With a model wide enough to keep every bit, the tensor-core product reads operands (plain,
    /// transposed, batch-broadcast) exactly where the GEMM does: small integers sum exactly either way.
    #[test]
    fn the_tensor_core_product_reads_the_operands_the_gemm_reads() {
        let exact = TensorCoreSums {
            group: 4,
            bits: 60,
            align: Rounding::TowardZero,
            sum_bits: 60,
            normalize: Rounding::NearestEven,
            min_exponent: -126,
        };
        let ints = |n: usize, seed: usize| (0..n).map(|i| ((i * 7 + seed) % 11) as f32 - 5.0).collect::<Vec<_>>();
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let (m, k, n) = (3, 9, 5);
            let a_shape = if ta { vec![2, k, m] } else { vec![2, m, k] };
            let b_shape = if tb { vec![n, k] } else { vec![k, n] };
            let a = Tensor::f32(a_shape, ints(2 * m * k, 1));
            let b = Tensor::f32(b_shape, ints(k * n, 3));
            let out = OutType { dtype: DType::F32, shape: vec![2, m, n] };
            let want = matmul(&a, &b, ta, tb, &out, Accumulation::F64).unwrap();
            let got = matmul(&a, &b, ta, tb, &out, Accumulation::TensorCore(exact)).unwrap();
            assert_eq!(got.to_f32_vec(), want.to_f32_vec(), "ta {ta}, tb {tb}");
        }
    }

    /// `matmul` with [`Accumulation::Promoted`] sums every element as
    /// [`TensorCoreSums::promoted_dot`] over its row and column; over all of K it is the chained
    /// [`Accumulation::TensorCore`] sum, and with shorter chunks it keeps what the chained FP8
    /// sum swamps (a large first k-tile).
    #[test]
    fn promoted_products_sum_each_element_in_chunks_of_k() {
        use crate::interp::tensor_core::H100_E4M3;
        let (m, k, n) = (3, 256, 4);
        // Row r's first 32 products are large (16·16 or 8·16), the rest small (0.5·0.25 steps).
        let a: Vec<f32> = (0..m * k).map(|i| if i % k < 32 { 16.0 / (1 + i / k) as f32 } else { 0.5 + (i % 3) as f32 * 0.25 }).collect();
        let b: Vec<f32> = (0..n * k).map(|i| if i % k < 32 { 16.0 } else { 0.25 * (1 + i / k) as f32 }).collect();
        let (ta, tb) = (Tensor::f32(vec![m, k], a.clone()), Tensor::f32(vec![n, k], b.clone()));
        let out = OutType { dtype: DType::F32, shape: vec![m, n] };
        let run = |acc| matmul(&ta, &tb, false, true, &out, acc).unwrap().to_f32_vec();
        let chained = run(Accumulation::TensorCore(H100_E4M3));
        assert_eq!(run(Accumulation::Promoted { sums: H100_E4M3, every: 256 }), chained);
        let promoted = run(Accumulation::Promoted { sums: H100_E4M3, every: 128 });
        for (i, &got) in promoted.iter().enumerate() {
            let (r, c) = (i / n, i % n);
            let want = H100_E4M3.promoted_dot(128, k, |kk| (a[r * k + kk], b[c * k + kk]));
            assert_eq!(got.to_bits(), want.to_bits(), "element ({r}, {c})");
        }
        let differ = promoted.iter().zip(&chained).filter(|(p, c)| p != c).count();
        assert!(differ > m * n / 2, "the second k-tile survives promotion: {promoted:?} vs {chained:?}");
        let exact = run(Accumulation::F64);
        let closer = promoted.iter().zip(&chained).zip(&exact).all(|((p, c), e)| (p - e).abs() <= (c - e).abs());
        assert!(closer, "promoted sums lie at least as close to the exact ones: {promoted:?}, {chained:?}, {exact:?}");
    }
}
