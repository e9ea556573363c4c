//! Importers: a model folder → IR graph + weight store (+ tokenizer).
//!
//! Supported today: Hugging Face BERT (`config.json` with `model_type: bert`, `model.safetensors`
//! in F32/F16/BF16), with sentence-transformers mean pooling and normalisation when `modules.json`
//! asks for them. Every error names the file and the tensor or field at fault.

pub mod bert;
pub mod chat;
pub mod decoder;
mod error;
pub mod gguf;
mod json;
pub mod tokenize;
mod weights;

pub use error::ImportError;
pub use tokenize::{Batch, TextTokenizer};
pub use weights::WeightStore;

use crate::ir::Graph;
use json::JsonFile;
use std::path::{Path, PathBuf};

/// Import settings.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Largest batch the graph accepts (the maximum of symbol `B`).
    pub max_batch: u64,
    /// Largest sequence (symbol `S`); defaults to the position table's length.
    pub max_seq: Option<u64>,
    /// Tokenizer truncation length.
    pub max_tokens: usize,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions { max_batch: 64, max_seq: None, max_tokens: 128 }
    }
}

/// An imported model: its graph, weights and (if present) tokenizer.
pub struct Model {
    /// The model folder.
    pub dir: PathBuf,
    /// The architecture's settings.
    pub config: bert::BertConfig,
    /// The imported graph (verified).
    pub graph: Graph,
    /// The weights, memory-mapped.
    pub weights: WeightStore,
    /// `tokenizer.json`, when the folder has one.
    pub tokenizer: Option<TextTokenizer>,
}

/// The interpreter inputs of several texts run together: see [`Imported::encode_sequences`].
pub struct Encoded {
    /// The graph inputs.
    pub inputs: Vec<(&'static str, crate::interp::Tensor)>,
    /// Each text's token count when the rows are sequences padded at their end.
    pub tokens: Option<Vec<usize>>,
}

/// What quantization and calibration read from an imported model, encoder or decoder.
pub trait Imported: Sync {
    /// The imported graph (FP32).
    fn graph(&self) -> &Graph;
    /// Its weights.
    fn weights(&self) -> &WeightStore;
    /// The folder or file it came from (named in errors).
    fn source(&self) -> &Path;
    /// The interpreter inputs of `texts` run together (at most [`Imported::texts_per_run`]).
    fn encode_batch(&self, texts: &[String]) -> Result<Vec<(&'static str, crate::interp::Tensor)>, ImportError>;
    /// [`Imported::encode_batch`] with, for models whose runs hold sequences padded at their
    /// end (decoders), each text's token count: row `b` of every token-major `[B, S, ..]` value
    /// is real up to `tokens[b]` and padding after. `tokens: None` (the default) when rows are
    /// not split by sequence (encoders: their `attention_mask` marks the padding).
    fn encode_sequences(&self, texts: &[String]) -> Result<Encoded, ImportError> {
        Ok(Encoded { inputs: self.encode_batch(texts)?, tokens: None })
    }
    /// Most texts one run takes.
    fn texts_per_run(&self) -> usize {
        usize::MAX
    }
    /// The calibration samples as this model runs them (decoders pack short texts into long
    /// sequences, [`decoder::pack_texts`]); the identity by default.
    fn calibration_texts(&self, texts: &[String]) -> Result<Vec<String>, ImportError> {
        Ok(texts.to_vec())
    }
}

impl Imported for Model {
    fn graph(&self) -> &Graph {
        &self.graph
    }

    fn weights(&self) -> &WeightStore {
        &self.weights
    }

    fn source(&self) -> &Path {
        &self.dir
    }

    fn encode_batch(&self, texts: &[String]) -> Result<Vec<(&'static str, crate::interp::Tensor)>, ImportError> {
        let tok = self.tokenizer.as_ref().ok_or_else(|| ImportError::MissingFile {
            path: self.dir.join("tokenizer.json"),
            what: "tokenizer (needed for calibration)",
        })?;
        Ok(tok.encode(texts)?.inputs())
    }
}

/// Imports the model folder `dir`.
pub fn load(dir: &Path, opts: &ImportOptions) -> Result<Model, ImportError> {
    if decoder::is_decoder(dir) {
        let message = "is a decoder (GGUF or Llama/Mistral/Qwen2): `qfuse import`, `generate` and `eval` take it; \
                       encoder commands (embed, compile) do not, and GPU plans for decoders are not built yet";
        return Err(ImportError::WrongKind { path: dir.into(), message: message.into() });
    }
    if !dir.is_dir() {
        return Err(ImportError::MissingFile { path: dir.into(), what: "model folder" });
    }
    let config = read_config(dir)?;
    let weights = WeightStore::open(&dir.join("model.safetensors"))?;
    let head = sentence_transformers_head(dir)?;
    let name = dir.file_name().map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
    let graph = bert::build(&config, &weights, head, opts, &name)?;
    if let Err(e) = crate::ir::verify(&graph, "after import") {
        return Err(ImportError::Graph { path: weights.path().into(), layer: "whole graph".into(), message: e.to_string() });
    }
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = if tok_path.exists() { Some(TextTokenizer::load(&tok_path, opts.max_tokens)?) } else { None };
    Ok(Model { dir: dir.into(), config, graph, weights, tokenizer })
}

/// Reads and checks `dir/config.json`: a BERT model's settings.
pub fn read_config(dir: &Path) -> Result<bert::BertConfig, ImportError> {
    let cfg_file = JsonFile::read(&dir.join("config.json"), "model config")?;
    let model_type = cfg_file.string("model_type")?;
    if model_type != "bert" {
        return Err(ImportError::UnsupportedModel {
            path: cfg_file.path.clone(),
            model_type: model_type.into(),
            supported: "bert (encoders); llama, mistral, qwen2 (decoders)",
        });
    }
    bert::BertConfig::from_json(&cfg_file)
}

/// Reads `modules.json` (and `1_Pooling/config.json`) to decide the graph's head.
pub(crate) fn sentence_transformers_head(dir: &Path) -> Result<bert::Head, ImportError> {
    let path = dir.join("modules.json");
    if !path.exists() {
        return Ok(bert::Head::Hidden);
    }
    let modules = JsonFile::read(&path, "sentence-transformers modules")?;
    let list = modules.value.as_array().ok_or_else(|| ImportError::Field {
        path: path.clone(),
        field: "(root)".into(),
        message: "expected a list of modules".into(),
    })?;
    let kinds: Vec<&str> = list.iter().filter_map(|m| m.get("type").and_then(|t| t.as_str())).collect();
    let has = |suffix: &str| kinds.iter().any(|k| k.ends_with(suffix));
    if !has("models.Pooling") {
        return Ok(bert::Head::Hidden);
    }
    let pool_dir = list
        .iter()
        .find(|m| m.get("type").and_then(|t| t.as_str()).is_some_and(|t| t.ends_with("models.Pooling")))
        .and_then(|m| m.get("path").and_then(|p| p.as_str()))
        .unwrap_or("1_Pooling");
    let pool = JsonFile::read(&dir.join(pool_dir).join("config.json"), "pooling config")?;
    if !pool.bool_or("pooling_mode_mean_tokens", true)? {
        return Err(ImportError::Field {
            path: pool.path.clone(),
            field: "pooling_mode_mean_tokens".into(),
            message: "only mean pooling is supported".into(),
        });
    }
    Ok(bert::Head::MeanPool { normalize: has("models.Normalize") })
}
