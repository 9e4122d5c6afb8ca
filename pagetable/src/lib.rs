//! VMSAv8-64 stage-1 GPU page tables with a tight worst-case reservation, block splits and
//! deferred reclamation (the format Mali CSF GPUs walk in "AArch64" mode).
//!
//! # Overview
//!
//! * [`Format`]: granule (4K/16K/64K), VA width (32..=48 bits; levels and start [`Level`]
//!   derived), output-address width, and the allowed block sizes; descriptors ([`Pte`]) are
//!   encoded and decoded by [`Format::encode_leaf`], [`Format::encode_table`] and
//!   [`Format::decode`] with [`Attrs`] (read-only, no-execute, memory type, shareability, nG; AF
//!   always set).
//! * [`TableMemory`] / [`FrameAlloc`]: table frames are the caller's (their contracts are listed
//!   on the traits). The run stage only resolves frames by physical address; prepare and cleanup
//!   allocate and free. [`SlicePool`] works over caller storage with `core` alone; `VecPool`
//!   (feature `alloc`) grows fallibly.
//! * [`PageTable`]: a format and a root. [`PageTable::update`] starts the run stage of a job, an
//!   [`UpdateContext`] that maps (largest leaf wherever VA, PA and the chunk allow), unmaps (with
//!   block splits) and protects, and ends in a [`Flush`]; [`PageTable::map`],
//!   [`unmap`](PageTable::unmap) and [`protect`](PageTable::protect) are one-operation jobs.
//!   [`translate`](PageTable::translate), [`leaves`](PageTable::leaves) and
//!   [`audit`](PageTable::audit) read.
//!
//! # The three stages
//!
//! ```text
//! prepare  (may allocate, may fail)   bounds from the request alone -> Reserve::try_fill
//!                                     lock_range -> LockRegion (if the driver locks)
//! run      (no allocation, no frees)  pt.update(mem, &mut reserve, hooks)     
//!                                       .map / .unmap / .protect ...   each all-or-nothing
//!                                       .finish() -> Flush             #[must_use]
//!                                     flush.invalidate(&mut tlb) -> Reclaim  (after the TLB
//!                                                                   invalidation completed)
//! cleanup  (may free)                 reclaim.release(pool); reserve.release(pool)
//! ```
//!
//! # Allocation
//!
//! The run stage never allocates and never frees:
//! * new tables are popped from a [`Reserve`] filled in prepare with [`map_bound`] /
//!   [`unmap_bound`] frames (or [`job_bound`] for a whole job): pure functions of the request,
//!   the backing layout and the format, never of the table state. A map into an unpopulated
//!   region uses exactly its bound; a 1 GiB map of 2 MiB-aligned memory needs 2 frames where
//!   panthor's formula ([`panthor_map_bound`]) reserves 514;
//! * every table keeps a live-entry count; a table emptied by an unmap is unhooked and retired
//!   to the update's [`Flush`], never back to the reserve; after unmapping everything only the
//!   root remains;
//! * retired frames leave the [`Flush`] only through [`Flush::invalidate`], which hands out a
//!   [`Reclaim`] once the driver's [`TlbInvalidate`] reports the invalidation of
//!   [`Flush::range`] complete; the `Reclaim` releases them in cleanup.
//!
//! Every operation first plans (validates, checks for conflicts, counts the frames it needs
//! against the current state) and only then writes, through the same recursion: a rejected
//! request leaves the tables, the reserve and the flush exactly as they were.
//!
//! # TLB, lock regions, non-coherent walks
//!
//! A [`Flush`] merges the ranges of all operations of a job into one invalidation range and
//! flags walk-cache invalidation when a table was unhooked. Splits are break-before-make, with
//! the driver's [`UpdateHooks::break_before_make`] between break and make (the split rules are
//! drawn in the [`table`] module docs). A driver that locks instead computes the range a job may
//! change *before* the run with [`lock_range`] / [`job_lock_range`] and encodes it as a
//! [`LockRegion`]. On a GPU whose table walks are not cache-coherent,
//! [`UpdateHooks::written`] reports every written entry range in publication order, to clean.
//!
//! # Examples
//!
//! ```
//! # #[cfg(feature = "alloc")] fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use core::ops::Range;
//! use pagetable::{map_bound, unmap_bound, Attrs, Chunk, Format, PageTable, PhysAddr,
//!                 RegionLocked, Reserve, TlbInvalidate, VecPool, VirtAddr};
//!
//! struct Tlb; // the driver's invalidation: FLUSH_MEM and wait, for panthor
//! impl TlbInvalidate for Tlb {
//!     type Error = core::convert::Infallible;
//!     fn invalidate(&mut self, _range: Range<u64>, _walk_cache: bool) -> Result<(), Self::Error> {
//!         Ok(())
//!     }
//! }
//!
//! let fmt = Format::panthor(48)?.with_oa_bits(40)?;
//! let mut pool = VecPool::new(fmt.granule(), PhysAddr::new(0x10_0000_0000))?;
//! let mut pt = PageTable::try_new(fmt, &mut pool)?;
//!
//! // Prepare: reserve from the requests alone.
//! let va = VirtAddr::new(0x20_0000);
//! let backing = [Chunk::new(PhysAddr::new(0x4000_0000), 0x20_0000)];
//! let hole = VirtAddr::new(0x20_1000);
//! let mut reserve = Reserve::new();
//! let need = map_bound(&fmt, va, &backing)?.total() + unmap_bound(&fmt, hole, 0x1000)?.total();
//! reserve.try_fill(&mut pool, need)?;
//!
//! // Run: no allocation.
//! let mut ctx = pt.update(&mut pool, &mut reserve, RegionLocked);
//! ctx.map(va, &backing, Attrs::default())?;
//! ctx.unmap(hole, 0x1000)?; // splits the 2 MiB block
//! let flush = ctx.finish();
//! let mut reclaim = flush.invalidate(&mut Tlb)?;
//! assert_eq!(pt.translate(&pool, VirtAddr::new(0x20_2000))?.map(|t| t.pa.as_u64()), Some(0x4000_2000));
//!
//! // Cleanup.
//! reclaim.release(&mut pool)?;
//! reserve.release(&mut pool)?;
//! # Ok(()) }
//! # #[cfg(not(feature = "alloc"))] fn main() {}
//! ```
#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;

mod addr;
mod bound;
mod error;
mod flush;
mod format;
mod gather;
mod level;
mod lock;
mod mem;
mod pte;
mod request;
mod reserve;
pub mod table;
mod update;
mod walk;

#[cfg(all(test, feature = "alloc"))]
mod tests;

pub use addr::{Chunk, PhysAddr, VirtAddr};
#[cfg(feature = "alloc")]
pub use bound::job_bound_alloc;
pub use bound::{
    backing_len, job_bound, map_bound, panthor_map_bound, panthor_unmap_bound, sum_bound,
    unmap_bound, JobOp, TableCount, WindowRun,
};
pub use error::{
    AuditError, BoundError, MapError, NewError, ProtectError, RangeError, TranslateError,
    UnmapError,
};
pub use flush::{Flush, FlushError, MergeError, Reclaim, RegionLocked, TlbInvalidate, UpdateHooks};
pub use format::{Format, FormatError, Granule, OA_BITS};
pub use level::Level;
pub use lock::{job_lock_range, lock_range, LockError, LockRegion, LOCK_REGION_MIN_LOG2};
#[cfg(feature = "alloc")]
pub use mem::VecPool;
pub use mem::{AllocError, FrameAlloc, FrameMeta, FreeError, PoolError, SlicePool, TableMemory};
pub use pte::{all_attrs, Attrs, Desc, EncodeError, MemType, Pte, Shareability};
pub use reserve::{Reserve, ReserveError};
pub use table::{Audit, DestroyError, Leaf, Leaves, PageTable, Translation};
pub use update::UpdateContext;

/// Tests that need nothing but `core` (run with `--no-default-features` too).
#[cfg(test)]
mod core_tests {
    use crate::*;

    /// A TLB that always completes at once.
    struct Done;

    impl TlbInvalidate for Done {
        type Error = ();
        fn invalidate(&mut self, _: core::ops::Range<u64>, _: bool) -> Result<(), ()> {
            Ok(())
        }
    }

    #[test]
    fn map_split_unmap_over_caller_storage() -> Result<(), &'static str> {
        let mut entries = [Pte::INVALID; 6 * 512];
        let mut metas = [FrameMeta::default(); 6];
        let mut pool = SlicePool::new(
            Granule::K4,
            PhysAddr::new(0x10_0000),
            &mut entries,
            &mut metas,
        )
        .map_err(|_| "pool")?;
        let fmt = Format::panthor(39).map_err(|_| "fmt")?;
        let mut pt = PageTable::try_new(fmt, &mut pool).map_err(|_| "root")?;
        let (at, backing) = (
            VirtAddr::new(0x20_0000),
            [Chunk::new(PhysAddr::new(0x4000_0000), 0x40_0000)],
        );
        let mut r = Reserve::new();
        let need = map_bound(&fmt, at, &backing).map_err(|_| "bound")?.total();
        assert_eq!(
            need, 1,
            "two 2 MiB blocks under a 39-bit root need one L2 table"
        );
        r.try_fill(&mut pool, need).map_err(|_| "fill")?;
        let hole = VirtAddr::new(0x3F_F000);
        r.try_fill(
            &mut pool,
            unmap_bound(&fmt, hole, 0x2000)
                .map_err(|_| "bound")?
                .total(),
        )
        .map_err(|_| "fill")?;
        assert_eq!(r.len(), 3);
        let mut ctx = pt.update(&mut pool, &mut r, RegionLocked);
        ctx.map(at, &backing, Attrs::default()).map_err(|_| "map")?;
        ctx.unmap(hole, 0x2000).map_err(|_| "unmap")?;
        assert_eq!(ctx.reserve_len(), 0);
        let mut first = ctx.finish();
        let t = pt
            .translate(&pool, VirtAddr::new(0x3F_E000))
            .map_err(|_| "tr")?
            .ok_or("gone")?;
        assert_eq!(t.pa.as_u64(), 0x401F_E000);
        let all = pt
            .unmap(
                &mut pool,
                &mut r,
                &mut RegionLocked,
                VirtAddr::new(0),
                1 << 39,
            )
            .map_err(|_| "unmap all")?;
        first.merge(&mut pool, all).map_err(|_| "merge")?;
        assert_eq!(pt.audit(&pool).map_err(|_| "audit")?.table_count(), 1);
        assert_eq!(pool.in_use(), 1 + first.retired_len());
        first
            .invalidate(&mut Done)
            .map_err(|_| "tlb")?
            .release(&mut pool)
            .map_err(|_| "release")?;
        assert_eq!(pool.in_use(), 1);
        Ok(())
    }
}
