//! The whole quantization pipeline on all-MiniLM-L6-v2: the fused IR per recipe as a snapshot,
//! the fused graph computing what the Q/DQ graph computes, and the accuracy bars.

mod common;

use qfuse::import::{self, ImportOptions, Model};
use qfuse::interp;
use qfuse::passes::PassOptions;
use qfuse::quant::{self, calib, eval, CalibOptions, Quantized, Recipe};

fn model() -> Model {
    import::load(&common::minilm_dir(), &ImportOptions::default()).unwrap()
}

fn run(model: &Model, recipe: &Recipe, samples: usize) -> Quantized {
    let mut sentences = calib::default_calibration_sentences();
    sentences.truncate(samples);
    let opts = CalibOptions { sentences, ..CalibOptions::default() };
    quant::quantize(model, recipe, &opts, &PassOptions { verify: true, ..Default::default() }).unwrap()
}

fn recipe(name: &str) -> Recipe {
    Recipe::named(name, calib::CalibMethod::Max).unwrap()
}

#[test]
fn fused_ir_per_recipe() {
    let model = model();
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    for name in ["fp16", "fp8", "fp8-dynamic"] {
        let q = run(&model, &recipe(name), 16);
        let report: Vec<String> = q.report.iter().map(|e| format!("{}: {:?}", e.qdq, e.outcome)).collect();
        settings.bind(|| {
            insta::assert_snapshot!(format!("pipeline__minilm_{name}"), qfuse::ir::print(&q.fused));
            insta::assert_snapshot!(format!("pipeline__minilm_{name}_report"), report.join("\n"));
        });
    }
}

/// Every pass but `fuse-dq-matmul` is exact, so without it the fused graph reproduces the Q/DQ
/// graph bit for bit on the real model (for `fp16`, with no Q/DQ at all, the lifted f16 GEMMs, their
/// epilogues, `attention` and `embed_layernorm` reproduce the unfused f16 graph). `fuse-dq-matmul` computes `(Σ qa·qb)·sa·sb` as the GPU
/// does instead of `Σ (qa·sa)(qb·sb)`; the one-ulp f16 differences that causes can cross FP8
/// rounding boundaries downstream, so with it the bar is FP8 noise, and no loss of accuracy.
#[test]
fn fused_graph_computes_the_qdq_graph() {
    let model = model();
    let tok = model.tokenizer.as_ref().unwrap();
    let texts: Vec<String> = calib::default_eval_sentences().into_iter().take(12).collect();
    let inputs = tok.encode(&texts).unwrap().inputs();
    let mut sentences = calib::default_calibration_sentences();
    sentences.truncate(16);
    let calib_opts = CalibOptions { sentences, ..CalibOptions::default() };
    for name in ["fp16", "fp8", "fp8-dynamic"] {
        let exact = PassOptions { disable: vec!["fuse-dq-matmul".into()], verify: true, ..Default::default() };
        let q = quant::quantize(&model, &recipe(name), &calib_opts, &exact).unwrap();
        let a = interp::run(&q.qdq, &model.weights, &inputs).unwrap();
        let b = interp::run(&q.fused, &model.weights, &inputs).unwrap();
        assert_eq!(a[0].1.to_f32_vec(), b[0].1.to_f32_vec(), "{name}: passes other than fuse-dq-matmul changed the numbers");

        let q = run(&model, &recipe(name), 16);
        let fp32 = interp::run(&model.graph, &model.weights, &inputs).unwrap()[0].1.to_f32_vec();
        let qdq = interp::run(&q.qdq, &model.weights, &inputs).unwrap()[0].1.to_f32_vec();
        let fused = interp::run(&q.fused, &model.weights, &inputs).unwrap()[0].1.to_f32_vec();
        let mean =
            |x: &[f32], y: &[f32]| x.chunks(384).zip(y.chunks(384)).map(|(p, q)| eval::cosine(p, q)).sum::<f64>() / texts.len() as f64;
        let (to_qdq, fused_acc, qdq_acc) = (mean(&fused, &qdq), mean(&fused, &fp32), mean(&qdq, &fp32));
        assert!(to_qdq >= 0.999, "{name}: fused vs Q/DQ mean embedding cosine {to_qdq}");
        assert!(fused_acc >= qdq_acc - 2e-4, "{name}: fusion lost accuracy: {fused_acc} vs Q/DQ {qdq_acc}");
    }
}

/// Regression guards at the measured accuracy (README, "Accuracy"): every matmul in E4M3 sits at
/// E4M3's resolution floor (~0.998); keeping the MLP and attention-output GEMMs in f16 reaches
/// the 0.999 bar.
#[test]
fn accuracy_bars() {
    let model = model();
    let texts = calib::default_eval_sentences();
    let mlp_in_f16 = ["*.intermediate.dense".to_string(), "*.output.dense".to_string()];
    for (name, exclude, bar) in [
        ("fp8", &[][..], 0.997),
        ("fp8-dynamic", &[][..], 0.9975),
        ("fp8", &mlp_in_f16[..], 0.999),
        ("fp8-dynamic", &mlp_in_f16[..], 0.9994),
    ] {
        let mut r = recipe(name);
        r.exclude = exclude.to_vec();
        let q = run(&model, &r, 64);
        let e = eval::evaluate(&model, &q, &texts, 16).unwrap();
        assert!(
            e.embedding_cosine_mean >= bar,
            "{name} excluding {exclude:?}: mean embedding cosine {} below {bar}",
            e.embedding_cosine_mean
        );
        assert_eq!(e.layers.len(), if exclude.is_empty() { 36 } else { 18 }, "{name}: quantized matmuls");
    }
}
