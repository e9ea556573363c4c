//! `qfuse cache info|clear`: the kernel (CUBIN) cache that `compile` reads and fills, and the
//! calibration cache beside it.

use clap::{Args, Subcommand};
use qfuse::codegen::cache::{self, CacheSource, KernelCache, CUBIN_EXT};
use qfuse::quant::calib::cache::{CalibCache, STATS_EXT};

/// Arguments of `qfuse cache`.
#[derive(Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    action: CacheAction,
}

#[derive(Subcommand)]
enum CacheAction {
    /// Print the cache folders, why they are the ones in use, and how many CUBINs and calibration
    /// statistics (bytes) they hold.
    Info,
    /// Remove every cached CUBIN and calibration statistic (the next compile recompiles its
    /// kernels with NVRTC and calibrates again).
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
    let calib = CalibCache::beside(&dir);
    let folders = [("kernel cache", &dir, CUBIN_EXT, "CUBIN(s)"), ("calibration cache", &calib, STATS_EXT, "calibration statistic(s)")];
    for (what, folder, ext, unit) in folders {
        match args.action {
            CacheAction::Info => {
                let (files, bytes) =
                    cache::usage(folder, ext).map_err(|e| anyhow::anyhow!("reading the {what} {}: {e}", folder.display()))?;
                super::output::print_line(&format!(
                    "{what}: {} ({why})\n{files} {unit}, {:.1} MiB",
                    folder.display(),
                    bytes as f64 / (1024.0 * 1024.0)
                ))?;
            }
            CacheAction::Clear => {
                let removed = cache::clear(folder, ext).map_err(|e| anyhow::anyhow!("clearing the {what} {}: {e}", folder.display()))?;
                super::output::print_line(&format!("removed {removed} {unit} from {}", folder.display()))?;
            }
        }
    }
    Ok(())
}
