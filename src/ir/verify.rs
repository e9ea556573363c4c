//! The verifier: checks every invariant of a [`Graph`] and reports *all* violations at once.
//!
//! Invariants:
//! - every operand names an existing value, and every value's `producer`/`slot` points at the
//!   node output that defines it;
//! - the graph is acyclic;
//! - every dimension names a declared symbol;
//! - each node has its op's arity and exactly the output types its type rule derives
//!   ([`super::infer`]);
//! - graph outputs exist and input/output names are unique;
//! - a live norm marked `prologue` meets [`super::prologue`]'s conditions (checked only when
//!   the graph is otherwise sound).
//!
//! A verifier failure after a pass is always a qfuse bug, never a user error.

use super::{infer, order, print, shape_text, Dim, Graph, NodeId, Op, TensorType};
use std::collections::HashSet;
use std::fmt;

/// One violated invariant.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifyError {
    /// The offending node, when there is one.
    pub node: Option<NodeId>,
    /// The node as text, for the report.
    pub line: String,
    /// What is wrong.
    pub message: String,
}

/// Every violation found, with the point in the pipeline where verification ran.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifyErrors {
    /// Where verification ran ("after import", "after pass fold-scales").
    pub context: String,
    /// The violations, in node order.
    pub errors: Vec<VerifyError>,
}

impl fmt::Display for VerifyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "IR verification failed {}: {} error(s)", self.context, self.errors.len())?;
        for e in &self.errors {
            match e.node {
                Some(n) => writeln!(f, "  {n}: {}\n      {}", e.line, e.message)?,
                None => writeln!(f, "  graph: {}", e.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for VerifyErrors {}

/// Verifies `g`; `context` says where in the pipeline ("after import").
pub fn verify(g: &Graph, context: &str) -> Result<(), VerifyErrors> {
    let mut errors = vec![];
    let mut report = |node: Option<NodeId>, message: String| {
        let line = node.map(|n| print::node_line_checked(g, n)).unwrap_or_default();
        errors.push(VerifyError { node, line, message });
    };
    check_symbols(g, &mut report);
    check_structure(g, &mut report);
    if let Some(cycle) = order::find_cycle(g) {
        let ids: Vec<String> = cycle.iter().map(|n| n.to_string()).collect();
        report(cycle.first().copied(), format!("cycle through nodes {}", ids.join(", ")));
    }
    for (id, node) in g.nodes.iter() {
        if let Err(m) = check_node(g, id) {
            report(Some(id), m);
        }
        if let Op::Weight { name } | Op::Input { name } = &node.op {
            if name.is_empty() {
                report(Some(id), "empty name".into());
            }
        }
    }
    check_signature(g, &mut report);
    if errors.is_empty() {
        for (node, message) in prologue_errors(g) {
            errors.push(VerifyError { node: Some(node), line: print::node_line_checked(g, node), message });
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(VerifyErrors { context: context.to_string(), errors })
    }
}

fn check_symbols(g: &Graph, report: &mut impl FnMut(Option<NodeId>, String)) {
    let mut seen = HashSet::new();
    for s in g.symbols.values() {
        let mut chars = s.name.chars();
        let ident =
            chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ident {
            report(None, format!("symbol name \"{}\" is not an identifier", s.name));
        }
        if !seen.insert(s.name.as_str()) {
            report(None, format!("symbol `{}` is declared twice", s.name));
        }
    }
}

fn check_structure(g: &Graph, report: &mut impl FnMut(Option<NodeId>, String)) {
    for (id, node) in g.nodes.iter() {
        for &v in &node.inputs {
            if g.values.get(v).is_none() {
                report(Some(id), format!("operand {v} does not exist"));
            }
        }
        for (slot, &v) in node.outputs.iter().enumerate() {
            match g.values.get(v) {
                Some(info) if info.producer == id && info.slot as usize == slot => {}
                Some(info) => report(Some(id), format!("{v} claims to come from {}#{}", info.producer, info.slot)),
                None => report(Some(id), format!("output {v} does not exist")),
            }
        }
    }
    for (v, info) in g.values.iter() {
        let ok = g.nodes.get(info.producer).is_some_and(|n| n.outputs.get(info.slot as usize) == Some(&v));
        if !ok {
            report(None, format!("{v} is not an output of its producer {}", info.producer));
        }
        for d in &info.ty.shape {
            if let Dim::Sym(s) = d {
                if g.symbols.get(*s).is_none() {
                    report(Some(info.producer), format!("{v} uses undeclared symbol {s}"));
                }
            }
        }
    }
}

fn check_node(g: &Graph, id: NodeId) -> Result<(), String> {
    let node = &g.nodes[id];
    let inputs: Vec<&TensorType> = node.inputs.iter().filter_map(|&v| g.values.get(v)).map(|i| &i.ty).collect();
    if inputs.len() != node.inputs.len() {
        return Ok(()); // reported by check_structure
    }
    let declared: Vec<TensorType> = node.outputs.iter().filter_map(|&v| g.values.get(v)).map(|i| i.ty.clone()).collect();
    let derived = infer::infer(&node.op, &inputs, &declared)?;
    if derived != declared {
        let show = |ts: &[TensorType]| ts.iter().map(|t| print::ty(g, t)).collect::<Vec<_>>().join(", ");
        return Err(format!("declared type {} but the op derives {}", show(&declared), show(&derived)));
    }
    Ok(())
}

/// The live `prologue` norms without their one GEMM reader ([`super::prologue::checked_reader`]).
fn prologue_errors(g: &Graph) -> Vec<(NodeId, String)> {
    let live = g.live_nodes();
    let checked = g.nodes.ids().filter(|id| live[id.index()]).map(|id| (id, super::prologue::checked_reader(g, &live, id)));
    checked
        .filter_map(|(id, r)| match r {
            Some(Err(m)) => Some((id, format!("prologue norm: {m}"))),
            _ => None,
        })
        .collect()
}

fn check_signature(g: &Graph, report: &mut impl FnMut(Option<NodeId>, String)) {
    let mut seen = HashSet::new();
    for (name, v) in g.inputs() {
        if !seen.insert(name) {
            report(Some(g.values[v].producer), format!("duplicate input name \"{name}\""));
        }
    }
    let mut seen = HashSet::new();
    for (name, v) in &g.outputs {
        if !seen.insert(name) {
            report(None, format!("duplicate output name \"{name}\""));
        }
        if g.values.get(*v).is_none() {
            report(None, format!("output \"{name}\" names missing value {v}"));
        }
    }
    if g.outputs.is_empty() {
        report(None, "graph has no outputs".into());
    }
    for slot in &g.state {
        if let Err(m) = check_state(g, slot) {
            report(None, format!("state \"{}\": {m}", slot.input));
        }
    }
}

/// A state slot names an input and an output of one dtype whose shapes agree except along
/// `axis`, where the input's extent is a symbol.
fn check_state(g: &Graph, slot: &crate::ir::StateSlot) -> Result<(), String> {
    let input = g.inputs().into_iter().find(|(n, _)| *n == slot.input).map(|(_, v)| v).ok_or("no graph input of that name")?;
    let update = g.outputs.iter().find(|(n, _)| *n == slot.update).map(|(_, v)| *v);
    let update = update.ok_or_else(|| format!("no graph output \"{}\"", slot.update))?;
    let (a, b) = (g.ty(input), g.ty(update));
    if a.dtype != b.dtype || a.rank() != b.rank() {
        return Err(format!("input is {}{} but its update is {}{}", a.dtype, shape_text(&a.shape), b.dtype, shape_text(&b.shape)));
    }
    if slot.axis >= a.rank() || !matches!(a.shape[slot.axis], Dim::Sym(_)) {
        return Err(format!("axis {} must be a symbolic extent of the input {}", slot.axis, shape_text(&a.shape)));
    }
    let differs = (0..a.rank()).any(|i| i != slot.axis && a.shape[i] != b.shape[i]);
    if differs {
        return Err(format!("input {} and update {} differ off axis {}", shape_text(&a.shape), shape_text(&b.shape), slot.axis));
    }
    Ok(())
}
