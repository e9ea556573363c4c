//! A decoder plan of the default decoder (SmolLM2-135M-Instruct, its GGUF), compiled without a
//! GPU: what the generator relies on is in the plan, the cache state has no arena storage, the
//! 30 layers share their kernels, and the plan's IR runs on the interpreter's paged steps.

mod common;

use qfuse::compile::{compile_decoder, CompileOptions, DecoderPlanOptions};
use qfuse::import::decoder::KvFormat;
use qfuse::plan::{ArgRef, Plan};

/// SmolLM2's fp16 plan settings of these tests: sm_90a, the decoder calibration defaults, the
/// checkout's kernel cache.
fn fp16_options() -> CompileOptions {
    recipe_options("fp16")
}

/// The settings of [`fp16_options`] for `recipe`.
fn recipe_options(recipe: &str) -> CompileOptions {
    let mut opts = CompileOptions::for_recipe(recipe).unwrap();
    opts.arch = Some("sm_90a".into());
    opts.calib = qfuse::quant::CalibOptions::decoder_default();
    opts.kernel_cache = Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/kernels"));
    opts
}

#[test]
fn smollm2_fp16_plan_holds_a_paged_generator() {
    let gguf = common::smollm2_gguf();
    let opts = fp16_options();
    let d = DecoderPlanOptions { kv_cache: None, max_seq: Some(256), max_batch: 4, max_step: 32, page_size: 32 };
    let plan = compile_decoder(&gguf, &opts, &d).expect("compile");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("smol.plan");
    plan.save(&path).unwrap();
    let loaded = Plan::load(&path, None).unwrap();
    let m = loaded.meta();
    let dec = m.decoder.as_ref().expect("decoder metadata");
    // 30 layers, K and V: 60 pools of f16 [pages, 3, 32, 64].
    assert_eq!(dec.kv.slots.len(), 60);
    assert!(dec.kv.slots.iter().all(|s| s.dtype == "f16" && s.kv_heads == 3 && s.head_dim == 64 && s.scale == 1.0));
    assert_eq!((dec.kv.page_size, dec.kv.max_pages, dec.max_seq, dec.max_batch, dec.max_step_tokens), (32, 8, 256, 4, 32));
    assert_eq!((dec.vocab, dec.logits.as_str()), (49152, "logits"));
    // Only each sequence's last position reaches the LM head: logits [B, 1, V].
    let logits = m.outputs.iter().find(|o| o.name == "logits").expect("logits output");
    assert_eq!(logits.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>(), ["B", "1", "49152"]);
    assert!(dec.tokens.chat_template.is_some() && !dec.tokens.eos.is_empty());
    assert_eq!(m.kernels[dec.sample_kernel as usize].template, "sample");
    // The cache is not an input and has no buffer; the cache length symbol is gone.
    assert!(m.inputs.iter().all(|i| !i.name.starts_with("past.")), "{:?}", m.inputs.iter().map(|i| &i.name).collect::<Vec<_>>());
    assert!(m.buffers.iter().all(|b| !b.shape.iter().any(|d| d.to_string().contains('P'))));
    assert_eq!(m.symbols.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(), ["B", "S"]);
    // Every pool is named by the append and the attention, whose decode (S = 1: the split
    // attention, merged by its last CTAs, appending the step's token itself) and prefill (S > 1,
    // after kv_append) paths are guarded alternatives.
    let pool_uses = m.schedule.iter().flat_map(|l| &l.args).filter(|a| matches!(a, ArgRef::KvPool(_))).count();
    assert_eq!(pool_uses, 60 * 3);
    let template_of = |i: usize| m.kernels[m.schedule[i].kernel as usize].template.as_str();
    let attention = |i: usize| m.schedule[i].label.starts_with("causal_attention") && template_of(i) != "kv_append";
    assert!((0..m.schedule.len()).all(|i| !attention(i) || m.guard_of(i).is_some()));
    let guarded: Vec<usize> = (0..m.schedule.len()).filter(|&i| attention(i)).collect();
    assert_eq!(guarded.len(), 30 * 2);
    let at_decode = [("B".to_string(), 4u64), ("S".to_string(), 1u64)];
    for layer in guarded.chunks(2) {
        let kernel = |i: usize| &m.kernels[m.schedule[i].kernel as usize];
        let templates: Vec<&str> = layer.iter().map(|&i| kernel(i).template.as_str()).collect();
        assert_eq!(templates, ["paged_attention", "paged_prefill"], "prefill from f16 on tensor cores");
        let runs: Vec<bool> = layer.iter().map(|&i| m.guard_of(i).unwrap().holds(&at_decode).unwrap()).collect();
        assert_eq!(runs, [true, false], "the split attention at decode, prefill above");
        // SmolLM2's 3 KV heads: ceil(264 / 3) ranges, capped at the 256 / 64 = 4 tiles of a sequence.
        let split = kernel(layer[0]);
        assert!(split.source.contains("#define QF_SPLITS 4"), "{}", split.name);
        assert_eq!(split.grid[0].to_string(), "4");
        assert_eq!(m.schedule[layer[0]].args[5], m.schedule[layer[1]].args[5], "both paths write the attention's output");
        assert_eq!(m.schedule[layer[0]].args[6], ArgRef::SplitScratchZeroed, "counters in the zeroed scratch (format 2.2)");
        // Each launch writes what it takes as a result: the attention paths the context, and
        // the prefill append (just before the prefill path) the rotated keys only, so the
        // per-kernel check judges the context after the attention, not after the append.
        let ArgRef::Buffer(context) = m.schedule[layer[0]].args[5] else { panic!("the context is a buffer") };
        assert!(layer.iter().all(|&i| m.schedule[i].writes.contains(&context)));
        let append = (0..layer[1]).rev().find(|&i| template_of(i) == "kv_append").expect("the prefill append");
        assert!(!m.schedule[append].writes.contains(&context) && !m.schedule[append].writes.is_empty(), "{:?}", m.schedule[append]);
    }
    // One scratch for all layers: 4 · 3 completion counters (48 bytes, a multiple of 16), then
    // max_batch 4 · 9 heads · 4 ranges · (64 + 2) f32.
    assert_eq!(dec.split_scratch_bytes, 48 + 4 * 9 * 4 * 66 * 4);
    // Programmatic dependent launch (format 2.2): every kernel, the sampler's included, may overlap
    // its predecessor, and each of them waits for it before touching memory.
    assert_eq!(m.pdl_kernels, (0..m.kernels.len() as u32).collect::<Vec<_>>());
    for &k in &m.pdl_kernels {
        let k = &m.kernels[k as usize];
        assert!(common::enters_pdl_first(&k.source), "{} is launched with PDL but does not wait first", k.name);
    }
    // Token-major K/V: the step's keys and values are views of the projections, so no launch
    // (transpose, cast or other element-wise copy) computes anything in a K/V cache scope; the
    // pools are written by the 30 kv_appends at prefill and by the 30 decode attentions at decode.
    let decode = step_launches(m, &at_decode);
    let cache_copies: Vec<&str> =
        decode.iter().map(|l| l.label.as_str()).filter(|l| l.contains("k_cache") || l.contains("v_cache")).collect();
    assert!(cache_copies.is_empty(), "K/V copies left: {cache_copies:?}");
    let kernel_of = |l: &qfuse::plan::LaunchMeta| m.kernels[l.kernel as usize].template.as_str();
    assert_eq!(decode.iter().filter(|l| kernel_of(l) == "kv_append").count(), 0, "the decode attention appends");
    assert!(decode.iter().all(|l| !l.label.starts_with("transpose")), "no transposes at all in a Llama step");
    let prefill = step_launches(m, &[("B".to_string(), 4), ("S".to_string(), 32)]);
    assert_eq!(prefill.iter().filter(|l| kernel_of(l) == "kv_append").count(), 30);
    println!("SmolLM2 fp16 plan: {} launches per decode step, {} per prefill step", decode.len(), prefill.len());
    // Head-major K/V (before) cost a transpose and an identity cast per K and V per layer: 573
    // launches per decode step and 543 per prefill step; token-major, 120 fewer; the gated MLP's
    // product in the gate GEMM's epilogue, 30 fewer; last_token, 1 more: 424 and 394. RoPE in the
    // attention's query load and the append (fuse-rope over the f16 cache), 2 fewer per layer:
    // 424 − 60 = 364 and 394 − 60 = 334. The split attention's last CTA merges the partials
    // instead of a split_combine launch, 1 fewer per layer at decode: 364 − 30 = 334. Q, K and V
    // as one GEMM (merge-sibling-gemms, on by default in decoder plans), 2 fewer per layer: 274.
    // The gated MLP's gate and up as one GEMM with SwiGLU in its epilogue (merge-gate-up, on by
    // default in decoder plans too), 1 fewer per layer: 244. The decode attention appends the
    // step's token itself (kv_append guarded S > 1), 1 fewer per layer at decode: 214 and 244.
    assert_eq!(decode.iter().filter(|l| kernel_of(l) == "rope").count(), 0, "no rope launch is left");
    assert_eq!(decode.iter().filter(|l| kernel_of(l) == "split_combine").count(), 0, "no combine launch is left");
    let merged = decode.iter().filter(|l| l.label.contains("{q,k,v}_proj")).count();
    assert_eq!(merged, 30, "one Q/K/V GEMM per layer");
    let gate_up = decode.iter().filter(|l| l.label.contains("{gate,up}_proj")).count();
    assert_eq!(gate_up, 30, "one gate/up GEMM per layer");
    assert!(decode.iter().all(|l| !l.label.ends_with("up_proj") || l.label.contains("{gate,up}_proj")), "no separate up GEMM");
    assert!(decode.len() <= 214, "{} launches per decode step", decode.len());
    assert_eq!(prefill.len(), decode.len() + 30, "the 30 appends at prefill only");
    assert!(prefill.len() <= 244, "{} launches per prefill step", prefill.len());
    // Kernel count independent of depth: far fewer kernels than layers × ops.
    assert!(m.kernels.len() < 30, "{} kernels for 30 layers", m.kernels.len());
    assert!(m.schedule.len() > 30 * 10);
}

/// `--enable-pass fuse-norm-prologue` on SmolLM2's fp16 plan: the 61 RMSNorms (two per layer and
/// the final one before the LM head) are computed by their readers' skinny GEMMs at decode (B ≤ 4
/// rows), so a decode step has no norm launch; a prefill step (B·S > 16 rows) runs the layers' norms
/// as before.
#[test]
fn smollm2_norm_prologues_leave_no_norm_launch_at_decode() {
    let gguf = common::smollm2_gguf();
    let mut opts = fp16_options();
    opts.passes.enable.push("fuse-norm-prologue".into());
    let d = DecoderPlanOptions { kv_cache: None, max_seq: Some(256), max_batch: 4, max_step: 32, page_size: 32 };
    let m = compile_decoder(&gguf, &opts, &d).expect("compile").meta().clone();
    let ir = &m.ir_text;
    assert_eq!(ir.matches("prologue=true").count(), 61, "every RMSNorm is read by one GEMM");
    let kernel_of = |l: &qfuse::plan::LaunchMeta| m.kernels[l.kernel as usize].template.as_str();
    let decode = step_launches(&m, &[("B".to_string(), 4), ("S".to_string(), 1)]);
    let prefill = step_launches(&m, &[("B".to_string(), 4), ("S".to_string(), 32)]);
    assert_eq!(decode.iter().filter(|l| kernel_of(l) == "layernorm").count(), 0, "no norm launch at decode");
    // At prefill the layers' norms see B·S = 128 rows and launch; the final norm sees the B = 4 last
    // positions, which the LM head's skinny kernel still takes.
    assert_eq!(prefill.iter().filter(|l| kernel_of(l) == "layernorm").count(), 60, "the layers' norms at prefill");
    let skinny_with_norm = m.kernels.iter().filter(|k| k.template == "gemm_skinny" && k.source.contains("constexpr int PROLOGUE = 1;"));
    assert!(skinny_with_norm.count() >= 3, "the Q/K/V, gate+up and LM head skinny kernels take the norm");
    println!("SmolLM2 fp16 plan with norm prologues: {} launches per decode step, {} per prefill step", decode.len(), prefill.len());
    assert_eq!(decode.len(), 214 - 61);
}

/// `fuse-attention-output` (on in decoder plans) on SmolLM2's fp8 plan over an FP8 cache: each
/// layer's activation quantize before `o_proj` is the attention's own output quantize, so neither
/// step launches a `quantize` for it (30 fewer launches at decode and at prefill than with
/// `--disable-pass fuse-attention-output`), and every attention kernel (the split decode and the
/// tensor-core prefill) takes the scale as its last argument.
#[test]
fn smollm2_fp8_attention_stores_its_context_codes() {
    let gguf = common::smollm2_gguf();
    let d = DecoderPlanOptions {
        kv_cache: Some(KvFormat::parse_storage("fp8").unwrap()),
        max_seq: Some(256),
        max_batch: 4,
        max_step: 32,
        page_size: 32,
    };
    let launches = |enable: bool| {
        let mut opts = recipe_options("fp8");
        if !enable {
            opts.passes.disable.push("fuse-attention-output".into());
        }
        let m = compile_decoder(&gguf, &opts, &d).expect("compile").meta().clone();
        let decode = step_launches(&m, &[("B".to_string(), 4), ("S".to_string(), 1)]).len();
        let prefill = step_launches(&m, &[("B".to_string(), 4), ("S".to_string(), 32)]).len();
        (m, decode, prefill)
    };
    let (plain, plain_decode, plain_prefill) = launches(false);
    let (m, decode, prefill) = launches(true);
    assert_eq!(m.ir_text.matches("out=f8e4m3, out_scale=").count() - plain.ir_text.matches("out=f8e4m3, out_scale=").count(), 30);
    assert!(!m.ir_text.contains("o_proj:a.q\""), "no standalone quantize before o_proj");
    assert_eq!((decode, prefill), (plain_decode - 30, plain_prefill - 30));
    for l in m.schedule.iter().filter(|l| l.label.starts_with("causal_attention")) {
        let k = &m.kernels[l.kernel as usize];
        if k.template != "kv_append" {
            assert_eq!(k.params.last().map(|p| p.name.as_str()), Some("out_scale"), "{}", k.name);
        }
    }
    println!("SmolLM2 fp8 + FP8 KV with fuse-attention-output: {decode} launches per decode step (was {plain_decode}), {prefill} per prefill step");
}

/// `w4a16-awq` on SmolLM2: AWQ's smoothing of each down projection's input (`1/s`, a weight
/// `[1536]`) is the last step of the gate/up GEMM's epilogue (`fuse-epilogue`'s per-column `mul`
/// rule, kept by `merge-gate-up`), so a decode step launches no `mul` for it, 30 launches fewer;
/// the o_proj's smoothing `mul` after the attention stays, one per layer.
#[test]
fn smollm2_awq_down_smoothing_runs_in_the_gate_up_epilogue() {
    let gguf = common::smollm2_gguf();
    let opts = recipe_options("w4a16-awq");
    let d = DecoderPlanOptions { kv_cache: None, max_seq: Some(256), max_batch: 4, max_step: 32, page_size: 32 };
    let m = compile_decoder(&gguf, &opts, &d).expect("compile").meta().clone();
    assert_eq!(m.ir_text.matches("epilogue=[silu(f16),mul(up,f16),mul(%").count(), 30, "every gate's epilogue ends in its smoothing");
    let decode = step_launches(&m, &[("B".to_string(), 4), ("S".to_string(), 1)]);
    let labelled = |what: &str| decode.iter().filter(|l| l.label.contains(what)).count();
    assert_eq!(labelled("down_proj.smooth"), 0, "no smoothing launch before down_proj");
    assert_eq!(labelled("o_proj.smooth"), 30, "the o_proj smoothing after the attention stays");
    println!("SmolLM2 w4a16-awq plan: {} launches per decode step", decode.len());
    // The fp16 plan's 214 and the 30 o_proj smoothing muls (the down_proj ones were 30 more).
    assert_eq!(decode.len(), 214 + 30);
}

/// The launches one step at `syms` runs: every unguarded launch and each guarded one whose guard
/// holds, in schedule order.
fn step_launches<'m>(m: &'m qfuse::plan::PlanMeta, syms: &[(String, u64)]) -> Vec<&'m qfuse::plan::LaunchMeta> {
    (0..m.schedule.len()).filter(|&i| m.guard_of(i).is_none_or(|g| g.holds(syms).unwrap())).map(|i| &m.schedule[i]).collect()
}

/// `--kv-cache nvfp4` on SmolLM2: every layer's K and V are E2M1 code pools (32 bytes a token
/// and head) with an E4M3 block-scale pool beside each (4 bytes), the code slots carry the
/// calibrated power-of-two global scales, 4.5 bits per cached element in all, and each layer
/// appends once to its four pools and reads them in the attention.
#[test]
fn smollm2_plan_with_an_nvfp4_kv_cache_holds_the_format() {
    let gguf = common::smollm2_gguf();
    let opts = fp16_options();
    let kv_cache = Some(qfuse::import::decoder::KvFormat::parse_storage("nvfp4").unwrap());
    let d = DecoderPlanOptions { kv_cache, max_seq: Some(256), max_batch: 4, max_step: 32, page_size: 32 };
    let plan = compile_decoder(&gguf, &opts, &d).expect("compile");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("smol-nvfp4.plan");
    plan.save(&path).unwrap();
    let loaded = Plan::load(&path, None).unwrap();
    let m = loaded.meta();
    let dec = m.decoder.as_ref().expect("decoder metadata");
    assert_eq!(dec.kv.slots.len(), 120, "K, K scales, V, V scales per layer");
    let mut bytes_per_token = 0;
    for (i, s) in dec.kv.slots.iter().enumerate() {
        let (layer, kind) = (i / 4, ["k", "k_scale", "v", "v_scale"][i % 4]);
        assert_eq!(s.input, format!("past.{kind}.{layer}"));
        assert_eq!(s.update, format!("present.{kind}.{layer}"));
        assert_eq!(s.kv_heads, 3);
        if kind.ends_with("scale") {
            assert_eq!((s.dtype.as_str(), s.head_dim, s.scale), ("f8e4m3", 4, 1.0), "{s:?}");
        } else {
            assert_eq!((s.dtype.as_str(), s.head_dim), ("f4e2m1", 64), "{s:?}");
            let exponent = s.scale.log2();
            assert!(s.scale < 1.0 && exponent == exponent.round(), "global scale {} is a power of two", s.scale);
        }
        bytes_per_token += s.page_bytes(dec.kv.page_size).unwrap() / u64::from(dec.kv.page_size);
    }
    // 30 layers · 2 (K, V) · 3 heads · (32 code bytes + 4 scale bytes) = 4.5 bits per element.
    assert_eq!(bytes_per_token, 30 * 2 * 3 * 36);
    assert_eq!(bytes_per_token * 8 * 2, 30 * 2 * 3 * 64 * 9);
    let kv = qfuse::import::decoder::KvFormat::Nvfp4 { globals: vec![] };
    assert_eq!(kv.bytes_per_token(3, 64) * 30, bytes_per_token);
    // One append per layer writes the four pools; the attentions read them.
    let pool_uses = m.schedule.iter().flat_map(|l| &l.args).filter(|a| matches!(a, ArgRef::KvPool(_))).count();
    assert_eq!(pool_uses, 30 * 4 * 3);
    let appends: Vec<&qfuse::plan::LaunchMeta> =
        m.schedule.iter().filter(|l| m.kernels[l.kernel as usize].template == "kv_append").collect();
    assert_eq!(appends.len(), 30);
    let attentions = || m.kernels.iter().filter(|k| ["paged_attention", "paged_prefill"].contains(&k.template.as_str()));
    assert_eq!(attentions().filter(|k| k.template == "paged_prefill").count(), 1, "one tensor-core prefill kernel for all layers");
    assert!(attentions().all(|k| k.source.contains("#define QF_NVFP4 1")));
    assert!(m.inputs.iter().all(|i| !i.name.starts_with("past.")));
    // fuse-rope: every attention rotates its queries as it loads them; the keys' rope stays, one
    // launch per layer (NVFP4 keys are block-quantized before the append, which only copies).
    assert!(attentions().all(|k| k.source.contains("#define QF_ROPE 1")));
    assert!(m.kernels.iter().filter(|k| k.template == "kv_append").all(|k| k.source.contains("#define QF_KEY_ROPE 0")));
    assert!(attentions().all(|k| !k.source.contains("#define QF_APPEND 1")), "an NVFP4 cache keeps kv_append at decode");
    let ropes = m.schedule.iter().filter(|l| m.kernels[l.kernel as usize].template == "rope").count();
    assert_eq!(ropes, 30, "the key ropes");
    // The split decode attention over the NVFP4 pools merges in its last CTAs too: its scratch
    // (after o) holds counters, and every kernel (the NVFP4 ones included) waits first for PDL.
    let splits: Vec<&qfuse::plan::LaunchMeta> =
        m.schedule.iter().filter(|l| m.kernels[l.kernel as usize].source.contains("#define QF_SPLITS 4")).collect();
    assert_eq!(splits.len(), 30);
    assert!(splits.iter().all(|l| l.args[6] == ArgRef::SplitScratchZeroed), "counters in the zeroed scratch");
    assert_eq!(dec.split_scratch_bytes, 48 + 4 * 9 * 4 * 66 * 4);
    assert_eq!(m.pdl_kernels, (0..m.kernels.len() as u32).collect::<Vec<_>>());
    assert!(m.kernels.iter().all(|k| common::enters_pdl_first(&k.source)));
    // Launches per step: the fp16 cache's 244 plus, per layer, the key rope and the pre-scale
    // multiply and block quantize of K and of V (5 · 30): 394 at decode (the split attention
    // merges itself: no split_combine) and 394 at prefill.
    let decode = step_launches(m, &[("B".to_string(), 1), ("S".to_string(), 1)]);
    let prefill = step_launches(m, &[("B".to_string(), 4), ("S".to_string(), 32)]);
    println!("SmolLM2 fp16 plan, NVFP4 cache: {} launches per decode step, {} per prefill step", decode.len(), prefill.len());
    let count = |ls: &[&qfuse::plan::LaunchMeta], t: &str| ls.iter().filter(|l| m.kernels[l.kernel as usize].template == t).count();
    assert_eq!(count(&decode, "split_combine"), 0, "no combine launch");
    assert_eq!((count(&decode, "quantize"), count(&decode, "elementwise")), (60, 60), "K and V: pre-scale and block quantize");
    assert_eq!((decode.len(), prefill.len()), (394, 394));
}

/// The GPU's place in `qfuse check`'s per-kernel comparison taken by the interpreter: each
/// launch a step runs (its guard holding at the step's `B` and `S`) "writes" the interpreter's
/// values of the buffers it names, read back at the runtime's extents (a buffer without a value
/// writes zeros, which the judge must fail).
struct InterpreterLaunches<'a> {
    meta: &'a qfuse::plan::PlanMeta,
    graph: &'a qfuse::ir::Graph,
    stepper: qfuse::generate::paged::PagedStepper<'a>,
}

impl qfuse::check::decoder::kernels::LaunchStepper for InterpreterLaunches<'_> {
    fn meta(&self) -> &qfuse::plan::PlanMeta {
        self.meta
    }

    fn step_checked(
        &mut self,
        input: &qfuse::runtime::scheduler::StepInput,
        on_launch: &mut qfuse::check::decoder::kernels::OnLaunch<'_>,
    ) -> anyhow::Result<()> {
        let mut values = std::collections::HashMap::new();
        self.stepper
            .step_observed(input, &mut |v, t| {
                values.insert(v, t.clone());
            })
            .map_err(anyhow::Error::msg)?;
        let (m, syms) = (self.meta, [("B".to_string(), input.batch as u64), ("S".to_string(), input.seq as u64)]);
        for (index, launch) in m.schedule.iter().enumerate() {
            if m.guard_of(index).is_some_and(|g| !g.holds(&syms).unwrap()) {
                continue;
            }
            let mut written = Vec::new();
            for &w in &launch.writes {
                let b = &m.buffers[w as usize];
                let ext = qfuse::runtime::bind::buffer_extent(m, w, &b.dtype, &b.shape, &syms).map_err(anyhow::Error::msg)?;
                let value = qfuse::check::value_id(self.graph, &b.name).and_then(|v| values.get(&v));
                let host = value
                    .map(qfuse::check::to_host)
                    .unwrap_or_else(|| qfuse::runtime::HostTensor::zeros(b.dtype.clone(), ext.shape.clone()));
                anyhow::ensure!(
                    host.shape == ext.shape,
                    "launch {index} `{}`: buffer `{}` read back as {:?}",
                    launch.label,
                    b.name,
                    ext.shape
                );
                written.push((w, host));
            }
            on_launch(index, launch, &written);
        }
        Ok(())
    }

    fn step_plain(&mut self, input: &qfuse::runtime::scheduler::StepInput) -> anyhow::Result<()> {
        self.stepper.step(input).map(|_| ()).map_err(anyhow::Error::msg)
    }
}

/// `qfuse check`'s per-kernel comparison of a decoder plan (`check::decoder::kernels`) with the
/// interpreter in the GPU's place: every buffer each launch of a prefill step and of a decode step
/// writes names an IR value that the interpreter computes on the same paged step, with the
/// run-time shape and dtype the runtime reads back, so every launch passes (on the GPU only the
/// numbers remain to be judged: tests/check_decoder_gpu.rs).
#[test]
fn every_buffer_a_decoder_step_writes_has_an_interpreter_value() {
    use qfuse::check::decoder::kernels::{check_kernels, KernelJudge};
    use qfuse::generate::paged::PagedStepper;
    use qfuse::interp::Accumulation;
    use qfuse::runtime::scheduler::Geometry;
    let gguf = common::smollm2_gguf();
    let opts = fp16_options();
    let d = DecoderPlanOptions { kv_cache: None, max_seq: Some(64), max_batch: 2, max_step: 16, page_size: 16 };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("smol.plan");
    compile_decoder(&gguf, &opts, &d).expect("compile").save(&path).unwrap();
    let plan = Plan::load(&path, None).unwrap();
    let m = plan.meta();
    let graph = qfuse::ir::parse(&m.ir_text).unwrap();
    let weights = qfuse::check::PlanWeights::load(&plan).unwrap();
    let geometry = Geometry::of(m.decoder.as_ref().unwrap());
    let pages = geometry.max_batch * geometry.max_pages;
    let stepper = || PagedStepper::new(&graph, &weights, geometry, pages, Accumulation::F32).unwrap();
    let mut gpu = InterpreterLaunches { meta: m, graph: &graph, stepper: stepper() };
    let mut judge = KernelJudge::new(&mut gpu, stepper(), &graph);
    let prompt: Vec<u32> = (0..12).map(|i| 100 + 37 * i).collect();
    let steps = check_kernels(geometry, &mut judge, &prompt).unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s.step.as_str()).collect();
    assert_eq!(names, ["prefill (B = 1, S = 12)", "decode (B = 1, S = 1)"]);
    for step in &steps {
        let failed: Vec<String> =
            step.kernels.iter().filter(|k| !k.comparison.pass).map(|k| format!("{} {}: {:?}", k.launch, k.label, k.comparison)).collect();
        assert!(failed.is_empty() && step.passed(), "{}: {failed:#?}", step.step);
        assert!(step.kernels.len() > 200, "{}: {} buffers judged", step.step, step.kernels.len());
    }
}
