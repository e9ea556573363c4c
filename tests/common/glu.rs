//! `qmatmul_glu` graphs of the GEMM operand kinds of tests/common/skinny.rs: the kind's `qmatmul`
//! over a `[2·N, K]` weight (its rows read as interleaved 8-row gate/up pieces) as a SwiGLU gate
//! `cast, add(gate bias), silu, mul(up)` (an FP8 output quantize for FP8 activations, the kind's
//! own otherwise) over an up projection `cast, add(up bias)` with twice the alpha (unless the
//! kind's alpha is 1). tests/codegen_glu.rs compiles their kernels, tests/skinny_gpu.rs runs them.

use super::skinny::{graph, kinds, Kind};
use qfuse::ir::{epilogue_operands, order, DType, Dim, EpilogueOp, EpilogueStep, GluMatMul, Graph, Op, QuantSpec, TensorType};

/// SmolLM2-135M's MLP width.
pub const N: u64 = 1536;

/// Rows per interleaved piece (`merge_gate_up::DEFAULT_TILE`).
pub const PIECE: u64 = 8;

/// The kinds `merge-gate-up` merges: all but the FP8 2-D block scales, whose 128-row blocks are
/// taller than a piece (the pass declines them).
pub fn glu_kinds() -> Vec<Kind> {
    kinds().into_iter().filter(|k| k.name != "fp8_block128").collect()
}

/// The GLU graph (see the module doc), `M ≤ m_max`, output `y`.
pub fn glu_graph(kind: &Kind, n: u64, k: u64, m_max: u64) -> Graph {
    let mut g = graph(kind, (2 * n, k), m_max);
    let node = g.nodes.ids().find(|&id| matches!(g.nodes[id].op, Op::QMatMul(_))).expect("qmatmul");
    let Op::QMatMul(q) = g.nodes[node].op.clone() else { unreachable!() };
    let prefix = q.arity() - epilogue_operands(&q);
    let mut inputs = g.nodes[node].inputs[..prefix].to_vec();
    let m = g.ty(inputs[0]).shape[0];
    for name in ["L.gate_bias", "L.up_bias"] {
        let bias = g.add_node(Op::Weight { name: name.into() }, &[], vec![TensorType::new(kind.wide, [Dim::Fixed(n)])], Some("L".into()));
        inputs.push(g.nodes[bias].outputs[0]);
    }
    let step = |op, dtype| EpilogueStep { op, dtype };
    let w = kind.wide;
    let gate_steps = vec![
        step(EpilogueOp::Cast, w),
        step(EpilogueOp::Add, w),
        step(EpilogueOp::Unary(qfuse::ir::UnaryOp::Silu), w),
        step(EpilogueOp::Mul, w),
    ];
    let fp8_out = (kind.act == DType::F8E4M3).then(|| QuantSpec::per_tensor(DType::F8E4M3, 0.05));
    let gate = qfuse::ir::QMatMul { epilogue: gate_steps, output: kind.output.clone().or(fp8_out), ..q.clone() };
    let alpha = if q.alpha == 1.0 { 1.0 } else { 2.0 * q.alpha };
    let up = qfuse::ir::QMatMul { alpha, epilogue: vec![step(EpilogueOp::Cast, w), step(EpilogueOp::Add, w)], output: None, ..q };
    let out = gate.output.as_ref().map_or(w, |o| o.storage);
    let op = Op::GluMatMul(GluMatMul { tile: PIECE, gate, up, up_operand: 1 });
    let glu = g.add_node(op, &inputs, vec![TensorType::new(out, [m, Dim::Fixed(n)])], Some("L".into()));
    g.outputs = vec![("y".into(), g.nodes[glu].outputs[0])];
    let g = order::compact(&g);
    qfuse::ir::verify(&g, "glu").unwrap_or_else(|e| panic!("{}: {e:?}", kind.name));
    g
}

/// `g`, a [`glu_graph`] of `kind`, with AWQ's down-projection smoothing in the gate's epilogue:
/// one more step `mul(L.down_smooth)` after `mul(up)`, reading a weight `[N]` of the kind's wide
/// dtype per output column, as `fuse-epilogue` and `merge-gate-up` build it for `w4a16-awq`.
pub fn with_gate_smoothing(kind: &Kind, g: &Graph) -> Graph {
    let mut g = g.clone();
    let node = g.nodes.ids().find(|&id| matches!(g.nodes[id].op, Op::GluMatMul(_))).expect("qmatmul_glu");
    let Op::GluMatMul(mut s) = g.nodes[node].op.clone() else { unreachable!() };
    let ty = g.ty(g.nodes[node].outputs[0]).clone();
    let n = *ty.shape.last().expect("a result with columns");
    let smooth = g.add_node(Op::Weight { name: "L.down_smooth".into() }, &[], vec![TensorType::new(kind.wide, [n])], Some("L".into()));
    let ((g0, gn), _) = s.operand_ranges();
    let mut inputs = g.nodes[node].inputs.clone();
    inputs.insert(g0 + gn, g.nodes[smooth].outputs[0]);
    s.gate.epilogue.push(EpilogueStep { op: EpilogueOp::Mul, dtype: kind.wide });
    let glu = g.add_node(Op::GluMatMul(s), &inputs, vec![ty], Some("L".into()));
    g.outputs = vec![("y".into(), g.nodes[glu].outputs[0])];
    let g = order::compact(&g);
    qfuse::ir::verify(&g, "glu with smoothing").unwrap_or_else(|e| panic!("{}: {e:?}", kind.name));
    g
}
