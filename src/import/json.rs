//! Reading JSON files with errors that name the file and field.
//!
//! Limits on hostile files: a JSON file larger than [`MAX_JSON_BYTES`] is refused before it is
//! read, and `serde_json` refuses nesting deeper than 128 levels (its recursion limit, which this
//! crate never lifts), so a deep document is an error, never a stack overflow.

use super::ImportError;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Largest JSON file read (configs are kilobytes; a tokenizer.json a few megabytes).
pub const MAX_JSON_BYTES: u64 = 256 << 20;

/// Reads `path` as text, refusing files above [`MAX_JSON_BYTES`]; `what` describes the file for
/// the missing-file error.
pub fn read_limited(path: &Path, what: &'static str) -> Result<String, ImportError> {
    let io = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::NotFound => ImportError::MissingFile { path: path.into(), what },
        _ => ImportError::Io { path: path.into(), source },
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_JSON_BYTES {
        let message = format!("{len} bytes is more than the {MAX_JSON_BYTES} a JSON file may have");
        return Err(ImportError::Json { path: path.into(), message });
    }
    std::fs::read_to_string(path).map_err(io)
}

/// A parsed JSON document that remembers which file it came from.
pub struct JsonFile {
    /// The file.
    pub path: PathBuf,
    /// Its contents.
    pub value: Value,
}

impl JsonFile {
    /// Reads and parses `path`; `what` describes the file for the missing-file error.
    pub fn read(path: &Path, what: &'static str) -> Result<Self, ImportError> {
        let text = read_limited(path, what)?;
        Self::parse(path, &text)
    }

    /// Parses `text` as the contents of `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ImportError> {
        let value = serde_json::from_str(text).map_err(|e| ImportError::Json { path: path.into(), message: e.to_string() })?;
        Ok(JsonFile { path: path.into(), value })
    }

    fn field_error(&self, field: &str, message: impl Into<String>) -> ImportError {
        ImportError::Field { path: self.path.clone(), field: field.into(), message: message.into() }
    }

    fn get(&self, field: &str) -> Result<&Value, ImportError> {
        self.value.get(field).ok_or_else(|| self.field_error(field, "missing"))
    }

    /// A required positive integer field.
    pub fn positive(&self, field: &str) -> Result<u64, ImportError> {
        match self.get(field)?.as_u64() {
            Some(n) if n > 0 => Ok(n),
            _ => Err(self.field_error(field, format!("expected a positive integer, got {}", self.get(field)?))),
        }
    }

    /// An optional positive integer field.
    pub fn positive_or(&self, field: &str, default: u64) -> Result<u64, ImportError> {
        if self.value.get(field).is_some() {
            self.positive(field)
        } else {
            Ok(default)
        }
    }

    /// An optional positive float field.
    pub fn float_or(&self, field: &str, default: f64) -> Result<f64, ImportError> {
        match self.value.get(field) {
            None => Ok(default),
            Some(v) => match v.as_f64() {
                Some(x) if x > 0.0 && x.is_finite() => Ok(x),
                _ => Err(self.field_error(field, format!("expected a positive number, got {v}"))),
            },
        }
    }

    /// A required string field.
    pub fn string(&self, field: &str) -> Result<&str, ImportError> {
        self.get(field)?.as_str().ok_or_else(|| self.field_error(field, "expected a string"))
    }

    /// An optional string field.
    pub fn string_or<'a>(&'a self, field: &str, default: &'a str) -> Result<&'a str, ImportError> {
        if self.value.get(field).is_some() {
            self.string(field)
        } else {
            Ok(default)
        }
    }

    /// An optional boolean field.
    pub fn bool_or(&self, field: &str, default: bool) -> Result<bool, ImportError> {
        match self.value.get(field) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.field_error(field, format!("expected true or false, got {v}"))),
        }
    }
}
