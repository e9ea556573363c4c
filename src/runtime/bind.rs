//! The runtime's pure logic, testable without a GPU: binding inputs to the plan's signature
//! (inferring the shape symbols), sizing outputs and buffers, and resolving each launch of the
//! schedule into a grid and a kernel-parameter list for given symbol values and device addresses.

use crate::plan::{ArgRef, DimExpr, KernelMeta, LaunchMeta, ParamType, PlanMeta, Scalar, TensorSig};

use super::error::RuntimeError;
use super::tensor::{dense_bytes, numel, HostTensor};

/// Largest grid x extent the hardware accepts.
pub const MAX_GRID_X: u64 = (1 << 31) - 1;
/// Largest grid y and z extents the hardware accepts.
pub const MAX_GRID_YZ: u64 = 65535;
/// Largest block size (threads) any NVIDIA GPU accepts.
pub const MAX_BLOCK_THREADS: u64 = 1024;
/// Dynamic shared memory above this needs `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`.
pub const DEFAULT_MAX_DYNAMIC_SMEM: u32 = 48 * 1024;

/// The result of binding a run's inputs to the plan's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Every shape symbol with its value for this run, in [`PlanMeta::symbols`] order.
    pub symbols: Vec<(String, u64)>,
    /// For each of [`PlanMeta::inputs`], the index of the caller's tensor bound to it.
    pub order: Vec<usize>,
}

impl Binding {
    /// The symbol values alone, in [`PlanMeta::symbols`] order (the graph cache key).
    pub fn key(&self) -> Vec<u64> {
        self.symbols.iter().map(|&(_, v)| v).collect()
    }
}

/// `B=1, S=128`.
pub fn describe_symbols(symbols: &[(String, u64)]) -> String {
    if symbols.is_empty() {
        return "no shape symbols".into();
    }
    symbols.iter().map(|(s, v)| format!("{s}={v}")).collect::<Vec<_>>().join(", ")
}

/// Binds `inputs` (by name) to the plan's inputs and infers the shape symbols.
///
/// Every name in [`PlanMeta::inputs`] must be given exactly once, and no other. Each tensor's
/// dtype must equal the signature's, its rank the signature's, and its data must fit its dtype
/// and shape. Each dim is checked against the signature's [`DimExpr`]: a constant must match; a
/// bare symbol binds that symbol (consistently across all inputs, `1 ≤ value ≤` the symbol's
/// maximum); any other expression is evaluated once the bare symbols are bound and must match.
/// Every symbol of the plan must be bound by some input's bare dim.
pub fn bind_inputs(meta: &PlanMeta, inputs: &[(&str, HostTensor)]) -> Result<Binding, RuntimeError> {
    let input_err = |input: &str, message: String| RuntimeError::Input { input: input.into(), message };
    let names = || meta.inputs.iter().map(|s| format!("`{}`", s.name)).collect::<Vec<_>>().join(", ");

    // Names: each plan input exactly once, nothing else.
    let mut order: Vec<Option<usize>> = vec![None; meta.inputs.len()];
    for (k, (name, _)) in inputs.iter().enumerate() {
        let Some(i) = meta.inputs.iter().position(|s| s.name == *name) else {
            return Err(input_err(name, format!("unknown input; the plan's inputs are {}", names())));
        };
        if order[i].is_some() {
            return Err(input_err(name, "given more than once".into()));
        }
        order[i] = Some(k);
    }
    let missing: Vec<&str> = meta.inputs.iter().zip(&order).filter(|(_, o)| o.is_none()).map(|(s, _)| s.name.as_str()).collect();
    if let Some(first) = missing.first() {
        let message = if missing.len() == 1 {
            "missing: it was not given".to_string()
        } else {
            format!("missing, as are {}: the plan's inputs are {}", missing[1..].join(", "), names())
        };
        return Err(input_err(first, message));
    }
    let order: Vec<usize> = order.into_iter().flatten().collect();

    // Dtype, rank, data, then the bare symbols.
    let mut values: Vec<Option<(u64, String)>> = vec![None; meta.symbols.len()];
    for (sig, &k) in meta.inputs.iter().zip(&order) {
        let t = &inputs[k].1;
        if t.dtype != sig.dtype {
            return Err(input_err(&sig.name, format!("dtype is {}, the plan expects {}", t.dtype, sig.dtype)));
        }
        if t.shape.len() != sig.shape.len() {
            return Err(input_err(
                &sig.name,
                format!(
                    "rank {} (shape {:?}), the plan expects rank {} ({})",
                    t.shape.len(),
                    t.shape,
                    sig.shape.len(),
                    show_shape(&sig.shape)
                ),
            ));
        }
        t.check().map_err(|m| input_err(&sig.name, m))?;
        for (axis, (e, &actual)) in sig.shape.iter().zip(&t.shape).enumerate() {
            match e {
                DimExpr::Const(c) if *c != actual => {
                    return Err(input_err(&sig.name, format!("axis {axis} is {actual}, the plan expects {c}")));
                }
                DimExpr::Sym(s) => {
                    let Some(j) = meta.symbols.iter().position(|(n, _)| n == s) else {
                        let message = format!("axis {axis} uses shape symbol `{s}`, which the plan does not declare");
                        return Err(input_err(&sig.name, message));
                    };
                    let max = meta.symbols[j].1;
                    if actual < 1 || actual > max {
                        return Err(input_err(&sig.name, format!("axis {axis} ({s}) is {actual}, the plan supports {s} from 1 to {max}")));
                    }
                    match &values[j] {
                        Some((v, from)) if *v != actual => {
                            return Err(RuntimeError::Symbol {
                                symbol: s.clone(),
                                message: format!("{from} gives {v}, but input `{}` axis {axis} gives {actual}", sig.name),
                            });
                        }
                        Some(_) => {}
                        None => values[j] = Some((actual, format!("input `{}` axis {axis}", sig.name))),
                    }
                }
                _ => {}
            }
        }
    }
    let mut symbols = Vec::with_capacity(meta.symbols.len());
    for ((name, _), v) in meta.symbols.iter().zip(values) {
        let Some((v, _)) = v else {
            return Err(RuntimeError::Symbol {
                symbol: name.clone(),
                message: "no input has it as a dimension, so its value cannot be inferred".into(),
            });
        };
        symbols.push((name.clone(), v));
    }

    // Compound dims, now that every symbol has a value.
    for (sig, &k) in meta.inputs.iter().zip(&order) {
        let t = &inputs[k].1;
        for (axis, (e, &actual)) in sig.shape.iter().zip(&t.shape).enumerate() {
            if matches!(e, DimExpr::Const(_) | DimExpr::Sym(_)) {
                continue;
            }
            let want = e.eval_with(&symbols).map_err(|m| input_err(&sig.name, format!("axis {axis}: {m}")))?;
            if want != actual {
                return Err(input_err(
                    &sig.name,
                    format!("axis {axis} is {actual}, the plan expects `{e}` = {want} ({})", describe_symbols(&symbols)),
                ));
            }
        }
    }
    Ok(Binding { symbols, order })
}

/// `[B, S, 384]`.
pub fn show_shape(shape: &[DimExpr]) -> String {
    format!("[{}]", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}

/// Evaluates every dim of `shape` for `symbols`.
pub fn eval_shape(shape: &[DimExpr], symbols: &[(String, u64)]) -> Result<Vec<u64>, String> {
    shape.iter().map(|d| d.eval_with(symbols)).collect()
}

/// Where a tensor lives for one run: its run-time shape, and the byte range in the arena.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    /// Run-time shape.
    pub shape: Vec<u64>,
    /// Offset in the arena.
    pub offset: u64,
    /// Bytes at this shape (at most the buffer's size).
    pub bytes: u64,
}

/// The extent of buffer `buffer` holding a tensor of `dtype` and symbolic `shape` (a model output
/// or the buffer's own value), checked to fit the buffer.
pub fn buffer_extent(meta: &PlanMeta, buffer: u32, dtype: &str, shape: &[DimExpr], symbols: &[(String, u64)]) -> Result<Extent, String> {
    let b = meta.buffers.get(buffer as usize).ok_or_else(|| format!("buffer {buffer} out of {}", meta.buffers.len()))?;
    let shape = eval_shape(shape, symbols)?;
    let bytes = numel(&shape)
        .and_then(|n| dense_bytes(dtype, n))
        .ok_or_else(|| format!("cannot size {dtype} {shape:?} (unknown dtype or overflow)"))?;
    if bytes > b.bytes {
        return Err(format!("{dtype} {shape:?} needs {bytes} bytes but its buffer `{}` holds {}", b.name, b.bytes));
    }
    Ok(Extent { shape, offset: b.offset, bytes })
}

/// The extent of a model input or output (its [`TensorSig`]) for `symbols`.
pub fn sig_extent(meta: &PlanMeta, sig: &TensorSig, symbols: &[(String, u64)]) -> Result<Extent, String> {
    buffer_extent(meta, sig.buffer, &sig.dtype, &sig.shape, symbols)
}

/// A kernel argument, by value, as `cuLaunchKernel` receives it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KernelArg {
    /// A device pointer.
    Ptr(u64),
    /// `int`.
    I32(i32),
    /// `long long`.
    I64(i64),
    /// `float`.
    F32(f32),
}

impl KernelArg {
    /// Pointer to the value, as the kernel-parameter array wants it. Valid while `self` is neither
    /// moved nor dropped.
    pub fn as_param_ptr(&self) -> *mut std::ffi::c_void {
        match self {
            KernelArg::Ptr(v) => v as *const u64 as *mut std::ffi::c_void,
            KernelArg::I32(v) => v as *const i32 as *mut std::ffi::c_void,
            KernelArg::I64(v) => v as *const i64 as *mut std::ffi::c_void,
            KernelArg::F32(v) => v as *const f32 as *mut std::ffi::c_void,
        }
    }
}

/// Device addresses the arguments of a launch refer to.
#[derive(Debug, Clone, Copy)]
pub struct Addresses<'a> {
    /// Device address of each of [`PlanMeta::weights`].
    pub weights: &'a [u64],
    /// Device address of the arena (256-byte aligned); buffer `i` is at `arena + buffers[i].offset`.
    pub arena: u64,
    /// Device address of each KV-cache page pool ([`crate::plan::KvCacheMeta::slots`]); empty
    /// without a KV cache.
    pub kv_pools: &'a [u64],
    /// Device address of the page table; 0 without a KV cache.
    pub page_table: u64,
    /// Device address of the split-KV scratch ([`crate::plan::DecoderMeta::split_scratch_bytes`]);
    /// 0 without one.
    pub split_scratch: u64,
}

/// One launch of the schedule, resolved for given symbol values and addresses.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedLaunch {
    /// Index in [`PlanMeta::schedule`].
    pub index: usize,
    /// Index in [`PlanMeta::kernels`].
    pub kernel: usize,
    /// Grid (x, y, z), every extent ≥ 1.
    pub grid: [u32; 3],
    /// Block (x, y, z).
    pub block: [u32; 3],
    /// Dynamic shared memory in bytes.
    pub shared_mem_bytes: u32,
    /// The arguments, one per kernel parameter.
    pub args: Vec<KernelArg>,
    /// The plan declares the kernel safe to launch with programmatic stream serialization
    /// ([`PlanMeta::pdl_kernels`]); the context decides whether it does.
    pub pdl: bool,
}

/// Resolves launch `index` of the schedule: its grid (`None` if its guard
/// ([`PlanMeta::launch_guards`]) does not hold or any extent is zero: the launch is skipped) and its arguments (weights and buffers as device pointers, `Scalar::Dim` evaluated
/// and checked to fit its parameter's integer type).
pub fn resolve_launch(
    meta: &PlanMeta,
    index: usize,
    symbols: &[(String, u64)],
    addrs: &Addresses<'_>,
) -> Result<Option<ResolvedLaunch>, RuntimeError> {
    let Some(launch) = meta.schedule.get(index) else {
        return Err(RuntimeError::Usage(format!("launch {index} out of {}", meta.schedule.len())));
    };
    let kernel_name = meta.kernels.get(launch.kernel as usize).map_or("?", |k| k.name.as_str());
    let err = |message: String| RuntimeError::Launch { index, label: launch.label.clone(), kernel: kernel_name.into(), message };
    let Some(kernel) = meta.kernels.get(launch.kernel as usize) else {
        return Err(err(format!("kernel {} out of {}", launch.kernel, meta.kernels.len())));
    };
    if let Some(guard) = meta.guard_of(index) {
        if !guard.holds(symbols).map_err(|m| err(format!("guard `{guard}`: {m}")))? {
            return Ok(None);
        }
    }
    let mut grid = [0u32; 3];
    for (axis, e) in kernel.grid.iter().enumerate() {
        let v = e.eval_with(symbols).map_err(|m| err(format!("grid {}: {m}", AXES[axis])))?;
        let limit = if axis == 0 { MAX_GRID_X } else { MAX_GRID_YZ };
        if v > limit {
            return Err(err(format!("grid {} = `{e}` = {v} exceeds the limit {limit} ({})", AXES[axis], describe_symbols(symbols))));
        }
        grid[axis] = v as u32;
    }
    if grid.contains(&0) {
        return Ok(None);
    }
    if launch.args.len() != kernel.params.len() {
        return Err(err(format!("{} arguments for {} parameters", launch.args.len(), kernel.params.len())));
    }
    let mut args = Vec::with_capacity(launch.args.len());
    for (arg, param) in launch.args.iter().zip(&kernel.params) {
        let bad = |m: String| err(format!("argument `{}`: {m}", param.name));
        let value = match (arg, param.ty) {
            (ArgRef::Weight(i), ParamType::Ptr) => {
                KernelArg::Ptr(*addrs.weights.get(*i as usize).ok_or_else(|| bad(format!("weight {i} out of {}", addrs.weights.len())))?)
            }
            (ArgRef::Buffer(i), ParamType::Ptr) => {
                let b = meta.buffers.get(*i as usize).ok_or_else(|| bad(format!("buffer {i} out of {}", meta.buffers.len())))?;
                KernelArg::Ptr(addrs.arena.checked_add(b.offset).ok_or_else(|| bad("address overflows".into()))?)
            }
            (ArgRef::KvPool(i), ParamType::Ptr) => KernelArg::Ptr(*addrs.kv_pools.get(*i as usize).ok_or_else(|| {
                bad(format!("KV pool {i} out of {}: decoder plans run through a generator, which owns the KV cache", addrs.kv_pools.len()))
            })?),
            (ArgRef::PageTable, ParamType::Ptr) if addrs.page_table != 0 => KernelArg::Ptr(addrs.page_table),
            (ArgRef::PageTable, _) => {
                return Err(bad("no page table: decoder plans run through a generator, which owns the KV cache".into()))
            }
            (ArgRef::SplitScratch | ArgRef::SplitScratchZeroed, ParamType::Ptr) if addrs.split_scratch != 0 => {
                KernelArg::Ptr(addrs.split_scratch)
            }
            (ArgRef::SplitScratch | ArgRef::SplitScratchZeroed, _) => {
                return Err(bad("no split-KV scratch: decoder plans run through a generator, which owns it with the KV cache".into()))
            }
            (ArgRef::Scalar(Scalar::F32(v)), ParamType::F32) => KernelArg::F32(*v),
            (ArgRef::Scalar(Scalar::I32(v)), ParamType::I32) => KernelArg::I32(*v),
            (ArgRef::Scalar(Scalar::I64(v)), ParamType::I64) => KernelArg::I64(*v),
            (ArgRef::Scalar(Scalar::Dim(e)), ty @ (ParamType::I32 | ParamType::I64)) => {
                let v = e.eval_with(symbols).map_err(bad)?;
                dim_arg(v, ty).ok_or_else(|| {
                    bad(format!("`{e}` = {v} does not fit its parameter type {} ({})", type_name(ty), describe_symbols(symbols)))
                })?
            }
            (arg, ty) => return Err(bad(format!("{arg:?} does not fit parameter type {}", type_name(ty)))),
        };
        args.push(value);
    }
    Ok(Some(ResolvedLaunch {
        index,
        kernel: launch.kernel as usize,
        grid,
        block: kernel.block,
        shared_mem_bytes: kernel.shared_mem_bytes,
        args,
        pdl: meta.pdl_kernel(launch.kernel as usize),
    }))
}

/// Every launch of the schedule that runs for `symbols` (launches whose guard does not hold or with
/// a zero grid extent are left out), resolved. A CUDA graph captured from it holds only those.
pub fn resolve_schedule(meta: &PlanMeta, symbols: &[(String, u64)], addrs: &Addresses<'_>) -> Result<Vec<ResolvedLaunch>, RuntimeError> {
    let mut out = Vec::with_capacity(meta.schedule.len());
    for index in 0..meta.schedule.len() {
        out.extend(resolve_launch(meta, index, symbols, addrs)?);
    }
    Ok(out)
}

/// A size as a kernel argument of type `ty`, if it fits.
pub fn dim_arg(value: u64, ty: ParamType) -> Option<KernelArg> {
    match ty {
        ParamType::I32 => i32::try_from(value).ok().map(KernelArg::I32),
        ParamType::I64 => i64::try_from(value).ok().map(KernelArg::I64),
        ParamType::Ptr | ParamType::F32 => None,
    }
}

/// Static checks of a kernel's launch shape, done once at load: a non-empty block of at most 1024
/// threads.
pub fn check_kernel(kernel: &KernelMeta) -> Result<(), String> {
    let [x, y, z] = kernel.block.map(u64::from);
    if x == 0 || y == 0 || z == 0 {
        return Err(format!("block {:?} has a zero extent", kernel.block));
    }
    if x * y * z > MAX_BLOCK_THREADS || z > 64 {
        return Err(format!("block {:?} exceeds the hardware limits (1024 threads, z ≤ 64)", kernel.block));
    }
    Ok(())
}

/// The label of launch `index`, for messages.
pub fn launch_label(meta: &PlanMeta, index: usize) -> (&str, &str) {
    let launch: Option<&LaunchMeta> = meta.schedule.get(index);
    let label = launch.map_or("?", |l| l.label.as_str());
    let kernel = launch.and_then(|l| meta.kernels.get(l.kernel as usize)).map_or("?", |k| k.name.as_str());
    (label, kernel)
}

const AXES: [&str; 3] = ["x", "y", "z"];

fn type_name(ty: ParamType) -> &'static str {
    match ty {
        ParamType::Ptr => "pointer",
        ParamType::I32 => "int",
        ParamType::I64 => "long long",
        ParamType::F32 => "float",
    }
}
