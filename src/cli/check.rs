//! `qfuse check`: a plan on the GPU against the reference interpreter (see `qfuse::check`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use qfuse::check::decoder::perplexity::{Agreement, KL_MARGIN, PPL_TOLERANCE};
use qfuse::check::decoder::{random, DecoderCheckOptions, EvalChunks, GreedyReport, PerplexityReport, RandomReport};
use qfuse::check::inputs::{self, PromptSpace};
use qfuse::check::{check_plan, CheckOptions, KernelCheck};
use qfuse::generate::eval;

/// Arguments of `qfuse check`.
#[derive(Args)]
pub struct CheckArgs {
    /// The plan file.
    plan: PathBuf,
    /// Texts for the comparison, one per line (default: 16 built-in sentences).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Random-input runs checked for NaN and infinity (decoder plans: random prompts, a few
    /// greedy tokens each).
    #[arg(long, default_value_t = 256)]
    random: usize,
    /// Smallest acceptable cosine between GPU and interpreter outputs, per row.
    #[arg(long, default_value_t = 0.9999)]
    min_cos: f64,
    /// Print every kernel's comparison, not only the failures and a summary.
    #[arg(long)]
    all: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// The model folder the plan was compiled from: also compare GPU and interpreter with FP32.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Decoder plans: greedy tokens generated per prompt and compared step by step.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: u32,
    /// Decoder plans: the text whose perplexity the GPU and the interpreter score (default: the
    /// GNU GPL v3, as `qfuse eval`).
    #[arg(long)]
    eval_file: Option<PathBuf>,
    /// Decoder plans: tokens per perplexity chunk (default: 256, or the plan's context if shorter).
    #[arg(long)]
    ctx: Option<usize>,
    /// Decoder plans: perplexity chunks scored, run as one decode batch where the plan allows
    /// (0: no perplexity check).
    #[arg(long, default_value_t = 4)]
    chunks: usize,
    /// Decoder plans: skip the floor (a second correct implementation) on the perplexity text.
    #[arg(long)]
    no_floor: bool,
    /// Decoder plans: skip the per-kernel comparison of a prefill and a decode step.
    #[arg(long)]
    no_kernels: bool,
}

/// Prompts of the decoder check (through the plan's chat template when it has one).
const PROMPTS: [&str; 8] = [
    "The capital of France is",
    "Write a haiku about the sea.",
    "def fibonacci(n):",
    "List three prime numbers and explain why they are prime.",
    "Translate to French: the cat sleeps on the warm windowsill.",
    "What is 17 times 23?",
    "Explain what a KV cache is in one paragraph.",
    "Once upon a time",
];

/// Default tokens per perplexity chunk (as `qfuse eval --ctx`).
const DEFAULT_CTX: usize = 256;

/// Seed of the random prompts.
const SEED: u64 = 0x5eed;

/// `qfuse check` of a decoder plan: greedy generation and teacher-forced perplexity on the GPU and
/// on the interpreter in lockstep, then random prompts on the GPU.
fn run_decoder(args: &CheckArgs, quiet: bool) -> anyhow::Result<()> {
    let plan = qfuse::plan::Plan::load(&args.plan, None)?;
    let d = plan.meta().decoder.clone().expect("checked by the caller");
    let tok = qfuse::generate::plan_tokenizer(&plan, &d)?;
    let chat = d.tokens.chat_template.is_some();
    let prompts = PROMPTS.iter().map(|p| super::generate_plan::prompt_ids(&tok, p, chat, None)).collect::<anyhow::Result<Vec<_>>>()?;
    let eval = eval_chunks(args, &tok, d.max_seq)?;
    let random = random_prompts(args, &plan, &tok, d.max_seq)?;
    let opts =
        DecoderCheckOptions { prompts, max_new: args.max_new_tokens, kernels: !args.no_kernels, eval, floor: !args.no_floor, random };
    let started = std::time::Instant::now();
    let spinner = qfuse::progress::spinner(format!("checking {} against the interpreter", args.plan.display()), quiet);
    let r = qfuse::check::decoder::check_decoder_plan(&args.plan, &opts);
    spinner.finish_and_clear();
    let r = r?;
    if args.json {
        super::output::print_line(&serde_json::to_string_pretty(&r)?)?;
    } else {
        let mut lines = Vec::new();
        for step in &r.kernels {
            if let Some(t) = kernel_table(&step.kernels, args.all) {
                lines.push(format!("{}:\n{t}", step.step));
            }
            lines.push(kernel_summary(&format!("per-kernel, {}", step.step), &step.kernels));
        }
        lines.extend(greedy_lines(&r.greedy, opts.prompts.len(), args.max_new_tokens));
        if let Some(p) = &r.perplexity {
            lines.extend(perplexity_lines(p));
        }
        lines.push(random_line(&r.random));
        lines.push(format!("{} in {:.1} s", if r.passed() { "PASS" } else { "FAIL" }, started.elapsed().as_secs_f64()));
        super::output::print_line(&lines.join("\n"))?;
    }
    if !r.passed() {
        anyhow::bail!("{}: the GPU disagrees with the interpreter beyond the check's limits (see above)", args.plan.display());
    }
    Ok(())
}

/// The evaluation text's chunks, cut as `qfuse eval` cuts them; `None` with `--chunks 0`.
fn eval_chunks(args: &CheckArgs, tok: &qfuse::import::gguf::GgufTokenizer, max_seq: u64) -> anyhow::Result<Option<EvalChunks>> {
    if args.chunks == 0 {
        return Ok(None);
    }
    let ctx = match args.ctx {
        Some(ctx) => {
            super::validate::at_most("--ctx", ctx as u64, max_seq, "the plan's context (--max-seq at compile time)")?;
            ctx
        }
        None => DEFAULT_CTX.min(max_seq as usize),
    };
    anyhow::ensure!(ctx >= 16, "--ctx {ctx}: chunks need at least 16 tokens (half of each chunk is scored)");
    let path = args.eval_file.clone().unwrap_or_else(|| super::eval_decoder::DEFAULT_TEXT.into());
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: the evaluation text (--eval-file)", path.display()))?;
    let tokens = tok.encode(&text)?;
    let chunks: Vec<Vec<u32>> = eval::chunks(&tokens, ctx, args.chunks).into_iter().map(<[u32]>::to_vec).collect();
    anyhow::ensure!(!chunks.is_empty(), "{}: {} tokens make no chunk of --ctx {ctx}", path.display(), tokens.len());
    Ok(Some(EvalChunks { source: path.display().to_string(), ctx, chunks }))
}

/// `--random` prompts over the plan's vocabulary and its tokenizer's special tokens.
fn random_prompts(
    args: &CheckArgs,
    plan: &qfuse::plan::Plan,
    tok: &qfuse::import::gguf::GgufTokenizer,
    max_seq: u64,
) -> anyhow::Result<Vec<Vec<u32>>> {
    let d = plan.meta().decoder.as_ref().expect("checked by the caller");
    let mut special: Vec<u32> = d.tokens.bos.into_iter().chain(d.tokens.eos.iter().copied()).collect();
    special.extend(tok.inner().get_added_tokens_decoder().iter().filter(|(_, t)| t.special).map(|(&id, _)| id));
    let space = PromptSpace::of_decoder(plan.meta(), tok.vocab_size() as u64, &special)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.plan.display()))?;
    let mut rng = inputs::SplitMix::new(SEED);
    Ok(inputs::decoder_prompts(&space, args.random, random::max_prompt_len(max_seq), &mut |n| rng.below(n)))
}

fn greedy_lines(r: &GreedyReport, prompts: usize, max_new: u32) -> Vec<String> {
    let mut lines = vec![format!(
        "greedy: {prompts} prompts × {max_new} tokens, GPU vs interpreter on the same steps: {} rows, KL mean {:.2e} max {:.2e} nats, largest logit difference {:.4}",
        r.rows, r.mean_kl, r.max_kl, r.max_noise
    )];
    lines.push(format!("identical tokens per prompt before the first difference: {:?}", r.identical_prefix));
    for (what, rows) in [("explained (top-two gap within the noise)", &r.explained), ("UNEXPLAINED", &r.unexplained)] {
        for c in rows.iter().take(8) {
            lines.push(format!(
                "{what}: prompt {} step {}: GPU {} vs interpreter {} (gap {:.4}, noise {:.4})",
                c.request, c.step, c.gpu, c.reference, c.gap, c.noise
            ));
        }
    }
    lines.push(format!("non-finite logit rows: {}", r.non_finite));
    lines
}

fn perplexity_lines(p: &PerplexityReport) -> Vec<String> {
    let agreement = |a: &Agreement| {
        format!(
            "{} perplexity {:.4} ({:+.3} %), KL(interpreter ‖ it) mean {:.2e} p99 {:.2e} nats, same top token {:.2} %",
            a.name,
            a.perplexity,
            100.0 * a.relative,
            a.mean_kl,
            a.p99_kl,
            100.0 * a.same_top
        )
    };
    let mut lines = vec![format!(
        "perplexity: {} chunks × {} tokens of {}, {} positions scored (second half of each chunk), teacher-forced on the same steps: interpreter {:.4}",
        p.chunks, p.ctx, p.source, p.positions, p.interpreter
    )];
    let verdict = if p.passed() { "ok" } else { "FAIL" };
    let bar = if p.floor_beyond_tolerance().is_some() {
        format!("within the floor's ±{:.3} % (> {:.1} %) and its mean KL + {KL_MARGIN:e}", 100.0 * p.bar(), 100.0 * PPL_TOLERANCE)
    } else {
        format!("within ±{:.1} %", 100.0 * PPL_TOLERANCE)
    };
    lines.push(format!("  {} — {bar}: {verdict}", agreement(&p.gpu)));
    if let Some(f) = &p.floor {
        let beside = if p.gpu.mean_kl <= f.mean_kl { "at least as well as" } else { "less well than" };
        lines.push(format!("  {} (floor)", agreement(f)));
        lines.push(format!("  the GPU agrees with the interpreter {beside} a second correct implementation does (mean KL)"));
    }
    lines
}

fn random_line(r: &RandomReport) -> String {
    let first = r.first.as_deref().map_or(String::new(), |f| format!(" — first: {f}"));
    format!(
        "random prompts: {} of 1 to {} tokens (ids from the vocabulary, 1 in {} special), {} greedy tokens each on the GPU: {} rows, non-finite {}{first}",
        r.prompts,
        r.longest,
        inputs::SPECIAL_ONE_IN,
        random::RANDOM_NEW_TOKENS,
        r.rows,
        r.non_finite
    )
}

/// The table of `kernels`' comparisons (all, or only the failures); `None` when empty.
fn kernel_table(kernels: &[KernelCheck], all: bool) -> Option<String> {
    let mut t = super::output::table();
    t.set_header(["#", "kernel computes", "value", "dtype", "measured", "tolerance", ""]);
    for k in kernels.iter().filter(|k| all || !k.comparison.pass) {
        let c = &k.comparison;
        t.add_row([
            k.launch.to_string(),
            k.label.clone(),
            k.value.clone(),
            k.dtype.clone(),
            c.measured.clone(),
            c.tolerance.clone(),
            if c.pass { "ok" } else { "FAIL" }.into(),
        ]);
    }
    (!t.is_empty()).then(|| t.to_string())
}

/// One line: how many of `kernels` passed and the allowed rounding cases, after `what`.
fn kernel_summary(what: &str, kernels: &[KernelCheck]) -> String {
    let ok = kernels.iter().filter(|k| k.comparison.pass).count();
    let boundary: usize = kernels.iter().map(|k| k.comparison.boundary_cases).sum();
    let transcendental: usize = kernels.iter().map(|k| k.comparison.transcendental_cases).sum();
    let score_order: usize = kernels.iter().map(|k| k.comparison.score_order_cases).sum();
    format!(
        "{what}: {ok} of {} results within their tolerance; {boundary} narrow codes on a rounding boundary (allowed); {transcendental} codes within transcendental rounding of a boundary (allowed); {score_order} codes from attention scores within f32 rounding of a boundary (allowed)",
        kernels.len()
    )
}

const SENTENCES: [&str; 16] = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "The quick brown fox jumps over the lazy dog while the cat watches from the warm windowsill.",
    "Quantization maps real numbers to a small set of codes; FP8 E4M3 keeps three mantissa bits.",
    "Où est la gare ? Je cherche le train de 8 h 15 pour Genève.",
    "東京は日本の首都です。",
    "GPU kernels fuse the bias, GeLU and the output quantize into the GEMM epilogue 🚀",
    "fn main() { println!(\"{}\", 1 + 2); }",
    "ok",
];

/// Runs `qfuse check`; exits with an error if anything failed.
pub fn run(args: &CheckArgs, quiet: bool) -> anyhow::Result<()> {
    anyhow::ensure!(args.min_cos > 0.0 && args.min_cos <= 1.0, "--min-cos {}: a cosine, so it must lie in (0, 1]", args.min_cos);
    if qfuse::plan::Plan::load(&args.plan, None).is_ok_and(|p| p.meta().decoder.is_some()) {
        return run_decoder(args, quiet);
    }
    let mut texts: Vec<String> = super::embed::read_text_file(args.file.as_deref())?;
    if texts.is_empty() {
        texts = SENTENCES.iter().map(|s| s.to_string()).collect();
    }
    let opts = CheckOptions { texts, random_runs: args.random, seed: 0x5eed, max_tokens: 128, reference_model: args.model.clone() };
    let started = std::time::Instant::now();
    let spinner = qfuse::progress::spinner(
        format!("checking {} against the interpreter ({} texts, {} random runs)", args.plan.display(), opts.texts.len(), opts.random_runs),
        quiet,
    );
    let report = check_plan(&args.plan, &opts);
    spinner.finish_and_clear();
    let report = report?;
    let passed = report.passed(args.min_cos);
    if args.json {
        super::output::print_line(&serde_json::to_string_pretty(&report)?)?;
    } else {
        if let Some(t) = kernel_table(&report.kernels, args.all) {
            super::output::print_line(&t)?;
        }
        let mut lines = vec![kernel_summary("per-kernel", &report.kernels)];
        for (name, cos) in &report.end_to_end {
            let (min, mean) = min_mean(cos);
            lines.push(format!(
                "end to end `{name}`: {} rows, cosine GPU vs interpreter min {min:.6}, mean {mean:.6} (bar {:.6}: {}, or the floor minus {:.0e} when lower)",
                cos.len(),
                report.end_to_end_bar(name, args.min_cos),
                args.min_cos,
                qfuse::check::FLOOR_MARGIN
            ));
        }
        for (name, cos) in &report.floor {
            let (min, mean) = min_mean(cos);
            let variants: Vec<String> = report
                .floor_variants
                .iter()
                .filter_map(|v| v.cosines.iter().find(|(n, _)| n == name).map(|(_, c)| format!("{} min {:.6}", v.name, min_mean(c).0)))
                .collect();
            let among: Vec<String> = report
                .floor_variants
                .iter()
                .filter_map(|v| v.among.iter().find(|(n, _)| n == name).map(|(_, c)| (v, min_mean(c).0)))
                .filter(|(_, m)| m.is_finite())
                .map(|(v, m)| format!("{} vs the later ones min {m:.6}", v.name))
                .collect();
            lines.push(format!(
                "floor `{name}`: lowest cosine between two correct implementations min {min:.6}, mean {mean:.6} (vs the interpreter: {}; among themselves: {})",
                variants.join("; "),
                among.join("; ")
            ));
        }
        for (name, cos) in &report.gpu_vs_variants {
            let each: Vec<String> = report.floor_variants.iter().zip(cos).map(|(v, c)| format!("{} {c:.6}", v.name)).collect();
            lines.push(format!("info: `{name}`: GPU vs each second implementation, lowest row cosine: {}", each.join("; ")));
        }
        lines.push(format!("rule: {}", qfuse::check::PASS_RULE));
        if let Some(f) = &report.vs_fp32 {
            let ((gmin, gmean), (imin, imean)) = (min_mean(&f.gpu), min_mean(&f.interpreter));
            lines.push(format!(
                "info: vs FP32 model: GPU cosine min {gmin:.6} mean {gmean:.6}; interpreter min {imin:.6} mean {imean:.6} (same quantized IR)"
            ));
        }
        lines.push(format!(
            "random inputs: {} runs, {} with NaN/inf{}; {} CUDA graphs captured",
            report.random_runs,
            report.random_nonfinite,
            report.first_nonfinite.as_ref().map(|f| format!(" (first: {f})")).unwrap_or_default(),
            report.graphs_captured
        ));
        lines.push(format!("{} in {:.1} s", if passed { "PASS" } else { "FAIL" }, started.elapsed().as_secs_f64()));
        super::output::print_line(&lines.join("\n"))?;
    }
    if !passed {
        anyhow::bail!("{}: the GPU results do not match the interpreter", args.plan.display());
    }
    Ok(())
}

/// The smallest and the mean of some cosines.
fn min_mean(c: &[f64]) -> (f64, f64) {
    (c.iter().copied().fold(f64::INFINITY, f64::min), c.iter().sum::<f64>() / c.len().max(1) as f64)
}
