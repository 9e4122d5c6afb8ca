//! Errors: one enum per operation, each with only the variants that operation can return.
//!
//! The walker is generic over the operation's error ([`WalkError`] and friends, private), so it
//! builds the public error directly and no conversion has to make up a value for a case that
//! cannot happen.

use core::fmt;

use crate::addr::{PhysAddr, VirtAddr};
use crate::request::{MapReq, RangeReq};

macro_rules! display {
    ($ty:ty, $self:ident, $f:ident, { $($pat:pat => $($arg:expr),+ ;)* }) => {
        impl fmt::Display for $ty {
            fn fmt(&$self, $f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match $self { $($pat => write!($f, $($arg),+),)* }
            }
        }
        impl core::error::Error for $ty {}
    };
}

/// Error returned by [`PageTable::map`](crate::PageTable::map) and
/// [`UpdateContext::map`](crate::UpdateContext::map). The tables, the reserve and the flush are
/// unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MapError {
    /// The VA is not page-aligned.
    Misaligned {
        /// The request's VA.
        va: VirtAddr,
    },
    /// The backing is empty.
    ZeroLength,
    /// The range overflows or leaves the format's VA space.
    OutOfRange,
    /// Backing chunk `index` is empty or not page-aligned.
    BadChunk {
        /// Index into the backing slice.
        index: usize,
    },
    /// Backing chunk `index` ends beyond the format's output-address width
    /// ([`Format::oa_limit`](crate::Format::oa_limit)).
    PaOutOfRange {
        /// Index into the backing slice.
        index: usize,
    },
    /// A leaf already maps `va` (unmap first, as io-pgtable's `-EEXIST`).
    AlreadyMapped {
        /// The first mapped VA found.
        va: VirtAddr,
    },
    /// The reserve holds fewer frames than this map needs against the current state. Never
    /// happens with a reserve of at least [`map_bound`](crate::map_bound).
    ReservationExhausted {
        /// Frames the map needs now.
        needed: u64,
        /// Frames in the reserve.
        available: u64,
    },
    /// A table (or reserved frame) address does not resolve in the given memory, or a reserved
    /// frame lies beyond the output-address width.
    BadTable {
        /// The unresolved address.
        pa: PhysAddr,
    },
    /// A descriptor in the way holds something this crate never writes.
    Corrupt {
        /// Where.
        va: VirtAddr,
    },
}

display!(MapError, self, f, {
    Self::Misaligned { va } => "map va {:#x} not page-aligned", va.as_u64();
    Self::ZeroLength => "map of zero length";
    Self::OutOfRange => "map range outside the va space";
    Self::BadChunk { index } => "backing chunk {} empty or not page-aligned", index;
    Self::PaOutOfRange { index } => "backing chunk {} beyond the pa width", index;
    Self::AlreadyMapped { va } => "va {:#x} already mapped", va.as_u64();
    Self::ReservationExhausted { needed, available } => "map needs {} frames, reserve has {}", needed, available;
    Self::BadTable { pa } => "table frame {:#x} not in table memory", pa.as_u64();
    Self::Corrupt { va } => "corrupt descriptor at va {:#x}", va.as_u64();
});

/// Error returned by the range operations, unmap and protect
/// ([`PageTable::unmap`](crate::PageTable::unmap), [`PageTable::protect`](crate::PageTable::protect)
/// and their [`UpdateContext`](crate::UpdateContext) forms). The tables, the reserve and the
/// flush are unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RangeError {
    /// The VA or length is not page-aligned.
    Misaligned {
        /// The request's VA.
        va: VirtAddr,
        /// The request's length.
        len: u64,
    },
    /// The length is zero.
    ZeroLength,
    /// The range overflows or leaves the format's VA space.
    OutOfRange,
    /// The reserve holds fewer frames than the block splits need. Never happens with a reserve
    /// of at least [`unmap_bound`](crate::unmap_bound).
    ReservationExhausted {
        /// Frames needed now.
        needed: u64,
        /// Frames in the reserve.
        available: u64,
    },
    /// A table (or reserved frame) address does not resolve in the given memory, or a reserved
    /// frame lies beyond the output-address width.
    BadTable {
        /// The unresolved address.
        pa: PhysAddr,
    },
    /// A descriptor that would have to be split or rewritten holds something this crate never
    /// writes.
    Corrupt {
        /// Where.
        va: VirtAddr,
    },
}

/// Error returned by unmap: a [`RangeError`].
pub type UnmapError = RangeError;

/// Error returned by protect: a [`RangeError`].
pub type ProtectError = RangeError;

display!(RangeError, self, f, {
    Self::Misaligned { va, len } => "range {:#x}+{:#x} not page-aligned", va.as_u64(), len;
    Self::ZeroLength => "range of zero length";
    Self::OutOfRange => "range outside the va space";
    Self::ReservationExhausted { needed, available } => "splits need {} frames, reserve has {}", needed, available;
    Self::BadTable { pa } => "table frame {:#x} not in table memory", pa.as_u64();
    Self::Corrupt { va } => "corrupt descriptor at va {:#x}", va.as_u64();
});

/// Error returned by [`PageTable::translate`](crate::PageTable::translate) and the
/// [`Leaves`](crate::Leaves) iterator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TranslateError {
    /// The VA is outside the format's VA space.
    OutOfRange,
    /// A table address does not resolve in the given memory.
    BadTable {
        /// The unresolved address.
        pa: PhysAddr,
    },
    /// A descriptor on the walk holds something this crate never writes.
    Corrupt {
        /// Where.
        va: VirtAddr,
    },
}

display!(TranslateError, self, f, {
    Self::OutOfRange => "va outside the va space";
    Self::BadTable { pa } => "table frame {:#x} not in table memory", pa.as_u64();
    Self::Corrupt { va } => "corrupt descriptor at va {:#x}", va.as_u64();
});

/// Error returned by the reservation bounds and the pre-lock range ([`map_bound`](crate::map_bound),
/// [`unmap_bound`](crate::unmap_bound), [`job_bound`](crate::job_bound), the panthor formulas,
/// [`lock_range`](crate::lock_range)): the request is invalid, as the operation would find.
///
/// The chunk variants come only from map requests, [`BoundError::ScratchFull`] only from
/// [`job_bound`](crate::job_bound).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BoundError {
    /// The VA or length is not page-aligned.
    Misaligned {
        /// The request's VA.
        va: VirtAddr,
        /// The request's length.
        len: u64,
    },
    /// The length (or backing) is empty.
    ZeroLength,
    /// The range overflows or leaves the format's VA space.
    OutOfRange,
    /// Backing chunk `index` is empty or not page-aligned.
    BadChunk {
        /// Index into the backing slice.
        index: usize,
    },
    /// Backing chunk `index` ends beyond the format's output-address width.
    PaOutOfRange {
        /// Index into the backing slice.
        index: usize,
    },
    /// The caller's scratch space for [`job_bound`](crate::job_bound) is too small.
    ScratchFull,
}

display!(BoundError, self, f, {
    Self::Misaligned { va, len } => "range {:#x}+{:#x} not page-aligned", va.as_u64(), len;
    Self::ZeroLength => "range of zero length";
    Self::OutOfRange => "range outside the va space";
    Self::BadChunk { index } => "backing chunk {} empty or not page-aligned", index;
    Self::PaOutOfRange { index } => "backing chunk {} beyond the pa width", index;
    Self::ScratchFull => "job bound scratch space exhausted";
});

/// Error returned by [`PageTable::new`](crate::PageTable::new) and
/// [`PageTable::try_new`](crate::PageTable::try_new).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NewError {
    /// The root address is not a full-size frame of the memory, lies beyond the format's
    /// output-address width, or the memory's granule differs from the format's.
    BadRoot {
        /// The rejected address.
        pa: PhysAddr,
    },
    /// No frame for the root.
    OutOfFrames,
}

display!(NewError, self, f, {
    Self::BadRoot { pa } => "root {:#x} is not a usable frame of this memory and format", pa.as_u64();
    Self::OutOfFrames => "no frame for the root table";
});

/// Error returned by [`PageTable::audit`](crate::PageTable::audit): an invariant is broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuditError {
    /// A table address does not resolve.
    BadTable {
        /// The unresolved address.
        pa: PhysAddr,
    },
    /// A table's recorded live count differs from its valid entries.
    LiveMismatch {
        /// The table.
        pa: PhysAddr,
        /// The recorded count.
        recorded: u32,
        /// The valid entries found.
        actual: u32,
    },
    /// A non-root table with no valid entry is still hooked (it should have been reclaimed).
    EmptyTable {
        /// The table.
        pa: PhysAddr,
    },
    /// A descriptor this crate never writes.
    Corrupt {
        /// Where.
        va: VirtAddr,
    },
}

display!(AuditError, self, f, {
    Self::BadTable { pa } => "table frame {:#x} not in table memory", pa.as_u64();
    Self::LiveMismatch { pa, recorded, actual } => "table {:#x} records {} live entries, has {}", pa.as_u64(), recorded, actual;
    Self::EmptyTable { pa } => "empty table {:#x} still hooked", pa.as_u64();
    Self::Corrupt { va } => "corrupt descriptor at va {:#x}", va.as_u64();
});

// -------------------------------------------------------------------------------------------
// What the walker needs from an operation's error.

/// Errors every walk can hit: a table that does not resolve, a descriptor this crate never
/// writes.
pub(crate) trait WalkError {
    fn bad_table(pa: PhysAddr) -> Self;
    fn corrupt(va: u64) -> Self;
}

/// Errors of a walk that pops frames.
pub(crate) trait ExecError: WalkError {
    fn exhausted(needed: u64, available: u64) -> Self;
}

/// Errors of a map walk.
pub(crate) trait MapWalkError: WalkError {
    fn already_mapped(va: u64) -> Self;
}

macro_rules! walk_error {
    ($($ty:ty),*) => {$(
        impl WalkError for $ty {
            fn bad_table(pa: PhysAddr) -> Self {
                Self::BadTable { pa }
            }
            fn corrupt(va: u64) -> Self {
                Self::Corrupt { va: VirtAddr::new(va) }
            }
        }
    )*};
}
walk_error!(MapError, RangeError, TranslateError, AuditError);

impl ExecError for MapError {
    fn exhausted(needed: u64, available: u64) -> Self {
        Self::ReservationExhausted { needed, available }
    }
}

impl ExecError for RangeError {
    fn exhausted(needed: u64, available: u64) -> Self {
        Self::ReservationExhausted { needed, available }
    }
}

impl MapWalkError for MapError {
    fn already_mapped(va: u64) -> Self {
        Self::AlreadyMapped {
            va: VirtAddr::new(va),
        }
    }
}

impl From<RangeReq> for RangeError {
    fn from(r: RangeReq) -> Self {
        match r {
            RangeReq::Misaligned { va, len } => Self::Misaligned { va, len },
            RangeReq::ZeroLength => Self::ZeroLength,
            RangeReq::OutOfRange => Self::OutOfRange,
        }
    }
}

impl From<RangeReq> for BoundError {
    fn from(r: RangeReq) -> Self {
        match r {
            RangeReq::Misaligned { va, len } => Self::Misaligned { va, len },
            RangeReq::ZeroLength => Self::ZeroLength,
            RangeReq::OutOfRange => Self::OutOfRange,
        }
    }
}

impl From<MapReq> for MapError {
    fn from(r: MapReq) -> Self {
        match r {
            MapReq::Range(RangeReq::Misaligned { va, .. }) => Self::Misaligned { va },
            MapReq::Range(RangeReq::ZeroLength) => Self::ZeroLength,
            MapReq::Range(RangeReq::OutOfRange) => Self::OutOfRange,
            MapReq::BadChunk { index } => Self::BadChunk { index },
            MapReq::PaOutOfRange { index } => Self::PaOutOfRange { index },
        }
    }
}

impl From<MapReq> for BoundError {
    fn from(r: MapReq) -> Self {
        match r {
            MapReq::Range(r) => r.into(),
            MapReq::BadChunk { index } => Self::BadChunk { index },
            MapReq::PaOutOfRange { index } => Self::PaOutOfRange { index },
        }
    }
}
