//! Scale: a million pages' worth of random requests, then unmapping the whole space, leaves an
//! empty tree; the treap's depth stays logarithmic at 100k mappings whatever the address pattern
//! (random, sequential ascending and descending, hole punching).

use gpuva::{BoxNode, GpuVm, Mapping, NodePool, ObjId, RetiredList};
use tests::harness::Rng;
use tests::model::check_invariants;

const PAGE: u64 = 0x1000;

type Vm = GpuVm<(), BoxNode<()>>;

/// A pool that tops itself up from the heap: test setup, not the run stage.
struct Refill(Vec<BoxNode<()>>);

impl Refill {
    fn new() -> Self {
        Self(Vec::new())
    }
    fn top_up(&mut self) -> &mut Self {
        while self.0.len() < gpuva::MAX_MAP_NODES {
            self.0.push(BoxNode::try_new(()).expect("test allocation"));
        }
        self
    }
}

impl NodePool<BoxNode<()>> for Refill {
    fn available(&self) -> usize {
        self.0.len()
    }
    fn take(&mut self) -> Option<BoxNode<()>> {
        self.0.pop()
    }
}

fn map(vm: &mut Vm, pool: &mut Refill, retired: &mut RetiredList<(), BoxNode<()>>, m: Mapping) {
    vm.map(m, pool.top_up(), retired).expect("valid map");
}

fn unmap(
    vm: &mut Vm,
    pool: &mut Refill,
    retired: &mut RetiredList<(), BoxNode<()>>,
    a: u64,
    l: u64,
) {
    vm.unmap(a, l, pool.top_up(), retired).expect("valid unmap");
}

/// Depth bound: `4 * log2(n)`; a random treap's depth is about `2 ln n` (1.39 log2 n) on average
/// and stays below ~3 log2 n with overwhelming probability.
fn assert_log_depth(vm: &Vm, what: &str) {
    let n = vm.len();
    let bound = 4 * (usize::BITS - n.leading_zeros()) as usize;
    let depth = vm.depth();
    eprintln!("{what}: depth {depth} at {n} mappings (bound {bound})");
    assert!(
        depth < bound,
        "{what}: depth {depth} at {n} mappings (bound {bound})"
    );
}

fn check(vm: &Vm) {
    let list: Vec<Mapping> = vm.iter().map(|v| v.mapping()).collect();
    let reserved = vm.reserved().unwrap_or(0..0);
    if let Err(e) = check_invariants(&vm.range(), &reserved, &list) {
        panic!("{e}");
    }
    assert_eq!(list.len(), vm.len());
}

#[test]
fn million_pages_of_random_requests_then_unmap_everything() {
    const SPACE_PAGES: u64 = 1 << 22;
    let space = PAGE..PAGE + SPACE_PAGES * PAGE;
    // A cut-out in the middle: unmapping "everything" is two requests around it.
    let cut = space.start + (SPACE_PAGES / 2) * PAGE..space.start + (SPACE_PAGES / 2 + 16) * PAGE;
    let mut vm = Vm::new(space.clone(), cut.clone()).expect("geometry");
    let mut pool = Refill::new();
    let mut retired = RetiredList::new();
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
            unmap(&mut vm, &mut pool, &mut retired, addr, len * PAGE);
        } else {
            let obj = ObjId::new(rng.below(8));
            map(
                &mut vm,
                &mut pool,
                &mut retired,
                Mapping::new(addr, len * PAGE, obj, addr),
            );
        }
        while retired.pop().is_some() {}
        pages += len;
        requests += 1;
    }
    check(&vm);
    assert!(
        vm.len() > 50_000,
        "{} mappings after {requests} requests",
        vm.len()
    );
    assert_log_depth(&vm, "random requests");

    let n = vm.len();
    unmap(
        &mut vm,
        &mut pool,
        &mut retired,
        space.start,
        cut.start - space.start,
    );
    unmap(
        &mut vm,
        &mut pool,
        &mut retired,
        cut.end,
        space.end - cut.end,
    );
    assert!(vm.is_empty(), "{} mappings left", vm.len());
    assert_eq!(vm.iter().count(), 0);
    assert_eq!(vm.depth(), 0);
    assert_eq!(retired.len(), n, "every mapping retired exactly once");
    // Nothing needed a piece: unmapping whole ranges only removes.
    assert_eq!(pool.available(), gpuva::MAX_MAP_NODES);
}

const N: u64 = 100_000;

#[test]
fn sequential_ascending_insertion_stays_logarithmic() {
    let mut vm = Vm::new(0..(N + 1) * PAGE, 0..0).expect("geometry");
    let (mut pool, mut retired) = (Refill::new(), RetiredList::new());
    for i in 0..N {
        let m = Mapping::new(i * PAGE, PAGE, ObjId::new(1), i * PAGE);
        map(&mut vm, &mut pool, &mut retired, m);
    }
    assert_eq!(vm.len(), 100_000);
    assert_log_depth(&vm, "ascending adjacent mappings");
    check(&vm);
}

#[test]
fn sequential_descending_insertion_stays_logarithmic() {
    let mut vm = Vm::new(0..2 * N * PAGE, 0..0)
        .expect("geometry")
        .with_seed(12345);
    let (mut pool, mut retired) = (Refill::new(), RetiredList::new());
    for i in (0..N).rev() {
        // With gaps, so every mapping stays separate and untouched.
        let m = Mapping::new(2 * i * PAGE, PAGE, None, 0);
        map(&mut vm, &mut pool, &mut retired, m);
    }
    assert_eq!(vm.len(), 100_000);
    assert_log_depth(&vm, "descending mappings");
    check(&vm);
}

#[test]
fn hole_punching_stays_logarithmic() {
    // One big mapping, then unmap every other page in ascending order: each unmap splits the last
    // piece (a Remap with prev and next), the classic sequential pattern for a split tree.
    let mut vm = Vm::new(0..2 * N * PAGE, 0..0).expect("geometry");
    let (mut pool, mut retired) = (Refill::new(), RetiredList::new());
    map(
        &mut vm,
        &mut pool,
        &mut retired,
        Mapping::new(0, 2 * N * PAGE, ObjId::new(3), 0),
    );
    for i in 0..N - 1 {
        unmap(&mut vm, &mut pool, &mut retired, (2 * i + 1) * PAGE, PAGE);
        while retired.pop().is_some() {}
    }
    assert_eq!(vm.len(), 100_000);
    assert_log_depth(&vm, "hole punching");
    check(&vm);
    // Every piece kept its translation.
    for (i, v) in (0u64..).zip(vm.iter()) {
        assert_eq!((v.addr(), v.offset()), (2 * i * PAGE, 2 * i * PAGE));
    }
    // Unmap everything: empty.
    unmap(&mut vm, &mut pool, &mut retired, 0, 2 * N * PAGE);
    assert!(vm.is_empty());
    assert_eq!(vm.depth(), 0);
}
