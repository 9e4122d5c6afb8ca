//! Property test: random map/unmap sequences, with link operations, against the page-granular
//! reference model and the link model.
//!
//! Every request is checked by [`tests::harness::Harness::run`]: mappings disjoint, non-empty,
//! inside the space and outside the cut-out; the tree equals the model page by page; translations
//! outside the request unchanged; the ops recorded by the walk *before* applying equal the model's
//! drm_gpuvm ops, describe exactly the change and are what the step visitor sees; `keep` iff same
//! object and offset delta; payloads handed back in op order; no request draws more nodes than its
//! bound; refused requests, claims and plans change nothing; every mapping with an object is
//! counted on exactly one link, at the model's addresses; pins, zombies, external and evicted flags
//! as the model says; `check_invariants()` after every request. Requests include NULL maps, invalid
//! and unaligned ranges, failing visitors, short and foreign claims, maps without a link, stale op
//! lists, plans and trims; VA spaces with and without links, granule 1 and page.
//!
//! (The previous storage's version also exercised lying pools and rebucketing; neither exists any
//! more: a claim is checked against the VA space's own spare cache, and the B+tree has no
//! maintenance step.)

use proptest::prelude::*;
use tests::harness::{Geometry, Harness, RawReq, Rng, Stats, GEOMETRIES};

/// Layouts times modes (see `Geometry::select`).
const SELECTORS: u8 = GEOMETRIES * 4;

fn raw_req() -> impl Strategy<Value = RawReq> {
    // Bias towards valid, small, keep-friendly map requests applied by steps; proptest shrinks each
    // byte towards 0, which is "map, 1 page, at page -3 ... by steps".
    (
        prop_oneof![3 => 0u8..=8, 2 => 9u8..=13, 1 => any::<u8>()],
        any::<u8>(),
        prop_oneof![4 => 0u8..0x78, 1 => any::<u8>()],
        any::<u8>(),
        prop_oneof![2 => Just(0u8), 1 => any::<u8>()],
        any::<u8>(),
        prop_oneof![3 => 0u8..4, 1 => (0u8..16).prop_map(|a| (a << 4) | 14), 2 => any::<u8>()],
    )
        .prop_map(|(kind, start, len, obj, off, flags, via)| RawReq {
            kind,
            start,
            len,
            obj,
            off,
            flags,
            via,
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 160,
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_sequences_match_the_model(
        geom in 0..SELECTORS,
        by_clear in any::<bool>(),
        reqs in prop::collection::vec(raw_req(), 1..40),
    ) {
        let geom = Geometry::select(geom);
        let mut h = Harness::new(&geom);
        for raw in &reqs {
            h.run(&geom.decode(raw));
        }
        h.finish_with(by_clear);
    }
}

/// The generator is not vacuous: over a fixed-seed run of the same request mix, every decision-table
/// row, keep both ways, every range error, every refusal and failure path, and every link
/// operation occur.
#[test]
fn generator_covers_every_case() {
    let mut rng = Rng::new(42);
    let mut total = Stats::default();
    for case in 0..160u32 {
        let geom = Geometry::select(u8::try_from(case % u32::from(SELECTORS)).unwrap_or(0));
        let mut h = Harness::new(&geom);
        for _ in 0..40 {
            let b: [u8; RawReq::SIZE] = std::array::from_fn(|_| rng.byte());
            let mut raw = RawReq::from_bytes(&b);
            // The same bias as the proptest strategy.
            raw.kind %= if rng.below(6) < 5 { 14 } else { 16 };
            if rng.below(5) < 4 {
                raw.len %= 0x78;
            }
            if rng.below(3) < 2 {
                raw.off = 0;
            }
            match rng.below(6) {
                0..=2 => raw.via %= 4,
                3 => raw.via = (raw.via & 0xf0) | 14,
                _ => {}
            }
            h.run(&geom.decode(&raw));
        }
        h.finish_with(case % 3 == 0);
        total.add(&h.stats);
    }
    println!("{total:#?}");
    let t = &total;
    for (name, n) in [
        ("applied", t.applied_ok),
        ("too small", t.too_small),
        ("foreign", t.foreign),
        ("no link", t.no_link),
        ("visitor failed", t.visitor_failed),
        ("stale", t.stale),
        ("sink failed", t.sink_failed),
        ("plans", t.plans),
        ("trims", t.trims),
        ("keep true", t.keep_true),
        ("keep false", t.keep_false),
        ("unmap remaps", t.unmap_remaps),
        ("unmap unmaps", t.unmap_unmaps),
        ("empty unmaps", t.empty_unmaps),
        ("null maps", t.null_maps),
        ("links created", t.links_created),
        ("pins held", t.pins_held),
        ("pins put", t.pins_put),
        ("zombies drained", t.zombies_drained),
        ("flag changes", t.flag_changes),
        ("flag refusals", t.flag_refusals),
        ("pinned empty links", t.pinned_empty),
    ] {
        assert!(n > 0, "never exercised: {name}");
    }
    assert!(
        t.range_errors.iter().all(|&n| n > 0),
        "range errors {:?}",
        t.range_errors
    );
    assert!(
        t.map_cases.iter().all(|&n| n > 0),
        "decision table rows {:?}",
        t.map_cases
    );
    assert!(t.max_len >= 8, "trees stay too small: {}", t.max_len);
    assert!(t.max_taken >= 1, "no request ever drew a node");
}
