//! Helpers shared by the op lowerings of this directory: dtype traits of `templates/ops.cuh`, a
//! parameter/argument builder, template rendering with errors mapped to [`LowerError`], and
//! [`Walk`], the index arithmetic of strided element-wise loops (broadcasting, transposes).

use std::collections::BTreeSet;

use crate::codegen::expr::Expr;
use crate::codegen::kernel::{finish_kernel, params, Arg, Launch, LowerCx, LowerError};
use crate::codegen::template::Template;
use crate::ir::{DType, Dim, Graph, NodeId, SymId, ValueId};
use crate::plan::{DimExpr, ParamType, Scalar};

/// `templates/ops.cuh`: traits, packs, reductions and the row engine.
pub(crate) const OPS: Template = Template { name: "ops.cuh", text: include_str!("../../../templates/ops.cuh") };

/// The `ops.cuh` dtype trait (`qf_f16`, …) of a dtype the kernels can load and store, or `None`
/// for packed 4-bit types and `e8m0`.
pub(crate) fn dtype_trait(dt: DType) -> Option<&'static str> {
    Some(match dt {
        DType::F32 => "qf_f32",
        DType::F16 => "qf_f16",
        DType::BF16 => "qf_bf16",
        DType::F8E4M3 => "qf_e4m3",
        DType::F8E5M2 => "qf_e5m2",
        DType::I8 => "qf_i8",
        DType::U8 => "qf_u8",
        DType::I32 => "qf_i32",
        DType::I64 => "qf_i64",
        DType::I4 | DType::U4 | DType::F4E2M1 | DType::E8M0 => return None,
    })
}

/// [`dtype_trait`] or an error naming the operand.
pub(crate) fn trait_or_err(cx: &LowerCx, node: NodeId, dt: DType, what: &str) -> Result<&'static str, LowerError> {
    dtype_trait(dt).ok_or_else(|| cx.error(node, format!("{what} has dtype {dt}, which no kernel stores yet (packed 4-bit / e8m0)")))
}

/// Bytes of one stored element (`None` for packed 4-bit types).
pub(crate) fn elem_bytes(dt: DType) -> Option<u64> {
    match dt.bits() {
        4 => None,
        b => Some(u64::from(b / 8)),
    }
}

/// An `f32` constant printed bit-exactly (`__int_as_float(0x…)`).
pub(crate) fn f32_lit(v: f32) -> String {
    Expr::lit(v).to_cuda()
}

/// The per-launch constants ([`Expr::Param`]) of `exprs`, each name once, in first-use order.
pub(crate) fn params_of(exprs: &[Expr]) -> Vec<(String, f32)> {
    let mut out: Vec<(String, f32)> = Vec::new();
    for p in exprs.iter().flat_map(Expr::params) {
        if !out.iter().any(|(n, _)| *n == p.0) {
            out.push(p);
        }
    }
    out
}

/// The `f32` a `scalar` node's value is stored as (its value rounded to the node's dtype, as the
/// interpreter stores it).
pub(crate) fn literal_f32(cx: &LowerCx, v: ValueId) -> Option<f32> {
    cx.literal(v).map(|x| crate::numerics::cast(x as f32, cx.graph.ty(v).dtype))
}

/// Renders `t`, reporting a template mistake (a codegen bug) as an error about `node`.
pub(crate) fn render(cx: &LowerCx, node: NodeId, t: &Template, values: &[(&str, String)]) -> Result<String, LowerError> {
    t.render(values).map_err(|e| cx.error(node, format!("internal: {e}")))
}

/// `common.cuh` + `math.cuh` + `ops.cuh` for a template's `{{prelude}}` and `{{ops}}`, and
/// `{{kernel_name}}` kept as a placeholder for [`crate::codegen::kernel::finish_kernel`].
pub(crate) fn prelude_values() -> [(&'static str, String); 3] {
    [("prelude", crate::codegen::prelude()), ("ops", OPS.text.to_string()), ("kernel_name", "{{kernel_name}}".to_string())]
}

/// Parameters and arguments of one launch, in signature order.
#[derive(Default)]
pub(crate) struct Sig {
    decls: Vec<String>,
    params: Vec<(String, ParamType)>,
    /// The launch arguments, one per parameter.
    pub args: Vec<Arg>,
}

impl Sig {
    /// A read-only tensor: `const <ty>* __restrict__ <name>`.
    pub fn input(&mut self, name: &str, c_type: &str, v: ValueId) {
        self.decls.push(format!("const {c_type}* __restrict__ {name}"));
        self.params.push((name.into(), ParamType::Ptr));
        self.args.push(Arg::Value(v));
    }

    /// A written tensor: `<ty>* __restrict__ <name>`.
    pub fn output(&mut self, name: &str, c_type: &str, v: ValueId) {
        self.decls.push(format!("{c_type}* __restrict__ {name}"));
        self.params.push((name.into(), ParamType::Ptr));
        self.args.push(Arg::Value(v));
    }

    /// A run-time size: `long long <name>`.
    pub fn dim(&mut self, name: &str, e: DimExpr) {
        self.decls.push(format!("long long {name}"));
        self.params.push((name.into(), ParamType::I64));
        self.args.push(Arg::Scalar(Scalar::Dim(e)));
    }

    /// A per-launch constant: `float <name>`, passed as exactly `value`.
    pub fn scalar(&mut self, name: &str, value: f32) {
        self.decls.push(format!("float {name}"));
        self.params.push((name.into(), ParamType::F32));
        self.args.push(Arg::Scalar(Scalar::F32(value)));
    }

    /// The C parameter list.
    pub fn c_params(&self) -> String {
        self.decls.join(", ")
    }

    /// The launch of a rendered source (with its `{{kernel_name}}` placeholder).
    pub fn launch(self, template: &'static str, source: String, grid: [DimExpr; 3], block: [u32; 3], smem: u32) -> Launch {
        let list: Vec<(&str, ParamType)> = self.params.iter().map(|(n, t)| (n.as_str(), *t)).collect();
        let kernel = finish_kernel(template, source, grid, block, smem, params(&list));
        Launch { kernel, args: self.args, when: None }
    }
}

/// The C parameter name of a shape symbol: `sym_<name>` (or `sym<index>` for names that are not C
/// identifiers).
pub(crate) fn sym_param(g: &Graph, s: SymId) -> String {
    let name = &g.symbols[s].name;
    if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !name.is_empty() {
        format!("sym_{name}")
    } else {
        format!("sym{}", s.index())
    }
}

/// A product of extents: a constant times shape symbols (sorted, with repeats).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Prod {
    /// Constant factor.
    pub c: u64,
    /// Symbol factors, sorted.
    pub syms: Vec<SymId>,
}

impl Prod {
    /// 1.
    pub fn one() -> Self {
        Prod { c: 1, syms: vec![] }
    }

    /// One dimension.
    pub fn of(d: Dim) -> Self {
        match d {
            Dim::Fixed(n) => Prod { c: n, syms: vec![] },
            Dim::Sym(s) => Prod { c: 1, syms: vec![s] },
        }
    }

    /// The product of several dimensions.
    pub fn of_all(ds: &[Dim]) -> Self {
        ds.iter().fold(Prod::one(), |p, &d| p.mul(&Prod::of(d)))
    }

    /// `self · other`.
    pub fn mul(&self, other: &Prod) -> Self {
        let mut syms: Vec<SymId> = self.syms.iter().chain(&other.syms).copied().collect();
        syms.sort();
        Prod { c: self.c * other.c, syms }
    }

    /// Exactly 1 (whatever the symbols' values).
    pub fn is_one(&self) -> bool {
        self.c == 1 && self.syms.is_empty()
    }

    /// Its largest value (symbols at their maxima), saturating.
    pub fn max(&self, g: &Graph) -> u128 {
        self.syms.iter().fold(u128::from(self.c), |p, &s| p.saturating_mul(u128::from(g.symbols[s].max)))
    }

    /// The extent as a [`DimExpr`].
    pub fn dim_expr(&self, g: &Graph) -> DimExpr {
        let syms = self.syms.iter().map(|&s| DimExpr::sym(g.symbols[s].name.clone()));
        DimExpr::product(std::iter::once(DimExpr::Const(self.c)).chain(syms))
    }

    /// C expression of type `idx_t` over the locals `d_<sym>` declared by [`Walk::prologue`].
    fn c_expr(&self, g: &Graph) -> String {
        let mut f: Vec<String> = self.syms.iter().map(|&s| local_sym(g, s)).collect();
        if self.c != 1 || f.is_empty() {
            f.push(format!("{}u", self.c));
        }
        f.join(" * ")
    }
}

fn local_sym(g: &Graph, s: SymId) -> String {
    format!("d_{}", &sym_param(g, s)[3..].trim_start_matches('_'))
}

/// The index arithmetic of a loop over the elements of a dense output in row-major order, reading
/// operands through per-axis strides (0 = broadcast). Axes of extent 1 are dropped and adjacent
/// axes that every operand walks contiguously are merged, so a bias add is a single `i % H` and a
/// `[B,1,1,S]` mask on `[B,12,S,S]` a three-axis walk.
#[derive(Debug, Clone)]
pub(crate) struct Walk {
    /// Output extents after merging, outer → inner.
    pub extents: Vec<Prod>,
    /// Per operand, per merged axis: the stride in elements (`None` = broadcast).
    pub strides: Vec<Vec<Option<Prod>>>,
}

impl Walk {
    /// A walk over `extents` (output axes, outer → inner) with per-operand strides per axis.
    pub fn new(extents: Vec<Prod>, strides: Vec<Vec<Option<Prod>>>) -> Self {
        let keep: Vec<usize> = (0..extents.len()).filter(|&k| !extents[k].is_one()).collect();
        let mut ext: Vec<Prod> = Vec::new();
        let mut st: Vec<Vec<Option<Prod>>> = vec![Vec::new(); strides.len()];
        for &k in &keep {
            let merge = !ext.is_empty()
                && strides.iter().zip(&st).all(|(s, merged)| {
                    // The outer axis (last merged) steps by inner stride × inner extent.
                    match (merged.last().expect("same length"), &s[k]) {
                        (None, None) => true,
                        (Some(outer), Some(inner)) => *outer == inner.mul(&extents[k]),
                        _ => false,
                    }
                });
            if merge {
                let last = ext.len() - 1;
                ext[last] = ext[last].mul(&extents[k]);
                for (o, s) in st.iter_mut().zip(&strides) {
                    *o.last_mut().expect("non-empty") = s[k].clone();
                }
            } else {
                ext.push(extents[k].clone());
                for (o, s) in st.iter_mut().zip(&strides) {
                    o.push(s[k].clone());
                }
            }
        }
        Walk { extents: ext, strides: st }
    }

    /// Dense row-major strides of the (merged) output.
    fn natural(&self) -> Vec<Option<Prod>> {
        let mut out = vec![None; self.extents.len()];
        let mut acc = Prod::one();
        for k in (0..self.extents.len()).rev() {
            out[k] = Some(acc.clone());
            acc = acc.mul(&self.extents[k]);
        }
        out
    }

    /// The symbols the index arithmetic reads (each needs a `sym_*` parameter).
    pub fn symbols(&self) -> BTreeSet<SymId> {
        let mut set = BTreeSet::new();
        let used = self.used_axes();
        if let Some(&kmin) = used.first() {
            for k in kmin..self.extents.len() {
                // Divided by (inner axes) or reduced modulo (used axes other than the outermost).
                if k > kmin || (k > 0 && used.contains(&k)) {
                    set.extend(self.extents[k].syms.iter().copied());
                }
            }
            for o in (0..self.strides.len()).filter(|&o| self.kind(o) == OperandKind::Strided) {
                for s in self.strides[o].iter().flatten() {
                    set.extend(s.syms.iter().copied());
                }
            }
        }
        set
    }

    /// Axes whose coordinate some strided operand reads, ascending.
    fn used_axes(&self) -> Vec<usize> {
        (0..self.extents.len())
            .filter(|&k| (0..self.strides.len()).any(|o| self.kind(o) == OperandKind::Strided && self.strides[o][k].is_some()))
            .collect()
    }

    fn kind(&self, o: usize) -> OperandKind {
        if self.strides[o].iter().all(Option::is_none) {
            OperandKind::Scalar
        } else if self.strides[o] == self.natural() {
            OperandKind::Dense
        } else {
            OperandKind::Strided
        }
    }

    /// Declarations of the `d_<sym>` locals (`idx_t`) from the `sym_*` parameters.
    pub fn prologue(&self, g: &Graph) -> String {
        self.symbols()
            .iter()
            .map(|&s| format!("    const idx_t {} = static_cast<idx_t>({});\n", local_sym(g, s), sym_param(g, s)))
            .collect()
    }

    /// Statements computing the coordinates of element `i` (indent 8) and each operand's offset
    /// expression.
    pub fn offsets(&self, g: &Graph) -> (String, Vec<String>) {
        let mut code = String::new();
        let used = self.used_axes();
        if let Some(&kmin) = used.first() {
            code.push_str("        idx_t rem = i;\n");
            for k in (kmin..self.extents.len()).rev() {
                let e = self.extents[k].c_expr(g);
                if used.contains(&k) {
                    if k == 0 {
                        code.push_str("        const idx_t c0 = rem;\n");
                    } else {
                        code.push_str(&format!("        const idx_t c{k} = rem % ({e});\n"));
                    }
                }
                if k > kmin {
                    code.push_str(&format!("        rem /= ({e});\n"));
                }
            }
        }
        let offs = (0..self.strides.len())
            .map(|o| match self.kind(o) {
                OperandKind::Scalar => "0".to_string(),
                OperandKind::Dense => "i".to_string(),
                OperandKind::Strided => {
                    let terms: Vec<String> = self.strides[o]
                        .iter()
                        .enumerate()
                        .filter_map(|(k, s)| {
                            s.as_ref().map(|s| if s.is_one() { format!("c{k}") } else { format!("c{k} * ({})", s.c_expr(g)) })
                        })
                        .collect();
                    terms.join(" + ")
                }
            })
            .collect();
        (code, offs)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OperandKind {
    /// Every element reads element 0.
    Scalar,
    /// Same layout as the output: offset `i`.
    Dense,
    /// Needs coordinates.
    Strided,
}

/// `uint32_t` when every index fits in 31 bits at the symbols' maxima, else `unsigned long long`.
pub(crate) fn idx_type(max_elems: u128) -> &'static str {
    if max_elems < (1u128 << 31) - 4096 {
        "uint32_t"
    } else {
        "unsigned long long"
    }
}

/// Numpy-broadcast strides of an operand of shape `op` against an output of rank `out_rank`: the
/// operand's own dense strides on the axes where it has an extent other than 1, `None` elsewhere.
pub(crate) fn broadcast_strides(op: &[Dim], out_rank: usize) -> Vec<Option<Prod>> {
    let lead = out_rank - op.len();
    (0..out_rank).map(|i| if i < lead || op[i - lead] == Dim::Fixed(1) { None } else { Some(Prod::of_all(&op[i - lead + 1..])) }).collect()
}

/// Dense strides of a shape (every axis walked).
pub(crate) fn dense_strides(shape: &[Dim]) -> Vec<Option<Prod>> {
    (0..shape.len()).map(|i| Some(Prod::of_all(&shape[i + 1..]))).collect()
}

/// `ceil_div(e, d)` as a grid extent.
pub(crate) fn ceil_div(e: DimExpr, d: u64) -> DimExpr {
    e.ceil_div(d)
}
