//! Hugging Face Llama-family folders (synthetic: `scripts/make_synthetic_llama.py`) against an
//! independent float64 numpy forward (`scripts/llama_reference.py`, fixture `expected.json`), and
//! the KV cache against recomputation.

mod common;

use qfuse::generate::{self, Sampling, Session};
use qfuse::import::decoder::{self, DecoderOptions};
use serde_json::Value;

const FOLDERS: [&str; 4] = ["llama-f32", "llama3-bf16-sharded", "mistral-f16", "qwen2-f32"];

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("id list").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

fn expected(dir: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).expect("expected.json")).expect("json")
}

#[test]
fn hf_folders_match_the_numpy_reference() {
    for name in FOLDERS {
        let Some(dir) = common::synthetic(name) else { return };
        let model = decoder::load_hf(&dir, &DecoderOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = expected(&dir);
        for seq in want["sequences"].as_array().expect("sequences") {
            let tokens = ids(&seq["ids"]);
            let mut s = Session::new(&model.graph, &model.weights, 0).expect("session");
            let logits = s.step(&tokens).expect("step");
            let reference = common::f32_base64(seq["last_logits_f32le_base64"].as_str().expect("logits"));
            let got = logits.row(tokens.len() - 1);
            let cos = common::cosine(got, &reference);
            let label = &seq["label"];
            assert!(cos > 0.99999, "{name} {label}: cosine {cos}");
            let argmax = generate::sample::argmax(got).expect("argmax");
            assert_eq!(argmax as u64, seq["last_argmax"].as_u64().expect("argmax"), "{name} {label}");
            if let Some(per_pos) = seq.get("argmax_per_position") {
                let got: Vec<u32> = (0..logits.rows()).map(|i| generate::sample::argmax(logits.row(i)).expect("argmax") as u32).collect();
                assert_eq!(got, ids(per_pos), "{name} {label}: argmax at every position");
            }
        }
        let greedy = &want["greedy"];
        let mut s = Session::new(&model.graph, &model.weights, 0).expect("session");
        let want_new = ids(&greedy["new_ids"]);
        let (new, _) = generate::generate(&mut s, &ids(&greedy["prompt_ids"]), want_new.len(), &Sampling::default(), &[], &mut |_| true)
            .expect("generate");
        assert_eq!(new, want_new, "{name}: greedy continuation with the KV cache");
    }
}

/// Decoding token by token over the cache gives the logits of one full prefill.
#[test]
fn kv_cache_steps_equal_a_full_prefill() {
    let Some(dir) = common::synthetic("qwen2-f32") else { return };
    let model = decoder::load_hf(&dir, &DecoderOptions::default()).expect("import");
    let tokens: Vec<u32> = vec![504, 2365, 6354, 16438, 27003, 690, 260];
    let full = Session::new(&model.graph, &model.weights, 0).expect("session").step(&tokens).expect("prefill");
    let mut s = Session::new(&model.graph, &model.weights, 0).expect("session");
    let first = s.step(&tokens[..3]).expect("prefix");
    for i in 0..3 {
        assert!(common::cosine(first.row(i), full.row(i)) > 0.9999999, "prefix row {i}");
    }
    for (i, &t) in tokens.iter().enumerate().skip(3) {
        let step = s.step(&[t]).expect("decode step");
        let cos = common::cosine(step.row(0), full.row(i));
        assert!(cos > 0.9999999, "decode step at position {i}: cosine {cos}");
    }
    assert_eq!(s.len(), tokens.len());
}

#[test]
fn a_prompt_longer_than_the_context_is_an_error() {
    let Some(dir) = common::synthetic("llama-f32") else { return };
    let opts = DecoderOptions { max_seq: Some(8), ..Default::default() };
    let model = decoder::load_hf(&dir, &opts).expect("import");
    let mut s = Session::new(&model.graph, &model.weights, 0).expect("session");
    let err = s.step(&[1; 9]).err().expect("too long");
    assert!(err.contains("exceeds the limit of 8"), "{err}");
}
