//! Shapes with symbolic dimensions and tensor types.

use super::{DType, SymId};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

/// A symbolic dimension declared by a graph: a name (`B`, `S`) and the largest value it may take.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Symbol {
    /// Name as written in the text format.
    pub name: String,
    /// Inclusive upper bound; plans size their buffers for it.
    pub max: u64,
}

/// One dimension of a shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Dim {
    /// A fixed extent.
    Fixed(u64),
    /// A symbolic extent, bound when the graph runs.
    Sym(SymId),
}

impl Dim {
    /// The fixed extent, if any.
    pub fn fixed(self) -> Option<u64> {
        match self {
            Dim::Fixed(n) => Some(n),
            Dim::Sym(_) => None,
        }
    }
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Sym(s) => write!(f, "{s}"),
        }
    }
}

/// A tensor shape; rank 0 is a scalar.
pub type Shape = SmallVec<[Dim; 4]>;

/// `[sym0,12,384]`: a shape for messages that have no symbol table at hand.
pub fn shape_text(shape: &[Dim]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(","))
}

/// The type of an IR value: element type and shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TensorType {
    /// Element type.
    pub dtype: DType,
    /// Dimensions, outermost first.
    pub shape: Shape,
}

impl TensorType {
    /// A tensor type from a dtype and dims.
    pub fn new(dtype: DType, shape: impl IntoIterator<Item = Dim>) -> Self {
        TensorType { dtype, shape: shape.into_iter().collect() }
    }

    /// A type whose dims are all fixed.
    pub fn fixed(dtype: DType, dims: &[u64]) -> Self {
        Self::new(dtype, dims.iter().map(|&d| Dim::Fixed(d)))
    }

    /// Rank (number of dims).
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// The same shape with another dtype.
    pub fn with_dtype(&self, dtype: DType) -> Self {
        TensorType { dtype, shape: self.shape.clone() }
    }

    /// Number of elements when every dim is fixed and their product fits a u64.
    pub fn fixed_numel(&self) -> Option<u64> {
        self.shape.iter().try_fold(1u64, |n, d| n.checked_mul(d.fixed()?))
    }

    /// Normalises a possibly negative axis; `None` when out of range.
    pub fn axis(&self, axis: i64) -> Option<usize> {
        normalize_axis(axis, self.rank())
    }
}

/// Maps a possibly negative axis onto `0..rank`.
pub fn normalize_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r).contains(&a).then_some(a as usize)
}
