//! `drop-identity-casts`: a `cast` to the dtype its operand already has is the identity, so its
//! readers (and graph outputs) read the operand instead.
//!
//! ```text
//! before:  %72 = reshape %71 : f16[B,S,3,64]
//!          %73 = transpose %72 {perm=[0,2,1,3]} : f16[B,3,S,64]
//!          %74 = cast %73 : f16[B,3,S,64]
//!          %80 = causal_attention %68, %74, %79, %2, %3, %1 {heads=9, kv_heads=3, scale=0.125} : f16[B,S,576]
//!          return "present.k.0" = %74
//! after:   %73 = transpose %72 {perm=[0,2,1,3]} : f16[B,3,S,64]
//!          %80 = causal_attention %68, %73, %79, %2, %3, %1 {heads=9, kv_heads=3, scale=0.125} : f16[B,S,576]
//!          return "present.k.0" = %73
//! ```
//!
//! Rule `identity-cast`: `cast(x) : T` where `x : T` (same dtype; a cast never changes the shape)
//! ⇒ `x`. The decoder importer's KV-cache casts (f16 cache read by f16 compute) are the common
//! case; on the GPU each was an element-wise kernel.
//!
//! Side condition: when the cast's result is a graph output and `x` is a graph input, a source
//! (`weight`, `scalar`, `iota`) or itself a graph output, the cast stays: it is what gives that output
//! storage of its own.
//!
//! Exact: rounding a value to the dtype it already has returns it unchanged (NaN payloads
//! included, as the interpreter's casts keep them). Idempotent: no identity cast is left for the
//! rule, except those the side condition keeps, which it keeps again. A changed graph is compacted.
//!
//! Interactions: runs right after `fold-constants` (which folds casts of weights), so every later
//! pass sees the operand itself — `fuse-kv-cache` finds the cache input, `cse` merges what
//! reads it.

use super::{Pass, PassCx, PassError};
use crate::ir::{order, Graph, NodeId, Op, ValueId};

/// `drop-identity-casts`.
pub struct DropIdentityCasts;

impl Pass for DropIdentityCasts {
    fn name(&self) -> &'static str {
        "drop-identity-casts"
    }

    fn run(&self, g: &mut Graph, _cx: &mut PassCx) -> Result<bool, PassError> {
        // One node at a time in topological order, on the graph as rewritten so far: in a chain
        // of casts each match sees its operand already replaced, and the side condition is judged
        // on the outputs as they are now.
        let Some(order) = order::canonical_order(g) else { return Ok(false) };
        let live = g.live_nodes();
        let mut changed = false;
        for id in order.into_iter().filter(|id| live[id.index()]) {
            if let Some((x, y)) = match_identity_cast(g, id) {
                tracing::debug!(rule = "identity-cast", node = %id);
                g.replace_all_uses(y, x);
                changed = true;
            }
        }
        if changed {
            *g = order::compact(g);
        }
        Ok(changed)
    }
}

/// `cast(x) : T, x : T ⇒ x`, unless the result is a graph output that needs its own storage.
/// Returns `(x, cast result)`.
fn match_identity_cast(g: &Graph, id: NodeId) -> Option<(ValueId, ValueId)> {
    let node = &g.nodes[id];
    let (Op::Cast, [x], [y]) = (&node.op, node.inputs.as_slice(), node.outputs.as_slice()) else { return None };
    if g.ty(*x).dtype != g.ty(*y).dtype {
        return None;
    }
    let is_output = |v: ValueId| g.outputs.iter().any(|&(_, o)| o == v);
    let bound_outside = g.producer(*x).op.is_source();
    if is_output(*y) && (bound_outside || is_output(*x)) {
        return None;
    }
    Some((*x, *y))
}
