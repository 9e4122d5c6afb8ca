//! One test per error class: the error is the documented one and the tree is unchanged afterwards
//! (full mapping list with payloads, `len()` and `generation()` compared), or, where the error
//! reports partial progress (a failing visitor, a lying pool), the tree is consistent and holds
//! exactly the steps before the failure.

use gpuva::{
    Apply, ApplyError, BoxNode, GpuVm, MapError, Mapping, NewError, NodeReserve, ObjId, Op, OpMap,
    OpMapped, OpRemap, OpRemapped, OpUnmap, OpUnmapped, OpsError, RangeError, ReserveError,
    RetiredList, SmVisitor, UnmapError, MAX_MAP_NODES, MAX_UNMAP_NODES,
};
use tests::harness::{LyingPool, Recorder, Snapshot, StepFailed};
use tests::model::{check_invariants, nodes_inserted, removed_by, Model};

type Vm = GpuVm<u64, BoxNode<u64>>;

/// Unit pages: the space is `[10, 1000)` with the cut-out `[600, 700)`.
const SPACE: std::ops::Range<u64> = 10..1000;
const CUT: std::ops::Range<u64> = 600..700;

fn obj(n: u64) -> Option<ObjId> {
    ObjId::new(n)
}

fn reserve(n: usize) -> NodeReserve<BoxNode<u64>> {
    NodeReserve::try_alloc(n).expect("test allocation")
}

/// A = [100,200) X@0, B = [200,300) Y@0, C = [350,450) Z@10, D = [500,600) NULL (touching the
/// cut-out), E = [700,800) X@0 (touching its other edge); payloads 1..=5.
fn fixture() -> Vm {
    let mut vm = Vm::new(SPACE, CUT).expect("geometry");
    let mut retired = RetiredList::new();
    let maps = [
        Mapping::new(100, 100, obj(1), 0),
        Mapping::new(200, 100, obj(2), 0),
        Mapping::new(350, 100, obj(3), 10),
        Mapping::new(500, 100, None, 0),
        Mapping::new(700, 100, obj(1), 0),
    ];
    for (id, m) in (1..).zip(maps) {
        vm.sm_map(m, &mut reserve(3), &mut retired, &mut Apply::new(id))
            .expect("fixture");
    }
    assert_eq!(vm.len(), 5);
    vm
}

fn model_of(snap: &Snapshot) -> Model {
    Model::from_mappings(SPACE, CUT, 1, &snap.mappings).expect("valid tree")
}

fn assert_consistent(vm: &Vm) {
    let list: Vec<Mapping> = vm.iter().map(|v| v.mapping()).collect();
    if let Err(e) = check_invariants(&SPACE, &CUT, &list) {
        panic!("{e}");
    }
    assert_eq!(list.len(), vm.len());
}

#[test]
#[expect(
    clippy::reversed_empty_ranges,
    reason = "inverted ranges are the bad input under test"
)]
fn new_rejects_bad_geometry() {
    type V = GpuVm<(), BoxNode<()>>;
    let cases: [(Result<V, NewError>, NewError); 10] = [
        (V::new(5..5, 0..0), NewError::EmptySpace),
        (V::new(10..5, 0..0), NewError::EmptySpace),
        // Emptiness is checked before the cut-out.
        (V::new(5..5, 10..5), NewError::EmptySpace),
        (V::new(0..100, 50..40), NewError::InvertedReserve),
        (V::new(100..200, 50..150), NewError::ReserveOutside),
        (V::new(100..200, 150..250), NewError::ReserveOutside),
        (V::new(100..200, 0..10), NewError::ReserveOutside),
        (V::with_size(u64::MAX, 1, 0, 0), NewError::Overflow),
        (V::with_size(0, 100, u64::MAX, 2), NewError::Overflow),
        (V::with_size(0, 0, 0, 0), NewError::EmptySpace),
    ];
    for (i, (got, want)) in cases.into_iter().enumerate() {
        let got = got.map(|vm| vm.range());
        assert_eq!(got, Err(want.clone()), "case {i}");
        assert!(!want.to_string().is_empty());
    }
    // Edges that are fine: an empty cut-out anywhere means none; a cut-out equal to the space; the
    // largest representable space.
    let vm = V::new(0..100, 500..500).expect("empty cut-out is none");
    assert_eq!(vm.reserved(), None);
    let vm = V::new(0..100, 0..100).expect("cut-out may be the whole space");
    assert_eq!(vm.check_range(0, 1), Err(RangeError::Reserved));
    let vm = V::with_size(0, u64::MAX, 0, 0).expect("[0, u64::MAX)");
    assert_eq!(vm.range(), 0..u64::MAX);
    assert_eq!(vm.check_range(u64::MAX - 1, 1), Ok(u64::MAX - 1..u64::MAX));
    assert_eq!(vm.check_range(u64::MAX, 1), Err(RangeError::Overflow));
}

/// Invalid ranges, one row per `RangeError` variant and edge.
const BAD_RANGES: [(u64, u64, RangeError); 16] = [
    (100, 0, RangeError::ZeroSize),
    (0, 0, RangeError::ZeroSize),
    (u64::MAX, 0, RangeError::ZeroSize),
    (650, 0, RangeError::ZeroSize),
    (u64::MAX, 1, RangeError::Overflow),
    (u64::MAX - 5, 10, RangeError::Overflow),
    (1, u64::MAX, RangeError::Overflow),
    (0, 5, RangeError::OutOfRange),
    (5, 10, RangeError::OutOfRange),
    (1000, 1, RangeError::OutOfRange),
    (990, 11, RangeError::OutOfRange),
    (600, 1, RangeError::Reserved),
    (699, 1, RangeError::Reserved),
    (599, 2, RangeError::Reserved),
    (650, 10, RangeError::Reserved),
    (550, 200, RangeError::Reserved),
];

#[test]
fn range_errors_change_nothing_on_every_entry_point() {
    let mut vm = fixture();
    let before = Snapshot::of(&vm);
    for (addr, len, e) in BAD_RANGES {
        let ctx = format!("[{addr:#x}, +{len:#x}) -> {e:?}");
        assert_eq!(vm.check_range(addr, len), Err(e), "{ctx}");
        let m = Mapping::new(addr, len, obj(1), 0);
        // Walks and op lists.
        let mut seen = 0;
        assert_eq!(
            vm.sm_map_walk(m, |_| {
                seen += 1;
                Ok::<(), ()>(())
            }),
            Err(OpsError::Range(e)),
            "{ctx}"
        );
        assert_eq!(
            vm.sm_unmap_walk(addr, len, |_| {
                seen += 1;
                Ok::<(), ()>(())
            }),
            Err(OpsError::Range(e)),
            "{ctx}"
        );
        assert_eq!(seen, 0, "{ctx}: sink called");
        assert_eq!(vm.sm_map_ops(m).err(), Some(OpsError::Range(e)), "{ctx}");
        assert_eq!(
            vm.sm_unmap_ops(addr, len).err(),
            Some(OpsError::Range(e)),
            "{ctx}"
        );
        // Steps, with a full and with a short pool: validation comes first.
        for n in [MAX_MAP_NODES, 0] {
            let mut pool = reserve(n);
            let mut retired = RetiredList::new();
            let mut rec = Recorder::new(99);
            assert_eq!(
                vm.sm_map(m, &mut pool, &mut retired, &mut rec),
                Err(MapError::Range(e)),
                "{ctx}"
            );
            assert_eq!(
                vm.sm_unmap(addr, len, &mut pool, &mut retired, &mut rec),
                Err(UnmapError::Range(e)),
                "{ctx}"
            );
            assert_eq!(vm.map(m, &mut pool, &mut retired), Err(MapError::Range(e)));
            assert_eq!(
                vm.unmap(addr, len, &mut pool, &mut retired),
                Err(UnmapError::Range(e))
            );
            assert_eq!(rec.calls, 0, "{ctx}: visitor called");
            assert_eq!(pool.len(), n, "{ctx}: pool touched");
            assert!(retired.is_empty(), "{ctx}: something retired");
        }
        assert_eq!(Snapshot::of(&vm), before, "{ctx}: tree changed");
        assert!(!MapError::<StepFailed>::Range(e).to_string().is_empty());
    }
    // Touching the cut-out's edges and the space's edges is fine.
    for (addr, len) in [(599, 1), (700, 1), (10, 1), (999, 1), (10, 590), (700, 300)] {
        assert_eq!(vm.check_range(addr, len), Ok(addr..addr + len));
        assert!(vm.sm_map_ops(Mapping::new(addr, len, None, 0)).is_ok());
    }
}

#[test]
fn reservation_too_small_changes_nothing() {
    let mut vm = fixture();
    let before = Snapshot::of(&vm);
    // The bound is a pure function of the request kind: even a map into a hole (needs 1 node) or
    // an unmap of nothing (needs 0) demands the worst case.
    let maps = [
        Mapping::new(150, 100, obj(4), 0), // needs 3 (B2 prev, C3 next, map)
        Mapping::new(120, 10, obj(4), 0),  // needs 3 (B3)
        Mapping::new(310, 20, obj(4), 0),  // needs 1 (hole)
    ];
    for m in maps {
        for n in 0..MAX_MAP_NODES {
            let mut pool = reserve(n);
            let mut retired = RetiredList::new();
            let mut rec = Recorder::new(9);
            let want = MapError::ReservationTooSmall {
                needed: MAX_MAP_NODES,
                available: n,
            };
            assert_eq!(
                vm.sm_map(m, &mut pool, &mut retired, &mut rec),
                Err(want.clone())
            );
            let list = vm.sm_map_ops(m).expect("valid");
            assert_eq!(
                vm.apply_ops(&list, &mut pool, &mut retired, &mut rec),
                Err(ApplyError::Map(want.clone()))
            );
            assert!(!want.to_string().is_empty());
            assert_eq!((rec.calls, pool.len(), retired.len()), (0, n, 0));
            assert_eq!(Snapshot::of(&vm), before);
        }
    }
    for (addr, len) in [(150, 10), (120, 10), (310, 20)] {
        for n in 0..MAX_UNMAP_NODES {
            let mut pool = reserve(n);
            let mut retired = RetiredList::new();
            let mut rec = Recorder::new(9);
            let want = UnmapError::ReservationTooSmall {
                needed: MAX_UNMAP_NODES,
                available: n,
            };
            assert_eq!(
                vm.sm_unmap(addr, len, &mut pool, &mut retired, &mut rec),
                Err(want.clone())
            );
            assert_eq!(
                vm.unmap(addr, len, &mut pool, &mut retired),
                Err(UnmapError::ReservationTooSmall {
                    needed: MAX_UNMAP_NODES,
                    available: n,
                })
            );
            let list = vm.sm_unmap_ops(addr, len).expect("valid");
            assert_eq!(
                vm.apply_ops(&list, &mut pool, &mut retired, &mut rec),
                Err(ApplyError::Unmap(want))
            );
            assert_eq!((rec.calls, pool.len(), retired.len()), (0, n, 0));
            assert_eq!(Snapshot::of(&vm), before);
        }
    }
    // Exactly the bound is enough for the worst cases (B3 map, U2 unmap).
    let mut retired = RetiredList::new();
    vm.map(
        Mapping::new(120, 10, obj(4), 0),
        &mut reserve(3),
        &mut retired,
    )
    .expect("3 nodes suffice");
    vm.unmap(360, 10, &mut reserve(2), &mut retired)
        .expect("2 nodes suffice");
    assert_consistent(&vm);
}

#[test]
fn reserve_fill_errors() {
    let r = NodeReserve::<BoxNode<u64>>::try_alloc(MAX_MAP_NODES + 1);
    assert!(matches!(
        r,
        Err(ReserveError::TooMany {
            requested: 4,
            capacity: 3
        })
    ));
    let mut made = 0;
    let r = NodeReserve::<BoxNode<u64>>::try_fill(3, || {
        made += 1;
        if made == 2 {
            Err("out of nodes")
        } else {
            BoxNode::try_new(0).map_err(|_| "oom")
        }
    });
    assert_eq!(r.err(), Some(ReserveError::Alloc("out of nodes")));
}

#[test]
fn stale_op_lists_change_nothing() {
    let mut vm = fixture();
    let map_list = vm
        .sm_map_ops(Mapping::new(150, 250, None, 0))
        .expect("valid");
    let unmap_list = vm.sm_unmap_ops(150, 250).expect("valid");
    let empty_list = vm.sm_unmap_ops(310, 20).expect("valid");
    assert!(empty_list.is_empty());

    // Failed requests and empty unmaps do not change the tree, so lists stay current.
    let mut retired = RetiredList::new();
    assert!(vm
        .map(Mapping::new(0, 0, None, 0), &mut reserve(3), &mut retired)
        .is_err());
    assert!(vm.unmap(120, 10, &mut reserve(1), &mut retired).is_err());
    vm.unmap(310, 20, &mut reserve(2), &mut retired)
        .expect("valid");
    vm.apply_ops(
        &empty_list,
        &mut reserve(2),
        &mut retired,
        &mut Apply::default(),
    )
    .expect("nothing changed: still current");

    // Any change makes every earlier list stale.
    vm.map(
        Mapping::new(900, 10, obj(1), 0),
        &mut reserve(3),
        &mut retired,
    )
    .expect("valid");
    let before = Snapshot::of(&vm);
    for list in [&map_list, &unmap_list] {
        let mut pool = reserve(3);
        let mut rec = Recorder::new(1);
        assert_eq!(
            vm.apply_ops(list, &mut pool, &mut retired, &mut rec),
            Err(ApplyError::Stale)
        );
        assert_eq!((rec.calls, pool.len()), (0, 3));
        assert_eq!(Snapshot::of(&vm), before);
    }
    assert!(!ApplyError::<StepFailed>::Stale.to_string().is_empty());

    // A list applies once; applying it again is stale.
    let list = vm.sm_unmap_ops(100, 50).expect("valid");
    vm.apply_ops(&list, &mut reserve(2), &mut retired, &mut Apply::default())
        .expect("current");
    let before = Snapshot::of(&vm);
    assert_eq!(
        vm.apply_ops(&list, &mut reserve(2), &mut retired, &mut Apply::default()),
        Err(ApplyError::Stale)
    );
    assert_eq!(Snapshot::of(&vm), before);

    // clear() is a change too (unless the tree was already empty).
    let list = vm.sm_unmap_ops(100, 50).expect("valid");
    vm.clear(&mut retired);
    let g = vm.generation();
    assert_eq!(
        vm.apply_ops(&list, &mut reserve(2), &mut retired, &mut Apply::default()),
        Err(ApplyError::Stale)
    );
    let list = vm.sm_unmap_ops(100, 50).expect("valid");
    vm.clear(&mut retired);
    assert_eq!(vm.generation(), g, "clearing an empty tree changes nothing");
    vm.apply_ops(&list, &mut reserve(2), &mut retired, &mut Apply::default())
        .expect("still current");
}

/// An op list recorded on one VA space and applied to another at the same generation is refused
/// and changes nothing (before 5b6df0b it was silently re-run there, so the visitor saw that
/// space's ops instead of the recorded ones).
#[test]
fn foreign_op_list_is_refused() {
    let a = fixture();
    let mut b = Vm::new(SPACE, CUT).expect("geometry");
    let mut retired = RetiredList::new();
    for _ in 0..5 {
        b.map(
            Mapping::new(900, 10, obj(7), 0),
            &mut reserve(3),
            &mut retired,
        )
        .expect("valid");
    }
    assert_eq!(a.generation(), b.generation());
    let list = a
        .sm_map_ops(Mapping::new(150, 250, None, 0))
        .expect("valid");
    let before = Snapshot::of(&b);
    let mut rec = Recorder::new(1);
    let r = b.apply_ops(&list, &mut reserve(3), &mut retired, &mut rec);
    assert!(
        r.is_err(),
        "foreign list applied; visitor saw {:?}",
        rec.ops
    );
    assert_eq!(rec.calls, 0);
    assert_eq!(Snapshot::of(&b), before);
    assert_eq!(Snapshot::of(&a).len, 5);
}

/// The result of running a request with a visitor failing on step `k`.
struct FailRun {
    vm: Vm,
    ops: Vec<Op>,
    before: Snapshot,
    retired: RetiredList<u64, BoxNode<u64>>,
    result: Result<(), String>,
}

/// Runs `req` on a fresh fixture with a visitor failing on step `k`.
fn fail_at(req: &ReqKind, k: usize) -> FailRun {
    let mut vm = fixture();
    let before = Snapshot::of(&vm);
    let ops = match *req {
        ReqKind::Map(m) => vm.sm_map_ops(m),
        ReqKind::Unmap(a, l) => vm.sm_unmap_ops(a, l),
    }
    .expect("valid")
    .ops()
    .to_vec();
    let mut retired = RetiredList::new();
    let mut rec = Recorder::failing_at(42, k);
    let mut pool = reserve(3);
    let result = match *req {
        ReqKind::Map(m) => vm
            .sm_map(m, &mut pool, &mut retired, &mut rec)
            .map_err(|e| format!("{e:?}")),
        ReqKind::Unmap(a, l) => vm
            .sm_unmap(a, l, &mut pool, &mut retired, &mut rec)
            .map_err(|e| format!("{e:?}")),
    };
    let applied = k.min(ops.len());
    assert_eq!(rec.ops.as_slice(), &ops[..applied]);
    let taken: usize = ops[..applied].iter().map(nodes_inserted).sum();
    assert_eq!(
        3 - pool.len(),
        taken,
        "nodes taken by the applied steps only"
    );
    FailRun {
        vm,
        ops,
        before,
        retired,
        result,
    }
}

#[derive(Clone, Copy, Debug)]
enum ReqKind {
    Map(Mapping),
    Unmap(u64, u64),
}

#[test]
fn failing_visitor_leaves_exactly_the_earlier_steps() {
    // gpuvm-semantics.md E10 / U1 shapes: Remap(A), Unmap(B), Remap(C) [, Map].
    let reqs = [
        ReqKind::Map(Mapping::new(150, 250, obj(4), 0)),
        ReqKind::Unmap(150, 250),
    ];
    for req in reqs {
        let n_ops = match req {
            ReqKind::Map(_) => 4,
            ReqKind::Unmap(..) => 3,
        };
        for k in 0..=n_ops {
            let FailRun {
                mut vm,
                ops,
                before,
                retired,
                result: r,
            } = fail_at(&req, k);
            assert_eq!(ops.len(), n_ops);
            let ctx = format!("{req:?} failing at step {k}");
            if k < n_ops {
                let want = match req {
                    ReqKind::Map(_) => format!("{:?}", MapError::Visitor(StepFailed(k))),
                    ReqKind::Unmap(..) => format!("{:?}", UnmapError::Visitor(StepFailed(k))),
                };
                assert_eq!(r, Err(want), "{ctx}");
            } else {
                assert_eq!(r, Ok(()), "{ctx}");
            }
            // The tree is consistent and holds exactly the first k steps.
            assert_consistent(&vm);
            let mut model = model_of(&before);
            model.apply_ops(&ops[..k], 42).expect("prefix applies");
            assert_eq!(Snapshot::of(&vm).mappings, model.mappings(), "{ctx}");
            assert_eq!(
                vm.generation(),
                before.generation + u64::from(k > 0),
                "{ctx}"
            );
            let removed: Vec<Mapping> = ops[..k].iter().filter_map(removed_by).collect();
            let mut got: Vec<Mapping> = retired.iter().map(|v| v.mapping()).collect();
            got.reverse();
            assert_eq!(got, removed, "{ctx}");
            // Retrying the request on the partly updated tree completes it.
            let mut retired = RetiredList::new();
            match req {
                ReqKind::Map(m) => vm
                    .sm_map(m, &mut reserve(3), &mut retired, &mut Apply::new(42))
                    .expect("retry"),
                ReqKind::Unmap(a, l) => vm
                    .unmap(a, l, &mut reserve(2), &mut retired)
                    .expect("retry"),
            }
            let mut full = model_of(&before);
            full.apply_ops(&ops, 42).expect("ops apply");
            assert_eq!(Snapshot::of(&vm).mappings, full.mappings(), "{ctx}: retry");
        }
    }
}

/// A visitor that applies its step (so it holds the completion token) and then reports an error.
struct ApplyThenFail;

impl SmVisitor<u64, BoxNode<u64>> for ApplyThenFail {
    type Error = &'static str;
    fn step_map<'op>(
        &mut self,
        op: OpMap<'op, u64, BoxNode<u64>>,
    ) -> Result<OpMapped<'op>, &'static str> {
        let _done = op.insert(7);
        Err("map failed after applying")
    }
    fn step_remap<'op>(
        &mut self,
        op: OpRemap<'op, u64, BoxNode<u64>>,
    ) -> Result<OpRemapped<'op>, &'static str> {
        let _done = op.remap();
        Err("remap failed after applying")
    }
    fn step_unmap<'op>(
        &mut self,
        op: OpUnmap<'op, u64, BoxNode<u64>>,
    ) -> Result<OpUnmapped<'op>, &'static str> {
        let _done = op.remove();
        Err("unmap failed after applying")
    }
}

/// A visitor that consumed its op before failing has applied it: the walk keeps that step (the
/// only consistent choice; the driver may already have written PTEs for it) and stops.
/// (`MapError::Visitor`'s docs say "the step that failed was not applied", which holds only for
/// visitors that fail before consuming the op.)
#[test]
fn visitor_failing_after_applying_keeps_that_step() {
    let mut vm = fixture();
    let before = Snapshot::of(&vm);
    let req = Mapping::new(150, 250, obj(4), 0);
    let ops = vm.sm_map_ops(req).expect("valid").ops().to_vec();
    let mut retired = RetiredList::new();
    let r = vm.sm_map(req, &mut reserve(3), &mut retired, &mut ApplyThenFail);
    assert_eq!(r, Err(MapError::Visitor("remap failed after applying")));
    assert_consistent(&vm);
    let mut model = model_of(&before);
    model.apply_ops(&ops[..1], 7).expect("first op");
    assert_eq!(Snapshot::of(&vm).mappings, model.mappings());
    assert_eq!(retired.len(), 1);
}

#[test]
fn lying_pool_stops_consistently() {
    // B3: Remap(A: prev + next) then Map: 3 nodes; the pool claims 3 but holds fewer.
    let req = Mapping::new(120, 10, obj(4), 0);
    for real in 0..=3usize {
        let mut vm = fixture();
        let before = Snapshot::of(&vm);
        let ops = vm.sm_map_ops(req).expect("valid").ops().to_vec();
        assert_eq!(ops.len(), 2);
        let mut pool = LyingPool {
            nodes: (0..real)
                .map(|_| BoxNode::try_new(0).expect("test allocation"))
                .collect(),
            claim: MAX_MAP_NODES,
        };
        let mut retired = RetiredList::new();
        let mut rec = Recorder::new(5);
        let r = vm.sm_map(req, &mut pool, &mut retired, &mut rec);
        assert_consistent(&vm);
        // Remap needs 2 nodes, Map 1.
        let (want, applied, strays) = match real {
            0 => (Err(MapError::ReservationExhausted), 0, 0),
            1 => (Err(MapError::ReservationExhausted), 0, 1),
            2 => (Err(MapError::ReservationExhausted), 1, 0),
            _ => (Ok(()), 2, 0),
        };
        assert_eq!(r, want, "{real} real nodes");
        let mut model = model_of(&before);
        model.apply_ops(&ops[..applied], 5).expect("prefix");
        assert_eq!(
            Snapshot::of(&vm).mappings,
            model.mappings(),
            "{real} real nodes"
        );
        assert_eq!(vm.generation(), before.generation + u64::from(applied > 0));
        // No node is lost: each is in the tree, retired (removed or stray) or still pooled.
        let removed = ops[..applied].iter().filter_map(removed_by).count();
        assert_eq!(retired.len(), removed + strays, "{real} real nodes");
        assert_eq!(
            vm.len() + retired.len() + pool.nodes.len(),
            before.len + real,
            "{real} real nodes"
        );
        assert!(!MapError::<StepFailed>::ReservationExhausted
            .to_string()
            .is_empty());
    }
    // U2: Remap(A: prev + next) needs 2; one real node is a stray, nothing changes.
    let mut vm = fixture();
    let before = Snapshot::of(&vm);
    let mut pool = LyingPool {
        nodes: vec![BoxNode::try_new(0).expect("test allocation")],
        claim: MAX_UNMAP_NODES,
    };
    let mut retired = RetiredList::new();
    let r = vm.sm_unmap(120, 10, &mut pool, &mut retired, &mut Recorder::new(0));
    assert_eq!(r, Err(UnmapError::ReservationExhausted));
    assert_eq!(Snapshot::of(&vm), before);
    assert_eq!((retired.len(), pool.nodes.len()), (1, 0));
}

#[test]
fn failing_sink_stops_the_walk() {
    let vm = fixture();
    let before = Snapshot::of(&vm);
    let req = Mapping::new(150, 250, obj(4), 0);
    let all = vm.sm_map_ops(req).expect("valid").ops().to_vec();
    for k in 0..all.len() {
        let mut seen = Vec::new();
        let r = vm.sm_map_walk(req, |op| {
            if seen.len() == k {
                Err("full")
            } else {
                seen.push(op);
                Ok(())
            }
        });
        assert_eq!(r, Err(OpsError::Sink("full")));
        assert_eq!(seen.as_slice(), &all[..k]);
        assert!(!OpsError::Sink("full").to_string().is_empty());
    }
    assert_eq!(Snapshot::of(&vm), before);
}
