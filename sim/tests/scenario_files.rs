//! Scenario files (`docs/scenario-format.md`): the example files of `sim/scenarios/` run to the
//! reports they promise, the built-in scenario dumps to a file that replays to its own report,
//! printing a script parses back to it, and malformed files are refused with their line.

use std::path::Path;

use sim::report::Report;
use sim::scenario::{Params, Scenario};
use sim::script::{parse, render, ParseErrorKind, RunErrorKind, Runner};

#[global_allocator]
static ALLOC: sim::alloc_count::Counting = sim::alloc_count::Counting;

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn replay_text(text: &str, source: &str) -> Report {
    let script = parse(text).unwrap_or_else(|e| panic!("{source}: {e}"));
    assert_eq!(
        parse(&render(&script, "printed back")).as_ref(),
        Ok(&script),
        "{source}: printed back, the script parses the same"
    );
    let mut run = Runner::new(&script);
    run.run(&script).unwrap_or_else(|e| panic!("{source}: {e}"));
    assert_eq!(run.executed, script.cmds.len());
    Report::of_world(&run.world, None, None, source.to_owned())
}

fn replay(name: &str) -> Report {
    let r = replay_text(&example(name), name);
    assert!(r.alloc_counter_armed);
    assert_eq!(r.audit.1, 0, "{name}: the final audit disagrees");
    r
}

fn clean(name: &str, r: &Report) {
    assert_eq!(r.hazards_total, 0, "{name}: {:#?}", r.hazards);
    assert!(r.passed(), "{name}");
}

#[test]
fn basic_maps_splits_and_verifies_every_access() {
    let r = replay("basic.scn");
    clean("basic", &r);
    assert_eq!(r.verified, 7, "every access to a mapped page is verified");
    assert_eq!(r.expected_faults, 3, "read-only write, hole, unmapped page");
    assert_eq!(r.mmu.splits, 1, "the 64 KiB hole splits a 2 MiB block");
    assert!(r.mmu.fills_2m > 0, "the huge object is block-mapped");
    assert_eq!(r.gpu_jobs, (3, 0));
    assert_eq!(r.timeouts, 0);
}

#[test]
fn timeout_fails_the_bind_on_a_fence_nobody_signals() {
    let r = replay("timeout.scn");
    clean("timeout", &r);
    assert_eq!(r.timeouts, 1);
    assert_eq!(
        r.gpu_jobs,
        (1, 1),
        "the job behind the timed-out bind fails"
    );
    let blocked = r.binds.iter().find(|(k, _)| k == "blocked on host");
    assert_eq!(
        blocked.map(|(_, b)| (b.jobs, b.ran, b.failed)),
        Some((3, 2, 1))
    );
    // (policy, count, waited, ...): the Fifo sync bind waits for the blocked bind, the
    // RangeOrdered one does not.
    let waited: Vec<(String, usize, u64)> = r
        .sync_latency
        .iter()
        .map(|(p, n, w, ..)| (p.clone(), *n, *w))
        .collect();
    assert_eq!(
        waited,
        vec![("Fifo".into(), 1, 1), ("RangeOrdered".into(), 1, 0)]
    );
}

#[test]
fn in_fence_error_fails_the_bind_and_the_job_behind_it() {
    let r = replay("in-fence-error.scn");
    clean("in-fence-error", &r);
    assert_eq!(r.timeouts, 0);
    let failed: u64 = r.binds.iter().map(|(_, b)| b.failed).sum();
    assert_eq!(failed, 1);
    assert_eq!(r.gpu_jobs, (1, 1));
    assert_eq!(
        r.fences.2, 2,
        "the bind's and the GPU job's fences carry the error"
    );
    assert_eq!(r.verified, 2);
}

#[test]
fn user_queues_pace_each_other_through_native_syncobjs() {
    let r = replay("user-queues.scn");
    clean("user-queues", &r);
    let u = r.user;
    assert_eq!(u.queues, 2);
    assert_eq!((u.pushed, u.executed, u.kicks), (7, 7, 2));
    assert_eq!(u.runs, 2, "both user-queue jobs ran");
    assert_eq!(u.xgs, (1, 1));
    assert_eq!((u.xgs_timeouts, u.xgs_errors), (0, 0));
    assert_eq!(u.faulted, (0, 0));
    assert!(u.waits.1 >= 1, "the consumer had to block on the producer");
    assert_eq!(r.hazards.fence_cycle, 0);
}

#[test]
fn evict_unmaps_frees_and_revalidates_with_the_contents() {
    let r = replay("evict.scn");
    clean("evict", &r);
    assert_eq!(
        r.evictions,
        (1, 1, 1),
        "evicted, revalidated, refused for memory"
    );
    assert_eq!(
        r.verified, 5,
        "the reads after revalidation see the old contents"
    );
    let row = |k: &str| r.binds.iter().find(|(n, _)| n == k).map(|(_, b)| b.ran);
    assert_eq!(row("eviction"), Some(1));
    assert_eq!(row("revalidation"), Some(1));
}

#[test]
fn cycle_is_reported_as_a_hazard() {
    let r = replay("cycle.scn");
    assert_eq!(r.hazards.fence_cycle, 1, "{:#?}", r.hazards);
    assert_eq!(r.hazards_total, 1, "{:#?}", r.hazards);
    assert!(!r.passed());
    assert_eq!(
        r.user.xgs_timeouts, 1,
        "only the XGS timeout ends the cycle"
    );
}

/// `vmsim scenario --dump` and `vmsim replay`: the built-in scenario recorded as the exact
/// sequence of commands it executed replays to the same report (everything but the
/// director's story), under memory pressure too.
#[test]
fn the_dumped_built_in_scenario_replays_to_the_same_report() {
    for (seed, mem_mib) in [(3, 160), (4, 128)] {
        let p = Params {
            seed,
            frames: 60,
            mem_mib,
            record: true,
            ..Params::default()
        };
        let mut s = Scenario::new(p.clone()).expect("setup");
        s.run(|_, _| {}).expect("scenario runs");
        let built_in = Report::new(&s, &p);
        let script = s.world.take_script().expect("recorded");
        let text = render(&script, "dump");
        let replayed = replay_text(&text, "dump");
        assert_eq!(built_in.world_json(), replayed.world_json(), "seed {seed}");
        assert!(built_in.verified > 1000 && built_in.user.runs > 0);
        let st = built_in.story.expect("the built-in scenario has a story");
        assert_eq!(
            replayed.evictions,
            (st.evicted, st.revalidated, st.oom_skips),
            "the world counts what the director does"
        );
        if mem_mib < 160 {
            assert!(st.evicted > 0, "memory pressure evicts");
        }
        // Same tables in the text report, after the header and the story.
        let tables = |t: &str| {
            let from = t.find("+---").unwrap_or(0);
            let to = t.rfind("(wall").unwrap_or(t.len());
            t[from..to]
                .lines()
                .filter(|l| !l.contains("jobs/s"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(tables(&built_in.text()), tables(&replayed.text()));
    }
}

fn parse_err(text: &str) -> (usize, ParseErrorKind) {
    let e = parse(text).expect_err("malformed");
    (e.line, e.kind)
}

#[test]
fn malformed_files_are_refused_with_their_line() {
    let (line, k) = parse_err("vm a fifo\n\nfrob 1\n");
    assert_eq!((line, k), (3, ParseErrorKind::Unknown("frob".into())));
    let (line, k) = parse_err("vm a fifo\nbind-sync a {\n  map 0 1 nope 0\n}\n");
    assert_eq!(line, 3);
    assert!(matches!(k, ParseErrorKind::Undefined { ref name, .. } if name == "nope"));
    assert_eq!(
        parse_err("vm a fifo\nbind-sync a {\n  unmap 0x1000 0x1000\n").0,
        2,
        "an unclosed block is reported at its first line"
    );
    assert!(matches!(
        parse_err("vm a fifo\nmemory 32M\n"),
        (2, ParseErrorKind::Misplaced("memory"))
    ));
    assert!(matches!(
        parse_err("vm a fifo\nvm a fifo\n"),
        (2, ParseErrorKind::Duplicate(_))
    ));
    assert!(matches!(
        parse_err("vm a fifo\nbind-async a queue=1 {\n}\n"),
        (
            2,
            ParseErrorKind::NoQueue {
                queues: 1,
                queue: 1,
                ..
            }
        )
    ));
    assert!(matches!(
        parse_err("vm a fifo\ngpu-queue g\ngpu g a wait=1@1 {\n}\n"),
        (3, ParseErrorKind::NoPoint(1, 1))
    ));
    assert!(matches!(
        parse_err("vm a fifo\nbind-async a -> f {\n}\nsignal f\n"),
        (4, ParseErrorKind::NotHost(_))
    ));
    assert!(matches!(
        parse_err("step 2h\n"),
        (1, ParseErrorKind::Number { .. })
    ));
    assert!(matches!(
        parse_err("bo b 99999999999999999999 huge\n"),
        (1, ParseErrorKind::Number { .. })
    ));
    assert!(matches!(
        parse_err("  read 0x1000\n"),
        (1, ParseErrorKind::OutsideBlock(_))
    ));
    let shown = parse("x\n").map_err(|e| e.to_string());
    assert_eq!(shown, Err("line 1: unknown command `x`".into()));
}

#[test]
fn a_refused_bind_stops_the_run_at_its_line() {
    // The object is 64 KiB; mapping 2 MiB of it is refused by prepare.
    let text = "vm a fifo\nbo b 64K scattered\nbind-sync a {\n  map 0x100000 2M b 0\n}\nstep 1ms\n";
    let script = parse(text).expect("well-formed");
    let mut run = Runner::new(&script);
    let e = run.run(&script).expect_err("refused");
    assert_eq!(e.line, 3);
    assert!(matches!(e.kind, RunErrorKind::World(_)), "{e}");
    assert_eq!(run.executed, 2, "the commands before it ran");
}

/// Regression: the MMU indexed its tables with the low 48 bits of any address, so an access at
/// 2^48 above a mapped page translated to that page (a missing-fault hazard) instead of
/// faulting as the hardware does. Scenario files can name such addresses.
#[test]
fn regress_an_access_above_the_va_range_faults() {
    let text = "vm a fifo\ngpu-queue g\nbo b 4K scattered\nbind-sync a {\n  map 0x100000 4K b 0\n}\n\
                gpu g a {\n  write 0x100000 5\n  read 0x1000000100000\n  read 0xff000000100000\n}\ndrain\n";
    let r = replay_text(text, "above the VA range");
    clean("above the VA range", &r);
    assert_eq!((r.verified, r.expected_faults), (1, 2));
}
