//! `fuse-embedding`: BERT's embedding — word, position and token-type gathers, their two sums and
//! the LayerNorm (with its quantize, once `fuse-layernorm-quantize` has run) — becomes one
//! `embed_layernorm` node, so the summed embeddings never reach memory.
//!
//! ```text
//! before:
//!   %4 = gather %3, %0 : f16[B,S,384] loc("embeddings")
//!   %6 = iota : i64[S] loc("embeddings")
//!   %7 = gather %5, %6 : f16[S,384] loc("embeddings")
//!   %8 = add %4, %7 : f16[B,S,384] loc("embeddings")
//!   %10 = gather %9, %2 : f16[B,S,384] loc("embeddings")
//!   %11 = add %8, %10 : f16[B,S,384] loc("embeddings")
//!   %14, %15 = layernorm_quantize %11, %12, %13 {eps=1e-12, via=f16, keep_normed=true, f8e4m3, per_tensor, scale=0.016} : f8e4m3[B,S,384], f16[B,S,384] loc("embeddings.LayerNorm")
//! after:
//!   %14, %15 = embed_layernorm %0, %2, %3, %5, %9, %12, %13 {eps=1e-12, via=f16, keep_normed=true, f8e4m3, per_tensor, scale=0.016} : f8e4m3[B,S,384], f16[B,S,384] loc("embeddings.LayerNorm")
//! ```
//!
//! Rule `embedding`: `norm(add(add(gather(word, ids), gather(pos, iota(S))), gather(type,
//! type_ids)))` ⇒ `embed_layernorm(ids, type_ids, word, pos, type, γ, β)`, for `norm` a `layernorm`
//! (quant none) or a `layernorm_quantize` (its spec, scale operands and `keep_normed` carried over);
//! either add may have its operands swapped (IEEE addition commutes). `via` is the norm's input
//! dtype, which every table, γ and β must share (a `layernorm_quantize` whose `via` differs from its
//! input's dtype is not matched).
//!
//! Exact: `embed_layernorm` is defined (and interpreted) as exactly this chain — the same gathers,
//! the iota, the two rounded adds in this association, then the norm's own kernel.
//!
//! Preconditions, each a decline (traced; no Q/DQ is involved, so there is no report entry): the
//! positions come from an `iota` over the ids' sequence length `S` (not a `position_ids` input); ids
//! and type ids are `i64[B,S]` of one shape; the position gather is `[S,H]`; tables, γ and β have
//! the norm's dtype; every intermediate (the three gathers and two sums) has exactly one live reader
//! and is not a graph output. Another association (`(word + type) + pos`) is not matched.
//!
//! Idempotent: the fused node is not a norm. The report's entries fused into the
//! `layernorm_quantize` now name `embed_layernorm` (same node name, the norm's loc). A changed graph
//! is compacted.
//!
//! Interacting passes: after `fuse-layernorm-quantize`, whose `layernorm_quantize` it extends.

use super::dce::{live_users, output_uses, Users};
use super::{loc, Pass, PassCx, PassError};
use crate::ir::{order, BinaryOp, Builder, DType, EmbedLayerNorm, Graph, NodeId, NormKind, Op, ValueId};

/// `fuse-embedding`.
pub struct FuseEmbedding;

impl Pass for FuseEmbedding {
    fn name(&self) -> &'static str {
        "fuse-embedding"
    }

    fn run(&self, g: &mut Graph, cx: &mut PassCx) -> Result<bool, PassError> {
        let mut changed = false;
        let mut users = live_users(g);
        for id in g.nodes.ids().collect::<Vec<_>>() {
            match match_embedding(g, &users, id) {
                None => {}
                Some(Err(reason)) => tracing::debug!(rule = "embedding", node = %id, declined = %reason),
                Some(Ok(f)) => {
                    let old = g.nodes[id].op.mnemonic();
                    let fused = apply_embedding(g, id, f)?;
                    tracing::debug!(rule = "embedding", node = %id);
                    cx.report.refused(old, &loc(g, id), "embed_layernorm", &loc(g, fused));
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

/// The fused op and its operands.
struct Fusion {
    op: EmbedLayerNorm,
    inputs: Vec<ValueId>,
}

/// `norm(add(add(gather(word, ids), gather(pos, iota)), gather(type, type_ids))) =>
/// embed_layernorm(ids, type_ids, word, pos, type, γ, β)`; `Some(Err(reason))` declines.
fn match_embedding(g: &Graph, users: &Users, id: NodeId) -> Option<Result<Fusion, String>> {
    let node = &g.nodes[id];
    let (eps, quant, keep_normed) = match &node.op {
        Op::LayerNorm { eps } => (*eps, None, false),
        Op::NormQuantize { kind: NormKind::LayerNorm, eps, via, quant, keep_normed, .. } if *via == g.ty(node.inputs[0]).dtype => {
            (*eps, Some(quant.clone()), *keep_normed)
        }
        _ => return None,
    };
    let x = node.inputs[0];
    let (sum, t) = operands(g, x, |g, a, b| is_add(g, a) && is_gather(g, b))?;
    let (w, p) = operands(g, sum, |g, a, b| is_gather(g, a) && is_gather(g, b))?;
    let (w, p) = if from_iota(g, w) && !from_iota(g, p) { (p, w) } else { (w, p) };
    Some(check(g, users, [x, sum, t, w, p], &node.inputs[1..3]).map(|inputs| {
        let via = g.ty(x).dtype;
        let inputs = inputs.into_iter().chain(node.inputs[1..].iter().copied()).collect();
        Fusion { op: EmbedLayerNorm { eps, via, quant, keep_normed }, inputs }
    }))
}

/// The side conditions; on success the fused node's first five operands.
fn check(g: &Graph, users: &Users, [x, sum, t, w, p]: [ValueId; 5], params: &[ValueId]) -> Result<[ValueId; 5], String> {
    if !from_iota(g, p) {
        return Err("the position embeddings are not gathered by an iota (positions from a graph value)".into());
    }
    let (word, ids) = (g.producer(w).inputs[0], g.producer(w).inputs[1]);
    let (pos, positions) = (g.producer(p).inputs[0], g.producer(p).inputs[1]);
    let (types, type_ids) = (g.producer(t).inputs[0], g.producer(t).inputs[1]);
    let ids_ty = g.ty(ids);
    if ids_ty.dtype != DType::I64 || ids_ty.rank() != 2 || g.ty(type_ids) != ids_ty {
        return Err("the token ids and token type ids must both be i64[B,S]".into());
    }
    if g.shape(positions).as_slice() != [ids_ty.shape[1]] || g.ty(p).rank() != 2 {
        return Err("the position iota does not run over the ids' sequence axis".into());
    }
    let via = g.ty(x).dtype;
    for v in [word, pos, types] {
        if g.ty(v).dtype != via || g.ty(v).rank() != 2 {
            return Err(format!("every embedding table must be a 2-D {via} tensor"));
        }
    }
    if params.iter().any(|&v| g.ty(v).dtype != via) {
        return Err(format!("the LayerNorm's gamma and beta must be {via}, like the embeddings"));
    }
    for v in [x, sum, t, w, p] {
        if users[v].len() != 1 || output_uses(g, v) > 0 {
            return Err("an intermediate of the embedding (a gather or a sum) has other readers".into());
        }
    }
    Ok([ids, type_ids, word, pos, types])
}

/// The operands of the `add` producing `v`, ordered so that `ok(first, second)` holds.
fn operands(g: &Graph, v: ValueId, ok: impl Fn(&Graph, ValueId, ValueId) -> bool) -> Option<(ValueId, ValueId)> {
    let node = g.producer(v);
    let (Op::Binary(BinaryOp::Add), &[a, b]) = (&node.op, node.inputs.as_slice()) else { return None };
    if ok(g, a, b) {
        Some((a, b))
    } else if ok(g, b, a) {
        Some((b, a))
    } else {
        None
    }
}

fn is_add(g: &Graph, v: ValueId) -> bool {
    matches!(g.producer(v).op, Op::Binary(BinaryOp::Add))
}

fn is_gather(g: &Graph, v: ValueId) -> bool {
    matches!(g.producer(v).op, Op::Gather)
}

/// `v` is a gather whose indices are an `iota`.
fn from_iota(g: &Graph, v: ValueId) -> bool {
    let node = g.producer(v);
    matches!(node.op, Op::Gather) && matches!(g.producer(node.inputs[1]).op, Op::Iota)
}

/// Adds the fused node (with the norm's loc) and redirects the norm's readers to its outputs.
fn apply_embedding(g: &mut Graph, norm: NodeId, f: Fusion) -> Result<NodeId, PassError> {
    let (old, name) = (g.nodes[norm].outputs.to_vec(), g.nodes[norm].name.clone());
    let mut b = Builder::new(g);
    b.scope = name;
    let fail = |message: String| PassError::Failed { pass: "fuse-embedding", message: format!("{norm}: {message}") };
    let outs = b.add(Op::EmbedLayerNorm(f.op), &f.inputs, None).map_err(fail)?;
    let types_match = outs.len() == old.len() && outs.iter().zip(&old).all(|(&n, &o)| g.ty(n) == g.ty(o));
    if !types_match {
        return Err(fail("the fused node's results differ from the norm's".into()));
    }
    for (&o, &n) in old.iter().zip(&outs) {
        g.replace_all_uses(o, n);
    }
    Ok(g.values[outs[0]].producer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::MemoryWeights;

    /// Runs the pass on a case file with a report that already holds `entries`.
    fn report_after(case: &str, entries: &[(&str, &str, &str)]) -> Vec<String> {
        let mut g = crate::passes::case_graph("fuse-embedding", case);
        let w = MemoryWeights::default();
        let mut cx = PassCx::new(&w);
        for (qdq, into, node) in entries {
            cx.report.fused(qdq, into, node);
        }
        FuseEmbedding.run(&mut g, &mut cx).expect("pass runs");
        assert!(!FuseEmbedding.run(&mut g, &mut cx).expect("pass runs"), "a second run finds nothing");
        cx.report.finish(&g).into_iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn quantizes_fused_into_the_norm_now_name_the_embedding() {
        let before = [
            ("Q:a.q", "layernorm_quantize", "embeddings.LayerNorm"),
            ("X:a.q", "layernorm_quantize", "encoder.layer.0.attention.output.LayerNorm"),
        ];
        assert_eq!(
            report_after("layernorm_quantize_keep_normed", &before),
            [
                "Q:a.q: fused into embed_layernorm embeddings.LayerNorm",
                "X:a.q: fused into layernorm_quantize encoder.layer.0.attention.output.LayerNorm",
            ]
        );
    }
}
