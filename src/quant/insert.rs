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

use super::recipe::{Granularity, LayerQuant, Recipe, ScaleRule, Scheme};
use crate::ir::{self, Builder, DType, Graph, NodeId, Op, QuantSpec, ScaleSource, TensorType, ValueId};
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
/// quantizes with calibrated scales.
pub fn calibration_values(g: &Graph, recipe: &Recipe, sites: &[Site]) -> Vec<ValueId> {
    let mut out = vec![];
    for site in sites {
        let inputs = &g.nodes[site.node].inputs;
        match (&site.kind, plan(recipe, site)) {
            (SiteKind::Linear { .. }, Some(p)) if p.activation.is_some_and(|a| matches!(a.scale, ScaleRule::Calibrated(_))) => {
                out.push(inputs[0])
            }
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
        SiteKind::Attention => recipe.for_attention(&site.name).map(|s| LayerQuant { weight: Some(s), activation: Some(s) }),
    }
}

/// Inserts Q/DQ for every site the recipe quantizes. `amax` holds calibrated ranges of activation
/// values. Sites whose range is missing are left in high precision and returned with the reason.
pub fn insert(
    g: &mut Graph,
    recipe: &Recipe,
    sites: &[Site],
    amax: &HashMap<ValueId, f32>,
    weights: &dyn Weights,
) -> Result<Vec<(String, String)>, String> {
    let mut skipped = vec![];
    for site in sites {
        let Some(p) = plan(recipe, site) else { continue };
        let inputs = g.nodes[site.node].inputs.clone();
        let missing = |v: ValueId| !amax.get(&v).is_some_and(|a| *a > 0.0 && a.is_finite());
        let needs = |s: Option<Scheme>| s.is_some_and(|s| matches!(s.scale, ScaleRule::Calibrated(_)));
        let act_missing = needs(p.activation) && missing(inputs[0]);
        let b_missing = site.kind == SiteKind::Attention && missing(inputs[1]);
        if act_missing || b_missing {
            skipped.push((
                site.name.clone(),
                "no usable calibration range for its input (see the warning above); kept in high precision".into(),
            ));
            continue;
        }
        let a = match p.activation {
            Some(s) => quantize_activation(g, inputs[0], s, amax.get(&inputs[0]).copied(), &format!("{}:a", site.name))?,
            None => inputs[0],
        };
        let b = match (&site.kind, p.weight) {
            (SiteKind::Linear { weight }, Some(s)) => quantize_weight(g, inputs[1], weight, s, &format!("{}:b", site.name), weights)?,
            (SiteKind::Attention, Some(s)) => {
                quantize_activation(g, inputs[1], s, amax.get(&inputs[1]).copied(), &format!("{}:b", site.name))?
            }
            (_, None) => inputs[1],
        };
        rewire_matmul(g, site.node, a, b)?;
    }
    Ok(skipped)
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

/// `quantize → dequantize(f32)` of an activation, static per tensor or dynamic per token.
fn quantize_activation(g: &mut Graph, x: ValueId, s: Scheme, amax: Option<f32>, loc: &str) -> Result<ValueId, String> {
    let qmax = s.storage.max_finite() as f32;
    let (q_spec, granularity) = match (s.granularity, s.scale) {
        (Granularity::PerToken, ScaleRule::Dynamic) => {
            let dynamic = ScaleSource::Dynamic { dtype: DType::F32, rounding: crate::numerics::E8M0Rounding::Up };
            (spec(s.storage, ir::Granularity::PerToken, dynamic), ir::Granularity::PerToken)
        }
        (Granularity::PerTensor, ScaleRule::Calibrated(_)) => {
            let amax = amax.ok_or("missing calibrated range")?;
            (QuantSpec::per_tensor(s.storage, amax / qmax), ir::Granularity::PerTensor)
        }
        other => return Err(format!("activation scheme {other:?} is not supported yet")),
    };
    let mut b = Builder::new(g);
    b.scope = Some(format!("{loc}.q"));
    let outs = b.add(Op::Quantize(q_spec.clone()), &[x], None)?;
    b.scope = Some(format!("{loc}.dq"));
    let f32_ty = |b: &Builder| b.graph.ty(x).with_dtype(DType::F32);
    let ty = f32_ty(&b);
    match q_spec.scale {
        ScaleSource::Dynamic { .. } => {
            b.add1(Op::Dequantize(spec(s.storage, granularity, ScaleSource::Input)), &[outs[0], outs[1]], Some(ty))
        }
        _ => b.add1(Op::Dequantize(q_spec), &[outs[0]], Some(ty)),
    }
}

/// `quantize → dequantize(f32)` of a weight `[N, K]` with scales from its data.
fn quantize_weight(g: &mut Graph, w: ValueId, name: &str, s: Scheme, loc: &str, weights: &dyn Weights) -> Result<ValueId, String> {
    let ty = g.ty(w).clone();
    let data = weights.weight(name)?;
    let mut values = data.to_f32_vec();
    crate::numerics::cast_slice(&mut values, ty.dtype);
    let n = ty.shape[0].fixed().ok_or("weight rows must be fixed")? as usize;
    let qmax = s.storage.max_finite() as f32;
    let scale = |amax: f32| if amax > 0.0 && amax.is_finite() { amax / qmax } else { 1.0 };
    let mut b = Builder::new(g);
    let q_spec = match s.granularity {
        Granularity::PerTensor => QuantSpec::per_tensor(s.storage, scale(values.iter().fold(0.0, |m, x| m.max(x.abs())))),
        Granularity::PerChannel => {
            let rows: Vec<f32> = values.chunks(values.len() / n.max(1)).map(|r| scale(r.iter().fold(0.0, |m, x| m.max(x.abs())))).collect();
            let scale_name = format!("{name}.scale");
            weights.insert(scale_name.clone(), crate::interp::Tensor::f32(vec![n], rows));
            b.scope = Some(format!("{loc}.scale"));
            let sv = b.weight(&scale_name, TensorType::fixed(DType::F32, &[n as u64]))?;
            return quantize_weight_with(
                &mut b,
                w,
                spec(s.storage, ir::Granularity::PerChannel { axis: 0 }, ScaleSource::Input),
                Some(sv),
                loc,
            );
        }
        other => return Err(format!("weight granularity {other:?} is not supported yet")),
    };
    quantize_weight_with(&mut b, w, q_spec, None, loc)
}

fn quantize_weight_with(b: &mut Builder, w: ValueId, q_spec: QuantSpec, scale: Option<ValueId>, loc: &str) -> Result<ValueId, String> {
    let extra: Vec<ValueId> = std::iter::once(w).chain(scale).collect();
    b.scope = Some(format!("{loc}.q"));
    let q = b.add1(Op::Quantize(q_spec.clone()), &extra, None)?;
    b.scope = Some(format!("{loc}.dq"));
    let ty = b.graph.ty(w).with_dtype(DType::F32);
    let dq_inputs: Vec<ValueId> = std::iter::once(q).chain(scale).collect();
    b.add1(Op::Dequantize(q_spec), &dq_inputs, Some(ty))
}
