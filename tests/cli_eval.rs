//! `qfuse eval` on a decoder from the outside: `--help` lists `all` and the defaults, bad flag
//! values fail before any work with an error naming the flag, and `--json` has its documented
//! shape (on the synthetic Llama's GGUF twin).

mod common;

use common::cli::{each_fails_naming, help_lists, json_of};

#[test]
fn help_lists_all_and_defaults() {
    help_lists("eval", &["--recipe", "`all`", "default: fp8", "--ctx", "[default: 512]", "--chunks", "[default: 4]", "--json"]);
}

#[test]
fn bad_flag_values_are_named() {
    let Some(gguf) = common::synthetic("llama-f32.gguf") else { return };
    let gguf = gguf.to_str().expect("utf-8 path");
    each_fails_naming(
        &["eval", gguf, "--quiet"],
        &[
            (&["--ctx", "8"], &["--ctx 8"]),
            (&["--ctx", "1000000"], &["--ctx 1000000", "position limit"]),
            (&["--chunks", "0"], &["--chunks 0"]),
            (&["--kv-cache", "fp4"], &["--kv-cache fp4"]),
            (&["--recipe", "auto", "--max-error", "2"], &["--max-error 2"]),
            (&["--recipe", "fp9"], &["--recipe fp9", "or all"]),
        ],
    );
}

#[test]
fn json_shape_from_a_gguf() {
    let Some(gguf) = common::synthetic("llama-f32.gguf") else { return };
    let gguf = gguf.to_str().expect("utf-8 path");
    let doc = json_of(&["eval", gguf, "--recipe", "fp8", "--ctx", "32", "--chunks", "1", "--json", "--quiet"]);
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
