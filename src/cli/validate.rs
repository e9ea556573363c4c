//! Flag checks that run before any work starts (import, calibration, NVRTC). Every error names
//! the flag, the value given and the limit it broke, in one plain sentence.

use anyhow::{bail, ensure};
use qfuse::quant::recipe::{glob_match, Recipe};
use std::path::Path;

/// Checks that `path` can be a model folder: it exists and is a folder (a `.gguf` file too when
/// `gguf_ok`). A file inside a model folder is answered with the folder to pass instead.
pub fn model_path(path: &Path, gguf_ok: bool) -> anyhow::Result<()> {
    let is_gguf = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if !path.exists() {
        let want = if gguf_ok { "a model folder or a .gguf file" } else { "a model folder (config.json, model.safetensors)" };
        bail!("{} does not exist; pass {want}", path.display());
    }
    if path.is_file() && !(gguf_ok && is_gguf) {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        bail!("{} is a file, not a model folder; pass the folder that holds it ({})", path.display(), parent.display());
    }
    Ok(())
}

/// Checks that `flag`'s output file `path` can be written: its folder exists and accepts a new
/// file, and the path itself is not a folder. Probes by creating and removing a hidden file.
pub fn output_path(flag: &str, path: &Path) -> anyhow::Result<()> {
    ensure!(!path.is_dir(), "{flag} {}: is a folder; name a file to write", path.display());
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    ensure!(dir.is_dir(), "{flag} {}: the folder {} does not exist", path.display(), dir.display());
    let probe = dir.join(format!(".qfuse-write-probe-{}", std::process::id()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => bail!("{flag} {}: cannot write in {} ({})", path.display(), dir.display(), plain_io(&e)),
    }
}

/// An OS error without its `(os error N)` suffix, e.g. "Permission denied".
fn plain_io(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Checks a size flag against 1 ..= `limit`, where `what` says where the limit comes from.
pub fn at_most(flag: &str, value: u64, limit: u64, what: &str) -> anyhow::Result<()> {
    ensure!(value >= 1, "{flag} {value}: must be at least 1");
    ensure!(value <= limit, "{flag} {value}: exceeds {limit}, {what}");
    Ok(())
}

/// The largest sequence length of the BERT model in `dir` (`max_position_embeddings`).
pub fn position_limit(dir: &Path) -> anyhow::Result<u64> {
    Ok(qfuse::import::read_config(dir)?.max_position_embeddings)
}

/// Checks that every `--exclude` glob of `recipe` matches at least one of `names` (the matmul
/// names); an unmatched glob is an error listing the nearest names.
pub fn excludes(recipe: &Recipe, names: &[String]) -> anyhow::Result<()> {
    for pat in &recipe.exclude {
        if names.iter().any(|n| glob_match(pat, n)) {
            continue;
        }
        let mut near: Vec<(usize, &String)> = names.iter().map(|n| (edit_distance(pat, n), n)).collect();
        near.sort();
        near.dedup_by(|a, b| a.1 == b.1);
        let list: Vec<&str> = near.iter().take(5).map(|(_, n)| n.as_str()).collect();
        bail!("--exclude '{pat}' matches no matmul; nearest names: {}", list.join(", "));
    }
    Ok(())
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(here + 1);
            prev = here;
        }
    }
    row[b.len()]
}

/// The matmul names `--exclude` globs are matched against (as `quant` names its sites).
pub fn matmul_names(graph: &qfuse::ir::Graph) -> Vec<String> {
    let mut g = graph.clone();
    qfuse::quant::insert::find_sites(&mut g).into_iter().map(|s| s.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn at_most_names_flag_value_and_limit() {
        let e = at_most("--max-seq", 100000, 512, "the model's position limit").unwrap_err().to_string();
        assert!(e.contains("--max-seq") && e.contains("100000") && e.contains("512"), "{e}");
        assert!(at_most("--max-batch", 0, 64, "x").unwrap_err().to_string().contains("--max-batch 0"));
        assert!(at_most("--max-seq", 512, 512, "x").is_ok());
    }

    #[test]
    fn output_path_rejects_missing_folders() {
        let e = output_path("-o", Path::new("/nonexistent-qfuse-dir/x.plan")).unwrap_err().to_string();
        assert!(e.contains("does not exist") && e.contains("-o"), "{e}");
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(output_path("-o", &dir.path().join("x.plan")).is_ok());
        assert!(output_path("-o", dir.path()).is_err(), "a folder is not an output file");
    }
}
