//! The one transformer-block builder every Llama-family decoder shares.
//!
//! Graph of one step (prefill or decode) over `B` sequences of `S` new tokens each:
//!
//! ```text
//! inputs   input_ids i64[B,S], cache_len i64[B], past.{k,v}.L T[B,P,KV,D]  (T: the cache dtype)
//! embed    h = gather(embed_tokens, input_ids)
//! block L  a = rmsnorm(h) ; q,k,v = a·Wᵀ (+ bias) ; q,k = rope(q,k, cache_len)
//!          k,v → [B,S,KV,D] (a reshape: token-major, no copy) → (quantize) → present.{k,v}.L
//!          → (dequantize)
//!          h = h + o_proj(causal_attention(q, k, v, past_k, past_v, cache_len))
//!          h = h + down(silu(gate(rmsnorm(h))) · up(rmsnorm(h)))
//! head     logits f32[B,S,V] = rmsnorm(h) · lm_headᵀ (the embedding when tied);
//!          with LogitRows::Last, h = last_token(h) first and logits are [B,1,V]
//! state    past.k.L append present.k.L axis=1 (and V)
//! ```
//!
//! An NVFP4 cache ([`KvFormat::Nvfp4`]) quantizes `k · (1/global)` with dynamic E4M3 block
//! scales: its codes and scales are two state slots (`past.k.L`, `past.k_scale.L`), read back as
//! `dequantize(codes, scales) · global`.
//!
//! Nodes carry the checkpoint's module names (`model.layers.3.self_attn.q_proj`, `lm_head`) so
//! recipes, exclusions and reports address them as they do for encoders.

use super::config::DecoderConfig;
use super::kv::KvFormat;
use super::LogitRows;
use crate::import::{ImportError, WeightStore};
use crate::ir::{BinaryOp, Builder, CausalAttention, DType, Dim, Graph, Op, Rope, StateSlot, TensorType, UnaryOp, ValueId, KV_TOKEN_AXIS};

/// Graph-wide values every block reads.
struct StepInputs {
    cache_len: ValueId,
    batch: Dim,
    seq: Dim,
    past: Dim,
}

pub(super) struct BlockBuilder<'a, 'g> {
    pub b: Builder<'g>,
    pub cfg: &'a DecoderConfig,
    pub weights: &'a WeightStore,
    pub kv: &'a KvFormat,
    pub logits: LogitRows,
}

impl BlockBuilder<'_, '_> {
    /// Builds the whole step graph into `self.b`.
    pub fn graph_body(&mut self, batch: Dim, seq: Dim, past: Dim) -> Result<Vec<StateSlot>, ImportError> {
        let ids = self.ctx("inputs", |b| b.input("input_ids", TensorType::new(DType::I64, [batch, seq])))?;
        let cache_len = self.ctx("inputs", |b| b.input("cache_len", TensorType::new(DType::I64, [batch])))?;
        let step = StepInputs { cache_len, batch, seq, past };
        let (v, h) = (self.cfg.vocab_size, self.cfg.hidden_size);
        let table = self.weight_in("model.embed_tokens", "model.embed_tokens.weight", &[v, h])?;
        let mut x = self.scoped("model.embed_tokens", |b| b.add1(Op::Gather, &[table, ids], None))?;
        let mut state = vec![];
        for layer in 0..self.cfg.num_layers as usize {
            x = self.block(layer, x, &step, &mut state)?;
        }
        let x = match self.logits {
            LogitRows::All => x,
            LogitRows::Last => self.scoped("model.norm", |b| b.add1(Op::LastToken, &[x], None))?,
        };
        let x = self.rms_norm("model.norm", x)?;
        let head = if self.cfg.tie_word_embeddings { table } else { self.weight_in("lm_head", "lm_head.weight", &[v, h])? };
        let logits = self.scoped("lm_head", |b| b.matmul(x, head, false, true))?;
        self.b.graph.outputs.insert(0, ("logits".into(), logits));
        Ok(state)
    }

    fn block(&mut self, layer: usize, x: ValueId, step: &StepInputs, state: &mut Vec<StateSlot>) -> Result<ValueId, ImportError> {
        let p = format!("model.layers.{layer}");
        let a = self.rms_norm(&format!("{p}.input_layernorm"), x)?;
        let attn = self.attention(layer, &format!("{p}.self_attn"), a, step, state)?;
        let x = self.scoped(&format!("{p}.self_attn"), |b| b.binary(BinaryOp::Add, x, attn))?;
        let a = self.rms_norm(&format!("{p}.post_attention_layernorm"), x)?;
        let mlp = self.mlp(&format!("{p}.mlp"), a)?;
        self.scoped(&format!("{p}.mlp"), |b| b.binary(BinaryOp::Add, x, mlp))
    }

    fn attention(
        &mut self,
        layer: usize,
        m: &str,
        x: ValueId,
        step: &StepInputs,
        state: &mut Vec<StateSlot>,
    ) -> Result<ValueId, ImportError> {
        let c = self.cfg;
        let (h, d, heads, kv_heads) = (c.hidden_size, c.head_dim, c.num_heads, c.num_kv_heads);
        let bias = c.qkv_bias;
        let q = self.linear(&format!("{m}.q_proj"), x, heads * d, h, bias)?;
        let k = self.linear(&format!("{m}.k_proj"), x, kv_heads * d, h, bias)?;
        let v = self.linear(&format!("{m}.v_proj"), x, kv_heads * d, h, bias)?;
        let q = self.rope(&format!("{m}.rotary_q"), q, heads, step)?;
        let k = self.rope(&format!("{m}.rotary_k"), k, kv_heads, step)?;
        let k = self.cache_entry(layer, 0, m, k, step, state)?;
        let v = self.cache_entry(layer, 1, m, v, step, state)?;
        let (past_k, past_v) = (k.1, v.1);
        let op = Op::CausalAttention(CausalAttention {
            heads: heads as u32,
            kv_heads: kv_heads as u32,
            scale: (1.0 / (d as f64).sqrt()) as f32,
            cache: None,
            rope: None,
            output: None,
        });
        let o = self.scoped(m, |b| b.add1(op, &[q, k.0, v.0, past_k, past_v, step.cache_len], None))?;
        self.linear(&format!("{m}.o_proj"), o, h, heads * d, false)
    }

    /// This step's K or V as the cache stores it, and the cache so far, both read back in f32:
    /// `[B,S,KV·D] → reshape [B,S,KV,D] → (quantize →) present.{k,v}.L`, and `past.{k,v}.L
    /// [B,P,KV,D]`. Token-major (NHD) throughout, so the step's K/V need no transpose: on the GPU
    /// the reshape is a view and `kv_append` reads the projection's rows as they are.
    fn cache_entry(
        &mut self,
        layer: usize,
        kind: usize,
        m: &str,
        x: ValueId,
        step: &StepInputs,
        state: &mut Vec<StateSlot>,
    ) -> Result<(ValueId, ValueId), ImportError> {
        if let KvFormat::Nvfp4 { globals } = self.kv {
            let global = if kind == 0 { globals[layer].0 } else { globals[layer].1 };
            return self.nvfp4_cache_entry(layer, kind, m, x, step, state, global);
        }
        let (kv_heads, d) = (Dim::Fixed(self.cfg.num_kv_heads), Dim::Fixed(self.cfg.head_dim));
        let which = ["k", "v"][kind];
        let storage = self.kv.storage();
        let spec = self.kv.spec(layer, kind);
        let (input, update) = (super::kv::state_name("past", layer, kind, false), super::kv::state_name("present", layer, kind, false));
        let past_ty = TensorType::new(storage, [step.batch, step.past, kv_heads, d]);
        let split = TensorType::new(DType::F32, [step.batch, step.seq, kv_heads, d]);
        let module = format!("{m}.{which}_cache");
        let (step_f32, present, past_f32) = self.scoped(&module, |b| {
            let past = b.input(&input, past_ty)?;
            let t = b.reshape(x, split)?;
            let (present, back) = match &spec {
                Some(spec) => {
                    let q = b.add1(Op::Quantize(spec.clone()), &[t], None)?;
                    (q, b.add1(Op::Dequantize(spec.clone()), &[q], Some(b.graph.ty(t).clone()))?)
                }
                None if storage == DType::F32 => (t, t),
                None => {
                    let c = b.cast(t, storage)?;
                    (c, b.cast(c, DType::F32)?)
                }
            };
            let past_f32 = match &spec {
                Some(spec) => {
                    let ty = b.graph.ty(past).with_dtype(DType::F32);
                    b.add1(Op::Dequantize(spec.clone()), &[past], Some(ty))?
                }
                None if storage == DType::F32 => past,
                None => b.cast(past, DType::F32)?,
            };
            Ok((back, present, past_f32))
        })?;
        self.declare_state(state, input, update, present);
        Ok((step_f32, past_f32))
    }

    /// [`Self::cache_entry`] of an NVFP4 cache with global scale `global` (a power of two):
    /// `x · (1/global) → quantize (E2M1, E4M3 scales per 16 along D) → present.{k,v}.L` (codes)
    /// and `present.{k,v}_scale.L` (block scales), both state; read back as `dequantize(codes,
    /// scales) · global`, the cache alike from `past.{k,v}.L` and `past.{k,v}_scale.L`.
    #[allow(clippy::too_many_arguments)]
    fn nvfp4_cache_entry(
        &mut self,
        layer: usize,
        kind: usize,
        m: &str,
        x: ValueId,
        step: &StepInputs,
        state: &mut Vec<StateSlot>,
        global: f32,
    ) -> Result<(ValueId, ValueId), ImportError> {
        let (kv_heads, d) = (Dim::Fixed(self.cfg.num_kv_heads), Dim::Fixed(self.cfg.head_dim));
        let blocks = Dim::Fixed(self.cfg.head_dim.div_ceil(u64::from(crate::ir::KV_NVFP4_BLOCK)));
        let (q_spec, dq_spec) = KvFormat::nvfp4_specs();
        let name = |prefix: &str, scales: bool| super::kv::state_name(prefix, layer, kind, scales);
        let codes_ty = TensorType::new(DType::F4E2M1, [step.batch, step.past, kv_heads, d]);
        let scales_ty = TensorType::new(DType::F8E4M3, [step.batch, step.past, kv_heads, blocks]);
        let split = TensorType::new(DType::F32, [step.batch, step.seq, kv_heads, d]);
        let module = format!("{m}.{}_cache", ["k", "v"][kind]);
        let (step_f32, codes, scales, past_f32) = self.scoped(&module, |b| {
            let past = b.input(&name("past", false), codes_ty)?;
            let past_scales = b.input(&name("past", true), scales_ty)?;
            let t = b.reshape(x, split)?;
            let inv = b.scalar(f64::from(1.0 / global), DType::F32)?;
            let scaled = b.binary(BinaryOp::Mul, t, inv)?;
            let q = b.add(Op::Quantize(q_spec), &[scaled], None)?;
            let (codes, scales) = (q[0], q[1]);
            let read = |b: &mut Builder, c: ValueId, s: ValueId| -> Result<ValueId, String> {
                let ty = b.graph.ty(c).with_dtype(DType::F32);
                let dq = b.add1(Op::Dequantize(dq_spec.clone()), &[c, s], Some(ty))?;
                let g = b.scalar(f64::from(global), DType::F32)?;
                b.binary(BinaryOp::Mul, dq, g)
            };
            let back = read(b, codes, scales)?;
            let past_f32 = read(b, past, past_scales)?;
            Ok((back, codes, scales, past_f32))
        })?;
        for (scales_slot, value) in [(false, codes), (true, scales)] {
            self.declare_state(state, name("past", scales_slot), name("present", scales_slot), value);
        }
        Ok((step_f32, past_f32))
    }

    /// Makes `value` the graph output `update` that the next step reads back as the input
    /// `input`, appended along the cache's token axis.
    fn declare_state(&mut self, state: &mut Vec<StateSlot>, input: String, update: String, value: ValueId) {
        self.b.graph.outputs.push((update.clone(), value));
        state.push(StateSlot { input, update, axis: KV_TOKEN_AXIS });
    }

    fn rope(&mut self, module: &str, x: ValueId, heads: u64, step: &StepInputs) -> Result<ValueId, ImportError> {
        let c = self.cfg;
        let op = Op::Rope(Rope { heads: heads as u32, theta: c.rope_theta, pairs: c.rope_pairs, llama3: c.rope_llama3 });
        self.scoped(module, |b| b.add1(op, &[x, step.cache_len], None))
    }

    fn mlp(&mut self, m: &str, x: ValueId) -> Result<ValueId, ImportError> {
        let (h, i) = (self.cfg.hidden_size, self.cfg.intermediate_size);
        let gate = self.linear(&format!("{m}.gate_proj"), x, i, h, false)?;
        let up = self.linear(&format!("{m}.up_proj"), x, i, h, false)?;
        let act = self.scoped(&format!("{m}.act_fn"), |b| {
            let g = b.unary(UnaryOp::Silu, gate)?;
            b.binary(BinaryOp::Mul, g, up)
        })?;
        self.linear(&format!("{m}.down_proj"), act, h, i, false)
    }

    /// `x·Wᵀ (+ b)` for an `nn.Linear` named `module` with weight `[n, k]`.
    fn linear(&mut self, module: &str, x: ValueId, n: u64, k: u64, bias: bool) -> Result<ValueId, ImportError> {
        let w = self.weight_in(module, &format!("{module}.weight"), &[n, k])?;
        let bias = if bias { Some(self.weight_in(module, &format!("{module}.bias"), &[n])?) } else { None };
        self.scoped(module, |b| {
            let y = b.matmul(x, w, false, true)?;
            match bias {
                Some(bias) => b.binary(BinaryOp::Add, y, bias),
                None => Ok(y),
            }
        })
    }

    fn rms_norm(&mut self, module: &str, x: ValueId) -> Result<ValueId, ImportError> {
        let gamma = self.weight_in(module, &format!("{module}.weight"), &[self.cfg.hidden_size])?;
        let eps = self.cfg.rms_norm_eps;
        self.scoped(module, |b| b.add1(Op::RmsNorm { eps, prologue: false }, &[x, gamma], None))
    }

    /// A checked weight (present, float, of exactly `shape`) in the scope of `module`.
    fn weight_in(&mut self, module: &str, name: &str, shape: &[u64]) -> Result<ValueId, ImportError> {
        self.weights.expect(name, shape)?;
        let ty = TensorType::fixed(DType::F32, shape);
        self.scoped(module, |b| b.weight(name, ty))
    }

    fn ctx<T>(&mut self, layer: &str, f: impl FnOnce(&mut Builder) -> Result<T, String>) -> Result<T, ImportError> {
        f(&mut self.b).map_err(|message| ImportError::Graph { path: self.weights.path().into(), layer: layer.into(), message })
    }

    fn scoped<T>(&mut self, module: &str, f: impl FnOnce(&mut Builder) -> Result<T, String>) -> Result<T, ImportError> {
        self.b.scope = Some(module.into());
        self.ctx(module, f)
    }
}

/// Builds and verifies the step graph of `cfg` over `weights` with a KV cache of format `kv` and
/// logits for the positions `logits` names;
/// `[max_batch, max_step, max_seq]` bound the symbols `B` (sequences), `S` (new tokens per step)
/// and `P` (cached tokens). A verifier failure is a qfuse bug, reported with the weights' file.
pub fn build(
    cfg: &DecoderConfig,
    weights: &WeightStore,
    (kv, logits): (&KvFormat, LogitRows),
    [max_batch, max_step, max_seq]: [u64; 3],
    name: &str,
) -> Result<Graph, ImportError> {
    let mut graph = Graph::new(name);
    let batch = Dim::Sym(graph.add_symbol("B", max_batch));
    let seq = Dim::Sym(graph.add_symbol("S", max_step));
    let past = Dim::Sym(graph.add_symbol("P", max_seq));
    let mut bb = BlockBuilder { b: Builder::new(&mut graph), cfg, weights, kv, logits };
    let state = bb.graph_body(batch, seq, past)?;
    graph.state = state;
    crate::ir::verify(&graph, "after import").map_err(|e| ImportError::Graph {
        path: weights.path().into(),
        layer: "whole graph".into(),
        message: e.to_string(),
    })?;
    Ok(graph)
}
