//! Typed `u32` ids and the arena vector they index.

use serde::{Deserialize, Serialize};
use std::marker::PhantomData;
use std::ops::{Index, IndexMut};

/// Defines a `#[repr(transparent)]` u32 id newtype that prints with a prefix.
macro_rules! define_id {
    ($(#[$m:meta])* $name:ident, $prefix:literal) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[repr(transparent)]
        pub struct $name(pub u32);

        impl $name {
            /// The id as an index into its arena.
            pub fn index(self) -> usize {
                self.0 as usize
            }
        }

        impl From<usize> for $name {
            fn from(i: usize) -> Self {
                $name(u32::try_from(i).expect("arena larger than u32::MAX entries"))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}{}", $prefix, self.0)
            }
        }
    };
}

define_id!(
    /// A node (one op application) in a [`super::Graph`].
    NodeId,
    "n"
);
define_id!(
    /// An SSA value produced by exactly one node; prints as `%N`.
    ValueId,
    "%"
);
define_id!(
    /// A symbolic dimension (`B`, `S`) declared by the graph.
    SymId,
    "sym"
);

/// A vector indexed by a typed id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IdVec<I, T> {
    items: Vec<T>,
    #[serde(skip)]
    _id: PhantomData<fn(I) -> I>,
}

impl<I: From<usize> + Copy, T> IdVec<I, T> {
    /// An empty arena.
    pub fn new() -> Self {
        IdVec { items: Vec::new(), _id: PhantomData }
    }

    /// Appends `item` and returns its id.
    pub fn push(&mut self, item: T) -> I {
        let id = I::from(self.items.len());
        self.items.push(item);
        id
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Iterates `(id, &item)` in id order.
    pub fn iter(&self) -> impl Iterator<Item = (I, &T)> + '_ {
        self.items.iter().enumerate().map(|(i, t)| (I::from(i), t))
    }

    /// Iterates all ids in order.
    pub fn ids(&self) -> impl Iterator<Item = I> + '_ {
        (0..self.items.len()).map(I::from)
    }

    /// Iterates the items in id order.
    pub fn values(&self) -> impl Iterator<Item = &T> + '_ {
        self.items.iter()
    }
}

impl<I: From<usize> + Copy, T> Default for IdVec<I, T> {
    fn default() -> Self {
        Self::new()
    }
}

macro_rules! impl_index {
    ($id:ty) => {
        impl<T> Index<$id> for IdVec<$id, T> {
            type Output = T;
            fn index(&self, id: $id) -> &T {
                &self.items[id.index()]
            }
        }
        impl<T> IndexMut<$id> for IdVec<$id, T> {
            fn index_mut(&mut self, id: $id) -> &mut T {
                &mut self.items[id.index()]
            }
        }
        impl<T> IdVec<$id, T> {
            /// The entry for `id`, or `None` when out of range.
            pub fn get(&self, id: $id) -> Option<&T> {
                self.items.get(id.index())
            }
        }
    };
}
impl_index!(NodeId);
impl_index!(ValueId);
impl_index!(SymId);
