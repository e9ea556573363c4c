//! How a decoder's KV cache is stored: the dtype of the cache tensors and, for quantized caches,
//! each layer's scales. The cache is graph state (`past.{k,v}.L` inputs, `present.{k,v}.L`
//! outputs), so its format is part of the IR like any quantized tensor.

use crate::ir::{DType, QuantSpec, ValueId, KV_NVFP4_BLOCK};

/// The storage of the KV cache.
#[derive(Clone, Debug, PartialEq)]
pub enum KvFormat {
    /// Unquantized, in this float dtype (f32, f16 or bf16).
    Float(DType),
    /// Per-tensor quantized (FP8 E4M3 or INT8), one static scale per layer for K and one for V.
    PerTensor {
        /// `f8e4m3` or `i8`.
        storage: DType,
        /// `(k_scale, v_scale)` of each layer (dequantization multipliers).
        scales: Vec<(f32, f32)>,
    },
    /// NVFP4: E2M1 codes in blocks of [`KV_NVFP4_BLOCK`] along D, one E4M3 scale per block
    /// (computed as each token is appended: `e4m3(amax_block / 6)` of the values divided by the
    /// global), under one calibrated power-of-two global scale per layer for K and one for V.
    /// The block scales are state of their own: `past.{k,v}_scale.L [B,P,KV,D/16]` beside
    /// `past.{k,v}.L`.
    Nvfp4 {
        /// `(k_global, v_global)` of each layer.
        globals: Vec<(f32, f32)>,
    },
}

/// The name of the state input holding layer `layer`'s K (`kind = 0`) or V (`kind = 1`) cache
/// (`past.k.3`), or with `scales` its NVFP4 block scales (`past.k_scale.3`).
pub fn state_name(prefix: &str, layer: usize, kind: usize, scales: bool) -> String {
    format!("{prefix}.{}{}.{layer}", ["k", "v"][kind], if scales { "_scale" } else { "" })
}

/// `(layer, kind, scales)` of a KV state name `past.k.3` (`(3, 0, false)`), `past.v_scale.3`
/// (`(3, 1, true)`); `present.…` names parse alike.
pub fn parse_state_name(name: &str) -> Option<(usize, usize, bool)> {
    let rest = name.strip_prefix("past.").or_else(|| name.strip_prefix("present."))?;
    let (kind, layer) = rest.split_once('.')?;
    let (kind, scales) = match kind.strip_suffix("_scale") {
        Some(k) => (k, true),
        None => (kind, false),
    };
    let kind = ["k", "v"].iter().position(|k| *k == kind)?;
    Some((layer.parse().ok()?, kind, scales))
}

impl KvFormat {
    /// The dtype of the cache tensors.
    pub fn storage(&self) -> DType {
        match self {
            KvFormat::Float(d) => *d,
            KvFormat::PerTensor { storage, .. } => *storage,
            KvFormat::Nvfp4 { .. } => DType::F4E2M1,
        }
    }

    /// The quantization of layer `layer`'s K (`kind = 0`) or V (`kind = 1`) cache, if quantized
    /// per tensor (`None` for float and NVFP4 caches: see [`Self::nvfp4_specs`]).
    pub fn spec(&self, layer: usize, kind: usize) -> Option<QuantSpec> {
        match self {
            KvFormat::Float(_) | KvFormat::Nvfp4 { .. } => None,
            KvFormat::PerTensor { storage, scales } => {
                let (k, v) = scales[layer];
                Some(QuantSpec::per_tensor(*storage, if kind == 0 { k } else { v }))
            }
        }
    }

    /// The per-tensor multiplier of layer `layer`'s K or V codes: the per-tensor scale, or
    /// NVFP4's global scale; `None` for a float cache.
    pub fn tensor_scale(&self, layer: usize, kind: usize) -> Option<f32> {
        let pick = |(k, v): (f32, f32)| if kind == 0 { k } else { v };
        match self {
            KvFormat::Float(_) => None,
            KvFormat::PerTensor { scales, .. } => Some(pick(scales[layer])),
            KvFormat::Nvfp4 { globals } => Some(pick(globals[layer])),
        }
    }

    /// NVFP4's quantize spec (E2M1, blocks of 16 along the last axis, E4M3 scales computed at
    /// run time) and the dequantize spec reading those scales as an operand.
    pub fn nvfp4_specs() -> (QuantSpec, QuantSpec) {
        let granularity = crate::ir::Granularity::Block { blocks: vec![(-1, u64::from(KV_NVFP4_BLOCK))] };
        let dynamic = crate::ir::ScaleSource::Dynamic { dtype: DType::F8E4M3, rounding: crate::numerics::E8M0Rounding::Up };
        let q = QuantSpec { storage: DType::F4E2M1, granularity, scale: dynamic, zero_point: None };
        let dq = QuantSpec { scale: crate::ir::ScaleSource::Input, ..q.clone() };
        (q, dq)
    }

    /// The `--kv-cache` spellings: `f32`, `f16`, `bf16`, `fp8`, `int8`, `nvfp4` (its storage
    /// dtype is `f4e2m1`).
    pub fn parse_storage(name: &str) -> Result<DType, String> {
        Ok(match name {
            "f32" => DType::F32,
            "f16" | "fp16" => DType::F16,
            "bf16" => DType::BF16,
            "fp8" => DType::F8E4M3,
            "int8" => DType::I8,
            "nvfp4" => DType::F4E2M1,
            other => return Err(format!("unknown KV-cache format `{other}` (supported: f32, f16, bf16, fp8, int8, nvfp4)")),
        })
    }

    /// Bytes one cached token takes in one layer (K and V, all KV heads). NVFP4: D/2 bytes of
    /// codes and D/16 E4M3 scales per head, 4.5 bits per element.
    pub fn bytes_per_token(&self, kv_heads: u64, head_dim: u64) -> u64 {
        let per_head = match self {
            KvFormat::Nvfp4 { .. } => head_dim / 2 + head_dim.div_ceil(u64::from(KV_NVFP4_BLOCK)),
            _ => head_dim * u64::from(self.storage().bits()) / 8,
        };
        2 * kv_heads * per_head
    }
}

/// Per-layer `(k_scale, v_scale)` for a `storage` cache: the largest |K| and |V| each layer
/// writes over `texts` (run through the FP32 model with an unquantized cache, span of layers by
/// span of layers ([`crate::quant::calib::stream`]: the logits are never computed),
/// [`Imported::texts_per_run`](crate::import::Imported::texts_per_run) padded sequences per run;
/// only each sequence's real positions count, so the result is that of one run per text),
/// divided by the format's largest code; for `f4e2m1` (NVFP4) the global scales
/// [`nvfp4_global`]. A layer whose amax is zero or not finite is an error naming it.
pub fn calibrate(
    model: &super::DecoderModel,
    texts: &[String],
    storage: DType,
    quiet: bool,
) -> Result<Vec<(f32, f32)>, crate::import::ImportError> {
    use crate::import::{ImportError, Imported};
    let layers = model.config.num_layers as usize;
    let mut amax = vec![(0f32, 0f32); layers];
    let f32_graph = model.step_graph(&KvFormat::Float(DType::F32), "kv-calibration")?;
    let fail = |message: String| ImportError::KvCache { path: model.path.clone(), layer: "all layers".into(), message };
    // The `present` caches, observed span by span of layers (`quant::calib::stream`).
    let present: Vec<(ValueId, usize, usize)> = f32_graph
        .outputs
        .iter()
        .filter_map(|(name, v)| {
            let (layer, kind, _) = parse_state_name(name).filter(|_| name.starts_with("present."))?;
            Some((*v, layer.min(layers - 1), kind))
        })
        .collect();
    let values: Vec<ValueId> = present.iter().map(|p| p.0).collect();
    let spans = crate::quant::calib::stream::Spans::new(&f32_graph, &values);
    let encoded =
        texts.chunks(model.texts_per_run().max(1)).map(|chunk| model.prefill_batch(&f32_graph, chunk)).collect::<Result<Vec<_>, _>>()?;
    let runs: Vec<_> = encoded.iter().map(|e| crate::quant::calib::Run { inputs: &e.inputs, tokens: e.tokens.as_deref() }).collect();
    let bar = crate::progress::bar(spans.len() as u64, "spans", "calibrating the KV cache, layer by layer", quiet);
    let mut failure = None;
    crate::quant::calib::stream::for_each(
        &f32_graph,
        &model.weights,
        &runs,
        &spans,
        &mut |r, v, t| {
            let Some(&(_, layer, kind)) = present.iter().find(|p| p.0 == v) else { return };
            let xs = t.to_f32_vec();
            match crate::quant::calib::sequence_rows(&xs, &t.shape, runs[r].tokens) {
                Ok(rows) => {
                    let m = rows.iter().flat_map(|r| r.iter()).fold(0f32, |m, x| m.max(x.abs()));
                    let slot = &mut amax[layer];
                    if kind == 0 {
                        slot.0 = slot.0.max(m);
                    } else {
                        slot.1 = slot.1.max(m);
                    }
                }
                Err(e) => failure = failure.take().or(Some(format!("present.{}.{layer}: {e}", ["k", "v"][kind]))),
            }
        },
        &mut |_| bar.inc(1),
    )
    .map_err(|e| fail(format!("calibration run failed: {e}")))?;
    if let Some(message) = failure {
        return Err(fail(message));
    }
    bar.finish_and_clear();
    if storage == DType::F4E2M1 {
        return check_amax(model, &amax).map(|amax| amax.iter().map(|&(k, v)| (nvfp4_global(k), nvfp4_global(v))).collect());
    }
    let qmax = storage.max_finite() as f32;
    Ok(check_amax(model, &amax)?.iter().map(|&(k, v)| (k / qmax, v / qmax)).collect())
}

/// NVFP4's global scale for a calibrated `amax`: the power of two at or above `amax / (6 · 448)`,
/// the rule of NVFP4 activations ([`crate::quant::nvfp4_global`]): block scales `≤ 448` then
/// cover the calibrated range, and multiplying by a power of two is exact in any float dtype,
/// so the interpreter and the GPU divide and multiply by it identically.
pub fn nvfp4_global(amax: f32) -> f32 {
    crate::quant::nvfp4_global(amax)
}

/// `amax` unchanged when every layer's K and V amax is positive and finite, else an error naming
/// the first layer that is not.
fn check_amax(model: &super::DecoderModel, amax: &[(f32, f32)]) -> Result<Vec<(f32, f32)>, crate::import::ImportError> {
    for (l, &(k, v)) in amax.iter().enumerate() {
        if !(k.is_finite() && k > 0.0 && v.is_finite() && v > 0.0) {
            let message = format!("layer {l}: calibration saw K amax {k} and V amax {v}; no usable scale");
            return Err(crate::import::ImportError::KvCache {
                path: model.path.clone(),
                layer: format!("model.layers.{l}.self_attn"),
                message,
            });
        }
    }
    Ok(amax.to_vec())
}
