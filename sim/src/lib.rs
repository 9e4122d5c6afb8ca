//! The user-space simulator behind the `vmsim` program.
//!
//! For now it replays VA traces (`vmsim ops`, [`ops`]; the format is `docs/trace-format.md` in the
//! repository); the CSF-style GPU model is not written yet.

pub mod alloc_count;
pub mod mmu;
pub mod ops;
pub mod phys;
pub mod report;
pub mod scenario;
pub mod trace;
pub mod world;
