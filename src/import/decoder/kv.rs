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
