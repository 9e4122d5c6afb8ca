//! The body of the `scenario_parser` fuzz target: arbitrary bytes into `sim`'s scenario-file
//! parser (`sim::script::parse`, the format of `docs/scenario-format.md`), which must return a
//! script or an error naming a real line, never panic; and a parsed script runs on the
//! simulator under small bounds without panicking.
//!
//! Checked per input (decoded lossily as UTF-8, so every byte string is a text):
//!
//! * an error names a line the text has (1-based), with a message;
//! * a parsed script has at most one command per line, and printed back
//!   (`sim::script::render`) it parses to the same script;
//! * a parsed script of at most [`MAX_RUN`] commands runs (`sim::script::Runner`) with at most
//!   [`MAX_MEMORY_MIB`] MiB of memory and [`LIMITS`], stopping at a line-numbered error or at
//!   the end, and its report (`sim::report::Report::of_world`) is built; its final audit (the
//!   MMU's walk, the model and `pagetable::translate` on every mapped page) finds no mismatch.
//!   Hazards are allowed (a script may well break the rules); a panic is not.
//!
//! The `fuzz/` crate includes this file by path.

use sim::report::Report;
use sim::script::{parse, render, Limits, Runner};

/// Longest parsed script that is also run.
pub const MAX_RUN: usize = 48;

/// Memory a fuzzed script runs with at most (MiB; larger `memory` lines are lowered to it).
pub const MAX_MEMORY_MIB: u64 = 4;

/// The run's bounds.
pub const LIMITS: Limits = Limits {
    max_steps: 64,
    max_time_us: 1 << 40,
    max_memory_mib: MAX_MEMORY_MIB,
};

/// Runs one fuzz input.
///
/// # Panics
///
/// On any violated property (see the module docs).
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let lines = text.lines().count();
    let mut script = match parse(&text) {
        Err(e) => {
            assert!(
                (1..=lines).contains(&e.line),
                "error on line {} of a {lines}-line text",
                e.line
            );
            let shown = e.to_string();
            assert!(shown.starts_with("line ") && shown.len() > 8, "{shown}");
            return;
        }
        Ok(s) => s,
    };
    assert!(script.cmds.len() <= lines, "more commands than lines");
    assert_eq!(script.lines.len(), script.cmds.len());
    let again = parse(&render(&script, "fuzz"));
    assert_eq!(
        again.as_ref(),
        Ok(&script),
        "printed back, the script parses the same"
    );
    if script.cmds.len() > MAX_RUN {
        return;
    }
    script.setup.memory_mib = script.setup.memory_mib.min(MAX_MEMORY_MIB);
    let Ok(mut runner) = Runner::with_limits(&script, LIMITS) else {
        panic!("the memory was lowered to the limit");
    };
    if let Err(e) = runner.run(&script) {
        assert!(
            script.lines.contains(&e.line),
            "a run error names a command's line: {e}"
        );
        assert!(runner.executed < script.cmds.len());
    }
    let r = Report::of_world(&runner.world, None, None, "fuzz".into());
    assert_eq!(r.hazards_total, r.hazards.total());
    // Whatever the script did, the MMU's walk, the model and `pagetable::translate` agree on
    // every mapped page (only the simulator's own fault switches break that).
    assert_eq!(r.audit.1, 0, "the final audit found mismatches");
}

/// The committed seed corpus: the example scenario files of `sim/scenarios/`, then small ones
/// (malformed or at an edge).
#[must_use]
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = vec![
        (
            "basic".into(),
            include_bytes!("../../sim/scenarios/basic.scn").to_vec(),
        ),
        (
            "timeout".into(),
            include_bytes!("../../sim/scenarios/timeout.scn").to_vec(),
        ),
        (
            "in_fence_error".into(),
            include_bytes!("../../sim/scenarios/in-fence-error.scn").to_vec(),
        ),
        (
            "user_queues".into(),
            include_bytes!("../../sim/scenarios/user-queues.scn").to_vec(),
        ),
        (
            "evict".into(),
            include_bytes!("../../sim/scenarios/evict.scn").to_vec(),
        ),
        (
            "cycle".into(),
            include_bytes!("../../sim/scenarios/cycle.scn").to_vec(),
        ),
    ];
    let cases: [(&str, &str); 20] = [
        ("empty", ""),
        ("comment_only", "# nothing\n"),
        ("unknown", "frob 1\n"),
        ("vm_only", "vm a fifo\n"),
        ("memory_late", "vm a fifo\nmemory 8M\n"),
        ("unclosed", "vm a fifo\nbind-sync a {\n  sync-only\n"),
        ("stray_close", "}\n"),
        ("item_outside", "read 0x1000\n"),
        ("dup_name", "vm a fifo\nbo a 4K huge\n"),
        ("no_point", "vm a fifo\ngpu-queue g\ngpu g a wait=1@1 {\n}\n"),
        ("not_host", "vm a fifo\nbind-async a -> f {\n}\nsignal f\n"),
        ("bad_number", "bo b 0x huge\n"),
        ("too_big", "bo b 99999999999999999999 huge\n"),
        ("overflow_suffix", "bo b 0xffffffffffffffffT huge\n"),
        (
            "refused_map",
            "vm a fifo\nbo b 64K scattered\nbind-sync a {\n  map 0x100000 2M b 0\n}\n",
        ),
        (
            "high_va",
            "vm a fifo\ngpu-queue g\ngpu g a {\n  read 0x100000000000000\n  write 0xfffffffffff8 1\n}\nstep 1ms\n",
        ),
        (
            "host_signal",
            "vm a fifo\nbo b 4K scattered\nhost-fence 1@0 -> h\nbind-async a wait=1@0 {\n  map 0x1000 4K b 0\n}\nsignal h error=-5\nsignal h\ndrain\n",
        ),
        (
            "user_queue",
            "memory 8M\nslots 1\nvm a fifo\nbo s 4K scattered\nbind-sync a {\n  map 0x1000 4K s 0\n}\nnative n s 0 32 a@0x1000\nuser-queue q a 1\npush q add n 0xffffffff\npush q wait n gt 5\nkick q\nxgs-wait n le 0 -> w\nstep 1ms 3\n",
        ),
        (
            "evict_reuse",
            "memory 4M\nvm a fifo\nbo b 3M huge\nbo c 3M huge\nclose b evicted\ncleanup\nswap-in b 3M huge\nbind-sync a kind=revalidate {\n  map 0x200000 3M b 0\n}\ndrain 1ms 10ms\n",
        ),
        ("crlf_tabs", "vm\ta fifo\r\ngpu-queue g # c\r\ngpu g a {\r\n\tread 0\r\n}\r\n"),
    ];
    for (name, text) in cases {
        out.push((name.into(), text.as_bytes().to_vec()));
    }
    out.push((
        "raw_bytes".into(),
        b"vm a fifo\nbo \xff\xfe 4K huge\n".to_vec(),
    ));
    out
}
