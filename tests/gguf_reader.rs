//! The GGUF reader: the real SmolLM2 file against what gguf-py reads from it
//! (`tests/fixtures/smollm2_layout.json`, `scripts/gguf_tokenizer_fixture.py`), and hostile files
//! built in memory, each refused with an error naming the file and the key or tensor.

mod gguf_writer;

use gguf_writer::{Gguf, Raw, Tensor, Val};
use qfuse::import::gguf::{exercise, GgmlType, GgufFile, MetaArray, MetaValue};
use std::path::{Path, PathBuf};

const MODEL: &str = ".cache/models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf";
const NAME: &str = "test.gguf";

fn model_path() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(MODEL);
    if path.exists() {
        return Some(path);
    }
    eprintln!("skipping: {} is absent (bash scripts/cache.sh decoder installs it)", path.display());
    None
}

fn parse(bytes: Vec<u8>) -> Result<GgufFile, String> {
    GgufFile::from_bytes(Path::new(NAME), bytes).map_err(|e| e.to_string())
}

/// Parsing fails with a message naming the file and containing every one of `needles`.
fn refused(bytes: Vec<u8>, needles: &[&str]) -> String {
    let message = match parse(bytes) {
        Ok(_) => panic!("accepted; expected an error mentioning {needles:?}"),
        Err(m) => m,
    };
    assert!(message.starts_with(NAME), "{message}");
    for needle in needles {
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    }
    message
}

#[test]
fn real_file_matches_gguf_py() {
    let Some(path) = model_path() else { return };
    let fixture: serde_json::Value = serde_json::from_str(include_str!("fixtures/smollm2_layout.json")).unwrap();
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.version() as u64, fixture["version"].as_u64().unwrap());
    assert_eq!(file.alignment(), fixture["alignment"].as_u64().unwrap());
    assert_eq!(file.data_start() as u64, fixture["data_start"].as_u64().unwrap());
    let keys: Vec<&str> = fixture["keys"].as_array().unwrap().iter().map(|k| k["key"].as_str().unwrap()).collect();
    let ours: Vec<&str> = file.metadata().iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(ours, keys);
    assert_eq!(ours.len(), 33);
    for k in fixture["keys"].as_array().unwrap() {
        let value = file.value(k["key"].as_str().unwrap()).unwrap();
        let count = match value {
            MetaValue::Array(a) => a.len(),
            _ => 1,
        };
        assert_eq!(count as u64, k["count"].as_u64().unwrap(), "{}", k["key"]);
    }
    let tensors = fixture["tensors"].as_array().unwrap();
    assert_eq!(file.tensors().len(), tensors.len());
    assert_eq!(tensors.len(), 272);
    for (ours, theirs) in file.tensors().iter().zip(tensors) {
        assert_eq!(ours.name, theirs["name"].as_str().unwrap());
        let dims: Vec<u64> = theirs["dims"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
        assert_eq!(ours.dims, dims, "{}", ours.name);
        assert_eq!(ours.ty.name(), theirs["type"].as_str().unwrap(), "{}", ours.name);
        assert_eq!(ours.offset, theirs["offset"].as_u64().unwrap(), "{}", ours.name);
        let data = file.tensor_data(ours).unwrap();
        assert_eq!(data.len() as u64, theirs["bytes"].as_u64().unwrap(), "{}", ours.name);
        if let Some(first) = theirs.get("first") {
            let values: Vec<f64> = data.chunks(4).take(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect();
            let expected: Vec<f64> = first.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            assert_eq!(values, expected, "{}", ours.name);
        }
    }
}

#[test]
fn real_file_as_decoders_md_lists_it() {
    let Some(path) = model_path() else { return };
    let file = GgufFile::open(&path).unwrap();
    let count = |ty| file.tensors().iter().filter(|t| t.ty == ty).count();
    assert_eq!((count(GgmlType::Q4_1), count(GgmlType::F32), count(GgmlType::Q8_0)), (210, 61, 1));
    let embd = file.tensor("token_embd.weight").unwrap();
    assert_eq!((embd.dims.as_slice(), embd.ty, embd.shape()), (&[576, 49152][..], GgmlType::Q8_0, vec![49152, 576]));
    assert!(file.tensor("output.weight").is_none());
    assert_eq!(file.str("general.architecture").unwrap(), "llama");
    assert_eq!(file.u32("llama.block_count").unwrap(), 30);
    assert_eq!(file.u64("llama.embedding_length").unwrap(), 576);
    assert_eq!(file.u32("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(file.f32("llama.rope.freq_base").unwrap(), 100000.0);
    assert_eq!(file.f32("llama.attention.layer_norm_rms_epsilon").unwrap(), 1e-5);
    assert!(!file.bool("tokenizer.ggml.add_bos_token").unwrap());
    assert_eq!(file.str_array("tokenizer.ggml.tokens").unwrap().len(), 49152);
    assert_eq!(file.str_array("tokenizer.ggml.tokens").unwrap().get(1), Some("<|im_start|>"));
    assert_eq!(file.str_array("tokenizer.ggml.merges").unwrap().len(), 48900);
    assert_eq!(file.i32_array("tokenizer.ggml.token_type").unwrap().iter().filter(|&&t| t == 3).count(), 17);
    assert_eq!(file.optional("tokenizer.ggml.missing", GgufFile::u32).unwrap(), None);
}

fn err<T: std::fmt::Debug>(r: Result<T, qfuse::import::ImportError>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn typed_accessors_name_the_key() {
    let file = parse(
        Gguf::sample()
            .kv("neg", Val::i32(-1))
            .kv("wide", Val::u64(1 << 40))
            .kv("ints", Val::array(10, &[Val::u64(1), Val::u64(1 << 40)]))
            .kv("double", Val::raw(12, 0.5f64.to_le_bytes().to_vec()))
            .bytes(),
    )
    .unwrap();
    assert_eq!(err(file.u32("absent")), "test.gguf: key `absent`: missing");
    assert_eq!(err(file.u32("general.architecture")), "test.gguf: key `general.architecture`: expected u32, found string");
    assert_eq!(err(file.u32("neg")), "test.gguf: key `neg`: -1 does not fit u32");
    assert_eq!(err(file.u32("wide")), "test.gguf: key `wide`: 1099511627776 does not fit u32");
    assert_eq!(file.u64("wide").unwrap(), 1 << 40);
    assert_eq!(file.i64("neg").unwrap(), -1);
    assert_eq!(err(file.i32_array("ints")), "test.gguf: key `ints`: element 1 does not fit i32");
    assert_eq!(err(file.str_array("ints")), "test.gguf: key `ints`: expected array of string, found array of u64");
    assert_eq!(file.f32("double").unwrap(), 0.5);
    assert_eq!(err(file.bool("llama.block_count")), "test.gguf: key `llama.block_count`: expected bool, found u32");
    assert_eq!(file.str_array("general.languages").unwrap().iter().collect::<Vec<_>>(), ["en", "fr"]);
}

#[test]
fn every_value_type_and_nested_arrays_round_trip() {
    let nested = Val::array(9, &[Val::array(4, &[Val::u32(1), Val::u32(2)]), Val::array(8, &[Val::str("x")])]);
    let file = parse(
        Gguf::default()
            .kv("u8", Val::raw(0, vec![200]))
            .kv("i8", Val::raw(1, vec![0xff]))
            .kv("u16", Val::raw(2, 60000u16.to_le_bytes().to_vec()))
            .kv("i16", Val::raw(3, (-300i16).to_le_bytes().to_vec()))
            .kv("i64", Val::raw(11, (-5i64).to_le_bytes().to_vec()))
            .kv("nested", nested)
            .kv("bools", Val::array(7, &[Val::bool(true), Val::bool(false)]))
            .bytes(),
    )
    .unwrap();
    assert_eq!(file.value("u8"), Some(&MetaValue::U8(200)));
    assert_eq!(file.value("i8"), Some(&MetaValue::I8(-1)));
    assert_eq!(file.value("u16"), Some(&MetaValue::U16(60000)));
    assert_eq!(file.value("i16"), Some(&MetaValue::I16(-300)));
    assert_eq!(file.i64("i64").unwrap(), -5);
    let MetaArray::Array(inner) = file.array("nested").unwrap() else { panic!("not nested") };
    assert_eq!(inner[0], MetaArray::U32(vec![1, 2]));
    assert_eq!(inner[1].element_type_name(), "string");
    assert_eq!(file.array("bools").unwrap(), &MetaArray::Bool(vec![true, false]));
}

#[test]
fn sample_reads_back_its_tensors() {
    let file = parse(Gguf::sample().bytes()).unwrap();
    let a = file.tensor("a").unwrap();
    assert_eq!((a.dims.as_slice(), a.offset, a.n_elements()), (&[4u64, 2][..], 0, 8));
    let values: Vec<f32> = file.tensor_data(a).unwrap().chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(values, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
    assert_eq!(file.tensor("b").unwrap().offset, 32);
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = Gguf::sample().bytes();
    for len in 0..bytes.len() {
        let message = parse(bytes[..len].to_vec()).err().unwrap_or_else(|| panic!("prefix of {len} bytes accepted"));
        assert!(message.starts_with(NAME), "{message}");
    }
    refused(bytes[..160].to_vec(), &["key `general.languages`", "element 1", "truncated"]);
}

#[test]
fn header_faults() {
    let mut bytes = Gguf::sample().bytes();
    bytes[0] = b'X';
    refused(bytes, &["header", "not a GGUF file"]);
    refused(Gguf { version: 1, ..Gguf::sample() }.bytes(), &["header", "version 1 is not supported"]);
    refused(Gguf { version: 3u32.swap_bytes(), ..Gguf::sample() }.bytes(), &["header", "big-endian"]);
    let mut raw = Raw::default();
    raw.0.extend_from_slice(b"GGUF");
    raw.u32(3).u64(u64::MAX).u64(0);
    refused(raw.0.clone(), &["header", "tensor count 18446744073709551615 cannot fit"]);
    let mut raw = Raw::default();
    raw.0.extend_from_slice(b"GGUF");
    raw.u32(3).u64(0).u64(u64::MAX);
    refused(raw.0, &["header", "metadata count 18446744073709551615 cannot fit"]);
}

#[test]
fn absurd_lengths_name_the_key() {
    let mut huge_string = Raw::default();
    huge_string.u64(u64::MAX);
    refused(Gguf::sample().kv("big.str", Val::raw(8, huge_string.0)).bytes(), &["key `big.str`", "truncated"]);
    let mut huge_array = Raw::default();
    huge_array.u32(4).u64(u64::MAX);
    refused(Gguf::sample().kv("big.arr", Val::raw(9, huge_array.0)).bytes(), &["key `big.arr`", "cannot fit"]);
    let mut huge_strings = Raw::default();
    huge_strings.u32(8).u64(1 << 60);
    refused(Gguf::sample().kv("big.strs", Val::raw(9, huge_strings.0)).bytes(), &["key `big.strs`", "cannot fit"]);
    let mut raw = Raw::default();
    raw.0.extend_from_slice(b"GGUF");
    raw.u32(3).u64(0).u64(1).u64(u64::MAX);
    raw.0.extend_from_slice(&[0; 16]);
    refused(raw.0, &["metadata pair #0", "truncated"]);
}

#[test]
fn value_faults_name_the_key() {
    let mut deep = Val::array(4, &[Val::u32(1)]);
    for _ in 0..3 {
        deep = Val::array(9, &[deep]);
    }
    refused(Gguf::sample().kv("deep", deep).bytes(), &["key `deep`", "nested deeper than 3"]);
    refused(Gguf::sample().kv("odd", Val::raw(13, vec![0; 8])).bytes(), &["key `odd`", "unknown value type 13"]);
    refused(Gguf::sample().kv("flag", Val::raw(7, vec![2])).bytes(), &["key `flag`", "not 0 or 1"]);
    let mut bad_utf8 = Raw::default();
    bad_utf8.str(&[0xff, 0xfe]);
    refused(Gguf::sample().kv("text", Val::raw(8, bad_utf8.0)).bytes(), &["key `text`", "not UTF-8"]);
    let list = Val::array(8, &[Val::str("ok"), Val::raw(8, vec![1, 0, 0, 0, 0, 0, 0, 0, 0xc3])]);
    refused(Gguf::sample().kv("list", list).bytes(), &["key `list`", "element 1", "not UTF-8"]);
    refused(Gguf::sample().kv("llama.block_count", Val::u32(3)).bytes(), &["key `llama.block_count`", "appears twice"]);
}

#[test]
fn alignment_rules() {
    refused(Gguf::sample().kv("general.alignment", Val::u32(0)).bytes(), &["key `general.alignment`", "power of two"]);
    refused(Gguf::sample().kv("general.alignment", Val::u32(24)).bytes(), &["key `general.alignment`", "power of two"]);
    refused(Gguf::sample().kv("general.alignment", Val::u64(64)).bytes(), &["key `general.alignment`", "expected u32, found u64"]);
    let file = parse(Gguf::sample().kv("general.alignment", Val::u32(64)).bytes()).unwrap();
    assert_eq!((file.alignment(), file.data_start() % 64, file.tensor("b").unwrap().offset), (64, 0, 64));
}

#[test]
fn tensor_info_faults_name_the_tensor() {
    let with = |t: Tensor| Gguf::sample().tensor(t).bytes();
    refused(with(Tensor::f32("a", &[1])), &["tensor `a`", "appears twice"]);
    refused(with(Tensor::zeros("r5", &[1, 1, 1, 1, 1], 0, 4)), &["tensor `r5`", "5 dims"]);
    refused(with(Tensor::zeros(&"n".repeat(64), &[1], 0, 4)), &["64 bytes long"]);
    refused(with(Tensor::zeros("huge", &[1 << 32, 1 << 32], 0, 0)), &["tensor `huge`", "more than 2^63"]);
    refused(with(Tensor::zeros("q", &[33, 2], 2, 36)), &["tensor `q`", "not a whole number of Q4_0 blocks of 32"]);
    refused(with(Tensor::zeros("big", &[1 << 61, 2], 0, 0)), &["tensor `big`", "overflow the byte size of F32"]);
}

#[test]
fn tensor_range_faults_name_the_tensor() {
    let with = |t: Tensor| Gguf::sample().tensor(t).bytes();
    refused(with(Tensor::f32("c", &[2]).at(48)), &["tensor `c`", "offset 48 is not a multiple of the alignment 32"]);
    refused(with(Tensor::f32("c", &[2]).at(0)), &["tensor `c`", "overlap those of tensor `a`"]);
    refused(with(Tensor::f32("c", &[2]).at(1 << 40)), &["tensor `c`", "run past the data section"]);
    let mut bytes = Gguf::sample().bytes();
    bytes.truncate(bytes.len() - 1);
    refused(bytes, &["tensor `b`", "run past the data section"]);
    refused(with(Tensor::zeros("far", &[8], 0, 0).at(u64::MAX - 31)), &["tensor `far`", "run past"]);
}

#[test]
fn unknown_types_are_refused_when_read() {
    let file = parse(Gguf::sample().tensor(Tensor::zeros("iq", &[256], 23, 64).at(64)).bytes()).unwrap();
    let info = file.tensor("iq").unwrap();
    assert_eq!((info.ty, info.byte_size()), (GgmlType::Other(23), None));
    let message = file.tensor_data(info).unwrap_err().to_string();
    assert_eq!(message, "test.gguf: tensor `iq`: has ggml type 23, which qfuse cannot read");
}

/// Inputs the `gguf` fuzz target found (tests/fixtures/fuzz/gguf) and its seeds: each is read
/// through everything the target exercises, and must return (parsed or not), never panic.
#[test]
fn fuzz_regressions_replay() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seen = 0;
    for dir in ["tests/fixtures/fuzz/gguf", "fuzz/corpus/gguf"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            let parsed = exercise(&std::fs::read(&path).unwrap());
            eprintln!("{}: {}", path.display(), if parsed { "parsed" } else { "refused" });
            seen += 1;
        }
    }
    assert!(seen >= 2, "the seed corpus fuzz/corpus/gguf is missing");
}
