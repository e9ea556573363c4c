//! Decoder plans: a Llama-family model (GGUF or Hugging Face folder) → one plan that generates.
//!
//! ```text
//! import (S ≤ max_step, B ≤ max_batch, P ≤ max_seq) → KV-cache format (calibrated per layer)
//!   → quantize (decoder recipe: lm_head kept) → lower with the paged KV cache
//!   → + sampling kernel → DecoderMeta (pages, special tokens, chat template, defaults)
//! ```
//!
//! The step graph's state inputs (`past.{k,v}.L`, and for an NVFP4 cache `past.{k,v}_scale.L`)
//! get no arena storage: attention reads the runtime's page pools, and `kv_append` writes each
//! step's `present.{k,v}.L` (and block scales) into them.

use std::path::Path;
use std::time::Instant;

use super::{assemble, CompileError, CompileOptions, CompiledPlan, Source};
use crate::codegen::kernel::PagedKv;
use crate::import::decoder::{self, DecoderModel, DecoderOptions, KvFormat, LogitRows};
use crate::ir::{DType, Graph};
use crate::passes::PassOptions;
use crate::plan::{DecoderMeta, GenerationDefaults, KvCacheMeta, KvSlotMeta, SpecialTokens};
use crate::quant;

/// Decoder-specific compile settings.
#[derive(Debug, Clone)]
pub struct DecoderPlanOptions {
    /// KV-cache storage; `None`: the recipe's compute dtype.
    pub kv_cache: Option<DType>,
    /// Longest sequence; `None`: the model's position limit, at most 4096.
    pub max_seq: Option<u64>,
    /// Most sequences per step (decode batch).
    pub max_batch: u64,
    /// Most tokens per sequence and step (prefill chunk).
    pub max_step: u64,
    /// Tokens per KV page (16–64, a power of two).
    pub page_size: u32,
}

impl Default for DecoderPlanOptions {
    fn default() -> Self {
        Self { kv_cache: None, max_seq: None, max_batch: 16, max_step: 256, page_size: 32 }
    }
}

impl DecoderPlanOptions {
    /// Checks the settings before any work; errors name the flag.
    pub fn check(&self) -> Result<(), CompileError> {
        let bad = |m: String| Err(CompileError::Options(m));
        if !(16..=64).contains(&self.page_size) || !self.page_size.is_power_of_two() {
            return bad(format!("--page-size {}: must be 16, 32 or 64", self.page_size));
        }
        if self.max_batch == 0 || self.max_batch > 1024 {
            return bad(format!("--max-batch {}: must lie in 1..=1024", self.max_batch));
        }
        if self.max_step == 0 {
            return bad("--max-step must be at least 1".into());
        }
        if self.max_seq == Some(0) {
            return bad("--max-seq must be at least 1".into());
        }
        Ok(())
    }
}

/// Compiles the decoder at `path`, calibrating with `opts.calib` as given (for decoders, start from
/// [`crate::quant::CalibOptions::decoder_default`]).
pub fn compile_decoder(path: &Path, opts: &CompileOptions, d: &DecoderPlanOptions) -> Result<CompiledPlan, CompileError> {
    d.check()?;
    let started = Instant::now();
    let import = DecoderOptions {
        max_batch: d.max_batch,
        max_seq: Some(d.max_seq.unwrap_or(4096)),
        kv: KvFormat::Float(DType::F32),
        max_step: Some(d.max_step),
        // Generation samples each sequence's last position: the LM head runs on B rows, not B·S.
        logits: LogitRows::Last,
    };
    let mut model = decoder::load(path, &import)?;
    let storage = d.kv_cache.unwrap_or(opts.recipe.compute);
    decoder::set_kv_cache(&mut model, storage, &opts.calib.sentences, opts.calib.quiet)?;
    let recipe = decoder::decoder_recipe(opts.recipe.clone());
    let q = quant::quantize(&model, &recipe, &opts.calib, &decoder_passes(&opts.passes))?;
    let max_pages = u32::try_from(model.max_seq.div_ceil(u64::from(d.page_size)))
        .map_err(|_| CompileError::Options(format!("--max-seq {} needs too many pages", model.max_seq)))?;
    let tokenizer = match &model.tokenizer {
        Some(t) => {
            Some(t.inner().to_string(false).map_err(|e| CompileError::Options(format!("{}: saving the tokenizer: {e}", path.display())))?)
        }
        None => None,
    };
    let source = Source {
        weights: &model.weights,
        tokenizer: tokenizer.map(String::into_bytes),
        paged: Some(PagedKv { page_size: d.page_size, max_pages }),
    };
    let mut plan = assemble(&source, q, opts)?;
    let sample = plan.add_sample_kernel(&logits_dtype(&plan.quantized.fused)?, model.config.vocab_size, opts)?;
    let mut meta = decoder_meta(&model, &plan.quantized.fused, d, max_pages, sample)?;
    meta.split_scratch_bytes = plan.split_scratch_bytes;
    plan.builder.meta_mut().decoder = Some(meta);
    plan.stats.seconds = started.elapsed().as_secs_f64();
    Ok(plan)
}

/// The logits output's dtype.
fn logits_dtype(g: &Graph) -> Result<DType, CompileError> {
    g.outputs
        .iter()
        .find(|(n, _)| n == "logits")
        .map(|(_, v)| g.ty(*v).dtype)
        .ok_or_else(|| CompileError::Options("the decoder graph has no `logits` output".into()))
}

/// The plan's decoder metadata: one pool per state slot of the final graph.
fn decoder_meta(
    model: &DecoderModel,
    g: &Graph,
    d: &DecoderPlanOptions,
    max_pages: u32,
    sample_kernel: u32,
) -> Result<DecoderMeta, CompileError> {
    let mut slots = Vec::with_capacity(g.state.len());
    for slot in &g.state {
        let input = g.inputs().into_iter().find(|(n, _)| *n == slot.input).map(|(_, v)| v);
        let ty = input.map(|v| g.ty(v)).ok_or_else(|| CompileError::Options(format!("state `{}` has no input", slot.input)))?;
        let heads = crate::ir::kv_state_heads(ty).and_then(|(kv, d)| Some((u32::try_from(kv).ok()?, u32::try_from(d).ok()?)));
        let Some((kv_heads, head_dim)) = heads else {
            return Err(CompileError::Options(format!("state `{}` is not [B, P, KV, D] with fixed KV and D", slot.input)));
        };
        let (layer, kind, block_scales) = decoder::kv::parse_state_name(&slot.input)
            .filter(|n| n.0 < model.config.num_layers as usize)
            .ok_or_else(|| CompileError::Options(format!("state `{}` is not named past.{{k,v}}[_scale].<layer>", slot.input)))?;
        // Codes read as code · scale (NVFP4: · block scale · global); block scales are read as is.
        let scale = if block_scales { None } else { model.options.kv.tensor_scale(layer, kind) };
        slots.push(KvSlotMeta {
            input: slot.input.clone(),
            update: slot.update.clone(),
            dtype: ty.dtype.to_string(),
            kv_heads,
            head_dim,
            scale: scale.unwrap_or(1.0),
        });
    }
    let tok = model.tokenizer.as_ref();
    let eos: Vec<u32> = model.config.eos_token_ids.iter().copied().chain(tok.and_then(|t| t.eos_id())).collect();
    let mut eos_unique = eos.clone();
    eos_unique.sort_unstable();
    eos_unique.dedup();
    Ok(DecoderMeta {
        kv: KvCacheMeta { page_size: d.page_size, max_pages, slots },
        logits: "logits".into(),
        vocab: model.config.vocab_size,
        max_seq: model.max_seq,
        max_batch: d.max_batch,
        max_step_tokens: d.max_step.min(model.max_seq),
        tokens: SpecialTokens {
            bos: tok.and_then(|t| t.bos_id()),
            eos: eos_unique,
            add_bos: tok.is_some_and(|t| t.add_bos()),
            chat_template: tok.and_then(|t| t.chat_template_source().map(str::to_string)),
        },
        sample_kernel,
        defaults: GenerationDefaults::default(),
        split_scratch_bytes: 0,
    })
}

/// The pass options of a decoder plan: `opts` with `merge-sibling-gemms` enabled (Q/K/V as one
/// GEMM: its segmented kernels matched the interpreter on an H100, and whole SmolLM2-shaped fp16
/// and fp8 + FP8-KV plans passed `qfuse check`) and `merge-gate-up` (gate and up as one GEMM with
/// SwiGLU in its epilogue) and `fuse-attention-output` (an FP8/INT8 plan's attention stores the
/// codes `o_proj` reads: its quantized stores matched the interpreter on an H100, and SmolLM2's
/// fp8 + FP8-KV plan with it passed `qfuse check`, 244 → 214 launches per decode step), each
/// unless `--disable-pass` names it. Encoder plans keep the merges opt-in
/// ([`crate::passes::pipeline::OPT_IN`]) until their merged kernels have run on a GPU too; the
/// output fusion only ever fires on a decoder's `causal_attention`.
pub fn decoder_passes(opts: &PassOptions) -> PassOptions {
    let mut passes = opts.clone();
    for merge in ["merge-gate-up", "merge-sibling-gemms", "fuse-attention-output"] {
        if !passes.disable.iter().any(|d| d == merge) && !passes.enable.iter().any(|e| e == merge) {
            passes.enable.push(merge.into());
        }
    }
    passes
}
