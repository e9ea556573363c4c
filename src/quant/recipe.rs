//! Recipes: how each matmul's weights and activations are quantized.
//!
//! A recipe answers, per matmul site, "which [`LayerQuant`]?" — a weight scheme and an
//! activation scheme, each a storage type, a granularity and where its scale comes from. The
//! FP8 recipes of today and the later ones (INT8 SmoothQuant, W8A16, W4A16 groups, NVFP4, FP8
//! blocks, KV-cache formats) are all points in this space: new ones add [`Granularity`] values
//! or scale rules, not new shapes.

use super::calib::CalibMethod;
use crate::ir::DType;
use serde::Serialize;
use std::collections::BTreeMap;

/// Which elements share a scale, independent of tensor rank (resolved per site).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Granularity {
    /// One scale for the tensor.
    PerTensor,
    /// One scale per output feature (weights `[N, K]`: axis 0).
    PerChannel,
    /// One scale per row, computed at run time (activations).
    PerToken,
    /// One scale per `size` consecutive elements along the reduction axis K (weights: `[N, K/size]`
    /// scales; activations: `[.., K/size]`, computed at run time).
    Group {
        /// Group length along K.
        size: u64,
    },
    /// One scale per `rows × cols` block of a weight `[N, K]` (DeepSeek-style FP8 blocks).
    Block {
        /// Block extent along N.
        rows: u64,
        /// Block extent along K.
        cols: u64,
    },
}

/// Where a scale comes from.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum ScaleRule {
    /// From the tensor itself at compile time (weights: `amax / qmax` per region).
    FromData,
    /// From the tensor at compile time, integer weights only: per region (channel or group) the
    /// round-to-nearest range shrunk by the clip ratio, from 1 down to 0.5, whose codes have the
    /// least squared error `Σ (w − ŵ)²` ([`crate::quant::algo::MseClip`]); never a larger error than
    /// [`ScaleRule::FromData`]. GPTQ applies it to the groups it computes.
    MseClip,
    /// From calibration statistics with this method.
    Calibrated(CalibMethod),
    /// Computed by the kernel at run time.
    Dynamic,
    /// Block scales computed at run time under a per-tensor global scale from calibration
    /// (NVFP4 activations: `s_global = 2^⌈log2(amax / (6·448))⌉`, block scales in `scale_dtype`).
    DynamicUnderGlobal(CalibMethod),
}

impl ScaleRule {
    /// True when the scale (or NVFP4's global scale) comes from calibration statistics.
    pub fn is_calibrated(&self) -> bool {
        matches!(self, ScaleRule::Calibrated(_) | ScaleRule::DynamicUnderGlobal(_))
    }
}

/// How one tensor is quantized.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Scheme {
    /// Storage type.
    pub storage: DType,
    /// Scale sharing.
    pub granularity: Granularity,
    /// Scale source.
    pub scale: ScaleRule,
    /// The scales' own type: `f32`, or `f8e4m3` for NVFP4's block scales (which then sit under an
    /// f32 per-tensor global scale).
    pub scale_dtype: DType,
    /// Asymmetric: an integer zero point per scale (integer storage only).
    pub zero_point: bool,
}

impl Scheme {
    /// A symmetric scheme with f32 scales.
    pub const fn new(storage: DType, granularity: Granularity, scale: ScaleRule) -> Self {
        Scheme { storage, granularity, scale, scale_dtype: DType::F32, zero_point: false }
    }

    /// Storage bits per element including the scales (and zero points), for a weight `[n, k]`.
    pub fn bits_per_element(&self, n: u64, k: u64) -> f64 {
        let elements = (n * k).max(1) as f64;
        let scale_bits = self.scale_dtype.bits() as f64 + if self.zero_point { 8.0 } else { 0.0 };
        let scales = match self.granularity {
            Granularity::PerTensor | Granularity::PerToken => 1.0,
            Granularity::PerChannel => n as f64,
            Granularity::Group { size } => (n * k.div_ceil(size)) as f64,
            Granularity::Block { rows, cols } => (n.div_ceil(rows) * k.div_ceil(cols)) as f64,
        };
        let global = if self.scale_dtype == DType::F32 { 0.0 } else { 32.0 };
        self.storage.bits() as f64 + (scales * scale_bits + global) / elements
    }
}

/// How a weight's codes are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum WeightAlgo {
    /// Round to nearest on the scheme's scales.
    Rtn,
    /// AWQ: per-input-channel scales `mean|x|^α`, α searched on a grid (arXiv 2306.00978).
    Awq {
        /// Grid points for α in [0, 1).
        grid: usize,
    },
    /// GPTQ: column-wise quantization with error compensation (arXiv 2210.17323).
    Gptq {
        /// Dampening, as a fraction of the mean Hessian diagonal.
        damp: f64,
        /// Columns per lazy-update block.
        block: usize,
        /// Process columns by decreasing Hessian diagonal (`desc_act`).
        act_order: bool,
    },
}

/// Where the product of a quantized matmul is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum GemmDomain {
    /// On the codes (FP8/INT8 tensor cores): dequantizes produce f32 and `fuse-dq-matmul` turns the
    /// matmul into a quantized GEMM with the scales in its epilogue.
    Quantized,
    /// On dequantized values in the compute dtype (weight-only GEMMs, and formats Hopper has no
    /// tensor cores for): dequantizes produce the compute dtype and `fuse-weight-dequant` moves the
    /// weight's dequantization into the GEMM.
    Dequantized,
}

/// The quantization of one matmul: weight (the `b` operand) and activation (`a`; for attention
/// matmuls, both operands use `activation`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LayerQuant {
    /// Scheme of the weight operand.
    pub weight: Option<Scheme>,
    /// Scheme of the activation operand(s).
    pub activation: Option<Scheme>,
    /// How the weight's codes are chosen.
    pub algo: WeightAlgo,
    /// SmoothQuant migration strength α: activations are divided per input channel by
    /// `s = max|X|^α / max|W|^(1−α)` and the weights multiplied by it.
    pub smooth: Option<f32>,
    /// Where the product is computed.
    pub domain: GemmDomain,
}

impl LayerQuant {
    /// No quantization.
    pub const NONE: LayerQuant =
        LayerQuant { weight: None, activation: None, algo: WeightAlgo::Rtn, smooth: None, domain: GemmDomain::Quantized };

    /// Activation-and-weight quantization computed on the codes.
    pub const fn quantized(weight: Scheme, activation: Scheme) -> Self {
        LayerQuant { weight: Some(weight), activation: Some(activation), ..Self::NONE }
    }

    /// Weight-only quantization (or emulation) computed on dequantized values.
    pub const fn dequantized(weight: Scheme, activation: Option<Scheme>) -> Self {
        LayerQuant { weight: Some(weight), activation, domain: GemmDomain::Dequantized, ..Self::NONE }
    }

    /// Storage bits per weight element (16 when the weight stays in the compute dtype).
    pub fn weight_bits(&self, n: u64, k: u64) -> f64 {
        self.weight.map_or(16.0, |w| w.bits_per_element(n, k))
    }
}

/// What `--recipe auto` optimises.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum AutoTarget {
    /// The cheapest format per matmul whose output cosine to FP32 on calibration data is at least
    /// this.
    MinCosine(f64),
    /// The most accurate assignment whose mean weight bits (weighted by element count) fit.
    Budget(f64),
}

/// A named recipe with its options.
#[derive(Clone, Debug, Serialize)]
pub struct Recipe {
    /// One of [`RECIPES`].
    pub name: String,
    /// The dtype the graph computes in outside quantized matmuls.
    pub compute: DType,
    /// The scheme of every Linear (weight × activation) matmul.
    pub linear: LayerQuant,
    /// Per-matmul choices that override `linear` (filled by `--recipe auto`).
    pub layers: BTreeMap<String, LayerQuant>,
    /// `--recipe auto`: the target the per-layer search meets.
    pub auto: Option<AutoTarget>,
    /// Also quantize the attention matmuls' inputs (TensorRT-LLM's FP8 FMHA).
    pub fp8_attention: bool,
    /// Matmul names matching any of these globs stay in high precision (ModelOpt's
    /// `exclude_modules`).
    pub exclude: Vec<String>,
}

/// The recipes `--recipe` accepts.
pub const RECIPES: &[&str] = &[
    "fp16",
    "fp8",
    "fp8-dynamic",
    "int8-sq",
    "w8a16",
    "w4a16-rtn",
    "w4a16-awq",
    "w4a16-gptq",
    "w4a8-awq",
    "nvfp4",
    "mxfp8",
    "mxfp4",
    "fp8-block",
    "auto",
];

/// The recipes `eval --recipe all` compares (every fixed recipe; `auto` needs a target).
pub const TABLE_RECIPES: &[&str] =
    &["fp16", "fp8", "fp8-dynamic", "int8-sq", "w8a16", "w4a16-rtn", "w4a16-awq", "w4a16-gptq", "nvfp4", "fp8-block"];

/// The recipes a decoder's `eval --recipe all` compares (the table recipes plus the ones only the
/// reference interpreter runs today: W4A8-AWQ and the OCP MX formats).
pub const DECODER_TABLE_RECIPES: &[&str] =
    &["fp8", "fp8-dynamic", "int8-sq", "w8a16", "w4a16-rtn", "w4a16-awq", "w4a16-gptq", "w4a8-awq", "nvfp4", "mxfp8", "mxfp4", "fp8-block"];

/// Default group length of the W4A16 recipes.
pub const DEFAULT_GROUP: u64 = 128;
/// Default SmoothQuant α.
pub const DEFAULT_SQ_ALPHA: f32 = 0.5;

/// Named schemes, the building blocks of the recipes and of `auto`'s candidates.
pub mod schemes {
    use super::*;

    /// FP8 E4M3, one static scale.
    pub const fn fp8_tensor(scale: ScaleRule) -> Scheme {
        Scheme::new(DType::F8E4M3, Granularity::PerTensor, scale)
    }
    /// 8-bit integer, one static scale per output channel (weights).
    pub const fn int8_channel() -> Scheme {
        Scheme::new(DType::I8, Granularity::PerChannel, ScaleRule::FromData)
    }
    /// 8-bit integer per output channel with MSE-clipped scales ([`ScaleRule::MseClip`]): W8A16's
    /// weights (on SmolLM2 mean KL 0.0031 against 0.0035 with `amax / 127`, docs/decoders.md;
    /// MiniLM unchanged).
    pub const fn int8_channel_mse() -> Scheme {
        Scheme::new(DType::I8, Granularity::PerChannel, ScaleRule::MseClip)
    }
    /// Unsigned 4-bit groups along K with a zero point per group (W4A16).
    pub const fn uint4_group(size: u64) -> Scheme {
        Scheme { zero_point: true, ..Scheme::new(DType::U4, Granularity::Group { size }, ScaleRule::FromData) }
    }
    /// NVFP4: E2M1 in blocks of 16 along K with E4M3 block scales under an f32 global scale.
    pub const fn nvfp4(scale: ScaleRule) -> Scheme {
        Scheme { scale_dtype: DType::F8E4M3, ..Scheme::new(DType::F4E2M1, Granularity::Group { size: 16 }, scale) }
    }
    /// OCP MX (v1.0): `storage` elements in blocks of 32 along K sharing one E8M0 (power-of-two)
    /// scale; MXFP8 uses E4M3 elements, MXFP4 E2M1.
    pub const fn mx(storage: DType, scale: ScaleRule) -> Scheme {
        Scheme { scale_dtype: DType::E8M0, ..Scheme::new(storage, Granularity::Group { size: 32 }, scale) }
    }
}

impl Recipe {
    /// The recipe called `name` with default options; `calib` sizes static activation scales.
    /// `auto` starts as FP16 with the `MinCosine(0.999)` target; the search fills `layers`.
    pub fn named(name: &str, calib: CalibMethod) -> Result<Recipe, String> {
        use schemes::*;
        let cal = ScaleRule::Calibrated(calib);
        let w4 = |algo| LayerQuant { algo, ..LayerQuant::dequantized(uint4_group(DEFAULT_GROUP), None) };
        let linear = match name {
            "fp16" | "auto" => LayerQuant::NONE,
            "fp8" => LayerQuant::quantized(fp8_tensor(ScaleRule::FromData), fp8_tensor(cal)),
            "fp8-dynamic" => LayerQuant::quantized(
                Scheme::new(DType::F8E4M3, Granularity::PerChannel, ScaleRule::FromData),
                Scheme::new(DType::F8E4M3, Granularity::PerToken, ScaleRule::Dynamic),
            ),
            "int8-sq" => LayerQuant {
                smooth: Some(DEFAULT_SQ_ALPHA),
                ..LayerQuant::quantized(int8_channel(), Scheme::new(DType::I8, Granularity::PerToken, ScaleRule::Dynamic))
            },
            "w8a16" => LayerQuant::dequantized(int8_channel_mse(), None),
            "w4a16-rtn" => w4(WeightAlgo::Rtn),
            "w4a16-awq" => w4(WeightAlgo::Awq { grid: 20 }),
            "w4a16-gptq" => w4(WeightAlgo::Gptq { damp: 0.01, block: 128, act_order: false }),
            "nvfp4" => LayerQuant::dequantized(nvfp4(ScaleRule::FromData), Some(nvfp4(ScaleRule::DynamicUnderGlobal(calib)))),
            // TensorRT-LLM's W4A8-AWQ: INT4 g128 AWQ weights, FP8 per-tensor static activations.
            "w4a8-awq" => LayerQuant {
                algo: WeightAlgo::Awq { grid: 20 },
                ..LayerQuant::dequantized(uint4_group(DEFAULT_GROUP), Some(fp8_tensor(cal)))
            },
            "mxfp8" => LayerQuant::dequantized(mx(DType::F8E4M3, ScaleRule::FromData), Some(mx(DType::F8E4M3, ScaleRule::Dynamic))),
            // Weight-only MXFP4, as GPT-OSS ships its experts.
            "mxfp4" => LayerQuant::dequantized(mx(DType::F4E2M1, ScaleRule::FromData), None),
            "fp8-block" => LayerQuant::dequantized(
                Scheme::new(DType::F8E4M3, Granularity::Block { rows: 128, cols: 128 }, ScaleRule::FromData),
                Some(Scheme::new(DType::F8E4M3, Granularity::Group { size: 128 }, ScaleRule::Dynamic)),
            ),
            other => return Err(format!("unknown recipe `{other}`; recipes are: {}", RECIPES.join(", "))),
        };
        let auto = (name == "auto").then_some(AutoTarget::MinCosine(0.999));
        Ok(Recipe { name: name.into(), compute: DType::F16, linear, layers: BTreeMap::new(), auto, fp8_attention: false, exclude: vec![] })
    }

    /// Sets the weight granularity (`per-tensor` | `per-channel`).
    pub fn with_weight_granularity(mut self, g: Granularity) -> Self {
        if let Some(w) = &mut self.linear.weight {
            w.granularity = g;
        }
        self
    }

    /// Sets the activation scale: static per tensor from calibration, or dynamic per token
    /// (8-bit activation recipes only).
    pub fn with_activation_scale(mut self, dynamic: bool, calib: CalibMethod) -> Result<Self, String> {
        let Some(a) = &mut self.linear.activation else { return Err(format!("recipe `{}` has no activation quantization", self.name)) };
        if a.storage.bits() != 8 || !matches!(a.granularity, Granularity::PerTensor | Granularity::PerToken) {
            return Err(format!("recipe `{}` fixes its activation scales", self.name));
        }
        (a.granularity, a.scale) =
            if dynamic { (Granularity::PerToken, ScaleRule::Dynamic) } else { (Granularity::PerTensor, ScaleRule::Calibrated(calib)) };
        Ok(self)
    }

    /// Sets the group length of grouped weight schemes (integer 4-bit groups); weight-only INT8
    /// per-channel weights (`w8a16`) become symmetric INT8 groups of `size` along K. Errors for
    /// every other recipe (INT8 GEMMs such as `int8-sq` need per-channel weight scales).
    pub fn with_group_size(mut self, size: u64) -> Result<Self, String> {
        let weight_only = self.linear.domain == GemmDomain::Dequantized;
        match &mut self.linear.weight {
            Some(Scheme { granularity: g @ Granularity::Group { .. }, storage, .. })
                if storage.bits() == 4 && *storage != DType::F4E2M1 =>
            {
                *g = Granularity::Group { size };
                Ok(self)
            }
            Some(Scheme { granularity: g @ Granularity::PerChannel, storage: DType::I8, .. }) if weight_only => {
                *g = Granularity::Group { size };
                Ok(self)
            }
            _ => Err(format!("recipe `{}` has no configurable weight groups", self.name)),
        }
    }

    /// Sets how integer weight scales are chosen: `mse` picks [`ScaleRule::MseClip`], otherwise
    /// [`ScaleRule::FromData`] (`amax / qmax`). Errors for recipes without integer weights and for
    /// AWQ, whose own activation-aware clipping search chooses its ranges.
    pub fn with_weight_scale(mut self, mse: bool) -> Result<Self, String> {
        if matches!(self.linear.algo, WeightAlgo::Awq { .. }) {
            return Err(format!("recipe `{}` clips its weights with AWQ's own search", self.name));
        }
        match &mut self.linear.weight {
            Some(w) if w.storage.is_int() && matches!(w.scale, ScaleRule::FromData | ScaleRule::MseClip) => {
                w.scale = if mse { ScaleRule::MseClip } else { ScaleRule::FromData };
                Ok(self)
            }
            _ => Err(format!("recipe `{}` has no integer weight scales", self.name)),
        }
    }

    /// Sets SmoothQuant's α.
    pub fn with_smooth_alpha(mut self, alpha: f32) -> Result<Self, String> {
        if !(0.0..=1.0).contains(&alpha) {
            return Err(format!("--sq-alpha must lie in [0, 1], got {alpha}"));
        }
        match &mut self.linear.smooth {
            Some(a) => *a = alpha,
            None => return Err(format!("recipe `{}` does not smooth activations", self.name)),
        }
        Ok(self)
    }

    /// Turns GPTQ's act-order on.
    pub fn with_act_order(mut self) -> Result<Self, String> {
        match &mut self.linear.algo {
            WeightAlgo::Gptq { act_order, .. } => *act_order = true,
            _ => return Err(format!("--act-order applies to w4a16-gptq, not `{}`", self.name)),
        }
        Ok(self)
    }

    /// True when the recipe quantizes anything.
    pub fn quantizes(&self) -> bool {
        self.linear.weight.is_some() || self.linear.activation.is_some() || self.layers.values().any(|l| l.weight.is_some())
    }

    /// The scheme for a Linear matmul named `name`, or `None` when excluded or unquantized.
    pub fn for_linear(&self, name: &str) -> Option<LayerQuant> {
        if self.excluded(name) {
            return None;
        }
        let l = self.layers.get(name).copied().unwrap_or(self.linear);
        (l.weight.is_some() || l.activation.is_some()).then_some(l)
    }

    /// The scheme for an attention matmul named `name` (both operands are activations, quantized
    /// per tensor with the activation's FP8 storage and calibration).
    pub fn for_attention(&self, name: &str) -> Option<Scheme> {
        if !self.fp8_attention || self.excluded(name) {
            return None;
        }
        let act = self.linear.activation.filter(|a| a.storage == DType::F8E4M3)?;
        let scale = match act.scale {
            ScaleRule::Calibrated(m) => ScaleRule::Calibrated(m),
            _ => ScaleRule::Calibrated(CalibMethod::Max),
        };
        Some(Scheme::new(act.storage, Granularity::PerTensor, scale))
    }

    /// True when `name` matches an `--exclude` glob.
    pub fn excluded(&self, name: &str) -> bool {
        self.exclude.iter().any(|pat| glob_match(pat, name))
    }
}

/// Shell-style matching: `*` any run of characters, `?` one character, everything else literal.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                backtrack = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match backtrack {
                Some((bp, bt)) => {
                    pi = bp + 1;
                    ti = bt + 1;
                    backtrack = Some((bp, bt + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_size_applies_to_integer_weight_only_recipes() {
        let group = |name: &str| Recipe::named(name, CalibMethod::Max).unwrap().with_group_size(32).map(|r| r.linear.weight.unwrap());
        for name in ["w4a16-rtn", "w4a16-awq", "w4a16-gptq", "w4a8-awq"] {
            assert_eq!(group(name).unwrap().granularity, Granularity::Group { size: 32 }, "{name}");
        }
        let w8 = group("w8a16").unwrap();
        assert_eq!((w8.granularity, w8.storage, w8.zero_point), (Granularity::Group { size: 32 }, DType::I8, false));
        for name in ["int8-sq", "fp8", "fp8-dynamic", "nvfp4", "mxfp4", "fp8-block", "fp16"] {
            assert!(group(name).is_err(), "{name}");
        }
    }

    #[test]
    fn weight_scale_switches_integer_weights_only() {
        let scale = |r: &Recipe| r.linear.weight.map(|w| w.scale);
        for name in ["w8a16", "w4a16-rtn", "w4a16-gptq"] {
            let r = Recipe::named(name, CalibMethod::Max).unwrap();
            assert_eq!(scale(&r.clone().with_weight_scale(true).unwrap()), Some(ScaleRule::MseClip), "{name}");
            assert_eq!(scale(&r.with_weight_scale(false).unwrap()), Some(ScaleRule::FromData), "{name}");
        }
        for name in ["fp8", "nvfp4", "mxfp4", "fp16", "w4a16-awq", "w4a8-awq"] {
            assert!(Recipe::named(name, CalibMethod::Max).unwrap().with_weight_scale(true).is_err(), "{name}");
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("encoder.layer.*.output.dense", "encoder.layer.5.output.dense"));
        assert!(glob_match("*.query", "encoder.layer.0.attention.self.query"));
        assert!(!glob_match("*.query", "encoder.layer.0.attention.self.key"));
        assert!(glob_match("encoder.layer.?.intermediate*", "encoder.layer.3.intermediate.dense"));
        assert!(!glob_match("encoder.layer.?.x", "encoder.layer.10.x"));
        assert!(glob_match("*", ""));
    }
}
