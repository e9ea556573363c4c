//! Graph construction with types derived by the type rules, for importers, passes and tests.

use super::{infer, BinaryOp, DType, Graph, Op, TensorType, UnaryOp, ValueId};

/// Appends nodes to a graph, deriving each output type from the op's type rule.
///
/// Errors are the type rule's message; callers add the layer or tensor name.
pub struct Builder<'g> {
    /// The graph being built.
    pub graph: &'g mut Graph,
    /// Name attached to nodes created from now on (the model's layer name).
    pub scope: Option<String>,
}

impl<'g> Builder<'g> {
    /// A builder appending to `graph`.
    pub fn new(graph: &'g mut Graph) -> Self {
        Builder { graph, scope: None }
    }

    /// Adds `op`; `declared` gives the output type of ops that cannot derive it.
    pub fn add(&mut self, op: Op, inputs: &[ValueId], declared: Option<TensorType>) -> Result<Vec<ValueId>, String> {
        let tys: Vec<&TensorType> = inputs.iter().map(|&v| self.graph.ty(v)).collect();
        let declared: Vec<TensorType> = declared.into_iter().collect();
        let outs = infer::infer(&op, &tys, &declared).map_err(|m| format!("{}: {m}", op.mnemonic()))?;
        let id = self.graph.add_node(op, inputs, outs, self.scope.clone());
        Ok(self.graph.nodes[id].outputs.to_vec())
    }

    /// Adds a single-output op.
    pub fn add1(&mut self, op: Op, inputs: &[ValueId], declared: Option<TensorType>) -> Result<ValueId, String> {
        Ok(self.add(op, inputs, declared)?[0])
    }

    /// A graph input.
    pub fn input(&mut self, name: &str, ty: TensorType) -> Result<ValueId, String> {
        self.add1(Op::Input { name: name.into() }, &[], Some(ty))
    }

    /// A weight of the store.
    pub fn weight(&mut self, name: &str, ty: TensorType) -> Result<ValueId, String> {
        self.add1(Op::Weight { name: name.into() }, &[], Some(ty))
    }

    /// A scalar literal.
    pub fn scalar(&mut self, value: f64, dtype: DType) -> Result<ValueId, String> {
        self.add1(Op::Scalar { value }, &[], Some(TensorType::new(dtype, [])))
    }

    /// An element-wise binary op.
    pub fn binary(&mut self, op: BinaryOp, a: ValueId, b: ValueId) -> Result<ValueId, String> {
        self.add1(Op::Binary(op), &[a, b], None)
    }

    /// An element-wise unary op.
    pub fn unary(&mut self, op: UnaryOp, x: ValueId) -> Result<ValueId, String> {
        self.add1(Op::Unary(op), &[x], None)
    }

    /// A reshape to `ty`'s shape.
    pub fn reshape(&mut self, x: ValueId, ty: TensorType) -> Result<ValueId, String> {
        self.add1(Op::Reshape, &[x], Some(ty))
    }

    /// A transpose.
    pub fn transpose(&mut self, x: ValueId, perm: &[usize]) -> Result<ValueId, String> {
        self.add1(Op::Transpose { perm: perm.to_vec() }, &[x], None)
    }

    /// A matmul.
    pub fn matmul(&mut self, a: ValueId, b: ValueId, transpose_a: bool, transpose_b: bool) -> Result<ValueId, String> {
        self.add1(Op::MatMul { transpose_a, transpose_b }, &[a, b], None)
    }

    /// A cast to `dtype`.
    pub fn cast(&mut self, x: ValueId, dtype: DType) -> Result<ValueId, String> {
        let ty = self.graph.ty(x).with_dtype(dtype);
        self.add1(Op::Cast, &[x], Some(ty))
    }
}
