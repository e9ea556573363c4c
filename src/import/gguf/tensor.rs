//! Tensor infos: name, dims (innermost first), ggml type and offset, each validated on its own
//! (name length, rank, element count, block geometry) and against the data section (alignment,
//! bounds, overlaps).

use super::cursor::Cursor;
use super::reader::Fault;
use super::GgmlType;

/// Longest tensor name llama.cpp accepts (`GGML_MAX_NAME` − 1 bytes).
pub const MAX_NAME_LEN: usize = 63;
/// Highest rank (`GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;
/// Smallest encoding of a tensor info: empty name, zero dims, type, offset.
pub(super) const MIN_INFO_SIZE: usize = 8 + 4 + 4 + 8;

/// One tensor's entry in the GGUF header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions, innermost (contiguous) first: a PyTorch `[out, in]` weight is `[in, out]`.
    /// Quantization blocks run along `dims[0]`.
    pub dims: Vec<u64>,
    /// Storage type; [`GgmlType::Other`] is accepted here and refused when the data is read.
    pub ty: GgmlType,
    /// Byte offset from the start of the data section (a multiple of the file's alignment).
    pub offset: u64,
}

impl TensorInfo {
    /// Number of values (the product of the dims; 1 for rank 0). The reader has checked that it
    /// fits an `i64`.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Bytes of data, or `None` when the type is one qfuse cannot read.
    pub fn byte_size(&self) -> Option<u64> {
        self.ty.bytes_for(self.n_elements())
    }

    /// Dims outermost first (the PyTorch order: `[out, in]` for a linear weight).
    pub fn shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }

    fn fault(&self, message: String) -> Fault {
        Fault::tensor(&self.name, message)
    }
}

/// Reads tensor info number `index`.
pub(super) fn read_info(cur: &mut Cursor<'_>, index: u64) -> Result<TensorInfo, Fault> {
    let at = |message: String| Fault { item: format!("tensor info #{index}"), message };
    let name = cur.string("tensor name").map_err(at)?.to_owned();
    let fault = |message: String| Fault::tensor(&name, message);
    if name.len() > MAX_NAME_LEN {
        return Err(fault(format!("name is {} bytes long, the limit is {MAX_NAME_LEN}", name.len())));
    }
    let n_dims = cur.u32("rank").map_err(fault)?;
    if n_dims > MAX_DIMS {
        return Err(fault(format!("has {n_dims} dims, the limit is {MAX_DIMS}")));
    }
    let dims = (0..n_dims).map(|_| cur.u64("dimension")).collect::<Result<Vec<u64>, String>>().map_err(fault)?;
    let ty = GgmlType::from_id(cur.u32("ggml type").map_err(fault)?);
    let offset = cur.u64("data offset").map_err(fault)?;
    let info = TensorInfo { name, dims, ty, offset };
    check_geometry(&info)?;
    Ok(info)
}

/// Element count within `i64` (as ggml stores it) and rows a whole number of blocks.
fn check_geometry(info: &TensorInfo) -> Result<(), Fault> {
    let count = info.dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d).filter(|&n| n <= i64::MAX as u64));
    if count.is_none() {
        return Err(info.fault(format!("dims {:?} have more than 2^63 elements", info.dims)));
    }
    let Some((per_block, _)) = info.ty.block() else { return Ok(()) };
    let row = info.dims.first().copied().unwrap_or(1);
    if row % per_block as u64 != 0 {
        return Err(info.fault(format!("rows of {row} values (dims[0]) are not a whole number of {} blocks of {per_block}", info.ty)));
    }
    if info.byte_size().is_none() {
        return Err(info.fault(format!("dims {:?} overflow the byte size of {}", info.dims, info.ty)));
    }
    Ok(())
}

/// Checks every tensor's offset against the alignment and its byte range against the data
/// section of `data_len` bytes, and that no two tensors share bytes. Tensors of unreadable types
/// have no known size: only their offset is checked.
pub(super) fn check_ranges(tensors: &[TensorInfo], data_len: u64, alignment: u64) -> Result<(), Fault> {
    let mut spans = Vec::with_capacity(tensors.len());
    for (i, t) in tensors.iter().enumerate() {
        if t.offset % alignment != 0 {
            return Err(t.fault(format!("offset {} is not a multiple of the alignment {alignment}", t.offset)));
        }
        let size = t.byte_size().unwrap_or(0);
        let end = t.offset.checked_add(size).filter(|&end| end <= data_len);
        let Some(end) = end else {
            return Err(
                t.fault(format!("bytes {}..{}+{size} run past the data section's {data_len} bytes (truncated file?)", t.offset, t.offset))
            );
        };
        if size > 0 {
            spans.push((t.offset, end, i));
        }
    }
    spans.sort_unstable();
    for pair in spans.windows(2) {
        let ((_, end, a), (start, _, b)) = (pair[0], pair[1]);
        if start < end {
            let (first, later) = (a.min(b), a.max(b));
            let message = format!("its bytes overlap those of tensor `{}`", tensors[first].name);
            return Err(tensors[later].fault(message));
        }
    }
    Ok(())
}
