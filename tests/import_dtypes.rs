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

/// The store holds no decoded copy of a file tensor: every read decodes the file again to the same
/// values. A derived tensor (inserted) stays, held in its dtype's storage bytes (one per FP8 code)
/// and read back bit for bit; one whose values are off its dtype's grid is held as inserted.
#[test]
fn file_tensors_decode_per_read_and_derived_tensors_stay_packed() {
    use qfuse::interp::WeightSource;
    let dir = tempfile::tempdir().unwrap();
    let values: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
    save(dir.path(), &[("w".into(), vec![2, 3], values.clone())], Dtype::BF16);
    let store = import::WeightStore::open(&dir.path().join("model.safetensors")).unwrap();
    assert_eq!(store.resident_bytes(), 0, "nothing is decoded before the first read");
    let first = store.weight("w").unwrap();
    assert_eq!(first.to_f32_vec(), values);
    assert_eq!(store.resident_bytes(), 0, "a read keeps no decoded copy");
    store.release("w");
    assert_eq!(store.weight("w").unwrap().to_f32_vec(), values, "read again from the file");
    let codes = Tensor::from_f32_as(qfuse::ir::DType::F8E4M3, vec![4], vec![448.0, -0.015625, 0.0, -0.0]);
    store.insert("w.f8e4m3", codes.clone());
    assert_eq!(store.resident_bytes(), 4, "FP8 codes are held as one byte each");
    store.release("w.f8e4m3");
    let back = store.weight("w.f8e4m3").unwrap();
    assert_eq!(back.dtype, codes.dtype);
    assert_eq!(
        back.to_f32_vec().iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        codes.to_f32_vec().iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
    // Off the f16 grid: kept as inserted (four bytes a value), never rounded.
    let off_grid = Tensor { dtype: qfuse::ir::DType::F16, shape: vec![1], data: qfuse::interp::TensorData::F32(vec![0.1]) };
    store.insert("w.odd", off_grid.clone());
    assert_eq!(*store.weight("w.odd").unwrap(), off_grid);
    assert_eq!(store.resident_bytes(), 8);
}
