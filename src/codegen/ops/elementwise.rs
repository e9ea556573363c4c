//! Element-wise kernels from `templates/elementwise.cu`: `cast`, unary and binary ops (NumPy
//! broadcasting), and — through [`emit`] — static quantize / dequantize / requantize
//! ([`super::quantize`]) and transposes ([`super::shape`]).
//!
//! Kernel signature: `(const T0* in0, const T1* in1, …, Ty* out, long long n, long long sym_<S>…,
//! float c0…)`: one pointer per non-literal operand in operand order, the output, the element
//! count, every shape symbol the index arithmetic needs (by symbol index order), then the
//! per-launch constants ([`Spec::scalars`]: literal operands `c<k>`, static scales). Launch: grid
//! `ceil_div(n, 1024)`, block 256, each thread 4 elements 256 apart.
//!
//! Broadcasting is fixed at compile time: the IR's broadcast rule (`infer::broadcast_shapes`)
//! only stretches extents that are literally `1`, so which operand walks which output axis is
//! known from the types; only the extents of symbolic axes are read at run time (the `sym_*`
//! parameters). [`Walk`] drops extent-1 axes and merges axes every operand walks contiguously,
//! so most operands are read at offset `i` (same shape), `0` (scalar) or `i % H` (bias).
//!
//! Numerics (the interpreter's, `src/interp/ops/elementwise.rs`): operands are widened exactly to
//! f32 (`i64` → f32 rounds to nearest even, as Rust's `as f32`); one op in f32; the store is the
//! output dtype's cast (the IR's rounding step). Literal operands (`scalar` nodes) are `float`
//! parameters passed bit-exactly, already rounded to their dtype. `max`/`min` propagate NaN and `relu` keeps
//! NaN (and −0), unlike `fmaxf`. `cast` between `i32`/`i64` stays in integers (saturating).

use super::common::{
    broadcast_strides, ceil_div, elem_bytes, idx_type, literal_f32, params_of, prelude_values, render, sym_param, trait_or_err, Prod, Sig,
    Walk,
};
use crate::codegen::expr::{Expr, Fn1, Fn2};
use crate::codegen::kernel::{Launch, LowerCx, LowerError, Lowered};
use crate::codegen::template::Template;
use crate::ir::{BinaryOp, DType, NodeId, Op, UnaryOp, ValueId};

/// `templates/elementwise.cu`.
pub(crate) const ELEMENTWISE: Template = Template { name: "elementwise.cu", text: include_str!("../../../templates/elementwise.cu") };

/// How an operand's element becomes the kernel-local `x<k>`.
#[derive(Debug, Clone)]
pub(crate) enum Load {
    /// `const float x<k> = <trait>::load(…)`.
    Float(&'static str),
    /// `const long long x<k> = static_cast<long long>(…)` (integer casts).
    Int,
    /// `const <c_type> x<k> = …` unchanged (copies).
    Raw,
}

/// One pointer operand of an element-wise kernel.
#[derive(Debug, Clone)]
pub(crate) struct Operand {
    /// The IR value (the launch argument).
    pub value: ValueId,
    /// Its C element type (`uint16_t`, `uint4` for packed copies, …).
    pub c_type: String,
    /// How it is read.
    pub load: Load,
    /// Stride per output axis (`None` = broadcast along it).
    pub strides: Vec<Option<Prod>>,
}

/// A complete element-wise kernel.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    /// One line for the source's header comment.
    pub doc: String,
    /// The output value and its C element type.
    pub out: ValueId,
    pub out_c_type: String,
    /// Output extents per axis (outer → inner), in elements of `out_c_type`.
    pub extents: Vec<Prod>,
    /// Pointer operands `in0, in1, …`, loaded as `x0, x1, …`.
    pub operands: Vec<Operand>,
    /// Statements (8-space indent, one per line, newline-terminated) computing from `x<k>` and
    /// the scalars, ending with the store `out[i] = …;`.
    pub compute: String,
    /// Per-launch constants the statements read (`float` parameters after the sizes), with the
    /// exact values the launch passes: literal operands and static scales, so that layers that
    /// differ only in them share one kernel.
    pub scalars: Vec<(String, f32)>,
}

/// Renders and packages an element-wise kernel.
pub(crate) fn emit(cx: &LowerCx, node: NodeId, spec: Spec) -> Result<Launch, LowerError> {
    let g = cx.graph;
    let strides: Vec<Vec<Option<Prod>>> = spec.operands.iter().map(|o| o.strides.clone()).collect();
    let walk = Walk::new(spec.extents.clone(), strides);
    let numel = spec.extents.iter().fold(Prod::one(), |p, e| p.mul(e));
    let idx_t = idx_type(numel.max(g));

    let mut sig = Sig::default();
    for (k, o) in spec.operands.iter().enumerate() {
        sig.input(&format!("in{k}"), &o.c_type, o.value);
    }
    sig.output("out", &spec.out_c_type, spec.out);
    sig.dim("n", numel.dim_expr(g));
    for s in walk.symbols() {
        sig.dim(&sym_param(g, s), crate::plan::DimExpr::sym(g.symbols[s].name.clone()));
    }
    for (name, value) in &spec.scalars {
        sig.scalar(name, *value);
    }

    let (coords, offs) = walk.offsets(g);
    let mut body = coords;
    for (k, (o, off)) in spec.operands.iter().zip(&offs).enumerate() {
        let line = match &o.load {
            Load::Float(t) => format!("        const float x{k} = {t}::load(in{k}[{off}]);\n"),
            Load::Int => format!("        const long long x{k} = static_cast<long long>(in{k}[{off}]);\n"),
            Load::Raw => format!("        const {} x{k} = in{k}[{off}];\n", o.c_type),
        };
        body.push_str(&line);
    }
    body.push_str(&spec.compute);

    let mut values: Vec<(&str, String)> = prelude_values().into_iter().collect();
    values.extend([
        ("doc", spec.doc.clone()),
        ("idx_t", idx_t.to_string()),
        ("params", sig.c_params()),
        ("prologue", walk.prologue(g)),
        ("body", body),
    ]);
    let source = render(cx, node, &ELEMENTWISE, &values)?;
    let grid = [ceil_div(numel.dim_expr(g), 1024), 1.into(), 1.into()];
    Ok(sig.launch("elementwise", source, grid, [256, 1, 1], 0))
}

/// An operand that is either a literal (a per-launch `float` parameter `c<k>`) or a pointer
/// operand `x<k>`.
pub(crate) enum Term {
    /// A `scalar` node's value (already rounded to its dtype), passed at launch.
    Lit(f32),
    /// A pointer operand.
    Ptr(Operand),
}

/// Literal or broadcast pointer operand for `v` (read as f32), against an output of rank `rank`.
pub(crate) fn float_term(cx: &LowerCx, node: NodeId, v: ValueId, rank: usize, what: &str) -> Result<Term, LowerError> {
    if let Some(x) = literal_f32(cx, v) {
        return Ok(Term::Lit(x));
    }
    let dt = cx.graph.ty(v).dtype;
    let t = trait_or_err(cx, node, dt, what)?;
    Ok(Term::Ptr(Operand {
        value: v,
        c_type: format!("{t}::T"),
        load: Load::Float(t),
        strides: broadcast_strides(cx.graph.shape(v), rank),
    }))
}

/// Splits terms into pointer operands and the expressions naming them (`x<k>` / the parameter
/// `c<k>`, whose value [`params_of`] collects for [`Spec::scalars`]).
pub(crate) fn terms_to_exprs(terms: Vec<Term>) -> (Vec<Operand>, Vec<Expr>, Vec<String>) {
    let mut ops = Vec::new();
    let mut exprs = Vec::new();
    let mut vars = Vec::new();
    let mut lits = 0;
    for t in terms {
        match t {
            Term::Lit(x) => {
                exprs.push(Expr::param(format!("c{lits}"), x));
                lits += 1;
            }
            Term::Ptr(o) => {
                let name = format!("x{}", ops.len());
                exprs.push(Expr::var(name.clone()));
                vars.push(name);
                ops.push(o);
            }
        }
    }
    (ops, exprs, vars)
}

/// The output extents of `v`.
pub(crate) fn out_extents(cx: &LowerCx, v: ValueId) -> Vec<Prod> {
    cx.graph.shape(v).iter().map(|&d| Prod::of(d)).collect()
}

/// Lowers `cast`, unary and binary ops.
pub fn lower(cx: &LowerCx, node: NodeId) -> Result<Lowered, LowerError> {
    let n = &cx.graph.nodes[node];
    let launch = match &n.op {
        Op::Cast => cast(cx, node)?,
        Op::Unary(u) => unary(cx, node, *u)?,
        Op::Binary(b) => binary(cx, node, *b)?,
        other => return Err(cx.error(node, format!("internal: {} is not element-wise", other.mnemonic()))),
    };
    Ok(Lowered::Launches(vec![launch]))
}

fn is_wide_int(dt: DType) -> bool {
    matches!(dt, DType::I32 | DType::I64)
}

fn cast(cx: &LowerCx, node: NodeId) -> Result<Launch, LowerError> {
    let n = &cx.graph.nodes[node];
    let (x, y) = (n.inputs[0], n.outputs[0]);
    let (from, to) = (cx.graph.ty(x).dtype, cx.graph.ty(y).dtype);
    let rank = cx.graph.shape(y).len();
    let ft = trait_or_err(cx, node, from, "the operand")?;
    let tt = trait_or_err(cx, node, to, "the result")?;
    if let Some(v) = literal_f32(cx, x) {
        // A cast of a literal (not folded upstream): a constant fill.
        let c = Expr::param("c0", v);
        let compute = format!("        out[i] = {tt}::store({});\n", c.to_cuda());
        let spec = Spec {
            doc: format!("cast literal -> {to}"),
            out: y,
            out_c_type: format!("{tt}::T"),
            extents: out_extents(cx, y),
            operands: vec![],
            compute,
            scalars: c.params(),
        };
        return emit(cx, node, spec);
    }
    let strides = broadcast_strides(cx.graph.shape(x), rank);
    let (load, compute) = if is_wide_int(from) && is_wide_int(to) {
        let store = if to == DType::I32 {
            "        out[i] = static_cast<int32_t>(x0 < -2147483648ll ? -2147483648ll : (x0 > 2147483647ll ? 2147483647ll : x0));\n"
                .to_string()
        } else {
            "        out[i] = x0;\n".to_string()
        };
        (Load::Int, store)
    } else {
        (Load::Float(ft), format!("        out[i] = {tt}::store(x0);\n"))
    };
    let operands = vec![Operand { value: x, c_type: format!("{ft}::T"), load, strides }];
    let spec = Spec {
        doc: format!("cast {from} -> {to}"),
        out: y,
        out_c_type: format!("{tt}::T"),
        extents: out_extents(cx, y),
        operands,
        compute,
        scalars: vec![],
    };
    emit(cx, node, spec)
}

fn unary(cx: &LowerCx, node: NodeId, u: UnaryOp) -> Result<Launch, LowerError> {
    let n = &cx.graph.nodes[node];
    let (x, y) = (n.inputs[0], n.outputs[0]);
    let dt = cx.graph.ty(y).dtype;
    let tt = trait_or_err(cx, node, dt, "the result")?;
    let rank = cx.graph.shape(y).len();
    let (operands, exprs, _) = terms_to_exprs(vec![float_term(cx, node, x, rank, "the operand")?]);
    let scalars = params_of(&exprs);
    let a = exprs.into_iter().next().expect("one term");
    let compute = if u == UnaryOp::Relu {
        // The interpreter's `if x < 0 { 0 } else { x }`: NaN and −0 pass through (fmaxf would not).
        let a = a.to_cuda();
        format!("        const float r = {a} < 0.0f ? 0.0f : {a};\n        out[i] = {tt}::store(r);\n")
    } else {
        format!("        out[i] = {tt}::store({});\n", a.apply(Fn1::from_unary(u)).to_cuda())
    };
    let spec = Spec {
        doc: format!("{} {dt}", n.op.mnemonic()),
        out: y,
        out_c_type: format!("{tt}::T"),
        extents: out_extents(cx, y),
        operands,
        compute,
        scalars,
    };
    emit(cx, node, spec)
}

fn binary(cx: &LowerCx, node: NodeId, b: BinaryOp) -> Result<Launch, LowerError> {
    let n = &cx.graph.nodes[node];
    let y = n.outputs[0];
    let dt = cx.graph.ty(y).dtype;
    if is_wide_int(dt) {
        return Err(cx.error(node, format!("integer ({dt}) binary ops have no kernel yet (only float dtypes, computed in f32)")));
    }
    let tt = trait_or_err(cx, node, dt, "the result")?;
    let rank = cx.graph.shape(y).len();
    let terms = vec![float_term(cx, node, n.inputs[0], rank, "lhs")?, float_term(cx, node, n.inputs[1], rank, "rhs")?];
    let (operands, exprs, vars) = terms_to_exprs(terms);
    let scalars = params_of(&exprs);
    let mut it = exprs.into_iter();
    let (a, c) = (it.next().expect("lhs"), it.next().expect("rhs"));
    let e = a.bin(Fn2::from_binary(b), c);
    let compute = if matches!(b, BinaryOp::Max | BinaryOp::Min) && !vars.is_empty() {
        // NaN in, NaN out (the interpreter's max/min), where fmaxf/fminf return the other operand.
        let nan_test: Vec<String> = vars.iter().map(|v| format!("{v} != {v}")).collect();
        format!(
            "        float r = {};\n        if ({}) r = __int_as_float(0x7fc00000);\n        out[i] = {tt}::store(r);\n",
            e.to_cuda(),
            nan_test.join(" || ")
        )
    } else {
        format!("        out[i] = {tt}::store({});\n", e.to_cuda())
    };
    let spec = Spec {
        doc: format!("{} {dt}", n.op.mnemonic()),
        out: y,
        out_c_type: format!("{tt}::T"),
        extents: out_extents(cx, y),
        operands,
        compute,
        scalars,
    };
    emit(cx, node, spec)
}

/// The C storage type of an element of `dt` for raw copies (`uint8_t` … `unsigned long long`).
pub(crate) fn raw_type(bytes: u64) -> &'static str {
    match bytes {
        1 => "uint8_t",
        2 => "uint16_t",
        4 => "uint32_t",
        8 => "unsigned long long",
        16 => "uint4",
        _ => "uint8_t",
    }
}

/// Bytes per element of `dt`, or an error for packed types.
pub(crate) fn bytes_or_err(cx: &LowerCx, node: NodeId, dt: DType) -> Result<u64, LowerError> {
    elem_bytes(dt).ok_or_else(|| cx.error(node, format!("{dt} is a packed 4-bit type; no kernel moves it yet")))
}
