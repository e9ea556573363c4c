//! The GGUF container: header, metadata, tensor infos, alignment and the data section, read from
//! a memory map or from bytes, with every count, length and offset checked against the file.
//!
//! Limits (as llama.cpp's `gguf.cpp` unless noted): versions 2 and 3, little-endian only; at
//! most [`MAX_ARRAY_DEPTH`](super::MAX_ARRAY_DEPTH) nested arrays; tensor names up to
//! [`MAX_NAME_LEN`](super::MAX_NAME_LEN) bytes, up to [`MAX_DIMS`](super::MAX_DIMS) dims,
//! element counts within `i64`; `general.alignment` a `u32` power of two (llama.cpp and gguf-py
//! both refuse anything else; the spec's "multiple of 8" is not enforced because they do not
//! enforce it); duplicate keys and tensor names refused. No list is reserved beyond what the
//! remaining bytes could hold, so a lying count cannot allocate more than the file's size.

use super::cursor::{capacity_for, Cursor};
use super::meta::{read_value, MetaValue};
use super::tensor::{check_ranges, read_info, TensorInfo, MIN_INFO_SIZE};
use crate::import::ImportError;
use memmap2::Mmap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Alignment of the data section and of every tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Smallest encoding of a key/value pair: empty key, type, one-byte value.
const MIN_KV_SIZE: usize = 8 + 4 + 1;

/// A parsed GGUF file. The bytes stay mapped (or owned); tensor data is borrowed from them.
pub struct GgufFile {
    path: PathBuf,
    storage: Storage,
    layout: Layout,
}

enum Storage {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// Everything the header says, with offsets checked against the file.
struct Layout {
    version: u32,
    alignment: u64,
    data_start: usize,
    metadata: Vec<(String, MetaValue)>,
    keys: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

/// Where parsing failed: the item (`header`, ``key `k` ``, ``tensor `t` ``) and what is wrong.
pub(super) struct Fault {
    pub(super) item: String,
    pub(super) message: String,
}

impl Fault {
    pub(super) fn header(message: String) -> Fault {
        Fault { item: "header".into(), message }
    }

    pub(super) fn key(key: &str, message: String) -> Fault {
        Fault { item: format!("key `{key}`"), message }
    }

    pub(super) fn tensor(name: &str, message: String) -> Fault {
        Fault { item: format!("tensor `{name}`"), message }
    }

    fn into_error(self, path: &Path) -> ImportError {
        ImportError::Gguf { path: path.into(), item: self.item, message: self.message }
    }
}

impl GgufFile {
    /// Maps `path` and parses it.
    pub fn open(path: &Path) -> Result<Self, ImportError> {
        let file = std::fs::File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ImportError::MissingFile { path: path.into(), what: "GGUF model" },
            _ => ImportError::Io { path: path.into(), source: e },
        })?;
        // SAFETY: the file is opened read-only and qfuse never writes it while mapped; truncation
        // by another process would fault, as for any mapped file.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|source| ImportError::Io { path: path.into(), source })?;
        Self::with_storage(path, Storage::Mapped(mmap))
    }

    /// Parses a GGUF held in memory; `path` names it in errors.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self, ImportError> {
        Self::with_storage(path, Storage::Owned(bytes))
    }

    fn with_storage(path: &Path, storage: Storage) -> Result<Self, ImportError> {
        let layout = parse_layout(storage.bytes()).map_err(|f| f.into_error(path))?;
        Ok(GgufFile { path: path.into(), storage, layout })
    }

    /// The file (as named when opened).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.layout.version
    }

    /// The alignment of the data section and of every tensor offset.
    pub fn alignment(&self) -> u64 {
        self.layout.alignment
    }

    /// The file offset where the data section starts.
    pub fn data_start(&self) -> usize {
        self.layout.data_start
    }

    /// Every key/value pair, in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.layout.metadata
    }

    /// The value stored under `key`.
    pub fn value(&self, key: &str) -> Option<&MetaValue> {
        self.layout.keys.get(key).map(|&i| &self.layout.metadata[i].1)
    }

    /// Every tensor info, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.layout.tensors
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.layout.tensor_index.get(name).map(|&i| &self.layout.tensors[i])
    }

    /// The exact bytes of a tensor of this file. Fails, naming the tensor, when its type is one
    /// qfuse cannot read (or `info` does not come from this file).
    pub fn tensor_data(&self, info: &TensorInfo) -> Result<&[u8], ImportError> {
        let fault = |message: String| Fault::tensor(&info.name, message).into_error(&self.path);
        let size = info.byte_size().ok_or_else(|| fault(format!("has {}, which qfuse cannot read", info.ty)))?;
        let start = (self.layout.data_start as u64).checked_add(info.offset);
        let end = start.and_then(|s| s.checked_add(size));
        let range = start.zip(end).and_then(|(s, e)| Some(usize::try_from(s).ok()?..usize::try_from(e).ok()?));
        range
            .and_then(|r| self.storage.bytes().get(r))
            .ok_or_else(|| fault(format!("bytes at offset {} + {size} lie outside the file", info.offset)))
    }

    /// An error about `key` of this file (for callers interpreting the metadata).
    pub fn key_error(&self, key: &str, message: impl Into<String>) -> ImportError {
        Fault::key(key, message.into()).into_error(&self.path)
    }
}

fn parse_layout(bytes: &[u8]) -> Result<Layout, Fault> {
    let mut cur = Cursor::new(bytes);
    let (version, n_tensors, n_kv) = read_header(&mut cur)?;
    let (metadata, keys) = read_metadata(&mut cur, n_kv)?;
    let alignment = alignment_of(&metadata, &keys)?;
    let (tensors, tensor_index) = read_tensor_infos(&mut cur, n_tensors)?;
    let data_start = align_up(cur.pos() as u64, alignment);
    let data_len = (bytes.len() as u64).saturating_sub(data_start);
    if data_start > bytes.len() as u64 && !tensors.is_empty() {
        let message = format!("data section would start at {data_start}, past the end of the file ({} bytes)", bytes.len());
        return Err(Fault::header(message));
    }
    check_ranges(&tensors, data_len, alignment)?;
    let data_start = data_start.min(bytes.len() as u64) as usize;
    Ok(Layout { version, alignment, data_start, metadata, keys, tensors, tensor_index })
}

fn align_up(pos: u64, alignment: u64) -> u64 {
    pos.div_ceil(alignment) * alignment
}

/// Magic, version, tensor count, metadata count; counts checked against the bytes left.
fn read_header(cur: &mut Cursor<'_>) -> Result<(u32, u64, u64), Fault> {
    let magic = cur.take(4, "magic").map_err(Fault::header)?;
    if magic != b"GGUF" {
        return Err(Fault::header(format!("magic is {magic:02x?}, not \"GGUF\" (not a GGUF file)")));
    }
    let version = cur.u32("version").map_err(Fault::header)?;
    match version {
        2 | 3 => {}
        v if v > 0xffff && v.swap_bytes() <= 3 => {
            return Err(Fault::header(format!("big-endian GGUF (version {}) is not supported", v.swap_bytes())))
        }
        v => return Err(Fault::header(format!("version {v} is not supported (2 and 3 are)"))),
    }
    let n_tensors = cur.u64("tensor count").map_err(Fault::header)?;
    let n_kv = cur.u64("metadata count").map_err(Fault::header)?;
    check_count(cur, n_kv, MIN_KV_SIZE, "metadata count")?;
    check_count(cur, n_tensors, MIN_INFO_SIZE, "tensor count")?;
    Ok((version, n_tensors, n_kv))
}

fn check_count(cur: &Cursor<'_>, count: u64, min_entry: usize, what: &str) -> Result<(), Fault> {
    if count > (cur.remaining() / min_entry) as u64 {
        let message = format!("{what} {count} cannot fit in the {} bytes left (≥ {min_entry} bytes each)", cur.remaining());
        return Err(Fault::header(message));
    }
    Ok(())
}

type Metadata = (Vec<(String, MetaValue)>, HashMap<String, usize>);

fn read_metadata(cur: &mut Cursor<'_>, count: u64) -> Result<Metadata, Fault> {
    let mut pairs = Vec::with_capacity(capacity_for::<(String, MetaValue)>(count, cur.remaining(), MIN_KV_SIZE));
    let mut keys = HashMap::new();
    for i in 0..count {
        let key = cur.string("key").map_err(|message| Fault { item: format!("metadata pair #{i}"), message })?;
        let fault = |message: String| Fault::key(key, message);
        let ty = cur.u32("value type").map_err(fault)?;
        let value = read_value(cur, ty, 0).map_err(fault)?;
        if keys.insert(key.to_owned(), pairs.len()).is_some() {
            return Err(fault("appears twice".into()));
        }
        pairs.push((key.to_owned(), value));
    }
    Ok((pairs, keys))
}

/// `general.alignment`: a `u32` power of two, [`DEFAULT_ALIGNMENT`] when absent.
fn alignment_of(metadata: &[(String, MetaValue)], keys: &HashMap<String, usize>) -> Result<u64, Fault> {
    const KEY: &str = "general.alignment";
    let Some(&i) = keys.get(KEY) else { return Ok(DEFAULT_ALIGNMENT) };
    match metadata[i].1 {
        MetaValue::U32(a) if a.is_power_of_two() => Ok(a as u64),
        MetaValue::U32(a) => Err(Fault::key(KEY, format!("{a} is not a non-zero power of two"))),
        ref other => Err(Fault::key(KEY, format!("expected u32, found {}", other.type_name()))),
    }
}

type Tensors = (Vec<TensorInfo>, HashMap<String, usize>);

fn read_tensor_infos(cur: &mut Cursor<'_>, count: u64) -> Result<Tensors, Fault> {
    let mut infos = Vec::with_capacity(capacity_for::<TensorInfo>(count, cur.remaining(), MIN_INFO_SIZE));
    let mut index = HashMap::new();
    for i in 0..count {
        let info = read_info(cur, i)?;
        if index.insert(info.name.clone(), infos.len()).is_some() {
            return Err(Fault::tensor(&info.name, "appears twice".into()));
        }
        infos.push(info);
    }
    Ok((infos, index))
}
