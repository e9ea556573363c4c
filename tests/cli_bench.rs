//! `qfuse bench` from the outside: `--help` shows the flags with their defaults, bad flag values
//! fail before the GPU is touched with an error naming the flag and the plan's limit, a decoder
//! file (no decoder plans yet) is refused in a plain sentence, and `--json` has its documented
//! shape where a GPU is present.

mod common;

use common::cli::{each_fails_naming, help_lists, json_of, keys, qfuse};
use std::process::Command;

/// A small fp16 MiniLM plan (batch ≤ 4, sequence ≤ 32) in `dir`.
fn tiny_plan(dir: &std::path::Path) -> String {
    let path = dir.join("tiny.plan");
    let model = common::minilm_dir();
    let path_s = path.to_str().expect("utf-8 path").to_string();
    let out = qfuse(&[
        "compile",
        model.to_str().expect("utf-8 path"),
        "--recipe",
        "fp16",
        "--max-batch",
        "4",
        "--max-seq",
        "32",
        "--arch",
        "sm_90a",
        "-o",
        &path_s,
        "--quiet",
    ]);
    assert!(out.status.success(), "compile: {}", String::from_utf8_lossy(&out.stderr));
    path_s
}

#[test]
fn help_lists_flags_and_defaults() {
    help_lists("bench", &["--batch", "[default: 32]", "--seq", "[default: 128]", "--iters", "[default: 100]", "--json", "median_ms"]);
}

#[test]
fn bad_flag_values_name_the_flag_and_the_plans_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = tiny_plan(dir.path());
    each_fails_naming(
        &["bench", plan.as_str(), "--quiet"],
        &[
            (&["--batch", "5"], &["--batch 5", "exceeds 4", "--max-batch"]),
            (&["--batch", "4", "--seq", "100"], &["--seq 100", "exceeds 32", "--max-seq"]),
            (&["--batch", "0"], &["--batch 0", "at least 1"]),
            (&["--iters", "0"], &["--iters 0"]),
            (&["--batch", "1,x"], &["--batch", "`x` is not a batch size"]),
            (&["--batch", "1,2"], &["a list only for decoders"]),
        ],
    );
}

#[test]
fn a_decoder_file_is_not_a_plan() {
    let Some(gguf) = common::synthetic("llama-f32.gguf") else { return };
    let out = qfuse(&["bench", gguf.to_str().expect("utf-8 path"), "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is not a qfuse plan") && err.contains("qfuse compile"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn json_shape_on_a_gpu() {
    let gpu = Command::new("nvidia-smi").arg("-L").output().is_ok_and(|o| o.status.success());
    if !gpu {
        eprintln!("SKIPPED: no GPU (nvidia-smi -L failed); the --json keys are also checked by bench.rs's unit test");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = tiny_plan(dir.path());
    let doc = json_of(&["bench", &plan, "--batch", "2", "--seq", "16", "--warmup", "1", "--iters", "3", "--json", "--quiet"]);
    assert_eq!(keys(&doc), ["batch", "device", "iters", "mean_ms", "median_ms", "min_ms", "plan", "seq"]);
    assert_eq!(doc["batch"], 2);
    assert_eq!(doc["iters"], 3);
    assert!(doc["median_ms"].as_f64().expect("median") > 0.0);
}
