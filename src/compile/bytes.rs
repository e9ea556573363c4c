//! Tensors ↔ the raw little-endian bytes kernels read: the one place that defines a dtype's
//! storage layout (16-bit floats as their bit patterns, 8-bit codes as bytes, 4-bit codes packed two
//! per byte, low nibble first, `i64`/`i32`/`f32` little-endian).

use crate::interp::{Tensor, TensorData};
use crate::ir::DType;
use crate::numerics::{cast, decode_bits, encode_bits, groups, map_slice};
use rayon::prelude::*;

/// Storage bytes of `t` in its dtype.
pub fn encode(t: &Tensor) -> Vec<u8> {
    let dt = t.dtype;
    if let Some(ints) = t.as_i64() {
        return match dt {
            DType::I32 => ints.iter().flat_map(|&v| (v as i32).to_le_bytes()).collect(),
            _ => ints.iter().flat_map(|&v| v.to_le_bytes()).collect(),
        };
    }
    let xs = t.to_f32_vec();
    match dt.bits() {
        32 => map_slice(&xs, |x| x.to_bits().to_le_bytes()).into_flattened(),
        16 => map_slice(&xs, |&x| bits16(x, dt).to_le_bytes()).into_flattened(),
        8 => map_slice(&xs, |&x| encode_bits(x, dt) as u8),
        4 => {
            let nibble = |x: f32| (encode_bits(x, dt) & 0xf) as u8;
            let (pairs, last) = groups::<f32, 2>(&xs);
            let mut bytes = map_slice(pairs, |&[lo, hi]| nibble(lo) | nibble(hi) << 4);
            bytes.extend(last.iter().map(|&x| nibble(x)));
            bytes
        }
        bits => unreachable!("no {bits}-bit dtype"),
    }
}

/// True when `bytes` ([`encode`] of `t`) decode back to `t` bit for bit, checked element by
/// element without building the decoded tensor.
pub fn round_trips(t: &Tensor, bytes: &[u8]) -> bool {
    let dt = t.dtype;
    if t.check().is_err() {
        return false;
    }
    if let Some(ints) = t.as_i64() {
        return dt != DType::I32 || ints.iter().all(|&v| i32::try_from(v).is_ok());
    }
    let Some(xs) = t.as_f32() else { return false };
    let same = |table: &[f32], code: usize, x: f32| table[code].to_bits() == x.to_bits();
    let table = |bits: u32| -> Vec<f32> { (0..1u32 << bits).map(|c| cast(decode_bits(c, dt), dt)).collect() };
    match dt.bits() {
        32 => true,
        16 => {
            let t = table(16);
            let codes = groups::<u8, 2>(bytes).0;
            codes.len() == xs.len()
                && codes.par_iter().zip(xs).with_min_len(1 << 14).all(|(c, &x)| same(&t, usize::from(u16::from_le_bytes(*c)), x))
        }
        8 => {
            let t = table(8);
            bytes.len() == xs.len() && bytes.par_iter().zip(xs).with_min_len(1 << 14).all(|(&b, &x)| same(&t, usize::from(b), x))
        }
        4 => {
            let t = table(4);
            xs.iter().enumerate().all(|(i, &x)| same(&t, usize::from((bytes[i / 2] >> (4 * (i % 2))) & 0xf), x))
        }
        _ => false,
    }
}

/// `encode_bits(x, dt)` of a 16-bit float: the `half` conversion when it is exact (`x` on the
/// grid, the one code of that value), else `encode_bits` itself (NaN payloads, values off the grid).
fn bits16(x: f32, dt: DType) -> u16 {
    let fast = match dt {
        DType::F16 => Some(half::f16::from_f32(x)).filter(|h| h.to_f32().to_bits() == x.to_bits()).map(half::f16::to_bits),
        DType::BF16 => Some(half::bf16::from_f32(x)).filter(|h| h.to_f32().to_bits() == x.to_bits()).map(half::bf16::to_bits),
        _ => None,
    };
    fast.unwrap_or_else(|| encode_bits(x, dt) as u16)
}

/// The tensor of `dtype` and `shape` stored in `bytes`; errors if the length does not match
/// (also when the shape's byte size overflows, as a hostile plan's may).
pub fn decode(dtype: DType, shape: Vec<usize>, bytes: &[u8]) -> Result<Tensor, String> {
    let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    let Some((numel, want)) = numel.and_then(|n| Some((n, n.checked_mul(dtype.bits() as usize)?.div_ceil(8)))) else {
        return Err(format!("{dtype}{shape:?} has more bytes than fit in memory"));
    };
    if bytes.len() != want {
        return Err(format!("{dtype}{shape:?} needs {want} bytes, got {}", bytes.len()));
    }
    if matches!(dtype, DType::I64 | DType::I32) {
        let ints = if dtype == DType::I64 {
            bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()
        } else {
            bytes.chunks_exact(4).map(|c| i64::from(i32::from_le_bytes(c.try_into().expect("4 bytes")))).collect()
        };
        return Ok(Tensor::i64(shape, ints));
    }
    // Each code's value as `Tensor::from_f32_as` holds it, looked up in a table of every code
    // (filled by the same `decode_bits` and `cast`) instead of decoded element by element.
    let table = |bits: u32| -> Vec<f32> { (0..1u32 << bits).map(|c| cast(decode_bits(c, dtype), dtype)).collect() };
    let xs: Vec<f32> = match dtype.bits() {
        32 => {
            return Ok(Tensor::from_f32_as(
                dtype,
                shape,
                bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect(),
            ))
        }
        16 if numel < 1 << 16 => {
            bytes.chunks_exact(2).map(|c| cast(decode_bits(u32::from(u16::from_le_bytes([c[0], c[1]])), dtype), dtype)).collect()
        }
        16 => {
            let t = table(16);
            bytes.chunks_exact(2).map(|c| t[usize::from(u16::from_le_bytes([c[0], c[1]]))]).collect()
        }
        8 => {
            let t = table(8);
            bytes.iter().map(|&b| t[usize::from(b)]).collect()
        }
        4 => {
            let t = table(4);
            bytes.iter().flat_map(|&b| [t[usize::from(b & 0xf)], t[usize::from(b >> 4)]]).take(numel).collect()
        }
        bits => return Err(format!("no {bits}-bit dtype")),
    };
    Ok(Tensor { dtype, shape, data: TensorData::F32(xs) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_storage_width() {
        let cases: Vec<(DType, Vec<f32>)> = vec![
            (DType::F32, vec![1.5, -0.0, 3.25e-9]),
            (DType::F16, vec![1.0, -65504.0, 0.000061035156]),
            (DType::BF16, vec![1.0, -3.0e38, 0.5]),
            (DType::F8E4M3, vec![448.0, -0.015625, 0.0]),
            (DType::I8, vec![-128.0, 127.0, 3.0]),
            (DType::F4E2M1, vec![6.0, -0.5, 1.5]),
        ];
        for (dt, xs) in cases {
            let t = Tensor::from_f32_as(dt, vec![xs.len()], xs);
            let back = decode(dt, t.shape.clone(), &encode(&t)).unwrap();
            assert_eq!(back, t, "{dt}");
        }
        let ids = Tensor::i64(vec![2], vec![-7, 30521]);
        assert_eq!(encode(&ids).len(), 16);
        assert_eq!(decode(DType::I64, vec![2], &encode(&ids)).unwrap(), ids);
    }

    #[test]
    fn round_trips_only_values_on_the_grid() {
        for (dt, xs) in [(DType::F16, vec![1.0f32, -0.0, 6.0e-8]), (DType::BF16, vec![-3.0e38, 0.5]), (DType::F8E4M3, vec![448.0, -0.0])] {
            let t = Tensor::from_f32_as(dt, vec![xs.len()], xs);
            assert!(round_trips(&t, &encode(&t)), "{dt}");
        }
        let off = Tensor { dtype: DType::F16, shape: vec![1], data: TensorData::F32(vec![0.1]) };
        assert!(!round_trips(&off, &encode(&off)), "0.1 is not an f16 value");
        let wide = Tensor { dtype: DType::I32, shape: vec![1], data: TensorData::I64(vec![1 << 40]) };
        assert!(!round_trips(&wide, &encode(&wide)), "an i32 tensor holding 2^40");
    }

    #[test]
    fn f16_bits_are_little_endian() {
        let t = Tensor::from_f32_as(DType::F16, vec![1], vec![1.0]);
        assert_eq!(encode(&t), vec![0x00, 0x3c]);
        assert!(decode(DType::F16, vec![2], &[0, 0x3c]).unwrap_err().contains("needs 4 bytes"));
    }

    #[test]
    fn overflowing_shapes_are_errors() {
        let huge = vec![1 << 40, 1 << 40];
        assert!(decode(DType::F32, huge, &[]).unwrap_err().contains("more bytes than fit"));
        assert!(decode(DType::F16, vec![usize::MAX / 2 + 1], &[]).unwrap_err().contains("more bytes than fit"));
    }
}
