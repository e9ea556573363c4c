//! Greedy generation on the GPU, with the interpreter running the plan's own fused IR and weights
//! on exactly the same steps (same scheduler, same page tables, the GPU's tokens fed forward),
//! compared step by step.
//!
//! Per step and row: the GPU's token against the interpreter's argmax, the largest logit
//! difference (the plan's noise at that step), the interpreter's top-two gap, and KL(interpreter
//! ‖ GPU) over the softmax of the logits. A token that differs is **explained** when the
//! interpreter's top two logits are closer than the noise of that step (either token is a correct
//! rounding of the model); an unexplained difference, or a non-finite logit, fails the check.

use serde::Serialize;

use super::{lockstep, Feed, StepModel};
use crate::runtime::scheduler::{Geometry, Request, SamplingParams};

/// The comparison of one step row.
#[derive(Debug, Clone, Serialize)]
pub struct StepCompare {
    /// Request (prompt) index.
    pub request: u64,
    /// Tokens generated before this one.
    pub step: usize,
    /// The GPU's token and the interpreter's argmax.
    pub gpu: u32,
    /// The interpreter's choice.
    pub reference: u32,
    /// max |GPU logit − interpreter logit|.
    pub noise: f64,
    /// The interpreter's top-1 minus top-2 logit.
    pub gap: f64,
    /// KL(interpreter ‖ GPU) in nats.
    pub kl: f64,
}

/// What the greedy generations found.
#[derive(Debug, Clone, Serialize)]
pub struct GreedyReport {
    /// Rows compared (one per generated token).
    pub rows: usize,
    /// Rows where the tokens differ but the interpreter's top two are closer than the noise.
    pub explained: Vec<StepCompare>,
    /// Rows where they differ otherwise.
    pub unexplained: Vec<StepCompare>,
    /// Mean and largest KL(interpreter ‖ GPU).
    pub mean_kl: f64,
    /// Largest KL.
    pub max_kl: f64,
    /// Largest logit difference.
    pub max_noise: f64,
    /// Rows with a non-finite GPU logit.
    pub non_finite: usize,
    /// Tokens per prompt identical up to the first difference (explained or not).
    pub identical_prefix: Vec<usize>,
}

impl GreedyReport {
    /// Passes when every difference is explained and every logit is finite.
    pub fn passed(&self) -> bool {
        self.unexplained.is_empty() && self.non_finite == 0
    }
}

/// Runs `prompts` greedily for `max_new` tokens on `gpu` and `reference` on the same steps (the
/// GPU's tokens fed forward) and compares every emitted row.
pub fn check_greedy(
    geometry: Geometry,
    gpu: &mut dyn StepModel,
    reference: &mut dyn StepModel,
    prompts: &[Vec<u32>],
    max_new: u32,
) -> anyhow::Result<GreedyReport> {
    let requests = prompts
        .iter()
        .enumerate()
        .map(|(id, p)| Request { id: id as u64, prompt: p.clone(), max_new, stop: vec![], sampling: SamplingParams::default() })
        .collect();
    let mut rows = Vec::new();
    let mut non_finite = 0;
    lockstep(geometry, requests, &mut [gpu, reference], &Feed::First, &mut |row| {
        let [g, r] = row.logits.as_slice() else { anyhow::bail!("two models ran, {} rows came back", row.logits.len()) };
        let Some((reference, noise, gap, kl, finite)) = compare(g, r) else {
            anyhow::bail!("prompt {} step {}: the interpreter's logits are all NaN", row.request, row.index)
        };
        non_finite += usize::from(!finite);
        rows.push(StepCompare { request: row.request, step: row.index, gpu: row.token, reference, noise, gap, kl });
        Ok(())
    })?;
    Ok(summarize(rows, non_finite, prompts.len()))
}

/// `(interpreter argmax, max |Δ|, interpreter top-2 gap, KL, all GPU logits finite)`.
fn compare(gpu: &[f32], reference: &[f32]) -> Option<(u32, f64, f64, f64, bool)> {
    let finite = gpu.iter().all(|x| x.is_finite());
    let arg = crate::generate::sample::argmax(reference)? as u32;
    let noise = gpu.iter().zip(reference).map(|(&a, &b)| f64::from((a - b).abs())).fold(0.0, f64::max);
    let mut top = [f64::NEG_INFINITY; 2];
    for &x in reference {
        let x = f64::from(x);
        if x > top[0] {
            top = [x, top[0]];
        } else if x > top[1] {
            top[1] = x;
        }
    }
    Some((arg, noise, top[0] - top[1], kl(reference, gpu), finite))
}

/// KL(p ‖ q) of the softmaxes of two logit rows, in nats.
fn kl(p: &[f32], q: &[f32]) -> f64 {
    let log_softmax = |x: &[f32]| {
        let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let z = x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln() + m;
        x.iter().map(move |&v| v as f64 - z).collect::<Vec<f64>>()
    };
    let (lp, lq) = (log_softmax(p), log_softmax(q));
    lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum::<f64>().max(0.0)
}

fn summarize(rows: Vec<StepCompare>, non_finite: usize, prompts: usize) -> GreedyReport {
    let n = rows.len().max(1) as f64;
    let mean_kl = rows.iter().map(|r| r.kl).sum::<f64>() / n;
    let max_kl = rows.iter().map(|r| r.kl).fold(0.0, f64::max);
    let max_noise = rows.iter().map(|r| r.noise).fold(0.0, f64::max);
    let mut identical_prefix = vec![usize::MAX; prompts];
    let (mut explained, mut unexplained) = (vec![], vec![]);
    for r in &rows {
        if r.gpu != r.reference {
            let p = &mut identical_prefix[r.request as usize];
            *p = (*p).min(r.step);
            if r.gap <= r.noise {
                explained.push(r.clone());
            } else {
                unexplained.push(r.clone());
            }
        }
    }
    for (i, p) in identical_prefix.iter_mut().enumerate() {
        if *p == usize::MAX {
            *p = rows.iter().filter(|r| r.request as usize == i).count();
        }
    }
    GreedyReport { rows: rows.len(), explained, unexplained, mean_kl, max_kl, max_noise, non_finite, identical_prefix }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_are_explained_only_within_the_noise() {
        let row = |request, gpu, reference, noise, gap| StepCompare { request, step: 0, gpu, reference, noise, gap, kl: 0.0 };
        let r = summarize(vec![row(0, 5, 5, 0.1, 2.0), row(1, 4, 5, 0.1, 0.05), row(1, 7, 5, 0.1, 0.5)], 0, 2);
        assert_eq!((r.explained.len(), r.unexplained.len()), (1, 1));
        assert!(!r.passed());
        assert_eq!(r.identical_prefix, vec![1, 0]);
        let clean = summarize(vec![row(0, 5, 5, 0.1, 2.0)], 0, 1);
        assert!(clean.passed());
        assert!(!summarize(vec![row(0, 5, 5, 0.1, 2.0)], 1, 1).passed(), "a NaN logit fails");
    }

    #[test]
    fn kl_is_zero_for_equal_rows_and_positive_otherwise() {
        assert!(kl(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]).abs() < 1e-12);
        assert!(kl(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) > 0.1);
        let (arg, noise, gap, _, finite) = compare(&[1.0, 2.5, f32::NAN], &[1.0, 3.0, 0.0]).unwrap();
        assert_eq!((arg, noise, gap, finite), (1, 0.5, 2.0, false));
    }
}
