//! Recipes and KV-cache formats on a decoder (the synthetic Llama): every recipe quantizes, fuses
//! and generates; quantized logits stay close to FP32 while differing from them; lm_head stays
//! in high precision; quantized caches hold codes with calibrated per-layer scales.

mod common;

use qfuse::generate::Session;
use qfuse::import::decoder::{self, DecoderOptions, KvFormat};
use qfuse::ir::{DType, Op};
use qfuse::passes::PassOptions;
use qfuse::quant::{self, CalibOptions, Recipe};

const TOKENS: [u32; 9] = [504, 2365, 6354, 16438, 27003, 690, 260, 23790, 2767];

fn calib() -> CalibOptions {
    CalibOptions { sentences: quant::calib::default_calibration_sentences().into_iter().take(8).collect(), ..Default::default() }
}

fn logits(graph: &qfuse::ir::Graph, model: &decoder::DecoderModel) -> Vec<f32> {
    let mut s = Session::new(graph, &model.weights, 0).expect("session");
    let first = s.step(&TOKENS[..5]).expect("prefill");
    let mut out = first.data;
    for &t in &TOKENS[5..] {
        out.extend(s.step(&[t]).expect("decode").data);
    }
    out
}

/// Whether the `lm_head` product reads narrow (quantized) operands; `None` if there is none.
fn lm_head_narrow(g: &qfuse::ir::Graph) -> Option<bool> {
    let node = g
        .nodes
        .iter()
        .map(|(_, n)| n)
        .find(|n| n.name.as_deref() == Some("lm_head") && matches!(n.op, Op::QMatMul(_) | Op::MatMul { .. }))?;
    Some(node.inputs.iter().take(2).any(|&v| !g.ty(v).dtype.is_wide_float()))
}

#[test]
fn every_recipe_runs_on_a_decoder_and_keeps_lm_head() {
    let Some(dir) = common::synthetic("llama-f32") else { return };
    let opts = DecoderOptions { max_batch: 1, max_seq: Some(64), ..Default::default() };
    let model = decoder::load(&dir, &opts).expect("import");
    let reference = logits(&model.graph, &model);
    for (name, bar) in [
        ("fp16", 0.9999),
        ("fp8", 0.99),
        ("fp8-dynamic", 0.99),
        ("int8-sq", 0.99),
        ("w8a16", 0.999),
        ("w4a16-awq", 0.95),
        ("w4a16-gptq", 0.95),
        ("w4a8-awq", 0.95),
        ("nvfp4", 0.9),
        ("mxfp8", 0.99),
        ("mxfp4", 0.9),
    ] {
        let recipe = decoder::decoder_recipe(Recipe::named(name, quant::calib::CalibMethod::Max).expect("recipe"));
        let q = quant::quantize(&model, &recipe, &calib(), &PassOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        qfuse::ir::verify(&q.fused, name).expect("fused graph verifies");
        assert_eq!(q.fused.state, model.graph.state, "{name}: the cache stays graph state");
        let got = logits(&q.fused, &model);
        let cos = common::cosine(&got, &reference);
        assert!(cos > bar, "{name}: logits cosine to FP32 {cos} (bar {bar})");
        if name != "fp16" {
            assert!(got != reference, "{name}: quantization changed nothing");
        }
        assert_eq!(lm_head_narrow(&q.fused), Some(false), "{name}: lm_head must stay in high precision by default");
        if name == "fp8" {
            let all = Recipe::named(name, quant::calib::CalibMethod::Max).expect("recipe");
            let q = quant::quantize(&model, &all, &calib(), &PassOptions::default()).expect("quantize");
            assert_eq!(lm_head_narrow(&q.fused), Some(true), "without the decoder default, fp8 quantizes lm_head");
        }
    }
}

#[test]
fn quantized_kv_caches_store_codes_with_calibrated_scales() {
    let Some(dir) = common::synthetic("qwen2-f32") else { return };
    let opts = DecoderOptions { max_batch: 1, max_seq: Some(64), ..Default::default() };
    let mut model = decoder::load(&dir, &opts).expect("import");
    let reference = logits(&model.graph, &model);
    for (storage, bar) in [(DType::F8E4M3, 0.995), (DType::I8, 0.995), (DType::F16, 0.99999)] {
        let texts = qfuse::quant::calib::default_decoder_calibration();
        decoder::set_kv_cache(&mut model, storage, &texts, true).expect("kv cache");
        let past = model.graph.inputs().into_iter().find(|(n, _)| *n == "past.k.0").expect("cache input").1;
        assert_eq!(model.graph.ty(past).dtype, storage, "the cache input is typed in its storage format");
        if let KvFormat::PerTensor { scales, .. } = &model.options.kv {
            assert_eq!(scales.len(), 2);
            assert!(scales.iter().all(|&(k, v)| k > 0.0 && v > 0.0 && k != 1.0 && v != 1.0), "calibrated scales, never 1.0: {scales:?}");
        }
        let got = logits(&model.graph, &model);
        let cos = common::cosine(&got, &reference);
        assert!(cos > bar && got != reference, "{storage}: cosine {cos}");
    }
}

/// `fuse-rope` keeps every number: with it (no `rope` op left: the attention rotates its queries
/// and its step's keys, which it also quantizes for an FP8 cache; over an NVFP4 cache only the
/// queries, the key ropes stay) a prefill and decode steps give the same logits, bit for bit, as
/// the same recipe with the pass disabled.
#[test]
fn fused_rope_changes_no_logit() {
    let Some(dir) = common::synthetic("qwen2-f32") else { return };
    let opts = DecoderOptions { max_batch: 1, max_seq: Some(64), ..Default::default() };
    let mut model = decoder::load(&dir, &opts).expect("import");
    let ropes = |g: &qfuse::ir::Graph| g.nodes.iter().filter(|(_, n)| matches!(n.op, Op::Rope(_))).count();
    let texts = qfuse::quant::calib::default_decoder_calibration();
    for (storage, left) in [(DType::F16, 0), (DType::F8E4M3, 0), (DType::F4E2M1, 2)] {
        decoder::set_kv_cache(&mut model, storage, &texts, true).expect("kv cache");
        let recipe = decoder::decoder_recipe(Recipe::named("fp8", quant::calib::CalibMethod::Max).expect("recipe"));
        let fused = quant::quantize(&model, &recipe, &calib(), &PassOptions::default()).expect("quantize");
        let without = PassOptions { disable: vec!["fuse-rope".into()], ..Default::default() };
        let unfused = quant::quantize(&model, &recipe, &calib(), &without).expect("quantize");
        assert_eq!((ropes(&fused.fused), ropes(&unfused.fused)), (left, 4), "{storage}: q (and k) ropes of 2 layers fold away");
        let (a, b) = (logits(&fused.fused, &model), logits(&unfused.fused, &model));
        assert_eq!(a.len(), b.len());
        let differ = a.iter().zip(&b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
        assert_eq!(differ, 0, "{storage}: {differ} logits changed");
    }
}

/// `merge-sibling-gemms` keeps every number: on the synthetic Llama and Qwen2 (q/k/v biases), each
/// layer's Q/K/V projections become one `qmatmul_split` (the gate/up pair never: the gate's
/// epilogue reads up's result) and a prefill and decode steps give the same logits, bit for bit,
/// for fp16, fp8 with an FP8 KV cache, int8-sq and w4a16. The synthetic models' K/V width is 32,
/// off the GEMM's 64-column tile, so the pass runs with a 16-row tile here: the interpreter's
/// segments take any boundary.
#[test]
fn merged_sibling_gemms_change_no_logit() {
    use qfuse::passes::{merge_sibling_gemms::MergeSiblingGemms, Pass, PassCx};
    let splits = |g: &qfuse::ir::Graph| g.nodes.iter().filter(|(_, n)| matches!(n.op, Op::SplitMatMul(_))).count();
    for folder in ["llama-f32", "qwen2-f32"] {
        let Some(dir) = common::synthetic(folder) else { return };
        let opts = DecoderOptions { max_batch: 1, max_seq: Some(64), ..Default::default() };
        let mut model = decoder::load(&dir, &opts).expect("import");
        for (name, kv) in [("fp16", None), ("int8-sq", None), ("w4a16-rtn", None), ("fp8", Some(DType::F8E4M3))] {
            if let Some(storage) = kv {
                let texts = qfuse::quant::calib::default_decoder_calibration();
                decoder::set_kv_cache(&mut model, storage, &texts, true).expect("kv cache");
            }
            let recipe = decoder::decoder_recipe(Recipe::named(name, quant::calib::CalibMethod::Max).expect("recipe"));
            let q = quant::quantize(&model, &recipe, &calib(), &PassOptions::default()).expect("quantize");
            let mut merged = q.fused.clone();
            let mut cx = PassCx::new(&model.weights);
            assert!(MergeSiblingGemms { tile_n: 16 }.run(&mut merged, &mut cx).expect("pass"), "{folder} {name}: fires");
            qfuse::ir::verify(&merged, name).expect("merged graph verifies");
            assert_eq!((splits(&merged), splits(&q.fused)), (2, 0), "{folder} {name}: one split per layer");
            let (a, b) = (logits(&merged, &model), logits(&q.fused, &model));
            let differ = a.iter().zip(&b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
            assert_eq!((a.len(), differ), (b.len(), 0), "{folder} {name}: {differ} logits changed");
        }
    }
}

/// `merge-gate-up` keeps every number: on the synthetic Llama and Qwen2, with the pass enabled
/// (as decoder plans do: `compile::decoder_passes`) each layer's gate and up projections become
/// one `qmatmul_glu` and a prefill and decode steps give the same logits, bit for bit, as with
/// it off (`--disable-pass merge-gate-up` leaves the pair), for fp16, fp8 with an FP8 KV cache,
/// int8-sq and w4a16.
#[test]
fn merged_gate_up_changes_no_logit() {
    use qfuse::compile::decoder::decoder_passes;
    let glus = |g: &qfuse::ir::Graph| g.nodes.iter().filter(|(_, n)| matches!(n.op, Op::GluMatMul(_))).count();
    for folder in ["llama-f32", "qwen2-f32"] {
        let Some(dir) = common::synthetic(folder) else { return };
        let opts = DecoderOptions { max_batch: 1, max_seq: Some(64), ..Default::default() };
        let mut model = decoder::load(&dir, &opts).expect("import");
        for (name, kv) in [("fp16", None), ("int8-sq", None), ("w4a16-rtn", None), ("fp8", Some(DType::F8E4M3))] {
            if let Some(storage) = kv {
                let texts = qfuse::quant::calib::default_decoder_calibration();
                decoder::set_kv_cache(&mut model, storage, &texts, true).expect("kv cache");
            }
            let recipe = decoder::decoder_recipe(Recipe::named(name, quant::calib::CalibMethod::Max).expect("recipe"));
            let on = quant::quantize(&model, &recipe, &calib(), &decoder_passes(&PassOptions::default())).expect("quantize");
            let disable = PassOptions { disable: vec!["merge-gate-up".into()], ..Default::default() };
            let off = quant::quantize(&model, &recipe, &calib(), &decoder_passes(&disable)).expect("quantize");
            assert_eq!((glus(&on.fused), glus(&off.fused)), (2, 0), "{folder} {name}: one merged gate/up per layer");
            let (a, b) = (logits(&on.fused, &model), logits(&off.fused, &model));
            let differ = a.iter().zip(&b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
            assert_eq!((a.len(), differ), (b.len(), 0), "{folder} {name}: {differ} logits changed");
        }
    }
}

/// `fuse-epilogue` keeps every number on an AWQ decoder: with it, each layer's down-projection
/// smoothing `mul` (a weight `[N]`) joins the gate GEMM's epilogue after `silu, mul(up)`, and
/// `merge-gate-up` keeps it in the `qmatmul_glu`; a prefill and decode steps give the same logits,
/// bit for bit, as with the pass disabled (every product a node of its own).
#[test]
fn awq_smoothing_in_the_gate_epilogue_changes_no_logit() {
    use qfuse::compile::decoder::decoder_passes;
    let Some(dir) = common::synthetic("llama-f32") else { return };
    let opts = DecoderOptions { max_batch: 1, max_seq: Some(64), ..Default::default() };
    let model = decoder::load(&dir, &opts).expect("import");
    let recipe = decoder::decoder_recipe(Recipe::named("w4a16-awq", quant::calib::CalibMethod::Max).expect("recipe"));
    let on = quant::quantize(&model, &recipe, &calib(), &decoder_passes(&PassOptions::default())).expect("quantize");
    let disable = PassOptions { disable: vec!["fuse-epilogue".into()], ..Default::default() };
    let off = quant::quantize(&model, &recipe, &calib(), &decoder_passes(&disable)).expect("quantize");
    let smoothing = |g: &qfuse::ir::Graph| {
        g.nodes
            .iter()
            .filter(|(_, n)| matches!(n.op, Op::Binary(_)) && n.name.as_deref().is_some_and(|l| l.ends_with("down_proj.smooth")))
            .count()
    };
    assert_eq!((smoothing(&on.fused), smoothing(&off.fused)), (0, 2), "the smoothing joins each layer's gate GEMM");
    let (a, b) = (logits(&on.fused, &model), logits(&off.fused, &model));
    let differ = a.iter().zip(&b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
    assert_eq!((a.len(), differ), (b.len(), 0), "{differ} logits changed");
}

/// `--kv-cache nvfp4`: the cache is E2M1 code state plus E4M3 block-scale state (one scale per 16
/// elements of D), each layer's K and V have a calibrated power-of-two global scale, logits stay
/// close to FP32 over prefill and decode steps, and `fuse-kv-cache` (attention reading the codes
/// and block scales itself) changes no logit bit.
#[test]
fn an_nvfp4_kv_cache_stores_codes_and_block_scales() {
    let Some(dir) = common::synthetic("qwen2-f32") else { return };
    let opts = DecoderOptions { max_batch: 1, max_seq: Some(64), ..Default::default() };
    let mut model = decoder::load(&dir, &opts).expect("import");
    let reference = logits(&model.graph, &model);
    let texts = qfuse::quant::calib::default_decoder_calibration();
    decoder::set_kv_cache(&mut model, DType::F4E2M1, &texts, true).expect("kv cache");
    let KvFormat::Nvfp4 { globals } = &model.options.kv else { panic!("{:?}", model.options.kv) };
    assert_eq!(globals.len(), 2);
    for &g in globals.iter().flat_map(|(k, v)| [k, v]) {
        assert!(g > 0.0 && g < 1.0 && g.log2() == g.log2().round(), "global {g} is a power of two");
    }
    let inputs = model.graph.inputs();
    let ty = |name: &str| model.graph.ty(inputs.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("{name}")).1).clone();
    assert_eq!(ty("past.v.1").dtype, DType::F4E2M1);
    let scales = ty("past.v_scale.1");
    assert_eq!((scales.dtype, scales.shape.last().and_then(|d| d.fixed())), (DType::F8E4M3, Some(1)), "head size 16: one block");
    assert_eq!(model.graph.state.len(), 8);
    let got = logits(&model.graph, &model);
    let cos = common::cosine(&got, &reference);
    println!("nvfp4 KV cache: logits cosine to FP32 {cos}");
    assert!(cos > 0.97 && got != reference, "cosine {cos}");
    let mut fused = model.graph.clone();
    let weights = qfuse::passes::MemoryWeights::default();
    let mut cx = qfuse::passes::PassCx::new(&weights);
    assert!(qfuse::passes::pipeline::by_name("fuse-kv-cache").unwrap().run(&mut fused, &mut cx).unwrap());
    let attentions: Vec<_> = fused.nodes.iter().filter(|(_, n)| matches!(n.op, Op::CausalAttention(_))).collect();
    assert!(attentions.iter().all(|(_, n)| n.inputs.len() == 10));
    assert_eq!(logits(&fused, &model), got, "the fused attention reads the cache exactly as the dequantizes did");
}

/// Calibration texts longer than one step (`--max-step`) are cut at the step's limit, for the
/// recipe's activation statistics and for the KV cache's scales, instead of failing because the
/// sequence axis exceeds its bound.
#[test]
fn calibration_texts_longer_than_a_step_are_cut() {
    let Some(dir) = common::synthetic("llama-f32") else { return };
    let opts = DecoderOptions { max_batch: 1, max_seq: Some(64), max_step: Some(4), ..Default::default() };
    let mut model = decoder::load(&dir, &opts).expect("import");
    let texts = calib().sentences;
    let tok = model.tokenizer.as_ref().expect("tokenizer");
    assert!(texts.iter().any(|t| tok.encode(t).expect("encode").len() > 4), "some calibration text is longer than a step");
    decoder::set_kv_cache(&mut model, DType::F8E4M3, &texts, true).expect("the KV cache calibrates over cut texts");
    let recipe = decoder::decoder_recipe(Recipe::named("int8-sq", quant::calib::CalibMethod::Max).expect("recipe"));
    quant::quantize(&model, &recipe, &calib(), &PassOptions::default()).expect("int8-sq calibrates over cut texts");
}

/// Calibration texts pack greedily, in order, into sequences within the token limit; a text over
/// the limit stays alone; limit 0 or 1 keeps the texts.
#[test]
fn calibration_texts_pack_in_order_within_the_limit() {
    let texts: Vec<String> = ["a", "b", "c", "d", "e"].iter().map(|s| s.to_string()).collect();
    let packed = decoder::pack_texts(&texts, &[3, 4, 10, 2, 2], 1, 9);
    let sep = decoder::PACK_SEPARATOR;
    assert_eq!(packed, vec![format!("a{sep}b"), "c".to_string(), format!("d{sep}e")]);
    assert_eq!(decoder::pack_texts(&texts, &[1; 5], 1, 0), texts);
    assert_eq!(decoder::pack_texts(&texts, &[1; 5], 1, 1), texts);
    assert_eq!(decoder::pack_texts(&texts, &[1; 5], 0, 100), vec![texts.join(sep)]);
}

/// A decoder calibrates on packed sequences of at most one step, covering every text.
#[test]
fn decoder_calibration_packs_texts_into_steps() {
    use qfuse::import::Imported;
    let Some(dir) = common::synthetic("llama-f32") else { return };
    let opts = DecoderOptions { max_batch: 1, max_seq: Some(64), ..Default::default() };
    let model = decoder::load(&dir, &opts).expect("import");
    let texts = quant::calib::default_decoder_calibration();
    let packed = model.calibration_texts(&texts).expect("pack");
    assert!(packed.len() < texts.len() / 2, "{} sequences from {} texts", packed.len(), texts.len());
    assert_eq!(packed.join(decoder::PACK_SEPARATOR), texts.join(decoder::PACK_SEPARATOR), "every text once, in order");
    let tok = model.tokenizer.as_ref().expect("tokenizer");
    for p in &packed {
        let n = tok.encode(p).expect("encode").len();
        let alone = texts.contains(p);
        assert!(n <= 64 + 4 || alone, "a packed sequence of {n} tokens exceeds the step");
    }
}

/// Decoders run GPTQ with act-order by default; the encoder recipe keeps its documented default.
#[test]
fn decoder_gptq_defaults_to_act_order() {
    use qfuse::quant::recipe::WeightAlgo;
    let named = || Recipe::named("w4a16-gptq", quant::calib::CalibMethod::Max).expect("recipe");
    assert!(matches!(named().linear.algo, WeightAlgo::Gptq { act_order: false, .. }));
    assert!(matches!(decoder::decoder_recipe(named()).linear.algo, WeightAlgo::Gptq { act_order: true, .. }));
    let awq = decoder::decoder_recipe(Recipe::named("w4a16-awq", quant::calib::CalibMethod::Max).expect("recipe"));
    assert!(matches!(awq.linear.algo, WeightAlgo::Awq { .. }), "other algorithms are untouched");
}
