//! In-flight batching over a paged KV cache, without a GPU: which sequences run in the next step,
//! with which tokens, cache lengths and page-table rows, and what becomes of the sampled tokens.
//!
//! Policy (TensorRT-LLM's "guaranteed no evict"): a request is admitted only when the free pages
//! cover its whole life (prompt plus `max_new` tokens, capped by the plan's `max_seq`), so a running
//! sequence never waits for a page and nothing is ever preempted; a request that cannot be covered
//! waits in FIFO order. Each step is either one **prefill** chunk of one sequence (`B = 1`, up to
//! `max_step_tokens` prompt tokens) or one **decode** step of every sequence whose prompt is in the
//! cache (`B` = their number, `S = 1`): a request admitted while others generate joins the next
//! decode batch after its prefill. A finished sequence (an end token, `max_new` tokens, or the
//! context full) returns its pages at once.
//!
//! [`Scheduler::step`] takes the step function as a closure, so the same logic drives the GPU
//! ([`super::Generator`]) and the tests (a fake model), which run thousands of requests and check
//! that every page comes back.

use std::collections::VecDeque;

/// A host-side free list of page numbers `0..total`.
#[derive(Debug, Clone)]
pub struct PageAllocator {
    free: Vec<u32>,
    total: u32,
}

impl PageAllocator {
    /// All `total` pages free.
    pub fn new(total: u32) -> Self {
        Self { free: (0..total).rev().collect(), total }
    }

    /// Pages not in use.
    pub fn free(&self) -> u32 {
        self.free.len() as u32
    }

    /// All pages.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// `n` pages, or `None` (nothing taken) when fewer are free.
    pub fn alloc(&mut self, n: u32) -> Option<Vec<u32>> {
        let n = n as usize;
        if n > self.free.len() {
            return None;
        }
        Some(self.free.split_off(self.free.len() - n))
    }

    /// Returns pages taken by [`Self::alloc`].
    pub fn release(&mut self, pages: Vec<u32>) {
        debug_assert!(pages.iter().all(|&p| p < self.total && !self.free.contains(&p)), "double free of a page");
        self.free.extend(pages);
    }
}

/// Token choice of one request, on the GPU (the sampling kernel's arguments) and on the
/// interpreter (`generate::sample::choose`); `temperature == 0` is greedy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 picks the most likely token.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = 256, the cap; larger values are capped at it).
    pub top_k: u32,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p` (1 = all).
    pub top_p: f32,
    /// Seed of the counter-based generator; draw `n` of a request uses counter `n`.
    pub seed: u64,
}

impl SamplingParams {
    /// Checks the ranges; the message names the flag.
    pub fn check(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(format!("--temperature must be ≥ 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("--top-p must lie in (0, 1], got {}", self.top_p));
        }
        Ok(())
    }
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 }
    }
}

/// One generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Caller's id, returned with the result.
    pub id: u64,
    /// Prompt token ids (at least one).
    pub prompt: Vec<u32>,
    /// Most new tokens.
    pub max_new: u32,
    /// Ids that end the generation (kept in the output).
    pub stop: Vec<u32>,
    /// Token choice.
    pub sampling: SamplingParams,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// A stop id was generated.
    Stop,
    /// `max_new` tokens were generated.
    Length,
    /// The plan's context (`max_seq`) is full.
    Context,
}

/// A finished request.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The request's id.
    pub id: u64,
    /// Generated ids (the stop id included when there is one).
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub finish: Finish,
}

/// What one step produced.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepReport {
    /// `(request id, token)` of every token generated in this step, in row order.
    pub emitted: Vec<(u64, u32)>,
    /// Requests this step finished.
    pub finished: Vec<Completion>,
}

/// The geometry the scheduler works in (from the plan's decoder metadata).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Geometry {
    /// Tokens per page.
    pub page_size: u32,
    /// Page-table columns.
    pub max_pages: u32,
    /// Longest sequence.
    pub max_seq: u32,
    /// Most sequences per step.
    pub max_batch: u32,
    /// Most tokens of one prefill chunk.
    pub max_step_tokens: u32,
}

impl Geometry {
    /// The geometry of a decoder plan (limits beyond `u32` saturate).
    pub fn of(d: &crate::plan::DecoderMeta) -> Self {
        let narrow = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        Geometry {
            page_size: d.kv.page_size,
            max_pages: d.kv.max_pages,
            max_seq: narrow(d.max_seq),
            max_batch: narrow(d.max_batch),
            max_step_tokens: narrow(d.max_step_tokens),
        }
    }
}

/// The inputs of one step, `B` sequences of `S` tokens each.
#[derive(Debug, Clone, PartialEq)]
pub struct StepInput {
    /// Sequences in this step.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// `i64[B, S]` token ids.
    pub ids: Vec<i64>,
    /// `i64[B]` tokens already in each sequence's cache.
    pub cache_len: Vec<i64>,
    /// `i32[B, max_pages]` page-table rows (unused columns 0).
    pub page_table: Vec<i32>,
    /// Sampling of each row and its draw counter.
    pub sampling: Vec<(SamplingParams, u64)>,
    /// The [`Request::id`] of each row.
    pub requests: Vec<u64>,
}

#[derive(Debug)]
struct Sequence {
    req: Request,
    pages: Vec<u32>,
    /// Tokens in the cache.
    cached: u32,
    /// Prompt tokens not yet in the cache (the last one is fed with the first decode).
    pending: Vec<u32>,
    generated: Vec<u32>,
}

/// Admission, batching and page accounting of in-flight requests.
#[derive(Debug)]
pub struct Scheduler {
    geometry: Geometry,
    pages: PageAllocator,
    waiting: VecDeque<Request>,
    running: Vec<Sequence>,
}

impl Scheduler {
    /// A scheduler over `total_pages` pages.
    pub fn new(geometry: Geometry, total_pages: u32) -> Self {
        Self { geometry, pages: PageAllocator::new(total_pages), waiting: VecDeque::new(), running: Vec::new() }
    }

    /// Queues a request; an error names what can never run (an empty prompt, a prompt longer
    /// than the plan's context or than every page together).
    pub fn submit(&mut self, req: Request) -> Result<(), String> {
        let g = self.geometry;
        if req.prompt.is_empty() {
            return Err(format!("request {}: the prompt is empty", req.id));
        }
        if req.prompt.len() as u64 >= u64::from(g.max_seq) {
            return Err(format!(
                "request {}: the prompt has {} tokens; the plan's context is {} (--max-seq at compile time)",
                req.id,
                req.prompt.len(),
                g.max_seq
            ));
        }
        if self.pages_for(&req) > self.pages.total() {
            return Err(format!("request {}: needs {} pages, the cache has {}", req.id, self.pages_for(&req), self.pages.total()));
        }
        self.waiting.push_back(req);
        Ok(())
    }

    /// Requests not finished (waiting or running).
    pub fn pending(&self) -> usize {
        self.waiting.len() + self.running.len()
    }

    /// Pages in use.
    pub fn pages_in_use(&self) -> u32 {
        self.pages.total() - self.pages.free()
    }

    /// Sequences running now.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Pages covering `req`'s whole life.
    fn pages_for(&self, req: &Request) -> u32 {
        let g = self.geometry;
        let tokens = (req.prompt.len() as u64 + u64::from(req.max_new)).min(u64::from(g.max_seq));
        tokens.div_ceil(u64::from(g.page_size)) as u32
    }

    /// Admits waiting requests in order while a batch slot and their pages are free.
    fn admit(&mut self) {
        while self.running.len() < self.geometry.max_batch as usize {
            let Some(front) = self.waiting.front() else { break };
            let need = self.pages_for(front);
            let Some(pages) = self.pages.alloc(need) else { break };
            let req = self.waiting.pop_front().expect("front exists");
            let pending = req.prompt.clone();
            self.running.push(Sequence { req, pages, cached: 0, pending, generated: Vec::new() });
        }
    }

    /// Runs one step through `run` (which returns one sampled id per row) and returns the tokens
    /// it generated and the requests it finished; nothing pending means all work is done. When
    /// `run` fails nothing changes.
    pub fn step<E>(&mut self, run: impl FnOnce(&StepInput) -> Result<Vec<u32>, E>) -> Result<StepReport, E> {
        self.admit();
        let Some(rows) = self.next_rows() else { return Ok(StepReport::default()) };
        let input = self.input(&rows);
        let sampled = run(&input)?;
        Ok(self.advance(&rows, input.seq, &sampled))
    }

    /// The running sequences of the next step: one still prefilling (more than one prompt token
    /// left), else every sequence (each feeding one token).
    fn next_rows(&self) -> Option<Vec<usize>> {
        if let Some(i) = self.running.iter().position(|s| s.pending.len() > 1) {
            return Some(vec![i]);
        }
        (!self.running.is_empty()).then(|| (0..self.running.len()).collect())
    }

    fn input(&self, rows: &[usize]) -> StepInput {
        let g = self.geometry;
        let prefill = rows.len() == 1 && self.running[rows[0]].pending.len() > 1;
        let seq = if prefill {
            // Leave the last prompt token for the first decode step unless it fits in this chunk.
            self.running[rows[0]].pending.len().min(g.max_step_tokens as usize)
        } else {
            1
        };
        let mut input = StepInput {
            batch: rows.len(),
            seq,
            ids: Vec::with_capacity(rows.len() * seq),
            cache_len: Vec::with_capacity(rows.len()),
            page_table: vec![0; rows.len() * g.max_pages as usize],
            sampling: Vec::with_capacity(rows.len()),
            requests: Vec::with_capacity(rows.len()),
        };
        for (b, &r) in rows.iter().enumerate() {
            let s = &self.running[r];
            let feed: Vec<u32> = if s.pending.is_empty() {
                vec![*s.generated.last().expect("a decoding sequence has a token")]
            } else {
                s.pending[..seq].to_vec()
            };
            input.ids.extend(feed.iter().map(|&t| i64::from(t)));
            input.cache_len.push(i64::from(s.cached));
            for (c, &p) in s.pages.iter().enumerate() {
                input.page_table[b * g.max_pages as usize + c] = p as i32;
            }
            input.sampling.push((s.req.sampling, s.generated.len() as u64));
            input.requests.push(s.req.id);
        }
        input
    }

    /// Applies a step's sampled ids: caches grow, prompts shrink, tokens are appended, finished
    /// sequences leave and free their pages.
    fn advance(&mut self, rows: &[usize], seq: usize, sampled: &[u32]) -> StepReport {
        let max_seq = self.geometry.max_seq;
        let mut done = Vec::new();
        let mut emitted = Vec::new();
        for (b, &r) in rows.iter().enumerate() {
            let s = &mut self.running[r];
            s.cached += seq as u32;
            let fed_prompt = !s.pending.is_empty();
            if fed_prompt {
                s.pending.drain(..seq);
            }
            if !s.pending.is_empty() {
                continue; // a prefill chunk: its sample is not a next token yet
            }
            let Some(&token) = sampled.get(b) else { continue };
            s.generated.push(token);
            emitted.push((s.req.id, token));
            let finish = if s.req.stop.contains(&token) {
                Some(Finish::Stop)
            } else if s.generated.len() as u32 >= s.req.max_new {
                Some(Finish::Length)
            } else if s.cached >= max_seq {
                Some(Finish::Context)
            } else {
                None
            };
            if let Some(finish) = finish {
                done.push((r, finish));
            }
        }
        let mut out = Vec::with_capacity(done.len());
        for &(r, finish) in done.iter().rev() {
            let s = self.running.remove(r);
            self.pages.release(s.pages);
            out.push(Completion { id: s.req.id, tokens: s.generated, finish });
        }
        out.reverse();
        StepReport { emitted, finished: out }
    }
}
