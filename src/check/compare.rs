//! Named tolerances per dtype for comparing a GPU result with the interpreter's.
//!
//! | dtype | tolerance | why |
//! |---|---|---|
//! | `f16`, `bf16` | relative L2 error ≤ 2e-3 and every element within 8e-3·max\|ref\| | a different summation order or an `f32` statistic (the interpreter uses `f64`) moves a result by about one rounding step (2^-11 relative for f16) |
//! | `f32` | relative L2 ≤ 1e-4, every element within 1e-3·max\|ref\| | dynamic scales: `amax / 448` of values that agree |
//! | FP8 (`f8e4m3`, `f8e5m2`) | ≤ 1 % of the codes differ, none by more than one step (below the smallest normal: one subnormal step) | a value on a rounding boundary may round either way once its input moved by one f16 step |
//! | integers | exact | |
//!
//! A NaN or infinity where the reference is finite always fails.

use serde::Serialize;

use crate::ir::DType;

/// A named tolerance.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Tolerance {
    /// Relative L2 error and largest element error relative to the reference's largest magnitude.
    Float {
        /// Bound on ‖gpu − ref‖₂ / ‖ref‖₂.
        rel_l2: f64,
        /// Bound on max |gpu − ref| / max |ref|.
        rel_max: f64,
    },
    /// Narrow-float codes: share of differing codes, each at most one step apart.
    Codes {
        /// Bound on the share of elements whose code differs.
        share: f64,
        /// Relative size of one step (2^-mantissa bits).
        step: f64,
        /// Smallest normal magnitude: below it one step is that of the smallest normal.
        min_normal: f64,
    },
    /// Bit-exact.
    Exact,
}

impl Tolerance {
    /// The tolerance of `dtype`.
    pub fn of(dtype: DType) -> Self {
        match dtype {
            DType::F16 | DType::BF16 => Tolerance::Float { rel_l2: 2e-3, rel_max: 8e-3 },
            DType::F32 => Tolerance::Float { rel_l2: 1e-4, rel_max: 1e-3 },
            DType::F8E4M3 => Tolerance::Codes { share: 0.01, step: 0.125, min_normal: 2f64.powi(-6) },
            DType::F8E5M2 => Tolerance::Codes { share: 0.01, step: 0.25, min_normal: 2f64.powi(-14) },
            DType::F4E2M1 => Tolerance::Codes { share: 0.01, step: 0.5, min_normal: 1.0 },
            _ => Tolerance::Exact,
        }
    }

    /// A short description, e.g. `rel_l2 ≤ 2e-3, max ≤ 8e-3·|ref|`.
    pub fn describe(&self) -> String {
        match self {
            Tolerance::Float { rel_l2, rel_max } => format!("rel_l2 ≤ {rel_l2:.0e}, max ≤ {rel_max:.0e}·|ref|"),
            Tolerance::Codes { share, .. } => format!("≤ {:.0}% codes differ, by ≤ 1 step", share * 100.0),
            Tolerance::Exact => "exact".into(),
        }
    }
}

/// The outcome of one comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// Within tolerance.
    pub pass: bool,
    /// What was measured, e.g. `rel_l2 3.1e-4, max 1.2e-3·|ref|`.
    pub measured: String,
    /// The tolerance applied.
    pub tolerance: String,
}

impl Comparison {
    /// A failed comparison that could not be measured (shapes or dtypes disagree).
    pub fn mismatch(why: impl Into<String>) -> Self {
        Comparison { pass: false, measured: why.into(), tolerance: "same shape and dtype".into() }
    }
}

/// Compares `got` with `want` (both decoded to `f32`) under the tolerance of `dtype`.
pub fn compare(dtype: DType, want: &[f32], got: &[f32]) -> Comparison {
    let tol = Tolerance::of(dtype);
    if want.len() != got.len() {
        return Comparison::mismatch(format!("{} elements, the interpreter has {}", got.len(), want.len()));
    }
    if let Some(i) = (0..want.len()).find(|&i| want[i].is_finite() && !got[i].is_finite()) {
        return Comparison {
            pass: false,
            measured: format!("element {i} is {} (reference {})", got[i], want[i]),
            tolerance: tol.describe(),
        };
    }
    let (pass, measured) = match tol {
        Tolerance::Float { rel_l2, rel_max } => {
            let (l2, max) = float_errors(want, got);
            (l2 <= rel_l2 && max <= rel_max, format!("rel_l2 {l2:.1e}, max {max:.1e}·|ref|"))
        }
        Tolerance::Codes { share, step, min_normal } => {
            let (differ, worst) = code_errors(want, got, step, min_normal);
            let frac = differ as f64 / want.len().max(1) as f64;
            (
                frac <= share && worst <= 1.0,
                format!("{differ} of {} codes differ ({:.2}%), worst {worst:.2} steps", want.len(), frac * 100.0),
            )
        }
        Tolerance::Exact => {
            let differ = want.iter().zip(got).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            (differ == 0, format!("{differ} elements differ"))
        }
    };
    Comparison { pass, measured, tolerance: tol.describe() }
}

/// (‖g − r‖₂ / ‖r‖₂, max |g − r| / max |r|), both 0 for an all-zero match.
fn float_errors(want: &[f32], got: &[f32]) -> (f64, f64) {
    let (mut num, mut den, mut max_err, mut max_ref) = (0f64, 0f64, 0f64, 0f64);
    for (&r, &g) in want.iter().zip(got) {
        if !r.is_finite() {
            continue;
        }
        let d = (g as f64 - r as f64).abs();
        num += d * d;
        den += (r as f64).powi(2);
        max_err = max_err.max(d);
        max_ref = max_ref.max((r as f64).abs());
    }
    let rel = |a: f64, b: f64| if a == 0.0 { 0.0 } else { a / b.max(f64::MIN_POSITIVE) };
    (rel(num.sqrt(), den.sqrt()), rel(max_err, max_ref))
}

/// (codes that differ, largest difference in steps of the larger magnitude, a step below the
/// smallest normal being the smallest normal's).
fn code_errors(want: &[f32], got: &[f32], step: f64, min_normal: f64) -> (usize, f64) {
    let mut differ = 0;
    let mut worst = 0f64;
    for (&r, &g) in want.iter().zip(got) {
        if r.to_bits() == g.to_bits() || (r.is_nan() && g.is_nan()) {
            continue;
        }
        differ += 1;
        // One step at magnitude m is step·2^floor(log2 m), and the smallest normal's below it.
        let m = (r.abs().max(g.abs()) as f64).max(min_normal);
        let unit = step * 2f64.powf(m.log2().floor());
        worst = worst.max((g as f64 - r as f64).abs() / unit);
    }
    (differ, worst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_one_step_passes_ten_percent_fails() {
        let want = vec![1.0f32, -2.0, 0.5, 4.0];
        let one_ulp = vec![1.0f32 + 2f32.powi(-10), -2.0, 0.5, 4.0];
        assert!(compare(DType::F16, &want, &one_ulp).pass);
        let off = vec![1.1f32, -2.0, 0.5, 4.0];
        let c = compare(DType::F16, &want, &off);
        assert!(!c.pass, "{c:?}");
    }

    #[test]
    fn fp8_codes_one_step_apart_pass_two_fail() {
        let want: Vec<f32> = (0..200).map(|i| 1.0 + (i % 8) as f32 * 0.125).collect();
        let mut got = want.clone();
        got[3] = want[3] + 0.125;
        let c = compare(DType::F8E4M3, &want, &got);
        assert!(c.pass, "{c:?}");
        got[5] = want[5] + 0.25;
        assert!(!compare(DType::F8E4M3, &want, &got).pass);
        // Near zero the step is the smallest normal's (2^-9 for E4M3): 0 vs 7·2^-9 passes
        // (subnormal codes), 0 vs 2^-6 + 2^-9 (two normal steps) fails.
        let zeros = vec![0.0f32; 200];
        let mut near = zeros.clone();
        near[0] = 7.0 * 2f32.powi(-9);
        assert!(!compare(DType::F8E4M3, &zeros, &near).pass, "7 subnormal steps are 7 smallest-normal steps");
        near[0] = 2f32.powi(-9);
        assert!(compare(DType::F8E4M3, &zeros, &near).pass);
    }

    #[test]
    fn non_finite_results_fail() {
        assert!(!compare(DType::F16, &[1.0, 2.0], &[1.0, f32::NAN]).pass);
        assert!(!compare(DType::F32, &[1.0], &[f32::INFINITY]).pass);
        assert!(compare(DType::I64, &[3.0], &[3.0]).pass);
        assert!(!compare(DType::I64, &[3.0], &[4.0]).pass);
    }
}
