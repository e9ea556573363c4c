//! Converting a graph's compute dtype (f32 → f16 or bf16).
//!
//! Every f32 value becomes the target dtype: weights get a `cast` (folded offline later by
//! `fold-constants`), scalar literals are clamped into the target's finite range (the attention
//! mask's `min_f32` becomes `-65504` in f16, as `transformers` uses `finfo(dtype).min`), and ops
//! whose result type is declared (`cast`, `reshape`, ...) declare the target instead. Integer
//! values (token ids, masks) are untouched. Node names are kept. State tensors (a decoder's KV
//! cache) keep their dtype, which `--kv-cache` chose: a state input is cast to the compute dtype
//! after it is read, and its update is cast back before it is returned.

use crate::ir::{order, Builder, DType, Graph, Op, TensorType, ValueId};

/// A copy of `g` computing in `to` wherever it computed in f32.
pub fn convert(g: &Graph, to: DType) -> Result<Graph, String> {
    let order = order::canonical_order(g).ok_or("the graph has a cycle")?;
    let mut out = Graph { name: g.name.clone(), symbols: g.symbols.clone(), ..Default::default() };
    let mut map: Vec<Option<ValueId>> = vec![None; g.values.len()];
    let retype = |t: &TensorType| if t.dtype == DType::F32 { t.with_dtype(to) } else { t.clone() };
    let mut b = Builder::new(&mut out);
    for id in order {
        let node = &g.nodes[id];
        b.scope = node.name.clone();
        let inputs: Vec<ValueId> =
            node.inputs.iter().map(|v| map[v.index()].ok_or("operand not yet converted")).collect::<Result<_, _>>()?;
        let declared = node.outputs.first().map(|&v| g.ty(v));
        let results = match &node.op {
            Op::Input { name } if declared.is_some_and(|t| t.dtype == DType::F32) && g.state.iter().any(|s| &s.input == name) => {
                let x = b.add(node.op.clone(), &[], declared.cloned())?;
                vec![b.cast(x[0], to)?]
            }
            Op::Weight { .. } if declared.is_some_and(|t| t.dtype == DType::F32) => {
                let w = b.add(node.op.clone(), &[], declared.cloned())?;
                vec![b.cast(w[0], to)?]
            }
            Op::Scalar { value } => {
                let ty = declared.map(retype).ok_or("scalar without type")?;
                let limit = ty.dtype.max_finite();
                let value = crate::numerics::cast(value.clamp(-limit, limit) as f32, ty.dtype) as f64;
                b.add(Op::Scalar { value }, &[], Some(ty))?
            }
            op => b.add(op.clone(), &inputs, declared.map(retype))?,
        };
        for (&old, new) in node.outputs.iter().zip(results) {
            map[old.index()] = Some(new);
        }
    }
    let mut outputs = vec![];
    for (name, v) in &g.outputs {
        let mut new = map[v.index()].ok_or("output not converted")?;
        let kept = g.ty(*v).dtype;
        if g.state.iter().any(|s| &s.update == name) && b.graph.ty(new).dtype != kept {
            b.scope = Some(format!("{name}.store"));
            new = b.cast(new, kept)?;
        }
        outputs.push((name.clone(), new));
    }
    out.outputs = outputs;
    out.state = g.state.clone();
    Ok(out)
}
