//! Repeat mappings: a VA range backed by one window of an object, repeated ([`Repeat`]).
//!
//! A repeat mapping translates `[addr, addr + len)` to the object window `[base, base + period)`
//! over and over: the page `k` bytes into the mapping reads the object at
//! `base + (phase + k) mod period`. Sparse residency without GPU faults is the use: one dummy page
//! repeated under every non-resident tile of a huge sparse image, or one 64 KiB tile repeated over
//! it.
//!
//! The mapping's [`offset`](crate::Mapping::offset) keeps its meaning, "the object offset of the
//! first address": it is `base + phase`. The period is a power of two and the window is aligned to
//! it, so `base = offset & !(period - 1)` and `phase = offset & (period - 1)`, and a mapping only
//! has to store the period (as its log2, in six tag bits of its leaf entry: the entry stays
//! 36 bytes; `docs/gpuva-storage.md`). A piece split off `k` bytes into the mapping continues at
//! phase `(phase + k) mod period` ([`Mapping::offset_after`](crate::Mapping::offset_after)).
//!
//! ```text
//!   object:  |..|W0|W1|..|            window [base, base + 2 pages), phase 1
//!   VA:      |W1|W0|W1|W0|W1|         offset = base + 1 page
//!   split at page 3: the piece [3, 5) starts at phase (1 + 3) mod 2 = 0: |W0|W1|
//! ```

use core::fmt;
use core::num::NonZeroU8;

/// The period of a repeat mapping: a power of two from 1 to 2^62 address units (see the module
/// docs of the crate's `repeat.rs`, [`GpuVm::check_map`](crate::GpuVm::check_map) for what a
/// request must satisfy, and `docs/semantics.md`, "Repeat mappings").
///
/// Why a power of two: the use cases repeat one page-table granule (a dummy 4 KiB page, a
/// 64 KiB sparse tile, a 2 MiB block), and with the window aligned to its power-of-two period the
/// mapping's offset alone gives both the window and the phase, so a repeat mapping costs no more
/// memory than a plain one.
///
/// # Examples
///
/// ```
/// use gpuva::Repeat;
/// let r = Repeat::new(0x1_0000).ok_or("not a power of two")?;
/// assert_eq!(r.period(), 0x1_0000);
/// // A mapping at object offset 0x5_3000 repeats the window [0x5_0000, 0x6_0000) from phase 0x3000.
/// assert_eq!((r.window_start(0x5_3000), r.phase(0x5_3000)), (0x5_0000, 0x3000));
/// assert_eq!(Repeat::new(0x3000), None);
/// # Ok::<(), &'static str>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Repeat(NonZeroU8);

impl Repeat {
    /// The largest log2 of a period (the tag encoding holds `log2 + 1` in six bits).
    pub const MAX_LOG2: u32 = 62;

    /// A repeat of `period` units; `None` unless `period` is a power of two no larger than 2^62.
    #[must_use]
    pub const fn new(period: u64) -> Option<Self> {
        if !period.is_power_of_two() {
            return None;
        }
        Self::from_log2(period.trailing_zeros())
    }

    /// A repeat of `1 << log2` units; `None` for `log2 > 62`.
    #[must_use]
    pub const fn from_log2(log2: u32) -> Option<Self> {
        if log2 > Self::MAX_LOG2 {
            return None;
        }
        // log2 + 1 is in 1..=63: fits a u8, never zero.
        #[expect(
            clippy::cast_possible_truncation,
            reason = "log2 <= 62 was checked above"
        )]
        let code = log2 as u8 + 1;
        match NonZeroU8::new(code) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }

    /// The period in address units.
    #[must_use]
    pub const fn period(self) -> u64 {
        1 << self.log2()
    }

    /// log2 of the period.
    #[must_use]
    pub const fn log2(self) -> u32 {
        self.0.get() as u32 - 1
    }

    /// `period - 1`.
    #[must_use]
    pub const fn mask(self) -> u64 {
        self.period() - 1
    }

    /// The window's first object offset, for a mapping (or piece) at object offset `offset`.
    #[must_use]
    pub const fn window_start(self, offset: u64) -> u64 {
        offset & !self.mask()
    }

    /// The phase (how far into the window the first address reads), for a mapping at `offset`.
    #[must_use]
    pub const fn phase(self, offset: u64) -> u64 {
        offset & self.mask()
    }

    /// The object offset `k` units after one at `offset`, inside the same window: the window start
    /// plus `(phase + k) mod period`. `k` may be a wrapped negative distance
    /// (`k.wrapping_neg()`), since the period divides 2^64.
    #[must_use]
    pub const fn advance(self, offset: u64, k: u64) -> u64 {
        self.window_start(offset) | (offset.wrapping_add(k) & self.mask())
    }

    /// The 6-bit code stored in a leaf entry's tag (`log2 + 1`; 0 means "not a repeat").
    pub(crate) const fn code(self) -> u32 {
        self.0.get() as u32
    }

    /// The inverse of [`Repeat::code`].
    pub(crate) const fn from_code(code: u32) -> Option<Self> {
        match code.checked_sub(1) {
            Some(l) => Self::from_log2(l),
            None => None,
        }
    }
}

impl fmt::Debug for Repeat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Repeat({:#x})", self.period())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_refuse_the_rest() {
        for l in 0..=Repeat::MAX_LOG2 {
            let r = Repeat::from_log2(l).expect("in range");
            assert_eq!(Repeat::from_code(r.code()), Some(r));
            assert_eq!(Repeat::new(1 << l), Some(r));
            assert!(r.code() < 64, "six tag bits");
        }
        assert_eq!(Repeat::from_log2(63), None);
        assert_eq!(Repeat::new(0), None);
        assert_eq!(Repeat::new(1 << 63), None);
        assert_eq!(Repeat::new(6), None);
        assert_eq!(Repeat::from_code(0), None);
    }

    #[test]
    fn advance_wraps_inside_the_window() {
        let r = Repeat::new(0x4000).expect("power of two");
        assert_eq!(r.advance(0x1_3000, 0x1000), 0x1_0000);
        assert_eq!(r.advance(0x1_3000, 0x5000), 0x1_0000);
        assert_eq!(r.advance(0x1_1000, 0x2000u64.wrapping_neg()), 0x1_3000);
        assert_eq!(r.advance(!0xfff_u64, 0x1000), u64::MAX - 0x3fff);
    }
}
