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
            let reason = self.reasons.get(&name).cloned().unwrap_or_else(|| "no fusion rule applies to its producer or consumer".into());
            self.entries.insert(name, Outcome::Standalone { reason });
        }
        self.entries.iter().map(|(q, o)| Entry { qdq: q.clone(), outcome: o.clone() }).collect()
    }
}
