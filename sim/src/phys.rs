//! Physical memory: 4 KiB frames, each free, a page-table frame of one VM, or a data page of one
//! buffer object; allocation of physically contiguous, naturally aligned runs (so objects can
//! be backed by 2 MiB blocks, 64 KiB chunks or scattered pages), and the data words GPU jobs
//! write.

use std::collections::BTreeMap;

use pagetable::{
    AllocError, FrameAlloc, FrameMeta, FreeError, Granule, PhysAddr, Pte, TableMemory,
};

/// Bytes per frame.
pub const FRAME: u64 = 4096;
/// Frames per 2 MiB region (the allocator's unit of contiguity bookkeeping).
const REGION: usize = 512;

/// What a frame holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// Nobody.
    Free,
    /// A page-table frame of VM `vm`.
    Table {
        /// The VM.
        vm: u32,
    },
    /// A data page of buffer object `bo`.
    Data {
        /// The buffer object.
        bo: u32,
    },
}

/// Counters of the physical allocator.
#[derive(Clone, Copy, Debug, Default)]
pub struct PhysStats {
    /// Frames in use now.
    pub in_use: u64,
    /// Most frames in use at once.
    pub peak: u64,
    /// Runs of 512 frames (2 MiB) handed out.
    pub runs_2m: u64,
    /// Runs of 16 frames (64 KiB) handed out.
    pub runs_64k: u64,
    /// Single frames handed out.
    pub runs_4k: u64,
    /// Requests that could not be met.
    pub failures: u64,
}

/// Physical memory of `frames` 4 KiB frames starting at `base`.
#[derive(Debug)]
pub struct Phys {
    base: u64,
    owner: Vec<Owner>,
    /// Bumped every time a frame is handed out: a cached table address of an older generation
    /// points at memory that was freed (and maybe reused) since.
    gen: Vec<u32>,
    /// Whether a table frame had entries written (reported by the writer's hooks).
    written: Vec<bool>,
    free_in_region: Vec<u32>,
    /// One bit per frame, set while the frame is free (64 frames a word): the allocator finds
    /// a free run in a region from eight words instead of reading 512 owners.
    free_bits: Vec<u64>,
    /// Data words written by GPU jobs, by physical address (8-byte aligned).
    data: BTreeMap<u64, u64>,
    /// Counters.
    pub stats: PhysStats,
}

impl Phys {
    /// `frames` frames (a multiple of 512) at `base` (2 MiB aligned).
    #[must_use]
    pub fn new(base: u64, frames: usize) -> Self {
        let frames = frames.next_multiple_of(REGION);
        Self {
            base,
            owner: vec![Owner::Free; frames],
            gen: vec![0; frames],
            written: vec![false; frames],
            free_in_region: vec![u32::try_from(REGION).unwrap_or(512); frames / REGION],
            free_bits: vec![u64::MAX; frames / 64],
            data: BTreeMap::new(),
            stats: PhysStats::default(),
        }
    }

    /// Address of the first frame.
    #[must_use]
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Total frames.
    #[must_use]
    pub fn frames(&self) -> usize {
        self.owner.len()
    }

    /// Free frames.
    #[must_use]
    pub fn free_frames(&self) -> u64 {
        self.frames() as u64 - self.stats.in_use
    }

    fn index(&self, pa: u64) -> Option<usize> {
        let off = pa.checked_sub(self.base)?;
        let i = usize::try_from(off / FRAME).ok()?;
        (i < self.owner.len()).then_some(i)
    }

    /// Who owns the frame holding `pa`, and its generation (`None` outside memory).
    #[must_use]
    pub fn owner(&self, pa: u64) -> Option<(Owner, u32)> {
        let i = self.index(pa)?;
        Some((self.owner[i], self.gen[i]))
    }

    /// Allocates `n` (1, 16 or 512) contiguous frames aligned to `n` frames for `owner`;
    /// returns the first frame's address.
    pub fn alloc_run(&mut self, n: usize, owner: Owner) -> Option<u64> {
        let regions = self.free_in_region.len();
        let need = u32::try_from(n).unwrap_or(u32::MAX);
        // Single frames prefer partly used regions, so that whole 2 MiB regions stay free.
        let mut best: Option<usize> = None;
        for r in 0..regions {
            let free = self.free_in_region[r];
            if free < need {
                continue;
            }
            let whole = usize::try_from(free).is_ok_and(|f| f == REGION);
            if n == REGION {
                best = Some(r);
                break;
            }
            if whole {
                best = best.or(Some(r));
                continue;
            }
            if let Some(start) = self.find_in_region(r, n) {
                return Some(self.take(start, n, owner));
            }
        }
        let r = match best {
            Some(r) => r,
            None => {
                self.stats.failures += 1;
                return None;
            }
        };
        let start = self.find_in_region(r, n)?;
        Some(self.take(start, n, owner))
    }

    /// The first free run of `n` frames (1, 16 or 512) aligned to `n` in region `r`.
    fn find_in_region(&self, r: usize, n: usize) -> Option<usize> {
        let words = self.free_bits.get(r * REGION / 64..(r + 1) * REGION / 64)?;
        let first = r * REGION;
        if n >= 64 {
            // Whole words: runs of n / 64 words, all free.
            let per = n / 64;
            return words
                .chunks(per)
                .position(|c| c.len() == per && c.iter().all(|w| *w == u64::MAX))
                .map(|i| first + i * n);
        }
        if n == 1 {
            let (w, bits) = words.iter().enumerate().find(|(_, b)| **b != 0)?;
            return Some(first + w * 64 + bits.trailing_zeros() as usize);
        }
        let mask = (1u64 << n) - 1;
        words.iter().enumerate().find_map(|(w, &bits)| {
            (0..64)
                .step_by(n)
                .find(|&b| (bits >> b) & mask == mask)
                .map(|b| first + w * 64 + b)
        })
    }

    fn set_free(&mut self, i: usize, free: bool) {
        let (w, bit) = (i / 64, 1u64 << (i % 64));
        if free {
            self.free_bits[w] |= bit;
        } else {
            self.free_bits[w] &= !bit;
        }
    }

    fn take(&mut self, start: usize, n: usize, owner: Owner) -> u64 {
        for i in start..start + n {
            self.owner[i] = owner;
            self.set_free(i, owner == Owner::Free);
            self.gen[i] = self.gen[i].wrapping_add(1);
            self.written[i] = false;
        }
        self.free_in_region[start / REGION] -= u32::try_from(n).unwrap_or(0);
        self.stats.in_use += n as u64;
        self.stats.peak = self.stats.peak.max(self.stats.in_use);
        match n {
            1 => self.stats.runs_4k += 1,
            16 => self.stats.runs_64k += 1,
            _ => self.stats.runs_2m += 1,
        }
        self.base + start as u64 * FRAME
    }

    /// Frees the `n` frames at `pa` (their data words are forgotten).
    pub fn free(&mut self, pa: u64, n: usize) {
        let Some(start) = self.index(pa) else { return };
        for i in start..(start + n).min(self.owner.len()) {
            if self.owner[i] != Owner::Free {
                self.owner[i] = Owner::Free;
                self.set_free(i, true);
                self.free_in_region[i / REGION] += 1;
                self.stats.in_use -= 1;
            }
        }
        let lo = pa;
        let hi = pa + n as u64 * FRAME;
        let keys: Vec<u64> = self.data.range(lo..hi).map(|(k, _)| *k).collect();
        for k in keys {
            self.data.remove(&k);
        }
    }

    /// The word at `pa` (0 if never written).
    #[must_use]
    pub fn read(&self, pa: u64) -> u64 {
        self.data.get(&(pa & !7)).copied().unwrap_or(0)
    }

    /// Writes the word at `pa`.
    pub fn write(&mut self, pa: u64, v: u64) {
        self.data.insert(pa & !7, v);
    }

    /// Marks the table frame at `pa` as written (from the writer's hooks; allocates nothing).
    pub fn mark_written(&mut self, pa: u64) {
        if let Some(i) = self.index(pa) {
            self.written[i] = true;
        }
    }

    fn was_written(&self, pa: u64) -> bool {
        self.index(pa).is_some_and(|i| self.written[i])
    }
}

/// Page-table frame accounting of one pool.
#[derive(Clone, Copy, Debug, Default)]
pub struct PoolStats {
    /// Frames handed out (reservations filled, roots).
    pub allocated: u64,
    /// Frames freed that had held entries (retired tables, reclaimed after invalidation).
    pub retired: u64,
    /// Frames freed that were never written (unused reservation given back).
    pub unused: u64,
}

struct TableFrame {
    entries: Vec<Pte>,
    meta: FrameMeta,
}

/// One VM's page-table frames: addresses drawn from the shared [`Phys`], contents kept here
/// (what the GPU walks when a descriptor points at the address).
pub struct TablePool {
    phys: std::rc::Rc<std::cell::RefCell<Phys>>,
    vm: u32,
    /// Address of the physical memory's first frame.
    base: u64,
    /// The frames, indexed by frame number from `base` (grown to the highest frame held): a
    /// walk reads one frame per level, so a lookup is an index, not a hash.
    frames: Vec<Option<TableFrame>>,
    /// Frames held (the `Some`s of `frames`).
    held: usize,
    /// Counters.
    pub stats: PoolStats,
}

impl std::fmt::Debug for TablePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TablePool")
            .field("vm", &self.vm)
            .field("frames", &self.held)
            .finish_non_exhaustive()
    }
}

impl TablePool {
    /// A pool for VM `vm` over `phys`.
    #[must_use]
    pub fn new(phys: std::rc::Rc<std::cell::RefCell<Phys>>, vm: u32) -> Self {
        let base = phys.borrow().base();
        Self {
            phys,
            vm,
            base,
            frames: Vec::new(),
            held: 0,
            stats: PoolStats::default(),
        }
    }

    /// The slot of the frame at `pa` (`None` below `base` or off a frame boundary).
    fn slot(&self, pa: u64) -> Option<usize> {
        let off = pa.checked_sub(self.base)?;
        if off % FRAME != 0 {
            return None;
        }
        usize::try_from(off / FRAME).ok()
    }

    fn get(&self, pa: u64) -> Option<&TableFrame> {
        self.frames.get(self.slot(pa)?)?.as_ref()
    }

    /// Table frames held now (live, retired or reserved).
    #[must_use]
    pub fn held(&self) -> usize {
        self.held
    }

    /// The raw descriptors of the frame at `pa`, as the GPU reads them.
    #[must_use]
    pub fn raw(&self, pa: u64) -> Option<&[Pte]> {
        self.get(pa).map(|f| f.entries.as_slice())
    }
}

impl TableMemory for TablePool {
    fn granule(&self) -> Granule {
        Granule::K4
    }

    fn frame(&self, pa: PhysAddr) -> Option<(&[Pte], &FrameMeta)> {
        self.get(pa.as_u64())
            .map(|f| (f.entries.as_slice(), &f.meta))
    }

    fn frame_mut(&mut self, pa: PhysAddr) -> Option<(&mut [Pte], &mut FrameMeta)> {
        let i = self.slot(pa.as_u64())?;
        self.frames
            .get_mut(i)?
            .as_mut()
            .map(|f| (f.entries.as_mut_slice(), &mut f.meta))
    }
}

impl FrameAlloc for TablePool {
    fn alloc_frame(&mut self) -> Result<PhysAddr, AllocError> {
        let pa = self
            .phys
            .borrow_mut()
            .alloc_run(1, Owner::Table { vm: self.vm })
            .ok_or(AllocError::OutOfFrames)?;
        // The allocator hands out frames of its memory, so the slot exists.
        let i = self.slot(pa).ok_or(AllocError::OutOfFrames)?;
        if self.frames.len() <= i {
            self.frames.resize_with(i + 1, || None);
        }
        let frame = TableFrame {
            entries: vec![Pte::INVALID; 512],
            meta: FrameMeta::default(),
        };
        if self.frames[i].replace(frame).is_none() {
            self.held += 1;
        }
        self.stats.allocated += 1;
        Ok(PhysAddr::new(pa))
    }

    fn free_frame(&mut self, pa: PhysAddr) -> Result<(), FreeError> {
        let held = self
            .slot(pa.as_u64())
            .and_then(|i| self.frames.get_mut(i)?.take());
        if held.is_none() {
            return Err(FreeError::Foreign { pa });
        }
        self.held -= 1;
        let mut phys = self.phys.borrow_mut();
        if phys.was_written(pa.as_u64()) {
            self.stats.retired += 1;
        } else {
            self.stats.unused += 1;
        }
        phys.free(pa.as_u64(), 1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Owner, Phys, REGION};

    /// The allocator's former search: the first aligned run of `n` free owners in region `r`.
    fn scan_owners(p: &Phys, r: usize, n: usize) -> Option<usize> {
        let lo = r * REGION;
        (lo..lo + REGION)
            .step_by(n)
            .find(|&s| p.owner[s..s + n].iter().all(|o| *o == Owner::Free))
    }

    /// The free-bit search finds the run the owners say, through allocations of every size
    /// and frees in random order, so placements (and vmsim's figures) stay what they were.
    #[test]
    fn free_bits_find_the_run_the_owners_say() {
        let mut p = Phys::new(0x8000_0000, 4 * REGION);
        let mut held: Vec<(u64, usize)> = Vec::new();
        let mut x = 12_345u64;
        let (mut allocs, mut frees) = (0, 0);
        for step in 0..4000 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let r = usize::try_from(x >> 33).unwrap();
            if r % 3 == 0 && !held.is_empty() {
                let (pa, n) = held.swap_remove(r / 3 % held.len());
                p.free(pa, n);
                frees += 1;
                continue;
            }
            let n = [1, 1, 1, 16, 16, 512][r / 3 % 6];
            for reg in 0..4 {
                assert_eq!(
                    p.find_in_region(reg, n),
                    scan_owners(&p, reg, n),
                    "step {step}, region {reg}, run {n}"
                );
            }
            if let Some(pa) = p.alloc_run(n, Owner::Data { bo: 1 }) {
                held.push((pa, n));
                allocs += 1;
            }
        }
        assert!(
            allocs > 1000 && frees > 500,
            "{allocs} allocations, {frees} frees"
        );
    }
}
