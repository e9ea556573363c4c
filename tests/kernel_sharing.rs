//! Kernel count independent of depth (issue 11, item 3): per-layer constants (static scales,
//! GEMM alphas, output quantize scales, FP8 attention scales) are launch arguments, not source
//! literals, so every encoder layer of all-MiniLM-L6-v2 runs the same kernels whatever the recipe,
//! and two layers' launches of one GEMM differ only in their `f32` arguments. Lowering only (no
//! NVRTC): `tests/plan_minilm.rs` compiles the kernels.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use qfuse::codegen::kernel::{Arg, Launch, LowerOptions};
use qfuse::codegen::lower::{lower_graph, Program};
use qfuse::import::{self, ImportOptions, Model};
use qfuse::ir::{self, Graph};
use qfuse::passes::PassOptions;
use qfuse::plan::Scalar;
use qfuse::quant::{self, calib, CalibOptions, Recipe};

/// Every recipe of the book (`auto` picks among them).
const RECIPES: [&str; 10] =
    ["fp16", "fp8", "fp8-dynamic", "int8-sq", "w8a16", "w4a16-rtn", "w4a16-awq", "w4a16-gptq", "nvfp4", "fp8-block"];

fn model() -> Model {
    let opts = ImportOptions { max_batch: 8, max_seq: Some(128), ..ImportOptions::default() };
    import::load(&common::minilm_dir(), &opts).unwrap()
}

/// The fused graph of `recipe` (8 calibration sentences) and its lowering for sm_90a.
fn lowered(model: &Model, recipe: &str, fp8_attention: bool) -> (Graph, Program) {
    let mut r = Recipe::named(recipe, calib::CalibMethod::Max).unwrap();
    r.fp8_attention = fp8_attention;
    let sentences = calib::default_calibration_sentences().into_iter().take(8).collect();
    let calib = CalibOptions { sentences, ..CalibOptions::default() };
    let q = quant::quantize(model, &r, &calib, &PassOptions::default()).unwrap_or_else(|e| panic!("{recipe}: {e}"));
    let graph = ir::order::compact(&q.fused);
    let program = lower_graph(&graph, 90, LowerOptions::default()).unwrap_or_else(|e| panic!("{recipe}: {e}"));
    (graph, program)
}

/// The encoder layer a node belongs to, from its location (`encoder.layer.3.…`).
fn layer_of(loc: &str) -> Option<usize> {
    let rest = &loc[loc.find("encoder.layer.")? + "encoder.layer.".len()..];
    rest.split('.').next()?.parse().ok()
}

/// Per layer, its launches in execution order.
fn launches_by_layer<'p>(graph: &Graph, program: &'p Program) -> BTreeMap<usize, Vec<&'p Launch>> {
    let mut out: BTreeMap<usize, Vec<&Launch>> = BTreeMap::new();
    for step in &program.steps {
        if let Some(layer) = graph.nodes[step.node].name.as_deref().and_then(layer_of) {
            out.entry(layer).or_default().extend(&step.launches);
        }
    }
    out
}

fn f32_args(l: &Launch) -> Vec<u32> {
    l.args
        .iter()
        .filter_map(|a| match a {
            Arg::Scalar(Scalar::F32(v)) => Some(v.to_bits()),
            _ => None,
        })
        .collect()
}

/// Layers 1 to 4 (every layer but the first, whose input comes from the embedding, and the last,
/// whose output goes to the pooling) launch the same kernels in the same order: a deeper model
/// adds launches, not kernels.
fn assert_depth_independent(recipe: &str, graph: &Graph, program: &Program) {
    let layers = launches_by_layer(graph, program);
    assert_eq!(layers.len(), 6, "{recipe}: MiniLM has 6 encoder layers");
    let names = |l: usize| -> Vec<&str> { layers[&l].iter().map(|x| x.kernel.name.as_str()).collect() };
    for l in 2..=4 {
        assert_eq!(names(l), names(1), "{recipe}: layer {l} runs other kernels than layer 1");
    }
    let interior: BTreeSet<&str> = names(1).into_iter().collect();
    let all: BTreeSet<&str> = program.kernels().iter().map(|k| k.name.as_str()).collect();
    let outside: BTreeSet<&str> = layers
        .iter()
        .filter(|(l, _)| **l == 0 || **l == 5)
        .flat_map(|(_, ls)| ls.iter().map(|x| x.kernel.name.as_str()))
        .chain(non_layer_kernels(graph, program))
        .collect();
    assert!(all.iter().all(|k| interior.contains(k) || outside.contains(k)), "{recipe}: a kernel belongs to no layer");
}

fn non_layer_kernels<'p>(graph: &Graph, program: &'p Program) -> Vec<&'p str> {
    program
        .steps
        .iter()
        .filter(|s| graph.nodes[s.node].name.as_deref().and_then(layer_of).is_none())
        .flat_map(|s| s.launches.iter().map(|l| l.kernel.name.as_str()))
        .collect()
}

#[test]
fn every_recipe_runs_the_same_kernels_in_every_interior_layer() {
    let model = model();
    let (fp16_graph, fp16) = lowered(&model, "fp16", false);
    assert_depth_independent("fp16", &fp16_graph, &fp16);
    let base = fp16.kernels().len();
    for recipe in RECIPES.into_iter().skip(1) {
        let (graph, program) = lowered(&model, recipe, false);
        assert_depth_independent(recipe, &graph, &program);
        let kernels = program.kernels().len();
        let launches: usize = program.steps.iter().map(|s| s.launches.len()).sum();
        eprintln!("{recipe}: {kernels} kernels ({base} in fp16), {launches} launches");
    }
}

/// In the fp8 plan, each layer's GEMMs have their own static scales (alpha and the output
/// quantize's scale), yet layer 1 and layer 2 launch one kernel per GEMM shape with different
/// `f32` arguments; the same for `--fp8-attention`'s attention scales.
#[test]
fn layers_share_a_gemm_kernel_with_their_own_scales() {
    let model = model();
    for fp8_attention in [false, true] {
        let (graph, program) = lowered(&model, "fp8", fp8_attention);
        assert_depth_independent("fp8", &graph, &program);
        let layers = launches_by_layer(&graph, &program);
        let mut templates_with_own_scales = BTreeSet::new();
        for (a, b) in layers[&1].iter().zip(&layers[&2]) {
            assert_eq!(a.kernel.name, b.kernel.name);
            let (fa, fb) = (f32_args(a), f32_args(b));
            assert_eq!(fa.len(), b.kernel.params.iter().filter(|p| p.ty == qfuse::plan::ParamType::F32).count());
            if fa != fb {
                templates_with_own_scales.insert(a.kernel.template);
            }
        }
        assert!(templates_with_own_scales.contains("gemm"), "no GEMM kernel shared with other scales: {templates_with_own_scales:?}");
        if fp8_attention {
            assert!(templates_with_own_scales.contains("attention"), "{templates_with_own_scales:?}");
            let attention = program.kernels().iter().filter(|k| k.template == "attention").count();
            assert_eq!(attention, 1, "one FP8 attention kernel for the six layers");
        }
        for k in program.kernels() {
            assert!(!k.source.contains("QK_ALPHA_BITS") && !k.source.contains("OUT_SCALE_BITS"), "{}: scales compiled in", k.name);
        }
    }
}
