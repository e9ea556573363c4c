//! Data movement: `reshape` (no copy when the operand is not shared), `last_token`, `transpose` (any
//! permutation; rows of the output are copied whole when the last axis stays last, as in
//! `[B,S,H,D] → [B,H,S,D]`) and `gather` (an out-of-range index is an error naming its position).

use super::{for_rows, row_offset, OutType};
use crate::interp::tensor::{strides, Tensor, TensorData};
use std::sync::Arc;

/// `reshape`: same elements, the declared shape.
pub(super) fn reshape(x: Arc<Tensor>, out: &OutType) -> Result<Tensor, String> {
    if x.numel() != out.shape.iter().product::<usize>() {
        return Err(format!("cannot reshape {:?} to {:?}", x.shape, out.shape));
    }
    let data = Arc::try_unwrap(x).map(|t| t.data).unwrap_or_else(|shared| shared.data.clone());
    Ok(Tensor { dtype: out.dtype, shape: out.shape.clone(), data })
}

/// `last_token`: `x [B,S,H] → [B,1,H]`, each sequence's row `S − 1`.
pub(super) fn last_token(x: &Tensor, out: &OutType) -> Result<Tensor, String> {
    let &[b, s, h] = x.shape.as_slice() else { return Err(format!("last_token wants [B,S,H], got {:?}", x.shape)) };
    if s == 0 || h == 0 || out.shape != [b, 1, h] {
        return Err(format!("last_token of {:?} cannot give {:?}", x.shape, out.shape));
    }
    // Row i·S + S − 1 of x seen as [B·S, H].
    let rows: Vec<i64> = (0..b).map(|i| (i * s + s - 1) as i64).collect();
    let data = match &x.data {
        TensorData::F32(v) => TensorData::F32(take_rows(v, &rows, h)),
        TensorData::I64(v) => TensorData::I64(take_rows(v, &rows, h)),
    };
    Ok(Tensor { dtype: out.dtype, shape: out.shape.clone(), data })
}

/// `transpose`: `y.shape[i] = x.shape[perm[i]]`.
pub(super) fn transpose(x: &Tensor, perm: &[usize], out: &OutType) -> Result<Tensor, String> {
    let r = x.rank();
    let mut seen = vec![false; r];
    if perm.len() != r || perm.iter().any(|&p| p >= r || std::mem::replace(&mut seen[p], true)) {
        return Err(format!("{perm:?} is not a permutation of rank {r}"));
    }
    let data = match &x.data {
        TensorData::F32(v) => TensorData::F32(permute(v, &x.shape, perm)),
        TensorData::I64(v) => TensorData::I64(permute(v, &x.shape, perm)),
    };
    Ok(Tensor { dtype: out.dtype, shape: perm.iter().map(|&p| x.shape[p]).collect(), data })
}

fn permute<T: Copy + Default + Send + Sync>(x: &[T], shape: &[usize], perm: &[usize]) -> Vec<T> {
    let r = shape.len();
    if r == 0 || x.is_empty() || perm.iter().enumerate().all(|(i, &p)| i == p) {
        return x.to_vec();
    }
    let ist = strides(shape);
    let oshape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let pst: Vec<usize> = perm.iter().map(|&p| ist[p]).collect();
    let (last, inner) = (oshape[r - 1], pst[r - 1]);
    let mut out = vec![T::default(); x.len()];
    for_rows(&mut out, last, |i, row| {
        let base = row_offset(i, &oshape[..r - 1], &pst[..r - 1]);
        if inner == 1 {
            row.copy_from_slice(&x[base..base + last]);
        } else {
            row.iter_mut().enumerate().for_each(|(j, o)| *o = x[base + j * inner]);
        }
    });
    out
}

/// `gather`: rows of `table` (axis 0) selected by `indices`.
pub(super) fn gather(table: &Tensor, indices: &Tensor, out: &OutType) -> Result<Tensor, String> {
    let idx = indices.as_i64().ok_or_else(|| format!("indices must be i32/i64, got {}", indices.dtype))?;
    let rows = *table.shape.first().ok_or("table needs rank ≥ 1")?;
    let want: Vec<usize> = indices.shape.iter().chain(&table.shape[1..]).copied().collect();
    if want != out.shape {
        return Err(format!("result shape {want:?} differs from the declared {:?}", out.shape));
    }
    if let Some((pos, &bad)) = idx.iter().enumerate().find(|(_, &i)| i < 0 || i as u64 >= rows as u64) {
        return Err(format!("index {bad} at position {pos} is out of range for a table of {rows} rows"));
    }
    let row: usize = table.shape[1..].iter().product();
    let data = match &table.data {
        TensorData::F32(t) => TensorData::F32(take_rows(t, idx, row)),
        TensorData::I64(t) => TensorData::I64(take_rows(t, idx, row)),
    };
    Ok(Tensor { dtype: out.dtype, shape: want, data })
}

fn take_rows<T: Copy + Default + Send + Sync>(table: &[T], idx: &[i64], row: usize) -> Vec<T> {
    let mut out = vec![T::default(); idx.len() * row];
    for_rows(&mut out, row, |i, o| o.copy_from_slice(&table[idx[i] as usize * row..][..row]));
    out
}
