//! Decoder kernels: rotary position embedding and causal grouped-query attention over a KV cache.
//! Semantics are documented on [`crate::ir::Op::Rope`] and [`crate::ir::CausalAttention`].

use super::{f32s, finish, for_rows, take_f32, OutType};
use crate::interp::perturb::{Function, Perturbation};
use crate::interp::tensor::Tensor;
use crate::ir::{CausalAttention, DType, Rope, RopeLlama3, RopePairs};
use crate::numerics::cast;
use std::borrow::Cow;
use std::sync::Arc;

/// The cached-token counts of `cache_len`, each checked against `0..=capacity`.
fn cache_lens(t: &Tensor, capacity: usize) -> Result<Vec<usize>, String> {
    let lens = t.as_i64().ok_or("cache_len must be an integer tensor")?;
    lens.iter()
        .enumerate()
        .map(|(b, &n)| {
            usize::try_from(n).ok().filter(|&n| n <= capacity).ok_or_else(|| format!("cache_len[{b}] = {n} is outside 0..={capacity}"))
        })
        .collect()
}

/// Inverse frequencies `θ^(−2i/D)` for `i < D/2` (f64), with Llama 3's rescaling when given.
pub fn inverse_frequencies(theta: f64, head_dim: usize, llama3: Option<&RopeLlama3>) -> Vec<f64> {
    let half = head_dim / 2;
    let base: Vec<f64> = (0..half).map(|i| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64)).collect();
    let Some(l) = llama3 else { return base };
    let (factor, low, high) = (f64::from(l.factor), f64::from(l.low_freq_factor), f64::from(l.high_freq_factor));
    let original = f64::from(l.original_max_positions);
    let (low_wavelen, high_wavelen) = (original / low, original / high);
    base.into_iter()
        .map(|f| {
            let wavelen = 2.0 * std::f64::consts::PI / f;
            if wavelen < high_wavelen {
                f
            } else if wavelen > low_wavelen {
                f / factor
            } else {
                let smooth = (original / wavelen - low) / (high - low);
                (1.0 - smooth) * f / factor + smooth * f
            }
        })
        .collect()
}

/// `rope x, cache_len`.
pub fn rope(r: &Rope, x: Arc<Tensor>, cache_len: &Tensor, out: &OutType) -> Result<Tensor, String> {
    rotated(r, x, cache_len, out)
}

/// `x [B, S, …]` with each token row of `N·D` elements (any shape whose rows are the last one or
/// the last two axes) rotated as `rope` does, rounded to `out`'s dtype.
fn rotated(r: &Rope, x: Arc<Tensor>, cache_len: &Tensor, out: &OutType) -> Result<Tensor, String> {
    let x = match x.shape[..] {
        [batch, seq, kv, d] => Arc::new(Tensor { shape: vec![batch, seq, kv * d], ..(*x).clone() }),
        _ => x,
    };

    let [batch, seq, width] = x.shape[..] else { return Err("rope operand must be rank 3".into()) };
    let heads = r.heads as usize;
    let d = width / heads;
    let lens = cache_lens(cache_len, usize::MAX)?;
    if lens.len() != batch {
        return Err(format!("cache_len has {} entries for batch {batch}", lens.len()));
    }
    let freqs = inverse_frequencies(f64::from(r.theta), d, r.llama3.as_ref());
    let mut data = take_f32(x)?;
    let pairs = r.pairs;
    for_rows(&mut data, width, |row, v| {
        let pos = (lens[row / seq] + row % seq) as f64;
        let table: Vec<(f32, f32)> = freqs.iter().map(|f| ((pos * f).cos() as f32, (pos * f).sin() as f32)).collect();
        for head in v.chunks_mut(d) {
            for (i, &(cos, sin)) in table.iter().enumerate() {
                let (a, b) = match pairs {
                    RopePairs::Half => (i, i + d / 2),
                    RopePairs::Adjacent => (2 * i, 2 * i + 1),
                };
                let (x1, x2) = (head[a], head[b]);
                head[a] = x1 * cos - x2 * sin;
                head[b] = x2 * cos + x1 * sin;
            }
        }
    });
    Ok(finish(out, data))
}

/// Views of one causal attention's operands.
struct Operands<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    past_k: &'a [f32],
    past_v: &'a [f32],
    lens: Vec<usize>,
    seq: usize,
    past: usize,
    d: usize,
}

/// `causal_attention q, k, v, past_k, past_v, cache_len[, k_s, v_s, past_k_s, past_v_s]`: `o`,
/// then with `rope(keys)` the rotated keys. A `rope(...)` rotates q (and k) first, exactly as the
/// `rope` ops it replaced. The four block-scale operands come with an NVFP4 cache
/// (`codes(..., block=16)`), whose keys the op never rotates (no `rope(keys)`). With `perturb`,
/// each softmax `exp` is moved within CUDA's `expf` bound (a second correct implementation).
pub fn causal_attention(
    a: &CausalAttention,
    args: Vec<Arc<Tensor>>,
    outs: &[OutType],
    perturb: Option<Perturbation>,
) -> Result<Vec<Tensor>, String> {
    if args.len() != a.arity() || outs.len() != a.outputs() {
        return Err(format!("causal_attention takes {} operands and gives {} result(s)", a.arity(), a.outputs()));
    }
    let (args, keys) = rotated_operands(a, args)?;
    let o = attention(a, args, &outs[0], perturb)?;
    Ok(std::iter::once(o).chain(keys).collect())
}

/// The operands with q (and with `rope(keys)` k) rotated as the op's `rope(...)` says, and the
/// rotated keys (quantized as the cache stores them: k's shape, past_k's dtype, the type rule's
/// second result) when they are a result.
fn rotated_operands(a: &CausalAttention, mut args: Vec<Arc<Tensor>>) -> Result<(Vec<Arc<Tensor>>, Option<Tensor>), String> {
    let Some(r) = a.rope else { return Ok((args, None)) };
    let q_ty = OutType { dtype: args[0].dtype, shape: args[0].shape.clone() };
    args[0] = Arc::new(rotated(&r.op(a.heads), args[0].clone(), &args[5], &q_ty)?);
    if !r.keys {
        return Ok((args, None));
    }
    if a.block_scaled() {
        return Err("causal_attention rope(keys) over an NVFP4 cache (block scales) is not defined".into());
    }
    let k_ty = OutType { dtype: args[1].dtype, shape: args[1].shape.clone() };
    let keys = rotated(&r.op(a.kv_heads), args[1].clone(), &args[5], &k_ty)?;
    let keys = match &a.cache {
        None => keys,
        Some(c) => quantized_keys(keys, c.k_scale, &OutType { dtype: args[3].dtype, ..k_ty })?,
    };
    args[1] = Arc::new(keys.clone());
    Ok((args, Some(keys)))
}

/// Rotated keys quantized as the cache's per-tensor `quantize` does.
fn quantized_keys(keys: Tensor, scale: f32, out: &OutType) -> Result<Tensor, String> {
    Ok(per_tensor_codes(f32s(&keys)?, scale, out))
}

/// `values` quantized as a per-tensor `quantize` with a literal scale does: `cast(x / scale)` to
/// `out`'s codes.
fn per_tensor_codes(values: &[f32], scale: f32, out: &OutType) -> Tensor {
    finish(out, values.iter().map(|&x| cast(x / scale, out.dtype)).collect())
}

/// The attention of `causal_attention` over operands already rotated.
fn attention(a: &CausalAttention, args: Vec<Arc<Tensor>>, out: &OutType, perturb: Option<Perturbation>) -> Result<Tensor, String> {
    let kv_heads = a.kv_heads as usize;
    let (mut data, q_dtype) = with_operands(a, &args, |ops, batch| {
        per_query(a, ops, batch, 1, |(b, s, g), q, o| attend_one(ops, a.scale, (b, s, g), kv_heads, q, o, perturb))
    })?;
    Ok(match &a.output {
        None => finish(out, data),
        Some(quant) => {
            // Rounded to q's dtype first, as the unfused graph's `o` was.
            crate::numerics::cast_slice(&mut data, q_dtype);
            per_tensor_codes(&data, quant.scale, out)
        }
    })
}

/// Calls `f` with the operands of a `causal_attention` (already rotated) as its products read
/// them, cache codes dequantized, and the batch; returns its result and q's dtype.
fn with_operands<R>(a: &CausalAttention, args: &[Arc<Tensor>], f: impl FnOnce(&Operands, usize) -> R) -> Result<(R, DType), String> {
    let (base, block_scales) = args.split_at(args.len().min(6));
    let [q, k, v, pk, pv, len] = base else { return Err("causal_attention takes 6 operands (10 with block scales)".into()) };
    let [batch, seq, width] = q.shape[..] else { return Err("q must be rank 3".into()) };
    let d = width / a.heads as usize;
    let past = pk.shape.get(1).copied().ok_or("past_k must be rank 4")?;
    let lens = cache_lens(len, past)?;
    if lens.len() != batch {
        return Err(format!("cache_len has {} entries for batch {batch}", lens.len()));
    }
    let (k, v, pk, pv) = match (&a.cache, block_scales) {
        (None, _) => (Cow::Borrowed(f32s(k)?), Cow::Borrowed(f32s(v)?), Cow::Borrowed(f32s(pk)?), Cow::Borrowed(f32s(pv)?)),
        (Some(c), []) => (
            dequantized(k, c.k_scale, c.via)?,
            dequantized(v, c.v_scale, c.via)?,
            dequantized(pk, c.k_scale, c.via)?,
            dequantized(pv, c.v_scale, c.via)?,
        ),
        (Some(c), [ks, vs, pks, pvs]) => {
            let block = c.block as usize;
            (
                block_dequantized(k, ks, block, c.k_scale, c.via)?,
                block_dequantized(v, vs, block, c.v_scale, c.via)?,
                block_dequantized(pk, pks, block, c.k_scale, c.via)?,
                block_dequantized(pv, pvs, block, c.v_scale, c.via)?,
            )
        }
        (Some(_), other) => return Err(format!("causal_attention: {} block-scale operands (expected 4)", other.len())),
    };
    let ops = Operands { q: f32s(q)?, k: &k, v: &v, past_k: &pk, past_v: &pv, lens, seq, past, d };
    Ok((f(&ops, batch), q.dtype))
}

/// Cache codes read as the per-tensor `dequantize` to `via` reads them: `via(code · scale)`.
fn dequantized(codes: &Tensor, scale: f32, via: DType) -> Result<Cow<'static, [f32]>, String> {
    Ok(Cow::Owned(f32s(codes)?.iter().map(|&c| cast(c * scale, via)).collect()))
}

/// NVFP4 cache codes read as the block `dequantize` to `via` followed by the multiplication by
/// the global scale: `via(via(code · block_scale[i / block]) · global)`.
fn block_dequantized(codes: &Tensor, scales: &Tensor, block: usize, global: f32, via: DType) -> Result<Cow<'static, [f32]>, String> {
    let (c, s) = (f32s(codes)?, f32s(scales)?);
    if block == 0 || c.len() != s.len() * block {
        return Err(format!("{} codes do not match {} block scales of {block}", c.len(), s.len()));
    }
    Ok(Cow::Owned(c.iter().enumerate().map(|(i, &x)| cast(cast(x * s[i / block], via) * global, via)).collect()))
}

/// `f((b, s, g), q_row, out)` for every query row of the attention (token `(b, s)`, head `h` of KV
/// head `g`), in parallel over tokens: `out` is the row's `per · D` values at `[B, S, H, per·D]`.
fn per_query(
    a: &CausalAttention,
    ops: &Operands,
    batch: usize,
    per: usize,
    f: impl Fn((usize, usize, usize), &[f32], &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let (heads, d, seq) = (a.heads as usize, ops.d, ops.seq);
    let group = heads / a.kv_heads as usize;
    let mut data = vec![0f32; batch * seq * heads * d * per];
    for_rows(&mut data, heads * d * per, |row, o| {
        for (h, out) in o.chunks_mut(d * per).enumerate() {
            f((row / seq, row % seq, h / group), &ops.q[(row * heads + h) * d..][..d], out);
        }
    });
    data
}

impl Operands<'_> {
    /// The key and value rows (D elements each) of KV head `g` at position `t` of sequence `b`:
    /// the cache's below `cache_len[b]`, this step's from there.
    fn key_value(&self, b: usize, t: usize, g: usize, kv_heads: usize) -> (&[f32], &[f32]) {
        let (d, cached) = (self.d, self.lens[b]);
        if t < cached {
            let at = token_major(b, t, g, self.past, kv_heads, d);
            (&self.past_k[at..][..d], &self.past_v[at..][..d])
        } else {
            let at = token_major(b, t - cached, g, self.seq, kv_heads, d);
            (&self.k[at..][..d], &self.v[at..][..d])
        }
    }
}

/// Offset of the `D` elements of KV head `g` of token `t` of sequence `b` in a token-major
/// `[B, T, KV, D]` tensor of `tokens` rows per sequence.
fn token_major(b: usize, t: usize, g: usize, tokens: usize, kv_heads: usize, d: usize) -> usize {
    ((b * tokens + t) * kv_heads + g) * d
}

/// Attention of the query row of token `(b, s)` of head group `g` (KV head) over the cache then
/// this step's keys; with `perturb`, each `exp` moved within CUDA's `expf` bound.
fn attend_one(
    ops: &Operands,
    scale: f32,
    (b, s, g): (usize, usize, usize),
    kv_heads: usize,
    q: &[f32],
    o: &mut [f32],
    perturb: Option<Perturbation>,
) {
    let cached = ops.lens[b];
    let key = |t: usize| ops.key_value(b, t, g, kv_heads);
    let n = cached + s + 1;
    let scores: Vec<f32> = (0..n).map(|t| dot(q, key(t).0) * scale).collect();
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp = |x: f32| perturb.map_or(x.exp(), |p| p.apply(Function::Exp, x, x.exp()));
    let weights: Vec<f32> = scores.iter().map(|&x| exp(x - max)).collect();
    let sum: f32 = weights.iter().sum();
    o.iter_mut().for_each(|x| *x = 0.0);
    for (t, w) in weights.iter().enumerate() {
        let p = w / sum;
        for (acc, &vv) in o.iter_mut().zip(key(t).1) {
            *acc += p * vv;
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// For a `causal_attention` with an output quantize (`out=…`): per output element, the lowest and
/// the highest code a GPU kernel may store, given its f32 sums in any order and CUDA's `expf`;
/// `None` without an output quantize. In f64 around the exact context `o = Σ_t p_t·v_t`:
/// - each score `s_t = scale·Σ_d q_d·k_td` is off by at most `δ_t = f32_sum_bound(D)·scale·Σ_d
///   |q_d·k_td|` (and the f32 product with `scale`), which moves `p_t` by a relative `2·max δ`;
/// - the softmax itself by [`fused::softmax_relative_bound`] over the row's keys, plus the split
///   merge's rescaling `expf` and its division (`4·2⁻²³`);
/// - `Σ p·v` by [`fused::f32_sum_bound`] over the keys, and the division by the sum.
///
/// With `ε` their sum, `|Δo_c| ≤ ε·Σ_t p_t·|v_tc|`; the window is the codes of
/// `round_T(o_c ∓ Δo_c)` (T = q's dtype) under the output quantize, which is monotone.
pub(super) fn causal_code_window(
    a: &CausalAttention,
    args: Vec<Arc<Tensor>>,
    outs: &[OutType],
) -> Result<Option<(Tensor, Tensor)>, String> {
    let Some(quant) = a.output else { return Ok(None) };
    let out = outs.first().ok_or("missing output")?;
    let (args, _) = rotated_operands(a, args)?;
    let kv_heads = a.kv_heads as usize;
    // Per query row: its D lower bounds, then its D upper bounds.
    let ((bounds, d), q_dtype) = with_operands(a, &args, |ops, batch| {
        let bounds = per_query(a, ops, batch, 2, |(b, s, g), q, o| context_bounds(ops, a.scale, (b, s, g, kv_heads), q, o));
        (bounds, ops.d)
    })?;
    let codes = |half: usize| {
        let mut v: Vec<f32> = bounds.chunks(d).skip(half).step_by(2).flatten().copied().collect();
        crate::numerics::cast_slice(&mut v, q_dtype);
        per_tensor_codes(&v, quant.scale, out)
    };
    Ok(Some((codes(0), codes(1))))
}

/// `o_c ∓ Δo_c` of [`causal_code_window`] for one query row of KV head `g` (`at` = (b, s, g,
/// KV heads)): the D lower bounds, then the D upper bounds, into `out`.
fn context_bounds(ops: &Operands, scale: f32, at: (usize, usize, usize, usize), q: &[f32], out: &mut [f32]) {
    let (b, s, g, kv_heads) = at;
    let d = ops.d;
    let rows: Vec<(&[f32], &[f32])> = (0..ops.lens[b] + s + 1).map(|t| ops.key_value(b, t, g, kv_heads)).collect();
    let (scale, u) = (f64::from(scale), f64::powi(2.0, -23));
    let mut score_error = 0f64;
    let scores: Vec<f64> = rows
        .iter()
        .map(|(k, _)| {
            let (dot, magnitude) = q.iter().zip(*k).fold((0f64, 0f64), |(dot, m), (&x, &y)| {
                let p = f64::from(x) * f64::from(y);
                (dot + p, m + p.abs())
            });
            let score = dot * scale;
            score_error = score_error.max(super::fused::f32_sum_bound(d) * scale * magnitude + score.abs() * u);
            score
        })
        .collect();
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = scores.iter().map(|&x| (x - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    let n = rows.len();
    let eps = 2.0 * score_error + super::fused::softmax_relative_bound(n) + 4.0 * u + super::fused::f32_sum_bound(n);
    let (lo, hi) = out.split_at_mut(d);
    for c in 0..d {
        let (o, magnitude) = rows.iter().zip(&weights).fold((0f64, 0f64), |(o, m), ((_, v), w)| {
            let pv = w / total * f64::from(v[c]);
            (o + pv, m + pv.abs())
        });
        let delta = eps * magnitude + o.abs() * u;
        lo[c] = (o - delta) as f32;
        hi[c] = (o + delta) as f32;
    }
}
