//! The reservation: zeroed frames set aside in prepare, popped (never allocated) at run time.

use core::fmt;

use crate::addr::{u64_from, usize_from, PhysAddr};
use crate::mem::{AllocError, FrameAlloc, FrameList, FreeError, TableMemory};
use crate::pte::Pte;

/// Error returned by [`Reserve::push`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReserveError {
    /// `pa` is not a full-size frame of the given memory.
    Foreign {
        /// The rejected address.
        pa: PhysAddr,
    },
}

impl fmt::Display for ReserveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Foreign { pa } => write!(f, "frame {:#x} not in this table memory", pa.as_u64()),
        }
    }
}

impl core::error::Error for ReserveError {}

/// A pop-only pool of zeroed frames for one job (or one operation).
///
/// Filled in prepare by [`Reserve::try_fill`] (which may allocate and fail), consumed by
/// [`PageTable::map`](crate::PageTable::map) / [`unmap`](crate::PageTable::unmap) /
/// [`protect`](crate::PageTable::protect), which only pop. Leftovers go back in cleanup through
/// [`Reserve::release`]. Frames retired by an operation never come back here: they go to the
/// job's [`Flush`](crate::Flush), a different type, and come back only through a
/// [`Reclaim`](crate::Reclaim) after the TLB invalidation.
///
/// The frames are chained through their [`FrameMeta`](crate::FrameMeta), so a reserve of any
/// size needs no storage of its own.
#[derive(Debug, Default)]
pub struct Reserve {
    frames: FrameList,
}

impl Reserve {
    /// An empty reserve.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            frames: FrameList::new(),
        }
    }

    /// Frames left.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether no frame is left.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.frames.len() == 0
    }

    /// Allocates `n` more frames (prepare stage).
    ///
    /// # Errors
    ///
    /// [`AllocError`] if the provider runs out; the frames allocated by this call are given back
    /// and the reserve is as before.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "alloc")] fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use pagetable::{unmap_bound, Format, PhysAddr, Reserve, VecPool, VirtAddr};
    ///
    /// let fmt = Format::panthor(48)?;
    /// let mut pool = VecPool::new(fmt.granule(), PhysAddr::new(0x1_0000_0000))?.with_limit(2);
    /// let mut reserve = Reserve::new();
    /// // Unmapping a page in the middle of nowhere may split one 2 MiB block: one frame.
    /// reserve.try_fill(&mut pool, unmap_bound(&fmt, VirtAddr::new(0x20_1000), 0x1000)?.total())?;
    /// assert_eq!(reserve.len(), 1);
    /// assert!(reserve.try_fill(&mut pool, 5).is_err()); // all or nothing
    /// assert_eq!((reserve.len(), pool.in_use()), (1, 1));
    /// reserve.release(&mut pool)?; // cleanup
    /// assert_eq!(pool.in_use(), 0);
    /// # Ok(()) }
    /// # #[cfg(not(feature = "alloc"))] fn main() {}
    /// ```
    pub fn try_fill<A: FrameAlloc + ?Sized>(
        &mut self,
        alloc: &mut A,
        n: u64,
    ) -> Result<(), AllocError> {
        let before = self.frames.len();
        let mut got = 0u64;
        while got < n {
            let pa = match alloc.alloc_frame() {
                Ok(pa) => pa,
                Err(e) => {
                    self.unwind(alloc, before);
                    return Err(e);
                }
            };
            if self.frames.push(&mut *alloc, pa).is_err() {
                // A provider handing out frames it cannot resolve is broken; give it back.
                alloc.free_frame(pa).ok();
                self.unwind(alloc, before);
                return Err(AllocError::OutOfFrames);
            }
            got += 1;
        }
        Ok(())
    }

    /// Moves up to `n` frames from `from` into this reserve, without allocating or zeroing
    /// (reserved frames are zero and stay so until popped); returns how many moved. Both
    /// reserves must hold frames of `mem`. Lets a caller keep unused reserved frames for a
    /// later reservation instead of freeing and re-zeroing them.
    ///
    /// Stops early only if `from` holds a frame that does not resolve in `mem` (that frame
    /// stays in `from`).
    pub fn take_from<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        from: &mut Reserve,
        n: usize,
    ) -> usize {
        let mut moved = 0;
        while moved < n {
            let Ok(Some(pa)) = from.frames.pop(mem) else {
                break;
            };
            if self.frames.push(mem, pa).is_err() {
                // `pop` just resolved it in `mem`, so this cannot happen; keep it in `from`.
                let _ = from.frames.push(mem, pa);
                break;
            }
            moved += 1;
        }
        moved
    }

    fn unwind<A: FrameAlloc + ?Sized>(&mut self, alloc: &mut A, keep: usize) {
        while self.frames.len() > keep {
            match self.frames.pop(alloc) {
                Ok(Some(pa)) => {
                    // Just allocated by `alloc`: it takes it back.
                    alloc.free_frame(pa).ok();
                }
                Ok(None) | Err(_) => break,
            }
        }
    }

    /// Adds a frame the caller allocated some other way; it is zeroed here (prepare stage).
    ///
    /// # Errors
    ///
    /// [`ReserveError::Foreign`] if `pa` is not a full-size frame of `mem`; nothing changes.
    pub fn push<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        pa: PhysAddr,
    ) -> Result<(), ReserveError> {
        let want = mem.granule().entries();
        let (e, meta) = mem.frame_mut(pa).ok_or(ReserveError::Foreign { pa })?;
        if e.len() != want {
            return Err(ReserveError::Foreign { pa });
        }
        e.fill(Pte::INVALID);
        meta.live = 0;
        self.frames
            .push(mem, pa)
            .map_err(|_| ReserveError::Foreign { pa })
    }

    /// Returns every remaining frame to `alloc` (cleanup stage).
    ///
    /// # Errors
    ///
    /// The first [`FreeError`] (for a pool the frames do not belong to: [`FreeError::Foreign`]);
    /// the frames before it were returned, the refused one and all after it stay in the reserve,
    /// so nothing is lost: release them into the right pool.
    pub fn release<A: FrameAlloc + ?Sized>(&mut self, alloc: &mut A) -> Result<(), FreeError> {
        self.frames.release(alloc)
    }

    pub(crate) fn pop<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
    ) -> Result<Option<PhysAddr>, FreeError> {
        self.frames.pop(mem)
    }

    /// Checks, before anything is written, that the reservation can supply `need` frames: it
    /// holds that many, and the first `need` of them resolve in `mem` and lie below `oa_limit`
    /// (a table descriptor cannot point higher).
    pub(crate) fn ensure<M: TableMemory + ?Sized>(
        &self,
        mem: &M,
        need: u64,
        oa_limit: u64,
    ) -> Result<(), Shortfall> {
        let available = u64_from(self.len());
        if need > available {
            return Err(Shortfall::Short {
                needed: need,
                available,
            });
        }
        self.frames
            .first_n_resolve(mem, usize_from(need), oa_limit)
            .map_err(|pa| match pa {
                Some(pa) => Shortfall::BadTable(pa),
                None => Shortfall::Short {
                    needed: need,
                    available,
                },
            })
    }
}

/// Why [`Reserve::ensure`] refused.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Shortfall {
    /// Fewer frames than needed.
    Short { needed: u64, available: u64 },
    /// A reserved frame does not resolve in the table memory.
    BadTable(PhysAddr),
}
