//! Random map/unmap/link/trim sequences on small VA spaces (with and without a cut-out, links on
//! and off), applied through every entry point, checked against the page-granular model: ops
//! against the decision table and the resulting tree, the reservation bound, the links; the full
//! tree comparison every few requests and at the end. Body: `tests/src/fuzz_body.rs`. (This
//! target was called `sm_ops`.)
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gpuvm_fuzz::run(data);
});
