//! Regression for a gpuva defect found by the adversarial reservation test: after a dense fill
//! (every VA-tree leaf full of one-page mappings that cannot merge), one map replacing 1024 of
//! them left an underfull leaf (`check_invariants`): a range walk emptied the only child of a
//! branch, which then merged into its sibling carrying the empty leaf along. Fixed in gpuva by
//! repairing the children at the seam of every branch merge or borrow.
#![cfg(feature = "alloc")]
#![allow(clippy::disallowed_methods, clippy::disallowed_macros)]

mod common;

use common::*;
use gpuva::ObjId;
use vmbind::{BindJob, BindOp, MapFlags};

fn map(va: u64, len: u64, obj: u64, offset: u64) -> BindOp {
    BindOp::Map {
        va,
        len,
        obj: ObjId::new(obj).unwrap(),
        offset,
        flags: MapFlags::default(),
    }
}

#[test]
fn map_over_a_dense_range_keeps_gpuva_invariants() {
    let mut reg = Registry::new();
    let mut vm = new_vm();
    let mut ops = Vec::new();
    for w in 0..WINDOW_PAGES / 512 {
        let base = VA_BASE + w * MIB2;
        if w % 4 == 3 {
            ops.push(map(base, MIB2, 1, 0));
        } else {
            for p in 0..512 {
                ops.push(map(base + p * PAGE, PAGE, 2 + p % 3, (p % 64) * PAGE));
            }
        }
    }
    for chunk in ops.chunks(700) {
        let j = vm.prepare(&mut reg, &BindJob::new(chunk)).unwrap();
        let d = vm.run(j).unwrap();
        vm.cleanup(d).unwrap();
    }
    vm.va_space().check_invariants().unwrap();
    let big = [map(VA_BASE + 0xa0_0000, 0x40_0000, 1, 0x20_0000)];
    let j = vm.prepare(&mut reg, &BindJob::new(&big)).unwrap();
    let d = vm.run(j).unwrap();
    vm.cleanup(d).unwrap();
    vm.va_space().check_invariants().unwrap();
}
