//! GGUF (llama.cpp's model container): the file reader, the block formats' dequantizers and the
//! tokenizer rebuilt from `tokenizer.ggml.*`.
//!
//! Layout (`ggml/docs/gguf.md`): little-endian header (`GGUF`, version, tensor count, metadata
//! count), metadata key/value pairs, tensor infos (name, dims innermost first, ggml type, offset),
//! padding to `general.alignment`, tensor data. Every error names the file and the key or tensor.

pub mod quants;
pub mod types;

pub use quants::{dequantize, dequantize_into};
pub use types::GgmlType;
