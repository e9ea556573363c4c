//! `qfuse compile`: recipe, calibration, fusion, code generation; writes a `.plan` (or the fused IR).

use super::recipe_args::RecipeArgs;
use super::validate;
use anyhow::Context;
use clap::{Args, ValueEnum};
use comfy_table::Table;
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
    /// `mma.sync`: E4M3 converted to f16 tensor-core MMAs, sums close to f32's.
    Exact,
    /// Hopper FP8 wgmma, each k-tile's tensor-core sum promoted into f32 registers.
    #[value(alias = "tensor-core")]
    Promoted,
}

/// The decode attention's math (see `--decode-attention`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DecodeAttention {
    /// Warps over keys, lanes over the head's columns.
    Warp,
    /// One thread per score.
    Thread,
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
    /// Target GPU arch of the CUBINs, sm_75 (Turing) to sm_121a; an unknown value lists them all.
    /// FP8 recipes need sm_89 or newer. [default: the local GPU's, else sm_90a]
    #[arg(long)]
    arch: Option<String>,
    /// Largest batch the plan accepts (at least 1).
    #[arg(long, default_value_t = 64)]
    max_batch: u64,
    /// Largest sequence length the plan accepts, at most the model's `max_position_embeddings`
    /// (default: that limit).
    #[arg(long)]
    max_seq: Option<u64>,
    /// Compile every kernel with NVRTC even if the CUBIN cache has it.
    #[arg(long)]
    no_kernel_cache: bool,
    /// How FP8 GEMMs accumulate: `promoted` (Hopper FP8 wgmma: each 128-deep k-tile summed in
    /// the tensor cores, ~14-bit internal accumulation, then added to f32 registers; about 1.9×
    /// faster; alias `tensor-core`) or `exact` (`mma.sync`: on sm_90 FP8 is converted to f16
    /// tensor-core MMAs, sums close to f32's). `qfuse check` sums as the plan's kernels do either way.
    #[arg(long, value_enum, default_value = "promoted")]
    fp8_accum: Fp8Accum,
    /// Decoders: the decode attention's math: `warp` (warps take a tile's keys, lanes the head's
    /// columns) or `thread` (one thread per score, as before session 14), to time one against
    /// the other.
    #[arg(long, value_enum, default_value = "warp")]
    decode_attention: DecodeAttention,
    /// Decoders: at most this many split-KV ranges per sequence in the decode attention (1: the
    /// unsplit kernel) [default: enough CTAs for two per SM, at most 16].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=16))]
    decode_splits: Option<u32>,
    /// Print everything (recipe, calibration, fusion report, plan statistics) as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Decoders: KV-cache storage (fp8 | int8 | nvfp4 | f16 | bf16; default: the recipe's compute dtype).
    #[arg(long)]
    pub(crate) kv_cache: Option<String>,
    /// Decoders: tokens per KV-cache page (16, 32 or 64).
    #[arg(long, default_value_t = 32)]
    pub(crate) page_size: u32,
    /// Decoders: most prompt tokens per prefill step (longer prompts are prefilled in chunks).
    #[arg(long, default_value_t = 256)]
    pub(crate) max_step: u64,
}

/// Runs `qfuse compile`. Every flag is checked before the import starts; then import,
/// quantization (calibration bar or a spinner), NVRTC (a bar over kernels) and the write.
pub fn run(args: &CompileArgs, quiet: bool, verbose: bool) -> anyhow::Result<()> {
    validate::model_path(&args.model_dir, true)?;
    validate::output_path("-o", &args.output)?;
    if qfuse::import::decoder::is_decoder(&args.model_dir) {
        return compile_decoder(args, quiet);
    }
    let started = std::time::Instant::now();
    let emit = args.emit.unwrap_or(if args.output.extension().is_some_and(|e| e == "ir") { Emit::Ir } else { Emit::Plan });
    validate::at_most("--max-batch", args.max_batch, u32::MAX as u64, "the largest batch a plan can describe")?;
    let recipe = args.recipe.build(args.recipe.recipe.as_deref().unwrap_or("fp8"))?;
    if emit == Emit::Plan {
        if let Some(arch) = &args.arch {
            compile::check_arch(arch, &recipe)?;
        }
    }
    let limit = validate::position_limit(&args.model_dir)?;
    if let Some(seq) = args.max_seq {
        validate::at_most("--max-seq", seq, limit, "the model's position limit (max_position_embeddings in config.json)")?;
    }
    let calib = args.recipe.calib_options(quiet)?;
    let import_opts = ImportOptions { max_batch: args.max_batch, max_seq: args.max_seq, ..ImportOptions::default() };
    let spinner = qfuse::progress::spinner(format!("importing {}", args.model_dir.display()), quiet);
    let model = import::load(&args.model_dir, &import_opts)?;
    spinner.finish_and_clear();
    validate::excludes(&recipe, &validate::matmul_names(&model.graph))?;
    let passes = args.recipe.pass_options();
    let q = super::recipe_args::quantize(&model, &recipe, &calib, &passes, quiet)?;
    let (q, stats) = match emit {
        Emit::Ir => {
            qfuse::util::write_atomic(&args.output, qfuse::ir::print(&q.fused).as_bytes())
                .with_context(|| format!("writing {}", args.output.display()))?;
            (q, None)
        }
        Emit::Plan => {
            let mut opts = CompileOptions::new(recipe);
            opts.calib = calib;
            opts.passes = passes;
            opts.arch = args.arch.clone();
            opts.import = import_opts;
            opts.progress = !quiet;
            if args.no_kernel_cache {
                opts.kernel_cache = None;
            }
            opts.lower.exact_fp8 = args.fp8_accum == Fp8Accum::Exact;
            let mut plan = compile::build(&model, q, &opts)?;
            plan.stats.seconds = started.elapsed().as_secs_f64();
            plan.save(&args.output)?;
            let stats = plan.stats.clone();
            (plan.quantized, Some(stats))
        }
    };
    if args.json {
        let json = serde_json::json!({
            "recipe": q.recipe, "calibration": q.calibration, "report": q.report, "skipped": q.skipped, "plan": stats,
            "algorithms": q.algorithms, "auto": q.auto, "auto_achieved": auto_achieved(&q.auto).map(|(bits, cos)| serde_json::json!({"mean_bits": bits, "min_cosine": cos})),
        });
        return super::output::print_line(&serde_json::to_string_pretty(&json)?).map_err(Into::into);
    }
    super::output::print_line(&describe(&q, verbose))?;
    if let Some(s) = &stats {
        super::output::print_line(&describe_stats(s))?;
    }
    let secs = started.elapsed().as_secs_f64();
    super::output::print_line(&format!("wrote {} ({} nodes) in {secs:.2} s", args.output.display(), q.fused.nodes.len()))?;
    Ok(())
}

/// The KV cache's format as `--kv-cache` spells it for quantized caches (`nvfp4` for E2M1 codes
/// with block-scale slots), else the first slot's dtype.
fn kv_cache_name(d: &qfuse::plan::DecoderMeta) -> Option<String> {
    let first = d.kv.slots.first()?;
    Some(if first.dtype == "f4e2m1" { "nvfp4".into() } else { first.dtype.clone() })
}

/// `qfuse compile` of a decoder: one plan with prefill and decode kernels over a paged KV cache.
fn compile_decoder(args: &CompileArgs, quiet: bool) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    anyhow::ensure!(args.emit != Some(Emit::Ir), "--emit ir: decoders print their IR with `qfuse import --dump-ir` or `--dump-ir-after`");
    let kv_cache = match &args.kv_cache {
        Some(name) => Some(qfuse::import::decoder::KvFormat::parse_storage(name).map_err(|e| anyhow::anyhow!("--kv-cache: {e}"))?),
        None => None,
    };
    let d = compile::DecoderPlanOptions {
        kv_cache,
        max_seq: args.max_seq,
        max_batch: args.max_batch,
        max_step: args.max_step,
        page_size: args.page_size,
    };
    d.check()?;
    let recipe = args.recipe.build(args.recipe.recipe.as_deref().unwrap_or("fp8"))?;
    if let Some(arch) = &args.arch {
        compile::check_arch(arch, &recipe)?;
    }
    let mut opts = CompileOptions::new(recipe);
    opts.calib = args.recipe.decoder_calib_options(quiet)?;
    opts.passes = args.recipe.pass_options();
    opts.arch = args.arch.clone();
    opts.progress = !quiet;
    if args.no_kernel_cache {
        opts.kernel_cache = None;
    }
    opts.lower.exact_fp8 = args.fp8_accum == Fp8Accum::Exact;
    opts.lower.warp_decode = args.decode_attention == DecodeAttention::Warp;
    opts.lower.decode_splits = args.decode_splits;
    let plan = compile::compile_decoder(&args.model_dir, &opts, &d)?;
    plan.save(&args.output)?;
    let stats = plan.stats.clone();
    if args.json {
        let json = serde_json::json!({"recipe": plan.quantized.recipe, "plan": stats, "decoder": plan.meta().decoder.as_ref().map(|d| serde_json::json!({
            "max_seq": d.max_seq, "max_batch": d.max_batch, "max_step_tokens": d.max_step_tokens, "page_size": d.kv.page_size,
            "kv_cache": kv_cache_name(d), "layers": d.kv.slots.iter().filter(|s| s.input.starts_with("past.k.")).count(), "vocab": d.vocab}))});
        return super::output::print_line(&serde_json::to_string_pretty(&json)?).map_err(Into::into);
    }
    super::output::print_line(&describe_stats(&stats))?;
    if let Some(d) = &plan.meta().decoder {
        let kv = kv_cache_name(d).unwrap_or_else(|| "-".into());
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

/// What quantization did: the calibration line, the Q/DQ counts, what stayed in high precision,
/// the weight algorithms and the `auto` choice. Short by default (one line per stage, lists cut
/// to a few entries); `verbose` adds the full fusion report, one line per weight-algorithm group
/// and the full `auto` table.
pub fn describe(q: &Quantized, verbose: bool) -> String {
    let mut lines = vec![];
    if let Some(c) = &q.calibration {
        let took = if c.cached { "statistics from the calibration cache".to_string() } else { format!("{:.2} s", c.seconds) };
        lines.push(format!("calibration: {} over {} samples, {} tensors, {took}", c.method, c.samples, c.tensors));
    }
    if verbose {
        lines.push(fusion_table(&q.report).to_string());
    }
    let counts = |f: fn(&Outcome) -> bool| q.report.iter().filter(|e| f(&e.outcome)).count();
    lines.push(format!(
        "Q/DQ: {} fused, {} folded offline, {} standalone{}",
        counts(|o| matches!(o, Outcome::Fused { .. })),
        counts(|o| matches!(o, Outcome::Folded { .. })),
        counts(|o| matches!(o, Outcome::Standalone { .. })),
        if verbose { "" } else { " (--verbose or --json: the full fusion report)" },
    ));
    let standalone: Vec<String> = q
        .report
        .iter()
        .filter_map(|e| match &e.outcome {
            Outcome::Standalone { reason } => Some(format!("standalone: {}: {reason}", e.qdq)),
            _ => None,
        })
        .collect();
    lines.extend(first_few(standalone, verbose));
    lines.extend(first_few(q.skipped.iter().map(|(site, why)| format!("not quantized: {site}: {why}")).collect(), verbose));
    if verbose {
        lines.extend(q.algorithms.iter().map(|(sites, what)| format!("{what}: {sites}")));
    } else if let Some(line) = algorithms_summary(&q.algorithms) {
        lines.push(line);
    }
    if !q.auto.is_empty() {
        if verbose {
            lines.push(auto_table(&q.auto).to_string());
        } else {
            lines.push(auto_summary(&q.auto));
        }
        if let Some(line) = achieved_line(&q.auto, q.recipe.auto) {
            lines.push(line);
        }
    }
    lines.join("\n")
}

/// At most five lines unless `all`, then a count of the rest.
fn first_few(mut lines: Vec<String>, all: bool) -> Vec<String> {
    const FEW: usize = 5;
    if !all && lines.len() > FEW {
        let rest = lines.len() - FEW;
        lines.truncate(FEW);
        lines.push(format!("… and {rest} more (--verbose lists them all)"));
    }
    lines
}

/// One line for the weight algorithms: how many activation groups each algorithm handled.
pub fn algorithms_summary(algorithms: &[(String, String)]) -> Option<String> {
    let mut by_algo: Vec<(&str, usize)> = vec![];
    for (_, what) in algorithms {
        let name = what.split_whitespace().next().unwrap_or(what);
        match by_algo.iter_mut().find(|(n, _)| *n == name) {
            Some(e) => e.1 += 1,
            None => by_algo.push((name, 1)),
        }
    }
    if by_algo.is_empty() {
        return None;
    }
    let parts: Vec<String> = by_algo.iter().map(|(n, c)| format!("{n} on {c} group(s) of matmuls")).collect();
    Some(format!("weight algorithms: {} (--verbose or --json: per group)", parts.join(", ")))
}

/// `--recipe auto` in one line: how many matmuls took each format.
fn auto_summary(choices: &[quant::auto::LayerChoice]) -> String {
    let mut by_format: Vec<(&str, usize)> = vec![];
    for c in choices {
        match by_format.iter_mut().find(|(n, _)| *n == c.name()) {
            Some(e) => e.1 += 1,
            None => by_format.push((c.name(), 1)),
        }
    }
    let parts: Vec<String> = by_format.iter().map(|(n, k)| format!("{n} × {k}")).collect();
    format!("auto: {} matmuls: {} (--verbose: every candidate's score)", choices.len(), parts.join(", "))
}

/// `auto` achieved: mean weight bits and the lowest chosen cosine, against the target.
pub fn achieved_line(choices: &[quant::auto::LayerChoice], target: Option<quant::recipe::AutoTarget>) -> Option<String> {
    let (mean_bits, min_cosine) = auto_achieved(choices)?;
    let target = match target {
        Some(quant::recipe::AutoTarget::MinCosine(c)) => format!("target: cosine ≥ {c}"),
        Some(quant::recipe::AutoTarget::Budget(b)) => format!("target: ≤ {b} bits"),
        None => String::new(),
    };
    Some(format!("auto achieved: {:.2} mean weight bits per element, lowest matmul output cosine {:.5} ({target})", mean_bits, min_cosine))
}

/// What `auto` achieved: the mean weight bits per element (weighted by the matmuls' weight
/// elements) and the lowest output cosine among the chosen formats; `None` without choices.
pub fn auto_achieved(choices: &[quant::auto::LayerChoice]) -> Option<(f64, f64)> {
    let elements: u64 = choices.iter().map(|c| c.elements).sum();
    if choices.is_empty() || elements == 0 {
        return None;
    }
    let bits: f64 = choices.iter().map(|c| c.scores[c.chosen].1 * c.elements as f64).sum();
    let min_cosine = choices.iter().map(|c| c.scores[c.chosen].2).fold(f64::INFINITY, f64::min);
    Some((bits / elements as f64, min_cosine))
}

/// `--recipe auto`: each matmul's candidates (weight bits, output cosine) and the choice, with
/// short column heads so that the table fits a 120-column terminal.
pub fn auto_table(choices: &[quant::auto::LayerChoice]) -> Table {
    let mut t = super::output::table();
    let mut header = vec!["matmul".to_string(), "chosen".to_string()];
    header.extend(choices.first().map_or(vec![], |c| c.scores.iter().map(|(n, bits, _)| format!("{n}\n{bits:.2} b")).collect()));
    t.set_header(header);
    for c in choices {
        let mut row = vec![c.site.strip_prefix("encoder.").unwrap_or(&c.site).to_string(), c.name().to_string()];
        row.extend(c.scores.iter().map(|(_, _, cos)| format!("{cos:.5}")));
        t.add_row(row);
    }
    t
}

fn fusion_table(entries: &[Entry]) -> Table {
    let mut t = super::output::table();
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
