//! `qmatmul_split`: every segment is the `qmatmul` of its payload on `a` and its rows of the
//! concatenated weight-side operands ([`crate::ir::SplitMatMul`]), so the merged op computes
//! bit for bit what the sibling `qmatmul`s computed.

use super::{fused, Numerics, OutType};
use crate::interp::tensor::Tensor;
use crate::ir::split_types::{is_weight_side, scale_row_block};
use crate::ir::SplitMatMul;
use std::sync::Arc;

/// Runs each segment as its `qmatmul` (see the module doc); one result per segment.
pub(super) fn split_matmul(s: &SplitMatMul, args: Vec<Arc<Tensor>>, outs: &[OutType], num: Numerics) -> Result<Vec<Tensor>, String> {
    let first = s.first().ok_or("qmatmul_split has no segments")?;
    let block = scale_row_block(first.b_dequant.as_ref());
    if outs.len() != s.segments.len() {
        return Err(format!("{} results for {} segments", outs.len(), s.segments.len()));
    }
    let mut results = Vec::with_capacity(outs.len());
    for (i, (seg, (row, n, operand, count))) in s.segments.iter().zip(s.layout()).enumerate() {
        let mut operands = Vec::with_capacity(s.prefix() + count);
        for (j, t) in args.iter().take(s.prefix()).enumerate() {
            operands.push(match (is_weight_side(first, j), j) {
                (false, _) => t.clone(),
                (true, 1) => Arc::new(t.rows(to_usize(row)?, to_usize(n)?)?),
                (true, _) if first.b_scale && j + 1 == s.prefix() => Arc::new(t.rows(to_usize(row)?, to_usize(n)?)?),
                (true, _) => Arc::new(t.rows(to_usize(row / block)?, to_usize(n / block)?)?),
            });
        }
        operands.extend(args.get(operand..operand + count).ok_or("missing epilogue operand")?.iter().cloned());
        results.extend(fused::qmatmul(&seg.mm, operands.into_iter(), &outs[i..=i], num)?);
    }
    Ok(results)
}

fn to_usize(x: u64) -> Result<usize, String> {
    usize::try_from(x).map_err(|_| format!("{x} rows do not fit in memory"))
}
