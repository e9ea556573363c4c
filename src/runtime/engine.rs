//! [`Engine`]: one loaded plan on one device: its modules and functions, its weights in device
//! memory, and its metadata. Shared by reference among [`Context`]s, one per thread.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cudarc::driver::{result, sys, CudaContext};

use super::bind::{check_kernel, DEFAULT_MAX_DYNAMIC_SMEM};
use super::context::Context;
use super::cuda::{bind, guarded, probe_driver, DeviceAlloc, Function, Module};
use super::error::RuntimeError;
use super::tensor::{dense_bytes, numel};
use crate::plan::{Plan, PlanMeta};

/// Alignment of every device allocation and of every weight and buffer inside one.
pub const DEVICE_ALIGN: u64 = 256;

/// The first compute capability major with programmatic dependent launch (Hopper).
const PDL_MIN_MAJOR: i32 = 9;

/// The plan arch name for a device of compute capability `major.minor`: `sm_90a` for 9.0,
/// `sm_89` for 8.9, `sm_100a` for 10.0. From Hopper on, the arch-specific (`a`) variant is named,
/// which is what qfuse compiles for; [`crate::plan::arch_compatible`] ignores the suffix anyway.
pub fn device_arch(major: i32, minor: i32) -> String {
    let suffix = if major >= 9 { "a" } else { "" };
    format!("sm_{major}{minor}{suffix}")
}

/// The arch of local GPU `ordinal` (e.g. `sm_90a`), or `None` without a driver or such a device.
/// Used by `qfuse compile` to target the machine it runs on; never panics.
pub fn local_arch(ordinal: usize) -> Option<String> {
    crate::runtime::cuda::probe_driver().ok()?;
    crate::runtime::cuda::guarded("reading the local GPU's arch", || {
        let none = || RuntimeError::Usage(String::new());
        result::init().map_err(|_| none())?;
        let count = result::device::get_count().map_err(|_| none())?;
        if ordinal >= usize::try_from(count).unwrap_or(0) {
            return Err(none());
        }
        let dev = result::device::get(ordinal as i32).map_err(|_| none())?;
        let attr = |a| unsafe { result::device::get_attribute(dev, a) }.map_err(|_| none());
        let major = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        Ok(device_arch(major, minor))
    })
    .ok()
}

/// A plan loaded on one device, ready to run: every CUBIN loaded, every kernel resolved, every
/// weight uploaded once. `Send + Sync`: share it (`&Engine`, `Arc<Engine>`) and give each thread
/// its own [`Context`].
pub struct Engine {
    // Field order is drop order: functions and modules, then weights, then the CUDA context.
    functions: Vec<Function>,
    #[allow(dead_code)] // owned for their lifetime: unloaded on drop
    modules: Vec<Module>,
    weights: Option<DeviceAlloc>,
    weight_ptrs: Vec<u64>,
    meta: PlanMeta,
    path: PathBuf,
    arch: String,
    device_name: String,
    ordinal: usize,
    /// The default of new contexts' [`Context::programmatic_launch`].
    pdl: bool,
    /// The device has programmatic dependent launch (compute capability 9.0 or newer).
    pdl_capable: bool,
    pub(crate) ctx: Arc<CudaContext>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("path", &self.path)
            .field("model", &self.meta.model_name)
            .field("device", &self.device_name)
            .field("ordinal", &self.ordinal)
            .field("arch", &self.arch)
            .field("kernels", &self.functions.len())
            .field("weight_bytes", &self.weight_bytes())
            .finish()
    }
}

impl Engine {
    /// Loads the plan at `path` on device 0. See [`Engine::load_on`].
    pub fn load(path: &Path) -> Result<Engine, RuntimeError> {
        Self::load_on(path, 0)
    }

    /// Loads the plan at `path` on device `device_ordinal`: probes the driver (no driver is
    /// [`RuntimeError::NoDriver`], never a panic), creates the context, checks the plan's arch
    /// against the device's ([`device_arch`]) and every section's checksum, loads every CUBIN
    /// section, resolves every kernel by name (raising its dynamic shared memory limit above
    /// 48 KiB), and uploads every weight section once.
    pub fn load_on(path: &Path, device_ordinal: usize) -> Result<Engine, RuntimeError> {
        probe_driver()?;
        guarded(&format!("loading plan {}", path.display()), || Self::load_inner(path, device_ordinal))
    }

    fn load_inner(path: &Path, ordinal: usize) -> Result<Engine, RuntimeError> {
        match result::init() {
            Ok(()) => {}
            Err(e) if e.0 == sys::CUresult::CUDA_ERROR_NO_DEVICE => return Err(RuntimeError::NoDevice { ordinal, count: 0 }),
            Err(e) => return Err(RuntimeError::driver("initialising the CUDA driver (cuInit)", e)),
        }
        let count = result::device::get_count().map_err(|e| RuntimeError::driver("counting CUDA devices", e))?;
        let count = usize::try_from(count).unwrap_or(0);
        if ordinal >= count {
            return Err(RuntimeError::NoDevice { ordinal, count });
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| RuntimeError::driver(format!("creating a context on device {ordinal}"), e))?;
        // Work is ordered on each context's single stream; cudarc's per-slice events would also
        // break stream capture (crates.md §2).
        // SAFETY: no cudarc slice of this context exists yet, and the runtime creates none.
        unsafe { ctx.disable_event_tracking() };
        let device_name = ctx.name().unwrap_or_else(|_| "unknown device".into());
        let (major, minor) = ctx.compute_capability().map_err(|e| RuntimeError::driver("reading the compute capability", e))?;
        let arch = device_arch(major, minor);
        let smem_optin = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(|e| RuntimeError::driver("reading the device's shared memory limit", e))?;

        let plan = Plan::load(path, Some(&arch))?;
        plan.verify_sections()?;
        let meta = plan.meta().clone();
        let what_plan = format!("plan {}", path.display());
        bind(&ctx, &what_plan)?;

        // CUBINs: each section once, then every kernel by name.
        let mut modules = Vec::new();
        let mut module_of: HashMap<u32, usize> = HashMap::new();
        let mut functions = Vec::with_capacity(meta.kernels.len());
        for k in &meta.kernels {
            let kernel_err = |message: String| RuntimeError::Kernel { path: path.into(), kernel: k.name.clone(), message };
            check_kernel(k).map_err(kernel_err)?;
            let m = match module_of.get(&k.section) {
                Some(&m) => m,
                None => {
                    let bytes = plan.section_bytes(k.section as usize)?;
                    let name = plan.sections().get(k.section as usize).map_or("?", |s| s.name.as_str());
                    let what = format!(
                        "loading CUBIN section {} `{name}` (kernel `{}`) of {what_plan} on {device_name} ({arch})",
                        k.section, k.name
                    );
                    modules.push(Module::load(&ctx, bytes, &what)?);
                    module_of.insert(k.section, modules.len() - 1);
                    modules.len() - 1
                }
            };
            let f = modules[m].function(&k.name).map_err(kernel_err)?;
            if k.shared_mem_bytes > DEFAULT_MAX_DYNAMIC_SMEM {
                let static_smem = f.attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES).unwrap_or(0);
                let total = i64::from(k.shared_mem_bytes) + i64::from(static_smem);
                if total > i64::from(smem_optin) {
                    return Err(kernel_err(format!(
                        "needs {} bytes of dynamic (+{static_smem} static) shared memory, the device allows {smem_optin} per block",
                        k.shared_mem_bytes
                    )));
                }
                let limit = i32::try_from(k.shared_mem_bytes).unwrap_or(i32::MAX);
                f.set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, limit).map_err(|e| {
                    RuntimeError::driver(format!("raising the dynamic shared memory limit of kernel `{}` in {what_plan}", k.name), e)
                })?;
            }
            let threads = k.block.iter().map(|&b| i64::from(b)).product::<i64>();
            if let Ok(max) = f.attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK) {
                if threads > i64::from(max) {
                    return Err(kernel_err(format!(
                        "block {:?} has {threads} threads, but the compiled kernel allows at most {max} (registers)",
                        k.block
                    )));
                }
            }
            functions.push(f);
        }

        // Weights: each section once, 256-byte aligned in one allocation.
        let mut offset_of: HashMap<u32, u64> = HashMap::new();
        let mut sections: Vec<u32> = Vec::new();
        let mut total: u64 = 0;
        for w in &meta.weights {
            let weight_err = |message: String| RuntimeError::Weight { path: path.into(), weight: w.name.clone(), message };
            let len = plan.sections().get(w.section as usize).map(|s| s.len).ok_or_else(|| weight_err("no such section".into()))?;
            match numel(&w.shape).and_then(|n| dense_bytes(&w.dtype, n)) {
                Some(need) if need > len => {
                    return Err(weight_err(format!("{} {:?} needs {need} bytes but its section holds {len}", w.dtype, w.shape)));
                }
                Some(_) => {}
                None => tracing::debug!(weight = %w.name, dtype = %w.dtype, "weight of a dtype the runtime cannot size; not checked"),
            }
            if let std::collections::hash_map::Entry::Vacant(e) = offset_of.entry(w.section) {
                let start = total.div_ceil(DEVICE_ALIGN) * DEVICE_ALIGN;
                e.insert(start);
                sections.push(w.section);
                total = start.checked_add(len).ok_or_else(|| weight_err("weights overflow the address space".into()))?;
            }
        }
        let weights = if total > 0 {
            let bytes = usize::try_from(total).map_err(|_| RuntimeError::Weight {
                path: path.into(),
                weight: "*".into(),
                message: format!("{total} bytes of weights do not fit this host's address space"),
            })?;
            let alloc = DeviceAlloc::new(&ctx, bytes, &format!("the weights of {what_plan}"))?;
            for &s in &sections {
                let bytes = plan.section_bytes(s as usize)?;
                let dst = alloc.ptr() + offset_of[&s];
                // SAFETY: `dst..dst+len` lies inside `alloc`; the source is the mapped section.
                unsafe { result::memcpy_htod_sync(dst, bytes) }.map_err(|e| {
                    let name = plan.sections().get(s as usize).map_or("?", |e| e.name.as_str());
                    RuntimeError::driver(format!("uploading weight section {s} `{name}` of {what_plan}"), e)
                })?;
            }
            Some(alloc)
        } else {
            None
        };
        let base = weights.as_ref().map_or(0, |a| a.ptr());
        let weight_ptrs = meta.weights.iter().map(|w| if total > 0 { base + offset_of[&w.section] } else { 0 }).collect();
        tracing::debug!(
            plan = %path.display(), device = %device_name, %arch, kernels = functions.len(), modules = modules.len(),
            weight_bytes = total, "plan loaded"
        );
        let pdl = major >= PDL_MIN_MAJOR;
        Ok(Engine {
            functions,
            modules,
            weights,
            weight_ptrs,
            meta,
            path: path.into(),
            arch,
            device_name,
            ordinal,
            pdl,
            pdl_capable: pdl,
            ctx,
        })
    }

    /// The plan's metadata.
    pub fn meta(&self) -> &PlanMeta {
        &self.meta
    }

    /// The plan file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device's arch name, e.g. `sm_90a`.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// The device's name, e.g. `NVIDIA H100 80GB HBM3`.
    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// The device ordinal.
    pub fn device_ordinal(&self) -> usize {
        self.ordinal
    }

    /// Whether new contexts launch the plan's PDL kernels ([`PlanMeta::pdl_kernels`]) with
    /// programmatic stream serialization: on by default where the device has it (compute
    /// capability 9.0 and newer). Plans older than format 2.2 mark no kernel, so they always run
    /// in plain stream order.
    pub fn programmatic_launch(&self) -> bool {
        self.pdl
    }

    /// Sets the default of [`Engine::programmatic_launch`] for contexts created afterwards (on is
    /// honoured only where the device has it); [`Context::set_programmatic_launch`] changes one
    /// context.
    pub fn set_programmatic_launch(&mut self, on: bool) {
        self.pdl = on && self.device_has_pdl();
    }

    /// Whether the device has programmatic dependent launch (compute capability 9.0 or newer).
    pub(crate) fn device_has_pdl(&self) -> bool {
        self.pdl_capable
    }

    /// Bytes of device memory the weights take (with alignment padding).
    pub fn weight_bytes(&self) -> usize {
        self.weights.as_ref().map_or(0, |a| a.bytes())
    }

    /// A new execution context: its own CUDA stream, an activation arena of
    /// [`PlanMeta::peak_activation_bytes`] and a cache of CUDA graphs. One per thread.
    pub fn context(&self) -> Result<Context<'_>, RuntimeError> {
        Context::new(self)
    }

    /// Device address of each weight, in [`PlanMeta::weights`] order.
    pub(crate) fn weight_ptrs(&self) -> &[u64] {
        &self.weight_ptrs
    }

    /// The function of kernel `i`.
    pub(crate) fn function(&self, i: usize) -> Option<Function> {
        self.functions.get(i).copied()
    }
}
