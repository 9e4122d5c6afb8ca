//! The end of an update: hooks the walker calls, the `#[must_use]` [`Flush`], and [`Reclaim`].
//!
//! # Lifecycle of one job
//!
//! ```text
//! prepare:  reserve = Reserve::try_fill(pool, bound)             may allocate, may fail
//! run:      ctx = pt.update(mem, &mut reserve, hooks)             no allocation from here ...
//!           ctx.map(..)? / ctx.unmap(..)? / ctx.protect(..)?      each: all or nothing
//!           flush = ctx.finish()                                  #[must_use]
//!           reclaim = flush.invalidate(&mut tlb)?                 waits for the invalidation
//!                                                                 ... to here
//! cleanup:  reclaim.release(pool)?                                retired tables back
//!           reserve.release(pool)?                                unused reservation back
//! ```
//!
//! A table emptied by an unmap is unhooked in the run stage and *retired*: its frame goes on the
//! flush, never back on the reserve and never to the allocator, because the GPU's walk cache may
//! still hold its address. The only way to get frames out of a [`Flush`] is
//! [`Flush::invalidate`], which calls the caller's [`TlbInvalidate`] for the flush range and
//! hands out a [`Reclaim`] only when that call reports the invalidation complete: a `Reclaim` is
//! the proof that no cached walk can reach the frames it holds.
//!
//! If the invalidation fails (a stuck MMU), [`FlushError`] gives the flush back: retry, or, once
//! the address space is known never to be used again, [`Flush::forget`] it (the frames are
//! then never reused, which is safe).

use core::fmt;
use core::ops::Range;

use crate::addr::PhysAddr;
use crate::gather::{hull, Gather};
use crate::lock::LockRegion;
use crate::mem::{FrameAlloc, FrameList, FreeError, TableMemory};

/// Calls the walker makes into the driver while it writes (run stage: must not allocate or
/// block indefinitely).
pub trait UpdateHooks {
    /// A block descriptor for `block` has been cleared in the middle of a split and the
    /// replacement table is about to be installed.
    ///
    /// Splitting a block follows break-before-make: (1) the replacement table is filled while
    /// still unreachable, (2) the block descriptor is cleared, (3) **this hook** runs, (4) the
    /// table descriptor is installed. When it returns, no TLB entry for `block` may survive (a
    /// synchronous range invalidation), or the GPU must be unable to access `block` until the
    /// job's final invalidation (a Mali lock region covering it, see
    /// [`lock_range`](crate::lock_range)).
    fn break_before_make(&mut self, block: Range<u64>);

    /// Entries `entries` of the table frame `frame` have just been written.
    ///
    /// For GPUs whose table walks are not cache-coherent: clean these entries (8 bytes each, at
    /// `frame + 8 * index`) to the point of coherency before returning, as io-pgtable does
    /// after every write on a non-coherent walker. The walker calls it in publication order: a
    /// new table's entries are reported before the descriptor that makes it reachable. Coherent
    /// walkers need nothing; the default does nothing.
    fn written(&mut self, frame: PhysAddr, entries: Range<usize>) {
        let _ = (frame, entries);
    }
}

impl<T: UpdateHooks + ?Sized> UpdateHooks for &mut T {
    fn break_before_make(&mut self, block: Range<u64>) {
        (**self).break_before_make(block);
    }

    fn written(&mut self, frame: PhysAddr, entries: Range<usize>) {
        (**self).written(frame, entries);
    }
}

/// [`UpdateHooks`] for a caller that holds a lock region over everything the job may change
/// (from [`lock_range`](crate::lock_range)), or whose GPU is not using the address space, on a
/// GPU with coherent table walks: does nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct RegionLocked;

impl UpdateHooks for RegionLocked {
    fn break_before_make(&mut self, _block: Range<u64>) {}
}

/// The driver's TLB invalidation, called by [`Flush::invalidate`].
pub trait TlbInvalidate {
    /// Why an invalidation failed (for panthor: `AS_ACTIVE` stuck).
    type Error;

    /// Invalidates every cached translation of `range` (walk-cache entries too if
    /// `walk_cache`), and returns only once the invalidation has **completed**: after `Ok`, no
    /// GPU access may use a translation or a table address cached before the call. For panthor:
    /// `FLUSH_MEM` (or `UNLOCK` of the region locked for the job) and wait until the address
    /// space is idle. A VM without an address space has nothing cached and returns `Ok` at
    /// once, provided binding an address space invalidates it.
    ///
    /// # Errors
    ///
    /// The invalidation could not be completed; nothing is reclaimed.
    fn invalidate(&mut self, range: Range<u64>, walk_cache: bool) -> Result<(), Self::Error>;
}

/// The TLB invalidation an update owes, and the table frames it retired.
///
/// Returned by [`UpdateContext::finish`](crate::UpdateContext::finish) and the single-operation
/// methods ([`PageTable::map`](crate::PageTable::map), ...). Consume it with
/// [`Flush::invalidate`]; dropping it leaks the retired frames (never reused, so safe, but
/// lost) and leaves stale translations in the TLB.
#[must_use = "the TLB still holds stale translations and the retired frames leak: call invalidate()"]
#[derive(Debug, Default)]
pub struct Flush {
    gather: Gather,
}

impl Flush {
    pub(crate) fn new(gather: Gather) -> Self {
        Self { gather }
    }

    /// The VA range to invalidate, if any translation changed (maps alone need none: invalid
    /// entries are never cached).
    #[must_use]
    pub fn range(&self) -> Option<Range<u64>> {
        self.gather.flush.map(|(s, e)| s..e)
    }

    /// Whether the walk cache must be invalidated too (a table was unhooked).
    #[must_use]
    pub const fn walk_cache(&self) -> bool {
        self.gather.walk
    }

    /// The hull of every VA whose translation was written, maps included. A lock region over
    /// it (or over the [`lock_range`](crate::lock_range) computed before the run, which
    /// contains it) makes the update atomic as the GPU sees it.
    #[must_use]
    pub fn changed(&self) -> Option<Range<u64>> {
        self.gather.changed.map(|(s, e)| s..e)
    }

    /// The Mali lock region covering [`Flush::changed`].
    #[must_use]
    pub fn lock_region(&self) -> Option<LockRegion> {
        self.gather
            .changed
            .and_then(|(s, e)| LockRegion::covering(s..e).ok())
    }

    /// Number of retired frames waiting for the invalidation.
    #[must_use]
    pub const fn retired_len(&self) -> usize {
        self.gather.retired.len()
    }

    /// Whether the frame `pa` is waiting on this flush (linear scan, for tests and audits).
    #[must_use]
    pub fn is_retired<M: TableMemory + ?Sized>(&self, mem: &M, pa: PhysAddr) -> bool {
        self.gather.retired.contains(mem, pa)
    }

    /// Merges `other` into this flush (to invalidate several jobs at once).
    ///
    /// # Errors
    ///
    /// [`FreeError::Foreign`] if one of `other`'s retired frames is not a frame of `mem`; both
    /// flushes are then unchanged and `other` is handed back.
    pub fn merge<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        mut other: Flush,
    ) -> Result<(), MergeError> {
        if let Err(error) = self.gather.retired.splice(mem, &mut other.gather.retired) {
            return Err(MergeError {
                flush: other,
                error,
            });
        }
        let o = &other.gather;
        if let Some((s, e)) = o.flush {
            self.gather.flush = hull(self.gather.flush, s, e);
        }
        if let Some((s, e)) = o.changed {
            self.gather.changed = hull(self.gather.changed, s, e);
        }
        self.gather.walk |= o.walk;
        Ok(())
    }

    /// Invalidates the flush range through `tlb` and, once that has completed, hands out the
    /// retired frames. `tlb` is not called if no translation changed.
    ///
    /// # Errors
    ///
    /// [`FlushError`] with `tlb`'s error and this flush, unchanged: nothing is reclaimed.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "alloc")] fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use core::ops::Range;
    /// use pagetable::{Chunk, Format, PageTable, PhysAddr, RegionLocked, Reserve, TlbInvalidate,
    ///                 VecPool, VirtAddr, Attrs, map_bound, unmap_bound};
    ///
    /// /// Records the invalidations a driver would issue.
    /// struct Tlb(Vec<(Range<u64>, bool)>);
    /// impl TlbInvalidate for Tlb {
    ///     type Error = core::convert::Infallible;
    ///     fn invalidate(&mut self, r: Range<u64>, walk: bool) -> Result<(), Self::Error> {
    ///         self.0.push((r, walk));
    ///         Ok(())
    ///     }
    /// }
    ///
    /// let fmt = Format::panthor(48)?;
    /// let mut pool = VecPool::new(fmt.granule(), PhysAddr::new(0x1_0000_0000))?;
    /// let mut pt = PageTable::try_new(fmt, &mut pool)?;
    /// let mut tlb = Tlb(Vec::new());
    /// let (va, backing) = (VirtAddr::new(0x40_0000), [Chunk::new(PhysAddr::new(0x8000_0000), 0x4000)]);
    ///
    /// let mut reserve = Reserve::new();
    /// reserve.try_fill(&mut pool, map_bound(&fmt, va, &backing)?.total())?;
    /// let flush = pt.map(&mut pool, &mut reserve, &mut RegionLocked, va, &backing, Attrs::default())?;
    /// assert_eq!(flush.range(), None); // a map changes no cached translation
    /// flush.invalidate(&mut tlb)?.release(&mut pool)?;
    /// assert!(tlb.0.is_empty());
    ///
    /// // Unmapping the four pages empties three tables: they are retired, not freed.
    /// let flush = pt.unmap(&mut pool, &mut reserve, &mut RegionLocked, va, 0x4000)?;
    /// assert_eq!(flush.retired_len(), 3);
    /// let in_use = pool.in_use();
    /// let mut reclaim = flush.invalidate(&mut tlb)?;      // the proof of invalidation
    /// assert!(tlb.0[0].0.contains(&0x40_0000) && tlb.0[0].1); // walk cache too
    /// reclaim.release(&mut pool)?;                         // cleanup: frames back
    /// assert_eq!(pool.in_use(), in_use - 3);
    /// reserve.release(&mut pool)?;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "alloc"))] fn main() {}
    /// ```
    pub fn invalidate<T: TlbInvalidate + ?Sized>(
        self,
        tlb: &mut T,
    ) -> Result<Reclaim, FlushError<T::Error>> {
        if let Some((s, e)) = self.gather.flush {
            if let Err(error) = tlb.invalidate(s..e, self.gather.walk) {
                return Err(FlushError { flush: self, error });
            }
        }
        Ok(Reclaim {
            retired: self.gather.retired,
        })
    }

    /// Gives up on this flush without reclaiming anything: the retired frames are never reused.
    /// For an address space that will never be used again after a failed invalidation. Returns
    /// the number of frames given up.
    #[must_use = "the returned count is the number of frames lost"]
    pub fn forget(self) -> usize {
        self.gather.retired.len()
    }
}

/// Error returned by [`Flush::invalidate`]: the invalidation failed, nothing was reclaimed.
#[derive(Debug)]
pub struct FlushError<E> {
    /// The flush, unchanged: retry, or [`Flush::forget`] it.
    pub flush: Flush,
    /// The driver's error.
    pub error: E,
}

impl<E: fmt::Display> fmt::Display for FlushError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tlb invalidation failed: {}", self.error)
    }
}

impl<E: fmt::Debug + fmt::Display> core::error::Error for FlushError<E> {}

/// Error returned by [`Flush::merge`]: a foreign frame; both flushes are unchanged.
#[derive(Debug)]
pub struct MergeError {
    /// The flush that was to be merged, unchanged.
    pub flush: Flush,
    /// Which frame did not resolve.
    pub error: FreeError,
}

impl fmt::Display for MergeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot merge flush: {}", self.error)
    }
}

impl core::error::Error for MergeError {}

/// Retired frames whose invalidation has completed; only [`Flush::invalidate`] makes one.
#[must_use = "dropping a Reclaim leaks its frames: call release()"]
#[derive(Debug)]
pub struct Reclaim {
    retired: FrameList,
}

impl Reclaim {
    /// Frames held.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.retired.len()
    }

    /// Whether no frame is held.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.retired.len() == 0
    }

    /// Returns every frame to `alloc` (cleanup stage).
    ///
    /// # Errors
    ///
    /// The first [`FreeError`] (for a pool that does not own the frames: [`FreeError::Foreign`]);
    /// the refused frame and all after it stay here, so nothing is lost: release them into the
    /// right pool.
    pub fn release<A: FrameAlloc + ?Sized>(&mut self, alloc: &mut A) -> Result<(), FreeError> {
        self.retired.release(alloc)
    }

    /// Takes one frame for the caller's own use (e.g. to refill a reserve with
    /// [`Reserve::push`](crate::Reserve::push), which zeroes it, without a round trip through
    /// the allocator).
    ///
    /// # Errors
    ///
    /// [`FreeError::Foreign`] if the next frame is not a frame of `mem`; nothing changes.
    pub fn pop<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
    ) -> Result<Option<PhysAddr>, FreeError> {
        self.retired.pop(mem)
    }
}
