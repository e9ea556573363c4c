//! `qfuse check`: a plan on the GPU against the reference interpreter running the same fused IR.
//!
//! 1. **Per kernel.** The plan runs launch by launch ([`Context::run_checked`]); after each launch
//!    every buffer it wrote is compared with the interpreter's value of the same IR value, element
//!    by element under the named tolerance of its dtype ([`Tolerance`]), or — for a kernel that
//!    records how it sums (tensor-core GEMMs, [`KernelSums`]) — with its node summed exactly as
//!    the kernel sums, within its epilogue's transcendental error only; a written buffer that
//!    cannot be compared fails ([`judge_launch`]). The GPU's value is then replaced by the
//!    interpreter's before the next launch ("teacher forcing"), so each kernel is judged on exact
//!    inputs and an error cannot hide behind, or be blamed on, an earlier one.
//! 2. **End to end.** A plain run (CUDA graph) of the same texts; every output row must have
//!    cosine with the interpreter's at least [`CheckReport::end_to_end_bar`]: 0.9999, or where
//!    two correct implementations of the plan's IR agree less than that, their agreement (the
//!    *floor*, [`interpreter_floor`]) minus [`FLOOR_MARGIN`].
//! 3. **Robustness.** Random batches through the graph path: ids from the model's own vocabulary,
//!    rows of random lengths padded like the tokenizer pads ([`inputs`]); no NaN or infinity in
//!    any output.

mod compare;
pub mod decoder;
pub mod inputs;
mod judge;
mod magnitude;
mod sums;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

pub use compare::{compare, compare_kernel_sums, Comparison, Reference, Tolerance};
pub use judge::{judge_launch, kernel_sums, value_id, References, Summed};
pub use sums::{accumulation, launch_accumulation, launch_node, KernelSums};

use crate::compile::{bytes, TOKENIZER_SECTION};
use crate::import::TextTokenizer;
use crate::interp::{self, Tensor, WeightSource};
use crate::ir::{self, DType, Graph, ValueId};
use crate::plan::{Plan, SectionKind};
use crate::runtime::{Context, Engine, HostTensor};

/// The plan's weights, decoded for the interpreter.
pub struct PlanWeights {
    tensors: HashMap<String, Arc<Tensor>>,
}

impl PlanWeights {
    /// Decodes every weight section of `plan` (checksums verified on the way).
    pub fn load(plan: &Plan) -> anyhow::Result<Self> {
        let mut tensors = HashMap::new();
        for w in &plan.meta().weights {
            let dtype: DType = w.dtype.parse().map_err(|e| anyhow::anyhow!("weight `{}`: dtype {}: {e}", w.name, w.dtype))?;
            let shape = w.shape.iter().map(|&d| d as usize).collect();
            let t = bytes::decode(dtype, shape, plan.section_bytes(w.section as usize)?)
                .map_err(|e| anyhow::anyhow!("weight `{}`: {e}", w.name))?;
            tensors.insert(w.name.clone(), Arc::new(t));
        }
        Ok(Self { tensors })
    }
}

impl WeightSource for PlanWeights {
    fn weight(&self, name: &str) -> Result<Arc<Tensor>, String> {
        self.tensors.get(name).cloned().ok_or_else(|| format!("the plan has no weight `{name}`"))
    }
}

/// The tokenizer stored in the plan.
pub fn plan_tokenizer(plan: &Plan, max_tokens: usize) -> anyhow::Result<TextTokenizer> {
    let i = plan
        .sections()
        .iter()
        .position(|s| s.kind == SectionKind::Other && s.name == TOKENIZER_SECTION)
        .ok_or_else(|| anyhow::anyhow!("{} holds no tokenizer.json (compiled from a folder without one)", plan.path().display()))?;
    let origin = plan.path().join(TOKENIZER_SECTION);
    Ok(TextTokenizer::from_bytes(plan.section_bytes(i)?, &origin, max_tokens)?)
}

/// One launch's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct KernelCheck {
    /// Index in the schedule.
    pub launch: usize,
    /// What it computes.
    pub label: String,
    /// The IR value compared (`%18`).
    pub value: String,
    /// Its dtype.
    pub dtype: String,
    /// The comparison.
    pub comparison: Comparison,
}

/// Everything `check` measured.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// Per-kernel comparisons, in schedule order.
    pub kernels: Vec<KernelCheck>,
    /// Cosine of each output row (GPU graph run vs interpreter), per output.
    pub end_to_end: Vec<(String, Vec<f64>)>,
    /// The end-to-end floor, per output and row: the lowest cosine between any two correct
    /// implementations of the same IR — the interpreter (the reference) and each of
    /// [`floor_variants`] ([`interpreter_floor`]).
    pub floor: Vec<(String, Vec<f64>)>,
    /// Each variant's cosines (`floor` is their per-row minimum).
    pub floor_variants: Vec<FloorVariant>,
    /// Per output, the cosine of the GPU's rows with each variant's (lowest over rows), in
    /// [`Self::floor_variants`]' order: where the GPU sits among the correct implementations.
    pub gpu_vs_variants: Vec<(String, Vec<f64>)>,
    /// Random-input runs, and how many produced a NaN or infinity (with the first offender).
    pub random_runs: usize,
    /// Runs with a non-finite output.
    pub random_nonfinite: usize,
    /// The first non-finite run, described.
    pub first_nonfinite: Option<String>,
    /// CUDA graphs captured during the random runs (one per distinct shape).
    pub graphs_captured: usize,
    /// With a reference model: per output row, cosine of the GPU's and of the interpreter's
    /// result with the unquantized model's (the interpreter running the imported FP32 graph).
    pub vs_fp32: Option<Fp32Comparison>,
}

/// How far the plan (on the GPU) and the interpreter (on the plan's IR) are from FP32.
#[derive(Debug, Clone, Serialize)]
pub struct Fp32Comparison {
    /// Cosine of each GPU output row with FP32's.
    pub gpu: Vec<f64>,
    /// Cosine of each interpreter output row with FP32's.
    pub interpreter: Vec<f64>,
}

/// How far below the floor a GPU row may sit and still pass.
pub const FLOOR_MARGIN: f64 = 1e-4;

/// Seed of the floor's perturbed transcendental functions ([`interp::Perturbation`]).
pub const FLOOR_SEED: u64 = 0x5eed_f100;

/// The pass rule, as `qfuse check` prints it.
pub const PASS_RULE: &str = "a plan passes when every kernel's results are within their dtype's tolerance (a tensor-core GEMM's: \
its node summed as the kernel sums, exact but for the epilogue's transcendental error) and every output row's \
cosine with the interpreter reaches the bar: --min-cos, or the floor minus 1e-4 where that is lower; the floor is the lowest cosine \
between any two correct implementations of the same IR: the interpreter and eight others (f64 sums; f64 sums with expf/erfcf/tanhf \
moved within CUDA's documented ulp bounds and attention's softmax denominator summed in f32, three draws; f32 sums with K in 2, 3 and 4 slices; \
the H100's f16 tensor-core sums, measured: 16 products and the accumulator aligned, truncated to 25 bits, with the first draw's transcendentals), \
and a ninth where the plan records how its GEMM kernels sum: every GEMM summed as its kernel sums, with the first draw's transcendentals";

/// An end-to-end floor ([`interpreter_floor`]): per output, each row's lowest cosine between two
/// correct implementations of the IR; and the second implementations themselves.
pub type Floor = (Vec<(String, Vec<f64>)>, Vec<FloorVariant>);

/// One second correct implementation of a plan's IR and how close it stays to the interpreter.
#[derive(Debug, Clone, Serialize)]
pub struct FloorVariant {
    /// What differs from the reference, e.g. `f64 sums`.
    pub name: String,
    /// Cosine of each output row with the interpreter's, per output.
    pub cosines: Vec<(String, Vec<f64>)>,
    /// Per output, each row's lowest cosine with the variants listed after this one (all pairs
    /// of second implementations are compared, not only each with the interpreter: two correct
    /// summation orders can agree with each other less than either agrees with the reference).
    pub among: Vec<(String, Vec<f64>)>,
    /// Its output values, per output (for the GPU's comparison with each implementation).
    #[serde(skip)]
    pub outputs: Vec<Vec<f32>>,
}

/// The second correct implementations of the end-to-end floor, with their names: the
/// interpreter summing in f64 (another summation order); summing in f64 with its transcendental
/// functions moved within CUDA's documented ulp bounds and attention's softmax denominator summed
/// in f32 ([`interp::RunOptions::perturbation`]), three draws ([`FLOOR_SEED`] and the next two
/// seeds); summing in f32 in other orders, K in two, three and four slices
/// ([`interp::Accumulation::F32SplitK`]); and summing as the H100's f16 tensor cores do
/// ([`interp::tensor_core::H100_F16`], measured on the hardware: each instruction's 16 products
/// and its accumulator aligned to the largest and truncated to 25 bits, the sum truncated to f32),
/// with its transcendentals moved as in the first draw. A GPU differs from the interpreter in all
/// these ways: its f32 sums run in its own order and, on tensor cores, with that truncation, its
/// `expf`/`erfcf`/`tanhf` round within those bounds of the exact value, and where a plan
/// re-quantizes (FP8, INT8, FP4 activations) a last-bit difference can flip a code and the flip
/// propagates. Which codes flip is a matter of chance, so the floor (the least agreeing pair)
/// samples several draws of each kind: with one draw per kind, the FP4 plans' floor was an
/// optimistic sample of the spread. With `kernel_sums` (a plan that records how its GEMM kernels
/// sum, [`KernelSums`]), a ninth: every GEMM summed as the plan's kernel for it sums (the
/// hardware the plan runs on: promoted FP8 `wgmma`, f16 tensor cores), the other nodes in f32,
/// transcendentals as in the first draw.
pub fn floor_variants(kernel_sums: Option<&KernelSums>) -> Vec<(String, interp::RunOptions)> {
    let f64_sums = interp::RunOptions { accumulation: interp::Accumulation::F64, ..Default::default() };
    let perturbed = |draw: u64| {
        let opts = interp::RunOptions { perturbation: Some(interp::Perturbation::Draw { seed: FLOOR_SEED + draw }), ..f64_sums.clone() };
        (format!("f64 sums, transcendentals within CUDA's ulp bounds (draw {})", draw + 1), opts)
    };
    let split = |parts: u32| {
        let opts = interp::RunOptions { accumulation: interp::Accumulation::F32SplitK { parts }, ..Default::default() };
        (format!("f32 sums, K in {parts} slices"), opts)
    };
    let tensor_core = interp::Accumulation::TensorCore(interp::tensor_core::H100_F16);
    let mut variants = vec![("f64 sums".to_string(), f64_sums.clone())];
    variants.extend((0..3).map(perturbed));
    variants.extend([2, 3, 4].map(split));
    variants.push((
        format!("{tensor_core}, transcendentals within CUDA's ulp bounds (draw 1)"),
        interp::RunOptions {
            accumulation: tensor_core,
            perturbation: Some(interp::Perturbation::Draw { seed: FLOOR_SEED }),
            ..Default::default()
        },
    ));
    if let Some(sums) = kernel_sums.filter(|s| !s.is_empty()) {
        variants.push((
            "every GEMM summed as the plan's kernels sum, transcendentals within CUDA's ulp bounds (draw 1)".to_string(),
            interp::RunOptions {
                node_accumulation: Some(sums.node_accumulation()),
                perturbation: Some(interp::Perturbation::Draw { seed: FLOOR_SEED }),
                ..Default::default()
            },
        ));
    }
    variants
}

impl CheckReport {
    /// True when every kernel, every row and every random run passed. An output's rows pass
    /// end to end when their minimum cosine reaches [`CheckReport::end_to_end_bar`].
    pub fn passed(&self, min_cos: f64) -> bool {
        self.kernels.iter().all(|k| k.comparison.pass)
            && self.end_to_end.iter().all(|(name, c)| c.iter().all(|&c| c >= self.end_to_end_bar(name, min_cos)))
            && self.random_nonfinite == 0
    }

    /// The end-to-end bar of output `name`: `min_cos`, or — where the interpreter and a second
    /// correct implementation ([`floor_variants`]) agree less than that — their minimum cosine
    /// (the floor) minus [`FLOOR_MARGIN`]: a GPU passes when it agrees with the interpreter at
    /// least as well as two correct implementations agree with each other.
    pub fn end_to_end_bar(&self, name: &str, min_cos: f64) -> f64 {
        let floor = self.floor.iter().find(|(n, _)| n == name).and_then(|(_, c)| c.iter().copied().reduce(f64::min));
        match floor {
            Some(f) if f - FLOOR_MARGIN < min_cos => f - FLOOR_MARGIN,
            _ => min_cos,
        }
    }
}

/// Options of [`check_plan`].
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Texts for the per-kernel and end-to-end comparisons.
    pub texts: Vec<String>,
    /// Number of random-input runs.
    pub random_runs: usize,
    /// Seed of the random inputs.
    pub seed: u64,
    /// Tokenizer truncation.
    pub max_tokens: usize,
    /// The model folder the plan was compiled from: adds the comparison with FP32.
    pub reference_model: Option<std::path::PathBuf>,
}

/// Runs all three checks of the module doc on the plan at `path` (GPU 0).
pub fn check_plan(path: &Path, opts: &CheckOptions) -> anyhow::Result<CheckReport> {
    let plan = Plan::load(path, None)?;
    let graph = ir::parse(&plan.meta().ir_text).map_err(|e| anyhow::anyhow!("{}: stored IR does not parse: {e}", path.display()))?;
    let weights = PlanWeights::load(&plan)?;
    let tok = plan_tokenizer(&plan, opts.max_tokens)?;
    let engine = Engine::load(path)?;
    let mut ctx = engine.context()?;
    let batch = tok.encode(&opts.texts)?;
    let inputs: Vec<(&str, Tensor)> = batch.inputs();
    let refs = reference_values(&graph, &weights, &inputs)?;
    let host: Vec<(&str, HostTensor)> = inputs.iter().map(|(n, t)| (*n, to_host(t))).collect();
    let kernels = per_kernel(&mut ctx, &graph, &refs, &host)?;
    let reference = refs.values;
    let outputs = ctx.run(&host)?;
    let end_to_end = graph
        .outputs
        .iter()
        .zip(&outputs)
        .map(|((name, v), (_, gpu))| {
            Ok((
                name.clone(),
                row_cosines(&reference[v].to_f32_vec(), &gpu.to_f32_vec().map_err(anyhow::Error::msg)?, width(&reference[v])),
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let kernel_sums = KernelSums::of_plan(plan.meta(), &graph);
    let (floor, floor_variants) = interpreter_floor(&graph, &weights, &inputs, &reference, Some(&kernel_sums))?;
    let gpu_vs_variants = gpu_vs_variants(&graph, &reference, &outputs, &floor_variants)?;
    let vs_fp32 = match &opts.reference_model {
        Some(dir) => Some(fp32_comparison(dir, &opts.texts, &graph, &reference, &outputs)?),
        None => None,
    };
    let space =
        inputs::InputSpace::of_plan(engine.meta(), Some(tok.vocab_size())).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let (random_nonfinite, first_nonfinite) = random_runs(&mut ctx, &engine, space, opts)?;
    Ok(CheckReport {
        kernels,
        end_to_end,
        floor,
        floor_variants,
        gpu_vs_variants,
        random_runs: opts.random_runs,
        random_nonfinite,
        first_nonfinite,
        graphs_captured: ctx.cached_graphs(),
        vs_fp32,
    })
}

/// The end-to-end floor of `graph` on `inputs`: each of [`floor_variants`] (with `kernel_sums`,
/// how the plan's GEMM kernels sum) run on the same inputs, its output rows' cosines with
/// `reference` (the interpreter's values) and with every other variant, and per output and row
/// the lowest of all these pairs: the least two correct implementations of the IR agree. Needs
/// no GPU.
pub fn interpreter_floor(
    graph: &Graph,
    weights: &dyn WeightSource,
    inputs: &[(&str, Tensor)],
    reference: &HashMap<ValueId, Tensor>,
    kernel_sums: Option<&KernelSums>,
) -> anyhow::Result<Floor> {
    let mut variants: Vec<FloorVariant> = Vec::new();
    for (name, opts) in floor_variants(kernel_sums) {
        let outs = interp::run_with(graph, weights, inputs, &opts, &mut |_, _| {})?;
        let outputs: Vec<Vec<f32>> = outs.iter().map(|(_, t)| t.to_f32_vec()).collect();
        let cosines = graph
            .outputs
            .iter()
            .zip(&outputs)
            .map(|((name, v), t)| (name.clone(), row_cosines(&reference[v].to_f32_vec(), t, width(&reference[v]))))
            .collect();
        variants.push(FloorVariant { name, cosines, among: vec![], outputs });
    }
    let widths: Vec<usize> = graph.outputs.iter().map(|(_, v)| width(&reference[v])).collect();
    compare_variants(&mut variants, &widths);
    let names: Vec<String> = graph.outputs.iter().map(|(n, _)| n.clone()).collect();
    let floor = floor_of(&variants, &names);
    Ok((floor, variants))
}

/// Fills each variant's [`FloorVariant::among`]: per output (rows `widths[o]` wide), each row's
/// lowest cosine with the variants after it.
fn compare_variants(variants: &mut [FloorVariant], widths: &[usize]) {
    for i in 0..variants.len() {
        let (head, later) = variants.split_at_mut(i + 1);
        let v = &mut head[i];
        v.among = v
            .cosines
            .iter()
            .enumerate()
            .map(|(o, (name, vs_ref))| {
                let mut rows = vec![f64::INFINITY; vs_ref.len()];
                for other in later.iter() {
                    let c = row_cosines(&v.outputs[o], &other.outputs[o], widths[o]);
                    rows.iter_mut().zip(c).for_each(|(r, c)| *r = r.min(c));
                }
                (name.clone(), rows)
            })
            .collect();
    }
}

/// Per output (named `names`), each row's lowest cosine over every pair of implementations: each
/// variant with the reference ([`FloorVariant::cosines`]) and with the others
/// ([`FloorVariant::among`]).
fn floor_of(variants: &[FloorVariant], names: &[String]) -> Vec<(String, Vec<f64>)> {
    names
        .iter()
        .enumerate()
        .map(|(o, name)| {
            let n = variants.iter().map(|v| v.cosines[o].1.len()).min().unwrap_or(0);
            let row_min = |r: usize| {
                variants
                    .iter()
                    .flat_map(|v| [v.cosines[o].1[r], v.among.get(o).map_or(f64::INFINITY, |a| a.1[r])])
                    .fold(f64::INFINITY, f64::min)
            };
            (name.clone(), (0..n).map(row_min).collect())
        })
        .collect()
}

/// Per output, the lowest row cosine of the GPU's `outputs` with each of `variants`' outputs.
fn gpu_vs_variants(
    graph: &Graph,
    reference: &HashMap<ValueId, Tensor>,
    outputs: &[(String, HostTensor)],
    variants: &[FloorVariant],
) -> anyhow::Result<Vec<(String, Vec<f64>)>> {
    graph
        .outputs
        .iter()
        .zip(outputs)
        .enumerate()
        .map(|(o, ((name, v), (_, gpu)))| {
            let gpu = gpu.to_f32_vec().map_err(anyhow::Error::msg)?;
            let lowest = |t: &[f32]| row_cosines(t, &gpu, width(&reference[v])).into_iter().fold(f64::INFINITY, f64::min);
            Ok((name.clone(), variants.iter().map(|var| lowest(&var.outputs[o])).collect()))
        })
        .collect()
}

/// The floor of the plan at `path` on `texts` (its tokenizer, `max_tokens`), on the CPU alone:
/// [`interpreter_floor`] against the interpreter's f32-sum reference.
pub fn plan_floor(path: &Path, texts: &[String], max_tokens: usize) -> anyhow::Result<Floor> {
    let plan = Plan::load(path, None)?;
    let graph = ir::parse(&plan.meta().ir_text).map_err(|e| anyhow::anyhow!("{}: stored IR does not parse: {e}", path.display()))?;
    let weights = PlanWeights::load(&plan)?;
    let batch = plan_tokenizer(&plan, max_tokens)?.encode(texts)?;
    let inputs = batch.inputs();
    let mut reference = HashMap::new();
    let outs = interp::run(&graph, &weights, &inputs)?;
    for ((_, v), (_, t)) in graph.outputs.iter().zip(outs) {
        reference.insert(*v, t);
    }
    interpreter_floor(&graph, &weights, &inputs, &reference, Some(&KernelSums::of_plan(plan.meta(), &graph)))
}

/// The first output of the GPU and of the interpreter, each against the imported model's FP32
/// graph on the same texts.
fn fp32_comparison(
    dir: &Path,
    texts: &[String],
    graph: &Graph,
    reference: &HashMap<ValueId, Tensor>,
    gpu: &[(String, HostTensor)],
) -> anyhow::Result<Fp32Comparison> {
    let model = crate::import::load(dir, &crate::import::ImportOptions::default())?;
    let tok = model.tokenizer.as_ref().ok_or_else(|| anyhow::anyhow!("{}: no tokenizer.json", dir.display()))?;
    let fp32 = interp::run(&model.graph, &model.weights, &tok.encode(texts)?.inputs())?;
    let want = fp32.first().ok_or_else(|| anyhow::anyhow!("{}: the model has no output", dir.display()))?.1.to_f32_vec();
    let (_, v) = graph.outputs.first().ok_or_else(|| anyhow::anyhow!("the plan has no output"))?;
    let interp_out = reference[v].to_f32_vec();
    let gpu_out = gpu.first().ok_or_else(|| anyhow::anyhow!("no GPU output"))?.1.to_f32_vec().map_err(anyhow::Error::msg)?;
    let w = width(&reference[v]);
    Ok(Fp32Comparison { gpu: row_cosines(&gpu_out, &want, w), interpreter: row_cosines(&interp_out, &want, w) })
}

/// Every value the interpreter computes for `inputs` with f32 sums, and for narrow-code values
/// the candidates of [`References`] ([`references_of`]).
fn reference_values(graph: &Graph, weights: &PlanWeights, inputs: &[(&str, Tensor)]) -> anyhow::Result<References> {
    let mut values = HashMap::new();
    interp::run_observed(graph, weights, inputs, &mut |v, t| {
        values.insert(v, t.clone());
    })?;
    references_of(graph, values)
}

/// The [`References`] of `values` (every value of one interpreter run with f32 sums): for
/// narrow-code values, [`wide_values`], [`code_windows`] and [`flip_windows`].
pub fn references_of(graph: &Graph, values: HashMap<ValueId, Tensor>) -> anyhow::Result<References> {
    let wide = wide_values(graph, &values)?;
    let windows = code_windows(graph, &values)?;
    let flips = flip_windows(graph, &values)?;
    let magnitudes = magnitude::sum_magnitudes(graph, &values);
    Ok(References { values, wide, windows, flips, magnitudes })
}

/// The operands of `node` as the interpreter computed them, or `None` if one is missing (a node
/// the run skipped: its outputs have no reference either, and judging them fails).
fn operands(node: &ir::Node, values: &HashMap<ValueId, Tensor>) -> Option<Vec<Arc<Tensor>>> {
    node.inputs.iter().map(|v| values.get(v).map(|t| Arc::new(t.clone()))).collect()
}

/// Every narrow-code value, re-evaluated by its node on the operands in `values` (the reference's,
/// as teacher forcing hands them to the GPU) with f64 sums ([`interp::eval_op`]): where a sum
/// lies within f32 rounding of a code boundary, the other code.
pub fn wide_values(graph: &Graph, values: &HashMap<ValueId, Tensor>) -> anyhow::Result<HashMap<ValueId, Tensor>> {
    let opts = interp::RunOptions { accumulation: interp::Accumulation::F64, ..Default::default() };
    let is_codes = |v: &ValueId| values.get(v).is_some_and(|t| Tolerance::of(t.dtype) == Tolerance::Codes);
    let mut wide = HashMap::new();
    for (_, node) in graph.nodes.iter() {
        if node.op.is_source() || !node.outputs.iter().any(is_codes) {
            continue;
        }
        let outs: Option<Vec<(DType, Vec<usize>)>> =
            node.outputs.iter().map(|v| values.get(v).map(|t| (t.dtype, t.shape.clone()))).collect();
        let (Some(args), Some(outs)) = (operands(node, values), outs) else { continue };
        let results =
            interp::eval_op(&node.op, args, &outs, &opts).map_err(|e| anyhow::anyhow!("f64 sums of {}: {e}", node.op.mnemonic()))?;
        for (v, t) in node.outputs.iter().zip(results) {
            if is_codes(v) {
                wide.insert(*v, t);
            }
        }
    }
    Ok(wide)
}

/// For every quantized `attention` output, its score-flip window ([`interp::score_flip_window`])
/// from the node's operands as the interpreter computed them.
pub fn flip_windows(graph: &Graph, values: &HashMap<ValueId, Tensor>) -> anyhow::Result<HashMap<ValueId, (Tensor, Tensor)>> {
    attention_windows(graph, values, "flip window", interp::score_flip_window)
}

/// For every node whose narrow-code output went through a transcendental function on the GPU
/// (the softmax `expf` of `attention` and `causal_attention`), the lowest and highest code per
/// element that the GPU may write ([`interp::code_window`]), from the node's operands as the
/// interpreter computed them.
pub fn code_windows(graph: &Graph, values: &HashMap<ValueId, Tensor>) -> anyhow::Result<HashMap<ValueId, (Tensor, Tensor)>> {
    attention_windows(graph, values, "code window", interp::code_window)
}

/// The lowest and highest code per element.
type Window = (Tensor, Tensor);

/// An op's code window (`interp::code_window`, `interp::flip_window`).
type WindowFn = fn(&ir::Op, Vec<std::sync::Arc<Tensor>>, &Tensor) -> Result<Option<Window>, String>;

/// `window(op, operands, output)` for every `attention` or `causal_attention` whose first output
/// holds narrow codes, where it gives one; `what` names the window in errors.
fn attention_windows(
    graph: &Graph,
    values: &HashMap<ValueId, Tensor>,
    what: &str,
    window: WindowFn,
) -> anyhow::Result<HashMap<ValueId, Window>> {
    let mut windows = HashMap::new();
    for (_, node) in graph.nodes.iter() {
        if !matches!(node.op, ir::Op::Attention(_) | ir::Op::CausalAttention(_)) {
            continue;
        }
        let Some((&out, Some(y))) = node.outputs.first().map(|v| (v, values.get(v))) else { continue };
        if Tolerance::of(y.dtype) != Tolerance::Codes {
            continue;
        }
        let Some(args) = operands(node, values) else { continue };
        if let Some(w) = window(&node.op, args, y).map_err(|e| anyhow::anyhow!("{what} of %{}: {e}", out.index()))? {
            windows.insert(out, w);
        }
    }
    Ok(windows)
}

/// Compares every launch's results with the reference, then puts the reference in their place.
fn per_kernel(ctx: &mut Context<'_>, graph: &Graph, refs: &References, inputs: &[(&str, HostTensor)]) -> anyhow::Result<Vec<KernelCheck>> {
    let meta = ctx.engine().meta().clone();
    let mut checks = Vec::new();
    ctx.run_checked(inputs, &mut |index, launch, written| {
        let (judged, forced) = judge_launch(graph, &meta, refs, index, launch, written);
        checks.extend(judged);
        forced
    })?;
    Ok(checks)
}

/// The interpreter's tensor as the runtime's bytes.
pub fn to_host(t: &Tensor) -> HostTensor {
    HostTensor::from_bytes(t.dtype.to_string(), t.shape.iter().map(|&d| d as u64).collect(), bytes::encode(t))
}

fn width(t: &Tensor) -> usize {
    t.shape.last().copied().unwrap_or(1).max(1)
}

/// Cosine similarity of each row of `a` and `b` (1 for two all-zero rows).
pub fn row_cosines(a: &[f32], b: &[f32], width: usize) -> Vec<f64> {
    let zero = |r: &[f32]| r.iter().all(|&x| x == 0.0);
    a.chunks(width).zip(b.chunks(width)).map(|(x, y)| if zero(x) && zero(y) { 1.0 } else { crate::quant::eval::cosine(x, y) }).collect()
}

/// Random inputs ([`inputs::bert_batch`]) through the graph path; counts runs with a non-finite
/// output.
fn random_runs(
    ctx: &mut Context<'_>,
    engine: &Engine,
    space: inputs::InputSpace,
    opts: &CheckOptions,
) -> anyhow::Result<(usize, Option<String>)> {
    let meta = engine.meta();
    let max = |s: &str| meta.symbols.iter().find(|(n, _)| n == s).map_or(1, |&(_, m)| m);
    let (max_b, max_s) = (max("B"), max("S"));
    let mut rng = inputs::SplitMix::new(opts.seed);
    let mut bad = 0;
    let mut first = None;
    for run in 0..opts.random_runs {
        let b = 1 + rng.below(max_b.min(64));
        let s = 1 + rng.below(max_s.min(512));
        let lengths: Vec<u64> = (0..b).map(|_| 1 + rng.below(s)).collect();
        let batch = inputs::bert_batch(space, s, &lengths, &mut |n| rng.below(n));
        for (name, out) in ctx.run(&inputs::bound_by(meta, batch))? {
            let xs = out.to_f32_vec().map_err(anyhow::Error::msg)?;
            if let Some(i) = xs.iter().position(|x| !x.is_finite()) {
                bad += 1;
                first.get_or_insert(format!("run {run}: batch {b} × {s}: output `{name}` element {i} is {}", xs[i]));
                break;
            }
        }
    }
    Ok((bad, first))
}

#[cfg(test)]
mod bar_tests {
    use super::CheckReport;
    use std::collections::HashMap;

    fn report(gpu: f64, floor: f64) -> CheckReport {
        CheckReport {
            kernels: vec![],
            end_to_end: vec![("y".into(), vec![1.0, gpu])],
            floor: vec![("y".into(), vec![1.0, floor])],
            floor_variants: vec![],
            gpu_vs_variants: vec![],
            random_runs: 0,
            random_nonfinite: 0,
            first_nonfinite: None,
            graphs_captured: 0,
            vs_fp32: None,
        }
    }

    #[test]
    fn the_bar_drops_to_the_floor_minus_the_margin_only_when_lower() {
        assert_eq!(report(0.99995, 1.0).end_to_end_bar("y", 0.9999), 0.9999);
        assert!(report(0.99995, 1.0).passed(0.9999));
        assert!(!report(0.99985, 1.0).passed(0.9999), "exact sums: the bar stays");
        let r = report(0.99920, 0.99929);
        assert!((r.end_to_end_bar("y", 0.9999) - 0.99919).abs() < 1e-12);
        assert!(r.passed(0.9999), "within 1e-4 of the floor");
        assert!(!report(0.99910, 0.99929).passed(0.9999), "more than 1e-4 below the floor");
    }

    /// A graph without float sums (GeLU, tanh and exp of an input): summing in f64 changes
    /// nothing, so a floor of f64 sums alone is 1 — degenerate; the variant with CUDA-bound
    /// transcendentals differs, by about their ulps.
    #[test]
    fn the_floor_is_not_degenerate_where_sums_are_exact() {
        let g = crate::ir::parse(
            r#"graph "t" {
  %0 = input "x" : f32[8,256]
  %1 = gelu %0 : f32[8,256]
  %2 = tanh %1 : f32[8,256]
  %3 = exp %2 : f32[8,256]
  return "y" = %3
}"#,
        )
        .unwrap();
        let x = crate::interp::Tensor::f32(vec![8, 256], (0..2048).map(|i| (i as f32 * 0.37).sin() * 3.0).collect());
        let inputs = [("x", x)];
        let w = HashMap::<String, std::sync::Arc<crate::interp::Tensor>>::new();
        let out = crate::interp::run(&g, &w, &inputs).unwrap();
        let reference = [(g.outputs[0].1, out[0].1.clone())].into_iter().collect();
        let (floor, variants) = super::interpreter_floor(&g, &w, &inputs, &reference, None).unwrap();
        assert_eq!(variants.len(), 8);
        assert!(variants[0].cosines[0].1.iter().all(|&c| c == 1.0), "f64 sums change nothing here: {variants:?}");
        assert!(variants[4..7].iter().all(|v| v.cosines[0].1.iter().all(|&c| c == 1.0)), "nor do other f32 orders (no sums)");
        for perturbed in variants[1..4].iter().chain(&variants[7..]) {
            let c = &perturbed.cosines[0].1;
            assert!(c.iter().all(|&c| c < 1.0 && c > 1.0 - 1e-9), "a few ulps apart: {c:?}");
        }
        let lowest = |r: usize| variants.iter().flat_map(|v| [v.cosines[0].1[r], v.among[0].1[r]]).fold(f64::INFINITY, f64::min);
        assert_eq!(floor[0].1, (0..8).map(lowest).collect::<Vec<_>>(), "the floor is the least agreeing pair per row");
        assert!(floor[0].1.iter().all(|&c| c < 1.0), "the draws differ from the reference and from each other");
        let mut r = report(1.0 - 2e-10, 1.0);
        r.floor = floor;
        assert!((r.end_to_end_bar("y", 0.9999) - 0.9999).abs() < 1e-9, "a floor of nearly 1 leaves the bar");
    }

    /// Two second implementations may agree with each other less than either agrees with the
    /// reference (they erred in opposite directions): the floor is the lowest of all pairs.
    #[test]
    fn the_floor_is_the_least_agreeing_pair() {
        let variant = |name: &str, vs_ref: f64, outputs: Vec<f32>| super::FloorVariant {
            name: name.into(),
            cosines: vec![("y".into(), vec![vs_ref])],
            among: vec![],
            outputs: vec![outputs],
        };
        let (a, b) = (vec![1.0f32, 0.2], vec![1.0f32, -0.2]);
        let cos = |x: &[f32], y: &[f32]| super::row_cosines(x, y, 2)[0];
        let (ca, cb) = (cos(&[1.0, 0.0], &a), cos(&[1.0, 0.0], &b));
        let mut vs = vec![variant("a", ca, a.clone()), variant("b", cb, b.clone())];
        super::compare_variants(&mut vs, &[2]);
        let between = cos(&a, &b);
        assert!(between < ca.min(cb), "{between} vs {ca}, {cb}");
        assert_eq!(vs[0].among[0].1, vec![between]);
        assert_eq!(vs[1].among[0].1, vec![f64::INFINITY], "the last variant has no later one");
        assert_eq!(super::floor_of(&vs, &["y".into()]), vec![("y".to_string(), vec![between])]);
    }

    /// The floor of real plans on the CPU: `QFUSE_FLOOR_PLANS` (paths, space-separated) on the
    /// texts of `QFUSE_FLOOR_TEXTS` (one per line). `cargo test --lib floor_of_plans -- --ignored
    /// --nocapture`.
    #[test]
    #[ignore = "needs compiled plans (QFUSE_FLOOR_PLANS)"]
    fn floor_of_plans() {
        let plans = std::env::var("QFUSE_FLOOR_PLANS").expect("QFUSE_FLOOR_PLANS");
        let texts: Vec<String> = std::fs::read_to_string(std::env::var("QFUSE_FLOOR_TEXTS").expect("QFUSE_FLOOR_TEXTS"))
            .unwrap()
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        for plan in plans.split_whitespace() {
            let (floor, variants) = super::plan_floor(std::path::Path::new(plan), &texts, 128).unwrap();
            let min = |c: &[f64]| c.iter().copied().fold(f64::INFINITY, f64::min);
            for (name, rows) in &floor {
                let each: Vec<String> = variants
                    .iter()
                    .map(|v| {
                        let of = |list: &[(String, Vec<f64>)]| min(&list.iter().find(|(n, _)| n == name).unwrap().1);
                        format!("{}: {:.6}, vs later variants {:.6}", v.name, of(&v.cosines), of(&v.among))
                    })
                    .collect();
                println!("{plan} `{name}`: floor min {:.6} ({})", min(rows), each.join("; "));
            }
        }
    }
}
