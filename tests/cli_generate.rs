//! `qfuse generate` from the outside: `--help` shows the flags with their defaults, bad flag
//! values fail before any work with an error naming the flag, and `--json` has its documented
//! shape (on the synthetic Llama's GGUF twin).

mod common;

use std::process::{Command, Output};

fn qfuse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qfuse")).args(args).output().expect("run qfuse")
}

#[test]
fn help_lists_flags_and_defaults() {
    let out = qfuse(&["generate", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for want in ["--prompt", "--max-new-tokens", "[default: 64]", "--kv-cache", "[default: f32]", "--recipe", "--json", "--quiet"] {
        assert!(help.contains(want), "`generate --help` lacks {want}:\n{help}");
    }
}

#[test]
fn bad_flag_values_are_named() {
    let Some(dir) = common::synthetic("llama-f32") else { return };
    let dir = dir.to_str().expect("utf-8 path");
    let cases: [(&[&str], &[&str]); 5] = [
        (&["--max-new-tokens", "0"], &["--max-new-tokens 0"]),
        (&["--max-seq", "100000"], &["--max-seq 100000", "position limit"]),
        (&["--recipe", "fp9"], &["unknown recipe `fp9`"]),
        (&["--recipe", "fp8", "--exclude", "model.layers.*.mlp.gate_prj"], &["--exclude", "nearest names", "gate_proj"]),
        (&["--kv-cache", "fp4"], &["--kv-cache"]),
    ];
    for (flags, named) in cases {
        let mut args = vec!["generate", dir, "--prompt", "Hello", "--quiet"];
        args.extend_from_slice(flags);
        let out = qfuse(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flags:?}: {err}");
        for n in named {
            assert!(err.contains(n), "{flags:?}: the error should say {n}: {err}");
        }
        assert!(out.stdout.is_empty(), "{flags:?}: nothing generated");
    }
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
    let out = qfuse(&["generate", gguf, "--prompt", "The quick brown fox", "--max-new-tokens", "4", "--json", "--quiet"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    let obj = doc.as_object().expect("an object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["ids", "prompt_ids", "stop", "text", "tokens_per_second"]);
    assert!(doc["text"].is_string());
    assert!(doc["tokens_per_second"].is_number());
    let ids = doc["ids"].as_array().expect("ids");
    assert!(!ids.is_empty() && ids.len() <= 4 && ids.iter().all(|i| i.is_u64()), "{doc}");
    assert!(!doc["prompt_ids"].as_array().expect("prompt_ids").is_empty());
    assert!(["eos", "length", "context", "stopped"].contains(&doc["stop"].as_str().expect("stop")), "{doc}");
}
