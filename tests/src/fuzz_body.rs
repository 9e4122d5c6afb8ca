//! The body of the `sm_ops` fuzz target, shared with the corpus replay test.
//!
//! The `fuzz/` crate includes this file (and [`crate::model`], [`crate::harness`]) by path, so the
//! fuzzer and `cargo test` run the very same code; the input format is a hand-written, stable byte
//! encoding (no `arbitrary`), so committed corpus files keep their meaning.
//!
//! Input: byte 0 selects the [`Geometry`]; then every [`RawReq::SIZE`] bytes are one request
//! ([`RawReq`]); a trailing partial request is ignored, and at most [`MAX_REQUESTS`] are run. After
//! the last request the whole space is unmapped and the tree must be empty.

use crate::harness::{Geometry, Harness, RawReq, Rng};

/// Requests run per input at most (keeps every input fast).
pub const MAX_REQUESTS: usize = 128;

/// Runs one fuzz input; panics on any violated invariant, never on a bad request.
pub fn run(data: &[u8]) {
    let Some((&g, rest)) = data.split_first() else {
        return;
    };
    let geom = Geometry::select(g);
    let mut h = Harness::new(&geom);
    for chunk in rest.chunks_exact(RawReq::SIZE).take(MAX_REQUESTS) {
        let req = geom.decode(&RawReq::from_bytes(chunk));
        h.run(&req);
    }
    h.finish();
}

/// Request kinds for [`seeds`].
const MAP: u8 = 0;
const UNMAP: u8 = 9;
const UNMAP_ALL: u8 = 14;
const TOP: u8 = 15;

/// A request at page index `start` (relative to the space start) of `len` pages (1..=66).
fn req(kind: u8, start: u64, len: u64, obj: u8, off_pages: u8, via: u8) -> RawReq {
    let len = match len {
        0 => 0x78,
        1..=8 => len - 1,
        _ => 0x80 | (len - 1),
    };
    RawReq {
        kind,
        start: u8::try_from(start + 3).unwrap_or(0),
        len: u8::try_from(len).unwrap_or(0),
        obj,
        // Absolute offset: `off_pages` pages (mode 2).
        off: (off_pages << 2) | 2,
        flags: 0,
        via,
    }
}

fn map(start: u64, len: u64, obj: u8, off: u8) -> RawReq {
    req(MAP, start, len, obj, off, 0)
}

fn unmap(start: u64, len: u64) -> RawReq {
    req(UNMAP, start, len, 0, 0, 0)
}

fn encode(geom: u8, reqs: &[RawReq]) -> Vec<u8> {
    let mut out = vec![geom];
    for r in reqs {
        out.extend_from_slice(&r.to_bytes());
    }
    out
}

/// The committed seed corpus: `gpuvm-semantics.md` examples E1-E14 and U1-U5 (scaled down by 10 on
/// the unit-page geometry 5), E10 under every way of applying, edge cases at the cut-out and the top
/// of the address space, and deterministic random sequences on every geometry.
#[must_use]
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    // Unit pages, no cut-out, 8 buckets of 8 pages.
    const G: u8 = 5 + 2 * 8;
    let (x, y, z) = (1, 2, 3);
    let examples: [(&str, Vec<RawReq>); 19] = [
        ("e01_exact_keep", vec![map(10, 10, x, 0), map(10, 10, x, 0)]),
        (
            "e02_exact_other_offset",
            vec![map(10, 10, x, 0), map(10, 10, x, 4)],
        ),
        (
            "e03_exact_other_obj",
            vec![map(10, 10, x, 0), map(10, 10, y, 0)],
        ),
        (
            "e04_inside_keep",
            vec![map(10, 30, x, 0), map(20, 10, x, 10)],
        ),
        (
            "e05_inside_other",
            vec![map(10, 30, x, 0), map(20, 10, y, 1)],
        ),
        (
            "e06_left_subset",
            vec![map(10, 20, x, 0), map(10, 10, y, 0)],
        ),
        ("e07_extend_end", vec![map(10, 10, x, 0), map(10, 20, x, 0)]),
        (
            "e08_overlap_start",
            vec![map(10, 20, x, 0), map(20, 20, x, 10)],
        ),
        (
            "e09_overlap_end",
            vec![map(20, 20, x, 15), map(10, 20, x, 5)],
        ),
        (
            "e10_three_objects",
            vec![
                map(10, 10, x, 0),
                map(20, 10, y, 0),
                map(35, 10, z, 1),
                map(15, 25, 0, 0),
            ],
        ),
        ("e11_adjacent", vec![map(10, 10, x, 0), map(20, 10, x, 10)]),
        ("e12_empty", vec![map(0, 10, x, 0)]),
        ("e13_null", vec![map(10, 20, 0, 0), map(10, 10, 0, 0)]),
        (
            "e14_two_into_one",
            vec![map(10, 5, x, 0), map(15, 5, x, 5), map(10, 10, x, 0)],
        ),
        (
            "u01_straddle_two",
            vec![map(10, 10, x, 0), map(20, 10, y, 0), unmap(15, 10)],
        ),
        ("u02_middle", vec![map(10, 30, x, 0), unmap(20, 10)]),
        (
            "u03_everything",
            vec![
                map(10, 10, x, 0),
                map(20, 10, y, 0),
                req(UNMAP_ALL, 0, 1, 0, 0, 0),
            ],
        ),
        ("u04_exact", vec![map(10, 10, x, 0), unmap(10, 10)]),
        ("u05_nothing", vec![map(10, 10, x, 0), unmap(30, 5)]),
    ];
    let mut out: Vec<(String, Vec<u8>)> = examples
        .iter()
        .map(|(name, reqs)| ((*name).to_owned(), encode(G, reqs)))
        .collect();

    // E10 (and U1 for unmap) through every way of applying the last request.
    let vias: [(&str, u8); 13] = [
        ("step", 0),
        ("big_pool", 4),
        ("builtin", 5),
        ("op_list", 6),
        ("stale", 7),
        ("fail_at_0", 8),
        ("fail_at_2", 0x28),
        ("fail_at_3", 0x38),
        ("lying_1", 0x19),
        ("lying_2", 0x29),
        ("short_2", 0x2a),
        ("sink_fail_1", 0x1b),
        ("rebucket_64", 0x6c),
    ];
    for (name, via) in vias {
        let last = req(MAP, 15, 25, 0, 0, via);
        let reqs = [
            map(10, 10, x, 0),
            map(20, 10, y, 0),
            map(35, 10, z, 1),
            last,
        ];
        out.push((format!("via_{name}_map"), encode(G, &reqs)));
        let last = req(UNMAP, 15, 25, 0, 0, via);
        out.push((
            format!("via_{name}_unmap"),
            encode(
                G,
                &reqs[..3].iter().copied().chain([last]).collect::<Vec<_>>(),
            ),
        ));
    }

    // Cut-out edges (geometry 1: pages 28..32 reserved) and the top of the address space.
    out.push((
        "edge_cutout".to_owned(),
        encode(
            1,
            &[
                map(20, 8, x, 0),
                map(32, 8, y, 0),
                map(27, 2, x, 0),
                map(31, 2, y, 0),
                map(28, 4, z, 0),
                unmap(20, 20),
                unmap(0, 28),
                unmap(32, 32),
            ],
        ),
    ));
    for g in [4, 7] {
        out.push((
            format!("edge_top_g{g}"),
            encode(
                g,
                &[
                    map(56, 8, x, 0),
                    map(63, 1, y, 0),
                    map(63, 2, y, 0),
                    req(TOP, 0, 1, x, 0, 0),
                    req(TOP | 0x10, 0, 3, x, 0, 0),
                    unmap(60, 4),
                    map(0, 0, x, 0),
                ],
            ),
        ));
    }

    // Random sequences on every geometry.
    let mut rng = Rng::new(0x5eed_0001);
    for i in 0..36u8 {
        let n = 8 + rng.below(24);
        // Every layout with every bucket directory (i < 32), then some repeats.
        let mut bytes = vec![i];
        for _ in 0..n {
            for _ in 0..RawReq::SIZE {
                bytes.push(rng.byte());
            }
        }
        out.push((format!("random_{i:02}"), bytes));
    }
    out
}
