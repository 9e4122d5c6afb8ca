//! One test per error class: the error is the documented one and every structure is unchanged
//! afterwards (the whole observable [`State`]: mappings with payloads, generation, len, spare and
//! claimed nodes, nodes taken, links with counts, pins, flags, data and addresses, heights), or,
//! where the error reports partial progress (a failing visitor), the tree is consistent and holds
//! exactly the steps before the failure.
//!
//! (The previous storage's lying pools and `NodeReserve` capacity errors have no counterpart: a
//! claim is checked against the VA space's own spare cache, and bags hold any number of nodes.)

use gpuva::{
    Apply, ApplyError, BoxNode, Claim, GpuVm, LinkError, LinkPin, Mapping, NewError, NodeBag,
    ObjId, Op, OpMap, OpMapped, OpRemap, OpRemapped, OpUnmap, OpUnmapped, OpsError, RangeError,
    Request, ReserveError, SmVisitor, StepError,
};
use tests::harness::{Recorder, State, StepFailed};
use tests::model::{check_invariants, removed_by, Model};

type Vm = GpuVm<u64, BoxNode<u64>>;
type Snap = State<u64, ()>;

/// Unit pages: the space is `[10, 1000)` with the cut-out `[600, 700)`.
const SPACE: std::ops::Range<u64> = 10..1000;
const CUT: std::ops::Range<u64> = 600..700;

fn obj(n: u64) -> Option<ObjId> {
    ObjId::new(n)
}

fn id(n: u64) -> ObjId {
    ObjId::new(n).expect("non-zero")
}

/// A claim of `need` nodes plus a pin of `o` (if any).
fn prepare(vm: &mut Vm, need: usize, o: Option<ObjId>) -> (Claim, Option<LinkPin>) {
    let extra = if o.is_some() { vm.link_nodes() } else { 0 };
    let mut claim = vm.reserve_boxed(need + extra).expect("test allocation");
    let pin = o.map(|o| vm.link_obtain(o, &mut claim, || ()).expect("link"));
    (claim, pin)
}

fn finish(vm: &mut Vm, claim: Claim, pin: Option<LinkPin>) {
    assert!(vm.release(claim).is_ok());
    if let Some(p) = pin {
        assert!(vm.link_put(p).is_ok());
    }
}

/// Maps `m` with payload `data` through the driver flow.
fn map_with(vm: &mut Vm, m: Mapping, data: u64) {
    let (mut claim, pin) = prepare(vm, vm.nodes_for(&Request::Map(m)), m.obj);
    vm.step(Request::Map(m), &mut claim, &mut Apply::new(data))
        .expect("valid map");
    finish(vm, claim, pin);
}

fn unmap(vm: &mut Vm, addr: u64, len: u64) {
    let (mut claim, pin) = prepare(vm, vm.nodes_for(&Request::Unmap { addr, len }), None);
    vm.unmap(addr, len, &mut claim).expect("valid unmap");
    finish(vm, claim, pin);
}

/// A = [100,200) X@0, B = [200,300) Y@0, C = [350,450) Z@10, D = [500,600) NULL (touching the
/// cut-out), E = [700,800) X@0 (touching its other edge); payloads 1..=5. Links for X, Y, Z.
fn fixture() -> Vm {
    let mut vm = Vm::new(SPACE, CUT).expect("geometry");
    let maps = [
        Mapping::new(100, 100, obj(1), 0),
        Mapping::new(200, 100, obj(2), 0),
        Mapping::new(350, 100, obj(3), 10),
        Mapping::new(500, 100, None, 0),
        Mapping::new(700, 100, obj(1), 0),
    ];
    for (d, m) in (1..).zip(maps) {
        map_with(&mut vm, m, d);
    }
    assert_eq!(vm.len(), 5);
    vm
}

fn model_of(snap: &Snap) -> Model {
    Model::from_mappings(SPACE, CUT, 1, &snap.mappings).expect("valid tree")
}

fn assert_consistent(vm: &Vm) {
    let list: Vec<Mapping> = vm.iter().map(|v| v.mapping()).collect();
    if let Err(e) = check_invariants(&SPACE, &CUT, &list) {
        panic!("{e}");
    }
    assert_eq!(list.len(), vm.len());
    if let Err(e) = vm.check_invariants() {
        panic!("{e}");
    }
}

#[test]
#[expect(
    clippy::reversed_empty_ranges,
    reason = "inverted ranges are the bad input under test"
)]
fn new_rejects_bad_geometry() {
    type V = GpuVm<(), BoxNode<()>>;
    let cases: [(Result<V, NewError>, NewError); 15] = [
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
        (V::with_granule(0..4096, 0..0, 3), NewError::Granule),
        (V::with_granule(0..4096, 0..0, 0), NewError::Granule),
        (V::with_granule(1..4097, 0..0, 4096), NewError::Granule),
        (V::with_granule(0..4095, 0..0, 4096), NewError::Granule),
        (V::with_granule(0..8192, 100..4096, 4096), NewError::Granule),
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
    let vm = V::with_granule(0..8192, 4096..8192, 4096).expect("aligned");
    assert_eq!(vm.check_range(0, 2048), Err(RangeError::Unaligned));
    assert_eq!(vm.check_range(2048, 4096), Err(RangeError::Reserved));
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
    // Validation comes before the claim and link checks: a full claim, an empty one, a foreign one.
    let mut other = Vm::new(SPACE, CUT).expect("geometry");
    let mut foreign = other.reserve_boxed(64).expect("test allocation");
    let need = vm.bounds().map_obj;
    let (mut full, pin) = prepare(&mut vm, need, obj(1));
    let mut empty = vm.reserve(0, &mut NodeBag::new()).expect("nothing needed");
    let before = Snap::of(&vm);
    for (addr, len, e) in BAD_RANGES {
        let ctx = format!("[{addr:#x}, +{len:#x}) -> {e:?}");
        assert_eq!(vm.check_range(addr, len), Err(e), "{ctx}");
        // A map of an object without a link: the range error still comes first.
        for m in [
            Mapping::new(addr, len, obj(1), 0),
            Mapping::new(addr, len, obj(99), 0),
        ] {
            let mut seen = 0;
            let r = vm.sm_map_walk(m, |_| {
                seen += 1;
                Ok::<(), ()>(())
            });
            assert_eq!(r, Err(OpsError::Range(e)), "{ctx}");
            let r = vm.sm_unmap_walk(addr, len, |_| {
                seen += 1;
                Ok::<(), ()>(())
            });
            assert_eq!(r, Err(OpsError::Range(e)), "{ctx}");
            assert_eq!(seen, 0, "{ctx}: sink called");
            assert_eq!(vm.sm_map_ops(m).err(), Some(OpsError::Range(e)), "{ctx}");
            assert_eq!(
                vm.sm_unmap_ops(addr, len).err(),
                Some(OpsError::Range(e)),
                "{ctx}"
            );
            for claim in [&mut full, &mut empty, &mut foreign] {
                let mut rec = Recorder::new(99);
                assert_eq!(
                    vm.step(Request::Map(m), claim, &mut rec),
                    Err(StepError::Range(e)),
                    "{ctx}"
                );
                assert_eq!(
                    vm.step(Request::Unmap { addr, len }, claim, &mut rec),
                    Err(StepError::Range(e)),
                    "{ctx}"
                );
                assert_eq!(vm.map(m, claim), Err(StepError::Range(e)));
                assert_eq!(vm.unmap(addr, len, claim), Err(StepError::Range(e)));
                assert_eq!(rec.calls, 0, "{ctx}: visitor called");
            }
        }
        assert_eq!(Snap::of(&vm), before, "{ctx}: something changed");
        assert!(!StepError::<StepFailed>::Range(e).to_string().is_empty());
    }
    assert_eq!(full.nodes(), vm.bounds().map_obj);
    assert_eq!((empty.nodes(), foreign.nodes()), (0, 64));
    // Touching the cut-out's edges and the space's edges is fine.
    for (addr, len) in [(599, 1), (700, 1), (10, 1), (999, 1), (10, 590), (700, 300)] {
        assert_eq!(vm.check_range(addr, len), Ok(addr..addr + len));
        assert!(vm.sm_map_ops(Mapping::new(addr, len, None, 0)).is_ok());
    }
    finish(&mut vm, full, pin);
    assert!(vm.release(empty).is_ok());
    assert!(other.release(foreign).is_ok());
}

#[test]
fn reservation_too_small_changes_nothing() {
    let mut vm = fixture();
    let b = vm.bounds();
    // The bound is a pure function of the request kind: even a map into a hole or an unmap of
    // nothing demands the whole bound.
    let reqs = [
        Request::Map(Mapping::new(150, 100, obj(1), 0)),
        Request::Map(Mapping::new(120, 10, None, 0)),
        Request::Map(Mapping::new(310, 20, obj(2), 0)),
        Request::Unmap { addr: 150, len: 10 },
        Request::Unmap { addr: 310, len: 20 },
    ];
    for req in reqs {
        let need = vm.nodes_for(&req);
        let want_need = match req {
            Request::Map(m) if m.obj.is_some() => b.map_obj,
            Request::Map(_) => b.map_null,
            Request::Unmap { .. } => b.unmap,
            Request::Split { .. } => b.split(),
            Request::UnmapObject { .. } => b.unmap_object(),
            Request::Prefetch { .. } => b.prefetch(),
        };
        assert_eq!(need, want_need);
        for n in [0, 1, need / 2, need - 1] {
            let mut claim = vm.reserve_boxed(n).expect("test allocation");
            let before = Snap::of(&vm);
            let mut rec = Recorder::new(9);
            let want = StepError::ReservationTooSmall {
                needed: need,
                available: n,
            };
            assert_eq!(vm.step(req, &mut claim, &mut rec), Err(want.clone()));
            let list = vm.request_ops(req).expect("valid");
            assert_eq!(list.nodes_needed(), need);
            assert_eq!(
                vm.apply_ops(&list, &mut claim, &mut rec),
                Err(ApplyError::Step(want.clone()))
            );
            assert!(!want.to_string().is_empty());
            assert_eq!((rec.calls, claim.nodes()), (0, n));
            assert_eq!(Snap::of(&vm), before);
            assert!(vm.release(claim).is_ok());
        }
    }
    // Exactly the bound is enough for the worst cases (B3 map, U2 unmap).
    map_with(&mut vm, Mapping::new(120, 10, obj(3), 0), 6);
    unmap(&mut vm, 360, 10);
    assert_consistent(&vm);
}

#[test]
fn foreign_claims_pins_and_plans_are_refused() {
    let mut vm = fixture();
    let mut other = fixture();
    let (mut theirs, their_pin) = prepare(&mut other, 64, obj(1));
    let before = Snap::of(&vm);
    let m = Mapping::new(150, 100, obj(1), 0);
    let mut rec = Recorder::new(1);
    assert_eq!(
        vm.step(Request::Map(m), &mut theirs, &mut rec),
        Err(StepError::Foreign)
    );
    assert_eq!(vm.unmap(150, 10, &mut theirs), Err(StepError::Foreign));
    assert_eq!(
        vm.link_obtain(id(1), &mut theirs, || ()),
        Err(LinkError::Foreign)
    );
    let theirs = vm.release(theirs).expect_err("foreign claim");
    assert_eq!(theirs.nodes(), 64, "untouched");
    let their_pin = their_pin.expect("pinned");
    let (their_pin, e) = vm.link_put(their_pin).expect_err("foreign pin");
    assert_eq!(e, LinkError::Foreign);
    // A plan or op list of the other VA space, at the same generation.
    assert_eq!(vm.generation(), other.generation());
    let list = other.sm_map_ops(m).expect("valid");
    let plan = *list.plan();
    let (mut mine, pin) = prepare(&mut vm, 64, None);
    let mid = Snap::of(&vm);
    assert_eq!(
        vm.apply_ops(&list, &mut mine, &mut rec),
        Err(ApplyError::Foreign)
    );
    assert_eq!(
        vm.apply_plan(&plan, &mut mine, &mut rec),
        Err(ApplyError::Foreign)
    );
    assert_eq!(mine.nodes(), 64);
    assert_eq!(Snap::of(&vm), mid);
    // Claims of different VA spaces do not combine.
    let theirs = mine.absorb(theirs).expect_err("foreign claim");
    assert_eq!(mine.nodes(), 64);
    assert_eq!(rec.calls, 0);
    finish(&mut vm, mine, pin);
    let mut snap = Snap::of(&vm);
    snap.spare = before.spare;
    snap.taken = before.taken;
    assert_eq!(
        snap, before,
        "only the prepare of `mine` touched the spare cache"
    );
    finish(&mut other, theirs, Some(their_pin));
    assert!(!ApplyError::<StepFailed>::Foreign.to_string().is_empty());
}

#[test]
fn map_without_a_link_is_refused() {
    let mut vm = fixture();
    let mut claim = vm.reserve_boxed(64).expect("test allocation");
    let before = Snap::of(&vm);
    for m in [
        Mapping::new(150, 100, obj(9), 0),
        Mapping::new(310, 20, obj(9), 0),
        Mapping::new(10, 990 - 400, obj(10), 0),
    ] {
        let mut rec = Recorder::new(1);
        let o = m.obj.expect("some");
        assert_eq!(
            vm.step(Request::Map(m), &mut claim, &mut rec),
            Err(StepError::NoLink(o))
        );
        assert_eq!(vm.map(m, &mut claim), Err(StepError::NoLink(o)));
        let list = vm.sm_map_ops(m).expect("valid");
        assert_eq!(
            vm.apply_ops(&list, &mut claim, &mut rec),
            Err(ApplyError::Step(StepError::NoLink(o)))
        );
        assert_eq!(rec.calls, 0);
        assert!(!StepError::<StepFailed>::NoLink(o).to_string().is_empty());
    }
    assert_eq!(claim.nodes(), 64);
    assert_eq!(Snap::of(&vm), before);
    // Objects that do have a link, and NULL maps, need none.
    vm.map(Mapping::new(310, 20, None, 0), &mut claim)
        .expect("NULL map");
    vm.map(Mapping::new(320, 20, obj(3), 0), &mut claim)
        .expect("linked object");
    assert!(vm.release(claim).is_ok());
    assert_consistent(&vm);
}

#[test]
fn reserve_short_bag_changes_nothing() {
    let mut vm = fixture();
    let need = vm.spare_nodes() + 10;
    let mut bag = NodeBag::try_alloc(3).expect("test allocation");
    let before = Snap::of(&vm);
    let short = vm.shortfall(need);
    assert_eq!(short, 10);
    assert_eq!(
        vm.reserve(need, &mut bag).err(),
        Some(ReserveError::Short {
            needed: 10,
            available: 3
        })
    );
    assert_eq!(bag.len(), 3);
    assert_eq!(Snap::of(&vm), before);
    assert!(!ReserveError::Short {
        needed: 1,
        available: 0
    }
    .to_string()
    .is_empty());
    // A bag of the shortfall is enough; the rest of a bigger bag stays in it.
    let mut bag = NodeBag::try_alloc(12).expect("test allocation");
    let claim = vm.reserve(need, &mut bag).expect("enough");
    assert_eq!((bag.len(), claim.nodes()), (2, need));
    assert!(vm.release(claim).is_ok());
}

#[test]
fn link_errors_change_nothing() {
    // Links disabled.
    let mut plain = Vm::new(SPACE, CUT).expect("geometry").without_links();
    let mut claim = plain.reserve_boxed(64).expect("test allocation");
    let before = Snap::of(&plain);
    assert_eq!(
        plain.link_obtain(id(1), &mut claim, || ()),
        Err(LinkError::LinksDisabled)
    );
    assert_eq!(
        plain.set_external(id(1), true),
        Err(LinkError::NoLink(id(1)))
    );
    assert_eq!(Snap::of(&plain), before);
    assert_eq!(claim.nodes(), 64);
    assert!(plain.release(claim).is_ok());

    let mut vm = fixture();
    // A claim too small for a link.
    let n = vm.link_nodes() - 1;
    let mut claim = vm.reserve_boxed(n).expect("test allocation");
    let before = Snap::of(&vm);
    assert_eq!(
        vm.link_obtain(id(9), &mut claim, || ()),
        Err(LinkError::ReservationTooSmall {
            needed: n + 1,
            available: n
        })
    );
    // Flags of an object without a live link.
    assert_eq!(vm.set_external(id(9), true), Err(LinkError::NoLink(id(9))));
    assert_eq!(vm.set_evicted(id(9), true), Err(LinkError::NoLink(id(9))));
    assert!(vm.link_data_mut(id(9)).is_none());
    assert_eq!(Snap::of(&vm), before);
    assert!(vm.release(claim).is_ok());
    // A zombie is not a live link: flag changes are refused too.
    unmap(&mut vm, 350, 100);
    assert!(vm.link(id(3)).is_none());
    let before = Snap::of(&vm);
    assert_eq!(vm.set_evicted(id(3), true), Err(LinkError::NoLink(id(3))));
    assert_eq!(Snap::of(&vm), before);
    for e in [
        LinkError::LinksDisabled,
        LinkError::Foreign,
        LinkError::TooManyLinks,
        LinkError::TooManyPins,
        LinkError::NoLink(id(1)),
    ] {
        assert!(!e.to_string().is_empty());
    }

    // Too many links: a space of 4 granules holds at most 4 mappings and 2 * 4 links (the
    // link tree's bound).
    let mut tiny = GpuVm::<u64, BoxNode<u64>>::with_granule(0..4 * 4096, 0..0, 4096).expect("g");
    let mut claim = tiny
        .reserve_boxed(9 * tiny.link_nodes())
        .expect("test allocation");
    let pins: Vec<LinkPin> = (1..=8)
        .map(|o| tiny.link_obtain(id(o), &mut claim, || ()).expect("room"))
        .collect();
    let before = Snap::of(&tiny);
    assert_eq!(
        tiny.link_obtain(id(9), &mut claim, || ()),
        Err(LinkError::TooManyLinks)
    );
    assert_eq!(claim.nodes(), tiny.link_nodes());
    assert_eq!(Snap::of(&tiny), before);
    // An existing link can still be pinned again.
    let again = tiny
        .link_obtain(id(4), &mut claim, || ())
        .expect("existing");
    assert_eq!(tiny.link(id(4)).map(|l| l.pins()), Some(2));
    assert!(tiny.release(claim).is_ok());
    for p in pins.into_iter().chain([again]) {
        assert!(tiny.link_put(p).is_ok());
    }
    tiny.drain_zombies(|_, _| {});
    assert_eq!(tiny.links().count(), 0);
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
    let mut claim = vm.reserve_boxed(256).expect("test allocation");

    // Failed requests and empty unmaps do not change the tree, so lists stay current.
    assert!(vm.map(Mapping::new(0, 0, None, 0), &mut claim).is_err());
    let mut empty = vm.reserve(0, &mut NodeBag::new()).expect("nothing needed");
    assert!(vm.unmap(120, 10, &mut empty).is_err());
    vm.unmap(310, 20, &mut claim).expect("valid");
    vm.apply_ops(&empty_list, &mut claim, &mut Apply::default())
        .expect("nothing changed: still current");

    // Any change makes every earlier list stale.
    vm.map(Mapping::new(900, 10, None, 0), &mut claim)
        .expect("valid");
    let before = Snap::of(&vm);
    for list in [&map_list, &unmap_list] {
        let mut rec = Recorder::new(1);
        let left = claim.nodes();
        assert_eq!(
            vm.apply_ops(list, &mut claim, &mut rec),
            Err(ApplyError::Stale)
        );
        assert_eq!((rec.calls, claim.nodes()), (0, left));
        assert_eq!(Snap::of(&vm), before);
    }
    assert!(!ApplyError::<StepFailed>::Stale.to_string().is_empty());

    // A list applies once; applying it again is stale.
    let list = vm.sm_unmap_ops(100, 50).expect("valid");
    vm.apply_ops(&list, &mut claim, &mut Apply::default())
        .expect("current");
    let before = Snap::of(&vm);
    assert_eq!(
        vm.apply_ops(&list, &mut claim, &mut Apply::default()),
        Err(ApplyError::Stale)
    );
    assert_eq!(Snap::of(&vm), before);

    // clear() is a change too (unless the tree was already empty).
    let list = vm.sm_unmap_ops(100, 50).expect("valid");
    vm.clear(|_, _| {});
    let g = vm.generation();
    assert_eq!(
        vm.apply_ops(&list, &mut claim, &mut Apply::default()),
        Err(ApplyError::Stale)
    );
    let list = vm.sm_unmap_ops(100, 50).expect("valid");
    vm.clear(|_, _| {});
    assert_eq!(vm.generation(), g, "clearing an empty tree changes nothing");
    vm.apply_ops(&list, &mut claim, &mut Apply::default())
        .expect("still current");
    assert!(vm.release(claim).is_ok());
    assert!(vm.release(empty).is_ok());
}

/// The result of running a request with a visitor failing on step `k`.
struct FailRun {
    vm: Vm,
    ops: Vec<Op>,
    before: Snap,
    rec: Recorder,
    result: Result<(), StepError<StepFailed>>,
}

fn map_obj(req: &Request) -> Option<ObjId> {
    match req {
        Request::Map(m) => m.obj,
        _ => None,
    }
}

/// Runs `req` on a fresh fixture with a visitor failing on step `k`.
fn fail_at(req: Request, k: usize) -> FailRun {
    let mut vm = fixture();
    let ops = vm.request_ops(req).expect("valid").ops().to_vec();
    let need = vm.nodes_for(&req);
    let (mut claim, pin) = prepare(&mut vm, need, map_obj(&req));
    let before = Snap::of(&vm);
    let mut rec = Recorder::failing_at(42, k);
    let t = vm.nodes_taken();
    let result = vm.step(req, &mut claim, &mut rec);
    assert!(vm.nodes_taken() - t <= need as u64);
    assert_eq!(
        claim.nodes(),
        0,
        "the claim is used up also when the visitor fails"
    );
    finish(&mut vm, claim, pin);
    let applied = k.min(ops.len());
    assert_eq!(rec.ops.as_slice(), &ops[..applied]);
    FailRun {
        vm,
        ops,
        before,
        rec,
        result,
    }
}

#[test]
fn failing_visitor_leaves_exactly_the_earlier_steps() {
    // docs/semantics.md E10 / U1 shapes: Remap(A), Unmap(B), Remap(C) [, Map]; and B3 / U2 (one
    // Remap with both pieces [, Map]).
    let reqs = [
        (Request::Map(Mapping::new(150, 250, obj(2), 0)), 4),
        (
            Request::Unmap {
                addr: 150,
                len: 250,
            },
            3,
        ),
        (Request::Map(Mapping::new(120, 10, None, 0)), 2),
        (Request::Unmap { addr: 120, len: 10 }, 1),
    ];
    for (req, n_ops) in reqs {
        for k in 0..=n_ops {
            let FailRun {
                mut vm,
                ops,
                before,
                rec,
                result: r,
            } = fail_at(req, k);
            assert_eq!(ops.len(), n_ops);
            let ctx = format!("{req:?} failing at step {k}");
            if k < n_ops {
                assert_eq!(r, Err(StepError::Visitor(StepFailed(k))), "{ctx}");
            } else {
                assert_eq!(r, Ok(()), "{ctx}");
            }
            // The tree is consistent and holds exactly the first k steps.
            assert_consistent(&vm);
            let mut model = model_of(&before);
            model
                .apply_ops(&ops[..k.min(n_ops)], 42)
                .expect("prefix applies");
            assert_eq!(Snap::of(&vm).mappings, model.mappings(), "{ctx}");
            assert_eq!(
                vm.generation(),
                before.generation + u64::from(k > 0),
                "{ctx}"
            );
            // Payloads of exactly the applied steps came back, in op order.
            let removed: Vec<Mapping> = ops[..k.min(n_ops)].iter().filter_map(removed_by).collect();
            let got: Vec<Mapping> = rec.removed.iter().map(|(m, _)| *m).collect();
            assert_eq!(got, removed, "{ctx}");
            // Retrying the request on the partly updated tree completes it.
            let need = vm.nodes_for(&req);
            let (mut claim, pin) = prepare(&mut vm, need, map_obj(&req));
            vm.step(req, &mut claim, &mut Apply::new(42))
                .expect("retry");
            finish(&mut vm, claim, pin);
            let mut full = model_of(&before);
            full.apply_ops(&ops, 42).expect("ops apply");
            assert_eq!(Snap::of(&vm).mappings, full.mappings(), "{ctx}: retry");
        }
    }
}

/// A visitor that applies its step (so it holds the completion token) and then reports an error.
struct ApplyThenFail;

impl SmVisitor<u64> for ApplyThenFail {
    type Error = &'static str;
    fn step_map<'op>(&mut self, op: OpMap<'op, u64>) -> Result<OpMapped<'op>, &'static str> {
        let _done = op.insert(7);
        Err("map failed after applying")
    }
    fn step_remap<'op>(&mut self, op: OpRemap<'op, u64>) -> Result<OpRemapped<'op>, &'static str> {
        let _done = op.remap();
        Err("remap failed after applying")
    }
    fn step_unmap<'op>(&mut self, op: OpUnmap<'op, u64>) -> Result<OpUnmapped<'op>, &'static str> {
        let _done = op.remove();
        Err("unmap failed after applying")
    }
}

/// A visitor that consumed its op and then failed: the step is not applied. (This test changed
/// meaning with the storage: the previous one applied the moment the op was consumed, so the
/// failing step stayed; now the walker carries a step out only after the visitor returns `Ok`, so
/// `StepError::Visitor`'s "the failing step was not applied" holds for every visitor.)
#[test]
fn visitor_failing_after_applying_does_not_keep_that_step() {
    let mut vm = fixture();
    let before = Snap::of(&vm);
    let req = Mapping::new(150, 250, obj(2), 0);
    let need = vm.nodes_for(&Request::Map(req));
    let (mut claim, pin) = prepare(&mut vm, need, None);
    let r = vm.step(Request::Map(req), &mut claim, &mut ApplyThenFail);
    assert_eq!(r, Err(StepError::Visitor("remap failed after applying")));
    assert_consistent(&vm);
    assert_eq!(Snap::of(&vm).mappings, before.mappings);
    assert_eq!(vm.generation(), before.generation);
    finish(&mut vm, claim, pin);
}

#[test]
fn failing_sink_stops_the_walk() {
    let vm = fixture();
    let before = Snap::of(&vm);
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
    assert_eq!(Snap::of(&vm), before);
}

/// `GpuVm::clear` documents that it hands each mapping to its callback "in address order".
///
/// FAILS on gpuva-v2 (eb58b28): the fixture's five mappings come back highest first. Either the
/// order or the documentation is wrong; the harness only checks that each comes back once.
#[test]
fn clear_hands_back_mappings_in_address_order() {
    let mut vm = fixture();
    let want: Vec<(Mapping, u64)> = vm.iter().map(|v| (v.mapping(), *v.data())).collect();
    let mut got = Vec::new();
    vm.clear(|m, d| got.push((m, d)));
    assert_eq!(got, want);
}
