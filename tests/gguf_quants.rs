//! GGUF block dequantizers against gguf-py, bit for bit: fixtures written by
//! `scripts/gguf_quant_fixtures.py` (`tests/fixtures/gguf_quants/`), the error cases, and every
//! tensor of the default SmolLM2 GGUF read at the byte ranges the script recorded.

use qfuse::import::gguf::{dequantize, dequantize_into, GgmlType};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

#[derive(serde::Deserialize)]
struct Cases {
    cases: Vec<Case>,
}

/// One fixture: `NAME.blocks` (raw bytes) and `NAME.f32` (gguf-py's values, LE f32).
#[derive(serde::Deserialize)]
struct Case {
    name: String,
    #[serde(rename = "type")]
    type_name: String,
    type_id: u32,
    n: usize,
}

#[derive(serde::Deserialize)]
struct TensorSums {
    file: String,
    file_size: u64,
    tensors: Vec<TensorSum>,
}

/// A tensor of the real file: where its bytes lie and the sha256 of gguf-py's LE f32 values.
#[derive(serde::Deserialize)]
struct TensorSum {
    name: String,
    type_id: u32,
    n: usize,
    offset: u64,
    n_bytes: usize,
    sha256: String,
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf_quants")
}

fn read_json<T: serde::de::DeserializeOwned>(name: &str) -> T {
    serde_json::from_str(&std::fs::read_to_string(fixture_dir().join(name)).unwrap()).unwrap()
}

fn le_f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// The index and both bit patterns of the first value whose bits differ, if any.
fn first_bit_difference(got: &[f32], want: &[f32]) -> Option<(usize, u32, u32)> {
    got.iter().zip(want).enumerate().find(|(_, (g, w))| g.to_bits() != w.to_bits()).map(|(i, (g, w))| (i, g.to_bits(), w.to_bits()))
}

#[test]
fn every_fixture_matches_gguf_py_bit_for_bit() {
    let cases: Cases = read_json("cases.json");
    let mut types_seen = std::collections::BTreeSet::new();
    for case in &cases.cases {
        let ty = GgmlType::from_id(case.type_id);
        assert_eq!(ty.name(), case.type_name, "{}: type id and name disagree", case.name);
        let blocks = std::fs::read(fixture_dir().join(format!("{}.blocks", case.name))).unwrap();
        let want = le_f32s(&std::fs::read(fixture_dir().join(format!("{}.f32", case.name))).unwrap());
        assert_eq!(want.len(), case.n, "{}", case.name);
        let got = dequantize(ty, &blocks, case.n).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(got.len(), case.n, "{}", case.name);
        if let Some((i, g, w)) = first_bit_difference(&got, &want) {
            panic!("{}: value {i} has bits {g:#010x}, gguf-py {w:#010x}", case.name);
        }
        types_seen.insert(case.type_name.clone());
    }
    let all = ["BF16", "F16", "F32", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K", "Q8_0"];
    assert_eq!(types_seen.into_iter().collect::<Vec<_>>(), all, "every supported type has fixtures");
}

#[test]
fn dequantize_into_matches_dequantize() {
    let cases: Cases = read_json("cases.json");
    for case in cases.cases.iter().filter(|c| c.name.contains("random")) {
        let ty = GgmlType::from_id(case.type_id);
        let blocks = std::fs::read(fixture_dir().join(format!("{}.blocks", case.name))).unwrap();
        let mut out = vec![f32::NAN; case.n];
        dequantize_into(ty, &blocks, &mut out).unwrap();
        let want = dequantize(ty, &blocks, case.n).unwrap();
        assert_eq!(first_bit_difference(&out, &want), None, "{}", case.name);
    }
}

#[test]
fn wrong_byte_length_is_an_error() {
    let cases = [(GgmlType::Q4_1, 64, 39), (GgmlType::Q4K, 512, 289), (GgmlType::Q6K, 256, 209), (GgmlType::F16, 5, 12)];
    for (ty, n, len) in cases {
        let err = dequantize(ty, &vec![0; len], n).unwrap_err();
        assert!(err.contains(&ty.name()) && err.contains(&format!("got {len}")), "{err}");
    }
    let mut out = vec![0.0; 32];
    let err = dequantize_into(GgmlType::Q8_0, &[0; 35], &mut out).unwrap_err();
    assert!(err.contains("need 34 bytes, got 35"), "{err}");
}

#[test]
fn partial_block_is_an_error() {
    for (ty, n) in [(GgmlType::Q4_0, 33), (GgmlType::Q5K, 255), (GgmlType::Q8_0, 16)] {
        let len = ty.block().unwrap().1;
        let err = dequantize(ty, &vec![0; len], n).unwrap_err();
        assert!(err.contains("not a whole number") && err.contains(&ty.name()), "{err}");
    }
}

#[test]
fn unsupported_type_is_named_in_the_error() {
    let err = dequantize(GgmlType::from_id(23), &[0; 136], 256).unwrap_err();
    assert!(err.contains("ggml type 23") && err.contains("not supported"), "{err}");
}

#[test]
fn huge_count_fails_before_allocating() {
    let err = dequantize(GgmlType::Q4_0, &[0; 18], usize::MAX / 64 * 32).unwrap_err();
    assert!(err.contains("Q4_0"), "{err}");
}

#[test]
fn empty_input_gives_no_values() {
    assert_eq!(dequantize(GgmlType::Q6K, &[], 0).unwrap(), Vec::<f32>::new());
}

/// Bytes `[offset, offset + len)` of `file`.
fn read_range(file: &mut std::fs::File, offset: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    file.seek(SeekFrom::Start(offset)).unwrap();
    file.read_exact(&mut bytes).unwrap();
    bytes
}

fn sha256_of_le_f32(values: &[f32]) -> String {
    let mut hasher = Sha256::new();
    for chunk in values.chunks(1 << 16) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
        hasher.update(&bytes);
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn every_smollm2_tensor_matches_gguf_py_checksum() {
    let sums: TensorSums = read_json("smollm2_tensors.json");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/models/SmolLM2-135M-Instruct").join(&sums.file);
    if !path.exists() {
        eprintln!("SKIPPED: {} is absent (bash scripts/cache.sh installs it)", path.display());
        return;
    }
    let mut file = std::fs::File::open(&path).unwrap();
    assert_eq!(file.metadata().unwrap().len(), sums.file_size, "{} is not the file the fixture was made from", path.display());
    assert_eq!(sums.tensors.len(), 272);
    let (mut elapsed, mut total) = (std::time::Duration::ZERO, 0);
    for tensor in &sums.tensors {
        let ty = GgmlType::from_id(tensor.type_id);
        let bytes = read_range(&mut file, tensor.offset, tensor.n_bytes);
        let start = std::time::Instant::now();
        let values = dequantize(ty, &bytes, tensor.n).unwrap_or_else(|e| panic!("{}: {e}", tensor.name));
        (elapsed, total) = (elapsed + start.elapsed(), total + tensor.n);
        assert_eq!(sha256_of_le_f32(&values), tensor.sha256, "{} ({ty}, {} values)", tensor.name, tensor.n);
    }
    // Information only (no timing assert): the dequantization time of the whole file.
    eprintln!("dequantized {total} values of {} tensors in {elapsed:.2?}", sums.tensors.len());
}
