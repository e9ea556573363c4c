//! Llama-family decoders (Llama, Mistral, Qwen2; from Hugging Face folders or GGUF files) → one
//! step graph with the KV cache as typed state. Every family goes through the one block builder
//! in [`block`]; a family module only reads its settings and names its tensors.

pub mod block;
pub mod config;
pub mod gguf;
pub mod hf;
pub mod kv;

pub use config::{DecoderConfig, Family};
pub use kv::KvFormat;

use super::gguf::{GgufFile, GgufTokenizer};
use super::json::JsonFile;
use super::{ImportError, Imported, WeightStore};
use crate::interp::Tensor;
use crate::ir::{DType, Graph};
use std::path::{Path, PathBuf};

/// Import settings of a decoder.
#[derive(Clone, Debug)]
pub struct DecoderOptions {
    /// Largest number of sequences in one step (symbol `B`).
    pub max_batch: u64,
    /// Longest context (symbols `S` and `P`); defaults to the model's position limit.
    pub max_seq: Option<u64>,
    /// KV-cache storage.
    pub kv: KvFormat,
    /// Most new tokens of one step (symbol `S`); `None`: the context length. GPU plans keep it
    /// small (prompts are prefilled in chunks) so that `B·S`-sized buffers stay small.
    pub max_step: Option<u64>,
    /// Which positions get logits.
    pub logits: LogitRows,
}

/// Which positions of a step the graph computes logits for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogitRows {
    /// `logits [B,S,V]`: every new position (perplexity, the interpreter's sessions).
    #[default]
    All,
    /// `logits [B,1,V]`: each sequence's last new position only (`last_token` before the final
    /// norm): what generation samples from; GPU plans skip the LM head's other rows.
    Last,
}

impl Default for DecoderOptions {
    fn default() -> Self {
        DecoderOptions {
            max_batch: 8,
            max_seq: Some(2048),
            kv: KvFormat::Float(crate::ir::DType::F32),
            max_step: None,
            logits: LogitRows::All,
        }
    }
}

/// An imported decoder: settings, step graph and weights.
pub struct DecoderModel {
    /// The folder or GGUF file.
    pub path: PathBuf,
    /// Architecture settings.
    pub config: DecoderConfig,
    /// The step graph (verified).
    pub graph: Graph,
    /// The weights, memory-mapped.
    pub weights: WeightStore,
    /// The context length the graph accepts (symbols `S` and `P`).
    pub max_seq: u64,
    /// The tokenizer with its special tokens and chat template, when the model has one.
    pub tokenizer: Option<GgufTokenizer>,
    /// The import settings the graph was built with.
    pub options: DecoderOptions,
}

/// Imports a decoder: a `.gguf` file or a Hugging Face folder.
pub fn load(path: &Path, opts: &DecoderOptions) -> Result<DecoderModel, ImportError> {
    if path.is_file() {
        return load_gguf(path, opts);
    }
    if !path.is_dir() {
        return Err(ImportError::MissingFile { path: path.into(), what: "decoder (a .gguf file or a model folder)" });
    }
    load_hf(path, opts)
}

/// Imports a GGUF file (Llama-family architectures).
pub fn load_gguf(path: &Path, opts: &DecoderOptions) -> Result<DecoderModel, ImportError> {
    let file = GgufFile::open(path)?;
    let family = gguf::family(&file)?;
    let config = gguf::config(&file, family)?;
    let weights = gguf::weights(&file, &config)?;
    let tokenizer = GgufTokenizer::from_gguf(&file)?;
    if tokenizer.vocab_size() as u64 != config.vocab_size {
        let message = format!("{} tokens but the embedding has {} rows", tokenizer.vocab_size(), config.vocab_size);
        return Err(file.key_error("tokenizer.ggml.tokens", message));
    }
    let mut model = finish(path, config, weights, opts)?;
    model.tokenizer = Some(tokenizer);
    Ok(model)
}

/// True when `path` holds a decoder qfuse imports: a `.gguf` file, or a folder whose
/// `config.json` names a Llama-family `model_type`.
pub fn is_decoder(path: &Path) -> bool {
    if path.is_file() {
        return path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    }
    let Ok(cfg) = JsonFile::read(&path.join("config.json"), "model config") else { return false };
    cfg.string("model_type").ok().and_then(hf::family).is_some()
}

/// Imports a Hugging Face Llama-family folder.
pub fn load_hf(dir: &Path, opts: &DecoderOptions) -> Result<DecoderModel, ImportError> {
    let cfg_file = JsonFile::read(&dir.join("config.json"), "model config")?;
    let model_type = cfg_file.string("model_type")?;
    let family = hf::family(model_type).ok_or_else(|| ImportError::UnsupportedModel {
        path: cfg_file.path.clone(),
        model_type: model_type.into(),
        supported: "bert, llama, mistral, qwen2",
    })?;
    let config = hf::config(&cfg_file, family)?;
    let weights = hf::weights(dir)?;
    let mut model = finish(dir, config, weights, opts)?;
    if dir.join("tokenizer.json").exists() {
        model.tokenizer = Some(GgufTokenizer::from_hf_folder(dir, &model.config)?);
    }
    Ok(model)
}

/// Builds and verifies the step graph.
fn finish(path: &Path, config: DecoderConfig, weights: WeightStore, opts: &DecoderOptions) -> Result<DecoderModel, ImportError> {
    let max_seq = opts.max_seq.unwrap_or(config.max_position_embeddings).min(config.max_position_embeddings);
    let name = path.file_stem().map_or_else(|| "decoder".into(), |n| n.to_string_lossy().into_owned());
    let max_step = opts.max_step.unwrap_or(max_seq).min(max_seq);
    let graph = block::build(&config, &weights, (&opts.kv, opts.logits), [opts.max_batch, max_step, max_seq], &name)?;
    Ok(DecoderModel { path: path.into(), config, graph, weights, max_seq, tokenizer: None, options: opts.clone() })
}

impl DecoderModel {
    /// Rebuilds the step graph with another KV-cache format.
    pub fn with_kv(&mut self, kv: KvFormat) -> Result<(), ImportError> {
        self.options.kv = kv;
        self.graph = self.step_graph(&self.options.kv, &self.graph.name)?;
        Ok(())
    }

    /// The model's step graph (its batch and context limits) with a KV cache of format `kv`.
    pub fn step_graph(&self, kv: &KvFormat, name: &str) -> Result<Graph, ImportError> {
        let shape = [self.options.max_batch, self.max_step(), self.max_seq];
        block::build(&self.config, &self.weights, (kv, self.options.logits), shape, name)
    }

    /// The most tokens one step takes (`S`'s bound: `--max-step`, at most the context).
    pub fn max_step(&self) -> u64 {
        self.options.max_step.unwrap_or(self.max_seq).min(self.max_seq)
    }

    /// One prefill step of `texts` (1 to `--max-batch` of them) through `graph` (the model's step
    /// graph in some KV format), from empty caches, padded at their end
    /// ([`prefill_batch_inputs`]), with each text's token count: its ids, BOS first when the
    /// tokenizer adds one, at most one step's worth (a long text is cut at `--max-step` tokens).
    pub fn prefill_batch(&self, graph: &Graph, texts: &[String]) -> Result<super::Encoded, ImportError> {
        let tok = self
            .tokenizer
            .as_ref()
            .ok_or_else(|| ImportError::MissingFile { path: self.path.clone(), what: "tokenizer (needed for calibration)" })?;
        if texts.is_empty() || texts.len() as u64 > self.options.max_batch {
            let message = format!("one run takes 1 to {} texts (--max-batch), got {}", self.options.max_batch, texts.len());
            return Err(ImportError::Tokenizer { path: self.path.clone(), message });
        }
        let mut ids = Vec::with_capacity(texts.len());
        for text in texts {
            let mut one = tok.encode(text)?;
            one.truncate(self.max_step() as usize);
            ids.push(one);
        }
        let inputs = prefill_batch_inputs(graph, &ids).map_err(|message| ImportError::Graph {
            path: self.path.clone(),
            layer: "state".into(),
            message,
        })?;
        Ok(super::Encoded { inputs, tokens: Some(ids.iter().map(Vec::len).collect()) })
    }

    /// Inputs of one prefill step of `ids` through the model's step graph, with an empty cache.
    pub fn step_inputs(&self, ids: &[u32]) -> Result<Vec<(&'static str, Tensor)>, ImportError> {
        prefill_inputs(&self.graph, ids).map_err(|message| ImportError::Graph { path: self.path.clone(), layer: "state".into(), message })
    }
}

/// Inputs of one prefill step of `ids` through `graph` (one sequence, empty cache).
pub fn prefill_inputs(graph: &Graph, ids: &[u32]) -> Result<Vec<(&'static str, Tensor)>, String> {
    prefill_batch_inputs(graph, &[ids.to_vec()])
}

/// Inputs of one prefill step of several sequences through `graph`, each from an empty cache:
/// `input_ids [n, S]` with `S` the longest sequence, shorter ones padded at their end with id 0.
/// Attention is causal and every sequence starts at position 0, so a real token never reads a
/// padding token and computes exactly as in a run of its sequence alone; the padding rows compute
/// values that readers must leave out (the first `ids[b].len()` rows of sequence `b` are real).
pub fn prefill_batch_inputs(graph: &Graph, ids: &[Vec<u32>]) -> Result<Vec<(&'static str, Tensor)>, String> {
    let seq = ids.iter().map(Vec::len).max().unwrap_or(0);
    let padded = ids.iter().flat_map(|s| s.iter().map(|&t| i64::from(t)).chain(std::iter::repeat_n(0, seq - s.len()))).collect();
    let mut inputs =
        vec![("input_ids", Tensor::i64(vec![ids.len(), seq], padded)), ("cache_len", Tensor::i64(vec![ids.len()], vec![0; ids.len()]))];
    inputs.extend(crate::interp::empty_state_for(graph, ids.len())?);
    Ok(inputs)
}

/// Most packed calibration sequences one interpreter run takes (each up to
/// [`CALIBRATION_TOKENS`]): runs read each weight once for all of them, and their activations
/// (`[8, 512, 14336]` f32 at an 8 B model's FFN: 235 MB) stay a small part of a layer's memory.
pub const CALIBRATION_BATCH: usize = 8;

impl Imported for DecoderModel {
    fn graph(&self) -> &Graph {
        &self.graph
    }

    fn weights(&self) -> &WeightStore {
        &self.weights
    }

    fn source(&self) -> &Path {
        &self.path
    }

    /// The texts' ids (BOS first when the tokenizer adds one; at most one step's worth, so a
    /// long calibration text is cut at `--max-step` tokens) as one prefill step from empty caches,
    /// padded at their end ([`prefill_batch_inputs`]).
    fn encode_batch(&self, texts: &[String]) -> Result<Vec<(&'static str, Tensor)>, ImportError> {
        Ok(self.encode_sequences(texts)?.inputs)
    }

    /// [`Self::encode_batch`] with each text's token count.
    fn encode_sequences(&self, texts: &[String]) -> Result<super::Encoded, ImportError> {
        self.prefill_batch(&self.graph, texts)
    }

    /// [`CALIBRATION_BATCH`] packed sequences, at most `--max-batch`.
    fn texts_per_run(&self) -> usize {
        CALIBRATION_BATCH.min(self.options.max_batch as usize).max(1)
    }

    /// The calibration texts packed into sequences of at most [`CALIBRATION_TOKENS`] tokens (and
    /// one step's worth), see [`pack_texts`].
    fn calibration_texts(&self, texts: &[String]) -> Result<Vec<String>, ImportError> {
        let Some(tok) = self.tokenizer.as_ref() else { return Ok(texts.to_vec()) };
        let limit = CALIBRATION_TOKENS.min(self.max_step() as usize);
        let lengths = texts.iter().map(|t| tok.encode(t).map(|ids| ids.len())).collect::<Result<Vec<_>, _>>()?;
        let separator = tok.encode(PACK_SEPARATOR)?.len();
        Ok(pack_texts(texts, &lengths, separator, limit))
    }
}

/// Longest calibration sequence of a decoder, in tokens: calibration runs on contexts like the
/// ones the model serves (ModelOpt calibrates on 512-token samples, GPTQ's reference
/// implementation on 2048), not on one short text per sequence, whose first token — the
/// attention sink, with activations orders of magnitude above the rest — would then be one row
/// in twenty of every statistic and every position past the longest text would go unseen.
pub const CALIBRATION_TOKENS: usize = 512;

/// What joins two packed calibration texts (a paragraph break).
pub const PACK_SEPARATOR: &str = "\n\n";

/// Packs `texts` (with their token counts `lengths`) greedily, in order, into sequences joined by
/// [`PACK_SEPARATOR`] (`separator` tokens) of at most `limit` tokens by that count; a text longer
/// than `limit` stays alone (the run truncates it). Every text appears exactly once, in order;
/// `limit` 0 or 1 leaves the texts as they are. The count is the sum of the parts' counts: joined
/// text can tokenize a little differently at the seams, which only moves where truncation cuts.
pub fn pack_texts(texts: &[String], lengths: &[usize], separator: usize, limit: usize) -> Vec<String> {
    if limit <= 1 {
        return texts.to_vec();
    }
    let mut out: Vec<String> = vec![];
    let mut used = usize::MAX;
    for (text, &len) in texts.iter().zip(lengths) {
        match out.last_mut() {
            Some(last) if used.saturating_add(separator + len) <= limit => {
                last.push_str(PACK_SEPARATOR);
                last.push_str(text);
                used += separator + len;
            }
            _ => {
                out.push(text.clone());
                used = len;
            }
        }
    }
    out
}

/// The recipe as decoders use it: `lm_head` stays in high precision unless the recipe names it
/// (ModelOpt's default), and GPTQ processes columns by decreasing Hessian diagonal (act-order,
/// with static groups), as GPTQ's reference implementation recommends for Llama models: their
/// activations have a few outlier channels, which act-order quantizes first while the other
/// columns can still absorb their error (SmolLM2, w4a16-gptq: mean KL 0.388 → 0.332 over two
/// chunks, docs/decoders.md).
pub fn decoder_recipe(mut recipe: crate::quant::Recipe) -> crate::quant::Recipe {
    if !recipe.exclude.iter().any(|e| e == "lm_head") {
        recipe.exclude.push("lm_head".into());
    }
    if let crate::quant::recipe::WeightAlgo::Gptq { act_order, .. } = &mut recipe.linear.algo {
        *act_order = true;
    }
    recipe
}

/// Switches `model` to a KV cache stored as `storage`; a quantized cache gets per-layer K and V
/// scales from `texts` (`amax / max code`; `f4e2m1`: NVFP4 with power-of-two global scales,
/// [`kv::nvfp4_global`]; the same calibration texts the recipe uses, packed as
/// [`Imported::calibration_texts`] packs them), and a layer that saw no data is an error naming
/// it, never a silent 1.0.
pub fn set_kv_cache(model: &mut DecoderModel, storage: DType, texts: &[String], quiet: bool) -> Result<(), ImportError> {
    if model.options.kv == KvFormat::Float(storage) {
        return Ok(());
    }
    let calibrate = || kv::calibrate(model, &model.calibration_texts(texts)?, storage, quiet);
    let kv = match storage {
        DType::F32 | DType::F16 | DType::BF16 => KvFormat::Float(storage),
        DType::F8E4M3 | DType::I8 => KvFormat::PerTensor { storage, scales: calibrate()? },
        DType::F4E2M1 => KvFormat::Nvfp4 { globals: calibrate()? },
        other => {
            let message = format!("{other} is not a KV-cache format (f32, f16, bf16, f8e4m3, i8, f4e2m1 = nvfp4)");
            return Err(ImportError::KvCache { path: model.path.clone(), layer: "all layers".into(), message });
        }
    };
    model.with_kv(kv)
}
