//! The plan's metadata ([`PlanMeta`]) and section table ([`SectionEntry`]): plain serde data,
//! encoded with postcard by this module only.
//!
//! postcard is not self-describing: the byte stream is the fields in declaration order, so the
//! schema is versioned by the header's format version. Format 1.0 is the schema below. A minor
//! version may only append fields at the end of [`PlanMeta`] (a reader of an older minor decodes
//! its known prefix and ignores the rest); anything else (a field removed, reordered, retyped, a
//! field added to a nested struct, a new enum variant) is a new major. Format 1.1 appended
//! [`PlanMeta::launch_guards`] ([`decode_meta`] reads 1.0 metadata with an empty table).
//! Two exceptions keep format 2.1 a minor: [`DecoderMeta`] is the last field of [`PlanMeta`],
//! so appending to it appends to the stream whenever a plan has one (2.1 appended
//! [`DecoderMeta::split_scratch_bytes`]; [`decode_meta`] reads 2.0 metadata with 0), and a new
//! last variant of [`ArgRef`] leaves every older encoding valid (2.1 appended
//! [`ArgRef::SplitScratch`]); a 2.0 reader rejects a 2.1 plan that uses it with a metadata
//! decoding error. Format 2.2 appended [`PlanMeta::pdl_kernels`] after [`PlanMeta::decoder`]
//! (so from 2.2 on, a field appended to [`DecoderMeta`] no longer ends the stream: that is a new
//! major) and the last [`ArgRef`] variant [`ArgRef::SplitScratchZeroed`], which a 2.1 reader
//! likewise refuses to decode. Format 2.3 appended [`PlanMeta::launch_sums`] (how each GEMM
//! launch's kernel sums its products); 2.2 and older metadata reads with an empty table, and a 2.2
//! reader ignores it.

use serde::{Deserialize, Serialize};

use super::decoder::DecoderMeta;
use super::dim::DimExpr;
use super::header::FormatVersion;

/// Alignment of every section's offset, so a section can be memory-mapped on its own (a page).
pub const SECTION_ALIGN: u64 = 4096;

/// Everything about a compiled model except the raw CUBINs and weights, which live in sections.
///
/// Besides what the runtime needs (signature, kernels, buffers, weights, schedule), it keeps the
/// recipe, the calibration statistics, the fusion report, the final IR text and every kernel's
/// CUDA source, so a plan found in production can be debugged and rebuilt from any stage.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PlanMeta {
    /// qfuse version that compiled the plan; must equal the header's.
    pub qfuse_version: String,
    /// Target GPU arch, e.g. `sm_90a`; must equal the header's.
    pub arch: String,
    /// NVRTC `(major, minor)` that compiled the CUBINs; each must fit a u16 (the header's field).
    pub nvrtc_version: (u32, u32),
    /// Name of the model (e.g. the Hugging Face folder name).
    pub model_name: String,
    /// The quantization recipe, as JSON text.
    pub recipe: String,
    /// Calibration statistics, as JSON text.
    pub calibration: String,
    /// What the fusion passes did, as JSON text.
    pub fusion_report: String,
    /// The final (fused, scheduled) IR in its text format.
    pub ir_text: String,
    /// Model inputs, in call order.
    pub inputs: Vec<TensorSig>,
    /// Model outputs, in result order.
    pub outputs: Vec<TensorSig>,
    /// Every shape symbol with its largest supported value, e.g. `("B", 64)`.
    pub symbols: Vec<(String, u64)>,
    /// Compiled kernels; [`LaunchMeta::kernel`] indexes this.
    pub kernels: Vec<KernelMeta>,
    /// Activation buffers carved out of one arena; [`ArgRef::Buffer`] indexes this.
    pub buffers: Vec<BufferMeta>,
    /// Size of the activation arena at the largest symbol values, in bytes.
    pub peak_activation_bytes: u64,
    /// Weights; [`ArgRef::Weight`] indexes this.
    pub weights: Vec<WeightMeta>,
    /// Kernel launches, in order.
    pub schedule: Vec<LaunchMeta>,
    /// Format 1.1: launches that run only for some shapes (e.g. a GEMV for at most 16 rows and a
    /// GEMM above), at most one guard per launch, in schedule order. Launches without a guard
    /// always run. Guarded alternatives write the same buffers with the same values up to f32
    /// summation order, so a 1.0 reader, which ignores this table and runs every launch, still
    /// computes the model (only slower).
    pub launch_guards: Vec<LaunchGuard>,
    /// Format 2.0: a decoder's paged KV cache, special tokens, generation defaults and sampling
    /// kernel; `None` for encoders (and every 1.x plan).
    pub decoder: Option<DecoderMeta>,
    /// Format 2.2: the kernels (indices into [`PlanMeta::kernels`], strictly increasing) that the
    /// runtime may launch with programmatic stream serialization (PDL, sm_90 and newer): each
    /// executes `griddepcontrol.wait` before its first global read or write
    /// ([`crate::codegen::kernel::PDL_TEMPLATES`]), so it may be scheduled while the kernel
    /// before it still runs. Empty in older plans: every launch is then in plain stream order.
    /// An older reader ignores the field and runs the plan unchanged, only without the overlap.
    pub pdl_kernels: Vec<u32>,
    /// Format 2.3: the launches whose kernels do not sum their products in IEEE f32 (tensor-core
    /// GEMMs), each with how it sums them, in strictly increasing launch order. A launch not
    /// listed sums in f32 (CUDA-core FMAs, or exact integer sums) — and so, in plans before 2.3,
    /// every launch: their `qfuse check` judges each kernel against f32 sums within its dtype's
    /// tolerance, as it always did. An older reader ignores the field (it does not change how
    /// a plan runs).
    pub launch_sums: Vec<LaunchSums>,
}

impl PlanMeta {
    /// Empty metadata for `model_name` on `arch`, stamped with this qfuse's version.
    pub fn new(model_name: impl Into<String>, arch: impl Into<String>, nvrtc_version: (u32, u32)) -> Self {
        Self {
            qfuse_version: super::QFUSE_VERSION.into(),
            arch: arch.into(),
            nvrtc_version,
            model_name: model_name.into(),
            ..Self::default()
        }
    }

    /// Checks every index against the tables it points into and the section kinds it expects.
    pub(crate) fn check_refs(&self, sections: &[SectionEntry]) -> Result<(), String> {
        let section = |what: &str, i: u32, kind: SectionKind| match sections.get(i as usize) {
            Some(s) if s.kind == kind => Ok(()),
            Some(s) => Err(format!("{what} refers to section {i} `{}` of kind {:?}, expected {kind:?}", s.name, s.kind)),
            None => Err(format!("{what} refers to section {i}, but there are {}", sections.len())),
        };
        for k in &self.kernels {
            section(&format!("kernel `{}`", k.name), k.section, SectionKind::Cubin)?;
        }
        for w in &self.weights {
            section(&format!("weight `{}`", w.name), w.section, SectionKind::Weights)?;
        }
        self.check_buffers()?;
        for (n, launch) in self.schedule.iter().enumerate() {
            self.check_launch(n, launch)?;
        }
        self.check_guards()?;
        self.check_pdl_kernels()?;
        self.check_launch_sums()?;
        self.check_decoder()
    }

    /// Whether kernel `kernel` may be launched with programmatic stream serialization.
    pub fn pdl_kernel(&self, kernel: usize) -> bool {
        self.pdl_kernels.binary_search(&(kernel as u32)).is_ok()
    }

    fn check_pdl_kernels(&self) -> Result<(), String> {
        for (i, &k) in self.pdl_kernels.iter().enumerate() {
            if k as usize >= self.kernels.len() {
                return Err(format!("PDL kernel {i} is kernel {k} out of {}", self.kernels.len()));
            }
            if i > 0 && self.pdl_kernels[i - 1] >= k {
                return Err(format!("PDL kernel {i} (kernel {k}) is not in strictly increasing order"));
            }
        }
        Ok(())
    }

    /// How launch `index` sums its products, where it is not in IEEE f32 ([`PlanMeta::launch_sums`]).
    pub fn sums_of(&self, index: usize) -> Option<Sums> {
        let at = self.launch_sums.binary_search_by_key(&index, |l| l.launch as usize).ok()?;
        Some(self.launch_sums[at].sums)
    }

    /// The entries of a per-launch table (`what`: launch guards, launch sums) name launches of the
    /// schedule, in strictly increasing order.
    fn check_launch_table(&self, what: &str, launches: impl Iterator<Item = u32>) -> Result<(), String> {
        let mut previous = None;
        for (i, launch) in launches.enumerate() {
            if launch as usize >= self.schedule.len() {
                return Err(format!("{what} {i} refers to launch {launch} out of {}", self.schedule.len()));
            }
            if previous.is_some_and(|p| p >= launch) {
                return Err(format!("{what} {i} (launch {launch}) is not in strictly increasing launch order"));
            }
            previous = Some(launch);
        }
        Ok(())
    }

    fn check_launch_sums(&self) -> Result<(), String> {
        self.check_launch_table("launch sums", self.launch_sums.iter().map(|l| l.launch))?;
        for (i, l) in self.launch_sums.iter().enumerate() {
            if let Sums::Promoted { every: 0, .. } = l.sums {
                return Err(format!("launch sums {i} (launch {}) promote every 0 elements", l.launch));
            }
        }
        Ok(())
    }

    fn check_decoder(&self) -> Result<(), String> {
        let Some(d) = &self.decoder else { return Ok(()) };
        if d.sample_kernel as usize >= self.kernels.len() {
            return Err(format!("decoder: sampling kernel {} out of {}", d.sample_kernel, self.kernels.len()));
        }
        if !d.kv.page_size.is_power_of_two() || d.kv.max_pages == 0 {
            return Err(format!("decoder: page size {} must be a power of two and max_pages {} positive", d.kv.page_size, d.kv.max_pages));
        }
        for s in &d.kv.slots {
            if s.page_bytes(d.kv.page_size).is_none() {
                return Err(format!("decoder: KV slot `{}` has an unknown dtype `{}` or an absurd page", s.input, s.dtype));
            }
        }
        if !self.outputs.iter().any(|o| o.name == d.logits) {
            return Err(format!("decoder: logits output `{}` is not an output of the plan", d.logits));
        }
        let splits =
            self.schedule.iter().position(|l| l.args.iter().any(|a| matches!(a, ArgRef::SplitScratch | ArgRef::SplitScratchZeroed)));
        if let (Some(n), 0) = (splits, d.split_scratch_bytes) {
            return Err(format!("decoder: launch {n} uses the split-KV scratch but split_scratch_bytes is 0"));
        }
        Ok(())
    }

    /// The guard of launch `index`, if it has one.
    pub fn guard_of(&self, index: usize) -> Option<&Guard> {
        self.launch_guards.iter().find(|g| g.launch as usize == index).map(|g| &g.when)
    }

    fn check_guards(&self) -> Result<(), String> {
        self.check_launch_table("launch guard", self.launch_guards.iter().map(|g| g.launch))?;
        for g in &self.launch_guards {
            self.check_symbols(&format!("guard of launch {}", g.launch), g.when.rows())?;
        }
        Ok(())
    }

    fn check_launch(&self, n: usize, launch: &LaunchMeta) -> Result<(), String> {
        let bad = |what: String| Err(format!("launch {n}: {what}"));
        if launch.kernel as usize >= self.kernels.len() {
            return bad(format!("kernel {} out of {}", launch.kernel, self.kernels.len()));
        }
        let kernel = &self.kernels[launch.kernel as usize];
        if launch.args.len() != kernel.params.len() {
            return bad(format!("{} arguments for kernel `{}` of {} parameters", launch.args.len(), kernel.name, kernel.params.len()));
        }
        for (arg, param) in launch.args.iter().zip(&kernel.params) {
            let ok_type = match arg {
                ArgRef::Weight(_)
                | ArgRef::Buffer(_)
                | ArgRef::KvPool(_)
                | ArgRef::PageTable
                | ArgRef::SplitScratch
                | ArgRef::SplitScratchZeroed => param.ty == ParamType::Ptr,
                ArgRef::Scalar(Scalar::F32(_)) => param.ty == ParamType::F32,
                ArgRef::Scalar(Scalar::I32(_)) => param.ty == ParamType::I32,
                ArgRef::Scalar(Scalar::I64(_)) => param.ty == ParamType::I64,
                ArgRef::Scalar(Scalar::Dim(_)) => matches!(param.ty, ParamType::I32 | ParamType::I64),
            };
            if !ok_type {
                return bad(format!("argument {arg:?} does not fit parameter `{}` of type {:?}", param.name, param.ty));
            }
            match arg {
                ArgRef::Weight(i) if *i as usize >= self.weights.len() => {
                    return bad(format!("weight {i} out of {}", self.weights.len()));
                }
                ArgRef::Buffer(i) if *i as usize >= self.buffers.len() => {
                    return bad(format!("buffer {i} out of {}", self.buffers.len()));
                }
                ArgRef::Scalar(Scalar::Dim(e)) => self.check_symbols(&format!("launch {n}"), e)?,
                ArgRef::KvPool(i) if self.decoder.as_ref().is_none_or(|d| *i as usize >= d.kv.slots.len()) => {
                    return bad(format!("KV pool {i} out of the plan's KV-cache slots"));
                }
                ArgRef::PageTable if self.decoder.is_none() => return bad("reads a page table, but the plan has no KV cache".into()),
                ArgRef::SplitScratch | ArgRef::SplitScratchZeroed if self.decoder.is_none() => {
                    return bad("uses the split-KV scratch, but the plan has no KV cache".into())
                }
                _ => {}
            }
        }
        for &w in &launch.writes {
            if w as usize >= self.buffers.len() {
                return bad(format!("writes buffer {w} out of {}", self.buffers.len()));
            }
        }
        for (i, d) in kernel.grid.iter().enumerate() {
            self.check_symbols(&format!("kernel `{}` grid[{i}]", kernel.name), d)?;
        }
        Ok(())
    }

    fn check_symbols(&self, what: &str, e: &DimExpr) -> Result<(), String> {
        for s in e.symbols() {
            if !self.symbols.iter().any(|(name, _)| name == s) {
                return Err(format!("{what}: `{e}` uses unknown symbol `{s}`"));
            }
        }
        Ok(())
    }

    /// The buffers of the inputs and outputs, and of every buffer, checked against the arena.
    pub(crate) fn check_buffers(&self) -> Result<(), String> {
        for sig in self.inputs.iter().chain(&self.outputs) {
            if sig.buffer as usize >= self.buffers.len() {
                return Err(format!("`{}` refers to buffer {} out of {}", sig.name, sig.buffer, self.buffers.len()));
            }
        }
        for b in &self.buffers {
            let end = b.offset.checked_add(b.bytes);
            if end.is_none_or(|end| end > self.peak_activation_bytes) {
                return Err(format!(
                    "buffer `{}` [{}, +{}) lies outside the {}-byte arena",
                    b.name, b.offset, b.bytes, self.peak_activation_bytes
                ));
            }
        }
        Ok(())
    }
}

/// A model input or output: bound by name, stored in an arena buffer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSig {
    /// Name the caller binds it by.
    pub name: String,
    /// Element type as the IR prints it, e.g. `f16`, `i64`.
    pub dtype: String,
    /// Dims outermost first, over [`PlanMeta::symbols`].
    pub shape: Vec<DimExpr>,
    /// The arena buffer that holds it ([`PlanMeta::buffers`]).
    pub buffer: u32,
}

/// The type of a kernel parameter, as the kernel declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ParamType {
    /// A device pointer (`const T*` / `T*`).
    Ptr,
    /// `int`.
    I32,
    /// `long long`.
    I64,
    /// `float`.
    F32,
}

/// One kernel parameter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ParamMeta {
    /// Name in the kernel's signature.
    pub name: String,
    /// Its type.
    pub ty: ParamType,
}

/// A compiled kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelMeta {
    /// Entry point name in the CUBIN: `<template>_<16 hex digits>` (content hash), e.g. `gemm_1f0c…`.
    pub name: String,
    /// The template family it was generated from, e.g. `gemm`, `layernorm`.
    pub template: String,
    /// The complete CUDA C source that NVRTC compiled.
    pub source: String,
    /// Index of its CUBIN section.
    pub section: u32,
    /// Grid dimensions (x, y, z), over the shape symbols.
    pub grid: [DimExpr; 3],
    /// Block dimensions (x, y, z).
    pub block: [u32; 3],
    /// Dynamic shared memory in bytes.
    pub shared_mem_bytes: u32,
    /// Parameters, in the order the kernel takes them.
    pub params: Vec<ParamMeta>,
}

/// An activation buffer inside the arena: the storage of one IR value (views share offsets).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BufferMeta {
    /// The IR value it holds, e.g. `%18`.
    pub name: String,
    /// Element type as the IR prints it.
    pub dtype: String,
    /// Dims outermost first, over [`PlanMeta::symbols`].
    pub shape: Vec<DimExpr>,
    /// Size in bytes at the largest symbol values.
    pub bytes: u64,
    /// Offset in the arena in bytes (a multiple of 256).
    pub offset: u64,
}

/// A weight tensor stored in a section.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WeightMeta {
    /// Name in the IR (`@name`).
    pub name: String,
    /// Stored element type, e.g. `i8`, `f8e4m3`, `f16`.
    pub dtype: String,
    /// Dims outermost first.
    pub shape: Vec<u64>,
    /// Index of its Weights section.
    pub section: u32,
}

/// One kernel launch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchMeta {
    /// Index into [`PlanMeta::kernels`].
    pub kernel: u32,
    /// Arguments, matching the kernel's `params`.
    pub args: Vec<ArgRef>,
    /// What it computes, for humans: the IR node's location and results, e.g.
    /// `qmatmul encoder.layer.0.attention.self.query (%18)`.
    pub label: String,
    /// The buffers this launch writes (the IR node's results it takes as arguments), for
    /// per-kernel checks.
    pub writes: Vec<u32>,
}

/// A tensor-core instruction family whose sums were measured bit for bit on the hardware (the
/// models themselves, `interp::tensor_core`, belong to the compiler; the plan names them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TensorCoreModel {
    /// The H100's f16 MMAs with f32 accumulators (`mma.sync.m16n8k16`, `wgmma…k16.f32.f16.f16`):
    /// 16 products and the accumulator per step (`interp::tensor_core::H100_F16`).
    H100F16,
    /// The H100's FP8 `wgmma…k32.f32.e4m3.e4m3`: 32 products and the accumulator per step, about
    /// 14 bits kept (`interp::tensor_core::H100_E4M3`).
    H100E4M3,
}

/// How a kernel sums the products of each output element ([`PlanMeta::launch_sums`]), all of K
/// in k order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Sums {
    /// One tensor-core accumulator chained over all of K, from 0.
    TensorCore(TensorCoreModel),
    /// K in consecutive chunks of `every` elements, each summed by the tensor cores from 0 and
    /// added to an f32 total (IEEE round-to-nearest, from 0, in k order): an FP8 `wgmma`
    /// mainloop with promotion.
    Promoted {
        /// The tensor cores' sums inside a chunk.
        model: TensorCoreModel,
        /// Elements of K per chunk (positive).
        every: u32,
    },
}

impl std::fmt::Display for TensorCoreModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TensorCoreModel::H100F16 => "H100 f16 tensor cores",
            TensorCoreModel::H100E4M3 => "H100 FP8 tensor cores",
        })
    }
}

impl std::fmt::Display for Sums {
    /// `H100 FP8 tensor cores, promoted to f32 every 128`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sums::TensorCore(model) => write!(f, "{model}, chained over K"),
            Sums::Promoted { model, every } => write!(f, "{model}, promoted to f32 every {every}"),
        }
    }
}

/// Launch [`PlanMeta::schedule`]`[launch]` sums its products as `sums` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchSums {
    /// Index into [`PlanMeta::schedule`].
    pub launch: u32,
    /// How its kernel sums.
    pub sums: Sums,
}

/// A condition on the shape symbols under which a launch runs ([`PlanMeta::launch_guards`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Guard {
    /// Runs when `rows ≤ max` (e.g. a GEMV for small M).
    RowsAtMost {
        /// The row count, over the shape symbols (e.g. `B*S`).
        rows: DimExpr,
        /// Largest row count it runs for.
        max: u64,
    },
    /// Runs when `rows > min` (the alternative of a [`Guard::RowsAtMost`] with `max = min`).
    RowsAbove {
        /// The row count, over the shape symbols.
        rows: DimExpr,
        /// Largest row count it does not run for.
        min: u64,
    },
    /// Format 2.0: runs when `min < rows ≤ max` (a middle shape bucket).
    RowsBetween {
        /// The row count, over the shape symbols.
        rows: DimExpr,
        /// Largest row count it does not run for.
        min: u64,
        /// Largest row count it runs for.
        max: u64,
    },
}

impl Guard {
    /// The row expression the guard tests.
    pub fn rows(&self) -> &DimExpr {
        match self {
            Guard::RowsAtMost { rows, .. } | Guard::RowsAbove { rows, .. } | Guard::RowsBetween { rows, .. } => rows,
        }
    }

    /// Whether the launch runs for these symbol values; an error if `rows` cannot be evaluated.
    pub fn holds(&self, symbols: &[(String, u64)]) -> Result<bool, String> {
        let rows = self.rows().eval_with(symbols)?;
        Ok(match self {
            Guard::RowsAtMost { max, .. } => rows <= *max,
            Guard::RowsAbove { min, .. } => rows > *min,
            Guard::RowsBetween { min, max, .. } => rows > *min && rows <= *max,
        })
    }
}

impl std::fmt::Display for Guard {
    /// `B*S <= 16`, `B*S > 16`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Guard::RowsAtMost { rows, max } => write!(f, "{rows} <= {max}"),
            Guard::RowsAbove { rows, min } => write!(f, "{rows} > {min}"),
            Guard::RowsBetween { rows, min, max } => write!(f, "{min} < {rows} <= {max}"),
        }
    }
}

/// Launch [`PlanMeta::schedule`]`[launch]` runs only when `when` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchGuard {
    /// Index into [`PlanMeta::schedule`].
    pub launch: u32,
    /// The condition.
    pub when: Guard,
}

/// What a launch argument refers to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ArgRef {
    /// Device pointer to [`PlanMeta::weights`]`[i]`.
    Weight(u32),
    /// Device pointer to [`PlanMeta::buffers`]`[i]` in the arena.
    Buffer(u32),
    /// A scalar passed by value.
    Scalar(Scalar),
    /// Format 2.0: device pointer to the page pool of KV state slot `i`
    /// ([`super::KvCacheMeta::slots`]), owned by the generator.
    KvPool(u32),
    /// Format 2.0: device pointer to the run's page table (`i32[B, max_pages]`).
    PageTable,
    /// Format 2.1: device pointer to the generator's split-KV scratch of
    /// [`super::DecoderMeta::split_scratch_bytes`] bytes (f32 partials of a split decode attention,
    /// read back by the next launch).
    SplitScratch,
    /// Format 2.2: the same scratch, for a launch that also keeps completion counters in it (the
    /// split decode attention whose last CTA per KV head and sequence merges the partials): the
    /// runtime zeroes the scratch once when it allocates it, and every such launch leaves its
    /// counters zero again. A 2.1 reader, which does not zero the scratch, fails to decode a plan
    /// that uses this variant instead of running it wrongly.
    SplitScratchZeroed,
}

/// A scalar launch argument.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Scalar {
    /// A 32-bit float.
    F32(f32),
    /// A 32-bit integer.
    I32(i32),
    /// A 64-bit integer.
    I64(i64),
    /// A size evaluated at run time, passed as the parameter's integer type (checked to fit).
    Dim(DimExpr),
}

/// What a section holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SectionKind {
    /// A CUBIN (ELF) for one or more kernels.
    Cubin,
    /// Raw weight bytes, in the layout the kernels expect.
    Weights,
    /// Anything else (e.g. a PTX copy).
    Other,
}

/// One row of the section table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionEntry {
    /// What the section holds.
    pub kind: SectionKind,
    /// Name, for humans and error messages (`cubin.gemm_<16 hex digits>`, a weight name).
    pub name: String,
    /// Byte offset in the file; a multiple of `align`.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// crc32 (IEEE) of the bytes.
    pub crc32: u32,
    /// Alignment of `offset` ([`SECTION_ALIGN`] when written by this qfuse).
    pub align: u64,
}

/// Encodes a value with the plan's encoder.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    postcard::to_stdvec(value).map_err(|e| e.to_string())
}

/// Decodes the metadata written with format `found`, this reader being `ours`: as [`decode`],
/// except that metadata of an older format decodes with the fields appended since at their
/// defaults: format 1.0 ends before [`PlanMeta::launch_guards`] (1.1), 1.x before
/// [`PlanMeta::decoder`] (2.0), a 2.0 plan with decoder metadata before
/// [`DecoderMeta::split_scratch_bytes`] (2.1; 0), 2.0 and 2.1 before
/// [`PlanMeta::pdl_kernels`] (2.2; empty), and 2.2 and older before [`PlanMeta::launch_sums`]
/// (2.3; empty).
pub(crate) fn decode_meta(bytes: &[u8], found: FormatVersion, ours: FormatVersion) -> Result<PlanMeta, String> {
    // postcard encodes an empty Vec as its length, `None` as its tag and 0u64 as its varint: a
    // single 0 byte each. A 1.x plan's fields decode unchanged in 2.x (2.0 only appended fields
    // and enum variants); a 1.x plan has no decoder metadata, so it misses nothing of 2.1.
    let missing = match (found.major, found.minor) {
        (1, 0) => 4,
        (1, _) => 3,
        (2, 0) => return decode_2_0(bytes),
        (2, 1) => 2,
        (2, 2) => 1,
        _ => 0,
    };
    if missing > 0 {
        let completed: Vec<u8> = bytes.iter().copied().chain(std::iter::repeat_n(0, missing)).collect();
        return decode(&completed, found, ours);
    }
    decode(bytes, found, ours)
}

/// Format 2.0 metadata: complete with the 2.1 scratch size (one 0 byte) when the plan has decoder
/// metadata, which then ends the stream, and with the 2.2 PDL kernels and 2.3 launch sums (empty
/// lists, one 0 byte each).
fn decode_2_0(bytes: &[u8]) -> Result<PlanMeta, String> {
    let completed: Vec<u8> = bytes.iter().copied().chain([0, 0, 0]).collect();
    let (meta, rest) = take::<PlanMeta>(&completed)?;
    // Without decoder metadata the byte added for the scratch size is left over.
    let extra = rest.len().saturating_sub(usize::from(meta.decoder.is_none()));
    match (meta.decoder.is_some(), rest.len()) {
        (true, 0) | (false, 1) => Ok(meta),
        _ => Err(format!("{extra} unexpected trailing bytes")),
    }
}

/// Decodes metadata or a section table written with format `found`, this reader being `ours`.
///
/// Same or older version: the bytes must be consumed exactly. Newer minor: trailing bytes are
/// fields appended by that minor and are ignored. postcard bounds every length prefix by the
/// bytes left, so a hostile length is an error, never an allocation; the only recursive type,
/// [`DimExpr`], stops at [`super::dim::MAX_DIM_DEPTH`] levels, so hostile nesting is an error,
/// never a stack overflow.
pub(crate) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], found: FormatVersion, ours: FormatVersion) -> Result<T, String> {
    let (value, rest) = take::<T>(bytes)?;
    if !rest.is_empty() && (found.major, found.minor) <= (ours.major, ours.minor) {
        return Err(format!("{} unexpected trailing bytes", rest.len()));
    }
    Ok(value)
}

/// Decodes a `T` from the front of `bytes`; returns it and the bytes after it.
fn take<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<(T, &'a [u8]), String> {
    super::dim::take_depth_exceeded();
    postcard::take_from_bytes::<T>(bytes).map_err(|e| {
        if super::dim::take_depth_exceeded() {
            format!("a dimension expression is nested deeper than {} levels", super::dim::MAX_DIM_DEPTH)
        } else {
            e.to_string()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_0: FormatVersion = FormatVersion { major: 1, minor: 0 };
    const V1_3: FormatVersion = FormatVersion { major: 1, minor: 3 };

    #[test]
    fn appended_fields_of_a_newer_minor_are_ignored() {
        let meta = PlanMeta::new("m", "sm_90a", (13, 0));
        let mut bytes = encode(&meta).unwrap();
        bytes.extend_from_slice(&[7, 1, 2, 3]);
        assert_eq!(decode::<PlanMeta>(&bytes, V1_3, V1_0).unwrap(), meta);
        assert!(decode::<PlanMeta>(&bytes, V1_0, V1_0).unwrap_err().contains("trailing"));
    }

    const V2_0: FormatVersion = FormatVersion { major: 2, minor: 0 };
    const V2_1: FormatVersion = FormatVersion { major: 2, minor: 1 };
    const V2_2: FormatVersion = FormatVersion { major: 2, minor: 2 };
    const V2_3: FormatVersion = FormatVersion { major: 2, minor: 3 };

    #[test]
    fn format_1_x_metadata_decodes_without_later_fields() {
        let mut meta = PlanMeta::new("m", "sm_90a", (13, 0));
        meta.symbols = vec![("B".into(), 4)];
        let v1_1 = FormatVersion { major: 1, minor: 1 };
        let mut bytes = encode(&meta).unwrap();
        assert_eq!(bytes.pop(), Some(0), "the empty launch sums (2.3) are the last byte");
        assert_eq!(bytes.pop(), Some(0), "the empty PDL kernel list (2.2) is the byte before");
        assert_eq!(bytes.pop(), Some(0), "the absent decoder metadata (2.0) is the byte before");
        assert_eq!(decode_meta(&bytes, v1_1, V2_3).unwrap(), meta, "1.1 ends before the decoder metadata");
        assert_eq!(bytes.pop(), Some(0), "the empty guard table (1.1) is the byte before");
        assert_eq!(decode_meta(&bytes, V1_0, V2_3).unwrap(), meta, "1.0 ends before the guards");
        meta.launch_guards = vec![LaunchGuard { launch: 0, when: Guard::RowsAtMost { rows: DimExpr::sym("B"), max: 2 } }];
        meta.decoder = Some(DecoderMeta { vocab: 7, ..DecoderMeta::default() });
        assert_eq!(decode_meta(&encode(&meta).unwrap(), V2_3, V2_3).unwrap(), meta);
        assert!(decode_meta(&encode(&meta).unwrap(), v1_1, V2_3).unwrap_err().contains("trailing"), "a 1.1 plan cannot carry 2.0 fields");
    }

    #[test]
    fn format_2_0_metadata_decodes_with_no_split_scratch() {
        // An encoder: 2.0 and 2.1 end before the PDL kernels (and the launch sums after them).
        let encoder = PlanMeta::new("m", "sm_90a", (13, 0));
        let mut bytes = encode(&encoder).unwrap();
        assert_eq!(bytes.pop(), Some(0), "the empty launch sums are the last byte");
        assert_eq!(decode_meta(&bytes, V2_2, V2_3).unwrap(), encoder);
        assert_eq!(bytes.pop(), Some(0), "the empty PDL kernel list is the byte before");
        assert_eq!(decode_meta(&bytes, V2_0, V2_3).unwrap(), encoder);
        assert_eq!(decode_meta(&bytes, V2_1, V2_3).unwrap(), encoder);
        // A decoder: 2.0 ends before split_scratch_bytes.
        let mut meta = PlanMeta::new("m", "sm_90a", (13, 0));
        meta.decoder = Some(DecoderMeta { vocab: 7, split_scratch_bytes: 0, ..DecoderMeta::default() });
        let mut bytes = encode(&meta).unwrap();
        assert_eq!(bytes.pop(), Some(0), "the launch sums are the last byte");
        assert_eq!(bytes.pop(), Some(0), "the PDL kernels are the byte before");
        assert_eq!(bytes.pop(), Some(0), "the scratch size is the byte before");
        assert_eq!(decode_meta(&bytes, V2_0, V2_3).unwrap(), meta);
        // A 2.1 decoder with a scratch, read as 2.1; as 2.0 its last bytes are trailing.
        meta.decoder.as_mut().unwrap().split_scratch_bytes = 38016;
        let mut bytes = encode(&meta).unwrap();
        assert_eq!((bytes.pop(), bytes.pop()), (Some(0), Some(0)));
        assert_eq!(decode_meta(&bytes, V2_1, V2_3).unwrap(), meta);
        let e = decode_meta(&bytes, V2_0, V2_3).unwrap_err();
        assert!(e.contains("trailing"), "{e}");
        // A 2.0 encoder with one byte too many (read as the empty PDL list, the bytes completed
        // after it are left over).
        let mut padded = encode(&encoder).unwrap();
        padded.truncate(padded.len() - 2);
        padded.push(0);
        assert!(decode_meta(&padded, V2_0, V2_3).unwrap_err().contains("1 unexpected trailing"));
        // Metadata cut before the decoder tag is an error, never an arithmetic panic.
        let short = &encode(&encoder).unwrap()[..4];
        assert!(decode_meta(short, V2_0, V2_3).is_err());
    }

    #[test]
    fn format_2_2_records_the_pdl_kernels() {
        let mut meta = PlanMeta::new("m", "sm_90a", (13, 0));
        meta.kernels = vec![kernel("a"), kernel("b"), kernel("c")];
        meta.pdl_kernels = vec![0, 2];
        let mut bytes = encode(&meta).unwrap();
        assert_eq!(decode_meta(&bytes, V2_3, V2_3).unwrap(), meta);
        bytes.pop();
        assert_eq!(decode_meta(&bytes, V2_2, V2_3).unwrap(), meta, "2.2 ends after the PDL kernels");
        assert!(meta.pdl_kernel(2) && !meta.pdl_kernel(1));
        assert!(meta.check_pdl_kernels().is_ok());
        meta.pdl_kernels = vec![2, 0];
        assert!(meta.check_pdl_kernels().unwrap_err().contains("increasing"));
        meta.pdl_kernels = vec![3];
        assert!(meta.check_pdl_kernels().unwrap_err().contains("out of 3"));
    }

    #[test]
    fn format_2_3_records_how_launches_sum() {
        let mut meta = PlanMeta::new("m", "sm_90a", (13, 0));
        let launch = LaunchMeta { kernel: 0, args: vec![], label: "l".into(), writes: vec![] };
        meta.kernels = vec![kernel("a")];
        meta.schedule = vec![launch; 3];
        let promoted = Sums::Promoted { model: TensorCoreModel::H100E4M3, every: 128 };
        meta.launch_sums =
            vec![LaunchSums { launch: 0, sums: Sums::TensorCore(TensorCoreModel::H100F16) }, LaunchSums { launch: 2, sums: promoted }];
        let bytes = encode(&meta).unwrap();
        assert_eq!(decode_meta(&bytes, V2_3, V2_3).unwrap(), meta);
        assert_eq!(bytes[bytes.len() - 9..], [2, 0, 0, 0, 2, 1, 1, 128, 1][..], "three bytes per chained launch, five per promoted");
        assert_eq!(
            (meta.sums_of(0), meta.sums_of(1), meta.sums_of(2)),
            (Some(Sums::TensorCore(TensorCoreModel::H100F16)), None, Some(promoted))
        );
        assert_eq!(promoted.to_string(), "H100 FP8 tensor cores, promoted to f32 every 128");
        assert!(meta.check_launch_sums().is_ok());
        meta.launch_sums.reverse();
        assert!(meta.check_launch_sums().unwrap_err().contains("increasing"));
        meta.launch_sums = vec![LaunchSums { launch: 3, sums: promoted }];
        assert!(meta.check_launch_sums().unwrap_err().contains("out of 3"));
        meta.launch_sums = vec![LaunchSums { launch: 1, sums: Sums::Promoted { model: TensorCoreModel::H100E4M3, every: 0 } }];
        assert!(meta.check_launch_sums().unwrap_err().contains("every 0"));
    }

    fn kernel(name: &str) -> KernelMeta {
        KernelMeta {
            name: name.into(),
            template: "t".into(),
            source: String::new(),
            section: 0,
            grid: [DimExpr::Const(1), DimExpr::Const(1), DimExpr::Const(1)],
            block: [32, 1, 1],
            shared_mem_bytes: 0,
            params: vec![],
        }
    }

    #[test]
    fn guards_evaluate_rows() {
        let rows = DimExpr::sym("B").mul(DimExpr::sym("S"));
        let small = Guard::RowsAtMost { rows: rows.clone(), max: 16 };
        let large = Guard::RowsAbove { rows, min: 16 };
        let at = |b: u64, s: u64| vec![("B".to_string(), b), ("S".to_string(), s)];
        assert_eq!((small.holds(&at(4, 4)), large.holds(&at(4, 4))), (Ok(true), Ok(false)));
        assert_eq!((small.holds(&at(1, 17)), large.holds(&at(1, 17))), (Ok(false), Ok(true)));
        assert!(small.holds(&[]).is_err());
        assert_eq!((small.to_string(), large.to_string()), ("B*S <= 16".to_string(), "B*S > 16".to_string()));
        let middle = Guard::RowsBetween { rows: DimExpr::sym("B").mul(DimExpr::sym("S")), min: 16, max: 64 };
        assert_eq!(
            (middle.holds(&at(4, 4)), middle.holds(&at(4, 5)), middle.holds(&at(8, 8)), middle.holds(&at(8, 9))),
            (Ok(false), Ok(true), Ok(true), Ok(false))
        );
        assert_eq!(middle.to_string(), "16 < B*S <= 64");
    }

    #[test]
    fn hostile_length_prefix_is_an_error() {
        // model_name's length prefix claims 2^62 bytes.
        let mut bytes = encode(&PlanMeta::default()).unwrap();
        let hostile = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40];
        bytes.splice(4..5, hostile);
        assert!(decode::<PlanMeta>(&bytes, V1_0, V1_0).is_err());
    }
}
