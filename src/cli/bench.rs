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
    /// Batch size, 1 to the plan's largest batch (decoder plans: a comma-separated list, e.g.
    /// `1,8,64`).
    #[arg(long, default_value = "32")]
    batch: String,
    /// Decoder plans: prompt tokens per sequence.
    #[arg(long, default_value_t = 128)]
    prompt_len: u64,
    /// Decoder plans: tokens generated per sequence (at least 2; prompt plus generated tokens fit
    /// the plan's context).
    #[arg(long, default_value_t = 128)]
    gen: u64,
    /// Tokens per sequence (1 to the plan's longest sequence, `S`).
    #[arg(long, default_value_t = 128)]
    seq: u64,
    /// Warm-up replays.
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// Timed replays, at least 1 (the median is reported).
    #[arg(long, default_value_t = 100)]
    iters: usize,
    /// Print one JSON object instead of a line of text (encoder plans: `plan`, `device`, `batch`,
    /// `seq`, `median_ms`, `min_ms`, `mean_ms`, `iters`; decoder plans: `plan`, `device`,
    /// `weight_bytes`, `copy_gbps`, `runs`).
    #[arg(long)]
    json: bool,
    /// Also print the GPU time per kernel template (one profiled run, no graph; decoder plans: the
    /// first prefill step and the middle decode step of each batch size's measured run).
    #[arg(long)]
    profile: bool,
    /// Launch every kernel in plain stream order, without programmatic dependent launch (on by
    /// default on sm_90 and newer for the kernels the plan marks; docs/runtime.md "PDL"): to
    /// measure what the overlap gains.
    #[arg(long)]
    no_pdl: bool,
}

/// Runs `qfuse bench`: the flags are checked against the plan's maxima (read without a GPU)
/// before the GPU is touched.
pub fn run(args: &BenchArgs, quiet: bool) -> anyhow::Result<()> {
    anyhow::ensure!(args.iters >= 1, "--iters 0: time at least one replay");
    let batches: Vec<u64> = args
        .batch
        .split(',')
        .map(|b| b.trim().parse::<u64>().map_err(|_| anyhow::anyhow!("--batch: `{b}` is not a batch size")))
        .collect::<Result<_, _>>()?;
    let spinner = qfuse::progress::spinner(format!("loading {}", args.plan.display()), quiet);
    let plan = qfuse::plan::Plan::load(&args.plan, None)?;
    if let Some(d) = &plan.meta().decoder {
        let what = "the plan's largest batch (set by `qfuse compile --max-batch`)";
        for &b in &batches {
            super::validate::at_most("--batch", b, d.max_batch, what)?;
        }
        anyhow::ensure!(args.gen >= 2, "--gen {}: at least 2 (one decode step after the first token)", args.gen);
        anyhow::ensure!(
            args.prompt_len >= 1 && args.prompt_len + args.gen <= d.max_seq,
            "--prompt-len {} + --gen {}: exceeds {}, the plan's context (set by `qfuse compile --max-seq`)",
            args.prompt_len,
            args.gen,
            d.max_seq
        );
        let mut engine = Engine::load(&args.plan)?;
        engine.set_programmatic_launch(!args.no_pdl);
        spinner.finish_and_clear();
        return run_decoder(args, &engine, &batches, quiet);
    }
    let [batch] = batches[..] else { anyhow::bail!("--batch takes one size for encoder plans (a list only for decoders)") };
    let max = |sym: &str| plan.meta().symbols.iter().find(|(s, _)| s == sym).map(|&(_, m)| m);
    let what = |sym: &str| {
        format!("the plan's maximum (symbol `{sym}`, set by `qfuse compile --max-{}`)", if sym == "B" { "batch" } else { "seq" })
    };
    super::validate::at_most("--batch", batch, max("B").unwrap_or(u64::MAX), &what("B"))?;
    super::validate::at_most("--seq", args.seq, max("S").unwrap_or(u64::MAX), &what("S"))?;
    let mut engine = Engine::load(&args.plan)?;
    engine.set_programmatic_launch(!args.no_pdl);
    let mut ctx = engine.context()?;
    let inputs = synthetic_inputs(&plan, &args.plan, &engine, batch, args.seq)?;
    spinner.finish_and_clear();
    let spinner = qfuse::progress::spinner(format!("timing {} replays", args.warmup + args.iters), quiet);
    let stats = ctx.bench(&inputs, args.warmup, args.iters);
    spinner.finish_and_clear();
    let stats = stats?;
    let tokens = (batch * args.seq) as f64;
    if args.profile {
        let (_, timings) = ctx.run_profiled(&inputs)?;
        for g in by_template(&timings) {
            eprintln!("{}", g.line());
        }
    }
    if args.json {
        let j = json(args, batch, engine.device_name(), (stats.median_ms, stats.min_ms, stats.mean_ms), stats.iters);
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

/// The GPU time of one kernel template within a profiled run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TemplateTime {
    /// The template (the kernel name without its specialisation suffix).
    pub template: String,
    /// Launches of it.
    pub launches: usize,
    /// Their summed GPU time, µs.
    pub micros: f64,
}

impl TemplateTime {
    /// `   123.4 µs   30×  gemm_skinny`.
    pub fn line(&self) -> String {
        format!("{:>9.1} µs  {:>3}×  {}", self.micros, self.launches, self.template)
    }
}

/// `timings` summed per template, the most expensive first.
pub fn by_template(timings: &[qfuse::runtime::KernelTiming]) -> Vec<TemplateTime> {
    let mut out: Vec<TemplateTime> = Vec::new();
    for t in timings {
        let template = t.kernel.rsplit_once('_').map_or(t.kernel.as_str(), |(a, _)| a);
        match out.iter_mut().find(|g| g.template == template) {
            Some(g) => {
                g.micros += t.micros;
                g.launches += 1;
            }
            None => out.push(TemplateTime { template: template.to_string(), launches: 1, micros: t.micros }),
        }
    }
    out.sort_by(|a, b| b.micros.total_cmp(&a.micros));
    out
}

/// The encoder `--json` object: the plan, the device, the shape and the times `(median, min,
/// mean)` in ms.
fn json(args: &BenchArgs, batch: u64, device: &str, (median_ms, min_ms, mean_ms): (f64, f64, f64), iters: usize) -> serde_json::Value {
    serde_json::json!({
        "plan": args.plan.display().to_string(), "device": device, "batch": batch, "seq": args.seq,
        "median_ms": median_ms, "min_ms": min_ms, "mean_ms": mean_ms, "iters": iters,
    })
}

/// Deterministic inputs from the model's own vocabulary (its embedding table and its stored
/// tokenizer), rows of lengths from `seq` down to about `seq / 2`, padded.
fn synthetic_inputs(
    plan: &qfuse::plan::Plan,
    path: &Path,
    engine: &Engine,
    batch: u64,
    seq: u64,
) -> anyhow::Result<Vec<(&'static str, HostTensor)>> {
    let tokenizer_vocab = qfuse::check::plan_tokenizer(plan, seq as usize).ok().map(|t| t.vocab_size());
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
fn run_decoder(args: &BenchArgs, engine: &Engine, batches: &[u64], quiet: bool) -> anyhow::Result<()> {
    let spinner = qfuse::progress::spinner(format!("timing batch sizes {}", args.batch), quiet);
    let copy_gbps = engine.context().and_then(|mut ctx| ctx.copy_bandwidth(1 << 30, 20));
    let rows = super::bench_decoder::bench(engine, args.prompt_len, args.gen, batches, args.profile);
    spinner.finish_and_clear();
    let (copy_gbps, rows) = (copy_gbps?, rows?);
    if args.json {
        let j = serde_json::json!({"plan": args.plan.display().to_string(), "device": engine.device_name(), "weight_bytes": engine.weight_bytes(), "copy_gbps": copy_gbps, "runs": rows});
        return super::output::print_line(&j.to_string()).map_err(Into::into);
    }
    super::output::print_line(&format!(
        "{}: {:.2} GB of weights; device copy bandwidth {:.0} GB/s (1 GiB device-to-device, read + write)",
        args.plan.display(),
        engine.weight_bytes() as f64 / 1e9,
        copy_gbps
    ))?;
    for r in &rows {
        super::output::print_line(&format!(
            "{}: batch {:>3}, prompt {} + {} tokens on {}: first token {:.2} ms, {:.3} ms per step, {:.0} tokens/s, weights at {:.0} GB/s ({:.0} % of copy)",
            args.plan.display(),
            r.batch,
            r.prompt_len,
            r.gen,
            engine.device_name(),
            r.ttft_ms,
            r.ms_per_step,
            r.tokens_per_second,
            r.weight_gb_per_s,
            100.0 * r.weight_gb_per_s / copy_gbps
        ))?;
        for (what, p) in [("prefill", &r.prefill_profile), ("decode", &r.decode_profile)] {
            let Some(p) = p else { continue };
            super::output::print_line(&format!("  {what} step, batch {}: {}", r.batch, p.summary()))?;
            for g in p.templates.iter().take(12) {
                super::output::print_line(&format!("  {}", g.line()))?;
            }
            for line in p.graph_lines() {
                super::output::print_line(&format!("  {line}"))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        bench: BenchArgs,
    }

    #[test]
    fn profiles_sum_per_template_most_expensive_first() {
        let t = |kernel: &str, micros: f64| qfuse::runtime::KernelTiming { launch: 0, label: "x".into(), kernel: kernel.into(), micros };
        let timings = [t("gemm_skinny_3f2a", 10.0), t("rmsnorm_77", 4.0), t("gemm_skinny_9c01", 12.5), t("rmsnorm_77", 4.0)];
        let got = by_template(&timings);
        let want = [("gemm_skinny", 2, 22.5), ("rmsnorm", 2, 8.0)];
        assert_eq!(got.len(), want.len());
        for (g, (template, launches, micros)) in got.iter().zip(want) {
            assert_eq!((g.template.as_str(), g.launches, g.micros), (template, launches, micros));
        }
        assert_eq!(got[0].line(), "     22.5 µs    2×  gemm_skinny");
    }

    #[test]
    fn json_has_the_documented_keys() {
        let args = Wrap::parse_from(["bench", "x.plan", "--batch", "4", "--seq", "16"]).bench;
        let j = json(&args, 4, "H100", (1.5, 1.25, 1.75), 100);
        let mut keys: Vec<&str> = j.as_object().expect("object").keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["batch", "device", "iters", "mean_ms", "median_ms", "min_ms", "plan", "seq"]);
        assert_eq!(j["batch"], 4);
        assert_eq!(j["median_ms"], 1.5);
    }
}
