//! The run stage of the extension requests allocates nothing and frees nothing: unmap of all
//! mappings of an object, prefetch, attribute split, merged maps and repeat maps, through `step` (with the
//! built-in and a recording visitor, a failing visitor), `apply_plan`, the refusals, links on
//! and off. The counting allocator is `tests::failalloc`'s (installed per test binary).

use gpuva::{Apply, BoxNode, GpuVm, Mapping, ObjId, Repeat, Request, SmVisitor, StepError};
use tests::failalloc::{no_alloc, FailAlloc};
use tests::harness::Rng;

type Vm = GpuVm<u64, BoxNode<u64>>;

#[global_allocator]
static GLOBAL: FailAlloc = FailAlloc;

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
