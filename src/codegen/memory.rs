//! Activation memory planning: one arena, buffers reused by liveness.
//!
//! Every value a launch touches that is not a weight or literal gets storage in the arena. Views
//! share their root's storage. A state input (a decoder's `past.{k,v}.L`, [`Graph::state`]) that
//! no launch names gets none: its values live in the runtime's paged KV cache, which launches
//! reach through [`Arg::KvPool`]. A root lives from the step that writes it (model inputs: before the
//! first step) to the last step that reads it or any view of it (model outputs: past the end);
//! lifetimes are inclusive, so a kernel never writes over its own operands. Sizes are taken at the
//! symbols' maxima and rounded up to 256 bytes. Placement is greedy best-fit by decreasing size:
//! each buffer goes at the lowest offset where it overlaps no buffer alive at the same time (the
//! classic offset assignment for interval graphs; optimal peak is NP-hard, this is within a few
//! percent on transformer graphs).

use std::collections::HashMap;

use super::kernel::{max_extents, Arg};
use super::lower::Program;
use crate::ir::{Graph, Op, ValueId};

/// Alignment of every buffer (and of the arena base the runtime allocates).
pub const ALIGN: u64 = 256;

/// One storage root in the arena.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The value owning the storage.
    pub root: ValueId,
    /// Byte offset in the arena.
    pub offset: u64,
    /// Bytes at the largest shapes (a multiple of [`ALIGN`]).
    pub bytes: u64,
    /// First step alive (0 = before the first step).
    pub first: usize,
    /// Last step alive (`steps + 1` = returned to the caller).
    pub last: usize,
}

/// Where every activation lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Storage roots in placement-independent order (by root value).
    pub slots: Vec<Slot>,
    /// Every value with storage (views included) → its slot.
    pub slot_of: HashMap<ValueId, usize>,
    /// Arena size.
    pub peak_bytes: u64,
    /// Sum of all slot sizes: what the arena would be without reuse.
    pub unshared_bytes: u64,
}

impl MemoryPlan {
    /// The arena offset of `v`'s storage, if it has any.
    pub fn offset(&self, v: ValueId) -> Option<u64> {
        self.slot_of.get(&v).map(|&s| self.slots[s].offset)
    }
}

/// Bytes of `v` at the symbols' maxima.
pub fn max_bytes(graph: &Graph, v: ValueId) -> u64 {
    let ty = graph.ty(v);
    let numel: u64 = max_extents(graph, &ty.shape).iter().product();
    (numel * u64::from(ty.dtype.bits())).div_ceil(8)
}

/// True if `v` is bound from outside the arena (a weight or a literal).
pub fn is_constant(graph: &Graph, v: ValueId) -> bool {
    matches!(graph.producer(v).op, Op::Weight { .. } | Op::Scalar { .. })
}

/// Plans the arena for `program`.
pub fn plan(graph: &Graph, program: &Program) -> MemoryPlan {
    let end = program.steps.len() + 1;
    let mut life: HashMap<ValueId, (usize, usize)> = HashMap::new();
    let mut members: HashMap<ValueId, Vec<ValueId>> = HashMap::new();
    let mut touch = |v: ValueId, t: usize, life: &mut HashMap<ValueId, (usize, usize)>| {
        let root = program.root(v);
        let e = life.entry(root).or_insert((t, t));
        e.0 = e.0.min(t);
        e.1 = e.1.max(t);
        let m = members.entry(root).or_default();
        if !m.contains(&v) {
            m.push(v);
        }
    };
    let is_state = |name: &str| graph.state.iter().any(|s| s.input == name);
    for (name, v) in graph.inputs() {
        if !is_state(name) {
            touch(v, 0, &mut life);
        }
    }
    for (i, step) in program.steps.iter().enumerate() {
        for arg in step.launches.iter().flat_map(|l| &l.args) {
            if let Arg::Value(v) = *arg {
                if !is_constant(graph, program.root(v)) {
                    touch(v, i + 1, &mut life);
                }
            }
        }
    }
    for &(_, v) in &graph.outputs {
        if !is_constant(graph, program.root(v)) {
            touch(v, end, &mut life);
        }
    }
    // A state input that a launch does read is bound before the first step like any input.
    for (name, v) in graph.inputs() {
        if let Some(l) = life.get_mut(&v).filter(|_| is_state(name)) {
            l.0 = 0;
        }
    }
    let mut roots: Vec<ValueId> = life.keys().copied().collect();
    roots.sort_by_key(|v| v.index());
    let mut slots: Vec<Slot> = roots
        .iter()
        .map(|&root| {
            let (first, last) = life[&root];
            Slot { root, offset: 0, bytes: max_bytes(graph, root).max(1).next_multiple_of(ALIGN), first, last }
        })
        .collect();
    let peak_bytes = place(&mut slots);
    let mut slot_of = HashMap::new();
    for (i, s) in slots.iter().enumerate() {
        for &v in &members[&s.root] {
            slot_of.insert(v, i);
        }
    }
    let unshared_bytes = slots.iter().map(|s| s.bytes).sum();
    MemoryPlan { slots, slot_of, peak_bytes, unshared_bytes }
}

/// Assigns offsets (greedy by decreasing size, lowest fitting offset); returns the arena size.
fn place(slots: &mut [Slot]) -> u64 {
    let mut order: Vec<usize> = (0..slots.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(slots[i].bytes), slots[i].first, slots[i].root.index()));
    let mut placed: Vec<usize> = Vec::new();
    let mut peak = 0;
    for i in order {
        let (first, last, bytes) = (slots[i].first, slots[i].last, slots[i].bytes);
        let mut busy: Vec<(u64, u64)> = placed
            .iter()
            .map(|&j| &slots[j])
            .filter(|s| s.first <= last && first <= s.last)
            .map(|s| (s.offset, s.offset + s.bytes))
            .collect();
        busy.sort_unstable();
        let mut offset = 0;
        for (start, stop) in busy {
            if offset + bytes <= start {
                break;
            }
            offset = offset.max(stop);
        }
        slots[i].offset = offset;
        peak = peak.max(offset + bytes);
        placed.push(i);
    }
    peak
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(root: usize, bytes: u64, first: usize, last: usize) -> Slot {
        Slot { root: ValueId::from(root), offset: 0, bytes, first, last }
    }

    fn overlaps(a: &Slot, b: &Slot) -> bool {
        a.first <= b.last && b.first <= a.last && a.offset < b.offset + b.bytes && b.offset < a.offset + a.bytes
    }

    #[test]
    fn disjoint_lifetimes_share_memory() {
        // A chain: each value is read by the next step only.
        let mut s = vec![slot(0, 1024, 0, 1), slot(1, 1024, 1, 2), slot(2, 1024, 2, 3), slot(3, 1024, 3, 4)];
        let peak = place(&mut s);
        assert_eq!(peak, 2048);
        for (i, a) in s.iter().enumerate() {
            for b in &s[i + 1..] {
                assert!(!overlaps(a, b), "{a:?} and {b:?} collide");
            }
        }
    }

    #[test]
    fn a_long_lived_buffer_is_never_overwritten() {
        let mut s = vec![slot(0, 4096, 0, 9), slot(1, 256, 1, 2), slot(2, 8192, 3, 4), slot(3, 256, 5, 9)];
        let peak = place(&mut s);
        for (i, a) in s.iter().enumerate() {
            for b in &s[i + 1..] {
                assert!(!overlaps(a, b), "{a:?} and {b:?} collide");
            }
        }
        assert_eq!(peak, 4096 + 8192);
    }
}
