//! Writing files atomically.

use std::io::Write;

pub use qfuse::util::write_atomic;

/// Writes `text` and a newline to stdout. A closed pipe (`qfuse … | head`) ends output quietly
/// instead of panicking as `println!` would.
pub fn print_line(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
