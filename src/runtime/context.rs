//! [`Context`]: one thread's way of running an [`Engine`]: a CUDA stream, an activation arena and
//! a cache of CUDA graphs keyed by the shape symbols' values.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{result, sys, CudaEvent, CudaStream};

use super::bind::{
    bind_inputs, buffer_extent, describe_symbols, launch_label, resolve_launch, resolve_schedule, sig_extent, Addresses, Binding,
    ResolvedLaunch,
};
use super::cuda::{bind, guarded, DeviceAlloc, Gate, GraphExec, LaunchShape};
use super::engine::{Engine, DEVICE_ALIGN};
use super::error::RuntimeError;
use super::kv::KvCache;
use super::tensor::HostTensor;
use crate::plan::LaunchMeta;

mod decode;

pub use decode::{GraphMarginal, StepMarginals, StepOutput};

/// How many captured graphs a context keeps by default (least recently used ones are dropped).
pub const DEFAULT_GRAPH_CACHE: usize = 64;

/// Timed iterations (or profiled launches) enqueued behind one gate.
const TIMING_BATCH: usize = 32;

/// A run's outputs: `(name, tensor)` in the plan's output order.
pub type Outputs = Vec<(String, HostTensor)>;

/// The GPU time of one launch, from [`Context::run_profiled`].
#[derive(Debug, Clone, PartialEq)]
pub struct KernelTiming {
    /// Index of the launch in the plan's schedule.
    pub launch: usize,
    /// The launch's label (what it computes).
    pub label: String,
    /// The kernel's entry point name.
    pub kernel: String,
    /// GPU time between CUDA events recorded right before and after the launch, in µs.
    pub micros: f64,
}

/// Timing of whole runs (CUDA graph replays), from [`Context::bench`].
#[derive(Debug, Clone, PartialEq)]
pub struct BenchStats {
    /// Median over the timed iterations, in ms.
    pub median_ms: f64,
    /// Fastest iteration, in ms.
    pub min_ms: f64,
    /// Mean over the timed iterations, in ms.
    pub mean_ms: f64,
    /// Number of timed iterations.
    pub iters: usize,
}

struct CachedGraph {
    /// `None` when no launch runs for these symbol values.
    exec: Option<GraphExec>,
    last_used: u64,
}

/// How one run's launches are issued.
enum Issue {
    /// Replay the cached graph for this key.
    Graph(Vec<u64>),
    /// Launch one by one (graph cache disabled).
    Direct(Vec<ResolvedLaunch>),
}

/// Runs an [`Engine`]'s plan: owns a CUDA stream, an activation arena (every buffer of the plan at
/// its offset) and the CUDA graphs captured so far. `Send`, not `Sync`: one per thread; create as
/// many as there are threads (each costs one arena of [`crate::plan::PlanMeta::peak_activation_bytes`]).
pub struct Context<'e> {
    // Field order is drop order (after `Drop::drop` synchronised the stream): graphs, events and
    // the arena before the gate and the stream.
    graphs: HashMap<Vec<u64>, CachedGraph>,
    events: Vec<CudaEvent>,
    kv: Option<KvCache>,
    arena: DeviceAlloc,
    gate: Arc<Gate>,
    stream: Arc<CudaStream>,
    engine: &'e Engine,
    arena_base: u64,
    graph_capacity: usize,
    tick: u64,
    /// Launch the plan's PDL kernels with programmatic stream serialization.
    pdl: bool,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("plan", &self.engine.path())
            .field("arena_bytes", &self.arena.bytes())
            .field("graphs", &self.graphs.len())
            .field("programmatic_launch", &self.pdl)
            .finish()
    }
}

impl Drop for Context<'_> {
    fn drop(&mut self) {
        self.gate.open();
        let _ = self.engine.ctx.bind_to_thread();
        let _ = self.stream.synchronize();
    }
}

impl<'e> Context<'e> {
    pub(crate) fn new(engine: &'e Engine) -> Result<Self, RuntimeError> {
        guarded("creating a context", || {
            let what = format!("a context of plan {}", engine.path().display());
            bind(&engine.ctx, &what)?;
            let stream = engine.ctx.new_stream().map_err(|e| RuntimeError::driver(format!("creating a stream for {what}"), e))?;
            let peak = engine.meta().peak_activation_bytes;
            let bytes = peak
                .checked_add(DEVICE_ALIGN)
                .and_then(|b| usize::try_from(b).ok())
                .ok_or_else(|| RuntimeError::Usage(format!("plan {}: an arena of {peak} bytes does not fit", engine.path().display())))?;
            let arena = DeviceAlloc::new(&engine.ctx, bytes, &format!("the activation arena of {what}"))?;
            let arena_base = arena.ptr().div_ceil(DEVICE_ALIGN) * DEVICE_ALIGN;
            // SAFETY: the whole allocation, on this context's stream.
            unsafe { result::memset_d8_async(arena.ptr(), 0, bytes, stream.cu_stream()) }
                .and_then(|_| stream.synchronize())
                .map_err(|e| RuntimeError::driver(format!("clearing the activation arena of {what}"), e))?;
            Ok(Context {
                graphs: HashMap::new(),
                events: Vec::new(),
                kv: None,
                arena,
                gate: Arc::default(),
                stream,
                engine,
                arena_base,
                graph_capacity: DEFAULT_GRAPH_CACHE,
                tick: 0,
                pdl: engine.programmatic_launch(),
            })
        })
    }

    /// The engine this context runs.
    pub fn engine(&self) -> &'e Engine {
        self.engine
    }

    /// How many CUDA graphs are cached (one per set of symbol values seen).
    pub fn cached_graphs(&self) -> usize {
        self.graphs.len()
    }

    /// Keeps at most `capacity` graphs (least recently used dropped first); 0 disables graphs:
    /// [`Context::run`] and [`Context::bench`] then launch kernel by kernel.
    pub fn set_graph_cache_capacity(&mut self, capacity: usize) {
        self.graph_capacity = capacity;
        while self.graphs.len() > capacity {
            self.evict_one();
        }
    }

    /// Whether this context launches the kernels the plan marks ([`crate::plan::PlanMeta::pdl_kernels`])
    /// with programmatic stream serialization (PDL), so that each may start while the kernel
    /// before it finishes. Starts as [`Engine::programmatic_launch`].
    pub fn programmatic_launch(&self) -> bool {
        self.pdl
    }

    /// Turns programmatic dependent launch on or off for this context (on is honoured only where
    /// the device has it: sm_90 and newer). Cached graphs were captured with the old choice, so a
    /// change drops them. The outputs are the same either way: every marked kernel waits for the
    /// previous kernel's results before it reads or writes memory.
    pub fn set_programmatic_launch(&mut self, on: bool) {
        let on = on && self.engine.device_has_pdl();
        if on != self.pdl {
            self.clear_graphs();
            self.pdl = on;
        }
    }

    /// Drops every cached graph.
    pub fn clear_graphs(&mut self) {
        let _ = self.sync();
        self.graphs.clear();
    }

    /// Runs the plan on `inputs` (bound by name; see [`super::bind::bind_inputs`]) and returns the
    /// outputs, in the plan's order, with their run-time shapes.
    ///
    /// The first run with a new set of symbol values captures the launch sequence into a CUDA
    /// graph and instantiates it; later runs with the same values replay it. Inputs are copied
    /// into their buffers before the graph and outputs copied back after it.
    pub fn run(&mut self, inputs: &[(&str, HostTensor)]) -> Result<Outputs, RuntimeError> {
        guarded("running a plan", || {
            let binding = bind_inputs(self.engine.meta(), inputs)?;
            self.bind_ctx()?;
            self.sync_on_error(|this| {
                this.upload_inputs(&binding, inputs)?;
                let issue = this.prepare(&binding)?;
                this.issue(&issue, &binding)?;
                this.download_outputs(&binding.symbols)
            })
        })
    }

    /// Like [`Context::run`], without a graph: every launch is bracketed by CUDA events and its GPU
    /// time returned (launches with a zero grid are skipped and not reported). The whole sequence
    /// is enqueued behind a gate before the GPU starts, so the host's launch rate does not show.
    pub fn run_profiled(&mut self, inputs: &[(&str, HostTensor)]) -> Result<(Outputs, Vec<KernelTiming>), RuntimeError> {
        guarded("profiling a plan", || {
            let binding = bind_inputs(self.engine.meta(), inputs)?;
            self.bind_ctx()?;
            self.sync_on_error(|this| {
                this.upload_inputs(&binding, inputs)?;
                let launches = resolve_schedule(this.engine.meta(), &binding.symbols, &this.addresses())?;
                let timings = this.time_launches(&launches, "profiling")?;
                let outputs = this.download_outputs(&binding.symbols)?;
                Ok((outputs, timings))
            })
        })
    }

    /// Like [`Context::run`], without a graph, synchronising after every launch: a failing kernel
    /// is reported by its launch, and after each launch `on_launch(index, launch, written)` gets
    /// the buffers it `writes` copied back with their run-time shapes (for per-kernel comparison
    /// against the interpreter). Whatever `(buffer, tensor)` pairs it returns are written into
    /// those buffers before the next launch (to feed every kernel exact reference inputs), after
    /// checking that each matches the buffer's dtype and run-time size. Launches with a zero grid
    /// are skipped and not reported.
    #[allow(clippy::type_complexity)]
    pub fn run_checked(
        &mut self,
        inputs: &[(&str, HostTensor)],
        on_launch: &mut dyn FnMut(usize, &LaunchMeta, &[(u32, HostTensor)]) -> Vec<(u32, HostTensor)>,
    ) -> Result<Outputs, RuntimeError> {
        guarded("running a plan launch by launch", || {
            let binding = bind_inputs(self.engine.meta(), inputs)?;
            self.bind_ctx()?;
            self.sync_on_error(|this| {
                this.upload_inputs(&binding, inputs)?;
                this.sync()?;
                let meta = this.engine.meta();
                // Owned copies: the loop below needs `this` mutably.
                let (pools, page_table, split_scratch) =
                    this.kv.as_ref().map_or((vec![], 0, 0), |kv| (kv.pool_ptrs.clone(), kv.table.ptr(), kv.split_scratch_ptr()));
                let addrs =
                    Addresses { weights: this.engine.weight_ptrs(), arena: this.arena_base, kv_pools: &pools, page_table, split_scratch };
                for index in 0..meta.schedule.len() {
                    let Some(l) = resolve_launch(meta, index, &binding.symbols, &addrs)? else {
                        continue;
                    };
                    let Some(launch) = meta.schedule.get(index) else {
                        break;
                    };
                    let launch_err = |message: String| RuntimeError::Launch {
                        index,
                        label: launch.label.clone(),
                        kernel: launch_label(meta, index).1.into(),
                        message,
                    };
                    this.launch(&l)?;
                    this.sync().map_err(|e| launch_err(format!("the kernel failed: {e}")))?;
                    let mut written = Vec::with_capacity(launch.writes.len());
                    for &w in &launch.writes {
                        let Some(b) = meta.buffers.get(w as usize) else {
                            return Err(launch_err(format!("writes buffer {w} out of {}", meta.buffers.len())));
                        };
                        let ext = buffer_extent(meta, w, &b.dtype, &b.shape, &binding.symbols).map_err(|m| RuntimeError::Buffer {
                            what: "buffer",
                            name: b.name.clone(),
                            message: m,
                        })?;
                        let data = this.download(ext.offset, ext.bytes, &format!("reading back buffer `{}`", b.name))?;
                        this.sync()?;
                        written.push((w, HostTensor { dtype: b.dtype.clone(), shape: ext.shape, data }));
                    }
                    for (w, t) in on_launch(index, launch, &written) {
                        this.overwrite_buffer(w, &t, &binding.symbols)?;
                    }
                }
                this.download_outputs(&binding.symbols)
            })
        })
    }

    /// Times whole runs: uploads `inputs` once, captures (or reuses) the graph, replays it
    /// `warmup` times, then `iters` times with CUDA events around each replay (enqueued in
    /// batches behind a gate, so the events time the GPU). Outputs are not read back.
    pub fn bench(&mut self, inputs: &[(&str, HostTensor)], warmup: usize, iters: usize) -> Result<BenchStats, RuntimeError> {
        if iters == 0 {
            return Err(RuntimeError::Usage("bench needs at least one timed iteration".into()));
        }
        guarded("benchmarking a plan", || {
            let binding = bind_inputs(self.engine.meta(), inputs)?;
            self.bind_ctx()?;
            self.sync_on_error(|this| {
                this.upload_inputs(&binding, inputs)?;
                let issue = this.prepare(&binding)?;
                let ms = this.time_replays(warmup, iters, "benchmarking", |this, _| this.issue(&issue, &binding))?;
                Ok(stats(ms))
            })
        })
    }

    /// Runs `enqueue(self, 0)` `warmup` times, then `enqueue(self, i)` for `i` in `0..iters`
    /// with CUDA events around each (enqueued in batches behind a gate, so the events time the
    /// GPU, not the host; `what` names the activity in the gate's warning); returns each timed
    /// run's milliseconds, the stream synchronised.
    pub(super) fn time_replays(
        &mut self,
        warmup: usize,
        iters: usize,
        what: &str,
        enqueue: impl Fn(&Self, usize) -> Result<(), RuntimeError>,
    ) -> Result<Vec<f64>, RuntimeError> {
        for _ in 0..warmup {
            enqueue(self, 0)?;
        }
        self.sync()?;
        let mut ms = Vec::with_capacity(iters);
        while ms.len() < iters {
            let (done, n) = (ms.len(), (iters - ms.len()).min(TIMING_BATCH));
            self.ensure_events(2 * n)?;
            let _open = self.close_gate()?;
            for i in 0..n {
                self.record(2 * i)?;
                enqueue(self, done + i)?;
                self.record(2 * i + 1)?;
            }
            drop(_open);
            self.sync()?;
            for i in 0..n {
                ms.push(self.elapsed_ms(2 * i, 2 * i + 1)?);
            }
        }
        self.warn_if_gate_timed_out(what);
        Ok(ms)
    }

    // ---- internals ------------------------------------------------------------------------------

    fn bind_ctx(&self) -> Result<(), RuntimeError> {
        bind(&self.engine.ctx, &format!("plan {}", self.engine.path().display()))
    }

    fn addresses(&self) -> Addresses<'_> {
        match &self.kv {
            Some(kv) => Addresses {
                weights: self.engine.weight_ptrs(),
                arena: self.arena_base,
                kv_pools: &kv.pool_ptrs,
                page_table: kv.table.ptr(),
                split_scratch: kv.split_scratch_ptr(),
            },
            None => {
                Addresses { weights: self.engine.weight_ptrs(), arena: self.arena_base, kv_pools: &[], page_table: 0, split_scratch: 0 }
            }
        }
    }

    fn cu_stream(&self) -> sys::CUstream {
        self.stream.cu_stream()
    }

    /// Runs `f`; if it fails, waits for the stream before returning, so that no copy still in
    /// flight touches host memory the caller is about to free.
    fn sync_on_error<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, RuntimeError>) -> Result<T, RuntimeError> {
        let r = f(self);
        if r.is_err() {
            self.gate.open();
            let _ = self.stream.synchronize();
        }
        r
    }

    fn sync(&self) -> Result<(), RuntimeError> {
        self.stream.synchronize().map_err(|e| RuntimeError::driver(format!("running plan {}", self.engine.path().display()), e))
    }

    /// Copies every input into its buffer.
    fn upload_inputs(&mut self, binding: &Binding, inputs: &[(&str, HostTensor)]) -> Result<(), RuntimeError> {
        let meta = self.engine.meta();
        for (sig, &k) in meta.inputs.iter().zip(&binding.order) {
            let t = &inputs[k].1;
            let input_err = |message: String| RuntimeError::Input { input: sig.name.clone(), message };
            let ext = sig_extent(meta, sig, &binding.symbols).map_err(input_err)?;
            if ext.bytes != t.data.len() as u64 {
                return Err(input_err(format!("{} bytes of data, its buffer extent is {} bytes", t.data.len(), ext.bytes)));
            }
            if t.data.is_empty() {
                continue;
            }
            // SAFETY: `[offset, offset+bytes)` lies inside the arena (checked against the buffer,
            // and the buffer against the arena by the plan loader); the source outlives the copy
            // (the stream is synchronised before `run` returns, also on error).
            unsafe { result::memcpy_htod_async(self.arena_base + ext.offset, &t.data, self.cu_stream()) }
                .map_err(|e| RuntimeError::driver(format!("copying input `{}` to the device", sig.name), e))?;
        }
        Ok(())
    }

    /// Copies `t` into buffer `w` (synchronously), after checking its dtype and byte size against
    /// the buffer's run-time extent.
    fn overwrite_buffer(&mut self, w: u32, t: &HostTensor, symbols: &[(String, u64)]) -> Result<(), RuntimeError> {
        let meta = self.engine.meta();
        let b = meta.buffers.get(w as usize).ok_or_else(|| RuntimeError::Usage(format!("no buffer {w} to overwrite")))?;
        let err = |message: String| RuntimeError::Buffer { what: "buffer", name: b.name.clone(), message };
        let ext = buffer_extent(meta, w, &b.dtype, &b.shape, symbols).map_err(err)?;
        if t.dtype != b.dtype || ext.bytes != t.data.len() as u64 {
            return Err(err(format!(
                "replacement is {} with {} bytes, the buffer holds {} with {} bytes",
                t.dtype,
                t.data.len(),
                b.dtype,
                ext.bytes
            )));
        }
        if !t.data.is_empty() {
            // SAFETY: the range lies inside the arena (checked extent); `t` outlives the copy, which
            // completes before `sync` returns below.
            unsafe { result::memcpy_htod_async(self.arena_base + ext.offset, &t.data, self.cu_stream()) }
                .map_err(|e| RuntimeError::driver(format!("overwriting buffer `{}`", b.name), e))?;
        }
        self.sync()
    }

    /// Enqueues a device→host copy of `bytes` at arena offset `offset`; the result is valid after
    /// the next [`Self::sync`].
    fn download(&self, offset: u64, bytes: u64, what: &str) -> Result<Vec<u8>, RuntimeError> {
        let len = usize::try_from(bytes).map_err(|_| RuntimeError::Usage(format!("{what}: {bytes} bytes do not fit in memory")))?;
        let mut data = vec![0u8; len];
        if len > 0 {
            // SAFETY: the range lies inside the arena; the caller synchronises before using or
            // dropping `data` (and `sync_on_error` does on every error path). The copy is into
            // pageable memory, which the driver completes before returning anyway.
            unsafe { result::memcpy_dtoh_async(&mut data, self.arena_base + offset, self.cu_stream()) }
                .map_err(|e| RuntimeError::driver(what.to_string(), e))?;
        }
        Ok(data)
    }

    /// Copies every output back, then synchronises.
    fn download_outputs(&mut self, symbols: &[(String, u64)]) -> Result<Outputs, RuntimeError> {
        let meta = self.engine.meta();
        let mut out = Vec::with_capacity(meta.outputs.len());
        for sig in &meta.outputs {
            let ext =
                sig_extent(meta, sig, symbols).map_err(|m| RuntimeError::Buffer { what: "output", name: sig.name.clone(), message: m })?;
            let data = self.download(ext.offset, ext.bytes, &format!("copying output `{}` to the host", sig.name))?;
            out.push((sig.name.clone(), HostTensor { dtype: sig.dtype.clone(), shape: ext.shape, data }));
        }
        self.sync()?;
        Ok(out)
    }

    /// Launches `launches` in order, each between two CUDA events, enqueued in batches behind the
    /// gate (so the host's launch rate does not show), and returns each launch's GPU time; the
    /// stream is synchronised on return. `what` names the activity in the gate's warning.
    pub(super) fn time_launches(&mut self, launches: &[ResolvedLaunch], what: &str) -> Result<Vec<KernelTiming>, RuntimeError> {
        let ms = self.time_replays(0, launches.len(), what, |this, i| this.launch(&launches[i]))?;
        let meta = self.engine.meta();
        Ok(launches
            .iter()
            .zip(ms)
            .map(|(l, ms)| {
                let (label, kernel) = launch_label(meta, l.index);
                KernelTiming { launch: l.index, label: label.into(), kernel: kernel.into(), micros: 1000.0 * ms }
            })
            .collect())
    }

    /// The device's copy bandwidth in GB/s: (read + write bytes) over the median time of
    /// `iters` device-to-device copies of `bytes` bytes (the ceiling that weight streaming is
    /// measured against; `qfuse bench` uses 1 GiB, as `scripts/gemm_peer_bench.py` does).
    pub fn copy_bandwidth(&mut self, bytes: usize, iters: usize) -> Result<f64, RuntimeError> {
        guarded("measuring the copy bandwidth", || {
            self.bind_ctx()?;
            let src = DeviceAlloc::new(&self.engine.ctx, bytes, "the copy-bandwidth source")?;
            let dst = DeviceAlloc::new(&self.engine.ctx, bytes, "the copy-bandwidth destination")?;
            let copy = |this: &Self, _| {
                // SAFETY: two live allocations of `bytes` bytes on this context, on its stream.
                unsafe { result::memcpy_dtod_async(dst.ptr(), src.ptr(), bytes, this.cu_stream()) }
                    .map_err(|e| RuntimeError::driver("a device-to-device copy", e))
            };
            let median = stats(self.time_replays(1, iters.max(1), "measuring the copy bandwidth", copy)?).median_ms;
            Ok(2.0 * bytes as f64 / (median * 1e-3) / 1e9)
        })
    }

    /// Enqueues one resolved launch on the stream.
    fn launch(&self, l: &ResolvedLaunch) -> Result<(), RuntimeError> {
        let meta = self.engine.meta();
        let label = meta.schedule.get(l.index).map_or("?", |s| s.label.as_str());
        let kernel = meta.kernels.get(l.kernel).map_or("?", |k| k.name.as_str());
        let err = |message: String| RuntimeError::Launch { index: l.index, label: label.into(), kernel: kernel.into(), message };
        let f = self.engine.function(l.kernel).ok_or_else(|| err("no such kernel".into()))?;
        let mut params: Vec<*mut std::ffi::c_void> = l.args.iter().map(|a| a.as_param_ptr()).collect();
        let shape = LaunchShape { grid: l.grid, block: l.block, shared_mem_bytes: l.shared_mem_bytes };
        // Only kernels the plan declares wait for their predecessor (`griddepcontrol.wait`).
        let programmatic = l.pdl && self.pdl;
        // SAFETY: `params` points to one value per kernel parameter, of the parameter's type (checked
        // by the plan loader and `resolve_launch`), alive for the call (the driver copies them);
        // every pointer argument is a weight, an arena buffer or KV-cache memory of this context.
        unsafe { f.launch(shape, self.cu_stream(), &mut params, programmatic) }.map_err(|e| {
            let call = if programmatic { "cuLaunchKernelEx (programmatic)" } else { "cuLaunchKernel" };
            err(format!("{call} grid {:?} block {:?} smem {}: {}", l.grid, l.block, l.shared_mem_bytes, super::error::driver_message(e)))
        })
    }

    /// Decides how this run's launches are issued: the cached graph for these symbol values
    /// (capturing it first if needed), or direct launches when graphs are disabled.
    fn prepare(&mut self, binding: &Binding) -> Result<Issue, RuntimeError> {
        if self.graph_capacity == 0 {
            return Ok(Issue::Direct(resolve_schedule(self.engine.meta(), &binding.symbols, &self.addresses())?));
        }
        let key = binding.key();
        self.tick += 1;
        if let Some(g) = self.graphs.get_mut(&key) {
            g.last_used = self.tick;
        } else {
            let launches = resolve_schedule(self.engine.meta(), &binding.symbols, &self.addresses())?;
            let exec = if launches.is_empty() { None } else { Some(self.capture(&launches, &binding.symbols)?) };
            while self.graphs.len() >= self.graph_capacity {
                self.evict_one();
            }
            tracing::debug!(plan = %self.engine.path().display(), symbols = %describe_symbols(&binding.symbols), launches = launches.len(), "captured a CUDA graph");
            self.graphs.insert(key.clone(), CachedGraph { exec, last_used: self.tick });
        }
        Ok(Issue::Graph(key))
    }

    /// Enqueues one run's launches.
    fn issue(&self, issue: &Issue, binding: &Binding) -> Result<(), RuntimeError> {
        match issue {
            Issue::Direct(launches) => launches.iter().try_for_each(|l| self.launch(l)),
            Issue::Graph(key) => {
                let Some(g) = self.graphs.get(key) else {
                    return Err(RuntimeError::Capture { symbols: describe_symbols(&binding.symbols), message: "graph evicted".into() });
                };
                match &g.exec {
                    Some(exec) => exec.launch(self.cu_stream()).map_err(|e| {
                        RuntimeError::driver(format!("launching the CUDA graph for {}", describe_symbols(&binding.symbols)), e)
                    }),
                    None => Ok(()),
                }
            }
        }
    }

    /// Captures `launches` on the stream (thread-local capture mode) into an instantiated graph.
    pub(super) fn capture(&self, launches: &[ResolvedLaunch], symbols: &[(String, u64)]) -> Result<GraphExec, RuntimeError> {
        let cap_err = |message: String| RuntimeError::Capture { symbols: describe_symbols(symbols), message };
        let stream = self.cu_stream();
        // SAFETY: a live, non-blocking stream of this context, which is current.
        unsafe { result::stream::begin_capture(stream, sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL) }
            .map_err(|e| cap_err(format!("cuStreamBeginCapture: {}", super::error::driver_message(e))))?;
        let launched = launches.iter().try_for_each(|l| self.launch(l));
        // Always end the capture, even after a failed launch, so the stream is usable again.
        // SAFETY: the stream is capturing (begun above).
        let ended = unsafe { result::stream::end_capture(stream) };
        match (launched, ended) {
            (Err(e), Ok(graph)) => {
                if !graph.is_null() {
                    // SAFETY: a graph returned by end_capture, owned here.
                    let _ = unsafe { result::graph::destroy(graph) };
                }
                Err(e)
            }
            (Err(e), Err(_)) => Err(e),
            (Ok(()), Err(e)) => Err(cap_err(format!("cuStreamEndCapture: {}", super::error::driver_message(e)))),
            (Ok(()), Ok(graph)) if graph.is_null() => Err(cap_err("cuStreamEndCapture returned no graph".into())),
            // SAFETY: a valid graph from end_capture, whose ownership passes to the GraphExec.
            (Ok(()), Ok(graph)) => unsafe { GraphExec::instantiate(&self.engine.ctx, graph) }
                .map_err(|e| cap_err(format!("cuGraphInstantiate: {}", super::error::driver_message(e)))),
        }
    }

    fn evict_one(&mut self) {
        let Some(oldest) = self.graphs.iter().min_by_key(|(_, g)| g.last_used).map(|(k, _)| k.clone()) else {
            return;
        };
        // A replay of the evicted graph may still be in flight.
        let _ = self.stream.synchronize();
        self.graphs.remove(&oldest);
    }

    /// Makes sure at least `n` timing events exist.
    fn ensure_events(&mut self, n: usize) -> Result<(), RuntimeError> {
        while self.events.len() < n {
            let ev = self
                .engine
                .ctx
                .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| RuntimeError::driver("creating a timing event", e))?;
            self.events.push(ev);
        }
        Ok(())
    }

    fn record(&self, i: usize) -> Result<(), RuntimeError> {
        // SAFETY: a live event and stream of the same context.
        unsafe { result::event::record(self.events[i].cu_event(), self.cu_stream()) }
            .map_err(|e| RuntimeError::driver("recording a timing event", e))
    }

    fn elapsed_ms(&self, start: usize, end: usize) -> Result<f64, RuntimeError> {
        // SAFETY: both events were recorded on this stream, which has been synchronised.
        unsafe { result::event::elapsed(self.events[start].cu_event(), self.events[end].cu_event()) }
            .map(f64::from)
            .map_err(|e| RuntimeError::driver("reading a timing event", e))
    }

    /// Closes the gate on the stream; it opens when the returned guard drops.
    fn close_gate(&self) -> Result<GateGuard, RuntimeError> {
        // SAFETY: the gate is on the heap (it never moves) and the context holds it until its
        // drop, which opens it and synchronises the stream first.
        unsafe { self.gate.enqueue(self.cu_stream()) }.map_err(|e| RuntimeError::driver("enqueueing the timing gate", e))?;
        Ok(GateGuard(self.gate.clone()))
    }

    fn warn_if_gate_timed_out(&self, what: &str) {
        if self.gate.timed_out() {
            tracing::warn!(
                "{what}: the host took longer than {:?} to enqueue a batch; timings include host gaps",
                super::cuda::GATE_TIMEOUT
            );
        }
    }
}

/// Opens the gate when dropped (also on an error path).
struct GateGuard(Arc<Gate>);

impl Drop for GateGuard {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// Median, minimum and mean of `ms` (not empty).
fn stats(mut ms: Vec<f64>) -> BenchStats {
    ms.sort_by(f64::total_cmp);
    let n = ms.len();
    let median_ms = if n % 2 == 1 { ms[n / 2] } else { 0.5 * (ms[n / 2 - 1] + ms[n / 2]) };
    BenchStats { median_ms, min_ms: ms[0], mean_ms: ms.iter().sum::<f64>() / n as f64, iters: n }
}
