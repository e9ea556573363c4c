//! Command-line front end: argument parsing, logging set-up and error reporting.

mod bench;
mod bench_decoder;
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

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// qfuse: quantize and compile transformer models for NVIDIA GPUs.
#[derive(Parser)]
#[command(name = "qfuse", version, about, long_about = None)]
struct Cli {
    /// Hide progress bars.
    #[arg(long, global = true)]
    quiet: bool,
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
}

/// Parses arguments, runs the command, and maps errors to a message and exit code 1.
pub fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Import(args) => import::run(&args),
        Command::Embed(args) => embed::run(&args, cli.quiet),
        Command::Compile(args) => compile::run(&args, cli.quiet),
        Command::Eval(args) => eval::run(&args, cli.quiet),
        Command::Inspect(args) => inspect::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Check(args) => check::run(&args),
        Command::Generate(args) => generate::run(&args, cli.quiet),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default: warnings).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
