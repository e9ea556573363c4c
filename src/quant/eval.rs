//! Accuracy of a quantized model against the FP32 import, on held-out texts.
//!
//! Per quantized matmul, the FP32 graph and the Q/DQ graph (numerically the fused graph, as the
//! pass tests prove) run side by side and the matmul outputs are compared: SNR in dB, cosine and
//! relative error, accumulated over all texts. For the model, the fused graph's sentence
//! embeddings are compared with the FP32 ones (cosine mean and min) and with each other: how often
//! a text's nearest neighbour in the set changes.

use super::{insert, Quantized};
use crate::import::{Imported, Model};
use crate::interp::{self, InterpError, Tensor, WeightSource};
use crate::ir::{Graph, ValueId};
use serde::Serialize;
use std::collections::HashMap;

/// Error statistics of one matmul's output.
#[derive(Clone, Debug, Serialize)]
pub struct LayerMetrics {
    /// The matmul site.
    pub name: String,
    /// 10·log10(‖x‖² / ‖x − x̂‖²).
    pub snr_db: f64,
    /// Cosine between reference and quantized outputs.
    pub cosine: f64,
    /// ‖x − x̂‖ / ‖x‖.
    pub rel_error: f64,
}

/// The evaluation of one recipe.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    /// Recipe name.
    pub recipe: String,
    /// Held-out texts used.
    pub texts: usize,
    /// Per quantized matmul, in graph order.
    pub layers: Vec<LayerMetrics>,
    /// Mean embedding cosine to FP32.
    pub embedding_cosine_mean: f64,
    /// Worst embedding cosine to FP32.
    pub embedding_cosine_min: f64,
    /// Texts whose nearest neighbour (among the others) differs from FP32's.
    pub neighbour_changes: usize,
}

#[derive(Default, Clone, Copy)]
struct Acc {
    signal: f64,
    noise: f64,
    dot: f64,
    quant: f64,
}

impl Acc {
    fn add(&mut self, x: &[f32], y: &[f32]) {
        for (&a, &b) in x.iter().zip(y) {
            let (a, b) = (a as f64, b as f64);
            self.signal += a * a;
            self.noise += (a - b) * (a - b);
            self.dot += a * b;
            self.quant += b * b;
        }
    }

    fn metrics(&self, name: &str) -> LayerMetrics {
        let snr_db = if self.noise == 0.0 { f64::INFINITY } else { 10.0 * (self.signal / self.noise).log10() };
        LayerMetrics {
            name: name.into(),
            snr_db,
            cosine: self.dot / (self.signal * self.quant).sqrt().max(f64::MIN_POSITIVE),
            rel_error: (self.noise / self.signal.max(f64::MIN_POSITIVE)).sqrt(),
        }
    }
}

/// Evaluates `q` against `model`'s FP32 graph on `texts`, `batch` texts per run.
pub fn evaluate(model: &Model, q: &Quantized, texts: &[String], batch: usize) -> Result<EvalReport, EvalError> {
    let tok = model.tokenizer.as_ref().ok_or(EvalError::NoTokenizer)?;
    let SitePairs { fp32, names, reference: want_ref, quantized: want_q } = site_pairs(&model.graph, q);
    let mut accs = vec![Acc::default(); names.len()];
    let (mut ref_emb, mut q_emb) = (vec![], vec![]);
    for chunk in texts.chunks(batch.max(1)) {
        let inputs = tok.encode(chunk)?.inputs();
        let (ref_out, ref_vals) = run_capturing(&fp32, &model.weights, &inputs, &want_ref)?;
        let (_, q_vals) = run_capturing(&q.qdq, &model.weights, &inputs, &want_q)?;
        for (i, acc) in accs.iter_mut().enumerate() {
            acc.add(&ref_vals[i], &q_vals[i]);
        }
        ref_emb.extend(rows(&ref_out[0].1));
        let fused = interp::run(&q.fused, &model.weights, &inputs)?;
        q_emb.extend(rows(&fused[0].1));
    }
    let cos: Vec<f64> = ref_emb.iter().zip(&q_emb).map(|(a, b)| cosine(a, b)).collect();
    Ok(EvalReport {
        recipe: q.recipe.name.clone(),
        texts: texts.len(),
        layers: names.iter().zip(&accs).map(|(n, a)| a.metrics(n)).collect(),
        embedding_cosine_mean: cos.iter().sum::<f64>() / cos.len().max(1) as f64,
        embedding_cosine_min: cos.iter().copied().fold(1.0, f64::min),
        neighbour_changes: neighbour_changes(&ref_emb, &q_emb),
    })
}

/// Why an evaluation could not run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The model folder has no tokenizer.
    #[error("evaluation needs the model's tokenizer.json")]
    NoTokenizer,
    /// Tokenizing failed.
    #[error(transparent)]
    Import(#[from] crate::import::ImportError),
    /// The interpreter failed.
    #[error(transparent)]
    Interp(#[from] InterpError),
}

/// The matmul sites `q` quantized that the FP32 graph also has: the FP32 graph with its sites
/// named, the names, and each site's output value in the FP32 and in the Q/DQ graph.
struct SitePairs {
    fp32: Graph,
    names: Vec<String>,
    reference: Vec<ValueId>,
    quantized: Vec<ValueId>,
}

fn site_pairs(fp32_graph: &Graph, q: &Quantized) -> SitePairs {
    let mut fp32 = fp32_graph.clone();
    let fp32_sites = site_values(&mut fp32);
    let skipped: Vec<&str> = q.skipped.iter().map(|(s, _)| s.as_str()).collect();
    let q_sites: HashMap<String, ValueId> = q.sites.iter().map(|s| (s.name.clone(), q.qdq.nodes[s.node].outputs[0])).collect();
    let names: Vec<String> = q
        .sites
        .iter()
        .filter(|s| insert::plan(&q.recipe, s).is_some() && !skipped.contains(&s.name.as_str()) && fp32_sites.contains_key(&s.name))
        .map(|s| s.name.clone())
        .collect();
    let reference = names.iter().map(|n| fp32_sites[n]).collect();
    let quantized = names.iter().map(|n| q_sites[n]).collect();
    SitePairs { fp32, names, reference, quantized }
}

/// Per-matmul SNR, cosine and relative error of `q`'s Q/DQ graph against `model`'s FP32 graph
/// over `runs` (interpreter inputs, one run each), worst SNR first.
pub fn layer_metrics(model: &dyn Imported, q: &Quantized, runs: &[Vec<(&str, Tensor)>]) -> Result<Vec<LayerMetrics>, EvalError> {
    let SitePairs { fp32, names, reference, quantized } = site_pairs(model.graph(), q);
    let mut accs = vec![Acc::default(); names.len()];
    for inputs in runs {
        let (_, ref_vals) = run_capturing(&fp32, model.weights(), inputs, &reference)?;
        let (_, q_vals) = run_capturing(&q.qdq, model.weights(), inputs, &quantized)?;
        for (i, acc) in accs.iter_mut().enumerate() {
            acc.add(&ref_vals[i], &q_vals[i]);
        }
    }
    let mut layers: Vec<LayerMetrics> = names.iter().zip(&accs).map(|(n, a)| a.metrics(n)).collect();
    layers.sort_by(|a, b| a.snr_db.total_cmp(&b.snr_db));
    Ok(layers)
}

/// Names the matmuls of `g` as the recipe does and returns each one's output value.
fn site_values(g: &mut Graph) -> HashMap<String, ValueId> {
    insert::find_sites(g).into_iter().map(|s| (s.name, g.nodes[s.node].outputs[0])).collect()
}

type Captured = (Vec<(String, Tensor)>, Vec<Vec<f32>>);

fn run_capturing(g: &Graph, weights: &dyn WeightSource, inputs: &[(&str, Tensor)], want: &[ValueId]) -> Result<Captured, InterpError> {
    let mut got: Vec<Vec<f32>> = vec![vec![]; want.len()];
    let index: HashMap<ValueId, usize> = want.iter().enumerate().map(|(i, &v)| (v, i)).collect();
    let out = interp::run_observed(g, weights, inputs, &mut |v, t| {
        if let Some(&i) = index.get(&v) {
            got[i] = t.to_f32_vec();
        }
    })?;
    Ok((out, got))
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    let width = t.shape.last().copied().unwrap_or(1).max(1);
    t.to_f32_vec().chunks(width).map(<[f32]>::to_vec).collect()
}

/// Cosine similarity in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = Acc::default();
    acc.add(a, b);
    acc.dot / (acc.signal * acc.quant).sqrt().max(f64::MIN_POSITIVE)
}

fn nearest(embs: &[Vec<f32>], i: usize) -> Option<usize> {
    (0..embs.len()).filter(|&j| j != i).max_by(|&x, &y| cosine(&embs[i], &embs[x]).total_cmp(&cosine(&embs[i], &embs[y])))
}

fn neighbour_changes(reference: &[Vec<f32>], quantized: &[Vec<f32>]) -> usize {
    (0..reference.len()).filter(|&i| nearest(reference, i) != nearest(quantized, i)).count()
}

/// Bytes of the model's weights as `q`'s recipe stores them: each quantized matmul's weight at its
/// scheme's bits per element (scales and zero points included,
/// [`super::recipe::Scheme::bits_per_element`]), every other floating-point weight in the compute
/// dtype, integer tensors as they are.
pub fn weight_bytes(model: &Model, q: &Quantized) -> u64 {
    let skipped: Vec<&str> = q.skipped.iter().map(|(s, _)| s.as_str()).collect();
    let quantized: HashMap<&str, f64> = q
        .sites
        .iter()
        .filter(|s| !skipped.contains(&s.name.as_str()))
        .filter_map(|s| match &s.kind {
            insert::SiteKind::Linear { weight } => {
                let l = q.recipe.for_linear(&s.name)?;
                let shape = model.weights.shape(weight)?;
                Some((weight.as_str(), l.weight_bits(shape[0] as u64, shape[1..].iter().product::<usize>() as u64)))
            }
            insert::SiteKind::Attention => None,
        })
        .collect();
    let mut bits = 0f64;
    for (_, node) in q.baseline.nodes.iter() {
        let crate::ir::Op::Weight { name } = &node.op else { continue };
        let ty = q.baseline.ty(node.outputs[0]);
        let elements = ty.shape.iter().map(|d| d.fixed().unwrap_or(1)).product::<u64>() as f64;
        let per = match quantized.get(name.as_str()) {
            Some(&b) => b,
            None if ty.dtype.is_float() => f64::from(q.recipe.compute.bits()),
            None => f64::from(ty.dtype.bits()),
        };
        bits += elements * per;
    }
    (bits / 8.0).ceil() as u64
}
