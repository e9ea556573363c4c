//! Weight-only GEMM / skinny code generation (`qmatmul` with `b_dequant`): every storage variant
//! (i8 per channel, u4 + zero point g128, i4 symmetric g128, f8e4m3 128×128 blocks, f4e2m1
//! 16-blocks) on f16 and bf16 activations, with and without bias / GeLU / residual, lowered to
//! guarded skinny (M ≤ 16) + GEMM launches and compiled to `sm_90a` CUBIN; snapshots of a W4A16
//! g128 GEMM with bias + GeLU and of its skinny kernel. No GPU needed; NVRTC is (fails, never
//! skips, without it).
//!
//! Graphs are built with the graph API (independent of the IR text syntax for `b_dequant`).

mod common;

use common::kernels::{compile_all_sm90a, qmatmul_launches};
use qfuse::codegen::kernel::{KernelDef, LowerCx};
use qfuse::codegen::ops::wonly;
use qfuse::ir::{
    DType, Dim, EpilogueOp, EpilogueStep, Granularity, Graph, Op, QMatMul, QuantSpec, ScaleSource, TensorType, UnaryOp, ZeroPoint,
};
use qfuse::plan::Guard;

/// A storage variant: name, code dtype, granularity, zero point.
struct Variant {
    name: &'static str,
    storage: DType,
    granularity: Granularity,
    zero: Option<ZeroPoint>,
}

fn variants() -> Vec<Variant> {
    let group = |g| Granularity::Block { blocks: vec![(-1, g)] };
    vec![
        Variant { name: "i8_channel", storage: DType::I8, granularity: Granularity::PerChannel { axis: 0 }, zero: None },
        Variant { name: "u4_zp_g128", storage: DType::U4, granularity: group(128), zero: Some(ZeroPoint::Input) },
        Variant { name: "i4_g128", storage: DType::I4, granularity: group(128), zero: None },
        Variant {
            name: "e4m3_block128",
            storage: DType::F8E4M3,
            granularity: Granularity::Block { blocks: vec![(0, 128), (1, 128)] },
            zero: None,
        },
        Variant { name: "e2m1_g16", storage: DType::F4E2M1, granularity: group(16), zero: None },
    ]
}

/// The epilogue variants: none, bias, bias + GeLU, bias + residual.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Epi {
    Plain,
    Bias,
    BiasGelu,
    BiasResidual,
}

/// `y = qmatmul(x [B,S,K], codes [N,K], scale, [zp], [bias [N]], [residual [B,S,N]])` with
/// `B ≤ b_max`, `S ≤ 512`.
fn graph(v: &Variant, act: DType, (n, k): (u64, u64), epi: Epi, b_max: u64) -> Graph {
    let mut g = Graph::new("wonly");
    let (b, s) = (g.add_symbol("B", b_max), g.add_symbol("S", 512));
    let bs = |last: u64| TensorType::new(act, [Dim::Sym(b), Dim::Sym(s), Dim::Fixed(last)]);
    let node = |g: &mut Graph, op: Op, inputs: &[_], ty: TensorType| g.add_node(op, inputs, vec![ty], Some("L".into()));
    let out = |g: &Graph, id| g.nodes[id].outputs[0];
    let x = node(&mut g, Op::Input { name: "x".into() }, &[], bs(k));
    let x = out(&g, x);
    let w = node(&mut g, Op::Weight { name: "L.weight".into() }, &[], TensorType::new(v.storage, [Dim::Fixed(n), Dim::Fixed(k)]));
    let w = out(&g, w);
    let spec = QuantSpec { storage: v.storage, granularity: v.granularity.clone(), scale: ScaleSource::Input, zero_point: v.zero.clone() };
    let wshape = [Dim::Fixed(n), Dim::Fixed(k)].into_iter().collect();
    let sshape = v.granularity.scale_shape(&wshape).expect("scale shape");
    let sc = node(&mut g, Op::Weight { name: "L.weight_scale".into() }, &[], TensorType::new(DType::F32, sshape.clone()));
    let mut inputs = vec![x, w, out(&g, sc)];
    if v.zero == Some(ZeroPoint::Input) {
        let zp = node(&mut g, Op::Weight { name: "L.weight_zero".into() }, &[], TensorType::new(DType::U8, sshape));
        inputs.push(out(&g, zp));
    }
    let mut steps = vec![EpilogueStep { op: EpilogueOp::Cast, dtype: act }];
    if epi != Epi::Plain {
        let bias = node(&mut g, Op::Weight { name: "L.bias".into() }, &[], TensorType::new(act, [Dim::Fixed(n)]));
        inputs.push(out(&g, bias));
        steps.push(EpilogueStep { op: EpilogueOp::Add, dtype: act });
    }
    if epi == Epi::BiasGelu {
        steps.push(EpilogueStep { op: EpilogueOp::Unary(UnaryOp::Gelu), dtype: act });
    }
    if epi == Epi::BiasResidual {
        let r = node(&mut g, Op::Input { name: "residual".into() }, &[], bs(n));
        inputs.push(out(&g, r));
        steps.push(EpilogueStep { op: EpilogueOp::Add, dtype: act });
    }
    let q = QMatMul::weight_only(spec, DType::F32, steps);
    let y = node(&mut g, Op::QMatMul(q), &inputs, bs(n));
    let y = out(&g, y);
    g.outputs.push(("y".into(), y));
    g
}

/// Every variant × activation × epilogue lowers to a skinny kernel (`B·S ≤ 16`) and a GEMM (`B·S > 16`)
/// with complementary guards over the same arguments, and every distinct kernel compiles.
#[test]
fn all_variants_lower_to_guarded_launches_and_compile_to_sm90a_cubin() {
    let mut kernels: Vec<KernelDef> = Vec::new();
    for v in variants() {
        for act in [DType::F16, DType::BF16] {
            for (epi, shape) in
                [(Epi::Plain, (384, 384)), (Epi::Bias, (1152, 384)), (Epi::BiasGelu, (1536, 384)), (Epi::BiasResidual, (384, 1536))]
            {
                let g = graph(&v, act, shape, epi, 128);
                let l = qmatmul_launches(&g);
                assert_eq!(l.len(), 2, "{}: skinny and GEMM", v.name);
                assert!(l[0].kernel.name.starts_with("gemm_skinny_") && l[1].kernel.name.starts_with("gemm_wonly_"));
                let rows = qfuse::plan::DimExpr::sym("B").mul(qfuse::plan::DimExpr::sym("S"));
                assert_eq!(l[0].when, Some(Guard::RowsAtMost { rows: rows.clone(), max: 16 }));
                assert_eq!(l[1].when, Some(Guard::RowsAbove { rows, min: 16 }));
                assert_eq!(l[0].args, l[1].args, "both kernels take the same arguments");
                let names: Vec<&str> = l[0].kernel.params.iter().map(|p| p.name.as_str()).collect();
                assert_eq!(names[..3], ["A", "B", "SCALE"]);
                assert_eq!(names.contains(&"ZP"), v.zero.is_some());
                for launch in l {
                    if !kernels.iter().any(|k| k.name == launch.kernel.name) {
                        kernels.push(launch.kernel);
                    }
                }
            }
        }
    }
    compile_all_sm90a(&kernels);
}

/// The groups docs/decoders.md recommends for decoders at SmolLM2-135M's shapes: W4A16 u4 with zero
/// points in groups of 64 and 32, and W8A16 i8 in groups of 128 (`w8a16 --group-size 128`). Every
/// case lowers to the guarded skinny + GEMM pair (nibble rows at K = 576 are 288 bytes: whole
/// 16-byte chunks, a partial last 64-byte step); every kernel compiles.
#[test]
fn small_groups_lower_and_compile_at_decoder_shapes() {
    let mut kernels: Vec<KernelDef> = Vec::new();
    for (storage, g, zero) in [(DType::U4, 64, Some(ZeroPoint::Input)), (DType::U4, 32, Some(ZeroPoint::Input)), (DType::I8, 128, None)] {
        let v = Variant { name: "decoder_group", storage, granularity: Granularity::Block { blocks: vec![(-1, g)] }, zero };
        for (n, k) in [(576, 576), (1536, 576), (576, 1536)] {
            let l = qmatmul_launches(&graph(&v, DType::F16, (n, k), Epi::Plain, 16));
            let templates: Vec<&str> = l.iter().map(|l| l.kernel.template).collect();
            assert_eq!(templates, ["gemm_skinny", "gemm_wonly"], "{storage} g{g}, {k} → {n}");
            kernels.extend(l.into_iter().map(|l| l.kernel));
        }
    }
    compile_all_sm90a(&kernels);
}

/// Small plans get only the skinny kernel (no guard); the GEMM's grid covers M in row tiles;
/// nibble rows of 224 bytes (K = 448: a partial last 64-byte step) take the skinny kernel too.
#[test]
fn launch_selection_follows_the_largest_m() {
    let v = &variants()[1];
    let small = graph(v, DType::F16, (384, 384), Epi::Bias, 1);
    let mut g = small.clone();
    g.symbols[qfuse::ir::SymId::from(1usize)].max = 16;
    let l = qmatmul_launches(&g);
    assert_eq!((l.len(), l[0].when.is_none()), (1, true));
    assert!(l[0].kernel.name.starts_with("gemm_skinny_"));
    assert_eq!(l[0].kernel.grid[0].to_string(), "12", "32 columns per block for nibble codes");
    let l = qmatmul_launches(&graph(v, DType::F16, (1536, 384), Epi::BiasGelu, 128));
    assert_eq!(l[1].kernel.grid[0].to_string(), "ceil_div(B*S, 128)*12");
    let l = qmatmul_launches(&graph(v, DType::F16, (384, 448), Epi::Bias, 128));
    assert_eq!(l.len(), 2, "the guarded skinny + GEMM pair");
    assert!(l[0].kernel.name.starts_with("gemm_skinny_") && l[1].kernel.name.starts_with("gemm_wonly_"));
}

fn plan_of(g: &Graph) -> wonly::WonlyPlan {
    let node = g.nodes.ids().find(|&id| matches!(g.nodes[id].op, Op::QMatMul(_))).expect("qmatmul");
    wonly::plan(&LowerCx::new(g, 90), node).expect("plans")
}

/// The generated CUDA of a W4A16 g128 (u4 + zero point) GEMM with bias + GeLU, and of its skinny kernel;
/// the shared prelude and the content-hash name are masked.
#[test]
fn generated_source_snapshots() {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    let prelude = qfuse::codegen::prelude();
    let g = graph(&variants()[1], DType::F16, (1536, 384), Epi::BiasGelu, 128);
    let p = plan_of(&g);
    assert_eq!(p.skinny.map(|s| s.col_tiles), Some(2));
    for (name, launch) in
        ["w4a16_g128_bias_gelu_skinny_1536x384", "w4a16_g128_bias_gelu_gemm_1536x384"].into_iter().zip(qmatmul_launches(&g))
    {
        let k = launch.kernel;
        assert!(k.source.contains(&prelude), "{name}: the prelude is inlined");
        let src = k
            .source
            .replace(&prelude, "// [prelude: templates/common.cuh + templates/math.cuh]\n")
            .replace(include_str!("../templates/ops.cuh"), "// [ops: templates/ops.cuh]\n")
            .replace(&k.name, &format!("{}_<hash>", k.name.rsplit_once('_').expect("template_hash").0));
        settings.bind(|| insta::assert_snapshot!(format!("codegen_wonly__{name}"), src));
    }
}

/// Unsupported weight-only nodes are errors that say why.
#[test]
fn unsupported_nodes_give_specific_errors() {
    let lower_err = |g: &Graph| {
        let node = g.nodes.ids().find(|&id| matches!(g.nodes[id].op, Op::QMatMul(_))).expect("qmatmul");
        wonly::lower(&LowerCx::new(g, 90), node).expect_err("unsupported").to_string()
    };
    let v = Variant { name: "g8", storage: DType::I4, granularity: Granularity::Block { blocks: vec![(-1, 8)] }, zero: None };
    assert!(lower_err(&graph(&v, DType::F16, (384, 384), Epi::Plain, 4)).contains("multiple of 16"));
    let e = lower_err(&graph(&variants()[0], DType::F16, (384, 96), Epi::Plain, 4));
    assert!(e.contains("multiples of 64"), "{e}");
    let fp8_zp = Variant { zero: Some(ZeroPoint::Literal(3)), ..variants().swap_remove(3) };
    let e = lower_err(&graph(&fp8_zp, DType::F16, (384, 384), Epi::Plain, 4));
    assert!(e.contains("no zero point"), "{e}");
}
