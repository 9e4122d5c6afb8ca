//! The user-space simulator behind the `vmsim` program.
//!
//! A CSF-style GPU model ([`world`]: physical memory and objects in [`phys`], the MMU with its own
//! decoder, TLB and walk cache in [`mmu`]) runs the built-in [`scenario`] and reports it
//! ([`report`]) and, with `--svg`, draws it ([`svg`], from the bounded event record in
//! [`timeline`]); `vmsim ops` replays VA traces ([`ops`]; the format is `docs/trace-format.md` in
//! the repository).

pub mod alloc_count;
pub mod mmu;
pub mod ops;
pub mod phys;
pub mod report;
pub mod scenario;
pub mod script;
pub mod svg;
pub mod timeline;
pub mod trace;
pub mod usq;
pub mod world;
