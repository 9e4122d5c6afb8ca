//! Shared workload generators and peer implementations for the benchmarks.
//!
//! * [`rng`]: a tiny deterministic xorshift generator (no `rand` dependency).
//! * [`workload`]: the request streams of the gpuva benchmarks (random overlapping churn, dense
//!   small mappings, Vulkan sparse-texture tiles), as set-up requests plus a churn stream.
//! * [`split_tree`]: the `BTreeMap`-keyed peer that emits exactly gpuva's (drm_gpuvm's) ops.
//! * [`trace_peer`]: the split tree as a trace replayer, timed like `vmsim ops --bench`.
//! * [`peers`]: the three trackers behind one small trait, so the benchmark loop and the memory
//!   probe drive them identically.

pub mod peers;
pub mod rng;
pub mod split_tree;
pub mod trace_peer;
pub mod workload;
