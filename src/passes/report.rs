//! The fusion report: for every quantize/dequantize the recipe placed, what it became.
//!
//! Users of other tools most often ask why a Q/DQ pair did not fuse (quant-formats.md §9). Passes
//! record each fusion ([`FusionReport::fused`]) and each rule that looked at a Q/DQ and declined,
//! with the reason ([`FusionReport::declined`]); [`FusionReport::finish`] then lists every Q/DQ
//! still standing in the final graph with the last reason given for it.

use crate::ir::{Graph, Op};
use serde::Serialize;
use std::collections::BTreeMap;

/// What happened to one Q/DQ node.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Outcome {
    /// Absorbed into a fused op.
    Fused {
        /// The op it became part of (`qmatmul`, `layernorm_quantize`, ...).
        into: String,
        /// That op's node name.
        node: String,
    },
    /// Removed with no run-time cost (weights quantized offline, equal-scale DQ→Q).
    Folded {
        /// How.
        how: String,
    },
    /// Still a separate kernel in the final graph.
    Standalone {
        /// The last reason a fusion rule gave for not taking it.
        reason: String,
    },
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Entry {
    /// The Q/DQ node's name (`encoder.layer.0.attention.self.query:input.q`).
    pub qdq: String,
    /// What happened to it.
    pub outcome: Outcome,
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.outcome {
            Outcome::Fused { into, node } => write!(f, "{}: fused into {into} {node}", self.qdq),
            Outcome::Folded { how } => write!(f, "{}: folded, {how}", self.qdq),
            Outcome::Standalone { reason } => write!(f, "{}: standalone, {reason}", self.qdq),
        }
    }
}

/// Collected outcomes, keyed by Q/DQ node name.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FusionReport {
    entries: BTreeMap<String, Outcome>,
    reasons: BTreeMap<String, String>,
}

impl FusionReport {
    /// Records that the Q/DQ named `qdq` was fused into `into` (node `node`).
    pub fn fused(&mut self, qdq: &str, into: &str, node: &str) {
        self.entries.insert(qdq.into(), Outcome::Fused { into: into.into(), node: node.into() });
    }

    /// Records that the Q/DQ named `qdq` was removed at no run-time cost.
    pub fn folded(&mut self, qdq: &str, how: &str) {
        self.entries.insert(qdq.into(), Outcome::Folded { how: how.into() });
    }

    /// Records that the fused op `into` named `node` became part of a larger fused op `new_into`
    /// named `new_node`: every Q/DQ fused into the former now reads as fused into the latter.
    pub fn refused(&mut self, into: &str, node: &str, new_into: &str, new_node: &str) {
        for outcome in self.entries.values_mut() {
            if let Outcome::Fused { into: i, node: n } = outcome {
                if i == into && n == node {
                    *outcome = Outcome::Fused { into: new_into.into(), node: new_node.into() };
                }
            }
        }
    }

    /// Records why a rule did not fuse the Q/DQ named `qdq`.
    pub fn declined(&mut self, qdq: &str, reason: impl Into<String>) {
        self.reasons.insert(qdq.into(), reason.into());
    }

    /// Marks every Q/DQ left in `g` as standalone and returns all entries, sorted by name.
    pub fn finish(&mut self, g: &Graph) -> Vec<Entry> {
        let live = g.live_nodes();
        for (id, node) in g.nodes.iter() {
            if !live[id.index()] || !matches!(node.op, Op::Quantize(_) | Op::Dequantize(_) | Op::Requantize { .. }) {
                continue;
            }
            let name = node.name.clone().unwrap_or_else(|| format!("{id}"));
            let reason = self.reasons.get(&name).cloned().unwrap_or_else(|| neighbourhood(g, id));
            self.entries.insert(name, Outcome::Standalone { reason });
        }
        self.entries.iter().map(|(q, o)| Entry { qdq: q.clone(), outcome: o.clone() }).collect()
    }
}

/// Why nothing took a standalone Q/DQ, from what surrounds it: the producer a quantize would have
/// to fuse into, or the consumers a dequantize would have to fuse into.
fn neighbourhood(g: &Graph, id: crate::ir::NodeId) -> String {
    let node = &g.nodes[id];
    let describe = |n: &crate::ir::Node| format!("`{}` ({})", n.op.mnemonic(), n.name.as_deref().unwrap_or("unnamed"));
    if let Op::Dequantize(_) = node.op {
        let users = g.users();
        let readers: Vec<String> = node.outputs.iter().flat_map(|&v| users[v].iter()).map(|&u| describe(&g.nodes[u])).collect();
        if readers.is_empty() {
            return "its result is a graph output".into();
        }
        return format!("its result is read by {}, which no fusion rule gives a quantized input", readers.join(", "));
    }
    let producer = g.producer(node.inputs[0]);
    format!("its input comes from {}, which no fusion rule extends with an output quantize; it runs as its own kernel", describe(producer))
}
