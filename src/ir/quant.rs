//! Quantization specs carried by `quantize` / `dequantize` and by quantized ops.
//!
//! Conventions (see quant-formats.md §2): `scale` is always the dequantization multiplier
//! (`x ≈ (q − z)·s`), rounding is round-half-to-even and conversion saturates to the storage
//! type's finite range.

use super::DType;
use crate::numerics::E8M0Rounding;
use serde::{Deserialize, Serialize};

/// Which elements share one scale.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Granularity {
    /// One scale for the whole tensor.
    PerTensor,
    /// One scale per index along `axis` (weights: the output-feature axis 0 of `[N, K]`).
    PerChannel {
        /// The axis the scales run along.
        axis: i64,
    },
    /// One scale per row: every index of all axes but the last (dynamic activations).
    PerToken,
    /// One scale per block; each entry is `(axis, block size)`. `[(−1, 128)]` is a 1×128 group,
    /// `[(0, 128), (1, 128)]` a 2-D 128×128 block. Ragged last blocks are allowed.
    Block {
        /// `(axis, size)` pairs, axes distinct.
        blocks: Vec<(i64, u64)>,
    },
}

/// Where the scale comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ScaleSource {
    /// A literal per-tensor scale.
    Literal(f32),
    /// An input value of the op (a weight constant or a dynamic scale computed upstream). For
    /// `quantize`/`dequantize` it is the op's second input.
    Input,
    /// Computed at run time by the quantize itself from each region's `amax / qmax`, rounded to
    /// `dtype` (f32, or f8e4m3 / e8m0 for block formats); the quantize then has a second output
    /// holding the scales.
    Dynamic {
        /// The scale's own storage type.
        dtype: DType,
        /// Rounding used when `dtype` is e8m0.
        rounding: E8M0Rounding,
    },
}

/// An integer zero point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ZeroPoint {
    /// The same zero point everywhere.
    Literal(i32),
    /// An input value of the op (third input of `quantize`/`dequantize`), shaped like the scale.
    Input,
}

/// A complete description of one quantization: storage type, granularity, scale and zero point.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantSpec {
    /// The low-precision storage type (`f8e4m3`, `i8`, `i4`, `f4e2m1`, ...).
    pub storage: DType,
    /// Which elements share a scale.
    pub granularity: Granularity,
    /// Where the scale comes from.
    pub scale: ScaleSource,
    /// Optional zero point (integer storage only).
    pub zero_point: Option<ZeroPoint>,
}

impl QuantSpec {
    /// A symmetric per-tensor spec with a literal scale.
    pub fn per_tensor(storage: DType, scale: f32) -> Self {
        QuantSpec { storage, granularity: Granularity::PerTensor, scale: ScaleSource::Literal(scale), zero_point: None }
    }

    /// The scale of a symmetric per-tensor spec with a literal scale (no zero point), else `None`.
    pub fn literal_per_tensor(&self) -> Option<f32> {
        match (&self.granularity, &self.scale, &self.zero_point) {
            (Granularity::PerTensor, ScaleSource::Literal(s), None) => Some(*s),
            _ => None,
        }
    }

    /// Number of extra inputs (after the data input) that this spec reads: scale, then zero point.
    pub fn extra_inputs(&self) -> usize {
        usize::from(self.scale == ScaleSource::Input) + usize::from(self.zero_point == Some(ZeroPoint::Input))
    }

    /// True when the scale is computed at run time by the quantize.
    pub fn is_dynamic(&self) -> bool {
        matches!(self.scale, ScaleSource::Dynamic { .. })
    }
}

impl Granularity {
    /// The shape of the scale tensor for data of shape `data`: `[]` per tensor, `[D_axis]` per
    /// channel, `data[..-1] ++ [1]` per token, and `⌈D_i / b_i⌉` on blocked axes (which must be
    /// fixed) with the other axes kept.
    pub fn scale_shape(&self, data: &super::Shape) -> Result<super::Shape, String> {
        use super::{normalize_axis, Dim};
        let rank = data.len();
        match self {
            Granularity::PerTensor => Ok(super::Shape::new()),
            Granularity::PerChannel { axis } => {
                let a = normalize_axis(*axis, rank).ok_or_else(|| format!("per-channel axis {axis} out of range for rank {rank}"))?;
                Ok(std::iter::once(data[a]).collect())
            }
            Granularity::PerToken => {
                if rank == 0 {
                    return Err("per-token quantization needs rank ≥ 1".into());
                }
                Ok(data[..rank - 1].iter().copied().chain(std::iter::once(Dim::Fixed(1))).collect())
            }
            Granularity::Block { blocks } => {
                let mut shape = data.clone();
                for &(axis, size) in blocks {
                    let a = normalize_axis(axis, rank).ok_or_else(|| format!("block axis {axis} out of range for rank {rank}"))?;
                    let Dim::Fixed(d) = data[a] else { return Err(format!("block axis {axis} must have a fixed extent")) };
                    if size == 0 {
                        return Err("block size 0".into());
                    }
                    shape[a] = Dim::Fixed(d.div_ceil(size));
                }
                Ok(shape)
            }
        }
    }
}
