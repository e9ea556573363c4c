//! Recipe, calibration and pass options shared by `compile`, `embed` and `eval`.

use anyhow::Context;
use clap::Args;
use qfuse::passes::PassOptions;
use qfuse::quant::calib::{self, CalibMethod};
use qfuse::quant::recipe::{AutoTarget, Granularity, Recipe, WeightAlgo};
use qfuse::quant::{CalibOptions, CalibSchedule};
use std::path::PathBuf;

/// How to quantize.
#[derive(Args, Clone, Debug)]
pub struct RecipeArgs {
    /// fp16 | fp8 | fp8-dynamic | int8-sq | w8a16 | w4a16-rtn | w4a16-awq | w4a16-gptq | w4a8-awq | nvfp4 | mxfp8 | mxfp4 | fp8-block | auto,
    /// or `all` with `eval` (every fixed recipe in one table); w4a8-awq, mxfp8 and mxfp4 run on the
    /// reference interpreter only. [default: fp8 for compile and eval; embed and generate: none,
    /// the unquantized model]
    #[arg(long)]
    pub recipe: Option<String>,
    /// SmoothQuant migration strength α for `int8-sq` (0.5).
    #[arg(long)]
    pub sq_alpha: Option<f32>,
    /// Activation scales of 8-bit recipes: static (per tensor, calibrated) | dynamic (per token).
    #[arg(long)]
    pub act_scale: Option<String>,
    /// Group length along K of the W4A16 recipes (128); with w8a16, INT8 groups instead of per-channel scales.
    #[arg(long)]
    pub group_size: Option<u64>,
    /// GPTQ: quantize columns by decreasing Hessian diagonal (static groups).
    #[arg(long)]
    pub act_order: bool,
    /// GPTQ (and the other weight algorithms): sequential quantization, each span of layers'
    /// statistics from the outputs of the already quantized layers before it (one more forward
    /// per span). Calibration always streams layer by layer; this only changes its inputs.
    #[arg(long)]
    pub gptq_sequential: bool,
    /// Run the calibration set even when the calibration cache (beside the kernel cache) holds
    /// its statistics for this graph, these weights and these samples.
    #[arg(long)]
    pub no_calib_cache: bool,
    /// Integer weight scales of w8a16, w4a16-rtn and w4a16-gptq: minmax (`amax / qmax`) | mse (the
    /// clip of each channel's or group's range with the least squared rounding error). [default:
    /// the recipe's]
    #[arg(long)]
    pub weight_scale: Option<String>,
    /// `auto`: the cheapest format per matmul whose output cosine to FP32 is at least this, in
    /// (0, 1] [default: 0.999].
    #[arg(long, conflicts_with = "budget")]
    pub max_error: Option<f64>,
    /// `auto`: the most accurate formats within this mean weight bits per element, from the
    /// cheapest candidate's bits (about 4.5, nvfp4) to 16 (f16).
    #[arg(long)]
    pub budget: Option<f64>,
    /// Calibration method for static activation scales: max | percentile[:P] (P = 99.99) | entropy | mse.
    #[arg(long, default_value = "max")]
    pub calib: String,
    /// Calibration samples, one per line (default: the built-in set).
    #[arg(long)]
    pub calib_file: Option<PathBuf>,
    /// Weight scale granularity for `fp8`: per-tensor | per-channel.
    #[arg(long)]
    pub weight_granularity: Option<String>,
    /// Keep matmuls whose name matches this glob in high precision (repeatable).
    #[arg(long)]
    pub exclude: Vec<String>,
    /// Also quantize the attention matmuls' inputs.
    #[arg(long)]
    pub fp8_attention: bool,
    /// Skip this pass (repeatable).
    #[arg(long)]
    pub disable_pass: Vec<String>,
    /// Run this opt-in pass (repeatable): `merge-gate-up` (gate and up as one GEMM), `merge-sibling-gemms` (Q/K/V as one GEMM); decoder plans run both.
    #[arg(long)]
    pub enable_pass: Vec<String>,
    /// Write the IR after this pass, or `all` (repeatable), into --dump-dir.
    #[arg(long)]
    pub dump_ir_after: Vec<String>,
    /// Folder for --dump-ir-after files.
    #[arg(long, default_value = "qfuse-dump")]
    pub dump_dir: PathBuf,
}

impl RecipeArgs {
    /// The recipe, when one was asked for.
    pub fn recipe(&self) -> anyhow::Result<Option<Recipe>> {
        let Some(name) = &self.recipe else { return Ok(None) };
        Ok(Some(self.build(name)?))
    }

    /// The recipe `name` with these options.
    pub fn build(&self, name: &str) -> anyhow::Result<Recipe> {
        let method: CalibMethod = self.calib.parse().map_err(anyhow::Error::msg).context("--calib")?;
        let mut recipe = Recipe::named(name, method).map_err(anyhow::Error::msg)?;
        if let Some(g) = &self.weight_granularity {
            let g = match g.as_str() {
                "per-tensor" => Granularity::PerTensor,
                "per-channel" => Granularity::PerChannel,
                other => anyhow::bail!("--weight-granularity: `{other}` is not per-tensor or per-channel"),
            };
            recipe = recipe.with_weight_granularity(g);
        }
        if let Some(alpha) = self.sq_alpha {
            recipe = recipe.with_smooth_alpha(alpha).map_err(anyhow::Error::msg)?;
        }
        if let Some(a) = &self.act_scale {
            let dynamic = match a.as_str() {
                "static" => false,
                "dynamic" => true,
                other => anyhow::bail!("--act-scale: `{other}` is not static or dynamic"),
            };
            recipe = recipe.with_activation_scale(dynamic, method).map_err(anyhow::Error::msg)?;
        }
        if let Some(size) = self.group_size {
            anyhow::ensure!(size > 0, "--group-size must be positive");
            recipe = recipe.with_group_size(size).map_err(anyhow::Error::msg)?;
        }
        if self.act_order {
            recipe = recipe.with_act_order().map_err(anyhow::Error::msg)?;
        }
        if let Some(w) = &self.weight_scale {
            let mse = match w.as_str() {
                "minmax" => false,
                "mse" => true,
                other => anyhow::bail!("--weight-scale: `{other}` is not minmax or mse"),
            };
            recipe = recipe.with_weight_scale(mse).map_err(anyhow::Error::msg)?;
        }
        if let Some(c) = self.max_error {
            anyhow::ensure!(c > 0.0 && c <= 1.0, "--max-error {c}: a cosine to FP32, so it must lie in (0, 1] (0.999 is the default)");
        }
        if let Some(b) = self.budget {
            let floor = cheapest_bits();
            anyhow::ensure!(
                b.is_finite() && b >= floor && b <= 16.0,
                "--budget {b}: mean weight bits per element must lie between {floor:.2} (the cheapest format, nvfp4) and 16 (f16)"
            );
        }
        match (self.max_error, self.budget, recipe.auto.is_some()) {
            (Some(c), None, true) => recipe.auto = Some(AutoTarget::MinCosine(c)),
            (None, Some(b), true) => recipe.auto = Some(AutoTarget::Budget(b)),
            (Some(_), _, false) | (_, Some(_), false) => anyhow::bail!("--max-error and --budget apply to --recipe auto"),
            _ => {}
        }
        recipe.exclude = self.exclude.clone();
        recipe.fp8_attention = self.fp8_attention;
        Ok(recipe)
    }

    /// Calibration settings.
    pub fn calib_options(&self, quiet: bool) -> anyhow::Result<CalibOptions> {
        self.calib_options_or(quiet, calib::default_calibration_sentences)
    }

    /// [`RecipeArgs::calib_options`] for decoders: the default set mixes prose, chats and code.
    pub fn decoder_calib_options(&self, quiet: bool) -> anyhow::Result<CalibOptions> {
        self.calib_options_or(quiet, calib::default_decoder_calibration)
    }

    fn calib_options_or(&self, quiet: bool, default: fn() -> Vec<String>) -> anyhow::Result<CalibOptions> {
        let method = self.calib.parse().map_err(anyhow::Error::msg).context("--calib")?;
        let sentences = match &self.calib_file {
            Some(path) => calib::read_sentences(path).map_err(anyhow::Error::msg)?,
            None => default(),
        };
        anyhow::ensure!(!sentences.is_empty(), "the calibration set is empty");
        let schedule = if self.gptq_sequential { CalibSchedule::Sequential } else { CalibSchedule::Layers };
        let cache = if self.no_calib_cache { None } else { calib::cache::CalibCache::default_location() };
        Ok(CalibOptions { method, sentences, batch: 16, quiet, schedule, cache })
    }

    /// Pass manager settings.
    pub fn pass_options(&self) -> PassOptions {
        let dump_dir = (!self.dump_ir_after.is_empty()).then(|| self.dump_dir.clone());
        PassOptions {
            disable: self.disable_pass.clone(),
            enable: self.enable_pass.clone(),
            dump_after: self.dump_ir_after.clone(),
            dump_dir,
            verify: true,
        }
    }
}

/// The fewest weight bits per element any `auto` candidate stores (on a 4096 × 4096 matmul;
/// group and block scales make it depend a little on the shape).
fn cheapest_bits() -> f64 {
    qfuse::quant::auto::candidates().iter().map(|c| c.layer.weight_bits(4096, 4096)).fold(f64::INFINITY, f64::min)
}

/// Quantizes `model` with `recipe`, with progress on stderr (hidden when `quiet`): the
/// calibration bar, or, when the recipe runs steps that report nothing themselves (the `auto`
/// search, SmoothQuant, AWQ, GPTQ), one spinner over the whole step instead.
pub fn quantize(
    model: &dyn qfuse::import::Imported,
    recipe: &Recipe,
    calib: &CalibOptions,
    passes: &PassOptions,
    quiet: bool,
) -> anyhow::Result<qfuse::quant::Quantized> {
    let algorithm = recipe.linear.smooth.is_some() || !matches!(recipe.linear.algo, WeightAlgo::Rtn);
    let what = match (recipe.auto.is_some(), algorithm) {
        (true, _) => "auto: scoring every format on every matmul",
        (false, true) => "weight algorithms",
        (false, false) => return Ok(qfuse::quant::quantize(model, recipe, calib, passes)?),
    };
    let spinner = qfuse::progress::spinner(format!("{}: {what}, then calibration and fusion", recipe.name), quiet);
    let calib = CalibOptions { quiet: true, ..calib.clone() };
    let q = qfuse::quant::quantize(model, recipe, &calib, passes);
    spinner.finish_and_clear();
    Ok(q?)
}
