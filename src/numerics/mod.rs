//! Low-precision number conversions: the single source of truth for what a value becomes when it is
//! stored in each [`DType`].
//!
//! Semantics follow quant-formats.md §1–2. Every conversion here is exact and deterministic:
//!
//! - **Rounding.** Floats round to nearest, ties to even (RNE), including subnormals. Integers round
//!   half to even ([`round_half_even`]: 2.5 → 2, 3.5 → 4, −0.5 → −0), then clamp to the type's range.
//! - **Saturation.** FP8 E4M3FN / E5M2 and FP4 E2M1 saturate (`cvt.rn.satfinite`): finite values
//!   beyond the largest finite value and ±inf become ±max (±448, ±57344, ±6). F16 and BF16 follow IEEE
//!   instead (overflow → ±inf), as `half` does.
//! - **NaN.** Propagates as NaN for F16/BF16/E4M3/E5M2 (E4M3 code `0x7F`/`0xFF` by sign), becomes
//!   `+6` for E2M1 (ONNX's rule: E2M1 has no NaN), `0xFF` for E8M0, and **0 for every integer type**
//!   (ONNX and TensorRT leave NaN → int unspecified; qfuse picks 0).
//! - **Signed zero.** −0.0 keeps its sign in every float format with a sign bit; integer results and
//!   E8M0 have no −0.
//! - **E8M0** has an explicit [`E8M0Rounding`]; the dtype-level [`cast`] uses [`E8M0Rounding::Up`]
//!   (CUDA's rule). Zero and negatives saturate to 2^-127, +inf to 2^127.
//!
//! Value-level emulation: the reference interpreter keeps every tensor as `f32`; [`cast`] returns the
//! `f32` a value becomes after a store as `to`, and [`encode_bits`]/[`decode_bits`] map such values to
//! and from the storage codes that plans pack. The encoders work on the `f32` bit pattern (no tables,
//! no `f64`), so [`cast_slice`] is cheap enough for the interpreter's bulk casts.
//!
//! The `float8`/`float4` crates are used only as test oracles (`tests/numerics.rs`): their conversion
//! functions are right, their constants are not (crates.md §3).

mod fp4;
mod fp8;
mod int;

pub use fp4::{e2m1_to_f32, e8m0_to_f32, f32_to_e2m1, f32_to_e8m0, E8M0Rounding, E2M1_MAX};
pub use fp8::{e4m3_to_f32, e5m2_to_f32, f32_to_e4m3, f32_to_e5m2, E4M3_MAX, E5M2_MAX};
pub use int::{int_range, round_half_even, saturate_int};

use crate::ir::DType;
use half::{bf16, f16};
use rayon::prelude::*;

/// Slices longer than this are cast in parallel by [`cast_slice`].
const PAR_THRESHOLD: usize = 1 << 16;
/// Elements per rayon task in [`cast_slice`].
const PAR_CHUNK: usize = 1 << 14;

/// Rounds `x` to the nearest IEEE binary16 value (RNE, via `half`): overflow → ±inf, NaN → NaN,
/// subnormals exact, −0 kept.
#[inline]
pub fn round_to_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// Rounds `x` to the nearest bfloat16 value (RNE, via `half`): overflow → ±inf, NaN → NaN, −0 kept.
#[inline]
pub fn round_to_bf16(x: f32) -> f32 {
    bf16::from_f32(x).to_f32()
}

/// The `f32` that `x` becomes when stored as `to` (see the module doc for the rules).
///
/// - `F32`: identity. `F16`/`BF16`: RNE, IEEE overflow to ±inf.
/// - `F8E4M3`/`F8E5M2`/`F4E2M1`: RNE, saturating to ±max (also ±inf); NaN → NaN (E2M1: → +6).
/// - `E8M0`: [`E8M0Rounding::Up`], saturating; NaN → NaN.
/// - Integer types: RNE, clamp to [`int_range`] (for `I32`/`I64`, the nearest `f32` inside the
///   range); NaN → 0; never −0.
#[inline]
pub fn cast(x: f32, to: DType) -> f32 {
    match to {
        DType::F32 => x,
        DType::F16 => round_to_f16(x),
        DType::BF16 => round_to_bf16(x),
        DType::F8E4M3 => e4m3_to_f32(f32_to_e4m3(x)),
        DType::F8E5M2 => e5m2_to_f32(f32_to_e5m2(x)),
        DType::F4E2M1 => e2m1_to_f32(f32_to_e2m1(x)),
        DType::E8M0 => e8m0_to_f32(f32_to_e8m0(x, E8M0Rounding::Up)),
        DType::I8 | DType::U8 | DType::I4 | DType::U4 | DType::I32 | DType::I64 => {
            let (lo, hi) = int_range(to).expect("integer dtype");
            saturate_int(x, lo, hi)
        }
    }
}

/// [`cast`] applied in place to every element; a no-op for `F32`, parallel (rayon) above 64 Ki
/// elements. Gives exactly the same values as the element-wise [`cast`].
pub fn cast_slice(xs: &mut [f32], to: DType) {
    match to {
        DType::F32 => {}
        DType::F16 => for_chunks(xs, round_chunk_to_f16),
        DType::BF16 => map_in_place(xs, round_to_bf16),
        DType::F8E4M3 => map_in_place(xs, |x| e4m3_to_f32(f32_to_e4m3(x))),
        DType::F8E5M2 => map_in_place(xs, |x| e5m2_to_f32(f32_to_e5m2(x))),
        DType::F4E2M1 => map_in_place(xs, |x| e2m1_to_f32(f32_to_e2m1(x))),
        DType::E8M0 => map_in_place(xs, |x| cast(x, DType::E8M0)),
        DType::I8 | DType::U8 | DType::I4 | DType::U4 | DType::I32 | DType::I64 => {
            let (lo, hi) = int_range(to).expect("integer dtype");
            map_in_place(xs, move |x| saturate_int(x, lo, hi))
        }
    }
}

/// `xs` mapped element by element into a new `Vec`, in order: in parallel (rayon) for slices
/// longer than 64 Ki elements, serially otherwise. The result does not depend on the split, so
/// callers keep bit-identical outputs (weight decoding, the interpreter's f64 widening).
pub fn map_slice<T: Sync, U: Send>(xs: &[T], f: impl Fn(&T) -> U + Sync + Send) -> Vec<U> {
    if xs.len() > PAR_THRESHOLD {
        xs.par_iter().with_min_len(PAR_CHUNK).map(f).collect()
    } else {
        xs.iter().map(f).collect()
    }
}

/// `xs` as consecutive groups of `N` (`<[T]>::as_chunks`, stable only after this crate's MSRV),
/// and the trailing partial group.
pub fn groups<T: bytemuck::Pod, const N: usize>(xs: &[T]) -> (&[[T; N]], &[T])
where
    [T; N]: bytemuck::Pod,
{
    let (whole, rest) = xs.split_at(xs.len() / N * N);
    (bytemuck::cast_slice(whole), rest)
}

/// Elements converted per step of the slice conversions below (a stack buffer of `f16`s).
const F16_STEP: usize = 1024;

/// [`round_to_f16`] of every element of `xs`, in steps through `half`'s slice conversions (eight
/// elements per F16C instruction where the CPU has it: the same RNE conversion, the same bits).
fn round_chunk_to_f16(xs: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    let mut buf = [f16::ZERO; F16_STEP];
    for c in xs.chunks_mut(F16_STEP) {
        let h = &mut buf[..c.len()];
        h.convert_from_f32_slice(c);
        h.convert_to_f32_slice(c);
    }
}

/// The f32 values of little-endian IEEE binary16 `bytes` (a trailing odd byte is ignored), in
/// parallel for long inputs, through `half`'s slice conversions (exact, as `f16::to_f32`).
pub fn f16_bytes_to_f32(bytes: &[u8]) -> Vec<f32> {
    use half::slice::HalfFloatSliceExt;
    let codes = groups::<u8, 2>(bytes).0;
    let mut out = vec![0f32; codes.len()];
    let convert = |(dst, src): (&mut [f32], &[[u8; 2]])| {
        let mut buf = [f16::ZERO; F16_STEP];
        for (d, s) in dst.chunks_mut(F16_STEP).zip(src.chunks(F16_STEP)) {
            let h = &mut buf[..s.len()];
            h.iter_mut().zip(s).for_each(|(h, b)| *h = f16::from_le_bytes(*b));
            h.convert_to_f32_slice(d);
        }
    };
    if codes.len() > PAR_THRESHOLD {
        out.par_chunks_mut(PAR_CHUNK).zip(codes.par_chunks(PAR_CHUNK)).for_each(convert);
    } else {
        convert((&mut out, codes));
    }
    out
}

/// `f` over consecutive chunks of `xs`, in parallel for long slices.
fn for_chunks(xs: &mut [f32], f: impl Fn(&mut [f32]) + Sync + Send) {
    if xs.len() > PAR_THRESHOLD {
        xs.par_chunks_mut(PAR_CHUNK).for_each(f);
    } else {
        f(xs);
    }
}

/// Replaces every element by `f(element)`, in parallel for long slices.
fn map_in_place(xs: &mut [f32], f: impl Fn(f32) -> f32 + Sync + Send + Copy) {
    for_chunks(xs, move |c| c.iter_mut().for_each(|v| *v = f(*v)));
}

/// The storage code of `x` in `dt`, right-aligned in a `u32` (4-bit types: the low nibble; 8-bit: the
/// low byte; 16-bit: the low half).
///
/// `x` is expected on the `dt` grid already (the output of [`cast`]); then this is the exact inverse
/// of [`decode_bits`] for every non-NaN code, including −0 and the ±inf codes of F16/BF16/E5M2.
/// Values off the grid are rounded as [`cast`] does. NaN gives the type's NaN code (E4M3 `0x7F`/`0xFF`,
/// E5M2 `0x7E`/`0x7F` with sign, E8M0 `0xFF`, E2M1 `+6` = `0x7`, ints `0`).
///
/// Integers are two's complement masked to the type's width. `I64` does not fit a `u32`: its code is
/// the low 32 bits, which [`decode_bits`] sign-extends, so only values in the `i32` range round-trip.
pub fn encode_bits(x: f32, dt: DType) -> u32 {
    match dt {
        DType::F32 => x.to_bits(),
        DType::F16 => f16::from_f32(x).to_bits() as u32,
        DType::BF16 => bf16::from_f32(x).to_bits() as u32,
        DType::F8E4M3 => f32_to_e4m3(x) as u32,
        DType::F8E5M2 if x.is_infinite() => 0x7C | ((x.is_sign_negative() as u32) << 7),
        DType::F8E5M2 => f32_to_e5m2(x) as u32,
        DType::F4E2M1 => f32_to_e2m1(x) as u32,
        DType::E8M0 => f32_to_e8m0(x, E8M0Rounding::Up) as u32,
        DType::I8 | DType::U8 | DType::I4 | DType::U4 | DType::I32 | DType::I64 => (cast(x, dt) as i64 as u64 & width_mask(dt)) as u32,
    }
}

/// The value of storage code `bits` in `dt`; bits above the type's width are ignored (so a packed
/// byte can be passed for a 4-bit type: only the low nibble is read). Signed integers are
/// sign-extended from their width (`I64` from 32 bits, see [`encode_bits`]).
pub fn decode_bits(bits: u32, dt: DType) -> f32 {
    match dt {
        DType::F32 => f32::from_bits(bits),
        DType::F16 => f16::from_bits(bits as u16).to_f32(),
        DType::BF16 => bf16::from_bits(bits as u16).to_f32(),
        DType::F8E4M3 => e4m3_to_f32(bits as u8),
        DType::F8E5M2 => e5m2_to_f32(bits as u8),
        DType::F4E2M1 => e2m1_to_f32(bits as u8),
        DType::E8M0 => e8m0_to_f32(bits as u8),
        DType::U8 | DType::U4 => (bits & width_mask(dt) as u32) as f32,
        DType::I8 | DType::I4 | DType::I32 | DType::I64 => {
            let unused = 32 - dt.bits().min(32);
            (((bits << unused) as i32) >> unused) as f32
        }
    }
}

/// All-ones mask of the storage width of `dt` (64-bit for `I64`).
fn width_mask(dt: DType) -> u64 {
    u64::MAX >> (64 - dt.bits())
}
