//! Shared workload generators and peer implementations for the benchmarks.
