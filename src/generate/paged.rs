//! The GPU generator's step semantics on the interpreter: a paged KV cache held on the host, one
//! [`StepInput`] (ids, cache lengths, page-table rows) run through the step graph, the keys and
//! values of the step appended into the pages, one token chosen per row by
//! [`super::sample::choose`].
//!
//! It is the reference of [`crate::runtime::Generator`]: the same scheduler drives both, so a
//! test can run in-flight batching on the CPU (and compare it with each request run alone), and
//! a GPU script can compare a plan's tokens with exactly what the interpreter computes for the
//! same steps.

use super::sample::choose;
use crate::interp::{self, Accumulation, RunOptions, Tensor, TensorData, WeightSource};
use crate::ir::Graph;
use crate::runtime::scheduler::{Geometry, StepInput};

/// A host-side paged KV cache over a step graph.
pub struct PagedStepper<'a> {
    graph: &'a Graph,
    weights: &'a dyn WeightSource,
    geometry: Geometry,
    /// One pool per state slot: `[pages, KV, page_size, D]` values (codes for quantized caches).
    pools: Vec<Vec<f32>>,
    /// `(KV, D)` of each slot and the dtype of its tensors.
    slots: Vec<(usize, usize, crate::ir::DType)>,
    options: RunOptions,
}

impl<'a> PagedStepper<'a> {
    /// Pools of `pages` pages for `graph`'s state slots; sums in `accumulation`.
    pub fn new(
        graph: &'a Graph,
        weights: &'a dyn WeightSource,
        geometry: Geometry,
        pages: u32,
        accumulation: Accumulation,
    ) -> Result<Self, String> {
        let inputs = graph.inputs();
        let mut slots = Vec::with_capacity(graph.state.len());
        for s in &graph.state {
            let v = inputs
                .iter()
                .find(|(n, _)| *n == s.input)
                .map(|(_, v)| *v)
                .ok_or_else(|| format!("state `{}` is not an input", s.input))?;
            let ty = graph.ty(v);
            let (kv, d) = crate::ir::kv_state_heads(ty).ok_or_else(|| format!("state `{}` is not [B, P, KV, D]", s.input))?;
            slots.push((kv as usize, d as usize, ty.dtype));
        }
        let pools = slots.iter().map(|&(kv, d, _)| vec![0.0; pages as usize * kv * geometry.page_size as usize * d]).collect();
        Ok(Self { graph, weights, geometry, pools, slots, options: RunOptions { threads: 0, accumulation, ..Default::default() } })
    }

    /// This stepper summing in `accumulation` order, with its transcendental functions moved
    /// within CUDA's ulp bounds (`RunOptions::perturbation`; `None`: the host's).
    pub fn with_numerics(mut self, accumulation: Accumulation, perturbation: Option<crate::interp::Perturbation>) -> Self {
        self.options.accumulation = accumulation;
        self.options.perturbation = perturbation;
        self
    }

    /// This stepper with some nodes summing otherwise ([`RunOptions::node_accumulation`]; `None`:
    /// every node as the stepper's accumulation).
    pub fn with_node_accumulation(mut self, per_node: Option<interp::NodeAccumulation>) -> Self {
        self.options.node_accumulation = per_node;
        self
    }

    /// Index of `(page, head, slot, 0)` in a pool `[pages, KV, PAGE, D]` of `kv` heads of size `d`.
    fn at(&self, page: usize, head: usize, slot: usize, kv: usize, d: usize) -> usize {
        ((page * kv + head) * self.geometry.page_size as usize + slot) * d
    }

    /// The page and slot of token `t` of row `b`.
    fn locate(&self, input: &StepInput, b: usize, t: usize) -> Result<(usize, usize), String> {
        let page_size = self.geometry.page_size as usize;
        let col = t / page_size;
        if col >= self.geometry.max_pages as usize {
            return Err(format!("row {b}: token {t} lies past the page table"));
        }
        let page = input.page_table[b * self.geometry.max_pages as usize + col];
        let page = usize::try_from(page).map_err(|_| format!("row {b}: negative page {page}"))?;
        Ok((page, t % page_size))
    }

    /// Runs one step; returns one token per row and each row's last logits.
    pub fn step(&mut self, input: &StepInput) -> Result<(Vec<u32>, Vec<Vec<f32>>), String> {
        self.step_observed(input, &mut |_, _| {})
    }

    /// [`Self::step`], showing `observe` every value the step graph computes (inputs included),
    /// as [`interp::run_observed`] does.
    pub fn step_observed(
        &mut self,
        input: &StepInput,
        observe: &mut dyn FnMut(crate::ir::ValueId, &Tensor),
    ) -> Result<(Vec<u32>, Vec<Vec<f32>>), String> {
        let (batch, seq) = (input.batch, input.seq);
        let past = input.cache_len.iter().copied().max().unwrap_or(0).max(0) as usize;
        let mut feeds: Vec<(&str, Tensor)> = vec![
            ("input_ids", Tensor::i64(vec![batch, seq], input.ids.clone())),
            ("cache_len", Tensor::i64(vec![batch], input.cache_len.clone())),
        ];
        for (i, s) in self.graph.state.iter().enumerate() {
            let (kv, d, dtype) = self.slots[i];
            let mut data = vec![0.0f32; batch * past * kv * d];
            for b in 0..batch {
                for t in 0..input.cache_len[b] as usize {
                    let (page, slot) = self.locate(input, b, t)?;
                    for h in 0..kv {
                        let src = self.at(page, h, slot, kv, d);
                        let dst = token_row(b, t, h, past, kv, d);
                        data[dst..dst + d].copy_from_slice(&self.pools[i][src..src + d]);
                    }
                }
            }
            feeds.push((s.input.as_str(), Tensor { dtype, shape: vec![batch, past, kv, d], data: TensorData::F32(data) }));
        }
        let outs = interp::run_with(self.graph, self.weights, &feeds, &self.options, observe).map_err(|e| e.to_string())?;
        let find = |name: &str| outs.iter().find(|(n, _)| n == name).map(|(_, t)| t);
        for (i, s) in self.graph.state.iter().enumerate() {
            let (kv, d, _) = self.slots[i];
            let present = find(&s.update).ok_or_else(|| format!("the step produced no `{}`", s.update))?.to_f32_vec();
            for b in 0..batch {
                for j in 0..seq {
                    let (page, slot) = self.locate(input, b, input.cache_len[b] as usize + j)?;
                    for h in 0..kv {
                        let src = token_row(b, j, h, seq, kv, d);
                        let dst = self.at(page, h, slot, kv, d);
                        self.pools[i][dst..dst + d].copy_from_slice(&present[src..src + d]);
                    }
                }
            }
        }
        let logits = find("logits").ok_or("the step produced no `logits`")?;
        // [B, S, V], or [B, 1, V] when the graph keeps only each sequence's last position.
        let &[_, positions, vocab] = logits.shape.as_slice() else { return Err("logits are not [B, S, V]".into()) };
        let logits = logits.to_f32_vec();
        let mut ids = Vec::with_capacity(batch);
        let mut rows = Vec::with_capacity(batch);
        for b in 0..batch {
            let row = logits[((b * positions) + positions - 1) * vocab..][..vocab].to_vec();
            let (s, counter) = input.sampling[b];
            ids.push(choose(&row, &s, counter).ok_or("a row of logits is all NaN")? as u32);
            rows.push(row);
        }
        Ok((ids, rows))
    }
}

/// Offset of head `h` of token `t` of row `b` in a token-major `[B, T, KV, D]` tensor (the
/// state's `past` `[B, P, KV, D]` and the step's `present` `[B, S, KV, D]`) of `tokens` rows per
/// sequence.
fn token_row(b: usize, t: usize, h: usize, tokens: usize, kv: usize, d: usize) -> usize {
    ((b * tokens + t) * kv + h) * d
}
