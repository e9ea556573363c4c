//! Dense matrix helpers for the algorithms: a bounds-checked wrapper over the `gemm` crate, the
//! output error of a quantized weight, and an `f64` Cholesky factorization with a triangular inverse.

use super::{check_matrix, invalid, Result};
use gemm::Parallelism;
use rayon::prelude::*;

/// A strided read-only matrix: element `(i, j)` is `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(super) struct View<'a, T> {
    pub data: &'a [T],
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> View<'a, T> {
    /// A row-major matrix with rows of `cols` elements.
    pub fn rows(data: &'a [T], cols: usize) -> Self {
        View { data, rs: cols, cs: 1 }
    }

    /// The same data read transposed.
    pub fn t(self) -> Self {
        View { data: self.data, rs: self.cs, cs: self.rs }
    }

    /// Whether an `r × c` matrix fits in the data.
    fn fits(&self, r: usize, c: usize) -> bool {
        r == 0 || c == 0 || (r - 1) * self.rs + (c - 1) * self.cs < self.data.len()
    }
}

/// The element types the `gemm` wrapper accepts.
pub(super) trait Real: Copy + Send + Sync + 'static + std::ops::Mul<Output = Self> {
    const ZERO: Self;
}

impl Real for f32 {
    const ZERO: f32 = 0.0;
}

impl Real for f64 {
    const ZERO: f64 = 0.0;
}

/// `dst[m×n] (row stride ld) = alpha·dst + beta·a[m×k]·b[k×n]` (`dst` is not read when `alpha` is
/// `None`). Panics only on a caller bug (views too small for the sizes).
pub(super) fn gemm<T: Real>(dst: &mut [T], ld: usize, mnk: (usize, usize, usize), a: View<T>, b: View<T>, alpha: Option<T>, beta: T) {
    let (m, n, k) = mnk;
    if m == 0 || n == 0 {
        return;
    }
    assert!(a.fits(m, k) && b.fits(k, n) && n <= ld && (m - 1) * ld + n <= dst.len(), "gemm operand sizes");
    let read = alpha.is_some();
    let alpha = alpha.unwrap_or(beta);
    if k == 0 {
        for row in dst.chunks_mut(ld).take(m) {
            for v in &mut row[..n] {
                *v = if read { alpha * *v } else { T::ZERO };
            }
        }
        return;
    }
    // SAFETY: the assert above keeps every access of the strided m×k, k×n and m×n views in bounds.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ld as isize,
            read,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            alpha,
            beta,
            false,
            false,
            false,
            Parallelism::Rayon(0),
        );
    }
}

/// Rows of `X` per product in [`output_error`] (bounds the temporary to `ROWS × N` floats).
const ERR_ROWS: usize = 1024;

/// The squared output error `‖X·(W − Ŵ)ᵀ‖²_F` (a sum over all `M × N` outputs, accumulated in
/// `f64`) of replacing `w` by `w_hat`, both `[n, k]`, for activations `x [M, k]`.
///
/// The difference `W − Ŵ` is formed first, so nothing cancels. Errors when the shapes disagree or a
/// value is not finite.
pub fn output_error(x: &[f32], k: usize, w: &[f32], w_hat: &[f32], n: usize) -> Result<f64> {
    check_matrix(w, n, k, "output_error: W")?;
    check_matrix(w_hat, n, k, "output_error: Ŵ")?;
    if x.len() % k != 0 {
        return invalid(format!("output_error: {} activation values are not rows of K = {k}", x.len()));
    }
    let d: Vec<f32> = w.iter().zip(w_hat).map(|(a, b)| a - b).collect();
    Ok(diff_error(x, k, &d, n))
}

/// `‖X·Dᵀ‖²_F` for `x [M, k]` and `d [n, k]`, in chunks of rows.
pub(super) fn diff_error(x: &[f32], k: usize, d: &[f32], n: usize) -> f64 {
    let mut out = vec![0f32; ERR_ROWS.min(x.len() / k) * n];
    let mut total = 0f64;
    for chunk in x.chunks(ERR_ROWS * k) {
        let m = chunk.len() / k;
        gemm(&mut out, n, (m, n, k), View::rows(chunk, k), View::rows(d, k).t(), None, 1.0f32);
        // Per-row partial sums, then a sequential total: the result does not depend on thread timing.
        let rows: Vec<f64> = out[..m * n].par_chunks(n).map(|r| r.iter().map(|&v| f64::from(v) * f64::from(v)).sum()).collect();
        total += rows.iter().sum::<f64>();
    }
    total
}

/// `Σ_i d_i·G·d_iᵀ` for `d [n, k]` and a `k × k` Gram matrix `g = XᵀX`: the same value as
/// [`diff_error`] on the rows `X`, at `n·k²` instead of `M·n·k` multiply-adds, in `f64`.
pub(super) fn gram_error(g: &[f64], k: usize, d: &[f32], n: usize) -> f64 {
    let dd: Vec<f64> = d.iter().map(|&v| f64::from(v)).collect();
    let mut e = vec![0f64; n * k];
    gemm(&mut e, k, (n, k, k), View::rows(&dd, k), View::rows(g, k), None, 1.0);
    let rows: Vec<f64> = e.par_chunks(k).zip(dd.par_chunks(k)).map(|(a, b)| a.iter().zip(b).map(|(p, q)| p * q).sum()).collect();
    rows.iter().sum()
}

/// Dot product with four independent accumulators (vectorizable without reassociation flags).
pub(super) fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a4, b4) = (a[..n].chunks_exact(4), b[..n].chunks_exact(4));
    let (ra, rb) = (a4.remainder(), b4.remainder());
    let mut acc = [0f64; 4];
    for (x, y) in a4.zip(b4) {
        for l in 0..4 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f64 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    (acc[0] + acc[2]) + (acc[1] + acc[3]) + tail
}

/// Block size of the blocked Cholesky factorization.
const CHOL_BLOCK: usize = 64;

/// Lower Cholesky factor `L` (`A = L·Lᵀ`) of the symmetric `k × k` row-major `a`, in place: the lower
/// triangle of `a` becomes `L`, the strict upper triangle is zeroed. Only the lower triangle is read.
///
/// Blocked right-looking algorithm: factor a diagonal block, solve the panel below it, update the
/// trailing matrix with one `gemm`. Returns `Err(j)` with the first column whose pivot is not
/// positive (or not finite).
pub(super) fn cholesky(a: &mut [f64], k: usize) -> std::result::Result<(), usize> {
    for b0 in (0..k).step_by(CHOL_BLOCK) {
        let b1 = (b0 + CHOL_BLOCK).min(k);
        factor_diagonal(a, k, b0, b1)?;
        solve_panel(a, k, b0, b1);
        if b1 < k {
            // A22 −= L21·L21ᵀ. The panel L21 lives in the rows being updated: copy it out first.
            let tail = &mut a[b1 * k..];
            let w = b1 - b0;
            let panel: Vec<f64> = tail.chunks(k).flat_map(|r| r[b0..b1].iter().copied()).collect();
            gemm(&mut tail[b1..], k, (k - b1, k - b1, w), View::rows(&panel, w), View::rows(&panel, w).t(), Some(1.0), -1.0);
        }
    }
    for i in 0..k {
        a[i * k + i + 1..(i + 1) * k].fill(0.0);
    }
    Ok(())
}

/// Unblocked Cholesky of the diagonal block `[b0, b1)²` (already updated by earlier blocks).
fn factor_diagonal(a: &mut [f64], k: usize, b0: usize, b1: usize) -> std::result::Result<(), usize> {
    for j in b0..b1 {
        let row_j = &a[j * k + b0..j * k + j];
        let d = a[j * k + j] - dot(row_j, row_j);
        if !(d > 0.0 && d.is_finite()) {
            return Err(j);
        }
        let l = d.sqrt();
        a[j * k + j] = l;
        for i in j + 1..b1 {
            let s = a[i * k + j] - dot(&a[i * k + b0..i * k + j], &a[j * k + b0..j * k + j]);
            a[i * k + j] = s / l;
        }
    }
    Ok(())
}

/// Rows below the diagonal block: `L21 = A21 · L11⁻ᵀ` by forward substitution, rows in parallel.
fn solve_panel(a: &mut [f64], k: usize, b0: usize, b1: usize) {
    if b1 >= k {
        return;
    }
    let diag: Vec<f64> = a[b0 * k..b1 * k].to_vec();
    a[b1 * k..].par_chunks_mut(k).for_each(|row| {
        for j in b0..b1 {
            let lj = &diag[(j - b0) * k..(j - b0 + 1) * k];
            let s = row[j] - dot(&row[b0..j], &lj[b0..j]);
            row[j] = s / lj[j];
        }
    });
}

/// Inverse of the lower-triangular `k × k` row-major `l` (non-zero diagonal): column `c` of the
/// result solves `L·m = e_c` by forward substitution; columns are independent and run in parallel.
/// Returns the inverse row-major (lower triangular).
pub(super) fn lower_inverse(l: &[f64], k: usize) -> Vec<f64> {
    let cols: Vec<Vec<f64>> = (0..k)
        .into_par_iter()
        .map(|c| {
            // m[i − c] for i in c..k.
            let mut m = vec![0f64; k - c];
            m[0] = 1.0 / l[c * k + c];
            for i in c + 1..k {
                let s = dot(&l[i * k + c..i * k + i], &m[..i - c]);
                m[i - c] = -s / l[i * k + i];
            }
            m
        })
        .collect();
    let mut inv = vec![0f64; k * k];
    for (c, m) in cols.iter().enumerate() {
        for (off, &v) in m.iter().enumerate() {
            inv[(c + off) * k + c] = v;
        }
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spd(k: usize) -> Vec<f64> {
        // A = B·Bᵀ + k·I with a deterministic B.
        let b: Vec<f64> = (0..k * k).map(|i| ((i * 7919 % 97) as f64 - 48.0) / 50.0).collect();
        let mut a = vec![0f64; k * k];
        for i in 0..k {
            for j in 0..k {
                a[i * k + j] = dot(&b[i * k..(i + 1) * k], &b[j * k..(j + 1) * k]) + if i == j { k as f64 } else { 0.0 };
            }
        }
        a
    }

    #[test]
    fn cholesky_reconstructs_and_inverse_is_inverse() {
        for k in [1, 5, 64, 130] {
            let a = spd(k);
            let mut l = a.clone();
            cholesky(&mut l, k).unwrap();
            let mut worst = 0f64;
            for i in 0..k {
                for j in 0..k {
                    let r = dot(&l[i * k..i * k + k], &l[j * k..j * k + k]);
                    worst = worst.max((r - a[i * k + j]).abs() / a[i * k + i].abs());
                }
            }
            assert!(worst < 1e-12, "k = {k}: L·Lᵀ differs from A by {worst}");
            let inv = lower_inverse(&l, k);
            for i in 0..k {
                for j in 0..k {
                    let r: f64 = (0..k).map(|p| l[i * k + p] * inv[p * k + j]).sum();
                    let want = if i == j { 1.0 } else { 0.0 };
                    assert!((r - want).abs() < 1e-10, "k = {k}: (L·L⁻¹)[{i},{j}] = {r}");
                }
            }
        }
    }

    #[test]
    fn cholesky_reports_the_failing_pivot() {
        let mut a = vec![1.0, 2.0, 2.0, 1.0];
        assert_eq!(cholesky(&mut a, 2), Err(1));
        let mut nan = vec![f64::NAN];
        assert_eq!(cholesky(&mut nan, 1), Err(0));
    }

    #[test]
    fn output_error_matches_a_naive_sum() {
        let (m, n, k) = (7, 3, 5);
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let w_hat: Vec<f32> = w.iter().map(|v| v + 0.01 * v.signum()).collect();
        let mut want = 0f64;
        for r in 0..m {
            for o in 0..n {
                let e: f64 = (0..k).map(|j| f64::from(x[r * k + j]) * f64::from(w[o * k + j] - w_hat[o * k + j])).sum();
                want += e * e;
            }
        }
        let got = output_error(&x, k, &w, &w_hat, n).unwrap();
        assert!((got - want).abs() <= 1e-5 * want, "{got} vs {want}");
        let xd: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        let g: Vec<f64> = (0..k * k).map(|i| (0..m).map(|r| xd[r * k + i / k] * xd[r * k + i % k]).sum()).collect();
        let d: Vec<f32> = w.iter().zip(&w_hat).map(|(a, b)| a - b).collect();
        let via_gram = gram_error(&g, k, &d, n);
        assert!((via_gram - want).abs() <= 1e-5 * want, "{via_gram} vs {want}");
        assert!(output_error(&x, k, &w, &w_hat[1..], n).is_err());
    }
}
