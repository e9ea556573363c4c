//! Typed metadata accessors. Each fails with an error naming the file and the key: missing, of
//! another type, or out of range for the requested type. Integer accessors accept every integer
//! width (writers differ: llama.cpp's converters write `u32` ids, others `i32` or `u64`).

use super::meta::{MetaArray, MetaValue, StrList};
use super::GgufFile;
use crate::import::ImportError;

impl GgufFile {
    /// `Ok(None)` when `key` is absent, else `get(self, key)`:
    /// `file.optional("tokenizer.ggml.bos_token_id", GgufFile::u32)`.
    pub fn optional<'a, T>(
        &'a self,
        key: &str,
        get: impl FnOnce(&'a Self, &str) -> Result<T, ImportError>,
    ) -> Result<Option<T>, ImportError> {
        if self.value(key).is_some() {
            get(self, key).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The value under `key`, or an error saying it is missing.
    pub fn required(&self, key: &str) -> Result<&MetaValue, ImportError> {
        self.value(key).ok_or_else(|| self.key_error(key, "missing"))
    }

    fn integer<T: TryFrom<i128>>(&self, key: &str, type_name: &str) -> Result<T, ImportError> {
        let value = self.required(key)?;
        let wide = value.as_integer().ok_or_else(|| self.wrong_type(key, type_name, value))?;
        T::try_from(wide).map_err(|_| self.key_error(key, format!("{wide} does not fit {type_name}")))
    }

    fn wrong_type(&self, key: &str, expected: &str, found: &MetaValue) -> ImportError {
        self.key_error(key, format!("expected {expected}, found {}", found.type_name()))
    }

    /// An integer that fits `u32`.
    pub fn u32(&self, key: &str) -> Result<u32, ImportError> {
        self.integer(key, "u32")
    }

    /// An integer that fits `u64`.
    pub fn u64(&self, key: &str) -> Result<u64, ImportError> {
        self.integer(key, "u64")
    }

    /// An integer that fits `i64`.
    pub fn i64(&self, key: &str) -> Result<i64, ImportError> {
        self.integer(key, "i64")
    }

    /// An `f32` (an `f64` is rounded to `f32`).
    pub fn f32(&self, key: &str) -> Result<f32, ImportError> {
        match *self.required(key)? {
            MetaValue::F32(v) => Ok(v),
            MetaValue::F64(v) => Ok(v as f32),
            ref other => Err(self.wrong_type(key, "f32", other)),
        }
    }

    /// A `bool`.
    pub fn bool(&self, key: &str) -> Result<bool, ImportError> {
        match *self.required(key)? {
            MetaValue::Bool(v) => Ok(v),
            ref other => Err(self.wrong_type(key, "bool", other)),
        }
    }

    /// A string.
    pub fn str(&self, key: &str) -> Result<&str, ImportError> {
        match self.required(key)? {
            MetaValue::Str(s) => Ok(s),
            other => Err(self.wrong_type(key, "string", other)),
        }
    }

    /// An array of any element type.
    pub fn array(&self, key: &str) -> Result<&MetaArray, ImportError> {
        match self.required(key)? {
            MetaValue::Array(a) => Ok(a),
            other => Err(self.wrong_type(key, "array", other)),
        }
    }

    /// An array of strings.
    pub fn str_array(&self, key: &str) -> Result<&StrList, ImportError> {
        match self.array(key)? {
            MetaArray::Str(list) => Ok(list),
            other => Err(self.key_error(key, format!("expected array of string, found array of {}", other.element_type_name()))),
        }
    }

    /// An array of integers that each fit `i32`.
    pub fn i32_array(&self, key: &str) -> Result<Vec<i32>, ImportError> {
        let array = self.array(key)?;
        match array.integers::<i32>() {
            Some(Ok(values)) => Ok(values),
            Some(Err(i)) => Err(self.key_error(key, format!("element {i} does not fit i32"))),
            None => Err(self.key_error(key, format!("expected array of integers, found array of {}", array.element_type_name()))),
        }
    }

    /// An array of `f32` (`f64` elements are rounded).
    pub fn f32_array(&self, key: &str) -> Result<Vec<f32>, ImportError> {
        match self.array(key)? {
            MetaArray::F32(v) => Ok(v.clone()),
            MetaArray::F64(v) => Ok(v.iter().map(|&x| x as f32).collect()),
            other => Err(self.key_error(key, format!("expected array of f32, found array of {}", other.element_type_name()))),
        }
    }
}
