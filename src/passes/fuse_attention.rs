//! `fuse-attention`: the importer's multi-head attention — head split, `Q·Kᵀ`, scaling, mask,
//! softmax, `P·V`, head merge and the context's static output quantize — becomes one `attention`
//! node, so the `[B, H, S, S]` scores never reach memory and codegen sees one kernel.
//!
//! ```text
//! before:
//!   %4 = reshape %q : f16[B,S,12,32]
//!   %5 = transpose %4 {perm=[0,2,1,3]} : f16[B,12,S,32]
//!   %6 = reshape %k : f16[B,S,12,32]
//!   %7 = transpose %6 {perm=[0,2,1,3]} : f16[B,12,S,32]
//!   %8 = matmul %5, %7 {transpose_b} : f16[B,12,S,S] loc("L.matmul0")
//!   %9 = scalar 0.1767578125 : f16[]
//!   %10 = mul %8, %9 : f16[B,12,S,S]
//!   %11 = reshape %m : f16[B,1,1,S]
//!   %12 = add %10, %11 : f16[B,12,S,S]
//!   %13 = softmax %12 {axis=-1} : f16[B,12,S,S]
//!   %14 = reshape %v : f16[B,S,12,32]
//!   %15 = transpose %14 {perm=[0,2,1,3]} : f16[B,12,S,32]
//!   %16 = matmul %13, %15 : f16[B,12,S,32] loc("L.matmul1")
//!   %17 = quantize %16 {f8e4m3, per_tensor, scale=0.007} : f8e4m3[B,12,S,32] loc("O:a.q")
//!   %18 = transpose %17 {perm=[0,2,1,3]} : f8e4m3[B,S,12,32]
//!   %19 = reshape %18 : f8e4m3[B,S,384] loc("L")
//! after:
//!   %19 = attention %q, %k, %v {heads=12, scale=0.1767578125, mask=%m, out=f8e4m3, out_scale=0.007} : f8e4m3[B,S,384] loc("L")
//! ```
//!
//! With `--fp8-attention` q, k and v are E4M3 codes (`f8e4m3[B,S,384]`, split as above), both
//! products are `qmatmul`s and the probabilities are quantized between them:
//!
//! ```text
//! before:
//!   %8 = qmatmul %5, %7 {transpose_b, alpha=0.00082239875, acc=f32, epilogue=[cast(f16)]} : f16[B,12,S,S] loc("L.matmul0")
//!   ... (mul, add of the mask, softmax as above)
//!   %14 = quantize %13 {f8e4m3, per_tensor, scale=0.002232143} : f8e4m3[B,12,S,S] loc("L.matmul1:a.q")
//!   %16 = qmatmul %14, %15 {alpha=1.8187933e-5, acc=f32, epilogue=[cast(f16)], out=f8e4m3, out_scale=0.007} : f8e4m3[B,12,S,32] loc("L.matmul1")
//!   %17 = transpose %16 {perm=[0,2,1,3]} : f8e4m3[B,S,12,32]
//!   %18 = reshape %17 : f8e4m3[B,S,384] loc("L")
//! after:
//!   %18 = attention %q, %k, %v {heads=12, scale=0.17675781, mask=%m, fp8(qk_alpha=0.00082239875,p_scale=0.002232143,pv_alpha=1.8187933e-5,via=f16), out=f8e4m3, out_scale=0.007} : f8e4m3[B,S,384] loc("L")
//! ```
//!
//! Rule `attention`, anchored at a `softmax`: `reshape(transpose(matmul(softmax(add(mul(matmul(
//! split(q), split(k)ᵀ), c), reshape(m))), split(v)), [0,2,1,3]))` ⇒ `attention(q, k, v, m)`, where
//! `split(x) = transpose(reshape(x : T[B,S,H·D] → [B,S,H,D]), [0,2,1,3])`, T ∈ {f16, bf16} (x is
//! `f8e4m3` under FP8, last item):
//! - the `mul` by a `scalar` `c` (either operand order) is optional and gives `scale` (c as the
//!   interpreter reads it, rounded to T, so exactly representable);
//! - the `add` (either operand order) of a `T[B,S]` mask `m` reshaped to `[B,1,1,S]` is optional and
//!   gives the mask operand; the mask reshape may be shared (one per model);
//! - one per-tensor quantize with a literal scale and no zero point, before the transpose, between
//!   transpose and reshape, or reading the reshape, becomes `output` (it commutes with moving
//!   elements). `propagate-qdq` leaves the recipe's context quantize right after `P·V`.
//! - FP8 (`fp8`): q, k, v are `f8e4m3`; `Q·Kᵀ` is a `qmatmul {transpose_b, alpha, acc=f32,
//!   epilogue=[cast(T)]}` (`qk_alpha`); the softmax is read only by a `quantize {f8e4m3,
//!   per_tensor, scale=p_scale}` (absorbed, reported fused), read only by `P·V`, a `qmatmul {alpha,
//!   acc=f32, epilogue=[cast(T)]}` (`pv_alpha`) whose own `out=…, out_scale=…`, if any, is the
//!   `output` (then no quantize may follow on the layout chain).
//!
//! Exact: `attention` is defined (and interpreted) as exactly this chain, kernel by kernel; a
//! per-tensor literal quantize is element-wise, so where it sat in the layout chain changes nothing.
//!
//! Preconditions, each a decline: T is f16 or bf16; both products are `matmul`s, or both are
//! `qmatmul`s over E4M3 × E4M3 without scale vectors or `b_dequant`, with `acc=f32`, an epilogue of
//! exactly `cast(T)`, a positive finite `alpha`, and no output quantize on `Q·Kᵀ`; the
//! probabilities' quantize is E4M3, per tensor, with a positive literal scale and no zero point;
//! `Q·Kᵀ` uses `transpose_b` and `P·V` reads the softmax (or its quantize) as `a`; the softmax runs
//! over the last (key) axis; q, k and v have one type and one head split, with perm `[0,2,1,3]`;
//! the scale is a `scalar`; the mask is `[B,S]` with q's `B` and `S`; and every value of the chain
//! (the splits, scores, probabilities and their codes, context and its layout chain) has exactly
//! one live reader and is not a graph output — otherwise both copies would stay.
//! Under FP8 the report's entries fused into the two `qmatmul`s now read "fused into attention".
//! Declines are recorded on the Q/DQ nodes around the attention (the softmax-output quantize of
//! FP8 attention, the context's quantize) and traced; without such nodes there is no report entry.
//! A quantize reading the fused result that cannot join (a dynamic per-token scale, under
//! `fp8-dynamic`) stays standalone with the reason.
//!
//! Idempotent: the fused node is not a softmax. Readers are counted among live nodes only
//! (`dce::live_users`), so the shared mask reshape and scale scalar die with the last attention; a
//! changed graph is compacted.
//!
//! Interacting passes: after `propagate-qdq` (which moves the context quantize next to `P·V`),
//! `fuse-dq-matmul` (which makes FP8 `Q·Kᵀ` and `P·V` `qmatmul`s) and `fuse-epilogue` (which ends
//! the Q/K/V projections at their bias adds, with their E4M3 output quantizes under FP8, and gives
//! FP8 `P·V` the context quantize); the trailing `cse`/`dce` clean up.

use super::dce::output_uses;
use super::dce::Users;
use super::rule::{self, Applied, Found};
use super::{loc, Pass, PassCx, PassError};
use crate::ir::{
    normalize_axis, Attention, AttentionFp8, BinaryOp, Builder, DType, Dim, EpilogueOp, EpilogueStep, Granularity, Graph, NodeId, Op,
    QMatMul, QuantSpec, ScaleSource, ValueId,
};

/// `fuse-attention`.
pub struct FuseAttention;

impl Pass for FuseAttention {
    fn name(&self) -> &'static str {
        "fuse-attention"
    }

    fn run(&self, g: &mut Graph, cx: &mut PassCx) -> Result<bool, PassError> {
        // (FP8 product, attention) locs: what fused into those qmatmuls is now in the attention.
        let mut absorbed = vec![];
        let changed = rule::run(g, cx, "attention", match_attention, |g, _, f: Fusion| {
            let node = apply_attention(g, &f)?;
            absorbed.extend(f.products.iter().map(|&p| (loc(g, p), loc(g, node))));
            Ok(Applied { node, into: "attention", fused: f.fused, declined: f.declines })
        })?;
        for (product, attention) in absorbed {
            cx.report.refused("qmatmul", &product, "attention", &attention);
        }
        Ok(changed)
    }
}

/// An attention chain and what replaces it.
struct Fusion {
    op: Attention,
    /// `q, k, v[, mask]`.
    inputs: Vec<ValueId>,
    /// The absorbed quantizes (the probabilities' under FP8, the context's).
    fused: Vec<NodeId>,
    /// The absorbed `qmatmul`s (FP8 `Q·Kᵀ` and `P·V`), whose report entries move to the attention.
    products: Vec<NodeId>,
    /// The value the fused node replaces (the final reshape, or the absorbed quantize).
    last: ValueId,
    /// The loc of the fused node: the final reshape's.
    name: Option<String>,
    /// Quantizes reading the result that stay standalone, and why.
    declines: Vec<(NodeId, String)>,
}

/// The scores side of the chain, from the softmax's operand up to `Q·Kᵀ`.
struct Scores {
    product: NodeId,
    /// The `mul`'s scalar node.
    scale: Option<NodeId>,
    /// The `add`'s mask operand (the `[B,1,1,S]` value).
    mask: Option<ValueId>,
    /// The values between the product and the softmax (product, scaled, masked).
    values: Vec<ValueId>,
}

/// `reshape(transpose(matmul(softmax(add(mul(matmul(split(q), split(k)ᵀ), c), reshape(m))),
/// split(v)), [0,2,1,3])) => attention(q, k, v, m){scale = c}`, mul and add optional, with an
/// optional per-tensor literal quantize anywhere on the context's layout chain.
fn match_attention(g: &Graph, users: &Users, id: NodeId) -> Option<Found<Fusion>> {
    let node = &g.nodes[id];
    let Op::Softmax { axis } = node.op else { return None };
    let probs = node.outputs[0];
    let scores = scores_of(g, node.inputs[0])?;
    let decline = |reason: String| {
        let qdqs = nearby_quantizes(g, users, probs);
        Some(Found::Decline(qdqs.into_iter().map(|q| (q, format!("the attention around it does not fuse: {reason}"))).collect()))
    };
    let product = &g.nodes[scores.product];
    let dtype = g.ty(probs).dtype;
    if !matches!(dtype, DType::F16 | DType::BF16) {
        return decline(format!("`attention` computes in f16 or bf16, not {dtype}"));
    }
    let qk_alpha = match &product.op {
        Op::MatMul { transpose_a: false, transpose_b: true } => None,
        Op::QMatMul(qm) if qm.transpose_b => match fp8_product(g, qm, &product.inputs, dtype) {
            Ok(alpha) => Some(alpha),
            Err(e) => return decline(format!("its Q·Kᵀ {e}")),
        },
        _ => return decline("Q·Kᵀ must be a matmul with transpose_b and no transpose_a".into()),
    };
    if g.ty(probs).rank() != 4 || normalize_axis(axis, 4) != Some(3) {
        return decline(format!("the softmax runs over axis {axis}, not over the keys (the last axis of [B,H,S,S])"));
    }
    let Some(pv) = context_product(g, users, probs) else {
        return decline("the softmax's result must be read by P·V only".into());
    };
    let pv = match pv {
        Ok(pv) => pv,
        Err(e) => return decline(e),
    };
    let ctx = pv.node;
    let fp8 = match (qk_alpha, &pv.fp8) {
        (None, None) => None,
        (Some(qk_alpha), Some((p_scale, pv_alpha, _))) => {
            Some(AttentionFp8 { qk_alpha, p_scale: *p_scale, pv_alpha: *pv_alpha, compute: dtype })
        }
        _ => return decline("one of Q·Kᵀ and P·V runs on FP8 operands and the other does not".into()),
    };
    let (q, k, v) = (split(g, users, product.inputs[0]), split(g, users, product.inputs[1]), split(g, users, g.nodes[ctx].inputs[1]));
    let (q, k, v) = match (q, k, v) {
        (Ok(q), Ok(k), Ok(v)) => (q, k, v),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return decline(e),
    };
    if g.ty(q.x) != g.ty(k.x) || g.ty(q.x) != g.ty(v.x) || q.heads != k.heads || q.heads != v.heads {
        return decline("q, k and v differ in type or head split".into());
    }
    let shape = g.shape(q.x).clone();
    if scores.values.iter().any(|&s| !single_reader(g, users, s)) {
        return decline("the scores have other readers".into());
    }
    let scale = match scores.scale {
        None => None,
        Some(c) => match scale_of(g, c, dtype) {
            Some(s) => Some(s),
            None => return decline("the scores are scaled by a value that is not a scalar literal".into()),
        },
    };
    let mask = match scores.mask {
        None => None,
        Some(m4) => match mask_of(g, m4, &shape[..2]) {
            Some(m) => Some(m),
            None => return decline("the mask bias is not a [B,S] value (q's B and S) reshaped to [B,1,1,S]".into()),
        },
    };
    let merged = match merge(g, users, g.nodes[ctx].outputs[0], &shape, pv.output) {
        Ok(m) => m,
        Err(e) => return decline(e),
    };
    let mut inputs = vec![q.x, k.x, v.x];
    inputs.extend(mask);
    let op = Attention { heads: q.heads, scale, mask: mask.is_some(), fp8, output: merged.output };
    let fused = pv.fp8.map(|(_, _, pq)| pq).into_iter().chain(merged.absorbed).collect();
    let products = if fp8.is_some() { vec![scores.product, ctx] } else { vec![] };
    Some(Found::Apply(Fusion { op, inputs, fused, products, last: merged.last, name: merged.name, declines: merged.declines }))
}

/// The `P·V` product reading the probabilities: a `matmul`, or (FP8 attention) a `qmatmul` reading
/// their per-tensor E4M3 quantize.
struct ContextProduct {
    node: NodeId,
    /// FP8: the probabilities' quantize scale, P·V's `alpha` and the quantize node.
    fp8: Option<(f32, f32, NodeId)>,
    /// The qmatmul's own fused output quantize.
    output: Option<QuantSpec>,
}

/// The `P·V` product reading `probs`: a `matmul` of the softmax itself, or (FP8) a `qmatmul` of
/// its quantize; `None` when the softmax has another reader (or one that is neither), an error
/// when the reader is a product or quantize of the wrong form.
fn context_product(g: &Graph, users: &Users, probs: ValueId) -> Option<Result<ContextProduct, String>> {
    let r = sole_reader(g, users, probs)?;
    let reader = &g.nodes[r];
    let spec = match &reader.op {
        Op::MatMul { transpose_a: false, transpose_b: false } if reader.inputs[0] == probs => {
            return Some(Ok(ContextProduct { node: r, fp8: None, output: None }))
        }
        Op::MatMul { .. } | Op::QMatMul(_) => return Some(Err("P·V must read the softmax as `a`, untransposed".into())),
        Op::Quantize(spec) => spec,
        _ => return None,
    };
    let p_scale = match (spec.storage, &spec.granularity, &spec.scale, &spec.zero_point) {
        (DType::F8E4M3, Granularity::PerTensor, ScaleSource::Literal(s), None) if s.is_finite() && *s > 0.0 => *s,
        _ => {
            return Some(
                Err("the probabilities' quantize must be E4M3, per tensor, with a positive literal scale and no zero point".into()),
            )
        }
    };
    let codes = reader.outputs[0];
    let Some(pv) = sole_reader(g, users, codes) else { return Some(Err("the quantized probabilities have other readers".into())) };
    let node = &g.nodes[pv];
    let Op::QMatMul(qm) = &node.op else { return Some(Err("the quantized probabilities must be read by a qmatmul P·V".into())) };
    if qm.transpose_b || node.inputs[0] != codes {
        return Some(Err("P·V must read the probabilities as `a`, untransposed".into()));
    }
    let dtype = g.ty(probs).dtype;
    Some(match fp8_product(g, qm, &node.inputs, dtype) {
        Ok(alpha) => Ok(ContextProduct { node: pv, fp8: Some((p_scale, alpha, r)), output: qm.output.clone() }),
        Err(e) => Err(format!("its P·V {e}")),
    })
}

/// The `alpha` of a batched `qmatmul` over two E4M3 operands that `attention` can take: f32
/// sums scaled by one literal, then `cast(T)`, where T is the softmax's dtype; or why not.
fn fp8_product(g: &Graph, qm: &QMatMul, inputs: &[ValueId], dtype: DType) -> Result<f32, String> {
    let operands = [g.ty(inputs[0]).dtype, g.ty(inputs[1]).dtype];
    if operands != [DType::F8E4M3; 2] {
        return Err(format!("is a qmatmul over {} × {}, not E4M3 × E4M3", operands[0], operands[1]));
    }
    if qm.a_scale || qm.b_scale || qm.b_dequant.is_some() || qm.acc_dtype != DType::F32 {
        return Err("is a qmatmul with scale vectors, weight dequantization or a non-f32 accumulator".into());
    }
    if qm.epilogue.as_slice() != [EpilogueStep { op: EpilogueOp::Cast, dtype }] {
        return Err(format!("is a qmatmul whose epilogue is not exactly cast({dtype})"));
    }
    if qm.transpose_b && qm.output.is_some() {
        return Err("quantizes the scores".into());
    }
    if !(qm.alpha.is_finite() && qm.alpha > 0.0) {
        return Err(format!("is a qmatmul with alpha={:?}, not a positive finite multiplier", qm.alpha));
    }
    Ok(qm.alpha)
}

/// Walks up from the softmax's operand through an optional mask `add` and an optional scale `mul`
/// to the `Q·Kᵀ` product (a `matmul` or `qmatmul`); `None` when the chain is something else.
fn scores_of(g: &Graph, x: ValueId) -> Option<Scores> {
    let mut s = Scores { product: g.values[x].producer, scale: None, mask: None, values: vec![x] };
    let mut cur = x;
    if let (Op::Binary(BinaryOp::Add), [a, b]) = (&g.producer(cur).op, g.producer(cur).inputs.as_slice()) {
        let (score, mask) = if leads_to_product(g, *a) { (*a, *b) } else { (*b, *a) };
        if !leads_to_product(g, score) {
            return None;
        }
        s.mask = Some(mask);
        cur = score;
        s.values.push(cur);
    }
    if let (Op::Binary(BinaryOp::Mul), [a, b]) = (&g.producer(cur).op, g.producer(cur).inputs.as_slice()) {
        let (score, c) = if is_product(g, *a) { (*a, *b) } else { (*b, *a) };
        if !is_product(g, score) {
            return None;
        }
        s.scale = Some(g.values[c].producer);
        cur = score;
        s.values.push(cur);
    }
    if !is_product(g, cur) {
        return None;
    }
    s.product = g.values[cur].producer;
    Some(s)
}

/// `v` is a `matmul` / `qmatmul` result.
fn is_product(g: &Graph, v: ValueId) -> bool {
    matches!(g.producer(v).op, Op::MatMul { .. } | Op::QMatMul(_))
}

/// `v` is a product, or a `mul` of a product.
fn leads_to_product(g: &Graph, v: ValueId) -> bool {
    let node = g.producer(v);
    is_product(g, v) || (matches!(node.op, Op::Binary(BinaryOp::Mul)) && node.inputs.iter().any(|&i| is_product(g, i)))
}

/// One side of the head split: `transpose(reshape(x : T[B,S,H·D] → [B,S,H,D]), [0,2,1,3])`.
struct Split {
    x: ValueId,
    heads: u32,
}

/// The value `t` is the head split of, or why it is not one.
fn split(g: &Graph, users: &Users, t: ValueId) -> Result<Split, String> {
    let transpose = g.producer(t);
    let not_split = || "q, k and v must each be split into heads by reshape [B,S,H·D] → [B,S,H,D] and transpose [0,2,1,3]".to_string();
    let Op::Transpose { perm } = &transpose.op else { return Err(not_split()) };
    if perm.as_slice() != [0, 2, 1, 3] {
        return Err(format!("a head split transposes with perm {perm:?}, not [0, 2, 1, 3]"));
    }
    let r = transpose.inputs[0];
    let reshape = g.producer(r);
    let Op::Reshape = reshape.op else { return Err(not_split()) };
    let x = reshape.inputs[0];
    let (xs, rs) = (g.shape(x), g.shape(r));
    let heads = match (xs.as_slice(), rs.as_slice()) {
        ([b, s, Dim::Fixed(e)], [b2, s2, Dim::Fixed(h), Dim::Fixed(d)]) if b == b2 && s == s2 && h * d == *e => *h,
        _ => return Err(format!("a head split reshapes {} to {}, not [B,S,H·D] to [B,S,H,D]", shape_str(xs), shape_str(rs))),
    };
    if !single_reader(g, users, r) || !single_reader(g, users, t) {
        return Err("a head split (reshape or transpose of q, k or v) has other readers".into());
    }
    let heads = u32::try_from(heads).map_err(|_| format!("{heads} heads are too many"))?;
    Ok(Split { x, heads })
}

/// The scale a scalar node `c` multiplies by, as the interpreter reads it (rounded to `dtype`).
fn scale_of(g: &Graph, c: NodeId, dtype: DType) -> Option<f32> {
    let node = &g.nodes[c];
    let Op::Scalar { value } = node.op else { return None };
    let t = g.ty(node.outputs[0]);
    (t.dtype == dtype && t.rank() == 0).then(|| crate::numerics::cast(value as f32, dtype)).filter(|s| !s.is_nan())
}

/// The `[B,S]` mask that `m4` reshapes to `[B,1,1,S]`.
fn mask_of(g: &Graph, m4: ValueId, bs: &[Dim]) -> Option<ValueId> {
    let node = g.producer(m4);
    let Op::Reshape = node.op else { return None };
    let m = node.inputs[0];
    let want4 = [bs[0], Dim::Fixed(1), Dim::Fixed(1), bs[1]];
    (g.shape(m).as_slice() == bs && g.shape(m4).as_slice() == want4).then_some(m)
}

/// The head merge after `P·V`.
struct Merge {
    /// The attention's output quantize: P·V's own, or a quantize on the layout chain.
    output: Option<QuantSpec>,
    /// The quantize node that joins (none when P·V carried the quantize).
    absorbed: Option<NodeId>,
    last: ValueId,
    name: Option<String>,
    declines: Vec<(NodeId, String)>,
}

/// Walks down from the context `[B,H,S,D]`: `transpose [0,2,1,3]`, `reshape` to q's shape, with
/// one optional per-tensor literal quantize before, between or after them (unless P·V brings its
/// own, `output`).
fn merge(g: &Graph, users: &Users, ctx: ValueId, shape: &[Dim], output: Option<QuantSpec>) -> Result<Merge, String> {
    let mut m = Merge { output, absorbed: None, last: ctx, name: None, declines: vec![] };
    let (mut transposed, mut reshaped) = (false, false);
    while !reshaped {
        let Some(r) = sole_reader(g, users, m.last) else {
            return Err("the attention context (or its head merge) has other readers".into());
        };
        let next = &g.nodes[r];
        match &next.op {
            Op::Quantize(spec) if m.output.is_none() && next.inputs[0] == m.last => {
                if let Some(reason) = unsupported_output(spec) {
                    return Err(format!("the context's quantize cannot join: {reason}"));
                }
                m.output = Some(spec.clone());
                m.absorbed = Some(r);
            }
            Op::Transpose { perm } if !transposed => {
                if perm.as_slice() != [0, 2, 1, 3] {
                    return Err(format!("the heads are merged with perm {perm:?}, not [0, 2, 1, 3]"));
                }
                transposed = true;
            }
            Op::Reshape if transposed => {
                if g.shape(next.outputs[0]).as_slice() != shape {
                    return Err("the heads are not merged back to q's [B,S,H·D] shape".into());
                }
                m.name = next.name.clone();
                reshaped = true;
            }
            _ => return Err("the context must be merged back by transpose [0,2,1,3] and reshape to [B,S,H·D]".into()),
        }
        m.last = next.outputs[0];
    }
    if m.output.is_some() {
        return Ok(m);
    }
    // After the reshape: a lone per-tensor literal quantize joins; other quantize readers stay.
    let lone = sole_reader(g, users, m.last);
    for &r in &users[m.last] {
        let Op::Quantize(spec) = &g.nodes[r].op else { continue };
        match (unsupported_output(spec), lone == Some(r)) {
            (None, true) => {
                m.output = Some(spec.clone());
                m.absorbed = Some(r);
                m.last = g.nodes[r].outputs[0];
                return Ok(m);
            }
            (Some(reason), _) => m.declines.push((r, reason)),
            (None, false) => m.declines.push((r, "the attention's result has other readers, which need it unquantized".into())),
        }
    }
    Ok(m)
}

/// Why `spec` cannot be the attention's output quantization, if it cannot.
fn unsupported_output(spec: &QuantSpec) -> Option<String> {
    if spec.zero_point.is_some() {
        return Some("zero points are not supported by attention".into());
    }
    let what = match (&spec.granularity, &spec.scale) {
        (Granularity::PerTensor, ScaleSource::Literal(_)) => return None,
        (Granularity::PerToken, ScaleSource::Dynamic { .. }) => "a dynamic per-token scale (the row amax needs all heads of a token)",
        (_, ScaleSource::Dynamic { .. }) => "a dynamic scale",
        (_, ScaleSource::Input) => "a scale read from a graph value",
        (Granularity::PerToken, _) => "a per-token scale",
        (Granularity::PerChannel { .. }, _) => "per-channel scales",
        (Granularity::Block { .. }, _) => "block scales",
    };
    Some(format!("an attention output quantize takes one literal per-tensor scale, not {what}"))
}

/// `v` has exactly one live reader and is not a graph output.
fn single_reader(g: &Graph, users: &Users, v: ValueId) -> bool {
    users[v].len() == 1 && output_uses(g, v) == 0
}

/// The only live reader of `v`, if it has one and is not a graph output.
fn sole_reader(g: &Graph, users: &Users, v: ValueId) -> Option<NodeId> {
    single_reader(g, users, v).then(|| users[v][0])
}

/// The quantizes around an attention (to carry a decline reason): those reading the softmax, and
/// those on the layout chain after `P·V`.
fn nearby_quantizes(g: &Graph, users: &Users, probs: ValueId) -> Vec<NodeId> {
    let is_quantize = |n: &NodeId| matches!(g.nodes[*n].op, Op::Quantize(_));
    let mut out: Vec<NodeId> = users[probs].iter().filter(|n| is_quantize(n)).copied().collect();
    let readers: Vec<NodeId> = users[probs].iter().chain(out.iter().flat_map(|&q| users[g.nodes[q].outputs[0]].iter())).copied().collect();
    let Some(product) = readers.into_iter().find(|&r| matches!(g.nodes[r].op, Op::MatMul { .. } | Op::QMatMul(_))) else { return out };
    let mut cur = g.nodes[product].outputs[0];
    for _ in 0..4 {
        let Some(&next) = users[cur].first() else { break };
        match g.nodes[next].op {
            Op::Quantize(_) => out.push(next),
            Op::Transpose { .. } | Op::Reshape => {}
            _ => break,
        }
        cur = g.nodes[next].outputs[0];
    }
    out
}

fn shape_str(s: &[Dim]) -> String {
    crate::ir::shape_text(s)
}

/// Adds the attention node (with the final reshape's loc) and redirects the chain's readers to it.
fn apply_attention(g: &mut Graph, f: &Fusion) -> Result<NodeId, PassError> {
    let mut b = Builder::new(g);
    b.scope = f.name.clone();
    let fail = |message: String| PassError::Failed { pass: "fuse-attention", message };
    let out = b.add1(Op::Attention(f.op.clone()), &f.inputs, None).map_err(fail)?;
    if g.ty(out) != g.ty(f.last) {
        return Err(fail(format!("the fused attention's type differs from the chain's result {}", f.last)));
    }
    g.replace_all_uses(f.last, out);
    Ok(g.values[out].producer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The report lines ending in `.q` after running the pass on a case file (twice: the second
    /// run must change nothing).
    fn report(case: &str) -> Vec<String> {
        crate::passes::report_of_case(&FuseAttention, "fuse-attention", case, ".q")
    }

    #[test]
    fn context_quantize_fuses() {
        assert_eq!(report("bert_fp8_context_quantize"), ["O:a.q: fused into attention L"]);
    }

    #[test]
    fn fp8_probabilities_quantize_fuses() {
        assert_eq!(report("bert_fp8_attention"), ["L.matmul1:a.q: fused into attention L"]);
        assert_eq!(report("fp8_attention_f16_result"), ["L.matmul1:a.q: fused into attention L"]);
        assert_eq!(
            report("fp8_attention_bf16_quantize_after_merge"),
            ["L.matmul1:a.q: fused into attention L", "O:a.q: fused into attention L"]
        );
    }

    /// Q/DQ nodes that earlier passes fused into the FP8 products (`fuse-dq-matmul`'s operand
    /// dequantizes, `fuse-epilogue`'s context quantize) now read as fused into the attention.
    #[test]
    fn entries_fused_into_fp8_products_move_to_the_attention() {
        let path = format!("{}/tests/ir/fuse-attention/bert_fp8_attention.ir", env!("CARGO_MANIFEST_DIR"));
        let mut g = crate::ir::parse(&std::fs::read_to_string(path).expect("case file")).expect("case parses");
        let w = crate::passes::MemoryWeights::default();
        let mut cx = PassCx::new(&w);
        for (qdq, node) in [("L.matmul0:a.dq", "L.matmul0"), ("L.matmul1:b.dq", "L.matmul1"), ("O:a.q", "L.matmul1"), ("X:a.dq", "X")] {
            cx.report.fused(qdq, "qmatmul", node);
        }
        assert!(FuseAttention.run(&mut g, &mut cx).expect("pass runs"));
        let lines: Vec<String> = cx.report.finish(&g).into_iter().map(|e| e.to_string()).collect();
        assert_eq!(
            lines,
            [
                "L.matmul0:a.dq: fused into attention L",
                "L.matmul1:a.q: fused into attention L",
                "L.matmul1:b.dq: fused into attention L",
                "O:a.q: fused into attention L",
                "X:a.dq: fused into qmatmul X",
            ]
        );
    }

    #[test]
    fn declines_are_reported_on_the_quantizes_around() {
        let declined = |qdq: &str, reason: &str| vec![format!("{qdq}: standalone, the attention around it does not fuse: {reason}")];
        assert_eq!(
            report("fp8_attention_qmatmul"),
            declined("L.matmul1:a.q", "q, k and v must each be split into heads by reshape [B,S,H·D] → [B,S,H,D] and transpose [0,2,1,3]")
        );
        assert_eq!(
            report("head_merge_other_reader"),
            ["O:a.q: standalone, the attention around it does not fuse: the attention context (or its head merge) has other readers",]
        );
        assert_eq!(
            report("per_token_output_quantize"),
            ["O:a.q: standalone, an attention output quantize takes one literal per-tensor scale, not a dynamic per-token scale (the row \
             amax needs all heads of a token)",]
        );
    }

    #[test]
    fn fp8_declines_are_reported() {
        let declined = |qdq: &str, reason: &str| vec![format!("{qdq}: standalone, the attention around it does not fuse: {reason}")];
        assert_eq!(
            report("fp8_pv_epilogue_gelu"),
            declined("L.matmul1:a.q", "its P·V is a qmatmul whose epilogue is not exactly cast(f16)")
        );
        assert_eq!(
            report("fp8_pv_a_scale"),
            declined("L.matmul1:a.q", "its P·V is a qmatmul with scale vectors, weight dequantization or a non-f32 accumulator")
        );
        assert_eq!(
            report("fp8_probs_per_token_quantize"),
            declined(
                "L.matmul1:a.q",
                "the probabilities' quantize must be E4M3, per tensor, with a positive literal scale and no zero point"
            )
        );
        let mixed = "one of Q·Kᵀ and P·V runs on FP8 operands and the other does not";
        assert_eq!(report("fp8_qk_only"), declined("O:a.q", mixed));
        assert_eq!(report("fp8_pv_only"), declined("L.matmul1:a.q", mixed));
        assert_eq!(
            report("fp8_qk_negative_alpha"),
            declined("L.matmul1:a.q", "its Q·Kᵀ is a qmatmul with alpha=-1.5e-5, not a positive finite multiplier")
        );
    }
}
