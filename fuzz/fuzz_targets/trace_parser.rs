//! Arbitrary bytes into `sim`'s trace-format v1 parser: an error naming a real line or a trace
//! that prints back to itself and replays the same with and without links; never a panic.
//! Body: `tests/src/trace_fuzz.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gpuvm_fuzz::trace_fuzz::run(data);
});
