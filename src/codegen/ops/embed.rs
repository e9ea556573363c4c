//! `embed_layernorm`: BERT's embedding gathers and sums fused with the LayerNorm (and its
//! quantize), one row-engine kernel (`templates/embed_layernorm.cu`, see [`super::norm`]).
//!
//! Row `r = b·S + s` of the result is the LayerNorm of
//! `round_via(round_via(word[ids[r]] + pos[s]) + type[type_ids[r]])` (the interpreter's
//! gather/iota/add chain), then as `layernorm` (one output `y`) or `layernorm_quantize`
//! (`q [, scales] [, normed]`).
//!
//! Signature: `(const i64* ids, const i64* type_ids, const T* word, const T* pos, const T* type,
//! const T* gamma, const T* beta [, const S* scale_in], outputs q [, scales] [, y] | y,
//! long long rows, long long seq)` with `rows = B·S`, `seq = S`.
//!
//! Out-of-range indices never read outside a table: an id outside `[0, V)`, a type id outside
//! `[0, T)` or a position `≥ P` contributes NaN, so the whole row comes out NaN (FP8 NaN codes
//! for a quantized result; a dynamic scale of 1). The interpreter rejects such inputs instead.

use super::norm::{row_launch, row_quant, Norm, RowSpec, Source};
use crate::codegen::kernel::{LowerCx, LowerError, Lowered};
use crate::codegen::template::Template;
use crate::ir::{NodeId, Op, ScaleSource};

const EMBED_LAYERNORM: Template = Template { name: "embed_layernorm.cu", text: include_str!("../../../templates/embed_layernorm.cu") };

/// Lowers an `embed_layernorm` node.
pub fn lower(cx: &LowerCx, node: NodeId) -> Result<Lowered, LowerError> {
    let n = &cx.graph.nodes[node];
    let Op::EmbedLayerNorm(e) = &n.op else {
        return Err(cx.error(node, format!("internal: {} is not embed_layernorm", n.op.mnemonic())));
    };
    let ids = n.inputs[0];
    let dims = cx.dims(ids);
    if dims.len() != 2 {
        return Err(cx.error(node, "embed_layernorm ids must be [B, S]"));
    }
    let word = n.inputs[2];
    let len = *cx.graph.shape(word).last().ok_or_else(|| cx.error(node, "the word table must be [V, H]"))?;
    let source = Source::Embed { ids, type_ids: n.inputs[1], word, pos: n.inputs[3], ty: n.inputs[4], seq: dims[1].clone() };
    let norm = Norm::Layer { gamma: n.inputs[5], beta: Some(n.inputs[6]) };
    let (y, quant) = match &e.quant {
        None => (Some(n.outputs[0]), None),
        Some(spec) => {
            let scale_input = (spec.scale == ScaleSource::Input).then(|| n.inputs[7]);
            let scales_out = spec.is_dynamic().then(|| n.outputs[1]);
            let q = row_quant(cx, node, spec, (Some(n.outputs[0]), cx.graph.shape(n.outputs[0]).len()), scales_out, scale_input)?;
            let y = e.keep_normed.then(|| *n.outputs.last().expect("normed output"));
            (y, Some(q))
        }
    };
    let spec = RowSpec {
        family: "embed_layernorm",
        template: EMBED_LAYERNORM,
        source,
        norm,
        eps: e.eps,
        y_dtype: e.via,
        y,
        quant,
        round_trip: None,
        rows: cx.numel(ids),
        len,
    };
    Ok(Lowered::Launches(vec![row_launch(cx, node, &spec)?]))
}
