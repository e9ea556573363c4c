//! `qfuse eval` on a decoder: perplexity and KL divergence per recipe against the unquantized
//! model on a real English text (llama.cpp's chunking), as one table or JSON.

use super::eval::EvalArgs;
use anyhow::Context;
use comfy_table::Table;
use qfuse::generate::eval::{self, DecoderReport};
use qfuse::import::decoder::{self, DecoderOptions, KvFormat};
use qfuse::quant::{self, recipe::DECODER_TABLE_RECIPES};

/// The evaluation text when `--eval-file` is not given: the GNU GPL v3 as Debian ships it (real
/// English prose, never part of the calibration set).
pub(crate) const DEFAULT_TEXT: &str = "/usr/share/common-licenses/GPL-3";

/// Runs the decoder evaluation.
pub fn run(args: &EvalArgs, quiet: bool) -> anyhow::Result<()> {
    anyhow::ensure!(args.ctx >= 16, "--ctx {}: chunks need at least 16 tokens (half of each chunk is scored)", args.ctx);
    anyhow::ensure!(args.chunks >= 1, "--chunks 0: score at least one chunk");
    let ctx = args.ctx;
    if let Some(kv) = &args.kv_cache {
        KvFormat::parse_storage(kv).map_err(|e| anyhow::anyhow!("--kv-cache {kv}: {e}"))?;
    }
    let names: Vec<String> = match args.recipe.recipe.as_deref() {
        Some("all") => DECODER_TABLE_RECIPES.iter().map(|r| r.to_string()).collect(),
        Some(r) => vec![r.to_string()],
        None => vec!["fp8".into()],
    };
    let recipes = names.iter().map(|n| args.recipe.build(n)).collect::<anyhow::Result<Vec<_>>>()?;
    let spinner = qfuse::progress::spinner(format!("loading {}", args.model_dir.display()), quiet);
    let opts = DecoderOptions {
        max_batch: 1,
        max_seq: Some(ctx as u64),
        kv: KvFormat::Float(qfuse::ir::DType::F32),
        max_step: None,
        ..Default::default()
    };
    let mut model = decoder::load(&args.model_dir, &opts)?;
    spinner.finish_and_clear();
    let limit = model.config.max_position_embeddings;
    super::validate::at_most("--ctx", ctx as u64, limit, "the model's position limit")?;
    if let Some(r) = recipes.first() {
        super::validate::excludes(r, &super::validate::matmul_names(&model.graph))?;
    }
    let path = args.eval_file.clone().unwrap_or_else(|| DEFAULT_TEXT.into());
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: the evaluation text", path.display()))?;
    let tok = model.tokenizer.as_ref().context("the model has no tokenizer")?;
    let tokens = tok.encode(&text)?;
    let chunks = eval::chunks(&tokens, ctx, args.chunks);
    anyhow::ensure!(!chunks.is_empty(), "{}: {} tokens make no chunk of --ctx {ctx}", path.display(), tokens.len());
    let bar = qfuse::progress::bar((chunks.len() * (1 + names.len())) as u64, "chunks scored", "fp32 reference", quiet);
    let reference = eval::score(&model.graph, &model.weights, &chunks, &|| bar.inc(1)).map_err(anyhow::Error::msg)?;
    let mut reports = vec![eval::compare("fp32", &reference, &reference)];
    let mut layers: Vec<Vec<quant::eval::LayerMetrics>> = vec![vec![]];
    // Per-layer SNR over the first chunk's first 256 tokens (every site's output is kept in memory).
    let snr_ids: Vec<u32> = chunks[0].iter().take(256).copied().collect();
    let calib = args.recipe.decoder_calib_options(true)?;
    if let Some(kv) = &args.kv_cache {
        let storage = KvFormat::parse_storage(kv).map_err(|e| anyhow::anyhow!("--kv-cache: {e}"))?;
        bar.suspend(|| decoder::set_kv_cache(&mut model, storage, &calib.sentences, quiet))?;
    }
    for (name, recipe) in names.iter().zip(recipes) {
        bar.set_message(name.clone());
        let recipe = decoder::decoder_recipe(recipe);
        let q = quant::quantize(&model, &recipe, &calib, &args.recipe.pass_options())?;
        let scored = eval::score(&q.fused, &model.weights, &chunks, &|| bar.inc(1)).map_err(anyhow::Error::msg)?;
        let run = model.step_inputs(&snr_ids)?;
        layers.push(quant::eval::layer_metrics(&model, &q, std::slice::from_ref(&run))?);
        let label = match &args.kv_cache {
            Some(kv) => format!("{name} + {kv} KV"),
            None => name.clone(),
        };
        reports.push(eval::compare(&label, &reference, &scored));
    }
    bar.finish_and_clear();
    if args.json {
        let recipes: Vec<_> = reports.iter().zip(&layers).map(|(r, l)| serde_json::json!({"report": r, "layers": l})).collect();
        let doc = serde_json::json!({"text": path, "ctx": ctx, "chunks": chunks.len(), "recipes": recipes});
        return super::output::print_line(&serde_json::to_string_pretty(&doc)?).map_err(Into::into);
    }
    super::output::print_line(&table(&reports, &layers).to_string())?;
    let scored = reports.first().map_or(0, |r| r.positions);
    super::output::print_line(&format!(
        "{} chunks of {ctx} tokens from {}, {scored} positions scored (second half of each chunk); KL(FP32 ‖ recipe) in nats",
        chunks.len(),
        path.display()
    ))?;
    Ok(())
}

fn table(reports: &[DecoderReport], layers: &[Vec<quant::eval::LayerMetrics>]) -> Table {
    let mut t = super::output::table();
    t.set_header(["recipe", "PPL", "ΔPPL", "mean KL", "p99 KL", "same top", "worst matmul (SNR dB)"]);
    for (r, l) in reports.iter().zip(layers) {
        let worst = l.first().map_or(String::new(), |w| format!("{} ({:.1})", w.name, w.snr_db));
        t.add_row([
            r.recipe.clone(),
            format!("{:.4}", r.perplexity),
            format!("{:+.4}", r.delta_perplexity),
            format!("{:.5}", r.mean_kl),
            format!("{:.4}", r.p99_kl),
            format!("{:.2} %", 100.0 * r.same_top),
            worst,
        ]);
    }
    t
}
