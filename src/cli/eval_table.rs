//! `qfuse eval <model> --recipe all`: every recipe on the same held-out texts, in one table —
//! embedding cosine to FP32 (mean, min), the worst matmul's SNR, the weights' bytes as the
//! recipe stores them, and the size of the `.plan` it compiles to.

use super::eval::EvalArgs;
use qfuse::compile::{self, CompileOptions};
use qfuse::import::Model;
use qfuse::quant::{self, eval, recipe::TABLE_RECIPES};
use serde::Serialize;
use std::path::PathBuf;

/// One row of the table.
#[derive(Serialize)]
struct Row {
    recipe: String,
    cosine_mean: f64,
    cosine_min: f64,
    worst_layer: Option<(String, f64)>,
    weight_bytes: u64,
    plan_bytes: Option<u64>,
    plan_error: Option<String>,
    target: Option<Target>,
    algorithms: Vec<(String, String)>,
}

/// The accuracy the recipe is expected to reach on all-MiniLM-L6-v2 (mean embedding cosine).
#[derive(Serialize, Clone, Copy)]
struct Target {
    min_mean_cosine: f64,
    met: bool,
}

/// Mean-cosine targets per recipe (the recipe book's acceptance targets on all-MiniLM-L6-v2;
/// AWQ and GPTQ must also beat RTN, which the table's last lines state).
fn target_for(recipe: &str) -> Option<f64> {
    Some(match recipe {
        "int8-sq" => 0.995,
        "w8a16" => 0.9995,
        "w4a16-awq" | "w4a16-gptq" => 0.99,
        "nvfp4" => 0.98,
        _ => return None,
    })
}

/// Runs every recipe of [`TABLE_RECIPES`] and prints the table (or JSON).
pub fn run(args: &EvalArgs, model: &Model, texts: &[String], quiet: bool) -> anyhow::Result<()> {
    let mut rows = vec![];
    let recipes: Vec<_> = TABLE_RECIPES.iter().map(|name| args.recipe.build(name).map(|r| (*name, r))).collect::<Result<_, _>>()?;
    let calib = args.recipe.calib_options(true)?;
    let bar = qfuse::progress::bar(recipes.len() as u64, "recipes", "eval --recipe all", quiet);
    for (name, recipe) in recipes {
        bar.set_message(format!("eval --recipe all: {name}"));
        let started = std::time::Instant::now();
        let q = quant::quantize(model, &recipe, &calib, &args.recipe.pass_options())?;
        let report = eval::evaluate(model, &q, texts, 16)?;
        let weight_bytes = eval::weight_bytes(model, &q);
        let algorithms = q.algorithms.clone();
        let (plan_bytes, plan_error) = if args.no_plan { (None, None) } else { plan_size(model, q, name, args.plans_dir.as_ref()) };
        let worst = report.layers.iter().min_by(|a, b| a.snr_db.total_cmp(&b.snr_db)).map(|l| (l.name.clone(), l.snr_db));
        let target = target_for(name).map(|t| Target { min_mean_cosine: t, met: report.embedding_cosine_mean >= t });
        tracing::info!(recipe = name, seconds = started.elapsed().as_secs_f64(), "evaluated");
        rows.push(Row {
            recipe: name.to_string(),
            cosine_mean: report.embedding_cosine_mean,
            cosine_min: report.embedding_cosine_min,
            worst_layer: worst,
            weight_bytes,
            plan_bytes,
            plan_error,
            target,
            algorithms,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    let out = if args.json { serde_json::to_string_pretty(&rows)? } else { render(&rows, texts.len()) };
    super::output::print_line(&out)?;
    Ok(())
}

/// Compiles `q` to a plan and measures the file; the reason instead when it does not compile.
fn plan_size(model: &Model, q: quant::Quantized, name: &str, keep: Option<&PathBuf>) -> (Option<u64>, Option<String>) {
    let opts = CompileOptions::new(q.recipe.clone());
    let plan = match compile::build(model, q, &opts) {
        Ok(p) => p,
        Err(e) => return (None, Some(e.to_string())),
    };
    let path = match keep {
        Some(dir) => dir.join(format!("{name}.plan")),
        None => std::env::temp_dir().join(format!("qfuse-eval-{}-{name}.plan", std::process::id())),
    };
    let size =
        plan.save(&path).map_err(|e| e.to_string()).and_then(|()| std::fs::metadata(&path).map(|m| m.len()).map_err(|e| e.to_string()));
    if keep.is_none() {
        let _ = std::fs::remove_file(&path);
    }
    match size {
        Ok(n) => (Some(n), None),
        Err(e) => (None, Some(e)),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.2}", bytes as f64 / (1u64 << 20) as f64)
}

/// The table, then one line per plan that did not compile and per weight algorithm's summary.
fn render(rows: &[Row], texts: usize) -> String {
    let mut t = super::output::table();
    t.set_header(["recipe", "cos mean", "cos min", "worst layer SNR dB", "weights MiB", "plan MiB", "target (mean)"]);
    for r in rows {
        t.add_row([
            r.recipe.clone(),
            format!("{:.6}", r.cosine_mean),
            format!("{:.6}", r.cosine_min),
            r.worst_layer.as_ref().map_or("—".into(), |(n, db)| format!("{db:.1} ({})", short(n))),
            mib(r.weight_bytes),
            r.plan_bytes.map_or("—".into(), mib),
            r.target.map_or("—".into(), |t| format!("≥ {} {}", t.min_mean_cosine, if t.met { "met" } else { "MISSED" })),
        ]);
    }
    let mut out = format!("{t}\n{texts} held-out texts; cosine of the sentence embeddings to the FP32 model.");
    for r in rows.iter().filter(|r| r.plan_error.is_some()) {
        out.push_str(&format!("\n{}: no plan: {}", r.recipe, r.plan_error.as_deref().unwrap_or_default()));
    }
    let mean = |name: &str| rows.iter().find(|r| r.recipe == name).map(|r| r.cosine_mean);
    if let (Some(rtn), Some(awq), Some(gptq)) = (mean("w4a16-rtn"), mean("w4a16-awq"), mean("w4a16-gptq")) {
        let verdict = |x: f64| if x > rtn { "above" } else { "NOT above" };
        out.push_str(&format!("\nw4a16: AWQ {awq:.6} is {} RTN ({rtn:.6}), GPTQ {gptq:.6} is {} RTN.", verdict(awq), verdict(gptq)));
    }
    if rows.iter().any(|r| r.target.is_some()) {
        out.push_str(
            "\ntarget: the mean cosine each recipe is expected to reach on all-MiniLM-L6-v2 (the recipe book's acceptance \
             bar, docs/recipes.md); MISSED means this run fell below it; — means the recipe has no target.",
        );
    }
    out.push_str("\nWhat the weight algorithms chose per layer (SmoothQuant, AWQ α and clipping, GPTQ): --json, or `qfuse compile`.");
    out
}

/// `encoder.layer.3.attention.self.query` → `layer.3.attention.self.query`.
fn short(name: &str) -> &str {
    name.strip_prefix("encoder.").unwrap_or(name)
}
