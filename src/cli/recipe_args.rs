//! Recipe, calibration and pass options shared by `compile`, `embed` and `eval`.

use anyhow::Context;
use clap::Args;
use qfuse::passes::PassOptions;
use qfuse::quant::calib::{self, CalibMethod};
use qfuse::quant::recipe::{Granularity, Recipe};
use qfuse::quant::CalibOptions;
use std::path::PathBuf;

/// How to quantize.
#[derive(Args, Clone, Debug)]
pub struct RecipeArgs {
    /// fp16 | fp8 | fp8-dynamic.
    #[arg(long)]
    pub recipe: Option<String>,
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
        recipe.exclude = self.exclude.clone();
        recipe.fp8_attention = self.fp8_attention;
        Ok(recipe)
    }

    /// Calibration settings.
    pub fn calib_options(&self, quiet: bool) -> anyhow::Result<CalibOptions> {
        let method = self.calib.parse().map_err(anyhow::Error::msg).context("--calib")?;
        let sentences = match &self.calib_file {
            Some(path) => calib::read_sentences(path).map_err(anyhow::Error::msg)?,
            None => calib::default_calibration_sentences(),
        };
        anyhow::ensure!(!sentences.is_empty(), "the calibration set is empty");
        Ok(CalibOptions { method, sentences, batch: 16, quiet })
    }

    /// Pass manager settings.
    pub fn pass_options(&self) -> PassOptions {
        let dump_dir = (!self.dump_ir_after.is_empty()).then(|| self.dump_dir.clone());
        PassOptions { disable: self.disable_pass.clone(), dump_after: self.dump_ir_after.clone(), dump_dir, verify: true }
    }
}
