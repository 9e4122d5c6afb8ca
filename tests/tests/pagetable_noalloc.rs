//! The run stage of `pagetable` (map, unmap with block splits, protect, translate) never
//! allocates: checked with `tests::failalloc`'s counting allocator, installed for this test binary.
//!
//! The allocator never panics (unwinding out of an allocator is undefined behaviour): inside a
//! guarded region it only counts; the guard reports after the region ends.
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_macros,
    clippy::cast_possible_truncation,
    reason = "test code: infallible allocation and 64-bit-host casts are fine"
)]

use tests::failalloc::{with_plan, FailAlloc, Plan};

use pagetable::{
    map_bound, unmap_bound, Attrs, Chunk, Format, Granule, PageTable, PhysAddr, Reserve,
    TlbInvalidate, UpdateHooks, VecPool, VirtAddr,
};

#[global_allocator]
static GLOBAL: FailAlloc = FailAlloc;

/// Runs `f` with allocation tracking on; returns how many allocator calls (allocations and
/// frees) it made.
fn count_allocs<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let (r, report) = with_plan(Plan::Never, f);
    (r, report.allocs + report.frees)
}

/// Hooks that record into fixed storage.
struct FixedLog {
    calls: [u64; 8],
    n: usize,
    written: u64,
}

impl UpdateHooks for FixedLog {
    fn break_before_make(&mut self, block: core::ops::Range<u64>) {
        if let Some(slot) = self.calls.get_mut(self.n) {
            *slot = block.start;
            self.n += 1;
        }
    }

    fn written(&mut self, _frame: PhysAddr, entries: core::ops::Range<usize>) {
        self.written += entries.len() as u64;
    }
}

/// A TLB that records the last range into fixed storage.
struct FixedTlb(Option<(u64, u64, bool)>);

impl TlbInvalidate for FixedTlb {
    type Error = ();
    fn invalidate(&mut self, r: core::ops::Range<u64>, walk: bool) -> Result<(), ()> {
        self.0 = Some((r.start, r.end, walk));
        Ok(())
    }
}

const SZ_4K: u64 = 0x1000;
const SZ_2M: u64 = 0x20_0000;
const SZ_1G: u64 = 0x4000_0000;

#[test]
fn the_guard_catches_allocation() {
    let (_, n) = count_allocs(|| std::hint::black_box(vec![1u8; 16]));
    assert!(n > 0);
}

#[test]
fn run_stage_allocates_nothing() {
    for fmt in [
        Format::new(Granule::K4, 48).unwrap(),
        Format::new(Granule::K16, 48).unwrap(),
        Format::new(Granule::K64, 48).unwrap(),
    ] {
        let mut pool = VecPool::new(fmt.granule(), PhysAddr::new(0x8000_0000_0000)).unwrap();
        let mut pt = PageTable::try_new(fmt, &mut pool).unwrap();
        let block = fmt.largest_leaf();
        let page = fmt.page_size();
        // Blocks plus pages on both sides, and a scattered page backing.
        let big = [Chunk::new(
            PhysAddr::new(4 * block - 5 * page),
            3 * block + 5 * page,
        )];
        let scattered: Vec<Chunk> = (0..64)
            .map(|i| Chunk::new(PhysAddr::new(0x100_0000 + 3 * i * page), page))
            .collect();
        let big_va = VirtAddr::new(block - 5 * page);
        let small_va = VirtAddr::new(16 * block + 7 * page);
        let hole = VirtAddr::new(2 * block + 9 * page);

        // Prepare (may allocate): reserves from the requests alone.
        let mut reserve = Reserve::new();
        let need = map_bound(&fmt, big_va, &big).unwrap().total()
            + map_bound(&fmt, small_va, &scattered).unwrap().total()
            + unmap_bound(&fmt, hole, page).unwrap().total()
            + 2 * unmap_bound(&fmt, VirtAddr::new(block + page), block)
                .unwrap()
                .total();
        reserve.try_fill(&mut pool, need).unwrap();
        let mut log = FixedLog {
            calls: [0; 8],
            n: 0,
            written: 0,
        };
        let mut tlb = FixedTlb(None);

        // Run: map, split, protect, unmap everything, translate, invalidate.
        let (reclaim, allocs) = count_allocs(|| {
            let mut ctx = pt.update(&mut pool, &mut reserve, &mut log);
            ctx.map(big_va, &big, Attrs::default()).unwrap();
            ctx.map(small_va, &scattered, Attrs::default()).unwrap();
            ctx.unmap(hole, page).unwrap();
            let ro = Attrs {
                read_only: true,
                ..Attrs::default()
            };
            ctx.protect(VirtAddr::new(block + page), block, ro).unwrap();
            let flush = ctx.finish();
            assert!(pt
                .translate(&pool, VirtAddr::new(2 * block))
                .unwrap()
                .is_some());
            let leaves = pt
                .leaves(&pool, VirtAddr::new(0)..VirtAddr::new(32 * block))
                .count();
            assert!(leaves > 0);
            let mut all = pt
                .unmap(
                    &mut pool,
                    &mut reserve,
                    &mut log,
                    VirtAddr::new(0),
                    32 * block,
                )
                .unwrap();
            all.merge(&mut pool, flush).unwrap();
            let _ = all.lock_region();
            all.invalidate(&mut tlb).unwrap()
        });
        assert_eq!(allocs, 0, "{:?}: the run stage allocated", fmt.granule());
        assert!(log.n >= 2, "splits happened");
        assert!(log.written > 0, "writes were reported");
        assert!(tlb
            .0
            .is_some_and(|(s, e, walk)| s == 0 && e >= 32 * block && walk));
        assert_eq!(pt.audit(&pool).unwrap().table_count(), 1);

        // Cleanup (may free).
        let mut reclaim = reclaim;
        reclaim.release(&mut pool).unwrap();
        reserve.release(&mut pool).unwrap();
        assert_eq!(pool.in_use(), 1);
    }
    let _ = (SZ_4K, SZ_2M, SZ_1G);
}
