//! AWQ's clipping search (the second step of Lin et al., arXiv 2306.00978; `auto_clip` in the
//! authors' implementation): shrink each group's quantization range when that lowers the group's
//! share of the layer's output error.
//!
//! For a weight `W [N, K]` (already multiplied by the AWQ scales) and its input rows `X [M, K]`
//! (already divided by them), every output row `n` and every group `g` of `G` columns tries the
//! ratios `r_i = 1 − shrink·i/(grid−1)`, `i < grid` (1.0 down to 0.5 by default): the group's
//! round-to-nearest range is scaled to `[r·min, r·max]` (asymmetric, widened to include 0 as
//! [`GroupParams::rtn`] does) or to `r·amax` (symmetric), the group is quantized on those parameters
//! (values beyond the range saturate to the end codes) and the error
//! `Σ_m (X_{m,g}·(w_{n,g} − ŵ_{n,g}))²` is measured on at most `max_rows` evenly spaced rows. The first
//! ratio with the smallest error wins, so `r = 1` (plain RTN) is kept unless a shrink is strictly
//! better: the search never increases any group's error.
//!
//! The error of a difference `e` is the quadratic form `eᵀ·(X_gᵀX_g)·e`: the `G × G` Gram block of
//! each group column is formed once (in `f64`) and every candidate costs `O(G²)`, evaluated for many
//! rows at a time as one matrix product. Cross-group terms of the output error are ignored, as in
//! the reference implementation.
//!
//! [`mse_params`] is the same search without data: the metric is the weight's own squared rounding
//! error `Σ (w − ŵ)²` (the identity in place of `X_gᵀX_g`), which needs no calibration. It is what
//! the [`MseClip`] weight scales of the RTN, per-channel INT8 and GPTQ paths use (GPTQ's reference
//! `Quantizer(mse=True)` searches the same way, with the norm 2.4 where this uses 2).

use super::awq::subsample;
use super::group::{check_format, code, code_range, group_params, quantize_with, GroupParams, GroupQuant};
use super::mat::{dot, gemm, View};
use super::{check_matrix, check_rows, invalid, Result};
use rayon::prelude::*;

/// Candidate rows (output rows × ratios) per matrix product: bounds the temporaries to
/// `2 · CHUNK · G` `f64`s.
const CHUNK: usize = 4096;

/// Search settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipOptions {
    /// Bits per code (4).
    pub bits: u32,
    /// Group size along K (128).
    pub group: usize,
    /// Symmetric groups instead of the default asymmetric ones.
    pub symmetric: bool,
    /// Ratios tried, from 1 down to `1 − max_shrink` inclusive (20).
    pub grid: usize,
    /// The largest relative shrink of a range, in `[0, 1)` (0.5).
    pub max_shrink: f32,
    /// At most this many calibration rows enter the error, evenly spaced (512).
    pub max_rows: usize,
}

impl Default for ClipOptions {
    fn default() -> Self {
        ClipOptions { bits: 4, group: 128, symmetric: false, grid: 20, max_shrink: 0.5, max_rows: 512 }
    }
}

/// A data-free clipping search: the ratios `1 − max_shrink·i/(grid−1)`, `i < grid`, tried on each
/// region's round-to-nearest range; the first with the least squared rounding error wins.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct MseClip {
    /// Ratios tried, from 1 down to `1 − max_shrink` inclusive (50).
    pub grid: usize,
    /// The largest relative shrink of a range, in `[0, 1)` (0.5).
    pub max_shrink: f32,
}

impl Default for MseClip {
    fn default() -> Self {
        MseClip { grid: 50, max_shrink: 0.5 }
    }
}

impl MseClip {
    /// The ratios tried; errors when `grid` is 0 or `max_shrink` lies outside `[0, 1)`.
    pub fn ratios(&self) -> Result<Vec<f32>> {
        check_grid(self.grid, self.max_shrink)?;
        Ok(ratio_grid(self.grid, self.max_shrink))
    }
}

/// What the search found.
#[derive(Clone, Debug)]
pub struct ClipResult {
    /// The weight quantized on the chosen (clipped) parameters.
    pub quant: GroupQuant,
    /// The chosen ratio per group, `[n, ceil(k/group)]` row-major.
    pub ratios: Vec<f32>,
    /// Mean of `ratios`.
    pub mean_ratio: f64,
    /// Sum over rows and groups of the chosen group errors (on the subsampled rows).
    pub error: f64,
    /// The same sum at `r = 1` (plain RTN); never below `error`.
    pub error_unclipped: f64,
}

/// The best candidate of one `(row, group)`.
#[derive(Clone, Copy, Debug, Default)]
struct Choice {
    scale: f32,
    zero: u8,
    ratio: f32,
    error: f64,
    error_unclipped: f64,
}

/// Runs the search for `w [n, k]` and the rows `x [M, k]` (see the module doc). Errors on shape
/// mismatches, non-finite values or options out of range.
pub fn clip_search(w: &[f32], n: usize, x: &[f32], k: usize, opts: &ClipOptions) -> Result<ClipResult> {
    check_inputs(w, n, x, k, opts)?;
    let xd: Vec<f64> = subsample(x, k, opts.max_rows).into_iter().map(f64::from).collect();
    let ratios = ratio_grid(opts.grid, opts.max_shrink);
    let ng = k.div_ceil(opts.group);
    let mut best = vec![Choice::default(); n * ng];
    for gi in 0..ng {
        let c0 = gi * opts.group;
        let gs = opts.group.min(k - c0);
        let h = gram_block(&xd, k, c0, gs);
        let cols: Vec<&[f32]> = w.chunks(k).map(|row| &row[c0..c0 + gs]).collect();
        let rows_per_chunk = (CHUNK / ratios.len()).max(1);
        for (ci, chunk) in cols.chunks(rows_per_chunk).enumerate() {
            for (j, choice) in search_rows(chunk, &h, &ratios, opts).into_iter().enumerate() {
                best[(ci * rows_per_chunk + j) * ng + gi] = choice;
            }
        }
    }
    finish(w, n, k, opts, &best)
}

/// Validates the search inputs.
fn check_inputs(w: &[f32], n: usize, x: &[f32], k: usize, opts: &ClipOptions) -> Result<()> {
    check_format(opts.bits, opts.group, opts.symmetric)?;
    check_matrix(w, n, k, "clip search: weight")?;
    check_rows(x, k, "clip search")?;
    if opts.max_rows == 0 {
        return invalid("clip search: max_rows must be at least 1");
    }
    check_grid(opts.grid, opts.max_shrink)
}

/// Checks a ratio grid's settings: at least one ratio, `max_shrink` in `[0, 1)`.
fn check_grid(grid: usize, max_shrink: f32) -> Result<()> {
    if grid == 0 {
        return invalid("clip search: the grid must hold at least 1 ratio");
    }
    if !(0.0..1.0).contains(&max_shrink) {
        return invalid(format!("clip search: max_shrink must lie in [0, 1), got {max_shrink}"));
    }
    Ok(())
}

/// The ratios tried, `1 − max_shrink·i/(grid−1)` for `i < grid` (just 1 when `grid` is 1).
fn ratio_grid(grid: usize, max_shrink: f32) -> Vec<f32> {
    let steps = (grid - 1).max(1) as f32;
    (0..grid).map(|i| 1.0 - max_shrink * i as f32 / steps).collect()
}

/// The `(scale, zero point)` of one group `v` (finite values) whose round-to-nearest codes have the
/// least squared error `Σ (v − ŵ)²` among the clip `ratios` (the first such ratio; with `ratios[0]
/// = 1`, as [`MseClip::ratios`] gives, the error never exceeds plain RTN's). Also returns the chosen
/// ratio.
pub(super) fn mse_params(v: &[f32], bits: u32, symmetric: bool, ratios: &[f32]) -> (f32, u8, f32) {
    if v.is_empty() || ratios.is_empty() {
        let (s, z) = group_params(v, bits, symmetric);
        return (s, z, 1.0);
    }
    let mut e = vec![0f64; ratios.len() * v.len()];
    let params = candidates(v, ratios, (bits, symmetric), &mut e);
    let errors: Vec<f64> = e.chunks(v.len()).map(|d| dot(d, d)).collect();
    let c = choose(&params, &errors, ratios);
    (c.scale, c.zero, c.ratio)
}

/// The Gram block `X_gᵀX_g` (`gs × gs`, row-major) of the columns `c0..c0+gs` of `x [M, k]`.
fn gram_block(x: &[f64], k: usize, c0: usize, gs: usize) -> Vec<f64> {
    let m = x.len() / k;
    let cols = View { data: &x[c0..], rs: k, cs: 1 };
    let mut h = vec![0f64; gs * gs];
    gemm(&mut h, gs, (gs, gs, m), cols.t(), cols, None, 1.0);
    h
}

/// The best ratio of one group column for each row of `rows` (each the group's `gs` weights).
/// Every candidate's difference `e` lands in one matrix `E`, whose errors are the row sums of
/// `E ∘ (E·H)`.
fn search_rows(rows: &[&[f32]], h: &[f64], ratios: &[f32], opts: &ClipOptions) -> Vec<Choice> {
    let gs = rows[0].len();
    let nr = ratios.len();
    let mut e = vec![0f64; rows.len() * nr * gs];
    let params: Vec<Vec<(f32, u8)>> =
        e.par_chunks_mut(nr * gs).zip(rows.par_iter()).map(|(e, row)| candidates(row, ratios, (opts.bits, opts.symmetric), e)).collect();
    let mut he = vec![0f64; e.len()];
    gemm(&mut he, gs, (rows.len() * nr, gs, gs), View::rows(&e, gs), View::rows(h, gs), None, 1.0);
    let errors: Vec<f64> = e.par_chunks(gs).zip(he.par_chunks(gs)).map(|(a, b)| dot(a, b)).collect();
    params.iter().zip(errors.chunks(nr)).map(|(p, err)| choose(p, err, ratios)).collect()
}

/// The parameters of every ratio for one group `v` of `(bits, symmetric)` codes, writing the
/// differences `v − ŵ` (in `f64`) to `e` (`ratios.len() × v.len()`).
fn candidates(v: &[f32], ratios: &[f32], (bits, symmetric): (u32, bool), e: &mut [f64]) -> Vec<(f32, u8)> {
    let range = code_range(bits, symmetric);
    let (lo, hi) = v.iter().fold((0f32, 0f32), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    ratios
        .iter()
        .zip(e.chunks_mut(v.len()))
        .map(|(&r, e)| {
            let (s, z) = group_params(&[r * lo, r * hi], bits, symmetric);
            let zf = f32::from(z);
            for (d, &x) in e.iter_mut().zip(v) {
                let w_hat = (f32::from(code(x, s, zf, range)) - zf) * s;
                *d = f64::from(x) - f64::from(w_hat);
            }
            (s, z)
        })
        .collect()
}

/// The first ratio with the smallest error.
fn choose(params: &[(f32, u8)], errors: &[f64], ratios: &[f32]) -> Choice {
    let mut best = 0;
    for (i, &err) in errors.iter().enumerate() {
        if err < errors[best] {
            best = i;
        }
    }
    let (scale, zero) = params[best];
    Choice { scale, zero, ratio: ratios[best], error: errors[best], error_unclipped: errors[0] }
}

/// Quantizes `w` on the chosen parameters and sums up.
fn finish(w: &[f32], n: usize, k: usize, opts: &ClipOptions, best: &[Choice]) -> Result<ClipResult> {
    let scales = best.iter().map(|c| c.scale).collect();
    let zeros = (!opts.symmetric).then(|| best.iter().map(|c| c.zero).collect());
    let params = GroupParams::new((opts.bits, opts.group, opts.symmetric), (n, k), scales, zeros)?;
    let quant = quantize_with(w, params)?;
    let ratios: Vec<f32> = best.iter().map(|c| c.ratio).collect();
    let mean_ratio = ratios.iter().map(|&r| f64::from(r)).sum::<f64>() / ratios.len() as f64;
    let error = best.iter().map(|c| c.error).sum();
    let error_unclipped = best.iter().map(|c| c.error_unclipped).sum();
    Ok(ClipResult { quant, ratios, mean_ratio, error, error_unclipped })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::algo::rtn;

    #[test]
    fn grid_runs_from_one_to_the_largest_shrink() {
        let r = ratio_grid(20, 0.5);
        assert_eq!((r.len(), r[0], r[19]), (20, 1.0, 0.5));
        assert_eq!(ratio_grid(1, 0.5), vec![1.0]);
        assert_eq!(MseClip::default().ratios().unwrap().len(), 50);
        assert!(MseClip { grid: 0, ..Default::default() }.ratios().is_err());
        assert!(MseClip { max_shrink: 1.0, ..Default::default() }.ratios().is_err());
    }

    #[test]
    fn gram_block_matches_the_rows() {
        // Rows [1, 2, 3], [4, 5, 6]; columns 1..3.
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(gram_block(&x, 3, 1, 2), vec![29.0, 36.0, 36.0, 45.0]);
    }

    #[test]
    fn unit_ratio_reproduces_rtn() {
        let w: Vec<f32> = (0..24).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.1).collect();
        let x: Vec<f32> = (0..18).map(|i| (i % 5) as f32 - 2.0).collect();
        for symmetric in [false, true] {
            let opts = ClipOptions { group: 4, grid: 1, symmetric, ..Default::default() };
            let c = clip_search(&w, 4, &x, 6, &opts).unwrap();
            assert_eq!(c.quant, rtn(&w, 4, 6, 4, 4, symmetric).unwrap());
            assert_eq!(c.error, c.error_unclipped);
        }
    }

    /// Symmetric 2-bit codes (`[−2, 1]`) on `[1, ½, ½, ½]`: at ratio `r ∈ (½, 1)` the scale is `r`,
    /// every value codes to 1 and the error is `(1 − r)² + 3(r − ½)²`, least at `r = 5/8` (0.1875);
    /// at `r = 1` the halves round to 0 (0.75).
    #[test]
    fn mse_params_finds_the_known_optimum() {
        let v = [1.0, 0.5, 0.5, 0.5];
        let ratios = ratio_grid(9, 0.5);
        assert_eq!(ratios[6], 0.625);
        assert_eq!(mse_params(&v, 2, true, &ratios), (0.625, 0, 0.625));
        // Only the unit ratio: plain RTN.
        assert_eq!(mse_params(&v, 2, true, &[1.0]), (1.0, 0, 1.0));
    }

    /// The chosen clip never has a larger squared error than no clipping, and is strictly better
    /// somewhere (4-bit groups with outliers, 8-bit rows), symmetric and asymmetric.
    #[test]
    fn mse_params_never_increase_the_error() {
        let ratios = MseClip::default().ratios().unwrap();
        let err = |v: &[f32], bits, sym, (s, z): (f32, u8)| -> f64 {
            let range = code_range(bits, sym);
            v.iter().map(|&x| f64::from(x - (f32::from(code(x, s, f32::from(z), range)) - f32::from(z)) * s).powi(2)).sum()
        };
        let mut better = 0;
        for seed in 0..64u32 {
            // Pseudo-random values with an occasional outlier.
            let v: Vec<f32> = (0..96u32)
                .map(|i| {
                    let h = (i.wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40_503)).wrapping_mul(2_246_822_519) >> 8;
                    let x = h as f32 / (1u32 << 24) as f32 - 0.5;
                    if i == seed % 96 {
                        8.0 * x
                    } else {
                        x
                    }
                })
                .collect();
            for (bits, sym) in [(4, false), (4, true), (8, true), (3, false)] {
                let (s, z, r) = mse_params(&v, bits, sym, &ratios);
                let (clipped, plain) = (err(&v, bits, sym, (s, z)), err(&v, bits, sym, group_params(&v, bits, sym)));
                assert!(clipped <= plain, "seed {seed}, {bits} bits: {clipped} > {plain}");
                assert!((0.5..=1.0).contains(&r));
                better += usize::from(clipped < plain);
            }
        }
        assert!(better > 64, "clipping helped in only {better} of 256 cases");
    }

    #[test]
    fn mse_params_of_a_zero_group_is_the_unit_scale() {
        let ratios = MseClip::default().ratios().unwrap();
        assert_eq!(mse_params(&[0.0; 8], 4, false, &ratios), (1.0, 0, 1.0));
        assert_eq!(mse_params(&[], 4, false, &ratios).0, 1.0);
    }

    #[test]
    fn bad_input_is_an_error() {
        let w = [1.0f32; 4];
        assert!(clip_search(&w, 2, &[1.0, f32::NAN], 2, &ClipOptions::default()).unwrap_err().to_string().contains("[0, 1]"));
        assert!(clip_search(&w, 2, &[1.0; 3], 2, &ClipOptions::default()).is_err());
        assert!(clip_search(&w, 2, &[1.0; 2], 2, &ClipOptions { max_shrink: 1.0, ..Default::default() }).is_err());
        assert!(clip_search(&w, 2, &[1.0; 2], 2, &ClipOptions { bits: 8, ..Default::default() }).is_err());
        assert!(clip_search(&w, 2, &[1.0; 2], 2, &ClipOptions { grid: 0, ..Default::default() }).is_err());
    }
}
