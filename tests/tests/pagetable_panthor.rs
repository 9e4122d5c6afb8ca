//! panthor's own computations, transcribed independently from the kernel's C (in our words,
//! from `drivers/gpu/drm/panthor/panthor_mmu.c`), against this crate on random ranges:
//! the page-table reservations of `panthor_vm_prepare_map_op_ctx` /
//! `panthor_vm_prepare_unmap_op_ctx` against `panthor_map_bound` / `panthor_unmap_bound`, and
//! `lock_region()`'s register value against `LockRegion`. Also: the pre-lock range contains
//! every translation an operation changes, on random states.
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_macros,
    clippy::cast_possible_truncation,
    reason = "test code: infallible allocation and 64-bit-host casts are fine"
)]

mod pagetable_common;

use pagetable::{
    lock_range, map_bound, panthor_map_bound, panthor_unmap_bound, unmap_bound, Attrs, Format,
    Granule, JobOp, LockRegion, RegionLocked, Reserve,
};
use pagetable_common::*;
use proptest::prelude::*;

/// panthor's map reservation as the kernel writes it: for the 512 GiB, 1 GiB and 2 MiB
/// windows, (end rounded up - start rounded down) / window size, summed. Written with
/// `div_ceil` rather than masks, so it is not the crate's code again.
fn kernel_map_count(va: u64, size: u64) -> u64 {
    let end = va + size;
    [1u64 << 39, 1 << 30, 1 << 21]
        .iter()
        .map(|&w| end.div_ceil(w) - va / w)
        .sum()
}

/// panthor's unmap reservation as the kernel writes it: one if the start is not 2 MiB
/// aligned (`va != ALIGN(va, SZ_2M)`), one more if the end is not and its round-up differs
/// from the start's round-up.
fn kernel_unmap_count(va: u64, size: u64) -> u64 {
    const SZ_2M: u64 = 2 << 20;
    let align = |x: u64| x.div_ceil(SZ_2M) * SZ_2M;
    let end = va + size;
    let mut n = 0;
    if va != align(va) {
        n += 1;
    }
    if end != align(end) && align(end) != align(va) {
        n += 1;
    }
    n
}

/// panthor's `lock_region()`: `(AS_LOCKADDR value, locked span)`. The width is the index of the
/// highest bit in which the first and last byte differ (at least that of 32 KiB) minus one; the
/// start keeps its bits from the width up; the hardware locks `2^(width + 1)` bytes, ignoring
/// the register's address bits below `width + 1`.
fn kernel_lock_region(start: u64, size: u64) -> (u64, u128, u128) {
    let end = start + size;
    let fls64 = |x: u64| 64 - x.leading_zeros();
    let width = fls64(start ^ (end - 1)).max(15) - 1;
    let genmask_63_width = !0u64 << width;
    let reg = u64::from(width) | (start & genmask_63_width);
    let span = 2u128 << width;
    let base = u128::from(reg & !0x3F) & !(span - 1);
    (reg, base, base + span)
}

fn page_range(start: u64, len: u64, bias: u8) -> (u64, u64) {
    let page = SZ_4K;
    let start = start & ((1 << 47) - 1) & !(page - 1);
    // Bias towards 2 MiB-aligned starts and ends inside one 2 MiB window.
    let start = if bias.is_multiple_of(3) {
        start & !(SZ_2M - 1)
    } else {
        start
    };
    let len = match bias % 4 {
        0 => page * (1 + len % 511),
        1 => SZ_2M * (1 + len % 4) + page * (len % 7),
        _ => page * (1 + len % (1 << 20)),
    };
    (start, len.min((1 << 48) - start))
}

#[test]
fn panthor_formulas_worked_cases() {
    let f = Format::panthor(48).unwrap();
    // (va, size, map, unmap), including the aligned-start, unaligned-end-in-one-window case that
    // the floor-window version of the unmap formula got wrong (0 instead of 1).
    for (a, len, m, u) in [
        (0x1000, SZ_4K, 3, 1),
        (0x20_0000, SZ_2M, 3, 0),
        (0x20_0000, SZ_4K, 3, 1),
        (0x20_0000, SZ_2M - SZ_4K, 3, 1),
        (0x3FF0_0000, SZ_2M, 5, 2),
        (0x1_0000_0000, SZ_1G, 514, 0),
        (0x7F_FFFF_F000, 2 * SZ_4K, 6, 2),
        (0x1F_F000, 2 * SZ_4K, 4, 2),
    ] {
        assert_eq!(panthor_map_bound(&f, va(a), len).unwrap(), m, "{a:#x}");
        assert_eq!(kernel_map_count(a, len), m, "{a:#x}");
        assert_eq!(panthor_unmap_bound(&f, va(a), len).unwrap(), u, "{a:#x}");
        assert_eq!(kernel_unmap_count(a, len), u, "{a:#x}");
    }
}

#[test]
fn lock_region_matches_panthor_examples() {
    for (start, len, base, log2) in [
        (0x1000u64, 0x1000u64, 0u64, 15u8),
        (0x3FF0_0000, SZ_2M, 0, 31),
        (0x7F_FFFF_F000, 0x2000, 0, 40),
        (SZ_2M, SZ_2M, SZ_2M, 21),
        // panthor keeps bit `width` of the start: 0x30_0000 has bit 20 set.
        (0x30_0000, 0x1000, 0x30_0000 & !0x7FFF, 15),
    ] {
        let r = LockRegion::covering(start..start + len).unwrap();
        assert_eq!((r.base(), r.size_log2()), (base, log2), "{start:#x}");
        let (reg, lo, hi) = kernel_lock_region(start, len);
        assert_eq!(
            (lo, hi),
            (u128::from(base), u128::from(base) + (1u128 << log2))
        );
        assert_eq!(r.encode(), reg & !(1 << (log2 - 1)));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// `panthor_map_bound` / `panthor_unmap_bound` are the kernel's formulas on random ranges.
    #[test]
    fn panthor_formulas_match_the_kernel(start in any::<u64>(), len in any::<u64>(), bias in any::<u8>()) {
        let f = Format::panthor(48).unwrap();
        let (a, n) = page_range(start, len, bias);
        prop_assume!(n > 0);
        prop_assert_eq!(panthor_map_bound(&f, va(a), n).unwrap(), kernel_map_count(a, n));
        prop_assert_eq!(panthor_unmap_bound(&f, va(a), n).unwrap(), kernel_unmap_count(a, n));
        // Our bounds never exceed panthor's for 4 KiB-granule, 2 MiB-block tables.
        prop_assert!(unmap_bound(&f, va(a), n).unwrap().total() <= kernel_unmap_count(a, n));
    }

    /// `LockRegion` locks exactly the span panthor's `lock_region()` locks; its register value
    /// differs from panthor's only in bit `width` of the base, which the hardware ignores.
    #[test]
    fn lock_region_matches_panthor(start in any::<u64>(), len in 1u64..(1 << 44), shift in 0u32..64) {
        let start = start >> shift;
        let Some(end) = start.checked_add(len) else { return Ok(()); };
        let r = LockRegion::covering(start..end).unwrap();
        let (reg, lo, hi) = kernel_lock_region(start, len);
        let width = reg & 0x3F;
        prop_assert_eq!(u64::from(r.size_log2()) - 1, width);
        prop_assert_eq!(u128::from(r.base()), lo);
        prop_assert_eq!(u128::from(r.base()) + (1u128 << r.size_log2()), hi);
        prop_assert_eq!(r.encode(), reg & !(1u64 << width));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The pre-lock range, computed from the request alone, contains every translation the
    /// operation then changes, on random states (blocks of every size around the ends).
    #[test]
    fn lock_range_contains_every_change(seed in any::<u64>(), gib in any::<bool>(), kind in 0u8..3) {
        let fmt = if gib { Format::new(Granule::K4, 48).unwrap() } else { Format::panthor(48).unwrap() };
        let mut rng = SeedRng(seed);
        let mut h = Harness::without_model(fmt);
        let window = 4 * SZ_1G;
        let pick = |rng: &mut SeedRng| {
            let unit = [SZ_4K, SZ_2M, SZ_1G][rng.below(3) as usize];
            let start = unit * rng.below(window / unit) + SZ_4K * rng.below(4);
            let len = (unit * rng.below(2) + SZ_4K * (1 + rng.below(600))).min(window - start);
            (start, len)
        };
        for _ in 0..6 {
            let (s, l) = pick(&mut rng);
            h.unmap(s, l);
            let pa = SZ_1G * (1 + rng.below(64)) + (s % SZ_1G);
            h.map(s, &[pagetable::Chunk::new(pagetable::PhysAddr::new(pa), l)], Attrs::default()).unwrap();
        }
        h.complete_all();
        let (s, l) = pick(&mut rng);
        let ro = Attrs { read_only: true, ..Attrs::default() };
        let backing = [pagetable::Chunk::new(pagetable::PhysAddr::new(SZ_1G * 70 + (s % SZ_1G)), l)];
        let op = match kind {
            0 => JobOp::Unmap { va: va(s), len: l },
            1 => JobOp::Protect { va: va(s), len: l },
            _ => {
                h.unmap(s, l);
                h.complete_all();
                JobOp::Map { va: va(s), backing: &backing }
            }
        };
        let lock = lock_range(&fmt, &op).unwrap();
        let bound = match op {
            JobOp::Map { va, backing } => map_bound(&fmt, va, backing).unwrap(),
            JobOp::Unmap { va, len } | JobOp::Protect { va, len } => unmap_bound(&fmt, va, len).unwrap(),
            JobOp::Replace { .. } => unreachable!("not generated"),
        };
        let mut r = Reserve::new();
        r.try_fill(&mut h.pool, bound.total()).unwrap();
        let flush = match op {
            JobOp::Map { va, backing } => h.pt.map(&mut h.pool, &mut r, RegionLocked, va, backing, Attrs::default()).unwrap(),
            JobOp::Unmap { va, len } => h.pt.unmap(&mut h.pool, &mut r, RegionLocked, va, len).unwrap(),
            JobOp::Protect { va, len } => h.pt.protect(&mut h.pool, &mut r, RegionLocked, va, len, ro).unwrap(),
            JobOp::Replace { .. } => unreachable!("not generated"),
        };
        if let Some(c) = flush.changed() {
            prop_assert!(lock.start <= c.start && c.end <= lock.end, "{:x?} outside {:x?}", c, lock);
        }
        r.release(&mut h.pool).unwrap();
        complete(flush, &mut h.pool);
        h.pt.audit(&h.pool).unwrap();
    }
}
