//! The decoder ops (`rope`, `causal_attention`) and graph state in the IR: text round trip,
//! verifier rules, and the interpreter's semantics on small hand-checked cases.

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
            Op::CausalAttention(CausalAttention { heads: 2, kv_heads: 1, scale: 0.5, cache: None, rope: None }),
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
    let op = Op::CausalAttention(CausalAttention { heads: 2, kv_heads: 2, scale: 1.0, cache: None, rope: None });
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
