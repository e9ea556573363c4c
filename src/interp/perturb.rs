//! A second correct implementation of the functions whose results the GPU may round differently
//! from the host: CUDA documents a maximum error in ulps for its single-precision `expf`, `erfcf`
//! and `tanhf` (CUDA C++ Programming Guide, "Mathematical Functions", single-precision table;
//! plans compile without `--use_fast_math`), where the interpreter calls the host's (< 1 ulp).
//!
//! [`Perturbation::apply`] moves the host's result by a pseudo-random amount within that bound
//! ([`Perturbation::Draw`]), decided by a hash of the seed, the function and the argument's bits
//! only: equal arguments get equal results (it is a function, as the GPU's is) and the outcome
//! does not depend on threads or on the order elements are visited. `qfuse check` runs the
//! interpreter once more with it (and with f64 sums) to measure how far two correct
//! implementations of a plan drift apart end to end (`RunOptions::perturbation`). Or it moves
//! every result to one end of the bound ([`Perturbation::Bound`]): evaluated at both ends, a
//! computation that depends monotonically on each such result brackets what any GPU within the
//! bound computes (`qfuse check`'s window of a GEMM epilogue's transcendental functions).

/// Documented maximum error of CUDA's `erfcf`, in ulps (GeLU's `0.5·x·erfcf(−x/√2)`).
pub const CUDA_ERFCF_ULP: f64 = 4.0;

/// Documented maximum error of CUDA's `tanhf`, in ulps (tanh-approximated GeLU, `tanh`).
pub const CUDA_TANHF_ULP: f64 = 2.0;

/// A transcendental function that CUDA computes within a documented ulp bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Function {
    /// `expf` (softmax in `attention`, SiLU, `exp`).
    Exp,
    /// `erfcf` (exact GeLU).
    Erfc,
    /// `tanhf` (tanh GeLU, `tanh`).
    Tanh,
}

impl Function {
    /// CUDA's documented maximum error of this function, in ulps of its f32 result.
    pub fn cuda_ulps(self) -> f64 {
        match self {
            Function::Exp => super::CUDA_EXPF_ULP,
            Function::Erfc => CUDA_ERFCF_ULP,
            Function::Tanh => CUDA_TANHF_ULP,
        }
    }

    fn salt(self) -> u64 {
        match self {
            Function::Exp => 0x6578_7066,
            Function::Erfc => 0x6572_6663,
            Function::Tanh => 0x7461_6e68,
        }
    }
}

/// Transcendental results moved within CUDA's documented error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Perturbation {
    /// Each result moved pseudo-randomly within the bound, deterministically from `seed`: a
    /// second correct implementation.
    Draw {
        /// Chooses the pseudo-random moves.
        seed: u64,
    },
    /// Each result moved to one end of the bound, widened by one ulp for the host's own error
    /// (`up`: toward +∞, else toward −∞): with the other end, the two ends of every value a GPU
    /// within the bound can compute.
    Bound {
        /// Which end.
        up: bool,
    },
}

impl Perturbation {
    /// `y = f(x)` as the host computed it, moved by `r·u` ulps of `y` (f32), rounded to f32, where
    /// `u = f.cuda_ulps()` and, for [`Perturbation::Draw`], `r ∈ [−1, 1)` is a hash of
    /// `(seed, f, x's bits)`; for [`Perturbation::Bound`] the move is `±(u + 1)` ulps. Zero,
    /// subnormal and non-finite results are returned unchanged (CUDA's bounds are stated for the
    /// normal range; an underflowed `exp` stays 0).
    pub fn apply(self, f: Function, x: f32, y: f32) -> f32 {
        if !y.is_normal() {
            return y;
        }
        let ulps = match self {
            Perturbation::Draw { seed } => {
                let h = mix(seed ^ f.salt().rotate_left(32) ^ u64::from(x.to_bits()));
                ((h >> 11) as f64 / (1u64 << 52) as f64 - 1.0) * f.cuda_ulps()
            }
            Perturbation::Bound { up } => (f.cuda_ulps() + 1.0) * if up { 1.0 } else { -1.0 },
        };
        (f64::from(y) + ulps * ulp(y)) as f32
    }
}

/// One unit in the last place of a normal f32 `y`.
fn ulp(y: f32) -> f64 {
    let exponent = ((y.to_bits() >> 23) & 0xff) as i32;
    f64::powi(2.0, exponent - 127 - 23)
}

/// SplitMix64's finaliser: a bijective 64-bit mix.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps_apart(a: f32, b: f32) -> f64 {
        (f64::from(a) - f64::from(b)).abs() / ulp(a)
    }

    #[test]
    fn moves_stay_within_the_cuda_bound_and_are_a_function_of_the_argument() {
        let p = Perturbation::Draw { seed: 7 };
        let (mut moved, mut most) = (0, 0f64);
        for i in 0..10_000 {
            let x = -20.0 + i as f32 * 4e-3;
            for (f, y) in [(Function::Exp, x.exp()), (Function::Erfc, libm::erfcf(x)), (Function::Tanh, x.tanh())] {
                let z = p.apply(f, x, y);
                let d = ulps_apart(y, z);
                assert!(d <= f.cuda_ulps() + 0.5, "{f:?}({x}) moved {d} ulps");
                assert_eq!(z.to_bits(), p.apply(f, x, y).to_bits(), "deterministic");
                moved += usize::from(z != y);
                most = most.max(d);
            }
        }
        assert!(moved > 20_000, "most results move: {moved} of 30000");
        assert!(most >= 1.5, "moves reach beyond one ulp: {most}");
        assert_ne!(p.apply(Function::Exp, 1.0, 1f32.exp()), Perturbation::Draw { seed: 8 }.apply(Function::Exp, 1.0, 1f32.exp()));
    }

    #[test]
    fn the_bound_ends_enclose_every_draw() {
        for i in 0..2_000 {
            let x = -6.0 + i as f32 * 6e-3;
            let (y, draw) = (libm::erfcf(x), Perturbation::Draw { seed: i });
            let (lo, hi) = (
                Perturbation::Bound { up: false }.apply(Function::Erfc, x, y),
                Perturbation::Bound { up: true }.apply(Function::Erfc, x, y),
            );
            let z = draw.apply(Function::Erfc, x, y);
            assert!(lo < y && y < hi && lo <= z && z <= hi, "erfc({x}): {z} outside [{lo}, {hi}]");
            assert!((ulps_apart(y, hi) - 5.0).abs() <= 1.0, "CUDA's 4 ulps and the host's one (a binade apart: ±1)");
        }
    }

    #[test]
    fn zeros_and_non_finite_results_stay() {
        let p = Perturbation::Draw { seed: 1 };
        for y in [0.0f32, -0.0, f32::INFINITY, f32::NAN, 1e-40] {
            assert_eq!(p.apply(Function::Exp, 3.0, y).to_bits(), y.to_bits());
            assert_eq!(Perturbation::Bound { up: true }.apply(Function::Exp, 3.0, y).to_bits(), y.to_bits());
        }
    }
}
