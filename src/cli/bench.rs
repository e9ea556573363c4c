//! `qfuse bench`: times a `.plan` end to end (CUDA graph replays between CUDA events).

use std::path::{Path, PathBuf};

use clap::Args;
use qfuse::check::inputs::{self, InputSpace};
use qfuse::runtime::{Engine, HostTensor};

/// Arguments of `qfuse bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// The plan file.
    plan: PathBuf,
    /// Batch size (decoder plans: a comma-separated list, e.g. `1,8,64`).
    #[arg(long, default_value = "32")]
    batch: String,
    /// Decoder plans: prompt tokens per sequence.
    #[arg(long, default_value_t = 128)]
    prompt_len: u64,
    /// Decoder plans: tokens generated per sequence.
    #[arg(long, default_value_t = 128)]
    gen: u64,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    seq: u64,
    /// Warm-up replays.
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// Timed replays (the median is reported).
    #[arg(long, default_value_t = 100)]
    iters: usize,
    /// Print one JSON object instead of a line of text.
    #[arg(long)]
    json: bool,
    /// Also print the GPU time of every kernel (one profiled run, no graph).
    #[arg(long)]
    profile: bool,
}

/// Runs `qfuse bench`.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let engine = Engine::load(&args.plan)?;
    let batches: Vec<u64> = args
        .batch
        .split(',')
        .map(|b| b.trim().parse::<u64>().map_err(|_| anyhow::anyhow!("--batch: `{b}` is not a batch size")))
        .collect::<Result<_, _>>()?;
    if engine.meta().decoder.is_some() {
        return run_decoder(args, &engine, &batches);
    }
    let [batch] = batches[..] else { anyhow::bail!("--batch takes one size for encoder plans (a list only for decoders)") };
    let mut ctx = engine.context()?;
    let inputs = synthetic_inputs(&args.plan, &engine, batch, args.seq)?;
    let stats = ctx.bench(&inputs, args.warmup, args.iters)?;
    let tokens = (batch * args.seq) as f64;
    if args.profile {
        let (_, timings) = ctx.run_profiled(&inputs)?;
        let mut by_kernel: Vec<(String, f64, usize)> = Vec::new();
        for t in &timings {
            let template = t.kernel.rsplit_once('_').map_or(t.kernel.as_str(), |(a, _)| a).to_string();
            match by_kernel.iter_mut().find(|(k, _, _)| *k == template) {
                Some(e) => {
                    e.1 += t.micros;
                    e.2 += 1;
                }
                None => by_kernel.push((template, t.micros, 1)),
            }
        }
        by_kernel.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (k, us, n) in &by_kernel {
            eprintln!("{us:>9.1} µs  {n:>3}×  {k}");
        }
    }
    if args.json {
        let j = serde_json::json!({
            "plan": args.plan.display().to_string(), "device": engine.device_name(), "batch": batch, "seq": args.seq,
            "median_ms": stats.median_ms, "min_ms": stats.min_ms, "mean_ms": stats.mean_ms, "iters": stats.iters,
        });
        return super::output::print_line(&j.to_string()).map_err(Into::into);
    }
    super::output::print_line(&format!(
        "{}: batch {} × {} tokens on {}: median {:.3} ms (min {:.3}, mean {:.3}, {} replays), {:.0} tokens/s",
        args.plan.display(),
        batch,
        args.seq,
        engine.device_name(),
        stats.median_ms,
        stats.min_ms,
        stats.mean_ms,
        stats.iters,
        tokens / (stats.median_ms / 1000.0),
    ))
    .map_err(Into::into)
}

/// Deterministic inputs from the model's own vocabulary (its embedding table and its stored
/// tokenizer), rows of lengths from `seq` down to about `seq / 2`, padded.
fn synthetic_inputs(path: &Path, engine: &Engine, batch: u64, seq: u64) -> anyhow::Result<Vec<(&'static str, HostTensor)>> {
    let plan = qfuse::plan::Plan::load(path, None)?;
    let tokenizer_vocab = qfuse::check::plan_tokenizer(&plan, seq as usize).ok().map(|t| t.vocab_size());
    let space = InputSpace::of_plan(engine.meta(), tokenizer_vocab).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let lengths: Vec<u64> = (0..batch).map(|r| seq - r * seq / (2 * batch.max(1))).collect();
    let mut state = 0u64;
    let mut draw = |n: u64| {
        state = state.wrapping_add(7919);
        state % n
    };
    Ok(inputs::bound_by(engine.meta(), inputs::bert_batch(space, seq, &lengths, &mut draw)))
}

/// `qfuse bench` of a decoder plan: one line (or JSON object) per batch size.
fn run_decoder(args: &BenchArgs, engine: &Engine, batches: &[u64]) -> anyhow::Result<()> {
    let rows = super::bench_decoder::bench(engine, args.prompt_len, args.gen, batches)?;
    if args.json {
        let j = serde_json::json!({"plan": args.plan.display().to_string(), "device": engine.device_name(), "weight_bytes": engine.weight_bytes(), "runs": rows});
        return super::output::print_line(&j.to_string()).map_err(Into::into);
    }
    for r in &rows {
        super::output::print_line(&format!(
            "{}: batch {:>3}, prompt {} + {} tokens on {}: first token {:.2} ms, {:.3} ms per step, {:.0} tokens/s, weights at {:.0} GB/s",
            args.plan.display(),
            r.batch,
            r.prompt_len,
            r.gen,
            engine.device_name(),
            r.ttft_ms,
            r.ms_per_step,
            r.tokens_per_second,
            r.weight_gb_per_s
        ))?;
    }
    Ok(())
}
