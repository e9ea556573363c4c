//! Integer rounding: round-half-to-even and saturation to an integer range.
//!
//! Integer storage values are kept as the `f32` they decode to, so "casting to I8" means rounding to
//! the nearest integer (ties to even) and clamping to `[-128, 127]`, all in `f32`.

use crate::ir::DType;

/// 2^23: from here on every `f32` is an integer.
const TWO_POW_23: f32 = 8_388_608.0;

/// Rounds to the nearest integer, ties to even (IEEE `roundTiesToEven`).
///
/// - `2.5 → 2`, `3.5 → 4`, `-2.5 → -2`, `-0.5 → -0.0` (the sign of the input is kept, also for zero).
/// - NaN and ±inf are returned unchanged; every `|x| ≥ 2^23` is already an integer and is returned as is.
///
/// Uses the FPU's own rounding (`|x| + 2^23 - 2^23`), so it needs no libm call.
#[inline]
pub fn round_half_even(x: f32) -> f32 {
    let a = x.abs();
    if a < TWO_POW_23 {
        ((a + TWO_POW_23) - TWO_POW_23).copysign(x)
    } else {
        x
    }
}

/// Rounds `x` half-to-even, then clamps it to `[lo, hi]` (integers exactly representable in `f32`).
///
/// - NaN becomes `0.0`: ONNX and TensorRT leave NaN → int unspecified; qfuse's choice is 0.
/// - ±inf and out-of-range values saturate to `hi` / `lo`.
/// - The result is never `-0.0` (integers have no negative zero).
#[inline]
pub fn saturate_int(x: f32, lo: f32, hi: f32) -> f32 {
    if x.is_nan() {
        return 0.0;
    }
    // `+ 0.0` turns a `-0.0` into `+0.0` and leaves every other value alone.
    round_half_even(x).clamp(lo, hi) + 0.0
}

/// The `[lo, hi]` range an integer dtype saturates to, as `f32`; `None` for float dtypes.
///
/// For `I32`/`I64` the bounds are the `f32` values closest to the type's range *inside* it
/// (`hi = 2^31 - 128` for `I32`, `2^63 - 2^39` for `I64`; `lo` = `-2^31` / `-2^63` exactly), so that
/// every value [`saturate_int`] produces is a value the type can hold.
#[inline]
pub fn int_range(dt: DType) -> Option<(f32, f32)> {
    match dt {
        DType::I8 => Some((-128.0, 127.0)),
        DType::U8 => Some((0.0, 255.0)),
        DType::I4 => Some((-8.0, 7.0)),
        DType::U4 => Some((0.0, 15.0)),
        DType::I32 => Some((I32_MIN, I32_MAX_F32)),
        DType::I64 => Some((I64_MIN, I64_MAX_F32)),
        _ => None,
    }
}

/// `-2^31`.
const I32_MIN: f32 = -2_147_483_648.0;
/// `2^31 - 128`, the largest `f32` that fits an `i32`.
const I32_MAX_F32: f32 = 2_147_483_520.0;
/// `-2^63`.
const I64_MIN: f32 = -9_223_372_036_854_775_808.0;
/// `2^63 - 2^39`, the largest `f32` that fits an `i64`.
const I64_MAX_F32: f32 = 9_223_371_487_098_961_920.0;
