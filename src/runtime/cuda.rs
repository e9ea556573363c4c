//! Thin owning wrappers over the CUDA driver objects the runtime uses (device memory, modules,
//! functions, graphs), the driver probe, and a guard that turns a panic of the bindings into an
//! error.
//!
//! The runtime talks to the driver through `cudarc::driver::{result, sys}` rather than cudarc's
//! safe slices: it manages one arena per context with its own offsets, launches with
//! `cuLaunchKernel` from a parameter array, and captures CUDA graphs, none of which needs (or
//! wants) cudarc's per-allocation stream and event bookkeeping.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{result, sys, CudaContext};

use super::error::RuntimeError;

/// Checks that the CUDA driver library can be loaded, before anything touches cudarc (whose
/// dynamic loading panics when the library is missing).
pub(crate) fn probe_driver() -> Result<(), RuntimeError> {
    let mut tried = Vec::new();
    let mut found = false;
    for name in ["libcuda.so.1", "libcuda.so"] {
        // SAFETY: loading the driver library runs its initialisers, as any CUDA program does; the
        // handle is dropped at once (cudarc keeps its own).
        match unsafe { libloading::Library::new(name) } {
            Ok(_) => {
                found = true;
                break;
            }
            // The loader's message already names the library ("libcuda.so.1: cannot open …").
            Err(e) => tried.push(Some(e.to_string()).filter(|t| t.contains(name)).unwrap_or_else(|| format!("{name}: {e}"))),
        }
    }
    // SAFETY: only tries to load the library by the names cudarc will use; never panics.
    if !found || !unsafe { sys::is_culib_present() } {
        if found {
            tried.push("cudarc found no driver library under the names it loads".into());
        }
        return Err(RuntimeError::NoDriver { detail: tried.join("; ") });
    }
    Ok(())
}

/// Runs `f`, turning a panic (cudarc panics when a driver symbol is missing, e.g. on a driver
/// older than the CUDA 13.0 bindings) into a [`RuntimeError::Driver`] about `what`.
pub(crate) fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, RuntimeError>) -> Result<T, RuntimeError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(RuntimeError::Driver {
                what: what.into(),
                error: format!("the CUDA driver bindings panicked ({msg}); is the driver older than CUDA 13.0?"),
            })
        }
    }
}

/// Binds `ctx` to the calling thread.
pub(crate) fn bind(ctx: &CudaContext, what: &str) -> Result<(), RuntimeError> {
    ctx.bind_to_thread().map_err(|e| RuntimeError::driver(format!("making the CUDA context current for {what}"), e))
}

/// A device allocation made with `cuMemAlloc` (at least 256-byte aligned), freed on drop.
pub(crate) struct DeviceAlloc {
    ctx: Arc<CudaContext>,
    ptr: sys::CUdeviceptr,
    bytes: usize,
}

// SAFETY: a device address is plain data usable from any thread of the process; the allocation
// is freed once, in `drop`, after binding the owning context.
unsafe impl Send for DeviceAlloc {}
unsafe impl Sync for DeviceAlloc {}

impl DeviceAlloc {
    /// `bytes` (at least 1) of uninitialised device memory, for `what`.
    pub(crate) fn new(ctx: &Arc<CudaContext>, bytes: usize, what: &str) -> Result<Self, RuntimeError> {
        bind(ctx, what)?;
        // SAFETY: the context is current; the memory is only ever used as raw bytes.
        let ptr = unsafe { result::malloc_sync(bytes.max(1)) }
            .map_err(|e| RuntimeError::driver(format!("allocating {bytes} bytes of device memory for {what}"), e))?;
        Ok(Self { ctx: ctx.clone(), ptr, bytes })
    }

    /// The device address.
    pub(crate) fn ptr(&self) -> u64 {
        self.ptr
    }

    /// The size in bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for DeviceAlloc {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        // SAFETY: allocated by `malloc_sync`, freed once; owners synchronise their streams first.
        let _ = unsafe { result::free_sync(self.ptr) };
    }
}

/// A loaded module (`cuModuleLoadData`), unloaded on drop.
pub(crate) struct Module {
    ctx: Arc<CudaContext>,
    module: sys::CUmodule,
}

// SAFETY: module handles may be used from any thread of the context; unloaded once, in `drop`.
unsafe impl Send for Module {}
unsafe impl Sync for Module {}

impl Module {
    /// Loads a CUBIN (or any image `cuModuleLoadData` accepts). The image is copied with a
    /// trailing NUL, so a text image (PTX) is terminated too.
    pub(crate) fn load(ctx: &Arc<CudaContext>, image: &[u8], what: &str) -> Result<Self, RuntimeError> {
        bind(ctx, what)?;
        let mut owned = Vec::with_capacity(image.len() + 1);
        owned.extend_from_slice(image);
        owned.push(0);
        // SAFETY: `owned` is a complete image followed by a NUL, alive for the call.
        let module = unsafe { result::module::load_data(owned.as_ptr().cast()) }.map_err(|e| RuntimeError::driver(what, e))?;
        Ok(Self { ctx: ctx.clone(), module })
    }

    /// The function `name`, or the driver's error.
    pub(crate) fn function(&self, name: &str) -> Result<Function, String> {
        let cname = std::ffi::CString::new(name).map_err(|_| "the name contains a NUL byte".to_string())?;
        // SAFETY: the module is loaded and outlives the returned handle (the engine drops
        // functions before modules).
        unsafe { result::module::get_function(self.module, cname) }
            .map(Function)
            .map_err(|e| format!("not found in its CUBIN: {}", super::error::driver_message(e)))
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        // SAFETY: loaded by `load`, unloaded once.
        let _ = unsafe { result::module::unload(self.module) };
    }
}

/// A kernel handle (`CUfunction`), valid while its [`Module`] is loaded.
#[derive(Clone, Copy)]
pub(crate) struct Function(pub(crate) sys::CUfunction);

// SAFETY: function handles may be launched from any thread of the context (`cuLaunchKernel` is
// thread-safe); setting attributes only happens at load, before the engine is shared.
unsafe impl Send for Function {}
unsafe impl Sync for Function {}

impl Function {
    /// Sets a function attribute.
    pub(crate) fn set_attribute(&self, attr: sys::CUfunction_attribute, value: i32) -> Result<(), cudarc::driver::DriverError> {
        // SAFETY: a valid function handle of a loaded module.
        unsafe { result::function::set_function_attribute(self.0, attr, value) }
    }

    /// Reads a function attribute.
    pub(crate) fn attribute(&self, attr: sys::CUfunction_attribute) -> Result<i32, cudarc::driver::DriverError> {
        // SAFETY: a valid function handle of a loaded module.
        unsafe { result::function::get_function_attribute(self.0, attr) }
    }
}

/// A kernel launch's shape: grid, block and dynamic shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LaunchShape {
    /// Grid (x, y, z).
    pub grid: [u32; 3],
    /// Block (x, y, z).
    pub block: [u32; 3],
    /// Dynamic shared memory in bytes.
    pub shared_mem_bytes: u32,
}

impl Function {
    /// Enqueues the kernel on `stream`. With `programmatic`, it is launched through
    /// `cuLaunchKernelEx` with `CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION = 1`: it may
    /// be scheduled before the kernel launched before it on the stream has completed (once every
    /// CTA of that kernel has executed `griddepcontrol.launch_dependents` or exited), and under
    /// stream capture the graph edge from that kernel becomes programmatic. The kernel must then
    /// execute `griddepcontrol.wait` before touching memory an earlier kernel writes or reads
    /// (`qf_pdl_enter()` in templates/common.cuh); the plan says which kernels do
    /// ([`crate::plan::PlanMeta::pdl_kernels`]). Without it, a plain `cuLaunchKernel`.
    ///
    /// # Safety
    /// `params` must hold one pointer per kernel parameter, to a value of the parameter's type,
    /// alive for the call; every device pointer among them must be valid for the kernel's accesses.
    pub(crate) unsafe fn launch(
        &self,
        shape: LaunchShape,
        stream: sys::CUstream,
        params: &mut [*mut c_void],
        programmatic: bool,
    ) -> Result<(), cudarc::driver::DriverError> {
        let [gx, gy, gz] = shape.grid;
        let [bx, by, bz] = shape.block;
        if !programmatic {
            return sys::cuLaunchKernel(
                self.0,
                gx,
                gy,
                gz,
                bx,
                by,
                bz,
                shape.shared_mem_bytes,
                stream,
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
            .result();
        }
        // SAFETY (of the zeroed value): a C union of plain data; the field set below is the one
        // the attribute id selects.
        let mut value: sys::CUlaunchAttributeValue = std::mem::zeroed();
        value.programmaticStreamSerializationAllowed = 1;
        let mut attr = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value,
        };
        let config = sys::CUlaunchConfig {
            gridDimX: gx,
            gridDimY: gy,
            gridDimZ: gz,
            blockDimX: bx,
            blockDimY: by,
            blockDimZ: bz,
            sharedMemBytes: shape.shared_mem_bytes,
            hStream: stream,
            attrs: &mut attr,
            numAttrs: 1,
        };
        sys::cuLaunchKernelEx(&config, self.0, params.as_mut_ptr(), std::ptr::null_mut()).result()
    }
}

/// A captured and instantiated CUDA graph; both are destroyed on drop.
pub(crate) struct GraphExec {
    ctx: Arc<CudaContext>,
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
}

// SAFETY: owned by one `Context`, which is `Send` but not `Sync`: the graph is only ever used by
// one thread at a time, as the driver requires.
unsafe impl Send for GraphExec {}

impl GraphExec {
    /// Takes ownership of `graph` and instantiates it.
    ///
    /// # Safety
    /// `graph` must be a valid graph owned by the caller (from `cuStreamEndCapture`).
    pub(crate) unsafe fn instantiate(ctx: &Arc<CudaContext>, graph: sys::CUgraph) -> Result<Self, cudarc::driver::DriverError> {
        match result::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0)) {
            Ok(exec) => Ok(Self { ctx: ctx.clone(), graph, exec }),
            Err(e) => {
                let _ = result::graph::destroy(graph);
                Err(e)
            }
        }
    }

    /// Enqueues a replay on `stream`.
    pub(crate) fn launch(&self, stream: sys::CUstream) -> Result<(), cudarc::driver::DriverError> {
        // SAFETY: a valid executable graph and a live stream of the same context.
        unsafe { result::graph::launch(self.exec, stream) }
    }
}

impl Drop for GraphExec {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        // SAFETY: created by `instantiate`, destroyed once; the owner synchronised its stream.
        unsafe {
            let _ = result::graph::exec_destroy(self.exec);
            let _ = result::graph::destroy(self.graph);
        }
    }
}

/// How long a [`Gate`] holds its stream at most.
pub(crate) const GATE_TIMEOUT: Duration = Duration::from_secs(2);

/// A host function that holds a stream until the host opens it, so that timed work is enqueued
/// completely before the GPU starts on it (events then time the GPU, not the host's enqueue rate).
/// It opens by itself after [`GATE_TIMEOUT`], so a host blocked on a full queue cannot deadlock.
#[derive(Default)]
pub(crate) struct Gate {
    open: AtomicBool,
    timed_out: AtomicBool,
}

unsafe extern "C" fn gate_wait(user: *mut c_void) {
    // SAFETY: `user` points to a `Gate` that outlives the stream's work (its owner opens it and
    // synchronises the stream before dropping it). Nothing here can panic.
    let gate = unsafe { &*(user as *const Gate) };
    let start = Instant::now();
    while !gate.open.load(Ordering::Acquire) {
        if start.elapsed() >= GATE_TIMEOUT {
            gate.timed_out.store(true, Ordering::Relaxed);
            return;
        }
        std::thread::yield_now();
    }
}

impl Gate {
    /// Closes the gate and enqueues it on `stream`.
    ///
    /// # Safety
    /// `self` must stay alive (not moved) until `stream` has finished the gate: open it and
    /// synchronise the stream before dropping it.
    pub(crate) unsafe fn enqueue(&self, stream: sys::CUstream) -> Result<(), cudarc::driver::DriverError> {
        self.open.store(false, Ordering::Release);
        self.timed_out.store(false, Ordering::Relaxed);
        result::stream::launch_host_function(stream, gate_wait, self as *const Gate as *mut c_void)
    }

    /// Lets the stream go on.
    pub(crate) fn open(&self) {
        self.open.store(true, Ordering::Release);
    }

    /// Whether the last gate opened by itself (the timing then includes host gaps).
    pub(crate) fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Relaxed)
    }
}
