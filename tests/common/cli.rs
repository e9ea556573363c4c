//! Running the `qfuse` binary and checking its answers, for the `tests/cli_*.rs` files.

use std::process::{Command, Output};

/// Runs `qfuse` with `args`.
pub fn qfuse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qfuse")).args(args).output().expect("run qfuse")
}

/// `qfuse <command> --help` succeeds and mentions every string of `wanted`.
pub fn help_lists(command: &str, wanted: &[&str]) {
    let out = qfuse(&[command, "--help"]);
    assert!(out.status.success(), "`{command} --help` failed");
    let help = String::from_utf8_lossy(&out.stdout);
    for want in wanted {
        assert!(help.contains(want), "`{command} --help` lacks {want}:\n{help}");
    }
}

/// For each case, `base` followed by the case's flags exits with code 1, prints nothing on
/// stdout, and its stderr contains every string the case names.
pub fn each_fails_naming(base: &[&str], cases: &[(&[&str], &[&str])]) {
    for (flags, named) in cases {
        let args = [base, flags].concat();
        let out = qfuse(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flags:?}: {err}");
        assert!(out.stdout.is_empty(), "{flags:?}: no output before the error");
        for n in *named {
            assert!(err.contains(n), "{flags:?}: the error should say {n}: {err}");
        }
    }
}

/// Runs `qfuse` with `args`, which must succeed, and parses its stdout as one JSON document.
pub fn json_of(args: &[&str]) -> serde_json::Value {
    let out = qfuse(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON document")
}

/// The keys of a JSON object, sorted.
pub fn keys(doc: &serde_json::Value) -> Vec<String> {
    let mut keys: Vec<String> = doc.as_object().expect("a JSON object").keys().cloned().collect();
    keys.sort_unstable();
    keys
}
