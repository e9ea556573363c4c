//! The weight store: tensors of memory-mapped files (one safetensors file, the shards of a sharded
//! checkpoint, or a GGUF file), decoded to f32 on every use.
//!
//! The IR only names weights (`weight @model.layers.0.self_attn.q_proj.weight`); their bytes stay
//! in the mapping until the interpreter or a pass asks for them. GGUF tensors are stored under
//! the Hugging Face names the decoder builder uses, with their shapes in PyTorch order, and are
//! dequantized exactly (llama.cpp's block formats) when read; Q/K rows that llama.cpp's
//! converter permuted for its RoPE can be put back in Hugging Face order. Derived weights
//! (quantized copies made by passes) can be added with [`WeightStore::insert`].
//!
//! Memory: the store keeps no decoded copy of a file tensor. Each read decodes the mapped bytes
//! into a fresh f32 tensor that lives as long as its reader holds it (the interpreter frees a
//! weight after its last reader has run, so a forward pass holds about one layer's weights at a
//! time), and hands the mapped pages back to the kernel (`MADV_DONTNEED`: they stay in the page
//! cache, out of the process's resident set). Derived tensors are held in their dtype's storage
//! bytes ([`crate::compile::bytes`]: one byte per FP8 code, not the interpreter's four) and
//! decoded on each read. Peak memory of a compile is then about the plan's bytes plus one
//! layer's working set, not the checkpoint in f32 (docs/decoders.md, "Compile at scale").

use super::gguf::GgmlType;
use super::ImportError;
use crate::interp::{Tensor, WeightSource};
use crate::numerics::{f16_bytes_to_f32, groups, map_slice};
use memmap2::Mmap;
use safetensors::tensor::Dtype;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Tensors of one or more mapped files plus derived tensors, by name.
pub struct WeightStore {
    /// What errors name: the safetensors file, the shard index, or the GGUF file.
    path: PathBuf,
    files: Vec<MappedFile>,
    infos: HashMap<String, Stored>,
    derived: Mutex<HashMap<String, Derived>>,
}

/// A derived tensor as the store holds it.
enum Derived {
    /// Storage bytes of `dtype` ([`crate::compile::bytes::encode`]), decoded on each read.
    Packed { dtype: crate::ir::DType, shape: Vec<usize>, bytes: Vec<u8> },
    /// As inserted: a tensor whose values its storage bytes would not give back exactly (off its
    /// dtype's grid), kept as is so reads return exactly what was inserted.
    Held(Arc<Tensor>),
}

impl Derived {
    /// `t` packed into its storage bytes when they decode back to `t` exactly, else held as is.
    fn new(t: Tensor) -> Derived {
        use crate::compile::bytes;
        let bytes = bytes::encode(&t);
        if bytes::round_trips(&t, &bytes) {
            Derived::Packed { dtype: t.dtype, shape: t.shape, bytes }
        } else {
            Derived::Held(Arc::new(t))
        }
    }

    fn tensor(&self) -> Result<Arc<Tensor>, String> {
        match self {
            Derived::Packed { dtype, shape, bytes } => crate::compile::bytes::decode(*dtype, shape.clone(), bytes).map(Arc::new),
            Derived::Held(t) => Ok(t.clone()),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Derived::Packed { bytes, .. } => bytes.len(),
            Derived::Held(t) => match &t.data {
                crate::interp::TensorData::F32(v) => v.len() * 4,
                crate::interp::TensorData::I64(v) => v.len() * 8,
            },
        }
    }
}

struct MappedFile {
    path: PathBuf,
    mmap: Mmap,
}

impl MappedFile {
    /// Drops the pages of `range` from the process's resident set once its bytes are decoded
    /// (a hint: they stay in the page cache, and a later read faults them in again).
    fn forget(&self, range: (usize, usize)) {
        #[cfg(unix)]
        // SAFETY: the mapping is a read-only shared mapping of a file qfuse never writes:
        // MADV_DONTNEED only drops page-table entries, and any later access (by this or another
        // thread, within or beside the range) faults the same file bytes in again, so no
        // reference into the mapping ever observes different contents.
        let _ = unsafe { self.mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, range.0, range.1 - range.0) };
        #[cfg(not(unix))]
        let _ = range;
    }
}

/// Where one tensor's bytes are and how they decode.
#[derive(Clone, Debug)]
pub struct Stored {
    file: usize,
    encoding: Encoding,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    range: (usize, usize),
}

/// How a stored tensor's bytes decode.
#[derive(Clone, Debug)]
pub enum Encoding {
    /// A safetensors dtype (F32, F16 and BF16 decode; others are named in errors).
    Safetensors(Dtype),
    /// A GGUF tensor of this ggml type; with `unpermute_heads`, its rows are put back from
    /// llama.cpp's RoPE order into Hugging Face's (`heads` heads of `rows/heads` rows).
    Gguf {
        /// The block format.
        ty: GgmlType,
        /// Heads of a Q/K projection whose rows the converter permuted.
        unpermute_heads: Option<usize>,
    },
}

/// A tensor of a GGUF file as the store will expose it.
pub struct GgufTensor {
    /// The Hugging Face name it is stored under.
    pub name: String,
    /// Shape in PyTorch order (outermost first).
    pub shape: Vec<usize>,
    /// Its ggml type.
    pub ty: GgmlType,
    /// Absolute byte range of its data in the file.
    pub range: (usize, usize),
    /// See [`Encoding::Gguf`].
    pub unpermute_heads: Option<usize>,
}

fn map_file(path: &Path, what: &'static str) -> Result<Mmap, ImportError> {
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ImportError::MissingFile { path: path.into(), what },
        _ => ImportError::Io { path: path.into(), source: e },
    })?;
    // SAFETY: the file is opened read-only; qfuse never writes it while mapped. Truncation by
    // another process would fault, as for any mapped file.
    unsafe { Mmap::map(&file) }.map_err(|source| ImportError::Io { path: path.into(), source })
}

impl WeightStore {
    /// Maps `path` and validates its header: every tensor's byte range lies inside the file and
    /// matches its dtype and shape.
    pub fn open(path: &Path) -> Result<Self, ImportError> {
        let mut store = WeightStore { path: path.into(), files: vec![], infos: HashMap::new(), derived: Mutex::default() };
        store.add_safetensors(path)?;
        Ok(store)
    }

    /// Maps every shard named by a `model.safetensors.index.json` (`weight_map`: tensor → file);
    /// each shard's tensors must be the ones the index assigns it, and no tensor may appear twice.
    pub fn open_sharded(index: &Path) -> Result<Self, ImportError> {
        let json = super::json::JsonFile::read(index, "sharded checkpoint index")?;
        let map = json.value.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| ImportError::Field {
            path: index.into(),
            field: "weight_map".into(),
            message: "expected an object mapping tensor names to shard files".into(),
        })?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut shards: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
        if shards.len() != map.len() {
            return Err(ImportError::Field {
                path: index.into(),
                field: "weight_map".into(),
                message: "every entry must be a file name".into(),
            });
        }
        shards.sort();
        shards.dedup();
        let mut store = WeightStore { path: index.into(), files: vec![], infos: HashMap::new(), derived: Mutex::default() };
        for shard in shards {
            if shard.contains('/') || shard.contains('\\') || shard.starts_with('.') {
                let message = format!("shard `{shard}` must be a plain file name in the checkpoint folder");
                return Err(ImportError::Field { path: index.into(), field: "weight_map".into(), message });
            }
            store.add_safetensors(&dir.join(shard))?;
        }
        for (tensor, shard) in map {
            let Some(stored) = store.infos.get(tensor) else {
                return Err(ImportError::MissingTensor { path: dir.join(shard.as_str().unwrap_or_default()), tensor: tensor.clone() });
            };
            let holder = &store.files[stored.file].path;
            if holder.file_name().and_then(|n| n.to_str()) != shard.as_str() {
                let message = format!("tensor `{tensor}` is listed in {shard} but stored in {}", holder.display());
                return Err(ImportError::Field { path: index.into(), field: "weight_map".into(), message });
            }
        }
        Ok(store)
    }

    /// Maps a GGUF file whose tensors the importer has located and named.
    pub fn open_gguf(path: &Path, tensors: Vec<GgufTensor>) -> Result<Self, ImportError> {
        let mmap = map_file(path, "GGUF model")?;
        let bad = |tensor: &str, message: String| ImportError::Gguf { path: path.into(), item: format!("tensor `{tensor}`"), message };
        let mut infos = HashMap::new();
        for t in tensors {
            let numel = t.shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
            let want = numel.and_then(|n| t.ty.bytes_for(n));
            let (start, end) = t.range;
            if want != Some((end - start) as u64) || end > mmap.len() || start > end {
                return Err(bad(&t.name, format!("{} bytes at {start}..{end} do not hold {:?} values of {}", end - start, t.shape, t.ty)));
            }
            let encoding = Encoding::Gguf { ty: t.ty, unpermute_heads: t.unpermute_heads };
            if infos.insert(t.name.clone(), Stored { file: 0, encoding, shape: t.shape, range: t.range }).is_some() {
                return Err(bad(&t.name, "appears twice".into()));
            }
        }
        let files = vec![MappedFile { path: path.into(), mmap }];
        Ok(WeightStore { path: path.into(), files, infos, derived: Mutex::default() })
    }

    fn add_safetensors(&mut self, path: &Path) -> Result<(), ImportError> {
        let mmap = map_file(path, "model weights")?;
        let bad = |message: String| ImportError::Safetensors { path: path.into(), message };
        let (header_len, meta) = safetensors::SafeTensors::read_metadata(&mmap).map_err(|e| bad(e.to_string()))?;
        let data_start = 8 + header_len;
        let data_len = mmap.len().saturating_sub(data_start);
        let file = self.files.len();
        for (name, info) in meta.tensors() {
            let (start, end) = info.data_offsets;
            if end > data_len || start > end {
                return Err(bad(format!(
                    "tensor `{name}` spans bytes {start}..{end} but the data section has {data_len} bytes (truncated file?)"
                )));
            }
            let stored = Stored {
                file,
                encoding: Encoding::Safetensors(info.dtype),
                shape: info.shape.clone(),
                range: (data_start + start, data_start + end),
            };
            if self.infos.insert(name.clone(), stored).is_some() {
                return Err(bad(format!("tensor `{name}` also appears in another shard")));
            }
        }
        self.files.push(MappedFile { path: path.into(), mmap });
        Ok(())
    }

    /// The file (or shard index) this store reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Shape of a stored tensor, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.infos.get(name).map(|i| i.shape.as_slice())
    }

    /// True when the files (or a derived insert) have `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.infos.contains_key(name) || self.lock().contains_key(name)
    }

    /// Names of the stored tensors, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.infos.keys().map(String::as_str).collect();
        v.sort();
        v
    }

    /// Total bytes of the stored tensors as stored.
    pub fn stored_bytes(&self) -> usize {
        self.infos.values().map(|i| i.range.1 - i.range.0).sum()
    }

    /// Adds a derived tensor (e.g. a quantized copy); it shadows a file tensor of the same name.
    /// It is held in its dtype's storage bytes (reads return exactly `t`).
    pub fn insert(&self, name: impl Into<String>, t: Tensor) {
        let derived = Derived::new(t);
        self.lock().insert(name.into(), derived);
    }

    /// A no-op kept for [`crate::passes::Weights::release`]: the store holds no decoded copy of a
    /// file tensor to drop (each read decodes the file), and derived tensors stay.
    pub fn release(&self, _name: &str) {}

    /// Bytes the store holds in memory: the derived tensors (in their storage bytes where that
    /// is exact). File tensors are never held decoded.
    pub fn resident_bytes(&self) -> usize {
        self.lock().values().map(Derived::bytes).sum()
    }

    /// Checks that `name` exists with exactly `expected` shape and a float (or GGUF) encoding.
    pub fn expect(&self, name: &str, expected: &[u64]) -> Result<(), ImportError> {
        let info = self.infos.get(name).ok_or_else(|| ImportError::MissingTensor { path: self.path.clone(), tensor: name.into() })?;
        let path = &self.files[info.file].path;
        if let Encoding::Safetensors(dtype) = info.encoding {
            if !matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
                return Err(ImportError::TensorDType { path: path.clone(), tensor: name.into(), dtype: format!("{dtype:?}") });
            }
        }
        if info.shape.iter().map(|&d| d as u64).ne(expected.iter().copied()) {
            return Err(ImportError::TensorShape {
                path: path.clone(),
                tensor: name.into(),
                expected: expected.to_vec(),
                got: info.shape.clone(),
            });
        }
        Ok(())
    }

    /// A SHA-256 over the tensors `names`, in that order: each one's name, encoding, shape and
    /// stored bytes (a file tensor's bytes as they lie in the file; a derived tensor's storage
    /// bytes, or its values when held as inserted), the tensors hashed in parallel. What the
    /// calibration cache keys weights by ([`crate::quant::calib::cache`]). Errors name a tensor
    /// the store does not have.
    pub fn digest(&self, names: &[&str]) -> Result<[u8; 32], String> {
        use rayon::prelude::*;
        use sha2::{Digest, Sha256};
        let each: Vec<[u8; 32]> = names.par_iter().map(|name| self.digest_one(name)).collect::<Result<_, _>>()?;
        let mut h = Sha256::new();
        each.iter().for_each(|d| h.update(d));
        Ok(h.finalize().into())
    }

    fn digest_one(&self, name: &str) -> Result<[u8; 32], String> {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(name);
        h.update([0]);
        if let Some(d) = self.lock().get(name) {
            match d {
                Derived::Packed { dtype, shape, bytes } => {
                    h.update(format!("packed {dtype} {shape:?}"));
                    h.update(bytes);
                }
                Derived::Held(t) => {
                    h.update("held");
                    t.hash_into(&mut h);
                }
            }
            return Ok(h.finalize().into());
        }
        let info = self.infos.get(name).ok_or_else(|| format!("{}: tensor `{name}` is missing", self.path.display()))?;
        let file = &self.files[info.file];
        h.update(format!("file {:?} {:?}", info.encoding, info.shape));
        h.update(&file.mmap[info.range.0..info.range.1]);
        file.forget(info.range);
        Ok(h.finalize().into())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Derived>> {
        self.derived.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Decodes a stored tensor to f32 (F32, F16 and BF16 are exact in f32; GGUF blocks are
    /// dequantized as llama.cpp does).
    fn decode(&self, name: &str) -> Result<Tensor, String> {
        let info = self.infos.get(name).ok_or_else(|| format!("{}: tensor `{name}` is missing", self.path.display()))?;
        let file = &self.files[info.file];
        let bytes = &file.mmap[info.range.0..info.range.1];
        let numel: usize = info.shape.iter().product();
        let fail = |m: String| format!("{}: tensor `{name}`: {m}", file.path.display());
        let values: Vec<f32> = match info.encoding {
            Encoding::Safetensors(Dtype::F32) => map_slice(groups::<u8, 4>(bytes).0, |c| f32::from_le_bytes(*c)),
            Encoding::Safetensors(Dtype::F16) => f16_bytes_to_f32(bytes),
            Encoding::Safetensors(Dtype::BF16) => map_slice(groups::<u8, 2>(bytes).0, |c| half::bf16::from_le_bytes(*c).to_f32()),
            Encoding::Safetensors(other) => return Err(fail(format!("unsupported dtype {other:?}"))),
            Encoding::Gguf { ty, unpermute_heads } => {
                let values = super::gguf::quants::dequantize(ty, bytes, numel).map_err(fail)?;
                match unpermute_heads {
                    Some(heads) => unpermute_rope_rows(&values, &info.shape, heads).map_err(fail)?,
                    None => values,
                }
            }
        };
        if values.len() != numel {
            return Err(fail(format!("holds {} values, its shape {:?} needs {numel}", values.len(), info.shape)));
        }
        file.forget(info.range);
        Ok(Tensor::f32(info.shape.clone(), values))
    }
}

/// Undoes llama.cpp's RoPE row permutation of a Q/K weight `[rows, ..]` (or bias `[rows]`): the
/// converter stored HF row `h·d + j·(d/2) + i` (half `j` of pair `i`) at `h·d + 2i + j`.
pub fn unpermute_rope_rows(values: &[f32], shape: &[usize], heads: usize) -> Result<Vec<f32>, String> {
    let rows = *shape.first().ok_or("a permuted tensor needs rank ≥ 1")?;
    let cols: usize = shape[1..].iter().product();
    if heads == 0 || rows % heads != 0 || (rows / heads) % 2 != 0 {
        return Err(format!("{rows} rows do not split into {heads} heads of even size"));
    }
    let d = rows / heads;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for i in 0..d / 2 {
            for j in 0..2 {
                let (src, dst) = (h * d + 2 * i + j, h * d + j * (d / 2) + i);
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&values[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(out)
}

impl WeightSource for WeightStore {
    /// A packed derived tensor's bytes (copied); file tensors and held ones are encoded by the caller.
    fn storage_bytes(&self, name: &str) -> Option<(crate::ir::DType, Vec<usize>, Vec<u8>)> {
        match self.lock().get(name)? {
            Derived::Packed { dtype, shape, bytes } => Some((*dtype, shape.clone(), bytes.clone())),
            Derived::Held(_) => None,
        }
    }

    /// A derived tensor of that name, else the file tensor, decoded afresh (see the module doc).
    fn weight(&self, name: &str) -> Result<Arc<Tensor>, String> {
        if let Some(d) = self.lock().get(name) {
            return d.tensor().map_err(|e| format!("{}: derived tensor `{name}`: {e}", self.path.display()));
        }
        self.decode(name).map(Arc::new)
    }
}
