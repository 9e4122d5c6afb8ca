//! Replays the committed `trace_parser` fuzz corpus (and any crash artifacts) through the fuzz
//! body, on stable, as a normal test.
//!
//! The seeds come from `tests::trace_fuzz::seeds()`; this test checks that each is committed
//! unchanged. To (re)write them after changing the seed list:
//! `TRACE_WRITE_CORPUS=1 cargo test -p tests --test trace_corpus seed_corpus`.

use std::fs;
use std::path::{Path, PathBuf};

use tests::trace_fuzz::{run, seeds};

fn fuzz_dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(sub)
        .join("trace_parser")
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
    if std::env::var_os("TRACE_WRITE_CORPUS").is_some() {
        fs::create_dir_all(&dir).expect("create the corpus directory");
        for (name, bytes) in seeds() {
            fs::write(dir.join(name), bytes).expect("write a seed");
        }
    }
    let seeds = seeds();
    assert!(seeds.len() >= 20, "a few dozen seeds");
    for (name, bytes) in seeds {
        let on_disk = fs::read(dir.join(&name)).unwrap_or_default();
        assert!(
            on_disk == bytes,
            "seed {name} missing or outdated in {}; rerun with TRACE_WRITE_CORPUS=1",
            dir.display()
        );
    }
}

#[test]
fn replay_corpus() {
    let corpus = files(&fuzz_dir("corpus"));
    assert!(corpus.len() >= 20, "the seed corpus is missing");
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
        run(&[b's', b'p', b'a', b'c', b'e', b' ', g]);
        run(&[g; 16]);
    }
}

/// Parsed traces replay; every committed trace of `traces/` parses.
#[test]
fn committed_traces_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../traces");
    let mut n = 0;
    for path in files(&dir)
        .into_iter()
        .chain(files(&dir.join("gpuvm-examples")))
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
