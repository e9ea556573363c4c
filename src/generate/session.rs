//! A stepwise run of a decoder graph on the interpreter: the session owns the KV cache (the
//! graph's state slots) of one sequence and appends each step's update to it.

use crate::interp::{self, Tensor, TensorData, WeightSource};
use crate::ir::Graph;

/// One sequence's decoding state over a step graph.
pub struct Session<'a> {
    graph: &'a Graph,
    weights: &'a dyn WeightSource,
    /// One tensor per state slot, in `graph.state` order.
    cache: Vec<Tensor>,
    /// Tokens already in the cache.
    len: usize,
    /// Longest context the graph accepts.
    capacity: usize,
    threads: usize,
}

/// Logits of one step: `rows` positions of `vocab` values each.
pub struct StepLogits {
    /// Row-major `[rows, vocab]`.
    pub data: Vec<f32>,
    /// Vocabulary size.
    pub vocab: usize,
}

impl StepLogits {
    /// The logits of position `i` of the step.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab..(i + 1) * self.vocab]
    }

    /// Number of positions.
    pub fn rows(&self) -> usize {
        self.data.len() / self.vocab.max(1)
    }
}

impl<'a> Session<'a> {
    /// An empty cache for `graph` (which must declare state slots over an `input_ids [B,S]` input).
    pub fn new(graph: &'a Graph, weights: &'a dyn WeightSource, threads: usize) -> Result<Self, String> {
        if graph.state.is_empty() {
            return Err("the graph has no KV-cache state: it is not a decoder step graph".into());
        }
        let cache = interp::empty_state(graph)?.into_iter().map(|(_, t)| t).collect();
        let capacity = graph.symbols.iter().find(|(_, s)| s.name == "P").map_or(usize::MAX, |(_, s)| s.max as usize);
        Ok(Session { graph, weights, cache, len: 0, capacity, threads })
    }

    /// Tokens in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first step.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The longest context this session accepts.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Runs `tokens` as one step after the cached ones; returns their logits and appends their
    /// keys and values to the cache.
    pub fn step(&mut self, tokens: &[u32]) -> Result<StepLogits, String> {
        if tokens.is_empty() {
            return Err("a step needs at least one token".into());
        }
        if self.len + tokens.len() > self.capacity {
            return Err(format!("context of {} tokens exceeds the limit of {}", self.len + tokens.len(), self.capacity));
        }
        let ids = Tensor::i64(vec![1, tokens.len()], tokens.iter().map(|&t| i64::from(t)).collect());
        let mut inputs: Vec<(&str, Tensor)> = vec![("input_ids", ids), ("cache_len", Tensor::i64(vec![1], vec![self.len as i64]))];
        for (slot, t) in self.graph.state.iter().zip(&self.cache) {
            inputs.push((slot.input.as_str(), t.clone()));
        }
        let opts = interp::RunOptions { threads: self.threads, ..Default::default() };
        let outs = interp::run_with(self.graph, self.weights, &inputs, &opts, &mut |_, _| {}).map_err(|e| e.to_string())?;
        let find = |name: &str| outs.iter().find(|(n, _)| n == name).map(|(_, t)| t);
        for (i, slot) in self.graph.state.iter().enumerate() {
            let update = find(&slot.update).ok_or_else(|| format!("the step produced no `{}`", slot.update))?;
            self.cache[i] = append(&self.cache[i], update, slot.axis)?;
        }
        self.len += tokens.len();
        let logits = find("logits").ok_or("the step produced no `logits`")?;
        let vocab = *logits.shape.last().ok_or("logits have rank 0")?;
        Ok(StepLogits { data: logits.to_f32_vec(), vocab })
    }
}

/// `a` followed by `b` along `axis` (all other extents equal).
pub fn append(a: &Tensor, b: &Tensor, axis: usize) -> Result<Tensor, String> {
    let same = a.shape.len() == b.shape.len() && (0..a.shape.len()).all(|i| i == axis || a.shape[i] == b.shape[i]);
    if !same || a.dtype != b.dtype || axis >= a.shape.len() {
        return Err(format!("cannot append {:?} {:?} to {:?} {:?} along axis {axis}", b.dtype, b.shape, a.dtype, a.shape));
    }
    let (TensorData::F32(x), TensorData::F32(y)) = (&a.data, &b.data) else { return Err("cache tensors must be float-held".into()) };
    let outer: usize = a.shape[..axis].iter().product();
    let (ca, cb) = (x.len() / outer.max(1), y.len() / outer.max(1));
    let mut data = Vec::with_capacity(x.len() + y.len());
    for o in 0..outer {
        data.extend_from_slice(&x[o * ca..(o + 1) * ca]);
        data.extend_from_slice(&y[o * cb..(o + 1) * cb]);
    }
    let mut shape = a.shape.clone();
    shape[axis] += b.shape[axis];
    Ok(Tensor { dtype: a.dtype, shape, data: TensorData::F32(data) })
}
