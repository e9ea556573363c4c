//! Skinny GEMM code generation (`templates/gemm_skinny.cu`, M ≤ 16): every operand kind (f16,
//! bf16, e4m3 per tensor and rowwise, i8 with an i8 output, the weight-only storages) lowered
//! from a `qmatmul` to the skinny kernel alone (M ≤ 16 in every shape) or to the guarded pair
//! skinny (`M ≤ 16`) + tiled GEMM (`M > 16`) with the same arguments, compiled to `sm_90a` CUBIN
//! at a MiniLM and a Llama-3-8B shape; a snapshot of the f16 kernel. No GPU needed; NVRTC is
//! (fails, never skips, without it).

mod common;

use common::kernels::{compile_all_sm90a, qmatmul_launches};
use common::skinny::{graph, kinds, with_smoothing};
use qfuse::codegen::kernel::KernelDef;
use qfuse::codegen::nvrtc;
use qfuse::ir::Op;
use qfuse::plan::{DimExpr, Guard};

/// Every kind at a MiniLM shape, at SmolLM2's 576 → 1536 (4-bit rows of 288 bytes: a partial last
/// 64-byte step) and at Llama-3-8B's 4096 → 14336: M ≤ 16 gives the skinny kernel
/// alone (grid N / BN whatever M), M ≤ 4096 the guarded pair over the same arguments; every
/// skinny kernel compiles.
#[test]
fn every_kind_lowers_to_the_skinny_kernel_and_compiles_to_sm90a_cubin() {
    nvrtc::locate().unwrap_or_else(|e| panic!("NVRTC is required (run `scripts/cache.sh nvrtc`): {e}"));
    let mut kernels: Vec<KernelDef> = Vec::new();
    for kind in kinds() {
        for shape in [(1536, 384), (1536, 576), (14336, 4096)] {
            let small = qmatmul_launches(&graph(&kind, shape, 16));
            assert_eq!(small.len(), 1, "{}: the skinny kernel alone", kind.name);
            let k = &small[0].kernel;
            assert_eq!((k.template, small[0].when.is_none()), ("gemm_skinny", true), "{}", kind.name);
            assert!(matches!(k.grid[0], DimExpr::Const(c) if c > 0 && shape.0 % c == 0), "{}: {:?}", kind.name, k.grid);
            let both = qmatmul_launches(&graph(&kind, shape, 4096));
            assert_eq!(both.len(), 2, "{}", kind.name);
            let m = DimExpr::sym("M");
            assert_eq!(both[0].when, Some(Guard::RowsAtMost { rows: m.clone(), max: 16 }), "{}", kind.name);
            assert_eq!(both[1].when, Some(Guard::RowsAbove { rows: m, min: 16 }), "{}", kind.name);
            assert_eq!(both[0].args, both[1].args, "{}: same arguments", kind.name);
            assert_eq!(both[0].kernel.params, both[1].kernel.params, "{}: same parameters", kind.name);
            assert_eq!(both[0].kernel.name, k.name, "{}: the same skinny kernel whatever the largest M", kind.name);
            assert_ne!(both[1].kernel.template, "gemm_skinny");
            kernels.push(k.clone());
        }
    }
    compile_all_sm90a(&kernels);
}

/// AWQ's smoothing factor as a last epilogue step (`mul` by a weight `[N]`, `fuse-epilogue`'s
/// per-column rule) at SmolLM2's MLP shape: a kind of each family (f16, e4m3, i8 with an i8
/// output, W4A16 with zero points) lowers to the skinny kernel, or the guarded pair, with the
/// factor as the per-column input `add1` multiplied last; the skinny and tiled kernels compile.
#[test]
fn smoothing_step_lowers_and_compiles_to_sm90a_cubin() {
    nvrtc::locate().unwrap_or_else(|e| panic!("NVRTC is required (run `scripts/cache.sh nvrtc`): {e}"));
    let mut kernels: Vec<KernelDef> = Vec::new();
    for kind in kinds().into_iter().filter(|k| ["f16", "e4m3", "i8_dynamic_q8", "w4a16_zp_g128"].contains(&k.name)) {
        let small = qmatmul_launches(&with_smoothing(&kind, &graph(&kind, (1536, 576), 16)));
        assert_eq!(small.len(), 1, "{}: the skinny kernel alone", kind.name);
        let k = &small[0].kernel;
        assert_eq!(k.template, "gemm_skinny", "{}", kind.name);
        assert!(k.params.iter().any(|p| p.name == "add1"), "{}: the factor is a parameter", kind.name);
        assert!(k.source.contains("* add1_v)"), "{}: the factor multiplies last", kind.name);
        let both = qmatmul_launches(&with_smoothing(&kind, &graph(&kind, (1536, 576), 4096)));
        assert_eq!(both.len(), 2, "{}", kind.name);
        assert_eq!(both[0].args, both[1].args, "{}: same arguments", kind.name);
        kernels.extend([k.clone(), both[1].kernel.clone()]);
    }
    compile_all_sm90a(&kernels);
}

/// Per-layer constants stay launch arguments: two layers that differ only in alpha share the
/// skinny kernel.
#[test]
fn alpha_is_an_argument() {
    let kind = &kinds()[2];
    let mut g = graph(kind, (1536, 384), 16);
    let a = qmatmul_launches(&g);
    let node = g.nodes.ids().find(|&id| matches!(g.nodes[id].op, Op::QMatMul(_))).expect("qmatmul");
    let Op::QMatMul(q) = &mut g.nodes[node].op else { unreachable!() };
    q.alpha = 0.25;
    let b = qmatmul_launches(&g);
    assert_eq!(a[0].kernel.name, b[0].kernel.name);
    assert_ne!(a[0].args, b[0].args);
    assert!(a[0].kernel.source.contains("float alpha)"));
}

/// The generated CUDA of the f16 skinny kernel with the bias epilogue (prelude and hash masked).
#[test]
fn generated_source_snapshot() {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    let prelude = qfuse::codegen::prelude();
    let k = qmatmul_launches(&graph(&kinds()[0], (4096, 4096), 16)).remove(0).kernel;
    assert!(k.source.contains("constexpr Kind KIND = Kind::Wide;"));
    let src =
        k.source.replace(&prelude, "// [prelude: templates/common.cuh + templates/math.cuh]\n").replace(&k.name, "gemm_skinny_<hash>");
    let src = src.replace(include_str!("../templates/ops.cuh"), "// [ops: templates/ops.cuh]\n");
    settings.bind(|| insta::assert_snapshot!("codegen_skinny__f16_bias_4096x4096", src));
}
