//! The mapping between ops and their `{...}` attribute lists in the text format.
//!
//! One function encodes an op's payload as attributes and one decodes it, so the printer and the
//! parser cannot drift apart.

use super::{
    Attention, AttentionFp8, AttnRope, BinaryOp, CausalAttention, DType, EmbedLayerNorm, EpilogueOp, EpilogueStep, GluMatMul, Granularity,
    KvCodes, NormKind, Op, OutputQuant, QMatMul, QuantSpec, ReduceOp, Rope, RopeLlama3, RopePairs, RoundTripNorm, ScaleSource, Segment,
    SplitMatMul, UnaryOp, ValueId, ZeroPoint,
};
use crate::numerics::E8M0Rounding;

/// An attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    /// A bare word (`transpose_b`, `f8e4m3`, `per_token`).
    Ident(String),
    /// A number literal, kept as written so it decodes exactly into the field's own type.
    Num(String),
    /// `[a, b, ...]`.
    List(Vec<AttrValue>),
    /// A value reference `%N`.
    Ref(ValueId),
    /// `name(args)`.
    Call(String, Vec<AttrValue>),
    /// `a:b`.
    Pair(i64, i64),
    /// `key=value` among a call's arguments (`b_dequant(u4,block(1:128),scale=%5)`).
    Keyed(String, Box<AttrValue>),
}

/// One attribute: a bare value or `key=value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Attr {
    /// The key, or `None` for a bare item.
    pub key: Option<String>,
    /// The value.
    pub value: AttrValue,
}

fn bare(s: &str) -> Attr {
    Attr { key: None, value: AttrValue::Ident(s.into()) }
}

fn kv(k: &str, v: AttrValue) -> Attr {
    Attr { key: Some(k.into()), value: v }
}

fn int_list(xs: impl IntoIterator<Item = i64>) -> AttrValue {
    AttrValue::List(xs.into_iter().map(int).collect())
}

fn int(i: i64) -> AttrValue {
    AttrValue::Num(i.to_string())
}

fn f32_num(x: f32) -> AttrValue {
    AttrValue::Num(super::print::float_text(format!("{x:?}")))
}

/// The attributes of `op`; `extra` are the node's inputs after the positional ones (Q/DQ scale and
/// zero-point values).
pub fn encode(op: &Op, extra: &[ValueId]) -> Vec<Attr> {
    match op {
        Op::MatMul { transpose_a, transpose_b } => {
            let mut v = vec![];
            if *transpose_a {
                v.push(bare("transpose_a"));
            }
            if *transpose_b {
                v.push(bare("transpose_b"));
            }
            v
        }
        Op::LayerNorm { eps } | Op::L2Normalize { eps } => vec![kv("eps", f32_num(*eps))],
        Op::RmsNorm { eps, prologue } => {
            let mut v = vec![kv("eps", f32_num(*eps))];
            if *prologue {
                v.push(kv("prologue", ident("true")));
            }
            v
        }
        Op::Softmax { axis } => vec![kv("axis", int(*axis))],
        Op::Transpose { perm } => vec![kv("perm", int_list(perm.iter().map(|&p| p as i64)))],
        Op::Reduce { axes, keep_dims, .. } => {
            let mut v = vec![kv("axes", int_list(axes.iter().copied()))];
            if *keep_dims {
                v.push(bare("keep_dims"));
            }
            v
        }
        Op::Quantize(spec) | Op::Dequantize(spec) => encode_quant(spec, extra),
        Op::Requantize { from_scale, via, to } => {
            let mut v = vec![kv("from_scale", f32_num(*from_scale)), kv("via", ident(via.name()))];
            v.extend(encode_quant(to, &[]));
            v
        }
        Op::QuantRoundTrip { norm, pre, quant, post } => {
            let mut v = vec![];
            if let Some(n) = norm {
                v.push(kv("norm", ident(norm_kind_name(n.kind))));
                if n.kind != NormKind::Scale {
                    v.push(kv("eps", f32_num(n.eps)));
                }
            }
            v.extend([kv("pre", f32_num(*pre)), kv("post", f32_num(*post))]);
            v.extend(encode_quant(quant, &[]));
            v
        }
        Op::NormQuantize { kind, eps, via, quant, keep_normed, prologue } => {
            let mut v = vec![kv("via", ident(via.name()))];
            if *kind != NormKind::Scale {
                v.insert(0, kv("eps", f32_num(*eps)));
            }
            if *keep_normed {
                v.push(kv("keep_normed", ident("true")));
            }
            if *prologue {
                v.push(kv("prologue", ident("true")));
            }
            v.extend(encode_quant(quant, extra));
            v
        }
        Op::QMatMul(q) => encode_qmatmul(q, extra),
        Op::SplitMatMul(s) => encode_split(s, extra),
        Op::GluMatMul(s) => encode_glu(s, extra),
        Op::Attention(a) => encode_attention(a, extra),
        Op::Rope(r) => encode_rope(r),
        Op::CausalAttention(a) => {
            let mut v =
                vec![kv("heads", int(i64::from(a.heads))), kv("kv_heads", int(i64::from(a.kv_heads))), kv("scale", f32_num(a.scale))];
            if let Some(c) = &a.cache {
                v.push(Attr { key: None, value: encode_kv_codes(c) });
            }
            if let Some(r) = &a.rope {
                v.push(Attr { key: None, value: encode_attn_rope(r) });
            }
            v.extend(encode_output(a.output.map(|o| o.spec()).as_ref()));
            v
        }
        Op::EmbedLayerNorm(e) => {
            let mut v = vec![kv("eps", f32_num(e.eps)), kv("via", ident(e.via.name()))];
            if e.keep_normed {
                v.push(kv("keep_normed", ident("true")));
            }
            if let Some(quant) = &e.quant {
                v.extend(encode_quant(quant, extra));
            }
            v
        }
        _ => vec![],
    }
}

/// How many inputs print as positional operands; the rest appear as `%v` inside attributes.
pub fn positional_arity(op: &Op) -> usize {
    match op {
        Op::QMatMul(_) | Op::SplitMatMul(_) | Op::GluMatMul(_) => 2,
        Op::Attention(_) => 3,
        other => super::infer::arity(other) - other.quant_spec().map_or(0, |q| q.extra_inputs()),
    }
}

fn ident(s: &str) -> AttrValue {
    AttrValue::Ident(s.into())
}

fn encode_qmatmul(q: &QMatMul, extra: &[ValueId]) -> Vec<Attr> {
    let n_dequant = q.b_dequant.as_ref().map_or(0, QuantSpec::extra_inputs).min(extra.len());
    let mut refs = extra[n_dequant..].iter().map(|&v| AttrValue::Ref(v));
    let mut v = vec![];
    if q.transpose_b {
        v.push(bare("transpose_b"));
    }
    v.push(kv("alpha", f32_num(q.alpha)));
    if let Some(spec) = &q.b_dequant {
        v.push(Attr { key: None, value: encode_b_dequant(spec, &extra[..n_dequant]) });
    }
    if q.a_scale {
        v.push(kv("a_scale", refs.next().expect("a_scale input present")));
    }
    if q.b_scale {
        v.push(kv("b_scale", refs.next().expect("b_scale input present")));
    }
    v.push(kv("acc", ident(q.acc_dtype.name())));
    let steps = q.epilogue.iter().map(|s| {
        let dt = ident(s.dtype.name());
        match s.op {
            EpilogueOp::Cast => AttrValue::Call("cast".into(), vec![dt]),
            EpilogueOp::Add => AttrValue::Call("add".into(), vec![refs.next().expect("epilogue input present"), dt]),
            EpilogueOp::Mul => AttrValue::Call("mul".into(), vec![refs.next().expect("epilogue input present"), dt]),
            EpilogueOp::Unary(u) => AttrValue::Call(Op::Unary(u).mnemonic().into(), vec![dt]),
        }
    });
    let steps: Vec<AttrValue> = steps.collect();
    if !steps.is_empty() {
        v.push(kv("epilogue", AttrValue::List(steps)));
    }
    v.extend(encode_output(q.output.as_ref()));
    v
}

/// `b_dequant(<storage>,<granularity>,scale=…[,zero=…])`: the spec spelled as a `dequantize`'s
/// attributes, as the arguments of one call; `extra` holds its scale and zero-point inputs.
fn encode_b_dequant(spec: &QuantSpec, extra: &[ValueId]) -> AttrValue {
    let args = encode_quant(spec, extra).into_iter().map(|a| match a.key {
        Some(key) => AttrValue::Keyed(key, Box::new(a.value)),
        None => a.value,
    });
    AttrValue::Call("b_dequant".into(), args.collect())
}

/// The arguments of the unkeyed `name(...)` item of `attrs`, if the item is there.
fn call_args<'a>(attrs: &'a [Attr], name: &str) -> Option<&'a [AttrValue]> {
    attrs.iter().find_map(|a| match (&a.key, &a.value) {
        (None, AttrValue::Call(n, args)) if n == name => Some(args.as_slice()),
        _ => None,
    })
}

/// The arguments of the unkeyed `name(...)` item of `attrs`, as attributes (`key=value`
/// arguments keyed, the others not), if the item is there.
fn call_items(attrs: &[Attr], name: &str) -> Option<Vec<Attr>> {
    let args = call_args(attrs, name)?;
    let item = |arg: &AttrValue| match arg {
        AttrValue::Keyed(key, value) => Attr { key: Some(key.clone()), value: (**value).clone() },
        other => Attr { key: None, value: other.clone() },
    };
    Some(args.iter().map(item).collect())
}

/// The spec of a `b_dequant(...)` item, with the value references it names, if the item is there.
fn decode_b_dequant(attrs: &[Attr]) -> Result<Option<(QuantSpec, Vec<ValueId>)>, String> {
    let Some(inner) = call_items(attrs, "b_dequant") else { return Ok(None) };
    decode_quant(&inner).map(Some).map_err(|e| format!("b_dequant: {e}"))
}

/// `heads=9, theta=100000.0, pairs=half[, llama3(factor=…, low=…, high=…, original=…)]`.
fn encode_rope(r: &Rope) -> Vec<Attr> {
    let mut v = vec![kv("heads", int(i64::from(r.heads)))];
    v.extend(encode_rotation(r));
    v
}

/// `theta=…, pairs=half|adjacent[, llama3(…)]` of `r`.
fn encode_rotation(r: &Rope) -> Vec<Attr> {
    let pairs = match r.pairs {
        RopePairs::Half => "half",
        RopePairs::Adjacent => "adjacent",
    };
    let mut v = vec![kv("theta", f32_num(r.theta)), kv("pairs", ident(pairs))];
    if let Some(l) = &r.llama3 {
        let keyed = |k: &str, v: AttrValue| AttrValue::Keyed(k.into(), Box::new(v));
        let args = vec![
            keyed("factor", f32_num(l.factor)),
            keyed("low", f32_num(l.low_freq_factor)),
            keyed("high", f32_num(l.high_freq_factor)),
            keyed("original", int(i64::from(l.original_max_positions))),
        ];
        v.push(Attr { key: None, value: AttrValue::Call("llama3".into(), args) });
    }
    v
}

/// `rope(theta=…, pairs=…[, llama3(…)][, keys])`: the rotation a causal attention applies.
fn encode_attn_rope(r: &AttnRope) -> AttrValue {
    let mut args: Vec<AttrValue> = encode_rotation(&r.op(0))
        .into_iter()
        .map(|a| match a.key {
            Some(k) => AttrValue::Keyed(k, Box::new(a.value)),
            None => a.value,
        })
        .collect();
    if r.keys {
        args.push(ident("keys"));
    }
    AttrValue::Call("rope".into(), args)
}

/// The `rope(...)` item of a causal attention, if present.
fn decode_attn_rope(attrs: &[Attr]) -> Result<Option<AttnRope>, String> {
    let Some(inner) = call_items(attrs, "rope") else { return Ok(None) };
    let keys = inner.iter().any(|a| a.key.is_none() && a.value == AttrValue::Ident("keys".into()));
    let r = decode_rotation(&inner, 0).map_err(|e| format!("rope(...): {e}"))?;
    Ok(Some(AttnRope::of(&r, keys)))
}

fn decode_rope(attrs: &[Attr]) -> Result<Rope, String> {
    decode_rotation(attrs, u32_attr(attrs, "heads")?)
}

/// A rope over `heads` heads from `theta=…, pairs=…[, llama3(…)]`.
fn decode_rotation(attrs: &[Attr], heads: u32) -> Result<Rope, String> {
    let pairs = match required(attrs, "pairs")? {
        AttrValue::Ident(s) if s == "half" => RopePairs::Half,
        AttrValue::Ident(s) if s == "adjacent" => RopePairs::Adjacent,
        other => return Err(format!("rope pairs must be `half` or `adjacent`, got {other:?}")),
    };
    let llama3 = match call_args(attrs, "llama3") {
        None => None,
        Some(args) => {
            let inner = keyed_args(args, "llama3")?;
            let num = |k: &str| required(&inner, k).and_then(as_f32).map_err(|e| format!("llama3: {e}"));
            Some(RopeLlama3 {
                factor: num("factor")?,
                low_freq_factor: num("low")?,
                high_freq_factor: num("high")?,
                original_max_positions: u32_attr(&inner, "original").map_err(|e| format!("llama3: {e}"))?,
            })
        }
    };
    Ok(Rope { heads, theta: as_f32(required(attrs, "theta")?)?, pairs, llama3 })
}

/// The `key=value` arguments of a call item such as `llama3(...)` as attributes.
fn keyed_args(args: &[AttrValue], call: &str) -> Result<Vec<Attr>, String> {
    args.iter()
        .map(|arg| match arg {
            AttrValue::Keyed(key, value) => Ok(Attr { key: Some(key.clone()), value: (**value).clone() }),
            other => Err(format!("{call}(...) takes key=value arguments, got {other:?}")),
        })
        .collect()
}

fn u32_attr(attrs: &[Attr], key: &str) -> Result<u32, String> {
    let v = as_int(required(attrs, key)?)?;
    u32::try_from(v).map_err(|_| format!("`{key}` = {v} is out of range"))
}

/// `heads=12[, scale=0.17675781][, mask=%v][, out=f8e4m3, out_scale=0.007]`.
fn encode_attention(a: &Attention, extra: &[ValueId]) -> Vec<Attr> {
    let mut v = vec![kv("heads", int(i64::from(a.heads)))];
    if let Some(scale) = a.scale {
        v.push(kv("scale", f32_num(scale)));
    }
    if a.mask {
        v.push(kv("mask", AttrValue::Ref(*extra.first().expect("mask input present"))));
    }
    if let Some(f) = &a.fp8 {
        v.push(Attr { key: None, value: encode_attention_fp8(f) });
    }
    v.extend(encode_output(a.output.as_ref()));
    v
}

/// `fp8(qk_alpha=…, p_scale=…, pv_alpha=…, via=f16)` of an attention over E4M3 operands.
fn encode_attention_fp8(f: &AttentionFp8) -> AttrValue {
    let keyed = |k: &str, v: AttrValue| AttrValue::Keyed(k.into(), Box::new(v));
    AttrValue::Call(
        "fp8".into(),
        vec![
            keyed("qk_alpha", f32_num(f.qk_alpha)),
            keyed("p_scale", f32_num(f.p_scale)),
            keyed("pv_alpha", f32_num(f.pv_alpha)),
            keyed("via", ident(f.compute.name())),
        ],
    )
}

/// `codes(k_scale=…, v_scale=…, via=f16)` of a causal attention reading quantized cache codes.
fn encode_kv_codes(c: &KvCodes) -> AttrValue {
    let keyed = |k: &str, v: AttrValue| AttrValue::Keyed(k.into(), Box::new(v));
    let mut args = vec![keyed("k_scale", f32_num(c.k_scale)), keyed("v_scale", f32_num(c.v_scale)), keyed("via", ident(c.via.name()))];
    if c.block > 0 {
        args.push(keyed("block", int(i64::from(c.block))));
    }
    AttrValue::Call("codes".into(), args)
}

/// The `codes(...)` item of a causal attention, if present.
fn decode_kv_codes(attrs: &[Attr]) -> Result<Option<KvCodes>, String> {
    let Some(args) = call_args(attrs, "codes") else { return Ok(None) };
    let inner = keyed_args(args, "codes")?;
    let num = |k: &str| required(&inner, k).and_then(as_f32).map_err(|e| format!("codes: {e}"));
    Ok(Some(KvCodes {
        k_scale: num("k_scale")?,
        v_scale: num("v_scale")?,
        via: dtype_attr(&inner, "via").map_err(|e| format!("codes: {e}"))?,
        block: if get(&inner, "block").is_some() { u32_attr(&inner, "block").map_err(|e| format!("codes: {e}"))? } else { 0 },
    }))
}

/// The `fp8(...)` item of an attention, if present.
fn decode_attention_fp8(attrs: &[Attr]) -> Result<Option<AttentionFp8>, String> {
    let Some(args) = call_args(attrs, "fp8") else { return Ok(None) };
    let inner = keyed_args(args, "fp8")?;
    let num = |k: &str| required(&inner, k).and_then(as_f32).map_err(|e| format!("fp8: {e}"));
    Ok(Some(AttentionFp8 {
        qk_alpha: num("qk_alpha")?,
        p_scale: num("p_scale")?,
        pv_alpha: num("pv_alpha")?,
        compute: dtype_attr(&inner, "via").map_err(|e| format!("fp8: {e}"))?,
    }))
}

/// `out=<storage>, out_scale=<f32>` of a fused per-tensor output quantize.
fn encode_output(output: Option<&QuantSpec>) -> Vec<Attr> {
    let Some(out) = output else { return vec![] };
    let ScaleSource::Literal(scale) = out.scale else { unreachable!("verified: fused output scales are literal") };
    vec![kv("out", ident(out.storage.name())), kv("out_scale", f32_num(scale))]
}

fn encode_quant(spec: &QuantSpec, extra: &[ValueId]) -> Vec<Attr> {
    let mut extra = extra.iter().copied();
    let gran = match &spec.granularity {
        Granularity::PerTensor => bare("per_tensor"),
        Granularity::PerChannel { axis } => Attr { key: None, value: AttrValue::Call("per_channel".into(), vec![int(*axis)]) },
        Granularity::PerToken => bare("per_token"),
        Granularity::Block { blocks } => {
            Attr { key: None, value: AttrValue::Call("block".into(), blocks.iter().map(|&(a, s)| AttrValue::Pair(a, s as i64)).collect()) }
        }
    };
    let scale = match &spec.scale {
        ScaleSource::Literal(s) => f32_num(*s),
        ScaleSource::Input => AttrValue::Ref(extra.next().expect("scale input present")),
        ScaleSource::Dynamic { dtype, rounding } => {
            let mut args = vec![AttrValue::Ident(dtype.name().into())];
            if *dtype == DType::E8M0 {
                args.push(AttrValue::Ident(rounding_name(*rounding).into()));
            }
            AttrValue::Call("dynamic".into(), args)
        }
    };
    let mut v = vec![bare(spec.storage.name()), gran, kv("scale", scale)];
    match &spec.zero_point {
        Some(ZeroPoint::Literal(z)) => v.push(kv("zero", int(*z as i64))),
        Some(ZeroPoint::Input) => v.push(kv("zero", AttrValue::Ref(extra.next().expect("zero input present")))),
        None => {}
    }
    v
}

fn rounding_name(r: E8M0Rounding) -> &'static str {
    match r {
        E8M0Rounding::Up => "up",
        E8M0Rounding::Down => "down",
        E8M0Rounding::Nearest => "nearest",
    }
}

/// Looks up `key=value`.
fn get<'a>(attrs: &'a [Attr], key: &str) -> Option<&'a AttrValue> {
    attrs.iter().find(|a| a.key.as_deref() == Some(key)).map(|a| &a.value)
}

/// A keyed boolean written only when set: `key=true`.
fn flag_true(attrs: &[Attr], key: &str) -> bool {
    get(attrs, key) == Some(&AttrValue::Ident("true".into()))
}

fn has_flag(attrs: &[Attr], flag: &str) -> bool {
    attrs.iter().any(|a| a.key.is_none() && a.value == AttrValue::Ident(flag.into()))
}

fn as_f32(v: &AttrValue) -> Result<f32, String> {
    match v {
        AttrValue::Num(s) => s.parse().map_err(|_| format!("`{s}` is not a number")),
        other => Err(format!("expected a number, got {other:?}")),
    }
}

fn as_int(v: &AttrValue) -> Result<i64, String> {
    match v {
        AttrValue::Num(s) => s.parse().map_err(|_| format!("`{s}` is not an integer")),
        other => Err(format!("expected an integer, got {other:?}")),
    }
}

fn as_int_list(v: &AttrValue) -> Result<Vec<i64>, String> {
    match v {
        AttrValue::List(xs) => xs.iter().map(as_int).collect(),
        other => Err(format!("expected a list of integers, got {other:?}")),
    }
}

fn required<'a>(attrs: &'a [Attr], key: &str) -> Result<&'a AttrValue, String> {
    get(attrs, key).ok_or_else(|| format!("missing attribute `{key}`"))
}

/// Rebuilds an op from its mnemonic and attributes; also returns the value references the
/// attributes name (extra inputs, in order).
pub fn decode(mnemonic: &str, attrs: &[Attr]) -> Result<(Op, Vec<ValueId>), String> {
    let eps = || as_f32(required(attrs, "eps")?);
    let op = match mnemonic {
        "iota" => Op::Iota,
        "cast" => Op::Cast,
        "gather" => Op::Gather,
        "reshape" => Op::Reshape,
        "mean_pool" => Op::MeanPool,
        "last_token" => Op::LastToken,
        "matmul" => Op::MatMul { transpose_a: has_flag(attrs, "transpose_a"), transpose_b: has_flag(attrs, "transpose_b") },
        "layernorm" => Op::LayerNorm { eps: eps()? },
        "rmsnorm" => Op::RmsNorm { eps: eps()?, prologue: flag_true(attrs, "prologue") },
        "l2_normalize" => Op::L2Normalize { eps: eps()? },
        "softmax" => Op::Softmax { axis: as_int(required(attrs, "axis")?)? },
        "transpose" => {
            let perm = as_int_list(required(attrs, "perm")?)?;
            Op::Transpose {
                perm: perm.into_iter().map(|p| usize::try_from(p).map_err(|_| "negative perm entry")).collect::<Result<_, _>>()?,
            }
        }
        "reduce_sum" | "reduce_mean" | "reduce_max" => Op::Reduce {
            op: match mnemonic {
                "reduce_sum" => ReduceOp::Sum,
                "reduce_mean" => ReduceOp::Mean,
                _ => ReduceOp::Max,
            },
            axes: as_int_list(required(attrs, "axes")?)?,
            keep_dims: has_flag(attrs, "keep_dims"),
        },
        "quantize" | "dequantize" => {
            let (spec, refs) = decode_quant(attrs)?;
            let op = if mnemonic == "quantize" { Op::Quantize(spec) } else { Op::Dequantize(spec) };
            return Ok((op, refs));
        }
        "requantize" => {
            let (to, _) = decode_quant(attrs)?;
            let from_scale = as_f32(required(attrs, "from_scale")?)?;
            return Ok((Op::Requantize { from_scale, via: dtype_attr(attrs, "via")?, to }, vec![]));
        }
        "quant_round_trip" => {
            let (quant, refs) = decode_quant(attrs)?;
            if !refs.is_empty() || quant.extra_inputs() != 0 {
                return Err("quant_round_trip takes no scale or zero-point operand (dynamic or literal only)".into());
            }
            let pre = as_f32(required(attrs, "pre")?)?;
            let post = as_f32(required(attrs, "post")?)?;
            let norm = match get(attrs, "norm") {
                None => None,
                Some(AttrValue::Ident(name)) => {
                    let kind = norm_kind_of(name)?;
                    Some(RoundTripNorm { kind, eps: if kind == NormKind::Scale { 0.0 } else { eps()? } })
                }
                Some(other) => return Err(format!("`norm` must be layernorm, rmsnorm or scale, got {other:?}")),
            };
            return Ok((Op::QuantRoundTrip { norm, pre, quant, post }, vec![]));
        }
        "layernorm_quantize" | "rmsnorm_quantize" | "scale_quantize" => {
            let (quant, refs) = decode_quant(attrs)?;
            let kind = match mnemonic {
                "layernorm_quantize" => NormKind::LayerNorm,
                "rmsnorm_quantize" => NormKind::RmsNorm,
                _ => NormKind::Scale,
            };
            let eps = if kind == NormKind::Scale { 0.0 } else { eps()? };
            let keep_normed = flag_true(attrs, "keep_normed");
            let prologue = flag_true(attrs, "prologue");
            return Ok((Op::NormQuantize { kind, eps, via: dtype_attr(attrs, "via")?, quant, keep_normed, prologue }, refs));
        }
        "qmatmul" => return decode_qmatmul(attrs),
        "qmatmul_split" => return decode_split(attrs),
        "qmatmul_glu" => return decode_glu(attrs),
        "rope" => Op::Rope(decode_rope(attrs)?),
        "causal_attention" => Op::CausalAttention(CausalAttention {
            heads: u32_attr(attrs, "heads")?,
            kv_heads: u32_attr(attrs, "kv_heads")?,
            scale: as_f32(required(attrs, "scale")?)?,
            cache: decode_kv_codes(attrs)?,
            rope: decode_attn_rope(attrs)?,
            output: decode_output(attrs)?.as_ref().and_then(OutputQuant::of_spec),
        }),
        "attention" => return decode_attention(attrs),
        "embed_layernorm" => {
            let (quant, refs) = match get(attrs, "scale") {
                Some(_) => {
                    let (quant, refs) = decode_quant(attrs)?;
                    (Some(quant), refs)
                }
                None => (None, vec![]),
            };
            let keep_normed = get(attrs, "keep_normed") == Some(&AttrValue::Ident("true".into()));
            return Ok((Op::EmbedLayerNorm(EmbedLayerNorm { eps: eps()?, via: dtype_attr(attrs, "via")?, quant, keep_normed }), refs));
        }
        other => elementwise(other).ok_or_else(|| format!("unknown op `{other}`"))?,
    };
    Ok((op, vec![]))
}

fn elementwise(m: &str) -> Option<Op> {
    let b = |b| Some(Op::Binary(b));
    let u = |u| Some(Op::Unary(u));
    match m {
        "add" => b(BinaryOp::Add),
        "sub" => b(BinaryOp::Sub),
        "mul" => b(BinaryOp::Mul),
        "div" => b(BinaryOp::Div),
        "max" => b(BinaryOp::Max),
        "min" => b(BinaryOp::Min),
        "gelu" => u(UnaryOp::Gelu),
        "gelu_tanh" => u(UnaryOp::GeluTanh),
        "silu" => u(UnaryOp::Silu),
        "relu" => u(UnaryOp::Relu),
        "exp" => u(UnaryOp::Exp),
        "tanh" => u(UnaryOp::Tanh),
        "sqrt" => u(UnaryOp::Sqrt),
        "rsqrt" => u(UnaryOp::Rsqrt),
        "neg" => u(UnaryOp::Neg),
        "abs" => u(UnaryOp::Abs),
        _ => None,
    }
}

fn decode_quant(attrs: &[Attr]) -> Result<(QuantSpec, Vec<ValueId>), String> {
    let mut storage = None;
    let mut granularity = None;
    for a in attrs.iter().filter(|a| a.key.is_none()) {
        match &a.value {
            AttrValue::Ident(s) if s == "per_tensor" => granularity = Some(Granularity::PerTensor),
            AttrValue::Ident(s) if s == "per_token" => granularity = Some(Granularity::PerToken),
            AttrValue::Ident(s) => storage = Some(s.parse::<DType>()?),
            AttrValue::Call(name, args) if name == "per_channel" => {
                let [axis] = args.as_slice() else { return Err("per_channel takes one axis".into()) };
                granularity = Some(Granularity::PerChannel { axis: as_int(axis)? });
            }
            AttrValue::Call(name, args) if name == "block" => {
                let blocks = args
                    .iter()
                    .map(|b| match b {
                        AttrValue::Pair(a, s) if *s > 0 => Ok((*a, *s as u64)),
                        other => Err(format!("block entries are axis:size, got {other:?}")),
                    })
                    .collect::<Result<_, String>>()?;
                granularity = Some(Granularity::Block { blocks });
            }
            other => return Err(format!("unexpected quant attribute {other:?}")),
        }
    }
    let mut refs = vec![];
    let scale = match required(attrs, "scale")? {
        AttrValue::Ref(v) => {
            refs.push(*v);
            ScaleSource::Input
        }
        AttrValue::Call(name, args) if name == "dynamic" => decode_dynamic(args)?,
        other => ScaleSource::Literal(as_f32(other)?),
    };
    let zero_point = match get(attrs, "zero") {
        None => None,
        Some(AttrValue::Ref(v)) => {
            refs.push(*v);
            Some(ZeroPoint::Input)
        }
        Some(other) => Some(ZeroPoint::Literal(i32::try_from(as_int(other)?).map_err(|_| "zero point out of i32 range")?)),
    };
    let spec = QuantSpec {
        storage: storage.ok_or("quant spec needs a storage dtype")?,
        granularity: granularity.ok_or("quant spec needs a granularity")?,
        scale,
        zero_point,
    };
    Ok((spec, refs))
}

fn decode_dynamic(args: &[AttrValue]) -> Result<ScaleSource, String> {
    let ident = |v: &AttrValue| match v {
        AttrValue::Ident(s) => Ok(s.clone()),
        other => Err(format!("expected a name, got {other:?}")),
    };
    let dtype: DType = ident(args.first().ok_or("dynamic(...) needs the scale dtype")?)?.parse()?;
    let rounding = match args.get(1).map(ident).transpose()?.as_deref() {
        None | Some("up") => E8M0Rounding::Up,
        Some("down") => E8M0Rounding::Down,
        Some("nearest") => E8M0Rounding::Nearest,
        Some(other) => return Err(format!("unknown e8m0 rounding `{other}`")),
    };
    Ok(ScaleSource::Dynamic { dtype, rounding })
}

/// The text name of a norm kind (`quant_round_trip`'s `norm=`).
fn norm_kind_name(kind: NormKind) -> &'static str {
    match kind {
        NormKind::LayerNorm => "layernorm",
        NormKind::RmsNorm => "rmsnorm",
        NormKind::Scale => "scale",
    }
}

fn norm_kind_of(name: &str) -> Result<NormKind, String> {
    [NormKind::LayerNorm, NormKind::RmsNorm, NormKind::Scale]
        .into_iter()
        .find(|&k| norm_kind_name(k) == name)
        .ok_or_else(|| format!("unknown norm `{name}` (layernorm, rmsnorm, scale)"))
}

fn dtype_attr(attrs: &[Attr], key: &str) -> Result<DType, String> {
    match required(attrs, key)? {
        AttrValue::Ident(s) => s.parse(),
        other => Err(format!("`{key}` must be a dtype, got {other:?}")),
    }
}

/// `qmatmul_split`'s attributes: the shared `transpose_b`, `b_dequant(…)`, `a_scale=%v`,
/// `b_scale=%v`, then `segments=[seg(n=…, alpha=…, acc=…[, epilogue=[…]][, out=…, out_scale=…]), …]`.
fn encode_split(s: &SplitMatMul, extra: &[ValueId]) -> Vec<Attr> {
    let Some(first) = s.first() else { return vec![] };
    let shared = QMatMul { alpha: 1.0, epilogue: vec![], output: None, ..first.clone() };
    let prefix = s.prefix().saturating_sub(2).min(extra.len());
    let v: Vec<Attr> = encode_qmatmul(&shared, &extra[..prefix]);
    let mut v: Vec<Attr> = v.into_iter().filter(|a| !matches!(a.key.as_deref(), Some("alpha" | "acc"))).collect();
    let segments = s.layout().into_iter().zip(&s.segments).map(|((_, n, operand, count), seg)| {
        let own = QMatMul { transpose_b: false, a_scale: false, b_scale: false, b_dequant: None, ..seg.mm.clone() };
        let refs = extra.get(operand - 2..operand - 2 + count).unwrap_or_default();
        let mut args = vec![AttrValue::Keyed("n".into(), Box::new(AttrValue::Num(n.to_string())))];
        args.extend(encode_qmatmul(&own, refs).into_iter().filter_map(|a| Some(AttrValue::Keyed(a.key?, Box::new(a.value)))));
        AttrValue::Call("seg".into(), args)
    });
    v.push(kv("segments", AttrValue::List(segments.collect())));
    v
}

fn decode_split(attrs: &[Attr]) -> Result<(Op, Vec<ValueId>), String> {
    let (b_dequant, mut refs, a_scale, b_scale) = decode_gemm_operands(attrs)?;
    let Some(AttrValue::List(items)) = get(attrs, "segments") else { return Err("`segments` must be a list of seg(...)".into()) };
    let mut segments = vec![];
    for item in items {
        let AttrValue::Call(name, args) = item else { return Err(format!("segments hold seg(...) items, got {item:?}")) };
        let inner = keyed_args(args, name)?;
        let n = u64::try_from(as_int(required(&inner, "n")?)?).map_err(|_| "a segment's n must be ≥ 0".to_string())?;
        let (op, seg_refs) = decode_qmatmul(&inner)?;
        let Op::QMatMul(q) = op else { return Err("internal: seg(...) is not a qmatmul".into()) };
        refs.extend(seg_refs);
        segments.push(Segment {
            n,
            mm: QMatMul { transpose_b: has_flag(attrs, "transpose_b"), a_scale, b_scale, b_dequant: b_dequant.clone(), ..q },
        });
    }
    Ok((Op::SplitMatMul(SplitMatMul { segments }), refs))
}

/// `qmatmul_glu`'s attributes: the shared `transpose_b`, `b_dequant(…)`, `a_scale=%v`,
/// `b_scale=%v`, then `tile=…`, `gate=seg(alpha=…, acc=…, epilogue=[…, mul(up, f16)][, out=…,
/// out_scale=…])` whose step reading the up result names `up` instead of a value, and
/// `up=seg(alpha=…, acc=…[, epilogue=[…]])`.
fn encode_glu(s: &GluMatMul, extra: &[ValueId]) -> Vec<Attr> {
    let shared = QMatMul { alpha: 1.0, epilogue: vec![], output: None, ..s.gate.clone() };
    let prefix = s.prefix().saturating_sub(2).min(extra.len());
    let v: Vec<Attr> = encode_qmatmul(&shared, &extra[..prefix]);
    let mut v: Vec<Attr> = v.into_iter().filter(|a| !matches!(a.key.as_deref(), Some("alpha" | "acc"))).collect();
    v.push(kv("tile", AttrValue::Num(s.tile.to_string())));
    let ((g0, gn), (u0, un)) = s.operand_ranges();
    let operands = |first: usize, count: usize| extra.get(first - 2..first - 2 + count).unwrap_or_default().to_vec();
    // The up result prints as `up`: encode with a stand-in reference, then rename that step's.
    let mut gate_refs = operands(g0, gn);
    gate_refs.insert(s.up_operand.min(gate_refs.len()), UP_STAND_IN);
    let gate = seg_of(&s.gate, &gate_refs, Some(s.up_operand));
    v.push(kv("gate", gate));
    v.push(kv("up", seg_of(&s.up, &operands(u0, un), None)));
    v
}

/// `seg(alpha=…, acc=…, …)`: a product's own attributes; with `up`, its operand-reading step
/// number `up` names `up` instead of its value.
fn seg_of(q: &QMatMul, refs: &[ValueId], up: Option<usize>) -> AttrValue {
    let own = QMatMul { transpose_b: false, a_scale: false, b_scale: false, b_dequant: None, ..q.clone() };
    let mut args: Vec<AttrValue> = vec![];
    for a in encode_qmatmul(&own, refs) {
        let Some(key) = a.key else { continue };
        let value = match (key.as_str(), a.value, up) {
            ("epilogue", AttrValue::List(steps), Some(up)) => AttrValue::List(rename_up_step(steps, up)),
            (_, value, _) => value,
        };
        args.push(AttrValue::Keyed(key, Box::new(value)));
    }
    AttrValue::Call("seg".into(), args)
}

/// The steps with operand-reading step number `up` reading `up` instead of its value.
fn rename_up_step(steps: Vec<AttrValue>, up: usize) -> Vec<AttrValue> {
    let mut seen = 0;
    steps
        .into_iter()
        .map(|step| match step {
            AttrValue::Call(name, mut args) if matches!(args.first(), Some(AttrValue::Ref(_))) => {
                if seen == up {
                    args[0] = ident("up");
                }
                seen += 1;
                AttrValue::Call(name, args)
            }
            other => other,
        })
        .collect()
}

fn decode_glu(attrs: &[Attr]) -> Result<(Op, Vec<ValueId>), String> {
    let (b_dequant, mut refs, a_scale, b_scale) = decode_gemm_operands(attrs)?;
    let tile = u64::try_from(as_int(required(attrs, "tile")?)?).map_err(|_| "`tile` must be ≥ 0".to_string())?;
    let product = |key: &str| -> Result<(QMatMul, Vec<ValueId>, Option<usize>), String> {
        let Some(AttrValue::Call(name, args)) = get(attrs, key) else { return Err(format!("`{key}` must be seg(...)")) };
        let mut inner = keyed_args(args, name)?;
        let up = take_up_step(&mut inner)?;
        let (op, mut seg_refs) = decode_qmatmul(&inner)?;
        if let Some(i) = up {
            seg_refs.remove(i);
        }
        let Op::QMatMul(q) = op else { return Err("internal: seg(...) is not a qmatmul".into()) };
        let q = QMatMul { transpose_b: has_flag(attrs, "transpose_b"), a_scale, b_scale, b_dequant: b_dequant.clone(), ..q };
        Ok((q, seg_refs, up))
    };
    let (gate, gate_refs, up_operand) = product("gate")?;
    let (up, up_refs, stray) = product("up")?;
    let up_operand = up_operand.ok_or("the gate's epilogue has no step reading `up`")?;
    if stray.is_some() {
        return Err("the up projection's epilogue cannot read `up`".into());
    }
    refs.extend(gate_refs);
    refs.extend(up_refs);
    Ok((Op::GluMatMul(GluMatMul { tile, gate, up, up_operand }), refs))
}

/// A reference no value has: the up result's place among a gate step's operands while its
/// attributes pass through the `qmatmul` encoder and decoder.
const UP_STAND_IN: ValueId = ValueId(u32::MAX);

/// Finds the epilogue step reading `up` (one at most), makes it read [`UP_STAND_IN`] for the
/// `qmatmul` decoder, and returns its operand-reading step number (the caller drops the stand-in).
fn take_up_step(inner: &mut [Attr]) -> Result<Option<usize>, String> {
    let Some(Attr { value: AttrValue::List(steps), .. }) = inner.iter_mut().find(|a| a.key.as_deref() == Some("epilogue")) else {
        return Ok(None);
    };
    let mut found = None;
    let mut seen = 0;
    for step in steps.iter_mut() {
        let AttrValue::Call(_, args) = step else { continue };
        match args.first() {
            Some(AttrValue::Ref(_)) => seen += 1,
            Some(AttrValue::Ident(s)) if s == "up" && args.len() == 2 => {
                if found.replace(seen).is_some() {
                    return Err("two epilogue steps read `up`".into());
                }
                args[0] = AttrValue::Ref(UP_STAND_IN);
                seen += 1;
            }
            _ => {}
        }
    }
    Ok(found)
}

/// The weight-side attributes a `qmatmul` and a `qmatmul_split` share: `b_dequant(…)`, then
/// `a_scale=%v`, `b_scale=%v`, with the value references they name in operand order.
#[allow(clippy::type_complexity)]
fn decode_gemm_operands(attrs: &[Attr]) -> Result<(Option<QuantSpec>, Vec<ValueId>, bool, bool), String> {
    let (b_dequant, mut refs) = match decode_b_dequant(attrs)? {
        Some((spec, refs)) => (Some(spec), refs),
        None => (None, vec![]),
    };
    let mut take_ref = |key: &str| -> Result<bool, String> {
        match get(attrs, key) {
            None => Ok(false),
            Some(AttrValue::Ref(v)) => {
                refs.push(*v);
                Ok(true)
            }
            Some(other) => Err(format!("`{key}` must be a value, got {other:?}")),
        }
    };
    let a_scale = take_ref("a_scale")?;
    let b_scale = take_ref("b_scale")?;
    Ok((b_dequant, refs, a_scale, b_scale))
}

fn decode_qmatmul(attrs: &[Attr]) -> Result<(Op, Vec<ValueId>), String> {
    let (b_dequant, mut refs, a_scale, b_scale) = decode_gemm_operands(attrs)?;
    let mut epilogue = vec![];
    if let Some(list) = get(attrs, "epilogue") {
        let AttrValue::List(items) = list else { return Err("`epilogue` must be a list".into()) };
        for item in items {
            epilogue.push(decode_step(item, &mut refs)?);
        }
    }
    let output = decode_output(attrs)?;
    let q = QMatMul {
        transpose_b: has_flag(attrs, "transpose_b"),
        alpha: as_f32(required(attrs, "alpha")?)?,
        a_scale,
        b_scale,
        acc_dtype: dtype_attr(attrs, "acc")?,
        epilogue,
        output,
        b_dequant,
    };
    Ok((Op::QMatMul(q), refs))
}

/// The `out=<storage>, out_scale=<f32>` pair of a fused output quantize, if present.
fn decode_output(attrs: &[Attr]) -> Result<Option<QuantSpec>, String> {
    match get(attrs, "out") {
        None => Ok(None),
        Some(_) => Ok(Some(QuantSpec::per_tensor(dtype_attr(attrs, "out")?, as_f32(required(attrs, "out_scale")?)?))),
    }
}

fn decode_attention(attrs: &[Attr]) -> Result<(Op, Vec<ValueId>), String> {
    let heads = as_int(required(attrs, "heads")?)?;
    let heads = u32::try_from(heads).map_err(|_| format!("heads={heads} is out of range"))?;
    let scale = get(attrs, "scale").map(as_f32).transpose()?;
    let refs = match get(attrs, "mask") {
        None => vec![],
        Some(AttrValue::Ref(v)) => vec![*v],
        Some(other) => return Err(format!("`mask` must be a value, got {other:?}")),
    };
    let a = Attention { heads, scale, mask: !refs.is_empty(), fp8: decode_attention_fp8(attrs)?, output: decode_output(attrs)? };
    Ok((Op::Attention(a), refs))
}

fn decode_step(item: &AttrValue, refs: &mut Vec<ValueId>) -> Result<EpilogueStep, String> {
    let AttrValue::Call(name, args) = item else { return Err(format!("epilogue steps look like `gelu(f16)`, got {item:?}")) };
    let dtype = |v: Option<&AttrValue>| match v {
        Some(AttrValue::Ident(s)) => s.parse::<DType>(),
        _ => Err(format!("epilogue step `{name}` needs its result dtype")),
    };
    let op = match (name.as_str(), args.as_slice()) {
        ("cast", [d]) => return Ok(EpilogueStep { op: EpilogueOp::Cast, dtype: dtype(Some(d))? }),
        ("add" | "mul", [AttrValue::Ref(v), d]) => {
            refs.push(*v);
            let op = if name == "add" { EpilogueOp::Add } else { EpilogueOp::Mul };
            return Ok(EpilogueStep { op, dtype: dtype(Some(d))? });
        }
        (other, [_]) => match elementwise(other) {
            Some(Op::Unary(u)) => EpilogueOp::Unary(u),
            _ => return Err(format!("unknown epilogue step `{other}`")),
        },
        _ => return Err(format!("malformed epilogue step `{name}`")),
    };
    Ok(EpilogueStep { op, dtype: dtype(args.first())? })
}
