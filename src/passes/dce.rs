//! `dce`: PLACEHOLDER, replaced by the real pass.

use super::{Pass, PassCx, PassError};
use crate::ir::Graph;

/// `dce`.
pub struct Dce;

impl Pass for Dce {
    fn name(&self) -> &'static str {
        "dce"
    }
    fn run(&self, _g: &mut Graph, _cx: &mut PassCx) -> Result<bool, PassError> {
        Ok(false)
    }
}
