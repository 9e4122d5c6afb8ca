//! Mali lock regions, and the range a request may change (to lock it before the run).
//!
//! panthor makes a page-table update atomic as the GPU sees it by locking the address-space
//! region it covers (`AS_COMMAND_LOCK`) before writing and unlocking it (which flushes) after:
//! GPU accesses inside the region stall instead of seeing a half-done update. The region must
//! be known *before* the run, so [`lock_range`] computes it from the request alone, including
//! the whole blocks an unmap or protect may split (a split briefly unmaps the whole block, see
//! [`UpdateHooks::break_before_make`](crate::UpdateHooks::break_before_make)).

use core::fmt;
use core::ops::Range;

use crate::bound::JobOp;
use crate::error::BoundError;
use crate::format::Format;
use crate::request::{validate_map, validate_range, write_span};

/// Error returned by [`LockRegion::covering`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockError {
    /// The range is empty.
    Empty,
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("empty lock range")
    }
}

impl core::error::Error for LockError {}

/// A Mali `AS_LOCKADDR` region: the naturally aligned power of two of at least 32 KiB that
/// contains a range.
///
/// The register holds `base | (log2(size) - 1)` in one 64-bit value: the low 6 bits are the
/// width `w = log2(size) - 1`, and the hardware locks the `2^(w+1)` bytes at `base`, ignoring
/// the address bits below `w + 1`. The width follows from the highest bit in which the first
/// and last byte of the range differ, so an unaligned range can lock far more than it covers
/// (see [`LockRegion::over_lock`]): `[0x7F_FFFF_F000, +8 KiB)` locks 1 TiB.
///
/// ```text
/// range         [start ............ end)
/// first ^ last  000..0001xxxxxxxxxxxxxxx      highest differing bit = w
/// locked        [start & !(2^(w+1) - 1), + 2^(w+1))
/// ```
///
/// **Base bits.** [`LockRegion::encode`] clears every base bit below the region size, as Arm's
/// kbase driver does. panthor's `lock_region()` clears only the bits below `w` and so keeps bit
/// `w` of the start in the register; the hardware ignores that bit, so both lock the same span
/// (the `lock_region_matches_panthor` test checks this against a transcription of panthor's
/// computation on random ranges).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LockRegion {
    base: u64,
    size_log2: u8,
    len: u64,
}

/// The smallest lock region, 32 KiB (`AS_LOCK_REGION_MIN_SIZE`).
pub const LOCK_REGION_MIN_LOG2: u8 = 15;

impl LockRegion {
    /// The region covering `range`.
    ///
    /// # Errors
    ///
    /// [`LockError::Empty`] if `range` is empty.
    ///
    /// # Examples
    ///
    /// ```
    /// use pagetable::LockRegion;
    ///
    /// // 2 MiB straddling a 1 GiB boundary locks 2 GiB.
    /// let r = LockRegion::covering(0x3FF0_0000..0x4010_0000)?;
    /// assert_eq!((r.base(), r.size()), (0, 1 << 31));
    /// assert_eq!(r.encode(), 30); // base 0, width log2(size) - 1
    /// # Ok::<(), pagetable::LockError>(())
    /// ```
    pub fn covering(range: Range<u64>) -> Result<Self, LockError> {
        if range.start >= range.end {
            return Err(LockError::Empty);
        }
        let last = range.end - 1;
        let diff = range.start ^ last;
        let bits = 64 - diff.leading_zeros();
        let size_log2 = u8::try_from(bits).unwrap_or(64).max(LOCK_REGION_MIN_LOG2);
        let base = if size_log2 >= 64 {
            0
        } else {
            range.start & !((1u64 << size_log2) - 1)
        };
        Ok(Self {
            base,
            size_log2,
            len: range.end - range.start,
        })
    }

    /// The first locked byte.
    #[must_use]
    pub const fn base(&self) -> u64 {
        self.base
    }

    /// log2 of the locked size.
    #[must_use]
    pub const fn size_log2(&self) -> u8 {
        self.size_log2
    }

    /// The locked size in bytes (saturating at `u64::MAX` for the whole 64-bit space).
    #[must_use]
    pub const fn size(&self) -> u64 {
        if self.size_log2 >= 64 {
            u64::MAX
        } else {
            1 << self.size_log2
        }
    }

    /// The `AS_LOCKADDR` value: `base | (log2(size) - 1)`, base bits below the size cleared.
    #[must_use]
    pub const fn encode(&self) -> u64 {
        self.base | (self.size_log2 as u64 - 1)
    }

    /// Locked bytes per requested byte (1.0 when the range is itself an aligned power of two of
    /// at least 32 KiB).
    #[must_use]
    pub fn over_lock(&self) -> f64 {
        // Precision loss is irrelevant for a ratio reported to humans.
        let size = if self.size_log2 >= 64 {
            18_446_744_073_709_551_616.0
        } else {
            self.size() as f64
        };
        size / self.len as f64
    }

    /// Whether the region contains all of `range`.
    #[must_use]
    pub fn covers(&self, range: Range<u64>) -> bool {
        let end = u128::from(self.base) + (1u128 << self.size_log2);
        range.start >= self.base && u128::from(range.end) <= end
    }
}

/// The VA range `op` may change, computed before the run from the request alone: every
/// translation the operation writes, clears or splits lies inside it, whatever the table state.
///
/// A map changes exactly its range. An unmap or protect may split the blocks straddling its
/// ends, which replaces (and, between break and make, unmaps) each whole block, so each end not
/// aligned to the format's largest leaf is widened to that leaf's boundary, as panthor widens
/// its lock region for huge-page splits. Lock [`LockRegion::covering`] this range before the
/// run and the update is atomic as the GPU sees it;
/// [`Flush::changed`](crate::Flush::changed) afterwards always lies inside it.
///
/// # Errors
///
/// The request is invalid, as the operation itself would find.
///
/// # Examples
///
/// ```
/// use pagetable::{lock_range, Format, JobOp, LockRegion, VirtAddr};
///
/// let fmt = Format::panthor(48)?;
/// // Unmapping one page inside a 2 MiB block may split the block: lock the whole block.
/// let r = lock_range(&fmt, &JobOp::Unmap { va: VirtAddr::new(0x20_3000), len: 0x1000 })?;
/// assert_eq!(r, 0x20_0000..0x40_0000);
/// assert_eq!(LockRegion::covering(r)?.size(), 0x20_0000);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn lock_range(fmt: &Format, op: &JobOp<'_>) -> Result<Range<u64>, BoundError> {
    let (a, b, splits) = match *op {
        JobOp::Map { va, backing } => {
            let len = validate_map(fmt, va, backing)?;
            (va.as_u64(), va.as_u64() + len, false)
        }
        JobOp::Replace { va, backing } => {
            let len = validate_map(fmt, va, backing)?;
            (va.as_u64(), va.as_u64() + len, true)
        }
        JobOp::Unmap { va, len } | JobOp::Protect { va, len } => {
            validate_range(fmt, va, len)?;
            (va.as_u64(), va.as_u64() + len, true)
        }
    };
    let (lo, hi) = write_span(fmt, a, b, splits);
    Ok(lo..hi)
}

/// The hull of [`lock_range`] over every op of a job (`None` for no ops): one lock region for
/// the whole job, as panthor locks once per VM operation.
///
/// # Errors
///
/// The first invalid op.
pub fn job_lock_range(fmt: &Format, ops: &[JobOp<'_>]) -> Result<Option<Range<u64>>, BoundError> {
    let mut h: Option<Range<u64>> = None;
    for op in ops {
        let r = lock_range(fmt, op)?;
        h = Some(match h {
            None => r,
            Some(x) => x.start.min(r.start)..x.end.max(r.end),
        });
    }
    Ok(h)
}
