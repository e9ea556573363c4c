//! Graph state (a decoder's KV cache) as interpreter inputs.

use super::tensor::{Tensor, TensorData};
use crate::ir::{Dim, Graph};

/// Empty state tensors for one sequence: each state input of `g` with extent 0 along its state
/// axis, 1 for the other symbols (the batch) and its fixed extents elsewhere, by input name.
/// Fails naming a state slot whose input the graph does not declare.
pub fn empty_state(g: &Graph) -> Result<Vec<(&'static str, Tensor)>, String> {
    empty_state_for(g, 1)
}

/// [`empty_state`] for `batch` sequences: the other symbols (the batch) get extent `batch`.
pub fn empty_state_for(g: &Graph, batch: usize) -> Result<Vec<(&'static str, Tensor)>, String> {
    let inputs = g.inputs();
    g.state
        .iter()
        .map(|slot| {
            let (_, v) = inputs.iter().find(|(n, _)| *n == slot.input).ok_or_else(|| format!("state input `{}` is missing", slot.input))?;
            let ty = g.ty(*v);
            let shape = ty
                .shape
                .iter()
                .enumerate()
                .map(|(i, d)| match d {
                    _ if i == slot.axis => 0,
                    Dim::Fixed(n) => *n as usize,
                    Dim::Sym(_) => batch,
                })
                .collect();
            Ok((crate::util::intern(&slot.input), Tensor { dtype: ty.dtype, shape, data: TensorData::F32(vec![]) }))
        })
        .collect()
}
