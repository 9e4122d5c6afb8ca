//! VMSAv8-64 stage-1 GPU page tables (placeholder; see issue 3).
#![no_std]
#![forbid(unsafe_code)]
