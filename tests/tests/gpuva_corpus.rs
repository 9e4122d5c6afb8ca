//! Replays the committed `gpuva_ops` fuzz corpus (the target was called `sm_ops` before) and any
//! crash artifacts through the fuzz body, on stable, as a normal test.
//!
//! The seeds come from `tests::fuzz_body::seeds()`; this test checks that each is committed
//! unchanged. To (re)write them after changing the seed list:
//! `GPUVA_WRITE_CORPUS=1 cargo test -p tests --test gpuva_corpus seed_corpus`.

use tests::corpus::Corpus;
use tests::fuzz_body::{run, run_every, seeds};

const CORPUS: Corpus = Corpus {
    target: "gpuva_ops",
    write_var: "GPUVA_WRITE_CORPUS",
};

#[test]
fn seed_corpus_is_committed() {
    CORPUS.check_seeds(seeds(), 24);
}

#[test]
fn replay_corpus() {
    // Every check after every request (the fuzz target runs the full comparisons every few).
    CORPUS.replay_corpus(24, |d| {
        run_every(d, 1);
    });
}

#[test]
fn replay_crash_artifacts() {
    // Minimised crashes land here (cargo fuzz); each must be fixed, i.e. pass, once committed.
    CORPUS.replay_artifacts(|d| {
        run_every(d, 1);
    });
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
