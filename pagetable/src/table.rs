//! [`PageTable`]: a format and a root frame; the entry points of every operation.
//!
//! The operations themselves are walks (one recursion per operation, generic over a plan and an
//! execute pass): map, unmap and protect run through an
//! [`UpdateContext`]; translate, the leaf iterator, audit and destroy are read-mostly walks here.
//!
//! # Split rules
//!
//! An unmap or protect that covers only part of a block splits it: the block is replaced by a
//! table of leaves one level down mapping the same memory with the same attributes, and the walk
//! continues inside that table, so a leaf that is again only partly covered is split again. A
//! 1 GiB block with an unmapped 4 KiB page in its middle becomes 511 2 MiB blocks and one table
//! of 511 pages:
//!
//! ```text
//! before   L1 [ ........................ 1 GiB block ......................... ]
//! request          unmap one page  -->  ^
//!
//! after    L1 [ table ]
//!               |
//!          L2 [ 2M ][ 2M ] ... [ table ] ... [ 2M ][ 2M ]      (511 blocks + 1 table)
//!                                  |
//!          L3                    [ 4K ][ 4K ] .. [    ] .. [ 4K ]   (511 pages + the hole)
//! ```
//!
//! Each split, top level first, is break-before-make:
//!
//! ```text
//! 1. pop a frame from the reserve; fill it with the block's memory as next-level leaves
//!    (unreachable, so no ordering matters; reported to UpdateHooks::written)
//! 2. break:  clear the block descriptor                  (UpdateHooks::written)
//! 3.         UpdateHooks::break_before_make(block)       (invalidate it, or hold a lock region)
//! 4. make:   install the table descriptor                (UpdateHooks::written)
//! 5. continue inside the new table: clear (unmap) or rewrite (protect) the covered leaves,
//!    split the partly covered ones by the same rules
//! ```
//!
//! A split needs one frame per split block; [`unmap_bound`](crate::unmap_bound) reserves the
//! most any state can need: for each end not aligned to the largest leaf, one table per level
//! from below the largest block down to the first level at which that end is aligned (the
//! `split_keeps_the_rest_and_follows_bbm` test checks the counts and the order of the hook calls).
//!
//! An unmap that empties a table unhooks it (parent entry cleared) and retires its frame to the
//! update's [`Flush`]; a fully covered subtree is unhooked and retired whole, as io-pgtable frees
//! a fully covered subtree, without clearing its entries.

use core::ops::Range;

use crate::addr::{u64_from, Chunk, PhysAddr, VirtAddr};
use crate::error::{AuditError, MapError, NewError, RangeError, TranslateError, WalkError};
use crate::flush::{Flush, UpdateHooks};
use crate::format::Format;
use crate::gather::Gather;
use crate::level::Level;
use crate::mem::{FrameAlloc, TableMemory};
use crate::pte::{Attrs, Desc, Pte};
use crate::reserve::Reserve;
use crate::update::UpdateContext;
use crate::walk::entries;

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
    pub level: Level,
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
    pub level: Level,
    /// Attributes.
    pub attrs: Attrs,
}

/// Counts from [`PageTable::audit`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Audit {
    /// Tables per level number (the root included at its level).
    pub tables: [usize; 4],
    /// Leaves per level number.
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
/// * every table frame's [`FrameMeta::live`](crate::FrameMeta::live) equals its number of valid
///   entries;
/// * every non-root table has at least one valid entry (emptied tables are unhooked and retired
///   by the operation that empties them);
/// * the root frame is never retired except by [`PageTable::destroy`].
#[derive(Debug)]
pub struct PageTable {
    pub(crate) fmt: Format,
    pub(crate) root: PhysAddr,
}

impl PageTable {
    /// Adopts `root` (a frame of `mem`) as an empty root table; its entries are zeroed.
    ///
    /// # Errors
    ///
    /// [`NewError::BadRoot`] if `root` is not a frame of `mem`, lies at or beyond the format's
    /// [`Format::oa_limit`], or `mem`'s granule differs from the format's.
    pub fn new<M: TableMemory + ?Sized>(
        fmt: Format,
        mem: &mut M,
        root: PhysAddr,
    ) -> Result<Self, NewError> {
        let n = fmt.granule().entries();
        if mem.granule() != fmt.granule() || root.as_u64() >= fmt.oa_limit() {
            return Err(NewError::BadRoot { pa: root });
        }
        match mem.frame_mut(root) {
            Some((e, m)) if e.len() == n => {
                e.fill(Pte::INVALID);
                m.live = 0;
                m.next = None;
            }
            _ => return Err(NewError::BadRoot { pa: root }),
        }
        Ok(Self { fmt, root })
    }

    /// Allocates a root frame from `alloc` and adopts it (prepare stage: VM creation).
    ///
    /// # Errors
    ///
    /// [`NewError::OutOfFrames`] if no frame is available, [`NewError::BadRoot`] as
    /// [`PageTable::new`] (the frame is given back).
    pub fn try_new<A: FrameAlloc + ?Sized>(fmt: Format, alloc: &mut A) -> Result<Self, NewError> {
        let root = alloc.alloc_frame().map_err(|_| NewError::OutOfFrames)?;
        Self::new(fmt, alloc, root).inspect_err(|_| {
            // Just allocated by `alloc`: it takes it back.
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

    /// Starts the run stage of a job: an [`UpdateContext`] that applies any number of
    /// operations from `reserve`, calling `hooks` (by value or as `&mut`), and ends with a
    /// [`Flush`].
    ///
    /// # Examples
    ///
    /// One job that maps two buffers and reprotects part of the first, reserving once:
    ///
    /// ```
    /// # #[cfg(feature = "alloc")] fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pagetable::{job_bound_alloc, Attrs, Chunk, Format, JobOp, PageTable, PhysAddr,
    ///                 RegionLocked, Reserve, VecPool, VirtAddr};
    ///
    /// let fmt = Format::panthor(48)?;
    /// let mut pool = VecPool::new(fmt.granule(), PhysAddr::new(0x1_0000_0000))?;
    /// let mut pt = PageTable::try_new(fmt, &mut pool)?;
    /// let (a, b) = ([Chunk::new(PhysAddr::new(0x4000_0000), 0x40_0000)],
    ///               [Chunk::new(PhysAddr::new(0x5000_0000), 0x3000)]);
    /// let ro = Attrs { read_only: true, ..Attrs::default() };
    /// let ops = [JobOp::Map { va: VirtAddr::new(0x20_0000), backing: &a },
    ///            JobOp::Map { va: VirtAddr::new(0x80_0000), backing: &b },
    ///            JobOp::Protect { va: VirtAddr::new(0x20_0000), len: 0x1000 }];
    ///
    /// // Prepare: reserve for the whole job, from the requests alone.
    /// let mut reserve = Reserve::new();
    /// reserve.try_fill(&mut pool, job_bound_alloc(&fmt, &ops)?.total())?;
    ///
    /// // Run: no allocation; each op is all or nothing.
    /// let mut ctx = pt.update(&mut pool, &mut reserve, RegionLocked);
    /// ctx.map(VirtAddr::new(0x20_0000), &a, Attrs::default())?;
    /// ctx.map(VirtAddr::new(0x80_0000), &b, Attrs::default())?;
    /// ctx.protect(VirtAddr::new(0x20_0000), 0x1000, ro)?; // splits the first 2 MiB block
    /// let flush = ctx.finish();
    /// assert_eq!(flush.range(), Some(0x20_0000..0x40_0000));
    /// # struct Tlb;
    /// # impl pagetable::TlbInvalidate for Tlb {
    /// #     type Error = core::convert::Infallible;
    /// #     fn invalidate(&mut self, _: Range<u64>, _: bool) -> Result<(), Self::Error> { Ok(()) }
    /// # }
    /// # use core::ops::Range;
    /// let mut reclaim = flush.invalidate(&mut Tlb)?;
    ///
    /// // Cleanup.
    /// reclaim.release(&mut pool)?;
    /// reserve.release(&mut pool)?;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "alloc"))] fn main() {}
    /// ```
    pub fn update<'a, M: TableMemory + ?Sized, H: UpdateHooks>(
        &'a mut self,
        mem: &'a mut M,
        reserve: &'a mut Reserve,
        hooks: H,
    ) -> UpdateContext<'a, M, H> {
        UpdateContext::new(self, mem, reserve, hooks)
    }

    /// Maps `[va, va + len)` to `backing` (`len` is the backing's total length) with `attrs`,
    /// as a job of one operation.
    ///
    /// Run stage: allocates nothing, frees nothing; new tables are popped from `reserve`. The
    /// largest leaf is used wherever the VA window is inside the range and the backing's PA is
    /// aligned with enough of the chunk left (panthor's `get_pgsize` rule, for every block size
    /// the [`Format`] allows). New subtrees are filled before they are hooked in.
    ///
    /// The whole range must be unmapped. Maps need no TLB invalidation (invalid entries are not
    /// cached): the returned [`Flush`] has no range, but must still be consumed.
    ///
    /// # Errors
    ///
    /// See [`MapError`]. Every error is found before anything is written; the tables and the
    /// reserve are then unchanged.
    ///
    /// # Examples
    ///
    /// ```
    /// use pagetable::{map_bound, Attrs, Chunk, Format, MapError, PageTable, PhysAddr,
    ///                 RegionLocked, Reserve, SlicePool, FrameMeta, Granule, Pte, VirtAddr};
    ///
    /// // Core only: the frames live in caller storage.
    /// let fmt = Format::panthor(48)?;
    /// let mut entries = [Pte::INVALID; 8 * 512];
    /// let mut metas = [FrameMeta::default(); 8];
    /// let mut pool = SlicePool::new(Granule::K4, PhysAddr::new(0x1000_0000), &mut entries, &mut metas)?;
    /// let mut pt = PageTable::try_new(fmt, &mut pool)?;
    ///
    /// // Prepare: reserve from the request alone.
    /// let va = VirtAddr::new(0x20_0000);
    /// let backing = [Chunk::new(PhysAddr::new(0x4000_0000), 0x20_0000)];
    /// let mut reserve = Reserve::new();
    /// reserve.try_fill(&mut pool, map_bound(&fmt, va, &backing)?.total())?;
    /// assert_eq!(reserve.len(), 2); // L1 + L2; the 2 MiB block needs no L3 table.
    ///
    /// // Run.
    /// let flush = pt.map(&mut pool, &mut reserve, &mut RegionLocked, va, &backing, Attrs::default())?;
    /// let t = pt.translate(&pool, VirtAddr::new(0x20_1234))?.ok_or("unmapped")?;
    /// assert_eq!((t.pa.as_u64(), t.size), (0x4000_1234, 0x20_0000));
    ///
    /// // Mapping over it again is refused, and changes nothing.
    /// let again = pt.map(&mut pool, &mut reserve, &mut RegionLocked, va, &backing, Attrs::default());
    /// assert_eq!(again.err(), Some(MapError::AlreadyMapped { va }));
    /// assert_eq!(flush.forget(), 0); // a map retires nothing and needs no invalidation
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map<M: TableMemory + ?Sized, H: UpdateHooks>(
        &mut self,
        mem: &mut M,
        reserve: &mut Reserve,
        hooks: H,
        va: VirtAddr,
        backing: &[Chunk],
        attrs: Attrs,
    ) -> Result<Flush, MapError> {
        let mut ctx = self.update(mem, reserve, hooks);
        ctx.map(va, backing, attrs)?;
        Ok(ctx.finish())
    }

    /// Unmaps `[va, va + len)`, as a job of one operation; holes in the range are fine.
    ///
    /// Run stage: allocates and frees nothing. A block straddling either end is split
    /// break-before-make (see the [module docs](crate::table) and
    /// [`UpdateHooks::break_before_make`]) into a table popped from `reserve`; the surviving part
    /// keeps its PA and attributes. Tables emptied by the unmap, and whole subtrees inside the
    /// range, are unhooked and retired to the returned [`Flush`], whose range covers every
    /// cleared leaf and every retired table's span.
    ///
    /// # Errors
    ///
    /// See [`RangeError`]; all are found before anything is written.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "alloc")] fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pagetable::{map_bound, unmap_bound, Attrs, Chunk, Format, PageTable, PhysAddr,
    ///                 RegionLocked, Reserve, VecPool, VirtAddr};
    ///
    /// let fmt = Format::panthor(48)?;
    /// let mut pool = VecPool::new(fmt.granule(), PhysAddr::new(0x1_0000_0000))?;
    /// let mut pt = PageTable::try_new(fmt, &mut pool)?;
    /// let (va, backing) = (VirtAddr::new(0x20_0000), [Chunk::new(PhysAddr::new(0x4000_0000), 0x20_0000)]);
    /// let mut reserve = Reserve::new();
    /// reserve.try_fill(&mut pool, map_bound(&fmt, va, &backing)?.total())?;
    /// let _ = pt.map(&mut pool, &mut reserve, &mut RegionLocked, va, &backing, Attrs::default())?.forget();
    ///
    /// // Unmapping one page of the 2 MiB block splits it into 511 pages plus the hole.
    /// let hole = VirtAddr::new(0x20_1000);
    /// reserve.try_fill(&mut pool, unmap_bound(&fmt, hole, 0x1000)?.total())?;
    /// let flush = pt.unmap(&mut pool, &mut reserve, &mut RegionLocked, hole, 0x1000)?;
    /// assert!(pt.translate(&pool, hole)?.is_none());
    /// assert_eq!(pt.translate(&pool, VirtAddr::new(0x20_2000))?.map(|t| t.pa.as_u64()), Some(0x4000_2000));
    /// // The whole block's translation changed: invalidate all of it.
    /// assert_eq!(flush.range(), Some(0x20_0000..0x40_0000));
    /// # let _ = flush.forget();
    /// # Ok(()) }
    /// # #[cfg(not(feature = "alloc"))] fn main() {}
    /// ```
    pub fn unmap<M: TableMemory + ?Sized, H: UpdateHooks>(
        &mut self,
        mem: &mut M,
        reserve: &mut Reserve,
        hooks: H,
        va: VirtAddr,
        len: u64,
    ) -> Result<Flush, RangeError> {
        let mut ctx = self.update(mem, reserve, hooks);
        ctx.unmap(va, len)?;
        Ok(ctx.finish())
    }

    /// Replaces the attributes of every leaf in `[va, va + len)` with `attrs`, as a job of one
    /// operation; holes are skipped. Blocks straddling an end are split first, as in
    /// [`PageTable::unmap`].
    ///
    /// Attributes are rewritten in place; a change of memory type or shareability on live memory
    /// should run under a lock region.
    ///
    /// # Errors
    ///
    /// See [`RangeError`]; all are found before anything is written.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "alloc")] fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pagetable::{map_bound, unmap_bound, Attrs, Chunk, Format, PageTable, PhysAddr,
    ///                 RegionLocked, Reserve, VecPool, VirtAddr};
    ///
    /// let fmt = Format::panthor(48)?;
    /// let mut pool = VecPool::new(fmt.granule(), PhysAddr::new(0x1_0000_0000))?;
    /// let mut pt = PageTable::try_new(fmt, &mut pool)?;
    /// let (va, backing) = (VirtAddr::new(0x1000), [Chunk::new(PhysAddr::new(0x9000_0000), 0x4000)]);
    /// let mut reserve = Reserve::new();
    /// reserve.try_fill(&mut pool, map_bound(&fmt, va, &backing)?.total())?;
    /// let _ = pt.map(&mut pool, &mut reserve, &mut RegionLocked, va, &backing, Attrs::default())?.forget();
    ///
    /// let ro = Attrs { read_only: true, no_exec: true, ..Attrs::default() };
    /// reserve.try_fill(&mut pool, unmap_bound(&fmt, VirtAddr::new(0x2000), 0x2000)?.total())?;
    /// let flush = pt.protect(&mut pool, &mut reserve, &mut RegionLocked, VirtAddr::new(0x2000), 0x2000, ro)?;
    /// assert_eq!(flush.range(), Some(0x2000..0x4000));
    /// assert_eq!(pt.translate(&pool, VirtAddr::new(0x3000))?.map(|t| t.attrs), Some(ro));
    /// assert_eq!(pt.translate(&pool, VirtAddr::new(0x1000))?.map(|t| t.attrs), Some(Attrs::default()));
    /// # let _ = flush.forget();
    /// # Ok(()) }
    /// # #[cfg(not(feature = "alloc"))] fn main() {}
    /// ```
    pub fn protect<M: TableMemory + ?Sized, H: UpdateHooks>(
        &mut self,
        mem: &mut M,
        reserve: &mut Reserve,
        hooks: H,
        va: VirtAddr,
        len: u64,
        attrs: Attrs,
    ) -> Result<Flush, RangeError> {
        let mut ctx = self.update(mem, reserve, hooks);
        ctx.protect(va, len, attrs)?;
        Ok(ctx.finish())
    }

    // ---------------------------------------------------------------------------------------
    // queries

    fn read<M: TableMemory + ?Sized, E: WalkError>(
        &self,
        mem: &M,
        table: PhysAddr,
        idx: usize,
        va: u64,
    ) -> Result<Pte, E> {
        entries(mem, &self.fmt, table)
            .ok_or(E::bad_table(table))?
            .get(idx)
            .copied()
            .ok_or(E::corrupt(va))
    }

    /// Walks to the leaf or hole at `va`: `Ok(Ok((t, ws)))` for a leaf `t` whose window starts
    /// at `ws`, `Ok(Err(next))` for a hole. The hole runs on over the invalid entries that follow
    /// it in the same table, up to `end` (`va + 1`: just the hole at `va`): `next` is the first
    /// VA at or after `va` that may be mapped, so [`Leaves`] reads each table once per stretch
    /// of holes instead of walking from the root once per invalid entry. What it finds at
    /// `next` (a leaf, a table to descend into, a broken entry) is what a walk of `next` finds.
    fn walk<M: TableMemory + ?Sized>(
        &self,
        mem: &M,
        mut va: u64,
        end: u64,
    ) -> Result<Result<(Translation, u64), u64>, TranslateError> {
        let fmt = &self.fmt;
        let mut table = self.root;
        let mut level = fmt.start_level();
        loop {
            let ents = entries(mem, fmt, table).ok_or(TranslateError::bad_table(table))?;
            let size = fmt.entry_size(level);
            let idx = fmt.index(va, level);
            let slots = ents.get(..1 << fmt.table_bits(level)).unwrap_or(ents);
            let ws = va & !(size - 1);
            let pte = *slots.get(idx).ok_or(TranslateError::corrupt(va))?;
            match fmt.decode(level, pte) {
                Desc::Invalid => {
                    let mut next = ws + size;
                    let mut valid = false;
                    for pte in slots.get(idx + 1..).unwrap_or(&[]) {
                        if next >= end {
                            break;
                        }
                        if !matches!(fmt.decode(level, *pte), Desc::Invalid) {
                            valid = true;
                            break;
                        }
                        next += size;
                    }
                    if !valid {
                        return Ok(Err(next));
                    }
                    // A valid entry further on in this table: look at it from here.
                    va = next;
                }
                Desc::Table { pa } if !level.is_last() => {
                    table = pa;
                    level = level.child();
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
                Desc::Table { .. } | Desc::Reserved => return Err(TranslateError::corrupt(va)),
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
        Ok(self
            .walk(mem, va.as_u64(), va.as_u64().saturating_add(1))?
            .ok()
            .map(|(t, _)| t))
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
        level: Level,
        ws: u64,
        a: &mut Audit,
    ) -> Result<(), AuditError> {
        let fmt = &self.fmt;
        let ents = entries(mem, fmt, table).ok_or(AuditError::BadTable { pa: table })?;
        let recorded = mem.frame(table).map_or(0, |(_, m)| m.live);
        if let Some(t) = a.tables.get_mut(level.index()) {
            *t += 1;
        }
        let size = fmt.entry_size(level);
        let used = fmt.table_entries(level);
        let (oa_mask, oa_limit) = (fmt.oa_mask(), fmt.oa_limit());
        // The bits outside the output-address field of the last leaf decoded here. `decode`
        // reads a descriptor's output address only to check its alignment and limit, so an
        // entry with the same other bits and an aligned address below the limit is a leaf too:
        // counted without decoding (most leaves of a table share their attribute bits).
        let mut leaf_bits = None;
        let mut live = 0u32;
        let mut leaves = 0u64;
        for (i, pte) in ents.iter().enumerate() {
            // Invalid entries (most of a table) decode to nothing: skip them without decoding.
            if !pte.is_valid() {
                continue;
            }
            let va = ws + u64_from(i) * size;
            live += 1;
            if i >= used {
                return Err(AuditError::corrupt(va));
            }
            let (raw, oa) = (pte.as_raw(), pte.as_raw() & oa_mask);
            if leaf_bits == Some(raw & !oa_mask) && oa & (size - 1) == 0 && oa < oa_limit {
                leaves += 1;
                continue;
            }
            match fmt.decode(level, *pte) {
                Desc::Invalid => {}
                Desc::Table { pa } if !level.is_last() => {
                    self.audit_table(mem, pa, level.child(), va, a)?;
                }
                Desc::Leaf { .. } => {
                    leaves += 1;
                    leaf_bits = Some(raw & !oa_mask);
                }
                Desc::Table { .. } | Desc::Reserved => return Err(AuditError::corrupt(va)),
            }
        }
        if let Some(l) = a.leaves.get_mut(level.index()) {
            *l += leaves;
        }
        if live != recorded {
            return Err(AuditError::LiveMismatch {
                pa: table,
                recorded,
                actual: live,
            });
        }
        if live == 0 && table != self.root {
            return Err(AuditError::EmptyTable { pa: table });
        }
        Ok(())
    }

    /// Tears the table down: every table, the root included, is retired to the returned
    /// [`Flush`] (whose range is the whole VA space, walk cache included).
    ///
    /// # Errors
    ///
    /// [`DestroyError`] (holding the untouched page table) if a table does not resolve.
    pub fn destroy<M: TableMemory + ?Sized>(self, mem: &mut M) -> Result<Flush, DestroyError> {
        let mut tables = 0usize;
        if let Err(pa) = self.check_subtree(mem, self.root, self.fmt.start_level(), &mut tables) {
            return Err(DestroyError { table: self, pa });
        }
        let mut gather = Gather::new();
        match self.retire_all(mem, &mut gather, self.root, self.fmt.start_level(), 0) {
            Ok(()) => Ok(Flush::new(gather)),
            Err(pa) => {
                // Every frame resolved a moment ago; a TableMemory that changes its mind breaks
                // its contract. Keep what was retired (never reused) and report the frame.
                debug_assert!(false, "table memory changed during destroy");
                let _ = Flush::new(gather).forget();
                Err(DestroyError { table: self, pa })
            }
        }
    }

    /// Every table below `table` resolves; counts them. `Err` names the first that does not.
    fn check_subtree<M: TableMemory + ?Sized>(
        &self,
        mem: &M,
        table: PhysAddr,
        level: Level,
        n: &mut usize,
    ) -> Result<(), PhysAddr> {
        let ents = entries(mem, &self.fmt, table).ok_or(table)?;
        *n += 1;
        if !level.is_last() {
            for pte in ents {
                if let Desc::Table { pa } = self.fmt.decode(level, *pte) {
                    self.check_subtree(mem, pa, level.child(), n)?;
                }
            }
        }
        Ok(())
    }

    fn retire_all<M: TableMemory + ?Sized>(
        &self,
        mem: &mut M,
        gather: &mut Gather,
        table: PhysAddr,
        level: Level,
        ws: u64,
    ) -> Result<(), PhysAddr> {
        if !level.is_last() {
            let size = self.fmt.entry_size(level);
            for i in 0..self.fmt.granule().entries() {
                let pte = self
                    .read::<M, TranslateError>(mem, table, i, ws)
                    .map_err(|_| table)?;
                if let Desc::Table { pa } = self.fmt.decode(level, pte) {
                    self.retire_all(mem, gather, pa, level.child(), ws + u64_from(i) * size)?;
                }
            }
        }
        let span = self.fmt.table_span(level);
        gather
            .retire(mem, table, (ws, ws + span))
            .map_err(|_| table)
    }
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
            match self.pt.walk(self.mem, self.va, self.end) {
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
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}
