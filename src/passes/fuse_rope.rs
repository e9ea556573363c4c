//! `fuse-rope`: a decoder attention rotates its own query rows as it loads them, and (float
//! caches) its step's keys as `kv_append` writes them into the cache, so the two `rope` launches
//! of every layer disappear.
//!
//! ```text
//! before:
//!   %12 = rope %10, %1 {heads=4, theta=10000, pairs=half} : f16[B,S,64] loc("L.rotary_q")
//!   %13 = rope %11, %1 {heads=2, theta=10000, pairs=half} : f16[B,S,32] loc("L.rotary_k")
//!   %14 = reshape %13 : f16[B,S,2,16] loc("L.k_cache")
//!   %15 = causal_attention %12, %14, %9, %2, %3, %1 {heads=4, kv_heads=2, scale=0.25} : f16[B,S,64] loc("L")
//!   return …, "present.k.0" = %14
//! after:
//!   %12 = reshape %11 : f16[B,S,2,16] loc("L.k_cache")
//!   %13, %14 = causal_attention %10, %12, %9, %2, %3, %1 {heads=4, kv_heads=2, scale=0.25, rope(theta=10000, pairs=half, keys)} : f16[B,S,64], f16[B,S,2,16] loc("L")
//!   return …, "present.k.0" = %14
//! ```
//!
//! Over an FP8/INT8 cache (after `fuse-kv-cache`) the keys' chain also holds the cache's
//! quantize, before or after the reshape (`rope → quantize → reshape` as `propagate-qdq` leaves
//! it); the second result is then the codes (`quantize` folded in as well: one launch fewer again).
//!
//! Rule `rope` (on a `causal_attention` without `rope(...)`):
//! `causal_attention(rope(q, len), k, …, len) => causal_attention(q, k, …, len){rope(...)}` when
//! the rope has the attention's heads and cache_len, and the attention is its only reader (no
//! graph output either). Then, optionally, the keys:
//! `causal_attention(q, K(rope(k, len)), …){rope} => causal_attention(q, reshape(k), …){rope(keys)}`
//! with the second result standing for the old keys operand (the cache update `present.k.L`),
//! where `K` is a reshape to `[B,S,KV,D]` and, when the attention reads codes, a quantize with the
//! codes' storage and literal per-tensor `k_scale` (no zero point), in either order; when the key
//! rope has the same rotation, `kv_heads` heads and cache_len (and gives the codes' `via`), each
//! node of `K` is the only reader of its operand, and the keys operand is read by the attention
//! and graph outputs only. Otherwise only the queries fuse and the reason for the keys is traced.
//! An NVFP4 cache (`codes(..., block=16)`, after `kv-nvfp4-codes`) never fuses its keys: their
//! codes and E4M3 block scales come from a dynamic block quantize that kv_append does not
//! reproduce (it copies both), so the key rope and that quantize stay; the reason is recorded on
//! the quantize's fusion-report entry. Its queries fuse as any other (the four block-scale
//! operands pass through unchanged).
//!
//! Exact: `rope(...)` is defined (and interpreted) as those very ops — the same f64 angles, f32
//! rotation and rounding to the operand's dtype, then (codes) `cast(x / k_scale)` — applied before
//! the unchanged attention; the second result is the value the old keys operand held. On the GPU
//! paged_attention rotates each query row while loading it (rounding to q's dtype before the
//! products) and kv_append (at decode the attention's own append, the same code) rotates (and
//! quantizes) each key before writing the pool and the second result.
//!
//! Idempotent: an attention with `rope(...)` is skipped. Interacting passes: after
//! `fuse-kv-cache` (whose `codes(...)` tells a quantized cache) and `drop-identity-casts` (which
//! removes the identity casts around an f16 cache); before `cse` and `dce`. A changed graph is
//! compacted (the old ropes, reshape and attention are dropped).

use super::dce::{live_users, output_uses, Users};
use super::{loc, Pass, PassCx, PassError};
use crate::ir::{order, AttnRope, Builder, CausalAttention, Granularity, Graph, NodeId, Op, QuantSpec, Rope, ScaleSource, ValueId};

/// `fuse-rope`.
pub struct FuseRope;

impl Pass for FuseRope {
    fn name(&self) -> &'static str {
        "fuse-rope"
    }

    fn run(&self, g: &mut Graph, cx: &mut PassCx) -> Result<bool, PassError> {
        let mut changed = false;
        let mut users = live_users(g);
        for id in g.nodes.ids().collect::<Vec<_>>() {
            let Op::CausalAttention(a) = g.nodes[id].op else { continue };
            if a.rope.is_some() || !is_live(g, &users, id) {
                continue;
            }
            match match_rope(g, &users, id, &a) {
                None => continue,
                Some(Err(reason)) => tracing::debug!(rule = "rope", node = %id, declined = %reason),
                Some(Ok(m)) => {
                    if let Err(reason) = &m.keys {
                        tracing::debug!(rule = "rope", node = %id, keys_declined = %reason);
                        // An NVFP4 cache's keys quantize stays a kernel of its own: say why.
                        let quantize = g.values[g.nodes[id].inputs[1]].producer;
                        if a.block_scaled() && matches!(g.nodes[quantize].op, Op::Quantize(_)) {
                            cx.report.declined(&loc(g, quantize), format!("fuse-rope: {reason}"));
                        }
                    }
                    apply_rope(g, id, &a, &m)?;
                    tracing::debug!(rule = "rope", node = %id, keys = m.keys.is_ok());
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

/// True if a result of `id` has a live reader or is a graph output.
fn is_live(g: &Graph, users: &Users, id: NodeId) -> bool {
    g.nodes[id].outputs.iter().any(|&v| !users[v].is_empty() || output_uses(g, v) > 0)
}

/// What the rule found around one attention.
struct Found {
    /// The query rope's operand (unrotated q).
    q: ValueId,
    /// The query rope.
    rope: Rope,
    /// The unrotated keys (the key rope's operand), or why the keys stay as they are.
    keys: Result<ValueId, String>,
}

/// `causal_attention(rope(q, len), …, len) => causal_attention(q, …, len){rope}`, then the keys
/// (module header); `None` when q is not a rope's result.
fn match_rope(g: &Graph, users: &Users, id: NodeId, a: &CausalAttention) -> Option<Result<Found, String>> {
    let ins = &g.nodes[id].inputs;
    let rope_node = g.producer(ins[0]);
    let Op::Rope(rope) = rope_node.op else { return None };
    Some(query_conditions(g, users, id, a, &rope, rope_node.inputs[1]).map(|()| Found {
        q: rope_node.inputs[0],
        rope,
        keys: match_keys(g, users, id, a, &rope),
    }))
}

/// The query rope's side conditions: the attention's heads and cache_len, read by it alone.
fn query_conditions(g: &Graph, users: &Users, id: NodeId, a: &CausalAttention, rope: &Rope, len: ValueId) -> Result<(), String> {
    let ins = &g.nodes[id].inputs;
    if rope.heads != a.heads {
        return Err(format!("the query rope has {} heads, the attention {}", rope.heads, a.heads));
    }
    if len != ins[5] {
        return Err("the query rope reads another cache_len than the attention".into());
    }
    sole_reader(g, users, ins[0], id).map_err(|others| format!("the rotated queries are also read by {others}"))
}

/// `causal_attention(q, K(rope(k, len)), …){rope} => causal_attention(q, reshape(k), …){rope(keys)}`
/// where `K` is the cache's view of the rotated keys: a reshape to `[B,S,KV,D]`, with a quantize
/// of the cache's codes before or after it when the attention reads codes. Side conditions: the
/// key rope rotates as q's (`kv_heads` heads, same cache_len); each node of the chain is the only
/// reader of the one before; the chain's last value is read by this attention and graph outputs
/// only; a quantize is per-tensor with the codes' literal `k_scale` and no zero point, and the
/// rope gives the codes' `via`.
fn match_keys(g: &Graph, users: &Users, id: NodeId, a: &CausalAttention, q_rope: &Rope) -> Result<ValueId, String> {
    if a.block_scaled() {
        return Err(NVFP4_KEYS.into());
    }
    let ins = &g.nodes[id].inputs;
    let others: Vec<NodeId> = users[ins[1]].iter().copied().filter(|&r| r != id).collect();
    if !others.is_empty() || ins[2] == ins[1] {
        let names: Vec<String> = others.iter().map(|&r| format!("{} {:?}", g.nodes[r].op.mnemonic(), loc(g, r))).collect();
        return Err(format!("this step's keys are also read by {}", names.join(", ")));
    }
    let (rotated, quantize) = key_chain(g, users, ins[1])?;
    let rope_node = g.producer(rotated);
    let Op::Rope(k_rope) = rope_node.op else { unreachable!("key_chain ends at a rope") };
    if !AttnRope::of(q_rope, true).same_rotation(&k_rope) || k_rope.heads != a.kv_heads {
        return Err("the key rope rotates differently from the query rope (frequencies, pairs or heads)".into());
    }
    if rope_node.inputs[1] != ins[5] {
        return Err("the key rope reads another cache_len than the attention".into());
    }
    match (&a.cache, quantize) {
        (None, None) => Ok(rope_node.inputs[0]),
        (Some(c), Some(spec)) => {
            let literal = matches!(
                (&spec.granularity, &spec.scale, &spec.zero_point),
                (Granularity::PerTensor, ScaleSource::Literal(s), None) if *s == c.k_scale
            );
            if !literal || spec.storage != g.ty(ins[3]).dtype {
                return Err("the keys' quantize is not the cache's per-tensor codes (storage, k_scale, no zero point)".into());
            }
            if g.ty(rotated).dtype != c.via {
                return Err(format!("the key rope gives {} while the codes are read as {}", g.ty(rotated).dtype, c.via));
            }
            Ok(rope_node.inputs[0])
        }
        (None, Some(_)) => Err("the keys are quantized but the attention reads floats".into()),
        (Some(_), None) => Err("the attention reads codes but the keys are not quantized".into()),
    }
}

/// Why the keys of an attention over an NVFP4 cache (`codes(..., block=16)`) keep their rope.
const NVFP4_KEYS: &str = "the key rope stays (NVFP4 cache): kv_append copies the E2M1 codes and E4M3 block scales this \
     quantize computes; it rotates keys only into float or per-tensor FP8/INT8 caches";

/// Walks from the attention's `k` back through one reshape and at most one quantize (either
/// order) to a rope: the rope's result and the quantize's spec. Every value before `k` must have
/// its next node as only reader and be no graph output.
fn key_chain<'g>(g: &'g Graph, users: &Users, k: ValueId) -> Result<(ValueId, Option<&'g QuantSpec>), String> {
    let (mut v, mut reshapes, mut quantize) = (k, 0, None);
    loop {
        let node = g.producer(v);
        match &node.op {
            Op::Reshape if reshapes == 0 => reshapes += 1,
            Op::Quantize(spec) if quantize.is_none() => quantize = Some(spec),
            Op::Rope(_) if reshapes == 1 => return Ok((v, quantize)),
            other => return Err(format!("the keys come from {}, not a reshape (and quantize) of a rope", other.mnemonic())),
        }
        let next = node.inputs[0];
        let reader = g.values[v].producer;
        sole_reader(g, users, next, reader)
            .map_err(|others| format!("the keys' {} operand is also read by {others}", node.op.mnemonic()))?;
        v = next;
    }
}

/// `Ok` if `reader` is the only live reader of `v` and no graph output names it; otherwise the
/// other readers, in words.
fn sole_reader(g: &Graph, users: &Users, v: ValueId, reader: NodeId) -> Result<(), String> {
    let mut others: Vec<String> =
        users[v].iter().filter(|&&r| r != reader).map(|&r| format!("{} {:?}", g.nodes[r].op.mnemonic(), loc(g, r))).collect();
    if users[v].iter().filter(|&&r| r == reader).count() > 1 {
        others.push(format!("{:?} twice", loc(g, reader)));
    }
    others.extend(g.outputs.iter().filter(|&&(_, o)| o == v).map(|(n, _)| format!("the graph output {n:?}")));
    if others.is_empty() {
        Ok(())
    } else {
        Err(others.join(", "))
    }
}

/// Adds the attention with `rope(...)` (and, for the keys, a reshape of the unrotated keys, named
/// as the old reshape) and redirects the old results' readers to it.
fn apply_rope(g: &mut Graph, id: NodeId, a: &CausalAttention, m: &Found) -> Result<(), PassError> {
    let fail = |message: String| PassError::Failed { pass: "fuse-rope", message: format!("{id}: {message}") };
    let old_ins = g.nodes[id].inputs.to_vec();
    let old_o = g.nodes[id].outputs[0];
    let name = g.nodes[id].name.clone();
    let keys = m.keys.as_ref().ok().copied();
    let mut b = Builder::new(g);
    let k = match keys {
        Some(unrotated) => {
            b.scope = b.graph.producer(old_ins[1]).name.clone();
            let ty = b.graph.ty(old_ins[1]).with_dtype(b.graph.ty(unrotated).dtype);
            b.reshape(unrotated, ty).map_err(fail)?
        }
        None => old_ins[1],
    };
    b.scope = name;
    let op = Op::CausalAttention(CausalAttention { rope: Some(AttnRope::of(&m.rope, keys.is_some())), ..*a });
    // q and k replaced; v, the cache, cache_len and (NVFP4) the four block-scale operands as they were.
    let mut ins = vec![m.q, k];
    ins.extend_from_slice(&old_ins[2..]);
    let outs = b.add(op, &ins, None).map_err(fail)?;
    if g.ty(outs[0]) != g.ty(old_o) {
        return Err(fail("the fused attention's type differs from the old one's".into()));
    }
    g.replace_all_uses(old_o, outs[0]);
    if keys.is_some() {
        g.replace_all_uses(old_ins[1], outs[1]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Over an NVFP4 cache only the query rope folds; the keys' quantize stays standalone and the
    /// fusion report says why.
    #[test]
    fn nvfp4_keys_decline_with_a_reason_in_the_report() {
        let lines = crate::passes::report_of_case(&FuseRope, "fuse-rope", "nvfp4_cache_queries_only", ".q");
        assert_eq!(lines, [format!("L.k_cache:k.q: standalone, fuse-rope: {NVFP4_KEYS}")]);
        assert!(NVFP4_KEYS.contains("NVFP4"), "{NVFP4_KEYS}");
    }
}
