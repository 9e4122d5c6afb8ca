//! The request streams of the gpuva benchmarks.
//!
//! Each workload is a [`Plan`]: set-up requests that build a tree of about `n` live mappings, and a
//! churn stream of map/unmap requests under which the number of live mappings stays roughly
//! stationary (so a benchmark can cycle the stream for as long as it likes). Everything is
//! deterministic (seeded [`XorShift`]).
//!
//! * [`Workload::Churn`]: random page-granular mappings of 1-8 pages with random gaps; the stream
//!   maps and unmaps random 1-8 page ranges (overlapping whatever is there, so it produces every kind
//!   of op: `Unmap`, `Remap` with `prev`, `next` or both, `Map`).
//! * [`Workload::Dense`]: `n` adjacent 4 KiB mappings, each of its own object; the stream unmaps a
//!   random page and maps it again with a new object (an `Unmap` request, then a `Map` into the hole).
//! * [`Workload::Tiles`]: a Vulkan sparse texture. One large sparse NULL range (no object, the
//!   `SPARSE` flag) is cut into 64 KiB tiles by binding objects into it; the stream binds random tiles
//!   (`Remap` of the NULL piece around the tile + `Map`), unbinds random tiles (maps NULL over them)
//!   and now and then releases a whole 1 MiB block of 16 tiles back to one NULL mapping.

use core::ops::Range;

use gpuva::{Mapping, ObjId, Request, VaFlags};

use crate::rng::XorShift;

/// 4 KiB pages.
pub const PAGE: u64 = 4096;
/// Sparse-texture tile size: 64 KiB.
pub const TILE: u64 = 64 * 1024;
/// Tiles per block in [`Workload::Tiles`] (a 1 MiB block is released at once).
pub const TILES_PER_BLOCK: u64 = 16;
/// Where the workloads start placing mappings in the VA space.
pub const BASE: u64 = 1 << 32;
/// The VA space every tracker manages: `[0, 2^48)`.
pub const SPACE: Range<u64> = 0..1 << 48;
/// Length of the churn streams (cycled by the benchmarks).
pub const CHURN_LEN: usize = 1 << 18;

/// Longest mapping or request of [`Workload::Churn`], in pages.
const CHURN_MAX_PAGES: u64 = 8;
/// Largest gap between set-up mappings of [`Workload::Churn`], in pages. Calibrated so the set-up
/// density (mean gap 1 page, mean length 4.5 pages) roughly matches the stationary density of the
/// churn stream (`workload::tests::churn_is_roughly_stationary`).
const CHURN_MAX_GAP: u64 = 2;
/// Live mappings per block in the stationary state of [`Workload::Tiles`] (measured, rounded).
const TILES_LIVE_PER_BLOCK: usize = 8;

/// One benchmark workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Random overlapping map/unmap churn.
    Churn,
    /// Dense single-page mappings, unmapped and mapped again.
    Dense,
    /// Vulkan sparse-texture tiles in a large sparse NULL range.
    Tiles,
}

impl Workload {
    /// Every workload, in report order.
    pub const ALL: [Workload; 3] = [Workload::Churn, Workload::Dense, Workload::Tiles];

    /// Short name for benchmark ids and reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Workload::Churn => "churn",
            Workload::Dense => "dense",
            Workload::Tiles => "tiles",
        }
    }
}

/// A workload instance: set-up requests, then a churn stream.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Requests that build the initial tree (apply in order, untimed).
    pub setup: Vec<Request>,
    /// The measured requests (cycle through them in order).
    pub churn: Vec<Request>,
}

/// Builds the plan of `workload` for about `n` live mappings, with a churn stream of `churn_len`
/// requests (an even number keeps the dense workload's unmap/map pairs aligned when cycling).
#[must_use]
pub fn plan(workload: Workload, n: usize, churn_len: usize, seed: u64) -> Plan {
    let mut rng = XorShift::new(seed ^ (n as u64).wrapping_mul(0x9E37_79B9));
    match workload {
        Workload::Churn => churn(n, churn_len, &mut rng),
        Workload::Dense => dense(n, churn_len, &mut rng),
        Workload::Tiles => tiles(n, churn_len, &mut rng),
    }
}

fn obj(raw: u64) -> Option<ObjId> {
    ObjId::new(raw.max(1))
}

fn churn(n: usize, churn_len: usize, rng: &mut XorShift) -> Plan {
    let mut setup = Vec::with_capacity(n);
    let mut page = 0u64;
    for _ in 0..n {
        page += rng.below(CHURN_MAX_GAP + 1);
        let len = 1 + rng.below(CHURN_MAX_PAGES);
        let o = obj(1 + rng.below(1 << 20));
        let off = rng.below(1 << 20) * PAGE;
        setup.push(Request::Map(Mapping::new(
            BASE + page * PAGE,
            len * PAGE,
            o,
            off,
        )));
        page += len;
    }
    let span = page.max(1);
    let churn = (0..churn_len)
        .map(|_| {
            let len = 1 + rng.below(CHURN_MAX_PAGES);
            let addr = BASE + rng.below(span) * PAGE;
            if rng.chance(1, 2) {
                let o = obj(1 + rng.below(1 << 20));
                let off = rng.below(1 << 20) * PAGE;
                Request::Map(Mapping::new(addr, len * PAGE, o, off))
            } else {
                Request::Unmap {
                    addr,
                    len: len * PAGE,
                }
            }
        })
        .collect();
    Plan { setup, churn }
}

fn dense(n: usize, churn_len: usize, rng: &mut XorShift) -> Plan {
    let n64 = n as u64;
    let setup = (0..n64)
        .map(|i| Request::Map(Mapping::new(BASE + i * PAGE, PAGE, obj(i + 1), 0)))
        .collect();
    let mut churn = Vec::with_capacity(churn_len);
    let mut next_obj = n64 + 1;
    while churn.len() + 2 <= churn_len {
        let addr = BASE + rng.below(n64.max(1)) * PAGE;
        churn.push(Request::Unmap { addr, len: PAGE });
        churn.push(Request::Map(Mapping::new(addr, PAGE, obj(next_obj), 0)));
        next_obj += 1;
    }
    Plan { setup, churn }
}

/// A NULL (sparse) mapping of `[addr, addr + len)`.
fn null(addr: u64, len: u64) -> Request {
    Request::Map(Mapping::new(addr, len, None, 0).with_flags(VaFlags::SPARSE))
}

/// One tile event inside `block`: bind (7/16), unbind (7/16) or release the block (2/16).
fn tile_event(block: u64, rng: &mut XorShift) -> Request {
    let block_addr = BASE + block * TILES_PER_BLOCK * TILE;
    let tile_addr = block_addr + rng.below(TILES_PER_BLOCK) * TILE;
    match rng.below(16) {
        0..=1 => null(block_addr, TILES_PER_BLOCK * TILE),
        2..=8 => {
            let o = obj(1 + rng.below(1 << 20));
            let off = rng.below(1 << 16) * TILE;
            Request::Map(Mapping::new(tile_addr, TILE, o, off))
        }
        _ => null(tile_addr, TILE),
    }
}

fn tiles(n: usize, churn_len: usize, rng: &mut XorShift) -> Plan {
    let blocks = (n / TILES_LIVE_PER_BLOCK).max(1) as u64;
    // The texture: one large sparse NULL range.
    let mut setup = vec![null(BASE, blocks * TILES_PER_BLOCK * TILE)];
    // Bring every block to a state drawn from the stream's stationary distribution: the events
    // since the block was last released (a geometric number: release has probability 1/8).
    for block in 0..blocks {
        loop {
            let ev = tile_event(block, rng);
            if matches!(ev, Request::Map(m) if m.len == TILES_PER_BLOCK * TILE) {
                break;
            }
            setup.push(ev);
        }
    }
    let churn = (0..churn_len)
        .map(|_| {
            let block = rng.below(blocks);
            tile_event(block, rng)
        })
        .collect();
    Plan { setup, churn }
}

/// `p` with its objects folded onto `k` objects (`1 + (id - 1) % k`; NULL mappings stay NULL):
/// many mappings per object.
#[must_use]
pub fn with_objects(mut p: Plan, k: u64) -> Plan {
    let fold = |r: &mut Request| {
        if let Request::Map(m) = r {
            m.obj = m.obj.and_then(|o| ObjId::new(1 + (o.get() - 1) % k.max(1)));
        }
    };
    p.setup.iter_mut().for_each(fold);
    p.churn.iter_mut().for_each(fold);
    p
}

#[cfg(test)]
mod tests {
    use super::{plan, Workload};
    use crate::peers::{GpuvaTracker, Tracker};

    /// Live mappings after set-up, and after cycling through the churn stream twice.
    fn live_counts(w: Workload, n: usize) -> (usize, usize) {
        let p = plan(w, n, 4 * n, 1);
        let mut t = GpuvaTracker::new();
        for r in &p.setup {
            t.apply(r);
        }
        let before = t.live();
        for r in p
            .churn
            .iter()
            .chain(&p.churn)
            .chain(&p.churn)
            .chain(&p.churn)
        {
            t.apply(r);
        }
        (before, t.live())
    }

    #[test]
    fn churn_is_roughly_stationary() {
        for w in Workload::ALL {
            let (before, after) = live_counts(w, 20_000);
            let ratio = after as f64 / before as f64;
            eprintln!("{w:?}: {before} live after set-up, {after} after churn");
            assert!(
                (0.8..1.25).contains(&ratio) && (15_000..26_000).contains(&before),
                "{w:?}: {before} live after set-up, {after} after churn"
            );
        }
    }
}
