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
use crate::interp::Tensor;
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

/// Runs the calibration texts through `g` and returns the statistics of each requested value
/// (span by span as `opts.schedule` says, every statistic kept: see [`Capture`] to finish and
/// free them span by span).
pub fn channel_stats(
    model: &dyn Imported,
    g: &Graph,
    opts: &CalibOptions,
    wants: &HashMap<ValueId, Wants>,
) -> Result<HashMap<ValueId, ChannelStats>, QuantError> {
    let mut capture = Capture::new(model, g, opts, wants.clone())?;
    let mut stats = HashMap::new();
    for _ in 0..capture.spans().len() {
        stats.extend(capture.span_stats(model, g)?);
        capture.next_span(model, g, false)?;
    }
    Ok(stats)
}

/// The calibration runs of a graph going through it one span of layers at a time
/// ([`calib::stream`]), collecting the [`ChannelStats`] of each span's requested values.
pub struct Capture {
    encoded: Vec<crate::import::Encoded>,
    /// Per run, the rows whose `attention_mask` is set.
    keep: Vec<Option<Vec<bool>>>,
    wants: HashMap<ValueId, Wants>,
    spans: calib::stream::Spans,
    stream: calib::stream::Stream,
    /// The runs' values of the cut ending the span last run.
    pending: Option<Vec<std::sync::Arc<Tensor>>>,
}

impl Capture {
    /// Encodes the calibration texts of `opts` for `g` and plans the spans that observe `wants`
    /// (`opts.schedule`).
    pub fn new(model: &dyn Imported, g: &Graph, opts: &CalibOptions, wants: HashMap<ValueId, Wants>) -> Result<Self, QuantError> {
        let mut values: Vec<ValueId> = wants.keys().copied().collect();
        values.sort();
        let encoded = super::encode_runs(model, g, opts, &values)?;
        let keep = encoded.iter().map(|e| real_token_rows(&e.inputs)).collect();
        let spans = opts.schedule.spans(g, &values);
        let stream = calib::stream::Stream::new(encoded.len());
        Ok(Capture { encoded, keep, wants, spans, stream, pending: None })
    }

    /// The spans.
    pub fn spans(&self) -> &calib::stream::Spans {
        &self.spans
    }

    /// Runs the current span over every run and returns the statistics of its requested values.
    pub fn span_stats(&mut self, model: &dyn Imported, g: &Graph) -> Result<HashMap<ValueId, ChannelStats>, QuantError> {
        let span = self.stream.span();
        let mut stats = HashMap::new();
        for &v in self.spans.values(span) {
            stats.insert(v, new_stats(g, v, self.wants.get(&v).copied().unwrap_or_default())?);
        }
        let runs = self.runs();
        let mut failure: Option<String> = None;
        let (keep, tokens) = (&self.keep, |r: usize| runs[r].tokens);
        let next = self.stream.run(g, model.weights(), &runs, &self.spans, &mut |r, id, t| {
            if let (Some(s), None) = (stats.get_mut(&id), &failure) {
                if let Err(e) = observe(s, t, keep[r].as_deref(), tokens(r)) {
                    failure = Some(format!("{id}: {e}"));
                }
            }
        })?;
        self.pending = Some(next);
        match failure {
            Some(e) => Err(QuantError::Recipe(format!("collecting activation statistics: {e}"))),
            None => Ok(stats),
        }
    }

    /// Moves to the next span: with `rerun`, the span just observed runs again on `g` as it is now
    /// (after the weight algorithms rewrote it: sequential calibration), else the next span starts
    /// from what [`Capture::span_stats`] computed.
    pub fn next_span(&mut self, model: &dyn Imported, g: &Graph, rerun: bool) -> Result<(), QuantError> {
        let hidden = match (rerun, self.pending.take()) {
            (false, Some(h)) => h,
            _ => self.stream.run(g, model.weights(), &self.runs(), &self.spans, &mut |_, _, _| {})?,
        };
        self.stream.advance(hidden);
        Ok(())
    }

    fn runs(&self) -> Vec<calib::Run<'_>> {
        self.encoded.iter().map(|e| calib::Run { inputs: &e.inputs, tokens: e.tokens.as_deref() }).collect()
    }
}

/// Empty statistics for `v` (a `[.., K]` activation) keeping what `w` asks for.
fn new_stats(g: &Graph, v: ValueId, w: Wants) -> Result<ChannelStats, QuantError> {
    let k = g.ty(v).shape.last().and_then(|d| d.fixed()).ok_or_else(|| QuantError::Recipe(format!("{v}: channel extent must be fixed")))?;
    let mut s = ChannelStats::new(k as usize).map_err(|e| QuantError::Recipe(format!("{v}: {e}")))?;
    if w.hessian {
        s = s.with_hessian();
    }
    if w.sample_rows > 0 {
        s = s.with_samples(w.sample_rows);
    }
    Ok(s)
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
