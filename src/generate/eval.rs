//! Evaluation of a decoder against its unquantized model, as llama.cpp's `perplexity` tool does
//! it: the text is cut into chunks of `ctx` tokens, each chunk runs as one prefill, and only the
//! second half of each chunk is scored (every scored position has at least `ctx/2` tokens of
//! context). Per recipe: perplexity, mean and p99 KL divergence of the next-token distribution
//! from the reference's, and the share of positions whose most likely token is the same.

use super::{sample, Session};
use crate::interp::WeightSource;
use crate::ir::Graph;
use serde::Serialize;

/// Log-probabilities of the scored positions of every chunk (row-major, `vocab` wide), with the
/// tokens that actually follow.
#[derive(Debug, Clone, Default)]
pub struct Scored {
    /// Log-softmax rows.
    pub logprobs: Vec<Vec<f32>>,
    /// The next token at each row.
    pub targets: Vec<u32>,
    /// Vocabulary size.
    pub vocab: usize,
}

/// What one recipe scored against the reference.
#[derive(Clone, Debug, Serialize)]
pub struct DecoderReport {
    /// Recipe name (`fp32` for the reference itself).
    pub recipe: String,
    /// Positions scored.
    pub positions: usize,
    /// exp(mean negative log-likelihood).
    pub perplexity: f64,
    /// Perplexity minus the reference's.
    pub delta_perplexity: f64,
    /// Mean KL(reference ‖ recipe), nats.
    pub mean_kl: f64,
    /// 99th percentile of the per-position KL.
    pub p99_kl: f64,
    /// Share of positions with the same most likely token.
    pub same_top: f64,
}

impl Scored {
    /// Adds one scored position: the logits predicting `target`.
    pub fn push(&mut self, logits: &[f32], target: u32) {
        self.vocab = logits.len();
        self.logprobs.push(log_softmax(logits));
        self.targets.push(target);
    }
}

/// The positions of a chunk of `len` tokens whose prediction of the next token is scored: the
/// second half, each with at least `len / 2` tokens of context (the last position has no next
/// token).
pub fn scored_positions(len: usize) -> std::ops::Range<usize> {
    len / 2..len.saturating_sub(1)
}

/// Cuts `tokens` into whole chunks of `ctx` (the tail is dropped), at most `max_chunks`.
pub fn chunks(tokens: &[u32], ctx: usize, max_chunks: usize) -> Vec<&[u32]> {
    tokens.chunks_exact(ctx.max(2)).take(max_chunks).collect()
}

/// Runs each chunk through `graph` and keeps the scored half.
pub fn score(graph: &Graph, weights: &dyn WeightSource, chunks: &[&[u32]], progress: &dyn Fn()) -> Result<Scored, String> {
    let mut out = Scored::default();
    for chunk in chunks {
        let mut session = Session::new(graph, weights, 0)?;
        let logits = session.step(chunk)?;
        for i in scored_positions(chunk.len()) {
            out.push(logits.row(i), chunk[i + 1]);
        }
        progress();
    }
    Ok(out)
}

fn log_softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    let log_z = max + sum.ln();
    row.iter().map(|&x| (x as f64 - log_z) as f32).collect()
}

/// Perplexity of `s` on its own targets.
pub fn perplexity(s: &Scored) -> f64 {
    let nll: f64 = s.logprobs.iter().zip(&s.targets).map(|(lp, &t)| -(lp[t as usize] as f64)).sum();
    (nll / s.targets.len().max(1) as f64).exp()
}

/// Compares `q` with the reference `r` (same chunks).
pub fn compare(recipe: &str, r: &Scored, q: &Scored) -> DecoderReport {
    let mut kls: Vec<f64> = r
        .logprobs
        .iter()
        .zip(&q.logprobs)
        .map(|(a, b)| a.iter().zip(b).map(|(&la, &lb)| (la as f64).exp() * (la as f64 - lb as f64)).sum::<f64>().max(0.0))
        .collect();
    let same = r.logprobs.iter().zip(&q.logprobs).filter(|(a, b)| sample::argmax(a) == sample::argmax(b)).count();
    let n = kls.len().max(1);
    let mean_kl = kls.iter().sum::<f64>() / n as f64;
    kls.sort_by(f64::total_cmp);
    let p99_kl = kls.get(((kls.len() as f64 * 0.99).ceil() as usize).saturating_sub(1)).copied().unwrap_or(0.0);
    let (ppl_r, ppl_q) = (perplexity(r), perplexity(q));
    DecoderReport {
        recipe: recipe.into(),
        positions: q.targets.len(),
        perplexity: ppl_q,
        delta_perplexity: ppl_q - ppl_r,
        mean_kl,
        p99_kl,
        same_top: same as f64 / n as f64,
    }
}
