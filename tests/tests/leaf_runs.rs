//! `tests::leaf_runs` (the page-table comparison of the `vmbind_jobs` fuzz body): the property
//! of `Format::decode` it relies on, and its runs against a per-leaf decode of arbitrary tables
//! on every format.

use pagetable::{
    all_attrs, Attrs, Desc, Format, FrameAlloc, Granule, Level, PhysAddr, Pte, TableMemory, VecPool,
};
use tests::harness::Rng;
use tests::leaf_runs::{arithmetic_prefix, leaf_runs, push_run, Runs};

/// Every granule, with the full and a 40-bit output-address width.
fn formats() -> Vec<Format> {
    let mut out = Vec::new();
    for (g, bits) in [
        (Granule::K4, 48),
        (Granule::K4, 39),
        (Granule::K16, 48),
        (Granule::K64, 48),
    ] {
        let f = Format::new(g, bits).expect("valid format");
        out.push(f);
        out.push(f.with_oa_bits(40).expect("valid width"));
    }
    out.push(Format::panthor(48).expect("panthor"));
    out
}

fn levels(fmt: &Format) -> Vec<Level> {
    [Level::L0, Level::L1, Level::L2, Level::L3]
        .into_iter()
        .filter(|&l| l >= fmt.start_level())
        .collect()
}

/// An index below `n`.
fn index(rng: &mut Rng, n: usize) -> usize {
    usize::try_from(rng.below(n as u64)).expect("below a usize")
}

/// The property the runs rest on: `decode` reads a leaf's output address only for alignment and
/// the limit. A descriptor that decodes to a leaf, with another aligned address below the limit
/// in its output-address field, decodes to a leaf there with the same attributes; in particular
/// the descriptor plus the leaf size (the next leaf of a run) while that stays below the limit.
/// Checked for descriptors the crate writes and for ones with arbitrary other bits.
#[test]
fn decode_reads_a_leaf_address_only_for_alignment_and_limit() {
    let mut rng = Rng::new(0x1eaf_5eed);
    let mut checked = 0u32;
    for fmt in formats() {
        for level in levels(&fmt) {
            if !fmt.is_leaf_level(level) {
                continue;
            }
            let size = fmt.entry_size(level);
            let limit = fmt.oa_limit();
            let mask = fmt.oa_mask();
            for attrs in all_attrs() {
                for pa in [0, size, limit / 2, limit - 2 * size, limit - size] {
                    let pte = fmt
                        .encode_leaf(level, PhysAddr::new(pa), attrs)
                        .expect("encodable");
                    // Arbitrary bits outside the output-address field, kept if still a leaf.
                    let junk = rng.next_u64() & !mask;
                    for raw in [pte.as_raw(), pte.as_raw() ^ junk] {
                        let Desc::Leaf {
                            pa: got, attrs: a, ..
                        } = fmt.decode(level, Pte::from_raw(raw))
                        else {
                            continue;
                        };
                        let leaf = |oa| Desc::Leaf {
                            pa: PhysAddr::new(oa),
                            attrs: a,
                            size,
                        };
                        let moved = rng.below(limit / size) * size;
                        assert_eq!(
                            fmt.decode(level, Pte::from_raw(raw & !mask | moved)),
                            leaf(moved),
                            "{fmt:?} {level:?} {raw:#x} to {moved:#x}"
                        );
                        // At the limit the sum carries out of the field: the runs decode that
                        // descriptor on its own.
                        if got.as_u64() + size < limit {
                            assert_eq!(
                                fmt.decode(level, Pte::from_raw(raw + size)),
                                leaf(got.as_u64() + size),
                                "{fmt:?} {level:?} {raw:#x} + {size:#x}"
                            );
                        }
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked > 5_000, "{checked}");
}

#[test]
fn arithmetic_prefix_counts_every_length() {
    for len in 0..40usize {
        for stop in 0..=len {
            let ents: Vec<Pte> = (0..len)
                .zip((0..).step_by(0x1000))
                .map(|(i, off)| {
                    let v = 0x40_0003 + off;
                    Pte::from_raw(if i == stop { v + 1 } else { v })
                })
                .collect();
            assert_eq!(arithmetic_prefix(&ents, 0x40_0003, 0x1000), stop.min(len));
        }
    }
}

/// Fills table `pa` at `level` with segments of empty entries, non-zero invalid entries, runs
/// of leaves (often continuing, sometimes broken, sometimes ending at the address limit) and
/// tables built the same way (`budget` more tables at most).
fn fill(
    fmt: &Format,
    pool: &mut VecPool,
    rng: &mut Rng,
    pa: PhysAddr,
    level: Level,
    budget: &mut u32,
) {
    let n = fmt.table_entries(level);
    let size = fmt.entry_size(level);
    let attrs: Vec<Attrs> = all_attrs().collect();
    let mut ents = vec![Pte::INVALID; n];
    let mut i = 0;
    while i < n {
        let cap = if rng.below(4) == 0 { 300 } else { 12 };
        let len = (1 + index(rng, cap)).min(n - i);
        match rng.below(6) {
            0 | 1 => {}
            2 => {
                for e in &mut ents[i..i + len] {
                    *e = Pte::from_raw(rng.next_u64() & !1);
                }
            }
            k if !level.is_last() && *budget > 0 && (k == 3 || !fmt.is_leaf_level(level)) => {
                *budget -= 1;
                let child = pool.alloc_frame().expect("frame");
                fill(fmt, pool, rng, child, next(level), budget);
                ents[i] = fmt.encode_table(level, child).expect("table");
                i += 1;
                continue;
            }
            _ if fmt.is_leaf_level(level) => {
                let a = attrs[index(rng, attrs.len())];
                let limit = fmt.oa_limit() / size;
                let first = if rng.below(4) == 0 {
                    limit - len as u64
                } else {
                    rng.below(limit - len as u64)
                };
                for (k, e) in ents[i..i + len].iter_mut().enumerate() {
                    let pa = PhysAddr::new((first + k as u64) * size);
                    *e = fmt.encode_leaf(level, pa, a).expect("leaf");
                }
                if rng.below(3) == 0 {
                    // A break inside the run.
                    let k = i + index(rng, len);
                    let other = attrs[index(rng, attrs.len())];
                    let pa = PhysAddr::new(rng.below(limit) * size);
                    ents[k] = fmt.encode_leaf(level, pa, other).expect("leaf");
                }
            }
            _ => {}
        }
        i += len;
    }
    let (frame, _) = pool.frame_mut(pa).expect("own frame");
    frame[..n].copy_from_slice(&ents);
}

fn next(level: Level) -> Level {
    match level {
        Level::L0 => Level::L1,
        Level::L1 => Level::L2,
        _ => Level::L3,
    }
}

/// The reference: every leaf decoded on its own (`pagetable_fuzz::leaves`), clipped and merged.
fn per_leaf(fmt: &Format, pool: &VecPool, root: PhysAddr, r: &std::ops::Range<u64>) -> Runs {
    let mut out = Runs::new();
    for (va, size, pa, attrs) in tests::pagetable_fuzz::leaves(fmt, pool, root, r) {
        let (s, e) = (va.max(r.start), (va + size).min(r.end));
        push_run(&mut out, s, e, pa + (s - va), attrs);
    }
    out
}

#[test]
fn runs_equal_a_per_leaf_decode_on_every_format() {
    let mut rng = Rng::new(0x7ab1e5);
    for fmt in formats() {
        let mut leaves = 0;
        for round in 0..6 {
            let mut pool = VecPool::new(fmt.granule(), PhysAddr::new(1 << 30)).expect("pool");
            let root = pool.alloc_frame().expect("frame");
            fill(&fmt, &mut pool, &mut rng, root, fmt.start_level(), &mut 12);
            let span = fmt.va_limit();
            let mut ranges = Vec::new();
            ranges.push(0..span);
            for _ in 0..20 {
                let a = rng.below(span);
                // Ranges around the tables that exist: page-aligned or not.
                let width = 1 << (20 + rng.below(20));
                let b = (a + 1 + rng.below(width)).min(span);
                ranges.push(a..b);
            }
            for r in &ranges {
                let want = per_leaf(&fmt, &pool, root, r);
                let mut got = Runs::new();
                leaf_runs(&fmt, &pool, root, r, &mut got);
                assert_eq!(got, want, "{fmt:?} round {round} range {r:x?}");
                leaves += want.len();
            }
        }
        assert!(leaves > 0, "{fmt:?}: no leaf at all");
    }
}

/// A descriptor sharing a leaf's other bits is taken for a leaf only with an aligned address
/// below the limit: otherwise it is decoded, and refused like any descriptor the format never
/// writes.
#[test]
fn runs_refuse_a_leaf_address_misaligned_or_beyond_the_limit() {
    let fmt = Format::new(Granule::K4, 48)
        .and_then(|f| f.with_oa_bits(40))
        .expect("format");
    let a = Attrs::default();
    for (level, bad) in [(Level::L3, 1u64 << 40), (Level::L2, (1 << 21) + 0x1000)] {
        let mut pool = VecPool::new(fmt.granule(), PhysAddr::new(1 << 30)).expect("pool");
        let mut table = pool.alloc_frame().expect("frame");
        let root = table;
        let mut at = Level::L0;
        while at != level {
            let child = pool.alloc_frame().expect("frame");
            let (ents, _) = pool.frame_mut(table).expect("own frame");
            ents[0] = fmt.encode_table(at, child).expect("table");
            (table, at) = (child, next(at));
        }
        let size = fmt.entry_size(level);
        let leaf = fmt
            .encode_leaf(level, PhysAddr::new(size), a)
            .expect("leaf");
        let (ents, _) = pool.frame_mut(table).expect("own frame");
        ents[1] = leaf;
        ents[3] = Pte::from_raw(leaf.as_raw() & !fmt.oa_mask() | bad);
        let got = std::panic::catch_unwind(|| {
            let mut out = Runs::new();
            leaf_runs(&fmt, &pool, root, &(0..1 << 40), &mut out);
        });
        assert!(got.is_err(), "{level:?}: {bad:#x} taken for a leaf");
        // Without the bad entry: one run.
        let (ents, _) = pool.frame_mut(table).expect("own frame");
        ents[3] = Pte::INVALID;
        let mut out = Runs::new();
        leaf_runs(&fmt, &pool, root, &(0..1 << 40), &mut out);
        assert_eq!(out, [(size, 2 * size, size, a)]);
    }
}
