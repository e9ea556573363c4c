//! Data movement: `transpose`, `gather`, `last_token` and `iota`.
//!
//! - `transpose`: an element-wise copy ([`super::elementwise::emit`], signature `(in0, out, n,
//!   sym_*…)`) whose operand walks the input with permuted strides. When the last axis stays
//!   last and its bytes allow, elements are moved as packs of up to 16 bytes (`[B,S,12,32]` f16 →
//!   `[B,12,S,32]` copies `uint4`s), and axes that stay adjacent are merged. The identity
//!   permutation is a view ([`Lowered::Alias`]).
//! - `gather` (`templates/gather.cu`): rows of the table along axis 0, one warp per index;
//!   signature `(table, idx, out, long long n, long long V, long long R)` with `n` indices, `V`
//!   table rows, `R` packs per row; grid `ceil_div(n, 4)`, block 128. An out-of-range index writes
//!   a poison row (NaN for float tables, 0 for integer tables) instead of reading out of bounds.
//! - `last_token` (`templates/last_token.cu`): `x [B,S,H] → [B,1,H]`, row `S − 1` of each sequence;
//!   signature `(x, out, long long B, long long S, long long R)` with `R` packs of up to 16 bytes
//!   per row; grid `ceil_div(B·R, 256)`, block 256.
//! - `iota` (`templates/iota.cu`): `(out, long long n)`, grid `ceil_div(n, 256)`, block 256.

use super::common::{prelude_values, render, trait_or_err, Prod, Sig};
use super::elementwise::{bytes_or_err, emit, raw_type, Load, Operand, Spec};
use crate::codegen::kernel::{LowerCx, LowerError, Lowered};
use crate::codegen::template::Template;
use crate::ir::{DType, Dim, NodeId, Op};

const GATHER: Template = Template { name: "gather.cu", text: include_str!("../../../templates/gather.cu") };
const LAST_TOKEN: Template = Template { name: "last_token.cu", text: include_str!("../../../templates/last_token.cu") };
const IOTA: Template = Template { name: "iota.cu", text: include_str!("../../../templates/iota.cu") };

/// Lowers `transpose`, `gather` and `iota`.
pub fn lower(cx: &LowerCx, node: NodeId) -> Result<Lowered, LowerError> {
    let n = &cx.graph.nodes[node];
    match &n.op {
        Op::Transpose { perm } => transpose(cx, node, perm),
        Op::Gather => gather(cx, node),
        Op::LastToken => last_token(cx, node),
        Op::Iota => iota(cx, node),
        other => Err(cx.error(node, format!("internal: {} is not a data-movement op", other.mnemonic()))),
    }
}

/// The widest pack (bytes, ≤ 16) that divides `row_bytes` and holds whole elements.
pub(crate) fn pack_bytes(row_bytes: u64, elem: u64) -> u64 {
    [16, 8, 4, 2, 1].into_iter().find(|&p| p >= elem && row_bytes % p == 0 && p % elem == 0).unwrap_or(elem)
}

fn transpose(cx: &LowerCx, node: NodeId, perm: &[usize]) -> Result<Lowered, LowerError> {
    let n = &cx.graph.nodes[node];
    let (x, y) = (n.inputs[0], n.outputs[0]);
    if perm.iter().enumerate().all(|(i, &p)| i == p) {
        return Ok(Lowered::Alias(x));
    }
    let dt = cx.graph.ty(x).dtype;
    let eb = bytes_or_err(cx, node, dt)?;
    let mut in_dims: Vec<Dim> = cx.graph.shape(x).to_vec();
    let r = in_dims.len();
    // Pack the last axis when it stays last and has a fixed extent.
    let mut pb = eb;
    if perm[r - 1] == r - 1 {
        if let Dim::Fixed(l) = in_dims[r - 1] {
            pb = pack_bytes(l * eb, eb);
            in_dims[r - 1] = Dim::Fixed(l * eb / pb);
        }
    }
    let in_strides: Vec<Prod> = (0..r).map(|k| Prod::of_all(&in_dims[k + 1..])).collect();
    let extents: Vec<Prod> = perm.iter().map(|&p| Prod::of(in_dims[p])).collect();
    let strides = perm.iter().map(|&p| Some(in_strides[p].clone())).collect();
    let c_type = raw_type(pb).to_string();
    let spec = Spec {
        doc: format!("transpose {perm:?} of {dt} ({pb}-byte elements)"),
        out: y,
        out_c_type: c_type.clone(),
        extents,
        operands: vec![Operand { value: x, c_type, load: Load::Raw, strides }],
        compute: "        out[i] = x0;\n".into(),
        scalars: vec![],
    };
    Ok(Lowered::Launches(vec![emit(cx, node, spec)?]))
}

/// The stored bit pattern of a NaN (floats) or 0 (integers), for poison rows.
fn poison_bits(dt: DType) -> u64 {
    match dt {
        DType::F32 => 0x7fc0_0000,
        DType::F16 => 0x7e00,
        DType::BF16 => 0x7fc0,
        DType::F8E4M3 => 0x7f,
        DType::F8E5M2 => 0x7f,
        _ => 0,
    }
}

fn gather(cx: &LowerCx, node: NodeId) -> Result<Lowered, LowerError> {
    let n = &cx.graph.nodes[node];
    let (table, idx, out) = (n.inputs[0], n.inputs[1], n.outputs[0]);
    let dt = cx.graph.ty(table).dtype;
    let eb = bytes_or_err(cx, node, dt)?;
    let index_t = match cx.graph.ty(idx).dtype {
        DType::I64 => "int64_t",
        DType::I32 => "int32_t",
        other => return Err(cx.error(node, format!("gather indices of dtype {other} have no kernel (i32/i64)"))),
    };
    let tshape = cx.graph.shape(table);
    let row = Prod::of_all(&tshape[1..]);
    let (pb, packs) = if row.syms.is_empty() {
        let pb = pack_bytes(row.c * eb, eb);
        (pb, crate::plan::DimExpr::Const(row.c * eb / pb))
    } else {
        (eb, row.dim_expr(cx.graph))
    };
    // The poison pattern repeated over the pack.
    let elem = poison_bits(dt);
    let mut word: u128 = 0;
    for k in 0..(pb / eb) {
        word |= u128::from(elem) << (8 * eb * k);
    }
    let poison = match pb {
        16 => {
            let w = |k: u32| format!("{:#010x}u", (word >> (32 * k)) as u32);
            format!("{{{}, {}, {}, {}}}", w(0), w(1), w(2), w(3))
        }
        8 => format!("{{{:#018x}ull}}", word as u64),
        _ => format!("{{{:#x}u}}", word as u64),
    };
    let poison_doc = if dt.is_float() { "NaN" } else { "zeros" };
    let mut sig = Sig::default();
    let p = raw_type(pb);
    sig.input("table", p, table);
    sig.input("idx", index_t, idx);
    sig.output("out", p, out);
    sig.dim("n", cx.numel(idx));
    sig.dim("V", cx.dim(tshape[0]));
    sig.dim("R", packs);
    let mut values: Vec<(&str, String)> = vec![("prelude", crate::codegen::prelude()), ("kernel_name", "{{kernel_name}}".to_string())];
    values.extend([
        ("pack_t", p.to_string()),
        ("index_t", index_t.to_string()),
        ("poison", poison),
        ("poison_doc", poison_doc.to_string()),
    ]);
    let source = render(cx, node, &GATHER, &values)?;
    let grid = [cx.numel(idx).ceil_div(4), 1.into(), 1.into()];
    Ok(Lowered::Launches(vec![sig.launch("gather", source, grid, [128, 1, 1], 0)]))
}

fn last_token(cx: &LowerCx, node: NodeId) -> Result<Lowered, LowerError> {
    let n = &cx.graph.nodes[node];
    let (x, out) = (n.inputs[0], n.outputs[0]);
    let dt = cx.graph.ty(x).dtype;
    let eb = bytes_or_err(cx, node, dt)?;
    let shape = cx.graph.shape(x);
    let Dim::Fixed(h) = shape[2] else { return Err(cx.error(node, "last_token needs a fixed last extent")) };
    let pb = pack_bytes(h * eb, eb);
    let p = raw_type(pb);
    let mut sig = Sig::default();
    sig.input("x", p, x);
    sig.output("out", p, out);
    sig.dim("B", cx.dim(shape[0]));
    sig.dim("S", cx.dim(shape[1]));
    sig.dim("R", crate::plan::DimExpr::Const(h * eb / pb));
    let values: Vec<(&str, String)> =
        vec![("prelude", crate::codegen::prelude()), ("kernel_name", "{{kernel_name}}".to_string()), ("pack_t", p.to_string())];
    let source = render(cx, node, &LAST_TOKEN, &values)?;
    let grid = [cx.dim(shape[0]).mul(crate::plan::DimExpr::Const(h * eb / pb)).ceil_div(256), 1.into(), 1.into()];
    Ok(Lowered::Launches(vec![sig.launch("last_token", source, grid, [256, 1, 1], 0)]))
}

fn iota(cx: &LowerCx, node: NodeId) -> Result<Lowered, LowerError> {
    let y = cx.graph.nodes[node].outputs[0];
    let dt = cx.graph.ty(y).dtype;
    let t = trait_or_err(cx, node, dt, "the result")?;
    let value = match dt {
        DType::I64 => "static_cast<D::T>(i)".to_string(),
        DType::I32 if Prod::of_all(cx.graph.shape(y)).max(cx.graph) <= (i32::MAX as u128) => "static_cast<D::T>(i)".to_string(),
        _ => "D::store(static_cast<float>(i))".to_string(),
    };
    let mut sig = Sig::default();
    sig.output("out", &format!("{t}::T"), y);
    sig.dim("n", cx.numel(y));
    let mut values: Vec<(&str, String)> = prelude_values().into_iter().collect();
    values.extend([("out_t", t.to_string()), ("value", value)]);
    let source = render(cx, node, &IOTA, &values)?;
    let grid = [cx.numel(y).ceil_div(256), 1.into(), 1.into()];
    Ok(Lowered::Launches(vec![sig.launch("iota", source, grid, [256, 1, 1], 0)]))
}
