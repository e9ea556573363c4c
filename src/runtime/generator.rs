//! [`Generator`]: text generation from a decoder plan on one GPU — a [`Context`] with a paged KV
//! cache, driven by the in-flight batching [`Scheduler`]. Token ids in, token ids out (the
//! tokenizer lives with the caller, so the runtime-only build generates too).
//!
//! ```no_run
//! use qfuse::runtime::{Engine, Generator, scheduler::{Request, SamplingParams}};
//! let engine = Engine::load("smollm2-fp8.plan".as_ref())?;
//! let mut gen = Generator::new(&engine, None)?;
//! gen.submit(Request { id: 0, prompt: vec![1, 2, 3], max_new: 16, stop: vec![2], sampling: SamplingParams::default() })?;
//! let done = gen.run(&mut |id, token| println!("{id}: {token}"))?;
//! # Ok::<(), qfuse::runtime::RuntimeError>(())
//! ```
//!
//! One generator per thread (each owns its context and cache); the [`Engine`] is shared.

use super::context::{Context, StepOutput};
use super::engine::Engine;
use super::error::RuntimeError;
use super::kv;
use super::scheduler::{Completion, Geometry, Request, Scheduler, StepInput, StepReport};

/// Generates with a decoder plan.
pub struct Generator<'e> {
    ctx: Context<'e>,
    sched: Scheduler,
    /// Keep each step's sampled rows' logits (for verification).
    pub keep_logits: bool,
    last_logits: Vec<(u64, Vec<f32>)>,
}

impl<'e> Generator<'e> {
    /// A generator over `engine` with a KV cache of `pages` pages per pool (default: enough for
    /// `max_batch` sequences of `max_seq` tokens).
    pub fn new(engine: &'e Engine, pages: Option<u32>) -> Result<Self, RuntimeError> {
        let d = kv::decoder(engine)?;
        let geometry = Geometry::of(d);
        let pages = pages.unwrap_or_else(|| geometry.max_batch.saturating_mul(geometry.max_pages));
        let mut ctx = engine.context()?;
        ctx.attach_kv_cache(pages)?;
        Ok(Self { ctx, sched: Scheduler::new(geometry, pages), keep_logits: false, last_logits: Vec::new() })
    }

    /// Queues a request (it joins the running batch as soon as pages and a batch slot are free).
    pub fn submit(&mut self, req: Request) -> Result<(), RuntimeError> {
        self.sched.submit(req).map_err(RuntimeError::Usage)
    }

    /// Requests not finished.
    pub fn pending(&self) -> usize {
        self.sched.pending()
    }

    /// KV pages in use (0 once every request finished).
    pub fn pages_in_use(&self) -> u32 {
        self.sched.pages_in_use()
    }

    /// One scheduler step on the GPU.
    pub fn step(&mut self) -> Result<StepReport, RuntimeError> {
        let (ctx, keep) = (&mut self.ctx, self.keep_logits);
        let mut logits = None;
        let report = self.sched.step(|input: &StepInput| {
            let StepOutput { ids, logits: l } = ctx.decode_step(input, keep)?;
            logits = l;
            Ok::<_, RuntimeError>(ids)
        })?;
        self.keep_step_logits(&report, logits);
        Ok(report)
    }

    fn keep_step_logits(&mut self, report: &StepReport, logits: Option<Vec<Vec<f32>>>) {
        if let Some(l) = logits {
            // A step's rows all emit a token, or (a prefill chunk short of the prompt's end) none.
            self.last_logits = report.emitted.iter().zip(l).map(|(&(id, _), row)| (id, row)).collect();
        }
    }

    /// [`Self::step`], with `probe` first given the context and the step's input (profiling:
    /// [`Context::profile_step`], [`Context::graph_marginals`]); the real step then runs and
    /// rewrites every KV-cache entry of the step's positions, whatever the probe left there.
    /// Also returns the step's `batch × seq` token rows.
    pub fn step_probed(
        &mut self,
        probe: &mut dyn FnMut(&mut Context<'e>, &StepInput) -> Result<(), RuntimeError>,
    ) -> Result<(StepReport, usize), RuntimeError> {
        let (ctx, keep) = (&mut self.ctx, self.keep_logits);
        let mut logits = None;
        let mut rows = 0;
        let report = self.sched.step(|input: &StepInput| {
            rows = input.batch * input.seq;
            probe(ctx, input)?;
            let StepOutput { ids, logits: l } = ctx.decode_step(input, keep)?;
            logits = l;
            Ok::<_, RuntimeError>(ids)
        })?;
        self.keep_step_logits(&report, logits);
        Ok((report, rows))
    }

    /// The logits behind the last step's tokens, `(request id, logits)`, with `keep_logits`.
    pub fn last_logits(&self) -> &[(u64, Vec<f32>)] {
        &self.last_logits
    }

    /// Steps until every submitted request finished; `on_token(id, token)` sees every token.
    pub fn run(&mut self, on_token: &mut dyn FnMut(u64, u32)) -> Result<Vec<Completion>, RuntimeError> {
        let mut done = Vec::new();
        while self.sched.pending() > 0 {
            let report = self.step()?;
            report.emitted.iter().for_each(|&(id, t)| on_token(id, t));
            done.extend(report.finished);
        }
        Ok(done)
    }

    /// The context (timing, profiling).
    pub fn context(&mut self) -> &mut Context<'e> {
        &mut self.ctx
    }
}
