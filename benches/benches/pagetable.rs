//! pagetable: map and unmap of 1 GiB against a plain memset of the same descriptor bytes, block
//! mapping, and reservation slack against panthor's formula on a churn workload.
//!
//! * `map_1g_4k` / `unmap_1g_4k`: 262,144 page descriptors (2 MiB of descriptor bytes) into / out
//!   of empty tables; the reserve is filled (prepare) and released (cleanup) outside the timer,
//!   so the timed part is exactly the run stage. Unmapping an aligned 1 GiB retires its 512 L3
//!   tables and the L2 wholesale instead of clearing every descriptor (as io-pgtable frees a
//!   fully covered subtree); `unmap_1g_4k_unaligned` shifts the range by one page so the two
//!   edge L3 tables are cleared entry by entry.
//! * `memset_2m`: `fill(0)` over 2 MiB, the same number of descriptor bytes: the goal is for
//!   `map_1g_4k` to reach at least 25% of this speed (compare the throughput lines).
//! * `map_1g_2m`: 1 GiB of 2 MiB-contiguous memory: 512 block descriptors.
//! * Slack (printed before the groups, from `tests/tests/pagetable_common/churn.rs`): frames
//!   reserved / frames used over a churn of mixed maps, unmaps and partial unmaps, ours vs
//!   panthor's formula on the same requests.
//!
//! Run: `cargo bench -p benches --bench pagetable -- --quick --noplot` (smoke: `-- --test`).
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_macros,
    clippy::cast_possible_truncation,
    missing_docs,
    reason = "bench code: infallible allocation and 64-bit-host casts are fine"
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pagetable::{
    map_bound, unmap_bound, Attrs, Chunk, Flush, Format, PageTable, PhysAddr, RegionLocked,
    Reserve, TlbInvalidate, VecPool, VirtAddr,
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

#[path = "../../tests/tests/pagetable_common/churn.rs"]
mod churn;

const SZ_4K: u64 = 0x1000;
const SZ_2M: u64 = 0x20_0000;
const SZ_1G: u64 = 0x4000_0000;
/// Descriptor bytes for 1 GiB of 4 KiB pages.
const DESC_BYTES: u64 = SZ_1G / SZ_4K * 8;

struct Vm {
    fmt: Format,
    pool: VecPool,
    pt: PageTable,
}

impl Vm {
    fn new() -> Self {
        let fmt = Format::panthor(48).unwrap();
        let mut pool = VecPool::new(fmt.granule(), PhysAddr::new(0x8000_0000_0000)).unwrap();
        let pt = PageTable::try_new(fmt, &mut pool).unwrap();
        Self { fmt, pool, pt }
    }

    fn reserve(&mut self, n: u64) -> Reserve {
        let mut r = Reserve::new();
        r.try_fill(&mut self.pool, n).unwrap();
        r
    }

    fn map(&mut self, at: u64, backing: &[Chunk]) -> Duration {
        let need = map_bound(&self.fmt, VirtAddr::new(at), backing)
            .unwrap()
            .total();
        let mut r = self.reserve(need);
        let t = Instant::now();
        let g = self
            .pt
            .map(
                &mut self.pool,
                &mut r,
                RegionLocked,
                VirtAddr::new(at),
                black_box(backing),
                Attrs::default(),
            )
            .unwrap();
        let d = t.elapsed();
        r.release(&mut self.pool).unwrap();
        complete(g, &mut self.pool);
        d
    }

    fn unmap(&mut self, at: u64, len: u64) -> Duration {
        let need = unmap_bound(&self.fmt, VirtAddr::new(at), len)
            .unwrap()
            .total();
        let mut r = self.reserve(need);
        let t = Instant::now();
        let g = self
            .pt
            .unmap(
                &mut self.pool,
                &mut r,
                RegionLocked,
                VirtAddr::new(at),
                black_box(len),
            )
            .unwrap();
        let d = t.elapsed();
        r.release(&mut self.pool).unwrap();
        complete(g, &mut self.pool);
        d
    }
}

fn print_slack() {
    let s = churn::churn(0x5EED, 20_000, 1 << 36);
    println!(
        "pagetable slack (churn, {} ops): used {} frames; ours reserved {} = {:.2}x used; panthor {} = {:.2}x used; \
         ours/panthor = {:.3}",
        s.ops,
        s.used,
        s.ours,
        s.ours_ratio(),
        s.panthor,
        s.panthor_ratio(),
        s.ours as f64 / s.panthor as f64
    );
}

fn bench(c: &mut Criterion) {
    print_slack();
    let pages = [Chunk::new(PhysAddr::new(0x10_0000_0000 + SZ_4K), SZ_1G)];
    let blocks = [Chunk::new(PhysAddr::new(0x10_0000_0000), SZ_1G)];
    let mut g = c.benchmark_group("pagetable");
    g.throughput(Throughput::Bytes(DESC_BYTES));
    g.bench_function("map_1g_4k", |b| {
        let mut vm = Vm::new();
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += vm.map(SZ_1G, &pages);
                vm.unmap(SZ_1G, SZ_1G);
            }
            total
        });
    });
    g.bench_function("unmap_1g_4k", |b| {
        let mut vm = Vm::new();
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                vm.map(SZ_1G, &pages);
                total += vm.unmap(SZ_1G, SZ_1G);
            }
            total
        });
    });
    g.bench_function("unmap_1g_4k_unaligned", |b| {
        let mut vm = Vm::new();
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                vm.map(SZ_1G, &pages);
                total += vm.unmap(SZ_1G + SZ_4K, SZ_1G - 2 * SZ_4K);
                vm.unmap(SZ_1G, SZ_1G);
            }
            total
        });
    });
    g.bench_function("memset_2m", |b| {
        let mut buf = vec![0u8; DESC_BYTES as usize];
        b.iter(|| {
            black_box(buf.as_mut_slice()).fill(0);
            black_box(&buf);
        });
    });
    g.finish();

    let mut g = c.benchmark_group("pagetable_blocks");
    g.throughput(Throughput::Bytes(SZ_1G));
    g.bench_function("map_1g_2m", |b| {
        let mut vm = Vm::new();
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += vm.map(SZ_1G, &blocks);
                vm.unmap(SZ_1G, SZ_1G);
            }
            total
        });
    });
    g.bench_function("map_1g_4k", |b| {
        let mut vm = Vm::new();
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += vm.map(SZ_1G, &pages);
                vm.unmap(SZ_1G, SZ_1G);
            }
            total
        });
    });
    g.finish();
    let _ = SZ_2M;
}

criterion_group!(benches, bench);
criterion_main!(benches);
