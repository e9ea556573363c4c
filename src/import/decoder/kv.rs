//! How a decoder's KV cache is stored: the dtype of the cache tensors and, for quantized caches,
//! each layer's scales. The cache is graph state (`past.{k,v}.L` inputs, `present.{k,v}.L`
//! outputs), so its format is part of the IR like any quantized tensor.

use crate::ir::{DType, QuantSpec};

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
}

impl KvFormat {
    /// The dtype of the cache tensors.
    pub fn storage(&self) -> DType {
        match self {
            KvFormat::Float(d) => *d,
            KvFormat::PerTensor { storage, .. } => *storage,
        }
    }

    /// The quantization of layer `layer`'s K (`kind = 0`) or V (`kind = 1`) cache, if quantized.
    pub fn spec(&self, layer: usize, kind: usize) -> Option<QuantSpec> {
        match self {
            KvFormat::Float(_) => None,
            KvFormat::PerTensor { storage, scales } => {
                let (k, v) = scales[layer];
                Some(QuantSpec::per_tensor(*storage, if kind == 0 { k } else { v }))
            }
        }
    }

    /// The `--kv-cache` spellings: `f32`, `f16`, `bf16`, `fp8`, `int8`.
    pub fn parse_storage(name: &str) -> Result<DType, String> {
        Ok(match name {
            "f32" => DType::F32,
            "f16" | "fp16" => DType::F16,
            "bf16" => DType::BF16,
            "fp8" => DType::F8E4M3,
            "int8" => DType::I8,
            other => return Err(format!("unknown KV-cache format `{other}` (supported: f32, f16, bf16, fp8, int8)")),
        })
    }

    /// Bytes one cached token takes in one layer (K and V, all KV heads).
    pub fn bytes_per_token(&self, kv_heads: u64, head_dim: u64) -> u64 {
        2 * kv_heads * head_dim * u64::from(self.storage().bits()) / 8
    }
}

/// Per-layer `(k_scale, v_scale)` for a `storage` cache: the largest |K| and |V| each layer
/// writes over `texts` (run one at a time through the FP32 model with an unquantized cache),
/// divided by the format's largest code. A layer whose amax is zero or not finite is an error
/// naming it.
pub fn calibrate(
    model: &super::DecoderModel,
    texts: &[String],
    storage: DType,
    quiet: bool,
) -> Result<Vec<(f32, f32)>, crate::import::ImportError> {
    use crate::import::ImportError;
    let layers = model.config.num_layers as usize;
    let mut amax = vec![(0f32, 0f32); layers];
    let f32_graph = model.step_graph(&KvFormat::Float(DType::F32), "kv-calibration")?;
    let tok = model
        .tokenizer
        .as_ref()
        .ok_or_else(|| ImportError::MissingFile { path: model.path.clone(), what: "tokenizer (needed for calibration)" })?;
    let bar = if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(texts.len() as u64) };
    bar.set_message("calibrating the KV cache");
    for text in texts {
        let mut ids = tok.encode(text)?;
        ids.truncate(model.max_step() as usize);
        let inputs = super::prefill_inputs(&f32_graph, &ids).map_err(|message| ImportError::KvCache {
            path: model.path.clone(),
            layer: "all layers".into(),
            message,
        })?;
        let outs = crate::interp::run(&f32_graph, &model.weights, &inputs).map_err(|e| ImportError::KvCache {
            path: model.path.clone(),
            layer: "all layers".into(),
            message: format!("calibration run failed: {e}"),
        })?;
        for (name, t) in &outs {
            let Some((kind, layer)) = name.strip_prefix("present.").and_then(|r| r.split_once('.')) else { continue };
            let Ok(layer) = layer.parse::<usize>() else { continue };
            let m = t.to_f32_vec().iter().fold(0f32, |m, x| m.max(x.abs()));
            let slot = &mut amax[layer.min(layers - 1)];
            if kind == "k" {
                slot.0 = slot.0.max(m);
            } else {
                slot.1 = slot.1.max(m);
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let qmax = storage.max_finite() as f32;
    amax.iter()
        .enumerate()
        .map(|(l, &(k, v))| {
            if !(k.is_finite() && k > 0.0 && v.is_finite() && v > 0.0) {
                let message = format!("layer {l}: calibration saw K amax {k} and V amax {v}; no usable scale");
                return Err(ImportError::KvCache { path: model.path.clone(), layer: format!("model.layers.{l}.self_attn"), message });
            }
            Ok((k / qmax, v / qmax))
        })
        .collect()
}
