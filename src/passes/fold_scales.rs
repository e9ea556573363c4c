//! `fold-scales`: PLACEHOLDER, replaced by the real pass.

use super::{Pass, PassCx, PassError};
use crate::ir::Graph;

/// `fold-scales`.
pub struct FoldScales;

impl Pass for FoldScales {
    fn name(&self) -> &'static str {
        "fold-scales"
    }
    fn run(&self, _g: &mut Graph, _cx: &mut PassCx) -> Result<bool, PassError> {
        Ok(false)
    }
}
