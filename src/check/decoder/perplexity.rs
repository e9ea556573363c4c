//! Teacher-forced perplexity of a decoder plan on the GPU and on the interpreter, on the same
//! steps. The text is cut as `qfuse eval` cuts it ([`eval::chunks`]) and scored by the same
//! convention ([`eval::scored_positions`], [`eval::compare`]); each chunk becomes one request whose
//! prompt ends at the first scored position and whose every next token is the text's
//! ([`Feed::Forced`]), so each emitted row holds the logits of one scored position. The chunks run
//! as one decode batch where the plan's `max_batch` allows (more wait their turn).
//!
//! The check fails when the GPU's perplexity is more than [`PPL_TOLERANCE`] away from the
//! interpreter's (relatively), or, where the floor below is further away than that, further than
//! the floor or with more KL ([`PerplexityReport::passed`]). Beside it, a second correct implementation against the
//! interpreter ([`floor_stepper`]: another summation order, [`FLOOR_ACCUMULATION`], every GEMM
//! whose kernel records how it sums summed that way, and the transcendentals moved within CUDA's
//! documented ulp bounds, [`FLOOR_PERTURBATION`]): the KL and
//! perplexity difference of two correct implementations of the same IR, the scale the GPU's
//! numbers are read against. Both kinds of freedom matter: where a recipe's sums are exact
//! (INT8 GEMMs) only the `expf` of the softmax and SiLU tells two correct implementations apart,
//! and a last-bit difference there flips an activation code that the next layers carry.

use serde::Serialize;

use super::{lockstep, Feed, StepModel};
use crate::check::KernelSums;
use crate::generate::eval::{self, Scored};
use crate::generate::paged::PagedStepper;
use crate::interp::{Accumulation, Perturbation};
use crate::runtime::scheduler::{Geometry, Request, SamplingParams};

/// Largest accepted |GPU perplexity / interpreter perplexity − 1|, where two correct
/// implementations agree better than that ([`PerplexityReport::bar`]).
pub const PPL_TOLERANCE: f64 = 0.005;

/// How much more mean KL (nats) than the floor's the GPU may show where the floor sets the bar.
pub const KL_MARGIN: f64 = 1e-4;

/// The floor's second summation order: f32 sums with K in two slices (a split-K kernel's order).
pub const FLOOR_ACCUMULATION: Accumulation = Accumulation::F32SplitK { parts: 2 };

/// The floor's transcendentals: `exp` (softmax, SiLU), `erfc` and `tanh` moved within CUDA's
/// documented ulp bounds, as the encoder check's floor draws them (its first seed).
pub const FLOOR_PERTURBATION: Perturbation = Perturbation::Draw { seed: crate::check::FLOOR_SEED };

/// The floor's second correct implementation: `stepper` summing in [`FLOOR_ACCUMULATION`] order,
/// except every GEMM that `kernel_sums` (the plan's record, [`KernelSums`]) says its kernel sums
/// otherwise — as the hardware the plan runs on does —, with [`FLOOR_PERTURBATION`], whatever
/// numerics it had.
pub fn floor_stepper<'a>(stepper: PagedStepper<'a>, kernel_sums: &KernelSums) -> PagedStepper<'a> {
    let per_node = (!kernel_sums.is_empty()).then(|| kernel_sums.node_accumulation());
    stepper.with_numerics(FLOOR_ACCUMULATION, Some(FLOOR_PERTURBATION)).with_node_accumulation(per_node)
}

/// The evaluation text, cut into chunks.
#[derive(Debug, Clone)]
pub struct EvalChunks {
    /// Where the text came from.
    pub source: String,
    /// Tokens per chunk.
    pub ctx: usize,
    /// The chunks ([`eval::chunks`]), each `ctx` tokens.
    pub chunks: Vec<Vec<u32>>,
}

/// One implementation scored against the interpreter.
#[derive(Debug, Clone, Serialize)]
pub struct Agreement {
    /// What was scored.
    pub name: String,
    /// Its perplexity.
    pub perplexity: f64,
    /// Its perplexity / the interpreter's − 1.
    pub relative: f64,
    /// Mean KL(interpreter ‖ it) over the scored positions, nats.
    pub mean_kl: f64,
    /// 99th percentile of the per-position KL.
    pub p99_kl: f64,
    /// Share of positions where its most likely token is the interpreter's.
    pub same_top: f64,
}

/// What the perplexity check found.
#[derive(Debug, Clone, Serialize)]
pub struct PerplexityReport {
    /// The text's origin.
    pub source: String,
    /// Tokens per chunk.
    pub ctx: usize,
    /// Chunks scored.
    pub chunks: usize,
    /// Positions scored (all chunks).
    pub positions: usize,
    /// The interpreter's perplexity.
    pub interpreter: f64,
    /// The GPU against the interpreter.
    pub gpu: Agreement,
    /// The interpreter summing in another order against the interpreter, when run.
    pub floor: Option<Agreement>,
}

impl PerplexityReport {
    /// The largest accepted |relative perplexity difference|: [`PPL_TOLERANCE`], or where the
    /// floor (a second correct implementation, when run) differs from the interpreter by more,
    /// the floor's own difference — a GPU cannot be asked to agree better than two correct
    /// implementations do (SmolLM2 int8-sq: the floor moves the perplexity by 1.4 %).
    pub fn bar(&self) -> f64 {
        self.floor_beyond_tolerance().map_or(PPL_TOLERANCE, |f| f.relative.abs())
    }

    /// The floor, when it was run and lands further than [`PPL_TOLERANCE`] from the interpreter
    /// (then it sets the bar).
    pub fn floor_beyond_tolerance(&self) -> Option<&Agreement> {
        self.floor.as_ref().filter(|f| f.relative.abs() > PPL_TOLERANCE)
    }

    /// Passes when the GPU's perplexity is within [`Self::bar`] of the interpreter's and, where
    /// the floor set that bar, its mean KL is at most the floor's plus [`KL_MARGIN`] (a NaN
    /// fails).
    pub fn passed(&self) -> bool {
        let floor_kl = self.floor_beyond_tolerance().map_or(f64::INFINITY, |f| f.mean_kl + KL_MARGIN);
        self.gpu.relative.abs() <= self.bar() && self.gpu.mean_kl <= floor_kl
    }
}

/// The teacher-forced requests of `chunks`: request `i`'s prompt is chunk `i` up to its first
/// scored position, and its targets are the tokens after each scored position (fed forward and
/// scored), so it emits exactly one row per scored position.
pub fn forced_requests(chunks: &[Vec<u32>]) -> (Vec<Request>, Vec<Vec<u32>>) {
    let mut requests = Vec::with_capacity(chunks.len());
    let mut targets = Vec::with_capacity(chunks.len());
    for (i, chunk) in chunks.iter().enumerate() {
        let scored = eval::scored_positions(chunk.len());
        let t: Vec<u32> = chunk[scored.start + 1..scored.end + 1].to_vec();
        requests.push(Request {
            id: i as u64,
            prompt: chunk[..=scored.start].to_vec(),
            max_new: t.len() as u32,
            stop: vec![],
            sampling: SamplingParams::default(),
        });
        targets.push(t);
    }
    (requests, targets)
}

/// Scores `chunks` (each at least 3 tokens) through every model on the same steps: one
/// [`Scored`] per model, rows in the same order.
pub fn score_lockstep(geometry: Geometry, models: &mut [&mut dyn StepModel], chunks: &[Vec<u32>]) -> anyhow::Result<Vec<Scored>> {
    anyhow::ensure!(chunks.iter().all(|c| c.len() >= 3), "chunks of fewer than 3 tokens have no scored position");
    let (requests, targets) = forced_requests(chunks);
    let mut scored = vec![Scored::default(); models.len()];
    lockstep(geometry, requests, models, &Feed::Forced(&targets), &mut |row| {
        for (s, logits) in scored.iter_mut().zip(&row.logits) {
            s.push(logits, row.token);
        }
        Ok(())
    })?;
    let want: usize = targets.iter().map(Vec::len).sum();
    anyhow::ensure!(scored[0].targets.len() == want, "{} positions scored, {want} expected", scored[0].targets.len());
    Ok(scored)
}

/// Scores `eval` on `gpu`, `reference` (the interpreter) and `floor` (the interpreter in another
/// order) on the same steps, and compares each with the reference.
pub fn check_perplexity<'a>(
    geometry: Geometry,
    gpu: &'a mut dyn StepModel,
    reference: &'a mut dyn StepModel,
    floor: Option<&'a mut dyn StepModel>,
    eval: &EvalChunks,
) -> anyhow::Result<PerplexityReport> {
    let mut models: Vec<&mut dyn StepModel> = vec![gpu, reference];
    models.extend(floor);
    let scored = score_lockstep(geometry, &mut models, &eval.chunks)?;
    Ok(report(eval, &scored))
}

/// The report of `scored`: the GPU's, the interpreter's and optionally the floor variant's scores.
pub fn report(eval: &EvalChunks, scored: &[Scored]) -> PerplexityReport {
    let (gpu, reference) = (&scored[0], &scored[1]);
    PerplexityReport {
        source: eval.source.clone(),
        ctx: eval.ctx,
        chunks: eval.chunks.len(),
        positions: reference.targets.len(),
        interpreter: eval::perplexity(reference),
        gpu: agreement("GPU", reference, gpu),
        floor: scored.get(2).map(|f| {
            let name = format!(
                "interpreter, {FLOOR_ACCUMULATION} (GEMMs as the plan's kernels sum, where it records that), transcendentals within CUDA's ulp bounds"
            );
            agreement(&name, reference, f)
        }),
    }
}

fn agreement(name: &str, reference: &Scored, other: &Scored) -> Agreement {
    let r = eval::compare(name, reference, other);
    let interpreter = r.perplexity - r.delta_perplexity;
    Agreement {
        name: name.into(),
        perplexity: r.perplexity,
        relative: r.perplexity / interpreter - 1.0,
        mean_kl: r.mean_kl,
        p99_kl: r.p99_kl,
        same_top: r.same_top,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::scheduler::StepInput;

    /// A fake decoder: the logits of a row favour `(last id + 1) % vocab` by 2, plus `bias` on
    /// token 0; it records the ids fed to each request, step by step.
    struct Fake {
        bias: f32,
        fed: Vec<(u64, Vec<i64>)>,
    }

    const VOCAB: usize = 7;

    impl StepModel for Fake {
        fn step(&mut self, input: &StepInput) -> anyhow::Result<(Vec<u32>, Vec<Vec<f32>>)> {
            let mut rows = Vec::with_capacity(input.batch);
            for b in 0..input.batch {
                let ids = &input.ids[b * input.seq..][..input.seq];
                self.fed.push((input.requests[b], ids.to_vec()));
                rows.push(rule(ids[input.seq - 1] as u32, self.bias));
            }
            let ids = rows.iter().map(|r| crate::generate::sample::argmax(r).unwrap_or(0) as u32).collect();
            Ok((ids, rows))
        }
    }

    fn rule(last: u32, bias: f32) -> Vec<f32> {
        let mut row = vec![0.0; VOCAB];
        row[(last as usize + 1) % VOCAB] = 2.0;
        row[0] += bias;
        row
    }

    const GEO: Geometry = Geometry { page_size: 8, max_pages: 4, max_seq: 32, max_batch: 2, max_step_tokens: 5 };

    fn fake(bias: f32) -> Fake {
        Fake { bias, fed: vec![] }
    }

    fn text(chunks: usize, ctx: usize) -> EvalChunks {
        let tokens: Vec<u32> = (0..chunks * ctx + 3).map(|i| ((i * i + 3 * i) % VOCAB) as u32).collect();
        let chunks = eval::chunks(&tokens, ctx, chunks).into_iter().map(<[u32]>::to_vec).collect();
        EvalChunks { source: "test".into(), ctx, chunks }
    }

    #[test]
    fn requests_emit_one_row_per_scored_position() {
        let (reqs, targets) = forced_requests(&[(0..16).collect(), (0..7).collect()]);
        assert_eq!(reqs[0].prompt, (0..=8).collect::<Vec<u32>>());
        assert_eq!(targets[0], (9..16).collect::<Vec<u32>>());
        assert_eq!(reqs[1].prompt, vec![0, 1, 2, 3]);
        assert_eq!((targets[1].clone(), reqs[1].max_new), (vec![4, 5, 6], 3));
        assert_eq!(targets[0].len(), eval::scored_positions(16).len());
    }

    /// Each request is fed its chunk but the last token (the prefill in pieces of at most
    /// `max_step_tokens`, then one token per decode step), whatever the model would pick (the
    /// fake always picks 0 here); the chunks share decode batches.
    #[test]
    fn teacher_forcing_feeds_the_text() {
        let t = text(3, 12);
        let mut m = fake(50.0);
        score_lockstep(GEO, &mut [&mut m], &t.chunks).unwrap();
        for (r, chunk) in t.chunks.iter().enumerate() {
            let fed: Vec<i64> = m.fed.iter().filter(|(q, _)| *q == r as u64).flat_map(|(_, ids)| ids.clone()).collect();
            let want: Vec<i64> = chunk[..chunk.len() - 1].iter().map(|&x| i64::from(x)).collect();
            assert_eq!(fed, want, "chunk {r}");
        }
        assert!(m.fed.iter().all(|(_, ids)| ids.len() <= 5), "prefill chunks of at most max_step_tokens");
    }

    /// The perplexity equals the one computed directly from the fake's rule over
    /// `eval::scored_positions`, and a model compared with itself agrees exactly.
    #[test]
    fn the_scores_follow_evals_convention() {
        let t = text(3, 12);
        let (mut a, mut b) = (fake(0.0), fake(0.0));
        let scored = score_lockstep(GEO, &mut [&mut a, &mut b], &t.chunks).unwrap();
        assert_eq!(a.fed, b.fed, "both models ran the same steps");
        let mut direct = Scored::default();
        for chunk in &t.chunks {
            for i in eval::scored_positions(chunk.len()) {
                direct.push(&rule(chunk[i], 0.0), chunk[i + 1]);
            }
        }
        assert_eq!(scored[0].targets.len(), 3 * 5);
        let (got, want) = (eval::perplexity(&scored[0]), eval::perplexity(&direct));
        assert!((got - want).abs() < 1e-9 * want, "{got} vs {want}");
        let r = report(&t, &scored);
        assert_eq!((r.gpu.relative, r.gpu.mean_kl, r.positions), (0.0, 0.0, 15));
        assert!(r.passed() && r.floor.is_none());
    }

    #[test]
    fn a_perplexity_off_by_more_than_half_a_percent_fails() {
        let t = text(2, 16);
        let (mut gpu, mut reference, mut floor) = (fake(0.005), fake(0.0), fake(0.001));
        let close = check_perplexity(GEO, &mut gpu, &mut reference, Some(&mut floor), &t).unwrap();
        assert!(close.gpu.relative.abs() > 0.0 && close.passed(), "{close:?}");
        let f = close.floor.as_ref().unwrap();
        assert!(f.mean_kl < close.gpu.mean_kl && f.mean_kl > 0.0, "{f:?}");
        let (mut gpu, mut reference) = (fake(0.5), fake(0.0));
        let far = check_perplexity(GEO, &mut gpu, &mut reference, None, &t).unwrap();
        assert!(far.gpu.relative.abs() > PPL_TOLERANCE && !far.passed(), "{far:?}");
        let mut nan = far.clone();
        nan.gpu.relative = f64::NAN;
        assert!(!nan.passed(), "a NaN perplexity fails");
    }

    /// Where the floor itself lands further than 0.5 % from the interpreter, the bar is its
    /// difference, and the GPU must also agree (mean KL) at least as well as it does.
    #[test]
    fn a_floor_beyond_half_a_percent_sets_the_bar() {
        let t = text(2, 16);
        let (mut gpu, mut reference, mut floor) = (fake(0.2), fake(0.0), fake(0.3));
        let r = check_perplexity(GEO, &mut gpu, &mut reference, Some(&mut floor), &t).unwrap();
        let f = r.floor.clone().unwrap();
        assert!(f.relative.abs() > PPL_TOLERANCE && r.gpu.relative.abs() > PPL_TOLERANCE, "{r:?}");
        assert!(r.gpu.relative.abs() < f.relative.abs() && r.gpu.mean_kl < f.mean_kl, "{r:?}");
        assert_eq!(r.bar(), f.relative.abs());
        assert!(r.passed(), "closer than the floor: {r:?}");
        let mut worse = r.clone();
        worse.gpu.mean_kl = f.mean_kl + 2.0 * KL_MARGIN;
        assert!(!worse.passed(), "more KL than the floor fails: {worse:?}");
        let mut further = r.clone();
        further.gpu.relative = 1.5 * f.relative.abs();
        assert!(!further.passed(), "further than the floor fails: {further:?}");
        let (mut gpu, mut reference) = (fake(0.2), fake(0.0));
        let alone = check_perplexity(GEO, &mut gpu, &mut reference, None, &t).unwrap();
        assert!(alone.bar() == PPL_TOLERANCE && !alone.passed(), "without a floor the 0.5 % bar holds: {alone:?}");
    }
}
