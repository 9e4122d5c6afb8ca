//! Property test: random map/unmap sequences against the page-granular reference model.
//!
//! Every request is checked by [`tests::harness::Harness::run`]: mappings disjoint, non-empty,
//! inside the space and outside the cut-out; the tree equals the model page by page; translations
//! outside the request unchanged; the ops recorded by the walk *before* applying equal the model's
//! drm_gpuvm ops, describe exactly the change and are what the step visitor sees; `keep` iff same
//! object and offset delta; nodes taken == inserted (<= 3 / <= 2), retired == removed, `len()` and
//! `generation()` consistent. Requests include NULL maps, invalid ranges, failing visitors, lying and
//! short pools, stale op lists, rebucketing; VA spaces have 1 to 64 buckets.

use proptest::prelude::*;
use tests::harness::{Geometry, Harness, RawReq, Rng, GEOMETRIES};

/// Layouts times bucket directories (see `Geometry::select`).
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
        prop_oneof![3 => 0u8..4, 2 => any::<u8>()],
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
        cases: 256,
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_sequences_match_the_model(
        geom in 0..SELECTORS,
        reqs in prop::collection::vec(raw_req(), 1..40),
    ) {
        let geom = Geometry::select(geom);
        let mut h = Harness::new(&geom);
        for raw in &reqs {
            h.run(&geom.decode(raw));
        }
        h.finish();
    }
}

/// The generator is not vacuous: over a fixed-seed run of the same request mix, every decision-table
/// row, keep both ways, every range error, and every failure path occur.
#[test]
fn generator_covers_every_case() {
    let mut rng = Rng::new(42);
    let mut total = tests::harness::Stats::default();
    for case in 0..200u32 {
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
            if rng.below(5) < 3 {
                raw.via %= 4;
            }
            h.run(&geom.decode(&raw));
        }
        h.finish();
        let s = h.stats;
        total.requests += s.requests;
        total.applied_ok += s.applied_ok;
        for i in 0..4 {
            total.range_errors[i] += s.range_errors[i];
        }
        for i in 0..9 {
            total.map_cases[i] += s.map_cases[i];
        }
        total.too_small += s.too_small;
        total.exhausted += s.exhausted;
        total.visitor_failed += s.visitor_failed;
        total.stale += s.stale;
        total.sink_failed += s.sink_failed;
        total.rebuckets += s.rebuckets;
        total.keep_true += s.keep_true;
        total.keep_false += s.keep_false;
        total.unmap_remaps += s.unmap_remaps;
        total.unmap_unmaps += s.unmap_unmaps;
        total.empty_unmaps += s.empty_unmaps;
        total.null_maps += s.null_maps;
        total.max_len = total.max_len.max(s.max_len);
    }
    println!("{total:#?}");
    let t = &total;
    for (name, n) in [
        ("applied", t.applied_ok),
        ("too small", t.too_small),
        ("exhausted", t.exhausted),
        ("visitor failed", t.visitor_failed),
        ("stale", t.stale),
        ("sink failed", t.sink_failed),
        ("rebucket", t.rebuckets),
        ("keep true", t.keep_true),
        ("keep false", t.keep_false),
        ("unmap remaps", t.unmap_remaps),
        ("unmap unmaps", t.unmap_unmaps),
        ("empty unmaps", t.empty_unmaps),
        ("null maps", t.null_maps),
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
}
