//! AWQ, activation-aware weight quantization (Lin et al., arXiv 2306.00978): a per-input-channel
//! scale `s` that enlarges the weights of salient channels (large mean |x|) before group-wise
//! round-to-nearest, chosen by a grid search over the layer's output error.
//!
//! For `α ∈ {0, 1/grid, …, (grid−1)/grid}`: `s = max(mean|x|^α, 1e-4)`, normalised by
//! `sqrt(max(s)·min(s))` (as the authors' implementation does); every weight `W_i` sharing the input
//! is quantized as `W_i·diag(s)` (asymmetric RTN groups by default) and dequantized as
//! `Ŵ_i = dequant(W_i·diag(s)) / s`; the loss is the mean squared error of the outputs
//! `X·(W_i − Ŵ_i)ᵀ` over all weights and rows (computed as `Σ d·XᵀX·dᵀ` in `f64` when there are more
//! rows than channels, which is cheaper). The first α with the smallest loss wins. At α = 0,
//! `s = 1` exactly, so the result is plain RTN.
//!
//! **Applying the result.** The codes quantize `W·diag(s)`, so the layer's *input* must be multiplied
//! by `1/s`: fold it into the preceding LayerNorm/RMSNorm `γ` and `β`, or keep it as an explicit
//! per-channel multiply (a checkpoint's `pre_quant_scale`). A caller that stores `s` at a lower
//! precision (say `f16`) should round `s` first and requantize with [`quantize_scaled`], so that the
//! codes and the folded `1/s` agree.

use super::group::{rtn, GroupQuant};
use super::mat::{diff_error, gram_error};
use super::stats::ChannelStats;
use super::{check_matrix, check_rows, invalid, Result};

/// Floor of `mean|x|^α` before normalisation (the reference implementation's `clamp(min=1e-4)`).
const SCALE_FLOOR: f64 = 1e-4;

/// Search settings.
#[derive(Clone, Debug, PartialEq)]
pub struct AwqOptions {
    /// Bits per code (4).
    pub bits: u32,
    /// Group size along K (128).
    pub group: usize,
    /// Grid points: α runs over `i/grid` for `i < grid` (20).
    pub grid: usize,
    /// At most this many calibration rows enter the loss, evenly spaced (2048).
    pub max_rows: usize,
    /// Symmetric groups instead of the default asymmetric ones.
    pub symmetric: bool,
}

impl Default for AwqOptions {
    fn default() -> Self {
        AwqOptions { bits: 4, group: 128, grid: 20, max_rows: 2048, symmetric: false }
    }
}

/// Calibration data of one input: rows `x [M, k]` and optionally the per-channel mean |x| measured on
/// more rows than `x` holds (otherwise it is computed from `x`).
#[derive(Clone, Debug)]
pub struct AwqCalib<'a> {
    /// Activation rows, row-major, finite.
    pub x: &'a [f32],
    /// Channels.
    pub k: usize,
    /// Per-channel mean |x| (`k` values), when known from a larger set.
    pub mean_abs: Option<Vec<f32>>,
}

impl<'a> AwqCalib<'a> {
    /// The sample rows and the mean |x| of `stats`; errors when it keeps no samples.
    pub fn from_stats(stats: &'a ChannelStats) -> Result<Self> {
        match stats.samples() {
            Some(x) if !x.is_empty() => Ok(AwqCalib { x, k: stats.k(), mean_abs: Some(stats.mean_abs()) }),
            _ => invalid("AWQ needs sample rows: build the statistics with ChannelStats::with_samples"),
        }
    }
}

/// What the search found.
#[derive(Clone, Debug)]
pub struct AwqResult {
    /// The chosen α.
    pub alpha: f32,
    /// `s` per input channel (`k` values): the weights were multiplied by it, the input must be
    /// divided by it.
    pub scales: Vec<f32>,
    /// `(α, output MSE)` for every grid point, in grid order; the first entry is plain RTN.
    pub losses: Vec<(f32, f64)>,
    /// The quantized `W_i·diag(s)`, one per weight, in input order.
    pub quant: Vec<GroupQuant>,
}

/// Runs the search for the weights `ws` (each `(W_i, n_i)`, `[n_i, k]`) sharing the input described
/// by `calib`. Errors on shape mismatches, non-finite values or options out of range.
pub fn awq_search(ws: &[(&[f32], usize)], calib: &AwqCalib, opts: &AwqOptions) -> Result<AwqResult> {
    let k = calib.k;
    check_inputs(ws, calib, opts)?;
    let x = subsample(calib.x, k, opts.max_rows);
    let mean = match &calib.mean_abs {
        Some(m) => m.clone(),
        None => mean_abs(calib.x, k),
    };
    let outputs = (x.len() / k) as f64 * ws.iter().map(|w| w.1 as f64).sum::<f64>();
    let loss_of = OutputLoss::new(x, k)?;
    let mut losses = Vec::with_capacity(opts.grid);
    let mut best: Option<(f64, f32, Vec<f32>, Vec<GroupQuant>)> = None;
    for i in 0..opts.grid {
        let alpha = i as f32 / opts.grid as f32;
        let s = awq_scales(&mean, alpha);
        let mut err = 0f64;
        let mut quant = Vec::with_capacity(ws.len());
        for &(w, n) in ws {
            let q = quantize_scaled(w, n, k, &s, (opts.bits, opts.group, opts.symmetric))?;
            let w_hat = dequantize_scaled(&q, &s)?;
            let d: Vec<f32> = w.iter().zip(&w_hat).map(|(a, b)| a - b).collect();
            err += loss_of.error(&d, n);
            quant.push(q);
        }
        let loss = err / outputs;
        losses.push((alpha, loss));
        if best.as_ref().is_none_or(|b| loss < b.0) {
            best = Some((loss, alpha, s, quant));
        }
    }
    let (_, alpha, scales, quant) = best.expect("grid ≥ 1 is checked");
    Ok(AwqResult { alpha, scales, losses, quant })
}

/// Validates the search inputs.
fn check_inputs(ws: &[(&[f32], usize)], calib: &AwqCalib, opts: &AwqOptions) -> Result<()> {
    let k = calib.k;
    if ws.is_empty() {
        return invalid("AWQ: no weights to scale");
    }
    for (i, &(w, n)) in ws.iter().enumerate() {
        check_matrix(w, n, k, &format!("AWQ: weight {i}"))?;
    }
    check_rows(calib.x, k, "AWQ")?;
    if let Some(m) = &calib.mean_abs {
        if m.len() != k || m.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
            return invalid(format!("AWQ: mean |x| must be {k} finite non-negative values"));
        }
    }
    if opts.grid == 0 || opts.max_rows == 0 {
        return invalid("AWQ: grid and max_rows must be at least 1");
    }
    Ok(())
}

/// How the output error `‖X·Dᵀ‖²` of a weight difference `D` is measured: on the rows directly, or,
/// with more rows than channels, through the Gram matrix `XᵀX` (`f64`), which is cheaper.
enum OutputLoss {
    Rows(Vec<f32>, usize),
    Gram(Vec<f64>, usize),
}

impl OutputLoss {
    fn new(x: Vec<f32>, k: usize) -> Result<Self> {
        if x.len() / k <= k {
            return Ok(OutputLoss::Rows(x, k));
        }
        let mut stats = ChannelStats::new(k)?.with_hessian();
        stats.observe(&x, k)?;
        Ok(OutputLoss::Gram(stats.xtx().map(<[f64]>::to_vec).unwrap_or_default(), k))
    }

    fn error(&self, d: &[f32], n: usize) -> f64 {
        match self {
            OutputLoss::Rows(x, k) => diff_error(x, *k, d, n),
            OutputLoss::Gram(g, k) => gram_error(g, *k, d, n),
        }
    }
}

/// At most `max_rows` rows of `x`, evenly spaced (row `⌊i·M/max_rows⌋`), deterministic.
pub(super) fn subsample(x: &[f32], k: usize, max_rows: usize) -> Vec<f32> {
    let m = x.len() / k;
    if m <= max_rows {
        return x.to_vec();
    }
    (0..max_rows).flat_map(|i| x[i * m / max_rows * k..][..k].iter().copied()).collect()
}

/// Per-channel mean |x| of the rows `x`.
fn mean_abs(x: &[f32], k: usize) -> Vec<f32> {
    let mut sum = vec![0f64; k];
    for row in x.chunks(k) {
        for (s, v) in sum.iter_mut().zip(row) {
            *s += f64::from(v.abs());
        }
    }
    let m = (x.len() / k) as f64;
    sum.iter().map(|s| (s / m) as f32).collect()
}

/// The AWQ scales for one α: `max(mean^α, 1e-4) / sqrt(max·min)` (all 1 at α = 0).
pub fn awq_scales(mean_abs: &[f32], alpha: f32) -> Vec<f32> {
    let s: Vec<f64> = mean_abs.iter().map(|&m| f64::from(m).powf(f64::from(alpha)).max(SCALE_FLOOR)).collect();
    let (lo, hi) = s.iter().fold((f64::INFINITY, 0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let norm = (lo * hi).sqrt();
    s.iter().map(|v| (v / norm) as f32).collect()
}

/// Group-wise RTN codes of `W·diag(s)` for `w [n, k]` and `s` (`k` finite positive factors), with
/// `(bits, group, symmetric)`. The caller may pass its own (rounded) `s`.
pub fn quantize_scaled(w: &[f32], n: usize, k: usize, s: &[f32], (bits, group, symmetric): (u32, usize, bool)) -> Result<GroupQuant> {
    check_factors(s, k)?;
    check_matrix(w, n, k, "quantize_scaled: weight")?;
    let scaled: Vec<f32> = w.chunks(k).flat_map(|row| row.iter().zip(s).map(|(v, f)| v * f)).collect();
    rtn(&scaled, n, k, bits, group, symmetric)
}

/// The weight a scaled quantization stands for: `dequant(q) / s` per input channel.
pub fn dequantize_scaled(q: &GroupQuant, s: &[f32]) -> Result<Vec<f32>> {
    check_factors(s, q.k)?;
    let mut w = q.dequantize();
    for row in w.chunks_mut(q.k) {
        for (v, f) in row.iter_mut().zip(s) {
            *v /= f;
        }
    }
    Ok(w)
}

fn check_factors(s: &[f32], k: usize) -> Result<()> {
    if s.len() != k {
        return invalid(format!("{} scale factors for K = {k} input channels", s.len()));
    }
    match s.iter().position(|v| !(v.is_finite() && *v > 0.0)) {
        Some(j) => invalid(format!("scale factor {j} is {}: factors must be finite and positive", s[j])),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_are_normalised_and_unit_at_alpha_zero() {
        assert_eq!(awq_scales(&[0.0, 2.0, 8.0], 0.0), vec![1.0; 3]);
        let s = awq_scales(&[1.0, 4.0, 16.0], 0.5);
        // [1, 2, 4] / sqrt(4)
        assert_eq!(s, vec![0.5, 1.0, 2.0]);
    }

    #[test]
    fn subsample_spreads_rows() {
        let x: Vec<f32> = (0..10).map(|v| v as f32).collect();
        assert_eq!(subsample(&x, 1, 4), vec![0.0, 2.0, 5.0, 7.0]);
        assert_eq!(subsample(&x, 2, 10), x);
    }

    #[test]
    fn bad_input_is_an_error() {
        let w = [1.0f32; 4];
        let calib = AwqCalib { x: &[1.0, f32::NAN], k: 2, mean_abs: None };
        assert!(awq_search(&[(&w, 2)], &calib, &AwqOptions::default()).unwrap_err().to_string().contains("[0, 1]"));
        let calib = AwqCalib { x: &[1.0, 1.0], k: 2, mean_abs: Some(vec![1.0]) };
        assert!(awq_search(&[(&w, 2)], &calib, &AwqOptions::default()).is_err());
        assert!(quantize_scaled(&w, 2, 2, &[1.0, 0.0], (4, 2, false)).is_err());
        let stats = ChannelStats::new(2).unwrap();
        assert!(AwqCalib::from_stats(&stats).is_err());
    }
}
