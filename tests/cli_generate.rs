//! `qfuse generate` from the outside: `--help` shows the flags with their defaults, bad flag
//! values fail before any work with an error naming the flag, and `--json` has its documented
//! shape (on the synthetic Llama's GGUF twin).

mod common;

use common::cli::{each_fails_naming, help_lists, json_of, keys, qfuse};

#[test]
fn help_lists_flags_and_defaults() {
    help_lists(
        "generate",
        &["--prompt", "--max-new-tokens", "[default: 64]", "--kv-cache", "[default: f32]", "--recipe", "--json", "--quiet"],
    );
}

#[test]
fn bad_flag_values_are_named() {
    let Some(dir) = common::synthetic("llama-f32") else { return };
    let dir = dir.to_str().expect("utf-8 path");
    each_fails_naming(
        &["generate", dir, "--prompt", "Hello", "--quiet"],
        &[
            (&["--max-new-tokens", "0"], &["--max-new-tokens 0"]),
            (&["--max-seq", "100000"], &["--max-seq 100000", "position limit"]),
            (&["--recipe", "fp9"], &["unknown recipe `fp9`"]),
            (&["--recipe", "fp8", "--exclude", "model.layers.*.mlp.gate_prj"], &["--exclude", "nearest names", "gate_proj"]),
            (&["--kv-cache", "fp4"], &["--kv-cache"]),
        ],
    );
}

#[test]
fn plan_flags_are_checked_before_the_plan_loads() {
    each_fails_naming(
        &["generate", "/nonexistent-qfuse-decoder.plan", "--prompt", "Hello", "--quiet"],
        &[(&["--max-new-tokens", "0"], &["--max-new-tokens 0"]), (&["--top-p", "0"], &["--top-p"])],
    );
}

#[test]
fn decoder_compile_flags_fail_before_any_work() {
    let Some(gguf) = common::synthetic("llama-f32.gguf") else { return };
    let gguf = gguf.to_str().expect("utf-8 path");
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = dir.path().join("d.plan");
    each_fails_naming(
        &["compile", gguf, "--quiet"],
        &[
            (&["-o", "/nonexistent-qfuse/d.plan"], &["-o /nonexistent-qfuse/d.plan", "does not exist"]),
            (&["-o", plan.to_str().expect("utf-8"), "--arch", "sm_86"], &["sm_86 has no FP8 tensor cores"]),
            (&["-o", plan.to_str().expect("utf-8"), "--page-size", "7"], &["--page-size 7"]),
        ],
    );
    assert!(!plan.exists());
}

#[test]
fn a_missing_model_is_one_plain_sentence() {
    let out = qfuse(&["generate", "/nonexistent/model.gguf", "--prompt", "Hi"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("/nonexistent/model.gguf does not exist"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn json_shape_from_a_gguf() {
    let Some(gguf) = common::synthetic("llama-f32.gguf") else { return };
    let gguf = gguf.to_str().expect("utf-8 path");
    let doc = json_of(&["generate", gguf, "--prompt", "The quick brown fox", "--max-new-tokens", "4", "--json", "--quiet"]);
    assert_eq!(keys(&doc), ["ids", "prompt_ids", "stop", "text", "tokens_per_second"]);
    assert!(doc["text"].is_string());
    assert!(doc["tokens_per_second"].is_number());
    let ids = doc["ids"].as_array().expect("ids");
    assert!(!ids.is_empty() && ids.len() <= 4 && ids.iter().all(|i| i.is_u64()), "{doc}");
    assert!(!doc["prompt_ids"].as_array().expect("prompt_ids").is_empty());
    assert!(["eos", "length", "context", "stopped"].contains(&doc["stop"].as_str().expect("stop")), "{doc}");
}
