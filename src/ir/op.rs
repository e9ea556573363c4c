//! The closed set of IR operations.
//!
//! Each variant documents its inputs, outputs and semantics; the reference interpreter, the type
//! checker ([`super::infer`]), the printer and the parser all match on this enum exhaustively.

use super::{DType, QuantSpec};
use serde::{Deserialize, Serialize};

/// Element-wise binary operations with NumPy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a − b`
    Sub,
    /// `a · b`
    Mul,
    /// `a / b`
    Div,
    /// `max(a, b)`
    Max,
    /// `min(a, b)`
    Min,
}

/// Element-wise unary operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UnaryOp {
    /// Exact GeLU: `x·Φ(x) = 0.5·x·(1 + erf(x/√2))`.
    Gelu,
    /// GeLU, tanh approximation.
    GeluTanh,
    /// `x·σ(x)`.
    Silu,
    /// `max(x, 0)`.
    Relu,
    /// `eˣ`.
    Exp,
    /// `tanh x`.
    Tanh,
    /// `√x`.
    Sqrt,
    /// `1/√x`.
    Rsqrt,
    /// `−x`.
    Neg,
    /// `|x|`.
    Abs,
}

/// Reductions over a set of axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReduceOp {
    /// Sum.
    Sum,
    /// Arithmetic mean.
    Mean,
    /// Maximum.
    Max,
}

/// Which normalisation a fused norm+quantize computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NormKind {
    /// `x, gamma, beta`.
    LayerNorm,
    /// `x, gamma`.
    RmsNorm,
    /// `x, gamma`: no normalisation, `x ⊙ γ` with γ along the last axis (a SmoothQuant
    /// multiply); `eps` is unused (0).
    Scale,
}

/// The norm a `quant_round_trip` computes before its multiply and quantize: LayerNorm (`x, gamma,
/// beta`), RMSNorm (`x, gamma`) or the per-channel multiply `x ⊙ γ` ([`NormKind::Scale`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundTripNorm {
    /// Which norm.
    pub kind: NormKind,
    /// Its epsilon (0 for [`NormKind::Scale`]).
    pub eps: f32,
}

/// One step of a quantized matmul's epilogue; its result is rounded to `dtype`, exactly where the
/// unfused graph rounded, so fusing never changes the numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpilogueStep {
    /// What the step computes.
    pub op: EpilogueOp,
    /// The dtype its result is rounded to.
    pub dtype: DType,
}

/// The operation of an epilogue step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EpilogueOp {
    /// Round to the step's dtype.
    Cast,
    /// Add the op's next epilogue input: a bias `[N]` or a residual shaped like the output.
    Add,
    /// Multiply by the op's next epilogue input (shaped like `Add`'s): the gate of a gated MLP
    /// (`silu(gate) · up` with `up` as the GEMM and `silu(gate)` read).
    Mul,
    /// An element-wise activation.
    Unary(UnaryOp),
}

impl EpilogueOp {
    /// Whether the step reads the op's next epilogue input (`Add`, `Mul`).
    pub fn takes_operand(self) -> bool {
        matches!(self, EpilogueOp::Add | EpilogueOp::Mul)
    }
}

/// Payload of a quantized matmul.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QMatMul {
    /// Read `b` as `[N, K]` (the `nn.Linear` weight layout).
    pub transpose_b: bool,
    /// Product of the per-tensor scales of `a` and `b`.
    pub alpha: f32,
    /// `a` brings a per-row scale `[.., M, 1]` (dynamic per-token activations).
    pub a_scale: bool,
    /// `b` brings a per-column scale `[N]` (per-channel weights).
    pub b_scale: bool,
    /// Dtype the scaled accumulator is rounded to (what the unfused matmul produced).
    pub acc_dtype: DType,
    /// Steps applied in order after scaling.
    pub epilogue: Vec<EpilogueStep>,
    /// A fused output quantize (per-tensor, literal scale), or `None` for a wide-float output.
    pub output: Option<QuantSpec>,
    /// Weight-only quantization (W8A16, W4A16, FP8/NVFP4 weights on f16 GEMMs): `b` holds codes
    /// that this spec dequantizes to `a`'s dtype (f16/bf16) before the product, exactly as a
    /// `dequantize` producing that dtype would; its scale (then zero point) inputs follow `b`.
    /// `alpha` is then 1 and `a_scale`/`b_scale` are false.
    #[serde(default)]
    pub b_dequant: Option<QuantSpec>,
}

impl QMatMul {
    /// A weight-only product (`b_dequant`): `a · dequantize(b)ᵀ` with `b` a `[N, K]` weight of
    /// `spec`'s codes, summed into `acc_dtype`, then `epilogue`; no scale vectors, `alpha` 1.
    pub fn weight_only(spec: QuantSpec, acc_dtype: DType, epilogue: Vec<EpilogueStep>) -> Self {
        QMatMul { transpose_b: true, alpha: 1.0, a_scale: false, b_scale: false, acc_dtype, epilogue, output: None, b_dequant: Some(spec) }
    }

    /// Number of inputs: `a`, `b`, `b_dequant`'s scale and zero point, the optional scale vectors,
    /// one per `Add` or `Mul` step — in that order.
    pub fn arity(&self) -> usize {
        2 + self.b_dequant.as_ref().map_or(0, QuantSpec::extra_inputs)
            + usize::from(self.a_scale)
            + usize::from(self.b_scale)
            + self.epilogue.iter().filter(|s| s.op.takes_operand()).count()
    }
}

/// Payload of sibling `qmatmul`s over one `a` computed as one GEMM (`merge-sibling-gemms`): `b`
/// is the row concatenation of the siblings' `[N_i, K]` weights, and so are the weight-side
/// operands (`b_dequant`'s scale and zero point, `b_scale`); segment `i` covers rows
/// `[Σ_{j<i} N_j, Σ_{j≤i} N_j)` and computes exactly the `qmatmul` of its payload on `a` and those
/// rows, producing result `i`.
///
/// Operands: `a, b [, b_dequant scale] [, b_dequant zero] [, a_scale] [, b_scale]`, then each
/// segment's epilogue operands, segment by segment. Every segment shares `transpose_b` (true),
/// `a_scale`, `b_scale` and `b_dequant` (checked by the type rule); `alpha`, `acc_dtype`, the
/// epilogue and the output quantize are its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitMatMul {
    /// The segments, in weight-row order (at least two).
    pub segments: Vec<Segment>,
}

/// One segment of a [`SplitMatMul`]: `n` weight rows and the `qmatmul` they compute.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// Output features N of this segment (its rows of `b`).
    pub n: u64,
    /// The product this segment computes; its shared fields equal every other segment's.
    pub mm: QMatMul,
}

impl SplitMatMul {
    /// The shared part of the payload: the first segment's product.
    pub fn first(&self) -> Option<&QMatMul> {
        self.segments.first().map(|s| &s.mm)
    }

    /// Operands before the epilogue operands: `a`, `b`, `b_dequant`'s, `a_scale`, `b_scale`.
    pub fn prefix(&self) -> usize {
        self.first().map_or(2, |q| q.arity() - epilogue_operands(q))
    }

    /// Number of inputs: the prefix, then every segment's epilogue operands.
    pub fn arity(&self) -> usize {
        self.prefix() + self.segments.iter().map(|s| epilogue_operands(&s.mm)).sum::<usize>()
    }

    /// Total output features: `Σ n` (saturating: a hostile text cannot overflow it).
    pub fn total_n(&self) -> u64 {
        self.segments.iter().fold(0u64, |t, s| t.saturating_add(s.n))
    }

    /// `(first row, rows, first epilogue operand, epilogue operands)` of each segment.
    pub fn layout(&self) -> Vec<(u64, u64, usize, usize)> {
        let (mut row, mut operand) = (0u64, self.prefix());
        let mut out = Vec::with_capacity(self.segments.len());
        for s in &self.segments {
            let k = epilogue_operands(&s.mm);
            out.push((row, s.n, operand, k));
            row = row.saturating_add(s.n);
            operand += k;
        }
        out
    }
}

/// Payload of a gated MLP's gate and up projections over one `a` computed as one GEMM whose
/// result is the gate's (`merge-gate-up`): `b` holds both `[N, K]` weights with their rows
/// interleaved in pieces of `tile` rows — rows `[2i·tile, (2i+1)·tile)` are the gate's rows
/// `[i·tile, (i+1)·tile)`, the next `tile` rows the up projection's same rows — and so are the
/// weight-side operands (`b_dequant`'s scale and zero point in pieces of `tile / R` rows for a
/// `block(0:R, …)` scale, `b_scale` in pieces of `tile`).
///
/// Semantics, each rounding step that of the unfused graph: `u` = the `qmatmul` of `up` on `a`
/// and the up rows (its own alpha, accumulator dtype and epilogue with its own operands; no
/// output quantize, so `u` is a float of its last step's dtype); the result = the `qmatmul` of
/// `gate` on `a` and the gate rows whose epilogue operand number `up_operand` (counting the
/// gate's `add`/`mul` steps from 0) is `u` — `round(silu(gate) · u)` for a SwiGLU gate whose
/// epilogue is `cast, silu, mul(up)` — then the gate's optional output quantize.
///
/// Operands: `a, b [, b_dequant scale] [, b_dequant zero] [, a_scale] [, b_scale]`, then the
/// gate's epilogue operands other than `up_operand`, then the up projection's. Both products
/// share `transpose_b` (true), `a_scale`, `b_scale` and `b_dequant` (checked by the type rule).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GluMatMul {
    /// Rows per interleaved piece (N is a multiple of it).
    pub tile: u64,
    /// The gate projection, whose result the op produces.
    pub gate: QMatMul,
    /// The up projection, read by the gate's epilogue.
    pub up: QMatMul,
    /// Which of the gate's operand-reading epilogue steps reads the up projection's result.
    pub up_operand: usize,
}

impl GluMatMul {
    /// Operands before the epilogue operands: `a`, `b`, `b_dequant`'s, `a_scale`, `b_scale`.
    pub fn prefix(&self) -> usize {
        self.gate.arity() - epilogue_operands(&self.gate)
    }

    /// Number of inputs: the prefix, the gate's epilogue operands but the up result, the up
    /// projection's.
    pub fn arity(&self) -> usize {
        self.prefix() + epilogue_operands(&self.gate).saturating_sub(1) + epilogue_operands(&self.up)
    }

    /// `(first, count)` of the gate's own epilogue operands (without the up result) and of the
    /// up projection's, as input positions.
    pub fn operand_ranges(&self) -> ((usize, usize), (usize, usize)) {
        let gate = epilogue_operands(&self.gate).saturating_sub(1);
        ((self.prefix(), gate), (self.prefix() + gate, epilogue_operands(&self.up)))
    }
}

/// How many epilogue steps of `q` read an operand.
pub fn epilogue_operands(q: &QMatMul) -> usize {
    q.epilogue.iter().filter(|s| s.op.takes_operand()).count()
}

/// Payload of a fused multi-head attention.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attention {
    /// Number of heads H; operands are [.., S, H·D].
    pub heads: u32,
    /// Multiplier of the rounded scores (exactly representable in the operand dtype), `None` when the graph has no scaling step.
    pub scale: Option<f32>,
    /// A mask-bias operand follows q, k, v.
    pub mask: bool,
    /// FP8 operands (`--fp8-attention`): q, k and v are E4M3 codes and both products run on
    /// them; `None` for f16/bf16 operands.
    #[serde(default)]
    pub fp8: Option<AttentionFp8>,
    /// A fused output quantize (per-tensor, literal scale), `None` for a wide-float output.
    pub output: Option<QuantSpec>,
}

/// The quantized products of an FP8 `attention`: the unfused chain's two `qmatmul`s and the
/// probabilities' quantize between them. With T = `compute`:
/// `s = T(f32(Σ q·k) · qk_alpha)`, then scale, mask and softmax in T as for f16 operands, then
/// `p = quantize(p, f8e4m3, per_tensor, scale = p_scale)` and `o = T(f32(Σ p·v) · pv_alpha)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttentionFp8 {
    /// Multiplier of Q·Kᵀ's f32 sums: q's scale times k's.
    pub qk_alpha: f32,
    /// Scale of the probabilities' per-tensor E4M3 quantize.
    pub p_scale: f32,
    /// Multiplier of P·V's f32 sums: `p_scale` times v's scale.
    pub pv_alpha: f32,
    /// Dtype of the scores, probabilities and context (f16 or bf16).
    pub compute: DType,
}

impl Attention {
    /// Number of inputs: `q`, `k`, `v`, then the mask bias when `mask`.
    pub fn arity(&self) -> usize {
        3 + usize::from(self.mask)
    }
}

/// Payload of the fused BERT embedding: gathers, sums and a LayerNorm (+ quantize).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmbedLayerNorm {
    /// LayerNorm epsilon.
    pub eps: f32,
    /// Dtype of the embedding tables, the sums and the norm's result (f16 after the fp16 conversion).
    pub via: DType,
    /// Optional quantize of the norm's result (as in `layernorm_quantize`).
    pub quant: Option<QuantSpec>,
    /// With `quant`: also output the unquantized norm (rounded to `via`).
    pub keep_normed: bool,
}

impl EmbedLayerNorm {
    /// Number of inputs: `ids`, `type_ids`, the three tables, `gamma`, `beta`, then the quant
    /// spec's scale / zero-point operands.
    pub fn arity(&self) -> usize {
        7 + self.quant.as_ref().map_or(0, QuantSpec::extra_inputs)
    }
}

/// Which coordinates of a head RoPE rotates together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RopePairs {
    /// `(i, i + D/2)`: Hugging Face's `rotate_half` (Llama, Mistral, Qwen2 checkpoints).
    Half,
    /// `(2i, 2i + 1)`: llama.cpp's normal RoPE (GGUF Llama files, whose Q/K rows are permuted).
    Adjacent,
}

/// Llama 3's frequency-dependent RoPE rescaling (`rope_scaling.rope_type = "llama3"`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RopeLlama3 {
    /// Divisor of low frequencies.
    pub factor: f32,
    /// Wavelengths above `original / low_freq_factor` are divided by `factor`.
    pub low_freq_factor: f32,
    /// Wavelengths below `original / high_freq_factor` are kept.
    pub high_freq_factor: f32,
    /// The context length the model was trained at.
    pub original_max_positions: u32,
}

/// Payload of a rotary position embedding.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rope {
    /// Heads N; `x` is `[B, S, N·D]`.
    pub heads: u32,
    /// Base θ of the inverse frequencies `θ^(−2i/D)`.
    pub theta: f32,
    /// Pairing of rotated coordinates.
    pub pairs: RopePairs,
    /// Optional Llama 3 frequency rescaling.
    pub llama3: Option<RopeLlama3>,
}

/// Payload of a causal, grouped-query attention over a KV cache (decoders).
///
/// Inputs `q [B,S,H·D]`, `k, v [B,S,KV,D]` (this step's keys and values, as the cache stores
/// them: token-major, a view of the `[B,S,KV·D]` projection), `past_k, past_v [B,P,KV,D]` (the
/// cache, token-major too), `cache_len i64[B]` → `o [B,S,H·D]`. Query `s`
/// of sequence `b` sits at position `cache_len[b] + s`; query head `h` reads KV head
/// `h / (H/KV)`; it attends to the first `cache_len[b]` cached tokens and to this step's tokens
/// `0..=s`. Scores `Σ q·k` (f32 sums) times `scale`, softmax, `Σ p·v` — all in f32 — rounded once
/// to q's dtype. Cache rows at or past `cache_len[b]` are never read.
///
/// With [`CausalAttention::cache`] set, `k, v, past_k, past_v` are the quantized cache's codes
/// (`f8e4m3` or `i8`) and each element reads as `via(code · scale)` (K's scale for `k` and
/// `past_k`, V's for `v` and `past_v`) — exactly the per-tensor `dequantize` to `via` that
/// `fuse-kv-cache` folds in. The GPU reads the codes straight from the paged cache.
///
/// An NVFP4 cache ([`KvCodes::block`] = 16) has `f4e2m1` codes and four more operands, the
/// `f8e4m3` block scales `k_s, v_s [B,S,KV,D/16]`, `past_k_s, past_v_s [B,P,KV,D/16]` (state too):
/// element `d` reads as `via(via(code · block_scale[d / 16]) · scale)`, `scale` the per-tensor
/// global (a power of two): exactly `dequantize(code, block_scale)` to `via` followed by the
/// multiplication by the global that the block builder writes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CausalAttention {
    /// Query heads H.
    pub heads: u32,
    /// Key/value heads KV (H is a multiple of KV).
    pub kv_heads: u32,
    /// Multiplier of the scores (`1/√D`).
    pub scale: f32,
    /// The K/V operands are cache codes dequantized on read; `None`: they are floats of q's dtype.
    #[serde(default)]
    pub cache: Option<KvCodes>,
    /// RoPE the op applies itself (`fuse-rope`): `q` (and with [`AttnRope::keys`], `k`) arrive
    /// unrotated; `None`: they arrive rotated.
    #[serde(default)]
    pub rope: Option<AttnRope>,
    /// A fused static output quantize (`fuse-attention-output`): `o`, rounded to q's dtype as
    /// above, then quantized per tensor, `cast(o / scale)` to the codes' dtype; `None`: `o` is
    /// q's dtype.
    #[serde(default)]
    pub output: Option<OutputQuant>,
}

/// A static per-tensor output quantize fused into the op that produces the value:
/// `cast(x / scale)` to `storage` (RNE, saturating), exactly the `quantize {storage,
/// per_tensor, scale}` it replaces. Printed `out=<storage>, out_scale=<scale>`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutputQuant {
    /// The codes' dtype (`f8e4m3` or `i8`).
    pub storage: DType,
    /// The literal scale (positive, finite).
    pub scale: f32,
}

impl OutputQuant {
    /// The same quantize as a [`QuantSpec`] (per tensor, literal scale, no zero point).
    pub fn spec(&self) -> QuantSpec {
        QuantSpec::per_tensor(self.storage, self.scale)
    }

    /// The static per-tensor quantize `spec` describes (literal scale, no zero point), if it is one.
    pub fn of_spec(spec: &QuantSpec) -> Option<Self> {
        spec.literal_per_tensor().map(|scale| OutputQuant { storage: spec.storage, scale })
    }
}

/// The rotary embedding a [`CausalAttention`] applies to its own operands, exactly as the `rope`
/// ops it replaces did (`fuse-rope`): `q [B,S,H·D]` is rotated at positions `cache_len[b] + s`
/// as `rope {heads=H}` would and rounded to q's dtype before any product reads it. With `keys`,
/// `k [B,S,KV,D]` (in q's dtype) is this step's *unrotated* keys: the op rotates each `[KV·D]`
/// token row as `rope {heads=KV}` would and rounds to q's dtype; over a float cache that is its
/// second output, and with [`CausalAttention::cache`] the second output is those keys quantized
/// as the cache stores them (`quantize {storage of past_k, per_tensor, scale=k_scale}`). The
/// second output is the cache update `present.k.L`, and the attention reads it as its keys.
/// `keys` is not defined over an NVFP4 cache ([`CausalAttention::block_scaled`]: the block scales
/// would be a third result); there the op rotates q only.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttnRope {
    /// Base θ of the inverse frequencies `θ^(−2i/D)`.
    pub theta: f32,
    /// Pairing of rotated coordinates.
    pub pairs: RopePairs,
    /// Optional Llama 3 frequency rescaling.
    pub llama3: Option<RopeLlama3>,
    /// This step's keys are rotated too (second output).
    pub keys: bool,
}

impl AttnRope {
    /// The stand-alone `rope` op over `heads` heads that this rotation equals.
    pub fn op(&self, heads: u32) -> Rope {
        Rope { heads, theta: self.theta, pairs: self.pairs, llama3: self.llama3 }
    }

    /// The rotation of `rope` (its heads dropped), rotating keys too when `keys`.
    pub fn of(rope: &Rope, keys: bool) -> Self {
        AttnRope { theta: rope.theta, pairs: rope.pairs, llama3: rope.llama3, keys }
    }

    /// True if `rope` rotates with the same frequencies and pairs (any heads).
    pub fn same_rotation(&self, rope: &Rope) -> bool {
        self.theta == rope.theta && self.pairs == rope.pairs && self.llama3 == rope.llama3
    }
}

/// How a [`CausalAttention`] reads a quantized KV cache: per-tensor scales of K and V (one
/// layer's) and the dtype each dequantized element is rounded to.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct KvCodes {
    /// Dequantization multiplier of K's codes (NVFP4: the global scale above the block scales).
    pub k_scale: f32,
    /// Dequantization multiplier of V's codes (NVFP4: the global scale).
    pub v_scale: f32,
    /// Dtype of a dequantized element (q's dtype, f16 or bf16 after a recipe).
    pub via: DType,
    /// Elements per block scale along D: 0 for per-tensor codes, [`KV_NVFP4_BLOCK`] for an NVFP4
    /// cache (E2M1 codes, E4M3 block scales as four extra operands).
    #[serde(default)]
    pub block: u32,
}

/// Elements of D sharing one E4M3 block scale in an NVFP4 KV cache.
pub const KV_NVFP4_BLOCK: u32 = 16;

impl CausalAttention {
    /// Results: `o`, then with [`AttnRope::keys`] this step's rotated keys (the cache update).
    pub fn outputs(&self) -> usize {
        1 + usize::from(self.rope.is_some_and(|r| r.keys))
    }

    /// Operands: 6, or 10 when the cache has block scales ([`KvCodes::block`] > 0).
    pub fn arity(&self) -> usize {
        if self.block_scaled() {
            10
        } else {
            6
        }
    }

    /// True when the K/V codes carry block-scale operands (an NVFP4 cache).
    pub fn block_scaled(&self) -> bool {
        self.cache.is_some_and(|c| c.block > 0)
    }
}

/// One IR operation. Inputs and outputs are listed as `inputs → outputs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// `() → x`: a graph input bound by name at run time.
    Input {
        /// Binding name (`input_ids`).
        name: String,
    },
    /// `() → w`: a weight from the model's weight store, by its checkpoint name.
    Weight {
        /// Checkpoint tensor name.
        name: String,
    },
    /// `() → s`: a rank-0 literal of the output dtype.
    Scalar {
        /// The value (exactly representable in the output dtype).
        value: f64,
    },
    /// `() → i`: `0, 1, …, n−1` where `n` is the extent of the rank-1 output.
    Iota,
    /// `x → y`: element-wise conversion to the output dtype (RNE, saturating for narrow floats).
    Cast,
    /// `a, b → y`: element-wise with broadcasting.
    Binary(BinaryOp),
    /// `x → y`: element-wise.
    Unary(UnaryOp),
    /// `table, indices → y`: rows of `table` (axis 0) selected by `indices`;
    /// `shape(y) = shape(indices) ++ shape(table)[1..]`.
    Gather,
    /// `a, b → y`: batched matrix product over the last two axes, batch axes broadcast.
    /// `a: [.., M, K]` (or `[.., K, M]` with `transpose_a`), `b: [.., K, N]` (or `[.., N, K]` with
    /// `transpose_b`, the `nn.Linear` weight layout).
    MatMul {
        /// Read `a` as its transpose.
        transpose_a: bool,
        /// Read `b` as its transpose.
        transpose_b: bool,
    },
    /// `x, gamma, beta → y`: LayerNorm over the last axis.
    LayerNorm {
        /// Variance epsilon.
        eps: f32,
    },
    /// `x, gamma → y`: RMSNorm over the last axis.
    RmsNorm {
        /// Mean-square epsilon.
        eps: f32,
        /// A schedule hint that leaves the meaning unchanged: where its one reader's GEMM runs
        /// the skinny kernel (few rows), that kernel computes this norm as its prologue and the
        /// norm has no launch of its own (`fuse-norm-prologue`; invariants in `ir::verify`).
        #[serde(default)]
        prologue: bool,
    },
    /// `x → y`: softmax along `axis`.
    Softmax {
        /// Normalised axis (negative counts from the end).
        axis: i64,
    },
    /// `x → y`: same elements, output shape from the output type.
    Reshape,
    /// `x → y`: `y.shape[i] = x.shape[perm[i]]`.
    Transpose {
        /// The permutation.
        perm: Vec<usize>,
    },
    /// `x → y`: reduction over `axes`.
    Reduce {
        /// Which reduction.
        op: ReduceOp,
        /// Reduced axes (negative counts from the end).
        axes: Vec<i64>,
        /// Keep reduced axes with extent 1.
        keep_dims: bool,
    },
    /// `hidden [B,S,H], mask [B,S] → [B,H]`: mean over tokens whose mask is non-zero
    /// (sentence-transformers mean pooling; the token count is clamped to ≥ 1e-9).
    MeanPool,
    /// `x [B,S,H] → y [B,1,H]`: each sequence's last position, `y[b,0,:] = x[b,S−1,:]` (a decoder
    /// step's logits need only the last token's hidden state).
    LastToken,
    /// `x → y`: `x / max(‖x‖₂, eps)` along the last axis.
    L2Normalize {
        /// Norm floor.
        eps: f32,
    },
    /// `x [, scale] [, zero] → q [, scales]`: `q = sat(RNE(x / s) + z)` in the spec's storage type.
    /// With a dynamic scale a second output holds the computed scales.
    Quantize(QuantSpec),
    /// `q [, scale] [, zero] → x`: `x = (q − z)·s` in the output dtype.
    Dequantize(QuantSpec),
    /// `q → q'`: per-tensor `quantize(round_via(q·from_scale), to)`; one kernel for DQ→Q with
    /// different scales.
    Requantize {
        /// Scale of the input.
        from_scale: f32,
        /// Dtype the dequantized value is rounded to (the unfused DQ's output dtype).
        via: DType,
        /// The output quantization (per-tensor, literal scale).
        to: QuantSpec,
    },
    /// `x [, gamma [, beta]] → y`: a quantization's round trip as one op (an activation's fake quantization, for
    /// GEMMs that take the dequantized values: NVFP4 and FP8-block activations on Hopper):
    /// `y = round_T(round_T(dequantize(quantize(round_T(x·pre)))·post)` with `T` = x's dtype,
    /// each product an f32 product rounded to `T` as `mul` rounds, the dequantize reading the
    /// quantize's own scales. `quant` takes no operand (dynamic or literal scale, literal or no
    /// zero point). `pre = post = 1` multiply by one, which changes no value of `T`. With `norm`,
    /// `x` is first normalised (the norm op's result, rounded to `T`).
    QuantRoundTrip {
        /// A norm computed first (`x, gamma [, beta]` its operands), its result rounded to `T`
        /// as the norm op's own; `None`: the op takes `x` alone.
        #[serde(default)]
        norm: Option<RoundTripNorm>,
        /// Multiplier before the quantize (a global scale's reciprocal).
        pre: f32,
        /// The quantization (its dequantize mirrors it).
        quant: QuantSpec,
        /// Multiplier after the dequantize.
        post: f32,
    },
    /// `x, gamma [, beta] [, scale] → q [, scales] [, normed]`: a LayerNorm/RMSNorm (or the
    /// per-channel multiply [`NormKind::Scale`]) whose result, rounded to `via`, is quantized with `quant` (static, or dynamic per-token with a scales
    /// output); with `keep_normed` the rounded norm itself is a last output too (for a residual).
    NormQuantize {
        /// Which norm.
        kind: NormKind,
        /// Norm epsilon.
        eps: f32,
        /// Dtype the norm's result is rounded to before quantizing (the unfused norm's output).
        via: DType,
        /// The quantization.
        quant: QuantSpec,
        /// Also output the unquantized norm (rounded to `via`).
        keep_normed: bool,
        /// As [`Op::RmsNorm`]'s `prologue`: computed inside its reader's skinny GEMM.
        #[serde(default)]
        prologue: bool,
    },
    /// `a, b [, b_dequant scale] [, b_dequant zero] [, a_scale] [, b_scale] [, epilogue inputs…] → y`:
    /// `Σ_k a·b` over quantized (or both f16 / both bf16) operands, times
    /// `alpha·a_scale[m]·b_scale[n]`, rounded to `acc_dtype`, then the epilogue, then the optional
    /// output quantize. With `b_dequant`, `b` is first dequantized to `a`'s dtype. The sum is exact
    /// for 8-bit integer operands (integer products summed as `mma.sync … s32` does, then rounded to
    /// f32 once, RNE, before the scales) and accumulated in f32 otherwise.
    QMatMul(QMatMul),
    /// `a, b [, …] → y_1, …, y_n`: sibling `qmatmul`s over one `a` as one GEMM over their
    /// concatenated weights; see [`SplitMatMul`].
    SplitMatMul(SplitMatMul),
    /// `a, b [, …] → y`: a gated MLP's gate and up projections as one GEMM over their
    /// interleaved weights, the gate's epilogue reading the up result; see [`GluMatMul`].
    GluMatMul(GluMatMul),
    /// `q, k, v [, mask_bias] → o`: multi-head attention over `[B, S, H·D]` operands of one
    /// f16/bf16 dtype T, rounding to T where the unfused graph does: scores, scaled scores,
    /// masked scores, softmax, context; then the optional output quantize.
    Attention(Attention),
    /// `ids, type_ids, word, pos, type, gamma, beta [, scale] [, zero] → y` or `→ q [, scales]
    /// [, normed]`: BERT's embedding gathers and sums, then `layernorm` or `layernorm_quantize`.
    EmbedLayerNorm(EmbedLayerNorm),
    /// `x [B,S,N·D], cache_len i64[B] → y`: rotary position embedding; token `s` of sequence `b`
    /// sits at position `p = cache_len[b] + s` and each pair `(x₁, x₂)` of a head (see
    /// [`RopePairs`]) becomes `(x₁·cos − x₂·sin, x₂·cos + x₁·sin)` with angle `p·θ^(−2i/D)`
    /// (angles, cos and sin in f64, rounded to f32; the rotation in f32, rounded to y's dtype).
    Rope(Rope),
    /// `q, k, v, past_k, past_v, cache_len → o`: see [`CausalAttention`].
    CausalAttention(CausalAttention),
}

impl Op {
    /// The text-format mnemonic.
    pub fn mnemonic(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Weight { .. } => "weight",
            Op::Scalar { .. } => "scalar",
            Op::Iota => "iota",
            Op::Cast => "cast",
            Op::Binary(b) => match b {
                BinaryOp::Add => "add",
                BinaryOp::Sub => "sub",
                BinaryOp::Mul => "mul",
                BinaryOp::Div => "div",
                BinaryOp::Max => "max",
                BinaryOp::Min => "min",
            },
            Op::Unary(u) => match u {
                UnaryOp::Gelu => "gelu",
                UnaryOp::GeluTanh => "gelu_tanh",
                UnaryOp::Silu => "silu",
                UnaryOp::Relu => "relu",
                UnaryOp::Exp => "exp",
                UnaryOp::Tanh => "tanh",
                UnaryOp::Sqrt => "sqrt",
                UnaryOp::Rsqrt => "rsqrt",
                UnaryOp::Neg => "neg",
                UnaryOp::Abs => "abs",
            },
            Op::Gather => "gather",
            Op::MatMul { .. } => "matmul",
            Op::LayerNorm { .. } => "layernorm",
            Op::RmsNorm { .. } => "rmsnorm",
            Op::Softmax { .. } => "softmax",
            Op::Reshape => "reshape",
            Op::Transpose { .. } => "transpose",
            Op::Reduce { op, .. } => match op {
                ReduceOp::Sum => "reduce_sum",
                ReduceOp::Mean => "reduce_mean",
                ReduceOp::Max => "reduce_max",
            },
            Op::MeanPool => "mean_pool",
            Op::LastToken => "last_token",
            Op::L2Normalize { .. } => "l2_normalize",
            Op::Quantize(_) => "quantize",
            Op::Dequantize(_) => "dequantize",
            Op::Requantize { .. } => "requantize",
            Op::QuantRoundTrip { .. } => "quant_round_trip",
            Op::NormQuantize { kind: NormKind::LayerNorm, .. } => "layernorm_quantize",
            Op::NormQuantize { kind: NormKind::RmsNorm, .. } => "rmsnorm_quantize",
            Op::NormQuantize { kind: NormKind::Scale, .. } => "scale_quantize",
            Op::QMatMul(_) => "qmatmul",
            Op::SplitMatMul(_) => "qmatmul_split",
            Op::GluMatMul(_) => "qmatmul_glu",
            Op::Attention(_) => "attention",
            Op::EmbedLayerNorm(_) => "embed_layernorm",
            Op::Rope(_) => "rope",
            Op::CausalAttention(_) => "causal_attention",
        }
    }

    /// A short kind name for summaries (`binary` ops grouped under their mnemonic).
    pub fn kind(&self) -> &'static str {
        self.mnemonic()
    }

    /// True for ops with no inputs whose value comes from outside the graph or from the op itself.
    pub fn is_source(&self) -> bool {
        matches!(self, Op::Input { .. } | Op::Weight { .. } | Op::Scalar { .. } | Op::Iota)
    }

    /// The quant spec whose scale/zero-point inputs follow the op's positional operands.
    pub fn quant_spec(&self) -> Option<&QuantSpec> {
        match self {
            Op::Quantize(s) | Op::Dequantize(s) | Op::NormQuantize { quant: s, .. } => Some(s),
            Op::EmbedLayerNorm(e) => e.quant.as_ref(),
            _ => None,
        }
    }
}
