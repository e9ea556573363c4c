//! qfuse-gemm-bench: builds, checks and times qfuse's GEMM kernels (`templates/gemm.cu`).
//!
//! Every kernel is made the way a plan makes it: a `qmatmul` node written as IR text, planned by
//! `codegen::ops::qmatmul::plan` (operands, epilogue, arguments), then rendered with the spec of
//! the variant under test (tiles, mainloop), i.e. the renderer that plans use.
//!
//! `qfuse-gemm-bench build DIR` (needs NVRTC, no GPU): renders every kernel this tool knows
//! (correctness kernels and performance variants), compiles each to `sm_90a` CUBIN and writes
//! `DIR/manifest.json` plus one `<name>.cubin` and `<name>.cu` per kernel.
//!
//! `qfuse-gemm-bench run DIR` (needs only `libcuda`): loads the bundle, fills A and B with random
//! E4M3 codes (NaN codes excluded; f16/bf16 operands hold the same values times a power of two),
//! the epilogue operands with random values, checks every kernel against a CPU reference with an
//! exact f64 accumulator and the interpreter's epilogue semantics (all rows at small shapes,
//! sampled rows at large ones; Y is poisoned first so unwritten elements show), then times each
//! with CUDA events (warm-up, median of the timed runs) and prints one JSON line per kernel and
//! shape. Exit status 1 if any check failed. An optional mainloop kind (`mma`, `wgmma`,
//! `wgmma-wg`, or `int8` for the INT8 kernels: random i8 operands, checked against exact integer
//! sums, timed in TOPS the same way) restricts the run to those kernels, and a kernel that has not finished after
//! [`HANG_SECS`] ends the process (status 2) rather than hanging.
//!
//! `wonly` (part of every run without a kind) is the weight-only family: the GEMV and GEMM of
//! `codegen::ops::wonly` as a MiniLM plan makes them (`wonly::plan`, `WonlyPlan::launches`; the
//! plan's `M ≤ 16` / `M > 16` guards pick the kernel for each M), f16 activations, W8A16 (i8 per
//! channel) and W4A16 (u4 groups of 128, u8 zero points), bias epilogue. Checked against the f64
//! sum of the weights dequantized as the kernel does (`(q − z)·s` in f32, rounded to f16), timed
//! in TFLOP/s and, for M ≤ 16, weight GB/s (codes, scales, zero points over the median time).
//!
//! `skinny` (part of every run without a kind; `run DIR skinny` alone) is the decode family: the
//! skinny kernels (`templates/gemm_skinny.cu`, `codegen::ops::skinny`) that plans launch for
//! M ≤ 16, as `qmatmul::plan` / `wonly::plan` make them (`plan.skinny`), at Llama-3-8B's linear
//! shapes (K → N: 4096 → 6144, 4096, 28672; 14336 → 4096; 4096 → 128256) for M ∈ {1, 8, 16}, per
//! operand format (f16, bf16, e4m3 per tensor, e4m3 rowwise, i8 dynamic, W8A16, W4A16 g128).
//! Each is checked against the exact reference (all rows), then timed (median of 30 launches,
//! CUDA events); the JSON line carries the weight bytes streamed and the achieved weight GB/s.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use cudarc::driver::{sys, CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use half::{bf16, f16};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use qfuse::codegen::gemm::{GemmSpec, Index, Mainloop, Operand};
use qfuse::codegen::kernel::{Arg, LowerCx};
use qfuse::codegen::ops::qmatmul;
use qfuse::codegen::ops::skinny::{self, SkinnySpec};
use qfuse::codegen::ops::wonly::{self, WonlySpec};
use qfuse::ir::{
    DType, Dim, EpilogueOp, EpilogueStep, Granularity, Graph, Op, QMatMul, QuantSpec, ScaleSource, TensorType, UnaryOp, ValueId, ZeroPoint,
};
use qfuse::plan::DimExpr;

const ARCH: &str = "sm_90a";
const WARMUP: usize = 10;
const REPS: usize = 30;
/// A launch that has not completed after this long is reported as a hang.
const HANG_SECS: u64 = 20;

/// The epilogues the bench builds (the qmatmuls of the MiniLM recipes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Epi {
    /// `[cast(f16)]` (FP8) or no step (f16/bf16): what torch's GEMMs compute.
    Plain,
    /// `[cast(f16), add(bias)]`.
    Bias,
    /// `[cast(f16), add(bias), gelu]`, output quantized to E4M3 with scale [`OUT_SCALE`].
    BiasGeluQuant,
    /// `[cast(f16), add(bias), gelu]` (f16 output).
    BiasGelu,
    /// `[cast(f16), add(bias)]`, output quantized to E4M3 with scale [`OUT_SCALE`].
    BiasQuant,
    /// `[cast(f16), add(bias), add(residual)]`.
    BiasResidual,
    /// Per-token `a_scale` and per-channel `b_scale`, then `[cast(f16), add(bias)]`.
    Dynamic,
}

const OUT_SCALE: f32 = 0.05;

/// The output scale of INT8 kernels' i8 output quantize (outputs of order 10 → codes of order 100).
const OUT_SCALE_I8: f32 = 0.1;

/// How a kernel was made: enough to rebuild its node's semantics and inputs at run time.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Case {
    operand: Operand,
    epi: Epi,
    /// Power-of-two scale of the operand values (f16/bf16 operands: E4M3 values · 2^-shift).
    shift: i32,
    /// The scale that brings outputs to order 10 at this K (dynamic cases: carried by the
    /// per-row and per-column scales, √alpha0 each on average).
    alpha0: f32,
    /// The node's payload.
    q: QMatMul,
    /// Dtype and broadcast of each `add` operand.
    adds: Vec<(DType, Index)>,
}

/// One compiled kernel in the bundle and the problems it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    /// Short variant label, e.g. `wgmma 128x256x128 s4 w8x1 g8 +bias`.
    label: String,
    /// `check`: correctness only; `bench`: checked, then timed.
    role: String,
    /// M values to run (N and K are the spec's).
    ms: Vec<u32>,
    case: Case,
    spec: GemmSpec,
    #[serde(flatten)]
    kernel: Compiled,
}

/// A compiled kernel of the bundle: what loading and launching it needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Compiled {
    name: String,
    /// Grid over the symbol `M`.
    grid: [DimExpr; 3],
    block: [u32; 3],
    smem_bytes: u32,
    /// CUBIN file name inside the bundle.
    cubin: String,
    /// The trailing `f32` arguments (the epilogue's per-launch constants: alpha, output scale and
    /// its reciprocal), passed after `M`.
    scalars: Vec<f32>,
}

impl Compiled {
    /// The kernel `k` launched with `args` (the plan's arguments, whose `f32` scalars it keeps).
    fn of(k: &qfuse::codegen::kernel::KernelDef, args: &[Arg]) -> Self {
        Compiled {
            name: k.name.clone(),
            grid: k.grid.clone(),
            block: k.block,
            smem_bytes: k.smem_bytes,
            cubin: format!("{}.cubin", k.name),
            scalars: args
                .iter()
                .filter_map(|a| match a {
                    Arg::Scalar(qfuse::plan::Scalar::F32(v)) => Some(*v),
                    _ => None,
                })
                .collect(),
        }
    }
}

/// A manifest entry that names a compiled kernel.
trait Kernel {
    fn label(&self) -> &str;
    fn compiled(&self) -> &Compiled;
}

impl Kernel for Entry {
    fn label(&self) -> &str {
        &self.label
    }

    fn compiled(&self) -> &Compiled {
        &self.kernel
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    arch: String,
    nvrtc: String,
    /// CUBIN of [`SPIN_SOURCE`].
    spin: String,
    entries: Vec<Entry>,
    /// The weight-only kernels (`run DIR wonly`).
    #[serde(default)]
    wonly: Vec<WonlyEntry>,
    /// The skinny (M ≤ 16) kernels (`run DIR skinny`).
    #[serde(default)]
    skinny: Vec<SkinnyEntry>,
}

/// A one-thread kernel that spins for `cycles` clock cycles. Launched before each timed batch,
/// it keeps the GPU busy while the host enqueues the batch, so the events time the kernels
/// back to back rather than the host's launch rate (which matters for the small MiniLM shapes).
const SPIN_SOURCE: &str = r#"extern "C" __global__ void qf_spin(long long cycles) {
    const long long t0 = clock64();
    while (clock64() - t0 < cycles) {
    }
}
"#;

/// About 5 ms at 2 GHz: far longer than enqueueing a timed batch.
const SPIN_CYCLES: i64 = 10_000_000;

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    let args: Vec<String> = std::env::args().collect();
    match args.get(1..).unwrap_or_default() {
        [cmd, dir] if cmd == "build" => build(Path::new(dir), false),
        [cmd, dir, v] if cmd == "build" && v == "--ptxas-verbose" => build(Path::new(dir), true),
        [cmd, dir] if cmd == "run" => run(Path::new(dir), None),
        [cmd, dir, kind] if cmd == "run" => run(Path::new(dir), Some(kind)),
        _ => bail!("usage: qfuse-gemm-bench build DIR [--ptxas-verbose] | run DIR [mma|wgmma|wgmma-wg|int8|wonly|skinny]"),
    }
}

// ---- kernels -----------------------------------------------------------------------------------

fn spec(n: u32, k: u32, tiles: (u32, u32, u32), stages: u32, warps: (u32, u32)) -> GemmSpec {
    GemmSpec { tile_m: tiles.0, tile_n: tiles.1, tile_k: tiles.2, stages, warps_m: warps.0, warps_n: warps.1, ..GemmSpec::for_shape(n, k) }
}

/// A wgmma spec (exact accumulation, one block per SM): `tile_m / 64` warpgroups along M.
fn wg(n: u32, k: u32, tile_m: u32, tile_n: u32, stages: u32) -> GemmSpec {
    GemmSpec { tile_m, tile_n, stages, warps_m: tile_m / 16, ctas_per_sm: 1, ..GemmSpec::wgmma_for_shape(n, k) }
}

/// The same tiles with f16 (or bf16) operands: 64-element (128-byte) k-tiles.
fn wide(s: GemmSpec, operand: Operand) -> GemmSpec {
    GemmSpec { operand, tile_k: 64, ..s }
}

fn fast(s: GemmSpec) -> GemmSpec {
    GemmSpec { fast_accum: true, ..s }
}

/// Copy completion through `cp.async.wait_group` + proxy fence instead of mbarriers.
fn wait_group(s: GemmSpec) -> GemmSpec {
    GemmSpec { mainloop: Mainloop::WgmmaWaitGroup, ..s }
}

/// Two blocks per SM: half the registers and shared memory each.
fn two_per_sm(s: GemmSpec) -> GemmSpec {
    GemmSpec { ctas_per_sm: 2, ..s }
}

fn label(s: &GemmSpec, epi: Epi) -> String {
    let kind = match s.mainloop {
        // INT8 kernels form their own kind (`run DIR int8`).
        _ if s.operand == Operand::I8 => "int8",
        Mainloop::MmaSync => "mma",
        Mainloop::Wgmma => "wgmma",
        Mainloop::WgmmaWaitGroup => "wgmma-wg",
    };
    let mut l = format!("{kind} {}x{}x{} s{} w{}x{} g{}", s.tile_m, s.tile_n, s.tile_k, s.stages, s.warps_m, s.warps_n, s.group_m);
    if matches!(s.operand, Operand::F16 | Operand::BF16) {
        l.push_str(&format!(" {:?}", s.operand).to_lowercase());
    }
    if s.ctas_per_sm > 1 {
        l.push_str(&format!(" x{}", s.ctas_per_sm));
    }
    if s.fast_accum {
        l.push_str(" fast");
    }
    l.push_str(match epi {
        Epi::Plain => "",
        Epi::Bias => " +bias",
        Epi::BiasGeluQuant => " +bias+gelu+q8",
        Epi::BiasGelu => " +bias+gelu",
        Epi::BiasQuant => " +bias+q8",
        Epi::BiasResidual => " +bias+res",
        Epi::Dynamic => " +dyn+bias",
    });
    l
}

/// Root mean square of the random E4M3 values (uniform over the 254 non-NaN codes).
fn operand_rms(operand: Operand) -> f64 {
    let lut = operand_table(operand);
    let v: Vec<f64> = lut.iter().filter(|x| x.is_finite()).map(|&x| f64::from(x).powi(2)).collect();
    (v.iter().sum::<f64>() / v.len() as f64).sqrt()
}

/// The IR text of the node for `operand`, `epi` and `N × K` with the scale `alpha` (f16/bf16:
/// 1, as lift-linear makes it), and the operand shift. Outputs of order 10.
fn case_ir(operand: Operand, epi: Epi, n: u32, k: u32) -> (String, i32, f32) {
    // alpha0 · rms(a) · rms(b) · √K ≈ 10.
    let alpha0 = 10.0 / (operand_rms(operand).powi(2) * f64::from(k).sqrt());
    let (ty, wide_t, shift, alpha) = match operand {
        Operand::E4M3 => ("f8e4m3", "f16", 0, alpha0 as f32),
        Operand::I8 => ("i8", "f16", 0, alpha0 as f32),
        // Operands E4M3 · 2^-shift each: alpha0 ≈ 2^-2·shift.
        Operand::F16 | Operand::BF16 => {
            let shift = (-alpha0.log2() / 2.0).round() as i32;
            (if operand == Operand::F16 { "f16" } else { "bf16" }, if operand == Operand::F16 { "f16" } else { "bf16" }, shift, 1.0)
        }
    };
    // 8-bit operands (FP8, INT8) accumulate in f32 and cast to f16, as the recipes make them.
    let fp8 = matches!(operand, Operand::E4M3 | Operand::I8);
    let (q_ty, q_scale) = if operand == Operand::I8 { ("i8", OUT_SCALE_I8) } else { ("f8e4m3", OUT_SCALE) };
    let (acc, cast) = if fp8 { ("f32", "cast(f16),") } else { (wide_t, "") };
    let alpha = if epi == Epi::Dynamic { 1.0 } else { alpha };
    let head = format!("transpose_b, alpha={alpha:?}");
    let attrs = match epi {
        Epi::Plain if fp8 => format!("{head}, acc=f32, epilogue=[cast(f16)]"),
        Epi::Plain => format!("{head}, acc={acc}"),
        Epi::Bias => format!("{head}, acc={acc}, epilogue=[{cast}add(%2,{wide_t})]"),
        Epi::BiasGeluQuant => {
            format!("{head}, acc={acc}, epilogue=[{cast}add(%2,{wide_t}),gelu({wide_t})], out={q_ty}, out_scale={q_scale:?}")
        }
        Epi::BiasGelu => format!("{head}, acc={acc}, epilogue=[{cast}add(%2,{wide_t}),gelu({wide_t})]"),
        Epi::BiasQuant => format!("{head}, acc={acc}, epilogue=[{cast}add(%2,{wide_t})], out={q_ty}, out_scale={q_scale:?}"),
        Epi::BiasResidual => format!("{head}, acc={acc}, epilogue=[{cast}add(%2,{wide_t}),add(%3,{wide_t})]"),
        Epi::Dynamic => format!("{head}, a_scale=%4, b_scale=%5, acc={acc}, epilogue=[{cast}add(%2,{wide_t})]"),
    };
    let out = if matches!(epi, Epi::BiasGeluQuant | Epi::BiasQuant) { q_ty } else { wide_t };
    let ir = format!(
        r#"graph "bench" {{
  sym M max=1048576
  %0 = input "a" : {ty}[M,{k}]
  %1 = weight @w : {ty}[{n},{k}]
  %2 = weight @bias : {wide_t}[{n}]
  %3 = input "residual" : {wide_t}[M,{n}]
  %4 = input "a_scale" : f32[M,1]
  %5 = weight @b_scale : f32[{n}]
  %6 = qmatmul %0, %1 {{{attrs}}} : {out}[M,{n}]
  return "y" = %6
}}
"#
    );
    (ir, shift, alpha0 as f32)
}

/// The kernel of `spec` (tiles, mainloop; N, K and operand type as the node's) for `epi`,
/// planned from IR like a plan's kernels.
fn make_kernel(role: &str, spec: GemmSpec, epi: Epi, ms: Vec<u32>) -> Result<(Entry, String)> {
    let (ir, shift, alpha0) = case_ir(spec.operand, epi, spec.n, spec.k);
    let g = qfuse::ir::parse(&ir).map_err(|e| anyhow::anyhow!("{e}\n{ir}"))?;
    qfuse::ir::verify(&g, "bench").map_err(|e| anyhow::anyhow!("{e}\n{ir}"))?;
    let node = g.nodes.ids().find(|&id| matches!(g.nodes[id].op, Op::QMatMul(_))).context("no qmatmul")?;
    let mut plan = qmatmul::plan(&LowerCx::new(&g, 90), node)?;
    plan.spec = spec;
    let k = plan.render()?;
    let Op::QMatMul(q) = g.nodes[node].op.clone() else { unreachable!() };
    let adds = g.nodes[node].inputs[2 + usize::from(q.a_scale) + usize::from(q.b_scale)..]
        .iter()
        .map(|&v| (g.ty(v).dtype, if g.ty(v).shape.len() == 1 { Index::PerColumn } else { Index::Full }))
        .collect();
    debug_assert!(plan.args.iter().all(|a| matches!(a, Arg::Value(_) | Arg::Scalar(_))));
    let entry = Entry {
        label: label(&spec, epi),
        role: role.into(),
        ms,
        case: Case { operand: spec.operand, epi, shift, alpha0, q, adds },
        spec,
        kernel: Compiled::of(&k, &plan.args),
    };
    Ok((entry, k.source))
}

/// Every kernel of the bundle: (role, spec, epilogue, M values).
fn plan() -> Vec<(&'static str, GemmSpec, Epi, Vec<u32>)> {
    let mut out = Vec::new();
    // Correctness: partial M tiles, M = 1, each mainloop, tile shape, tile_k, epilogue, operand.
    let small_ms = vec![256, 300, 129, 1];
    for (s, epi) in [
        (spec(256, 512, (128, 256, 128), 4, (2, 4)), Epi::Bias),
        (spec(256, 512, (256, 128, 128), 4, (4, 2)), Epi::Plain),
        (spec(256, 512, (128, 128, 128), 3, (2, 2)), Epi::Plain),
        (spec(256, 512, (128, 256, 64), 6, (2, 4)), Epi::Bias),
        (spec(256, 512, (64, 64, 64), 2, (2, 2)), Epi::BiasGeluQuant),
        (fast(wg(256, 512, 128, 256, 4)), Epi::Bias),
        (fast(wg(256, 512, 128, 256, 3)), Epi::Plain),
        (wg(256, 512, 128, 256, 4), Epi::Bias),
        (wg(256, 1152, 128, 256, 3), Epi::Plain),
        (wg(256, 512, 256, 128, 4), Epi::Bias),
        (fast(wg(256, 512, 256, 128, 4)), Epi::Plain),
        (two_per_sm(wg(256, 1024, 128, 128, 3)), Epi::Bias),
        (two_per_sm(fast(wg(256, 1024, 128, 128, 3))), Epi::Plain),
        (wg(256, 512, 64, 64, 5), Epi::Plain),
        (wg(256, 1024, 128, 128, 6), Epi::Bias),
        (wg(256, 1152, 128, 128, 3), Epi::Plain),
        (wait_group(fast(wg(256, 512, 128, 256, 4))), Epi::Bias),
        (wait_group(wg(256, 1024, 64, 128, 3)), Epi::Plain),
        (wait_group(wg(256, 1024, 128, 256, 4)), Epi::Bias),
        // Epilogues and operand types on the default specs; K not a multiple of the k-tile.
        (GemmSpec::wgmma_for_shape(256, 512), Epi::BiasGeluQuant),
        (wg(256, 512, 128, 256, 4), Epi::BiasGeluQuant),
        (GemmSpec::wgmma_for_shape(256, 512), Epi::BiasResidual),
        (wg(256, 512, 128, 128, 3), Epi::BiasResidual),
        (GemmSpec::wgmma_for_shape(256, 512), Epi::Dynamic),
        (wg(256, 512, 128, 256, 4), Epi::Dynamic),
        (GemmSpec::wgmma_for_shape(256, 400), Epi::Bias),
        (fast(wg(256, 208, 128, 256, 4)), Epi::Bias),
        (GemmSpec::wgmma_f16_for_shape(256, 512), Epi::Bias),
        (wide(wg(256, 512, 128, 256, 4), Operand::F16), Epi::BiasGeluQuant),
        (wide(two_per_sm(wg(256, 512, 128, 128, 3)), Operand::F16), Epi::BiasResidual),
        (GemmSpec::wgmma_f16_for_shape(256, 392), Epi::Plain),
        (wait_group(GemmSpec::wgmma_f16_for_shape(256, 512)), Epi::Bias),
        (GemmSpec::wgmma_bf16_for_shape(256, 512), Epi::BiasGeluQuant),
        (wide(wg(256, 512, 256, 128, 4), Operand::BF16), Epi::Bias),
    ] {
        out.push(("check", s, epi, small_ms.clone()));
    }
    // Performance variants, square shapes (FP8 against cuBLASLt, f16 against torch).
    for (n, m) in [(4096, 4096), (8192, 8192)] {
        for s in [
            spec(n, n, (128, 128, 128), 4, (2, 4)),
            wg(n, n, 128, 256, 4),
            wg(n, n, 256, 128, 4),
            two_per_sm(wg(n, n, 128, 128, 3)),
            wg(n, n, 128, 128, 6),
            fast(wg(n, n, 128, 256, 4)),
            wait_group(fast(wg(n, n, 128, 256, 4))),
            two_per_sm(fast(wg(n, n, 128, 128, 3))),
            fast(wg(n, n, 256, 128, 4)),
            wide(wg(n, n, 128, 256, 4), Operand::F16),
            wide(wg(n, n, 256, 128, 4), Operand::F16),
            wide(two_per_sm(wg(n, n, 128, 128, 3)), Operand::F16),
        ] {
            out.push(("bench", s, Epi::Plain, vec![m]));
        }
    }
    // MiniLM (all-MiniLM-L6-v2) linear layers at 4096 tokens and at 64·512: the plans' default
    // kernels with the recipes' epilogues, then tile variants.
    for (n, k) in [(384, 384), (1536, 384), (384, 1536)] {
        let epis: &[Epi] = if n == 1536 {
            &[Epi::Bias, Epi::BiasGeluQuant, Epi::BiasGelu, Epi::BiasQuant, Epi::Dynamic]
        } else {
            &[Epi::Bias, Epi::BiasResidual, Epi::Dynamic]
        };
        // The plans' choice depends on the largest M (32·128 or 64·512 rows here).
        let f16_epi = if n == 1536 { Epi::Bias } else { Epi::BiasResidual };
        for m in [4096, 32768] {
            for &epi in epis {
                out.push(("bench", GemmSpec::for_problem(Operand::E4M3, n, k, u64::from(m), false), epi, vec![m]));
            }
            // The plans' default, exact-accumulation (mma.sync) kernel.
            out.push(("bench", GemmSpec::for_problem(Operand::E4M3, n, k, u64::from(m), true), epis[0], vec![m]));
            out.push(("bench", GemmSpec::for_problem(Operand::F16, n, k, u64::from(m), false), f16_epi, vec![m]));
        }
        out.push(("bench", spec(n, k, (64, 128, 128), 4, (2, 2)), Epi::Bias, vec![4096]));
        let mut variants = vec![wg(n, k, 64, 64, 4), wg(n, k, 64, 128, 4), wg(n, k, 128, 128, 4), two_per_sm(wg(n, k, 128, 128, 3))];
        if n % 256 == 0 {
            variants.push(wg(n, k, 128, 256, 4));
        }
        for s in variants {
            out.push(("bench", s, Epi::Bias, vec![4096, 32768]));
            out.push(("bench", fast(s), Epi::Bias, vec![4096]));
            out.push(("bench", wide(s, Operand::F16), Epi::Bias, vec![4096, 32768]));
        }
    }
    int8_plan(&mut out, &small_ms);
    out
}

/// The same tiles with i8 operands (the `mma.sync` mainloop).
fn int8(s: GemmSpec) -> GemmSpec {
    GemmSpec { operand: Operand::I8, ..s }
}

/// The INT8 kernels (`run DIR int8`): correctness on small shapes (partial M tiles, M = 1, a
/// partial last k-tile, every epilogue including the i8 output quantize), then timing at the
/// square shapes against cuBLASLt's `torch._int_mm` and at MiniLM's shapes for 4096 tokens
/// (N = 1152: the fused QKV projection) with the plans' default tiles and variants.
fn int8_plan(out: &mut Vec<(&'static str, GemmSpec, Epi, Vec<u32>)>, small_ms: &[u32]) {
    for (s, epi) in [
        (GemmSpec::int8_for_shape(256, 512), Epi::Bias),
        (int8(spec(256, 512, (128, 128, 128), 4, (2, 2))), Epi::Plain),
        (int8(spec(256, 512, (64, 64, 64), 2, (2, 2))), Epi::BiasGeluQuant),
        (GemmSpec::for_problem(Operand::I8, 256, 400, 4096, true), Epi::Dynamic),
        (GemmSpec::for_problem(Operand::I8, 256, 512, 4096, true), Epi::BiasQuant),
        (GemmSpec::for_problem(Operand::I8, 256, 512, 4096, true), Epi::BiasResidual),
    ] {
        out.push(("check", s, epi, small_ms.to_vec()));
    }
    for n in [4096, 8192] {
        for s in [
            GemmSpec::int8_for_shape(n, n),
            int8(spec(n, n, (256, 128, 128), 4, (4, 2))),
            int8(spec(n, n, (128, 128, 128), 4, (2, 2))),
            int8(spec(n, n, (128, 256, 64), 6, (2, 4))),
        ] {
            out.push(("bench", s, Epi::Plain, vec![n]));
        }
    }
    for (n, k) in [(1152, 384), (384, 384), (1536, 384), (384, 1536)] {
        let default = GemmSpec::for_problem(Operand::I8, n, k, 4096, true);
        out.push(("bench", default, Epi::Plain, vec![4096]));
        out.push(("bench", default, Epi::Dynamic, vec![4096]));
        out.push(("bench", int8(GemmSpec::for_shape(n, k)), Epi::Plain, vec![4096]));
        out.push(("bench", int8(spec(n, k, (64, 64, 128), 4, (2, 2))), Epi::Plain, vec![4096]));
    }
}

// ---- weight-only kernels (`run DIR wonly`) -----------------------------------------------------

/// The weight formats of the weight-only kernels (f16 activations, f16 bias, f16 output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Weights {
    /// i8 codes, one f32 scale per output channel.
    W8A16,
    /// u4 codes (two per byte along K, low nibble first), an f32 scale and a u8 zero point per
    /// group of [`GROUP`] along K.
    W4A16,
}

/// The W4A16 group size along K.
const GROUP: usize = 128;

/// The row bound of the bench's graphs: the MiniLM plans' `B·S ≤ 64·512`, which sets the GEMM's tiles.
const WONLY_MAX_M: u64 = 32768;

/// M values only checked (not timed): the first GEMM row count, a partial row tile.
const WONLY_CHECK_MS: [u32; 2] = [17, 300];

impl Weights {
    fn spec(self) -> QuantSpec {
        let (storage, granularity, zero_point) = match self {
            Weights::W8A16 => (DType::I8, Granularity::PerChannel { axis: 0 }, None),
            Weights::W4A16 => (DType::U4, Granularity::Block { blocks: vec![(-1, GROUP as u64)] }, Some(ZeroPoint::Input)),
        };
        QuantSpec { storage, granularity, scale: ScaleSource::Input, zero_point }
    }

    /// Scales (and zero points) per output channel.
    fn groups(self, k: usize) -> usize {
        match self {
            Weights::W8A16 => 1,
            Weights::W4A16 => k / GROUP,
        }
    }

    /// Bytes of an `n × k` weight as the kernel reads them: codes, f32 scales, u8 zero points.
    fn bytes(self, n: usize, k: usize) -> usize {
        match self {
            Weights::W8A16 => n * k + n * 4,
            Weights::W4A16 => n * k / 2 + n * self.groups(k) * 5,
        }
    }
}

/// One compiled weight-only kernel (the GEMV or the GEMM of a plan) and the M values it runs:
/// those for which the plan's guard selects it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WonlyEntry {
    label: String,
    weights: Weights,
    n: u32,
    k: u32,
    /// M values checked and timed.
    ms: Vec<u32>,
    /// M values only checked.
    check_ms: Vec<u32>,
    /// The node's semantics for the checker (operand F16, epilogue [`Epi::Bias`]).
    case: Case,
    #[serde(flatten)]
    kernel: Compiled,
}

impl Kernel for WonlyEntry {
    fn label(&self) -> &str {
        &self.label
    }

    fn compiled(&self) -> &Compiled {
        &self.kernel
    }
}

/// The weight-only kernels: both formats at MiniLM's linear layers (the fused QKV projection
/// included) for M ∈ {1, 16, 4096}, and 4096 × 4096 at M = 16 (GEMV) and 4096 (GEMM).
fn wonly_plan() -> Vec<(Weights, (u32, u32), Vec<u32>)> {
    let shapes = [((1152, 384), vec![1, 16, 4096]), ((384, 384), vec![1, 16, 4096]), ((1536, 384), vec![1, 16, 4096])];
    let shapes = shapes.into_iter().chain([((384, 1536), vec![1, 16, 4096]), ((4096, 4096), vec![16, 4096])]);
    shapes.flat_map(|(nk, ms)| [Weights::W8A16, Weights::W4A16].map(|w| (w, nk, ms.clone()))).collect()
}

/// Adds a node with one `dtype[dims]` result to `g` and returns the result.
fn add_value(g: &mut Graph, op: Op, inputs: &[ValueId], dtype: DType, dims: Vec<Dim>) -> ValueId {
    let node = g.add_node(op, inputs, vec![TensorType::new(dtype, dims)], Some("L".into()));
    g.nodes[node].outputs[0]
}

/// `y = qmatmul(x f16[M, K], codes [N, K], scale, [zero point], bias f16[N])` with the bias
/// epilogue (`[cast(f16), add(bias)]`, f32 accumulator), `M ≤ WONLY_MAX_M`: a MiniLM linear layer
/// of the `w8a16` / `w4a16` recipes.
fn wonly_graph(weights: Weights, n: u64, k: u64) -> Result<Graph> {
    let mut g = Graph::new("bench-wonly");
    let m = Dim::Sym(g.add_symbol("M", WONLY_MAX_M));
    let spec = weights.spec();
    let weight = |g: &mut Graph, name: &str, dtype, dims| add_value(g, Op::Weight { name: format!("L.{name}") }, &[], dtype, dims);
    let x = add_value(&mut g, Op::Input { name: "x".into() }, &[], DType::F16, vec![m, Dim::Fixed(k)]);
    let codes = weight(&mut g, "weight", spec.storage, vec![Dim::Fixed(n), Dim::Fixed(k)]);
    let scale_shape: Vec<Dim> = spec.granularity.scale_shape(&g.ty(codes).shape).map_err(anyhow::Error::msg)?.into_iter().collect();
    let mut inputs = vec![x, codes, weight(&mut g, "weight_scale", DType::F32, scale_shape.clone())];
    if spec.zero_point.is_some() {
        inputs.push(weight(&mut g, "weight_zero", DType::U8, scale_shape));
    }
    inputs.push(weight(&mut g, "bias", DType::F16, vec![Dim::Fixed(n)]));
    let epilogue = vec![EpilogueStep { op: EpilogueOp::Cast, dtype: DType::F16 }, EpilogueStep { op: EpilogueOp::Add, dtype: DType::F16 }];
    let q = QMatMul::weight_only(spec, DType::F32, epilogue);
    let y = add_value(&mut g, Op::QMatMul(q), &inputs, DType::F16, vec![m, Dim::Fixed(n)]);
    g.outputs.push(("y".into(), y));
    qfuse::ir::verify(&g, "bench").map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(g)
}

/// The skinny kernel and GEMM of the node's plan (`wonly::plan`, `WonlyPlan::launches`), each
/// with the M values of `ms` its guard selects, and their sources.
fn make_wonly_kernels(weights: Weights, n: u32, k: u32, ms: &[u32]) -> Result<Vec<(WonlyEntry, String)>> {
    let g = wonly_graph(weights, n.into(), k.into())?;
    let node = g.nodes.ids().find(|&id| matches!(g.nodes[id].op, Op::QMatMul(_))).context("no qmatmul")?;
    let plan = wonly::plan(&LowerCx::new(&g, 90), node)?;
    let Op::QMatMul(q) = g.nodes[node].op.clone() else { unreachable!() };
    let case = Case { operand: Operand::F16, epi: Epi::Bias, shift: 0, alpha0: 1.0, q, adds: vec![(DType::F16, Index::PerColumn)] };
    let labels = plan
        .skinny
        .iter()
        .map(|s| skinny_label(&format!("{weights:?}").to_lowercase(), s))
        .chain(plan.gemm.iter().map(|s| wonly_label(weights, s)));
    plan.launches()?
        .into_iter()
        .zip(labels)
        .map(|(launch, label)| {
            let selects = |m: &&u32| launch.when.as_ref().is_none_or(|g| g.holds(&[("M".into(), u64::from(**m))]).unwrap_or(false));
            let entry = WonlyEntry {
                label: format!("wonly {label}"),
                weights,
                n,
                k,
                ms: ms.iter().filter(selects).copied().collect(),
                check_ms: WONLY_CHECK_MS.iter().filter(selects).copied().filter(|m| !ms.contains(m)).collect(),
                case: case.clone(),
                kernel: Compiled::of(&launch.kernel, &launch.args),
            };
            Ok((entry, launch.kernel.source))
        })
        .collect()
}

/// E.g. `w4a16 gemm 128x128 s3 w2x4 +bias`.
fn wonly_label(weights: Weights, s: &WonlySpec) -> String {
    let w = format!("{weights:?}").to_lowercase();
    format!("{w} gemm {}x{} s{} w{}x{} +bias", s.tile_m, s.tile_n, s.stages, s.warps_m, s.warps_n)
}

/// E.g. `w4a16 skinny 16x32 w16 u2` (rows × block columns, warps, unrolled steps).
fn skinny_label(format: &str, s: &SkinnySpec) -> String {
    format!("{format} skinny 16x{} w{} u{}", s.block_cols(), s.warps, s.unroll)
}

fn build(dir: &Path, ptxas_verbose: bool) -> Result<()> {
    let install = qfuse::codegen::nvrtc::locate()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut opts = Vec::new();
    if ptxas_verbose {
        opts.push("-Xptxas=-v".to_string());
    }
    let mut entries = plan()
        .into_par_iter()
        .map(|(role, spec, epi, ms)| -> Result<Entry> {
            let (entry, source) = make_kernel(role, spec, epi, ms).with_context(|| format!("{spec:?} {epi:?}"))?;
            compile_into(dir, &entry, &source, &opts)?;
            Ok(entry)
        })
        .collect::<Result<Vec<_>>>()?;
    let wonly = wonly_plan()
        .into_par_iter()
        .map(|(weights, (n, k), ms)| make_wonly_kernels(weights, n, k, &ms).with_context(|| format!("{weights:?} {n}x{k}")))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect::<Vec<_>>();
    wonly.par_iter().try_for_each(|(entry, source)| compile_into(dir, entry, source, &opts))?;
    let skinny = skinny_plan()
        .into_par_iter()
        .map(|(format, (n, k))| make_skinny_kernel(format, n, k).with_context(|| format!("{format:?} {n}x{k}")))
        .collect::<Result<Vec<_>>>()?;
    skinny.par_iter().try_for_each(|(entry, source)| compile_into(dir, entry, source, &opts))?;
    // A kernel planned twice (same source) runs its problems once.
    entries.sort_by(|a, b| a.kernel.name.cmp(&b.kernel.name).then(a.role.cmp(&b.role)));
    entries.dedup_by(|b, a| {
        let same = a.kernel.name == b.kernel.name && a.case.epi == b.case.epi;
        if same {
            let extra: Vec<u32> = b.ms.iter().copied().filter(|m| !a.ms.contains(m)).collect();
            a.ms.extend(extra);
            if b.role == "bench" {
                a.role = "bench".into();
            }
        }
        same
    });
    let spin = qfuse::codegen::nvrtc::compile_cubin("qf_spin", SPIN_SOURCE, ARCH, &[])?;
    std::fs::write(dir.join("qf_spin.cubin"), spin)?;
    let manifest = Manifest {
        arch: ARCH.into(),
        nvrtc: format!("{}.{}", install.version.0, install.version.1),
        spin: "qf_spin.cubin".into(),
        entries,
        wonly: wonly.into_iter().map(|(e, _)| e).collect(),
        skinny: skinny.into_iter().map(|(e, _)| e).collect(),
    };
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&manifest)?)?;
    eprintln!(
        "wrote {} + {} weight-only + {} skinny kernels to {}",
        manifest.entries.len(),
        manifest.wonly.len(),
        manifest.skinny.len(),
        dir.display()
    );
    Ok(())
}

/// Compiles `source` to the CUBIN `entry` names and writes both into `dir`.
fn compile_into(dir: &Path, entry: &impl Kernel, source: &str, opts: &[String]) -> Result<()> {
    let k = entry.compiled();
    let t = std::time::Instant::now();
    let cubin = qfuse::codegen::nvrtc::compile_cubin(&k.name, source, ARCH, opts)?;
    eprintln!("{:44} {:5.2} s  {}", entry.label(), t.elapsed().as_secs_f64(), k.name);
    std::fs::write(dir.join(&k.cubin), &cubin)?;
    std::fs::write(dir.join(format!("{}.cu", k.name)), source)?;
    Ok(())
}

// ---- skinny kernels (`run DIR skinny`) ---------------------------------------------------------

/// The operand formats of the skinny kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum SkinnyFormat {
    /// f16 × f16, plain epilogue.
    F16,
    /// bf16 × bf16, plain epilogue.
    BF16,
    /// e4m3 × e4m3, per-tensor alpha, f16 out.
    E4M3,
    /// e4m3 × e4m3 with per-row `a_scale`, per-channel `b_scale` and a bias.
    E4M3Rowwise,
    /// i8 × i8 with per-row `a_scale`, per-channel `b_scale` and a bias (SmoothQuant W8A8).
    I8,
    /// f16 × i8 codes, per-channel scales, bias.
    W8A16,
    /// f16 × u4 codes, scales and u8 zero points per group of 128, bias.
    W4A16,
}

impl SkinnyFormat {
    const ALL: [SkinnyFormat; 7] = [Self::F16, Self::BF16, Self::E4M3, Self::E4M3Rowwise, Self::I8, Self::W8A16, Self::W4A16];

    /// The weight-only format, if it is one.
    fn weights(self) -> Option<Weights> {
        match self {
            Self::W8A16 => Some(Weights::W8A16),
            Self::W4A16 => Some(Weights::W4A16),
            _ => None,
        }
    }

    /// The operand and epilogue of a `qmatmul` format ([`case_ir`]).
    fn operand_epi(self) -> (Operand, Epi) {
        match self {
            Self::F16 => (Operand::F16, Epi::Plain),
            Self::BF16 => (Operand::BF16, Epi::Plain),
            Self::E4M3 => (Operand::E4M3, Epi::Plain),
            Self::E4M3Rowwise => (Operand::E4M3, Epi::Dynamic),
            _ => (Operand::I8, Epi::Dynamic),
        }
    }
}

/// Llama-3-8B's linear layers (N, K): fused QKV, attention output, fused gate/up, down, LM head.
const LLAMA_SHAPES: [(u32, u32); 5] = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (128256, 4096)];

/// The decode row counts timed.
const SKINNY_MS: [u32; 3] = [1, 8, 16];

/// One compiled skinny kernel and the M values it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SkinnyEntry {
    label: String,
    format: SkinnyFormat,
    n: u32,
    k: u32,
    ms: Vec<u32>,
    /// Bytes of the weight the kernel streams (codes, scales, zero points).
    weight_bytes: u64,
    /// The node's semantics for the checker.
    case: Case,
    #[serde(flatten)]
    kernel: Compiled,
}

impl Kernel for SkinnyEntry {
    fn label(&self) -> &str {
        &self.label
    }

    fn compiled(&self) -> &Compiled {
        &self.kernel
    }
}

/// Every format at every Llama-3-8B shape.
fn skinny_plan() -> Vec<(SkinnyFormat, (u32, u32))> {
    SkinnyFormat::ALL.into_iter().flat_map(|f| LLAMA_SHAPES.map(|s| (f, s))).collect()
}

/// The skinny kernel of the plan of `format`'s node at `n × k` (`plan.skinny`, rendered with the
/// plan's epilogue; launched with the plan's arguments), and its source.
fn make_skinny_kernel(format: SkinnyFormat, n: u32, k: u32) -> Result<(SkinnyEntry, String)> {
    let (spec, epilogue, args, case) = match format.weights() {
        Some(weights) => {
            let g = wonly_graph(weights, n.into(), k.into())?;
            let node = g.nodes.ids().find(|&id| matches!(g.nodes[id].op, Op::QMatMul(_))).context("no qmatmul")?;
            let plan = wonly::plan(&LowerCx::new(&g, 90), node)?;
            let Op::QMatMul(q) = g.nodes[node].op.clone() else { unreachable!() };
            let case = Case { operand: Operand::F16, epi: Epi::Bias, shift: 0, alpha0: 1.0, q, adds: vec![(DType::F16, Index::PerColumn)] };
            (plan.skinny.context("the plan has no skinny kernel")?, plan.epilogue, plan.args, case)
        }
        None => {
            let (operand, epi) = format.operand_epi();
            let (ir, shift, alpha0) = case_ir(operand, epi, n, k);
            let g = qfuse::ir::parse(&ir).map_err(|e| anyhow::anyhow!("{e}\n{ir}"))?;
            let node = g.nodes.ids().find(|&id| matches!(g.nodes[id].op, Op::QMatMul(_))).context("no qmatmul")?;
            let plan = qmatmul::plan(&LowerCx::new(&g, 90), node)?;
            let Op::QMatMul(q) = g.nodes[node].op.clone() else { unreachable!() };
            let adds = g.nodes[node].inputs[2 + usize::from(q.a_scale) + usize::from(q.b_scale)..]
                .iter()
                .map(|&v| (g.ty(v).dtype, if g.ty(v).shape.len() == 1 { Index::PerColumn } else { Index::Full }))
                .collect();
            let case = Case { operand, epi, shift, alpha0, q, adds };
            (plan.skinny.context("the plan has no skinny kernel")?, plan.epilogue, plan.args, case)
        }
    };
    let k_def = skinny::render(&spec, &epilogue)?;
    let fmt = format!("{format:?}").to_lowercase();
    let entry = SkinnyEntry {
        label: format!("skinny {}", skinny_label(&fmt, &spec)),
        format,
        n,
        k,
        ms: SKINNY_MS.to_vec(),
        weight_bytes: spec.weight_bytes(),
        case,
        kernel: Compiled::of(&k_def, &args),
    };
    Ok((entry, k_def.source))
}

// ---- host data and reference ---------------------------------------------------------------------

use qfuse::check::inputs::SplitMix as Rng;

/// `len` values drawn by `draw`, filled in parallel, reproducible.
fn random_vec<T: Copy + Default + Send>(len: usize, seed: u64, draw: impl Fn(&mut Rng) -> T + Sync) -> Vec<T> {
    let mut v = vec![T::default(); len];
    v.par_chunks_mut(1 << 16).enumerate().for_each(|(i, chunk)| {
        let mut rng = Rng::new(seed ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        chunk.iter_mut().for_each(|x| *x = draw(&mut rng));
    });
    v
}

/// Random E4M3 codes, NaN codes (0x7f, 0xff) excluded; filled in parallel, reproducible.
fn random_e4m3(len: usize, seed: u64) -> Vec<u8> {
    random_vec(len, seed, |rng| loop {
        let b = (rng.next_u64() >> 56) as u8;
        if b & 0x7f != 0x7f {
            break b;
        }
    })
}

/// Random operand codes: E4M3 without NaN codes ([`random_e4m3`]) for float operands, every byte
/// for INT8.
fn random_codes(len: usize, seed: u64, operand: Operand) -> Vec<u8> {
    if operand != Operand::I8 {
        return random_e4m3(len, seed);
    }
    random_vec(len, seed, |rng| (rng.next_u64() >> 56) as u8)
}

/// The value of every operand code: i8 for INT8 (products ≤ 2^14 are exact in f32, their sums
/// exact in f64, so the reference is the exact integer sum), E4M3 otherwise.
fn operand_table(operand: Operand) -> [f32; 256] {
    if operand != Operand::I8 {
        return e4m3_table();
    }
    std::array::from_fn(|code| f32::from(code as u8 as i8))
}

/// E4M3 (`fn` variant: no infinities, NaN = S.1111.111) decoded exactly.
fn e4m3_table() -> [f32; 256] {
    let mut t = [0f32; 256];
    for (code, slot) in t.iter_mut().enumerate() {
        let (s, e, m) = ((code >> 7) & 1, (code >> 3) & 0xf, code & 7);
        let mag = if e == 0xf && m == 7 {
            f32::NAN
        } else if e == 0 {
            m as f32 / 8.0 * 2f32.powi(-6)
        } else {
            (1.0 + m as f32 / 8.0) * 2f32.powi(e as i32 - 7)
        };
        *slot = if s == 1 { -mag } else { mag };
    }
    t
}

/// Device bytes of operand codes: E4M3 as is; f16/bf16 the same values times 2^-shift (exact).
fn operand_bytes(codes: &[u8], operand: Operand, shift: i32, lut: &[f32; 256]) -> Vec<u8> {
    let s = 2f32.powi(-shift);
    match operand {
        Operand::E4M3 | Operand::I8 => codes.to_vec(),
        Operand::F16 => codes.par_iter().flat_map_iter(|&c| f16::from_f32(lut[c as usize] * s).to_le_bytes()).collect(),
        Operand::BF16 => codes.par_iter().flat_map_iter(|&c| bf16::from_f32(lut[c as usize] * s).to_le_bytes()).collect(),
    }
}

/// Exact reference for row `r`: (Σ a·b in f64, Σ |a·b|) per column, with operand values
/// `lut[code] · scale`. Products of E4M3 values (times powers of two) are exact in f32 and their
/// sums (≤ 2^31 terms spanning < 50 bits) exact in f64.
fn reference_row(a: &[u8], bf: &[f32], lut: &[f32; 256], scale: f32, r: usize, n: usize, k: usize) -> Vec<(f64, f64)> {
    let arow: Vec<f32> = a[r * k..(r + 1) * k].iter().map(|&c| lut[c as usize] * scale).collect();
    dot_columns(&arow, bf, n, k)
}

/// (Σ a·b in f64, Σ |a·b|) of `arow` with each of the `n` rows of `bf` (`[n, k]`), products
/// rounded to f32 (exact for the bench's operands).
fn dot_columns(arow: &[f32], bf: &[f32], n: usize, k: usize) -> Vec<(f64, f64)> {
    (0..n)
        .map(|j| {
            let brow = &bf[j * k..(j + 1) * k];
            let (mut s, mut abs) = (0f64, 0f64);
            for (x, y) in arow.iter().zip(brow) {
                let p = f64::from(x * y);
                s += p;
                abs += p.abs();
            }
            (s, abs)
        })
        .collect()
}

/// The interpreter's semantics of `q` (src/interp/ops/fused.rs) for one element, from the f32
/// accumulator: the value stored, as f32 (E4M3 outputs: the code's value).
fn expected(q: &QMatMul, acc: f32, a_s: f32, b_s: f32, adds: &[f32]) -> f32 {
    use qfuse::numerics::cast;
    let mut x = acc * q.alpha;
    if q.a_scale {
        x *= a_s;
    }
    if q.b_scale {
        x *= b_s;
    }
    x = cast(x, q.acc_dtype);
    let mut operands = adds.iter();
    for step in &q.epilogue {
        x = cast(
            match step.op {
                EpilogueOp::Cast => x,
                EpilogueOp::Add => x + operands.next().copied().unwrap_or(f32::NAN),
                EpilogueOp::Mul => x * operands.next().copied().unwrap_or(f32::NAN),
                EpilogueOp::Unary(UnaryOp::Gelu) => 0.5 * x * libm::erfcf(-x * std::f32::consts::FRAC_1_SQRT_2),
                EpilogueOp::Unary(u) => panic!("the bench has no reference for {u:?}"),
            },
            step.dtype,
        );
    }
    match &q.output {
        Some(spec) => {
            let qfuse::ir::ScaleSource::Literal(s) = spec.scale else { panic!("literal output scale") };
            cast(x / s, spec.storage)
        }
        None => x,
    }
}

/// One unit in the last place of `x` stored as `dtype`.
fn ulp(x: f32, dtype: DType) -> f64 {
    if dtype.is_int() {
        return 1.0;
    }
    let (mant, min_exp) = match dtype {
        DType::F16 => (10, -14),
        DType::BF16 => (7, -126),
        DType::F8E4M3 => (3, -6),
        _ => (23, -126),
    };
    let e = if x == 0.0 { min_exp } else { (f64::from(x.abs()).log2().floor() as i32).max(min_exp) };
    2f64.powi(e - mant)
}

#[derive(Debug, Default, Clone, Serialize)]
struct CheckStats {
    rows: usize,
    elements: usize,
    max_abs_err: f64,
    max_rel_err: f64,
    norm_rel_err: f64,
    norm_limit: f64,
    over_1ulp: usize,
    non_finite: usize,
    bad: usize,
    unwritten: usize,
    first_bad: Option<String>,
}

/// How a kernel accumulates, which sets the error it is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accum {
    /// Exact integer sums (INT8: s32 accumulators), converted to f32 once like the interpreter's.
    Exact,
    /// f32 throughout (mma.sync, which ptxas lowers to f16 HMMA + FADD on sm_90; f16/bf16 wgmma).
    F32,
    /// wgmma FP8 partial sums over 128-deep k-tiles, added in f32.
    Promoted,
    /// wgmma FP8 accumulation over all of K.
    Fast,
}

impl Accum {
    fn of(spec: &GemmSpec) -> Self {
        match (spec.mainloop, spec.fast_accum, spec.operand) {
            (_, _, Operand::I8) => Accum::Exact,
            (Mainloop::MmaSync, _, _) | (_, _, Operand::F16 | Operand::BF16) => Accum::F32,
            (_, false, _) => Accum::Promoted,
            (_, true, _) => Accum::Fast,
        }
    }

    /// (slack, normwise limit): the accumulator may be off by slack · Σ|a·b|; an element may be
    /// off by the reference's spread over that accumulator interval plus 2 ulps of the output,
    /// and ‖y − ref‖/‖ref‖ must stay under the limit (widened for coarse outputs). The tensor
    /// cores keep roughly 13 mantissa bits in FP8 partial sums (measured here: promoted 128-deep
    /// partials err up to ~2^-11.5 · Σ|a·b|).
    fn tolerance(self, out: DType) -> (f64, f64) {
        let (slack, norm) = match self {
            Accum::Exact => (0.0, 1e-3),
            Accum::F32 => (2f64.powi(-12), 1e-3),
            Accum::Promoted => (2f64.powi(-10), 1e-3),
            Accum::Fast => (2f64.powi(-8), 2e-2),
        };
        let floor = match out {
            DType::F8E4M3 | DType::I8 => 5e-2,
            DType::BF16 => 1e-2,
            _ => 0.0,
        };
        (slack, f64::max(norm, floor))
    }
}

/// The host side of a problem's epilogue operands.
struct HostInputs {
    a_scale: Vec<f32>,
    b_scale: Vec<f32>,
    /// Per add operand: its values (per column `[N]` or full `[M, N]`), as f32.
    adds: Vec<(Index, Vec<f32>)>,
}

/// Compares `y` (full [M,N] output bytes) with the reference on `rows` under `accum`'s
/// tolerance (see [`Accum::tolerance`]); non-finite values must match exactly.
fn check(y: &[u8], refs: &[(usize, Vec<(f64, f64)>)], case: &Case, inputs: &HostInputs, n: usize, accum: Accum) -> CheckStats {
    let out = qfuse_out_dtype(&case.q);
    let (slack, norm_limit) = accum.tolerance(out);
    let bytes = out.bits() as usize / 8;
    let get = |i: usize| -> (f32, bool) {
        let b = &y[i * bytes..(i + 1) * bytes];
        match out {
            DType::F8E4M3 => (e4m3_table()[b[0] as usize], b[0] == 0xff),
            // Every byte is a valid i8 code: the 0xff poison (-1) is caught by the comparison only.
            DType::I8 => (f32::from(b[0] as i8), false),
            DType::F16 => (f16::from_le_bytes([b[0], b[1]]).to_f32(), b == [0xff, 0xff]),
            DType::BF16 => (bf16::from_le_bytes([b[0], b[1]]).to_f32(), b == [0xff, 0xff]),
            _ => (f32::from_le_bytes([b[0], b[1], b[2], b[3]]), b == [0xff; 4]),
        }
    };
    let total = y.len() / bytes;
    let unwritten = (0..total).into_par_iter().filter(|&i| get(i).1).count();
    let mut st = CheckStats { unwritten, rows: refs.len(), norm_limit, ..Default::default() };
    let (mut num, mut den) = (0f64, 0f64);
    for (r, row) in refs {
        for (j, &(acc, abs)) in row.iter().enumerate() {
            let adds: Vec<f32> = inputs.adds.iter().map(|(ix, v)| if *ix == Index::Full { v[r * n + j] } else { v[j] }).collect();
            let a_s = inputs.a_scale.get(*r).copied().unwrap_or(1.0);
            let b_s = inputs.b_scale.get(j).copied().unwrap_or(1.0);
            let at = |acc: f64| expected(&case.q, acc as f32, a_s, b_s, &adds);
            let want = at(acc);
            let delta = slack * abs;
            let (lo, hi) =
                [at(acc - delta), want, at(acc + delta)].iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
            let (w, g) = (f64::from(want), f64::from(get(r * n + j).0));
            st.elements += 1;
            if !w.is_finite() || !g.is_finite() {
                st.non_finite += 1;
                if !(g == w || (g.is_nan() && w.is_nan()) || (g.is_finite() && f64::from(lo) <= g && g <= f64::from(hi))) {
                    st.bad += 1;
                    st.first_bad.get_or_insert_with(|| format!("Y[{r},{j}] = {g} want {w}"));
                }
                continue;
            }
            let err = (g - w).abs();
            num += err * err;
            den += w * w;
            st.max_abs_err = st.max_abs_err.max(err);
            st.max_rel_err = st.max_rel_err.max(err / w.abs().max(1e-3));
            if err > ulp(want, out) {
                st.over_1ulp += 1;
            }
            // Integer codes: one step (a rounding tie decided differently after GeLU); floats: 2 ulps.
            let tol = if out.is_int() { 1.0 } else { 2.0 * ulp(want, out) };
            if g < f64::from(lo) - tol || g > f64::from(hi) + tol {
                st.bad += 1;
                st.first_bad.get_or_insert_with(|| format!("Y[{r},{j}] = {g} want {w} in [{lo}, {hi}] ± {tol:.3e}"));
            }
        }
    }
    st.norm_rel_err = (num / den.max(f64::MIN_POSITIVE)).sqrt();
    st
}

/// The dtype a qmatmul stores.
fn qfuse_out_dtype(q: &QMatMul) -> DType {
    match &q.output {
        Some(s) => s.storage,
        None => q.epilogue.last().map_or(q.acc_dtype, |s| s.dtype),
    }
}

fn passed(st: &CheckStats) -> bool {
    st.bad == 0 && st.unwritten == 0 && st.norm_rel_err < st.norm_limit && st.elements > 0
}

/// Rows to check: all for small M, else boundaries and tile edges plus random ones.
fn sample_rows(m: usize, seed: u64) -> Vec<usize> {
    if m <= 512 {
        return (0..m).collect();
    }
    let mut rows = vec![0, 1, 63, 64, 127, 128, 129, 255, 256, m / 2, m - 129, m - 2, m - 1];
    let mut rng = Rng::new(seed);
    rows.extend((0..19).map(|_| (rng.next_u64() % m as u64) as usize));
    rows.sort_unstable();
    rows.dedup();
    rows
}

// ---- device ------------------------------------------------------------------------------------

/// Random A and B for one (M, N, K) and operand type, with the exact reference of sampled rows.
struct Operands {
    a: CudaSlice<u8>,
    b: CudaSlice<u8>,
    refs: Vec<(usize, Vec<(f64, f64)>)>,
}

/// Everything a problem's launches read and write, as device bytes.
struct Problem {
    m: usize,
    n: usize,
    host: HostInputs,
    /// Epilogue inputs in parameter order.
    inputs: Vec<CudaSlice<u8>>,
    y: CudaSlice<u8>,
}

fn make_operands(stream: &Arc<CudaStream>, m: usize, n: usize, k: usize, operand: Operand, shift: i32, seed: u64) -> Result<Operands> {
    let lut = operand_table(operand);
    let a = random_codes(m * k, seed, operand);
    let b = random_codes(n * k, seed ^ 0xB, operand);
    let scale = 2f32.powi(-shift);
    let bf: Vec<f32> = b.par_iter().map(|&c| lut[c as usize] * scale).collect();
    let refs = sample_rows(m, seed ^ 0xD).into_par_iter().map(|r| (r, reference_row(&a, &bf, &lut, scale, r, n, k))).collect();
    Ok(Operands {
        a: stream.clone_htod(&operand_bytes(&a, operand, shift, &lut))?,
        b: stream.clone_htod(&operand_bytes(&b, operand, shift, &lut))?,
        refs,
    })
}

fn wide_bytes(v: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F16 => v.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect(),
        DType::BF16 => v.iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes()).collect(),
        _ => v.iter().flat_map(|&x| x.to_le_bytes()).collect(),
    }
}

fn make_problem(stream: &Arc<CudaStream>, case: &Case, m: usize, n: usize, seed: u64) -> Result<Problem> {
    let mut rng = Rng::new(seed ^ 0xC);
    let mut inputs = Vec::new();
    let mut host = HostInputs { a_scale: vec![], b_scale: vec![], adds: vec![] };
    // Dynamic scales around √alpha0 each (the node's alpha is 1): outputs of order 10.
    let s = case.alpha0.sqrt();
    if case.q.a_scale {
        host.a_scale = (0..m).map(|_| s * rng.uniform(0.5, 2.0)).collect();
        inputs.push(stream.clone_htod(&wide_bytes(&host.a_scale, DType::F32))?);
    }
    if case.q.b_scale {
        host.b_scale = (0..n).map(|_| s * rng.uniform(0.5, 2.0)).collect();
        inputs.push(stream.clone_htod(&wide_bytes(&host.b_scale, DType::F32))?);
    }
    for &(dtype, index) in &case.adds {
        let len = if index == Index::Full { m * n } else { n };
        // Values of the operand's dtype (rounded), so the host and the device read the same.
        let v: Vec<f32> = (0..len).map(|_| qfuse::numerics::cast(rng.uniform(-4.0, 4.0), dtype)).collect();
        inputs.push(stream.clone_htod(&wide_bytes(&v, dtype))?);
        host.adds.push((index, v));
    }
    let out_bytes = qfuse_out_dtype(&case.q).bits() as usize / 8;
    Ok(Problem { m, n, host, inputs, y: stream.alloc_zeros::<u8>(m * n * out_bytes)? })
}

/// A manifest entry with its loaded function.
struct Loaded<E> {
    entry: E,
    func: CudaFunction,
}

fn load<E: Kernel>(ctx: &Arc<CudaContext>, dir: &Path, entry: E) -> Result<Loaded<E>> {
    let k = entry.compiled();
    let cubin = std::fs::read(dir.join(&k.cubin))?;
    let module = ctx.load_module(cudarc::nvrtc::Ptx::from_binary(cubin))?;
    let func = module.load_function(&k.name)?;
    func.set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, i32::try_from(k.smem_bytes)?)?;
    Ok(Loaded { entry, func })
}

/// Launches `l` with arguments `A, B, <inputs>, Y, M, <scalars>`.
fn launch<E: Kernel>(stream: &Arc<CudaStream>, l: &Loaded<E>, ops: &Operands, p: &mut Problem) -> Result<()> {
    let e = l.entry.compiled();
    let m = u32::try_from(p.m)?;
    let values = [("M".to_string(), u64::from(m))];
    let grid = [e.grid[0].eval_with(&values), e.grid[1].eval_with(&values), e.grid[2].eval_with(&values)];
    let grid: Vec<u32> =
        grid.into_iter().map(|g| g.map_err(anyhow::Error::msg).and_then(|g| Ok(u32::try_from(g)?))).collect::<Result<_>>()?;
    if grid.contains(&0) {
        return Ok(());
    }
    let cfg = LaunchConfig {
        grid_dim: (grid[0], grid[1], grid[2]),
        block_dim: (e.block[0], e.block[1], e.block[2]),
        shared_mem_bytes: e.smem_bytes,
    };
    let m_arg = m as i32;
    let mut b = stream.launch_builder(&l.func);
    b.arg(&ops.a).arg(&ops.b);
    for inp in &p.inputs {
        b.arg(inp);
    }
    b.arg(&mut p.y).arg(&m_arg);
    for x in &e.scalars {
        b.arg(x);
    }
    unsafe { b.launch(cfg) }?;
    Ok(())
}

/// Waits for the work queued on `stream`, polling so that a deadlocked kernel ends the process.
fn finish(ctx: &Arc<CudaContext>, stream: &Arc<CudaStream>, what: &str) -> Result<()> {
    let done = ctx.new_event(None)?;
    done.record(stream)?;
    let start = std::time::Instant::now();
    while !done.try_is_complete().with_context(|| format!("{what} failed"))? {
        if start.elapsed().as_secs() >= HANG_SECS {
            eprintln!("HANG: {what} has not finished after {HANG_SECS} s");
            println!("{}", serde_json::json!({"kind": "hang", "what": what}));
            std::process::exit(2);
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    Ok(())
}

/// Poisons Y, runs `l` once and checks Y against the reference of `case` under `accum`.
fn run_check<E: Kernel>(
    (ctx, stream): (&Arc<CudaContext>, &Arc<CudaStream>),
    l: &Loaded<E>,
    (case, accum): (&Case, Accum),
    ops: &Operands,
    p: &mut Problem,
) -> Result<CheckStats> {
    let len = p.y.len();
    stream.memcpy_htod(&vec![0xffu8; len], &mut p.y)?;
    launch(stream, l, ops, p)?;
    finish(ctx, stream, &format!("{} at M={}", l.entry.label(), p.m))?;
    let y = stream.clone_dtoh(&p.y)?;
    Ok(check(&y, &ops.refs, case, &p.host, p.n, accum))
}

fn time_kernel<E: Kernel>(
    ctx: &Arc<CudaContext>,
    stream: &Arc<CudaStream>,
    spin: &CudaFunction,
    l: &Loaded<E>,
    ops: &Operands,
    p: &mut Problem,
) -> Result<(f64, f64)> {
    for _ in 0..WARMUP {
        launch(stream, l, ops, p)?;
    }
    let one = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1, 1, 1), shared_mem_bytes: 0 };
    let mut b = stream.launch_builder(spin);
    b.arg(&SPIN_CYCLES);
    unsafe { b.launch(one) }?;
    let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
    let events = (0..REPS).map(|_| Ok((ctx.new_event(flags)?, ctx.new_event(flags)?))).collect::<Result<Vec<_>>>()?;
    for (e0, e1) in &events {
        e0.record(stream)?;
        launch(stream, l, ops, p)?;
        e1.record(stream)?;
    }
    finish(ctx, stream, &format!("timing {} at M={}", l.entry.label(), p.m))?;
    let mut ms = events.iter().map(|(e0, e1)| Ok(f64::from(e0.elapsed_ms(e1)?))).collect::<Result<Vec<_>>>()?;
    ms.sort_by(f64::total_cmp);
    Ok((ms[ms.len() / 2], ms[0]))
}

/// A weight-only layer's host data: device bytes of codes, scales, zero points and bias, and the
/// dequantized weight `[N, K]` as the kernel computes it (`(q − z)·s` in f32, rounded to f16).
struct WonlyWeights {
    codes: Vec<u8>,
    scale: Vec<f32>,
    zero: Vec<u8>,
    bias: Vec<f32>,
    w: Vec<f32>,
}

/// Random codes, scales around the value that brings outputs to order 10 for activations
/// uniform in (-1, 1), random u8 zero points in 0..=15 (W4A16), random f16 bias.
fn wonly_weights(weights: Weights, n: usize, k: usize, seed: u64) -> WonlyWeights {
    let groups = weights.groups(k);
    // rms of (q − z): i8 uniform ≈ 73.9; u4 − u4 ≈ √(2 · 21.25).
    let rms_q = if weights == Weights::W8A16 { 73.9 } else { 6.52 };
    let base = 10.0 / ((1.0 / 3f32).sqrt() * rms_q * (k as f32).sqrt());
    let q: Vec<u8> = random_vec(n * k, seed, |rng| (rng.next_u64() >> 56) as u8 >> if weights == Weights::W8A16 { 0 } else { 4 });
    let scale = random_vec(n * groups, seed ^ 0x5, |rng| base * rng.uniform(0.5, 1.5));
    let zero = if weights == Weights::W8A16 { vec![] } else { random_vec(n * groups, seed ^ 0x7, |rng| (rng.next_u64() >> 60) as u8) };
    let bias = random_vec(n, seed ^ 0x9, |rng| qfuse::numerics::cast(rng.uniform(-4.0, 4.0), DType::F16));
    let w = (0..n * k)
        .into_par_iter()
        .map(|i| {
            let g = i / k * groups + i % k / (k / groups);
            let (code, z) = match weights {
                Weights::W8A16 => (f32::from(q[i] as i8), 0.0),
                Weights::W4A16 => (f32::from(q[i]), f32::from(zero[g])),
            };
            f16::from_f32((code - z) * scale[g]).to_f32()
        })
        .collect();
    let codes = match weights {
        Weights::W8A16 => q,
        Weights::W4A16 => q.par_chunks(2).map(|p| p[0] | (p[1] << 4)).collect(),
    };
    WonlyWeights { codes, scale, zero, bias, w }
}

/// Random f16 activations `[M, K]` uniform in (-1, 1), as f32, with the exact reference of
/// sampled rows against `w`, uploaded with the codes as the kernel's A and B.
fn wonly_operands(stream: &Arc<CudaStream>, w: &WonlyWeights, (m, n, k): (usize, usize, usize), seed: u64) -> Result<Operands> {
    let a = random_vec(m * k, seed, |rng| qfuse::numerics::cast(rng.uniform(-1.0, 1.0), DType::F16));
    let refs = sample_rows(m, seed ^ 0xD).into_par_iter().map(|r| (r, dot_columns(&a[r * k..(r + 1) * k], &w.w, n, k))).collect();
    Ok(Operands { a: stream.clone_htod(&wide_bytes(&a, DType::F16))?, b: stream.clone_htod(&w.codes)?, refs })
}

/// The epilogue and dequantization operands of one problem (`SCALE, [ZP], bias`) and its Y.
fn wonly_problem(stream: &Arc<CudaStream>, w: &WonlyWeights, m: usize, n: usize) -> Result<Problem> {
    let mut inputs = vec![stream.clone_htod(&wide_bytes(&w.scale, DType::F32))?];
    if !w.zero.is_empty() {
        inputs.push(stream.clone_htod(&w.zero)?);
    }
    inputs.push(stream.clone_htod(&wide_bytes(&w.bias, DType::F16))?);
    let host = HostInputs { a_scale: vec![], b_scale: vec![], adds: vec![(Index::PerColumn, w.bias.clone())] };
    Ok(Problem { m, n, host, inputs, y: stream.alloc_zeros::<u8>(m * n * 2)? })
}

/// Checks every weight-only kernel at its M values (relative L2 error ≤ 1e-3 and the f32
/// accumulation bounds of [`Accum::F32`]) and times it at the benchmark ones: one JSON line each,
/// with TFLOP/s and, for M ≤ 16, the weight bandwidth. Returns the number of failed checks.
fn run_wonly(cs: (&Arc<CudaContext>, &Arc<CudaStream>), spin: &CudaFunction, dir: &Path, entries: Vec<WonlyEntry>) -> Result<usize> {
    let (ctx, stream) = cs;
    let mut failures = 0;
    for entry in entries {
        let l = load(ctx, dir, entry)?;
        let e = &l.entry;
        let (n, k) = (e.n as usize, e.k as usize);
        let w = wonly_weights(e.weights, n, k, (n * 1009 + k) as u64);
        for (m, timed) in e.ms.iter().map(|&m| (m, true)).chain(e.check_ms.iter().map(|&m| (m, false))) {
            let m = m as usize;
            let ops = wonly_operands(stream, &w, (m, n, k), (m * 1_000_003 + n * 1009 + k) as u64)?;
            let mut p = wonly_problem(stream, &w, m, n)?;
            let st = run_check(cs, &l, (&e.case, Accum::F32), &ops, &mut p)?;
            let ok = passed(&st);
            failures += usize::from(!ok);
            let mut line = serde_json::json!({
                "kind": "qfuse", "m": m, "n": n, "k": k, "variant": e.label, "operand": format!("{:?}", e.weights),
                "epilogue": "Bias", "path": e.label.split(' ').nth(2), "kernel": e.kernel.name,
                "check": if ok { "ok" } else { "FAIL" }, "stats": st, "mainloop": "MmaSync", "fast_accum": false,
                "weight_bytes": e.weights.bytes(n, k),
            });
            if timed {
                let (med, min) = time_kernel(ctx, stream, spin, &l, &ops, &mut p)?;
                line["median_ms"] = med.into();
                line["min_ms"] = min.into();
                line["tflops"] = (2.0 * (m * n * k) as f64 / (med * 1e-3) / 1e12).into();
                if m <= 16 {
                    line["weight_gbps"] = (e.weights.bytes(n, k) as f64 / (med * 1e-3) / 1e9).into();
                }
            }
            println!("{line}");
            if !ok {
                eprintln!("CHECK FAILED: {} at {m}x{n}x{k}: {st:?}", e.label);
            }
        }
    }
    Ok(failures)
}

/// Y of `p` poisoned, `l` launched once, Y checked against the first `p.m` rows of `ops.refs`.
fn check_rows<E: Kernel>(
    (ctx, stream): (&Arc<CudaContext>, &Arc<CudaStream>),
    l: &Loaded<E>,
    (case, accum): (&Case, Accum),
    ops: &Operands,
    p: &mut Problem,
) -> Result<CheckStats> {
    let len = p.y.len();
    stream.memcpy_htod(&vec![0xffu8; len], &mut p.y)?;
    launch(stream, l, ops, p)?;
    finish(ctx, stream, &format!("{} at M={}", l.entry.label(), p.m))?;
    let y = stream.clone_dtoh(&p.y)?;
    Ok(check(&y, &ops.refs[..p.m], case, &p.host, p.n, accum))
}

/// The epilogue inputs and Y of `m` rows for `e`'s format (the operands are made once for 16 rows;
/// M rows use a prefix of them).
fn skinny_problem(stream: &Arc<CudaStream>, e: &SkinnyEntry, w: Option<&WonlyWeights>, m: usize) -> Result<Problem> {
    let (n, seed) = (e.n as usize, u64::from(e.n) * 1009 + u64::from(e.k));
    match w {
        Some(w) => wonly_problem(stream, w, m, n),
        None => make_problem(stream, &e.case, m, n, seed ^ 0xE),
    }
}

/// Checks (all rows) and times every skinny kernel at M ∈ {1, 8, 16}: one JSON line each, with
/// the weight bytes streamed and the achieved weight GB/s. Returns the number of failed checks.
fn run_skinny(cs: (&Arc<CudaContext>, &Arc<CudaStream>), spin: &CudaFunction, dir: &Path, entries: Vec<SkinnyEntry>) -> Result<usize> {
    let (ctx, stream) = cs;
    let mut failures = 0;
    for entry in entries {
        let l = load(ctx, dir, entry)?;
        let e = &l.entry;
        let (n, k) = (e.n as usize, e.k as usize);
        let seed = (n * 1009 + k) as u64;
        let w = e.format.weights().map(|weights| wonly_weights(weights, n, k, seed));
        let ops = match &w {
            Some(w) => wonly_operands(stream, w, (16, n, k), seed ^ 0xA)?,
            None => make_operands(stream, 16, n, k, e.case.operand, e.case.shift, seed ^ 0xA)?,
        };
        let accum = if e.case.operand == Operand::I8 { Accum::Exact } else { Accum::F32 };
        for &m in &e.ms {
            let m = m as usize;
            let mut p = skinny_problem(stream, e, w.as_ref(), m)?;
            let st = check_rows(cs, &l, (&e.case, accum), &ops, &mut p)?;
            let ok = passed(&st);
            failures += usize::from(!ok);
            let (med, min) = time_kernel(ctx, stream, spin, &l, &ops, &mut p)?;
            let line = serde_json::json!({
                "kind": "qfuse-skinny", "format": format!("{:?}", e.format), "m": m, "n": n, "k": k, "variant": e.label,
                "kernel": e.kernel.name, "check": if ok { "ok" } else { "FAIL" }, "stats": st,
                "weight_bytes": e.weight_bytes, "median_ms": med, "min_ms": min,
                "weight_gbps": e.weight_bytes as f64 / (med * 1e-3) / 1e9,
            });
            println!("{line}");
            if !ok {
                eprintln!("CHECK FAILED: {} at {m}x{n}x{k}: {st:?}", e.label);
            }
        }
    }
    Ok(failures)
}

fn run(dir: &Path, kind: Option<&str>) -> Result<()> {
    if !unsafe { sys::is_culib_present() } {
        bail!("libcuda not found: this command needs an NVIDIA driver");
    }
    let manifest: Manifest = serde_json::from_slice(
        &std::fs::read(dir.join("manifest.json")).with_context(|| format!("reading {}/manifest.json", dir.display()))?,
    )?;
    let ctx = CudaContext::new(0)?;
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.default_stream();
    eprintln!(
        "device: {} (sm_{}{}), bundle: {} kernels, NVRTC {}",
        ctx.name()?,
        ctx.compute_capability()?.0,
        ctx.compute_capability()?.1,
        manifest.entries.len(),
        manifest.nvrtc
    );
    let spin = ctx.load_module(cudarc::nvrtc::Ptx::from_binary(std::fs::read(dir.join(&manifest.spin))?))?.load_function("qf_spin")?;
    let of_kind = |label: &str| kind.is_none_or(|k| label.split(' ').next() == Some(k));
    let wonly: Vec<WonlyEntry> = manifest.wonly.into_iter().filter(|e| of_kind(&e.label)).collect();
    let mut failures = run_wonly((&ctx, &stream), &spin, dir, wonly)?;
    // `QFUSE_SKINNY_MAX_N` skips the larger skinny shapes (the LM head's host reference is slow).
    let max_n: Option<u32> = std::env::var("QFUSE_SKINNY_MAX_N").ok().and_then(|v| v.parse().ok());
    let skinny: Vec<SkinnyEntry> = manifest.skinny.into_iter().filter(|e| of_kind(&e.label) && max_n.is_none_or(|m| e.n <= m)).collect();
    failures += run_skinny((&ctx, &stream), &spin, dir, skinny)?;
    let loaded = manifest.entries.into_iter().filter(|e| of_kind(&e.label)).map(|e| load(&ctx, dir, e)).collect::<Result<Vec<_>>>()?;
    // Group by operands so each (M, N, K, operand type) is generated and referenced once.
    let mut by_shape: BTreeMap<(usize, usize, usize, String, i32), Vec<usize>> = BTreeMap::new();
    for (i, l) in loaded.iter().enumerate() {
        for &m in &l.entry.ms {
            let s = &l.entry.spec;
            let key = (m as usize, s.n as usize, s.k as usize, format!("{:?}", s.operand), l.entry.case.shift);
            by_shape.entry(key).or_default().push(i);
        }
    }
    let mut best: BTreeMap<(usize, usize, usize, String), (f64, String)> = BTreeMap::new();
    for ((m, n, k, operand, shift), idx) in &by_shape {
        let (m, n, k) = (*m, *n, *k);
        let seed = (m * 1_000_003 + n * 1009 + k) as u64;
        let ops = make_operands(&stream, m, n, k, loaded[idx[0]].entry.spec.operand, *shift, seed)?;
        for &i in idx {
            let l = &loaded[i];
            let mut p = make_problem(&stream, &l.entry.case, m, n, seed ^ 0xE)?;
            l.entry.spec.check_m(m as u64)?;
            let st = run_check((&ctx, &stream), l, (&l.entry.case, Accum::of(&l.entry.spec)), &ops, &mut p)?;
            let ok = passed(&st);
            failures += usize::from(!ok);
            let mut line = serde_json::json!({
                "kind": "qfuse", "m": m, "n": n, "k": k, "variant": l.entry.label, "operand": operand,
                "epilogue": format!("{:?}", l.entry.case.epi),
                "kernel": l.entry.kernel.name, "check": if ok { "ok" } else { "FAIL" }, "stats": st,
                "mainloop": format!("{:?}", l.entry.spec.mainloop), "fast_accum": l.entry.spec.fast_accum,
            });
            if l.entry.role == "bench" {
                let (med, min) = time_kernel(&ctx, &stream, &spin, l, &ops, &mut p)?;
                let tflops = 2.0 * (m * n * k) as f64 / (med * 1e-3) / 1e12;
                line["median_ms"] = med.into();
                line["min_ms"] = min.into();
                line["tflops"] = tflops.into();
                let b = best.entry((m, n, k, operand.clone())).or_insert((0.0, String::new()));
                if ok && tflops > b.0 {
                    *b = (tflops, l.entry.label.clone());
                }
            }
            println!("{line}");
            if !ok {
                eprintln!("CHECK FAILED: {} at {m}x{n}x{k}: {st:?}", l.entry.label);
            }
        }
    }
    for ((m, n, k, operand), (t, l)) in &best {
        println!("{}", serde_json::json!({"kind": "qfuse-best", "m": m, "n": n, "k": k, "operand": operand, "tflops": t, "variant": l}));
    }
    if failures > 0 {
        bail!("{failures} correctness check(s) FAILED");
    }
    eprintln!("all correctness checks passed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e4m3_table_matches_float8() {
        let t = e4m3_table();
        for code in 0..=255u8 {
            let want = float8::F8E4M3::from_bits(code).to_f32();
            let got = t[code as usize];
            assert!(got == want || (got.is_nan() && want.is_nan()), "{code:#04x}: {got} vs {want}");
        }
        assert_eq!(t[0x7e], 448.0);
        assert_eq!(t[0x01], 2f32.powi(-9));
    }

    #[test]
    fn random_codes_have_no_nan() {
        let lut = e4m3_table();
        assert!(random_e4m3(100_000, 7).iter().all(|&c| lut[c as usize].is_finite()));
    }

    #[test]
    fn every_planned_kernel_renders() {
        for (role, spec, epi, ms) in plan() {
            make_kernel(role, spec, epi, ms).unwrap_or_else(|e| panic!("{spec:?} {epi:?}: {e:#}"));
        }
    }

    /// INT8: the exact integer reference (i8 or f16 output) passes; one code off fails.
    #[test]
    fn int8_check_is_exact() {
        let (m, n, k) = (3, 64, 64);
        let lut = operand_table(Operand::I8);
        for epi in [Epi::BiasQuant, Epi::Dynamic] {
            let (entry, _) = make_kernel("check", GemmSpec::int8_for_shape(n as u32, k as u32), epi, vec![]).expect("plans");
            let case = entry.case;
            let (a, b) = (random_codes(m * k, 1, Operand::I8), random_codes(n * k, 2, Operand::I8));
            let bf: Vec<f32> = b.iter().map(|&c| lut[c as usize]).collect();
            let refs: Vec<_> = (0..m).map(|r| (r, reference_row(&a, &bf, &lut, 1.0, r, n, k))).collect();
            let host = HostInputs {
                a_scale: vec![0.01; m],
                b_scale: vec![0.02; n],
                adds: case.adds.iter().map(|&(d, ix)| (ix, vec![qfuse::numerics::cast(0.3, d); n])).collect(),
            };
            let out = qfuse_out_dtype(&case.q);
            let mut y = Vec::new();
            for (r, row) in &refs {
                for (j, &(acc, _)) in row.iter().enumerate() {
                    let adds: Vec<f32> = host.adds.iter().map(|(_, v)| v[j]).collect();
                    let v = expected(&case.q, acc as f32, host.a_scale[*r], host.b_scale[j], &adds);
                    match out {
                        DType::I8 => y.push(v as i8 as u8),
                        _ => y.extend(f16::from_f32(v).to_le_bytes()),
                    }
                }
            }
            assert!(passed(&check(&y, &refs, &case, &host, n, Accum::of(&entry.spec))), "{epi:?}");
            if out == DType::I8 {
                let mut bad = y.clone();
                bad[7] = bad[7].wrapping_add(2);
                assert!(!passed(&check(&bad, &refs, &case, &host, n, Accum::Exact)), "{epi:?}: a code two steps off");
            }
        }
    }

    /// The checker accepts the reference and rejects a wrong element and unwritten output.
    #[test]
    fn check_accepts_exact_and_rejects_errors() {
        let (m, n, k) = (3, 64, 64);
        let lut = e4m3_table();
        for epi in [Epi::Bias, Epi::BiasGeluQuant, Epi::BiasResidual, Epi::Dynamic] {
            let (entry, _) = make_kernel("check", GemmSpec::wgmma_for_shape(n as u32, k as u32), epi, vec![]).expect("plans");
            let case = entry.case;
            let a = random_e4m3(m * k, 1);
            let b = random_e4m3(n * k, 2);
            let bf: Vec<f32> = b.iter().map(|&c| lut[c as usize]).collect();
            let refs: Vec<_> = (0..m).map(|r| (r, reference_row(&a, &bf, &lut, 1.0, r, n, k))).collect();
            let mut rng = Rng::new(3);
            let host = HostInputs {
                a_scale: (0..m).map(|_| rng.uniform(0.001, 0.01)).collect(),
                b_scale: (0..n).map(|_| rng.uniform(0.5, 2.0)).collect(),
                adds: case
                    .adds
                    .iter()
                    .map(|&(d, ix)| {
                        (
                            ix,
                            (0..if ix == Index::Full { m * n } else { n })
                                .map(|_| qfuse::numerics::cast(rng.uniform(-4.0, 4.0), d))
                                .collect(),
                        )
                    })
                    .collect(),
            };
            let out = qfuse_out_dtype(&case.q);
            let mut y = Vec::new();
            for (r, row) in &refs {
                for (j, &(acc, _)) in row.iter().enumerate() {
                    let adds: Vec<f32> = host.adds.iter().map(|(ix, v)| if *ix == Index::Full { v[r * n + j] } else { v[j] }).collect();
                    let v = expected(&case.q, acc as f32, host.a_scale[*r], host.b_scale[j], &adds);
                    match out {
                        DType::F8E4M3 => y.push(qfuse::numerics::f32_to_e4m3(v)),
                        _ => y.extend(f16::from_f32(v).to_le_bytes()),
                    }
                }
            }
            assert!(passed(&check(&y, &refs, &case, &host, n, Accum::F32)), "{epi:?}");
            let mut bad = y.clone();
            let bytes = out.bits() as usize / 8;
            bad[5 * bytes] ^= 0x40;
            assert!(!passed(&check(&bad, &refs, &case, &host, n, Accum::F32)), "{epi:?}: a flipped exponent bit");
            let mut bad = y.clone();
            bad[2 * bytes..3 * bytes].fill(0xff);
            let st = check(&bad, &refs, &case, &host, n, Accum::Fast);
            assert_eq!(st.unwritten, 1, "{epi:?}");
        }
    }

    /// Each weight-only shape plans a skinny kernel and a GEMM; the guards give the skinny kernel
    /// M ≤ 16 and the GEMM the rest (the check-only M values included).
    /// Every skinny kernel of the bundle renders from its plan, with the plan's arguments.
    #[test]
    fn every_skinny_kernel_renders() {
        for (format, (n, k)) in skinny_plan() {
            let (e, source) = make_skinny_kernel(format, n, k).unwrap_or_else(|err| panic!("{format:?} {n}x{k}: {err:#}"));
            assert!(e.label.starts_with("skinny ") && source.contains("namespace qf_skinny"), "{}", e.label);
            assert!(e.weight_bytes >= u64::from(n) * u64::from(k) / 2, "{}", e.label);
        }
    }

    #[test]
    fn wonly_kernels_follow_the_plan_guards() {
        for (weights, (n, k), ms) in wonly_plan() {
            let kernels = make_wonly_kernels(weights, n, k, &ms).unwrap_or_else(|e| panic!("{weights:?} {n}x{k}: {e:#}"));
            let [(gemv, _), (gemm, _)] = kernels.as_slice() else { panic!("{weights:?} {n}x{k}: {} kernels", kernels.len()) };
            assert!(gemv.label.contains(" skinny ") && gemm.label.contains(" gemm "), "{} / {}", gemv.label, gemm.label);
            assert_eq!(gemv.ms, ms.iter().copied().filter(|&m| m <= 16).collect::<Vec<_>>());
            assert_eq!(gemm.ms, [4096]);
            assert_eq!((gemv.check_ms.as_slice(), gemm.check_ms.as_slice()), (&[][..], &WONLY_CHECK_MS[..]));
            assert_eq!(gemm.kernel.grid[0].eval_with(&[("M".into(), 300)]), Ok(300u64.div_ceil(128) * u64::from(n / 128).max(1)));
        }
    }

    /// The dequantized weight follows the device layout (W4A16: low nibble first, groups of 128
    /// along K), and the checker accepts the reference output and rejects a wrong element.
    #[test]
    fn wonly_reference_matches_the_layout_and_checks() {
        let (m, n, k) = (3, 64, 256);
        for weights in [Weights::W8A16, Weights::W4A16] {
            let w = wonly_weights(weights, n, k, 11);
            let (j, groups) = (5, weights.groups(k));
            for i in [0, 129, 130, 255] {
                let g = j * groups + i / (k / groups);
                let code = match weights {
                    Weights::W8A16 => f32::from(w.codes[j * k + i] as i8),
                    Weights::W4A16 => f32::from((w.codes[(j * k + i) / 2] >> (4 * (i % 2))) & 0xf),
                };
                let z = w.zero.get(g).map_or(0.0, |&z| f32::from(z));
                assert_eq!(w.w[j * k + i], f16::from_f32((code - z) * w.scale[g]).to_f32(), "{weights:?} k = {i}");
            }
            let (entry, _) = make_wonly_kernels(weights, n as u32, k as u32, &[1]).expect("plans").swap_remove(0);
            let a = random_vec(m * k, 3, |rng| qfuse::numerics::cast(rng.uniform(-1.0, 1.0), DType::F16));
            let refs: Vec<_> = (0..m).map(|r| (r, dot_columns(&a[r * k..(r + 1) * k], &w.w, n, k))).collect();
            let host = HostInputs { a_scale: vec![], b_scale: vec![], adds: vec![(Index::PerColumn, w.bias.clone())] };
            let y: Vec<u8> = refs
                .iter()
                .flat_map(|(_, row)| {
                    row.iter().enumerate().map(|(j, &(acc, _))| expected(&entry.case.q, acc as f32, 1.0, 1.0, &[w.bias[j]]))
                })
                .flat_map(|v| f16::from_f32(v).to_le_bytes())
                .collect();
            let st = check(&y, &refs, &entry.case, &host, n, Accum::F32);
            assert!(passed(&st) && st.max_abs_err == 0.0, "{weights:?}: {st:?}");
            let mut bad = y.clone();
            bad[2 * 70 + 1] ^= 0x04;
            assert!(!passed(&check(&bad, &refs, &entry.case, &host, n, Accum::F32)), "{weights:?}: a flipped exponent bit");
        }
    }
}
