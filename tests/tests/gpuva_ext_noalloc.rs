//! The run stage of the extension requests allocates nothing and frees nothing: unmap of all
//! mappings of an object, prefetch, attribute split, merged maps and repeat maps, through `step` (with the
//! built-in and a recording visitor, a failing visitor), `apply_plan`, the refusals, links on
//! and off. The counting allocator is `gpuva_noalloc`'s (one per test binary).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::thread::LocalKey;

use gpuva::{Apply, BoxNode, GpuVm, Mapping, ObjId, Repeat, Request, SmVisitor, StepError};
use tests::harness::Rng;

type Vm = GpuVm<u64, BoxNode<u64>>;

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

/// Counts steps, fails at `fail_at` (if set), drops nothing it owns inside the region.
#[derive(Default)]
struct Tally {
    steps: usize,
    fail_at: Option<usize>,
}

impl Tally {
    fn enter(&mut self) -> Result<(), ()> {
        self.steps += 1;
        if self.fail_at == Some(self.steps - 1) {
            return Err(());
        }
        Ok(())
    }
}

impl SmVisitor<u64> for Tally {
    type Error = ();
    fn step_map<'op>(&mut self, op: gpuva::OpMap<'op, u64>) -> Result<gpuva::OpMapped<'op>, ()> {
        self.enter()?;
        Ok(op.insert(7))
    }
    fn step_remap<'op>(
        &mut self,
        op: gpuva::OpRemap<'op, u64>,
    ) -> Result<gpuva::OpRemapped<'op>, ()> {
        self.enter()?;
        Ok(op.remap())
    }
    fn step_unmap<'op>(
        &mut self,
        op: gpuva::OpUnmap<'op, u64>,
    ) -> Result<gpuva::OpUnmapped<'op>, ()> {
        self.enter()?;
        Ok(op.remove())
    }
    fn step_prefetch<'op>(
        &mut self,
        op: gpuva::OpPrefetch<'op, u64>,
    ) -> Result<gpuva::OpPrefetched<'op>, ()> {
        self.enter()?;
        Ok(op.done())
    }
}

/// Thousands of random extension requests and merged maps on a tree of thousands of mappings:
/// prepare (claims, pins, plans) outside the region, run inside it.
fn extension_run_stage_allocates_nothing(links: bool) {
    let mut rng = Rng::new(if links { 5 } else { 6 });
    let space = 1u64 << 20;
    let mut vm = Vm::new(0..space, 0..0x100)
        .expect("geometry")
        .with_merge(true);
    if !links {
        vm = vm.without_links();
    }
    let mut other = Vm::new(0..space, 0..0).expect("geometry");
    let mut foreign = other.reserve_boxed(64).expect("alloc");
    for i in 0..6000u64 {
        let addr = 0x100 + rng.below(space / 2);
        let len = 1 + rng.below(if i % 7 == 0 { 4000 } else { 64 });
        let o = ObjId::new(1 + rng.below(40)).expect("non-zero");
        let offset = if rng.below(2) == 0 { addr } else { 0 };
        let req = match i % 9 {
            0..=2 => Request::Map(Mapping::new(addr, len, Some(o), offset)),
            // Repeat maps (periods 1 to 128; merged when congruent, split by later requests).
            3 => Request::Map(
                Mapping::new(addr, len, Some(o), offset).with_repeat(Repeat::new(1 << (i % 8))),
            ),
            4 => Request::Map(Mapping::new(addr, len, None, 0)),
            5 => Request::Split { addr, len },
            6 => Request::Prefetch { addr, len },
            7 if i % 5 == 0 => Request::UnmapObject { obj: o },
            _ => Request::Unmap { addr, len },
        };
        let need = vm.nodes_for(&req);
        let mut claim = vm.reserve_boxed(need + vm.link_nodes()).expect("alloc");
        let pin = match req {
            Request::Map(m) if links => m
                .obj
                .map(|o| vm.link_obtain(o, &mut claim, || ()).expect("link")),
            _ => None,
        };
        let plan = vm.walk(req, |_| Ok::<(), ()>(())).expect("valid");
        let shape = i % 4;
        no_alloc("extension run stage", || {
            match shape {
                0 => vm.step(req, &mut claim, &mut Apply::new(i)).expect("valid"),
                1 => vm
                    .apply_plan(&plan, &mut claim, &mut Tally::default())
                    .expect("current"),
                2 => {
                    let mut t = Tally {
                        fail_at: Some(usize::try_from(i % 3).unwrap_or(0)),
                        ..Tally::default()
                    };
                    let r = vm.step(req, &mut claim, &mut t);
                    assert!(matches!(r, Ok(()) | Err(StepError::Visitor(()))), "{r:?}");
                }
                _ => {
                    // Refusals first, then the request.
                    let r = vm.step(req, &mut foreign, &mut Apply::new(i));
                    assert_eq!(r, Err(StepError::Foreign));
                    let bad = Request::Split {
                        addr: 0,
                        len: 0x200,
                    };
                    assert!(matches!(
                        vm.step(bad, &mut claim, &mut Apply::new(i)),
                        Err(StepError::Range(_))
                    ));
                    vm.step(req, &mut claim, &mut Apply::new(i)).expect("valid");
                }
            }
            vm.release(claim).expect("own claim");
            if let Some(p) = pin {
                vm.link_put(p).expect("own pin");
            }
        });
        if i % 500 == 0 {
            vm.check_invariants().expect("invariants");
        }
    }
    assert!(vm.len() > 1000, "the tree must stay large ({})", vm.len());
    other.release(foreign).expect("own");
}

#[test]
fn extension_run_stage_allocates_nothing_with_links() {
    extension_run_stage_allocates_nothing(true);
}

#[test]
fn extension_run_stage_allocates_nothing_without_links() {
    extension_run_stage_allocates_nothing(false);
}
