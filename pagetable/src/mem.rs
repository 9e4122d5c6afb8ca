//! Table memory: where frames live, and how they are allocated outside the run stage.
//!
//! A *frame* is one granule of memory holding a table: its physical address, its
//! `granule / 8` entries (512, 2048 or 8192 [`Pte`]s), and a small [`FrameMeta`] that only this
//! crate reads or writes (the live-entry count and a list link). The metadata lives beside the
//! entries, never in them, so a retired table the GPU may still walk is never written to.
//!
//! [`TableMemory`] resolves a frame's physical address to safe references; it is all the run
//! stage needs. [`FrameAlloc`] adds allocation and freeing, used only by prepare (filling a
//! [`Reserve`](crate::Reserve)) and cleanup (releasing reserve leftovers and retired frames).
//! The kernel implements both over real pages; this crate ships [`SlicePool`] (caller storage,
//! core only) and, with `alloc`, [`VecPool`].

use core::fmt;

use crate::addr::{u64_from, usize_from, PhysAddr};
use crate::format::{Granule, OA_BITS};
use crate::pte::Pte;

/// Per-frame bookkeeping owned by this crate; the memory provider only stores it.
///
/// Start every frame with `FrameMeta::default()`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameMeta {
    /// Number of entries with the valid bit set (tables only).
    pub(crate) live: u32,
    /// Next frame in whatever list this frame is on (pool free list, reserve, retired list).
    pub(crate) next: Option<PhysAddr>,
    /// Whether a pool has handed the frame out (double-free detection).
    pub(crate) in_use: bool,
}

impl FrameMeta {
    /// The live-entry count (valid descriptors) of the table in this frame.
    #[must_use]
    pub const fn live(&self) -> u32 {
        self.live
    }
}

/// Safe access to table frames by physical address. Used by every table operation.
///
/// # Contract
///
/// Nothing here is `unsafe`, so breaking the contract cannot cause undefined behaviour in this
/// crate, but it makes the GPU walk something other than what the tables say. An implementation
/// must keep all of these:
///
/// * **The physical address is what the GPU walks.** `frame(pa)` returns the memory the GPU
///   reads when a descriptor points at `pa` (for the root: what the translation-table base
///   register holds). Writes through [`TableMemory::frame_mut`] reach that memory in program
///   order (for non-coherent table walks, after the cache clean the caller does from
///   [`UpdateHooks::written`](crate::UpdateHooks::written)).
/// * **Frames never alias.** Two different addresses resolve to disjoint memory, and no frame
///   overlaps memory the caller maps for the GPU.
/// * **Exact size.** The entry slice holds exactly `granule().entries()` entries (512, 2048 or
///   8192); a frame of another size is treated as foreign.
/// * **Stable.** Between two calls of this crate, an address keeps resolving (or not) to the same
///   frame, and nobody but this crate writes its entries or its [`FrameMeta`].
/// * **Within the output-address width.** Every frame address is below the
///   [`Format::oa_limit`](crate::Format::oa_limit) of the tables that use it (a table descriptor
///   cannot point higher).
pub trait TableMemory {
    /// The granule every frame of this memory is sized for.
    fn granule(&self) -> Granule;

    /// The entries and metadata of the frame at `pa`, or `None` if `pa` is not a frame here.
    /// The slice must hold exactly `granule().entries()` entries.
    fn frame(&self, pa: PhysAddr) -> Option<(&[Pte], &FrameMeta)>;

    /// Mutable access to the frame at `pa`, as [`TableMemory::frame`].
    fn frame_mut(&mut self, pa: PhysAddr) -> Option<(&mut [Pte], &mut FrameMeta)>;
}

/// Error returned by [`FrameAlloc::alloc_frame`] and everything that reserves frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AllocError {
    /// The provider has no free frame (or the host allocator failed).
    OutOfFrames,
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("out of table frames")
    }
}

impl core::error::Error for AllocError {}

/// Error returned by [`FrameAlloc::free_frame`] and everything that releases frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FreeError {
    /// `pa` is not a frame of this provider.
    Foreign {
        /// The rejected address.
        pa: PhysAddr,
    },
    /// The frame is already free.
    DoubleFree {
        /// The rejected address.
        pa: PhysAddr,
    },
}

impl fmt::Display for FreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Foreign { pa } => write!(f, "frame {:#x} not owned by this pool", pa.as_u64()),
            Self::DoubleFree { pa } => write!(f, "frame {:#x} freed twice", pa.as_u64()),
        }
    }
}

impl core::error::Error for FreeError {}

/// Allocation of table frames. Prepare and cleanup only; the run stage never sees this trait.
///
/// # Contract
///
/// Everything [`TableMemory`] requires, and:
///
/// * **Zeroed, unused frames.** [`FrameAlloc::alloc_frame`] returns a frame whose entries are all
///   [`Pte::INVALID`] and whose metadata is `FrameMeta::default()`, that is not handed out
///   already and that no GPU walk can still reach (nothing of an old use is cached).
/// * **Own frames only.** [`FrameAlloc::free_frame`] takes back only frames this allocator handed
///   out and that are in use, and refuses anything else with [`FreeError`] without changing
///   anything; a refused frame stays where it was (reserve, retired list), nothing is lost.
/// * **Frees may scribble.** A freed frame's entries and metadata may be overwritten at once (a
///   pool links its free list through the metadata), so this crate reads whatever it needs from
///   a frame before freeing it.
pub trait FrameAlloc: TableMemory {
    /// Hands out a frame whose entries are all zero and whose metadata is reset.
    ///
    /// # Errors
    ///
    /// [`AllocError::OutOfFrames`] when no frame is available.
    fn alloc_frame(&mut self) -> Result<PhysAddr, AllocError>;

    /// Takes a frame back. Its contents may be anything.
    ///
    /// # Errors
    ///
    /// [`FreeError`] if the frame is not this provider's or is already free; nothing changes.
    fn free_frame(&mut self, pa: PhysAddr) -> Result<(), FreeError>;
}

/// A singly linked list of frames, chained through [`FrameMeta::next`].
///
/// Pushing and popping never allocate, which lets the reserve and the retired list hold any
/// number of frames in core-only builds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FrameList {
    head: Option<PhysAddr>,
    len: usize,
}

impl FrameList {
    pub(crate) const fn new() -> Self {
        Self { head: None, len: 0 }
    }

    pub(crate) const fn len(&self) -> usize {
        self.len
    }

    pub(crate) const fn head(&self) -> Option<PhysAddr> {
        self.head
    }

    /// Pushes `pa`; `Err` (nothing changed) if `pa` is not a frame of `mem`.
    pub(crate) fn push<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        pa: PhysAddr,
    ) -> Result<(), FreeError> {
        let (_, meta) = mem.frame_mut(pa).ok_or(FreeError::Foreign { pa })?;
        meta.next = self.head;
        self.head = Some(pa);
        self.len += 1;
        Ok(())
    }

    /// Pops the head: `Ok(None)` if empty, `Err(Foreign)` (nothing changes) if the head does not
    /// resolve in `mem`.
    pub(crate) fn pop<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
    ) -> Result<Option<PhysAddr>, FreeError> {
        // The length bounds the walk even if a broken provider aliases frames into a cycle.
        let Some(pa) = self.head.filter(|_| self.len > 0) else {
            return Ok(None);
        };
        let (_, meta) = mem.frame_mut(pa).ok_or(FreeError::Foreign { pa })?;
        self.head = meta.next.take();
        self.len -= 1;
        Ok(Some(pa))
    }

    /// Frees every frame into `alloc`, head first. On the first refusal the refused frame and
    /// all after it stay on the list (nothing is lost) and the error is returned.
    pub(crate) fn release<A: FrameAlloc + ?Sized>(
        &mut self,
        alloc: &mut A,
    ) -> Result<(), FreeError> {
        while let Some(pa) = self.head.filter(|_| self.len > 0) {
            // Read the link first: a pool may reuse the metadata as soon as it has the frame.
            let next = alloc.frame(pa).ok_or(FreeError::Foreign { pa })?.1.next;
            alloc.free_frame(pa)?;
            self.head = next;
            self.len -= 1;
        }
        self.head = None;
        Ok(())
    }

    /// Moves every frame of `other` in front of this list. Walks `other` once in `mem`; if one
    /// of its frames does not resolve, `Err(Foreign)` and neither list changes.
    pub(crate) fn splice<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        other: &mut FrameList,
    ) -> Result<(), FreeError> {
        let Some(first) = other.head.filter(|_| other.len > 0) else {
            return Ok(());
        };
        let mut tail = first;
        for _ in 1..other.len {
            let (_, meta) = mem.frame(tail).ok_or(FreeError::Foreign { pa: tail })?;
            tail = meta.next.ok_or(FreeError::Foreign { pa: tail })?;
        }
        let (_, meta) = mem.frame_mut(tail).ok_or(FreeError::Foreign { pa: tail })?;
        meta.next = self.head;
        self.head = Some(first);
        self.len += other.len;
        *other = FrameList::new();
        Ok(())
    }

    /// Whether the first `n` frames all resolve to full-size frames of `mem` below `oa_limit`.
    pub(crate) fn first_n_resolve<M: TableMemory + ?Sized>(
        &self,
        mem: &M,
        n: usize,
        oa_limit: u64,
    ) -> Result<(), Option<PhysAddr>> {
        if n > self.len {
            return Err(None);
        }
        let want = mem.granule().entries();
        let mut cur = self.head;
        for _ in 0..n {
            let pa = cur.ok_or(None)?;
            let (e, meta) = mem.frame(pa).ok_or(Some(pa))?;
            if e.len() != want || pa.as_u64() >= oa_limit {
                return Err(Some(pa));
            }
            cur = meta.next;
        }
        Ok(())
    }

    /// Whether `pa` is on the list (linear; for tests and audits).
    pub(crate) fn contains<M: TableMemory + ?Sized>(&self, mem: &M, pa: PhysAddr) -> bool {
        let mut cur = self.head;
        let mut steps = 0;
        while let Some(p) = cur {
            if p == pa {
                return true;
            }
            steps += 1;
            if steps > self.len {
                return false;
            }
            cur = mem.frame(p).and_then(|(_, m)| m.next);
        }
        false
    }
}

/// Error returned by the pool constructors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolError {
    /// The base address is not granule-aligned.
    Misaligned,
    /// The pool would extend past the 48-bit output address space, or its storage sizes
    /// disagree (`entries.len() != metas.len() * granule.entries()`).
    BadGeometry,
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Misaligned => "pool base is not granule-aligned",
            Self::BadGeometry => "pool storage sizes or address range are inconsistent",
        })
    }
}

impl core::error::Error for PoolError {}

/// Bookkeeping shared by the pools: frame `i` lives at `base + i * granule`.
#[derive(Clone, Copy, Debug)]
struct PoolCore {
    granule: Granule,
    base: u64,
    /// Frames handed out at least once are `0..fresh`; the rest have never been used.
    fresh: usize,
    /// Frames given back, chained through their metadata.
    free: FrameList,
    in_use: usize,
}

impl PoolCore {
    fn new(granule: Granule, base: PhysAddr) -> Result<Self, PoolError> {
        if base.as_u64() & (granule.size() - 1) != 0 {
            return Err(PoolError::Misaligned);
        }
        Ok(Self {
            granule,
            base: base.as_u64(),
            fresh: 0,
            free: FrameList::new(),
            in_use: 0,
        })
    }

    fn index(&self, pa: PhysAddr, frames: usize) -> Option<usize> {
        let off = pa.as_u64().checked_sub(self.base)?;
        if off & (self.granule.size() - 1) != 0 {
            return None;
        }
        let i = usize::try_from(off >> self.granule.shift()).ok()?;
        (i < frames).then_some(i)
    }

    fn pa(&self, i: usize) -> PhysAddr {
        PhysAddr::new(self.base + (u64_from(i) << self.granule.shift()))
    }

    fn max_frames(granule: Granule, base: u64) -> usize {
        let room = (1u64 << OA_BITS).saturating_sub(base) >> granule.shift();
        usize_from(room)
    }
}

fn frame_in<'a>(
    core: &PoolCore,
    entries: &'a [Pte],
    metas: &'a [FrameMeta],
    pa: PhysAddr,
) -> Option<(&'a [Pte], &'a FrameMeta)> {
    let i = core.index(pa, metas.len())?;
    let n = core.granule.entries();
    Some((entries.get(i * n..(i + 1) * n)?, metas.get(i)?))
}

fn frame_in_mut<'a>(
    core: &PoolCore,
    entries: &'a mut [Pte],
    metas: &'a mut [FrameMeta],
    pa: PhysAddr,
) -> Option<(&'a mut [Pte], &'a mut FrameMeta)> {
    let i = core.index(pa, metas.len())?;
    let n = core.granule.entries();
    Some((entries.get_mut(i * n..(i + 1) * n)?, metas.get_mut(i)?))
}

/// Marks frame `pa` allocated, zeroes it and resets its metadata.
fn hand_out(
    core: &mut PoolCore,
    entries: &mut [Pte],
    metas: &mut [FrameMeta],
    pa: PhysAddr,
) -> Result<PhysAddr, AllocError> {
    let (e, m) = frame_in_mut(core, entries, metas, pa).ok_or(AllocError::OutOfFrames)?;
    e.fill(Pte::INVALID);
    *m = FrameMeta {
        live: 0,
        next: None,
        in_use: true,
    };
    core.in_use += 1;
    Ok(pa)
}

fn take_back(
    core: &mut PoolCore,
    entries: &mut [Pte],
    metas: &mut [FrameMeta],
    pa: PhysAddr,
) -> Result<(), FreeError> {
    let (_, m) = frame_in_mut(core, entries, metas, pa).ok_or(FreeError::Foreign { pa })?;
    if !m.in_use {
        return Err(FreeError::DoubleFree { pa });
    }
    m.in_use = false;
    m.next = core.free.head();
    core.free = FrameList {
        head: Some(pa),
        len: core.free.len() + 1,
    };
    core.in_use -= 1;
    Ok(())
}

fn pop_free(core: &mut PoolCore, metas: &mut [FrameMeta]) -> Option<PhysAddr> {
    let pa = core.free.head()?;
    let i = core.index(pa, metas.len())?;
    let m = metas.get_mut(i)?;
    core.free = FrameList {
        head: m.next.take(),
        len: core.free.len() - 1,
    };
    Some(pa)
}

/// A frame pool over caller-supplied storage; needs nothing but `core`.
///
/// Frame `i` is `entries[i * E..(i + 1) * E]` (with `E = granule.entries()`) and has physical
/// address `base + i * granule.size()`.
#[derive(Debug)]
pub struct SlicePool<'a> {
    core: PoolCore,
    entries: &'a mut [Pte],
    metas: &'a mut [FrameMeta],
}

impl<'a> SlicePool<'a> {
    /// A pool of `metas.len()` frames.
    ///
    /// # Errors
    ///
    /// [`PoolError::Misaligned`] if `base` is not granule-aligned; [`PoolError::BadGeometry`] if
    /// `entries.len() != metas.len() * granule.entries()` or the frames pass 48 bits.
    pub fn new(
        granule: Granule,
        base: PhysAddr,
        entries: &'a mut [Pte],
        metas: &'a mut [FrameMeta],
    ) -> Result<Self, PoolError> {
        let core = PoolCore::new(granule, base)?;
        let want = metas
            .len()
            .checked_mul(granule.entries())
            .ok_or(PoolError::BadGeometry)?;
        if entries.len() != want || metas.len() > PoolCore::max_frames(granule, base.as_u64()) {
            return Err(PoolError::BadGeometry);
        }
        Ok(Self {
            core,
            entries,
            metas,
        })
    }

    /// Frames currently handed out.
    #[must_use]
    pub const fn in_use(&self) -> usize {
        self.core.in_use
    }

    /// Total frames.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.metas.len()
    }
}

impl TableMemory for SlicePool<'_> {
    fn granule(&self) -> Granule {
        self.core.granule
    }

    fn frame(&self, pa: PhysAddr) -> Option<(&[Pte], &FrameMeta)> {
        frame_in(&self.core, self.entries, self.metas, pa)
    }

    fn frame_mut(&mut self, pa: PhysAddr) -> Option<(&mut [Pte], &mut FrameMeta)> {
        frame_in_mut(&self.core, self.entries, self.metas, pa)
    }
}

impl FrameAlloc for SlicePool<'_> {
    fn alloc_frame(&mut self) -> Result<PhysAddr, AllocError> {
        let pa = match pop_free(&mut self.core, self.metas) {
            Some(pa) => pa,
            None if self.core.fresh < self.metas.len() => {
                let pa = self.core.pa(self.core.fresh);
                self.core.fresh += 1;
                pa
            }
            None => return Err(AllocError::OutOfFrames),
        };
        hand_out(&mut self.core, self.entries, self.metas, pa)
    }

    fn free_frame(&mut self, pa: PhysAddr) -> Result<(), FreeError> {
        take_back(&mut self.core, self.entries, self.metas, pa)
    }
}

#[cfg(feature = "alloc")]
pub use vec_pool::VecPool;

#[cfg(feature = "alloc")]
mod vec_pool {
    use alloc::vec::Vec;

    use super::{frame_in, frame_in_mut, hand_out, pop_free, take_back, PoolCore, PoolError};
    use super::{AllocError, FrameAlloc, FrameMeta, FreeError, TableMemory};
    use crate::addr::PhysAddr;
    use crate::format::Granule;
    use crate::pte::Pte;

    /// A growable frame pool in host memory (feature `alloc`); every allocation is fallible.
    ///
    /// Frames get physical addresses `base + i * granule.size()`; the storage may move when it
    /// grows, which is invisible because frames are reached by physical address.
    #[derive(Debug)]
    pub struct VecPool {
        core: PoolCore,
        entries: Vec<Pte>,
        metas: Vec<FrameMeta>,
        limit: usize,
    }

    impl VecPool {
        /// An empty pool with no frame limit other than the 48-bit address space.
        ///
        /// # Errors
        ///
        /// [`PoolError::Misaligned`] if `base` is not granule-aligned.
        pub fn new(granule: Granule, base: PhysAddr) -> Result<Self, PoolError> {
            let core = PoolCore::new(granule, base)?;
            let limit = PoolCore::max_frames(granule, base.as_u64());
            Ok(Self {
                core,
                entries: Vec::new(),
                metas: Vec::new(),
                limit,
            })
        }

        /// Caps the number of frames the pool will ever create (to test allocation failure).
        #[must_use]
        pub fn with_limit(mut self, frames: usize) -> Self {
            self.limit = self.limit.min(frames);
            self
        }

        /// Frames currently handed out.
        #[must_use]
        pub const fn in_use(&self) -> usize {
            self.core.in_use
        }

        /// Frames created so far (in use or free).
        #[must_use]
        pub fn created(&self) -> usize {
            self.metas.len()
        }

        fn grow(&mut self) -> Result<PhysAddr, AllocError> {
            if self.metas.len() >= self.limit {
                return Err(AllocError::OutOfFrames);
            }
            let n = self.core.granule.entries();
            self.entries
                .try_reserve(n)
                .map_err(|_| AllocError::OutOfFrames)?;
            self.metas
                .try_reserve(1)
                .map_err(|_| AllocError::OutOfFrames)?;
            self.entries.extend(core::iter::repeat_n(Pte::INVALID, n));
            #[expect(
                clippy::disallowed_methods,
                reason = "capacity reserved by try_reserve above"
            )]
            self.metas.push(FrameMeta::default());
            let i = self.metas.len() - 1;
            self.core.fresh = self.metas.len();
            Ok(self.core.pa(i))
        }
    }

    impl TableMemory for VecPool {
        fn granule(&self) -> Granule {
            self.core.granule
        }

        fn frame(&self, pa: PhysAddr) -> Option<(&[Pte], &FrameMeta)> {
            frame_in(&self.core, &self.entries, &self.metas, pa)
        }

        fn frame_mut(&mut self, pa: PhysAddr) -> Option<(&mut [Pte], &mut FrameMeta)> {
            frame_in_mut(&self.core, &mut self.entries, &mut self.metas, pa)
        }
    }

    impl FrameAlloc for VecPool {
        fn alloc_frame(&mut self) -> Result<PhysAddr, AllocError> {
            let pa = match pop_free(&mut self.core, &mut self.metas) {
                Some(pa) => pa,
                None => self.grow()?,
            };
            hand_out(&mut self.core, &mut self.entries, &mut self.metas, pa)
        }

        fn free_frame(&mut self, pa: PhysAddr) -> Result<(), FreeError> {
            take_back(&mut self.core, &mut self.entries, &mut self.metas, pa)
        }
    }
}
