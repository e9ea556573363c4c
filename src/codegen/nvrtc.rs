//! NVRTC: find a CUDA 13 `libnvrtc` without any environment variable and compile CUDA C to CUBIN.
//!
//! cudarc `dlopen`s NVRTC by bare name only (`libnvrtc.so`, …, `libnvrtc.so.13`), and NVRTC in
//! turn `dlopen`s `libnvrtc-builtins.so.13.*` by bare name, so a library outside the loader path
//! is invisible to both. [`locate`] therefore searches known directories itself, preloads the
//! builtins and then `libnvrtc.so.13` by full path and keeps both handles for the life of the
//! process: the later bare-name `dlopen`s match the loaded objects by SONAME. It then checks that
//! cudarc resolved the very library that was preloaded (an unversioned `libnvrtc.so` of another
//! CUDA on the loader path would otherwise win) before any cudarc NVRTC call, which would panic
//! on a missing library.
//!
//! Search order (first directory holding `libnvrtc.so.13`, `libnvrtc-builtins.so.13.*` and a
//! sibling `include/cuda_fp8.h` wins):
//! 1. `$CUDA_HOME`, `$CUDA_PATH`, `/usr/local/cuda`, `/usr/local/cuda-13*` (newest first), each as
//!    `lib64` then `targets/<arch>-linux/lib`;
//! 2. the project cache written by `scripts/cache.sh nvrtc`, `<cache>/cuda/nvidia/cu13/lib`, with
//!    `<cache>` = `$QFUSE_CACHE_DIR`, then `<dir>/.cache` for every ancestor of the executable's
//!    directory, of the current directory and of this crate's manifest directory.
//!
//! A failed search is not remembered: running `scripts/cache.sh nvrtc` and calling again works.
//! [`compile_cubin`] is safe to call from several threads; each call owns its NVRTC program.

use std::ffi::{c_char, c_int, CString};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use cudarc::nvrtc::{result as nr, sys as ns};
use libloading::Library;

/// The NVRTC in use: where it was found and what `nvrtcVersion` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvrtcInstall {
    /// Directory holding `libnvrtc.so.13` and `libnvrtc-builtins.so.13.*`.
    pub lib_dir: PathBuf,
    /// Matching header directory (contains `cuda_fp8.h`), passed as `--include-path`.
    pub include_dir: PathBuf,
    /// `(major, minor)` from `nvrtcVersion`.
    pub version: (u32, u32),
}

/// Everything that can go wrong finding NVRTC or compiling with it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NvrtcError {
    /// No searched directory holds a complete CUDA 13 NVRTC; `searched` lists them all, in order.
    #[error(
        "no usable CUDA 13 NVRTC found (a directory with libnvrtc.so.13, libnvrtc-builtins.so.13.* \
         and ../include/cuda_fp8.h); run `scripts/cache.sh nvrtc` or set CUDA_HOME. Searched:{}",
        path_list(.searched)
    )]
    NotFound { searched: Vec<PathBuf> },
    /// A library was found but could not be loaded, or is not the one cudarc would use.
    #[error("cannot load {}: {reason}", .path.display())]
    Load { path: PathBuf, reason: String },
    /// `nvrtcCompileProgram` failed: NVRTC's log and the source with line numbers.
    #[error(
        "NVRTC failed to compile kernel `{kernel}`\noptions: {}\nlog:\n{}\nsource:\n{numbered_source}",
        .options.join(" "),
        .log.trim_end()
    )]
    Compile { kernel: String, options: Vec<String>, log: String, numbered_source: String },
    /// Any other NVRTC call failed with `code` (an `nvrtcResult` name).
    #[error("{call} failed: {code}")]
    Api { call: &'static str, code: String },
    /// Rejected before reaching NVRTC: a virtual arch, an arch flag in the extra options, a NUL byte.
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
}

fn path_list(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| format!("\n  {}", p.display())).collect()
}

/// Finds and loads NVRTC (once per process) and reports where it is.
pub fn locate() -> Result<NvrtcInstall, NvrtcError> {
    Ok(loaded()?.install.clone())
}

/// Compiles one CUDA C program to CUBIN for a real architecture such as `sm_90a`.
///
/// Passes `--gpu-architecture=<arch>` and `--include-path=<include dir>` before `extra_opts`.
/// NVRTC warnings of a successful compile are logged with `tracing::warn!`.
pub fn compile_cubin(name: &str, source: &str, arch: &str, extra_opts: &[String]) -> Result<Vec<u8>, NvrtcError> {
    check_arch(arch)?;
    check_extra_opts(extra_opts)?;
    let install = &loaded()?.install;
    let mut options = vec![format!("--gpu-architecture={arch}"), format!("--include-path={}", install.include_dir.display())];
    options.extend(extra_opts.iter().cloned());

    let c_source = c_string("source", source)?;
    let c_name = c_string("kernel name", &format!("{name}.cu"))?;
    let c_options = options.iter().map(|o| c_string("option", o)).collect::<Result<Vec<_>, _>>()?;
    let program = Program::create(&c_source, &c_name)?;
    let status = program.compile(&c_options)?;
    let log = program.log()?;
    if let Err(code) = status {
        let log = if log.trim().is_empty() { format!("(empty log; {code:?})") } else { log };
        return Err(NvrtcError::Compile { kernel: name.to_owned(), options, log, numbered_source: number_lines(source) });
    }
    if !log.trim().is_empty() {
        tracing::warn!(kernel = name, "NVRTC warnings:\n{}", log.trim_end());
    }
    let cubin = program.cubin()?;
    if cubin.is_empty() {
        return Err(NvrtcError::Invalid {
            what: "arch",
            reason: format!("NVRTC produced an empty CUBIN for `{arch}`; use a real target such as sm_90a"),
        });
    }
    Ok(cubin)
}

/// Real architectures this NVRTC can target, e.g. `[75, 80, …, 90, …, 120]`.
pub fn supported_archs() -> Result<Vec<u32>, NvrtcError> {
    loaded()?;
    let mut n: c_int = 0;
    api("nvrtcGetNumSupportedArchs", unsafe { ns::nvrtcGetNumSupportedArchs(&mut n) })?;
    let mut archs = vec![0 as c_int; usize::try_from(n).unwrap_or(0)];
    if !archs.is_empty() {
        api("nvrtcGetSupportedArchs", unsafe { ns::nvrtcGetSupportedArchs(archs.as_mut_ptr()) })?;
    }
    Ok(archs.into_iter().filter_map(|a| u32::try_from(a).ok()).collect())
}

/// `source` with right-aligned 1-based line numbers: `  12 | text`.
pub fn number_lines(source: &str) -> String {
    let width = source.lines().count().max(1).to_string().len();
    source.lines().enumerate().map(|(i, line)| format!("{:>width$} | {line}\n", i + 1)).collect()
}

fn check_arch(arch: &str) -> Result<(), NvrtcError> {
    let reason = if let Some(target) = arch.strip_prefix("compute_") {
        format!(
            "`{arch}` is a virtual architecture: NVRTC emits PTX only and a 0-byte CUBIN; \
             use the real target `sm_{target}`"
        )
    } else if !arch.starts_with("sm_") || arch.len() <= 3 {
        format!("`{arch}` is not a real GPU architecture such as sm_90a")
    } else {
        return Ok(());
    };
    Err(NvrtcError::Invalid { what: "arch", reason })
}

fn check_extra_opts(extra_opts: &[String]) -> Result<(), NvrtcError> {
    let arch_flags = ["--gpu-architecture", "-arch"];
    match extra_opts.iter().find(|o| arch_flags.iter().any(|f| o.starts_with(f))) {
        Some(o) => Err(NvrtcError::Invalid { what: "option", reason: format!("`{o}`: the architecture is set by the `arch` argument") }),
        None => Ok(()),
    }
}

fn c_string(what: &'static str, s: &str) -> Result<CString, NvrtcError> {
    CString::new(s).map_err(|e| NvrtcError::Invalid { what, reason: e.to_string() })
}

fn api(call: &'static str, status: ns::nvrtcResult) -> Result<(), NvrtcError> {
    status.result().map_err(|e| NvrtcError::Api { call, code: format!("{:?}", e.0) })
}

/// One NVRTC program, destroyed on drop. Borrows the source and name, which NVRTC may reference.
struct Program<'a> {
    handle: ns::nvrtcProgram,
    _text: std::marker::PhantomData<&'a CString>,
}

impl<'a> Program<'a> {
    fn create(source: &'a CString, name: &'a CString) -> Result<Self, NvrtcError> {
        let handle = nr::create_program(source, Some(name))
            .map_err(|e| NvrtcError::Api { call: "nvrtcCreateProgram", code: format!("{:?}", e.0) })?;
        Ok(Self { handle, _text: std::marker::PhantomData })
    }

    /// Outer error: the call could not be made; inner: NVRTC's verdict on the program.
    fn compile(&self, options: &[CString]) -> Result<Result<(), ns::nvrtcResult>, NvrtcError> {
        let ptrs: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
        let n = c_int::try_from(ptrs.len()).map_err(|_| NvrtcError::Invalid { what: "option", reason: "too many options".into() })?;
        let status = unsafe { ns::nvrtcCompileProgram(self.handle, n, ptrs.as_ptr()) };
        Ok(status.result().map_err(|e| e.0))
    }

    fn log(&self) -> Result<String, NvrtcError> {
        let raw = unsafe { nr::get_program_log(self.handle) }
            .map_err(|e| NvrtcError::Api { call: "nvrtcGetProgramLog", code: format!("{:?}", e.0) })?;
        let bytes: Vec<u8> = raw.iter().map(|&c| c as u8).take_while(|&b| b != 0).collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn cubin(&self) -> Result<Vec<u8>, NvrtcError> {
        let mut size = 0usize;
        api("nvrtcGetCUBINSize", unsafe { ns::nvrtcGetCUBINSize(self.handle, &mut size) })?;
        let mut cubin = vec![0u8; size];
        if size > 0 {
            api("nvrtcGetCUBIN", unsafe { ns::nvrtcGetCUBIN(self.handle, cubin.as_mut_ptr().cast()) })?;
        }
        Ok(cubin)
    }
}

impl Drop for Program<'_> {
    fn drop(&mut self) {
        let _ = unsafe { nr::destroy_program(self.handle) };
    }
}

// ---- discovery and loading ------------------------------------------------------------------

/// The loaded libraries, kept for the life of the process.
struct Loaded {
    install: NvrtcInstall,
    _builtins: Library,
    _nvrtc: Library,
}

static LOADED: OnceLock<Loaded> = OnceLock::new();
static LOADING: Mutex<()> = Mutex::new(());

fn loaded() -> Result<&'static Loaded, NvrtcError> {
    if let Some(l) = LOADED.get() {
        return Ok(l);
    }
    let _guard = LOADING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(l) = LOADED.get() {
        return Ok(l);
    }
    let loaded = load()?;
    Ok(LOADED.get_or_init(|| loaded))
}

/// A directory that passed [`probe`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    lib_dir: PathBuf,
    nvrtc: PathBuf,
    builtins: PathBuf,
    include_dir: PathBuf,
}

const TARGET_DIR: &str = if cfg!(target_arch = "aarch64") { "sbsa-linux" } else { "x86_64-linux" };

type VersionFn = unsafe extern "C" fn(*mut c_int, *mut c_int) -> ns::nvrtcResult;

fn load() -> Result<Loaded, NvrtcError> {
    let searched = lib_dirs(&SearchRoots::from_process());
    let Some(found) = searched.iter().find_map(|dir| probe(dir)) else {
        return Err(NvrtcError::NotFound { searched });
    };
    tracing::debug!(lib_dir = %found.lib_dir.display(), "loading NVRTC");
    let load_err = |path: &Path, e: libloading::Error| NvrtcError::Load { path: path.to_owned(), reason: e.to_string() };
    // NVRTC dlopens its builtins by bare name; they must be resident before libnvrtc is used.
    let builtins = unsafe { Library::new(&found.builtins) }.map_err(|e| load_err(&found.builtins, e))?;
    let nvrtc = unsafe { Library::new(&found.nvrtc) }.map_err(|e| load_err(&found.nvrtc, e))?;
    check_cudarc_uses(&nvrtc, &found.nvrtc)?;
    let (mut major, mut minor) = (0 as c_int, 0 as c_int);
    api("nvrtcVersion", unsafe { ns::nvrtcVersion(&mut major, &mut minor) })?;
    let version = (u32::try_from(major).unwrap_or(0), u32::try_from(minor).unwrap_or(0));
    if version.0 != 13 {
        return Err(NvrtcError::Load {
            path: found.nvrtc,
            reason: format!("nvrtcVersion reports {}.{}, expected 13.x", version.0, version.1),
        });
    }
    let install = NvrtcInstall { lib_dir: found.lib_dir, include_dir: found.include_dir, version };
    Ok(Loaded { install, _builtins: builtins, _nvrtc: nvrtc })
}

/// Fails unless cudarc's own bare-name `dlopen` resolves to the library preloaded from `path`.
fn check_cudarc_uses(nvrtc: &Library, path: &Path) -> Result<(), NvrtcError> {
    let err = |reason: String| NvrtcError::Load { path: path.to_owned(), reason };
    let ours = unsafe { nvrtc.get::<VersionFn>(b"nvrtcVersion\0") }.map_err(|e| err(e.to_string()))?;
    // cudarc panics in `culib()` when nothing loads; `is_culib_present` is the safe probe.
    if !unsafe { ns::is_culib_present() } {
        return Err(err("preloaded, but cudarc still cannot dlopen libnvrtc by name".into()));
    }
    let theirs = unsafe { ns::culib().get::<VersionFn>(b"nvrtcVersion\0") }.map_err(|e| err(e.to_string()))?;
    if *ours as usize != *theirs as usize {
        return Err(err("cudarc resolved another libnvrtc by name (an unversioned libnvrtc.so of a different \
             CUDA on the loader path?); remove it from LD_LIBRARY_PATH or point CUDA_HOME at CUDA 13"
            .into()));
    }
    Ok(())
}

/// The inputs of the search, read from the process environment (kept apart for tests).
#[derive(Debug, Default)]
struct SearchRoots {
    /// Toolkit roots in order: `$CUDA_HOME`, `$CUDA_PATH`, `/usr/local/cuda`, `/usr/local/cuda-13*`.
    toolkits: Vec<PathBuf>,
    /// `$QFUSE_CACHE_DIR`, used as a cache root as is.
    cache_dir: Option<PathBuf>,
    /// Directories whose ancestors may hold `.cache`: executable dir, current dir, manifest dir.
    walk_from: Vec<PathBuf>,
}

impl SearchRoots {
    fn from_process() -> Self {
        let env_dir = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let mut toolkits: Vec<PathBuf> = ["CUDA_HOME", "CUDA_PATH"].iter().filter_map(|n| env_dir(n)).collect();
        toolkits.push(PathBuf::from("/usr/local/cuda"));
        toolkits.extend(versioned_toolkits(Path::new("/usr/local")));
        let exe_dir = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf));
        let walk_from =
            [exe_dir, std::env::current_dir().ok(), Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")))].into_iter().flatten().collect();
        Self { toolkits, cache_dir: env_dir("QFUSE_CACHE_DIR"), walk_from }
    }
}

/// `<parent>/cuda-13*`, newest version first.
fn versioned_toolkits(parent: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut found: Vec<(Vec<u32>, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let version = name.strip_prefix("cuda-")?;
            version.starts_with("13").then(|| (version.split('.').map(|p| p.parse().unwrap_or(0)).collect(), e.path()))
        })
        .collect();
    found.sort_by(|a, b| b.0.cmp(&a.0));
    found.into_iter().map(|(_, p)| p).collect()
}

/// Every library directory to probe, in order, without duplicates.
fn lib_dirs(roots: &SearchRoots) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for t in &roots.toolkits {
        dirs.push(t.join("lib64"));
        dirs.push(t.join("targets").join(TARGET_DIR).join("lib"));
    }
    let cache_lib = |cache: &Path| cache.join("cuda/nvidia/cu13/lib");
    dirs.extend(roots.cache_dir.as_deref().map(cache_lib));
    for start in &roots.walk_from {
        dirs.extend(start.ancestors().map(|a| cache_lib(&a.join(".cache"))));
    }
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    dirs
}

/// `lib_dir` if it holds `libnvrtc.so.13`, its builtins and a sibling `include/cuda_fp8.h`.
fn probe(lib_dir: &Path) -> Option<Candidate> {
    let nvrtc = lib_dir.join("libnvrtc.so.13");
    if !nvrtc.is_file() {
        return None;
    }
    let builtins = find_builtins(lib_dir)?;
    let include_dir = lib_dir.parent()?.join("include");
    if !include_dir.join("cuda_fp8.h").is_file() {
        tracing::debug!(lib_dir = %lib_dir.display(), "libnvrtc.so.13 found but no ../include/cuda_fp8.h");
        return None;
    }
    Some(Candidate { lib_dir: lib_dir.to_owned(), nvrtc, builtins, include_dir })
}

/// `libnvrtc-builtins.so.13.*` with the shortest name (`….so.13.0` before `….so.13.0.88`).
fn find_builtins(lib_dir: &Path) -> Option<PathBuf> {
    let mut names: Vec<String> = std::fs::read_dir(lib_dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("libnvrtc-builtins.so.13."))
        .collect();
    names.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
    names.first().map(|n| lib_dir.join(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_lines_right_aligned() {
        let src = (1..=10).map(|i| format!("l{i}")).collect::<Vec<_>>().join("\n");
        let out = number_lines(&src);
        assert!(out.starts_with(" 1 | l1\n"));
        assert!(out.ends_with("10 | l10\n"));
    }

    #[test]
    fn search_order() {
        let roots = SearchRoots {
            toolkits: vec!["/opt/cuda".into(), "/usr/local/cuda".into(), "/opt/cuda".into()],
            cache_dir: Some("/c".into()),
            walk_from: vec!["/r/target/debug".into(), "/r".into()],
        };
        let got = lib_dirs(&roots);
        let want: Vec<PathBuf> = [
            "/opt/cuda/lib64",
            &format!("/opt/cuda/targets/{TARGET_DIR}/lib"),
            "/usr/local/cuda/lib64",
            &format!("/usr/local/cuda/targets/{TARGET_DIR}/lib"),
            "/c/cuda/nvidia/cu13/lib",
            "/r/target/debug/.cache/cuda/nvidia/cu13/lib",
            "/r/target/.cache/cuda/nvidia/cu13/lib",
            "/r/.cache/cuda/nvidia/cu13/lib",
            "/.cache/cuda/nvidia/cu13/lib",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn probe_needs_builtins_and_fp8_header() {
        let root = tempfile::tempdir().expect("tempdir");
        let lib = root.path().join("lib");
        std::fs::create_dir_all(&lib).expect("mkdir");
        std::fs::write(lib.join("libnvrtc.so.13"), b"").expect("write");
        assert_eq!(probe(&lib), None);
        for n in ["libnvrtc-builtins.so.13.0.88", "libnvrtc-builtins.so.13.0", "libnvrtc-builtins.alt.so.13.0"] {
            std::fs::write(lib.join(n), b"").expect("write");
        }
        assert_eq!(probe(&lib), None);
        std::fs::create_dir_all(root.path().join("include")).expect("mkdir");
        std::fs::write(root.path().join("include/cuda_fp8.h"), b"").expect("write");
        let c = probe(&lib).expect("complete directory");
        assert_eq!(c.builtins, lib.join("libnvrtc-builtins.so.13.0"));
        assert_eq!(c.include_dir, root.path().join("include"));
    }

    #[test]
    fn virtual_arch_rejected_before_loading() {
        let e = check_arch("compute_90a").expect_err("virtual arch");
        assert!(e.to_string().contains("sm_90a"), "{e}");
        assert!(check_arch("sm_90a").is_ok());
        assert!(check_arch("90").is_err());
    }
}
