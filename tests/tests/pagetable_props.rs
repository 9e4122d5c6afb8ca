//! Property tests for `pagetable`: random map/unmap/protect sequences against a page-granular
//! model, reservation sufficiency and tightness, retired-frame safety, rejected requests, lock
//! regions. Case counts are kept small so the file runs in a few seconds in debug.
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_macros,
    clippy::cast_possible_truncation,
    reason = "test code: infallible allocation and 64-bit-host casts are fine"
)]

mod pagetable_common;

use pagetable::{
    job_bound_alloc, map_bound, sum_bound, unmap_bound, Attrs, Chunk, Format, Granule, JobOp,
    Level, LockRegion, MapError, PhysAddr, ProtectError, RegionLocked, Reserve, UnmapError,
};
use pagetable_common::*;
use proptest::prelude::*;

/// A format and a window of VA to play in: around 0, a 1 GiB boundary, or a 512 GiB boundary.
fn setup(which: u8, place: u8) -> (Format, u64, u64) {
    let (fmt, window) = match which % 4 {
        0 => (Format::panthor(48).unwrap(), 16 << 20),
        1 => (
            Format::new(Granule::K4, 39)
                .unwrap()
                .with_largest_leaf(SZ_2M)
                .unwrap(),
            16 << 20,
        ),
        2 => (Format::new(Granule::K16, 48).unwrap(), 128 << 20),
        _ => (Format::new(Granule::K64, 48).unwrap(), 64 << 20),
    };
    let center = match place % 3 {
        0 => window / 2,
        1 => SZ_1G,
        _ => 512 * SZ_1G,
    };
    let center = center.min(fmt.va_limit() - window / 2);
    (fmt, center - window / 2, window)
}

/// A random page-aligned range inside `[base, base + window)`, biased towards block-aligned
/// starts and block-sized lengths.
fn random_range(rng: &mut SeedRng, fmt: &Format, base: u64, window: u64) -> (u64, u64) {
    let page = fmt.page_size();
    let block = fmt.entry_size(Level::L2);
    let start = if rng.chance(40) && window > block {
        base + block * rng.below(window / block)
    } else {
        base + page * rng.below(window / page)
    };
    let max = base + window - start;
    let len = match rng.below(3) {
        0 => page * (1 + rng.below(8)),
        1 => block.min(max) + page * rng.below(4),
        _ => page * (1 + rng.below((3 * block / page).max(1))),
    };
    let len = len.min(max).max(page);
    (start, len)
}

fn run_sequence(which: u8, place: u8, seed: u64, steps: usize) {
    let (fmt, base, window) = setup(which, place);
    let mut rng = SeedRng(seed);
    let mut h = Harness::new(fmt);
    for _ in 0..steps {
        let (start, len) = random_range(&mut rng, &fmt, base, window);
        match rng.below(20) {
            0..=9 => {
                let backing = random_backing(&mut rng, &fmt, len);
                if !h.is_free(start, len) && rng.chance(60) {
                    // A queued unmap, then the map (the state at run time is unknown).
                    h.unmap(start, len);
                }
                let _ = h.map(start, &backing, random_attrs(&mut rng));
            }
            10..=14 => {
                h.unmap(start, len);
            }
            15..=17 => {
                h.protect(start, len, random_attrs(&mut rng));
            }
            18 => h.end_job(),
            _ => h.complete_oldest(),
        }
        h.check();
        // No frame is lost or double-counted: the pool's frames in use are exactly the
        // reachable tables plus the retired ones waiting on a gather.
        assert_eq!(h.pool.in_use(), h.frames_accounted());
    }
    // Reclamation: after unmapping everything only the root remains, and every freed table
    // went through a gather.
    h.unmap(base, window);
    h.check();
    assert_eq!(h.pt.audit(&h.pool).unwrap().table_count(), 1);
    h.complete_all();
    assert_eq!(h.pool.in_use(), 1);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Random map/unmap/protect sequences with random backings (scattered pages and
    /// block-contiguous chunks), every touched page translated after every step. Every op
    /// reserves exactly its bound, so this is also a sufficiency test over evolving states.
    #[test]
    fn model_sequences(which in 0u8..4, place in 0u8..3, seed in any::<u64>()) {
        run_sequence(which, place, seed, 24);
    }

    /// Sufficiency with 1 GiB blocks: random prior states (1 GiB and 2 MiB blocks, partly
    /// empty and absent tables) around a 512 GiB boundary, then a random request reserved from
    /// the request alone. Checked with the audit (no per-page model: the ranges are GiBs).
    #[test]
    fn sufficiency_with_gib_blocks(seed in any::<u64>(), near_512g in any::<bool>()) {
        let fmt = Format::new(Granule::K4, 48).unwrap();
        let mut rng = SeedRng(seed);
        let mut h = Harness::without_model(fmt);
        let base = if near_512g { 512 * SZ_1G - 2 * SZ_1G } else { 0 };
        let window = 4 * SZ_1G;
        let pick = |rng: &mut SeedRng| -> (u64, u64) {
            let unit = [SZ_4K, SZ_2M, SZ_1G][rng.below(3) as usize];
            // The page offset may push the start past the window: keep one page inside it
            // (regression: `base + window - start` underflowed, seed 3674242245666390582).
            let start = (base + unit * rng.below(window / unit) + if rng.chance(30) { SZ_4K * rng.below(600) } else { 0 })
                .min(base + window - SZ_4K);
            let len = (unit * (1 + rng.below(2)) + if rng.chance(40) { SZ_4K * rng.below(600) } else { 0 })
                .min(base + window - start).max(SZ_4K);
            (start, len)
        };
        let contiguous = |rng: &mut SeedRng, len: u64| vec![Chunk::new(PhysAddr::new(SZ_1G * (1 + rng.below(64)) + if rng.chance(20) { SZ_2M } else { 0 }), len)];
        for step in 0..10 {
            let (start, len) = pick(&mut rng);
            let last = step == 9;
            match rng.below(3) {
                0 if !last => { h.unmap(start, len); }
                1 if !last => { h.protect(start, len, random_attrs(&mut rng)); }
                _ => {
                    // Unknown state: unmap first (a queued unmap), then map.
                    h.unmap(start, len);
                    let backing = if len <= 64 * SZ_4K && rng.chance(50) {
                        random_backing(&mut rng, &fmt, len)
                    } else {
                        contiguous(&mut rng, len)
                    };
                    h.map(start, &backing, Attrs::default()).expect("free range maps");
                }
            }
            h.pt.audit(&h.pool).unwrap();
            if rng.chance(30) {
                h.complete_all();
            }
        }
        // A final random request from the request alone, after an unrelated state change.
        let (start, len) = pick(&mut rng);
        h.unmap(start, len);
        h.pt.audit(&h.pool).unwrap();
    }

    /// Tightness: into an unpopulated region, a map uses exactly `map_bound`.
    #[test]
    fn map_tightness(which in 0u8..4, seed in any::<u64>()) {
        let (fmt, _, _) = setup(which, 0);
        let mut rng = SeedRng(seed);
        let block = fmt.entry_size(Level::L2);
        let pages = fmt.page_size();
        // Anywhere, crossing table boundaries at every level now and then.
        let top = fmt.table_span(fmt.start_level().next().unwrap());
        let start = top * (1 + rng.below(3)) - if rng.chance(50) { block * rng.below(3) + pages * rng.below(8) } else { 0 };
        let len = pages * (1 + rng.below(8)) + block * rng.below(3);
        let start = start.min(fmt.va_limit() - len);
        let backing = random_backing(&mut rng, &fmt, len);
        let mut h = Harness::new(fmt);
        let bound = map_bound(&fmt, va(start), &backing).unwrap().total();
        let used = h.map(start, &backing, Attrs::default()).unwrap();
        prop_assert_eq!(used, bound);
        h.check();
    }

    /// Tightness for unmaps: with blocks around both ends, an unmap uses exactly `unmap_bound`.
    #[test]
    fn unmap_tightness(gib in any::<bool>(), a in 1u64..(1 << 18), b in 1u64..(1 << 18)) {
        let fmt = if gib { Format::new(Granule::K4, 48).unwrap() } else { Format::panthor(48).unwrap() };
        let block = fmt.largest_leaf();
        let mut h = Harness::without_model(fmt);
        h.map(0, &[Chunk::new(PhysAddr::new(16 * SZ_1G), 4 * block)], Attrs::default()).unwrap();
        let pages = block / SZ_4K;
        let start = (a % pages) * SZ_4K + block;
        let end = (b % pages) * SZ_4K + 2 * block + if b % 2 == 0 { block } else { 0 };
        let end = end.max(start + SZ_4K);
        let used = h.unmap(start, end - start);
        prop_assert_eq!(used, unmap_bound(&fmt, va(start), end - start).unwrap().total());
        h.pt.audit(&h.pool).unwrap();
    }

    /// The per-job union reservation is sufficient for a job of several maps on a random state,
    /// and never larger than the sum.
    #[test]
    fn job_union_sufficiency(which in 0u8..3, place in 0u8..3, seed in any::<u64>()) {
        let (fmt, base, window) = setup(which, place);
        let mut rng = SeedRng(seed);
        let mut h = Harness::new(fmt);
        for _ in 0..6 {
            let (s, l) = random_range(&mut rng, &fmt, base, window);
            let backing = random_backing(&mut rng, &fmt, l);
            let _ = h.map(s, &backing, Attrs::default());
        }
        // Carve free ranges for the job, unmapping first (a previous job).
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for _ in 0..4 {
            let (s, l) = random_range(&mut rng, &fmt, base, window);
            if ranges.iter().all(|&(a, n)| s + l <= a || a + n <= s) {
                h.unmap(s, l);
                ranges.push((s, l));
            }
        }
        h.complete_all();
        let backings: Vec<Vec<Chunk>> = ranges.iter().map(|&(_, l)| random_backing(&mut rng, &fmt, l)).collect();
        let ops: Vec<JobOp<'_>> = ranges.iter().zip(&backings).map(|(&(s, _), b)| JobOp::Map { va: va(s), backing: b }).collect();
        let union = job_bound_alloc(&fmt, &ops).unwrap().total();
        prop_assert!(union <= sum_bound(&fmt, &ops).unwrap().total());
        let mut r = Reserve::new();
        r.try_fill(&mut h.pool, union).unwrap();
        let mut ctx = h.pt.update(&mut h.pool, &mut r, RegionLocked);
        for (&(s, _), b) in ranges.iter().zip(&backings) {
            ctx.map(va(s), b, Attrs::default()).unwrap();
        }
        let g = ctx.finish();
        r.release(&mut h.pool).unwrap();
        h.pt.audit(&h.pool).unwrap();
        complete(g, &mut h.pool);
    }

    /// The job bound is never undercounted: from a random state (pages and blocks, some
    /// unmapped again), a random job of replaces (clear then map, as a bind does), unmaps,
    /// protects and maps into ranges the job knows are free, run in one update context on
    /// exactly `job_bound` frames, succeeds op by op and draws at most the bound; the bound
    /// is never more than the per-op sum.
    #[test]
    fn job_bound_never_undercounts(which in 0u8..4, place in 0u8..3, seed in any::<u64>(), nops in 1usize..12) {
        let (fmt, base, window) = setup(which, place);
        let mut rng = SeedRng(seed);
        let mut h = Harness::new(fmt);
        for _ in 0..10 {
            let (s, l) = random_range(&mut rng, &fmt, base, window);
            if rng.chance(25) {
                h.unmap(s, l);
            } else {
                let backing = random_backing(&mut rng, &fmt, l);
                let _ = h.map(s, &backing, Attrs::default());
            }
        }
        h.complete_all();
        // Ops cluster in a sub-window half the time, so they overlap each other and the state.
        let (sub_base, sub_win) = if rng.chance(50) {
            let w = (window / 8).max(fmt.page_size());
            (base + w * rng.below(8), w)
        } else {
            (base, window)
        };
        let mut occupied: std::collections::BTreeSet<u64> = h.model.keys().copied().collect();
        let page = fmt.page_size();
        let mut plan: Vec<(u8, u64, u64, Vec<Chunk>)> = Vec::new();
        for _ in 0..nops {
            let (s, l) = random_range(&mut rng, &fmt, sub_base, sub_win);
            let kind = rng.below(10) as u8;
            let pages: Vec<u64> = (s..s + l).step_by(page as usize).collect();
            let kind = match kind {
                0..=5 => 0, // replace
                6 if pages.iter().all(|p| !occupied.contains(p)) => 3, // map into free
                6..=8 => 1, // unmap
                _ => 2, // protect
            };
            match kind {
                0 | 3 => occupied.extend(pages),
                1 => pages.iter().for_each(|p| { occupied.remove(p); }),
                _ => {}
            }
            let backing = if kind == 0 || kind == 3 { random_backing(&mut rng, &fmt, l) } else { Vec::new() };
            plan.push((kind, s, l, backing));
        }
        let ops: Vec<JobOp<'_>> = plan.iter().map(|(k, s, l, b)| match k {
            0 => JobOp::Replace { va: va(*s), backing: b },
            3 => JobOp::Map { va: va(*s), backing: b },
            1 => JobOp::Unmap { va: va(*s), len: *l },
            _ => JobOp::Protect { va: va(*s), len: *l },
        }).collect();
        let bound = job_bound_alloc(&fmt, &ops).unwrap().total();
        prop_assert!(bound <= sum_bound(&fmt, &ops).unwrap().total());
        let mut r = Reserve::new();
        r.try_fill(&mut h.pool, bound).unwrap();
        let mut ctx = h.pt.update(&mut h.pool, &mut r, RegionLocked);
        for (i, (k, s, l, b)) in plan.iter().enumerate() {
            match k {
                0 => {
                    ctx.unmap(va(*s), *l).map_err(|e| TestCaseError::fail(format!("op {i} clear: {e:?}")))?;
                    ctx.map(va(*s), b, Attrs::default()).map_err(|e| TestCaseError::fail(format!("op {i} replace: {e:?}")))?;
                }
                3 => ctx.map(va(*s), b, Attrs::default()).map_err(|e| TestCaseError::fail(format!("op {i} map: {e:?}")))?,
                1 => ctx.unmap(va(*s), *l).map_err(|e| TestCaseError::fail(format!("op {i} unmap: {e:?}")))?,
                _ => ctx.protect(va(*s), *l, random_attrs(&mut rng)).map_err(|e| TestCaseError::fail(format!("op {i} protect: {e:?}")))?,
            }
        }
        let g = ctx.finish();
        r.release(&mut h.pool).unwrap();
        h.pt.audit(&h.pool).unwrap();
        complete(g, &mut h.pool);
    }

    /// Rejected requests leave every reachable table bit-identical, and the reserve and
    /// gather untouched.
    #[test]
    fn rejected_requests_change_nothing(which in 0u8..4, seed in any::<u64>(), kind in 0u8..9) {
        let (fmt, base, window) = setup(which, 1);
        let mut rng = SeedRng(seed);
        let mut h = Harness::new(fmt);
        for _ in 0..8 {
            let (s, l) = random_range(&mut rng, &fmt, base, window);
            let backing = random_backing(&mut rng, &fmt, l);
            let _ = h.map(s, &backing, Attrs::default());
        }
        h.complete_all();
        let before = reachable_tables(&h.pt, &h.pool);
        let page = fmt.page_size();
        let mut r = Reserve::new();
        if kind != 7 {
            r.try_fill(&mut h.pool, 2).unwrap();
        }
        let r_len = r.len();
        let (s, l) = random_range(&mut rng, &fmt, base, window);
        let a = Attrs::default();
        let first_page = h.model.keys().next().copied();
        let backing7 = random_backing(&mut rng, &fmt, l);
        let free7 = h.is_free(s, l);
        let overlap = first_page.map(|p| {
            let start = p.saturating_sub(page * rng.below(4)).max(base);
            (start, random_backing(&mut rng, &fmt, p + page - start))
        });
        let mut ctx = h.pt.update(&mut h.pool, &mut r, RegionLocked);
        let rejected = match kind {
            0 => ctx.map(va(s + page / 2), &[Chunk::new(PhysAddr::new(0x1000_0000), page)], a).is_err(),
            1 => ctx.map(va(s), &[Chunk::new(PhysAddr::new(0x1000_0000), page / 2)], a).is_err(),
            2 => ctx.map(va(fmt.va_limit() - page), &[Chunk::new(PhysAddr::new(0x1000_0000), 2 * page)], a) == Err(MapError::OutOfRange),
            3 => {
                // Overlapping an existing page, if any.
                match &overlap {
                    Some((start, backing)) => matches!(ctx.map(va(*start), backing, a), Err(MapError::AlreadyMapped { .. })),
                    None => true,
                }
            }
            4 => ctx.unmap(va(s), 0) == Err(UnmapError::ZeroLength),
            5 => ctx.unmap(va(s), l + page / 2).is_err(),
            6 => ctx.protect(va(u64::MAX - page + 1), page, a) == Err(ProtectError::OutOfRange),
            7 => {
                // Empty reserve: either the request needs nothing, or it is refused untouched.
                if free7 && map_bound(&fmt, va(s), &backing7).unwrap().total() > 0 {
                    match ctx.map(va(s), &backing7, a) {
                        Err(MapError::ReservationExhausted { .. }) => true,
                        Ok(()) => {
                            // Needed nothing new against this state: not a rejection.
                            let _ = ctx.finish().forget();
                            return Ok(());
                        }
                        Err(e) => panic!("{e}"),
                    }
                } else {
                    true
                }
            }
            _ => ctx.map(va(s), &[Chunk::new(PhysAddr::new(1 << 48), page)], a) == Err(MapError::PaOutOfRange { index: 0 }),
        };
        let g = ctx.finish();
        prop_assert!(rejected);
        prop_assert_eq!(reachable_tables(&h.pt, &h.pool), before);
        prop_assert_eq!(r.len(), r_len);
        prop_assert!(g.range().is_none() && g.changed().is_none() && g.retired_len() == 0);
        r.release(&mut h.pool).unwrap();
        let _ = g.forget();
    }

    /// Lock regions: a naturally aligned power of two of at least 32 KiB that covers the
    /// range, and the smallest such.
    #[test]
    fn lock_region_covers(start in any::<u64>(), len in 1u64..(1 << 40)) {
        let start = start >> (start % 64) as u32;
        let end = start.saturating_add(len);
        prop_assume!(end > start);
        let r = LockRegion::covering(start..end).unwrap();
        prop_assert!(r.size_log2() >= 15);
        prop_assert!(r.covers(start..end));
        if r.size_log2() < 64 {
            prop_assert_eq!(r.base() % r.size(), 0);
        }
        if r.size_log2() > 15 && r.size_log2() < 64 {
            // Neither half alone covers it.
            let half = r.size() / 2;
            let lo = r.base()..r.base() + half;
            let hi = r.base() + half..r.base() + r.size();
            prop_assert!(!(lo.start <= start && end <= lo.end || hi.start <= start && end <= hi.end));
        }
        prop_assert!(r.over_lock() >= 1.0);
        prop_assert_eq!(r.encode() & 0x3F, u64::from(r.size_log2() - 1));
    }
}

/// Retired frames are not reused before their invalidation is confirmed, and are reused after.
#[test]
fn retired_frames_not_reused_before_invalidation() {
    let fmt = Format::panthor(48).unwrap();
    let mut h = Harness::new(fmt);
    h.map(
        0,
        &[Chunk::new(PhysAddr::new(0x1000_0000), 64 * SZ_4K)],
        Attrs::default(),
    )
    .unwrap();
    h.map(
        3 * SZ_1G,
        &[Chunk::new(PhysAddr::new(0x2000_0000), 8 * SZ_4K)],
        Attrs::default(),
    )
    .unwrap();
    let before: Vec<PhysAddr> = reachable_tables(&h.pt, &h.pool)
        .into_iter()
        .map(|t| t.0)
        .collect();
    h.unmap(0, 64 * SZ_4K);
    h.end_job();
    let retired: Vec<PhysAddr> = before
        .iter()
        .copied()
        .filter(|t| h.pending[0].is_retired(&h.pool, *t))
        .collect();
    assert_eq!(
        retired.len(),
        2,
        "the L3 and the L2 table of the first region"
    );
    // Busy maps and unmaps while the invalidation is in flight: never hand out a retired frame.
    for i in 0..40u64 {
        h.map(
            i * SZ_2M + SZ_4K * (i % 3),
            &[Chunk::new(PhysAddr::new(0x3000_0000), SZ_4K)],
            Attrs::default(),
        )
        .unwrap();
        h.check();
        for &t in &retired {
            assert!(!reachable_tables(&h.pt, &h.pool).iter().any(|x| x.0 == t));
        }
    }
    h.unmap(0, 2 * SZ_1G);
    h.check();
    // Once confirmed, the frames are allocatable again.
    h.complete_all();
    let mut again = Vec::new();
    for _ in 0..h.pool.created() {
        match pagetable::FrameAlloc::alloc_frame(&mut h.pool) {
            Ok(pa) => again.push(pa),
            Err(_) => break,
        }
    }
    for t in &retired {
        assert!(
            again.contains(t),
            "retired frame {t:?} came back after the invalidation"
        );
    }
}

/// A deterministic long run per format, for coverage beyond the proptest cases.
#[test]
fn long_sequences() {
    for which in 0..4 {
        for place in 0..3 {
            run_sequence(
                which,
                place,
                0xC0FF_EE00 + u64::from(which) * 7 + u64::from(place),
                60,
            );
        }
    }
}
