//! The contract between per-op lowering and the rest of codegen.
//!
//! Every IR node lowers to a [`Lowered`]: zero or more kernel [`Launch`]es, a view of an operand
//! (reshape), or nothing (weights, inputs, literals). A launch names a [`KernelDef`] (a CUDA C
//! source rendered from `templates/`, its entry point, launch shape and parameter types) and its
//! arguments: IR values (device pointers to their storage: an arena buffer, an input, a weight)
//! and scalars (literals or sizes over the shape symbols).
//!
//! Storage conventions every kernel may rely on: a value is a dense row-major array of its IR
//! dtype (`f16`/`bf16` as 16-bit patterns, `f8e4m3`/`f8e5m2`/`i8`/`u8` as bytes, `i64`, `f32`)
//! with the shape the IR gives it at run time; every pointer is 256-byte aligned.
//!
//! Lowering is pure: the same node gives the same sources, so identical kernels (e.g. the same
//! GEMM in every layer) are compiled once.

use crate::ir::{Dim, Graph, NodeId, Op, Shape, ValueId};
use crate::plan::{DimExpr, Guard, ParamMeta, ParamType, Scalar, Sums};

/// A kernel: complete CUDA C source plus how to launch it.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelDef {
    /// Template it was rendered from (file stem in `templates/`), e.g. `layernorm`.
    pub template: &'static str,
    /// Entry point: `<template>_<16 hex digits>` ([`kernel_name`]).
    pub name: String,
    /// Complete, self-contained CUDA C (no include path needed).
    pub source: String,
    /// Grid (x, y, z), over the shape symbols. A zero dimension skips the launch.
    pub grid: [DimExpr; 3],
    /// Block (x, y, z).
    pub block: [u32; 3],
    /// Dynamic shared memory in bytes (above 48 KiB the runtime raises the function's limit).
    pub smem_bytes: u32,
    /// Parameters in signature order.
    pub params: Vec<ParamMeta>,
    /// The kernel may be launched with programmatic stream serialization (PDL): its template is
    /// one of [`PDL_TEMPLATES`], whose entry points call `qf_pdl_enter()` (common.cuh) before
    /// touching memory. Only such kernels may overlap the kernel launched before them.
    pub pdl: bool,
    /// How the kernel sums its products where that is not IEEE f32 (tensor-core GEMMs:
    /// [`crate::codegen::gemm::GemmSpec::sums`]); `None` for every other kernel. A plan records
    /// it per launch ([`crate::plan::PlanMeta::launch_sums`]) so `qfuse check` can sum as the
    /// kernel does.
    pub sums: Option<Sums>,
}

/// Templates (file stems in `templates/`) whose entry point calls `qf_pdl_enter()` as its first
/// statement (after at most L2 prefetches of plan constants, `qf_prefetch_l2`, which bring nothing
/// into the thread), before any global read or write: `griddepcontrol.wait`, then
/// `griddepcontrol.launch_dependents` (common.cuh). Their kernels are marked [`KernelDef::pdl`],
/// and a plan records them in [`crate::plan::PlanMeta::pdl_kernels`] (sm_90 and newer) so the
/// runtime launches them with programmatic stream serialization. A template must be listed here
/// only when its entry point makes that call (`tests/codegen_decoder.rs` checks every listed
/// template's source); one that is not listed is always launched in plain stream order.
pub const PDL_TEMPLATES: &[&str] = &[
    "attention",
    "elementwise",
    "embed_layernorm",
    "gather",
    "gemm",
    "gemm_skinny",
    "gemm_wonly",
    "iota",
    "kv_append",
    "l2_normalize",
    "last_token",
    "layernorm",
    "mean_pool",
    "paged_attention",
    "paged_prefill",
    "quantize",
    "rope",
    "sample",
    "softmax",
    "split_combine",
];

/// One argument of a launch.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    /// Device pointer to the storage of an IR value (activation, model input, weight, literal).
    Value(ValueId),
    /// A scalar by value.
    Scalar(Scalar),
    /// Device pointer to the paged KV-cache pool of graph state slot `i` (`graph.state[i]`):
    /// `[num_pages, KV, PAGE, D]` elements of the cache dtype, HND within a page. Owned by the
    /// runtime; see [`PagedKv`].
    KvPool(u32),
    /// Device pointer to the page table: i32 `[B, MAX_PAGES]`, row `b` listing the pages of the
    /// run's `b`-th sequence in order (token `t` lives in page `table[b·MAX_PAGES + t/PAGE]`, slot
    /// `t % PAGE`).
    PageTable,
    /// Device pointer to the runtime's split-KV scratch (f32 partials of a split decode
    /// attention, merged by its last CTA per KV head and sequence). The launch needs `bytes` at
    /// the largest shape; one buffer of the largest need serves every layer, since launches run
    /// in order on one stream and each finishes with it before the next starts. The first
    /// `counters` bytes (0: none) are completion counters: zero when the launch starts, zero again
    /// when it ends (the runtime zeroes the scratch once when it allocates it), so every launch
    /// that keeps counters must agree on `counters` (the compiler checks).
    SplitScratch {
        /// Bytes the launch uses at the largest shape, counters included.
        bytes: u64,
        /// Bytes of completion counters at the scratch's start.
        counters: u64,
    },
}

/// A kernel launch produced by lowering one node.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    /// What runs.
    pub kernel: KernelDef,
    /// Arguments, one per `kernel.params`.
    pub args: Vec<Arg>,
    /// Runs only for the shapes where this holds (`None`: always). Alternatives of one node (a
    /// GEMV for few rows, a GEMM for more) carry complementary guards and write the same results.
    pub when: Option<Guard>,
}

/// The lowering of one node.
#[derive(Debug, Clone, PartialEq)]
pub enum Lowered {
    /// Kernels run in order; together they write every result of the node.
    Launches(Vec<Launch>),
    /// The (single) result is the operand's storage seen with another shape (a view).
    Alias(ValueId),
    /// No code: the value is bound from outside (input, weight, literal) or unused.
    Nothing,
}

/// Why a node could not be lowered. Names the node so a user can find it in `--dump-ir-after`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("cannot generate a kernel for {node}: {reason}")]
pub struct LowerError {
    /// The node, printed as `%3 = layernorm loc("…")`.
    pub node: String,
    /// What is missing or wrong.
    pub reason: String,
}

/// Choices that change generated code (not its meaning beyond rounding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LowerOptions {
    /// FP8 GEMMs take the `mma.sync` mainloop (on sm_90: E4M3 converted exactly to f16 MMAs,
    /// sums close to f32's; `qfuse compile --fp8-accum exact`); `false` (the default,
    /// `--fp8-accum promoted`): Hopper's FP8 `wgmma`, each 128-deep k-tile summed in the tensor
    /// cores (~14-bit internal accumulation) and promoted into f32 registers, about 1.9× faster
    /// on BERT-large. Either way the plan records how each GEMM sums
    /// ([`crate::codegen::gemm::GemmSpec::sums`]) and `qfuse check` sums as it does.
    pub exact_fp8: bool,
    /// The decode attention's math (paged_attention.cu): warps take a tile's keys and lanes the
    /// head's columns (`true`, the default), or one thread per score as the prefill variant
    /// computes (`false`: `qfuse compile --decode-attention thread`, to time one against the
    /// other in one run).
    pub warp_decode: bool,
    /// Split-KV ranges of the decode attention: `None` sizes them to the GPU
    /// ([`crate::codegen::ops::decoder::decode_splits`]); `Some(n)` takes at most `n` (1: the
    /// unsplit kernel; `qfuse compile --decode-splits`, to time one against the other).
    pub decode_splits: Option<u32>,
}

impl Default for LowerOptions {
    fn default() -> Self {
        Self { exact_fp8: false, warp_decode: true, decode_splits: None }
    }
}

/// The runtime's paged KV cache, as far as code generation sees it: compile-time constants of
/// the kernels that read and write the pools ([`Arg::KvPool`], [`Arg::PageTable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagedKv {
    /// Tokens per page (PAGE).
    pub page_size: u32,
    /// Columns of the page table (MAX_PAGES): the most pages one sequence can hold.
    pub max_pages: u32,
}

/// Read-only view of the graph for lowering, with shape helpers.
pub struct LowerCx<'g> {
    /// The (fused, verified) graph.
    pub graph: &'g Graph,
    /// Target SM version, e.g. 90 for `sm_90a`.
    pub sm: u32,
    /// Code-generation choices.
    pub options: LowerOptions,
    /// The paged KV cache of a decoder plan; `None` for encoders (`causal_attention` is then an
    /// error).
    pub paged: Option<PagedKv>,
}

impl<'g> LowerCx<'g> {
    /// A context for `graph` targeting `sm` with default options and no paged KV cache.
    pub fn new(graph: &'g Graph, sm: u32) -> Self {
        Self { graph, sm, options: LowerOptions::default(), paged: None }
    }

    /// An error about `node`.
    pub fn error(&self, node: NodeId, reason: impl Into<String>) -> LowerError {
        let n = &self.graph.nodes[node];
        let results: Vec<String> = n.outputs.iter().map(|v| format!("%{}", v.index())).collect();
        let loc = n.name.as_deref().map(|l| format!(" loc(\"{l}\")")).unwrap_or_default();
        LowerError { node: format!("{} = {}{loc}", results.join(", "), n.op.mnemonic()), reason: reason.into() }
    }

    /// A dimension as an expression over the symbols.
    pub fn dim(&self, d: Dim) -> DimExpr {
        dim_expr(self.graph, d)
    }

    /// Every dimension of `v`'s shape.
    pub fn dims(&self, v: ValueId) -> Vec<DimExpr> {
        self.graph.shape(v).iter().map(|&d| self.dim(d)).collect()
    }

    /// The number of elements of `v`.
    pub fn numel(&self, v: ValueId) -> DimExpr {
        DimExpr::product(self.dims(v))
    }

    /// The number of elements of `v` over all but the last axis (the row count).
    pub fn rows(&self, v: ValueId) -> DimExpr {
        let dims = self.dims(v);
        DimExpr::product(dims[..dims.len().saturating_sub(1)].iter().cloned())
    }

    /// The last extent of `v` if it is fixed (row length of norms, N and K of GEMMs).
    pub fn fixed_last(&self, v: ValueId) -> Option<u64> {
        self.graph.shape(v).last().and_then(|d| d.fixed())
    }

    /// The largest value of `v`'s shape (symbols at their maxima).
    pub fn max_shape(&self, v: ValueId) -> Vec<u64> {
        max_extents(self.graph, self.graph.shape(v))
    }

    /// The literal value of `v` if a `scalar` node produces it.
    pub fn literal(&self, v: ValueId) -> Option<f64> {
        match self.graph.producer(v).op {
            Op::Scalar { value } => Some(value),
            _ => None,
        }
    }

    /// The checkpoint name of `v` if a `weight` node produces it.
    pub fn weight_name(&self, v: ValueId) -> Option<&'g str> {
        match &self.graph.producer(v).op {
            Op::Weight { name } => Some(name),
            _ => None,
        }
    }
}

/// A dimension of `graph` as an expression over its symbols (by name).
pub fn dim_expr(graph: &Graph, d: Dim) -> DimExpr {
    match d {
        Dim::Fixed(n) => DimExpr::Const(n),
        Dim::Sym(s) => DimExpr::sym(graph.symbols[s].name.clone()),
    }
}

/// Every extent of `shape` with symbols at their maxima.
pub fn max_extents(graph: &Graph, shape: &Shape) -> Vec<u64> {
    shape
        .iter()
        .map(|d| match *d {
            Dim::Fixed(n) => n,
            Dim::Sym(s) => graph.symbols[s].max,
        })
        .collect()
}

/// A parameter list from `(name, type)` pairs.
pub fn params(list: &[(&str, ParamType)]) -> Vec<ParamMeta> {
    list.iter().map(|&(name, ty)| ParamMeta { name: name.into(), ty }).collect()
}

/// The entry-point name of a kernel rendered from `template`: `<template>_<hash>`, where the hash
/// is a 64-bit FNV-1a of `source` (rendered with the name placeholder `{{kernel_name}}` still in
/// place; [`finish_kernel`] appends the launch configuration first). Stable across runs,
/// platforms and Rust versions.
pub fn kernel_name(template: &str, source: &str) -> String {
    format!("{template}_{:016x}", fnv1a64(source.as_bytes()))
}

/// 64-bit FNV-1a.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Finishes a kernel whose source contains `{{kernel_name}}` placeholders: names it by the hash of
/// its content and launch configuration (grid, block, shared memory) and substitutes the name.
pub fn finish_kernel(
    template: &'static str,
    source_with_placeholder: String,
    grid: [DimExpr; 3],
    block: [u32; 3],
    smem_bytes: u32,
    params: Vec<ParamMeta>,
) -> KernelDef {
    // The launch configuration is part of a kernel's identity: plans keep one grid per kernel, and
    // element-wise kernels whose source does not depend on the extent (`mul` by a scalar on
    // [B,S,384] and on [B,S,1536]) must not share one.
    let identity = format!("{source_with_placeholder}\n// launch grid {grid:?} block {block:?} smem {smem_bytes}");
    let name = kernel_name(template, &identity);
    let source = source_with_placeholder.replace("{{kernel_name}}", &name);
    let pdl = PDL_TEMPLATES.contains(&template);
    KernelDef { template, name, source, grid, block, smem_bytes, params, pdl, sums: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_content_addressed() {
        let a = kernel_name("layernorm", "x {{kernel_name}} 1");
        assert_eq!(a, kernel_name("layernorm", "x {{kernel_name}} 1"));
        assert_ne!(a, kernel_name("layernorm", "x {{kernel_name}} 2"));
        assert!(a.starts_with("layernorm_") && a.len() == "layernorm_".len() + 16);
        let k = finish_kernel("t", "void {{kernel_name}}()".into(), [1.into(), 1.into(), 1.into()], [32, 1, 1], 0, vec![]);
        assert_eq!(k.source, format!("void {}()", k.name));
        let wider = finish_kernel("t", "void {{kernel_name}}()".into(), [2.into(), 1.into(), 1.into()], [32, 1, 1], 0, vec![]);
        assert_ne!(k.name, wider.name, "one source with two grids is two kernels");
    }
}
