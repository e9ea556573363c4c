//! `fuse-kv-cache`: a causal attention over a quantized KV cache reads the cache's codes itself,
//! so the dequantized cache never exists — on the GPU the attention kernel reads FP8/INT8 pages.
//!
//! ```text
//! before:
//!   %2 = input "past.k.0" : f8e4m3[B,P,2,16]
//!   %18 = reshape %17 : f8e4m3[B,S,2,16]
//!   %19 = dequantize %18 {f8e4m3, per_tensor, scale=0.0094} : f16[B,S,2,16]
//!   %24 = dequantize %23 {f8e4m3, per_tensor, scale=0.011} : f16[B,S,2,16]
//!   %25 = dequantize %2 {f8e4m3, per_tensor, scale=0.0094} : f16[B,P,2,16]
//!   %26 = dequantize %3 {f8e4m3, per_tensor, scale=0.011} : f16[B,P,2,16]
//!   %27 = causal_attention %12, %19, %24, %25, %26, %1 {heads=4, kv_heads=2, scale=0.25} : f16[B,S,64]
//! after:
//!   %27 = causal_attention %12, %18, %23, %2, %3, %1 {heads=4, kv_heads=2, scale=0.25, codes(k_scale=0.0094, v_scale=0.011, via=f16)} : f16[B,S,64]
//! ```
//!
//! Rule `kv-codes`: `causal_attention(q, dq(k), dq(v), dq(past_k), dq(past_v), len)` ⇒
//! `causal_attention(q, k, v, past_k, past_v, len) {codes(...)}` when all four are `dequantize`s
//! with a literal per-tensor scale and no zero point, K's two share one spec, V's two share one
//! spec, K and V share one storage dtype (`f8e4m3`, `f8e5m2` or `i8`), and every result has q's
//! dtype (the `via`).
//!
//! Exact: `codes` is defined (and interpreted) as that very dequantize — `via(code · scale)` per
//! element — before the unchanged f32 attention math.
//!
//! A float cache already in q's dtype needs no rule: `drop-identity-casts` removed the casts the
//! recipes' dtype conversion left around it.
//!
//! Declines are traced (rule `kv-codes`) and recorded on the dequantizes' report entries. The
//! dequantizes are left for `dce` (other readers keep theirs). Idempotent: a fused attention has
//! codes operands, which no dequantize produces.
//!
//! Interacting passes: after `propagate-qdq` (which leaves the quantize before the cache's
//! token-major reshape); before `dce`.

use super::{loc, Pass, PassCx, PassError};
use crate::ir::{CausalAttention, DType, Granularity, Graph, KvCodes, NodeId, Op, QuantSpec, ScaleSource, ValueId};

/// `fuse-kv-cache`.
pub struct FuseKvCache;

impl Pass for FuseKvCache {
    fn name(&self) -> &'static str {
        "fuse-kv-cache"
    }

    fn run(&self, g: &mut Graph, cx: &mut PassCx) -> Result<bool, PassError> {
        let mut changed = false;
        for id in g.nodes.ids().collect::<Vec<_>>() {
            let Op::CausalAttention(a) = g.nodes[id].op else { continue };
            if a.cache.is_some() {
                continue;
            }
            match match_codes(g, id) {
                Err(reason) => {
                    tracing::debug!(rule = "kv-codes", node = %id, declined = %reason);
                    for &v in &g.nodes[id].inputs[1..5] {
                        if matches!(g.producer(v).op, Op::Dequantize(_)) {
                            cx.report.declined(&loc(g, g.values[v].producer), reason.clone());
                        }
                    }
                }
                Ok((codes, inputs)) => {
                    tracing::debug!(rule = "kv-codes", node = %id);
                    let node_loc = loc(g, id);
                    for &v in &g.nodes[id].inputs[1..5] {
                        cx.report.fused(&loc(g, g.values[v].producer), "causal_attention", &node_loc);
                    }
                    let node = &mut g.nodes[id];
                    node.op = Op::CausalAttention(CausalAttention { cache: Some(codes), ..a });
                    node.inputs[1..5].copy_from_slice(&inputs);
                    changed = true;
                }
            }
        }
        Ok(changed)
    }
}

/// The codes attribute and the four code operands `[k, v, past_k, past_v]`, or why not.
fn match_codes(g: &Graph, id: NodeId) -> Result<(KvCodes, [ValueId; 4]), String> {
    let ins = &g.nodes[id].inputs;
    let via = g.ty(ins[0]).dtype;
    let mut specs = Vec::with_capacity(4);
    let mut codes = [ins[1]; 4];
    for (i, &v) in ins[1..5].iter().enumerate() {
        let node = g.producer(v);
        let Op::Dequantize(spec) = &node.op else {
            return Err(format!("operand {} of the attention is not a dequantize", i + 1));
        };
        let scale = literal_per_tensor(spec).ok_or("the cache's dequantize is not per-tensor with a literal scale and no zero point")?;
        if g.ty(v).dtype != via {
            return Err(format!("a dequantize gives {} while q is {via}", g.ty(v).dtype));
        }
        specs.push((spec.storage, scale));
        codes[i] = node.inputs[0];
    }
    let [k, v, pk, pv] = [specs[0], specs[1], specs[2], specs[3]];
    if k != pk || v != pv {
        return Err("this step's K (or V) and the cache's are dequantized with different specs".into());
    }
    if k.0 != v.0 || !matches!(k.0, DType::F8E4M3 | DType::F8E5M2 | DType::I8) {
        return Err(format!("K and V codes must share one of f8e4m3, f8e5m2, i8 (got {} and {})", k.0, v.0));
    }
    Ok((KvCodes { k_scale: k.1, v_scale: v.1, via }, codes))
}

/// The scale of a symmetric per-tensor spec with a literal scale.
fn literal_per_tensor(spec: &QuantSpec) -> Option<f32> {
    match (&spec.granularity, &spec.scale, &spec.zero_point) {
        (Granularity::PerTensor, ScaleSource::Literal(s), None) => Some(*s),
        _ => None,
    }
}
