//! Chat templates: the Jinja templates that GGUF files (`tokenizer.chat_template`) and Hugging
//! Face folders (`tokenizer_config.json`) ship, rendered with `minijinja`.
//!
//! The environment matches what `transformers` renders with: `trim_blocks` and `lstrip_blocks`
//! on, trailing newline dropped, `raise_exception(msg)` available, and the variables `messages`
//! (each with `role` and `content`), `add_generation_prompt`, `bos_token` and `eos_token`.

use super::ImportError;
use minijinja::syntax::SyntaxConfig;
use minijinja::value::Serde;
use minijinja::{context, Environment, Error, ErrorKind, Value};
use serde::Serialize;

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message of `role` with `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

/// A chat template whose syntax has been checked.
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    origin: String,
    source: String,
}

impl ChatTemplate {
    /// Compiles `source`; `origin` (file and key) names it in errors.
    pub fn new(origin: impl Into<String>, source: impl Into<String>) -> Result<Self, ImportError> {
        let template = ChatTemplate { origin: origin.into(), source: source.into() };
        template.environment()?;
        Ok(template)
    }

    /// The template's text.
    pub fn source(&self) -> &str {
        &self.source
    }

    fn error(&self, e: Error) -> ImportError {
        let mut message = e.to_string();
        if let Some(line) = e.line() {
            message = format!("line {line}: {message}");
        }
        ImportError::ChatTemplate { origin: self.origin.clone(), message }
    }

    fn environment(&self) -> Result<Environment<'_>, ImportError> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build().map_err(|e| self.error(e))?;
        env.set_syntax(syntax);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> { Err(Error::new(ErrorKind::InvalidOperation, msg)) });
        env.add_template("chat", &self.source).map_err(|e| self.error(e))?;
        Ok(env)
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's reply
    /// begins.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String, ImportError> {
        let env = self.environment()?;
        let template = env.get_template("chat").map_err(|e| self.error(e))?;
        let messages = Value::from(Serde(messages));
        let ctx = context! { messages, add_generation_prompt, bos_token, eos_token };
        template.render(ctx).map_err(|e| self.error(e))
    }
}
