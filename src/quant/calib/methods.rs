//! amax selection from a [`TensorStats`]: Max, Percentile, Entropy (TensorRT's KL search) and MSE.
//!
//! All three histogram methods follow NVIDIA's pytorch-quantization `calib/histogram.py`
//! (`_compute_amax_percentile`, `_compute_amax_entropy`, `_compute_amax_mse`), see
//! quant-formats.md §7, with the differences noted on each function. Every result is capped at the
//! true `amax`: the doubling histogram's range can reach `2·amax`, and clipping above the largest
//! value seen only wastes levels.

use super::histogram::{TensorStats, NUM_BINS};
use super::{CalibIssue, CalibMethod};
use crate::ir::DType;
use crate::numerics::cast;

/// First cut point (bin index) searched by Entropy and MSE, as in TensorRT.
pub const START_BIN: usize = 128;

/// amax for `method`, for quantizing to `storage`.
///
/// - `Max`: the largest finite `|x|`.
/// - `Percentile(p)`: the p-th percentile of `|x|` ([`percentile_amax`]).
/// - `Entropy`: TensorRT's KL-divergence search ([`entropy_amax`]) with [`entropy_levels`]`(storage)`
///   quantized levels: 128 for 8-bit types. For FP8 this is TensorRT's INT8 algorithm applied
///   as-is (uniform levels), which is what TensorRT's tools do too; it ignores FP8's log spacing.
/// - `Mse`: minimum count-weighted squared error of fake-quantized bin centres ([`mse_amax`]).
///
/// Errors when the statistic is unusable: no data, NaN or infinite values seen, or all zeros
/// (checked in that order).
pub fn choose_amax(stats: &TensorStats, method: CalibMethod, storage: DType) -> Result<f32, CalibIssue> {
    check_usable(stats)?;
    let amax = match method {
        CalibMethod::Max => stats.amax(),
        CalibMethod::Percentile(p) => percentile_amax(stats, p),
        CalibMethod::Entropy => entropy_amax(stats, entropy_levels(storage)),
        CalibMethod::Mse => mse_amax(stats, storage),
    };
    Ok(amax.min(stats.amax()))
}

/// The [`CalibIssue`] that makes `stats` unusable, if any.
pub fn check_usable(stats: &TensorStats) -> Result<(), CalibIssue> {
    if stats.count() == 0 {
        return Err(CalibIssue::NoData);
    }
    if stats.nan_count() > 0 || stats.inf_count() > 0 {
        return Err(CalibIssue::NonFinite { nan: stats.nan_count(), inf: stats.inf_count() });
    }
    if stats.amax() == 0.0 {
        return Err(CalibIssue::AllZero);
    }
    Ok(())
}

/// Number of quantized levels for Entropy: `2^(bits−1)` for signed types (128 for I8, F8E4M3 and
/// F8E5M2; 8 for I4 and F4E2M1), `2^bits` for unsigned ones (TensorRT's `unsigned` flag).
pub fn entropy_levels(storage: DType) -> usize {
    let bits = storage.bits().min(16);
    match storage {
        DType::U8 | DType::U4 => 1 << bits,
        _ => 1 << (bits - 1),
    }
}

/// The `p`-th percentile (`p` in [0, 100], clamped) of `|x|`: the bin where the cumulative count
/// reaches `p%` of the finite values, interpolated linearly within that bin. (pytorch-quantization
/// returns that bin's lower edge instead.)
pub fn percentile_amax(stats: &TensorStats, p: f64) -> f32 {
    let bins = stats.histogram();
    let target = p.clamp(0.0, 100.0) / 100.0 * stats.finite_count() as f64;
    let mut below = 0.0;
    for (k, &c) in bins.iter().enumerate() {
        let c = c as f64;
        if c > 0.0 && below + c >= target {
            let frac = ((target - below) / c).clamp(0.0, 1.0);
            return ((k as f64 + frac) * stats.bin_width()) as f32;
        }
        below += c;
    }
    stats.amax()
}

/// TensorRT's entropy calibration over the 2048-bin histogram with `levels` quantized levels
/// (pytorch-quantization `_compute_amax_entropy`, stride 1, start bin 128):
///
/// 1. `bins[0]` is replaced by `bins[1]` (TensorRT's damping of the zero spike, e.g. after ReLU).
/// 2. For each cut `i` in `128..=2048`: the reference `P` is `bins[0..i]` with the tail mass
///    `Σ bins[i..]` added to `P[i−1]`; the candidate `Q` merges `bins[0..i]` (without the tail)
///    into `levels` groups (source bin `j` → group `⌊j·levels/i⌋`) and spreads each group's mass
///    uniformly over its non-empty source bins (empty ones stay 0).
/// 3. `KL(P‖Q)` of the normalized distributions (∞ where `P > 0 = Q`, e.g. an empty last bin
///    receiving the tail).
/// 4. The cut with the smallest divergence wins, the last one on ties; amax is its edge `i · w`.
pub fn entropy_amax(stats: &TensorStats, levels: usize) -> f32 {
    let mut bins: Vec<f64> = stats.histogram().iter().map(|&c| c as f64).collect();
    bins[0] = bins[1];
    let mut tail: f64 = bins[START_BIN..].iter().sum();
    let mut best = (f64::INFINITY, NUM_BINS);
    for i in START_BIN..=NUM_BINS {
        let kl = kl_divergence_at_cut(&bins[..i], tail, levels);
        if kl <= best.0 {
            best = (kl, i);
        }
        if i < NUM_BINS {
            tail -= bins[i];
        }
    }
    (best.1 as f64 * stats.bin_width()) as f32
}

/// `KL(P‖Q)` for one cut: `kept` = `bins[0..i]`, `tail` = the mass beyond the cut.
fn kl_divergence_at_cut(kept: &[f64], tail: f64, levels: usize) -> f64 {
    let q = quantize_expand(kept, levels);
    let p_total: f64 = kept.iter().sum::<f64>() + tail;
    let q_total: f64 = q.iter().sum();
    if p_total == 0.0 {
        return 0.0;
    }
    let last = kept.len() - 1;
    let mut kl = 0.0;
    for (j, (&pj, &qj)) in kept.iter().zip(&q).enumerate() {
        let pj = if j == last { pj + tail } else { pj };
        if pj == 0.0 {
            continue;
        }
        if qj == 0.0 {
            return f64::INFINITY;
        }
        let (pn, qn) = (pj / p_total, qj / q_total);
        kl += pn * (pn / qn).ln();
    }
    kl
}

/// Merges `kept` into `levels` groups and spreads each group's mass uniformly back over its
/// non-empty source bins.
fn quantize_expand(kept: &[f64], levels: usize) -> Vec<f64> {
    let i = kept.len();
    let group = |j: usize| j * levels / i;
    let mut mass = vec![0.0f64; levels];
    let mut nonempty = vec![0u32; levels];
    for (j, &c) in kept.iter().enumerate() {
        if c != 0.0 {
            mass[group(j)] += c;
            nonempty[group(j)] += 1;
        }
    }
    kept.iter().enumerate().map(|(j, &c)| if c == 0.0 { 0.0 } else { mass[group(j)] / nonempty[group(j)] as f64 }).collect()
}

/// The amax minimising `Σ count·(x̂ − x)²` over the bin centres `x`, where `x̂` fake-quantizes `x`
/// to `storage` with scale `s = amax / qmax(storage)`: `x̂ = cast(x / s, storage) · s`
/// ([`crate::numerics::cast`]: RNE + clamp for integers, RNE + satfinite for FP8/FP4).
///
/// Candidates (pytorch-quantization `_compute_amax_mse`, stride 1) are the bin centres from bin 128
/// on that lie below the true amax, plus the true amax itself (so the result is never worse than
/// Max on this measure); the first minimum wins.
pub fn mse_amax(stats: &TensorStats, storage: DType) -> f32 {
    let w = stats.bin_width();
    let centres: Vec<f64> = (0..NUM_BINS).map(|k| (k as f64 + 0.5) * w).collect();
    let amax = stats.amax() as f64;
    let candidates = centres[START_BIN..].iter().copied().filter(|&c| c < amax).chain([amax]);
    let mut best = (f64::INFINITY, amax);
    for cand in candidates {
        let err = weighted_sq_error(stats.histogram(), &centres, cand as f32, storage);
        if err < best.0 {
            best = (err, cand);
        }
    }
    best.1 as f32
}

/// `Σ count_k · (fake_quant(centre_k) − centre_k)²` for one candidate amax.
fn weighted_sq_error(counts: &[u64], centres: &[f64], amax: f32, storage: DType) -> f64 {
    let scale = amax / storage.max_finite() as f32;
    counts
        .iter()
        .zip(centres)
        .filter(|(&c, _)| c > 0)
        .map(|(&c, &x)| {
            let xq = fake_quant(x as f32, scale, storage) as f64;
            c as f64 * (xq - x).powi(2)
        })
        .sum()
}

/// `cast(x / scale, storage) · scale`: quantize then dequantize (quant-formats.md §2.1).
pub fn fake_quant(x: f32, scale: f32, storage: DType) -> f32 {
    cast(x / scale, storage) * scale
}
