//! GPTQ (Frantar et al., arXiv 2210.17323): quantizes a weight one input column at a time and
//! spreads each column's rounding error over the columns not yet quantized, weighted by the inverse
//! Hessian of the layer's calibration inputs, so that `‖X·(W − Ŵ)ᵀ‖²` rather than `‖W − Ŵ‖²` is kept small.
//!
//! Steps, following the authors' implementation:
//! 1. `H = 2·XᵀX/M`. Dead input channels (`H_jj = 0`: the input is always 0) get `H_jj = 1` and their
//!    weight column is zeroed (it never reaches the output).
//! 2. Dampening: `λ = percdamp · mean(diag H)` is added to the diagonal. If the damped `H` still has
//!    no Cholesky factorization, the whole step is retried once with `10 · percdamp`; if that fails too,
//!    [`AlgoError::NotPositiveDefinite`] names the layer size and suggests a larger dampening.
//! 3. `U`, the upper Cholesky factor of `H⁻¹` (`H⁻¹ = UᵀU`). It is computed as `U = J·L⁻¹·J` where `L`
//!    is the lower Cholesky factor of `J·H·J` and `J` reverses the index order: the same matrix as
//!    `cholesky(cholesky_inverse(cholesky(H)), upper)` (the factor is unique), with one factorization
//!    and one triangular inverse instead of two factorizations, an inverse and a product.
//! 4. Columns in blocks of `block` (128): per column `j`, `q = quant(w_j)`, `e = (w_j − ŵ_j)/U_jj`,
//!    the rest of the block gets `w −= e·U[j, ·]`; at the end of a block its accumulated errors update
//!    every later column at once (`W[:, later] −= E·U[block, later]`, one `gemm`).
//! 5. Group parameters (RTN, see `group`) are computed from the *current*, already error-updated
//!    weights when the first column of a group is reached. Blocks are cut at group boundaries (a block
//!    holds whole groups, or a group starts a block), so those weights are always fully up to date.
//!
//! With [`GptqOptions::mse`] every group's range is the clip of it with the least squared rounding
//! error of the weights it is computed from ([`MseClip`], as the reference `Quantizer(mse=True)`).
//!
//! **Act-order** (`desc_act`): columns are processed by decreasing `H_jj`. Then the group parameters
//! are computed up front from the original (dead-zeroed) weight's contiguous groups ("static groups"),
//! so column `c` keeps group `c / G` and the result is an ordinary contiguous-group [`GroupQuant`] in
//! the original column order. This keeps the canonical layout without a `g_idx` permutation, at the
//! price of parameters that do not see GPTQ's updates.
//!
//! Every row of `W` is independent of the others (rows share only `U`), so the per-column work runs in
//! parallel over rows.

use super::clip::MseClip;
use super::group::{code, code_range, params_of, GroupParams, GroupQuant};
use super::mat::{cholesky, gemm, lower_inverse, View};
use super::stats::ChannelStats;
use super::{check_matrix, invalid, AlgoError, Result};
use rayon::prelude::*;

/// Settings.
#[derive(Clone, Debug, PartialEq)]
pub struct GptqOptions {
    /// Bits per code (4).
    pub bits: u32,
    /// Group size along K (128); `group ≥ K` gives one group per row.
    pub group: usize,
    /// Symmetric groups instead of the default asymmetric ones.
    pub symmetric: bool,
    /// Relative dampening of the Hessian's diagonal (0.01).
    pub percdamp: f64,
    /// Columns per lazy-update block (128).
    pub block: usize,
    /// Process columns by decreasing `H_jj`, with static groups (see the module doc).
    pub act_order: bool,
    /// Group ranges clipped to the least squared rounding error (`None`: plain RTN ranges).
    pub mse: Option<MseClip>,
}

impl Default for GptqOptions {
    fn default() -> Self {
        GptqOptions { bits: 4, group: 128, symmetric: false, percdamp: 0.01, block: 128, act_order: false, mse: None }
    }
}

/// What GPTQ produced.
#[derive(Clone, Debug)]
pub struct GptqResult {
    /// The quantized weight, columns in their original order.
    pub quant: GroupQuant,
    /// `Σ (w − ŵ)² / U_jj² / 2` over all elements: the loss the authors' implementation reports.
    pub h_error: f64,
    /// The relative dampening that succeeded (`percdamp`, or `10·percdamp` after a retry).
    pub percdamp: f64,
    /// Dead input channels (zero Hessian diagonal) whose weights were zeroed.
    pub dead: usize,
}

/// GPTQ on the statistics' `XᵀX` (they must be built with [`ChannelStats::with_hessian`]).
pub fn gptq_from_stats(w: &[f32], n: usize, stats: &ChannelStats, opts: &GptqOptions) -> Result<GptqResult> {
    let xtx =
        stats.xtx().ok_or_else(|| AlgoError::Invalid("GPTQ needs XᵀX: build the statistics with ChannelStats::with_hessian".into()))?;
    gptq(w, n, stats.k(), xtx, stats.rows(), opts)
}

/// GPTQ of `w [n, k]` given `xtx = XᵀX` (`k × k` row-major, `f64`) accumulated over `rows` rows.
///
/// Errors on shape mismatches, non-finite values, a negative diagonal, options out of range, and
/// when the damped Hessian is not positive definite (see the module doc).
pub fn gptq(w: &[f32], n: usize, k: usize, xtx: &[f64], rows: u64, opts: &GptqOptions) -> Result<GptqResult> {
    check_inputs(w, n, k, xtx, rows, opts)?;
    let scale = 2.0 / rows as f64;
    let mut h: Vec<f64> = xtx.iter().map(|v| v * scale).collect();
    let mut wf: Vec<f32> = w.to_vec();
    let mut dead = 0;
    for j in 0..k {
        if h[j * k + j] == 0.0 {
            h[j * k + j] = 1.0;
            wf.iter_mut().skip(j).step_by(k).for_each(|v| *v = 0.0);
            dead += 1;
        }
    }
    let ratios = opts.mse.map(|c| c.ratios()).transpose()?;
    let fixed = opts
        .act_order
        .then(|| match &opts.mse {
            Some(c) => GroupParams::mse(&wf, (n, k), opts.bits, opts.group, opts.symmetric, c),
            None => GroupParams::rtn(&wf, (n, k), opts.bits, opts.group, opts.symmetric),
        })
        .transpose()?;
    let perm = order(&h, k, opts.act_order);
    let hp: Vec<f64> = perm.iter().flat_map(|&i| perm.iter().map(move |&j| (i, j))).map(|(i, j)| h[i * k + j]).collect();
    let (u, percdamp) = match inverse_factor(&hp, k, opts.percdamp) {
        Ok(u) => (u, opts.percdamp),
        Err(_) => {
            let retry = 10.0 * opts.percdamp;
            let u = inverse_factor(&hp, k, retry).map_err(|pivot| AlgoError::NotPositiveDefinite { k, pivot, percdamp: retry })?;
            tracing::warn!(k, percdamp = retry, "GPTQ: Hessian not positive definite after dampening; retried with 10x percdamp");
            (u, retry)
        }
    };
    let wp: Vec<f64> = wf.chunks(k).flat_map(|row| perm.iter().map(|&j| f64::from(row[j]))).collect();
    let (quant, h_error) = Sweep { n, k, u: &u, perm: &perm, opts, fixed, ratios: ratios.as_deref() }.run(wp)?;
    Ok(GptqResult { quant, h_error, percdamp, dead })
}

fn check_inputs(w: &[f32], n: usize, k: usize, xtx: &[f64], rows: u64, opts: &GptqOptions) -> Result<()> {
    check_matrix(w, n, k, "GPTQ: weight")?;
    if xtx.len() != k * k {
        return invalid(format!("GPTQ: XᵀX has {} values, a {k} × {k} matrix needs {}", xtx.len(), k * k));
    }
    if rows == 0 {
        return invalid("GPTQ: no calibration rows were observed");
    }
    if let Some(i) = xtx.iter().position(|v| !v.is_finite()) {
        return invalid(format!("GPTQ: XᵀX[{}, {}] is {} (non-finite calibration data?)", i / k, i % k, xtx[i]));
    }
    if let Some(j) = (0..k).find(|&j| xtx[j * k + j] < 0.0) {
        return invalid(format!("GPTQ: XᵀX[{j}, {j}] is negative: not a Gram matrix"));
    }
    if !(opts.percdamp > 0.0 && opts.percdamp.is_finite()) || opts.block == 0 {
        return invalid(format!("GPTQ: percdamp must be positive (got {}) and block at least 1 (got {})", opts.percdamp, opts.block));
    }
    // Validates bits and group size.
    GroupParams::new((opts.bits, opts.group, opts.symmetric), (1, 1), vec![1.0], (!opts.symmetric).then(|| vec![0])).map(|_| ())
}

/// The processing order: identity, or by decreasing `H_jj` (ties by index) with act-order.
fn order(h: &[f64], k: usize, act_order: bool) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..k).collect();
    if act_order {
        perm.sort_by(|&a, &b| h[b * k + b].total_cmp(&h[a * k + a]).then(a.cmp(&b)));
    }
    perm
}

/// `U`, the upper Cholesky factor of `(H + λI)⁻¹` with `λ = percdamp·mean(diag H)`; `Err(pivot)` when
/// the damped `H` is not positive definite (see the module doc for the `J·H·J` construction).
fn inverse_factor(h: &[f64], k: usize, percdamp: f64) -> std::result::Result<Vec<f64>, usize> {
    let lambda = percdamp * (0..k).map(|j| h[j * k + j]).sum::<f64>() / k as f64;
    let r = |i: usize| k - 1 - i;
    let mut a: Vec<f64> = (0..k * k).map(|x| h[r(x / k) * k + r(x % k)]).collect();
    for j in 0..k {
        a[j * k + j] += lambda;
    }
    cholesky(&mut a, k).map_err(r)?;
    let m = lower_inverse(&a, k);
    Ok((0..k * k).map(|x| m[r(x / k) * k + r(x % k)]).collect())
}

/// The column sweep over the permuted working weights.
struct Sweep<'a> {
    n: usize,
    k: usize,
    u: &'a [f64],
    perm: &'a [usize],
    opts: &'a GptqOptions,
    /// Static group parameters (act-order), else computed during the sweep.
    fixed: Option<GroupParams>,
    /// The clip ratios of [`GptqOptions::mse`], when set.
    ratios: Option<&'a [f32]>,
}

/// One row's share of a block: its slices of the block weights, errors, codes and parameters.
struct RowBlock<'a> {
    w1: &'a mut [f64],
    err: &'a mut [f64],
    codes: &'a mut [i8],
    scales: &'a mut [f32],
    zeros: &'a mut [u8],
    /// The row of the working weights (for group columns past the block).
    row: &'a [f64],
}

impl Sweep<'_> {
    /// The end of the block starting at `i1`: whole groups per block, or a group starting the block.
    fn block_end(&self, i1: usize) -> usize {
        let (g, b) = (self.opts.group, self.opts.block);
        let end = if g <= b { i1 + b / g * g } else { (i1 + b).min((i1 / g + 1) * g) };
        end.min(self.k)
    }

    /// Quantizes every column of `wp` (`[n, k]` permuted, `f64`); returns the result and the loss.
    fn run(&self, mut wp: Vec<f64>) -> Result<(GroupQuant, f64)> {
        let (n, k, g) = (self.n, self.k, self.opts.group);
        let ng = k.div_ceil(g);
        let mut codes = vec![0i8; n * k];
        let (mut scales, mut zeros) = match &self.fixed {
            Some(p) => (p.scales.clone(), p.zeros.clone().unwrap_or_else(|| vec![0; n * ng])),
            None => (vec![1f32; n * ng], vec![0u8; n * ng]),
        };
        let mut loss = 0f64;
        let mut i1 = 0;
        while i1 < k {
            let i2 = self.block_end(i1);
            let bs = i2 - i1;
            let mut w1: Vec<f64> = wp.chunks(k).flat_map(|row| row[i1..i2].iter().copied()).collect();
            let mut err = vec![0f64; n * bs];
            loss += w1
                .par_chunks_mut(bs)
                .zip(err.par_chunks_mut(bs))
                .zip(codes.par_chunks_mut(k))
                .zip(scales.par_chunks_mut(ng).zip(zeros.par_chunks_mut(ng)))
                .zip(wp.par_chunks(k))
                .map(|((((w1, err), codes), (scales, zeros)), row)| self.row_block(i1, i2, RowBlock { w1, err, codes, scales, zeros, row }))
                .sum::<f64>();
            if i2 < k {
                let later = View { data: &self.u[i1 * k + i2..], rs: k, cs: 1 };
                gemm(&mut wp[i2..], k, (n, k - i2, bs), View::rows(&err, bs), later, Some(1.0), -1.0);
            }
            i1 = i2;
        }
        let zeros = (!self.opts.symmetric).then_some(zeros);
        let p = GroupParams::new((self.opts.bits, g, self.opts.symmetric), (n, k), scales, zeros)?;
        Ok((GroupQuant::from_params(p, codes)?, loss / 2.0))
    }

    /// Columns `i1..i2` of one row; returns `Σ ((w − ŵ)/U_jj)²` over them.
    fn row_block(&self, i1: usize, i2: usize, rb: RowBlock) -> f64 {
        let (k, g) = (self.k, self.opts.group);
        let range = code_range(self.opts.bits, self.opts.symmetric);
        let mut loss = 0f64;
        for j in i1..i2 {
            if self.fixed.is_none() && j % g == 0 {
                let vals: Vec<f32> = (j..(j + g).min(k)).map(|c| (if c < i2 { rb.w1[c - i1] } else { rb.row[c] }) as f32).collect();
                let (s, z) = params_of(&vals, self.opts.bits, self.opts.symmetric, self.ratios);
                (rb.scales[j / g], rb.zeros[j / g]) = (s, z);
            }
            let orig = self.perm[j];
            let (s, z) = (rb.scales[orig / g], f32::from(rb.zeros[orig / g]));
            let w = rb.w1[j - i1];
            let q = code(w as f32, s, z, range);
            rb.codes[orig] = q;
            let w_hat = f64::from((f32::from(q) - z) * s);
            let urow = &self.u[j * k..(j + 1) * k];
            let e = (w - w_hat) / urow[j];
            loss += e * e;
            rb.err[j - i1] = e;
            for (v, &h) in rb.w1[j - i1 + 1..].iter_mut().zip(&urow[j + 1..i2]) {
                *v -= e * h;
            }
        }
        loss
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_factor_is_the_upper_cholesky_factor_of_the_inverse() {
        let k = 3;
        let h = [4.0, 1.0, 0.5, 1.0, 3.0, 0.2, 0.5, 0.2, 2.0];
        let u = inverse_factor(&h, k, 1e-12).unwrap();
        for i in 0..k {
            for j in 0..i {
                assert_eq!(u[i * k + j], 0.0, "U is upper triangular");
            }
            assert!(u[i * k + i] > 0.0);
        }
        // H · (UᵀU) = I
        for i in 0..k {
            for j in 0..k {
                let inv = |a: usize, b: usize| (0..k).map(|p| u[p * k + a] * u[p * k + b]).sum::<f64>();
                let v: f64 = (0..k).map(|p| h[i * k + p] * inv(p, j)).sum();
                assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-9, "(H·H⁻¹)[{i},{j}] = {v}");
            }
        }
    }

    #[test]
    fn blocks_hold_whole_groups_or_start_them() {
        let opts = |group, block| GptqOptions { group, block, ..Default::default() };
        let o = opts(32, 128);
        let s = Sweep { n: 1, k: 300, u: &[], perm: &[], opts: &o, fixed: None, ratios: None };
        assert_eq!((s.block_end(0), s.block_end(256)), (128, 300));
        let o = opts(48, 128);
        let s = Sweep { opts: &o, ..s };
        assert_eq!(s.block_end(0), 96);
        let o = opts(200, 128);
        let s = Sweep { opts: &o, ..s };
        assert_eq!((s.block_end(0), s.block_end(128), s.block_end(200)), (128, 200, 300));
    }

    #[test]
    fn identity_hessian_gives_rtn() {
        // With H ∝ I no error is propagated: GPTQ is plain RTN.
        let (n, k) = (3, 8);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0).collect();
        let mut xtx = vec![0f64; k * k];
        (0..k).for_each(|j| xtx[j * k + j] = 5.0);
        let r = gptq(&w, n, k, &xtx, 10, &GptqOptions { group: 4, ..Default::default() }).unwrap();
        assert_eq!(r.quant, super::super::rtn(&w, n, k, 4, 4, false).unwrap());
        // With MSE-clipped groups (in order or act-order, static groups) it is the clipped RTN.
        let clip = MseClip::default();
        let clipped = super::super::mse_rtn(&w, (n, k), 4, 4, false, &clip).unwrap();
        assert_ne!(clipped, r.quant, "the example must clip some group");
        for act_order in [false, true] {
            let opts = GptqOptions { group: 4, act_order, mse: Some(clip), ..Default::default() };
            assert_eq!(gptq(&w, n, k, &xtx, 10, &opts).unwrap().quant, clipped, "act_order {act_order}");
        }
        let bad = GptqOptions { mse: Some(MseClip { grid: 0, max_shrink: 0.5 }), ..Default::default() };
        assert!(gptq(&w, n, k, &xtx, 10, &bad).is_err());
    }
}
