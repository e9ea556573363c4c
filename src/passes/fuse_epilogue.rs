//! `fuse-epilogue`: the element-wise chain that follows a `qmatmul` becomes its epilogue, and a
//! final per-tensor quantize its output, so the GEMM writes its result once, already biased,
//! activated and (for the first MLP GEMM) in FP8 for the next one.
//!
//! ```text
//! before:
//!   %y = qmatmul %q, %wq {transpose_b, alpha=2.46e-5, acc=f32} : f32[B,S,1536] loc("L")
//!   %y16 = cast %y : f16[B,S,1536] loc("L")
//!   %z = add %y16, %bias : f16[B,S,1536] loc("L")
//!   %act = gelu %z : f16[B,S,1536] loc("L2")
//!   %q2 = quantize %act {f8e4m3, per_tensor, scale=0.05} : f8e4m3[B,S,1536] loc("M:a.q")
//! after:
//!   %q2 = qmatmul %q, %wq {transpose_b, alpha=2.46e-5, acc=f32, epilogue=[cast(f16),add(%bias,f16),gelu(f16)], out=f8e4m3, out_scale=0.05} : f8e4m3[B,S,1536] loc("L")
//!
//! before (an AWQ W4A16 gated MLP: the gate, its silu, the product with the up result, then the
//! down projection's per-input-channel smoothing 1/s, %s = weight f16[1536]):
//!   %g = qmatmul %x, %wg {transpose_b, alpha=1.0, b_dequant(u4,block(1:128),scale=%gs,zero=%gz), acc=f16} : f16[B,S,1536] loc("L.gate_proj")
//!   %a = silu %g : f16[B,S,1536] loc("L.act_fn")
//!   %m = mul %a, %up : f16[B,S,1536] loc("L.act_fn")
//!   %d = mul %m, %s : f16[B,S,1536] loc("L.down_proj.smooth")
//! after:
//!   %d = qmatmul %x, %wg {transpose_b, alpha=1.0, b_dequant(u4,block(1:128),scale=%gs,zero=%gz), acc=f16, epilogue=[silu(f16),mul(%up,f16),mul(%s,f16)]} : f16[B,S,1536] loc("L.gate_proj")
//! ```
//!
//! Rules, applied along the chain from a qmatmul whose output is not yet quantized, one node at a
//! time until none applies (rule `epilogue`), each step rounding where the unfused node rounded
//! (exact):
//! - `cast` to f32/f16/bf16 ⇒ a `cast` step;
//! - `add(y, o)` or `add(o, y)` whose result keeps the qmatmul's shape (a bias `[N]`, a residual
//!   shaped like the output) ⇒ an `add` step reading `o` as a new qmatmul input;
//! - `mul(y, o)` or `mul(o, y)` with `o` shaped like the result ⇒ a `mul` step (a gated MLP's
//!   `silu(gate) · up`: the gate GEMM multiplies by the up GEMM's result; IEEE products commute, so
//!   either order is exact); likewise with `o` a `weight` vector `[N]` along the result's columns,
//!   read per column like a bias (AWQ's smoothing `1/s` of the down projection's input, which
//!   `fold-smoothing` cannot fold: no norm precedes it). Any other broadcast factor (attention's
//!   scalar `1/√d` after `q·kᵀ`, a per-row factor, a computed vector) ends the chain, so
//!   `fuse-attention` still finds its pattern;
//! - `gelu`, `gelu_tanh`, `silu`, `relu` ⇒ a unary step;
//! - finally `quantize` with a per-tensor literal scale and no zero point ⇒ the qmatmul's `out`.
//!
//! Preconditions: each absorbed node is the only live reader of the qmatmul's current result,
//! which is not a graph output either; otherwise the chain stops there, and a quantize among the
//! readers is declined ("the GEMM's result is also read by …"), since the pre-quantize value must
//! stay. That rule also keeps the graph acyclic: an `add`'s other operand cannot depend on the
//! qmatmul, because every value on the chain has a single reader. A quantize with another spec
//! (dynamic or per-token scales, zero points, a scale read from a graph value) is declined with
//! its reason. Other ops (`sub`, `div`, a `mul` by another broadcast, casts to narrow types,
//! `softmax`, ...) end the chain.
//!
//! Idempotent: the chain ends at a node no rule takes (or at a quantized output), so running again
//! finds nothing new. Readers are counted among live nodes only (`dce::live_users`); a changed graph
//! is compacted, which drops the old qmatmul and the absorbed nodes.
//!
//! Interacting passes: runs after `fuse-dq-matmul`, which creates the qmatmuls; the trailing `cse`
//! and `dce` clean up. `fuse-layernorm-quantize` runs first and takes a smoothing `mul` whose
//! result is quantized (`scale_quantize`, the W4A8/INT8 recipes), so only a float one (W4A16)
//! reaches this rule; `merge-gate-up` keeps a gate's `mul(%s)` step as a gate operand of the
//! `qmatmul_glu`.

use super::dce::{live_users, output_uses, Users};
use super::{loc, Pass, PassCx, PassError};
use crate::ir::{
    order, BinaryOp, Builder, Dim, EpilogueOp, EpilogueStep, Granularity, Graph, NodeId, Op, QuantSpec, ScaleSource, UnaryOp, ValueId,
};

/// `fuse-epilogue`.
pub struct FuseEpilogue;

impl Pass for FuseEpilogue {
    fn name(&self) -> &'static str {
        "fuse-epilogue"
    }

    fn run(&self, g: &mut Graph, cx: &mut PassCx) -> Result<bool, PassError> {
        let mut changed = false;
        let mut users = live_users(g);
        for id in g.nodes.ids().collect::<Vec<_>>() {
            let Some(m) = match_epilogue(g, &users, id) else { continue };
            for (quantize, reason) in m.declines {
                cx.report.declined(&loc(g, quantize), reason);
            }
            let Some(chain) = m.apply else { continue };
            let fused = apply_epilogue(g, id, &chain)?;
            tracing::debug!(rule = "epilogue", node = %id, steps = chain.steps.len(), output = chain.output.is_some());
            if let Some((quantize, _)) = chain.output {
                cx.report.fused(&loc(g, quantize), "qmatmul", &loc(g, fused));
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

/// What the rule found after one qmatmul. The chain can grow and still end at a quantize that
/// cannot join, so this is a rewrite *and* declines rather than the `Apply | Decline` of
/// README §3.
struct Match {
    apply: Option<Chain>,
    declines: Vec<(NodeId, String)>,
}

/// What a qmatmul absorbs: epilogue steps with their operands, then perhaps an output quantize.
struct Chain {
    steps: Vec<EpilogueStep>,
    operands: Vec<ValueId>,
    output: Option<(NodeId, QuantSpec)>,
    /// The last absorbed value, whose readers will read the new qmatmul.
    last: ValueId,
}

/// What the node reading the current result contributes.
enum Next {
    Step(EpilogueStep, Option<ValueId>),
    Output(QuantSpec),
    Decline(String),
    Stop,
}

/// `f(qmatmul(…; e)) => qmatmul(…; e ++ [f])` for a single-reader `cast`, `add`, `mul` or activation `f`,
/// repeated, then `quantize(qmatmul(…), q) => qmatmul(…; out=q)` for a per-tensor literal `q`.
fn match_epilogue(g: &Graph, users: &Users, id: NodeId) -> Option<Match> {
    let node = &g.nodes[id];
    let Op::QMatMul(q) = &node.op else { return None };
    if q.output.is_some() {
        return None;
    }
    let mut chain = Chain { steps: vec![], operands: vec![], output: None, last: node.outputs[0] };
    let decline = loop {
        let next = match sole_reader(g, users, chain.last) {
            Ok(next) => next,
            Err(decline) => break decline,
        };
        match classify(g, next, chain.last) {
            Next::Step(step, operand) => {
                chain.steps.push(step);
                chain.operands.extend(operand);
                chain.last = g.nodes[next].outputs[0];
            }
            Next::Output(spec) => {
                chain.output = Some((next, spec));
                chain.last = g.nodes[next].outputs[0];
                break None;
            }
            Next::Decline(reason) => break Some((next, reason)),
            Next::Stop => break None,
        }
    };
    let apply = (!chain.steps.is_empty() || chain.output.is_some()).then_some(chain);
    (apply.is_some() || decline.is_some()).then(|| Match { apply, declines: decline.into_iter().collect() })
}

/// The only live reader of `v`; otherwise, a quantize among its readers and why it stays.
fn sole_reader(g: &Graph, users: &Users, v: ValueId) -> Result<NodeId, Option<(NodeId, String)>> {
    let readers = &users[v];
    if let ([only], 0) = (readers.as_slice(), output_uses(g, v)) {
        return Ok(*only);
    }
    let Some(&quantize) = readers.iter().find(|&&r| matches!(g.nodes[r].op, Op::Quantize(_))) else { return Err(None) };
    let mut others: Vec<String> =
        readers.iter().filter(|&&r| r != quantize).map(|&r| format!("{} {:?}", g.nodes[r].op.mnemonic(), loc(g, r))).collect();
    others.extend(g.outputs.iter().filter(|&&(_, o)| o == v).map(|(n, _)| format!("the graph output {n:?}")));
    if others.is_empty() {
        others.push(format!("{:?} twice", loc(g, quantize)));
    }
    Err(Some((quantize, format!("the GEMM's result is also read by {}", others.join(", ")))))
}

/// What the node `next`, the only reader of the current result `cur`, becomes.
fn classify(g: &Graph, next: NodeId, cur: ValueId) -> Next {
    let node = &g.nodes[next];
    let out = g.ty(node.outputs[0]);
    let step = |op| EpilogueStep { op, dtype: out.dtype };
    match &node.op {
        Op::Cast if out.dtype.is_wide_float() => Next::Step(step(EpilogueOp::Cast), None),
        Op::Binary(BinaryOp::Add) if out.shape == *g.shape(cur) => Next::Step(step(EpilogueOp::Add), Some(other_operand(node, cur))),
        Op::Binary(BinaryOp::Mul) if out.shape == *g.shape(cur) && mul_factor_fits(g, other_operand(node, cur), &out.shape) => {
            Next::Step(step(EpilogueOp::Mul), Some(other_operand(node, cur)))
        }
        Op::Unary(u @ (UnaryOp::Gelu | UnaryOp::GeluTanh | UnaryOp::Silu | UnaryOp::Relu)) => Next::Step(step(EpilogueOp::Unary(*u)), None),
        Op::Quantize(spec) if node.inputs[0] == cur => match unsupported_output(spec) {
            None => Next::Output(spec.clone()),
            Some(reason) => Next::Decline(reason),
        },
        _ => Next::Stop,
    }
}

/// Whether the factor `o` of a `mul` whose result is shaped `out` becomes a `mul` step: `o` is
/// shaped like the result (a gated MLP's `up`), or is a `weight` vector `[N]` along the result's
/// columns (AWQ's smoothing `1/s` before down_proj; the epilogue reads it per column, as a bias).
/// Any other broadcast (a scalar, a per-row factor, a computed vector) ends the chain.
fn mul_factor_fits(g: &Graph, o: ValueId, out: &[Dim]) -> bool {
    let shape = g.shape(o).as_slice();
    let per_column = || matches!(g.producer(o).op, Op::Weight { .. }) && out.last().is_some_and(|&n| shape == [n]);
    shape == out || per_column()
}

/// The operand of the binary `node` that is not `cur`.
fn other_operand(node: &crate::ir::Node, cur: ValueId) -> ValueId {
    if node.inputs[0] == cur {
        node.inputs[1]
    } else {
        node.inputs[0]
    }
}

/// Why `spec` cannot be a qmatmul's output quantization, if it cannot.
fn unsupported_output(spec: &QuantSpec) -> Option<String> {
    if spec.zero_point.is_some() {
        return Some("zero points are not supported by qmatmul".into());
    }
    let what = match (&spec.granularity, &spec.scale) {
        (Granularity::PerTensor, ScaleSource::Literal(_)) => return None,
        (_, ScaleSource::Dynamic { .. }) => "a dynamic scale (each scale needs the amax of a whole row or tensor)",
        (_, ScaleSource::Input) => "a scale read from a graph value (fold-scales turns constant scales into literals)",
        (Granularity::PerToken, _) => "a per-token scale",
        (Granularity::PerChannel { .. }, _) => "per-channel scales",
        (Granularity::Block { .. }, _) => "block scales",
    };
    Some(format!("a qmatmul output quantize takes one literal per-tensor scale, not {what}"))
}

/// Adds the qmatmul with the chain absorbed (keeping the qmatmul's loc) and redirects the chain's
/// readers to it.
fn apply_epilogue(g: &mut Graph, id: NodeId, chain: &Chain) -> Result<NodeId, PassError> {
    let node = &g.nodes[id];
    let Op::QMatMul(q) = &node.op else { unreachable!("match_epilogue matched a qmatmul") };
    let mut q = q.clone();
    q.epilogue.extend(chain.steps.iter().cloned());
    q.output = chain.output.as_ref().map(|(_, spec)| spec.clone());
    let inputs: Vec<ValueId> = node.inputs.iter().copied().chain(chain.operands.iter().copied()).collect();
    let name = node.name.clone();
    let mut b = Builder::new(g);
    b.scope = name;
    let fail = |message: String| PassError::Failed { pass: "fuse-epilogue", message: format!("{id}: {message}") };
    let out = b.add1(Op::QMatMul(q), &inputs, None).map_err(fail)?;
    if g.ty(out) != g.ty(chain.last) {
        return Err(fail("the fused qmatmul's type differs from the chain's result".into()));
    }
    g.replace_all_uses(chain.last, out);
    Ok(g.values[out].producer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The report lines ending in `.q` after running the pass on a case file (twice: the
    /// second run must change nothing).
    fn report(case: &str) -> Vec<String> {
        crate::passes::report_of_case(&FuseEpilogue, "fuse-epilogue", case, ".q")
    }

    #[test]
    fn output_quantize_fuses() {
        assert_eq!(report("bias_gelu_quantize"), ["M:a.q: fused into qmatmul L"]);
    }

    #[test]
    fn quantize_of_a_shared_result_is_declined() {
        assert_eq!(report("multi_user_result"), ["M:a.q: standalone, the GEMM's result is also read by add \"residual\""]);
        assert_eq!(report("quantize_shared_mid_chain"), ["M:a.q: standalone, the GEMM's result is also read by the graph output \"act\""]);
        assert_eq!(report("silu_dynamic_quantize"), [
            "D:a.q: standalone, a qmatmul output quantize takes one literal per-tensor scale, not a dynamic scale (each scale needs the amax of a whole row or tensor)",
        ]);
    }
}
