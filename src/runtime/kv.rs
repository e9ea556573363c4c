//! The device side of a decoder's paged KV cache: one page pool per KV state slot, the page table
//! of the current step, the split-KV scratch of the decode attention and the sampled ids, owned by a [`super::Context`] (see
//! [`crate::plan::DecoderMeta`] for the layout and [`super::scheduler`] for who gets which pages).

use cudarc::driver::{result, sys};

use super::cuda::DeviceAlloc;
use super::engine::Engine;
use super::error::RuntimeError;
use crate::plan::DecoderMeta;

/// Device memory of a paged KV cache.
pub(crate) struct KvCache {
    /// Page pools, one per state slot (`[pages, KV, page_size, D]` of its dtype).
    #[allow(dead_code)] // owned for their lifetime: freed on drop
    pools: Vec<DeviceAlloc>,
    /// Their device addresses.
    pub(crate) pool_ptrs: Vec<u64>,
    /// `i32[max_batch, max_pages]`.
    pub(crate) table: DeviceAlloc,
    /// `i32[max_batch]`: the sampling kernel's output.
    pub(crate) ids: DeviceAlloc,
    /// The split-KV scratch ([`DecoderMeta::split_scratch_bytes`]), zeroed at allocation; `None`
    /// when the plan needs none.
    split_scratch: Option<DeviceAlloc>,
    /// Pages per pool.
    pub(crate) pages: u32,
}

impl KvCache {
    /// Pools of `pages` pages for `engine`'s decoder plan; the split-KV scratch is zeroed on
    /// `stream`, which is synchronised before this returns.
    pub(crate) fn new(engine: &Engine, pages: u32, stream: sys::CUstream) -> Result<Self, RuntimeError> {
        let d = decoder(engine)?;
        let what = |w: &str| format!("{w} of the KV cache of plan {}", engine.path().display());
        if pages == 0 {
            return Err(RuntimeError::Usage(format!("{}: needs at least one page", what("the pools"))));
        }
        let mut pools = Vec::with_capacity(d.kv.slots.len());
        for slot in &d.kv.slots {
            let page =
                slot.page_bytes(d.kv.page_size).ok_or_else(|| RuntimeError::Usage(format!("KV slot `{}`: bad dtype", slot.input)))?;
            let bytes = page
                .checked_mul(u64::from(pages))
                .and_then(|b| usize::try_from(b).ok())
                .ok_or_else(|| RuntimeError::Usage(format!("{} pages of KV slot `{}` do not fit in memory", pages, slot.input)))?;
            pools.push(DeviceAlloc::new(&engine.ctx, bytes, &what(&format!("pool `{}`", slot.input)))?);
        }
        let rows = usize::try_from(d.max_batch).unwrap_or(usize::MAX);
        let table_bytes = rows.saturating_mul(d.kv.max_pages as usize).saturating_mul(4);
        let table = DeviceAlloc::new(&engine.ctx, table_bytes, &what("the page table"))?;
        let ids = DeviceAlloc::new(&engine.ctx, rows.saturating_mul(4), &what("the sampled ids"))?;
        let split_scratch = Self::split_scratch(engine, d, stream, &what("the split-KV scratch"))?;
        let pool_ptrs = pools.iter().map(DeviceAlloc::ptr).collect();
        Ok(Self { pools, pool_ptrs, table, ids, split_scratch, pages })
    }

    /// The split-KV scratch of `d.split_scratch_bytes` bytes (one buffer for every layer: the
    /// launches using it run in order on one stream), or `None` when 0. It is zeroed once here:
    /// the split attention's completion counters ([`crate::plan::ArgRef::SplitScratchZeroed`])
    /// must start at zero, and each launch leaves them zero.
    fn split_scratch(engine: &Engine, d: &DecoderMeta, stream: sys::CUstream, what: &str) -> Result<Option<DeviceAlloc>, RuntimeError> {
        if d.split_scratch_bytes == 0 {
            return Ok(None);
        }
        let bytes = usize::try_from(d.split_scratch_bytes)
            .map_err(|_| RuntimeError::Usage(format!("{what}: {} bytes do not fit in memory", d.split_scratch_bytes)))?;
        let scratch = DeviceAlloc::new(&engine.ctx, bytes, what)?;
        // SAFETY: the whole allocation, on a live stream of the same (current) context, which is
        // synchronised before any launch can use the scratch.
        unsafe { result::memset_d8_async(scratch.ptr(), 0, scratch.bytes(), stream).and_then(|_| result::stream::synchronize(stream)) }
            .map_err(|e| RuntimeError::driver(format!("clearing {what}"), e))?;
        Ok(Some(scratch))
    }

    /// Device address of the split-KV scratch; 0 when the plan needs none.
    pub(crate) fn split_scratch_ptr(&self) -> u64 {
        self.split_scratch.as_ref().map_or(0, DeviceAlloc::ptr)
    }
}

/// The plan's decoder metadata, or an error saying the plan is not a decoder.
pub(crate) fn decoder(engine: &Engine) -> Result<&DecoderMeta, RuntimeError> {
    engine.meta().decoder.as_ref().ok_or_else(|| {
        RuntimeError::Usage(format!("plan {} is not a decoder (it has no KV cache); use Context::run", engine.path().display()))
    })
}
