//! The tokenizer rebuilt from a GGUF's `tokenizer.ggml.*` keys with the `tokenizers` crate.
//!
//! `tokenizer.ggml.model = gpt2` becomes a byte-level BPE over `tokens` and `merges` ("a b"
//! strings) with a ByteLevel decoder; the split before BPE comes from `tokenizer.ggml.pre` through
//! [`pre_tokenizer`], a hand-kept table transcribed from llama.cpp's `llama-vocab.cpp`. Tokens of
//! type 3 (control) become special added tokens, type 4 (user-defined) plain added tokens: both
//! are matched whole in the input text, as llama.cpp does with `parse_special`. Any other model or
//! pre-tokenizer is refused with an error naming the key and the value.

use super::{GgufFile, StrList};
use crate::import::chat::ChatTemplate;
use crate::import::ImportError;
use std::path::{Path, PathBuf};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// `tokenizer.ggml.pre` values qfuse supports, as [`pre_tokenizer`] builds them.
pub const SUPPORTED_PRE: [&str; 4] = ["smollm", "gpt2", "llama-bpe", "qwen2"];

/// Llama 3's split (llama.cpp `LLAMA_VOCAB_PRE_TYPE_LLAMA3`): up to three digits per piece.
const LLAMA3_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split (`LLAMA_VOCAB_PRE_TYPE_QWEN2`): Llama 3's with one digit per piece.
const QWEN2_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Token types (`tokenizer.ggml.token_type`) that become added tokens.
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

/// The `tokenizer.ggml.*` keys a tokenizer is built from, read and checked but not yet built.
/// Fields are public so that a caller (or a test) can inspect or override them before
/// [`GgufVocab::build`].
#[derive(Clone, Debug)]
pub struct GgufVocab {
    /// The GGUF file (for errors).
    pub path: PathBuf,
    /// `tokenizer.ggml.model`.
    pub model: String,
    /// `tokenizer.ggml.pre` (`default` when absent, as llama.cpp).
    pub pre: String,
    /// `tokenizer.ggml.tokens`, id order.
    pub tokens: StrList,
    /// `tokenizer.ggml.token_type` (all 1, normal, when absent).
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`, highest priority first.
    pub merges: StrList,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos: Option<u32>,
    /// `tokenizer.ggml.add_bos_token` (false when absent).
    pub add_bos: bool,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

/// A tokenizer rebuilt from a GGUF, with its special ids and chat template.
pub struct GgufTokenizer {
    path: PathBuf,
    inner: Tokenizer,
    vocab_size: usize,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    chat_template: Option<String>,
}

impl GgufVocab {
    /// Reads the tokenizer keys of `file`; each problem names its key.
    pub fn read(file: &GgufFile) -> Result<Self, ImportError> {
        let tokens = file.str_array("tokenizer.ggml.tokens")?.clone();
        let token_types = match file.optional("tokenizer.ggml.token_type", GgufFile::i32_array)? {
            Some(types) if types.len() != tokens.len() => {
                let message = format!("has {} entries for {} tokens", types.len(), tokens.len());
                return Err(file.key_error("tokenizer.ggml.token_type", message));
            }
            Some(types) => types,
            None => vec![1; tokens.len()],
        };
        let token_id = |key: &str| -> Result<Option<u32>, ImportError> {
            match file.optional(key, GgufFile::u32)? {
                Some(id) if id as usize >= tokens.len() => {
                    Err(file.key_error(key, format!("id {id} is not below the vocabulary size {}", tokens.len())))
                }
                id => Ok(id),
            }
        };
        Ok(GgufVocab {
            path: file.path().into(),
            model: file.str("tokenizer.ggml.model")?.into(),
            pre: file.optional("tokenizer.ggml.pre", GgufFile::str)?.unwrap_or("default").into(),
            merges: file.optional("tokenizer.ggml.merges", GgufFile::str_array)?.cloned().unwrap_or_default(),
            bos: token_id("tokenizer.ggml.bos_token_id")?,
            eos: token_id("tokenizer.ggml.eos_token_id")?,
            add_bos: file.optional("tokenizer.ggml.add_bos_token", GgufFile::bool)?.unwrap_or(false),
            chat_template: file.optional("tokenizer.chat_template", GgufFile::str)?.map(str::to_owned),
            tokens,
            token_types,
        })
    }

    fn key_error(&self, key: &str, message: String) -> ImportError {
        ImportError::Gguf { path: self.path.clone(), item: format!("key `{key}`"), message }
    }

    /// Builds the tokenizer.
    pub fn build(&self) -> Result<GgufTokenizer, ImportError> {
        if self.model != "gpt2" {
            let message = format!("tokenizer model {:?} is not supported (supported: \"gpt2\")", self.model);
            return Err(self.key_error("tokenizer.ggml.model", message));
        }
        let pre = pre_tokenizer(&self.pre).ok_or_else(|| {
            let message = format!("pre-tokenizer {:?} is not supported (supported: {})", self.pre, SUPPORTED_PRE.join(", "));
            self.key_error("tokenizer.ggml.pre", message)
        })?;
        let mut inner = Tokenizer::new(self.bpe()?);
        inner.with_pre_tokenizer(Some(pre));
        inner.with_decoder(Some(ByteLevel::default()));
        inner.add_special_tokens(&self.added_tokens(CONTROL, true));
        inner.add_tokens(&self.added_tokens(USER_DEFINED, false));
        Ok(GgufTokenizer {
            path: self.path.clone(),
            inner,
            vocab_size: self.tokens.len(),
            bos: self.bos,
            eos: self.eos,
            add_bos: self.add_bos,
            chat_template: self.chat_template.clone(),
        })
    }

    fn bpe(&self) -> Result<BPE, ImportError> {
        let vocab: Vocab = self.tokens.iter().enumerate().map(|(id, t)| (t.to_owned(), id as u32)).collect();
        let merges = self.merge_pairs()?;
        BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(self.pre == "llama-bpe")
            .build()
            .map_err(|e| self.key_error("tokenizer.ggml.merges", e.to_string()))
    }

    /// "a b" → ("a", "b"), split at the first space after the first byte as llama.cpp does.
    fn merge_pairs(&self) -> Result<Vec<(String, String)>, ImportError> {
        let split = |(i, m): (usize, &str)| {
            let at = m.char_indices().skip(1).find(|&(_, c)| c == ' ').map(|(at, _)| at);
            at.map(|at| (m[..at].to_owned(), m[at + 1..].to_owned()))
                .ok_or_else(|| self.key_error("tokenizer.ggml.merges", format!("entry {i} ({m:?}) is not two tokens separated by a space")))
        };
        self.merges.iter().enumerate().map(split).collect()
    }

    fn added_tokens(&self, token_type: i32, special: bool) -> Vec<AddedToken> {
        let typed = self.token_types.iter().zip(self.tokens.iter()).filter(|(&ty, _)| ty == token_type);
        typed.map(|(_, t)| AddedToken::from(t, special).normalized(false)).collect()
    }
}

/// The pre-tokenizer llama.cpp applies for `tokenizer.ggml.pre = name`, or `None` if unsupported.
pub fn pre_tokenizer(name: &str) -> Option<PreTokenizerWrapper> {
    let byte_level = |use_regex| PreTokenizerWrapper::from(ByteLevel::new(false, true, use_regex));
    let split = |regex: &str| {
        let split = Split::new(SplitPattern::Regex(regex.into()), SplitDelimiterBehavior::Isolated, false);
        PreTokenizerWrapper::from(split.expect("the table's regexes compile"))
    };
    Some(match name {
        "gpt2" => byte_level(true),
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level(true)]).into(),
        "llama-bpe" => Sequence::new(vec![split(LLAMA3_SPLIT), byte_level(false)]).into(),
        "qwen2" => Sequence::new(vec![split(QWEN2_SPLIT), byte_level(false)]).into(),
        _ => return None,
    })
}

impl GgufTokenizer {
    /// Reads and builds the tokenizer of `file`.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, ImportError> {
        GgufVocab::read(file)?.build()
    }

    fn error(&self, message: String) -> ImportError {
        ImportError::Tokenizer { path: self.path.clone(), message }
    }

    /// Token ids of `text`, never truncated or padded; special tokens written in the text are
    /// recognised. BOS comes first when `add_bos_token` says so.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ImportError> {
        let enc = self.inner.encode(text, false).map_err(|e| self.error(format!("text {:?}: {e}", preview(text))))?;
        let bos = self.bos.filter(|_| self.add_bos);
        Ok(bos.into_iter().chain(enc.get_ids().iter().copied()).collect())
    }

    /// The text of `ids`; control tokens are dropped when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, ImportError> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(self.error(format!("token id {bad} is not below the vocabulary size {}", self.vocab_size)));
        }
        self.inner.decode(ids, skip_special).map_err(|e| self.error(e.to_string()))
    }

    /// The token of `id`.
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// `tokenizer.ggml.bos_token_id`.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// `tokenizer.ggml.eos_token_id`.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// `tokenizer.ggml.add_bos_token`.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// The `tokenizers` tokenizer inside.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// The chat template's Jinja source, if the model has one.
    pub fn chat_template_source(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// A tokenizer saved in a plan: HF `tokenizer.json` text and the special tokens; `path`
    /// names the plan in errors.
    pub fn from_saved(
        path: &Path,
        json: &[u8],
        bos: Option<u32>,
        eos: Option<u32>,
        add_bos: bool,
        chat_template: Option<String>,
    ) -> Result<Self, ImportError> {
        let err = |message: String| ImportError::Tokenizer { path: path.into(), message };
        let inner = Tokenizer::from_bytes(json).map_err(|e| err(format!("section `tokenizer.json`: {e}")))?;
        let vocab_size = inner.get_vocab_size(true);
        Ok(Self { path: path.into(), inner, vocab_size, bos, eos, add_bos, chat_template })
    }

    /// `tokenizer.chat_template`, compiled, if the file has one.
    pub fn chat_template(&self) -> Result<Option<ChatTemplate>, ImportError> {
        let origin = format!("{}: key `tokenizer.chat_template`", self.path.display());
        self.chat_template.as_deref().map(|source| ChatTemplate::new(origin, source)).transpose()
    }

    /// The text of the BOS token ("" when there is none), for chat templates.
    pub fn bos_text(&self) -> String {
        self.bos.and_then(|id| self.token(id)).unwrap_or_default()
    }

    /// The text of the EOS token ("" when there is none), for chat templates.
    pub fn eos_text(&self) -> String {
        self.eos.and_then(|id| self.token(id)).unwrap_or_default()
    }
}

fn preview(text: &str) -> String {
    text.chars().take(40).collect()
}

/// Turns a growing list of generated ids into text as it completes, never splitting a UTF-8
/// character (a byte-level token may hold part of one): each call returns the text that the ids
/// added since the previous call completed, holding back a trailing partial character.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    /// Start of the window decoded for context (the ids before it are final).
    prefix: usize,
    /// End of the ids whose text has been returned.
    read: usize,
}

impl StreamDecoder {
    /// A decoder at the start of a generation.
    pub fn new() -> Self {
        Self::default()
    }

    /// The newly completed text of `ids` (the same list as before, grown). Control tokens are
    /// skipped when `skip_special`.
    pub fn next_text(&mut self, tokenizer: &GgufTokenizer, ids: &[u32], skip_special: bool) -> Result<String, ImportError> {
        if ids.len() < self.read {
            return Err(tokenizer.error(format!("the id list shrank from {} to {} ids", self.read, ids.len())));
        }
        let done = tokenizer.decode(&ids[self.prefix..self.read], skip_special)?;
        let all = tokenizer.decode(&ids[self.prefix..], skip_special)?;
        let fresh = all.strip_prefix(done.as_str()).unwrap_or("");
        if fresh.is_empty() || fresh.ends_with(char::REPLACEMENT_CHARACTER) {
            return Ok(String::new());
        }
        let fresh = fresh.to_owned();
        self.prefix = self.read;
        self.read = ids.len();
        Ok(fresh)
    }
}

impl GgufTokenizer {
    /// The tokenizer of a Hugging Face decoder folder: `tokenizer.json`, with the chat template,
    /// BOS/EOS tokens and `add_bos_token` from `tokenizer_config.json` when present (the config's
    /// token ids otherwise).
    pub fn from_hf_folder(dir: &std::path::Path, cfg: &crate::import::decoder::DecoderConfig) -> Result<Self, ImportError> {
        use crate::import::json::{read_limited, JsonFile};
        let path = dir.join("tokenizer.json");
        let inner = crate::import::tokenize::parse_tokenizer_json(read_limited(&path, "tokenizer")?.as_bytes(), &path)?;
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.exists() { JsonFile::read(&config_path, "tokenizer config")?.value } else { serde_json::Value::Null };
        let token_id = |key: &str| {
            let token = config.get(key).and_then(|t| t.as_str().or_else(|| t.get("content").and_then(|c| c.as_str())));
            token.and_then(|t| inner.token_to_id(t))
        };
        let bos = token_id("bos_token").or(cfg.bos_token_id);
        let eos = token_id("eos_token").or(cfg.eos_token_ids.first().copied());
        let add_bos = config.get("add_bos_token").and_then(|v| v.as_bool()).unwrap_or(false);
        let chat_template = config.get("chat_template").and_then(|v| v.as_str()).map(str::to_owned);
        let vocab_size = inner.get_vocab_size(true);
        Ok(GgufTokenizer { path, inner, vocab_size, bos, eos, add_bos, chat_template })
    }
}
