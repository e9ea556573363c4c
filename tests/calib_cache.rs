//! The calibration cache on all-MiniLM-L6-v2: quantizing again with the same graph, weights and
//! samples reads the statistics back and builds the same graph bit for bit; other samples or
//! other weights miss; a damaged entry is a miss (and is rewritten), never an error.

mod common;

use std::path::Path;

use qfuse::import::{self, ImportOptions, Model};
use qfuse::passes::PassOptions;
use qfuse::quant::{self, calib, CalibOptions, Quantized, Recipe};

fn quantize(model: &Model, cache: &Path, samples: usize) -> Quantized {
    let mut sentences = calib::default_calibration_sentences();
    sentences.truncate(samples);
    let opts = CalibOptions { sentences, cache: Some(cache.to_path_buf()), ..CalibOptions::default() };
    let recipe = Recipe::named("fp8", calib::CalibMethod::Max).unwrap();
    quant::quantize(model, &recipe, &opts, &PassOptions { verify: true, ..Default::default() }).unwrap()
}

fn cached(q: &Quantized) -> bool {
    q.calibration.as_ref().expect("fp8 calibrates").cached
}

fn entries(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

#[test]
fn a_second_quantization_reuses_the_statistics_and_builds_the_same_graph() {
    let model = import::load(&common::minilm_dir(), &ImportOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = quantize(&model, dir.path(), 6);
    assert!(!cached(&first), "an empty cache cannot hit");
    assert_eq!(entries(dir.path()).len(), 1, "the statistics are stored");
    let printed = qfuse::ir::print(&first.fused);

    let second = quantize(&model, dir.path(), 6);
    assert!(cached(&second), "same graph, weights and samples");
    assert_eq!(qfuse::ir::print(&second.fused), printed, "the cached statistics give the same scales");

    let other = quantize(&model, dir.path(), 5);
    assert!(!cached(&other), "other samples are another key");
    assert_eq!(entries(dir.path()).len(), 2);

    for entry in entries(dir.path()) {
        std::fs::write(entry, b"not a calibration cache entry").unwrap();
    }
    let after_damage = quantize(&model, dir.path(), 6);
    assert!(!cached(&after_damage), "a damaged entry is a miss");
    assert_eq!(qfuse::ir::print(&after_damage.fused), printed);
    assert!(cached(&quantize(&model, dir.path(), 6)), "the damaged entry was rewritten");
}

#[test]
fn other_weights_are_another_key() {
    let model = import::load(&common::minilm_dir(), &ImportOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    assert!(!cached(&quantize(&model, dir.path(), 3)));
    // The same graph with one weight changed by one ulp in one element.
    let name = "encoder.layer.5.output.dense.weight";
    let mut w = (*qfuse::interp::WeightSource::weight(&model.weights, name).unwrap()).clone();
    let qfuse::interp::TensorData::F32(values) = &mut w.data else { panic!("{name} is float") };
    values[0] = f32::from_bits(values[0].to_bits() + 1);
    model.weights.insert(name, w);
    assert!(!cached(&quantize(&model, dir.path(), 3)), "a changed weight must not reuse the statistics");
}
