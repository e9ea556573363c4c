//! A content-addressed CUBIN cache in front of NVRTC.
//!
//! The key is a SHA-256 over everything that decides the CUBIN's bytes: the complete source, the
//! entry name, the NVRTC options, the target arch, the NVRTC version and the qfuse version. A hit
//! returns the stored bytes (after checking they are an ELF); a miss compiles and stores the result
//! atomically, so concurrent compilers never see a partial file. A cache that cannot be written
//! (read-only disk) only costs time: the compile still succeeds and a warning is logged.
//!
//! Location ([`KernelCache::default_location`]): `$QFUSE_CACHE_DIR/kernels`; else, when qfuse
//! runs inside its own source checkout (the current folder or the executable lies in it), the
//! checkout's `.cache/kernels` — the folder the README's scripts use, so the demo and manual
//! commands share one cache; else `$XDG_CACHE_HOME/qfuse/kernels`, else `~/.cache/qfuse/kernels`.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::nvrtc::{self, NvrtcError};

/// NVRTC options every plan kernel is compiled with (besides the arch and include path). Warning
/// 177 ("declared but never referenced") is expected in specialised templates and silenced.
pub const DEFAULT_OPTIONS: &[&str] = &["--std=c++17", "-default-device", "--diag-suppress=177"];

/// A directory of CUBINs named by content key.
#[derive(Debug, Clone)]
pub struct KernelCache {
    dir: Option<PathBuf>,
}

/// Where a CUBIN came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Read from the cache.
    Cached,
    /// Compiled now.
    Compiled,
}

impl KernelCache {
    /// The default cache folder (see the module doc); `None` when no location is known.
    pub fn default_location() -> Option<PathBuf> {
        Self::locate().map(|(dir, _)| dir)
    }

    /// The default cache folder and why it was chosen (see the module doc).
    pub fn locate() -> Option<(PathBuf, CacheSource)> {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        if let Some(d) = env("QFUSE_CACHE_DIR") {
            return Some((d.join("kernels"), CacheSource::Env));
        }
        let exe = std::env::current_exe().ok();
        let starts = [std::env::current_dir().ok(), exe.as_deref().and_then(Path::parent).map(Path::to_path_buf)];
        if let Some(root) = starts.iter().flatten().find_map(|d| checkout_root(d)) {
            return Some((root.join(".cache").join("kernels"), CacheSource::Checkout));
        }
        env("XDG_CACHE_HOME")
            .map(|d| d.join("qfuse"))
            .or_else(|| env("HOME").map(|h| h.join(".cache").join("qfuse")))
            .map(|d| (d.join("kernels"), CacheSource::User))
    }

    /// A cache in `dir` (created on first store), or no caching with `None`.
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self { dir }
    }

    /// The directory, if caching is on.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The cache key of one compilation (hex SHA-256).
    pub fn key(name: &str, source: &str, arch: &str, options: &[String], nvrtc_version: (u32, u32)) -> String {
        let mut h = Sha256::new();
        for part in [crate::plan::QFUSE_VERSION, arch, &format!("{}.{}", nvrtc_version.0, nvrtc_version.1), name] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.update((options.len() as u64).to_le_bytes());
        for o in options {
            h.update((o.len() as u64).to_le_bytes());
            h.update(o.as_bytes());
        }
        h.update(source.as_bytes());
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The CUBIN of `source` for `arch`: from the cache, or compiled with NVRTC and stored.
    pub fn cubin(&self, name: &str, source: &str, arch: &str) -> Result<(Vec<u8>, Origin), NvrtcError> {
        let options: Vec<String> = DEFAULT_OPTIONS.iter().map(|s| s.to_string()).collect();
        let version = nvrtc::locate()?.version;
        let key = Self::key(name, source, arch, &options, version);
        let path = self.dir.as_ref().map(|d| d.join(format!("{key}.cubin")));
        if let Some(bytes) = path.as_deref().and_then(read_valid) {
            return Ok((bytes, Origin::Cached));
        }
        let cubin = nvrtc::compile_cubin(name, source, arch, &options)?;
        if let Some(path) = &path {
            if let Err(e) = store(path, &cubin) {
                tracing::warn!(path = %path.display(), "cannot write the kernel cache: {e}");
            }
        }
        Ok((cubin, Origin::Compiled))
    }
}

/// Why [`KernelCache::locate`] chose its folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheSource {
    /// `$QFUSE_CACHE_DIR` is set.
    Env,
    /// qfuse runs inside its source checkout (the README's scripts use the same folder).
    Checkout,
    /// The per-user cache (`$XDG_CACHE_HOME` or `~/.cache`).
    User,
}

/// The qfuse source checkout that holds `start` (the nearest ancestor with `scripts/cache.sh` and
/// a `Cargo.toml` naming the `qfuse` package), if any.
pub fn checkout_root(start: &Path) -> Option<PathBuf> {
    start.ancestors().find(|d| is_checkout(d)).map(Path::to_path_buf)
}

fn is_checkout(dir: &Path) -> bool {
    dir.join("scripts").join("cache.sh").is_file()
        && std::fs::read_to_string(dir.join("Cargo.toml")).is_ok_and(|t| t.lines().any(|l| l.trim() == "name = \"qfuse\""))
}

/// The extension of a CUBIN cache entry.
pub const CUBIN_EXT: &str = "cubin";

/// What a cache folder holds: files ending `.{ext}` ([`CUBIN_EXT`], or the calibration cache's
/// [`crate::quant::calib::cache::STATS_EXT`]) and their total bytes (zero for a missing folder).
pub fn usage(dir: &Path, ext: &str) -> std::io::Result<(usize, u64)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(e),
    };
    let (mut files, mut bytes) = (0, 0);
    for entry in entries {
        let entry = entry?;
        if entry.path().extension().is_some_and(|e| e == ext) {
            files += 1;
            bytes += entry.metadata()?.len();
        }
    }
    Ok((files, bytes))
}

/// Removes every `.{ext}` file of a cache folder (nothing else in it); returns how many.
pub fn clear(dir: &Path, ext: &str) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == ext) {
            std::fs::remove_file(&path)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The file's bytes if it exists and is an ELF (anything else is treated as a miss).
fn read_valid(path: &Path) -> Option<Vec<u8>> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.starts_with(b"\x7fELF") {
        Some(bytes)
    } else {
        tracing::warn!(path = %path.display(), "ignoring a damaged kernel cache entry");
        None
    }
}

fn store(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::util::write_atomic(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checkout_is_found_from_inside_and_only_there() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert_eq!(checkout_root(&root.join("src").join("codegen")).as_deref(), Some(root));
        let elsewhere = tempfile::tempdir().expect("tempdir");
        assert_eq!(checkout_root(elsewhere.path()), None);
    }

    #[test]
    fn usage_and_clear_count_cubins_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.cubin"), b"\x7fELF1234").expect("write");
        std::fs::write(dir.path().join("b.cubin"), b"\x7fELF56").expect("write");
        std::fs::write(dir.path().join("notes.txt"), b"keep").expect("write");
        assert_eq!(usage(dir.path(), CUBIN_EXT).expect("usage"), (2, 14));
        assert_eq!(usage(dir.path(), "txt").expect("usage"), (1, 4));
        assert_eq!(clear(dir.path(), CUBIN_EXT).expect("clear"), 2);
        assert_eq!(usage(dir.path(), CUBIN_EXT).expect("usage"), (0, 0));
        assert!(dir.path().join("notes.txt").exists(), "clear removes CUBINs only");
        assert_eq!(usage(&dir.path().join("missing"), CUBIN_EXT).expect("missing folder"), (0, 0));
    }

    #[test]
    fn key_covers_every_input() {
        let opts = vec!["-O3".to_string()];
        let base = KernelCache::key("k", "src", "sm_90a", &opts, (13, 0));
        assert_eq!(base.len(), 64);
        assert_eq!(base, KernelCache::key("k", "src", "sm_90a", &opts, (13, 0)));
        assert_ne!(base, KernelCache::key("k", "src2", "sm_90a", &opts, (13, 0)));
        assert_ne!(base, KernelCache::key("k2", "src", "sm_90a", &opts, (13, 0)));
        assert_ne!(base, KernelCache::key("k", "src", "sm_89", &opts, (13, 0)));
        assert_ne!(base, KernelCache::key("k", "src", "sm_90a", &[], (13, 0)));
        assert_ne!(base, KernelCache::key("k", "src", "sm_90a", &opts, (13, 1)));
        // Length prefixes keep field boundaries: ("ab","c") ≠ ("a","bc").
        assert_ne!(KernelCache::key("ab", "c", "sm_90a", &[], (13, 0)), KernelCache::key("a", "bc", "sm_90a", &[], (13, 0)));
    }

    #[test]
    fn damaged_entries_are_misses() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.cubin");
        std::fs::write(&p, b"not an elf").unwrap();
        assert!(read_valid(&p).is_none());
        std::fs::write(&p, b"\x7fELF....").unwrap();
        assert!(read_valid(&p).is_some());
    }
}
