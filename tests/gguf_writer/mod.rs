//! A test-only GGUF writer: builds files in memory, including ones no honest writer would produce
//! (duplicate keys, misaligned or overlapping offsets, lying counts), for the reader's tests.

#![allow(dead_code)]

/// Appends little-endian values to a byte buffer.
#[derive(Default)]
pub struct Raw(pub Vec<u8>);

impl Raw {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A GGUF string: `u64` length then the bytes.
    pub fn str(&mut self, s: &[u8]) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s);
        self
    }
}

/// A metadata value: the type id and its encoded bytes (without the type id).
#[derive(Clone)]
pub struct Val {
    pub ty: u32,
    pub bytes: Vec<u8>,
}

impl Val {
    pub fn u32(v: u32) -> Val {
        Val { ty: 4, bytes: v.to_le_bytes().to_vec() }
    }
    pub fn i32(v: i32) -> Val {
        Val { ty: 5, bytes: v.to_le_bytes().to_vec() }
    }
    pub fn u64(v: u64) -> Val {
        Val { ty: 10, bytes: v.to_le_bytes().to_vec() }
    }
    pub fn f32(v: f32) -> Val {
        Val { ty: 6, bytes: v.to_le_bytes().to_vec() }
    }
    pub fn bool(v: bool) -> Val {
        Val { ty: 7, bytes: vec![v as u8] }
    }
    pub fn str(s: &str) -> Val {
        let mut raw = Raw::default();
        raw.str(s.as_bytes());
        Val { ty: 8, bytes: raw.0 }
    }
    /// An array of `items`, all of type `elem`.
    pub fn array(elem: u32, items: &[Val]) -> Val {
        let mut raw = Raw::default();
        raw.u32(elem).u64(items.len() as u64);
        items.iter().for_each(|v| raw.0.extend_from_slice(&v.bytes));
        Val { ty: 9, bytes: raw.0 }
    }
    pub fn strs(items: &[&str]) -> Val {
        Val::array(8, &items.iter().map(|s| Val::str(s)).collect::<Vec<_>>())
    }
    /// Raw bytes under type id `ty`.
    pub fn raw(ty: u32, bytes: Vec<u8>) -> Val {
        Val { ty, bytes }
    }
}

/// A tensor to write: name, dims (innermost first), ggml type id, data, and optionally a forced
/// offset (else the next aligned one).
#[derive(Clone)]
pub struct Tensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: u32,
    pub data: Vec<u8>,
    pub offset: Option<u64>,
}

impl Tensor {
    /// An F32 tensor of `dims` filled with 0, 1, 2, …
    pub fn f32(name: &str, dims: &[u64]) -> Tensor {
        let n: u64 = dims.iter().product();
        let data = (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect();
        Tensor { name: name.into(), dims: dims.to_vec(), ty: 0, data, offset: None }
    }
    /// A tensor of type `ty` with `bytes` zero bytes of data.
    pub fn zeros(name: &str, dims: &[u64], ty: u32, bytes: usize) -> Tensor {
        Tensor { name: name.into(), dims: dims.to_vec(), ty, data: vec![0; bytes], offset: None }
    }
    pub fn at(mut self, offset: u64) -> Tensor {
        self.offset = Some(offset);
        self
    }
}

/// A GGUF file under construction.
pub struct Gguf {
    pub version: u32,
    pub alignment: u64,
    pub kvs: Vec<(String, Val)>,
    pub tensors: Vec<Tensor>,
}

impl Default for Gguf {
    fn default() -> Self {
        Gguf { version: 3, alignment: 32, kvs: Vec::new(), tensors: Vec::new() }
    }
}

impl Gguf {
    pub fn kv(mut self, key: &str, v: Val) -> Self {
        if key == "general.alignment" && v.ty == 4 {
            let a = u32::from_le_bytes(v.bytes[..4].try_into().unwrap()) as u64;
            if a.is_power_of_two() {
                self.alignment = a;
            }
        }
        self.kvs.push((key.into(), v));
        self
    }

    pub fn tensor(mut self, t: Tensor) -> Self {
        self.tensors.push(t);
        self
    }

    /// A small valid file: three keys and two F32 tensors.
    pub fn sample() -> Self {
        Gguf::default()
            .kv("general.architecture", Val::str("llama"))
            .kv("llama.block_count", Val::u32(2))
            .kv("general.languages", Val::strs(&["en", "fr"]))
            .tensor(Tensor::f32("a", &[4, 2]))
            .tensor(Tensor::f32("b", &[3]))
    }

    fn header(&self) -> Raw {
        let mut raw = Raw::default();
        raw.0.extend_from_slice(b"GGUF");
        raw.u32(self.version).u64(self.tensors.len() as u64).u64(self.kvs.len() as u64);
        for (key, v) in &self.kvs {
            raw.str(key.as_bytes()).u32(v.ty);
            raw.0.extend_from_slice(&v.bytes);
        }
        raw
    }

    /// The file's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        let mut raw = self.header();
        let offsets = self.offsets();
        for (t, &offset) in self.tensors.iter().zip(&offsets) {
            raw.str(t.name.as_bytes()).u32(t.dims.len() as u32);
            t.dims.iter().for_each(|&d| {
                raw.u64(d);
            });
            raw.u32(t.ty).u64(offset);
        }
        let mut out = raw.0;
        pad(&mut out, self.alignment);
        let start = out.len();
        for (t, &offset) in self.tensors.iter().zip(&offsets) {
            // Data of a tensor placed far beyond the others (a hostile offset) is not written.
            let Some(at) = usize::try_from(offset).ok().and_then(|o| o.checked_add(start)).filter(|&at| at <= out.len() + 4096) else {
                continue;
            };
            if out.len() < at {
                out.resize(at, 0);
            }
            let end = at + t.data.len();
            if out.len() < end {
                out.resize(end, 0);
            }
            out[at..end].copy_from_slice(&t.data);
        }
        out
    }

    fn offsets(&self) -> Vec<u64> {
        let mut next = 0u64;
        self.tensors
            .iter()
            .map(|t| {
                let offset = t.offset.unwrap_or(next);
                next = offset.saturating_add(t.data.len() as u64).div_ceil(self.alignment).saturating_mul(self.alignment);
                offset
            })
            .collect()
    }
}

fn pad(out: &mut Vec<u8>, alignment: u64) {
    let len = (out.len() as u64).div_ceil(alignment) * alignment;
    out.resize(len as usize, 0);
}
