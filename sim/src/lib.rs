//! The user-space simulator behind the `vmsim` program.
//!
//! A CSF-style GPU model ([`world`]: physical memory and objects in [`phys`], the MMU with its own
//! decoder, TLB and walk cache in [`mmu`]) runs the built-in [`scenario`] and reports it
//! ([`report`]) and, with `--svg`, draws it ([`svg`], from the bounded event record in
//! [`timeline`]); `vmsim ops` replays VA traces ([`ops`]; the format is `docs/trace-format.md` in
//! the repository); `vmsim replay` runs scenario files and `vmsim scenario --dump` writes the
//! built-in scenario as one ([`script`]; the format is `docs/scenario-format.md`).

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
