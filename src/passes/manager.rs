//! Runs passes in order with verification, dumps, disabling and tracing.

use super::{Pass, PassCx, PassError};
use crate::ir::{self, Graph};
use std::path::PathBuf;

/// How the manager runs a pipeline.
#[derive(Clone, Debug, Default)]
pub struct PassOptions {
    /// Pass names to skip.
    pub disable: Vec<String>,
    /// Opt-in passes to run ([`super::pipeline::OPT_IN`]); the others run unless disabled.
    pub enable: Vec<String>,
    /// Write the IR after these passes (`all` for every pass) ...
    pub dump_after: Vec<String>,
    /// ... into this folder, as `NN-<pass>.ir`.
    pub dump_dir: Option<PathBuf>,
    /// Verify after every pass even in release builds.
    pub verify: bool,
}

/// An ordered list of passes and the options to run them with.
pub struct PassManager {
    passes: Vec<Box<dyn Pass>>,
    options: PassOptions,
}

impl PassManager {
    /// A manager over `passes`; fails if an option names an unknown pass.
    pub fn new(passes: Vec<Box<dyn Pass>>, options: PassOptions) -> Result<Self, PassError> {
        let known: Vec<&str> = passes.iter().map(|p| p.name()).collect();
        let named = options.disable.iter().chain(&options.enable).chain(options.dump_after.iter().filter(|n| *n != "all"));
        if let Some(bad) = named.into_iter().find(|n| !known.contains(&n.as_str())) {
            return Err(PassError::UnknownPass { name: bad.clone(), known: known.join(", ") });
        }
        Ok(PassManager { passes, options })
    }

    /// Names of the passes, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.passes.iter().map(|p| p.name()).collect()
    }

    /// Runs every enabled pass in order; returns the names of the passes that changed the graph.
    pub fn run(&self, g: &mut Graph, cx: &mut PassCx) -> Result<Vec<&'static str>, PassError> {
        let mut changed = vec![];
        for (i, pass) in self.passes.iter().enumerate() {
            let name = pass.name();
            if !self.enabled(name) {
                tracing::info!(pass = name, "disabled");
                continue;
            }
            let span = tracing::info_span!("pass", name);
            let _guard = span.enter();
            let started = std::time::Instant::now();
            if pass.run(g, cx)? {
                changed.push(name);
            }
            tracing::debug!(elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "done");
            if self.options.verify || cfg!(debug_assertions) {
                ir::verify(g, &format!("after pass {name}")).map_err(Box::new)?;
            }
            self.dump(i, name, g)?;
        }
        Ok(changed)
    }

    /// False for a disabled pass and for an opt-in pass not enabled.
    fn enabled(&self, name: &str) -> bool {
        let opted_out = super::pipeline::OPT_IN.contains(&name) && !self.options.enable.iter().any(|e| e == name);
        !opted_out && !self.options.disable.iter().any(|d| d == name)
    }

    fn dump(&self, index: usize, name: &str, g: &Graph) -> Result<(), PassError> {
        let wanted = self.options.dump_after.iter().any(|d| d == "all" || d == name);
        let Some(dir) = self.options.dump_dir.as_ref().filter(|_| wanted) else { return Ok(()) };
        let path = dir.join(format!("{:02}-{name}.ir", index + 1));
        let write = std::fs::create_dir_all(dir).and_then(|_| crate::util::write_atomic(&path, ir::print(g).as_bytes()));
        write.map_err(|source| PassError::Dump { path, source })
    }
}
