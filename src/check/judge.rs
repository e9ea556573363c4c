//! Judging what one launch wrote: every written buffer is compared with the interpreter's value
//! of its IR value, and a buffer that cannot be compared (it names no IR value, the interpreter
//! has no value for it, its shape or bytes disagree) is a failed check, never a silent skip.
//!
//! A launch whose kernel records how it sums (a tensor-core GEMM, [`PlanMeta::launch_sums`]) is
//! judged against its node evaluated on the same operands summing exactly as the kernel does
//! ([`kernel_sums`]): what remains between a correct kernel and that reference is its epilogue's
//! roundings, which are the interpreter's except for CUDA's transcendental functions, so the
//! tolerance is that and nothing else ([`compare_kernel_sums`]).
//!
//! Independent of the GPU: [`judge_launch`] takes the written buffers as host tensors, so tests
//! plant wrong "GPU" results here.

use std::collections::HashMap;
use std::sync::Arc;

use super::compare::{compare, compare_kernel_sums, Comparison, Reference};
use super::sums::{launch_accumulation, launch_node};
use super::{operands, to_host, KernelCheck};
use crate::interp::{self, Accumulation, Perturbation, RunOptions, Tensor};
use crate::ir::{Graph, ValueId};
use crate::plan::{LaunchMeta, PlanMeta};
use crate::runtime::HostTensor;

/// The interpreter's values of every IR value: with f32 sums (the reference) and, for narrow-code
/// values, the candidates a correct GPU may write instead: the node evaluated with f64 sums on the
/// same operands (which codes sit on a rounding boundary), and for quantized `attention` outputs
/// the windows of codes its transcendental error and its scores' rounding can reach.
pub struct References {
    /// f32 sums.
    pub values: HashMap<ValueId, Tensor>,
    /// Narrow-code values only: their node evaluated with f64 sums on the operands in `values`
    /// (teacher-forced, like the GPU's kernel).
    pub wide: HashMap<ValueId, Tensor>,
    /// Lowest and highest code per element ([`crate::interp::code_window`]): quantized outputs of
    /// `attention` (the softmax's `expf`, the P·V sum's order).
    pub windows: HashMap<ValueId, (Tensor, Tensor)>,
    /// Lowest and highest code per element with scores rounded the other way
    /// ([`crate::interp::score_flip_window`]): quantized outputs of `attention`.
    pub flips: HashMap<ValueId, (Tensor, Tensor)>,
    /// Float GEMM results whose epilogue adds operands: the magnitude per element that their
    /// relative tolerance applies to, `|ref| + Σ |added|` ([`super::magnitude`]).
    pub magnitudes: HashMap<ValueId, Tensor>,
}

/// The checks of launch `index` and the reference values to write in place of the GPU's
/// (teacher forcing) for the buffers that have one.
pub fn judge_launch(
    graph: &Graph,
    meta: &PlanMeta,
    refs: &References,
    index: usize,
    launch: &LaunchMeta,
    written: &[(u32, HostTensor)],
) -> (Vec<KernelCheck>, Vec<(u32, HostTensor)>) {
    let mut checks = Vec::new();
    let mut forced = Vec::new();
    let summed = launch_accumulation(meta, index).map(|acc| kernel_sums(graph, meta, refs, launch, acc));
    for (buffer, gpu) in written {
        let Some(b) = meta.buffers.get(*buffer as usize) else {
            let comparison = Comparison::mismatch(format!("launch wrote buffer {buffer}, which the plan does not have"));
            checks.push(KernelCheck {
                launch: index,
                label: launch.label.clone(),
                value: format!("buffer {buffer}"),
                dtype: gpu.dtype.clone(),
                comparison,
            });
            continue;
        };
        let want = value_id(graph, &b.name).and_then(|v| Some((v, refs.values.get(&v)?)));
        let comparison = match (want, &summed) {
            (None, _) => Comparison::mismatch(format!("buffer `{}` has no interpreter value to compare with", b.name)),
            (Some((_, want)), Some(Err(e))) => {
                forced.push((*buffer, to_host(want)));
                Comparison::mismatch(format!("the kernel's sums could not be evaluated: {e}"))
            }
            (Some((v, want)), Some(Ok(summed))) => {
                // Teacher forcing hands on the reference (f32 sums): the next kernels' references
                // were computed from it.
                forced.push((*buffer, to_host(want)));
                match summed.get(&v) {
                    Some(s) => compare_summed(s, gpu),
                    None => Comparison::mismatch(format!("`{}` is not a result of the launch's node", b.name)),
                }
            }
            (Some((v, want)), None) => {
                forced.push((*buffer, to_host(want)));
                let candidates = Candidates {
                    wide: refs.wide.get(&v),
                    window: refs.windows.get(&v),
                    flips: refs.flips.get(&v),
                    magnitude: refs.magnitudes.get(&v),
                };
                compare_tensor(want, candidates, gpu)
            }
        };
        checks.push(KernelCheck { launch: index, label: launch.label.clone(), value: b.name.clone(), dtype: b.dtype.clone(), comparison });
    }
    (checks, forced)
}

/// A result of a node evaluated as its kernel sums ([`kernel_sums`]): the value, and per element
/// the lowest and highest value its epilogue's transcendental functions can reach.
pub struct Summed {
    /// With the host's transcendental functions.
    pub value: Tensor,
    /// The lowest per element, the host's included.
    pub low: Tensor,
    /// The highest per element, the host's included.
    pub high: Tensor,
}

/// The results of `launch`'s node evaluated on the reference operands (`refs.values`, which
/// teacher forcing hands the kernel) summing as `acc`, with the host's transcendental functions
/// and with each at either end of CUDA's documented error ([`Perturbation::Bound`]: a GEMM
/// epilogue depends monotonically on its function's result, so the two ends bracket every
/// correct kernel's).
pub fn kernel_sums(
    graph: &Graph,
    meta: &PlanMeta,
    refs: &References,
    launch: &LaunchMeta,
    acc: Accumulation,
) -> Result<HashMap<ValueId, Summed>, String> {
    let node = &graph.nodes[launch_node(graph, meta, launch).ok_or("the launch writes no IR value")?];
    let args = operands(node, &refs.values).ok_or("an operand has no interpreter value")?;
    let outs = node
        .outputs
        .iter()
        .map(|v| refs.values.get(v).map(|t| (t.dtype, t.shape.clone())))
        .collect::<Option<Vec<_>>>()
        .ok_or("a result has no interpreter value")?;
    let eval = |perturbation| {
        let opts = RunOptions { accumulation: acc, perturbation, ..Default::default() };
        interp::eval_op(&node.op, args.iter().map(Arc::clone).collect(), &outs, &opts)
    };
    let value = eval(None)?;
    let down = eval(Some(Perturbation::Bound { up: false }))?;
    let up = eval(Some(Perturbation::Bound { up: true }))?;
    let mut summed = HashMap::new();
    for (((&v, value), down), up) in node.outputs.iter().zip(value).zip(down).zip(up) {
        let (x, d, u) = (value.to_f32_vec(), down.to_f32_vec(), up.to_f32_vec());
        let bound = |pick: fn(f32, f32) -> f32| {
            let xs = x.iter().zip(&d).zip(&u).map(|((&x, &d), &u)| pick(x, pick(d, u))).collect();
            Tensor::from_f32_as(value.dtype, value.shape.clone(), xs)
        };
        let (low, high) = (bound(f32::min), bound(f32::max));
        summed.insert(v, Summed { value, low, high });
    }
    Ok(summed)
}

/// [`compare_kernel_sums`] of the GPU's `gpu` with `s`, after checking shape and dtype.
fn compare_summed(s: &Summed, gpu: &HostTensor) -> Comparison {
    if let Err(c) = same_layout(&s.value, gpu) {
        return c;
    }
    match gpu.to_f32_vec() {
        Ok(got) => compare_kernel_sums(s.value.dtype, &s.value.to_f32_vec(), (&s.low.to_f32_vec(), &s.high.to_f32_vec()), &got),
        Err(e) => Comparison::mismatch(e),
    }
}

/// A mismatch when the GPU's tensor differs from `want` in shape or dtype.
fn same_layout(want: &Tensor, gpu: &HostTensor) -> Result<(), Comparison> {
    if !gpu.shape.iter().map(|&d| d as usize).eq(want.shape.iter().copied()) {
        return Err(Comparison::mismatch(format!("GPU shape {:?}, interpreter {:?}", gpu.shape, want.shape)));
    }
    if gpu.dtype != want.dtype.to_string() {
        return Err(Comparison::mismatch(format!("GPU dtype {}, interpreter {}", gpu.dtype, want.dtype)));
    }
    Ok(())
}

/// What else than the reference a value's GPU result may equal ([`References`]).
struct Candidates<'a> {
    wide: Option<&'a Tensor>,
    window: Option<&'a (Tensor, Tensor)>,
    flips: Option<&'a (Tensor, Tensor)>,
    magnitude: Option<&'a Tensor>,
}

/// A pair of per-element bounds of `want`'s shape, decoded (`None` when absent or misshapen).
fn pair_f32(pair: Option<&(Tensor, Tensor)>, want: &Tensor) -> Option<(Vec<f32>, Vec<f32>)> {
    pair.filter(|(lo, hi)| lo.shape == want.shape && hi.shape == want.shape).map(|(lo, hi)| (lo.to_f32_vec(), hi.to_f32_vec()))
}

/// Borrows a decoded pair.
fn slices(p: &Option<(Vec<f32>, Vec<f32>)>) -> Option<(&[f32], &[f32])> {
    p.as_ref().map(|(lo, hi)| (lo.as_slice(), hi.as_slice()))
}

fn compare_tensor(want: &Tensor, candidates: Candidates<'_>, gpu: &HostTensor) -> Comparison {
    if let Err(c) = same_layout(want, gpu) {
        return c;
    }
    match gpu.to_f32_vec() {
        Ok(got) => {
            let wide = candidates.wide.filter(|w| w.shape == want.shape).map(Tensor::to_f32_vec);
            let (window, flips) = (pair_f32(candidates.window, want), pair_f32(candidates.flips, want));
            let magnitude = candidates.magnitude.filter(|m| m.shape == want.shape).map(Tensor::to_f32_vec);
            let reference = Reference {
                values: &want.to_f32_vec(),
                wide: wide.as_deref(),
                window: slices(&window),
                flips: slices(&flips),
                magnitude: magnitude.as_deref(),
            };
            compare(want.dtype, reference, &got)
        }
        Err(e) => Comparison::mismatch(e),
    }
}

/// The IR value a buffer holds, from its name (`%18`).
pub fn value_id(graph: &Graph, name: &str) -> Option<ValueId> {
    let i: usize = name.strip_prefix('%')?.parse().ok()?;
    (i < graph.values.len()).then(|| ValueId::from(i))
}

#[cfg(test)]
mod sums_tests;
#[cfg(test)]
mod tests;
