//! Quantization: recipes, calibration and Q/DQ placement, then the fusion pipeline.
//!
//! [`quantize`] runs the whole front half of the compiler on an imported model:
//! convert to the recipe's compute dtype → find the matmul sites → calibrate the activations the
//! recipe needs → insert Q/DQ → run the fusion passes → fusion report.

pub mod algo;
pub mod auto;
pub mod calib;
pub mod capture;
pub mod eval;
pub mod insert;
pub mod precision;
pub mod prepare;
pub mod recipe;
pub mod weight_qdq;

pub use insert::nvfp4_global;
pub use recipe::Recipe;

use crate::import::{ImportError, Imported};
use crate::ir::{self, Graph};
use crate::passes::{pipeline, report::Entry, PassCx, PassError, PassManager, PassOptions};
use calib::CalibMethod;
use serde::Serialize;

/// Calibration settings.
#[derive(Clone, Debug)]
pub struct CalibOptions {
    /// How static activation ranges are chosen.
    pub method: CalibMethod,
    /// The calibration samples (one text each).
    pub sentences: Vec<String>,
    /// Texts per interpreter run.
    pub batch: usize,
    /// Hide progress bars.
    pub quiet: bool,
    /// How the runs go through the graph's layers.
    pub schedule: CalibSchedule,
    /// Folder of the calibration cache ([`calib::cache`]); `None` (the library's default): always
    /// run the calibration set.
    pub cache: Option<std::path::PathBuf>,
}

/// How calibration runs go through the graph's layers ([`calib::stream`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CalibSchedule {
    /// Each run through the whole graph at once, every statistic held to the end: the reference
    /// the streamed statistics are tested against.
    Whole,
    /// Span of layers by span of layers, each span's statistics (and the weight algorithms that
    /// use them) finished and freed before the next: the same statistics bit for bit, with the
    /// memory of one span's.
    #[default]
    Layers,
    /// As [`CalibSchedule::Layers`], but each span's activations come from the spans before it as
    /// the weight algorithms left them (GPTQ's quantized weights, AWQ's scaled ones): GPTQ's
    /// sequential quantization. One more forward of each span.
    Sequential,
}

impl CalibSchedule {
    /// The spans of `g` that observe `values` under this schedule.
    pub fn spans(self, g: &Graph, values: &[ir::ValueId]) -> calib::stream::Spans {
        match self {
            CalibSchedule::Whole => calib::stream::Spans::whole(values),
            CalibSchedule::Layers | CalibSchedule::Sequential => calib::stream::Spans::new(g, values),
        }
    }
}

impl CalibOptions {
    /// The defaults for decoders: the built-in mix of prose, chats and code
    /// ([`calib::default_decoder_calibration`]) instead of the encoder sentences.
    pub fn decoder_default() -> Self {
        CalibOptions { sentences: calib::default_decoder_calibration(), ..Self::default() }
    }
}

impl Default for CalibOptions {
    fn default() -> Self {
        CalibOptions {
            method: CalibMethod::Max,
            sentences: calib::default_calibration_sentences(),
            batch: 16,
            quiet: true,
            schedule: CalibSchedule::default(),
            cache: None,
        }
    }
}

/// What calibration did.
#[derive(Clone, Debug, Serialize)]
pub struct CalibSummary {
    /// Method used.
    pub method: String,
    /// Samples (texts) run.
    pub samples: usize,
    /// Tensors observed.
    pub tensors: usize,
    /// Wall time.
    pub seconds: f64,
    /// The statistics came from the calibration cache.
    pub cached: bool,
}

/// A model through the recipe and the passes, with every intermediate graph kept.
pub struct Quantized {
    /// The recipe applied.
    pub recipe: Recipe,
    /// The graph in the compute dtype without Q/DQ, matmuls named uniquely: the baseline.
    pub baseline: Graph,
    /// The graph with explicit Q/DQ, before fusion.
    pub qdq: Graph,
    /// The fused graph.
    pub fused: Graph,
    /// The matmul sites, named.
    pub sites: Vec<insert::Site>,
    /// What became of every Q/DQ.
    pub report: Vec<Entry>,
    /// Sites left in high precision, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Calibration, when the recipe needed it.
    pub calibration: Option<CalibSummary>,
    /// What the weight algorithms did: `(sites, summary)` per activation they share.
    pub algorithms: Vec<(String, String)>,
    /// `--recipe auto`: every layer's candidate scores and choice (also in `recipe.layers`).
    pub auto: Vec<auto::LayerChoice>,
}

/// Why quantization failed.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// Tokenizing the calibration set failed.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// The interpreter failed during calibration.
    #[error("calibration: {0}")]
    Calibration(#[from] crate::interp::InterpError),
    /// A pass failed.
    #[error(transparent)]
    Pass(#[from] PassError),
    /// The recipe could not be applied (a qfuse bug or an unsupported graph).
    #[error("applying the recipe: {0}")]
    Recipe(String),
}

/// Runs `recipe` on `model`: see the module doc.
pub fn quantize(model: &dyn Imported, recipe: &Recipe, calib: &CalibOptions, passes: &PassOptions) -> Result<Quantized, QuantError> {
    let calib = &CalibOptions { sentences: model.calibration_texts(&calib.sentences)?, ..calib.clone() };
    let mut baseline = precision::convert(model.graph(), recipe.compute).map_err(QuantError::Recipe)?;
    let sites = insert::find_sites(&mut baseline);
    check(&baseline, "after conversion to the compute dtype")?;
    let mut recipe = recipe.clone();
    let auto = match recipe.auto {
        Some(target) => auto::choose(model, &baseline, &sites, &mut recipe, target, calib)?,
        None => vec![],
    };
    let recipe = &recipe;
    let mut prepared_graph = baseline.clone();
    let prepared = prepare::prepare(model, &mut prepared_graph, recipe, &sites, calib)?;
    for (names, what) in &prepared.notes {
        tracing::info!(sites = names.as_str(), "{what}");
    }
    check(&prepared_graph, "after the weight algorithms")?;
    let values = insert::calibration_values(&prepared_graph, recipe, &sites);
    let (amax, calibration) =
        if values.is_empty() { (Default::default(), None) } else { calibrate(model, &prepared_graph, recipe, calib, &values)? };
    let mut qdq = prepared_graph;
    let skipped = insert::insert(&mut qdq, recipe, &sites, &amax, &prepared.weights, model.weights()).map_err(QuantError::Recipe)?;
    for (site, why) in &skipped {
        tracing::warn!(site = site.as_str(), "{why}");
    }
    check(&qdq, "after Q/DQ insertion")?;
    let mut fused = qdq.clone();
    let mut cx = PassCx::new(model.weights());
    PassManager::new(pipeline::fusion(), passes.clone())?.run(&mut fused, &mut cx)?;
    let report = cx.report.finish(&fused);
    Ok(Quantized { recipe: recipe.clone(), baseline, qdq, fused, sites, report, skipped, calibration, algorithms: prepared.notes, auto })
}

fn check(g: &Graph, context: &str) -> Result<(), QuantError> {
    ir::verify(g, context).map_err(|e| QuantError::Recipe(e.to_string()))
}

type Ranges = std::collections::HashMap<ir::ValueId, f32>;

/// The calibration texts of `opts` as interpreter runs of `g` observing `values`: up to
/// `opts.batch` texts per run, never more than the graph (`B`) or the model
/// ([`Imported::texts_per_run`]) accepts, and one per run when the runs would hold padded
/// sequences but some value is not token-major ([`calib::token_major`]: its padding rows could
/// not be left out).
pub(crate) fn encode_runs(
    model: &dyn Imported,
    g: &Graph,
    opts: &CalibOptions,
    values: &[ir::ValueId],
) -> Result<Vec<crate::import::Encoded>, QuantError> {
    let max_batch = g.symbol("B").map_or(usize::MAX, |s| g.symbols[s].max as usize);
    let per_run = opts.batch.clamp(1, max_batch.max(1).min(model.texts_per_run().max(1)));
    let encode = |per_run: usize| opts.sentences.chunks(per_run).map(|chunk| model.encode_sequences(chunk)).collect::<Result<Vec<_>, _>>();
    let runs = encode(per_run)?;
    let padded = runs.iter().any(|r| r.tokens.as_ref().is_some_and(|t| t.len() > 1));
    Ok(if padded && !calib::token_major(g, values) { encode(1)? } else { runs })
}

/// The statistics of `values` over `runs`: from the calibration cache when `opts.cache` has them,
/// else collected (and stored there).
fn collect_or_reuse(
    model: &dyn Imported,
    g: &Graph,
    runs: &[calib::Run],
    opts: &CalibOptions,
    values: &[ir::ValueId],
) -> Result<calib::Calibration, QuantError> {
    let cache = opts.cache.as_ref().map(calib::cache::CalibCache::new);
    let key = match &cache {
        Some(_) => Some(calib::cache::CalibCache::key(g, model.weights(), runs, values).map_err(QuantError::Recipe)?),
        None => None,
    };
    if let Some(hit) = cache.as_ref().zip(key.as_deref()).and_then(|(c, k)| c.load(k, values)) {
        tracing::info!(values = values.len(), "calibration statistics read from the cache");
        return Ok(hit);
    }
    let collected = calib::collect_runs(g, model.weights(), runs, &opts.schedule.spans(g, values), opts.quiet)?;
    if let Some((c, k)) = cache.as_ref().zip(key.as_deref()) {
        c.store(k, &collected);
    }
    Ok(collected)
}

/// Runs the calibration set through `g` and picks a range for each value.
fn calibrate(
    model: &dyn Imported,
    g: &Graph,
    recipe: &Recipe,
    opts: &CalibOptions,
    values: &[ir::ValueId],
) -> Result<(Ranges, Option<CalibSummary>), QuantError> {
    let encoded = encode_runs(model, g, opts, values)?;
    let runs: Vec<calib::Run> = encoded.iter().map(|e| calib::Run { inputs: &e.inputs, tokens: e.tokens.as_deref() }).collect();
    let collected = collect_or_reuse(model, g, &runs, opts, values)?;
    let storage = recipe.linear.activation.map_or(ir::DType::F8E4M3, |a| a.storage);
    let (amax, issues) = collected.amaxes(g, opts.method, storage);
    let summary = CalibSummary {
        method: opts.method.to_string(),
        samples: opts.sentences.len(),
        tensors: values.len() - issues.len(),
        seconds: collected.elapsed.as_secs_f64(),
        cached: collected.cached,
    };
    Ok((amax, Some(summary)))
}
