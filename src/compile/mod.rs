//! `qfuse::compile`: a model folder in, a `.plan` out.
//!
//! ```text
//! import → quantize (recipe, calibration, fusion passes) → lower (codegen::ops)
//!        → memory plan (codegen::memory) → NVRTC through the CUBIN cache → PlanBuilder
//! ```
//!
//! ```no_run
//! let opts = qfuse::compile::CompileOptions::for_recipe("fp8")?;
//! let plan = qfuse::compile::compile("models/all-MiniLM-L6-v2".as_ref(), &opts)?;
//! plan.save("minilm-fp8.plan".as_ref())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod bytes;
pub mod decoder;

pub use decoder::{compile_decoder, DecoderPlanOptions};

use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;

use crate::codegen::cache::{KernelCache, Origin};
use crate::codegen::kernel::PagedKv;
use crate::codegen::kernel::{dim_expr, max_extents, Arg, KernelDef, LowerError, LowerOptions};
use crate::codegen::lower::{lower_graph_paged, Program};
use crate::codegen::memory::{self, MemoryPlan};
use crate::codegen::nvrtc::{self, NvrtcError};
use crate::import::{self, ImportError, ImportOptions, Model};
use crate::interp::WeightSource;
use crate::ir::{self, Graph, Op, ValueId};
use crate::passes::PassOptions;
use crate::plan::{
    ArgRef, BufferMeta, DimExpr, KernelMeta, LaunchGuard, LaunchMeta, LaunchSums, PlanBuilder, PlanError, PlanMeta, Scalar, SectionKind,
    TensorSig, WeightMeta,
};
use crate::quant::{self, CalibOptions, QuantError, Quantized, Recipe};

/// The arch compiled for when none is given and no GPU is visible (with one, its arch).
pub const DEFAULT_ARCH: &str = "sm_90a";

/// Name of the section holding the model's `tokenizer.json`, when it has one.
pub const TOKENIZER_SECTION: &str = "tokenizer.json";

/// How to compile.
#[derive(Debug, Clone)]
pub struct CompileOptions {
    /// The quantization recipe.
    pub recipe: Recipe,
    /// Calibration (recipes with static activation scales).
    pub calib: CalibOptions,
    /// Pass selection and IR dumps.
    pub passes: PassOptions,
    /// Target arch (`sm_90a`, `sm_89`, …); `None`: the local GPU's, else [`DEFAULT_ARCH`].
    pub arch: Option<String>,
    /// Largest batch and sequence the plan accepts (symbols `B` and `S`).
    pub import: ImportOptions,
    /// CUBIN cache directory; `None` disables the cache.
    pub kernel_cache: Option<PathBuf>,
    /// Code-generation choices (FP8 accumulation).
    pub lower: LowerOptions,
    /// Show a progress bar over the kernels while NVRTC compiles them (stderr; hidden when stderr
    /// is not a terminal). Off by default.
    pub progress: bool,
}

impl CompileOptions {
    /// Defaults for the recipe called `name` (`fp16`, `fp8`, `fp8-dynamic`, …).
    pub fn for_recipe(name: &str) -> Result<Self, CompileError> {
        let recipe = Recipe::named(name, crate::quant::calib::CalibMethod::Max).map_err(CompileError::Options)?;
        Ok(Self::new(recipe))
    }

    /// Defaults around `recipe`: default calibration set, every pass, the user's kernel cache.
    pub fn new(recipe: Recipe) -> Self {
        Self {
            recipe,
            calib: CalibOptions::default(),
            passes: PassOptions::default(),
            arch: None,
            import: ImportOptions::default(),
            kernel_cache: KernelCache::default_location(),
            lower: LowerOptions::default(),
            progress: false,
        }
    }
}

/// Why compilation failed.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// Bad options.
    #[error("{0}")]
    Options(String),
    /// The model folder could not be imported.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// Quantization or a pass failed.
    #[error(transparent)]
    Quant(#[from] QuantError),
    /// A node has no kernel.
    #[error(transparent)]
    Lower(#[from] LowerError),
    /// NVRTC failed.
    #[error(transparent)]
    Nvrtc(#[from] NvrtcError),
    /// The plan could not be assembled or written.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A weight the graph names could not be read.
    #[error("weight `{name}`: {reason}")]
    Weight {
        /// The IR weight name.
        name: String,
        /// What failed.
        reason: String,
    },
}

/// What compilation did, for the CLI and logs.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CompileStats {
    /// Target arch.
    pub arch: String,
    /// Nodes of the final graph.
    pub nodes: usize,
    /// Kernel launches per run.
    pub launches: usize,
    /// Distinct kernels.
    pub kernels: usize,
    /// Kernels compiled now / taken from the cache.
    pub compiled: usize,
    /// Kernels taken from the cache.
    pub cached: usize,
    /// Seconds spent in NVRTC (wall, parallel).
    pub nvrtc_seconds: f64,
    /// Arena size and what it would be without reuse.
    pub peak_activation_bytes: u64,
    /// Sum of all activation buffers without reuse.
    pub unshared_activation_bytes: u64,
    /// Bytes of weights in the plan.
    pub weight_bytes: u64,
    /// Total seconds (import to assembled plan).
    pub seconds: f64,
}

/// A compiled plan in memory; [`CompiledPlan::save`] writes it.
pub struct CompiledPlan {
    builder: PlanBuilder<'static>,
    /// What compilation did.
    pub stats: CompileStats,
    /// The quantization result (graphs, report, calibration).
    pub quantized: Quantized,
    /// Target arch of the plan's kernels.
    arch_name: String,
    /// Bytes of split-KV scratch its launches need (a decoder's [`crate::plan::DecoderMeta::split_scratch_bytes`]).
    pub(crate) split_scratch_bytes: u64,
}

impl CompiledPlan {
    /// The plan's metadata.
    pub fn meta(&self) -> &PlanMeta {
        self.builder.meta()
    }

    /// Compiles the sampling kernel over `vocab` logits of `dtype` and adds it to the plan;
    /// returns its kernel index.
    pub(crate) fn add_sample_kernel(&mut self, dtype: &crate::ir::DType, vocab: u64, opts: &CompileOptions) -> Result<u32, CompileError> {
        let sm = sm_of(&self.arch_name)?;
        let k = crate::codegen::sample::sample_kernel(vocab, *dtype, sm)?;
        let cache = KernelCache::new(opts.kernel_cache.clone());
        let (cubin, origin) = cache.cubin(&k.name, &k.source, &self.arch_name)?;
        let index = push_kernel(&mut self.builder, &k, cubin, sm);
        self.stats.kernels += 1;
        match origin {
            Origin::Compiled => self.stats.compiled += 1,
            Origin::Cached => self.stats.cached += 1,
        }
        Ok(index)
    }

    /// Writes the plan atomically.
    pub fn save(&self, path: &Path) -> Result<(), PlanError> {
        self.builder.write(path)
    }
}

/// Compiles the encoder in `model_dir` (decoders: [`compile_decoder`]).
pub fn compile(model_dir: &Path, opts: &CompileOptions) -> Result<CompiledPlan, CompileError> {
    let started = Instant::now();
    if let Some(arch) = &opts.arch {
        check_arch(arch, &opts.recipe)?;
    }
    let model = import::load(model_dir, &opts.import)?;
    let q = quant::quantize(&model, &opts.recipe, &opts.calib, &opts.passes)?;
    let mut plan = build(&model, q, opts)?;
    plan.stats.seconds = started.elapsed().as_secs_f64();
    Ok(plan)
}

/// Lowers, compiles and assembles the plan of an already quantized encoder.
pub fn build(model: &Model, q: Quantized, opts: &CompileOptions) -> Result<CompiledPlan, CompileError> {
    let tokenizer = std::fs::read(model.dir.join("tokenizer.json")).ok();
    assemble(&Source { weights: &model.weights, tokenizer, paged: None }, q, opts)
}

/// What a plan is assembled from besides the quantized graphs.
pub(crate) struct Source<'a> {
    /// The checkpoint's weights.
    pub weights: &'a dyn WeightSource,
    /// A Hugging Face `tokenizer.json` to carry in the plan.
    pub tokenizer: Option<Vec<u8>>,
    /// The paged KV cache of a decoder plan.
    pub paged: Option<PagedKv>,
}

/// Lowers, compiles and assembles a plan.
pub(crate) fn assemble(source: &Source<'_>, q: Quantized, opts: &CompileOptions) -> Result<CompiledPlan, CompileError> {
    let arch = opts.arch.clone().or_else(|| crate::runtime::local_arch(0)).unwrap_or_else(|| DEFAULT_ARCH.to_string());
    check_arch(&arch, &q.recipe)?;
    let sm = sm_of(&arch)?;
    // Values are numbered as the IR text prints them, so buffer names match `ir_text`.
    let graph = ir::order::compact(&q.fused);
    let program = lower_graph_paged(&graph, sm, opts.lower, source.paged)?;
    let mem = memory::plan(&graph, &program);
    let version = nvrtc::locate()?.version;
    let mut meta = PlanMeta::new(graph.name.clone(), arch.clone(), version);
    meta.recipe = serde_json::to_string(&q.recipe).unwrap_or_default();
    meta.calibration = serde_json::to_string(&q.calibration).unwrap_or_default();
    meta.fusion_report = serde_json::to_string(&q.report).unwrap_or_default();
    meta.ir_text = ir::print(&graph);
    meta.symbols = graph.symbols.iter().map(|(_, s)| (s.name.clone(), s.max)).collect();
    let mut builder = PlanBuilder::new(meta);
    let t_nvrtc = Instant::now();
    let (kernel_index, origins) = add_kernels(&mut builder, &program, &arch, sm, opts)?;
    let nvrtc_seconds = t_nvrtc.elapsed().as_secs_f64();
    let buffers = add_buffers(&mut builder, &graph, &mem);
    let weights = add_weights(&mut builder, &graph, &program, source.weights)?;
    add_schedule(&mut builder, &graph, &program, &kernel_index, &buffers, &weights)?;
    add_signature(&mut builder, &graph, &buffers);
    drop_unused_symbols(builder.meta_mut());
    if let Some(tok) = &source.tokenizer {
        builder.add_section(SectionKind::Other, TOKENIZER_SECTION, tok.clone());
    }
    builder.meta_mut().peak_activation_bytes = mem.peak_bytes;
    let stats = CompileStats {
        arch,
        nodes: graph.nodes.len(),
        launches: program.launches().count(),
        kernels: origins.len(),
        compiled: origins.iter().filter(|o| **o == Origin::Compiled).count(),
        cached: origins.iter().filter(|o| **o == Origin::Cached).count(),
        nvrtc_seconds,
        peak_activation_bytes: mem.peak_bytes,
        unshared_activation_bytes: mem.unshared_bytes,
        weight_bytes: builder.meta().weights.iter().map(weight_len).sum(),
        seconds: 0.0,
    };
    let split_scratch_bytes = split_scratch_bytes(&program)?;
    Ok(CompiledPlan { builder, arch_name: stats.arch.clone(), stats, quantized: q, split_scratch_bytes })
}

/// The split-KV scratch the program needs: the largest [`Arg::SplitScratch`] of any launch (0
/// when none splits). Launches that keep completion counters at the scratch's start must agree on
/// their size, or one launch's partials would overwrite another's counters.
fn split_scratch_bytes(program: &Program) -> Result<u64, CompileError> {
    let needs: Vec<(u64, u64)> = program
        .launches()
        .flat_map(|(_, l)| &l.args)
        .filter_map(|a| match a {
            Arg::SplitScratch { bytes, counters } => Some((*bytes, *counters)),
            _ => None,
        })
        .collect();
    let mut counters = needs.iter().map(|&(_, c)| c).filter(|&c| c > 0);
    if let Some(first) = counters.next() {
        if let Some(other) = counters.find(|&c| c != first) {
            return Err(CompileError::Options(format!(
                "split-KV attentions with {first} and {other} bytes of completion counters cannot share one scratch \
                 (decoder layers of different head counts are not supported)"
            )));
        }
    }
    Ok(needs.iter().map(|&(b, _)| b).max().unwrap_or(0))
}

/// Removes shape symbols nothing in the plan mentions (a decoder's cache length `P`, once the
/// cache lives in pages), so the runtime need not bind them.
fn drop_unused_symbols(meta: &mut PlanMeta) {
    let mut used = std::collections::BTreeSet::new();
    let mut note = |e: &DimExpr| used.extend(e.symbols().into_iter().map(str::to_string));
    for sig in meta.inputs.iter().chain(&meta.outputs) {
        sig.shape.iter().for_each(&mut note);
    }
    for b in &meta.buffers {
        b.shape.iter().for_each(&mut note);
    }
    for k in &meta.kernels {
        k.grid.iter().for_each(&mut note);
    }
    for l in &meta.schedule {
        for a in &l.args {
            if let ArgRef::Scalar(Scalar::Dim(e)) = a {
                note(e);
            }
        }
    }
    for g in &meta.launch_guards {
        note(g.when.rows());
    }
    meta.symbols.retain(|(name, _)| used.contains(name));
}

/// The archs `--arch` accepts: those NVRTC 13 compiles for (Turing and newer).
pub const KNOWN_ARCHS: &[&str] = &[
    "sm_75", "sm_80", "sm_86", "sm_87", "sm_89", "sm_90", "sm_90a", "sm_100", "sm_100a", "sm_103", "sm_103a", "sm_110", "sm_110a",
    "sm_120", "sm_120a", "sm_121", "sm_121a",
];

/// Checks, before any work, that `arch` is one of [`KNOWN_ARCHS`] and that it can run `recipe`:
/// FP8 storage (weights, activations or `fp8_attention`) needs FP8 tensor cores, sm_89 or newer.
pub fn check_arch(arch: &str, recipe: &Recipe) -> Result<(), CompileError> {
    if !KNOWN_ARCHS.contains(&arch) {
        return Err(CompileError::Options(format!(
            "--arch {arch}: not a GPU arch NVRTC compiles for; use one of {}",
            KNOWN_ARCHS.join(", ")
        )));
    }
    let fp8 = |l: &quant::recipe::LayerQuant| {
        [l.weight, l.activation].iter().flatten().any(|s| matches!(s.storage, ir::DType::F8E4M3 | ir::DType::F8E5M2))
    };
    let uses_fp8 = recipe.fp8_attention || fp8(&recipe.linear) || recipe.layers.values().any(fp8);
    if uses_fp8 && sm_of(arch)? < 89 {
        return Err(CompileError::Options(format!(
            "--arch {arch}: {arch} has no FP8 tensor cores, which recipe `{}` needs; use sm_89 or newer, or a recipe without FP8 (fp16, int8-sq, w8a16, w4a16-*)",
            recipe.name
        )));
    }
    Ok(())
}

/// `sm_90a` → 90.
fn sm_of(arch: &str) -> Result<u32, CompileError> {
    arch.strip_prefix("sm_")
        .map(|s| s.trim_end_matches(['a', 'f']))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| CompileError::Options(format!("`{arch}` is not a real GPU arch such as sm_90a")))
}

fn weight_len(w: &WeightMeta) -> u64 {
    crate::runtime::tensor::dense_bytes(&w.dtype, w.shape.iter().product()).unwrap_or(0)
}

/// Compiles every distinct kernel (in parallel, through the cache) and adds its CUBIN section.
/// Returns kernel name → index in `meta.kernels`, and where each CUBIN came from.
fn add_kernels(
    builder: &mut PlanBuilder<'static>,
    program: &Program,
    arch: &str,
    sm: u32,
    opts: &CompileOptions,
) -> Result<(std::collections::HashMap<String, u32>, Vec<Origin>), CompileError> {
    let cache = KernelCache::new(opts.kernel_cache.clone());
    let kernels: Vec<&KernelDef> = program.kernels();
    let bar = crate::progress::bar(kernels.len() as u64, "kernels", format!("NVRTC for {arch}"), !opts.progress);
    let cubins: Vec<(Vec<u8>, Origin)> =
        kernels.par_iter().map(|k| cache.cubin(&k.name, &k.source, arch).inspect(|_| bar.inc(1))).collect::<Result<_, NvrtcError>>()?;
    bar.finish_and_clear();
    let mut index = std::collections::HashMap::new();
    let mut origins = Vec::new();
    for (k, (cubin, origin)) in kernels.into_iter().zip(cubins) {
        index.insert(k.name.clone(), push_kernel(builder, k, cubin, sm));
        origins.push(origin);
    }
    Ok((index, origins))
}

/// The first SM version with programmatic dependent launch (`griddepcontrol`): Hopper.
const PDL_MIN_SM: u32 = 90;

/// Adds `k`'s CUBIN section and its entry in `meta.kernels` (and in `meta.pdl_kernels` when the
/// kernel supports programmatic dependent launch and `sm` has it); returns its kernel index.
fn push_kernel(builder: &mut PlanBuilder<'static>, k: &KernelDef, cubin: Vec<u8>, sm: u32) -> u32 {
    let section = builder.add_section(SectionKind::Cubin, format!("cubin.{}", k.name), cubin);
    let meta = KernelMeta {
        name: k.name.clone(),
        template: k.template.to_string(),
        source: k.source.clone(),
        section,
        grid: k.grid.clone(),
        block: k.block,
        shared_mem_bytes: k.smem_bytes,
        params: k.params.clone(),
    };
    let index = builder.meta().kernels.len() as u32;
    builder.meta_mut().kernels.push(meta);
    if k.pdl && sm >= PDL_MIN_SM {
        builder.meta_mut().pdl_kernels.push(index);
    }
    index
}

/// One buffer per value with storage; returns value → buffer index.
fn add_buffers(builder: &mut PlanBuilder<'static>, graph: &Graph, mem: &MemoryPlan) -> std::collections::HashMap<ValueId, u32> {
    let mut values: Vec<ValueId> = mem.slot_of.keys().copied().collect();
    values.sort();
    let mut index = std::collections::HashMap::new();
    for v in values {
        let slot = &mem.slots[mem.slot_of[&v]];
        let ty = graph.ty(v);
        index.insert(v, builder.meta().buffers.len() as u32);
        builder.meta_mut().buffers.push(BufferMeta {
            name: v.to_string(),
            dtype: ty.dtype.to_string(),
            shape: dims(graph, v),
            bytes: memory::max_bytes(graph, v),
            offset: slot.offset,
        });
    }
    index
}

fn dims(graph: &Graph, v: ValueId) -> Vec<DimExpr> {
    graph.shape(v).iter().map(|&d| dim_expr(graph, d)).collect()
}

/// Adds a section for every weight or literal a launch reads; returns value → weight index.
fn add_weights(
    builder: &mut PlanBuilder<'static>,
    graph: &Graph,
    program: &Program,
    store: &dyn WeightSource,
) -> Result<std::collections::HashMap<ValueId, u32>, CompileError> {
    let mut index = std::collections::HashMap::new();
    for (_, launch) in program.launches() {
        for arg in &launch.args {
            let Arg::Value(v) = *arg else { continue };
            let root = program.root(v);
            if index.contains_key(&root) || !memory::is_constant(graph, root) {
                continue;
            }
            let ty = graph.ty(root);
            // One weight at a time: a packed derived tensor's bytes are copied as they are, any
            // other tensor is read, encoded and dropped, so the plan holds storage bytes only.
            let (name, dtype, shape, encoded) = match &graph.producer(root).op {
                Op::Weight { name } => match store.storage_bytes(name) {
                    Some((dtype, shape, bytes)) => (name.clone(), dtype, shape, bytes),
                    None => {
                        let t = store.weight(name).map_err(|reason| CompileError::Weight { name: name.clone(), reason })?;
                        (name.clone(), t.dtype, t.shape.clone(), bytes::encode(&t))
                    }
                },
                Op::Scalar { value } => {
                    let t = crate::interp::Tensor::from_f32_as(ty.dtype, vec![], vec![*value as f32]);
                    (format!("literal {root}"), t.dtype, vec![], bytes::encode(&t))
                }
                _ => unreachable!("is_constant"),
            };
            if dtype != ty.dtype || shape.iter().map(|&d| d as u64).ne(max_extents(graph, &ty.shape)) {
                return Err(CompileError::Weight {
                    name,
                    reason: format!("stored as {dtype}{shape:?}, the graph expects {}", ir::shape_text(&ty.shape)),
                });
            }
            let section = builder.add_section(SectionKind::Weights, name.clone(), encoded);
            let shape = shape.iter().map(|&d| d as u64).collect();
            index.insert(root, builder.meta().weights.len() as u32);
            builder.meta_mut().weights.push(WeightMeta { name, dtype: ty.dtype.to_string(), shape, section });
        }
    }
    Ok(index)
}

fn add_schedule(
    builder: &mut PlanBuilder<'static>,
    graph: &Graph,
    program: &Program,
    kernels: &std::collections::HashMap<String, u32>,
    buffers: &std::collections::HashMap<ValueId, u32>,
    weights: &std::collections::HashMap<ValueId, u32>,
) -> Result<(), CompileError> {
    for (node, launch) in program.launches() {
        let n = &graph.nodes[node];
        let args = launch
            .args
            .iter()
            .map(|a| match a {
                Arg::Value(v) => Ok(match weights.get(&program.root(*v)) {
                    Some(&w) => ArgRef::Weight(w),
                    None => ArgRef::Buffer(buffers[v]),
                }),
                Arg::Scalar(s) => Ok(ArgRef::Scalar(s.clone())),
                // The paged KV cache's pools and page table belong to the generator (format 2.0).
                Arg::KvPool(i) => Ok(ArgRef::KvPool(*i)),
                Arg::PageTable => Ok(ArgRef::PageTable),
                // Format 2.1: the generator's split-KV scratch, sized by `split_scratch_bytes`;
                // 2.2: the same, zeroed once, for launches that keep completion counters in it.
                Arg::SplitScratch { counters: 0, .. } => Ok(ArgRef::SplitScratch),
                Arg::SplitScratch { .. } => Ok(ArgRef::SplitScratchZeroed),
            })
            .collect::<Result<Vec<_>, CompileError>>()?;
        let results: Vec<String> = n.outputs.iter().map(|v| v.to_string()).collect();
        let label = format!("{} {} ({})", n.op.mnemonic(), n.name.as_deref().unwrap_or("-"), results.join(", "));
        // The node's results this launch takes as arguments: the kernels write those (a node of
        // several launches, e.g. an attention's append and its attention, writes each result in
        // the launch that has it, and the per-kernel check judges it there).
        let writes = n.outputs.iter().filter(|v| launch.args.contains(&Arg::Value(**v))).filter_map(|v| buffers.get(v).copied()).collect();
        let meta = builder.meta_mut();
        let index = u32::try_from(meta.schedule.len()).expect("fewer than 2^32 launches");
        if let Some(when) = &launch.when {
            meta.launch_guards.push(LaunchGuard { launch: index, when: when.clone() });
        }
        // Format 2.3: how the kernel sums, where it is not IEEE f32 (`qfuse check` sums alike).
        if let Some(sums) = launch.kernel.sums {
            meta.launch_sums.push(LaunchSums { launch: index, sums });
        }
        meta.schedule.push(LaunchMeta { kernel: kernels[&launch.kernel.name], args, label, writes });
    }
    Ok(())
}

fn add_signature(builder: &mut PlanBuilder<'static>, graph: &Graph, buffers: &std::collections::HashMap<ValueId, u32>) {
    let sig = |name: &str, v: ValueId| TensorSig {
        name: name.to_string(),
        dtype: graph.ty(v).dtype.to_string(),
        shape: dims(graph, v),
        buffer: buffers[&v],
    };
    let inputs: Vec<TensorSig> = graph.inputs().into_iter().filter(|(_, v)| buffers.contains_key(v)).map(|(n, v)| sig(n, v)).collect();
    let outputs: Vec<TensorSig> = graph.outputs.iter().map(|(n, v)| sig(n, *v)).collect();
    builder.meta_mut().inputs = inputs;
    builder.meta_mut().outputs = outputs;
}

/// The argument list printed for humans (`inspect`): `%3`, `@weight`, `B*S`.
pub fn describe_scalar(s: &Scalar) -> String {
    match s {
        Scalar::F32(v) => format!("{v}"),
        Scalar::I32(v) => format!("{v}"),
        Scalar::I64(v) => format!("{v}"),
        Scalar::Dim(e) => e.to_string(),
    }
}
