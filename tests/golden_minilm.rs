//! qfuse's FP32 MiniLM embeddings against an independent float64 numpy implementation
//! (`scripts/golden_minilm.py`, fixture `tests/fixtures/minilm_golden.json`), and the imported IR
//! as a snapshot.

mod common;

use qfuse::import::{self, ImportOptions};
use qfuse::interp;

#[derive(serde::Deserialize)]
struct Golden {
    max_tokens: usize,
    sentences: Vec<Sentence>,
}

#[derive(serde::Deserialize)]
struct Sentence {
    text: String,
    input_ids: Vec<i64>,
    embedding: Vec<f32>,
}

fn golden() -> Golden {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/minilm_golden.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let n = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

#[test]
fn embeddings_match_independent_reference() {
    let golden = golden();
    assert!(golden.sentences.len() >= 16);
    let opts = ImportOptions { max_tokens: golden.max_tokens, ..Default::default() };
    let model = import::load(&common::minilm_dir(), &opts).unwrap();
    let texts: Vec<String> = golden.sentences.iter().map(|s| s.text.clone()).collect();
    let batch = model.tokenizer.as_ref().unwrap().encode(&texts).unwrap();
    let ids = batch.input_ids.as_i64().unwrap();
    let width = batch.input_ids.shape[1];
    for (i, s) in golden.sentences.iter().enumerate() {
        let row = &ids[i * width..i * width + s.input_ids.len()];
        assert_eq!(row, s.input_ids.as_slice(), "token ids of {:?}", s.text);
        assert_eq!(batch.lengths[i], s.input_ids.len(), "length of {:?}", s.text);
    }
    let out = interp::run(&model.graph, &model.weights, &batch.inputs()).unwrap();
    assert_eq!(out[0].0, "sentence_embedding");
    let emb = out[0].1.as_f32().unwrap();
    let mut worst_cos = 1.0f64;
    let mut worst_abs = 0.0f32;
    for (i, s) in golden.sentences.iter().enumerate() {
        let got = &emb[i * 384..(i + 1) * 384];
        let cos = cosine(got, &s.embedding);
        let abs = got.iter().zip(&s.embedding).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(cos >= 0.99999, "{:?}: cosine {cos}", s.text);
        assert!(abs <= 1e-4, "{:?}: max abs error {abs}", s.text);
        worst_cos = worst_cos.min(cos);
        worst_abs = worst_abs.max(abs);
    }
    eprintln!("golden: {} sentences, worst cosine {worst_cos:.9}, worst max-abs {worst_abs:.3e}", golden.sentences.len());
}

#[test]
fn minilm_ir_snapshot() {
    let model = import::load(&common::minilm_dir(), &ImportOptions::default()).unwrap();
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| insta::assert_snapshot!("minilm_imported_ir", qfuse::ir::print(&model.graph)));
}
