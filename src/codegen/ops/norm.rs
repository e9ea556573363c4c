//! Row-wise kernels over the last axis, all specialisations of the row engine in
//! `templates/ops.cuh` (`qf_row_main`): `layernorm`, `rmsnorm`, `layernorm_quantize`,
//! `rmsnorm_quantize` and `l2_normalize` here; `embed_layernorm` ([`super::embed`]), dynamic
//! per-token `quantize` ([`super::quantize`]) and `softmax` ([`super::reduce`]) reuse [`RowSpec`].
//!
//! Kernel signature (parameters present only when the variant needs them, in this order):
//! `(x | ids, type_ids, word, pos, type; gamma; beta; scale_in; q; scales; y; long long rows;
//! long long n; long long seq; float scale; float zero)`: `q`, `scales`, `y` are the outputs in
//! IR order (quantized values, dynamic scales `f32[rows]`, the rounded norm); `n` is the row length
//! when the last axis is symbolic, `seq` the tokens per sequence of an embedding; `scale` (a literal
//! quantize scale) and `zero` (a zero point) are per-launch constants, so the layers' kernels of
//! one shape are one kernel.
//!
//! Launch: one row per group of `32·WPR` threads, WPR = the power of two keeping ≤ 32 elements per
//! thread (1 up to H = 1024, at most 32, so H ≤ 32768); with WPR = 1 four rows per 128-thread
//! block, else one row per block. Grid `ceil_div(rows, rows per block)`. Rows are kept in
//! registers, read and written once with aligned vectors of up to 8 elements, the width chosen
//! to balance the threads (H = 384: 4 elements, 8-byte f16 accesses, 3 per lane).
//!
//! Measured on an H100 (B = 32, S = 512, H = 384, f16): layernorm 11.3 µs (2.2 TB/s of its
//! 25 MB), layernorm_quantize static with keep_normed 22.7 µs, embed_layernorm fp8 25.6 µs.
//!
//! Numerics (the interpreter's `src/interp/ops/norm.rs`, `fused.rs`, `quant.rs`): statistics in
//! f64 like the interpreter (only the summation order differs), `((x − mean)·inv) as f32 · γ + β`
//! with separately rounded f32 multiply and add, the result rounded to the norm's dtype (`via`);
//! quantization `cast(y / s)` with a true division; dynamic scales `amax / qmax` (NaN ignored, 1
//! for an all-zero row).

use super::common::{f32_lit, prelude_values, render, trait_or_err, Sig};
use crate::codegen::kernel::{Launch, LowerCx, LowerError, Lowered};
use crate::codegen::template::Template;
use crate::ir::{DType, Dim, Granularity, NodeId, NormKind, Op, QuantSpec, ScaleSource, ValueId, ZeroPoint};
use crate::plan::DimExpr;

const LAYERNORM: Template = Template { name: "layernorm.cu", text: include_str!("../../../templates/layernorm.cu") };
const L2_NORMALIZE: Template = Template { name: "l2_normalize.cu", text: include_str!("../../../templates/l2_normalize.cu") };

/// Where a row's values come from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// A dense `[.., n]` tensor.
    Dense(ValueId),
    /// BERT embeddings: `word[ids] + pos[row % seq] + type[type_ids]`, each sum rounded to the
    /// row dtype.
    Embed { ids: ValueId, type_ids: ValueId, word: ValueId, pos: ValueId, ty: ValueId, seq: DimExpr },
}

/// The per-row transform.
#[derive(Debug, Clone)]
pub(crate) enum Norm {
    /// None (a plain quantize).
    None,
    /// LayerNorm with γ and optional β.
    Layer { gamma: ValueId, beta: Option<ValueId> },
    /// RMSNorm with γ.
    Rms { gamma: ValueId },
    /// `x ⊙ γ` (no normalisation: a SmoothQuant multiply before its quantize).
    Scale { gamma: ValueId },
    /// `x / max(‖x‖, eps)`.
    L2,
    /// Softmax.
    Softmax,
}

/// Where the quantization scale comes from.
#[derive(Debug, Clone)]
pub(crate) enum Scale {
    /// Compiled in.
    Literal(f32),
    /// `scale_in[0]`.
    PerTensor(ValueId),
    /// `scale_in[row]`.
    PerToken(ValueId),
    /// Computed per row (f32), written to `scales` (none: a round trip keeps it in registers).
    Dynamic { scales: Option<ValueId> },
    /// Computed per block of `group` consecutive elements of the row, rounded to `dtype`,
    /// written to `scales` (`[rows, ⌈n / group⌉]`; none: a round trip keeps them in registers).
    DynamicBlock { scales: Option<ValueId>, dtype: DType, group: u64 },
}

/// The quantized output of a row kernel.
#[derive(Debug, Clone)]
pub(crate) struct Quant {
    /// The quantized result (none: a round trip dequantizes the codes in registers).
    pub q: Option<ValueId>,
    /// Its storage dtype.
    pub storage: DType,
    /// The scale.
    pub scale: Scale,
    /// A literal zero point (integer storage).
    pub zero: Option<i32>,
}

/// A row-engine kernel.
#[derive(Debug, Clone)]
pub(crate) struct RowSpec {
    /// Kernel family = template stem (`layernorm`, `embed_layernorm`, `quantize`, …).
    pub family: &'static str,
    /// The entry template.
    pub template: Template,
    /// Source of the row.
    pub source: Source,
    /// The transform.
    pub norm: Norm,
    /// The norm's epsilon.
    pub eps: f32,
    /// Dtype the transformed row is rounded to (and `y` is stored as).
    pub y_dtype: DType,
    /// The rounded row as an output.
    pub y: Option<ValueId>,
    /// The quantized output.
    pub quant: Option<Quant>,
    /// `quant_round_trip`'s `(pre, post)`: the row times `pre` (rounded to `y_dtype`) is
    /// quantized, and the codes' dequantized values times `post`, rounded to `y_dtype`, are
    /// stored as `y` instead of the codes and scales.
    pub round_trip: Option<(f32, f32)>,
    /// Number of rows.
    pub rows: DimExpr,
    /// The row length.
    pub len: Dim,
}

/// Largest row length (elements) the engine keeps in registers: 32 warps × 32 lanes × 32.
pub(crate) const MAX_ROW: u64 = 32 * 32 * 32;

/// Load γ/β together with the row (see `ops.cuh`): costs ~20 registers and measured slower on an
/// H100 (H = 384), so off.
const PREFETCH: bool = false;

/// Renders a row-engine kernel.
pub(crate) fn row_launch(cx: &LowerCx, node: NodeId, spec: &RowSpec) -> Result<Launch, LowerError> {
    let g = cx.graph;
    let (hmax, dyn_len) = match spec.len {
        Dim::Fixed(h) => (h, false),
        Dim::Sym(s) => (g.symbols[s].max, true),
    };
    if hmax == 0 {
        return Err(cx.error(node, "rows of length 0 have no kernel"));
    }
    if hmax > MAX_ROW {
        return Err(cx.error(node, format!("row length {hmax} exceeds the row kernels' limit of {MAX_ROW} (rows live in registers)")));
    }
    if dyn_len && matches!(spec.source, Source::Embed { .. }) {
        return Err(cx.error(node, "embed_layernorm needs a fixed hidden size"));
    }
    let wpr = hmax.div_ceil(1024).next_power_of_two().min(32);
    // The widest vector that divides the row and keeps the threads' shares even: the fewest
    // elements on the busiest thread, ties to the wider vector (H = 384, one warp: 4 × 3 rather
    // than 8 × 2 on half the lanes, measured 20% faster on an H100).
    let block = spec.quant.as_ref().and_then(|q| match q.scale {
        Scale::DynamicBlock { group, .. } => Some(group),
        _ => None,
    });
    let packed = spec.quant.as_ref().is_some_and(|q| q.storage.bits() == 4);
    if block.is_some() && dyn_len {
        return Err(cx.error(node, "block-scaled quantization needs a fixed row length"));
    }
    if packed && hmax % 2 != 0 {
        return Err(cx.error(node, format!("4-bit codes are packed two per byte: the row length {hmax} must be even")));
    }
    // A block's vectors lie in at most one warp (GROUP / VEC lanes, a power of two ≤ 32); packed
    // codes fill whole bytes.
    let fits = |v: u64| block.is_none_or(|g| g % v == 0 && (g / v).is_power_of_two() && g / v <= 32) && (!packed || v % 2 == 0);
    let vec: u64 = if dyn_len {
        1
    } else {
        let busiest = |v: u64| (hmax / v).div_ceil(32 * wpr) * v;
        [8, 4, 2, 1]
            .into_iter()
            .filter(|&v| hmax % v == 0 && fits(v))
            .min_by_key(|&v| (busiest(v), std::cmp::Reverse(v)))
            .ok_or_else(|| cx.error(node, format!("no vector width fits a row of {hmax} and blocks of {}", block.unwrap_or(0))))?
    };
    let rpb = if wpr == 1 { 4 } else { 1 };
    let threads = 32 * wpr * rpb;

    let mut sig = Sig::default();
    let mut bind = String::new();
    let input = |sig: &mut Sig, bind: &mut String, name: &str, ty: &str, v: ValueId| {
        sig.input(name, &format!("{ty}::T"), v);
        bind.push_str(&format!("    a.{name} = {name};\n"));
    };
    let tr = |dt: DType, what: &str| trait_or_err(cx, node, dt, what);
    let dtype = |v: ValueId| g.ty(v).dtype;

    // Source.
    let (x_t, id_t, v_rows, p_rows, t_rows) = match &spec.source {
        Source::Dense(x) => {
            let t = tr(dtype(*x), "the operand")?;
            input(&mut sig, &mut bind, "x", t, *x);
            (t, "qf_i64", 0, 0, 0)
        }
        Source::Embed { ids, type_ids, word, pos, ty, .. } => {
            let it = tr(dtype(*ids), "ids")?;
            if dtype(*type_ids) != dtype(*ids) {
                return Err(cx.error(node, format!("ids ({}) and type_ids ({}) must have the same dtype", dtype(*ids), dtype(*type_ids))));
            }
            let wt = tr(dtype(*word), "the word table")?;
            for (v, what) in [(pos, "position"), (ty, "token type")] {
                if dtype(*v) != dtype(*word) {
                    return Err(
                        cx.error(node, format!("the {what} table ({}) must have the word table's dtype ({})", dtype(*v), dtype(*word)))
                    );
                }
            }
            let table_rows = |v: ValueId, what: &str| match g.shape(v).first() {
                Some(Dim::Fixed(r)) => Ok(*r),
                _ => Err(cx.error(node, format!("the {what} table needs a fixed number of rows"))),
            };
            let rows = (table_rows(*word, "word")?, table_rows(*pos, "position")?, table_rows(*ty, "token type")?);
            input(&mut sig, &mut bind, "ids", it, *ids);
            input(&mut sig, &mut bind, "type_ids", it, *type_ids);
            input(&mut sig, &mut bind, "word", wt, *word);
            input(&mut sig, &mut bind, "pos", wt, *pos);
            input(&mut sig, &mut bind, "type", wt, *ty);
            (wt, it, rows.0, rows.1, rows.2)
        }
    };

    // Transform.
    let (norm_id, g_t, b_t, beta) = match &spec.norm {
        Norm::None => (0, "qf_f32", "qf_f32", false),
        Norm::Layer { gamma, beta } => {
            let gt = tr(dtype(*gamma), "gamma")?;
            input(&mut sig, &mut bind, "gamma", gt, *gamma);
            let bt = match beta {
                Some(b) => {
                    let bt = tr(dtype(*b), "beta")?;
                    input(&mut sig, &mut bind, "beta", bt, *b);
                    bt
                }
                None => "qf_f32",
            };
            (1, gt, bt, beta.is_some())
        }
        Norm::Rms { gamma } | Norm::Scale { gamma } => {
            let gt = tr(dtype(*gamma), "gamma")?;
            input(&mut sig, &mut bind, "gamma", gt, *gamma);
            (if matches!(spec.norm, Norm::Rms { .. }) { 2 } else { 5 }, gt, "qf_f32", false)
        }
        Norm::L2 => (3, "qf_f32", "qf_f32", false),
        Norm::Softmax => (4, "qf_f32", "qf_f32", false),
    };
    let y_t = tr(spec.y_dtype, "the result")?;

    // Quantization.
    let (quant_id, q_t, s_t, scale, zero, qmax) = match &spec.quant {
        None => (0, "qf_f32", "qf_f32", 0.0f32, None, 0.0f32),
        Some(q) => {
            let qt = if q.storage == DType::F4E2M1 { "qf_e2m1" } else { tr(q.storage, "the quantized result")? };
            let qmax = q.storage.max_finite() as f32;
            let (id, st, lit) = match &q.scale {
                Scale::Literal(s) => (1, "qf_f32", *s),
                Scale::PerTensor(v) | Scale::PerToken(v) => {
                    let st = tr(dtype(*v), "the scale")?;
                    input(&mut sig, &mut bind, "scale_in", st, *v);
                    (if matches!(q.scale, Scale::PerTensor(_)) { 2 } else { 4 }, st, 0.0)
                }
                Scale::Dynamic { .. } => (3, "qf_f32", 0.0),
                Scale::DynamicBlock { dtype: sd, .. } => (5, tr(*sd, "the block scales")?, 0.0),
            };
            (id, qt, st, lit, q.zero, qmax)
        }
    };

    // Outputs: q, scales, y (the IR's output order).
    if let Some(q) = &spec.quant {
        if let Some(codes) = q.q {
            sig.output("q", &format!("{q_t}::T"), codes);
            bind.push_str("    a.q = q;\n");
        }
        if let Scale::Dynamic { scales: Some(scales) } | Scale::DynamicBlock { scales: Some(scales), .. } = q.scale {
            sig.output("scales", &format!("{s_t}::T"), scales);
            bind.push_str("    a.scales = scales;\n");
        }
    }
    if let Some(y) = spec.y {
        sig.output("y", &format!("{y_t}::T"), y);
        bind.push_str("    a.y = y;\n");
    }
    sig.dim("rows", spec.rows.clone());
    bind.push_str("    a.rows = rows;\n");
    if let Dim::Sym(s) = spec.len {
        sig.dim("n", DimExpr::sym(g.symbols[s].name.clone()));
        bind.push_str("    a.n = n;\n");
    }
    if let Source::Embed { seq, .. } = &spec.source {
        sig.dim("seq", seq.clone());
        bind.push_str("    a.seq = seq;\n");
    }

    // Per-launch constants (per layer): a literal scale and a zero point.
    if quant_id == 1 {
        sig.scalar("scale", scale);
        bind.push_str("    a.scale = scale;\n");
    }
    if let Some(z) = zero {
        sig.scalar("zero", z as f32);
        bind.push_str("    a.zero = zero;\n");
    }
    if let Some((pre, post)) = spec.round_trip {
        sig.scalar("pre", pre);
        sig.scalar("post", post);
        bind.push_str("    a.pre = pre;\n    a.post = post;\n");
    }

    let b = |v: bool| if v { "true" } else { "false" };
    let config = format!(
        "    typedef {x_t} X;\n    typedef {id_t} ID;\n    typedef {g_t} G;\n    typedef {b_t} BT;\n    typedef {y_t} Y;\n    \
         typedef {q_t} Q;\n    typedef {s_t} S;\n    \
         static constexpr int HMAX = {hmax}, VEC = {vec}, WPR = {wpr}, RPB = {rpb};\n    \
         static constexpr int SOURCE = {source}, NORM = {norm_id}, QUANT = {quant_id}, GROUP = {group};\n    \
         static constexpr bool DYN = {dyn_len}, BETA = {beta}, STORE_Y = {store_y}, ZERO = {zero_on}, PREFETCH = {prefetch}, \
         PACKED = {packed}, ROUND_TRIP = {round_trip};\n    \
         static constexpr long long NB = {nb};\n    \
         static constexpr long long V = {v_rows}, P = {p_rows}, TT = {t_rows};\n    \
         static QF_DEVICE double eps() {{ return static_cast<double>({eps}); }}\n    \
         static QF_DEVICE float qmax() {{ return {qmax}; }}\n",
        source = u8::from(matches!(spec.source, Source::Embed { .. })),
        dyn_len = b(dyn_len),
        beta = b(beta),
        store_y = b(spec.y.is_some() && spec.round_trip.is_none()),
        round_trip = b(spec.round_trip.is_some()),
        zero_on = b(zero.is_some()),
        prefetch = b(PREFETCH),
        group = block.unwrap_or(0),
        packed = b(packed),
        nb = block.map_or(0, |g| hmax.div_ceil(g)),
        eps = f32_lit(spec.eps),
        qmax = f32_lit(qmax),
    );

    let mut values: Vec<(&str, String)> = prelude_values().into_iter().collect();
    values.extend([("config", config), ("threads", threads.to_string()), ("params", sig.c_params()), ("bind", bind)]);
    let source = render(cx, node, &spec.template, &values)?;
    let grid = [spec.rows.clone().ceil_div(rpb), 1.into(), 1.into()];
    Ok(sig.launch(spec.family, source, grid, [threads as u32, 1, 1], 0))
}

/// The row-kernel quantization for `spec` applied to rows of `data` (the norm's result), reading
/// an `Input` scale from `scale_input`; specific errors for what the engine cannot do. `q` and
/// `scales_out` are the codes and dynamic scales it writes, `None` for a round trip (`rank`: the
/// data's rank), which keeps both in registers.
pub(crate) fn row_quant(
    cx: &LowerCx,
    node: NodeId,
    spec: &QuantSpec,
    (q, rank): (Option<ValueId>, usize),
    scales_out: Option<ValueId>,
    scale_input: Option<ValueId>,
) -> Result<Quant, LowerError> {
    let dynamic_out = || {
        if q.is_some() && scales_out.is_none() {
            return Err(cx.error(node, "internal: dynamic quantize without a scales output"));
        }
        Ok(scales_out)
    };
    let zero = match spec.zero_point {
        None => None,
        Some(ZeroPoint::Literal(z)) => Some(z),
        Some(ZeroPoint::Input) => {
            return Err(cx.error(node, "a zero point read from an operand has no row kernel yet (literal zero points only)"))
        }
    };
    let scale = match (&spec.granularity, &spec.scale) {
        (Granularity::PerTensor, ScaleSource::Literal(s)) => Scale::Literal(*s),
        (Granularity::PerTensor, ScaleSource::Input) => {
            Scale::PerTensor(scale_input.ok_or_else(|| cx.error(node, "internal: missing scale operand"))?)
        }
        (Granularity::PerToken, ScaleSource::Input) => {
            Scale::PerToken(scale_input.ok_or_else(|| cx.error(node, "internal: missing scale operand"))?)
        }
        (Granularity::PerToken, ScaleSource::Literal(s)) => Scale::Literal(*s),
        (Granularity::PerToken, ScaleSource::Dynamic { dtype, .. }) => {
            if *dtype != DType::F32 {
                return Err(cx.error(node, format!("dynamic scales stored as {dtype} have no kernel yet (only f32)")));
            }
            Scale::Dynamic { scales: dynamic_out()? }
        }
        (Granularity::PerTensor, ScaleSource::Dynamic { .. }) => {
            return Err(cx.error(node, "dynamic per-tensor quantization has no kernel yet (needs a grid-wide amax); use per_token"))
        }
        (Granularity::PerChannel { .. }, _) => {
            return Err(cx.error(node, "per-channel quantization of a row-wise result has no kernel yet"))
        }
        (Granularity::Block { blocks }, ScaleSource::Dynamic { dtype, .. }) => {
            block_scale(cx, node, blocks, *dtype, zero.is_some(), rank, dynamic_out()?)?
        }
        (Granularity::Block { .. }, _) => {
            return Err(cx.error(node, "static block-scaled quantization has no row kernel yet (dynamic block scales only)"))
        }
    };
    let block = matches!(scale, Scale::DynamicBlock { .. });
    if !(matches!(spec.storage, DType::F8E4M3 | DType::F8E5M2 | DType::I8 | DType::U8) || (block && spec.storage == DType::F4E2M1)) {
        return Err(cx.error(
            node,
            format!("quantization to {} has no kernel yet (f8e4m3, f8e5m2, i8, u8; f4e2m1 with dynamic block scales)", spec.storage),
        ));
    }
    Ok(Quant { q, storage: spec.storage, scale, zero })
}

/// The row engine's dynamic block scale for `blocks` over data of rank `rank`: one block size
/// along the last axis, no zero point, scales stored as f32, f16, bf16, f8e4m3 or f8e5m2.
fn block_scale(
    cx: &LowerCx,
    node: NodeId,
    blocks: &[(i64, u64)],
    dtype: DType,
    zero: bool,
    rank: usize,
    scales: Option<ValueId>,
) -> Result<Scale, LowerError> {
    let group = match blocks {
        [(axis, g)] if rank > 0 && crate::ir::normalize_axis(*axis, rank) == Some(rank - 1) && *g > 0 => *g,
        _ => return Err(cx.error(node, "block-scaled quantization has a kernel for blocks along the last axis only")),
    };
    if zero {
        return Err(cx.error(node, "block-scaled quantization with a zero point has no kernel yet"));
    }
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F8E4M3 | DType::F8E5M2) {
        return Err(cx.error(node, format!("dynamic block scales stored as {dtype} have no kernel yet (f32, f16, bf16, f8e4m3, f8e5m2)")));
    }
    if let Some(out) = scales.filter(|&v| cx.graph.ty(v).dtype != dtype) {
        return Err(cx.error(node, format!("the scales output is {}, the spec says {dtype}", cx.graph.ty(out).dtype)));
    }
    Ok(Scale::DynamicBlock { scales, dtype, group })
}

/// The row transform of a fused op's norm of `kind` whose operands are `inputs[0..]` (x, gamma[,
/// beta]): `layernorm_quantize` and friends, `quant_round_trip {norm}`.
pub(crate) fn fused_norm(kind: NormKind, inputs: &[ValueId]) -> Norm {
    match kind {
        NormKind::LayerNorm => Norm::Layer { gamma: inputs[1], beta: Some(inputs[2]) },
        NormKind::RmsNorm => Norm::Rms { gamma: inputs[1] },
        NormKind::Scale => Norm::Scale { gamma: inputs[1] },
    }
}

/// Lowers `layernorm`, `rmsnorm`, `layernorm_quantize`, `rmsnorm_quantize` and `l2_normalize`.
pub fn lower(cx: &LowerCx, node: NodeId) -> Result<Lowered, LowerError> {
    let n = &cx.graph.nodes[node];
    let x = n.inputs[0];
    let len = *cx.graph.shape(x).last().ok_or_else(|| cx.error(node, "a row op needs rank ≥ 1"))?;
    let rows = cx.rows(x);
    let spec = match &n.op {
        Op::LayerNorm { eps } => RowSpec {
            family: "layernorm",
            template: LAYERNORM,
            source: Source::Dense(x),
            norm: Norm::Layer { gamma: n.inputs[1], beta: Some(n.inputs[2]) },
            eps: *eps,
            y_dtype: cx.graph.ty(n.outputs[0]).dtype,
            y: Some(n.outputs[0]),
            quant: None,
            round_trip: None,
            rows,
            len,
        },
        Op::RmsNorm { eps, .. } => RowSpec {
            family: "layernorm",
            template: LAYERNORM,
            source: Source::Dense(x),
            norm: Norm::Rms { gamma: n.inputs[1] },
            eps: *eps,
            y_dtype: cx.graph.ty(n.outputs[0]).dtype,
            y: Some(n.outputs[0]),
            quant: None,
            round_trip: None,
            rows,
            len,
        },
        Op::L2Normalize { eps } => RowSpec {
            family: "l2_normalize",
            template: L2_NORMALIZE,
            source: Source::Dense(x),
            norm: Norm::L2,
            eps: *eps,
            y_dtype: cx.graph.ty(n.outputs[0]).dtype,
            y: Some(n.outputs[0]),
            quant: None,
            round_trip: None,
            rows,
            len,
        },
        Op::NormQuantize { kind, eps, via, quant, keep_normed, .. } => {
            let norm = fused_norm(*kind, &n.inputs);
            let next = 1 + crate::ir::infer::norm_params(*kind);
            let scale_input = (quant.scale == ScaleSource::Input).then(|| n.inputs[next]);
            let dynamic = quant.is_dynamic();
            let scales_out = dynamic.then(|| n.outputs[1]);
            let q = row_quant(cx, node, quant, (Some(n.outputs[0]), cx.graph.shape(x).len()), scales_out, scale_input)?;
            let y = keep_normed.then(|| *n.outputs.last().expect("normed output"));
            RowSpec {
                family: "layernorm",
                template: LAYERNORM,
                source: Source::Dense(x),
                norm,
                eps: *eps,
                y_dtype: *via,
                y,
                quant: Some(q),
                round_trip: None,
                rows,
                len,
            }
        }
        other => return Err(cx.error(node, format!("internal: {} is not a norm", other.mnemonic()))),
    };
    let mut launch = row_launch(cx, node, &spec)?;
    // A `prologue` norm runs only where its reader's skinny kernel does not compute it.
    launch.when = super::prologue::norm_guard(cx, node)?;
    Ok(Lowered::Launches(vec![launch]))
}
