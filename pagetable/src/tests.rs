//! Unit tests: geometry, descriptors, panthor's worked examples (4 KiB granule, 48-bit VA),
//! splits, reclamation, lock regions, foreign releases and rejected requests.
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_macros,
    reason = "test code may allocate infallibly"
)]

extern crate std;

use alloc::vec::Vec;

use crate::*;

const SZ_4K: u64 = 0x1000;
const SZ_2M: u64 = 0x20_0000;
const SZ_1G: u64 = 0x4000_0000;

/// Level `n` (test shorthand).
fn l(n: u8) -> Level {
    Level::new(n).unwrap()
}

fn va(x: u64) -> VirtAddr {
    VirtAddr::new(x)
}

fn chunk(pa: u64, len: u64) -> Chunk {
    Chunk::new(PhysAddr::new(pa), len)
}

/// Records every break-before-make call, and every written entry range.
#[derive(Default, Debug)]
struct Bbm(
    Vec<core::ops::Range<u64>>,
    Vec<(PhysAddr, core::ops::Range<usize>)>,
);

impl UpdateHooks for Bbm {
    fn break_before_make(&mut self, block: core::ops::Range<u64>) {
        self.0.push(block);
    }

    fn written(&mut self, frame: PhysAddr, entries: core::ops::Range<usize>) {
        self.1.push((frame, entries));
    }
}

/// A TLB that completes at once and records its calls.
#[derive(Default, Debug)]
struct Tlb(Vec<(core::ops::Range<u64>, bool)>);

impl TlbInvalidate for Tlb {
    type Error = core::convert::Infallible;
    fn invalidate(&mut self, r: core::ops::Range<u64>, walk: bool) -> Result<(), Self::Error> {
        self.0.push((r, walk));
        Ok(())
    }
}

struct Env {
    pool: VecPool,
    pt: PageTable,
    /// The pending flush of everything done since the last `flush()`.
    gather: Flush,
}

impl Env {
    fn new(fmt: Format) -> Self {
        // Below every PA width a test uses (the narrowest is 44 bits).
        let mut pool = VecPool::new(fmt.granule(), PhysAddr::new(0x800_0000_0000)).unwrap();
        let pt = PageTable::try_new(fmt, &mut pool).unwrap();
        Self {
            pool,
            pt,
            gather: Flush::default(),
        }
    }

    fn absorb(&mut self, f: Flush) {
        self.gather.merge(&mut self.pool, f).unwrap();
    }

    /// Maps with exactly the bound reserved; returns (bound, used).
    fn map(&mut self, at: u64, backing: &[Chunk], attrs: Attrs) -> Result<(u64, u64), MapError> {
        let bound = map_bound(self.pt.format(), va(at), backing).map_or(0, |b| b.total());
        let mut r = Reserve::new();
        r.try_fill(&mut self.pool, bound).unwrap();
        let res = self.pt.map(
            &mut self.pool,
            &mut r,
            &mut RegionLocked,
            va(at),
            backing,
            attrs,
        );
        let left = r.len() as u64;
        r.release(&mut self.pool).unwrap();
        res.map(|f| {
            self.absorb(f);
            (bound, bound - left)
        })
    }

    fn unmap(&mut self, at: u64, len: u64) -> Result<(u64, u64), UnmapError> {
        let bound = unmap_bound(self.pt.format(), va(at), len).map_or(0, |b| b.total());
        let mut r = Reserve::new();
        r.try_fill(&mut self.pool, bound).unwrap();
        let res = self
            .pt
            .unmap(&mut self.pool, &mut r, &mut RegionLocked, va(at), len);
        let left = r.len() as u64;
        r.release(&mut self.pool).unwrap();
        res.map(|f| {
            self.absorb(f);
            (bound, bound - left)
        })
    }

    fn tr(&self, at: u64) -> Option<(u64, u64)> {
        self.pt
            .translate(&self.pool, va(at))
            .unwrap()
            .map(|t| (t.pa.as_u64(), t.size))
    }

    fn flush(&mut self) {
        let g = core::mem::take(&mut self.gather);
        g.invalidate(&mut Tlb::default())
            .unwrap()
            .release(&mut self.pool)
            .unwrap();
    }

    fn snapshot(&self) -> Vec<Leaf> {
        let end = self.pt.format().va_limit();
        self.pt
            .leaves(&self.pool, va(0)..va(end))
            .map(Result::unwrap)
            .collect()
    }
}

#[test]
fn geometry() {
    // (granule, va_bits) -> (levels, start level, root entries)
    let cases = [
        (Granule::K4, 48, 4, 0, 512),
        (Granule::K4, 39, 3, 1, 512),
        (Granule::K4, 40, 4, 0, 2),
        (Granule::K4, 32, 3, 1, 4),
        (Granule::K16, 48, 4, 0, 2),
        (Granule::K16, 47, 3, 1, 2048),
        (Granule::K16, 37, 3, 1, 2),
        (Granule::K16, 36, 2, 2, 2048),
        (Granule::K16, 32, 2, 2, 128),
        (Granule::K64, 48, 3, 1, 64),
        (Granule::K64, 42, 2, 2, 8192),
        (Granule::K64, 32, 2, 2, 8),
    ];
    for (g, bits, levels, start, root) in cases {
        let f = Format::new(g, bits).unwrap();
        assert_eq!(
            (
                f.levels(),
                f.start_level(),
                f.table_entries(f.start_level())
            ),
            (levels, l(start), root),
            "{g:?}/{bits}"
        );
        // The root spans exactly the VA space.
        assert_eq!(f.entry_size(l(start)) * root as u64, 1 << bits);
    }
    assert_eq!(
        Format::new(Granule::K4, 31),
        Err(FormatError::VaBits { va_bits: 31 })
    );
    assert_eq!(
        Format::new(Granule::K4, 49),
        Err(FormatError::VaBits { va_bits: 49 })
    );
    let f = Format::new(Granule::K4, 48).unwrap();
    assert_eq!(f.largest_leaf(), SZ_1G);
    assert_eq!(Format::panthor(48).unwrap().largest_leaf(), SZ_2M);
    assert_eq!(
        f.with_largest_leaf(512 * SZ_1G),
        Err(FormatError::LeafSize { size: 512 * SZ_1G })
    );
    assert_eq!(
        f.with_largest_leaf(SZ_4K).unwrap().min_block_level(),
        Level::L3
    );
    assert_eq!(
        Format::new(Granule::K16, 48).unwrap().largest_leaf(),
        32 << 20
    );
    assert_eq!(
        Format::new(Granule::K64, 48).unwrap().largest_leaf(),
        512 << 20
    );
    assert!(Format::new(Granule::K64, 48)
        .unwrap()
        .with_largest_leaf(4 << 40)
        .is_err());
}

#[test]
fn descriptor_round_trips() {
    for g in Granule::ALL {
        for bits in 32..=48 {
            let f = Format::new(g, bits).unwrap();
            for level in Level::ALL {
                let size = f.entry_size(level);
                let pa = PhysAddr::new(((0x1234_5678_9abc_u64 << 4) & f.oa_mask()) & !(size - 1));
                for attrs in all_attrs() {
                    let r = f.encode_leaf(level, pa, attrs);
                    if level < f.start_level() || !f.is_leaf_level(level) {
                        assert_eq!(r, Err(EncodeError::Level { level }));
                        continue;
                    }
                    let pte = r.unwrap();
                    let raw = pte.as_raw();
                    assert_ne!(raw & (1 << 10), 0, "AF always set");
                    assert_eq!(raw & (1 << 7) != 0, attrs.read_only, "RO is AP[2]");
                    assert_eq!(
                        (raw >> 53) & 3,
                        if attrs.no_exec { 3 } else { 0 },
                        "XN sets both bits"
                    );
                    assert_eq!(raw & 3, if level.is_last() { 3 } else { 1 });
                    assert_eq!(raw & f.oa_mask() & !(size - 1), pa.as_u64());
                    assert_eq!(f.decode(level, pte), Desc::Leaf { pa, attrs, size });
                }
                if !level.is_last() && level >= f.start_level() {
                    let t = f
                        .encode_table(level, PhysAddr::new(f.page_size() * 3))
                        .unwrap();
                    assert_eq!(
                        f.decode(level, t),
                        Desc::Table {
                            pa: PhysAddr::new(f.page_size() * 3)
                        }
                    );
                } else {
                    assert!(f.encode_table(level, PhysAddr::new(0)).is_err());
                }
            }
            // Misaligned and out-of-range output addresses are refused.
            assert!(matches!(
                f.encode_leaf(
                    Level::L3,
                    PhysAddr::new(f.page_size() / 2),
                    Attrs::default()
                ),
                Err(EncodeError::Misaligned { .. })
            ));
            assert!(matches!(
                f.encode_leaf(Level::L3, PhysAddr::new(1 << 48), Attrs::default()),
                Err(EncodeError::OutOfRange { .. })
            ));
            // A narrower PA width refuses (and decodes as foreign) what lies beyond it.
            let n = f.with_oa_bits(40).unwrap();
            let beyond = PhysAddr::new(1 << 40);
            assert_eq!(
                n.encode_leaf(Level::L3, beyond, Attrs::default()),
                Err(EncodeError::OutOfRange { pa: beyond })
            );
            let raw = f.encode_leaf(Level::L3, beyond, Attrs::default()).unwrap();
            assert_eq!(n.decode(Level::L3, raw), Desc::Reserved);
        }
    }
}

#[test]
fn decode_is_total_and_strict() {
    let f = Format::panthor(48).unwrap();
    assert_eq!(
        f.decode(Level::L3, Pte::from_raw(0xFFFF_FFFF_FFFF_FFFE)),
        Desc::Invalid
    );
    // A block where the format allows none (L1 with 2 MiB largest; L0 never).
    let b = Format::new(Granule::K4, 48)
        .unwrap()
        .encode_leaf(Level::L1, PhysAddr::new(SZ_1G), Attrs::default())
        .unwrap();
    assert_eq!(f.decode(Level::L1, b), Desc::Reserved);
    assert_eq!(f.decode(Level::L0, Pte::from_raw(0x401)), Desc::Reserved);
    // Type 01 at level 3.
    assert_eq!(f.decode(Level::L3, Pte::from_raw(0x401)), Desc::Reserved);
    // AF clear, one XN bit, SH = 01, AttrIndx 5.
    assert_eq!(f.decode(Level::L3, Pte::from_raw(0x3)), Desc::Reserved);
    assert_eq!(
        f.decode(Level::L3, Pte::from_raw(0x403 | 1 << 53)),
        Desc::Reserved
    );
    assert_eq!(
        f.decode(Level::L3, Pte::from_raw(0x403 | 1 << 8)),
        Desc::Reserved
    );
    assert_eq!(
        f.decode(Level::L3, Pte::from_raw(0x403 | 5 << 2)),
        Desc::Reserved
    );
}

/// What [`PageTable::audit`] relies on to count a leaf without decoding it: `decode` reads a
/// leaf's output address only to check its alignment and the limit, so the other bits of a leaf
/// with any aligned address below the limit decode to the same attributes.
#[test]
fn decode_reads_a_leaf_address_only_for_alignment_and_limit() {
    let mut x = 0x000a_0d17_u64;
    for g in [Granule::K4, Granule::K16, Granule::K64] {
        for bits in [48, 44] {
            let f = Format::new(g, 48).unwrap().with_oa_bits(bits).unwrap();
            for level in [Level::L0, Level::L1, Level::L2, Level::L3] {
                if level < f.start_level() || !f.is_leaf_level(level) {
                    continue;
                }
                let size = f.entry_size(level);
                let limit = f.oa_limit();
                for attrs in all_attrs() {
                    let base = f.encode_leaf(level, PhysAddr::new(0), attrs).unwrap();
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    for oa in [size, limit - size, limit, size + f.page_size(), x % limit] {
                        let oa = oa & f.oa_mask();
                        let got = f.decode(level, Pte::from_raw(base.as_raw() | oa));
                        if oa.is_multiple_of(size) && oa < limit {
                            assert_eq!(
                                got,
                                Desc::Leaf {
                                    pa: PhysAddr::new(oa),
                                    attrs,
                                    size
                                },
                                "{f:?} {level:?} {oa:#x}"
                            );
                        } else {
                            assert_eq!(got, Desc::Reserved, "{f:?} {level:?} {oa:#x}");
                        }
                    }
                }
            }
        }
    }
}

/// The audit counts leaves that share their attribute bits without decoding each, and still
/// refuses one of them whose output address is misaligned or beyond the limit.
#[test]
fn audit_checks_leaves_sharing_attribute_bits() {
    let f = Format::panthor(48).unwrap().with_oa_bits(44).unwrap();
    let mut env = Env::new(f);
    let a = Attrs::default();
    // Four pages, then two 2 MiB blocks.
    env.map(0, &[chunk(0x1000_0000, 4 * SZ_4K)], a).unwrap();
    env.map(SZ_2M, &[chunk(0x2000_0000, 2 * SZ_2M)], a).unwrap();
    env.flush();
    let audit = env.pt.audit(&env.pool).unwrap();
    assert_eq!(audit.leaves[3], 4);
    assert_eq!(audit.leaves[2], 2);
    // The level-2 and level-3 tables of VA 0.
    let mut table = env.pt.root();
    let mut path = Vec::new();
    for level in [Level::L0, Level::L1, Level::L2] {
        let (ents, _) = env.pool.frame(table).unwrap();
        let Desc::Table { pa } = f.decode(level, ents[0]) else {
            panic!("a table at {level:?}");
        };
        path.push(table);
        table = pa;
    }
    let (l2, l3) = (path[2], table);
    let mut corrupt = |frame: PhysAddr, i: usize, oa: u64, at: u64| {
        let (ents, _) = env.pool.frame_mut(frame).unwrap();
        let good = ents[i];
        ents[i] = Pte::from_raw(good.as_raw() & !f.oa_mask() | oa);
        assert_eq!(
            env.pt.audit(&env.pool),
            Err(AuditError::Corrupt { va: va(at) }),
            "{oa:#x}"
        );
        let (ents, _) = env.pool.frame_mut(frame).unwrap();
        ents[i] = good;
    };
    // The third page at the limit, then beyond it; the second block misaligned.
    corrupt(l3, 2, 1 << 44, 2 * SZ_4K);
    corrupt(l3, 2, (1 << 47) | 0x3000, 2 * SZ_4K);
    corrupt(l2, 2, 0x2020_0000 + SZ_4K, 2 * SZ_2M);
    assert_eq!(env.pt.audit(&env.pool).unwrap(), audit);
}

/// panthor's worked map examples 1-5 (4 KiB granule, 48-bit VA): panthor's count, tight with 4 KiB-only
/// backing, tight with block-capable backing; and the unmap examples U1-U4.
#[test]
fn worked_examples() {
    let f = Format::panthor(48).unwrap();
    let pages = |len: u64| -> Vec<Chunk> {
        (0..len / SZ_4K)
            .map(|i| chunk(0x1_0000_0000 + 2 * i * SZ_4K, SZ_4K))
            .collect()
    };
    let contiguous = |len: u64| alloc::vec![chunk(0x80_0000_0000, len)];
    let cases = [
        (0x1000, SZ_4K, 3, 3, 3),
        (0x20_0000, SZ_2M, 3, 3, 2),
        (0x3FF0_0000, SZ_2M, 5, 5, 5),
        (0x1_0000_0000, SZ_1G, 514, 514, 2),
        (0x7F_FFFF_F000, 2 * SZ_4K, 6, 6, 6),
    ];
    for (a, len, panthor, small, block) in cases {
        assert_eq!(
            panthor_map_bound(&f, va(a), len).unwrap(),
            panthor,
            "{a:#x}"
        );
        assert_eq!(
            map_bound(&f, va(a), &pages(len)).unwrap().total(),
            small,
            "{a:#x}"
        );
        assert_eq!(
            map_bound(&f, va(a), &contiguous(len)).unwrap().total(),
            block,
            "{a:#x}"
        );
        // Tightness: into an empty table the map uses exactly the bound.
        for backing in [pages(len), contiguous(len)] {
            let mut env = Env::new(f);
            let (bound, used) = env.map(a, &backing, Attrs::default()).unwrap();
            assert_eq!(bound, used);
        }
    }
    for (a, len, n) in [
        (0x20_1000, SZ_4K, 1),
        (0x10_0000, 4 << 20, 2),
        (0x1F_F000, 2 * SZ_4K, 2),
        (0x20_0000, SZ_2M, 0),
    ] {
        assert_eq!(panthor_unmap_bound(&f, va(a), len).unwrap(), n);
        assert_eq!(unmap_bound(&f, va(a), len).unwrap().total(), n);
    }
    // With 1 GiB blocks, an unaligned end inside a 1 GiB block needs an L2 and an L3 table.
    let g = Format::new(Granule::K4, 48).unwrap();
    assert_eq!(
        unmap_bound(&g, va(SZ_1G + SZ_4K), SZ_4K).unwrap().per_level,
        [0, 0, 1, 1]
    );
    assert_eq!(
        unmap_bound(&g, va(SZ_1G + SZ_4K), SZ_1G).unwrap().per_level,
        [0, 0, 2, 2]
    );
    assert_eq!(
        unmap_bound(&g, va(SZ_1G + SZ_2M), SZ_2M).unwrap().per_level,
        [0, 0, 1, 0]
    );
}

#[test]
fn largest_leaf_selection() {
    let f = Format::new(Granule::K4, 48).unwrap();
    let mut env = Env::new(f);
    // VA 1 GiB - 2 MiB .. 2 GiB + 4 KiB, PA offset by the same amount from a 1 GiB boundary.
    let at = SZ_1G - SZ_2M;
    let len = SZ_1G + SZ_2M + SZ_4K;
    env.map(at, &[chunk(0x40_0000_0000 - SZ_2M, len)], Attrs::default())
        .unwrap();
    let leaves = env.snapshot();
    let sizes: Vec<u64> = leaves.iter().map(|l| l.size).collect();
    assert_eq!(sizes, [SZ_2M, SZ_1G, SZ_4K]);
    assert_eq!(
        env.tr(SZ_1G + 0x1234),
        Some((0x40_0000_0000 + 0x1234, SZ_1G))
    );
    // Two chunks, the second 2 MiB-aligned in PA but starting mid-window in VA: pages only.
    let mut env = Env::new(f);
    env.map(
        0,
        &[chunk(0x1000_0000, SZ_4K), chunk(0x2000_0000, SZ_2M)],
        Attrs::default(),
    )
    .unwrap();
    assert!(env.snapshot().iter().all(|l| l.size == SZ_4K));
}

#[test]
fn unmap_all_leaves_only_root() {
    for g in Granule::ALL {
        let f = Format::new(g, 48).unwrap();
        let mut env = Env::new(f);
        let p = f.page_size();
        let big = f.largest_leaf();
        // A mixture: blocks and pages, two regions.
        env.map(
            big - 3 * p,
            &[chunk(0x10_0000_0000 - 3 * p, 2 * big + 5 * p)],
            Attrs::default(),
        )
        .unwrap();
        env.map(7 * big, &[chunk(0x20_0000_0000, 9 * p)], Attrs::default())
            .unwrap();
        assert!(env.pt.audit(&env.pool).unwrap().table_count() > 1);
        env.unmap(big, p).unwrap(); // splits a block
        env.unmap(0, 8 * big).unwrap();
        let a = env.pt.audit(&env.pool).unwrap();
        assert_eq!(a.table_count(), 1, "{g:?}: only the root remains");
        assert!(env.gather.walk_cache());
        let retired = env.gather.retired_len();
        assert!(retired > 0);
        assert_eq!(env.pool.in_use(), 1 + retired);
        env.flush();
        assert_eq!(env.pool.in_use(), 1);
    }
}

#[test]
fn split_keeps_the_rest_and_follows_bbm() {
    let f = Format::new(Granule::K4, 48).unwrap();
    let mut env = Env::new(f);
    let attrs = Attrs {
        read_only: true,
        no_exec: true,
        mem: MemType::NonCached,
        share: Shareability::Outer,
        non_global: false,
    };
    env.map(SZ_1G, &[chunk(5 * SZ_1G, SZ_1G)], attrs).unwrap();
    assert_eq!(env.snapshot().len(), 1);
    let hole = SZ_1G + 3 * SZ_2M + 5 * SZ_4K;
    let bound = unmap_bound(&f, va(hole), SZ_4K).unwrap().total();
    let mut r = Reserve::new();
    r.try_fill(&mut env.pool, bound).unwrap();
    let mut bbm = Bbm::default();
    let l1_table = env.pt.root();
    let flush = env
        .pt
        .unmap(&mut env.pool, &mut r, &mut bbm, va(hole), SZ_4K)
        .unwrap();
    env.absorb(flush);
    assert!(r.is_empty(), "used == reserve for an unmap over a block");
    // The 1 GiB block, then the 2 MiB block containing the hole.
    assert_eq!(
        bbm.0,
        [SZ_1G..2 * SZ_1G, SZ_1G + 3 * SZ_2M..SZ_1G + 4 * SZ_2M]
    );
    // Publication order for non-coherent walks: each new table is reported whole before the
    // descriptor that makes it reachable (break, then make, on the parent entry).
    let w = &bbm.1;
    let full = |i: usize| w[i].1 == (0..512);
    let l1 = env.pool.frame(l1_table).map(|(e, _)| e[0]).unwrap();
    let l1 = match f.decode(Level::L0, l1) {
        Desc::Table { pa } => pa,
        d => panic!("{d:?}"),
    };
    assert!(full(0), "the L2 table is filled first: {w:?}");
    assert_eq!((w[1].0, w[2].0), (l1, l1), "break and make on the L1 entry");
    assert!(full(3), "then the L3 table: {w:?}");
    assert_eq!(w[4].0, w[0].0, "break in the new L2 table");
    assert_eq!(w[5].0, w[0].0, "make in the new L2 table");
    assert_eq!(w[6], (w[3].0, 5..6), "the hole cleared last");
    for off in (0..SZ_1G).step_by(61 * 4096) {
        let t = env.pt.translate(&env.pool, va(SZ_1G + off)).unwrap();
        if SZ_1G + off >= hole && SZ_1G + off < hole + SZ_4K {
            assert!(t.is_none());
        } else {
            let t = t.unwrap();
            assert_eq!((t.pa.as_u64(), t.attrs), (5 * SZ_1G + off, attrs));
        }
    }
    let a = env.pt.audit(&env.pool).unwrap();
    assert_eq!(a.leaves, [0, 0, 511, 511]);
    let fr = env.gather.range().unwrap();
    assert!(fr.start <= SZ_1G && fr.end >= 2 * SZ_1G);
}

#[test]
fn protect_changes_attributes_and_splits() {
    let f = Format::panthor(48).unwrap();
    let mut env = Env::new(f);
    env.map(0, &[chunk(0x4000_0000, 4 * SZ_2M)], Attrs::default())
        .unwrap();
    let ro = Attrs {
        read_only: true,
        ..Attrs::default()
    };
    let bound = unmap_bound(&f, va(SZ_2M + SZ_4K), 2 * SZ_2M)
        .unwrap()
        .total();
    let mut r = Reserve::new();
    r.try_fill(&mut env.pool, bound).unwrap();
    let flush = env
        .pt
        .protect(
            &mut env.pool,
            &mut r,
            &mut RegionLocked,
            va(SZ_2M + SZ_4K),
            2 * SZ_2M,
            ro,
        )
        .unwrap();
    env.absorb(flush);
    assert!(r.is_empty());
    for (at, want) in [
        (SZ_2M, false),
        (SZ_2M + SZ_4K, true),
        (2 * SZ_2M, true),
        (3 * SZ_2M, true),
        (3 * SZ_2M + SZ_4K, false),
    ] {
        let t = env.pt.translate(&env.pool, va(at)).unwrap().unwrap();
        assert_eq!(
            (t.attrs.read_only, t.pa.as_u64()),
            (want, 0x4000_0000 + at),
            "{at:#x}"
        );
    }
    env.pt.audit(&env.pool).unwrap();
}

#[test]
fn rejected_requests_change_nothing() {
    let f = Format::panthor(40).unwrap().with_oa_bits(44).unwrap();
    let mut env = Env::new(f);
    env.map(SZ_2M, &[chunk(0x4000_0000, SZ_2M)], Attrs::default())
        .unwrap();
    env.map(
        4 * SZ_2M + SZ_4K,
        &[chunk(0x5000_0000, SZ_4K)],
        Attrs::default(),
    )
    .unwrap();
    env.flush();
    let before = env.snapshot();
    let audit = env.pt.audit(&env.pool).unwrap();
    let in_use = env.pool.in_use();
    let mut r = Reserve::new();
    r.try_fill(&mut env.pool, 3).unwrap();
    let a = Attrs::default();
    let c = [chunk(0x6000_0000, SZ_2M)];
    let mut ctx = env.pt.update(&mut env.pool, &mut r, RegionLocked);
    assert_eq!(
        ctx.map(va(SZ_4K / 2), &c, a),
        Err(MapError::Misaligned { va: va(SZ_4K / 2) })
    );
    assert_eq!(ctx.map(va(0), &[], a), Err(MapError::ZeroLength));
    assert_eq!(
        ctx.map(va(0), &[chunk(0x1000, 0x800)], a),
        Err(MapError::BadChunk { index: 0 })
    );
    // Beyond the 44-bit PA width (the format's, not the descriptor's 48 bits).
    assert_eq!(
        ctx.map(
            va(0),
            &[chunk(SZ_4K, SZ_4K), chunk((1 << 44) - SZ_4K, 2 * SZ_4K)],
            a
        ),
        Err(MapError::PaOutOfRange { index: 1 })
    );
    assert_eq!(
        ctx.map(va((1 << 40) - SZ_4K), &c, a),
        Err(MapError::OutOfRange)
    );
    assert_eq!(
        ctx.map(va(u64::MAX - 0xFFF), &c, a),
        Err(MapError::OutOfRange)
    );
    // Overlaps a block at its last page, and a page table entry.
    assert_eq!(
        ctx.map(va(0), &[chunk(0x6000_0000, SZ_2M + SZ_4K)], a),
        Err(MapError::AlreadyMapped { va: va(SZ_2M) })
    );
    assert_eq!(
        ctx.map(va(4 * SZ_2M), &[chunk(0x6000_0000, 4 * SZ_4K)], a),
        Err(MapError::AlreadyMapped {
            va: va(4 * SZ_2M + SZ_4K)
        })
    );
    assert_eq!(ctx.unmap(va(0), 0), Err(UnmapError::ZeroLength));
    assert_eq!(
        ctx.unmap(va(0x800), SZ_4K),
        Err(UnmapError::Misaligned {
            va: va(0x800),
            len: SZ_4K
        })
    );
    assert_eq!(
        ctx.unmap(va(0), (1 << 40) + SZ_4K),
        Err(UnmapError::OutOfRange)
    );
    assert_eq!(
        ctx.protect(va(u64::MAX - 0xFFF), SZ_4K, a),
        Err(ProtectError::OutOfRange)
    );
    assert_eq!(ctx.reserve_len(), 3);
    let flush = ctx.finish();
    assert!(flush.range().is_none() && flush.changed().is_none() && flush.retired_len() == 0);
    let _ = flush.forget();

    // Reserve too small: a map needing 2 new tables (L2 + L3 in a fresh 1 GiB window), and
    // splits needing one.
    let mut small = Reserve::new();
    small.try_fill(&mut env.pool, 1).unwrap();
    let mut empty = Reserve::new();
    let mut ctx = env.pt.update(&mut env.pool, &mut small, RegionLocked);
    assert_eq!(
        ctx.map(va(3 * SZ_1G), &[chunk(0x6000_0000, SZ_4K)], a),
        Err(MapError::ReservationExhausted {
            needed: 2,
            available: 1
        })
    );
    let _ = ctx.finish().forget();
    let mut ctx = env.pt.update(&mut env.pool, &mut empty, RegionLocked);
    assert_eq!(
        ctx.unmap(va(SZ_2M + SZ_4K), SZ_4K),
        Err(UnmapError::ReservationExhausted {
            needed: 1,
            available: 0
        })
    );
    assert_eq!(
        ctx.protect(va(SZ_2M), SZ_4K, a),
        Err(ProtectError::ReservationExhausted {
            needed: 1,
            available: 0
        })
    );
    let flush = ctx.finish();
    assert!(flush.range().is_none() && flush.retired_len() == 0);
    let _ = flush.forget();
    assert_eq!(
        env.pt.translate(&env.pool, va(1 << 40)),
        Err(TranslateError::OutOfRange)
    );
    // A reserve whose frames belong to another memory.
    let mut other = VecPool::new(Granule::K4, PhysAddr::new(0x10_0000_0000)).unwrap();
    let mut foreign = Reserve::new();
    foreign.try_fill(&mut other, 2).unwrap();
    assert!(matches!(
        env.pt.map(
            &mut env.pool,
            &mut foreign,
            &mut RegionLocked,
            va(3 * SZ_1G),
            &[chunk(0x6000_0000, SZ_4K)],
            a
        ),
        Err(MapError::BadTable { .. })
    ));
    assert_eq!(foreign.len(), 2);
    // A reserve whose frames lie beyond the PA width: refused before anything is written.
    let f40 = Format::panthor(40).unwrap().with_oa_bits(40).unwrap();
    // Frames 0 and 1 lie below 2^40, frames 2 and up at or beyond it.
    let mut edge = VecPool::new(Granule::K4, PhysAddr::new((1 << 40) - 2 * SZ_4K)).unwrap();
    let mut pt40 = PageTable::try_new(f40, &mut edge).unwrap();
    let mut high = Reserve::new();
    high.try_fill(&mut edge, 3).unwrap();
    let third = PhysAddr::new((1 << 40) + SZ_4K);
    let got = pt40.map(
        &mut edge,
        &mut high,
        RegionLocked,
        va(0),
        &[chunk(SZ_4K, SZ_4K)],
        a,
    );
    assert_eq!(got.err(), Some(MapError::BadTable { pa: third }));
    assert_eq!(pt40.audit(&edge).unwrap().table_count(), 1);
    let beyond = edge.alloc_frame().unwrap();
    assert_eq!(
        PageTable::new(f40, &mut edge, beyond).err(),
        Some(NewError::BadRoot { pa: beyond })
    );
    assert_eq!(high.len(), 3);

    assert_eq!(r.len(), 3);
    assert_eq!(env.snapshot(), before);
    assert_eq!(env.pt.audit(&env.pool).unwrap(), audit);
    assert_eq!(env.pool.in_use(), in_use + 3 + 1);
}

#[test]
fn lock_regions() {
    let cases = [
        (0x1000, 0x1000, 0, 15),
        (0x3FF0_0000, SZ_2M, 0, 31),
        (0x7F_FFFF_F000, 0x2000, 0, 40),
        (SZ_2M, SZ_2M, SZ_2M, 21),
        (0x8000, 0x8000, 0x8000, 15),
    ];
    for (start, len, base, log2) in cases {
        let r = LockRegion::covering(start..start + len).unwrap();
        assert_eq!((r.base(), r.size_log2()), (base, log2), "{start:#x}");
        assert!(r.covers(start..start + len));
        assert_eq!(r.encode(), base | u64::from(log2 - 1));
    }
    assert_eq!(LockRegion::covering(0..0), Err(LockError::Empty));
    let r = LockRegion::covering(0x7F_FFFF_F000..0x80_0000_1000).unwrap();
    assert_eq!(r.size(), 1 << 40);
    assert!(r.over_lock() > 1e8);
    let full = LockRegion::covering(0..u64::MAX).unwrap();
    assert_eq!(full.size_log2(), 64);
}

#[test]
fn job_union_is_at_most_the_sum() {
    let f = Format::panthor(48).unwrap();
    let c1 = [chunk(0x1000_0000, 16 * SZ_4K)];
    let c2 = [chunk(0x2000_0000, 16 * SZ_4K)];
    let ops = [
        JobOp::Map {
            va: va(0x10_0000),
            backing: &c1,
        },
        JobOp::Map {
            va: va(0x11_0000),
            backing: &c2,
        },
        JobOp::Unmap {
            va: va(0x10_1000),
            len: SZ_4K,
        },
    ];
    let union = job_bound_alloc(&f, &ops).unwrap();
    let sum = sum_bound(&f, &ops).unwrap();
    assert_eq!(sum.total(), 3 + 3 + 1);
    assert_eq!(union.total(), 3 + 1);
    let mut tiny = [WindowRun::default(); 1];
    assert_eq!(job_bound(&f, &ops, &mut tiny), Err(BoundError::ScratchFull));
}

#[test]
fn retired_frames_wait_for_the_flush() {
    let f = Format::panthor(48).unwrap();
    let mut env = Env::new(f);
    env.map(0, &[chunk(0x1000_0000, 8 * SZ_4K)], Attrs::default())
        .unwrap();
    let tables: Vec<PhysAddr> = {
        let mut v = Vec::new();
        let mut t = env.pt.root();
        for level in 0..3 {
            let (e, _) = env.pool.frame(t).unwrap();
            match f.decode(l(level), e[0]) {
                Desc::Table { pa } => {
                    v.push(pa);
                    t = pa;
                }
                d => panic!("{d:?}"),
            }
        }
        v
    };
    env.unmap(0, 8 * SZ_4K).unwrap();
    for t in &tables {
        assert!(env.gather.is_retired(&env.pool, *t));
    }
    // New frames for a new map come from elsewhere while the flush is pending.
    let mut r = Reserve::new();
    r.try_fill(&mut env.pool, 3).unwrap();
    let g2 = env
        .pt
        .map(
            &mut env.pool,
            &mut r,
            &mut RegionLocked,
            va(SZ_1G * 600),
            &[chunk(0x1000_0000, SZ_4K)],
            Attrs::default(),
        )
        .unwrap();
    let snap = env.pt.audit(&env.pool).unwrap();
    assert_eq!(snap.table_count(), 4);
    for t in &tables {
        assert!(!reachable(&env).contains(t), "a retired frame was reused");
    }
    // A failed invalidation gives the flush back, nothing reclaimed.
    struct Stuck;
    impl TlbInvalidate for Stuck {
        type Error = &'static str;
        fn invalidate(&mut self, _: core::ops::Range<u64>, _: bool) -> Result<(), &'static str> {
            Err("AS_ACTIVE stuck")
        }
    }
    let pending = core::mem::take(&mut env.gather);
    let err = pending.invalidate(&mut Stuck).unwrap_err();
    assert_eq!((err.error, err.flush.retired_len()), ("AS_ACTIVE stuck", 3));
    env.gather = err.flush;
    let in_use = env.pool.in_use();
    let mut tlb = Tlb::default();
    let mut reclaim = core::mem::take(&mut env.gather)
        .invalidate(&mut tlb)
        .unwrap();
    assert_eq!(
        tlb.0,
        [(0..1 << 39, true)],
        "the L1 table's span, walk cache too"
    );
    assert_eq!(env.pool.in_use(), in_use, "nothing freed before release");
    reclaim.release(&mut env.pool).unwrap();
    assert_eq!(env.pool.in_use(), in_use - 3);
    // A map-only flush invalidates nothing.
    let mut tlb = Tlb::default();
    assert!(g2.invalidate(&mut tlb).unwrap().is_empty());
    assert!(tlb.0.is_empty());
}

/// Every table reachable from the root.
fn reachable(env: &Env) -> Vec<PhysAddr> {
    let f = *env.pt.format();
    let mut out = Vec::new();
    let mut stack = alloc::vec![(env.pt.root(), f.start_level())];
    while let Some((t, level)) = stack.pop() {
        out.push(t);
        if let (Some((e, _)), Some(_)) = (env.pool.frame(t), level.next()) {
            for pte in e {
                if let Desc::Table { pa } = f.decode(level, *pte) {
                    stack.push((pa, level.child()));
                }
            }
        }
    }
    out
}

#[test]
fn destroy_retires_everything() {
    let f = Format::new(Granule::K16, 48).unwrap();
    let mut env = Env::new(f);
    env.map(0x4000, &[chunk(0x100_0000, 0x10_0000)], Attrs::default())
        .unwrap();
    let tables = env.pt.audit(&env.pool).unwrap().table_count();
    let pt = core::mem::replace(&mut env.pt, PageTable::try_new(f, &mut env.pool).unwrap());
    let g = pt.destroy(&mut env.pool).unwrap();
    assert_eq!(g.retired_len(), tables);
    assert_eq!(g.range(), Some(0..1 << 48));
    g.invalidate(&mut Tlb::default())
        .unwrap()
        .release(&mut env.pool)
        .unwrap();
}

#[test]
fn slice_pool_core_only() {
    let mut entries = [Pte::INVALID; 4 * 512];
    let mut metas = [FrameMeta::default(); 4];
    let mut pool = SlicePool::new(
        Granule::K4,
        PhysAddr::new(0x10_0000),
        &mut entries,
        &mut metas,
    )
    .unwrap();
    let f = Format::panthor(39).unwrap();
    let mut pt = PageTable::try_new(f, &mut pool).unwrap();
    let mut r = Reserve::new();
    r.try_fill(&mut pool, 2).unwrap();
    assert_eq!(r.try_fill(&mut pool, 2), Err(AllocError::OutOfFrames));
    assert_eq!(r.len(), 2, "a failed fill gives back what it took");
    let g = pt
        .map(
            &mut pool,
            &mut r,
            &mut RegionLocked,
            va(0x1000),
            &[chunk(0x200_0000, 0x1000)],
            Attrs::default(),
        )
        .unwrap();
    assert_eq!(pool.in_use(), 3);
    assert!(matches!(
        pool.free_frame(PhysAddr::new(0x999_0000)),
        Err(FreeError::Foreign { .. })
    ));
    r.release(&mut pool).unwrap();
    assert!(matches!(
        pool.free_frame(PhysAddr::new(0x10_0000 + 3 * 0x1000)),
        Err(FreeError::DoubleFree { .. })
    ));
    let _ = g.forget();
    assert!(SlicePool::new(Granule::K4, PhysAddr::new(0x10), &mut [], &mut []).is_err());
}

/// Releases into a pool that does not own the frames are refused with `FreeError::Foreign`,
/// and lose nothing: the frames can still be released into the right pool afterwards, and
/// both pools' `in_use` end where they should. One test per release path: the reserve, the
/// reclaim after invalidation, moving retired frames between flushes, and taking a retired
/// frame for reuse.
#[test]
fn foreign_releases_are_refused_and_lose_nothing() {
    let f = Format::panthor(48).unwrap();
    let mut env = Env::new(f);
    let mut other = VecPool::new(Granule::K4, PhysAddr::new(0x10_0000_0000)).unwrap();
    let other_frame = other.alloc_frame().unwrap();

    // Reserve.
    let mut r = Reserve::new();
    r.try_fill(&mut env.pool, 3).unwrap();
    let in_use = env.pool.in_use();
    let first = r.release(&mut other).unwrap_err();
    assert!(matches!(first, FreeError::Foreign { .. }), "{first:?}");
    assert_eq!((r.len(), env.pool.in_use(), other.in_use()), (3, in_use, 1));
    r.release(&mut env.pool).unwrap();
    assert_eq!((r.len(), env.pool.in_use()), (0, in_use - 3));

    // Reclaim (retired tables after the invalidation).
    env.map(0, &[chunk(0x1000_0000, 8 * SZ_4K)], Attrs::default())
        .unwrap();
    env.unmap(0, 8 * SZ_4K).unwrap();
    let flush = core::mem::take(&mut env.gather);
    assert_eq!(flush.retired_len(), 3);
    let mut reclaim = flush.invalidate(&mut Tlb::default()).unwrap();
    let in_use = env.pool.in_use();
    assert!(matches!(
        reclaim.release(&mut other),
        Err(FreeError::Foreign { .. })
    ));
    assert_eq!(
        (reclaim.len(), env.pool.in_use(), other.in_use()),
        (3, in_use, 1)
    );
    // Reuse of a retired frame through a foreign memory is refused too.
    assert!(matches!(
        reclaim.pop(&mut other),
        Err(FreeError::Foreign { .. })
    ));
    assert_eq!(reclaim.len(), 3);
    let one = reclaim.pop(&mut env.pool).unwrap().unwrap();
    env.pool.free_frame(one).unwrap();
    reclaim.release(&mut env.pool).unwrap();
    assert_eq!((reclaim.len(), env.pool.in_use()), (0, in_use - 3));

    // Retired frames moved between flushes (merge) through a memory that does not hold them.
    env.map(0, &[chunk(0x1000_0000, 8 * SZ_4K)], Attrs::default())
        .unwrap();
    env.unmap(0, 8 * SZ_4K).unwrap();
    let flush = core::mem::take(&mut env.gather);
    let mut into = Flush::default();
    let err = into.merge(&mut other, flush).unwrap_err();
    assert!(matches!(err.error, FreeError::Foreign { .. }));
    let flush = err.flush;
    assert_eq!((flush.retired_len(), into.retired_len()), (3, 0));
    into.merge(&mut env.pool, flush).unwrap();
    assert_eq!(into.retired_len(), 3);
    let in_use = env.pool.in_use();
    into.invalidate(&mut Tlb::default())
        .unwrap()
        .release(&mut env.pool)
        .unwrap();
    assert_eq!(env.pool.in_use(), in_use - 3);
    other.free_frame(other_frame).unwrap();
    assert_eq!(other.in_use(), 0);
}

/// Regression (kernel formula): an unmap with a 2 MiB-aligned start and an unaligned end in the
/// same 2 MiB window reserves one table in panthor (`ALIGN` rounds up), not zero.
#[test]
fn panthor_unmap_aligned_start_unaligned_end_same_window() {
    let f = Format::panthor(48).unwrap();
    assert_eq!(panthor_unmap_bound(&f, va(SZ_2M), SZ_4K).unwrap(), 1);
    assert_eq!(unmap_bound(&f, va(SZ_2M), SZ_4K).unwrap().total(), 1);
    // And the split really needs it.
    let mut env = Env::new(f);
    env.map(SZ_2M, &[chunk(0x4000_0000, SZ_2M)], Attrs::default())
        .unwrap();
    assert_eq!(env.unmap(SZ_2M, SZ_4K).unwrap(), (1, 1));
}

/// A new table's frame (zeroed by its allocator in prepare, never written at run time) is
/// reported to `UpdateHooks::written` as a whole before the descriptor that links it, so a
/// non-coherent walker never follows a link into entries it has not been shown. Each new table
/// holds exactly the one translation mapped below it.
#[test]
fn new_tables_are_published_before_they_are_linked() {
    let fmt = Format::panthor(48).unwrap();
    let mut env = Env::new(fmt);
    let n = fmt.granule().entries();
    let mut r = Reserve::new();
    r.try_fill(&mut env.pool, 6).unwrap();
    // One page at 1 GiB + 4 KiB: new L1, L2 and L3 tables from that reserve.
    let mut hooks = Bbm::default();
    let f = env
        .pt
        .map(
            &mut env.pool,
            &mut r,
            &mut hooks,
            va(SZ_1G + SZ_4K),
            &[chunk(0x1234_5000, SZ_4K)],
            Attrs::default(),
        )
        .unwrap();
    env.absorb(f);
    r.release(&mut env.pool).unwrap();
    assert_eq!(env.tr(SZ_1G + SZ_4K), Some((0x1234_5000, SZ_4K)));
    assert_eq!(env.tr(SZ_1G), None);
    assert_eq!(env.tr(SZ_1G + 2 * SZ_4K), None);
    assert_eq!(env.snapshot().len(), 1);
    assert_eq!(env.pt.audit(&env.pool).unwrap().table_count(), 4);
    // Each new table's whole frame was reported, before the entry linking it (in its parent).
    let at = SZ_1G + SZ_4K;
    let mut parent = env.pt.root();
    for level in [l(0), l(1), l(2)] {
        let idx = usize::try_from((at / fmt.entry_size(level)) % n as u64).unwrap();
        let pte = env.pool.frame(parent).unwrap().0[idx];
        let Desc::Table { pa: child } = fmt.decode(level, pte) else {
            panic!("no table below {level:?}");
        };
        let published = hooks.1.iter().position(|w| *w == (child, 0..n));
        let linked = hooks.1.iter().position(|w| *w == (parent, idx..idx + 1));
        assert!(
            matches!((published, linked), (Some(p), Some(k)) if p < k),
            "table {child:?}: published at {published:?}, linked at {linked:?} in {:?}",
            hooks.1
        );
        parent = child;
    }
}

/// `leaves` runs over a stretch of invalid entries inside one table without walking from the
/// root again for each one; it must still find exactly the mapped leaves of any range, on
/// formats whose root is a full table, a short one (two entries) or a large one.
#[test]
fn leaves_skip_holes_and_find_every_leaf() {
    for (g, bits) in [
        (Granule::K4, 48),
        (Granule::K4, 40),
        (Granule::K16, 47),
        (Granule::K64, 42),
    ] {
        let f = Format::new(g, bits).unwrap();
        let gs = g.size();
        let top = f.va_limit();
        let block = f.entry_size(Level::L2);
        let mut env = Env::new(f);
        // Sparse pieces: first page, a page after a long hole, a block, the last page.
        let pieces = [(0, gs), (37 * gs, gs), (3 * block, block), (top - gs, gs)];
        for (i, &(at, len)) in pieces.iter().enumerate() {
            let pa = 0x1_0000_0000 + i as u64 * 0x1000_0000;
            env.map(at, &[chunk(pa, len)], Attrs::default()).unwrap();
        }
        let all = env.snapshot();
        let covered: Vec<(u64, u64)> = all.iter().map(|l| (l.va.as_u64(), l.size)).collect();
        let want: Vec<(u64, u64)> = pieces.to_vec();
        assert_eq!(covered, want, "{g:?}/{bits}");
        for l in &all {
            assert_eq!(env.tr(l.va.as_u64()), Some((l.pa.as_u64(), l.size)));
        }
        // Ranges that start and end inside holes and inside leaves see the overlapping leaves.
        for (lo, hi) in [
            (gs, 37 * gs),
            (gs, 38 * gs),
            (2 * gs, 3 * block + gs),
            (38 * gs, top - gs),
            (3 * block + gs, top),
        ] {
            let got: Vec<u64> = env
                .pt
                .leaves(&env.pool, va(lo)..va(hi))
                .map(|l| l.unwrap().va.as_u64())
                .collect();
            let want: Vec<u64> = all
                .iter()
                .filter(|l| l.va.as_u64() < hi && l.va.as_u64() + l.size > lo)
                .map(|l| l.va.as_u64())
                .collect();
            assert_eq!(got, want, "{g:?}/{bits} {lo:#x}..{hi:#x}");
        }
    }
}
