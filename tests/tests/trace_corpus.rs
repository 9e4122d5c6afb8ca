//! Replays the committed `trace_parser` fuzz corpus (and any crash artifacts) through the fuzz
//! body, on stable, as a normal test.
//!
//! The seeds come from `tests::trace_fuzz::seeds()`; this test checks that each is committed
//! unchanged. To (re)write them after changing the seed list:
//! `TRACE_WRITE_CORPUS=1 cargo test -p tests --test trace_corpus seed_corpus`.

use std::fs;
use std::path::Path;

use tests::corpus::{self, Corpus};

use tests::trace_fuzz::{run, seeds};

const CORPUS: Corpus = Corpus {
    target: "trace_parser",
    write_var: "TRACE_WRITE_CORPUS",
};

#[test]
fn seed_corpus_is_committed() {
    CORPUS.check_seeds(seeds(), 20);
}

#[test]
fn replay_corpus() {
    CORPUS.replay_corpus(20, run);
}

#[test]
fn replay_crash_artifacts() {
    // Minimised crashes land here (cargo fuzz); each must be fixed, i.e. pass, once committed.
    CORPUS.replay_artifacts(run);
}

#[test]
fn degenerate_inputs_do_not_panic() {
    run(&[]);
    for g in 0..=255u8 {
        run(&[g]);
        run(&[b's', b'p', b'a', b'c', b'e', b' ', g]);
        run(&[g; 16]);
    }
}

/// Parsed traces replay; every committed trace of `traces/` parses.
#[test]
fn committed_traces_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../traces");
    let mut n = 0;
    for path in corpus::files_in(&dir)
        .into_iter()
        .chain(corpus::files_in(&dir.join("gpuvm-examples")))
    {
        if path.extension().is_some_and(|e| e == "trace") {
            let text = fs::read_to_string(&path).expect("read a trace");
            sim::trace::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            run(text.as_bytes());
            n += 1;
        }
    }
    assert!(n >= 3, "the committed traces are missing");
}

/// Regression (found by `trace_parser`): in a VA space that can hold one mapping, a map of a new
/// object that is refused for its range (zero size) aborts the replay with links on
/// (`ReplayError::Link(TooManyLinks)`), while without links the request prints
/// `err zero-size` and the replay goes on: the output depends on links, against
/// `sim::ops::replay_with`'s documentation. Fixed in gpuva: `link_obtain` refused new links at
/// `max_mappings` links instead of the `2 * max_mappings` the link tree is sized for.
#[test]
fn regress_refused_map_of_new_object_in_full_space() {
    same_with_and_without_links("space 0 0x1\nmap 0x0 01 1 0\nmap 2000 0 2 0\nunmap 0x4 0x260");
}

/// Regression (same cause, a valid request): in a one-mapping space, replacing the only
/// mapping by one of another object was refused with links on (the new link was counted against
/// `max_mappings` while the old one still existed), but applied without links. Fixed as above.
#[test]
fn regress_replacing_the_only_mapping_by_another_object() {
    same_with_and_without_links("space 0 1\nmap 0 1 1 0\nmap 0 1 2 0\n");
}

/// The property the `trace_parser` body checks, without its tolerance of the known failure.
fn same_with_and_without_links(text: &str) {
    use sim::ops::{replay_with, Links};
    let t = sim::trace::parse(text).expect("a valid trace");
    let on = replay_with(&t, Links::On).map_err(|e| e.to_string());
    let off = replay_with(&t, Links::Off).map_err(|e| e.to_string());
    assert_eq!(on, off, "replay output depends on links");
}
