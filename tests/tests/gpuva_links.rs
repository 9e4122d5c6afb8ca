//! Object links (drm_gpuvm's vm_bo), named cases: counting, remap pieces, pins, zombies, flags
//! and the link iterators. The property test (`gpuva_props`) checks the same against a model on
//! random sequences; these pin each rule to one readable scenario.

use gpuva::{Apply, BoxNode, Claim, GpuVm, LinkPin, Mapping, ObjId, Request};

type Vm = GpuVm<u64, BoxNode<u64, u64>, u64>;

fn id(n: u64) -> ObjId {
    ObjId::new(n).expect("non-zero")
}

fn claim(vm: &mut Vm, n: usize) -> Claim {
    vm.reserve_boxed(n).expect("test allocation")
}

/// Driver flow for one map: claim, pin (creating the link with `data`), step, release, put.
fn map(vm: &mut Vm, m: Mapping, data: u64) {
    let req = Request::Map(m);
    let need = vm.nodes_for(&req) + vm.link_nodes();
    let mut c = claim(vm, need);
    let pin = m
        .obj
        .map(|o| vm.link_obtain(o, &mut c, || data).expect("link"));
    vm.step(req, &mut c, &mut Apply::new(0)).expect("map");
    assert!(vm.release(c).is_ok());
    if let Some(p) = pin {
        assert!(vm.link_put(p).is_ok());
    }
    vm.check_invariants().expect("invariants");
}

fn unmap(vm: &mut Vm, addr: u64, len: u64) {
    let mut c = claim(vm, vm.bounds().unmap);
    vm.unmap(addr, len, &mut c).expect("unmap");
    assert!(vm.release(c).is_ok());
    vm.check_invariants().expect("invariants");
}

fn pin(vm: &mut Vm, o: u64, data: u64) -> LinkPin {
    let mut c = claim(vm, vm.link_nodes());
    let p = vm.link_obtain(id(o), &mut c, || data).expect("link");
    assert!(vm.release(c).is_ok());
    p
}

fn addrs(vm: &Vm, o: u64) -> Vec<u64> {
    vm.link_addrs(id(o)).collect()
}

fn count(vm: &Vm, o: u64) -> Option<u64> {
    vm.link(id(o)).map(|l| l.mappings())
}

#[test]
fn every_mapping_is_counted_on_its_objects_link() {
    let mut vm = Vm::new(0..1000, 0..0).expect("geometry");
    map(&mut vm, Mapping::new(500, 10, Some(id(1)), 0), 11);
    map(&mut vm, Mapping::new(100, 10, Some(id(1)), 0), 12);
    map(&mut vm, Mapping::new(300, 10, Some(id(2)), 0), 21);
    map(&mut vm, Mapping::new(200, 10, None, 0), 0);
    assert_eq!((count(&vm, 1), count(&vm, 2)), (Some(2), Some(1)));
    assert_eq!(addrs(&vm, 1), [100, 500], "ascending starts");
    assert_eq!(addrs(&vm, 2), [300]);
    // The link's data is the one it was created with (the second obtain found it).
    assert_eq!(vm.link(id(1)).map(|l| *l.data()), Some(11));
    let starts: Vec<u64> = vm.link_mappings(id(1)).map(|v| v.addr()).collect();
    assert_eq!(starts, [100, 500]);
    let objs: Vec<ObjId> = vm.links().map(|l| l.obj()).collect();
    assert_eq!(objs, [id(1), id(2)]);
}

#[test]
fn remap_pieces_stay_on_the_old_mappings_link() {
    let mut vm = Vm::new(0..1000, 0..0).expect("geometry");
    map(&mut vm, Mapping::new(100, 300, Some(id(1)), 0), 1);
    // Strictly inside, another object: both pieces are object 1's.
    map(&mut vm, Mapping::new(200, 50, Some(id(2)), 0), 2);
    assert_eq!(addrs(&vm, 1), [100, 250]);
    assert_eq!(addrs(&vm, 2), [200]);
    // A NULL map over the end of one piece and an unmap inside the other.
    map(&mut vm, Mapping::new(350, 100, None, 0), 0);
    unmap(&mut vm, 120, 10);
    assert_eq!(addrs(&vm, 1), [100, 130, 250]);
    assert_eq!(count(&vm, 1), Some(3));
    let lens: Vec<u64> = vm.link_mappings(id(1)).map(|v| v.length()).collect();
    assert_eq!(lens, [20, 70, 100]);
}

#[test]
fn map_of_an_object_without_a_link_is_refused() {
    let mut vm = Vm::new(0..1000, 0..0).expect("geometry");
    let mut c = claim(&mut vm, 64);
    let m = Mapping::new(100, 10, Some(id(5)), 0);
    let g = vm.generation();
    assert_eq!(vm.map(m, &mut c), Err(gpuva::StepError::NoLink(id(5))));
    assert_eq!((vm.len(), vm.generation(), c.nodes()), (0, g, 64));
    assert!(vm.link(id(5)).is_none());
    assert!(vm.release(c).is_ok());
}

#[test]
fn a_pin_keeps_an_emptied_link_and_putting_it_makes_a_zombie() {
    let mut vm = Vm::new(0..1000, 0..0).expect("geometry");
    let p = pin(&mut vm, 1, 7);
    assert_eq!(
        vm.link(id(1)).map(|l| (l.mappings(), l.pins())),
        Some((0, 1))
    );
    map(&mut vm, Mapping::new(100, 10, Some(id(1)), 0), 8);
    unmap(&mut vm, 0, 1000);
    assert_eq!(
        vm.link(id(1)).map(|l| (l.mappings(), l.pins())),
        Some((0, 1))
    );
    assert_eq!(vm.links().count(), 1);
    assert!(vm.link_put(p).is_ok());
    // A zombie: invisible, still holding its data until drained.
    assert!(vm.link(id(1)).is_none());
    assert_eq!(vm.links().count(), 0);
    let mut drained = Vec::new();
    vm.drain_zombies(|o, d| drained.push((o, d)));
    assert_eq!(drained, [(id(1), 7)]);
    vm.drain_zombies(|o, d| drained.push((o, d)));
    assert_eq!(drained.len(), 1, "drained once");
    assert_eq!(vm.heights(), [0, 0, 0]);
}

#[test]
fn reserve_drains_zombies() {
    let mut vm = Vm::new(0..1000, 0..0).expect("geometry");
    map(&mut vm, Mapping::new(100, 10, Some(id(1)), 0), 1);
    map(&mut vm, Mapping::new(200, 10, Some(id(2)), 0), 2);
    unmap(&mut vm, 100, 10);
    // The unmap's own reserve came before the link emptied: the zombie is still in the tree.
    assert!(vm.link(id(1)).is_none());
    let spare = vm.spare_nodes();
    let c = claim(&mut vm, 0);
    assert!(vm.release(c).is_ok());
    let mut drained = Vec::new();
    vm.drain_zombies(|o, d| drained.push((o, d)));
    assert!(
        drained.is_empty(),
        "reserve drained it already: {drained:?}"
    );
    assert!(vm.spare_nodes() >= spare);
    // A new link for the object starts afresh.
    map(&mut vm, Mapping::new(100, 10, Some(id(1)), 0), 3);
    assert_eq!(vm.link(id(1)).map(|l| *l.data()), Some(3));
}

#[test]
fn external_and_evicted_flags_and_their_iterators() {
    let mut vm = Vm::new(0..1000, 0..0).expect("geometry");
    for o in 1..=4 {
        map(&mut vm, Mapping::new(o * 100, 10, Some(id(o)), 0), o);
    }
    assert!(vm.set_external(id(2), true).is_ok());
    assert!(vm.set_external(id(4), true).is_ok());
    assert!(vm.set_evicted(id(3), true).is_ok());
    assert!(vm.set_evicted(id(4), true).is_ok());
    let ext: Vec<ObjId> = vm.external_links().map(|l| l.obj()).collect();
    let evi: Vec<ObjId> = vm.evicted_links().map(|l| l.obj()).collect();
    assert_eq!((ext, evi), (vec![id(2), id(4)], vec![id(3), id(4)]));
    // Revalidate: clear evicted; flags survive other mappings coming and going.
    assert!(vm.set_evicted(id(3), false).is_ok());
    map(&mut vm, Mapping::new(450, 10, Some(id(4)), 0), 0);
    assert!(vm
        .link(id(4))
        .is_some_and(|l| l.is_external() && l.is_evicted()));
    assert_eq!(vm.evicted_links().count(), 1);
    // Per-link driver data.
    *vm.link_data_mut(id(2)).expect("live") = 99;
    assert_eq!(vm.link(id(2)).map(|l| *l.data()), Some(99));
    // An emptied link leaves the iterators.
    unmap(&mut vm, 400, 100);
    assert_eq!(
        vm.external_links().map(|l| l.obj()).collect::<Vec<_>>(),
        [id(2)]
    );
    assert_eq!(vm.evicted_links().count(), 0);
}

#[test]
fn links_off_keeps_no_index() {
    let mut vm = Vm::new(0..1000, 0..0).expect("geometry").without_links();
    let mut c = claim(&mut vm, 64);
    vm.map(Mapping::new(100, 10, Some(id(1)), 0), &mut c)
        .expect("no link needed");
    assert!(vm.release(c).is_ok());
    assert!(vm.link(id(1)).is_none());
    assert_eq!(vm.link_addrs(id(1)).count(), 0);
    assert_eq!(vm.heights()[1..], [0, 0]);
    assert_eq!(vm.bounds().link, 0);
}
