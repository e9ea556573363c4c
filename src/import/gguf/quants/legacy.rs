//! The legacy 32-value blocks (`block_q4_0`, `block_q4_1`, `block_q8_0` in `ggml-common.h`).
//!
//! 4-bit blocks store value `j` in the low nibble of `qs[j]` and value `j + 16` in its high nibble.

use super::{each_block, f16_at};

/// Q4_0, 18 bytes: `f16 d; u8 qs[16]`; `y = d · (q − 8)`.
pub(super) fn q4_0_run(data: &[u8], out: &mut [f32]) {
    each_block::<18, 32>(data, out, |block, y| {
        let d = f16_at(block, 0);
        for (j, &q) in block[2..].iter().enumerate() {
            y[j] = d * ((q & 0x0F) as i32 - 8) as f32;
            y[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
        }
    });
}

/// Q4_1, 20 bytes: `f16 d, m; u8 qs[16]`; `y = d · q + m`.
pub(super) fn q4_1_run(data: &[u8], out: &mut [f32]) {
    each_block::<20, 32>(data, out, |block, y| {
        let (d, m) = (f16_at(block, 0), f16_at(block, 2));
        for (j, &q) in block[4..].iter().enumerate() {
            y[j] = d * (q & 0x0F) as f32 + m;
            y[j + 16] = d * (q >> 4) as f32 + m;
        }
    });
}

/// Q8_0, 34 bytes: `f16 d; i8 qs[32]`; `y = q · d`.
pub(super) fn q8_0_run(data: &[u8], out: &mut [f32]) {
    each_block::<34, 32>(data, out, |block, y| {
        let d = f16_at(block, 0);
        for (value, &q) in y.iter_mut().zip(&block[2..]) {
            *value = (q as i8) as f32 * d;
        }
    });
}
