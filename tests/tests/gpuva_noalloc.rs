//! Applying requests with reservations allocates nothing (issue 2, `style.md` 3.7).
//!
//! A counting `#[global_allocator]` (this test binary only) counts allocations and frees made on the
//! current thread while a guard is active. It never panics inside the allocator: it only bumps
//! thread-local counters (const-initialised, so touching them cannot allocate), and the guard
//! asserts after the region ends. `guard_detects_allocations` proves the guard sees what it must.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::thread::LocalKey;

use gpuva::{
    Apply, ApplyError, BoxNode, GpuVa, GpuVm, MapError, Mapping, NodePtr, NodeReserve, ObjId,
    OpMap, OpMapped, OpRemap, OpRemapped, OpUnmap, OpUnmapped, OpsError, RangeError, RefNode,
    RetiredList, SmVisitor, UnmapError, MAX_MAP_NODES, MAX_UNMAP_NODES,
};
use tests::harness::{LyingPool, Rng};
use tests::model::check_invariants;
use tests::sink::{FixedOps, Full};

/// Forwards to [`System`], counting calls made on this thread inside a guarded region.
struct Counting;

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static FREES: Cell<u64> = const { Cell::new(0) };
}

/// Bumps `counter` if a guard is active. `try_with`: never panic in the allocator, not even while
/// thread-local storage is being torn down.
fn note(counter: &'static LocalKey<Cell<u64>>) {
    let active = DEPTH.try_with(|d| d.get() > 0).unwrap_or(false);
    if active {
        let _ = counter.try_with(|c| c.set(c.get() + 1));
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so `System`'s
// guarantees (correct size and alignment, no unwinding) are this allocator's; the counting only
// touches const-initialised thread-locals without destructors and cannot allocate or panic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(&ALLOCS);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract (non-zero size), passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(&ALLOCS);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(&FREES);
        // SAFETY: `ptr` came from this allocator, i.e. from `System`, with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(&ALLOCS);
        // SAFETY: `ptr`/`layout` came from `System` (see `dealloc`); `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations and frees seen in a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Counts {
    allocs: u64,
    frees: u64,
}

const NONE: Counts = Counts {
    allocs: 0,
    frees: 0,
};

/// Runs `f` with counting on. `f` should borrow what it uses: values it owns are dropped inside.
fn counting<R>(f: impl FnOnce() -> R) -> (R, Counts) {
    ALLOCS.set(0);
    FREES.set(0);
    DEPTH.set(DEPTH.get() + 1);
    let r = f();
    DEPTH.set(DEPTH.get() - 1);
    let c = Counts {
        allocs: ALLOCS.get(),
        frees: FREES.get(),
    };
    (r, c)
}

/// Runs `f` and asserts it neither allocated nor freed.
#[track_caller]
fn no_alloc<R>(what: &str, f: impl FnOnce() -> R) -> R {
    let (r, c) = counting(f);
    assert_eq!(
        c, NONE,
        "{what}: allocated or freed inside the guarded region"
    );
    r
}

#[test]
fn guard_detects_allocations() {
    let (b, c) = counting(|| Box::new(5u64));
    assert_eq!(
        c,
        Counts {
            allocs: 1,
            frees: 0
        },
        "Box::new must be seen"
    );
    let ((), c) = counting(|| drop(b));
    assert_eq!(
        c,
        Counts {
            allocs: 0,
            frees: 1
        },
        "a free must be seen"
    );

    let mut v: Vec<u64> = Vec::new();
    let ((), c) = counting(|| v.push(1));
    assert_eq!(c.allocs, 1, "a growing push must be seen");
    let ((), c) = counting(|| v.extend(0..100));
    assert!(c.allocs >= 1, "a reallocating extend must be seen");
    let (s, c) = counting(|| format!("{}", v.len()));
    assert!(c.allocs >= 1 && !s.is_empty(), "format! must be seen");

    // Pushes into reserved capacity and into a fixed sink are not allocations.
    let mut v: Vec<u64> = Vec::with_capacity(16);
    let mut fixed = FixedOps::<4>::new();
    let ((), c) = counting(|| {
        v.extend(0..16);
        assert!(fixed
            .try_push(gpuva::Op::Map(Mapping::new(0, 1, None, 0)))
            .is_ok());
    });
    assert_eq!(c, NONE);

    // Nested regions and a region's failure are reported.
    let r = std::panic::catch_unwind(|| no_alloc("deliberate", || Box::new(1u8)));
    assert!(r.is_err(), "no_alloc must fail on a deliberate Box::new");
}

/// A step visitor that allocates nothing and can fail on its N-th step.
#[derive(Debug, Default)]
struct Tally {
    steps: usize,
    fail_at: Option<usize>,
    data: u64,
}

impl<P: NodePtr<u64>> SmVisitor<u64, P> for Tally {
    type Error = usize;
    fn step_map<'op>(&mut self, op: OpMap<'op, u64, P>) -> Result<OpMapped<'op>, usize> {
        self.enter()?;
        Ok(op.insert(self.data))
    }
    fn step_remap<'op>(&mut self, op: OpRemap<'op, u64, P>) -> Result<OpRemapped<'op>, usize> {
        self.enter()?;
        Ok(op.remap())
    }
    fn step_unmap<'op>(&mut self, op: OpUnmap<'op, u64, P>) -> Result<OpUnmapped<'op>, usize> {
        self.enter()?;
        Ok(op.remove())
    }
}

impl Tally {
    fn enter(&mut self) -> Result<(), usize> {
        let n = self.steps;
        self.steps += 1;
        if self.fail_at == Some(n) {
            Err(n)
        } else {
            Ok(())
        }
    }
}

const PAGE: u64 = 0x1000;
const SPACE_PAGES: u64 = 1 << 20;

type Vm = GpuVm<u64, BoxNode<u64>>;

fn random_mapping(rng: &mut Rng, max_pages: u64) -> Mapping {
    let pages = 1 + rng.below(max_pages);
    let start = rng.below(SPACE_PAGES - pages);
    let addr = PAGE + start * PAGE;
    let obj = ObjId::new(rng.below(4));
    let offset = match rng.below(3) {
        0 => addr,
        1 => rng.below(1 << 20) * PAGE,
        _ => u64::MAX - addr,
    };
    Mapping::new(addr, pages * PAGE, obj, offset)
}

fn reserve(n: usize) -> NodeReserve<BoxNode<u64>> {
    NodeReserve::try_alloc(n).expect("test allocation")
}

/// A VA space `[PAGE, PAGE + SPACE_PAGES * PAGE)` with a cut-out at its end and ~`n` mappings.
fn populated(n: usize, rng: &mut Rng) -> Vm {
    let end = PAGE + SPACE_PAGES * PAGE;
    let mut vm = Vm::new(PAGE..end + 16 * PAGE, end..end + 16 * PAGE).expect("geometry");
    let mut retired = RetiredList::new();
    while vm.len() < n {
        let m = random_mapping(rng, 8);
        vm.map(m, &mut reserve(3), &mut retired).expect("valid map");
    }
    vm
}

fn check(vm: &Vm) {
    let list: Vec<Mapping> = vm.iter().map(GpuVa::mapping).collect();
    let reserved = vm.reserved().unwrap_or(0..0);
    if let Err(e) = check_invariants(&vm.range(), &reserved, &list) {
        panic!("{e}");
    }
    assert_eq!(list.len(), vm.len());
}

/// Thousands of random requests on a tree of thousands of mappings, through every apply entry
/// point and every error path: nothing inside the run stage allocates or frees.
#[test]
fn applying_requests_allocates_nothing() {
    let mut rng = Rng::new(7);
    let mut vm = populated(5000, &mut rng);
    let mut sink = Box::new(FixedOps::<512>::new());
    for i in 0..3000u64 {
        let req = random_mapping(&mut rng, 64);
        let mut retired = RetiredList::new();
        let mut pool = reserve(MAX_MAP_NODES);
        match i % 12 {
            0 => no_alloc("sm_map", || {
                vm.sm_map(req, &mut pool, &mut retired, &mut Apply::new(i))
                    .expect("valid");
            }),
            1 => no_alloc("map", || {
                vm.map(req, &mut pool, &mut retired).expect("valid")
            }),
            2 => no_alloc("unmap", || {
                vm.unmap(req.addr, req.len, &mut pool, &mut retired)
                    .expect("valid");
            }),
            3 => no_alloc("sm_unmap", || {
                let mut t = Tally::default();
                vm.sm_unmap(req.addr, req.len, &mut pool, &mut retired, &mut t)
                    .expect("valid");
            }),
            4 | 5 => {
                let list = if i % 12 == 4 {
                    vm.sm_map_ops(req)
                } else {
                    vm.sm_unmap_ops(req.addr, req.len)
                }
                .expect("valid");
                no_alloc("apply_ops", || {
                    vm.apply_ops(&list, &mut pool, &mut retired, &mut Tally::default())
                        .expect("current list");
                });
                // Stale: the list no longer matches, detected without allocating.
                let mut pool = reserve(MAX_MAP_NODES);
                let stale = no_alloc("stale apply_ops", || {
                    vm.apply_ops(&list, &mut pool, &mut retired, &mut Tally::default())
                });
                assert!(list.is_empty() || stale == Err(ApplyError::Stale));
            }
            6 => {
                // A visitor failing halfway: error path, partial apply, no allocation.
                let mut t = Tally {
                    fail_at: Some(usize::try_from(i % 3).unwrap_or(0)),
                    ..Tally::default()
                };
                let r = no_alloc("failing visitor", || {
                    vm.sm_map(req, &mut pool, &mut retired, &mut t)
                });
                assert!(matches!(r, Ok(()) | Err(MapError::Visitor(_))), "{r:?}");
            }
            7 => {
                // A pool that lies about its size.
                let mut lying = LyingPool {
                    nodes: Vec::with_capacity(4),
                    claim: MAX_MAP_NODES,
                };
                lying.nodes.extend(pool.drain().take(1));
                let r = no_alloc("lying pool", || {
                    vm.sm_map(req, &mut lying, &mut retired, &mut Tally::default())
                });
                assert!(
                    matches!(r, Ok(()) | Err(MapError::ReservationExhausted)),
                    "{r:?}"
                );
            }
            8 => {
                // Invalid requests and short reservations.
                let mut short = reserve(1);
                no_alloc("bad input", || {
                    let bad = Mapping { len: 0, ..req };
                    let e = vm.map(bad, &mut pool, &mut retired);
                    assert_eq!(e, Err(MapError::Range(RangeError::ZeroSize)));
                    let e = vm.unmap(u64::MAX, 2, &mut pool, &mut retired);
                    assert_eq!(e, Err(UnmapError::Range(RangeError::Overflow)));
                    let e = vm.map(req, &mut short, &mut retired);
                    assert!(matches!(e, Err(MapError::ReservationTooSmall { .. })));
                    let e = vm.unmap(req.addr, req.len, &mut short, &mut retired);
                    assert!(matches!(e, Err(UnmapError::ReservationTooSmall { .. })));
                    let end = vm.range().end;
                    let e = vm.unmap(end - 17 * PAGE, 2 * PAGE, &mut pool, &mut retired);
                    assert_eq!(e, Err(UnmapError::Range(RangeError::Reserved)));
                });
            }
            9 => {
                // Recording into a fixed sink, then applying exactly that.
                let r = no_alloc("sm_map_walk into a fixed sink", || {
                    sink.clear();
                    vm.sm_map_walk(req, |op| sink.try_push(op))
                });
                let list = vm.sm_map_ops(req).expect("valid");
                match r {
                    Ok(()) => assert!(sink.iter().eq(list.iter())),
                    Err(e) => assert_eq!(e, OpsError::Sink(Full)),
                }
                let r = no_alloc("sm_unmap_walk into a fixed sink", || {
                    sink.clear();
                    vm.sm_unmap_walk(req.addr, req.len, |op| sink.try_push(op))
                });
                assert!(matches!(r, Ok(()) | Err(OpsError::Sink(Full))));
            }
            10 => {
                // Lookups.
                let n = no_alloc("lookups", || {
                    let mut n = 0usize;
                    n += usize::from(vm.lookup(req.addr).is_some());
                    n += usize::from(vm.find(req.addr, req.len).is_some());
                    n += usize::from(vm.find_prev(req.addr).is_some());
                    n += usize::from(vm.find_next(req.end()).is_some());
                    n += vm.iter_range(req.range()).count();
                    n += usize::from(vm.find_first(req.range()).is_some());
                    n += usize::from(vm.is_range_empty(req.range()));
                    n
                });
                assert!(n < 1 << 20);
            }
            _ => {
                let mut pool = reserve(MAX_UNMAP_NODES);
                no_alloc("sm_unmap, exact reservation", || {
                    vm.sm_unmap(
                        req.addr,
                        req.len,
                        &mut pool,
                        &mut retired,
                        &mut Apply::new(0),
                    )
                    .expect("valid");
                });
            }
        }
        // Cleanup stage, outside the region: free what was retired and left over.
        drop(retired);
        drop(pool);
        if i % 500 == 0 {
            check(&vm);
        }
    }
    check(&vm);
    assert!(vm.len() > 1000);
    let mut retired = RetiredList::new();
    let n = vm.len();
    no_alloc("clear", || vm.clear(&mut retired));
    assert!(vm.is_empty());
    assert_eq!(retired.len(), n);
}

/// Steady state with node recycling: reservations are refilled from retired nodes, so a long run of
/// requests (run stage and cleanup together) allocates and frees nothing at all.
#[test]
fn recycling_retired_nodes_never_allocates() {
    let mut rng = Rng::new(99);
    let mut vm = populated(3000, &mut rng);
    // A free list allocated up front: a request grows the tree by at most 2 nodes net (B3), so
    // 2 per request plus one request's worst case never runs dry. Capacity for every node.
    let mut free: Vec<BoxNode<u64>> = Vec::with_capacity(20_000);
    free.extend((0..2 * 4000 + 3).map(|_| BoxNode::try_new(0).expect("test allocation")));
    let total = free.len() + vm.len();
    let reqs: Vec<(Mapping, bool)> = (0..4000)
        .map(|_| (random_mapping(&mut rng, 32), rng.below(3) == 0))
        .collect();
    let mut retired = RetiredList::new();
    no_alloc("recycling run", || {
        for (i, (req, unmap)) in reqs.iter().enumerate() {
            let mut pool = NodeReserve::<BoxNode<u64>>::new();
            for _ in 0..MAX_MAP_NODES {
                let node = free.pop().expect("free list never runs dry");
                assert!(pool.push(node).is_ok());
            }
            let mut t = Tally {
                data: u64::try_from(i).unwrap_or(0),
                ..Tally::default()
            };
            if *unmap {
                vm.sm_unmap(req.addr, req.len, &mut pool, &mut retired, &mut t)
                    .expect("valid");
            } else {
                vm.sm_map(*req, &mut pool, &mut retired, &mut t)
                    .expect("valid");
            }
            // Cleanup by recycling: unused and retired nodes go back to the free list.
            free.extend(pool.drain());
            while let Some(removed) = retired.pop() {
                free.push(removed.into_inner());
            }
        }
    });
    check(&vm);
    // Every node is accounted for: in the tree or back on the free list.
    assert_eq!(free.len() + vm.len(), total);
}

/// Core-only storage: nodes are slots of a caller array ([`RefNode`]); requests and recycling run
/// without any allocator involvement.
#[test]
fn ref_nodes_in_a_caller_array() {
    const SLOTS: usize = 256;
    let mut slots: [GpuVa<(), RefNode<'_, ()>>; SLOTS] = std::array::from_fn(|_| GpuVa::new(()));
    let mut free: Vec<RefNode<'_, ()>> = Vec::with_capacity(SLOTS);
    free.extend(slots.iter_mut().map(RefNode::new));
    let mut vm = GpuVm::<(), RefNode<'_, ()>>::new(0..64 * PAGE, 0..0).expect("geometry");
    let mut rng = Rng::new(3);
    let reqs: Vec<(u64, u64, bool)> = (0..5000)
        .map(|_| {
            let pages = 1 + rng.below(8);
            (
                rng.below(64 - pages) * PAGE,
                pages * PAGE,
                rng.below(3) == 0,
            )
        })
        .collect();
    let mut retired = RetiredList::new();
    no_alloc("RefNode run", || {
        for &(addr, len, unmap) in &reqs {
            let mut pool = NodeReserve::<RefNode<'_, ()>>::new();
            for _ in 0..MAX_MAP_NODES {
                assert!(pool.push(free.pop().expect("enough slots")).is_ok());
            }
            if unmap {
                vm.unmap(addr, len, &mut pool, &mut retired).expect("valid");
            } else {
                let m = Mapping::new(addr, len, ObjId::new(1), addr);
                vm.map(m, &mut pool, &mut retired).expect("valid");
            }
            free.extend(pool.drain());
            while let Some(removed) = retired.pop() {
                free.push(removed.into_inner());
            }
        }
        vm.clear(&mut retired);
        while let Some(removed) = retired.pop() {
            free.push(removed.into_inner());
        }
    });
    assert!(vm.is_empty());
    assert_eq!(free.len(), SLOTS, "every slot came back");
}

/// A bucketed VA space (heap directory): requests and `rebucket` into a directory allocated
/// beforehand allocate and free nothing.
#[test]
fn bucketed_requests_and_rebucket_allocate_nothing() {
    type Dir = Box<[Option<BoxNode<u64>>]>;
    let end = PAGE + SPACE_PAGES * PAGE;
    let mut vm =
        GpuVm::<u64, BoxNode<u64>, Dir>::with_capacity(PAGE..end, 0..0, 4096).expect("geometry");
    let mut rng = Rng::new(11);
    for i in 0..4000u64 {
        let req = random_mapping(&mut rng, 16);
        let mut retired = RetiredList::new();
        let mut pool = reserve(MAX_MAP_NODES);
        no_alloc("bucketed request", || {
            if i % 4 == 3 {
                vm.unmap(req.addr, req.len, &mut pool, &mut retired)
                    .expect("valid");
            } else {
                vm.sm_map(req, &mut pool, &mut retired, &mut Apply::new(i))
                    .expect("valid");
            }
        });
        if i % 1000 == 999 {
            let dir = gpuva::alloc_buckets(vm.rebucket_advice().unwrap_or(vm.len()))
                .expect("test allocation");
            let before: Vec<(Mapping, u64)> = vm.iter().map(|v| (v.mapping(), *v.data())).collect();
            let old = no_alloc("rebucket", || vm.rebucket(dir).map_err(|_| "refused"))
                .expect("an empty directory");
            drop(old);
            let after: Vec<(Mapping, u64)> = vm.iter().map(|v| (v.mapping(), *v.data())).collect();
            assert_eq!(before, after);
        }
    }
    let list: Vec<Mapping> = vm.iter().map(GpuVa::mapping).collect();
    if let Err(e) = check_invariants(&vm.range(), &(0..0), &list) {
        panic!("{e}");
    }
    let mut retired = RetiredList::new();
    no_alloc("clear", || vm.clear(&mut retired));
    assert!(vm.is_empty());
}
