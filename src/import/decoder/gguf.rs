//! GGUF files of the Llama family (`general.architecture` llama — which also covers Mistral — and
//! qwen2): metadata → [`DecoderConfig`], tensors → the store under Hugging Face names.
//!
//! llama.cpp's converter permutes the rows of Llama's Q/K projections for its adjacent-pair RoPE;
//! the store puts them back in Hugging Face order when it dequantizes them, so one block builder
//! with `rotate_half` RoPE serves both file kinds. Qwen2 files are not permuted (NeoX RoPE).

use super::config::{DecoderConfig, Family};
use crate::import::gguf::{GgufFile, TensorInfo};
use crate::import::weights::GgufTensor;
use crate::import::{ImportError, WeightStore};
use crate::ir::RopePairs;

/// The family of a GGUF file, from `general.architecture`.
pub fn family(file: &GgufFile) -> Result<Family, ImportError> {
    match file.str("general.architecture")? {
        "llama" => Ok(Family::Llama),
        "qwen2" => Ok(Family::Qwen2),
        other => Err(file.key_error("general.architecture", format!("unsupported architecture \"{other}\" (supported: llama, qwen2)"))),
    }
}

/// Reads the `{arch}.*` keys; errors name the key.
pub fn config(file: &GgufFile, family: Family) -> Result<DecoderConfig, ImportError> {
    let arch = family.name();
    let key = |k: &str| format!("{arch}.{k}");
    let heads = u64::from(file.u32(&key("attention.head_count"))?);
    let hidden = u64::from(file.u32(&key("embedding_length"))?);
    let kv_heads = file.optional(&key("attention.head_count_kv"), GgufFile::u32)?.map_or(heads, u64::from);
    if heads == 0 || kv_heads == 0 || hidden % heads != 0 {
        return Err(
            file.key_error(&key("attention.head_count"), format!("{heads} heads (and {kv_heads} KV heads) do not divide width {hidden}"))
        );
    }
    let head_dim = hidden / heads;
    if let Some(rot) = file.optional(&key("rope.dimension_count"), GgufFile::u32)? {
        if u64::from(rot) != head_dim {
            return Err(
                file.key_error(&key("rope.dimension_count"), format!("partial rotary embeddings ({rot} of {head_dim}) are not supported"))
            );
        }
    }
    if let Some(kind) = file.optional(&key("rope.scaling.type"), GgufFile::str)? {
        if kind != "none" {
            return Err(file.key_error(&key("rope.scaling.type"), format!("RoPE scaling \"{kind}\" is not supported in GGUF files")));
        }
    }
    if file.tensor("rope_freqs.weight").is_some() {
        return Err(file.key_error("rope_freqs.weight", "per-frequency RoPE factors (Llama 3.1 scaling) are not supported in GGUF files"));
    }
    let embed = file.tensor("token_embd.weight").ok_or_else(|| file.key_error("token_embd.weight", "the embedding tensor is missing"))?;
    let vocab = embed.dims.get(1).copied().ok_or_else(|| file.key_error("token_embd.weight", "must have 2 dimensions"))?;
    let eos = file.optional("tokenizer.ggml.eos_token_id", GgufFile::u32)?;
    let c = DecoderConfig {
        family,
        vocab_size: vocab,
        hidden_size: hidden,
        num_layers: u64::from(file.u32(&key("block_count"))?),
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        intermediate_size: u64::from(file.u32(&key("feed_forward_length"))?),
        rms_norm_eps: file.f32(&key("attention.layer_norm_rms_epsilon"))?,
        rope_theta: file.optional(&key("rope.freq_base"), GgufFile::f32)?.unwrap_or(10000.0),
        rope_pairs: RopePairs::Half,
        rope_llama3: None,
        tie_word_embeddings: file.tensor("output.weight").is_none(),
        qkv_bias: family == Family::Qwen2,
        max_position_embeddings: u64::from(file.u32(&key("context_length"))?),
        bos_token_id: file.optional("tokenizer.ggml.bos_token_id", GgufFile::u32)?,
        eos_token_ids: eos.into_iter().collect(),
    };
    c.check().map_err(|(field, message)| file.key_error(&key(field), message))?;
    Ok(c)
}

/// The Hugging Face name of a GGUF tensor, or `None` for a tensor the decoder does not use.
fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.into());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: u64 = layer.parse().ok()?;
    let (module, kind) = part.rsplit_once('.')?;
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// Heads whose rows llama.cpp permuted in this tensor (Llama Q/K), if any.
fn permuted_heads(cfg: &DecoderConfig, gguf: &str) -> Option<usize> {
    if cfg.family == Family::Qwen2 {
        return None;
    }
    let module = gguf.strip_prefix("blk.")?.split('.').nth(1)?;
    match module {
        "attn_q" => Some(cfg.num_heads as usize),
        "attn_k" => Some(cfg.num_kv_heads as usize),
        _ => None,
    }
}

/// Maps every tensor of `file` the decoder reads into a weight store; an unknown tensor name is
/// an error naming it (a file of another layout, rather than silently missing weights).
pub fn weights(file: &GgufFile, cfg: &DecoderConfig) -> Result<WeightStore, ImportError> {
    let mut tensors = vec![];
    for info in file.tensors() {
        let name =
            hf_name(&info.name).ok_or_else(|| file.key_error(&info.name, "is not a tensor of a Llama-family decoder (unknown name)"))?;
        tensors.push(store_entry(file, info, name, permuted_heads(cfg, &info.name))?);
    }
    WeightStore::open_gguf(file.path(), tensors)
}

fn store_entry(file: &GgufFile, info: &TensorInfo, name: String, unpermute_heads: Option<usize>) -> Result<GgufTensor, ImportError> {
    let len = file.tensor_data(info)?.len();
    // `tensor_data` checked that the range lies in the file, so the offset fits a usize.
    let start = file.data_start() + info.offset as usize;
    let shape = info.shape().into_iter().map(|d| d as usize).collect();
    Ok(GgufTensor { name, shape, ty: info.ty, range: (start, start + len), unpermute_heads })
}
