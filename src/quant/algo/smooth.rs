//! SmoothQuant (Xiao et al., arXiv 2211.10438): per-input-channel factors `s` that move activation
//! outliers into the weights. The layer computes `(X·diag(1/s))·(W·diag(s))ᵀ = X·Wᵀ`; `1/s` is folded
//! into the preceding LayerNorm/RMSNorm `γ` (and `β`) or kept as an explicit per-channel multiply,
//! `W·diag(s)` is what gets quantized.
//!
//! `s_j = max|X_j|^α / max|W_j|^(1−α)`, where `max|W_j|` is taken over every weight reading the same
//! input (Q, K and V share one normalized input, hence one `s`: see [`weight_absmax_per_input`]).
//! With α = 0.5, `max|X_j|/s_j = max|W_j|·s_j = sqrt(max|X_j|·max|W_j|)`.

use super::{check_matrix, invalid, Result};

/// Smallest factor returned.
pub const MIN_FACTOR: f32 = 1e-5;
/// Largest factor returned.
pub const MAX_FACTOR: f32 = 1e5;

/// SmoothQuant factors from per-channel activation and weight ranges (same length `K`), computed in
/// `f64`. Guards: a channel with zero (or non-finite) activation or weight range gets `s = 1`; every
/// factor is clamped to `[MIN_FACTOR, MAX_FACTOR]`. Errors when the lengths differ, a range is negative
/// or `alpha` is outside `[0, 1]`.
pub fn smooth_factors(act_absmax: &[f32], weight_absmax: &[f32], alpha: f32) -> Result<Vec<f32>> {
    if act_absmax.len() != weight_absmax.len() {
        return invalid(format!("smooth_factors: {} activation ranges but {} weight ranges", act_absmax.len(), weight_absmax.len()));
    }
    if !(0.0..=1.0).contains(&alpha) {
        return invalid(format!("smooth_factors: alpha must be in [0, 1], got {alpha}"));
    }
    if let Some(j) = act_absmax.iter().chain(weight_absmax).position(|&v| v < 0.0) {
        return invalid(format!("smooth_factors: range {j} is negative (ranges are max |x|)"));
    }
    let a = f64::from(alpha);
    let s = act_absmax
        .iter()
        .zip(weight_absmax)
        .map(|(&x, &w)| {
            let usable = |v: f32| v > 0.0 && v.is_finite();
            if !(usable(x) && usable(w)) {
                return 1.0;
            }
            let s = f64::from(x).powf(a) / f64::from(w).powf(1.0 - a);
            (s as f32).clamp(MIN_FACTOR, MAX_FACTOR)
        })
        .collect();
    Ok(s)
}

/// Per input channel `j < k`: `max |W[r, j]|` over every row `r` of every weight in `ws` (each
/// `(data, n)` a finite `[n, k]` matrix): the weight range of weights that share one input.
pub fn weight_absmax_per_input(ws: &[(&[f32], usize)], k: usize) -> Result<Vec<f32>> {
    if ws.is_empty() {
        return invalid("weight_absmax_per_input: no weights");
    }
    let mut out = vec![0f32; k];
    for (i, &(w, n)) in ws.iter().enumerate() {
        check_matrix(w, n, k, &format!("weight_absmax_per_input: weight {i}"))?;
        for row in w.chunks(k) {
            for (m, v) in out.iter_mut().zip(row) {
                *m = m.max(v.abs());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_and_clamps() {
        let s = smooth_factors(&[0.0, 4.0, 1e12, 9.0], &[1.0, 0.0, 1e-12, 1.0], 0.5).unwrap();
        assert_eq!(s[0], 1.0);
        assert_eq!(s[1], 1.0);
        assert_eq!(s[2], MAX_FACTOR);
        assert_eq!(s[3], 3.0);
        assert!(smooth_factors(&[1.0], &[1.0, 2.0], 0.5).is_err());
        assert!(smooth_factors(&[1.0], &[1.0], 1.5).is_err());
        assert!(smooth_factors(&[-1.0], &[1.0], 0.5).is_err());
    }

    #[test]
    fn shared_inputs_take_the_max_over_all_weights() {
        let q = [1.0, -5.0, 2.0, 0.5];
        let v = [-3.0, 1.0];
        assert_eq!(weight_absmax_per_input(&[(&q, 2), (&v, 1)], 2).unwrap(), vec![3.0, 5.0]);
        assert!(weight_absmax_per_input(&[(&q, 3)], 2).is_err());
    }
}
