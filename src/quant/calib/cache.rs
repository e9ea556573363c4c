//! The calibration cache: one calibration's statistics, stored under a key over everything they
//! depend on, so compiling the same model again (another recipe with the same activation sites,
//! another calibration method, other passes or codegen options) skips the interpreter runs.
//! TensorRT users know the idea as the calibration cache; here it is keyed by content, so a stale
//! entry cannot be picked up.
//!
//! The key is a SHA-256 over
//! - the cache format and the digest of the running qfuse executable (a rebuilt interpreter may
//!   sum differently, and its statistics must not be reused);
//! - the printed graph the runs go through, and the values observed;
//! - every weight the graph reads: name, storage encoding, shape and bytes
//!   ([`crate::import::WeightStore::digest`]);
//! - each run's inputs (name, dtype, shape, data) and sequence token counts.
//!
//! The method, the storage format and the schedule are not in it: the statistics do not depend
//! on them (a streamed schedule gives the whole run's statistics bit for bit, [`super::stream`]).
//!
//! Entries are `<dir>/<key>.stats` ([`postcard`]), written atomically. An entry that does not
//! decode, or does not hold exactly the values asked for, is a miss (with a warning): the cache
//! can cost time, never a wrong scale or a failed compile. A cache that cannot be written
//! (read-only disk) only logs a warning.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Calibration, Run, TensorStats};
use crate::import::WeightStore;
use crate::ir::{self, Graph, Op, ValueId};

/// The extension of an entry (`<key>.stats`).
pub const STATS_EXT: &str = "stats";

/// Bumped whenever the entry layout or the key's contents change.
const FORMAT: &str = "qfuse calibration cache 1";

/// A folder of calibration statistics named by content key.
#[derive(Debug, Clone)]
pub struct CalibCache {
    dir: PathBuf,
}

/// What an entry stores.
#[derive(Serialize, Deserialize)]
struct Entry {
    stats: Vec<(ValueId, TensorStats)>,
    batches: usize,
    samples: usize,
}

impl CalibCache {
    /// A cache in `dir` (created on the first store).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CalibCache { dir: dir.into() }
    }

    /// The folder beside the kernel cache's (`…/qfuse/calib` next to `…/qfuse/kernels`), `None`
    /// when no cache location is known.
    pub fn default_location() -> Option<PathBuf> {
        crate::codegen::cache::KernelCache::default_location().map(|kernels| Self::beside(&kernels))
    }

    /// The calibration cache folder beside the kernel cache folder `kernels`.
    pub fn beside(kernels: &Path) -> PathBuf {
        kernels.with_file_name("calib")
    }

    /// The key of observing `values` of `g` over `runs` with the weights of `weights`; errors when
    /// a weight the graph reads cannot be read.
    pub fn key(g: &Graph, weights: &WeightStore, runs: &[Run], values: &[ValueId]) -> Result<String, String> {
        let mut h = Sha256::new();
        h.update(FORMAT);
        h.update(executable_digest());
        h.update(ir::print(g));
        let mut sorted = values.to_vec();
        sorted.sort();
        sorted.iter().for_each(|v| h.update(v.0.to_le_bytes()));
        let mut names: Vec<&str> =
            g.nodes.iter().filter_map(|(_, n)| if let Op::Weight { name } = &n.op { Some(name.as_str()) } else { None }).collect();
        names.sort_unstable();
        names.dedup();
        h.update(weights.digest(&names)?);
        for run in runs {
            h.update(b"run");
            for (name, t) in run.inputs {
                h.update(name.as_bytes());
                t.hash_into(&mut h);
            }
            for n in run.tokens.unwrap_or_default() {
                h.update((*n as u64).to_le_bytes());
            }
        }
        Ok(hex(&h.finalize()))
    }

    /// The statistics stored under `key` when they cover exactly `values`, else `None` (a damaged
    /// or foreign entry is reported and ignored).
    pub fn load(&self, key: &str, values: &[ValueId]) -> Option<Calibration> {
        let path = self.path(key);
        let bytes = std::fs::read(&path).ok()?;
        let entry: Entry = match postcard::from_bytes(&bytes) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "calibration cache entry does not decode; calibrating again");
                return None;
            }
        };
        let stats: HashMap<ValueId, TensorStats> = entry.stats.into_iter().collect();
        let covers = stats.len() == values.len() && values.iter().all(|v| stats.get(v).is_some_and(TensorStats::is_well_formed));
        if !covers {
            tracing::warn!(path = %path.display(), "calibration cache entry holds other values; calibrating again");
            return None;
        }
        Some(Calibration { stats, batches: entry.batches, samples: entry.samples, elapsed: std::time::Duration::ZERO, cached: true })
    }

    /// Stores `c` under `key` (atomically); a failure is logged, never returned.
    pub fn store(&self, key: &str, c: &Calibration) {
        let mut stats: Vec<(ValueId, TensorStats)> = c.stats.iter().map(|(v, s)| (*v, s.clone())).collect();
        stats.sort_by_key(|(v, _)| *v);
        let entry = Entry { stats, batches: c.batches, samples: c.samples };
        let written = postcard::to_allocvec(&entry)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::create_dir_all(&self.dir).and_then(|()| crate::util::write_atomic(&self.path(key), &bytes)));
        if let Err(e) = written {
            tracing::warn!(dir = %self.dir.display(), error = %e, "calibration cache not written");
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.{STATS_EXT}"))
    }

    /// The cache folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// SHA-256 of the running executable (empty when it cannot be read: then every build shares
/// entries, as they would if the interpreter never changed).
fn executable_digest() -> &'static [u8] {
    static DIGEST: OnceLock<Vec<u8>> = OnceLock::new();
    DIGEST.get_or_init(|| {
        let exe = std::env::current_exe().and_then(std::fs::read);
        exe.map(|bytes| Sha256::digest(bytes).to_vec()).unwrap_or_default()
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calibration(values: &[u32]) -> Calibration {
        let stats = values
            .iter()
            .map(|&v| {
                let mut s = TensorStats::new();
                s.add(&[v as f32, -2.5, 0.0]);
                (ValueId(v), s)
            })
            .collect();
        Calibration { stats, batches: 1, samples: 3, elapsed: std::time::Duration::from_secs(1), cached: false }
    }

    #[test]
    fn an_entry_reads_back_only_for_the_values_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CalibCache::new(dir.path().join("calib"));
        let stored = calibration(&[3, 7]);
        cache.store("k", &stored);
        let back = cache.load("k", &[ValueId(7), ValueId(3)]).expect("stored under k");
        assert!(back.cached);
        assert_eq!(back.stats, stored.stats);
        assert!(cache.load("k", &[ValueId(3)]).is_none(), "fewer values than stored");
        assert!(cache.load("k", &[ValueId(3), ValueId(7), ValueId(9)]).is_none(), "a value it lacks");
        assert!(cache.load("other", &[ValueId(3), ValueId(7)]).is_none(), "another key");
    }

    #[test]
    fn a_damaged_entry_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CalibCache::new(dir.path());
        cache.store("k", &calibration(&[1]));
        let path = dir.path().join("k.stats");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert!(cache.load("k", &[ValueId(1)]).is_none(), "a truncated entry");
        std::fs::write(&path, b"").unwrap();
        assert!(cache.load("k", &[ValueId(1)]).is_none(), "an empty entry");
    }
}
