//! Reservation slack on a churn workload: our bounds against panthor's formula, on the same
//! requests (the figures in BENCHMARKS.md come from the same workload in the bench).
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_macros,
    clippy::cast_possible_truncation,
    reason = "test code: infallible allocation and 64-bit-host casts are fine"
)]

#[path = "pagetable_common/churn.rs"]
mod churn;

#[test]
fn slack_at_most_half_of_panthor() {
    let s = churn::churn(0x5EED, 3000, 1 << 36);
    println!(
        "churn: {} ops, used {} frames, ours reserved {} ({:.2}x), panthor {} ({:.2}x)",
        s.ops,
        s.used,
        s.ours,
        s.ours_ratio(),
        s.panthor,
        s.panthor_ratio()
    );
    assert!(s.used <= s.ours, "a bound was exceeded");
    assert!(s.ours <= s.panthor, "ours never exceeds panthor's");
    assert!(
        2 * s.ours <= s.panthor,
        "goal: at most half of panthor's slack"
    );
}
