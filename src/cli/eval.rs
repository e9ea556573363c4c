//! `qfuse eval`: accuracy of a recipe against FP32 on held-out texts.

use super::recipe_args::RecipeArgs;
use clap::Args;
use qfuse::import::{self, ImportOptions};
use qfuse::quant::recipe::RECIPES;
use qfuse::quant::{calib, eval};
use std::path::PathBuf;

/// Arguments of `qfuse eval`.
#[derive(Args)]
pub struct EvalArgs {
    /// Hugging Face model folder, or a decoder (`.gguf` file or Llama/Mistral/Qwen2 folder).
    pub model_dir: PathBuf,
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Held-out texts, one per line (default: the built-in evaluation set, disjoint from calibration);
    /// for decoders one text, scored in chunks (default: /usr/share/common-licenses/GPL-3).
    #[arg(long)]
    pub eval_file: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Show only the N layers with the lowest SNR (0: the 10 weakest, or all with --verbose).
    #[arg(long, default_value_t = 0)]
    pub worst: usize,
    /// With `--recipe all`: do not compile plans (the plan size column stays empty).
    #[arg(long)]
    pub no_plan: bool,
    /// With `--recipe all`: keep each recipe's plan in this folder (default: measured, then removed).
    #[arg(long)]
    pub plans_dir: Option<PathBuf>,
    /// Decoders: tokens per chunk (llama.cpp's `-c`; the second half of each chunk is scored).
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Decoders: most chunks of the evaluation text to score.
    #[arg(long, default_value_t = 4)]
    pub chunks: usize,
    /// Decoders: KV-cache storage of the quantized runs (fp8 | int8 | nvfp4 | f16 | bf16).
    #[arg(long)]
    pub kv_cache: Option<String>,
}

/// Runs `qfuse eval`: flags are checked first, then the model imported (a spinner), quantized
/// (calibration bar or spinner) and evaluated (a bar over batches of texts).
pub fn run(args: &EvalArgs, quiet: bool, verbose: bool) -> anyhow::Result<()> {
    super::validate::model_path(&args.model_dir, true)?;
    if let Some(name) = args.recipe.recipe.as_deref().filter(|n| *n != "all" && !RECIPES.contains(n)) {
        anyhow::bail!("--recipe {name}: unknown recipe; eval takes {}, or all (every fixed recipe in one table)", RECIPES.join(", "));
    }
    if let Some(dir) = &args.plans_dir {
        anyhow::ensure!(dir.is_dir(), "--plans-dir {}: no such folder; create it first", dir.display());
    }
    if qfuse::import::decoder::is_decoder(&args.model_dir) {
        return super::eval_decoder::run(args, quiet);
    }
    let all = args.recipe.recipe.as_deref() == Some("all");
    let recipe = if all { None } else { Some(args.recipe.build(args.recipe.recipe.as_deref().unwrap_or("fp8"))?) };
    let calib_opts = args.recipe.calib_options(quiet)?;
    let spinner = qfuse::progress::spinner(format!("importing {}", args.model_dir.display()), quiet);
    let model = import::load(&args.model_dir, &ImportOptions::default())?;
    spinner.finish_and_clear();
    let probe = args.recipe.build(recipe.as_ref().map_or("fp8", |r| r.name.as_str()))?;
    super::validate::excludes(&probe, &super::validate::matmul_names(&model.graph))?;
    let texts = match &args.eval_file {
        Some(p) => calib::read_sentences(p).map_err(anyhow::Error::msg)?,
        None => calib::default_eval_sentences(),
    };
    let overlap = texts.iter().filter(|t| calib_opts.sentences.contains(t)).count();
    anyhow::ensure!(overlap == 0, "{overlap} evaluation text(s) are also calibration samples: evaluate on held-out texts");
    let Some(recipe) = recipe else { return super::eval_table::run(args, &model, &texts, quiet) };
    let q = super::recipe_args::quantize(&model, &recipe, &calib_opts, &args.recipe.pass_options(), quiet)?;
    let spinner = qfuse::progress::spinner(format!("evaluating {} on {} held-out texts", recipe.name, texts.len()), quiet);
    let report = eval::evaluate(&model, &q, &texts, 16)?;
    spinner.finish_and_clear();
    if args.json {
        let json = serde_json::json!({"eval": report, "calibration": q.calibration, "skipped": q.skipped,
            "algorithms": q.algorithms, "auto": q.auto});
        return super::output::print_line(&serde_json::to_string_pretty(&json)?).map_err(Into::into);
    }
    // Without --worst, the table lists the 10 weakest layers unless --verbose asks for all.
    let worst = if args.worst == 0 && !verbose { 10 } else { args.worst };
    super::output::print_line(&render(&report, worst))?;
    if verbose {
        for (sites, what) in &q.algorithms {
            super::output::print_line(&format!("{what}: {sites}"))?;
        }
    } else if let Some(line) = super::compile::algorithms_summary(&q.algorithms) {
        super::output::print_line(&line)?;
    }
    if !q.auto.is_empty() {
        if verbose {
            super::output::print_line(&super::compile::auto_table(&q.auto).to_string())?;
        }
        if let Some(line) = super::compile::achieved_line(&q.auto, q.recipe.auto) {
            super::output::print_line(&line)?;
        }
    }
    Ok(())
}

/// The per-layer table and the model summary.
pub fn render(r: &eval::EvalReport, worst: usize) -> String {
    let mut layers = r.layers.clone();
    if worst > 0 {
        layers.sort_by(|a, b| a.snr_db.total_cmp(&b.snr_db));
        layers.truncate(worst);
    }
    let mut t = super::output::table();
    t.set_header(["matmul", "SNR dB", "cosine", "rel. error"]);
    for l in &layers {
        t.add_row([l.name.clone(), format!("{:.1}", l.snr_db), format!("{:.6}", l.cosine), format!("{:.4}", l.rel_error)]);
    }
    let worst_layer = r.layers.iter().min_by(|a, b| a.snr_db.total_cmp(&b.snr_db));
    let shown = if layers.len() < r.layers.len() {
        format!("the {} weakest of {} matmuls (--worst N, or --verbose for all)\n", layers.len(), r.layers.len())
    } else {
        String::new()
    };
    format!(
        "{t}\n{shown}recipe {}: {} held-out texts, embedding cosine to FP32 mean {:.6}, min {:.6}; nearest neighbour changed for {}/{}{}",
        r.recipe,
        r.texts,
        r.embedding_cosine_mean,
        r.embedding_cosine_min,
        r.neighbour_changes,
        r.texts,
        worst_layer.map_or(String::new(), |l| format!("; worst layer {} at {:.1} dB", l.name, l.snr_db)),
    )
}
