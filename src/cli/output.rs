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

/// Widest a table may print when stdout is not a terminal (a terminal's own width wins).
const TABLE_WIDTH: u16 = 120;

/// An empty table in the CLI's style: condensed UTF-8 borders, cells wrapped so that the table fits
/// the terminal, or [`TABLE_WIDTH`] columns when stdout is not one.
pub fn table() -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_content_arrangement(comfy_table::ContentArrangement::Dynamic);
    if t.width().is_none() {
        t.set_width(TABLE_WIDTH);
    }
    t
}
