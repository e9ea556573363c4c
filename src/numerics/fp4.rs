//! FP4 E2M1 and the E8M0 power-of-two scale: saturating encoders and exact decoders.

use super::fp8::MiniFloat;
use serde::{Deserialize, Serialize};

/// E2M1: bias 1, 1 mantissa bit, max 6 (`0x40C0_0000`).
const E2M1: MiniFloat = MiniFloat { man: 1, bias: 1, max_bits: 0x40C0_0000 };

/// Largest finite E2M1 value.
pub const E2M1_MAX: f32 = 6.0;

/// The 8 non-negative E2M1 values, by magnitude code.
const E2M1_VALUES: [f32; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];

/// Encodes `x` as FP4 E2M1 in the low nibble (bit 3 = sign), round to nearest even, saturating.
///
/// - `|x| > 6` and ±inf → ±6 (`0x7`/`0xF`).
/// - NaN → `+6` (`0x7`) whatever its sign: E2M1 has no NaN; this is ONNX's rule (and CUDA's).
/// - Ties go to the even code: 0.25 → 0, 0.75 → 1, 1.25 → 1, 1.75 → 2, 2.5 → 2, 3.5 → 4, 5 → 4.
/// - The sign is kept: `-0.0` and negatives that round to zero give `0x8`.
#[inline]
pub fn f32_to_e2m1(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7;
    }
    let b = x.to_bits();
    (((b >> 28) & 0x8) | E2M1.encode_abs(b & 0x7FFF_FFFF)) as u8
}

/// Decodes the low nibble of `b` as FP4 E2M1 (the high nibble is ignored): ±{0, 0.5, 1, 1.5, 2, 3,
/// 4, 6}; `0x8` → `-0.0`.
#[inline]
pub fn e2m1_to_f32(b: u8) -> f32 {
    let v = E2M1_VALUES[(b & 0x7) as usize];
    if b & 0x8 != 0 {
        -v
    } else {
        v
    }
}

/// How a value that is not a power of two becomes an E8M0 scale (ONNX Cast-25 `round_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum E8M0Rounding {
    /// `2^ceil(log2 x)`: the smallest power of two `>= x`. CUDA's `cudaRoundPosInf`, the `float4`
    /// crate, ONNX's default.
    Up,
    /// `2^floor(log2 x)`: the largest power of two `<= x` (the OCP MX scale rule).
    Down,
    /// The nearer of `2^floor(log2 x)` and `2^ceil(log2 x)` *by value* (so the midpoint is
    /// `1.5 · 2^k`, not `√2 · 2^k`); an exact tie `1.5 · 2^k` goes up to `2^(k+1)`.
    /// Example: 74.7 → 64, 96 → 128.
    Nearest,
}

/// Encodes `x` as an E8M0 scale `2^(code - 127)`, saturating.
///
/// - Powers of two in `[2^-127, 2^127]` are exact in every mode.
/// - `+0`, `-0`, negatives (including `-inf`) and everything that rounds below `2^-127` → `0x00`
///   (`2^-127`; E8M0 has no zero and no sign). `f32` subnormals are rounded like any other value.
/// - `+inf` and everything that rounds above `2^127` → `0xFE` (`2^127`).
/// - NaN → `0xFF`.
#[inline]
pub fn f32_to_e8m0(x: f32, mode: E8M0Rounding) -> u8 {
    if x.is_nan() {
        return 0xFF;
    }
    if x <= 0.0 {
        return 0x00;
    }
    let b = x.to_bits();
    let (e, m) = (b >> 23, b & 0x007F_FFFF);
    let code = if e == 0 { subnormal_e8m0(m, mode) } else { e + round_up_e8m0(m, mode) as u32 };
    code.min(0xFE) as u8
}

/// Whether a normal `f32` with mantissa field `m` rounds up to the next power of two.
#[inline]
fn round_up_e8m0(m: u32, mode: E8M0Rounding) -> bool {
    match mode {
        E8M0Rounding::Up => m != 0,
        E8M0Rounding::Down => false,
        E8M0Rounding::Nearest => m >= 0x0040_0000,
    }
}

/// E8M0 code of the positive `f32` subnormal `m · 2^-149`: only `(2^-127, 2^-126)` can give code 1.
#[inline]
fn subnormal_e8m0(m: u32, mode: E8M0Rounding) -> u32 {
    // 2^-127 is m = 2^22; relative to it, the mantissa is (m - 2^22) << 1.
    if m <= 0x0040_0000 {
        return 0;
    }
    round_up_e8m0((m - 0x0040_0000) << 1, mode) as u32
}

/// Decodes an E8M0 code: `2^(b - 127)` (code 0 is the `f32` subnormal `2^-127`); `0xFF` → NaN.
#[inline]
pub fn e8m0_to_f32(b: u8) -> f32 {
    match b {
        0xFF => f32::NAN,
        0x00 => f32::from_bits(0x0040_0000),
        _ => f32::from_bits((b as u32) << 23),
    }
}
