//! Text generation on the reference interpreter: a [`Session`] per sequence holding its KV cache,
//! prefill of the prompt in one step, then one step per new token, chosen by [`sample::choose`].

pub mod eval;
pub mod paged;
pub mod sample;
pub mod session;

pub use sample::Sampling;
pub use session::{Session, StepLogits};

/// The tokenizer a decoder plan carries.
pub fn plan_tokenizer(plan: &crate::plan::Plan, d: &crate::plan::DecoderMeta) -> anyhow::Result<crate::import::gguf::GgufTokenizer> {
    let i = plan
        .sections()
        .iter()
        .position(|s| s.kind == crate::plan::SectionKind::Other && s.name == crate::compile::TOKENIZER_SECTION)
        .ok_or_else(|| anyhow::anyhow!("{}: the plan carries no tokenizer", plan.path().display()))?;
    let json = plan.section_bytes(i)?;
    let eos = d.tokens.eos.first().copied();
    Ok(crate::import::gguf::GgufTokenizer::from_saved(
        plan.path(),
        json,
        d.tokens.bos,
        eos,
        d.tokens.add_bos,
        d.tokens.chat_template.clone(),
    )?)
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// An end-of-sequence token was produced (it is not part of the output).
    Eos,
    /// `max_new_tokens` were produced.
    Length,
    /// The context limit was reached.
    Context,
    /// The caller's callback asked to stop.
    Caller,
}

/// Generates up to `max_new` tokens after `prompt`; `on_token(id)` sees each new token as it comes
/// and returns false to stop. Returns the new tokens and why generation stopped.
pub fn generate(
    session: &mut Session,
    prompt: &[u32],
    max_new: usize,
    sampling: &Sampling,
    eos: &[u32],
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<(Vec<u32>, Stop), String> {
    sampling.check()?;
    let mut logits = session.step(prompt)?;
    let mut out = vec![];
    loop {
        if out.len() >= max_new {
            return Ok((out, Stop::Length));
        }
        let last = logits.row(logits.rows() - 1);
        let next = sample::choose(last, sampling, out.len() as u64).ok_or("the logits are all NaN")? as u32;
        if eos.contains(&next) {
            return Ok((out, Stop::Eos));
        }
        out.push(next);
        if !on_token(next) {
            return Ok((out, Stop::Caller));
        }
        if session.len() >= session.capacity() {
            return Ok((out, Stop::Context));
        }
        logits = session.step(&[next])?;
    }
}
