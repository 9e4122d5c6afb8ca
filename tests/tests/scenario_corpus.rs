//! Replays the committed `scenario_parser` fuzz corpus (and any crash artifacts) through the
//! fuzz body, on stable, as a normal test.
//!
//! The seeds come from `tests::scenario_fuzz::seeds()`; this test checks that each is committed
//! unchanged. To (re)write them after changing the seed list:
//! `SCENARIO_WRITE_CORPUS=1 cargo test -p tests --test scenario_corpus seed_corpus`.

use tests::corpus::Corpus;

use tests::scenario_fuzz::{run, seeds};

const CORPUS: Corpus = Corpus {
    target: "scenario_parser",
    write_var: "SCENARIO_WRITE_CORPUS",
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
        run(&[b'v', b'm', b' ', b'a', b' ', g]);
        run(&[b's', b't', b'e', b'p', b' ', b'1', g]);
        run(&[g; 16]);
    }
}
