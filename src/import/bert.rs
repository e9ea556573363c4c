//! The Hugging Face BERT family (`model_type: bert`) → IR.
//!
//! Structure per layer, as `transformers`' `BertModel` computes it: Q/K/V projections with bias,
//! scores `QKᵀ·(1/√d)` plus the additive attention mask `(1 − mask)·min_f32`, softmax, context
//! `P·V`, output projection, residual + LayerNorm, MLP (dense + bias, exact erf GeLU, dense + bias),
//! residual + LayerNorm. Nodes carry the checkpoint's module names.

use super::json::JsonFile;
use super::{ImportError, ImportOptions, WeightStore};
use crate::ir::{BinaryOp, Builder, DType, Dim, Graph, Op, TensorType, UnaryOp, ValueId};

/// The parts of `config.json` the BERT importer uses.
#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    /// Vocabulary size.
    pub vocab_size: u64,
    /// Hidden width H.
    pub hidden_size: u64,
    /// Encoder layers.
    pub num_hidden_layers: u64,
    /// Attention heads; `H / heads` is the head size.
    pub num_attention_heads: u64,
    /// MLP width.
    pub intermediate_size: u64,
    /// Position table length (the longest sequence).
    pub max_position_embeddings: u64,
    /// Token-type table length.
    pub type_vocab_size: u64,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f32,
    /// `gelu` (exact) or `gelu_new`/`gelu_pytorch_tanh` (tanh approximation).
    pub hidden_act: UnaryOp,
}

impl BertConfig {
    /// Reads and checks the config; errors name the field.
    pub fn from_json(cfg: &JsonFile) -> Result<Self, ImportError> {
        let c = BertConfig {
            vocab_size: cfg.positive("vocab_size")?,
            hidden_size: cfg.positive("hidden_size")?,
            num_hidden_layers: cfg.positive("num_hidden_layers")?,
            num_attention_heads: cfg.positive("num_attention_heads")?,
            intermediate_size: cfg.positive("intermediate_size")?,
            max_position_embeddings: cfg.positive_or("max_position_embeddings", 512)?,
            type_vocab_size: cfg.positive_or("type_vocab_size", 2)?,
            layer_norm_eps: cfg.float_or("layer_norm_eps", 1e-12)? as f32,
            hidden_act: match cfg.string_or("hidden_act", "gelu")? {
                "gelu" => UnaryOp::Gelu,
                "gelu_new" | "gelu_pytorch_tanh" => UnaryOp::GeluTanh,
                "relu" => UnaryOp::Relu,
                "silu" | "swish" => UnaryOp::Silu,
                other => return Err(field(cfg, "hidden_act", format!("unsupported activation \"{other}\""))),
            },
        };
        if c.hidden_size % c.num_attention_heads != 0 {
            let msg = format!("hidden_size {} is not divisible by num_attention_heads {}", c.hidden_size, c.num_attention_heads);
            return Err(field(cfg, "num_attention_heads", msg));
        }
        let pos_type = cfg.string_or("position_embedding_type", "absolute")?;
        if pos_type != "absolute" {
            return Err(field(cfg, "position_embedding_type", format!("only \"absolute\" is supported, got \"{pos_type}\"")));
        }
        Ok(c)
    }

    /// Size of one attention head.
    pub fn head_size(&self) -> u64 {
        self.hidden_size / self.num_attention_heads
    }
}

fn field(cfg: &JsonFile, name: &str, message: String) -> ImportError {
    ImportError::Field { path: cfg.path.clone(), field: name.into(), message }
}

/// What the graph ends with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// `last_hidden_state [B,S,H]`.
    Hidden,
    /// sentence-transformers mean pooling, optionally L2-normalised: `sentence_embedding [B,H]`.
    MeanPool {
        /// Apply `Normalize`.
        normalize: bool,
    },
}

/// Builds the BERT graph, checking every weight's presence, dtype and shape first.
pub fn build(cfg: &BertConfig, weights: &WeightStore, head: Head, opts: &ImportOptions, name: &str) -> Result<Graph, ImportError> {
    let prefix = if weights.contains("bert.embeddings.word_embeddings.weight") { "bert." } else { "" };
    let mut graph = Graph::new(name);
    let batch = Dim::Sym(graph.add_symbol("B", opts.max_batch));
    let max_seq = opts.max_seq.unwrap_or(cfg.max_position_embeddings).min(cfg.max_position_embeddings);
    let seq = Dim::Sym(graph.add_symbol("S", max_seq));
    let mut b = BertBuilder { b: Builder::new(&mut graph), cfg, weights, prefix, batch, seq };
    b.graph_body(head)?;
    Ok(graph)
}

struct BertBuilder<'a, 'g> {
    b: Builder<'g>,
    cfg: &'a BertConfig,
    weights: &'a WeightStore,
    prefix: &'a str,
    batch: Dim,
    seq: Dim,
}

impl BertBuilder<'_, '_> {
    fn graph_body(&mut self, head: Head) -> Result<(), ImportError> {
        let ids_ty = TensorType::new(DType::I64, [self.batch, self.seq]);
        let ids = self.ctx("inputs", |b| b.input("input_ids", ids_ty.clone()))?;
        let mask = self.ctx("inputs", |b| b.input("attention_mask", ids_ty.clone()))?;
        let types = self.ctx("inputs", |b| b.input("token_type_ids", ids_ty.clone()))?;
        let mut h = self.embeddings(ids, types)?;
        let bias = self.attention_bias(mask)?;
        for layer in 0..self.cfg.num_hidden_layers {
            h = self.layer(layer, h, bias)?;
        }
        let (name, out) = match head {
            Head::Hidden => ("last_hidden_state", h),
            Head::MeanPool { normalize } => {
                self.b.scope = Some("pooling".into());
                let pooled = self.ctx("pooling", |b| b.add1(Op::MeanPool, &[h, mask], None))?;
                let out = if normalize {
                    self.b.scope = Some("normalize".into());
                    self.ctx("normalize", |b| b.add1(Op::L2Normalize { eps: 1e-12 }, &[pooled], None))?
                } else {
                    pooled
                };
                ("sentence_embedding", out)
            }
        };
        self.b.graph.outputs.push((name.into(), out));
        Ok(())
    }

    /// Runs a builder step, turning a type-rule failure into an error naming the layer.
    fn ctx<T>(&mut self, layer: &str, f: impl FnOnce(&mut Builder) -> Result<T, String>) -> Result<T, ImportError> {
        let path = self.weights.path().into();
        f(&mut self.b).map_err(|message| ImportError::Graph { path, layer: layer.into(), message })
    }

    /// Runs a builder step with nodes named `module`.
    fn scoped<T>(&mut self, module: &str, f: impl FnOnce(&mut Builder) -> Result<T, String>) -> Result<T, ImportError> {
        self.b.scope = Some(module.into());
        self.ctx(module, f)
    }

    /// A checked weight: present, float, of exactly `shape`.
    fn weight(&mut self, name: &str, shape: &[u64]) -> Result<ValueId, ImportError> {
        let full = format!("{}{name}", self.prefix);
        self.weights.expect(&full, shape)?;
        let ty = TensorType::fixed(DType::F32, shape);
        self.ctx(name, |b| b.weight(&full, ty))
    }

    fn embeddings(&mut self, ids: ValueId, types: ValueId) -> Result<ValueId, ImportError> {
        let (h, c) = (self.cfg.hidden_size, self.cfg);
        self.b.scope = Some("embeddings".into());
        let word = self.weight("embeddings.word_embeddings.weight", &[c.vocab_size, h])?;
        let pos = self.weight("embeddings.position_embeddings.weight", &[c.max_position_embeddings, h])?;
        let tt = self.weight("embeddings.token_type_embeddings.weight", &[c.type_vocab_size, h])?;
        let seq = self.seq;
        let sum = self.ctx("embeddings", |b| {
            let w = b.add1(Op::Gather, &[word, ids], None)?;
            let positions = b.add1(Op::Iota, &[], Some(TensorType::new(DType::I64, [seq])))?;
            let p = b.add1(Op::Gather, &[pos, positions], None)?;
            let t = b.add1(Op::Gather, &[tt, types], None)?;
            let wp = b.binary(BinaryOp::Add, w, p)?;
            b.binary(BinaryOp::Add, wp, t)
        })?;
        self.layer_norm("embeddings.LayerNorm", sum)
    }

    /// `(1 − mask)·min_f32`, shaped `[B,1,1,S]` to broadcast over heads and query positions.
    fn attention_bias(&mut self, mask: ValueId) -> Result<ValueId, ImportError> {
        self.b.scope = Some("attention_mask".into());
        let (batch, seq) = (self.batch, self.seq);
        self.ctx("attention_mask", |b| {
            let m = b.cast(mask, DType::F32)?;
            let one = b.scalar(1.0, DType::F32)?;
            let inv = b.binary(BinaryOp::Sub, one, m)?;
            let min = b.scalar(f32::MIN as f64, DType::F32)?;
            let bias = b.binary(BinaryOp::Mul, inv, min)?;
            b.reshape(bias, TensorType::new(DType::F32, [batch, Dim::Fixed(1), Dim::Fixed(1), seq]))
        })
    }

    fn layer_norm(&mut self, module: &str, x: ValueId) -> Result<ValueId, ImportError> {
        let h = self.cfg.hidden_size;
        self.b.scope = Some(module.into());
        let gamma = self.weight(&format!("{module}.weight"), &[h])?;
        let beta = self.weight(&format!("{module}.bias"), &[h])?;
        let eps = self.cfg.layer_norm_eps;
        self.ctx(module, |b| b.add1(Op::LayerNorm { eps }, &[x, gamma, beta], None))
    }

    /// `x·Wᵀ + b` for an `nn.Linear` named `module` with weight `[n, k]`.
    fn linear(&mut self, module: &str, x: ValueId, n: u64, k: u64) -> Result<ValueId, ImportError> {
        self.b.scope = Some(module.into());
        let w = self.weight(&format!("{module}.weight"), &[n, k])?;
        let bias = self.weight(&format!("{module}.bias"), &[n])?;
        self.ctx(module, |b| {
            let y = b.matmul(x, w, false, true)?;
            b.binary(BinaryOp::Add, y, bias)
        })
    }

    fn layer(&mut self, i: u64, x: ValueId, mask_bias: ValueId) -> Result<ValueId, ImportError> {
        let p = format!("encoder.layer.{i}");
        let (h, inter) = (self.cfg.hidden_size, self.cfg.intermediate_size);
        let attn = self.self_attention(&format!("{p}.attention.self"), x, mask_bias)?;
        let proj = self.linear(&format!("{p}.attention.output.dense"), attn, h, h)?;
        let res = self.scoped(&format!("{p}.attention.output"), |b| b.binary(BinaryOp::Add, proj, x))?;
        let x1 = self.layer_norm(&format!("{p}.attention.output.LayerNorm"), res)?;
        let up = self.linear(&format!("{p}.intermediate.dense"), x1, inter, h)?;
        let act = self.cfg.hidden_act;
        let up = self.scoped(&format!("{p}.intermediate"), |b| b.unary(act, up))?;
        let down = self.linear(&format!("{p}.output.dense"), up, h, inter)?;
        let res = self.scoped(&format!("{p}.output"), |b| b.binary(BinaryOp::Add, down, x1))?;
        self.layer_norm(&format!("{p}.output.LayerNorm"), res)
    }

    fn self_attention(&mut self, module: &str, x: ValueId, mask_bias: ValueId) -> Result<ValueId, ImportError> {
        let h = self.cfg.hidden_size;
        let q = self.linear(&format!("{module}.query"), x, h, h)?;
        let k = self.linear(&format!("{module}.key"), x, h, h)?;
        let v = self.linear(&format!("{module}.value"), x, h, h)?;
        self.b.scope = Some(module.into());
        let (heads, d) = (self.cfg.num_attention_heads, self.cfg.head_size());
        let (batch, seq) = (self.batch, self.seq);
        let split = TensorType::new(DType::F32, [batch, seq, Dim::Fixed(heads), Dim::Fixed(d)]);
        let merged = TensorType::new(DType::F32, [batch, seq, Dim::Fixed(h)]);
        self.ctx(module, |b| {
            let mut to_heads = |t: ValueId| -> Result<ValueId, String> {
                let r = b.reshape(t, split.clone())?;
                b.transpose(r, &[0, 2, 1, 3])
            };
            let (q, k, v) = (to_heads(q)?, to_heads(k)?, to_heads(v)?);
            let scores = b.matmul(q, k, false, true)?;
            let scale = b.scalar((1.0 / (d as f64).sqrt()) as f32 as f64, DType::F32)?;
            let scores = b.binary(BinaryOp::Mul, scores, scale)?;
            let scores = b.binary(BinaryOp::Add, scores, mask_bias)?;
            let probs = b.add1(Op::Softmax { axis: -1 }, &[scores], None)?;
            let ctx = b.matmul(probs, v, false, false)?;
            let ctx = b.transpose(ctx, &[0, 2, 1, 3])?;
            b.reshape(ctx, merged)
        })
    }
}
