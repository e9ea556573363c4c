//! Command-line front end: argument parsing, logging set-up and error reporting.

mod bench;
mod bench_decoder;
mod cache;
mod check;
mod compile;
mod embed;
mod eval;
mod eval_decoder;
mod eval_table;
mod generate;
mod generate_plan;
mod import;
mod inspect;
mod output;
mod recipe_args;
mod run;
mod validate;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// qfuse: quantize and compile transformer models for NVIDIA GPUs.
#[derive(Parser)]
#[command(name = "qfuse", version, about, long_about = None)]
struct Cli {
    /// Hide progress bars (they also hide when stderr is not a terminal).
    #[arg(long, global = true)]
    quiet: bool,
    /// Print everything: the full fusion report, one line per weight-algorithm group, every
    /// layer's metrics and wide tables (default: one summary line per stage).
    #[arg(long, global = true, visible_alias = "report")]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Import a model folder and print a summary of its IR.
    Import(import::ImportArgs),
    /// Compute sentence embeddings with the reference interpreter and print their similarities.
    Embed(embed::EmbedArgs),
    /// Quantize with a recipe, calibrate, fuse, and write the result.
    Compile(compile::CompileArgs),
    /// Measure a recipe's accuracy against FP32 on held-out texts, per layer and end to end.
    Eval(eval::EvalArgs),
    /// Show what a .plan holds: header, signature, kernels, buffers, recipe, fusion report.
    Inspect(inspect::InspectArgs),
    /// Embed texts with a .plan on the GPU.
    Run(run::RunArgs),
    /// Time a .plan end to end on the GPU (CUDA graph replays, median of N).
    Bench(bench::BenchArgs),
    /// Check a .plan on the GPU against the reference interpreter, kernel by kernel and end to end.
    Check(check::CheckArgs),
    /// Generate text with a decoder (GGUF file or Llama/Mistral/Qwen2 folder) on the reference interpreter.
    Generate(generate::GenerateArgs),
    /// Show or clear the kernel (CUBIN) cache shared by the README's scripts and manual commands.
    Cache(cache::CacheArgs),
}

/// Parses arguments, runs the command, and maps errors to a message and exit code 1.
pub fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Import(args) => import::run(&args),
        Command::Embed(args) => embed::run(&args, cli.quiet),
        Command::Compile(args) => compile::run(&args, cli.quiet, cli.verbose),
        Command::Eval(args) => eval::run(&args, cli.quiet, cli.verbose),
        Command::Inspect(args) => inspect::run(&args),
        Command::Run(args) => run::run(&args, cli.quiet),
        Command::Bench(args) => bench::run(&args, cli.quiet),
        Command::Check(args) => check::run(&args, cli.quiet),
        Command::Generate(args) => generate::run(&args, cli.quiet),
        Command::Cache(args) => cache::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_message(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined by ": ", each said once: a cause whose text the message
/// already contains is left out. (Many error types print their source in their own message and
/// also return it from `source()`; `{:#}` would then repeat the OS or library message.)
pub fn error_message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.is_empty() {
            out = text;
        } else if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

/// Logs go to stderr, filtered by `RUST_LOG` (default: warnings).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

#[cfg(test)]
mod tests {
    use super::error_message;

    #[test]
    fn each_cause_is_said_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("reading x.plan: {source}")]
        struct Repeats {
            source: std::io::Error,
        }
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory (os error 2)");
        let e = anyhow::Error::new(Repeats { source: io });
        assert_eq!(format!("{e:#}"), "reading x.plan: No such file or directory (os error 2): No such file or directory (os error 2)");
        assert_eq!(error_message(&e), "reading x.plan: No such file or directory (os error 2)");
        let chained = anyhow::anyhow!("low").context("middle").context("top");
        assert_eq!(error_message(&chained), "top: middle: low", "distinct causes are all kept");
    }
}
