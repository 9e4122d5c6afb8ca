//! VMSAv8-64 stage-1 GPU page tables with a tight worst-case reservation, block splits and
//! deferred reclamation (the format Mali CSF GPUs walk in "AArch64" mode).
//!
//! # Overview
//!
//! * [`Format`]: granule (4K/16K/64K), VA width (32..=48 bits; levels and start level derived),
//!   and the allowed block sizes; descriptors are encoded and decoded by [`Format::encode_leaf`],
//!   [`Format::encode_table`] and [`Format::decode`] with [`Attrs`] (read-only, no-execute,
//!   memory type, shareability, nG; AF always set).
//! * [`TableMemory`] / [`FrameAlloc`]: table frames are the caller's. The run stage only
//!   resolves frames by physical address; prepare and cleanup allocate and free. [`SlicePool`]
//!   works over caller storage with `core` alone; `VecPool` (feature `alloc`) grows fallibly.
//! * [`PageTable`]: [`map`](PageTable::map) a VA range to a backing given as physical
//!   [`Chunk`]s (largest leaf wherever VA, PA and the chunk allow), [`unmap`](PageTable::unmap)
//!   with block splits, [`protect`](PageTable::protect), [`translate`](PageTable::translate),
//!   [`leaves`](PageTable::leaves), [`audit`](PageTable::audit).
//!
//! # Split and break-before-make
//!
//! Unmapping or reprotecting part of a block replaces the block by a table of next-level leaves
//! (recursively, so a 1 GiB block split at an unaligned 4 KiB edge becomes 2 MiB blocks plus one
//! table of pages). The order is: fill the new table while it is unreachable; **clear** the
//! block descriptor; **invalidate** (the caller's [`BreakBeforeMake`] hook, or a lock region the
//! caller holds); **install** the table descriptor.
//!
//! # Allocation
//!
//! The run stage (map, unmap, protect) never allocates and never frees:
//! * new tables are popped from a [`Reserve`] filled in prepare with [`map_bound`] /
//!   [`unmap_bound`] frames (or [`job_bound`] for a whole job): pure functions of the request,
//!   the backing layout and the format, never of the table state. A map into an unpopulated
//!   region uses exactly its bound; a 1 GiB map of 2 MiB-aligned memory needs 2 frames where
//!   panthor's formula ([`panthor_map_bound`]) reserves 514;
//! * every table keeps a live-entry count; a table emptied by an unmap is unhooked and retired to
//!   the job's [`Gather`], never back to the reserve; after unmapping everything only the root
//!   remains;
//! * retired frames leave the [`Gather`] only through [`Gather::invalidated`], which the caller
//!   calls once the invalidation of [`Gather::flush_range`] (walk cache included if
//!   [`Gather::walk_cache`]) has completed; the resulting [`Reclaim`] releases them in cleanup.
//!
//! Every operation first plans (validates, checks for conflicts, counts the frames it needs
//! against the current state) and only then writes: a rejected request leaves the tables, the
//! reserve and the gather exactly as they were.
//!
//! # TLB
//!
//! A [`Gather`] merges the ranges of all operations of a job into one invalidation range and
//! flags walk-cache invalidation when a table was unhooked. [`LockRegion`] encodes a Mali lock
//! region (naturally aligned power of two of at least 32 KiB) covering a range and reports its
//! over-lock factor.
//!
//! # Examples
//!
//! ```
//! use pagetable::{map_bound, unmap_bound, Attrs, Chunk, Format, Gather, PageTable, PhysAddr,
//!                 RegionLocked, Reserve, SlicePool, VirtAddr, FrameMeta, Granule};
//!
//! let fmt = Format::panthor(48)?;
//! let mut entries = [0u64; 8 * 512];
//! let mut metas = [FrameMeta::default(); 8];
//! let mut pool = SlicePool::new(Granule::K4, PhysAddr::new(0x1000_0000), &mut entries, &mut metas)?;
//! let mut pt = PageTable::try_new(fmt, &mut pool)?;
//!
//! // Prepare: reserve from the request alone.
//! let va = VirtAddr::new(0x20_0000);
//! let backing = [Chunk::new(PhysAddr::new(0x4000_0000), 0x20_0000)];
//! let mut reserve = Reserve::new();
//! reserve.try_fill(&mut pool, map_bound(&fmt, va, &backing)?.total())?;
//! assert_eq!(reserve.len(), 2); // L1 + L2; the 2 MiB block needs no L3 table.
//!
//! // Run: no allocation.
//! let mut gather = Gather::new();
//! pt.map(&mut pool, &mut reserve, &mut gather, va, &backing, Attrs::default())?;
//! let t = pt.translate(&pool, VirtAddr::new(0x20_1234))?.ok_or("unmapped")?;
//! assert_eq!((t.pa.as_u64(), t.size), (0x4000_1234, 0x20_0000));
//!
//! // Unmapping 4 KiB of the block splits it; the reserve comes from the request alone.
//! reserve.try_fill(&mut pool, unmap_bound(&fmt, VirtAddr::new(0x20_1000), 0x1000)?.total())?;
//! pt.unmap(&mut pool, &mut reserve, &mut gather, &mut RegionLocked, VirtAddr::new(0x20_1000), 0x1000)?;
//! assert!(pt.translate(&pool, VirtAddr::new(0x20_1000))?.is_none());
//! assert_eq!(pt.translate(&pool, VirtAddr::new(0x20_2000))?.map(|t| t.pa.as_u64()), Some(0x4000_2000));
//!
//! // Cleanup, after the invalidation of gather.flush_range() has completed.
//! let flush = gather.flush_range().ok_or("nothing to flush")?;
//! assert!(flush.start <= 0x20_1000 && flush.end >= 0x20_2000);
//! gather.invalidated().release(&mut pool)?;
//! reserve.release(&mut pool)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
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
mod mem;
mod pte;
mod reserve;
mod table;

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
    AuditError, BoundError, MapError, NewError, ProtectError, TranslateError, UnmapError,
};
pub use flush::{
    BreakBeforeMake, Gather, LockError, LockRegion, Reclaim, RegionLocked, LOCK_REGION_MIN_LOG2,
};
pub use format::{Format, FormatError, Granule, OA_BITS};
#[cfg(feature = "alloc")]
pub use mem::VecPool;
pub use mem::{AllocError, FrameAlloc, FrameMeta, FreeError, PoolError, SlicePool, TableMemory};
pub use pte::{all_attrs, Attrs, Desc, EncodeError, MemType, Pte, Shareability};
pub use reserve::{Reserve, ReserveError};
pub use table::{Audit, DestroyError, Leaf, Leaves, PageTable, Translation};

/// Tests that need nothing but `core` (run with `--no-default-features` too).
#[cfg(test)]
mod core_tests {
    use crate::*;

    #[test]
    fn map_split_unmap_over_caller_storage() -> Result<(), &'static str> {
        let mut entries = [0u64; 6 * 512];
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
        let mut g = Gather::new();
        pt.map(&mut pool, &mut r, &mut g, at, &backing, Attrs::default())
            .map_err(|_| "map")?;
        let hole = VirtAddr::new(0x3F_F000);
        r.try_fill(
            &mut pool,
            unmap_bound(&fmt, hole, 0x2000)
                .map_err(|_| "bound")?
                .total(),
        )
        .map_err(|_| "fill")?;
        assert_eq!(r.len(), 2);
        pt.unmap(&mut pool, &mut r, &mut g, &mut RegionLocked, hole, 0x2000)
            .map_err(|_| "unmap")?;
        assert!(r.is_empty());
        let t = pt
            .translate(&pool, VirtAddr::new(0x3F_E000))
            .map_err(|_| "tr")?
            .ok_or("gone")?;
        assert_eq!(t.pa.as_u64(), 0x401F_E000);
        pt.unmap(
            &mut pool,
            &mut r,
            &mut g,
            &mut RegionLocked,
            VirtAddr::new(0),
            1 << 39,
        )
        .map_err(|_| "unmap all")?;
        assert_eq!(pt.audit(&pool).map_err(|_| "audit")?.table_count(), 1);
        assert_eq!(pool.in_use(), 1 + g.retired_len());
        g.invalidated().release(&mut pool).map_err(|_| "release")?;
        assert_eq!(pool.in_use(), 1);
        Ok(())
    }
}
