//! The GPU's MMU: its own VMSAv8-64 descriptor decoder and table walker (independent of
//! `pagetable`'s), address-space slots bound to VMs with LRU eviction, and per-VM leaf TLB and
//! walk cache that keep stale entries until an invalidation removes them.
//!
//! [`MmuHandle`] is what each `vmbind::Vm` owns as its `Mmu`: invalidations, lock regions,
//! break-before-make and the signalling-section annotations all land in the shared [`Gpu`].

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ops::Range;
use std::rc::Rc;

use pagetable::{LockRegion, PhysAddr, TableMemory, TlbInvalidate, UpdateHooks};

use crate::phys::{Owner, Phys};

/// Output-address bits of a descriptor: `[47:12]`.
const OA_MASK: u64 = 0x0000_FFFF_FFFF_F000;

/// Bits of GPU virtual address the MMU translates (four levels of 4 KiB tables); an access above
/// them faults.
pub const VA_BITS: u32 = 48;

/// One descriptor, as this MMU reads it (the layout of VMSAv8-64 stage 1 with a 4 KiB
/// granule: type in bits 1:0, AttrIndx 4:2, AP\[2] bit 7, AF bit 10, PXN/UXN bits 53/54).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Bit 0 clear, or a reserved encoding: a translation fault.
    Invalid,
    /// A table descriptor: the next level's table.
    Table(u64),
    /// A block (levels 1-2) or page (level 3).
    Leaf {
        /// Output address of the leaf's first byte.
        pa: u64,
        /// Leaf size.
        size: u64,
        /// AP\[2]: read-only.
        read_only: bool,
        /// PXN or UXN.
        no_exec: bool,
        /// AttrIndx.
        attr_index: u8,
        /// AF.
        access_flag: bool,
    },
}

/// log2 of the VA span of one entry at `level` (4 KiB granule).
#[must_use]
pub const fn entry_shift(level: u8) -> u32 {
    12 + 9 * (3 - level as u32)
}

/// Decodes `raw` found at `level` (0..=3).
#[must_use]
pub fn decode(raw: u64, level: u8) -> Decoded {
    if raw & 1 == 0 {
        return Decoded::Invalid;
    }
    let table_or_page = raw & 2 != 0;
    let leaf = |size: u64| Decoded::Leaf {
        pa: raw & OA_MASK & !(size - 1),
        size,
        read_only: raw & (1 << 7) != 0,
        no_exec: raw & (3 << 53) != 0,
        attr_index: u8::try_from((raw >> 2) & 7).unwrap_or(0),
        access_flag: raw & (1 << 10) != 0,
    };
    match (level, table_or_page) {
        (3, true) => leaf(1 << 12),
        (3, false) => Decoded::Invalid,
        (_, true) => Decoded::Table(raw & OA_MASK),
        // Blocks exist at levels 1 and 2 with a 4 KiB granule.
        (1 | 2, false) => leaf(1 << entry_shift(level)),
        _ => Decoded::Invalid,
    }
}

/// A translation found by a walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// First VA of the leaf.
    pub va: u64,
    /// Its output address.
    pub pa: u64,
    /// Its size.
    pub size: u64,
    /// Read-only.
    pub read_only: bool,
    /// Level it was found at.
    pub level: u8,
}

impl Leaf {
    /// The output address of `va` (inside the leaf).
    #[must_use]
    pub fn translate(&self, va: u64) -> u64 {
        self.pa + (va - self.va)
    }
}

/// Why a walk stopped without a leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkFault {
    /// An invalid descriptor at `level`.
    Translation {
        /// The level.
        level: u8,
    },
    /// A leaf without the access flag.
    AccessFlag,
    /// A table address that is not a table frame of this memory.
    BadTable {
        /// The address.
        pa: u64,
    },
}

/// Walks `mem` from the table at `table` (at `level`) for `va`, calling `on_table(level, pa)`
/// for every table it enters below the start. No caching: the uncached reference walk.
///
/// # Errors
///
/// [`WalkFault`] when no leaf translates `va`.
pub fn walk_from<M: TableMemory + ?Sized>(
    mem: &M,
    mut table: u64,
    mut level: u8,
    va: u64,
    mut on_table: impl FnMut(u8, u64),
) -> Result<Leaf, WalkFault> {
    loop {
        let (entries, _) = mem
            .frame(PhysAddr::new(table))
            .ok_or(WalkFault::BadTable { pa: table })?;
        let idx = usize::try_from((va >> entry_shift(level)) & 511).unwrap_or(0);
        let raw = entries.get(idx).map_or(0, |p| p.as_raw());
        match decode(raw, level) {
            Decoded::Invalid => return Err(WalkFault::Translation { level }),
            Decoded::Table(next) => {
                if level >= 3 {
                    return Err(WalkFault::Translation { level });
                }
                level += 1;
                table = next;
                on_table(level, table);
            }
            Decoded::Leaf {
                pa,
                size,
                read_only,
                access_flag,
                ..
            } => {
                if !access_flag {
                    return Err(WalkFault::AccessFlag);
                }
                return Ok(Leaf {
                    va: va & !(size - 1),
                    pa,
                    size,
                    read_only,
                    level,
                });
            }
        }
    }
}

/// Test-only fault switches: each breaks one rule so that one hazard check must fire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Report invalidations complete without dropping any TLB entry.
    pub skip_tlb_invalidate: bool,
    /// Drop TLB entries but keep walk-cache entries (table addresses) on invalidation.
    pub skip_walk_invalidate: bool,
    /// Allocate inside the signalling section (in the invalidation hook).
    pub alloc_in_run: bool,
    /// Let GPU accesses proceed inside a held lock region instead of stalling them (a block
    /// split then becomes visible to work in flight).
    pub ignore_lock: bool,
}

#[derive(Clone, Copy, Debug)]
struct TlbEntry {
    leaf: Leaf,
    epoch: u64,
    last_use: u64,
}

#[derive(Clone, Copy, Debug)]
struct WalkEntry {
    level: u8,
    va: u64,
    table: u64,
    gen: u32,
    epoch: u64,
    last_use: u64,
}

#[derive(Clone, Debug)]
struct Inval {
    range: Range<u64>,
    epoch: u64,
    walk: bool,
}

#[derive(Debug)]
struct VmState {
    root: u64,
    start_level: u8,
    slot: Option<usize>,
    lock: Option<LockRegion>,
    tlb: Vec<TlbEntry>,
    walk: Vec<WalkEntry>,
    /// Invalidations reported complete, newest last (bounded, allocated up front).
    log: VecDeque<Inval>,
    /// VA ranges that GPU work in flight on this VM is accessing (set between steps).
    inflight: Vec<Range<u64>>,
}

/// MMU counters.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct MmuStats {
    /// Leaf TLB hits.
    pub tlb_hits: u64,
    /// Leaf TLB misses (each a walk).
    pub tlb_misses: u64,
    /// Walks that started below the root thanks to the walk cache.
    pub walk_cache_hits: u64,
    /// Descriptor reads by walks.
    pub descriptor_reads: u64,
    /// Leaves filled into the TLB, by size: 4 KiB, 2 MiB, 1 GiB.
    pub fills_4k: u64,
    /// See `fills_4k`.
    pub fills_2m: u64,
    /// See `fills_4k`.
    pub fills_1g: u64,
    /// Invalidations requested by jobs (VM bound to a slot or not).
    pub invalidations: u64,
    /// Of which on a VM bound to an address-space slot (real hardware work).
    pub invalidations_bound: u64,
    /// Of which with the walk cache.
    pub invalidations_walk: u64,
    /// Bytes of VA invalidated (sum of ranges).
    pub invalidated_bytes: u64,
    /// TLB entries dropped by invalidations.
    pub entries_dropped: u64,
    /// Break-before-make windows (block splits).
    pub splits: u64,
    /// Lock regions taken.
    pub locks: u64,
    /// Sum of locked bytes.
    pub locked_bytes: u128,
    /// Sum of bytes the jobs needed locked.
    pub lock_needed_bytes: u128,
    /// Largest over-lock factor seen.
    pub max_over_lock: f64,
    /// Address-space slot bindings.
    pub as_binds: u64,
    /// Bindings that evicted another VM from its slot (LRU).
    pub as_evictions: u64,
    /// Signalling sections entered.
    pub sections: u64,
    /// Block splits under GPU work in flight that a lock region stalled (the work saw the
    /// update as atomic).
    pub lock_stalls: u64,
}

/// Hazards the MMU detects on its own.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct MmuHazards {
    /// A TLB entry used after an invalidation covering it was reported complete.
    pub stale_tlb: u64,
    /// A walk-cache entry (a cached table address) used after an invalidation of its range
    /// with the walk cache was reported complete.
    pub stale_walk: u64,
    /// A walk through a table frame that was freed or reused since it was cached or linked.
    pub freed_table: u64,
    /// A block split (break-before-make window) inside a range that GPU work in flight was
    /// accessing, with no lock region stalling it: the work could fault on mapped memory.
    pub split_visible: u64,
}

/// The GPU's MMU: slots, per-VM caches, counters.
#[derive(Debug)]
pub struct Gpu {
    slots: Vec<Option<(u32, u64)>>,
    vms: Vec<VmState>,
    epoch: u64,
    tick: u64,
    tlb_capacity: usize,
    walk_capacity: usize,
    /// Fault switches.
    pub faults: Faults,
    /// Counters.
    pub stats: MmuStats,
    /// Hazards.
    pub hazards: MmuHazards,
    /// The physical memory (to check table frames' ownership and generation).
    phys: Rc<RefCell<Phys>>,
}

const LOG_CAP: usize = 4096;

impl Gpu {
    /// A GPU with `slots` address-space slots.
    #[must_use]
    pub fn new(slots: usize, phys: Rc<RefCell<Phys>>) -> Self {
        Self {
            slots: vec![None; slots.max(1)],
            vms: Vec::new(),
            epoch: 0,
            tick: 0,
            tlb_capacity: 128,
            walk_capacity: 32,
            faults: Faults::default(),
            stats: MmuStats::default(),
            hazards: MmuHazards::default(),
            phys,
        }
    }

    /// Registers a VM whose root table is at `root`; returns its id.
    pub fn add_vm(&mut self, root: u64, start_level: u8) -> u32 {
        self.vms.push(VmState {
            root,
            start_level,
            slot: None,
            lock: None,
            tlb: Vec::with_capacity(self.tlb_capacity),
            walk: Vec::with_capacity(self.walk_capacity),
            log: VecDeque::with_capacity(LOG_CAP),
            inflight: Vec::new(),
        });
        u32::try_from(self.vms.len() - 1).unwrap_or(u32::MAX)
    }

    /// The slot of VM `vm`, if bound.
    #[must_use]
    pub fn slot_of(&self, vm: u32) -> Option<usize> {
        self.vms.get(vm as usize).and_then(|v| v.slot)
    }

    /// Binds `vm` to a slot (LRU eviction), as a job on it is about to run; binding flushes
    /// whatever the slot cached.
    pub fn activate(&mut self, vm: u32) {
        self.tick += 1;
        let tick = self.tick;
        let v = vm as usize;
        if let Some(s) = self.vms[v].slot {
            self.slots[s] = Some((vm, tick));
            return;
        }
        let s = match self.slots.iter().position(Option::is_none) {
            Some(s) => s,
            None => {
                let (s, _) = self
                    .slots
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, o)| o.map_or(0, |(_, t)| t))
                    .unwrap_or((0, &None));
                if let Some((old, _)) = self.slots[s] {
                    let o = &mut self.vms[old as usize];
                    o.slot = None;
                    o.tlb.clear();
                    o.walk.clear();
                    self.stats.as_evictions += 1;
                }
                s
            }
        };
        self.slots[s] = Some((vm, tick));
        let st = &mut self.vms[v];
        st.slot = Some(s);
        // AS_COMMAND_UPDATE after FLUSH_MEM: nothing cached for the new VM.
        st.tlb.clear();
        st.walk.clear();
        self.stats.as_binds += 1;
    }

    /// Whether `va` of `vm` is inside a held lock region (the access would stall).
    #[must_use]
    pub fn locked(&self, vm: u32, va: u64) -> bool {
        self.vms[vm as usize]
            .lock
            .is_some_and(|l| l.covers(va..va + 1))
    }

    /// Translates `va` of `vm` through the TLB, the walk cache and the tables in `mem`.
    ///
    /// # Errors
    ///
    /// The walk's fault.
    pub fn translate(
        &mut self,
        vm: u32,
        mem: &dyn TableMemory,
        va: u64,
    ) -> Result<Leaf, WalkFault> {
        self.activate(vm);
        self.tick += 1;
        if va >> VA_BITS != 0 {
            // Beyond the input range: the hardware faults (the table index would wrap).
            return Err(WalkFault::Translation { level: 0 });
        }
        let tick = self.tick;
        let phys = Rc::clone(&self.phys);
        let phys = phys.borrow();
        let v = &mut self.vms[vm as usize];
        if let Some(e) = v
            .tlb
            .iter_mut()
            .find(|e| va >= e.leaf.va && va - e.leaf.va < e.leaf.size)
        {
            e.last_use = tick;
            self.stats.tlb_hits += 1;
            let (lo, hi) = (e.leaf.va, e.leaf.va + e.leaf.size);
            let stale = v
                .log
                .iter()
                .rev()
                .take_while(|i| i.epoch > e.epoch)
                .any(|i| i.range.start < hi && lo < i.range.end);
            if stale {
                self.hazards.stale_tlb += 1;
            }
            return Ok(e.leaf);
        }
        self.stats.tlb_misses += 1;
        // The deepest cached table covering va.
        let (mut table, mut level) = (v.root, v.start_level);
        let mut cached_gen = None;
        if let Some(w) = v
            .walk
            .iter_mut()
            .filter(|w| (va >> entry_shift(w.level - 1)) == (w.va >> entry_shift(w.level - 1)))
            .max_by_key(|w| w.level)
        {
            w.last_use = tick;
            table = w.table;
            level = w.level;
            cached_gen = Some(w.gen);
            self.stats.walk_cache_hits += 1;
            let stale = v
                .log
                .iter()
                .rev()
                .take_while(|i| i.epoch > w.epoch)
                .filter(|i| i.walk)
                .any(|i| {
                    let span = 1u64 << entry_shift(w.level - 1);
                    let lo = w.va & !(span - 1);
                    i.range.start < lo + span && lo < i.range.end
                });
            if stale {
                self.hazards.stale_walk += 1;
            }
        }
        if let Some(gen) = cached_gen {
            let ok = matches!(phys.owner(table), Some((Owner::Table { vm: o }, g)) if o == vm && g == gen);
            if !ok {
                self.hazards.freed_table += 1;
            }
        }
        let mut entered: [(u8, u64); 4] = [(0, 0); 4];
        let mut n_entered = 0;
        let mut reads = 1u64;
        let res = walk_from(mem, table, level, va, |l, pa| {
            if n_entered < 4 {
                entered[n_entered] = (l, pa);
                n_entered += 1;
            }
            reads += 1;
        });
        self.stats.descriptor_reads += reads;
        let epoch = self.epoch;
        for &(l, pa) in &entered[..n_entered] {
            let Some((Owner::Table { vm: o }, gen)) = phys.owner(pa) else {
                self.hazards.freed_table += 1;
                continue;
            };
            if o != vm {
                self.hazards.freed_table += 1;
            }
            if v.walk.len() >= self.walk_capacity {
                if let Some(i) = (0..v.walk.len()).min_by_key(|&i| v.walk[i].last_use) {
                    v.walk.swap_remove(i);
                }
            }
            v.walk.push(WalkEntry {
                level: l,
                va: va & !((1u64 << entry_shift(l - 1)) - 1),
                table: pa,
                gen,
                epoch,
                last_use: tick,
            });
        }
        let leaf = res?;
        match leaf.size {
            0x1000 => self.stats.fills_4k += 1,
            0x20_0000 => self.stats.fills_2m += 1,
            _ => self.stats.fills_1g += 1,
        }
        if v.tlb.len() >= self.tlb_capacity {
            if let Some(i) = (0..v.tlb.len()).min_by_key(|&i| v.tlb[i].last_use) {
                v.tlb.swap_remove(i);
            }
        }
        v.tlb.push(TlbEntry {
            leaf,
            epoch,
            last_use: tick,
        });
        Ok(leaf)
    }

    /// Invalidation of `range` of `vm` (walk-cache entries too if `walk`), complete on return.
    /// Allocates nothing.
    pub fn invalidate(&mut self, vm: u32, range: Range<u64>, walk: bool) {
        if self.faults.alloc_in_run {
            let v: Vec<u64> = std::hint::black_box(Vec::with_capacity(4));
            drop(v);
        }
        self.epoch += 1;
        let epoch = self.epoch;
        let faults = self.faults;
        self.stats.invalidations += 1;
        self.stats.invalidated_bytes += range.end - range.start;
        if walk {
            self.stats.invalidations_walk += 1;
        }
        let v = &mut self.vms[vm as usize];
        v.lock = None;
        if v.slot.is_some() {
            self.stats.invalidations_bound += 1;
        }
        if !faults.skip_tlb_invalidate {
            let before = v.tlb.len();
            v.tlb
                .retain(|e| !(e.leaf.va < range.end && range.start < e.leaf.va + e.leaf.size));
            self.stats.entries_dropped += (before - v.tlb.len()) as u64;
            if walk && !faults.skip_walk_invalidate {
                v.walk.retain(|w| {
                    let span = 1u64 << entry_shift(w.level - 1);
                    !(w.va < range.end && range.start < w.va + span)
                });
            }
        }
        if v.log.len() == LOG_CAP {
            v.log.pop_front();
        }
        v.log.push_back(Inval { range, epoch, walk });
    }

    fn lock(&mut self, vm: u32, region: LockRegion, needed: u64) {
        self.stats.locks += 1;
        self.stats.locked_bytes += u128::from(region.size());
        self.stats.lock_needed_bytes += u128::from(needed);
        self.stats.max_over_lock = self.stats.max_over_lock.max(region.over_lock());
        self.vms[vm as usize].lock = Some(region);
    }

    /// Declares the VA ranges GPU work in flight on `vm` is accessing (replacing the previous
    /// set; an empty slice when the VM is idle). Called between steps, never in a run stage.
    pub fn set_inflight(&mut self, vm: u32, ranges: &[Range<u64>]) {
        if let Some(v) = self.vms.get_mut(vm as usize) {
            v.inflight.clear();
            v.inflight.extend_from_slice(ranges);
        }
    }

    fn split(&mut self, vm: u32, block: Range<u64>) {
        self.stats.splits += 1;
        // Without a lock region covering the block, the walker wants no TLB entry for it to
        // survive the break: a synchronous range invalidation.
        let locked = self.vms[vm as usize]
            .lock
            .is_some_and(|l| l.covers(block.clone()));
        // The block descriptor is cleared now. Work in flight inside the block either stalls
        // on the lock region until the job's final invalidation, or walks into the break.
        let busy = self.vms[vm as usize]
            .inflight
            .iter()
            .any(|r| r.start < block.end && block.start < r.end);
        if busy {
            if locked && !self.faults.ignore_lock {
                self.stats.lock_stalls += 1;
            } else {
                self.hazards.split_visible += 1;
            }
        }
        if !locked {
            self.invalidate(vm, block, false);
        }
    }

    /// Drops every cached entry of every VM (a GPU reset).
    pub fn flush_all(&mut self) {
        for v in &mut self.vms {
            v.tlb.clear();
            v.walk.clear();
        }
    }
}

/// A VM's handle on the shared [`Gpu`]: the `vmbind::Mmu` its `Vm` owns.
#[derive(Debug, Clone)]
pub struct MmuHandle {
    gpu: Rc<RefCell<Gpu>>,
    phys: Rc<RefCell<Phys>>,
    vm: u32,
}

impl MmuHandle {
    /// The handle of VM `vm`.
    #[must_use]
    pub fn new(gpu: Rc<RefCell<Gpu>>, phys: Rc<RefCell<Phys>>, vm: u32) -> Self {
        Self { gpu, phys, vm }
    }
}

impl TlbInvalidate for MmuHandle {
    type Error = core::convert::Infallible;

    fn invalidate(&mut self, range: Range<u64>, walk_cache: bool) -> Result<(), Self::Error> {
        self.gpu.borrow_mut().invalidate(self.vm, range, walk_cache);
        Ok(())
    }
}

impl UpdateHooks for MmuHandle {
    fn break_before_make(&mut self, block: Range<u64>) {
        self.gpu.borrow_mut().split(self.vm, block);
    }

    fn written(&mut self, frame: PhysAddr, _entries: Range<usize>) {
        self.phys.borrow_mut().mark_written(frame.as_u64());
    }
}

impl vmbind::Mmu for MmuHandle {
    fn lock(&mut self, region: LockRegion) {
        let needed = region.size() as f64 / region.over_lock();
        #[expect(
            clippy::cast_possible_truncation,
            reason = "a byte count recovered from a ratio, for the report"
        )]
        self.gpu.borrow_mut().lock(self.vm, region, needed as u64);
    }

    fn begin_signalling(&mut self) {
        self.gpu.borrow_mut().stats.sections += 1;
        crate::alloc_count::enter();
    }

    fn end_signalling(&mut self) {
        crate::alloc_count::leave();
    }
}
