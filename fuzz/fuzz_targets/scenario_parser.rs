//! Arbitrary bytes into `sim`'s scenario-file parser: an error naming a real line or a script
//! that prints back to itself and runs on the simulator under small bounds; never a panic.
//! Body: `tests/src/scenario_fuzz.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gpuvm_fuzz::scenario_fuzz::run(data);
});
