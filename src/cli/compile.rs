//! `qfuse compile`: recipe, calibration, fusion, code generation; writes a `.plan` (or the fused IR).

use super::recipe_args::RecipeArgs;
use anyhow::Context;
use clap::{Args, ValueEnum};
use comfy_table::{presets, Table};
use qfuse::compile::{self, CompileOptions, CompileStats};
use qfuse::import::{self, ImportOptions};
use qfuse::passes::report::{Entry, Outcome};
use qfuse::quant::{self, Quantized};
use std::path::PathBuf;

/// What `compile` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Emit {
    /// A `.plan` for the runtime (kernels, weights, schedule).
    Plan,
    /// The fused IR text.
    Ir,
}

/// FP8 GEMM accumulation (see `--fp8-accum`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Fp8Accum {
    /// Exact f32 sums.
    Exact,
    /// Hopper FP8 tensor-core accumulation.
    TensorCore,
}

/// Arguments of `qfuse compile`.
#[derive(Args)]
pub struct CompileArgs {
    /// Hugging Face model folder.
    model_dir: PathBuf,
    #[command(flatten)]
    recipe: RecipeArgs,
    /// Output kind (default: `ir` when the output ends in `.ir`, else `plan`).
    #[arg(long, value_enum)]
    emit: Option<Emit>,
    /// Output file.
    #[arg(short, long)]
    output: PathBuf,
    /// Target GPU arch of the CUBINs (default: the local GPU's, else sm_90a).
    #[arg(long)]
    arch: Option<String>,
    /// Largest batch the plan accepts.
    #[arg(long, default_value_t = 64)]
    max_batch: u64,
    /// Largest sequence length the plan accepts (default: the model's position table).
    #[arg(long)]
    max_seq: Option<u64>,
    /// Compile every kernel with NVRTC even if the CUBIN cache has it.
    #[arg(long)]
    no_kernel_cache: bool,
    /// How FP8 GEMMs accumulate: `exact` (f32 sums that match the interpreter; on sm_90 FP8 is
    /// converted to f16 tensor-core MMAs) or `tensor-core` (Hopper FP8 wgmma: faster on large
    /// GEMMs, ~14-bit internal accumulation like cuBLASLt's).
    #[arg(long, value_enum, default_value = "exact")]
    fp8_accum: Fp8Accum,
    /// Print the fusion report as JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Decoders: KV-cache storage (fp8 | int8 | f16 | bf16; default: the recipe's compute dtype).
    #[arg(long)]
    pub(crate) kv_cache: Option<String>,
    /// Decoders: tokens per KV-cache page (16, 32 or 64).
    #[arg(long, default_value_t = 32)]
    pub(crate) page_size: u32,
    /// Decoders: most prompt tokens per prefill step (longer prompts are prefilled in chunks).
    #[arg(long, default_value_t = 256)]
    pub(crate) max_step: u64,
}

/// Runs `qfuse compile`.
pub fn run(args: &CompileArgs, quiet: bool) -> anyhow::Result<()> {
    if qfuse::import::decoder::is_decoder(&args.model_dir) {
        return compile_decoder(args, quiet);
    }
    let started = std::time::Instant::now();
    let emit = args.emit.unwrap_or(if args.output.extension().is_some_and(|e| e == "ir") { Emit::Ir } else { Emit::Plan });
    let import_opts = ImportOptions { max_batch: args.max_batch, max_seq: args.max_seq, ..ImportOptions::default() };
    let recipe = args.recipe.build(args.recipe.recipe.as_deref().unwrap_or("fp8"))?;
    let calib = args.recipe.calib_options(quiet)?;
    let (q, stats) = match emit {
        Emit::Ir => {
            let model = import::load(&args.model_dir, &import_opts)?;
            let q = quant::quantize(&model, &recipe, &calib, &args.recipe.pass_options())?;
            qfuse::util::write_atomic(&args.output, qfuse::ir::print(&q.fused).as_bytes())
                .with_context(|| format!("writing {}", args.output.display()))?;
            (q, None)
        }
        Emit::Plan => {
            let mut opts = CompileOptions::new(recipe);
            opts.calib = calib;
            opts.passes = args.recipe.pass_options();
            opts.arch = args.arch.clone();
            opts.import = import_opts;
            if args.no_kernel_cache {
                opts.kernel_cache = None;
            }
            opts.lower.exact_fp8 = args.fp8_accum == Fp8Accum::Exact;
            let plan = compile::compile(&args.model_dir, &opts)?;
            plan.save(&args.output)?;
            let stats = plan.stats.clone();
            (plan.quantized, Some(stats))
        }
    };
    if args.json {
        let json = serde_json::json!({
            "recipe": q.recipe, "calibration": q.calibration, "report": q.report, "skipped": q.skipped, "plan": stats,
            "algorithms": q.algorithms, "auto": q.auto,
        });
        return super::output::print_line(&serde_json::to_string_pretty(&json)?).map_err(Into::into);
    }
    super::output::print_line(&describe(&q))?;
    if let Some(s) = &stats {
        super::output::print_line(&describe_stats(s))?;
    }
    let secs = started.elapsed().as_secs_f64();
    super::output::print_line(&format!("wrote {} ({} nodes) in {secs:.2} s", args.output.display(), q.fused.nodes.len()))?;
    Ok(())
}

/// `qfuse compile` of a decoder: one plan with prefill and decode kernels over a paged KV cache.
fn compile_decoder(args: &CompileArgs, quiet: bool) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    anyhow::ensure!(args.emit != Some(Emit::Ir), "--emit ir: decoders print their IR with `qfuse import --dump-ir` or `--dump-ir-after`");
    let kv_cache = match &args.kv_cache {
        Some(name) => Some(qfuse::import::decoder::KvFormat::parse_storage(name).map_err(|e| anyhow::anyhow!("--kv-cache: {e}"))?),
        None => None,
    };
    let d = compile::DecoderPlanOptions { kv_cache, max_seq: args.max_seq, max_batch: args.max_batch, max_step: args.max_step, page_size: args.page_size };
    d.check()?;
    let recipe = args.recipe.build(args.recipe.recipe.as_deref().unwrap_or("fp8"))?;
    let mut opts = CompileOptions::new(recipe);
    opts.calib = args.recipe.decoder_calib_options(quiet)?;
    opts.passes = args.recipe.pass_options();
    opts.arch = args.arch.clone();
    if args.no_kernel_cache {
        opts.kernel_cache = None;
    }
    opts.lower.exact_fp8 = args.fp8_accum == Fp8Accum::Exact;
    let plan = compile::compile_decoder(&args.model_dir, &opts, &d)?;
    plan.save(&args.output)?;
    let stats = plan.stats.clone();
    if args.json {
        let json = serde_json::json!({"recipe": plan.quantized.recipe, "plan": stats, "decoder": plan.meta().decoder.as_ref().map(|d| serde_json::json!({
            "max_seq": d.max_seq, "max_batch": d.max_batch, "max_step_tokens": d.max_step_tokens, "page_size": d.kv.page_size,
            "kv_cache": d.kv.slots.first().map(|s| s.dtype.clone()), "layers": d.kv.slots.len() / 2, "vocab": d.vocab}))});
        return super::output::print_line(&serde_json::to_string_pretty(&json)?).map_err(Into::into);
    }
    super::output::print_line(&describe_stats(&stats))?;
    if let Some(d) = &plan.meta().decoder {
        let kv = d.kv.slots.first().map_or("-", |s| s.dtype.as_str());
        super::output::print_line(&format!(
            "decoder: context {} tokens, batch ≤ {}, prefill chunks of ≤ {} tokens, KV cache {kv} in pages of {} tokens",
            d.max_seq, d.max_batch, d.max_step_tokens, d.kv.page_size
        ))?;
    }
    let secs = started.elapsed().as_secs_f64();
    super::output::print_line(&format!("wrote {} in {secs:.2} s", args.output.display()))?;
    Ok(())
}

/// One paragraph on what code generation did.
fn describe_stats(s: &CompileStats) -> String {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    format!(
        "plan: {} kernels ({} compiled, {} cached, NVRTC {:.2} s) for {}, {} launches per run, \
         weights {:.1} MiB, activation arena {:.1} MiB at the largest shapes ({:.1} MiB without reuse)",
        s.kernels,
        s.compiled,
        s.cached,
        s.nvrtc_seconds,
        s.arch,
        s.launches,
        mib(s.weight_bytes),
        mib(s.peak_activation_bytes),
        mib(s.unshared_activation_bytes),
    )
}

/// The calibration line and the fusion report as a table.
pub fn describe(q: &Quantized) -> String {
    let mut out = String::new();
    if let Some(c) = &q.calibration {
        out += &format!("calibration: {} over {} samples, {} tensors, {:.2} s\n", c.method, c.samples, c.tensors, c.seconds);
    }
    out += &fusion_table(&q.report).to_string();
    let counts = |f: fn(&Outcome) -> bool| q.report.iter().filter(|e| f(&e.outcome)).count();
    out += &format!(
        "\nQ/DQ: {} fused, {} folded offline, {} standalone",
        counts(|o| matches!(o, Outcome::Fused { .. })),
        counts(|o| matches!(o, Outcome::Folded { .. })),
        counts(|o| matches!(o, Outcome::Standalone { .. })),
    );
    for (site, why) in &q.skipped {
        out += &format!("\nnot quantized: {site}: {why}");
    }
    for (sites, what) in &q.algorithms {
        out += &format!("\n{what}: {sites}");
    }
    if !q.auto.is_empty() {
        out += &format!("\n{}", auto_table(&q.auto));
    }
    out
}

/// `--recipe auto`: each matmul's candidates (weight bits, output cosine) and the choice.
pub fn auto_table(choices: &[quant::auto::LayerChoice]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::UTF8_FULL_CONDENSED);
    let mut header = vec!["matmul".to_string(), "chosen".to_string()];
    header.extend(choices.first().map_or(vec![], |c| c.scores.iter().map(|(n, bits, _)| format!("{n} ({bits:.2} b)")).collect()));
    t.set_header(header);
    for c in choices {
        let mut row = vec![c.site.clone(), c.name().to_string()];
        row.extend(c.scores.iter().map(|(_, _, cos)| format!("{cos:.5}")));
        t.add_row(row);
    }
    t
}

fn fusion_table(entries: &[Entry]) -> Table {
    let mut t = Table::new();
    t.load_style(presets::UTF8_FULL_CONDENSED);
    t.set_header(["Q/DQ", "outcome", "detail"]);
    for e in entries {
        let (what, detail) = match &e.outcome {
            Outcome::Fused { into, node } => ("fused", format!("into {into} {node}")),
            Outcome::Folded { how } => ("folded", how.clone()),
            Outcome::Standalone { reason } => ("STANDALONE", reason.clone()),
        };
        t.add_row([e.qdq.clone(), what.to_string(), detail]);
    }
    t
}
