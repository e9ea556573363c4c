//! Dense row-major host tensors of the reference interpreter.
//!
//! Every float and quantized dtype (`f32`, `f16`, `bf16`, FP8, FP4, E8M0, `i8`/`u8`/`i4`/`u4`) is
//! held as the exact `f32` each element decodes to; `i32`/`i64` are held as `i64`.

use crate::ir::DType;
use crate::numerics;

/// Element storage: exact `f32` values for float and quantized dtypes, `i64` for `i32`/`i64`.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// Float, narrow-float and small-integer (quantized storage) dtypes.
    F32(Vec<f32>),
    /// `i32` and `i64`.
    I64(Vec<i64>),
}

impl TensorData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::I64(v) => v.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A host tensor: dtype, shape (outermost first) and row-major data.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Element type; decides which [`TensorData`] variant holds the data (see [`stored_as_i64`]).
    pub dtype: DType,
    /// Extents, outermost first; `[]` is a scalar.
    pub shape: Vec<usize>,
    /// Row-major elements.
    pub data: TensorData,
}

/// True for the dtypes whose elements are held as `i64` (`i32`, `i64`); all others are `f32`.
pub fn stored_as_i64(dt: DType) -> bool {
    matches!(dt, DType::I32 | DType::I64)
}

impl Tensor {
    /// Feeds the tensor's dtype, shape and elements (native byte order: a digest for caches the
    /// same executable reads back, not a file format) into `h`.
    pub fn hash_into(&self, h: &mut sha2::Sha256) {
        use sha2::Digest;
        h.update(format!("{} {:?}", self.dtype, self.shape));
        match &self.data {
            TensorData::F32(v) => h.update(bytemuck::cast_slice::<f32, u8>(v)),
            TensorData::I64(v) => h.update(bytemuck::cast_slice::<i64, u8>(v)),
        }
    }
}

impl Tensor {
    /// An `f32` tensor. The element count is checked when the tensor reaches the interpreter.
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        Tensor { dtype: DType::F32, shape, data: TensorData::F32(data) }
    }

    /// An `i64` tensor (token ids, masks).
    pub fn i64(shape: Vec<usize>, data: Vec<i64>) -> Tensor {
        Tensor { dtype: DType::I64, shape, data: TensorData::I64(data) }
    }

    /// A tensor of any `f32`-held dtype whose values are first rounded onto `dtype`'s grid with
    /// [`numerics::cast_slice`] (so `f16`, FP8 or `i8` tensors can be built from arbitrary floats).
    /// For `i32`/`i64` the values are rounded half-to-even and saturated, then held as `i64`.
    pub fn from_f32_as(dtype: DType, shape: Vec<usize>, mut data: Vec<f32>) -> Tensor {
        if stored_as_i64(dtype) {
            let ints = data.iter().map(|&x| f32_to_i64(x, dtype)).collect();
            return Tensor { dtype, shape, data: TensorData::I64(ints) };
        }
        numerics::cast_slice(&mut data, dtype);
        Tensor { dtype, shape, data: TensorData::F32(data) }
    }

    /// A tensor whose data variant and element count are checked against `dtype` and `shape`.
    pub fn new(dtype: DType, shape: Vec<usize>, data: TensorData) -> Result<Tensor, String> {
        let t = Tensor { dtype, shape, data };
        t.check()?;
        Ok(t)
    }

    /// Checks that the data variant matches the dtype and the element count matches the shape.
    pub fn check(&self) -> Result<(), String> {
        let want_i64 = stored_as_i64(self.dtype);
        let is_i64 = matches!(self.data, TensorData::I64(_));
        if want_i64 != is_i64 {
            let held = if is_i64 { "i64" } else { "f32" };
            return Err(format!("dtype {} is not held as {held} data", self.dtype));
        }
        let numel = shape_numel(&self.shape).ok_or("shape overflows usize")?;
        if numel != self.data.len() {
            return Err(format!("shape {:?} has {numel} elements but the data has {}", self.shape, self.data.len()));
        }
        Ok(())
    }

    /// The `f32` elements, for `f32`-held dtypes.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v),
            TensorData::I64(_) => None,
        }
    }

    /// The `i64` elements, for `i32`/`i64`.
    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            TensorData::I64(v) => Some(v),
            TensorData::F32(_) => None,
        }
    }

    /// Every element as `f32` (integers converted with `as`, i.e. RNE).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.data {
            TensorData::F32(v) => v.clone(),
            TensorData::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// Number of elements (the data length).
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// Rank.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Rows `[start, start + count)` along axis 0 (a rank-0 tensor has no rows).
    pub fn rows(&self, start: usize, count: usize) -> Result<Tensor, String> {
        let Some((&extent, rest)) = self.shape.split_first() else { return Err("a scalar has no rows".into()) };
        if start.checked_add(count).is_none_or(|end| end > extent) {
            return Err(format!("rows {start}..{} are out of range for {extent} rows", start.saturating_add(count)));
        }
        let row = shape_numel(rest).ok_or("row size overflows")?;
        let range = start * row..(start + count) * row;
        let data = match &self.data {
            TensorData::F32(v) => TensorData::F32(v.get(range).ok_or("data shorter than the shape")?.to_vec()),
            TensorData::I64(v) => TensorData::I64(v.get(range).ok_or("data shorter than the shape")?.to_vec()),
        };
        let shape = std::iter::once(count).chain(rest.iter().copied()).collect();
        Ok(Tensor { dtype: self.dtype, shape, data })
    }

    /// The concatenation of `parts` along axis 0: one dtype, equal extents after axis 0.
    pub fn concat_rows(parts: &[&Tensor]) -> Result<Tensor, String> {
        let first = parts.first().ok_or("nothing to concatenate")?;
        let fits = |t: &&Tensor| t.dtype == first.dtype && t.rank() >= 1 && t.shape[1..] == first.shape[1..];
        if first.rank() == 0 || !parts.iter().all(fits) {
            return Err("concatenated tensors differ in dtype or in extents after axis 0".into());
        }
        let data = match &first.data {
            TensorData::F32(_) => TensorData::F32(parts.iter().flat_map(|t| t.as_f32().unwrap_or_default().iter().copied()).collect()),
            TensorData::I64(_) => TensorData::I64(parts.iter().flat_map(|t| t.as_i64().unwrap_or_default().iter().copied()).collect()),
        };
        let mut shape = first.shape.clone();
        shape[0] = parts.iter().map(|t| t.shape[0]).sum();
        let t = Tensor { dtype: first.dtype, shape, data };
        t.check()?;
        Ok(t)
    }
}

impl Tensor {
    /// Rows `[2i·piece, (2i+1)·piece)` (the first half) and `[(2i+1)·piece, (2i+2)·piece)` (the
    /// second), concatenated in order: the two tensors [`Tensor::interleave_rows`] combined.
    pub fn deinterleave_rows(&self, piece: usize) -> Result<(Tensor, Tensor), String> {
        let rows = self.shape.first().copied().ok_or("a scalar has no rows")?;
        if piece == 0 || rows % (2 * piece) != 0 {
            return Err(format!("{rows} rows are not whole pairs of {piece}-row pieces"));
        }
        let half = |first: usize| -> Result<Tensor, String> {
            let parts = (0..rows / (2 * piece)).map(|i| self.rows((2 * i + first) * piece, piece)).collect::<Result<Vec<_>, _>>()?;
            Tensor::concat_rows(&parts.iter().collect::<Vec<_>>())
        };
        Ok((half(0)?, half(1)?))
    }

    /// `a` and `b` (equal shapes) with their rows interleaved in pieces of `piece` rows: `a`'s
    /// piece `i`, then `b`'s piece `i`, for every `i`.
    pub fn interleave_rows(a: &Tensor, b: &Tensor, piece: usize) -> Result<Tensor, String> {
        let rows = a.shape.first().copied().ok_or("a scalar has no rows")?;
        if a.shape != b.shape || piece == 0 || rows % piece != 0 {
            return Err(format!("{:?} and {:?} are not equal shapes of whole {piece}-row pieces", a.shape, b.shape));
        }
        let mut parts = Vec::with_capacity(2 * rows / piece);
        for i in 0..rows / piece {
            parts.push(a.rows(i * piece, piece)?);
            parts.push(b.rows(i * piece, piece)?);
        }
        Tensor::concat_rows(&parts.iter().collect::<Vec<_>>())
    }
}

/// Product of the extents, `None` on overflow.
pub fn shape_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Row-major strides of `shape` (in elements).
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Converts `x` to an integer of `dt` (`i32`/`i64`): RNE, saturating, NaN → 0 (via
/// [`numerics::cast`]).
pub fn f32_to_i64(x: f32, dt: DType) -> i64 {
    numerics::cast(x, dt) as i64
}
