//! `attention`: fused multi-head attention from `templates/attention.cu` (see its header for the
//! design: tensor-core `mma.sync.m16n8k16` — `m16n8k32.e4m3` for FP8 operands —, two passes over
//! the key tiles, every rounding step of the reference interpreter reproduced).
//!
//! Operands `q, k, v : T[B, S, H·D]` (token-major, heads interleaved), or E4M3 codes with the
//! op's `fp8(...)`, then `mask_bias : T[B, S]` when the op is masked; `T` is `f16` or `bf16`. The
//! result is `T[B, S, H·D]`, or FP8 E4M3 / i8 bytes when the op carries a per-tensor output
//! quantization with a literal scale.
//!
//! Kernel signature, in order: `(q, k, v, [const u16* mask_bias,] out, i32 S, f32 qk_alpha,
//! f32 p_scale, f32 p_rcp, f32 pv_alpha, f32 out_scale)`: operands are `u16*` (`T`) or `u8*`
//! (E4M3); `mask_bias` only when masked; `out` is `u16*` (`T`) or `u8*`; the five floats are the
//! per-layer constants ([`AttentionSpec::scalars`], 0 where unused), so every layer's attention of
//! one shape is one kernel.
//! Launch: grid `(ceil_div(S, 64), H, B)`, block `(128, 1, 1)`, [`AttentionSpec::smem_bytes`]
//! of dynamic shared memory (5 tiles of `64 × D` operands: 20, 40 or 80 KiB for f16 D = 32, 64,
//! 128; 6 tiles of one byte for E4M3). `D` ∈ {32, 64, 128} and `H` are compiled in; `S` and
//! `B` are run-time values.

use crate::codegen::kernel::{finish_kernel, params, Arg, KernelDef, Launch, LowerCx, LowerError, Lowered};
use crate::codegen::prelude;
use crate::codegen::template::{Template, TemplateError};
use crate::ir::{Attention, AttentionFp8, DType, Granularity, NodeId, Op, QuantSpec, ScaleSource};
use crate::plan::{DimExpr, ParamType, Scalar};

/// Name of the template, prefix of every generated kernel name.
pub const TEMPLATE: &str = "attention";

const ATTENTION: Template = Template { name: "attention.cu", text: include_str!("../../../templates/attention.cu") };

/// The head sizes the template supports.
pub const HEAD_DIMS: [u32; 3] = [32, 64, 128];

/// Query rows per CTA (grid x = `ceil_div(S, TILE_Q)`).
pub const TILE_Q: u64 = 64;

/// Threads per CTA (4 warps, 16 query rows each).
pub const THREADS: u32 = 128;

/// The trailing `float` parameters of every attention kernel ([`AttentionSpec::scalars`]).
pub const SCALAR_PARAMS: [&str; 5] = ["qk_alpha", "p_scale", "p_rcp", "pv_alpha", "out_scale"];

/// Largest grid y / z extent (heads, batch).
const MAX_GRID_YZ: u64 = 65535;

/// What the kernel stores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OutKind {
    /// The operands' dtype `T`.
    Same,
    /// FP8 E4M3 bytes: `qf_quantize_e4m3(o, scale)` (a true division, RNE, saturating).
    E4M3 {
        /// The per-tensor dequantization scale.
        scale: f32,
    },
    /// i8 codes: `qf_quantize_i8(o, scale)` (a true division, RNE, saturating, NaN → 0).
    I8 {
        /// The per-tensor dequantization scale.
        scale: f32,
    },
}

/// Everything the attention template is specialised on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionSpec {
    /// Head size `D`: 32, 64 or 128.
    pub head_dim: u32,
    /// Number of heads `H`.
    pub heads: u32,
    /// Multiplier applied to the (rounded) scores, if any.
    pub scale: Option<f32>,
    /// Whether a `mask_bias : T[B, S]` operand is added to the scores.
    pub mask: bool,
    /// The result's storage.
    pub out: OutKind,
    /// `T`, the dtype of the scores, probabilities, context and `mask_bias` (and of `q`, `k`,
    /// `v` without `fp8`): f16 or bf16.
    pub dtype: DType,
    /// E4M3 `q`, `k`, `v` and the multipliers of the two products (the IR's `fp8(...)`).
    pub fp8: Option<AttentionFp8>,
}

/// What can go wrong generating an attention kernel.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AttentionError {
    /// The spec asks for something the template does not do.
    #[error("unsupported attention: {0}")]
    Unsupported(String),
    /// The template and the parameters disagree (a qfuse bug).
    #[error(transparent)]
    Template(#[from] TemplateError),
}

impl AttentionSpec {
    /// Dynamic shared memory: Q, two K and two V tiles of `64 × D` operands (2 bytes, or 1 for
    /// E4M3, which adds the transposed V tile).
    pub fn smem_bytes(&self) -> u32 {
        let tiles = if self.fp8.is_some() { 6 } else { 5 };
        tiles * 64 * self.head_dim * self.operand_bytes()
    }

    /// Bytes per operand element.
    fn operand_bytes(&self) -> u32 {
        if self.fp8.is_some() {
            1
        } else {
            2
        }
    }

    /// Checks every constraint the template relies on; the error says which one failed.
    pub fn validate(&self) -> Result<(), AttentionError> {
        let bad = |reason: String| Err(AttentionError::Unsupported(reason));
        match self.dtype {
            DType::F16 | DType::BF16 => {}
            d if d.is_quantized_storage() => {
                return bad(format!(
                    "quantized operands ({d}) are not supported: q, k, v (and the mask) must be f16 or bf16; \
                     dequantize them first"
                ))
            }
            d => return bad(format!("operands of dtype {d} are not supported: q, k, v must be f16 or bf16")),
        }
        if !HEAD_DIMS.contains(&self.head_dim) {
            return bad(format!("head size {} is not one of {HEAD_DIMS:?}", self.head_dim));
        }
        if let Some(f) = &self.fp8 {
            for (name, x) in [("qk_alpha", f.qk_alpha), ("p_scale", f.p_scale), ("pv_alpha", f.pv_alpha)] {
                if !(x.is_finite() && x > 0.0) {
                    return bad(format!("FP8 attention: {name} {x} must be finite and positive"));
                }
            }
        }
        if self.heads == 0 || u64::from(self.heads) > MAX_GRID_YZ {
            return bad(format!("{} heads: must be between 1 and {MAX_GRID_YZ} (grid y)", self.heads));
        }
        if u64::from(self.heads) * u64::from(self.head_dim) > i32::MAX as u64 / 64 {
            return bad(format!("{} heads of size {} are too wide", self.heads, self.head_dim));
        }
        if let Some(s) = self.scale {
            if !s.is_finite() {
                return bad(format!("score scale {s} is not finite"));
            }
        }
        if let OutKind::E4M3 { scale } | OutKind::I8 { scale } = self.out {
            if !(scale.is_finite() && scale > 0.0) {
                return bad(format!("output quantization scale {scale} must be finite and positive"));
            }
        }
        Ok(())
    }

    /// Kernel parameters in signature order.
    pub fn params(&self) -> Vec<(&'static str, ParamType)> {
        let mut p = vec![("q", ParamType::Ptr), ("k", ParamType::Ptr), ("v", ParamType::Ptr)];
        if self.mask {
            p.push(("mask_bias", ParamType::Ptr));
        }
        p.extend([("out", ParamType::Ptr), ("S", ParamType::I32)]);
        p.extend(SCALAR_PARAMS.map(|name| (name, ParamType::F32)));
        p
    }

    /// The per-launch constants, in [`SCALAR_PARAMS`] order: the FP8 multipliers and
    /// probability scale with its reciprocal RN(1 / p_scale), and the output quantize's scale (0
    /// where unused). Layers that differ only in these share one kernel.
    pub fn scalars(&self) -> [f32; 5] {
        let (qk, ps, pr, pv) = self.fp8.map_or((0.0, 0.0, 0.0, 0.0), |f| (f.qk_alpha, f.p_scale, 1.0 / f.p_scale, f.pv_alpha));
        let out = match self.out {
            OutKind::Same => 0.0,
            OutKind::E4M3 { scale } | OutKind::I8 { scale } => scale,
        };
        [qk, ps, pr, pv, out]
    }
}

/// Renders `spec` for a batch of `batch` sequences of `seq` tokens (grid `(ceil_div(seq, 64),
/// heads, batch)`); fails if the spec is unsupported.
pub fn kernel(spec: &AttentionSpec, batch: DimExpr, seq: DimExpr) -> Result<KernelDef, AttentionError> {
    spec.validate()?;
    let flag = |b: bool| if b { "true" } else { "false" }.to_string();
    let quant_out = spec.out != OutKind::Same;
    let source = ATTENTION.render(&[
        ("prelude", prelude()),
        // Kept as a placeholder: `finish_kernel` names the kernel by the hash of this text.
        ("kernel_name", "{{kernel_name}}".into()),
        ("head_dim", spec.head_dim.to_string()),
        ("heads", spec.heads.to_string()),
        ("bf16", flag(spec.dtype == DType::BF16)),
        ("fp8", flag(spec.fp8.is_some())),
        ("has_mask", flag(spec.mask)),
        ("quant_out", flag(quant_out)),
        ("out_i8", flag(matches!(spec.out, OutKind::I8 { .. }))),
        ("has_scale", flag(spec.scale.is_some())),
        ("scale_bits", format!("{:#010x}", spec.scale.unwrap_or(0.0).to_bits())),
        ("mask_param", if spec.mask { "const uint16_t* __restrict__ mask_bias, " } else { "" }.into()),
        ("mask_arg", if spec.mask { "mask_bias" } else { "nullptr" }.into()),
    ])?;
    let grid = [seq.ceil_div(TILE_Q), DimExpr::Const(u64::from(spec.heads)), batch];
    Ok(finish_kernel(TEMPLATE, source, grid, [THREADS, 1, 1], spec.smem_bytes(), params(&spec.params())))
}

/// The output kind an `attention`'s optional output quantization asks for.
pub fn out_kind(output: Option<&QuantSpec>) -> Result<OutKind, String> {
    let Some(q) = output else { return Ok(OutKind::Same) };
    if !matches!(q.storage, DType::F8E4M3 | DType::I8) {
        return Err(format!("output quantization to {} is not supported (only f8e4m3 and i8)", q.storage));
    }
    if q.granularity != Granularity::PerTensor {
        return Err(format!("output quantization granularity {:?} is not supported (only per_tensor)", q.granularity));
    }
    if q.zero_point.is_some() {
        return Err("an output zero point is not supported".into());
    }
    match q.scale {
        ScaleSource::Literal(scale) if q.storage == DType::I8 => Ok(OutKind::I8 { scale }),
        ScaleSource::Literal(scale) => Ok(OutKind::E4M3 { scale }),
        ref other => Err(format!("output scale {other:?} is not supported (only a literal scale)")),
    }
}

/// Builds the spec of an attention node from its operands (`q, k, v[, mask_bias]`) and attributes,
/// checking every shape and dtype the kernel relies on. Returns the spec and the `B` and `S`
/// extents of `q`.
pub fn spec_for(cx: &LowerCx, node: NodeId, a: &Attention) -> Result<(AttentionSpec, DimExpr, DimExpr), LowerError> {
    let Attention { heads, scale, mask, fp8, ref output } = *a;
    let g = cx.graph;
    let n = &g.nodes[node];
    let err = |reason: String| cx.error(node, reason);
    let want_inputs = a.arity();
    if n.inputs.len() != want_inputs || n.outputs.len() != 1 {
        return Err(err(format!("expected {want_inputs} operands and 1 result, got {} and {}", n.inputs.len(), n.outputs.len())));
    }
    let (q, k, v) = (n.inputs[0], n.inputs[1], n.inputs[2]);
    let operand = g.ty(q).dtype;
    for (what, val) in [("k", k), ("v", v)] {
        if g.ty(val).dtype != operand {
            return Err(err(format!("{what} is {} but q is {operand}", g.ty(val).dtype)));
        }
    }
    let dtype = match fp8 {
        Some(f) if operand == DType::F8E4M3 => f.compute,
        Some(_) => return Err(err(format!("fp8(...) attention takes f8e4m3 operands, q is {operand}"))),
        None => operand,
    };
    let shape = g.shape(q);
    if shape.len() != 3 {
        return Err(err(format!("q must be [B, S, H·D], got rank {}", shape.len())));
    }
    if g.shape(k) != shape || g.shape(v) != shape {
        return Err(err("q, k and v must have the same shape".into()));
    }
    if heads == 0 {
        return Err(err("heads must be positive".into()));
    }
    let width = shape[2].fixed().ok_or_else(|| err("the last extent H·D of q must be fixed".into()))?;
    if width % u64::from(heads) != 0 {
        return Err(err(format!("q's last extent {width} is not a multiple of {heads} heads")));
    }
    let head_dim =
        u32::try_from(width / u64::from(heads)).map_err(|_| err(format!("head size {} is too large", width / u64::from(heads))))?;
    if mask {
        let m = n.inputs[3];
        if g.ty(m).dtype != dtype {
            return Err(err(format!("mask_bias is {} but the attention computes in {dtype}", g.ty(m).dtype)));
        }
        if g.shape(m).as_slice() != &shape[..2] {
            return Err(err("mask_bias must be [B, S] with q's B and S".into()));
        }
    }
    let out_ty = g.ty(n.outputs[0]);
    let out = out_kind(output.as_ref()).map_err(err)?;
    let want_out = match out {
        OutKind::E4M3 { .. } => DType::F8E4M3,
        OutKind::I8 { .. } => DType::I8,
        OutKind::Same => dtype,
    };
    if out_ty.dtype != want_out || &out_ty.shape != shape {
        return Err(err(format!("the result must be {want_out} with q's shape")));
    }
    let max = cx.max_shape(q);
    if max[0] > MAX_GRID_YZ {
        return Err(err(format!("batch up to {} exceeds the grid limit {MAX_GRID_YZ}", max[0])));
    }
    if max[1] > i32::MAX as u64 - TILE_Q {
        return Err(err(format!("sequence length up to {} does not fit the kernel's i32", max[1])));
    }
    let spec = AttentionSpec { head_dim, heads, scale, mask, out, dtype, fp8 };
    spec.validate().map_err(|e| err(e.to_string()))?;
    let dims = cx.dims(q);
    Ok((spec, dims[0].clone(), dims[1].clone()))
}

/// Lowers an `attention` node with the given attributes to one launch.
pub fn lower_with(cx: &LowerCx, node: NodeId, a: &Attention) -> Result<Lowered, LowerError> {
    if cx.sm < 80 {
        return Err(cx.error(node, format!("attention needs sm_80 or newer (mma.sync f16/bf16, cp.async), target is sm_{}", cx.sm)));
    }
    if a.fp8.is_some() && cx.sm < 89 {
        return Err(cx.error(node, format!("FP8 attention needs sm_89 or newer (mma.sync e4m3), target is sm_{}", cx.sm)));
    }
    let (spec, batch, seq) = spec_for(cx, node, a)?;
    let kernel = kernel(&spec, batch, seq.clone()).map_err(|e| cx.error(node, e.to_string()))?;
    let n = &cx.graph.nodes[node];
    let mut args: Vec<Arg> = n.inputs.iter().map(|&v| Arg::Value(v)).collect();
    args.push(Arg::Value(n.outputs[0]));
    args.push(Arg::Scalar(Scalar::Dim(seq)));
    args.extend(spec.scalars().map(|v| Arg::Scalar(Scalar::F32(v))));
    Ok(Lowered::Launches(vec![Launch { kernel, args, when: None }]))
}

/// Lowers an `attention` node (`q, k, v[, mask_bias]`) to one launch of the attention template.
pub fn lower(cx: &LowerCx, node: NodeId) -> Result<Lowered, LowerError> {
    match &cx.graph.nodes[node].op {
        Op::Attention(a) => lower_with(cx, node, a),
        other => Err(cx.error(node, format!("attention lowering called on `{}`", other.mnemonic()))),
    }
}
