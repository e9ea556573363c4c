//! Decoder steps on a [`Context`]: a paged KV cache attached to the context, one plan run per
//! scheduler step (CUDA graph per `(B, S)`), then the plan's sampling kernel on each row's last
//! logits, on the GPU; only the sampled ids (and, when asked, those logits) come back.

use super::*;
use crate::plan::{DecoderMeta, ParamType};
use crate::runtime::bind::KernelArg;
use crate::runtime::kv;
use crate::runtime::scheduler::StepInput;

/// What one step returns.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutput {
    /// One sampled id per row.
    pub ids: Vec<u32>,
    /// Each row's last-position logits, when asked for.
    pub logits: Option<Vec<Vec<f32>>>,
}

/// What one kernel of a step costs inside the step's CUDA graph: the step's graph with every
/// launch of the kernel issued twice, back to back, against the plain step's graph, per launch.
/// This includes what the graph spends between the kernel and its neighbours (the launch, the
/// programmatic-dependent-launch hand-over), which per-launch event pairs cannot separate from
/// the kernel and overstate.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GraphMarginal {
    /// The kernel's entry point name.
    pub kernel: String,
    /// The label of its first launch in the step.
    pub label: String,
    /// Its launches in the step.
    pub launches: usize,
    /// (median replay with its launches doubled − median plain replay) / launches, µs.
    pub micros: f64,
}

/// [`Context::graph_marginals`]: the step's median graph replay and each kernel's marginal
/// cost, largest total (`micros × launches`) first.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StepMarginals {
    /// Median replay of the step's graph, µs.
    pub step_micros: f64,
    /// The difference between two measurements of that median (a second capture and timing
    /// after all the others), µs: the scale below which a kernel's total marginal is noise.
    pub noise_micros: f64,
    /// Replays timed per graph.
    pub iters: usize,
    /// One entry per distinct kernel of the step.
    pub kernels: Vec<GraphMarginal>,
}

impl Context<'_> {
    /// Gives this context a paged KV cache of `pages` pages per pool (replacing any earlier one;
    /// graphs captured with the old pools are dropped). Decoder plans only.
    pub fn attach_kv_cache(&mut self, pages: u32) -> Result<(), RuntimeError> {
        guarded("allocating a KV cache", || {
            self.bind_ctx()?;
            self.sync()?;
            self.graphs.clear();
            self.kv = None;
            self.kv = Some(KvCache::new(self.engine, pages, self.cu_stream())?);
            Ok(())
        })
    }

    /// Pages of the attached KV cache.
    pub fn kv_pages(&self) -> Option<u32> {
        self.kv.as_ref().map(|k| k.pages)
    }

    /// Runs one scheduler step: uploads the ids, cache lengths and page table, replays the graph
    /// for `(B, S)`, samples one id per row on the GPU and returns the ids (and, with
    /// `want_logits`, each row's last logits as f32).
    pub fn decode_step(&mut self, input: &StepInput, want_logits: bool) -> Result<StepOutput, RuntimeError> {
        guarded("running a decoder step", || {
            let d = kv::decoder(self.engine)?.clone();
            let step = self.bind_step(&d, input)?;
            let binding = &step.binding;
            self.sync_on_error(|this| {
                this.stage_step(&step)?;
                let issue = this.prepare(binding)?;
                this.issue(&issue, binding)?;
                let (logits_ptr, row_stride, dtype) = this.logits_rows(&d, &binding.symbols)?;
                let elem = dtype.clone();
                let elem = u64::from(crate::runtime::tensor::dtype_bits(&elem).unwrap_or(32) / 8);
                for sample in this.sample_launches(&d, input, logits_ptr, row_stride, elem)? {
                    this.launch(&sample)?;
                }
                let ids_ptr = this.kv.as_ref().map(|kv| kv.ids.ptr()).expect("checked by bind_step");
                let mut ids = vec![0u8; input.batch * 4];
                // SAFETY: `ids` has B i32 of the device's max_batch; synchronised below.
                unsafe { result::memcpy_dtoh_async(&mut ids, ids_ptr, this.cu_stream()) }
                    .map_err(|e| RuntimeError::driver("copying the sampled ids to the host", e))?;
                let logits = if want_logits { Some(this.download_rows(&d, logits_ptr, row_stride, &dtype, input.batch)?) } else { None };
                this.sync()?;
                let ids = ids.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                Ok(StepOutput { ids, logits })
            })
        })
    }

    /// The GPU time of every launch of one scheduler step (no graph, no sampling; an event pair
    /// around each launch, as [`Context::run_profiled`]). The step writes the KV-cache entries
    /// `input` names, exactly as [`Context::decode_step`] on the same input does, so profiling a
    /// step and then running it leaves the cache as running it alone would.
    pub fn profile_step(&mut self, input: &StepInput) -> Result<Vec<KernelTiming>, RuntimeError> {
        guarded("profiling a decoder step", || {
            let d = kv::decoder(self.engine)?.clone();
            let step = self.bind_step(&d, input)?;
            self.sync_on_error(|this| {
                this.stage_step(&step)?;
                let launches = resolve_schedule(this.engine.meta(), &step.binding.symbols, &this.addresses())?;
                this.time_launches(&launches, "profiling a decoder step")
            })
        })
    }

    /// Each kernel's in-graph cost in one scheduler step ([`GraphMarginal`]): captures the
    /// step's launches into a graph, then for each distinct kernel a graph with that kernel's
    /// launches doubled, and times `iters` replays of each (medians; no sampling). A doubled
    /// launch may apply an in-place update twice, so the step's activations and the KV-cache
    /// entries at the step's positions are unspecified afterwards: run the real step (which
    /// rewrites those entries) after this, as [`super::super::Generator::step_probed`] does.
    /// The context's cached graphs are neither used nor changed.
    pub fn graph_marginals(&mut self, input: &StepInput, iters: usize) -> Result<StepMarginals, RuntimeError> {
        guarded("timing a decoder step's kernels in its graph", || {
            let d = kv::decoder(self.engine)?.clone();
            let step = self.bind_step(&d, input)?;
            let symbols = &step.binding.symbols;
            self.sync_on_error(|this| {
                this.stage_step(&step)?;
                let launches = resolve_schedule(this.engine.meta(), symbols, &this.addresses())?;
                let iters = iters.max(1);
                let median_micros = |this: &mut Self, seq: &[ResolvedLaunch]| -> Result<f64, RuntimeError> {
                    if seq.is_empty() {
                        return Ok(0.0);
                    }
                    let exec = this.capture(seq, symbols)?;
                    let replay =
                        |this: &Self, _| exec.launch(this.cu_stream()).map_err(|e| RuntimeError::driver("replaying a profiling graph", e));
                    Ok(stats(this.time_replays(3, iters, "timing a step's graph", replay)?).median_ms * 1e3)
                };
                let step_micros = median_micros(this, &launches)?;
                let mut kernels: Vec<usize> = Vec::new();
                for l in &launches {
                    if !kernels.contains(&l.kernel) {
                        kernels.push(l.kernel);
                    }
                }
                let mut out = Vec::with_capacity(kernels.len());
                for k in kernels {
                    let doubled: Vec<ResolvedLaunch> =
                        launches.iter().flat_map(|l| std::iter::repeat_n(l, if l.kernel == k { 2 } else { 1 })).cloned().collect();
                    let count = doubled.len() - launches.len();
                    let micros = (median_micros(this, &doubled)? - step_micros) / count as f64;
                    let first = launches.iter().find(|l| l.kernel == k).map_or(0, |l| l.index);
                    let (label, kernel) = launch_label(this.engine.meta(), first);
                    out.push(GraphMarginal { kernel: kernel.into(), label: label.into(), launches: count, micros });
                }
                out.sort_by(|a, b| (b.micros * b.launches as f64).total_cmp(&(a.micros * a.launches as f64)));
                let noise_micros = (median_micros(this, &launches)? - step_micros).abs();
                Ok(StepMarginals { step_micros, noise_micros, iters, kernels: out })
            })
        })
    }

    /// Checks a step against the plan's limits and binds its inputs.
    fn bind_step(&mut self, d: &DecoderMeta, input: &StepInput) -> Result<BoundStep, RuntimeError> {
        if self.kv.is_none() {
            return Err(RuntimeError::Usage("no KV cache: call Context::attach_kv_cache first".into()));
        }
        check_step(d, input)?;
        let (b, s) = (input.batch as u64, input.seq as u64);
        let inputs = vec![
            ("input_ids", HostTensor::from_i64(vec![b, s], &input.ids)),
            ("cache_len", HostTensor::from_i64(vec![b], &input.cache_len)),
        ];
        let binding = bind_inputs(self.engine.meta(), &inputs)?;
        self.bind_ctx()?;
        let table: Vec<u8> = input.page_table.iter().flat_map(|p| p.to_le_bytes()).collect();
        Ok(BoundStep { binding, inputs, table })
    }

    /// Uploads a bound step's inputs and its page table (asynchronously, on the stream; the
    /// caller synchronises before `step` drops).
    fn stage_step(&mut self, step: &BoundStep) -> Result<(), RuntimeError> {
        self.upload_inputs(&step.binding, &step.inputs)?;
        let table = &step.table;
        let table_ptr = self.kv.as_ref().map(|kv| kv.table.ptr()).expect("checked by bind_step");
        // SAFETY: the table holds max_batch·max_pages i32 (checked: B ≤ max_batch, row width
        // = max_pages); `table` outlives the copy (the caller synchronises the stream).
        unsafe { result::memcpy_htod_async(table_ptr, table, self.cu_stream()) }
            .map_err(|e| RuntimeError::driver("copying the page table to the device", e))
    }

    /// [`Context::run_checked`] for one scheduler step: uploads the page table, then runs the
    /// plan launch by launch on `input`'s ids and cache lengths (no graph, no sampling), calling
    /// `on_launch` after each launch as `run_checked` does. The KV cache's pages are written as
    /// in [`Context::decode_step`], from whatever `on_launch` left in the buffers the appends
    /// read. Returns the plan's outputs.
    #[allow(clippy::type_complexity)]
    pub fn decode_step_checked(
        &mut self,
        input: &StepInput,
        on_launch: &mut dyn FnMut(usize, &crate::plan::LaunchMeta, &[(u32, HostTensor)]) -> Vec<(u32, HostTensor)>,
    ) -> Result<Outputs, RuntimeError> {
        let d = kv::decoder(self.engine)?.clone();
        let step = self.bind_step(&d, input)?;
        guarded("staging a decoder step", || {
            self.sync_on_error(|this| {
                this.stage_step(&step)?;
                this.sync()
            })
        })?;
        self.run_checked(&step.inputs, on_launch)
    }

    /// Address of row 0's last-position logits, the stride between rows (elements) and the
    /// element dtype. The logits are `[B, S, V]`, or `[B, 1, V]` when the plan keeps only each
    /// sequence's last position (compiled plans do): their run-time shape says which.
    fn logits_rows(&self, d: &DecoderMeta, symbols: &[(String, u64)]) -> Result<(u64, u64, String), RuntimeError> {
        let meta = self.engine.meta();
        let sig =
            meta.outputs.iter().find(|o| o.name == d.logits).ok_or_else(|| RuntimeError::Usage(format!("no output `{}`", d.logits)))?;
        let ext =
            sig_extent(meta, sig, symbols).map_err(|m| RuntimeError::Buffer { what: "output", name: sig.name.clone(), message: m })?;
        let bytes =
            crate::runtime::tensor::dtype_bits(&sig.dtype).ok_or_else(|| RuntimeError::Usage(format!("logits dtype {}", sig.dtype)))? / 8;
        let &[_, positions, vocab] = ext.shape.as_slice() else {
            return Err(RuntimeError::Usage(format!("logits `{}` are not [B, S, V]", sig.name)));
        };
        if vocab != d.vocab || positions == 0 {
            return Err(RuntimeError::Usage(format!(
                "logits `{}` have shape {:?}; the plan's vocabulary is {}",
                sig.name, ext.shape, d.vocab
            )));
        }
        let first = self.arena_base + ext.offset + (positions - 1) * vocab * u64::from(bytes);
        Ok((first, positions * vocab, sig.dtype.clone()))
    }

    /// Copies each row's last logits back (one synchronisation for all rows) as f32.
    fn download_rows(&self, d: &DecoderMeta, first: u64, stride: u64, dtype: &str, rows: usize) -> Result<Vec<Vec<f32>>, RuntimeError> {
        let elem = u64::from(crate::runtime::tensor::dtype_bits(dtype).unwrap_or(32) / 8);
        let mut raw = Vec::with_capacity(rows);
        for r in 0..rows as u64 {
            let mut bytes = vec![0u8; (d.vocab * elem) as usize];
            // SAFETY: the row lies inside the logits buffer of the arena; `bytes` is read only after
            // the synchronisation below (and `sync_on_error` waits on every error path).
            unsafe { result::memcpy_dtoh_async(&mut bytes, first + r * stride * elem, self.cu_stream()) }
                .map_err(|e| RuntimeError::driver("copying logits to the host", e))?;
            raw.push(bytes);
        }
        self.sync()?;
        raw.into_iter()
            .map(|data| HostTensor { dtype: dtype.to_string(), shape: vec![d.vocab], data }.to_f32_vec().map_err(RuntimeError::Usage))
            .collect()
    }

    /// The sampling kernel's launches: one over every row when all rows are greedy (the draw
    /// counter is then unused), else one per row with that row's settings and counter, so a
    /// request samples the same tokens whatever else shares its decode batch.
    fn sample_launches(
        &self,
        d: &DecoderMeta,
        input: &StepInput,
        logits: u64,
        row_stride: u64,
        elem: u64,
    ) -> Result<Vec<ResolvedLaunch>, RuntimeError> {
        let out = self.kv.as_ref().expect("checked by the caller").ids.ptr();
        if input.sampling.iter().all(|(p, _)| p.temperature == 0.0) {
            let (p, counter) = input.sampling.first().copied().unwrap_or_default();
            return Ok(vec![self.sample_launch(d, input.batch, logits, row_stride, out, p, counter)?]);
        }
        input
            .sampling
            .iter()
            .enumerate()
            .map(|(b, &(p, counter))| {
                let b = b as u64;
                self.sample_launch(d, 1, logits + b * row_stride * elem, row_stride, out + 4 * b, p, counter)
            })
            .collect()
    }

    /// One launch of the sampling kernel over `rows` rows, its arguments bound by parameter name.
    #[allow(clippy::too_many_arguments)]
    fn sample_launch(
        &self,
        d: &DecoderMeta,
        rows: usize,
        logits: u64,
        row_stride: u64,
        out: u64,
        p: crate::runtime::scheduler::SamplingParams,
        counter: u64,
    ) -> Result<ResolvedLaunch, RuntimeError> {
        let meta = self.engine.meta();
        let k = d.sample_kernel as usize;
        let kernel = meta.kernels.get(k).ok_or_else(|| RuntimeError::Usage(format!("sampling kernel {k} missing")))?;
        let mut args = Vec::with_capacity(kernel.params.len());
        for param in &kernel.params {
            let v = match (param.name.as_str(), param.ty) {
                ("logits", ParamType::Ptr) => KernelArg::Ptr(logits),
                ("row_stride", ParamType::I64) => KernelArg::I64(row_stride as i64),
                ("rows", ParamType::I32) => KernelArg::I32(rows as i32),
                ("rows", ParamType::I64) => KernelArg::I64(rows as i64),
                ("out", ParamType::Ptr) => KernelArg::Ptr(out),
                ("temperature", ParamType::F32) => KernelArg::F32(p.temperature),
                ("top_k", ParamType::I32) => KernelArg::I32(p.top_k as i32),
                ("top_p", ParamType::F32) => KernelArg::F32(p.top_p),
                ("seed", ParamType::I64) => KernelArg::I64(p.seed as i64),
                ("counter", ParamType::I64) => KernelArg::I64(counter as i64),
                (name, ty) => {
                    return Err(RuntimeError::Usage(format!("sampling kernel parameter `{name}` ({ty:?}) is unknown to this runtime")))
                }
            };
            args.push(v);
        }
        Ok(ResolvedLaunch {
            index: usize::MAX,
            kernel: k,
            grid: [rows as u32, 1, 1],
            block: kernel.block,
            shared_mem_bytes: kernel.shared_mem_bytes,
            args,
            // Launched after the step's graph, in plain stream order.
            pdl: false,
        })
    }
}

/// A step's inputs bound to the plan: the binding, the host tensors behind it and the page
/// table's bytes (kept alive until the stream is synchronised).
struct BoundStep {
    binding: Binding,
    inputs: Vec<(&'static str, HostTensor)>,
    table: Vec<u8>,
}

/// A step's shapes against the plan's limits; errors name the limit.
fn check_step(d: &DecoderMeta, input: &StepInput) -> Result<(), RuntimeError> {
    let bad = |m: String| Err(RuntimeError::Usage(m));
    if input.batch == 0 || input.batch as u64 > d.max_batch {
        return bad(format!("a step of {} sequences; the plan serves 1 to {} (--max-batch)", input.batch, d.max_batch));
    }
    if input.seq == 0 || input.seq as u64 > d.max_step_tokens {
        return bad(format!("a step of {} tokens per sequence; the plan takes 1 to {}", input.seq, d.max_step_tokens));
    }
    if input.ids.len() != input.batch * input.seq || input.cache_len.len() != input.batch {
        return bad("ids must be B·S and cache_len B long".into());
    }
    if input.page_table.len() != input.batch * d.kv.max_pages as usize {
        return bad(format!("the page table must be B·{} long", d.kv.max_pages));
    }
    for (b, &len) in input.cache_len.iter().enumerate() {
        if len < 0 || len as u64 + input.seq as u64 > d.max_seq {
            return bad(format!(
                "sequence {b}: {len} cached + {} new tokens exceed the plan's context {} (--max-seq)",
                input.seq, d.max_seq
            ));
        }
    }
    Ok(())
}
