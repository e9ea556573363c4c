//! Code generation of the non-GEMM ops (src/codegen/ops): IR text → lowering through the
//! dispatcher → CUDA C → `sm_90a` CUBIN with NVRTC; snapshots of canonical kernels; specific
//! errors for unsupported variants. No GPU needed; NVRTC is (these tests fail, never skip,
//! without it: the project's test command runs `scripts/cache.sh nvrtc` first).

use std::collections::BTreeMap;

use qfuse::codegen::kernel::{Arg, Launch, LowerCx, Lowered};
use qfuse::codegen::nvrtc;
use qfuse::codegen::ops::lower_node;
use qfuse::ir::{self, Graph, NodeId, Op};
use qfuse::plan::Scalar;

const OPS_CUH: &str = include_str!("../templates/ops.cuh");

fn parse(text: &str) -> Graph {
    ir::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Every node's lowering, by node.
fn lower(g: &Graph) -> Vec<(NodeId, Result<Lowered, String>)> {
    let cx = LowerCx::new(g, 90);
    (0..g.nodes.len()).map(NodeId::from).map(|n| (n, lower_node(&cx, n).map_err(|e| e.to_string()))).collect()
}

/// The launches of every node, panicking on any error.
fn launches(g: &Graph) -> Vec<(NodeId, Launch)> {
    let mut out = Vec::new();
    for (n, r) in lower(g) {
        match r.unwrap_or_else(|e| panic!("{e}")) {
            Lowered::Launches(ls) => out.extend(ls.into_iter().map(|l| (n, l))),
            Lowered::Alias(_) | Lowered::Nothing => {}
        }
    }
    out
}

/// Every launch of the graph, in node order.
fn all_launches(g: &Graph) -> Vec<Launch> {
    launches(g).into_iter().map(|(_, l)| l).collect()
}

/// The launches of one node (the first with that mnemonic).
fn node_launches(g: &Graph, mnemonic: &str) -> Vec<Launch> {
    let cx = LowerCx::new(g, 90);
    let node = (0..g.nodes.len()).map(NodeId::from).find(|&n| g.nodes[n].op.mnemonic() == mnemonic).expect("node");
    match lower_node(&cx, node).unwrap_or_else(|e| panic!("{e}")) {
        Lowered::Launches(ls) => ls,
        other => panic!("{mnemonic}: {other:?}"),
    }
}

/// Compiles each distinct kernel once, checking the launch metadata against the source.
fn compile(ls: &[Launch]) -> usize {
    nvrtc::locate().unwrap_or_else(|e| panic!("NVRTC is required (run `scripts/cache.sh nvrtc`): {e}"));
    let mut seen = BTreeMap::new();
    for l in ls {
        let k = &l.kernel;
        assert_eq!(l.args.len(), k.params.len(), "{}", k.name);
        assert!(!k.source.contains("{{"), "{}: unsubstituted placeholder", k.name);
        if let Some(prev) = seen.insert(k.name.clone(), k.source.clone()) {
            assert_eq!(prev, k.source, "{}: two sources under one name", k.name);
            continue;
        }
        // Every parameter is named in the signature, in order.
        let sig_start = k.source.find(&format!("{}(", k.name)).unwrap_or_else(|| panic!("{}: entry point missing", k.name));
        let sig = &k.source[sig_start..k.source[sig_start..].find(')').map(|e| sig_start + e).expect("signature")];
        let mut at = 0;
        for p in &k.params {
            let pos =
                sig[at..].find(&format!(" {}", p.name)).unwrap_or_else(|| panic!("{}: parameter {} out of order in {sig}", k.name, p.name));
            at += pos + 1;
        }
        let cubin = nvrtc::compile_cubin(&k.name, &k.source, "sm_90a", &[]).unwrap_or_else(|e| panic!("{e}"));
        assert!(cubin.starts_with(b"\x7fELF"), "{}: not an ELF", k.name);
        assert!(cubin.windows(k.name.len()).any(|w| w == k.name.as_bytes()), "{}: kernel symbol missing", k.name);
    }
    seen.len()
}

/// A launch as reviewable text: metadata, then the source without the shared preamble.
fn describe(g: &Graph, l: &Launch) -> String {
    let k = &l.kernel;
    let mut s =
        format!("kernel {}\ngrid [{}, {}, {}]  block {:?}  smem {}\n", k.name, k.grid[0], k.grid[1], k.grid[2], k.block, k.smem_bytes);
    for (p, a) in k.params.iter().zip(&l.args) {
        let arg = match a {
            Arg::Value(v) => {
                let dims: Vec<String> = g
                    .ty(*v)
                    .shape
                    .iter()
                    .map(|d| match d {
                        ir::Dim::Fixed(n) => n.to_string(),
                        ir::Dim::Sym(s) => g.symbols[*s].name.clone(),
                    })
                    .collect();
                format!("%{} : {}[{}]", v.index(), g.ty(*v).dtype, dims.join(","))
            }
            Arg::Scalar(Scalar::Dim(e)) => format!("dim {e}"),
            Arg::Scalar(other) => format!("{other:?}"),
            Arg::KvPool(i) => format!("pages of state {i}"),
            Arg::PageTable => "page table".into(),
            Arg::SplitScratch { bytes, counters } => format!("split scratch ({bytes} bytes, {counters} of counters)"),
        };
        s.push_str(&format!("  {:<10} {:<4?} <- {arg}\n", p.name, p.ty));
    }
    let body =
        k.source.replace(&qfuse::codegen::prelude(), "// {{prelude}} (common.cuh, math.cuh)").replace(OPS_CUH, "// {{ops}} (ops.cuh)");
    s.push_str("----\n");
    s.push_str(&body);
    s
}

fn snapshot(name: &str, text: String) {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| insta::assert_snapshot!(format!("codegen_ops__{name}"), text));
}

/// MiniLM-like graph, static FP8: every non-GEMM op kind of the fused pipeline and its unfused
/// pieces (gathers, iota, adds).
const BERT_STATIC: &str = r#"
graph "ops_static" {
  sym B max=64
  sym S max=512
  %0 = input "input_ids" : i64[B,S]
  %1 = input "attention_mask" : i64[B,S]
  %2 = input "token_type_ids" : i64[B,S]
  %3 = weight @word : f16[30522,384]
  %4 = weight @pos : f16[512,384]
  %5 = weight @type : f16[2,384]
  %6 = weight @ln.w : f16[384]
  %7 = weight @ln.b : f16[384]
  %8, %9 = embed_layernorm %0, %2, %3, %4, %5, %6, %7 {eps=1e-12, via=f16, keep_normed=true, f8e4m3, per_tensor, scale=0.016034808} : f8e4m3[B,S,384], f16[B,S,384] loc("embeddings")
  %10 = scalar 1.0 : f16[] loc("attention_mask")
  %11 = cast %1 : f16[B,S] loc("attention_mask")
  %12 = sub %10, %11 : f16[B,S] loc("attention_mask")
  %13 = scalar -65504.0 : f16[] loc("attention_mask")
  %14 = mul %12, %13 : f16[B,S] loc("attention_mask")
  %15 = reshape %14 : f16[B,1,1,S]
  %16 = input "scores" : f16[B,12,S,S]
  %17 = scalar 0.1767578125 : f16[]
  %18 = mul %16, %17 : f16[B,12,S,S]
  %19 = add %18, %15 : f16[B,12,S,S]
  %20 = softmax %19 {axis=-1} : f16[B,12,S,S]
  %21 = input "ctx" : f16[B,12,S,32]
  %22 = quantize %21 {f8e4m3, per_tensor, scale=0.0070277625} : f8e4m3[B,12,S,32]
  %23 = transpose %22 {perm=[0,2,1,3]} : f8e4m3[B,S,12,32]
  %24 = reshape %23 : f8e4m3[B,S,384]
  %25 = input "proj" : f16[B,S,384]
  %26 = reshape %25 : f16[B,S,12,32]
  %27 = transpose %26 {perm=[0,2,1,3]} : f16[B,12,S,32]
  %28 = input "resid" : f16[B,S,384]
  %29, %30 = layernorm_quantize %28, %6, %7 {eps=1e-12, via=f16, keep_normed=true, f8e4m3, per_tensor, scale=0.063546315} : f8e4m3[B,S,384], f16[B,S,384] loc("encoder.layer.0.attention.output.LayerNorm")
  %31 = weight @bias : f16[1536]
  %32 = input "ffn" : f16[B,S,1536]
  %33 = add %32, %31 : f16[B,S,1536]
  %34 = gelu %33 : f16[B,S,1536]
  %35 = layernorm %28, %6, %7 {eps=1e-12} : f16[B,S,384] loc("encoder.layer.5.output.LayerNorm")
  %36 = mean_pool %35, %1 : f16[B,384] loc("pooling")
  %37 = l2_normalize %36 {eps=1e-12} : f16[B,384] loc("normalize")
  %38 = gather %3, %0 : f16[B,S,384]
  %39 = iota : i64[S]
  %40 = gather %4, %39 : f16[S,384]
  %41 = add %38, %40 : f16[B,S,384]
  %42 = gather %5, %2 : f16[B,S,384]
  %43 = add %41, %42 : f16[B,S,384]
  return "q" = %8, "n" = %9, "p" = %20, "t" = %24, "h" = %27, "q2" = %29, "n2" = %30, "g" = %34, "e" = %37, "x" = %43
}
"#;

/// Dynamic per-token FP8 and other quantization variants.
const BERT_DYNAMIC: &str = r#"
graph "ops_dynamic" {
  sym B max=64
  sym S max=512
  %0 = input "input_ids" : i64[B,S]
  %1 = input "token_type_ids" : i64[B,S]
  %2 = weight @word : f16[30522,384]
  %3 = weight @pos : f16[512,384]
  %4 = weight @type : f16[2,384]
  %5 = weight @ln.w : f16[384]
  %6 = weight @ln.b : f16[384]
  %7, %8, %9 = embed_layernorm %0, %1, %2, %3, %4, %5, %6 {eps=1e-12, via=f16, keep_normed=true, f8e4m3, per_token, scale=dynamic(f32)} : f8e4m3[B,S,384], f32[B,S,1], f16[B,S,384] loc("embeddings")
  %10 = embed_layernorm %0, %1, %2, %3, %4, %5, %6 {eps=1e-12, via=f16} : f16[B,S,384] loc("embeddings_plain")
  %11 = input "x" : f16[B,S,384]
  %12, %13, %14 = layernorm_quantize %11, %5, %6 {eps=1e-12, via=f16, keep_normed=true, f8e4m3, per_token, scale=dynamic(f32)} : f8e4m3[B,S,384], f32[B,S,1], f16[B,S,384]
  %15 = input "ffn" : f16[B,S,1536]
  %16, %17 = quantize %15 {f8e4m3, per_token, scale=dynamic(f32)} : f8e4m3[B,S,1536], f32[B,S,1] loc("encoder.layer.0.output.dense:a.q")
  %18 = input "wide" : f32[B,4096]
  %19 = weight @g4096 : f32[4096]
  %20, %21 = rmsnorm_quantize %18, %19 {eps=1e-6, via=bf16, f8e5m2, per_token, scale=dynamic(f32)} : f8e5m2[B,4096], f32[B,1]
  %22 = rmsnorm_quantize %18, %19 {eps=1e-6, via=f16, i8, per_tensor, scale=0.02} : i8[B,4096]
  %23 = weight @g33 : bf16[33]
  %24 = input "odd" : bf16[B,33]
  %25 = rmsnorm %24, %23 {eps=1e-6} : bf16[B,33]
  %26 = input "seqrow" : f32[B,S]
  %27 = softmax %26 {axis=-1} : f32[B,S]
  %28 = weight @gs : f32[8]
  %29 = input "s8" : f16[B,8]
  %30 = weight @s8.scale : f32[]
  %31 = layernorm_quantize %29, %28, %28 {eps=1e-5, via=f16, u8, per_tensor, scale=%30, zero=128} : u8[B,8]
  return "q" = %7, "s" = %8, "n" = %9, "e" = %10, "q2" = %12, "s2" = %13, "n2" = %14, "q3" = %16, "s3" = %17, "q4" = %20, "s4" = %21, "q5" = %22, "r" = %25, "sm" = %27, "q6" = %31
}
"#;

/// INT8 (SmoothQuant) row kernels, i8 static and dynamic per token (also after a SmoothQuant
/// multiply: `scale_quantize`), and dynamic block quantize
/// along the last axis: FP8 1×128 groups with f32 scales (also a ragged last block) and NVFP4
/// (E2M1 codes packed two per byte, blocks of 16, E4M3 scales).
const INT8_BLOCK: &str = r#"
graph "ops_int8_block" {
  sym B max=64
  sym S max=512
  %0 = input "input_ids" : i64[B,S]
  %1 = input "token_type_ids" : i64[B,S]
  %2 = weight @word : f16[30522,384]
  %3 = weight @pos : f16[512,384]
  %4 = weight @type : f16[2,384]
  %5 = weight @ln.w : f16[384]
  %6 = weight @ln.b : f16[384]
  %7, %8 = embed_layernorm %0, %1, %2, %3, %4, %5, %6 {eps=1e-12, via=f16, i8, per_token, scale=dynamic(f32)} : i8[B,S,384], f32[B,S,1]
  %9 = embed_layernorm %0, %1, %2, %3, %4, %5, %6 {eps=1e-12, via=f16, i8, per_tensor, scale=0.03} : i8[B,S,384]
  %10 = input "x" : f16[B,S,384]
  %11, %12 = layernorm_quantize %10, %5, %6 {eps=1e-12, via=f16, i8, per_token, scale=dynamic(f32)} : i8[B,S,384], f32[B,S,1]
  %13 = rmsnorm_quantize %10, %5 {eps=1e-6, via=f16, i8, per_tensor, scale=0.02} : i8[B,S,384]
  %14 = input "ffn" : f16[B,S,1536]
  %15, %16 = quantize %14 {i8, per_token, scale=dynamic(f32)} : i8[B,S,1536], f32[B,S,1]
  %17 = quantize %14 {i8, per_tensor, scale=0.05} : i8[B,S,1536]
  %18, %19 = quantize %14 {f8e4m3, block(-1:128), scale=dynamic(f32)} : f8e4m3[B,S,1536], f32[B,S,12]
  %20, %21 = quantize %14 {f4e2m1, block(-1:16), scale=dynamic(f8e4m3)} : f4e2m1[B,S,1536], f8e4m3[B,S,96]
  %22 = input "ragged" : bf16[B,200]
  %23, %24 = quantize %22 {f8e4m3, block(-1:128), scale=dynamic(f32)} : f8e4m3[B,200], f32[B,2]
  %25, %26 = rmsnorm_quantize %10, %5 {eps=1e-6, via=bf16, f4e2m1, block(-1:16), scale=dynamic(f8e4m3)} : f4e2m1[B,S,384], f8e4m3[B,S,24]
  %27 = weight @smooth : f16[1536]
  %28, %29 = scale_quantize %14, %27 {via=f16, i8, per_token, scale=dynamic(f32)} : i8[B,S,1536], f32[B,S,1]
  %30, %31 = scale_quantize %14, %27 {via=f16, keep_normed=true, f8e4m3, per_tensor, scale=0.05} : f8e4m3[B,S,1536], f16[B,S,1536]
  return "a" = %7, "b" = %8, "c" = %9, "d" = %11, "e" = %12, "f" = %13, "g" = %15, "h" = %16, "i" = %17, "j" = %18, "k" = %19, "l" = %20, "m" = %21, "n" = %23, "o" = %24, "p" = %25, "q" = %26, "r" = %28, "s" = %29, "t" = %30, "u" = %31
}
"#;

/// Block-scaled activation round trips of the `nvfp4` and `fp8-block` recipes at MiniLM's widths
/// (K = 384 and 1536): dynamic block quantize, then dequantize with the quantize's scales (E4M3,
/// f32 and bf16 scales; f16, bf16 and f32 results); a static block quantize reading those scales;
/// per-token dequantize of FP8 codes and of packed E2M1 codes; the FP8 weight dequantize of
/// `fp8-block` (128×128 blocks).
const BLOCK_DQ: &str = r#"
graph "ops_block_dq" {
  sym B max=64
  sym S max=512
  %0 = input "x" : f16[B,S,384]
  %1 = input "ffn" : f16[B,S,1536]
  %2, %3 = quantize %0 {f4e2m1, block(-1:16), scale=dynamic(f8e4m3)} : f4e2m1[B,S,384], f8e4m3[B,S,24]
  %4 = dequantize %2 {f4e2m1, block(-1:16), scale=%3} : f16[B,S,384]
  %5, %6 = quantize %1 {f4e2m1, block(-1:16), scale=dynamic(f8e4m3)} : f4e2m1[B,S,1536], f8e4m3[B,S,96]
  %7 = dequantize %5 {f4e2m1, block(-1:16), scale=%6} : bf16[B,S,1536]
  %8, %9 = quantize %0 {f8e4m3, block(-1:128), scale=dynamic(f32)} : f8e4m3[B,S,384], f32[B,S,3]
  %10 = dequantize %8 {f8e4m3, block(-1:128), scale=%9} : f16[B,S,384]
  %11, %12 = quantize %1 {f8e4m3, block(-1:128), scale=dynamic(f32)} : f8e4m3[B,S,1536], f32[B,S,12]
  %13 = dequantize %11 {f8e4m3, block(-1:128), scale=%12} : f32[B,S,1536]
  %14 = quantize %1 {f8e4m3, block(-1:128), scale=%12} : f8e4m3[B,S,1536]
  %15, %16 = quantize %0 {f8e4m3, block(-1:128), scale=dynamic(bf16)} : f8e4m3[B,S,384], bf16[B,S,3]
  %17 = dequantize %15 {f8e4m3, block(-1:128), scale=%16} : f16[B,S,384]
  %18, %19 = quantize %0 {f8e4m3, per_token, scale=dynamic(f32)} : f8e4m3[B,S,384], f32[B,S,1]
  %20 = dequantize %18 {f8e4m3, per_token, scale=%19} : f16[B,S,384]
  %21 = input "tok_scale" : f32[B,S,1]
  %22 = dequantize %2 {f4e2m1, per_token, scale=%21} : f16[B,S,384]
  %23 = input "w" : f8e4m3[384,1536]
  %24 = weight @w.scale : f32[3,12]
  %25 = dequantize %23 {f8e4m3, block(0:128,1:128), scale=%24} : f16[384,1536]
  return "a" = %4, "b" = %7, "c" = %10, "d" = %13, "e" = %14, "f" = %17, "g" = %20, "h" = %22, "i" = %25
}
"#;

/// `quant_round_trip` (fuse-quant-round-trip) in every form the row engine takes: the `nvfp4`
/// recipe's activations (global-scale multiplies around E2M1 codes with E4M3 block scales) at
/// MiniLM's widths in f16 and bf16, `fp8-block`'s (f32 block scales, no multiplies), dynamic
/// per-token INT8 and FP8, a literal per-tensor scale and a literal zero point; an RMSNorm and a
/// LayerNorm joined to a round trip (`norm=…`).
const ROUND_TRIPS: &str = r#"
graph "ops_round_trips" {
  sym B max=64
  sym S max=512
  %0 = input "x" : f16[B,S,384]
  %1 = input "ffn" : bf16[B,S,1536]
  %2 = quant_round_trip %0 {pre=256.0, post=0.00390625, f4e2m1, block(-1:16), scale=dynamic(f8e4m3)} : f16[B,S,384]
  %3 = quant_round_trip %1 {pre=512.0, post=0.001953125, f4e2m1, block(-1:16), scale=dynamic(f8e4m3)} : bf16[B,S,1536]
  %4 = quant_round_trip %0 {pre=1.0, post=1.0, f8e4m3, block(-1:128), scale=dynamic(f32)} : f16[B,S,384]
  %5 = quant_round_trip %1 {pre=1.0, post=0.5, i8, per_token, scale=dynamic(f32)} : bf16[B,S,1536]
  %6 = quant_round_trip %0 {pre=2.0, post=1.0, f8e4m3, per_token, scale=dynamic(f32)} : f16[B,S,384]
  %7 = quant_round_trip %0 {pre=1.0, post=1.0, f8e4m3, per_tensor, scale=0.0123} : f16[B,S,384]
  %8 = quant_round_trip %0 {pre=1.0, post=1.0, u8, per_tensor, scale=0.05, zero=128} : f16[B,S,384]
  %9 = weight @gamma : f16[384]
  %10 = weight @beta : f16[384]
  %11 = quant_round_trip %0, %9 {norm=rmsnorm, eps=1e-5, pre=256.0, post=0.00390625, f4e2m1, block(-1:16), scale=dynamic(f8e4m3)} : f16[B,S,384]
  %12 = quant_round_trip %0, %9, %10 {norm=layernorm, eps=1e-12, pre=1.0, post=1.0, f8e4m3, block(-1:128), scale=dynamic(f32)} : f16[B,S,384]
  return "a" = %2, "b" = %3, "c" = %4, "d" = %5, "e" = %6, "f" = %7, "g" = %8, "h" = %11, "i" = %12
}
"#;

/// Element-wise, quantize/dequantize and data-movement variants.
const MISC: &str = r#"
graph "ops_misc" {
  sym B max=64
  sym S max=512
  %0 = input "w" : f8e4m3[16,32]
  %1 = weight @w.scale : f32[16]
  %2 = dequantize %0 {f8e4m3, per_channel(0), scale=%1} : f16[16,32]
  %3 = input "a" : f16[B,S,32]
  %4 = requantize %0 {from_scale=0.05, via=f16, f8e4m3, per_tensor, scale=0.1} : f8e4m3[16,32]
  %5 = weight @a.scale : f32[]
  %6 = quantize %3 {u8, per_tensor, scale=%5, zero=128} : u8[B,S,32]
  %7 = dequantize %6 {u8, per_tensor, scale=%5, zero=128} : f32[B,S,32]
  %8 = cast %7 : i64[B,S,32]
  %9 = cast %8 : i32[B,S,32]
  %10 = cast %9 : f16[B,S,32]
  %11 = input "b" : f16[S,1]
  %12 = max %3, %11 : f16[B,S,32]
  %13 = relu %12 : f16[B,S,32]
  %14 = input "tok_scale" : f32[B,S,1]
  %15 = quantize %3 {f8e4m3, per_token, scale=%14} : f8e4m3[B,S,32]
  %16 = dequantize %15 {f8e4m3, per_token, scale=%14} : bf16[B,S,32]
  %17 = transpose %3 {perm=[2,0,1]} : f16[32,B,S]
  %18 = transpose %7 {perm=[0,2,1]} : f32[B,32,S]
  %19 = input "dyn" : f16[B,S]
  %20 = weight @g : f16[S]
  %21 = iota : i32[B]
  %22 = gather %3, %21 : f16[B,S,32]
  %23 = div %12, %3 : f16[B,S,32]
  %24 = tanh %23 : f16[B,S,32]
  %25 = min %24, %13 : f16[B,S,32]
  %26 = input "i8" : i8[B,S]
  %27 = cast %26 : f32[B,S]
  %28 = quantize %27 {i8, per_tensor, scale=0.5} : i8[B,S]
  %29 = last_token %3 : f16[B,1,32]
  return "a" = %2, "b" = %4, "c" = %10, "d" = %16, "e" = %17, "f" = %18, "g" = %22, "h" = %25, "i" = %28, "j" = %29
}
"#;

#[test]
fn static_graph_lowers_and_compiles() {
    let g = parse(BERT_STATIC);
    let ls = all_launches(&g);
    assert!(ls.len() >= 20, "{} launches", ls.len());
    let n = compile(&ls);
    assert!(n >= 15, "{n} distinct kernels");
}

#[test]
fn dynamic_graph_lowers_and_compiles() {
    let g = parse(BERT_DYNAMIC);
    let ls = all_launches(&g);
    compile(&ls);
}

#[test]
fn int8_and_block_graph_lowers_and_compiles() {
    let g = parse(INT8_BLOCK);
    let ls = all_launches(&g);
    assert_eq!(ls.len(), 12, "one row kernel per quantizing node");
    compile(&ls);
}

/// The block quantize kernel of NVFP4 activations: E2M1 codes packed two per byte, E4M3 scales per
/// 16 elements, one block per pair of 8-element vectors.
#[test]
fn block_quantize_snapshot() {
    let g = parse(INT8_BLOCK);
    let l = all_launches(&g)
        .into_iter()
        .find(|l| l.kernel.source.contains("typedef qf_e2m1 Q;") && l.kernel.template == "quantize")
        .expect("the f4e2m1 block quantize");
    assert!(l.kernel.source.contains("QUANT = 5, GROUP = 16") && l.kernel.source.contains("PACKED = true"), "{}", l.kernel.source);
    snapshot("quantize_dynamic_block_nvfp4", describe(&g, &l));
}

/// Every node of the block round trips lowers (one launch each) and compiles to `sm_90a`.
#[test]
fn block_dequantize_graph_lowers_and_compiles() {
    let g = parse(BLOCK_DQ);
    let ls = all_launches(&g);
    assert_eq!(ls.len(), 15, "one kernel per quantize / dequantize node");
    compile(&ls);
}

/// The NVFP4 activation dequantize: one E2M1 code byte (two elements) per index, the E4M3 scale
/// of its 16-element block, an aligned f16 pair stored.
#[test]
fn block_dequantize_snapshot() {
    let g = parse(BLOCK_DQ);
    let l = node_launches(&g, "dequantize").into_iter().next().expect("the f4e2m1 block dequantize");
    assert!(l.kernel.source.contains("qf_e2m1::load(x0 & 0xf)"), "{}", l.kernel.source);
    snapshot("dequantize_block_nvfp4", describe(&g, &l));
}

/// Every round trip is one row-engine launch that writes only its result, and compiles to
/// `sm_90a`.
#[test]
fn round_trips_lower_to_one_launch_each_and_compile() {
    let g = parse(ROUND_TRIPS);
    let ls = all_launches(&g);
    assert_eq!(ls.len(), 9, "one row kernel per round trip");
    for l in &ls {
        assert_eq!(l.kernel.template, "quantize");
        assert!(l.kernel.source.contains("ROUND_TRIP = true") && l.kernel.source.contains("STORE_Y = false"), "{}", l.kernel.source);
        let outputs = l.kernel.params.iter().filter(|p| ["q", "scales", "y"].contains(&p.name.as_str())).count();
        assert_eq!(outputs, 1, "only y reaches memory: {:?}", l.kernel.params);
    }
    compile(&ls);
}

/// The NVFP4 activation round trip: the row times `pre`, E2M1 codes and E4M3 block scales in
/// registers, their values times the scales, times `post`, stored as f16.
#[test]
fn round_trip_snapshot() {
    let g = parse(ROUND_TRIPS);
    let l = node_launches(&g, "quant_round_trip").into_iter().next().expect("the nvfp4 round trip");
    assert!(l.kernel.source.contains("QUANT = 5, GROUP = 16"), "{}", l.kernel.source);
    snapshot("quant_round_trip_nvfp4", describe(&g, &l));
}

#[test]
fn misc_graph_lowers_and_compiles() {
    let g = parse(MISC);
    let ls = all_launches(&g);
    compile(&ls);
}

#[test]
fn last_token_copies_row_s_minus_one() {
    let g = parse(MISC);
    let l = node_launches(&g, "last_token").into_iter().next().expect("the last_token launch");
    // f16 rows of 32 elements: 64 bytes, four 16-byte packs per row.
    assert!(l.kernel.source.contains("typedef uint4 P;"), "{}", l.kernel.source);
    assert!(l.kernel.source.contains("out[i] = x[(b * S + S - 1) * R + c];"), "{}", l.kernel.source);
    assert_eq!(l.args.last(), Some(&Arg::Scalar(Scalar::Dim(qfuse::plan::DimExpr::Const(4)))));
}

#[test]
fn identity_transpose_and_reshape_are_views() {
    let g = parse(
        r#"graph "t" {
  sym B max=4
  %0 = input "x" : f16[B,8]
  %1 = transpose %0 {perm=[0,1]} : f16[B,8]
  %2 = reshape %1 : f16[B,2,4]
  return "y" = %2
}"#,
    );
    let r = lower(&g);
    assert!(matches!(r[1].1, Ok(Lowered::Alias(v)) if v.index() == 0), "{:?}", r[1].1);
    assert!(matches!(r[2].1, Ok(Lowered::Alias(v)) if v.index() == 1), "{:?}", r[2].1);
}

#[test]
fn launch_shapes() {
    let g = parse(BERT_STATIC);
    // H = 384 f16: one warp per row, 4 rows per 128-thread block, 4-element vectors (3 per lane).
    let l = &node_launches(&g, "layernorm_quantize")[0];
    assert_eq!(l.kernel.block, [128, 1, 1]);
    assert_eq!(l.kernel.grid[0].to_string(), "ceil_div(B*S, 4)");
    assert!(l.kernel.source.contains("HMAX = 384, VEC = 4, WPR = 1, RPB = 4"), "{}", l.kernel.source);
    // Softmax over a symbolic row: sized for S's maximum, length at run time.
    let l = &node_launches(&g, "softmax")[0];
    assert!(l.kernel.source.contains("HMAX = 512, VEC = 1") && l.kernel.source.contains("DYN = true"));
    assert_eq!(l.kernel.params.last().map(|p| p.name.as_str()), Some("n"));
    // The mask add merges the two middle axes: a three-axis walk.
    let g2 = parse(BERT_STATIC);
    let cx = LowerCx::new(&g2, 90);
    let add = (0..g2.nodes.len()).map(NodeId::from).find(|&n| g2.nodes[n].outputs.first().is_some_and(|v| v.index() == 19)).expect("add");
    let Ok(Lowered::Launches(ls)) = lower_node(&cx, add) else { panic!() };
    let src = &ls[0].kernel.source;
    let body = &src[src.find("extern \"C\"").expect("entry")..];
    for line in ["const idx_t c2 = rem % (d_S);", "rem /= (d_S * 12u);", "in1[c0 * (d_S) + c2]", "in0[i]"] {
        assert!(body.contains(line), "{line}: {body}");
    }
    assert!(!body.contains("sym_B"), "B is not needed: {body}");
    let wide = parse(BERT_DYNAMIC);
    let l = &node_launches(&wide, "rmsnorm_quantize")[0];
    assert_eq!(l.kernel.block, [128, 1, 1], "H = 4096: 4 warps per row");
    assert!(l.kernel.source.contains("WPR = 4, RPB = 1"));
}

#[test]
fn canonical_snapshots() {
    let g = parse(BERT_STATIC);
    let one = |m: &str| {
        let ls = node_launches(&g, m);
        assert_eq!(ls.len(), 1, "{m}");
        ls.into_iter().next().expect("one")
    };
    snapshot("layernorm_quantize_static", describe(&g, &one("layernorm_quantize")));
    snapshot("embed_layernorm_fp8_keep_normed", describe(&g, &one("embed_layernorm")));
    snapshot("mean_pool", describe(&g, &one("mean_pool")));
    snapshot("l2_normalize", describe(&g, &one("l2_normalize")));
    // The attention-mask chain: cast i64 -> f16, 1 - x, x * -65504.
    let cx = LowerCx::new(&g, 90);
    let mut chain = String::new();
    for out in [11, 12, 14] {
        let node =
            (0..g.nodes.len()).map(NodeId::from).find(|&n| g.nodes[n].outputs.first().is_some_and(|v| v.index() == out)).expect("node");
        let Ok(Lowered::Launches(ls)) = lower_node(&cx, node) else { panic!("%{out}") };
        chain.push_str(&format!("==== %{out} = {}\n", g.nodes[node].op.mnemonic()));
        chain.push_str(&describe(&g, &ls[0]));
    }
    snapshot("mask_chain", chain);
    let d = parse(BERT_DYNAMIC);
    let ls = node_launches(&d, "quantize");
    snapshot("quantize_dynamic_per_token", describe(&d, &ls[0]));
}

fn expect_error(text: &str, needle: &str) {
    let g = parse(text);
    let errs: Vec<String> = lower(&g).into_iter().filter_map(|(_, r)| r.err()).collect();
    assert!(errs.iter().any(|e| e.contains(needle)), "expected an error containing {needle:?}, got {errs:#?}");
}

#[test]
fn unsupported_variants_give_specific_errors() {
    let head = "graph \"t\" {\n  sym B max=4\n  %0 = input \"x\" : f16[B,8,16]\n";
    let case = |body: &str, needle: &str| expect_error(&format!("{head}{body}\n}}"), needle);
    case("  %1 = softmax %0 {axis=1} : f16[B,8,16]\n  return \"y\" = %1", "only the last axis has a kernel");
    case(
        "  %1, %2 = quantize %0 {f8e4m3, per_tensor, scale=dynamic(f32)} : f8e4m3[B,8,16], f32[]\n  return \"y\" = %1",
        "dynamic per-tensor quantization has no kernel yet",
    );
    case(
        "  %1, %2 = quantize %0 {f8e4m3, block(1:4), scale=dynamic(f32)} : f8e4m3[B,8,16], f32[B,2,16]\n  return \"y\" = %1",
        "blocks along the last axis only",
    );
    case(
        "  %1, %2 = quantize %0 {f8e4m3, block(-1:8), scale=dynamic(e8m0)} : f8e4m3[B,8,16], e8m0[B,8,2]\n  return \"y\" = %1",
        "dynamic block scales stored as e8m0 have no kernel yet",
    );
    case(
        "  %1, %2 = quantize %0 {f8e4m3, block(-1:100), scale=dynamic(f32)} : f8e4m3[B,8,16], f32[B,8,1]\n  return \"y\" = %1",
        "no vector width fits",
    );
    case(
        "  %1 = weight @s : f32[B,8,2]\n  %2 = quantize %0 {f8e4m3, block(-1:10), scale=%1} : f8e4m3[B,8,16]\n  return \"y\" = %2",
        "a ragged last block (axis 2 of 16, blocks of 10) has no kernel yet",
    );
    case(
        "  %1, %2 = quantize %0 {f4e2m1, block(-1:16), scale=dynamic(f8e4m3)} : f4e2m1[B,8,16], f8e4m3[B,8,1]\n  %3 = weight @s : f32[16]\n  %4 = dequantize %1 {f4e2m1, per_channel(-1), scale=%3} : f16[B,8,16]\n  return \"y\" = %4",
        "per-channel scales along the packed last axis have no kernel yet",
    );
    case("  %1 = reduce_sum %0 {axes=[-1]} : f16[B,8]\n  return \"y\" = %1", "no kernel for `reduce_sum` yet");
    case("  %1 = matmul %0, %0 {transpose_b} : f16[B,8,8]\n  return \"y\" = %1", "no kernel for `matmul` yet");
    case(
        "  %1 = cast %0 : i64[B,8,16]\n  %2 = add %1, %1 : i64[B,8,16]\n  return \"y\" = %2",
        "integer (i64) binary ops have no kernel yet",
    );
    case("  %1 = quantize %0 {i4, per_tensor, scale=0.5} : i4[B,8,16]\n  return \"y\" = %1", "i4 storage has no kernel yet");
    case(
        "  %1 = weight @g : f16[16]\n  %2 = weight @s : f32[16]\n  %3 = rmsnorm_quantize %0, %1 {eps=1e-6, via=f16, f8e4m3, per_channel(-1), scale=%2} : f8e4m3[B,8,16]\n  return \"y\" = %3",
        "per-channel quantization of a row-wise result has no kernel yet",
    );
    expect_error(
        "graph \"t\" {\n  sym B max=4\n  %0 = input \"x\" : f32[B,40000]\n  %1 = l2_normalize %0 {eps=1e-12} : f32[B,40000]\n  return \"y\" = %1\n}",
        "row length 40000 exceeds the row kernels' limit of 32768",
    );
}

/// Every non-GEMM node of the fused MiniLM graphs (the pipeline snapshots) lowers and compiles.
#[test]
fn minilm_fused_graphs_lower() {
    for snap in ["pipeline__minilm_fp8.snap", "pipeline__minilm_fp8-dynamic.snap", "pipeline__minilm_fp16.snap"] {
        let path = format!("{}/snapshots/{snap}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).expect("snapshot");
        let ir = &text[text.find("graph ").expect("graph")..];
        let g = parse(ir);
        let cx = LowerCx::new(&g, 90);
        let mut all = Vec::new();
        for n in (0..g.nodes.len()).map(NodeId::from) {
            if matches!(g.nodes[n].op, Op::MatMul { .. } | Op::QMatMul(_) | Op::Attention(_)) {
                continue;
            }
            match lower_node(&cx, n) {
                Ok(Lowered::Launches(ls)) => all.extend(ls),
                Ok(_) => {}
                Err(e) => panic!("{snap}: {e}"),
            }
        }
        assert!(!all.is_empty());
        compile(&all);
    }
}

/// Runs every kernel of the case graphs on a GPU, each node on the interpreter's values of its
/// operands, and compares its results with the interpreter's, code by code. Needs a CUDA device
/// and NVRTC: `cargo test --test codegen_ops -- --ignored --nocapture gpu`.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_matches_interpreter() {
    let ctx = cudarc::driver::CudaContext::new(0).expect("a CUDA device");
    ctx.bind_to_thread().expect("bind");
    let mut report = String::new();
    let mut failures = Vec::new();
    for (name, text, syms) in [
        ("static", BERT_STATIC, &[("B", 3u64), ("S", 77)][..]),
        ("dynamic", BERT_DYNAMIC, &[("B", 3), ("S", 77)][..]),
        ("misc", MISC, &[("B", 3), ("S", 77)][..]),
        ("int8_block", INT8_BLOCK, &[("B", 3), ("S", 77)][..]),
        ("block_dq", BLOCK_DQ, &[("B", 3), ("S", 77)][..]),
        ("round_trips", ROUND_TRIPS, &[("B", 3), ("S", 77)][..]),
        ("static_s1", BERT_STATIC, &[("B", 2), ("S", 1)][..]),
    ] {
        gpu::check_graph(name, &parse(text), syms, &mut report, &mut failures);
    }
    let _ = report;
    assert!(failures.is_empty(), "mismatches beyond tolerance:\n{}", failures.join("\n"));
}

/// Times every kernel of the static and dynamic graphs at B = 32, S = 512 (zeroed inputs) and
/// prints µs per launch and the bandwidth of the bytes its arguments hold. Needs a CUDA device:
/// `cargo test --test codegen_ops -- --ignored --nocapture gpu_timings`.
#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_timings() {
    let ctx = cudarc::driver::CudaContext::new(0).expect("a CUDA device");
    ctx.bind_to_thread().expect("bind");
    for (name, text) in [("static", BERT_STATIC), ("dynamic", BERT_DYNAMIC)] {
        gpu::time_graph(name, &parse(text), &[("B", 32), ("S", 512)]);
    }
}

mod gpu {
    use std::collections::HashMap;
    use std::ffi::c_void;
    use std::sync::Arc;

    use cudarc::driver::result;
    use qfuse::codegen::kernel::{Arg, LowerCx, Lowered};
    use qfuse::codegen::nvrtc;
    use qfuse::codegen::ops::lower_node;
    use qfuse::interp::{self, Tensor, TensorData};
    use qfuse::ir::{DType, Dim, Graph, NodeId, Op, ValueId};
    use qfuse::numerics::{decode_bits, encode_bits};
    use qfuse::plan::{ParamType, Scalar};

    use qfuse::check::inputs::SplitMix as Rng;

    fn bytes_of(dt: DType) -> usize {
        (dt.bits() / 8) as usize
    }

    /// Bytes of `n` elements of `dt` (4-bit codes packed two per byte).
    fn storage_bytes(dt: DType, n: usize) -> usize {
        (n * dt.bits() as usize).div_ceil(8)
    }

    /// Test data for a graph input or weight, by name.
    fn make(name: &str, dt: DType, shape: &[usize], rng: &mut Rng) -> Tensor {
        let n: usize = shape.iter().product();
        if matches!(dt, DType::I64 | DType::I32) {
            let data: Vec<i64> = if name == "attention_mask" {
                // Row b keeps its first S - 3b tokens; the last row is all padding.
                let (b, s) = (shape[0], shape[1]);
                (0..n).map(|i| i64::from(b > 1 && i / s != b - 1 && (i % s) + 3 * (i / s) < s)).collect()
            } else {
                let bound = match name {
                    "input_ids" => 30522,
                    "token_type_ids" => 2,
                    _ => 3,
                };
                (0..n).map(|_| rng.below(bound) as i64).collect()
            };
            return Tensor::new(dt, shape.to_vec(), TensorData::I64(data)).expect("tensor");
        }
        let data: Vec<f32> = (0..n)
            .map(|_| {
                let u = rng.unit();
                if name.contains("scale") {
                    0.01 + 0.04 * u.abs()
                } else if name.starts_with("ln.w") || name.starts_with('g') {
                    1.0 + 0.25 * u
                } else if dt == DType::I8 {
                    128.0 * u
                } else if dt == DType::F8E4M3 {
                    300.0 * u
                } else if name == "scores" {
                    8.0 * u
                } else {
                    // A spread of magnitudes, some rows far from zero mean.
                    3.0 * u * (1.0 + (rng.below(4) as f32))
                }
            })
            .collect();
        Tensor::from_f32_as(dt, shape.to_vec(), data)
    }

    /// The storage bytes of a tensor (little-endian codes of its dtype).
    fn encode(t: &Tensor) -> Vec<u8> {
        if t.dtype.bits() == 4 {
            // Two codes per byte, low nibble first (src/compile/bytes.rs).
            let c = codes(t);
            return c.chunks(2).map(|p| (p[0] as u8 & 0xf) | ((p.get(1).copied().unwrap_or(0) as u8 & 0xf) << 4)).collect();
        }
        let eb = bytes_of(t.dtype);
        let mut out = Vec::with_capacity(t.numel() * eb);
        match &t.data {
            TensorData::I64(v) => v.iter().for_each(|&x| out.extend_from_slice(&x.to_le_bytes()[..eb])),
            TensorData::F32(v) => v.iter().for_each(|&x| out.extend_from_slice(&u64::from(encode_bits(x, t.dtype)).to_le_bytes()[..eb])),
        }
        out
    }

    /// Element codes (sign-extended for integers) of the reference tensor.
    fn codes(t: &Tensor) -> Vec<i64> {
        match &t.data {
            TensorData::I64(v) => v.clone(),
            TensorData::F32(v) => v.iter().map(|&x| i64::from(encode_bits(x, t.dtype))).collect(),
        }
    }

    fn gpu_codes(bytes: &[u8], dt: DType) -> Vec<i64> {
        if dt.bits() == 4 {
            return bytes.iter().flat_map(|&b| [i64::from(b & 0xf), i64::from(b >> 4)]).collect();
        }
        let eb = bytes_of(dt);
        bytes
            .chunks(eb)
            .map(|c| {
                let mut b = [0u8; 8];
                b[..eb].copy_from_slice(c);
                let u = u64::from_le_bytes(b);
                match dt {
                    DType::I64 => u as i64,
                    DType::I32 => i64::from(u as u32 as i32),
                    _ => u as i64,
                }
            })
            .collect()
    }

    /// Distance of two codes in steps of the dtype's grid (0 when both are NaN).
    fn distance(a: i64, b: i64, dt: DType) -> u64 {
        if !dt.is_float() || dt.bits() > 32 {
            return a.abs_diff(b);
        }
        let (fa, fb) = (decode_bits(a as u32, dt), decode_bits(b as u32, dt));
        if fa.is_nan() && fb.is_nan() {
            return 0;
        }
        if fa.is_nan() || fb.is_nan() {
            return u64::MAX;
        }
        let bits = dt.bits();
        let ord = |c: i64| -> i64 {
            let sign = (c >> (bits - 1)) & 1;
            let mag = c & ((1i64 << (bits - 1)) - 1);
            if sign == 1 {
                -mag
            } else {
                mag
            }
        };
        ord(a).abs_diff(ord(b))
    }

    pub(super) fn check_graph(name: &str, g: &Graph, syms: &[(&str, u64)], report: &mut String, failures: &mut Vec<String>) {
        let sym_vals: Vec<(String, u64)> = syms.iter().map(|&(s, v)| (s.to_string(), v)).collect();
        let extent = |d: &Dim| match d {
            Dim::Fixed(n) => *n as usize,
            Dim::Sym(s) => syms.iter().find(|(n, _)| *n == g.symbols[*s].name).expect("symbol value").1 as usize,
        };
        let mut rng = Rng::new(0x5eed ^ name.len() as u64);
        let mut inputs: Vec<(String, Tensor)> = Vec::new();
        let mut weights: HashMap<String, Arc<Tensor>> = HashMap::new();
        for (_, node) in g.nodes.iter() {
            let v = node.outputs.first().copied();
            match (&node.op, v) {
                (Op::Input { name }, Some(v)) => {
                    let shape: Vec<usize> = g.shape(v).iter().map(extent).collect();
                    inputs.push((name.clone(), make(name, g.ty(v).dtype, &shape, &mut rng)));
                }
                (Op::Weight { name }, Some(v)) => {
                    let shape: Vec<usize> = g.shape(v).iter().map(extent).collect();
                    weights.insert(name.clone(), Arc::new(make(name, g.ty(v).dtype, &shape, &mut rng)));
                }
                _ => {}
            }
        }
        let mut values: HashMap<ValueId, Tensor> = HashMap::new();
        let refs: Vec<(&str, Tensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
        interp::run_observed(g, &weights, &refs, &mut |v, t| {
            values.insert(v, t.clone());
        })
        .unwrap_or_else(|e| panic!("{name}: interpreter: {e}"));

        let cx = LowerCx::new(g, 90);
        for n in (0..g.nodes.len()).map(NodeId::from) {
            let node = &g.nodes[n];
            if node.outputs.iter().any(|v| !values.contains_key(v)) {
                continue; // dead in the interpreter's run
            }
            let Ok(Lowered::Launches(launches)) = lower_node(&cx, n) else { continue };
            // Device buffers for every value argument: operands uploaded, results poisoned.
            let mut bufs: HashMap<ValueId, (u64, usize)> = HashMap::new();
            for l in &launches {
                for a in &l.args {
                    let Arg::Value(v) = a else { continue };
                    if bufs.contains_key(v) {
                        continue;
                    }
                    let t = &values[v];
                    let bytes = storage_bytes(t.dtype, t.numel());
                    let ptr = unsafe { result::malloc_sync(bytes.max(1)) }.expect("malloc");
                    if node.outputs.contains(v) {
                        unsafe { result::memset_d8_sync(ptr, 0xa5, bytes.max(1)) }.expect("memset");
                    } else {
                        unsafe { result::memcpy_htod_sync(ptr, &encode(t)) }.expect("upload");
                    }
                    bufs.insert(*v, (ptr, bytes));
                }
            }
            for l in &launches {
                let k = &l.kernel;
                let cubin = nvrtc::compile_cubin(&k.name, &k.source, "sm_90a", &[]).unwrap_or_else(|e| panic!("{e}"));
                let mut image = cubin.clone();
                image.push(0);
                let module = unsafe { result::module::load_data(image.as_ptr().cast()) }.expect("module");
                let func =
                    unsafe { result::module::get_function(module, std::ffi::CString::new(k.name.clone()).unwrap()) }.expect("function");
                let mut slots: Vec<u64> = Vec::new();
                for (p, a) in k.params.iter().zip(&l.args) {
                    slots.push(match (a, p.ty) {
                        (Arg::Value(v), ParamType::Ptr) => bufs[v].0,
                        (Arg::Scalar(Scalar::Dim(e)), ParamType::I64 | ParamType::I32) => e.eval_with(&sym_vals).expect("dim"),
                        (Arg::Scalar(Scalar::I64(x)), _) => *x as u64,
                        (Arg::Scalar(Scalar::I32(x)), _) => *x as u32 as u64,
                        (Arg::Scalar(Scalar::F32(x)), _) => u64::from(x.to_bits()),
                        other => panic!("{}: unexpected argument {other:?}", k.name),
                    });
                }
                let mut params: Vec<*mut c_void> = slots.iter_mut().map(|s| s as *mut u64 as *mut c_void).collect();
                let grid: Vec<u32> = k.grid.iter().map(|e| e.eval_with(&sym_vals).expect("grid") as u32).collect();
                if grid.contains(&0) {
                    continue;
                }
                unsafe {
                    result::launch_kernel(
                        func,
                        (grid[0], grid[1], grid[2]),
                        (k.block[0], k.block[1], k.block[2]),
                        k.smem_bytes,
                        std::ptr::null_mut(),
                        &mut params,
                    )
                }
                .unwrap_or_else(|e| panic!("{}: launch: {e:?}", k.name));
                result::ctx::synchronize().unwrap_or_else(|e| panic!("{}: {e:?}", k.name));
                unsafe { result::module::unload(module) }.expect("unload");
            }
            for &out in &node.outputs {
                let t = &values[&out];
                let (ptr, bytes) = bufs[&out];
                let mut host = vec![0u8; bytes];
                unsafe { result::memcpy_dtoh_sync(&mut host, ptr) }.expect("download");
                let got = gpu_codes(&host, t.dtype);
                let want = codes(t);
                let mut mism = 0usize;
                let mut worst = 0u64;
                let mut first = None;
                for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
                    let d = if a == b { 0 } else { distance(a, b, t.dtype) };
                    if d > 0 {
                        mism += 1;
                        if d > worst {
                            worst = d;
                            first = Some((i, a, b));
                        }
                    }
                }
                let line = format!(
                    "{name:<10} %{:<4} {:<20} {:>9} elems {:>7} {:<7} mismatches {:>6}  worst {}{}",
                    out.index(),
                    node.op.mnemonic(),
                    want.len(),
                    t.dtype.to_string(),
                    "",
                    mism,
                    if worst == u64::MAX { "NaN".to_string() } else { worst.to_string() },
                    first.map(|(i, a, b)| format!("  (at {i}: gpu {a:#x}, ref {b:#x})")).unwrap_or_default()
                );
                println!("{line}");
                report.push_str(&line);
                report.push('\n');
                // Tolerance: one step of the output grid, on at most 1 in 1000 elements.
                if worst > 1 || mism * 1000 > want.len().max(1000) {
                    failures.push(line);
                }
            }
            for (ptr, _) in bufs.values() {
                unsafe { result::free_sync(*ptr) }.expect("free");
            }
        }
    }

    pub(super) fn time_graph(name: &str, g: &Graph, syms: &[(&str, u64)]) {
        let sym_vals: Vec<(String, u64)> = syms.iter().map(|&(s, v)| (s.to_string(), v)).collect();
        let extent = |d: &Dim| match d {
            Dim::Fixed(n) => *n as usize,
            Dim::Sym(s) => syms.iter().find(|(n, _)| *n == g.symbols[*s].name).expect("symbol value").1 as usize,
        };
        let cx = LowerCx::new(g, 90);
        for n in (0..g.nodes.len()).map(NodeId::from) {
            let Ok(Lowered::Launches(launches)) = lower_node(&cx, n) else { continue };
            for l in &launches {
                let k = &l.kernel;
                let mut total = 0usize;
                let mut slots: Vec<u64> = Vec::new();
                let mut allocs = Vec::new();
                for (p, a) in k.params.iter().zip(&l.args) {
                    slots.push(match (a, p.ty) {
                        (Arg::Value(v), _) => {
                            let bytes = storage_bytes(g.ty(*v).dtype, g.shape(*v).iter().map(extent).product::<usize>());
                            total += bytes;
                            let ptr = unsafe { result::malloc_sync(bytes.max(1)) }.expect("malloc");
                            unsafe { result::memset_d8_sync(ptr, 0, bytes.max(1)) }.expect("memset");
                            allocs.push(ptr);
                            ptr
                        }
                        (Arg::Scalar(Scalar::Dim(e)), _) => e.eval_with(&sym_vals).expect("dim"),
                        other => panic!("{other:?}"),
                    });
                }
                // Variants of the H = 384 row kernels: VEC 8 / 4, γβ prefetch on / off, 64-register cap.
                let mut variants = vec![("", k.source.clone())];
                if k.source.contains("HMAX = 384, VEC = 4") && k.source.contains("NORM = 1") {
                    let vec4 = k.source.clone();
                    let base = vec4.replace("HMAX = 384, VEC = 4", "HMAX = 384, VEC = 8");
                    let nopf = |x: &str| x.to_string();
                    let pf = |x: &str| x.replace("PREFETCH = false", "PREFETCH = true");
                    let cap = |x: &str| x.replace("__launch_bounds__(128)", "__launch_bounds__(128, 8)");
                    variants = vec![
                        ("v4 (default)", vec4.clone()),
                        ("v8 pf", pf(&base)),
                        ("v8 nopf", nopf(&base)),
                        ("v4 pf", pf(&vec4)),
                        ("v4 nopf cap", cap(&nopf(&vec4))),
                    ];
                }
                for (label, source) in variants {
                    let cubin = nvrtc::compile_cubin(&k.name, &source, "sm_90a", &[]).unwrap_or_else(|e| panic!("{e}"));
                    let mut image = cubin.clone();
                    image.push(0);
                    let module = unsafe { result::module::load_data(image.as_ptr().cast()) }.expect("module");
                    let func =
                        unsafe { result::module::get_function(module, std::ffi::CString::new(k.name.clone()).unwrap()) }.expect("function");
                    let mut slots = slots.clone();
                    let mut params: Vec<*mut c_void> = slots.iter_mut().map(|s| s as *mut u64 as *mut c_void).collect();
                    let grid: Vec<u32> = k.grid.iter().map(|e| e.eval_with(&sym_vals).expect("grid") as u32).collect();
                    let mut launch = || unsafe {
                        result::launch_kernel(
                            func,
                            (grid[0], grid[1], grid[2]),
                            (k.block[0], k.block[1], k.block[2]),
                            k.smem_bytes,
                            std::ptr::null_mut(),
                            &mut params,
                        )
                        .expect("launch")
                    };
                    for _ in 0..3 {
                        launch();
                    }
                    result::ctx::synchronize().expect("sync");
                    let reps = 50;
                    let t0 = std::time::Instant::now();
                    for _ in 0..reps {
                        launch();
                    }
                    result::ctx::synchronize().expect("sync");
                    let us = t0.elapsed().as_secs_f64() * 1e6 / f64::from(reps);
                    let regs = unsafe {
                        result::function::get_function_attribute(
                            func,
                            cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_NUM_REGS,
                        )
                    }
                    .unwrap_or(-1);
                    println!(
                        "{name:<8} {:<20} {label:<12} {:>10.1} us {:>8.1} MB {:>7.0} GB/s  regs {regs:>3}  grid {:?} block {:?}",
                        g.nodes[n].op.mnemonic(),
                        us,
                        total as f64 / 1e6,
                        total as f64 / us / 1e3,
                        grid,
                        k.block
                    );
                    unsafe { result::module::unload(module) }.expect("unload");
                }
                for p in allocs {
                    unsafe { result::free_sync(p) }.expect("free");
                }
            }
        }
    }
}
