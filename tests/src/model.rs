//! A page-granular reference model of a `gpuva` VA space (`docs/semantics.md` in the repository).
//!
//! The model stores one entry per page of the space (a dense array: the spaces it models are a few
//! hundred pages): which mapping (`id`) a mapped page belongs to and what it translates to (object,
//! object offset of that page, flags). It knows nothing about trees, splits
//! or ops; a map request simply overwrites the pages it covers, an unmap deletes them. Mapping
//! boundaries fall out of the page map as maximal runs of consecutive pages with the same `id` and a
//! continuous offset, which is exactly drm_gpuvm's result: the request becomes one mapping, the parts
//! of overlapped mappings outside it survive with their translations, nothing is ever merged.
//!
//! Three things are built on that:
//!
//! * [`Model::map`] / [`Model::unmap`]: the expected next state, page by page;
//! * [`Model::expected_map_ops`] / [`Model::expected_unmap_ops`]: the op list drm_gpuvm emits, from
//!   the decision table of `docs/semantics.md` applied to the runs (keep is decided by
//!   comparing the translation of one shared page, not by `Mapping::same_backing`);
//! * [`Model::apply_op`]: applies one recorded [`Op`] to the model, checking that it describes the
//!   current state (the mapping it removes exists exactly, pieces keep their translations, a `Map`
//!   lands on empty pages). Applying a request's ops and comparing with [`Model::map`] proves that
//!   "the ops describe exactly the change".
//!
//! Ids double as the driver payload: a map request's new mapping gets a fresh id, split pieces keep
//! the id (payload) of the mapping they came from, as `OpRemap::remap` clones it.

use std::ops::Range;

use gpuva::{Mapping, ObjId, Op, RangeError, Repeat, VaFlags};

/// One mapped page of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Page {
    /// Identity (and payload) of the mapping the page belongs to.
    pub id: u64,
    /// Backing object, `None` for a NULL mapping.
    pub obj: Option<ObjId>,
    /// Object offset of this page (not of the mapping's start).
    pub offset: u64,
    /// Flags of the mapping.
    pub flags: VaFlags,
    /// The repeat period of the mapping, if it is a repeat mapping (`offset` is then this page's
    /// offset inside the repeated window: the phase is checked page by page).
    pub repeat: Option<Repeat>,
}

impl Page {
    /// What the page translates to, without the identity.
    #[must_use]
    pub fn translation(&self) -> (Option<ObjId>, u64, VaFlags) {
        (self.obj, self.offset, self.flags)
    }
}

/// The page-granular model of one VA space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Model {
    space: Range<u64>,
    /// Empty when there is no cut-out.
    reserved: Range<u64>,
    page: u64,
    /// Alignment requests must have (1: any).
    granule: u64,
    /// The pages of the space, dense: entry `i` is page index (`addr / page`) `base + i`.
    pages: Vec<Option<Page>>,
    /// Page index of the space's first page.
    base: u64,
    /// How many entries of `pages` are mapped.
    mapped: usize,
    /// [`Model::mappings`] of the current pages, once computed (cleared by every change).
    cache: MappingsCache,
}

/// Pages a [`Model`] can hold (it is dense).
pub const MAX_PAGES: u64 = 1 << 16;

/// A memo of [`Model::mappings`]; invisible to equality.
#[derive(Clone, Debug, Default)]
struct MappingsCache(std::cell::RefCell<Option<Vec<(Mapping, u64)>>>);

impl PartialEq for MappingsCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for MappingsCache {}

impl Model {
    /// An empty model of `space` with the cut-out `reserved` (empty for none), `page` address units
    /// per page.
    ///
    /// # Panics
    ///
    /// If `page` is zero, `space` or `reserved` is not page-aligned, or `space` has more than
    /// [`MAX_PAGES`] pages (a bug in the test).
    #[must_use]
    pub fn new(space: Range<u64>, reserved: Range<u64>, page: u64) -> Self {
        assert!(page > 0, "page size must be non-zero");
        for a in [space.start, space.end, reserved.start, reserved.end] {
            assert_eq!(a % page, 0, "model geometry must be page-aligned");
        }
        let n = (space.end.saturating_sub(space.start)) / page;
        assert!(
            n <= MAX_PAGES,
            "the dense model holds at most {MAX_PAGES} pages"
        );
        Self {
            base: space.start / page,
            pages: vec![None; usize::try_from(n).expect("checked above")],
            mapped: 0,
            space,
            reserved,
            page,
            granule: 1,
            cache: MappingsCache::default(),
        }
    }

    /// The same model, refusing requests not aligned to `granule` (as
    /// `GpuVm::with_granule` does).
    #[must_use]
    pub fn with_granule(mut self, granule: u64) -> Self {
        self.granule = granule;
        self
    }

    /// A model holding `mappings` (with their ids).
    ///
    /// # Errors
    ///
    /// A description of the first mapping that is unaligned, empty, outside the space, inside the
    /// cut-out, or overlapping another.
    pub fn from_mappings<'a>(
        space: Range<u64>,
        reserved: Range<u64>,
        page: u64,
        mappings: impl IntoIterator<Item = &'a (Mapping, u64)>,
    ) -> Result<Self, String> {
        let mut m = Self::new(space, reserved, page);
        for (va, id) in mappings {
            m.check_mapping(va)?;
            for p in m.page_indices(va.range()) {
                if m.get(p).is_some() {
                    return Err(format!("{va:?} overlaps another mapping at page {p:#x}"));
                }
            }
            m.map(va, *id);
        }
        Ok(m)
    }

    /// Address units per page.
    #[must_use]
    pub fn page(&self) -> u64 {
        self.page
    }

    /// The managed space.
    #[must_use]
    pub fn space(&self) -> Range<u64> {
        self.space.clone()
    }

    /// The cut-out (empty for none).
    #[must_use]
    pub fn reserved(&self) -> Range<u64> {
        self.reserved.clone()
    }

    /// The mapped pages, by ascending page index.
    pub fn pages(&self) -> impl Iterator<Item = (u64, &Page)> + '_ {
        self.pages
            .iter()
            .zip(self.base..)
            .filter_map(|(page, p)| Some((p, page.as_ref()?)))
    }

    /// Whether nothing is mapped.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.mapped == 0
    }

    /// The page containing `addr`, if mapped.
    #[must_use]
    pub fn translation(&self, addr: u64) -> Option<Page> {
        self.get(addr / self.page).copied()
    }

    /// Page index `p` (`addr / page`), if mapped.
    #[must_use]
    pub fn page_at(&self, p: u64) -> Option<&Page> {
        self.get(p)
    }

    /// The slot of page index `p`, if it is in the space.
    fn slot(&self, p: u64) -> Option<usize> {
        usize::try_from(p.checked_sub(self.base)?)
            .ok()
            .filter(|&i| i < self.pages.len())
    }

    /// Page index `p`, if mapped.
    fn get(&self, p: u64) -> Option<&Page> {
        self.pages[self.slot(p)?].as_ref()
    }

    /// The mapped pages with an index in `r`, ascending.
    fn range(&self, r: Range<u64>) -> impl Iterator<Item = (u64, &Page)> + '_ {
        let len = self.pages.len();
        let clamp =
            |a: u64| usize::try_from(a.saturating_sub(self.base)).map_or(len, |i| i.min(len));
        let lo = clamp(r.start);
        let hi = clamp(r.end).max(lo);
        let first = self.base + u64::try_from(lo).expect("a slot index fits in u64");
        self.pages[lo..hi]
            .iter()
            .zip(first..)
            .filter_map(|(page, p)| Some((p, page.as_ref()?)))
    }

    /// Sets page index `p` (inside the space) to `page`.
    fn set(&mut self, p: u64, page: Option<Page>) {
        let i = self.slot(p).expect("page inside the modelled space");
        let was = core::mem::replace(&mut self.pages[i], page).is_some();
        self.mapped = self.mapped + usize::from(page.is_some()) - usize::from(was);
    }

    /// `drm_gpuvm_range_valid` plus the zero-size and granule rules, written from the documented
    /// order: zero size, overflow, outside the space, cut-out, alignment.
    ///
    /// # Errors
    ///
    /// The reason the range is refused, checked in the documented order.
    pub fn check_range(&self, addr: u64, len: u64) -> Result<Range<u64>, RangeError> {
        if len == 0 {
            return Err(RangeError::ZeroSize);
        }
        let Some(end) = addr.checked_add(len) else {
            return Err(RangeError::Overflow);
        };
        if addr < self.space.start || end > self.space.end {
            return Err(RangeError::OutOfRange);
        }
        let r = &self.reserved;
        if !r.is_empty() && addr < r.end && r.start < end {
            return Err(RangeError::Reserved);
        }
        if !addr.is_multiple_of(self.granule) || !len.is_multiple_of(self.granule) {
            return Err(RangeError::Unaligned);
        }
        Ok(addr..end)
    }

    /// Page indices of an aligned address range.
    fn page_indices(&self, r: Range<u64>) -> Range<u64> {
        r.start / self.page..r.end / self.page
    }

    fn check_mapping(&self, va: &Mapping) -> Result<(), String> {
        if va.len == 0 || !va.addr.is_multiple_of(self.page) || !va.len.is_multiple_of(self.page) {
            return Err(format!("{va:?} is empty or not page-aligned"));
        }
        let end = va
            .addr
            .checked_add(va.len)
            .ok_or_else(|| format!("{va:?} overflows"))?;
        if va.addr < self.space.start || end > self.space.end {
            return Err(format!("{va:?} is outside the space {:#x?}", self.space));
        }
        if va.addr < self.reserved.end && self.reserved.start < end {
            return Err(format!("{va:?} overlaps the cut-out {:#x?}", self.reserved));
        }
        Ok(())
    }

    /// Maps `m` page by page, overwriting whatever was there, as mapping `id`.
    ///
    /// # Panics
    ///
    /// If `m` is not page-aligned (a bug in the test).
    pub fn map(&mut self, m: &Mapping, id: u64) {
        assert!(
            m.addr.is_multiple_of(self.page) && m.len.is_multiple_of(self.page),
            "unaligned {m:?}"
        );
        self.cache.0.get_mut().take();
        for p in self.page_indices(m.range()) {
            // A repeat mapping reads window start + (phase + k) mod period, k units in.
            let offset = m.offset_after(p * self.page - m.addr);
            self.set(
                p,
                Some(Page {
                    id,
                    obj: m.obj,
                    offset,
                    flags: m.flags,
                    repeat: m.repeat,
                }),
            );
        }
    }

    /// Unmaps every page of `r`.
    pub fn unmap(&mut self, r: Range<u64>) {
        let idx = self.page_indices(r);
        self.cache.0.get_mut().take();
        for p in idx {
            if self.get(p).is_some() {
                self.set(p, None);
            }
        }
    }

    /// The mappings, in address order, with their ids: maximal runs of consecutive pages with the
    /// same id, object, flags and a continuous offset.
    #[must_use]
    pub fn mappings(&self) -> Vec<(Mapping, u64)> {
        self.with_mappings(<[_]>::to_vec)
    }

    /// `f` of [`Model::mappings`], without copying them.
    pub fn with_mappings<R>(&self, f: impl FnOnce(&[(Mapping, u64)]) -> R) -> R {
        if self.cache.0.borrow().is_none() {
            let out = self.compute_mappings();
            *self.cache.0.borrow_mut() = Some(out);
        }
        f(self.cache.0.borrow().as_deref().unwrap_or_default())
    }

    fn compute_mappings(&self) -> Vec<(Mapping, u64)> {
        self.runs(self.pages())
    }

    /// Whether page `q` (index `qi`) continues the run (mapping) of page `p` (index `pi`).
    fn continues(&self, (pi, p): (u64, &Page), (qi, q): (u64, &Page)) -> bool {
        pi + 1 == qi
            && p.id == q.id
            && p.obj == q.obj
            && p.flags == q.flags
            && p.repeat == q.repeat
            && Mapping::new(0, 0, p.obj, p.offset)
                .with_repeat(p.repeat)
                .offset_after(self.page)
                == q.offset
    }

    /// The maximal runs of `pages` (ascending), as mappings with their ids.
    fn runs<'a>(&self, pages: impl Iterator<Item = (u64, &'a Page)>) -> Vec<(Mapping, u64)> {
        let mut out: Vec<(Mapping, u64)> = Vec::new();
        let mut last: Option<(u64, &Page)> = None;
        for (p, page) in pages {
            let extends = last.is_some_and(|l| self.continues(l, (p, page)));
            match out.last_mut() {
                Some((m, _)) if extends => m.len += self.page,
                _ => out.push((
                    Mapping::new(p * self.page, self.page, page.obj, page.offset)
                        .with_flags(page.flags)
                        .with_repeat(page.repeat),
                    page.id,
                )),
            }
            last = Some((p, page));
        }
        out
    }

    /// The page indices of `r` (page-aligned), widened to whole mappings at both ends: no
    /// mapping crosses the bounds of the result.
    fn widen(&self, r: &Range<u64>) -> Range<u64> {
        let Range { mut start, mut end } = self.page_indices(r.clone());
        if start >= end {
            return start..start;
        }
        // A run continues only into the adjacent page.
        if let Some(mut p) = self.get(start) {
            while let Some(h) = start.checked_sub(1) {
                match self.get(h) {
                    Some(q) if self.continues((h, q), (start, p)) => (start, p) = (h, q),
                    _ => break,
                }
            }
        }
        if let Some(mut p) = self.get(end - 1) {
            let mut last = end - 1;
            while let Some(j) = last.checked_add(1) {
                match self.get(j) {
                    Some(q) if self.continues((last, p), (j, q)) => (last, p) = (j, q),
                    _ => break,
                }
            }
            end = last + 1;
        }
        start..end
    }

    /// The mappings overlapping `r` (page-aligned), in address order, with their ids: the same
    /// as filtering [`Model::mappings`], at the cost of `r` and the mappings at its ends only.
    #[must_use]
    pub fn mappings_in(&self, r: &Range<u64>) -> Vec<(Mapping, u64)> {
        self.runs(self.range(self.widen(r)))
    }

    /// The pages of `r` (page-aligned), to put back with [`Model::restore`].
    #[must_use]
    pub fn pages_in(&self, r: &Range<u64>) -> Vec<(u64, Page)> {
        self.range(self.page_indices(r.clone()))
            .map(|(p, page)| (p, *page))
            .collect()
    }

    /// Replaces the pages of `r` by `saved` (from [`Model::pages_in`] of the same range).
    pub fn restore(&mut self, r: &Range<u64>, saved: &[(u64, Page)]) {
        self.unmap(r.clone());
        for &(p, page) in saved {
            self.set(p, Some(page));
        }
    }

    /// drm_gpuvm's decision for one overlapped mapping `v` (the decision table). `req` is `None` for unmap.
    fn expected_op(&self, v: &Mapping, r: &Range<u64>, req: Option<&Mapping>) -> Op {
        // keep: compare what one shared page translates to under `v` and under the request. For
        // repeat mappings of one period that suffices too (windows of one size are disjoint or
        // equal, and a different phase differs on every page); a repeat never keeps with a plain
        // mapping or a repeat of another period.
        let shared = v.addr.max(r.start);
        let keep = req.is_some_and(|req| {
            v.obj.is_some()
                && v.obj == req.obj
                && v.repeat == req.repeat
                && self.translation(shared).map(|p| p.offset)
                    == Some(req.offset_after(shared - req.addr))
        });
        let prev = (v.addr < r.start).then(|| Mapping {
            len: r.start - v.addr,
            ..*v
        });
        // The next piece starts at e0 with whatever offset page e0 has now.
        let next = (v.end() > r.end).then(|| {
            let at = self.translation(r.end).map_or(0, |p| p.offset);
            Mapping {
                addr: r.end,
                len: v.end() - r.end,
                offset: at,
                ..*v
            }
        });
        if prev.is_none() && next.is_none() {
            Op::Unmap { va: *v, keep }
        } else {
            Op::Remap {
                unmap: *v,
                keep,
                prev,
                next,
            }
        }
    }

    /// The ops drm_gpuvm emits for a valid map request `req`.
    #[must_use]
    pub fn expected_map_ops(&self, req: &Mapping) -> Vec<Op> {
        let r = req.range();
        let mut ops: Vec<Op> = self
            .mappings_in(&r)
            .iter()
            .map(|(v, _)| self.expected_op(v, &r, Some(req)))
            .collect();
        ops.push(Op::Map(*req));
        ops
    }

    /// The ops drm_gpuvm emits for a valid unmap of `r`.
    #[must_use]
    pub fn expected_unmap_ops(&self, r: Range<u64>) -> Vec<Op> {
        self.mappings_in(&r)
            .iter()
            .map(|(v, _)| self.expected_op(v, &r, None))
            .collect()
    }

    /// The id of the mapping `va` if the model has exactly it (a maximal run of pages), looking at
    /// its pages and the two around it only.
    fn exact_run(&self, va: &Mapping) -> Option<u64> {
        let idx = self.page_indices(va.range());
        if idx.is_empty() {
            return None;
        }
        let first = idx.start;
        let p0 = self.get(first)?;
        let want = Mapping::new(first * self.page, self.page, p0.obj, p0.offset)
            .with_flags(p0.flags)
            .with_repeat(p0.repeat);
        if want
            != (Mapping {
                len: self.page,
                ..*va
            })
        {
            return None;
        }
        if let Some(h) = first.checked_sub(1) {
            if self
                .get(h)
                .is_some_and(|q| self.continues((h, q), (first, p0)))
            {
                return None;
            }
        }
        let mut last = (first, p0);
        for i in idx.start + 1..idx.end {
            match self.get(i) {
                Some(p) if self.continues(last, (i, p)) => last = (i, p),
                _ => return None,
            }
        }
        if let Some(q) = self.get(idx.end) {
            if self.continues(last, (idx.end, q)) {
                return None;
            }
        }
        Some(p0.id)
    }

    /// Removes the mapping `va`, which must exist exactly; returns its id.
    fn remove_exact(&mut self, va: &Mapping) -> Result<u64, String> {
        match self.exact_run(va) {
            Some(id) => {
                self.unmap(va.range());
                Ok(id)
            }
            None => Err(format!(
                "op removes {va:?}, but the model has {:?} there",
                self.mappings_in(&va.range())
            )),
        }
    }

    /// Applies one recorded op, checking that it describes the current state. A `Map` creates
    /// mapping `map_id`; remap pieces keep the id of the mapping they come from.
    ///
    /// # Errors
    ///
    /// A description of the mismatch; the model may then be partly changed.
    pub fn apply_op(&mut self, op: &Op, map_id: u64) -> Result<(), String> {
        match op {
            Op::Map(m) => {
                self.check_mapping(m)?;
                if let Some(p) = self
                    .range(self.page_indices(m.range()))
                    .next()
                    .map(|(p, _)| p)
                {
                    return Err(format!("Map({m:?}) lands on mapped page {p:#x}"));
                }
                self.map(m, map_id);
            }
            Op::Unmap { va, .. } => {
                self.remove_exact(va)?;
            }
            Op::Prefetch(m) => {
                let before = self.clone();
                self.remove_exact(m)?;
                *self = before;
            }
            Op::Remap {
                unmap,
                prev,
                next,
                keep,
            } => {
                if prev.is_none() && next.is_none() {
                    return Err(format!("Remap of {unmap:?} without pieces"));
                }
                let before = self.pages_in(&unmap.range());
                let id = self.remove_exact(unmap)?;
                let mut hole = unmap.range();
                for (piece, is_prev) in [(prev, true), (next, false)] {
                    let Some(piece) = piece else { continue };
                    self.check_mapping(piece)?;
                    let edge_ok = if is_prev {
                        piece.addr == unmap.addr
                    } else {
                        piece.end() == unmap.end()
                    };
                    if !edge_ok
                        || piece.len >= unmap.len
                        || piece.obj != unmap.obj
                        || piece.flags != unmap.flags
                        || piece.repeat != unmap.repeat
                    {
                        return Err(format!("bad piece {piece:?} of {unmap:?}"));
                    }
                    // The piece must translate exactly as the old mapping did.
                    for p in self.page_indices(piece.range()) {
                        let want = before
                            .binary_search_by_key(&p, |&(q, _)| q)
                            .ok()
                            .map(|i| before[i].1.translation());
                        let got = piece.offset_after(p * self.page - piece.addr);
                        if want != Some((piece.obj, got, piece.flags)) {
                            return Err(format!(
                                "piece {piece:?} of {unmap:?} changes page {p:#x}"
                            ));
                        }
                    }
                    self.map(piece, id);
                    if is_prev {
                        hole.start = piece.end();
                    } else {
                        hole.end = piece.addr;
                    }
                }
                // Only an attribute-split cut (keep = true: nothing changes) has an empty hole.
                if hole.is_empty() && !keep {
                    return Err(format!("Remap of {unmap:?} leaves no hole"));
                }
            }
        }
        Ok(())
    }

    /// Applies `ops` in order with [`Model::apply_op`].
    ///
    /// # Errors
    ///
    /// The first mismatch, with the index of the op.
    pub fn apply_ops(&mut self, ops: &[Op], map_id: u64) -> Result<(), String> {
        for (i, op) in ops.iter().enumerate() {
            self.apply_op(op, map_id)
                .map_err(|e| format!("op {i} ({op:?}): {e}"))?;
        }
        Ok(())
    }
}

/// Entries an op inserts into the mapping tree (the new mapping and split pieces). With a B+tree
/// this no longer says how many nodes it takes; it is kept for the op-shape checks.
#[must_use]
pub fn entries_inserted(op: &Op) -> usize {
    match op {
        Op::Map(_) => 1,
        Op::Remap { prev, next, .. } => usize::from(prev.is_some()) + usize::from(next.is_some()),
        Op::Unmap { .. } | Op::Prefetch(_) => 0,
    }
}

/// The mapping an op removes from the tree, if any.
#[must_use]
pub fn removed_by(op: &Op) -> Option<Mapping> {
    match op {
        Op::Map(_) | Op::Prefetch(_) => None,
        Op::Remap { unmap, .. } => Some(*unmap),
        Op::Unmap { va, .. } => Some(*va),
    }
}

/// Checks the structural invariants of a mapping list (in iteration order): ascending, pairwise
/// disjoint, non-empty, no overflow, inside `space`, outside `reserved`.
///
/// # Errors
///
/// A description of the first violation.
pub fn check_invariants(
    space: &Range<u64>,
    reserved: &Range<u64>,
    mappings: &[Mapping],
) -> Result<(), String> {
    let mut prev_end: Option<u64> = None;
    for m in mappings {
        let end = m
            .addr
            .checked_add(m.len)
            .ok_or_else(|| format!("{m:?} overflows"))?;
        if m.len == 0 {
            return Err(format!("{m:?} is empty"));
        }
        if m.addr < space.start || end > space.end {
            return Err(format!("{m:?} is outside the space {space:#x?}"));
        }
        if !reserved.is_empty() && m.addr < reserved.end && reserved.start < end {
            return Err(format!("{m:?} overlaps the cut-out {reserved:#x?}"));
        }
        if let Some(pe) = prev_end {
            if m.addr < pe {
                return Err(format!(
                    "{m:?} overlaps or precedes the previous mapping (ends {pe:#x})"
                ));
            }
        }
        prev_end = Some(end);
    }
    Ok(())
}
