//! `qfuse generate m.plan`: text generation with a compiled decoder plan on the GPU (the
//! runtime's [`Generator`]), streaming tokens as they arrive.

use super::generate::GenerateArgs;
use anyhow::Context as _;
use qfuse::import::chat::ChatMessage;
use qfuse::import::gguf::{GgufTokenizer, StreamDecoder};
use qfuse::plan::Plan;
use qfuse::runtime::scheduler::{Request, SamplingParams};
use qfuse::runtime::{Engine, Generator};
use std::io::Write;
use std::time::Instant;

/// Prompt ids: the text, or the user message through the plan's chat template.
pub fn prompt_ids(tok: &GgufTokenizer, prompt: &str, chat: bool, system: Option<&str>) -> anyhow::Result<Vec<u32>> {
    if !chat {
        return Ok(tok.encode(prompt)?);
    }
    let template = tok.chat_template()?.context("--chat: the plan has no chat template")?;
    let mut messages = vec![];
    if let Some(system) = system {
        messages.push(ChatMessage::new("system", system));
    }
    messages.push(ChatMessage::new("user", prompt));
    let text = template.render(&messages, true, &tok.bos_text(), &tok.eos_text())?;
    Ok(tok.encode(&text)?)
}

/// Runs `qfuse generate` on a plan.
pub fn run(args: &GenerateArgs, sampling: SamplingParams, quiet: bool) -> anyhow::Result<()> {
    let spinner = qfuse::progress::spinner(format!("loading {}", args.model.display()), quiet);
    let plan = Plan::load(&args.model, None)?;
    let d = plan
        .meta()
        .decoder
        .clone()
        .with_context(|| format!("{}: not a decoder plan (compile a decoder to generate)", args.model.display()))?;
    let engine = Engine::load(&args.model)?;
    spinner.finish_and_clear();
    let tok = qfuse::generate::plan_tokenizer(&plan, &d)?;
    let prompt = prompt_ids(&tok, &args.prompt, args.chat, args.system.as_deref())?;
    if prompt.len() as u64 >= d.max_seq {
        anyhow::bail!("the prompt has {} tokens; the plan's context is {} (recompile with a larger --max-seq)", prompt.len(), d.max_seq);
    }
    let max_new = (args.max_new_tokens as u64).min(d.max_seq - prompt.len() as u64) as u32;
    let mut gen = Generator::new(&engine, None)?;
    gen.submit(Request { id: 0, prompt: prompt.clone(), max_new, stop: d.tokens.eos.clone(), sampling })?;
    let started = Instant::now();
    let mut first = None;
    let mut ids = Vec::new();
    let mut stream = StreamDecoder::new();
    let mut failure = None;
    let done = gen.run(&mut |_, t| {
        first.get_or_insert_with(|| started.elapsed());
        ids.push(t);
        if !args.json && failure.is_none() {
            match stream.next_text(&tok, &ids, true) {
                Ok(text) => {
                    let mut out = std::io::stdout().lock();
                    let _ = write!(out, "{text}").and_then(|_| out.flush());
                }
                Err(e) => failure = Some(e),
            }
        }
    })?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    let total = started.elapsed().as_secs_f64();
    let ttft = first.map_or(total, |t| t.as_secs_f64());
    let rate = if ids.len() > 1 { (ids.len() - 1) as f64 / (total - ttft).max(1e-9) } else { 0.0 };
    let stop = done.first().map_or("none", |c| match c.finish {
        qfuse::runtime::scheduler::Finish::Stop => "eos",
        qfuse::runtime::scheduler::Finish::Length => "length",
        qfuse::runtime::scheduler::Finish::Context => "context",
    });
    if args.json {
        let text = tok.decode(&ids, true)?;
        let doc = serde_json::json!({"text": text, "prompt_ids": prompt, "ids": ids, "stop": stop, "tokens_per_second": rate,
            "time_to_first_token_ms": ttft * 1e3, "device": engine.device_name()});
        super::output::print_line(&serde_json::to_string_pretty(&doc)?)?;
    } else {
        super::output::print_line("")?;
        eprintln!(
            "{} prompt + {} new tokens ({stop}) on {}; first token after {:.1} ms, then {rate:.1} tokens/s",
            prompt.len(),
            ids.len(),
            engine.device_name(),
            ttft * 1e3
        );
    }
    Ok(())
}
