//! Reads everything a GGUF offers, ignoring the errors: the body of the `gguf` fuzz target
//! (`fuzz/fuzz_targets/gguf.rs`) and of the test that replays its regression inputs, kept here so
//! both exercise the same paths. Any panic in it is a bug.

use super::{GgufFile, GgufVocab, MetaValue};
use std::path::Path;

/// Parses `bytes` as a GGUF and, if that succeeds, reads every tensor's data, every key through
/// each typed accessor, and builds the tokenizer if the file has one (encoding and decoding a
/// short text). Returns whether the file parsed.
#[doc(hidden)]
pub fn exercise(bytes: &[u8]) -> bool {
    let Ok(file) = GgufFile::from_bytes(Path::new("fuzz-input.gguf"), bytes.to_vec()) else { return false };
    for info in file.tensors() {
        let _ = file.tensor_data(info);
        let _ = (info.shape(), info.byte_size());
    }
    for (key, value) in file.metadata() {
        read_as_every_type(&file, key);
        let _ = (value.to_string(), value.type_name());
        if let MetaValue::Array(a) = value {
            let _ = a.integers::<u32>();
        }
    }
    if let Ok(tokenizer) = GgufVocab::read(&file).and_then(|v| v.build()) {
        if let Ok(ids) = tokenizer.encode("Hi <|im_start|> 12 ü") {
            let _ = tokenizer.decode(&ids, true);
        }
        let _ = tokenizer.chat_template();
    }
    true
}

fn read_as_every_type(file: &GgufFile, key: &str) {
    let _ = (file.u32(key), file.u64(key), file.i64(key), file.f32(key), file.bool(key), file.str(key));
    let _ = (file.str_array(key), file.i32_array(key), file.f32_array(key));
}
