//! Batched decoder calibration computes what one run per sequence computed: the packed
//! calibration sequences run several per interpreter run, padded at their end, and only each
//! sequence's real rows reach the statistics, one sequence after another. The Q/DQ specs
//! (scales), the derived weights (SmoothQuant, AWQ, GPTQ) and the KV-cache scales must be bit
//! for bit those of a model that runs one sequence at a time (`max_batch: 1`).

mod common;

use qfuse::import::decoder::{self, DecoderModel, DecoderOptions};
use qfuse::import::Imported;
use qfuse::interp::WeightSource;
use qfuse::ir::{DType, Graph, Op};
use qfuse::passes::PassOptions;
use qfuse::quant::{self, calib::CalibMethod, CalibOptions, Recipe};

fn load(dir: &std::path::Path, max_batch: u64) -> DecoderModel {
    decoder::load(dir, &DecoderOptions { max_batch, max_seq: Some(512), ..Default::default() }).expect("import")
}

/// Every node's name and op (Q/DQ specs carry the calibrated scales), without the symbols'
/// maxima (the batch bound differs), and every weight node's tensor bits.
fn fingerprint(g: &Graph, model: &DecoderModel) -> Vec<String> {
    g.nodes
        .iter()
        .map(|(_, n)| {
            let mut line = format!("{:?} {:?}", n.name, n.op);
            if let Op::Weight { name } = &n.op {
                let t = model.weights.weight(name).expect("weight reads");
                let bits: u64 = t.to_f32_vec().iter().fold(0u64, |h, x| h.rotate_left(5) ^ u64::from(x.to_bits()));
                line += &format!(" {}{:?} {bits:016x}", t.dtype, t.shape);
            }
            line
        })
        .collect()
}

#[test]
fn batched_decoder_calibration_equals_one_sequence_per_run() {
    for name in ["llama-f32", "llama3-bf16-sharded"] {
        let Some(dir) = common::synthetic(name) else { return };
        let (single, batched) = (load(&dir, 1), load(&dir, 8));
        let calib = CalibOptions { quiet: true, ..CalibOptions::decoder_default() };
        let sequences = batched.calibration_texts(&calib.sentences).expect("packs").len();
        assert!(sequences > 1, "{name}: the calibration set packs into {sequences} sequence(s); batching needs several");
        for (recipe, method) in [
            ("fp8", CalibMethod::Percentile(99.9)),
            ("int8-sq", CalibMethod::Entropy),
            ("w4a16-awq", CalibMethod::Max),
            ("w4a16-gptq", CalibMethod::Max),
        ] {
            let recipe = decoder::decoder_recipe(Recipe::named(recipe, method).expect("recipe"));
            let calib = CalibOptions { method, ..calib.clone() };
            let a = quant::quantize(&single, &recipe, &calib, &PassOptions::default()).expect("quantize one per run");
            let b = quant::quantize(&batched, &recipe, &calib, &PassOptions::default()).expect("quantize batched");
            assert_eq!(fingerprint(&a.qdq, &single), fingerprint(&b.qdq, &batched), "{name} {}: Q/DQ graphs differ", recipe.name);
            assert_eq!(fingerprint(&a.fused, &single), fingerprint(&b.fused, &batched), "{name} {}: fused graphs differ", recipe.name);
            let (sa, sb) = (a.calibration.map(|c| (c.samples, c.tensors)), b.calibration.map(|c| (c.samples, c.tensors)));
            assert_eq!(sa, sb, "{name}: the same samples and tensors are calibrated");
        }
        for storage in [DType::F8E4M3, DType::F4E2M1] {
            let (mut one, mut many) = (load(&dir, 1), load(&dir, 8));
            decoder::set_kv_cache(&mut one, storage, &calib.sentences, true).expect("kv one per run");
            decoder::set_kv_cache(&mut many, storage, &calib.sentences, true).expect("kv batched");
            assert_eq!(format!("{:?}", one.options.kv), format!("{:?}", many.options.kv), "{name} {storage}: KV scales differ");
        }
    }
}

#[test]
fn sequence_rows_take_each_sequences_real_positions() {
    use qfuse::quant::calib::sequence_rows;
    // [2 sequences, 3 positions, 2 channels]: sequence 0 has 3 tokens, sequence 1 has 1.
    let xs: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let rows = sequence_rows(&xs, &[2, 3, 2], Some(&[3, 1])).expect("token-major");
    assert_eq!(rows, vec![&xs[0..6], &xs[6..8]]);
    assert_eq!(sequence_rows(&xs, &[2, 3, 2], None).expect("whole"), vec![&xs[..]]);
    assert_eq!(sequence_rows(&xs, &[1, 6, 2], Some(&[4])).expect("one sequence is whole"), vec![&xs[..]]);
    let err = sequence_rows(&xs[..4], &[2, 1, 2], Some(&[3, 1])).expect_err("a last-position slice is not token-major");
    assert!(err.contains("not [2, ≥ 3"), "{err}");
}
