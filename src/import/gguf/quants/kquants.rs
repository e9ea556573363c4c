//! The k-quant 256-value super-blocks (`block_q4_K`, `block_q5_K`, `block_q6_K` in
//! `ggml-common.h`). Scales are applied per sub-block as llama.cpp does: the f32 products
//! `d · scale` (and `dmin · min`) first, then one multiply (and one subtraction) per value.

use super::{each_block, f16_at};

/// Q4_K and Q5_K: byte offset of the 12 packed 6-bit scales and mins.
const SCALES: usize = 4;

/// The 6-bit scale and min of sub-block `j` (0..8) packed in `s` (`get_scale_min_k4`).
#[inline(always)]
fn scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// Per sub-block `(d · scale, dmin · min)` of a Q4_K / Q5_K super-block.
#[inline(always)]
fn sub_block_factors(block: &[u8]) -> [(f32, f32); 8] {
    let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
    let scales = &block[SCALES..SCALES + 12];
    std::array::from_fn(|j| {
        let (sc, m) = scale_min(j, scales);
        (d * sc as f32, dmin * m as f32)
    })
}

/// Q4_K, 144 bytes: `f16 d, dmin; u8 scales[12]; u8 qs[128]`. Sub-block `j` (32 values) takes
/// the low (`j` even) or high (`j` odd) nibbles of `qs[32·(j/2)..][..32]`; `y = (d·sc)·q − dmin·m`.
pub(super) fn q4_k_run(data: &[u8], out: &mut [f32]) {
    each_block::<144, 256>(data, out, |block, y| {
        let factors = sub_block_factors(block);
        let qs = &block[16..144];
        for (j, &(scale, min)) in factors.iter().enumerate() {
            let (qs, shift) = (&qs[32 * (j / 2)..][..32], 4 * (j % 2));
            for (value, &q) in y[32 * j..][..32].iter_mut().zip(qs) {
                *value = scale * ((q >> shift) & 0x0F) as f32 - min;
            }
        }
    });
}

/// Q5_K, 176 bytes: `f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]`: Q4_K plus a fifth bit,
/// bit `j` of `qh[l]` for value `l` of sub-block `j` (worth 16).
pub(super) fn q5_k_run(data: &[u8], out: &mut [f32]) {
    each_block::<176, 256>(data, out, |block, y| {
        let factors = sub_block_factors(block);
        let (qh, qs) = (&block[16..48], &block[48..176]);
        for (j, &(scale, min)) in factors.iter().enumerate() {
            let (qs, shift) = (&qs[32 * (j / 2)..][..32], 4 * (j % 2));
            for ((value, &q), &h) in y[32 * j..][..32].iter_mut().zip(qs).zip(qh) {
                let q = ((q >> shift) & 0x0F) | (((h >> j) & 1) << 4);
                *value = scale * q as f32 - min;
            }
        }
    });
}

/// Q6_K, 210 bytes: `u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d`. Each 128-value half `h` uses
/// `ql[64h..][..64]` and `qh[32h..][..32]`; its quarter `k` (32 values) takes the low (`k` < 2) or
/// high nibbles of `ql[32·(k%2)..]` and bits `2k, 2k+1` of `qh`; `y = (d·scale) · (q − 32)` with
/// one scale per 16 values.
pub(super) fn q6_k_run(data: &[u8], out: &mut [f32]) {
    each_block::<210, 256>(data, out, |block, y| {
        let d = f16_at(block, 208);
        let factors: [f32; 16] = std::array::from_fn(|i| d * (block[192 + i] as i8) as f32);
        for half in 0..2 {
            let (ql, qh) = (&block[64 * half..][..64], &block[128 + 32 * half..][..32]);
            for k in 0..4 {
                let (ql, shift) = (&ql[32 * (k % 2)..][..32], 4 * (k / 2));
                let first = 128 * half + 32 * k;
                for (l, (&low, &high)) in ql.iter().zip(qh).enumerate() {
                    let q = ((low >> shift) & 0x0F) | (((high >> (2 * k)) & 3) << 4);
                    y[first + l] = factors[(first + l) / 16] * (q as i32 - 32) as f32;
                }
            }
        }
    });
}
