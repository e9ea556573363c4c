//! Llama-family decoders (Llama, Mistral, Qwen2; from Hugging Face folders or GGUF files) → one
//! step graph with the KV cache as typed state. Every family goes through the one block builder
//! in [`block`]; a family module only reads its settings and names its tensors.

pub mod block;
pub mod config;
pub mod hf;
pub mod kv;

pub use config::{DecoderConfig, Family};
pub use kv::KvFormat;

use super::json::JsonFile;
use super::{ImportError, WeightStore};
use crate::ir::Graph;
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
}

impl Default for DecoderOptions {
    fn default() -> Self {
        DecoderOptions { max_batch: 8, max_seq: Some(2048), kv: KvFormat::Float(crate::ir::DType::F32) }
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
    finish(dir, config, weights, opts)
}

/// Builds and verifies the step graph.
fn finish(path: &Path, config: DecoderConfig, weights: WeightStore, opts: &DecoderOptions) -> Result<DecoderModel, ImportError> {
    let max_seq = opts.max_seq.unwrap_or(config.max_position_embeddings).min(config.max_position_embeddings);
    let name = path.file_stem().map_or_else(|| "decoder".into(), |n| n.to_string_lossy().into_owned());
    let graph = block::build(&config, &weights, &opts.kv, opts.max_batch, max_seq, &name)?;
    if let Err(e) = crate::ir::verify(&graph, "after import") {
        return Err(ImportError::Graph { layer: format!("whole graph of {}", path.display()), message: e.to_string() });
    }
    Ok(DecoderModel { path: path.into(), config, graph, weights, max_seq })
}
