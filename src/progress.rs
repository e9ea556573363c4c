//! Progress bars on stderr for steps that can take more than a second.
//!
//! Every bar of the library and the CLI comes from here, so they look and hide alike: a bar is
//! hidden when the caller asks for quiet (`--quiet`) and, by indicatif's own rule, whenever stderr
//! is not a terminal (pipes, CI logs, tests), so output meant for scripts never carries it.

use std::borrow::Cow;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `len` steps counted in `unit` (`"batches"`, `"kernels"`, …) and labelled `message`;
/// hidden when `quiet`.
pub fn bar(len: u64, unit: &str, message: impl Into<Cow<'static, str>>, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let template = format!("{{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{elapsed}}");
    bar.set_style(ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()));
    bar.set_message(message);
    bar
}

/// A spinner for a step whose length is not known in advance, labelled `message`, ticking on its
/// own with the elapsed time; hidden when `quiet`. Clear it with `finish_and_clear`.
pub fn spinner(message: impl Into<Cow<'static, str>>, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").unwrap_or_else(|_| ProgressStyle::default_spinner()));
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}
