//! VM_BIND jobs for a Mali CSF-class driver: prepare, run, cleanup.
//!
//! This crate ties [`gpuva`] (the VA tracker) and [`pagetable`] (the GPU page tables) together into bind
//! jobs that run inside the dma-fence signalling path without allocating. It is a placeholder for now;
//! the dependency direction (`vmbind` -> `gpuva`, `pagetable`) is fixed here so the two lower crates
//! never grow a dependency on each other.
#![no_std]
#![forbid(unsafe_code)]

pub use gpuva;
pub use pagetable;
