//! Named tolerances per dtype for comparing a GPU result with the interpreter's, element by
//! element.
//!
//! | dtype | tolerance | why |
//! |---|---|---|
//! | `f16` | every element: \|gpu − ref\| ≤ 4e-3·\|ref\| + 2^-10 | a different summation order or an `f32` statistic moves a result by about one rounding step (2^-11 relative); the floor is one step at magnitude 1, where normalized activations live, for results that cancel to near zero |
//! | `bf16` | every element: ≤ 1.6e-2·\|ref\| + 2^-7 | the same with bf16's 8-bit significand |
//! | `f32` | every element: ≤ 1e-3·\|ref\| + 1e-4 | dynamic scales (`amax / 448` of values that agree) and f32 sums in another order |
//! | narrow codes (FP8, FP4, E8M0, 8- and 4-bit integers) | exact, except *boundary cases*: the code the interpreter gets when it evaluates the same node on the same operands summing in f64 instead of f32; *transcendental cases*: a code one step away that lies inside the op's code window; and *score-order cases*: a code one step away that `attention` reaches when a score whose `q·k` sum lies within f32 rounding of a T boundary rounds the other way | a value whose sum lies within rounding of a code boundary may round either way; summing in f64 shows which values do. Where the pre-quantize value went through CUDA's `expf` (attention's softmax), the interpreter's exp differs from the GPU's by up to 2 + 1 ulp; the window ([`crate::interp::code_window`]) holds every code the pre-quantize value can round to under that error and the P·V sum's order. A score rounded to T one step apart moves a whole row of probabilities; the flip window ([`crate::interp::score_flip_window`]) recomputes the output with such scores flipped, exactly, not by a bound |
//! | `i32`, `i64` | exact | |
//! | any result of a kernel that records how it sums (tensor-core GEMMs, [`compare_kernel_sums`]) | against the node summed as the kernel sums (the measured tensor-core model): the same bits, except where CUDA's transcendental functions in the epilogue (GeLU's `erfcf`, SiLU's `expf`) can move the result: inside the window their documented error spans, a float anywhere and a narrow code one step from the reference | the sums are the kernel's own, and every other step of the epilogue is an IEEE operation the interpreter performs alike |
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
    /// A kernel's result against its node summed exactly as the kernel sums: bit-exact except
    /// inside the window of the epilogue's transcendental error ([`compare_kernel_sums`]).
    KernelSums,
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
            Tolerance::Codes => "codes exact (f64-sum, transcendental and score-order boundary cases counted)".into(),
            Tolerance::Exact => "exact".into(),
            Tolerance::KernelSums => {
                "summed as the kernel sums: exact, except within the epilogue's transcendental error (codes one step)".into()
            }
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
    /// Narrow codes one step from the reference, inside the code window of the op's
    /// transcendental error (within `expf` rounding of a code boundary): allowed and reported.
    pub transcendental_cases: usize,
    /// Narrow codes one step from the reference that `attention` produces when a score whose
    /// `q·k` sum lies within f32 rounding of a T boundary rounds the other way (the flip window):
    /// allowed and reported.
    pub score_order_cases: usize,
}

impl Comparison {
    /// A failed comparison that could not be measured (shapes or dtypes disagree, no reference).
    pub fn mismatch(why: impl Into<String>) -> Self {
        Comparison {
            pass: false,
            measured: why.into(),
            tolerance: "same shape and dtype".into(),
            boundary_cases: 0,
            transcendental_cases: 0,
            score_order_cases: 0,
        }
    }
}

/// The interpreter's values of one result, decoded to `f32`.
#[derive(Debug, Clone, Copy)]
pub struct Reference<'a> {
    /// With f32 sums (the reference).
    pub values: &'a [f32],
    /// With f64 sums, when known: where it holds another narrow code, that code is allowed too.
    pub wide: Option<&'a [f32]>,
    /// Per element, the lowest and highest code the GPU may write given the transcendental error
    /// of the op that produced the pre-quantize value ([`crate::interp::code_window`]), when it has
    /// any: a code one step from the reference inside it is allowed too.
    pub window: Option<(&'a [f32], &'a [f32])>,
    /// Per element, the lowest and highest code reached with scores rounded the other way
    /// ([`crate::interp::score_flip_window`]), when the op has scores: a code one step from the
    /// reference inside it is allowed too.
    pub flips: Option<(&'a [f32], &'a [f32])>,
    /// Per element, the magnitude the relative float bound applies to where it exceeds `|ref|`:
    /// the terms of the element's last roundings (`|ref| + Σ |added|` for a GEMM whose epilogue
    /// adds a residual or a bias, [`super::magnitude`]).
    pub magnitude: Option<&'a [f32]>,
}

/// Compares `got` with `want` under the tolerance of `dtype`.
pub fn compare(dtype: DType, want: Reference<'_>, got: &[f32]) -> Comparison {
    compare_under(Tolerance::of(dtype), dtype, want, got)
}

/// Compares `got` with `want`, the interpreter's result of a node summed exactly as its kernel
/// sums (so a correct kernel differs from it only through its epilogue's transcendental
/// functions), under [`Tolerance::KernelSums`]: every finite element has `want`'s bits, or lies
/// inside `window` (per element the lowest and highest result those functions' documented error
/// can give), a narrow code also one step from `want`'s; such elements are counted as
/// transcendental cases. Non-finite elements follow [`compare`]'s rule.
pub fn compare_kernel_sums(dtype: DType, want: &[f32], window: (&[f32], &[f32]), got: &[f32]) -> Comparison {
    let reference = Reference { values: want, wide: None, window: Some(window), flips: None, magnitude: None };
    compare_under(Tolerance::KernelSums, dtype, reference, got)
}

/// [`compare`] under the tolerance `tol`.
fn compare_under(tol: Tolerance, dtype: DType, want: Reference<'_>, got: &[f32]) -> Comparison {
    let n = want.values.len();
    let bad_pair = |p: Option<(&[f32], &[f32])>| p.is_some_and(|(l, h)| l.len() != n || h.len() != n);
    let bad_len = |v: Option<&[f32]>| v.is_some_and(|v| v.len() != n);
    if got.len() != n || bad_len(want.wide) || bad_len(want.magnitude) || bad_pair(want.window) || bad_pair(want.flips) {
        return Comparison::mismatch(format!("{} elements, the interpreter has {n}", got.len()));
    }
    if let Some(i) = (0..n).find(|&i| !non_finite_matches(want.values[i], got[i])) {
        let measured = format!("element {i} is {} (reference {})", got[i], want.values[i]);
        return Comparison { pass: false, measured, tolerance: tol.describe(), ..Comparison::mismatch("") };
    }
    let finite = |i: &usize| want.values[*i].is_finite();
    let (pass, measured, boundary_cases) = match tol {
        Tolerance::Float { rel, abs } => {
            let scale = |i: usize| f64::from(want.values[i]).abs().max(want.magnitude.map_or(0.0, |m| f64::from(m[i])));
            let ratio = |i: usize| (f64::from(got[i]) - f64::from(want.values[i])).abs() / (rel * scale(i) + abs);
            match (0..n).filter(finite).max_by(|&a, &b| ratio(a).total_cmp(&ratio(b))) {
                Some(i) => (
                    ratio(i) <= 1.0,
                    format!("worst {:.2e} of allowed at element {i} (ref {}, gpu {})", ratio(i), want.values[i], got[i]),
                    0,
                ),
                None => (true, "no finite elements".into(), 0),
            }
        }
        Tolerance::Codes => return compare_codes(dtype, want, got, tol),
        Tolerance::KernelSums if Tolerance::of(dtype) == Tolerance::Codes => return compare_codes(dtype, want, got, tol),
        Tolerance::KernelSums => return compare_in_window(want, got),
        Tolerance::Exact => {
            let differ = (0..n).filter(finite).filter(|&i| want.values[i].to_bits() != got[i].to_bits()).count();
            (differ == 0, format!("{differ} elements differ"), 0)
        }
    };
    Comparison { pass, measured, tolerance: tol.describe(), boundary_cases, ..Comparison::mismatch("") }
}

/// [`Tolerance::KernelSums`] for wide values: every finite element has the reference's bits or
/// lies inside `want.window` (counted as a transcendental case).
fn compare_in_window(want: Reference<'_>, got: &[f32]) -> Comparison {
    let n = want.values.len();
    let inside = |i: usize| want.window.is_some_and(|(lo, hi)| lo[i] <= got[i] && got[i] <= hi[i]);
    let differ = (0..n).filter(|&i| want.values[i].is_finite() && want.values[i].to_bits() != got[i].to_bits());
    let (allowed, wrong): (Vec<usize>, Vec<usize>) = differ.partition(|&i| inside(i));
    let measured = match wrong.first() {
        Some(&i) => format!(
            "{} of {n} elements differ from the kernel's sums, first at element {i} (ref {}, gpu {}); {} within transcendental rounding",
            wrong.len(),
            want.values[i],
            got[i],
            allowed.len()
        ),
        None => format!("all {n} elements as the kernel sums; {} within transcendental rounding", allowed.len()),
    };
    let tolerance = Tolerance::KernelSums.describe();
    Comparison { pass: wrong.is_empty(), measured, tolerance, transcendental_cases: allowed.len(), ..Comparison::mismatch("") }
}

/// Why a narrow code that differs from the reference is allowed, if it is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Allowed {
    /// The f64-sum evaluation holds it.
    Boundary,
    /// One step away, inside the transcendental window.
    Transcendental,
    /// One step away, inside the score-flip window.
    ScoreOrder,
}

/// Which rule allows `got` at element `i` (checked in this order), or `None`.
fn allowed(dtype: DType, want: &Reference<'_>, got: f32, i: usize) -> Option<Allowed> {
    let inside = |pair: Option<(&[f32], &[f32])>| {
        pair.is_some_and(|(lo, hi)| lo[i] <= got && got <= hi[i]) && adjacent_codes(dtype, want.values[i], got)
    };
    if want.wide.is_some_and(|w| w[i].to_bits() == got.to_bits()) {
        Some(Allowed::Boundary)
    } else if inside(want.window) {
        Some(Allowed::Transcendental)
    } else if inside(want.flips) {
        Some(Allowed::ScoreOrder)
    } else {
        None
    }
}

/// [`compare`] for narrow codes: every finite element's code equals the reference's, or one of
/// [`Allowed`]'s rules allows it (counted per rule).
fn compare_codes(dtype: DType, want: Reference<'_>, got: &[f32], tol: Tolerance) -> Comparison {
    let n = want.values.len();
    let (mut counts, mut wrong) = ([0usize; 3], Vec::new());
    for i in (0..n).filter(|&i| want.values[i].is_finite() && want.values[i].to_bits() != got[i].to_bits()) {
        match allowed(dtype, &want, got[i], i) {
            Some(rule) => counts[rule as usize] += 1,
            None => wrong.push(i),
        }
    }
    let [boundary, transcendental, score_order] = counts;
    let allowed = format!(
        "{boundary} boundary cases; {transcendental} codes within transcendental rounding of a boundary; {score_order} codes from scores within f32 rounding of a boundary"
    );
    let measured = match wrong.first() {
        Some(&i) => format!("{} of {n} codes wrong, first at element {i} (ref {}, gpu {}); {allowed}", wrong.len(), want.values[i], got[i]),
        None => format!("all {n} codes match; {allowed}"),
    };
    Comparison {
        pass: wrong.is_empty(),
        measured,
        tolerance: tol.describe(),
        boundary_cases: boundary,
        transcendental_cases: transcendental,
        score_order_cases: score_order,
    }
}

/// Whether `a` and `b` are neighbouring codes of `dtype`: no finite code of `dtype` lies strictly
/// between them (−0 and +0 count as one value). Only for narrow types (at most 8 bits).
pub fn adjacent_codes(dtype: DType, a: f32, b: f32) -> bool {
    if dtype.bits() > 8 || !a.is_finite() || !b.is_finite() || a == b {
        return false;
    }
    let (lo, hi) = (a.min(b), a.max(b));
    !(0..1u32 << dtype.bits()).map(|c| crate::numerics::decode_bits(c, dtype)).any(|x| x.is_finite() && lo < x && x < hi)
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
        Reference { values, wide: None, window: None, flips: None, magnitude: None }
    }

    /// A GEMM result whose epilogue added a residual that cancelled most of the sum: one f16
    /// step of the sum (|acc| ≈ 8) is far beyond 4e-3 of the small result, but within 4e-3 of the
    /// magnitude of the terms, `|ref| + |residual|`.
    #[test]
    fn the_relative_bound_applies_to_the_magnitude_of_the_terms() {
        let (want, got) = ([0.19726563f32], [0.19726563f32 + 2f32.powi(-7)]);
        assert!(!compare(DType::F16, plain(&want), &got).pass);
        let magnitude = [0.19726563f32 + 8.0];
        let r = Reference { magnitude: Some(&magnitude), ..plain(&want) };
        assert!(compare(DType::F16, r, &got).pass);
        // Still per element: ten times that is wrong.
        assert!(!compare(DType::F16, r, &[want[0] + 10.0 * 2f32.powi(-7)]).pass);
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
        let c = compare(DType::F8E4M3, Reference { values: &want, wide: Some(&wide), window: None, flips: None, magnitude: None }, &got);
        assert!(c.pass && c.boundary_cases == 1, "the f64-sum reference holds that code: {c:?}");
        got[5] = want[5] + 0.125;
        assert!(
            !compare(DType::F8E4M3, Reference { values: &want, wide: Some(&wide), window: None, flips: None, magnitude: None }, &got).pass
        );
        assert!(!compare(DType::I8, plain(&[3.0]), &[4.0]).pass);
        assert!(!compare(DType::F4E2M1, plain(&[1.0, 6.0]), &[1.5, 6.0]).pass);
    }

    #[test]
    fn a_one_step_code_inside_the_transcendental_window_passes_and_is_counted() {
        // E4M3 codes around 1: 1.0, 1.125, 1.25 (steps of 0.125).
        let want = vec![1.0f32, 1.0, 1.0, -1.0];
        // Element 0: the window is the reference code only (far from a boundary); element 1 and
        // 3: the pre-quantize bound reaches the next code (within exp rounding of a boundary);
        // element 2: a window two steps wide.
        let lo = vec![1.0f32, 1.0, 1.0, -1.125];
        let hi = vec![1.0f32, 1.125, 1.25, -1.0];
        let r = Reference { values: &want, wide: None, window: Some((&lo, &hi)), flips: None, magnitude: None };
        let exact = compare(DType::F8E4M3, r, &want);
        assert!(exact.pass && exact.transcendental_cases == 0, "{exact:?}");
        let c = compare(DType::F8E4M3, r, &[1.0, 1.125, 1.0, -1.125]);
        assert!(c.pass && c.transcendental_cases == 2 && c.boundary_cases == 0, "{c:?}");
        assert!(c.measured.contains("2 codes within transcendental rounding of a boundary"), "{c:?}");
        let far = compare(DType::F8E4M3, r, &[1.125, 1.0, 1.0, -1.0]);
        assert!(!far.pass && far.measured.contains("element 0"), "a flip where the window holds one code fails: {far:?}");
        let two = compare(DType::F8E4M3, r, &[1.0, 1.0, 1.25, -1.0]);
        assert!(!two.pass && two.measured.contains("element 2"), "two steps fail even inside the window: {two:?}");
        let outside = compare(DType::F8E4M3, r, &[1.0, 0.875, 1.0, -1.0]);
        assert!(!outside.pass, "the step below is outside the window: {outside:?}");
    }

    #[test]
    fn a_one_step_code_inside_the_flip_window_passes_and_is_counted_apart() {
        // E4M3 around 1 (steps of 0.125). Element 1's scores can flip it up one code; element 2's
        // flip window is two codes wide; element 0's holds its own code only.
        let want = vec![1.0f32, 1.0, 1.0];
        let (lo, hi) = (vec![1.0f32, 1.0, 1.0], vec![1.0f32, 1.125, 1.25]);
        let r = Reference { values: &want, wide: None, window: None, flips: Some((&lo, &hi)), magnitude: None };
        let c = compare(DType::F8E4M3, r, &[1.0, 1.125, 1.125]);
        assert!(c.pass && (c.score_order_cases, c.transcendental_cases, c.boundary_cases) == (2, 0, 0), "{c:?}");
        assert!(c.measured.contains("2 codes from scores within f32 rounding of a boundary"), "{c:?}");
        let two = compare(DType::F8E4M3, r, &[1.0, 1.0, 1.25]);
        assert!(!two.pass && two.measured.contains("element 2"), "two steps fail inside the window: {two:?}");
        let far = compare(DType::F8E4M3, r, &[1.125, 1.0, 1.0]);
        assert!(!far.pass && far.measured.contains("element 0"), "one step away from any boundary fails: {far:?}");
        let below = compare(DType::F8E4M3, r, &[1.0, 0.875, 1.0]);
        assert!(!below.pass, "the step the other way is outside the window: {below:?}");
    }

    #[test]
    fn adjacent_codes_are_neighbours_on_the_code_grid() {
        assert!(adjacent_codes(DType::F8E4M3, 1.0, 1.125));
        assert!(adjacent_codes(DType::F8E4M3, -448.0, -416.0));
        assert!(!adjacent_codes(DType::F8E4M3, 1.0, 1.25));
        assert!(!adjacent_codes(DType::F8E4M3, 1.0, 1.0));
        assert!(adjacent_codes(DType::F8E4M3, 0.0, crate::numerics::decode_bits(1, DType::F8E4M3)));
        assert!(adjacent_codes(DType::I8, -1.0, 0.0));
        assert!(!adjacent_codes(DType::I8, -1.0, 1.0));
        assert!(!adjacent_codes(DType::F16, 1.0, 1.0009766));
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
