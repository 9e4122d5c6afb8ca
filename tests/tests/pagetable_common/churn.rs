//! A churn workload measuring reservation slack: ours (`map_bound` / `unmap_bound`) against
//! panthor's formula, on the same requests against the same evolving tables.
//!
//! Shared by the `pagetable_slack` test and the `pagetable` bench (included by path), so both
//! report the same figures. Depends only on `pagetable` and `std`.

use std::collections::BTreeMap;

use pagetable::{
    map_bound, panthor_map_bound, panthor_unmap_bound, unmap_bound, Attrs, Chunk, Flush, Format,
    PageTable, PhysAddr, RegionLocked, Reserve, TlbInvalidate, VecPool, VirtAddr,
};

struct InstantTlb;

impl TlbInvalidate for InstantTlb {
    type Error = std::convert::Infallible;
    fn invalidate(&mut self, _: std::ops::Range<u64>, _: bool) -> Result<(), Self::Error> {
        Ok(())
    }
}

fn complete(f: Flush, pool: &mut VecPool) {
    f.invalidate(&mut InstantTlb)
        .unwrap()
        .release(pool)
        .unwrap();
}

/// Totals over a churn run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slack {
    /// Requests executed.
    pub ops: u64,
    /// Frames actually popped from reserves.
    pub used: u64,
    /// Frames our bounds reserved.
    pub ours: u64,
    /// Frames panthor's formula would have reserved for the same requests.
    pub panthor: u64,
}

impl Slack {
    /// Reserved / used with our bounds.
    pub fn ours_ratio(&self) -> f64 {
        self.ours as f64 / self.used.max(1) as f64
    }

    /// Reserved / used with panthor's formula.
    pub fn panthor_ratio(&self) -> f64 {
        self.panthor as f64 / self.used.max(1) as f64
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const SZ_4K: u64 = 0x1000;
const SZ_2M: u64 = 0x20_0000;

/// Live buffers around which the churn settles.
pub const LIVE_TARGET: usize = 256;

/// Runs `ops` requests on a panthor-format (4K, 2 MiB blocks, 48-bit) VM of `va_space` bytes:
/// a mix a desktop GPU VM sees, with large buffers backed by 2 MiB-contiguous memory (THP /
/// huge-page allocations) and small buffers backed by scattered 4 KiB pages:
/// * 45%: map a large buffer (2..=64 MiB, 2 MiB-aligned VA, 2 MiB-contiguous chunks);
/// * 30%: map a small buffer (4..=256 KiB, scattered pages);
/// * 15%: unmap a whole buffer;
/// * 10%: unmap the middle of a large buffer (block splits at both ends).
///
/// Once [`LIVE_TARGET`] buffers are live, every request is an unmap (whole or middle, 60/40)
/// until the count drops again, so the workload is stationary and the figures do not depend on
/// the run length. Each request reserves our bound; the frames actually used are measured from
/// the reserve.
pub fn churn(seed: u64, ops: u64, va_space: u64) -> Slack {
    let fmt = Format::panthor(48).unwrap();
    let mut pool = VecPool::new(fmt.granule(), PhysAddr::new(0x8000_0000_0000)).unwrap();
    let mut pt = PageTable::try_new(fmt, &mut pool).unwrap();
    let mut rng = Rng(seed);
    // VA -> length of live buffers.
    let mut live: BTreeMap<u64, u64> = BTreeMap::new();
    let mut s = Slack::default();
    let mut gather = Flush::default();
    let free = |live: &BTreeMap<u64, u64>, at: u64, len: u64| {
        live.range(..at + len)
            .next_back()
            .is_none_or(|(&a, &l)| a + l <= at)
    };
    while s.ops < ops {
        let kind = if live.len() >= LIVE_TARGET {
            75 + rng.below(25)
        } else {
            rng.below(100)
        };
        let mut reserve = Reserve::new();
        let (ours, panthor, done) = if kind < 75 {
            let large = kind < 45;
            let len = if large {
                SZ_2M * (1 + rng.below(32))
            } else {
                SZ_4K * (1 + rng.below(64))
            };
            let align = if large { SZ_2M } else { SZ_4K };
            let at = align * rng.below((va_space - len) / align);
            if !free(&live, at, len) {
                continue;
            }
            let backing: Vec<Chunk> = if large {
                let mut v = Vec::new();
                let mut left = len;
                while left > 0 {
                    let n = (SZ_2M * (1 + rng.below(4))).min(left);
                    v.push(Chunk::new(
                        PhysAddr::new(SZ_2M * (1 + rng.below(1 << 16))),
                        n,
                    ));
                    left -= n;
                }
                v
            } else {
                (0..len / SZ_4K)
                    .map(|_| Chunk::new(PhysAddr::new(SZ_4K * (1 + rng.below(1 << 24))), SZ_4K))
                    .collect()
            };
            let ours = map_bound(&fmt, VirtAddr::new(at), &backing)
                .unwrap()
                .total();
            let panthor = panthor_map_bound(&fmt, VirtAddr::new(at), len).unwrap();
            reserve.try_fill(&mut pool, ours).unwrap();
            let f = pt
                .map(
                    &mut pool,
                    &mut reserve,
                    RegionLocked,
                    VirtAddr::new(at),
                    &backing,
                    Attrs::default(),
                )
                .unwrap();
            gather.merge(&mut pool, f).unwrap();
            live.insert(at, len);
            (ours, panthor, true)
        } else {
            let Some((&at, &len)) = live.iter().nth(rng.below(live.len() as u64) as usize) else {
                continue;
            };
            let (from, n) = if kind < 90 || len < 4 * SZ_2M {
                live.remove(&at);
                (at, len)
            } else {
                // The middle, page-aligned but not block-aligned: the buffer lives on as two.
                let from = at + SZ_2M + SZ_4K * rng.below(512);
                let to = at + len - SZ_2M + SZ_4K * rng.below(512);
                live.remove(&at);
                live.insert(at, from - at);
                live.insert(to, at + len - to);
                (from, to - from)
            };
            let ours = unmap_bound(&fmt, VirtAddr::new(from), n).unwrap().total();
            let panthor = panthor_unmap_bound(&fmt, VirtAddr::new(from), n).unwrap();
            reserve.try_fill(&mut pool, ours).unwrap();
            let f = pt
                .unmap(
                    &mut pool,
                    &mut reserve,
                    RegionLocked,
                    VirtAddr::new(from),
                    n,
                )
                .unwrap();
            gather.merge(&mut pool, f).unwrap();
            (ours, panthor, true)
        };
        if done {
            s.ops += 1;
            s.ours += ours;
            s.panthor += panthor;
            s.used += ours - reserve.len() as u64;
        }
        reserve.release(&mut pool).unwrap();
        if s.ops % 16 == 0 {
            complete(std::mem::take(&mut gather), &mut pool);
        }
    }
    complete(gather, &mut pool);
    s
}
