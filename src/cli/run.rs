//! `qfuse run`: sentence embeddings from a `.plan` on the GPU (same output as `qfuse embed`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use qfuse::check::{plan_tokenizer, to_host};
use qfuse::plan::Plan;
use qfuse::runtime::{Engine, HostTensor};

/// Arguments of `qfuse run`.
#[derive(Args)]
pub struct RunArgs {
    /// The plan file.
    plan: PathBuf,
    /// Texts to embed (also as positional arguments).
    #[arg(long = "text")]
    text: Vec<String>,
    /// More texts.
    texts: Vec<String>,
    /// Read texts from this file, one per line (blank lines skipped).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Print `[{"text": ..., "embedding": [...]}]` on stdout instead of tables (as `qfuse embed`).
    #[arg(long)]
    json: bool,
    /// Tokenizer truncation length, at most the plan's longest sequence.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Print the GPU time of every kernel (one extra profiled run).
    #[arg(long)]
    profile: bool,
}

/// Runs `qfuse run`.
pub fn run(args: &RunArgs, quiet: bool) -> anyhow::Result<()> {
    let mut texts = args.text.clone();
    texts.extend(args.texts.iter().cloned());
    texts.extend(super::embed::read_text_file(args.file.as_deref())?);
    if texts.is_empty() {
        anyhow::bail!("no texts given: pass --text, positional texts or --file");
    }
    let spinner = qfuse::progress::spinner(format!("loading {}", args.plan.display()), quiet);
    let plan = Plan::load(&args.plan, None)?;
    let max_seq = plan.meta().symbols.iter().find(|(s, _)| s == "S").map_or(u64::MAX, |&(_, m)| m);
    super::validate::at_most("--max-tokens", args.max_tokens as u64, max_seq, "the plan's longest sequence (symbol `S`)")?;
    let tok = plan_tokenizer(&plan, args.max_tokens)?;
    let engine = Engine::load(&args.plan)?;
    let mut ctx = engine.context()?;
    spinner.finish_and_clear();
    let max_batch = engine.meta().symbols.iter().find(|(s, _)| s == "B").map_or(1, |&(_, m)| m.max(1) as usize);
    let started = std::time::Instant::now();
    let mut embeddings = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(max_batch) {
        let batch = tok.encode(chunk)?;
        let inputs: Vec<(&str, HostTensor)> = batch.inputs().iter().map(|(n, t)| (*n, to_host(t))).collect();
        let outputs = ctx.run(&inputs)?;
        let (_, emb) = outputs.into_iter().next().context("the plan has no output")?;
        let width = *emb.shape.last().context("scalar output")? as usize;
        let values = emb.to_f32_vec().map_err(anyhow::Error::msg)?;
        embeddings.extend(values.chunks(width.max(1)).map(<[f32]>::to_vec));
    }
    let secs = started.elapsed().as_secs_f64();
    if args.profile {
        let batch = tok.encode(&texts[..texts.len().min(max_batch)])?;
        let inputs: Vec<(&str, HostTensor)> = batch.inputs().iter().map(|(n, t)| (*n, to_host(t))).collect();
        let (_, timings) = ctx.run_profiled(&inputs)?;
        for t in &timings {
            eprintln!("{:>9.1} µs  {}  {}", t.micros, t.kernel, t.label);
        }
        eprintln!("{:>9.1} µs  total", timings.iter().map(|t| t.micros).sum::<f64>());
    }
    if args.json {
        super::embed::print_json(&texts, &embeddings)
    } else {
        super::embed::print_tables(&texts, &embeddings, false)?;
        super::output::print_line(&format!("{} text(s) embedded on {} in {secs:.3} s", texts.len(), engine.device_name()))
            .map_err(Into::into)
    }
}
