//! A content-addressed CUBIN cache in front of NVRTC.
//!
//! The key is a SHA-256 over everything that decides the CUBIN's bytes: the complete source, the
//! entry name, the NVRTC options, the target arch, the NVRTC version and the qfuse version. A hit
//! returns the stored bytes (after checking they are an ELF); a miss compiles and stores the result
//! atomically, so concurrent compilers never see a partial file. A cache that cannot be written
//! (read-only disk) only costs time: the compile still succeeds and a warning is logged.
//!
//! Location: `$QFUSE_CACHE_DIR/kernels`, else `$XDG_CACHE_HOME/qfuse/kernels`, else
//! `~/.cache/qfuse/kernels`.

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
    /// The default per-user cache (see the module doc); `None` disables caching.
    pub fn default_location() -> Option<PathBuf> {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        env("QFUSE_CACHE_DIR")
            .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("qfuse")))
            .or_else(|| env("HOME").map(|h| h.join(".cache").join("qfuse")))
            .map(|d| d.join("kernels"))
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
