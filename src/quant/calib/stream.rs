//! Layer-by-layer calibration: the calibration runs go through a graph one span of layers at a
//! time, keeping only the residual stream between spans, so that statistics (and the weight
//! algorithms that consume them) can be finished and freed span by span.
//!
//! A **cut** is a value that, at its place in an order of the nodes the requested values need
//! (following the layers: see `needed_order`), is the only value carrying token data ("depending
//! on `input_ids`") that later nodes read: in a decoder, the residual stream after each attention
//! and each MLP (`h + o_proj(…)`, `h + down(…)`) and the embedding's output. The cuts split the graph into **spans**: span `i` computes everything
//! between cut `i − 1` and cut `i` from cut `i − 1`'s value, the graph inputs and the weights
//! (values that do not depend on `input_ids`, such as a `past` cache read, are recomputed where
//! needed). A requested value belongs to the span of its producer's position.
//!
//! ```text
//! whole graph, per run:   run 0: embed → L0 → … → L29 → head     run 1: embed → … → head
//! streamed, per span:     span 0 (embed): run 0, run 1, …        keeps h₀ of every run
//!                         span 1 (L0 attention): run 0, run 1, … keeps h₁ of every run, drops h₀
//!                         …                                      (spans after the last
//!                                                                 requested value are not run)
//! ```
//!
//! Each value is computed by the same ops on the same operands in both orders, and observed
//! run after run, so any statistic accumulated per value is bit for bit the same; only the
//! statistics of different spans are no longer alive at the same time. Graph outputs nobody
//! asked for (the logits, the `present` caches) are not computed at all. A graph without
//! `input_ids`, or without cuts, is one span (everything the requested values need).

use super::Run;
use crate::interp::{self, InterpError, Tensor, WeightSource};
use crate::ir::{order, Graph, Op, ValueId};
use std::collections::HashMap;
use std::sync::Arc;

/// The spans of a graph for a set of requested values; see the module doc.
#[derive(Clone, Debug)]
pub struct Spans {
    /// `cuts[i]`: the value that ends span `i` (one fewer than the spans).
    cuts: Vec<ValueId>,
    /// The requested values of each span, in request order.
    values: Vec<Vec<ValueId>>,
}

impl Spans {
    /// The spans of `g` that observe `values`, cut at every cut of the graph before the last
    /// span holding a requested value.
    pub fn new(g: &Graph, values: &[ValueId]) -> Self {
        let Some(order) = needed_order(g, values) else { return Self::whole(values) };
        let position: HashMap<_, _> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let all = cut_positions(g, &order);
        let span_of = |v: ValueId| {
            let p = position.get(&g.values[v].producer).copied().unwrap_or(0);
            all.partition_point(|&(q, _)| q < p)
        };
        let last = values.iter().map(|&v| span_of(v)).max().unwrap_or(0);
        let mut spans = vec![vec![]; last + 1];
        values.iter().for_each(|&v| spans[span_of(v)].push(v));
        Spans { cuts: all[..last].iter().map(|&(_, v)| v).collect(), values: spans }
    }

    /// One span: the whole graph at once (everything `values` need), as calibration ran before
    /// streaming; the reference the streamed statistics are tested against.
    pub fn whole(values: &[ValueId]) -> Self {
        Spans { cuts: vec![], values: vec![values.to_vec()] }
    }

    /// Number of spans.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when there is nothing to observe.
    pub fn is_empty(&self) -> bool {
        self.values.iter().all(Vec::is_empty)
    }

    /// The requested values of span `i`.
    pub fn values(&self, i: usize) -> &[ValueId] {
        &self.values[i]
    }

    /// The span holding `v`, if it was requested.
    pub fn span_of(&self, v: ValueId) -> Option<usize> {
        self.values.iter().position(|vs| vs.contains(&v))
    }

    /// The first span after which every reader of the requested value `v` has run: `v`'s own, or
    /// the next when `v` ends its span (a cut is read in the span after it).
    pub fn read_by(&self, v: ValueId) -> Option<usize> {
        self.span_of(v).map(|i| i + usize::from(self.cuts.get(i) == Some(&v)))
    }
}

/// The nodes the requested `values` need, in an order that follows the layers: post-order from
/// each value in turn, the values taken by their number of ancestors (the graph's canonical order
/// would reach an output-only branch, such as a cache store, only at the end, keeping its operand
/// pending across every later layer). `None` for a graph with a cycle.
fn needed_order(g: &Graph, values: &[ValueId]) -> Option<Vec<crate::ir::NodeId>> {
    let mut roots: Vec<(usize, crate::ir::NodeId)> = values.iter().map(|&v| (ancestors(g, v), g.values[v].producer)).collect();
    roots.sort();
    order::order_from(g, &roots.into_iter().map(|(_, n)| n).collect::<Vec<_>>())
}

/// Number of nodes `v` depends on.
fn ancestors(g: &Graph, v: ValueId) -> usize {
    let mut seen = vec![false; g.nodes.len()];
    let mut stack = vec![g.values[v].producer];
    let mut count = 0;
    while let Some(n) = stack.pop() {
        if !std::mem::replace(&mut seen[n.index()], true) {
            count += 1;
            stack.extend(g.nodes[n].inputs.iter().map(|&u| g.values[u].producer));
        }
    }
    count
}

/// `(position, value)` of every cut of `g` in `order` (the nodes the requested values need, from
/// [`needed_order`]), by position: readers outside `order` are not counted.
fn cut_positions(g: &Graph, order: &[crate::ir::NodeId]) -> Vec<(usize, ValueId)> {
    let Some((_, ids)) = g.inputs().into_iter().find(|(name, _)| *name == "input_ids") else { return vec![] };
    let mut tokenwise = vec![false; g.values.len()];
    tokenwise[ids.index()] = true;
    // Readers of each token-data value still to come at each point of the order.
    let mut pending = vec![0usize; g.values.len()];
    for &n in order {
        let node = &g.nodes[n];
        if node.inputs.iter().any(|v| tokenwise[v.index()]) {
            node.outputs.iter().for_each(|v| tokenwise[v.index()] = true);
            node.inputs.iter().filter(|v| tokenwise[v.index()]).for_each(|v| pending[v.index()] += 1);
        }
    }
    let mut open: Vec<ValueId> = vec![];
    let mut cuts = vec![];
    for (p, &n) in order.iter().enumerate() {
        let node = &g.nodes[n];
        for v in node.inputs.iter().filter(|v| tokenwise[v.index()]) {
            pending[v.index()] -= 1;
        }
        open.retain(|v| pending[v.index()] > 0);
        open.extend(node.outputs.iter().filter(|v| tokenwise[v.index()] && pending[v.index()] > 0));
        if let ([v], false) = (open.as_slice(), matches!(node.op, Op::Input { .. })) {
            if node.outputs.contains(v) {
                cuts.push((p, *v));
            }
        }
    }
    cuts
}

/// Runs calibration runs through the spans of a graph one span at a time, holding each run's
/// value of the last cut in between (the residual stream, `[B, S, H]` per run).
pub struct Stream {
    hidden: Vec<Option<Arc<Tensor>>>,
    next: usize,
}

impl Stream {
    /// A stream of `runs` runs, before span 0.
    pub fn new(runs: usize) -> Self {
        Stream { hidden: vec![None; runs], next: 0 }
    }

    /// The span the next [`Stream::run`] computes by default ([`Stream::advance`] moves on).
    pub fn span(&self) -> usize {
        self.next
    }

    /// Runs span [`Stream::span`] of `spans` over every run in order, calling `observe(run, value,
    /// tensor)` for the span's requested values; returns each run's value of the cut that ends
    /// the span (nothing for the last span), for [`Stream::advance`]. `g` may have been changed
    /// since the spans were planned, as long as the values they name keep their meaning (the
    /// weight algorithms rewrite finished spans).
    pub fn run(
        &self,
        g: &Graph,
        weights: &dyn WeightSource,
        runs: &[Run],
        spans: &Spans,
        observe: &mut dyn FnMut(usize, ValueId, &Tensor),
    ) -> Result<Vec<Arc<Tensor>>, InterpError> {
        let i = self.next;
        let wanted = spans.values(i);
        let cut = spans.cuts.get(i).copied();
        let targets: Vec<ValueId> = cut.into_iter().collect();
        let given = |r: usize| match (i.checked_sub(1).map(|c| spans.cuts[c]), &self.hidden[r]) {
            (Some(v), Some(t)) => vec![(v, t.clone())],
            _ => vec![],
        };
        let mut next = Vec::with_capacity(runs.len());
        for (r, run) in runs.iter().enumerate() {
            let mut outs =
                interp::run_part(g, weights, run.inputs, given(r), (&targets, wanted), &interp::RunOptions::calibration(), &mut |v, t| {
                    if wanted.contains(&v) {
                        observe(r, v, t);
                    }
                })?;
            if cut.is_some() {
                next.extend(outs.pop());
            }
        }
        Ok(next)
    }

    /// Moves to the next span with `hidden`, the runs' values of the cut just passed (from
    /// [`Stream::run`] on the graph as it is now).
    pub fn advance(&mut self, hidden: Vec<Arc<Tensor>>) {
        self.hidden = hidden.into_iter().map(Some).collect();
        self.next += 1;
    }
}

/// Runs `runs` through every span of `spans` in order, calling `observe(run, value, tensor)` for
/// each requested value, and `finished(span)` after each span.
pub fn for_each(
    g: &Graph,
    weights: &dyn WeightSource,
    runs: &[Run],
    spans: &Spans,
    observe: &mut dyn FnMut(usize, ValueId, &Tensor),
    finished: &mut dyn FnMut(usize),
) -> Result<(), InterpError> {
    let mut stream = Stream::new(runs.len());
    for span in 0..spans.len() {
        let hidden = stream.run(g, weights, runs, spans, observe)?;
        stream.advance(hidden);
        finished(span);
    }
    Ok(())
}
