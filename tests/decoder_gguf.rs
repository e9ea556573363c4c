//! The default decoder (SmolLM2-135M-Instruct, Q4_1 GGUF) against an independent float64 numpy
//! forward (`scripts/golden_smollm2.py`), and GGUF twins against their Hugging Face folders.

mod common;

use qfuse::generate::{self, sample, Sampling, Session};
use qfuse::import::decoder::{self, DecoderOptions};
use serde_json::Value;

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("id list").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

fn opts() -> DecoderOptions {
    DecoderOptions { max_batch: 1, max_seq: Some(256), ..Default::default() }
}

/// Last-token logits of 8 varied prompts within cosine 0.99999 of the reference, and greedy
/// continuations identical up to the first step where the reference's top two logits are closer
/// than 1e-3 (a tie that f32 and f64 may break differently; none occurs in the fixture today).
#[test]
fn smollm2_matches_the_float64_reference() {
    let model = decoder::load(&common::smollm2_gguf(), &opts()).expect("import SmolLM2");
    let tok = model.tokenizer.as_ref().expect("tokenizer");
    let golden: Value = serde_json::from_str(include_str!("fixtures/smollm2_golden.json")).expect("fixture");
    let prompts = golden["prompts"].as_array().expect("prompts");
    assert!(prompts.len() >= 8);
    for p in prompts {
        let text = p["text"].as_str().expect("text");
        let prompt = ids(&p["input_ids"]);
        assert_eq!(tok.encode(text).expect("encode"), prompt, "token ids of {text:?}");
        let want = common::f32_base64(p["last_logits_f32_b64"].as_str().expect("logits"));
        let mut s = Session::new(&model.graph, &model.weights, 0).expect("session");
        let mut got = vec![];
        let logits = s.step(&prompt).expect("prefill");
        let last = logits.row(prompt.len() - 1);
        let cos = common::cosine(last, &want);
        assert!(cos >= 0.99999, "{text:?}: last-token logits cosine {cos}");
        got.push(sample::argmax(last).expect("argmax") as u32);
        let greedy = ids(&p["greedy_ids"]);
        let gaps: Vec<f64> = p["greedy_logit_gaps"].as_array().expect("gaps").iter().map(|g| g.as_f64().expect("gap")).collect();
        let comparable = gaps.iter().position(|&g| g < 1e-3).unwrap_or(greedy.len());
        while got.len() < comparable {
            let step = s.step(&[*got.last().expect("token")]).expect("decode");
            got.push(sample::argmax(step.row(0)).expect("argmax") as u32);
        }
        assert_eq!(got[..comparable], greedy[..comparable], "{text:?}: greedy continuation");
    }
}

#[test]
fn smollm2_config_comes_from_the_metadata() {
    let model = decoder::load(&common::smollm2_gguf(), &opts()).expect("import");
    let c = &model.config;
    assert_eq!((c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim), (30, 576, 9, 3, 64));
    assert_eq!((c.intermediate_size, c.vocab_size, c.rope_theta), (1536, 49152, 100000.0));
    assert!(c.tie_word_embeddings);
    assert_eq!(c.eos_token_ids, vec![2]);
    assert_eq!(model.graph.state.len(), 60, "K and V state per layer");
}

/// An HF folder and the GGUF that gguf-py wrote from the same weights give the same logits.
#[test]
fn gguf_twins_give_their_folders_logits() {
    for name in ["llama-f32", "mistral-f16", "qwen2-f32"] {
        let Some(dir) = common::synthetic(name) else { return };
        let twin = dir.with_extension("gguf");
        let hf = decoder::load(&dir, &opts()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let gg = decoder::load(&twin, &opts()).unwrap_or_else(|e| panic!("{name}.gguf: {e}"));
        // llama.cpp converts Mistral as `llama`; everything but the family name must agree.
        let mut hf_cfg = hf.config.clone();
        hf_cfg.family = gg.config.family;
        hf_cfg.max_position_embeddings = gg.config.max_position_embeddings;
        hf_cfg.bos_token_id = gg.config.bos_token_id;
        hf_cfg.eos_token_ids = gg.config.eos_token_ids.clone();
        assert_eq!(hf_cfg, gg.config, "{name}: settings from config.json and from the GGUF metadata");
        let tokens = [504u32, 2365, 6354, 16438, 27003, 690, 260];
        let a = Session::new(&hf.graph, &hf.weights, 0).expect("session").step(&tokens).expect("hf");
        let b = Session::new(&gg.graph, &gg.weights, 0).expect("session").step(&tokens).expect("gguf");
        assert_eq!(a.data, b.data, "{name}: logits of the folder and its GGUF twin differ");
        let prompt = gg.tokenizer.as_ref().expect("tokenizer").encode("The quick brown fox").expect("encode");
        let hf_prompt = hf.tokenizer.as_ref().expect("tokenizer").encode("The quick brown fox").expect("encode");
        assert_eq!(prompt, hf_prompt, "{name}: tokenizers agree");
    }
}

#[test]
fn sampling_reproduces_with_a_seed_and_differs_across_seeds() {
    let Some(dir) = common::synthetic("llama-f32") else { return };
    let model = decoder::load(&dir, &opts()).expect("import");
    let run = |seed| {
        let s = Sampling { temperature: 1.0, top_k: 50, top_p: 0.95, seed };
        let mut session = Session::new(&model.graph, &model.weights, 0).expect("session");
        generate::generate(&mut session, &[504, 2365], 12, &s, &[], &mut |_| true).expect("generate").0
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn bad_decoder_inputs_get_named_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("broken.gguf");
    std::fs::write(&bad, b"GGUF\x03\x00\x00\x00").expect("write");
    let err = decoder::load(&bad, &opts()).err().expect("truncated GGUF").to_string();
    assert!(err.contains("broken.gguf"), "{err}");
    let missing = decoder::load(&dir.path().join("absent"), &opts()).err().expect("missing").to_string();
    assert!(missing.contains("absent"), "{missing}");
}
