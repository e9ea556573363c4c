//! Import errors: each names the file and the tensor or field at fault.

use std::path::PathBuf;

/// Why a model folder could not be imported. Every variant names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A required file is absent.
    #[error("{}: missing ({what})", path.display())]
    MissingFile {
        /// The expected file.
        path: PathBuf,
        /// What it should contain.
        what: &'static str,
    },
    /// A JSON file is not valid JSON.
    #[error("{}: malformed JSON: {message}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A field of a JSON file is missing or has the wrong type or value.
    #[error("{}: field `{field}`: {message}", path.display())]
    Field {
        /// The file.
        path: PathBuf,
        /// The field (dotted path).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The config names an architecture qfuse does not import.
    #[error("{}: field `model_type`: unsupported model type \"{model_type}\" (supported: {supported})", path.display())]
    UnsupportedModel {
        /// The config file.
        path: PathBuf,
        /// The value found.
        model_type: String,
        /// The supported values.
        supported: &'static str,
    },
    /// The safetensors container is corrupt or truncated.
    #[error("{}: invalid safetensors file: {message}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A tensor the architecture needs is absent.
    #[error("{}: tensor `{tensor}` is missing", path.display())]
    MissingTensor {
        /// The weights file.
        path: PathBuf,
        /// The checkpoint name.
        tensor: String,
    },
    /// A tensor has the wrong shape.
    #[error("{}: tensor `{tensor}` has shape {got:?}, expected {expected:?}", path.display())]
    TensorShape {
        /// The weights file.
        path: PathBuf,
        /// The checkpoint name.
        tensor: String,
        /// Shape the config implies.
        expected: Vec<u64>,
        /// Shape in the file.
        got: Vec<usize>,
    },
    /// A tensor is stored in a dtype qfuse cannot read for this role.
    #[error("{}: tensor `{tensor}` has unsupported dtype {dtype}", path.display())]
    TensorDType {
        /// The weights file.
        path: PathBuf,
        /// The checkpoint name.
        tensor: String,
        /// The dtype found.
        dtype: String,
    },
    /// The tokenizer file could not be loaded or failed on some text.
    #[error("{}: tokenizer: {message}", path.display())]
    Tokenizer {
        /// tokenizer.json.
        path: PathBuf,
        /// What went wrong (includes the text when it is text-specific).
        message: String,
    },
    /// The model is of a kind this command does not take (a decoder given to an encoder command).
    #[error("{}: {message}", path.display())]
    WrongKind {
        /// The model.
        path: PathBuf,
        /// What it is and which commands take it.
        message: String,
    },
    /// A decoder's KV cache could not be set up: an unsupported format, or calibration that left
    /// a layer without a usable scale (never silently 1.0).
    #[error("{}: KV cache of `{layer}`: {message}", path.display())]
    KvCache {
        /// The model.
        path: PathBuf,
        /// The layer (or `all layers`).
        layer: String,
        /// What is wrong.
        message: String,
    },
    /// A GGUF file is malformed, or a key or tensor of it is missing or unusable.
    #[error("{}: {item}: {message}", path.display())]
    Gguf {
        /// The file.
        path: PathBuf,
        /// What is at fault: `header`, ``key `tokenizer.ggml.tokens` ``, ``tensor `output.weight` ``.
        item: String,
        /// What is wrong.
        message: String,
    },
    /// A chat template failed to parse or render.
    #[error("{origin}: chat template: {message}")]
    ChatTemplate {
        /// Where the template came from (file and key or field).
        origin: String,
        /// The template engine's message (with the line).
        message: String,
    },
    /// The importer built an ill-typed graph: a qfuse bug, reported with the file the graph was
    /// built from (the weights) and the layer.
    #[error("{}: internal error while building layer `{layer}` from this file (a qfuse bug, please report it): {message}", path.display())]
    Graph {
        /// The weights file the graph was built from.
        path: PathBuf,
        /// Layer being built.
        layer: String,
        /// Type rule message.
        message: String,
    },
}
