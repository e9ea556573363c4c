//! Small helpers shared by the library and the CLI.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to a temporary file beside `path`, syncs it, then renames it over `path`, so a
/// reader never sees a partial file and an interrupted write loses nothing.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// [`write_atomic`] for content that `fill` streams into the file (through a buffer), so a large
/// file never sits in memory whole.
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        fill(&mut f)?;
        let f = f.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

thread_local! {
    /// How many [`contain_panic`] calls are running on this thread.
    static CONTAINING: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Runs third-party code `f` that panics on some malformed input (a dependency's bug, not
/// qfuse's), turning such a panic into `Err("<what> panicked: <message>")`. Panic hooks that
/// report bugs check [`panic_is_contained`] and stay quiet for these.
pub fn contain_panic<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    CONTAINING.with(|c| c.set(c.get() + 1));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CONTAINING.with(|c| c.set(c.get() - 1));
    result.map_err(|payload| format!("{what} panicked: {}", panic_message(payload.as_ref())))
}

/// Whether the current thread is inside [`contain_panic`], so a panic now will become an error.
pub fn panic_is_contained() -> bool {
    CONTAINING.with(|c| c.get() > 0)
}

/// The text of a panic payload (`panic!("…")` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a non-text payload".into())
}

/// A `'static` copy of `name`, allocated once per distinct name for the life of the process (the
/// interpreter binds inputs by `&str`; state-input names such as `past.k.3` are a small fixed
/// set per model, so this stays bounded).
#[cfg(feature = "compiler")]
pub fn intern(name: &str) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(&found) = names.get(name) {
        return found;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

#[cfg(test)]
mod contain_tests {
    use super::*;

    #[test]
    fn a_contained_panic_is_an_error() {
        assert_eq!(contain_panic("lib", || 3), Ok(3));
        let err = contain_panic("lib", || -> u8 { panic!("bad {}", "input") }).unwrap_err();
        assert_eq!(err, "lib panicked: bad input");
        assert!(!panic_is_contained());
    }
}
