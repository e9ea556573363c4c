//! The GGUF reader (and the tokenizer and chat template built from what it reads) on arbitrary
//! bytes: any panic is a bug. Seeds: `fuzz/corpus/gguf/` (written by `scripts/gguf_fuzz_seed.py`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(init: qfuse::harness::abort_on_uncontained_panics(), |data: &[u8]| {
    qfuse::import::gguf::exercise(data);
});
