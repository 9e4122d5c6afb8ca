//! Allocation properties of the pipeline, under a counting and failing global allocator (this
//! test binary only):
//!
//! * `run` (and `abort`, `defer`) allocate and free nothing, on every random job;
//! * every rejected prepare (bad input, or the k-th allocation failing, for every k prepare
//!   reaches) leaves the VM, the tables, the frame pool, the spare nodes, the object references
//!   and every counter exactly as they were, and leaks nothing.
//!
//! The allocator never panics: it bumps const-initialised thread-locals, and the tests assert
//! afterwards. The signalling section is seen through the test MMU's begin/end hooks.
#![cfg(feature = "alloc")]
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_macros,
    clippy::cast_possible_truncation
)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;

use common::*;
use gpuva::ObjId;
use vmbind::{BindJob, BindOp, JobError, MapFlags, OpError, PrepareError};

struct Counting;

thread_local! {
    static SECTION: Cell<u32> = const { Cell::new(0) };
    static IN_SECTION: Cell<u64> = const { Cell::new(0) };
    /// Allocations until one fails (0: never).
    static FAIL_IN: Cell<u64> = const { Cell::new(0) };
    static SEEN: Cell<u64> = const { Cell::new(0) };
    static NET: Cell<i64> = const { Cell::new(0) };
}

/// Whether this allocation should fail; counts it.
fn on_alloc(size: usize) -> bool {
    let _ = SEEN.try_with(|c| c.set(c.get() + 1));
    if SECTION.try_with(|d| d.get() > 0).unwrap_or(false) {
        let _ = IN_SECTION.try_with(|c| c.set(c.get() + 1));
    }
    let fail = FAIL_IN
        .try_with(|f| match f.get() {
            0 => false,
            1 => {
                f.set(0);
                true
            }
            n => {
                f.set(n - 1);
                false
            }
        })
        .unwrap_or(false);
    if !fail {
        let _ = NET.try_with(|n| n.set(n.get() + size as i64));
    }
    fail
}

fn on_free(size: usize) {
    if SECTION.try_with(|d| d.get() > 0).unwrap_or(false) {
        let _ = IN_SECTION.try_with(|c| c.set(c.get() + 1));
    }
    let _ = NET.try_with(|n| n.set(n.get() - size as i64));
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged (or returns
// null, which `GlobalAlloc` allows to signal failure); the bookkeeping only touches
// const-initialised thread-locals without destructors and cannot allocate or panic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if on_alloc(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if on_alloc(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        on_free(layout.size());
        // SAFETY: `ptr` came from this allocator, i.e. from `System`, with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if on_alloc(new_size) {
            return std::ptr::null_mut();
        }
        on_free(layout.size());
        // SAFETY: `ptr`/`layout` came from `System` (see `dealloc`); `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn begin() {
    SECTION.with(|d| d.set(d.get() + 1));
}

fn end() {
    SECTION.with(|d| d.set(d.get() - 1));
}

fn guarded_vm() -> TestVm {
    let mut vm = new_vm();
    vm.mmu_mut().on_begin = begin;
    vm.mmu_mut().on_end = end;
    vm
}

fn in_section() -> u64 {
    IN_SECTION.with(Cell::get)
}

#[test]
fn guard_sees_allocations() {
    let before = in_section();
    begin();
    let v: Vec<u8> = Vec::with_capacity(16);
    drop(v);
    end();
    assert_eq!(in_section() - before, 2, "one allocation and one free seen");
}

#[test]
fn run_allocates_nothing() {
    let mut reg = Registry::new();
    let mut vm = guarded_vm();
    let mut rng = Rng(0xA110C);
    let mut runs = 0;
    for i in 0..400 {
        let ops = random_job(&mut rng, 8);
        let job = vm.prepare(&mut reg, &BindJob::new(&ops)).unwrap();
        let before = in_section();
        let done = if i % 10 == 9 {
            vm.abort(job, JobError::Timeout).unwrap()
        } else {
            vm.run(job).unwrap()
        };
        assert_eq!(in_section(), before, "run/abort allocated or freed");
        runs += 1;
        // defer is called from the worker too: no allocation either.
        begin();
        vm.defer(done);
        end();
        assert_eq!(in_section(), before, "defer allocated or freed");
    }
    assert_eq!(vm.mmu().runs, runs);
}

/// Everything a failed prepare must leave alone.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    tree: BTreeMap<u64, (u64, u64, u32)>,
    tables: BTreeMap<u64, PtPage>,
    table_count: usize,
    frames_in_use: usize,
    frames_in_flight: u64,
    spare_nodes: usize,
    claimed_nodes: usize,
    links: Vec<(u64, u64, u32)>,
    live_refs: i64,
    invalidations: usize,
    deferred: usize,
}

fn snapshot(vm: &TestVm, reg: &Registry) -> Snapshot {
    Snapshot {
        tree: tree_pages(vm),
        tables: decode_tables(vm),
        table_count: vm.page_table().audit(vm.memory()).unwrap().table_count(),
        frames_in_use: vm.memory().in_use(),
        frames_in_flight: vm.frames_in_flight(),
        spare_nodes: vm.va_space().spare_nodes(),
        claimed_nodes: vm.va_space().claimed_nodes(),
        links: vm
            .va_space()
            .links()
            .map(|l| (l.obj().get(), l.mappings(), l.pins()))
            .collect(),
        live_refs: reg.live.get(),
        invalidations: vm.mmu().invalidations.len(),
        deferred: vm.deferred(),
    }
}

/// A VM with some state, every cleanup done.
fn populated(reg: &mut Registry, seed: u64) -> (TestVm, Model) {
    let mut vm = guarded_vm();
    let mut model = Model::default();
    let mut rng = Rng(seed);
    for _ in 0..6 {
        let ops = random_job(&mut rng, 5);
        let job = vm.prepare(reg, &BindJob::new(&ops)).unwrap();
        let done = vm.run(job).unwrap();
        vm.cleanup(done).unwrap();
        for op in &ops {
            model.apply(op);
        }
    }
    (vm, model)
}

fn map(va: u64, len: u64, obj: u64, offset: u64) -> BindOp {
    BindOp::Map {
        va,
        len,
        obj: ObjId::new(obj).unwrap(),
        offset,
        flags: MapFlags::default(),
    }
}

#[test]
fn bad_input_changes_nothing() {
    let mut reg = Registry::new();
    let (mut vm, model) = populated(&mut reg, 99);
    let good = map(VA_BASE, 0x4000, 1, 0);
    let cut = vm.config().cut_out.clone();
    let cases: Vec<(Vec<BindOp>, &str)> = vec![
        (vec![map(VA_BASE + 0x800, 0x1000, 1, 0)], "unaligned va"),
        (vec![map(VA_BASE, 0x1800, 1, 0)], "unaligned length"),
        (vec![map(VA_BASE, 0, 1, 0)], "zero length"),
        (vec![map(u64::MAX - 0xFFF, 0x2000, 1, 0)], "overflow"),
        (vec![map(1 << 47, 0x1000, 1, 0)], "outside the VA space"),
        (vec![map(0, 0x1000, 1, 0)], "below the VA space"),
        (
            vec![map(cut.start - 0x1000, 0x2000, 1, 0)],
            "into the cut-out",
        ),
        (
            vec![BindOp::Unmap {
                va: cut.start,
                len: 0x1000,
            }],
            "unmap in the cut-out",
        ),
        (vec![map(VA_BASE, 0x1000, 1, 0x800)], "unaligned offset"),
        (
            vec![map(VA_BASE, 0x2000, 1, OBJ_SIZE - 0x1000)],
            "past the object",
        ),
        (
            vec![map(VA_BASE, 0x1000, 1, u64::MAX - 0xFFF)],
            "offset overflow",
        ),
        (vec![map(VA_BASE, 0x1000, 9, 0)], "unknown object"),
        (
            vec![good, map(VA_BASE, 0x1000, 2, 0), map(VA_BASE, 0x1800, 3, 0)],
            "last op bad",
        ),
        (
            vec![
                good,
                BindOp::Unmap {
                    va: VA_BASE,
                    len: 0x1000,
                },
                map(VA_BASE, 0x1000, 7, 0),
            ],
            "unknown object after good ops",
        ),
    ];
    for (ops, what) in &cases {
        let before = snapshot(&vm, &reg);
        let r = vm.prepare(&mut reg, &BindJob::new(ops));
        assert!(r.is_err(), "{what}: accepted");
        assert_eq!(snapshot(&vm, &reg), before, "{what}: state changed");
    }
    // The registry failing.
    reg.fail = true;
    let before = snapshot(&vm, &reg);
    let r = vm.prepare(&mut reg, &BindJob::new(&[good]));
    assert!(matches!(r, Err(PrepareError::Object { index: 0, .. })));
    assert_eq!(snapshot(&vm, &reg), before);
    reg.fail = false;
    // The frame cap: a job held in flight, then one more than the cap allows.
    let held = vm
        .prepare(
            &mut reg,
            &BindJob::new(&[map(VA_BASE + 0x200_0000, 0x1000, 2, 0)]),
        )
        .unwrap();
    let before = snapshot(&vm, &reg);
    // Errors are typed.
    assert_eq!(
        vm.prepare(&mut reg, &BindJob::new(&[map(VA_BASE, 0x1000, 1, 0x800)]))
            .err(),
        Some(PrepareError::Op {
            index: 0,
            error: OpError::UnalignedOffset
        })
    );
    assert_eq!(snapshot(&vm, &reg), before);
    let done = vm.abort(held, JobError::Canceled).unwrap();
    vm.cleanup(done).unwrap();
    // The model still describes the VM.
    check(&vm, &model, &reg);
}

#[test]
fn frame_cap_says_again() {
    let mut reg = Registry::new();
    let one = [map(VA_BASE, 0x1000, 1, 0)];
    let probe = new_vm()
        .prepare(&mut reg, &BindJob::new(&one))
        .unwrap()
        .frames();
    let fmt = format();
    let pool =
        pagetable::VecPool::new(fmt.granule(), pagetable::PhysAddr::new(0x20_0000_0000)).unwrap();
    let mut cfg = vmbind::VmConfig::new(fmt, 0x1000..1 << 47);
    cfg.frame_cap = probe;
    let mut vm: TestVm = vmbind::Vm::new(cfg, pool, TestMmu::default()).unwrap();
    // One page map fills the cap exactly.
    let first = vm.prepare(&mut reg, &BindJob::new(&one)).unwrap();
    assert_eq!(vm.frames_in_flight(), probe);
    let before = snapshot(&vm, &reg);
    let r = vm.prepare(
        &mut reg,
        &BindJob::new(&[map(VA_BASE + 0x4000_0000, 0x1000, 1, 0)]),
    );
    assert_eq!(r.err(), Some(PrepareError::Again));
    assert_eq!(snapshot(&vm, &reg), before);
    let done = vm.run(first).unwrap();
    vm.cleanup(done).unwrap();
    assert_eq!(vm.frames_in_flight(), 0);
    let again = vm
        .prepare(
            &mut reg,
            &BindJob::new(&[map(VA_BASE + 0x4000_0000, 0x1000, 1, 0)]),
        )
        .unwrap();
    let done = vm.run(again).unwrap();
    vm.cleanup(done).unwrap();
}

#[test]
fn failing_kth_allocation_in_prepare_changes_nothing() {
    let net_start = NET.with(Cell::get);
    {
        let mut rng = Rng(0xFA11);
        let mut total_k = 0u64;
        for round in 0..12u64 {
            let mut reg = Registry::new();
            let (mut vm, mut model) = populated(&mut reg, 1000 + round);
            let ops = random_job(&mut rng, 6);
            let mut k = 1;
            loop {
                let before = snapshot(&vm, &reg);
                FAIL_IN.with(|f| f.set(k));
                let r = vm.prepare(&mut reg, &BindJob::new(&ops));
                let missed = FAIL_IN.with(|f| f.replace(0));
                match r {
                    Err(e) => {
                        assert_eq!(e, PrepareError::NoMemory, "k = {k}");
                        assert_eq!(missed, 0, "failed without the injected failure");
                        assert_eq!(snapshot(&vm, &reg), before, "k = {k}: state changed");
                        k += 1;
                    }
                    Ok(job) => {
                        assert!(missed > 0, "the injected failure was swallowed at k = {k}");
                        let done = vm.run(job).unwrap();
                        vm.cleanup(done).unwrap();
                        for op in &ops {
                            model.apply(op);
                        }
                        check(&vm, &model, &reg);
                        break;
                    }
                }
            }
            total_k += k - 1;
        }
        assert!(total_k > 12, "prepare reached allocations");
    }
    assert_eq!(NET.with(Cell::get), net_start, "bytes leaked");
}

mod synced {
    //! The same properties with sync objects: `poll` and `run` allocate nothing with in- and
    //! out-syncs; a submit failing at its k-th allocation (the pipeline's own, or the driver's
    //! fence/chain/lookup allocations, failed through the sync table) publishes nothing and
    //! leaves everything as it was.
    use super::*;
    use vmbind::queue::{BindQueue, Submit, SwChain, SwFence, SwSyncobj, SwSyncs};
    use vmbind::{SyncDesc, SyncError, SyncTable};

    type SVm = AnyVm<SwFence>;

    fn guarded() -> SVm {
        let mut vm: SVm = new_vm_with();
        vm.mmu_mut().on_begin = begin;
        vm.mmu_mut().on_end = end;
        vm
    }

    /// The software table with a countdown of its own: the driver's allocations fail through
    /// the trait. The global allocator's injection is suspended inside (the software fences
    /// are `Rc`s, which cannot fail gracefully).
    struct Failing {
        inner: SwSyncs,
        fail_in: u64,
    }

    impl Failing {
        fn tick(&mut self) -> Result<(), SyncError> {
            match self.fail_in {
                0 => Ok(()),
                1 => {
                    self.fail_in = 0;
                    Err(SyncError::NoMemory)
                }
                n => {
                    self.fail_in = n - 1;
                    Ok(())
                }
            }
        }
        fn shielded<T>(&mut self, f: impl FnOnce(&mut SwSyncs) -> T) -> T {
            let saved = FAIL_IN.with(|c| c.replace(0));
            let r = f(&mut self.inner);
            FAIL_IN.with(|c| c.set(saved));
            r
        }
    }

    impl SyncTable for Failing {
        type Fence = SwFence;
        type Syncobj = SwSyncobj;
        fn lookup(&mut self, handle: u32) -> Result<SwSyncobj, SyncError> {
            self.tick()?;
            self.shielded(|s| s.lookup(handle))
        }
        fn new_fence(&mut self) -> Result<SwFence, SyncError> {
            self.tick()?;
            self.shielded(SwSyncs::new_fence)
        }
        fn alloc_chain(&mut self) -> Result<SwChain, SyncError> {
            self.tick()?;
            self.shielded(SwSyncs::alloc_chain)
        }
    }

    #[test]
    fn poll_and_run_allocate_nothing_with_syncs() {
        let mut reg = Registry::new();
        let mut vm = guarded();
        let mut syncs = SwSyncs::new();
        let t = syncs.create(true).unwrap();
        let u = syncs.create(true).unwrap();
        let b = syncs.create(false).unwrap();
        let mut q = BindQueue::new(1000);
        let mut rng = Rng(0x5EED);
        let mut ran = 0;
        for i in 1..=200u64 {
            let ops = random_job(&mut rng, 5);
            let future = rng.below(2) == 0;
            let mut ins = if i > 1 {
                vec![SyncDesc::timeline(t, i - 1)]
            } else {
                vec![]
            };
            if future {
                // Published by the host only after the submit: materialised inside poll.
                ins.push(SyncDesc::timeline(u, i).wait_for_submit());
            }
            let outs = [SyncDesc::timeline(t, i), SyncDesc::binary(b)];
            let j = BindJob {
                ops: &ops,
                in_syncs: &ins,
                out_syncs: &outs,
                mode: vmbind::Mode::Async,
            };
            let mut s = Submit::new(&mut vm, &mut syncs);
            s.add(&mut reg, &j).unwrap();
            s.push(&mut q, i).unwrap();
            if future && rng.below(3) != 0 {
                syncs.get(u).unwrap().host_signal(i).unwrap();
            }
            let before = in_section();
            begin();
            ran += q.poll(&mut vm, i + rng.below(3)).ran;
            end();
            assert_eq!(
                in_section(),
                before,
                "poll (waits, run, out-fences) allocated or freed"
            );
        }
        syncs.get(u).unwrap().host_signal(1000).unwrap();
        begin();
        ran += q.poll(&mut vm, 10_000).ran;
        end();
        assert!(q.is_empty());
        assert!(ran > 100, "jobs ran: {ran}");
    }

    #[derive(Debug, PartialEq, Eq)]
    struct SyncSnap {
        t_last: u64,
        t_chain: usize,
        b_fence: bool,
    }

    fn sync_snap(s: &SwSyncs, t: u32, b: u32) -> SyncSnap {
        SyncSnap {
            t_last: s.get(t).unwrap().last_point(),
            t_chain: s.get(t).unwrap().chain_len(),
            b_fence: s.get(b).unwrap().fence().is_some(),
        }
    }

    #[test]
    fn failing_kth_allocation_in_submit_publishes_nothing() {
        let net_start = NET.with(Cell::get);
        {
            let mut rng = Rng(0x5AB);
            let (mut global_k, mut driver_k) = (0, 0);
            for round in 0..6u64 {
                let mut reg = Registry::new();
                let mut vm = guarded();
                let mut syncs = Failing {
                    inner: SwSyncs::new(),
                    fail_in: 0,
                };
                let t = syncs.inner.create(true).unwrap();
                let b = syncs.inner.create(false).unwrap();
                syncs.inner.get(t).unwrap().host_signal(1).unwrap();
                let mut q = BindQueue::new(1000);
                let jobs: Vec<Vec<BindOp>> = (0..3).map(|_| random_job(&mut rng, 4)).collect();
                let ins = [SyncDesc::timeline(t, 1), SyncDesc::timeline(t, 2 + round)];
                let outs = [SyncDesc::timeline(t, 2 + round), SyncDesc::binary(b)];
                for driver in [false, true] {
                    let mut k = 1;
                    loop {
                        let snap = (
                            sync_snap(&syncs.inner, t, b),
                            vm.frames_in_flight(),
                            reg.live.get(),
                            tree_pages(&vm),
                            q.len(),
                        );
                        if driver {
                            syncs.fail_in = k;
                        } else {
                            FAIL_IN.with(|f| f.set(k));
                        }
                        let r = (|| {
                            let mut s = Submit::new(&mut vm, &mut syncs);
                            for (n, ops) in jobs.iter().enumerate() {
                                let j = BindJob {
                                    ops,
                                    in_syncs: if n == 0 { &ins[..1] } else { &ins },
                                    out_syncs: if n == 0 { &outs[..] } else { &outs[1..] },
                                    mode: vmbind::Mode::Async,
                                };
                                s.add(&mut reg, &j).map_err(|_| ())?;
                            }
                            s.push(&mut q, 0).map_err(|_| ())
                        })();
                        let missed =
                            FAIL_IN.with(|f| f.replace(0)) + std::mem::take(&mut syncs.fail_in);
                        vm.cleanup_deferred();
                        if r.is_err() {
                            assert_eq!(missed, 0, "failed without the injected failure");
                            let now = (
                                sync_snap(&syncs.inner, t, b),
                                vm.frames_in_flight(),
                                reg.live.get(),
                                tree_pages(&vm),
                                q.len(),
                            );
                            assert_eq!(now, snap, "k = {k} (driver: {driver}): state changed");
                            k += 1;
                        } else {
                            assert!(missed > 0, "injected failure swallowed at k = {k}");
                            assert_eq!(q.len(), 3);
                            assert_eq!(syncs.inner.get(t).unwrap().last_point(), 2 + round);
                            q.poll(&mut vm, 1);
                            assert!(q.is_empty());
                            vm.cleanup_deferred();
                            q.cleanup();
                            break;
                        }
                    }
                    if driver {
                        driver_k += k - 1;
                    } else {
                        global_k += k - 1;
                    }
                }
            }
            assert!(
                global_k > 6 && driver_k > 6,
                "submit reached allocations: {global_k}, {driver_k}"
            );
        }
        assert_eq!(NET.with(Cell::get), net_start, "bytes leaked");
    }
}
