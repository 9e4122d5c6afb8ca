//! Sync objects through the pipeline: timeline points signalled out of order, wait-for-submit,
//! in-batch resolution, error propagation to out-fences, and failed submits that publish
//! nothing.
#![cfg(feature = "alloc")]
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_macros,
    clippy::type_complexity
)]

mod common;

use common::*;
use gpuva::ObjId;
use vmbind::queue::{BindQueue, Submit, SubmitError, SwFence, SwSyncs};
use vmbind::{BindJob, BindOp, JobError, JobFence, MapFlags, SyncDesc, SyncError};

type QVm = AnyVm<SwFence>;

fn map(va: u64, len: u64, obj: u64) -> BindOp {
    BindOp::Map {
        va,
        len,
        obj: ObjId::new(obj).unwrap(),
        offset: 0,
        flags: MapFlags::default(),
    }
}

fn job<'a>(ops: &'a [BindOp], ins: &'a [SyncDesc], outs: &'a [SyncDesc]) -> BindJob<'a> {
    BindJob {
        ops,
        in_syncs: ins,
        out_syncs: outs,
        mode: vmbind::Mode::Async,
    }
}

/// Submits one job as its own batch on `q`; returns its out-fence.
fn submit(
    vm: &mut QVm,
    syncs: &mut SwSyncs,
    reg: &mut Registry,
    q: &mut BindQueue<Bo>,
    j: &BindJob<'_>,
    now: u64,
) -> SwFence {
    let mut s = Submit::new(vm, syncs);
    let f = s.add(reg, j).unwrap();
    s.push(q, now).unwrap();
    f
}

#[test]
fn timeline_points_signalled_out_of_order() {
    let (mut reg, mut syncs) = (Registry::new(), SwSyncs::new());
    let mut vm: QVm = new_vm_with();
    let t = syncs.create(true).unwrap();
    let (mut qa, mut qb, mut qc) = (
        BindQueue::new(100),
        BindQueue::new(100),
        BindQueue::new(100),
    );
    let user = syncs.create(false).unwrap();
    // A signals t:1 but waits on a user fence; B signals t:2 and can run at once.
    let ua = [SyncDesc::binary(user).wait_for_submit()];
    let a_ops = [map(VA_BASE, 0x1000, 1)];
    let b_ops = [map(VA_BASE + 0x10_0000, 0x1000, 2)];
    let c_ops = [BindOp::Unmap {
        va: VA_BASE,
        len: 0x20_0000,
    }];
    let fa = submit(
        &mut vm,
        &mut syncs,
        &mut reg,
        &mut qa,
        &job(&a_ops, &ua, &[SyncDesc::timeline(t, 1)]),
        0,
    );
    let fb = submit(
        &mut vm,
        &mut syncs,
        &mut reg,
        &mut qb,
        &job(&b_ops, &[], &[SyncDesc::timeline(t, 2)]),
        0,
    );
    // C waits on point 2: it needs A's point 1 too, though B signals first.
    let fc = submit(
        &mut vm,
        &mut syncs,
        &mut reg,
        &mut qc,
        &job(&c_ops, &[SyncDesc::timeline(t, 2)], &[]),
        0,
    );
    assert_eq!(qb.poll(&mut vm, 1).ran, 1);
    assert_eq!(fb.status(), Some(Ok(())));
    assert_eq!(qa.poll(&mut vm, 1).ran, 0);
    assert_eq!(qc.poll(&mut vm, 1).ran, 0, "point 2 waits for point 1");
    assert!(fc.status().is_none());
    // User space signals A's in-fence.
    syncs.get(user).unwrap().host_signal(0).unwrap();
    assert_eq!(qc.poll(&mut vm, 2).ran, 0, "A has not run yet");
    assert_eq!(qa.poll(&mut vm, 2).ran, 1);
    assert_eq!(fa.status(), Some(Ok(())));
    assert_eq!(qc.poll(&mut vm, 2).ran, 1);
    assert_eq!(fc.status(), Some(Ok(())));
    vm.cleanup_deferred();
    assert!(vm.va_space().is_empty(), "C ran after A and B");
    assert_eq!(syncs.get(t).unwrap().last_point(), 2);
}

#[test]
fn wait_for_submit_resolves_when_the_point_appears_or_times_out() {
    let (mut reg, mut syncs) = (Registry::new(), SwSyncs::new());
    let mut vm: QVm = new_vm_with();
    let t = syncs.create(true).unwrap();
    let mut q = BindQueue::new(50);
    let ops = [map(VA_BASE, 0x1000, 1)];
    // Without the flag, a point nobody submitted is refused, and nothing changed.
    let plain = [SyncDesc::timeline(t, 5)];
    let mut s = Submit::new(&mut vm, &mut syncs);
    assert_eq!(
        s.add(&mut reg, &job(&ops, &plain, &[])).err(),
        Some(SubmitError::Sync {
            index: 0,
            error: SyncError::NotSubmitted
        })
    );
    drop(s);
    assert_eq!((vm.frames_in_flight(), reg.live.get()), (0, 0));
    // With it, the job waits for point 5 to be submitted, then signalled.
    let wfs = [SyncDesc::timeline(t, 5).wait_for_submit()];
    let fw = submit(
        &mut vm,
        &mut syncs,
        &mut reg,
        &mut q,
        &job(&ops, &wfs, &[]),
        0,
    );
    assert_eq!(q.poll(&mut vm, 10).ran, 0);
    let mut qx = BindQueue::new(50);
    let fx = submit(
        &mut vm,
        &mut syncs,
        &mut reg,
        &mut qx,
        &job(&[BindOp::SyncOnly], &[], &[SyncDesc::timeline(t, 5)]),
        10,
    );
    assert_eq!(q.poll(&mut vm, 11).ran, 0, "submitted, not signalled");
    assert_eq!(qx.poll(&mut vm, 11).ran, 1);
    assert_eq!(fx.status(), Some(Ok(())));
    assert_eq!(q.poll(&mut vm, 12).ran, 1);
    assert_eq!(fw.status(), Some(Ok(())));
    // A point that never appears: the job times out, VM unchanged, out-fence carries it.
    let never = [SyncDesc::timeline(t, 9).wait_for_submit()];
    let unmap = [BindOp::Unmap {
        va: VA_BASE,
        len: 0x1000,
    }];
    let fn_ = submit(
        &mut vm,
        &mut syncs,
        &mut reg,
        &mut q,
        &job(&unmap, &never, &[]),
        20,
    );
    assert_eq!(q.poll(&mut vm, 69).failed, 0);
    assert_eq!(q.poll(&mut vm, 70).failed, 1);
    assert_eq!(fn_.status(), Some(Err(JobError::Timeout)));
    assert_eq!(
        vm.va_space().len(),
        1,
        "the timed-out unmap changed nothing"
    );
}

#[test]
fn in_batch_signals_win_over_the_syncobj() {
    let (mut reg, mut syncs) = (Registry::new(), SwSyncs::new());
    let mut vm: QVm = new_vm_with();
    let b = syncs.create(false).unwrap();
    let t = syncs.create(true).unwrap();
    // The binary syncobj holds a fence that never signals.
    let stale = SwFence::new();
    vmbind::Syncobj::publish(syncs.get(b).unwrap(), 0, None, &stale);
    let mut q = BindQueue::new(1000);
    let o0 = [SyncDesc::binary(b), SyncDesc::timeline(t, 7)];
    let i1 = [SyncDesc::binary(b), SyncDesc::timeline(t, 7)];
    let ops0 = [map(VA_BASE, 0x1000, 1)];
    let ops1 = [map(VA_BASE + 0x1000, 0x1000, 2)];
    let mut s = Submit::new(&mut vm, &mut syncs);
    let f0 = s.add(&mut reg, &job(&ops0, &[], &o0)).unwrap();
    let f1 = s.add(&mut reg, &job(&ops1, &i1, &[])).unwrap();
    s.push(&mut q, 0).unwrap();
    assert_eq!(
        q.poll(&mut vm, 1).ran,
        2,
        "job 1 waited on job 0, not on the stale fence"
    );
    assert_eq!((f0.status(), f1.status()), (Some(Ok(())), Some(Ok(()))));
    assert!(syncs.get(b).unwrap().fence().unwrap().ptr_eq(&f0));
}

#[test]
fn errors_propagate_to_out_fences_and_dependants() {
    let (mut reg, mut syncs) = (Registry::new(), SwSyncs::new());
    let mut vm: QVm = new_vm_with();
    let t = syncs.create(true).unwrap();
    let b = syncs.create(false).unwrap();
    let user = syncs.create(false).unwrap();
    let mut q1 = BindQueue::new(100);
    let mut q2 = BindQueue::new(100);
    let mut bad = SwFence::new();
    vmbind::Syncobj::publish(syncs.get(user).unwrap(), 0, None, &bad);
    let ops = [map(VA_BASE, 0x2000, 3)];
    // A waits on the user fence, signals t:1 and b.
    let fa = submit(
        &mut vm,
        &mut syncs,
        &mut reg,
        &mut q1,
        &job(
            &ops,
            &[SyncDesc::binary(user)],
            &[SyncDesc::timeline(t, 1), SyncDesc::binary(b)],
        ),
        0,
    );
    // B waits on t:1, C on b; D waits on t:1 but times out first (its queue is short).
    let fb = submit(
        &mut vm,
        &mut syncs,
        &mut reg,
        &mut q2,
        &job(
            &ops,
            &[SyncDesc::timeline(t, 1)],
            &[SyncDesc::timeline(t, 2)],
        ),
        0,
    );
    let fc = submit(
        &mut vm,
        &mut syncs,
        &mut reg,
        &mut q2,
        &job(&ops, &[SyncDesc::binary(b)], &[]),
        0,
    );
    // E waits on t:2 (B's point, which fails through A).
    let fe = submit(
        &mut vm,
        &mut syncs,
        &mut reg,
        &mut q2,
        &job(&ops, &[SyncDesc::timeline(t, 2)], &[]),
        0,
    );
    bad.signal(Err(JobError::InFence(-71)));
    assert_eq!(q1.poll(&mut vm, 1).failed, 1);
    assert_eq!(fa.status(), Some(Err(JobError::InFence(-71))));
    assert_eq!(q2.poll(&mut vm, 1).failed, 3);
    assert_eq!(fb.status(), Some(Err(JobError::InFence(-71))));
    assert_eq!(fc.status(), Some(Err(JobError::InFence(-71))));
    assert_eq!(fe.status(), Some(Err(JobError::InFence(-71))));
    for f in [&fa, &fb, &fc, &fe] {
        assert_eq!(f.signal_count(), 1);
    }
    // A timed-out job's error reaches its dependants as an in-fence error.
    let mut q3 = BindQueue::new(5);
    let never = SwFence::new();
    let u2 = syncs.create(false).unwrap();
    vmbind::Syncobj::publish(syncs.get(u2).unwrap(), 0, None, &never);
    let ft = submit(
        &mut vm,
        &mut syncs,
        &mut reg,
        &mut q3,
        &job(&ops, &[SyncDesc::binary(u2)], &[SyncDesc::timeline(t, 3)]),
        10,
    );
    let fd = submit(
        &mut vm,
        &mut syncs,
        &mut reg,
        &mut q1,
        &job(&ops, &[SyncDesc::timeline(t, 3)], &[]),
        10,
    );
    assert_eq!(q3.poll(&mut vm, 15).failed, 1);
    assert_eq!(ft.status(), Some(Err(JobError::Timeout)));
    assert_eq!(q1.poll(&mut vm, 15).failed, 1);
    assert_eq!(
        fd.status(),
        Some(Err(JobError::InFence(JobError::Timeout.errno())))
    );
    vm.cleanup_deferred();
    assert!(vm.va_space().is_empty(), "no failed job changed the VM");
    assert_eq!((vm.frames_in_flight(), reg.live.get()), (0, 0));
}

#[test]
fn a_failed_add_publishes_nothing_and_leaves_the_vm_alone() {
    let (mut reg, mut syncs) = (Registry::new(), SwSyncs::new());
    let mut vm: QVm = new_vm_with();
    let t = syncs.create(true).unwrap();
    let b = syncs.create(false).unwrap();
    syncs.get(t).unwrap().host_signal(3).unwrap();
    let mut q = BindQueue::new(100);
    let good = [map(VA_BASE, 0x1000, 1)];
    let cases: Vec<(Vec<SyncDesc>, Vec<SyncDesc>, Vec<BindOp>, &str)> = vec![
        (
            vec![],
            vec![SyncDesc::timeline(t, 4), SyncDesc::binary(99)],
            good.to_vec(),
            "unknown out handle",
        ),
        (
            vec![SyncDesc::binary(t)],
            vec![SyncDesc::binary(b)],
            good.to_vec(),
            "binary desc on a timeline",
        ),
        (
            vec![],
            vec![SyncDesc::timeline(b, 1)],
            good.to_vec(),
            "timeline desc on a binary",
        ),
        (
            vec![],
            vec![SyncDesc::timeline(t, 0)],
            good.to_vec(),
            "timeline out-sync at point 0",
        ),
        (
            vec![SyncDesc::timeline(t, 8)],
            vec![SyncDesc::binary(b)],
            good.to_vec(),
            "in point not submitted",
        ),
        (
            vec![],
            vec![SyncDesc::timeline(t, 4)],
            vec![map(VA_BASE, 0x1000, 9)],
            "bad op after good syncs",
        ),
    ];
    for (ins, outs, ops, what) in &cases {
        let mut s = Submit::new(&mut vm, &mut syncs);
        // A good job first: the batch is released as a whole.
        s.add(&mut reg, &job(&good, &[], &[SyncDesc::timeline(t, 4)]))
            .unwrap();
        assert!(
            s.add(&mut reg, &job(ops, ins, outs)).is_err(),
            "{what}: accepted"
        );
        drop(s);
        assert_eq!(
            syncs.get(t).unwrap().last_point(),
            3,
            "{what}: timeline published"
        );
        assert!(
            syncs.get(b).unwrap().fence().is_none(),
            "{what}: binary published"
        );
        assert_eq!(vm.frames_in_flight(), 0, "{what}");
        assert_eq!(reg.live.get(), 0, "{what}: references kept");
        assert!(vm.va_space().is_empty());
        assert!(q.is_empty());
    }
    // And the same batch, pushed, publishes both points in order.
    let mut s = Submit::new(&mut vm, &mut syncs);
    let f = s
        .add(
            &mut reg,
            &job(&good, &[], &[SyncDesc::timeline(t, 4), SyncDesc::binary(b)]),
        )
        .unwrap();
    s.push(&mut q, 0).unwrap();
    assert_eq!(syncs.get(t).unwrap().last_point(), 4);
    assert!(syncs.get(b).unwrap().fence().unwrap().ptr_eq(&f));
    assert_eq!(q.poll(&mut vm, 0).ran, 1);
}
