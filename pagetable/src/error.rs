//! Errors, one enum per operation, plus the walker's private stop reasons.

use core::fmt;

use crate::addr::{PhysAddr, VirtAddr};

/// Why a request was refused before any table was looked at (private; converted per operation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Req {
    Misaligned { va: VirtAddr, len: u64 },
    ZeroLength,
    OutOfRange,
    BadChunk { index: usize },
}

/// Why a walk stopped (private; converted per operation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    AlreadyMapped(u64),
    BadTable(PhysAddr),
    Corrupt(u64),
    Exhausted,
    ScratchFull,
}

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

/// Error returned by [`PageTable::map`](crate::PageTable::map). The tables are unchanged.
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
    /// Backing chunk `index` is empty, not page-aligned, or passes 48 bits.
    BadChunk {
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
    /// A table (or reserved frame) address does not resolve in the given memory.
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
    Self::BadChunk { index } => "backing chunk {} empty, misaligned or beyond 48 bits", index;
    Self::AlreadyMapped { va } => "va {:#x} already mapped", va.as_u64();
    Self::ReservationExhausted { needed, available } => "map needs {} frames, reserve has {}", needed, available;
    Self::BadTable { pa } => "table frame {:#x} not in table memory", pa.as_u64();
    Self::Corrupt { va } => "corrupt descriptor at va {:#x}", va.as_u64();
});

/// Error returned by [`PageTable::unmap`](crate::PageTable::unmap). The tables are unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnmapError {
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
    /// A table (or reserved frame) address does not resolve in the given memory.
    BadTable {
        /// The unresolved address.
        pa: PhysAddr,
    },
    /// A descriptor that would have to be split holds something this crate never writes.
    Corrupt {
        /// Where.
        va: VirtAddr,
    },
}

display!(UnmapError, self, f, {
    Self::Misaligned { va, len } => "unmap {:#x}+{:#x} not page-aligned", va.as_u64(), len;
    Self::ZeroLength => "unmap of zero length";
    Self::OutOfRange => "unmap range outside the va space";
    Self::ReservationExhausted { needed, available } => "unmap needs {} frames, reserve has {}", needed, available;
    Self::BadTable { pa } => "table frame {:#x} not in table memory", pa.as_u64();
    Self::Corrupt { va } => "corrupt descriptor at va {:#x}", va.as_u64();
});

/// Error returned by [`PageTable::protect`](crate::PageTable::protect). The tables are
/// unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtectError {
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
    /// The reserve holds fewer frames than the block splits need.
    ReservationExhausted {
        /// Frames needed now.
        needed: u64,
        /// Frames in the reserve.
        available: u64,
    },
    /// A table (or reserved frame) address does not resolve in the given memory.
    BadTable {
        /// The unresolved address.
        pa: PhysAddr,
    },
    /// A descriptor in the range holds something this crate never writes.
    Corrupt {
        /// Where.
        va: VirtAddr,
    },
}

display!(ProtectError, self, f, {
    Self::Misaligned { va, len } => "protect {:#x}+{:#x} not page-aligned", va.as_u64(), len;
    Self::ZeroLength => "protect of zero length";
    Self::OutOfRange => "protect range outside the va space";
    Self::ReservationExhausted { needed, available } => "protect needs {} frames, reserve has {}", needed, available;
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

/// Error returned by the reservation bounds ([`map_bound`](crate::map_bound),
/// [`unmap_bound`](crate::unmap_bound), [`job_bound`](crate::job_bound), the panthor formulas).
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
    /// Backing chunk `index` is empty, not page-aligned, or passes 48 bits.
    BadChunk {
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
    Self::BadChunk { index } => "backing chunk {} empty, misaligned or beyond 48 bits", index;
    Self::ScratchFull => "job bound scratch space exhausted";
});

/// Error returned by [`PageTable::new`](crate::PageTable::new) and
/// [`PageTable::try_new`](crate::PageTable::try_new).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NewError {
    /// The root address is not a full-size frame of the memory (or the memory's granule differs
    /// from the format's).
    BadRoot {
        /// The rejected address.
        pa: PhysAddr,
    },
    /// No frame for the root.
    OutOfFrames,
}

display!(NewError, self, f, {
    Self::BadRoot { pa } => "root {:#x} is not a frame of this memory and granule", pa.as_u64();
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

macro_rules! from_req {
    ($ty:ident) => {
        impl From<Req> for $ty {
            fn from(r: Req) -> Self {
                match r {
                    Req::Misaligned { va, len } => Self::Misaligned { va, len },
                    Req::ZeroLength => Self::ZeroLength,
                    Req::OutOfRange => Self::OutOfRange,
                    // Only maps have chunks; a range request never yields this.
                    Req::BadChunk { .. } => Self::OutOfRange,
                }
            }
        }
    };
}
from_req!(UnmapError);
from_req!(ProtectError);

impl From<Req> for MapError {
    fn from(r: Req) -> Self {
        match r {
            Req::Misaligned { va, .. } => Self::Misaligned { va },
            Req::ZeroLength => Self::ZeroLength,
            Req::OutOfRange => Self::OutOfRange,
            Req::BadChunk { index } => Self::BadChunk { index },
        }
    }
}

impl From<Req> for BoundError {
    fn from(r: Req) -> Self {
        match r {
            Req::Misaligned { va, len } => Self::Misaligned { va, len },
            Req::ZeroLength => Self::ZeroLength,
            Req::OutOfRange => Self::OutOfRange,
            Req::BadChunk { index } => Self::BadChunk { index },
        }
    }
}

macro_rules! from_stop {
    ($ty:ident) => {
        impl From<Stop> for $ty {
            fn from(s: Stop) -> Self {
                match s {
                    Stop::BadTable(pa) => Self::BadTable { pa },
                    Stop::Corrupt(va) | Stop::AlreadyMapped(va) => Self::Corrupt {
                        va: VirtAddr::new(va),
                    },
                    Stop::Exhausted | Stop::ScratchFull => Self::ReservationExhausted {
                        needed: 0,
                        available: 0,
                    },
                }
            }
        }
    };
}
from_stop!(UnmapError);
from_stop!(ProtectError);

impl From<Stop> for MapError {
    fn from(s: Stop) -> Self {
        match s {
            Stop::AlreadyMapped(va) => Self::AlreadyMapped {
                va: VirtAddr::new(va),
            },
            Stop::BadTable(pa) => Self::BadTable { pa },
            Stop::Corrupt(va) => Self::Corrupt {
                va: VirtAddr::new(va),
            },
            Stop::Exhausted | Stop::ScratchFull => Self::ReservationExhausted {
                needed: 0,
                available: 0,
            },
        }
    }
}

impl From<Stop> for TranslateError {
    fn from(s: Stop) -> Self {
        match s {
            Stop::BadTable(pa) => Self::BadTable { pa },
            Stop::AlreadyMapped(va) | Stop::Corrupt(va) => Self::Corrupt {
                va: VirtAddr::new(va),
            },
            Stop::Exhausted | Stop::ScratchFull => Self::OutOfRange,
        }
    }
}

impl From<Stop> for BoundError {
    fn from(s: Stop) -> Self {
        match s {
            Stop::ScratchFull => Self::ScratchFull,
            // A pure bound walks no memory, so nothing else can stop it.
            _ => Self::OutOfRange,
        }
    }
}
