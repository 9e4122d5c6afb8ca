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
//! # Extensions (not in drm_gpuvm)
//!
//! More op generators, all driving the same walker, in both the step API and op lists, core-only;
//! with none of them used and the merge policy off, everything above holds unchanged.
//!
//! * [`Request::UnmapObject`] (GEM close): every mapping of the object, in **ascending address
//!   order** (drm_gpuvm's `bo_unmap_ops_create` uses link order), one `Unmap { keep: false }`
//!   each: one range walk of the object index, one mapping-tree descent per mapping (a VA space
//!   without links scans). Needs no nodes.
//! * [`Request::Prefetch`]: the range is validated like any request (drm_gpuvm validates
//!   nothing, and would hand out the cut-out); one [`Op::Prefetch`] per overlapping mapping,
//!   whole, ascending; nothing changes. Visitors see [`OpPrefetch`] (default: ignored).
//! * [`Request::Split`] (attribute split, drm_gpuvm's madvise generalised): the mapping that
//!   straddles `a0`, then the one that straddles `e0`, is cut there: a `Remap` whose `prev` and
//!   `next` pieces abut (an empty hole) and whose keep is true: no page-table change. Works for
//!   every kind of mapping (drm_gpuvm's madvise skips mappings of objects), never unmaps, never
//!   maps. Afterwards the range is covered by whole mappings, whose flags
//!   ([`GpuVm::set_flags`](crate::GpuVm::set_flags)) can be changed. Bound: two unmaps'.
//! * Merge policy ([`GpuVm::with_merge`](crate::GpuVm::with_merge), off by default): a map whose
//!   neighbour (the mapping covering `a0 - 1`, or `e0`) has the same object and flags and a
//!   contiguous object offset (NULL mappings: equal flags) runs as a map of the range widened over
//!   it. The ops are the drm_gpuvm ops of that widened map; the widened parts come with keep =
//!   true (for NULL mappings too, under the policy), and [`OpMap::requested`] names the new part.
//!   Bound: a plain map's (the same walk, the same inserts).
//!
//! * Repeat mappings ([`Mapping::with_repeat`](crate::Mapping::with_repeat),
//!   [`Repeat`](crate::Repeat)): a map whose mapping repeats an object window. The ops are a
//!   map's; every piece continues at phase `(phase + k) mod period`, `k` units into the split
//!   mapping; keep and merge need the same window at a congruent phase, never a plain mapping.
//!   Diagrams R1-R5 are in `docs/semantics.md`, section 11. Bound: a plain map's.
//!
//! Units below are abstract (one tick = 100); `X`, `Y`, `Z` are objects, `N` a NULL mapping.
//!
//! ```text
//! O1) Unmap an object: address order, other objects untouched.
//!         1     2     3     4     5     6
//!    old:       |--X--|--Y--|-N-|X|     |--X--|     (mapped in the order 500, 100, 200, ...)
//!    req: UnmapObject(X)
//!    new:             |--Y--|-N-|
//!    Steps: Unmap { X@100, keep: 0 }, Unmap { X@350, keep: 0 }, Unmap { X@500, keep: 0 }
//!    Test:  gpuva_ext::unmap_object_in_address_order, unmap_object_of_unmapped_object_is_a_noop
//!
//! P1) Prefetch: every overlapping mapping, whole; holes skipped; nothing changes.
//!         1     2     3     4
//!    old:       |--X--| |N|--Y--|Z|
//!    req:          |--------|
//!    Steps: Prefetch(X), Prefetch(N), Prefetch(Y)
//!    Test:  gpuva_ext::prefetch_one_op_per_overlapping_mapping, prefetch_refuses_the_cut_out
//!
//! S1) Split strictly inside one mapping: two cuts, the second of the first one's next piece.
//!         1     2     3     4
//!    old: |-----------X-----|        (X.off = 0)
//!    req:       |-----|
//!    new: |-X1--|-X2--|-X3--|        (offsets 0, 100, 200: translations unchanged)
//!    Steps: Remap { X, prev: 100..200 @0, next: 200..400 @100, keep: 1 },
//!           Remap { 200..400 @100, prev: 200..300 @100, next: 300..400 @200, keep: 1 }
//!    Test:  gpuva_ext::split_inside_one_mapping
//!
//! S2) Split across mappings: only the two straddlers are cut; inner mappings and holes stay.
//!         1     2     3     4
//!    old: |--N--|-X-|   |--Y--|
//!    req:    |-----------|
//!    new: |N1|N2|-X-|   |Y1|Y2|
//!    Steps: Remap { N, prev, next, keep: 1 }, Remap { Y, prev, next, keep: 1 }
//!    Test:  gpuva_ext::split_straddling_both_edges, split_on_existing_edges_is_a_noop
//!
//! G1) Merge with the left neighbour (drm_gpuvm: E11, two mappings).
//!         1     2     3
//!    old: |--X--|              (X.off = 0)
//!    req:       |--X--|        (off = 100: contiguous)
//!    new: |-----X-----|
//!    Steps: Unmap { X, keep: 1 }, Map(100..300 @0)          (requested: 200..300)
//!    Test:  gpuva_ext::merge_left_neighbour, merge_right_neighbour
//!
//! G2) Merge with both neighbours.
//!    old: |--X--|     |--X--|  (offsets 0 and 200)
//!    req:       |--X--|        (off = 100)
//!    new: |--------X--------|
//!    Steps: Unmap { left, keep: 1 }, Unmap { right, keep: 1 }, Map(100..400 @0)
//!    Test:  gpuva_ext::merge_both_neighbours
//!
//! G3) Same backing strictly inside (drm_gpuvm: E4, three mappings): nothing changes.
//!    old: |--------X--------|
//!    req:       |--X--|        (contiguous)
//!    new: |--------X--------|
//!    Steps: Unmap { X, keep: 1 }, Map(X's range)
//!    Test:  gpuva_ext::merge_inside_same_backing
//!
//! G4) NULL neighbours with equal flags merge whatever their offsets.
//!    old: |-N--|-X--|-N--|
//!    req:      |-N--|
//!    new: |------N-------|
//!    Steps: Unmap { N, keep: 1 }, Unmap { X, keep: 0 }, Unmap { N, keep: 1 }, Map(0..300)
//!    Test:  gpuva_ext::merge_null_with_equal_flags
//! ```
//!
//! The merge canonical form (no two adjacent mergeable mappings) holds after every request of a
//! VA space that merges from the start and runs maps, unmaps and unmaps of objects
//! (`gpuva_ext::random_requests_match_the_reference_model`); splits and `set_flags` may leave
//! mergeable neighbours on purpose. With the policy off nothing differs from drm_gpuvm
//! (`gpuva_ext::merge_off_is_drm_gpuvm`).
//!
//! ```
//! # #[cfg(feature = "alloc")] {
//! use gpuva::{BoxNode, GpuVm, Mapping, Op, Request};
//! let mut vm = GpuVm::<(), BoxNode<()>>::new(0..1000, 0..0)?.without_links();
//! let split = Request::Split { addr: 200, len: 100 };
//! let mut claim = vm.reserve_boxed(vm.bounds().map_null + vm.nodes_for(&split))?;
//! vm.map(Mapping::new(100, 300, None, 0), &mut claim)?;
//! // Attribute split: cut at 200 and at 300, translations unchanged, no page-table work.
//! let mut ops = Vec::new();
//! vm.step(split, &mut claim, &mut gpuva::Record::new(|op| ops.push(op)))?;
//! assert!(ops.iter().all(|op| matches!(op, Op::Remap { keep: true, .. })));
//! assert!(ops.iter().all(|op| op.affected().is_empty()));
//! let ranges: Vec<_> = vm.iter().map(|va| va.range()).collect();
//! assert_eq!(ranges, [100..200, 200..300, 300..400]);
//! // Prefetch: one op per overlapping mapping, nothing changes.
//! let pre = vm.request_ops(Request::Prefetch { addr: 150, len: 100 })?;
//! assert_eq!(pre.ops(), [
//!     Op::Prefetch(Mapping::new(100, 100, None, 0)),
//!     Op::Prefetch(Mapping::new(200, 100, None, 100)),
//! ]);
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
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
            offset: v.offset_after(self.e0 - v.addr),
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
