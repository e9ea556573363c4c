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
//! Rule `kv-nvfp4-codes` (an NVFP4 cache, `--kv-cache nvfp4`): each of the four operands is
//! `mul(dequantize(codes, block_scales), global)` (either operand order) with a dequantize of
//! `f4e2m1` codes in blocks of 16 along the last axis whose E4M3 scales are an operand, and a
//! rank-0 `scalar` global; K's two share the global, V's two share theirs, and the dequantizes
//! and products have q's dtype. The attention then reads the codes and gains the four block-scale
//! operands `k_s, v_s, past_k_s, past_v_s` (`codes(..., block=16)`), defined as that very
//! `via(via(code · block_scale) · global)`, so the rewrite is exact too:
//!
//! ```text
//! before:
//!   %30, %31 = quantize %29 {f4e2m1, block(-1:16), scale=dynamic(f8e4m3)} : f4e2m1[B,S,2,64], f8e4m3[B,S,2,4]
//!   %32 = dequantize %30 {f4e2m1, block(-1:16), scale=%31} : f16[B,S,2,64]
//!   %34 = mul %32, %33 : f16[B,S,2,64]      (%33 = scalar 0.0078125 : f16)
//!   ... (V alike; the cache: dequantize %2, %3 → mul)
//! after:
//!   %60 = causal_attention %12, %30, %40, %2, %4, %1, %31, %41, %3, %5 {..., codes(k_scale=0.0078125, v_scale=0.0039062, via=f16, block=16)}
//! ```
//!
//! Declines are traced (rule `kv-codes`) and recorded on the dequantizes' report entries. The
//! dequantizes are left for `dce` (other readers keep theirs). Idempotent: a fused attention has
//! codes operands, which no dequantize produces.
//!
//! Interacting passes: after `propagate-qdq` (which leaves the quantize before the cache's
//! token-major reshape); before `dce`.

use super::{loc, Pass, PassCx, PassError};
use crate::ir::{BinaryOp, CausalAttention, DType, Granularity, Graph, KvCodes, NodeId, Op, ScaleSource, ValueId, KV_NVFP4_BLOCK};

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
            let matched = match match_nvfp4(g, id) {
                Ok(Some(m)) => Ok(m),
                Ok(None) => match_codes(g, id).map(|(c, ops)| (c, ops, None)),
                Err(reason) => Err(reason),
            };
            match matched {
                Err(reason) => {
                    tracing::debug!(rule = "kv-codes", node = %id, declined = %reason);
                    for &v in &g.nodes[id].inputs[1..5] {
                        if matches!(g.producer(v).op, Op::Dequantize(_)) {
                            cx.report.declined(&loc(g, g.values[v].producer), reason.clone());
                        }
                    }
                }
                Ok((codes, inputs, block_scales)) => {
                    tracing::debug!(rule = if block_scales.is_some() { "kv-nvfp4-codes" } else { "kv-codes" }, node = %id);
                    let node_loc = loc(g, id);
                    for &v in &g.nodes[id].inputs[1..5] {
                        cx.report.fused(&loc(g, g.values[v].producer), "causal_attention", &node_loc);
                    }
                    let node = &mut g.nodes[id];
                    node.op = Op::CausalAttention(CausalAttention { cache: Some(codes), ..a });
                    node.inputs[1..5].copy_from_slice(&inputs);
                    node.inputs.extend(block_scales.into_iter().flatten());
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
        let scale = spec.literal_per_tensor().ok_or("the cache's dequantize is not per-tensor with a literal scale and no zero point")?;
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
    Ok((KvCodes { k_scale: k.1, v_scale: v.1, via, block: 0 }, codes))
}

/// The four operands of an NVFP4 cache read: `(codes, block scales, global)` of
/// `mul(dequantize(codes, scales), global)`.
type Nvfp4Operand = (ValueId, ValueId, f32);

/// The NVFP4 codes attribute, the four code operands and the four block-scale operands
/// `[k_s, v_s, past_k_s, past_v_s]`; `Ok(None)` when no operand looks like an NVFP4 read (the
/// per-tensor rule then decides), `Err` when some do but the rule's conditions fail.
#[allow(clippy::type_complexity)]
fn match_nvfp4(g: &Graph, id: NodeId) -> Result<Option<(KvCodes, [ValueId; 4], Option<[ValueId; 4]>)>, String> {
    let ins = &g.nodes[id].inputs;
    let via = g.ty(ins[0]).dtype;
    let reads: Vec<Option<Nvfp4Operand>> = ins[1..5].iter().map(|&v| nvfp4_read(g, v, via)).collect();
    if reads.iter().all(Option::is_none) {
        return Ok(None);
    }
    let Some([k, v, pk, pv]) = reads.iter().copied().collect::<Option<Vec<_>>>().and_then(|r| <[Nvfp4Operand; 4]>::try_from(r).ok()) else {
        return Err(
            "only some of the attention's K/V operands are NVFP4 reads `mul(dequantize(f4e2m1 codes, block scales), global)` of q's dtype"
                .into(),
        );
    };
    if k.2 != pk.2 || v.2 != pv.2 {
        return Err("this step's K (or V) and the cache's are read with different global scales".into());
    }
    let codes = KvCodes { k_scale: k.2, v_scale: v.2, via, block: KV_NVFP4_BLOCK };
    Ok(Some((codes, [k.0, v.0, pk.0, pv.0], Some([k.1, v.1, pk.1, pv.1]))))
}

/// `(codes, scales, global)` when `v` is `mul(dequantize(codes, scales), global)` (either order)
/// of dtype `via`: an f4e2m1 dequantize in blocks of [`KV_NVFP4_BLOCK`] along the last axis with
/// an operand scale, no zero point, giving `via`; `global` a positive finite rank-0 scalar.
fn nvfp4_read(g: &Graph, v: ValueId, via: DType) -> Option<Nvfp4Operand> {
    let mul = g.producer(v);
    if mul.op != Op::Binary(BinaryOp::Mul) || g.ty(v).dtype != via {
        return None;
    }
    let scalar = |x: ValueId| match g.producer(x).op {
        Op::Scalar { value } if g.ty(x).shape.is_empty() => Some(value as f32).filter(|s| s.is_finite() && *s > 0.0),
        _ => None,
    };
    let (dq, global) = match (mul.inputs[0], mul.inputs[1]) {
        (a, b) if scalar(b).is_some() => (a, scalar(b)?),
        (a, b) => (b, scalar(a)?),
    };
    let node = g.producer(dq);
    let Op::Dequantize(spec) = &node.op else { return None };
    let rank = g.ty(dq).rank();
    let last_axis_blocks = |blocks: &[(i64, u64)]| match blocks {
        [(axis, size)] => *size == u64::from(KV_NVFP4_BLOCK) && crate::ir::normalize_axis(*axis, rank) == Some(rank.wrapping_sub(1)),
        _ => false,
    };
    let ok = spec.storage == DType::F4E2M1
        && matches!(&spec.granularity, Granularity::Block { blocks } if last_axis_blocks(blocks))
        && spec.scale == ScaleSource::Input
        && spec.zero_point.is_none()
        && g.ty(dq).dtype == via;
    ok.then(|| (node.inputs[0], node.inputs[1], global))
}
