//! gpuva against its peers, peers in the same run.
//!
//! **Churn** (`gpuva-<workload>`): per-request cost of map/unmap churn at 10k, 100k and 1M live
//! mappings. For each workload (see `benches::workload`) and size, the trackers are built from the
//! same set-up requests (untimed), then each cycles through the same churn stream. The state
//! carries over from one criterion iteration to the next; the streams keep the number of live
//! mappings roughly stationary (the live counts are printed after each size).
//!
//! * `gpuva_full`: the driver flow of `vmsim ops --bench` (`sim::ops::Driver::run`) per request,
//!   all timed: prepare (claim the bound plus a link's, allocating the spare cache's shortfall;
//!   obtain and pin the object's link), run, cleanup (release, put the pin, trim the cache).
//! * `gpuva_nolinks_full`: the same on a VA space made `without_links` (no object index, no link
//!   step): pure VA bookkeeping, labelled as such.
//! * `gpuva_run`: the run stage only (`GpuVm::step`). Prepare (claims and pins for a chunk of
//!   [`CHUNK`] requests) and cleanup are outside the timer.
//! * `btree_split`: the `BTreeMap` split tree emitting the same ops (`benches::split_tree`).
//! * `rangemap`: `RangeMap<u64, (object, offset - address)>` insert/remove (no ops).
//! * Diagnostic, not requests: `gpuva_lookup`, one `lookup` of each request's start address.
//!
//! **Insert orders** (`gpuva-order`): the worst case. A tree of `n` one-page mappings (one
//! object each) is built in one order (untimed); then the last [`ORDER_K`] mappings of that order
//! are unmapped and mapped again in the same order, timed, repeatedly, so each timed request
//! runs against about `n` mappings placed in that order. Orders: `ascending`, `descending`,
//! `alternating` (lowest, highest, second lowest, ... converging on the middle: the path attack
//! on a search tree with fixed priorities) and `random`. Compare each order with `random` in the
//! same run.
//!
//! Run: `cargo bench -p benches --bench gpuva -- --quick --noplot` (smoke: `-- --test`, which
//! runs every benchmark once at the smallest size only).

use std::hint::black_box;
use std::time::{Duration, Instant};

use benches::peers::{GpuvaTracker, RangemapTracker, SplitTreeTracker, Touch, Tracker};
use benches::rng::XorShift;
use benches::workload::{plan, Workload, BASE, CHURN_LEN, PAGE};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use gpuva::{LinkPin, Mapping, ObjId, Request};

/// Live-mapping counts measured by the churn groups.
const SIZES: [usize; 3] = [10_000, 100_000, 1_000_000];
/// Sizes of the insert-order group.
const ORDER_SIZES: [usize; 2] = [100_000, 1_000_000];
/// Mappings re-inserted per timed round of the insert-order group.
const ORDER_K: usize = 4096;
/// Workload seed.
const SEED: u64 = 0x5eed_0001;
/// Requests per timed chunk of `gpuva_run` (prepared before the timer, cleaned up after it).
const CHUNK: usize = 4096;

/// Whether criterion runs in smoke-test mode (`cargo bench -- --test`): then only the smallest
/// size is built, so the CI step stays fast.
fn smoke() -> bool {
    std::env::args().any(|a| a == "--test")
}

/// A request stream and the position a tracker has reached in it.
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
fn time_run(g: &mut GpuvaTracker, stream: &mut Stream<'_>, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    let mut reqs = Vec::with_capacity(CHUNK);
    let mut pins: Vec<LinkPin> = Vec::with_capacity(CHUNK);
    while left > 0 {
        let n = left.min(CHUNK as u64);
        left -= n;
        reqs.clear();
        reqs.extend((0..n).map(|_| *stream.next_req()));
        // Prepare (untimed): one claim for the chunk, a pin per map of an object.
        let keep = g.driver.keep();
        let vm = &mut g.driver.vm;
        let links = vm.has_links();
        let need: usize = reqs
            .iter()
            .map(|r| {
                vm.nodes_for(r)
                    + match r {
                        Request::Map(m) if links && m.obj.is_some() => vm.link_nodes(),
                        _ => 0,
                    }
            })
            .sum();
        let mut claim = vm.reserve_boxed(need).expect("node allocation");
        for r in &reqs {
            if let (true, Request::Map(Mapping { obj: Some(o), .. })) = (links, r) {
                pins.push(vm.link_obtain(*o, &mut claim, || ()).expect("link"));
            }
        }
        let start = Instant::now();
        for r in &reqs {
            vm.step(*black_box(r), &mut claim, &mut Touch)
                .expect("valid request with a sufficient claim");
        }
        total += start.elapsed();
        // Cleanup (untimed).
        vm.release(claim).expect("own claim");
        for p in pins.drain(..) {
            vm.link_put(p).map_err(|(_, e)| e).expect("own pin");
        }
        drop(vm.trim(keep));
    }
    total
}

/// Benchmarks one gpuva configuration: full request, and (with links) the run stage and lookups.
fn bench_gpuva(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    label: &str,
    g: &mut GpuvaTracker,
    churn: &[Request],
    diagnostics: bool,
) {
    let mut gs = Stream::new(churn);
    group.bench_function(BenchmarkId::new(format!("{name}_full"), label), |b| {
        b.iter_custom(|iters| time_apply(g, &mut gs, iters));
    });
    if !diagnostics {
        return;
    }
    group.bench_function(BenchmarkId::new(format!("{name}_run"), label), |b| {
        b.iter_custom(|iters| time_run(g, &mut gs, iters));
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
                    Request::Unmap { addr, .. }
                    | Request::Prefetch { addr, .. }
                    | Request::Split { addr, .. } => *addr,
                    Request::UnmapObject { .. } => 0,
                };
                black_box(g.vm().lookup(black_box(addr)));
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
    let sizes: &[usize] = if smoke() { &SIZES[..1] } else { &SIZES };
    for w in Workload::ALL {
        let mut group = c.benchmark_group(format!("gpuva-{}", w.name()));
        group
            .throughput(Throughput::Elements(1))
            .sample_size(20)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        for &n in sizes {
            let p = plan(w, n, CHURN_LEN, SEED);
            let mut g = GpuvaTracker::new();
            let mut nl = GpuvaTracker::without_links();
            let mut s = SplitTreeTracker::default();
            let mut r = RangemapTracker::default();
            for req in &p.setup {
                g.apply(req);
                nl.apply(req);
                s.apply(req);
                r.apply(req);
            }
            let live_before = (g.live(), nl.live(), s.live(), r.live());
            let label = size_label(n);

            bench_gpuva(&mut group, "gpuva", &label, &mut g, &p.churn, true);
            bench_gpuva(
                &mut group,
                "gpuva_nolinks",
                &label,
                &mut nl,
                &p.churn,
                false,
            );
            let mut ss = Stream::new(&p.churn);
            group.bench_function(BenchmarkId::new("btree_split", &label), |b| {
                b.iter_custom(|iters| time_apply(&mut s, &mut ss, iters));
            });
            let mut rs = Stream::new(&p.churn);
            group.bench_function(BenchmarkId::new("rangemap", &label), |b| {
                b.iter_custom(|iters| time_apply(&mut r, &mut rs, iters));
            });

            eprintln!(
                "gpuva-{}/{label}: live mappings gpuva/gpuva_nolinks/btree_split/rangemap: {:?} \
                 after set-up, ({}, {}, {}, {}) after churn; heights (va, obj, link): {:?}",
                w.name(),
                live_before,
                g.live(),
                nl.live(),
                s.live(),
                r.live(),
                g.vm().heights(),
            );
        }
        group.finish();
    }
}

/// The insertion orders of the worst-case group.
#[derive(Clone, Copy, Debug)]
enum Order {
    Ascending,
    Descending,
    Alternating,
    Random,
}

impl Order {
    const ALL: [Order; 4] = [
        Order::Ascending,
        Order::Descending,
        Order::Alternating,
        Order::Random,
    ];

    fn name(self) -> &'static str {
        match self {
            Order::Ascending => "ascending",
            Order::Descending => "descending",
            Order::Alternating => "alternating",
            Order::Random => "random",
        }
    }

    /// Slot indices `0..n` in this order.
    fn slots(self, n: usize) -> Vec<usize> {
        match self {
            Order::Ascending => (0..n).collect(),
            Order::Descending => (0..n).rev().collect(),
            Order::Alternating => {
                let (mut lo, mut hi) = (0, n);
                let mut v = Vec::with_capacity(n);
                while lo < hi {
                    v.push(lo);
                    lo += 1;
                    if lo < hi {
                        hi -= 1;
                        v.push(hi);
                    }
                }
                v
            }
            Order::Random => {
                let mut v: Vec<usize> = (0..n).collect();
                let mut rng = XorShift::new(SEED ^ n as u64);
                for i in (1..n).rev() {
                    let j = usize::try_from(rng.below(i as u64 + 1)).expect("fits");
                    v.swap(i, j);
                }
                v
            }
        }
    }
}

/// Slot `i`: one page with a one-page gap after it, its own object.
fn slot_map(i: usize) -> Request {
    let i = i as u64;
    Request::Map(Mapping::new(
        BASE + 2 * i * PAGE,
        PAGE,
        ObjId::new(i + 1),
        0,
    ))
}

fn slot_unmap(i: usize) -> Request {
    Request::Unmap {
        addr: BASE + 2 * i as u64 * PAGE,
        len: PAGE,
    }
}

/// Times `iters` requests of the order stream: rounds of unmapping the last `k` slots of
/// `order` (in reverse) and mapping them again (in order).
struct OrderStream {
    reqs: Vec<Request>,
    pos: usize,
}

impl OrderStream {
    fn new(tail: &[usize]) -> Self {
        let mut reqs: Vec<Request> = tail.iter().rev().map(|&i| slot_unmap(i)).collect();
        reqs.extend(tail.iter().map(|&i| slot_map(i)));
        Self { reqs, pos: 0 }
    }

    /// Times `iters` requests; always ends a call at a round boundary (untimed requests finish
    /// the round) so the tree holds every slot between calls.
    fn time(&mut self, t: &mut impl Tracker, iters: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            t.apply(black_box(&self.reqs[self.pos]));
            self.pos = (self.pos + 1) % self.reqs.len();
        }
        let el = start.elapsed();
        while self.pos != 0 {
            t.apply(&self.reqs[self.pos]);
            self.pos = (self.pos + 1) % self.reqs.len();
        }
        el
    }
}

fn orders(c: &mut Criterion) {
    let sizes: &[usize] = if smoke() { &[10_000] } else { &ORDER_SIZES };
    let mut group = c.benchmark_group("gpuva-order");
    group
        .throughput(Throughput::Elements(1))
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for &n in sizes {
        let label = size_label(n);
        for order in Order::ALL {
            let slots = order.slots(n);
            let tail = &slots[n - ORDER_K.min(n / 2)..];
            let mut g = GpuvaTracker::new();
            let mut s = SplitTreeTracker::default();
            let build = Instant::now();
            for &i in &slots {
                g.apply(&slot_map(i));
            }
            let g_build = build.elapsed();
            for &i in &slots {
                s.apply(&slot_map(i));
            }
            eprintln!(
                "gpuva-order/{}/{label}: gpuva built in {:.0} ns/map; heights (va, obj, link) {:?}",
                order.name(),
                g_build.as_nanos() as f64 / n as f64,
                g.vm().heights()
            );
            let mut gs = OrderStream::new(tail);
            group.bench_function(
                BenchmarkId::new(format!("gpuva_{}", order.name()), &label),
                |b| b.iter_custom(|iters| gs.time(&mut g, iters)),
            );
            let mut ss = OrderStream::new(tail);
            group.bench_function(
                BenchmarkId::new(format!("btree_split_{}", order.name()), &label),
                |b| b.iter_custom(|iters| ss.time(&mut s, iters)),
            );
            assert_eq!(g.live(), n);
            assert_eq!(s.live(), n);
        }
    }
    group.finish();
}

criterion_group!(benches, churn, orders);
criterion_main!(benches);
