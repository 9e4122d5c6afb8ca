//! Replays the committed `gpuva_ops` fuzz corpus (the target was called `sm_ops` before) and any
//! crash artifacts through the fuzz body, on stable, as a normal test.
//!
//! The seeds come from `tests::fuzz_body::seeds()`; this test checks that each is committed
//! unchanged. To (re)write them after changing the seed list:
//! `GPUVA_WRITE_CORPUS=1 cargo test -p tests --test gpuva_corpus seed_corpus`.

use std::fs;
use std::path::{Path, PathBuf};

use tests::fuzz_body::{run, run_every, seeds};

fn fuzz_dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(sub)
        .join("gpuva_ops")
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
    // Every check after every request (the fuzz target runs the full comparisons every few).
    let r = std::panic::catch_unwind(|| run_every(&data, 1));
    assert!(
        r.is_ok(),
        "fuzz input {} fails (see the panic above)",
        path.display()
    );
}

#[test]
fn seed_corpus_is_committed() {
    let dir = fuzz_dir("corpus");
    if std::env::var_os("GPUVA_WRITE_CORPUS").is_some() {
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
            "seed {name} missing or outdated in {}; rerun with GPUVA_WRITE_CORPUS=1",
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
        run(&[g, 0, 0, 0]);
        run(&[g; 64]);
    }
}

/// The example seeds decode to the worked examples they are named after.
#[test]
fn example_seeds_decode_as_named() {
    use gpuva::{Mapping, ObjId};
    use tests::harness::{Geometry, Kind, RawReq};
    let seeds = seeds();
    let decode = |name: &str| -> Vec<Kind> {
        let (_, bytes) = seeds.iter().find(|(n, _)| n == name).expect("seed exists");
        let geom = Geometry::select(bytes[0]);
        bytes[1..]
            .chunks_exact(RawReq::SIZE)
            .map(|c| geom.decode(&RawReq::from_bytes(c)).kind)
            .collect()
    };
    let (x, y, z) = (ObjId::new(1), ObjId::new(2), ObjId::new(3));
    assert_eq!(
        decode("e10_three_objects"),
        [
            Kind::Map(Mapping::new(10, 10, x, 0)),
            Kind::Map(Mapping::new(20, 10, y, 0)),
            Kind::Map(Mapping::new(35, 10, z, 1)),
            Kind::Map(Mapping::new(15, 25, None, 0)),
        ]
    );
    assert_eq!(
        decode("u02_middle"),
        [
            Kind::Map(Mapping::new(10, 30, x, 0)),
            Kind::Unmap { addr: 20, len: 10 },
        ]
    );
}

/// The link seeds exercise what they are named after.
#[test]
fn link_seeds_do_as_named() {
    let seeds = seeds();
    let stats = |name: &str| {
        let (_, bytes) = seeds.iter().find(|(n, _)| n == name).expect("seed exists");
        tests::fuzz_body::run_stats(bytes).expect("non-empty")
    };
    let s = stats("link_pin_keeps_empty");
    assert!(s.pins_held > 0 && s.zombies_drained > 0, "{s:?}");
    let s = stats("link_flags");
    assert!(s.flag_changes >= 3 && s.flag_refusals > 0, "{s:?}");
    let s = stats("link_no_pin");
    assert_eq!(
        s.no_link, 2,
        "objects 3 (at first) and 1 have no link: {s:?}"
    );
    assert_eq!(s.applied_ok, 3, "{s:?}");
    let s = stats("link_remap_pieces");
    assert!(s.unmap_remaps > 0 && s.links_created == 3, "{s:?}");
    let s = stats("link_drain");
    assert!(s.pins_held == 3 && s.zombies_drained >= 3, "{s:?}");
    let s = stats("links_via_no_pin_map");
    assert_eq!(s.no_link, 0, "the link exists from the earlier map: {s:?}");
}
