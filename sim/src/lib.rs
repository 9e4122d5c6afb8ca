//! The user-space simulator behind the `vmsim` program.
//!
//! For now it replays VA traces (`vmsim ops`, [`ops`]; the format is `docs/trace-format.md` in the
//! repository); the CSF-style GPU model is not written yet.

pub mod ops;
pub mod trace;
