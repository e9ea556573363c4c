//! The magnitudes that the relative float tolerance of a GEMM's result applies to. A GEMM whose
//! epilogue adds an operand (a residual, a bias) rounds its sum to the output dtype *before* the
//! add: a GPU sum one rounding step away from the interpreter's moves the result by a step of the
//! sum's magnitude, however small the result is after the add cancels it. So the bound of such an
//! element is relative to `|ref| + Σ |added operand|`, the magnitude of the terms combined in its
//! last roundings, not to `|ref|` alone.

use std::collections::HashMap;

use crate::interp::Tensor;
use crate::ir::{epilogue_operands, EpilogueOp, EpilogueStep, Graph, Node, Op, ValueId};

/// For every wide-float result of a `qmatmul`, `qmatmul_split` or `qmatmul_glu` whose epilogue
/// adds operands: per element `|ref| + Σ |operand|` (an operand of the result's shape element by
/// element, a `[N]` vector per column), from the interpreter's `values`.
pub fn sum_magnitudes(graph: &Graph, values: &HashMap<ValueId, Tensor>) -> HashMap<ValueId, Tensor> {
    let mut out = HashMap::new();
    for (_, node) in graph.nodes.iter() {
        for (result, steps, operands) in epilogues(node) {
            let added: Vec<&Tensor> = operand_steps(steps, &operands)
                .filter(|(step, _)| step.op == EpilogueOp::Add)
                .filter_map(|(_, v)| v.and_then(|v| values.get(&v)))
                .collect();
            let Some(reference) = values.get(&result).filter(|r| r.dtype.is_wide_float()) else { continue };
            if let Some(m) = magnitude(reference, &added) {
                out.insert(result, m);
            }
        }
    }
    out
}

/// One product of a GEMM node: its result, its epilogue steps, and the inputs its operand-reading
/// steps read in order (`None` for the GLU gate's step that reads the up projection's result).
type Product<'a> = (ValueId, &'a [EpilogueStep], Vec<Option<ValueId>>);

/// The [`Product`]s of a GEMM node (none for other nodes).
fn epilogues(node: &Node) -> Vec<Product<'_>> {
    let inputs = |first: usize, count: usize| node.inputs.iter().skip(first).take(count).map(|&v| Some(v)).collect::<Vec<_>>();
    match &node.op {
        Op::QMatMul(q) => {
            let k = epilogue_operands(q);
            vec![(node.outputs[0], q.epilogue.as_slice(), inputs(q.arity() - k, k))]
        }
        Op::SplitMatMul(s) => s
            .layout()
            .into_iter()
            .zip(&s.segments)
            .zip(&node.outputs)
            .map(|(((_, _, first, k), seg), &out)| (out, seg.mm.epilogue.as_slice(), inputs(first, k)))
            .collect(),
        Op::GluMatMul(glu) => {
            let ((first, count), _) = glu.operand_ranges();
            let mut own = inputs(first, count).into_iter();
            let gate = (0..epilogue_operands(&glu.gate)).map(|j| if j == glu.up_operand { None } else { own.next().flatten() }).collect();
            vec![(node.outputs[0], glu.gate.epilogue.as_slice(), gate)]
        }
        _ => vec![],
    }
}

/// The operand-reading steps of `steps` with the operand each reads.
fn operand_steps<'a>(
    steps: &'a [EpilogueStep],
    operands: &'a [Option<ValueId>],
) -> impl Iterator<Item = (&'a EpilogueStep, Option<ValueId>)> {
    steps.iter().filter(|s| s.op.takes_operand()).zip(operands.iter().copied())
}

/// `|ref| + Σ |added|` per element, each added operand of `reference`'s size or of its last
/// extent (a per-column vector); `None` when nothing is added.
fn magnitude(reference: &Tensor, added: &[&Tensor]) -> Option<Tensor> {
    if added.is_empty() {
        return None;
    }
    let mut m: Vec<f32> = reference.to_f32_vec().iter().map(|x| x.abs()).collect();
    let columns = reference.shape.last().copied().unwrap_or(1).max(1);
    for t in added {
        let v = t.to_f32_vec();
        if v.len() == m.len() {
            m.iter_mut().zip(&v).for_each(|(a, b)| *a += b.abs());
        } else if v.len() == columns {
            m.iter_mut().enumerate().for_each(|(i, a)| *a += v[i % columns].abs());
        }
    }
    Some(Tensor::f32(reference.shape.clone(), m))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `qmatmul` whose epilogue adds a `[N]` bias and a residual: the magnitude of each element
    /// is `|y| + |bias[n]| + |residual|`; a result without an add gets none.
    #[test]
    fn magnitudes_add_the_added_operands_per_element_and_per_column() {
        let g = crate::ir::parse(
            r#"graph "m" {
  %0 = input "a" : f16[2,4]
  %1 = input "b" : f16[3,4]
  %2 = input "bias" : f16[3]
  %3 = input "res" : f16[2,3]
  %4 = qmatmul %0, %1 {transpose_b, alpha=1.0, acc=f32, epilogue=[cast(f16),add(%2,f16),add(%3,f16)]} : f16[2,3]
  %5 = qmatmul %0, %1 {transpose_b, alpha=1.0, acc=f32, epilogue=[cast(f16)]} : f16[2,3]
  return "y" = %4, "z" = %5
}"#,
        )
        .unwrap();
        let v = |i: usize| ValueId::from(i);
        let mut values = HashMap::new();
        values.insert(v(2), Tensor::f32(vec![3], vec![1.0, -2.0, 3.0]));
        values.insert(v(3), Tensor::f32(vec![2, 3], vec![-10.0, 0.0, 0.5, 1.0, 1.0, 1.0]));
        values.insert(v(4), Tensor::f32(vec![2, 3], vec![0.25, -0.5, 1.0, 2.0, 0.0, -1.0]));
        values.insert(v(5), Tensor::f32(vec![2, 3], vec![1.0; 6]));
        let m = sum_magnitudes(&g, &values);
        assert_eq!(m[&v(4)].to_f32_vec(), [11.25, 2.5, 4.5, 4.0, 3.0, 5.0]);
        assert!(!m.contains_key(&v(5)));
    }
}
