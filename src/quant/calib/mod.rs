//! Calibration: run the FP32 graph over sample inputs, collect statistics of the values to be
//! quantized, and choose each one's clipping range (`amax`).
//!
//! - [`collect`] runs the reference interpreter over the calibration batches and feeds every
//!   requested value into a [`TensorStats`] (count, amax, NaN/inf counts, a 2048-bin histogram of
//!   `|x|` whose range doubles as needed: one pass, see [`histogram`] for the resolution this costs),
//!   span of layers by span of layers ([`stream`]), with f64 sums
//!   ([`crate::interp::RunOptions::calibration`]: the statistics are the same on every host).
//! - [`choose_amax`] turns one statistic into an amax with a [`CalibMethod`] (quant-formats.md §7:
//!   Max, Percentile, TensorRT's Entropy/KL search, MSE; details in [`methods`]).
//! - [`Calibration::amaxes`] does that for every value and reports (and `tracing::warn!`s) the ones
//!   whose statistic is unusable ([`CalibIssue`]) instead of producing a bad scale.
//! - [`default_calibration_sentences`] / [`default_eval_sentences`] are built-in, disjoint text sets;
//!   [`read_sentences`] reads a user's file.

pub mod cache;
pub mod histogram;
pub mod methods;
mod sentences;
pub mod stream;

pub use histogram::{TensorStats, NUM_BINS};
pub use methods::choose_amax;
pub use sentences::{default_calibration_sentences, default_decoder_calibration, default_eval_sentences, read_sentences};

use crate::interp::{InterpError, Tensor, WeightSource};
use crate::ir::{DType, Graph, ValueId};
use rayon::prelude::*;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Percentile used by `"percentile"` without a value (pytorch-quantization's default).
pub const DEFAULT_PERCENTILE: f64 = 99.99;

/// How a tensor's clipping range (amax) is chosen from its statistics.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum CalibMethod {
    /// The largest `|x|` seen.
    Max,
    /// The given percentile (0–100, e.g. 99.99) of `|x|`.
    Percentile(f64),
    /// TensorRT's KL-divergence search.
    Entropy,
    /// Minimum squared quantization error.
    Mse,
}

impl FromStr for CalibMethod {
    type Err = String;

    /// Parses `max`, `percentile` (= `percentile:99.99`), `percentile:P` with `0 < P ≤ 100`,
    /// `entropy` and `mse` (ASCII case ignored).
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "max" => return Ok(CalibMethod::Max),
            "percentile" => return Ok(CalibMethod::Percentile(DEFAULT_PERCENTILE)),
            "entropy" => return Ok(CalibMethod::Entropy),
            "mse" => return Ok(CalibMethod::Mse),
            _ => {}
        }
        let Some(p) = lower.strip_prefix("percentile:") else {
            return Err(format!("unknown calibration method `{s}`: expected max, percentile[:P], entropy or mse"));
        };
        match p.trim().parse::<f64>() {
            Ok(v) if v > 0.0 && v <= 100.0 => Ok(CalibMethod::Percentile(v)),
            _ => Err(format!("bad percentile in `{s}`: expected a number in (0, 100], e.g. percentile:99.9")),
        }
    }
}

impl fmt::Display for CalibMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CalibMethod::Max => f.write_str("max"),
            CalibMethod::Percentile(p) => write!(f, "percentile:{p}"),
            CalibMethod::Entropy => f.write_str("entropy"),
            CalibMethod::Mse => f.write_str("mse"),
        }
    }
}

/// Why a value's statistic cannot give a scale.
#[derive(Debug, Clone, PartialEq)]
pub enum CalibIssue {
    /// No element was seen (the value was never computed, or was always empty).
    NoData,
    /// Every element was zero.
    AllZero,
    /// NaN or infinite elements were seen.
    NonFinite {
        /// NaNs seen.
        nan: u64,
        /// Infinities seen.
        inf: u64,
    },
}

impl fmt::Display for CalibIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CalibIssue::NoData => f.write_str("no data was collected (the value was never computed or always empty)"),
            CalibIssue::AllZero => f.write_str("every calibration value is zero, so no scale can be derived"),
            CalibIssue::NonFinite { nan, inf } => write!(f, "calibration saw {nan} NaN and {inf} infinite value(s)"),
        }
    }
}

impl std::error::Error for CalibIssue {}

/// Statistics collected over a calibration set.
#[derive(Clone, Debug)]
pub struct Calibration {
    /// One entry per requested value (empty statistics if it was never computed).
    pub stats: HashMap<ValueId, TensorStats>,
    /// Batches run.
    pub batches: usize,
    /// Rows seen (the leading dimension of each batch's first input, summed).
    pub samples: usize,
    /// Wall time of the collection.
    pub elapsed: Duration,
    /// Read from the calibration cache ([`cache`]) instead of collected.
    pub cached: bool,
}

impl Calibration {
    /// amax per value for `method` and `storage`; values whose statistic is unusable are returned
    /// in the second list (sorted by value id), each also reported with a `tracing::warn!` naming
    /// the value and its producing node.
    pub fn amaxes(&self, g: &Graph, method: CalibMethod, storage: DType) -> (HashMap<ValueId, f32>, Vec<(ValueId, CalibIssue)>) {
        let mut ids: Vec<ValueId> = self.stats.keys().copied().collect();
        ids.sort();
        let results: Vec<(ValueId, Result<f32, CalibIssue>)> =
            ids.par_iter().map(|&v| (v, choose_amax(&self.stats[&v], method, storage))).collect();
        let mut amaxes = HashMap::new();
        let mut issues = Vec::new();
        for (v, r) in results {
            match r {
                Ok(a) => {
                    amaxes.insert(v, a);
                }
                Err(issue) => {
                    tracing::warn!("cannot calibrate value {v} ({}): {issue}", producer_name(g, v));
                    issues.push((v, issue));
                }
            }
        }
        (amaxes, issues)
    }
}

/// "node `name` (op)" for the node producing `v`, for messages.
fn producer_name(g: &Graph, v: ValueId) -> String {
    let Some(info) = g.values.get(v) else { return "not a value of this graph".into() };
    match g.nodes.get(info.producer) {
        Some(node) => {
            let name = node.name.as_deref().unwrap_or("<unnamed>");
            format!("output {} of {} node {} `{name}`", info.slot, node.op.mnemonic(), info.producer)
        }
        None => format!("producer {} missing", info.producer),
    }
}

/// Runs `g` (the FP32 graph) over `batches` with the reference interpreter and collects
/// statistics for `values` (f32-held tensors only; a value never computed keeps empty
/// statistics and later reports [`CalibIssue::NoData`]), layer by layer ([`stream::Spans::new`]).
/// Shows a progress bar unless `quiet`, and reports the elapsed time (on the bar and with
/// `tracing::info!`).
pub fn collect(
    g: &Graph,
    weights: &dyn WeightSource,
    batches: &[Vec<(&str, Tensor)>],
    values: &[ValueId],
    quiet: bool,
) -> Result<Calibration, InterpError> {
    let runs: Vec<Run> = batches.iter().map(|b| Run { inputs: b, tokens: None }).collect();
    collect_runs(g, weights, &runs, &stream::Spans::new(g, values), quiet)
}

/// One interpreter run of calibration: its inputs and, when its rows are sequences padded at
/// their end, each sequence's token count ([`crate::import::Imported::encode_sequences`]).
pub struct Run<'a> {
    /// The graph inputs.
    pub inputs: &'a [(&'a str, Tensor)],
    /// Real tokens of each sequence (`None`: every row counts).
    pub tokens: Option<&'a [usize]>,
}

/// [`collect`] of the values of `spans`, span after span ([`stream`]), over runs that may hold
/// several padded sequences: each requested value of such a run must be token-major
/// ([`token_major`]), and only its real rows are added, one sequence after another, so the
/// statistics equal those of one run per sequence bit for bit (the histogram's range is taken
/// from the first sequence, as it was); streamed or not, each value sees the same rows in the
/// same order. The bar counts spans.
pub fn collect_runs(
    g: &Graph,
    weights: &dyn WeightSource,
    runs: &[Run],
    spans: &stream::Spans,
    quiet: bool,
) -> Result<Calibration, InterpError> {
    let start = Instant::now();
    let values: Vec<ValueId> = (0..spans.len()).flat_map(|i| spans.values(i).iter().copied()).collect();
    let mut stats: HashMap<ValueId, TensorStats> = values.iter().map(|&v| (v, TensorStats::new())).collect();
    let samples: usize = runs.iter().map(|r| batch_rows(r.inputs)).sum();
    let bar = crate::progress::bar(spans.len() as u64, "spans", format!("calibrating {} value(s), layer by layer", values.len()), quiet);
    let mut failure = None;
    stream::for_each(
        g,
        weights,
        runs,
        spans,
        &mut |r, id, t| {
            let (Some(s), Some(xs), None) = (stats.get_mut(&id), t.as_f32(), &failure) else { return };
            match sequence_rows(xs, &t.shape, runs[r].tokens) {
                Ok(rows) => rows.into_iter().for_each(|r| s.add(r)),
                Err(e) => failure = Some(format!("value {id}: {e}")),
            }
        },
        &mut |_| bar.inc(1),
    )?;
    if let Some(message) = failure {
        return Err(InterpError::InvalidGraph { message });
    }
    let elapsed = start.elapsed();
    bar.finish_with_message(format!("calibrated {} value(s) over {samples} sample(s) in {:.2?}", values.len(), elapsed));
    tracing::info!(runs = runs.len(), samples, values = values.len(), spans = spans.len(), ?elapsed, "calibration statistics collected");
    Ok(Calibration { stats, batches: runs.len(), samples, elapsed, cached: false })
}

/// The rows of a run's value `xs` (shape `shape`) that statistics take, in order: all of it
/// without `tokens` or for one sequence (nothing is padding then), else sequence `b`'s first
/// `tokens[b]` positions of a token-major `[n, T, ..]` value, one slice per sequence. Errors when
/// the value is not token-major over the run's sequences.
pub fn sequence_rows<'t>(xs: &'t [f32], shape: &[usize], tokens: Option<&[usize]>) -> Result<Vec<&'t [f32]>, String> {
    let tokens = match tokens {
        Some(t) if t.len() > 1 => t,
        _ => return Ok(vec![xs]),
    };
    let fits = shape.len() >= 2 && shape[0] == tokens.len() && tokens.iter().all(|&n| n <= shape[1]);
    if !fits || shape.iter().product::<usize>() != xs.len() {
        return Err(format!(
            "shape {shape:?} is not [{}, ≥ {}, ..] (one row per token of each sequence)",
            tokens.len(),
            tokens.iter().max().unwrap_or(&0)
        ));
    }
    let row: usize = shape[2..].iter().product();
    Ok(tokens.iter().enumerate().map(|(b, &n)| &xs[b * shape[1] * row..][..n * row]).collect())
}

/// True when every value in `values` is token-major over the step: its shape starts with the
/// extents of the graph input `input_ids` (`[B, S]`), so a run of several padded sequences can
/// be split by sequence ([`sequence_rows`]). False for a graph without `input_ids` and for values
/// such as a last-position slice (`[B, 1, H]`), whose rows a padded run does not hold.
pub fn token_major(g: &Graph, values: &[ValueId]) -> bool {
    let Some((_, ids)) = g.inputs().into_iter().find(|(name, _)| *name == "input_ids") else { return false };
    let lead = &g.ty(ids).shape;
    lead.len() == 2 && values.iter().all(|&v| g.ty(v).shape.get(..2).is_some_and(|d| d == &lead[..]))
}

/// Rows in a batch: the leading dimension of its first input that has one.
fn batch_rows(batch: &[(&str, Tensor)]) -> usize {
    batch.iter().find_map(|(_, t)| t.shape.first().copied()).unwrap_or(0)
}
