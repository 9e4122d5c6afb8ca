//! An address-granular reference for the op generators beyond map and unmap (unmap of an object,
//! prefetch, attribute split, merging, repeat mappings), and a driver-shaped request runner.
//!
//! Every address of a small VA space maps to what it translates to: `(object, object offset,
//! flags bits, period or 0)`. A request's effect on that map is written out here independently of
//! the library (a repeat's offset is the window start plus `(phase + k) mod period`), so comparing
//! it with the VA space after the request checks the generators' semantics, and [`replay`] checks
//! that the ops they emitted describe the change, piece by piece.

use std::collections::BTreeMap;
use std::vec::Vec;

use gpuva::{BoxNode, GpuVm, Mapping, ObjId, Op, Record, Repeat, Request, StepError};

/// The VA spaces these tests drive: a `u64` payload per mapping, boxed nodes.
pub type Vm = GpuVm<u64, BoxNode<u64>>;

/// Address -> (object, object offset, flags bits, period or 0); NULL addresses have offset 0.
pub type Addrs = BTreeMap<u64, (Option<ObjId>, u64, u32, u64)>;

/// Runs `req` as a driver does (claim its bound and a link, pin, step, release, put), recording
/// the steps; asserts the node bound and every structural invariant.
///
/// # Errors
///
/// The step's own error, after the claim and the pin are returned.
///
/// # Panics
///
/// If the request draws more nodes than its bound or breaks an invariant (a test failure).
pub fn run(vm: &mut Vm, req: Request) -> Result<Vec<Op>, StepError> {
    let link = match req {
        Request::Map(m) if vm.has_links() => m.obj,
        _ => None,
    };
    let need = vm.nodes_for(&req);
    let mut claim = vm
        .reserve_boxed(need + vm.link_nodes())
        .expect("test allocation");
    let pin = link.map(|o| vm.link_obtain(o, &mut claim, || ()).expect("link"));
    let taken = vm.nodes_taken();
    let mut ops = Vec::new();
    let r = vm.step(req, &mut claim, &mut Record::new(|op| ops.push(op)));
    let drawn = vm.nodes_taken() - taken;
    assert!(drawn <= need as u64, "{req:?} drew {drawn} > {need}");
    vm.release(claim).expect("own claim");
    if let Some(p) = pin {
        vm.link_put(p).expect("own pin");
    }
    vm.check_invariants().expect("invariants");
    r.map(|()| ops)
}

/// The object offset `k` units into a mapping at `offset`, written out independently of
/// `Mapping::offset_after`: the window start plus `(phase + k) mod period` (plain `offset + k`
/// when `period` is 0).
pub fn offset_at(offset: u64, period: u64, k: u64) -> u64 {
    if period == 0 {
        return offset.wrapping_add(k);
    }
    let base = offset - offset % period;
    base + (offset % period + k % period) % period
}

/// What address `a` of mapping `m` translates to.
pub fn translate(m: &Mapping, a: u64) -> (Option<ObjId>, u64, u32, u64) {
    let period = m.repeat.map_or(0, Repeat::period);
    let off = if m.obj.is_some() {
        offset_at(m.offset, period, a - m.addr)
    } else {
        0
    };
    (m.obj, off, m.flags.bits(), period)
}

/// Every mapped address of `vm` and its translation.
pub fn addrs_of(vm: &Vm) -> Addrs {
    let mut p = Addrs::new();
    for va in vm.iter() {
        let m = va.mapping();
        for a in m.range() {
            p.insert(a, translate(&m, a));
        }
    }
    p
}

/// What `req` must do to the translations.
pub fn reference(addrs: &mut Addrs, req: &Request) {
    match *req {
        Request::Map(m) => {
            for a in m.range() {
                addrs.insert(a, translate(&m, a));
            }
        }
        Request::Unmap { addr, len } => {
            for a in addr..addr + len {
                addrs.remove(&a);
            }
        }
        Request::UnmapObject { obj } => addrs.retain(|_, t| t.0 != Some(obj)),
        Request::Prefetch { .. } | Request::Split { .. } => {}
    }
}

/// Applies ops to a plain mapping list, checking that each describes the list: a map lands in a
/// hole, an unmap or a remap removes a mapping that is there, every remap piece keeps its
/// object, flags and repeat and translates each address as the mapping it comes from did (for a
/// plain piece, NULL ones included, that is the same `offset - addr`), a prefetch names a
/// mapping as it is.
///
/// # Panics
///
/// On the first op that does not describe the list (a test failure).
pub fn replay(list: &mut BTreeMap<u64, Mapping>, ops: &[Op]) {
    for op in ops {
        match *op {
            Op::Map(m) => {
                assert!(
                    list.range(..m.end())
                        .next_back()
                        .is_none_or(|(_, v)| v.end() <= m.addr),
                    "{op:?} overlaps"
                );
                list.insert(m.addr, m);
            }
            Op::Unmap { va, .. } => assert_eq!(list.remove(&va.addr), Some(va), "{op:?}"),
            Op::Remap {
                unmap, prev, next, ..
            } => {
                assert_eq!(list.remove(&unmap.addr), Some(unmap), "{op:?}");
                for p in prev.into_iter().chain(next) {
                    assert_eq!(
                        (p.obj, p.flags, p.repeat),
                        (unmap.obj, unmap.flags, unmap.repeat)
                    );
                    if p.repeat.is_none() {
                        assert_eq!(
                            p.offset.wrapping_sub(p.addr),
                            unmap.offset.wrapping_sub(unmap.addr),
                            "piece {p:?} changes translations"
                        );
                    }
                    for a in p.range() {
                        assert_eq!(translate(&p, a), translate(&unmap, a), "piece {p:?} at {a}");
                    }
                    list.insert(p.addr, p);
                }
            }
            Op::Prefetch(m) => assert_eq!(list.get(&m.addr), Some(&m), "{op:?}"),
        }
    }
}
