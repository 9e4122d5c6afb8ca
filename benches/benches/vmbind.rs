//! vmbind: one bind job end to end (prepare + run + cleanup) against the same work done by
//! calling gpuva and pagetable directly, in the same run.
//!
//! * `pipeline_64k`: a job mapping 64 KiB of one object, then a job unmapping it (two jobs per
//!   iteration), through `Vm::prepare`, `Vm::run`, `Vm::cleanup`.
//! * `direct_64k`: the same map and unmap through gpuva (`reserve_boxed`, `link_obtain`,
//!   `map`/`unmap`, `release`, `link_put`) and pagetable (`map_bound`/`unmap_bound`, a reserve,
//!   `PageTable::map`/`unmap`, invalidate, release): what a driver writes without the crate.
//! * `pipeline_sparse16` / `direct_sparse16`: one job of 16 single-page maps scattered over a
//!   2 MiB window (a sparse-tile bind), then one unmap of the window.
//!
//! * `vmbind_run/run_64k`: `Vm::run` alone for single-op 64 KiB jobs, bind and unbind
//!   alternating (prepare and cleanup outside the timed part); after the criterion figure, the
//!   bench times 20,000 runs one by one with `Instant` and prints p50/p90/p99/max.
//! * `vmbind_sync/{idle,range_ordered_blocked}`: a synchronous 64 KiB bind and its unbind
//!   through `run_sync` (prepare, run, cleanup), on an idle VM and while an unrelated queued job
//!   on the same VM waits for a fence nobody signals, under `Policy::RangeOrdered`. Under
//!   `Policy::Fifo` the same bind cannot run: the bench prints what `sync_may_run` says and how
//!   long `run_sync` waited (until the blocked job timed out on the queue's clock).
//!
//! Run: `cargo bench -p benches --bench vmbind -- --quick --noplot` (smoke: `-- --test`).
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_macros,
    missing_docs,
    reason = "bench code: infallible allocation is fine"
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use gpuva::{BoxNode, GpuVm, Mapping, ObjId, Request};
use pagetable::{
    map_bound, unmap_bound, Attrs, Chunk, Format, PageTable, PhysAddr, Reserve, TlbInvalidate,
    UpdateHooks, VecPool, VirtAddr,
};
use vmbind::queue::{run_sync, sync_may_run, BindQueue, Policy, SwFence};
use vmbind::{BindJob, BindOp, MapFlags, Mmu, ObjRef, ObjectRegistry, Vm, VmConfig};

#[derive(Clone)]
struct Bo([Chunk; 1]);

impl ObjRef for Bo {
    fn size(&self) -> u64 {
        self.0[0].len
    }
    fn backing(&self) -> &[Chunk] {
        &self.0
    }
}

const OBJ: u64 = 0x20_0000;

fn bo(obj: ObjId) -> Bo {
    Bo([Chunk::new(PhysAddr::new(obj.get() << 32), OBJ)])
}

struct Handles;

impl ObjectRegistry for Handles {
    type Ref = Bo;
    type Error = ();
    fn get(&mut self, obj: ObjId) -> Result<Bo, ()> {
        Ok(bo(obj))
    }
}

struct NoAs;

impl TlbInvalidate for NoAs {
    type Error = ();
    fn invalidate(&mut self, _: std::ops::Range<u64>, _: bool) -> Result<(), ()> {
        Ok(())
    }
}

impl UpdateHooks for NoAs {
    fn break_before_make(&mut self, _: std::ops::Range<u64>) {}
}

impl Mmu for NoAs {}

const VA: u64 = 0x40_0000_0000;

fn fmt() -> Format {
    Format::panthor(48).unwrap()
}

fn pool() -> VecPool {
    VecPool::new(fmt().granule(), PhysAddr::new(0x1_0000_0000)).unwrap()
}

fn pipeline(vm: &mut Vm<Bo, VecPool, NoAs>, ops: &[BindOp], unmap: &[BindOp]) {
    for o in [ops, unmap] {
        let j = vm.prepare(&mut Handles, &BindJob::new(o)).unwrap();
        let d = vm.run(j).map_err(|_| ()).unwrap();
        vm.cleanup(d).map_err(|_| ()).unwrap();
    }
}

/// The direct flow: gpuva and pagetable called one request at a time.
struct Direct {
    va: GpuVm<(), BoxNode<(), Bo>, Bo>,
    pt: PageTable,
    mem: VecPool,
}

impl Direct {
    fn new() -> Self {
        let f = fmt();
        let mut mem = pool();
        let pt = PageTable::try_new(f, &mut mem).unwrap();
        let va = GpuVm::with_granule(0x1000..1 << 47, 0..0, f.page_size()).unwrap();
        Self { va, pt, mem }
    }

    fn map(&mut self, va: u64, len: u64, obj: ObjId, offset: u64) {
        let b = bo(obj);
        let backing = [Chunk::new(PhysAddr::new(b.0[0].pa.as_u64() + offset), len)];
        let f = fmt();
        let mut reserve = Reserve::new();
        let n = map_bound(&f, VirtAddr::new(va), &backing).unwrap().total();
        reserve.try_fill(&mut self.mem, n).unwrap();
        let m = Mapping::new(va, len, Some(obj), offset);
        let need = self.va.nodes_for(&Request::Map(m)) + self.va.link_nodes();
        let mut claim = self.va.reserve_boxed(need).unwrap();
        let pin = self.va.link_obtain(obj, &mut claim, || b.clone()).unwrap();
        let flush = self
            .pt
            .map(
                &mut self.mem,
                &mut reserve,
                NoAs,
                VirtAddr::new(va),
                &backing,
                Attrs::default(),
            )
            .unwrap();
        self.va.map(m, &mut claim).unwrap();
        flush
            .invalidate(&mut NoAs)
            .unwrap()
            .release(&mut self.mem)
            .unwrap();
        reserve.release(&mut self.mem).unwrap();
        self.va.release(claim).unwrap();
        self.va.link_put(pin).unwrap();
    }

    fn unmap(&mut self, va: u64, len: u64) {
        let f = fmt();
        let mut reserve = Reserve::new();
        let n = unmap_bound(&f, VirtAddr::new(va), len).unwrap().total();
        reserve.try_fill(&mut self.mem, n).unwrap();
        let need = self.va.nodes_for(&Request::Unmap { addr: va, len });
        let mut claim = self.va.reserve_boxed(need).unwrap();
        let flush = self
            .pt
            .unmap(&mut self.mem, &mut reserve, NoAs, VirtAddr::new(va), len)
            .unwrap();
        self.va.unmap(va, len, &mut claim).unwrap();
        flush
            .invalidate(&mut NoAs)
            .unwrap()
            .release(&mut self.mem)
            .unwrap();
        reserve.release(&mut self.mem).unwrap();
        self.va.release(claim).unwrap();
        self.va.drain_zombies(|_, _| {});
        drop(self.va.trim(64));
    }
}

fn map_op(va: u64, len: u64, offset: u64) -> BindOp {
    BindOp::Map {
        va,
        len,
        obj: ObjId::new(3).unwrap(),
        offset,
        flags: MapFlags::default(),
    }
}

fn bench(c: &mut Criterion) {
    let obj = ObjId::new(3).unwrap();
    let mut g = c.benchmark_group("vmbind");
    g.throughput(Throughput::Elements(2));

    let one = [map_op(VA, 0x1_0000, 0)];
    let un_one = [BindOp::Unmap {
        va: VA,
        len: 0x1_0000,
    }];
    let mut vm: Vm<Bo, VecPool, NoAs> =
        Vm::new(VmConfig::new(fmt(), 0x1000..1 << 47), pool(), NoAs).unwrap();
    g.bench_function("pipeline_64k", |b| {
        b.iter(|| pipeline(&mut vm, black_box(&one), &un_one))
    });
    let mut d = Direct::new();
    g.bench_function("direct_64k", |b| {
        b.iter(|| {
            d.map(black_box(VA), 0x1_0000, obj, 0);
            d.unmap(VA, 0x1_0000);
        })
    });

    // 16 pages scattered over one 2 MiB window, then one unmap of the window.
    let pages: Vec<u64> = (0..16u64).map(|i| (i * 37 % 512) * 0x1000).collect();
    let sparse: Vec<BindOp> = pages.iter().map(|&o| map_op(VA + o, 0x1000, o)).collect();
    let un_win = [BindOp::Unmap {
        va: VA,
        len: 0x20_0000,
    }];
    g.bench_function("pipeline_sparse16", |b| {
        b.iter(|| pipeline(&mut vm, black_box(&sparse), &un_win))
    });
    g.bench_function("direct_sparse16", |b| {
        b.iter(|| {
            for &o in &pages {
                d.map(black_box(VA + o), 0x1000, obj, o);
            }
            d.unmap(VA, 0x20_0000);
        })
    });
    g.finish();
}

fn run_one(vm: &mut Vm<Bo, VecPool, NoAs>, ops: &[BindOp]) -> Duration {
    let j = vm.prepare(&mut Handles, &BindJob::new(ops)).unwrap();
    let t = Instant::now();
    let d = vm.run(black_box(j)).map_err(|_| ()).unwrap();
    let e = t.elapsed();
    vm.cleanup(d).map_err(|_| ()).unwrap();
    e
}

fn bench_run(c: &mut Criterion) {
    let one = [map_op(VA, 0x1_0000, 0)];
    let un_one = [BindOp::Unmap {
        va: VA,
        len: 0x1_0000,
    }];
    let mut vm: Vm<Bo, VecPool, NoAs> =
        Vm::new(VmConfig::new(fmt(), 0x1000..1 << 47), pool(), NoAs).unwrap();
    let mut g = c.benchmark_group("vmbind_run");
    g.throughput(Throughput::Elements(1));
    let mut flip = false;
    g.bench_function("run_64k", |b| {
        b.iter_custom(|n| {
            let mut total = Duration::ZERO;
            for _ in 0..n {
                flip = !flip;
                total += run_one(&mut vm, if flip { &one } else { &un_one });
            }
            total
        })
    });
    g.finish();
    if flip {
        run_one(&mut vm, &un_one);
    }
    // Percentiles: each run timed on its own (Instant's own cost, ~20-40 ns here, included).
    for _ in 0..2_000 {
        run_one(&mut vm, &one);
        run_one(&mut vm, &un_one);
    }
    let (mut bind, mut unbind) = (Vec::new(), Vec::new());
    for _ in 0..10_000 {
        bind.push(run_one(&mut vm, &one));
        unbind.push(run_one(&mut vm, &un_one));
    }
    let mut all: Vec<Duration> = bind.iter().chain(&unbind).copied().collect();
    for (name, v) in [
        ("bind", &mut bind),
        ("unbind", &mut unbind),
        ("both", &mut all),
    ] {
        v.sort_unstable();
        let p = |q: usize| v[(v.len() * q / 1000).min(v.len() - 1)].as_nanos();
        println!(
            "vmbind_run percentiles {name} (n={}): p50 {} ns, p90 {} ns, p99 {} ns, p99.9 {} ns, max {} ns, p99/p50 {:.2}",
            v.len(),
            p(500),
            p(900),
            p(990),
            p(999),
            v[v.len() - 1].as_nanos(),
            p(990) as f64 / p(500) as f64
        );
    }
}

type FVm = Vm<Bo, VecPool, NoAs, SwFence>;

fn sync_pair(vm: &mut FVm, qs: &mut [&mut BindQueue<Bo>], policy: Policy, ops: [&[BindOp]; 2]) {
    for o in ops {
        let j = vm.prepare(&mut Handles, &BindJob::new(o)).unwrap();
        run_sync(vm, qs, policy, j, 0, |_| panic!("must not wait")).unwrap();
    }
}

fn bench_sync(c: &mut Criterion) {
    let one = [map_op(VA, 0x1_0000, 0)];
    let un_one = [BindOp::Unmap {
        va: VA,
        len: 0x1_0000,
    }];
    // The unrelated async job: 64 KiB, 1 GiB away, waiting for `gate`.
    let far = [map_op(VA + 0x4000_0000, 0x1_0000, 0)];
    let new_vm =
        || -> FVm { Vm::new(VmConfig::new(fmt(), 0x1000..1 << 47), pool(), NoAs).unwrap() };
    let mut idle = new_vm();
    let mut busy = new_vm();
    let mut q: BindQueue<Bo> = BindQueue::new(1_000);
    let gate = SwFence::new();
    let mut job = busy.prepare(&mut Handles, &BindJob::new(&far)).unwrap();
    job.arm(SwFence::new());
    q.submit(job, vec![gate.clone()], 0)
        .map_err(|_| ())
        .unwrap();
    let mut empty: BindQueue<Bo> = BindQueue::new(1_000);

    let mut g = c.benchmark_group("vmbind_sync");
    g.throughput(Throughput::Elements(2));
    g.bench_function("idle", |b| {
        b.iter(|| {
            sync_pair(
                &mut idle,
                &mut [&mut empty],
                Policy::RangeOrdered,
                [black_box(&one), &un_one],
            )
        })
    });
    g.bench_function("range_ordered_blocked", |b| {
        b.iter(|| {
            sync_pair(
                &mut busy,
                &mut [&mut q],
                Policy::RangeOrdered,
                [black_box(&one), &un_one],
            )
        })
    });
    g.finish();
    assert_eq!(q.len(), 1, "the unrelated job stayed queued");

    // Fifo: the same sync bind must wait for the blocked job.
    let span = Some(VA..VA + 0x1_0000);
    println!(
        "vmbind_sync Fifo: sync_may_run = {}, RangeOrdered: sync_may_run = {}",
        sync_may_run(Policy::Fifo, &[&q], span.clone()),
        sync_may_run(Policy::RangeOrdered, &[&q], span)
    );
    let j = busy.prepare(&mut Handles, &BindJob::new(&one)).unwrap();
    let mut waits = 0u64;
    let r = run_sync(&mut busy, &mut [&mut q], Policy::Fifo, j, 0, |_| {
        waits += 1;
        Some(waits * 100)
    });
    println!(
        "vmbind_sync Fifo: run_sync waited {waits} times (clock 100 per wait, queue timeout 1000) \
         until the blocked job timed out; sync bind result {r:?}, queued jobs left {}",
        q.len()
    );
    drop(gate);
}

criterion_group!(benches, bench, bench_run, bench_sync);
criterion_main!(benches);
