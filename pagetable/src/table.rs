//! [`PageTable`]: one walker for map, unmap, protect, translate and audit.
//!
//! Every mutating operation runs in two passes over the same recursion:
//!
//! 1. **plan** (read-only): validates the tables in the way, finds conflicts, and counts the
//!    frames the operation needs against the *current* state; if anything is wrong, or the
//!    reserve is short, it returns an error and nothing has been written;
//! 2. **exec**: the same decisions again, writing descriptors, popping frames from the reserve,
//!    retiring emptied tables to the [`Gather`].
//!
//! The plan pass of a map, run over absent tables only, is exactly [`map_bound`]: the bound and
//! the mapping are computed by the very same iterator, so they cannot disagree.
//!
//! [`map_bound`]: crate::map_bound

use core::ops::Range;

use crate::addr::{u64_from, usize_from, Chunk, PhysAddr, VirtAddr};
use crate::error::{
    AuditError, MapError, NewError, ProtectError, Req, Stop, TranslateError, UnmapError,
};
use crate::flush::{BreakBeforeMake, Gather};
use crate::format::{Format, OA_BITS};
use crate::mem::{FrameAlloc, FrameMeta, TableMemory};
use crate::pte::{Attrs, Desc, Pte};
use crate::reserve::{Reserve, Shortfall};

/// A position in a backing: chunk `idx`, `off` bytes in.
///
/// # Invariants
///
/// `off < chunks[idx].len` unless the cursor is past the last chunk.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cursor<'a> {
    chunks: &'a [Chunk],
    idx: usize,
    off: u64,
}

impl<'a> Cursor<'a> {
    pub(crate) const fn new(chunks: &'a [Chunk]) -> Self {
        Self {
            chunks,
            idx: 0,
            off: 0,
        }
    }

    fn pa(&self) -> u64 {
        self.chunks
            .get(self.idx)
            .map_or(0, |c| c.pa.as_u64() + self.off)
    }

    fn remaining(&self) -> u64 {
        self.chunks.get(self.idx).map_or(0, |c| c.len - self.off)
    }

    /// Whether a block of `size` bytes fits here: PA aligned, and the chunk long enough.
    fn fits(&self, size: u64) -> bool {
        self.pa() & (size - 1) == 0 && self.remaining() >= size
    }

    fn advance(&mut self, mut n: u64) {
        while n > 0 {
            let Some(c) = self.chunks.get(self.idx) else {
                return;
            };
            let r = c.len - self.off;
            if n < r {
                self.off += n;
                return;
            }
            n -= r;
            self.idx += 1;
            self.off = 0;
        }
    }
}

/// Validates a map request; returns its length.
pub(crate) fn validate_map(fmt: &Format, va: VirtAddr, backing: &[Chunk]) -> Result<u64, Req> {
    let page = fmt.page_size();
    let mut len = 0u64;
    for (index, c) in backing.iter().enumerate() {
        let end = c.pa.as_u64().checked_add(c.len);
        if c.len == 0
            || c.len & (page - 1) != 0
            || c.pa.as_u64() & (page - 1) != 0
            || end.is_none_or(|e| e > 1 << OA_BITS)
        {
            return Err(Req::BadChunk { index });
        }
        len = len.checked_add(c.len).ok_or(Req::OutOfRange)?;
    }
    if va.as_u64() & (page - 1) != 0 {
        return Err(Req::Misaligned { va, len });
    }
    if len == 0 {
        return Err(Req::ZeroLength);
    }
    match va.as_u64().checked_add(len) {
        Some(end) if end <= fmt.va_limit() => Ok(len),
        _ => Err(Req::OutOfRange),
    }
}

/// Validates an unmap/protect range.
pub(crate) fn validate_range(fmt: &Format, va: VirtAddr, len: u64) -> Result<(), Req> {
    let page = fmt.page_size();
    if (va.as_u64() | len) & (page - 1) != 0 {
        return Err(Req::Misaligned { va, len });
    }
    if len == 0 {
        return Err(Req::ZeroLength);
    }
    match va.as_u64().checked_add(len) {
        Some(end) if end <= fmt.va_limit() => Ok(()),
        _ => Err(Req::OutOfRange),
    }
}

fn resolve<M: TableMemory + ?Sized>(mem: &M, pa: PhysAddr, n: usize) -> Result<&[u64], Stop> {
    match mem.frame(pa) {
        Some((e, _)) if e.len() == n => Ok(e),
        _ => Err(Stop::BadTable(pa)),
    }
}

fn resolve_mut<M: TableMemory + ?Sized>(
    mem: &mut M,
    pa: PhysAddr,
    n: usize,
) -> Result<(&mut [u64], &mut FrameMeta), Stop> {
    match mem.frame_mut(pa) {
        Some((e, m)) if e.len() == n => Ok((e, m)),
        _ => Err(Stop::BadTable(pa)),
    }
}

fn u32_from(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The map recursion's plan pass (shared with [`crate::map_bound`]).
///
/// Walks `[s, e)` inside the table at `level` (absent if `table` is `None`, in which case
/// `mem` is not consulted), advancing `cur`, and calls `on_table(level, window_start)` for every
/// table the map would have to create. Decisions (block vs. descend) are exactly those of
/// [`PageTable::map`]'s exec pass.
#[expect(
    clippy::too_many_arguments,
    reason = "one recursion carries the whole walk state"
)]
pub(crate) fn plan_map<M, F>(
    fmt: &Format,
    mem: Option<&M>,
    table: Option<PhysAddr>,
    level: u8,
    s: u64,
    e: u64,
    cur: &mut Cursor<'_>,
    on_table: &mut F,
) -> Result<(), Stop>
where
    M: TableMemory + ?Sized,
    F: FnMut(u8, u64) -> Result<(), Stop>,
{
    let n = fmt.granule().entries();
    let ents = match (mem, table) {
        (Some(m), Some(t)) => Some(resolve(m, t, n)?),
        _ => None,
    };
    if level >= 3 {
        if let Some(ents) = ents {
            let i0 = fmt.index(s, 3);
            let cnt = usize_from((e - s) >> fmt.granule().shift());
            let slots = ents.get(i0..i0 + cnt).ok_or(Stop::Corrupt(s))?;
            if let Some(p) = slots.iter().position(|x| x & 1 != 0) {
                return Err(Stop::AlreadyMapped(
                    s + (u64_from(p) << fmt.granule().shift()),
                ));
            }
        }
        cur.advance(e - s);
        return Ok(());
    }
    let size = fmt.entry_size(level);
    let mut va = s;
    while va < e {
        let ws = va & !(size - 1);
        let we = ws + size;
        let ve = we.min(e);
        let raw = match ents {
            Some(x) => *x.get(fmt.index(va, level)).ok_or(Stop::Corrupt(va))?,
            None => 0,
        };
        match fmt.decode(level, Pte::from_raw(raw)) {
            Desc::Invalid => {
                if va == ws && ve == we && fmt.is_leaf_level(level) && cur.fits(size) {
                    cur.advance(size);
                } else {
                    on_table(level + 1, ws)?;
                    plan_map(fmt, None::<&M>, None, level + 1, va, ve, cur, on_table)?;
                }
            }
            Desc::Table { pa } => plan_map(fmt, mem, Some(pa), level + 1, va, ve, cur, on_table)?,
            Desc::Leaf { .. } => return Err(Stop::AlreadyMapped(va)),
            Desc::Reserved => return Err(Stop::Corrupt(va)),
        }
        va = ve;
    }
    Ok(())
}

/// Tables needed to split a block at `level` of which `[a, b)` is removed or reprotected (a
/// strict, non-empty part of the block): one table one level down, plus, recursively, the
/// splits of the (at most two) partly covered leaves in it.
pub(crate) fn split_need(
    fmt: &Format,
    level: u8,
    a: u64,
    b: u64,
    on_table: &mut impl FnMut(u8, u64),
) {
    let sub = level + 1;
    if sub > 3 {
        return;
    }
    on_table(sub, a & !(fmt.entry_size(level) - 1));
    if sub < 3 {
        let sz = fmt.entry_size(sub);
        let wa = a & !(sz - 1);
        if a != wa || b < wa + sz {
            split_need(fmt, sub, a, b.min(wa + sz), on_table);
        }
        let wb = (b - 1) & !(sz - 1);
        if wb != wa && b != wb + sz {
            split_need(fmt, sub, wb, b, on_table);
        }
    }
}

/// What [`PageTable::translate`] finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The physical address of the translated byte.
    pub pa: PhysAddr,
    /// The leaf's attributes.
    pub attrs: Attrs,
    /// The leaf's size (page or block).
    pub size: u64,
    /// The leaf's level.
    pub level: u8,
}

/// One leaf, as yielded by [`PageTable::leaves`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// First VA of the leaf (may lie before the queried range for a straddling block).
    pub va: VirtAddr,
    /// Output address.
    pub pa: PhysAddr,
    /// Leaf size.
    pub size: u64,
    /// Level of the leaf.
    pub level: u8,
    /// Attributes.
    pub attrs: Attrs,
}

/// Counts from [`PageTable::audit`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Audit {
    /// Tables per level (the root included at its level).
    pub tables: [usize; 4],
    /// Leaves per level.
    pub leaves: [u64; 4],
}

impl Audit {
    /// Total tables, root included.
    #[must_use]
    pub fn table_count(&self) -> usize {
        self.tables.iter().sum()
    }
}

/// Error returned by [`PageTable::destroy`]; the page table is handed back untouched.
#[derive(Debug)]
pub struct DestroyError {
    /// The page table, unchanged.
    pub table: PageTable,
    /// The frame that did not resolve.
    pub pa: PhysAddr,
}

impl core::fmt::Display for DestroyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "table frame {:#x} not in table memory", self.pa.as_u64())
    }
}

impl core::error::Error for DestroyError {}

/// A multi-level VMSAv8-64 stage-1 page table: a format and a root frame.
///
/// The table memory is passed to every call (it is the caller's, and prepare needs it for
/// allocation while the table exists). All operations validate their input and return a typed
/// error that leaves the tables exactly as they were.
///
/// # Invariants
///
/// * every table frame's [`FrameMeta::live`] equals its number of valid entries;
/// * every non-root table has at least one valid entry (emptied tables are unhooked and retired
///   by the operation that empties them);
/// * the root frame is never retired except by [`PageTable::destroy`].
#[derive(Debug)]
pub struct PageTable {
    fmt: Format,
    root: PhysAddr,
}

impl PageTable {
    /// Adopts `root` (a frame of `mem`) as an empty root table; its entries are zeroed.
    ///
    /// # Errors
    ///
    /// [`NewError::BadRoot`] if `root` is not a frame of `mem` or `mem`'s granule differs from
    /// the format's.
    pub fn new<M: TableMemory + ?Sized>(
        fmt: Format,
        mem: &mut M,
        root: PhysAddr,
    ) -> Result<Self, NewError> {
        if mem.granule() != fmt.granule() {
            return Err(NewError::BadRoot { pa: root });
        }
        let (e, m) = resolve_mut(mem, root, fmt.granule().entries())
            .map_err(|_| NewError::BadRoot { pa: root })?;
        e.fill(0);
        m.live = 0;
        m.next = None;
        Ok(Self { fmt, root })
    }

    /// Allocates a root frame from `alloc` and adopts it (prepare stage: VM creation).
    ///
    /// # Errors
    ///
    /// [`NewError::OutOfFrames`] if no frame is available, [`NewError::BadRoot`] if the
    /// allocator's granule differs from the format's (the frame is given back).
    pub fn try_new<A: FrameAlloc + ?Sized>(fmt: Format, alloc: &mut A) -> Result<Self, NewError> {
        let root = alloc.alloc_frame().map_err(|_| NewError::OutOfFrames)?;
        Self::new(fmt, alloc, root).inspect_err(|_| {
            alloc.free_frame(root).ok();
        })
    }

    /// The format.
    #[must_use]
    pub const fn format(&self) -> &Format {
        &self.fmt
    }

    /// The root table's physical address (the translation table base).
    #[must_use]
    pub const fn root(&self) -> PhysAddr {
        self.root
    }

    fn entries(&self) -> usize {
        self.fmt.granule().entries()
    }

    fn read(
        &self,
        mem: &(impl TableMemory + ?Sized),
        table: PhysAddr,
        idx: usize,
        va: u64,
    ) -> Result<u64, Stop> {
        resolve(mem, table, self.entries())?
            .get(idx)
            .copied()
            .ok_or(Stop::Corrupt(va))
    }

    fn write(
        &self,
        mem: &mut (impl TableMemory + ?Sized),
        table: PhysAddr,
        idx: usize,
        raw: u64,
        va: u64,
    ) -> Result<(), Stop> {
        let (e, m) = resolve_mut(mem, table, self.entries())?;
        let slot = e.get_mut(idx).ok_or(Stop::Corrupt(va))?;
        match (*slot & 1 != 0, raw & 1 != 0) {
            (false, true) => m.live = m.live.saturating_add(1),
            (true, false) => m.live = m.live.saturating_sub(1),
            _ => {}
        }
        *slot = raw;
        Ok(())
    }

    fn live(&self, mem: &(impl TableMemory + ?Sized), table: PhysAddr) -> Result<u32, Stop> {
        mem.frame(table)
            .map(|(_, m)| m.live)
            .ok_or(Stop::BadTable(table))
    }

    // ---------------------------------------------------------------------------------------
    // map

    /// Maps `[va, va + len)` to `backing` (`len` is the backing's total length) with `attrs`.
    ///
    /// Run stage: allocates nothing, frees nothing; new tables are popped from `reserve`. The
    /// largest leaf is used wherever the VA window is inside the range and the backing's PA is
    /// aligned with enough of the chunk left (panthor's `get_pgsize` rule, for every block size
    /// the [`Format`] allows). New subtrees are filled before they are hooked in.
    ///
    /// The whole range must be unmapped. Maps need no TLB invalidation (invalid entries are not
    /// cached), so `gather` only records the range as touched.
    ///
    /// # Errors
    ///
    /// See [`MapError`]. Every error is found by the plan pass, before anything is written; the
    /// tables, the reserve and the gather are then unchanged.
    pub fn map<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        reserve: &mut Reserve,
        gather: &mut Gather,
        va: VirtAddr,
        backing: &[Chunk],
        attrs: Attrs,
    ) -> Result<(), MapError> {
        let len = validate_map(&self.fmt, va, backing)?;
        let (s, e) = (va.as_u64(), va.as_u64() + len);
        let mut need = 0u64;
        plan_map(
            &self.fmt,
            Some(&*mem),
            Some(self.root),
            self.fmt.start_level(),
            s,
            e,
            &mut Cursor::new(backing),
            &mut |_, _| {
                need += 1;
                Ok(())
            },
        )?;
        reserve.ensure(mem, need).map_err(|f| match f {
            Shortfall::Short { needed, available } => {
                MapError::ReservationExhausted { needed, available }
            }
            Shortfall::BadTable(pa) => MapError::BadTable { pa },
        })?;

        let mut cur = Cursor::new(backing);
        let res = self.map_exec(
            mem,
            reserve,
            self.root,
            self.fmt.start_level(),
            s,
            e,
            &mut cur,
            attrs,
        );
        debug_assert!(res.is_ok(), "map exec failed after a clean plan: {res:?}");
        res?;
        gather.touch(s, e);
        Ok(())
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one recursion carries the whole walk state"
    )]
    fn map_exec<M: TableMemory + ?Sized>(
        &self,
        mem: &mut M,
        reserve: &mut Reserve,
        table: PhysAddr,
        level: u8,
        s: u64,
        e: u64,
        cur: &mut Cursor<'_>,
        attrs: Attrs,
    ) -> Result<(), Stop> {
        let fmt = &self.fmt;
        let n = self.entries();
        if level >= 3 {
            let g = fmt.granule().shift();
            let step = fmt.page_size();
            let bits = fmt.leaf_bits(3, attrs);
            let (ents, meta) = resolve_mut(mem, table, n)?;
            let i0 = fmt.index(s, 3);
            let cnt = usize_from((e - s) >> g);
            let mut slots = ents.get_mut(i0..i0 + cnt).ok_or(Stop::Corrupt(s))?;
            while !slots.is_empty() {
                let run = usize_from(cur.remaining() >> g).min(slots.len());
                if run == 0 {
                    return Err(Stop::Corrupt(s));
                }
                let (now, rest) = slots.split_at_mut(run);
                let mut d = bits | cur.pa();
                for slot in now {
                    *slot = d;
                    d += step;
                }
                cur.advance(u64_from(run) << g);
                slots = rest;
            }
            meta.live = meta.live.saturating_add(u32_from(cnt));
            return Ok(());
        }
        let size = fmt.entry_size(level);
        let mut va = s;
        while va < e {
            let ws = va & !(size - 1);
            let we = ws + size;
            let ve = we.min(e);
            let idx = fmt.index(va, level);
            let raw = self.read(mem, table, idx, va)?;
            match fmt.decode(level, Pte::from_raw(raw)) {
                Desc::Invalid
                    if va == ws && ve == we && fmt.is_leaf_level(level) && cur.fits(size) =>
                {
                    self.write(mem, table, idx, fmt.leaf_bits(level, attrs) | cur.pa(), va)?;
                    cur.advance(size);
                }
                Desc::Invalid => {
                    let child = reserve.pop(mem).ok_or(Stop::Exhausted)?;
                    // Build the subtree while it is unreachable, then publish it with one write.
                    resolve_mut(mem, child, n)?.1.live = 0;
                    self.map_exec(mem, reserve, child, level + 1, va, ve, cur, attrs)?;
                    self.write(mem, table, idx, fmt.table_raw(child.as_u64()), va)?;
                }
                Desc::Table { pa } => {
                    self.map_exec(mem, reserve, pa, level + 1, va, ve, cur, attrs)?
                }
                Desc::Leaf { .. } => return Err(Stop::AlreadyMapped(va)),
                Desc::Reserved => return Err(Stop::Corrupt(va)),
            }
            va = ve;
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // unmap and protect: one recursion, `prot: None` unmaps

    /// Plan pass for unmap (`prot == false`) and protect: validates and counts split tables.
    #[expect(
        clippy::too_many_arguments,
        reason = "one recursion carries the whole walk state"
    )]
    fn plan_range<M: TableMemory + ?Sized>(
        &self,
        mem: &M,
        table: PhysAddr,
        level: u8,
        s: u64,
        e: u64,
        prot: bool,
        need: &mut u64,
    ) -> Result<(), Stop> {
        let fmt = &self.fmt;
        let ents = resolve(mem, table, self.entries())?;
        if level >= 3 {
            if prot {
                let i0 = fmt.index(s, 3);
                let cnt = usize_from((e - s) >> fmt.granule().shift());
                let slots = ents.get(i0..i0 + cnt).ok_or(Stop::Corrupt(s))?;
                if let Some(p) = slots
                    .iter()
                    .position(|x| matches!(fmt.decode(3, Pte::from_raw(*x)), Desc::Reserved))
                {
                    return Err(Stop::Corrupt(s + (u64_from(p) << fmt.granule().shift())));
                }
            }
            return Ok(());
        }
        let size = fmt.entry_size(level);
        let mut va = s;
        while va < e {
            let ws = va & !(size - 1);
            let we = ws + size;
            let ve = we.min(e);
            let full = va == ws && ve == we;
            let raw = *ents.get(fmt.index(va, level)).ok_or(Stop::Corrupt(va))?;
            match fmt.decode(level, Pte::from_raw(raw)) {
                Desc::Invalid => {}
                Desc::Leaf { .. } if full => {}
                Desc::Leaf { .. } => split_need(fmt, level, va, ve, &mut |_, _| *need += 1),
                Desc::Table { pa } if full && !prot => self.check_subtree(mem, pa, level + 1)?,
                Desc::Table { pa } => self.plan_range(mem, pa, level + 1, va, ve, prot, need)?,
                Desc::Reserved if full && !prot => {}
                Desc::Reserved => return Err(Stop::Corrupt(va)),
            }
            va = ve;
        }
        Ok(())
    }

    /// Checks that every table below `table` resolves (before retiring the subtree wholesale).
    fn check_subtree<M: TableMemory + ?Sized>(
        &self,
        mem: &M,
        table: PhysAddr,
        level: u8,
    ) -> Result<(), Stop> {
        let ents = resolve(mem, table, self.entries())?;
        if level >= 3 {
            return Ok(());
        }
        for raw in ents {
            if let Desc::Table { pa } = self.fmt.decode(level, Pte::from_raw(*raw)) {
                self.check_subtree(mem, pa, level + 1)?;
            }
        }
        Ok(())
    }

    /// Retires `table` (at `level`, first VA `ws`) and every table below it. Entries are left
    /// as they are: the frames are unreachable, and allocators zero frames when handing them out.
    fn retire_subtree<M: TableMemory + ?Sized>(
        &self,
        mem: &mut M,
        gather: &mut Gather,
        table: PhysAddr,
        level: u8,
        ws: u64,
    ) -> Result<(), Stop> {
        if level < 3 {
            let size = self.fmt.entry_size(level);
            for i in 0..self.entries() {
                let raw = self.read(mem, table, i, ws)?;
                if let Desc::Table { pa } = self.fmt.decode(level, Pte::from_raw(raw)) {
                    self.retire_subtree(mem, gather, pa, level + 1, ws + u64_from(i) * size)?;
                }
            }
        }
        gather.retire(mem, table, (ws, ws + self.fmt.table_span(level)));
        Ok(())
    }

    /// Replaces the block at `parent[idx]` (level `level`, first VA `ws`) with a table of
    /// next-level leaves mapping the same memory with the same attributes, break-before-make:
    /// fill the new table (unreachable), clear the block, let `tlb` invalidate it, install the
    /// table.
    #[expect(
        clippy::too_many_arguments,
        reason = "one recursion carries the whole walk state"
    )]
    fn split<M: TableMemory + ?Sized, T: BreakBeforeMake + ?Sized>(
        &self,
        mem: &mut M,
        reserve: &mut Reserve,
        gather: &mut Gather,
        tlb: &mut T,
        parent: PhysAddr,
        idx: usize,
        level: u8,
        pa: PhysAddr,
        attrs: Attrs,
        ws: u64,
    ) -> Result<PhysAddr, Stop> {
        let fmt = &self.fmt;
        let child = reserve.pop(mem).ok_or(Stop::Exhausted)?;
        let sub = level + 1;
        let step = fmt.entry_size(sub);
        let n = self.entries();
        {
            let (ents, meta) = resolve_mut(mem, child, n)?;
            let mut d = fmt.leaf_bits(sub, attrs) | pa.as_u64();
            for slot in ents.iter_mut() {
                *slot = d;
                d += step;
            }
            meta.live = u32_from(n);
        }
        let we = ws + fmt.entry_size(level);
        // Break.
        self.write(mem, parent, idx, 0, ws)?;
        tlb.invalidate_block(ws..we);
        // Make.
        self.write(mem, parent, idx, fmt.table_raw(child.as_u64()), ws)?;
        gather.flush(ws, we);
        Ok(child)
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one recursion carries the whole walk state"
    )]
    fn range_exec<M: TableMemory + ?Sized, T: BreakBeforeMake + ?Sized>(
        &self,
        mem: &mut M,
        reserve: &mut Reserve,
        gather: &mut Gather,
        tlb: &mut T,
        table: PhysAddr,
        level: u8,
        s: u64,
        e: u64,
        prot: Option<Attrs>,
    ) -> Result<(), Stop> {
        let fmt = &self.fmt;
        if level >= 3 {
            let (ents, meta) = resolve_mut(mem, table, self.entries())?;
            let i0 = fmt.index(s, 3);
            let cnt = usize_from((e - s) >> fmt.granule().shift());
            let slots = ents.get_mut(i0..i0 + cnt).ok_or(Stop::Corrupt(s))?;
            let mut hit = 0u32;
            match prot {
                None => {
                    for slot in slots {
                        if *slot & 1 != 0 {
                            *slot = 0;
                            hit += 1;
                        }
                    }
                    meta.live = meta.live.saturating_sub(hit);
                }
                Some(a) => {
                    let bits = fmt.leaf_bits(3, a);
                    let oa = fmt.oa_mask();
                    for slot in slots {
                        if *slot & 1 != 0 {
                            *slot = (*slot & oa) | bits;
                            hit += 1;
                        }
                    }
                }
            }
            if hit > 0 {
                gather.flush(s, e);
            }
            return Ok(());
        }
        let size = fmt.entry_size(level);
        let mut va = s;
        while va < e {
            let ws = va & !(size - 1);
            let we = ws + size;
            let ve = we.min(e);
            let full = va == ws && ve == we;
            let idx = fmt.index(va, level);
            let raw = self.read(mem, table, idx, va)?;
            match (fmt.decode(level, Pte::from_raw(raw)), prot) {
                (Desc::Invalid, _) => {}
                (Desc::Leaf { pa, .. }, Some(a)) if full => {
                    self.write(mem, table, idx, fmt.leaf_bits(level, a) | pa.as_u64(), va)?;
                    gather.flush(ws, we);
                }
                (Desc::Leaf { .. } | Desc::Reserved, None) if full => {
                    self.write(mem, table, idx, 0, va)?;
                    gather.flush(ws, we);
                }
                (Desc::Leaf { pa, attrs, .. }, _) => {
                    let child =
                        self.split(mem, reserve, gather, tlb, table, idx, level, pa, attrs, ws)?;
                    self.range_exec(mem, reserve, gather, tlb, child, level + 1, va, ve, prot)?;
                }
                (Desc::Table { pa }, None) if full => {
                    self.write(mem, table, idx, 0, va)?;
                    self.retire_subtree(mem, gather, pa, level + 1, ws)?;
                }
                (Desc::Table { pa }, _) => {
                    self.range_exec(mem, reserve, gather, tlb, pa, level + 1, va, ve, prot)?;
                    if prot.is_none() && self.live(mem, pa)? == 0 {
                        self.write(mem, table, idx, 0, va)?;
                        gather.retire(mem, pa, (ws, we));
                    }
                }
                (Desc::Reserved, _) => return Err(Stop::Corrupt(va)),
            }
            va = ve;
        }
        Ok(())
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one recursion carries the whole walk state"
    )]
    fn range_op<M: TableMemory + ?Sized, T: BreakBeforeMake + ?Sized>(
        &mut self,
        mem: &mut M,
        reserve: &mut Reserve,
        gather: &mut Gather,
        tlb: &mut T,
        va: VirtAddr,
        len: u64,
        prot: Option<Attrs>,
    ) -> Result<(), RangeFail> {
        validate_range(&self.fmt, va, len).map_err(RangeFail::Req)?;
        let (s, e) = (va.as_u64(), va.as_u64() + len);
        let mut need = 0u64;
        self.plan_range(
            mem,
            self.root,
            self.fmt.start_level(),
            s,
            e,
            prot.is_some(),
            &mut need,
        )
        .map_err(RangeFail::Stop)?;
        reserve.ensure(mem, need).map_err(|f| match f {
            Shortfall::Short { needed, available } => RangeFail::Short { needed, available },
            Shortfall::BadTable(pa) => RangeFail::Stop(Stop::BadTable(pa)),
        })?;

        let res = self.range_exec(
            mem,
            reserve,
            gather,
            tlb,
            self.root,
            self.fmt.start_level(),
            s,
            e,
            prot,
        );
        debug_assert!(res.is_ok(), "range exec failed after a clean plan: {res:?}");
        res.map_err(RangeFail::Stop)
    }

    /// Unmaps `[va, va + len)`; holes in the range are fine.
    ///
    /// Run stage: allocates and frees nothing. A block straddling either end is split
    /// break-before-make (see [`BreakBeforeMake`]) into a table popped from `reserve`; the
    /// surviving part keeps its PA and attributes. Tables emptied by the unmap, and whole
    /// subtrees inside the range, are unhooked and retired to `gather`, whose flush range grows
    /// to cover every cleared leaf and every retired table's span.
    ///
    /// # Errors
    ///
    /// See [`UnmapError`]; all are found before anything is written.
    pub fn unmap<M: TableMemory + ?Sized, T: BreakBeforeMake + ?Sized>(
        &mut self,
        mem: &mut M,
        reserve: &mut Reserve,
        gather: &mut Gather,
        tlb: &mut T,
        va: VirtAddr,
        len: u64,
    ) -> Result<(), UnmapError> {
        self.range_op(mem, reserve, gather, tlb, va, len, None)
            .map_err(|f| match f {
                RangeFail::Req(r) => r.into(),
                RangeFail::Stop(s) => s.into(),
                RangeFail::Short { needed, available } => {
                    UnmapError::ReservationExhausted { needed, available }
                }
            })
    }

    /// Replaces the attributes of every leaf in `[va, va + len)` with `attrs`; holes are
    /// skipped. Blocks straddling an end are split first, as in [`PageTable::unmap`].
    ///
    /// Attributes are rewritten in place; a change of memory type or shareability on live memory
    /// should run under a lock region.
    ///
    /// # Errors
    ///
    /// See [`ProtectError`]; all are found before anything is written.
    #[expect(
        clippy::too_many_arguments,
        reason = "the run-stage context is explicit by design"
    )]
    pub fn protect<M: TableMemory + ?Sized, T: BreakBeforeMake + ?Sized>(
        &mut self,
        mem: &mut M,
        reserve: &mut Reserve,
        gather: &mut Gather,
        tlb: &mut T,
        va: VirtAddr,
        len: u64,
        attrs: Attrs,
    ) -> Result<(), ProtectError> {
        self.range_op(mem, reserve, gather, tlb, va, len, Some(attrs))
            .map_err(|f| match f {
                RangeFail::Req(r) => r.into(),
                RangeFail::Stop(s) => s.into(),
                RangeFail::Short { needed, available } => {
                    ProtectError::ReservationExhausted { needed, available }
                }
            })
    }

    // ---------------------------------------------------------------------------------------
    // queries

    /// Walks to the leaf or hole at `va`: `Ok(Ok(t))` for a leaf, `Ok(Err(end))` for a hole
    /// ending at `end`.
    fn walk<M: TableMemory + ?Sized>(
        &self,
        mem: &M,
        va: u64,
    ) -> Result<Result<(Translation, u64), u64>, Stop> {
        let fmt = &self.fmt;
        let mut table = self.root;
        let mut level = fmt.start_level();
        loop {
            let raw = self.read(mem, table, fmt.index(va, level), va)?;
            let size = fmt.entry_size(level);
            let ws = va & !(size - 1);
            match fmt.decode(level, Pte::from_raw(raw)) {
                Desc::Invalid => return Ok(Err(ws + size)),
                Desc::Table { pa } if level < 3 => {
                    table = pa;
                    level += 1;
                }
                Desc::Leaf { pa, attrs, size } => {
                    let t = Translation {
                        pa: PhysAddr::new(pa.as_u64() + (va - ws)),
                        attrs,
                        size,
                        level,
                    };
                    return Ok(Ok((t, ws)));
                }
                Desc::Table { .. } | Desc::Reserved => return Err(Stop::Corrupt(va)),
            }
        }
    }

    /// Translates one VA: `None` if unmapped.
    ///
    /// # Errors
    ///
    /// [`TranslateError::OutOfRange`] outside the VA space; otherwise a broken table.
    pub fn translate<M: TableMemory + ?Sized>(
        &self,
        mem: &M,
        va: VirtAddr,
    ) -> Result<Option<Translation>, TranslateError> {
        if va.as_u64() >= self.fmt.va_limit() {
            return Err(TranslateError::OutOfRange);
        }
        Ok(self.walk(mem, va.as_u64())?.ok().map(|(t, _)| t))
    }

    /// Iterates the leaves overlapping `range`, in VA order.
    ///
    /// Yields one error and stops if the range leaves the VA space or a table is broken.
    pub fn leaves<'a, M: TableMemory + ?Sized>(
        &'a self,
        mem: &'a M,
        range: Range<VirtAddr>,
    ) -> Leaves<'a, M> {
        Leaves {
            pt: self,
            mem,
            va: range.start.as_u64(),
            end: range.end.as_u64(),
            done: false,
        }
    }

    /// Checks the invariants (live counts, no empty non-root table, no foreign descriptor) and
    /// counts tables and leaves per level. Reads every table: for tests and debugging.
    ///
    /// # Errors
    ///
    /// The first broken invariant found, as [`AuditError`].
    pub fn audit<M: TableMemory + ?Sized>(&self, mem: &M) -> Result<Audit, AuditError> {
        let mut a = Audit::default();
        self.audit_table(mem, self.root, self.fmt.start_level(), 0, &mut a)?;
        Ok(a)
    }

    fn audit_table<M: TableMemory + ?Sized>(
        &self,
        mem: &M,
        table: PhysAddr,
        level: u8,
        ws: u64,
        a: &mut Audit,
    ) -> Result<(), AuditError> {
        let fmt = &self.fmt;
        let (ents, meta) = match mem.frame(table) {
            Some((e, m)) if e.len() == self.entries() => (e, m),
            _ => return Err(AuditError::BadTable { pa: table }),
        };
        if let Some(t) = a.tables.get_mut(usize::from(level)) {
            *t += 1;
        }
        let size = fmt.entry_size(level);
        let mut live = 0u32;
        for (i, raw) in ents.iter().enumerate() {
            let va = ws + u64_from(i) * size;
            if raw & 1 != 0 {
                live += 1;
            }
            if i >= fmt.table_entries(level) && raw & 1 != 0 {
                return Err(AuditError::Corrupt {
                    va: VirtAddr::new(va),
                });
            }
            match fmt.decode(level, Pte::from_raw(*raw)) {
                Desc::Invalid => {}
                Desc::Table { pa } if level < 3 => self.audit_table(mem, pa, level + 1, va, a)?,
                Desc::Leaf { .. } => {
                    if let Some(l) = a.leaves.get_mut(usize::from(level)) {
                        *l += 1;
                    }
                }
                Desc::Table { .. } | Desc::Reserved => {
                    return Err(AuditError::Corrupt {
                        va: VirtAddr::new(va),
                    })
                }
            }
        }
        if live != meta.live {
            return Err(AuditError::LiveMismatch {
                pa: table,
                recorded: meta.live,
                actual: live,
            });
        }
        if live == 0 && table != self.root {
            return Err(AuditError::EmptyTable { pa: table });
        }
        Ok(())
    }

    /// Tears the table down: every table, the root included, is retired to `gather` (whose
    /// flush range becomes the whole VA space, walk cache included).
    ///
    /// # Errors
    ///
    /// [`DestroyError`] (holding the untouched page table) if a table does not resolve.
    pub fn destroy<M: TableMemory + ?Sized>(
        self,
        mem: &mut M,
        gather: &mut Gather,
    ) -> Result<(), DestroyError> {
        let level = self.fmt.start_level();
        if let Err(s) = self.check_subtree(mem, self.root, level) {
            let pa = match s {
                Stop::BadTable(pa) => pa,
                _ => self.root,
            };
            return Err(DestroyError { table: self, pa });
        }
        match self.retire_subtree(mem, gather, self.root, level, 0) {
            Ok(()) => Ok(()),
            Err(_) => Err(DestroyError {
                pa: self.root,
                table: self,
            }),
        }
    }
}

/// Private failure of a range operation, converted to the public enum by the caller.
#[derive(Debug)]
enum RangeFail {
    Req(Req),
    Stop(Stop),
    Short { needed: u64, available: u64 },
}

/// Iterator over the leaves in a range; see [`PageTable::leaves`].
#[derive(Debug)]
pub struct Leaves<'a, M: ?Sized> {
    pt: &'a PageTable,
    mem: &'a M,
    va: u64,
    end: u64,
    done: bool,
}

impl<M: TableMemory + ?Sized> Iterator for Leaves<'_, M> {
    type Item = Result<Leaf, TranslateError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done && self.va < self.end {
            if self.va >= self.pt.fmt.va_limit() {
                self.done = true;
                return Some(Err(TranslateError::OutOfRange));
            }
            match self.pt.walk(self.mem, self.va) {
                Ok(Err(hole_end)) => self.va = hole_end,
                Ok(Ok((t, ws))) => {
                    self.va = ws + t.size;
                    let pa = PhysAddr::new(t.pa.as_u64() - (t.pa.as_u64() & (t.size - 1)));
                    return Some(Ok(Leaf {
                        va: VirtAddr::new(ws),
                        pa,
                        size: t.size,
                        level: t.level,
                        attrs: t.attrs,
                    }));
                }
                Err(s) => {
                    self.done = true;
                    return Some(Err(s.into()));
                }
            }
        }
        None
    }
}
