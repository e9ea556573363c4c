//! Text generation on the reference interpreter: a [`Session`] per sequence holding its KV cache,
//! prefill of the prompt in one step, then one step per new token, chosen by [`sample::choose`].

pub mod eval;
pub mod paged;
pub mod sample;
pub mod session;

pub use sample::Sampling;
pub use session::{Session, StepLogits};

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
