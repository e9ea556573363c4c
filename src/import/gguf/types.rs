//! ggml tensor types: ids as stored in a GGUF tensor info, and each type's block geometry.

use std::fmt;

/// A ggml storage type (`ggml_type` in `ggml.h`). Only the types qfuse reads have their own
/// variant; any other id is kept as [`GgmlType::Other`] so that errors can name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    BF16,
    /// 32 values: `f16 d; u8 qs[16]`, `y = d·(q − 8)`.
    Q4_0,
    /// 32 values: `f16 d, m; u8 qs[16]`, `y = d·q + m`.
    Q4_1,
    /// 32 values: `f16 d; i8 qs[32]`, `y = d·q`.
    Q8_0,
    /// 256-value super-block of 8×32 with 6-bit scales and mins.
    Q4K,
    /// Q4_K plus a fifth bit per value.
    Q5K,
    /// 256-value super-block of 16×16 with 8-bit scales, 6-bit values.
    Q6K,
    /// Any other id (named in errors, never dequantized).
    Other(u32),
}

impl GgmlType {
    /// The type of a stored `ggml_type` id.
    pub fn from_id(id: u32) -> GgmlType {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            30 => GgmlType::BF16,
            other => GgmlType::Other(other),
        }
    }

    /// The stored id.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::BF16 => 30,
            GgmlType::Other(id) => id,
        }
    }

    /// `(values per block, bytes per block)`, or `None` for a type qfuse cannot read.
    pub fn block(self) -> Option<(usize, usize)> {
        Some(match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q4K => (256, 144),
            GgmlType::Q5K => (256, 176),
            GgmlType::Q6K => (256, 210),
            GgmlType::Other(_) => return None,
        })
    }

    /// Bytes that `n` values occupy, or `None` when the type is unreadable, `n` is not a whole
    /// number of blocks, or the size overflows.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let (per, bytes) = self.block()?;
        if n % per as u64 != 0 {
            return None;
        }
        (n / per as u64).checked_mul(bytes as u64)
    }

    /// llama.cpp's name (`Q4_K`, `BF16`, `type 23` for others).
    pub fn name(self) -> String {
        match self {
            GgmlType::F32 => "F32".into(),
            GgmlType::F16 => "F16".into(),
            GgmlType::BF16 => "BF16".into(),
            GgmlType::Q4_0 => "Q4_0".into(),
            GgmlType::Q4_1 => "Q4_1".into(),
            GgmlType::Q8_0 => "Q8_0".into(),
            GgmlType::Q4K => "Q4_K".into(),
            GgmlType::Q5K => "Q5_K".into(),
            GgmlType::Q6K => "Q6_K".into(),
            GgmlType::Other(id) => format!("ggml type {id}"),
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}
