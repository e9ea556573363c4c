//! The driver of the match/apply fusion passes (`fuse-dq-matmul`, `fuse-weight-dequant`,
//! `fuse-attention`): each node in id order is offered to the rule's matcher, which finds nothing,
//! a fusion to apply, or a decline naming the Q/DQ nodes that stay and why. The fusion report
//! records both; readers are recomputed after every rewrite (`dce::live_users`, so a Q/DQ shared by
//! several matches fuses into each), and a changed graph is compacted at the end.

use super::dce::{live_users, Users};
use super::{loc, PassCx, PassError};
use crate::ir::{order, Graph, NodeId};

/// What a rule's matcher found at one node.
pub enum Found<F> {
    /// Rewrite with this fusion.
    Apply(F),
    /// Leave the graph as it is; each Q/DQ node stays, with its reason.
    Decline(Vec<(NodeId, String)>),
}

/// What applying a fusion did, for the report.
pub struct Applied {
    /// The node that replaced the pattern.
    pub node: NodeId,
    /// Its op's name in the report (`qmatmul`, `attention`).
    pub into: &'static str,
    /// The Q/DQ nodes it absorbed.
    pub fused: Vec<NodeId>,
    /// Q/DQ nodes around it that stay, with the reason.
    pub declined: Vec<(NodeId, String)>,
}

/// Runs `find` on every node and `apply` on what it finds (see the module doc); returns whether the
/// graph changed. `rule` names the rule in debug logs.
pub fn run<F>(
    g: &mut Graph,
    cx: &mut PassCx,
    rule: &'static str,
    find: impl Fn(&Graph, &Users, NodeId) -> Option<Found<F>>,
    mut apply: impl FnMut(&mut Graph, NodeId, F) -> Result<Applied, PassError>,
) -> Result<bool, PassError> {
    let mut changed = false;
    let mut users = live_users(g);
    for id in g.nodes.ids().collect::<Vec<_>>() {
        match find(g, &users, id) {
            None => {}
            Some(Found::Decline(declines)) => {
                for (q, reason) in declines {
                    tracing::debug!(rule, node = %id, declined = %reason);
                    cx.report.declined(&loc(g, q), reason);
                }
            }
            Some(Found::Apply(fusion)) => {
                let applied = apply(g, id, fusion)?;
                tracing::debug!(rule, node = %id, fused = applied.fused.len());
                for q in applied.fused {
                    cx.report.fused(&loc(g, q), applied.into, &loc(g, applied.node));
                }
                for (q, reason) in applied.declined {
                    cx.report.declined(&loc(g, q), reason);
                }
                changed = true;
                users = live_users(g);
            }
        }
    }
    if changed {
        *g = order::compact(g);
    }
    Ok(changed)
}
