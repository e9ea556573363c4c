//! `fuse-layernorm-quantize`: a LayerNorm or RMSNorm whose result is quantized becomes one
//! `layernorm_quantize` / `rmsnorm_quantize` node, so the normalised activations never reach
//! memory in f16 (unless something else reads them).
//!
//! ```text
//! before:
//!   %3 = layernorm %0, %1, %2 {eps=1e-12} : f16[B,S,384] loc("E.LayerNorm")
//!   %4 = quantize %3 {f8e4m3, per_tensor, scale=0.0123} : f8e4m3[B,S,384] loc("Q:a.q")
//!   %5 = quantize %3 {f8e4m3, per_tensor, scale=0.0123} : f8e4m3[B,S,384] loc("K:a.q")
//!   %6 = add %3, %9 : f16[B,S,384] loc("residual")
//! after:
//!   %4, %7 = layernorm_quantize %0, %1, %2 {eps=1e-12, via=f16, keep_normed=true, f8e4m3, per_tensor, scale=0.0123} : f8e4m3[B,S,384], f16[B,S,384] loc("E.LayerNorm")
//!   %6 = add %7, %9 : f16[B,S,384] loc("residual")     (readers of %5 read %4)
//! ```
//!
//! Rule `norm_quantize`: `quantize(norm(x, γ[, β]), q)` ⇒ `norm_quantize(x, γ[, β])` with
//! `via` = the norm's output dtype and `quant = q`. The fused op is defined as exactly that
//! composition, so the rewrite is exact.
//! - Every live quantize of the norm's result with the same spec joins the one fused node; with a
//!   dynamic per-token spec the fused node's scales output replaces each quantize's scales.
//! - `keep_normed` is set iff anything else reads the norm's result (a residual `add`, a graph
//!   output, a quantize that did not fuse); those readers then read the fused `normed` output.
//!
//! Preconditions: the quantize reads the norm's result as its data operand and its spec is static
//! per-tensor with a literal scale, or dynamic per-token, with no zero point. Declined, with the
//! reason in the fusion report: zero points, other granularities or scale sources, and quantizes
//! whose spec differs from the one fused first (one norm fuses with one quantization).
//!
//! Idempotent: the fused node's outputs are not produced by a norm, so nothing matches again.
//! Readers are counted among live nodes only (`dce::live_users`); a changed graph is compacted, which
//! drops the replaced norm and quantizes.
//!
//! Interacting passes: `cse` (earlier) merges identical quantizes, though this pass merges them
//! too; `fuse-dq-matmul` then reads the fused node's quantized output through the dequantize the
//! recipe placed after each quantize.

use super::dce::{live_users, output_uses, Users};
use super::{loc, Pass, PassCx, PassError};
use crate::ir::{order, BinaryOp, Builder, Granularity, Graph, NodeId, NormKind, Op, QuantSpec, ScaleSource, ValueId};

/// `fuse-layernorm-quantize`.
pub struct FuseLayerNormQuantize;

impl Pass for FuseLayerNormQuantize {
    fn name(&self) -> &'static str {
        "fuse-layernorm-quantize"
    }

    fn run(&self, g: &mut Graph, cx: &mut PassCx) -> Result<bool, PassError> {
        let mut changed = false;
        let mut users = live_users(g);
        for id in g.nodes.ids().collect::<Vec<_>>() {
            let Some(m) = match_norm_quantize(g, &users, id) else { continue };
            for (quantize, reason) in m.declines {
                cx.report.declined(&loc(g, quantize), reason);
            }
            let Some(fusion) = m.apply else { continue };
            let fused = apply_norm_quantize(g, &fusion)?;
            tracing::debug!(rule = "norm_quantize", node = %id, keep_normed = fusion.keep_normed);
            for &q in &fusion.quantizes {
                cx.report.fused(&loc(g, q), g.nodes[fused].op.mnemonic(), &loc(g, fused));
            }
            changed = true;
            users = live_users(g);
        }
        if changed {
            *g = order::compact(g);
        }
        Ok(changed)
    }
}

/// What the rule found at one norm. One norm can fuse with one quantize and decline another, so
/// this is a rewrite *and* declines rather than the `Apply | Decline` of README §3.
struct Match {
    apply: Option<Fusion>,
    declines: Vec<(NodeId, String)>,
}

/// A norm and the quantizes of its result that fuse with it.
struct Fusion {
    norm: NodeId,
    spec: QuantSpec,
    quantizes: Vec<NodeId>,
    keep_normed: bool,
}

/// `quantize(norm(x, γ[, β]), q) => norm_quantize(x, γ[, β]; via, q)`, for each live quantize of
/// the norm's result with the first supported spec `q`; `keep_normed` when anything else reads it.
fn match_norm_quantize(g: &Graph, users: &Users, id: NodeId) -> Option<Match> {
    let node = &g.nodes[id];
    let (kind, _, _) = norm_of(g, id)?;
    let what = match kind {
        NormKind::LayerNorm => "layernorm",
        NormKind::RmsNorm => "rmsnorm",
        NormKind::Scale => "scale",
    };
    let normed = node.outputs[0];
    let (mut spec, mut quantizes, mut declines) = (None, vec![], vec![]);
    let mut keep_normed = output_uses(g, normed) > 0;
    for &reader in &users[normed] {
        let Some(q) = quantize_of(g, reader, normed) else {
            keep_normed = true;
            continue;
        };
        let reason = unsupported(q, what).or_else(|| {
            let first = spec.filter(|&s| s != q)?;
            Some(format!(
                "the {}'s result is also quantized as {} by {}, which fused; one norm fuses with one quantization",
                node.op.mnemonic(),
                describe(first),
                loc(g, quantizes[0])
            ))
        });
        match reason {
            Some(reason) => {
                keep_normed = true;
                declines.push((reader, reason));
            }
            None => {
                spec = Some(q);
                quantizes.push(reader);
            }
        }
    }
    let apply = spec.map(|s| Fusion { norm: id, spec: s.clone(), quantizes, keep_normed });
    (apply.is_some() || !declines.is_empty()).then_some(Match { apply, declines })
}

/// The norm computed by node `id`, with its epsilon and its inputs in the fused node's order
/// (`x, γ[, β]`): a LayerNorm, an RMSNorm, or a `mul` of `x` by a vector `γ` along `x`'s last
/// axis ([`NormKind::Scale`]: a SmoothQuant multiply), in f32/f16/bf16.
fn norm_of(g: &Graph, id: NodeId) -> Option<(NormKind, f32, Vec<ValueId>)> {
    let node = &g.nodes[id];
    match node.op {
        Op::LayerNorm { eps } => Some((NormKind::LayerNorm, eps, node.inputs.to_vec())),
        Op::RmsNorm { eps, .. } => Some((NormKind::RmsNorm, eps, node.inputs.to_vec())),
        Op::Binary(BinaryOp::Mul) => {
            let y = g.ty(node.outputs[0]);
            let last = *y.shape.last()?;
            if !y.dtype.is_wide_float() || last.fixed().is_none() {
                return None;
            }
            let (a, b) = (node.inputs[0], node.inputs[1]);
            let vector = |v: ValueId| g.shape(v).as_slice() == [last] && g.ty(v).dtype == y.dtype;
            let full = |v: ValueId| *g.shape(v) == y.shape && g.ty(v).dtype == y.dtype;
            if full(a) && vector(b) {
                Some((NormKind::Scale, 0.0, vec![a, b]))
            } else if vector(a) && full(b) {
                Some((NormKind::Scale, 0.0, vec![b, a]))
            } else {
                None
            }
        }
        _ => None,
    }
}

/// The spec of `reader` when it is a quantize whose data operand is `v`.
fn quantize_of(g: &Graph, reader: NodeId, v: ValueId) -> Option<&QuantSpec> {
    let node = &g.nodes[reader];
    match &node.op {
        Op::Quantize(spec) if node.inputs[0] == v => Some(spec),
        _ => None,
    }
}

/// Why `spec` cannot be the quantization of a fused `<norm>_quantize`, if it cannot.
fn unsupported(spec: &QuantSpec, norm: &str) -> Option<String> {
    if spec.zero_point.is_some() {
        return Some(format!("zero points are not supported by {norm}_quantize"));
    }
    let what = match (&spec.granularity, &spec.scale) {
        (Granularity::PerTensor, ScaleSource::Literal(_)) | (Granularity::PerToken, ScaleSource::Dynamic { .. }) => return None,
        (_, ScaleSource::Input) => "a scale read from a graph value (fold-scales turns constant scales into literals)",
        (Granularity::PerTensor, ScaleSource::Dynamic { .. }) => {
            "a dynamic per-tensor scale (it needs the whole tensor's amax before any row is quantized)"
        }
        (Granularity::PerToken, ScaleSource::Literal(_)) => "a literal per-token scale",
        (Granularity::PerChannel { .. }, _) => "per-channel scales",
        (Granularity::Block { .. }, _) => "block scales",
    };
    Some(format!("{norm}_quantize takes a literal per-tensor or a dynamic per-token scale, not {what}"))
}

/// Adds the fused node (with the norm's loc) and redirects the quantizes' readers to its outputs,
/// and with `keep_normed` the norm's other readers to its `normed` output.
fn apply_norm_quantize(g: &mut Graph, f: &Fusion) -> Result<NodeId, PassError> {
    let (kind, eps, inputs) = norm_of(g, f.norm).expect("match_norm_quantize matched a norm");
    let norm = &g.nodes[f.norm];
    let normed = norm.outputs[0];
    let op = Op::NormQuantize { kind, eps, via: g.ty(normed).dtype, quant: f.spec.clone(), keep_normed: f.keep_normed, prologue: false };
    let name = norm.name.clone();
    let mut b = Builder::new(g);
    b.scope = name;
    let outs = b
        .add(op, &inputs, None)
        .map_err(|message| PassError::Failed { pass: "fuse-layernorm-quantize", message: format!("{}: {message}", f.norm) })?;
    for &q in &f.quantizes {
        for (slot, v) in g.nodes[q].outputs.clone().into_iter().enumerate() {
            g.replace_all_uses(v, outs[slot]);
        }
    }
    if f.keep_normed {
        g.replace_all_uses(normed, *outs.last().expect("keep_normed adds an output"));
    }
    Ok(g.values[outs[0]].producer)
}

/// `f8e4m3 per_tensor scale=0.05`, for messages.
fn describe(spec: &QuantSpec) -> String {
    let granularity = match &spec.granularity {
        Granularity::PerTensor => "per_tensor".to_string(),
        Granularity::PerChannel { axis } => format!("per_channel({axis})"),
        Granularity::PerToken => "per_token".to_string(),
        Granularity::Block { blocks } => format!("block{blocks:?}"),
    };
    let scale = match &spec.scale {
        ScaleSource::Literal(s) => format!("scale={s:?}"),
        ScaleSource::Input => "scale=<input>".to_string(),
        ScaleSource::Dynamic { dtype, .. } => format!("scale=dynamic({dtype})"),
    };
    format!("{} {granularity} {scale}", spec.storage)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The report lines after running the pass on a case file (twice: the second run must
    /// change nothing).
    fn report(case: &str) -> Vec<String> {
        crate::passes::report_of_case(&FuseLayerNormQuantize, "fuse-layernorm-quantize", case, "")
    }

    #[test]
    fn identical_quantizes_fuse_into_one_node() {
        assert_eq!(
            report("keep_normed_residual"),
            [
                "K:a.q: fused into layernorm_quantize E.LayerNorm",
                "Q:a.q: fused into layernorm_quantize E.LayerNorm",
                "V:a.q: fused into layernorm_quantize E.LayerNorm",
            ]
        );
    }

    #[test]
    fn declined_quantizes_say_why() {
        assert_eq!(report("two_specs"), [
            "A:a.q: fused into layernorm_quantize N",
            "B:a.q: standalone, the layernorm's result is also quantized as f8e4m3 per_tensor scale=0.0123 by A:a.q, which fused; one norm fuses with one quantization",
        ]);
        assert_eq!(report("zero_point"), ["L:a.q: standalone, zero points are not supported by layernorm_quantize"]);
        assert_eq!(
            report("block_scales"),
            ["L:a.q: standalone, rmsnorm_quantize takes a literal per-tensor or a dynamic per-token scale, not block scales"]
        );
    }
}
