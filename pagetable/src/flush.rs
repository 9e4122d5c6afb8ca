//! TLB work: the per-job gather, the retired list and its release, and Mali lock regions.
//!
//! # Lifecycle of a retired table
//!
//! ```text
//! run:      unmap empties a table -> parent entry cleared -> frame pushed on Gather
//!           (never back on the Reserve, never freed)
//! caller:   invalidates gather.flush_range() (walk cache too if gather.walk_cache())
//!           and waits for completion
//! caller:   gather.invalidated() -> Reclaim          (consumes the Gather)
//! cleanup:  reclaim.release(&mut pool)               (frames back to the allocator)
//! ```
//!
//! The only way to get frames out of a [`Gather`] is [`Gather::invalidated`], which consumes it,
//! so no code path can hand a retired frame to an allocator while its old span may still be
//! cached.

use core::fmt;
use core::ops::Range;

use crate::addr::PhysAddr;
use crate::mem::{FrameAlloc, FrameList, FreeError, TableMemory};

/// Hook called in the middle of a block split, between break and make.
///
/// Splitting a block follows break-before-make: (1) the replacement table is filled while still
/// invisible, (2) the block descriptor is cleared, (3) **this hook** runs, (4) the table
/// descriptor is installed. An implementation must make sure that, when it returns, no TLB entry
/// for `block` survives (a synchronous range invalidation) or that the GPU cannot access `block`
/// until the job's final invalidation (a Mali lock region covering it, as panthor widens its
/// lock for huge-page splits). It must not allocate or block indefinitely: it runs in the run
/// stage.
pub trait BreakBeforeMake {
    /// The block descriptor for `block` has been cleared; invalidate it before the table goes in.
    fn invalidate_block(&mut self, block: Range<u64>);
}

/// A [`BreakBeforeMake`] for callers that hold a lock region over everything the job touches
/// (widened with [`Gather::touched`]) or whose GPU is not using the address space: does nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct RegionLocked;

impl BreakBeforeMake for RegionLocked {
    fn invalidate_block(&mut self, _block: Range<u64>) {}
}

/// Accumulates one job's TLB obligations and retired frames.
///
/// Every operation of a job takes the same `&mut Gather`:
/// * `flush_range` is the hull of every span whose translation changed or was removed, including
///   the whole span of every retired table (its walk-cache entries may serve any VA in it);
/// * `walk_cache` is set when a table was unhooked (walk-cache entries must go too);
/// * `touched` is the hull of everything written, maps included (for a lock region);
/// * the retired frames are released only through [`Gather::invalidated`].
///
/// Maps alone produce no flush range: invalid entries are never cached.
#[must_use = "retired frames leak, and stale translations survive, unless the range is invalidated"]
#[derive(Debug, Default)]
pub struct Gather {
    flush: Option<(u64, u64)>,
    touched: Option<(u64, u64)>,
    walk: bool,
    retired: FrameList,
}

fn hull(a: Option<(u64, u64)>, s: u64, e: u64) -> Option<(u64, u64)> {
    Some(match a {
        None => (s, e),
        Some((x, y)) => (x.min(s), y.max(e)),
    })
}

impl Gather {
    /// An empty gather.
    pub const fn new() -> Self {
        Self {
            flush: None,
            touched: None,
            walk: false,
            retired: FrameList::new(),
        }
    }

    /// The VA range to invalidate, if anything needs it.
    #[must_use]
    pub fn flush_range(&self) -> Option<Range<u64>> {
        self.flush.map(|(s, e)| s..e)
    }

    /// Whether the walk cache must be invalidated too (a table was unhooked).
    #[must_use]
    pub const fn walk_cache(&self) -> bool {
        self.walk
    }

    /// The hull of every VA range written, maps included.
    #[must_use]
    pub fn touched(&self) -> Option<Range<u64>> {
        self.touched.map(|(s, e)| s..e)
    }

    /// The Mali lock region covering [`Gather::touched`].
    #[must_use]
    pub fn lock_region(&self) -> Option<LockRegion> {
        self.touched
            .and_then(|(s, e)| LockRegion::covering(s..e).ok())
    }

    /// Number of retired frames waiting for the invalidation.
    #[must_use]
    pub const fn retired_len(&self) -> usize {
        self.retired.len()
    }

    /// Whether the frame `pa` is waiting on this gather (linear scan, for tests).
    #[must_use]
    pub fn is_retired<M: TableMemory + ?Sized>(&self, mem: &M, pa: PhysAddr) -> bool {
        self.retired.contains(mem, pa)
    }

    /// Merges another gather (e.g. of a sub-job) into this one.
    ///
    /// `mem` must hold the frames of both; `other`'s retired frames are moved one by one.
    pub fn merge<M: TableMemory + ?Sized>(&mut self, mem: &mut M, mut other: Gather) {
        if let Some((s, e)) = other.flush {
            self.flush = hull(self.flush, s, e);
        }
        if let Some((s, e)) = other.touched {
            self.touched = hull(self.touched, s, e);
        }
        self.walk |= other.walk;
        while let Some(pa) = other.retired.pop(mem) {
            // Both lists live in `mem`, so the push resolves whenever the pop did.
            self.retired.push(mem, pa).ok();
        }
    }

    /// The caller declares that the invalidation of [`Gather::flush_range`] (with the walk cache
    /// if [`Gather::walk_cache`]) has completed; the retired frames become reclaimable.
    pub fn invalidated(self) -> Reclaim {
        Reclaim {
            retired: self.retired,
        }
    }

    pub(crate) fn flush(&mut self, s: u64, e: u64) {
        self.flush = hull(self.flush, s, e);
        self.touched = hull(self.touched, s, e);
    }

    pub(crate) fn touch(&mut self, s: u64, e: u64) {
        self.touched = hull(self.touched, s, e);
    }

    pub(crate) fn retire<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        pa: PhysAddr,
        span: (u64, u64),
    ) {
        self.walk = true;
        self.flush(span.0, span.1);
        // The walker only retires frames it just resolved, so this cannot fail.
        let pushed = self.retired.push(mem, pa);
        debug_assert!(pushed.is_ok());
    }
}

/// Retired frames whose invalidation has completed; only obtainable from
/// [`Gather::invalidated`].
#[must_use = "dropping a Reclaim leaks its frames"]
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
    /// The first [`FreeError`]; the remaining frames are dropped (leaked, never reused).
    pub fn release<A: FrameAlloc + ?Sized>(mut self, alloc: &mut A) -> Result<(), FreeError> {
        while let Some(pa) = self.retired.pop(alloc) {
            alloc.free_frame(pa)?;
        }
        Ok(())
    }

    /// Takes one frame for the caller's own use (e.g. to refill a reserve without a round trip
    /// through the allocator). Its contents are stale; [`crate::Reserve::push`] zeroes it.
    pub fn pop<M: TableMemory + ?Sized>(&mut self, mem: &mut M) -> Option<PhysAddr> {
        self.retired.pop(mem)
    }
}

/// Error returned by [`LockRegion::covering`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockError {
    /// The range is empty.
    Empty,
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("empty lock range")
    }
}

impl core::error::Error for LockError {}

/// A Mali `AS_LOCKADDR` region: the naturally aligned power of two of at least 32 KiB that
/// contains a range.
///
/// The hardware locks `2^(width + 1)` bytes at `base`, where the register holds
/// `base | width`. The width follows from the highest bit in which the first and last byte of
/// the range differ, so an unaligned range can lock far more than it covers (see
/// [`LockRegion::over_lock`]): `[0x7F_FFFF_F000, +8 KiB)` locks 1 TiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LockRegion {
    base: u64,
    size_log2: u8,
    len: u64,
}

/// The smallest lock region, 32 KiB (`AS_LOCK_REGION_MIN_SIZE`).
pub const LOCK_REGION_MIN_LOG2: u8 = 15;

impl LockRegion {
    /// The region covering `range`.
    ///
    /// # Errors
    ///
    /// [`LockError::Empty`] if `range` is empty.
    pub fn covering(range: Range<u64>) -> Result<Self, LockError> {
        if range.start >= range.end {
            return Err(LockError::Empty);
        }
        let last = range.end - 1;
        let diff = range.start ^ last;
        let bits = 64 - diff.leading_zeros();
        let size_log2 = u8::try_from(bits).unwrap_or(64).max(LOCK_REGION_MIN_LOG2);
        let base = if size_log2 >= 64 {
            0
        } else {
            range.start & !((1u64 << size_log2) - 1)
        };
        Ok(Self {
            base,
            size_log2,
            len: range.end - range.start,
        })
    }

    /// The first locked byte.
    #[must_use]
    pub const fn base(&self) -> u64 {
        self.base
    }

    /// log2 of the locked size.
    #[must_use]
    pub const fn size_log2(&self) -> u8 {
        self.size_log2
    }

    /// The locked size in bytes (saturating at `u64::MAX` for the whole 64-bit space).
    #[must_use]
    pub const fn size(&self) -> u64 {
        if self.size_log2 >= 64 {
            u64::MAX
        } else {
            1 << self.size_log2
        }
    }

    /// The register value: `base | (log2(size) - 1)`.
    #[must_use]
    pub const fn encode(&self) -> u64 {
        self.base | (self.size_log2 as u64 - 1)
    }

    /// Locked bytes per requested byte (1.0 when the range is itself an aligned power of two of
    /// at least 32 KiB).
    #[must_use]
    pub fn over_lock(&self) -> f64 {
        // Precision loss is irrelevant for a ratio reported to humans.
        let size = if self.size_log2 >= 64 {
            18_446_744_073_709_551_616.0
        } else {
            self.size() as f64
        };
        size / self.len as f64
    }

    /// Whether the region contains all of `range`.
    #[must_use]
    pub fn covers(&self, range: Range<u64>) -> bool {
        let end = u128::from(self.base) + (1u128 << self.size_log2);
        range.start >= self.base && u128::from(range.end) <= end
    }
}
