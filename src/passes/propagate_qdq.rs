//! `propagate-qdq`: PLACEHOLDER, replaced by the real pass.

use super::{Pass, PassCx, PassError};
use crate::ir::Graph;

/// `propagate-qdq`.
pub struct PropagateQdq;

impl Pass for PropagateQdq {
    fn name(&self) -> &'static str {
        "propagate-qdq"
    }
    fn run(&self, _g: &mut Graph, _cx: &mut PassCx) -> Result<bool, PassError> {
        Ok(false)
    }
}
