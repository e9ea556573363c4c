//! `qfuse eval` on a decoder from the outside: `--help` lists `all` and the defaults, bad flag
//! values fail before any work with an error naming the flag, and `--json` has its documented
//! shape (on the synthetic Llama's GGUF twin).

mod common;

use std::process::{Command, Output};

fn qfuse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qfuse")).args(args).output().expect("run qfuse")
}

#[test]
fn help_lists_all_and_defaults() {
    let out = qfuse(&["eval", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for want in ["--recipe", "`all`", "default: fp8", "--ctx", "[default: 512]", "--chunks", "[default: 4]", "--json"] {
        assert!(help.contains(want), "`eval --help` lacks {want}:\n{help}");
    }
}

#[test]
fn bad_flag_values_are_named() {
    let Some(gguf) = common::synthetic("llama-f32.gguf") else { return };
    let gguf = gguf.to_str().expect("utf-8 path");
    let cases: [(&[&str], &str); 5] = [
        (&["--ctx", "8"], "--ctx 8"),
        (&["--ctx", "1000000"], "--ctx 1000000"),
        (&["--chunks", "0"], "--chunks 0"),
        (&["--kv-cache", "fp4"], "--kv-cache fp4"),
        (&["--recipe", "auto", "--max-error", "2"], "--max-error 2"),
    ];
    for (flags, named) in cases {
        let mut args = vec!["eval", gguf, "--quiet"];
        args.extend_from_slice(flags);
        let out = qfuse(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flags:?}: {err}");
        assert!(err.contains(named), "{flags:?}: the error should say {named}: {err}");
        assert!(out.stdout.is_empty(), "{flags:?}: nothing evaluated");
    }
}

#[test]
fn json_shape_from_a_gguf() {
    let Some(gguf) = common::synthetic("llama-f32.gguf") else { return };
    let gguf = gguf.to_str().expect("utf-8 path");
    let out = qfuse(&["eval", gguf, "--recipe", "fp8", "--ctx", "32", "--chunks", "1", "--json", "--quiet"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    assert_eq!(doc["ctx"], 32);
    assert_eq!(doc["chunks"], 1);
    assert!(doc["text"].is_string());
    let recipes = doc["recipes"].as_array().expect("recipes");
    assert_eq!(recipes.len(), 2, "the fp32 reference, then fp8: {doc}");
    assert_eq!(recipes[0]["report"]["recipe"], "fp32");
    assert_eq!(recipes[1]["report"]["recipe"], "fp8");
    for key in ["perplexity", "delta_perplexity", "mean_kl", "p99_kl", "same_top", "positions"] {
        assert!(recipes[1]["report"][key].is_number(), "report.{key} missing: {doc}");
    }
    let layers = recipes[1]["layers"].as_array().expect("layers");
    assert!(!layers.is_empty() && layers[0]["snr_db"].is_number(), "{doc}");
}
