//! Skinny GEMMs (`M ≤ 16` rows, decode): `templates/gemm_skinny.cu`, whose header gives the
//! design and every index mapping. A `qmatmul` whose row count can be at most [`MAX_ROWS`] gets
//! this kernel, guarded by `M ≤ 16` ([`Guard::RowsAtMost`]) next to the tiled GEMM guarded by
//! `M > 16` when M may be larger (`qmatmul::GemmPlan::launches`, `wonly::WonlyPlan::launches`).
//!
//! Semantics: exactly the tiled kernels' (`qmatmul`'s and `wonly`'s module docs): `acc = Σ_k a·w`
//! in f32 (i8: exact s32 sums, converted to f32 once with RNE), weight-only codes dequantized as
//! `w = ACT((q − z)·s)` in f32 then rounded to the activation dtype (the shared
//! `templates/gemm_dequant.cuh`), then the same [`Epilogue`] [`Expr`](crate::codegen::expr::Expr)
//! printed into the shared epilogue code. Only the order of the f32 sums differs.
//!
//! Design: memory-bound streaming. Block `b` owns `16 · col_tiles` output columns; its warps
//! split each weight row along K in 64-byte steps (the last may be partial) and stream them with 16-byte
//! `ld.global.nc.L1::no_allocate` loads, `2 · col_tiles · unroll` (= 8) loads in flight per
//! lane, with the weight as the A operand of `mma.sync` (16 columns per MMA) and the M ≤ 16
//! activation rows as its n8 B operand(s). Partial sums meet in shared memory and are added in
//! warp order (deterministic). No split-K across blocks: [`SkinnySpec::for_shape`] picks the
//! columns per block and the warps per block so that `N / (16 · col_tiles)` blocks fill the 132
//! SMs of an H100 with ≥ 16 warps each at the Llama-3-8B shapes (`N ≥ 4096`), which needs no
//! workspace and no second pass.
//!
//! Kernel signature: the tiled kernel's, so both alternatives take the same arguments:
//! `A, B, [SCALE, [ZP]], <epilogue inputs>, Y, int M, <epilogue f32s>`. Grid `(N / BN, 1, 1)`,
//! independent of M. With a norm prologue ([`super::prologue`]) `A` is the norm's input and
//! `GAMMA, float QSCALE` end the list.

use crate::codegen::gemm::{self, Epilogue, Operand};
use crate::codegen::kernel::{finish_kernel, Arg, KernelDef, Launch};
use crate::codegen::ops::common::{dtype_trait, f32_lit, OPS};
use crate::codegen::ops::prologue::{NormPrologue, PrologueSpec};
use crate::codegen::ops::wonly::{self, Dequant, Zero};
use crate::codegen::template::{Template, TemplateError};
use crate::ir::DType;
use crate::plan::{DimExpr, Guard, ParamMeta, ParamType};

const SKINNY: Template = Template { name: "gemm_skinny.cu", text: include_str!("../../../templates/gemm_skinny.cu") };

/// Name of the template, prefix of every generated kernel name.
pub const TEMPLATE: &str = "gemm_skinny";

/// Largest row count the skinny kernel serves (the tiled GEMM takes the rest).
pub const MAX_ROWS: u64 = 16;

/// SMs of an H100 / H200.
const SMS: u64 = 132;

/// Warps per SM the default specs aim for (bytes in flight: 16 warps × 32 lanes × 128 bytes).
const WARPS_PER_SM: u64 = 16;

/// Weight-row bytes of one warp step (4 lanes × 16 bytes).
const STEP_BYTES: u64 = 64;

/// Weight-row bytes one lane loads at a time; a row is whole chunks (its last step may be partial).
const CHUNK_BYTES: u64 = 16;

/// The operand types of a skinny GEMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operands {
    /// f16 × f16 or bf16 × bf16 (the [`Operand`]).
    Wide(Operand),
    /// FP8 E4M3 × E4M3 (converted exactly to f16 for the MMAs).
    E4M3,
    /// i8 × i8 (exact s32 sums).
    I8,
    /// f16 / bf16 activations × weight-only codes.
    Wonly {
        /// The activation dtype (F16 or BF16), which the weights are dequantized to.
        act: Operand,
        /// How the codes dequantize.
        dequant: Dequant,
    },
}

impl Operands {
    /// The operand types of a `qmatmul` without `b_dequant` whose operands are both `op`.
    pub fn of_operand(op: Operand) -> Self {
        match op {
            Operand::F16 | Operand::BF16 => Operands::Wide(op),
            Operand::E4M3 => Operands::E4M3,
            Operand::I8 => Operands::I8,
        }
    }

    /// Bits of one weight element as stored.
    pub fn weight_bits(&self) -> u64 {
        match self {
            Operands::Wide(_) => 16,
            Operands::Wonly { dequant, .. } if dequant.code.nibbles() => 4,
            _ => 8,
        }
    }

    /// The template's `KIND`.
    fn kind(&self) -> &'static str {
        match self {
            Operands::Wide(_) => "Wide",
            Operands::E4M3 => "E4M3",
            Operands::I8 => "I8",
            Operands::Wonly { .. } => "Wonly",
        }
    }

    /// The MMA's input type (`ACT`): the activations' for f16 / bf16, F16 for E4M3 (and I8,
    /// which does not use it).
    fn act(&self) -> Operand {
        match *self {
            Operands::Wide(op) | Operands::Wonly { act: op, .. } => op,
            Operands::E4M3 | Operands::I8 => Operand::F16,
        }
    }

    /// The dequantization (Wonly), else a placeholder the template compiles but never uses.
    fn dequant(&self) -> Dequant {
        match *self {
            Operands::Wonly { dequant, .. } => dequant,
            _ => Dequant { code: wonly::Code::I8, scale_rows: 1, scale_k: 16, zero: Zero::None },
        }
    }
}

/// One skinny kernel's shape and launch parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SkinnySpec {
    /// Output columns (rows of the weight).
    pub n: u32,
    /// Reduction length (elements).
    pub k: u32,
    /// The operand types.
    pub operands: Operands,
    /// 16-column tiles per block (the block owns `16 · col_tiles` columns).
    pub col_tiles: u32,
    /// Warps per block, splitting K.
    pub warps: u32,
    /// Consecutive 64-byte steps per warp run (loads issued together).
    pub unroll: u32,
}

/// Why a skinny kernel could not be rendered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SkinnyError {
    /// The spec breaks a constraint of the template.
    #[error("invalid skinny GEMM spec ({reason}): {spec:?}")]
    Invalid { spec: SkinnySpec, reason: String },
    /// The epilogue is malformed (a qfuse bug).
    #[error("invalid GEMM epilogue: {0}")]
    Epilogue(String),
    /// The template and the parameters disagree (a qfuse bug).
    #[error(transparent)]
    Template(#[from] TemplateError),
}

impl From<gemm::GemmError> for SkinnyError {
    fn from(e: gemm::GemmError) -> Self {
        match e {
            gemm::GemmError::Template(t) => SkinnyError::Template(t),
            other => SkinnyError::Epilogue(other.to_string()),
        }
    }
}

impl SkinnySpec {
    /// The default for an `N × K` weight: one 16-column tile per block (two for nibble codes,
    /// whose X-to-weight byte ratio is 4× larger), 8 loads of 16 bytes per lane per run, and
    /// enough warps that the `N / BN` blocks hold ≥ 16 warps per SM (4 to 16 per block, a divisor
    /// of the runs when one is close, at most one run per warp). Validity: [`SkinnySpec::validate`].
    pub fn for_shape(operands: Operands, n: u32, k: u32) -> Self {
        let col_tiles = if operands.weight_bits() == 4 && n % 32 == 0 { 2 } else { 1 };
        let unroll_max = 4 / col_tiles;
        let steps = (u64::from(k) * operands.weight_bits() / 8).div_ceil(STEP_BYTES).max(1);
        let unroll = unroll_max.min(steps as u32).max(1);
        let runs = steps.div_ceil(u64::from(unroll));
        let blocks = (u64::from(n) / u64::from(16 * col_tiles)).max(1);
        let want = (SMS * WARPS_PER_SM).div_ceil(blocks).clamp(4, 16).min(runs);
        // A divisor of the runs (every warp the same work) unless that would halve the warps.
        let divisor = (1..=want).rev().find(|w| runs % w == 0).unwrap_or(1);
        let mut warps = if divisor * 2 > want { divisor } else { want };
        // Stage 2 splits the output tile's 4-column chunks evenly over the threads (a row of 4-bit
        // codes at K = 576 has 5 steps: 3 runs, and 3 warps would not split 128 chunks).
        let chunks = u64::from(16 * 16 * col_tiles / 4);
        while warps > 1 && chunks % chunks.min(32 * warps) != 0 {
            warps -= 1;
        }
        Self { n, k, operands, col_tiles, warps: warps as u32, unroll }
    }

    /// Output columns per block.
    pub fn block_cols(&self) -> u32 {
        16 * self.col_tiles
    }

    /// Threads per block.
    pub fn threads(&self) -> u32 {
        32 * self.warps
    }

    /// Dynamic shared memory: one `16 × (BN + 8)` f32 partial tile per warp.
    pub fn smem_bytes(&self) -> u64 {
        u64::from(self.warps) * 16 * u64::from(self.block_cols() + 8) * 4
    }

    /// Bytes of one weight row as stored.
    pub fn row_bytes(&self) -> u64 {
        u64::from(self.k) * self.operands.weight_bits() / 8
    }

    /// Bytes the kernel streams from the weight: codes, plus f32 scales and u8 zero points
    /// (weight-only). What the bench divides by the time.
    pub fn weight_bytes(&self) -> u64 {
        let codes = u64::from(self.n) * self.row_bytes();
        let Operands::Wonly { dequant: dq, .. } = self.operands else { return codes };
        let scales = u64::from(self.n).div_ceil(u64::from(dq.scale_rows)) * u64::from(self.k).div_ceil(u64::from(dq.scale_k));
        codes + scales * if matches!(dq.zero, Zero::Input { .. }) { 5 } else { 4 }
    }

    /// Checks every constraint the template relies on; the error says which one failed.
    pub fn validate(&self) -> Result<(), SkinnyError> {
        let bad = |reason: String| Err(SkinnyError::Invalid { spec: *self, reason });
        let s = self;
        if [s.n, s.k, s.col_tiles, s.warps, s.unroll].contains(&0) {
            return bad("every size must be positive".into());
        }
        match s.operands {
            Operands::Wide(op) | Operands::Wonly { act: op, .. } if !matches!(op, Operand::F16 | Operand::BF16) => {
                return bad("f16 / bf16 operands (and weight-only activations) must be F16 or BF16".into())
            }
            Operands::I8 if s.k > gemm::MAX_I8_K => {
                return bad(format!("k {} exceeds {}: s32 sums of i8 products could overflow", s.k, gemm::MAX_I8_K))
            }
            Operands::Wonly { dequant: dq, .. } => {
                if dq.scale_k == 0 || dq.scale_k % 16 != 0 || dq.scale_rows == 0 {
                    return bad(format!("the scale's extent along K ({}) must be a positive multiple of 16", dq.scale_k));
                }
                if let Zero::Literal(z) = dq.zero {
                    if z.unsigned_abs() >= 1 << 24 {
                        return bad(format!("zero point {z} is not exact in f32"));
                    }
                }
            }
            _ => {}
        }
        if ![1, 2, 4].contains(&s.col_tiles) || s.n % s.block_cols() != 0 {
            return bad(format!("col_tiles must be 1, 2 or 4 and 16·col_tiles must divide N = {}", s.n));
        }
        if s.row_bytes() % CHUNK_BYTES != 0 || s.row_bytes() * u64::from(s.n) > i64::MAX as u64 || s.n > i32::MAX as u32 {
            return bad(format!("a weight row ({} bytes) must be whole 16-byte chunks", s.row_bytes()));
        }
        if s.k > i32::MAX as u32 / 4 {
            return bad(format!("k {} is too large for 32-bit element offsets", s.k));
        }
        if s.warps > 32 || s.unroll > 8 {
            return bad(format!("{} warps (at most 32) and unroll {} (at most 8)", s.warps, s.unroll));
        }
        let (chunks, threads) = (16 * s.block_cols() / 4, s.threads());
        if chunks % chunks.min(threads) != 0 {
            return bad(format!("{threads} threads do not split the output tile's 4-column chunks evenly"));
        }
        if s.smem_bytes() > u64::from(gemm::MAX_SMEM_BYTES) {
            return bad(format!("{} bytes of shared memory exceed {}", s.smem_bytes(), gemm::MAX_SMEM_BYTES));
        }
        Ok(())
    }
}

/// The launch grid: `(N / BN, 1, 1)` whatever M is.
pub fn grid(spec: &SkinnySpec) -> [DimExpr; 3] {
    [DimExpr::Const(u64::from(spec.n / spec.block_cols().max(1))), DimExpr::Const(1), DimExpr::Const(1)]
}

/// The guards of the two alternatives for `rows` rows: (skinny `M ≤ 16`, tiled `M > 16`).
pub fn guards(rows: &DimExpr) -> (Guard, Guard) {
    (Guard::RowsAtMost { rows: rows.clone(), max: MAX_ROWS }, Guard::RowsAbove { rows: rows.clone(), min: MAX_ROWS })
}

/// The kernel's parameters: the tiled kernel's for the same node ([`gemm::kernel_params`], or
/// [`wonly::kernel_params`] with `SCALE, [ZP]` for weight-only operands), then `GAMMA, QSCALE`
/// with a norm prologue.
pub fn kernel_params(spec: &SkinnySpec, epi: &Epilogue, prologue: Option<&PrologueSpec>) -> Vec<ParamMeta> {
    let mut out = match &spec.operands {
        Operands::Wonly { dequant, .. } => wonly::kernel_params(dequant, epi),
        _ => gemm::kernel_params(epi),
    };
    if prologue.is_some() {
        out.push(ParamMeta { name: "GAMMA".into(), ty: ParamType::Ptr });
        out.push(ParamMeta { name: "QSCALE".into(), ty: ParamType::F32 });
    }
    out
}

/// The launch of the kernel for `spec`, `epi` and the GEMM's `args` under `when`; with a norm
/// `prologue` the kernel computes it and the arguments are [`NormPrologue::skinny_args`]. A
/// prologue the operands do not fit ([`PrologueSpec::fits`]) is left out.
pub fn launch(
    spec: &SkinnySpec,
    epi: &Epilogue,
    args: &[Arg],
    when: Option<Guard>,
    prologue: Option<&NormPrologue>,
) -> Result<Launch, SkinnyError> {
    let prologue = prologue.filter(|p| p.spec.fits(&spec.operands) && spec.k % 8 == 0);
    let kernel = render_with(spec, epi, prologue.map(|p| &p.spec))?;
    let args = prologue.map_or_else(|| args.to_vec(), |p| p.skinny_args(args));
    Ok(Launch { kernel, args, when })
}

/// Renders the kernel for `spec` and `epi`; fails if either is invalid.
pub fn render(spec: &SkinnySpec, epi: &Epilogue) -> Result<KernelDef, SkinnyError> {
    render_with(spec, epi, None)
}

/// [`render`] with an optional norm prologue (`A` is then the norm's input; see the template).
pub fn render_with(spec: &SkinnySpec, epi: &Epilogue, prologue: Option<&PrologueSpec>) -> Result<KernelDef, SkinnyError> {
    spec.validate()?;
    epi.validate().map_err(SkinnyError::Epilogue)?;
    if let Some(p) = prologue.filter(|p| !p.fits(&spec.operands) || spec.k % 8 != 0) {
        return Err(SkinnyError::Invalid { spec: *spec, reason: format!("the norm prologue {p:?} does not feed these operands") });
    }
    let dq = spec.operands.dequant();
    let wonly = matches!(spec.operands, Operands::Wonly { .. });
    let zp = wonly && matches!(dq.zero, Zero::Input { .. });
    if wonly && ["SCALE", "ZP"].iter().any(|r| epi.inputs.iter().any(|i| i.name == *r)) {
        return Err(SkinnyError::Epilogue("epilogue inputs may not be named SCALE or ZP".into()));
    }
    let mut params = vec!["const uint8_t* __restrict__ A".to_string(), "const uint8_t* __restrict__ B".to_string()];
    if wonly {
        params.push("const float* __restrict__ SCALE".into());
    }
    if zp {
        params.push("const uint8_t* __restrict__ ZP".into());
    }
    params.extend(gemm::epilogue_params(epi));
    if prologue.is_some() {
        params.extend(["const uint8_t* __restrict__ GAMMA".to_string(), "float QSCALE".to_string()]);
    }
    let [helpers, store_tile] = gemm::epilogue_values(epi)?;
    let trait_of = |dt: DType| dtype_trait(dt).unwrap_or("qf_f16");
    let (zero, zero_value, signed) = match dq.zero {
        Zero::None => ("None", 0, false),
        Zero::Literal(z) => ("Literal", z, false),
        Zero::Input { signed } => ("Input", 0, signed),
    };
    let source = SKINNY.render(&[
        ("prelude", crate::codegen::prelude()),
        ("kernel_name", "{{kernel_name}}".into()),
        ("kind", spec.operands.kind().into()),
        ("act", format!("{:?}", spec.operands.act())),
        ("code", format!("{:?}", dq.code)),
        ("zero", zero.into()),
        ("zero_value", zero_value.to_string()),
        ("zp_signed", signed.to_string()),
        ("n", spec.n.to_string()),
        ("k", spec.k.to_string()),
        ("scale_rows", dq.scale_rows.to_string()),
        ("scale_k", dq.scale_k.to_string()),
        ("col_tiles", spec.col_tiles.to_string()),
        ("warps", spec.warps.to_string()),
        ("unroll", spec.unroll.to_string()),
        ("params", params.join(", ")),
        ("scale", if wonly { "SCALE" } else { "nullptr" }.into()),
        ("zp", if zp { "ZP" } else { "nullptr" }.into()),
        ("dequant", wonly::DEQUANT_HELPERS.to_string()),
        ("ops", OPS.text.to_string()),
        ("prologue", prologue.map_or(0, PrologueSpec::code).to_string()),
        ("pro_x", trait_of(prologue.map_or(DType::F16, |p| p.x)).into()),
        ("pro_gamma", trait_of(prologue.map_or(DType::F16, |p| p.gamma)).into()),
        ("pro_y", trait_of(prologue.map_or(DType::F16, |p| p.y)).into()),
        ("pro_eps", f32_lit(prologue.map_or(0.0, |p| f32::from_bits(p.eps_bits)))),
        ("pro_gamma_arg", if prologue.is_some() { "GAMMA" } else { "nullptr" }.into()),
        ("pro_scale_arg", if prologue.is_some() { "QSCALE" } else { "1.0f" }.into()),
        helpers,
        store_tile,
    ])?;
    let smem = u32::try_from(spec.smem_bytes()).expect("validated: at most MAX_SMEM_BYTES");
    Ok(finish_kernel(TEMPLATE, source, grid(spec), [spec.threads(), 1, 1], smem, kernel_params(spec, epi, prologue)))
}

/// The default spec for `operands` and an `N × K` weight if the template takes the shape (a
/// weight row of whole 16-byte chunks, N a multiple of 16), else `None` (the tiled GEMM then
/// serves every M).
pub fn spec_for(operands: Operands, n: u32, k: u32) -> Option<SkinnySpec> {
    let spec = SkinnySpec::for_shape(operands, n, k);
    spec.validate().is_ok().then_some(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codegen::ops::wonly::Code;

    fn w4() -> Operands {
        Operands::Wonly {
            act: Operand::F16,
            dequant: Dequant { code: Code::U4, scale_rows: 1, scale_k: 128, zero: Zero::Input { signed: false } },
        }
    }

    /// Llama-3-8B's linear shapes (K → N) and MiniLM's.
    const SHAPES: [(u32, u32); 8] =
        [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (128256, 4096), (384, 384), (1536, 384), (384, 1536)];

    #[test]
    fn default_specs_are_valid_and_fill_the_gpu() {
        let all = [Operands::Wide(Operand::F16), Operands::Wide(Operand::BF16), Operands::E4M3, Operands::I8, w4()];
        for (n, k) in SHAPES {
            for ops in all {
                let s = SkinnySpec::for_shape(ops, n, k);
                s.validate().unwrap_or_else(|e| panic!("{n}x{k}: {e}"));
                assert_eq!(2 * s.col_tiles * s.unroll, 8, "{n}x{k} {ops:?}: 8 loads of 16 bytes per lane and run");
                if n >= 4096 {
                    let warps = u64::from(n / s.block_cols()) * u64::from(s.warps);
                    assert!(warps >= SMS * 8, "{n}x{k} {ops:?}: {warps} warps");
                }
            }
        }
        let s = SkinnySpec::for_shape(Operands::Wide(Operand::F16), 4096, 4096);
        assert_eq!((s.col_tiles, s.warps, s.unroll, s.threads()), (1, 8, 4, 256));
        let s = SkinnySpec::for_shape(w4(), 4096, 4096);
        assert_eq!((s.col_tiles, s.warps, s.unroll), (2, 16, 2));
        assert_eq!(s.weight_bytes(), 4096 * 2048 + 4096 * 32 * 5);
    }

    #[test]
    fn grid_is_the_column_blocks() {
        let s = SkinnySpec::for_shape(Operands::E4M3, 6144, 4096);
        assert_eq!(grid(&s)[0], DimExpr::Const(384));
        assert_eq!(grid(&SkinnySpec::for_shape(w4(), 6144, 4096))[0], DimExpr::Const(192));
    }

    #[test]
    fn invalid_specs_are_errors() {
        let reason = |s: SkinnySpec| match s.validate() {
            Err(SkinnyError::Invalid { reason, .. }) => reason,
            other => panic!("{other:?}"),
        };
        let s = SkinnySpec::for_shape(Operands::Wide(Operand::F16), 4096, 4096);
        assert!(reason(SkinnySpec { k: 4084, ..s }).contains("16-byte chunks"));
        assert!(reason(SkinnySpec { n: 4104, ..s }).contains("divide"));
        assert!(reason(SkinnySpec { operands: Operands::Wide(Operand::E4M3), ..s }).contains("F16 or BF16"));
        assert!(reason(SkinnySpec { operands: Operands::I8, k: 1 << 17, ..s }).contains("overflow"));
        assert!(reason(SkinnySpec { warps: 33, ..s }).contains("warps"));
        assert!(reason(SkinnySpec { col_tiles: 2, warps: 3, ..s }).contains("evenly"));
        let Operands::Wonly { act, mut dequant } = w4() else { unreachable!() };
        dequant.scale_k = 8;
        assert!(reason(SkinnySpec { operands: Operands::Wonly { act, dequant }, ..s }).contains("16"));
        assert!(spec_for(w4(), 4096, 4032).is_some(), "nibble rows of 2016 bytes: whole chunks, a partial last step");
        assert!(spec_for(w4(), 4096, 4040).is_none(), "nibble rows of 2020 bytes are not whole chunks");
    }
}
