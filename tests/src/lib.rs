//! Shared helpers for the integration tests: reference models and a counting allocator.
//!
//! gpuva: [`model`] is the page-granular oracle, [`harness`] drives a `GpuVm` and the model in
//! lockstep and checks every invariant after every request, [`fuzz_body`] decodes fuzzer bytes into
//! harness requests (shared with the `fuzz/` crate, which includes these files by path), [`sink`]
//! holds allocation-free op sinks, [`addr_model`] is the address-granular reference of the op
//! generators beyond map and unmap (repeats included).
//!
//! pagetable: [`pagetable_fuzz`] is the body of the `pagetable_ops` fuzz target (map/unmap/protect
//! sequences against a page-granular model), also included by the `fuzz/` crate.
//!
//! vmbind: [`vmbind_fuzz`] is the body of the `vmbind_jobs` fuzz target (multi-op jobs, syncs,
//! timeouts, synchronous binds, against sequential execution), which compares page tables as
//! [`leaf_runs`] (one decode per physically contiguous run). sim: [`trace_fuzz`] is the body of
//! `trace_parser`. [`failalloc`] is an allocation-failure injector (a `#[global_allocator]` a
//! test binary or fuzz target opts into).

pub mod addr_model;
pub mod corpus;
pub mod failalloc;
pub mod fuzz_body;
pub mod harness;
pub mod leaf_runs;
pub mod model;
pub mod pagetable_fuzz;
pub mod scenario_fuzz;
pub mod sink;
pub mod trace_fuzz;
pub mod vmbind_fuzz;
