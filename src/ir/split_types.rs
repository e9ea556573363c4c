//! The type rule of `qmatmul_split` ([`SplitMatMul`]) and the row arithmetic its interpreter
//! shares: each segment is typed as the `qmatmul` it computes, on `b`'s rows of that segment.

use super::{normalize_axis, shape_text, Dim, Granularity, QMatMul, QuantSpec, SplitMatMul, TensorType};

/// Weight rows sharing one row of `b_dequant`'s scale (and zero point): `R` of a `block(0:R, …)`
/// granularity, else 1 (per-channel and `block(1:G)` scales have one row per weight row).
pub fn scale_row_block(spec: Option<&QuantSpec>) -> u64 {
    match spec.map(|s| &s.granularity) {
        Some(Granularity::Block { blocks }) => {
            blocks.iter().find(|&&(axis, _)| normalize_axis(axis, 2) == Some(0)).map_or(1, |&(_, rows)| rows.max(1))
        }
        _ => 1,
    }
}

/// Whether operand `i` of the prefix is weight-side (sliced by rows per segment): `b`, then
/// `b_dequant`'s scale and zero point, then `b_scale` (last of the prefix when present).
pub fn is_weight_side(q: &QMatMul, i: usize) -> bool {
    let dequant = q.b_dequant.as_ref().map_or(0, QuantSpec::extra_inputs);
    let prefix = q.arity() - super::op::epilogue_operands(q);
    i == 1 || (2..2 + dequant).contains(&i) || (q.b_scale && i + 1 == prefix)
}

/// The result types of `qmatmul_split`: checks the shared fields and the weight's rows, then
/// types every segment as its `qmatmul` over its rows.
pub fn split_matmul(s: &SplitMatMul, inputs: &[&TensorType]) -> Result<Vec<TensorType>, String> {
    let first = check_shared(s)?;
    let b = inputs[1];
    let [Dim::Fixed(rows), k] = b.shape.as_slice() else {
        return Err(format!("qmatmul_split's b must be a fixed 2-D [N, K] weight, got {}", shape_text(&b.shape)));
    };
    if *rows != s.total_n() {
        return Err(format!("qmatmul_split's b has {rows} rows but its segments cover {}", s.total_n()));
    }
    let block = scale_row_block(first.b_dequant.as_ref());
    let mut out = Vec::with_capacity(s.segments.len());
    for (seg, (_, n, operand, count)) in s.segments.iter().zip(s.layout()) {
        if n == 0 || n % block != 0 {
            return Err(format!("a segment of {n} rows is not a whole number of the scale's {block}-row blocks"));
        }
        let sliced: Vec<TensorType> = (0..s.prefix()).map(|i| segment_type(first, inputs[i], i, n / block, n, *k)).collect();
        let mut operands: Vec<&TensorType> = sliced.iter().collect();
        operands.extend(&inputs[operand..operand + count]);
        out.push(super::infer::qmatmul(&seg.mm, &operands)?);
    }
    Ok(out)
}

/// The first segment's product, after checking that there are two segments or more and that
/// they agree on the shared fields.
fn check_shared(s: &SplitMatMul) -> Result<&QMatMul, String> {
    let Some(first) = s.first().filter(|_| s.segments.len() >= 2) else {
        return Err("qmatmul_split needs at least two segments".into());
    };
    if !first.transpose_b {
        return Err("qmatmul_split reads b as [N, K] (transpose_b)".into());
    }
    let shared = |q: &QMatMul| (q.transpose_b, q.a_scale, q.b_scale, q.b_dequant.clone());
    if s.segments.iter().any(|seg| shared(&seg.mm) != shared(first)) {
        return Err("qmatmul_split's segments must share transpose_b, a_scale, b_scale and b_dequant".into());
    }
    Ok(first)
}

/// Operand `i`'s type as segment rows see it: weight-side operands keep `rows` rows (`n` for `b`
/// and `b_scale`, `n / R` for `b_dequant`'s), the others stay whole.
pub(crate) fn segment_type(q: &QMatMul, t: &TensorType, i: usize, scale_rows: u64, n: u64, k: Dim) -> TensorType {
    if !is_weight_side(q, i) {
        return t.clone();
    }
    let mut shape = t.shape.clone();
    match i {
        1 => shape = vec![Dim::Fixed(n), k].into(),
        _ if q.b_scale && i + 1 == q.arity() - super::op::epilogue_operands(q) => shape = vec![Dim::Fixed(n)].into(),
        _ => {
            if let Some(d) = shape.first_mut() {
                *d = Dim::Fixed(scale_rows);
            }
        }
    }
    TensorType { dtype: t.dtype, shape }
}
