//! The skinny GEMM kernels (`templates/gemm_skinny.cu`) on a GPU against the reference
//! interpreter: every operand kind of tests/common/skinny.rs (f16, bf16, e4m3 per tensor and
//! rowwise, i8 with f16 and i8 outputs, the weight-only storages) at M = 1, 5 and 16, at a small
//! shape and at Llama-3-8B's 4096 × 4096. Needs an NVIDIA GPU with sm_90 and NVRTC, so it is
//! ignored by default (CI has no GPU):
//!
//! ```sh
//! cargo test --release --test skinny_gpu -- --ignored --test-threads=1 --nocapture
//! ```
//!
//! The segmented GEMMs of `qmatmul_split` (`merge-sibling-gemms`: Q/K/V as one GEMM) run the
//! same way, every kind split into SmolLM2's Q/K/V widths (tests/common/split.rs), through the
//! skinny kernel (M = 1, 5, 16) and the tiled GEMM (M = 17, 100), each result checked against
//! the interpreter. The GLU GEMMs of `qmatmul_glu` (`merge-gate-up`: a gated MLP's gate and up as
//! one GEMM, SwiGLU in its epilogue) likewise, every kind it merges at SmolLM2's MLP width
//! (tests/common/glu.rs).
//!
//! Without a driver or device every test fails (it never skips). The interpreter sums as the
//! launch's kernel records that it sums (`KernelDef::sums`: the tiled FP8 GEMM's promoted `wgmma`,
//! the f16 tensor cores; f32 for the skinny kernels), so the kernels differ from it only in the
//! order of their f32 sums (and the tiled GEMM's truncations inside its tensor cores, which the
//! interpreter reproduces): every element must be within 2 ulps of the output dtype at its value
//! plus 2 ulps at its row's RMS (a rounding flipped by the sum order in an intermediate step; one
//! code for an i8 output), and the output must be fully written (Y is poisoned with NaN first).

mod common;
#[path = "common/gpu.rs"]
mod gpu;

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use common::glu::{glu_graph, glu_kinds};
use common::skinny::{graph, kinds, Kind, X};
use common::split::{split_graph, widths};
use gpu::Gpu;
use qfuse::codegen::kernel::{Arg, KernelDef, LowerOptions};
use qfuse::codegen::lower::lower_graph;
use qfuse::compile::bytes;
use qfuse::interp::{self, Tensor};
use qfuse::ir::{DType, Dim, Graph, Op, ValueId};
use qfuse::plan::{ParamType, Scalar};

/// Launches `k` on `grid` blocks with `args`, one 8-byte slot per parameter (pointers, or an
/// i32 / f32 in the slot's low bytes), and waits.
fn launch(gpu: &Gpu, k: &KernelDef, grid: u32, args: &mut [u64]) {
    let mut params: Vec<*mut c_void> = args.iter_mut().map(|a| a as *mut u64 as *mut c_void).collect();
    gpu.launch(k, [grid, 1, 1], &mut params);
}

/// Random weights of the graph, in range for their dtype (codes over their whole grid, positive
/// scales that bring outputs to order 1, zero points inside the code range).
fn weights(g: &Graph, kind: &Kind, k: usize) -> HashMap<String, Arc<Tensor>> {
    let mut out = HashMap::new();
    for (i, id) in g.nodes.ids().enumerate() {
        let Op::Weight { name } = &g.nodes[id].op else { continue };
        let ty = g.ty(g.nodes[id].outputs[0]);
        let shape: Vec<usize> =
            ty.shape.iter().map(|d| if let Dim::Fixed(v) = d { *v as usize } else { panic!("weights are fixed") }).collect();
        let len = shape.iter().product();
        let v = common::lcg_values(len, 100 + i as u64, 1.0);
        let values: Vec<f32> = match name.as_str() {
            "L.weight" => v.iter().map(|x| x * code_range(kind.weight)).collect(),
            "L.weight_scale" => v.iter().map(|x| (1.0 + 0.5 * x) / (code_range(kind.weight) * (k as f32).sqrt())).collect(),
            "L.weight_zero" => v.iter().map(|x| (x * 4.0 + 8.0).round()).collect(),
            "L.b_scale" => v.iter().map(|x| (1.0 + 0.5 * x) / (code_range(kind.weight) * (k as f32).sqrt())).collect(),
            _ => v,
        };
        let unsigned = matches!(kind.weight, DType::U4 | DType::U8);
        let values = if name == "L.weight" && unsigned { values.iter().map(|x| x.abs()).collect() } else { values };
        out.insert(name.clone(), Arc::new(Tensor::from_f32_as(ty.dtype, shape, values)));
    }
    out
}

/// The magnitude of random values of `dtype` (codes near their range, floats of order 1).
fn code_range(dtype: DType) -> f32 {
    match dtype {
        DType::I8 => 127.0,
        DType::U8 => 255.0,
        DType::I4 => 7.0,
        DType::U4 => 15.0,
        DType::F8E4M3 => 4.0,
        DType::F4E2M1 => 6.0,
        _ => 1.0,
    }
}

/// One unit in the last place of `x` stored as `dtype` (1 for integers).
fn ulp(x: f32, dtype: DType) -> f32 {
    let (mant, min_exp) = match dtype {
        DType::I8 => return 1.0,
        DType::F16 => (10, -14),
        DType::BF16 => (7, -126),
        DType::F8E4M3 => (3, -6),
        _ => (23, -126),
    };
    let e = if x == 0.0 { min_exp } else { (x.abs().log2().floor() as i32).max(min_exp) };
    2f32.powi(e - mant)
}

/// Runs `kind` at `m` rows of an `n × k` weight on the interpreter and the GPU (the plan's launch
/// for this M, which must be the skinny kernel) and checks every element.
fn case(kind: &Kind, (n, k): (usize, usize), m: usize) {
    let g = graph(kind, (n as u64, k as u64), 16);
    let w = weights(&g, kind, k);
    let inputs = activations(kind, m, k);
    let want = interp::run(&g, &w, &inputs).expect("interpreter")[0].1.to_f32_vec();
    let got = run_on_gpu(kind, &g, &w, &inputs, m, "gemm_skinny");
    compare(kind, &got[0].1, &want, (m, n));
}

/// The graph's inputs at `m` rows: `x` (`m × k` values spanning `kind.act`'s codes) and, for
/// dynamic kinds, its per-row scales.
fn activations(kind: &Kind, m: usize, k: usize) -> Vec<(&'static str, Tensor)> {
    let act_scale = code_range(kind.act);
    let x = Tensor::from_f32_as(kind.act, vec![m, k], common::lcg_values(m * k, 7 + m as u64, act_scale));
    let mut inputs = vec![(X, x)];
    if kind.dynamic {
        let s = common::lcg_values(m, 9, 0.5).iter().map(|v| (1.0 + v) / act_scale).collect();
        inputs.push(("x_scale", Tensor::from_f32_as(DType::F32, vec![m, 1], s)));
    }
    inputs
}

/// The interpreter's outputs of `g` (one GEMM node) summing as the plan's launch for `m` rows
/// records that its kernel sums (`KernelDef::sums`; f32 where it records nothing).
fn reference(kind: &Kind, g: &Graph, w: &HashMap<String, Arc<Tensor>>, inputs: &[(&str, Tensor)], m: usize) -> interp::Outputs {
    let program = lower_graph(g, 90, LowerOptions::default()).unwrap_or_else(|e| panic!("{}: {e}", kind.name));
    let syms = [("M".to_string(), m as u64)];
    let sums =
        program.launches().map(|(_, l)| l).find(|l| l.when.as_ref().is_none_or(|c| c.holds(&syms).unwrap())).and_then(|l| l.kernel.sums);
    let opts =
        interp::RunOptions { accumulation: sums.map_or(interp::Accumulation::F32, qfuse::check::accumulation), ..Default::default() };
    interp::run_with(g, w, inputs, &opts, &mut |_, _| {}).expect("interpreter")
}

/// Lowers `g`, takes its one launch for `m` rows (whose template must be `template`), runs it on
/// the GPU over `w` and `inputs`, and returns every graph output as `(dtype, values)`.
fn run_on_gpu(
    kind: &Kind,
    g: &Graph,
    w: &HashMap<String, Arc<Tensor>>,
    inputs: &[(&str, Tensor)],
    m: usize,
    template: &str,
) -> Vec<(DType, Vec<f32>)> {
    let program = lower_graph(g, 90, LowerOptions::default()).unwrap_or_else(|e| panic!("{}: {e}", kind.name));
    let syms = [("M".to_string(), m as u64)];
    let launches: Vec<_> = program.launches().map(|(_, l)| l).filter(|l| l.when.as_ref().is_none_or(|c| c.holds(&syms).unwrap())).collect();
    assert_eq!(launches.len(), 1, "{}", kind.name);
    let l = launches[0];
    assert_eq!(l.kernel.template, template, "{}", kind.name);
    let mut gpu = Gpu::new();
    let mut ptrs: HashMap<ValueId, u64> = HashMap::new();
    for id in g.nodes.ids() {
        let v = g.nodes[id].outputs[0];
        match &g.nodes[id].op {
            Op::Weight { name } => {
                ptrs.insert(v, gpu.upload(&bytes::encode(&w[name])));
            }
            Op::Input { name } => {
                let t = &inputs.iter().find(|(i, _)| i == name).expect("input").1;
                ptrs.insert(v, gpu.upload(&bytes::encode(t)));
            }
            _ => {}
        }
    }
    let outputs: Vec<(ValueId, DType, Vec<usize>, usize)> = g
        .outputs
        .iter()
        .map(|&(_, y)| {
            let ty = g.ty(y);
            let n = ty.shape.last().and_then(|d| d.fixed()).expect("fixed N") as usize;
            (y, ty.dtype, vec![m, n], m * n * (ty.dtype.bits() / 8) as usize)
        })
        .collect();
    for (y, _, _, size) in &outputs {
        ptrs.insert(*y, gpu.upload(&vec![0xffu8; *size]));
    }
    let mut args: Vec<u64> = l
        .args
        .iter()
        .zip(&l.kernel.params)
        .map(|(a, p)| match a {
            Arg::Value(v) => ptrs[v],
            Arg::Scalar(Scalar::F32(x)) => u64::from(x.to_bits()),
            Arg::Scalar(Scalar::Dim(d)) => {
                assert!(matches!(p.ty, ParamType::I32 | ParamType::I64), "{:?}", p.ty);
                d.eval_with(&syms).expect("dim")
            }
            other => panic!("unexpected argument {other:?}"),
        })
        .collect();
    let grid = u32::try_from(l.kernel.grid[0].eval_with(&syms).expect("grid")).expect("fits");
    launch(&gpu, &l.kernel, grid, &mut args);
    outputs
        .into_iter()
        .map(|(y, out, shape, size)| (out, bytes::decode(out, shape, &gpu.download(ptrs[&y], size)).expect("decode").to_f32_vec()))
        .collect()
}

/// Every element within 2 ulps of the output dtype at its value plus 2 at its row's RMS (1 code
/// for i8 outputs).
fn compare(kind: &Kind, got: &[f32], want: &[f32], (m, n): (usize, usize)) {
    compare_as(kind, kind.output.as_ref().map_or(kind.wide, |o| o.storage), got, want, (m, n));
}

/// [`compare`] for a result stored as `out` (a segment's own output dtype); an FP8 output is
/// allowed one step of its grid.
fn compare_as(kind: &Kind, out: DType, got: &[f32], want: &[f32], (m, n): (usize, usize)) {
    let mut worst = 0f32;
    for r in 0..m {
        let row = &want[r * n..(r + 1) * n];
        let rms = (row.iter().map(|x| x * x).sum::<f32>() / n as f32).sqrt();
        for j in 0..n {
            let (g, w) = (got[r * n + j], row[j]);
            // Sum order can flip the rounding of an intermediate step (e.g. the cast before the
            // bias): 2 ulps at the element and 2 at the row's RMS.
            let tol = match out {
                DType::I8 => 1.0,
                // One E4M3 step (values are codes): a sum-order flip of the f16 before the quantize.
                DType::F8E4M3 => ulp(w, out).max(ulp(g, out)),
                _ => 2.0 * ulp(w, out) + 2.0 * ulp(rms, out),
            };
            assert!(g.is_finite() && (g - w).abs() <= tol, "{} M={m}: Y[{r},{j}] = {g}, interpreter {w} (tolerance {tol:e})", kind.name);
            worst = worst.max((g - w).abs() / tol.max(f32::MIN_POSITIVE));
        }
    }
    println!("{:16} M={m:2} N={n:5}: max |GPU − interpreter| / tolerance = {worst:.3}", kind.name);
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90) and NVRTC"]
fn skinny_kernels_match_the_interpreter() {
    for kind in kinds() {
        for m in [1, 5, 16] {
            case(&kind, (256, 1024), m);
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90) and NVRTC"]
fn skinny_kernels_match_the_interpreter_at_llama_shapes() {
    for kind in kinds().into_iter().filter(|k| ["f16", "e4m3", "w4a16_zp_g128", "w8a16_channel", "i8_dynamic"].contains(&k.name)) {
        for m in [1, 5, 16] {
            case(&kind, (4096, 4096), m);
        }
    }
}

/// SmolLM2's K = 576: 4-bit weight rows are 288 bytes, so the last 64-byte step of a row holds two
/// 16-byte chunks and lanes past the row must add exact zeros.
#[test]
#[ignore = "needs an NVIDIA GPU (sm_90) and NVRTC"]
fn skinny_kernels_match_the_interpreter_at_smollm2_shapes() {
    for kind in kinds() {
        for m in [1, 5, 16] {
            case(&kind, (1536, 576), m);
        }
    }
}

/// Runs the split graph of `kind` at `m` rows (M ≤ `m_max`) on the interpreter and on the GPU
/// through the plan's launch for this M (`template`) and checks every segment's result.
fn split_case(kind: &Kind, k: usize, m: usize, m_max: u64, template: &str) {
    let ns = widths(kind);
    let g = split_graph(kind, &ns, k as u64, m_max);
    let w = weights(&g, kind, k);
    let inputs = activations(kind, m, k);
    let want = reference(kind, &g, &w, &inputs, m);
    let got = run_on_gpu(kind, &g, &w, &inputs, m, template);
    assert_eq!(got.len(), ns.len());
    for ((out, got), (&n, (_, want))) in got.iter().zip(ns.iter().zip(&want)) {
        compare_as(kind, *out, got, &want.to_f32_vec(), (m, n as usize));
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90) and NVRTC"]
fn split_kernels_match_the_interpreter() {
    for kind in kinds() {
        for m in [1, 5, 16] {
            split_case(&kind, 512, m, 4096, "gemm_skinny");
        }
        let tiled = if kind.dequant.is_some() { "gemm_wonly" } else { "gemm" };
        for m in [17, 100] {
            split_case(&kind, 512, m, 4096, tiled);
        }
    }
}

/// Runs the GLU graph of `kind` (N = `n`) at `m` rows (M ≤ `m_max`) on the interpreter and on
/// the GPU through the plan's launch for this M (`template`) and checks the result.
fn glu_case(kind: &Kind, (n, k): (usize, usize), m: usize, m_max: u64, template: &str) {
    let g = glu_graph(kind, n as u64, k as u64, m_max);
    let w = weights(&g, kind, k);
    let inputs = activations(kind, m, k);
    let want = reference(kind, &g, &w, &inputs, m);
    let got = run_on_gpu(kind, &g, &w, &inputs, m, template);
    let [(out, got)] = got.as_slice() else { panic!("{}: one result", kind.name) };
    compare_as(kind, *out, got, &want[0].1.to_f32_vec(), (m, n));
}

#[test]
#[ignore = "needs an NVIDIA GPU (sm_90) and NVRTC"]
fn glu_kernels_match_the_interpreter() {
    for kind in glu_kinds() {
        for m in [1, 5, 16] {
            glu_case(&kind, (1536, 512), m, 4096, "gemm_skinny");
        }
        let tiled = if kind.dequant.is_some() { "gemm_wonly" } else { "gemm" };
        for m in [17, 100] {
            glu_case(&kind, (1536, 512), m, 4096, tiled);
        }
    }
}

/// `g` with its input `x` computed by an RMSNorm marked `prologue` (`fuse-norm-prologue`) of a
/// new input `h` (f16, or bf16 for bf16 activations) and the weight `N.gamma`, with a static
/// per-tensor quantize for E4M3 and I8 activations: the skinny kernel then normalises (and
/// quantizes) `h` itself, and the norm's own launch is guarded `M > 16`.
fn with_norm_prologue(g: &Graph, kind: &Kind) -> Graph {
    use qfuse::ir::{NormKind, QuantSpec, TensorType};
    let mut g = g.clone();
    let x = g.inputs().into_iter().find(|(n, _)| *n == X).expect("x").1;
    let ty = g.ty(x).clone();
    let wide = if kind.act == DType::BF16 { DType::BF16 } else { DType::F16 };
    let k = *ty.shape.last().expect("K");
    let h = g.add_node(Op::Input { name: "h".into() }, &[], vec![TensorType { dtype: wide, shape: ty.shape.clone() }], None);
    let gamma = g.add_node(Op::Weight { name: "N.gamma".into() }, &[], vec![TensorType::new(wide, [k])], None);
    let quantized = |storage, scale| Op::NormQuantize {
        kind: NormKind::RmsNorm,
        eps: 1e-5,
        via: wide,
        quant: QuantSpec::per_tensor(storage, scale),
        keep_normed: false,
        prologue: true,
    };
    let op = match kind.act {
        DType::F8E4M3 => quantized(DType::F8E4M3, 0.01),
        DType::I8 => quantized(DType::I8, 0.03),
        _ => Op::RmsNorm { eps: 1e-5, prologue: true },
    };
    let (h, gamma) = (g.nodes[h].outputs[0], g.nodes[gamma].outputs[0]);
    let norm = g.add_node(op, &[h, gamma], vec![ty], Some("N".into()));
    let y = g.nodes[norm].outputs[0];
    g.replace_all_uses(x, y);
    qfuse::ir::verify(&g, "prologue").unwrap_or_else(|e| panic!("{}: {e}", kind.name));
    g
}

/// The kinds whose activations a norm prologue produces: every kind without per-row scales, and
/// a static INT8 one.
fn prologue_kinds() -> Vec<Kind> {
    let i8_static =
        Kind { name: "i8_static", act: DType::I8, weight: DType::I8, dequant: None, dynamic: false, output: None, wide: DType::F16 };
    kinds().into_iter().filter(|k| !k.dynamic).chain([i8_static]).collect()
}

/// Runs `g` (a prologue graph of `kind`) at `m ≤ 16` rows on the interpreter and on the GPU (the
/// skinny kernel alone) and checks every result.
fn prologue_case(kind: &Kind, g: &Graph, k: usize, m: usize) {
    let w = weights(g, kind, k);
    let mut inputs = activations(kind, m, k);
    let wide = if kind.act == DType::BF16 { DType::BF16 } else { DType::F16 };
    inputs.push(("h", Tensor::from_f32_as(wide, vec![m, k], common::lcg_values(m * k, 11 + m as u64, 3.0))));
    let want = interp::run(g, &w, &inputs).expect("interpreter");
    let got = run_on_gpu(kind, g, &w, &inputs, m, "gemm_skinny");
    assert_eq!(got.len(), want.len());
    for ((out, got), (_, want)) in got.iter().zip(&want) {
        let n = want.shape.last().copied().expect("N");
        compare_as(kind, *out, got, &want.to_f32_vec(), (m, n));
    }
}

/// The skinny kernels with an RMSNorm prologue (`fuse-norm-prologue`) against the interpreter
/// running the norm and the GEMM as two ops: a `qmatmul` of every kind at SmolLM2's 576 → 1536 and
/// at 1024 → 256, its Q/K/V split and its gate+up GEMM, at M = 1, 5 and 16.
#[test]
#[ignore = "needs an NVIDIA GPU (sm_90) and NVRTC"]
fn prologue_kernels_match_the_interpreter() {
    for kind in prologue_kinds() {
        for (n, k) in [(1536, 576), (256, 1024)] {
            let g = with_norm_prologue(&graph(&kind, (n as u64, k as u64), 4096), &kind);
            for m in [1, 5, 16] {
                prologue_case(&kind, &g, k, m);
            }
        }
        let split = with_norm_prologue(&split_graph(&kind, &widths(&kind), 576, 4096), &kind);
        for m in [1, 16] {
            prologue_case(&kind, &split, 576, m);
        }
    }
    for kind in glu_kinds().into_iter().filter(|k| !k.dynamic) {
        let glu = with_norm_prologue(&glu_graph(&kind, 1536, 576, 4096), &kind);
        for m in [1, 16] {
            prologue_case(&kind, &glu, 576, m);
        }
    }
}
