//! The body of the `pagetable_ops` fuzz target, shared with the corpus replay test
//! (`tests/tests/pagetable_corpus.rs`); the `fuzz/` crate includes this file by path, so the
//! fuzzer and `cargo test` run the very same code.
//!
//! Each input is a sequence of map / unmap / protect requests with arbitrary backings (scattered
//! pages, block-contiguous chunks, misaligned and out-of-range requests) on one of four formats,
//! checked after every request against a page-granular model (the frame accounting, which
//! audits every table, after every [`FULL_EVERY`]-th request and at the end):
//! * every page of the request translates as the model says; the table invariants hold
//!   ([`PageTable::audit`]);
//! * a valid request is never refused for want of frames when its reserve is its bound
//!   (sufficiency), and uses at most that bound; a refused request changes nothing;
//! * every translation it changed lies inside its [`lock_range`];
//! * every frame of the pool is either live (a reachable table), reserved, retired (waiting on
//!   a pending flush) or free.
//!
//! At the end everything is unmapped and every flush completed: only the root remains in use.
//!
//! Input format (stable, hand-written, so committed corpus files keep their meaning): byte 0
//! selects the format; then every [`REQ_SIZE`] bytes are one request:
//! `[kind, start_lo, start_hi, len, backing, pa, attrs, extra]`; a trailing partial request is
//! ignored, and at most [`MAX_REQUESTS`] are run.

use pagetable::{
    lock_range, map_bound, unmap_bound, Attrs, Chunk, Flush, Format, Granule, JobOp, Level,
    MapError, MemType, PageTable, PhysAddr, RangeError, RegionLocked, Reserve, Shareability,
    TlbInvalidate, VecPool, VirtAddr,
};

/// Bytes per request.
pub const REQ_SIZE: usize = 8;

/// Requests run per input at most (keeps every input fast).
pub const MAX_REQUESTS: usize = 48;

/// The full frame accounting (an audit of every table) runs after every `FULL_EVERY`-th
/// request and at the end; the request's own pages are checked after every request.
pub const FULL_EVERY: u64 = 16;

/// Pages of the VA window the requests play in (per format).
const WINDOW_PAGES: u64 = 2048;

struct InstantTlb;

impl TlbInvalidate for InstantTlb {
    type Error = std::convert::Infallible;
    fn invalidate(&mut self, _: std::ops::Range<u64>, _: bool) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// The format for selector byte `g`, and the base of the VA window (straddling a boundary of
/// the level above the largest block, so splits and table creation cross tables).
fn format(g: u8) -> (Format, u64) {
    let (f, base) = match g % 4 {
        0 => (Format::panthor(48), (1 << 30) - (1 << 22)),
        1 => (Format::new(Granule::K4, 39), (1 << 30) - (1 << 22)),
        2 => (Format::new(Granule::K16, 48), (64 << 30) - (16 << 20)),
        _ => (Format::new(Granule::K64, 48), (4 << 40) - (64 << 20)),
    };
    let f = f.and_then(|f| {
        if g & 4 != 0 {
            f.with_oa_bits(40)
        } else {
            Ok(f)
        }
    });
    match f {
        Ok(f) => (f, base),
        // Every selector names a valid format; fall back rather than panic on a typo.
        Err(_) => (
            Format::new(Granule::K4, 48).unwrap_or_else(|_| unreachable!()),
            0,
        ),
    }
}

fn attrs(b: u8) -> Attrs {
    Attrs {
        read_only: b & 1 != 0,
        no_exec: b & 2 != 0,
        non_global: b & 4 != 0,
        mem: MemType::ALL[usize::from(b >> 3) % 3],
        share: Shareability::ALL[usize::from(b >> 5) % 3],
    }
}

/// The model: what each page of the VA window translates to, `(page PA, attrs)`, dense (one slot
/// per page of the window).
struct PageModel {
    base: u64,
    page: u64,
    slots: Vec<Option<(u64, Attrs)>>,
    mapped: usize,
}

impl PageModel {
    fn new(base: u64, page: u64) -> Self {
        Self {
            base,
            page,
            slots: vec![None; usize::try_from(WINDOW_PAGES).expect("window fits")],
            mapped: 0,
        }
    }

    /// The slots of the pages whose VA lies in `r`.
    fn slots_in(&self, r: &std::ops::Range<u64>) -> std::ops::Range<usize> {
        let n = self.slots.len();
        let idx = |a: u64| {
            let i = a.saturating_sub(self.base).div_ceil(self.page);
            usize::try_from(i).map_or(n, |i| i.min(n))
        };
        let lo = idx(r.start);
        lo..idx(r.end).max(lo)
    }

    /// The mapped pages with a VA in `r`, ascending: `(va, (pa, attrs))`.
    fn range(&self, r: std::ops::Range<u64>) -> impl Iterator<Item = (u64, (u64, Attrs))> + '_ {
        let s = self.slots_in(&r);
        let first = u64::try_from(s.start).expect("a slot index fits in u64");
        self.slots[s]
            .iter()
            .zip(first..)
            .filter_map(|(v, i)| Some((self.base + i * self.page, (*v)?)))
    }

    fn contains(&self, va: u64) -> bool {
        self.range(va..va + 1).next().is_some_and(|(k, _)| k == va)
    }

    /// Maps the page at `va` (inside the window).
    fn insert(&mut self, va: u64, v: (u64, Attrs)) {
        let i = self.slots_in(&(va..va + 1)).start;
        let slot = self.slots.get_mut(i).expect("page inside the window");
        self.mapped += usize::from(slot.is_none());
        *slot = Some(v);
    }

    /// Replaces every mapped page with a VA in `r` by `f` of it.
    fn update(
        &mut self,
        r: std::ops::Range<u64>,
        f: impl Fn((u64, Attrs)) -> Option<(u64, Attrs)>,
    ) {
        let s = self.slots_in(&r);
        for slot in &mut self.slots[s] {
            if let Some(v) = *slot {
                *slot = f(v);
                self.mapped -= usize::from(slot.is_none());
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.mapped == 0
    }
}

struct State {
    fmt: Format,
    base: u64,
    pool: VecPool,
    pt: PageTable,
    /// page VA -> (page PA, attrs)
    model: PageModel,
    /// The current job's flush, and jobs whose invalidation is in flight.
    flush: Flush,
    pending: Vec<Flush>,
    /// Requests run so far.
    requests: u64,
}

impl State {
    fn new(g: u8) -> Self {
        let (fmt, base) = format(g);
        let mut pool =
            VecPool::new(fmt.granule(), PhysAddr::new(0x80_0000_0000)).expect("pool base aligned");
        let pt = PageTable::try_new(fmt, &mut pool).expect("root frame");
        Self {
            fmt,
            base,
            pool,
            pt,
            model: PageModel::new(base, fmt.page_size()),
            flush: Flush::default(),
            pending: Vec::new(),
            requests: 0,
        }
    }

    fn page(&self) -> u64 {
        self.fmt.page_size()
    }

    fn retired(&self) -> usize {
        self.flush.retired_len() + self.pending.iter().map(Flush::retired_len).sum::<usize>()
    }

    /// Every frame is live, reserved, retired or free.
    fn check_frames(&self, reserved: usize) {
        let live = self
            .pt
            .audit(&self.pool)
            .expect("table invariants")
            .table_count();
        assert_eq!(
            self.pool.in_use(),
            live + reserved + self.retired(),
            "frames in use = live + reserved + retired"
        );
        assert!(self.pool.in_use() <= self.pool.created());
    }

    /// Every page of `[start, start + len)` translates as the model says: the leaves there are
    /// decoded by one descent (not a walk per page) and compared page by page with the model,
    /// without building either side. Returns the number of tables the descent went through
    /// (every table whose span overlaps the range).
    fn check_pages(&self, start: u64, len: u64) -> usize {
        let page = self.page();
        let r = start..start + len;
        let lo = start - (start - self.base) % page;
        let mut want = self.model.range(lo..r.end);
        let (leaves, tables) = descent(&self.fmt, &self.pool, self.pt.root(), &r);
        for (va, size, pa, attrs) in leaves {
            let from = va.max(r.start);
            let to = (va + size).min(r.end);
            let mut p = from - (from - va) % page;
            while p < to {
                let got = (p, (pa + (p - va), attrs));
                let w = want.next();
                assert_eq!(Some(got), w, "pages of {start:#x}+{len:#x}");
                p += page;
            }
        }
        let extra = want.next();
        assert_eq!(
            extra, None,
            "pages of {start:#x}+{len:#x}: unmapped in the table"
        );
        tables
    }

    /// The tables a descent over `[start, start + len)` goes through.
    fn tables_in(&self, start: u64, len: u64) -> usize {
        tables_over(&self.fmt, &self.pool, self.pt.root(), &(start..start + len))
    }

    /// Frames held outside the tables: `reserved` in the request's reserve, and the retired ones.
    fn held(&self, reserved: usize) -> usize {
        reserved + self.retired()
    }

    /// The per-request frame accounting, proportional to the request: a request moves frames
    /// only between its reserve, the tables overlapping its range and the retired lists, so
    /// `tables + held` over the range is what it was before (`before`, from [`State::tables_in`]
    /// and [`State::held`]).
    fn check_moved(&self, before: usize, tables: usize, reserved: usize, what: &str) {
        assert_eq!(
            tables + self.held(reserved),
            before,
            "{what}: frames between reserve, tables in range and retired lists"
        );
    }

    /// Whether the full frame accounting is due (see [`FULL_EVERY`]).
    fn full_due(&self) -> bool {
        self.requests.is_multiple_of(FULL_EVERY)
    }

    fn absorb(&mut self, f: Flush) {
        self.flush.merge(&mut self.pool, f).expect("own frames");
    }

    fn complete(&mut self, f: Flush) {
        f.invalidate(&mut InstantTlb)
            .unwrap_or_else(|e| match e.error {})
            .release(&mut self.pool)
            .expect("own frames");
    }

    /// A backing of `len` bytes from two selector bytes.
    fn backing(&self, len: u64, sel: u8, pa: u8) -> Vec<Chunk> {
        let page = self.page();
        let block = self.fmt.largest_leaf().min(self.fmt.entry_size(Level::L2));
        let limit = self.fmt.oa_limit();
        let base = (u64::from(pa) + 1) * block;
        match sel % 4 {
            // One contiguous chunk, block-aligned PA (blocks where the VA allows).
            0 => vec![Chunk::new(PhysAddr::new(base), len)],
            // One chunk at a PA offset by a few pages (pages only).
            1 => vec![Chunk::new(
                PhysAddr::new(base + page * u64::from(sel >> 2)),
                len,
            )],
            // Scattered pages.
            2 => (0..len / page)
                .map(|i| Chunk::new(PhysAddr::new(base + 3 * i * page), page))
                .collect(),
            // Ending beyond the PA width (refused), or a zero-length chunk (refused).
            _ if sel & 4 != 0 => vec![Chunk::new(PhysAddr::new(limit - page), len + page)],
            _ => vec![
                Chunk::new(PhysAddr::new(base), len),
                Chunk::new(PhysAddr::new(base), 0),
            ],
        }
    }

    fn run(&mut self, r: &[u8; REQ_SIZE]) {
        self.requests += 1;
        let page = self.page();
        let start_page = u64::from(u16::from_le_bytes([r[1], r[2]])) % WINDOW_PAGES;
        let len_pages = match r[3] >> 6 {
            0 => u64::from(r[3] & 0x3F) + 1,
            1 => (u64::from(r[3] & 0x3F) + 1) * 8,
            _ => (u64::from(r[3] & 0x3F) + 1) * 32,
        }
        .min(WINDOW_PAGES - start_page);
        let mut start = self.base + start_page * page;
        let len = len_pages * page;
        let misaligned = r[7] & 0x80 != 0 && r[0] % 8 == 7;
        if misaligned {
            start += page / 2;
        }
        match r[0] % 8 {
            0..=2 | 7 => self.map(start, len, r),
            3 | 4 => self.range(start, len, None),
            5 => self.range(start, len, Some(attrs(r[6]))),
            _ => {
                // End the job; every other time, complete the oldest invalidation.
                let f = std::mem::take(&mut self.flush);
                self.pending.push(f);
                if r[7] & 1 != 0 && !self.pending.is_empty() {
                    let f = self.pending.remove(0);
                    self.complete(f);
                }
            }
        }
    }

    fn map(&mut self, start: u64, len: u64, r: &[u8; REQ_SIZE]) {
        let backing = self.backing(len, r[4], r[5]);
        let a = attrs(r[6]);
        let op = JobOp::Map {
            va: VirtAddr::new(start),
            backing: &backing,
        };
        let bound = map_bound(&self.fmt, VirtAddr::new(start), &backing);
        let lock = lock_range(&self.fmt, &op);
        let Ok(bound) = bound else {
            // Invalid: the map refuses it too, and changes nothing.
            assert!(lock.is_err(), "bound and lock range agree on validity");
            let mut reserve = Reserve::new();
            let before = self.pool.in_use();
            let res = self.pt.map(
                &mut self.pool,
                &mut reserve,
                RegionLocked,
                VirtAddr::new(start),
                &backing,
                a,
            );
            assert!(
                matches!(
                    res,
                    Err(MapError::Misaligned { .. }
                        | MapError::BadChunk { .. }
                        | MapError::PaOutOfRange { .. }
                        | MapError::OutOfRange)
                ),
                "{res:?}"
            );
            assert_eq!(self.pool.in_use(), before);
            return;
        };
        let lock = lock.expect("valid request");
        let mut reserve = Reserve::new();
        reserve
            .try_fill(&mut self.pool, bound.total())
            .expect("host memory");
        let free = self.model.range(start..start + len).next().is_none();
        let frames0 = self.tables_in(start, len) + self.held(reserve.len());
        let res = self.pt.map(
            &mut self.pool,
            &mut reserve,
            RegionLocked,
            VirtAddr::new(start),
            &backing,
            a,
        );
        match res {
            Ok(f) => {
                assert!(free, "map over mapped pages succeeded");
                if let Some(c) = f.changed() {
                    assert!(
                        lock.start <= c.start && c.end <= lock.end,
                        "map changed {c:x?} outside {lock:x?}"
                    );
                }
                assert!(
                    f.range().is_none() && f.retired_len() == 0,
                    "a map invalidates and retires nothing"
                );
                self.absorb(f);
                let mut v = start;
                for c in &backing {
                    for off in (0..c.len).step_by(usize::try_from(self.page()).unwrap_or(4096)) {
                        self.model.insert(v, (c.pa.as_u64() + off, a));
                        v += self.page();
                    }
                }
            }
            Err(MapError::AlreadyMapped { va }) => {
                assert!(!free, "AlreadyMapped on a free range");
                assert!(
                    self.model.contains(va.as_u64()),
                    "AlreadyMapped names a mapped page"
                );
                assert_eq!(
                    reserve.len() as u64,
                    bound.total(),
                    "a refused map used no frame"
                );
            }
            Err(e) => panic!("valid map {start:#x}+{len:#x} refused: {e}"),
        }
        let tables = self.check_pages(start, len);
        self.check_moved(frames0, tables, reserve.len(), "map");
        if self.full_due() {
            self.check_frames(reserve.len());
        }
        reserve.release(&mut self.pool).expect("own frames");
    }

    fn range(&mut self, start: u64, len: u64, prot: Option<Attrs>) {
        let Ok(bound) = unmap_bound(&self.fmt, VirtAddr::new(start), len) else {
            return;
        };
        let op = match prot {
            None => JobOp::Unmap {
                va: VirtAddr::new(start),
                len,
            },
            Some(_) => JobOp::Protect {
                va: VirtAddr::new(start),
                len,
            },
        };
        let lock = lock_range(&self.fmt, &op).expect("valid request");
        let mut reserve = Reserve::new();
        reserve
            .try_fill(&mut self.pool, bound.total())
            .expect("host memory");
        let frames0 = self.tables_in(start, len) + self.held(reserve.len());
        let res: Result<Flush, RangeError> = match prot {
            None => self.pt.unmap(
                &mut self.pool,
                &mut reserve,
                RegionLocked,
                VirtAddr::new(start),
                len,
            ),
            Some(a) => self.pt.protect(
                &mut self.pool,
                &mut reserve,
                RegionLocked,
                VirtAddr::new(start),
                len,
                a,
            ),
        };
        let f = res.unwrap_or_else(|e| panic!("valid range op {start:#x}+{len:#x} refused: {e}"));
        let had = self.model.range(start..start + len).next().map(|(k, _)| k);
        if let Some(c) = f.changed() {
            assert!(
                lock.start <= c.start && c.end <= lock.end,
                "changed {c:x?} outside {lock:x?}"
            );
        }
        if let Some(p) = had {
            let r = f
                .range()
                .expect("a mapped page changed: something to invalidate");
            assert!(r.start <= p && p < r.end, "flush misses page {p:#x}");
        }
        self.absorb(f);
        match prot {
            None => {
                self.model.update(start..start + len, |_| None);
            }
            Some(a) => self
                .model
                .update(start..start + len, |(pa, _)| Some((pa, a))),
        }
        let tables = self.check_pages(start, len);
        self.check_moved(frames0, tables, reserve.len(), "unmap/protect");
        if self.full_due() {
            self.check_frames(reserve.len());
        }
        reserve.release(&mut self.pool).expect("own frames");
    }

    fn finish(mut self) {
        self.check_frames(0);
        let (base, span) = (self.base, WINDOW_PAGES * self.page());
        self.range(base, span, None);
        assert!(self.model.is_empty());
        let f = std::mem::take(&mut self.flush);
        self.pending.push(f);
        for f in std::mem::take(&mut self.pending) {
            self.complete(f);
        }
        assert_eq!(
            self.pt.audit(&self.pool).expect("invariants").table_count(),
            1
        );
        assert_eq!(self.pool.in_use(), 1, "only the root remains");
    }
}

/// The valid leaves of the tables under `root` that overlap `range`, in VA order, as
/// `(va, size, pa, attrs)`: one descent that visits only the entries overlapping `range` (for
/// any granule and start level), instead of a walk from the root per page.
///
/// # Panics
///
/// If a table frame does not resolve or holds a descriptor the format never writes.
#[must_use]
pub fn leaves(
    fmt: &Format,
    mem: &VecPool,
    root: PhysAddr,
    range: &std::ops::Range<u64>,
) -> Vec<(u64, u64, u64, Attrs)> {
    descent(fmt, mem, root, range).0
}

/// [`leaves`], and the number of tables the descent went through (the root and every table
/// whose span overlaps `range`).
///
/// # Panics
///
/// As [`leaves`].
#[must_use]
pub fn descent(
    fmt: &Format,
    mem: &VecPool,
    root: PhysAddr,
    range: &std::ops::Range<u64>,
) -> (Vec<(u64, u64, u64, Attrs)>, usize) {
    let mut out = Vec::new();
    let mut tables = 0;
    let top = fmt.start_level();
    descend(fmt, mem, root, top, 0, range, Some(&mut out), &mut tables);
    (out, tables)
}

/// The number of tables [`descent`] goes through, without decoding the last level's entries.
///
/// # Panics
///
/// As [`leaves`].
#[must_use]
pub fn tables_over(
    fmt: &Format,
    mem: &VecPool,
    root: PhysAddr,
    range: &std::ops::Range<u64>,
) -> usize {
    let mut tables = 0;
    descend(
        fmt,
        mem,
        root,
        fmt.start_level(),
        0,
        range,
        None,
        &mut tables,
    );
    tables
}

#[expect(
    clippy::too_many_arguments,
    reason = "the recursion's state, one call site"
)]
fn descend(
    fmt: &Format,
    mem: &VecPool,
    table: PhysAddr,
    level: Level,
    base: u64,
    r: &std::ops::Range<u64>,
    mut out: Option<&mut Vec<(u64, u64, u64, Attrs)>>,
    tables: &mut usize,
) {
    use pagetable::Desc;
    *tables += 1;
    if out.is_none() && level == Level::L3 {
        // Counting tables only: the last level has none below it.
        return;
    }
    let size = fmt.entry_size(level);
    let (va0, ents) = crate::leaf_runs::entries_over(fmt, mem, table, level, base, r);
    for (k, &pte) in ents.iter().enumerate() {
        let va = va0 + k as u64 * size;
        if !pte.is_valid() {
            continue;
        }
        match fmt.decode(level, pte) {
            Desc::Invalid => {}
            Desc::Table { pa } => {
                let next = match level {
                    Level::L0 => Level::L1,
                    Level::L1 => Level::L2,
                    _ => Level::L3,
                };
                descend(fmt, mem, pa, next, va, r, out.as_deref_mut(), tables);
            }
            Desc::Leaf { pa, attrs, size } => {
                if let Some(out) = out.as_deref_mut() {
                    out.push((va, size, pa.as_u64(), attrs));
                }
            }
            Desc::Reserved => panic!("a descriptor the format never writes at {va:#x}"),
        }
    }
}

/// Runs one fuzz input; panics on any violated invariant, never on a bad request.
pub fn run(data: &[u8]) {
    let Some((&g, rest)) = data.split_first() else {
        return;
    };
    let mut s = State::new(g);
    for chunk in rest.chunks_exact(REQ_SIZE).take(MAX_REQUESTS) {
        let mut r = [0u8; REQ_SIZE];
        r.copy_from_slice(chunk);
        s.run(&r);
    }
    s.finish();
}

/// Named seed inputs for the committed corpus: each exercises one shape (block splits at both
/// ends, 1 GiB-window crossings, scattered backings, refused requests, pending invalidations).
#[must_use]
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    // req(kind, start page, len byte, backing sel, pa sel, attrs, extra)
    let req = |kind: u8, start: u16, len: u8, sel: u8, pa: u8, at: u8, extra: u8| -> [u8; 8] {
        let [lo, hi] = start.to_le_bytes();
        [kind, lo, hi, len, sel, pa, at, extra]
    };
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, g: u8, reqs: &[[u8; 8]]| {
        let mut v = vec![g];
        for r in reqs {
            v.extend_from_slice(r);
        }
        out.push((name.to_string(), v));
    };
    for g in 0..8u8 {
        let fmt = ["p48", "k4_39", "k16", "k64"][usize::from(g % 4)];
        let oa = if g & 4 != 0 { "_oa40" } else { "" };
        // Map a long contiguous chunk (blocks), punch holes at both ends, protect across.
        add(
            &format!("split_both_ends_{fmt}{oa}"),
            g,
            &[
                req(0, 0, 0xFF, 0, 3, 0, 0),
                req(3, 7, 0x02, 0, 0, 0, 0),
                req(3, 1500, 0x05, 0, 0, 0, 0),
                req(5, 5, 0xBF, 0, 0, 0x03, 0),
                req(6, 0, 0, 0, 0, 0, 1),
            ],
        );
        // Scattered pages across the window's table boundary, then a queued unmap and remap.
        add(
            &format!("scattered_cross_{fmt}{oa}"),
            g,
            &[
                req(1, 1000, 0x9F, 2, 9, 0x10, 0),
                req(6, 0, 0, 0, 0, 0, 0),
                req(4, 990, 0xBF, 0, 0, 0, 0),
                req(2, 1000, 0x9F, 1, 4, 0x21, 0),
                req(6, 0, 0, 0, 0, 0, 1),
                req(3, 0, 0xFF, 0, 0, 0, 0),
            ],
        );
        // Refused requests: over a mapping, beyond the PA width, zero-length chunk, misaligned.
        add(
            &format!("refused_{fmt}{oa}"),
            g,
            &[
                req(0, 100, 0x48, 0, 1, 0, 0),
                req(1, 110, 0x04, 0, 2, 0, 0),
                req(2, 300, 0x04, 7, 0, 0, 0),
                req(0, 400, 0x04, 3, 0, 0, 0),
                req(7, 500, 0x04, 0, 0, 0, 0x80),
                req(5, 90, 0x50, 0, 0, 0x07, 0),
            ],
        );
    }
    add("degenerate_empty", 0, &[]);
    add(
        "degenerate_flushes_only",
        1,
        &[req(6, 0, 0, 0, 0, 0, 0), req(6, 0, 0, 0, 0, 0, 1)],
    );
    out
}
