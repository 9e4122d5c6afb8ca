//! The body of the `gpuva_ops` fuzz target (formerly `sm_ops`), shared with the corpus replay test.
//!
//! The `fuzz/` crate includes this file (and [`crate::model`], [`crate::harness`]) by path, so the
//! fuzzer and `cargo test` run the very same code; the input format is a hand-written, stable byte
//! encoding (no `arbitrary`), so committed corpus files keep their meaning.
//!
//! Input: byte 0 selects the [`Geometry`] (its bit 7: empty the space with `clear` at the end
//! instead of unmapping); then every [`RawReq::SIZE`] bytes are one request ([`RawReq`]); a
//! trailing partial request is ignored, and at most [`MAX_REQUESTS`] are run; the full-state
//! comparisons run every [`FULL_EVERY`] requests. After the last
//! request every pin is put, the whole space is emptied, the zombie links are drained, and every
//! structure must be empty.
//!
//! The encoding is the one of the previous storage's corpus, byte for byte; values that selected
//! what no longer exists were given new meanings (see [`RawReq`]): the bucket-directory part of
//! byte 0 picks links on or off and the granule, via 4 (big pool) is a bigger claim, via 9 (lying
//! pool) is a map without a pin, via 12 (rebucket) is a recorded plan, via 14 and 15 (plain steps
//! before) are a link operation and a trim.

use crate::harness::{Geometry, Harness, RawReq, Rng};

/// Requests run per input at most (keeps every input fast).
pub const MAX_REQUESTS: usize = 128;

/// The harness's full-state comparisons run after every `FULL_EVERY`-th request (and at the
/// end); the per-request checks run after every request (see `Harness::full_every`).
pub const FULL_EVERY: u64 = 32;

/// Runs one fuzz input; panics on any violated invariant, never on a bad request.
pub fn run(data: &[u8]) {
    let _ = run_stats(data);
}

/// [`run`], returning what the harness exercised (`None` for an empty input).
pub fn run_stats(data: &[u8]) -> Option<crate::harness::Stats> {
    run_every(data, FULL_EVERY)
}

/// [`run_stats`] with the full-state comparisons after every `full_every`-th request (1: after
/// every request, as the corpus replay does).
pub fn run_every(data: &[u8], full_every: u64) -> Option<crate::harness::Stats> {
    let (&g, rest) = data.split_first()?;
    let geom = Geometry::select(g);
    let mut h = Harness::new(&geom);
    h.full_every = full_every;
    for chunk in rest.chunks_exact(RawReq::SIZE).take(MAX_REQUESTS) {
        let req = geom.decode(&RawReq::from_bytes(chunk));
        h.run(&req);
    }
    h.finish_with(g & 0x80 != 0);
    Some(h.stats)
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

/// A link operation `arg` (see `Harness::link_op`) before a map.
fn link_then_map(arg: u8, start: u64, len: u64, obj: u8, off: u8) -> RawReq {
    req(MAP, start, len, obj, off, (arg << 4) | 14)
}

/// A link operation `arg` before an unmap.
fn link_then_unmap(arg: u8, start: u64, len: u64) -> RawReq {
    req(UNMAP, start, len, 0, 0, (arg << 4) | 14)
}

/// `Harness::link_op` arguments: action (0 pin, 1 put, 2 external, 3 evicted) on object 1-3.
const fn link_arg(action: u8, obj: u8) -> u8 {
    ((obj - 1) << 2) | action
}

fn encode(geom: u8, reqs: &[RawReq]) -> Vec<u8> {
    let mut out = vec![geom];
    for r in reqs {
        out.extend_from_slice(&r.to_bytes());
    }
    out
}

/// The committed seed corpus: the worked examples E1-E14 and U1-U5 of `docs/semantics.md` (scaled
/// down by 10 on the unit-page geometry 5), without links and again with links, E10 under every way
/// of applying, edge cases at the cut-out and the top of the address space, link scenarios, and
/// deterministic random sequences on every geometry.
#[must_use]
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    // Unit pages, no cut-out, no links (mode 2).
    const G: u8 = 5 + 2 * 8;
    // The same with links (mode 0).
    const GL: u8 = 5;
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
    out.extend(
        examples
            .iter()
            .map(|(name, reqs)| (format!("links_{name}"), encode(GL, reqs))),
    );

    // E10 (and U1 for unmap) through every way of applying the last request.
    // The first eleven bytes are those of the previous storage's seeds (renamed where the via
    // changed meaning).
    let vias: [(&str, u8); 16] = [
        ("step", 0),
        ("big_claim", 4),
        ("builtin", 5),
        ("op_list", 6),
        ("stale", 7),
        ("fail_at_0", 8),
        ("fail_at_2", 0x28),
        ("fail_at_3", 0x38),
        ("no_pin", 0x19),
        ("short_2", 0x2a),
        ("sink_fail_1", 0x1b),
        ("plan", 0x6c),
        ("big_claim_5", 0x54),
        ("fail_at_1", 0x18),
        ("link_op_pin", 0x0e),
        ("trim_3", 0x3f),
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
        let mut with_obj = reqs;
        with_obj[3] = req(MAP, 15, 25, y, 0, via);
        out.push((format!("links_via_{name}_map"), encode(GL, &with_obj)));
        let last = req(UNMAP, 15, 25, 0, 0, via);
        let unmap_reqs: Vec<RawReq> = reqs[..3].iter().copied().chain([last]).collect();
        out.push((format!("via_{name}_unmap"), encode(G, &unmap_reqs)));
        out.push((format!("links_via_{name}_unmap"), encode(GL, &unmap_reqs)));
    }

    // Link scenarios (geometry 5 with links, unit pages).
    let links: [(&str, u8, Vec<RawReq>); 6] = [
        (
            // A pin keeps a link whose last mapping goes; putting it makes a zombie, which the
            // next prepare drains.
            "link_pin_keeps_empty",
            GL,
            vec![
                link_then_map(link_arg(0, 1), 10, 10, x, 0),
                unmap(10, 10),
                link_then_unmap(link_arg(1, 1), 0, 5),
                map(30, 5, y, 0),
            ],
        ),
        (
            // External and evicted flags, and their refusal on a zombie.
            "link_flags",
            GL,
            vec![
                map(10, 10, x, 0),
                link_then_map(link_arg(2, 1), 30, 10, y, 0),
                link_then_map(link_arg(3, 1), 40, 5, y, 5),
                link_then_map(link_arg(2, 2), 50, 5, z, 0),
                link_then_unmap(link_arg(3, 2), 0, 64),
                link_then_unmap(link_arg(2, 1), 0, 5),
            ],
        ),
        (
            // A map of an object without a link is refused; with a link (from a mapping) it is not.
            "link_no_pin",
            GL,
            vec![
                req(MAP, 10, 10, z, 0, 9),
                map(20, 10, z, 0),
                req(MAP, 40, 10, z, 3, 9),
                req(MAP, 15, 30, x, 0, 9),
            ],
        ),
        (
            // Remap pieces stay on the old mapping's object's link.
            "link_remap_pieces",
            GL,
            vec![
                map(10, 30, x, 0),
                map(20, 10, y, 0),
                map(5, 10, z, 0),
                map(35, 20, y, 7),
                unmap(12, 30),
            ],
        ),
        (
            // Pins on every object, put one by one; the put on object 3 drains the zombies.
            "link_drain",
            GL,
            vec![
                link_then_map(link_arg(0, 1), 10, 5, x, 0),
                link_then_map(link_arg(0, 2), 20, 5, y, 0),
                link_then_map(link_arg(0, 3), 30, 5, z, 0),
                link_then_unmap(link_arg(1, 1), 0, 64),
                link_then_unmap(link_arg(1, 2), 0, 5),
                link_then_unmap(link_arg(1, 3), 0, 5),
            ],
        ),
        (
            // Links on a page-granular geometry with a cut-out (mode 1), emptied by clear.
            "link_clear_cutout",
            1 + 8 + 0x80,
            vec![
                link_then_map(link_arg(0, 2), 20, 8, y, 0),
                map(32, 8, x, 0),
                map(24, 12, z, 0),
                link_then_map(link_arg(2, 3), 40, 4, x, 8),
            ],
        ),
    ];
    for (name, g, reqs) in links {
        out.push((name.to_owned(), encode(g, &reqs)));
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
    // Random sequences heavy in link operations, with links on (modes 0 and 1), half of them
    // emptied by clear.
    let mut rng = Rng::new(0x5eed_0002);
    for i in 0..16u8 {
        let n = 16 + rng.below(32);
        let mode = if i % 2 == 0 { 0 } else { 8 };
        let mut bytes = vec![(i % 8) + mode + if i >= 8 { 0x80 } else { 0 }];
        for _ in 0..n {
            let mut r = RawReq::from_bytes(&std::array::from_fn::<u8, 7, _>(|_| rng.byte()));
            r.kind %= 14;
            r.len %= 0x78;
            if rng.below(2) == 0 {
                r.via = (r.via & 0xf0) | 14;
            }
            bytes.extend_from_slice(&r.to_bytes());
        }
        out.push((format!("random_links_{i:02}"), bytes));
    }
    out
}
