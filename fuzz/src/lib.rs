//! Fuzz bodies, compiled from the `tests` crate's sources so that `cargo test` replays the
//! committed corpus through exactly the code the fuzzer runs.
#![warn(missing_docs)]

#[path = "../../tests/src/model.rs"]
pub mod model;

#[path = "../../tests/src/sink.rs"]
pub mod sink;

#[path = "../../tests/src/harness.rs"]
pub mod harness;

#[path = "../../tests/src/fuzz_body.rs"]
pub mod fuzz_body;

#[path = "../../tests/src/pagetable_fuzz.rs"]
pub mod pagetable_fuzz;

#[path = "../../tests/src/failalloc.rs"]
pub mod failalloc;

#[path = "../../tests/src/leaf_runs.rs"]
pub mod leaf_runs;

#[path = "../../tests/src/vmbind_fuzz.rs"]
pub mod vmbind_fuzz;

#[path = "../../tests/src/trace_fuzz.rs"]
pub mod trace_fuzz;

#[path = "../../tests/src/scenario_fuzz.rs"]
pub mod scenario_fuzz;

pub use fuzz_body::run;
