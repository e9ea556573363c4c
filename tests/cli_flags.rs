//! The encoder commands from the outside: flags are checked before any work and errors name the
//! flag, the value and the limit; every error is said once; default output is short (details
//! behind `--verbose`); one kernel cache, shown and cleared by `qfuse cache`.

mod common;

use common::cli::qfuse;
use std::process::Command;

/// Runs a command that must fail; returns its stderr.
fn fails(args: &[&str]) -> String {
    let out = qfuse(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{args:?} should fail: {err}");
    err
}

/// True when some `: `-separated part of the message appears twice in a row ("X: X").
fn repeats(message: &str) -> bool {
    let parts: Vec<&str> = message.trim().split(": ").collect();
    parts.windows(2).any(|w| w[0] == w[1]) || parts.iter().enumerate().any(|(i, p)| p.len() > 12 && parts[i + 1..].contains(p))
}

#[test]
fn repeats_detects_doubled_messages() {
    assert!(repeats("error: x.plan: No such file or directory (os error 2): No such file or directory (os error 2)"));
    assert!(repeats("error: no NVIDIA driver: libcuda.so.1: libcuda.so.1: cannot open shared object file"));
    assert!(!repeats("error: reading x: No such file or directory (os error 2)"));
}

#[test]
fn flags_fail_before_any_work_naming_flag_value_and_limit() {
    let model = common::minilm_dir();
    let m = model.to_str().expect("utf-8 path");
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = dir.path().join("x.plan");
    let p = plan.to_str().expect("utf-8 path");
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["compile", m, "-o", "/nonexistent-qfuse/x.plan"], vec!["-o /nonexistent-qfuse/x.plan", "does not exist"]),
        (vec!["compile", m, "-o", p, "--arch", "garbage"], vec!["--arch garbage", "sm_90a"]),
        (vec!["compile", m, "-o", p, "--arch", "sm_80"], vec!["sm_80 has no FP8 tensor cores", "use sm_89 or newer"]),
        (vec!["compile", m, "-o", p, "--max-seq", "100000"], vec!["--max-seq 100000", "exceeds 512", "max_position_embeddings"]),
        (vec!["compile", m, "-o", p, "--max-batch", "0"], vec!["--max-batch 0"]),
        (
            vec!["compile", m, "-o", p, "--exclude", "encoder.layer.?.output.dens"],
            vec!["--exclude", "nearest names", "encoder.layer.0.output.dense"],
        ),
        (vec!["compile", m, "-o", p, "--recipe", "auto", "--budget", "0"], vec!["--budget 0", "16"]),
        (vec!["eval", m, "--recipe", "auto", "--max-error", "2"], vec!["--max-error 2", "(0, 1]"]),
        (vec!["embed", m, "--max-tokens", "100000", "text"], vec!["--max-tokens 100000", "exceeds 512"]),
    ];
    for (args, named) in cases {
        let err = fails(&args);
        for n in &named {
            assert!(err.contains(n), "{args:?}: the error should say {n}: {err}");
        }
        assert!(!err.contains("calibrat") && !err.contains("symbol"), "{args:?}: checked before calibration, in flag terms: {err}");
        assert!(!repeats(&err), "{args:?}: {err}");
    }
    assert!(!plan.exists(), "no plan written");
}

#[test]
fn path_errors_are_plain_sentences_said_once() {
    let model = common::minilm_dir();
    let file = model.join("model.safetensors");
    let err = fails(&["import", file.to_str().expect("utf-8 path")]);
    assert!(err.contains("is a file, not a model folder") && err.contains(model.to_str().expect("utf-8")), "{err}");
    let err = fails(&["import", "/nonexistent-qfuse-model"]);
    assert!(err.contains("/nonexistent-qfuse-model does not exist"), "{err}");
    for args in [
        &["inspect", "/nonexistent-qfuse.plan"][..],
        &["run", "/nonexistent-qfuse.plan", "--text", "a"],
        &["embed", model.to_str().expect("utf-8"), "--file", "/nonexistent-qfuse.txt"],
    ] {
        let err = fails(args);
        assert_eq!(err.matches("No such file or directory").count(), 1, "{args:?}: {err}");
        assert!(!repeats(&err), "{args:?}: {err}");
    }
}

#[test]
fn default_output_is_short_and_verbose_has_the_report() {
    let model = common::minilm_dir();
    let dir = tempfile::tempdir().expect("tempdir");
    let ir = dir.path().join("m.ir");
    let args = ["compile", model.to_str().expect("utf-8"), "--recipe", "fp16", "-o", ir.to_str().expect("utf-8"), "--quiet"];
    let out = qfuse(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let short = String::from_utf8_lossy(&out.stdout);
    assert!(short.lines().count() <= 8, "one line per stage:\n{short}");
    assert!(short.contains("Q/DQ:") && !short.contains("outcome"), "{short}");
    let out = qfuse(&[&args[..], &["--verbose"]].concat());
    let long = String::from_utf8_lossy(&out.stdout);
    assert!(long.contains("outcome"), "--verbose prints the fusion report:\n{long}");
}

#[test]
fn many_texts_get_nearest_neighbours_not_a_matrix() {
    let model = common::minilm_dir();
    let texts: Vec<String> = (0..9).map(|i| format!("sentence number {i} about food")).collect();
    let mut args = vec!["embed", model.to_str().expect("utf-8"), "--quiet"];
    args.extend(texts.iter().map(String::as_str));
    let out = qfuse(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("nearest"), "{text}");
    assert!(text.lines().all(|l| l.chars().count() <= 120), "fits 120 columns:\n{text}");
}

#[test]
fn cache_info_and_clear_use_the_chosen_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kernels = dir.path().join("kernels");
    std::fs::create_dir_all(&kernels).expect("mkdir");
    std::fs::write(kernels.join("k.cubin"), b"\x7fELF").expect("write");
    let run = |action: &str| {
        Command::new(env!("CARGO_BIN_EXE_qfuse")).args(["cache", action]).env("QFUSE_CACHE_DIR", dir.path()).output().expect("run")
    };
    let info = String::from_utf8_lossy(&run("info").stdout).into_owned();
    assert!(info.contains(kernels.to_str().expect("utf-8")) && info.contains("1 CUBIN"), "{info}");
    let cleared = run("clear");
    assert!(cleared.status.success());
    assert!(!kernels.join("k.cubin").exists());
    // Inside the checkout (as the README's scripts run), the checkout's .cache/kernels.
    let out = Command::new(env!("CARGO_BIN_EXE_qfuse"))
        .args(["cache", "info"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("QFUSE_CACHE_DIR")
        .output()
        .expect("run");
    let info = String::from_utf8_lossy(&out.stdout);
    assert!(info.contains(".cache/kernels") && info.contains("checkout"), "{info}");
}
