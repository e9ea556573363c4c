//! The IR text format, printing side. Grammar: `docs/ir.md`.
//!
//! ```text
//! graph "name" {
//!   sym B max=32
//!   %0 = input "input_ids" : i64[B,S]
//!   %1 = weight @embeddings.word_embeddings.weight : f32[30522,384]
//!   %2 = gather %1, %0 : f32[B,S,384] loc("embeddings.word_embeddings")
//!   %3, %4 = quantize %2 {f8e4m3, per_token, scale=dynamic(f32)} : f8e4m3[B,S,384], f32[B,S,1]
//!   return "hidden" = %2
//! }
//! ```

use super::attrs::{self, Attr, AttrValue};
use super::{Dim, Graph, Node, Op, TensorType};
use std::fmt::Write;

/// Prints `g` after renumbering it into canonical order, so that dumps of equal graphs are equal.
pub fn print(g: &Graph) -> String {
    print_exact(&super::order::renumber(g))
}

/// Prints `g` with its ids as they are (used for error reports on graphs that may be invalid).
pub fn print_exact(g: &Graph) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "graph {} {{", quote(&g.name));
    for (_, s) in g.symbols.iter() {
        let _ = writeln!(out, "  sym {} max={}", s.name, s.max);
    }
    for (_, node) in g.nodes.iter() {
        let _ = writeln!(out, "  {}", node_line(g, node));
    }
    if !g.outputs.is_empty() {
        let outs: Vec<String> = g.outputs.iter().map(|(n, v)| format!("{} = {v}", quote(n))).collect();
        let _ = writeln!(out, "  return {}", outs.join(", "));
    }
    for slot in &g.state {
        let _ = writeln!(out, "  state {} append {} axis={}", quote(&slot.input), quote(&slot.update), slot.axis);
    }
    out.push_str("}\n");
    out
}

/// One node as a line of text (no indentation, no newline).
pub fn node_line(g: &Graph, node: &Node) -> String {
    let mut s = String::new();
    let outs: Vec<String> = node.outputs.iter().map(|v| v.to_string()).collect();
    let _ = write!(s, "{} = {}", outs.join(", "), node.op.mnemonic());
    match &node.op {
        Op::Input { name } => {
            let _ = write!(s, " {}", quote(name));
        }
        Op::Weight { name } => {
            let _ = write!(s, " @{}", quote_name(name));
        }
        Op::Scalar { value } => {
            let _ = write!(s, " {}", float(*value));
        }
        _ => {}
    }
    let positional = attrs::positional_arity(&node.op).min(node.inputs.len());
    let operands: Vec<String> = node.inputs[..positional].iter().map(|v| v.to_string()).collect();
    if !operands.is_empty() {
        let _ = write!(s, " {}", operands.join(", "));
    }
    let attrs = attrs::encode(&node.op, &node.inputs[positional..]);
    if !attrs.is_empty() {
        let items: Vec<String> = attrs.iter().map(attr).collect();
        let _ = write!(s, " {{{}}}", items.join(", "));
    }
    let types: Vec<String> = node.outputs.iter().map(|&v| ty(g, &g.values[v].ty)).collect();
    let _ = write!(s, " : {}", types.join(", "));
    if let Some(name) = &node.name {
        let _ = write!(s, " loc({})", quote(name));
    }
    s
}

/// `f32[B,S,384]`.
pub fn ty(g: &Graph, t: &TensorType) -> String {
    let dims: Vec<String> = t
        .shape
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => n.to_string(),
            Dim::Sym(id) => g.symbols.get(*id).map_or_else(|| format!("?{}", id.0), |s| s.name.clone()),
        })
        .collect();
    format!("{}[{}]", t.dtype, dims.join(","))
}

fn attr(a: &Attr) -> String {
    match &a.key {
        Some(k) => format!("{k}={}", attr_value(&a.value)),
        None => attr_value(&a.value),
    }
}

fn attr_value(v: &AttrValue) -> String {
    match v {
        AttrValue::Ident(s) => s.clone(),
        AttrValue::Num(s) => s.clone(),
        AttrValue::List(xs) => format!("[{}]", xs.iter().map(attr_value).collect::<Vec<_>>().join(",")),
        AttrValue::Ref(v) => v.to_string(),
        AttrValue::Call(name, args) => format!("{name}({})", args.iter().map(attr_value).collect::<Vec<_>>().join(",")),
        AttrValue::Pair(a, b) => format!("{a}:{b}"),
        AttrValue::Keyed(k, v) => format!("{k}={}", attr_value(v)),
    }
}

/// A float spelled so that it reads back as a float and round-trips exactly.
pub fn float(f: f64) -> String {
    float_text(format!("{f:?}"))
}

/// Makes sure a Rust `Debug` float spelling reads as a float (`1` → `1.0`).
pub fn float_text(s: String) -> String {
    if s.contains(['.', 'e', 'i', 'N']) {
        s
    } else {
        format!("{s}.0")
    }
}

/// A double-quoted string with `\"` and `\\` escaped.
pub fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Whether `c` may appear in an unquoted `@name`.
pub fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/')
}

fn quote_name(s: &str) -> String {
    if !s.is_empty() && s.chars().all(is_name_char) {
        s.to_string()
    } else {
        quote(s)
    }
}

/// Like [`node_line`] but tolerant of dangling ids (for verifier reports on broken graphs).
pub fn node_line_checked(g: &Graph, id: super::NodeId) -> String {
    let node = &g.nodes[id];
    let dangling = node.inputs.iter().chain(&node.outputs).any(|&v| g.values.get(v).is_none());
    let ids = |vs: &[super::ValueId]| vs.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ");
    if dangling || node.inputs.len() != super::infer::arity(&node.op) {
        format!("{} = {} {} (malformed node)", ids(&node.outputs), node.op.mnemonic(), ids(&node.inputs))
    } else {
        node_line(g, node)
    }
}
