//! `qfuse import`: import a model and summarise its IR.

use anyhow::Context;
use clap::Args;
use qfuse::import::{self, ImportOptions};
use qfuse::ir::{Graph, Op};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Arguments of `qfuse import`.
#[derive(Args)]
pub struct ImportArgs {
    /// Hugging Face model folder (config.json + model.safetensors), or a decoder (`.gguf` file or
    /// Llama/Mistral/Qwen2 folder).
    model_dir: PathBuf,
    /// Also write the IR text to this file.
    #[arg(long)]
    dump_ir: Option<PathBuf>,
}

/// Runs `qfuse import`.
pub fn run(args: &ImportArgs) -> anyhow::Result<()> {
    super::validate::model_path(&args.model_dir, true)?;
    if let Some(path) = &args.dump_ir {
        super::validate::output_path("--dump-ir", path)?;
    }
    let started = std::time::Instant::now();
    let (graph, text) = if import::decoder::is_decoder(&args.model_dir) {
        let model = import::decoder::load(&args.model_dir, &import::decoder::DecoderOptions::default())?;
        let c = &model.config;
        let about = format!(
            "{} decoder: {} layers, width {}, {} heads / {} KV heads of {}, SwiGLU {}, vocabulary {}, RoPE θ {}, context {}{}",
            c.family.name(),
            c.num_layers,
            c.hidden_size,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
            c.intermediate_size,
            c.vocab_size,
            c.rope_theta,
            c.max_position_embeddings,
            if c.tie_word_embeddings { ", tied lm_head" } else { "" }
        );
        let state = format!("KV-cache state: {} tensors ({})", model.graph.state.len(), model.options.kv.storage());
        (
            model.graph.clone(),
            format!(
                "{}
{about}
{state}",
                summary(&model.graph, &model.weights)
            ),
        )
    } else {
        let model = import::load(&args.model_dir, &ImportOptions::default())?;
        (model.graph.clone(), summary(&model.graph, &model.weights))
    };
    let elapsed = started.elapsed();
    super::output::print_line(&text)?;
    super::output::print_line(&format!("imported in {:.2} s", elapsed.as_secs_f64()))?;
    if let Some(path) = &args.dump_ir {
        super::output::write_atomic(path, qfuse::ir::print(&graph).as_bytes())
            .with_context(|| format!("writing the IR to {}", path.display()))?;
        super::output::print_line(&format!("IR written to {}", path.display()))?;
    }
    Ok(())
}

/// Ops by kind, parameters, weight bytes and the graph's signature.
pub fn summary(g: &Graph, weights: &import::WeightStore) -> String {
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    let mut params = 0u64;
    for node in g.nodes.values() {
        *kinds.entry(node.op.kind()).or_default() += 1;
        if let Op::Weight { .. } = node.op {
            params += g.ty(node.outputs[0]).fixed_numel().unwrap_or(0);
        }
    }
    let mut table = super::output::table();
    table.set_header(["op", "count"]);
    for (k, n) in &kinds {
        table.add_row([k.to_string(), n.to_string()]);
    }
    let sig = |items: Vec<(String, String)>| items.into_iter().map(|(n, t)| format!("{n}: {t}")).collect::<Vec<_>>().join(", ");
    let inputs = sig(g.inputs().into_iter().map(|(n, v)| (n.to_string(), qfuse::ir::print::ty(g, g.ty(v)))).collect());
    let outputs = sig(g.outputs.iter().map(|(n, v)| (n.clone(), qfuse::ir::print::ty(g, g.ty(*v)))).collect());
    let syms: Vec<String> = g.symbols.values().map(|s| format!("{} ≤ {}", s.name, s.max)).collect();
    format!(
        "model {}\n{table}\nnodes: {}   parameters: {}   weight bytes: {} ({:.1} MiB)\nsymbols: {}\ninputs: {inputs}\noutputs: {outputs}",
        g.name,
        g.nodes.len(),
        params,
        weights.stored_bytes(),
        weights.stored_bytes() as f64 / (1024.0 * 1024.0),
        syms.join(", "),
    )
}
