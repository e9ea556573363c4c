//! GLU GEMM code generation (`qmatmul_glu`, `merge-gate-up`): every operand kind of
//! tests/common/glu.rs at SmolLM2's MLP width lowers to the skinny kernel alone (M ≤ 16 in every
//! shape) or to the guarded pair skinny + tiled GEMM (tiled or weight-only) over the same
//! arguments, with the gate's and the up projection's own inputs and per-launch constants;
//! every kernel compiles to `sm_90a` CUBIN; a snapshot of the FP8 skinny kernel's GLU stage 2.
//! No GPU needed; NVRTC is (fails, never skips, without it).

mod common;

use common::glu::{glu_graph, glu_kinds, with_gate_smoothing, N};
use common::kernels::compile_all_sm90a;
use qfuse::codegen::kernel::{KernelDef, Launch, LowerCx, Lowered};
use qfuse::codegen::nvrtc;
use qfuse::codegen::ops::lower_node;
use qfuse::ir::{Graph, Op};
use qfuse::plan::{DimExpr, Guard};

/// K of the test shapes: SmolLM2's 576 is no multiple of the 128-element groups some kinds use.
const K: u64 = 512;

fn glu_launches(g: &Graph) -> Vec<Launch> {
    let node = g.nodes.ids().find(|&id| matches!(g.nodes[id].op, Op::GluMatMul(_))).expect("qmatmul_glu");
    match lower_node(&LowerCx::new(g, 90), node) {
        Ok(Lowered::Launches(l)) => l,
        other => panic!("expected launches, got {other:?}"),
    }
}

fn param_names(k: &KernelDef) -> Vec<&str> {
    k.params.iter().map(|p| p.name.as_str()).collect()
}

/// Every kind: M ≤ 16 gives the skinny kernel alone, M ≤ 4096 the guarded pair with the same
/// arguments; the parameters name one result, each side's bias and the gate's output scale;
/// every kernel compiles.
#[test]
fn every_kind_lowers_to_glu_kernels_and_compiles_to_sm90a_cubin() {
    nvrtc::locate().unwrap_or_else(|e| panic!("NVRTC is required (run `scripts/cache.sh nvrtc`): {e}"));
    let mut kernels: Vec<KernelDef> = Vec::new();
    for kind in glu_kinds() {
        let small = glu_launches(&glu_graph(&kind, N, K, 16));
        assert_eq!(small.len(), 1, "{}: the skinny kernel alone", kind.name);
        assert_eq!((small[0].kernel.template, small[0].when.is_none()), ("gemm_skinny", true), "{}", kind.name);
        let params = param_names(&small[0].kernel);
        for p in ["Y", "g_add0", "u_add0"] {
            assert!(params.contains(&p), "{}: no parameter {p} in {params:?}", kind.name);
        }
        assert!(!params.contains(&"g_add1"), "{}: the up result is no parameter: {params:?}", kind.name);
        assert_eq!(small[0].args.len(), params.len(), "{}: one argument per parameter", kind.name);
        assert!(small[0].kernel.source.contains("acc_up"), "{}: stage 2 reads the up accumulator", kind.name);
        let both = glu_launches(&glu_graph(&kind, N, K, 4096));
        assert_eq!(both.len(), 2, "{}", kind.name);
        let m = DimExpr::sym("M");
        assert_eq!(both[0].when, Some(Guard::RowsAtMost { rows: m.clone(), max: 16 }), "{}", kind.name);
        assert_eq!(both[1].when, Some(Guard::RowsAbove { rows: m, min: 16 }), "{}", kind.name);
        assert_eq!((&both[0].args, &both[0].kernel.params), (&both[1].args, &both[1].kernel.params), "{}", kind.name);
        let tiled = if kind.dequant.is_some() { "gemm_wonly" } else { "gemm" };
        assert_eq!(both[1].kernel.template, tiled, "{}", kind.name);
        kernels.extend([small[0].kernel.clone(), both[1].kernel.clone()]);
    }
    compile_all_sm90a(&kernels);
}

/// AWQ's down-projection smoothing as the gate's last step (`mul` by a weight `[N]` after
/// `mul(up)`, as `fuse-epilogue` and `merge-gate-up` leave it in `w4a16-awq` plans): the gate's
/// own per-column input `g_add2`, multiplied after the product with the up value, in the skinny
/// kernel and the guarded tiled one of a kind of each family; every kernel compiles.
#[test]
fn gate_smoothing_step_lowers_and_compiles_to_sm90a_cubin() {
    nvrtc::locate().unwrap_or_else(|e| panic!("NVRTC is required (run `scripts/cache.sh nvrtc`): {e}"));
    let mut kernels: Vec<KernelDef> = Vec::new();
    for kind in glu_kinds().into_iter().filter(|k| ["f16", "e4m3", "w4a16_zp_g128", "w4a16_bf16_g128"].contains(&k.name)) {
        let small = glu_launches(&with_gate_smoothing(&kind, &glu_graph(&kind, N, K, 16)));
        assert_eq!((small.len(), small[0].kernel.template), (1, "gemm_skinny"), "{}", kind.name);
        let params = param_names(&small[0].kernel);
        assert!(params.contains(&"g_add2"), "{}: no parameter g_add2 in {params:?}", kind.name);
        assert_eq!(small[0].args.len(), params.len(), "{}: one argument per parameter", kind.name);
        assert!(small[0].kernel.source.contains("* g_add2_v)"), "{}: the factor multiplies last", kind.name);
        let both = glu_launches(&with_gate_smoothing(&kind, &glu_graph(&kind, N, K, 4096)));
        assert_eq!(both.len(), 2, "{}", kind.name);
        assert_eq!((&both[0].args, &both[0].kernel.params), (&both[1].args, &both[1].kernel.params), "{}", kind.name);
        kernels.extend([small[0].kernel.clone(), both[1].kernel.clone()]);
    }
    compile_all_sm90a(&kernels);
}

/// Per-side constants are launch arguments: two layers whose projections differ only in alpha
/// and output scale share the kernel.
#[test]
fn gate_and_up_constants_are_arguments() {
    let kind = &glu_kinds()[2];
    let mut g = glu_graph(kind, N, K, 16);
    let a = glu_launches(&g);
    let node = g.nodes.ids().find(|&id| matches!(g.nodes[id].op, Op::GluMatMul(_))).expect("glu");
    let Op::GluMatMul(s) = &mut g.nodes[node].op else { unreachable!() };
    s.up.alpha = 0.25;
    s.gate.output.as_mut().expect("FP8 output").scale = qfuse::ir::ScaleSource::Literal(0.125);
    let b = glu_launches(&g);
    assert_eq!(a[0].kernel.name, b[0].kernel.name);
    assert_ne!(a[0].args, b[0].args);
    assert!(a[0].kernel.source.contains("float u_alpha") && a[0].kernel.source.contains("float out_rcp)"));
}

/// The GLU stage 2 of the FP8 skinny kernel: the generated text from its first line to the
/// kernel's end.
#[test]
fn glu_stage_two_snapshot() {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    let kind = &glu_kinds()[2];
    let k = glu_launches(&glu_graph(kind, N, K, 16)).remove(0).kernel;
    let at = k.source.find("    // GLU GEMM").expect("GLU stage 2");
    let entry = k.source.find("extern \"C\" __global__").expect("entry");
    let src = format!("{}\n...\n{}", k.source[entry..].lines().take(3).collect::<Vec<_>>().join("\n"), &k.source[at..]);
    settings.bind(|| insta::assert_snapshot!("codegen_glu__e4m3_swiglu_skinny", src.replace(&k.name, "gemm_skinny_<hash>")));
}
