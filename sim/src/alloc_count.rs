//! A counting global allocator: counts allocations made while the current thread is inside a
//! fence-signalling section (between vmbind's `Mmu::begin_signalling` and `end_signalling`).
//!
//! The `vmsim` binary and the simulator's tests install it with
//! `#[global_allocator] static A: sim::alloc_count::Counting = sim::alloc_count::Counting;`.
//! Without it nothing is counted; [`armed`] tells.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    static IN_SECTION: Cell<u64> = const { Cell::new(0) };
    static TOTAL: Cell<u64> = const { Cell::new(0) };
}

/// The counting allocator (forwards to the system allocator).
#[derive(Debug)]
pub struct Counting;

fn count() {
    let _ = TOTAL.try_with(|t| t.set(t.get().wrapping_add(1)));
    let inside = DEPTH.try_with(Cell::get).unwrap_or(0) > 0;
    if inside {
        let _ = IN_SECTION.try_with(|c| c.set(c.get().wrapping_add(1)));
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the counters
// are thread-local cells with const initialisers, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's layout, as the caller's contract requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: `ptr` came from this allocator (so from `System`) with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (so from `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Enters a signalling section on this thread.
pub fn enter() {
    DEPTH.with(|d| d.set(d.get() + 1));
}

/// Leaves it.
pub fn leave() {
    DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
}

/// Allocations made inside signalling sections on this thread so far.
#[must_use]
pub fn in_section() -> u64 {
    IN_SECTION.with(Cell::get)
}

/// Whether the counting allocator is installed (an allocation moves the counter).
#[must_use]
pub fn armed() -> bool {
    let before = TOTAL.with(Cell::get);
    let b = std::hint::black_box(Box::new(7u64));
    drop(b);
    TOTAL.with(Cell::get) != before
}
