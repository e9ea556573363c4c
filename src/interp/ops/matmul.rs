//! `matmul`: batched matrix products on the `gemm` crate (f32 accumulation), rounded to the output
//! dtype afterwards.
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

/// `a · b` over the last two axes, batch axes broadcast.
pub(super) fn matmul(a: &Tensor, b: &Tensor, ta: bool, tb: bool, out: &OutType) -> Result<Tensor, String> {
    let (x, y) = (f32s(a)?, f32s(b)?);
    let (ra, rb) = (a.rank(), b.rank());
    if ra < 2 || rb < 2 {
        return Err(format!("operands need rank ≥ 2, got {:?} and {:?}", a.shape, b.shape));
    }
    let (m, k) = if ta { (a.shape[ra - 1], a.shape[ra - 2]) } else { (a.shape[ra - 2], a.shape[ra - 1]) };
    let (k2, n) = if tb { (b.shape[rb - 1], b.shape[rb - 2]) } else { (b.shape[rb - 2], b.shape[rb - 1]) };
    if k != k2 {
        return Err(format!("contraction extents differ: {:?} vs {:?}", a.shape, b.shape));
    }
    let (abatch, bbatch) = (&a.shape[..ra - 2], &b.shape[..rb - 2]);
    let batch = broadcast_dims(abatch, bbatch)?;
    let want: Vec<usize> = batch.iter().copied().chain([m, n]).collect();
    if want != out.shape {
        return Err(format!("result shape {want:?} differs from the declared {:?}", out.shape));
    }
    let mut dst = vec![0f32; want.iter().product()];
    let d = Dims { m, n, k, ta, tb };
    if !dst.is_empty() && k > 0 {
        if bbatch.iter().product::<usize>() == 1 && !ta {
            let rows = x.len() / k;
            gemm_into(&mut dst, x, y, Dims { m: rows, ..d }, Parallelism::Rayon(0));
        } else {
            batched(&mut dst, (x, abatch), (y, bbatch), &batch, d);
        }
    }
    Ok(finish(out, dst))
}

/// One product per broadcast batch index.
fn batched(dst: &mut [f32], a: (&[f32], &[usize]), b: (&[f32], &[usize]), batch: &[usize], d: Dims) {
    let ast = batch_strides(a.1, batch.len(), d.m * d.k);
    let bst = batch_strides(b.1, batch.len(), d.k * d.n);
    let one = |i: usize, out: &mut [f32], par: Parallelism| {
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
fn gemm_into(dst: &mut [f32], a: &[f32], b: &[f32], d: Dims, par: Parallelism) {
    let Dims { m, n, k, ta, tb } = d;
    assert!(dst.len() >= m * n && a.len() >= m * k && b.len() >= k * n, "gemm operand sizes");
    let (a_cs, a_rs) = if ta { (m, 1) } else { (1, k) };
    let (b_cs, b_rs) = if tb { (k, 1) } else { (1, n) };
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
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}
