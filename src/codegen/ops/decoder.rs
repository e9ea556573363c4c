//! Decoder ops: `rope` (`templates/rope.cu`) and `causal_attention` over the runtime's paged KV
//! cache (`templates/kv_append.cu`, then `templates/paged_attention.cu`, or for prefill on tensor
//! cores `templates/paged_prefill.cu`; at decode paged_attention appends the step's token itself
//! with kv_append's per-pack code, `templates/kv_row.cuh`). Each template's header
//! is its full design; docs/codegen.md "Decoder kernels" summarises them.
//!
//! - `rope x, cache_len` → one launch, signature `(x, cache_len, y, long long rows, long long S)`,
//!   grid `(B·S, 1, 1)`, block [`ROPE_THREADS`]. Heads, head size, pairing and the inverse
//!   frequencies (the interpreter's [`inverse_frequencies`], f64, printed exactly) are compiled in.
//! - `causal_attention q, k, v, past_k, past_v, cache_len` → the append (guard `S > 1`; no guard
//!   over an NVFP4 cache), then the decode path (guard `S ≤ 1`: one split-KV attention merged by
//!   its last CTAs, or one unsplit attention when [`decode_splits`] is 1; it appends the step's
//!   token itself, see 4.) or the prefill attention (guard `S > 1`), and only with a paged
//!   KV cache ([`LowerCx::paged`]); `past_k`/`past_v` must be state inputs ([`Graph::state`]) and
//!   `k`/`v` their state updates. They name the pools of their state slots ([`Arg::KvPool`]) and
//!   never their arena storage, so the past inputs get none ([`crate::codegen::memory`]).
//!   1. `kv_append(k, v, k_pool, v_pool, page_table, cache_len, long long B, long long S)`:
//!      grid `(ceil_div(B·S·KV·R, 256), 2, 1)`, block 256, R packs per row of D elements; `k, v`
//!      are token-major `[B, S, KV, D]` (a view of the projection), the pools HND per page. An
//!      NVFP4 cache (`codes(..., block=16)`: 10 operands, the last four the E4M3 block scales,
//!      state of their own) appends `k_s, v_s, ks_pool, vs_pool` and grid y = 4: the codes (D/2
//!      bytes a row) and the scales (D/16 bytes a row) go to their own pools, same pages and slots.
//!      With `rope(keys)` (`fuse-rope`; float and per-tensor code caches, never NVFP4) k is
//!      unrotated, the append rotates each key as it writes it, and a `k_out` pointer (the op's
//!      second result, the cache update) follows `cache_len`; the `k` state update is then that
//!      second result. With any `rope(...)` the attention kernels rotate each query element as
//!      they load it ([`PagedAttentionSpec::rope`]).
//!   2. `paged_attention(q, k_pool, v_pool, page_table, cache_len, o, long long S, float k_scale,
//!      float v_scale)`: grid `(ceil_div(S, QT), KV, B)`, block [`ATTN_THREADS`] ([`DECODE_ATTN_THREADS`] for QT = 1), dynamic shared
//!      memory [`PagedAttentionSpec::smem_bytes`]; the decode variant (QT = 1, guard `S ≤ 1`) and
//!      the prefill variant (QT·G ≤ 64 rows, guard `S > 1`) share the template. The score scale is compiled in; the cache
//!      scales are arguments (1 for float caches; NVFP4: the global scales, and the block-scale
//!      pools `ks_pool, vs_pool` are two more pointer parameters at the end), so every layer of
//!      one shape shares the kernel.
//!      The prefill guard (`S > 1`) runs `paged_prefill` (`templates/paged_prefill.cu`) instead
//!      wherever [`PagedAttentionSpec::tensor_core_support`] allows (f16/bf16 q, a cache whose
//!      values q's dtype holds exactly, D a multiple of 16 up to 128, G ≤ 64, tiles of whole
//!      k16 steps): the same parameters, grid `(ceil_div(S, QT), KV, B)` with QT =
//!      [`PagedAttentionSpec::prefill_q_tokens`], block [`PREFILL_THREADS`], dynamic shared
//!      memory [`PagedAttentionSpec::prefill_smem_bytes`]; both products on mma.sync tensor
//!      cores, the K/V tiles dequantized by the same loaders (`templates/paged_load.cuh`).
//!   3. Split-KV decode (when [`decode_splits`] ≥ 2, replacing the unsplit decode variant of 2.):
//!      `paged_attention(q, k_pool, v_pool, page_table, cache_len, o, scratch, long long S, float
//!      k_scale, float v_scale)` with grid `(SPLITS, KV, B)`, guarded `S ≤ 1`, writes f32
//!      partials to the runtime's split scratch ([`Arg::SplitScratch`]), after one completion
//!      counter per (KV head, sequence). Of a sequence's SPLITS CTAs only `min(SPLITS, tiles of
//!      its context)` work (the others exit at once, before the wait, writing nothing); with one live CTA it
//!      writes o itself, otherwise the last live CTA of each KV head and sequence merges their
//!      records into o and resets its counter. [`split_combine_kernel`] is the same merge as a launch of
//!      its own (`templates/split_merge.cuh` holds the math both use); plans do not launch it.
//!   4. The fused append ([`PagedAttentionSpec::append`], every cache but NVFP4): the decode
//!      attention of 2. or 3. takes `k, v` (and with `rope(keys)` `k_out`) after its other
//!      parameters, and per (KV head, sequence) the CTA whose key range holds position
//!      `cache_len[b]` writes the token's K and V rows (rotated and quantized as kv_append does,
//!      the same `templates/kv_row.cuh` code; `k_out` too) before its first tile load; kv_append
//!      is then guarded `S > 1`. A decode step launches one kernel per layer for the attention
//!      (SmolLM2's fp16 plan: 244 → 214 launches per decode step). An NVFP4 cache keeps
//!      kv_append at every S (its codes and block scales arrive computed from their own quantize).
//!
//! [`Graph::state`]: crate::ir::Graph::state

use super::common::{dtype_trait, elem_bytes, prelude_values, render, Sig};
use super::shape::pack_bytes;
use crate::codegen::kernel::{finish_kernel, params, Arg, KernelDef, Launch, LowerCx, LowerError, Lowered, PagedKv};
use crate::codegen::template::Template;
use crate::interp::inverse_frequencies;
use crate::ir::{AttnRope, CausalAttention, DType, NodeId, Op, Rope, RopePairs, ValueId};
use crate::plan::{DimExpr, Guard, ParamType, Scalar};

const ROPE: Template = Template { name: "rope.cu", text: include_str!("../../../templates/rope.cu") };
const KV_APPEND: Template = Template { name: "kv_append.cu", text: include_str!("../../../templates/kv_append.cu") };
const PAGED_ATTENTION: Template = Template { name: "paged_attention.cu", text: include_str!("../../../templates/paged_attention.cu") };
const PAGED_PREFILL: Template = Template { name: "paged_prefill.cu", text: include_str!("../../../templates/paged_prefill.cu") };
/// The paged K/V tile loaders (`{{paged_load}}` of paged_attention and paged_prefill).
const PAGED_LOAD: &str = include_str!("../../../templates/paged_load.cuh");
const SPLIT_COMBINE: Template = Template { name: "split_combine.cu", text: include_str!("../../../templates/split_combine.cu") };
/// The merge of split-KV partial records (`{{split_merge}}` of paged_attention and split_combine).
const SPLIT_MERGE: &str = include_str!("../../../templates/split_merge.cuh");
/// The append of one K/V pack (`{{kv_row}}` of kv_append, and of paged_attention's decode variant
/// with [`PagedAttentionSpec::append`]).
const KV_ROW: &str = include_str!("../../../templates/kv_row.cuh");

/// Threads of a rope CTA (one CTA per token row).
pub const ROPE_THREADS: u32 = 128;
/// Threads of a kv_append CTA (one 16-byte pack per thread).
pub const APPEND_THREADS: u32 = 256;
/// Threads of a paged_attention CTA.
pub const ATTN_THREADS: u32 = 128;
/// Threads of a decode paged_attention CTA (one query token): 8 warps, each taking every 8th key
/// of a tile with its lanes over the head's columns (paged_attention.cu `QF_WARP_KEYS`).
pub const DECODE_ATTN_THREADS: u32 = 256;
/// Threads of a paged_prefill CTA: 4 warps, one m16 block of query rows each.
pub const PREFILL_THREADS: u32 = 128;
/// Query rows (tokens × heads of a KV group) of one paged_prefill CTA: 16 per warp.
pub const PREFILL_ROWS: u32 = PREFILL_THREADS / 32 * 16;
/// Largest head size paged_prefill takes (its f32 output fragments and Q fragments live in
/// registers: 3·D/2 + TK/2 per thread).
pub const PREFILL_MAX_HEAD_DIM: u32 = 128;
/// Most query rows (tokens × heads of a KV group) one paged_attention CTA serves.
pub const MAX_ROWS: u32 = 64;
/// Keys per tile of the decode variant (at least; whole pages); the prefill variant's tiles
/// hold at least 64.
pub const DECODE_TILE_KEYS: u32 = 128;
/// Keys per tile of the split-KV decode variant (at least; whole pages): smaller than
/// [`DECODE_TILE_KEYS`] so that a 1k-token cache still gives every split a tile.
pub const SPLIT_TILE_KEYS: u32 = 64;
/// Dynamic shared memory a CTA may use on sm_90 (227 KiB).
pub const MAX_SMEM: u32 = 227 * 1024;
/// SMs of the target GPU the split count is sized for (an H100 SXM has 132).
pub const TARGET_SMS: u32 = 132;
/// Most key ranges one sequence's decode attention is split into.
pub const MAX_SPLITS: u32 = 16;
/// 16-byte loads each thread of paged_attention keeps in flight while filling a K/V tile.
pub const LOADS_IN_FLIGHT: u32 = 4;

/// Split-KV ranges per sequence of the decode attention over `kv_heads` KV heads and a paged
/// cache of `paged` geometry: enough CTAs to give every SM of [`TARGET_SMS`] two at batch 1,
/// `ceil(2·132 / KV)`, capped at [`MAX_SPLITS`] (the combine and the partials grow with it; 16
/// ranges of one 1k-token cache are 64 keys each, one tile) and at the most tiles a sequence
/// can span (`ceil(max_pages·PAGE / TK)`, TK the split variant's tile, so no split is always
/// empty). 1 means no split: the unsplit decode kernel runs.
pub fn decode_splits(kv_heads: u32, paged: PagedKv) -> u32 {
    let max_tiles = (u64::from(paged.max_pages) * u64::from(paged.page_size.max(1))).div_ceil(u64::from(split_tile_keys(paged)));
    let want = (2 * TARGET_SMS).div_ceil(kv_heads.max(1));
    want.min(MAX_SPLITS).min(u32::try_from(max_tiles).unwrap_or(u32::MAX)).max(1)
}

/// Keys per tile of the split decode attention over `paged`: whole pages, at least
/// [`SPLIT_TILE_KEYS`].
pub fn split_tile_keys(paged: PagedKv) -> u32 {
    whole_pages(paged, SPLIT_TILE_KEYS)
}

/// The fewest whole pages of `paged` holding at least `keys` keys, in keys.
fn whole_pages(paged: PagedKv, keys: u32) -> u32 {
    let page = paged.page_size.max(1);
    page * keys.div_ceil(page)
}

/// Lowers `rope` and `causal_attention`.
pub fn lower(cx: &LowerCx, node: NodeId) -> Result<Lowered, LowerError> {
    match &cx.graph.nodes[node].op {
        Op::Rope(r) => rope(cx, node, r),
        Op::CausalAttention(a) => causal_attention(cx, node, a),
        other => Err(cx.error(node, format!("internal: {} is not a decoder op", other.mnemonic()))),
    }
}

/// The C element type and trait of a float activation dtype (f16, bf16, f32), or an error naming
/// `what`.
fn float_trait(cx: &LowerCx, node: NodeId, dt: DType, what: &str) -> Result<&'static str, LowerError> {
    match dt {
        DType::F16 | DType::BF16 | DType::F32 => Ok(dtype_trait(dt).expect("float trait")),
        other => Err(cx.error(node, format!("{what} is {other}; the decoder kernels take f16, bf16 or f32"))),
    }
}

/// `{{prelude}}`, `{{ops}}` and `{{kernel_name}}` plus `values`.
pub(crate) fn with_prelude(values: Vec<(&'static str, String)>) -> Vec<(&'static str, String)> {
    prelude_values().into_iter().chain(values).collect()
}

fn rope(cx: &LowerCx, node: NodeId, r: &Rope) -> Result<Lowered, LowerError> {
    let n = &cx.graph.nodes[node];
    let (x, len, y) = (n.inputs[0], n.inputs[1], n.outputs[0]);
    let dt = cx.graph.ty(x).dtype;
    let t = float_trait(cx, node, dt, "rope's operand")?;
    if cx.graph.ty(y).dtype != dt {
        return Err(cx.error(node, format!("rope's result is {} but its operand is {dt}", cx.graph.ty(y).dtype)));
    }
    check_cache_len(cx, node, len)?;
    let shape = cx.graph.shape(x);
    if shape.len() != 3 {
        return Err(cx.error(node, format!("rope's operand must be [B, S, N·D], got rank {}", shape.len())));
    }
    let width = cx.fixed_last(x).ok_or_else(|| cx.error(node, "the last extent N·D of rope's operand must be fixed"))?;
    let heads = u64::from(r.heads);
    if heads == 0 || width % heads != 0 || (width / heads) % 2 != 0 {
        return Err(cx.error(node, format!("rope over {width} columns: not {} heads of an even size", r.heads)));
    }
    let d = (width / heads) as usize;
    let table = frequency_table(r, d);
    let (pairs_doc, adjacent) = pairs_text(r.pairs);
    let values = with_prelude(vec![
        ("t", t.to_string()),
        ("heads", r.heads.to_string()),
        ("head_dim", d.to_string()),
        ("adjacent", adjacent.to_string()),
        ("pairs_doc", pairs_doc.to_string()),
        ("inv_freq", table),
        ("threads", ROPE_THREADS.to_string()),
    ]);
    let source = render(cx, node, &ROPE, &values)?;
    let dims = cx.dims(x);
    let rows = dims[0].clone().mul(dims[1].clone());
    let mut sig = Sig::default();
    sig.input("x", &format!("{t}::T"), x);
    sig.input("cache_len", "long long", len);
    sig.output("y", &format!("{t}::T"), y);
    sig.dim("rows", rows.clone());
    sig.dim("S", dims[1].clone());
    Ok(Lowered::Launches(vec![sig.launch("rope", source, [rows, 1.into(), 1.into()], [ROPE_THREADS, 1, 1], 0)]))
}

/// The inverse frequencies of `r` for head size `head_dim` (the interpreter's
/// [`inverse_frequencies`], f64) as a C initializer list: `{:e}` is the shortest decimal that
/// reads back as the same f64 (in C as in Rust).
fn frequency_table(r: &Rope, head_dim: usize) -> String {
    let freqs = inverse_frequencies(f64::from(r.theta), head_dim, r.llama3.as_ref());
    freqs.iter().map(|f| format!("{f:e}")).collect::<Vec<_>>().join(", ")
}

/// A comment naming the pairs and the `adjacent` flag (C `0`/`1`) of `pairs`.
fn pairs_text(pairs: RopePairs) -> (&'static str, &'static str) {
    match pairs {
        RopePairs::Half => ("pairs (i, i + D/2)", "0"),
        RopePairs::Adjacent => ("pairs (2i, 2i + 1)", "1"),
    }
}

fn check_cache_len(cx: &LowerCx, node: NodeId, len: ValueId) -> Result<(), LowerError> {
    let ty = cx.graph.ty(len);
    if ty.dtype != DType::I64 || ty.shape.len() != 1 {
        return Err(cx.error(node, format!("cache_len must be i64[B], got {}", ty.dtype)));
    }
    Ok(())
}

/// How the attention reads cache elements: floats exactly, or codes times a scale rounded to `via`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CacheRead {
    /// f16, bf16 or f32 values read exactly.
    Float(DType),
    /// `f8e4m3`, `f8e5m2` or `i8` codes: `via(code · scale)`.
    Codes {
        /// The stored dtype.
        storage: DType,
        /// The rounding dtype of `code · scale` (f16, bf16 or f32).
        via: DType,
    },
    /// NVFP4: `f4e2m1` codes with E4M3 scales per 16 elements in their own pools:
    /// `via(via(code · block_scale) · global)`, the global passed as `k_scale`/`v_scale`.
    Nvfp4 {
        /// The rounding dtype (f16, bf16 or f32).
        via: DType,
    },
}

impl CacheRead {
    /// The stored dtype.
    pub fn storage(self) -> DType {
        match self {
            CacheRead::Float(d) | CacheRead::Codes { storage: d, .. } => d,
            CacheRead::Nvfp4 { .. } => DType::F4E2M1,
        }
    }

    /// True for an NVFP4 cache (block-scale pools beside the code pools).
    pub fn block_scaled(self) -> bool {
        matches!(self, CacheRead::Nvfp4 { .. })
    }
}

/// `qf_round_f16`/`qf_round_bf16` for a `via` of f16/bf16; empty (no rounding) for f32.
fn via_round(via: DType) -> &'static str {
    match via {
        DType::F16 => "qf_round_f16",
        DType::BF16 => "qf_round_bf16",
        _ => "",
    }
}

/// Everything the paged_attention template is specialised on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PagedAttentionSpec {
    /// Query heads H.
    pub heads: u32,
    /// KV heads (H is a multiple).
    pub kv_heads: u32,
    /// Head size D.
    pub head_dim: u32,
    /// q's dtype (f16, bf16, f32).
    pub q: DType,
    /// o's dtype (f16, bf16, f32); with [`Self::out_codes`] the dtype o is rounded to before its
    /// quantize.
    pub out: DType,
    /// A fused static output quantize (`causal_attention … out=…`): o stores these codes
    /// (`f8e4m3` or `i8`) of its `out` value, `cast(round_out(o) / out_scale)`, with `out_scale`
    /// the kernel's last parameter. `None`: o stores `out` values.
    pub out_codes: Option<DType>,
    /// The cache's storage and how it is read.
    pub cache: CacheRead,
    /// Multiplier of the scores (compiled in).
    pub scale: f32,
    /// Page size and page-table width.
    pub paged: PagedKv,
    /// The decode variant (one query token per CTA, [`DECODE_TILE_KEYS`]-key tiles), launched
    /// when `S ≤ 1`; otherwise the prefill variant (up to [`MAX_ROWS`] rows, 64-key tiles).
    pub decode: bool,
    /// Split-KV ranges of the decode variant (0: no split). With `n ≥ 1` the kernel runs on grid
    /// `(n, KV, B)` with [`SPLIT_TILE_KEYS`]-key tiles and writes f32 partials `[B, H, n, D + 2]`
    /// to the split scratch (after [`Self::split_counter_bytes`] of completion counters); the
    /// last CTA of each KV head and sequence merges them into o.
    pub splits: u32,
    /// Largest batch B: sizes the split scratch (its counters and partials). Unused without a
    /// split.
    pub max_batch: u32,
    /// RoPE on the query load (`fuse-rope`): q arrives unrotated and each element is rotated at
    /// its position and rounded to q's dtype as it is loaded (`keys` is ignored here: kv_append
    /// or the fused append, [`Self::append`], rotates the keys). `None`: q arrives rotated.
    pub rope: Option<AttnRope>,
    /// The decode variant appends this step's K/V token itself (the fused append; kv_append then
    /// runs for prefill only). `None`: kv_append has written the token before the launch.
    pub append: Option<DecodeAppend>,
    /// The decode variant's math: warps over keys, lanes over columns (paged_attention.cu
    /// `QF_WARP_KEYS`, [`DECODE_ATTN_THREADS`]) where D is a multiple of 32; `false`: one thread
    /// per score, [`ATTN_THREADS`] (as the prefill variant always computes).
    pub warp_decode: bool,
}

/// The decode attention's own append of this step's token (S = 1): for each KV head and
/// sequence, the one CTA whose key range holds the new position `cache_len[b]` computes the
/// token's K and V rows as kv_append does (`templates/kv_row.cuh`, the same code), writes them to
/// the pools (and the rotated keys to `k_out`), and then reads them back through the coherent
/// load path after a barrier; no other CTA reads that position. Float, FP8/INT8 (per-tensor)
/// caches; never NVFP4 (its codes and block scales keep the separate append).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecodeAppend {
    /// `rope(keys)`: the keys arrive unrotated and are rotated (and for a code cache quantized
    /// with `k_scale`) as they are appended, as kv_append does; the kernel then also takes
    /// `k_out`. `None`: k arrives rotated in the cache dtype and is copied like v.
    pub key_rope: Option<KeyRope>,
}

impl PagedAttentionSpec {
    /// Query heads per KV head.
    pub fn group(&self) -> u32 {
        self.heads / self.kv_heads
    }

    /// The decode variant computes with warps over keys ([`Self::warp_decode`], one query token
    /// per CTA, D a multiple of 32).
    pub fn warp_keys(&self) -> bool {
        self.warp_decode && self.q_tokens() == 1 && self.head_dim % 32 == 0
    }

    /// Keys per shared-memory tile: whole pages, at least 64 keys ([`DECODE_TILE_KEYS`] for
    /// the decode variant).
    pub fn tile_keys(&self) -> u32 {
        let least = match (self.decode, self.splits) {
            (true, 0) => DECODE_TILE_KEYS,
            (true, _) => return split_tile_keys(self.paged),
            (false, _) => 64,
        };
        whole_pages(self.paged, least)
    }

    /// Bytes of the split scratch (0 without a split): [`Self::split_counter_bytes`] of
    /// completion counters, then the partials, `max_batch · H · splits · (D + 2)` f32.
    pub fn split_scratch_bytes(&self) -> u64 {
        if self.splits == 0 {
            return 0;
        }
        let partials = u64::from(self.max_batch) * u64::from(self.heads) * u64::from(self.splits) * (u64::from(self.head_dim) + 2) * 4;
        self.split_counter_bytes() + partials
    }

    /// Bytes of the split scratch's completion counters (0 without a split): one u32 per (KV
    /// head, sequence) of `max_batch` sequences, rounded up to 16 bytes so the partials stay
    /// 16-byte aligned.
    pub fn split_counter_bytes(&self) -> u64 {
        if self.splits == 0 {
            return 0;
        }
        (u64::from(self.max_batch) * u64::from(self.kv_heads) * 4).div_ceil(16) * 16
    }

    /// Query tokens per CTA: 1 for the decode variant; otherwise as many as keep the rows
    /// (tokens × group) at or under [`MAX_ROWS`] and the shared memory under [`MAX_SMEM`] (at
    /// least 1).
    pub fn q_tokens(&self) -> u32 {
        if self.decode {
            return 1;
        }
        let mut qt = (MAX_ROWS / self.group()).max(1);
        while qt > 1 && self.smem_for(qt) > MAX_SMEM {
            qt /= 2;
        }
        qt
    }

    /// Dynamic shared memory: the staged first tile (every cache but NVFP4: its K and V rows
    /// raw, `2·TK·D` cache elements), then f32 words: Q `[ROWS][D+1]`, K `[TK][D+1]`, V `[TK][D]`,
    /// P `[ROWS][TK]`, and three row statistics (TK: [`Self::tile_keys`]).
    pub fn smem_bytes(&self) -> u32 {
        self.smem_for(self.q_tokens())
    }

    fn smem_for(&self, q_tokens: u32) -> u32 {
        let rows = q_tokens * self.group();
        let (d, tk) = (self.head_dim, self.tile_keys());
        let stage = if self.cache.block_scaled() { 0 } else { 2 * tk * d * self.cache.storage().bits() / 8 };
        stage + 4 * (rows * (d + 1) + tk * (d + 1) + tk * d + rows * tk + 3 * rows)
    }

    /// Checks what the template relies on; the message names the constraint.
    pub fn validate(&self) -> Result<(), String> {
        for (what, dt) in [("q", self.q), ("o", self.out)] {
            if !matches!(dt, DType::F16 | DType::BF16 | DType::F32) {
                return Err(format!("{what} is {dt}; paged attention computes from f16, bf16 or f32"));
            }
        }
        if let Some(codes) = self.out_codes.filter(|c| !matches!(c, DType::F8E4M3 | DType::I8)) {
            return Err(format!("an output quantize to {codes}: paged attention stores f8e4m3 or i8 codes"));
        }
        match self.cache {
            CacheRead::Float(DType::F16 | DType::BF16 | DType::F32) => {}
            CacheRead::Codes { storage: DType::F8E4M3 | DType::F8E5M2 | DType::I8, via: DType::F16 | DType::BF16 | DType::F32 } => {}
            CacheRead::Nvfp4 { via: DType::F16 | DType::BF16 | DType::F32 } => {
                if self.head_dim % 32 != 0 {
                    return Err(format!("head size {}: an NVFP4 row is not a whole number of 16-byte packs (32 codes)", self.head_dim));
                }
            }
            other => {
                return Err(format!("a KV cache read as {other:?} has no kernel (floats f16/bf16/f32, f8e4m3/f8e5m2/i8 codes, or NVFP4)"))
            }
        }
        if self.kv_heads == 0 || self.heads % self.kv_heads != 0 {
            return Err(format!("{} heads are not a multiple of {} KV heads", self.heads, self.kv_heads));
        }
        if self.kv_heads > 65535 {
            return Err(format!("{} KV heads exceed the grid limit 65535", self.kv_heads));
        }
        let eb = self.cache.storage().bits().div_ceil(8);
        if self.head_dim == 0 || (self.head_dim * eb) % 16 != 0 {
            return Err(format!("head size {}: a row of {} is not a whole number of 16-byte packs", self.head_dim, self.cache.storage()));
        }
        let PagedKv { page_size, max_pages } = self.paged;
        if page_size == 0 || page_size > 128 || max_pages == 0 {
            return Err(format!("page size {page_size} (1..=128) and {max_pages} pages per sequence (≥ 1) are not supported"));
        }
        if !self.scale.is_finite() {
            return Err(format!("score scale {} is not finite", self.scale));
        }
        if self.splits > 0 && (!self.decode || self.splits > MAX_SPLITS) {
            return Err(format!("{} split-KV ranges: only the decode variant splits, into 1..={MAX_SPLITS}", self.splits));
        }
        if self.splits > 0 && !(1..=65535).contains(&self.max_batch) {
            return Err(format!("split-KV scratch for a largest batch of {}: needs 1..=65535", self.max_batch));
        }
        if self.smem_bytes() > MAX_SMEM {
            return Err(format!("{} bytes of shared memory exceed {MAX_SMEM} (page size or group too large)", self.smem_bytes()));
        }
        if let Some(append) = self.append {
            self.check_append(append)?;
        }
        Ok(())
    }

    /// What the fused append relies on: the decode variant, a float or per-tensor code cache, and
    /// with `rope(keys)` the query rope's rotation (one frequency table serves both) over keys
    /// kv_append could rotate.
    fn check_append(&self, append: DecodeAppend) -> Result<(), String> {
        if !self.decode {
            return Err("only the decode variant appends the step's token itself".into());
        }
        if self.cache.block_scaled() {
            return Err("an NVFP4 cache keeps kv_append (its codes and block scales arrive computed)".into());
        }
        if let Some(kr) = append.key_rope {
            if self.rope.map(|r| AttnRope { keys: true, ..r }) != Some(AttnRope { keys: true, ..kr.rope }) {
                return Err("the appended keys' rope must be the query rope's".into());
            }
            key_rope_defines(self.cache.storage(), &kr, self.head_dim)?;
        }
        Ok(())
    }

    /// Kernel parameters in signature order: the sixth is `out` (o), followed with a split by
    /// `scratch` (the split scratch); an NVFP4 cache appends the block-scale pools `ks_pool,
    /// vs_pool`; the fused append ([`Self::append`]) appends this step's `k, v` and with
    /// `rope(keys)` `k_out`; an output quantize ([`Self::out_codes`]) appends `out_scale` last.
    pub fn params(&self) -> Vec<(&'static str, ParamType)> {
        let mut p = pointers(&["q", "k_pool", "v_pool", "page_table", "cache_len", "out"]);
        if self.splits > 0 {
            p.push(("scratch", ParamType::Ptr));
        }
        p.extend([("S", ParamType::I64), ("k_scale", ParamType::F32), ("v_scale", ParamType::F32)]);
        if self.cache.block_scaled() {
            p.extend(pointers(&["ks_pool", "vs_pool"]));
        }
        if let Some(append) = self.append {
            p.extend(pointers(&["k", "v"]));
            if append.key_rope.is_some() {
                p.push(("k_out", ParamType::Ptr));
            }
        }
        if self.out_codes.is_some() {
            p.push(("out_scale", ParamType::F32));
        }
        p
    }

    /// The template values paged_attention.cu and paged_prefill.cu share: dtype traits, shape,
    /// paging, how the cache is read (`codes`, `via`, `cache_doc`, the loaders), the score scale
    /// and the query RoPE (prelude included).
    fn common_values(&self) -> Vec<(&'static str, String)> {
        let trait_of = |d: DType| dtype_trait(d).expect("validated dtype").to_string();
        let (codes, via, cache_doc) = match self.cache {
            CacheRead::Float(d) => ("0", String::new(), format!("{d} values, read exactly")),
            CacheRead::Codes { storage, via } => {
                ("1", via_round(via).to_string(), format!("{storage} codes, {via}(code · scale) (k_scale for K, v_scale for V)"))
            }
            CacheRead::Nvfp4 { via } => (
                "1",
                via_round(via).to_string(),
                format!("NVFP4: f4e2m1 codes, {via}({via}(code · e4m3 block scale) · global) (k_scale, v_scale: the globals)"),
            ),
        };
        // An NVFP4 pool is addressed in bytes (qf_load_tile_nvfp4); the generic loader sees bytes.
        let c_t = if self.cache.block_scaled() { "qf_u8".to_string() } else { trait_of(self.cache.storage()) };
        let (rope, rope_adjacent, rope_doc, inv_freq) = match &self.rope {
            None => ("0", "false", String::new(), "0".to_string()),
            Some(r) => {
                let (doc, adjacent) = pairs_text(r.pairs);
                let adjacent = if adjacent == "1" { "true" } else { "false" };
                ("1", adjacent, doc.to_string(), frequency_table(&r.op(self.heads), self.head_dim as usize))
            }
        };
        with_prelude(vec![
            ("q_t", trait_of(self.q)),
            ("o_t", trait_of(self.out)),
            ("out_codes", out_codes_define(self.out_codes).to_string()),
            ("c_t", c_t),
            ("nvfp4", u8::from(self.cache.block_scaled()).to_string()),
            ("heads", self.heads.to_string()),
            ("kv_heads", self.kv_heads.to_string()),
            ("group", self.group().to_string()),
            ("head_dim", self.head_dim.to_string()),
            ("page_size", self.paged.page_size.to_string()),
            ("tile_keys", self.tile_keys().to_string()),
            ("max_pages", self.paged.max_pages.to_string()),
            ("codes", codes.to_string()),
            ("via", via),
            ("cache_doc", cache_doc),
            ("scale_bits", format!("{:#010x}", self.scale.to_bits())),
            ("paged_load", PAGED_LOAD.to_string()),
            ("inflight", LOADS_IN_FLIGHT.to_string()),
            ("rope", rope.to_string()),
            ("rope_adjacent", rope_adjacent.to_string()),
            ("rope_doc", rope_doc),
            ("inv_freq", inv_freq),
        ])
    }

    /// Renders the kernel for `batch` sequences of `seq` query tokens.
    pub fn kernel(&self, batch: DimExpr, seq: DimExpr) -> Result<KernelDef, String> {
        self.validate()?;
        let qt = self.q_tokens();
        let warp_keys = self.warp_keys();
        let threads = if warp_keys { DECODE_ATTN_THREADS } else { ATTN_THREADS };
        // The scratch is written and read by several CTAs: no __restrict__.
        let out_param = if self.splits > 0 { "OUT_::T* __restrict__ out, float* scratch" } else { "OUT_::T* __restrict__ out" };
        let mut values = self.common_values();
        values.extend([
            ("q_tokens", qt.to_string()),
            ("threads", threads.to_string()),
            ("warp_keys", u8::from(warp_keys).to_string()),
            ("splits", self.splits.to_string()),
            ("out_param", out_param.to_string()),
            ("counter_words", (self.split_counter_bytes() / 4).to_string()),
            ("split_merge", SPLIT_MERGE.to_string()),
            ("append_defs", self.append_defs()?),
        ]);
        let source = PAGED_ATTENTION.render(&values).map_err(|e| e.to_string())?;
        let x = if self.splits > 0 { DimExpr::Const(u64::from(self.splits)) } else { seq.ceil_div(u64::from(qt)) };
        let grid = [x, DimExpr::Const(u64::from(self.kv_heads)), batch];
        Ok(finish_kernel("paged_attention", source, grid, [threads, 1, 1], self.smem_bytes(), params(&self.params())))
    }

    /// `{{append_defs}}` of paged_attention.cu: `QF_APPEND` and, for the fused append, the pack
    /// type `P` and count `QF_R` of a cache row, the key rotation's definitions and kv_row.cuh.
    fn append_defs(&self) -> Result<String, String> {
        let Some(append) = self.append else { return Ok("#define QF_APPEND 0\n".into()) };
        let storage = self.cache.storage();
        let (pb, packs) = row_packs(storage, self.head_dim)?;
        let keys = match &append.key_rope {
            None => "#define QF_KEY_ROPE 0\n".to_string(),
            Some(kr) => key_rope_defines(storage, kr, self.head_dim)?,
        };
        let pack_t = super::elementwise::raw_type(pb);
        Ok(format!("#define QF_APPEND 1\ntypedef {pack_t} P;\n#define QF_R {packs}\n{keys}{KV_ROW}"))
    }

    /// Why the tensor-core prefill (`templates/paged_prefill.cu`) cannot serve this spec, or
    /// `Ok` when it can. It takes the prefill variant (not decode, no split) of a valid spec
    /// whose q is f16 or bf16 (the MMA operand dtype; an f32 q keeps the CUDA-core kernel, whose
    /// f32 products it would round) and whose cache values that dtype holds exactly: a cache of
    /// q's own dtype, or codes / NVFP4 read `via` q's dtype (a cache of the other 16-bit dtype,
    /// or read via f32, would be rounded on the way into the tile); head sizes that are whole
    /// k16 steps up to [`PREFILL_MAX_HEAD_DIM`] (D = 64, 128: SmolLM2, Llama); groups of at
    /// most [`PREFILL_ROWS`] heads; tiles ([`Self::tile_keys`]) of whole k16 steps (pages of
    /// 16, 32, 64, 128 keys; not e.g. 24). Every other spec keeps paged_attention.cu's prefill
    /// variant.
    pub fn tensor_core_support(&self) -> Result<(), String> {
        self.validate()?;
        if self.decode || self.splits > 0 {
            return Err("the decode variants stay on paged_attention".into());
        }
        if !matches!(self.q, DType::F16 | DType::BF16) {
            return Err(format!("q is {}; the tensor-core prefill takes f16 or bf16 operands", self.q));
        }
        let exact = match self.cache {
            CacheRead::Float(d) => d == self.q,
            CacheRead::Codes { via, .. } | CacheRead::Nvfp4 { via } => via == self.q,
        };
        if !exact {
            return Err(format!("a cache read as {:?} is not exact in q's {}", self.cache, self.q));
        }
        if self.head_dim % 16 != 0 || self.head_dim > PREFILL_MAX_HEAD_DIM {
            return Err(format!("head size {}: the tensor-core prefill takes multiples of 16 up to {PREFILL_MAX_HEAD_DIM}", self.head_dim));
        }
        if self.group() > PREFILL_ROWS {
            return Err(format!("{} query heads per KV head exceed the {PREFILL_ROWS} rows of a CTA", self.group()));
        }
        if self.tile_keys() % 16 != 0 {
            return Err(format!("{}-key tiles (pages of {}) are not whole k16 steps", self.tile_keys(), self.paged.page_size));
        }
        if self.prefill_smem_bytes() > MAX_SMEM {
            return Err(format!("{} bytes of shared memory exceed {MAX_SMEM}", self.prefill_smem_bytes()));
        }
        Ok(())
    }

    /// Query tokens per paged_prefill CTA: as many whole groups as fit [`PREFILL_ROWS`].
    pub fn prefill_q_tokens(&self) -> u32 {
        (PREFILL_ROWS / self.group().max(1)).max(1)
    }

    /// Dynamic shared memory of paged_prefill: Q `[PREFILL_ROWS][D+8]`, K and V `[TK][D+8]`, in
    /// q's 16-bit dtype.
    pub fn prefill_smem_bytes(&self) -> u32 {
        2 * (PREFILL_ROWS + 2 * self.tile_keys()) * (self.head_dim + 8)
    }

    /// Renders the tensor-core prefill (`templates/paged_prefill.cu`) for `batch` sequences of
    /// `seq` query tokens: the parameters of [`Self::params`] (no split), grid
    /// `(ceil_div(S, QT), KV, B)` with QT = [`Self::prefill_q_tokens`], block
    /// [`PREFILL_THREADS`], dynamic shared memory [`Self::prefill_smem_bytes`]. Errors with
    /// [`Self::tensor_core_support`]'s reason.
    pub fn prefill_kernel(&self, batch: DimExpr, seq: DimExpr) -> Result<KernelDef, String> {
        self.tensor_core_support()?;
        let qt = self.prefill_q_tokens();
        let mut values = self.common_values();
        values.extend([
            ("q_tokens", qt.to_string()),
            ("threads", PREFILL_THREADS.to_string()),
            ("bf16", u8::from(self.q == DType::BF16).to_string()),
            ("mma_doc", self.q.to_string()),
            ("raw_tile", u8::from(self.cache == CacheRead::Float(self.q)).to_string()),
        ]);
        let source = PAGED_PREFILL.render(&values).map_err(|e| e.to_string())?;
        let grid = [seq.ceil_div(u64::from(qt)), DimExpr::Const(u64::from(self.kv_heads)), batch];
        Ok(finish_kernel("paged_prefill", source, grid, [PREFILL_THREADS, 1, 1], self.prefill_smem_bytes(), params(&self.params())))
    }
}

/// `QF_OUT_CODES` of the attention templates (ops.cuh `qf_out`): 0 float, 1 E4M3, 2 I8 codes.
fn out_codes_define(codes: Option<DType>) -> u8 {
    match codes {
        None => 0,
        Some(DType::F8E4M3) => 1,
        Some(_) => 2,
    }
}

/// Threads of a split_combine CTA for head size `head_dim`: one per column, in whole warps, at
/// most 256.
pub fn combine_threads(head_dim: u32) -> u32 {
    head_dim.div_ceil(32).clamp(1, 8) * 32
}

/// The split_combine kernel merging the live ones of `splits` partial records per (head,
/// sequence) of `heads` query heads of `head_dim` into o of dtype `out` (f16, bf16, f32), over the
/// pages `paged` (which set the split attention's tile and its longest context, so the live count
/// is the attention's): signature `(const float* partials, const long long* cache_len, O* out)`,
/// grid `(H, B)` over `batch`, block [`combine_threads`].
pub fn split_combine_kernel(
    heads: u32,
    head_dim: u32,
    splits: u32,
    out: DType,
    paged: PagedKv,
    batch: DimExpr,
) -> Result<KernelDef, String> {
    if !matches!(out, DType::F16 | DType::BF16 | DType::F32) {
        return Err(format!("o is {out}; split_combine writes f16, bf16 or f32"));
    }
    if !(1..=MAX_SPLITS).contains(&splits) || heads == 0 || head_dim == 0 {
        return Err(format!(
            "split_combine of {splits} ranges over {heads} heads of {head_dim}: needs 1..={MAX_SPLITS} ranges and nonzero sizes"
        ));
    }
    let threads = combine_threads(head_dim);
    let values = with_prelude(vec![
        ("o_t", dtype_trait(out).expect("float dtype").to_string()),
        ("heads", heads.to_string()),
        ("head_dim", head_dim.to_string()),
        ("splits", splits.to_string()),
        ("threads", threads.to_string()),
        ("tile_keys", split_tile_keys(paged).to_string()),
        ("max_keys", (u64::from(paged.max_pages) * u64::from(paged.page_size)).to_string()),
        ("split_merge", SPLIT_MERGE.to_string()),
    ]);
    let source = SPLIT_COMBINE.render(&values).map_err(|e| e.to_string())?;
    let grid = [DimExpr::Const(u64::from(heads)), batch, 1.into()];
    Ok(finish_kernel("split_combine", source, grid, [threads, 1, 1], 0, params(&pointers(&["partials", "cache_len", "out"]))))
}

/// How kv_row.cuh moves a cache row of `head_dim` elements of `storage`: R packs of up to 16
/// bytes, as `(pack bytes, R)`.
fn row_packs(storage: DType, head_dim: u32) -> Result<(u64, u64), String> {
    let row = row_bytes(storage, head_dim)?;
    let pb = pack_bytes(row, elem_bytes(storage).unwrap_or(1));
    Ok((pb, row / pb))
}

/// Bytes of one cache row of `head_dim` elements of `storage` (`f4e2m1`: two per byte, D even).
fn row_bytes(storage: DType, head_dim: u32) -> Result<u64, String> {
    let d = u64::from(head_dim);
    match elem_bytes(storage) {
        Some(eb) => Ok(d * eb),
        None if storage == DType::F4E2M1 && d % 2 == 0 => Ok(d / 2),
        None => Err(format!("a KV cache of {storage} with head size {head_dim} has no kernel (f4e2m1 needs an even D)")),
    }
}

/// The kv_append kernel for a cache of `storage` with `kv_heads` heads of `head_dim`: reads this
/// step's token-major `k, v [B, S, KV, D]` and writes the HND page pools `[pages, KV, PAGE, D]`;
/// grid `(ceil_div(B·S·KV·max(R, RS), 256), Y, 1)` over `batch` and `seq`. For `f4e2m1` (NVFP4)
/// it also copies the E4M3 block scales `k_s, v_s [B, S, KV, D/16]` into their pools (`Y` = 4,
/// parameters `k_s, v_s, ks_pool, vs_pool` after `S`); otherwise `Y` = 2.
pub fn kv_append_kernel(
    storage: DType,
    kv_heads: u32,
    head_dim: u32,
    paged: PagedKv,
    batch: DimExpr,
    seq: DimExpr,
) -> Result<KernelDef, String> {
    kv_append_rope_kernel(storage, kv_heads, head_dim, paged, [batch, seq], None)
}

/// How kv_append rotates this step's keys (`fuse-rope`'s `rope(keys)`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeyRope {
    /// The rotation.
    pub rope: AttnRope,
    /// Dtype of the unrotated keys (f16, bf16, f32); the rotated keys round to it.
    pub keys: DType,
}

/// [`kv_append_kernel`], and with `rope` the keys arrive unrotated in `rope.keys`' dtype: each key
/// element is rotated at its token's position and rounded to that dtype, then (a code cache)
/// quantized as `cast(x / k_scale)` to the storage, before it is written to the pool and to the
/// extra parameter `k_out` (the op's second result, token-major like k). `k_out` and `float
/// k_scale` (1 and unused for a float cache) follow `cache_len`.
pub fn kv_append_rope_kernel(
    storage: DType,
    kv_heads: u32,
    head_dim: u32,
    paged: PagedKv,
    [batch, seq]: [DimExpr; 2],
    rope: Option<&KeyRope>,
) -> Result<KernelDef, String> {
    let (pb, packs) = row_packs(storage, head_dim)?;
    let nvfp4 = storage == DType::F4E2M1;
    let scale_row = u64::from(head_dim).div_ceil(u64::from(crate::ir::KV_NVFP4_BLOCK));
    let spb = pack_bytes(scale_row, 1);
    let scale_packs = if nvfp4 { scale_row / spb } else { 0 };
    let values = with_prelude(vec![
        ("pack_t", super::elementwise::raw_type(pb).to_string()),
        ("pack_bytes", pb.to_string()),
        ("kv_heads", kv_heads.to_string()),
        ("packs", packs.to_string()),
        ("page_size", paged.page_size.to_string()),
        ("max_pages", paged.max_pages.to_string()),
        ("threads", APPEND_THREADS.to_string()),
        ("scales", u8::from(nvfp4).to_string()),
        ("scale_pack_t", super::elementwise::raw_type(spb).to_string()),
        ("scale_packs", scale_packs.to_string()),
        ("kv_row", KV_ROW.to_string()),
    ]);
    // kv_append needs ops.cuh only to rotate keys: it goes into the rope definitions.
    let ops = values.iter().find(|(k, _)| *k == "ops").map(|(_, v)| v.clone()).unwrap_or_default();
    let mut values: Vec<(&str, String)> = values.into_iter().filter(|(k, _)| *k != "ops").collect();
    let (defs, param) = match rope {
        None => ("#define QF_KEY_ROPE 0\n".to_string(), String::new()),
        Some(r) => (append_rope_defs(&ops, storage, r, kv_heads, head_dim)?, "P* __restrict__ k_out, float k_scale, ".to_string()),
    };
    values.extend([("rope_defs", defs), ("rope_param", param)]);
    let source = KV_APPEND.render(&values).map_err(|e| e.to_string())?;
    let total = DimExpr::product([batch, seq, DimExpr::Const(u64::from(kv_heads)), DimExpr::Const(packs.max(scale_packs))]);
    let grid = [total.ceil_div(u64::from(APPEND_THREADS)), if nvfp4 { 4 } else { 2 }.into(), 1.into()];
    let mut list = pointers(&["k", "v", "k_pool", "v_pool", "page_table", "cache_len"]);
    if rope.is_some() {
        list.extend([("k_out", ParamType::Ptr), ("k_scale", ParamType::F32)]);
    }
    list.extend([("B", ParamType::I64), ("S", ParamType::I64)]);
    if nvfp4 {
        list.extend(pointers(&["k_s", "v_s", "ks_pool", "vs_pool"]));
    }
    Ok(finish_kernel("kv_append", source, grid, [APPEND_THREADS, 1, 1], 0, params(&list)))
}

/// The kv_append definitions that rotate keys (kv_row.cuh's `qf_rotated_keys`): ops.cuh,
/// [`key_rope_defines`], the cache dtype trait, the head size, the pairing and the frequency
/// table of `rope {heads=KV}` (paged_attention has the last four for its query rope already).
fn append_rope_defs(ops: &str, storage: DType, r: &KeyRope, kv_heads: u32, head_dim: u32) -> Result<String, String> {
    let keys = key_rope_defines(storage, r, head_dim)?;
    let ct = dtype_trait(storage).ok_or("no trait for the cache dtype")?;
    let (doc, adjacent) = pairs_text(r.rope.pairs);
    let adjacent = if adjacent == "1" { "true" } else { "false" };
    let table = frequency_table(&r.rope.op(kv_heads), head_dim as usize);
    Ok(format!(
        "{ops}
// RoPE on append (fuse-rope): k arrives unrotated; kv_row.cuh's qf_rotated_keys rotates each key
// element at its token's position as the `rope` op it replaces ({doc}).
{keys}typedef {ct} CT_;
#define QF_D {head_dim}
#define QF_ROPE_ADJ {adjacent}
__constant__ double qf_inv_freq[QF_D / 2] = {{ {table} }};
"
    ))
}

/// The definitions kv_row.cuh's key rotation needs beyond the rope's own (`CT_`, `QF_D`,
/// `QF_ROPE_ADJ`, `qf_inv_freq`, ops.cuh): `QF_KEY_ROPE 1`, the unrotated keys' trait `KT_` and
/// `QF_KEY_CODES` (1 for a code cache: quantize with `k_scale`). Errors where the append cannot
/// rotate: an NVFP4 cache, a float cache of another dtype than the keys', keys that are not
/// floats of an even head size.
fn key_rope_defines(storage: DType, r: &KeyRope, head_dim: u32) -> Result<String, String> {
    let codes = match storage {
        DType::F8E4M3 | DType::F8E5M2 | DType::I8 => 1,
        DType::F4E2M1 => {
            return Err("kv_append does not rotate keys into an NVFP4 cache (its codes and block scales arrive computed)".into())
        }
        s if s == r.keys => 0,
        s => return Err(format!("kv_append rotates {} keys into a cache of their own dtype or of codes, not {s}", r.keys)),
    };
    if !r.keys.is_wide_float() || head_dim % 2 != 0 {
        return Err(format!("kv_append rotates float keys of an even head size, not {} of {head_dim}", r.keys));
    }
    let kt = dtype_trait(r.keys).expect("float trait");
    Ok(format!("#define QF_KEY_ROPE 1\n#define QF_KEY_CODES {codes}\ntypedef {kt} KT_;\n"))
}

/// Pointer parameters named `names`, in order.
fn pointers(names: &[&'static str]) -> Vec<(&'static str, ParamType)> {
    names.iter().map(|&n| (n, ParamType::Ptr)).collect()
}

/// The state slot whose input is `v` (an `input` node), if any.
fn state_slot_of_input(cx: &LowerCx, v: ValueId) -> Option<usize> {
    let Op::Input { name } = &cx.graph.producer(v).op else { return None };
    cx.graph.state.iter().position(|s| s.input == *name)
}

/// True if `v` is the graph output named `update`.
fn is_update(cx: &LowerCx, v: ValueId, update: &str) -> bool {
    cx.graph.outputs.iter().any(|(name, o)| name == update && *o == v)
}

/// Checks the token-major (NHD) K/V operands of a `causal_attention` over `q [B, S, H·D]`:
/// `k, v [B, S, KV, D]` with q's B and S, and `past_k, past_v [B, P, KV, D]` (P the state's
/// symbol). kv_append copies `k, v` rows as they lie, so any other layout would scatter wrongly.
fn check_kv_layout(cx: &LowerCx, node: NodeId, a: &CausalAttention, kv: [ValueId; 4], head_dim: u32) -> Result<(), LowerError> {
    let g = cx.graph;
    let qs = g.shape(g.nodes[node].inputs[0]);
    let (heads, d) = (crate::ir::Dim::Fixed(u64::from(a.kv_heads)), crate::ir::Dim::Fixed(u64::from(head_dim)));
    let [k, v, past_k, past_v] = kv;
    let step = [qs[0], qs[1], heads, d];
    if g.shape(k).as_slice() != &step[..] || g.shape(v).as_slice() != &step[..] {
        return Err(cx.error(node, "k and v must be token-major [B, S, KV, D] with q's B and S"));
    }
    let ps = g.shape(past_k);
    let past = ps.get(1).map(|&p| [qs[0], p, heads, d]);
    if past.is_none_or(|want| ps.as_slice() != &want[..] || g.shape(past_v).as_slice() != &want[..]) {
        return Err(cx.error(node, "past_k and past_v must be token-major [B, P, KV, D] with q's B"));
    }
    Ok(())
}

/// How a `causal_attention` whose cache tensors are `storage` reads them, and the launch's
/// `(k_scale, v_scale)` (1 for float caches, where the kernel ignores them).
fn cache_read(a: &CausalAttention, storage: DType) -> Result<(CacheRead, f32, f32), String> {
    match a.cache {
        None if storage.is_wide_float() => Ok((CacheRead::Float(storage), 1.0, 1.0)),
        None => Err(format!("a {storage} KV cache must be read as codes (the op carries no codes(...); run fuse-kv-cache)")),
        Some(c) if c.block > 0 => Ok((CacheRead::Nvfp4 { via: c.via }, c.k_scale, c.v_scale)),
        Some(c) => Ok((CacheRead::Codes { storage, via: c.via }, c.k_scale, c.v_scale)),
    }
}

/// The state slots of the cache operands `[(past, now); 2]`: each `past` a state input, each `now`
/// its slot's update (`what` names them in errors).
fn cache_slots(cx: &LowerCx, node: NodeId, pairs: [(&str, ValueId, ValueId); 2]) -> Result<[u32; 2], LowerError> {
    let mut slots = [0u32; 2];
    for (i, (what, past, now)) in pairs.into_iter().enumerate() {
        let slot = state_slot_of_input(cx, past).ok_or_else(|| {
            cx.error(node, format!("{what} (%{}) is not a state input: the paged cache holds only graph state", past.index()))
        })?;
        let update = &cx.graph.state[slot].update;
        if !is_update(cx, now, update) {
            return Err(cx.error(node, format!("%{} is not the state update `{update}` of {what}'s slot", now.index())));
        }
        slots[i] = u32::try_from(slot).map_err(|_| cx.error(node, "too many state slots"))?;
    }
    Ok(slots)
}

/// An NVFP4 cache's block scales: the state slots of K's and V's scale pools, and this step's
/// `k_s, v_s` values.
type BlockScales = ([u32; 2], [ValueId; 2]);

/// The block-scale pools of an NVFP4 cache: operands 6..10 `k_s, v_s, past_k_s, past_v_s`,
/// checked as `f8e4m3 [.., KV, D/16]` state updates and inputs; `None` without block scales.
fn block_scale_slots(cx: &LowerCx, node: NodeId, a: &CausalAttention, head_dim: u32) -> Result<Option<BlockScales>, LowerError> {
    if !a.block_scaled() {
        return Ok(None);
    }
    let ins = &cx.graph.nodes[node].inputs;
    let [ks, vs, pks, pvs] = ins[6..] else { return Err(cx.error(node, format!("expected 10 operands, got {}", ins.len()))) };
    let blocks = u64::from(head_dim).div_ceil(u64::from(crate::ir::KV_NVFP4_BLOCK));
    for v in [ks, vs, pks, pvs] {
        let ty = cx.graph.ty(v);
        if ty.dtype != DType::F8E4M3 || crate::ir::kv_state_heads(ty) != Some((u64::from(a.kv_heads), blocks)) {
            return Err(cx.error(node, format!("block scales %{} must be f8e4m3 [.., {}, {blocks}]", v.index(), a.kv_heads)));
        }
    }
    let slots = cache_slots(cx, node, [("past_k_s", pks, ks), ("past_v_s", pvs, vs)])?;
    Ok(Some((slots, [ks, vs])))
}

fn causal_attention(cx: &LowerCx, node: NodeId, a: &CausalAttention) -> Result<Lowered, LowerError> {
    let Some(paged) = cx.paged else {
        return Err(cx.error(node, "no paged KV cache configured (causal_attention runs only in decoder plans)"));
    };
    let n = &cx.graph.nodes[node];
    let err = |reason: String| cx.error(node, reason);
    if n.inputs.len() != a.arity() {
        return Err(err(format!("expected {} operands, got {}", a.arity(), n.inputs.len())));
    }
    let [q, k, v, past_k, past_v, len] = n.inputs[..6] else { unreachable!("arity checked") };
    let o = n.outputs[0];
    // With rope(keys) the op's second result is this step's (rotated) keys, the cache update.
    let keys_rotated = a.rope.is_some_and(|r| r.keys);
    if keys_rotated && a.block_scaled() {
        return Err(
            err("rope(keys) over an NVFP4 cache: kv_append copies precomputed codes and block scales, it does not quantize".into()),
        );
    }
    let k_update = if keys_rotated { *n.outputs.get(1).ok_or_else(|| err("rope(keys) without a second result".into()))? } else { k };
    // The cache operands: state inputs, and this step's values their updates.
    let slots = cache_slots(cx, node, [("past_k", past_k, k_update), ("past_v", past_v, v)])?;
    check_cache_len(cx, node, len)?;
    let g = cx.graph;
    let storage = g.ty(past_k).dtype;
    for (what, val) in [("k", k_update), ("v", v), ("past_v", past_v)] {
        if g.ty(val).dtype != storage {
            return Err(err(format!("{what} is {} but past_k is {storage}", g.ty(val).dtype)));
        }
    }
    let qs = g.shape(q);
    if qs.len() != 3 {
        return Err(err(format!("q must be [B, S, H·D], got rank {}", qs.len())));
    }
    let width = cx.fixed_last(q).ok_or_else(|| err("the last extent H·D of q must be fixed".into()))?;
    if a.heads == 0 || width % u64::from(a.heads) != 0 {
        return Err(err(format!("q's last extent {width} is not a multiple of {} heads", a.heads)));
    }
    let head_dim = u32::try_from(width / u64::from(a.heads)).map_err(|_| err("head size too large".into()))?;
    check_kv_layout(cx, node, a, [k, v, past_k, past_v], head_dim)?;
    let (cache, k_scale, v_scale) = cache_read(a, storage).map_err(&err)?;
    let block_scales = block_scale_slots(cx, node, a, head_dim)?;
    let spec = PagedAttentionSpec {
        heads: a.heads,
        kv_heads: a.kv_heads,
        head_dim,
        q: g.ty(q).dtype,
        // With a fused output quantize, o is rounded to q's dtype (the unfused o's) first.
        out: if a.output.is_some() { g.ty(q).dtype } else { g.ty(o).dtype },
        out_codes: a.output.map(|out| out.storage),
        cache,
        scale: a.scale,
        paged,
        decode: false,
        splits: 0,
        max_batch: 0,
        rope: a.rope.map(|r| AttnRope { keys: false, ..r }),
        append: None,
        warp_decode: cx.options.warp_decode,
    };
    if g.shape(o) != qs || a.output.is_some_and(|out| g.ty(o).dtype != out.storage) {
        return Err(err("the result must have q's shape (and the output quantize's codes)".into()));
    }
    let dims = cx.dims(q);
    let (batch, seq) = (dims[0].clone(), dims[1].clone());
    let max_batch = cx.max_shape(q)[0];
    if max_batch > 65535 {
        return Err(err("batch exceeds the grid limit 65535".into()));
    }
    // The prefill attention: on tensor cores where paged_prefill supports the spec
    // ([`PagedAttentionSpec::tensor_core_support`] names why not), else paged_attention's
    // CUDA-core prefill variant.
    let prefill = match spec.tensor_core_support() {
        Ok(()) => spec.prefill_kernel(batch.clone(), seq.clone()),
        Err(_) => spec.kernel(batch.clone(), seq.clone()),
    }
    .map_err(&err)?;
    let key_rope = a.rope.filter(|r| r.keys).map(|rope| KeyRope { rope, keys: g.ty(k).dtype });
    let append =
        kv_append_rope_kernel(storage, a.kv_heads, head_dim, paged, [batch.clone(), seq.clone()], key_rope.as_ref()).map_err(&err)?;
    let [k_slot, v_slot] = slots;
    let mut append_args = vec![Arg::Value(k), Arg::Value(v), Arg::KvPool(k_slot), Arg::KvPool(v_slot), Arg::PageTable, Arg::Value(len)];
    if key_rope.is_some() {
        append_args.extend([Arg::Value(k_update), Arg::Scalar(Scalar::F32(k_scale))]);
    }
    append_args.extend([Arg::Scalar(Scalar::Dim(batch.clone())), Arg::Scalar(Scalar::Dim(seq.clone()))]);
    if let Some(([ks_slot, vs_slot], [ks, vs])) = block_scales {
        append_args.extend([Arg::Value(ks), Arg::Value(vs), Arg::KvPool(ks_slot), Arg::KvPool(vs_slot)]);
    }
    // The attention's arguments, with the split scratch after o when it splits and the NVFP4
    // block-scale pools last (then, at decode, the fused append's; the output quantize's scale
    // always comes last: `out_scale`).
    let out_scale = a.output.map(|out| Arg::Scalar(Scalar::F32(out.scale)));
    let attention_args = |scratch: Option<Arg>| {
        let mut args = vec![Arg::Value(q), Arg::KvPool(k_slot), Arg::KvPool(v_slot), Arg::PageTable, Arg::Value(len), Arg::Value(o)];
        args.extend(scratch);
        args.extend([Arg::Scalar(Scalar::Dim(seq.clone())), Arg::Scalar(Scalar::F32(k_scale)), Arg::Scalar(Scalar::F32(v_scale))]);
        if let Some(([ks_slot, vs_slot], _)) = block_scales {
            args.extend([Arg::KvPool(ks_slot), Arg::KvPool(vs_slot)]);
        }
        args
    };
    // Exactly one of the decode path and the prefill attention runs for a given S. At decode the
    // attention appends the step's token itself (float and per-tensor code caches), so kv_append
    // runs for prefill only; an NVFP4 cache keeps it at every S.
    let (one, more) = (Guard::RowsAtMost { rows: seq.clone(), max: 1 }, Guard::RowsAbove { rows: seq.clone(), min: 1 });
    let fused = (!a.block_scaled()).then_some(DecodeAppend { key_rope });
    let mut launches = vec![Launch { kernel: append, args: append_args, when: fused.map(|_| more.clone()) }];
    let splits = decode_splits(a.kv_heads, paged).min(cx.options.decode_splits.unwrap_or(u32::MAX).max(1));
    let decode = PagedAttentionSpec { decode: true, append: fused, ..spec };
    let (kernel, mut args) = if splits > 1 {
        let split = PagedAttentionSpec { splits, max_batch: max_batch as u32, ..decode };
        let scratch = Arg::SplitScratch { bytes: split.split_scratch_bytes(), counters: split.split_counter_bytes() };
        (split.kernel(batch, seq.clone()), attention_args(Some(scratch)))
    } else {
        (decode.kernel(batch, seq.clone()), attention_args(None))
    };
    // The fused append's operands follow the attention's: this step's k and v, and the rotated
    // keys' result.
    if fused.is_some() {
        args.extend([Arg::Value(k), Arg::Value(v)]);
        if key_rope.is_some() {
            args.push(Arg::Value(k_update));
        }
    }
    args.extend(out_scale.clone());
    launches.push(Launch { kernel: kernel.map_err(&err)?, args, when: Some(one) });
    let mut prefill_args = attention_args(None);
    prefill_args.extend(out_scale);
    launches.push(Launch { kernel: prefill, args: prefill_args, when: Some(more) });
    Ok(Lowered::Launches(launches))
}
