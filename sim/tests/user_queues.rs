//! User submission on a small world: native syncobj conditions and widths, a user queue that a
//! bind waits on through an XGS wait and that waits on a bind through an XGS signal, the XGS
//! timeout, and an error status faulting a queue.

use sim::usq::{Cond, SyncOp, UserCmd};
use sim::world::{Access, BindKind, Contiguity, World};
use vmbind::queue::Policy;
use vmbind::BindOp;

#[global_allocator]
static ALLOC: sim::alloc_count::Counting = sim::alloc_count::Counting;

const SYNC_VA: u64 = 0x30_0000_0000;

fn world() -> (World, usize, usize, usize) {
    let mut w = World::new(64, 2);
    let vm = w.add_vm("vm", Policy::Fifo, true, 1).expect("vm");
    let bo = w.create_bo(4096, Contiguity::Scattered).expect("bo");
    w.bind_sync(
        vm,
        &[World::map_op(SYNC_VA, 4096, bo, 0, false)],
        BindKind::Churn,
    )
    .expect("map");
    let a = w.native_sync(bo, 0, true, vec![(vm, SYNC_VA)]);
    let b = w.native_sync(bo, 16, false, vec![(vm, SYNC_VA + 16)]);
    (w, vm, a, b)
}

#[test]
fn conditions_and_widths() {
    assert!(Cond::Gt(3).holds(4, true) && !Cond::Gt(4).holds(4, true));
    assert!(Cond::Le(4).holds(4, true) && !Cond::Le(3).holds(4, true));
    // 32-bit: the upper half is ignored, arithmetic wraps at 2^32.
    assert!(!Cond::Gt(0).holds(1 << 32, false));
    assert_eq!(SyncOp::Add(1).apply(0xFFFF_FFFF, false), 0);
    assert_eq!(SyncOp::Add(1).apply(0xFFFF_FFFF, true), 1 << 32);
    assert_eq!(SyncOp::Add(u64::MAX).apply(5, true), 4);
    assert_eq!(SyncOp::Set(7).apply(5, false), 7);
}

#[test]
fn bind_waits_on_a_user_queue_and_a_user_queue_waits_on_a_bind() {
    let (mut w, vm, a, b) = world();
    let q = w.add_user_queue(vm, 8);
    let data = w.create_bo(1 << 20, Contiguity::Scattered).expect("bo");
    // The bind waits on the queue (b > 0); the queue first waits on a host-signalled bind.
    let gate = w.host_fence(7, 0);
    let first = w
        .bind_async(
            vm,
            0,
            &[BindOp::SyncOnly],
            vec![gate.clone()],
            None,
            BindKind::Churn,
        )
        .expect("bind");
    w.xgs_signal(vec![first], a, SyncOp::Set(1));
    for cmd in [
        UserCmd::Wait {
            sync: a,
            cond: Cond::Gt(0),
        },
        UserCmd::Run {
            accesses: vec![Access {
                va: SYNC_VA + 64,
                write: Some(9),
            }],
            per_step: 1,
        },
        UserCmd::Sync {
            sync: b,
            op: SyncOp::Add(1),
        },
    ] {
        w.uq_push(q, cmd).expect("room");
    }
    let x = w.xgs_wait(b, Cond::Gt(0));
    let map = w
        .bind_async(
            vm,
            0,
            &[World::map_op(0x1000_0000, 1 << 20, data, 0, false)],
            vec![x.clone()],
            None,
            BindKind::Churn,
        )
        .expect("bind");
    // Not kicked: nothing moves even once the gate opens.
    let mut gate = gate;
    vmbind::JobFence::signal(&mut gate, Ok(()));
    w.step(1000);
    assert_eq!(
        w.native_value(a),
        (1, 0),
        "the XGS signal ran after the first bind"
    );
    assert!(x.status().is_none() && map.status().is_none());
    w.uq_kick(q);
    w.step(1000);
    assert_eq!(w.native_value(b), (1, 0));
    assert_eq!(x.status(), Some(Ok(())));
    assert_eq!(map.status(), Some(Ok(())));
    let s = w.stats.user;
    assert_eq!((s.pushed, s.executed, s.runs, s.xgs), (3, 3, 1, (1, 1)));
    w.drain(1000, 100_000);
    assert_eq!(w.hazards().total(), 0, "{:#?}", w.hazards());
}

#[test]
fn an_xgs_wait_times_out_with_an_error_and_the_bind_behind_it_fails() {
    let (mut w, vm, _, b) = world();
    let x = w.xgs_wait(b, Cond::Gt(0));
    let bind = w
        .bind_async(
            vm,
            0,
            &[BindOp::SyncOnly],
            vec![x.clone()],
            None,
            BindKind::Churn,
        )
        .expect("bind");
    let t = w.xgs_timeout;
    w.step(t + 1);
    assert_eq!(x.status(), Some(Err(vmbind::JobError::Timeout)));
    assert!(matches!(bind.status(), Some(Err(_))));
    assert_eq!(w.stats.user.xgs_timeouts, 1);
    w.drain(1000, 100_000);
    assert_eq!(w.hazards().total(), 0);
}

#[test]
fn an_error_signalled_into_a_syncobj_faults_the_waiting_queue() {
    let (mut w, vm, a, _) = world();
    let q = w.add_user_queue(vm, 4);
    let mut f = w.host_fence(1, 0);
    w.xgs_signal(vec![f.clone()], a, SyncOp::Set(1));
    w.uq_push(
        q,
        UserCmd::Wait {
            sync: a,
            cond: Cond::Gt(0),
        },
    )
    .expect("room");
    w.uq_push(
        q,
        UserCmd::Sync {
            sync: a,
            op: SyncOp::Add(1),
        },
    )
    .expect("room");
    w.uq_kick(q);
    vmbind::JobFence::signal(&mut f, Err(vmbind::JobError::Fault));
    w.step(1000);
    assert_eq!(w.native_value(a), (1, 1), "value written, error status set");
    assert!(w.uq_faulted(q));
    assert_eq!(w.stats.user.faulted, (1, 2));
    assert!(w
        .uq_push(
            q,
            UserCmd::Sync {
                sync: a,
                op: SyncOp::Set(0)
            }
        )
        .is_err());
}

#[test]
fn a_full_ring_refuses_the_push() {
    let (mut w, vm, a, _) = world();
    let q = w.add_user_queue(vm, 2);
    for _ in 0..2 {
        w.uq_push(
            q,
            UserCmd::Sync {
                sync: a,
                op: SyncOp::Add(1),
            },
        )
        .expect("room");
    }
    assert_eq!(w.uq_space(q), 0);
    assert!(w
        .uq_push(
            q,
            UserCmd::Sync {
                sync: a,
                op: SyncOp::Add(1)
            }
        )
        .is_err());
    assert_eq!(w.stats.user.ring_full, 1);
    w.uq_kick(q);
    w.step(1000);
    assert_eq!(w.native_value(a), (2, 0));
    assert_eq!(w.uq_space(q), 2);
}
