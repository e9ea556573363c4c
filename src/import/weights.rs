//! The weight store: tensors of a memory-mapped safetensors file, decoded on first use.
//!
//! The IR only names weights (`weight @encoder.layer.0.attention.self.query.weight`); their bytes
//! stay in the mapping until the interpreter or a pass asks for them. Derived weights (quantized
//! copies made by passes) can be added with [`WeightStore::insert`].

use super::ImportError;
use crate::interp::{Tensor, WeightSource};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, TensorInfo};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Tensors of one safetensors file plus derived tensors, by name.
pub struct WeightStore {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    infos: HashMap<String, TensorInfo>,
    decoded: Mutex<HashMap<String, Arc<Tensor>>>,
}

impl WeightStore {
    /// Maps `path` and validates its header: every tensor's byte range lies inside the file and
    /// matches its dtype and shape.
    pub fn open(path: &Path) -> Result<Self, ImportError> {
        let file = std::fs::File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ImportError::MissingFile { path: path.into(), what: "model weights" },
            _ => ImportError::Io { path: path.into(), source: e },
        })?;
        // SAFETY: the file is opened read-only; qfuse never writes it while mapped. Truncation by
        // another process would fault, as for any mapped file.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|source| ImportError::Io { path: path.into(), source })?;
        let bad = |message: String| ImportError::Safetensors { path: path.into(), message };
        let (header_len, meta) = safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| bad(e.to_string()))?;
        let data_start = 8 + header_len;
        let data_len = mmap.len().saturating_sub(data_start);
        let mut infos = HashMap::new();
        for (name, info) in meta.tensors() {
            let (start, end) = info.data_offsets;
            if end > data_len || start > end {
                return Err(bad(format!(
                    "tensor `{name}` spans bytes {start}..{end} but the data section has {data_len} bytes (truncated file?)"
                )));
            }
            infos.insert(name.clone(), info.clone());
        }
        Ok(WeightStore { path: path.into(), mmap, data_start, infos, decoded: Mutex::new(HashMap::new()) })
    }

    /// The file this store maps.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Shape of a tensor of the file, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.infos.get(name).map(|i| i.shape.as_slice())
    }

    /// True when the file (or a derived insert) has `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.infos.contains_key(name) || self.lock().contains_key(name)
    }

    /// Names of the file's tensors, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.infos.keys().map(String::as_str).collect();
        v.sort();
        v
    }

    /// Total bytes of the file's tensors as stored.
    pub fn stored_bytes(&self) -> usize {
        self.infos.values().map(|i| i.data_offsets.1 - i.data_offsets.0).sum()
    }

    /// Adds a derived tensor (e.g. a quantized copy); it shadows a file tensor of the same name.
    pub fn insert(&self, name: impl Into<String>, t: Tensor) {
        self.lock().insert(name.into(), Arc::new(t));
    }

    /// Checks that `name` exists with exactly `expected` shape and a float dtype.
    pub fn expect(&self, name: &str, expected: &[u64]) -> Result<(), ImportError> {
        let info = self.infos.get(name).ok_or_else(|| ImportError::MissingTensor { path: self.path.clone(), tensor: name.into() })?;
        if !matches!(info.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(ImportError::TensorDType { path: self.path.clone(), tensor: name.into(), dtype: format!("{:?}", info.dtype) });
        }
        if info.shape.iter().map(|&d| d as u64).ne(expected.iter().copied()) {
            return Err(ImportError::TensorShape {
                path: self.path.clone(),
                tensor: name.into(),
                expected: expected.to_vec(),
                got: info.shape.clone(),
            });
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Tensor>>> {
        self.decoded.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Decodes a file tensor to f32 (F32, F16 and BF16 are exact in f32).
    fn decode(&self, name: &str) -> Result<Tensor, String> {
        let info = self.infos.get(name).ok_or_else(|| format!("{}: tensor `{name}` is missing", self.path.display()))?;
        let (start, end) = info.data_offsets;
        let bytes = &self.mmap[self.data_start + start..self.data_start + end];
        let values: Vec<f32> = match info.dtype {
            Dtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::BF16 => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            other => return Err(format!("{}: tensor `{name}` has unsupported dtype {other:?}", self.path.display())),
        };
        let numel: usize = info.shape.iter().product();
        if values.len() != numel {
            return Err(format!(
                "{}: tensor `{name}` holds {} values, its shape {:?} needs {numel}",
                self.path.display(),
                values.len(),
                info.shape
            ));
        }
        Ok(Tensor::f32(info.shape.clone(), values))
    }
}

impl WeightSource for WeightStore {
    fn weight(&self, name: &str) -> Result<Arc<Tensor>, String> {
        if let Some(t) = self.lock().get(name) {
            return Ok(t.clone());
        }
        let t = Arc::new(self.decode(name)?);
        self.lock().insert(name.to_string(), t.clone());
        Ok(t)
    }
}
