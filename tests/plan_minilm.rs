//! all-MiniLM-L6-v2 compiled to `.plan`s without a GPU: every kernel of the fp16, fp8 and
//! fp8-dynamic plans is generated from templates and compiled by NVRTC to sm_90a CUBIN, the plan
//! round-trips through the file, its schedule covers every node, its memory plan is sound, and
//! the interpreter running the plan's own IR with the plan's own weights reproduces the fused
//! graph it came from (so the plan carries everything needed to debug it).

mod common;

use std::collections::HashSet;

use qfuse::check::PlanWeights;
use qfuse::compile::{compile, CompileOptions, CompiledPlan};
use qfuse::import::ImportOptions;
use qfuse::interp;
use qfuse::plan::{ArgRef, Plan, SectionKind, Sums, TensorCoreModel};
use qfuse::quant::calib;

fn compile_minilm(recipe: &str, cache: &std::path::Path) -> CompiledPlan {
    compile_minilm_with(recipe, cache, |_| {})
}

/// [`compile_minilm`] with the options adjusted by `adjust` first.
fn compile_minilm_with(recipe: &str, cache: &std::path::Path, adjust: impl FnOnce(&mut CompileOptions)) -> CompiledPlan {
    let mut opts = CompileOptions::for_recipe(recipe).unwrap();
    adjust(&mut opts);
    opts.calib.sentences = calib::default_calibration_sentences().into_iter().take(16).collect();
    opts.kernel_cache = Some(cache.to_path_buf());
    opts.import = ImportOptions { max_batch: 8, max_seq: Some(128), ..ImportOptions::default() };
    compile(&common::minilm_dir(), &opts).unwrap_or_else(|e| panic!("{recipe}: {e}"))
}

#[test]
fn minilm_plans_compile_for_sm90a_and_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("kernels");
    for recipe in ["fp16", "fp8", "fp8-dynamic"] {
        let compiled = compile_minilm(recipe, &cache);
        let stats = &compiled.stats;
        assert_eq!(stats.compiled + stats.cached, stats.kernels, "{recipe}");
        let path = dir.path().join(format!("minilm-{recipe}.plan"));
        compiled.save(&path).unwrap();
        let plan = Plan::load(&path, Some("sm_90a")).unwrap();
        plan.verify_sections().unwrap();
        let meta = plan.meta();
        assert_eq!(meta, compiled.meta(), "{recipe}: the plan file changed the metadata");
        check_kernels(&plan, recipe);
        check_schedule(&plan, recipe);
        check_sums(&plan, recipe);
        check_memory(&plan, recipe);
        check_ir_and_weights(&plan, &compiled, recipe);
        eprintln!(
            "{recipe}: {} kernels, {} launches, arena {} of {} bytes without reuse, {} weight bytes",
            stats.kernels, stats.launches, stats.peak_activation_bytes, stats.unshared_activation_bytes, stats.weight_bytes
        );
    }
}

/// `--fp8-attention`: the six attentions become one FP8-operand kernel (E4M3 Q·Kᵀ and P·V), each
/// launch with its layer's scales as arguments, compiled by NVRTC like every other kernel of the
/// plan.
#[test]
fn minilm_fp8_attention_plan_compiles() {
    let dir = tempfile::tempdir().unwrap();
    let compiled = compile_minilm_with("fp8", &dir.path().join("kernels"), |o| o.recipe.fp8_attention = true);
    let path = dir.path().join("minilm-fp8-attention.plan");
    compiled.save(&path).unwrap();
    let plan = Plan::load(&path, Some("sm_90a")).unwrap();
    check_kernels(&plan, "fp8 --fp8-attention");
    check_schedule(&plan, "fp8 --fp8-attention");
    let attention: Vec<_> = plan.meta().kernels.iter().filter(|k| k.template == "attention").collect();
    assert_eq!(attention.len(), 1, "one attention kernel for the six layers (their scales are launch arguments)");
    for k in attention {
        assert!(k.source.contains("constexpr bool FP8 = true;"), "{}: not the FP8-operand attention", k.name);
    }
}

/// Every kernel is a real sm_90 ELF whose symbol table names the kernel.
fn check_kernels(plan: &Plan, recipe: &str) {
    for k in &plan.meta().kernels {
        let cubin = plan.section_bytes(k.section as usize).unwrap();
        assert!(cubin.starts_with(b"\x7fELF"), "{recipe}: {} is not an ELF", k.name);
        assert!(cubin.windows(k.name.len()).any(|w| w == k.name.as_bytes()), "{recipe}: {}'s CUBIN lacks its symbol", k.name);
        assert!(k.source.contains(&k.name), "{recipe}: {}'s source does not define it", k.name);
    }
    let templates: HashSet<&str> = plan.meta().kernels.iter().map(|k| k.template.as_str()).collect();
    for t in ["embed_layernorm", "gemm", "attention", "layernorm", "mean_pool", "l2_normalize"] {
        assert!(templates.contains(t), "{recipe}: no `{t}` kernel among {templates:?}");
    }
}

/// One launch per kernel-producing node, in an order where every buffer is written before it is
/// read (inputs excepted).
fn check_schedule(plan: &Plan, recipe: &str) {
    let meta = plan.meta();
    let mut written: HashSet<u64> = meta.inputs.iter().map(|i| meta.buffers[i.buffer as usize].offset).collect();
    let mut defined: HashSet<String> = meta.inputs.iter().map(|i| meta.buffers[i.buffer as usize].name.clone()).collect();
    for (n, l) in meta.schedule.iter().enumerate() {
        let kernel = &meta.kernels[l.kernel as usize];
        assert_eq!(l.args.len(), kernel.params.len(), "{recipe}: launch {n}");
        for arg in &l.args {
            if let ArgRef::Buffer(b) = arg {
                let b = &meta.buffers[*b as usize];
                let writes_it = l.writes.iter().any(|w| meta.buffers[*w as usize].name == b.name);
                assert!(
                    writes_it || defined.contains(&b.name) || written.contains(&b.offset),
                    "{recipe}: launch {n} ({}) reads {} before it is written",
                    l.label,
                    b.name
                );
            }
        }
        for &w in &l.writes {
            defined.insert(meta.buffers[w as usize].name.clone());
            written.insert(meta.buffers[w as usize].offset);
        }
    }
    let outputs: Vec<&str> = meta.outputs.iter().map(|o| meta.buffers[o.buffer as usize].name.as_str()).collect();
    for o in outputs {
        assert!(defined.contains(o), "{recipe}: output buffer {o} is never written");
    }
}

/// Every tiled GEMM launch records how its mainloop sums (format 2.3), and nothing else does:
/// f16 `wgmma` as the f16 tensor cores chained over K, FP8 `wgmma` (the default) promoted to f32
/// every 128-deep k-tile; the skinny CUDA-core kernels sum in f32 and record nothing.
fn check_sums(plan: &Plan, recipe: &str) {
    let meta = plan.meta();
    let want = if recipe == "fp16" {
        Sums::TensorCore(TensorCoreModel::H100F16)
    } else {
        Sums::Promoted { model: TensorCoreModel::H100E4M3, every: 128 }
    };
    for (n, l) in meta.schedule.iter().enumerate() {
        let kernel = &meta.kernels[l.kernel as usize];
        let expected = (kernel.template == "gemm").then_some(want);
        assert_eq!(meta.sums_of(n), expected, "{recipe}: launch {n} ({}, {})", l.label, kernel.template);
        if expected.is_some() {
            assert!(kernel.source.contains("constexpr Mainloop MAINLOOP = Mainloop::Wgmma;"), "{recipe}: launch {n} is not on wgmma");
        }
    }
    assert!(!meta.launch_sums.is_empty(), "{recipe}: no GEMM launch records its sums");
}

/// Reuse happened, every buffer lies in the arena, and the largest-shape arena is what it says.
fn check_memory(plan: &Plan, recipe: &str) {
    let meta = plan.meta();
    let unshared: u64 = meta.buffers.iter().map(|b| b.bytes).sum();
    assert!(meta.peak_activation_bytes < unshared / 2, "{recipe}: arena {} vs {unshared} without reuse", meta.peak_activation_bytes);
    assert!(meta.buffers.iter().all(|b| b.offset % 256 == 0 && b.offset + b.bytes <= meta.peak_activation_bytes));
}

/// The stored IR parses, names every buffer's value, and run by the interpreter with the plan's
/// weights gives exactly what the fused graph gives with the model's weights.
fn check_ir_and_weights(plan: &Plan, compiled: &CompiledPlan, recipe: &str) {
    let graph = qfuse::ir::parse(&plan.meta().ir_text).unwrap();
    qfuse::ir::verify(&graph, "plan IR").unwrap();
    for b in &plan.meta().buffers {
        let i: usize = b.name.trim_start_matches('%').parse().unwrap();
        assert_eq!(graph.values[qfuse::ir::ValueId::from(i)].ty.dtype.to_string(), b.dtype, "{recipe}: {}", b.name);
    }
    assert!(plan.sections().iter().any(|s| s.kind == SectionKind::Other && s.name == "tokenizer.json"));
    let weights = PlanWeights::load(plan).unwrap();
    let model = qfuse::import::load(&common::minilm_dir(), &ImportOptions::default()).unwrap();
    let batch = model.tokenizer.as_ref().unwrap().encode(&["A plan carries its own IR.".to_string(), "ok".to_string()]).unwrap();
    let from_plan = interp::run(&graph, &weights, &batch.inputs()).unwrap();
    let batch = model.tokenizer.as_ref().unwrap().encode(&["A plan carries its own IR.".to_string(), "ok".to_string()]).unwrap();
    // The fused graph's derived weights (quantized copies) live in the model's store only after
    // quantization, so rerun it through the compiled result's graph with the plan's weights too.
    let fused = interp::run(&compiled.quantized.fused, &weights, &batch.inputs()).unwrap();
    assert_eq!(from_plan[0].1, fused[0].1, "{recipe}: the stored IR computes something else");
    // And the plan's weights are the model's: the embeddings match FP32's.
    let batch = model.tokenizer.as_ref().unwrap().encode(&["A plan carries its own IR.".to_string(), "ok".to_string()]).unwrap();
    let fp32 = interp::run(&model.graph, &model.weights, &batch.inputs()).unwrap();
    let (a, b) = (from_plan[0].1.to_f32_vec(), fp32[0].1.to_f32_vec());
    for (x, y) in a.chunks(384).zip(b.chunks(384)) {
        let cos = qfuse::check::row_cosines(x, y, 384)[0];
        assert!(cos > 0.99, "{recipe}: plan embedding vs FP32 cosine {cos}");
    }
}
