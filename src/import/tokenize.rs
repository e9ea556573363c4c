//! Text → model inputs with the `tokenizers` crate, offline, from the folder's `tokenizer.json`.

use super::ImportError;
use crate::interp::Tensor;
use std::path::{Path, PathBuf};
use tokenizers::{Tokenizer, TruncationParams};

/// A loaded `tokenizer.json`.
pub struct TextTokenizer {
    path: PathBuf,
    inner: Tokenizer,
}

/// A batch of tokenized texts, padded to the longest.
#[derive(Debug)]
pub struct Batch {
    /// `input_ids [B,S]`.
    pub input_ids: Tensor,
    /// `attention_mask [B,S]`: 1 for tokens, 0 for padding.
    pub attention_mask: Tensor,
    /// `token_type_ids [B,S]`.
    pub token_type_ids: Tensor,
    /// Token count of each text before padding.
    pub lengths: Vec<usize>,
}

impl Batch {
    /// The three inputs under the names the BERT graph binds.
    pub fn inputs(self) -> Vec<(&'static str, Tensor)> {
        vec![("input_ids", self.input_ids), ("attention_mask", self.attention_mask), ("token_type_ids", self.token_type_ids)]
    }
}

impl TextTokenizer {
    /// Loads `path` (at most [`super::json::MAX_JSON_BYTES`]). Padding in the file is ignored (batches are padded to their longest text);
    /// truncation is set to `max_tokens`.
    pub fn load(path: &Path, max_tokens: usize) -> Result<Self, ImportError> {
        let text = super::json::read_limited(path, "tokenizer")?;
        Self::from_bytes(text.as_bytes(), path, max_tokens)
    }

    /// Like [`Self::load`] from the bytes of a `tokenizer.json` (e.g. the copy inside a plan);
    /// `origin` names it in errors.
    pub fn from_bytes(bytes: &[u8], origin: &Path, max_tokens: usize) -> Result<Self, ImportError> {
        let path = origin;
        let err = |message: String| ImportError::Tokenizer { path: path.into(), message };
        let mut inner = parse_tokenizer_json(bytes, origin)?;
        inner.with_padding(None);
        let trunc = TruncationParams { max_length: max_tokens, ..Default::default() };
        inner.with_truncation(Some(trunc)).map_err(|e| err(e.to_string()))?;
        Ok(TextTokenizer { path: path.into(), inner })
    }

    /// Number of token ids, special and added tokens included.
    pub fn vocab_size(&self) -> u64 {
        self.inner.get_vocab_size(true) as u64
    }

    /// Tokenizes `texts` into one padded batch (pad id 0, mask 0).
    pub fn encode(&self, texts: &[String]) -> Result<Batch, ImportError> {
        let mut rows = Vec::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            let fail =
                |e: String| ImportError::Tokenizer { path: self.path.clone(), message: format!("text #{i} ({:?}): {e}", preview(text)) };
            let encoded = crate::util::contain_panic("the tokenizers library", || self.inner.encode(text.as_str(), true)).map_err(fail)?;
            let enc = encoded.map_err(|e| fail(e.to_string()))?;
            if enc.get_ids().is_empty() {
                let message = format!("text #{i} ({:?}) produced no tokens", preview(text));
                return Err(ImportError::Tokenizer { path: self.path.clone(), message });
            }
            rows.push((enc.get_ids().to_vec(), enc.get_type_ids().to_vec()));
        }
        Ok(pad(&rows))
    }
}

/// The `tokenizers` tokenizer of a `tokenizer.json`'s bytes; `origin` names it in errors. The
/// tokenizers crate panics on some malformed files (e.g. a `decoder` of the wrong shape): such a
/// panic is contained and reported as an error.
pub(crate) fn parse_tokenizer_json(bytes: &[u8], origin: &Path) -> Result<Tokenizer, ImportError> {
    let err = |message: String| ImportError::Tokenizer { path: origin.into(), message };
    let parsed = crate::util::contain_panic("the tokenizers library", || Tokenizer::from_bytes(bytes)).map_err(err)?;
    parsed.map_err(|e| err(e.to_string()))
}

fn preview(text: &str) -> String {
    text.chars().take(40).collect()
}

fn pad(rows: &[(Vec<u32>, Vec<u32>)]) -> Batch {
    let seq = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let mut ids = vec![0i64; rows.len() * seq];
    let mut mask = vec![0i64; rows.len() * seq];
    let mut types = vec![0i64; rows.len() * seq];
    for (r, (row_ids, row_types)) in rows.iter().enumerate() {
        for (t, (&id, &ty)) in row_ids.iter().zip(row_types).enumerate() {
            ids[r * seq + t] = id as i64;
            mask[r * seq + t] = 1;
            types[r * seq + t] = ty as i64;
        }
    }
    let shape = vec![rows.len(), seq];
    Batch {
        input_ids: Tensor::i64(shape.clone(), ids),
        attention_mask: Tensor::i64(shape.clone(), mask),
        token_type_ids: Tensor::i64(shape, types),
        lengths: rows.iter().map(|r| r.0.len()).collect(),
    }
}
