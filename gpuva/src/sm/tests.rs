//! One named test per documented split/merge case (`docs/semantics.md`: decision-table rows A1-C3
//! and the worked examples E1-E14, U1-U5), each asserting the exact op sequence and the resulting tree.
//!
//! Every test checks the op list twice: recorded without touching the tree (`sm_*_walk`) and as
//! seen by a step visitor while the tree changes (`sm_*`); both must equal the expected list.

#![allow(
    clippy::disallowed_methods,
    reason = "unit tests may allocate infallibly"
)]

extern crate alloc;
extern crate std;

use alloc::vec::Vec;
use core::convert::Infallible;

use crate::{
    BoxNode, GpuVm, Mapping, ObjId, Op, OpMap, OpMapped, OpRemap, OpRemapped, OpUnmap, OpUnmapped,
    Record, Request, SmVisitor,
};

type Vm = GpuVm<(), BoxNode<()>>;

const X: u64 = 1;
const Y: u64 = 2;
const Z: u64 = 3;
const W: u64 = 4;
const NULL: u64 = 0;

/// `[addr, addr + len)` of object `obj` (0 = none) at `off`.
fn m(addr: u64, len: u64, obj: u64, off: u64) -> Mapping {
    Mapping::new(addr, len, ObjId::new(obj), off)
}

fn map(v: Mapping) -> Op {
    Op::Map(v)
}

fn unmap(va: Mapping, keep: bool) -> Op {
    Op::Unmap { va, keep }
}

fn remap(unmap: Mapping, keep: bool, prev: Option<Mapping>, next: Option<Mapping>) -> Op {
    Op::Remap {
        unmap,
        keep,
        prev,
        next,
    }
}

/// Records every op like [`Record`] and every payload handed back.
struct Seen {
    ops: Vec<Op>,
    removed: Vec<Mapping>,
}

impl SmVisitor<()> for Seen {
    type Error = Infallible;
    fn step_map<'op>(&mut self, op: OpMap<'op, ()>) -> Result<OpMapped<'op>, Infallible> {
        self.ops.push(Op::Map(*op.mapping()));
        Ok(op.insert(()))
    }
    fn step_remap<'op>(&mut self, op: OpRemap<'op, ()>) -> Result<OpRemapped<'op>, Infallible> {
        let mut rec = Record::new(|o| self.ops.push(o));
        SmVisitor::<()>::step_remap(&mut rec, op)
    }
    fn step_unmap<'op>(&mut self, op: OpUnmap<'op, ()>) -> Result<OpUnmapped<'op>, Infallible> {
        let mut rec = Record::new(|o| self.ops.push(o));
        SmVisitor::<()>::step_unmap(&mut rec, op)
    }
    fn removed(&mut self, va: Mapping, _: ()) {
        self.removed.push(va);
    }
}

/// The VA space of the worked examples: `[0, 1000)`, no cut-out, with object links.
fn vm_with(existing: &[Mapping]) -> Vm {
    let mut vm = Vm::new(0..1000, 0..0).expect("valid geometry");
    for &e in existing {
        run(
            &mut vm,
            Request::Map(e),
            &mut Seen {
                ops: Vec::new(),
                removed: Vec::new(),
            },
        );
    }
    assert_eq!(vm.len(), existing.len(), "setup mappings must not overlap");
    vm
}

/// Runs `req` the way a driver does: claim its bound (and a link), pin, step, release.
fn run(vm: &mut Vm, req: Request, v: &mut Seen) {
    let obj = match req {
        Request::Map(m) => m.obj,
        _ => None,
    };
    let mut claim = vm
        .reserve_boxed(vm.nodes_for(&req) + vm.link_nodes())
        .expect("memory");
    let pin = obj.map(|o| vm.link_obtain(o, &mut claim, || ()).expect("link"));
    let before = claim.nodes();
    vm.step(req, &mut claim, v).expect("step");
    assert_eq!(
        before - claim.nodes(),
        vm.nodes_for(&req),
        "claim used up by the bound"
    );
    vm.release(claim).expect("own claim");
    if let Some(p) = pin {
        vm.link_put(p).expect("own pin");
    }
    vm.check_invariants().expect("tree invariants");
}

fn state(vm: &Vm) -> Vec<Mapping> {
    vm.iter().map(|v| v.mapping()).collect()
}

/// Checks that mapping `req` over `existing` emits exactly `ops` (both APIs) and leaves `after`.
fn check_map(existing: &[Mapping], req: Mapping, ops: &[Op], after: &[Mapping]) {
    let mut vm = vm_with(existing);
    let recorded = vm.sm_map_ops(req).expect("valid request");
    assert_eq!(recorded.ops(), ops, "recorded op list");
    assert_eq!(state(&vm), existing, "recording must not change the tree");

    let mut seen = Seen {
        ops: Vec::new(),
        removed: Vec::new(),
    };
    run(&mut vm, Request::Map(req), &mut seen);
    assert_eq!(seen.ops, ops, "ops seen by the step visitor");
    assert_eq!(state(&vm), after, "resulting tree");
    check_accounting(&vm, existing.len(), ops, &seen.removed);
}

/// Checks that unmapping `[addr, addr + len)` emits exactly `ops` (both APIs) and leaves `after`.
fn check_unmap(existing: &[Mapping], addr: u64, len: u64, ops: &[Op], after: &[Mapping]) {
    let mut vm = vm_with(existing);
    let recorded = vm.sm_unmap_ops(addr, len).expect("valid request");
    assert_eq!(recorded.ops(), ops, "recorded op list");
    assert_eq!(state(&vm), existing);

    let mut seen = Seen {
        ops: Vec::new(),
        removed: Vec::new(),
    };
    run(&mut vm, Request::Unmap { addr, len }, &mut seen);
    assert_eq!(seen.ops, ops, "ops seen by the step visitor");
    assert_eq!(state(&vm), after, "resulting tree");
    check_accounting(&vm, existing.len(), ops, &seen.removed);
}

/// New mappings = the map and the pieces; payloads handed back = every mapping unmapped or split.
fn check_accounting(vm: &Vm, before: usize, ops: &[Op], removed: &[Mapping]) {
    let mut new = 0;
    let mut gone = Vec::new();
    for op in ops {
        match op {
            Op::Map(_) => new += 1,
            Op::Remap {
                unmap, prev, next, ..
            } => {
                new += usize::from(prev.is_some()) + usize::from(next.is_some());
                gone.push(*unmap);
            }
            Op::Unmap { va, .. } => gone.push(*va),
            Op::Prefetch(_) => {}
        }
    }
    assert_eq!(removed, gone, "payloads handed back, in op order");
    assert_eq!(vm.len(), before + new - gone.len());
    assert_eq!(vm.len(), vm.iter().count());
}

// --- Decision table rows (docs/semantics.md) ---------------------------------------------

#[test]
fn case_a1_same_range_same_backing_keeps() {
    let a = m(100, 200, X, 0);
    check_map(
        &[a],
        m(100, 200, X, 0),
        &[unmap(a, true), map(m(100, 200, X, 0))],
        &[m(100, 200, X, 0)],
    );
}

#[test]
fn case_a1_same_range_other_offset() {
    let a = m(100, 200, X, 0);
    check_map(
        &[a],
        m(100, 200, X, 8),
        &[unmap(a, false), map(m(100, 200, X, 8))],
        &[m(100, 200, X, 8)],
    );
}

#[test]
fn case_a2_request_extends_end() {
    let a = m(100, 100, X, 0);
    let b = m(50, 50, Y, 0);
    // The walk goes on past A (A2) and stops nowhere early: nothing else overlaps.
    check_map(
        &[b, a],
        m(100, 300, Z, 0),
        &[unmap(a, false), map(m(100, 300, Z, 0))],
        &[b, m(100, 300, Z, 0)],
    );
}

#[test]
fn case_a3_left_subset() {
    let a = m(0, 200, X, 50);
    check_map(
        &[a],
        m(0, 100, Y, 9),
        &[
            remap(a, false, None, Some(m(100, 100, X, 150))),
            map(m(0, 100, Y, 9)),
        ],
        &[m(0, 100, Y, 9), m(100, 100, X, 150)],
    );
}

#[test]
fn case_b1_right_subset() {
    let a = m(0, 200, X, 50);
    check_map(
        &[a],
        m(100, 100, Y, 9),
        &[
            remap(a, false, Some(m(0, 100, X, 50)), None),
            map(m(100, 100, Y, 9)),
        ],
        &[m(0, 100, X, 50), m(100, 100, Y, 9)],
    );
}

#[test]
fn case_b2_overlap_start() {
    let a = m(0, 200, X, 0);
    check_map(
        &[a],
        m(100, 200, Y, 0),
        &[
            remap(a, false, Some(m(0, 100, X, 0)), None),
            map(m(100, 200, Y, 0)),
        ],
        &[m(0, 100, X, 0), m(100, 200, Y, 0)],
    );
}

#[test]
fn case_b3_strictly_inside() {
    let a = m(0, 300, X, 1000);
    check_map(
        &[a],
        m(100, 100, X, 1100),
        &[
            remap(
                a,
                true,
                Some(m(0, 100, X, 1000)),
                Some(m(200, 100, X, 1200)),
            ),
            map(m(100, 100, X, 1100)),
        ],
        &[
            m(0, 100, X, 1000),
            m(100, 100, X, 1100),
            m(200, 100, X, 1200),
        ],
    );
}

#[test]
fn case_c1_ends_together() {
    let a = m(200, 100, X, 0);
    check_map(
        &[a],
        m(100, 200, Y, 0),
        &[unmap(a, false), map(m(100, 200, Y, 0))],
        &[m(100, 200, Y, 0)],
    );
}

#[test]
fn case_c2_old_strictly_inside() {
    // a and b translate exactly as the request does (offset - addr == -100 for all three): keep.
    let a = m(200, 10, X, 100);
    let b = m(300, 10, X, 200);
    let req = m(100, 300, X, 0);
    check_map(
        &[a, b],
        req,
        &[unmap(a, true), unmap(b, true), map(req)],
        &[req],
    );
    // Same object, request shifted by 5: no keep.
    let req = m(100, 300, X, 5);
    check_map(
        &[a, b],
        req,
        &[unmap(a, false), unmap(b, false), map(req)],
        &[req],
    );
}

#[test]
fn case_c3_overlap_end() {
    let a = m(200, 200, X, 10);
    check_map(
        &[a],
        m(100, 200, Y, 0),
        &[
            remap(a, false, None, Some(m(300, 100, X, 110))),
            map(m(100, 200, Y, 0)),
        ],
        &[m(100, 200, Y, 0), m(300, 100, X, 110)],
    );
}

// --- Worked examples (docs/semantics.md) ----------------------------------------------------------

#[test]
fn e1_exact_match_same_backing() {
    let a = m(100, 100, X, 0);
    check_map(
        &[a],
        m(100, 100, X, 0),
        &[unmap(a, true), map(m(100, 100, X, 0))],
        &[m(100, 100, X, 0)],
    );
}

#[test]
fn e2_exact_range_other_offset() {
    let a = m(100, 100, X, 0);
    check_map(
        &[a],
        m(100, 100, X, 40),
        &[unmap(a, false), map(m(100, 100, X, 40))],
        &[m(100, 100, X, 40)],
    );
}

#[test]
fn e3_exact_range_other_object() {
    let a = m(100, 100, X, 0);
    check_map(
        &[a],
        m(100, 100, Y, 0),
        &[unmap(a, false), map(m(100, 100, Y, 0))],
        &[m(100, 100, Y, 0)],
    );
}

#[test]
fn e4_inside_same_backing_not_merged() {
    let a = m(100, 300, X, 0);
    check_map(
        &[a],
        m(200, 100, X, 100),
        &[
            remap(a, true, Some(m(100, 100, X, 0)), Some(m(300, 100, X, 200))),
            map(m(200, 100, X, 100)),
        ],
        &[m(100, 100, X, 0), m(200, 100, X, 100), m(300, 100, X, 200)],
    );
}

#[test]
fn e5_inside_other_object() {
    let a = m(100, 300, X, 0);
    check_map(
        &[a],
        m(200, 100, Y, 7),
        &[
            remap(a, false, Some(m(100, 100, X, 0)), Some(m(300, 100, X, 200))),
            map(m(200, 100, Y, 7)),
        ],
        &[m(100, 100, X, 0), m(200, 100, Y, 7), m(300, 100, X, 200)],
    );
}

#[test]
fn e6_left_subset_other_object() {
    let a = m(100, 200, X, 0);
    check_map(
        &[a],
        m(100, 100, Y, 0),
        &[
            remap(a, false, None, Some(m(200, 100, X, 100))),
            map(m(100, 100, Y, 0)),
        ],
        &[m(100, 100, Y, 0), m(200, 100, X, 100)],
    );
}

#[test]
fn e7_request_extends_same_backing() {
    let a = m(100, 100, X, 0);
    check_map(
        &[a],
        m(100, 200, X, 0),
        &[unmap(a, true), map(m(100, 200, X, 0))],
        &[m(100, 200, X, 0)],
    );
}

#[test]
fn e8_overlap_tail_same_backing() {
    let a = m(100, 200, X, 0);
    check_map(
        &[a],
        m(200, 200, X, 100),
        &[
            remap(a, true, Some(m(100, 100, X, 0)), None),
            map(m(200, 200, X, 100)),
        ],
        &[m(100, 100, X, 0), m(200, 200, X, 100)],
    );
}

#[test]
fn e9_overlap_head_same_backing() {
    let a = m(200, 200, X, 150);
    check_map(
        &[a],
        m(100, 200, X, 50),
        &[
            remap(a, true, None, Some(m(300, 100, X, 250))),
            map(m(100, 200, X, 50)),
        ],
        &[m(100, 200, X, 50), m(300, 100, X, 250)],
    );
}

#[test]
fn e10_three_mappings_gap_swallowed() {
    let a = m(100, 100, X, 0);
    let b = m(200, 100, Y, 0);
    let c = m(350, 100, Z, 10);
    check_map(
        &[a, b, c],
        m(150, 250, W, 0),
        &[
            remap(a, false, Some(m(100, 50, X, 0)), None),
            unmap(b, false),
            remap(c, false, None, Some(m(400, 50, Z, 60))),
            map(m(150, 250, W, 0)),
        ],
        &[m(100, 50, X, 0), m(150, 250, W, 0), m(400, 50, Z, 60)],
    );
}

#[test]
fn e11_adjacent_contiguous_not_merged() {
    let a = m(100, 100, X, 0);
    check_map(
        &[a],
        m(200, 100, X, 100),
        &[map(m(200, 100, X, 100))],
        &[a, m(200, 100, X, 100)],
    );
}

#[test]
fn e12_empty_space() {
    check_map(
        &[],
        m(0, 10, X, 0),
        &[map(m(0, 10, X, 0))],
        &[m(0, 10, X, 0)],
    );
}

#[test]
fn e13_null_object_offsets_advance_never_keep() {
    let a = m(100, 200, NULL, 0);
    check_map(
        &[a],
        m(100, 100, NULL, 0),
        &[
            remap(a, false, None, Some(m(200, 100, NULL, 100))),
            map(m(100, 100, NULL, 0)),
        ],
        &[m(100, 100, NULL, 0), m(200, 100, NULL, 100)],
    );
}

#[test]
fn e14_two_contiguous_replaced_by_one() {
    let a = m(100, 50, X, 0);
    let b = m(150, 50, X, 50);
    check_map(
        &[a, b],
        m(100, 100, X, 0),
        &[unmap(a, true), unmap(b, true), map(m(100, 100, X, 0))],
        &[m(100, 100, X, 0)],
    );
}

#[test]
fn u1_unmap_across_two() {
    let a = m(100, 100, X, 0);
    let b = m(200, 100, Y, 0);
    check_unmap(
        &[a, b],
        150,
        100,
        &[
            remap(a, false, Some(m(100, 50, X, 0)), None),
            remap(b, false, None, Some(m(250, 50, Y, 50))),
        ],
        &[m(100, 50, X, 0), m(250, 50, Y, 50)],
    );
}

#[test]
fn u2_unmap_middle_needs_two_nodes() {
    let a = m(100, 300, X, 0);
    check_unmap(
        &[a],
        200,
        100,
        &[remap(
            a,
            false,
            Some(m(100, 100, X, 0)),
            Some(m(300, 100, X, 200)),
        )],
        &[m(100, 100, X, 0), m(300, 100, X, 200)],
    );
}

#[test]
fn u3_unmap_everything() {
    let a = m(100, 100, X, 0);
    let b = m(200, 100, Y, 0);
    check_unmap(&[a, b], 0, 1000, &[unmap(a, false), unmap(b, false)], &[]);
}

#[test]
fn u4_unmap_exact() {
    let a = m(100, 100, X, 0);
    check_unmap(&[a], 100, 100, &[unmap(a, false)], &[]);
}

#[test]
fn u5_unmap_hole_is_a_noop() {
    let a = m(100, 100, X, 0);
    check_unmap(&[a], 300, 50, &[], &[a]);
}

// --- Unmap shapes: inside, prefix, suffix, spanning, whole ----------------------------------------

#[test]
fn unmap_prefix_keeps_tail() {
    let a = m(100, 200, X, 0);
    check_unmap(
        &[a],
        100,
        50,
        &[remap(a, false, None, Some(m(150, 150, X, 50)))],
        &[m(150, 150, X, 50)],
    );
}

#[test]
fn unmap_suffix_keeps_head() {
    let a = m(100, 200, X, 0);
    check_unmap(
        &[a],
        250,
        50,
        &[remap(a, false, Some(m(100, 150, X, 0)), None)],
        &[m(100, 150, X, 0)],
    );
}

#[test]
fn unmap_same_backing_never_keeps() {
    // sm_unmap always reports keep = false, even for an exact same-object range.
    let a = m(100, 100, X, 0);
    check_unmap(&[a], 100, 100, &[unmap(a, false)], &[]);
}

// --- Flags and lookups ----------------------------------------------------------------------------

#[test]
fn pieces_inherit_flags_and_keep_ignores_them() {
    use crate::VaFlags;
    let flags = VaFlags::SPARSE.union(VaFlags::from_bits(1 << VaFlags::USER_SHIFT));
    let a = m(100, 300, X, 0).with_flags(flags);
    let req = m(200, 100, X, 100);
    check_map(
        &[a],
        req,
        &[
            remap(
                a,
                true,
                Some(m(100, 100, X, 0).with_flags(flags)),
                Some(m(300, 100, X, 200).with_flags(flags)),
            ),
            map(req),
        ],
        &[
            m(100, 100, X, 0).with_flags(flags),
            req,
            m(300, 100, X, 200).with_flags(flags),
        ],
    );
}

#[test]
fn neighbour_lookups_are_strict() {
    let a = m(100, 100, X, 0);
    let b = m(300, 100, Y, 0);
    let vm = vm_with(&[a, b]);
    // find_prev(addr): the mapping ending exactly at addr.
    assert_eq!(vm.find_prev(200).map(|v| v.mapping()), Some(a));
    assert_eq!(
        vm.find_prev(300).map(|v| v.mapping()),
        None,
        "kernel quirk would return b"
    );
    assert_eq!(vm.find_prev(0).map(|v| v.mapping()), None);
    // find_next(addr): the mapping starting exactly at addr.
    assert_eq!(vm.find_next(300).map(|v| v.mapping()), Some(b));
    assert_eq!(
        vm.find_next(299).map(|v| v.mapping()),
        None,
        "kernel quirk would return b"
    );
    assert_eq!(vm.find_next(200).map(|v| v.mapping()), None);
    // Exact find, first overlapping, containing lookup, range iteration.
    assert_eq!(vm.find(100, 100).map(|v| v.mapping()), Some(a));
    assert!(vm.find(100, 50).is_none());
    assert_eq!(vm.find_first(150..350).map(|v| v.mapping()), Some(a));
    assert_eq!(vm.find_first(200..300).map(|v| v.mapping()), None);
    assert!(vm.is_range_empty(200..300));
    assert_eq!(
        vm.find_first(0..0).map(|v| v.mapping()),
        None,
        "an empty range overlaps nothing"
    );
    assert_eq!(vm.lookup(399).map(|v| v.mapping()), Some(b));
    assert!(vm.lookup(400).is_none());
    let seen: Vec<_> = vm.iter_range(199..301).map(|v| v.mapping()).collect();
    assert_eq!(seen, [a, b]);
    let seen: Vec<_> = vm.iter_range(200..300).map(|v| v.mapping()).collect();
    assert!(seen.is_empty());
}

#[test]
fn exact_match_is_unmap_keep_then_map_not_empty() {
    // docs/semantics.md, quirks kept on purpose: the kernel docs claim "no ops"; the code (and we) emit two.
    let a = m(0, 10, X, 5);
    let vm = vm_with(&[a]);
    let ops = vm.sm_map_ops(a).expect("valid");
    assert_eq!(ops.len(), 2);
}

#[test]
fn op_list_from_another_vm_is_refused() {
    // Regression: two VA spaces at the same generation used to accept each other's lists.
    let a = vm_with(&[m(100, 100, X, 0)]);
    let mut b = vm_with(&[m(500, 100, Y, 0)]);
    assert_eq!(a.generation(), b.generation());
    let list = a.sm_map_ops(m(100, 50, Z, 0)).expect("valid");
    let mut claim = b.reserve_boxed(list.nodes_needed()).expect("memory");
    let r = b.apply_ops(&list, &mut claim, &mut Record::new(|_| {}));
    assert_eq!(r, Err(crate::ApplyError::Foreign));
    assert_eq!(state(&b), [m(500, 100, Y, 0)]);
}
