//! gpuva against its peers: per-request cost of map/unmap churn at 10k, 100k and 1M live mappings.
//!
//! For each workload (see `benches::workload`) and size, the three trackers are built from the same
//! set-up requests (untimed), then each cycles through the same churn stream. The state carries over
//! from one criterion iteration to the next; the streams keep the number of live mappings roughly
//! stationary (the live counts are printed after each size).
//!
//! * `gpuva_run`: the run stage only. Nodes come from a pool prefilled outside the timer, removed
//!   nodes are retired inside it and freed outside it (in chunks of [`CHUNK`] requests).
//! * `gpuva_full`: prepare + run + cleanup per request: allocate a reservation of the worst case
//!   (3 nodes for a map, 2 for an unmap), apply, free the unused nodes and the retired ones.
//! * `btree_split`: the `BTreeMap` split tree emitting the same ops (`benches::split_tree`).
//! * `rangemap`: `RangeMap<u64, (object, offset - address)>` insert/remove (no ops).
//! * `gpuva_dir_*`: the same with the bucket directory of `GpuVm::with_capacity(0..1 << 48, 0..0,
//!   n)`, refitted once after set-up as a driver's maintenance step would
//!   (`GpuVm::rebucket_advice` / `rebucket`); `gpuva_*` use `GpuVm::new` (one bucket: a single
//!   treap).
//! * Diagnostic, not requests: `gpuva_lookup` / `gpuva_dir_lookup`, one `lookup` of each
//!   request's start address (a single descent).
//!
//! Run: `cargo bench -p benches --bench gpuva -- --quick --noplot` (smoke: `-- --test`).

use std::hint::black_box;
use std::ops::DerefMut;
use std::time::{Duration, Instant};

use benches::peers::{GpuvaTracker, Node, RangemapTracker, SplitTreeTracker, Tracker};
use benches::workload::{plan, Workload, CHURN_LEN};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use gpuva::{BoxNode, Request, MAX_MAP_NODES};

/// Live-mapping counts measured.
const SIZES: [usize; 3] = [10_000, 100_000, 1_000_000];
/// Workload seed.
const SEED: u64 = 0x5eed_0001;
/// Requests per timed chunk of `gpuva_run` (its node pool is prefilled per chunk).
const CHUNK: u64 = 4096;

/// A churn stream and the position each tracker has reached in it.
struct Stream<'a> {
    reqs: &'a [Request],
    pos: usize,
}

impl<'a> Stream<'a> {
    fn new(reqs: &'a [Request]) -> Self {
        Self { reqs, pos: 0 }
    }

    #[inline]
    fn next_req(&mut self) -> &'a Request {
        let r = &self.reqs[self.pos];
        self.pos += 1;
        if self.pos == self.reqs.len() {
            self.pos = 0;
        }
        r
    }
}

/// Times `iters` requests of `stream` through `t.apply`.
fn time_apply(t: &mut impl Tracker, stream: &mut Stream<'_>, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        t.apply(black_box(stream.next_req()));
    }
    start.elapsed()
}

/// Times `iters` requests of `stream` through the gpuva run stage alone.
fn time_run<B: DerefMut<Target = [Option<Node>]>>(
    g: &mut GpuvaTracker<B>,
    stream: &mut Stream<'_>,
    iters: u64,
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(CHUNK);
        left -= n;
        // Prepare (untimed): enough nodes for the worst case of every request of the chunk.
        let mut pool: Vec<Node> = (0..n as usize * MAX_MAP_NODES)
            .map(|_| BoxNode::try_new(()).expect("node allocation"))
            .collect();
        let start = Instant::now();
        for _ in 0..n {
            g.run(black_box(stream.next_req()), &mut pool);
        }
        total += start.elapsed();
        // Cleanup (untimed).
        drop(pool);
        g.cleanup();
    }
    total
}

/// Benchmarks one gpuva configuration: run stage, full request, and lookups.
fn bench_gpuva<B: DerefMut<Target = [Option<Node>]>>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    label: &str,
    g: &mut GpuvaTracker<B>,
    churn: &[Request],
) {
    let mut gs = Stream::new(churn);
    group.bench_function(BenchmarkId::new(format!("{name}_run"), label), |b| {
        b.iter_custom(|iters| time_run(g, &mut gs, iters));
    });
    group.bench_function(BenchmarkId::new(format!("{name}_full"), label), |b| {
        b.iter_custom(|iters| time_apply(g, &mut gs, iters));
    });
    // Diagnostic (the tree does not change): one lookup of each request's start address, a single
    // descent, the floor of any tree walk.
    let mut ls = Stream::new(churn);
    group.bench_function(BenchmarkId::new(format!("{name}_lookup"), label), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let addr = match ls.next_req() {
                    Request::Map(m) => m.addr,
                    Request::Unmap { addr, .. } => *addr,
                };
                black_box(g.vm.lookup(black_box(addr)));
            }
            start.elapsed()
        });
    });
}

fn size_label(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

fn churn(c: &mut Criterion) {
    for w in Workload::ALL {
        let mut group = c.benchmark_group(format!("gpuva-{}", w.name()));
        group
            .throughput(Throughput::Elements(1))
            .sample_size(20)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        for n in SIZES {
            let p = plan(w, n, CHURN_LEN, SEED);
            let mut g = GpuvaTracker::new();
            let mut d = GpuvaTracker::with_capacity(n);
            let mut s = SplitTreeTracker::default();
            let mut r = RangemapTracker::default();
            for req in &p.setup {
                g.apply(req);
                d.apply(req);
                s.apply(req);
                r.apply(req);
            }
            // The directory configuration gets the maintenance step a driver runs between binds.
            d.maintain();
            let live_before = (g.live(), d.live(), s.live(), r.live());
            let label = size_label(n);

            bench_gpuva(&mut group, "gpuva", &label, &mut g, &p.churn);
            bench_gpuva(&mut group, "gpuva_dir", &label, &mut d, &p.churn);
            let mut ss = Stream::new(&p.churn);
            group.bench_function(BenchmarkId::new("btree_split", &label), |b| {
                b.iter_custom(|iters| time_apply(&mut s, &mut ss, iters));
            });
            let mut rs = Stream::new(&p.churn);
            group.bench_function(BenchmarkId::new("rangemap", &label), |b| {
                b.iter_custom(|iters| time_apply(&mut r, &mut rs, iters));
            });

            eprintln!(
                "gpuva-{}/{label}: live mappings gpuva/gpuva_dir/btree_split/rangemap: {:?} after \
                 set-up, ({}, {}, {}, {}) after churn; tree depth: gpuva {}, gpuva_dir {} ({} buckets)",
                w.name(),
                live_before,
                g.live(),
                d.live(),
                s.live(),
                r.live(),
                g.vm.depth(),
                d.vm.depth(),
                d.vm.buckets(),
            );
        }
        group.finish();
    }
}

criterion_group!(benches, churn);
criterion_main!(benches);
