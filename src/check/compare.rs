//! Named tolerances per dtype for comparing a GPU result with the interpreter's, element by
//! element.
//!
//! | dtype | tolerance | why |
//! |---|---|---|
//! | `f16` | every element: \|gpu − ref\| ≤ 4e-3·\|ref\| + 2^-10 | a different summation order or an `f32` statistic moves a result by about one rounding step (2^-11 relative); the floor is one step at magnitude 1, where normalized activations live, for results that cancel to near zero |
//! | `bf16` | every element: ≤ 1.6e-2·\|ref\| + 2^-7 | the same with bf16's 8-bit significand |
//! | `f32` | every element: ≤ 1e-3·\|ref\| + 1e-4 | dynamic scales (`amax / 448` of values that agree) and f32 sums in another order |
//! | narrow codes (FP8, FP4, E8M0, 8- and 4-bit integers) | exact, except *boundary cases*: the code the interpreter gets when it sums in f64 instead of f32 | a value whose sum lies within rounding of a code boundary may round either way; summing in f64 shows which values do |
//! | `i32`, `i64` | exact | |
//!
//! Each element is judged against its own reference, never against the tensor's largest
//! magnitude (a −65504 mask entry must not loosen every other entry). A non-finite reference needs
//! the same non-finite output (NaN for NaN, the same infinity); a NaN or infinity where the
//! reference is finite always fails.

use serde::Serialize;

use crate::ir::DType;

/// A named tolerance.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Tolerance {
    /// Per element: `|gpu − ref| ≤ rel·|ref| + abs`.
    Float {
        /// Bound relative to the element's reference.
        rel: f64,
        /// Absolute floor, for references near zero.
        abs: f64,
    },
    /// Narrow codes: exact, except where the f64-sum reference holds the GPU's code.
    Codes,
    /// Bit-exact.
    Exact,
}

impl Tolerance {
    /// The tolerance of `dtype`.
    pub fn of(dtype: DType) -> Self {
        match dtype {
            DType::F16 => Tolerance::Float { rel: 4e-3, abs: 2f64.powi(-10) },
            DType::BF16 => Tolerance::Float { rel: 1.6e-2, abs: 2f64.powi(-7) },
            DType::F32 => Tolerance::Float { rel: 1e-3, abs: 1e-4 },
            DType::I32 | DType::I64 => Tolerance::Exact,
            _ => Tolerance::Codes,
        }
    }

    /// A short description, e.g. `|Δ| ≤ 4e-3·|ref| + 1e-3`.
    pub fn describe(&self) -> String {
        match self {
            Tolerance::Float { rel, abs } => format!("|Δ| ≤ {rel:.0e}·|ref| + {abs:.0e}"),
            Tolerance::Codes => "codes exact (f64-sum boundary cases counted)".into(),
            Tolerance::Exact => "exact".into(),
        }
    }
}

/// The outcome of one comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// Within tolerance.
    pub pass: bool,
    /// What was measured, e.g. `worst 3.1e-1 of allowed at element 7 (ref 1.5, gpu 1.501)`.
    pub measured: String,
    /// The tolerance applied.
    pub tolerance: String,
    /// Narrow codes that differ from the reference but equal the f64-sum reference: values on a
    /// rounding boundary, allowed and reported.
    pub boundary_cases: usize,
}

impl Comparison {
    /// A failed comparison that could not be measured (shapes or dtypes disagree, no reference).
    pub fn mismatch(why: impl Into<String>) -> Self {
        Comparison { pass: false, measured: why.into(), tolerance: "same shape and dtype".into(), boundary_cases: 0 }
    }
}

/// The interpreter's values of one result, decoded to `f32`.
#[derive(Debug, Clone, Copy)]
pub struct Reference<'a> {
    /// With f32 sums (the reference).
    pub values: &'a [f32],
    /// With f64 sums, when known: where it holds another narrow code, that code is allowed too.
    pub wide: Option<&'a [f32]>,
}

/// Compares `got` with `want` under the tolerance of `dtype`.
pub fn compare(dtype: DType, want: Reference<'_>, got: &[f32]) -> Comparison {
    let tol = Tolerance::of(dtype);
    let n = want.values.len();
    if got.len() != n || want.wide.is_some_and(|w| w.len() != n) {
        return Comparison::mismatch(format!("{} elements, the interpreter has {n}", got.len()));
    }
    if let Some(i) = (0..n).find(|&i| !non_finite_matches(want.values[i], got[i])) {
        let measured = format!("element {i} is {} (reference {})", got[i], want.values[i]);
        return Comparison { pass: false, measured, tolerance: tol.describe(), boundary_cases: 0 };
    }
    let finite = |i: &usize| want.values[*i].is_finite();
    let (pass, measured, boundary_cases) = match tol {
        Tolerance::Float { rel, abs } => {
            let allowed = |r: f32| rel * f64::from(r).abs() + abs;
            let ratio = |i: usize| (f64::from(got[i]) - f64::from(want.values[i])).abs() / allowed(want.values[i]);
            match (0..n).filter(finite).max_by(|&a, &b| ratio(a).total_cmp(&ratio(b))) {
                Some(i) => (
                    ratio(i) <= 1.0,
                    format!("worst {:.2e} of allowed at element {i} (ref {}, gpu {})", ratio(i), want.values[i], got[i]),
                    0,
                ),
                None => (true, "no finite elements".into(), 0),
            }
        }
        Tolerance::Codes => {
            let differ: Vec<usize> = (0..n).filter(finite).filter(|&i| want.values[i].to_bits() != got[i].to_bits()).collect();
            let on_boundary = |i: &usize| want.wide.is_some_and(|w| w[*i].to_bits() == got[*i].to_bits());
            let boundary = differ.iter().filter(|i| on_boundary(i)).count();
            let wrong = differ.iter().find(|i| !on_boundary(i));
            let measured = match wrong {
                Some(&i) => format!(
                    "{} of {n} codes wrong, first at element {i} (ref {}, gpu {}); {boundary} boundary cases",
                    differ.len() - boundary,
                    want.values[i],
                    got[i]
                ),
                None => format!("all {n} codes match; {boundary} boundary cases"),
            };
            (wrong.is_none(), measured, boundary)
        }
        Tolerance::Exact => {
            let differ = (0..n).filter(finite).filter(|&i| want.values[i].to_bits() != got[i].to_bits()).count();
            (differ == 0, format!("{differ} elements differ"), 0)
        }
    };
    Comparison { pass, measured, tolerance: tol.describe(), boundary_cases }
}

/// A finite reference needs a finite output; a NaN reference a NaN; an infinity the same one.
fn non_finite_matches(want: f32, got: f32) -> bool {
    if want.is_nan() {
        got.is_nan()
    } else if want.is_infinite() {
        got == want
    } else {
        got.is_finite()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(values: &[f32]) -> Reference<'_> {
        Reference { values, wide: None }
    }

    #[test]
    fn f16_one_step_passes_ten_percent_fails() {
        let want = vec![1.0f32, -2.0, 0.5, 4.0];
        let one_ulp = vec![1.0f32 + 2f32.powi(-10), -2.0, 0.5, 4.0];
        assert!(compare(DType::F16, plain(&want), &one_ulp).pass);
        let off = vec![1.1f32, -2.0, 0.5, 4.0];
        let c = compare(DType::F16, plain(&want), &off);
        assert!(!c.pass, "{c:?}");
    }

    #[test]
    fn a_huge_element_does_not_loosen_the_others() {
        // The -65504 mask entry allows about ±262 for itself only.
        let want = vec![-65504.0f32, 0.25, 1.0];
        let mut got = want.clone();
        got[0] = -65440.0;
        assert!(compare(DType::F16, plain(&want), &got).pass);
        got[1] = 0.5;
        let c = compare(DType::F16, plain(&want), &got);
        assert!(!c.pass && c.measured.contains("element 1"), "{c:?}");
    }

    #[test]
    fn codes_must_match_except_f64_sum_boundary_cases() {
        let want: Vec<f32> = (0..200).map(|i| 1.0 + (i % 8) as f32 * 0.125).collect();
        let mut got = want.clone();
        got[3] = want[3] + 0.125;
        let c = compare(DType::F8E4M3, plain(&want), &got);
        assert!(!c.pass && c.measured.contains("element 3"), "one code off by one step fails: {c:?}");
        let mut wide = want.clone();
        wide[3] = got[3];
        let c = compare(DType::F8E4M3, Reference { values: &want, wide: Some(&wide) }, &got);
        assert!(c.pass && c.boundary_cases == 1, "the f64-sum reference holds that code: {c:?}");
        got[5] = want[5] + 0.125;
        assert!(!compare(DType::F8E4M3, Reference { values: &want, wide: Some(&wide) }, &got).pass);
        assert!(!compare(DType::I8, plain(&[3.0]), &[4.0]).pass);
        assert!(!compare(DType::F4E2M1, plain(&[1.0, 6.0]), &[1.5, 6.0]).pass);
    }

    #[test]
    fn non_finite_results_fail() {
        assert!(!compare(DType::F16, plain(&[1.0, 2.0]), &[1.0, f32::NAN]).pass);
        assert!(!compare(DType::F32, plain(&[1.0]), &[f32::INFINITY]).pass);
        assert!(compare(DType::I64, plain(&[3.0]), &[3.0]).pass);
        assert!(!compare(DType::I64, plain(&[3.0]), &[4.0]).pass);
    }

    #[test]
    fn non_finite_references_need_the_same_non_finite_output() {
        assert!(!compare(DType::F16, plain(&[f32::NAN, 1.0]), &[0.0, 1.0]).pass);
        assert!(!compare(DType::F16, plain(&[f32::NEG_INFINITY]), &[-65504.0]).pass);
        assert!(!compare(DType::F16, plain(&[f32::INFINITY]), &[f32::NEG_INFINITY]).pass);
        assert!(compare(DType::F16, plain(&[f32::NAN, f32::INFINITY, 1.0]), &[f32::NAN, f32::INFINITY, 1.0]).pass);
    }
}
