//! Weight-quantization algorithms on plain matrices: round-to-nearest groups, SmoothQuant
//! factors, the AWQ scale search and GPTQ. They know nothing of the IR; `quant::insert` applies
//! their results to a graph.
//!
//! | Module | What | Reference |
//! |---|---|---|
//! | [`group`] | [`GroupQuant`]: integer codes with per-group scales (and zero points); round-to-nearest ([`rtn`]) and quantization on given parameters ([`quantize_with`]) | quant-formats.md §2–§3 |
//! | [`stats`] | [`ChannelStats`]: per-input-channel activation statistics, the Hessian `XᵀX` and sample rows | — |
//! | [`smooth`] | SmoothQuant migration factors ([`smooth_factors`]) | Xiao et al., arXiv 2211.10438 |
//! | [`awq`] | the AWQ activation-aware scale search ([`awq_search`]) | Lin et al., arXiv 2306.00978 |
//! | [`clip`] | AWQ's per-group clipping search ([`clip_search`]); the data-free one ([`MseClip`], [`mse_rtn`]) | the same, `auto_clip`; GPTQ's `Quantizer(mse=True)` |
//! | [`gptq`] | GPTQ error-compensating quantization ([`gptq()`]) | Frantar et al., arXiv 2210.17323 |
//!
//! Conventions shared by every function here (they match the IR's `dequantize`, see
//! `interp::ops::quant`):
//!
//! - A weight is `W [N, K]`, row-major `f32`, in `nn.Linear` layout: `N` outputs, `K` inputs.
//!   Calibration activations are rows `X [M, K]`.
//! - Dequantization is `ŵ = (q − z)·s` in `f32`; quantization is `q = clamp(RNE(w / s) + z, qmin, qmax)`
//!   with `RNE` = [`crate::numerics::round_half_even`] and a true `f32` division.
//! - Groups are `G` consecutive elements along `K` (the last group of a row may be shorter); scales and
//!   zero points are `[N, ceil(K/G)]`, row-major.
//! - Symmetric codes lie in `[−2^(b−1), 2^(b−1)−1]` without zero point; asymmetric codes lie in
//!   `[0, 2^b−1]` with an integer zero point in the same range. Codes are kept one per `i8` here;
//!   when a plan stores 4-bit codes they are packed two per byte **along K, element 0 in the low
//!   nibble** (done by `compile::bytes`, not here).
//!
//! Bad input (shapes that do not match, non-finite weights, options out of range) is reported as an
//! [`AlgoError`] naming what is wrong; nothing here panics on user data.

pub mod awq;
pub mod clip;
pub mod gptq;
pub mod group;
mod mat;
pub mod smooth;
pub mod stats;

pub use awq::{awq_search, dequantize_scaled, quantize_scaled, AwqCalib, AwqOptions, AwqResult};
pub use clip::{clip_search, ClipOptions, ClipResult, MseClip};
pub use gptq::{gptq, gptq_from_stats, GptqOptions, GptqResult};
pub use group::{mse_rtn, quantize_with, rtn, GroupParams, GroupQuant};
pub use mat::output_error;
pub use smooth::{smooth_factors, weight_absmax_per_input};
pub use stats::ChannelStats;

/// Why an algorithm could not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AlgoError {
    /// The input is malformed: a shape mismatch, a non-finite weight, an option out of range.
    #[error("{0}")]
    Invalid(String),
    /// GPTQ's damped Hessian has no Cholesky factorization.
    #[error(
        "GPTQ: the damped Hessian of the {k}-input layer is not positive definite (pivot {pivot} of {k} after damping with \
         percdamp {percdamp}); the calibration inputs are degenerate: use more calibration rows or a larger percdamp"
    )]
    NotPositiveDefinite {
        /// The layer's input size `K`.
        k: usize,
        /// The column (in processing order) where the factorization broke down.
        pivot: usize,
        /// The largest relative dampening tried.
        percdamp: f64,
    },
}

/// Result of this module's functions.
pub type Result<T> = std::result::Result<T, AlgoError>;

/// Shorthand for an [`AlgoError::Invalid`].
fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(AlgoError::Invalid(msg.into()))
}

/// Checks that `w` holds a finite `[n, k]` matrix; `what` names it in the error.
fn check_matrix(w: &[f32], n: usize, k: usize, what: &str) -> Result<()> {
    if n == 0 || k == 0 {
        return invalid(format!("{what}: empty shape [{n}, {k}]"));
    }
    if n.checked_mul(k) != Some(w.len()) {
        return invalid(format!("{what}: {} values do not form a [{n}, {k}] matrix", w.len()));
    }
    match w.iter().position(|v| !v.is_finite()) {
        Some(i) => invalid(format!("{what}: element [{}, {}] is {} (weights must be finite)", i / k, i % k, w[i])),
        None => Ok(()),
    }
}

/// Checks calibration activations `x`: at least one whole row of `k`, every value finite.
fn check_rows(x: &[f32], k: usize, what: &str) -> Result<()> {
    if k == 0 || x.is_empty() || x.len() % k != 0 {
        return invalid(format!("{what}: {} activation values are not whole rows of K = {k} (at least one row)", x.len()));
    }
    match x.iter().position(|v| !v.is_finite()) {
        Some(i) => invalid(format!("{what}: activation [{}, {}] is {} (calibration rows must be finite)", i / k, i % k, x[i])),
        None => Ok(()),
    }
}
