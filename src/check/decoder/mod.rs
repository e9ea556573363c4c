//! `qfuse check` of a decoder plan: the GPU against the interpreter running the plan's own fused IR
//! and weights on exactly the same steps ([`lockstep`]: one [`Scheduler`], the same page tables,
//! every step run by both), then the GPU alone on random prompts.
//!
//! 1. **Per kernel** ([`kernels`]): the first prompt's first prefill and decode steps, launch by
//!    launch against the interpreter's values of the same step (teacher-forced, named tolerances
//!    per dtype), as the encoder check does on a plain run.
//! 2. **Greedy** ([`greedy`]): prompts generated greedily, the GPU's tokens fed forward; every
//!    token the GPU picks is compared with the interpreter's argmax of the same step.
//! 3. **Perplexity** ([`perplexity`]): an evaluation text cut into chunks as `qfuse eval` cuts it
//!    ([`crate::generate::eval`]), teacher-forced (the text's next token fed forward, not the
//!    model's) through both; the perplexity of each, their ratio (fails beyond
//!    [`perplexity::PPL_TOLERANCE`]) and KL(interpreter ‖ GPU) over the scored positions; beside
//!    them the same numbers for the interpreter against itself summing in another order, its
//!    GEMMs as the plan's kernels sum them (the floor: how much two correct implementations of
//!    the IR differ).
//! 4. **Random prompts** ([`random`]): prompts of random lengths and ids (the vocabulary and its
//!    special tokens) through the GPU alone, a few greedy steps each; any non-finite logit fails.
//!
//! Everything but [`check_decoder_plan`] runs on [`StepModel`]s, so the tests drive it with the
//! interpreter on both sides.

pub mod greedy;
pub mod kernels;
pub mod perplexity;
pub mod random;

use serde::Serialize;

use super::PlanWeights;
use crate::generate::paged::PagedStepper;
use crate::interp::Accumulation;
use crate::plan::Plan;
use crate::runtime::scheduler::{Geometry, Request, Scheduler, StepInput};
use crate::runtime::{Context, Engine};

pub use greedy::GreedyReport;
pub use kernels::StepKernels;
pub use perplexity::{EvalChunks, PerplexityReport};
pub use random::RandomReport;

/// One implementation of a decoder plan's step: the GPU ([`Context::decode_step`]) or the
/// interpreter ([`PagedStepper`]). Each keeps its own paged KV cache.
pub trait StepModel {
    /// Runs one scheduler step; returns the token chosen for each row and each row's last logits.
    fn step(&mut self, input: &StepInput) -> anyhow::Result<(Vec<u32>, Vec<Vec<f32>>)>;
}

impl StepModel for PagedStepper<'_> {
    fn step(&mut self, input: &StepInput) -> anyhow::Result<(Vec<u32>, Vec<Vec<f32>>)> {
        PagedStepper::step(self, input).map_err(anyhow::Error::msg)
    }
}

impl StepModel for Context<'_> {
    fn step(&mut self, input: &StepInput) -> anyhow::Result<(Vec<u32>, Vec<Vec<f32>>)> {
        let out = self.decode_step(input, true)?;
        let logits = out.logits.ok_or_else(|| anyhow::anyhow!("the GPU step returned no logits"))?;
        Ok((out.ids, logits))
    }
}

/// Which token an emitting row feeds forward.
#[derive(Debug, Clone, Copy)]
pub enum Feed<'a> {
    /// The first model's choice (the GPU's, in a check).
    First,
    /// Teacher forcing: the `k`-th row request `r` emits feeds `targets[r][k]`.
    Forced(&'a [Vec<u32>]),
}

/// One emitted row of a lockstep run.
#[derive(Debug, Clone)]
pub struct Row {
    /// The request.
    pub request: u64,
    /// Rows this request emitted before this one.
    pub index: usize,
    /// The token fed forward.
    pub token: u32,
    /// Each model's last logits, in the models' order.
    pub logits: Vec<Vec<f32>>,
}

/// Runs `requests` (ids `0..requests.len()`) through one scheduler over `geometry` (with
/// `max_batch · max_pages` pages), every step on each of `models`, the token of each row chosen
/// by `feed`; `on_row` sees every row that emits a token (rows of a prefill chunk that does not
/// end its prompt emit none). Fails when a model returns the wrong number of rows, a token lies
/// outside the logits' vocabulary, or a page is not returned.
pub fn lockstep(
    geometry: Geometry,
    requests: Vec<Request>,
    models: &mut [&mut dyn StepModel],
    feed: &Feed<'_>,
    on_row: &mut dyn FnMut(Row) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    anyhow::ensure!(!models.is_empty(), "a lockstep run needs a model");
    let pages = geometry.max_batch.saturating_mul(geometry.max_pages);
    let mut sched = Scheduler::new(geometry, pages);
    let mut emitted = vec![0usize; requests.len()];
    for (i, r) in requests.into_iter().enumerate() {
        anyhow::ensure!(r.id == i as u64, "request {i} has id {}: ids must be 0..n in order", r.id);
        sched.submit(r).map_err(anyhow::Error::msg)?;
    }
    while sched.pending() > 0 {
        let mut logits: Vec<Vec<Vec<f32>>> = Vec::with_capacity(models.len());
        let mut rows = Vec::new();
        let report = sched.step(|input| -> anyhow::Result<Vec<u32>> {
            rows.clone_from(&input.requests);
            let mut first = Vec::new();
            for (m, model) in models.iter_mut().enumerate() {
                let (ids, l) = model.step(input)?;
                anyhow::ensure!(
                    ids.len() == input.batch && l.len() == input.batch,
                    "model {m}: {} rows for a step of {}",
                    l.len(),
                    input.batch
                );
                if m == 0 {
                    first = ids;
                }
                logits.push(l);
            }
            let chosen = match feed {
                Feed::First => first,
                Feed::Forced(targets) => input.requests.iter().map(|&r| forced(targets, &emitted, r)).collect::<anyhow::Result<_>>()?,
            };
            for (b, &t) in chosen.iter().enumerate() {
                let vocab = logits[0][b].len();
                anyhow::ensure!((t as usize) < vocab, "request {}: token {t} lies outside the vocabulary of {vocab}", input.requests[b]);
            }
            Ok(chosen)
        })?;
        for (b, &(request, token)) in report.emitted.iter().enumerate() {
            anyhow::ensure!(rows.get(b) == Some(&request), "emitted row {b} is request {request}, not the step's row");
            let counter = &mut emitted[request as usize];
            let row_logits = logits.iter_mut().map(|l| std::mem::take(&mut l[b])).collect();
            on_row(Row { request, index: *counter, token, logits: row_logits })?;
            *counter += 1;
        }
    }
    anyhow::ensure!(sched.pages_in_use() == 0, "pages leaked: {} in use after the run", sched.pages_in_use());
    Ok(())
}

/// The token request `r` feeds after its rows so far (a prefill row that emits nothing is given
/// the same token, which the scheduler drops).
fn forced(targets: &[Vec<u32>], emitted: &[usize], r: u64) -> anyhow::Result<u32> {
    let k = emitted.get(r as usize).copied().unwrap_or(0);
    targets.get(r as usize).and_then(|t| t.get(k)).copied().ok_or_else(|| anyhow::anyhow!("request {r} has no target for row {k}"))
}

/// What to check, besides the greedy prompts.
#[derive(Debug, Clone, Default)]
pub struct DecoderCheckOptions {
    /// Greedy prompts (token ids).
    pub prompts: Vec<Vec<u32>>,
    /// Greedy tokens per prompt.
    pub max_new: u32,
    /// Judge the first prompt's first prefill and decode steps kernel by kernel.
    pub kernels: bool,
    /// The evaluation text's chunks, if perplexity is checked.
    pub eval: Option<EvalChunks>,
    /// Also run the interpreter summing in another order on the evaluation text (the floor).
    pub floor: bool,
    /// Random prompts run on the GPU alone.
    pub random: Vec<Vec<u32>>,
}

/// Everything a decoder check measured.
#[derive(Debug, Clone, Serialize)]
pub struct DecoderCheck {
    /// Per kernel on a prefill and a decode step (empty when not asked).
    pub kernels: Vec<StepKernels>,
    /// Greedy generation, GPU vs interpreter.
    pub greedy: GreedyReport,
    /// Teacher-forced perplexity, GPU vs interpreter.
    pub perplexity: Option<PerplexityReport>,
    /// Random prompts on the GPU.
    pub random: RandomReport,
}

impl DecoderCheck {
    /// Passes when each part passes.
    pub fn passed(&self) -> bool {
        self.kernels.iter().all(StepKernels::passed)
            && self.greedy.passed()
            && self.perplexity.as_ref().is_none_or(PerplexityReport::passed)
            && self.random.passed()
    }
}

/// Runs every part of the module doc on the plan at `plan_path` (GPU 0).
pub fn check_decoder_plan(plan_path: &std::path::Path, opts: &DecoderCheckOptions) -> anyhow::Result<DecoderCheck> {
    let plan = Plan::load(plan_path, None)?;
    let d = plan.meta().decoder.clone().ok_or_else(|| anyhow::anyhow!("{}: not a decoder plan", plan_path.display()))?;
    let graph = crate::ir::parse(&plan.meta().ir_text).map_err(|e| anyhow::anyhow!("{}: its IR: {e}", plan_path.display()))?;
    let weights = PlanWeights::load(&plan)?;
    let engine = Engine::load(plan_path)?;
    let geometry = Geometry::of(&d);
    let pages = geometry.max_batch.saturating_mul(geometry.max_pages);
    let mut gpu = engine.context()?;
    gpu.attach_kv_cache(pages)?;
    let interpreter = |accumulation| PagedStepper::new(&graph, &weights, geometry, pages, accumulation).map_err(anyhow::Error::msg);
    let kernels = match (opts.kernels, opts.prompts.first()) {
        (true, Some(prompt)) => {
            let mut judge = kernels::KernelJudge::new(&mut gpu, interpreter(Accumulation::F32)?, &graph);
            kernels::check_kernels(geometry, &mut judge, prompt)?
        }
        _ => Vec::new(),
    };
    let greedy = greedy::check_greedy(geometry, &mut gpu, &mut interpreter(Accumulation::F32)?, &opts.prompts, opts.max_new)?;
    let perplexity = match &opts.eval {
        Some(eval) => {
            let mut reference = interpreter(Accumulation::F32)?;
            let sums = super::KernelSums::of_plan(plan.meta(), &graph);
            let mut floor = if opts.floor { Some(perplexity::floor_stepper(interpreter(Accumulation::F32)?, &sums)) } else { None };
            Some(perplexity::check_perplexity(geometry, &mut gpu, &mut reference, floor.as_mut().map(|f| f as &mut dyn StepModel), eval)?)
        }
        None => None,
    };
    let random = random::check_random(geometry, &mut gpu, &opts.random)?;
    Ok(DecoderCheck { kernels, greedy, perplexity, random })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::scheduler::SamplingParams;

    /// Logits `[0, 1, 2, 3]` per row (so argmax 3), `rows_short` fewer rows than asked, and the
    /// token `pick` chosen for each row.
    struct Fake {
        rows_short: usize,
        pick: u32,
    }

    impl StepModel for Fake {
        fn step(&mut self, input: &StepInput) -> anyhow::Result<(Vec<u32>, Vec<Vec<f32>>)> {
            let n = input.batch.saturating_sub(self.rows_short);
            Ok((vec![self.pick; n], vec![vec![0.0, 1.0, 2.0, 3.0]; n]))
        }
    }

    const GEO: Geometry = Geometry { page_size: 4, max_pages: 4, max_seq: 16, max_batch: 2, max_step_tokens: 4 };

    fn request(id: u64, len: usize) -> Request {
        Request { id, prompt: vec![1; len], max_new: 3, stop: vec![], sampling: SamplingParams::default() }
    }

    fn run(models: &mut [&mut dyn StepModel], requests: Vec<Request>) -> anyhow::Result<Vec<(u64, usize, u32)>> {
        let mut rows = Vec::new();
        lockstep(GEO, requests, models, &Feed::First, &mut |r| {
            rows.push((r.request, r.index, r.token));
            Ok(())
        })?;
        Ok(rows)
    }

    #[test]
    fn every_emitted_row_is_seen_once_in_order_per_request() {
        let rows = run(&mut [&mut Fake { rows_short: 0, pick: 2 }], vec![request(0, 6), request(1, 1), request(2, 2)]).unwrap();
        assert_eq!(rows.len(), 9);
        for r in 0..3 {
            let mine: Vec<(usize, u32)> = rows.iter().filter(|x| x.0 == r).map(|x| (x.1, x.2)).collect();
            assert_eq!(mine, [(0, 2), (1, 2), (2, 2)], "request {r}: the first model's tokens, indexed 0..3");
        }
    }

    #[test]
    fn broken_models_and_requests_are_errors() {
        let short = run(&mut [&mut Fake { rows_short: 1, pick: 0 }], vec![request(0, 2)]).unwrap_err();
        assert!(short.to_string().contains("0 rows for a step of 1"), "{short}");
        let outside = run(&mut [&mut Fake { rows_short: 0, pick: 4 }], vec![request(0, 2)]).unwrap_err();
        assert!(outside.to_string().contains("token 4 lies outside the vocabulary of 4"), "{outside}");
        let ids = run(&mut [&mut Fake { rows_short: 0, pick: 0 }], vec![request(1, 2)]).unwrap_err();
        assert!(ids.to_string().contains("ids must be 0..n"), "{ids}");
        let second = run(&mut [&mut Fake { rows_short: 0, pick: 0 }, &mut Fake { rows_short: 1, pick: 0 }], vec![request(0, 2)]);
        assert!(second.unwrap_err().to_string().contains("model 1"));
        let targets = [vec![1u32]];
        let mut m = Fake { rows_short: 0, pick: 0 };
        let forced = lockstep(GEO, vec![request(0, 2)], &mut [&mut m], &Feed::Forced(&targets), &mut |_| Ok(()));
        assert!(forced.unwrap_err().to_string().contains("request 0 has no target for row 1"), "more rows than targets");
    }
}
