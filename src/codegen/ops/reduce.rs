//! Reductions: `softmax` over the last axis (a row-engine kernel, `templates/softmax.cu`, see
//! [`super::norm`]; signature `(x, y, long long rows[, long long n])`) and `mean_pool`
//! (`templates/mean_pool.cu`; signature `(hidden, mask, out, long long S, long long H)`, grid
//! `(ceil_div(H, 64), B)`, block 256).
//!
//! Softmax: max in f32 (NaN ignored, as the interpreter's fold), `exp` in f64 rounded to f32 (the
//! interpreter calls glibc's nearly correctly rounded `expf`; CUDA's `expf` is off by up to 2
//! ulp), sum and division in f64. A row that is all −inf, or holds a NaN, becomes NaN. The row
//! length may be symbolic (attention scores `[B,H,S,S]`): then the kernel is sized for the
//! symbol's maximum and reads `n` at run time. Other axes: not supported (a specific error).
//!
//! `reduce_sum` / `reduce_mean` / `reduce_max` have no kernel yet.

use super::common::{prelude_values, render, trait_or_err, Sig};
use super::norm::{row_launch, Norm, RowSpec, Source};
use crate::codegen::kernel::{LowerCx, LowerError, Lowered};
use crate::codegen::template::Template;
use crate::ir::{normalize_axis, NodeId, Op};

const SOFTMAX: Template = Template { name: "softmax.cu", text: include_str!("../../../templates/softmax.cu") };
const MEAN_POOL: Template = Template { name: "mean_pool.cu", text: include_str!("../../../templates/mean_pool.cu") };

/// Largest batch the `mean_pool` grid's y extent allows.
const MAX_GRID_Y: u64 = 65535;

/// Lowers `softmax` and `mean_pool`.
pub fn lower(cx: &LowerCx, node: NodeId) -> Result<Lowered, LowerError> {
    let n = &cx.graph.nodes[node];
    match &n.op {
        Op::Softmax { axis } => softmax(cx, node, *axis),
        Op::MeanPool => mean_pool(cx, node),
        other => Err(cx.error(node, format!("no kernel for `{}` yet", other.mnemonic()))),
    }
}

fn softmax(cx: &LowerCx, node: NodeId, axis: i64) -> Result<Lowered, LowerError> {
    let n = &cx.graph.nodes[node];
    let (x, y) = (n.inputs[0], n.outputs[0]);
    let shape = cx.graph.shape(x);
    let rank = shape.len();
    let a = normalize_axis(axis, rank).ok_or_else(|| cx.error(node, format!("softmax axis {axis} out of range")))?;
    if a + 1 != rank {
        return Err(cx.error(node, format!("softmax over axis {axis} of a rank-{rank} tensor: only the last axis has a kernel")));
    }
    let spec = RowSpec {
        family: "softmax",
        template: SOFTMAX,
        source: Source::Dense(x),
        norm: Norm::Softmax,
        eps: 0.0,
        y_dtype: cx.graph.ty(y).dtype,
        y: Some(y),
        quant: None,
        round_trip: None,
        rows: cx.rows(x),
        len: shape[rank - 1],
    };
    Ok(Lowered::Launches(vec![row_launch(cx, node, &spec)?]))
}

fn mean_pool(cx: &LowerCx, node: NodeId) -> Result<Lowered, LowerError> {
    let n = &cx.graph.nodes[node];
    let (hidden, mask, out) = (n.inputs[0], n.inputs[1], n.outputs[0]);
    let dims = cx.dims(hidden);
    if dims.len() != 3 {
        return Err(cx.error(node, "mean_pool wants hidden [B, S, H]"));
    }
    let max = cx.max_shape(hidden);
    if max[0] > MAX_GRID_Y {
        return Err(cx.error(node, format!("batch up to {} exceeds the grid's y limit {MAX_GRID_Y}", max[0])));
    }
    let ht = trait_or_err(cx, node, cx.graph.ty(hidden).dtype, "hidden")?;
    let mt = trait_or_err(cx, node, cx.graph.ty(mask).dtype, "the mask")?;
    let ot = trait_or_err(cx, node, cx.graph.ty(out).dtype, "the result")?;
    let mut sig = Sig::default();
    sig.input("hidden", &format!("{ht}::T"), hidden);
    sig.input("mask", &format!("{mt}::T"), mask);
    sig.output("out", &format!("{ot}::T"), out);
    sig.dim("S", dims[1].clone());
    sig.dim("H", dims[2].clone());
    let mut values: Vec<(&str, String)> = prelude_values().into_iter().collect();
    values.extend([("hidden_t", ht.to_string()), ("mask_t", mt.to_string()), ("out_t", ot.to_string())]);
    let source = render(cx, node, &MEAN_POOL, &values)?;
    let grid = [dims[2].clone().ceil_div(64), dims[0].clone(), 1.into()];
    Ok(Lowered::Launches(vec![sig.launch("mean_pool", source, grid, [256, 1, 1], 0)]))
}
