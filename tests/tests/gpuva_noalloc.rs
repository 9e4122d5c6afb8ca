//! The run stage allocates nothing: `step` (every op shape, links on and off, a failing visitor),
//! the refusals, `link_obtain` from a claim, `link_put`, `release`, `drain_zombies` and `clear`
//! neither allocate nor free; and with the spare cache, a steady-state bind's prepare allocates
//! nothing either (`spare_cache_steady_state_allocates_nothing`).
//!
//! The counting allocator is `tests::failalloc`'s, installed for this test binary and never set to
//! fail here; it counts allocations and frees made on the current thread while armed, and the
//! guard (`no_alloc`) asserts after the region ends. `guard_detects_allocations` proves the guard
//! sees what it must.

use gpuva::{
    Apply, ApplyError, BoxNode, Claim, GpuVm, LinkPin, Mapping, Node, NodeBag, ObjId, OpMap,
    OpMapped, OpRemap, OpRemapped, OpUnmap, OpUnmapped, OpsError, RangeError, RefNode, Request,
    SmVisitor, StepError,
};
use tests::failalloc::{no_alloc, with_plan, FailAlloc, Plan, Report};
use tests::harness::Rng;
use tests::model::check_invariants;
use tests::sink::{FixedOps, Full};

#[global_allocator]
static GLOBAL: FailAlloc = FailAlloc;

/// Runs `f` with counting on. `f` should borrow what it uses: values it owns are dropped inside.
fn counting<R>(f: impl FnOnce() -> R) -> (R, Report) {
    with_plan(Plan::Never, f)
}

#[test]
fn guard_detects_allocations() {
    let (b, c) = counting(|| Box::new(5u64));
    assert_eq!((c.allocs, c.frees), (1, 0), "Box::new must be seen");
    let ((), c) = counting(|| drop(b));
    assert_eq!((c.allocs, c.frees), (0, 1), "a free must be seen");

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
    assert_eq!((c.allocs, c.frees), (0, 0));

    // Nested regions and a region's failure are reported.
    let r = std::panic::catch_unwind(|| no_alloc("deliberate", || Box::new(1u8)));
    assert!(r.is_err(), "no_alloc must fail on a deliberate Box::new");
}

/// A step visitor that allocates nothing and can fail on its N-th step; it keeps the payloads
/// handed back in a fixed buffer (a run-stage visitor frees nothing).
#[derive(Debug, Default)]
struct Tally {
    steps: usize,
    fail_at: Option<usize>,
    data: u64,
    removed: usize,
}

impl SmVisitor<u64> for Tally {
    type Error = usize;
    fn step_map<'op>(&mut self, op: OpMap<'op, u64>) -> Result<OpMapped<'op>, usize> {
        self.enter()?;
        Ok(op.insert(self.data))
    }
    fn step_remap<'op>(&mut self, op: OpRemap<'op, u64>) -> Result<OpRemapped<'op>, usize> {
        self.enter()?;
        Ok(op.remap())
    }
    fn step_unmap<'op>(&mut self, op: OpUnmap<'op, u64>) -> Result<OpUnmapped<'op>, usize> {
        self.enter()?;
        Ok(op.remove())
    }
    fn removed(&mut self, _va: Mapping, _data: u64) {
        self.removed += 1;
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

/// Prepare for `req` (outside any guarded region): a claim of its bound plus a link, and the pin.
fn prepare(vm: &mut Vm, req: &Request) -> (Claim, Option<LinkPin>) {
    let obj = match req {
        Request::Map(m) if vm.has_links() => m.obj,
        _ => None,
    };
    let need = vm.nodes_for(req) + if obj.is_some() { vm.link_nodes() } else { 0 };
    let mut claim = vm.reserve_boxed(need).expect("test allocation");
    let pin = obj.map(|o| vm.link_obtain(o, &mut claim, || ()).expect("link"));
    (claim, pin)
}

/// A VA space `[PAGE, PAGE + SPACE_PAGES * PAGE)` with a cut-out at its end and ~`n` mappings.
fn populated(n: usize, links: bool, rng: &mut Rng) -> Vm {
    let end = PAGE + SPACE_PAGES * PAGE;
    let vm = Vm::with_granule(PAGE..end + 16 * PAGE, end..end + 16 * PAGE, PAGE).expect("geometry");
    let mut vm = if links { vm } else { vm.without_links() };
    while vm.len() < n {
        let m = random_mapping(rng, 8);
        let req = Request::Map(m);
        let (mut claim, pin) = prepare(&mut vm, &req);
        vm.map(m, &mut claim).expect("valid map");
        assert!(vm.release(claim).is_ok());
        if let Some(p) = pin {
            assert!(vm.link_put(p).is_ok());
        }
    }
    vm
}

fn check(vm: &Vm) {
    let list: Vec<Mapping> = vm.iter().map(|v| v.mapping()).collect();
    let reserved = vm.reserved().unwrap_or(0..0);
    if let Err(e) = check_invariants(&vm.range(), &reserved, &list) {
        panic!("{e}");
    }
    assert_eq!(list.len(), vm.len());
    if let Err(e) = vm.check_invariants() {
        panic!("{e}");
    }
}

/// Thousands of random requests on a tree of thousands of mappings, through every entry point and
/// every refusal: nothing inside the run stage (steps, then release and link_put) allocates or
/// frees. Prepare (reserve_boxed, which may allocate the shortfall) happens before the region.
fn churn_allocates_nothing(links: bool) {
    let mut rng = Rng::new(7);
    let mut vm = populated(5000, links, &mut rng);
    let mut other = Vm::new(0..1 << 40, 0..0).expect("geometry");
    let mut foreign = other.reserve_boxed(64).expect("test allocation");
    let mut sink = Box::new(FixedOps::<512>::new());
    for i in 0..2400u64 {
        let req = random_mapping(&mut rng, 64);
        let shape = i % 12;
        let request = if matches!(shape, 2 | 3 | 11) {
            Request::Unmap {
                addr: req.addr,
                len: req.len,
            }
        } else {
            Request::Map(req)
        };
        let (mut claim, pin) = prepare(&mut vm, &request);
        // A second claim for the stale re-apply, prepared here too.
        let mut spare_claim = vm.reserve_boxed(vm.nodes_for(&request)).expect("alloc");
        let list = vm.walk(request, |_| Ok::<(), ()>(())).expect("valid");
        let ops = vm.request_ops(request).expect("valid");
        no_alloc("run stage", || {
            match shape {
                0 => vm
                    .step(request, &mut claim, &mut Apply::new(i))
                    .expect("valid"),
                1 => vm.map(req, &mut claim).expect("valid"),
                2 => vm.unmap(req.addr, req.len, &mut claim).expect("valid"),
                3 => {
                    let mut t = Tally::default();
                    vm.step(request, &mut claim, &mut t).expect("valid");
                    assert!(t.removed <= t.steps);
                }
                4 => {
                    vm.apply_ops(&ops, &mut claim, &mut Tally::default())
                        .expect("current list");
                    // Stale now (a map always changes the tree), refused without allocating.
                    let stale = vm.apply_ops(&ops, &mut spare_claim, &mut Tally::default());
                    assert_eq!(stale, Err(ApplyError::Stale));
                }
                5 => vm
                    .apply_plan(&list, &mut claim, &mut Tally::default())
                    .expect("current plan"),
                6 => {
                    // A visitor failing halfway: error path, partial apply, no allocation.
                    let mut t = Tally {
                        fail_at: Some(usize::try_from(i % 3).unwrap_or(0)),
                        ..Tally::default()
                    };
                    let r = vm.step(request, &mut claim, &mut t);
                    assert!(matches!(r, Ok(()) | Err(StepError::Visitor(_))), "{r:?}");
                }
                7 | 8 => {
                    // Refusals: invalid ranges, a short claim, a foreign claim, a missing link.
                    let bad = Mapping { len: 0, ..req };
                    let e = vm.map(bad, &mut claim);
                    assert_eq!(e, Err(StepError::Range(RangeError::ZeroSize)));
                    let e = vm.unmap(u64::MAX, 2, &mut claim);
                    assert_eq!(e, Err(StepError::Range(RangeError::Overflow)));
                    let e = vm.unmap(req.addr + 1, req.len, &mut claim);
                    assert_eq!(e, Err(StepError::Range(RangeError::Unaligned)));
                    let e = vm.map(req, &mut foreign);
                    assert_eq!(e, Err(StepError::Foreign));
                    if links && req.obj.is_some() {
                        let stranger = Mapping {
                            obj: ObjId::new(1000 + i),
                            ..req
                        };
                        let e = vm.map(stranger, &mut claim);
                        assert_eq!(e, Err(StepError::NoLink(stranger.obj.expect("some"))));
                    }
                    let end = vm.range().end;
                    let e = vm.unmap(end - 17 * PAGE, 2 * PAGE, &mut claim);
                    assert_eq!(e, Err(StepError::Range(RangeError::Reserved)));
                    let mut empty = vm.reserve(0, &mut NodeBag::new()).expect("no nodes needed");
                    let e = vm.map(req, &mut empty);
                    assert!(matches!(e, Err(StepError::ReservationTooSmall { .. })));
                    assert!(vm.release(empty).is_ok());
                    vm.step(request, &mut claim, &mut Tally::default())
                        .expect("valid");
                }
                9 => {
                    // Recording into a fixed sink, then applying exactly that plan.
                    sink.clear();
                    match vm.walk(request, |op| sink.try_push(op)) {
                        Ok(plan) => vm
                            .apply_plan(&plan, &mut claim, &mut Tally::default())
                            .expect("current"),
                        Err(e) => assert_eq!(e, OpsError::Sink(Full)),
                    }
                }
                10 => {
                    // Lookups and link queries.
                    let mut n = 0usize;
                    n += usize::from(vm.lookup(req.addr).is_some());
                    n += usize::from(vm.find(req.addr, req.len).is_some());
                    n += usize::from(vm.find_prev(req.addr).is_some());
                    n += usize::from(vm.find_next(req.end()).is_some());
                    n += vm.iter_range(req.range()).count();
                    n += usize::from(vm.find_first(req.range()).is_some());
                    n += usize::from(vm.is_range_empty(req.range()));
                    if let Some(o) = req.obj {
                        n += vm.link_addrs(o).count();
                        n += vm.link_mappings(o).count();
                        n += usize::from(vm.link(o).is_some());
                    }
                    n += vm.links().count() + vm.evicted_links().count();
                    n += vm.external_links().count();
                    assert!(n < 1 << 20);
                    vm.step(request, &mut claim, &mut Tally::default())
                        .expect("valid");
                }
                _ => {
                    let mut t = Tally::default();
                    vm.step(request, &mut claim, &mut t).expect("valid");
                    if let Some(o) = req.obj.filter(|_| links) {
                        assert!(vm.set_evicted(o, i % 2 == 0).is_ok() || vm.link(o).is_none());
                        vm.drain_zombies(|_, ()| {});
                    }
                }
            }
            // Cleanup stage: give back the claims and the pin.
            assert!(vm.release(claim).is_ok());
            assert!(vm.release(spare_claim).is_ok());
            if let Some(p) = pin {
                assert!(vm.link_put(p).is_ok());
            }
        });
        if i % 500 == 0 {
            check(&vm);
        }
    }
    check(&vm);
    assert!(vm.len() > 1000);
    assert!(other.release(foreign).is_ok());
    let n = vm.len();
    let mut seen = 0usize;
    no_alloc("clear", || vm.clear(|_, _| seen += 1));
    assert_eq!(seen, n);
    assert!(vm.is_empty());
    no_alloc("drain_zombies", || vm.drain_zombies(|_, ()| {}));
    assert_eq!(vm.links().count(), 0);
    check(&vm);
}

#[test]
fn run_stage_with_links_allocates_nothing() {
    churn_allocates_nothing(true);
}

#[test]
fn run_stage_without_links_allocates_nothing() {
    churn_allocates_nothing(false);
}

/// The spare cache in steady state: prepare (`shortfall`, a bag of that many nodes, `reserve`),
/// run, cleanup (`release`, `link_put`) on churn. After warm-up, merges refill the cache, so
/// `shortfall` is 0 on almost every request, and the whole bind (all three stages) allocates
/// nothing. Prints the measured allocations per bind.
#[test]
fn spare_cache_steady_state_allocates_nothing() {
    let mut rng = Rng::new(99);
    let mut vm = populated(3000, true, &mut rng);
    // Churn at a stable population: every map is undone by an unmap of the same range 64 binds
    // later (a buffer's lifetime), so the tree neither grows nor shrinks on average.
    let mut reqs: Vec<(Mapping, bool)> = Vec::new();
    let mut live = std::collections::VecDeque::new();
    while reqs.len() < 8000 {
        let m = random_mapping(&mut rng, 32);
        reqs.push((m, false));
        live.push_back(m);
        if live.len() > 64 {
            let old = live.pop_front().expect("non-empty");
            reqs.push((old, true));
        }
    }
    let bind = |vm: &mut Vm, req: Mapping, unmap: bool, i: usize| -> usize {
        let request = if unmap {
            Request::Unmap {
                addr: req.addr,
                len: req.len,
            }
        } else {
            Request::Map(req)
        };
        // prepare
        let obj = req.obj.filter(|_| !unmap);
        let need = vm.nodes_for(&request) + if obj.is_some() { vm.link_nodes() } else { 0 };
        let short = vm.shortfall(need);
        let mut bag = NodeBag::try_alloc(short).expect("test allocation");
        let mut claim = vm.reserve(need, &mut bag).expect("bag of the shortfall");
        let pin = obj.map(|o| vm.link_obtain(o, &mut claim, || ()).expect("link"));
        // run
        let mut t = Tally {
            data: u64::try_from(i).unwrap_or(0),
            ..Tally::default()
        };
        vm.step(request, &mut claim, &mut t).expect("valid");
        // cleanup
        assert!(vm.release(claim).is_ok());
        if let Some(p) = pin {
            assert!(vm.link_put(p).is_ok());
        }
        short
    };
    // Warm-up: the first binds fill the cache up to what the churn needs.
    const WARM: usize = 2000;
    for (i, &(req, unmap)) in reqs[..WARM].iter().enumerate() {
        bind(&mut vm, req, unmap, i);
    }
    let mut shortfalls = 0usize;
    let mut short_nodes = 0usize;
    let binds = reqs.len() - WARM;
    let len0 = vm.len();
    let ((), c) = counting(|| {
        for (i, &(req, unmap)) in reqs[WARM..].iter().enumerate() {
            let s = bind(&mut vm, req, unmap, i);
            shortfalls += usize::from(s > 0);
            short_nodes += s;
        }
    });
    let per_bind = c.allocs as f64 / binds as f64;
    println!(
        "steady state: {} allocations, {} frees in {binds} binds ({per_bind:.4} per bind); \
         {shortfalls} binds had a shortfall ({short_nodes} nodes); {len0} -> {} mappings",
        c.allocs,
        c.frees,
        vm.len()
    );
    check(&vm);
    // Allocations are exactly the shortfall's nodes (one per node), nothing else.
    assert_eq!(c.allocs, short_nodes as u64);
    assert_eq!(
        c.frees, 0,
        "nothing is freed: surplus stays in the cache until trim"
    );
    assert!(
        shortfalls * 100 <= binds,
        "{shortfalls} of {binds} binds needed to allocate"
    );
    // trim hands the surplus out; freeing it is the caller's business outside the lock.
    let claimed = vm.claimed_nodes();
    let bag = vm.trim(0);
    assert_eq!(vm.spare_nodes(), claimed);
    drop(bag);
}

/// Core-only storage: nodes are slots of a caller array ([`RefNode`]); requests, link operations,
/// clear and trim run without any allocator involvement, and every slot comes back.
#[test]
fn ref_nodes_in_a_caller_array() {
    const SLOTS: usize = 128;
    type R<'a> = RefNode<'a, ()>;
    let mut slots: std::mem::ManuallyDrop<[Node<(), (), R<'_>>; SLOTS]> =
        std::mem::ManuallyDrop::new(std::array::from_fn(|_| Node::new()));
    let mut bag: NodeBag<(), (), R<'_>> = NodeBag::new();
    for slot in slots.iter_mut() {
        bag.push(RefNode::new(slot));
    }
    let mut vm = GpuVm::<(), R<'_>>::with_granule(0..64 * PAGE, 0..0, PAGE).expect("geometry");
    let mut rng = Rng::new(3);
    let reqs: Vec<(u64, u64, bool, u64)> = (0..5000)
        .map(|_| {
            let pages = 1 + rng.below(8);
            (
                rng.below(64 - pages) * PAGE,
                pages * PAGE,
                rng.below(3) == 0,
                1 + rng.below(3),
            )
        })
        .collect();
    no_alloc("RefNode run", || {
        for &(addr, len, unmap, o) in &reqs {
            let obj = ObjId::new(o).expect("non-zero");
            let request = if unmap {
                Request::Unmap { addr, len }
            } else {
                Request::Map(Mapping::new(addr, len, Some(obj), addr))
            };
            let need = vm.nodes_for(&request) + vm.link_nodes();
            let mut claim = vm.reserve(need, &mut bag).expect("enough slots");
            let pin = vm.link_obtain(obj, &mut claim, || ()).expect("link");
            vm.step(request, &mut claim, &mut Apply::default())
                .expect("valid");
            assert!(vm.release(claim).is_ok());
            assert!(vm.link_put(pin).is_ok());
        }
        vm.clear(|_, ()| {});
        vm.drain_zombies(|_, ()| {});
        let mut back = vm.trim(0);
        bag.append(&mut back);
    });
    assert!(vm.is_empty());
    assert_eq!(vm.heights(), [0, 0, 0]);
    assert_eq!(bag.len(), SLOTS, "every slot came back");
}
