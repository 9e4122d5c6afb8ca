//! Split and merge: the one walker behind [`GpuVm::step`](crate::GpuVm::step) and the op-list
//! recorders, in both of its uses.
//!
//! # What the walker emits
//!
//! Exactly what drm_gpuvm's `__drm_gpuvm_sm_map` / `__drm_gpuvm_sm_unmap` emit
//! (`docs/semantics.md` in the repository): for every existing mapping `V` that overlaps the request
//! `R = [a0, e0)`, in ascending address order, one `Unmap` (V has no piece left) or one `Remap`
//! (V leaves a `prev` piece below `a0` and/or a `next` piece above `e0`); then, for a map request,
//! one `Map(R)` last. Merely adjacent mappings are never touched.
//!
//! * `prev` exists iff `V.a < a0`: `[V.a, a0)` with V's object at V's offset.
//! * `next` exists iff `V.e > e0`: `[e0, V.e)` with V's object at `V.off + (e0 - V.a)`.
//! * `keep` (map only) is true iff V has an object, it is R's object, and both map every shared
//!   address to the same object offset (`V.off - V.a == R.off - R.a`, wrapping). Unmap never keeps.
//!   Flags never matter for `keep`.
//! * An exact match is **not** a no-op: it is `Unmap(keep = true)` then `Map` (drm_gpuvm's code; its
//!   doc comment claiming "no ops" is stale).
//! * A zero-size request is refused ([`RangeError::ZeroSize`](crate::RangeError::ZeroSize)); drm_gpuvm
//!   accepts it and misbehaves.
//!
//! Pieces inherit the flags of the mapping they come from (mainline leaves that to drivers, which
//! all do it by hand).
//!
//! # The cases, one diagram each
//!
//! Tick labels are page indices; one letter per object; `'` marks a split-off piece.
//!
//! ```text
//! A1) Same range: replace it; keep tells whether the PTEs already hold the right thing.
//!         0     a     2
//!    old: |-----------|        (a.off = n)
//!    req: |-----------|        (b.off = m)
//!    new: |-----------|        (b.off = m)
//!    Steps: Unmap { va: a, keep: a.obj == b.obj && n == m }, Map(b: 0..2 @ m)
//!    Test:  sm::tests::case_a1_same_range_same_backing_keeps, case_a1_same_range_other_offset
//!
//! A2) Same start, request ends later: the old mapping disappears, the walk goes on.
//!         0  a  1
//!    old: |-----|              (a.off = n)
//!    req: |-----------|        (b.off = m)
//!    new: |-----------|
//!    Steps: Unmap { va: a, keep }, Map(b: 0..2 @ m)
//!    Test:  sm::tests::case_a2_request_extends_end
//!
//! A3) Same start, request ends earlier: keep the tail, advance its offset by the request length.
//!         0     a     2
//!    old: |-----------|        (a.off = n)
//!    req: |-----|              (b.off = m)
//!    new: |-----|-----|        (b.off = m, a'.off = n + 1)
//!    Steps: Remap { unmap: a, prev: None, next: Some(1..2 @ n+1), keep }, Map(b: 0..1 @ m)
//!    Test:  sm::tests::case_a3_left_subset
//!
//! B1) Old starts earlier, both end together: keep the head.
//!         0     a     2
//!    old: |-----------|        (a.off = n)
//!    req:       |-----|        (b.off = m)
//!    new: |-----|-----|        (a'.off = n, b.off = m)
//!    Steps: Remap { unmap: a, prev: Some(0..1 @ n), next: None, keep }, Map(b: 1..2 @ m)
//!    Test:  sm::tests::case_b1_right_subset
//!
//! B2) Old starts earlier and ends inside the request: keep the head, walk on.
//!         0     a     2
//!    old: |-----------|        (a.off = n)
//!    req:       |-----------|  (b.off = m)
//!    new: |-----|-----------|
//!    Steps: Remap { unmap: a, prev: Some(0..1 @ n), next: None, keep }, Map(b: 1..3 @ m)
//!    Test:  sm::tests::case_b2_overlap_start
//!
//! B3) Request strictly inside: keep head and tail; two new nodes plus the request (3 in all).
//!         0        a        3
//!    old: |-----------------|  (a.off = n)
//!    req:       |-----|        (b.off = m)
//!    new: |-----|-----|-----|  (a'.off = n, b.off = m, a''.off = n + 2)
//!    Steps: Remap { unmap: a, prev: Some(0..1 @ n), next: Some(2..3 @ n+2), keep }, Map(b: 1..2 @ m)
//!    Test:  sm::tests::case_b3_strictly_inside
//!
//! C1) Old starts inside the request and ends with it: it disappears.
//!    old:       |-----|        (a.off = n)
//!    req: |-----------|
//!    Steps: Unmap { va: a, keep }, Map(req)
//!    Test:  sm::tests::case_c1_ends_together
//!
//! C2) Old strictly inside the request: it disappears, the walk goes on.
//!    old:       |--|
//!    req: |-----------|
//!    Steps: Unmap { va: a, keep }, Map(req)
//!    Test:  sm::tests::case_c2_old_strictly_inside
//!
//! C3) Old starts inside the request and ends after it: keep the tail.
//!         0     1  a  2     3
//!    old:       |-----------|  (a.off = n)
//!    req: |-----------|        (b.off = m)
//!    new: |-----------|-----|  (b.off = m, a'.off = n + 1)
//!    Steps: Remap { unmap: a, prev: None, next: Some(2..3 @ n+1), keep }, Map(b: 0..2 @ m)
//!    Test:  sm::tests::case_c3_overlap_end
//! ```
//!
//! The worked examples of `docs/semantics.md` (E1-E14, U1-U5) each have a test in `sm::tests`
//! named after them (`e1_exact_match_same_backing` ... `u5_unmap_hole_is_a_noop`), asserting the
//! exact op sequence and the resulting tree.
//!
//! # Two ways to use the walker
//!
//! * **Steps** ([`GpuVm::step`](crate::GpuVm::step)): the walker hands each op to an
//!   [`SmVisitor`] by value; the visitor must apply it ([`OpMap::insert`], [`OpRemap::remap`],
//!   [`OpUnmap::remove`]) to obtain the completion token it returns. Node memory comes from a
//!   [`Claim`](crate::Claim) checked up front, removed payloads are handed to the visitor.
//!   This is the run stage: no allocation, no failure with a sufficient claim and an infallible
//!   visitor.
//! * **Op lists** ([`GpuVm::sm_map_walk`](crate::GpuVm::sm_map_walk),
//!   [`GpuVm::sm_map_ops`](crate::GpuVm::sm_map_ops)): the walker records plain [`Op`] values without
//!   touching the tree, so a driver can walk them several times (lock, reserve, write PTEs), then
//!   apply them with [`GpuVm::apply_ops`](crate::GpuVm::apply_ops) (or, core-only, record into
//!   your own buffer and apply the returned [`Plan`] with
//!   [`GpuVm::apply_plan`](crate::GpuVm::apply_plan)).
//!
//! Both feed the same decision function (`Walker::step`) with the overlapping mappings in order, so they cannot
//! disagree.

mod list;
mod ops;
#[cfg(all(test, feature = "alloc"))]
mod tests;
mod visit;

#[cfg(feature = "alloc")]
pub use list::OpList;
pub use list::{Op, Plan, Request};
pub(crate) use ops::Pending;
pub use ops::{
    OpMap, OpMapped, OpPrefetch, OpPrefetched, OpRemap, OpRemapped, OpUnmap, OpUnmapped, Piece,
};
pub use visit::{Apply, Record, SmVisitor};

use crate::va::Mapping;

/// What the walker decided for one existing mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Unmap {
        keep: bool,
    },
    Remap {
        keep: bool,
        prev: Option<Mapping>,
        next: Option<Mapping>,
    },
}

/// The split/merge decision for one request: the decision table of `docs/semantics.md`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Walker {
    a0: u64,
    e0: u64,
    /// The map request; `None` for an unmap.
    map: Option<Mapping>,
    /// How `keep` is decided (drm_gpuvm's rule unless an extension asks otherwise).
    mode: Mode,
    /// The range the caller asked for (differs from `a0..e0` only for a merged map).
    requested: (u64, u64),
}

/// Which `keep` rule a [`Walker`] applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// drm_gpuvm's.
    Plain,
    /// A map widened by the merge policy: NULL mappings with the request's flags keep too.
    Merged,
    /// An attribute-split cut: every piece keeps its translations.
    Cut,
}

impl Walker {
    /// A walker for a validated map request.
    pub(crate) fn map(req: Mapping) -> Self {
        Self {
            a0: req.addr,
            e0: req.end(),
            map: Some(req),
            mode: Mode::Plain,
            requested: (req.addr, req.end()),
        }
    }

    /// A walker for a validated unmap of `[a0, e0)`.
    pub(crate) fn unmap(a0: u64, e0: u64) -> Self {
        Self {
            a0,
            e0,
            map: None,
            mode: Mode::Plain,
            requested: (a0, e0),
        }
    }

    /// A walker for the map `req` widened to `wide` by the merge policy (`wide` contains `req`
    /// and translates every address of `req` as `req` does).
    pub(crate) fn merged(req: Mapping, wide: Mapping) -> Self {
        Self {
            mode: Mode::Merged,
            requested: (req.addr, req.end()),
            ..Self::map(wide)
        }
    }

    /// A walker that cuts the mapping straddling `at` in two (attribute split): an unmap of the
    /// empty range `[at, at)`, whose one `Remap` keeps everything.
    pub(crate) fn cut(at: u64) -> Self {
        Self {
            mode: Mode::Cut,
            ..Self::unmap(at, at)
        }
    }

    /// The range the caller asked for.
    pub(crate) fn requested(&self) -> core::ops::Range<u64> {
        self.requested.0..self.requested.1
    }

    /// Decides the op for `v`, an existing mapping that overlaps the request.
    ///
    /// # Invariants
    ///
    /// `v` overlaps `[a0, e0)`, so `v.addr < e0` and `v.end() > a0`; all subtractions below are
    /// therefore of a smaller value from a larger one.
    pub(crate) fn step(&self, v: &Mapping) -> Step {
        debug_assert!(
            v.addr < self.e0.max(self.a0.saturating_add(1)) && v.end() > self.a0,
            "walker fed a non-overlapping mapping"
        );
        let keep = match self.mode {
            Mode::Plain => self.map.is_some_and(|r| v.same_backing(&r)),
            Mode::Merged => self.map.is_some_and(|r| {
                v.same_backing(&r) || (v.obj.is_none() && r.obj.is_none() && v.flags == r.flags)
            }),
            Mode::Cut => true,
        };
        let prev = (v.addr < self.a0).then(|| Mapping {
            len: self.a0 - v.addr,
            ..*v
        });
        let next = (v.end() > self.e0).then(|| Mapping {
            addr: self.e0,
            len: v.end() - self.e0,
            offset: v.offset.wrapping_add(self.e0 - v.addr),
            ..*v
        });
        if prev.is_none() && next.is_none() {
            Step::Unmap { keep }
        } else {
            Step::Remap { keep, prev, next }
        }
    }

    /// The request range `(a0, e0)`.
    pub(crate) fn bounds(&self) -> (u64, u64) {
        (self.a0, self.e0)
    }

    /// The final `Map(R)`, for a map request.
    pub(crate) fn final_map(&self) -> Option<Mapping> {
        self.map
    }
}
