//! Arbitrary multi-op VM_BIND jobs (async batches with in/out syncobjs, low-level queue submits
//! waiting on user fences, synchronous binds under both orderings), random fence signalling,
//! errors, timeouts and injected allocation failures, checked against sequential execution on a
//! page model. Body: `tests/src/vmbind_fuzz.rs`.
#![no_main]

/// The allocation-failure injector: fails allocations only while the body arms it, on this
/// thread (libFuzzer's own allocations are C++ and unaffected).
#[global_allocator]
static ALLOC: gpuvm_fuzz::failalloc::FailAlloc = gpuvm_fuzz::failalloc::FailAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gpuvm_fuzz::vmbind_fuzz::run(data);
});
