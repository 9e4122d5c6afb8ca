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

use std::fs;
use std::path::{Path, PathBuf};

use tests::pagetable_fuzz::{run, seeds, REQ_SIZE};

fn fuzz_dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(sub)
        .join("pagetable_ops")
}

/// Every regular file in `dir` (none if it does not exist), sorted by name.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

fn replay(path: &Path) {
    let data = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let r = std::panic::catch_unwind(|| run(&data));
    assert!(
        r.is_ok(),
        "fuzz input {} fails (see the panic above)",
        path.display()
    );
}

#[test]
fn seed_corpus_is_committed() {
    let dir = fuzz_dir("corpus");
    if std::env::var_os("PAGETABLE_WRITE_CORPUS").is_some() {
        fs::create_dir_all(&dir).expect("create the corpus directory");
        for (name, bytes) in seeds() {
            fs::write(dir.join(name), bytes).expect("write a seed");
        }
    }
    let seeds = seeds();
    assert!(seeds.len() >= 24, "a few dozen seeds");
    for (name, bytes) in seeds {
        let on_disk = fs::read(dir.join(&name)).unwrap_or_default();
        assert!(
            on_disk == bytes,
            "seed {name} missing or outdated in {}; rerun with PAGETABLE_WRITE_CORPUS=1",
            dir.display()
        );
    }
}

#[test]
fn replay_corpus() {
    let corpus = files(&fuzz_dir("corpus"));
    assert!(corpus.len() >= 24, "the seed corpus is missing");
    for path in &corpus {
        replay(path);
    }
}

#[test]
fn replay_crash_artifacts() {
    // Minimised crashes land here (cargo fuzz); each must be fixed, i.e. pass, once committed.
    for path in files(&fuzz_dir("artifacts")) {
        replay(&path);
    }
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
