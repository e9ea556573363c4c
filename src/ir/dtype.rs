//! Element types of IR values.
//!
//! Every low-precision type here is *storage*: the reference interpreter keeps its values as the exact
//! `f32` they decode to (every code of every type below is representable in `f32`), and each op rounds
//! its result to its output dtype with the conversions in [`crate::numerics`].

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// An element type. The text spelling (`Display`/`FromStr`) is the one used by the IR text format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16 (1/8/7).
    BF16,
    /// FP8 E4M3FN: max 448, no infinity, NaN = 0x7F/0xFF.
    F8E4M3,
    /// FP8 E5M2: max 57344, IEEE-like infinities and NaNs.
    F8E5M2,
    /// Signed 8-bit integer, [-128, 127].
    I8,
    /// Unsigned 8-bit integer, [0, 255].
    U8,
    /// Signed 4-bit integer, [-8, 7].
    I4,
    /// Unsigned 4-bit integer, [0, 15].
    U4,
    /// FP4 E2M1: ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}.
    F4E2M1,
    /// E8M0 power-of-two scale: 2^(e-127), no zero, no sign, NaN = 0xFF.
    E8M0,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer (token ids, masks).
    I64,
}

impl DType {
    /// All dtypes, in declaration order.
    pub const ALL: [DType; 13] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::F8E4M3,
        DType::F8E5M2,
        DType::I8,
        DType::U8,
        DType::I4,
        DType::U4,
        DType::F4E2M1,
        DType::E8M0,
        DType::I32,
        DType::I64,
    ];

    /// The text-format name.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F8E4M3 => "f8e4m3",
            DType::F8E5M2 => "f8e5m2",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::I4 => "i4",
            DType::U4 => "u4",
            DType::F4E2M1 => "f4e2m1",
            DType::E8M0 => "e8m0",
            DType::I32 => "i32",
            DType::I64 => "i64",
        }
    }

    /// Storage size in bits.
    pub fn bits(self) -> u32 {
        match self {
            DType::F32 | DType::I32 => 32,
            DType::F16 | DType::BF16 => 16,
            DType::F8E4M3 | DType::F8E5M2 | DType::I8 | DType::U8 | DType::E8M0 => 8,
            DType::I4 | DType::U4 | DType::F4E2M1 => 4,
            DType::I64 => 64,
        }
    }

    /// True for the types that carry real-valued activations and weights at full or half precision
    /// (the "expressed" types a dequantize produces).
    pub fn is_wide_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// True for floating-point storage types, wide or narrow.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16 | DType::F8E4M3 | DType::F8E5M2 | DType::F4E2M1 | DType::E8M0)
    }

    /// True for the integer types.
    pub fn is_int(self) -> bool {
        !self.is_float()
    }

    /// True for the types a `quantize` may produce.
    pub fn is_quantized_storage(self) -> bool {
        matches!(self, DType::F8E4M3 | DType::F8E5M2 | DType::I8 | DType::U8 | DType::I4 | DType::U4 | DType::F4E2M1)
    }

    /// The largest finite value (`qmax` in quant-formats.md), as f64.
    pub fn max_finite(self) -> f64 {
        match self {
            DType::F32 => f32::MAX as f64,
            DType::F16 => 65504.0,
            DType::BF16 => 3.3895313892515355e38,
            DType::F8E4M3 => 448.0,
            DType::F8E5M2 => 57344.0,
            DType::I8 => 127.0,
            DType::U8 => 255.0,
            DType::I4 => 7.0,
            DType::U4 => 15.0,
            DType::F4E2M1 => 6.0,
            DType::E8M0 => 1.7014118346046923e38,
            DType::I32 => i32::MAX as f64,
            DType::I64 => i64::MAX as f64,
        }
    }

    /// The smallest value (most negative) the type holds, as f64.
    pub fn min_value(self) -> f64 {
        match self {
            DType::I8 => -128.0,
            DType::U8 | DType::U4 => 0.0,
            DType::I4 => -8.0,
            DType::E8M0 => 5.877471754111438e-39,
            DType::I32 => i32::MIN as f64,
            DType::I64 => i64::MIN as f64,
            other => -other.max_finite(),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DType::ALL.iter().copied().find(|d| d.name() == s).ok_or_else(|| format!("unknown dtype `{s}`"))
    }
}
