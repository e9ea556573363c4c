//! Batched decoder calibration computes what one run per sequence computed: the packed
//! calibration sequences run several per interpreter run, padded at their end, and only each
//! sequence's real rows reach the statistics, one sequence after another. The Q/DQ specs
//! (scales), the derived weights (SmoothQuant, AWQ, GPTQ) and the KV-cache scales must be bit
//! for bit those of a model that runs one sequence at a time (`max_batch: 1`).
//!
//! Streamed calibration (`quant::calib::stream`: span of layers by span of layers, the
//! residual stream kept between spans) must likewise compute what whole-graph runs computed.

mod common;

use qfuse::import::decoder::{self, DecoderModel, DecoderOptions};
use qfuse::import::Imported;
use qfuse::interp::WeightSource;
use qfuse::ir::{DType, Graph, Op};
use qfuse::passes::PassOptions;
use qfuse::quant::{self, calib::CalibMethod, CalibOptions, CalibSchedule, Recipe};

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

/// Streamed calibration: the same Q/DQ graphs, fused graphs and derived weights as whole-graph
/// runs (every statistic of the non-sequential schedule is bit for bit the same), for every
/// family and each kind of statistic: histograms (fp8 percentile, int8-sq entropy), channel
/// maxima (SmoothQuant), AWQ's sample rows and GPTQ's Hessians. The sequential schedule changes
/// GPTQ's weights and leaves a recipe without weight algorithms as it was.
#[test]
fn streamed_calibration_equals_whole_graph_runs() {
    for name in ["llama-f32", "llama3-bf16-sharded", "qwen2-f32", "mistral-f16"] {
        let Some(dir) = common::synthetic(name) else { return };
        let model = load(&dir, 8);
        let whole = CalibOptions { quiet: true, schedule: CalibSchedule::Whole, ..CalibOptions::decoder_default() };
        for (recipe, method) in [
            ("fp8", CalibMethod::Percentile(99.9)),
            ("int8-sq", CalibMethod::Entropy),
            ("w4a16-awq", CalibMethod::Max),
            ("w4a8-awq", CalibMethod::Mse),
            ("w4a16-gptq", CalibMethod::Max),
        ] {
            let recipe = decoder::decoder_recipe(Recipe::named(recipe, method).expect("recipe"));
            let quantize = |schedule| {
                let calib = CalibOptions { method, schedule, ..whole.clone() };
                let q = quant::quantize(&model, &recipe, &calib, &PassOptions::default()).expect("quantize");
                (fingerprint(&q.qdq, &model), fingerprint(&q.fused, &model), q.algorithms)
            };
            let (a, b) = (quantize(CalibSchedule::Whole), quantize(CalibSchedule::Layers));
            let differ: Vec<_> = a.0.iter().zip(&b.0).chain(a.1.iter().zip(&b.1)).filter(|(x, y)| x != y).collect();
            assert!(differ.is_empty(), "{name} {}: streamed calibration differs from whole-graph runs: {differ:#?}", recipe.name);
            assert_eq!(a, b, "{name} {}: streamed calibration differs from whole-graph runs", recipe.name);
            // Sequential: the weight algorithms see the layers before as they left them.
            let seq = quantize(CalibSchedule::Sequential);
            match recipe.name.as_str() {
                "fp8" => assert_eq!(seq, a, "{name} fp8: no weight algorithm, nothing to change"),
                "w4a16-gptq" => assert_ne!(seq.0, a.0, "{name} w4a16-gptq: the later layers see quantized inputs"),
                _ => {}
            }
        }
    }
}

/// The spans of a decoder: the embedding, then each layer's attention and MLP halves, cut at
/// the residual stream (`h + o_proj(…)`, `h + down(…)`); the LM head only when a value there is
/// requested. Every requested value is in the span of its layer half.
#[test]
fn decoder_spans_cut_at_the_residual_stream() {
    use qfuse::quant::calib::stream::Spans;
    let Some(dir) = common::synthetic("llama-f32") else { return };
    let model = load(&dir, 8);
    let g = &model.graph;
    let matmul = |name: &str| {
        let is_site = |n: &&qfuse::ir::Node| n.name.as_deref() == Some(name) && matches!(n.op, Op::MatMul { .. });
        g.nodes.iter().map(|(_, n)| n).find(is_site).map(|n| n.inputs[0]).expect(name)
    };
    let sites = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj", "model.layers.1.self_attn.o_proj"];
    let values: Vec<_> = sites.iter().map(|s| matmul(s)).collect();
    let spans = Spans::new(g, &values);
    // embedding | layer 0 attention | layer 0 MLP | layer 1's norm | layer 1 attention: nothing
    // after the last requested value runs, so the residual stream is not needed past layer 1's
    // input norm, whose output is then the only value carried on (a cut).
    assert_eq!(spans.len(), 5);
    assert_eq!(values.iter().map(|&v| spans.span_of(v)).collect::<Vec<_>>(), vec![Some(1), Some(2), Some(4)]);
    let head = matmul("lm_head");
    let with_head = Spans::new(g, &[values[0], head]);
    assert_eq!(with_head.len(), 2 + 2 * 2, "embedding, two halves per layer, head");
    assert_eq!(with_head.span_of(head), Some(5));
    assert_eq!(Spans::whole(&values).len(), 1);
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
