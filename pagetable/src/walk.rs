//! The walker: one recursion per operation, generic over a pass.
//!
//! [`map_walk`] and [`range_walk`] (unmap and protect) decide, entry by entry, what an operation
//! does: write a block or descend, create a table, split a block, clear a leaf, drop a subtree,
//! prune an emptied table. They make each decision exactly once; *what happens* at a decision
//! is the pass's business:
//!
//! | pass | tables | at a decision |
//! |---|---|---|
//! | [`Plan`] | the real ones, plus tables it would create ([`PlanNode::Absent`]) or split off ([`PlanNode::Split`]) | validates, finds conflicts, counts the frames the operation needs |
//! | [`Exec`] | the real ones | writes descriptors, pops frames from the reserve, retires emptied tables, calls the hooks |
//! | [`Absent`] | none (every table absent) | counts the tables a map needs in the worst case: [`map_bound`](crate::map_bound) |
//!
//! An operation runs [`Plan`] first and [`Exec`] only if the plan found nothing wrong and the
//! reserve holds what it counted, so a rejected request changes nothing; because both passes run
//! the same recursion, the frames exec pops are exactly the frames plan counted.

use core::convert::Infallible;
use core::marker::PhantomData;
use core::ops::Range;

use crate::addr::{u64_from, usize_from, PhysAddr};
use crate::error::{ExecError, MapWalkError, WalkError};
use crate::flush::UpdateHooks;
use crate::format::Format;
use crate::gather::Gather;
use crate::level::Level;
use crate::mem::{FreeError, TableMemory};
use crate::pte::{Attrs, Desc, Pte};
use crate::request::Cursor;
use crate::reserve::Reserve;

/// What a pass finds in an entry.
pub(crate) enum Slot<N, F> {
    /// Nothing (invalid descriptor, or a table that does not exist yet).
    Empty,
    /// A next-level table.
    Table(N),
    /// A leaf or a descriptor this crate never writes ([`Desc::Leaf`] / [`Desc::Reserved`] for
    /// the real passes; uninhabited for [`Absent`]).
    Occupied(F),
}

/// Entry `idx` of table `node` at `level`, whose window starts at `ws`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct At<N> {
    pub(crate) node: N,
    pub(crate) level: Level,
    pub(crate) idx: usize,
    pub(crate) ws: u64,
}

impl<N> At<N> {
    fn window(&self, fmt: &Format) -> (u64, u64) {
        (self.ws, self.ws + fmt.entry_size(self.level))
    }
}

/// What every pass provides: how it names tables and reads entries.
pub(crate) trait Pass {
    /// A table as this pass sees it.
    type Node: Copy;
    /// What [`Slot::Occupied`] carries.
    type Found;
    /// The operation's error.
    type Error;

    fn fmt(&self) -> &Format;

    /// Entry `idx` of `node` (a table at `level`); `va` names it in errors.
    fn slot(
        &self,
        node: Self::Node,
        level: Level,
        idx: usize,
        va: u64,
    ) -> Result<Slot<Self::Node, Self::Found>, Self::Error>;
}

/// The map decisions.
pub(crate) trait MapPass: Pass {
    /// Pages `range` (inside one level-3 table) from `cur`, advancing it.
    fn map_pages(
        &mut self,
        node: Self::Node,
        range: Range<u64>,
        cur: &mut Cursor<'_>,
    ) -> Result<(), Self::Error>;
    /// A block at an empty entry whose window the range and the backing cover.
    fn block(&mut self, at: At<Self::Node>, pa: u64) -> Result<(), Self::Error>;
    /// A new (empty, unreachable) table at `level` for the window starting at `ws`.
    fn new_table(&mut self, level: Level, ws: u64) -> Result<Self::Node, Self::Error>;
    /// Hooks the filled `child` in at `at`.
    fn link(&mut self, at: At<Self::Node>, child: Self::Node) -> Result<(), Self::Error>;
    /// The error for something in the way at `va`.
    fn occupied(&self, found: Self::Found, va: u64) -> Self::Error;
}

/// Maps `range` (inside table `node` at `level`) from `cur`.
///
/// Largest leaf wherever the entry's window lies inside the range, the format allows a leaf at
/// that level and the backing is aligned with enough of its chunk left; otherwise descend,
/// creating the table if there is none. A new subtree is filled before it is linked.
pub(crate) fn map_walk<P: MapPass>(
    p: &mut P,
    node: P::Node,
    level: Level,
    range: Range<u64>,
    cur: &mut Cursor<'_>,
) -> Result<(), P::Error> {
    if level.is_last() {
        return p.map_pages(node, range, cur);
    }
    let fmt = *p.fmt();
    let size = fmt.entry_size(level);
    let mut va = range.start;
    while va < range.end {
        let ws = va & !(size - 1);
        let we = ws + size;
        let ve = we.min(range.end);
        let idx = fmt.index(va, level);
        let at = At {
            node,
            level,
            idx,
            ws,
        };
        match p.slot(node, level, idx, va)? {
            Slot::Empty if va == ws && ve == we && fmt.is_leaf_level(level) && cur.fits(size) => {
                p.block(at, cur.pa())?;
                cur.advance(size);
            }
            Slot::Empty => {
                let child = p.new_table(level.child(), ws)?;
                map_walk(p, child, level.child(), va..ve, cur)?;
                p.link(at, child)?;
            }
            Slot::Table(child) => map_walk(p, child, level.child(), va..ve, cur)?,
            Slot::Occupied(found) => return Err(p.occupied(found, va)),
        }
        va = ve;
    }
    Ok(())
}

/// Unmap or protect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RangeOp {
    Unmap,
    Protect(Attrs),
}

/// The unmap/protect decisions.
pub(crate) trait RangePass: Pass<Found = Desc> {
    /// Clears (or reprotects) the valid pages in `range`, inside one level-3 table.
    fn range_pages(
        &mut self,
        node: Self::Node,
        range: Range<u64>,
        op: RangeOp,
    ) -> Result<(), Self::Error>;
    /// Clears a leaf (or an unknown descriptor) whose window the range covers.
    fn clear(&mut self, at: At<Self::Node>) -> Result<(), Self::Error>;
    /// Rewrites a leaf whose window the range covers with new attributes.
    fn reprotect(
        &mut self,
        at: At<Self::Node>,
        pa: PhysAddr,
        attrs: Attrs,
    ) -> Result<(), Self::Error>;
    /// Replaces a block the range covers only partly by a table of next-level leaves with the
    /// same memory and attributes; returns the new table.
    fn split(
        &mut self,
        at: At<Self::Node>,
        pa: PhysAddr,
        attrs: Attrs,
    ) -> Result<Self::Node, Self::Error>;
    /// Unhooks `child` (whose window the range covers) and everything below it.
    fn drop_subtree(&mut self, at: At<Self::Node>, child: Self::Node) -> Result<(), Self::Error>;
    /// After an unmap inside `child`: unhooks it if it has no valid entry left.
    fn prune(&mut self, at: At<Self::Node>, child: Self::Node) -> Result<(), Self::Error>;
    /// The error for an unknown descriptor that would have to be split or rewritten.
    fn corrupt(&self, va: u64) -> Self::Error;
}

/// Unmaps or reprotects `range` (inside table `node` at `level`); holes are skipped.
pub(crate) fn range_walk<P: RangePass>(
    p: &mut P,
    node: P::Node,
    level: Level,
    range: Range<u64>,
    op: RangeOp,
) -> Result<(), P::Error> {
    if level.is_last() {
        return p.range_pages(node, range, op);
    }
    let fmt = *p.fmt();
    let size = fmt.entry_size(level);
    let mut va = range.start;
    while va < range.end {
        let ws = va & !(size - 1);
        let we = ws + size;
        let ve = we.min(range.end);
        let full = va == ws && ve == we;
        let idx = fmt.index(va, level);
        let at = At {
            node,
            level,
            idx,
            ws,
        };
        match (p.slot(node, level, idx, va)?, op) {
            (Slot::Empty, _) => {}
            (Slot::Occupied(Desc::Leaf { pa, .. }), RangeOp::Protect(attrs)) if full => {
                p.reprotect(at, pa, attrs)?;
            }
            (Slot::Occupied(Desc::Leaf { .. } | Desc::Reserved), RangeOp::Unmap) if full => {
                p.clear(at)?;
            }
            (Slot::Occupied(Desc::Leaf { pa, attrs, .. }), _) => {
                let child = p.split(at, pa, attrs)?;
                range_walk(p, child, level.child(), va..ve, op)?;
            }
            (Slot::Occupied(_), _) => return Err(p.corrupt(va)),
            (Slot::Table(child), RangeOp::Unmap) if full => p.drop_subtree(at, child)?,
            (Slot::Table(child), RangeOp::Unmap) => {
                range_walk(p, child, level.child(), va..ve, op)?;
                p.prune(at, child)?;
            }
            (Slot::Table(child), RangeOp::Protect(_)) => {
                range_walk(p, child, level.child(), va..ve, op)?;
            }
        }
        va = ve;
    }
    Ok(())
}

fn decode<N>(
    fmt: &Format,
    level: Level,
    pte: Pte,
    table: impl FnOnce(PhysAddr) -> N,
) -> Slot<N, Desc> {
    match fmt.decode(level, pte) {
        Desc::Invalid => Slot::Empty,
        Desc::Table { pa } => Slot::Table(table(pa)),
        d => Slot::Occupied(d),
    }
}

/// The entries of frame `pa`, if it is a full-size frame of `mem`.
pub(crate) fn entries<'m, M: TableMemory + ?Sized>(
    mem: &'m M,
    fmt: &Format,
    pa: PhysAddr,
) -> Option<&'m [Pte]> {
    match mem.frame(pa) {
        Some((e, _)) if e.len() == fmt.granule().entries() => Some(e),
        _ => None,
    }
}

/// The slice of `ents` covering the pages `range` (inside one level-3 table).
fn page_slots(fmt: &Format, range: &Range<u64>) -> Range<usize> {
    let i0 = fmt.index(range.start, Level::L3);
    let cnt = usize_from((range.end - range.start) >> fmt.granule().shift());
    i0..i0 + cnt
}

// -------------------------------------------------------------------------------------------
// Plan

/// A table as the plan pass sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PlanNode<'a> {
    /// A table frame, resolved once when the walk enters it.
    Frame(PhysAddr, &'a [Pte]),
    /// A table the map would create: empty.
    Absent,
    /// The table a split would create from a block at `pa` with `attrs`: full of leaves.
    Split { pa: u64, attrs: Attrs },
}

/// The read-only pass: validates and counts the frames an operation needs now.
pub(crate) struct Plan<'a, M: ?Sized, E> {
    fmt: &'a Format,
    mem: &'a M,
    /// Frames the operation needs from the reserve.
    pub(crate) need: u64,
    _error: PhantomData<E>,
}

impl<'a, M: TableMemory + ?Sized, E: WalkError> Plan<'a, M, E> {
    pub(crate) fn new(fmt: &'a Format, mem: &'a M) -> Self {
        Self {
            fmt,
            mem,
            need: 0,
            _error: PhantomData,
        }
    }

    fn frame(&self, pa: PhysAddr) -> Result<&'a [Pte], E> {
        entries(self.mem, self.fmt, pa).ok_or(E::bad_table(pa))
    }

    /// The plan's view of the table frame `pa` (resolved once).
    pub(crate) fn node(&self, pa: PhysAddr) -> Result<PlanNode<'a>, E> {
        Ok(PlanNode::Frame(pa, self.frame(pa)?))
    }

    /// Every table below `pa` resolves (before a subtree is retired wholesale).
    fn check_subtree(&self, pa: PhysAddr, level: Level) -> Result<(), E> {
        let ents = self.frame(pa)?;
        if level.is_last() {
            return Ok(());
        }
        for pte in ents {
            if let Desc::Table { pa } = self.fmt.decode(level, *pte) {
                self.check_subtree(pa, level.child())?;
            }
        }
        Ok(())
    }
}

impl<'a, M: TableMemory + ?Sized, E: WalkError> Pass for Plan<'a, M, E> {
    type Node = PlanNode<'a>;
    type Found = Desc;
    type Error = E;

    fn fmt(&self) -> &Format {
        self.fmt
    }

    fn slot(
        &self,
        node: PlanNode<'a>,
        level: Level,
        idx: usize,
        va: u64,
    ) -> Result<Slot<PlanNode<'a>, Desc>, E> {
        match node {
            PlanNode::Frame(_, ents) => {
                let pte = *ents.get(idx).ok_or(E::corrupt(va))?;
                match self.fmt.decode(level, pte) {
                    Desc::Invalid => Ok(Slot::Empty),
                    Desc::Table { pa } => Ok(Slot::Table(PlanNode::Frame(pa, self.frame(pa)?))),
                    d => Ok(Slot::Occupied(d)),
                }
            }
            PlanNode::Absent => Ok(Slot::Empty),
            PlanNode::Split { pa, attrs } => {
                let size = self.fmt.entry_size(level);
                Ok(Slot::Occupied(Desc::Leaf {
                    pa: PhysAddr::new(pa + u64_from(idx) * size),
                    attrs,
                    size,
                }))
            }
        }
    }
}

impl<'a, M: TableMemory + ?Sized, E: MapWalkError> MapPass for Plan<'a, M, E> {
    fn map_pages(
        &mut self,
        node: PlanNode<'a>,
        range: Range<u64>,
        cur: &mut Cursor<'_>,
    ) -> Result<(), E> {
        let page = self.fmt.granule().shift();
        match node {
            PlanNode::Frame(_, ents) => {
                let slots = page_slots(self.fmt, &range);
                let ents = ents.get(slots).ok_or(E::corrupt(range.start))?;
                if let Some(i) = ents.iter().position(|p| p.is_valid()) {
                    return Err(E::already_mapped(range.start + (u64_from(i) << page)));
                }
            }
            PlanNode::Absent => {}
            // A split-off table is full of leaves.
            PlanNode::Split { .. } => return Err(E::already_mapped(range.start)),
        }
        cur.advance(range.end - range.start);
        Ok(())
    }

    fn block(&mut self, _: At<PlanNode<'a>>, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn new_table(&mut self, _: Level, _: u64) -> Result<PlanNode<'a>, E> {
        self.need += 1;
        Ok(PlanNode::Absent)
    }

    fn link(&mut self, _: At<PlanNode<'a>>, _: PlanNode<'a>) -> Result<(), E> {
        Ok(())
    }

    fn occupied(&self, found: Desc, va: u64) -> E {
        match found {
            Desc::Leaf { .. } => E::already_mapped(va),
            _ => E::corrupt(va),
        }
    }
}

impl<'a, M: TableMemory + ?Sized, E: WalkError> RangePass for Plan<'a, M, E> {
    fn range_pages(&mut self, node: PlanNode<'a>, range: Range<u64>, op: RangeOp) -> Result<(), E> {
        let PlanNode::Frame(_, ents) = node else {
            // Absent tables hold nothing; split-off tables hold valid leaves only.
            return Ok(());
        };
        let slots = page_slots(self.fmt, &range);
        let ents = ents.get(slots).ok_or(E::corrupt(range.start))?;
        if let RangeOp::Protect(_) = op {
            let bad = ents
                .iter()
                .position(|p| matches!(self.fmt.decode(Level::L3, *p), Desc::Reserved));
            if let Some(i) = bad {
                let page = self.fmt.granule().shift();
                return Err(E::corrupt(range.start + (u64_from(i) << page)));
            }
        }
        Ok(())
    }

    fn clear(&mut self, _: At<PlanNode<'a>>) -> Result<(), E> {
        Ok(())
    }

    fn reprotect(&mut self, _: At<PlanNode<'a>>, _: PhysAddr, _: Attrs) -> Result<(), E> {
        Ok(())
    }

    fn split(
        &mut self,
        _: At<PlanNode<'a>>,
        pa: PhysAddr,
        attrs: Attrs,
    ) -> Result<PlanNode<'a>, E> {
        self.need += 1;
        Ok(PlanNode::Split {
            pa: pa.as_u64(),
            attrs,
        })
    }

    fn drop_subtree(&mut self, at: At<PlanNode<'a>>, child: PlanNode<'a>) -> Result<(), E> {
        match child {
            PlanNode::Frame(pa, _) => self.check_subtree(pa, at.level.child()),
            PlanNode::Absent | PlanNode::Split { .. } => Ok(()),
        }
    }

    fn prune(&mut self, _: At<PlanNode<'a>>, _: PlanNode<'a>) -> Result<(), E> {
        Ok(())
    }

    fn corrupt(&self, va: u64) -> E {
        E::corrupt(va)
    }
}

// -------------------------------------------------------------------------------------------
// Absent: the worst-case map bound

/// The map pass over a state in which no table exists: counts the tables a map would create
/// (calling `on_table(level, window_start)` for each), reads no memory.
pub(crate) struct Absent<'a, F> {
    pub(crate) fmt: &'a Format,
    pub(crate) on_table: F,
}

impl<F, E> Pass for Absent<'_, F>
where
    F: FnMut(Level, u64) -> Result<(), E>,
{
    type Node = ();
    type Found = Infallible;
    type Error = E;

    fn fmt(&self) -> &Format {
        self.fmt
    }

    fn slot(&self, _: (), _: Level, _: usize, _: u64) -> Result<Slot<(), Infallible>, E> {
        Ok(Slot::Empty)
    }
}

impl<F, E> MapPass for Absent<'_, F>
where
    F: FnMut(Level, u64) -> Result<(), E>,
{
    fn map_pages(&mut self, _: (), range: Range<u64>, cur: &mut Cursor<'_>) -> Result<(), E> {
        cur.advance(range.end - range.start);
        Ok(())
    }

    fn block(&mut self, _: At<()>, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn new_table(&mut self, level: Level, ws: u64) -> Result<(), E> {
        (self.on_table)(level, ws)
    }

    fn link(&mut self, _: At<()>, _: ()) -> Result<(), E> {
        Ok(())
    }

    fn occupied(&self, found: Infallible, _: u64) -> E {
        match found {}
    }
}

// -------------------------------------------------------------------------------------------
// Exec

/// The writing pass. Runs only after a clean [`Plan`] with the reserve checked, so none of its
/// errors happens unless the [`TableMemory`] breaks its contract.
pub(crate) struct Exec<'a, M: ?Sized, H, E> {
    pub(crate) fmt: &'a Format,
    pub(crate) mem: &'a mut M,
    pub(crate) reserve: &'a mut Reserve,
    pub(crate) gather: &'a mut Gather,
    pub(crate) hooks: &'a mut H,
    /// Attributes of new leaves (map).
    pub(crate) attrs: Attrs,
    /// The plan's count and the reserve's length before exec, for an honest error should the
    /// reserve run dry anyway.
    pub(crate) planned: u64,
    pub(crate) available: u64,
    pub(crate) _error: PhantomData<E>,
}

impl<M: TableMemory + ?Sized, H: UpdateHooks, E: ExecError> Exec<'_, M, H, E> {
    fn frame_mut(&mut self, pa: PhysAddr) -> Result<(&mut [Pte], &mut crate::FrameMeta), E> {
        let n = self.fmt.granule().entries();
        match self.mem.frame_mut(pa) {
            Some((e, m)) if e.len() == n => Ok((e, m)),
            _ => Err(E::bad_table(pa)),
        }
    }

    /// Writes one entry, keeping the live count, and reports it.
    fn write(&mut self, at: &At<PhysAddr>, pte: Pte) -> Result<(), E> {
        let (e, m) = self.frame_mut(at.node)?;
        let slot = e.get_mut(at.idx).ok_or(E::corrupt(at.ws))?;
        match (slot.is_valid(), pte.is_valid()) {
            (false, true) => m.live = m.live.saturating_add(1),
            (true, false) => m.live = m.live.saturating_sub(1),
            _ => {}
        }
        *slot = pte;
        self.hooks.written(at.node, at.idx..at.idx + 1);
        Ok(())
    }

    fn pop(&mut self) -> Result<PhysAddr, E> {
        match self.reserve.pop(self.mem) {
            Ok(Some(pa)) => Ok(pa),
            Ok(None) => Err(E::exhausted(self.planned, self.available)),
            Err(FreeError::Foreign { pa } | FreeError::DoubleFree { pa }) => Err(E::bad_table(pa)),
        }
    }

    fn live(&self, pa: PhysAddr) -> Result<u32, E> {
        self.mem
            .frame(pa)
            .map(|(_, m)| m.live)
            .ok_or(E::bad_table(pa))
    }

    /// Retires `table` (at `level`, first VA `ws`) and every table below it. Entries are left
    /// as they are: the frames are unreachable, and allocators zero frames when handing them out.
    fn retire_subtree(&mut self, table: PhysAddr, level: Level, ws: u64) -> Result<(), E> {
        if !level.is_last() {
            let size = self.fmt.entry_size(level);
            for i in 0..self.fmt.granule().entries() {
                let pte = *entries(self.mem, self.fmt, table)
                    .and_then(|e| e.get(i))
                    .ok_or(E::bad_table(table))?;
                if let Desc::Table { pa } = self.fmt.decode(level, pte) {
                    self.retire_subtree(pa, level.child(), ws + u64_from(i) * size)?;
                }
            }
        }
        let span = self.fmt.table_span(level);
        self.gather
            .retire(self.mem, table, (ws, ws + span))
            .map_err(|_| E::bad_table(table))
    }
}

impl<M: TableMemory + ?Sized, H: UpdateHooks, E: ExecError> Pass for Exec<'_, M, H, E> {
    type Node = PhysAddr;
    type Found = Desc;
    type Error = E;

    fn fmt(&self) -> &Format {
        self.fmt
    }

    fn slot(
        &self,
        node: PhysAddr,
        level: Level,
        idx: usize,
        va: u64,
    ) -> Result<Slot<PhysAddr, Desc>, E> {
        let ents = entries(self.mem, self.fmt, node).ok_or(E::bad_table(node))?;
        let pte = *ents.get(idx).ok_or(E::corrupt(va))?;
        Ok(decode(self.fmt, level, pte, |pa| pa))
    }
}

impl<M, H, E> MapPass for Exec<'_, M, H, E>
where
    M: TableMemory + ?Sized,
    H: UpdateHooks,
    E: ExecError + MapWalkError,
{
    fn map_pages(
        &mut self,
        node: PhysAddr,
        range: Range<u64>,
        cur: &mut Cursor<'_>,
    ) -> Result<(), E> {
        let fmt = *self.fmt;
        let g = fmt.granule().shift();
        let step = fmt.page_size();
        let bits = fmt.leaf_bits(Level::L3, self.attrs);
        let idx = page_slots(&fmt, &range);
        let cnt = idx.len();
        let (ents, meta) = self.frame_mut(node)?;
        let mut slots = ents.get_mut(idx.clone()).ok_or(E::corrupt(range.start))?;
        while !slots.is_empty() {
            let run = usize_from(cur.remaining() >> g).min(slots.len());
            if run == 0 {
                return Err(E::corrupt(range.start));
            }
            let (now, rest) = slots.split_at_mut(run);
            let mut d = bits | cur.pa();
            for slot in now {
                *slot = Pte::from_raw(d);
                d += step;
            }
            cur.advance(u64_from(run) << g);
            slots = rest;
        }
        meta.live = meta
            .live
            .saturating_add(u32::try_from(cnt).unwrap_or(u32::MAX));
        self.hooks.written(node, idx);
        Ok(())
    }

    fn block(&mut self, at: At<PhysAddr>, pa: u64) -> Result<(), E> {
        let pte = Pte::from_raw(self.fmt.leaf_bits(at.level, self.attrs) | pa);
        self.write(&at, pte)
    }

    fn new_table(&mut self, _: Level, _: u64) -> Result<PhysAddr, E> {
        let child = self.pop()?;
        // Reserved frames are zeroed in prepare (see `FrameAlloc`), so the run stage does not
        // write them; but a non-coherent walker must see those zeroes before the link to the
        // new table: publish the whole frame first.
        let (ents, meta) = self.frame_mut(child)?;
        meta.live = 0;
        let n = ents.len();
        self.hooks.written(child, 0..n);
        Ok(child)
    }

    fn link(&mut self, at: At<PhysAddr>, child: PhysAddr) -> Result<(), E> {
        let pte = Pte::from_raw(self.fmt.table_raw(child.as_u64()));
        self.write(&at, pte)
    }

    fn occupied(&self, found: Desc, va: u64) -> E {
        match found {
            Desc::Leaf { .. } => E::already_mapped(va),
            _ => E::corrupt(va),
        }
    }
}

impl<M, H, E> RangePass for Exec<'_, M, H, E>
where
    M: TableMemory + ?Sized,
    H: UpdateHooks,
    E: ExecError,
{
    fn range_pages(&mut self, node: PhysAddr, range: Range<u64>, op: RangeOp) -> Result<(), E> {
        let fmt = *self.fmt;
        let idx = page_slots(&fmt, &range);
        let (ents, meta) = self.frame_mut(node)?;
        let slots = ents.get_mut(idx.clone()).ok_or(E::corrupt(range.start))?;
        let mut hit = 0u32;
        match op {
            RangeOp::Unmap => {
                for slot in slots {
                    if slot.is_valid() {
                        *slot = Pte::INVALID;
                        hit += 1;
                    }
                }
                meta.live = meta.live.saturating_sub(hit);
            }
            RangeOp::Protect(a) => {
                let bits = fmt.leaf_bits(Level::L3, a);
                let oa = fmt.oa_mask();
                for slot in slots {
                    if slot.is_valid() {
                        *slot = Pte::from_raw((slot.as_raw() & oa) | bits);
                        hit += 1;
                    }
                }
            }
        }
        if hit > 0 {
            self.gather.flush(range.start, range.end);
            self.hooks.written(node, idx);
        }
        Ok(())
    }

    fn clear(&mut self, at: At<PhysAddr>) -> Result<(), E> {
        self.write(&at, Pte::INVALID)?;
        let (ws, we) = at.window(self.fmt);
        self.gather.flush(ws, we);
        Ok(())
    }

    fn reprotect(&mut self, at: At<PhysAddr>, pa: PhysAddr, attrs: Attrs) -> Result<(), E> {
        let pte = Pte::from_raw(self.fmt.leaf_bits(at.level, attrs) | pa.as_u64());
        self.write(&at, pte)?;
        let (ws, we) = at.window(self.fmt);
        self.gather.flush(ws, we);
        Ok(())
    }

    fn split(&mut self, at: At<PhysAddr>, pa: PhysAddr, attrs: Attrs) -> Result<PhysAddr, E> {
        let fmt = *self.fmt;
        let child = self.pop()?;
        let sub = at.level.child();
        let step = fmt.entry_size(sub);
        let n = fmt.granule().entries();
        // Fill the table while it is unreachable.
        {
            let (ents, meta) = self.frame_mut(child)?;
            let mut d = fmt.leaf_bits(sub, attrs) | pa.as_u64();
            for slot in ents.iter_mut() {
                *slot = Pte::from_raw(d);
                d += step;
            }
            meta.live = u32::try_from(n).unwrap_or(u32::MAX);
        }
        self.hooks.written(child, 0..n);
        let (ws, we) = at.window(&fmt);
        // Break.
        self.write(&at, Pte::INVALID)?;
        self.hooks.break_before_make(ws..we);
        // Make.
        self.write(&at, Pte::from_raw(fmt.table_raw(child.as_u64())))?;
        self.gather.flush(ws, we);
        Ok(child)
    }

    fn drop_subtree(&mut self, at: At<PhysAddr>, child: PhysAddr) -> Result<(), E> {
        self.write(&at, Pte::INVALID)?;
        let (ws, we) = at.window(self.fmt);
        self.gather.flush(ws, we);
        self.retire_subtree(child, at.level.child(), ws)
    }

    fn prune(&mut self, at: At<PhysAddr>, child: PhysAddr) -> Result<(), E> {
        if self.live(child)? == 0 {
            self.write(&at, Pte::INVALID)?;
            let (ws, we) = at.window(self.fmt);
            self.gather
                .retire(self.mem, child, (ws, we))
                .map_err(|_| E::bad_table(child))?;
        }
        Ok(())
    }

    fn corrupt(&self, va: u64) -> E {
        E::corrupt(va)
    }
}
