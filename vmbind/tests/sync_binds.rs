//! Synchronous binds through `run_sync`, across several bind queues of one VM, under both
//! policies, against sequential execution in submission order.
//!
//! The async jobs of queue `i` stay in their own 2 MiB-aligned VA window (queues are ordered
//! against each other only through fences, so jobs of different queues must not overlap for
//! submission order to be meaningful); synchronous binds touch any window. Checked:
//!
//! * when `run_sync` returns, the VA tree and the page tables *on the sync bind's span* equal
//!   the model of every earlier job that succeeded plus the sync bind (both policies), and the
//!   whole VM equals it under Fifo (every earlier job has finished);
//! * at the end, the whole VM equals running the surviving jobs one by one in submission order;
//! * RangeOrdered lets some sync binds run while unrelated jobs are still queued; Fifo never.
#![cfg(feature = "alloc")]
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_macros,
    clippy::cast_possible_truncation
)]

mod common;

use std::collections::BTreeMap;
use std::ops::Range;

use common::*;
use gpuva::ObjId;
use vmbind::queue::{run_sync, BindQueue, Policy, SwFence};
use vmbind::{BindJob, BindOp, JobError, JobFence, MapFlags};

type QVm = AnyVm<SwFence>;

const QUEUES: u64 = 3;
/// Pages per queue window (4 MiB), windows 2 MiB apart.
const WIN: u64 = 1024;

fn window_op(rng: &mut Rng, q: u64) -> BindOp {
    let base = VA_BASE + q * (WIN + 512) * PAGE;
    let max = if rng.below(4) == 0 { 600 } else { 16 };
    let len = (1 + rng.below(max)) * PAGE;
    let va = base + rng.below(WIN - len / PAGE) * PAGE;
    if rng.below(3) == 0 {
        BindOp::Unmap { va, len }
    } else {
        let obj = 1 + rng.below(4);
        BindOp::Map {
            va,
            len,
            obj: ObjId::new(obj).unwrap(),
            offset: rng.below((OBJ_SIZE - len) / PAGE + 1) * PAGE,
            flags: MapFlags::default(),
        }
    }
}

fn restrict<V: Clone>(m: &BTreeMap<u64, V>, span: &Range<u64>) -> BTreeMap<u64, V> {
    m.range(span.clone())
        .map(|(k, v)| (*k, v.clone()))
        .collect()
}

struct Rec {
    ops: Vec<BindOp>,
    out: SwFence,
}

fn model_of(log: &[Rec]) -> Model {
    let mut m = Model::default();
    for r in log.iter().filter(|r| r.out.status() == Some(Ok(()))) {
        for op in &r.ops {
            m.apply(op);
        }
    }
    m
}

fn scenario(policy: Policy, seed: u64) -> usize {
    let mut rng = Rng(seed | 1);
    let mut reg = Registry::new();
    let mut vm: QVm = new_vm_with();
    let mut qs: Vec<BindQueue<Bo>> = (0..QUEUES).map(|_| BindQueue::new(40)).collect();
    let mut user: Vec<SwFence> = Vec::new();
    let mut log: Vec<Rec> = Vec::new();
    let mut now = 0u64;
    let mut overtook = 0;
    for _ in 0..40 {
        now += 1;
        if rng.below(4) != 0 {
            let q = rng.below(QUEUES);
            let ops: Vec<BindOp> = (0..1 + rng.below(3))
                .map(|_| window_op(&mut rng, q))
                .collect();
            let mut job = vm.prepare(&mut reg, &BindJob::new(&ops)).unwrap();
            let out = SwFence::new();
            job.arm(out.clone());
            let waits: Vec<SwFence> = (0..rng.below(3))
                .map(|_| {
                    if !log.is_empty() && rng.below(3) == 0 {
                        log[rng.below(log.len() as u64) as usize].out.clone()
                    } else {
                        let f = SwFence::new();
                        user.push(f.clone());
                        f
                    }
                })
                .collect();
            qs[q as usize]
                .submit(job, waits, now)
                .map_err(|_| ())
                .unwrap();
            log.push(Rec { ops, out });
        } else {
            // A synchronous bind anywhere (often across windows).
            let ops: Vec<BindOp> = (0..1 + rng.below(2))
                .map(|_| {
                    let q = rng.below(QUEUES);
                    window_op(&mut rng, q)
                })
                .collect();
            let mut job = vm.prepare(&mut reg, &BindJob::new(&ops)).unwrap();
            let out = SwFence::new();
            job.arm(out.clone());
            let span = job.span().unwrap();
            let mut refs: Vec<&mut BindQueue<Bo>> = qs.iter_mut().collect();
            let mut user_iter = user.clone();
            let mut wrng = Rng(rng.next() | 1);
            let r = run_sync(&mut vm, &mut refs, policy, job, now, |_| {
                let pending: Vec<usize> = (0..user_iter.len())
                    .filter(|&i| user_iter[i].status().is_none())
                    .collect();
                if !pending.is_empty() && wrng.below(3) != 0 {
                    let i = pending[wrng.below(pending.len() as u64) as usize];
                    let res = if wrng.below(5) == 0 {
                        Err(JobError::InFence(-22))
                    } else {
                        Ok(())
                    };
                    user_iter[i].signal(res);
                } else {
                    now += 15;
                }
                Some(now)
            });
            assert_eq!(r, Ok(()));
            let still_queued: usize = qs.iter().map(BindQueue::len).sum();
            if still_queued > 0 {
                overtook += 1;
                assert_eq!(
                    policy,
                    Policy::RangeOrdered,
                    "Fifo ran a sync bind past queued jobs"
                );
            }
            log.push(Rec { ops, out });
            // What the sync bind must have observed, on its own span (and everywhere, for Fifo).
            vm.cleanup_deferred();
            let model = model_of(&log);
            assert_eq!(
                restrict(&tree_pages(&vm), &span),
                restrict(&model_tree(&model), &span)
            );
            assert_eq!(
                restrict(&decode_tables(&vm), &span),
                restrict(&expected_tables(&model, &reg), &span)
            );
            if policy == Policy::Fifo {
                check(&vm, &model, &reg);
            }
        }
        if rng.below(3) == 0 {
            let q = rng.below(QUEUES) as usize;
            qs[q].poll(&mut vm, now);
        }
    }
    now += 1000;
    for q in &mut qs {
        q.poll(&mut vm, now);
        assert!(q.is_empty());
    }
    vm.cleanup_deferred();
    for r in &log {
        assert_eq!(r.out.signal_count(), 1);
    }
    check(&vm, &model_of(&log), &reg);
    assert_eq!(vm.frames_in_flight(), 0);
    overtook
}

#[test]
fn sync_binds_across_queues_equal_sequential_execution() {
    for policy in [Policy::Fifo, Policy::RangeOrdered] {
        let mut overtook = 0;
        for seed in 0..30u64 {
            overtook += scenario(policy, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xB1D);
        }
        if policy == Policy::RangeOrdered {
            assert!(
                overtook > 0,
                "RangeOrdered never overtook an unrelated queued job"
            );
        }
        eprintln!("{policy:?}: {overtook} sync binds ran with unrelated jobs still queued");
    }
}

#[test]
fn run_sync_gives_up_cleanly() {
    let mut reg = Registry::new();
    let mut vm: QVm = new_vm_with();
    let mut q: BindQueue<Bo> = BindQueue::new(100);
    let a = [BindOp::Unmap {
        va: VA_BASE,
        len: 0x1000,
    }];
    let ja = vm.prepare(&mut reg, &BindJob::new(&a)).unwrap();
    q.submit(ja, vec![SwFence::new()], 0)
        .map_err(|_| ())
        .unwrap();
    let ops = [BindOp::Map {
        va: VA_BASE,
        len: 0x1000,
        obj: ObjId::new(1).unwrap(),
        offset: 0,
        flags: MapFlags::default(),
    }];
    let mut job = vm.prepare(&mut reg, &BindJob::new(&ops)).unwrap();
    let out = SwFence::new();
    job.arm(out.clone());
    let r = run_sync(&mut vm, &mut [&mut q], Policy::Fifo, job, 0, |_| None);
    assert_eq!(r, Err(JobError::Canceled));
    assert_eq!(out.status(), Some(Err(JobError::Canceled)));
    assert!(
        vm.va_space().is_empty(),
        "an interrupted sync bind changed nothing"
    );
    assert_eq!(q.len(), 1);
}
