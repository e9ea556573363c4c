//! The settings of a Llama-family decoder, whichever file they came from.

use crate::ir::{RopeLlama3, RopePairs};

/// The Llama-family architectures qfuse imports; they differ only in the settings below.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Llama 1/2/3 (and SmolLM2, TinyLlama: `model_type: llama`).
    Llama,
    /// Mistral (Llama blocks; sliding windows are not supported).
    Mistral,
    /// Qwen2 (Llama blocks with q/k/v biases).
    Qwen2,
}

impl Family {
    /// The `model_type` / `general.architecture` spelling.
    pub fn name(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
        }
    }
}

/// Everything the block builder needs to know about a decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct DecoderConfig {
    /// The architecture.
    pub family: Family,
    /// Vocabulary size V.
    pub vocab_size: u64,
    /// Hidden width.
    pub hidden_size: u64,
    /// Transformer blocks.
    pub num_layers: u64,
    /// Query heads.
    pub num_heads: u64,
    /// Key/value heads (grouped-query attention when fewer than `num_heads`).
    pub num_kv_heads: u64,
    /// Size of one head.
    pub head_dim: u64,
    /// SwiGLU width.
    pub intermediate_size: u64,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base θ.
    pub rope_theta: f32,
    /// RoPE pairing of the stored Q/K rows.
    pub rope_pairs: RopePairs,
    /// Llama 3 RoPE rescaling.
    pub rope_llama3: Option<RopeLlama3>,
    /// The lm_head is the embedding table.
    pub tie_word_embeddings: bool,
    /// q/k/v projections have biases (Qwen2).
    pub qkv_bias: bool,
    /// The longest context the model supports.
    pub max_position_embeddings: u64,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// Tokens that end generation.
    pub eos_token_ids: Vec<u32>,
}

impl DecoderConfig {
    /// Checks the relations between fields; the message names the offending field.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.num_heads % self.num_kv_heads != 0 {
            return Err((
                "num_key_value_heads",
                format!("{} query heads are not a multiple of {} KV heads", self.num_heads, self.num_kv_heads),
            ));
        }
        if self.head_dim % 2 != 0 {
            return Err(("head_dim", format!("RoPE needs an even head size, got {}", self.head_dim)));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(("rope_theta", format!("must be finite and > 1, got {}", self.rope_theta)));
        }
        Ok(())
    }
}
