//! Judging what one launch wrote: every written buffer is compared with the interpreter's value
//! of its IR value, and a buffer that cannot be compared (it names no IR value, the interpreter
//! has no value for it, its shape or bytes disagree) is a failed check, never a silent skip.
//!
//! Independent of the GPU: [`judge_launch`] takes the written buffers as host tensors, so tests
//! plant wrong "GPU" results here.

use std::collections::HashMap;

use super::compare::{compare, Comparison, Reference};
use super::{to_host, KernelCheck};
use crate::interp::Tensor;
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
        let comparison = match want {
            None => Comparison::mismatch(format!("buffer `{}` has no interpreter value to compare with", b.name)),
            Some((v, want)) => {
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
    if !gpu.shape.iter().map(|&d| d as usize).eq(want.shape.iter().copied()) {
        return Comparison::mismatch(format!("GPU shape {:?}, interpreter {:?}", gpu.shape, want.shape));
    }
    if gpu.dtype != want.dtype.to_string() {
        return Comparison::mismatch(format!("GPU dtype {}, interpreter {}", gpu.dtype, want.dtype));
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
mod tests;
