//! Built-in sentence sets and calibration-file reading.
//!
//! `calibration_sentences.txt` (used to calibrate) and `eval_sentences.txt` (held out, used by
//! `qfuse eval`, never to calibrate) are disjoint; the eval set contains paraphrase groups so that
//! nearest-neighbour order between embeddings is meaningful.

use std::path::Path;

const CALIBRATION: &str = include_str!("calibration_sentences.txt");
const EVAL: &str = include_str!("eval_sentences.txt");
const DECODER: &str = include_str!("decoder_calibration.txt");

/// The built-in calibration set: varied English sentences (topics, lengths 3–60 words, questions,
/// lists, numbers).
pub fn default_calibration_sentences() -> Vec<String> {
    non_blank_lines(CALIBRATION)
}

/// The built-in calibration set of decoders: the English prose of
/// [`default_calibration_sentences`] plus chats (ChatML, as instruction-tuned models see them),
/// code in several languages, data and non-English prose (`decoder_calibration.txt`, one sample per
/// line with `\n` for a line break). Never used to evaluate.
pub fn default_decoder_calibration() -> Vec<String> {
    let mixed = non_blank_lines(DECODER).into_iter().map(|l| l.replace("\\n", "\n"));
    default_calibration_sentences().into_iter().chain(mixed).collect()
}

/// The built-in held-out evaluation set (disjoint from the calibration set), with paraphrase
/// groups. Never used to calibrate.
pub fn default_eval_sentences() -> Vec<String> {
    non_blank_lines(EVAL)
}

fn non_blank_lines(text: &str) -> Vec<String> {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
}

/// Reads a calibration file: one sample per line (surrounding whitespace trimmed), blank lines
/// skipped. Errors name the file, and for invalid UTF-8 the 1-based line; a file with no samples
/// is an error too.
pub fn read_sentences(path: &Path) -> Result<Vec<String>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read calibration file {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let text = std::str::from_utf8(line).map_err(|e| format!("{}: line {}: invalid UTF-8 ({e})", path.display(), i + 1))?;
        let text = text.trim_start_matches('\u{feff}').trim();
        if !text.is_empty() {
            out.push(text.to_string());
        }
    }
    if out.is_empty() {
        return Err(format!("calibration file {} has no samples (only blank lines)", path.display()));
    }
    Ok(out)
}
