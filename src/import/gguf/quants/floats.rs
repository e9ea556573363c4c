//! Unquantized element types: F32 (copied), F16 and BF16 (widened exactly).

use super::f16_at;

/// Little-endian f32 values, copied bit for bit.
pub(super) fn f32_run(data: &[u8], out: &mut [f32]) {
    for (bytes, value) in data.chunks_exact(4).zip(out) {
        *value = f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    }
}

/// Little-endian IEEE binary16 values.
pub(super) fn f16_run(data: &[u8], out: &mut [f32]) {
    for (bytes, value) in data.chunks_exact(2).zip(out) {
        *value = f16_at(bytes, 0);
    }
}

/// Little-endian bfloat16 values: the upper half of an f32 (NaN payloads kept, as gguf-py does).
pub(super) fn bf16_run(data: &[u8], out: &mut [f32]) {
    for (bytes, value) in data.chunks_exact(2).zip(out) {
        *value = f32::from_bits((u16::from_le_bytes([bytes[0], bytes[1]]) as u32) << 16);
    }
}
