//! Weight-only `qmatmul` (`b_dequant` set: W8A16, W4A16, FP8 / NVFP4 weights on f16 or bf16
//! activations): a tensor-core GEMM from `templates/gemm_wonly.cu`, whose header gives the design
//! and every index mapping, and for M ≤ 16 the skinny kernel of [`skinny`] (weight streaming at
//! memory bandwidth).
//!
//! Semantics (the reference interpreter's): every weight element is dequantized as
//! `w = (q − z)·s` in f32 (`q·s` without a zero point) and rounded to `a`'s dtype (RNE); then
//! `acc = Σ_k a·w` in f32, and the epilogue (`alpha`, rounding to `acc_dtype`, the steps, the
//! optional FP8 output quantize) is [`qmatmul::epilogue`], printed into the same shared epilogue
//! code as `gemm.cu`'s. The products `a·w` are exact in f32, so the kernels differ from the
//! interpreter only in the order of the f32 sums; the skinny kernel and the GEMM differ from each
//! other in the same way only. Both dequantize with the shared `templates/gemm_dequant.cuh`.
//!
//! Operands, in order: `a` (f16/bf16 `[.., M, K]`), `b` (`[N, K]` codes: `i8`/`u8`/`f8e4m3` bytes,
//! `i4`/`u4`/`f4e2m1` two per byte along K, low nibble first), the scale (f32, per channel `[N]`,
//! per tensor `[]`, groups `[N, ⌈K/G⌉]`, 2-D blocks `[⌈N/bn⌉, ⌈K/bk⌉]`), the zero point when the
//! spec has an input one (u8 or i8, shaped like the scale), then the epilogue's `add` operands.
//! N must be a multiple of 64, K of 64, and the scale's extent along K a multiple of 16.
//!
//! Kernel signature: `A, B, SCALE, [ZP], <epilogue inputs>, Y, int M`. Launches: for plans whose
//! row count M can be at most [`GEMV_MAX_ROWS`], the skinny kernel (grid `(N / BN, 1, 1)`; it needs
//! weight rows of whole 64-byte steps, i.e. K a multiple of 128 for nibble codes, else the GEMM
//! serves small M too); for larger M the GEMM (grid `(⌈M / tile_m⌉ · N / tile_n, 1, 1)`); when M
//! may be either, both, guarded by `M ≤ 16` / `M > 16` ([`Guard`]) so that the runtime runs
//! exactly one per shape.

use crate::codegen::gemm::{self, Epilogue, Index, Operand};
use crate::codegen::kernel::{finish_kernel, Arg, KernelDef, Launch, LowerCx, LowerError, Lowered};
use crate::codegen::ops::prologue::{self, NormPrologue};
use crate::codegen::ops::qmatmul;
use crate::codegen::ops::skinny::{self, Operands, SkinnySpec};
use crate::codegen::template::{Template, TemplateError};
use crate::ir::{normalize_axis, DType, Dim, Granularity, NodeId, Op, QuantSpec, ScaleSource, ValueId, ZeroPoint};
use crate::plan::{DimExpr, ParamMeta, ParamType, Scalar};

const WONLY: Template = Template { name: "gemm_wonly.cu", text: include_str!("../../../templates/gemm_wonly.cu") };

/// `templates/gemm_dequant.cuh` below its header: the code dequantization shared by
/// `gemm_wonly.cu` and `gemm_skinny.cu` (their `dequant` parameter).
pub(crate) const DEQUANT_HELPERS: &str = gemm::after_header(include_str!("../../../templates/gemm_dequant.cuh"));

/// Name of the template, prefix of every generated kernel name.
pub const TEMPLATE: &str = "gemm_wonly";

/// Largest row count the skinny kernel serves; the GEMM takes the rest.
pub const GEMV_MAX_ROWS: u64 = skinny::MAX_ROWS;

/// The storage of the weight codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// Signed bytes.
    I8,
    /// Unsigned bytes.
    U8,
    /// Signed nibbles, two per byte.
    I4,
    /// Unsigned nibbles, two per byte.
    U4,
    /// FP8 E4M3 bytes.
    E4M3,
    /// FP4 E2M1 nibbles, two per byte.
    E2M1,
}

impl Code {
    /// The code type of an IR storage dtype.
    pub fn from_dtype(d: DType) -> Option<Self> {
        Some(match d {
            DType::I8 => Code::I8,
            DType::U8 => Code::U8,
            DType::I4 => Code::I4,
            DType::U4 => Code::U4,
            DType::F8E4M3 => Code::E4M3,
            DType::F4E2M1 => Code::E2M1,
            _ => return None,
        })
    }

    /// Two codes per byte.
    pub fn nibbles(self) -> bool {
        matches!(self, Code::I4 | Code::U4 | Code::E2M1)
    }

    /// An integer code (the only kind a zero point applies to).
    pub fn is_int(self) -> bool {
        matches!(self, Code::I8 | Code::U8 | Code::I4 | Code::U4)
    }
}

/// The zero point of the dequantization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Zero {
    /// None: `w = q·s`.
    None,
    /// One constant for every element.
    Literal(i32),
    /// A kernel operand shaped like the scale: `i8` (`signed`) or `u8` bytes.
    Input {
        /// Stored as `i8` rather than `u8`.
        signed: bool,
    },
}

/// How the codes dequantize: the scale of element `(n, k)` is
/// `SCALE[(n / scale_rows) · ⌈K / scale_k⌉ + k / scale_k]`, the zero point likewise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dequant {
    /// Code storage.
    pub code: Code,
    /// Rows of B sharing one scale row (1 per channel or group, the block height, N per tensor).
    pub scale_rows: u32,
    /// Elements of K sharing one scale (K per channel, the group or block width); a multiple of 16.
    pub scale_k: u32,
    /// The zero point.
    pub zero: Zero,
}

/// Tiles and launch shape of one weight-only kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WonlySpec {
    /// Output columns (rows of B).
    pub n: u32,
    /// Reduction length (elements).
    pub k: u32,
    /// Activation type (F16 or BF16); the weights are dequantized to it.
    pub act: Operand,
    /// Block tile rows.
    pub tile_m: u32,
    /// Block tile columns.
    pub tile_n: u32,
    /// Warps along M.
    pub warps_m: u32,
    /// Warps along N.
    pub warps_n: u32,
    /// cp.async ring depth.
    pub stages: u32,
    /// Rasterization group of m-tiles.
    pub group_m: u32,
}

/// Why a weight-only kernel could not be rendered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WonlyError {
    /// The spec breaks a constraint of the template.
    #[error("invalid weight-only GEMM spec ({reason}): {spec:?}")]
    Invalid { spec: WonlySpec, reason: String },
    /// The epilogue is malformed (a qfuse bug).
    #[error("invalid GEMM epilogue: {0}")]
    Epilogue(String),
    /// The template and the parameters disagree (a qfuse bug).
    #[error(transparent)]
    Template(#[from] TemplateError),
}

impl From<gemm::GemmError> for WonlyError {
    fn from(e: gemm::GemmError) -> Self {
        match e {
            gemm::GemmError::Template(t) => WonlyError::Template(t),
            other => WonlyError::Epilogue(other.to_string()),
        }
    }
}

/// Output columns of each thread's epilogue step (the shared store's `VEC`).
const VEC: u32 = 4;
/// k per k-tile (the template's `BK`).
const BK: u32 = 64;
/// SMs of an H100 / H200.
const SMS: u64 = 132;

impl WonlySpec {
    /// The GEMM for an `N × K` weight and at most `max_m` rows: 128-column tiles (64 if N is not a
    /// multiple of 128), 128-row tiles when they still give a full wave, else 64; 2×4 warps;
    /// three stages. Validity is checked by [`WonlySpec::validate`].
    pub fn gemm_for(act: Operand, n: u32, k: u32, max_m: u64) -> Self {
        let tile_n = if n % 128 == 0 { 128 } else { 64 };
        let tiles_n = u64::from(n / tile_n.max(1));
        let tile_m = if max_m.div_ceil(128) * tiles_n >= SMS { 128 } else { 64 };
        Self { n, k, act, tile_m, tile_n, warps_m: 2, warps_n: 4, stages: 3, group_m: 8 }
    }

    /// Threads per block.
    pub fn threads(&self) -> u32 {
        32 * self.warps_m * self.warps_n
    }

    /// Dynamic shared memory: `max(ring, staged output tile)` plus 1024 bytes of alignment slack.
    pub fn smem_bytes(&self, dq: &Dequant) -> u64 {
        let out_tile = u64::from(self.tile_m) * u64::from(self.tile_n + 8) * 4;
        let code_bytes = if dq.code.nibbles() { BK / 2 } else { BK };
        let stage = u64::from(self.tile_m) * u64::from(BK) * 2 + u64::from(self.tile_n) * u64::from(code_bytes);
        (u64::from(self.stages) * stage).max(out_tile) + 1024
    }

    /// Checks every constraint the template relies on; the error says which one failed.
    pub fn validate(&self, dq: &Dequant) -> Result<(), WonlyError> {
        let bad = |reason: String| Err(WonlyError::Invalid { spec: *self, reason });
        let s = self;
        if [s.n, s.k, s.tile_m, s.tile_n, s.warps_m, s.warps_n, s.stages, s.group_m].contains(&0) {
            return bad("every size must be positive".into());
        }
        if s.act == Operand::E4M3 {
            return bad("activations must be f16 or bf16".into());
        }
        if s.n % s.tile_n != 0 || s.k % BK != 0 || s.n > i32::MAX as u32 || s.k > (i32::MAX / 2) as u32 {
            return bad(format!("N must be a multiple of tile_n {} and K of {BK} (both fitting i32)", s.tile_n));
        }
        if dq.scale_k == 0 || dq.scale_k % 16 != 0 || dq.scale_rows == 0 {
            return bad(format!("the scale's extent along K ({}) must be a positive multiple of 16", dq.scale_k));
        }
        if let Zero::Literal(z) = dq.zero {
            if z.unsigned_abs() >= 1 << 24 {
                return bad(format!("zero point {z} is not exact in f32"));
            }
        }
        let threads = s.threads();
        if threads > 1024 {
            return bad(format!("{threads} threads exceed 1024"));
        }
        let out_chunks = s.tile_m * s.tile_n / VEC;
        if s.tile_n % 16 != 0 || out_chunks % out_chunks.min(threads) != 0 {
            return bad(format!("{threads} threads do not split the output tile's 4-column chunks evenly"));
        }
        match () {
            _ if s.tile_m % (16 * s.warps_m) != 0 || s.tile_n % (8 * s.warps_n) != 0 || s.tile_m % 8 != 0 => {
                bad("warp tiles must be multiples of 16×8".into())
            }
            _ if (s.tile_n * if dq.code.nibbles() { BK / 2 } else { BK }) % 1024 != 0 || s.stages < 2 => {
                bad("the code tile must keep stages 1024-byte aligned (tile_n a multiple of 32), and stages ≥ 2".into())
            }
            _ if s.smem_bytes(dq) > u64::from(gemm::MAX_SMEM_BYTES) => {
                bad(format!("{} bytes of shared memory exceed {}", s.smem_bytes(dq), gemm::MAX_SMEM_BYTES))
            }
            _ => Ok(()),
        }
    }
}

/// The launch grid for `m` rows.
pub fn grid(spec: &WonlySpec, m: DimExpr) -> [DimExpr; 3] {
    let tiles_n = DimExpr::Const(u64::from(spec.n / spec.tile_n.max(1)));
    [m.ceil_div(u64::from(spec.tile_m.max(1))).mul(tiles_n), DimExpr::Const(1), DimExpr::Const(1)]
}

/// The kernel's parameters: `A, B, SCALE, [ZP]`, the epilogue inputs, `Y`, `M`, the epilogue's
/// per-launch `f32`s ([`Epilogue::scalars`]).
pub fn kernel_params(dq: &Dequant, epi: &Epilogue) -> Vec<ParamMeta> {
    let zp = matches!(dq.zero, Zero::Input { .. });
    let mut names = vec!["A", "B", "SCALE"];
    names.extend(zp.then_some("ZP"));
    let ptr = |name: &str| ParamMeta { name: name.into(), ty: ParamType::Ptr };
    let mut out: Vec<ParamMeta> = names.into_iter().map(ptr).collect();
    out.extend(epi.inputs.iter().map(|i| ptr(&i.name)));
    out.extend(epi.outputs().iter().map(|(y, _)| ptr(y)));
    out.push(ParamMeta { name: "M".into(), ty: ParamType::I32 });
    out.extend(gemm::scalar_params(epi));
    out
}

/// Renders the kernel for `spec`, `dq` and `epi`, with `m` the row count for the grid.
pub fn render(spec: &WonlySpec, dq: &Dequant, epi: &Epilogue, m: DimExpr) -> Result<KernelDef, WonlyError> {
    spec.validate(dq)?;
    epi.validate().map_err(WonlyError::Epilogue)?;
    if ["SCALE", "ZP"].iter().any(|r| epi.inputs.iter().any(|i| i.name == *r)) {
        return Err(WonlyError::Epilogue("epilogue inputs may not be named SCALE or ZP".into()));
    }
    let flag = |b: bool| if b { "true" } else { "false" }.to_string();
    let zp = matches!(dq.zero, Zero::Input { .. });
    let mut params = vec!["const uint8_t* __restrict__ A", "const uint8_t* __restrict__ B", "const float* __restrict__ SCALE"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    if zp {
        params.push("const uint8_t* __restrict__ ZP".into());
    }
    params.extend(gemm::epilogue_params(epi));
    let [helpers, store_tile] = gemm::epilogue_values(epi)?;
    let (zero, zero_value, signed) = match dq.zero {
        Zero::None => ("None", 0, false),
        Zero::Literal(z) => ("Literal", z, false),
        Zero::Input { signed } => ("Input", 0, signed),
    };
    let source = WONLY.render(&[
        ("prelude", crate::codegen::prelude()),
        ("kernel_name", "{{kernel_name}}".into()),
        ("act", format!("{:?}", spec.act)),
        ("code", format!("{:?}", dq.code)),
        ("zero", zero.into()),
        ("zero_value", zero_value.to_string()),
        ("zp_signed", flag(signed)),
        ("n", spec.n.to_string()),
        ("k", spec.k.to_string()),
        ("scale_rows", dq.scale_rows.to_string()),
        ("scale_k", dq.scale_k.to_string()),
        ("tile_m", spec.tile_m.to_string()),
        ("tile_n", spec.tile_n.to_string()),
        ("stages", spec.stages.to_string()),
        ("warps_m", spec.warps_m.to_string()),
        ("warps_n", spec.warps_n.to_string()),
        ("group_m", spec.group_m.to_string()),
        ("params", params.join(", ")),
        ("zp", if zp { "ZP" } else { "nullptr" }.into()),
        ("dequant", DEQUANT_HELPERS.to_string()),
        helpers,
        store_tile,
    ])?;
    let smem = u32::try_from(spec.smem_bytes(dq)).expect("validated: at most MAX_SMEM_BYTES");
    Ok(finish_kernel(TEMPLATE, source, grid(spec, m), [spec.threads(), 1, 1], smem, kernel_params(dq, epi)))
}

/// Everything a weight-only `qmatmul` node's kernels are made of, before rendering (the bench
/// renders the same plan).
#[derive(Debug, Clone, PartialEq)]
pub struct WonlyPlan {
    /// The skinny kernel, when M can be at most [`GEMV_MAX_ROWS`] and the shape fits it.
    pub skinny: Option<SkinnySpec>,
    /// The GEMM, when M can exceed [`GEMV_MAX_ROWS`].
    pub gemm: Option<WonlySpec>,
    /// How the codes dequantize.
    pub dequant: Dequant,
    /// The epilogue, from the node's payload.
    pub epilogue: Epilogue,
    /// M: the product of `a`'s leading extents.
    pub m: DimExpr,
    /// The launch arguments, one per kernel parameter (the same for both kernels).
    pub args: Vec<Arg>,
    /// The norm the skinny kernel computes as its prologue ([`prologue::of_reader`]), if any.
    pub prologue: Option<NormPrologue>,
}

impl WonlyPlan {
    /// The launches: the skinny kernel and/or the GEMM, guarded by `M ≤ 16` / `M > 16` when
    /// both exist.
    pub fn launches(&self) -> Result<Vec<Launch>, WonlyError> {
        let guards = (self.skinny.is_some() && self.gemm.is_some()).then(|| skinny::guards(&self.m));
        let mut out = Vec::new();
        if let Some(spec) = &self.skinny {
            let when = guards.as_ref().map(|g| g.0.clone());
            let launch = skinny::launch(spec, &self.epilogue, &self.args, when, self.prologue.as_ref());
            out.push(launch.map_err(|e| WonlyError::Epilogue(e.to_string()))?);
        }
        if let Some(spec) = &self.gemm {
            let kernel = render(spec, &self.dequant, &self.epilogue, self.m.clone())?;
            out.push(Launch { kernel, args: self.args.clone(), when: guards.map(|g| g.1) });
        }
        Ok(out)
    }
}

/// Lowers a weight-only `qmatmul` node to its skinny and/or GEMM launches.
pub fn lower(cx: &LowerCx, node: NodeId) -> Result<Lowered, LowerError> {
    let plan = WonlyPlan { prologue: prologue::of_reader(cx, node), ..plan(cx, node)? };
    plan.launches().map(Lowered::Launches).map_err(|e| cx.error(node, e.to_string()))
}

/// Checks that the node fits the template and collects its kernels' ingredients.
pub fn plan(cx: &LowerCx, node: NodeId) -> Result<WonlyPlan, LowerError> {
    let err = |reason: String| cx.error(node, reason);
    let g = cx.graph;
    let n = &g.nodes[node];
    let Op::QMatMul(q) = &n.op else { return Err(err(format!("`{}` is not a qmatmul", n.op.mnemonic()))) };
    let Some(spec) = &q.b_dequant else { return Err(err("not a weight-only qmatmul (no b_dequant)".into())) };
    if n.inputs.len() != q.arity() || n.outputs.len() != 1 {
        return Err(err(format!("{} operands and {} results; the payload wants {} and 1", n.inputs.len(), n.outputs.len(), q.arity())));
    }
    if q.a_scale || q.b_scale || !q.transpose_b {
        return Err(err("a weight-only qmatmul reads b as [N, K] (transpose_b) and takes no a_scale / b_scale".into()));
    }
    let (a, b, y) = (n.inputs[0], n.inputs[1], n.outputs[0]);
    let (ta, tb) = (g.ty(a), g.ty(b));
    let act = match ta.dtype {
        DType::F16 => Operand::F16,
        DType::BF16 => Operand::BF16,
        d => return Err(err(format!("a is {d}; weight-only GEMMs take f16 or bf16 activations"))),
    };
    if tb.dtype != spec.storage || !qmatmul::weight_rooted(cx, b) {
        return Err(err(format!("b must be a weight stored as {} (the dequantize spec's storage)", spec.storage)));
    }
    let (nn, k) = match tb.shape.as_slice() {
        [Dim::Fixed(nn), Dim::Fixed(k)] => (*nn, *k),
        _ => return Err(err(format!("b must be a fixed 2-D [N, K] weight, got {}", qmatmul::shape_str(cx, &tb.shape)))),
    };
    let lead = &ta.shape[..ta.shape.len().saturating_sub(1)];
    if ta.shape.len() < 2 || ta.shape.last() != Some(&Dim::Fixed(k)) {
        return Err(err(format!("a {} is not [.., M, K = {k}]", qmatmul::shape_str(cx, &ta.shape))));
    }
    if nn == 0 || nn % 64 != 0 || k == 0 || k % u64::from(BK) != 0 || nn > i32::MAX as u64 || k > u64::from(i32::MAX as u32 / 2) {
        return Err(err(format!("N = {nn} and K = {k} must be positive multiples of 64 (the weight-only GEMM's tiles)")));
    }
    let out_shape = &g.ty(y).shape;
    if out_shape.len() != ta.shape.len() || &out_shape[..lead.len()] != lead || out_shape.last() != Some(&Dim::Fixed(nn)) {
        return Err(err(format!("result {} is not a's leading extents followed by N = {nn}", qmatmul::shape_str(cx, out_shape))));
    }

    let mut rest = n.inputs[2..].iter().copied();
    let mut args = vec![Arg::Value(a), Arg::Value(b)];
    let dequant = dequant(cx, spec, (nn, k), &mut rest, &mut args).map_err(err)?;
    let mut adds = Vec::new();
    for step in q.epilogue.iter().filter(|s| s.op.takes_operand()) {
        let v = rest.next().ok_or_else(|| err("missing epilogue operand".into()))?;
        let t = g.ty(v);
        let index = qmatmul::classify(out_shape, &t.shape).filter(|_| t.dtype.is_wide_float()).ok_or_else(|| {
            err(format!(
                "epilogue operand {} of the add({}) step must be f32/f16/bf16 [N], [.., M, N], [.., M, 1] or a single element",
                qmatmul::describe(cx, v),
                step.dtype
            ))
        })?;
        adds.push((v, t.dtype, index));
    }
    let kinds: Vec<(DType, Index)> = adds.iter().map(|&(_, d, i)| (d, i)).collect();
    let epilogue = qmatmul::epilogue(q, &kinds).map_err(err)?;
    if epilogue.store.dtype() != g.ty(y).dtype {
        return Err(err(format!("the epilogue stores {} but the result is {}", epilogue.store.dtype(), g.ty(y).dtype)));
    }
    args.extend(adds.iter().map(|&(v, _, _)| Arg::Value(v)));
    let m = cx.rows(a);
    args.push(Arg::Value(y));
    args.push(Arg::Scalar(Scalar::Dim(m.clone())));
    args.extend(gemm::scalar_args(&epilogue));

    let max_m: u64 = cx.max_shape(a)[..lead.len()].iter().product();
    let (n32, k32) = (nn as u32, k as u32);
    let fixed_m = m.as_const();
    // M can be small unless it is a constant above 16 (symbolic row counts start at 1).
    let small = fixed_m.is_none_or(|v| v <= GEMV_MAX_ROWS);
    let skinny = small.then(|| skinny::spec_for(Operands::Wonly { act, dequant }, n32, k32)).flatten();
    // The GEMM serves M > 16, and every M when the skinny kernel does not take the shape.
    let gemm = (max_m > GEMV_MAX_ROWS || skinny.is_none()).then(|| WonlySpec::gemm_for(act, n32, k32, max_m));
    if let Some(s) = &gemm {
        let blocks = max_m.div_ceil(u64::from(s.tile_m)) * u64::from(s.n / s.tile_n);
        if max_m > i32::MAX as u64 || blocks > i32::MAX as u64 {
            return Err(err(format!("M up to {max_m} rows exceeds what one launch of the GEMM covers (i32)")));
        }
    }
    Ok(WonlyPlan { skinny, gemm, dequant, epilogue, m, args, prologue: None })
}

/// The dequantization of `spec` for an `[N, K]` weight: checks the scale (and zero point)
/// operands taken from `rest` and appends them to `args`.
fn dequant(
    cx: &LowerCx,
    spec: &QuantSpec,
    (n, k): (u64, u64),
    rest: &mut impl Iterator<Item = ValueId>,
    args: &mut Vec<Arg>,
) -> Result<Dequant, String> {
    let code = Code::from_dtype(spec.storage)
        .ok_or_else(|| format!("weight storage {} is not supported (i8, u8, i4, u4, f8e4m3, f4e2m1)", spec.storage))?;
    if spec.scale != ScaleSource::Input {
        return Err("the weight scale must be an operand (a literal scale folds into alpha)".into());
    }
    let (scale_rows, scale_k) = match &spec.granularity {
        Granularity::PerTensor => (n, k),
        Granularity::PerChannel { axis } if normalize_axis(*axis, 2) == Some(0) => (1, k),
        Granularity::Block { blocks } => {
            let mut rk = (1, k);
            for &(axis, size) in blocks {
                match normalize_axis(axis, 2) {
                    Some(0) => rk.0 = size,
                    Some(1) => rk.1 = size,
                    _ => return Err(format!("block axis {axis} out of range for a 2-D weight")),
                }
            }
            rk
        }
        other => return Err(format!("weight scale granularity {other:?} is not supported (per tensor, per channel, groups, 2-D blocks)")),
    };
    if scale_k % 16 != 0 || scale_rows == 0 {
        return Err(format!("scale blocks of {scale_rows}×{scale_k}: the extent along K must be a multiple of 16"));
    }
    let weight_shape: crate::ir::Shape = [Dim::Fixed(n), Dim::Fixed(k)].into_iter().collect();
    let scale_shape = spec.granularity.scale_shape(&weight_shape)?;
    let g = cx.graph;
    let operand = |what: &str, rest: &mut dyn Iterator<Item = ValueId>, dtypes: &[DType]| -> Result<ValueId, String> {
        let v = rest.next().ok_or_else(|| format!("missing {what} operand"))?;
        let t = g.ty(v);
        if !dtypes.contains(&t.dtype) || t.shape != scale_shape {
            return Err(format!("{what} must be {:?}{:?}, got {}", dtypes, scale_shape, qmatmul::describe(cx, v)));
        }
        Ok(v)
    };
    args.push(Arg::Value(operand("weight scale", rest, &[DType::F32])?));
    let zero = match &spec.zero_point {
        None => Zero::None,
        Some(_) if !code.is_int() => return Err(format!("{} weights take no zero point", spec.storage)),
        Some(ZeroPoint::Literal(z)) => Zero::Literal(*z),
        Some(ZeroPoint::Input) => {
            let v = operand("zero point", rest, &[DType::U8, DType::I8])?;
            args.push(Arg::Value(v));
            Zero::Input { signed: g.ty(v).dtype == DType::I8 }
        }
    };
    let to_u32 = |x: u64| u32::try_from(x).map_err(|_| format!("scale block {x} is too large"));
    Ok(Dequant { code, scale_rows: to_u32(scale_rows)?, scale_k: to_u32(scale_k)?, zero })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dq(code: Code) -> Dequant {
        Dequant { code, scale_rows: 1, scale_k: 128, zero: Zero::None }
    }

    #[test]
    fn default_specs_are_valid() {
        for (n, k) in [(384, 384), (1152, 384), (1536, 384), (384, 1536), (4096, 4096)] {
            for act in [Operand::F16, Operand::BF16] {
                for code in [Code::I8, Code::U4, Code::E2M1] {
                    for max_m in [64, 4096, 65536] {
                        WonlySpec::gemm_for(act, n, k, max_m).validate(&dq(code)).unwrap_or_else(|e| panic!("{n}x{k}: {e}"));
                    }
                }
            }
        }
        assert_eq!(WonlySpec::gemm_for(Operand::F16, 384, 384, 4096).tile_m, 64);
        assert_eq!(WonlySpec::gemm_for(Operand::F16, 1536, 384, 65536).tile_m, 128);
    }

    #[test]
    fn grids_cover_the_row_tiles() {
        let m = DimExpr::sym("B").mul(DimExpr::sym("S"));
        let gemm = WonlySpec::gemm_for(Operand::F16, 1536, 384, 65536);
        assert_eq!(grid(&gemm, m)[0].to_string(), "ceil_div(B*S, 128)*12");
    }

    #[test]
    fn invalid_specs_are_errors() {
        let mut s = WonlySpec::gemm_for(Operand::F16, 384, 384, 4096);
        s.k = 100;
        assert!(matches!(s.validate(&dq(Code::I8)), Err(WonlyError::Invalid { reason, .. }) if reason.contains("multiple")));
        let s = WonlySpec::gemm_for(Operand::F16, 384, 384, 4096);
        let bad = Dequant { scale_k: 8, ..dq(Code::I4) };
        assert!(matches!(s.validate(&bad), Err(WonlyError::Invalid { reason, .. }) if reason.contains("16")));
        let s = WonlySpec { act: Operand::E4M3, ..s };
        assert!(s.validate(&dq(Code::I8)).is_err());
    }
}
