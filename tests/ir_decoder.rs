//! The decoder ops (`rope`, `causal_attention`) and graph state in the IR: text round trip,
//! verifier rules, and the interpreter's semantics on small hand-checked cases.

mod common;

use qfuse::interp::{self, NoWeights, Tensor};
use qfuse::ir::{self, Builder, CausalAttention, DType, Dim, Graph, Op, Rope, RopePairs, StateSlot, TensorType};

/// q/k/v inputs, rope on q and k, causal attention over a cache of `storage`, state slots.
fn step_graph(storage: DType) -> Graph {
    let mut g = Graph::new("step");
    let (b, s, p) = (Dim::Sym(g.add_symbol("B", 2)), Dim::Sym(g.add_symbol("S", 8)), Dim::Sym(g.add_symbol("P", 8)));
    let mut bb = Builder::new(&mut g);
    let q = bb.input("q", TensorType::new(DType::F32, [b, s, Dim::Fixed(8)])).unwrap();
    let k = bb.input("k", TensorType::new(DType::F32, [b, s, Dim::Fixed(1), Dim::Fixed(4)])).unwrap();
    let v = bb.input("v", TensorType::new(DType::F32, [b, s, Dim::Fixed(1), Dim::Fixed(4)])).unwrap();
    let pk = bb.input("past.k", TensorType::new(storage, [b, p, Dim::Fixed(1), Dim::Fixed(4)])).unwrap();
    let pv = bb.input("past.v", TensorType::new(DType::F32, [b, p, Dim::Fixed(1), Dim::Fixed(4)])).unwrap();
    let len = bb.input("cache_len", TensorType::new(DType::I64, [b])).unwrap();
    let rope = Op::Rope(Rope { heads: 2, theta: 10000.0, pairs: RopePairs::Half, llama3: None });
    let q = bb.add1(rope, &[q, len], None).unwrap();
    let pk32 = bb.cast(pk, DType::F32).unwrap();
    let o = bb
        .add1(
            Op::CausalAttention(CausalAttention { heads: 2, kv_heads: 1, scale: 0.5, cache: None, rope: None, output: None }),
            &[q, k, v, pk32, pv, len],
            None,
        )
        .unwrap();
    g.outputs.push(("o".into(), o));
    g.outputs.push(("present.k".into(), k));
    g.outputs.push(("present.v".into(), v));
    g.state = vec![
        StateSlot { input: "past.k".into(), update: "present.k".into(), axis: 1 },
        StateSlot { input: "past.v".into(), update: "present.v".into(), axis: 1 },
    ];
    g
}

#[test]
fn decoder_ops_and_state_round_trip_through_text() {
    let g = step_graph(DType::F32);
    ir::verify(&g, "built").expect("verifies");
    let text = ir::print(&g);
    assert!(
        text.contains("rope") && text.contains("causal_attention") && text.contains("state \"past.k\" append \"present.k\" axis=1"),
        "{text}"
    );
    let back = ir::parse(&text).expect("parses");
    assert_eq!(ir::print(&back), text);
    assert_eq!(back.state, g.state);
}

#[test]
fn the_verifier_knows_the_cache_invariants() {
    let g = step_graph(DType::F16);
    let err = ir::verify(&g, "mismatched").expect_err("f16 state with an f32 update").to_string();
    assert!(err.contains("state \"past.k\"") && err.contains("f16"), "{err}");
    let mut g = step_graph(DType::F32);
    g.state[0].axis = 3;
    let err = ir::verify(&g, "fixed axis").expect_err("state along a fixed axis").to_string();
    assert!(err.contains("axis 3"), "{err}");
    // B is symbolic too, but the token-major cache [B,P,KV,D] and its update [B,S,KV,D] agree
    // off axis 1 only.
    let mut g = step_graph(DType::F32);
    g.state[1].axis = 0;
    let err = ir::verify(&g, "batch axis").expect_err("state along the batch axis").to_string();
    assert!(err.contains("state \"past.v\"") && err.contains("differ off axis 0"), "{err}");
    // The old head-major layout [B,KV,S,D] no longer type-checks.
    let text = ir::print(&step_graph(DType::F32)).replace("f32[B,S,1,4]", "f32[B,1,S,4]");
    let err = ir::parse(&text).map(|g| ir::verify(&g, "head-major")).expect("parses").expect_err("head-major k").to_string();
    assert!(err.contains("causal_attention k must be f32[sym0,sym1,1,4]"), "{err}");
    let text = ir::print(&step_graph(DType::F32)).replace("kv_heads=1", "kv_heads=3");
    let err = ir::parse(&text).map(|g| ir::verify(&g, "bad heads")).expect("parses").expect_err("2 heads, 3 KV heads").to_string();
    assert!(err.contains("multiple of kv_heads"), "{err}");
}

fn t(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
    Tensor::f32(shape, data)
}

/// One query, one cached key and one new key: the softmax weights are checked by hand, and
/// the cached rows past `cache_len` (filled with NaN) are never read.
#[test]
fn causal_attention_reads_the_valid_cache_and_the_causal_prefix() {
    let g = step_graph(DType::F32);
    let q = t(vec![1, 1, 8], vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    let k = t(vec![1, 1, 1, 4], vec![2.0, 0.0, 0.0, 0.0]);
    let v = t(vec![1, 1, 1, 4], vec![0.0, 1.0, 0.0, 0.0]);
    let pk = t(vec![1, 2, 1, 4], vec![0.0, 0.0, 0.0, 0.0, f32::NAN, f32::NAN, f32::NAN, f32::NAN]);
    let pv = t(vec![1, 2, 1, 4], vec![1.0, 0.0, 0.0, 0.0, f32::NAN, f32::NAN, f32::NAN, f32::NAN]);
    let len = Tensor::i64(vec![1], vec![1]);
    let inputs = [("q", q), ("k", k), ("v", v), ("past.k", pk), ("past.v", pv), ("cache_len", len)];
    let out = interp::run(&g, &NoWeights, &inputs).expect("runs");
    let o = out[0].1.to_f32_vec();
    // q sits at position 1 and is rotated; its first head [c, 0, s, 0]·(2,0,0,0)·0.5 = cos(1).
    let score = 1f64.cos() as f32;
    let w_new = score.exp() / (1.0 + score.exp());
    assert!((o[0] - (1.0 - w_new)).abs() < 1e-6 && (o[1] - w_new).abs() < 1e-6, "{o:?}");
    assert!(o.iter().all(|x| x.is_finite()), "rows past cache_len were read: {o:?}");
}

/// The second correct implementation of `qfuse check`'s floors (`RunOptions::perturbation`)
/// reaches the decoder attention: its softmax `exp` moves within CUDA's `expf` bound, so the
/// context moves by a few f32 ulps — and only that far.
#[test]
fn causal_attention_softmax_follows_the_perturbation() {
    let g = step_graph(DType::F32);
    let inputs = || {
        let q = t(vec![1, 1, 8], vec![1.0, 0.5, -0.25, 0.0, 0.75, 0.0, 0.0, 1.0]);
        let k = t(vec![1, 1, 1, 4], vec![2.0, 0.5, 0.0, 1.0]);
        let v = t(vec![1, 1, 1, 4], vec![0.0, 1.0, 0.5, 0.25]);
        let pk = t(vec![1, 2, 1, 4], vec![0.3, -0.2, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0]);
        let pv = t(vec![1, 2, 1, 4], vec![1.0, 0.0, 0.125, 0.5, 0.0, 0.0, 0.0, 0.0]);
        [("q", q), ("k", k), ("v", v), ("past.k", pk), ("past.v", pv), ("cache_len", Tensor::i64(vec![1], vec![1]))]
    };
    let run = |perturbation| {
        let opts = interp::RunOptions { perturbation, ..Default::default() };
        interp::run_with(&g, &NoWeights, &inputs(), &opts, &mut |_, _| {}).expect("runs")[0].1.to_f32_vec()
    };
    let exact = run(None);
    let moved: Vec<Vec<f32>> = (0..8).map(|seed| run(Some(interp::Perturbation::Draw { seed }))).collect();
    assert!(moved.iter().any(|o| o.iter().zip(&exact).any(|(a, b)| a.to_bits() != b.to_bits())), "no draw moved the attention");
    for o in &moved {
        assert!(o.iter().zip(&exact).all(|(a, b)| (a - b).abs() <= 1e-6 * (1.0 + b.abs())), "{o:?} vs {exact:?}");
    }
}

/// Token-major K/V: with two KV heads, head `g` of token `t` is row `t·KV + g` of a sequence's
/// `[P, KV, D]` cache and `[S, KV, D]` step. Zero keys give uniform weights, so each query head
/// reads the mean of exactly its own KV head's values over the two cached tokens and the new one.
#[test]
fn causal_attention_reads_token_major_kv_rows() {
    let mut g = Graph::new("nhd");
    let (b, s, p) = (Dim::Sym(g.add_symbol("B", 1)), Dim::Sym(g.add_symbol("S", 1)), Dim::Sym(g.add_symbol("P", 4)));
    let mut bb = Builder::new(&mut g);
    let kv = |bb: &mut Builder, name: &str, tokens: Dim| {
        bb.input(name, TensorType::new(DType::F32, [b, tokens, Dim::Fixed(2), Dim::Fixed(2)])).unwrap()
    };
    let q = bb.input("q", TensorType::new(DType::F32, [b, s, Dim::Fixed(4)])).unwrap();
    let ins = [q, kv(&mut bb, "k", s), kv(&mut bb, "v", s), kv(&mut bb, "past.k", p), kv(&mut bb, "past.v", p)];
    let len = bb.input("cache_len", TensorType::new(DType::I64, [b])).unwrap();
    let op = Op::CausalAttention(CausalAttention { heads: 2, kv_heads: 2, scale: 1.0, cache: None, rope: None, output: None });
    let o = bb.add1(op, &[ins[0], ins[1], ins[2], ins[3], ins[4], len], None).unwrap();
    g.outputs.push(("o".into(), o));
    ir::verify(&g, "built").expect("verifies");
    // past_v rows (t, g): (0,0) = [1,2], (0,1) = [10,20], (1,0) = [3,4], (1,1) = [30,40]; then NaN.
    let mut past_v = vec![1.0, 2.0, 10.0, 20.0, 3.0, 4.0, 30.0, 40.0];
    past_v.extend([f32::NAN; 8]);
    let inputs = [
        ("q", t(vec![1, 1, 4], vec![1.0, 2.0, 3.0, 4.0])),
        ("k", t(vec![1, 1, 2, 2], vec![0.0; 4])),
        ("v", t(vec![1, 1, 2, 2], vec![5.0, 6.0, 50.0, 60.0])),
        ("past.k", t(vec![1, 4, 2, 2], vec![0.0; 16])),
        ("past.v", t(vec![1, 4, 2, 2], past_v)),
        ("cache_len", Tensor::i64(vec![1], vec![2])),
    ];
    let o = interp::run(&g, &NoWeights, &inputs).expect("runs")[0].1.to_f32_vec();
    let want = [3.0, 4.0, 30.0, 40.0];
    assert!(o.iter().zip(want).all(|(x, w)| (x - w).abs() < 1e-5), "{o:?}");
}

/// llama.cpp's adjacent pairs on rows permuted as its converter permutes them equal Hugging
/// Face's rotate-half pairs on the original rows.
#[test]
fn adjacent_rope_on_permuted_rows_equals_half_rope() {
    let run = |pairs, x: Vec<f32>| {
        let mut g = Graph::new("rope");
        let (b, s) = (Dim::Sym(g.add_symbol("B", 1)), Dim::Sym(g.add_symbol("S", 4)));
        let mut bb = Builder::new(&mut g);
        let xi = bb.input("x", TensorType::new(DType::F32, [b, s, Dim::Fixed(8)])).unwrap();
        let len = bb.input("cache_len", TensorType::new(DType::I64, [b])).unwrap();
        let y = bb.add1(Op::Rope(Rope { heads: 1, theta: 100.0, pairs, llama3: None }), &[xi, len], None).unwrap();
        g.outputs.push(("y".into(), y));
        let out = interp::run(&g, &NoWeights, &[("x", t(vec![1, 3, 8], x)), ("cache_len", Tensor::i64(vec![1], vec![5]))]).unwrap();
        out[0].1.to_f32_vec()
    };
    let x: Vec<f32> = (0..24).map(|i| (i as f32 * 0.37).sin()).collect();
    // Row (feature) order of llama.cpp: HF index j·(D/2) + i stored at 2i + j.
    let permute = |v: &[f32]| -> Vec<f32> {
        let mut out = v.to_vec();
        for tok in 0..3 {
            for i in 0..4 {
                for j in 0..2 {
                    out[tok * 8 + 2 * i + j] = v[tok * 8 + j * 4 + i];
                }
            }
        }
        out
    };
    let half = run(RopePairs::Half, x.clone());
    let adjacent = run(RopePairs::Adjacent, permute(&x));
    assert_eq!(adjacent, permute(&half));
}

/// `last_token` keeps each sequence's last row, and an IR text with it round-trips.
#[test]
fn last_token_keeps_each_sequences_last_row() {
    let text = r#"graph "last" {
  sym B max=4
  sym S max=8
  %0 = input "h" : f32[B,S,3]
  %1 = last_token %0 : f32[B,1,3]
  return "y" = %1
}
"#;
    let g = ir::parse(text).expect("parses");
    ir::verify(&g, "last_token").expect("verifies");
    assert_eq!(ir::print(&g), text);
    let h: Vec<f32> = (0..2 * 3 * 3).map(|i| i as f32).collect();
    let out = interp::run(&g, &NoWeights, &[("h", t(vec![2, 3, 3], h))]).expect("runs");
    assert_eq!(out[0].1.shape, vec![2, 1, 3]);
    assert_eq!(out[0].1.to_f32_vec(), vec![6.0, 7.0, 8.0, 15.0, 16.0, 17.0]);
    let bad = text.replace("f32[B,1,3]", "f32[B,2,3]");
    let err = ir::parse(&bad).map(|g| ir::verify(&g, "bad")).expect("parses").expect_err("two rows").to_string();
    assert!(err.contains("last_token") || err.contains("[B,1,3]") || err.contains("sym0,1,3"), "{err}");
}

/// One NVFP4 attention layer over `f4e2m1` codes `[B,·,1,32]` with `f8e4m3` block scales
/// `[B,·,1,2]` (heads 2, KV heads 1, D 32), as fused (`codes(..., block=16)`, 10 operands) or as
/// the block builder writes it: `mul(dequantize(codes, scales), global)` per operand.
fn nvfp4_attention_text(fused: bool) -> String {
    let mut body = String::from(
        r#"  %0 = input "q" : f16[B,S,64]
  %1 = input "cache_len" : i64[B]
  %2 = input "past.k.0" : f4e2m1[B,P,1,32]
  %3 = input "past.k_scale.0" : f8e4m3[B,P,1,2]
  %4 = input "past.v.0" : f4e2m1[B,P,1,32]
  %5 = input "past.v_scale.0" : f8e4m3[B,P,1,2]
  %6 = input "k" : f4e2m1[B,S,1,32]
  %7 = input "k_scale" : f8e4m3[B,S,1,2]
  %8 = input "v" : f4e2m1[B,S,1,32]
  %9 = input "v_scale" : f8e4m3[B,S,1,2]
"#,
    );
    let attrs = "heads=2, kv_heads=1, scale=0.17677669";
    if fused {
        body.push_str(&format!(
            "  %10 = causal_attention %0, %6, %8, %2, %4, %1, %7, %9, %3, %5 {{{attrs}, codes(k_scale=0.0078125,v_scale=0.03125,via=f16,block=16)}} : f16[B,S,64]\n"
        ));
    } else {
        body.push_str("  %10 = scalar 0.0078125 : f16[]\n  %11 = scalar 0.03125 : f16[]\n");
        let reads = [(6, 7, "S", 10), (8, 9, "S", 11), (2, 3, "P", 10), (4, 5, "P", 11)];
        for (i, (codes, scales, len, global)) in reads.into_iter().enumerate() {
            let (dq, mul) = (12 + 2 * i, 13 + 2 * i);
            body.push_str(&format!("  %{dq} = dequantize %{codes} {{f4e2m1, block(-1:16), scale=%{scales}}} : f16[B,{len},1,32]\n"));
            body.push_str(&format!("  %{mul} = mul %{dq}, %{global} : f16[B,{len},1,32]\n"));
        }
        body.push_str(&format!("  %20 = causal_attention %0, %13, %15, %17, %19, %1 {{{attrs}}} : f16[B,S,64]\n"));
    }
    let o = if fused { 10 } else { 20 };
    format!(
        "graph \"nvfp4\" {{\n  sym B max=2\n  sym S max=4\n  sym P max=8\n{body}  return \"o\" = %{o}, \"present.k.0\" = %6, \
         \"present.k_scale.0\" = %7, \"present.v.0\" = %8, \"present.v_scale.0\" = %9\n  state \"past.k.0\" append \"present.k.0\" axis=1\n  \
         state \"past.k_scale.0\" append \"present.k_scale.0\" axis=1\n  state \"past.v.0\" append \"present.v.0\" axis=1\n  \
         state \"past.v_scale.0\" append \"present.v_scale.0\" axis=1\n}}\n"
    )
}

#[test]
fn an_nvfp4_cache_attention_round_trips_verifies_and_reads_as_its_dequantize() {
    let fused = ir::parse(&nvfp4_attention_text(true)).expect("parses");
    ir::verify(&fused, "nvfp4").expect("verifies");
    let text = ir::print(&fused);
    assert!(text.contains("block=16") && text.contains("%7, %9, %3, %5"), "{text}");
    assert_eq!(ir::print(&ir::parse(&text).expect("reparses")), text);
    // Block scales must be f8e4m3 [.., KV, D/16]; codes f4e2m1; block=16 needs its 4 operands.
    let cases = [
        (": f8e4m3[B,S,1,2]\n  %8", ": f16[B,S,1,2]\n  %8", "k_s must be f8e4m3"),
        ("f8e4m3[B,P,1,2]\n  %4", "f8e4m3[B,P,1,4]\n  %4", "past_k_s must be f8e4m3"),
        // The codes' format is v's (k may be fuse-rope's unrotated keys); k must match it.
        ("f4e2m1[B,S,1,32]\n  %9", "f8e4m3[B,S,1,32]\n  %9", "codes must be"),
        ("f4e2m1[B,S,1,32]\n  %7", "f8e4m3[B,S,1,32]\n  %7", "k must be f4e2m1"),
        (", %7, %9, %3, %5 {", " {", "takes 10 input"),
    ];
    for (from, to, want) in cases {
        let bad = nvfp4_attention_text(true).replacen(from, to, 1);
        assert_ne!(bad, nvfp4_attention_text(true), "{from}");
        let err = match ir::parse(&bad) {
            Ok(g) => ir::verify(&g, "bad").expect_err(want).to_string(),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(want), "{want}: {err}");
    }
    // The fused attention is exactly the block dequantize, the global product and the f16 attention.
    let mut unfused = ir::parse(&nvfp4_attention_text(false)).expect("parses");
    ir::verify(&unfused, "unfused").expect("verifies");
    let (b, s, p) = (2usize, 3usize, 5usize);
    let codes =
        |tokens: usize, seed: u64| Tensor::from_f32_as(DType::F4E2M1, vec![b, tokens, 1, 32], common::noise(b * tokens * 32, seed, 7.0));
    let scales = |tokens: usize, seed: u64| {
        let v = common::noise(b * tokens * 2, seed, 300.0).into_iter().map(|x| x.abs() + 0.002).collect();
        Tensor::from_f32_as(DType::F8E4M3, vec![b, tokens, 1, 2], v)
    };
    let inputs = [
        ("q", Tensor::from_f32_as(DType::F16, vec![b, s, 64], common::noise(b * s * 64, 1, 1.0))),
        ("cache_len", Tensor::i64(vec![b], vec![5, 2])),
        ("past.k.0", codes(p, 2)),
        ("past.k_scale.0", scales(p, 3)),
        ("past.v.0", codes(p, 4)),
        ("past.v_scale.0", scales(p, 5)),
        ("k", codes(s, 6)),
        ("k_scale", scales(s, 7)),
        ("v", codes(s, 8)),
        ("v_scale", scales(s, 9)),
    ];
    let run = |g: &Graph| interp::run(g, &NoWeights, &inputs).expect("runs")[0].1.to_f32_vec();
    let want = run(&unfused);
    assert!(want.iter().all(|x| x.is_finite()));
    assert_eq!(run(&fused).iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    // fuse-kv-cache turns the unfused graph into the fused one.
    let weights = qfuse::passes::MemoryWeights::default();
    let mut cx = qfuse::passes::PassCx::new(&weights);
    assert!(qfuse::passes::pipeline::by_name("fuse-kv-cache").unwrap().run(&mut unfused, &mut cx).unwrap());
    let attn = unfused.nodes.ids().find(|&i| matches!(unfused.nodes[i].op, Op::CausalAttention(_))).unwrap();
    let Op::CausalAttention(a) = unfused.nodes[attn].op else { unreachable!() };
    let c = a.cache.expect("codes");
    assert_eq!((c.k_scale, c.v_scale, c.via, c.block), (0.0078125, 0.03125, DType::F16, 16));
    assert_eq!(unfused.nodes[attn].inputs.len(), 10);
    assert_eq!(run(&unfused).iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
}

/// `fuse-rope`'s `rope(...)` over an NVFP4 cache: the query rotation keeps the ten operands and
/// verifies; `rope(..., keys)` is not defined there (its block scales would be a third result).
#[test]
fn an_nvfp4_cache_attention_rotates_queries_only() {
    let codes = "block=16)}";
    let rotated = nvfp4_attention_text(true).replacen(codes, "block=16), rope(theta=10000, pairs=half)}", 1);
    assert_ne!(rotated, nvfp4_attention_text(true));
    let g = ir::parse(&rotated).expect("parses");
    ir::verify(&g, "nvfp4 rope").expect("verifies");
    let text = ir::print(&g);
    assert!(text.contains("block=16), rope(theta=10000.0,pairs=half)"), "{text}");
    let keys = nvfp4_attention_text(true).replacen(codes, "block=16), rope(theta=10000, pairs=half, keys)}", 1);
    let err = match ir::parse(&keys) {
        Ok(g) => ir::verify(&g, "nvfp4 rope keys").expect_err("rope(keys) over NVFP4").to_string(),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("NVFP4"), "{err}");
}

/// A causal attention with an output quantize (`out=f8e4m3`, `fuse-attention-output`): its codes
/// are the `quantize` of the f16 context, and its code window (what `qfuse check` allows a GPU
/// kernel, [`interp::code_window`]) holds the interpreter's own codes and is the reference code
/// alone at most elements.
#[test]
fn an_output_quantized_attention_quantizes_its_context_and_has_a_narrow_code_window() {
    let text = |out: &str| {
        format!(
            r#"graph "attn" {{
  sym B max=2
  sym S max=4
  sym P max=40
  %0 = input "q" : f16[B,S,128]
  %1 = input "cache_len" : i64[B]
  %2 = input "past.k.0" : f16[B,P,2,32]
  %3 = input "past.v.0" : f16[B,P,2,32]
  %4 = input "k" : f16[B,S,2,32]
  %5 = input "v" : f16[B,S,2,32]
  %6 = causal_attention %0, %4, %5, %2, %3, %1 {{heads=4, kv_heads=2, scale=0.17677669{out}}} : {ty}[B,S,128]
  return "o" = %6, "present.k.0" = %4, "present.v.0" = %5
  state "past.k.0" append "present.k.0" axis=1
  state "past.v.0" append "present.v.0" axis=1
}}"#,
            ty = if out.is_empty() { "f16" } else { "f8e4m3" }
        )
    };
    let (plain, fused) = (ir::parse(&text("")).unwrap(), ir::parse(&text(", out=f8e4m3, out_scale=0.00390625")).unwrap());
    ir::verify(&fused, "test").unwrap();
    assert_eq!(ir::print(&ir::parse(&ir::print(&fused)).unwrap()), ir::print(&fused), "round trip");
    let mk = |shape: Vec<usize>, seed: u64, s: f32| {
        let n = shape.iter().product();
        Tensor::from_f32_as(DType::F16, shape, common::noise(n, seed, s))
    };
    let inputs = [
        ("q", mk(vec![2, 4, 128], 1, 2.0)),
        ("k", mk(vec![2, 4, 2, 32], 2, 2.0)),
        ("v", mk(vec![2, 4, 2, 32], 3, 1.0)),
        ("past.k.0", mk(vec![2, 40, 2, 32], 4, 2.0)),
        ("past.v.0", mk(vec![2, 40, 2, 32], 5, 1.0)),
        ("cache_len", Tensor::i64(vec![2], vec![0, 37])),
    ];
    let context = interp::run(&plain, &NoWeights, &inputs).unwrap().remove(0).1;
    let codes = interp::run(&fused, &NoWeights, &inputs).unwrap().remove(0).1;
    let want: Vec<f32> = context.to_f32_vec().iter().map(|&x| qfuse::numerics::cast(x / 0.00390625, DType::F8E4M3)).collect();
    assert_eq!(codes.to_f32_vec(), want, "the codes of the f16 context");
    assert!(want.iter().any(|&c| c.abs() >= 64.0), "the scale spreads the context over many codes");

    let attention = |g: &Graph| g.nodes.values().find(|n| matches!(n.op, Op::CausalAttention(_))).unwrap().op.clone();
    let args = || -> Vec<_> {
        ["q", "k", "v", "past.k.0", "past.v.0", "cache_len"]
            .iter()
            .map(|n| std::sync::Arc::new(inputs.iter().find(|(m, _)| m == n).unwrap().1.clone()))
            .collect()
    };
    let (lo, hi) = interp::code_window(&attention(&fused), args(), &codes).unwrap().expect("a window");
    let (lo, hi, got) = (lo.to_f32_vec(), hi.to_f32_vec(), codes.to_f32_vec());
    for i in 0..got.len() {
        assert!(lo[i] <= got[i] && got[i] <= hi[i], "element {i}: {} not in [{}, {}]", got[i], lo[i], hi[i]);
    }
    let wide = (0..got.len()).filter(|&i| lo[i] != hi[i]).count();
    assert!(wide * 20 < got.len(), "{wide} of {} windows hold more than one code", got.len());
    assert!(interp::code_window(&attention(&plain), args(), &context).unwrap().is_none(), "no window without an output quantize");
}
