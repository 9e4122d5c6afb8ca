//! Replays the committed `pagetable_ops` fuzz corpus (and any crash artifacts) through the fuzz
//! body, on stable, as a normal test.
//!
//! The seeds come from `tests::pagetable_fuzz::seeds()`; this test checks that each is committed
//! unchanged. To (re)write them after changing the seed list:
//! `PAGETABLE_WRITE_CORPUS=1 cargo test -p tests --test pagetable_corpus seed_corpus`.
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_macros,
    reason = "test code may allocate infallibly"
)]

use tests::corpus::Corpus;
use tests::pagetable_fuzz::{run, seeds, REQ_SIZE};

const CORPUS: Corpus = Corpus {
    target: "pagetable_ops",
    write_var: "PAGETABLE_WRITE_CORPUS",
};

#[test]
fn seed_corpus_is_committed() {
    CORPUS.check_seeds(seeds(), 24);
}

#[test]
fn replay_corpus() {
    CORPUS.replay_corpus(24, run);
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
        run(&[g; 1 + REQ_SIZE]);
    }
    for k in 0..8u8 {
        run(&[k, k, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
    }
}

/// A deterministic pseudo-random stream through the body: coverage beyond the seeds, in a
/// bounded time.
#[test]
fn pseudo_random_inputs() {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..48 {
        let mut data = Vec::new();
        for _ in 0..(1 + 24 * REQ_SIZE) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.push(x.to_le_bytes()[3]);
        }
        run(&data);
    }
}
