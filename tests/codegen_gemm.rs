//! GEMM code generation: `qmatmul` nodes (built from IR text) lowered through
//! `codegen::ops::qmatmul::lower` to CUDA C, compiled to `sm_90a` CUBIN with NVRTC (every
//! all-MiniLM-L6-v2 variant), snapshots of three canonical kernels, specific errors for
//! unsupported nodes, and the template's spec checks. No GPU needed; NVRTC is (these tests fail,
//! never skip, without it: the project's test command runs `scripts/cache.sh nvrtc` first).

use std::time::Instant;

use qfuse::codegen::gemm::{self, Epilogue, GemmError, GemmSpec, Mainloop, Operand};
use qfuse::codegen::kernel::{Arg, KernelDef, Launch, LowerCx, LowerError, LowerOptions, Lowered};
use qfuse::codegen::nvrtc;
use qfuse::codegen::ops::qmatmul;
use qfuse::ir::{DType, Graph, NodeId, Op};
use qfuse::plan::{DimExpr, Guard, ParamType, Scalar, Sums, TensorCoreModel};

/// The per-launch `f32` arguments a GEMM of `node` must get, from its payload: `alpha` unless it is
/// 1, then the output quantize's scale and RN(1 / scale).
fn per_launch_scalars(g: &Graph, node: NodeId) -> Vec<Arg> {
    let Op::QMatMul(q) = &g.nodes[node].op else { panic!("not a qmatmul") };
    let mut out = Vec::new();
    if q.alpha != 1.0 {
        out.push(Arg::Scalar(Scalar::F32(q.alpha)));
    }
    if let Some(qfuse::ir::ScaleSource::Literal(s)) = q.output.as_ref().map(|o| o.scale.clone()) {
        out.extend([Arg::Scalar(Scalar::F32(s)), Arg::Scalar(Scalar::F32(1.0 / s))]);
    }
    out
}

/// The MiniLM linear layers: (N, K).
const MINILM: [(u32, u32); 3] = [(384, 384), (1536, 384), (384, 1536)];

/// A graph around one qmatmul `%6 = qmatmul %0, %1 {attrs} : out`: `x [B,S,K]` and the weight
/// `[N,K]` of `operand`; `%2` a bias `wide[N]`, `%3` a residual `wide[B,S,N]`, `%4` per-token
/// scales `f32[B,S,1]`, `%5` per-channel scales `f32[N]`, for the attributes to name.
fn graph_text(operand: &str, wide: &str, (n, k): (u32, u32), attrs: &str, out: &str) -> String {
    format!(
        r#"graph "g" {{
  sym B max=64
  sym S max=512
  %0 = input "x" : {operand}[B,S,{k}]
  %1 = weight @L.weight : {operand}[{n},{k}] loc("L")
  %2 = weight @L.bias : {wide}[{n}] loc("L")
  %3 = input "residual" : {wide}[B,S,{n}]
  %4 = input "x_scale" : f32[B,S,1]
  %5 = weight @L.weight.scale : f32[{n}] loc("L")
  %6 = qmatmul %0, %1 {{{attrs}}} : {out}[B,S,{n}] loc("L")
  return "y" = %6
}}
"#
    )
}

/// A MiniLM variant: name, IR text.
struct Case {
    name: String,
    ir: String,
}

fn case(name: &str, operand: &str, wide: &str, shape: (u32, u32), attrs: &str, out: &str) -> Case {
    Case { name: format!("{name}_{}x{}", shape.0, shape.1), ir: graph_text(operand, wide, shape, attrs, out) }
}

/// Every qmatmul the fp8, fp8-dynamic and fp16 recipes produce for all-MiniLM-L6-v2, plus bf16.
fn minilm_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for s in MINILM {
        // fp8 (static per-tensor): Q/K/V/attention-output/down projections with a bias.
        v.push(case("fp8_bias", "f8e4m3", "f16", s, "transpose_b, alpha=0.0123, acc=f32, epilogue=[cast(f16),add(%2,f16)]", "f16"));
        // fp8-dynamic: per-token activation scales, per-channel weight scales.
        v.push(case(
            "fp8_dynamic_bias",
            "f8e4m3",
            "f16",
            s,
            "transpose_b, alpha=1.0, a_scale=%4, b_scale=%5, acc=f32, epilogue=[cast(f16),add(%2,f16)]",
            "f16",
        ));
    }
    // fp8 up projection: bias, GeLU and the next GEMM's per-tensor input quantize.
    v.push(case(
        "fp8_bias_gelu_quant",
        "f8e4m3",
        "f16",
        (1536, 384),
        "transpose_b, alpha=0.000102653794, acc=f32, epilogue=[cast(f16),add(%2,f16),gelu(f16)], out=f8e4m3, out_scale=0.045479912",
        "f8e4m3",
    ));
    v.push(case(
        "fp8_dynamic_bias_gelu",
        "f8e4m3",
        "f16",
        (1536, 384),
        "transpose_b, alpha=1.0, a_scale=%4, b_scale=%5, acc=f32, epilogue=[cast(f16),add(%2,f16),gelu(f16)]",
        "f16",
    ));
    // fp8 attention-output and down projections: bias, then the residual.
    for s in [(384, 384), (384, 1536)] {
        v.push(case(
            "fp8_bias_residual",
            "f8e4m3",
            "f16",
            s,
            "transpose_b, alpha=4.682483e-6, acc=f32, epilogue=[cast(f16),add(%2,f16),add(%3,f16)]",
            "f16",
        ));
    }
    v.push(case(
        "fp8_dynamic_bias_residual",
        "f8e4m3",
        "f16",
        (384, 1536),
        "transpose_b, alpha=1.0, a_scale=%4, b_scale=%5, acc=f32, epilogue=[cast(f16),add(%2,f16),add(%3,f16)]",
        "f16",
    ));
    // fp16 recipe (lift-linear + fuse-epilogue): acc=f16, alpha=1.
    v.push(case("f16_bias", "f16", "f16", (384, 384), "transpose_b, alpha=1.0, acc=f16, epilogue=[add(%2,f16)]", "f16"));
    v.push(case("f16_bias_gelu", "f16", "f16", (1536, 384), "transpose_b, alpha=1.0, acc=f16, epilogue=[add(%2,f16),gelu(f16)]", "f16"));
    v.push(case(
        "f16_bias_residual",
        "f16",
        "f16",
        (384, 1536),
        "transpose_b, alpha=1.0, acc=f16, epilogue=[add(%2,f16),add(%3,f16)]",
        "f16",
    ));
    v.push(case(
        "bf16_bias_gelu_quant",
        "bf16",
        "bf16",
        (1536, 384),
        "transpose_b, alpha=1.0, acc=bf16, epilogue=[add(%2,bf16),gelu(bf16)], out=f8e4m3, out_scale=0.05",
        "f8e4m3",
    ));
    v
}

fn qmatmul_node(g: &Graph) -> NodeId {
    g.nodes.ids().find(|&id| matches!(g.nodes[id].op, Op::QMatMul(_))).expect("the graph has a qmatmul")
}

/// Parses `ir` (checking it type-checks) and lowers its qmatmul.
/// Lowers the IR's qmatmul with the default options: FP8 on Hopper's promoted `wgmma` (the
/// mainloop whose generated code the snapshots pin); [`lower_ir_exact`] takes `mma.sync` for FP8
/// (`--fp8-accum exact`).
fn lower_ir(ir: &str) -> (Graph, NodeId, Result<Lowered, LowerError>) {
    lower_ir_with(ir, LowerOptions::default())
}

fn lower_ir_exact(ir: &str) -> (Graph, NodeId, Result<Lowered, LowerError>) {
    lower_ir_with(ir, LowerOptions { exact_fp8: true, ..LowerOptions::default() })
}

fn lower_ir_with(ir: &str, options: LowerOptions) -> (Graph, NodeId, Result<Lowered, LowerError>) {
    let g = qfuse::ir::parse(ir).unwrap_or_else(|e| panic!("{e}\n{ir}"));
    qfuse::ir::verify(&g, "test").unwrap_or_else(|e| panic!("{e}\n{ir}"));
    let node = qmatmul_node(&g);
    let lowered = qmatmul::lower(&LowerCx { options, ..LowerCx::new(&g, 90) }, node);
    (g, node, lowered)
}

/// The tiled GEMM of a lowering. M = B·S may be at most 16, so it comes second, guarded by
/// `M > 16`, after the skinny kernel guarded by `M ≤ 16` with the same arguments
/// (tests/codegen_skinny.rs covers that one).
fn one_launch(lowered: Result<Lowered, LowerError>, what: &str) -> Launch {
    match lowered {
        Ok(Lowered::Launches(mut l)) if l.len() == 2 => {
            assert!(
                matches!(l[0].when, Some(Guard::RowsAtMost { max: 16, .. })) && matches!(l[1].when, Some(Guard::RowsAbove { min: 16, .. })),
                "{what}: guards {:?} / {:?}",
                l[0].when,
                l[1].when
            );
            assert_eq!((l[0].kernel.template, l[1].kernel.template), ("gemm_skinny", "gemm"), "{what}");
            assert_eq!(l[0].args, l[1].args, "{what}: both alternatives take the same arguments");
            l.remove(1)
        }
        other => panic!("{what}: expected a skinny and a tiled launch, got {other:?}"),
    }
}

fn compile(k: &KernelDef) -> (Vec<u8>, f64) {
    let t = Instant::now();
    let cubin = nvrtc::compile_cubin(&k.name, &k.source, "sm_90a", &[]).unwrap_or_else(|e| panic!("{}:\n{e}", k.name));
    (cubin, t.elapsed().as_secs_f64())
}

fn assert_cubin(k: &KernelDef, cubin: &[u8]) {
    assert!(cubin.starts_with(b"\x7fELF"), "{}: not an ELF", k.name);
    assert!(cubin.windows(k.name.len()).any(|w| w == k.name.as_bytes()), "{}: kernel symbol missing", k.name);
}

/// Compiles `kernels` on two threads; returns the seconds each took.
fn compile_all(kernels: &[(String, KernelDef)]) -> Vec<f64> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let times = std::sync::Mutex::new(vec![0.0; kernels.len()]);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((_, k)) = kernels.get(i) else { break };
                let (cubin, secs) = compile(k);
                assert_cubin(k, &cubin);
                times.lock().expect("not poisoned")[i] = secs;
            });
        }
    });
    times.into_inner().expect("not poisoned")
}

#[test]
fn minilm_qmatmuls_lower_and_compile_to_sm90a_cubin() {
    nvrtc::locate().unwrap_or_else(|e| panic!("NVRTC is required (run `scripts/cache.sh nvrtc`): {e}"));
    let mut kernels = Vec::new();
    for c in minilm_cases() {
        let (g, node, lowered) = lower_ir(&c.ir);
        let launch = one_launch(lowered, &c.name);
        let k = &launch.kernel;
        // Arguments: the node's operands in order, then its result, then M = B·S.
        let n = &g.nodes[node];
        let mut want: Vec<Arg> = n.inputs.iter().chain(&n.outputs).map(|&v| Arg::Value(v)).collect();
        want.push(Arg::Scalar(Scalar::Dim(DimExpr::sym("B").mul(DimExpr::sym("S")))));
        want.extend(per_launch_scalars(&g, node));
        assert_eq!(launch.args, want, "{}", c.name);
        assert_eq!(k.params.len(), launch.args.len(), "{}", c.name);
        let m_at = k.params.iter().position(|p| p.name == "M").expect("M");
        assert!(k.params[..m_at].iter().all(|p| p.ty == ParamType::Ptr), "{}", c.name);
        assert!(k.params[m_at + 1..].iter().all(|p| p.ty == ParamType::F32), "{}", c.name);
        assert_eq!((k.params[0].name.as_str(), k.params[1].name.as_str()), ("A", "B"));
        assert_eq!(k.params[m_at - 1].name, "Y");
        assert_eq!(k.params[m_at].ty, ParamType::I32);
        assert!(k.name.starts_with("gemm_") && k.template == "gemm", "{}", k.name);
        assert!(!k.source.contains("{{"), "{}: unsubstituted placeholder", c.name);
        let Op::QMatMul(q) = &n.op else { unreachable!() };
        // Exact FP8 accumulation takes mma.sync; f16/bf16 and the default (promoted) FP8 wgmma.
        let exact_cx = LowerCx { options: LowerOptions { exact_fp8: true, ..LowerOptions::default() }, ..LowerCx::new(&g, 90) };
        let exact = qmatmul::plan(&exact_cx, node).expect("plans").spec;
        let operand = g.ty(n.inputs[0]).dtype;
        let fp8 = operand == DType::F8E4M3;
        assert_eq!(exact.mainloop.is_wgmma(), !fp8, "{}: {exact:?}", c.name);
        let spec = qmatmul::plan(&LowerCx::new(&g, 90), node).expect("plans").spec;
        assert!(spec.mainloop.is_wgmma() && !spec.fast_accum, "{}: {spec:?}", c.name);
        // What each mainloop sums, recorded on the kernel for the plan (bf16 wgmma: not probed).
        let (promoted, f16_tc) =
            (Sums::Promoted { model: TensorCoreModel::H100E4M3, every: 128 }, Sums::TensorCore(TensorCoreModel::H100F16));
        let want = match operand {
            DType::F8E4M3 => Some(promoted),
            DType::F16 => Some(f16_tc),
            _ => None,
        };
        assert_eq!((k.sums, spec.sums()), (want, want), "{}", c.name);
        // mma.sync E4M3 records nothing: the chained f16 model missed 2 to 5 of 178,176 outputs per
        // GEMM on an H100 (session 15), so those GEMMs keep the f32 tolerance check.
        assert_eq!(exact.sums(), if fp8 { None } else { want }, "{}: the exact mainloop records no model", c.name);
        let tiles_n = u64::from(spec.n / spec.tile_n);
        let grid = DimExpr::sym("B").mul(DimExpr::sym("S")).ceil_div(u64::from(spec.tile_m)).mul(DimExpr::Const(tiles_n));
        assert_eq!(k.grid, [grid, DimExpr::Const(1), DimExpr::Const(1)], "{}", c.name);
        assert_eq!(k.block, [spec.threads(), 1, 1]);
        assert!(k.smem_bytes <= gemm::MAX_SMEM_BYTES);
        assert_eq!(q.output.is_some(), k.source.contains("qf_st4_e4m3(Y + mn, y,"), "{}", c.name);
        kernels.push((c.name, k.clone()));
    }
    let times = compile_all(&kernels);
    for ((name, k), t) in kernels.iter().zip(&times) {
        eprintln!("{name:34} {:>6.2} s  {}  grid {}  block {}  smem {}", t, k.name, k.grid[0], k.block[0], k.smem_bytes);
    }
}

/// The grid of the 1536×384 FP8 layer is spelled out once, so the expression's form is pinned.
#[test]
fn grid_and_signature_of_the_mlp_up_projection() {
    let c = minilm_cases().into_iter().find(|c| c.name == "fp8_bias_gelu_quant_1536x384").expect("case");
    let (_, _, lowered) = lower_ir(&c.ir);
    let k = one_launch(lowered, &c.name).kernel;
    assert_eq!(k.grid[0].to_string(), "ceil_div(B*S, 128)*12");
    let params: Vec<&str> = k.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(params, ["A", "B", "add0", "Y", "M", "alpha", "out_scale", "out_rcp"]);
    assert!(k.source.contains(
        "(const uint8_t* __restrict__ A, const uint8_t* __restrict__ B, const uint16_t* __restrict__ add0, uint8_t* __restrict__ Y, int M, \
         float alpha, float out_scale, float out_rcp)"
    ));
    assert!(k.source.contains("qf_st4_e4m3(Y + mn, y, out_scale, out_rcp)"), "the output scale is a parameter");
    assert!(!k.source.contains(&format!("{:#010x}", 0.045479912f32.to_bits())), "the output scale is not compiled in");
    // Exact accumulation (`--fp8-accum exact`): the mma.sync mainloop with 64×128 tiles for N = 1536.
    let exact = one_launch(lower_ir_exact(&c.ir).2, &c.name).kernel;
    assert_eq!(exact.grid[0].to_string(), "ceil_div(B*S, 64)*12");
    assert!(exact.source.contains("Mainloop::MmaSync;"), "exact FP8 accumulation takes mma.sync");
    assert!(k.source.contains("Mainloop::Wgmma;"));
    let c = minilm_cases().into_iter().find(|c| c.name == "fp8_dynamic_bias_residual_384x1536").expect("case");
    let k = one_launch(lower_ir(&c.ir).2, &c.name).kernel;
    // Up to 64·512 rows: 128×128 tiles, two blocks per SM.
    assert_eq!((k.grid[0].to_string().as_str(), k.block[0]), ("ceil_div(B*S, 128)*3", 256));
    let params: Vec<&str> = k.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(params, ["A", "B", "a_scale", "b_scale", "add0", "add1", "Y", "M"]);
    // Up to 32·128 rows: too few 128×128 tiles to fill the GPU, so 64×64.
    let small = c.ir.replace("sym B max=64", "sym B max=32").replace("sym S max=512", "sym S max=128");
    let k = one_launch(lower_ir(&small).2, &c.name).kernel;
    assert_eq!((k.grid[0].to_string().as_str(), k.block[0]), ("ceil_div(B*S, 64)*6", 128));
}

/// The generated CUDA of three canonical kernels; the shared prelude (`common.cuh` +
/// `math.cuh`, edited by other kernels' authors) and the content-hash name are masked.
#[test]
fn generated_source_snapshots() {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    let prelude = qfuse::codegen::prelude();
    for name in ["fp8_bias_gelu_quant_1536x384", "fp8_dynamic_bias_residual_384x1536", "f16_bias_residual_384x1536"] {
        let c = minilm_cases().into_iter().find(|c| c.name == name).expect("case");
        let k = one_launch(lower_ir(&c.ir).2, name).kernel;
        assert!(k.source.contains(&prelude), "{name}: the prelude is inlined");
        let src = k.source.replace(&prelude, "// [prelude: templates/common.cuh + templates/math.cuh]\n").replace(&k.name, "gemm_<hash>");
        settings.bind(|| insta::assert_snapshot!(format!("codegen_gemm__{name}"), src));
    }
}

fn lower_error(ir: &str) -> String {
    let (_, _, lowered) = lower_ir(ir);
    match lowered {
        Err(e) => {
            assert!(e.node.contains("qmatmul") && e.node.contains("loc(\"L\")"), "{e}");
            e.reason
        }
        Ok(l) => panic!("expected an error, got {l:?}"),
    }
}

#[test]
fn unsupported_qmatmuls_give_specific_errors() {
    let bias = "transpose_b, alpha=0.5, acc=f32, epilogue=[cast(f16),add(%2,f16)]";
    // N not a multiple of the smallest N tile.
    let e = lower_error(&graph_text("f8e4m3", "f16", (100, 384), bias, "f16"));
    assert!(e.contains("N = 100 is not a multiple of 64"), "{e}");
    let e = lower_error(&graph_text("f8e4m3", "f16", (48, 32), bias, "f16"));
    assert!(e.contains("N = 48 is not a multiple of 64"), "{e}");
    // K that the 16-byte copies cannot cover.
    let e = lower_error(&graph_text("f8e4m3", "f16", (384, 40), bias, "f16"));
    assert!(e.contains("K = 40 is not a multiple of 16"), "{e}");
    // b is an activation, not a weight.
    let ir = graph_text("f8e4m3", "f16", (384, 384), bias, "f16").replace("%1 = weight @L.weight :", "%1 = input \"w\" :");
    let e = lower_error(&ir);
    assert!(e.contains("b (%1) is not a weight"), "{e}");
    // Operand types the template has no MMA for.
    let e = lower_error(&graph_text("f8e5m2", "f16", (384, 384), bias, "f16"));
    assert!(e.contains("f8e5m2 × f8e5m2 are not supported"), "{e}");
    let e = lower_error(&graph_text("u8", "f16", (384, 384), bias, "f16"));
    assert!(e.contains("u8 × u8 are not supported"), "{e}");
    // An output quantize to another storage.
    let e = lower_error(&graph_text("f8e4m3", "f16", (384, 384), &format!("{bias}, out=u8, out_scale=0.1"), "u8"));
    assert!(e.contains("output quantize to u8 is not supported"), "{e}");
    // INT8 sums that could overflow the s32 accumulators.
    let e = lower_error(&graph_text("i8", "f16", (384, 131_072), bias, "f16"));
    assert!(e.contains("overflow the s32 accumulators"), "{e}");
    // An epilogue operand broadcast the epilogue cannot read: [S, N] against [B, S, N].
    let ir = graph_text("f8e4m3", "f16", (384, 384), "transpose_b, alpha=0.5, acc=f32, epilogue=[cast(f16),add(%7,f16)]", "f16")
        .replace("  %6 = qmatmul", "  %7 = input \"pos\" : f16[S,384]\n  %6 = qmatmul");
    let e = lower_error(&ir);
    assert!(e.contains("(f16[S,384])") && e.contains("does not read"), "{e}");
    // A weight stored [K, N].
    let ir = graph_text("f16", "f16", (384, 384), "alpha=1.0, acc=f16", "f16");
    let e = lower_error(&ir);
    assert!(e.contains("transpose_b"), "{e}");
}

/// Other broadcasts of epilogue operands that the kernel does read: a per-row `[B,S,1]` operand
/// and a single element, in f32; and an f32 output.
#[test]
fn per_row_and_single_element_operands() {
    let ir = graph_text("f8e4m3", "f32", (384, 384), "transpose_b, alpha=0.5, acc=f32, epilogue=[add(%4,f32),add(%7,f32)]", "f32")
        .replace("  %6 = qmatmul", "  %7 = weight @one : f32[1]\n  %6 = qmatmul");
    let (_, _, lowered) = lower_ir(&ir);
    let k = one_launch(lowered, "per-row").kernel;
    assert!(k.source.contains("qf_ldb4_f32(add0 + m, add0_c[u]);"), "per-row operand read at m");
    assert!(k.source.contains("qf_ldb4_f32(add1 + 0, add1_c[u]);"), "single element read at 0");
    assert!(k.source.contains("y[j] = acc * alpha + add0_v + add1_v;"), "alpha is a parameter, not a literal");
    assert!(k.source.contains("int M, float alpha)"));
    assert!(k.source.contains("qf_st4_f32(Y + mn, y);"));
    let (cubin, _) = compile(&k);
    assert_cubin(&k, &cubin);
}

/// INT8 (SmoothQuant W8A8) qmatmuls: i8 × i8 with per-token `a_scale` and per-channel `b_scale`
/// (the dynamic recipe's scales) or a per-tensor `alpha`, the MiniLM epilogues, f16 or i8 output.
fn int8_cases() -> Vec<Case> {
    let dynamic = "transpose_b, alpha=1.0, a_scale=%4, b_scale=%5, acc=f32";
    let mut v = Vec::new();
    for s in MINILM {
        v.push(case("int8_dynamic_bias", "i8", "f16", s, &format!("{dynamic}, epilogue=[cast(f16),add(%2,f16)]"), "f16"));
    }
    v.push(case(
        "int8_dynamic_bias_quant",
        "i8",
        "f16",
        (1536, 384),
        &format!("{dynamic}, epilogue=[cast(f16),add(%2,f16)], out=i8, out_scale=0.05"),
        "i8",
    ));
    v.push(case(
        "int8_bias_gelu_quant",
        "i8",
        "f16",
        (1536, 384),
        "transpose_b, alpha=0.000102653794, acc=f32, epilogue=[cast(f16),add(%2,f16),gelu(f16)], out=i8, out_scale=0.045479912",
        "i8",
    ));
    v.push(case(
        "int8_dynamic_bias_residual",
        "i8",
        "f16",
        (384, 1536),
        &format!("{dynamic}, epilogue=[cast(f16),add(%2,f16),add(%3,f16)]"),
        "f16",
    ));
    v.push(case("int8_plain_f32", "i8", "f32", (4096, 4096), "transpose_b, alpha=0.5, acc=f32", "f32"));
    v
}

#[test]
fn int8_qmatmuls_lower_and_compile_to_sm90a_cubin() {
    nvrtc::locate().unwrap_or_else(|e| panic!("NVRTC is required (run `scripts/cache.sh nvrtc`): {e}"));
    let mut kernels = Vec::new();
    for c in int8_cases() {
        // The FP8 accumulation option does not apply: INT8 always takes mma.sync.
        for (g, node, lowered) in [lower_ir(&c.ir), lower_ir_exact(&c.ir)] {
            let launch = one_launch(lowered, &c.name);
            let spec = qmatmul::plan(&LowerCx::new(&g, 90), node).expect("plans").spec;
            assert_eq!((spec.operand, spec.mainloop), (Operand::I8, Mainloop::MmaSync), "{}", c.name);
            let n = &g.nodes[node];
            let mut want: Vec<Arg> = n.inputs.iter().chain(&n.outputs).map(|&v| Arg::Value(v)).collect();
            want.push(Arg::Scalar(Scalar::Dim(DimExpr::sym("B").mul(DimExpr::sym("S")))));
            want.extend(per_launch_scalars(&g, node));
            assert_eq!(launch.args, want, "{}", c.name);
            let k = launch.kernel;
            assert!(k.source.contains("constexpr Operand OPERAND = Operand::I8;"), "{}", c.name);
            let i8_out = g.ty(n.outputs[0]).dtype == DType::I8;
            assert_eq!(i8_out, k.source.contains("qf_st4_i8(Y + mn, y,"), "{}", c.name);
            assert_eq!(i8_out, k.source.contains("int8_t* __restrict__ Y"), "{}", c.name);
            kernels.push((c.name.clone(), k));
        }
    }
    kernels.dedup_by(|a, b| a.1.name == b.1.name);
    let times = compile_all(&kernels);
    for ((name, k), t) in kernels.iter().zip(&times) {
        eprintln!("{name:34} {:>6.2} s  {}  grid {}  block {}  smem {}", t, k.name, k.grid[0], k.block[0], k.smem_bytes);
    }
}

/// The generated CUDA of the INT8 GEMM with per-token `a_scale`, per-channel `b_scale`, a bias
/// and an i8 output quantize (prelude and hash masked, as in [`generated_source_snapshots`]).
#[test]
fn int8_generated_source_snapshot() {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    let prelude = qfuse::codegen::prelude();
    let name = "int8_dynamic_bias_quant_1536x384";
    let c = int8_cases().into_iter().find(|c| c.name == name).expect("case");
    let k = one_launch(lower_ir_exact(&c.ir).2, name).kernel;
    assert!(
        k.source.contains("y[j] = qf_round_f16(qf_round_f16(acc * a_scale_v * b_scale_v) + add0_v);"),
        "the interpreter's scale order: alpha (1: omitted), a_scale, b_scale, then the f16 steps"
    );
    let src = k.source.replace(&prelude, "// [prelude: templates/common.cuh + templates/math.cuh]\n").replace(&k.name, "gemm_<hash>");
    settings.bind(|| insta::assert_snapshot!(format!("codegen_gemm__{name}"), src));
}

// ---- the template's own specs ----------------------------------------------------------------------

/// Specs that cover both mainloop families, both FP8 tile depths, f16/bf16, fast accumulation,
/// a K that is not a multiple of the k-tile and the MiniLM shapes.
fn specs() -> Vec<GemmSpec> {
    let wgmma_fast = GemmSpec { fast_accum: true, ..GemmSpec::wgmma_for_shape(4096, 4096) };
    vec![
        GemmSpec::for_shape(4096, 4096),
        GemmSpec::for_shape(1536, 384),
        GemmSpec { tile_k: 64, stages: 6, ..GemmSpec::for_shape(384, 1536) },
        GemmSpec::wgmma_for_shape(4096, 4096),
        GemmSpec::wgmma_for_shape(1536, 384),
        GemmSpec::wgmma_for_shape(384, 400),
        GemmSpec { tile_m: 64, warps_m: 4, stages: 4, mainloop: Mainloop::WgmmaWaitGroup, ..GemmSpec::wgmma_for_shape(384, 1536) },
        wgmma_fast,
        GemmSpec::wgmma_f16_for_shape(4096, 4096),
        GemmSpec::wgmma_f16_for_shape(1536, 392),
        GemmSpec { mainloop: Mainloop::WgmmaWaitGroup, ..GemmSpec::wgmma_bf16_for_shape(384, 384) },
        GemmSpec::int8_for_shape(4096, 4096),
        GemmSpec { tile_k: 64, ..GemmSpec::int8_for_shape(384, 400) },
    ]
}

fn render(spec: &GemmSpec) -> Result<KernelDef, GemmError> {
    gemm::render(spec, &Epilogue::bias_f16(0.0123, true), DimExpr::sym("M"))
}

#[test]
fn specs_compile_to_sm90a_cubin() {
    nvrtc::locate().unwrap_or_else(|e| panic!("NVRTC is required (run `scripts/cache.sh nvrtc`): {e}"));
    let kernels: Vec<(String, KernelDef)> =
        specs().iter().map(|s| (format!("{s:?}"), render(s).unwrap_or_else(|e| panic!("{s:?}: {e}")))).collect();
    for ((_, k), s) in kernels.iter().zip(specs()) {
        assert_eq!(k.block, [s.threads(), 1, 1]);
        assert!(k.smem_bytes <= gemm::MAX_SMEM_BYTES);
    }
    compile_all(&kernels);
}

#[test]
fn rendering_is_deterministic_and_names_differ() {
    let specs = specs();
    let names: Vec<String> = specs.iter().map(|s| render(s).expect("renders").name).collect();
    let again: Vec<String> = specs.iter().map(|s| render(s).expect("renders").name).collect();
    assert_eq!(names, again);
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "{names:?}");
}

fn invalid(spec: GemmSpec, needle: &str) {
    match render(&spec) {
        Err(GemmError::Invalid { reason, .. }) => {
            assert!(reason.contains(needle), "{spec:?}: `{reason}` lacks `{needle}`")
        }
        other => panic!("{spec:?}: expected Invalid containing `{needle}`, got {other:?}"),
    }
}

#[test]
fn invalid_specs_are_errors() {
    let base = GemmSpec::for_shape(4096, 4096);
    let wg = GemmSpec::wgmma_for_shape(4096, 4096);
    invalid(GemmSpec { n: 4000, ..base }, "does not divide n");
    invalid(GemmSpec { k: 4008, ..base }, "not a multiple of 16 elements");
    invalid(GemmSpec { k: 4004, ..GemmSpec::wgmma_f16_for_shape(4096, 4096) }, "not a multiple of 8 elements");
    invalid(GemmSpec { tile_k: 96, ..base }, "not 64 or 128");
    invalid(GemmSpec { stages: 8, ..base }, "exceed");
    invalid(GemmSpec { stages: 1, ..base }, "at least 2");
    invalid(GemmSpec { warps_m: 0, ..base }, "positive");
    invalid(GemmSpec { warps_m: 1, warps_n: 1, ..base }, "128 f32 accumulators");
    invalid(GemmSpec { tile_m: 120, ..base }, "multiple of 16x16");
    invalid(GemmSpec { fast_accum: true, ..base }, "wgmma only");
    invalid(GemmSpec { operand: Operand::F16, tile_k: 64, ..base }, "8-bit operands only");
    invalid(GemmSpec { operand: Operand::I8, ..wg }, "mma.sync mainloop");
    invalid(GemmSpec { k: gemm::MAX_I8_K + 1, ..GemmSpec::int8_for_shape(4096, 4096) }, "overflow the s32 accumulators");
    GemmSpec { k: gemm::MAX_I8_K - 15, ..GemmSpec::int8_for_shape(4096, 4096) }.validate().expect("the largest INT8 K");
    invalid(GemmSpec { fast_accum: true, ..GemmSpec::wgmma_f16_for_shape(4096, 4096) }, "FP8 option");
    invalid(GemmSpec { tile_k: 128, ..GemmSpec::wgmma_f16_for_shape(4096, 4096) }, "not 64 or 128");
    invalid(GemmSpec { stages: 6, ..wg }, "exceed");
    invalid(GemmSpec { warps_m: 4, tile_n: 128, ..wg }, "whole warpgroups");
    invalid(GemmSpec { ctas_per_sm: 2, ..wg }, "do not fit a budget");
    invalid(GemmSpec { stages: 4, ..GemmSpec::wgmma_for_shape(1536, 384) }, "per SM");
    invalid(GemmSpec { tile_k: 64, ..wg }, "128-byte k-tiles");
    invalid(GemmSpec { stages: 2, ..wg }, "at least 3 stages");
    invalid(GemmSpec { tile_n: 192, stages: 4, fast_accum: true, ..GemmSpec::wgmma_for_shape(384, 4096) }, "64, 128 or 256");
    let e = GemmSpec::for_shape(4096, 4096).check_m(u64::from(u32::MAX)).expect_err("M too large");
    assert!(e.to_string().contains("too large"), "{e}");
    GemmSpec::for_shape(4096, 4096).check_m(0).expect("M = 0 is valid (no launch)");
}
