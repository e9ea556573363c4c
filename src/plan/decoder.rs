//! Format 2.0 (2.1: the split-KV scratch): what a decoder plan holds beyond its schedule ([`DecoderMeta`]): the paged KV
//! cache's layout, the tokenizer's special tokens and chat template, generation defaults and the
//! sampling kernel the generator launches after each step.
//!
//! The KV cache is graph state (`past.{k,v}.L` inputs appended by `present.{k,v}.L` outputs); on
//! the GPU each state slot is a **page pool** `[pages, KV, page_size, D]` of its dtype, and every
//! sequence of a run owns a row of the **page table** `i32[B, max_pages]` listing its pages in
//! order: token `t` of sequence `b` is at page `table[b][t / page_size]`, slot `t % page_size`.
//! Launches reach them through [`super::ArgRef::KvPool`] and [`super::ArgRef::PageTable`]; page
//! numbers are shared by all slots (page `p` of every layer belongs to the same sequence).
//!
//! Format 2.1: the decode attention may be split over key ranges whose f32 partials go to a
//! **split scratch** buffer the generator owns like the pools ([`super::ArgRef::SplitScratch`],
//! [`DecoderMeta::split_scratch_bytes`]); one buffer serves every layer.

use serde::{Deserialize, Serialize};

/// Everything the generator needs besides the schedule.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DecoderMeta {
    /// The paged KV cache.
    pub kv: KvCacheMeta,
    /// Name of the logits output (`[B, S, vocab]`).
    pub logits: String,
    /// Vocabulary size (the logits' last extent).
    pub vocab: u64,
    /// Longest sequence (prompt plus generated tokens) the plan serves.
    pub max_seq: u64,
    /// Largest number of sequences in one run (the symbol `B`'s maximum).
    pub max_batch: u64,
    /// Largest number of tokens of one run (the symbol `S`'s maximum): longer prompts are prefilled in pieces.
    pub max_step_tokens: u64,
    /// Special tokens and the chat template (the tokenizer itself is the `tokenizer.json` section).
    pub tokens: SpecialTokens,
    /// Index in [`super::PlanMeta::kernels`] of the sampling kernel.
    pub sample_kernel: u32,
    /// Defaults of `qfuse generate`.
    pub defaults: GenerationDefaults,
    /// Format 2.1: bytes of the split-KV scratch the generator allocates next to the pools and
    /// passes for [`super::ArgRef::SplitScratch`]: the largest need of any launch,
    /// `max_batch · H · SPLITS · (D + 2) · 4` for the split decode attention. 0 when no launch
    /// splits (and in every 2.0 plan). Appended as the last field of the last field of
    /// [`super::PlanMeta`], so a 2.0 plan's metadata ends right before it.
    pub split_scratch_bytes: u64,
}

/// The paged KV cache: page geometry and one pool per state slot.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct KvCacheMeta {
    /// Tokens per page (a power of two, 16–64).
    pub page_size: u32,
    /// Columns of the page table: `ceil(max_seq / page_size)`.
    pub max_pages: u32,
    /// One pool per graph state slot, in the graph's state order.
    pub slots: Vec<KvSlotMeta>,
}

/// One state slot's pool.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct KvSlotMeta {
    /// The state input it replaces (`past.k.0`).
    pub input: String,
    /// The output appended to it each step (`present.k.0`).
    pub update: String,
    /// Element type as the IR prints it (`f16`, `f8e4m3`, `i8`; an NVFP4 cache: `f4e2m1` codes,
    /// two per byte, low nibble first, and its block-scale slots `f8e4m3` with D/16 columns).
    pub dtype: String,
    /// KV heads.
    pub kv_heads: u32,
    /// Head size D.
    pub head_dim: u32,
    /// Dequantization multiplier of its codes (1 for float caches and NVFP4 block-scale slots;
    /// the global scale for NVFP4 codes).
    pub scale: f32,
}

impl KvSlotMeta {
    /// Bytes of one page of this pool, if the dtype is known and the size fits (`f4e2m1` codes
    /// pack two per byte, so D must be even).
    pub fn page_bytes(&self, page_size: u32) -> Option<u64> {
        let bits: u64 = match self.dtype.as_str() {
            "f32" => 32,
            "f16" | "bf16" => 16,
            "f8e4m3" | "f8e5m2" | "i8" => 8,
            "f4e2m1" if self.head_dim % 2 == 0 => 4,
            _ => return None,
        };
        u64::from(self.kv_heads).checked_mul(u64::from(self.head_dim))?.checked_mul(u64::from(page_size))?.checked_mul(bits).map(|b| b / 8)
    }
}

/// Special token ids and the chat template.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SpecialTokens {
    /// Beginning-of-sequence id.
    pub bos: Option<u32>,
    /// Ids that end a generation.
    pub eos: Vec<u32>,
    /// Whether encoding a prompt prepends BOS.
    pub add_bos: bool,
    /// The Jinja chat template, if the model has one.
    pub chat_template: Option<String>,
}

/// Sampling and length defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GenerationDefaults {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = no top-k cut.
    pub top_k: u32,
    /// 1 = no top-p cut.
    pub top_p: f32,
    /// New tokens when the caller does not say.
    pub max_new_tokens: u32,
}

impl Default for GenerationDefaults {
    fn default() -> Self {
        Self { temperature: 0.0, top_k: 0, top_p: 1.0, max_new_tokens: 128 }
    }
}
