//! Per kernel on a decoder's steps, as the encoder check does it on a plain run (module doc of
//! [`crate::check`]): the first prefill step and the first decode step of a short greedy run are
//! run on the GPU launch by launch ([`Context::decode_step_checked`]); after each launch every
//! buffer it wrote is judged against the interpreter's value of the same IR value on the same
//! step ([`judge_launch`], named tolerances per dtype) and replaced by it (teacher forcing, so the
//! KV cache's appends write the reference's keys and values too). The run goes on with the
//! interpreter's tokens; steps not judged run plainly on both.

use std::collections::HashMap;

use serde::Serialize;

use super::{lockstep, Feed, StepModel};
use crate::check::{judge_launch, references_of, KernelCheck};
use crate::generate::paged::PagedStepper;
use crate::ir::Graph;
use crate::plan::{LaunchMeta, PlanMeta};
use crate::runtime::scheduler::{Geometry, Request, SamplingParams, StepInput};
use crate::runtime::{Context, HostTensor};

/// What [`LaunchStepper::step_checked`] calls after each launch: `(index, launch, written)` in,
/// the `(buffer, tensor)` pairs to write in their place out (as [`Context::run_checked`]).
pub type OnLaunch<'a> = dyn FnMut(usize, &LaunchMeta, &[(u32, HostTensor)]) -> Vec<(u32, HostTensor)> + 'a;

/// A decoder plan's steps run launch by launch: the GPU ([`Context::decode_step_checked`]), or
/// in tests a stand-in that writes the interpreter's values.
pub trait LaunchStepper {
    /// The plan's metadata.
    fn meta(&self) -> &PlanMeta;
    /// One step, launch by launch, `on_launch` after each.
    fn step_checked(&mut self, input: &StepInput, on_launch: &mut OnLaunch<'_>) -> anyhow::Result<()>;
    /// One step as usual (its keys and values appended to the cache).
    fn step_plain(&mut self, input: &StepInput) -> anyhow::Result<()>;
}

impl LaunchStepper for Context<'_> {
    fn meta(&self) -> &PlanMeta {
        self.engine().meta()
    }

    fn step_checked(&mut self, input: &StepInput, on_launch: &mut OnLaunch<'_>) -> anyhow::Result<()> {
        self.decode_step_checked(input, on_launch)?;
        Ok(())
    }

    fn step_plain(&mut self, input: &StepInput) -> anyhow::Result<()> {
        self.decode_step(input, false)?;
        Ok(())
    }
}

/// The kernels of one judged step.
#[derive(Debug, Clone, Serialize)]
pub struct StepKernels {
    /// `prefill` or `decode`, with the step's shape.
    pub step: String,
    /// Every launch's verdict, in schedule order.
    pub kernels: Vec<KernelCheck>,
}

impl StepKernels {
    /// True when every kernel passed.
    pub fn passed(&self) -> bool {
        self.kernels.iter().all(|k| k.comparison.pass)
    }
}

/// The kind of a step: a prefill chunk (`S > 1`) or a decode step.
fn kind(input: &StepInput) -> &'static str {
    if input.seq > 1 {
        "prefill"
    } else {
        "decode"
    }
}

/// A [`StepModel`] that judges the GPU kernel by kernel on the first step of each kind and
/// answers with the interpreter's tokens and logits.
pub struct KernelJudge<'a> {
    gpu: &'a mut dyn LaunchStepper,
    reference: PagedStepper<'a>,
    graph: &'a Graph,
    /// The judged steps.
    pub steps: Vec<StepKernels>,
}

impl<'a> KernelJudge<'a> {
    /// Judges `gpu` (a KV cache attached) against `reference` (the interpreter on `graph`, the
    /// plan's IR).
    pub fn new(gpu: &'a mut dyn LaunchStepper, reference: PagedStepper<'a>, graph: &'a Graph) -> Self {
        Self { gpu, reference, graph, steps: Vec::new() }
    }
}

impl StepModel for KernelJudge<'_> {
    fn step(&mut self, input: &StepInput) -> anyhow::Result<(Vec<u32>, Vec<Vec<f32>>)> {
        let kind = kind(input);
        if self.steps.iter().any(|s| s.step.starts_with(kind)) {
            self.gpu.step_plain(input)?;
            return self.reference.step(input).map_err(anyhow::Error::msg);
        }
        let mut values = HashMap::new();
        let out = self.reference.step_observed(input, &mut |v, t| {
            values.insert(v, t.clone());
        });
        let out = out.map_err(anyhow::Error::msg)?;
        let refs = references_of(self.graph, values)?;
        let meta = self.gpu.meta().clone();
        let graph = self.graph;
        let mut kernels = Vec::new();
        self.gpu.step_checked(input, &mut |index, launch, written| {
            let (judged, forced) = judge_launch(graph, &meta, &refs, index, launch, written);
            kernels.extend(judged);
            forced
        })?;
        self.steps.push(StepKernels { step: format!("{kind} (B = {}, S = {})", input.batch, input.seq), kernels });
        Ok(out)
    }
}

/// Judges `judge`'s GPU on the steps of `prompt` generated for two tokens (one prefill when the
/// prompt has more than one token and fits one chunk, then one decode step).
pub fn check_kernels(geometry: Geometry, judge: &mut KernelJudge<'_>, prompt: &[u32]) -> anyhow::Result<Vec<StepKernels>> {
    let request = Request { id: 0, prompt: prompt.to_vec(), max_new: 2, stop: vec![], sampling: SamplingParams::default() };
    lockstep(geometry, vec![request], &mut [&mut *judge as &mut dyn StepModel], &Feed::First, &mut |_| Ok(()))?;
    Ok(std::mem::take(&mut judge.steps))
}
