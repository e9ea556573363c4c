//! `fuse-quant-round-trip`: a quantize whose codes only a dequantize reads (with the quantize's
//! own scales), between optional scalar multiplies, becomes one `quant_round_trip` node: one row
//! kernel that keeps the codes and scales in registers, instead of up to four launches and three
//! round trips of the activation through memory. The recipes produce this shape where a GEMM
//! takes the dequantized activation (on Hopper: NVFP4 activations, whose global scale is the
//! multiplies, and FP8-block activations of the weight-dequantizing GEMMs).
//!
//! ```text
//! before:
//!   %8 = rmsnorm %6, %7 {eps=1e-5} : f16[B,S,384] loc("L.input_layernorm")
//!   %9 = scalar 256.0 : f16[] loc("Q:a.prescale")
//!   %10 = mul %8, %9 : f16[B,S,384] loc("Q:a.prescale")
//!   %11, %12 = quantize %10 {f4e2m1, block(-1:16), scale=dynamic(f8e4m3)} : f4e2m1[B,S,384], f8e4m3[B,S,24] loc("Q:a.q")
//!   %13 = dequantize %11 {f4e2m1, block(-1:16), scale=%12} : f16[B,S,384] loc("Q:a.dq")
//!   %14 = scalar 0.00390625 : f16[] loc("Q:a.postscale")
//!   %15 = mul %13, %14 : f16[B,S,384] loc("Q:a.postscale")
//! after:
//!   %16 = quant_round_trip %6, %7 {norm=rmsnorm, eps=1e-5, pre=256.0, post=0.00390625, f4e2m1, block(-1:16), scale=dynamic(f8e4m3)} : f16[B,S,384] loc("Q:a.q")
//!   (readers of %15 read %16)
//! ```
//!
//! Rule `round-trip`: a live `quantize` (no scale or zero-point operand) whose codes have exactly
//! one reader, a `dequantize` of the same storage, granularity and zero point that reads the
//! quantize's scales output (dynamic) or has the same literal scale, whose result has x's dtype;
//! the codes and scales are no graph outputs and have no other reader. Then, optionally: the
//! quantize's operand is `mul(x, scalar)` read only by this quantize (absorbed as `pre`), and the
//! dequantize's result is read only by one `mul(·, scalar)` of the same dtype (absorbed as
//! `post`). A quantize whose codes no dequantize reads is no round trip and is passed over
//! silently (the report keeps the earlier passes' reason). Then, when x is a LayerNorm's or RMSNorm's result of x's dtype that nothing else reads
//! (and no GEMM computes in its prologue), the norm joins too (`norm=…`: one row kernel from
//! the norm's operands). Declined with the reason in the fusion report: a dequantize with other scales, codes
//! or scales read elsewhere (a qmatmul taking the codes keeps them: `fuse-dq-matmul` ran first).
//!
//! Exact: `quant_round_trip` is defined as that composition, with the interpreter's own `mul`
//! rounding. Idempotent: the fused node is no quantize. A changed graph is compacted, which drops
//! the absorbed nodes.
//!
//! Interactions: runs after `fuse-layernorm-quantize`, `fuse-dq-matmul` and `fuse-epilogue`,
//! which give codes to the kernels that can take them; what remains is dequantized for an f16
//! GEMM, which this pass then serves in one launch.

use super::dce::{live_users, output_uses, Users};
use super::{loc, Pass, PassCx, PassError};
use crate::ir::{order, BinaryOp, Builder, Graph, NodeId, NormKind, Op, QuantSpec, RoundTripNorm, ScaleSource, ValueId};

/// `fuse-quant-round-trip`.
pub struct FuseQuantRoundTrip;

impl Pass for FuseQuantRoundTrip {
    fn name(&self) -> &'static str {
        "fuse-quant-round-trip"
    }

    fn run(&self, g: &mut Graph, cx: &mut PassCx) -> Result<bool, PassError> {
        let mut changed = false;
        let mut users = live_users(g);
        let live = g.live_nodes();
        for id in g.nodes.ids().collect::<Vec<_>>() {
            if !live[id.index()] || !matches!(g.nodes[id].op, Op::Quantize(_)) {
                continue;
            }
            if !feeds_a_dequantize(g, &users, id) {
                continue; // not a round trip: its codes go to kernels that take them (earlier passes' report stands)
            }
            match match_round_trip(g, &users, id) {
                Err(reason) => {
                    tracing::debug!(rule = "round-trip", node = %loc(g, id), "declined: {reason}");
                    cx.report.declined(&loc(g, id), reason);
                }
                Ok(m) => {
                    let fused = apply(g, id, &m)?;
                    tracing::debug!(rule = "round-trip", node = %id, fused = %fused);
                    cx.report.fused(&loc(g, id), "quant_round_trip", &loc(g, fused));
                    cx.report.fused(&loc(g, m.dequantize), "quant_round_trip", &loc(g, fused));
                    changed = true;
                    users = live_users(g);
                }
            }
        }
        if changed {
            *g = order::compact(g);
        }
        Ok(changed)
    }
}

/// What the rule found at one quantize.
struct RoundTrip {
    /// The quantize's spec.
    quant: QuantSpec,
    /// The dequantize of its codes.
    dequantize: NodeId,
    /// A norm absorbed with its operands, else `None`.
    norm: Option<RoundTripNorm>,
    /// The operands of the fused node: x (the `pre` mul's operand, else the quantize's), or the
    /// absorbed norm's operands.
    inputs: Vec<ValueId>,
    /// The multiplier before (1: none).
    pre: f32,
    /// The multiplier after (1: none).
    post: f32,
    /// The value the fused node replaces: the `post` mul's result, or the dequantize's.
    result: ValueId,
}

/// Whether `v` is read only by `node` (once) and is no graph output.
fn only_reader(g: &Graph, users: &Users, v: ValueId, node: NodeId) -> bool {
    users[v].as_slice() == [node] && output_uses(g, v) == 0
}

/// The scalar literal `v` holds, when a `scalar` node produces it.
fn scalar_of(g: &Graph, v: ValueId) -> Option<f32> {
    match g.nodes[g.values[v].producer].op {
        Op::Scalar { value } => Some(value as f32),
        _ => None,
    }
}

/// `mul(x, c)` or `mul(c, x)` at node `n` with `c` a scalar literal: `(x, c)`.
fn scalar_mul(g: &Graph, n: NodeId) -> Option<(ValueId, f32)> {
    let node = &g.nodes[n];
    if !matches!(node.op, Op::Binary(BinaryOp::Mul)) {
        return None;
    }
    let [a, b] = node.inputs[..] else { return None };
    match (scalar_of(g, a), scalar_of(g, b)) {
        (None, Some(c)) if g.shape(b).is_empty() => Some((a, c)),
        (Some(c), None) if g.shape(a).is_empty() => Some((b, c)),
        _ => None,
    }
}

/// The norm that produces `v` when it is a LayerNorm or an RMSNorm its reader's GEMM does not
/// compute (`prologue`).
fn norm_of(g: &Graph, v: ValueId) -> Option<RoundTripNorm> {
    match g.nodes[g.values[v].producer].op {
        Op::LayerNorm { eps } => Some(RoundTripNorm { kind: NormKind::LayerNorm, eps }),
        Op::RmsNorm { eps, prologue: false } => Some(RoundTripNorm { kind: NormKind::RmsNorm, eps }),
        _ => None,
    }
}

/// Whether a `dequantize` reads the codes of quantize `q`: only then is `q` a round trip's start
/// (and a decline worth reporting).
fn feeds_a_dequantize(g: &Graph, users: &Users, q: NodeId) -> bool {
    users[g.nodes[q].outputs[0]].iter().any(|&n| matches!(g.nodes[n].op, Op::Dequantize(_)))
}

/// The rule at quantize `q`, or why it declines.
fn match_round_trip(g: &Graph, users: &Users, q: NodeId) -> Result<RoundTrip, String> {
    let Op::Quantize(quant) = &g.nodes[q].op else { return Err("not a quantize".into()) };
    if quant.extra_inputs() != 0 {
        return Err("its scale or zero point is an operand".into());
    }
    let (x, codes) = (g.nodes[q].inputs[0], g.nodes[q].outputs[0]);
    let [dq] = users[codes].as_slice() else {
        return Err(format!("its codes have {} readers, not one dequantize", users[codes].len()));
    };
    let dq = *dq;
    let Op::Dequantize(back) = &g.nodes[dq].op else {
        return Err(format!("its codes are read by `{}`, which takes them as they are", g.nodes[dq].op.mnemonic()));
    };
    if output_uses(g, codes) != 0 {
        return Err("its codes are a graph output".into());
    }
    let mirrored = QuantSpec { scale: back.scale.clone(), ..quant.clone() } == *back;
    let scales_match = match (&quant.scale, &back.scale) {
        (ScaleSource::Dynamic { .. }, ScaleSource::Input) => {
            let scales = g.nodes[q].outputs[1];
            g.nodes[dq].inputs.get(1) == Some(&scales) && only_reader(g, users, scales, dq)
        }
        (ScaleSource::Literal(a), ScaleSource::Literal(b)) => a == b,
        _ => false,
    };
    if !mirrored || !scales_match {
        return Err("its dequantize uses another spec or other scales (or the scales have other readers)".into());
    }
    let dtype = g.ty(x).dtype;
    let back_value = g.nodes[dq].outputs[0];
    if g.ty(back_value).dtype != dtype {
        return Err(format!("the dequantize produces {}, not the operand's {dtype}", g.ty(back_value).dtype));
    }
    let producer = g.values[x].producer;
    let (input, pre, reader) = match scalar_mul(g, producer) {
        Some((input, c)) if only_reader(g, users, x, q) && g.ty(input).dtype == dtype => (input, c, producer),
        _ => (x, 1.0, q),
    };
    let (norm, inputs) = match norm_of(g, input) {
        Some(n) if only_reader(g, users, input, reader) && g.ty(input).dtype == dtype => {
            (Some(n), g.nodes[g.values[input].producer].inputs.to_vec())
        }
        _ => (None, vec![input]),
    };
    let post_mul = match users[back_value].as_slice() {
        [m] if output_uses(g, back_value) == 0 => {
            scalar_mul(g, *m).filter(|_| g.ty(g.nodes[*m].outputs[0]).dtype == dtype).map(|(_, c)| (*m, c))
        }
        _ => None,
    };
    let (result, post) = match post_mul {
        Some((m, c)) => (g.nodes[m].outputs[0], c),
        None => (back_value, 1.0),
    };
    Ok(RoundTrip { quant: quant.clone(), dequantize: dq, norm, inputs, pre, post, result })
}

/// Adds the fused node (named after the quantize) and moves the readers of the replaced value to
/// it; the absorbed nodes are left dead for `dce`.
fn apply(g: &mut Graph, q: NodeId, m: &RoundTrip) -> Result<NodeId, PassError> {
    let mut b = Builder::new(g);
    b.scope = b.graph.nodes[q].name.clone();
    let op = Op::QuantRoundTrip { norm: m.norm, pre: m.pre, quant: m.quant.clone(), post: m.post };
    let outs = b
        .add(op, &m.inputs, None)
        .map_err(|message| PassError::Failed { pass: "fuse-quant-round-trip", message: format!("{q}: {message}") })?;
    g.replace_all_uses(m.result, outs[0]);
    Ok(g.values[outs[0]].producer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(case: &str) -> Vec<String> {
        crate::passes::report_of_case(&FuseQuantRoundTrip, "fuse-quant-round-trip", case, ".q")
    }

    #[test]
    fn the_report_says_where_the_quantize_went_or_why_not() {
        assert_eq!(report("nvfp4_scaled"), ["Q:a.q: fused into quant_round_trip Q:a.q"]);
        let declined = |case: &str, why: &str| {
            let lines = report(case);
            assert!(lines.len() == 1 && lines[0].contains(why), "{case}: {lines:?}");
        };
        declined("codes_are_output", "graph output");
        declined("scales_read_elsewhere", "other scales");
    }
}
