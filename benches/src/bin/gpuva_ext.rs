//! Figures for gpuva's op generators beyond drm_gpuvm (`BENCHMARKS.md`, "gpuva extensions").
//!
//! 1. Unmap of all mappings of an object with 100k mappings (interleaved with 100k mappings of
//!    another object): `Request::UnmapObject` in one request, against the peers measured in the
//!    same run: gpuva unmapping the object's mappings one request each (what a drm_gpuvm driver
//!    does with `bo_unmap_ops_create`'s list), and the `BTreeMap` split tree doing the same.
//! 2. The sparse-texture workload (`workload::Tiles`) with gpuva's merge policy off and on: live
//!    mappings at the end and nanoseconds per request (the full driver flow: claim, pin, step,
//!    release, put, trim), with the split tree (drm_gpuvm semantics, no merging) and rangemap
//!    (coalesces equal neighbours, no ops, no identities) as peers in the same run.
//!
//! Run: `cargo run --release -p benches --bin gpuva_ext [-- N]` (N: live mappings of the
//! texture, default 100000).

use std::hint::black_box;
use std::time::{Duration, Instant};

use benches::peers::{RangemapTracker, SplitTreeTracker, Tracker};
use benches::split_tree::SplitTree;
use benches::workload::{plan, Workload, CHURN_LEN, PAGE};
use gpuva::{BoxNode, GpuVm, Mapping, ObjId, Record, Request};

type Vm = GpuVm<(), BoxNode<()>>;

/// One request through the driver flow; returns the ops it produced.
fn flow(vm: &mut Vm, req: Request, keep: usize) -> usize {
    let obj = match req {
        Request::Map(m) if vm.has_links() => m.obj,
        _ => None,
    };
    let need = vm.nodes_for(&req) + obj.map_or(0, |_| vm.link_nodes());
    let mut claim = vm.reserve_boxed(need).expect("memory");
    let pin = obj.map(|o| vm.link_obtain(o, &mut claim, || ()).expect("link"));
    let mut ops = 0usize;
    let r = vm.step(
        req,
        &mut claim,
        &mut Record::new(|op| {
            black_box(op);
            ops += 1;
        }),
    );
    black_box(r.is_ok());
    vm.release(claim).expect("own claim");
    if let Some(p) = pin {
        vm.link_put(p).expect("own pin");
    }
    drop(vm.trim(keep));
    ops
}

fn keep_of(vm: &Vm) -> usize {
    let b = vm.bounds();
    b.map_obj.max(b.split()) + b.link + 64
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn unmap_object(n: u64) {
    let x = ObjId::new(1).expect("non-zero");
    let y = ObjId::new(2);
    let build = || {
        let mut vm = Vm::with_granule(0..1 << 48, 0..0, PAGE).expect("geometry");
        let keep = keep_of(&vm);
        for i in 0..n {
            let a = (1 << 32) + i * 4 * PAGE;
            flow(
                &mut vm,
                Request::Map(Mapping::new(a, PAGE, Some(x), i * PAGE)),
                keep,
            );
            flow(
                &mut vm,
                Request::Map(Mapping::new(a + 2 * PAGE, PAGE, y, 0)),
                keep,
            );
        }
        vm
    };
    let reps = 5;
    let (mut one, mut each, mut peer) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        let mut vm = build();
        let keep = keep_of(&vm);
        let t = Instant::now();
        let ops = flow(&mut vm, Request::UnmapObject { obj: x }, keep);
        one.push(t.elapsed());
        assert_eq!((ops as u64, vm.len() as u64), (n, n));

        let mut vm = build();
        let t = Instant::now();
        let addrs: Vec<(u64, u64)> = vm
            .link_mappings(x)
            .map(|v| (v.addr(), v.length()))
            .collect();
        for (addr, len) in addrs {
            flow(&mut vm, Request::Unmap { addr, len }, keep);
        }
        each.push(t.elapsed());
        assert_eq!(vm.len() as u64, n);

        let mut tree = SplitTree::new();
        for i in 0..n {
            let a = (1 << 32) + i * 4 * PAGE;
            tree.sm_map(Mapping::new(a, PAGE, Some(x), i * PAGE), drop);
            tree.sm_map(Mapping::new(a + 2 * PAGE, PAGE, y, 0), drop);
        }
        let t = Instant::now();
        let mine: Vec<Mapping> = tree.iter().filter(|m| m.obj == Some(x)).collect();
        for m in mine {
            tree.sm_unmap(m.addr, m.len, |op| {
                black_box(op);
            });
        }
        peer.push(t.elapsed());
        assert_eq!(tree.len() as u64, n);
    }
    let per = |d: Duration| d.as_nanos() as f64 / n as f64;
    let (a, b, c) = (median(one), median(each), median(peer));
    println!("unmap of an object with {n} mappings (and {n} of another object), median of {reps}:");
    println!(
        "  gpuva UnmapObject (one request)        {:>9.2} ms  {:>6.1} ns/mapping",
        a.as_secs_f64() * 1e3,
        per(a)
    );
    println!(
        "  gpuva, one unmap request per mapping   {:>9.2} ms  {:>6.1} ns/mapping",
        b.as_secs_f64() * 1e3,
        per(b)
    );
    println!(
        "  split tree (BTreeMap), one per mapping {:>9.2} ms  {:>6.1} ns/mapping",
        c.as_secs_f64() * 1e3,
        per(c)
    );
}

fn tiles(n: usize) {
    let p = plan(Workload::Tiles, n, CHURN_LEN, 1);
    println!(
        "sparse texture (workload tiles, ~{n} live mappings without merging), {} set-up + {} churn requests:",
        p.setup.len(),
        p.churn.len()
    );
    for merge in [false, true] {
        let mut vm = Vm::with_granule(0..1 << 48, 0..0, PAGE)
            .expect("geometry")
            .with_merge(merge);
        let keep = keep_of(&vm);
        for r in &p.setup {
            flow(&mut vm, *r, keep);
        }
        let after_setup = vm.len();
        let t = Instant::now();
        let mut ops = 0;
        for r in &p.churn {
            ops += flow(&mut vm, *r, keep);
        }
        let d = t.elapsed();
        println!(
            "  gpuva merge {:<3}  live after set-up {:>7}  at end {:>7}  {:>6.0} ns/request  {:.2} ops/request",
            if merge { "on" } else { "off" },
            after_setup,
            vm.len(),
            d.as_nanos() as f64 / p.churn.len() as f64,
            ops as f64 / p.churn.len() as f64
        );
    }
    let mut split = SplitTreeTracker::default();
    let mut range = RangemapTracker::default();
    for (name, t) in [
        ("split tree (BTreeMap)", &mut split as &mut dyn Tracker),
        ("rangemap (coalescing)", &mut range as &mut dyn Tracker),
    ] {
        for r in &p.setup {
            t.apply(r);
        }
        let after_setup = t.live();
        let s = Instant::now();
        for r in &p.churn {
            t.apply(r);
        }
        let d = s.elapsed();
        println!(
            "  {name:<21}  live after set-up {:>7}  at end {:>7}  {:>6.0} ns/request",
            after_setup,
            t.live(),
            d.as_nanos() as f64 / p.churn.len() as f64
        );
    }
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    unmap_object(n);
    tiles(usize::try_from(n).unwrap_or(100_000));
}
