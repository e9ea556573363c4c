//! The CPU reference interpreter: runs any IR graph in `f32` and emulates every low-precision dtype
//! exactly. It is the oracle of every test.
//!
//! Semantics:
//! - Every op computes in `f32` (reductions and matmuls accumulate in `f32` or `f64`), then rounds its
//!   result to its *output* dtype with [`crate::numerics::cast_slice`], so an `f16` graph behaves like
//!   `f16` storage. Values are held as described in [`tensor`].
//! - Symbols are bound from the graph inputs' shapes (each checked against the symbol's `max` and
//!   against the other inputs); weight shapes and dtypes are checked against their nodes' types and
//!   every op result against its declared type.
//! - Only nodes that reach a graph output are run (plus the inputs, which are always checked); dead
//!   nodes are skipped, so a dead `weight` node never fetches its tensor.
//! - Intermediate tensors are freed once their last user has run; an op that is the last user of
//!   its operand reuses the operand's buffer in place where it can.
//! - Bad input never panics: a wrong input name/shape/dtype, a missing or mis-shaped weight and an
//!   out-of-range index all return an [`InterpError`] naming the input, weight or node. As a last
//!   resort a panic inside an op is caught and reported as [`InterpError::Op`].
//! - Inputs passed with extra names the graph does not declare are ignored.
//!
//! Op semantics are documented in the `ops` submodules (`ops::quant` for quantization).

mod ops;
pub mod perturb;
mod state;
pub mod tensor;
pub mod tensor_core;

pub use ops::inverse_frequencies;
pub use ops::{f32_sum_bound, softmax_relative_bound, CUDA_EXPF_ULP};
pub use perturb::{Function, Perturbation};
pub use state::{empty_state, empty_state_for};
pub use tensor::{Tensor, TensorData};

use crate::ir::{order, DType, Dim, Graph, Node, NodeId, Op, Shape, ValueId};
use std::sync::Arc;

/// Where `weight` nodes get their data (the importer implements it over safetensors).
pub trait WeightSource: Sync {
    /// The tensor stored under `name`.
    fn weight(&self, name: &str) -> Result<Arc<Tensor>, String>;

    /// `name`'s dtype, shape and storage bytes (`compile::bytes::encode` of [`Self::weight`])
    /// when the source holds it in that form, so a plan copies them without decoding; `None`
    /// (the default): read the tensor and encode it.
    fn storage_bytes(&self, _name: &str) -> Option<(DType, Vec<usize>, Vec<u8>)> {
        None
    }
}

/// A weight source with no weights (for graphs without `weight` nodes).
pub struct NoWeights;

impl WeightSource for NoWeights {
    fn weight(&self, name: &str) -> Result<Arc<Tensor>, String> {
        Err(format!("no weight store: `{name}` is not available"))
    }
}

impl WeightSource for std::collections::HashMap<String, Arc<Tensor>> {
    fn weight(&self, name: &str) -> Result<Arc<Tensor>, String> {
        self.get(name).cloned().ok_or_else(|| format!("weight `{name}` not found"))
    }
}

/// Why a run failed. Every variant names the input, weight, symbol or node at fault.
#[derive(thiserror::Error, Debug)]
pub enum InterpError {
    /// A graph input was not passed.
    #[error("missing graph input `{name}`")]
    MissingInput {
        /// The input's binding name.
        name: String,
    },
    /// An input's shape does not match its declared shape.
    #[error("input `{name}` has shape {got:?}, expected {expected}")]
    InputShape {
        /// The input's binding name.
        name: String,
        /// The declared shape, as text (`[B, S]`).
        expected: String,
        /// The shape passed.
        got: Vec<usize>,
    },
    /// An input's dtype differs from its declared dtype.
    #[error("input `{name}` has dtype {got}, expected {expected}")]
    InputDType {
        /// The input's binding name.
        name: String,
        /// The declared dtype.
        expected: DType,
        /// The dtype passed.
        got: DType,
    },
    /// A tensor passed in (input or weight) is inconsistent with itself.
    #[error("tensor `{name}` is malformed: {message}")]
    MalformedTensor {
        /// The input or weight name.
        name: String,
        /// What is wrong (data variant vs dtype, element count vs shape).
        message: String,
    },
    /// A symbol bound to a value above its declared maximum.
    #[error("symbol `{sym}` = {value} exceeds its max {max}")]
    SymbolTooLarge {
        /// The symbol's name.
        sym: String,
        /// The bound value.
        value: u64,
        /// The declared maximum.
        max: u64,
    },
    /// Two inputs bind the same symbol to different values.
    #[error("symbol `{sym}` is {first} from an earlier input but {second} from input `{input}`")]
    SymbolConflict {
        /// The symbol's name.
        sym: String,
        /// The first binding.
        first: u64,
        /// The conflicting binding.
        second: u64,
        /// The input giving the conflicting binding.
        input: String,
    },
    /// The weight source failed.
    #[error("weight `{name}`: {message}")]
    Weight {
        /// Checkpoint name.
        name: String,
        /// The source's message.
        message: String,
    },
    /// A weight's shape differs from its node's type.
    #[error("weight `{name}` has shape {got:?}, expected {expected:?}")]
    WeightShape {
        /// Checkpoint name.
        name: String,
        /// The declared shape.
        expected: Vec<usize>,
        /// The stored shape.
        got: Vec<usize>,
    },
    /// A weight's dtype differs from its node's type.
    #[error("weight `{name}` has dtype {got}, expected {expected}")]
    WeightDType {
        /// Checkpoint name.
        name: String,
        /// The declared dtype.
        expected: DType,
        /// The stored dtype.
        got: DType,
    },
    /// An op failed (index out of range, inconsistent operands, unbound symbol, ...).
    #[error("{op} node {node}{}: {message}", name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default())]
    Op {
        /// The failing node.
        node: NodeId,
        /// Its mnemonic.
        op: String,
        /// Its layer name, if any.
        name: Option<String>,
        /// What went wrong.
        message: String,
    },
    /// The graph has a cycle.
    #[error("the graph has a cycle")]
    Cycle,
    /// The graph is structurally corrupt (dangling value ids, a source op without its output);
    /// `ir::verify` reports such graphs in detail.
    #[error("invalid graph: {message}")]
    InvalidGraph {
        /// What is wrong.
        message: String,
    },
}

/// Run options.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Worker threads for ops; 0 = all (rayon's global pool).
    pub threads: usize,
    /// How float products are summed.
    pub accumulation: Accumulation,
    /// Per node, how its float products are summed where that differs from `accumulation` (a
    /// plan's GEMM kernels each sum as their mainloop does: `check::KernelSums`); `None`: every
    /// node sums as `accumulation`.
    pub node_accumulation: Option<NodeAccumulation>,
    /// `None`: the host's transcendental functions. `Some`: those whose GPU counterparts have a
    /// documented ulp bound (`expf`, `erfcf`, `tanhf` in GeLU, SiLU, `exp`, `tanh` and
    /// `attention`'s softmax) move within it ([`Perturbation`]), and `attention` sums its
    /// softmax denominator in f32 (key order), as the GPU does, instead of f64: a second correct
    /// implementation, for `qfuse check`'s end-to-end floor.
    pub perturbation: Option<Perturbation>,
}

impl RunOptions {
    /// The options of calibration's runs (activation statistics, AWQ/GPTQ/SmoothQuant captures,
    /// KV-cache scales): f64 sums rounded to f32 once ([`Accumulation::F64`]). The default f32
    /// order is the `gemm` crate's, which depends on the host CPU (its SIMD width and cache sizes
    /// pick the kernel and the K blocking), so f32-summed statistics — and the scales a plan is
    /// built with — would differ in their last bits, and a histogram method's choice by whole
    /// bins, from one machine to another; f64 sums make them the same on every host (they differ
    /// only where an f64 sum lies within 2⁻²⁹ of an f32 rounding boundary).
    pub fn calibration() -> Self {
        RunOptions { accumulation: Accumulation::F64, ..Default::default() }
    }

    fn numerics(&self) -> ops::Numerics {
        ops::Numerics { acc: self.accumulation, perturb: self.perturbation }
    }
}

/// Which nodes sum their products other than as [`RunOptions::accumulation`]: `of(node, symbols)`
/// is the accumulation of `node` in a run whose shape symbols are bound as `symbols` (name,
/// value), or `None` for the run's own. The symbols let a choice follow the shapes (a plan runs a
/// node's GEMM on one kernel for few rows and on another for many).
#[derive(Clone)]
pub struct NodeAccumulation(pub Arc<NodeAccumulationFn>);

/// `(node, symbols) → accumulation of node, if its own` ([`NodeAccumulation`]).
pub type NodeAccumulationFn = dyn Fn(NodeId, &[(String, u64)]) -> Option<Accumulation> + Send + Sync;

impl NodeAccumulation {
    /// The accumulation of `node` under `symbols`, if it has its own.
    pub fn of(&self, node: NodeId, symbols: &[(String, u64)]) -> Option<Accumulation> {
        (self.0)(node, symbols)
    }
}

impl std::fmt::Debug for NodeAccumulation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeAccumulation(..)")
    }
}

/// How `matmul`, float `qmatmul` and `attention` products sum (integer-code `qmatmul`s are
/// always summed exactly, as `mma.sync … s32` does).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Accumulation {
    /// f32 sums in the `gemm` crate's blocked order, as a GPU's f32 accumulators do (in theirs).
    #[default]
    F32,
    /// f64 sums rounded to f32 once: exact for 8-bit codes (E4M3 products are multiples of 2^-18
    /// below 2^18, so any K ≤ 2^16 sums exactly), order-independent to f64 precision otherwise.
    /// Compared with [`Accumulation::F32`], it measures how much a graph's result depends on the
    /// order its sums are taken in (one of `qfuse check`'s end-to-end floor variants).
    F64,
    /// f32 sums in another order: each product is summed over `parts` consecutive slices of K
    /// separately (each as [`Accumulation::F32`]) and the partial sums added in f32 in slice
    /// order, as a split-K GPU kernel or a different k-blocking does (`parts` below 2, or above
    /// K, sums as [`Accumulation::F32`] over K or one slice per element). Another correct f32
    /// order, for the end-to-end floor of `qfuse check`.
    F32SplitK {
        /// Slices of K.
        parts: u32,
    },
    /// Float products summed as a tensor core sums them ([`tensor_core`]: the addends of each
    /// group aligned to the largest and truncated to a fixed width), k in order, as the GPU's
    /// MMA GEMMs and attention take them: another implementation for the end-to-end floor of
    /// `qfuse check`, the one the GPU's own sums follow.
    TensorCore(tensor_core::TensorCoreSums),
    /// Float products summed as an FP8 `wgmma` mainloop with promotion sums them
    /// ([`tensor_core::TensorCoreSums::promoted_dot`]): per output element, K in consecutive
    /// chunks of `every` (the last may be shorter), each chunk summed by `sums` from an
    /// accumulator of 0, the chunk partials added in k order into an f32 total with IEEE
    /// round-to-nearest. `every` ≥ K is [`Accumulation::TensorCore`].
    Promoted {
        /// The tensor cores' sums inside a chunk.
        sums: tensor_core::TensorCoreSums,
        /// Elements of K per chunk (a k-tile: 128 for gemm.cu's FP8 wgmma).
        every: u32,
    },
}

impl std::fmt::Display for Accumulation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Accumulation::F32 => write!(f, "f32 sums"),
            Accumulation::F64 => write!(f, "f64 sums"),
            Accumulation::F32SplitK { parts } => write!(f, "f32 sums with K in {parts} slices"),
            Accumulation::TensorCore(sums) => write!(f, "f32 sums as a tensor core takes them ({sums})"),
            Accumulation::Promoted { sums, every } => {
                write!(f, "f32 sums of partials promoted every {every} of K, each as a tensor core takes them ({sums})")
            }
        }
    }
}

/// The lowest and highest code, per element, that the GPU may write for `out`, the first result
/// of `op` applied to `args`, where the op's quantized output carries transcendental error the
/// interpreter does not reproduce (the `expf` of `attention`, and of a `causal_attention` with an
/// output quantize; bounds in `softmax_relative_bound` and `f32_sum_bound`); `None` where the op
/// has no such error. `qfuse check` allows a one-step code difference inside this window and
/// counts it.
pub fn code_window(op: &Op, args: Vec<Arc<Tensor>>, out: &Tensor) -> Result<Option<(Tensor, Tensor)>, String> {
    let outs = [ops::OutType { dtype: out.dtype, shape: out.shape.clone() }];
    ops::code_window(op, args, &outs, ops::Numerics::default())
}

/// For a quantized `attention` output `out` (the interpreter's, from `args`): per element, the
/// lowest and highest code that the output takes when scores whose f32 `q·k` sum lies within
/// [`f32_sum_bound`] of a rounding boundary of T round the other way — each such score alone,
/// and together all that raise (lower) the element — recomputed exactly; the reference code
/// at elements of rows without such a score. `None` for other ops and unquantized outputs.
/// `qfuse check` allows a code one step from the reference inside it and counts it.
pub fn score_flip_window(op: &Op, args: Vec<Arc<Tensor>>, out: &Tensor) -> Result<Option<(Tensor, Tensor)>, String> {
    match op {
        Op::Attention(a) => ops::score_flip_window(a, args, out),
        _ => Ok(None),
    }
}

/// Applies one computing op to `args` (no graph: the operands are given), producing one tensor
/// per `(dtype, shape)` of `outs`, with the numerics of `opts` (its `threads` is ignored).
/// `qfuse check` re-evaluates single nodes on the reference's operands this way.
pub fn eval_op(op: &Op, args: Vec<Arc<Tensor>>, outs: &[(DType, Vec<usize>)], opts: &RunOptions) -> Result<Vec<Tensor>, String> {
    if op.is_source() {
        return Err(format!("{} has no operands to evaluate", op.mnemonic()));
    }
    let outs: Vec<ops::OutType> = outs.iter().map(|(dtype, shape)| ops::OutType { dtype: *dtype, shape: shape.clone() }).collect();
    let results = ops::eval_guarded(op, args, &outs, opts.numerics())?;
    check_results(&results, &outs)?;
    Ok(results)
}

/// Named graph results, in the graph's output order.
pub type Outputs = Vec<(String, Tensor)>;

/// Runs `g`; binds symbols from the inputs' shapes (checking each against the symbol's max and
/// consistency); checks weight shapes/dtypes against the weight node's type; returns the named
/// graph outputs.
pub fn run(g: &Graph, weights: &dyn WeightSource, inputs: &[(&str, Tensor)]) -> Result<Outputs, InterpError> {
    run_with(g, weights, inputs, &RunOptions::default(), &mut |_, _| {})
}

/// Same as [`run`], calling `observe(value, &tensor)` for every value as it is computed (inputs
/// and weights included, each value exactly once). Frees intermediate tensors once their last
/// user has run.
pub fn run_observed(
    g: &Graph,
    weights: &dyn WeightSource,
    inputs: &[(&str, Tensor)],
    observe: &mut dyn FnMut(ValueId, &Tensor),
) -> Result<Outputs, InterpError> {
    run_with(g, weights, inputs, &RunOptions::default(), observe)
}

/// [`run_observed`] with explicit [`RunOptions`].
pub fn run_with(
    g: &Graph,
    weights: &dyn WeightSource,
    inputs: &[(&str, Tensor)],
    opts: &RunOptions,
    observe: &mut dyn FnMut(ValueId, &Tensor),
) -> Result<Outputs, InterpError> {
    check_structure(g)?;
    let order = order::canonical_order(g).ok_or(InterpError::Cycle)?;
    let sinks: Vec<ValueId> = g.outputs.iter().map(|&(_, v)| v).collect();
    let mut ex = Executor::new(g, weights, opts, g.live_nodes(), &sinks);
    ex.bind_inputs(inputs)?;
    ex.run_live(&order, inputs, observe)?;
    ex.finish()
}

/// Runs only the part of `g` that computes `targets` and `observed` when the values of `given`
/// are already known: the nodes those depend on other than through a given value (inputs and
/// weights included; graph outputs they do not need are not computed), each once, in canonical
/// order. Every graph input must still be passed (they bind the symbols, and are all checked as
/// in [`run`]). `observe` sees every value computed (not the given ones); returns the targets'
/// tensors in order. Intermediates (the `observed` values too) are freed as in
/// [`run_observed`]; a given value is dropped once its last reader has run.
///
/// Calibration streams a decoder this way, one span of layers at a time, keeping only the
/// residual stream between spans (`quant::calib::stream`, with [`RunOptions::calibration`]).
pub fn run_part(
    g: &Graph,
    weights: &dyn WeightSource,
    inputs: &[(&str, Tensor)],
    given: Vec<(ValueId, Arc<Tensor>)>,
    (targets, observed): (&[ValueId], &[ValueId]),
    opts: &RunOptions,
    observe: &mut dyn FnMut(ValueId, &Tensor),
) -> Result<Vec<Arc<Tensor>>, InterpError> {
    check_structure(g)?;
    let all: Vec<ValueId> = targets.iter().chain(observed).copied().collect();
    if let Some(v) = given.iter().map(|(v, _)| v).chain(&all).find(|v| v.index() >= g.values.len()) {
        return Err(InterpError::InvalidGraph { message: format!("value {v} is not a value of this graph") });
    }
    let order = order::canonical_order(g).ok_or(InterpError::Cycle)?;
    let known: std::collections::HashSet<ValueId> = given.iter().map(|(v, _)| *v).collect();
    let live = needed_nodes(g, &known, &all);
    let mut ex = Executor::new(g, weights, opts, live, targets);
    ex.bind_inputs(inputs)?;
    for (v, t) in given {
        if ex.uses[v.index()] > 0 {
            ex.store[v.index()] = Some(t);
        }
    }
    ex.run_live(&order, inputs, observe)?;
    targets.iter().map(|&v| ex.take(v).ok_or_else(|| not_computed(g, v, "target"))).collect()
}

/// Per node: whether computing `targets` needs it when the values in `known` are given.
fn needed_nodes(g: &Graph, known: &std::collections::HashSet<ValueId>, targets: &[ValueId]) -> Vec<bool> {
    let mut live = vec![false; g.nodes.len()];
    let mut stack: Vec<ValueId> = targets.to_vec();
    while let Some(v) = stack.pop() {
        let id = g.values[v].producer;
        if known.contains(&v) || std::mem::replace(&mut live[id.index()], true) {
            continue;
        }
        stack.extend(g.nodes[id].inputs.iter().copied());
    }
    live
}

/// The error for a graph output (named `name`) or a partial run's target that was not computed.
fn not_computed(g: &Graph, v: ValueId, name: &str) -> InterpError {
    InterpError::Op {
        node: g.values[v].producer,
        op: "return".into(),
        name: Some(name.into()),
        message: format!("output value {v} was not computed"),
    }
}

/// The state of one run.
struct Executor<'a> {
    g: &'a Graph,
    weights: &'a dyn WeightSource,
    pool: Option<rayon::ThreadPool>,
    numerics: ops::Numerics,
    /// Per-node accumulation ([`RunOptions::node_accumulation`]) and the symbols it is asked
    /// under (bound with the inputs).
    node_accumulation: Option<(NodeAccumulation, Vec<(String, u64)>)>,
    live: Vec<bool>,
    /// Bound symbol values, by `SymId` index.
    syms: Vec<Option<u64>>,
    /// Remaining reads of each value (operand slots of live nodes plus graph outputs).
    uses: Vec<u32>,
    store: Vec<Option<Arc<Tensor>>>,
}

impl<'a> Executor<'a> {
    /// An executor running the nodes `live` marks, whose results `sinks` (the graph outputs, or
    /// a partial run's targets, one read each) are kept to the end.
    fn new(g: &'a Graph, weights: &'a dyn WeightSource, opts: &RunOptions, live: Vec<bool>, sinks: &[ValueId]) -> Self {
        let pool = match opts.threads {
            0 => None,
            n => rayon::ThreadPoolBuilder::new().num_threads(n).build().ok(),
        };
        let mut uses = vec![0u32; g.values.len()];
        for (id, node) in g.nodes.iter() {
            if live[id.index()] {
                node.inputs.iter().for_each(|v| uses[v.index()] += 1);
            }
        }
        sinks.iter().for_each(|v| uses[v.index()] += 1);
        let syms = vec![None; g.symbols.len()];
        let store = vec![None; g.values.len()];
        let node_accumulation = opts.node_accumulation.clone().map(|n| (n, Vec::new()));
        Executor { g, weights, pool, numerics: opts.numerics(), node_accumulation, live, syms, uses, store }
    }

    /// Steps through the live nodes of `order` (a canonical order of the graph).
    fn run_live(
        &mut self,
        order: &[NodeId],
        inputs: &[(&str, Tensor)],
        observe: &mut dyn FnMut(ValueId, &Tensor),
    ) -> Result<(), InterpError> {
        for &id in order {
            if self.live[id.index()] {
                self.step(id, inputs, observe)?;
            }
        }
        Ok(())
    }

    /// Reads `v` once: moved out of the store on its last read.
    fn take(&mut self, v: ValueId) -> Option<Arc<Tensor>> {
        let i = v.index();
        self.uses[i] = self.uses[i].saturating_sub(1);
        if self.uses[i] == 0 {
            self.store[i].take()
        } else {
            self.store[i].clone()
        }
    }

    /// Checks every graph input and binds the symbols of their shapes.
    fn bind_inputs(&mut self, inputs: &[(&str, Tensor)]) -> Result<(), InterpError> {
        for (name, v) in self.g.inputs() {
            let t = find_input(inputs, name)?;
            let ty = self.g.ty(v);
            t.check().map_err(|message| InterpError::MalformedTensor { name: name.into(), message })?;
            if t.dtype != ty.dtype {
                return Err(InterpError::InputDType { name: name.into(), expected: ty.dtype, got: t.dtype });
            }
            self.bind_shape(name, &ty.shape, &t.shape)?;
        }
        if let Some((_, bound)) = &mut self.node_accumulation {
            let named = self.g.symbols.iter().zip(&self.syms).filter_map(|((_, s), v)| Some((s.name.clone(), (*v)?)));
            *bound = named.collect();
        }
        Ok(())
    }

    /// The numerics of node `id`: the run's, with its own accumulation where it has one.
    fn numerics_of(&self, id: NodeId) -> ops::Numerics {
        match &self.node_accumulation {
            Some((of, symbols)) => ops::Numerics { acc: of.of(id, symbols).unwrap_or(self.numerics.acc), ..self.numerics },
            None => self.numerics,
        }
    }

    fn bind_shape(&mut self, name: &str, declared: &Shape, got: &[usize]) -> Result<(), InterpError> {
        let expected = self.shape_text(declared);
        let bad_shape = || InterpError::InputShape { name: name.into(), expected: expected.clone(), got: got.to_vec() };
        if declared.len() != got.len() {
            return Err(bad_shape());
        }
        for (&d, &n) in declared.iter().zip(got) {
            match d {
                Dim::Fixed(f) if f != n as u64 => return Err(bad_shape()),
                Dim::Fixed(_) => {}
                Dim::Sym(s) => {
                    let sym = self.g.symbols.get(s).ok_or_else(bad_shape)?.clone();
                    if n as u64 > sym.max {
                        return Err(InterpError::SymbolTooLarge { sym: sym.name.clone(), value: n as u64, max: sym.max });
                    }
                    match self.syms[s.index()] {
                        Some(first) if first != n as u64 => {
                            let (sym, input) = (sym.name.clone(), name.to_string());
                            return Err(InterpError::SymbolConflict { sym, first, second: n as u64, input });
                        }
                        _ => self.syms[s.index()] = Some(n as u64),
                    }
                }
            }
        }
        Ok(())
    }

    fn shape_text(&self, s: &Shape) -> String {
        let dims: Vec<String> = s
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => n.to_string(),
                Dim::Sym(id) => self.g.symbols.get(*id).map_or_else(|| format!("{id}"), |s| s.name.clone()),
            })
            .collect();
        format!("[{}]", dims.join(", "))
    }

    /// The concrete extents of `s` under the bound symbols.
    fn resolve(&self, s: &Shape) -> Result<Vec<usize>, String> {
        s.iter()
            .map(|d| match d {
                Dim::Fixed(n) => usize::try_from(*n).map_err(|_| format!("dimension {n} too large")),
                Dim::Sym(id) => match self.syms.get(id.index()).copied().flatten() {
                    Some(n) => Ok(n as usize),
                    None => Err(format!("symbol {} is not bound by any graph input", self.shape_text(&[*d].into_iter().collect()))),
                },
            })
            .collect()
    }

    fn op_error(&self, id: NodeId, message: String) -> InterpError {
        let node = &self.g.nodes[id];
        InterpError::Op { node: id, op: node.op.mnemonic().to_string(), name: node.name.clone(), message }
    }

    /// Runs one node, observes and stores its results, and frees operands with no readers left.
    fn step(&mut self, id: NodeId, inputs: &[(&str, Tensor)], observe: &mut dyn FnMut(ValueId, &Tensor)) -> Result<(), InterpError> {
        let g = self.g;
        let node = &g.nodes[id];
        let results = match &node.op {
            Op::Input { name } => vec![Arc::new(self.input_tensor(inputs, name)?)],
            Op::Weight { name } => vec![self.weight_tensor(node, name)?],
            _ => self.compute(id, node)?,
        };
        for (&v, t) in node.outputs.iter().zip(results) {
            observe(v, &t);
            if self.uses[v.index()] > 0 {
                self.store[v.index()] = Some(t);
            }
        }
        Ok(())
    }

    fn input_tensor(&self, inputs: &[(&str, Tensor)], name: &str) -> Result<Tensor, InterpError> {
        let mut t = find_input(inputs, name)?.clone();
        // Puts values on the dtype's grid (a no-op for f32 and for values already on it).
        if let TensorData::F32(v) = &mut t.data {
            crate::numerics::cast_slice(v, t.dtype);
        }
        Ok(t)
    }

    fn weight_tensor(&self, node: &Node, name: &str) -> Result<Arc<Tensor>, InterpError> {
        let werr = |message: String| InterpError::Weight { name: name.into(), message };
        let t = self.weights.weight(name).map_err(werr)?;
        t.check().map_err(|message| InterpError::MalformedTensor { name: name.into(), message })?;
        let ty = self.g.ty(node.outputs[0]); // one output: checked by `check_structure`
        if t.dtype != ty.dtype {
            return Err(InterpError::WeightDType { name: name.into(), expected: ty.dtype, got: t.dtype });
        }
        let expected = self.resolve(&ty.shape).map_err(werr)?;
        if t.shape != expected {
            return Err(InterpError::WeightShape { name: name.into(), expected, got: t.shape.clone() });
        }
        Ok(t)
    }

    /// Evaluates a computing node on its operands (taken from the store) and checks its results.
    fn compute(&mut self, id: NodeId, node: &Node) -> Result<Vec<Arc<Tensor>>, InterpError> {
        let outs = node
            .outputs
            .iter()
            .map(|&v| Ok(ops::OutType { dtype: self.g.ty(v).dtype, shape: self.resolve(&self.g.ty(v).shape)? }))
            .collect::<Result<Vec<_>, String>>()
            .map_err(|m| self.op_error(id, m))?;
        let args = self.take_operands(node).map_err(|m| self.op_error(id, m))?;
        let numerics = self.numerics_of(id);
        let eval = || ops::eval_guarded(&node.op, args, &outs, numerics);
        let results = match &self.pool {
            Some(p) => p.install(eval),
            None => eval(),
        }
        .map_err(|m| self.op_error(id, m))?;
        check_results(&results, &outs).map_err(|m| self.op_error(id, m))?;
        Ok(results.into_iter().map(Arc::new).collect())
    }

    /// The operands of `node`; a value read for the last time is moved out of the store.
    fn take_operands(&mut self, node: &Node) -> Result<Vec<Arc<Tensor>>, String> {
        node.inputs.iter().map(|&v| self.take(v).ok_or_else(|| format!("operand {v} was not computed"))).collect()
    }

    fn finish(mut self) -> Result<Outputs, InterpError> {
        let mut outs = Vec::with_capacity(self.g.outputs.len());
        for (name, v) in &self.g.outputs {
            let t = self.take(*v).ok_or_else(|| not_computed(self.g, *v, name))?;
            outs.push((name.clone(), Arc::try_unwrap(t).unwrap_or_else(|a| (*a).clone())));
        }
        Ok(outs)
    }
}

/// Checks the value ids the executor indexes with, so a corrupt graph is an error, not a panic.
fn check_structure(g: &Graph) -> Result<(), InterpError> {
    let bad = |message: String| Err(InterpError::InvalidGraph { message });
    let n = g.values.len();
    for (id, node) in g.nodes.iter() {
        if let Some(v) = node.inputs.iter().chain(&node.outputs).find(|v| v.index() >= n) {
            return bad(format!("node {id} refers to undefined value {v}"));
        }
        if node.op.is_source() && node.outputs.len() != 1 {
            return bad(format!("{} node {id} must have exactly one output", node.op.mnemonic()));
        }
    }
    if let Some((name, v)) = g.outputs.iter().find(|(_, v)| v.index() >= n) {
        return bad(format!("output `{name}` refers to undefined value {v}"));
    }
    if let Some((v, _)) = g.values.iter().find(|(_, info)| info.producer.index() >= g.nodes.len()) {
        return bad(format!("value {v} has no producer"));
    }
    Ok(())
}

fn find_input<'t>(inputs: &'t [(&str, Tensor)], name: &str) -> Result<&'t Tensor, InterpError> {
    inputs.iter().find(|(n, _)| *n == name).map(|(_, t)| t).ok_or_else(|| InterpError::MissingInput { name: name.into() })
}

/// Checks an op's results against its declared output types.
fn check_results(results: &[tensor::Tensor], outs: &[ops::OutType]) -> Result<(), String> {
    if results.len() != outs.len() {
        return Err(format!("internal: produced {} results for {} outputs", results.len(), outs.len()));
    }
    for (i, (t, o)) in results.iter().zip(outs).enumerate() {
        if t.dtype != o.dtype || t.shape != o.shape {
            return Err(format!("internal: result {i} is {}{:?}, declared {}{:?}", t.dtype, t.shape, o.dtype, o.shape));
        }
        t.check().map_err(|m| format!("internal: result {i}: {m}"))?;
    }
    Ok(())
}
