//! `qfuse compile`: recipe, calibration and fusion; writes the fused IR.

use super::recipe_args::RecipeArgs;
use anyhow::Context;
use clap::{Args, ValueEnum};
use comfy_table::{presets, Table};
use qfuse::import::{self, ImportOptions};
use qfuse::passes::report::{Entry, Outcome};
use qfuse::quant::{self, Quantized};
use std::path::PathBuf;

/// What `compile` writes.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Emit {
    /// The fused IR text.
    Ir,
}

/// Arguments of `qfuse compile`.
#[derive(Args)]
pub struct CompileArgs {
    /// Hugging Face model folder.
    model_dir: PathBuf,
    #[command(flatten)]
    recipe: RecipeArgs,
    /// Output kind.
    #[arg(long, value_enum, default_value = "ir")]
    emit: Emit,
    /// Output file.
    #[arg(short, long)]
    output: PathBuf,
    /// Print the fusion report as JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `qfuse compile`.
pub fn run(args: &CompileArgs, quiet: bool) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let model = import::load(&args.model_dir, &ImportOptions::default())?;
    let recipe = args.recipe.build(args.recipe.recipe.as_deref().unwrap_or("fp8"))?;
    let q = quant::quantize(&model, &recipe, &args.recipe.calib_options(quiet)?, &args.recipe.pass_options())?;
    match args.emit {
        Emit::Ir => qfuse::util::write_atomic(&args.output, qfuse::ir::print(&q.fused).as_bytes())
            .with_context(|| format!("writing {}", args.output.display()))?,
    }
    if args.json {
        let json = serde_json::json!({"recipe": q.recipe, "calibration": q.calibration, "report": q.report, "skipped": q.skipped});
        return super::output::print_line(&serde_json::to_string_pretty(&json)?).map_err(Into::into);
    }
    super::output::print_line(&describe(&q))?;
    let secs = started.elapsed().as_secs_f64();
    super::output::print_line(&format!("wrote {} ({} nodes) in {secs:.2} s", args.output.display(), q.fused.nodes.len()))?;
    Ok(())
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
    out
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
