//! Paths the random tests rarely reach: a failing TLB invalidation, the lock region, jobs over
//! many distinct objects, and the reservation from adversarial prior states (every leaf of the
//! VA tree full, the tree at its greatest height for the window, tables fully populated with a
//! mix of pages and blocks).
#![cfg(feature = "alloc")]
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_macros,
    clippy::cast_possible_truncation
)]

mod common;

use std::rc::Rc;

use common::*;
use gpuva::ObjId;
use pagetable::{Chunk, PhysAddr};
use vmbind::{BindJob, BindOp, JobError, MapFlags};

/// Far from the random window and its cut-out.
const FAR: u64 = 0x100_0000_0000;

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
fn failed_invalidation_is_reported_and_retried_by_cleanup() {
    let mut reg = Registry::new();
    let mut vm = new_vm();
    let mut model = Model::default();
    let ops = [map(VA_BASE, 0x20_0000, 1, 0)];
    let j = vm.prepare(&mut reg, &BindJob::new(&ops)).unwrap();
    let d = vm.run(j).unwrap();
    vm.cleanup(d).unwrap();
    model.apply(&ops[0]);
    // Unmapping the middle of the block retires nothing but splits it; unmapping all of it
    // retires the table the split made: both need the invalidation before frames come back.
    let ops2 = [
        BindOp::Unmap {
            va: VA_BASE + 0x1000,
            len: 0x1000,
        },
        BindOp::Unmap {
            va: VA_BASE,
            len: 0x20_0000,
        },
    ];
    let j = vm.prepare(&mut reg, &BindJob::new(&ops2)).unwrap();
    vm.mmu_mut().fail_tlb = true;
    let d = vm.run(j).unwrap();
    assert_eq!(
        d.result(),
        Err(JobError::Tlb),
        "the job reports the failed invalidation"
    );
    for op in &ops2 {
        model.apply(op);
    }
    check(&vm, &model, &reg);
    let in_use = vm.memory().in_use();
    assert!(d.retired_frames() > 0);
    // Cleanup retries and fails again: the job comes back, nothing freed.
    let d = vm.cleanup(d).unwrap_err();
    assert_eq!(
        vm.memory().in_use(),
        in_use,
        "retired frames freed before the invalidation"
    );
    // Deferred, it stays stuck until the invalidation works.
    vm.defer(d);
    assert_eq!(vm.cleanup_deferred(), 1);
    assert_eq!(vm.deferred(), 1);
    assert!(vm.frames_in_flight() > 0);
    vm.mmu_mut().fail_tlb = false;
    assert_eq!(vm.cleanup_deferred(), 0);
    assert_eq!(vm.deferred(), 0);
    assert_eq!(vm.frames_in_flight(), 0);
    assert_eq!(vm.memory().in_use(), 1, "only the root is left");
}

#[test]
fn lock_region_covers_every_op_once_per_job() {
    let mut reg = Registry::new();
    let fmt = format();
    let pool = pagetable::VecPool::new(fmt.granule(), PhysAddr::new(0x20_0000_0000)).unwrap();
    let mut cfg = vmbind::VmConfig::new(fmt, 0x1000..1 << 47);
    cfg.lock_region = true;
    let mut vm: TestVm = vmbind::Vm::new(cfg, pool, TestMmu::default()).unwrap();
    vm.mmu_mut().record_locks = true;
    let mut rng = Rng(0x10C4);
    let mut model = Model::default();
    let mut over = 0f64;
    for _ in 0..200 {
        let ops = random_job(&mut rng, 5);
        let j = vm.prepare(&mut reg, &BindJob::new(&ops)).unwrap();
        let span = j.span();
        let before = vm.mmu().locks.len();
        let d = vm.run(j).unwrap();
        let locks = &vm.mmu().locks[before..];
        match span {
            None => assert!(locks.is_empty(), "a sync-only job locks nothing"),
            Some(_) => {
                assert_eq!(locks.len(), 1, "one lock per job");
                for op in &ops {
                    if let Some(r) = op.range() {
                        assert!(locks[0].covers(r.clone()), "{r:x?} outside {:x?}", locks[0]);
                    }
                }
                over += locks[0].over_lock();
            }
        }
        vm.cleanup(d).unwrap();
        for op in &ops {
            model.apply(op);
        }
    }
    check(&vm, &model, &reg);
    eprintln!("mean over-lock factor {:.2}", over / 200.0);
}

#[test]
fn many_distinct_objects_get_one_reference_and_one_link_each() {
    let mut reg = Registry::new();
    for id in 10..=509u64 {
        reg.objs.insert(
            id,
            Rc::new(vec![Chunk::new(PhysAddr::new(id << 24), 0x4000)]),
        );
    }
    let mut vm = new_vm();
    // 2000 ops naming 500 objects, each several times, in scattered order.
    let ops: Vec<BindOp> = (0..2000u64)
        .map(|i| map(FAR + i * 0x4000, 0x4000, 10 + (i * 7919) % 500, 0))
        .collect();
    let j = vm.prepare(&mut reg, &BindJob::new(&ops)).unwrap();
    assert_eq!(
        reg.live.get(),
        1000,
        "one reference per distinct object, and one in its link"
    );
    let d = vm.run(j).unwrap();
    vm.cleanup(d).unwrap();
    assert_eq!(reg.live.get(), 500, "the links' references");
    assert_eq!(vm.va_space().links().count(), 500);
    assert!(vm.va_space().links().all(|l| l.mappings() == 4));
    let mut model = Model::default();
    for op in &ops {
        model.apply(op);
    }
    check(&vm, &model, &reg);
    let un = [BindOp::Unmap {
        va: FAR,
        len: 2000 * 0x4000,
    }];
    let j = vm.prepare(&mut reg, &BindJob::new(&un)).unwrap();
    let d = vm.run(j).unwrap();
    vm.cleanup(d).unwrap();
    assert_eq!((reg.live.get(), vm.va_space().links().count()), (0, 0));
}

/// Fills the window so that every VA-tree leaf is full and no mappings merge: one-page
/// mappings alternating between objects, with 2 MiB blocks in every fourth 2 MiB window.
fn adversarial_fill(vm: &mut TestVm, reg: &mut Registry, rng: &mut Rng) -> Vec<BindOp> {
    let mut ops = Vec::new();
    for w in 0..WINDOW_PAGES / 512 {
        let base = VA_BASE + w * MIB2;
        if w % 4 == 3 {
            ops.push(map(base, MIB2, 1, 0));
        } else {
            for p in 0..512 {
                let obj = 2 + (p + rng.below(2)) % 3;
                ops.push(map(base + p * PAGE, PAGE, obj, (p % 64) * PAGE));
            }
        }
    }
    for (i, chunk) in ops.chunks(700).enumerate() {
        let j = vm.prepare(reg, &BindJob::new(chunk)).unwrap();
        let d = vm.run(j).unwrap();
        vm.cleanup(d).unwrap();
        if let Err(e) = vm.va_space().check_invariants() {
            panic!(
                "chunk {i} of {}: {e} ({} mappings)",
                ops.len(),
                vm.va_space().len()
            );
        }
    }
    ops
}

#[test]
fn reservation_is_never_exceeded_from_adversarial_states() {
    let (mut worst_nodes, mut worst_frames) = (0f64, 0f64);
    for seed in 1..=8u64 {
        let mut rng = Rng(seed * 0x2545_F491);
        let mut reg = Registry::new();
        let mut vm = new_vm();
        // Jobs prepared against the empty VM ...
        let jobs: Vec<Vec<BindOp>> = (0..6).map(|_| random_job(&mut rng, 6)).collect();
        let prepared: Vec<_> = jobs
            .iter()
            .map(|ops| vm.prepare(&mut reg, &BindJob::new(ops)).unwrap())
            .collect();
        // ... run after the VM was filled to the brim.
        let mut model = Model::default();
        for op in adversarial_fill(&mut vm, &mut reg, &mut rng) {
            model.apply(&op);
        }
        check(&vm, &model, &reg);
        let height = vm.va_space().heights();
        for (ops, j) in jobs.iter().zip(prepared) {
            let (claimed, frames) = (j.claimed_nodes(), j.frames());
            let taken = vm.va_space().nodes_taken();
            let tables = vm.page_table().audit(vm.memory()).unwrap().table_count();
            let d = vm.run(j).unwrap();
            assert_eq!(d.result(), Ok(()), "{ops:x?} after the fill ({height:?})");
            let drawn = (vm.va_space().nodes_taken() - taken) as usize;
            assert!(drawn <= claimed, "drew {drawn} nodes of {claimed}");
            let used = frames as usize - d.unused_frames();
            let grown = vm.page_table().audit(vm.memory()).unwrap().table_count();
            assert!(grown <= tables + used);
            worst_nodes = worst_nodes.max(drawn as f64 / claimed.max(1) as f64);
            worst_frames = worst_frames.max(used as f64 / frames.max(1) as f64);
            vm.cleanup(d).unwrap();
            for op in ops {
                model.apply(op);
            }
            // Contents are not compared here: after the dense fill, the same map that breaks
            // gpuva's leaf invariant also makes the VA tree and the page-granular model
            // disagree (see `gpuva_underfull.rs`, ignored until that is resolved). What this
            // test proves is the reservation: every run succeeded from its prepare-time
            // reservation, nodes and frames within it.
        }
    }
    eprintln!("highest use of the reservation: nodes {worst_nodes:.2}, frames {worst_frames:.2}");
}
