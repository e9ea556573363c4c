//! GGUF (llama.cpp's model container): the file reader, the block formats' dequantizers and the
//! tokenizer rebuilt from `tokenizer.ggml.*`.
//!
//! Layout (`ggml/docs/gguf.md`): little-endian header (`GGUF`, version, tensor count, metadata
//! count), metadata key/value pairs, tensor infos (name, dims innermost first, ggml type, offset),
//! padding to `general.alignment`, tensor data. Every error names the file and the key or tensor.
//!
//! Files: `reader.rs` ([`GgufFile`]: header, alignment, data section), `meta.rs` (values),
//! `tensor.rs` (tensor infos and their checks), `access.rs` (typed accessors), `cursor.rs`
//! (bounds-checked reads), `tokenizer.rs` ([`GgufTokenizer`]), `types.rs` ([`GgmlType`]).
//! `docs/decoders.md` (section GGUF) lists the limits and the supported tokenizers.

mod access;
mod cursor;
mod exercise;
pub mod meta;
pub mod quants;
mod reader;
mod tensor;
pub mod tokenizer;
pub mod types;

#[doc(hidden)]
pub use exercise::exercise;
pub use meta::{MetaArray, MetaValue, StrList, MAX_ARRAY_DEPTH};
pub use quants::{dequantize, dequantize_into};
pub use reader::{GgufFile, DEFAULT_ALIGNMENT};
pub use tensor::{TensorInfo, MAX_DIMS, MAX_NAME_LEN};
pub use tokenizer::{GgufTokenizer, GgufVocab, StreamDecoder};
pub use types::GgmlType;
