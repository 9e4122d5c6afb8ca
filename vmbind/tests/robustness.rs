//! The run stage when the reservation runs out (the doc-hidden shortfall switch), the unusable
//! VM that follows, the eviction passthrough, per-job summaries from the queue, and the spare
//! frame cache.
#![cfg(feature = "alloc")]
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_macros,
    clippy::cast_possible_truncation
)]

mod common;

use common::*;
use gpuva::ObjId;
use vmbind::queue::{BindQueue, Submit, SwFence, SwSyncs};
use vmbind::{BindJob, BindOp, JobError, JobSummary, MapFlags, PrepareError};

fn map(va: u64, len: u64, obj: u64, offset: u64) -> BindOp {
    BindOp::Map {
        va,
        len,
        obj: ObjId::new(obj).unwrap(),
        offset,
        flags: MapFlags::default(),
    }
}

/// The job's frame bound (the job is prepared, aborted and cleaned up: nothing changes).
fn bound_of(vm: &mut TestVm, reg: &mut Registry, ops: &[BindOp]) -> u64 {
    let job = vm.prepare(reg, &BindJob::new(ops)).unwrap();
    let b = job.frames();
    let done = vm.abort(job, JobError::Canceled).unwrap();
    vm.cleanup(done).unwrap();
    b
}

/// A job reserved short fails cleanly in the run stage (no panic in this debug
/// build; release builds take the same path): the fence carries `Fault`, the VM turns
/// unusable, maps are refused from then on, unmaps still run, and everything comes back.
#[test]
fn reservation_shortfall_fails_cleanly_and_the_vm_turns_unusable() {
    let mut reg = Registry::new();
    let mut vm = new_vm();
    // Object 4 has no 2 MiB alignment: a map into empty tables needs L1, L2 and L3 tables.
    let ops = [map(VA_BASE, 0x4000, 4, 0)];
    // Reserve two frames where the map needs three.
    let bound = bound_of(&mut vm, &mut reg, &ops);
    vm.set_reservation_shortfall(bound - 2);
    let job = vm.prepare(&mut reg, &BindJob::new(&ops)).unwrap();
    let reserved = job.frames();
    assert_eq!(reserved, 2);
    let done = vm.run(job).unwrap();
    assert_eq!(done.result(), Err(JobError::Fault));
    let s = done.summary();
    assert_eq!(s.result, Err(JobError::Fault));
    assert_eq!(s.frames_reserved, reserved);
    assert_eq!(s.frames_used + s.frames_returned, s.frames_reserved);
    assert_eq!(s.frames_used, 0, "the short op wrote nothing");
    vm.cleanup(done).unwrap();
    assert!(vm.is_unusable());
    assert_eq!(vm.frames_in_flight(), 0);
    // Nothing was mapped: the failing map changed neither the tree nor the tables.
    assert!(vm.va_space().is_empty());
    assert_eq!(vm.page_table().audit(vm.memory()).unwrap().table_count(), 1);
    vm.set_reservation_shortfall(0);

    // The unusable VM refuses maps (nothing changes) and still runs unmaps.
    let in_flight = vm.frames_in_flight();
    let live = reg.live.get();
    assert_eq!(
        vm.prepare(&mut reg, &BindJob::new(&ops)).err(),
        Some(PrepareError::Unusable)
    );
    assert_eq!((vm.frames_in_flight(), reg.live.get()), (in_flight, live));
    let un = [BindOp::Unmap {
        va: VA_BASE,
        len: 0x20_0000,
    }];
    let job = vm.prepare(&mut reg, &BindJob::new(&un)).unwrap();
    let done = vm.run(job).unwrap();
    assert_eq!(done.result(), Ok(()));
    vm.cleanup(done).unwrap();
    let sync_only = [BindOp::SyncOnly];
    let job = vm.prepare(&mut reg, &BindJob::new(&sync_only)).unwrap();
    let done = vm.run(job).unwrap();
    assert_eq!(done.result(), Ok(()));
    vm.cleanup(done).unwrap();
    assert_eq!(reg.live.get(), 0);
}

/// A shortfall in the middle of a multi-op job: the ops before it stay applied (tree and
/// tables agree), the failing one and those after it change nothing.
#[test]
fn shortfall_mid_job_stops_at_the_short_op() {
    let mut reg = Registry::new();
    let mut vm = new_vm();
    // Two maps in different 1 GiB windows: the second needs its own L2 and L3 tables.
    let ops = [
        map(VA_BASE, 0x4000, 4, 0),
        map(VA_BASE + (1 << 30), 0x4000, 4, 0x4000),
    ];
    // Four frames where the job needs five (L1 shared, then L2 + L3 for each map).
    let bound = bound_of(&mut vm, &mut reg, &ops);
    vm.set_reservation_shortfall(bound - 4);
    let job = vm.prepare(&mut reg, &BindJob::new(&ops)).unwrap();
    let done = vm.run(job).unwrap();
    assert_eq!(done.result(), Err(JobError::Fault));
    let s = done.summary();
    assert_eq!((s.frames_reserved, s.frames_used), (4, 3));
    vm.cleanup(done).unwrap();
    assert_eq!(
        vm.va_space().len(),
        1,
        "the first map landed, the second did not"
    );
    let t = vm
        .page_table()
        .translate(vm.memory(), pagetable::VirtAddr::new(VA_BASE))
        .unwrap();
    assert_eq!(t.map(|t| t.pa.as_u64()), Some(reg.pa(4, 0)));
    let far = vm
        .page_table()
        .translate(vm.memory(), pagetable::VirtAddr::new(VA_BASE + (1 << 30)))
        .unwrap();
    assert!(far.is_none());
    assert!(vm.is_unusable());
}

#[test]
fn set_evicted_marks_the_link() {
    let mut reg = Registry::new();
    let mut vm = new_vm();
    let obj = ObjId::new(1).unwrap();
    assert!(vm.set_evicted(obj, true).is_err(), "no link yet");
    let ops = [map(VA_BASE, 0x1_0000, 1, 0)];
    let job = vm.prepare(&mut reg, &BindJob::new(&ops)).unwrap();
    let done = vm.run(job).unwrap();
    vm.cleanup(done).unwrap();
    vm.set_evicted(obj, true).unwrap();
    assert!(vm.va_space().link(obj).unwrap().is_evicted());
    assert_eq!(vm.va_space().evicted_links().count(), 1);
    vm.set_evicted(obj, false).unwrap();
    assert!(!vm.va_space().link(obj).unwrap().is_evicted());
    // The mapping and its translation are untouched.
    assert_eq!(vm.va_space().len(), 1);
}

/// `poll_with` reports each finished job's reservation and use, in order; an aborted job uses
/// nothing. Sixteen one-page maps in one 2 MiB window share their three tables.
#[test]
fn poll_with_reports_per_job_summaries() {
    let mut reg = Registry::new();
    let mut vm: vmbind::Vm<Bo, pagetable::VecPool, TestMmu, SwFence> = new_vm_with();
    let mut syncs = SwSyncs::new();
    let gate = syncs.create(false).unwrap();
    let mut q = BindQueue::new(10);
    let sparse: Vec<BindOp> = (0..16u64)
        .map(|i| map(VA_BASE + (i * 37 % 512) * PAGE, PAGE, 4, i * PAGE))
        .collect();
    let waits = [vmbind::SyncDesc::binary(gate).wait_for_submit()];
    let mut s = Submit::new(&mut vm, &mut syncs);
    s.add(&mut reg, &BindJob::new(&sparse)).unwrap();
    s.add(
        &mut reg,
        &BindJob {
            ops: &sparse[..1],
            in_syncs: &waits,
            ..BindJob::default()
        },
    )
    .unwrap();
    s.push(&mut q, 0).unwrap();
    let mut seen: Vec<JobSummary> = Vec::new();
    let p = q.poll_with(&mut vm, 0, |s| seen.push(*s));
    assert_eq!((p.ran, p.failed), (1, 0));
    let p = q.poll_with(&mut vm, 100, |s| seen.push(*s));
    assert_eq!((p.ran, p.failed), (0, 1));
    assert_eq!(seen.len(), 2);
    let (a, b) = (seen[0], seen[1]);
    assert_eq!(a.result, Ok(()));
    assert_eq!(
        a.frames_used, 3,
        "L1, L2 and L3 tables, shared by all sixteen maps"
    );
    assert_eq!(a.frames_used + a.frames_returned, a.frames_reserved);
    assert!(a.nodes_used > 0);
    assert_eq!(a.nodes_used + a.nodes_returned, a.nodes_reserved);
    assert_eq!(b.result, Err(JobError::Timeout));
    assert_eq!((b.frames_used, b.nodes_used), (0, 0));
    assert_eq!(b.frames_returned, b.frames_reserved);
    vm.cleanup_deferred();
    q.cleanup();
    assert_eq!(vm.frames_in_flight(), 0);
}

/// Unused reserved frames stay with the VM (zeroed) for the next jobs, bounded by the recent
/// peak of one job's reservation; the next job takes them before the allocator.
#[test]
fn spare_frames_are_reused_and_bounded() {
    let mut reg = Registry::new();
    let mut vm = new_vm();
    let ops = [map(VA_BASE, 0x1_0000, 4, 0)];
    let un = [BindOp::Unmap {
        va: VA_BASE,
        len: 0x1_0000,
    }];
    let mut peak = 0;
    for _ in 0..20 {
        for o in [&ops[..], &un[..]] {
            let job = vm.prepare(&mut reg, &BindJob::new(o)).unwrap();
            peak = peak.max(job.frames() as usize);
            let done = vm.run(job).unwrap();
            vm.cleanup(done).unwrap();
            assert!(vm.spare_frames() <= peak);
            vm.page_table().audit(vm.memory()).unwrap();
        }
    }
    assert!(vm.spare_frames() > 0);
    let tables = vm.page_table().audit(vm.memory()).unwrap().table_count();
    assert_eq!(vm.memory().in_use(), tables + vm.spare_frames());
}
