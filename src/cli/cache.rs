//! `qfuse cache info|clear`: the kernel (CUBIN) cache that `compile` reads and fills.

use clap::{Args, Subcommand};
use qfuse::codegen::cache::{self, CacheSource, KernelCache};

/// Arguments of `qfuse cache`.
#[derive(Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    action: CacheAction,
}

#[derive(Subcommand)]
enum CacheAction {
    /// Print the cache folder, why it is the one in use, and how many CUBINs (bytes) it holds.
    Info,
    /// Remove every cached CUBIN (the next compile recompiles its kernels with NVRTC).
    Clear,
}

/// Runs `qfuse cache`.
pub fn run(args: &CacheArgs) -> anyhow::Result<()> {
    let Some((dir, source)) = KernelCache::locate() else {
        anyhow::bail!("no kernel cache location: set QFUSE_CACHE_DIR (or HOME)");
    };
    let why = match source {
        CacheSource::Env => "from $QFUSE_CACHE_DIR",
        CacheSource::Checkout => "inside the qfuse checkout: shared with scripts/demo.sh and scripts/test.sh",
        CacheSource::User => "the per-user cache",
    };
    match args.action {
        CacheAction::Info => {
            let (files, bytes) = cache::usage(&dir).map_err(|e| anyhow::anyhow!("reading the kernel cache {}: {e}", dir.display()))?;
            super::output::print_line(&format!(
                "kernel cache: {} ({why})\n{files} CUBIN(s), {:.1} MiB",
                dir.display(),
                bytes as f64 / (1024.0 * 1024.0)
            ))?;
        }
        CacheAction::Clear => {
            let removed = cache::clear(&dir).map_err(|e| anyhow::anyhow!("clearing the kernel cache {}: {e}", dir.display()))?;
            super::output::print_line(&format!("removed {removed} CUBIN(s) from {}", dir.display()))?;
        }
    }
    Ok(())
}
