//! The user-space simulator behind the `vmsim` program.
