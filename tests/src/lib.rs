//! Shared helpers for the integration tests: reference models and a counting allocator.
