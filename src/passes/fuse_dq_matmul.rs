//! `fuse-dq-matmul`: PLACEHOLDER, replaced by the real pass.

use super::{Pass, PassCx, PassError};
use crate::ir::Graph;

/// `fuse-dq-matmul`.
pub struct FuseDqMatmul;

impl Pass for FuseDqMatmul {
    fn name(&self) -> &'static str {
        "fuse-dq-matmul"
    }
    fn run(&self, _g: &mut Graph, _cx: &mut PassCx) -> Result<bool, PassError> {
        Ok(false)
    }
}
