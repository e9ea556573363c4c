//! `qmatmul` graphs of every skinny-GEMM operand kind (tests/codegen_skinny.rs compiles their
//! kernels, tests/skinny_gpu.rs runs them against the interpreter).

use qfuse::ir::{DType, Dim, EpilogueOp, EpilogueStep, Granularity, Graph, Op, QMatMul, QuantSpec, ScaleSource, TensorType, ZeroPoint};

/// One operand kind of the skinny kernel and the epilogue it is tested with.
#[derive(Debug, Clone)]
pub struct Kind {
    pub name: &'static str,
    /// Activation dtype (`a`).
    pub act: DType,
    /// Weight storage (`b`).
    pub weight: DType,
    /// Weight-only dequantization: granularity and zero point.
    pub dequant: Option<(Granularity, Option<ZeroPoint>)>,
    /// Per-row `a_scale` and per-channel `b_scale` operands.
    pub dynamic: bool,
    /// Output quantize (i8 or f8e4m3, literal scale); else the epilogue dtype.
    pub output: Option<QuantSpec>,
    /// The epilogue's dtype (bias and result).
    pub wide: DType,
}

fn kind(name: &'static str, act: DType, weight: DType, wide: DType) -> Kind {
    Kind { name, act, weight, dequant: None, dynamic: false, output: None, wide }
}

fn wonly(name: &'static str, act: DType, weight: DType, granularity: Granularity, zero: Option<ZeroPoint>) -> Kind {
    Kind { dequant: Some((granularity, zero)), ..kind(name, act, weight, act) }
}

/// Every operand kind: f16, bf16, e4m3 (per tensor; per-row / per-channel scales), i8 (dynamic,
/// i8 output), and the weight-only storages on f16 and bf16 activations.
pub fn kinds() -> Vec<Kind> {
    let group = |g| Granularity::Block { blocks: vec![(-1, g)] };
    vec![
        kind("f16", DType::F16, DType::F16, DType::F16),
        kind("bf16", DType::BF16, DType::BF16, DType::BF16),
        kind("e4m3", DType::F8E4M3, DType::F8E4M3, DType::F16),
        Kind { dynamic: true, ..kind("e4m3_rowwise", DType::F8E4M3, DType::F8E4M3, DType::F16) },
        Kind { dynamic: true, ..kind("i8_dynamic", DType::I8, DType::I8, DType::F16) },
        Kind {
            dynamic: true,
            output: Some(QuantSpec::per_tensor(DType::I8, 0.05)),
            ..kind("i8_dynamic_q8", DType::I8, DType::I8, DType::F16)
        },
        wonly("w8a16_channel", DType::F16, DType::I8, Granularity::PerChannel { axis: 0 }, None),
        wonly("w4a16_zp_g128", DType::F16, DType::U4, group(128), Some(ZeroPoint::Input)),
        wonly("w4a16_bf16_g128", DType::BF16, DType::I4, group(128), None),
        wonly("u8_zp_g64", DType::F16, DType::U8, group(64), Some(ZeroPoint::Input)),
        wonly("fp8_block128", DType::BF16, DType::F8E4M3, Granularity::Block { blocks: vec![(0, 128), (1, 128)] }, None),
        wonly("nvfp4_g16", DType::F16, DType::F4E2M1, group(16), None),
    ]
}

/// Names of the graph's values, for the GPU test's buffers.
pub const X: &str = "x";

/// `y = qmatmul(x [M, K], w [N, K], [scale, [zero]], [a_scale [M,1], b_scale [N]], bias [N])`
/// with `M ≤ m_max`: f32 accumulation, `cast(wide)`, `add(bias)`, the kind's output quantize.
/// Weights are named `L.weight`, `L.weight_scale`, `L.weight_zero`, `L.b_scale`, `L.bias`;
/// inputs `x` and `x_scale`.
pub fn graph(kind: &Kind, (n, k): (u64, u64), m_max: u64) -> Graph {
    let mut g = Graph::new("skinny");
    let m = Dim::Sym(g.add_symbol("M", m_max));
    let value = |g: &mut Graph, op: Op, inputs: &[_], ty: TensorType| {
        let id = g.add_node(op, inputs, vec![ty], Some("L".into()));
        g.nodes[id].outputs[0]
    };
    let weight = |g: &mut Graph, name: &str, dtype, dims: Vec<Dim>| {
        value(g, Op::Weight { name: format!("L.{name}") }, &[], TensorType::new(dtype, dims))
    };
    let x = value(&mut g, Op::Input { name: X.into() }, &[], TensorType::new(kind.act, [m, Dim::Fixed(k)]));
    let w = weight(&mut g, "weight", kind.weight, vec![Dim::Fixed(n), Dim::Fixed(k)]);
    let mut inputs = vec![x, w];
    let mut b_dequant = None;
    if let Some((gran, zero)) = &kind.dequant {
        let wshape = [Dim::Fixed(n), Dim::Fixed(k)].into_iter().collect();
        let sshape: Vec<Dim> = gran.scale_shape(&wshape).expect("scale shape").into_iter().collect();
        inputs.push(weight(&mut g, "weight_scale", DType::F32, sshape.clone()));
        if zero == &Some(ZeroPoint::Input) {
            inputs.push(weight(&mut g, "weight_zero", DType::U8, sshape));
        }
        b_dequant =
            Some(QuantSpec { storage: kind.weight, granularity: gran.clone(), scale: ScaleSource::Input, zero_point: zero.clone() });
    }
    if kind.dynamic {
        inputs.push(value(&mut g, Op::Input { name: "x_scale".into() }, &[], TensorType::new(DType::F32, [m, Dim::Fixed(1)])));
        inputs.push(weight(&mut g, "b_scale", DType::F32, vec![Dim::Fixed(n)]));
    }
    inputs.push(weight(&mut g, "bias", kind.wide, vec![Dim::Fixed(n)]));
    let epilogue = vec![EpilogueStep { op: EpilogueOp::Cast, dtype: kind.wide }, EpilogueStep { op: EpilogueOp::Add, dtype: kind.wide }];
    let q = QMatMul {
        transpose_b: true,
        alpha: if kind.dequant.is_some() || kind.dynamic { 1.0 } else { 0.0625 },
        a_scale: kind.dynamic,
        b_scale: kind.dynamic,
        acc_dtype: DType::F32,
        epilogue,
        output: kind.output.clone(),
        b_dequant,
    };
    let out = kind.output.as_ref().map_or(kind.wide, |o| o.storage);
    let y = value(&mut g, Op::QMatMul(q), &inputs, TensorType::new(out, [m, Dim::Fixed(n)]));
    g.outputs.push(("y".into(), y));
    qfuse::ir::verify(&g, "skinny").unwrap_or_else(|e| panic!("{}: {e:?}", kind.name));
    g
}

/// `g`, a [`graph`] of `kind`, with AWQ's smoothing of the next projection's input as one more
/// epilogue step: `mul(L.smooth)` after `add(bias)`, reading a weight `[N]` of the kind's wide
/// dtype per column (`fuse-epilogue`'s per-column `mul` rule).
pub fn with_smoothing(kind: &Kind, g: &Graph) -> Graph {
    let mut g = g.clone();
    let node = g.nodes.ids().find(|&id| matches!(g.nodes[id].op, Op::QMatMul(_))).expect("qmatmul");
    let Op::QMatMul(mut q) = g.nodes[node].op.clone() else { unreachable!() };
    let ty = g.ty(g.nodes[node].outputs[0]).clone();
    let n = *ty.shape.last().expect("a result with columns");
    let smooth = g.add_node(Op::Weight { name: "L.smooth".into() }, &[], vec![TensorType::new(kind.wide, [n])], Some("L".into()));
    let mut inputs = g.nodes[node].inputs.clone();
    inputs.push(g.nodes[smooth].outputs[0]);
    q.epilogue.push(EpilogueStep { op: EpilogueOp::Mul, dtype: kind.wide });
    let y = g.add_node(Op::QMatMul(q), &inputs, vec![ty], Some("L".into()));
    g.outputs = vec![("y".into(), g.nodes[y].outputs[0])];
    let g = qfuse::ir::order::compact(&g);
    qfuse::ir::verify(&g, "skinny with smoothing").unwrap_or_else(|e| panic!("{}: {e:?}", kind.name));
    g
}
