//! Bind queues, in-fences, timeouts and the two sync-bind policies: random job sets with random
//! in-fence signalling orders, errors, timeouts and sync binds end with the same VA tree and
//! translations as running the surviving jobs one by one in submission order; every out-fence
//! signals exactly once.
#![cfg(feature = "alloc")]
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_macros,
    clippy::cast_possible_truncation
)]

mod common;

use common::*;
use vmbind::queue::{sync_may_run, BindQueue, Policy, SwFence};
use vmbind::{BindJob, BindOp, JobError, JobFence};

type QVm = AnyVm<SwFence>;

struct Record {
    ops: Vec<BindOp>,
    out: SwFence,
}

fn scenario(policy: Policy, seed: u64) -> (usize, usize, usize) {
    let mut rng = Rng(seed | 1);
    let mut reg = Registry::new();
    let mut vm: QVm = new_vm_with();
    let mut q = BindQueue::new(50);
    let mut user: Vec<SwFence> = Vec::new();
    let mut log: Vec<Record> = Vec::new();
    let mut now = 0u64;
    let mut early_syncs = 0;
    for _ in 0..30 {
        now += 1;
        match rng.below(10) {
            0..=4 => {
                let ops = random_job(&mut rng, 4);
                let mut job = vm.prepare(&mut reg, &BindJob::new(&ops)).unwrap();
                let out = SwFence::new();
                job.arm(out.clone());
                let waits: Vec<SwFence> = (0..rng.below(3))
                    .map(|_| {
                        if !user.is_empty() && rng.below(2) == 0 {
                            user[rng.below(user.len() as u64) as usize].clone()
                        } else if !log.is_empty() && rng.below(3) == 0 {
                            // Wait on an earlier job's out-fence.
                            log[rng.below(log.len() as u64) as usize].out.clone()
                        } else {
                            let f = SwFence::new();
                            user.push(f.clone());
                            f
                        }
                    })
                    .collect();
                q.submit(job, waits, now).map_err(|_| ()).unwrap();
                log.push(Record { ops, out });
            }
            5 | 6 => {
                // A synchronous bind.
                let ops = random_job(&mut rng, 3);
                let mut job = vm.prepare(&mut reg, &BindJob::new(&ops)).unwrap();
                let out = SwFence::new();
                job.arm(out.clone());
                let span = job.span();
                if !q.is_empty() && sync_may_run(policy, &[&q], span.clone()) {
                    early_syncs += 1;
                }
                while !sync_may_run(policy, &[&q], span.clone()) {
                    // Let the world move on: signal a fence or let time pass.
                    if let Some(f) = user.iter_mut().find(|f| f.status().is_none()) {
                        f.signal(Ok(()));
                    } else {
                        now += 10;
                    }
                    q.poll(&mut vm, now);
                }
                let done = vm.run(job).map_err(|_| ()).unwrap();
                vm.cleanup(done).map_err(|_| ()).unwrap();
                log.push(Record { ops, out });
            }
            7 => {
                // User space signals a fence, sometimes with an error.
                let pending: Vec<usize> = (0..user.len())
                    .filter(|&i| user[i].status().is_none())
                    .collect();
                if !pending.is_empty() {
                    let i = pending[rng.below(pending.len() as u64) as usize];
                    let r = if rng.below(4) == 0 {
                        Err(JobError::InFence(-22))
                    } else {
                        Ok(())
                    };
                    user[i].signal(r);
                }
            }
            8 => now += rng.below(30),
            _ => {
                q.poll(&mut vm, now);
            }
        }
        if rng.below(2) == 0 {
            q.poll(&mut vm, now);
        }
    }
    // Drain: fences still pending never signal; their jobs time out.
    now += 1000;
    q.poll(&mut vm, now);
    assert!(q.is_empty());
    vm.cleanup_deferred();

    let mut model = Model::default();
    let (mut survived, mut failed) = (0, 0);
    for r in &log {
        assert_eq!(
            r.out.signal_count(),
            1,
            "every out-fence signals exactly once"
        );
        match r.out.status() {
            Some(Ok(())) => {
                survived += 1;
                for op in &r.ops {
                    model.apply(op);
                }
            }
            Some(Err(JobError::Timeout | JobError::InFence(_))) => failed += 1,
            other => panic!("unexpected out-fence state {other:?}"),
        }
    }
    check(&vm, &model, &reg);
    assert_eq!(vm.frames_in_flight(), 0);
    (survived, failed, early_syncs)
}

#[test]
fn queued_and_sync_binds_equal_sequential_execution() {
    for policy in [Policy::Fifo, Policy::RangeOrdered] {
        let (mut s, mut f, mut early) = (0, 0, 0);
        for seed in 0..40u64 {
            let (a, b, c) = scenario(policy, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            s += a;
            f += b;
            early += c;
        }
        assert!(
            s > 0 && f > 0,
            "{policy:?}: both outcomes exercised ({s} ran, {f} failed)"
        );
        if policy == Policy::Fifo {
            assert_eq!(early, 0);
        } else {
            assert!(
                early > 0,
                "RangeOrdered let some sync binds overtake disjoint queued jobs"
            );
        }
        eprintln!("{policy:?}: {s} jobs ran, {f} failed, {early} sync binds overtook queued jobs");
    }
}

#[test]
fn range_ordered_sync_bind_does_not_wait_for_an_unrelated_blocked_job() {
    let mut reg = Registry::new();
    let mut vm: QVm = new_vm_with();
    let mut q = BindQueue::new(100);
    let a = [BindOp::Unmap {
        va: VA_BASE,
        len: 0x1000,
    }];
    let mut ja = vm.prepare(&mut reg, &BindJob::new(&a)).unwrap();
    let out_a = SwFence::new();
    ja.arm(out_a.clone());
    let blocker = SwFence::new();
    q.submit(ja, vec![blocker.clone()], 0)
        .map_err(|_| ())
        .unwrap();
    let far = [BindOp::Unmap {
        va: VA_BASE + 0x80_0000,
        len: 0x1000,
    }];
    let near = [BindOp::Unmap {
        va: VA_BASE + 0x1000,
        len: 0x1000,
    }];
    let jf = vm.prepare(&mut reg, &BindJob::new(&far)).unwrap();
    let jn = vm.prepare(&mut reg, &BindJob::new(&near)).unwrap();
    assert!(sync_may_run(Policy::RangeOrdered, &[&q], jf.span()));
    assert!(!sync_may_run(Policy::Fifo, &[&q], jf.span()));
    assert!(
        !sync_may_run(Policy::RangeOrdered, &[&q], jn.span()),
        "same 2 MiB block"
    );
    // The blocked job times out: VM unchanged, out-fence carries the error.
    assert_eq!(q.poll(&mut vm, 99).ran, 0);
    assert_eq!(q.poll(&mut vm, 100).failed, 1);
    assert_eq!(out_a.status(), Some(Err(JobError::Timeout)));
    assert!(sync_may_run(Policy::Fifo, &[&q], jn.span()));
    for j in [jf, jn] {
        let d = vm.run(j).map_err(|_| ()).unwrap();
        vm.cleanup(d).map_err(|_| ()).unwrap();
    }
}

#[test]
fn queues_progress_independently() {
    let mut reg = Registry::new();
    let mut vm: QVm = new_vm_with();
    let (mut q1, mut q2) = (BindQueue::new(10), BindQueue::new(10));
    let ops = [BindOp::Unmap {
        va: VA_BASE,
        len: 0x1000,
    }];
    let blocker = SwFence::new();
    let (o1, o2) = (SwFence::new(), SwFence::new());
    let mut j1 = vm.prepare(&mut reg, &BindJob::new(&ops)).unwrap();
    j1.arm(o1.clone());
    let mut j2 = vm.prepare(&mut reg, &BindJob::new(&ops)).unwrap();
    j2.arm(o2.clone());
    q1.submit(j1, vec![blocker.clone()], 0)
        .map_err(|_| ())
        .unwrap();
    q2.submit(j2, vec![], 0).map_err(|_| ()).unwrap();
    assert_eq!(q1.poll(&mut vm, 1).ran, 0);
    assert_eq!(q2.poll(&mut vm, 1).ran, 1);
    assert_eq!(o2.status(), Some(Ok(())));
    let mut b = blocker;
    b.signal(Err(JobError::InFence(-5)));
    assert_eq!(q1.poll(&mut vm, 2).failed, 1);
    assert_eq!(o1.status(), Some(Err(JobError::InFence(-5))));
}
