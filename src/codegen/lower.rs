//! Lowering a fused graph to a [`Program`]: every live node, in canonical order, becomes kernel
//! launches, a view of an operand, or nothing (see [`super::kernel`]).

use std::collections::{BTreeMap, HashMap};

use super::kernel::{Arg, KernelDef, Launch, LowerCx, LowerError, LowerOptions, Lowered, PagedKv};
use super::ops;
use crate::ir::{order, Graph, NodeId, ValueId};

/// The launches of one node.
#[derive(Debug, Clone)]
pub struct Step {
    /// The IR node.
    pub node: NodeId,
    /// Its launches, in order.
    pub launches: Vec<Launch>,
}

/// A lowered graph: steps in execution order plus the views.
#[derive(Debug, Clone)]
pub struct Program {
    /// Nodes that launch kernels, in execution order.
    pub steps: Vec<Step>,
    /// View results → the operand whose storage they share.
    pub alias_of: HashMap<ValueId, ValueId>,
}

impl Program {
    /// The value that owns `v`'s storage (follows views).
    pub fn root(&self, mut v: ValueId) -> ValueId {
        while let Some(&up) = self.alias_of.get(&v) {
            v = up;
        }
        v
    }

    /// Distinct kernels by entry name, in first-use order.
    pub fn kernels(&self) -> Vec<&KernelDef> {
        let mut seen = BTreeMap::new();
        let mut out = Vec::new();
        for l in self.steps.iter().flat_map(|s| &s.launches) {
            if seen.insert(l.kernel.name.as_str(), ()).is_none() {
                out.push(&l.kernel);
            }
        }
        out
    }

    /// Every launch in order, with the node it belongs to.
    pub fn launches(&self) -> impl Iterator<Item = (NodeId, &Launch)> {
        self.steps.iter().flat_map(|s| s.launches.iter().map(move |l| (s.node, l)))
    }
}

/// Lowers every live node of `graph` for SM version `sm` (90 for `sm_90a`), without a paged KV
/// cache (encoders).
pub fn lower_graph(graph: &Graph, sm: u32, options: LowerOptions) -> Result<Program, LowerError> {
    lower_graph_paged(graph, sm, options, None)
}

/// [`lower_graph`] for a decoder step graph whose KV cache lives in the runtime's pages (`paged`).
pub fn lower_graph_paged(graph: &Graph, sm: u32, options: LowerOptions, paged: Option<PagedKv>) -> Result<Program, LowerError> {
    let cx = LowerCx { options, paged, ..LowerCx::new(graph, sm) };
    let order = order::canonical_order(graph)
        .ok_or_else(|| LowerError { node: format!("graph `{}`", graph.name), reason: "the graph has a cycle".into() })?;
    let live = graph.live_nodes();
    let mut program = Program { steps: Vec::new(), alias_of: HashMap::new() };
    for node in order.into_iter().filter(|n| live[n.index()]) {
        match ops::lower_node(&cx, node)? {
            Lowered::Launches(launches) => {
                check_launches(&cx, node, &launches)?;
                program.steps.push(Step { node, launches });
            }
            Lowered::Alias(of) => {
                let out = graph.nodes[node].outputs[0];
                program.alias_of.insert(out, of);
            }
            Lowered::Nothing => {}
        }
    }
    check_names_unique(&program)?;
    Ok(program)
}

/// Each launch passes one argument per parameter, and together they write every result.
fn check_launches(cx: &LowerCx, node: NodeId, launches: &[Launch]) -> Result<(), LowerError> {
    for l in launches {
        if l.args.len() != l.kernel.params.len() {
            let msg = format!("kernel `{}` takes {} parameters but got {} arguments", l.kernel.name, l.kernel.params.len(), l.args.len());
            return Err(cx.error(node, msg));
        }
    }
    for &out in &cx.graph.nodes[node].outputs {
        let written = launches.iter().flat_map(|l| &l.args).any(|a| *a == Arg::Value(out));
        if !written {
            return Err(cx.error(node, format!("no launch writes result %{}", out.index())));
        }
    }
    Ok(())
}

/// Two different sources under one entry name would be a hash collision: refuse rather than run
/// the wrong kernel.
fn check_names_unique(p: &Program) -> Result<(), LowerError> {
    let mut by_name: HashMap<&str, &str> = HashMap::new();
    for (_, l) in p.launches() {
        let prev = by_name.entry(&l.kernel.name).or_insert(&l.kernel.source);
        if *prev != l.kernel.source {
            return Err(LowerError { node: l.kernel.name.clone(), reason: "two different kernel sources hash to this name".into() });
        }
    }
    Ok(())
}
