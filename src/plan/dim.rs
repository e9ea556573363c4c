//! [`DimExpr`]: an integer expression over shape symbols (`B`, `S`), evaluated by the runtime
//! once per input shape to size launch grids and pass sizes to kernels.
//!
//! Deliberately tiny: constants, symbols, `+`, `*`, `ceil_div` and `min`. Printed as
//! `ceil_div(B*S, 128)`; [`DimExpr::simplified`] folds constants so dumps stay readable.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Deepest nesting of a decoded [`DimExpr`]: codegen builds expressions a few levels deep, and
/// the limit keeps a hostile plan from exhausting the stack while decoding, printing or dropping.
pub const MAX_DIM_DEPTH: usize = 64;

/// An integer expression over shape symbols.
///
/// Decoding enforces [`MAX_DIM_DEPTH`]; deeper input is an error, never a stack overflow.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum DimExpr {
    /// A constant.
    Const(u64),
    /// The run-time value of a shape symbol, by name.
    Sym(String),
    /// Sum.
    Add(Box<DimExpr>, Box<DimExpr>),
    /// Product.
    Mul(Box<DimExpr>, Box<DimExpr>),
    /// `⌈a / d⌉`, `d > 0`.
    CeilDiv(Box<DimExpr>, u64),
    /// Smaller of the two.
    Min(Box<DimExpr>, Box<DimExpr>),
}

impl DimExpr {
    /// A symbol.
    pub fn sym(name: impl Into<String>) -> Self {
        DimExpr::Sym(name.into())
    }

    /// `self · other`, constants folded. (A builder, not `std::ops::Mul`: shapes are not numbers.)
    #[allow(clippy::should_implement_trait)]
    pub fn mul(self, other: DimExpr) -> Self {
        match (self, other) {
            (DimExpr::Const(a), DimExpr::Const(b)) => DimExpr::Const(a * b),
            (DimExpr::Const(1), e) | (e, DimExpr::Const(1)) => e,
            (DimExpr::Const(0), _) | (_, DimExpr::Const(0)) => DimExpr::Const(0),
            (a, b) => DimExpr::Mul(Box::new(a), Box::new(b)),
        }
    }

    /// `self + other`, constants folded. (A builder, not `std::ops::Add`.)
    #[allow(clippy::should_implement_trait)]
    pub fn add(self, other: DimExpr) -> Self {
        match (self, other) {
            (DimExpr::Const(a), DimExpr::Const(b)) => DimExpr::Const(a + b),
            (DimExpr::Const(0), e) | (e, DimExpr::Const(0)) => e,
            (a, b) => DimExpr::Add(Box::new(a), Box::new(b)),
        }
    }

    /// `⌈self / d⌉`, constants folded. Panics if `d == 0` (a codegen bug).
    pub fn ceil_div(self, d: u64) -> Self {
        assert!(d > 0, "ceil_div by zero");
        match self {
            DimExpr::Const(a) => DimExpr::Const(a.div_ceil(d)),
            e if d == 1 => e,
            e => DimExpr::CeilDiv(Box::new(e), d),
        }
    }

    /// `min(self, other)`, constants folded.
    pub fn min(self, other: DimExpr) -> Self {
        match (self, other) {
            (DimExpr::Const(a), DimExpr::Const(b)) => DimExpr::Const(a.min(b)),
            (a, b) => DimExpr::Min(Box::new(a), Box::new(b)),
        }
    }

    /// The product of `factors` (1 when empty).
    pub fn product(factors: impl IntoIterator<Item = DimExpr>) -> Self {
        factors.into_iter().fold(DimExpr::Const(1), DimExpr::mul)
    }

    /// The value if the expression has no symbols.
    pub fn as_const(&self) -> Option<u64> {
        self.eval(&|_| None).ok()
    }

    /// The symbols the expression reads, each once, in first-use order.
    pub fn symbols(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.visit_symbols(&mut |s| {
            if !out.contains(&s) {
                out.push(s);
            }
        });
        out
    }

    fn visit_symbols<'a>(&'a self, f: &mut impl FnMut(&'a str)) {
        match self {
            DimExpr::Const(_) => {}
            DimExpr::Sym(s) => f(s),
            DimExpr::Add(a, b) | DimExpr::Mul(a, b) | DimExpr::Min(a, b) => {
                a.visit_symbols(f);
                b.visit_symbols(f);
            }
            DimExpr::CeilDiv(a, _) => a.visit_symbols(f),
        }
    }

    /// Evaluates with `value(symbol)`; an unknown symbol, a zero divisor or an overflow is an
    /// error naming the expression.
    pub fn eval(&self, value: &dyn Fn(&str) -> Option<u64>) -> Result<u64, String> {
        let overflow = || format!("`{self}` overflows u64");
        match self {
            DimExpr::Const(c) => Ok(*c),
            DimExpr::Sym(s) => value(s).ok_or_else(|| format!("`{self}` needs symbol `{s}`, which has no value")),
            DimExpr::Add(a, b) => a.eval(value)?.checked_add(b.eval(value)?).ok_or_else(overflow),
            DimExpr::Mul(a, b) => a.eval(value)?.checked_mul(b.eval(value)?).ok_or_else(overflow),
            DimExpr::CeilDiv(a, d) if *d > 0 => Ok(a.eval(value)?.div_ceil(*d)),
            DimExpr::CeilDiv(..) => Err(format!("`{self}` divides by zero")),
            DimExpr::Min(a, b) => Ok(a.eval(value)?.min(b.eval(value)?)),
        }
    }

    /// Evaluates with symbol values given as `(name, value)` pairs.
    pub fn eval_with(&self, values: &[(String, u64)]) -> Result<u64, String> {
        self.eval(&|s| values.iter().find(|(n, _)| n == s).map(|&(_, v)| v))
    }

    fn precedence(&self) -> u8 {
        match self {
            DimExpr::Add(..) => 0,
            DimExpr::Mul(..) => 1,
            _ => 2,
        }
    }

    fn fmt_operand(&self, f: &mut fmt::Formatter<'_>, min_precedence: u8) -> fmt::Result {
        if self.precedence() < min_precedence {
            write!(f, "({self})")
        } else {
            write!(f, "{self}")
        }
    }
}

/// The serde image of [`DimExpr`] (same name and variants, so the same bytes); children decode
/// through [`DimExpr`]'s depth-counting `Deserialize`.
#[derive(Deserialize)]
#[serde(rename = "DimExpr")]
enum DimExprRepr {
    Const(u64),
    Sym(String),
    Add(Box<DimExpr>, Box<DimExpr>),
    Mul(Box<DimExpr>, Box<DimExpr>),
    CeilDiv(Box<DimExpr>, u64),
    Min(Box<DimExpr>, Box<DimExpr>),
}

impl From<DimExprRepr> for DimExpr {
    fn from(r: DimExprRepr) -> Self {
        match r {
            DimExprRepr::Const(c) => DimExpr::Const(c),
            DimExprRepr::Sym(s) => DimExpr::Sym(s),
            DimExprRepr::Add(a, b) => DimExpr::Add(a, b),
            DimExprRepr::Mul(a, b) => DimExpr::Mul(a, b),
            DimExprRepr::CeilDiv(a, d) => DimExpr::CeilDiv(a, d),
            DimExprRepr::Min(a, b) => DimExpr::Min(a, b),
        }
    }
}

thread_local! {
    /// Nesting of the [`DimExpr`] being decoded on this thread.
    static DECODE_DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Set when a decode on this thread hit [`MAX_DIM_DEPTH`] (postcard drops custom messages).
    static DEPTH_EXCEEDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a decode on this thread hit [`MAX_DIM_DEPTH`] since the last call; resets the flag.
pub(crate) fn take_depth_exceeded() -> bool {
    DEPTH_EXCEEDED.with(|e| e.replace(false))
}

/// One level of [`DECODE_DEPTH`], released on drop (also when decoding fails).
struct DepthLevel;

impl DepthLevel {
    fn enter() -> Result<Self, String> {
        let depth = DECODE_DEPTH.with(|d| {
            d.set(d.get() + 1);
            d.get()
        });
        let level = DepthLevel;
        if depth > MAX_DIM_DEPTH {
            DEPTH_EXCEEDED.with(|e| e.set(true));
            return Err(format!("dimension expression nested deeper than {MAX_DIM_DEPTH} levels"));
        }
        Ok(level)
    }
}

impl Drop for DepthLevel {
    fn drop(&mut self) {
        DECODE_DEPTH.with(|d| d.set(d.get() - 1));
    }
}

impl<'de> Deserialize<'de> for DimExpr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let _level = DepthLevel::enter().map_err(serde::de::Error::custom)?;
        DimExprRepr::deserialize(deserializer).map(DimExpr::from)
    }
}

impl From<u64> for DimExpr {
    fn from(c: u64) -> Self {
        DimExpr::Const(c)
    }
}

impl fmt::Display for DimExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DimExpr::Const(c) => write!(f, "{c}"),
            DimExpr::Sym(s) => write!(f, "{s}"),
            DimExpr::Add(a, b) => {
                a.fmt_operand(f, 0)?;
                f.write_str(" + ")?;
                b.fmt_operand(f, 1)
            }
            DimExpr::Mul(a, b) => {
                a.fmt_operand(f, 1)?;
                f.write_str("*")?;
                b.fmt_operand(f, 2)
            }
            DimExpr::CeilDiv(a, d) => write!(f, "ceil_div({a}, {d})"),
            DimExpr::Min(a, b) => write!(f, "min({a}, {b})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bs() -> Vec<(String, u64)> {
        vec![("B".into(), 3), ("S".into(), 100)]
    }

    #[test]
    fn prints_and_evaluates() {
        let e = DimExpr::sym("B").mul(DimExpr::sym("S")).ceil_div(64);
        assert_eq!(e.to_string(), "ceil_div(B*S, 64)");
        assert_eq!(e.eval_with(&bs()).unwrap(), 5);
        let sum = DimExpr::sym("B").add(DimExpr::Const(2)).mul(DimExpr::sym("S"));
        assert_eq!(sum.to_string(), "(B + 2)*S");
        assert_eq!(sum.eval_with(&bs()).unwrap(), 500);
        assert_eq!(DimExpr::sym("S").min(64.into()).eval_with(&bs()).unwrap(), 64);
    }

    #[test]
    fn folds_constants() {
        assert_eq!(DimExpr::product([2.into(), 3.into(), DimExpr::sym("S")]), DimExpr::Const(6).mul(DimExpr::sym("S")));
        assert_eq!(DimExpr::Const(129).ceil_div(64), DimExpr::Const(3));
        assert_eq!(DimExpr::sym("B").mul(1.into()), DimExpr::sym("B"));
        assert_eq!(DimExpr::Const(7).as_const(), Some(7));
        assert_eq!(DimExpr::sym("B").as_const(), None);
    }

    #[test]
    fn errors_name_the_expression() {
        let e = DimExpr::sym("T").mul(DimExpr::sym("B"));
        assert!(e.eval_with(&bs()).unwrap_err().contains("symbol `T`"));
        let big = DimExpr::Const(u64::MAX).mul(DimExpr::sym("B"));
        assert!(big.eval_with(&bs()).unwrap_err().contains("overflows"));
        assert_eq!(e.symbols(), vec!["T", "B"]);
    }

    fn nested_ceil_divs(depth: usize) -> DimExpr {
        (0..depth).fold(DimExpr::sym("B"), |e, _| DimExpr::CeilDiv(Box::new(e), 2))
    }

    #[test]
    fn decoding_stops_at_the_depth_limit() {
        let ok = nested_ceil_divs(MAX_DIM_DEPTH - 1);
        let bytes = postcard::to_stdvec(&ok).unwrap();
        assert_eq!(postcard::from_bytes::<DimExpr>(&bytes).unwrap(), ok);
        // 100,000 levels, encoded by hand (encoding recurses too): `CeilDiv` is variant 4,
        // then the inner expression, then the divisor 2; innermost `Sym("B")` is variant 1.
        let depth = 100_000;
        let mut bytes = vec![4u8; depth];
        bytes.extend_from_slice(&[1, 1, b'B']);
        bytes.extend(std::iter::repeat_n(2u8, depth));
        take_depth_exceeded();
        assert!(postcard::from_bytes::<DimExpr>(&bytes).is_err());
        assert!(take_depth_exceeded());
        // The counter is released after a failure: a shallow expression still decodes.
        assert_eq!(postcard::from_bytes::<DimExpr>(&postcard::to_stdvec(&ok).unwrap()).unwrap(), ok);
    }
}
