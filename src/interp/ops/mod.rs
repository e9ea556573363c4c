//! Op kernels of the reference interpreter, split by family. Each kernel takes its operands as
//! shared tensors (reusing a buffer in place when it holds the only reference), computes in `f32`
//! and returns results already rounded to their output dtypes.

mod decoder;
mod elementwise;
mod fused;
mod glu;
mod matmul;
mod norm;
mod quant;
mod reduce;
mod shape;
mod split;

pub use decoder::inverse_frequencies;
pub(crate) use fused::score_flip_window;
pub use fused::{f32_sum_bound, softmax_relative_bound, CUDA_EXPF_ULP};

use super::tensor::{Tensor, TensorData};
use super::{Accumulation, Perturbation};
use crate::ir::{infer, DType, Op};
use rayon::prelude::*;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// A node output's dtype and concrete shape (symbols resolved).
#[derive(Clone, Debug)]
pub(crate) struct OutType {
    pub dtype: DType,
    pub shape: Vec<usize>,
}

/// How a kernel computes what may differ between correct implementations: the order of its
/// float sums and its transcendental functions (`super::RunOptions`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Numerics {
    pub acc: Accumulation,
    pub perturb: Option<Perturbation>,
}

/// Outputs shorter than this run on one thread.
const PAR_MIN: usize = 1 << 15;

/// [`eval`], turning a panic inside a kernel into an error instead of unwinding into the caller.
pub(crate) fn eval_guarded(op: &Op, args: Vec<Arc<Tensor>>, outs: &[OutType], num: Numerics) -> Result<Vec<Tensor>, String> {
    match catch_unwind(AssertUnwindSafe(|| eval(op, args, outs, num))) {
        Ok(r) => r,
        Err(p) => {
            let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            Err(format!("internal panic: {}", msg.unwrap_or_default()))
        }
    }
}

/// For an op whose quantized output carries the GPU's transcendental error (`attention`: the
/// softmax's `expf`), per output element the lowest and highest code the GPU can produce
/// (`fused::attention_code_window`); `None` for every other op and for unquantized outputs.
pub(crate) fn code_window(op: &Op, args: Vec<Arc<Tensor>>, outs: &[OutType], num: Numerics) -> Result<Option<(Tensor, Tensor)>, String> {
    let want = infer::arity(op);
    if args.len() != want {
        return Err(format!("takes {want} operand(s), got {}", args.len()));
    }
    match op {
        Op::Attention(a) => fused::attention_code_window(a, args.into_iter(), outs, num),
        Op::CausalAttention(a) => decoder::causal_code_window(a, args, outs),
        _ => Ok(None),
    }
}

/// Applies `op` to `args`, producing one tensor per entry of `outs`; products sum and
/// transcendental functions round as `num` says.
fn eval(op: &Op, args: Vec<Arc<Tensor>>, outs: &[OutType], num: Numerics) -> Result<Vec<Tensor>, String> {
    let acc = num.acc;
    let want = infer::arity(op);
    if args.len() != want {
        return Err(format!("takes {want} operand(s), got {}", args.len()));
    }
    let out = outs.first().ok_or("node has no outputs")?;
    let mut args = args.into_iter();
    macro_rules! next {
        () => {{
            let a: Arc<Tensor> = args.next().ok_or_else(|| "missing operand".to_string())?;
            a
        }};
    }
    let t = match op {
        Op::Input { .. } | Op::Weight { .. } => return Err("internal: source op evaluated as a kernel".into()),
        Op::Quantize(spec) => return quant::quantize(spec, next!(), args.collect(), outs),
        Op::Requantize { from_scale, via, to } => return fused::requantize(next!(), *from_scale, *via, to, outs),
        Op::QuantRoundTrip { norm, pre, quant, post } => fused::quant_round_trip(*norm, args, (*pre, quant, *post), out)?,
        Op::NormQuantize { kind, eps, via, quant, keep_normed, .. } => {
            return fused::norm_quantize(*kind, *eps, *via, quant, *keep_normed, args, outs)
        }
        Op::QMatMul(q) => return fused::qmatmul(q, args, outs, num),
        Op::SplitMatMul(s) => return split::split_matmul(s, args.collect(), outs, num),
        Op::GluMatMul(s) => return glu::glu_matmul(s, args.collect(), outs, num),
        Op::Attention(a) => return fused::attention(a, args, outs, num),
        Op::EmbedLayerNorm(e) => return fused::embed_layernorm(e, args, outs),
        Op::CausalAttention(a) => return decoder::causal_attention(a, args.collect(), outs, num.perturb),
        Op::Rope(r) => decoder::rope(r, next!(), &*next!(), out)?,
        Op::Dequantize(spec) => quant::dequantize(spec, next!(), args.collect(), out)?,
        Op::Scalar { value } => elementwise::scalar(*value, out),
        Op::Iota => elementwise::iota(out)?,
        Op::Cast => elementwise::cast(next!(), out),
        Op::Binary(b) => elementwise::binary(*b, next!(), next!(), out)?,
        Op::Unary(u) => elementwise::unary(*u, next!(), out, num.perturb)?,
        Op::Gather => shape::gather(&*next!(), &*next!(), out)?,
        Op::MatMul { transpose_a, transpose_b } => matmul::matmul(&*next!(), &*next!(), *transpose_a, *transpose_b, out, acc)?,
        Op::LayerNorm { eps } => norm::layer_norm(next!(), &*next!(), Some(&*next!()), *eps, out)?,
        Op::RmsNorm { eps, .. } => norm::rms_norm(next!(), &*next!(), *eps, out)?,
        Op::L2Normalize { eps } => norm::l2_normalize(next!(), *eps, out)?,
        Op::Softmax { axis } => reduce::softmax(next!(), *axis, out)?,
        Op::Reduce { op, axes, .. } => reduce::reduce(&*next!(), *op, axes, out)?,
        Op::MeanPool => reduce::mean_pool(&*next!(), &*next!(), out)?,
        Op::LastToken => shape::last_token(&*next!(), out)?,
        Op::Reshape => shape::reshape(next!(), out)?,
        Op::Transpose { perm } => shape::transpose(&*next!(), perm, out)?,
    };
    Ok(vec![t])
}

/// The `f32` elements of `t`, or an error naming its dtype.
fn f32s(t: &Tensor) -> Result<&[f32], String> {
    t.as_f32().ok_or_else(|| format!("expected a float-held operand, got {}", t.dtype))
}

/// The `f32` buffer of `t`, moved out when this is the only reference, copied otherwise.
fn take_f32(t: Arc<Tensor>) -> Result<Vec<f32>, String> {
    match Arc::try_unwrap(t) {
        Ok(Tensor { data: TensorData::F32(v), .. }) => Ok(v),
        Ok(t) => Err(format!("expected a float-held operand, got {}", t.dtype)),
        Err(shared) => f32s(&shared).map(<[f32]>::to_vec),
    }
}

/// A result tensor: `data` rounded to `out.dtype` (for `f32`-held dtypes).
fn finish(out: &OutType, mut data: Vec<f32>) -> Tensor {
    crate::numerics::cast_slice(&mut data, out.dtype);
    Tensor { dtype: out.dtype, shape: out.shape.clone(), data: TensorData::F32(data) }
}

/// A result tensor holding `i64` data (for `i32`/`i64` outputs).
fn finish_i64(out: &OutType, data: Vec<i64>) -> Tensor {
    Tensor { dtype: out.dtype, shape: out.shape.clone(), data: TensorData::I64(data) }
}

/// Calls `f(row_index, row)` for every `row_len`-long row of `data`, in parallel when large.
fn for_rows<T: Send>(data: &mut [T], row_len: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    if row_len == 0 || data.is_empty() {
        return;
    }
    if data.len() < PAR_MIN {
        data.chunks_mut(row_len).enumerate().for_each(|(i, r)| f(i, r));
    } else {
        let min_rows = (PAR_MIN / 4 / row_len).max(1);
        data.par_chunks_mut(row_len).enumerate().with_min_len(min_rows).for_each(|(i, r)| f(i, r));
    }
}

/// Replaces every element by `f(element)`, in parallel when large.
fn map_in_place(data: &mut [f32], f: impl Fn(f32) -> f32 + Sync + Send) {
    let serial = |c: &mut [f32]| c.iter_mut().for_each(|v| *v = f(*v));
    if data.len() < PAR_MIN {
        serial(data);
    } else {
        data.par_chunks_mut(PAR_MIN / 2).for_each(serial);
    }
}

/// Splits `shape` around `axis` into `(outer, extent, inner)` element counts.
fn split_at_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}

/// The flat offset of row `row` (a row-major index over `dims`) under strides `st`.
fn row_offset(mut row: usize, dims: &[usize], st: &[usize]) -> usize {
    let mut off = 0;
    for (&d, &s) in dims.iter().zip(st).rev() {
        if d > 0 {
            off += (row % d) * s;
            row /= d;
        }
    }
    off
}
