//! FP8 E4M3 GEMM kernels from `templates/qgemm_fp8.cu`: a typed [`GemmSpec`] → CUDA C source.
//!
//! The kernel computes the IR's `qmatmul` with `transpose_b` and an f16 output:
//! `Y[M,N] = f16(f16(alpha · Σ_k A[m,k]·B[n,k]) + bias[n])` (bias optional), A `[M,K]` and
//! B `[N,K]` row-major E4M3, f32 accumulators (with `wgmma`, the tensor cores' FP8 partial sums
//! are promoted to f32 every 128-deep k-tile, or only at the end with `fast_accum`). N, K, the
//! tiles, the pipeline depth and the epilogue are compiled in; M is a run-time argument. Tiles are filled by a `stages`-deep `cp.async` ring
//! in the 128-byte XOR-swizzled layout; the [`Mainloop`] is either `mma.sync.m16n8k32` (e4m3) fed
//! by `ldmatrix`, or Hopper's `wgmma.mma_async` reading the same tiles through shared-memory
//! descriptors. See `templates/qgemm_fp8.cu` for the design.
//!
//! Kernel signature (every argument is always passed; unused pointers may be null):
//! `(const u8* A, const u8* B, u16* Y, const u16* bias, const f32* alpha, i32 M)`.
//! Launch: grid `(ceil_div(M, tile_m) · N / tile_n, 1, 1)`, block `(32 · warps_m · warps_n, 1, 1)`,
//! [`KernelSource::smem_bytes`] of dynamic shared memory (above 48 KiB the function's
//! `MAX_DYNAMIC_SHARED_SIZE_BYTES` attribute must be raised first). Launch nothing for M = 0.
//! A, B and Y must be 16-byte aligned, bias 4-byte aligned.

use serde::{Deserialize, Serialize};

use super::template::{Template, TemplateError};

const COMMON: Template = Template { name: "common.cuh", text: include_str!("../../templates/common.cuh") };
const QGEMM_FP8: Template = Template { name: "qgemm_fp8.cu", text: include_str!("../../templates/qgemm_fp8.cu") };

/// Name of the template, prefix of every generated kernel name.
pub const TEMPLATE: &str = "qgemm_fp8";

/// Shared memory one block may use on sm_90 (227 KiB).
pub const MAX_SMEM_BYTES: u32 = 227 * 1024;

/// Shared memory of one SM on sm_90 (228 KiB), shared by its resident blocks.
pub const SM_SMEM_BYTES: u32 = 228 * 1024;

/// Static shared memory the template may declare besides the dynamic part (2 mbarriers a stage).
const STATIC_SMEM_BYTES: u64 = 16 * 16;

/// Parameter names, in the order the kernel takes them.
pub const PARAMS: [&str; 6] = ["A", "B", "Y", "bias", "alpha", "M"];

/// Where the kernel's `alpha` (the product of the per-tensor scales of A and B) comes from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Alpha {
    /// Compiled in (bit-exact).
    Constant(f32),
    /// Read at run time from the `alpha` argument, a device `f32` (dynamic scales).
    FromPointer,
}

/// The MMA instruction family of the mainloop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Mainloop {
    /// `mma.sync.m16n8k32` e4m3 fed by `ldmatrix`: warps own `tile_m/warps_m × tile_n/warps_n`
    /// sub-tiles. On sm_90 ptxas lowers it to e4m3→f16 conversions and two f16 MMAs, so it runs
    /// at the f16 `mma.sync` rate at best (native FP8 `mma.sync` exists on sm_89 only).
    MmaSync,
    /// `wgmma.mma_async` m64n`tile_n`k32 e4m3 with both operands in shared memory (sm_90a):
    /// warpgroups stacked along M, so `warps_m = tile_m / 16`, `warps_n = 1`, `tile_k = 128`,
    /// `tile_n` ∈ {64, 128, 256}, `stages` ≥ 3. Copy completion per stage through an mbarrier
    /// that every thread's `cp.async` arrive on.
    Wgmma,
    /// As [`Mainloop::Wgmma`], but copy completion through `cp.async.wait_group` and a
    /// generic→async proxy fence (`fence.proxy.async.shared::cta`).
    WgmmaWaitGroup,
}

impl Mainloop {
    /// Uses Hopper's `wgmma` (either completion scheme).
    pub fn is_wgmma(self) -> bool {
        self != Mainloop::MmaSync
    }
}

/// Everything the FP8 GEMM template is specialised on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GemmSpec {
    /// Output columns (rows of B); a multiple of `tile_n`.
    pub n: u32,
    /// Reduction length; a multiple of `tile_k`.
    pub k: u32,
    /// Block tile rows (M).
    pub tile_m: u32,
    /// Block tile columns (N).
    pub tile_n: u32,
    /// Block tile depth in elements (= bytes for FP8): 64 or 128.
    pub tile_k: u32,
    /// Depth of the cp.async shared-memory ring (≥ 2).
    pub stages: u32,
    /// Warps along M; each warp owns a `tile_m / warps_m` × `tile_n / warps_n` sub-tile.
    pub warps_m: u32,
    /// Warps along N.
    pub warps_n: u32,
    /// Block rasterization: this many consecutive M tiles sweep all N tiles together (L2 reuse).
    pub group_m: u32,
    /// Blocks meant to share one SM (`__launch_bounds__` minimum): caps registers per thread at
    /// 65536 / (threads · ctas_per_sm) and must leave room for that many blocks' shared memory.
    pub ctas_per_sm: u32,
    /// Add an f16 `bias[n]` after rounding the scaled accumulator to f16.
    pub bias: bool,
    /// The scale applied to the f32 accumulator.
    pub alpha: Alpha,
    /// The MMA instruction family.
    pub mainloop: Mainloop,
    /// wgmma only: accumulate all of K in the tensor cores' FP8 accumulators (faster; they keep
    /// fewer mantissa bits than f32, cf. cuBLASLt's `FAST_ACCUM`). When false, every 128-deep
    /// k-tile is summed separately by the tensor cores and then added to f32 registers
    /// ("promotion"), which bounds the error to that of one 128-term partial sum.
    pub fast_accum: bool,
}

impl GemmSpec {
    /// The default `mma.sync` configuration for an `N × K` weight: the largest block tile the
    /// shape allows (128×256, else 128×128, else 64×64; `tile_k` 128, else 64), four stages,
    /// alpha from a pointer, no bias. Portable (sm_89+), but on sm_90 about 3.5× slower than
    /// [`GemmSpec::wgmma_for_shape`]. Validity is checked by [`render`], not here.
    pub fn for_shape(n: u32, k: u32) -> Self {
        let tile_k = if k % 128 == 0 { 128 } else { 64 };
        let (tile_m, tile_n, warps_m, warps_n) = if n % 256 == 0 {
            (128, 256, 2, 4)
        } else if n % 128 == 0 {
            (128, 128, 2, 2)
        } else {
            (64, 64, 2, 2)
        };
        Self {
            n,
            k,
            tile_m,
            tile_n,
            tile_k,
            stages: 4,
            warps_m,
            warps_n,
            group_m: 8,
            ctas_per_sm: 1,
            bias: false,
            alpha: Alpha::FromPointer,
            mainloop: Mainloop::MmaSync,
            fast_accum: false,
        }
    }

    /// The exact-accumulation (promoted) `wgmma` configuration for an `N × K` weight, the one to
    /// use on sm_90. Chosen from H100 measurements at M = 4096 (`qfuse-gemm-bench`, Nov 2026):
    /// N ≥ 2048 and a multiple of 256: 128×256×128, 2 warpgroups, 4 stages (1,090 TFLOP/s at
    /// 4096³, 1,145 at 8192³); other N ≥ 1024, multiple of 128: 128×128×128, 3 stages, two blocks
    /// per SM (395 at 4096×1536×384); smaller N: 64×64×128, 4 stages (456 at 4096×384×1536).
    /// Alpha from a pointer, no bias. Validity is checked by [`render`], not here.
    pub fn wgmma_for_shape(n: u32, k: u32) -> Self {
        let (tile_m, tile_n, stages, ctas_per_sm) = if n >= 2048 && n % 256 == 0 {
            (128, 256, 4, 1)
        } else if n >= 1024 && n % 128 == 0 {
            (128, 128, 3, 2)
        } else {
            (64, 64, 4, 1)
        };
        Self {
            tile_m,
            tile_n,
            tile_k: 128,
            stages,
            warps_m: tile_m / 16,
            warps_n: 1,
            ctas_per_sm,
            mainloop: Mainloop::Wgmma,
            ..Self::for_shape(n, k)
        }
    }

    /// Threads per block.
    pub fn threads(&self) -> u32 {
        32 * self.warps_m * self.warps_n
    }

    /// Dynamic shared memory: the cp.async ring or the staged f16 output tile, whichever is
    /// larger, plus 1024 bytes of slack for aligning the tiles to the swizzle period.
    pub fn smem_bytes(&self) -> u64 {
        let ring = u64::from(self.stages) * u64::from(self.tile_m + self.tile_n) * u64::from(self.tile_k);
        let out = u64::from(self.tile_m) * (u64::from(self.tile_n) * 2 + 16);
        ring.max(out) + 1024
    }

    /// f32 accumulator registers per thread: the warp tile's, plus the partial-sum slice of
    /// promoted wgmma accumulation (128 columns, or 64 under a budget below 200 registers).
    pub fn accumulator_registers(&self) -> u32 {
        let (wm, wn) = (self.tile_m / self.warps_m.max(1), self.tile_n / self.warps_n.max(1));
        let main = wm * wn / 32;
        if !self.mainloop.is_wgmma() || self.fast_accum {
            return main;
        }
        let budget = 65536 / (self.threads() * self.ctas_per_sm).max(1);
        let slice = if budget >= 200 { 128 } else { 64 };
        main + self.tile_n.min(slice) / 2
    }

    /// Checks every constraint the template relies on; the error says which one failed.
    pub fn validate(&self) -> Result<(), GemmError> {
        let bad = |reason: String| Err(GemmError::Invalid { spec: *self, reason });
        let s = self;
        let fields = [
            ("n", s.n),
            ("k", s.k),
            ("tile_m", s.tile_m),
            ("tile_n", s.tile_n),
            ("stages", s.stages),
            ("warps_m", s.warps_m),
            ("warps_n", s.warps_n),
            ("group_m", s.group_m),
            ("ctas_per_sm", s.ctas_per_sm),
        ];
        if let Some((name, _)) = fields.iter().find(|(_, v)| *v == 0) {
            return bad(format!("{name} must be positive"));
        }
        if s.tile_m > 512 || s.tile_n > 512 || s.stages > 16 || s.warps_m > 32 || s.warps_n > 32 || s.ctas_per_sm > 32 {
            return bad("tiles are limited to 512, stages to 16, warps to 32 per axis, ctas_per_sm to 32".into());
        }
        if s.n > i32::MAX as u32 || s.k > i32::MAX as u32 {
            return bad("n and k must fit in i32".into());
        }
        if s.tile_k != 64 && s.tile_k != 128 {
            return bad(format!("tile_k {} must be 64 or 128 (the swizzle assumes 64- or 128-byte rows)", s.tile_k));
        }
        if s.n % s.tile_n != 0 {
            return bad(format!("tile_n {} does not divide n {}", s.tile_n, s.n));
        }
        if s.k % s.tile_k != 0 {
            return bad(format!("tile_k {} does not divide k {}", s.tile_k, s.k));
        }
        if s.stages < 2 {
            return bad("stages must be at least 2".into());
        }
        let warps = s.warps_m * s.warps_n;
        if warps > 32 {
            return bad(format!("{warps} warps exceed 1024 threads"));
        }
        if s.tile_m % (16 * s.warps_m) != 0 || s.tile_n % (16 * s.warps_n) != 0 {
            return bad(format!(
                "warp tile {}x{} is not a multiple of 16x16",
                f64::from(s.tile_m) / f64::from(s.warps_m),
                f64::from(s.tile_n) / f64::from(s.warps_n)
            ));
        }
        let (wm, wn) = (s.tile_m / s.warps_m, s.tile_n / s.warps_n);
        if wm * wn > 64 * 64 {
            return bad(format!("warp tile {wm}x{wn} needs more than 128 f32 accumulators per thread"));
        }
        let threads = s.threads();
        let chunk_split = |rows: u32| (rows * s.tile_k / 16) % threads == 0;
        if threads % (s.tile_k / 16) != 0 || !chunk_split(s.tile_m) || !chunk_split(s.tile_n) {
            return bad(format!("{threads} threads do not split the 16-byte copies of a tile evenly"));
        }
        if (threads / (s.tile_k / 16) * s.tile_k) % 1024 != 0 {
            return bad(format!("{threads} threads: a copy pass must cover whole 1024-byte swizzle periods"));
        }
        if (s.tile_m * s.tile_n * 2 / 16) % threads != 0 {
            return bad(format!("{threads} threads do not split the output tile's 16-byte stores evenly"));
        }
        if (s.tile_m * s.tile_k) % 1024 != 0 || (s.tile_n * s.tile_k) % 1024 != 0 {
            return bad("tile_m·tile_k and tile_n·tile_k must be multiples of 1024 bytes (swizzle alignment)".into());
        }
        if s.smem_bytes() + STATIC_SMEM_BYTES > u64::from(MAX_SMEM_BYTES) {
            return bad(format!("{} bytes of shared memory (+{STATIC_SMEM_BYTES} static) exceed {MAX_SMEM_BYTES}", s.smem_bytes()));
        }
        if s.mainloop.is_wgmma() {
            if s.tile_k != 128 || s.warps_n != 1 || s.warps_m * 16 != s.tile_m || s.warps_m % 4 != 0 {
                return bad(
                    "wgmma needs tile_k = 128, warps_n = 1 and whole warpgroups along M (warps_m = tile_m / 16, a multiple of 4)".into()
                );
            }
            if ![64, 128, 256].contains(&s.tile_n) {
                return bad(format!("wgmma tile_n {} must be 64, 128 or 256", s.tile_n));
            }
            if s.stages < 3 {
                return bad("wgmma needs at least 3 stages".into());
            }
        } else if s.tile_k / 32 % 2 != 0 {
            return bad("mma.sync needs an even number of k32 steps per tile".into());
        } else if s.fast_accum {
            return bad("fast_accum applies to wgmma only (mma.sync accumulates in f32)".into());
        }
        let budget = 65536 / (threads * s.ctas_per_sm);
        if budget < s.accumulator_registers() + 32 {
            return bad(format!(
                "{} accumulator registers per thread do not fit a budget of {budget} ({threads} threads x {} CTAs per SM)",
                s.accumulator_registers(),
                s.ctas_per_sm
            ));
        }
        let per_sm = u64::from(s.ctas_per_sm) * (s.smem_bytes() + STATIC_SMEM_BYTES + 1024);
        if per_sm > u64::from(SM_SMEM_BYTES) {
            return bad(format!("{} CTAs need {per_sm} bytes of shared memory per SM (> {SM_SMEM_BYTES})", s.ctas_per_sm));
        }
        if let Alpha::Constant(a) = s.alpha {
            if !a.is_finite() {
                return bad(format!("constant alpha {a} is not finite"));
            }
        }
        Ok(())
    }

    /// Rejects an M the kernel cannot run: one past `i32::MAX` or a grid too large.
    pub fn check_m(&self, m: u64) -> Result<(), GemmError> {
        let grid = m.div_ceil(u64::from(self.tile_m)) * u64::from(self.n / self.tile_n.max(1));
        if m > i32::MAX as u64 || grid > i32::MAX as u64 {
            return Err(GemmError::Invalid { spec: *self, reason: format!("M = {m} is too large for this kernel") });
        }
        Ok(())
    }
}

/// A generated kernel: its source and how to launch it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelSource {
    /// Entry point, `qgemm_fp8_<hash8>` (FNV-1a of the template text and the spec).
    pub name: String,
    /// Template it came from ([`TEMPLATE`]).
    pub template: String,
    /// Complete CUDA C for NVRTC (self-contained; needs no include path).
    pub source: String,
    /// The spec it was rendered from.
    pub spec: GemmSpec,
    /// Block dimensions.
    pub block: [u32; 3],
    /// Grid x as an expression over `M`, e.g. `ceil_div(M, 128) * 16` (grid y = z = 1).
    pub grid_x_expr: String,
    /// Dynamic shared memory in bytes.
    pub smem_bytes: u32,
}

impl KernelSource {
    /// Grid dimensions for `m` rows of A (0 blocks for M = 0: skip the launch).
    pub fn grid(&self, m: u32) -> [u32; 3] {
        let tiles_n = self.spec.n / self.spec.tile_n;
        [m.div_ceil(self.spec.tile_m) * tiles_n, 1, 1]
    }
}

/// What can go wrong generating a GEMM kernel.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GemmError {
    /// The spec breaks a constraint of the template.
    #[error("invalid FP8 GEMM spec ({reason}): {spec:?}")]
    Invalid { spec: GemmSpec, reason: String },
    /// The template and the parameters disagree (a qfuse bug).
    #[error(transparent)]
    Template(#[from] TemplateError),
}

/// Renders `spec` into CUDA C; fails if the spec is invalid.
pub fn render(spec: &GemmSpec) -> Result<KernelSource, GemmError> {
    spec.validate()?;
    let name = format!("{TEMPLATE}_{:08x}", kernel_hash(spec));
    let flag = |b: bool| if b { "true" } else { "false" }.to_string();
    let (alpha_from_ptr, alpha_bits) = match spec.alpha {
        Alpha::Constant(a) => (false, a.to_bits()),
        Alpha::FromPointer => (true, 0),
    };
    let common = COMMON.render(&[])?;
    let source = QGEMM_FP8.render(&[
        ("common", common),
        ("kernel_name", name.clone()),
        ("n", spec.n.to_string()),
        ("k", spec.k.to_string()),
        ("tile_m", spec.tile_m.to_string()),
        ("tile_n", spec.tile_n.to_string()),
        ("tile_k", spec.tile_k.to_string()),
        ("stages", spec.stages.to_string()),
        ("warps_m", spec.warps_m.to_string()),
        ("warps_n", spec.warps_n.to_string()),
        ("group_m", spec.group_m.to_string()),
        ("ctas_per_sm", spec.ctas_per_sm.to_string()),
        ("mainloop", format!("{:?}", spec.mainloop)),
        ("fast_accum", flag(spec.fast_accum)),
        ("has_bias", flag(spec.bias)),
        ("alpha_from_ptr", flag(alpha_from_ptr)),
        ("alpha_bits", format!("{alpha_bits:#010x}")),
    ])?;
    let smem_bytes = u32::try_from(spec.smem_bytes()).expect("validated: at most MAX_SMEM_BYTES");
    Ok(KernelSource {
        name,
        template: TEMPLATE.into(),
        source,
        spec: *spec,
        block: [spec.threads(), 1, 1],
        grid_x_expr: format!("ceil_div(M, {}) * {}", spec.tile_m, spec.n / spec.tile_n),
        smem_bytes,
    })
}

/// FNV-1a (32-bit) over the template text and the spec's fields: stable across runs and Rust
/// versions, unlike `std`'s hasher.
fn kernel_hash(spec: &GemmSpec) -> u32 {
    let alpha = match spec.alpha {
        Alpha::Constant(a) => format!("c{:08x}", a.to_bits()),
        Alpha::FromPointer => "p".into(),
    };
    let key = format!(
        "{}|{}|{} {} {} {} {} {} {} {} {} {} {} {alpha} {:?} {}",
        COMMON.text,
        QGEMM_FP8.text,
        spec.n,
        spec.k,
        spec.tile_m,
        spec.tile_n,
        spec.tile_k,
        spec.stages,
        spec.warps_m,
        spec.warps_n,
        spec.group_m,
        spec.ctas_per_sm,
        spec.bias,
        spec.mainloop,
        spec.fast_accum
    );
    key.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_shape() {
        let s = GemmSpec::for_shape(4096, 4096);
        assert_eq!((s.tile_m, s.tile_n, s.tile_k, s.threads()), (128, 256, 128, 256));
        assert_eq!(s.smem_bytes(), 4 * 384 * 128 + 1024);
        let s = GemmSpec::for_shape(384, 384);
        assert_eq!((s.tile_n, s.tile_k), (128, 128));
        let s = GemmSpec::for_shape(192, 320);
        assert_eq!((s.tile_n, s.tile_k), (64, 64));
        for (n, k) in [(4096, 4096), (384, 384), (1536, 384), (384, 1536), (192, 320)] {
            GemmSpec::for_shape(n, k).validate().expect("default is valid");
        }
        for (n, k) in [(8192, 8192), (4096, 4096), (1536, 384), (384, 1536), (384, 384), (192, 384)] {
            let s = GemmSpec::wgmma_for_shape(n, k);
            s.validate().unwrap_or_else(|e| panic!("{n}x{k}: {e}"));
            assert!(!s.fast_accum && s.mainloop == Mainloop::Wgmma);
        }
        assert_eq!(GemmSpec::wgmma_for_shape(4096, 4096).tile_n, 256);
        assert_eq!(GemmSpec::wgmma_for_shape(1536, 384).ctas_per_sm, 2);
        assert_eq!(GemmSpec::wgmma_for_shape(384, 384).tile_m, 64);
    }

    #[test]
    fn grid_counts_partial_m_tiles() {
        let src = render(&GemmSpec::for_shape(4096, 4096)).expect("renders");
        assert_eq!(src.grid(4096), [32 * 16, 1, 1]);
        assert_eq!(src.grid(4097), [33 * 16, 1, 1]);
        assert_eq!(src.grid(0), [0, 1, 1]);
        assert_eq!(src.grid_x_expr, "ceil_div(M, 128) * 16");
    }
}
