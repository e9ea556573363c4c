//! Hugging Face Llama-family folders (`model_type` llama, mistral, qwen2): `config.json` →
//! [`DecoderConfig`], and the weights (`model.safetensors` or a sharded index).

use super::config::{DecoderConfig, Family};
use crate::import::json::JsonFile;
use crate::import::{ImportError, WeightStore};
use crate::ir::{RopeLlama3, RopePairs};
use serde_json::Value;
use std::path::Path;

/// The families a `model_type` names, or `None`.
pub fn family(model_type: &str) -> Option<Family> {
    match model_type {
        "llama" => Some(Family::Llama),
        "mistral" => Some(Family::Mistral),
        "qwen2" => Some(Family::Qwen2),
        _ => None,
    }
}

/// Reads a Llama-family `config.json`; errors name the field.
pub fn config(cfg: &JsonFile, family: Family) -> Result<DecoderConfig, ImportError> {
    let heads = cfg.positive("num_attention_heads")?;
    let hidden = cfg.positive("hidden_size")?;
    let head_dim = match cfg.value.get("head_dim") {
        Some(Value::Null) | None => hidden / heads,
        Some(_) => cfg.positive("head_dim")?,
    };
    if family == Family::Mistral && !matches!(cfg.value.get("sliding_window"), None | Some(Value::Null)) {
        let window = cfg.positive("sliding_window")?;
        let max = cfg.positive_or("max_position_embeddings", 32768)?;
        if window < max {
            return Err(field(cfg, "sliding_window", format!("sliding-window attention ({window} < {max} positions) is not supported")));
        }
    }
    let c = DecoderConfig {
        family,
        vocab_size: cfg.positive("vocab_size")?,
        hidden_size: hidden,
        num_layers: cfg.positive("num_hidden_layers")?,
        num_heads: heads,
        num_kv_heads: cfg.positive_or("num_key_value_heads", heads)?,
        head_dim,
        intermediate_size: cfg.positive("intermediate_size")?,
        rms_norm_eps: cfg.float_or("rms_norm_eps", 1e-6)? as f32,
        rope_theta: cfg.float_or("rope_theta", 10000.0)? as f32,
        rope_pairs: RopePairs::Half,
        rope_llama3: rope_scaling(cfg)?,
        tie_word_embeddings: cfg.bool_or("tie_word_embeddings", family == Family::Qwen2)?,
        qkv_bias: family == Family::Qwen2,
        max_position_embeddings: cfg.positive_or("max_position_embeddings", 2048)?,
        bos_token_id: token_id(cfg, "bos_token_id")?.first().copied(),
        eos_token_ids: token_id(cfg, "eos_token_id")?,
    };
    let act = cfg.string_or("hidden_act", "silu")?;
    if act != "silu" {
        return Err(field(cfg, "hidden_act", format!("only \"silu\" (SwiGLU) is supported, got \"{act}\"")));
    }
    c.check().map_err(|(name, message)| field(cfg, name, message))?;
    Ok(c)
}

/// `rope_scaling`: absent/null, or `{"rope_type": "llama3", ...}`.
fn rope_scaling(cfg: &JsonFile) -> Result<Option<RopeLlama3>, ImportError> {
    let Some(s) = cfg.value.get("rope_scaling").filter(|v| !v.is_null()) else { return Ok(None) };
    let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(Value::as_str).unwrap_or("");
    if kind == "default" {
        return Ok(None);
    }
    if kind != "llama3" {
        return Err(field(cfg, "rope_scaling.rope_type", format!("only \"llama3\" scaling is supported, got \"{kind}\"")));
    }
    let num = |key: &str| -> Result<f64, ImportError> {
        s.get(key).and_then(Value::as_f64).ok_or_else(|| field(cfg, &format!("rope_scaling.{key}"), "expected a number".into()))
    };
    Ok(Some(RopeLlama3 {
        factor: num("factor")? as f32,
        low_freq_factor: num("low_freq_factor")? as f32,
        high_freq_factor: num("high_freq_factor")? as f32,
        original_max_positions: num("original_max_position_embeddings")? as u32,
    }))
}

/// A token id field that may be absent, a number or a list of numbers.
fn token_id(cfg: &JsonFile, name: &str) -> Result<Vec<u32>, ImportError> {
    let bad = || field(cfg, name, "expected a token id or a list of token ids".into());
    let as_id = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    match cfg.value.get(name) {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(xs)) => xs.iter().map(|x| as_id(x).ok_or_else(bad)).collect(),
        Some(v) => as_id(v).map(|id| vec![id]).ok_or_else(bad),
    }
}

fn field(cfg: &JsonFile, name: &str, message: String) -> ImportError {
    ImportError::Field { path: cfg.path.clone(), field: name.into(), message }
}

/// The folder's weights: `model.safetensors`, else `model.safetensors.index.json`.
pub fn weights(dir: &Path) -> Result<WeightStore, ImportError> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if !single.exists() && index.exists() {
        WeightStore::open_sharded(&index)
    } else {
        WeightStore::open(&single)
    }
}
