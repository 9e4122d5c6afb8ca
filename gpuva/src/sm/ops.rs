//! The ops a step visitor receives, and the completion tokens only applying them can produce.
//!
//! An op borrows the mapping it concerns and the walker's record of the decision for the length of
//! one visitor call (`'op`). Its consuming methods record the decision and return a token tied to that same `'op`; because `'op` is
//! invariant and fresh for every call, a token cannot be kept from an earlier step or forged, so a
//! visitor that returns `Ok` has necessarily applied the step.

use core::fmt;
use core::marker::PhantomData;
use core::ops::Range;

use crate::va::{GpuVa, Mapping};

/// Makes `'op` invariant (and the type `!Send`, which is fine for a value that lives in one call).
type Invariant<'op> = PhantomData<*mut &'op ()>;

/// Which split-off piece a payload is being made for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    /// The piece below the request: `[V.a, a0)`.
    Prev,
    /// The piece above the request: `[e0, V.e)`.
    Next,
}

/// What a visitor asked for. The walker carries it out right after the visitor returns; nothing in
/// between can observe the tree, so to the visitor the step happened inside the call.
pub(crate) enum Pending<D> {
    None,
    Map(D),
    Unmap,
    Remap {
        prev: Option<(Mapping, D)>,
        next: Option<(Mapping, D)>,
    },
}

/// Step `Map`: insert the requested mapping. Always the last step of a map request.
pub struct OpMap<'op, D> {
    pub(crate) pending: &'op mut Pending<D>,
    pub(crate) mapping: Mapping,
    pub(crate) requested: Range<u64>,
    pub(crate) _inv: Invariant<'op>,
}

impl<'op, D> OpMap<'op, D> {
    /// The mapping to insert (the request).
    #[must_use]
    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// `addr..end` of the new mapping.
    #[must_use]
    pub fn range(&self) -> Range<u64> {
        self.mapping.range()
    }

    /// The range the request asked for. Equal to [`OpMap::range`] unless the VA space's merge
    /// policy widened the map over mergeable neighbours ([`GpuVm::with_merge`]); the widened
    /// parts were announced by `Unmap`/`Remap` steps with keep = true, so their page-table
    /// entries already hold what the new mapping translates to.
    ///
    /// [`GpuVm::with_merge`]: crate::GpuVm::with_merge
    #[must_use]
    pub fn requested(&self) -> Range<u64> {
        self.requested.clone()
    }

    /// Inserts the mapping with payload `data` (its node memory is already claimed).
    pub fn insert(self, data: D) -> OpMapped<'op> {
        *self.pending = Pending::Map(data);
        OpMapped(PhantomData)
    }
}

impl<D> fmt::Debug for OpMap<'_, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("OpMap").field(&self.mapping).finish()
    }
}

/// Step `Unmap`: remove an existing mapping that lies entirely inside the request.
pub struct OpUnmap<'op, D> {
    pub(crate) pending: &'op mut Pending<D>,
    pub(crate) node: GpuVa<'op, D>,
    pub(crate) keep: bool,
    pub(crate) _inv: Invariant<'op>,
}

impl<'op, D> OpUnmap<'op, D> {
    /// The mapping to remove, with its payload.
    #[must_use]
    pub fn va(&self) -> GpuVa<'op, D> {
        self.node
    }

    /// Whether its translations equal the request's, so its PTEs may stay (see [`crate::sm`]).
    #[must_use]
    pub fn keep(&self) -> bool {
        self.keep
    }

    /// Removes the mapping. Its payload comes back through [`SmVisitor::removed`](super::SmVisitor::removed).
    pub fn remove(self) -> OpUnmapped<'op> {
        *self.pending = Pending::Unmap;
        OpUnmapped(PhantomData)
    }
}

impl<D> fmt::Debug for OpUnmap<'_, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpUnmap")
            .field("va", &self.node.mapping())
            .field("keep", &self.keep)
            .finish()
    }
}

/// Step `Remap`: replace an existing mapping by the piece(s) of it outside the request.
pub struct OpRemap<'op, D> {
    pub(crate) pending: &'op mut Pending<D>,
    pub(crate) node: GpuVa<'op, D>,
    pub(crate) keep: bool,
    pub(crate) prev: Option<Mapping>,
    pub(crate) next: Option<Mapping>,
    pub(crate) _inv: Invariant<'op>,
}

impl<'op, D> OpRemap<'op, D> {
    /// The mapping being split, as it is before the step, with its payload.
    #[must_use]
    pub fn va(&self) -> GpuVa<'op, D> {
        self.node
    }

    /// Whether the overlapped part's translations equal the request's (see [`crate::sm`]).
    #[must_use]
    pub fn keep(&self) -> bool {
        self.keep
    }

    /// The piece kept below the request.
    #[must_use]
    pub fn prev(&self) -> Option<&Mapping> {
        self.prev.as_ref()
    }

    /// The piece kept above the request.
    #[must_use]
    pub fn next(&self) -> Option<&Mapping> {
        self.next.as_ref()
    }

    /// The hole the step leaves in the old mapping (`drm_gpuva_op_remap_to_unmap_range`): from the
    /// end of `prev` (or the old start) to the start of `next` (or the old end).
    #[must_use]
    pub fn hole(&self) -> Range<u64> {
        let start = self.prev.map_or(self.node.addr(), |p| p.end());
        let end = self.next.map_or(self.node.end(), |n| n.addr);
        start..end
    }

    /// Splits the mapping: replaces it by its pieces, each with the payload `data` makes from the
    /// old mapping. The old payload comes back through
    /// [`SmVisitor::removed`](super::SmVisitor::removed).
    pub fn remap_with(self, mut data: impl FnMut(Piece, &GpuVa<'op, D>) -> D) -> OpRemapped<'op> {
        let old = self.node;
        *self.pending = Pending::Remap {
            prev: self.prev.map(|m| (m, data(Piece::Prev, &old))),
            next: self.next.map(|m| (m, data(Piece::Next, &old))),
        };
        OpRemapped(PhantomData)
    }

    /// [`OpRemap::remap_with`], giving each piece a clone of the old payload.
    pub fn remap(self) -> OpRemapped<'op>
    where
        D: Clone,
    {
        self.remap_with(|_, old| old.data().clone())
    }
}

impl<D> fmt::Debug for OpRemap<'_, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpRemap")
            .field("va", &self.node.mapping())
            .field("keep", &self.keep)
            .field("prev", &self.prev)
            .field("next", &self.next)
            .finish()
    }
}

/// Step `Prefetch`: one mapping overlapping a [`Request::Prefetch`](super::Request::Prefetch)
/// range. Nothing in the VA space changes; the driver makes the backing resident.
pub struct OpPrefetch<'op, D> {
    pub(crate) seen: &'op mut bool,
    pub(crate) node: GpuVa<'op, D>,
    pub(crate) range: Range<u64>,
    pub(crate) _inv: Invariant<'op>,
}

impl<'op, D> OpPrefetch<'op, D> {
    /// The mapping, with its payload.
    #[must_use]
    pub fn va(&self) -> GpuVa<'op, D> {
        self.node
    }

    /// The part of the mapping inside the prefetch range.
    #[must_use]
    pub fn range(&self) -> Range<u64> {
        self.range.clone()
    }

    /// Acknowledges the step.
    pub fn done(self) -> OpPrefetched<'op> {
        *self.seen = true;
        OpPrefetched(PhantomData)
    }
}

impl<D> fmt::Debug for OpPrefetch<'_, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpPrefetch")
            .field("va", &self.node.mapping())
            .field("range", &self.range)
            .finish()
    }
}

/// Proof that an [`OpPrefetch`] was handled.
#[must_use]
pub struct OpPrefetched<'op>(Invariant<'op>);

impl fmt::Debug for OpPrefetched<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OpPrefetched")
    }
}

/// Proof that an [`OpMap`] was applied.
#[must_use]
pub struct OpMapped<'op>(Invariant<'op>);

/// Proof that an [`OpUnmap`] was applied.
#[must_use]
pub struct OpUnmapped<'op>(Invariant<'op>);

/// Proof that an [`OpRemap`] was applied.
#[must_use]
pub struct OpRemapped<'op>(Invariant<'op>);

impl fmt::Debug for OpMapped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OpMapped")
    }
}

impl fmt::Debug for OpUnmapped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OpUnmapped")
    }
}

impl fmt::Debug for OpRemapped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OpRemapped")
    }
}
