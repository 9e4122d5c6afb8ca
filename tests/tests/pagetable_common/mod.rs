//! Shared harness for the `pagetable_*` integration tests: a page table over a tracking pool, a
//! page-granular reference model, pending gathers, and an independent table walker.
#![allow(dead_code, reason = "each test binary uses a different subset")]
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_macros,
    clippy::cast_possible_truncation,
    reason = "test code: infallible allocation and 64-bit-host casts are fine"
)]

use std::collections::{BTreeMap, BTreeSet};

use pagetable::{
    map_bound, unmap_bound, Attrs, Chunk, Desc, Flush, Format, FrameAlloc, Level, MapError,
    MemType, PageTable, PhysAddr, RegionLocked, Reserve, Shareability, TableMemory, TlbInvalidate,
    UnmapError, VecPool, VirtAddr,
};

/// A TLB whose invalidations complete at once.
pub struct InstantTlb;

impl TlbInvalidate for InstantTlb {
    type Error = std::convert::Infallible;
    fn invalidate(&mut self, _: std::ops::Range<u64>, _: bool) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// Invalidates `f` and releases its frames into `pool`.
pub fn complete(f: Flush, pool: &mut VecPool) {
    f.invalidate(&mut InstantTlb)
        .unwrap()
        .release(pool)
        .unwrap();
}

pub const SZ_4K: u64 = 0x1000;
pub const SZ_2M: u64 = 0x20_0000;
pub const SZ_1G: u64 = 0x4000_0000;

/// A tiny deterministic generator, so proptest only has to shrink seeds.
#[derive(Clone, Debug)]
pub struct SeedRng(pub u64);

impl SeedRng {
    pub fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

pub fn va(x: u64) -> VirtAddr {
    VirtAddr::new(x)
}

pub fn random_attrs(rng: &mut SeedRng) -> Attrs {
    let b = rng.next();
    Attrs {
        read_only: b & 1 != 0,
        no_exec: b & 2 != 0,
        non_global: b & 4 != 0,
        mem: MemType::ALL[((b >> 3) % 3) as usize],
        share: Shareability::ALL[((b >> 5) % 3) as usize],
    }
}

/// A random backing of `len` bytes: a mix of single pages at scattered PAs and long chunks
/// aligned to the format's block size (so blocks happen where the VA allows).
pub fn random_backing(rng: &mut SeedRng, fmt: &Format, len: u64) -> Vec<Chunk> {
    let page = fmt.page_size();
    let block = fmt
        .entry_size(Level::L2)
        .min(fmt.largest_leaf().max(fmt.entry_size(Level::L2)));
    let mut out = Vec::new();
    let mut left = len;
    let contiguous_only = rng.chance(30);
    while left > 0 {
        let n = if contiguous_only {
            left
        } else if rng.chance(50) {
            page * (1 + rng.below(4))
        } else {
            block * (1 + rng.below(2))
                + if rng.chance(50) {
                    page * rng.below(8)
                } else {
                    0
                }
        }
        .min(left);
        // PA: block-aligned base plus either 0 or the VA's in-block offset pattern.
        let base = (1 + rng.below(1 << 12)) * block;
        let off = if rng.chance(60) {
            0
        } else {
            page * rng.below(block / page)
        };
        let pa = (base + off) % (1 << 46);
        let pa = pa - pa % page;
        out.push(Chunk::new(PhysAddr::new(pa.max(block)), n));
        left -= n;
    }
    out
}

/// Independent walk of the table memory: every reachable table (pa, level, entries).
pub fn reachable_tables<M: TableMemory>(
    pt: &PageTable,
    mem: &M,
) -> Vec<(PhysAddr, Level, Vec<u64>, u32)> {
    let fmt = *pt.format();
    let mut out = Vec::new();
    let mut stack = vec![(pt.root(), fmt.start_level())];
    while let Some((t, level)) = stack.pop() {
        let (e, m) = mem.frame(t).expect("reachable table resolves");
        if let Some(next) = level.next() {
            for pte in e {
                if let Desc::Table { pa } = fmt.decode(level, *pte) {
                    stack.push((pa, next));
                }
            }
        }
        out.push((t, level, e.iter().map(|p| p.as_raw()).collect(), m.live()));
    }
    out.sort_by_key(|x| x.0);
    out
}

/// The page table, its memory, the reference model and the pending (not yet invalidated)
/// gathers.
pub struct Harness {
    pub fmt: Format,
    pub pool: VecPool,
    pub pt: PageTable,
    /// page VA -> (page PA, attrs)
    pub model: BTreeMap<u64, (u64, Attrs)>,
    pub touched: BTreeSet<u64>,
    /// The current job's flush (every op's flush merged in).
    pub gather: Flush,
    pub pending: Vec<Flush>,
    /// Largest frame use seen in any single op, and the total bound reserved for it.
    pub used_total: u64,
    pub reserved_total: u64,
    /// Whether the page model is kept (off for GiB-sized tests; the audit still runs).
    pub modelled: bool,
}

impl Harness {
    pub fn new(fmt: Format) -> Self {
        let mut pool = VecPool::new(fmt.granule(), PhysAddr::new(0x8000_0000_0000)).unwrap();
        let pt = PageTable::try_new(fmt, &mut pool).unwrap();
        Self {
            fmt,
            pool,
            pt,
            model: BTreeMap::new(),
            touched: BTreeSet::new(),
            gather: Flush::default(),
            pending: Vec::new(),
            used_total: 0,
            reserved_total: 0,
            modelled: true,
        }
    }

    /// A harness without the page model: only reservations and invariants are checked.
    pub fn without_model(fmt: Format) -> Self {
        Self {
            modelled: false,
            ..Self::new(fmt)
        }
    }

    fn pages(&self, start: u64, len: u64) -> impl Iterator<Item = u64> {
        (start..start + len).step_by(self.fmt.page_size() as usize)
    }

    pub fn is_free(&self, start: u64, len: u64) -> bool {
        !self.modelled || self.model.range(start..start + len).next().is_none()
    }

    /// Maps with a reserve of exactly the bound; checks used <= bound and the model outcome.
    pub fn map(&mut self, start: u64, backing: &[Chunk], attrs: Attrs) -> Result<u64, MapError> {
        let len: u64 = backing.iter().map(|c| c.len).sum();
        let bound = map_bound(&self.fmt, va(start), backing)
            .expect("valid request")
            .total();
        let mut r = Reserve::new();
        r.try_fill(&mut self.pool, bound).unwrap();
        let free = self.is_free(start, len);
        let res = self
            .pt
            .map(
                &mut self.pool,
                &mut r,
                RegionLocked,
                va(start),
                backing,
                attrs,
            )
            .map(|f| self.gather.merge(&mut self.pool, f).unwrap());
        let used = bound - r.len() as u64;
        r.release(&mut self.pool).unwrap();
        match res {
            Ok(()) if !self.modelled => {
                self.used_total += used;
                self.reserved_total += bound;
                Ok(used)
            }
            Ok(()) => {
                assert!(free, "map succeeded over mapped pages");
                let mut v = start;
                for c in backing {
                    for off in (0..c.len).step_by(self.fmt.page_size() as usize) {
                        self.model.insert(v, (c.pa.as_u64() + off, attrs));
                        v += self.fmt.page_size();
                    }
                }
                self.touched
                    .extend((start..start + len).step_by(self.fmt.page_size() as usize));
                self.used_total += used;
                self.reserved_total += bound;
                Ok(used)
            }
            Err(MapError::AlreadyMapped { va: at }) => {
                assert!(!free, "AlreadyMapped on a free range");
                assert!(
                    self.model.contains_key(&at.as_u64()),
                    "AlreadyMapped names a mapped page"
                );
                assert_eq!(used, 0);
                Err(MapError::AlreadyMapped { va: at })
            }
            Err(e) => panic!("map {start:#x}+{len:#x}: {e}"),
        }
    }

    /// The current gather's flush range covers every modelled page in `[start, start + len)`
    /// that was mapped before the op (their translations changed), and its lock region covers
    /// everything touched.
    fn check_flush_covers(&self, before: Option<(u64, u64)>) {
        if let Some((lo, hi)) = before {
            let f = self
                .gather
                .range()
                .expect("a mapped page changed but nothing to flush");
            assert!(
                f.start <= lo && hi <= f.end,
                "flush {f:x?} misses {lo:#x}..{hi:#x}"
            );
        }
        if let Some(t) = self.gather.changed() {
            assert!(self.gather.lock_region().expect("lock region").covers(t));
        }
    }

    fn mapped_span(&self, start: u64, len: u64) -> Option<(u64, u64)> {
        let lo = *self.model.range(start..start + len).next()?.0;
        let hi = *self.model.range(start..start + len).next_back()?.0 + self.fmt.page_size();
        Some((lo, hi))
    }

    pub fn unmap(&mut self, start: u64, len: u64) -> u64 {
        let bound = unmap_bound(&self.fmt, va(start), len)
            .expect("valid request")
            .total();
        let mut r = Reserve::new();
        r.try_fill(&mut self.pool, bound).unwrap();
        let span = self.mapped_span(start, len);
        let res: Result<Flush, UnmapError> =
            self.pt
                .unmap(&mut self.pool, &mut r, RegionLocked, va(start), len);
        let f = res.unwrap_or_else(|e| panic!("unmap {start:#x}+{len:#x}: {e}"));
        self.gather.merge(&mut self.pool, f).unwrap();
        self.check_flush_covers(span);
        let used = bound - r.len() as u64;
        r.release(&mut self.pool).unwrap();
        if self.modelled {
            let gone: Vec<u64> = self
                .model
                .range(start..start + len)
                .map(|(k, _)| *k)
                .collect();
            for k in gone {
                self.model.remove(&k);
            }
            self.touched
                .extend(self.pages(start, len).collect::<Vec<_>>());
        }
        self.used_total += used;
        self.reserved_total += bound;
        used
    }

    pub fn protect(&mut self, start: u64, len: u64, attrs: Attrs) -> u64 {
        let bound = unmap_bound(&self.fmt, va(start), len)
            .expect("valid request")
            .total();
        let mut r = Reserve::new();
        r.try_fill(&mut self.pool, bound).unwrap();
        let span = self.mapped_span(start, len);
        let f = self
            .pt
            .protect(&mut self.pool, &mut r, RegionLocked, va(start), len, attrs)
            .unwrap_or_else(|e| panic!("protect {start:#x}+{len:#x}: {e}"));
        self.gather.merge(&mut self.pool, f).unwrap();
        self.check_flush_covers(span);
        let used = bound - r.len() as u64;
        r.release(&mut self.pool).unwrap();
        if self.modelled {
            for (_, v) in self.model.range_mut(start..start + len) {
                v.1 = attrs;
            }
            self.touched
                .extend(self.pages(start, len).collect::<Vec<_>>());
        }
        used
    }

    /// Ends the current job: its gather becomes pending (invalidation in flight).
    pub fn end_job(&mut self) {
        let g = std::mem::take(&mut self.gather);
        self.pending.push(g);
    }

    /// Confirms the oldest pending invalidation; its frames go back to the pool.
    pub fn complete_oldest(&mut self) {
        if !self.pending.is_empty() {
            let g = self.pending.remove(0);
            complete(g, &mut self.pool);
        }
    }

    pub fn complete_all(&mut self) {
        self.end_job();
        while !self.pending.is_empty() {
            self.complete_oldest();
        }
    }

    /// Every touched page translates as the model says; invariants hold; no reachable table is
    /// waiting on a pending or current gather.
    pub fn check(&self) {
        for &p in &self.touched {
            let got = self
                .pt
                .translate(&self.pool, va(p))
                .unwrap()
                .map(|t| (t.pa.as_u64(), t.attrs));
            assert_eq!(got, self.model.get(&p).copied(), "page {p:#x}");
        }
        self.pt.audit(&self.pool).unwrap();
        for (t, _, _, _) in reachable_tables(&self.pt, &self.pool) {
            for g in self.pending.iter().chain(std::iter::once(&self.gather)) {
                assert!(
                    !g.is_retired(&self.pool, t),
                    "table {t:?} in use while retired"
                );
            }
        }
    }

    /// Frames held by the pool's users: reachable tables plus retired ones.
    pub fn frames_accounted(&self) -> usize {
        reachable_tables(&self.pt, &self.pool).len()
            + self.pending.iter().map(Flush::retired_len).sum::<usize>()
            + self.gather.retired_len()
    }

    pub fn alloc_frame(&mut self) -> PhysAddr {
        self.pool.alloc_frame().unwrap()
    }
}
