//! Segmented GEMM code generation (`qmatmul_split`, `merge-sibling-gemms`): every operand kind
//! of tests/common/skinny.rs split into SmolLM2's Q/K/V widths lowers to the skinny kernel alone
//! (M ≤ 16 in every shape) or to the guarded pair skinny + tiled GEMM over the same arguments,
//! with one result and one set of per-launch constants per segment; every kernel compiles to
//! `sm_90a` CUBIN; a snapshot of the FP8 skinny kernel's segment dispatch. No GPU needed; NVRTC
//! is (fails, never skips, without it).

mod common;

use common::kernels::compile_all_sm90a;
use common::skinny::kinds;
use common::split::{split_graph, widths};
use qfuse::codegen::kernel::{KernelDef, Launch, LowerCx, Lowered};
use qfuse::codegen::nvrtc;
use qfuse::codegen::ops::lower_node;
use qfuse::ir::{Graph, Op};
use qfuse::plan::{DimExpr, Guard};

/// K of the test shapes: SmolLM2's 576 is no multiple of the 128-element groups some kinds use.
const K: u64 = 512;

fn split_launches(g: &Graph) -> Vec<Launch> {
    let node = g.nodes.ids().find(|&id| matches!(g.nodes[id].op, Op::SplitMatMul(_))).expect("qmatmul_split");
    match lower_node(&LowerCx::new(g, 90), node) {
        Ok(Lowered::Launches(l)) => l,
        other => panic!("expected launches, got {other:?}"),
    }
}

fn param_names(k: &KernelDef) -> Vec<&str> {
    k.params.iter().map(|p| p.name.as_str()).collect()
}

/// Every kind: M ≤ 16 gives the skinny kernel alone, M ≤ 4096 the guarded pair with the same
/// arguments; the parameters name one result and one bias per segment and the last segment's
/// output scale; every kernel compiles.
#[test]
fn every_kind_lowers_to_segmented_kernels_and_compiles_to_sm90a_cubin() {
    nvrtc::locate().unwrap_or_else(|e| panic!("NVRTC is required (run `scripts/cache.sh nvrtc`): {e}"));
    let mut kernels: Vec<KernelDef> = Vec::new();
    for kind in kinds() {
        let ns = widths(&kind);
        let small = split_launches(&split_graph(&kind, &ns, K, 16));
        assert_eq!(small.len(), 1, "{}: the skinny kernel alone", kind.name);
        assert_eq!((small[0].kernel.template, small[0].when.is_none()), ("gemm_skinny", true), "{}", kind.name);
        let params = param_names(&small[0].kernel);
        for p in ["Y0", "Y1", "Y2", "s0_add0", "s1_add0", "s2_add0", "s2_out_scale", "s2_out_rcp"] {
            assert!(params.contains(&p), "{}: no parameter {p} in {params:?}", kind.name);
        }
        assert_eq!(small[0].args.len(), params.len(), "{}: one argument per parameter", kind.name);
        let both = split_launches(&split_graph(&kind, &ns, K, 4096));
        assert_eq!(both.len(), 2, "{}", kind.name);
        let m = DimExpr::sym("M");
        assert_eq!(both[0].when, Some(Guard::RowsAtMost { rows: m.clone(), max: 16 }), "{}", kind.name);
        assert_eq!(both[1].when, Some(Guard::RowsAbove { rows: m, min: 16 }), "{}", kind.name);
        assert_eq!((&both[0].args, &both[0].kernel.params), (&both[1].args, &both[1].kernel.params), "{}", kind.name);
        assert_eq!(both[0].kernel.name, small[0].kernel.name, "{}: one skinny kernel whatever the largest M", kind.name);
        kernels.extend([small[0].kernel.clone(), both[1].kernel.clone()]);
    }
    compile_all_sm90a(&kernels);
}

/// Per-segment constants are launch arguments: two layers whose segments differ only in alpha
/// and output scale share the kernel.
#[test]
fn segment_constants_are_arguments() {
    let kind = &kinds()[2];
    let mut g = split_graph(kind, &widths(kind), K, 16);
    let a = split_launches(&g);
    let node = g.nodes.ids().find(|&id| matches!(g.nodes[id].op, Op::SplitMatMul(_))).expect("split");
    let Op::SplitMatMul(s) = &mut g.nodes[node].op else { unreachable!() };
    s.segments[1].mm.alpha = 0.25;
    s.segments[2].mm.output.as_mut().expect("FP8 output").scale = qfuse::ir::ScaleSource::Literal(0.125);
    let b = split_launches(&g);
    assert_eq!(a[0].kernel.name, b[0].kernel.name);
    assert_ne!(a[0].args, b[0].args);
    assert!(a[0].kernel.source.contains("float s1_alpha") && a[0].kernel.source.contains("float s2_out_rcp)"));
}

/// The segment dispatch of the FP8 skinny kernel: the generated stage 2 from its first line to
/// the kernel's end.
#[test]
fn segment_dispatch_snapshot() {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    let kind = &kinds()[2];
    let k = split_launches(&split_graph(kind, &widths(kind), K, 16)).remove(0).kernel;
    let at = k.source.find("const int qf_n0_all").expect("segment dispatch");
    let entry = k.source.find("extern \"C\" __global__").expect("entry");
    let src = format!("{}\n...\n{}", k.source[entry..].lines().take(3).collect::<Vec<_>>().join("\n"), &k.source[at..]);
    settings.bind(|| insta::assert_snapshot!("codegen_split__e4m3_qkv_skinny", src.replace(&k.name, "gemm_skinny_<hash>")));
}
