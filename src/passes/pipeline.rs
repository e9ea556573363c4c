//! The fusion pipeline, top to bottom. Each pass's file shows its rewrite.

use super::Pass;

/// The passes that turn a graph with explicit Q/DQ into fused quantized ops, in order.
pub fn fusion() -> Vec<Box<dyn Pass>> {
    vec![]
}
