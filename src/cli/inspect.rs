//! `qfuse inspect`: what a `.plan` holds — header, signature, kernels, schedule, buffers, weights,
//! recipe and fusion report — without a GPU.

use std::path::PathBuf;

use clap::Args;
use comfy_table::Table;
use qfuse::plan::{ArgRef, Plan, PlanMeta, SectionKind};

/// Arguments of `qfuse inspect`.
#[derive(Args)]
pub struct InspectArgs {
    /// The plan file.
    plan: PathBuf,
    /// Also list every launch of the schedule with its arguments.
    #[arg(long)]
    schedule: bool,
    /// Also print the final IR text stored in the plan.
    #[arg(long)]
    ir: bool,
    /// Print the CUDA source of the kernel with this name (or template) and stop.
    #[arg(long, value_name = "KERNEL")]
    source: Option<String>,
}

/// Runs `qfuse inspect`.
pub fn run(args: &InspectArgs) -> anyhow::Result<()> {
    let plan = Plan::load(&args.plan, None)?;
    plan.verify_sections()?;
    let meta = plan.meta();
    if let Some(which) = &args.source {
        let k = meta
            .kernels
            .iter()
            .find(|k| &k.name == which || &k.template == which)
            .ok_or_else(|| anyhow::anyhow!("no kernel or template `{which}` in {}", args.plan.display()))?;
        return super::output::print_line(&k.source).map_err(Into::into);
    }
    let mut out = header_text(&plan);
    out += &signature_table(meta).to_string();
    out += "\n\n";
    out += &kernel_table(&plan).to_string();
    out += &format!(
        "\n\n{} launches per run; {} buffers in a {:.2} MiB arena at the largest shapes; {} weights, {:.2} MiB\n",
        meta.schedule.len(),
        meta.buffers.len(),
        mib(meta.peak_activation_bytes),
        meta.weights.len(),
        mib(plan.sections().iter().filter(|s| s.kind == SectionKind::Weights).map(|s| s.len).sum()),
    );
    out += &recipe_summary(&meta.recipe);
    out += &fusion_summary(meta);
    if args.schedule {
        out += "\n";
        out += &schedule_table(meta).to_string();
    }
    if args.ir {
        out += "\n";
        out += &meta.ir_text;
    }
    super::output::print_line(out.trim_end()).map_err(Into::into)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn header_text(plan: &Plan) -> String {
    let h = plan.header();
    let m = plan.meta();
    let symbols: Vec<String> = m.symbols.iter().map(|(s, max)| format!("{s} ≤ {max}")).collect();
    format!(
        "plan {}\n  format {}, written by qfuse {}, NVRTC {}.{}, arch {}\n  model `{}`, {} bytes, {} sections, symbols {}\n\n",
        plan.path().display(),
        h.format,
        m.qfuse_version,
        m.nvrtc_version.0,
        m.nvrtc_version.1,
        m.arch,
        m.model_name,
        h.file_len,
        plan.sections().len(),
        symbols.join(", "),
    )
}

fn table(header: &[&str]) -> Table {
    let mut t = super::output::table();
    t.set_header(header);
    t
}

fn signature_table(m: &PlanMeta) -> Table {
    let mut t = table(&["", "name", "dtype", "shape"]);
    let shape = |s: &[qfuse::plan::DimExpr]| format!("[{}]", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "));
    for (kind, sigs) in [("input", &m.inputs), ("output", &m.outputs)] {
        for s in sigs {
            t.add_row([kind.to_string(), s.name.clone(), s.dtype.clone(), shape(&s.shape)]);
        }
    }
    t
}

fn kernel_table(plan: &Plan) -> Table {
    let m = plan.meta();
    let mut t = table(&["kernel", "launches", "grid", "block", "smem", "cubin"]);
    for (i, k) in m.kernels.iter().enumerate() {
        let launches = m.schedule.iter().filter(|l| l.kernel as usize == i).count();
        let grid = k.grid.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(" × ");
        let block = k.block.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("×");
        let cubin = plan.sections().get(k.section as usize).map_or(0, |s| s.len);
        t.add_row([k.name.clone(), launches.to_string(), grid, block, format!("{}", k.shared_mem_bytes), format!("{cubin}")]);
    }
    t
}

fn schedule_table(m: &PlanMeta) -> Table {
    let mut t = table(&["#", "kernel", "computes", "arguments"]);
    for (i, l) in m.schedule.iter().enumerate() {
        let args: Vec<String> = l
            .args
            .iter()
            .map(|a| match a {
                ArgRef::Weight(w) => format!("@{}", m.weights[*w as usize].name),
                ArgRef::Buffer(b) => m.buffers[*b as usize].name.clone(),
                ArgRef::Scalar(s) => qfuse::compile::describe_scalar(s),
                ArgRef::KvPool(i) => match m.decoder.as_ref().and_then(|d| d.kv.slots.get(*i as usize)) {
                    Some(slot) => format!("pages({})", slot.input),
                    None => format!("pages(#{i})"),
                },
                ArgRef::PageTable => "page_table".into(),
                ArgRef::SplitScratch => "split_scratch".into(),
                ArgRef::SplitScratchZeroed => "split_scratch(zeroed)".into(),
            })
            .collect();
        // A guarded launch (format 1.1) runs only for the shapes where its guard holds; a
        // tensor-core GEMM (format 2.3) says how it sums.
        let mut computes = match m.guard_of(i) {
            Some(g) => format!("{} [when {g}]", l.label),
            None => l.label.clone(),
        };
        if let Some(sums) = m.sums_of(i) {
            computes += &format!(" [sums: {sums}]");
        }
        t.add_row([i.to_string(), m.kernels[l.kernel as usize].name.clone(), computes, args.join(", ")]);
    }
    t
}

/// Counts of the fusion report's outcomes, and every standalone Q/DQ with its reason.
fn fusion_summary(m: &PlanMeta) -> String {
    let Ok(entries) = serde_json::from_str::<Vec<serde_json::Value>>(&m.fusion_report) else {
        return "fusion report: (none)\n".into();
    };
    let outcome = |e: &serde_json::Value| e["outcome"].as_object().and_then(|o| o.keys().next().cloned()).unwrap_or_default();
    let count = |k: &str| entries.iter().filter(|e| outcome(e) == k).count();
    let mut out =
        format!("fusion report: {} Q/DQ fused, {} folded offline, {} standalone\n", count("Fused"), count("Folded"), count("Standalone"));
    for e in entries.iter().filter(|e| outcome(e) == "Standalone") {
        out += &format!(
            "  standalone {}: {}\n",
            e["qdq"].as_str().unwrap_or("?"),
            e["outcome"]["Standalone"]["reason"].as_str().unwrap_or("?")
        );
    }
    out
}

/// The recipe in words: its name, the Linear layers' weight and activation formats (and the weight
/// algorithm or SmoothQuant α); with per-layer choices (`--recipe auto`), one line per matmul.
fn recipe_summary(recipe_json: &str) -> String {
    let Ok(r) = serde_json::from_str::<serde_json::Value>(recipe_json) else { return format!("recipe: {recipe_json}\n") };
    let format = |s: &serde_json::Value| match s {
        serde_json::Value::Null => "f16".to_string(),
        s => format!("{} {}", s["storage"].as_str().unwrap_or("?").to_lowercase(), granularity(&s["granularity"])),
    };
    let name = r["name"].as_str().unwrap_or("?");
    match r["layers"].as_object().filter(|l| !l.is_empty()) {
        Some(layers) => {
            let mut out = format!("recipe: {name} (a format per matmul)\n");
            for (site, l) in layers {
                out += &format!("  {site}: weight {}, activation {}\n", format(&l["weight"]), format(&l["activation"]));
            }
            out
        }
        None => {
            let l = &r["linear"];
            let algo = match (&l["algo"], &l["smooth"]) {
                (_, serde_json::Value::Number(a)) => format!(", SmoothQuant α = {a}"),
                (serde_json::Value::String(s), _) if s == "Rtn" => String::new(),
                (a, _) => match a.as_object().and_then(|o| o.keys().next()).map(String::as_str) {
                    Some("Awq") => ", weights rounded with AWQ scaling".to_string(),
                    Some("Gptq") => ", weights rounded by GPTQ".to_string(),
                    Some(other) => format!(", weights rounded by {}", other.to_uppercase()),
                    None => String::new(),
                },
            };
            format!("recipe: {name}: weight {}, activation {}{algo}\n", format(&l["weight"]), format(&l["activation"]))
        }
    }
}

/// A recipe granularity as JSON (`"PerChannel"`, `{"Group":{"size":128}}`) in words.
fn granularity(g: &serde_json::Value) -> String {
    match g {
        serde_json::Value::String(s) if s == "PerTensor" => "per tensor".into(),
        serde_json::Value::String(s) if s == "PerChannel" => "per channel".into(),
        serde_json::Value::String(s) if s == "PerToken" => "per token".into(),
        _ if g["Group"].is_object() => format!("groups of {}", g["Group"]["size"]),
        _ if g["Block"].is_object() => format!("{}×{} blocks", g["Block"]["rows"], g["Block"]["cols"]),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::recipe_summary;
    use qfuse::quant::recipe::{schemes, LayerQuant, Recipe};

    #[test]
    fn per_layer_formats_are_listed_in_words() {
        let mut r = Recipe::named("auto", qfuse::quant::calib::CalibMethod::Max).unwrap();
        r.layers.insert("l.0.q".into(), LayerQuant::dequantized(schemes::uint4_group(128), None));
        r.layers.insert(
            "l.0.o".into(),
            LayerQuant::quantized(schemes::int8_channel(), schemes::fp8_tensor(qfuse::quant::recipe::ScaleRule::Dynamic)),
        );
        let text = recipe_summary(&serde_json::to_string(&r).unwrap());
        assert!(text.starts_with("recipe: auto (a format per matmul)\n"), "{text}");
        assert!(text.contains("  l.0.q: weight u4 groups of 128, activation f16\n"), "{text}");
        assert!(text.contains("  l.0.o: weight i8 per channel, activation f8e4m3 per tensor\n"), "{text}");
        let line = |name: &str| {
            recipe_summary(&serde_json::to_string(&Recipe::named(name, qfuse::quant::calib::CalibMethod::Max).unwrap()).unwrap())
        };
        assert_eq!(line("fp8"), "recipe: fp8: weight f8e4m3 per tensor, activation f8e4m3 per tensor\n");
        assert_eq!(line("int8-sq"), "recipe: int8-sq: weight i8 per channel, activation i8 per token, SmoothQuant α = 0.5\n");
        assert_eq!(line("w4a16-awq"), "recipe: w4a16-awq: weight u4 groups of 128, activation f16, weights rounded with AWQ scaling\n");
        assert_eq!(line("w4a16-gptq"), "recipe: w4a16-gptq: weight u4 groups of 128, activation f16, weights rounded by GPTQ\n");
    }
}
