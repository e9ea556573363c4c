//! The decoder commands from the outside: `generate` and `eval` on a synthetic Llama, their
//! `--json` shapes, greedy determinism, and bad flag values named in the error.

mod common;

use common::cli::{each_fails_naming, help_lists, qfuse};

#[test]
fn generate_json_is_greedy_and_reproducible() {
    let Some(dir) = common::synthetic("llama-f32") else { return };
    let dir = dir.to_str().expect("utf-8 path");
    let args = ["generate", dir, "--prompt", "The quick brown fox", "--max-new-tokens", "6", "--json", "--quiet"];
    let a = qfuse(&args);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&a.stdout).expect("json");
    for key in ["text", "prompt_ids", "ids", "stop", "tokens_per_second"] {
        assert!(doc.get(key).is_some(), "missing `{key}` in {doc}");
    }
    assert_eq!(doc["ids"].as_array().expect("ids").len(), 6);
    let b: serde_json::Value = serde_json::from_slice(&qfuse(&args).stdout).expect("json");
    assert_eq!(doc["ids"], b["ids"], "greedy generation is deterministic");
}

#[test]
fn decoder_eval_json_has_a_report_per_recipe() {
    let Some(dir) = common::synthetic("qwen2-f32") else { return };
    let dir = dir.to_str().expect("utf-8 path");
    let out = qfuse(&["eval", dir, "--recipe", "w8a16", "--ctx", "32", "--chunks", "1", "--json", "--quiet"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let recipes = doc["recipes"].as_array().expect("recipes");
    assert_eq!(recipes.len(), 2, "fp32 reference and w8a16");
    let q = &recipes[1];
    assert_eq!(q["report"]["recipe"], "w8a16");
    assert!(q["report"]["mean_kl"].as_f64().expect("kl") >= 0.0);
    assert!(!q["layers"].as_array().expect("layers").is_empty(), "per-layer SNR");
}

#[test]
fn bad_decoder_flags_are_named() {
    let Some(dir) = common::synthetic("llama-f32") else { return };
    let dir = dir.to_str().expect("utf-8 path");
    each_fails_naming(
        &["generate", dir, "--prompt", "The quick brown fox jumps over the lazy dog"],
        &[
            (&["--kv-cache", "fp4"], &["--kv-cache"]),
            (&["--top-p", "0"], &["--top-p"]),
            (&["--temperature=-1"], &["--temperature"]),
            (&["--max-seq", "4"], &["context"]),
        ],
    );
}

/// `qfuse check` lists the decoder plans' perplexity and random-prompt flags.
#[test]
fn check_lists_the_decoder_flags() {
    help_lists("check", &["--eval-file", "--ctx", "--chunks", "--no-floor", "--random", "--max-new-tokens"]);
}
