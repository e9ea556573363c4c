//! Weight algorithms applied to the graph before Q/DQ insertion: SmoothQuant and AWQ per-input-
//! channel scaling, and GPTQ.
//!
//! Sites reading the same activation (Q, K and V read one LayerNorm output) share one factor
//! vector `s [K]`. The activation is multiplied by `inv = f16(1/s)` — a constant vector in the
//! compute dtype, which `fold-smoothing` then moves into the preceding LayerNorm's γ and β — and
//! each weight is replaced by `W · diag(1/inv)` (computed in f32 from the checkpoint tensor), so
//! the product is unchanged up to rounding whatever `inv` rounded to:
//!
//! ```text
//! before:  %y = matmul %x, %w {transpose_b}
//! after:   %inv = weight @<x>.smooth : f16[K]
//!          %xs = mul %x, %inv
//!          %ws = cast (weight @<w>.smooth : f32[N,K]) : f16[N,K]
//!          %y = matmul %xs, %ws {transpose_b}
//! ```
//!
//! After AWQ's scaling, its clipping search ([`algo::clip_search`]) runs on each derived weight as
//! the matmul reads it (rounded to the compute dtype) against the calibration rows times `inv`, and
//! fixes the group scales and zero points the quantize then uses; the codes it reproduces on those
//! values are the clipped ones.
//!
//! GPTQ replaces the weight by its quantized-and-dequantized result and fixes the scales and zero
//! points the quantize then uses, so the codes in the plan are GPTQ's.
//!
//! The statistics are collected span of layers by span of layers ([`capture::Capture`],
//! `calib::stream`), and each group is prepared as soon as its span (and every group before it,
//! which keeps the new nodes numbered as before) is done; its statistics are then freed, so the
//! Hessians and sample rows of one span are alive at a time, not those of the whole model. With
//! [`CalibSchedule::Sequential`] a span runs again after its groups are prepared, and the spans
//! after it start from that output: GPTQ's sequential quantization (each layer's Hessian from the
//! outputs of the already quantized layers before it).

use super::algo::{self, ChannelStats};
use super::capture::{self, Wants};
use super::insert::{PreparedWeight, Site, SiteKind};
use super::recipe::{Granularity, LayerQuant, Recipe, ScaleRule, Scheme, WeightAlgo};
use super::{CalibOptions, CalibSchedule, QuantError};
use crate::import::Imported;
use crate::interp::Tensor;
use crate::ir::{BinaryOp, Builder, DType, Graph, NodeId, TensorType, ValueId};
use crate::numerics;
use std::collections::{BTreeMap, HashMap};

/// Rows kept per activation for the AWQ search.
const AWQ_ROWS: usize = 2048;

/// What preparation did: derived weights by site node, and a line per site group for the log.
#[derive(Default)]
pub struct Prepared {
    /// Derived weights by site node.
    pub weights: HashMap<NodeId, PreparedWeight>,
    /// `(sites, what was done)`, e.g. `("…query, …key, …value", "AWQ α = 0.45")`.
    pub notes: Vec<(String, String)>,
}

/// A set of Linear sites reading one activation, with their weight tensors.
struct Group<'a> {
    input: ValueId,
    sites: Vec<(&'a Site, &'a str)>,
}

/// Runs the recipe's weight algorithms on `g` (the compute-dtype graph); see the module doc.
pub fn prepare(model: &dyn Imported, g: &mut Graph, recipe: &Recipe, sites: &[Site], calib: &CalibOptions) -> Result<Prepared, QuantError> {
    let groups = groups(g, recipe, sites);
    let mut wants: HashMap<ValueId, Wants> = HashMap::new();
    for gr in &groups {
        for (site, _) in &gr.sites {
            let l = recipe.for_linear(&site.name).expect("grouped sites are quantized");
            let w = wants.entry(gr.input).or_default();
            match l.algo {
                WeightAlgo::Awq { .. } => w.sample_rows = AWQ_ROWS,
                WeightAlgo::Gptq { .. } => w.hessian = true,
                WeightAlgo::Rtn => {}
            }
        }
    }
    if wants.is_empty() {
        return Ok(Prepared::default());
    }
    let mut capture = capture::Capture::new(model, g, calib, wants)?;
    // A group is prepared once its sites have run (they read its input), since that rewrites them.
    let ready: Vec<usize> = groups.iter().map(|gr| capture.spans().read_by(gr.input).unwrap_or(0)).collect();
    let mut stats = HashMap::new();
    let (mut prepared, mut done) = (Prepared::default(), 0);
    let rerun = calib.schedule == CalibSchedule::Sequential;
    for span in 0..capture.spans().len() {
        stats.extend(capture.span_stats(model, g)?);
        // Groups in their order (the graph's new nodes are numbered as they are added), each as
        // soon as it is ready and every group before it is done; its statistics are then freed.
        while done < groups.len() && ready[done] <= span {
            let s =
                stats.remove(&groups[done].input).ok_or_else(|| QuantError::Recipe(format!("{}: no statistics", groups[done].input)))?;
            prepare_group(model, g, recipe, &groups[done], &s, &mut prepared).map_err(QuantError::Recipe)?;
            done += 1;
        }
        if span + 1 < capture.spans().len() {
            capture.next_span(model, g, rerun)?;
        }
    }
    Ok(prepared)
}

/// Linear sites needing an algorithm, grouped by activation input (in site order).
fn groups<'a>(g: &Graph, recipe: &Recipe, sites: &'a [Site]) -> Vec<Group<'a>> {
    let mut by_input: BTreeMap<ValueId, Vec<(&Site, &str)>> = BTreeMap::new();
    for site in sites {
        let (SiteKind::Linear { weight }, Some(l)) = (&site.kind, recipe.for_linear(&site.name)) else { continue };
        if l.weight.is_some() && (l.smooth.is_some() || l.algo != WeightAlgo::Rtn) {
            by_input.entry(g.nodes[site.node].inputs[0]).or_default().push((site, weight.as_str()));
        }
    }
    by_input.into_iter().map(|(input, sites)| Group { input, sites }).collect()
}

fn prepare_group(
    model: &dyn Imported,
    g: &mut Graph,
    recipe: &Recipe,
    gr: &Group,
    stats: &ChannelStats,
    out: &mut Prepared,
) -> Result<(), String> {
    let names = gr.sites.iter().map(|(s, _)| s.name.as_str()).collect::<Vec<_>>().join(", ");
    let layer = recipe.for_linear(&gr.sites[0].0.name).expect("grouped sites are quantized");
    let ws: Vec<(Vec<f32>, usize)> = gr.sites.iter().map(|(_, w)| read_weight(model, w)).collect::<Result<_, _>>()?;
    let k = stats.k();
    let refs: Vec<(&[f32], usize)> = ws.iter().map(|(w, n)| (w.as_slice(), *n)).collect();
    let factors = match (layer.smooth, layer.algo) {
        (Some(alpha), _) => {
            let w_absmax = algo::weight_absmax_per_input(&refs, k).map_err(|e| e.to_string())?;
            let s = algo::smooth_factors(stats.absmax(), &w_absmax, alpha).map_err(|e| e.to_string())?;
            out.notes.push((names.clone(), format!("SmoothQuant α = {alpha}")));
            Some((s, None))
        }
        (None, WeightAlgo::Awq { grid }) => {
            let (s, note, clip) = awq_factors(&layer, &names, &refs, stats, grid)?;
            Some((s, Some((note, clip))))
        }
        _ => None,
    };
    if let Some((s, awq)) = factors {
        let inv = scale_activation(model, g, gr, &s)?;
        let (note, clip) = match awq {
            Some((note, opts)) => (Some(note), Some((opts, scaled_samples(stats, &inv)?))),
            None => (None, None),
        };
        let ratio = scale_weights(model, g, gr, &ws, &inv, clip.as_ref(), out)?;
        if let Some(note) = note {
            out.notes.push((names.clone(), format!("{note}; clip ratio mean {ratio:.3}")));
        }
    }
    if let WeightAlgo::Gptq { damp, block, act_order } = layer.algo {
        for ((site, weight), (w, n)) in gr.sites.iter().zip(&ws) {
            let (bits, group, symmetric) =
                group_format(&layer).ok_or_else(|| format!("{}: GPTQ needs a grouped weight scheme", site.name))?;
            let damp = shrunk_damp(damp, stats);
            let mse = layer.weight.is_some_and(|w| w.scale == ScaleRule::MseClip).then(algo::MseClip::default);
            let opts = algo::GptqOptions { bits, group, symmetric, percdamp: damp, block, act_order, mse };
            let r = algo::gptq_from_stats(w, *n, stats, &opts).map_err(|e| format!("{}: {e}", site.name))?;
            let name = format!("{weight}.gptq");
            model.weights().insert(name.clone(), Tensor::f32(vec![*n, k], r.quant.dequantize()));
            replace_weight(g, site.node, &name, *n, k)?;
            out.weights.insert(site.node, PreparedWeight { tensor: name, groups: Some(r.quant) });
        }
        out.notes.push((
            names,
            format!(
                "GPTQ (damp max({damp}, Ledoit–Wolf), blocks of {block}{}{})",
                if act_order { ", act-order" } else { "" },
                if layer.weight.is_some_and(|w| w.scale == ScaleRule::MseClip) { ", MSE-clipped groups" } else { "" }
            ),
        ));
    }
    Ok(())
}

/// Replaces each site's weight `W` (`ws`, in site order) by `W · diag(1/inv)`. With `clip` (AWQ's
/// clipping settings and the scaled calibration rows) the clipping search fixes each weight's group
/// parameters; returns the mean chosen ratio over all groups (NaN without `clip`).
fn scale_weights(
    model: &dyn Imported,
    g: &mut Graph,
    gr: &Group,
    ws: &[(Vec<f32>, usize)],
    inv: &[f32],
    clip: Option<&(algo::ClipOptions, Vec<f32>)>,
    out: &mut Prepared,
) -> Result<f64, String> {
    let k = inv.len();
    let (mut ratio_sum, mut rows) = (0f64, 0usize);
    for ((site, weight), (w, n)) in gr.sites.iter().zip(ws) {
        let scaled: Vec<f32> = w.chunks(k).flat_map(|row| row.iter().zip(inv).map(|(x, i)| x / i)).collect();
        let name = format!("{weight}.smooth");
        replace_weight(g, site.node, &name, *n, k)?;
        let groups = match clip {
            Some((opts, x)) => {
                let r = clip_weight(g, site, &scaled, *n, x, opts)?;
                // Every row has the same number of groups: weighting by rows averages over groups.
                (ratio_sum, rows) = (ratio_sum + r.mean_ratio * *n as f64, rows + n);
                Some(r.quant)
            }
            None => None,
        };
        model.weights().insert(name.clone(), Tensor::f32(vec![*n, k], scaled));
        out.weights.insert(site.node, PreparedWeight { tensor: name, groups });
    }
    Ok(if rows == 0 { f64::NAN } else { ratio_sum / rows as f64 })
}

/// The AWQ scales of a group's weights `refs`, the note line describing the search, and the
/// clipping search's options for the same weight format.
fn awq_factors(
    layer: &LayerQuant,
    names: &str,
    refs: &[(&[f32], usize)],
    stats: &ChannelStats,
    grid: usize,
) -> Result<(Vec<f32>, String, algo::ClipOptions), String> {
    let (bits, group, symmetric) = group_format(layer).ok_or_else(|| format!("{names}: AWQ needs a grouped weight scheme"))?;
    let opts = algo::AwqOptions { bits, group, grid, symmetric, ..algo::AwqOptions::default() };
    let calib = algo::AwqCalib::from_stats(stats).map_err(|e| e.to_string())?;
    let r = algo::awq_search(refs, &calib, &opts).map_err(|e| format!("{names}: {e}"))?;
    let best = r.losses.iter().find(|l| l.0 == r.alpha).map_or(f64::NAN, |l| l.1);
    let note = format!("AWQ α = {:.2} (output MSE {best:.3e}; {:.3e} at α = 0, plain RTN)", r.alpha, r.losses[0].1);
    // The clipping search that follows runs on the same format (its other settings default).
    Ok((r.scales, note, algo::ClipOptions { bits, group, symmetric, ..algo::ClipOptions::default() }))
}

/// `(bits, group size, symmetric)` of the layer's grouped weight scheme; `None` when it is not grouped.
fn group_format(layer: &LayerQuant) -> Option<(u32, usize, bool)> {
    match layer.weight {
        Some(Scheme { storage, granularity: Granularity::Group { size }, zero_point, .. }) => {
            Some((storage.bits(), size as usize, !zero_point))
        }
        _ => None,
    }
}

/// The AWQ search's calibration rows as the scaled activation `x · inv` carries them.
fn scaled_samples(stats: &ChannelStats, inv: &[f32]) -> Result<Vec<f32>, String> {
    let x = stats.samples().filter(|x| !x.is_empty()).ok_or("AWQ clipping needs sample rows")?;
    Ok(x.chunks(inv.len()).flat_map(|row| row.iter().zip(inv).map(|(v, i)| v * i)).collect())
}

/// Runs the clipping search on the derived weight `scaled [n, K]` as the matmul reads it (rounded
/// to the weight operand's dtype, which the quantize then reads, so `quantize_with` on the same
/// values reproduces the codes) against the scaled calibration rows `x`.
fn clip_weight(g: &Graph, site: &Site, scaled: &[f32], n: usize, x: &[f32], opts: &algo::ClipOptions) -> Result<algo::ClipResult, String> {
    let mut seen = scaled.to_vec();
    numerics::cast_slice(&mut seen, g.ty(g.nodes[site.node].inputs[1]).dtype);
    algo::clip_search(&seen, n, x, scaled.len() / n, opts).map_err(|e| format!("{}: AWQ clipping: {e}", site.name))
}

/// The checkpoint tensor `name` `[N, K]` as f32, with N.
fn read_weight(model: &dyn Imported, name: &str) -> Result<(Vec<f32>, usize), String> {
    let t = crate::interp::WeightSource::weight(model.weights(), name)?;
    match t.shape.as_slice() {
        [n, _] => Ok((t.to_f32_vec(), *n)),
        other => Err(format!("weight `{name}` must be [N, K], got {other:?}")),
    }
}

/// Multiplies the group's activation by `f16(1/s)` and points its sites at the product; returns
/// the rounded factors `inv`.
fn scale_activation(model: &dyn Imported, g: &mut Graph, gr: &Group, s: &[f32]) -> Result<Vec<f32>, String> {
    let dtype = g.ty(gr.input).dtype;
    let mut inv: Vec<f32> = s.iter().map(|&x| 1.0 / x).collect();
    numerics::cast_slice(&mut inv, dtype);
    if inv.iter().any(|&x| !(x > 0.0 && x.is_finite())) {
        return Err(format!("activation factors 1/s do not fit {dtype} (range {:?})", minmax(s)));
    }
    let name = format!("{}.smooth", gr.sites[0].0.name);
    let weights_ty = TensorType::fixed(dtype, &[inv.len() as u64]);
    let mut b = Builder::new(g);
    b.scope = Some(format!("{}.smooth", gr.sites[0].0.name));
    let w = b.weight(&name, weights_ty)?;
    let scaled = b.binary(BinaryOp::Mul, gr.input, w)?;
    for (site, _) in &gr.sites {
        g.nodes[site.node].inputs[0] = scaled;
    }
    model.weights().insert(name, Tensor::from_f32_as(dtype, vec![inv.len()], inv.clone()));
    Ok(inv)
}

/// Points the matmul's weight operand at `cast(weight @name : f32[n, k])` in its current dtype.
fn replace_weight(g: &mut Graph, node: NodeId, name: &str, n: usize, k: usize) -> Result<(), String> {
    let dtype = g.ty(g.nodes[node].inputs[1]).dtype;
    let scope = g.nodes[node].name.clone();
    let mut b = Builder::new(g);
    b.scope = scope;
    let w = b.weight(name, TensorType::fixed(DType::F32, &[n as u64, k as u64]))?;
    let cast = b.cast(w, dtype)?;
    g.nodes[node].inputs[1] = cast;
    Ok(())
}

fn minmax(xs: &[f32]) -> (f32, f32) {
    xs.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)))
}

/// GPTQ's relative dampening for one activation: the recipe's (`damp`, 1 % by default) or, when
/// larger, the Ledoit–Wolf shrinkage of the calibration Hessian ([`ChannelStats::shrinkage_damp`],
/// capped at 10⁶, where GPTQ is round-to-nearest in all but name). A Hessian estimated from few
/// rows against `K` (the built-in calibration set holds about 2,500 decoder tokens; GPTQ's
/// reference implementation uses 128 × 2048) is noisy, and GPTQ fitted to that noise can do worse
/// than round-to-nearest on other text; the shrinkage is the data's own estimate of how much to
/// trust it, and vanishes as the rows grow.
fn shrunk_damp(damp: f64, stats: &ChannelStats) -> f64 {
    damp.max(stats.shrinkage_damp().unwrap_or(0.0).min(1e6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gptq_dampening_is_the_larger_of_the_recipe_and_ledoit_wolf() {
        // Two rows of two channels with different outer products: a noisy Hessian, large shrinkage.
        let mut noisy = ChannelStats::new(2).unwrap().with_hessian();
        noisy.observe(&[3.0, 0.0, 0.0, 1.0], 2).unwrap();
        let lw = noisy.shrinkage_damp().unwrap();
        assert!(lw > 0.01);
        assert_eq!(shrunk_damp(0.01, &noisy), lw.min(1e6));
        // Identical rows: no shrinkage, the recipe's dampening stays.
        let mut same = ChannelStats::new(2).unwrap().with_hessian();
        same.observe(&[1.0, 2.0, 1.0, 2.0], 2).unwrap();
        assert_eq!(shrunk_damp(0.01, &same), 0.01);
        // No Hessian: the recipe's dampening.
        assert_eq!(shrunk_damp(0.01, &ChannelStats::new(2).unwrap()), 0.01);
    }
}
