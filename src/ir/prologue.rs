//! Norm prologues: the invariants of a norm marked `prologue` (an RMSNorm, or an RMSNorm with a
//! static quantize, that its one reader's skinny GEMM computes itself at few rows), in one place
//! for the pass that marks it (`fuse-norm-prologue`), the verifier and the code generator.
//!
//! A norm may carry `prologue` when:
//! - it is `rmsnorm` with an f16/bf16 result over an f16/bf16 `x` and an f16/bf16/f32 `gamma`, or
//!   `rmsnorm_quantize` of such an `x` and `gamma` with `via` f16/bf16, a per-tensor literal scale,
//!   no zero point, `f8e4m3` or `i8` codes and no `keep_normed` output;
//! - its row length (the last extent) is fixed;
//! - its (first) result is not a graph output and has exactly one use among the live nodes: the
//!   `a` operand (operand 0) of a `qmatmul`, `qmatmul_split` or `qmatmul_glu`.
//!
//! The flag changes no value: the interpreter ignores it, and a plan where the reader runs the
//! tiled GEMM (more rows than the skinny kernel takes) launches the norm as usual.

use super::{DType, Dim, Granularity, Graph, NodeId, NormKind, Op, ScaleSource};

/// Whether `node` is a norm of a kind a skinny GEMM can compute as its prologue (the op-level
/// conditions above; the graph-level ones are [`prologue_reader`]'s).
pub fn prologue_kind_ok(g: &Graph, node: NodeId) -> Result<(), String> {
    let n = &g.nodes[node];
    let wide = |d: DType| matches!(d, DType::F16 | DType::BF16);
    let (x, gamma) = match n.inputs.as_slice() {
        [x, gamma, ..] => (g.ty(*x), g.ty(*gamma)),
        _ => return Err("a norm needs x and gamma".into()),
    };
    if !wide(x.dtype) || !(wide(gamma.dtype) || gamma.dtype == DType::F32) {
        return Err(format!("x is {} and gamma {}: the prologue reads f16/bf16 x and f16/bf16/f32 gamma", x.dtype, gamma.dtype));
    }
    if !matches!(x.shape.last(), Some(Dim::Fixed(_))) {
        return Err("the row length is not fixed".into());
    }
    match &n.op {
        Op::RmsNorm { .. } => {
            let y = g.ty(n.outputs[0]).dtype;
            wide(y).then_some(()).ok_or_else(|| format!("the result is {y}, not f16/bf16"))
        }
        Op::NormQuantize { kind: NormKind::RmsNorm, via, quant, keep_normed, .. } => {
            let static_tensor = quant.granularity == Granularity::PerTensor && matches!(quant.scale, ScaleSource::Literal(_));
            if *keep_normed || !wide(*via) || quant.zero_point.is_some() || !static_tensor {
                return Err(
                    "the quantize must be static per-tensor (literal scale, no zero point), via f16/bf16, without keep_normed".into()
                );
            }
            matches!(quant.storage, DType::F8E4M3 | DType::I8)
                .then_some(())
                .ok_or_else(|| format!("{} codes: the prologue quantizes to f8e4m3 or i8", quant.storage))
        }
        other => Err(format!("`{}` is not an rmsnorm or rmsnorm_quantize", other.mnemonic())),
    }
}

/// The one live reader of `node`'s first result that computes it as a prologue, or why there is
/// none. `live` is [`Graph::live_nodes`].
pub fn prologue_reader(g: &Graph, live: &[bool], node: NodeId) -> Result<NodeId, String> {
    let out = g.nodes[node].outputs[0];
    if g.outputs.iter().any(|&(_, v)| v == out) {
        return Err("its result is a graph output".into());
    }
    let mut uses = g
        .nodes
        .iter()
        .filter(|(id, _)| live[id.index()])
        .flat_map(|(id, n)| n.inputs.iter().enumerate().filter(move |&(_, &v)| v == out).map(move |(i, _)| (id, i)));
    let (reader, operand) = uses.next().ok_or("its result has no live reader")?;
    if uses.next().is_some() {
        return Err("its result has more than one use".into());
    }
    let gemm = matches!(g.nodes[reader].op, Op::QMatMul(_) | Op::SplitMatMul(_) | Op::GluMatMul(_));
    if !gemm || operand != 0 {
        return Err(format!("its reader is operand {operand} of `{}`, not a GEMM's a", g.nodes[reader].op.mnemonic()));
    }
    Ok(reader)
}

/// Whether `node` carries the `prologue` flag.
pub fn is_prologue(op: &Op) -> bool {
    matches!(op, Op::RmsNorm { prologue: true, .. } | Op::NormQuantize { prologue: true, .. })
}

/// The reader of a live norm marked `prologue` (`None` for any other node), checking every
/// invariant of this module.
pub fn checked_reader(g: &Graph, live: &[bool], node: NodeId) -> Option<Result<NodeId, String>> {
    is_prologue(&g.nodes[node].op).then(|| prologue_kind_ok(g, node).and_then(|()| prologue_reader(g, live, node)))
}
