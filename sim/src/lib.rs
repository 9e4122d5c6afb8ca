//! The user-space simulator behind the `vmsim` program.
//!
//! For now it replays VA traces (`vmsim ops`, [`ops`]); the CSF-style GPU model comes with the
//! simulator issue.

pub mod ops;
pub mod trace;
