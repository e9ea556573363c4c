//! The `qfuse` command line.

mod cli;
mod panic_guard;

fn main() -> std::process::ExitCode {
    panic_guard::run(cli::main)
}
