//! `qfuse bench m.plan` for decoder plans: time to first token, ms per decode step, tokens/s
//! and the weight bandwidth a decode step achieves, for each batch size, through the runtime's
//! generator (wall clock per step, host work included: what a caller sees), after one unmeasured
//! run of the same requests that captures every step shape's CUDA graph.

use qfuse::runtime::scheduler::{Request, SamplingParams};
use qfuse::runtime::{Engine, Generator};
use std::time::Instant;

/// One batch size's measurement.
#[derive(Debug, serde::Serialize)]
pub struct DecodeBench {
    /// Sequences generated together.
    pub batch: u64,
    /// Prompt tokens per sequence.
    pub prompt_len: u64,
    /// Generated tokens per sequence.
    pub gen: u64,
    /// Wall time until every sequence of the batch had its first token, ms.
    pub ttft_ms: f64,
    /// Median wall time of one decode step (every sequence one token), ms.
    pub ms_per_step: f64,
    /// Generated tokens per second over decode steps.
    pub tokens_per_second: f64,
    /// Weight bytes read per decode step over its median time, GB/s.
    pub weight_gb_per_s: f64,
}

/// Benchmarks `engine` at each of `batches`.
pub fn bench(engine: &Engine, prompt_len: u64, gen: u64, batches: &[u64]) -> anyhow::Result<Vec<DecodeBench>> {
    let d = engine.meta().decoder.clone().ok_or_else(|| anyhow::anyhow!("not a decoder plan"))?;
    anyhow::ensure!(
        prompt_len >= 1 && prompt_len + gen <= d.max_seq,
        "--prompt-len {prompt_len} + --gen {gen} exceed the plan's context {}",
        d.max_seq
    );
    anyhow::ensure!(gen >= 2, "--gen must be at least 2 (one decode step after the first token)");
    let weight_bytes: u64 = engine.weight_bytes() as u64;
    let mut out = Vec::new();
    for &batch in batches {
        anyhow::ensure!(
            batch >= 1 && batch <= d.max_batch,
            "--batch {batch}: the plan serves 1 to {} sequences (--max-batch)",
            d.max_batch
        );
        // The first run captures the CUDA graphs of every step shape; the second is measured.
        run_once(engine, d.vocab, prompt_len, gen, batch)?;
        let (ttft, median) = run_once(engine, d.vocab, prompt_len, gen, batch)?;
        out.push(DecodeBench {
            batch,
            prompt_len,
            gen,
            ttft_ms: ttft * 1e3,
            ms_per_step: median * 1e3,
            tokens_per_second: batch as f64 / median,
            weight_gb_per_s: weight_bytes as f64 / median / 1e9,
        });
    }
    Ok(out)
}

/// One generation of `batch` random prompts on a fresh generator: the time until every sequence
/// had its first token and the median decode step (every sequence one token), in seconds.
fn run_once(engine: &Engine, vocab: u64, prompt_len: u64, gen: u64, batch: u64) -> anyhow::Result<(f64, f64)> {
    let mut gen_ = Generator::new(engine, None)?;
    let mut s = 0x5eed_u64.wrapping_add(batch);
    let mut next = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 33) % vocab) as u32
    };
    for id in 0..batch {
        let prompt = (0..prompt_len).map(|_| next()).collect();
        gen_.submit(Request { id, prompt, max_new: gen as u32, stop: vec![], sampling: SamplingParams::default() })?;
    }
    let started = Instant::now();
    let mut first = std::collections::HashSet::new();
    let mut ttft = None;
    let mut steps = Vec::new();
    while gen_.pending() > 0 {
        let t = Instant::now();
        let report = gen_.step()?;
        let dt = t.elapsed().as_secs_f64();
        let decode = ttft.is_some() && report.emitted.len() as u64 == batch;
        report.emitted.iter().for_each(|(id, _)| {
            first.insert(*id);
        });
        if ttft.is_none() && first.len() as u64 == batch {
            ttft = Some(started.elapsed().as_secs_f64());
        } else if decode {
            steps.push(dt);
        }
    }
    anyhow::ensure!(gen_.pages_in_use() == 0, "pages leaked: {} in use after the run", gen_.pages_in_use());
    steps.sort_by(f64::total_cmp);
    let median = steps.get(steps.len() / 2).copied().unwrap_or(f64::NAN);
    Ok((ttft.unwrap_or(f64::NAN), median))
}
