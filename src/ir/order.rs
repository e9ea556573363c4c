//! Canonical node order, renumbering, and petgraph views for analyses.
//!
//! The canonical order is structural: graph inputs first (in arena order), then a post-order DFS
//! from each graph output visiting operands left to right, then any dead nodes the same way. Two
//! graphs that differ only in arena order therefore print identically.

use super::{Graph, Node, NodeId, ValueId, ValueInfo};
use petgraph::graph::{DiGraph, NodeIndex};

/// Builds a petgraph view: one graph node per IR node (same index), one edge per operand, from
/// the node that lists the operand among its outputs. Operands no node defines are skipped (the
/// verifier reports them), so this never fails on a corrupt graph.
pub fn petgraph_view(g: &Graph) -> DiGraph<NodeId, ValueId> {
    let mut pg = DiGraph::with_capacity(g.nodes.len(), g.values.len());
    let mut defined_by = vec![None; g.values.len()];
    for (id, node) in g.nodes.iter() {
        pg.add_node(id);
        for &v in &node.outputs {
            if let Some(slot) = defined_by.get_mut(v.index()) {
                *slot = Some(id);
            }
        }
    }
    for (id, node) in g.nodes.iter() {
        for &v in &node.inputs {
            if let Some(Some(src)) = defined_by.get(v.index()) {
                pg.add_edge(NodeIndex::new(src.index()), NodeIndex::new(id.index()), v);
            }
        }
    }
    pg
}

/// Nodes on a cycle, if the graph has one (found with petgraph's Tarjan SCCs).
pub fn find_cycle(g: &Graph) -> Option<Vec<NodeId>> {
    let pg = petgraph_view(g);
    petgraph::algo::tarjan_scc(&pg).into_iter().find_map(|scc| {
        let self_loop = scc.len() == 1 && pg.contains_edge(scc[0], scc[0]);
        (scc.len() > 1 || self_loop).then(|| scc.iter().map(|&i| pg[i]).collect())
    })
}

/// The canonical topological order of all nodes, or `None` if the graph has a cycle.
pub fn canonical_order(g: &Graph) -> Option<Vec<NodeId>> {
    if find_cycle(g).is_some() {
        return None;
    }
    let mut visited = vec![false; g.nodes.len()];
    let mut order = Vec::with_capacity(g.nodes.len());
    let inputs = g.nodes.iter().filter(|(_, n)| matches!(n.op, super::Op::Input { .. }));
    let roots: Vec<NodeId> =
        inputs.map(|(id, _)| id).chain(g.outputs.iter().map(|&(_, v)| g.values[v].producer)).chain(g.nodes.ids()).collect();
    for root in roots {
        post_order(g, root, &mut visited, &mut order);
    }
    Some(order)
}

/// The nodes `roots` depend on (themselves included), in post-order from each root in turn (the
/// operands of a node before it, left to right), or `None` if the graph has a cycle.
pub fn order_from(g: &Graph, roots: &[NodeId]) -> Option<Vec<NodeId>> {
    if find_cycle(g).is_some() {
        return None;
    }
    let mut visited = vec![false; g.nodes.len()];
    let mut order = vec![];
    for &root in roots {
        post_order(g, root, &mut visited, &mut order);
    }
    Some(order)
}

/// Iterative post-order DFS from `root` over operands (left to right).
fn post_order(g: &Graph, root: NodeId, visited: &mut [bool], order: &mut Vec<NodeId>) {
    if visited[root.index()] {
        return;
    }
    let mut stack = vec![(root, 0usize)];
    visited[root.index()] = true;
    while let Some((id, next)) = stack.pop() {
        let inputs = &g.nodes[id].inputs;
        if next < inputs.len() {
            stack.push((id, next + 1));
            // Dangling operands (reported by the verifier) have no producer to visit.
            let Some(dep) = g.values.get(inputs[next]).map(|v| v.producer).filter(|p| p.index() < visited.len()) else { continue };
            if !visited[dep.index()] {
                visited[dep.index()] = true;
                stack.push((dep, 0));
            }
        } else {
            order.push(id);
        }
    }
}

/// Rebuilds the graph with nodes in canonical order and values numbered in order of definition.
/// Returns the graph unchanged if it has a cycle (the verifier reports that).
pub fn renumber(g: &Graph) -> Graph {
    match canonical_order(g) {
        Some(order) => rebuild(g, &order),
        None => g.clone(),
    }
}

/// Drops nodes that reach no graph output (graph inputs are kept), then renumbers.
pub fn compact(g: &Graph) -> Graph {
    let Some(order) = canonical_order(g) else { return g.clone() };
    let live = g.live_nodes();
    let order: Vec<NodeId> = order.into_iter().filter(|id| live[id.index()]).collect();
    rebuild(g, &order)
}

/// A copy of `g` holding exactly the nodes of `order` (which must be topological), renumbered.
fn rebuild(g: &Graph, order: &[NodeId]) -> Graph {
    let mut value_map: Vec<Option<ValueId>> = vec![None; g.values.len()];
    let mut out = Graph { name: g.name.clone(), symbols: g.symbols.clone(), ..Default::default() };
    for &old_id in order {
        let node = &g.nodes[old_id];
        let new_id = NodeId::from(out.nodes.len());
        let inputs = node.inputs.iter().map(|&v| value_map[v.index()].expect("operand defined earlier")).collect();
        let mut outputs = smallvec::SmallVec::new();
        for (slot, &v) in node.outputs.iter().enumerate() {
            let nv = out.values.push(ValueInfo { ty: g.values[v].ty.clone(), producer: new_id, slot: slot as u32 });
            value_map[v.index()] = Some(nv);
            outputs.push(nv);
        }
        out.nodes.push(Node { op: node.op.clone(), inputs, outputs, name: node.name.clone() });
    }
    out.outputs = g.outputs.iter().map(|(n, v)| (n.clone(), value_map[v.index()].expect("output kept"))).collect();
    out.state = g.state.clone();
    out
}
