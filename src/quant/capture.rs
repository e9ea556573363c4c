//! Per-channel activation statistics for the weight algorithms (SmoothQuant, AWQ, GPTQ).
//!
//! The calibration texts run through a graph in the interpreter; for each requested value (a
//! matmul's activation input, `[B, S, K]`) the rows of real tokens — padding rows, where the
//! batch's `attention_mask` is 0, are left out — feed an [`algo::ChannelStats`]: per-channel
//! absolute maximum and mean, and, when asked, the Hessian `XᵀX` (GPTQ) and sample rows (AWQ).

use super::algo::ChannelStats;
use super::calib;
use super::{CalibOptions, QuantError};
use crate::import::Imported;
use crate::interp::{self, Tensor};
use crate::ir::{Graph, ValueId};
use std::collections::HashMap;

/// What to keep for one value.
#[derive(Clone, Copy, Debug, Default)]
pub struct Wants {
    /// Accumulate `XᵀX`.
    pub hessian: bool,
    /// Keep up to this many rows (0: none).
    pub sample_rows: usize,
}

/// Runs the calibration texts through `g` and returns the statistics of each requested value.
pub fn channel_stats(
    model: &dyn Imported,
    g: &Graph,
    opts: &CalibOptions,
    wants: &HashMap<ValueId, Wants>,
) -> Result<HashMap<ValueId, ChannelStats>, QuantError> {
    let mut stats = HashMap::new();
    for (&v, w) in wants {
        let k =
            g.ty(v).shape.last().and_then(|d| d.fixed()).ok_or_else(|| QuantError::Recipe(format!("{v}: channel extent must be fixed")))?;
        let mut s = ChannelStats::new(k as usize).map_err(|e| QuantError::Recipe(format!("{v}: {e}")))?;
        if w.hessian {
            s = s.with_hessian();
        }
        if w.sample_rows > 0 {
            s = s.with_samples(w.sample_rows);
        }
        stats.insert(v, s);
    }
    let mut failure: Option<String> = None;
    let values: Vec<ValueId> = wants.keys().copied().collect();
    for run in super::encode_runs(model, g, opts, &values)? {
        let keep = real_token_rows(&run.inputs);
        interp::run_calibration(g, model.weights(), &run.inputs, &mut |id, t| {
            if let (Some(s), None) = (stats.get_mut(&id), &failure) {
                if let Err(e) = observe(s, t, keep.as_deref(), run.tokens.as_deref()) {
                    failure = Some(format!("{id}: {e}"));
                }
            }
        })?;
    }
    match failure {
        Some(e) => Err(QuantError::Recipe(format!("collecting activation statistics: {e}"))),
        None => Ok(stats),
    }
}

/// Feeds the rows of `t` (`[.., K]`) whose token is real to `s`: those `keep` (the attention
/// mask) marks, and of a run of padded sequences each sequence's real rows in turn
/// ([`calib::sequence_rows`], the same calls as one run per sequence).
fn observe(s: &mut ChannelStats, t: &Tensor, keep: Option<&[bool]>, tokens: Option<&[usize]>) -> Result<(), String> {
    let xs = t.to_f32_vec();
    let k = *t.shape.last().ok_or("a scalar has no channels")?;
    if tokens.is_some_and(|t| t.len() > 1) {
        return calib::sequence_rows(&xs, &t.shape, tokens)?.into_iter().try_for_each(|rows| s.observe(rows, k).map_err(|e| e.to_string()));
    }
    match keep {
        Some(mask) if mask.len() * k == xs.len() => {
            let rows: Vec<f32> = xs.chunks(k).zip(mask).filter(|(_, &m)| m).flat_map(|(r, _)| r.iter().copied()).collect();
            s.observe(&rows, k)
        }
        _ => s.observe(&xs, k),
    }
    .map_err(|e| e.to_string())
}

/// One flag per `[B, S]` position: whether its `attention_mask` is set (`None` without a mask).
fn real_token_rows(inputs: &[(&str, Tensor)]) -> Option<Vec<bool>> {
    let (_, mask) = inputs.iter().find(|(name, _)| *name == "attention_mask")?;
    Some(mask.to_f32_vec().iter().map(|&m| m != 0.0).collect())
}
