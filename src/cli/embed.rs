//! `qfuse embed`: sentence embeddings from the reference interpreter.

use anyhow::{bail, Context};
use clap::Args;
use qfuse::import::{self, ImportOptions};
use qfuse::interp::{self, Tensor};
use std::path::PathBuf;

/// Arguments of `qfuse embed`.
#[derive(Args)]
pub struct EmbedArgs {
    /// Hugging Face model folder.
    model_dir: PathBuf,
    /// Texts to embed.
    texts: Vec<String>,
    /// Read texts from this file, one per line (blank lines skipped).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Print `[{"text": ..., "embedding": [...]}]` on stdout instead of tables.
    #[arg(long)]
    json: bool,
    /// Tokenizer truncation length, at most the model's `max_position_embeddings`.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Print the cosine-similarity matrix for any number of texts (default: the matrix for up
    /// to 8 texts, else each text's nearest neighbour).
    #[arg(long)]
    matrix: bool,
    /// Quantize first (the embeddings come from the fused graph).
    #[command(flatten)]
    recipe: super::recipe_args::RecipeArgs,
}

/// Runs `qfuse embed`.
pub fn run(args: &EmbedArgs, quiet: bool) -> anyhow::Result<()> {
    super::validate::model_path(&args.model_dir, false)?;
    let texts = collect_texts(args)?;
    let recipe = args.recipe.recipe()?;
    let limit = super::validate::position_limit(&args.model_dir)?;
    super::validate::at_most("--max-tokens", args.max_tokens as u64, limit, "the model's position limit (max_position_embeddings)")?;
    let opts = ImportOptions { max_tokens: args.max_tokens, ..Default::default() };
    let spinner = qfuse::progress::spinner(format!("importing {}", args.model_dir.display()), quiet);
    let model = import::load(&args.model_dir, &opts)?;
    spinner.finish_and_clear();
    let Some(tok) = &model.tokenizer else { bail!("{}: missing (tokenizer)", args.model_dir.join("tokenizer.json").display()) };
    let graph = match recipe {
        Some(recipe) => {
            super::validate::excludes(&recipe, &super::validate::matmul_names(&model.graph))?;
            let calib = args.recipe.calib_options(quiet)?;
            let q = super::recipe_args::quantize(&model, &recipe, &calib, &args.recipe.pass_options(), quiet)?;
            tracing::info!(recipe = recipe.name.as_str(), nodes = q.fused.nodes.len(), "quantized");
            q.fused
        }
        None => model.graph.clone(),
    };
    let started = std::time::Instant::now();
    let embeddings = embed_all(&graph, &model, tok, &texts, opts.max_batch as usize, quiet)?;
    tracing::info!(texts = texts.len(), seconds = started.elapsed().as_secs_f64(), "embedded");
    if args.json {
        print_json(&texts, &embeddings)?;
    } else {
        print_tables(&texts, &embeddings, args.matrix)?;
        let secs = started.elapsed().as_secs_f64();
        super::output::print_line(&format!("{} text(s) embedded by the reference interpreter in {secs:.2} s", texts.len()))?;
    }
    Ok(())
}

fn collect_texts(args: &EmbedArgs) -> anyhow::Result<Vec<String>> {
    let mut texts = args.texts.clone();
    texts.extend(read_text_file(args.file.as_deref())?);
    if texts.is_empty() {
        bail!("no texts given: pass them as arguments or with --file");
    }
    Ok(texts)
}

/// The non-blank lines of `path` (none without a path); errors name the file and line.
pub fn read_text_file(path: Option<&std::path::Path>) -> anyhow::Result<Vec<String>> {
    let Some(path) = path else { return Ok(Vec::new()) };
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut texts = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = std::str::from_utf8(line).with_context(|| format!("{}: line {} is not valid UTF-8", path.display(), i + 1))?;
        let line = line.trim_end_matches('\r');
        if !line.trim().is_empty() {
            texts.push(line.to_string());
        }
    }
    Ok(texts)
}

/// `[{"text": ..., "embedding": [...]}]` on one line of stdout.
pub fn print_json(texts: &[String], embeddings: &[Vec<f32>]) -> anyhow::Result<()> {
    let items: Vec<_> = texts.iter().zip(embeddings).map(|(t, e)| serde_json::json!({"text": t, "embedding": e})).collect();
    super::output::print_line(&serde_json::to_string(&items)?).map_err(Into::into)
}

/// Embeds `texts` in batches of at most `max_batch`, showing progress over graph values.
pub fn embed_all(
    graph: &qfuse::ir::Graph,
    model: &import::Model,
    tok: &import::TextTokenizer,
    texts: &[String],
    max_batch: usize,
    quiet: bool,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let chunks: Vec<&[String]> = texts.chunks(max_batch.max(1)).collect();
    let steps = (graph.values.len() * chunks.len()) as u64;
    let bar = qfuse::progress::bar(steps, "values", format!("embedding {} text(s)", texts.len()), quiet);
    let mut out = Vec::with_capacity(texts.len());
    for chunk in chunks {
        let batch = tok.encode(chunk)?;
        let outputs = interp::run_observed(graph, &model.weights, &batch.inputs(), &mut |_, _| bar.inc(1))?;
        let (_, emb) = outputs.into_iter().next().context("the graph has no output")?;
        out.extend(rows(&emb)?);
    }
    bar.finish_and_clear();
    Ok(out)
}

pub fn rows(t: &Tensor) -> anyhow::Result<Vec<Vec<f32>>> {
    let data = t.as_f32().context("embedding output is not a float tensor")?;
    let &[_, width] = t.shape.as_slice() else { bail!("embedding output has shape {:?}, expected [batch, width]", t.shape) };
    Ok(data.chunks(width).map(<[f32]>::to_vec).collect())
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let na: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    (dot / (na * nb).max(1e-30)) as f32
}

/// Texts up to which the similarity matrix is printed by default.
const MATRIX_TEXTS: usize = 8;

/// The embeddings table (first values of each), then their cosine similarities: the full matrix
/// for at most [`MATRIX_TEXTS`] texts or when `matrix`, else each text's nearest neighbour.
pub fn print_tables(texts: &[String], embeddings: &[Vec<f32>], matrix: bool) -> anyhow::Result<()> {
    let short = |t: &str| {
        let s: String = t.chars().take(28).collect();
        if s.len() < t.len() {
            format!("{s}…")
        } else {
            s
        }
    };
    let mut table = super::output::table();
    table.set_header(["#", "text", "dims", "embedding[..4]"]);
    for (i, (t, e)) in texts.iter().zip(embeddings).enumerate() {
        let head: Vec<String> = e.iter().take(4).map(|x| format!("{x:+.4}")).collect();
        table.add_row([i.to_string(), short(t), e.len().to_string(), head.join(" ")]);
    }
    super::output::print_line(&table.to_string())?;
    if texts.len() < 2 {
        return Ok(());
    }
    let mut sim = super::output::table();
    if matrix || texts.len() <= MATRIX_TEXTS {
        sim.set_header(std::iter::once("cosine".to_string()).chain((0..texts.len()).map(|i| format!("#{i}"))));
        for (i, a) in embeddings.iter().enumerate() {
            let cells = embeddings.iter().map(|b| format!("{:.3}", cosine(a, b)));
            sim.add_row(std::iter::once(format!("#{i} {}", short(&texts[i]))).chain(cells));
        }
    } else {
        sim.set_header(["#", "text", "nearest", "cosine"]);
        for (i, (a, t)) in embeddings.iter().zip(texts).enumerate() {
            let nearest =
                embeddings.iter().enumerate().filter(|(j, _)| *j != i).map(|(j, b)| (j, cosine(a, b))).max_by(|x, y| x.1.total_cmp(&y.1));
            if let Some((j, c)) = nearest {
                sim.add_row([i.to_string(), short(t), format!("#{j} {}", short(&texts[j])), format!("{c:.3}")]);
            }
        }
    }
    super::output::print_line(&sim.to_string())?;
    if !matrix && texts.len() > MATRIX_TEXTS {
        super::output::print_line(&format!(
            "{} texts: nearest neighbours only (--matrix for all similarities, --json for the vectors)",
            texts.len()
        ))?;
    }
    Ok(())
}
