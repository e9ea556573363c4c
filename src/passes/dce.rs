//! `dce`: removes every node whose results reach no graph output.
//!
//! ```text
//! before:  %1 = weight @w : f16[16,8]
//!          %2 = quantize %0 {f8e4m3, per_tensor, scale=0.5} : f8e4m3[B,8]   # read by nothing
//!          %3 = matmul %0, %1 {transpose_b} : f16[B,16]
//!          return "y" = %3
//! after:   %1 = weight @w : f16[16,8]
//!          %2 = matmul %0, %1 {transpose_b} : f16[B,16]
//!          return "y" = %2
//! ```
//!
//! Preconditions: none. `input` nodes are always kept (they are the graph's signature), even when
//! nothing reads them. The graph is rebuilt with [`order::compact`], so ids come out in canonical
//! order; when nothing is dead the graph is left untouched and the pass reports no change.
//!
//! Idempotent: a compacted graph has no dead node. Exact: only unobservable nodes go.
//!
//! Interactions: runs last in the fusion pipeline. The other passes of this directory compact the
//! graph themselves when they change it (README.md §4), so `dce` mostly collects what
//! passes that leave orphans behind did not. [`live_users`] and [`output_uses`] are the use counts
//! those passes decide with: a dead reader does not count as a use.

use super::{Pass, PassCx, PassError};
use crate::ir::{order, Graph, IdVec, NodeId, ValueId};
use smallvec::SmallVec;

/// `dce`.
pub struct Dce;

impl Pass for Dce {
    fn name(&self) -> &'static str {
        "dce"
    }

    fn run(&self, g: &mut Graph, _cx: &mut PassCx) -> Result<bool, PassError> {
        let dead = g.live_nodes().iter().filter(|&&live| !live).count();
        if dead == 0 {
            return Ok(false);
        }
        tracing::debug!(rule = "remove_dead", nodes = dead);
        *g = order::compact(g);
        Ok(true)
    }
}

/// The live readers of each value ([`live_users`]).
pub(crate) type Users = IdVec<ValueId, SmallVec<[NodeId; 2]>>;

/// For every value, the *live* nodes that read it (once per operand slot).
pub(crate) fn live_users(g: &Graph) -> Users {
    let live = g.live_nodes();
    let mut users = g.users();
    for (v, _) in g.values.iter() {
        users[v].retain(|n: &mut NodeId| live[n.index()]);
    }
    users
}

/// How many graph outputs name `v`.
pub(crate) fn output_uses(g: &Graph, v: ValueId) -> usize {
    g.outputs.iter().filter(|(_, o)| *o == v).count()
}
