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

/// Which elements share a scale, independent of tensor rank (resolved per site).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Granularity {
    /// One scale for the tensor.
    PerTensor,
    /// One scale per output feature (weights `[N, K]`: axis 0).
    PerChannel,
    /// One scale per row, computed at run time (activations).
    PerToken,
    /// One scale per `size` consecutive elements along the reduction axis.
    Group {
        /// Group length along K.
        size: u64,
    },
}

/// Where a scale comes from.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum ScaleRule {
    /// From the tensor itself at compile time (weights: `amax / qmax`).
    FromData,
    /// From calibration statistics with this method.
    Calibrated(CalibMethod),
    /// Computed by the kernel at run time.
    Dynamic,
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
}

/// The quantization of one matmul: weight (the `b` operand) and activation (`a`; for attention
/// matmuls, both operands use `activation`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LayerQuant {
    /// Scheme of the weight operand.
    pub weight: Option<Scheme>,
    /// Scheme of the activation operand(s).
    pub activation: Option<Scheme>,
}

/// A named recipe with its options.
#[derive(Clone, Debug, Serialize)]
pub struct Recipe {
    /// `fp16`, `fp8`, `fp8-dynamic`.
    pub name: String,
    /// The dtype the graph computes in outside quantized matmuls.
    pub compute: DType,
    /// The scheme of every Linear (weight × activation) matmul.
    pub linear: LayerQuant,
    /// Also quantize the attention matmuls' inputs (TensorRT-LLM's FP8 FMHA).
    pub fp8_attention: bool,
    /// Matmul names matching any of these globs stay in high precision (ModelOpt's
    /// `exclude_modules`).
    pub exclude: Vec<String>,
}

/// The recipes `--recipe` accepts.
pub const RECIPES: &[&str] = &["fp16", "fp8", "fp8-dynamic"];

impl Recipe {
    /// The recipe called `name` with default options; `calib` sizes static activation scales.
    pub fn named(name: &str, calib: CalibMethod) -> Result<Recipe, String> {
        let fp8 = |granularity, scale| Some(Scheme { storage: DType::F8E4M3, granularity, scale });
        let linear = match name {
            "fp16" => LayerQuant { weight: None, activation: None },
            "fp8" => LayerQuant {
                weight: fp8(Granularity::PerTensor, ScaleRule::FromData),
                activation: fp8(Granularity::PerTensor, ScaleRule::Calibrated(calib)),
            },
            "fp8-dynamic" => LayerQuant {
                weight: fp8(Granularity::PerChannel, ScaleRule::FromData),
                activation: fp8(Granularity::PerToken, ScaleRule::Dynamic),
            },
            other => return Err(format!("unknown recipe `{other}`; recipes are: {}", RECIPES.join(", "))),
        };
        Ok(Recipe { name: name.into(), compute: DType::F16, linear, fp8_attention: false, exclude: vec![] })
    }

    /// Sets the weight granularity (`per-tensor` | `per-channel`).
    pub fn with_weight_granularity(mut self, g: Granularity) -> Self {
        if let Some(w) = &mut self.linear.weight {
            w.granularity = g;
        }
        self
    }

    /// True when the recipe quantizes anything.
    pub fn quantizes(&self) -> bool {
        self.linear.weight.is_some() || self.linear.activation.is_some()
    }

    /// The scheme for a Linear matmul named `name`, or `None` when excluded or unquantized.
    pub fn for_linear(&self, name: &str) -> Option<LayerQuant> {
        (self.quantizes() && !self.excluded(name)).then_some(self.linear)
    }

    /// The scheme for an attention matmul named `name` (both operands are activations, quantized
    /// per tensor with the activation's storage and calibration).
    pub fn for_attention(&self, name: &str) -> Option<Scheme> {
        if !self.fp8_attention || self.excluded(name) {
            return None;
        }
        let act = self.linear.activation?;
        let scale = match act.scale {
            ScaleRule::Calibrated(m) => ScaleRule::Calibrated(m),
            _ => ScaleRule::Calibrated(CalibMethod::Max),
        };
        Some(Scheme { storage: act.storage, granularity: Granularity::PerTensor, scale })
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
    use super::glob_match;

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
