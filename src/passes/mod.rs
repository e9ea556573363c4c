//! Graph passes and the pass manager.
//!
//! A pass rewrites a [`Graph`] in place and reports whether it changed anything. The manager runs
//! a list of passes top to bottom ([`pipeline`]), opens a tracing span per pass, runs the verifier
//! after every pass (debug builds and tests, or when asked), writes `--dump-ir-after` files and
//! honours `--disable-pass`. Rule discipline: `src/passes/README.md`.

pub mod cse;
pub mod dce;
pub mod drop_identity_casts;
pub mod fold_constants;
pub mod fold_scales;
pub mod fold_smoothing;
pub mod fuse_attention;
pub mod fuse_attention_output;
pub mod fuse_dq_matmul;
pub mod fuse_embedding;
pub mod fuse_epilogue;
pub mod fuse_kv_cache;
pub mod fuse_layernorm_quantize;
pub mod fuse_norm_prologue;
pub mod fuse_quant_round_trip;
pub mod fuse_rope;
pub mod fuse_weight_dequant;
pub mod lift_linear;
pub mod manager;
pub mod merge_gate_up;
pub mod merge_sibling_gemms;
pub mod pipeline;
pub mod propagate_qdq;
pub mod report;
pub mod rule;

pub use manager::{PassManager, PassOptions};
pub use report::FusionReport;

use crate::interp::{Tensor, WeightSource};
use crate::ir::{Graph, VerifyErrors};

/// Weights a pass can read and add to (quantized copies of checkpoint tensors).
pub trait Weights: WeightSource {
    /// Adds or replaces a derived tensor.
    fn insert(&self, name: String, t: Tensor);
    /// True when `name` can be read.
    fn has(&self, name: &str) -> bool;
    /// A hint that no graph being compiled reads `name` any more: a store that caches decoded
    /// copies of file tensors may drop that copy (a later read decodes it again). Derived
    /// tensors are never dropped.
    fn release(&self, _name: &str) {}
}

/// State shared by the passes of one compilation.
pub struct PassCx<'a> {
    /// The model's weights; passes that quantize weights offline add tensors here.
    pub weights: &'a dyn Weights,
    /// What each Q/DQ became, filled by the fusion passes.
    pub report: FusionReport,
}

impl<'a> PassCx<'a> {
    /// A context over `weights` with an empty report.
    pub fn new(weights: &'a dyn Weights) -> Self {
        PassCx { weights, report: FusionReport::default() }
    }
}

/// A graph rewrite.
pub trait Pass {
    /// Kebab-case name, used by `--disable-pass`, `--dump-ir-after` and logs.
    fn name(&self) -> &'static str;
    /// Rewrites `g`; returns whether anything changed.
    fn run(&self, g: &mut Graph, cx: &mut PassCx) -> Result<bool, PassError>;
}

/// A pass failed or left an invalid graph.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// The pass could not apply a rewrite (bad weights, unsupported pattern).
    #[error("pass {pass}: {message}")]
    Failed {
        /// The pass.
        pass: &'static str,
        /// What went wrong, naming the node.
        message: String,
    },
    /// The verifier rejected the graph after a pass: a qfuse bug.
    #[error("{0}")]
    Verify(#[from] Box<VerifyErrors>),
    /// `--disable-pass` or `--dump-ir-after` named no known pass.
    #[error("unknown pass `{name}`; passes are: {known}")]
    UnknownPass {
        /// The name given.
        name: String,
        /// The valid names.
        known: String,
    },
    /// A dump file could not be written.
    #[error("writing IR dump {path}: {source}")]
    Dump {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The node's name for the fusion report (its `loc`), or its id.
pub(crate) fn loc(g: &Graph, id: crate::ir::NodeId) -> String {
    g.nodes[id].name.clone().unwrap_or_else(|| id.to_string())
}

/// Test support: the graph of `tests/ir/<dir>/<case>.ir`.
#[cfg(test)]
pub(crate) fn case_graph(dir: &str, case: &str) -> Graph {
    let path = format!("{}/tests/ir/{dir}/{case}.ir", env!("CARGO_MANIFEST_DIR"));
    crate::ir::parse(&std::fs::read_to_string(path).expect("case file")).expect("case parses")
}

/// Test support: runs `pass` twice on `tests/ir/<dir>/<case>.ir` (the second run must change
/// nothing) and returns the fusion report's lines for Q/DQ names ending in `suffix`.
#[cfg(test)]
pub(crate) fn report_of_case(pass: &dyn Pass, dir: &str, case: &str, suffix: &str) -> Vec<String> {
    let mut g = case_graph(dir, case);
    let w = MemoryWeights::default();
    let mut cx = PassCx::new(&w);
    pass.run(&mut g, &mut cx).expect("pass runs");
    assert!(!pass.run(&mut g, &mut cx).expect("pass runs"), "a second run finds nothing");
    cx.report.finish(&g).into_iter().filter(|e| e.qdq.ends_with(suffix)).map(|e| e.to_string()).collect()
}

impl Weights for crate::import::WeightStore {
    fn insert(&self, name: String, t: Tensor) {
        crate::import::WeightStore::insert(self, name, t)
    }
    fn has(&self, name: &str) -> bool {
        self.contains(name)
    }
    fn release(&self, name: &str) {
        crate::import::WeightStore::release(self, name)
    }
}

/// Weights held in memory, for tests and synthetic graphs.
#[derive(Default)]
pub struct MemoryWeights {
    tensors: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<Tensor>>>,
}

impl MemoryWeights {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, std::sync::Arc<Tensor>>> {
        self.tensors.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl WeightSource for MemoryWeights {
    fn weight(&self, name: &str) -> Result<std::sync::Arc<Tensor>, String> {
        self.lock().get(name).cloned().ok_or_else(|| format!("weight `{name}` is not in memory"))
    }
}

impl Weights for MemoryWeights {
    fn insert(&self, name: String, t: Tensor) {
        self.lock().insert(name, std::sync::Arc::new(t));
    }
    fn has(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }
}
