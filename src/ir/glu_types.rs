//! The type rule of `qmatmul_glu` ([`GluMatMul`]) and the row arithmetic its interpreter and
//! `merge-gate-up` share: the up projection is typed as the `qmatmul` it computes on its rows,
//! and the gate as its `qmatmul` with the up result as its `up_operand`-th epilogue operand.

use super::split_types::{scale_row_block, segment_type};
use super::{shape_text, DType, Dim, GluMatMul, QMatMul, TensorType};

/// The dtype of a `qmatmul`'s float result: its last epilogue step's, else its accumulator's
/// (an output quantize aside).
pub fn float_result(q: &QMatMul) -> DType {
    q.epilogue.last().map_or(q.acc_dtype, |s| s.dtype)
}

/// Rows of prefix operand `i` per interleaved piece of `tile` weight rows: `tile` for `b` and
/// `b_scale`, `tile / R` for `b_dequant`'s scale and zero point (`R` its row block).
pub fn piece_rows(q: &QMatMul, i: usize, tile: u64) -> u64 {
    let prefix = q.arity() - super::op::epilogue_operands(q);
    if i == 1 || (q.b_scale && i + 1 == prefix) {
        tile
    } else {
        tile / scale_row_block(q.b_dequant.as_ref())
    }
}

/// The result type of `qmatmul_glu`: checks the shared fields, the interleaving and the up
/// projection, then types the gate with the up result as its operand.
pub fn glu_matmul(s: &GluMatMul, inputs: &[&TensorType]) -> Result<Vec<TensorType>, String> {
    check_shared(s)?;
    let b = inputs[1];
    let [Dim::Fixed(rows), k] = b.shape.as_slice() else {
        return Err(format!("qmatmul_glu's b must be a fixed 2-D [2·N, K] weight, got {}", shape_text(&b.shape)));
    };
    let block = scale_row_block(s.gate.b_dequant.as_ref());
    let n = rows / 2;
    if s.tile == 0 || rows % 2 != 0 || n % s.tile != 0 || s.tile % block != 0 {
        return Err(format!(
            "qmatmul_glu's b has {rows} rows: not two halves of whole {}-row pieces of whole {block}-row scale blocks",
            s.tile
        ));
    }
    let sliced: Vec<TensorType> = (0..s.prefix()).map(|i| segment_type(&s.gate, inputs[i], i, n / block, n, *k)).collect();
    let ((g0, gn), (u0, un)) = s.operand_ranges();
    let mut up_operands: Vec<&TensorType> = sliced.iter().collect();
    up_operands.extend(&inputs[u0..u0 + un]);
    let up = super::infer::qmatmul(&s.up, &up_operands)?;
    let mut gate_operands: Vec<&TensorType> = sliced.iter().collect();
    let own = &inputs[g0..g0 + gn];
    gate_operands.extend(&own[..s.up_operand]);
    gate_operands.push(&up);
    gate_operands.extend(&own[s.up_operand..]);
    Ok(vec![super::infer::qmatmul(&s.gate, &gate_operands)?])
}

/// Both products read `b` as `[N, K]` with the same scale operands and dequantization; the up
/// projection stores a float; the gate has the operand-reading step `up_operand`.
fn check_shared(s: &GluMatMul) -> Result<(), String> {
    let shared = |q: &QMatMul| (q.transpose_b, q.a_scale, q.b_scale, q.b_dequant.clone());
    if !s.gate.transpose_b || shared(&s.gate) != shared(&s.up) {
        return Err("qmatmul_glu's gate and up must share transpose_b (set), a_scale, b_scale and b_dequant".into());
    }
    if s.up.output.is_some() {
        return Err("qmatmul_glu's up projection has an output quantize; the gate reads a float".into());
    }
    if s.up_operand >= super::op::epilogue_operands(&s.gate) {
        return Err(format!("qmatmul_glu's gate has no operand-reading epilogue step {} for the up result", s.up_operand));
    }
    Ok(())
}
