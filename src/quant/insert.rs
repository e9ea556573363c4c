//! Q/DQ insertion, as in TensorRT's explicit quantization: a quantize → dequantize pair on each
//! quantized matmul's activation input, and on its weight (which `fold-constants` then quantizes
//! offline). Dequantizes produce f32 and the matmul accumulates in f32; a `cast` back to the
//! compute dtype follows, which is what the FP8 GEMM with an f16 output computes.
//!
//! ```text
//! before:  %y = matmul %x, %w {transpose_b} : f16[B,S,384]
//! after:   %q = quantize %x {f8e4m3, per_tensor, scale=0.0123} : f8e4m3[B,S,384]   loc("L:a.q")
//!          %d = dequantize %q {f8e4m3, per_tensor, scale=0.0123} : f32[B,S,384]    loc("L:a.dq")
//!          %wq = quantize %w {f8e4m3, per_tensor, scale=0.002} : f8e4m3[384,384]   loc("L:b.q")
//!          %wd = dequantize %wq {f8e4m3, per_tensor, scale=0.002} : f32[384,384]   loc("L:b.dq")
//!          %m = matmul %d, %wd {transpose_b} : f32[B,S,384]                         loc("L")
//!          %y = cast %m : f16[B,S,384]                                              loc("L")
//! ```

use super::algo::GroupQuant;
use super::recipe::{GemmDomain, Granularity, LayerQuant, Recipe, ScaleRule, Scheme};
use super::weight_qdq;
use crate::ir::{self, Builder, DType, Graph, NodeId, Op, QuantSpec, ScaleSource, ValueId};
use crate::passes::Weights;
use std::collections::HashMap;

/// A matmul the recipe may quantize.
#[derive(Clone, Debug)]
pub struct Site {
    /// The matmul node.
    pub node: NodeId,
    /// Its unique name (the layer name; `.matmul0`, `.matmul1` appended when a layer has several).
    pub name: String,
    /// Linear (activation × weight) or attention (activation × activation).
    pub kind: SiteKind,
}

/// The two kinds of matmul.
#[derive(Clone, Debug, PartialEq)]
pub enum SiteKind {
    /// `b` is a weight (possibly through a cast): `[N, K]` with `transpose_b`.
    Linear {
        /// The weight's checkpoint name.
        weight: String,
    },
    /// Both operands are activations.
    Attention,
}

/// Finds the matmuls of `g` and gives each a unique name (renaming the nodes accordingly).
pub fn find_sites(g: &mut Graph) -> Vec<Site> {
    let mut sites = vec![];
    let mut per_name: HashMap<String, usize> = HashMap::new();
    for (id, node) in g.nodes.iter() {
        if let Op::MatMul { transpose_a: false, .. } = node.op {
            *per_name.entry(node.name.clone().unwrap_or_default()).or_default() += 1;
            sites.push(id);
        }
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    sites
        .into_iter()
        .map(|id| {
            let base = g.nodes[id].name.clone().unwrap_or_else(|| format!("{id}"));
            let k = seen.entry(base.clone()).or_default();
            let name = if per_name[&base] > 1 { format!("{base}.matmul{k}") } else { base };
            *k += 1;
            g.nodes[id].name = Some(name.clone());
            let kind = match weight_name(g, g.nodes[id].inputs[1]) {
                Some(weight) if matches!(g.nodes[id].op, Op::MatMul { transpose_b: true, .. }) => SiteKind::Linear { weight },
                _ => SiteKind::Attention,
            };
            Site { node: id, name, kind }
        })
        .collect()
}

/// The checkpoint name behind `v` when it is a weight or a cast of one.
fn weight_name(g: &Graph, v: ValueId) -> Option<String> {
    let node = g.producer(v);
    match &node.op {
        Op::Weight { name } => Some(name.clone()),
        Op::Cast => weight_name(g, node.inputs[0]),
        _ => None,
    }
}

/// The values whose calibration statistics the recipe needs: activation inputs of the sites it
/// quantizes with calibrated (or calibrated global) scales.
pub fn calibration_values(g: &Graph, recipe: &Recipe, sites: &[Site]) -> Vec<ValueId> {
    let mut out = vec![];
    for site in sites {
        let inputs = &g.nodes[site.node].inputs;
        match (&site.kind, plan(recipe, site)) {
            (SiteKind::Linear { .. }, Some(p)) if p.activation.is_some_and(|a| a.scale.is_calibrated()) => out.push(inputs[0]),
            (SiteKind::Attention, Some(_)) => out.extend([inputs[0], inputs[1]]),
            _ => {}
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The recipe's plan for a site (attention sites use the activation scheme on both operands).
pub fn plan(recipe: &Recipe, site: &Site) -> Option<LayerQuant> {
    match site.kind {
        SiteKind::Linear { .. } => recipe.for_linear(&site.name),
        SiteKind::Attention => recipe.for_attention(&site.name).map(|s| LayerQuant::quantized(s, s)),
    }
}

/// Inserts Q/DQ for every site the recipe quantizes. `amax` holds calibrated ranges of activation
/// values; `prepared` the weights that a weight algorithm replaced (by site node). Sites whose
/// range is missing are left in high precision and returned with the reason.
pub fn insert(
    g: &mut Graph,
    recipe: &Recipe,
    sites: &[Site],
    amax: &HashMap<ValueId, f32>,
    prepared: &HashMap<NodeId, PreparedWeight>,
    weights: &dyn Weights,
) -> Result<Vec<(String, String)>, String> {
    let mut skipped = vec![];
    for site in sites {
        let Some(p) = plan(recipe, site) else { continue };
        let inputs = g.nodes[site.node].inputs.clone();
        let missing = |v: ValueId| !amax.get(&v).is_some_and(|a| *a > 0.0 && a.is_finite());
        let needs = |s: Option<Scheme>| s.is_some_and(|s| s.scale.is_calibrated());
        let act_missing = needs(p.activation) && missing(inputs[0]);
        let b_missing = site.kind == SiteKind::Attention && missing(inputs[1]);
        if act_missing || b_missing {
            skipped.push((
                site.name.clone(),
                "no usable calibration range for its input (see the warning above); kept in high precision".into(),
            ));
            continue;
        }
        let out = match p.domain {
            GemmDomain::Quantized => DType::F32,
            GemmDomain::Dequantized => g.ty(inputs[0]).dtype,
        };
        let a = match p.activation {
            Some(s) => quantize_activation(g, inputs[0], s, amax.get(&inputs[0]).copied(), &format!("{}:a", site.name), out)?,
            None => inputs[0],
        };
        let b = match (&site.kind, p.weight) {
            (SiteKind::Linear { weight }, Some(s)) => {
                let prep = prepared.get(&site.node);
                let tensor = prep.map_or(weight.as_str(), |p| p.tensor.as_str());
                let ws = weight_qdq::WeightSite { value: inputs[1], tensor, groups: prep.and_then(|p| p.groups.as_ref()) };
                weight_qdq::insert(g, &ws, &s, &format!("{}:b", site.name), weights, out)?
            }
            (SiteKind::Attention, Some(s)) => {
                quantize_activation(g, inputs[1], s, amax.get(&inputs[1]).copied(), &format!("{}:b", site.name), out)?
            }
            (_, None) => inputs[1],
        };
        rewire_matmul(g, site.node, a, b)?;
    }
    Ok(skipped)
}

/// A weight a weight algorithm replaced: the store's tensor now behind the site's weight value
/// (scaled by SmoothQuant/AWQ, or GPTQ's dequantized result), and GPTQ's fixed group parameters.
#[derive(Clone, Debug)]
pub struct PreparedWeight {
    /// Name of the derived tensor.
    pub tensor: String,
    /// Scales and zero points the quantize must use.
    pub groups: Option<GroupQuant>,
}

/// Points the matmul at the dequantized operands; when they are f32 its result becomes f32 and a
/// cast restores the original dtype for the readers.
fn rewire_matmul(g: &mut Graph, node: NodeId, a: ValueId, b: ValueId) -> Result<(), String> {
    g.nodes[node].inputs = [a, b].into_iter().collect();
    let out = g.nodes[node].outputs[0];
    let (old, new) = (g.ty(out).dtype, g.ty(a).dtype);
    if old == new {
        return Ok(());
    }
    g.values[out].ty.dtype = new;
    let name = g.nodes[node].name.clone();
    let mut b_ = Builder::new(g);
    b_.scope = name;
    let cast = b_.cast(out, old)?;
    g.replace_all_uses(out, cast);
    let cast_node = g.values[cast].producer;
    g.nodes[cast_node].inputs[0] = out;
    Ok(())
}

fn spec(storage: DType, granularity: ir::Granularity, scale: ScaleSource) -> QuantSpec {
    QuantSpec { storage, granularity, scale, zero_point: None }
}

/// `quantize → dequantize(out)` of an activation: static per tensor, dynamic per token, dynamic
/// groups along K, or NVFP4 (dynamic E4M3 block scales under a calibrated global scale).
fn quantize_activation(g: &mut Graph, x: ValueId, s: Scheme, amax: Option<f32>, loc: &str, out: DType) -> Result<ValueId, String> {
    let qmax = s.storage.max_finite() as f32;
    let dynamic = ScaleSource::Dynamic { dtype: s.scale_dtype, rounding: crate::numerics::E8M0Rounding::Up };
    let q_spec = match (s.granularity, s.scale) {
        (Granularity::PerToken, ScaleRule::Dynamic) => spec(s.storage, ir::Granularity::PerToken, dynamic),
        (Granularity::Group { size }, ScaleRule::Dynamic) => spec(s.storage, ir::Granularity::Block { blocks: vec![(-1, size)] }, dynamic),
        (Granularity::Group { size }, ScaleRule::DynamicUnderGlobal(_)) => {
            let global = pow2_global(amax.ok_or("missing calibrated range")?, qmax, s.scale_dtype);
            return quantize_under_global(
                g,
                x,
                spec(s.storage, ir::Granularity::Block { blocks: vec![(-1, size)] }, dynamic),
                global,
                loc,
                out,
            );
        }
        (Granularity::PerTensor, ScaleRule::Calibrated(_)) => {
            QuantSpec::per_tensor(s.storage, amax.ok_or("missing calibrated range")? / qmax)
        }
        other => return Err(format!("activation scheme {other:?} is not supported")),
    };
    qdq(&mut Builder::new(g), x, q_spec, loc, out)
}

/// `quantize → dequantize(out)`; a dynamic quantize's scales feed the dequantize.
fn qdq(b: &mut Builder, x: ValueId, q_spec: QuantSpec, loc: &str, out: DType) -> Result<ValueId, String> {
    b.scope = Some(format!("{loc}.q"));
    let outs = b.add(Op::Quantize(q_spec.clone()), &[x], None)?;
    b.scope = Some(format!("{loc}.dq"));
    let ty = b.graph.ty(x).with_dtype(out);
    match q_spec.scale {
        ScaleSource::Dynamic { .. } => {
            let dq = QuantSpec { scale: ScaleSource::Input, ..q_spec };
            b.add1(Op::Dequantize(dq), &[outs[0], outs[1]], Some(ty))
        }
        _ => b.add1(Op::Dequantize(q_spec), &[outs[0]], Some(ty)),
    }
}

/// NVFP4's global scale for a calibrated `amax` (activations and the NVFP4 KV cache): the power
/// of two at or above `amax / (6 · 448)` ([`pow2_global`] for E2M1 codes and E4M3 block scales);
/// 1 when `amax` is zero or not finite.
pub fn nvfp4_global(amax: f32) -> f32 {
    pow2_global(amax, DType::F4E2M1.max_finite() as f32, DType::F8E4M3)
}

/// The power of two at or above `amax / (qmax · scale_max)`: NVFP4's activation global scale.
/// A power of two makes the pre- and post-multiplications exact in any float dtype, and its block
/// scales (`≤ scale_max`) still cover the calibrated range.
fn pow2_global(amax: f32, qmax: f32, scale_dtype: DType) -> f32 {
    let ideal = amax / (qmax * scale_dtype.max_finite() as f32);
    if ideal > 0.0 && ideal.is_finite() {
        2f32.powi(ideal.log2().ceil() as i32)
    } else {
        1.0
    }
}

/// `x · (1/global) → quantize → dequantize → · global`, in `x`'s dtype up to the dequantize.
fn quantize_under_global(g: &mut Graph, x: ValueId, q_spec: QuantSpec, global: f32, loc: &str, out: DType) -> Result<ValueId, String> {
    let mut b = Builder::new(g);
    b.scope = Some(format!("{loc}.prescale"));
    let dtype = b.graph.ty(x).dtype;
    let inv = b.scalar(f64::from(1.0 / global), dtype)?;
    let scaled = b.binary(ir::BinaryOp::Mul, x, inv)?;
    let dq = qdq(&mut b, scaled, q_spec, loc, out)?;
    b.scope = Some(format!("{loc}.postscale"));
    let back = b.scalar(f64::from(global), out)?;
    b.binary(ir::BinaryOp::Mul, dq, back)
}
