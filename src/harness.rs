//! Untrusted bytes into each parser, the way the `qfuse` commands read files: the one entry point
//! per parser that the fuzz targets (`fuzz/fuzz_targets/`) and the regression replays
//! (`tests/fuzz_regressions.rs`, inputs in `tests/fixtures/fuzz/<target>/`) share.
//!
//! Contract: each function returns `Ok` or `Err` for any input and never panics, aborts or
//! allocates far beyond the input's size. Inputs that must be files are written to a scratch
//! folder of this process first.

use std::path::{Path, PathBuf};

use crate::check::PlanWeights;
use crate::import::{self, TextTokenizer, WeightStore};
use crate::interp::WeightSource;
use crate::plan::Plan;

/// A plan file: load and validate it, verify every section, decode every weight, evaluate every
/// dimension expression at the largest symbol values and parse the stored IR (what `inspect` and
/// `check` do before they touch a GPU).
pub fn plan(bytes: &[u8]) -> Result<(), String> {
    let path = scratch_file("input.plan", bytes)?;
    let plan = Plan::load(&path, None).map_err(|e| e.to_string())?;
    plan.verify_sections().map_err(|e| e.to_string())?;
    let meta = plan.meta();
    let dims = meta.inputs.iter().chain(&meta.outputs).flat_map(|s| &s.shape);
    let dims = dims.chain(meta.buffers.iter().flat_map(|b| &b.shape)).chain(meta.kernels.iter().flat_map(|k| &k.grid));
    for d in dims {
        let _ = d.eval_with(&meta.symbols).map(|_| d.to_string());
    }
    PlanWeights::load(&plan).map_err(|e| e.to_string())?;
    crate::ir::parse(&meta.ir_text).map_err(|e| e.to_string())?;
    Ok(())
}

/// IR text: parse it, then verify and print what parsed.
pub fn ir_text(bytes: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
    let graph = crate::ir::parse(text).map_err(|e| e.to_string())?;
    crate::ir::verify(&graph, "fuzz").map_err(|e| e.to_string())?;
    crate::ir::print(&graph);
    Ok(())
}

/// A safetensors file: open the weight store and decode every tensor.
pub fn safetensors(bytes: &[u8]) -> Result<(), String> {
    let path = scratch_file("model.safetensors", bytes)?;
    let store = WeightStore::open(&path).map_err(|e| e.to_string())?;
    for name in store.names() {
        store.weight(name)?;
    }
    Ok(())
}

/// A model folder's JSON: the bytes as `config.json` (the BERT config), and as `modules.json` and
/// `1_Pooling/config.json` (the sentence-transformers head); `Ok` when either reader accepts them.
pub fn config(bytes: &[u8]) -> Result<(), String> {
    let dir = scratch_dir()?;
    std::fs::create_dir_all(dir.join("1_Pooling")).map_err(|e| format!("{}: {e}", dir.display()))?;
    for file in ["config.json", "modules.json", "1_Pooling/config.json"] {
        write(&dir.join(file), bytes)?;
    }
    let head = import::sentence_transformers_head(&dir);
    match (import::read_config(&dir), head) {
        (Err(e), Err(_)) => Err(e.to_string()),
        _ => Ok(()),
    }
}

/// A `tokenizer.json`: load it and encode a few texts.
pub fn tokenizer(bytes: &[u8]) -> Result<(), String> {
    let tok = TextTokenizer::from_bytes(bytes, Path::new("tokenizer.json"), 16).map_err(|e| e.to_string())?;
    let texts = ["A man is eating food.", "Où est la gare ? 東京 🚀", ""].map(String::from);
    tok.encode(&texts[..2]).map_err(|e| e.to_string())?;
    tok.encode(&texts[2..]).map_err(|e| e.to_string())?;
    Ok(())
}

/// One parser's entry point: untrusted bytes in, `Ok` or an error message out.
pub type Parse = fn(&[u8]) -> Result<(), String>;

/// For fuzz targets: a panic hook that aborts (so libFuzzer records a crash) unless the panic is
/// contained by [`crate::util::contain_panic`] and becomes an error. libFuzzer's own hook aborts
/// on every panic; call this once per process, from the target's `init`.
pub fn abort_on_uncontained_panics() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !crate::util::panic_is_contained() {
            report(info);
            std::process::abort();
        }
    }));
}

/// The parsers by target name, as `fuzz/fuzz_targets/<name>.rs` and the fixture folders call them.
pub const TARGETS: [(&str, Parse); 5] =
    [("plan", plan), ("ir_text", ir_text), ("safetensors", safetensors), ("config", config), ("tokenizer", tokenizer)];

/// This thread's scratch folder (created once, reused by every call).
fn scratch_dir() -> Result<PathBuf, String> {
    let thread = format!("{:?}", std::thread::current().id()).replace(|c: char| !c.is_ascii_alphanumeric(), "");
    let dir = std::env::temp_dir().join(format!("qfuse-harness-{}-{thread}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

fn scratch_file(name: &str, bytes: &[u8]) -> Result<PathBuf, String> {
    let path = scratch_dir()?.join(name);
    write(&path, bytes)?;
    Ok(path)
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}
