//! A small expression IR for element-wise code (GEMM epilogues, element-wise kernels) and its
//! CUDA printer: kernels get their per-element math as a typed tree, never as pasted strings.
//!
//! Every expression is an `f32` value. The IR's per-step rounding (an `f16` add is an `f32` add
//! rounded to `f16`) is explicit as [`Expr::Round`]; literals print as exact bit patterns. The
//! printed functions (`qf_gelu`, `qf_round_f16`, …) are defined in `templates/math.cuh` with the
//! interpreter's formulas (`src/interp/ops/elementwise.rs`).
//!
//! ```
//! use qfuse::codegen::expr::{Expr, Fn1};
//! use qfuse::ir::DType;
//! let e = Expr::var("acc").mul(Expr::lit(0.5)).round(DType::F16).add(Expr::var("bias")).round(DType::F16).apply(Fn1::Gelu);
//! assert_eq!(
//!     e.to_cuda(),
//!     "qf_gelu(qf_round_f16(qf_round_f16(acc * __int_as_float(0x3f000000)) + bias))"
//! );
//! ```

use crate::ir::{BinaryOp, DType, UnaryOp};

/// A one-argument function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fn1 {
    /// `x·Φ(x)` (erf form).
    Gelu,
    /// tanh approximation of GeLU.
    GeluTanh,
    /// `x·σ(x)`.
    Silu,
    /// `max(x, 0)`.
    Relu,
    /// `eˣ`.
    Exp,
    /// `tanh x`.
    Tanh,
    /// `√x`.
    Sqrt,
    /// `1/√x`.
    Rsqrt,
    /// `−x`.
    Neg,
    /// `|x|`.
    Abs,
}

impl Fn1 {
    /// The IR's unary op as a printable function.
    pub fn from_unary(op: UnaryOp) -> Self {
        match op {
            UnaryOp::Gelu => Fn1::Gelu,
            UnaryOp::GeluTanh => Fn1::GeluTanh,
            UnaryOp::Silu => Fn1::Silu,
            UnaryOp::Relu => Fn1::Relu,
            UnaryOp::Exp => Fn1::Exp,
            UnaryOp::Tanh => Fn1::Tanh,
            UnaryOp::Sqrt => Fn1::Sqrt,
            UnaryOp::Rsqrt => Fn1::Rsqrt,
            UnaryOp::Neg => Fn1::Neg,
            UnaryOp::Abs => Fn1::Abs,
        }
    }

    fn cuda_name(self) -> &'static str {
        match self {
            Fn1::Gelu => "qf_gelu",
            Fn1::GeluTanh => "qf_gelu_tanh",
            Fn1::Silu => "qf_silu",
            Fn1::Relu => "qf_relu",
            Fn1::Exp => "expf",
            Fn1::Tanh => "tanhf",
            Fn1::Sqrt => "sqrtf",
            Fn1::Rsqrt => "qf_rsqrt",
            Fn1::Neg => "-",
            Fn1::Abs => "fabsf",
        }
    }
}

/// A two-argument operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fn2 {
    /// `a + b`.
    Add,
    /// `a − b`.
    Sub,
    /// `a · b`.
    Mul,
    /// `a / b` (IEEE division).
    Div,
    /// `max(a, b)`.
    Max,
    /// `min(a, b)`.
    Min,
}

impl Fn2 {
    /// The IR's binary op.
    pub fn from_binary(op: BinaryOp) -> Self {
        match op {
            BinaryOp::Add => Fn2::Add,
            BinaryOp::Sub => Fn2::Sub,
            BinaryOp::Mul => Fn2::Mul,
            BinaryOp::Div => Fn2::Div,
            BinaryOp::Max => Fn2::Max,
            BinaryOp::Min => Fn2::Min,
        }
    }

    fn infix(self) -> Option<&'static str> {
        match self {
            Fn2::Add => Some("+"),
            Fn2::Sub => Some("-"),
            Fn2::Mul => Some("*"),
            Fn2::Div => Some("/"),
            Fn2::Max | Fn2::Min => None,
        }
    }
}

/// An `f32`-valued expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A variable the kernel has in scope (a C identifier).
    Var(String),
    /// A literal, printed bit-exactly.
    Lit(f32),
    /// A per-launch `f32` value (a static scale, a GEMM's alpha): printed as the kernel parameter
    /// `name`, whose `value` the launch passes ([`Expr::params`]). Layers that differ only in
    /// such values share one kernel.
    Param {
        /// The kernel parameter (a C identifier).
        name: String,
        /// The exact value the launch passes.
        value: f32,
    },
    /// `f(x)`.
    Call(Fn1, Box<Expr>),
    /// `a ∘ b`.
    Bin(Fn2, Box<Expr>, Box<Expr>),
    /// Round to a float dtype and widen back (`f32`: no-op; `f16`/`bf16`: RNE; FP8: RNE,
    /// saturating), i.e. one rounding step of the IR.
    Round(DType, Box<Expr>),
}

impl Expr {
    /// A variable; panics unless `name` is a C identifier (a codegen bug).
    pub fn var(name: impl Into<String>) -> Self {
        let name = name.into();
        let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        assert!(ok, "`{name}` is not a C identifier");
        Expr::Var(name)
    }

    /// A literal.
    pub fn lit(v: f32) -> Self {
        Expr::Lit(v)
    }

    /// A per-launch value: the kernel parameter `name` (panics unless it is a C identifier, a
    /// codegen bug), passed as `value` at launch.
    pub fn param(name: impl Into<String>, value: f32) -> Self {
        let Expr::Var(name) = Expr::var(name) else { unreachable!("Expr::var builds a Var") };
        Expr::Param { name, value }
    }

    /// `f(self)`.
    pub fn apply(self, f: Fn1) -> Self {
        Expr::Call(f, Box::new(self))
    }

    /// `self ∘ other`.
    pub fn bin(self, f: Fn2, other: Expr) -> Self {
        Expr::Bin(f, Box::new(self), Box::new(other))
    }

    /// `self + other`.
    #[allow(clippy::should_implement_trait)]
    pub fn add(self, other: Expr) -> Self {
        self.bin(Fn2::Add, other)
    }

    /// `self · other`.
    #[allow(clippy::should_implement_trait)]
    pub fn mul(self, other: Expr) -> Self {
        self.bin(Fn2::Mul, other)
    }

    /// `self / other`.
    #[allow(clippy::should_implement_trait)]
    pub fn div(self, other: Expr) -> Self {
        self.bin(Fn2::Div, other)
    }

    /// One IR rounding step to `dtype` (nothing for `f32`).
    pub fn round(self, dtype: DType) -> Self {
        if dtype == DType::F32 {
            self
        } else {
            Expr::Round(dtype, Box::new(self))
        }
    }

    /// The variables it reads, each once, in first-use order.
    pub fn vars(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        self.visit(&mut |e| {
            if let Expr::Var(v) = e {
                if !out.contains(&v.as_str()) {
                    out.push(v);
                }
            }
        });
        out
    }

    /// The per-launch values it reads ([`Expr::Param`]), each name once, in first-use order, with
    /// the value the launch passes. A name used with two different values is a codegen bug
    /// (panics).
    pub fn params(&self) -> Vec<(String, f32)> {
        let mut out: Vec<(String, f32)> = Vec::new();
        self.visit(&mut |e| {
            if let Expr::Param { name, value } = e {
                match out.iter().find(|(n, _)| n == name) {
                    Some((_, v)) => assert!(v.to_bits() == value.to_bits(), "parameter `{name}` given two values"),
                    None => out.push((name.clone(), *value)),
                }
            }
        });
        out
    }

    /// The expression with every leaf (variable, literal, parameter) `leaf` maps to `Some`
    /// replaced, the tree's shape kept (so every rounding step stays where it was).
    pub fn substitute(&self, leaf: &dyn Fn(&Expr) -> Option<Expr>) -> Expr {
        match self {
            Expr::Var(_) | Expr::Lit(_) | Expr::Param { .. } => leaf(self).unwrap_or_else(|| self.clone()),
            Expr::Call(f, x) => Expr::Call(*f, Box::new(x.substitute(leaf))),
            Expr::Round(d, x) => Expr::Round(*d, Box::new(x.substitute(leaf))),
            Expr::Bin(f, a, b) => Expr::Bin(*f, Box::new(a.substitute(leaf)), Box::new(b.substitute(leaf))),
        }
    }

    fn visit<'a>(&'a self, f: &mut impl FnMut(&'a Expr)) {
        f(self);
        match self {
            Expr::Var(_) | Expr::Lit(_) | Expr::Param { .. } => {}
            Expr::Call(_, x) | Expr::Round(_, x) => x.visit(f),
            Expr::Bin(_, a, b) => {
                a.visit(f);
                b.visit(f);
            }
        }
    }

    /// CUDA C for the expression (an `f32` rvalue).
    pub fn to_cuda(&self) -> String {
        let mut s = String::new();
        self.print(&mut s, Prec::Lowest);
        s
    }

    fn print(&self, out: &mut String, ctx: Prec) {
        match self {
            Expr::Var(v) | Expr::Param { name: v, .. } => out.push_str(v),
            Expr::Lit(v) => out.push_str(&format!("__int_as_float({:#010x})", v.to_bits())),
            Expr::Call(Fn1::Neg, x) => {
                out.push_str("(-");
                x.print(out, Prec::Atom);
                out.push(')');
            }
            Expr::Call(f, x) => call(out, f.cuda_name(), &[x]),
            Expr::Round(dtype, x) => call(out, round_fn(*dtype), &[x]),
            Expr::Bin(f, a, b) => match f.infix() {
                Some(op) => {
                    let prec = if matches!(f, Fn2::Add | Fn2::Sub) { Prec::Sum } else { Prec::Product };
                    let paren = prec < ctx;
                    if paren {
                        out.push('(');
                    }
                    a.print(out, prec);
                    out.push_str(&format!(" {op} "));
                    // Right operands bind tighter: `a - (b - c)`, `a / (b * c)`.
                    b.print(out, prec.tighter());
                    if paren {
                        out.push(')');
                    }
                }
                None => call(out, if *f == Fn2::Max { "fmaxf" } else { "fminf" }, &[a, b]),
            },
        }
    }
}

/// The `common.cuh` function rounding an `f32` through `dtype`.
fn round_fn(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "qf_round_f16",
        DType::BF16 => "qf_round_bf16",
        DType::F8E4M3 => "qf_round_e4m3",
        DType::F8E5M2 => "qf_round_e5m2",
        other => panic!("no float rounding to {other} (a codegen bug)"),
    }
}

fn call(out: &mut String, name: &str, args: &[&Expr]) {
    out.push_str(name);
    out.push('(');
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        a.print(out, Prec::Lowest);
    }
    out.push(')');
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Prec {
    Lowest,
    Sum,
    Product,
    Atom,
}

impl Prec {
    fn tighter(self) -> Prec {
        match self {
            Prec::Lowest => Prec::Sum,
            Prec::Sum => Prec::Product,
            Prec::Product | Prec::Atom => Prec::Atom,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_and_associativity() {
        let (a, b, c) = (Expr::var("a"), Expr::var("b"), Expr::var("c"));
        assert_eq!(a.clone().add(b.clone()).mul(c.clone()).to_cuda(), "(a + b) * c");
        assert_eq!(a.clone().mul(b.clone()).add(c.clone()).to_cuda(), "a * b + c");
        assert_eq!(a.clone().bin(Fn2::Sub, b.clone().bin(Fn2::Sub, c.clone())).to_cuda(), "a - (b - c)");
        assert_eq!(a.clone().bin(Fn2::Sub, b.clone()).bin(Fn2::Sub, c.clone()).to_cuda(), "a - b - c");
        assert_eq!(a.clone().div(b.clone().mul(c.clone())).to_cuda(), "a / (b * c)");
        assert_eq!(a.clone().bin(Fn2::Max, b.clone()).to_cuda(), "fmaxf(a, b)");
        assert_eq!(a.clone().apply(Fn1::Neg).mul(b.clone()).to_cuda(), "(-a) * b");
        assert_eq!(a.clone().add(b).round(DType::F32).to_cuda(), "a + b");
    }

    #[test]
    fn literals_are_bit_exact() {
        assert_eq!(Expr::lit(-65504.0).to_cuda(), "__int_as_float(0xc77fe000)");
        assert_eq!(Expr::lit(f32::MIN_POSITIVE / 2.0).to_cuda(), "__int_as_float(0x00400000)");
    }

    #[test]
    fn params_print_as_their_name_and_carry_their_value() {
        let e = Expr::var("acc").mul(Expr::param("alpha", 0.25)).div(Expr::param("alpha", 0.25)).add(Expr::param("beta", -1.0));
        assert_eq!(e.to_cuda(), "acc * alpha / alpha + beta");
        assert_eq!(e.params(), vec![("alpha".to_string(), 0.25), ("beta".to_string(), -1.0)]);
        assert_eq!(e.vars(), vec!["acc"], "a parameter is not a variable of the kernel body");
        let other = Expr::var("acc").mul(Expr::param("alpha", 0.5));
        assert_eq!(e.to_cuda().split(" / ").next(), other.to_cuda().split(" / ").next(), "the value is not in the source");
    }

    #[test]
    #[should_panic(expected = "two values")]
    fn a_parameter_has_one_value() {
        let _ = Expr::param("s", 1.0).add(Expr::param("s", 2.0)).params();
    }

    #[test]
    fn substitution_replaces_leaves_and_keeps_the_roundings() {
        let e = Expr::var("acc").mul(Expr::param("alpha", 0.5)).round(DType::F16).mul(Expr::var("up"));
        let up = Expr::var("acc_up").round(DType::F16);
        let s = e.substitute(&|x| match x {
            Expr::Var(v) if v == "up" => Some(up.clone()),
            Expr::Param { value, .. } => Some(Expr::param("g_alpha", *value)),
            _ => None,
        });
        assert_eq!(s.to_cuda(), "qf_round_f16(acc * g_alpha) * qf_round_f16(acc_up)");
        assert_eq!(s.params(), vec![("g_alpha".to_string(), 0.5)]);
    }

    #[test]
    fn vars_are_listed_once() {
        let e = Expr::var("acc").add(Expr::var("bias")).mul(Expr::var("acc"));
        assert_eq!(e.vars(), vec!["acc", "bias"]);
    }

    #[test]
    #[should_panic(expected = "not a C identifier")]
    fn rejects_non_identifiers() {
        let _ = Expr::var("a; system()");
    }
}
