//! The decoder kernels on a GPU against the reference interpreter (issue 13): `rope`, the paged
//! `causal_attention` (kv_append + paged_attention over shuffled pages; at decode the attention
//! appends the step's token itself, split and unsplit, except over NVFP4; float, FP8 and NVFP4 caches,
//! prefill (from f16 / bf16 on the tensor-core paged_prefill, at SmolLM2's and Llama-3-8B's head
//! layouts too) and decode, the decode split over key ranges and merged by its last CTAs, bit for bit
//! as the two-launch split_combine, RoPE fused into both by `fuse-rope`, into the queries only over
//! NVFP4), the sampler against `generate::sample::choose`, and a whole SmolLM2 decoder plan
//! generating the same logits with programmatic dependent launch on and off. Needs an NVIDIA GPU
//! with sm_90 and NVRTC, so it is ignored by default (CI has no GPU):
//!
//! ```sh
//! cargo test --release --test decoder_kernels_gpu -- --ignored --test-threads=1
//! ```
//!
//! Without a driver or device every test fails (it never skips).

use std::collections::HashMap;
use std::ffi::c_void;

mod common;
#[path = "common/gpu.rs"]
mod gpu;

use gpu::Gpu;
use qfuse::codegen::kernel::{Arg, KernelDef, Launch, LowerOptions, PagedKv};
use qfuse::codegen::lower::lower_graph_paged;
use qfuse::codegen::ops::decoder;
use qfuse::codegen::sample;
use qfuse::compile::bytes;
use qfuse::generate::sample::{choose, Sampling};
use qfuse::interp::{self, NoWeights, Tensor};
use qfuse::ir::{self, DType, Graph, ValueId};
use qfuse::plan::{ParamType, Scalar};

/// A kernel argument by value.
#[derive(Clone, Copy, Debug)]
enum KArg {
    Ptr(u64),
    I64(i64),
    I32(i32),
    F32(f32),
}

/// Launches `k` on `grid` with `args` (one per parameter, of its type) and waits.
fn launch(gpu: &Gpu, k: &KernelDef, grid: [u32; 3], args: &[KArg]) {
    let mut values: Vec<KArg> = args.to_vec();
    let mut params: Vec<*mut c_void> = values
        .iter_mut()
        .map(|a| match a {
            KArg::Ptr(p) => p as *mut u64 as *mut c_void,
            KArg::I64(v) => v as *mut i64 as *mut c_void,
            KArg::I32(v) => v as *mut i32 as *mut c_void,
            KArg::F32(v) => v as *mut f32 as *mut c_void,
        })
        .collect();
    gpu.launch(k, grid, &mut params);
}

/// Grid of `k` at the given symbol values.
fn grid(k: &KernelDef, syms: &[(String, u64)]) -> [u32; 3] {
    k.grid.clone().map(|d| u32::try_from(d.eval_with(syms).expect("grid")).expect("grid fits u32"))
}

/// Device memory a launch's non-value pointers name: pools by state slot, the page table and the
/// split-KV scratch (0 where the test has none).
#[derive(Default)]
struct Cache {
    pools: Vec<u64>,
    table: u64,
    scratch: u64,
}

/// A launch's arguments: values by `buffers`, the cache's pools, page table and scratch, scalars.
fn bind(l: &Launch, buffers: &HashMap<ValueId, u64>, cache: &Cache, syms: &[(String, u64)]) -> Vec<KArg> {
    l.args
        .iter()
        .zip(&l.kernel.params)
        .map(|(a, p)| match a {
            Arg::Value(v) => KArg::Ptr(buffers[v]),
            Arg::KvPool(i) => KArg::Ptr(cache.pools[*i as usize]),
            Arg::PageTable => KArg::Ptr(cache.table),
            Arg::SplitScratch { .. } => KArg::Ptr(cache.scratch),
            Arg::Scalar(Scalar::F32(x)) => KArg::F32(*x),
            Arg::Scalar(Scalar::I32(x)) => KArg::I32(*x),
            Arg::Scalar(Scalar::I64(x)) => KArg::I64(*x),
            Arg::Scalar(Scalar::Dim(d)) => {
                let v = d.eval_with(syms).expect("dim");
                match p.ty {
                    ParamType::I32 => KArg::I32(v as i32),
                    _ => KArg::I64(v as i64),
                }
            }
        })
        .collect()
}

fn input(g: &Graph, name: &str) -> ValueId {
    g.inputs().into_iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("no input {name}")).1
}

/// RoPE that `fuse-rope` folds into the attention: q and this step's k arrive unrotated (k in q's
/// dtype) and the rotated (for codes: quantized) keys are the second result.
const FUSED_ROPE: &str = ", rope(theta=10000, pairs=half, keys)";

/// The head layout of an attention case: query heads, KV heads (the group G = heads / kv), head size.
#[derive(Clone, Copy, Debug)]
struct Gqa {
    heads: usize,
    kv: usize,
    d: usize,
}

/// The layout most cases use: GQA 8:2 (G = 4), D 64.
const GQA_8_2: Gqa = Gqa { heads: 8, kv: 2, d: 64 };

/// One attention layer of `shape` (default [`GQA_8_2`]): q (`compute`) `[B,S,H·D]`, this step's k
/// and v `[B,S,KV,D]` and the cache `[B,P,KV,D]` (`cache`, up to `past_max` cached positions; both
/// token-major), score scale 1/√D. With `rope` ([`FUSED_ROPE`]) k is unrotated in `compute` and
/// the attention's second result (`%7`) is the `present.k.0` update.
fn attention_graph(compute: &str, cache: &str, codes: &str, rope: &str, shape: Gqa, seq_max: u64, past_max: u64) -> Graph {
    let Gqa { heads, kv, d } = shape;
    let (width, scale) = (heads * d, 1.0 / (d as f32).sqrt());
    let (k_dtype, results, present_k) = if rope.is_empty() { (cache, "%6", "%4") } else { (compute, "%6, %7", "%7") };
    let k_result = if rope.is_empty() { String::new() } else { format!(", {cache}[B,S,{kv},{d}]") };
    let text = format!(
        r#"graph "attn" {{
  sym B max=4
  sym S max={seq_max}
  sym P max={past_max}
  %0 = input "q" : {compute}[B,S,{width}]
  %1 = input "cache_len" : i64[B]
  %2 = input "past.k.0" : {cache}[B,P,{kv},{d}]
  %3 = input "past.v.0" : {cache}[B,P,{kv},{d}]
  %4 = input "k" : {k_dtype}[B,S,{kv},{d}]
  %5 = input "v" : {cache}[B,S,{kv},{d}]
  {results} = causal_attention %0, %4, %5, %2, %3, %1 {{heads={heads}, kv_heads={kv}, scale={scale:e}{codes}{rope}}} : {compute}[B,S,{width}]{k_result}
  return "o" = %6, "present.k.0" = {present_k}, "present.v.0" = %5
  state "past.k.0" append "present.k.0" axis=1
  state "past.v.0" append "present.v.0" axis=1
}}"#
    );
    let g = ir::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    ir::verify(&g, "attention").unwrap_or_else(|e| panic!("{e}"));
    g
}

/// `fuse-rope` over an NVFP4 cache: the attention rotates its queries only (the keys arrive as
/// codes and block scales computed before the append).
const FUSED_QUERY_ROPE: &str = ", rope(theta=10000, pairs=half)";

/// One NVFP4 attention layer (`--kv-cache nvfp4`): E2M1 codes `[B,·,2,64]` with E4M3 block
/// scales `[B,·,2,4]` in their own state slots, q f16, GQA 8:2, D 64, global scales 2⁻¹⁰ and 2⁻⁹.
/// With `rope` ([`FUSED_QUERY_ROPE`]) q arrives unrotated.
fn nvfp4_attention_graph(rope: &str, seq_max: u64, past_max: u64) -> Graph {
    let text = format!(
        r#"graph "attn" {{
  sym B max=4
  sym S max={seq_max}
  sym P max={past_max}
  %0 = input "q" : f16[B,S,512]
  %1 = input "cache_len" : i64[B]
  %2 = input "past.k.0" : f4e2m1[B,P,2,64]
  %3 = input "past.k_scale.0" : f8e4m3[B,P,2,4]
  %4 = input "past.v.0" : f4e2m1[B,P,2,64]
  %5 = input "past.v_scale.0" : f8e4m3[B,P,2,4]
  %6 = input "k" : f4e2m1[B,S,2,64]
  %7 = input "k_scale" : f8e4m3[B,S,2,4]
  %8 = input "v" : f4e2m1[B,S,2,64]
  %9 = input "v_scale" : f8e4m3[B,S,2,4]
  %10 = causal_attention %0, %6, %8, %2, %4, %1, %7, %9, %3, %5 {{heads=8, kv_heads=2, scale=0.125, codes(k_scale=0.0009765625,v_scale=0.001953125,via=f16,block=16){rope}}} : f16[B,S,512]
  return "o" = %10, "present.k.0" = %6, "present.k_scale.0" = %7, "present.v.0" = %8, "present.v_scale.0" = %9
  state "past.k.0" append "present.k.0" axis=1
  state "past.k_scale.0" append "present.k_scale.0" axis=1
  state "past.v.0" append "present.v.0" axis=1
  state "past.v_scale.0" append "present.v_scale.0" axis=1
}}"#
    );
    let g = ir::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    ir::verify(&g, "nvfp4 attention").unwrap_or_else(|e| panic!("{e}"));
    g
}

/// Runs one attention case on the interpreter and the GPU ([`run_attention`]); returns the largest
/// |difference| of o. The page table has room for `max(lens) + seq` positions (at least 24 pages
/// of 16), so the decode attention is split into as many ranges as those pages allow
/// ([`decoder::decode_splits`]). With `rope` ([`FUSED_ROPE`]) k is unrotated and the appended keys
/// and the second result must be the interpreter's rotated (quantized) keys.
fn attention_case(compute: DType, cache: DType, codes: &str, rope: &str, seq: usize, lens: &[i64]) -> f32 {
    gqa_attention_case(compute, cache, codes, rope, GQA_8_2, seq, lens)
}

/// [`attention_case`] with the head layout `shape`.
fn gqa_attention_case(compute: DType, cache: DType, codes: &str, rope: &str, shape: Gqa, seq: usize, lens: &[i64]) -> f32 {
    let past = (*lens.iter().max().expect("a sequence") as usize).max(300);
    let g = attention_graph(compute.name(), cache.name(), codes, rope, shape, seq.max(16) as u64, past as u64);
    let inputs = attention_inputs(compute, cache, rope, shape, seq, lens, past);
    run_attention(&g, &inputs, compute, seq, lens, past, None)
}

/// A decode step (S = 1, [`GQA_8_2`]) over a page table of 4 pages of 16: one 64-key tile per
/// sequence, so the unsplit decode attention runs (and appends the step's token itself).
/// `lens` must stay below 64.
fn unsplit_decode_case(compute: DType, cache: DType, codes: &str, rope: &str, lens: &[i64]) -> f32 {
    let past = 300;
    let g = attention_graph(compute.name(), cache.name(), codes, rope, GQA_8_2, 16, past as u64);
    let inputs = attention_inputs(compute, cache, rope, GQA_8_2, 1, lens, past);
    run_attention(&g, &inputs, compute, 1, lens, past, Some(4))
}

/// The inputs of an attention case: q, this step's k (unrotated in `compute` with `rope`) and v,
/// `past` cached positions per sequence, cache_len `lens`.
fn attention_inputs(
    compute: DType,
    cache: DType,
    rope: &str,
    shape: Gqa,
    seq: usize,
    lens: &[i64],
    past: usize,
) -> Vec<(&'static str, Tensor)> {
    let Gqa { heads: h, kv, d } = shape;
    let batch = lens.len();
    let scale = if cache.is_quantized_storage() { 200.0 } else { 1.0 };
    let mk = |dt: DType, shape: Vec<usize>, seed: u64, s: f32| {
        let n = shape.iter().product();
        Tensor::from_f32_as(dt, shape, common::noise(n, seed, s))
    };
    // Unrotated keys in q's dtype, small enough that k / k_scale stays inside E4M3's range.
    let k = if rope.is_empty() { mk(cache, vec![batch, seq, kv, d], 2, scale) } else { mk(compute, vec![batch, seq, kv, d], 2, 0.4) };
    vec![
        ("q", mk(compute, vec![batch, seq, h * d], 1, 1.0)),
        ("k", k),
        ("v", mk(cache, vec![batch, seq, kv, d], 3, scale)),
        ("past.k.0", mk(cache, vec![batch, past, kv, d], 4, scale)),
        ("past.v.0", mk(cache, vec![batch, past, kv, d], 5, scale)),
        ("cache_len", Tensor::i64(vec![batch], lens.to_vec())),
    ]
}

/// [`attention_case`] over an NVFP4 cache: random E2M1 codes (every code, both signs) and E4M3
/// block scales from 2⁻⁶ to 448, so elements span the format's range under the global scales.
/// With `rope` ([`FUSED_QUERY_ROPE`]) the queries arrive unrotated.
fn nvfp4_attention_case(rope: &str, seq: usize, lens: &[i64]) -> f32 {
    let (kv, d, h) = (2usize, 64usize, 8usize);
    let past = (*lens.iter().max().expect("a sequence") as usize).max(300);
    let batch = lens.len();
    let g = nvfp4_attention_graph(rope, 16, past as u64);
    let codes = |tokens: usize, seed: u64| {
        Tensor::from_f32_as(DType::F4E2M1, vec![batch, tokens, kv, d], common::noise(batch * tokens * kv * d, seed, 6.5))
    };
    let scales = |tokens: usize, seed: u64| {
        let n = batch * tokens * kv * d / 16;
        let v = common::noise(n, seed, 1.0).into_iter().map(|x| 2f32.powf(-6.0 + 7.5 * (x + 1.0))).collect();
        Tensor::from_f32_as(DType::F8E4M3, vec![batch, tokens, kv, d / 16], v)
    };
    let inputs = vec![
        ("q", Tensor::from_f32_as(DType::F16, vec![batch, seq, h * d], common::noise(batch * seq * h * d, 1, 0.05))),
        ("k", codes(seq, 2)),
        ("k_scale", scales(seq, 12)),
        ("v", codes(seq, 3)),
        ("v_scale", scales(seq, 13)),
        ("past.k.0", codes(past, 4)),
        ("past.k_scale.0", scales(past, 14)),
        ("past.v.0", codes(past, 5)),
        ("past.v_scale.0", scales(past, 15)),
        ("cache_len", Tensor::i64(vec![batch], lens.to_vec())),
    ];
    run_attention(&g, &inputs, DType::F16, seq, lens, past, None)
}

/// One state slot of an attention case: bytes of one token's head row and of one element, the
/// cache's bytes, the step's bytes (the interpreter's value of the slot's update: this step's
/// input, or `fuse-rope`'s rotated keys), and whether the attention computes the update.
struct Slot {
    row_bytes: usize,
    elem_bytes: usize,
    past: Vec<u8>,
    step: Vec<u8>,
    computed: bool,
}

/// Runs one attention graph (q `[B, S, 8·64]`, 2 KV heads, one pool per state slot) on the
/// interpreter and the GPU over shuffled pages; checks the appended rows of every pool (and each
/// update the attention computes, fuse-rope's rotated keys) and returns the largest
/// |GPU − interpreter| of o. The page table has `pages` pages per sequence, by default room for
/// `past + seq` positions and at least 24 pages.
fn run_attention(g: &Graph, inputs: &[(&str, Tensor)], compute: DType, seq: usize, lens: &[i64], past: usize, pages: Option<u32>) -> f32 {
    const PAGE: u32 = 16;
    // The head layout from the operands: past.k.0 [B, P, KV, D], q [B, S, H·D].
    let operand = |name: &str| &inputs.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("no input {name}")).1;
    let (kv, d) = (operand("past.k.0").shape[2], operand("past.k.0").shape[3]);
    let h = operand("q").shape[2] / d;
    let max_pages = pages.unwrap_or(((past + seq).div_ceil(PAGE as usize) as u32).max(24));
    let paged = PagedKv { page_size: PAGE, max_pages };
    let batch = lens.len();
    let results = interp::run(g, &NoWeights, inputs).expect("interpreter");
    let result = |name: &str| &results.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no output {name}")).1;
    let want = results[0].1.to_f32_vec();

    let program = lower_graph_paged(g, 90, LowerOptions::default(), Some(paged)).unwrap_or_else(|e| panic!("{e}"));
    let mut gpu = Gpu::new();
    let mp = max_pages as usize;
    // Pages: sequence b's j-th page is a shuffled id; unused pool bytes are 0xff (NaN in f16, bf16,
    // E4M3, and NaN block scales for NVFP4), so a read of anything but the live cache shows.
    let num_pages = batch * mp + 3;
    let mut ids: Vec<i32> = (0..num_pages as i32).collect();
    ids.reverse();
    ids.rotate_left(5);
    let table: Vec<i32> = ids[..batch * mp].to_vec();
    let slots: Vec<Slot> = g
        .state
        .iter()
        .map(|s| {
            let past_bytes = bytes::encode(&inputs.iter().find(|(n, _)| *n == s.input).expect("past").1);
            let update = g.outputs.iter().find(|(n, _)| *n == s.update).expect("update output").1;
            let step = result(&s.update);
            Slot {
                row_bytes: past_bytes.len() / (batch * past * kv),
                elem_bytes: (step.dtype.bits() / 8).max(1) as usize,
                past: past_bytes,
                step: bytes::encode(step),
                computed: !matches!(g.producer(update).op, ir::Op::Input { .. }),
            }
        })
        .collect();
    // Byte offset of head g of token t of sequence b in a token-major [B, T, KV, ·] tensor.
    let row = |rb: usize, b: usize, t: usize, g: usize, tokens: usize| ((b * tokens + t) * kv + g) * rb;
    let at = |rb: usize, b: usize, g: usize, t: usize| {
        let page = table[b * mp + t / PAGE as usize] as usize;
        (((page * kv + g) * PAGE as usize) + t % PAGE as usize) * rb
    };
    let mut pools: Vec<Vec<u8>> = slots.iter().map(|s| vec![0xffu8; num_pages * kv * PAGE as usize * s.row_bytes]).collect();
    for (slot, pool) in slots.iter().zip(&mut pools) {
        let rb = slot.row_bytes;
        for (b, &cached) in lens.iter().enumerate() {
            for g in 0..kv {
                for t in 0..cached as usize {
                    let (src, dst) = (row(rb, b, t, g, past), at(rb, b, g, t));
                    pool[dst..dst + rb].copy_from_slice(&slot.past[src..src + rb]);
                }
            }
        }
    }
    let table_bytes: Vec<u8> = table.iter().flat_map(|x| x.to_le_bytes()).collect();
    // The scratch's counters start at zero (as the runtime leaves them), its partials as NaN
    // (0xff bytes): every partial the merge reads must be written.
    let (scratch_bytes, counter_bytes) = program
        .launches()
        .flat_map(|(_, l)| &l.args)
        .filter_map(|a| if let Arg::SplitScratch { bytes, counters } = a { Some((*bytes as usize, *counters as usize)) } else { None })
        .max()
        .unwrap_or((0, 0));
    let mut scratch = vec![0xffu8; scratch_bytes];
    scratch[..counter_bytes].fill(0);
    let cache_mem =
        Cache { pools: pools.iter().map(|p| gpu.upload(p)).collect(), table: gpu.upload(&table_bytes), scratch: gpu.upload(&scratch) };
    // o's dtype: q's, or the codes of a fused output quantize (`out=…`).
    let o_dtype = g.ty(g.outputs[0].1).dtype;
    let o_bytes = batch * seq * h * d * o_dtype.bits().div_ceil(8) as usize;
    let mut buffers = HashMap::new();
    for (name, t) in inputs.iter().filter(|(n, _)| !n.starts_with("past.")) {
        buffers.insert(input(g, name), gpu.upload(&bytes::encode(t)));
    }
    let o = g.outputs[0].1;
    buffers.insert(o, gpu.upload(&vec![0u8; o_bytes]));
    // The updates the attention computes (fuse-rope's rotated keys) get buffers of their own.
    for (slot, s) in slots.iter().zip(&g.state) {
        if slot.computed {
            let update = g.outputs.iter().find(|(n, _)| *n == s.update).expect("update output").1;
            buffers.insert(update, gpu.upload(&vec![0u8; slot.step.len()]));
        }
    }
    let syms = vec![("B".to_string(), batch as u64), ("S".to_string(), seq as u64), ("P".to_string(), past as u64)];
    // The launches whose guard holds for this S: at prefill the append, then the attention; at
    // decode the split attention, merged by its last CTAs (when the pages allow a split), else
    // one attention, which appends the step's token itself — over an NVFP4 cache (four state
    // slots) the append stays a launch of its own.
    let launches: Vec<&Launch> =
        program.launches().map(|(_, l)| l).filter(|l| l.when.as_ref().is_none_or(|w| w.holds(&syms).unwrap())).collect();
    let templates: Vec<&str> = launches.iter().map(|l| l.kernel.template).collect();
    let split = seq == 1 && decoder::decode_splits(kv as u32, paged) > 1;
    // Prefill (S > 1) from f16 / bf16 runs on the tensor-core kernel (every cache these tests
    // use is read via q's dtype); f32 and decode on paged_attention.
    let attention = if seq > 1 && compute != DType::F32 { "paged_prefill" } else { "paged_attention" };
    let fused = seq == 1 && g.state.len() == 2;
    let expected: &[&str] = if fused { &[attention] } else { &["kv_append", attention] };
    assert_eq!(templates, expected);
    assert_eq!(launches.last().unwrap().kernel.source.contains("#define QF_APPEND 1"), fused);
    if split {
        let splits = decoder::decode_splits(kv as u32, paged) as usize;
        assert!(counter_bytes >= 4 * 4 * kv && scratch_bytes >= counter_bytes + 4 * h * splits * (d + 2) * 4);
    }
    for l in &launches {
        launch(&gpu, &l.kernel, grid(&l.kernel, &syms), &bind(l, &buffers, &cache_mem, &syms));
    }
    if split && !o_dtype.is_quantized_storage() {
        let first = gpu.download(buffers[&o], o_bytes);
        let merge = SplitMerge {
            heads: h as u32,
            head_dim: d as u32,
            splits: decoder::decode_splits(kv as u32, paged),
            out: compute,
            paged,
            cache_len: buffers[&input(g, "cache_len")],
        };
        check_split_merge(&mut gpu, &cache_mem, counter_bytes, &merge, batch, &first);
        // The same step again (the append, fused or not, rewrites the same rows): the counters were reset, so
        // the merge happens again and gives the same bytes.
        for l in &launches {
            launch(&gpu, &l.kernel, grid(&l.kernel, &syms), &bind(l, &buffers, &cache_mem, &syms));
        }
        assert_eq!(gpu.download(buffers[&o], o_bytes), first, "a second run of the step differs");
        assert!(gpu.download(cache_mem.scratch, counter_bytes).iter().all(|&c| c == 0), "counters reset again");
    }
    // The appended rows of every pool, and the updates the attention computes. f64 sincos differs
    // from the host's in the last f64 bits, which can flip a rotated key at a rounding boundary
    // (rare; as in rope_matches_the_interpreter): computed (rotated) keys may differ in at most 1
    // of 200 elements, everything else must match bit for bit.
    let (mut differ, mut compared) = (0usize, 0usize);
    for (i, ((slot, s), pool)) in slots.iter().zip(&g.state).zip(&pools).enumerate() {
        let (rb, eb) = (slot.row_bytes, slot.elem_bytes);
        let differing = |got: &[u8], want: &[u8]| got.chunks(eb).zip(want.chunks(eb)).filter(|(a, b)| a != b).count();
        if slot.computed {
            let update = g.outputs.iter().find(|(n, _)| *n == s.update).expect("update output").1;
            differ += differing(&gpu.download(buffers[&update], slot.step.len()), &slot.step);
            compared += slot.step.len() / eb;
        }
        let got = gpu.download(cache_mem.pools[i], pool.len());
        for (b, &cached) in lens.iter().enumerate() {
            for g in 0..kv {
                for t in 0..seq {
                    let (src, dst) = (row(rb, b, t, g, seq), at(rb, b, g, cached as usize + t));
                    if slot.computed {
                        differ += differing(&got[dst..dst + rb], &slot.step[src..src + rb]);
                        compared += rb / eb;
                    } else {
                        assert_eq!(got[dst..dst + rb], slot.step[src..src + rb], "pool {i} row b{b} g{g} s{t}");
                    }
                }
            }
        }
    }
    assert!(differ * 200 <= compared, "{differ} of {compared} rotated keys differ from the interpreter's");
    let got = bytes::decode(o_dtype, vec![batch, seq, h * d], &gpu.download(buffers[&o], o_bytes)).expect("decode").to_f32_vec();
    assert!(got.iter().all(|x| x.is_finite()), "non-finite outputs");
    if o_dtype.is_quantized_storage() {
        return codes_outside_window(g, inputs, &results[0].1, &got);
    }
    got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

/// For an attention with an output quantize: how many of the GPU's codes `got` lie outside the
/// op's code window around the interpreter's `want` (`interp::code_window`: what `qfuse check`
/// allows), printing how many differ from the reference at all.
fn codes_outside_window(g: &Graph, inputs: &[(&str, Tensor)], want: &Tensor, got: &[f32]) -> f32 {
    let node = g.nodes.values().find(|n| matches!(n.op, ir::Op::CausalAttention(_))).expect("the attention");
    let operand = |name: &str| std::sync::Arc::new(inputs.iter().find(|(n, _)| *n == name).expect("operand").1.clone());
    let args = ["q", "k", "v", "past.k.0", "past.v.0", "cache_len"].map(operand).to_vec();
    let (lo, hi) = interp::code_window(&node.op, args, want).expect("window").expect("an output quantize has a window");
    let (lo, hi, want) = (lo.to_f32_vec(), hi.to_f32_vec(), want.to_f32_vec());
    let outside = (0..got.len()).filter(|&i| !(lo[i] <= got[i] && got[i] <= hi[i])).count();
    let differ = (0..got.len()).filter(|&i| got[i] != want[i]).count();
    println!("  output codes: {differ} of {} differ from the interpreter's, {outside} outside the code window", got.len());
    outside as f32
}

/// `g` with its attention's context quantized to E4M3 codes under `scale` (`fuse-attention-output`).
fn with_output_quantize(mut g: Graph, scale: f32) -> Graph {
    let id = g.nodes.ids().find(|&id| matches!(g.nodes[id].op, ir::Op::CausalAttention(_))).expect("the attention");
    if let ir::Op::CausalAttention(a) = &mut g.nodes[id].op {
        a.output = Some(ir::OutputQuant { storage: DType::F8E4M3, scale });
    }
    let o = g.nodes[id].outputs[0];
    g.values[o].ty.dtype = DType::F8E4M3;
    ir::verify(&g, "output-quantized attention").unwrap_or_else(|e| panic!("{e}"));
    g
}

/// A split decode attention's merge: its shape and o's dtype.
struct SplitMerge {
    heads: u32,
    head_dim: u32,
    splits: u32,
    out: DType,
    paged: PagedKv,
    /// The device address of the step's `cache_len` [B] (i64).
    cache_len: u64,
}

/// After a split decode attention ran into `o` (`batch` sequences): every completion counter is
/// back at 0, and the two-launch form of the merge, split_combine over the partials the live split
/// CTAs left in the scratch (the idle ones write none: the scratch's other partials are NaN),
/// writes exactly the same bytes (same math, same order).
fn check_split_merge(gpu: &mut Gpu, cache: &Cache, counter_bytes: usize, m: &SplitMerge, batch: usize, o: &[u8]) {
    assert!(gpu.download(cache.scratch, counter_bytes).iter().all(|&c| c == 0), "the last CTAs reset every counter");
    let batch_dim = qfuse::plan::DimExpr::sym("B");
    let combine = decoder::split_combine_kernel(m.heads, m.head_dim, m.splits, m.out, m.paged, batch_dim).expect("split_combine");
    let again = gpu.upload(&vec![0u8; o.len()]);
    let syms = vec![("B".to_string(), batch as u64)];
    launch(
        gpu,
        &combine,
        grid(&combine, &syms),
        &[KArg::Ptr(cache.scratch + counter_bytes as u64), KArg::Ptr(m.cache_len), KArg::Ptr(again)],
    );
    assert_eq!(gpu.download(again, o.len()), o, "the last-CTA merge differs from split_combine");
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90) and NVRTC"]
fn paged_attention_matches_the_interpreter() {
    // Several 64- and 128-key tiles, a partial last page, an empty cache.
    let lens = [0i64, 37, 283];
    // (compute, cache, codes, tolerance: a few units of o's last place; o is an average of |v| ≤ 1
    // values, or ≤ 200 · 448 · scale for codes)
    let codes = ", codes(k_scale=0.0009765625,v_scale=0.001953125,via=f16)";
    let cases: [(DType, DType, &str, f32); 4] = [
        (DType::F32, DType::F32, "", 2e-6),
        (DType::F16, DType::F16, "", 2e-3),
        (DType::BF16, DType::BF16, "", 1.6e-2),
        (DType::F16, DType::F8E4M3, codes, 1e-3),
    ];
    for (compute, cache, codes, tol) in cases {
        for seq in [1usize, 7, 16] {
            let diff = attention_case(compute, cache, codes, "", seq, &lens);
            println!("paged attention {compute} over a {cache} cache, S = {seq}: max |GPU − interpreter| = {diff:e}");
            assert!(diff <= tol, "{compute}/{cache} S={seq}: {diff} > {tol}");
        }
    }
}

/// The tensor-core prefill (paged_prefill) against the interpreter at the model shapes of issue
/// 13: SmolLM2 (9 heads over 3 KV heads, G = 3, D = 64) and Llama-3-8B (32 over 8, G = 4, D = 128),
/// f16 over f16 and FP8 E4M3 caches, chunked prefill (cache_len > 0: 37 and 283 in one batch, so a
/// chunk's keys span cached pages and its own) for S = 1 (the decode path, for contrast) up to 300
/// (several 64-key tiles per CTA, partial CTAs of 21 / 16 tokens, a row block's last rows dead).
/// run_attention checks that S > 1 launches paged_prefill.
#[test]
#[ignore = "needs an NVIDIA GPU (sm_90) and NVRTC"]
fn tensor_core_prefill_matches_the_interpreter() {
    let lens = [37i64, 283];
    let codes = ", codes(k_scale=0.0009765625,v_scale=0.001953125,via=f16)";
    let shapes = [Gqa { heads: 9, kv: 3, d: 64 }, Gqa { heads: 32, kv: 8, d: 128 }];
    let cases: [(DType, DType, &str, f32); 3] =
        [(DType::F16, DType::F16, "", 2e-3), (DType::F16, DType::F8E4M3, codes, 1e-3), (DType::BF16, DType::BF16, "", 1.6e-2)];
    for shape in shapes {
        for (compute, cache, codes, tol) in cases {
            for seq in [1usize, 2, 17, 64, 65, 300] {
                let diff = gqa_attention_case(compute, cache, codes, "", shape, seq, &lens);
                println!("paged_prefill {shape:?} {compute} over a {cache} cache, S = {seq}: max |GPU − interpreter| = {diff:e}");
                assert!(
                    diff <= tol,
                    "paged_prefill {shape:?} {compute}/{cache} S={seq} cache_len {lens:?}: worst |GPU − interpreter| {diff} > {tol}"
                );
            }
        }
    }
    // Fused query RoPE on the tensor-core path (G = 3, D = 64).
    let diff = gqa_attention_case(DType::F16, DType::F16, "", FUSED_ROPE, shapes[0], 100, &lens);
    assert!(diff <= 2e-3, "paged_prefill fused rope {:?} f16/f16 S=100: worst |GPU − interpreter| {diff} > 2e-3", shapes[0]);
}

/// `fuse-rope`'s attention: paged_attention rotates the query rows as it loads them and kv_append
/// rotates (and for the FP8 cache quantizes) the keys; the pools and the second result must hold
/// the interpreter's keys bit for bit, o must match as closely as without the fused rope.
#[test]
#[ignore = "needs an NVIDIA GPU (sm_90) and NVRTC"]
fn fused_rope_attention_matches_the_interpreter() {
    let lens = [0i64, 37, 283];
    let codes = ", codes(k_scale=0.0009765625,v_scale=0.001953125,via=f16)";
    let cases: [(DType, DType, &str, f32); 4] = [
        (DType::F32, DType::F32, "", 2e-6),
        (DType::F16, DType::F16, "", 2e-3),
        (DType::BF16, DType::BF16, "", 1.6e-2),
        (DType::F16, DType::F8E4M3, codes, 1e-3),
    ];
    for (compute, cache, codes, tol) in cases {
        for seq in [1usize, 7, 16] {
            let diff = attention_case(compute, cache, codes, FUSED_ROPE, seq, &lens);
            println!("fused-rope attention {compute} over a {cache} cache, S = {seq}: max |GPU − interpreter| = {diff:e}");
            assert!(diff <= tol, "{compute}/{cache} S={seq}: {diff} > {tol}");
        }
    }
}

/// The decode attention's own append (no kv_append launch at S = 1) on the unsplit decode kernel
/// (4 pages of 16: one tile per sequence), with and without fuse-rope's rope(keys), over f16 and
/// FP8 caches; the split kernel's fused append runs in the cases above (S = 1). The appended rows,
/// the rotated keys and o are checked as everywhere (run_attention).
#[test]
#[ignore = "needs an NVIDIA GPU (sm_90) and NVRTC"]
fn fused_append_unsplit_decode_matches_the_interpreter() {
    let lens = [0i64, 37, 63];
    let codes = ", codes(k_scale=0.0009765625,v_scale=0.001953125,via=f16)";
    let cases: [(DType, DType, &str, f32); 2] = [(DType::F16, DType::F16, "", 2e-3), (DType::F16, DType::F8E4M3, codes, 1e-3)];
    for (compute, cache, codes, tol) in cases {
        for rope in ["", FUSED_ROPE] {
            let diff = unsplit_decode_case(compute, cache, codes, rope, &lens);
            println!("unsplit fused-append decode {compute} over a {cache} cache{rope}: max |GPU − interpreter| = {diff:e}");
            assert!(diff <= tol, "{compute}/{cache}{rope}: {diff} > {tol}");
        }
    }
}

/// The split decode attention with its last-CTA merge against the interpreter; inside
/// [`attention_case`], each case also checks that the merge equals split_combine's bit for bit
/// and that the same step run twice (the counters reset) gives the same bytes.
#[test]
#[ignore = "needs an NVIDIA GPU (sm_90) and NVRTC"]
fn split_kv_decode_matches_the_interpreter() {
    // Cache lengths 1, 17, 300 and 1000 alone (1000: 16 ranges of 64 keys, each one tile; 1 and
    // 17: one tile, the other ranges empty), and batches of 3 mixing them.
    let batches: [&[i64]; 6] = [&[1], &[17], &[300], &[1000], &[1000, 17, 300], &[1, 300, 1000]];
    let codes = ", codes(k_scale=0.0009765625,v_scale=0.001953125,via=f16)";
    let cases: [(DType, DType, &str, f32); 2] = [(DType::F16, DType::F16, "", 2e-3), (DType::F16, DType::F8E4M3, codes, 1e-3)];
    for (compute, cache, codes, tol) in cases {
        for lens in batches {
            let diff = attention_case(compute, cache, codes, "", 1, lens);
            println!("split-KV decode {compute} over a {cache} cache, cache_len {lens:?}: max |GPU − interpreter| = {diff:e}");
            assert!(diff <= tol, "{compute}/{cache} {lens:?}: {diff} > {tol}");
        }
    }
}

/// `fuse-attention-output`: the attention stores its context's E4M3 codes (`out=f8e4m3`) on every
/// path — the tensor-core prefill (S = 7, 16), the split decode with its last-CTA merge (S = 1 at
/// cache lengths 0, 37, 283 and 1000), and the unsplit decode — over f16 and FP8 caches; every code
/// must lie in the op's code window around the interpreter's (as `qfuse check` requires).
#[test]
#[ignore = "needs an NVIDIA GPU (sm_90) and NVRTC"]
fn output_quantized_attention_matches_the_interpreter() {
    let codes = ", codes(k_scale=0.0009765625,v_scale=0.001953125,via=f16)";
    // o averages values below 1 (f16 cache: |v| ≤ 1; FP8: codes ≤ 448 times v_scale 2⁻⁹): a scale of
    // 2⁻⁸ spreads it over E4M3's range without saturating.
    for (cache, codes, scale) in [(DType::F16, "", 2f32.powi(-8)), (DType::F8E4M3, codes, 2f32.powi(-8))] {
        for (seq, lens) in [(7usize, &[0i64, 37, 283][..]), (16, &[0, 37, 283]), (1, &[0, 37, 283]), (1, &[1000])] {
            let past = (*lens.iter().max().unwrap() as usize).max(300);
            let g = with_output_quantize(attention_graph("f16", cache.name(), codes, "", GQA_8_2, 16, past as u64), scale);
            let inputs = attention_inputs(DType::F16, cache, "", GQA_8_2, seq, lens, past);
            let outside = run_attention(&g, &inputs, DType::F16, seq, lens, past, None);
            assert_eq!(outside, 0.0, "{cache} S={seq} {lens:?}: codes outside the window");
        }
        let g = with_output_quantize(attention_graph("f16", cache.name(), codes, "", GQA_8_2, 16, 300), scale);
        let inputs = attention_inputs(DType::F16, cache, "", GQA_8_2, 1, &[0, 37, 63], 300);
        assert_eq!(run_attention(&g, &inputs, DType::F16, 1, &[0, 37, 63], 300, Some(4)), 0.0, "{cache} unsplit decode");
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90) and NVRTC"]
fn nvfp4_cache_attention_matches_the_interpreter() {
    // Prefill (S = 7, 16) and decode (S = 1, split over key ranges) at cache lengths 0, 37 and 283
    // in one batch, and decode alone at 1, 300 and 1000. Elements reach 6 · 448 · 2⁻⁹ ≈ 5.3; o is
    // their weighted mean, in f16 (last place 2⁻⁸ at 4): the interpreter's math up to f32 sums.
    // Each also with fuse-rope's query rotation (the keys stay as the codes and scales given).
    // The split cases check the last-CTA merge too (bit for bit split_combine's, counters reset,
    // a second run identical: run_attention).
    let tol = 8e-3;
    for rope in ["", FUSED_QUERY_ROPE] {
        for seq in [1usize, 7, 16] {
            let diff = nvfp4_attention_case(rope, seq, &[0, 37, 283]);
            println!("paged attention f16 over an NVFP4 cache{rope}, S = {seq}: max |GPU − interpreter| = {diff:e}");
            assert!(diff <= tol, "nvfp4{rope} S={seq}: {diff} > {tol}");
        }
        for lens in [&[1i64][..], &[300], &[1000, 17, 300]] {
            let diff = nvfp4_attention_case(rope, 1, lens);
            println!("split-KV decode over an NVFP4 cache{rope}, cache_len {lens:?}: max |GPU − interpreter| = {diff:e}");
            assert!(diff <= tol, "nvfp4{rope} {lens:?}: {diff} > {tol}");
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90) and NVRTC"]
fn rope_matches_the_interpreter() {
    for (dtype, extra) in [("f32", ""), ("f16", ""), ("bf16", ", llama3(factor=8, low=1, high=4, original=64)")] {
        for pairs in ["half", "adjacent"] {
            let text = common::rope_graph_text(dtype, pairs, extra, 256);
            let g = ir::parse(&text).unwrap();
            let dt = g.ty(input(&g, "x")).dtype;
            let x = Tensor::from_f32_as(dt, vec![3, 5, 256], common::noise(3 * 5 * 256, 11, 3.0));
            let len = Tensor::i64(vec![3], vec![0, 7, 100_000]);
            let want = interp::run(&g, &NoWeights, &[("x", x.clone()), ("cache_len", len.clone())]).unwrap()[0].1.to_f32_vec();
            let program = lower_graph_paged(&g, 90, LowerOptions::default(), None).unwrap();
            let mut gpu = Gpu::new();
            let mut buffers = HashMap::new();
            buffers.insert(input(&g, "x"), gpu.upload(&bytes::encode(&x)));
            buffers.insert(input(&g, "cache_len"), gpu.upload(&bytes::encode(&len)));
            let y = g.outputs[0].1;
            let n = 3 * 5 * 256 * (dt.bits() / 8) as usize;
            buffers.insert(y, gpu.upload(&vec![0u8; n]));
            let syms = vec![("B".to_string(), 3), ("S".to_string(), 5)];
            let l = program.launches().next().unwrap().1;
            launch(&gpu, &l.kernel, grid(&l.kernel, &syms), &bind(l, &buffers, &Cache::default(), &syms));
            let got = bytes::decode(dt, vec![3, 5, 256], &gpu.download(buffers[&y], n)).unwrap().to_f32_vec();
            let differ = got.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs() / b.abs().max(1e-3)).fold(0.0, f32::max);
            println!("rope {dtype} {pairs}{extra}: {differ} of {} values differ, worst relative {worst:e}", got.len());
            // f64 sincos differs from the host's in the last f64 bits: an f32 cos/sin can flip
            // only at an f32 rounding boundary (rare), moving the result by about one f32 ulp.
            assert!(differ * 200 <= got.len(), "{differ} values differ");
            let tol = match dt {
                DType::F32 => 1e-6,
                DType::F16 => 1e-3,
                _ => 8e-3,
            };
            assert!(worst <= tol, "worst relative difference {worst}");
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90) and NVRTC"]
fn the_sampler_chooses_what_choose_chooses() {
    let (rows, vocab, stride) = (4usize, 5000usize, 5003usize);
    let mut logits = common::noise(rows * stride, 21, 8.0);
    // Ties, signed zeros, NaN, -inf; a row of all NaN.
    for b in 0..rows {
        let r = &mut logits[b * stride..b * stride + vocab];
        r[10] = r[11];
        r[12] = 0.0;
        r[13] = -0.0;
        r[14] = f32::NAN;
        r[15] = f32::NEG_INFINITY;
    }
    for x in &mut logits[3 * stride..3 * stride + vocab] {
        *x = f32::NAN;
    }
    for dtype in [DType::F32, DType::BF16] {
        let t = Tensor::from_f32_as(dtype, vec![rows * stride], logits.clone());
        let host = t.to_f32_vec();
        let k = sample::sample_kernel(vocab as u64, dtype, 90).unwrap();
        let mut gpu = Gpu::new();
        let lp = gpu.upload(&bytes::encode(&t));
        let out = gpu.upload(&[0u8; 16]);
        let mut agree = 0;
        for (ti, temperature) in [0.0f32, 0.7, 1.0, 3.0].into_iter().enumerate() {
            for top_k in [0i32, 1, 40, 256, 1000] {
                for top_p in [1.0f32, 0.9, 0.3] {
                    let (seed, counter) = (1234u64 + ti as u64, 77u64);
                    let args = [
                        KArg::Ptr(lp),
                        KArg::Ptr(out),
                        KArg::I64(rows as i64),
                        KArg::I64(stride as i64),
                        KArg::F32(temperature),
                        KArg::I32(top_k),
                        KArg::F32(top_p),
                        KArg::I64(seed as i64),
                        KArg::I64(counter as i64),
                    ];
                    launch(&gpu, &k, [rows as u32, 1, 1], &args);
                    let got: Vec<i32> = gpu.download(out, 16).chunks(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect();
                    let s = Sampling { temperature, top_k: top_k as u32, top_p, seed };
                    for b in 0..rows {
                        let want = choose(&host[b * stride..b * stride + vocab], &s, counter + b as u64).map_or(-1, |i| i as i32);
                        assert_eq!(got[b], want, "{dtype} row {b} {s:?}");
                        agree += 1;
                    }
                }
            }
        }
        println!("sampler ({dtype} logits): {agree} choices identical to choose()");
    }
}

/// Every emitted token and the logits behind it, per step, of a greedy generation.
type Trace = Vec<Vec<(u64, u32, Vec<f32>)>>;

/// Greedy generation of three prompts of different lengths (they share decode batches) on a
/// generator over `engine`, with programmatic dependent launch `pdl`.
fn generate_trace(engine: &qfuse::runtime::Engine, pdl: bool) -> Trace {
    use qfuse::runtime::scheduler::{Request, SamplingParams};
    let mut gen = qfuse::runtime::Generator::new(engine, None).expect("generator");
    gen.context().set_programmatic_launch(pdl);
    assert_eq!(gen.context().programmatic_launch(), pdl, "the device has PDL (sm_90)");
    gen.keep_logits = true;
    for (id, len) in [(0u64, 5usize), (1, 40), (2, 77)] {
        let prompt = (0..len).map(|i| (17 + 131 * (i + id as usize)) as u32 % 20000).collect();
        let sampling = SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 };
        gen.submit(Request { id, prompt, max_new: 24, stop: vec![], sampling }).expect("submit");
    }
    let mut trace = Vec::new();
    while gen.pending() > 0 {
        let report = gen.step().expect("step");
        let logits = gen.last_logits();
        let step = report
            .emitted
            .iter()
            .map(|&(id, t)| (id, t, logits.iter().find(|(r, _)| *r == id).map(|(_, l)| l.clone()).unwrap_or_default()))
            .collect();
        trace.push(step);
    }
    trace
}

/// A whole decoder plan on the runtime (SmolLM2-135M: `$QFUSE_PDL_MODEL`, a GGUF or a Llama-family
/// folder such as the random-weight one of scripts/gpu-decoder-shapes.sh, else the default GGUF of
/// `.cache/models`; fp16 recipe and cache; its decode attention split and merged by its last
/// CTAs): with programmatic dependent launch on (the default on sm_90) and off, the same tokens
/// and bit-identical logits at every step.
#[test]
#[ignore = "needs an NVIDIA GPU (sm_90) and NVRTC"]
fn a_decoder_plan_gives_the_same_logits_with_and_without_pdl() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::compile_decoder_plan(&common::gpu_test_decoder(), "fp16", 4, dir.path());
    let engine = qfuse::runtime::Engine::load(&path).expect("load");
    assert!(engine.programmatic_launch(), "on by default on sm_90");
    assert_eq!(engine.meta().pdl_kernels.len(), engine.meta().kernels.len(), "every kernel may overlap its predecessor");
    let on = generate_trace(&engine, true);
    let off = generate_trace(&engine, false);
    let tokens: usize = on.iter().map(Vec::len).sum();
    assert_eq!(tokens, 3 * 24);
    for (step, (a, b)) in on.iter().zip(&off).enumerate() {
        assert_eq!(a.len(), b.len(), "step {step}");
        for ((id, t, la), (id_b, t_b, lb)) in a.iter().zip(b) {
            assert_eq!((id, t), (id_b, t_b), "step {step}: tokens differ");
            assert!(
                !la.is_empty() && la.iter().zip(lb).all(|(x, y)| x.to_bits() == y.to_bits()),
                "step {step}, request {id}: logits differ"
            );
        }
    }
    assert_eq!(on.len(), off.len());
    println!("{} steps, {tokens} tokens: identical with and without PDL", on.len());
}
