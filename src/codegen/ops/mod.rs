//! Per-op lowering: one module per kernel family, and the dispatcher [`lower_node`].

pub mod attention;
mod common;
pub mod decoder;
pub mod elementwise;
pub mod embed;
pub mod glu;
pub mod norm;
pub mod prologue;
pub mod qmatmul;
pub mod quantize;
pub mod reduce;
pub mod shape;
pub mod skinny;
pub mod split;
pub mod wonly;

use super::kernel::{LowerCx, LowerError, Lowered};
use crate::ir::{NodeId, Op};

/// Lowers one node: source ops need no code, views alias their operand, everything else becomes
/// launches from its kernel family's module.
pub fn lower_node(cx: &LowerCx, node: NodeId) -> Result<Lowered, LowerError> {
    let n = &cx.graph.nodes[node];
    match &n.op {
        Op::Input { .. } | Op::Weight { .. } | Op::Scalar { .. } => Ok(Lowered::Nothing),
        Op::Reshape => Ok(Lowered::Alias(n.inputs[0])),
        // Weight-only (`b_dequant`): skinny (M ≤ 16) / tiled GEMM with in-register dequantization.
        Op::QMatMul(q) if q.b_dequant.is_some() => wonly::lower(cx, node),
        Op::QMatMul(_) => qmatmul::lower(cx, node),
        // Q/K/V as one GEMM over concatenated weights, one epilogue per output segment.
        Op::SplitMatMul(_) => split::lower(cx, node),
        // A gated MLP's gate and up as one GEMM over interleaved weights, SwiGLU in its epilogue.
        Op::GluMatMul(_) => glu::lower(cx, node),
        Op::Attention(_) => attention::lower(cx, node),
        Op::Cast | Op::Unary(_) | Op::Binary(_) => elementwise::lower(cx, node),
        Op::LayerNorm { .. } | Op::RmsNorm { .. } | Op::NormQuantize { .. } | Op::L2Normalize { .. } => norm::lower(cx, node),
        Op::EmbedLayerNorm(_) => embed::lower(cx, node),
        Op::Quantize(_) | Op::Dequantize(_) | Op::Requantize { .. } | Op::QuantRoundTrip { .. } => quantize::lower(cx, node),
        Op::Softmax { .. } | Op::MeanPool => reduce::lower(cx, node),
        Op::Transpose { .. } | Op::Gather | Op::LastToken | Op::Iota => shape::lower(cx, node),
        Op::Rope(_) | Op::CausalAttention(_) => decoder::lower(cx, node),
        Op::MatMul { .. } => Err(cx.error(node, "no kernel for `matmul` yet (float matmuls must be rewritten to qmatmul or attention)")),
        Op::Reduce { .. } => Err(cx.error(node, format!("no kernel for `{}` yet", n.op.mnemonic()))),
        #[allow(unreachable_patterns)]
        other => Err(cx.error(node, format!("no kernel for `{}` yet", other.mnemonic()))),
    }
}
