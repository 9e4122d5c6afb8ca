//! Recorded ops: plain values describing what a request would do, without doing it.

use core::ops::Range;

use crate::va::{Mapping, ObjId};

/// One recorded split/merge operation (`drm_gpuva_op`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Insert a new mapping (always the last op of a map request).
    Map(Mapping),
    /// Replace `unmap` by the pieces of it outside the request.
    Remap {
        /// The mapping being split, as it was before the request.
        unmap: Mapping,
        /// Whether the overlapped part already translates as the request does.
        keep: bool,
        /// The piece kept below the request.
        prev: Option<Mapping>,
        /// The piece kept above the request.
        next: Option<Mapping>,
    },
    /// Remove a mapping that lies entirely inside the request.
    Unmap {
        /// The mapping removed.
        va: Mapping,
        /// Whether it already translates as the request does.
        keep: bool,
    },
    /// Prefetch (make resident) the backing of a mapping that overlaps a
    /// [`Request::Prefetch`] range; changes nothing in the VA space.
    Prefetch(Mapping),
}

impl Op {
    /// The address range whose translations this op removes or replaces: the whole mapping for
    /// `Unmap`, the hole for `Remap`, the new range for `Map`.
    #[must_use]
    pub fn affected(&self) -> Range<u64> {
        match self {
            Op::Map(m) => m.range(),
            Op::Unmap { va, .. } => va.range(),
            Op::Prefetch(m) => m.addr..m.addr,
            Op::Remap {
                unmap, prev, next, ..
            } => prev.map_or(unmap.addr, |p| p.end())..next.map_or(unmap.end(), |n| n.addr),
        }
    }
}

/// The request an op list was recorded for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// A map request.
    Map(Mapping),
    /// An unmap of a range.
    Unmap {
        /// First address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// Unmap every mapping of an object (GEM close), in ascending address order: one `Unmap`
    /// (keep = false) per mapping. See [`crate::sm`], "Extensions".
    UnmapObject {
        /// The object.
        obj: ObjId,
    },
    /// Prefetch a validated range: one [`Op::Prefetch`] per mapping overlapping it, ascending;
    /// changes nothing.
    Prefetch {
        /// First address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// Attribute split: cut every mapping that straddles an edge of the range at that edge, so
    /// the range is covered by whole mappings whose attributes can then be changed. Emits only
    /// `Remap`s with an empty hole and keep = true; never unmaps, never maps.
    Split {
        /// First address.
        addr: u64,
        /// Length.
        len: u64,
    },
}

/// What applying a recorded request needs: the request, the VA space and state it was recorded
/// against, and its node bound. Core-only: the ops themselves go wherever the recording sink put
/// them ([`GpuVm::sm_map_walk`](crate::GpuVm::sm_map_walk)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub(crate) request: Request,
    /// The VA space it was recorded on.
    pub(crate) vm: usize,
    pub(crate) generation: u64,
    pub(crate) nodes: usize,
}

impl Plan {
    /// The request.
    #[must_use]
    pub fn request(&self) -> Request {
        self.request
    }

    /// Nodes a claim must hold for [`GpuVm::apply_plan`](crate::GpuVm::apply_plan): exactly what
    /// it checks.
    #[must_use]
    pub fn nodes_needed(&self) -> usize {
        self.nodes
    }
}

/// A recorded op list (feature `alloc`): walk it as often as needed, then apply it with
/// [`GpuVm::apply_ops`](crate::GpuVm::apply_ops) while the VA space is unchanged.
#[cfg(feature = "alloc")]
#[derive(Clone, Debug)]
pub struct OpList {
    pub(crate) plan: Plan,
    pub(crate) ops: alloc::vec::Vec<Op>,
}

#[cfg(feature = "alloc")]
impl OpList {
    /// The request the list was recorded for.
    #[must_use]
    pub fn request(&self) -> Request {
        self.plan.request
    }

    /// The plan to apply.
    #[must_use]
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The ops, in the order the walker produced them.
    #[must_use]
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Iterates the ops; `.rev()` walks them backwards (for unwinding).
    pub fn iter(&self) -> core::slice::Iter<'_, Op> {
        self.ops.iter()
    }

    /// Number of ops.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the request has no ops (an unmap of an empty range, a split with nothing to cut).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Nodes a claim must hold for [`GpuVm::apply_ops`](crate::GpuVm::apply_ops): exactly what
    /// it checks (the request's bound, not the nodes these particular ops end up using).
    #[must_use]
    pub fn nodes_needed(&self) -> usize {
        self.plan.nodes
    }
}

#[cfg(feature = "alloc")]
impl<'a> IntoIterator for &'a OpList {
    type Item = &'a Op;
    type IntoIter = core::slice::Iter<'a, Op>;
    fn into_iter(self) -> Self::IntoIter {
        self.ops.iter()
    }
}
