//! GEMM kernels from `templates/gemm.cu`: a typed [`GemmSpec`] (operands, tiles, mainloop) and an
//! [`Epilogue`] (an [`Expr`] over the accumulator and the epilogue inputs, plus how the result is
//! stored) → a [`KernelDef`].
//!
//! The kernel computes, for `A [M, K]` and `B [N, K]` row-major (both K-major, "TN"), FP8 E4M3,
//! f16 or bf16:
//! `Y[m, n] = store(value(acc = Σ_k A[m, k]·B[n, k], inputs at (m, n)))`, with f32 accumulators
//! (with FP8 `wgmma`, the tensor cores' partial sums are promoted to f32 every 128-deep k-tile,
//! or only at the end with `fast_accum`; f16/bf16 `wgmma` accumulates in f32). N, K, the tiles, the
//! pipeline depth and the epilogue are compiled in; M is a run-time argument. Tiles are filled by
//! a `stages`-deep `cp.async` ring in the 128-byte XOR-swizzled layout; the [`Mainloop`] is either
//! `mma.sync.m16n8k32` (e4m3 only) fed by `ldmatrix`, or Hopper's `wgmma.mma_async` reading the
//! same tiles through shared-memory descriptors. See `templates/gemm.cu` for the design and every
//! index mapping.
//!
//! Kernel signature, in order: `(const u8* A, const u8* B, <one const pointer per epilogue
//! input>, Y, i32 M, <one f32 per Epilogue::scalars>)`, where the inputs are `const float*` (f32)
//! or `const u16*` (f16/bf16), `Y` is `u16*` (f16/bf16), `float*` (f32) or `u8*` (E4M3), and the
//! trailing `float`s are the per-launch constants (`alpha`, `out_scale`, `out_rcp`): layers that
//! differ only in them share one kernel. Default tiles per problem:
//! [`GemmSpec::for_problem`] (H100-measured). Launch ([`grid`]): grid
//! `(ceil_div(M, tile_m) · N / tile_n, 1, 1)`, block `(32 · warps_m · warps_n, 1, 1)`,
//! [`GemmSpec::smem_bytes`] of dynamic shared memory. Nothing is launched for M = 0.

use serde::{Deserialize, Serialize};

use super::expr::Expr;
use super::kernel::{finish_kernel, Arg, KernelDef};
use super::template::{Template, TemplateError};
use crate::ir::DType;
use crate::plan::{DimExpr, ParamMeta, ParamType, Scalar, Sums};

const GEMM: Template = Template { name: "gemm.cu", text: include_str!("../../templates/gemm.cu") };

/// `templates/gemm_epilogue.cuh` below its header: the epilogue's arithmetic type, loads and stores.
const EPILOGUE_HELPERS: &str = after_header(include_str!("../../templates/gemm_epilogue.cuh"));

/// `templates/gemm_store_tile.cuh` below its header: stage 2 of the epilogue (staged tile → Y).
const STORE_TILE: Template =
    Template { name: "gemm_store_tile.cuh", text: after_header(include_str!("../../templates/gemm_store_tile.cuh")) };

/// The text of a shared `.cuh` fragment after its header comment (everything up to and including
/// the first empty line), so the fragment is inserted exactly as it stood in `gemm.cu`.
pub(crate) const fn after_header(text: &'static str) -> &'static str {
    let b = text.as_bytes();
    let mut i = 0;
    while i + 1 < b.len() {
        if b[i] == b'\n' && b[i + 1] == b'\n' {
            let (_, rest) = b.split_at(i + 2);
            // SAFETY: `rest` starts right after an ASCII newline of valid UTF-8, so it is valid UTF-8
            // (`str::split_at` is not `const` at the crate's MSRV, 1.85).
            return unsafe { std::str::from_utf8_unchecked(rest) };
        }
        i += 1;
    }
    text
}

/// Name of the template, prefix of every generated kernel name.
pub const TEMPLATE: &str = "gemm";

/// Shared memory one block may use on sm_90 (227 KiB).
pub const MAX_SMEM_BYTES: u32 = 227 * 1024;

/// Shared memory of one SM on sm_90 (228 KiB), shared by its resident blocks.
pub const SM_SMEM_BYTES: u32 = 228 * 1024;

/// Static shared memory the template may declare besides the dynamic part (2 mbarriers a stage).
const STATIC_SMEM_BYTES: u64 = 16 * 16;

/// Largest K of an INT8 GEMM: `K · 128 · 128 ≤ 2^31 − 1`, so the s32 sums of i8 products never wrap.
pub const MAX_I8_K: u32 = ((1u64 << 31) / (128 * 128) - 1) as u32;

/// Output columns each thread of the epilogue handles at once (the template's `VEC`).
const EPILOGUE_VEC: u32 = 4;

/// The element type of both operands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Operand {
    /// FP8 E4M3 bytes.
    E4M3,
    /// IEEE f16 (16-bit patterns).
    F16,
    /// bfloat16 (16-bit patterns).
    BF16,
    /// Signed 8-bit integers (SmoothQuant W8A8): `mma.sync` s8 with exact s32 accumulators, converted
    /// to f32 once (round to nearest even) before the epilogue.
    I8,
}

impl Operand {
    /// Bytes per element.
    pub fn bytes(self) -> u32 {
        match self {
            Operand::E4M3 | Operand::I8 => 1,
            Operand::F16 | Operand::BF16 => 2,
        }
    }

    /// The IR dtype.
    pub fn dtype(self) -> DType {
        match self {
            Operand::E4M3 => DType::F8E4M3,
            Operand::F16 => DType::F16,
            Operand::BF16 => DType::BF16,
            Operand::I8 => DType::I8,
        }
    }

    /// The operand type of an IR dtype, if the template has one.
    pub fn from_dtype(dtype: DType) -> Option<Self> {
        match dtype {
            DType::F8E4M3 => Some(Operand::E4M3),
            DType::F16 => Some(Operand::F16),
            DType::BF16 => Some(Operand::BF16),
            DType::I8 => Some(Operand::I8),
            _ => None,
        }
    }
}

/// The MMA instruction family of the mainloop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Mainloop {
    /// `mma.sync.m16n8k32` e4m3 fed by `ldmatrix` (E4M3 operands only): warps own
    /// `tile_m/warps_m × tile_n/warps_n` sub-tiles. On sm_90 ptxas lowers it to e4m3→f16
    /// conversions and two f16 MMAs, so it runs at the f16 `mma.sync` rate at best (native FP8
    /// `mma.sync` exists on sm_89 only).
    MmaSync,
    /// `wgmma.mma_async` m64n`tile_n`k32 e4m3 (k16 f16) with both operands in shared memory
    /// (sm_90a): warpgroups stacked along M, so `warps_m = tile_m / 16`, `warps_n = 1`, 128-byte
    /// k-tiles (`tile_k` = 128 e4m3 or 64 f16), `tile_n` ∈ {64, 128, 256}, `stages` ≥ 3. Copy
    /// completion per stage through an mbarrier that every thread's `cp.async` arrive on.
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

/// Everything about the GEMM's mainloop that the template is specialised on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GemmSpec {
    /// Output columns (rows of B); a multiple of `tile_n`.
    pub n: u32,
    /// Reduction length in elements; `k · operand bytes` a multiple of 16 (a partial last k-tile
    /// is zero-filled).
    pub k: u32,
    /// Block tile rows (M).
    pub tile_m: u32,
    /// Block tile columns (N).
    pub tile_n: u32,
    /// Block tile depth in elements: 64 or 128 bytes' worth (128 bytes with wgmma).
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
    /// Element type of A and B.
    pub operand: Operand,
    /// The MMA instruction family.
    pub mainloop: Mainloop,
    /// FP8 wgmma only: accumulate all of K in the tensor cores' FP8 accumulators (faster; they
    /// keep 14 bits of each step's sum, cf. cuBLASLt's `FAST_ACCUM`). When false, every
    /// 128-deep k-tile is summed separately by the tensor cores and then added to f32 registers
    /// ("promotion"), which bounds the error to that of one 128-term partial sum
    /// ([`GemmSpec::sums`] says exactly what each computes).
    pub fast_accum: bool,
    /// FP8 wgmma without `fast_accum`: add the tensor cores' partial sums to the f32 registers
    /// every this many 32-byte k-steps (must divide the k-steps of a tile); 0 (the default) means
    /// once per k-tile. The tensor cores' internal FP8 accumulation keeps 14 bits of a step's sum:
    /// on H100 (Nov 2026) promoting after every wgmma (1) halved the FP8 codes that differ from an
    /// exact sum after MiniLM's GeLU GEMM (0.46 % → 0.19 %) but cost a third of the speed at
    /// 8192³ (1150 → 756 TFLOP/s), and did not bring the plans' embeddings closer to the
    /// interpreter's. Sums closer to f32's take the `mma.sync` mainloop ([`GemmSpec::for_problem`]
    /// with `exact_fp8`), at a third of the speed.
    pub promote_steps: u32,
}

impl GemmSpec {
    /// The default `mma.sync` (E4M3) configuration for an `N × K` weight: the largest block tile
    /// the shape allows (128×256, else 128×128, else 64×64; `tile_k` 128, else 64), four stages.
    /// Portable (sm_89+), but on sm_90 about 3.5× slower than [`GemmSpec::wgmma_for_shape`].
    /// Validity is checked by [`GemmSpec::validate`], not here.
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
            operand: Operand::E4M3,
            mainloop: Mainloop::MmaSync,
            fast_accum: false,
            promote_steps: 0,
        }
    }

    /// The exact-accumulation (promoted) FP8 `wgmma` configuration for an `N × K` weight, the one
    /// to use on sm_90. Chosen from H100 measurements at M = 4096 (`qfuse-gemm-bench`, Nov 2026):
    /// N ≥ 2048 and a multiple of 256: 128×256×128, 2 warpgroups, 4 stages (1,090 TFLOP/s at
    /// 4096³, 1,145 at 8192³); other N ≥ 1024, multiple of 128: 128×128×128, 3 stages, two blocks
    /// per SM (395 at 4096×1536×384); smaller N: 64×64×128, 4 stages (456 at 4096×384×1536).
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

    /// The f16 `wgmma` configuration for an `N × K` weight: the FP8 tiles of
    /// [`GemmSpec::wgmma_for_shape`] (the same bytes per k-tile: 64 f16), accumulating in f32.
    pub fn wgmma_f16_for_shape(n: u32, k: u32) -> Self {
        Self { operand: Operand::F16, tile_k: 64, ..Self::wgmma_for_shape(n, k) }
    }

    /// As [`GemmSpec::wgmma_f16_for_shape`] with bf16 operands.
    pub fn wgmma_bf16_for_shape(n: u32, k: u32) -> Self {
        Self { operand: Operand::BF16, ..Self::wgmma_f16_for_shape(n, k) }
    }

    /// The default (wgmma) configuration for `operand` and an `N × K` weight.
    pub fn default_for(operand: Operand, n: u32, k: u32) -> Self {
        match operand {
            Operand::E4M3 => Self::wgmma_for_shape(n, k),
            Operand::F16 => Self::wgmma_f16_for_shape(n, k),
            Operand::BF16 => Self::wgmma_bf16_for_shape(n, k),
            Operand::I8 => Self::int8_for_shape(n, k),
        }
    }

    /// The INT8 configuration for an `N × K` weight: the `mma.sync` tiles of
    /// [`GemmSpec::for_shape`] with s8 operands (Hopper's s8 `wgmma` is not used yet).
    pub fn int8_for_shape(n: u32, k: u32) -> Self {
        Self { operand: Operand::I8, ..Self::for_shape(n, k) }
    }

    /// The default configuration for `operand`, an `N × K` weight and at most `max_m` rows: as
    /// [`GemmSpec::default_for`], except that an N below 1024 (a multiple of 128) with enough
    /// rows for a full wave of 128×128 tiles at two blocks per SM (132 SMs) takes those tiles
    /// instead of 64×64. H100, MiniLM shapes (Nov 2026): at M = 32768, 128×128 ×2 ran FP8
    /// 384×384 at 363 vs 291 TFLOP/s and 384×1536 at 752 vs 568 (f16: 261 vs 213, 407 vs 316);
    /// at M = 4096 (96 such tiles) 64×64 stays ahead (163 vs 148).
    ///
    /// With `exact_fp8`, an E4M3 GEMM takes the `mma.sync` mainloop instead ([`GemmSpec::for_shape`]):
    /// on sm_90 ptxas turns it into exact E4M3→f16 conversions and f16 tensor-core MMAs, whose
    /// sums (25 alignment bits per 16 products) lie closer to f32 sums than the promoted FP8
    /// wgmma's (14 bits kept per 32 products, then f32), at about a third of the speed; either
    /// way [`GemmSpec::sums`] says what the kernel computes.
    /// INT8 always takes `mma.sync` (its s32 sums are exact), with the exact-FP8 tiles.
    pub fn for_problem(operand: Operand, n: u32, k: u32, max_m: u64, exact_fp8: bool) -> Self {
        if (exact_fp8 && operand == Operand::E4M3) || operand == Operand::I8 {
            // H100, M = 4096 (Nov 2026): 64×128 tiles (2×2 warps) ran MiniLM's 384×384, 1536×384
            // and 384×1536 at 108, 188 and 194 TFLOP/s; the larger for_shape tiles leave SMs idle
            // at N ≤ 1536 (384 × 128×128 tiles is 96 blocks on 132 SMs).
            let s = Self { operand, ..Self::for_shape(n, k) };
            if n <= 1536 && n % 128 == 0 {
                return Self { tile_m: 64, tile_n: 128, warps_m: 2, warps_n: 2, ..s };
            }
            return s;
        }
        let base = Self::default_for(operand, n, k);
        let big_tiles = max_m.div_ceil(128) * u64::from(n / 128);
        if base.tile_n == 64 && n % 128 == 0 && big_tiles >= 2 * 132 {
            return Self { tile_m: 128, tile_n: 128, stages: 3, warps_m: 8, ctas_per_sm: 2, ..base };
        }
        base
    }

    /// Threads per block.
    pub fn threads(&self) -> u32 {
        32 * self.warps_m * self.warps_n
    }

    /// Bytes of K per k-tile (a shared-memory tile row).
    pub fn tile_k_bytes(&self) -> u32 {
        self.tile_k * self.operand.bytes()
    }

    /// Accumulates all of K in the wgmma accumulators (FP8 fast accumulation, or f16/bf16).
    fn direct_accumulation(&self) -> bool {
        self.fast_accum || matches!(self.operand, Operand::F16 | Operand::BF16)
    }

    /// The 32-byte k-steps between two promotions of FP8 wgmma partial sums (the template's
    /// `PROMOTE_STEPS`): `promote_steps`, or with 0 the k-steps of a whole k-tile.
    fn promote_interval(&self) -> u32 {
        if self.promote_steps == 0 {
            self.tile_k_bytes() / 32
        } else {
            self.promote_steps
        }
    }

    /// How the kernel sums each output element's products, for the plan's record
    /// ([`crate::plan::PlanMeta::launch_sums`]); `None` where no measured tensor-core model
    /// applies: exact s32 sums of i8 products, and bf16 `wgmma`, whose sums were never probed
    /// (the f16 model aligns operands below 2^-14 as if they were 2^-14, which bf16's exponent
    /// range would break), so both are judged as f32 sums.
    /// - `mma.sync` E4M3: none. ptxas runs it as f16 HMMAs, but the f16 model chained in k order
    ///   is not how they sum: on an H100 (session 15, `fp8-exact` MiniLM plan) 2 to 5 of 178,176
    ///   outputs per GEMM differed from it, so these GEMMs keep the f32 tolerance check;
    /// - f16 `wgmma` (k16), all of K in the accumulators: the H100's f16 tensor-core sums;
    /// - FP8 `wgmma` with `fast_accum`: the FP8 tensor-core sums chained over all of K;
    /// - FP8 `wgmma` with promotion: every [`Self::promote_interval`] k-steps (128 elements per
    ///   k-tile by default) a fresh tensor-core partial, added to the f32 registers with an IEEE
    ///   add (gemm.cu's `mainloop_wgmma`, `acc += part`).
    pub fn sums(&self) -> Option<Sums> {
        use crate::plan::TensorCoreModel::{H100E4M3, H100F16};
        match (self.operand, self.mainloop.is_wgmma()) {
            (Operand::F16, true) => Some(Sums::TensorCore(H100F16)),
            (Operand::E4M3, true) if self.fast_accum => Some(Sums::TensorCore(H100E4M3)),
            (Operand::E4M3, true) => Some(Sums::Promoted { model: H100E4M3, every: self.promote_interval() * 32 / self.operand.bytes() }),
            (Operand::E4M3, false) | (Operand::I8 | Operand::BF16, _) | (Operand::F16, false) => None,
        }
    }

    /// Dynamic shared memory: the cp.async ring or the staged f32 output tile (rows padded by 8
    /// floats), whichever is larger, plus 1024 bytes of slack for aligning the tiles to the
    /// swizzle period.
    pub fn smem_bytes(&self) -> u64 {
        let ring = u64::from(self.stages) * u64::from(self.tile_m + self.tile_n) * u64::from(self.tile_k_bytes());
        let out = u64::from(self.tile_m) * (u64::from(self.tile_n) + 8) * 4;
        ring.max(out) + 1024
    }

    /// f32 accumulator registers per thread: the warp tile's, plus the partial-sum slice of
    /// promoted wgmma accumulation (128 columns, or 64 under a budget below 200 registers).
    pub fn accumulator_registers(&self) -> u32 {
        let (wm, wn) = (self.tile_m / self.warps_m.max(1), self.tile_n / self.warps_n.max(1));
        let main = wm * wn / 32;
        if !self.mainloop.is_wgmma() || self.direct_accumulation() {
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
            ("tile_k", s.tile_k),
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
        let eb = s.operand.bytes();
        if s.n > i32::MAX as u32 || u64::from(s.k) * u64::from(eb) > i32::MAX as u64 {
            return bad("n and the bytes of a row of k must fit in i32".into());
        }
        let tk = s.tile_k_bytes();
        if tk != 64 && tk != 128 {
            return bad(format!("tile_k {} is {tk} bytes, not 64 or 128 (the swizzle assumes 64- or 128-byte rows)", s.tile_k));
        }
        if s.n % s.tile_n != 0 {
            return bad(format!("tile_n {} does not divide n {}", s.tile_n, s.n));
        }
        if (s.k * eb) % 16 != 0 {
            return bad(format!("k {} is not a multiple of {} elements (16-byte copies)", s.k, 16 / eb));
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
        let chunk_split = |rows: u32| (rows * tk / 16) % threads == 0;
        if threads % (tk / 16) != 0 || !chunk_split(s.tile_m) || !chunk_split(s.tile_n) {
            return bad(format!("{threads} threads do not split the 16-byte copies of a tile evenly"));
        }
        if (threads / (tk / 16) * tk) % 1024 != 0 {
            return bad(format!("{threads} threads: a copy pass must cover whole 1024-byte swizzle periods"));
        }
        if s.tile_n % (4 * EPILOGUE_VEC) != 0 || (s.tile_m * s.tile_n / EPILOGUE_VEC) % threads != 0 {
            return bad(format!("{threads} threads do not split the output tile's 4-column chunks evenly"));
        }
        if (s.tile_m * tk) % 1024 != 0 || (s.tile_n * tk) % 1024 != 0 {
            return bad("tile_m·tile_k and tile_n·tile_k must be multiples of 1024 bytes (swizzle alignment)".into());
        }
        if s.smem_bytes() + STATIC_SMEM_BYTES > u64::from(MAX_SMEM_BYTES) {
            return bad(format!("{} bytes of shared memory (+{STATIC_SMEM_BYTES} static) exceed {MAX_SMEM_BYTES}", s.smem_bytes()));
        }
        if s.operand == Operand::I8 {
            if s.mainloop.is_wgmma() {
                return bad("i8 operands take the mma.sync mainloop (there is no s8 wgmma variant yet)".into());
            }
            if s.k > MAX_I8_K {
                return bad(format!("k {} exceeds {MAX_I8_K}: sums of i8 products could overflow the s32 accumulators", s.k));
            }
        }
        if s.mainloop.is_wgmma() {
            if tk != 128 || s.warps_n != 1 || s.warps_m * 16 != s.tile_m || s.warps_m % 4 != 0 {
                return bad(
                    "wgmma needs 128-byte k-tiles (tile_k = 128 e4m3 or 64 f16), warps_n = 1 and whole warpgroups along M (warps_m = tile_m / 16, a multiple of 4)"
                        .into(),
                );
            }
            if ![64, 128, 256].contains(&s.tile_n) {
                return bad(format!("wgmma tile_n {} must be 64, 128 or 256", s.tile_n));
            }
            if s.stages < 3 {
                return bad("wgmma needs at least 3 stages".into());
            }
            if s.promote_steps != 0 && (s.tile_k_bytes() / 32) % s.promote_steps != 0 {
                return bad(format!("promote_steps {} must divide the {} k-steps of a tile", s.promote_steps, s.tile_k_bytes() / 32));
            }
            if s.fast_accum && s.operand != Operand::E4M3 {
                return bad("fast_accum is an FP8 option (f16/bf16 wgmma accumulates in f32)".into());
            }
        } else if !matches!(s.operand, Operand::E4M3 | Operand::I8) {
            return bad("the mma.sync mainloop takes 8-bit operands only, e4m3 or i8 (use wgmma for f16/bf16)".into());
        } else if tk / 32 % 2 != 0 {
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
        Ok(())
    }

    /// Rejects an M the kernel cannot run: one past `i32::MAX` or a grid too large.
    pub fn check_m(&self, m: u64) -> Result<(), GemmError> {
        let grid = m.div_ceil(u64::from(self.tile_m.max(1))) * u64::from(self.n / self.tile_n.max(1));
        if m > i32::MAX as u64 || grid > i32::MAX as u64 {
            return Err(GemmError::Invalid { spec: *self, reason: format!("M = {m} is too large for this kernel") });
        }
        Ok(())
    }
}

/// Which element of an epilogue input goes with output element `(m, n)` (`m` the flattened row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Index {
    /// A per-column vector `[N]` (e.g. a bias, `b_scale`): element `n`.
    PerColumn,
    /// A per-row vector `[.., M, 1]` (e.g. `a_scale`): element `m`.
    PerRow,
    /// A tensor shaped like the output `[.., M, N]` (e.g. a residual): element `m·N + n`.
    Full,
    /// One element for all of the output.
    Single,
}

/// A tensor the epilogue reads besides the accumulator: one kernel parameter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EpilogueInput {
    /// Parameter name (a C identifier); the per-element value is `<name>_v` ([`Self::value`]).
    pub name: String,
    /// Storage dtype: f32, f16 or bf16 (widened to f32 exactly).
    pub dtype: DType,
    /// Which element pairs with each output element.
    pub index: Index,
}

impl EpilogueInput {
    /// The element of this input at the current output position, as an f32 expression.
    pub fn value(&self) -> Expr {
        Expr::var(format!("{}_v", self.name))
    }
}

/// How the epilogue's final f32 value is stored.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Store {
    /// As `f32`, `f16` or `bf16` (RNE; exact when the value is already rounded to that dtype).
    Float(DType),
    /// FP8 E4M3 bytes, per-tensor static quantization: `qf_quantize_e4m3(x, scale)` (a true
    /// division, RNE, saturating).
    E4M3 {
        /// The dequantization scale.
        scale: f32,
    },
    /// Signed 8-bit integers, per-tensor static quantization: `qf_quantize_i8(x, scale)` (a true
    /// division, RNE, saturating to [-128, 127], NaN → 0).
    I8 {
        /// The dequantization scale.
        scale: f32,
    },
}

impl Store {
    /// The dtype of the stored output.
    pub fn dtype(&self) -> DType {
        match self {
            Store::Float(d) => *d,
            Store::E4M3 { .. } => DType::F8E4M3,
            Store::I8 { .. } => DType::I8,
        }
    }
}

/// The epilogue: per output element, `store(value)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Epilogue {
    /// Tensors read per element, in kernel-parameter order (after A and B).
    pub inputs: Vec<EpilogueInput>,
    /// The f32 value stored, over the variable `acc` (the f32 accumulator Σ_k A·B) and the
    /// inputs' [`EpilogueInput::value`]s.
    pub value: Expr,
    /// How it is stored.
    pub store: Store,
    /// With two or more entries the kernel is a segmented GEMM (`qmatmul_split`): column range
    /// `i` has its own epilogue and result `Y<i>`, and `inputs` are the kernel's epilogue pointers
    /// (shared ones, then each segment's renamed); `value` and `store` are unused
    /// ([`super::segments`]).
    pub segments: Vec<super::segments::EpilogueSegment>,
    /// `Some(piece)`: a GLU GEMM (`qmatmul_glu`, [`super::glu`]): the weight's rows, hence the
    /// staged tile's columns, alternate in pieces of `piece` between the gate and the up
    /// projection; `value` computes output column `n` from the gate's accumulator `acc` and the
    /// up projection's `acc_up` of that column, and a shared per-column input (`b_scale`) is read
    /// in the weight's columns: `b_scale_v` at the gate's, `b_scale_up_v` at the up's. The
    /// kernel's `N` is twice the result's.
    pub glu: Option<u32>,
}

/// Names the template uses itself, unavailable to epilogue inputs.
const RESERVED: [&str; 12] = ["A", "B", "Y", "M", "N", "K", "acc", "acc4", "tile", "y", "mn", "smem"];

impl Epilogue {
    /// `Y = f16(f16(alpha·acc) + bias[n])` (bias optional): the classic bias epilogue.
    pub fn bias_f16(alpha: f32, bias: bool) -> Self {
        let mut inputs = Vec::new();
        let mut value = Expr::var("acc").mul(Expr::lit(alpha)).round(DType::F16);
        if bias {
            let b = EpilogueInput { name: "bias".into(), dtype: DType::F16, index: Index::PerColumn };
            value = value.add(b.value()).round(DType::F16);
            inputs.push(b);
        }
        Epilogue { inputs, value, store: Store::Float(DType::F16), segments: vec![], glu: None }
    }

    /// The kernel's result parameters and their dtypes: `Y`, or `Y0, Y1, …` per segment.
    pub fn outputs(&self) -> Vec<(String, DType)> {
        if self.segments.is_empty() {
            return vec![("Y".into(), self.store.dtype())];
        }
        self.segments.iter().enumerate().map(|(i, s)| (format!("Y{i}"), s.epilogue.store.dtype())).collect()
    }

    /// The per-launch `f32` values, in kernel-parameter order (after `M`): the value's
    /// [`Expr::Param`]s (e.g. `alpha`), then a quantized store's `out_scale` and `out_rcp`
    /// (RN(1 / scale), which the store multiplies by). Passed at launch as `Scalar::F32`, so
    /// GEMMs that differ only in these values share one kernel.
    pub fn scalars(&self) -> Vec<(String, f32)> {
        if !self.segments.is_empty() {
            return super::segments::scalars(&self.segments);
        }
        let mut out = self.value.params();
        if let Store::E4M3 { scale } | Store::I8 { scale } = self.store {
            out.extend([("out_scale".to_string(), scale), ("out_rcp".to_string(), 1.0 / scale)]);
        }
        out
    }

    /// Checks names, dtypes and that the value reads exactly `acc` and the inputs.
    pub fn validate(&self) -> Result<(), String> {
        if !self.segments.is_empty() {
            return super::segments::validate(self);
        }
        let ident = |s: &str| {
            s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        if let Some(piece) = self.glu {
            super::glu::check_piece(piece)?;
        }
        let mut vars = vec!["acc".to_string()];
        vars.extend(self.glu.map(|_| "acc_up".to_string()));
        for (i, inp) in self.inputs.iter().enumerate() {
            if !ident(&inp.name) || RESERVED.contains(&inp.name.as_str()) || inp.name.starts_with("qf_") {
                return Err(format!("epilogue input name `{}` is not a free C identifier", inp.name));
            }
            if self.inputs[..i].iter().any(|o| o.name == inp.name) {
                return Err(format!("epilogue input `{}` given twice", inp.name));
            }
            if !inp.dtype.is_wide_float() {
                return Err(format!("epilogue input `{}` is {}; only f32, f16 and bf16 are read", inp.name, inp.dtype));
            }
            vars.push(format!("{}_v", inp.name));
            if self.glu.is_some() && super::glu::weight_columns(inp) {
                vars.push(format!("{}_up_v", inp.name));
            }
        }
        for (name, _) in self.value.params() {
            if RESERVED.contains(&name.as_str()) || name.starts_with("qf_") || name.starts_with("out_") || vars.contains(&name) {
                return Err(format!("epilogue parameter name `{name}` is not a free C identifier"));
            }
            if self.inputs.iter().any(|i| i.name == name) {
                return Err(format!("epilogue parameter `{name}` is also an input"));
            }
        }
        let used = self.value.vars();
        if let Some(v) = used.iter().find(|v| !vars.iter().any(|k| k == *v)) {
            return Err(format!("the epilogue value reads `{v}`, which is neither `acc` nor an input"));
        }
        if let Some(inp) = self.inputs.iter().find(|i| !used.contains(&format!("{}_v", i.name).as_str())) {
            return Err(format!("epilogue input `{}` is never read", inp.name));
        }
        match self.store {
            Store::Float(d) if !d.is_wide_float() => {
                Err(format!("cannot store {d} as a float; quantized outputs use Store::E4M3 or Store::I8"))
            }
            Store::E4M3 { scale } | Store::I8 { scale } if !(scale.is_normal() && scale > 0.0 && (1.0 / scale).is_normal()) => {
                Err(format!("output scale {scale} is not a positive normal f32 with a normal reciprocal"))
            }
            _ => Ok(()),
        }
    }
}

/// What can go wrong generating a GEMM kernel.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GemmError {
    /// The spec breaks a constraint of the template.
    #[error("invalid GEMM spec ({reason}): {spec:?}")]
    Invalid { spec: GemmSpec, reason: String },
    /// The epilogue is malformed (a qfuse bug).
    #[error("invalid GEMM epilogue: {0}")]
    Epilogue(String),
    /// The template and the parameters disagree (a qfuse bug).
    #[error(transparent)]
    Template(#[from] TemplateError),
}

/// The launch grid for `m` rows: `(ceil_div(m, tile_m) · N / tile_n, 1, 1)`.
pub fn grid(spec: &GemmSpec, m: DimExpr) -> [DimExpr; 3] {
    let tiles_n = u64::from(spec.n / spec.tile_n.max(1));
    [m.ceil_div(u64::from(spec.tile_m.max(1))).mul(DimExpr::Const(tiles_n)), DimExpr::Const(1), DimExpr::Const(1)]
}

/// The kernel's parameters: `A, B`, the epilogue inputs, `Y`, `M`, the epilogue's scalars.
pub fn kernel_params(epi: &Epilogue) -> Vec<ParamMeta> {
    let ptr = |name: &str| ParamMeta { name: name.into(), ty: ParamType::Ptr };
    let mut out = vec![ptr("A"), ptr("B")];
    out.extend(epi.inputs.iter().map(|i| ptr(&i.name)));
    out.extend(epi.outputs().iter().map(|(y, _)| ptr(y)));
    out.push(ParamMeta { name: "M".into(), ty: ParamType::I32 });
    out.extend(scalar_params(epi));
    out
}

/// The `f32` parameters of the epilogue's [`Epilogue::scalars`], which end every GEMM signature.
pub(crate) fn scalar_params(epi: &Epilogue) -> Vec<ParamMeta> {
    epi.scalars().into_iter().map(|(name, _)| ParamMeta { name, ty: ParamType::F32 }).collect()
}

/// The launch arguments of the epilogue's [`Epilogue::scalars`]: their exact values.
pub fn scalar_args(epi: &Epilogue) -> Vec<Arg> {
    epi.scalars().into_iter().map(|(_, v)| Arg::Scalar(Scalar::F32(v))).collect()
}

pub(crate) fn c_type(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "float",
        DType::F8E4M3 | DType::F8E5M2 => "uint8_t",
        DType::I8 => "int8_t",
        _ => "uint16_t",
    }
}

pub(crate) fn load_suffix(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        _ => "f16",
    }
}

/// Renders the kernel for `spec` and `epi`, with `m` (an expression over the shape symbols) the
/// number of rows for the grid; fails if either is invalid.
pub fn render(spec: &GemmSpec, epi: &Epilogue, m: DimExpr) -> Result<KernelDef, GemmError> {
    spec.validate()?;
    epi.validate().map_err(GemmError::Epilogue)?;
    let flag = |b: bool| if b { "true" } else { "false" }.to_string();
    let mut params = vec!["const uint8_t* __restrict__ A".to_string(), "const uint8_t* __restrict__ B".to_string()];
    params.extend(epilogue_params(epi));
    let [helpers, store_tile] = epilogue_values(epi)?;
    let source = GEMM.render(&[
        ("prelude", super::prelude()),
        // Kept for finish_kernel, which names the kernel by the hash of this source.
        ("kernel_name", "{{kernel_name}}".into()),
        ("operand", format!("{:?}", spec.operand)),
        ("wide", if spec.operand == Operand::BF16 { "bf16" } else { "f16" }.into()),
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
        ("promote_steps", spec.promote_interval().to_string()),
        ("params", params.join(", ")),
        helpers,
        store_tile,
    ])?;
    let smem_bytes = u32::try_from(spec.smem_bytes()).expect("validated: at most MAX_SMEM_BYTES");
    let kernel = finish_kernel(TEMPLATE, source, grid(spec, m), [spec.threads(), 1, 1], smem_bytes, kernel_params(epi));
    Ok(KernelDef { sums: spec.sums(), ..kernel })
}

/// The C parameters of a GEMM kernel after its operands: one `const` pointer per epilogue input,
/// `Y` (the stored dtype), `int M` and one `float` per [`Epilogue::scalars`], in
/// [`kernel_params`] order.
pub(crate) fn epilogue_params(epi: &Epilogue) -> Vec<String> {
    let mut params: Vec<String> = epi.inputs.iter().map(|inp| format!("const {}* __restrict__ {}", c_type(inp.dtype), inp.name)).collect();
    params.extend(epi.outputs().into_iter().map(|(y, d)| format!("{}* __restrict__ {y}", c_type(d))));
    params.push("int M".into());
    params.extend(epi.scalars().into_iter().map(|(name, _)| format!("float {name}")));
    params
}

/// The template values `epilogue` (the shared helpers of `gemm_epilogue.cuh`, inserted at
/// namespace scope) and `store_tile` (stage 2 of `gemm_store_tile.cuh` specialised for `epi`,
/// inserted in the kernel body after the f32 tile is staged) that every GEMM template takes. The
/// epilogue must be valid ([`Epilogue::validate`]).
pub(crate) fn epilogue_values(epi: &Epilogue) -> Result<[(&'static str, String); 2], GemmError> {
    let store_tile = match (epi.segments.is_empty(), epi.glu) {
        (false, _) => super::segments::store_chain(epi)?,
        (true, Some(_)) => super::glu::store_tile(epi)?,
        (true, None) => store_tile(epi)?,
    };
    Ok([("epilogue", EPILOGUE_HELPERS.to_string()), ("store_tile", store_tile)])
}

/// Stage 2 of `gemm_store_tile.cuh` specialised for the unsegmented `epi`.
pub(crate) fn store_tile(epi: &Epilogue) -> Result<String, TemplateError> {
    let mut lines = InputLines::default();
    for inp in &epi.inputs {
        lines.push(inp, &inp.name, index_offset(inp.index));
    }
    render_store_tile(epi, lines, "col")
}

/// The element of an input of `index` at output position `(m, n)`, over the stage-2 variables.
pub(crate) fn index_offset(index: Index) -> &'static str {
    match index {
        Index::PerColumn => "n",
        Index::Full => "mn",
        Index::PerRow => "m",
        Index::Single => "0",
    }
}

/// The per-input lines of stage 2: declarations of the batch's values, their loads at (m, n ..
/// n+3), and the per-element `qf_rn_f32` variables the value reads.
#[derive(Default)]
pub(crate) struct InputLines {
    decls: Vec<String>,
    loads: Vec<String>,
    elems: Vec<String>,
}

impl InputLines {
    /// Reads `inp` at element `offset` of its pointer into the element variable `<var>_v`.
    pub(crate) fn push(&mut self, inp: &EpilogueInput, var: &str, offset: &str) {
        let kind = match inp.index {
            Index::PerColumn | Index::Full => "ld4",
            Index::PerRow | Index::Single => "ldb4",
        };
        let load = format!("qf_{kind}_{}({} + {offset}, {var}_c[u]);", load_suffix(inp.dtype), inp.name);
        self.push_raw(var, &load);
    }

    /// Declares the batch values `<var>_c`, filled by the statement `load`, read as `<var>`'s
    /// element variable `<var>_v` (or `acc_up` for `var` = `acc_up`).
    pub(crate) fn push_raw(&mut self, var: &str, load: &str) {
        let element = if var == "acc_up" { var.to_string() } else { format!("{var}_v") };
        self.decls.push(format!("        float {var}_c[OUT_BATCH][4];"));
        self.loads.push(format!("                {load}"));
        self.elems.push(format!("                    const qf_rn_f32 {element} = {var}_c[u][j];"));
    }
}

/// Stage 2 for `epi` with its input lines, the accumulator read at staged-tile column
/// `tile_col` (an expression over the chunk's first output column `col`).
pub(crate) fn render_store_tile(epi: &Epilogue, lines: InputLines, tile_col: &str) -> Result<String, TemplateError> {
    let store = match epi.store {
        Store::Float(d) => format!("qf_st4_{}(Y + mn, y)", load_suffix(d)),
        // The scale and its reciprocal are the parameters `out_scale`, `out_rcp` (Epilogue::scalars).
        Store::E4M3 { .. } => "qf_st4_e4m3(Y + mn, y, out_scale, out_rcp)".to_string(),
        Store::I8 { .. } => "qf_st4_i8(Y + mn, y, out_scale, out_rcp)".to_string(),
    };
    STORE_TILE.render(&[
        ("declare_inputs", lines.decls.join("\n")),
        ("load_inputs", lines.loads.join("\n")),
        ("element_inputs", lines.elems.join("\n")),
        ("tile_col", tile_col.to_string()),
        ("value", epi.value.to_cuda()),
        ("store", store),
    ])
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
        for (n, k) in [(8192, 8192), (4096, 4096), (1536, 384), (384, 1536), (384, 384), (192, 384), (64, 16)] {
            for s in [GemmSpec::wgmma_for_shape(n, k), GemmSpec::wgmma_f16_for_shape(n, k), GemmSpec::wgmma_bf16_for_shape(n, k)] {
                s.validate().unwrap_or_else(|e| panic!("{n}x{k}: {e}"));
                assert!(!s.fast_accum && s.mainloop == Mainloop::Wgmma);
                assert_eq!(s.tile_k_bytes(), 128);
            }
        }
        assert_eq!(GemmSpec::wgmma_for_shape(4096, 4096).tile_n, 256);
        assert_eq!(GemmSpec::wgmma_for_shape(1536, 384).ctas_per_sm, 2);
        assert_eq!(GemmSpec::wgmma_for_shape(384, 384).tile_m, 64);
        assert_eq!(GemmSpec::wgmma_f16_for_shape(384, 384).tile_k, 64);
        for op in [Operand::E4M3, Operand::F16, Operand::BF16] {
            let small = GemmSpec::for_problem(op, 384, 1536, 4096, false);
            assert_eq!(small, GemmSpec::default_for(op, 384, 1536));
            let big = GemmSpec::for_problem(op, 384, 1536, 64 * 512, false);
            assert_eq!((big.tile_m, big.tile_n, big.ctas_per_sm, big.operand), (128, 128, 2, op));
            big.validate().expect("valid");
            assert_eq!(GemmSpec::for_problem(op, 192, 384, 1 << 20, false).tile_n, 64, "N = 192 has no 128-wide tiles");
            assert_eq!(GemmSpec::for_problem(op, 1536, 384, 1 << 20, false), GemmSpec::default_for(op, 1536, 384));
        }
    }

    #[test]
    fn grid_counts_partial_m_tiles() {
        let spec = GemmSpec::for_shape(4096, 4096);
        let g = grid(&spec, DimExpr::sym("M"));
        let at = |m: u64| g[0].eval_with(&[("M".into(), m)]).expect("evaluates");
        assert_eq!((at(4096), at(4097), at(0)), (32 * 16, 33 * 16, 0));
        assert_eq!(g[0].to_string(), "ceil_div(M, 128)*16");
        let k = render(&spec, &Epilogue::bias_f16(0.5, true), DimExpr::sym("M")).expect("renders");
        assert_eq!(k.grid, g);
        let names: Vec<&str> = k.params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["A", "B", "bias", "Y", "M"]);
    }

    /// The template's `qf_div_by_scale` (Markstein's corrected reciprocal product) is IEEE division
    /// for every f16 value and a spread of f32 values over the scales an output quantize uses.
    #[test]
    fn corrected_reciprocal_division_is_ieee_division() {
        let div = |x: f32, s: f32, r: f32| {
            let q0 = x * r;
            let e = (-q0).mul_add(s, x);
            let q1 = e.mul_add(r, q0);
            if x != 0.0 && q0.abs() <= f32::MAX {
                q1
            } else {
                q0
            }
        };
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut scales: Vec<f32> = vec![0.05, 0.045_479_912, 1.0 / 448.0, 3.0, 1.0e-3, 7.0e-5, 123.456];
        scales.extend((0..60).map(|_| f32::from_bits(0x3000_0000 + (next() as u32 % 0x1800_0000))));
        for &s in &scales {
            let r = 1.0 / s;
            for bits in 0..=u16::MAX {
                let x = half::f16::from_bits(bits).to_f32();
                let (want, got) = (x / s, div(x, s, r));
                assert!(want.to_bits() == got.to_bits() || (want.is_nan() && got.is_nan()), "{x:e} / {s:e}: {want:e} vs {got:e}");
            }
            for _ in 0..20_000 {
                let x = f32::from_bits(0x2000_0000 + (next() as u32 % 0x3f00_0000)) * if next() & 1 == 0 { 1.0 } else { -1.0 };
                assert_eq!((x / s).to_bits(), div(x, s, r).to_bits(), "{x:e} / {s:e}");
            }
        }
    }

    #[test]
    fn malformed_epilogues_are_errors() {
        let spec = GemmSpec::wgmma_for_shape(384, 384);
        let m = || DimExpr::sym("M");
        let mut e = Epilogue::bias_f16(1.0, true);
        e.inputs[0].name = "Y".into();
        assert!(matches!(render(&spec, &e, m()), Err(GemmError::Epilogue(r)) if r.contains("free C identifier")));
        let mut e = Epilogue::bias_f16(1.0, false);
        e.inputs.push(EpilogueInput { name: "r".into(), dtype: DType::F16, index: Index::Full });
        assert!(matches!(render(&spec, &e, m()), Err(GemmError::Epilogue(r)) if r.contains("never read")));
        let e = Epilogue { inputs: vec![], value: Expr::var("x"), store: Store::Float(DType::F16), segments: vec![], glu: None };
        assert!(matches!(render(&spec, &e, m()), Err(GemmError::Epilogue(r)) if r.contains("neither")));
        let e = Epilogue { inputs: vec![], value: Expr::var("acc"), store: Store::E4M3 { scale: 0.0 }, segments: vec![], glu: None };
        assert!(matches!(render(&spec, &e, m()), Err(GemmError::Epilogue(r)) if r.contains("positive normal")));
    }
}
