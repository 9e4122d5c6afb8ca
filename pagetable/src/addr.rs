//! Address newtypes and backing chunks.
//!
//! The crate mixes GPU virtual addresses and physical addresses on every path, so both get a
//! newtype (as in the x86_64 crate and vm-memory) and cannot be swapped by accident.

use core::fmt;

/// A GPU virtual address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct VirtAddr(u64);

impl VirtAddr {
    /// Wraps a raw address; validity is checked by the operation that uses it.
    #[must_use]
    pub const fn new(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw address.
    #[must_use]
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for VirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VirtAddr({:#x})", self.0)
    }
}

/// A physical (output) address, of memory or of a table frame.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PhysAddr(u64);

impl PhysAddr {
    /// Wraps a raw address; validity is checked by the operation that uses it.
    #[must_use]
    pub const fn new(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw address.
    #[must_use]
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for PhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhysAddr({:#x})", self.0)
    }
}

/// One physically contiguous piece of a backing: `len` bytes starting at `pa`.
///
/// A mapping's backing is a slice of chunks laid end to end in VA order (a scatter-gather list).
/// Both fields must be multiples of the granule; a chunk that is long enough and suitably aligned
/// gets block mappings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Chunk {
    /// Physical start.
    pub pa: PhysAddr,
    /// Length in bytes.
    pub len: u64,
}

impl Chunk {
    /// A chunk of `len` bytes at `pa`.
    #[must_use]
    pub const fn new(pa: PhysAddr, len: u64) -> Self {
        Self { pa, len }
    }
}

/// Lossless `usize` to `u64` (every target this crate supports has `usize` of at most 64 bits).
pub(crate) fn u64_from(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// `u64` to `usize`, saturating; callers only pass values already bounded by a table size.
pub(crate) fn usize_from(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}
