//! F16 and BF16 checkpoints import to the same graph and numbers as F32 ones holding the same values.

mod common;

use common::*;
use qfuse::import::{self, ImportOptions};
use qfuse::interp::{self, Tensor};
use safetensors::Dtype;

fn save(dir: &std::path::Path, tensors: &[(String, Vec<usize>, Vec<f32>)], dtype: Dtype) {
    let encode = |x: f32| -> Vec<u8> {
        match dtype {
            Dtype::F16 => half::f16::from_f32(x).to_le_bytes().to_vec(),
            Dtype::BF16 => half::bf16::from_f32(x).to_le_bytes().to_vec(),
            _ => x.to_le_bytes().to_vec(),
        }
    };
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> =
        tensors.iter().map(|(n, s, d)| (n.clone(), s.clone(), d.iter().flat_map(|&x| encode(x)).collect())).collect();
    let views: std::collections::HashMap<_, _> =
        bytes.iter().map(|(n, s, b)| (n.clone(), safetensors::tensor::TensorView::new(dtype, s.clone(), b).unwrap())).collect();
    std::fs::write(dir.join("model.safetensors"), safetensors::serialize(&views, None).unwrap()).unwrap();
    std::fs::write(dir.join("config.json"), TINY_CONFIG).unwrap();
}

fn hidden_state(dir: &std::path::Path) -> Vec<f32> {
    let model = import::load(dir, &ImportOptions::default()).unwrap();
    let ids = Tensor::i64(vec![2, 5], vec![1, 4, 7, 2, 0, 3, 3, 9, 11, 5]);
    let mask = Tensor::i64(vec![2, 5], vec![1, 1, 1, 1, 0, 1, 1, 1, 1, 1]);
    let types = Tensor::i64(vec![2, 5], vec![0; 10]);
    let out =
        interp::run(&model.graph, &model.weights, &[("input_ids", ids), ("attention_mask", mask), ("token_type_ids", types)]).unwrap();
    out[0].1.to_f32_vec()
}

#[test]
fn half_precision_checkpoints_match_f32() {
    for (dtype, round) in [(Dtype::F16, qfuse::ir::DType::F16), (Dtype::BF16, qfuse::ir::DType::BF16)] {
        let tensors: Vec<_> = tiny_bert_tensors()
            .into_iter()
            .map(|(n, s, d)| (n, s, d.into_iter().map(|x| qfuse::numerics::cast(x, round)).collect::<Vec<f32>>()))
            .collect();
        let (wide, narrow) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        save(wide.path(), &tensors, Dtype::F32);
        save(narrow.path(), &tensors, dtype);
        let (a, b) = (hidden_state(wide.path()), hidden_state(narrow.path()));
        assert_eq!(a, b, "{dtype:?} checkpoint computes differently from the same values in F32");
        assert!(a.iter().all(|x| x.is_finite()) && a.iter().any(|&x| x != 0.0));
    }
}

/// A decoded file tensor is a cache entry: released, it leaves memory and the next read decodes
/// the file again to the same values; a derived tensor (inserted) is never released.
#[test]
fn released_file_tensors_decode_again_and_derived_tensors_stay() {
    use qfuse::interp::WeightSource;
    let dir = tempfile::tempdir().unwrap();
    let values: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
    save(dir.path(), &[("w".into(), vec![2, 3], values.clone())], Dtype::BF16);
    let store = import::WeightStore::open(&dir.path().join("model.safetensors")).unwrap();
    assert_eq!(store.resident_bytes(), 0, "nothing is decoded before the first read");
    let first = store.weight("w").unwrap();
    assert_eq!(first.to_f32_vec(), values);
    assert_eq!(store.resident_bytes(), 24);
    drop(first);
    store.release("w");
    assert_eq!(store.resident_bytes(), 0, "the decoded copy is gone");
    assert_eq!(store.weight("w").unwrap().to_f32_vec(), values, "read again from the file");
    store.insert("w.codes", Tensor::f32(vec![2], vec![1.0, 2.0]));
    store.release("w.codes");
    assert_eq!(store.weight("w.codes").unwrap().to_f32_vec(), [1.0, 2.0], "derived tensors stay");
}
