//! The simulator end to end: a short built-in scenario passes every check, its MMU agrees with
//! the model and with `pagetable::translate`, it is deterministic for a seed, and every hazard
//! check fires when its rule is broken on purpose.

use sim::mmu::Faults;
use sim::report::Report;
use sim::scenario::{Params, Scenario};
use sim::world::{Hazards, WorldFaults};

#[global_allocator]
static ALLOC: sim::alloc_count::Counting = sim::alloc_count::Counting;

fn small(seed: u64) -> Params {
    Params {
        seed,
        frames: 80,
        mem_mib: 128,
        ..Params::default()
    }
}

fn run_with(p: &Params, mmu: Faults, world: WorldFaults) -> Report {
    let mut s = Scenario::new(p.clone()).expect("setup");
    s.world.gpu.borrow_mut().faults = mmu;
    s.world.faults = world;
    s.run(|_, _| {}).expect("scenario runs");
    Report::new(&s, p)
}

#[test]
fn short_scenario_has_no_hazard_and_the_mmu_agrees_with_the_model() {
    let r = run_with(&small(3), Faults::default(), WorldFaults::default());
    assert!(r.alloc_counter_armed);
    assert_eq!(r.hazards_total, 0, "{:#?}", r.hazards);
    let (pages, bad) = r.audit;
    assert!(pages > 1000, "the audit compared {pages} pages");
    assert_eq!(bad, 0, "MMU walk, model and pagetable::translate disagree");
    assert!(r.verified > 1000 && r.expected_faults > 0);
    assert!(
        r.mmu.splits > 0 && r.mmu.fills_2m > 0,
        "blocks and splits happen"
    );
    assert!(r.mmu.as_evictions > 0, "more VMs than slots");
    assert!(
        r.timeouts >= 1,
        "the bind on a never-signalled fence times out"
    );
    assert!(r.passed());
}

/// Regression: under memory pressure the shrinker evicted a buffer whose map was still queued
/// behind a blocked bind; the map then ran with the old pages, revalidation reused the handle
/// for new ones, and the VM's link kept the old object: 16 wrong-data and 32 released-page
/// hazards and 512 audit mismatches at these knobs (smaller seeds ran out of table frames and
/// aborted). The shrinker now leaves buffers with pending binds alone.
#[test]
fn the_shrinker_waits_for_a_buffers_pending_binds() {
    let p = Params {
        seed: 7,
        frames: 120,
        churn_vms: 3,
        slots: 2,
        mem_mib: 100,
        ..Params::default()
    };
    let r = run_with(&p, Faults::default(), WorldFaults::default());
    assert!(r.evictions.0 > 0 && r.evictions.1 > 0, "{:#?}", r.story);
    assert_eq!(r.hazards_total, 0, "{:#?}", r.hazards);
    assert_eq!(
        r.audit.1, 0,
        "MMU walk, model and pagetable::translate disagree"
    );
}

#[test]
fn same_seed_same_report() {
    let a = run_with(&small(9), Faults::default(), WorldFaults::default());
    let b = run_with(&small(9), Faults::default(), WorldFaults::default());
    assert_eq!(a.deterministic_json(), b.deterministic_json());
    let c = run_with(&small(10), Faults::default(), WorldFaults::default());
    assert_ne!(a.deterministic_json(), c.deterministic_json());
}

fn fires(mmu: Faults, world: WorldFaults, pick: fn(&Hazards) -> u64, name: &str) {
    let r = run_with(&small(5), mmu, world);
    assert!(
        pick(&r.hazards) > 0,
        "{name} did not fire: {:#?}",
        r.hazards
    );
    assert!(!r.passed());
}

#[test]
fn skipped_tlb_invalidation_is_caught() {
    let f = Faults {
        skip_tlb_invalidate: true,
        ..Faults::default()
    };
    fires(f, WorldFaults::default(), |h| h.stale_tlb, "stale TLB");
}

#[test]
fn table_frame_reused_under_a_cached_walk_is_caught() {
    let f = Faults {
        skip_walk_invalidate: true,
        ..Faults::default()
    };
    fires(f, WorldFaults::default(), |h| h.freed_table, "freed table");
}

#[test]
fn allocation_in_a_run_stage_is_caught() {
    let f = Faults {
        alloc_in_run: true,
        ..Faults::default()
    };
    fires(
        f,
        WorldFaults::default(),
        |h| h.run_allocations,
        "run allocation",
    );
}

#[test]
fn stale_model_gives_unexpected_faults() {
    let w = WorldFaults {
        stale_model: true,
        ..WorldFaults::default()
    };
    fires(
        Faults::default(),
        w,
        |h| h.unexpected_fault,
        "unexpected fault",
    );
}

#[test]
fn forgotten_maps_give_missing_faults() {
    let w = WorldFaults {
        forget_maps: true,
        ..WorldFaults::default()
    };
    fires(Faults::default(), w, |h| h.missing_fault, "missing fault");
}

#[test]
fn skewed_translations_give_wrong_data() {
    let w = WorldFaults {
        skew_model: true,
        ..WorldFaults::default()
    };
    fires(Faults::default(), w, |h| h.wrong_data, "wrong data");
}

#[test]
fn pages_released_while_mapped_are_caught() {
    let w = WorldFaults {
        release_early: true,
        ..WorldFaults::default()
    };
    fires(Faults::default(), w, |h| h.released_page, "released page");
}

#[test]
fn a_dropped_fence_signal_breaks_forward_progress() {
    let w = WorldFaults {
        drop_fence_signal: true,
        ..WorldFaults::default()
    };
    fires(
        Faults::default(),
        w,
        |h| h.fence_never_signalled,
        "fence never signalled",
    );
}

#[test]
fn a_reservation_that_runs_out_is_a_hazard_and_the_vm_refuses_later_maps() {
    let w = WorldFaults {
        reservation_shortfall: true,
        ..WorldFaults::default()
    };
    let r = run_with(&small(5), Faults::default(), w);
    assert!(r.hazards.reservation_ran_out > 0, "{:#?}", r.hazards);
    assert!(
        r.refused_unusable > 0,
        "maps on the unusable VMs are refused"
    );
    assert!(!r.passed(), "the run fails (vmsim exits 1)");
    assert!(r.text().contains("-> FAILED"));
}

#[test]
fn job_summaries_account_for_every_reserved_frame() {
    let r = run_with(&small(3), Faults::default(), WorldFaults::default());
    let (reserved, used, retired) = r.job_frames;
    assert_eq!(reserved, r.frames_reserved, "every prepared job finished");
    assert!(used > 0 && used <= reserved, "{:?}", r.job_frames);
    assert!(retired > 0, "unmaps retire tables");
    assert_eq!(r.refused_unusable, 0);
}

#[test]
fn vmsim_without_arguments_runs_the_scenario_and_exits_zero() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vmsim"))
        .args(["--frames", "60"])
        .output()
        .expect("vmsim runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("hazards: 0 -> OK"), "{text}");
}

#[test]
fn a_dependency_cycle_through_a_user_queue_is_caught() {
    let w = WorldFaults {
        fence_cycle: true,
        ..WorldFaults::default()
    };
    fires(Faults::default(), w, |h| h.fence_cycle, "fence cycle");
}

#[test]
fn a_bind_waiting_on_user_queues_without_a_timeout_is_an_indefinite_fence() {
    let w = WorldFaults {
        xgs_no_timeout: true,
        ..WorldFaults::default()
    };
    fires(
        Faults::default(),
        w,
        |h| h.indefinite_fence,
        "indefinite fence",
    );
}

#[test]
fn a_block_split_under_running_gpu_work_needs_the_lock_region_stall() {
    let f = Faults {
        ignore_lock: true,
        ..Faults::default()
    };
    fires(
        f,
        WorldFaults::default(),
        |h| h.split_visible,
        "split visible",
    );
}

#[test]
fn user_submission_runs_in_both_directions_without_timeouts() {
    let r = run_with(&small(4), Faults::default(), WorldFaults::default());
    let u = r.user;
    assert_eq!(u.queues, 2);
    assert!(
        u.runs >= 2 * 80,
        "producer and consumer jobs every frame: {u:?}"
    );
    assert_eq!(u.pushed, u.executed, "every command completed");
    assert_eq!((u.xgs_timeouts, u.xgs_errors, u.faulted.0), (0, 0, 0));
    assert_eq!(u.xgs, (80, 80));
    assert!(u.waits.1 > 0, "some native waits had to block");
    assert!(
        r.mmu.lock_stalls > 0,
        "splits under running user-queue jobs"
    );
    assert_eq!(r.hazards_total, 0, "{:#?}", r.hazards);
}

/// A bind that prepare refuses for want of page-table frames is an error for userspace, as the
/// ioctl's `-ENOMEM` is, not the end of the run: its fence comes back already failed, the refusal
/// is counted, and the VM is as before.
#[test]
fn a_bind_refused_for_want_of_memory_is_counted_and_the_run_goes_on() {
    use sim::world::{BindKind, Contiguity, World};
    use vmbind::queue::Policy;

    let mut w = World::new(1, 1);
    let vm = w.add_vm("vm", Policy::Fifo, false, 1).expect("vm");
    // Take every free frame but one: the map below needs three new tables.
    let free = w.phys.borrow().free_frames();
    let bo = w
        .create_bo((free - 1) * 4096, Contiguity::Scattered)
        .expect("bo");
    let map = [World::map_op(0x40_0000_0000, 4096, bo, 0, false)];
    let fence = w.bind_sync(vm, &map, BindKind::Churn).expect("not fatal");
    assert_eq!(fence.status(), Some(Err(vmbind::JobError::Canceled)));
    let fence = w
        .bind_async(vm, 0, &map, vec![], None, BindKind::Churn)
        .expect("not fatal");
    assert_eq!(fence.status(), Some(Err(vmbind::JobError::Canceled)));
    assert_eq!(w.stats.refused_no_room, 2);
    assert!(w.mappings_of(vm, bo).is_empty());
    assert_eq!(w.audit_translations().1, 0);
}
