//! Fused ops, evaluated as the composition of the unfused kernels they replace, rounding at the
//! same points; so a fusion pass changes no number except the matmul's scale reassociation
//! (`Σ(qa·sa)(qb·sb)` becomes `(Σ qa·qb)·sa·sb`, as on the GPU).
//!
//! `attention` and `embed_layernorm` call the very kernels of the ops they replace, in the order
//! the unfused graph runs them (the importer's reshape/transpose/matmul/mul/add/softmax chain and
//! its gather/iota/add chain), so their results are bit-identical to the unfused graph's.

use super::{elementwise, matmul, norm, quant, reduce, shape, Numerics, OutType};
use crate::interp::tensor::Tensor;
use crate::interp::Accumulation;
use crate::ir::{
    Attention, BinaryOp, DType, EmbedLayerNorm, EpilogueOp, Granularity, NormKind, QMatMul, QuantSpec, RoundTripNorm, ScaleSource,
};
use crate::numerics::cast;
use std::sync::Arc;

/// `requantize`: dequantize per-tensor, round to `via`, quantize with `to`.
pub(super) fn requantize(
    q: Arc<Tensor>,
    from_scale: f32,
    via: crate::ir::DType,
    to: &QuantSpec,
    outs: &[OutType],
) -> Result<Vec<Tensor>, String> {
    let from =
        QuantSpec { storage: q.dtype, granularity: Granularity::PerTensor, scale: ScaleSource::Literal(from_scale), zero_point: None };
    let mid = OutType { dtype: via, shape: outs[0].shape.clone() };
    let x = quant::dequantize(&from, q, vec![], &mid)?;
    quant::quantize(to, Arc::new(x), vec![], outs)
}

/// `quant_round_trip`: with `norm`, the norm of its operands rounded to the result's dtype T (the
/// norm ops' own code), else x; times `pre` rounded to T (the interpreter's own `mul`), the
/// quantize, the dequantize of its codes with its own scales rounded to T, then `·post` rounded.
pub(super) fn quant_round_trip(
    norm_op: Option<RoundTripNorm>,
    mut args: std::vec::IntoIter<Arc<Tensor>>,
    (pre, spec, post): (f32, &QuantSpec, f32),
    out: &OutType,
) -> Result<Tensor, String> {
    let x = match norm_op {
        None => args.next().ok_or("missing operand")?,
        Some(n) => Arc::new(apply_norm(n.kind, n.eps, &mut args, out)?),
    };
    let times =
        |t: Arc<Tensor>, c: f32| elementwise::binary(BinaryOp::Mul, t, Arc::new(Tensor::from_f32_as(DType::F32, vec![], vec![c])), out);
    let scaled = times(x, pre)?;
    let shape = &out.shape;
    let mut q_outs = vec![OutType { dtype: spec.storage, shape: shape.clone() }];
    if let ScaleSource::Dynamic { dtype, .. } = spec.scale {
        let scale_shape = quant::scale_shape(&spec.granularity, shape)?;
        q_outs.push(OutType { dtype, shape: scale_shape });
    }
    let mut quantized = quant::quantize(spec, Arc::new(scaled), vec![], &q_outs)?.into_iter();
    let codes = quantized.next().ok_or("quantize gave no codes")?;
    let (dq_spec, extra) = match quantized.next() {
        Some(scales) => (QuantSpec { scale: ScaleSource::Input, ..spec.clone() }, vec![Arc::new(scales)]),
        None => (spec.clone(), vec![]),
    };
    let back = quant::dequantize(&dq_spec, Arc::new(codes), extra, out)?;
    times(Arc::new(back), post)
}

/// The norm of a fused op (`*_quantize`, `quant_round_trip {norm}`) over its next operands
/// (x, gamma[, beta]), rounded to `out` as the norm ops (or, for [`NormKind::Scale`], `mul`) round.
fn apply_norm(kind: NormKind, eps: f32, args: &mut std::vec::IntoIter<Arc<Tensor>>, out: &OutType) -> Result<Tensor, String> {
    let mut next = || args.next().ok_or_else(|| "missing operand".to_string());
    let (x, gamma) = (next()?, next()?);
    match kind {
        NormKind::LayerNorm => norm::layer_norm(x, &gamma, Some(&*next()?), eps, out),
        NormKind::RmsNorm => norm::rms_norm(x, &gamma, eps, out),
        NormKind::Scale => elementwise::binary(BinaryOp::Mul, x, gamma, out),
    }
}

/// `layernorm_quantize` / `rmsnorm_quantize` / `scale_quantize`: the norm (or the per-channel
/// multiply, the interpreter's own `mul`) rounded to `via`, then the quantize.
pub(super) fn norm_quantize(
    kind: NormKind,
    eps: f32,
    via: crate::ir::DType,
    spec: &QuantSpec,
    keep_normed: bool,
    mut args: std::vec::IntoIter<Arc<Tensor>>,
    outs: &[OutType],
) -> Result<Vec<Tensor>, String> {
    let mid = OutType { dtype: via, shape: outs[0].shape.clone() };
    let normed = apply_norm(kind, eps, &mut args, &mid)?;
    let normed = Arc::new(normed);
    let n_quant = outs.len() - usize::from(keep_normed);
    let mut results = quant::quantize(spec, normed.clone(), args.collect(), &outs[..n_quant])?;
    if keep_normed {
        results.push(Arc::try_unwrap(normed).unwrap_or_else(|shared| (*shared).clone()));
    }
    Ok(results)
}

/// `qmatmul`: with `b_dequant`, `b` dequantized to `a`'s dtype first (the `dequantize` kernel);
/// then the accumulation — exact for 8-bit integer operands ([`matmul::matmul_f64`]), as `num`
/// says otherwise — scaling, epilogue (its functions as `num` says), output quantize.
pub(super) fn qmatmul(
    q: &QMatMul,
    mut args: std::vec::IntoIter<Arc<Tensor>>,
    outs: &[OutType],
    num: Numerics,
) -> Result<Vec<Tensor>, String> {
    let acc = num.acc;
    let mut next = || args.next().ok_or_else(|| "missing operand".to_string());
    let (a, mut b) = (next()?, next()?);
    if let Some(spec) = &q.b_dequant {
        let qparams = (0..spec.extra_inputs()).map(|_| next()).collect::<Result<Vec<_>, _>>()?;
        let to = OutType { dtype: a.dtype, shape: b.shape.clone() };
        b = Arc::new(quant::dequantize(spec, b, qparams, &to)?);
    }
    let shape = outs[0].shape.clone();
    let acc_ty = OutType { dtype: DType::F32, shape: shape.clone() };
    let sums = match a.dtype {
        DType::I8 | DType::U8 => matmul::matmul_f64(&a, &b, false, q.transpose_b, &acc_ty)?,
        _ => matmul::matmul(&a, &b, false, q.transpose_b, &acc_ty, acc)?,
    };
    let a_scale = if q.a_scale { Some(next()?) } else { None };
    let b_scale = if q.b_scale { Some(next()?) } else { None };
    let mut y = Arc::new(scale(sums, q.alpha, a_scale.as_deref(), b_scale.as_deref(), q.acc_dtype)?);
    for step in &q.epilogue {
        let out = OutType { dtype: step.dtype, shape: shape.clone() };
        y = Arc::new(match step.op {
            EpilogueOp::Cast => elementwise::cast(y, &out),
            EpilogueOp::Add => elementwise::binary(BinaryOp::Add, y, next()?, &out)?,
            EpilogueOp::Mul => elementwise::binary(BinaryOp::Mul, y, next()?, &out)?,
            EpilogueOp::Unary(u) => elementwise::unary(u, y, &out, num.perturb)?,
        });
    }
    match &q.output {
        Some(spec) => quant::quantize(spec, y, vec![], outs),
        None => Ok(vec![Arc::try_unwrap(y).unwrap_or_else(|shared| (*shared).clone())]),
    }
}

/// `attention`: per batch and head, `softmax(round(round(round(q·kᵀ)·scale) + mask))·v`, rounded to
/// T at each step, computed exactly as the unfused graph does: `reshape` to `[B,S,H,D]`,
/// `transpose` to `[B,H,S,D]`, `matmul` (`transpose_b`), `mul` by the scalar, `add` of the mask
/// reshaped to `[B,1,1,S]`, `softmax` over the keys, `matmul` with v, `transpose` and `reshape`
/// back to `[B,S,H·D]`, then the optional output quantize. With `fp8`, the two products are the
/// unfused `qmatmul`s (f32 sums of the codes' values, times `qk_alpha` / `pv_alpha`, cast to T)
/// and the probabilities are quantized per tensor to E4M3 before P·V.
pub(super) fn attention(
    a: &Attention,
    args: std::vec::IntoIter<Arc<Tensor>>,
    outs: &[OutType],
    num: Numerics,
) -> Result<Vec<Tensor>, String> {
    let acc = num.acc;
    let mut f = attention_front(a, args, num, false)?;
    let p32 = std::mem::replace(&mut f.p32, Arc::new(Tensor::f32(vec![0], vec![])));
    let probs = f.round_probs(a, p32)?;
    let pv_alpha = a.fp8.map(|f| f.pv_alpha);
    let ctx = attention_product(&probs, &f.vh, false, pv_alpha, &f.ty(vec![f.b, f.heads, f.s, f.d]), acc)?;
    drop(probs);
    let y = f.merge_heads(ctx)?;
    match &a.output {
        Some(spec) => quant::quantize(spec, Arc::new(y), vec![], outs),
        None => Ok(vec![y]),
    }
}

/// What `attention` computes before rounding the probabilities: the shapes, the compute dtype T,
/// the probabilities in f32 (the softmax before its rounding to T) and v split into heads.
struct AttentionFront {
    b: usize,
    s: usize,
    heads: usize,
    d: usize,
    dtype: DType,
    p32: Arc<Tensor>,
    vh: Tensor,
    /// The final scores `[B, H, S, S]` (T values), when asked for.
    scores: Option<Tensor>,
}

impl AttentionFront {
    fn ty(&self, shape: Vec<usize>) -> OutType {
        OutType { dtype: self.dtype, shape }
    }

    /// The probabilities as the product P·V takes them: rounded to T and, with `fp8`, quantized
    /// per tensor to E4M3. Monotone in each element of `p32`.
    fn round_probs(&self, a: &Attention, p32: Arc<Tensor>) -> Result<Tensor, String> {
        let shape = vec![self.b, self.heads, self.s, self.s];
        let probs = elementwise::cast(p32, &self.ty(shape.clone()));
        match &a.fp8 {
            Some(f) => {
                let spec = QuantSpec::per_tensor(DType::F8E4M3, f.p_scale);
                let codes = OutType { dtype: DType::F8E4M3, shape };
                Ok(quant::quantize(&spec, Arc::new(probs), vec![], &[codes])?.remove(0))
            }
            None => Ok(probs),
        }
    }

    /// `[B, H, S, D]` back to `[B, S, H·D]`.
    fn merge_heads(&self, ctx: Tensor) -> Result<Tensor, String> {
        let ty = |shape: Vec<usize>| OutType { dtype: ctx.dtype, shape };
        let ctx = shape::transpose(&ctx, &[0, 2, 1, 3], &ty(vec![self.b, self.s, self.heads, self.d]))?;
        shape::reshape(Arc::new(ctx), &ty(vec![self.b, self.s, self.heads * self.d]))
    }
}

/// `x` (`[B, S, H·D]`) split into heads, `[B, H, S, D]`.
fn split_heads(x: Arc<Tensor>, b: usize, s: usize, heads: usize, d: usize) -> Result<Tensor, String> {
    let operand = |shape: Vec<usize>| OutType { dtype: x.dtype, shape };
    let r = shape::reshape(x.clone(), &operand(vec![b, s, heads, d]))?;
    shape::transpose(&r, &[0, 2, 1, 3], &operand(vec![b, heads, s, d]))
}

/// `attention` up to the softmax, which stays in f32 (the softmax rounds f32 → T, so casting
/// these to T is bit-identical to a softmax into T); products and softmax as `num` says; with
/// `keep_scores`, the final scores too.
fn attention_front(
    a: &Attention,
    mut args: std::vec::IntoIter<Arc<Tensor>>,
    num: Numerics,
    keep_scores: bool,
) -> Result<AttentionFront, String> {
    let acc = num.acc;
    let mut next = || args.next().ok_or_else(|| "missing operand".to_string());
    let (q, k, v) = (next()?, next()?, next()?);
    let mask = if a.mask { Some(next()?) } else { None };
    let dtype = a.fp8.map_or(q.dtype, |f| f.compute);
    let &[b, s, width] = q.shape.as_slice() else { return Err(format!("q must be [B, S, H·D], got {:?}", q.shape)) };
    let heads = a.heads as usize;
    if heads == 0 || width % heads != 0 {
        return Err(format!("{width} is not a multiple of {heads} heads"));
    }
    let d = width / heads;
    let ty = |shape: Vec<usize>| OutType { dtype, shape };
    let split = |x: Arc<Tensor>| split_heads(x, b, s, heads, d);
    let (qh, kh, vh) = (split(q)?, split(k)?, split(v)?);
    let scores_ty = ty(vec![b, heads, s, s]);
    let qk_alpha = a.fp8.map(|f| f.qk_alpha);
    let mut scores = Arc::new(attention_product(&qh, &kh, true, qk_alpha, &scores_ty, acc)?);
    drop((qh, kh));
    if let Some(scale) = a.scale {
        let c = Arc::new(elementwise::scalar(f64::from(scale), &ty(vec![])));
        scores = Arc::new(elementwise::binary(BinaryOp::Mul, scores, c, &scores_ty)?);
    }
    if let Some(m) = mask {
        let m = Arc::new(shape::reshape(m, &ty(vec![b, 1, 1, s]))?);
        scores = Arc::new(elementwise::binary(BinaryOp::Add, scores, m, &scores_ty)?);
    }
    let kept = keep_scores.then(|| (*scores).clone());
    let p32 = Arc::new(reduce::softmax_with(scores, -1, &OutType { dtype: DType::F32, shape: vec![b, heads, s, s] }, num.perturb)?);
    Ok(AttentionFront { b, s, heads, d, dtype, p32, vh, scores: kept })
}

/// Documented maximum error of CUDA's single-precision `expf`, in ulps (CUDA C++ Programming
/// Guide, "Mathematical Functions", table of single-precision functions: `expf` 2 ulp over the
/// full range; `__expf` is not used: plans compile without `--use_fast_math`).
pub const CUDA_EXPF_ULP: f64 = 2.0;

/// The host `expf` the interpreter's softmax calls (glibc: < 1 ulp).
const HOST_EXPF_ULP: f64 = 1.0;

/// A bound on the relative difference between the GPU's f32 probability and the interpreter's,
/// for a softmax over `s` keys: both numerators carry their `expf` error; the denominator sums
/// `s` such terms in f32 (≤ (s − 1)·2^-24 relative in any order), rescaled by another `expf`
/// once per 64-key tile (online softmax); then a correctly rounded division and the
/// interpreter's rounding of its f64 quotient to f32 (2^-24 each). First order in u = 2^-23:
/// `ε_p = u·(2·(2 + 1) + 2·⌈s/64⌉) + 2^-24·(s + 1)` — about 8.9e-6 at s = 128.
pub fn softmax_relative_bound(s: usize) -> f64 {
    let u = f64::powi(2.0, -23);
    let tiles = s.div_ceil(64) as f64;
    u * (2.0 * (CUDA_EXPF_ULP + HOST_EXPF_ULP) + CUDA_EXPF_ULP * tiles) + f64::powi(2.0, -24) * (s as f64 + 1.0)
}

/// A bound on the relative error of an f32 sum of `n` products in any order, the tensor cores'
/// (which may truncate) included, relative to the sum of the products' magnitudes, with one more
/// f32 rounding for an `alpha` multiply: `(n + 2)·2^-23`.
pub fn f32_sum_bound(n: usize) -> f64 {
    (n as f64 + 2.0) * f64::powi(2.0, -23)
}

/// For an `attention` whose output is quantized: per output element, the lowest and the highest
/// code the GPU can produce given the transcendental (`expf`) error of its softmax and the order
/// of its f32 sums ([`softmax_relative_bound`], [`f32_sum_bound`]); `None` without an output
/// quantize. Each probability is moved by ±ε_p before the same rounding [`attention`] applies
/// (T, and E4M3 with `fp8`), giving `Δp_ij` (zero unless the rounding sits on a near-tie); then
/// `|Δo| ≤ α·(Σ_j Δp_ij·|v_jd| + γ·Σ_j |P_ij·v_jd|)` around the exact `α·Σ_j P_ij·v_jd`, rounded
/// to T at both ends and quantized with the node's own output quantize (monotone).
pub(super) fn attention_code_window(
    a: &Attention,
    args: std::vec::IntoIter<Arc<Tensor>>,
    outs: &[OutType],
    num: Numerics,
) -> Result<Option<(Tensor, Tensor)>, String> {
    let Some(spec) = &a.output else { return Ok(None) };
    let f = attention_front(a, args, num, false)?;
    let eps = softmax_relative_bound(f.s);
    let gamma = f32_sum_bound(f.s);
    let moved = |factor: f64| -> Result<Vec<f32>, String> {
        let mut t = (*f.p32).clone();
        let crate::interp::tensor::TensorData::F32(data) = &mut t.data else { return Err("probabilities are not float".into()) };
        data.iter_mut().for_each(|p| *p = (f64::from(*p) * factor) as f32);
        Ok(f.round_probs(a, Arc::new(t))?.to_f32_vec())
    };
    let (low, high) = (moved(1.0 - eps)?, moved(1.0 + eps)?);
    let probs = f.round_probs(a, f.p32.clone())?.to_f32_vec();
    let v = f.vh.to_f32_vec();
    let alpha = a.fp8.map_or(1.0, |f| f64::from(f.pv_alpha));
    let (s, d) = (f.s, f.d);
    let n = f.b * f.heads * s * d;
    let (mut lo, mut hi) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for bh in 0..f.b * f.heads {
        for i in 0..s {
            let row = (bh * s + i) * s;
            for c in 0..d {
                let (mut centre, mut dev, mut mag) = (0f64, 0f64, 0f64);
                for j in 0..s {
                    let (p, x) = (f64::from(probs[row + j]), f64::from(v[(bh * s + j) * d + c]));
                    let dp = (f64::from(low[row + j]) - p).abs().max((f64::from(high[row + j]) - p).abs());
                    centre += p * x;
                    dev += dp * x.abs();
                    mag += (p * x).abs();
                }
                let bound = dev + gamma * mag;
                lo.push(((centre - bound) * alpha) as f32);
                hi.push(((centre + bound) * alpha) as f32);
            }
        }
    }
    let shape = vec![f.b, f.heads, s, d];
    let end = |xs: Vec<f32>| -> Result<Tensor, String> {
        let y = f.merge_heads(Tensor::from_f32_as(f.dtype, shape.clone(), xs))?;
        Ok(quant::quantize(spec, Arc::new(y), vec![], outs)?.remove(0))
    };
    let (lo, hi) = (end(lo)?, end(hi)?);
    Ok(Some(order_pair(lo, hi)))
}

/// Element-wise min and max of two same-shaped tensors (a negative scale reverses the order).
fn order_pair(a: Tensor, b: Tensor) -> (Tensor, Tensor) {
    let (x, y) = (a.to_f32_vec(), b.to_f32_vec());
    let lo = x.iter().zip(&y).map(|(&p, &q)| p.min(q)).collect();
    let hi = x.iter().zip(&y).map(|(&p, &q)| p.max(q)).collect();
    (Tensor::from_f32_as(a.dtype, a.shape.clone(), lo), Tensor::from_f32_as(b.dtype, b.shape.clone(), hi))
}

/// For an `attention` whose output is quantized, computed by the interpreter as `out` from
/// `args`: per output element, the lowest and highest code it takes when scores round the other
/// way (see `crate::interp::score_flip_window`). A score can: the GPU sums `q·k` in its own f32
/// order, which moves the sum by at most `f32_sum_bound(D)·Σ_d|q_d·k_d|` (any order, tensor-core
/// truncation included), so where T's rounding of the sum's ends (times `qk_alpha` with `fp8`),
/// carried through the scale and mask roundings, differs from the reference's final score, that
/// other final score is a *flip*. Per query row with flips, candidates of each output element
/// are recomputed through the rest of the pipeline exactly as [`attention`] rounds it (softmax,
/// T, the probabilities' E4M3 with `fp8`, P·V summed in f64, T, the output quantize): the row
/// without flips, each flip alone, and for each element the flips that raise it (lower it)
/// together. Elements of rows without flips get the reference code alone.
pub(crate) fn score_flip_window(a: &Attention, args: Vec<Arc<Tensor>>, out: &Tensor) -> Result<Option<(Tensor, Tensor)>, String> {
    let Some(spec) = &a.output else { return Ok(None) };
    if args.len() != a.arity() {
        return Err(format!("takes {} operand(s), got {}", a.arity(), args.len()));
    }
    let f = attention_front(a, args.clone().into_iter(), Numerics::default(), true)?;
    let scores = f.scores.as_ref().ok_or("internal: scores not kept")?.to_f32_vec();
    let split = |x: &Arc<Tensor>| split_heads(x.clone(), f.b, f.s, f.heads, f.d).map(|t| t.to_f32_vec());
    let (q, k) = (split(&args[0])?, split(&args[1])?);
    let mask = if a.mask { Some(args[3].to_f32_vec()) } else { None };
    let row = FlipRow { a, dtype: f.dtype, s: f.s, d: f.d };
    let (lo, hi, flipped) = row.all_candidates(&f, &scores, (&q, &k), mask.as_deref());
    let shape = vec![f.b, f.heads, f.s, f.d];
    let outs = [OutType { dtype: out.dtype, shape: out.shape.clone() }];
    let end = |xs: Vec<f32>| -> Result<Vec<f32>, String> {
        let y = f.merge_heads(Tensor::from_f32_as(f.dtype, shape.clone(), xs))?;
        Ok(quant::quantize(spec, Arc::new(y), vec![], &outs)?.remove(0).to_f32_vec())
    };
    let flipped =
        f.merge_heads(Tensor::from_f32_as(DType::F32, shape.clone(), flipped.iter().map(|&x| f32::from(u8::from(x))).collect()))?;
    let (flipped, reference) = (flipped.to_f32_vec(), out.to_f32_vec());
    // Elements of rows without a flip: the reference code alone.
    let pick = |xs: Vec<f32>| -> Tensor {
        let ys = flipped.iter().zip(xs).zip(&reference).map(|((&m, x), &r)| if m > 0.0 { x } else { r }).collect();
        Tensor::from_f32_as(out.dtype, out.shape.clone(), ys)
    };
    let (lo, hi) = (pick(end(lo)?), pick(end(hi)?));
    Ok(Some(order_pair(lo, hi)))
}

/// One query row of an `attention` for [`score_flip_window`]: its pipeline after the scores.
struct FlipRow<'a> {
    a: &'a Attention,
    dtype: DType,
    s: usize,
    d: usize,
}

impl FlipRow<'_> {
    /// Over every query row of `f` (`[B, H, S, ·]` order): the lowest and highest candidate of
    /// each output element (T values, [`FlipRow::candidates`]) and whether its row has flips
    /// (elsewhere both are 0). `scores` are the final scores, `qk` the heads of q and k, `mask`
    /// the `[B, S]` bias.
    fn all_candidates(
        &self,
        f: &AttentionFront,
        scores: &[f32],
        qk: (&[f32], &[f32]),
        mask: Option<&[f32]>,
    ) -> (Vec<f32>, Vec<f32>, Vec<bool>) {
        let (s, d) = (f.s, f.d);
        let v = f.vh.to_f32_vec();
        let n = f.b * f.heads * s * d;
        let (mut lo, mut hi, mut flipped) = (vec![0f32; n], vec![0f32; n], vec![false; n]);
        for bh in 0..f.b * f.heads {
            let bias = mask.map(|m| &m[(bh / f.heads) * s..][..s]);
            let (k, vs) = (&qk.1[bh * s * d..][..s * d], &v[bh * s * d..][..s * d]);
            for i in 0..s {
                let (row, at) = (&scores[(bh * s + i) * s..][..s], (bh * s + i) * d);
                let flips = self.flips(&qk.0[at..at + d], k, row, bias);
                if flips.is_empty() {
                    continue;
                }
                let (l, h) = self.candidates(row, &flips, vs);
                lo[at..at + d].copy_from_slice(&l);
                hi[at..at + d].copy_from_slice(&h);
                flipped[at..at + d].iter_mut().for_each(|x| *x = true);
            }
        }
        (lo, hi, flipped)
    }

    /// The final score of a `q·k` sum `sum` at key `j`, rounded as [`attention`] rounds it:
    /// `T(T(T(f32(sum)·qk_alpha)·scale) + bias_j)`.
    fn final_score(&self, sum: f64, j: usize, bias: Option<&[f32]>) -> f32 {
        let mut x = sum as f32;
        if let Some(f) = &self.a.fp8 {
            x *= f.qk_alpha;
        }
        x = cast(x, self.dtype);
        if let Some(scale) = self.a.scale {
            x = cast(x * cast(scale, self.dtype), self.dtype);
        }
        if let Some(m) = bias {
            x = cast(x + cast(m[j], self.dtype), self.dtype);
        }
        x
    }

    /// The flips of one row (`(key, other final score)`): where the ends of the f32 sum's range
    /// round to a final score other than the reference's `scores[j]`.
    fn flips(&self, q: &[f32], k: &[f32], scores: &[f32], bias: Option<&[f32]>) -> Vec<(usize, f32)> {
        let gamma = f32_sum_bound(self.d);
        let mut flips = Vec::new();
        for (j, &reference) in scores.iter().enumerate() {
            let kj = &k[j * self.d..][..self.d];
            let (sum, mag) = q.iter().zip(kj).fold((0f64, 0f64), |(s, m), (&x, &y)| {
                let p = f64::from(x) * f64::from(y);
                (s + p, m + p.abs())
            });
            for end in [sum - gamma * mag, sum + gamma * mag] {
                let other = self.final_score(end, j, bias);
                if reference.is_finite() && other.is_finite() && other != reference && !flips.contains(&(j, other)) {
                    flips.push((j, other));
                }
            }
        }
        flips
    }

    /// The probabilities P·V takes, from a row of final scores: the softmax, T, and with `fp8`
    /// the probabilities' E4M3 quantize (a true division by `p_scale`).
    fn probs(&self, scores: &[f32]) -> Vec<f32> {
        let mut p = scores.to_vec();
        reduce::softmax_strided(&mut p, self.s, 1, None);
        for x in &mut p {
            *x = cast(*x, self.dtype);
            if let Some(f) = &self.a.fp8 {
                *x = cast(*x / f.p_scale, DType::F8E4M3);
            }
        }
        p
    }

    /// Element `c` of the row's output before its roundings: `Σ_j p_j·v_jc` in f64.
    fn sum(&self, p: &[f32], v: &[f32], c: usize) -> f64 {
        p.iter().enumerate().map(|(j, &pj)| f64::from(pj) * f64::from(v[j * self.d + c])).sum()
    }

    /// The output element (T, before the output quantize) of a sum: to f32, times `pv_alpha`
    /// with `fp8`, to T.
    fn round(&self, sum: f64) -> f32 {
        let mut y = sum as f32;
        if let Some(f) = &self.a.fp8 {
            y *= f.pv_alpha;
        }
        cast(y, self.dtype)
    }

    /// `scores` with `flips` applied.
    fn with(scores: &[f32], flips: &[(usize, f32)]) -> Vec<f32> {
        let mut s = scores.to_vec();
        flips.iter().for_each(|&(j, x)| s[j] = x);
        s
    }

    /// Per output element of the row, the smallest and largest candidate (T values): no flip,
    /// each flip alone, and the flips that raise (lower) the element's sum together (per key,
    /// its flip that moves the sum furthest that way).
    fn candidates(&self, scores: &[f32], flips: &[(usize, f32)], v: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let sums = |p: &[f32]| (0..self.d).map(|c| self.sum(p, v, c)).collect::<Vec<f64>>();
        let base = sums(&self.probs(scores));
        let single: Vec<Vec<f64>> = flips.iter().map(|&f| sums(&self.probs(&Self::with(scores, &[f])))).collect();
        let (mut lo, mut hi): (Vec<f32>, Vec<f32>) =
            (base.iter().map(|&x| self.round(x)).collect(), base.iter().map(|&x| self.round(x)).collect());
        for c in 0..self.d {
            let mut include = |y: f32| {
                lo[c] = lo[c].min(y);
                hi[c] = hi[c].max(y);
            };
            single.iter().for_each(|o| include(self.round(o[c])));
            for up in [true, false] {
                let together = Self::extreme(flips, &single, &base, c, up);
                if together.len() > 1 {
                    include(self.round(self.sum(&self.probs(&Self::with(scores, &together)), v, c)));
                }
            }
        }
        (lo, hi)
    }

    /// Per key, the flip that moves element `c` furthest up (`up`) or down, if it moves it that
    /// way at all.
    fn extreme(flips: &[(usize, f32)], single: &[Vec<f64>], base: &[f64], c: usize, up: bool) -> Vec<(usize, f32)> {
        let mut best: Vec<((usize, f32), f64)> = Vec::new();
        for (&flip, o) in flips.iter().zip(single) {
            let gain = if up { o[c] - base[c] } else { base[c] - o[c] };
            if gain <= 0.0 {
                continue;
            }
            match best.iter_mut().find(|((j, _), _)| *j == flip.0) {
                Some(b) if b.1 < gain => *b = (flip, gain),
                Some(_) => {}
                None => best.push((flip, gain)),
            }
        }
        best.into_iter().map(|(f, _)| f).collect()
    }
}

/// One batched product of `attention`: a `matmul` rounded to `out.dtype`, or with `alpha` (FP8
/// operands) a `qmatmul`: f32 sums, times `alpha`, cast to `out.dtype`.
fn attention_product(
    x: &Tensor,
    y: &Tensor,
    transpose_b: bool,
    alpha: Option<f32>,
    out: &OutType,
    acc: Accumulation,
) -> Result<Tensor, String> {
    let Some(alpha) = alpha else { return matmul::matmul(x, y, false, transpose_b, out, acc) };
    let sums = matmul::matmul(x, y, false, transpose_b, &OutType { dtype: DType::F32, shape: out.shape.clone() }, acc)?;
    Ok(elementwise::cast(Arc::new(scale(sums, alpha, None, None, DType::F32)?), out))
}

/// `embed_layernorm`: `x = (word[ids] + pos[iota(S)]) + type[type_ids]`, each sum rounded to `via`
/// (the importer's `gather`, `iota`, `gather`, `add`, `gather`, `add`), then exactly `layernorm`
/// or `layernorm_quantize`.
pub(super) fn embed_layernorm(
    e: &EmbedLayerNorm,
    mut args: std::vec::IntoIter<Arc<Tensor>>,
    outs: &[OutType],
) -> Result<Vec<Tensor>, String> {
    let mut next = || args.next().ok_or_else(|| "missing operand".to_string());
    let (ids, type_ids, word, pos, types, gamma, beta) = (next()?, next()?, next()?, next()?, next()?, next()?, next()?);
    let &[b, s] = ids.shape.as_slice() else { return Err(format!("ids must be [B, S], got {:?}", ids.shape)) };
    let &[_, h] = word.shape.as_slice() else { return Err(format!("the word table must be [V, H], got {:?}", word.shape)) };
    let ty = |shape: Vec<usize>| OutType { dtype: e.via, shape };
    let w = shape::gather(&word, &ids, &ty(vec![b, s, h]))?;
    let positions = elementwise::iota(&OutType { dtype: DType::I64, shape: vec![s] })?;
    let p = shape::gather(&pos, &positions, &ty(vec![s, h]))?;
    let t = shape::gather(&types, &type_ids, &ty(vec![b, s, h]))?;
    let wp = elementwise::binary(BinaryOp::Add, Arc::new(w), Arc::new(p), &ty(vec![b, s, h]))?;
    let x = Arc::new(elementwise::binary(BinaryOp::Add, Arc::new(wp), Arc::new(t), &ty(vec![b, s, h]))?);
    match &e.quant {
        None => Ok(vec![norm::layer_norm(x, &gamma, Some(&*beta), e.eps, &outs[0])?]),
        Some(spec) => {
            let rest: Vec<Arc<Tensor>> = [x, gamma, beta].into_iter().chain(args).collect();
            norm_quantize(NormKind::LayerNorm, e.eps, e.via, spec, e.keep_normed, rest.into_iter(), outs)
        }
    }
}

/// `acc·alpha·a_scale[row]·b_scale[col]`, rounded to `dtype`.
fn scale(
    mut acc: Tensor,
    alpha: f32,
    a_scale: Option<&Tensor>,
    b_scale: Option<&Tensor>,
    dtype: crate::ir::DType,
) -> Result<Tensor, String> {
    let n = *acc.shape.last().ok_or("qmatmul result has rank 0")?;
    let rows = a_scale.map(|t| t.as_f32().ok_or("a_scale is not float")).transpose()?;
    let cols = b_scale.map(|t| t.as_f32().ok_or("b_scale is not float")).transpose()?;
    let crate::interp::tensor::TensorData::F32(data) = &mut acc.data else { return Err("qmatmul accumulator is not float".into()) };
    for (r, row) in data.chunks_mut(n).enumerate() {
        let row_scale = rows.map_or(1.0, |s| s[r]);
        for (c, y) in row.iter_mut().enumerate() {
            let mut v = *y * alpha;
            if rows.is_some() {
                v *= row_scale;
            }
            if let Some(s) = cols {
                v *= s[c];
            }
            *y = v;
        }
    }
    crate::numerics::cast_slice(data, dtype);
    acc.dtype = dtype;
    Ok(acc)
}
