//! Jobs whose tickets are dropped without run, abort or cleanup (`PreparedJob`, `DoneJob`, a
//! `BindQueue` with queued jobs): their state stays in the VM, which gives it back when it is
//! dropped or on `Vm::reclaim_outstanding`. Frames are counted by a wrapper around the pool
//! that outlives the VM; object references by the registry's live count.
#![cfg(feature = "alloc")]
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_macros,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap
)]

mod common;

use std::cell::Cell;
use std::rc::Rc;

use common::*;
use gpuva::ObjId;
use pagetable::{AllocError, FrameAlloc, FrameMeta, FreeError, Granule, PhysAddr, Pte};
use pagetable::{TableMemory, VecPool};
use vmbind::queue::{BindQueue, SwFence};
use vmbind::{BindJob, BindOp, JobError, MapFlags, Vm, VmConfig};

/// A pool counting frames allocated and not freed, in a cell that outlives the VM.
struct Counted {
    inner: VecPool,
    live: Rc<Cell<i64>>,
}

impl TableMemory for Counted {
    fn granule(&self) -> Granule {
        self.inner.granule()
    }
    fn frame(&self, pa: PhysAddr) -> Option<(&[Pte], &FrameMeta)> {
        self.inner.frame(pa)
    }
    fn frame_mut(&mut self, pa: PhysAddr) -> Option<(&mut [Pte], &mut FrameMeta)> {
        self.inner.frame_mut(pa)
    }
}

impl FrameAlloc for Counted {
    fn alloc_frame(&mut self) -> Result<PhysAddr, AllocError> {
        let pa = self.inner.alloc_frame()?;
        self.live.set(self.live.get() + 1);
        Ok(pa)
    }
    fn free_frame(&mut self, pa: PhysAddr) -> Result<(), FreeError> {
        self.inner.free_frame(pa)?;
        self.live.set(self.live.get() - 1);
        Ok(())
    }
}

type CVm = Vm<Bo, Counted, TestMmu, SwFence>;

fn counted_vm() -> (CVm, Rc<Cell<i64>>) {
    let fmt = format();
    let live = Rc::new(Cell::new(0));
    let pool = Counted {
        inner: VecPool::new(fmt.granule(), PhysAddr::new(0x80_0000_0000 >> 2)).unwrap(),
        live: live.clone(),
    };
    let vm = Vm::new(
        VmConfig::new(fmt, 0x1000..1 << 47),
        pool,
        TestMmu::default(),
    )
    .unwrap();
    (vm, live)
}

fn map(va: u64, len: u64, obj: u64) -> BindOp {
    BindOp::Map {
        va,
        len,
        obj: ObjId::new(obj).unwrap(),
        offset: 0,
        flags: MapFlags::default(),
    }
}

fn run(vm: &mut CVm, reg: &mut Registry, ops: &[BindOp]) {
    let j = vm.prepare(reg, &BindJob::new(ops)).unwrap();
    let d = vm.run(j).map_err(|_| ()).unwrap();
    vm.cleanup(d).map_err(|_| ()).unwrap();
}

/// Everything observable: VA tree, decoded tables, frames in use outside the spare cache,
/// frames in flight, live object references.
fn state(vm: &CVm, live: &Cell<i64>, reg: &Registry) -> impl PartialEq + std::fmt::Debug {
    let tree: Vec<_> = vm
        .va_space()
        .iter()
        .map(|m| (m.addr(), m.length(), m.obj(), m.offset()))
        .collect();
    let mut tables = Vec::new();
    for va in (VA_BASE..VA_BASE + 8 * MIB2).step_by(PAGE as usize) {
        tables.push(
            vm.page_table()
                .translate(vm.memory(), pagetable::VirtAddr::new(va)),
        );
    }
    (
        tree,
        format!("{tables:?}"),
        live.get() - vm.spare_frames() as i64,
        vm.frames_in_flight(),
        reg.live.get(),
    )
}

/// The fixed prior state of every test: two mappings of objects 1 and 2.
fn base(vm: &mut CVm, reg: &mut Registry) {
    run(
        vm,
        reg,
        &[map(VA_BASE, 64 * PAGE, 1), map(VA_BASE + MIB2, MIB2, 2)],
    );
}

/// The jobs dropped by the scenario: a prepared job, an aborted job's `DoneJob`, a run job's
/// `DoneJob`, and a queue holding two jobs blocked on a fence nobody signals.
fn abandon(vm: &mut CVm, reg: &mut Registry) {
    let j = vm
        .prepare(reg, &BindJob::new(&[map(VA_BASE + 4 * MIB2, 16 * PAGE, 3)]))
        .unwrap();
    drop(j);
    let j = vm
        .prepare(reg, &BindJob::new(&[map(VA_BASE + 8 * PAGE, 4 * PAGE, 4)]))
        .unwrap();
    drop(vm.abort(j, JobError::Canceled).map_err(|_| ()).unwrap());
    let j = vm
        .prepare(reg, &BindJob::new(&[map(VA_BASE + 6 * MIB2, 8 * PAGE, 3)]))
        .unwrap();
    drop(vm.run(j).map_err(|_| ()).unwrap());
    let mut q: BindQueue<Bo> = BindQueue::new(1000);
    let gate = SwFence::new();
    for ops in [
        [map(VA_BASE + 3 * MIB2, 4 * PAGE, 1)],
        [BindOp::Unmap {
            va: VA_BASE,
            len: 2 * PAGE,
        }],
    ] {
        let mut j = vm.prepare(reg, &BindJob::new(&ops)).unwrap();
        j.arm(SwFence::new());
        q.submit(j, vec![gate.clone()], 0).map_err(|_| ()).unwrap();
    }
    q.poll(vm, 1);
    assert_eq!(q.len(), 2, "the queued jobs stay blocked");
    drop(q);
}

#[test]
fn dropping_the_vm_releases_abandoned_jobs() {
    // Baseline: the same VM with only the job that ran (its tables stay: the VM's drop leaves
    // the page tables to the pool's owner), then dropped.
    let mut reg0 = Registry::new();
    let (mut vm0, live0) = counted_vm();
    base(&mut vm0, &mut reg0);
    run(&mut vm0, &mut reg0, &[map(VA_BASE + 6 * MIB2, 8 * PAGE, 3)]);
    drop(vm0);
    let mut reg = Registry::new();
    let (mut vm, live) = counted_vm();
    base(&mut vm, &mut reg);
    abandon(&mut vm, &mut reg);
    assert!(vm.frames_in_flight() > 0, "the abandoned jobs hold frames");
    drop(vm);
    assert_eq!(live.get(), live0.get(), "frames not given back");
    assert_eq!(reg.live.get(), 0, "object references left");
    assert_eq!(reg0.live.get(), 0);
}

#[test]
fn reclaimed_unrun_jobs_leave_the_vm_as_before_their_prepare() {
    let mut reg = Registry::new();
    let (mut vm, live) = counted_vm();
    base(&mut vm, &mut reg);
    let before = state(&vm, &live, &reg);
    let j = vm
        .prepare(
            &mut reg,
            &BindJob::new(&[map(VA_BASE + 4 * MIB2, 16 * PAGE, 3)]),
        )
        .unwrap();
    drop(j);
    let j = vm
        .prepare(
            &mut reg,
            &BindJob::new(&[BindOp::Unmap {
                va: VA_BASE,
                len: 4 * PAGE,
            }]),
        )
        .unwrap();
    drop(vm.abort(j, JobError::Canceled).map_err(|_| ()).unwrap());
    assert_ne!(state(&vm, &live, &reg), before, "the jobs hold something");
    assert_eq!(vm.reclaim_outstanding(), 2);
    assert_eq!(state(&vm, &live, &reg), before);
    assert_eq!(vm.reclaim_outstanding(), 0);
    // The VM works on.
    run(&mut vm, &mut reg, &[map(VA_BASE + 4 * MIB2, 16 * PAGE, 3)]);
    assert_eq!(vm.frames_in_flight(), 0);
}

#[test]
fn reclaim_cleans_up_run_jobs_and_every_queued_one() {
    let mut reg = Registry::new();
    let (mut vm, live) = counted_vm();
    base(&mut vm, &mut reg);
    abandon(&mut vm, &mut reg);
    // 5 jobs: prepared, aborted, run (its map stays), two queued (never run).
    assert_eq!(vm.reclaim_outstanding(), 5);
    let mut reg2 = Registry::new();
    let (mut twin, live2) = counted_vm();
    base(&mut twin, &mut reg2);
    run(
        &mut twin,
        &mut reg2,
        &[map(VA_BASE + 6 * MIB2, 8 * PAGE, 3)],
    );
    assert_eq!(vm.frames_in_flight(), 0);
    let (a, b) = (state(&vm, &live, &reg), state(&twin, &live2, &reg2));
    assert_eq!(a, b);
}

#[test]
fn stale_tickets_are_handed_back_and_change_nothing() {
    let mut reg = Registry::new();
    let (mut vm, live) = counted_vm();
    base(&mut vm, &mut reg);
    let j = vm
        .prepare(
            &mut reg,
            &BindJob::new(&[map(VA_BASE + 4 * MIB2, 16 * PAGE, 3)]),
        )
        .unwrap();
    let j2 = vm
        .prepare(&mut reg, &BindJob::new(&[map(VA_BASE + 5 * MIB2, PAGE, 3)]))
        .unwrap();
    let d2 = vm.run(j2).map_err(|_| ()).unwrap();
    assert_eq!(vm.reclaim_outstanding(), 2);
    let after = state(&vm, &live, &reg);
    let j = vm.run(j).expect_err("stale prepared ticket runs");
    let j = vm
        .abort(j, JobError::Canceled)
        .expect_err("stale ticket aborts");
    let d2 = vm.cleanup(d2).expect_err("stale done ticket cleans up");
    vm.defer(d2);
    assert_eq!(vm.deferred(), 0, "a stale ticket is not deferred");
    assert_eq!(vm.cleanup_deferred(), 0);
    assert_eq!(state(&vm, &live, &reg), after);
    drop(j);
    // A ticket of a slot reused by a later job is stale too.
    let j3 = vm
        .prepare(
            &mut reg,
            &BindJob::new(&[BindOp::Unmap {
                va: VA_BASE,
                len: PAGE,
            }]),
        )
        .unwrap();
    let d3 = vm.run(j3).map_err(|_| ()).unwrap();
    vm.cleanup(d3).map_err(|_| ()).unwrap();
    // Another VM's ticket.
    let (mut other, _) = counted_vm();
    let mut reg2 = Registry::new();
    let k = other
        .prepare(&mut reg2, &BindJob::new(&[map(VA_BASE, PAGE, 1)]))
        .unwrap();
    let k = vm.run(k).expect_err("foreign ticket runs");
    let d = other.run(k).map_err(|_| ()).unwrap();
    let d = vm.cleanup(d).expect_err("foreign ticket cleans up");
    other.cleanup(d).map_err(|_| ()).unwrap();
    assert_eq!(other.frames_in_flight(), 0);
}
