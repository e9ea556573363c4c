//! [`HostTensor`]: a dense row-major tensor in host memory, in the storage format of an IR dtype.
//!
//! The runtime moves bytes, it never converts them: an input is copied to the GPU as it is and an
//! output comes back as the kernels stored it. The decoders here ([`HostTensor::to_f32_vec`]) exist
//! for callers and tests; they are self-contained (no dependency on the compiler's `numerics`) so
//! that the runtime-only build stays small.

use half::{bf16, f16};

/// Storage size in bits of an IR dtype name (`f32`, `f16`, `bf16`, `f8e4m3`, `f8e5m2`, `i8`, `u8`,
/// `i4`, `u4`, `f4e2m1`, `e8m0`, `i32`, `i64`); `None` for a name the runtime does not know.
pub fn dtype_bits(dtype: &str) -> Option<u32> {
    Some(match dtype {
        "f32" | "i32" => 32,
        "f16" | "bf16" => 16,
        "f8e4m3" | "f8e5m2" | "i8" | "u8" | "e8m0" => 8,
        "i4" | "u4" | "f4e2m1" => 4,
        "i64" => 64,
        _ => return None,
    })
}

/// Bytes of a dense tensor of `dtype` with `numel` elements (4-bit types pack two per byte, low
/// nibble first); `None` for an unknown dtype or on overflow.
pub fn dense_bytes(dtype: &str, numel: u64) -> Option<u64> {
    let bits = u64::from(dtype_bits(dtype)?);
    Some(numel.checked_mul(bits)?.div_ceil(8))
}

/// The number of elements of `shape` (1 for a scalar); `None` on overflow.
pub fn numel(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d))
}

/// A dense, row-major tensor in host memory: `data` holds the elements of `shape` in the storage
/// format of `dtype`, little-endian.
///
/// Constructors never fail; whether `data` fits `dtype` and `shape` is checked where it matters
/// ([`HostTensor::check`], and by the runtime when binding an input, with an error naming it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostTensor {
    /// IR dtype name: `i64`, `f16`, `f32`, `f8e4m3`, ...
    pub dtype: String,
    /// Dims, outermost first.
    pub shape: Vec<u64>,
    /// The elements, little-endian, dense row-major.
    pub data: Vec<u8>,
}

impl HostTensor {
    /// A tensor from raw storage bytes.
    pub fn from_bytes(dtype: impl Into<String>, shape: Vec<u64>, data: Vec<u8>) -> Self {
        Self { dtype: dtype.into(), shape, data }
    }

    /// A zero-filled tensor (all-zero bits); empty data for an unknown dtype.
    pub fn zeros(dtype: impl Into<String>, shape: Vec<u64>) -> Self {
        let dtype = dtype.into();
        let bytes = numel(&shape).and_then(|n| dense_bytes(&dtype, n)).and_then(|b| usize::try_from(b).ok()).unwrap_or(0);
        Self { dtype, shape, data: vec![0; bytes] }
    }

    /// An `i64` tensor (token ids, masks).
    pub fn from_i64(shape: Vec<u64>, values: &[i64]) -> Self {
        Self { dtype: "i64".into(), shape, data: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }

    /// An `i32` tensor.
    pub fn from_i32(shape: Vec<u64>, values: &[i32]) -> Self {
        Self { dtype: "i32".into(), shape, data: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }

    /// An `f32` tensor.
    pub fn from_f32(shape: Vec<u64>, values: &[f32]) -> Self {
        Self { dtype: "f32".into(), shape, data: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }

    /// An `f16` tensor.
    pub fn from_f16(shape: Vec<u64>, values: &[f16]) -> Self {
        Self { dtype: "f16".into(), shape, data: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }

    /// A `bf16` tensor.
    pub fn from_bf16(shape: Vec<u64>, values: &[bf16]) -> Self {
        Self { dtype: "bf16".into(), shape, data: values.iter().flat_map(|v| v.to_le_bytes()).collect() }
    }

    /// `f32` values stored as `dtype`, for the wide float types: `f32`, `f16` and `bf16` (IEEE
    /// round to nearest even, as `half` does); `None` for any other dtype.
    pub fn from_f32_as(dtype: &str, shape: Vec<u64>, values: &[f32]) -> Option<Self> {
        Some(match dtype {
            "f32" => Self::from_f32(shape, values),
            "f16" => Self::from_f16(shape, &values.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>()),
            "bf16" => Self::from_bf16(shape, &values.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>()),
            _ => return None,
        })
    }

    /// The number of elements of the shape; `None` on overflow.
    pub fn numel(&self) -> Option<u64> {
        numel(&self.shape)
    }

    /// Whether `data` holds exactly the bytes `dtype` and `shape` need; the message says why not.
    pub fn check(&self) -> Result<(), String> {
        let Some(bits) = dtype_bits(&self.dtype) else {
            return Err(format!("unknown dtype `{}`", self.dtype));
        };
        let need = self.numel().and_then(|n| dense_bytes(&self.dtype, n));
        match need {
            None => Err(format!("shape {:?} has more elements than fit in memory", self.shape)),
            Some(need) if need != self.data.len() as u64 => {
                Err(format!("{} bytes of data, but {:?} {} elements of {bits} bits need {need}", self.data.len(), self.shape, self.dtype))
            }
            Some(_) => Ok(()),
        }
    }

    /// Every element decoded to `f32`: exact for every dtype except `i32`/`i64` beyond 2^24 (which
    /// round) and NaN payloads. Floats keep their sign, infinities and NaN; E4M3 (`f8e4m3`, the
    /// "fn" variant) has no infinity and NaN at `0x7F`/`0xFF`; E5M2 is IEEE-like; `f4e2m1`, `i4`
    /// and `u4` unpack two elements per byte, low nibble first; `e8m0` is `2^(e-127)`, NaN at
    /// `0xFF`. Errors if `data` does not fit `dtype` and `shape`.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>, String> {
        self.check()?;
        let n = self.numel().and_then(|n| usize::try_from(n).ok()).ok_or("too many elements")?;
        let d = &self.data;
        let le2 = |c: &[u8]| u16::from_le_bytes([c[0], c[1]]);
        Ok(match self.dtype.as_str() {
            "f32" => d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            "f16" => d.chunks_exact(2).map(|c| f16::from_bits(le2(c)).to_f32()).collect(),
            "bf16" => d.chunks_exact(2).map(|c| bf16::from_bits(le2(c)).to_f32()).collect(),
            "f8e4m3" => d.iter().map(|&b| e4m3_to_f32(b)).collect(),
            "f8e5m2" => d.iter().map(|&b| e5m2_to_f32(b)).collect(),
            "e8m0" => d.iter().map(|&b| e8m0_to_f32(b)).collect(),
            "i8" => d.iter().map(|&b| f32::from(b as i8)).collect(),
            "u8" => d.iter().map(|&b| f32::from(b)).collect(),
            "i32" => d.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32).collect(),
            "i64" => d.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32).collect(),
            "f4e2m1" | "i4" | "u4" => {
                let nibble = |i: usize| (d[i / 2] >> (4 * (i % 2))) & 0xF;
                let f: fn(u8) -> f32 = match self.dtype.as_str() {
                    "f4e2m1" => e2m1_to_f32,
                    "i4" => |x: u8| f32::from(((x << 4) as i8) >> 4),
                    _ => |x: u8| f32::from(x),
                };
                (0..n).map(|i| f(nibble(i))).collect()
            }
            other => return Err(format!("unknown dtype `{other}`")),
        })
    }

    /// Every element as `i64`, for the integer dtypes (`i64`, `i32`, `i8`, `u8`, `i4`, `u4`).
    pub fn to_i64_vec(&self) -> Result<Vec<i64>, String> {
        self.check()?;
        let d = &self.data;
        Ok(match self.dtype.as_str() {
            "i64" => d.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect(),
            "i32" => d.chunks_exact(4).map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect(),
            "i8" => d.iter().map(|&b| i64::from(b as i8)).collect(),
            "u8" => d.iter().map(|&b| i64::from(b)).collect(),
            "i4" | "u4" => self.to_f32_vec()?.into_iter().map(|v| v as i64).collect(),
            other => return Err(format!("`{other}` is not an integer dtype")),
        })
    }
}

/// FP8 E4M3FN (1 sign, 4 exponent bits with bias 7, 3 mantissa bits; no infinity; NaN = S.1111.111).
pub fn e4m3_to_f32(code: u8) -> f32 {
    let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
    let (e, m) = (i32::from((code >> 3) & 0xF), f32::from(code & 0x7));
    if e == 0xF && m == 7.0 {
        return f32::NAN;
    }
    let mag = if e == 0 { m * 2f32.powi(-9) } else { (1.0 + m / 8.0) * 2f32.powi(e - 7) };
    sign * mag
}

/// FP8 E5M2 (1 sign, 5 exponent bits with bias 15, 2 mantissa bits; IEEE infinities and NaNs).
pub fn e5m2_to_f32(code: u8) -> f32 {
    // E5M2 is the top byte of an IEEE binary16: exact through f16.
    f16::from_bits(u16::from(code) << 8).to_f32()
}

/// FP4 E2M1 nibble (1 sign, 2 exponent bits with bias 1, 1 mantissa bit): ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}.
pub fn e2m1_to_f32(nibble: u8) -> f32 {
    const MAG: [f32; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
    let mag = MAG[usize::from(nibble & 0x7)];
    if nibble & 0x8 != 0 {
        -mag
    } else {
        mag
    }
}

/// E8M0 scale: `2^(e-127)`, NaN at `0xFF` (exact: `2^-127` is an f32 subnormal).
pub fn e8m0_to_f32(code: u8) -> f32 {
    match code {
        0xFF => f32::NAN,
        0 => f32::from_bits(1 << 22),
        e => f32::from_bits(u32::from(e) << 23),
    }
}
