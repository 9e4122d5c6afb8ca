//! Bytes per live mapping of gpuva (with and without object links), the `BTreeMap` split tree
//! and rangemap at 1M mappings, and gpuva's steady-state allocations per request.
//!
//! A counting global allocator records, for every live allocation, the bytes requested and
//! `malloc_usable_size` of the block glibc handed out (a glibc chunk is that plus its 8-byte size
//! header), and counts allocation calls. Each tracker is built from the workload's set-up
//! requests and then driven through one pass of its churn stream (the warm-up); the heap it holds
//! (tree nodes, node slack, gpuva's spare cache) is divided by its live mappings. A second churn
//! pass counts allocation calls per request. gpuva runs the driver flow of `vmsim ops --bench`.
//!
//! `dense/64obj` is `dense` with its objects folded onto 64 (about 16k mappings per object);
//! the other workloads have about one object per mapping.
//!
//! Run: `cargo run --release -p benches --bin gpuva_mem [-- N] [--trace FILE]...` (`--trace`:
//! also count allocations per request of `vmsim ops --bench`'s flow on a trace file, over its
//! second half after the first half as warm-up).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use benches::peers::{GpuvaTracker, RangemapTracker, SplitTreeTracker, Tracker};
use benches::workload::{plan, with_objects, Plan, Workload, CHURN_LEN};
use gpuva::BoxNode;
use sim::ops::{Driver, Links};

/// Bytes requested by live allocations.
static REQUESTED: AtomicUsize = AtomicUsize::new(0);
/// `malloc_usable_size` of live allocations.
static USABLE: AtomicUsize = AtomicUsize::new(0);
/// Live allocations.
static BLOCKS: AtomicUsize = AtomicUsize::new(0);
/// Allocation calls so far (`alloc` and `realloc`).
static CALLS: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counted.
struct Counting;

fn usable(p: *mut u8) -> usize {
    // SAFETY: `p` is a live block from the system allocator (glibc malloc on Linux), which is what
    // `malloc_usable_size` accepts; it only reads the block's header.
    unsafe { libc::malloc_usable_size(p.cast()) }
}

// SAFETY: every method forwards to `System` unchanged and only updates counters on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            REQUESTED.fetch_add(layout.size(), Relaxed);
            USABLE.fetch_add(usable(p), Relaxed);
            BLOCKS.fetch_add(1, Relaxed);
            CALLS.fetch_add(1, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        REQUESTED.fetch_sub(layout.size(), Relaxed);
        USABLE.fetch_sub(usable(ptr), Relaxed);
        BLOCKS.fetch_sub(1, Relaxed);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = usable(ptr);
        // SAFETY: forwarded with the caller's guarantees.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            REQUESTED.fetch_sub(layout.size(), Relaxed);
            REQUESTED.fetch_add(new_size, Relaxed);
            USABLE.fetch_sub(old, Relaxed);
            USABLE.fetch_add(usable(p), Relaxed);
            CALLS.fetch_add(1, Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Heap held: (requested bytes, usable bytes, blocks).
fn held() -> (usize, usize, usize) {
    (
        REQUESTED.load(Relaxed),
        USABLE.load(Relaxed),
        BLOCKS.load(Relaxed),
    )
}

/// Builds a tracker with `make`, runs set-up and one churn pass, prints its bytes per mapping;
/// then counts allocation calls per request over a second churn pass.
fn measure<T: Tracker>(name: &str, wname: &str, p: &Plan, make: impl FnOnce() -> T) {
    let (r0, u0, b0) = held();
    let mut t = make();
    for req in &p.setup {
        t.apply(req);
    }
    let report = |phase: &str, t: &T, allocs: &str| {
        let (r1, u1, b1) = held();
        let live = t.live();
        let per = |bytes: usize| bytes as f64 / live as f64;
        // A glibc chunk in use is its usable size plus the 8-byte size field.
        let chunk = (u1 - u0) + 8 * (b1 - b0);
        println!(
            "| {wname} | {name} | {phase} | {live} | {:.1} | {:.1} | {:.1} | {} | {allocs} |",
            per(r1 - r0),
            per(u1 - u0),
            per(chunk),
            b1 - b0,
        );
    };
    report("set-up", &t, "");
    for req in &p.churn {
        t.apply(req);
    }
    let c0 = CALLS.load(Relaxed);
    for req in &p.churn {
        t.apply(req);
    }
    let calls = CALLS.load(Relaxed) - c0;
    report(
        "+ churn",
        &t,
        &format!("{:.4}", calls as f64 / p.churn.len() as f64),
    );
}

/// Allocation calls per request of the `vmsim ops --bench` flow over the second half of a trace.
fn trace_allocs(path: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let trace = sim::trace::parse(&text).map_err(|e| format!("{path}: {e}"))?;
    let mut d = Driver::new(&trace, Links::On).map_err(|e| e.to_string())?;
    let half = trace.requests.len() / 2;
    let mut run = |reqs: &[sim::trace::Request]| -> Result<usize, String> {
        let c0 = CALLS.load(Relaxed);
        for &r in reqs {
            d.request(r, |_| {}).map_err(|e| e.to_string())?.ok();
        }
        Ok(CALLS.load(Relaxed) - c0)
    };
    let warm = run(&trace.requests[..half])?;
    let steady = run(&trace.requests[half..])?;
    println!(
        "| {path} | {} | {:.4} | {:.4} | {} |",
        trace.requests.len(),
        warm as f64 / half.max(1) as f64,
        steady as f64 / (trace.requests.len() - half).max(1) as f64,
        d.vm.len()
    );
    Ok(())
}

fn main() {
    let mut n = 1_000_000;
    let mut traces = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--trace" {
            traces.extend(args.next());
        } else if let Ok(k) = a.parse() {
            n = k;
        }
    }
    let node = size_of::<gpuva::Node<(), (), BoxNode<()>>>();
    let b = GpuvaTracker::new().vm().bounds();
    let bn = GpuvaTracker::without_links().vm().bounds();
    println!("size_of::<gpuva::Node<(), (), BoxNode<()>>>() = {node} bytes");
    println!(
        "2^48 space, 4 KiB granule: heights (va, obj, link) = ({}, {}, {}); nodes reserved: \
         map with object {} ({} B), map without {} ({} B), unmap {} ({} B), link {} ({} B); \
         without links: map {} ({} B), unmap {} ({} B)",
        b.va_height,
        b.obj_height,
        b.link_height,
        b.map_obj,
        b.map_obj * node,
        b.map_null,
        b.map_null * node,
        b.unmap,
        b.unmap * node,
        b.link,
        b.link * node,
        bn.map_obj,
        bn.map_obj * node,
        bn.unmap,
        bn.unmap * node,
    );
    println!();
    if !traces.is_empty() {
        println!("| trace | requests | allocations/request, first half | allocations/request, second half | final mappings |");
        println!("|---|---:|---:|---:|---:|");
        for t in &traces {
            if let Err(e) = trace_allocs(t) {
                eprintln!("gpuva_mem: {e}");
                std::process::exit(1);
            }
        }
        println!();
    }
    println!(
        "| workload | tracker | state | live mappings | requested B/mapping | usable B/mapping \
         | glibc chunk B/mapping | heap blocks | allocations/request (2nd churn pass) |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|");
    let mut plans: Vec<(String, Plan)> = Workload::ALL
        .iter()
        .map(|&w| (w.name().to_owned(), plan(w, n, CHURN_LEN, 0x5eed_0001)))
        .collect();
    plans.push((
        "dense/64obj".to_owned(),
        with_objects(plan(Workload::Dense, n, CHURN_LEN, 0x5eed_0001), 64),
    ));
    for (wname, p) in &plans {
        measure("gpuva", wname, p, GpuvaTracker::new);
        measure("gpuva_nolinks", wname, p, GpuvaTracker::without_links);
        measure("btree_split", wname, p, SplitTreeTracker::default);
        measure("rangemap", wname, p, RangemapTracker::default);
    }
}
