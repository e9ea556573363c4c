//! Bad input gets an error naming the file and the tensor or field, and never a panic.

mod common;

use common::*;
use qfuse::import::{self, ImportError, ImportOptions};
use std::path::Path;

fn load(dir: &Path) -> Result<import::Model, ImportError> {
    import::load(dir, &ImportOptions::default())
}

fn err_text(dir: &Path) -> String {
    match load(dir) {
        Ok(_) => panic!("import of {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn tiny_bert_imports() {
    let dir = tiny_bert_dir();
    let model = load(dir.path()).expect("the well-formed tiny BERT imports");
    assert_eq!(model.graph.outputs[0].0, "last_hidden_state");
}

#[test]
fn missing_model_folder() {
    let e = err_text(Path::new("/nonexistent/qfuse-model"));
    assert!(e.contains("/nonexistent/qfuse-model") && e.contains("model folder"), "{e}");
}

#[test]
fn missing_config() {
    let dir = tiny_bert_dir();
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let e = err_text(dir.path());
    assert!(e.contains("config.json") && e.contains("missing"), "{e}");
}

#[test]
fn malformed_config() {
    let dir = tiny_bert_dir();
    std::fs::write(dir.path().join("config.json"), "{\"model_type\": \"bert\", \"hidden_size\": 8,,}").unwrap();
    let e = err_text(dir.path());
    assert!(e.contains("config.json") && e.contains("malformed JSON") && e.contains("line 1"), "{e}");
}

#[test]
fn unsupported_model_type() {
    let dir = tiny_bert_dir();
    std::fs::write(dir.path().join("config.json"), TINY_CONFIG.replace("\"bert\"", "\"gpt_neox\"")).unwrap();
    let e = err_text(dir.path());
    assert!(e.contains("config.json") && e.contains("model_type") && e.contains("gpt_neox"), "{e}");
    // A Llama-family folder is a decoder: the encoder importer says which commands take it.
    std::fs::write(dir.path().join("config.json"), TINY_CONFIG.replace("\"bert\"", "\"llama\"")).unwrap();
    let e = err_text(dir.path());
    assert!(e.contains("is a decoder") && e.contains("qfuse import`, `generate` and `eval`"), "{e}");
}

#[test]
fn missing_and_mistyped_fields() {
    let dir = tiny_bert_dir();
    std::fs::write(dir.path().join("config.json"), TINY_CONFIG.replace("\"hidden_size\": 8,", "")).unwrap();
    let e = err_text(dir.path());
    assert!(e.contains("config.json") && e.contains("`hidden_size`") && e.contains("missing"), "{e}");
    std::fs::write(dir.path().join("config.json"), TINY_CONFIG.replace("\"num_attention_heads\": 2", "\"num_attention_heads\": \"two\""))
        .unwrap();
    let e = err_text(dir.path());
    assert!(e.contains("`num_attention_heads`") && e.contains("positive integer"), "{e}");
    std::fs::write(dir.path().join("config.json"), TINY_CONFIG.replace("\"num_attention_heads\": 2", "\"num_attention_heads\": 3"))
        .unwrap();
    let e = err_text(dir.path());
    assert!(e.contains("`num_attention_heads`") && e.contains("not divisible"), "{e}");
}

#[test]
fn missing_tensor() {
    let dir = tiny_bert_dir();
    let tensors: Vec<_> = tiny_bert_tensors().into_iter().filter(|t| t.0 != "encoder.layer.0.attention.self.key.weight").collect();
    std::fs::write(dir.path().join("model.safetensors"), safetensors_bytes(&tensors)).unwrap();
    let e = err_text(dir.path());
    assert!(e.contains("model.safetensors") && e.contains("`encoder.layer.0.attention.self.key.weight` is missing"), "{e}");
}

#[test]
fn misshapen_tensor() {
    let dir = tiny_bert_dir();
    let mut tensors = tiny_bert_tensors();
    let t = tensors.iter_mut().find(|t| t.0 == "encoder.layer.0.intermediate.dense.weight").unwrap();
    t.1 = vec![8, 16];
    std::fs::write(dir.path().join("model.safetensors"), safetensors_bytes(&tensors)).unwrap();
    let e = err_text(dir.path());
    assert!(e.contains("`encoder.layer.0.intermediate.dense.weight` has shape [8, 16], expected [16, 8]"), "{e}");
}

#[test]
fn truncated_safetensors() {
    let dir = tiny_bert_dir();
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let e = err_text(dir.path());
    assert!(e.contains("model.safetensors") && e.contains("invalid safetensors"), "{e}");
    std::fs::write(&path, &bytes[..5]).unwrap();
    let e = err_text(dir.path());
    assert!(e.contains("model.safetensors") && e.contains("invalid safetensors"), "{e}");
}

#[test]
fn corrupt_safetensors_header() {
    let dir = tiny_bert_dir();
    let path = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8] = b'x'; // the header JSON no longer starts with `{`
    std::fs::write(&path, &bytes).unwrap();
    let e = err_text(dir.path());
    assert!(e.contains("model.safetensors") && e.contains("invalid safetensors"), "{e}");
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let e = err_text(dir.path());
    assert!(e.contains("invalid safetensors"), "{e}");
}

#[test]
fn wrong_tensor_dtype() {
    let dir = tiny_bert_dir();
    let tensors = tiny_bert_tensors();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, d)| (n.clone(), safetensors::Dtype::F32, s.clone(), d.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let t = owned.iter_mut().find(|t| t.0 == "embeddings.LayerNorm.bias").unwrap();
    t.1 = safetensors::Dtype::I32;
    let views: std::collections::HashMap<_, _> =
        owned.iter().map(|(n, dt, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*dt, s.clone(), b).unwrap())).collect();
    std::fs::write(dir.path().join("model.safetensors"), safetensors::serialize(&views, None).unwrap()).unwrap();
    let e = err_text(dir.path());
    assert!(e.contains("`embeddings.LayerNorm.bias` has unsupported dtype I32"), "{e}");
}

/// A WordPiece tokenizer whose vocabulary lacks its own `[UNK]` token fails on unknown words.
const BROKEN_TOKENIZER: &str = r###"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
 "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
 "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
   "max_input_chars_per_word": 100, "vocab": {"hello": 0, "world": 1}}}"###;

#[test]
fn tokenizer_errors_name_the_file_and_text() {
    let dir = tiny_bert_dir();
    let tok = dir.path().join("tokenizer.json");
    std::fs::write(&tok, "{ not json").unwrap();
    let e = err_text(dir.path());
    assert!(e.contains("tokenizer.json") && e.contains("tokenizer:"), "{e}");
    std::fs::write(&tok, BROKEN_TOKENIZER).unwrap();
    let model = load(dir.path()).unwrap();
    let e = model.tokenizer.unwrap().encode(&["hello zebra".to_string()]).unwrap_err().to_string();
    assert!(e.contains("tokenizer.json") && e.contains("text #0") && e.contains("hello zebra"), "{e}");
}

#[test]
fn cli_reports_errors_without_panicking() {
    let dir = tiny_bert_dir();
    std::fs::write(dir.path().join("config.json"), TINY_CONFIG.replace("\"bert\"", "\"gpt2\"")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qfuse")).arg("import").arg(dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("config.json") && stderr.contains("gpt2") && !stderr.contains("panicked"), "{stderr}");
}
