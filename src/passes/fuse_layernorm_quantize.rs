//! `fuse-layernorm-quantize`: PLACEHOLDER, replaced by the real pass.

use super::{Pass, PassCx, PassError};
use crate::ir::Graph;

/// `fuse-layernorm-quantize`.
pub struct FuseLayerNormQuantize;

impl Pass for FuseLayerNormQuantize {
    fn name(&self) -> &'static str {
        "fuse-layernorm-quantize"
    }
    fn run(&self, _g: &mut Graph, _cx: &mut PassCx) -> Result<bool, PassError> {
        Ok(false)
    }
}
