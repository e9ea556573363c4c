//! `--recipe auto`: a format per matmul, chosen on calibration data.
//!
//! For every Linear site, each candidate format (below, cheapest first) is applied to that layer
//! alone — the same Q/DQ insertion the fixed recipes use, on a one-matmul graph — and run by the
//! interpreter on the layer's calibration inputs (rows of real tokens captured from the compute-
//! dtype graph). Its error is the output cosine against the f32 product `X·Wᵀ`. This generalises
//! MoFQ's layer-wise INT-or-FP choice (arXiv 2305.12356) to formats of different widths.
//!
//! - `MinCosine(c)`: each layer takes the cheapest candidate whose cosine is at least `c` (FP16
//!   when none is).
//! - `Budget(bits)`: each layer starts at its most accurate candidate; while the mean weight bits
//!   (weighted by element count) exceed the budget, the layer whose next cheaper candidate costs
//!   the least error per bit saved moves to it.
//!
//! Cost is the weight's storage bits per element (scales included), then the activation's bits:
//! among equally small weights, quantized activations run on faster tensor cores.

use super::algo::ChannelStats;
use super::calib::CalibMethod;
use super::capture::{self, Wants};
use super::eval::cosine;
use super::insert::{self, Site, SiteKind};
use super::recipe::{schemes, AutoTarget, Granularity, LayerQuant, Recipe, ScaleRule, Scheme, DEFAULT_GROUP};
use super::{CalibOptions, QuantError};
use crate::import::Imported;
use crate::interp::{self, Tensor, WeightSource};
use crate::ir::{Builder, DType, Graph, TensorType, ValueId};
use serde::Serialize;
use std::collections::HashMap;

/// Calibration rows per layer used to score candidates.
const ROWS: usize = 1024;

/// A candidate format.
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    /// Short name (`nvfp4`, `w4a16`, `int8`, `fp8`, `w8a16`, `fp16`).
    pub name: &'static str,
    /// The layer's quantization.
    pub layer: LayerQuant,
}

/// The candidates, cheapest first.
pub fn candidates() -> Vec<Candidate> {
    let cal = ScaleRule::Calibrated(CalibMethod::Max);
    let dynamic = |storage| Scheme::new(storage, Granularity::PerToken, ScaleRule::Dynamic);
    let channel = |storage| Scheme::new(storage, Granularity::PerChannel, ScaleRule::FromData);
    vec![
        Candidate {
            name: "nvfp4",
            layer: LayerQuant::dequantized(
                schemes::nvfp4(ScaleRule::FromData),
                Some(schemes::nvfp4(ScaleRule::DynamicUnderGlobal(CalibMethod::Max))),
            ),
        },
        Candidate { name: "w4a16", layer: LayerQuant::dequantized(schemes::uint4_group(DEFAULT_GROUP), None) },
        Candidate { name: "int8", layer: LayerQuant::quantized(channel(DType::I8), dynamic(DType::I8)) },
        Candidate { name: "fp8", layer: LayerQuant::quantized(channel(DType::F8E4M3), dynamic(DType::F8E4M3)) },
        Candidate { name: "fp8-static", layer: LayerQuant::quantized(schemes::fp8_tensor(ScaleRule::FromData), schemes::fp8_tensor(cal)) },
        Candidate { name: "w8a16", layer: LayerQuant::dequantized(schemes::int8_channel_mse(), None) },
        Candidate { name: "fp16", layer: LayerQuant::NONE },
    ]
}

/// One layer's scores and choice.
#[derive(Clone, Debug, Serialize)]
pub struct LayerChoice {
    /// The matmul site.
    pub site: String,
    /// Weight elements.
    pub elements: u64,
    /// `(candidate, weight bits per element, output cosine)`, cheapest first.
    pub scores: Vec<(String, f64, f64)>,
    /// The chosen candidate's index in `scores`.
    pub chosen: usize,
}

impl LayerChoice {
    /// The chosen candidate's name.
    pub fn name(&self) -> &str {
        &self.scores[self.chosen].0
    }
}

/// Scores every candidate on every Linear site of `g` and picks per `target`; the choices go into
/// `recipe.layers`.
pub fn choose(
    model: &dyn Imported,
    g: &Graph,
    sites: &[Site],
    recipe: &mut Recipe,
    target: AutoTarget,
    calib: &CalibOptions,
) -> Result<Vec<LayerChoice>, QuantError> {
    let linear: Vec<(&Site, &str)> = sites
        .iter()
        .filter(|s| !recipe.excluded(&s.name))
        .filter_map(|s| match &s.kind {
            SiteKind::Linear { weight } => Some((s, weight.as_str())),
            SiteKind::Attention => None,
        })
        .collect();
    let wants: HashMap<ValueId, Wants> =
        linear.iter().map(|(s, _)| (g.nodes[s.node].inputs[0], Wants { hessian: false, sample_rows: ROWS })).collect();
    let stats = capture::channel_stats(model, g, calib, &wants)?;
    let cands = candidates();
    let mut choices = vec![];
    for (site, weight) in linear {
        let x = &stats[&g.nodes[site.node].inputs[0]];
        choices.push(score(model, site, weight, x, &cands).map_err(|e| QuantError::Recipe(format!("auto, {}: {e}", site.name)))?);
    }
    match target {
        AutoTarget::MinCosine(c) => pick_min_cosine(&mut choices, c),
        AutoTarget::Budget(bits) => pick_budget(&mut choices, bits),
    }
    for c in &choices {
        let cand = cands.iter().find(|k| k.name == c.name()).expect("chosen from the candidates");
        recipe.layers.insert(c.site.clone(), cand.layer);
    }
    Ok(choices)
}

/// The cosine of each candidate on one layer.
fn score(model: &dyn Imported, site: &Site, weight: &str, x: &ChannelStats, cands: &[Candidate]) -> Result<LayerChoice, String> {
    let w = model.weights().weight(weight)?;
    let [n, k] = w.shape[..] else { return Err(format!("weight `{weight}` must be [N, K]")) };
    let rows = x.samples().unwrap_or(&[]);
    let m = rows.len() / k.max(1);
    if m == 0 {
        return Err("no calibration rows reached this layer".into());
    }
    let amax = rows.iter().fold(0f32, |a, v| a.max(v.abs()));
    let reference = run_layer(model, weight, rows, (m, n, k), DType::F32, LayerQuant::NONE, amax)?;
    let mut scores = vec![];
    for c in cands {
        let y = run_layer(model, weight, rows, (m, n, k), DType::F16, c.layer, amax)?;
        scores.push((c.name.to_string(), c.layer.weight_bits(n as u64, k as u64), cosine(&reference, &y)));
    }
    Ok(LayerChoice { site: site.name.clone(), elements: (n * k) as u64, scores, chosen: 0 })
}

/// Runs `x · Wᵀ` by the interpreter with `layer` applied, computing in `dtype` as the recipe
/// would (the compute dtype f16; f32 with no quantization is the reference).
fn run_layer(
    model: &dyn Imported,
    weight: &str,
    x: &[f32],
    (m, n, k): (usize, usize, usize),
    dtype: DType,
    layer: LayerQuant,
    amax: f32,
) -> Result<Vec<f32>, String> {
    let mut g = Graph::default();
    let mut b = Builder::new(&mut g);
    let xv = b.add1(crate::ir::Op::Input { name: "x".into() }, &[], Some(TensorType::fixed(dtype, &[m as u64, k as u64])))?;
    b.scope = Some("layer".into());
    let wv = b.weight(weight, TensorType::fixed(DType::F32, &[n as u64, k as u64]))?;
    let wc = if dtype == DType::F32 { wv } else { b.cast(wv, dtype)? };
    let y = b.add1(crate::ir::Op::MatMul { transpose_a: false, transpose_b: true }, &[xv, wc], None)?;
    g.outputs.push(("y".into(), y));
    let sites = insert::find_sites(&mut g);
    let mut recipe = Recipe::named("fp16", CalibMethod::Max)?;
    recipe.linear = layer;
    let amaxes: HashMap<ValueId, f32> = [(xv, amax)].into();
    insert::insert(&mut g, &recipe, &sites, &amaxes, &HashMap::new(), model.weights())?;
    let input = Tensor::from_f32_as(dtype, vec![m, k], x.to_vec());
    let out = interp::run(&g, model.weights(), &[("x", input)]).map_err(|e| e.to_string())?;
    Ok(out[0].1.to_f32_vec())
}

/// The cheapest candidate at or above `min` per layer (the last, FP16, when none is).
fn pick_min_cosine(choices: &mut [LayerChoice], min: f64) {
    for c in choices {
        c.chosen = c.scores.iter().position(|s| s.2 >= min).unwrap_or(c.scores.len() - 1);
    }
}

/// Greedy descent from the most accurate assignment until the mean bits fit `budget`.
fn pick_budget(choices: &mut [LayerChoice], budget: f64) {
    for c in choices.iter_mut() {
        c.chosen = (0..c.scores.len()).max_by(|&a, &b| c.scores[a].2.total_cmp(&c.scores[b].2).then(b.cmp(&a))).unwrap_or(0);
    }
    let total: f64 = choices.iter().map(|c| c.elements as f64).sum();
    let mean_bits = |cs: &[LayerChoice]| cs.iter().map(|c| c.scores[c.chosen].1 * c.elements as f64).sum::<f64>() / total.max(1.0);
    while mean_bits(choices) > budget {
        let step = choices
            .iter()
            .enumerate()
            .filter_map(|(i, c)| cheaper(c).map(|j| (i, j, cost_per_bit(c, j))))
            .min_by(|a, b| a.2.total_cmp(&b.2));
        match step {
            Some((i, j, _)) => choices[i].chosen = j,
            None => break,
        }
    }
}

/// The most accurate candidate of `c` that stores fewer bits than its current choice.
fn cheaper(c: &LayerChoice) -> Option<usize> {
    let bits = c.scores[c.chosen].1;
    (0..c.scores.len()).filter(|&j| c.scores[j].1 < bits).max_by(|&a, &b| c.scores[a].2.total_cmp(&c.scores[b].2))
}

/// Added error (1 − cosine) per bit saved, both weighted by the layer's elements.
fn cost_per_bit(c: &LayerChoice, j: usize) -> f64 {
    let (now, next) = (&c.scores[c.chosen], &c.scores[j]);
    let saved = (now.1 - next.1) * c.elements as f64;
    ((now.2 - next.2).max(0.0) * c.elements as f64) / saved.max(f64::MIN_POSITIVE)
}
