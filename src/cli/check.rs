//! `qfuse check`: a plan on the GPU against the reference interpreter (see `qfuse::check`).

use std::path::PathBuf;

use clap::Args;
use comfy_table::{presets, Table};
use qfuse::check::{check_plan, CheckOptions};

/// Arguments of `qfuse check`.
#[derive(Args)]
pub struct CheckArgs {
    /// The plan file.
    plan: PathBuf,
    /// Texts for the comparison, one per line (default: 16 built-in sentences).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Random-input runs checked for NaN and infinity.
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
pub fn run(args: &CheckArgs) -> anyhow::Result<()> {
    let mut texts: Vec<String> = super::embed::read_text_file(args.file.as_deref())?;
    if texts.is_empty() {
        texts = SENTENCES.iter().map(|s| s.to_string()).collect();
    }
    let opts = CheckOptions { texts, random_runs: args.random, seed: 0x5eed, max_tokens: 128, reference_model: args.model.clone() };
    let started = std::time::Instant::now();
    let report = check_plan(&args.plan, &opts)?;
    let passed = report.passed(args.min_cos);
    if args.json {
        super::output::print_line(&serde_json::to_string_pretty(&report)?)?;
    } else {
        let mut t = Table::new();
        t.load_style(presets::UTF8_FULL_CONDENSED);
        t.set_header(["#", "kernel computes", "value", "dtype", "measured", "tolerance", ""]);
        for k in report.kernels.iter().filter(|k| args.all || !k.comparison.pass) {
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
        if !t.is_empty() {
            super::output::print_line(&t.to_string())?;
        }
        let ok = report.kernels.iter().filter(|k| k.comparison.pass).count();
        let boundary: usize = report.kernels.iter().map(|k| k.comparison.boundary_cases).sum();
        let transcendental: usize = report.kernels.iter().map(|k| k.comparison.transcendental_cases).sum();
        let mut lines = vec![format!(
            "per-kernel: {ok} of {} results within their dtype's tolerance; {boundary} narrow codes on a rounding boundary (allowed); {transcendental} codes within transcendental rounding of a boundary (allowed)",
            report.kernels.len()
        )];
        for (name, cos) in &report.end_to_end {
            let (min, mean) = min_mean(cos);
            lines.push(format!(
                "end to end `{name}`: {} rows, cosine GPU vs interpreter min {min:.6}, mean {mean:.6} (bar {:.6}: {}, or the summation-order floor minus {:.0e} when lower)",
                cos.len(),
                report.end_to_end_bar(name, args.min_cos),
                args.min_cos,
                qfuse::check::FLOOR_MARGIN
            ));
        }
        for (name, cos) in &report.summation_floor {
            let (min, mean) = min_mean(cos);
            lines.push(format!(
                "info: summation-order floor `{name}`: cosine interpreter (f32 sums) vs interpreter (f64 sums) min {min:.6}, mean {mean:.6}"
            ));
        }
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
