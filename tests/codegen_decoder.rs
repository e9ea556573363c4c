//! Decoder kernels (issue 13): `rope` and `causal_attention` over the paged KV cache lowered from
//! real step graphs (the synthetic Llama checkpoint, f32 and FP8 caches) and from IR text, and the
//! on-GPU sampler; every kernel compiled to `sm_90a` CUBIN with NVRTC. No GPU needed; NVRTC is
//! (these tests fail, never skip, without it). The CPU sampling rule is checked against an
//! independent transcription of the documented rule.

mod common;

use std::collections::BTreeSet;

use qfuse::codegen::kernel::{Arg, KernelDef, Launch, LowerCx, LowerOptions, Lowered, PagedKv, PDL_TEMPLATES};
use qfuse::codegen::lower::{lower_graph, lower_graph_paged};
use qfuse::codegen::ops::decoder::{self, CacheRead, DecodeAppend, KeyRope, PagedAttentionSpec};
use qfuse::codegen::{memory, nvrtc, sample};
use qfuse::generate::sample::{choose, uniform, Sampling, MAX_TOP_K};
use qfuse::import::decoder::{self as dec, DecoderOptions, KvFormat};
use qfuse::ir::{self, AttnRope, DType, Graph, NodeId, Op, RopePairs};
use qfuse::passes::{pipeline, MemoryWeights, PassCx};
use qfuse::plan::{DimExpr, Scalar};

const PAGED: PagedKv = PagedKv { page_size: 16, max_pages: 32 };

fn compile(k: &KernelDef) {
    nvrtc::compile_cubin(&k.name, &k.source, "sm_90a", &[]).unwrap_or_else(|e| panic!("{}:\n{e}", k.name));
}

fn cx(g: &Graph) -> LowerCx<'_> {
    LowerCx { paged: Some(PAGED), ..LowerCx::new(g, 90) }
}

fn nodes_of<'g>(g: &'g Graph, mnemonic: &'static str) -> impl Iterator<Item = NodeId> + 'g {
    g.nodes.ids().filter(move |&id| g.nodes[id].op.mnemonic() == mnemonic)
}

fn launches(cx: &LowerCx, node: NodeId) -> Vec<Launch> {
    match qfuse::codegen::ops::lower_node(cx, node).unwrap_or_else(|e| panic!("{e}")) {
        Lowered::Launches(l) => l,
        other => panic!("expected launches, got {other:?}"),
    }
}

fn f32_args(l: &Launch) -> Vec<f32> {
    l.args.iter().filter_map(|a| if let Arg::Scalar(Scalar::F32(v)) = a { Some(*v) } else { None }).collect()
}

/// The synthetic Llama step graph (2 layers, 4 heads and 2 KV heads of 16) with a cache of `kv`;
/// quantized caches go through `fuse-kv-cache`, so attention reads the codes.
fn llama_step(kv: KvFormat) -> Option<Graph> {
    let dir = common::synthetic("llama-f32")?;
    let opts = DecoderOptions { max_batch: 4, max_seq: Some(256), kv: kv.clone(), max_step: None, ..Default::default() };
    let model = dec::load(&dir, &opts).expect("import");
    let mut g = model.graph;
    if matches!(kv, KvFormat::PerTensor { .. }) {
        let weights = MemoryWeights::default();
        let mut pcx = PassCx::new(&weights);
        let changed = pipeline::by_name("fuse-kv-cache").expect("pass").run(&mut g, &mut pcx).expect("fuse-kv-cache");
        assert!(changed, "fuse-kv-cache fires on a quantized cache");
    }
    Some(g)
}

/// The float-cache step: kv_append (prefill only, S > 1) and the attention's guarded paths; the
/// decode attention appends the step's token itself, taking k and v after its own arguments.
#[test]
fn a_float_cache_step_lowers_to_append_then_paged_attention_on_the_state_slots() {
    let Some(g) = llama_step(KvFormat::Float(DType::F32)) else { return };
    let cx = cx(&g);
    let attn: Vec<NodeId> = nodes_of(&g, "causal_attention").collect();
    assert_eq!(attn.len(), 2, "one attention per layer");
    // Token-major K/V: the step's keys and values are views of the projections, never transposed.
    assert_eq!(nodes_of(&g, "transpose").count(), 0, "{}", ir::print(&g));
    let mut kernels = BTreeSet::new();
    for (layer, &node) in attn.iter().enumerate() {
        let l = launches(&cx, node);
        assert_eq!(l.len(), 3);
        let templates: Vec<&str> = l.iter().map(|x| x.kernel.template).collect();
        assert_eq!(templates, ["kv_append", "paged_attention", "paged_attention"]);
        // Decode (S ≤ 1: split-KV attention merged by its last CTAs) and prefill: exactly one path
        // runs per shape.
        // The append runs with the prefill only: the decode attention appends the token itself.
        for (s, decode) in [(1u64, true), (2, false), (64, false)] {
            let syms = [("B".to_string(), 3u64), ("S".to_string(), s)];
            assert_eq!(l[0].when.as_ref().unwrap().holds(&syms), Ok(!decode));
            assert_eq!(l[1].when.as_ref().unwrap().holds(&syms), Ok(decode));
            assert_eq!(l[2].when.as_ref().unwrap().holds(&syms), Ok(!decode));
        }
        // 2 KV heads: ceil(264 / 2) capped at 16 and at the 32·16 / 64 = 8 tiles of a sequence.
        assert_eq!(decoder::decode_splits(2, PAGED), 8);
        let split_source = &l[1].kernel.source;
        // Counters for max_batch 4 · 2 KV heads (8 words, already a multiple of 4).
        for want in ["#define QF_QTOK 1", "#define QF_TK 64", "#define QF_SPLITS 8", "float* scratch", "#define QF_COUNTER_WORDS 8"] {
            assert!(split_source.contains(want), "split decode lacks `{want}`");
        }
        assert!(split_source.contains("qf_merge_weights<QF_SPLITS, QF_REC>"), "the merge is split_merge.cuh's");
        assert!(l[2].kernel.source.contains("#define QF_QTOK 32") && l[2].kernel.source.contains("#define QF_TK 64"));
        assert!(l[2].kernel.source.contains("#define QF_SPLITS 0"));
        // The fused append: kv_row.cuh's per-pack code (kv_append's), f32 rows of 16 as 4 packs
        // of 16 bytes, copied (no rope(keys) here); the prefill variant does not append.
        for want in ["#define QF_APPEND 1", "typedef uint4 P;", "#define QF_R 4", "#define QF_KEY_ROPE 0", "qf_append_pack(key, k, v"] {
            assert!(split_source.contains(want), "split decode lacks `{want}`");
        }
        assert!(l[0].kernel.source.contains("qf_append_pack(blockIdx.y == 0"), "kv_append uses the same per-pack code");
        assert!(l[2].kernel.source.contains("#define QF_APPEND 0"));
        let n = &g.nodes[node];
        // State slots of this layer's K and V, in graph.state order.
        let slot = |name: String| g.state.iter().position(|s| s.input == name).unwrap() as u32;
        let (ks, vs) = (slot(format!("past.k.{layer}")), slot(format!("past.v.{layer}")));
        assert_eq!(
            l[0].args[..6],
            [Arg::Value(n.inputs[1]), Arg::Value(n.inputs[2]), Arg::KvPool(ks), Arg::KvPool(vs), Arg::PageTable, Arg::Value(n.inputs[5])]
        );
        let reads = [Arg::Value(n.inputs[0]), Arg::KvPool(ks), Arg::KvPool(vs), Arg::PageTable, Arg::Value(n.inputs[5])];
        assert_eq!(l[2].args[..5], reads);
        assert_eq!(l[2].args[5], Arg::Value(n.outputs[0]));
        assert_eq!(l[1].args[..5], reads);
        assert_eq!(l[1].args[5], Arg::Value(n.outputs[0]), "the split attention writes o itself");
        // The scratch: counters for max_batch 4 · 2 KV heads (32 bytes), then the partials,
        // max_batch 4 · 4 heads · 8 splits · (16 + 2) f32.
        let scratch = Arg::SplitScratch { bytes: 32 + 4 * 4 * 8 * 18 * 4, counters: 32 };
        assert_eq!(l[1].args[6], scratch);
        assert_eq!(l[1].args[7..10], l[2].args[6..]);
        assert_eq!(l[1].args[10..], [Arg::Value(n.inputs[1]), Arg::Value(n.inputs[2])], "the step's k and v last");
        let names: Vec<&str> = l[1].kernel.params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names[10..], ["k", "v"]);
        assert_eq!(f32_args(&l[1]), [1.0, 1.0], "float caches pass unit scales");
        // No launch names the past inputs.
        for launch in &l {
            assert!(!launch.args.contains(&Arg::Value(n.inputs[3])) && !launch.args.contains(&Arg::Value(n.inputs[4])));
        }
        // Grids: split attention (SPLITS, KV, B), one CTA per KV group and range; prefill
        // (ceil_div(S, QT), KV, B).
        assert_eq!(l[1].kernel.grid, [DimExpr::Const(8), DimExpr::Const(2), DimExpr::sym("B")]);
        assert_eq!(l[2].kernel.grid[1], DimExpr::Const(2));
        assert!(split_source.contains("#define QF_G 2") && split_source.contains("#define QF_PAGE 16"));
        kernels.extend(l.iter().map(|x| (x.kernel.name.clone(), x.kernel.source.clone())));
    }
    let ropes: Vec<NodeId> = nodes_of(&g, "rope").collect();
    assert_eq!(ropes.len(), 4, "q and k per layer");
    for &node in &ropes {
        let l = launches(&cx, node);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].kernel.template, "rope");
        kernels.extend(l.iter().map(|x| (x.kernel.name.clone(), x.kernel.source.clone())));
    }
    // Both layers share every kernel: 1 append + 2 attentions + rope on q (4 heads) and k (2 heads).
    assert_eq!(kernels.len(), 5, "{:?}", kernels.iter().map(|k| &k.0).collect::<Vec<_>>());
    for (name, source) in &kernels {
        nvrtc::compile_cubin(name, source, "sm_90a", &[]).unwrap_or_else(|e| panic!("{name}:\n{e}"));
    }
}

/// `fuse-rope` on the f32-cache step: no rope launch is left; the append rotates the keys (its
/// extra `k_out` argument is the attention's second result, the `k` state update) and every
/// attention kernel rotates its queries as it loads them; every kernel compiles.
#[test]
fn fused_rope_moves_into_the_append_and_the_query_load() {
    let Some(mut g) = llama_step(KvFormat::Float(DType::F32)) else { return };
    let weights = MemoryWeights::default();
    let mut pcx = PassCx::new(&weights);
    let pass = pipeline::by_name("fuse-rope").expect("pass");
    assert!(pass.run(&mut g, &mut pcx).expect("fuse-rope"));
    ir::verify(&g, "after fuse-rope").unwrap_or_else(|e| panic!("{e}"));
    let once = ir::print(&g);
    assert!(!pass.run(&mut g, &mut pcx).expect("fuse-rope again"), "idempotent");
    assert_eq!(ir::print(&g), once);
    assert_eq!(nodes_of(&g, "rope").count(), 0, "{}", ir::print(&g));
    let cx = cx(&g);
    let mut kernels = BTreeSet::new();
    for node in nodes_of(&g, "causal_attention").collect::<Vec<_>>() {
        let l = launches(&cx, node);
        let n = &g.nodes[node];
        assert_eq!(n.outputs.len(), 2, "o and the rotated keys");
        assert_eq!(l[0].args[6], Arg::Value(n.outputs[1]), "k_out is the second result");
        assert_eq!(l[0].args[7], Arg::Scalar(Scalar::F32(1.0)), "a float cache's k_scale is 1");
        assert_eq!(l[0].args.len(), 10);
        let append = &l[0].kernel.source;
        assert!(append.contains("#define QF_KEY_ROPE 1") && append.contains("P* __restrict__ k_out"), "{append}");
        for x in &l[1..] {
            if x.kernel.template == "paged_attention" {
                assert!(x.kernel.source.contains("#define QF_ROPE 1") && x.kernel.source.contains("qf_inv_freq"));
            }
        }
        // At decode the attention rotates and appends the keys itself (kv_row.cuh's
        // qf_rotated_keys) and writes k_out, its last argument; kv_append runs for prefill only.
        let decode = &l[1];
        assert_eq!(decode.when.as_ref().unwrap().holds(&[("B".to_string(), 1), ("S".to_string(), 1)]), Ok(true));
        assert_eq!(l[0].when.as_ref().unwrap().holds(&[("B".to_string(), 1), ("S".to_string(), 1)]), Ok(false));
        assert!(decode.kernel.source.contains("#define QF_KEY_ROPE 1") && decode.kernel.source.contains("qf_rotated_keys(k, row"));
        assert!(decode.kernel.source.contains("#define QF_KEY_CODES 0") && decode.kernel.source.contains("typedef qf_f32 KT_;"));
        let tail: Vec<Arg> = [n.inputs[1], n.inputs[2], n.outputs[1]].map(Arg::Value).to_vec();
        assert_eq!(decode.args[decode.args.len() - 3..], tail[..], "k, v, k_out");
        assert_eq!(f32_args(decode), [1.0, 1.0]);
        kernels.extend(l.iter().map(|x| (x.kernel.name.clone(), x.kernel.source.clone())));
    }
    // Both layers share the append and the two attentions.
    assert_eq!(kernels.len(), 3);
    for (name, source) in &kernels {
        nvrtc::compile_cubin(name, source, "sm_90a", &[]).unwrap_or_else(|e| panic!("{name}:\n{e}"));
    }
}

/// A decode step (S ≤ 1) of the synthetic Llama (2 layers) launches no kv_append: each layer's
/// decode attention appends its token itself, so the attentions of a decode step are one launch
/// per layer, one fewer than at prefill, which keeps the append before its attention (the other
/// ops' launches do not depend on it; tests/plan_decoder.rs counts whole SmolLM2 steps). Float
/// and FP8 caches, with and without `fuse-rope` (rope(keys): the decode attention rotates,
/// quantizes and writes `k_out`).
#[test]
fn a_decode_step_appends_in_the_attention_and_a_prefill_step_keeps_kv_append() {
    let fp8 = KvFormat::PerTensor { storage: DType::F8E4M3, scales: vec![(0.011, 0.023), (0.017, 0.029)] };
    for kv in [KvFormat::Float(DType::F32), fp8] {
        for fuse_rope in [false, true] {
            let Some(mut g) = llama_step(kv.clone()) else { return };
            if fuse_rope {
                let weights = MemoryWeights::default();
                let mut pcx = PassCx::new(&weights);
                assert!(pipeline::by_name("fuse-rope").expect("pass").run(&mut g, &mut pcx).expect("fuse-rope"));
            }
            let cx = cx(&g);
            let lowered: Vec<Launch> = nodes_of(&g, "causal_attention").flat_map(|n| launches(&cx, n)).collect();
            let step = |s: u64| -> Vec<&Launch> {
                let syms = [("B".to_string(), 1u64), ("S".to_string(), s)];
                lowered.iter().filter(|l| l.when.as_ref().is_none_or(|w| w.holds(&syms).unwrap())).collect()
            };
            let (decode, prefill) = (step(1), step(2));
            let count = |ls: &[&Launch], t: &str| ls.iter().filter(|l| l.kernel.template == t).count();
            let case = format!("{kv:?}, fuse-rope {fuse_rope}");
            assert_eq!((count(&decode, "kv_append"), count(&prefill, "kv_append")), (0, 2), "{case}");
            assert_eq!((decode.len(), prefill.len()), (2, 4), "{case}: one launch fewer per layer at decode");
            for a in &decode {
                assert_eq!(a.kernel.template, "paged_attention", "{case}");
                assert!(a.kernel.source.contains("#define QF_APPEND 1"), "{case}");
                assert_eq!(a.kernel.source.contains("#define QF_KEY_ROPE 1"), fuse_rope, "{case}");
            }
        }
    }
    // A whole lowered step (one layer by hand, FP8 cache): the query rope, the two quantizes and
    // the attention at decode; the append too at prefill.
    let g = ir::parse(FP8_STEP).unwrap_or_else(|e| panic!("{e}"));
    let program = lower_graph_paged(&g, 90, LowerOptions::default(), Some(PAGED)).unwrap_or_else(|e| panic!("{e}"));
    let step = |s: u64| -> Vec<&str> {
        let syms = [("B".to_string(), 1u64), ("S".to_string(), s)];
        program
            .launches()
            .map(|(_, l)| l)
            .filter(|l| l.when.as_ref().is_none_or(|w| w.holds(&syms).unwrap()))
            .map(|l| l.kernel.template)
            .collect()
    };
    assert_eq!(step(1), ["rope", "elementwise", "elementwise", "paged_attention"]);
    assert_eq!(step(2), ["rope", "elementwise", "elementwise", "kv_append", "paged_prefill"]);
}

#[test]
fn an_fp8_cache_step_reads_codes_with_per_layer_scales_as_arguments() {
    let scales = vec![(0.011, 0.023), (0.017, 0.029)];
    let Some(g) = llama_step(KvFormat::PerTensor { storage: DType::F8E4M3, scales: scales.clone() }) else { return };
    let cx = cx(&g);
    let attn: Vec<NodeId> = nodes_of(&g, "causal_attention").collect();
    let lowered: Vec<Vec<Launch>> = attn.iter().map(|&n| launches(&cx, n)).collect();
    assert_eq!(lowered.len(), 2);
    for (layer, l) in lowered.iter().enumerate() {
        assert_eq!(f32_args(&l[1]), [scales[layer].0, scales[layer].1], "layer {layer}");
        assert_eq!(f32_args(&l[2]), [scales[layer].0, scales[layer].1], "layer {layer}");
        assert!(l[1].kernel.source.contains("typedef qf_e4m3 CT_") && l[1].kernel.source.contains("#define QF_CODES 1"));
        // The append copies bytes: 16 one-byte codes per row, one 16-byte pack; so does the
        // decode attention's own append.
        for append in [&l[0], &l[1]] {
            assert!(append.kernel.source.contains("typedef uint4 P;") && append.kernel.source.contains("#define QF_R 1"));
        }
        assert!(l[1].kernel.source.contains("#define QF_APPEND 1"));
    }
    assert_eq!(lowered[0][0].kernel.name, lowered[1][0].kernel.name, "one append kernel for both layers");
    assert_eq!(lowered[0][1].kernel.name, lowered[1][1].kernel.name, "one decode attention kernel for both layers");
    assert_eq!(lowered[0][2].kernel.name, lowered[1][2].kernel.name, "one prefill attention kernel for both layers");
    for k in &lowered[0] {
        compile(&k.kernel);
    }
}

#[test]
fn causal_attention_needs_a_paged_cache_and_state_operands() {
    let Some(g) = llama_step(KvFormat::Float(DType::F32)) else { return };
    let node = nodes_of(&g, "causal_attention").next().unwrap();
    let plain = LowerCx::new(&g, 90);
    let e = qfuse::codegen::ops::lower_node(&plain, node).unwrap_err();
    assert!(e.reason.contains("no paged KV cache configured") && e.node.contains("causal_attention"), "{e}");
    // An f16 cache under an f32 graph reads the state through a cast: not a state input.
    let Some(g) = llama_step(KvFormat::Float(DType::F16)) else { return };
    let node = nodes_of(&g, "causal_attention").next().unwrap();
    let e = qfuse::codegen::ops::lower_node(&cx(&g), node).unwrap_err();
    assert!(e.reason.contains("is not a state input"), "{e}");
    // k swapped for q-shaped garbage: not the state update.
    let mut g = llama_step(KvFormat::Float(DType::F32)).unwrap();
    let node = nodes_of(&g, "causal_attention").next().unwrap();
    g.nodes[node].inputs[1] = g.nodes[node].inputs[2];
    let e = qfuse::codegen::ops::lower_node(&cx(&g), node).unwrap_err();
    assert!(e.reason.contains("is not the state update"), "{e}");
}

/// One layer by hand: FP8 cache codes, f16 compute, rope on q, GQA 4:1.
const FP8_STEP: &str = r#"
graph "step" {
  sym B max=4
  sym S max=64
  sym P max=512
  %0 = input "q" : f16[B,S,256]
  %1 = input "cache_len" : i64[B]
  %2 = input "past.k.0" : f8e4m3[B,P,1,64]
  %3 = input "past.v.0" : f8e4m3[B,P,1,64]
  %4 = input "k" : f16[B,S,1,64]
  %5 = input "v" : f16[B,S,1,64]
  %6 = quantize %4 {f8e4m3, per_tensor, scale=0.0078125} : f8e4m3[B,S,1,64]
  %7 = quantize %5 {f8e4m3, per_tensor, scale=0.015625} : f8e4m3[B,S,1,64]
  %8 = rope %0, %1 {heads=4, theta=10000, pairs=half} : f16[B,S,256]
  %9 = causal_attention %8, %6, %7, %2, %3, %1 {heads=4, kv_heads=1, scale=0.125, codes(k_scale=0.0078125,v_scale=0.015625,via=f16)} : f16[B,S,256]
  return "out" = %9, "present.k.0" = %6, "present.v.0" = %7
  state "past.k.0" append "present.k.0" axis=1
  state "past.v.0" append "present.v.0" axis=1
}
"#;

/// An NVFP4 step as the passes leave it: this step's K/V pre-scaled by 1/global, quantized to
/// E2M1 codes with dynamic E4M3 block scales (two state slots each), and the attention reading
/// codes and block scales under the global scales.
const NVFP4_STEP: &str = r#"
graph "step" {
  sym B max=4
  sym S max=64
  sym P max=512
  %0 = input "q" : f16[B,S,256]
  %1 = input "cache_len" : i64[B]
  %2 = input "past.k.0" : f4e2m1[B,P,1,64]
  %3 = input "past.k_scale.0" : f8e4m3[B,P,1,4]
  %4 = input "past.v.0" : f4e2m1[B,P,1,64]
  %5 = input "past.v_scale.0" : f8e4m3[B,P,1,4]
  %6 = input "k" : f16[B,S,1,64]
  %7 = input "v" : f16[B,S,1,64]
  %8 = scalar 128.0 : f16[]
  %9 = mul %6, %8 : f16[B,S,1,64]
  %10, %11 = quantize %9 {f4e2m1, block(-1:16), scale=dynamic(f8e4m3)} : f4e2m1[B,S,1,64], f8e4m3[B,S,1,4]
  %12 = mul %7, %8 : f16[B,S,1,64]
  %13, %14 = quantize %12 {f4e2m1, block(-1:16), scale=dynamic(f8e4m3)} : f4e2m1[B,S,1,64], f8e4m3[B,S,1,4]
  %15 = causal_attention %0, %10, %13, %2, %4, %1, %11, %14, %3, %5 {heads=4, kv_heads=1, scale=0.125, codes(k_scale=0.0078125,v_scale=0.0078125,via=f16,block=16)} : f16[B,S,256]
  return "out" = %15, "present.k.0" = %10, "present.k_scale.0" = %11, "present.v.0" = %13, "present.v_scale.0" = %14
  state "past.k.0" append "present.k.0" axis=1
  state "past.k_scale.0" append "present.k_scale.0" axis=1
  state "past.v.0" append "present.v.0" axis=1
  state "past.v_scale.0" append "present.v_scale.0" axis=1
}
"#;

/// An NVFP4 cache: the append copies codes (32 bytes a row) and block scales (4 bytes a row) into
/// four pools, the attention reads the code pools and the scale pools under the global scales, no
/// state input has arena storage, and every kernel compiles.
#[test]
fn an_nvfp4_cache_appends_codes_and_block_scales_and_every_kernel_compiles() {
    let g = ir::parse(NVFP4_STEP).unwrap_or_else(|e| panic!("{e}"));
    ir::verify(&g, "nvfp4 step").unwrap_or_else(|e| panic!("{e}"));
    let node = nodes_of(&g, "causal_attention").next().unwrap();
    let l = launches(&cx(&g), node);
    let templates: Vec<&str> = l.iter().map(|l| l.kernel.template).collect();
    assert_eq!(templates, ["kv_append", "paged_attention", "paged_prefill"], "the split decode attention merges itself");
    let append = &l[0];
    assert!(append.kernel.source.contains("#define QF_SCALES 1") && append.kernel.source.contains("#define QF_R 2"));
    assert!(append.kernel.source.contains("typedef uint32_t SP;") && append.kernel.source.contains("#define QF_RS 1"));
    assert_eq!(append.kernel.grid[1], DimExpr::Const(4));
    assert!(append.when.is_none(), "an NVFP4 cache keeps the append at every S");
    assert!(l[1].kernel.source.contains("#define QF_APPEND 0"));
    // Slots in state order: k 0, k_scale 1, v 2, v_scale 3.
    let pools = |l: &Launch| l.args.iter().filter_map(|a| if let Arg::KvPool(i) = a { Some(*i) } else { None }).collect::<Vec<_>>();
    assert_eq!(pools(append), [0, 2, 1, 3]);
    // The split decode attention (1 KV head, 8 ranges over 32 pages of 16) writes o and keeps its
    // counters (max_batch 4 · 1 KV head: 16 bytes) and partials (4 · 4 heads · 8 · (64 + 2) f32)
    // in the scratch after o; the block-scale pools come last, as in the prefill attention.
    let split = &l[1];
    assert!(split.kernel.source.contains("#define QF_SPLITS 8") && split.kernel.source.contains("qf_merge_weights<QF_SPLITS, QF_REC>"));
    assert_eq!(split.args[5], l[2].args[5], "both attentions write o");
    assert_eq!(split.args[6], Arg::SplitScratch { bytes: 16 + 4 * 4 * 8 * 66 * 4, counters: 16 });
    assert_eq!(split.args[7..], l[2].args[6..]);
    for attention in [&l[1], &l[2]] {
        assert_eq!(pools(attention), [0, 2, 1, 3]);
        assert_eq!(f32_args(attention), [0.0078125, 0.0078125]);
        let src = &attention.kernel.source;
        assert!(src.contains("#define QF_NVFP4 1") && src.contains("typedef qf_u8 CT_"), "{src}");
        // paged_load.cuh's NVFP4 loader: via(via(code · block scale) · global), via = f16.
        assert!(src.contains("#define QF_VIA(x) qf_round_f16(x)") && src.contains("QF_VIA(__fmul_rn(QF_VIA(x[n]), global))"));
    }
    let program = lower_graph_paged(&g, 90, LowerOptions::default(), Some(PAGED)).unwrap_or_else(|e| panic!("{e}"));
    let mem = memory::plan(&g, &program);
    let inputs: std::collections::HashMap<&str, ir::ValueId> = g.inputs().into_iter().collect();
    for name in ["past.k.0", "past.k_scale.0", "past.v.0", "past.v_scale.0"] {
        assert!(mem.offset(inputs[name]).is_none(), "{name} has arena storage");
    }
    for k in program.kernels() {
        compile(k);
    }
    // The NVFP4 paged kernels need rows of whole 16-byte packs: D a multiple of 32.
    let spec = PagedAttentionSpec { decode: true, ..attention_spec(DType::F16, CacheRead::Nvfp4 { via: DType::F16 }, (4, 1, 16), PAGED) };
    assert!(spec.validate().unwrap_err().contains("NVFP4"), "{:?}", spec.validate());
}

/// `fuse-rope` over an NVFP4 cache: the query rope folds into the attention (every paged_attention
/// variant rotates q as it loads it, beside the NVFP4 tile loader) while the keys stay as the codes
/// and block scales their quantize computes (no `keys`, the append only copies); every kernel
/// compiles.
#[test]
fn fused_query_rope_over_an_nvfp4_cache_lowers_and_compiles() {
    let text = NVFP4_STEP
        .replace(
            "  %15 = causal_attention %0,",
            "  %15 = rope %0, %1 {heads=4, theta=10000, pairs=half} : f16[B,S,256]\n  %16 = causal_attention %15,",
        )
        .replace("\"out\" = %15", "\"out\" = %16");
    let mut g = ir::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    ir::verify(&g, "nvfp4 step with rope").unwrap_or_else(|e| panic!("{e}"));
    let weights = MemoryWeights::default();
    let mut pcx = PassCx::new(&weights);
    let pass = pipeline::by_name("fuse-rope").expect("pass");
    assert!(pass.run(&mut g, &mut pcx).expect("fuse-rope"));
    ir::verify(&g, "after fuse-rope").unwrap_or_else(|e| panic!("{e}"));
    assert!(!pass.run(&mut g, &mut pcx).expect("fuse-rope again"), "idempotent");
    assert_eq!(nodes_of(&g, "rope").count(), 0, "{}", ir::print(&g));
    let node = nodes_of(&g, "causal_attention").next().unwrap();
    let Op::CausalAttention(a) = g.nodes[node].op else { unreachable!() };
    assert_eq!(a.rope.map(|r| r.keys), Some(false), "queries only");
    assert_eq!((g.nodes[node].inputs.len(), g.nodes[node].outputs.len()), (10, 1));
    let l = launches(&cx(&g), node);
    let templates: Vec<&str> = l.iter().map(|l| l.kernel.template).collect();
    assert_eq!(templates, ["kv_append", "paged_attention", "paged_prefill"]);
    let append = &l[0].kernel.source;
    assert!(append.contains("#define QF_KEY_ROPE 0") && append.contains("#define QF_SCALES 1"), "{append}");
    assert!(!l[0].args.iter().any(|a| matches!(a, Arg::Scalar(Scalar::F32(_)))), "no k_scale: the append does not rotate");
    for attention in [&l[1], &l[2]] {
        let src = &attention.kernel.source;
        assert!(src.contains("#define QF_ROPE 1") && src.contains("#define QF_NVFP4 1") && src.contains("qf_inv_freq"), "{src}");
    }
    for x in &l {
        compile(&x.kernel);
    }
}

/// K/V are token-major: the lowering refuses the old head-major `[B, KV, S, D]` step operands,
/// and the append indexes its source rows as `(b, s, g)`.
#[test]
fn causal_attention_lowers_only_token_major_kv() {
    let g = ir::parse(FP8_STEP).unwrap_or_else(|e| panic!("{e}"));
    let node = nodes_of(&g, "causal_attention").next().unwrap();
    let append = &launches(&cx(&g), node)[0].kernel;
    assert!(append.source.contains("const long long g = row % QF_KV;"), "{}", append.source);
    let head_major = ir::parse(&FP8_STEP.replace("[B,S,1,64]", "[B,1,S,64]")).unwrap_or_else(|e| panic!("{e}"));
    let node = nodes_of(&head_major, "causal_attention").next().unwrap();
    let e = qfuse::codegen::ops::lower_node(&cx(&head_major), node).unwrap_err();
    assert!(e.reason.contains("token-major [B, S, KV, D]"), "{e}");
    let past_head_major = ir::parse(&FP8_STEP.replace("[B,P,1,64]", "[B,1,P,64]")).unwrap_or_else(|e| panic!("{e}"));
    let e = qfuse::codegen::ops::lower_node(&cx(&past_head_major), node).unwrap_err();
    assert!(e.reason.contains("token-major [B, P, KV, D]"), "{e}");
}

#[test]
fn past_inputs_get_no_arena_storage_and_every_kernel_compiles() {
    let g = ir::parse(FP8_STEP).unwrap_or_else(|e| panic!("{e}"));
    ir::verify(&g, "fp8 step").unwrap_or_else(|e| panic!("{e}"));
    let program = lower_graph_paged(&g, 90, LowerOptions::default(), Some(PAGED)).unwrap_or_else(|e| panic!("{e}"));
    let mem = memory::plan(&g, &program);
    let inputs: std::collections::HashMap<&str, ir::ValueId> = g.inputs().into_iter().collect();
    for name in ["past.k.0", "past.v.0"] {
        assert!(mem.offset(inputs[name]).is_none(), "{name} has arena storage");
        assert!(program.launches().all(|(_, l)| !l.args.contains(&Arg::Value(inputs[name]))));
    }
    for name in ["q", "cache_len", "k", "v"] {
        assert!(mem.offset(inputs[name]).is_some(), "{name} has no storage");
    }
    // The input ops of the state slots lower to nothing.
    for name in ["past.k.0", "past.v.0"] {
        let node = g.producer(inputs[name]);
        let id = g.nodes.ids().find(|&i| std::ptr::eq(&g.nodes[i], node)).unwrap();
        assert_eq!(qfuse::codegen::ops::lower_node(&cx(&g), id).unwrap(), Lowered::Nothing);
    }
    let templates: Vec<&str> = program.launches().map(|(_, l)| l.kernel.template).collect();
    assert_eq!(templates.iter().filter(|t| **t == "kv_append").count(), 1);
    assert_eq!(templates.iter().filter(|t| **t == "paged_attention").count(), 1, "decode");
    assert_eq!(templates.iter().filter(|t| **t == "paged_prefill").count(), 1, "prefill from f16 on tensor cores");
    assert_eq!(templates.iter().filter(|t| **t == "split_combine").count(), 0, "the split attention merges itself");
    assert_eq!(templates.iter().filter(|t| **t == "rope").count(), 1);
    for k in program.kernels() {
        compile(k);
    }
    // Without a paged cache the same graph is an error naming the attention.
    let e = lower_graph(&g, 90, LowerOptions::default()).unwrap_err();
    assert!(e.reason.contains("no paged KV cache configured"), "{e}");
}

/// Programmatic dependent launch: every template declared launchable with the attribute
/// ([`PDL_TEMPLATES`]) calls `qf_pdl_enter()` first in its entry point, and so does every kernel
/// lowered from a decoder step (its split attention included) and the sampler, each marked
/// `pdl`; `common.cuh` waits (`griddepcontrol.wait`) before it lets dependents launch.
#[test]
fn every_pdl_kernel_waits_for_its_predecessor_first() {
    for name in PDL_TEMPLATES {
        let path = format!("{}/templates/{name}.cu", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(common::enters_pdl_first(&text), "{path} does not call qf_pdl_enter() first");
    }
    let common = qfuse::codegen::COMMON.text;
    let (wait, launch) = (common.find("griddepcontrol.wait;"), common.find("griddepcontrol.launch_dependents;"));
    assert!(wait.is_some() && launch.is_some() && wait < launch, "common.cuh waits before launching dependents");
    let g = ir::parse(FP8_STEP).unwrap_or_else(|e| panic!("{e}"));
    let program = lower_graph_paged(&g, 90, LowerOptions::default(), Some(PAGED)).unwrap_or_else(|e| panic!("{e}"));
    let mut kernels: Vec<KernelDef> = program.kernels().into_iter().cloned().collect();
    assert!(kernels.iter().any(|k| k.source.contains("#define QF_SPLITS 8")), "the step has a split attention");
    kernels.push(sample::sample_kernel(1000, DType::F32, 90).unwrap());
    for k in &kernels {
        assert!(k.pdl, "{} is not marked for PDL", k.name);
        assert!(common::enters_pdl_first(&k.source), "{} does not call qf_pdl_enter() first", k.name);
    }
}

#[test]
fn a_cache_of_one_tile_keeps_the_unsplit_decode_kernel() {
    let g = ir::parse(FP8_STEP).unwrap_or_else(|e| panic!("{e}"));
    let one_tile = PagedKv { page_size: 16, max_pages: 4 };
    assert_eq!(decoder::decode_splits(1, one_tile), 1);
    let program = lower_graph_paged(&g, 90, LowerOptions::default(), Some(one_tile)).unwrap_or_else(|e| panic!("{e}"));
    let attention: Vec<&Launch> = program
        .launches()
        .map(|(_, l)| l)
        .filter(|l| ["kv_append", "paged_attention", "paged_prefill", "split_combine"].contains(&l.kernel.template))
        .collect();
    let templates: Vec<&str> = attention.iter().map(|l| l.kernel.template).collect();
    assert_eq!(templates, ["kv_append", "paged_attention", "paged_prefill"]);
    assert!(attention[1].kernel.source.contains("#define QF_SPLITS 0") && attention[1].kernel.source.contains("#define QF_TK 128"));
    assert!(attention.iter().all(|l| !l.args.iter().any(|a| matches!(a, Arg::SplitScratch { .. }))));
    compile(&attention[1].kernel);
}

/// The prefill variant over `cache` of `(heads, kv_heads, head_dim)` with q and out of dtype `q`,
/// score scale 1/√D, no rope or append; tests change what they need with `..attention_spec(…)`.
fn attention_spec(q: DType, cache: CacheRead, (heads, kv_heads, head_dim): (u32, u32, u32), paged: PagedKv) -> PagedAttentionSpec {
    PagedAttentionSpec {
        heads,
        kv_heads,
        head_dim,
        q,
        out: q,
        out_codes: None,
        cache,
        scale: 1.0 / (head_dim as f32).sqrt(),
        paged,
        decode: false,
        splits: 0,
        max_batch: 0,
        rope: None,
        append: None,
        warp_decode: true,
    }
}

#[test]
fn paged_attention_variants_compile() {
    let cases = [
        (DType::F16, CacheRead::Float(DType::F16), 9, 3, 64, 16),
        (DType::BF16, CacheRead::Float(DType::BF16), 32, 8, 128, 64),
        (DType::F32, CacheRead::Float(DType::F32), 4, 4, 64, 32),
        (DType::F16, CacheRead::Codes { storage: DType::F8E4M3, via: DType::F16 }, 32, 8, 128, 16),
        (DType::BF16, CacheRead::Codes { storage: DType::I8, via: DType::BF16 }, 8, 1, 64, 64),
        (DType::F32, CacheRead::Codes { storage: DType::F8E5M2, via: DType::F32 }, 4, 2, 32, 16),
        (DType::F16, CacheRead::Nvfp4 { via: DType::F16 }, 9, 3, 64, 32),
        (DType::BF16, CacheRead::Nvfp4 { via: DType::BF16 }, 32, 8, 128, 16),
        (DType::F32, CacheRead::Nvfp4 { via: DType::F32 }, 4, 2, 32, 64),
    ];
    for (q, cache, heads, kv_heads, head_dim, page_size) in cases {
        let spec = attention_spec(q, cache, (heads, kv_heads, head_dim), PagedKv { page_size, max_pages: 128 });
        let splits = decoder::decode_splits(kv_heads, spec.paged);
        let split = PagedAttentionSpec { decode: true, splits, max_batch: 16, ..spec };
        let thread_split = PagedAttentionSpec { warp_decode: false, ..split };
        for spec in [spec, PagedAttentionSpec { decode: true, ..spec }, split, thread_split] {
            let rows = spec.q_tokens() * spec.group();
            assert!(rows <= decoder::MAX_ROWS.max(spec.group()), "{spec:?}");
            assert!(spec.smem_bytes() <= decoder::MAX_SMEM);
            assert_eq!(spec.tile_keys() % page_size, 0);
            let k = spec.kernel(DimExpr::sym("B"), DimExpr::sym("S")).unwrap_or_else(|e| panic!("{spec:?}: {e}"));
            // Decode with D a multiple of 32: warps over keys (256 threads) unless turned off.
            let warps = spec.decode && spec.warp_decode && head_dim % 32 == 0;
            assert_eq!(spec.warp_keys(), warps, "{spec:?}");
            assert_eq!(k.block[0], if warps { decoder::DECODE_ATTN_THREADS } else { decoder::ATTN_THREADS });
            assert!(k.source.contains(&format!("#define QF_WARP_KEYS {}", u8::from(warps))), "{spec:?}");
            compile(&k);
        }
        assert!(split.split_scratch_bytes() > split.split_counter_bytes() && split.tile_keys() >= decoder::SPLIT_TILE_KEYS);
        assert_eq!(split.split_counter_bytes(), (16 * u64::from(kv_heads) * 4).div_ceil(16) * 16);
        let combine = decoder::split_combine_kernel(heads, head_dim, splits, q, spec.paged, DimExpr::sym("B")).unwrap();
        assert_eq!(combine.block, [decoder::combine_threads(head_dim), 1, 1]);
        compile(&combine);
        let append =
            decoder::kv_append_kernel(cache.storage(), kv_heads, head_dim, spec.paged, DimExpr::sym("B"), DimExpr::sym("S")).unwrap();
        compile(&append);
    }
    // Rows of 8 one-byte codes are not whole 16-byte packs.
    let fp8 = CacheRead::Codes { storage: DType::F8E4M3, via: DType::F16 };
    let bad = PagedAttentionSpec { scale: 0.35, decode: true, max_batch: 4, ..attention_spec(DType::F16, fp8, (2, 1, 8), PAGED) };
    assert!(bad.validate().unwrap_err().contains("16-byte packs"));
    // Only the decode variant splits, into at most 16 ranges.
    let ok = PagedAttentionSpec { head_dim: 16, ..bad };
    assert!(ok.validate().is_ok());
    for wrong in [PagedAttentionSpec { decode: false, splits: 4, ..ok }, PagedAttentionSpec { splits: 17, ..ok }] {
        assert!(wrong.validate().unwrap_err().contains("split-KV"), "{wrong:?}");
    }
    let no_batch = PagedAttentionSpec { splits: 4, max_batch: 0, ..ok };
    assert!(no_batch.validate().unwrap_err().contains("largest batch"), "{no_batch:?}");
    assert!(decoder::split_combine_kernel(4, 64, 0, DType::F16, PAGED, DimExpr::sym("B")).is_err());
    assert!(decoder::split_combine_kernel(4, 64, 4, DType::I8, PAGED, DimExpr::sym("B")).is_err());
}

/// A fused output quantize (`causal_attention … out=…`): every attention kernel (the CUDA-core
/// prefill, the tensor-core prefill, the decode variant with the fused append, split and unsplit)
/// stores E4M3 or I8 codes through ops.cuh's `qf_out`, takes `out_scale` as its last parameter,
/// and compiles to sm_90a; other codes are refused.
#[test]
fn output_quantized_attention_variants_compile() {
    let fp8 = CacheRead::Codes { storage: DType::F8E4M3, via: DType::F16 };
    for (cache, codes) in [(CacheRead::Float(DType::F16), DType::F8E4M3), (fp8, DType::F8E4M3), (CacheRead::Float(DType::F16), DType::I8)] {
        let prefill = PagedAttentionSpec { out_codes: Some(codes), ..attention_spec(DType::F16, cache, (9, 3, 64), PAGED) };
        let decode = PagedAttentionSpec { decode: true, max_batch: 8, append: Some(DecodeAppend { key_rope: None }), ..prefill };
        let split = PagedAttentionSpec { splits: decoder::decode_splits(3, PAGED).max(2), ..decode };
        let mut kernels = vec![prefill.prefill_kernel(DimExpr::sym("B"), DimExpr::sym("S")).expect("tensor-core prefill")];
        for spec in [prefill, decode, split] {
            kernels.push(spec.kernel(DimExpr::sym("B"), DimExpr::sym("S")).unwrap_or_else(|e| panic!("{spec:?}: {e}")));
        }
        let define = format!("#define QF_OUT_CODES {}", if codes == DType::I8 { 2 } else { 1 });
        for k in &kernels {
            assert_eq!(k.params.last().map(|p| p.name.as_str()), Some("out_scale"), "{}", k.template);
            assert!(k.source.contains(&define) && k.source.contains("OUT_::store("), "{}", k.template);
            compile(k);
        }
    }
    let e5m2 = PagedAttentionSpec { out_codes: Some(DType::F8E5M2), ..attention_spec(DType::F16, fp8, (9, 3, 64), PAGED) };
    assert!(e5m2.validate().unwrap_err().contains("f8e4m3 or i8"));
    // Without an output quantize nothing changes in the signature.
    let plain = attention_spec(DType::F16, fp8, (9, 3, 64), PAGED).kernel(DimExpr::sym("B"), DimExpr::sym("S")).unwrap();
    assert!(plain.params.iter().all(|p| p.name != "out_scale"));
}

/// The decode attention's own append ([`DecodeAppend`]): every fused variant (float caches with
/// and without `rope(keys)`, FP8 and INT8 caches with and without it; split and unsplit) renders
/// kv_row.cuh's per-pack code with the pools as plain pointers, takes `k, v` (and `k_out`) last,
/// and compiles to sm_90a; the specs it cannot serve name the reason.
#[test]
fn fused_append_variants_compile() {
    let rope = AttnRope { theta: 10000.0, pairs: RopePairs::Half, llama3: None, keys: false };
    let adjacent = AttnRope { pairs: RopePairs::Adjacent, ..rope };
    let key_rope = |r: AttnRope, keys: DType| Some(KeyRope { rope: AttnRope { keys: true, ..r }, keys });
    let fp8 = CacheRead::Codes { storage: DType::F8E4M3, via: DType::F16 };
    let int8 = CacheRead::Codes { storage: DType::I8, via: DType::BF16 };
    // (q, cache, heads, kv heads, D, page, query rope, key rope, pack type, packs per row)
    let cases = [
        (DType::F16, CacheRead::Float(DType::F16), 9, 3, 64, 32, None, None, "uint4", 8),
        (DType::F16, CacheRead::Float(DType::F16), 9, 3, 64, 32, Some(rope), key_rope(rope, DType::F16), "uint4", 8),
        (DType::BF16, CacheRead::Float(DType::BF16), 32, 8, 128, 16, Some(adjacent), key_rope(adjacent, DType::BF16), "uint4", 16),
        (DType::F32, CacheRead::Float(DType::F32), 4, 2, 16, 16, Some(rope), key_rope(rope, DType::F32), "uint4", 4),
        (DType::F16, fp8, 9, 3, 64, 32, None, None, "uint4", 4),
        (DType::F16, fp8, 9, 3, 64, 32, Some(rope), key_rope(rope, DType::F16), "uint4", 4),
        (DType::BF16, int8, 8, 1, 64, 64, None, None, "uint4", 4),
        (DType::BF16, int8, 8, 1, 64, 64, Some(rope), key_rope(rope, DType::BF16), "uint4", 4),
        (DType::F16, CacheRead::Codes { storage: DType::F8E5M2, via: DType::F16 }, 4, 2, 16, 16, None, None, "uint4", 1),
    ];
    for (q, cache, heads, kv_heads, head_dim, page_size, rope, key_rope, pack_t, packs) in cases {
        let unsplit = PagedAttentionSpec {
            decode: true,
            max_batch: 8,
            rope,
            append: Some(DecodeAppend { key_rope }),
            ..attention_spec(q, cache, (heads, kv_heads, head_dim), PagedKv { page_size, max_pages: 64 })
        };
        let split = PagedAttentionSpec { splits: decoder::decode_splits(kv_heads, unsplit.paged), ..unsplit };
        assert!(split.splits > 1);
        for spec in [unsplit, split] {
            let k = spec.kernel(DimExpr::sym("B"), DimExpr::sym("S")).unwrap_or_else(|e| panic!("{spec:?}: {e}"));
            let names: Vec<&str> = k.params.iter().map(|p| p.name.as_str()).collect();
            let tail: &[&str] = if key_rope.is_some() { &["k", "v", "k_out"] } else { &["k", "v"] };
            assert_eq!(names[names.len() - tail.len()..], *tail, "{spec:?}");
            let src = &k.source;
            for want in [
                "#define QF_APPEND 1".to_string(),
                format!("typedef {pack_t} P;"),
                format!("#define QF_R {packs}"),
                format!("#define QF_KEY_ROPE {}", u8::from(key_rope.is_some())),
                "QF_POOL k_pool, QF_POOL v_pool".to_string(),
                "#define QF_POOL CT_::T*\n".to_string(),
            ] {
                assert!(src.contains(&want), "{spec:?} lacks `{want}`");
            }
            let codes = matches!(cache, CacheRead::Codes { .. });
            assert_eq!(src.contains("#define QF_KEY_CODES 1"), key_rope.is_some() && codes, "{spec:?}");
            compile(&k);
        }
    }
    // Declined: the prefill variant, an NVFP4 cache, keys rotated unlike the queries, keys of
    // another dtype than a float cache's.
    let ok = PagedAttentionSpec {
        decode: true,
        max_batch: 4,
        rope: Some(rope),
        append: Some(DecodeAppend { key_rope: key_rope(rope, DType::F16) }),
        ..attention_spec(DType::F16, CacheRead::Float(DType::F16), (9, 3, 64), PAGED)
    };
    assert!(ok.validate().is_ok());
    let declined = [
        (PagedAttentionSpec { decode: false, ..ok }, "decode variant"),
        (PagedAttentionSpec { cache: CacheRead::Nvfp4 { via: DType::F16 }, append: Some(DecodeAppend { key_rope: None }), ..ok }, "NVFP4"),
        (PagedAttentionSpec { rope: Some(adjacent), ..ok }, "query rope"),
        (PagedAttentionSpec { rope: None, ..ok }, "query rope"),
        (PagedAttentionSpec { append: Some(DecodeAppend { key_rope: key_rope(rope, DType::F32) }), ..ok }, "own dtype"),
    ];
    for (spec, why) in declined {
        let e = spec.validate().unwrap_err();
        assert!(e.contains(why), "{spec:?}: {e}");
        assert!(spec.kernel(DimExpr::sym("B"), DimExpr::sym("S")).is_err());
    }
}

/// The tensor-core prefill (paged_prefill.cu): every supported variant (f16 and bf16 operands,
/// float, FP8, INT8 and NVFP4 caches read via q's dtype, D = 32, 64, 128, G = 1..8, pages of 16 to
/// 128 keys, with and without the query RoPE) compiles to sm_90a with mma.sync and PDL entry; the
/// specs it declines name the reason and keep paged_attention's prefill variant.
#[test]
fn paged_prefill_variants_compile() {
    let rope = AttnRope { theta: 10000.0, pairs: RopePairs::Half, llama3: None, keys: false };
    let cases = [
        (DType::F16, CacheRead::Float(DType::F16), 9, 3, 64, 16, None),
        (DType::BF16, CacheRead::Float(DType::BF16), 32, 8, 128, 64, None),
        (DType::F16, CacheRead::Codes { storage: DType::F8E4M3, via: DType::F16 }, 32, 8, 128, 16, None),
        (DType::F16, CacheRead::Codes { storage: DType::F8E4M3, via: DType::F16 }, 9, 3, 64, 32, Some(rope)),
        (DType::BF16, CacheRead::Codes { storage: DType::I8, via: DType::BF16 }, 8, 1, 64, 128, None),
        (DType::F16, CacheRead::Codes { storage: DType::F8E5M2, via: DType::F16 }, 4, 2, 32, 16, Some(rope)),
        (DType::F16, CacheRead::Nvfp4 { via: DType::F16 }, 9, 3, 64, 32, Some(rope)),
        (DType::BF16, CacheRead::Nvfp4 { via: DType::BF16 }, 32, 8, 128, 16, None),
    ];
    for (q, cache, heads, kv_heads, head_dim, page_size, rope) in cases {
        for out in [q, DType::F32] {
            let spec = PagedAttentionSpec {
                out,
                rope,
                ..attention_spec(q, cache, (heads, kv_heads, head_dim), PagedKv { page_size, max_pages: 128 })
            };
            spec.tensor_core_support().unwrap_or_else(|e| panic!("{spec:?}: {e}"));
            assert!(spec.prefill_q_tokens() * spec.group() <= decoder::PREFILL_ROWS);
            assert!(spec.prefill_smem_bytes() <= decoder::MAX_SMEM);
            let k = spec.prefill_kernel(DimExpr::sym("B"), DimExpr::sym("S")).unwrap_or_else(|e| panic!("{spec:?}: {e}"));
            assert_eq!((k.template, k.block, k.pdl), ("paged_prefill", [decoder::PREFILL_THREADS, 1, 1], true));
            assert_eq!(k.grid[1], DimExpr::Const(u64::from(kv_heads)));
            let mma = if q == DType::BF16 { "m16n8k16.row.col.f32.bf16" } else { "m16n8k16.row.col.f32.f16" };
            assert!(k.source.contains(mma) && k.source.contains(&format!("#define QF_ROPE {}", u8::from(rope.is_some()))));
            // A cache of q's own dtype is copied into the tiles as it is.
            assert_eq!(k.source.contains("#define QF_RAW_TILE 1"), cache == CacheRead::Float(q), "{spec:?}");
            compile(&k);
        }
    }
    // Declined: the reason names the constraint.
    let ok = PagedAttentionSpec { scale: 0.088, ..attention_spec(DType::F16, CacheRead::Float(DType::F16), (32, 8, 128), PAGED) };
    assert!(ok.tensor_core_support().is_ok());
    let declined = [
        (PagedAttentionSpec { decode: true, ..ok }, "decode"),
        (PagedAttentionSpec { q: DType::F32, out: DType::F32, cache: CacheRead::Float(DType::F32), ..ok }, "f16 or bf16"),
        (PagedAttentionSpec { cache: CacheRead::Float(DType::BF16), ..ok }, "not exact"),
        (PagedAttentionSpec { cache: CacheRead::Codes { storage: DType::F8E4M3, via: DType::F32 }, ..ok }, "not exact"),
        (PagedAttentionSpec { heads: 16, head_dim: 256, ..ok }, "head size"),
        (PagedAttentionSpec { head_dim: 24, ..ok }, "head size"),
        (PagedAttentionSpec { paged: PagedKv { page_size: 24, max_pages: 8 }, ..ok }, "k16"),
        (PagedAttentionSpec { heads: 65 * 8, ..ok }, "rows"),
    ];
    for (spec, why) in declined {
        let e = spec.tensor_core_support().unwrap_err();
        assert!(e.contains(why), "{spec:?}: {e}");
        assert!(spec.prefill_kernel(DimExpr::sym("B"), DimExpr::sym("S")).is_err());
    }
}

#[test]
fn split_counts_fill_the_sms_within_the_caps() {
    let paged = |page_size, max_pages| PagedKv { page_size, max_pages };
    // Llama-3-8B (8 KV heads) at 4k: ceil(264 / 8) = 33, capped at 16.
    assert_eq!(decoder::decode_splits(8, paged(32, 128)), 16);
    // SmolLM2 (3 KV heads) at 256 positions: 4 tiles of 64 keys.
    assert_eq!(decoder::decode_splits(3, paged(32, 8)), 4);
    // 32 KV heads: ceil(264 / 32) = 9 ranges.
    assert_eq!(decoder::decode_splits(32, paged(16, 256)), 9);
    // One tile per sequence, or KV heads enough to fill the GPU: no split.
    assert_eq!(decoder::decode_splits(2, paged(16, 4)), 1);
    assert_eq!(decoder::decode_splits(300, paged(16, 256)), 1);
    // Page 128: tiles of one page.
    assert_eq!(decoder::decode_splits(4, paged(128, 6)), 6);
}

#[test]
fn rope_kernels_print_the_interpreters_frequencies() {
    let llama3 = ", llama3(factor=8, low=1, high=4, original=64)";
    for (pairs, dtype, extra) in [("half", "f32", ""), ("adjacent", "f16", ""), ("half", "bf16", llama3)] {
        let src = common::rope_graph_text(dtype, pairs, extra, 64);
        let g = match ir::parse(&src) {
            Ok(g) => g,
            Err(e) if !extra.is_empty() => panic!("llama3 rope syntax: {e}\n{src}"),
            Err(e) => panic!("{e}"),
        };
        let program = lower_graph(&g, 90, LowerOptions::default()).unwrap_or_else(|e| panic!("{e}"));
        let k = program.kernels()[0];
        let Op::Rope(r) = g.nodes.values().find(|n| matches!(n.op, Op::Rope(_))).unwrap().op else { unreachable!() };
        let freqs = qfuse::interp::inverse_frequencies(f64::from(r.theta), 16, r.llama3.as_ref());
        for f in &freqs {
            assert!(k.source.contains(&format!("{f:e}")), "{f:e} missing");
        }
        assert!(k.source.contains(if pairs == "half" { "#define QF_ADJACENT 0" } else { "#define QF_ADJACENT 1" }));
        compile(k);
    }
}

#[test]
fn sampler_kernels_compile_for_each_logits_dtype() {
    for dt in [DType::F32, DType::F16, DType::BF16] {
        let k = sample::sample_kernel(49152, dt, 90).unwrap();
        assert_eq!(k.block, [1024, 1, 1]);
        assert_eq!(k.params.len(), 9);
        compile(&k);
    }
    assert!(sample::sample_kernel(49152, DType::I8, 90).is_err());
    assert!(sample::sample_kernel(0, DType::F32, 90).is_err());
}

// ---- the sampling rule ----------------------------------------------------------------------

/// The documented rule (docs/codegen.md "Sampling"), transcribed independently of `choose`:
/// candidates by repeated extraction of the best remaining (value by total order, then index).
fn reference(logits: &[f32], s: &Sampling, step: u64) -> Option<usize> {
    if s.temperature == 0.0 {
        let mut best: Option<usize> = None;
        for (i, &x) in logits.iter().enumerate() {
            if x.is_nan() {
                continue;
            }
            if best.is_none_or(|b| x > logits[b]) {
                best = Some(i);
            }
        }
        return best;
    }
    let top_k = s.top_k as usize;
    let k = if top_k == 0 { MAX_TOP_K } else { top_k.min(MAX_TOP_K) };
    let mut taken = vec![false; logits.len()];
    let mut order = vec![];
    while order.len() < k {
        let mut best: Option<usize> = None;
        for (i, &x) in logits.iter().enumerate() {
            if taken[i] || x.is_nan() {
                continue;
            }
            // Rust's total order on f32 as an integer key: the GPU's key.
            let key = |x: f32| {
                let b = x.to_bits();
                if b >> 31 == 1 {
                    !b
                } else {
                    b | 0x8000_0000
                }
            };
            if best.is_none_or(|j| key(x) > key(logits[j])) {
                best = Some(i);
            }
        }
        let Some(i) = best else { break };
        taken[i] = true;
        order.push(i);
    }
    let top = f64::from(logits[*order.first()?]);
    let w: Vec<f64> = order.iter().map(|&i| ((f64::from(logits[i]) - top) / f64::from(s.temperature)).exp()).collect();
    let total = w.iter().fold(0.0, |a, b| a + b);
    let mut kept = 0;
    let mut mass = 0.0;
    while kept < w.len() {
        mass += w[kept] / total;
        kept += 1;
        if mass >= f64::from(s.top_p) {
            break;
        }
    }
    let kept_total = w[..kept].iter().fold(0.0, |a, b| a + b);
    let mut target = uniform(s.seed, step) * kept_total;
    for i in 0..kept {
        if target < w[i] {
            return Some(order[i]);
        }
        target -= w[i];
    }
    Some(order[kept - 1])
}

#[test]
fn choose_follows_the_documented_rule_with_its_256_token_cap() {
    let mut state = 0x1234_5678_9abc_def0_u64;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        state >> 33
    };
    let mut checked = 0;
    for case in 0..300 {
        let n = [1usize, 7, 300, 1000][case % 4];
        let mut logits: Vec<f32> = (0..n).map(|_| (next() % 2000) as f32 / 100.0 - 10.0).collect();
        // Ties, signed zeros, NaN and infinities.
        if n > 5 {
            logits[1] = logits[0];
            logits[2] = 0.0;
            logits[3] = -0.0;
            if case % 3 == 0 {
                logits[4] = f32::NAN;
            }
            if case % 5 == 0 {
                logits[5] = f32::NEG_INFINITY;
            }
        }
        let s = Sampling {
            temperature: [0.0, 0.3, 1.0, 2.5][(case / 4) % 4],
            top_k: [0, 1, 5, 256, 1000][case % 5],
            top_p: [1.0, 0.9, 0.5][case % 3],
            seed: case as u64,
        };
        for step in 0..4 {
            assert_eq!(choose(&logits, &s, step), reference(&logits, &s, step), "case {case} step {step} {s:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, 1200);
    // The cap binds: 300 equal logits, so without it index 256..300 would be drawn often.
    let flat = vec![1.0f32; 300];
    let s = Sampling { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 9 };
    let picks: Vec<usize> = (0..2000).map(|step| choose(&flat, &s, step).unwrap()).collect();
    assert!(picks.iter().all(|&i| i < MAX_TOP_K), "a token past the 256 candidates was drawn");
    assert!(picks.iter().any(|&i| i > 200), "draws cover the candidates");
    // All NaN: no token, greedy or not.
    assert_eq!(choose(&[f32::NAN; 4], &s, 0), None);
    assert_eq!(choose(&[f32::NAN; 4], &Sampling::default(), 0), None);
}
