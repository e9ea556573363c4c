//! Fuzz target: `qfuse::harness::plan` (see `scripts/fuzz.sh`).
#![no_main]

libfuzzer_sys::fuzz_target!(init: qfuse::harness::abort_on_uncontained_panics(), |bytes: &[u8]| {
    let _ = qfuse::harness::plan(bytes);
});
