//! Fused attention code generation: `attention` nodes (parsed from IR text) → CUDA C (snapshot of
//! the MiniLM f16 kernel) → `sm_90a` CUBIN through NVRTC, plus the errors for unsupported cases.
//! No GPU needed; NVRTC is (these tests fail, never skip, without it: the project's test command
//! runs `scripts/cache.sh nvrtc` first).

use qfuse::codegen::kernel::{Arg, KernelDef, LowerCx, Lowered};
use qfuse::codegen::nvrtc;
use qfuse::codegen::ops::attention::{self, AttentionError, AttentionSpec, OutKind};
use qfuse::ir::{self, DType, Graph, NodeId};
use qfuse::plan::{DimExpr, ParamType, Scalar};

/// 1/√32 rounded to f16 (exactly representable, as the verifier requires).
const SCALE_D32: &str = "0.17675781";

/// A graph with one `attention` node over `dtype[B, S, width]` operands (`B ≤ 8`, `S ≤ 512`).
fn graph(dtype: &str, width: u64, attrs: &str, mask: bool, out: &str) -> Graph {
    let mask_line = if mask { format!("  %3 = input \"mask\" : {dtype}[B,S]\n") } else { String::new() };
    let mask_attr = if mask { ", mask=%3" } else { "" };
    let text = format!(
        "graph \"attn\" {{\n  sym B max=8\n  sym S max=512\n  %0 = input \"q\" : {dtype}[B,S,{width}]\n  %1 = input \"k\" : \
         {dtype}[B,S,{width}]\n  %2 = input \"v\" : {dtype}[B,S,{width}]\n{mask_line}  %4 = attention %0, %1, %2 {{{attrs}{mask_attr}}} \
         : {out}[B,S,{width}] loc(\"layer.0.attention\")\n  return \"o\" = %4\n}}\n"
    );
    ir::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn attention_node(g: &Graph) -> NodeId {
    g.nodes.iter().find(|(_, n)| n.op.mnemonic() == "attention").map(|(id, _)| id).expect("an attention node")
}

/// The five per-launch `f32`s an attention must get, from its payload: qk_alpha, p_scale,
/// RN(1 / p_scale), pv_alpha (0 without `fp8(...)`) and the output quantize's scale (0 without).
fn per_launch_scalars(op: &ir::Op) -> [f32; 5] {
    let ir::Op::Attention(a) = op else { panic!("not an attention") };
    let (qk, ps, pv) = a.fp8.map_or((0.0, 0.0, 0.0), |f| (f.qk_alpha, f.p_scale, f.pv_alpha));
    let out = match a.output.as_ref().map(|o| o.scale.clone()) {
        Some(ir::ScaleSource::Literal(s)) => s,
        _ => 0.0,
    };
    [qk, ps, if ps == 0.0 { 0.0 } else { 1.0 / ps }, pv, out]
}

/// Lowers the graph's attention node for sm_90 and returns its single launch's kernel, checking
/// the launch arguments against the node.
fn lower(g: &Graph) -> KernelDef {
    let node = attention_node(g);
    let cx = LowerCx::new(g, 90);
    let lowered = attention::lower(&cx, node).unwrap_or_else(|e| panic!("{e}"));
    let Lowered::Launches(launches) = lowered else { panic!("expected launches, got {lowered:?}") };
    assert_eq!(launches.len(), 1);
    let l = &launches[0];
    let n = &g.nodes[node];
    let mut want: Vec<Arg> = n.inputs.iter().map(|&v| Arg::Value(v)).collect();
    want.push(Arg::Value(n.outputs[0]));
    want.push(Arg::Scalar(Scalar::Dim(DimExpr::sym("S"))));
    want.extend(per_launch_scalars(&n.op).map(|v| Arg::Scalar(Scalar::F32(v))));
    assert_eq!(l.args, want);
    assert!(l.kernel.params[l.kernel.params.len() - 5..].iter().all(|p| p.ty == ParamType::F32));
    assert_eq!(l.kernel.params.len(), l.args.len());
    l.kernel.clone()
}

/// Resource usage of `kernel` read from a CUBIN's `.nv.info` section (NVRTC has no `-Xptxas -v`
/// report): `(registers, local frame bytes, minimum stack bytes)`. The section is a list of
/// `(format, attribute)` records; for `EIATTR_REGCOUNT` (0x2f), `EIATTR_FRAME_SIZE` (0x11) and
/// `EIATTR_MIN_STACK_SIZE` (0x12) the payload is `(function symbol index, value)`, and the
/// function's symbol index is the `sh_info` of its `.text.<kernel>` section.
fn cubin_usage(cubin: &[u8], kernel: &str) -> (u32, u32, u32) {
    let u16_at = |o: usize| u16::from_le_bytes(cubin[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(cubin[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(cubin[o..o + 8].try_into().unwrap()) as usize;
    assert_eq!(&cubin[..5], b"\x7fELF\x02", "64-bit ELF expected");
    let (shoff, shentsize, shnum, shstrndx) = (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let sh = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(sh(shstrndx) + 0x18);
    let name_of = |i: usize| {
        let start = strtab + u32_at(sh(i)) as usize;
        let end = start + cubin[start..].iter().position(|&b| b == 0).unwrap();
        String::from_utf8_lossy(&cubin[start..end]).into_owned()
    };
    let text = (0..shnum).find(|&i| name_of(i) == format!(".text.{kernel}")).expect("kernel text section");
    let sym = u32_at(sh(text) + 0x2c);
    let info = (0..shnum).find(|&i| name_of(i) == ".nv.info").expect(".nv.info section");
    let (off, size) = (u64_at(sh(info) + 0x18), u64_at(sh(info) + 0x20));
    let (mut regs, mut frame, mut stack) = (None, 0, 0);
    let mut p = off;
    while p + 4 <= off + size {
        let (format, attr) = (cubin[p], cubin[p + 1]);
        let len = if format == 0x04 { u16_at(p + 2) } else { 0 };
        if format == 0x04 && len == 8 && u32_at(p + 4) == sym {
            let value = u32_at(p + 8);
            match attr {
                0x2f => regs = Some(value),
                0x11 => frame = value,
                0x12 => stack = value,
                _ => {}
            }
        }
        p += 4 + len;
    }
    (regs.expect("EIATTR_REGCOUNT for the kernel"), frame, stack)
}

fn compile(k: &KernelDef) -> Vec<u8> {
    nvrtc::locate().unwrap_or_else(|e| panic!("NVRTC is required (run `scripts/cache.sh nvrtc`): {e}"));
    assert!(!k.source.contains("{{"), "unsubstituted placeholder");
    let cubin = nvrtc::compile_cubin(&k.name, &k.source, "sm_90a", &[]).unwrap_or_else(|e| panic!("{}:\n{e}", k.name));
    assert!(cubin.starts_with(b"\x7fELF"), "{}: not an ELF", k.name);
    assert!(cubin.windows(k.name.len()).any(|w| w == k.name.as_bytes()), "{}: kernel symbol missing", k.name);
    let (regs, frame, stack) = cubin_usage(&cubin, &k.name);
    eprintln!("{}: {regs} registers, {frame} bytes local frame, {stack} bytes stack, {} bytes dynamic smem", k.name, k.smem_bytes);
    assert!(regs > 0 && regs <= 255, "{}: {regs} registers", k.name);
    assert_eq!((frame, stack), (0, 0), "{}: spills to local memory", k.name);
    cubin
}

fn minilm_f16() -> Graph {
    graph("f16", 384, &format!("heads=12, scale={SCALE_D32}"), true, "f16")
}

#[test]
fn minilm_f16_lowers_and_compiles() {
    let k = lower(&minilm_f16());
    assert_eq!(k.template, "attention");
    assert!(k.name.starts_with("attention_") && k.name.len() == "attention_".len() + 16, "{}", k.name);
    assert_eq!(k.grid, [DimExpr::sym("S").ceil_div(64), DimExpr::Const(12), DimExpr::sym("B")]);
    assert_eq!(k.block, [128, 1, 1]);
    assert_eq!(k.smem_bytes, 5 * 64 * 32 * 2);
    let names: Vec<(&str, ParamType)> = k.params.iter().map(|p| (p.name.as_str(), p.ty)).collect();
    assert_eq!(
        names,
        [
            ("q", ParamType::Ptr),
            ("k", ParamType::Ptr),
            ("v", ParamType::Ptr),
            ("mask_bias", ParamType::Ptr),
            ("out", ParamType::Ptr),
            ("S", ParamType::I32),
            ("qk_alpha", ParamType::F32),
            ("p_scale", ParamType::F32),
            ("p_rcp", ParamType::F32),
            ("pv_alpha", ParamType::F32),
            ("out_scale", ParamType::F32)
        ]
    );
    // The score scale, bit-exact, and the mask.
    assert!(k.source.contains("constexpr bool HAS_SCALE = true;"));
    assert!(k.source.contains("constexpr uint32_t SCALE_BITS = 0x3e350000u;"));
    assert!(k.source.contains("constexpr bool HAS_MASK = true;"));
    compile(&k);
}

#[test]
fn minilm_e4m3_output_compiles() {
    let g = graph("f16", 384, &format!("heads=12, scale={SCALE_D32}, out=f8e4m3, out_scale=0.0078125"), true, "f8e4m3");
    let k = lower(&g);
    assert!(k.source.contains("constexpr bool QUANT_OUT = true;"));
    assert!(!k.source.contains("0x3c000000"), "the output scale is a launch argument, not compiled in");
    assert_ne!(k.name, lower(&minilm_f16()).name);
    let other_scale = graph("f16", 384, &format!("heads=12, scale={SCALE_D32}, out=f8e4m3, out_scale=0.25"), true, "f8e4m3");
    assert_eq!(k, lower(&other_scale), "layers that differ only in their output scale share one kernel");
    compile(&k);
}

#[test]
fn minilm_i8_output_compiles() {
    let g = graph("f16", 384, &format!("heads=12, scale={SCALE_D32}, out=i8, out_scale=0.0078125"), true, "i8");
    let k = lower(&g);
    assert!(k.source.contains("constexpr bool QUANT_OUT = true;") && k.source.contains("constexpr bool OUT_I8 = true;"));
    let e4m3 = graph("f16", 384, &format!("heads=12, scale={SCALE_D32}, out=f8e4m3, out_scale=0.0078125"), true, "f8e4m3");
    assert_ne!(k.name, lower(&e4m3).name);
    compile(&k);
}

#[test]
fn head_dims_64_and_128_compile() {
    // D = 64, no scale, no mask.
    let k64 = lower(&graph("f16", 512, "heads=8", false, "f16"));
    assert_eq!(k64.smem_bytes, 5 * 64 * 64 * 2);
    assert_eq!(k64.params.len(), 5 + 5, "q, k, v, out, S and the five per-launch scales");
    assert!(k64.source.contains("constexpr bool HAS_SCALE = false;") && k64.source.contains("constexpr bool HAS_MASK = false;"));
    compile(&k64);
    // D = 128 with scale and mask, and its bf16 and e4m3-output variants.
    let k128 = lower(&graph("f16", 1536, "heads=12, scale=0.08837890625", true, "f16"));
    assert_eq!(k128.smem_bytes, 5 * 64 * 128 * 2);
    assert_eq!(k128.grid[1], DimExpr::Const(12));
    compile(&k128);
    let bf = lower(&graph("bf16", 1536, "heads=12, scale=0.08837890625", true, "bf16"));
    assert!(bf.source.contains("constexpr bool BF16 = true;"));
    assert!(bf.source.contains("constexpr uint32_t SCALE_BITS = 0x3db50000u;"));
    compile(&bf);
    compile(&lower(&graph("f16", 256, "heads=2, out=f8e4m3, out_scale=0.25", true, "f8e4m3")));
}

/// An FP8 attention (`--fp8-attention`): E4M3 q, k, v of `width` with f16 scores and mask.
fn fp8_graph(width: u64, heads: u32, out: &str) -> Graph {
    let out_attrs = if out == "f8e4m3" { ", out=f8e4m3, out_scale=0.0070277625" } else { "" };
    let text = format!(
        "graph \"attn\" {{\n  sym B max=8\n  sym S max=512\n  %0 = input \"q\" : f8e4m3[B,S,{width}]\n  %1 = input \"k\" : \
         f8e4m3[B,S,{width}]\n  %2 = input \"v\" : f8e4m3[B,S,{width}]\n  %3 = input \"mask\" : f16[B,S]\n  %4 = attention %0, %1, %2 \
         {{heads={heads}, mask=%3, fp8(qk_alpha=0.00082239875,p_scale=0.002232143,pv_alpha=1.8187933e-5,via=f16){out_attrs}}} : \
         {out}[B,S,{width}] loc(\"layer.0.attention\")\n  return \"o\" = %4\n}}\n"
    );
    ir::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn fp8_operands_lower_and_compile_for_every_head_size() {
    let k = lower(&fp8_graph(384, 12, "f8e4m3"));
    assert_eq!(k.smem_bytes, 6 * 64 * 32, "E4M3 tiles are one byte an element, plus V^T");
    for line in ["constexpr bool FP8 = true;", "constexpr bool QUANT_OUT = true;", "float qk_alpha, float p_scale, float p_rcp,"] {
        assert!(k.source.contains(line), "{line}");
    }
    for bits in ["0x3a57963f", "0x3b124925", "0x3798924a"] {
        assert!(!k.source.contains(bits), "{bits}: the FP8 scales are launch arguments, not compiled in");
    }
    assert_ne!(k.name, lower(&graph("f16", 384, "heads=12, out=f8e4m3, out_scale=0.0070277625", true, "f8e4m3")).name);
    compile(&k);
    for (heads, d) in [(6, 64), (3, 128)] {
        let k = lower(&fp8_graph(384, heads, "f16"));
        assert_eq!(k.smem_bytes, 6 * 64 * d);
        compile(&k);
    }
}

#[test]
fn fp8_operands_need_fp8_and_sm89() {
    let e = lower_err(&graph("f8e4m3", 384, "heads=12", false, "f8e4m3"));
    assert!(e.contains("quantized operands (f8e4m3) are not supported"), "{e}");
    let g = fp8_graph(384, 12, "f16");
    let e = match attention::lower(&LowerCx::new(&g, 80), attention_node(&g)) {
        Err(e) => e.to_string(),
        Ok(l) => panic!("expected an error, got {l:?}"),
    };
    assert!(e.contains("FP8 attention needs sm_89 or newer"), "{e}");
    let e = lower_err(&fp8_graph(384, 8, "f16"));
    assert!(e.contains("head size 48 is not one of [32, 64, 128]"), "{e}");
}

#[test]
fn generated_source_snapshot() {
    let k = lower(&minilm_f16());
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| insta::assert_snapshot!("codegen_attention__minilm_f16_h12_d32_mask_scale", k.source));
    let fp8 = lower(&fp8_graph(384, 12, "f8e4m3"));
    settings.bind(|| insta::assert_snapshot!("codegen_attention__minilm_fp8_operands_h12_d32_mask_quant", fp8.source));
}

#[test]
fn rendering_is_deterministic_and_specific() {
    let a = lower(&minilm_f16());
    assert_eq!(a, lower(&minilm_f16()));
    let unmasked = lower(&graph("f16", 384, &format!("heads=12, scale={SCALE_D32}"), false, "f16"));
    let d64 = lower(&graph("f16", 384, "heads=6", true, "f16"));
    let names = [&a.name, &unmasked.name, &d64.name];
    assert!(names[0] != names[1] && names[1] != names[2] && names[0] != names[2], "{names:?}");
}

fn lower_err(g: &Graph) -> String {
    let cx = LowerCx::new(g, 90);
    match attention::lower(&cx, attention_node(g)) {
        Err(e) => e.to_string(),
        Ok(l) => panic!("expected an error, got {l:?}"),
    }
}

#[test]
fn unsupported_head_size_is_an_error() {
    // 384 / 8 = 48.
    let e = lower_err(&graph("f16", 384, "heads=8", false, "f16"));
    assert!(e.contains("head size 48 is not one of [32, 64, 128]"), "{e}");
    assert!(e.contains("attention loc(\"layer.0.attention\")"), "{e}");
    let e = lower_err(&graph("f16", 384, "heads=24", false, "f16"));
    assert!(e.contains("head size 16 is not one of"), "{e}");
}

#[test]
fn quantized_operands_are_an_error() {
    // The verifier rejects this graph too; lowering must not rely on it.
    let e = lower_err(&graph("f8e4m3", 384, "heads=12", false, "f8e4m3"));
    assert!(e.contains("quantized operands (f8e4m3) are not supported"), "{e}");
    let e = lower_err(&graph("i8", 384, "heads=12", false, "i8"));
    assert!(e.contains("quantized operands (i8) are not supported"), "{e}");
    let e = lower_err(&graph("f32", 384, "heads=12", false, "f32"));
    assert!(e.contains("dtype f32 are not supported"), "{e}");
}

#[test]
fn spec_errors() {
    let base = AttentionSpec { head_dim: 32, heads: 12, scale: None, mask: false, out: OutKind::Same, dtype: DType::F16, fp8: None };
    let err = |s: AttentionSpec| match attention::kernel(&s, DimExpr::sym("B"), DimExpr::sym("S")) {
        Err(AttentionError::Unsupported(r)) => r,
        other => panic!("{s:?}: expected Unsupported, got {other:?}"),
    };
    assert!(err(AttentionSpec { head_dim: 96, ..base }).contains("head size 96"));
    assert!(err(AttentionSpec { dtype: DType::F8E5M2, ..base }).contains("quantized operands (f8e5m2)"));
    assert!(err(AttentionSpec { heads: 0, ..base }).contains("0 heads"));
    assert!(err(AttentionSpec { scale: Some(f32::NAN), ..base }).contains("not finite"));
    assert!(err(AttentionSpec { out: OutKind::E4M3 { scale: 0.0 }, ..base }).contains("finite and positive"));
    let fp8 = ir::AttentionFp8 { qk_alpha: 1e-3, p_scale: 0.0, pv_alpha: 1e-5, compute: DType::F16 };
    assert!(err(AttentionSpec { fp8: Some(fp8), ..base }).contains("p_scale 0 must be finite and positive"));
    let k = attention::kernel(&base, DimExpr::Const(2), DimExpr::Const(100)).expect("valid");
    assert_eq!(k.grid, [DimExpr::Const(2), DimExpr::Const(12), DimExpr::Const(2)]);
}

#[test]
fn unsupported_output_quantization_is_an_error() {
    let g = graph("f16", 384, "heads=12, out=f8e5m2, out_scale=0.5", false, "f8e5m2");
    let e = lower_err(&g);
    assert!(e.contains("output quantization to f8e5m2 is not supported"), "{e}");
}
