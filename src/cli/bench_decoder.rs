//! `qfuse bench m.plan` for decoder plans: time to first token, ms per decode step, tokens/s
//! and the weight bandwidth a decode step achieves, for each batch size, through the runtime's
//! generator (wall clock per step, host work included: what a caller sees), after one unmeasured
//! run of the same requests that captures every step shape's CUDA graph.

use qfuse::runtime::scheduler::{Request, SamplingParams};
use qfuse::runtime::{Engine, Generator, StepMarginals};
use std::time::Instant;

/// Replays timed per graph of a decode step's in-graph profile.
const GRAPH_ITERS: usize = 50;

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
    /// With `--profile`: the first prefill step's kernels.
    pub prefill_profile: Option<StepProfile>,
    /// With `--profile`: the kernels of the decode step halfway through generation.
    pub decode_profile: Option<StepProfile>,
}

/// One profiled step: its launches' GPU time per template, and the sum against the step's
/// measured wall time (the difference is launch overhead and host work).
#[derive(Debug, serde::Serialize)]
pub struct StepProfile {
    /// Rows (tokens) the step computed.
    pub tokens: u64,
    /// Kernel launches.
    pub launches: usize,
    /// Summed GPU time of the launches, µs (each between its own events: no overlap).
    pub kernel_micros: f64,
    /// Per template, most expensive first.
    pub templates: Vec<super::bench::TemplateTime>,
    /// Decode steps: each kernel's cost inside the step's CUDA graph (its launches doubled).
    pub graph: Option<StepMarginals>,
}

impl StepProfile {
    fn new(tokens: u64, timings: &[qfuse::runtime::KernelTiming], graph: Option<StepMarginals>) -> Self {
        Self {
            tokens,
            launches: timings.len(),
            kernel_micros: timings.iter().map(|t| t.micros).sum(),
            templates: super::bench::by_template(timings),
            graph,
        }
    }

    /// The in-graph lines: the step's replay, then per kernel `12.3 µs × 30 = 369.0 µs  name
    /// (first launch's label)`, and the marginals' sum against the replay.
    pub fn graph_lines(&self) -> Vec<String> {
        let Some(g) = &self.graph else { return Vec::new() };
        let mut lines = vec![format!(
            "in its CUDA graph: {:.1} µs per replay (median of {}; a second measurement differs by {:.1} µs: totals below that are noise); per kernel, what doubling its launches adds per launch:",
            g.step_micros, g.iters, g.noise_micros
        )];
        for k in &g.kernels {
            lines.push(format!(
                "  {:7.2} µs × {:3} = {:7.1} µs  {} ({})",
                k.micros,
                k.launches,
                k.micros * k.launches as f64,
                k.kernel,
                k.label
            ));
        }
        let sum: f64 = g.kernels.iter().map(|k| k.micros * k.launches as f64).sum();
        lines.push(format!("  sum of the marginals {sum:.1} µs of the {:.1} µs replay", g.step_micros));
        lines
    }

    /// `4 tokens, 244 launches, 512.3 µs of kernel time`.
    pub fn summary(&self) -> String {
        format!(
            "{} tokens, {} launches, {:.1} µs of kernel time (one event pair per launch, no graph)",
            self.tokens, self.launches, self.kernel_micros
        )
    }
}

/// Benchmarks `engine` at each of `batches`; with `profile`, the measured run also profiles its
/// first prefill step and its middle decode step (one event pair per launch; the decode step also
/// in its CUDA graph, [`StepMarginals`]; those two steps' wall times then include the profiling,
/// and are left out of the median).
pub fn bench(engine: &Engine, prompt_len: u64, gen: u64, batches: &[u64], profile: bool) -> anyhow::Result<Vec<DecodeBench>> {
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
        run_once(engine, d.vocab, prompt_len, gen, batch, false)?;
        let Run { ttft, median, prefill_profile, decode_profile } = run_once(engine, d.vocab, prompt_len, gen, batch, profile)?;
        out.push(DecodeBench {
            batch,
            prompt_len,
            gen,
            ttft_ms: ttft * 1e3,
            ms_per_step: median * 1e3,
            tokens_per_second: batch as f64 / median,
            weight_gb_per_s: weight_bytes as f64 / median / 1e9,
            prefill_profile,
            decode_profile,
        });
    }
    Ok(out)
}

/// What one generation measured: the time until every sequence had its first token and the
/// median decode step (every sequence one token), in seconds; the profiles when asked.
struct Run {
    ttft: f64,
    median: f64,
    prefill_profile: Option<StepProfile>,
    decode_profile: Option<StepProfile>,
}

/// One generation of `batch` random prompts on a fresh generator.
fn run_once(engine: &Engine, vocab: u64, prompt_len: u64, gen: u64, batch: u64, profile: bool) -> anyhow::Result<Run> {
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
    let (mut ttft, mut prefill_profile, mut decode_profile) = (None, None, None);
    let mut steps = Vec::new();
    let mut decode_steps = 0u64;
    while gen_.pending() > 0 {
        let profile_prefill = profile && prefill_profile.is_none();
        let profile_decode = profile && ttft.is_some() && decode_profile.is_none() && decode_steps == gen / 2;
        let t = Instant::now();
        let report = if profile_prefill || profile_decode {
            let mut timings = Vec::new();
            let mut graph = None;
            let (report, rows) = gen_.step_probed(&mut |ctx, input| {
                timings = ctx.profile_step(input)?;
                if profile_decode {
                    graph = Some(ctx.graph_marginals(input, GRAPH_ITERS)?);
                }
                Ok(())
            })?;
            let p = Some(StepProfile::new(rows as u64, &timings, graph));
            if profile_prefill {
                prefill_profile = p;
            } else {
                decode_profile = p;
            }
            report
        } else {
            gen_.step()?
        };
        let dt = t.elapsed().as_secs_f64();
        let decode = ttft.is_some() && report.emitted.len() as u64 == batch;
        report.emitted.iter().for_each(|(id, _)| {
            first.insert(*id);
        });
        if ttft.is_none() && first.len() as u64 == batch {
            ttft = Some(started.elapsed().as_secs_f64());
        } else if decode {
            decode_steps += 1;
            if !profile_decode {
                steps.push(dt);
            }
        }
    }
    anyhow::ensure!(gen_.pages_in_use() == 0, "pages leaked: {} in use after the run", gen_.pages_in_use());
    steps.sort_by(f64::total_cmp);
    let median = steps.get(steps.len() / 2).copied().unwrap_or(f64::NAN);
    Ok(Run { ttft: ttft.unwrap_or(f64::NAN), median, prefill_profile, decode_profile })
}
