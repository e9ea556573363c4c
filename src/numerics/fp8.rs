//! FP8 E4M3FN and E5M2: saturating RNE encoders and exact decoders, by bit manipulation on the `f32`.
//!
//! The shared encoder [`MiniFloat::encode_abs`] also serves FP4 E2M1 (see `fp4.rs`): every small
//! binary float here is "sign + exponent + mantissa with subnormals", and saturating means clamping
//! `|x|` to the largest finite value before rounding (`cast_RNE_satfinite`, quant-formats.md §2.2).

/// A small binary float format with subnormals, for encoding by bit manipulation.
#[derive(Clone, Copy, Debug)]
pub(super) struct MiniFloat {
    /// Explicit mantissa bits.
    pub man: u32,
    /// Exponent bias.
    pub bias: u32,
    /// `f32` bit pattern of the largest finite magnitude: every `|x|` above it encodes as it.
    pub max_bits: u32,
}

/// E4M3FN: bias 7, 3 mantissa bits, max 448 (`0x43E0_0000`).
pub(super) const E4M3: MiniFloat = MiniFloat { man: 3, bias: 7, max_bits: 0x43E0_0000 };
/// E5M2: bias 15, 2 mantissa bits, max 57344 (`0x4760_0000`).
pub(super) const E5M2: MiniFloat = MiniFloat { man: 2, bias: 15, max_bits: 0x4760_0000 };

/// Largest finite E4M3FN value.
pub const E4M3_MAX: f32 = 448.0;
/// Largest finite E5M2 value.
pub const E5M2_MAX: f32 = 57344.0;

impl MiniFloat {
    /// `f32` bits of the smallest normal magnitude, `2^(1 - bias)`.
    const fn min_normal_bits(self) -> u32 {
        (128 - self.bias) << 23
    }

    /// The magnitude code (no sign bit) of the `f32` whose absolute bits are `a` (`a` must not be a
    /// NaN): clamp to the largest finite value, then round to nearest, ties to even. `f32` subnormals
    /// and everything at or below half the smallest subnormal give code 0.
    #[inline]
    pub(super) fn encode_abs(self, a: u32) -> u32 {
        let a = a.min(self.max_bits);
        if a >= self.min_normal_bits() {
            // Re-bias the exponent in place; the carry of a round-up moves into the exponent field.
            rne_shr(a - ((127 - self.bias) << 23), 23 - self.man)
        } else {
            // |x| = sig · 2^(e - 150); the code is |x| / 2^(1 - bias - man) = sig >> shift.
            let shift = 151 - self.bias - self.man - (a >> 23);
            if shift > 24 {
                0
            } else {
                rne_shr((a & 0x007F_FFFF) | 0x0080_0000, shift)
            }
        }
    }

    /// The value of magnitude code `mag` (exponent and mantissa fields only; no inf/NaN handling).
    const fn decode_abs(self, mag: u32) -> f32 {
        let e = mag >> self.man;
        let m = mag & ((1 << self.man) - 1);
        if e == 0 {
            m as f32 * pow2(1 - self.bias as i32 - self.man as i32)
        } else {
            f32::from_bits(((e + 127 - self.bias) << 23) | (m << (23 - self.man)))
        }
    }
}

/// `v >> s` rounded to nearest, ties to even (`1 <= s <= 24`, `v < 2^31`).
#[inline]
fn rne_shr(v: u32, s: u32) -> u32 {
    let lsb = (v >> s) & 1;
    (v + (1 << (s - 1)) - 1 + lsb) >> s
}

/// `2^k` for a normal-range exponent `k`.
const fn pow2(k: i32) -> f32 {
    f32::from_bits(((k + 127) as u32) << 23)
}

/// `f32` NaN with the given sign bit (0 or 1).
const fn nan_with_sign(sign: u32) -> f32 {
    f32::from_bits(0x7FC0_0000 | (sign << 31))
}

/// Applies the sign bit of an 8-bit code to a magnitude.
const fn with_sign8(v: f32, code: u32) -> f32 {
    f32::from_bits(v.to_bits() | ((code >> 7) << 31))
}

/// The sign bit of `x`, moved to bit 7.
#[inline]
fn sign8(bits: u32) -> u32 {
    (bits >> 24) & 0x80
}

/// Encodes `x` as FP8 E4M3FN, round to nearest even, saturating (`cvt.rn.satfinite.e4m3x2.f32`).
///
/// - Finite `|x| >= 448` and ±inf → ±448 (`0x7E`/`0xFE`); 464, the midpoint between 448 and the NaN
///   code, also gives 448.
/// - NaN → `0x7F`, or `0xFF` when the NaN's sign bit is set.
/// - Subnormals are rounded exactly (smallest 2^-9); `|x| <= 2^-10` (a tie with 0) gives ±0.
/// - The sign is kept: `-0.0 → 0x80`, and negative values that round to zero give `0x80`.
#[inline]
pub fn f32_to_e4m3(x: f32) -> u8 {
    let b = x.to_bits();
    let sign = sign8(b);
    if x.is_nan() {
        return (sign | 0x7F) as u8;
    }
    (sign | E4M3.encode_abs(b & 0x7FFF_FFFF)) as u8
}

/// Decodes an FP8 E4M3FN code exactly; `0x7F`/`0xFF` → NaN (with that sign), `0x80` → `-0.0`.
#[inline]
pub fn e4m3_to_f32(b: u8) -> f32 {
    E4M3_TABLE[b as usize]
}

/// Encodes `x` as FP8 E5M2, round to nearest even, saturating (`cvt.rn.satfinite.e5m2x2.f32`).
///
/// - Finite `|x| >= 57344` and ±inf → ±57344 (`0x7B`/`0xFB`); the infinity codes are never produced.
/// - NaN → `0x7E` or `0x7F` (bit 0 = bit 21 of the `f32` NaN payload, as the CUDA conversion through
///   `f64` gives), with the NaN's sign bit (`0xFE`/`0xFF`).
/// - Subnormals are rounded exactly (smallest 2^-16); `|x| <= 2^-17` gives ±0.
/// - The sign is kept: `-0.0 → 0x80`.
#[inline]
pub fn f32_to_e5m2(x: f32) -> u8 {
    let b = x.to_bits();
    let sign = sign8(b);
    if x.is_nan() {
        return (sign | 0x7E | ((b >> 21) & 1)) as u8;
    }
    (sign | E5M2.encode_abs(b & 0x7FFF_FFFF)) as u8
}

/// Decodes an FP8 E5M2 code exactly: `0x7C`/`0xFC` → ±inf, `0x7D..=0x7F`/`0xFD..=0xFF` → NaN (with
/// that sign), `0x80` → `-0.0`.
#[inline]
pub fn e5m2_to_f32(b: u8) -> f32 {
    E5M2_TABLE[b as usize]
}

/// All 256 E4M3FN values, by code.
static E4M3_TABLE: [f32; 256] = build_table(E4M3, 0x7F, false);
/// All 256 E5M2 values, by code.
static E5M2_TABLE: [f32; 256] = build_table(E5M2, 0x7C, true);

/// Decode table of an 8-bit format whose magnitude codes from `first_special` up are not finite:
/// `first_special` itself is infinity when `has_inf`, every other one is NaN.
const fn build_table(f: MiniFloat, first_special: u32, has_inf: bool) -> [f32; 256] {
    let mut t = [0.0f32; 256];
    let mut code = 0u32;
    while code < 256 {
        let mag = code & 0x7F;
        let v = if mag < first_special {
            f.decode_abs(mag)
        } else if mag == first_special && has_inf {
            f32::INFINITY
        } else {
            nan_with_sign(0)
        };
        t[code as usize] = with_sign8(v, code);
        code += 1;
    }
    t
}
