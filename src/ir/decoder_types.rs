//! Type rules of the decoder ops: `rope` and `causal_attention` (semantics in [`super::Op`]).

use super::{shape_text, CausalAttention, DType, Dim, Rope, TensorType};

/// `x [B,S,N·D], cache_len i64[B] → x`'s type.
pub fn rope(r: &Rope, inputs: &[&TensorType]) -> Result<TensorType, String> {
    let (x, len) = (inputs[0], inputs[1]);
    if !x.dtype.is_wide_float() {
        return Err(format!("rope operand must be f32/f16/bf16, got {}", x.dtype));
    }
    let head_dim = head_dim(x, r.heads, "rope")?;
    if head_dim % 2 != 0 {
        return Err(format!("rope head size {head_dim} is odd"));
    }
    rope_type(r)?;
    cache_len_type(len, x.shape[0], "rope")?;
    Ok(x.clone())
}

/// Checks θ and the Llama 3 scaling of `r`.
fn rope_type(r: &Rope) -> Result<(), String> {
    if !(r.theta.is_finite() && r.theta > 1.0) {
        return Err(format!("rope theta must be finite and > 1, got {:?}", r.theta));
    }
    if let Some(l) = &r.llama3 {
        let ok = l.factor >= 1.0 && l.low_freq_factor > 0.0 && l.high_freq_factor > l.low_freq_factor && l.original_max_positions > 0;
        if !ok {
            return Err(format!("rope llama3 scaling needs factor ≥ 1, 0 < low < high and a positive original length, got {l:?}"));
        }
    }
    Ok(())
}

/// `q [B,S,H·D], k, v [B,S,KV,D], past_k, past_v [B,P,KV,D], cache_len i64[B] → q`'s type, then
/// with [`crate::ir::AttnRope::keys`] k's type (the rotated keys; K/V token-major: step and cache
/// rows are `[KV, D]` per token). An NVFP4 cache ([`CausalAttention::block_scaled`]) adds
/// `k_s, v_s [B,S,KV,D/16]` and `past_k_s, past_v_s [B,P,KV,D/16]`, all `f8e4m3`, after
/// `cache_len`; its keys are never rotated by the op (`rope(keys)` would need the block scales
/// as a third result).
pub fn causal_attention(a: &CausalAttention, inputs: &[&TensorType]) -> Result<Vec<TensorType>, String> {
    let keys = a.rope.is_some_and(|r| r.keys);
    if keys && a.block_scaled() {
        return Err("causal_attention rope(keys) needs a float or per-tensor codes cache, not NVFP4 block scales".into());
    }
    let o = attention_type(a, inputs, keys)?;
    let Some(rope) = &a.rope else { return Ok(vec![o]) };
    let d = head_dim(inputs[0], a.heads, "causal_attention")?;
    if d % 2 != 0 {
        return Err(format!("causal_attention rope: head size {d} is odd"));
    }
    rope_type(&rope.op(a.heads))?;
    if !keys {
        return Ok(vec![o]);
    }
    // The rotated keys as the cache stores them: k's type, or past_k's codes.
    Ok(vec![o, inputs[1].with_dtype(inputs[3].dtype)])
}

/// `o`'s type; with `keys_unrotated`, k holds q's dtype (the op rotates and, over codes,
/// quantizes it itself).
fn attention_type(a: &CausalAttention, inputs: &[&TensorType], keys_unrotated: bool) -> Result<TensorType, String> {
    let (base, scales) = inputs.split_at(inputs.len().min(6));
    let [q, k, v, pk, pv, len] = base else { return Err("causal_attention takes 6 inputs (10 with block scales)".into()) };
    if scales.len() != a.arity() - 6 {
        return Err(format!("causal_attention takes {} inputs here, got {}", a.arity(), inputs.len()));
    }
    if !q.dtype.is_wide_float() {
        return Err(format!("causal_attention q must be f32/f16/bf16, got {}", q.dtype));
    }
    if a.kv_heads == 0 || a.heads % a.kv_heads != 0 {
        return Err(format!("causal_attention heads {} must be a positive multiple of kv_heads {}", a.heads, a.kv_heads));
    }
    if !(a.scale.is_finite() && a.scale > 0.0) {
        return Err(format!("causal_attention scale must be positive and finite, got {:?}", a.scale));
    }
    let d = head_dim(q, a.heads, "causal_attention")?;
    let (batch, seq, kv) = (q.shape[0], q.shape[1], Dim::Fixed(u64::from(a.kv_heads)));
    let operand = match &a.cache {
        None => q.dtype,
        Some(c) => {
            let ok = match c.block {
                0 => matches!(v.dtype, DType::F8E4M3 | DType::F8E5M2 | DType::I8),
                super::KV_NVFP4_BLOCK => v.dtype == DType::F4E2M1 && d % u64::from(c.block) == 0,
                _ => false,
            };
            if !ok {
                return Err(format!(
                    "causal_attention codes must be f8e4m3, f8e5m2 or i8 (block 0), or f4e2m1 in blocks of {} along D = {d} (got {} in blocks of {})",
                    super::KV_NVFP4_BLOCK,
                    v.dtype,
                    c.block
                ));
            }
            if !c.via.is_wide_float() || [c.k_scale, c.v_scale].iter().any(|s| !(s.is_finite() && *s > 0.0)) {
                return Err(format!("causal_attention codes need positive finite scales and a float via, got {c:?}"));
            }
            v.dtype
        }
    };
    let step = [batch, seq, kv, Dim::Fixed(d)];
    expect(k, if keys_unrotated { q.dtype } else { operand }, &step, "k")?;
    expect(v, operand, &step, "v")?;
    if pk.shape.len() != 4 || pk.shape[3] != Dim::Fixed(d) {
        return Err(format!("causal_attention past_k must be [B,P,{},{d}], got {}", a.kv_heads, shape_text(&pk.shape)));
    }
    let past = [batch, pk.shape[1], kv, Dim::Fixed(d)];
    for (t, what) in [(pk, "past_k"), (pv, "past_v")] {
        expect(t, operand, &past, what)?;
    }
    cache_len_type(len, batch, "causal_attention")?;
    if let (Some(c), [ks, vs, pks, pvs]) = (&a.cache, scales) {
        let blocks = Dim::Fixed(d / u64::from(c.block));
        let (step, past) = ([batch, seq, kv, blocks], [batch, pk.shape[1], kv, blocks]);
        for (t, shape, what) in [(ks, &step, "k_s"), (vs, &step, "v_s"), (pks, &past, "past_k_s"), (pvs, &past, "past_v_s")] {
            expect(t, DType::F8E4M3, shape, what)?;
        }
    }
    match &a.output {
        None => Ok((*q).clone()),
        Some(out) => {
            if !(matches!(out.storage, DType::F8E4M3 | DType::I8) && out.scale.is_finite() && out.scale > 0.0) {
                return Err(format!(
                    "causal_attention out={} out_scale={:?}: the output quantize needs f8e4m3 or i8 codes and a positive finite scale",
                    out.storage, out.scale
                ));
            }
            Ok(q.with_dtype(out.storage))
        }
    }
}

/// The token axis of a decoder's token-major (NHD) KV state `past.{k,v}.L : [B, P, KV, D]`: each
/// step's `present.{k,v}.L : [B, S, KV, D]` is appended along it (`state … axis=1`).
pub const KV_TOKEN_AXIS: usize = 1;

/// `(KV, D)` of a token-major KV state or step tensor `[B, P, KV, D]` (or `[B, S, KV, D]`): the
/// fixed heads and head size of its last two axes; `None` unless it is rank 4 with both fixed.
pub fn kv_state_heads(ty: &TensorType) -> Option<(u64, u64)> {
    match ty.shape.as_slice() {
        [_, _, kv, d] => Some((kv.fixed()?, d.fixed()?)),
        _ => None,
    }
}

/// D of an `[B, S, N·D]` operand with `heads` heads.
fn head_dim(x: &TensorType, heads: u32, op: &str) -> Result<u64, String> {
    if x.rank() != 3 {
        return Err(format!("{op} operand must be [B, S, N·D], got {}", shape_text(&x.shape)));
    }
    let width = x.shape[2].fixed().ok_or_else(|| format!("{op}: the last extent N·D must be fixed"))?;
    if heads == 0 || width % u64::from(heads) != 0 {
        return Err(format!("{op}: last extent {width} is not a multiple of {heads} heads"));
    }
    Ok(width / u64::from(heads))
}

fn cache_len_type(len: &TensorType, batch: Dim, op: &str) -> Result<(), String> {
    if len.dtype != DType::I64 || len.shape.as_slice() != [batch] {
        return Err(format!("{op} cache_len must be i64[B], got {}{}", len.dtype, shape_text(&len.shape)));
    }
    Ok(())
}

fn expect(t: &TensorType, dtype: DType, shape: &[Dim], what: &str) -> Result<(), String> {
    if t.dtype != dtype || t.shape.as_slice() != shape {
        return Err(format!("causal_attention {what} must be {dtype}{}, got {}{}", shape_text(shape), t.dtype, shape_text(&t.shape)));
    }
    Ok(())
}
