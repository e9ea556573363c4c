//! Dequantization of GGUF tensor data: F32, F16, BF16, the legacy 32-value blocks (Q4_0, Q4_1,
//! Q8_0) and the 256-value k-quant super-blocks (Q4_K, Q5_K, Q6_K).
//!
//! Contract: the values come back in storage order and are bit-identical to llama.cpp's reference
//! `dequantize_row_*` (`ggml-quants.c`) and to gguf-py's `gguf.quants.dequantize`. Every product
//! and sum is one f32 operation in the same order as those references (for example Q4_K computes
//! `d·sc` and `dmin·m` first, then `(d·sc)·q − dmin·m`); Rust never contracts them into FMAs.
//! `tests/gguf_quants.rs` checks this bit for bit against fixtures written by gguf-py
//! (`scripts/gguf_quant_fixtures.py`).
//!
//! Work is split over rayon tasks of whole blocks; each block is decoded independently.

mod floats;
mod kquants;
mod legacy;

use super::GgmlType;
use rayon::prelude::*;

/// Output values per rayon task (rounded down to whole blocks, at least one block).
const VALUES_PER_TASK: usize = 1 << 16;

/// Decodes a run of whole blocks: `data` holds `k` blocks, `out` their `k · values_per_block` values.
type RunDecoder = fn(data: &[u8], out: &mut [f32]);

/// Dequantizes `n` values of type `ty` stored in `data` (exactly `ty.bytes_for(n)` bytes).
///
/// Errors, before anything is allocated, when `ty` is not dequantizable, `n` is not a whole
/// number of blocks, or `data.len()` does not match `n` and the block geometry.
pub fn dequantize(ty: GgmlType, data: &[u8], n: usize) -> Result<Vec<f32>, String> {
    check_geometry(ty, data.len(), n)?;
    let mut out = vec![0f32; n];
    dequantize_into(ty, data, &mut out)?;
    Ok(out)
}

/// [`dequantize`] into a caller's buffer: `out.len()` is the number of values.
pub fn dequantize_into(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<(), String> {
    let (values, bytes) = check_geometry(ty, data.len(), out.len())?;
    let decode = run_decoder(ty).ok_or_else(|| unsupported(ty))?;
    let blocks_per_task = (VALUES_PER_TASK / values).max(1);
    out.par_chunks_mut(blocks_per_task * values).zip(data.par_chunks(blocks_per_task * bytes)).for_each(|(out, data)| decode(data, out));
    Ok(())
}

/// The decoder of a type's blocks, or `None` for a type this module cannot dequantize.
fn run_decoder(ty: GgmlType) -> Option<RunDecoder> {
    Some(match ty {
        GgmlType::F32 => floats::f32_run,
        GgmlType::F16 => floats::f16_run,
        GgmlType::BF16 => floats::bf16_run,
        GgmlType::Q4_0 => legacy::q4_0_run,
        GgmlType::Q4_1 => legacy::q4_1_run,
        GgmlType::Q8_0 => legacy::q8_0_run,
        GgmlType::Q4K => kquants::q4_k_run,
        GgmlType::Q5K => kquants::q5_k_run,
        GgmlType::Q6K => kquants::q6_k_run,
        GgmlType::Other(_) => return None,
    })
}

/// `(values, bytes)` per block after checking that `n` values of `ty` fill exactly `len` bytes.
fn check_geometry(ty: GgmlType, len: usize, n: usize) -> Result<(usize, usize), String> {
    let (values, bytes) = ty.block().filter(|_| run_decoder(ty).is_some()).ok_or_else(|| unsupported(ty))?;
    if n % values != 0 {
        return Err(format!("{ty}: {n} values are not a whole number of {values}-value blocks"));
    }
    let blocks = n / values;
    match blocks.checked_mul(bytes) {
        Some(need) if need == len => Ok((values, bytes)),
        Some(need) => Err(format!("{ty}: {n} values ({blocks} blocks of {bytes} bytes) need {need} bytes, got {len}")),
        None => Err(format!("{ty}: {n} values overflow the byte size")),
    }
}

fn unsupported(ty: GgmlType) -> String {
    format!("{ty}: dequantization of this tensor type is not supported")
}

/// Applies `block` to each `BYTES`-byte block of `data` and its `VALUES` outputs in `out`.
#[inline(always)]
fn each_block<const BYTES: usize, const VALUES: usize>(data: &[u8], out: &mut [f32], block: impl Fn(&[u8; BYTES], &mut [f32; VALUES])) {
    for (bytes, values) in data.chunks_exact(BYTES).zip(out.chunks_exact_mut(VALUES)) {
        // chunks_exact yields slices of exactly BYTES / VALUES elements: the conversions cannot fail.
        if let (Ok(bytes), Ok(values)) = (bytes.try_into(), values.try_into()) {
            block(bytes, values);
        }
    }
}

/// The little-endian IEEE binary16 at `bytes[at..at + 2]`, widened exactly to f32.
#[inline(always)]
fn f16_at(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([bytes[at], bytes[at + 1]])).to_f32()
}
