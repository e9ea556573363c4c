//! `qfuse generate`: text generation from a decoder (GGUF file or Hugging Face folder) on the
//! reference interpreter, with the KV cache in the format `--kv-cache` names.

use anyhow::{bail, Context};
use clap::Args;
use qfuse::generate::{self, Sampling, Session, Stop};
use qfuse::import::chat::ChatMessage;
use qfuse::import::decoder::{self, DecoderModel, DecoderOptions, KvFormat};
use qfuse::import::gguf::StreamDecoder;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `qfuse generate`.
#[derive(Args)]
pub struct GenerateArgs {
    /// A decoder: a `.gguf` file or a Hugging Face Llama/Mistral/Qwen2 folder (run on the CPU
    /// interpreter), or a decoder `.plan` (run on the GPU).
    pub(crate) model: PathBuf,
    /// The prompt.
    #[arg(long)]
    pub(crate) prompt: String,
    /// Wrap the prompt as a user message with the model's chat template.
    #[arg(long)]
    pub(crate) chat: bool,
    /// With --chat: a system message first.
    #[arg(long, requires = "chat")]
    pub(crate) system: Option<String>,
    /// Most tokens to generate (at least 1).
    #[arg(long, default_value_t = 64)]
    pub(crate) max_new_tokens: usize,
    /// KV-cache storage: f32 | f16 | bf16 | fp8 | int8 | nvfp4 (quantized caches are calibrated per layer).
    #[arg(long, default_value = "f32")]
    kv_cache: String,
    /// Longest context (prompt plus new tokens), at most the model's position limit [default:
    /// that limit, at most 4096].
    #[arg(long)]
    max_seq: Option<u64>,
    /// Sampling temperature; 0 (the default) is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) temperature: f32,
    /// Sample among the K most likely tokens (0 = the 256 most likely; at most 256).
    #[arg(long, default_value_t = 0)]
    pub(crate) top_k: u32,
    /// Sample within the top-p probability mass (1 = all).
    #[arg(long, default_value_t = 1.0)]
    pub(crate) top_p: f32,
    /// Seed of the sampler (runs with one seed reproduce).
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Print `{"text", "prompt_ids", "ids", "stop", "tokens_per_second"}` instead of streaming.
    #[arg(long)]
    pub(crate) json: bool,
    /// Quantize first (the tokens come from the fused graph).
    #[command(flatten)]
    recipe: super::recipe_args::RecipeArgs,
}

/// The context length when `--max-seq` is not given (or the model's limit, when smaller).
const DEFAULT_MAX_SEQ: u64 = 4096;

/// Runs `qfuse generate`: flags checked first, then the model loaded and generation streamed
/// (with `--json`, a bar over new tokens on stderr instead).
pub fn run(args: &GenerateArgs, quiet: bool) -> anyhow::Result<()> {
    let sampling = Sampling { temperature: args.temperature, top_k: args.top_k, top_p: args.top_p, seed: args.seed };
    sampling.check().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(args.max_new_tokens >= 1, "--max-new-tokens 0: generate at least one token");
    if args.model.extension().is_some_and(|e| e == "plan") {
        return super::generate_plan::run(args, sampling, quiet);
    }
    let storage = KvFormat::parse_storage(&args.kv_cache).map_err(|e| anyhow::anyhow!("--kv-cache: {e}"))?;
    super::validate::model_path(&args.model, true)?;
    let max_seq = args.max_seq.unwrap_or(DEFAULT_MAX_SEQ);
    if max_seq == 0 {
        bail!("--max-seq 0: must be at least 1");
    }
    let recipe = args.recipe.recipe()?;
    let opts = DecoderOptions {
        max_batch: 1,
        max_seq: Some(max_seq),
        kv: KvFormat::Float(qfuse::ir::DType::F32),
        max_step: None,
        ..Default::default()
    };
    let spinner = qfuse::progress::spinner(format!("loading {}", args.model.display()), quiet);
    let mut model = decoder::load(&args.model, &opts)?;
    spinner.finish_and_clear();
    if let Some(seq) = args.max_seq {
        super::validate::at_most("--max-seq", seq, model.config.max_position_embeddings, "the model's position limit")?;
    }
    if let Some(r) = &recipe {
        super::validate::excludes(r, &super::validate::matmul_names(&model.graph))?;
    }
    let tok = model.tokenizer.as_ref().with_context(|| format!("{}: the model has no tokenizer", args.model.display()))?;
    let prompt_ids = prompt_ids(args, tok)?;
    if prompt_ids.len() as u64 >= model.max_seq {
        bail!(
            "the prompt has {} tokens but the context holds {} (--max-seq, or the model's limit of {})",
            prompt_ids.len(),
            model.max_seq,
            model.config.max_position_embeddings
        );
    }
    decoder::set_kv_cache(&mut model, storage, &args.recipe.decoder_calib_options(quiet)?.sentences, quiet)?;
    let graph = match recipe {
        Some(recipe) => {
            let recipe = decoder::decoder_recipe(recipe);
            let calib = args.recipe.decoder_calib_options(quiet)?;
            super::recipe_args::quantize(&model, &recipe, &calib, &args.recipe.pass_options(), quiet)?.fused
        }
        None => model.graph.clone(),
    };
    generate_text(args, &model, &graph, &prompt_ids, &sampling, quiet)
}

fn prompt_ids(args: &GenerateArgs, tok: &qfuse::import::gguf::GgufTokenizer) -> anyhow::Result<Vec<u32>> {
    if !args.chat {
        return Ok(tok.encode(&args.prompt)?);
    }
    let template = tok.chat_template()?.context("--chat: the model has no chat template")?;
    let mut messages = vec![];
    if let Some(system) = &args.system {
        messages.push(ChatMessage::new("system", system.clone()));
    }
    messages.push(ChatMessage::new("user", args.prompt.clone()));
    let text = template.render(&messages, true, &tok.bos_text(), &tok.eos_text())?;
    Ok(tok.encode(&text)?)
}

fn generate_text(
    args: &GenerateArgs,
    model: &DecoderModel,
    graph: &qfuse::ir::Graph,
    prompt: &[u32],
    s: &Sampling,
    quiet: bool,
) -> anyhow::Result<()> {
    let tok = model.tokenizer.as_ref().context("no tokenizer")?;
    let mut session = Session::new(graph, &model.weights, 0).map_err(anyhow::Error::msg)?;
    let eos: Vec<u32> = model.config.eos_token_ids.iter().copied().chain(tok.eos_id()).collect();
    let mut stream = StreamDecoder::new();
    let mut ids = vec![];
    let mut failure = None;
    let started = Instant::now();
    let mut first_token = None;
    // Streamed text shows progress itself; JSON waits for the end, so a bar counts tokens.
    let bar = qfuse::progress::bar(args.max_new_tokens as u64, "tokens", "generating", quiet || !args.json);
    let (new, stop) = generate::generate(&mut session, prompt, args.max_new_tokens, s, &eos, &mut |id| {
        first_token.get_or_insert_with(|| started.elapsed());
        ids.push(id);
        if args.json {
            bar.inc(1);
            return true;
        }
        match stream.next_text(tok, &ids, true) {
            Ok(text) => {
                let mut out = std::io::stdout().lock();
                write!(out, "{text}").and_then(|_| out.flush()).is_ok()
            }
            Err(e) => {
                failure = Some(e);
                false
            }
        }
    })
    .map_err(anyhow::Error::msg)?;
    bar.finish_and_clear();
    if let Some(e) = failure {
        return Err(e.into());
    }
    let total = started.elapsed().as_secs_f64();
    let decode_secs = total - first_token.map_or(total, |t| t.as_secs_f64());
    let rate = if new.len() > 1 { (new.len() - 1) as f64 / decode_secs.max(1e-9) } else { 0.0 };
    let stop = match stop {
        Stop::Eos => "eos",
        Stop::Length => "length",
        Stop::Context => "context",
        Stop::Caller => "stopped",
    };
    if args.json {
        let text = tok.decode(&new, true)?;
        let doc = serde_json::json!({"text": text, "prompt_ids": prompt, "ids": new, "stop": stop, "tokens_per_second": rate});
        super::output::print_line(&serde_json::to_string_pretty(&doc)?)?;
    } else {
        super::output::print_line("")?;
        eprintln!("{} prompt + {} new tokens ({stop}); {rate:.1} tokens/s after the first", prompt.len(), new.len());
    }
    Ok(())
}
