//! Every allocation failure on the prepare side is clean: with `tests::failalloc` as this
//! binary's global allocator, each prepare-side call is run with its k-th allocation failing
//! (for every k it reaches), with every allocation from the k-th on failing, and with random
//! failures; each refusal must leave the state exactly as it was (gpuva: every observable of
//! `tests::harness::State`; vmbind: VA tree, decoded tables, frames in use and in flight, spare
//! and claimed nodes, links, object references, deferred jobs) and leak nothing (the injector's
//! net block and byte counts over the refused call are zero).
//!
//! gpuva: `BoxNode::try_new`, `NodeBag::try_alloc`, `GpuVm::reserve_boxed`, `sm_map_ops` /
//! `sm_unmap_ops`; `link_obtain` and `reserve` from a filled bag allocate nothing. vmbind:
//! `Vm::prepare` on random multi-op jobs over a populated VM.

use gpuva::{BoxNode, Mapping, NodeBag, ObjId, Request};
use tests::failalloc::{self, FailAlloc, Plan, Report};
use tests::harness::{Bag, Node, Snapshot, Vm};
use tests::vmbind_fuzz::{self as vf, FVm, Registry};
use vmbind::{BindJob, BindOp, JobError};

#[global_allocator]
static ALLOC: FailAlloc = FailAlloc;

const P: u64 = 0x1000;

fn clean(r: &Report, what: &str) {
    assert!(r.failed > 0, "{what}: nothing failed");
    assert_eq!((r.net_blocks, r.net_bytes), (0, 0), "{what} leaked: {r:?}");
}

/// A VA space with mappings of three objects, links on, a cut-out, and spare nodes trimmed.
fn populated() -> Vm {
    let mut vm = Vm::with_granule(0..256 * P, 100 * P..104 * P, P).expect("geometry");
    for i in 0..40u64 {
        let obj = ObjId::new(1 + i % 3);
        let m = Mapping::new(i * 2 * P, P + (i % 2) * P, obj, i * P);
        let need = vm.nodes_for(&Request::Map(m)) + vm.link_nodes();
        let mut claim = vm.reserve_boxed(need).expect("memory");
        let pin = obj.map(|o| vm.link_obtain(o, &mut claim, || i).expect("link"));
        vm.map(m, &mut claim).expect("map");
        vm.release(claim).expect("own claim");
        if let Some(p) = pin {
            vm.link_put(p).map_err(|_| ()).expect("own pin");
        }
    }
    let _ = vm.trim(0);
    vm
}

/// Runs `f` with allocation `k` failing, for k = 1, 2, ... until `f` succeeds; `f` gets the
/// plan's index and reports whether it succeeded. Returns how many failure points there were.
fn every_k(what: &str, mut f: impl FnMut(u64) -> bool) -> u64 {
    for k in 1..10_000 {
        if f(k) {
            assert!(k > 1, "{what}: allocated nothing");
            return k - 1;
        }
    }
    panic!("{what}: still failing after 10000 allocations");
}

#[test]
fn injector_counts_and_fails() {
    assert!(failalloc::installed());
    let ((), r) = failalloc::with_plan(Plan::Nth(2), || {
        let a: Result<Vec<u8>, _> = (0..1).map(|_| Ok::<u8, ()>(0)).collect();
        let mut b: Vec<u64> = Vec::new();
        assert!(
            b.try_reserve_exact(8).is_err(),
            "the second allocation fails"
        );
        drop(a);
    });
    assert_eq!((r.allocs, r.failed, r.net_blocks), (2, 1, 0));
    let ((), r) = failalloc::with_plan(Plan::From(1), || {
        let mut v: Vec<u8> = Vec::new();
        assert!(v.try_reserve(1).is_err() && v.try_reserve(2).is_err());
    });
    assert_eq!((r.allocs, r.failed), (2, 2));
    let ((), r) = failalloc::with_plan(
        Plan::Probability {
            per_mille: 500,
            seed: 9,
        },
        || {
            for _ in 0..1000 {
                let mut v: Vec<u8> = Vec::new();
                let _ = v.try_reserve(1);
            }
        },
    );
    assert!((300..700).contains(&r.failed), "{r:?}");
    assert_eq!(r.net_blocks, 0);
}

#[test]
fn gpuva_node_allocation_failures_are_clean() {
    let (res, r) = failalloc::with_plan(Plan::Nth(1), || BoxNode::<u64, u64>::try_new().is_err());
    assert!(res);
    clean(&r, "BoxNode::try_new");
    for n in 1..=12usize {
        for k in 1..=n as u64 {
            for plan in [Plan::Nth(k), Plan::From(k)] {
                let (res, r) = failalloc::with_plan(plan, || Bag::try_alloc(n).map(|b| b.len()));
                assert!(
                    res.is_err(),
                    "NodeBag::try_alloc({n}) under {plan:?}: {res:?}"
                );
                clean(&r, "NodeBag::try_alloc");
            }
        }
    }
}

#[test]
fn gpuva_reserve_failures_are_clean() {
    let mut vm = populated();
    let m = Mapping::new(31 * P, 20 * P, ObjId::new(2), 0);
    for (name, req) in [
        ("map", Request::Map(m)),
        (
            "map null",
            Request::Map(Mapping::new(3 * P, 9 * P, None, 0)),
        ),
        (
            "unmap",
            Request::Unmap {
                addr: 5 * P,
                len: 60 * P,
            },
        ),
    ] {
        let need = vm.nodes_for(&req) + vm.link_nodes();
        let points = every_k(name, |k| {
            let before = Snapshot::of(&vm);
            let (res, r) = failalloc::with_plan(Plan::Nth(k), || vm.reserve_boxed(need));
            match res {
                Err(_) => {
                    let after = Snapshot::of(&vm);
                    assert_eq!(
                        after, before,
                        "{name}: a failed reserve_boxed changed the VM"
                    );
                    clean(&r, "reserve_boxed");
                    false
                }
                Ok(claim) => {
                    vm.release(claim).expect("own claim");
                    let _ = vm.trim(0);
                    true
                }
            }
        });
        assert!(points >= 2, "{name}: {points}");
    }
    // From a bag that holds the shortfall, reserve and link_obtain allocate nothing.
    let need = vm.nodes_for(&Request::Map(m)) + vm.link_nodes();
    let mut bag: NodeBag<u64, u64, Node> = Bag::try_alloc(vm.shortfall(need)).expect("memory");
    let ((), r) = failalloc::with_plan(Plan::From(1), || {
        let mut claim = vm.reserve(need, &mut bag).expect("bag of the shortfall");
        let pin = vm
            .link_obtain(ObjId::new(2).expect("non-zero"), &mut claim, || 7)
            .expect("link");
        vm.map(m, &mut claim).expect("map");
        vm.release(claim).expect("own claim");
        vm.link_put(pin).map_err(|_| ()).expect("own pin");
    });
    assert_eq!(
        r.allocs, 0,
        "reserve, link_obtain, map, release, link_put allocate nothing"
    );
    vm.check_invariants().expect("invariants");
}

#[test]
fn gpuva_op_list_failures_are_clean() {
    let vm = populated();
    let reqs = [
        Request::Map(Mapping::new(P, 90 * P, ObjId::new(1), 0)),
        Request::Map(Mapping::new(0, 60 * P, ObjId::new(3), 5 * P)),
        Request::Unmap {
            addr: 0,
            len: 100 * P,
        },
    ];
    for req in reqs {
        let before = Snapshot::of(&vm);
        let points = every_k("op list", |k| {
            let (res, r) =
                failalloc::with_plan(Plan::Nth(k), || vm.request_ops(req).map(|l| l.ops().len()));
            match res {
                Err(gpuva::OpsError::Sink(_)) => {
                    clean(&r, "op list");
                    assert_eq!(Snapshot::of(&vm), before);
                    false
                }
                Err(e) => panic!("{req:?}: {e:?}"),
                Ok(_) => true,
            }
        });
        assert!(points >= 1);
    }
}

/// A driver-like loop under random allocation failures: every prepare-side call may fail (and
/// is then retried later); the tree must end equal to applying the requests that got through.
#[test]
fn gpuva_random_failures_keep_the_model() {
    let mut vm = populated();
    let mut expect: Vec<(Mapping, u64)> = vm.iter().map(|v| (v.mapping(), *v.data())).collect();
    let mut shadow = Vm::with_granule(0..256 * P, 100 * P..104 * P, P).expect("geometry");
    for (m, d) in &expect {
        let need = shadow.nodes_for(&Request::Map(*m)) + shadow.link_nodes();
        let mut c = shadow.reserve_boxed(need).expect("memory");
        let pin = m
            .obj
            .map(|o| shadow.link_obtain(o, &mut c, || 0).expect("link"));
        let _ = d;
        shadow.map(*m, &mut c).expect("map");
        shadow.release(c).expect("own");
        if let Some(p) = pin {
            shadow.link_put(p).map_err(|_| ()).expect("own pin");
        }
    }
    let mut x = 0x1234_5678u64;
    let (mut refused, mut done) = (0, 0);
    for i in 0..400u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let start = (x % 250) * P;
        let len = (1 + (x >> 8) % 12) * P;
        let obj = ObjId::new((x >> 16) % 4);
        let req = if (x >> 20).is_multiple_of(3) {
            Request::Unmap { addr: start, len }
        } else {
            Request::Map(Mapping::new(start, len, obj, (x >> 24) % 64 * P))
        };
        if vm.check_range(start, len).is_err() {
            continue;
        }
        let need = vm.nodes_for(&req) + vm.link_nodes();
        let before = Snapshot::of(&vm);
        let (claim, r) = failalloc::with_plan(
            Plan::Probability {
                per_mille: 150,
                seed: i,
            },
            || vm.reserve_boxed(need),
        );
        let Ok(mut claim) = claim else {
            assert_eq!(
                Snapshot::of(&vm),
                before,
                "a refused reserve changed the VM"
            );
            assert_eq!(r.net_blocks, 0, "a refused reserve leaked: {r:?}");
            refused += 1;
            continue;
        };
        let pin = match req {
            Request::Map(m) => m
                .obj
                .map(|o| vm.link_obtain(o, &mut claim, || i).expect("link")),
            _ => None,
        };
        let mut sc = shadow.reserve_boxed(need).expect("memory");
        let spin = match req {
            Request::Map(m) => m
                .obj
                .map(|o| shadow.link_obtain(o, &mut sc, || 0).expect("link")),
            _ => None,
        };
        vm.step(req, &mut claim, &mut gpuva::Apply::default())
            .expect("step");
        shadow
            .step(req, &mut sc, &mut gpuva::Apply::default())
            .expect("step");
        vm.release(claim).expect("own");
        shadow.release(sc).expect("own");
        for (v, p) in [(&mut vm, pin), (&mut shadow, spin)] {
            if let Some(p) = p {
                v.link_put(p).map_err(|_| ()).expect("own pin");
            }
        }
        done += 1;
    }
    assert!(refused > 10 && done > 100, "{refused} refused, {done} done");
    vm.check_invariants().expect("invariants");
    expect.clear();
    let got: Vec<Mapping> = vm.iter().map(|v| v.mapping()).collect();
    let want: Vec<Mapping> = shadow.iter().map(|v| v.mapping()).collect();
    assert_eq!(
        got, want,
        "the VA space equals the requests that got through"
    );
}

#[derive(Debug, PartialEq, Eq)]
struct VmState {
    tree: vf::SpanList,
    tables: vf::Runs,
    frames_in_use: usize,
    frames_in_flight: u64,
    spare: usize,
    claimed: usize,
    links: Vec<(u64, u64, u32)>,
    live: i64,
    deferred: usize,
}

fn vm_state(vm: &FVm, reg: &Registry) -> VmState {
    VmState {
        tree: vf::tree_spans(vm),
        tables: vf::table_runs(vm),
        frames_in_use: vm.memory().in_use(),
        frames_in_flight: vm.frames_in_flight(),
        spare: vm.va_space().spare_nodes(),
        claimed: vm.va_space().claimed_nodes(),
        links: vm
            .va_space()
            .links()
            .map(|l| (l.obj().get(), l.mappings(), l.pins()))
            .collect(),
        live: reg.live(),
        deferred: vm.deferred(),
    }
}

fn run_job(vm: &mut FVm, reg: &mut Registry, ops: &[BindOp]) {
    let job = vm.prepare(reg, &BindJob::new(ops)).expect("prepare");
    let done = vm.run(job).map_err(|_| ()).expect("own job");
    assert_eq!(done.result(), Ok(()));
    vm.cleanup(done).map_err(|_| ()).expect("cleanup");
}

/// `Vm::prepare` of random multi-op jobs over a populated VM, failing at every allocation it
/// makes (after a warm-up prepare, so that pool and vector capacities are in place and a clean
/// refusal must net exactly zero).
#[test]
fn vmbind_prepare_failures_are_clean() {
    let (mut vm, _) = vf::new_vm(0);
    let mut reg = Registry::new();
    let mut model = vf::Spans::new();
    for s in 0..12u64 {
        let ops = vf::random_job(s * 977 + 5, (s % 3) as usize);
        run_job(&mut vm, &mut reg, &ops);
        for op in &ops {
            vf::apply_model(&mut model, op);
        }
    }
    let mut points = 0;
    // 16 jobs: prepare reuses the VM's kept vectors, so each job has only a few allocation
    // points after its warm-up.
    for s in 0..16u64 {
        let ops = vf::random_job(s * 7919 + 3, (s % 3) as usize);
        // Warm-up: prepare and abort once.
        let job = vm.prepare(&mut reg, &BindJob::new(&ops)).expect("prepare");
        let done = vm
            .abort(job, JobError::Canceled)
            .map_err(|_| ())
            .expect("own");
        vm.cleanup(done).map_err(|_| ()).expect("cleanup");
        vm.cleanup_deferred();
        for from in [false, true] {
            points += every_k("prepare", |k| {
                let before = vm_state(&vm, &reg);
                let plan = if from { Plan::From(k) } else { Plan::Nth(k) };
                let (res, r) = failalloc::with_plan(plan, || {
                    match vm.prepare(&mut reg, &BindJob::new(&ops)) {
                        Ok(job) => Some(job),
                        Err(e) => {
                            assert_eq!(e, vmbind::PrepareError::NoMemory, "{ops:?} {plan:?}");
                            None
                        }
                    }
                });
                match res {
                    None => {
                        assert_eq!(vm_state(&vm, &reg), before, "{ops:?} under {plan:?}");
                        clean(&r, "Vm::prepare");
                        false
                    }
                    Some(job) => {
                        let done = vm
                            .abort(job, JobError::Canceled)
                            .map_err(|_| ())
                            .expect("own");
                        vm.cleanup(done).map_err(|_| ()).expect("cleanup");
                        true
                    }
                }
            });
        }
        // Then the job for real.
        run_job(&mut vm, &mut reg, &ops);
        for op in &ops {
            vf::apply_model(&mut model, op);
        }
        assert_eq!(vf::tree_spans(&vm), vf::model_spans(&model));
        assert_eq!(vf::table_runs(&vm), vf::model_runs(&model, &reg));
    }
    assert!(points > 20, "only {points} failure points");
    vm.va_space().check_invariants().expect("invariants");
}

/// Regression (found by the `vmbind_jobs` fuzz target, artifact `crash-leak-retry`): a prepare
/// grew vectors the VM keeps between jobs (the per-job vectors it lends each job, the job-bound
/// scratch, the deferred-cleanup list, the slot table) and, when a later allocation failed,
/// kept them grown: each refusal under "every allocation from the k-th fails" got one
/// allocation further than the last and kept one more heap block. A refused prepare now gives
/// back everything it allocated.
///
/// For every failure point k of a multi-op job, on a VM that never prepared a job (every kept
/// vector empty) and on one warmed up by a one-op job (kept vectors too small for this job),
/// the refused prepare is retried 8 times under the same plan: each try must leave the VM's
/// state unchanged and net zero heap blocks and bytes. (The frame pool is created with enough
/// free frames, so the allocator's own storage never grows.)
#[test]
fn regress_refused_prepare_keeps_no_grown_vector() {
    let ops = vf::random_job(7, 0);
    let maps = ops
        .iter()
        .filter(|o| matches!(o, BindOp::Map { .. }))
        .count();
    assert!(ops.len() == 8 && maps >= 4, "a multi-map job: {ops:?}");
    let warm_ops = [ops
        .iter()
        .copied()
        .find(|o| matches!(o, BindOp::Map { .. }))
        .expect("a map")];
    let mut counted = 0;
    for warm in [false, true] {
        for from in [false, true] {
            let points = every_k("prepare", |k| {
                let (mut vm, _) = vf::new_vm_with_frames(0, 256);
                let mut reg = Registry::new();
                if warm {
                    run_job(&mut vm, &mut reg, &warm_ops);
                }
                let plan = if from { Plan::From(k) } else { Plan::Nth(k) };
                for attempt in 0..8 {
                    let before = vm_state(&vm, &reg);
                    let (res, r) = failalloc::with_plan(plan, || {
                        match vm.prepare(&mut reg, &BindJob::new(&ops)) {
                            Ok(job) => Some(job),
                            Err(e) => {
                                assert_eq!(e, vmbind::PrepareError::NoMemory, "{plan:?}");
                                None
                            }
                        }
                    });
                    let Some(job) = res else {
                        assert_eq!(vm_state(&vm, &reg), before, "{plan:?}, try {attempt}");
                        assert_eq!(vm.memory().created(), 256, "the pool never grows");
                        assert_eq!(
                            (r.net_blocks, r.net_bytes),
                            (0, 0),
                            "warm {warm}, {plan:?}, try {attempt}: the refusal kept memory"
                        );
                        counted += 1;
                        continue;
                    };
                    assert_eq!(attempt, 0, "{plan:?}: a refusal, then the same plan passed");
                    let done = vm.run(job).map_err(|_| ()).expect("own job");
                    assert_eq!(done.result(), Ok(()));
                    vm.cleanup(done).map_err(|_| ()).expect("cleanup");
                    return true;
                }
                false
            });
            assert!(points >= 6, "warm {warm}: only {points} failure points");
        }
    }
    assert!(counted > 100, "only {counted} refusals counted");
}
