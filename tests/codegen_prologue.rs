//! Norm prologues (`fuse-norm-prologue`, `src/codegen/ops/prologue.rs`): an RMSNorm marked
//! `prologue` launches only where its reader runs the tiled GEMM (`M > 16`), and the reader's
//! skinny launch (`M ≤ 16`) reads the norm's input and γ instead of the norm's result — for a
//! `qmatmul` (f16, FP8 with the E4M3 quantize, INT8 with the I8 one, W4A16), a `qmatmul_split` and
//! a `qmatmul_glu` — and every such kernel compiles to `sm_90a` CUBIN. Without the flag the same
//! graphs lower as before. No GPU needed (NVRTC only); tests/skinny_gpu.rs runs them on one.

mod common;

use common::kernels::compile_all_sm90a;
use qfuse::codegen::kernel::{Arg, KernelDef, Launch, LowerCx, Lowered};
use qfuse::codegen::nvrtc;
use qfuse::codegen::ops::lower_node;
use qfuse::ir::{self, Graph, NodeId, Op, ValueId};
use qfuse::plan::{DimExpr, Guard, ParamType, Scalar};

/// The GEMM readers, as IR after the norm: `{a}` is the norm's result, `{m}` the row symbol's max.
const READERS: &[(&str, &str, &str)] = &[
    (
        "f16",
        "%2 = rmsnorm %0, %1 {eps=1e-5, prologue=true} : f16[B,64] loc(\"N\")",
        "%3 = weight @L.weight.f16 : f16[128,64]
  %4 = qmatmul %2, %3 {transpose_b, alpha=1.0, acc=f16} : f16[B,128] loc(\"L\")
  return \"y\" = %4",
    ),
    (
        "fp8",
        "%2 = rmsnorm_quantize %0, %1 {eps=1e-6, via=f16, f8e4m3, per_tensor, scale=0.02, prologue=true} : f8e4m3[B,64] loc(\"N\")",
        "%3 = weight @L.weight.f8e4m3 : f8e4m3[128,64]
  %4 = qmatmul %2, %3 {transpose_b, alpha=0.01, acc=f32, epilogue=[cast(f16)]} : f16[B,128] loc(\"L\")
  return \"y\" = %4",
    ),
    (
        "int8",
        "%2 = rmsnorm_quantize %0, %1 {eps=1e-6, via=f16, i8, per_tensor, scale=0.03, prologue=true} : i8[B,64] loc(\"N\")",
        "%3 = weight @L.weight.i8 : i8[128,64]
  %4 = qmatmul %2, %3 {transpose_b, alpha=0.01, acc=f32, epilogue=[cast(f16)]} : f16[B,128] loc(\"L\")
  return \"y\" = %4",
    ),
    (
        "w4a16",
        "%2 = rmsnorm %0, %1 {eps=1e-5, prologue=true} : f16[B,64] loc(\"N\")",
        "%3 = weight @L.weight.u4 : u4[128,64]
  %4 = weight @L.weight.scale : f32[128,2]
  %5 = weight @L.weight.zero : u8[128,2]
  %6 = qmatmul %2, %3 {transpose_b, alpha=1.0, b_dequant(u4,block(1:32),scale=%4,zero=%5), acc=f16} : f16[B,128] loc(\"L\")
  return \"y\" = %6",
    ),
    (
        "split",
        "%2 = rmsnorm %0, %1 {eps=1e-5, prologue=true} : f16[B,64] loc(\"N\")",
        "%3 = weight @\"L.{q,k,v}_proj.weight.f16\" : f16[192,64]
  %4, %5, %6 = qmatmul_split %2, %3 {transpose_b, segments=[seg(n=64,alpha=1.0,acc=f16),seg(n=64,alpha=1.0,acc=f16),seg(n=64,alpha=1.0,acc=f16)]} : f16[B,64], f16[B,64], f16[B,64] loc(\"L\")
  return \"q\" = %4, \"k\" = %5, \"v\" = %6",
    ),
    (
        "glu",
        "%2 = rmsnorm %0, %1 {eps=1e-5, prologue=true} : f16[B,64] loc(\"N\")",
        "%3 = weight @\"{G,U}.weight.f16\" : f16[256,64]
  %4 = qmatmul_glu %2, %3 {transpose_b, tile=8, gate=seg(alpha=1.0,acc=f16,epilogue=[silu(f16),mul(up,f16)]), up=seg(alpha=1.0,acc=f16)} : f16[B,128] loc(\"L\")
  return \"y\" = %4",
    ),
];

fn graph(norm: &str, reader: &str, max_rows: u64, prologue: bool) -> Graph {
    let norm = if prologue { norm.to_string() } else { norm.replace(", prologue=true}", "}") };
    let text = format!(
        "graph \"t\" {{\n  sym B max={max_rows}\n  %0 = input \"x\" : f16[B,64]\n  %1 = weight @N.weight : f16[64]\n  {norm}\n  {reader}\n}}\n"
    );
    let g = ir::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    ir::verify(&g, "test").unwrap_or_else(|e| panic!("{e}"));
    g
}

fn launches(g: &Graph, node: NodeId) -> Vec<Launch> {
    match lower_node(&LowerCx::new(g, 90), node) {
        Ok(Lowered::Launches(l)) => l,
        other => panic!("expected launches, got {other:?}"),
    }
}

fn find(g: &Graph, pred: impl Fn(&Op) -> bool) -> NodeId {
    g.nodes.ids().find(|&id| pred(&g.nodes[id].op)).expect("node")
}

fn is_norm(op: &Op) -> bool {
    matches!(op, Op::RmsNorm { .. } | Op::NormQuantize { .. })
}

fn is_gemm(op: &Op) -> bool {
    matches!(op, Op::QMatMul(_) | Op::SplitMatMul(_) | Op::GluMatMul(_))
}

/// Up to 64 rows: the norm launches for `M > 16` only; the skinny launch reads x and γ (and the
/// scale), the tiled one the norm's result, each with the parameters its kernel declares.
#[test]
fn the_skinny_kernel_takes_the_norm_and_the_norm_launches_above_16_rows() {
    nvrtc::locate().unwrap_or_else(|e| panic!("NVRTC is required (run `scripts/cache.sh nvrtc`): {e}"));
    let mut kernels: Vec<KernelDef> = Vec::new();
    let rows = DimExpr::sym("B");
    for (name, norm, reader) in READERS {
        let g = graph(norm, reader, 64, true);
        let (n, r) = (find(&g, is_norm), find(&g, is_gemm));
        let (x, gamma, normed): (ValueId, ValueId, ValueId) = (g.nodes[n].inputs[0], g.nodes[n].inputs[1], g.nodes[n].outputs[0]);
        let own = launches(&g, n);
        assert_eq!(own.len(), 1, "{name}");
        assert_eq!(own[0].when, Some(Guard::RowsAbove { rows: rows.clone(), min: 16 }), "{name}: the norm runs above 16 rows only");
        let gemm = launches(&g, r);
        let skinny = gemm.iter().find(|l| l.kernel.template == "gemm_skinny").unwrap_or_else(|| panic!("{name}: no skinny launch"));
        let tiled = gemm.iter().find(|l| l.kernel.template != "gemm_skinny").unwrap_or_else(|| panic!("{name}: no tiled launch"));
        assert_eq!(skinny.when, Some(Guard::RowsAtMost { rows: rows.clone(), max: 16 }), "{name}");
        assert_eq!(skinny.args[0], Arg::Value(x), "{name}: the skinny kernel reads the norm's input");
        assert_eq!(tiled.args[0], Arg::Value(normed), "{name}: the tiled GEMM reads the norm's result");
        let scale = match *name {
            "fp8" => 0.02,
            "int8" => 0.03,
            _ => 1.0,
        };
        let tail = &skinny.args[skinny.args.len() - 2..];
        assert_eq!(tail, [Arg::Value(gamma), Arg::Scalar(Scalar::F32(scale))], "{name}: GAMMA and QSCALE end the arguments");
        assert_eq!(skinny.args[1..skinny.args.len() - 2], tiled.args[1..], "{name}: otherwise the tiled GEMM's arguments");
        let params: Vec<_> = skinny.kernel.params.iter().rev().take(2).map(|p| (p.name.as_str(), p.ty)).collect();
        assert_eq!(params, [("QSCALE", ParamType::F32), ("GAMMA", ParamType::Ptr)], "{name}");
        assert_eq!(skinny.args.len(), skinny.kernel.params.len(), "{name}");
        let code = if *name == "fp8" {
            2
        } else if *name == "int8" {
            3
        } else {
            1
        };
        assert!(skinny.kernel.source.contains(&format!("constexpr int PROLOGUE = {code};")), "{name}");
        kernels.push(skinny.kernel.clone());
    }
    compile_all_sm90a(&kernels);
}

/// At most 16 rows in every shape the reader runs only the skinny kernel, and the norm keeps a
/// launch whose guard never holds.
#[test]
fn a_reader_that_is_always_skinny_leaves_the_norm_a_launch_that_never_runs() {
    let g = graph(READERS[0].1, READERS[0].2, 16, true);
    let own = launches(&g, find(&g, is_norm));
    assert_eq!(own[0].when, Some(Guard::RowsAbove { rows: DimExpr::sym("B"), min: u64::MAX }));
    let gemm = launches(&g, find(&g, is_gemm));
    assert_eq!((gemm.len(), gemm[0].when.as_ref()), (1, None));
    assert_eq!(gemm[0].args[0], Arg::Value(g.nodes[find(&g, is_norm)].inputs[0]));
}

/// Without the flag nothing changes: the norm always launches and the skinny kernel reads `a`.
#[test]
fn without_the_flag_the_norm_launches_and_the_skinny_kernel_reads_its_result() {
    for (name, norm, reader) in READERS {
        let g = graph(norm, reader, 64, false);
        let n = find(&g, is_norm);
        assert_eq!(launches(&g, n)[0].when, None, "{name}");
        let gemm = launches(&g, find(&g, is_gemm));
        let skinny = gemm.iter().find(|l| l.kernel.template == "gemm_skinny").expect("skinny");
        assert_eq!(skinny.args[0], Arg::Value(g.nodes[n].outputs[0]), "{name}");
        assert!(skinny.kernel.source.contains("constexpr int PROLOGUE = 0;"), "{name}");
    }
}
