//! Scale and attack: a million pages' worth of random requests, then unmapping the whole space,
//! leaves an empty tree; the orders that degenerated the previous storage's treap into a path
//! (ascending, descending, alternating ends, hole punching) keep every tree within the heights
//! `bounds()` derives from the geometry (O(log n)) at 100k-300k mappings, no request draws more
//! nodes than its bound, and `clear` and drop of 300k mappings run on a 16 KiB stack.
//!
//! No timing thresholds: the costs are bounded through heights and node counts, which the
//! B+tree's O(log n) per operation follows from.

use gpuva::{BoxNode, GpuVm, LinkPin, Mapping, ObjId, Request};
use tests::harness::Rng;
use tests::model::check_invariants;

const PAGE: u64 = 0x1000;

type Vm = GpuVm<(), BoxNode<()>>;

/// Runs one request with a claim of its bound; checks the bound and the heights.
fn run(vm: &mut Vm, req: Request) {
    let need = vm.nodes_for(&req);
    let mut claim = vm.reserve_boxed(need).expect("test allocation");
    let t = vm.nodes_taken();
    vm.step(req, &mut claim, &mut gpuva::Apply::default())
        .unwrap_or_else(|e| panic!("{req:?}: {e:?}"));
    let drawn = vm.nodes_taken() - t;
    assert!(drawn <= need as u64, "{req:?} drew {drawn} > {need}");
    assert!(vm.release(claim).is_ok());
}

fn map(vm: &mut Vm, m: Mapping) {
    run(vm, Request::Map(m));
}

fn unmap(vm: &mut Vm, addr: u64, len: u64) {
    run(vm, Request::Unmap { addr, len });
}

/// Every tree within its height bound (the maximum for the geometry: logarithmic in it).
fn assert_bounded(vm: &Vm, what: &str) {
    let h = vm.heights();
    let b = vm.bounds();
    eprintln!("{what}: heights {h:?} at {} mappings ({b:?})", vm.len());
    assert!(
        h[0] <= b.va_height && h[1] <= b.obj_height && h[2] <= b.link_height,
        "{what}: heights {h:?} beyond {b:?}"
    );
    // And logarithmic in the actual count: a B+tree of n entries with half-full nodes of at
    // least 8 entries / 16 children has height <= 1 + log16(n / 8) + 1.
    let n = vm.len().max(1) as f64;
    let log = 2.0 + (n / 8.0).max(1.0).log(16.0);
    assert!(
        h[0] as f64 <= log,
        "{what}: height {} for {n} mappings",
        h[0]
    );
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

/// A VA space of `pages` pages at 4 KiB granularity, optionally with links and the pin that lets
/// every mapping use object 1.
fn space(pages: u64, links: bool) -> (Vm, Option<LinkPin>) {
    let vm = Vm::with_granule(0..pages * PAGE, 0..0, PAGE).expect("geometry");
    if !links {
        return (vm.without_links(), None);
    }
    let mut vm = vm;
    let mut claim = vm.reserve_boxed(vm.link_nodes()).expect("test allocation");
    let pin = vm
        .link_obtain(ObjId::new(1).expect("non-zero"), &mut claim, || ())
        .expect("link");
    assert!(vm.release(claim).is_ok());
    (vm, Some(pin))
}

#[test]
fn million_pages_of_random_requests_then_unmap_everything() {
    const SPACE_PAGES: u64 = 1 << 22;
    let space = PAGE..PAGE + SPACE_PAGES * PAGE;
    // A cut-out in the middle: unmapping "everything" is two requests around it.
    let cut = space.start + (SPACE_PAGES / 2) * PAGE..space.start + (SPACE_PAGES / 2 + 16) * PAGE;
    let mut vm = Vm::with_granule(space.clone(), cut.clone(), PAGE)
        .expect("geometry")
        .without_links();
    let mut rng = Rng::new(1);
    let mut pages = 0u64;
    let mut requests = 0u64;
    while pages < 1_000_000 {
        let len = 1 + rng.below(16);
        let addr = space.start + rng.below(SPACE_PAGES - len) * PAGE;
        if vm.check_range(addr, len * PAGE).is_err() {
            continue;
        }
        if rng.below(4) == 0 {
            unmap(&mut vm, addr, len * PAGE);
        } else {
            let obj = ObjId::new(rng.below(8));
            map(&mut vm, Mapping::new(addr, len * PAGE, obj, addr));
        }
        pages += len;
        requests += 1;
    }
    check(&vm);
    assert!(
        vm.len() > 50_000,
        "{} mappings after {requests} requests",
        vm.len()
    );
    assert_bounded(&vm, "random requests");

    unmap(&mut vm, space.start, cut.start - space.start);
    unmap(&mut vm, cut.end, space.end - cut.end);
    assert!(vm.is_empty(), "{} mappings left", vm.len());
    assert_eq!(vm.iter().count(), 0);
    assert_eq!(vm.heights(), [0, 0, 0]);
    check(&vm);
}

const N: u64 = 100_000;

#[test]
fn ascending_insertion_stays_logarithmic() {
    let (mut vm, pin) = space(N + 1, true);
    for i in 0..N {
        map(
            &mut vm,
            Mapping::new(i * PAGE, PAGE, ObjId::new(1), i * PAGE),
        );
    }
    assert_eq!(vm.len(), 100_000);
    assert_bounded(&vm, "ascending adjacent mappings, one object");
    check(&vm);
    assert_eq!(
        vm.link(ObjId::new(1).expect("non-zero"))
            .map(|l| l.mappings()),
        Some(N)
    );
    assert!(vm.link_put(pin.expect("links on")).is_ok());
}

#[test]
fn hole_punching_stays_logarithmic() {
    // One big mapping, then unmap every other page in ascending order: each unmap splits the last
    // piece (a Remap with prev and next), the classic sequential pattern for a split tree.
    let (mut vm, pin) = space(2 * N, true);
    map(&mut vm, Mapping::new(0, 2 * N * PAGE, ObjId::new(1), 0));
    for i in 0..N - 1 {
        unmap(&mut vm, (2 * i + 1) * PAGE, PAGE);
    }
    assert_eq!(vm.len(), 100_000);
    assert_bounded(&vm, "hole punching");
    check(&vm);
    // Every piece kept its translation, and stayed on the object's link.
    for (i, v) in (0u64..).zip(vm.iter()) {
        assert_eq!((v.addr(), v.offset()), (2 * i * PAGE, 2 * i * PAGE));
    }
    let obj = ObjId::new(1).expect("non-zero");
    assert_eq!(vm.link(obj).map(|l| l.mappings()), Some(N));
    assert!(vm.link_addrs(obj).eq((0..N).map(|i| 2 * i * PAGE)));
    // Unmap everything: empty; the pin keeps the emptied link.
    unmap(&mut vm, 0, 2 * N * PAGE);
    assert!(vm.is_empty());
    assert_eq!(vm.link(obj).map(|l| l.mappings()), Some(0));
    assert!(vm.link_put(pin.expect("links on")).is_ok());
    assert!(vm.link(obj).is_none(), "an unpinned empty link is a zombie");
}

/// Stack for the teardown threads: 16 KiB, a kernel stack (the previous storage overflowed it
/// dropping a 600-mapping path). The brief allowed 64 KiB in case the Rust runtime needs more for
/// the thread itself; it does not (measured, also unoptimised), as long as the thread does no
/// formatting: the closures only return values, and the assertions run on the test thread.
const STACK: usize = 16 * 1024;

/// 300k mappings in the alternating-ends order (lowest free slot, highest free slot, ...), the
/// path attack on the previous treap; one object, with links.
fn alternating(n: u64) -> Vm {
    let (mut vm, pin) = space(2 * n, true);
    let (mut lo, mut hi) = (0u64, n - 1);
    for i in 0..n {
        let slot = if i % 2 == 0 {
            lo += 1;
            lo - 1
        } else {
            hi -= 1;
            hi + 1
        };
        // Gaps between mappings keep every one separate.
        let a = 2 * slot * PAGE;
        map(&mut vm, Mapping::new(a, PAGE, ObjId::new(1), a));
    }
    assert!(vm.link_put(pin.expect("links on")).is_ok());
    vm
}

/// 300k mappings in descending order, no links.
fn descending(n: u64) -> Vm {
    let (mut vm, _) = space(2 * n, false);
    for i in (0..n).rev() {
        map(&mut vm, Mapping::new(2 * i * PAGE, PAGE, None, 0));
    }
    vm
}

#[test]
fn path_attack_orders_clear_and_drop_on_a_small_stack() {
    const M: u64 = 300_000;
    let mut alt = alternating(M);
    assert_eq!(alt.len() as u64, M);
    assert_bounded(&alt, "alternating ends, one object");
    check(&alt);
    let desc = descending(M);
    assert_eq!(desc.len() as u64, M);
    assert_bounded(&desc, "descending");
    let worker = std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(move || {
            let mut n = 0u64;
            alt.clear(|_, ()| n += 1);
            let heights = alt.heights();
            let spare = alt.spare_nodes();
            alt.drain_zombies(|_, ()| {});
            let links_left = alt.links().count();
            drop(alt);
            drop(desc);
            (n, heights, spare, links_left)
        })
        .expect("spawn");
    let (n, heights, spare, links_left) = worker.join().expect("no stack overflow");
    assert_eq!(n, M, "clear handed back every mapping");
    assert_eq!(
        heights[..2],
        [0, 0],
        "clear emptied the mapping tree and object index"
    );
    assert!(
        spare as u64 >= M / 16,
        "clear put the nodes in the spare cache"
    );
    assert_eq!(links_left, 0);
}

/// The teardown's stack use does not grow with the tree: the same small stack suffices for a
/// small tree and a 10x larger one (the 300k run above is the large case).
#[test]
fn clear_and_drop_use_constant_stack_at_any_size() {
    for n in [3_000u64, 30_000] {
        let mut a = descending(n);
        let b = descending(n);
        std::thread::Builder::new()
            .stack_size(STACK)
            .spawn(move || {
                a.clear(|_, ()| {});
                drop(a);
                drop(b);
            })
            .expect("spawn")
            .join()
            .expect("no stack overflow");
    }
}
