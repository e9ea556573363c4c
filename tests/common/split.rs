//! `qmatmul_split` graphs of every GEMM operand kind of tests/common/skinny.rs: the kind's
//! `qmatmul` over a `[Σ n, K]` weight split into Q/K/V-like segments, each with its own alpha
//! (unless the kind's alpha is 1), its own bias `L.bias<i>` and, for the last segment, an FP8
//! output quantize (a V projection writing an FP8 cache) where the kind has no output quantize.
//! tests/codegen_split.rs compiles their kernels, tests/skinny_gpu.rs runs them.

use super::skinny::{graph, Kind};
use qfuse::ir::{epilogue_operands, order, DType, Dim, Graph, Op, QuantSpec, Segment, SplitMatMul, TensorType};

/// SmolLM2-135M's Q, K and V widths.
pub const QKV: [u64; 3] = [576, 192, 192];

/// Segment widths for `kind`: [`QKV`], or whole 128-row scale blocks for an FP8-block weight.
pub fn widths(kind: &Kind) -> Vec<u64> {
    if kind.name == "fp8_block128" {
        vec![256, 128, 128]
    } else {
        QKV.to_vec()
    }
}

/// The split graph (see the module doc), `M ≤ m_max`, outputs `y0, y1, …`.
pub fn split_graph(kind: &Kind, ns: &[u64], k: u64, m_max: u64) -> Graph {
    let mut g = graph(kind, (ns.iter().sum(), k), m_max);
    let node = g.nodes.ids().find(|&id| matches!(g.nodes[id].op, Op::QMatMul(_))).expect("qmatmul");
    let Op::QMatMul(q) = g.nodes[node].op.clone() else { unreachable!() };
    let prefix = q.arity() - epilogue_operands(&q);
    let mut inputs = g.nodes[node].inputs[..prefix].to_vec();
    let m = g.ty(inputs[0]).shape[0];
    let mut segments = vec![];
    let mut types = vec![];
    for (i, &n) in ns.iter().enumerate() {
        let bias =
            g.add_node(Op::Weight { name: format!("L.bias{i}") }, &[], vec![TensorType::new(kind.wide, [Dim::Fixed(n)])], Some("L".into()));
        inputs.push(g.nodes[bias].outputs[0]);
        let mut mm = q.clone();
        if mm.alpha != 1.0 {
            mm.alpha = q.alpha * (i + 1) as f32;
        }
        if i + 1 == ns.len() && q.output.is_none() {
            mm.output = Some(QuantSpec::per_tensor(DType::F8E4M3, 0.05));
        }
        let out = mm.output.as_ref().map_or(kind.wide, |o| o.storage);
        types.push(TensorType::new(out, [m, Dim::Fixed(n)]));
        segments.push(Segment { n, mm });
    }
    let split = g.add_node(Op::SplitMatMul(SplitMatMul { segments }), &inputs, types, Some("L".into()));
    g.outputs = g.nodes[split].outputs.iter().enumerate().map(|(i, &y)| (format!("y{i}"), y)).collect();
    let g = order::compact(&g);
    qfuse::ir::verify(&g, "split").unwrap_or_else(|e| panic!("{}: {e:?}", kind.name));
    g
}
