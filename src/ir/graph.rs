//! The graph: an arena of nodes and SSA values.

use super::{IdVec, NodeId, Op, Shape, SymId, Symbol, TensorType, ValueId};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

/// One op application.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// What the node computes.
    pub op: Op,
    /// Operands, in the op's documented order.
    pub inputs: SmallVec<[ValueId; 4]>,
    /// Results; each value's `producer` points back here.
    pub outputs: SmallVec<[ValueId; 2]>,
    /// The model's name for the layer this node came from (`encoder.layer.3.attention.self.query`).
    pub name: Option<String>,
}

/// An SSA value: its type and the node slot that produces it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValueInfo {
    /// Element type and shape.
    pub ty: TensorType,
    /// The producing node.
    pub producer: NodeId,
    /// Which output of the producer.
    pub slot: u32,
}

/// A dataflow graph in SSA form.
///
/// Invariants (checked by [`super::verify`]): every input of a node is a value of the graph, the
/// graph is acyclic, every value's producer lists it at `slot`, and every node's output types are
/// what [`super::infer`] derives from its inputs. Nodes may become dead after rewrites; they stay
/// in the arena until [`Graph::compact`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    /// Name shown in dumps (the model name).
    pub name: String,
    /// Symbolic dimensions.
    pub symbols: IdVec<SymId, Symbol>,
    /// The node arena.
    pub nodes: IdVec<NodeId, Node>,
    /// The value arena.
    pub values: IdVec<ValueId, ValueInfo>,
    /// Named graph results, in order.
    pub outputs: Vec<(String, ValueId)>,
    /// State carried from one run to the next (a decoder's KV cache), by input and output name.
    #[serde(default)]
    pub state: Vec<StateSlot>,
}

/// A state tensor of a stepwise graph (a decoder's KV cache): the run reads it as the graph input
/// `input`, and the caller appends the graph output `update` to it along `axis` before the next
/// run. The verifier checks that the two have one dtype and one shape except along `axis`, where
/// the input's extent is a symbol (the state's length, bounded by the symbol's max).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSlot {
    /// The graph input holding the state so far.
    pub input: String,
    /// The graph output holding this run's addition.
    pub update: String,
    /// The axis the addition is appended along.
    pub axis: usize,
}

impl Graph {
    /// An empty graph.
    pub fn new(name: impl Into<String>) -> Self {
        Graph { name: name.into(), ..Default::default() }
    }

    /// Declares a symbolic dimension.
    pub fn add_symbol(&mut self, name: impl Into<String>, max: u64) -> SymId {
        self.symbols.push(Symbol { name: name.into(), max })
    }

    /// The symbol with this name.
    pub fn symbol(&self, name: &str) -> Option<SymId> {
        self.symbols.iter().find(|(_, s)| s.name == name).map(|(id, _)| id)
    }

    /// Appends a node with the given output types (not checked here; see `verify`).
    pub fn add_node(&mut self, op: Op, inputs: &[ValueId], output_types: Vec<TensorType>, name: Option<String>) -> NodeId {
        let id = NodeId::from(self.nodes.len());
        let outputs = output_types
            .into_iter()
            .enumerate()
            .map(|(slot, ty)| self.values.push(ValueInfo { ty, producer: id, slot: slot as u32 }))
            .collect();
        self.nodes.push(Node { op, inputs: inputs.into(), outputs, name })
    }

    /// The type of a value.
    pub fn ty(&self, v: ValueId) -> &TensorType {
        &self.values[v].ty
    }

    /// The shape of a value.
    pub fn shape(&self, v: ValueId) -> &Shape {
        &self.values[v].ty.shape
    }

    /// The node producing `v`.
    pub fn producer(&self, v: ValueId) -> &Node {
        &self.nodes[self.values[v].producer]
    }

    /// The `Input` nodes' values with their binding names, in node order.
    pub fn inputs(&self) -> Vec<(&str, ValueId)> {
        self.nodes
            .values()
            .filter_map(|n| match &n.op {
                Op::Input { name } => n.outputs.first().map(|&v| (name.as_str(), v)),
                _ => None,
            })
            .collect()
    }

    /// Replaces every use of `old` (node inputs and graph outputs) with `new`.
    pub fn replace_all_uses(&mut self, old: ValueId, new: ValueId) {
        for id in self.nodes.ids().collect::<Vec<_>>() {
            for input in self.nodes[id].inputs.iter_mut() {
                if *input == old {
                    *input = new;
                }
            }
        }
        for (_, out) in self.outputs.iter_mut() {
            if *out == old {
                *out = new;
            }
        }
    }

    /// For every value, the nodes that read it (a node appears once per operand slot).
    pub fn users(&self) -> IdVec<ValueId, SmallVec<[NodeId; 2]>> {
        let mut users: IdVec<ValueId, SmallVec<[NodeId; 2]>> = IdVec::new();
        for _ in 0..self.values.len() {
            users.push(SmallVec::new());
        }
        for (id, node) in self.nodes.iter() {
            for &v in &node.inputs {
                users[v].push(id);
            }
        }
        users
    }

    /// Nodes whose results reach a graph output, plus all `Input` nodes (the signature is kept).
    pub fn live_nodes(&self) -> Vec<bool> {
        let mut live = vec![false; self.nodes.len()];
        let mut stack: Vec<NodeId> = self.outputs.iter().map(|&(_, v)| self.values[v].producer).collect();
        stack.extend(self.nodes.iter().filter(|(_, n)| matches!(n.op, Op::Input { .. })).map(|(id, _)| id));
        while let Some(id) = stack.pop() {
            if std::mem::replace(&mut live[id.index()], true) {
                continue;
            }
            stack.extend(self.nodes[id].inputs.iter().map(|&v| self.values[v].producer));
        }
        live
    }
}
