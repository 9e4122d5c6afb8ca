//! Random map/unmap/protect sequences with arbitrary backings on four table formats, checked
//! against a page-granular model after every request (reservation sufficiency, lock ranges,
//! frame accounting). Body: `tests/src/pagetable_fuzz.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gpuvm_fuzz::pagetable_fuzz::run(data);
});
