//! A CUDA device for the GPU kernel tests (`#[ignore]`d: CI has no GPU): allocations freed on drop,
//! and a kernel compiled to sm_90a with NVRTC, launched, and waited for.

use std::ffi::{c_void, CString};
use std::sync::Arc;

use cudarc::driver::{result, sys, CudaContext};
use qfuse::codegen::kernel::KernelDef;
use qfuse::codegen::nvrtc;

/// The device and the allocations of one test case.
pub struct Gpu {
    _ctx: Arc<CudaContext>,
    allocs: Vec<u64>,
}

impl Gpu {
    /// Device 0, bound to this thread; panics without a driver or device (these tests never skip).
    pub fn new() -> Self {
        let ctx = CudaContext::new(0).expect("a CUDA device (this test needs a GPU)");
        ctx.bind_to_thread().expect("bind");
        Gpu { _ctx: ctx, allocs: vec![] }
    }

    /// A device copy of `data` (at least one byte allocated), freed with the `Gpu`.
    pub fn upload(&mut self, data: &[u8]) -> u64 {
        // SAFETY: a fresh allocation of data.len() bytes, written from a live slice.
        let p = unsafe { result::malloc_sync(data.len().max(1)) }.expect("malloc");
        if !data.is_empty() {
            unsafe { result::memcpy_htod_sync(p, data) }.expect("htod");
        }
        self.allocs.push(p);
        p
    }

    /// `n` bytes from `p` (an allocation of at least `n` bytes made by [`Gpu::upload`]).
    pub fn download(&self, p: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        // SAFETY: `p` holds at least n bytes (allocated by `upload` with that size).
        unsafe { result::memcpy_dtoh_sync(&mut v, p) }.expect("dtoh");
        v
    }

    /// Compiles `k`, launches it on `grid` with its own block and shared memory, and waits.
    /// `params` holds one pointer per kernel parameter, each to a live value of that parameter's
    /// type (device pointers to live allocations).
    pub fn launch(&self, k: &KernelDef, grid: [u32; 3], params: &mut [*mut c_void]) {
        assert_eq!(params.len(), k.params.len(), "{}", k.name);
        let mut image = nvrtc::compile_cubin(&k.name, &k.source, "sm_90a", &[]).unwrap_or_else(|e| panic!("{}:\n{e}", k.name));
        image.push(0);
        // SAFETY: a complete CUBIN image; the module outlives the launch (synchronised below).
        let module = unsafe { result::module::load_data(image.as_ptr().cast()) }.expect("load module");
        let f = unsafe { result::module::get_function(module, CString::new(k.name.clone()).unwrap()) }.expect("function");
        if k.smem_bytes > 48 * 1024 {
            let attr = sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
            unsafe { result::function::set_function_attribute(f, attr, k.smem_bytes as i32) }.expect("smem attribute");
        }
        let [bx, by, bz] = k.block;
        // SAFETY: one pointer per parameter, of its type (the caller's contract).
        let rc = unsafe {
            sys::cuLaunchKernel(
                f,
                grid[0],
                grid[1],
                grid[2],
                bx,
                by,
                bz,
                k.smem_bytes,
                std::ptr::null_mut(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        assert_eq!(rc, sys::CUresult::CUDA_SUCCESS, "launching {}", k.name);
        result::ctx::synchronize().unwrap_or_else(|e| panic!("running {}: {e:?}", k.name));
        unsafe { result::module::unload(module) }.expect("unload");
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        for &p in &self.allocs {
            let _ = unsafe { result::free_sync(p) };
        }
    }
}
