//! Bytes per live mapping of gpuva, the `BTreeMap` split tree and rangemap at 1M mappings.
//!
//! A counting global allocator records, for every live allocation, the bytes requested and
//! `malloc_usable_size` of the block glibc handed out (a glibc chunk is that plus its 8-byte size
//! header). Each tracker is built from the workload's set-up requests and then driven through one
//! pass of its churn stream; the heap it holds is divided by its live mappings.
//!
//! Run: `cargo run --release -p benches --bin gpuva_mem` (optionally with a mapping count).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use benches::peers::{GpuvaTracker, Node, RangemapTracker, SplitTreeTracker, Tracker};
use benches::workload::{plan, Workload, CHURN_LEN};
use gpuva::GpuVa;

/// Bytes requested by live allocations.
static REQUESTED: AtomicUsize = AtomicUsize::new(0);
/// `malloc_usable_size` of live allocations.
static USABLE: AtomicUsize = AtomicUsize::new(0);
/// Live allocations.
static BLOCKS: AtomicUsize = AtomicUsize::new(0);

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

/// Builds a tracker with `make`, runs set-up and one churn pass, prints its bytes per mapping.
fn measure<T: Tracker>(name: &str, w: Workload, n: usize, make: impl FnOnce() -> T) {
    let p = plan(w, n, CHURN_LEN, 0x5eed_0001);
    let (r0, u0, b0) = held();
    let mut t = make();
    for req in &p.setup {
        t.apply(req);
    }
    let report = |phase: &str, t: &T| {
        let (r1, u1, b1) = held();
        let live = t.live();
        let per = |bytes: usize| bytes as f64 / live as f64;
        // A glibc chunk in use is its usable size plus the 8-byte size field.
        let chunk = (u1 - u0) + 8 * (b1 - b0);
        println!(
            "| {} | {name} | {phase} | {live} | {:.1} | {:.1} | {:.1} | {} |",
            w.name(),
            per(r1 - r0),
            per(u1 - u0),
            per(chunk),
            b1 - b0,
        );
    };
    report("set-up", &t);
    for req in &p.churn {
        t.apply(req);
    }
    report("+ churn", &t);
}

fn main() {
    let n = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    println!(
        "size_of::<GpuVa<(), BoxNode<()>>>() = {} bytes (one heap block per mapping)",
        size_of::<GpuVa<(), Node>>()
    );
    println!();
    println!(
        "| workload | tracker | state | live mappings | requested B/mapping | usable B/mapping \
         | glibc chunk B/mapping | heap blocks |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|");
    for w in Workload::ALL {
        measure("gpuva", w, n, GpuvaTracker::new);
        measure("gpuva_dir", w, n, || GpuvaTracker::with_capacity(n));
        measure("btree_split", w, n, SplitTreeTracker::default);
        measure("rangemap", w, n, RangemapTracker::default);
    }
}
