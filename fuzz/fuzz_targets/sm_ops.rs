//! Random map/unmap sequences on small VA spaces (with and without a cut-out), every invariant
//! checked against the page-granular model after every request. Body: `tests/src/fuzz_body.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gpuvm_fuzz::run(data);
});
