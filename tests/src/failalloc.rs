//! An allocation-failure injector: a [`GlobalAlloc`] wrapper around [`System`] that fails the
//! k-th allocation from now, every allocation from the k-th on, or each allocation with a given
//! probability, and counts what it sees (per thread).
//!
//! A test binary or fuzz target opts in with
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: tests::failalloc::FailAlloc = tests::failalloc::FailAlloc;
//! ```
//!
//! and then drives it from the same thread: [`arm`] a [`Plan`], run the fallible call, [`disarm`]
//! (which returns what happened), or wrap the call in [`with_plan`]; [`no_alloc`] is the run-stage
//! check built on it (neither allocations nor frees). Plans do not nest: arming resets the
//! counters. Without the `#[global_allocator]` line everything still
//! compiles and runs, but nothing fails and nothing is counted; [`installed`] tells which.
//!
//! The allocator never panics and never allocates: it only touches const-initialised
//! thread-locals without destructors (through `try_with`, so not even during thread teardown).
//! Only the thread that armed it sees failures: the test harness's other threads and libFuzzer's
//! own (C++) allocations are unaffected.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The injecting allocator (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct FailAlloc;

/// When allocations fail while armed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Nothing fails (counting only).
    Never,
    /// The k-th allocation from now (1-based) fails; the others succeed.
    Nth(u64),
    /// The k-th allocation from now and every later one fail (memory ran out and stays out).
    From(u64),
    /// Each allocation fails with probability `per_mille / 1000`, from a deterministic stream
    /// seeded with `seed`.
    Probability {
        /// Failure probability in thousandths.
        per_mille: u16,
        /// Seed of the generator.
        seed: u64,
    },
}

/// What the allocator saw on this thread while armed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Allocation calls (`alloc`, `alloc_zeroed`, `realloc`).
    pub allocs: u64,
    /// Of those, how many were failed on purpose.
    pub failed: u64,
    /// Frees (`dealloc`, and the old block of a successful `realloc`).
    pub frees: u64,
    /// Bytes allocated minus bytes freed (realloc counts as a free and an allocation).
    pub net_bytes: i64,
    /// Blocks allocated minus blocks freed.
    pub net_blocks: i64,
}

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    /// 0 never, 1 nth, 2 from, 3 probability.
    static MODE: Cell<u8> = const { Cell::new(0) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
    static PARAM: Cell<u64> = const { Cell::new(0) };
    static SEED: Cell<u64> = const { Cell::new(0) };
    static FAILED: Cell<u64> = const { Cell::new(0) };
    static FREES: Cell<u64> = const { Cell::new(0) };
    static NET_BYTES: Cell<i64> = const { Cell::new(0) };
    static NET_BLOCKS: Cell<i64> = const { Cell::new(0) };
    /// Allocations seen ever (armed or not): how [`installed`] detects the allocator.
    static EVER: Cell<u64> = const { Cell::new(0) };
}

fn get<T: Copy + Default>(k: &'static std::thread::LocalKey<Cell<T>>) -> T {
    k.try_with(Cell::get).unwrap_or_default()
}

fn set<T: Copy>(k: &'static std::thread::LocalKey<Cell<T>>, v: T) {
    let _ = k.try_with(|c| c.set(v));
}

fn bytes(size: usize) -> i64 {
    i64::try_from(size).unwrap_or(i64::MAX)
}

/// Decides whether this allocation fails, and counts it.
fn on_alloc(size: usize) -> bool {
    set(&EVER, get(&EVER).wrapping_add(1));
    if !get(&ARMED) {
        return false;
    }
    let n = get(&COUNT) + 1;
    set(&COUNT, n);
    let param = get(&PARAM);
    let fail = match get(&MODE) {
        1 => n == param,
        2 => n >= param,
        3 => {
            // SplitMix64 step.
            let s = get(&SEED).wrapping_add(0x9e37_79b9_7f4a_7c15);
            set(&SEED, s);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) % 1000 < param
        }
        _ => false,
    };
    if fail {
        set(&FAILED, get(&FAILED) + 1);
    } else {
        set(&NET_BYTES, get(&NET_BYTES).wrapping_add(bytes(size)));
        set(&NET_BLOCKS, get(&NET_BLOCKS).wrapping_add(1));
    }
    fail
}

fn on_free(size: usize) {
    if get(&ARMED) {
        set(&FREES, get(&FREES) + 1);
        set(&NET_BYTES, get(&NET_BYTES).wrapping_sub(bytes(size)));
        set(&NET_BLOCKS, get(&NET_BLOCKS).wrapping_sub(1));
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, or returns
// null, which `GlobalAlloc` allows as the failure answer; the bookkeeping only touches
// const-initialised thread-locals without destructors and can neither allocate nor panic.
unsafe impl GlobalAlloc for FailAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if on_alloc(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if on_alloc(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        on_free(layout.size());
        // SAFETY: `ptr` came from this allocator, i.e. from `System`, with this `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if on_alloc(new_size) {
            // The old block stays allocated (and counted), as `realloc`'s failure contract says.
            return std::ptr::null_mut();
        }
        on_free(layout.size());
        // SAFETY: `ptr`/`layout` came from `System` (see `dealloc`); `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Whether [`FailAlloc`] is this binary's global allocator (it saw a probe allocation).
#[must_use]
pub fn installed() -> bool {
    let before = get(&EVER);
    let probe = std::hint::black_box(Box::new(0u64));
    drop(probe);
    get(&EVER) != before
}

/// Starts counting (and failing, per `plan`) this thread's allocations, from zero.
pub fn arm(plan: Plan) {
    let (mode, param, seed) = match plan {
        Plan::Never => (0, 0, 0),
        Plan::Nth(k) => (1, k, 0),
        Plan::From(k) => (2, k, 0),
        Plan::Probability { per_mille, seed } => (3, u64::from(per_mille), seed),
    };
    set(&MODE, mode);
    set(&PARAM, param);
    set(&SEED, seed);
    set(&COUNT, 0);
    set(&FAILED, 0);
    set(&FREES, 0);
    set(&NET_BYTES, 0);
    set(&NET_BLOCKS, 0);
    set(&ARMED, true);
}

/// What happened since [`arm`], so far (still armed).
#[must_use]
pub fn report() -> Report {
    Report {
        allocs: get(&COUNT),
        failed: get(&FAILED),
        frees: get(&FREES),
        net_bytes: get(&NET_BYTES),
        net_blocks: get(&NET_BLOCKS),
    }
}

/// Stops failing and counting; returns what happened since [`arm`].
pub fn disarm() -> Report {
    let r = report();
    set(&ARMED, false);
    r
}

/// Runs `f` under `plan` and returns its result with the [`Report`] (disarmed afterwards, also
/// if `f` panics).
pub fn with_plan<T>(plan: Plan, f: impl FnOnce() -> T) -> (T, Report) {
    struct Disarm;
    impl Drop for Disarm {
        fn drop(&mut self) {
            let _ = disarm();
        }
    }
    let guard = Disarm;
    arm(plan);
    let out = f();
    let r = disarm();
    drop(guard);
    (out, r)
}

/// Runs `f` and panics (after `f` returns, never inside the allocator) if it allocated or freed
/// anything on this thread: the run-stage check. Needs [`FailAlloc`] installed, which it asserts,
/// so a test binary that forgot the `#[global_allocator]` line cannot pass vacuously. `f` should
/// borrow what it uses: values it owns are dropped inside the region and count as frees.
///
/// # Panics
///
/// If `f` allocated or freed, or [`FailAlloc`] is not installed.
#[track_caller]
pub fn no_alloc<T>(what: &str, f: impl FnOnce() -> T) -> T {
    assert!(
        installed(),
        "{what}: FailAlloc is not this binary's global allocator"
    );
    let (out, r) = with_plan(Plan::Never, f);
    assert!(
        r.allocs == 0 && r.frees == 0,
        "{what}: {} allocations and {} frees inside the guarded region",
        r.allocs,
        r.frees
    );
    out
}
