//! The fusion pipeline, top to bottom. Each pass's file shows its rewrite as before/after IR.

use super::*;

/// The passes that turn a graph with explicit Q/DQ into fused quantized ops, in order.
///
/// `drop-identity-casts` follows `fold-constants`: casts to the dtype a value already has (the
/// decoder importer's KV-cache casts) vanish before any pass matches around them.
/// `fold-smoothing` runs first: it reads the LayerNorms' constant γ/β as the importer left them
/// and must move the SmoothQuant/AWQ factors into them before `fuse-layernorm-quantize` looks for
/// `quantize(layernorm)`. `cse` runs early too: the recipe places one Q→DQ per matmul input, so the Q, K and V
/// projections reading one LayerNorm output start with three identical quantizes.
/// `fuse-weight-dequant` turns weight-only quantized linear layers (f16/bf16 dequantizes of
/// weights) into qmatmuls that dequantize in the GEMM; `lift-linear`
/// turns the remaining f16/bf16 linear layers into qmatmuls so `fuse-epilogue` fuses them too;
/// `fuse-attention` and `fuse-embedding` then leave one node per kernel; `fuse-kv-cache` lets a
/// decoder's attention read its quantized KV cache's codes, and `fuse-rope` (after it, so it sees
/// whether the cache is quantized) lets the attention rotate its queries and, over a float cache,
/// its step's keys itself; `fuse-attention-output` (after both: it rebuilds the same node) gives
/// that attention the static quantize of its context. `fuse-quant-round-trip` comes after every
/// pass that gives a kernel quantized codes (norms, GEMM operands and epilogues, attention
/// outputs): a quantize whose codes are then only dequantized again becomes one round-trip
/// kernel. `merge-sibling-gemms` ([`OPT_IN`] for encoders; on in decoder plans) comes after every fusion that shapes a
/// `qmatmul` (epilogues, output quantizes, the attention's cache operands), so each sibling
/// enters its segment complete: a decoder's Q/K/V projections become one GEMM. `merge-gate-up`
/// (the same defaults) runs just before it for the same reason: a gated MLP's gate GEMM, whose
/// epilogue `fuse-epilogue` made read the up GEMM's result, and that up GEMM become one.
/// `fuse-norm-prologue` ([`OPT_IN`]) follows both: only then does each decoder RMSNorm have its
/// one GEMM reader, whose skinny kernel computes it.
pub fn fusion() -> Vec<Box<dyn Pass>> {
    vec![
        Box::new(fold_smoothing::FoldSmoothing),
        Box::new(fold_constants::FoldConstants),
        Box::new(drop_identity_casts::DropIdentityCasts),
        Box::new(cse::Cse),
        Box::new(propagate_qdq::PropagateQdq),
        Box::new(fold_scales::FoldScales),
        Box::new(fuse_layernorm_quantize::FuseLayerNormQuantize),
        Box::new(fuse_dq_matmul::FuseDqMatmul),
        Box::new(fuse_weight_dequant::FuseWeightDequant),
        Box::new(lift_linear::LiftLinear),
        Box::new(fuse_epilogue::FuseEpilogue),
        Box::new(fuse_attention::FuseAttention),
        Box::new(fuse_kv_cache::FuseKvCache),
        Box::new(fuse_rope::FuseRope),
        Box::new(fuse_attention_output::FuseAttentionOutput),
        Box::new(fuse_embedding::FuseEmbedding),
        Box::new(fuse_quant_round_trip::FuseQuantRoundTrip),
        Box::new(merge_gate_up::MergeGateUp::default()),
        Box::new(merge_sibling_gemms::MergeSiblingGemms::default()),
        Box::new(fuse_norm_prologue::FuseNormPrologue),
        Box::new(cse::Cse),
        Box::new(dce::Dce),
    ]
}

/// Passes of [`fusion`] that run only when named in [`PassOptions::enable`] (`--enable-pass`).
/// `merge-sibling-gemms` builds `qmatmul_split`; its segmented GEMM kernels matched the
/// interpreter on an H100 (tests/skinny_gpu.rs `split_kernels_match_the_interpreter`) and decoder
/// plans enable it by default (`compile::decoder_passes`); encoder plans (BERT's Q/K/V would
/// merge too) keep it opt-in until a whole encoder plan with it has passed `qfuse check` on a GPU.
/// `merge-gate-up` builds `qmatmul_glu` (a gated MLP's gate and up GEMMs as one): on in decoder
/// plans too, opt-in for encoders (BERT's MLP has no gate).
/// `fuse-norm-prologue` marks RMSNorms that the skinny GEMMs compute in their prologue: its
/// kernels match the interpreter on an H100, but a decode step with it measured slower there
/// (docs/decoders.md), so it stays opt-in. `fuse-attention-output` gives a decoder attention its
/// context's static quantize; it is listed here because the pipeline's defaults are the
/// encoders', and decoder plans enable it (`compile::decoder::decoder_passes`: checked on an
/// H100).
pub const OPT_IN: &[&str] = &["merge-gate-up", "merge-sibling-gemms", "fuse-norm-prologue", "fuse-attention-output"];

/// The pass named `name` (for tests and tools that run one pass).
pub fn by_name(name: &str) -> Option<Box<dyn Pass>> {
    fusion().into_iter().find(|p| p.name() == name)
}
