//! qfuse-gemm-bench: builds, checks and times qfuse's FP8 E4M3 GEMM kernels.
//!
//! `qfuse-gemm-bench build DIR` (needs NVRTC, no GPU): renders every kernel this tool knows
//! (correctness kernels and performance variants), compiles each to `sm_90a` CUBIN and writes
//! `DIR/manifest.json` plus one `<name>.cubin` and `<name>.cu` per kernel.
//!
//! `qfuse-gemm-bench run DIR` (needs only `libcuda`): loads the bundle, fills A and B with random
//! E4M3 codes (NaN codes excluded), checks every kernel against an exact CPU reference (all
//! elements at small shapes, sampled rows at large ones; Y is poisoned first so unwritten
//! elements show), then times each with CUDA events (warm-up, median of the timed runs) and
//! prints one JSON line per kernel and shape. Exit status 1 if any check failed. An optional
//! mainloop kind (`mma`, `wgmma`, `wgmma-wg`) restricts the run to those kernels, and a kernel
//! that has not finished after [`HANG_SECS`] ends the process (status 2) rather than hanging.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use cudarc::driver::{sys, CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use half::f16;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use qfuse::codegen::gemm::{self, Alpha, GemmSpec, KernelSource, Mainloop};

const ARCH: &str = "sm_90a";
const WARMUP: usize = 10;
const REPS: usize = 30;
/// A launch that has not completed after this long is reported as a hang.
const HANG_SECS: u64 = 20;

/// One compiled kernel in the bundle and the problems it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    /// Short variant label, e.g. `128x256x128 s4 w2x4`.
    label: String,
    /// `check`: correctness only; `bench`: checked, then timed.
    role: String,
    /// M values to run (N and K are the spec's).
    ms: Vec<u32>,
    kernel: KernelSource,
    /// CUBIN file name inside the bundle.
    cubin: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    arch: String,
    nvrtc: String,
    /// CUBIN of [`SPIN_SOURCE`].
    spin: String,
    entries: Vec<Entry>,
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
        _ => bail!("usage: qfuse-gemm-bench build DIR [--ptxas-verbose] | run DIR [mma|wgmma|wgmma-wg]"),
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

fn label(s: &GemmSpec) -> String {
    let kind = match s.mainloop {
        Mainloop::MmaSync => "mma",
        Mainloop::Wgmma => "wgmma",
        Mainloop::WgmmaWaitGroup => "wgmma-wg",
    };
    let mut l = format!("{kind} {}x{}x{} s{} w{}x{} g{}", s.tile_m, s.tile_n, s.tile_k, s.stages, s.warps_m, s.warps_n, s.group_m);
    if s.ctas_per_sm > 1 {
        l.push_str(&format!(" x{}", s.ctas_per_sm));
    }
    if s.fast_accum {
        l.push_str(" fast");
    }
    if s.bias {
        l.push_str(" +bias");
    }
    if let Alpha::Constant(_) = s.alpha {
        l.push_str(" alpha=c");
    }
    l
}

/// Every kernel of the bundle: (role, spec, M values).
fn plan() -> Vec<(&'static str, GemmSpec, Vec<u32>)> {
    let mut out = Vec::new();
    // Correctness: partial M tiles, M = 1, bias, constant alpha, each mainloop, tile shape, tile_k.
    let small_ms = vec![256, 300, 129, 1];
    let c = |s: GemmSpec, bias: bool, alpha: Alpha| GemmSpec { bias, alpha, ..s };
    // Constant alphas keep |Y| well inside f16 for full-range E4M3 codes at these K.
    for (s, bias, alpha) in [
        (spec(256, 512, (128, 256, 128), 4, (2, 4)), true, Alpha::Constant(0.0123)),
        (spec(256, 512, (256, 128, 128), 4, (4, 2)), false, Alpha::FromPointer),
        (spec(256, 512, (128, 128, 128), 3, (2, 2)), false, Alpha::Constant(1.0 / 1024.0)),
        (spec(256, 512, (128, 256, 64), 6, (2, 4)), true, Alpha::FromPointer),
        (spec(256, 512, (64, 64, 64), 2, (2, 2)), true, Alpha::FromPointer),
        (fast(wg(256, 512, 128, 256, 4)), true, Alpha::Constant(0.0123)),
        (fast(wg(256, 512, 128, 256, 3)), false, Alpha::FromPointer),
        (wg(256, 512, 128, 256, 4), true, Alpha::FromPointer),
        (wg(256, 1152, 128, 256, 3), false, Alpha::Constant(1.0 / 1024.0)),
        (wg(256, 512, 256, 128, 4), true, Alpha::FromPointer),
        (fast(wg(256, 512, 256, 128, 4)), false, Alpha::FromPointer),
        (two_per_sm(wg(256, 1024, 128, 128, 3)), true, Alpha::FromPointer),
        (two_per_sm(fast(wg(256, 1024, 128, 128, 3))), false, Alpha::FromPointer),
        (wg(256, 512, 64, 64, 5), false, Alpha::FromPointer),
        (wg(256, 1024, 128, 128, 6), true, Alpha::FromPointer),
        (wg(256, 1152, 128, 128, 3), false, Alpha::Constant(1.0 / 1024.0)),
        (wait_group(fast(wg(256, 512, 128, 256, 4))), true, Alpha::Constant(0.0123)),
        (wait_group(wg(256, 1024, 64, 128, 3)), false, Alpha::FromPointer),
        (wait_group(wg(256, 1024, 128, 256, 4)), true, Alpha::FromPointer),
    ] {
        out.push(("check", c(s, bias, alpha), small_ms.clone()));
    }
    // Performance variants, square shapes.
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
        ] {
            out.push(("bench", s, vec![m]));
        }
    }
    // MiniLM (all-MiniLM-L6-v2) linear layers at 4096 tokens.
    for (n, k) in [(384, 384), (1536, 384), (384, 1536)] {
        out.push(("bench", spec(n, k, (64, 128, 128), 4, (2, 2)), vec![4096]));
        let mut variants = vec![wg(n, k, 64, 64, 4), wg(n, k, 64, 128, 4), wg(n, k, 128, 128, 4), two_per_sm(wg(n, k, 128, 128, 3))];
        if n % 256 == 0 {
            variants.push(wg(n, k, 128, 256, 4));
        }
        for s in variants {
            out.push(("bench", s, vec![4096]));
            out.push(("bench", fast(s), vec![4096]));
        }
    }
    out
}

fn build(dir: &Path, ptxas_verbose: bool) -> Result<()> {
    let install = qfuse::codegen::nvrtc::locate()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut opts = Vec::new();
    if ptxas_verbose {
        opts.push("-Xptxas=-v".to_string());
    }
    let entries = plan()
        .into_par_iter()
        .map(|(role, spec, ms)| -> Result<Entry> {
            let kernel = gemm::render(&spec)?;
            let cubin = qfuse::codegen::nvrtc::compile_cubin(&kernel.name, &kernel.source, ARCH, &opts)?;
            let file = format!("{}.cubin", kernel.name);
            std::fs::write(dir.join(&file), &cubin)?;
            std::fs::write(dir.join(format!("{}.cu", kernel.name)), &kernel.source)?;
            Ok(Entry { label: label(&spec), role: role.into(), ms, kernel, cubin: file })
        })
        .collect::<Result<Vec<_>>>()?;
    let spin = qfuse::codegen::nvrtc::compile_cubin("qf_spin", SPIN_SOURCE, ARCH, &[])?;
    std::fs::write(dir.join("qf_spin.cubin"), spin)?;
    let manifest = Manifest {
        arch: ARCH.into(),
        nvrtc: format!("{}.{}", install.version.0, install.version.1),
        spin: "qf_spin.cubin".into(),
        entries,
    };
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec_pretty(&manifest)?)?;
    eprintln!("wrote {} kernels to {}", manifest.entries.len(), dir.display());
    Ok(())
}

// ---- host data and reference ---------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Random E4M3 codes, NaN codes (0x7f, 0xff) excluded; filled in parallel, reproducible.
fn random_e4m3(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    v.par_chunks_mut(1 << 16).enumerate().for_each(|(i, chunk)| {
        let mut rng = Rng(seed ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        for x in chunk.iter_mut() {
            let mut b = (rng.next() >> 56) as u8;
            while b & 0x7f == 0x7f {
                b = (rng.next() >> 56) as u8;
            }
            *x = b;
        }
    });
    v
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

/// Exact reference for row `r`: (Σ a·b in f64, Σ |a·b|) per column. Products of E4M3 values are
/// exact in f32 and their sums (≤ 2^31 terms spanning < 50 bits) exact in f64.
fn reference_row(a: &[u8], bf: &[f32], lut: &[f32; 256], r: usize, n: usize, k: usize) -> Vec<(f64, f64)> {
    let arow: Vec<f32> = a[r * k..(r + 1) * k].iter().map(|&c| lut[c as usize]).collect();
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

/// The kernel's exact semantics: f16(f16(alpha · f32(acc)) + bias).
fn expected(acc: f64, alpha: f32, bias: Option<f16>) -> f16 {
    let y = f16::from_f32(alpha * acc as f32);
    match bias {
        Some(b) => f16::from_f32(y.to_f32() + b.to_f32()),
        None => y,
    }
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

fn f16_ulp(x: f16) -> f64 {
    let v = f64::from(x.to_f32().abs());
    if v < 6.103_515_625e-5 {
        2f64.powi(-24)
    } else {
        2f64.powi(v.log2().floor() as i32 - 10)
    }
}

/// How a kernel accumulates, which sets the error it is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accum {
    /// f32 throughout (mma.sync, which ptxas lowers to f16 HMMA + FADD on sm_90).
    F32,
    /// wgmma FP8 partial sums over 128-deep k-tiles, added in f32.
    Promoted,
    /// wgmma FP8 accumulation over all of K.
    Fast,
}

impl Accum {
    fn of(spec: &GemmSpec) -> Self {
        match (spec.mainloop, spec.fast_accum) {
            (Mainloop::MmaSync, _) => Accum::F32,
            (_, false) => Accum::Promoted,
            (_, true) => Accum::Fast,
        }
    }

    /// (slack, normwise limit): an element may be off by 2 f16 ulps + slack · alpha · Σ|a·b|, and
    /// ‖y − ref‖/‖ref‖ must stay under the limit. The tensor cores keep roughly 13 mantissa bits
    /// in FP8 partial sums (measured here: promoted 128-deep partials err up to ~2^-11.5 · Σ|a·b|).
    fn tolerance(self) -> (f64, f64) {
        match self {
            Accum::F32 => (2f64.powi(-12), 1e-3),
            Accum::Promoted => (2f64.powi(-10), 1e-3),
            Accum::Fast => (2f64.powi(-8), 2e-2),
        }
    }
}

/// Compares `y` (full [M,N] output) with the reference on `rows` under `accum`'s tolerance (see
/// [`Accum::tolerance`]); non-finite values must match exactly (f16 overflow gives ±inf).
fn check(y: &[u16], refs: &[(usize, Vec<(f64, f64)>)], alpha: f32, bias: Option<&[f16]>, n: usize, accum: Accum) -> CheckStats {
    let (slack, norm_limit) = accum.tolerance();
    let mut st =
        CheckStats { unwritten: y.par_iter().filter(|&&v| v == 0xffff).count(), rows: refs.len(), norm_limit, ..Default::default() };
    let (mut num, mut den) = (0f64, 0f64);
    for (r, row) in refs {
        for (j, &(acc, abs)) in row.iter().enumerate() {
            let want = expected(acc, alpha, bias.map(|b| b[j]));
            let got = f16::from_bits(y[r * n + j]);
            let (w, g) = (f64::from(want.to_f32()), f64::from(got.to_f32()));
            st.elements += 1;
            if !w.is_finite() || !g.is_finite() {
                st.non_finite += 1;
                if g != w {
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
            if err > f16_ulp(want) {
                st.over_1ulp += 1;
            }
            let tol = 2.0 * f16_ulp(want) + slack * f64::from(alpha) * abs;
            if err > tol {
                st.bad += 1;
                st.first_bad.get_or_insert_with(|| format!("Y[{r},{j}] = {g} want {w} (tol {tol:.3e})"));
            }
        }
    }
    st.norm_rel_err = (num / den.max(f64::MIN_POSITIVE)).sqrt();
    st
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
    let mut rng = Rng(seed);
    rows.extend((0..19).map(|_| (rng.next() % m as u64) as usize));
    rows.sort_unstable();
    rows.dedup();
    rows
}

// ---- device ------------------------------------------------------------------------------------

struct Problem {
    m: usize,
    n: usize,
    a: CudaSlice<u8>,
    b: CudaSlice<u8>,
    y: CudaSlice<u16>,
    bias_host: Vec<f16>,
    bias: CudaSlice<u16>,
    alpha: f32,
    alpha_dev: CudaSlice<f32>,
    refs: Vec<(usize, Vec<(f64, f64)>)>,
}

fn make_problem(stream: &Arc<CudaStream>, m: usize, n: usize, k: usize, seed: u64) -> Result<Problem> {
    let lut = e4m3_table();
    let a = random_e4m3(m * k, seed);
    let b = random_e4m3(n * k, seed ^ 0xB);
    let bf: Vec<f32> = b.par_iter().map(|&c| lut[c as usize]).collect();
    let rms = |v: &[u8]| {
        let s: f64 = v.par_iter().map(|&c| f64::from(lut[c as usize]).powi(2)).sum();
        (s / v.len() as f64).sqrt()
    };
    // Outputs of order 10: well inside f16, far above its subnormals.
    let alpha = (10.0 / (rms(&a) * rms(&b) * (k as f64).sqrt())) as f32;
    let mut rng = Rng(seed ^ 0xC);
    let bias_host: Vec<f16> = (0..n).map(|_| f16::from_f32(((rng.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0)).collect();
    let refs = sample_rows(m, seed ^ 0xD).into_par_iter().map(|r| (r, reference_row(&a, &bf, &lut, r, n, k))).collect();
    let bias_bits: Vec<u16> = bias_host.iter().map(|h| h.to_bits()).collect();
    Ok(Problem {
        m,
        n,
        a: stream.clone_htod(&a)?,
        b: stream.clone_htod(&b)?,
        y: stream.alloc_zeros::<u16>(m * n)?,
        bias_host,
        bias: stream.clone_htod(&bias_bits)?,
        alpha,
        alpha_dev: stream.clone_htod(&[alpha])?,
        refs,
    })
}

struct Loaded {
    entry: Entry,
    func: CudaFunction,
}

fn launch(stream: &Arc<CudaStream>, l: &Loaded, p: &mut Problem) -> Result<()> {
    let ks = &l.entry.kernel;
    let m = u32::try_from(p.m)?;
    ks.spec.check_m(u64::from(m))?;
    let grid = ks.grid(m);
    if grid[0] == 0 {
        return Ok(());
    }
    let cfg = LaunchConfig {
        grid_dim: (grid[0], grid[1], grid[2]),
        block_dim: (ks.block[0], ks.block[1], ks.block[2]),
        shared_mem_bytes: ks.smem_bytes,
    };
    let m_arg = m as i32;
    let mut b = stream.launch_builder(&l.func);
    b.arg(&p.a).arg(&p.b).arg(&mut p.y).arg(&p.bias).arg(&p.alpha_dev).arg(&m_arg);
    unsafe { b.launch(cfg) }?;
    Ok(())
}

fn alpha_of(spec: &GemmSpec, p: &Problem) -> f32 {
    match spec.alpha {
        Alpha::Constant(a) => a,
        Alpha::FromPointer => p.alpha,
    }
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

fn run_check(ctx: &Arc<CudaContext>, stream: &Arc<CudaStream>, l: &Loaded, p: &mut Problem) -> Result<CheckStats> {
    stream.memcpy_htod(&vec![0xffffu16; p.m * p.n], &mut p.y)?;
    launch(stream, l, p)?;
    finish(ctx, stream, &format!("{} at M={}", l.entry.label, p.m))?;
    let y = stream.clone_dtoh(&p.y)?;
    let spec = &l.entry.kernel.spec;
    let bias = spec.bias.then_some(p.bias_host.as_slice());
    Ok(check(&y, &p.refs, alpha_of(spec, p), bias, p.n, Accum::of(spec)))
}

fn time_kernel(ctx: &Arc<CudaContext>, stream: &Arc<CudaStream>, spin: &CudaFunction, l: &Loaded, p: &mut Problem) -> Result<(f64, f64)> {
    for _ in 0..WARMUP {
        launch(stream, l, p)?;
    }
    let one = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1, 1, 1), shared_mem_bytes: 0 };
    let mut b = stream.launch_builder(spin);
    b.arg(&SPIN_CYCLES);
    unsafe { b.launch(one) }?;
    let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
    let events = (0..REPS).map(|_| Ok((ctx.new_event(flags)?, ctx.new_event(flags)?))).collect::<Result<Vec<_>>>()?;
    for (e0, e1) in &events {
        e0.record(stream)?;
        launch(stream, l, p)?;
        e1.record(stream)?;
    }
    finish(ctx, stream, &format!("timing {} at M={}", l.entry.label, p.m))?;
    let mut ms = events.iter().map(|(e0, e1)| Ok(f64::from(e0.elapsed_ms(e1)?))).collect::<Result<Vec<_>>>()?;
    ms.sort_by(f64::total_cmp);
    Ok((ms[ms.len() / 2], ms[0]))
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
    let mut loaded = Vec::new();
    for entry in manifest.entries {
        if kind.is_some_and(|k| entry.label.split(' ').next() != Some(k)) {
            continue;
        }
        let cubin = std::fs::read(dir.join(&entry.cubin))?;
        let module = ctx.load_module(cudarc::nvrtc::Ptx::from_binary(cubin))?;
        let func = module.load_function(&entry.kernel.name)?;
        func.set_attribute(
            sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            i32::try_from(entry.kernel.smem_bytes)?,
        )?;
        loaded.push(Loaded { entry, func });
    }
    // Group by problem so each (M, N, K) is generated and referenced once.
    let mut by_shape: BTreeMap<(usize, usize, usize), Vec<usize>> = BTreeMap::new();
    for (i, l) in loaded.iter().enumerate() {
        for &m in &l.entry.ms {
            let s = &l.entry.kernel.spec;
            by_shape.entry((m as usize, s.n as usize, s.k as usize)).or_default().push(i);
        }
    }
    let mut failures = 0;
    let mut best: BTreeMap<(usize, usize, usize), (f64, String)> = BTreeMap::new();
    for (&(m, n, k), idx) in &by_shape {
        let seed = (m * 1_000_003 + n * 1009 + k) as u64;
        let mut p = make_problem(&stream, m, n, k, seed)?;
        for &i in idx {
            let l = &loaded[i];
            let st = run_check(&ctx, &stream, l, &mut p)?;
            let ok = passed(&st);
            failures += usize::from(!ok);
            let mut line = serde_json::json!({
                "kind": "qfuse", "m": m, "n": n, "k": k, "variant": l.entry.label,
                "kernel": l.entry.kernel.name, "check": if ok { "ok" } else { "FAIL" }, "stats": st,
                "mainloop": format!("{:?}", l.entry.kernel.spec.mainloop), "fast_accum": l.entry.kernel.spec.fast_accum,
            });
            if l.entry.role == "bench" {
                let (med, min) = time_kernel(&ctx, &stream, &spin, l, &mut p)?;
                let tflops = 2.0 * (m * n * k) as f64 / (med * 1e-3) / 1e12;
                line["median_ms"] = med.into();
                line["min_ms"] = min.into();
                line["tflops"] = tflops.into();
                let b = best.entry((m, n, k)).or_insert((0.0, String::new()));
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
    for ((m, n, k), (t, l)) in &best {
        println!("{}", serde_json::json!({"kind": "qfuse-best", "m": m, "n": n, "k": k, "tflops": t, "variant": l}));
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

    /// The checker accepts the exact result and rejects a wrong element, NaN and unwritten output.
    #[test]
    fn check_accepts_exact_and_rejects_errors() {
        let (m, n, k) = (3, 5, 64);
        let lut = e4m3_table();
        let a = random_e4m3(m * k, 1);
        let b = random_e4m3(n * k, 2);
        let bf: Vec<f32> = b.iter().map(|&c| lut[c as usize]).collect();
        let refs: Vec<_> = (0..m).map(|r| (r, reference_row(&a, &bf, &lut, r, n, k))).collect();
        let bias: Vec<f16> = (0..n).map(|j| f16::from_f32(j as f32 - 2.0)).collect();
        let alpha = 1e-3;
        let mut y = vec![0u16; m * n];
        for (r, row) in &refs {
            for (j, &(acc, _)) in row.iter().enumerate() {
                y[r * n + j] = expected(acc, alpha, Some(bias[j])).to_bits();
            }
        }
        assert!(passed(&check(&y, &refs, alpha, Some(&bias), n, Accum::F32)));
        let mut bad = y.clone();
        bad[4] = f16::from_f32(f16::from_bits(bad[4]).to_f32() + 1.0).to_bits();
        assert!(!passed(&check(&bad, &refs, alpha, Some(&bias), n, Accum::F32)));
        bad = y.clone();
        bad[2] = 0xffff;
        let st = check(&bad, &refs, alpha, Some(&bias), n, Accum::Fast);
        assert_eq!((st.unwritten, st.bad), (1, 1));
        assert!(!passed(&check(&y, &refs, alpha, None, n, Accum::Fast)), "bias must matter");
        // Overflow to the same infinity is a match; to the other one, or a finite value, is not.
        let big = vec![(0usize, vec![(1e9f64, 1e9f64), (-1e9, 1e9)])];
        let y = [f16::INFINITY.to_bits(), f16::NEG_INFINITY.to_bits()];
        assert!(passed(&check(&y, &big, 1.0, None, 2, Accum::F32)));
        let y = [f16::NEG_INFINITY.to_bits(), f16::MAX.to_bits()];
        assert_eq!(check(&y, &big, 1.0, None, 2, Accum::F32).bad, 2);
    }
}
