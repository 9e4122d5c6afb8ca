//! Errors, one enum per operation.

use core::convert::Infallible;
use core::fmt;

/// Error returned by [`GpuVm::new`](crate::GpuVm::new): the geometry is unusable.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NewError {
    /// The VA space is empty (`start >= end`).
    EmptySpace,
    /// `start + size` overflows `u64` (from [`GpuVm::with_size`](crate::GpuVm::with_size)).
    Overflow,
    /// The reserved cut-out has `start > end`.
    InvertedReserve,
    /// The reserved cut-out is not inside the VA space.
    ReserveOutside,
    /// The bucket directory has no bucket, or a bucket that is not empty.
    Directory,
    /// The directory could not be allocated.
    OutOfMemory,
}

impl fmt::Display for NewError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::EmptySpace => "the VA space is empty",
            Self::Overflow => "the VA space end overflows u64",
            Self::InvertedReserve => "the reserved range ends before it starts",
            Self::ReserveOutside => "the reserved range is not inside the VA space",
            Self::Directory => "the bucket directory is empty or holds nodes",
            Self::OutOfMemory => "out of memory for the bucket directory",
        })
    }
}

impl core::error::Error for NewError {}

/// Why a range was refused: `drm_gpuvm_range_valid` plus the zero-size rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RangeError {
    /// The length is zero (drm_gpuvm accepts this and then misbehaves; we refuse it).
    ZeroSize,
    /// `addr + len` overflows `u64`.
    Overflow,
    /// The range is not inside the VA space.
    OutOfRange,
    /// The range overlaps the kernel-reserved cut-out (touching its edge is allowed).
    Reserved,
}

impl RangeError {
    /// A one-word name, as printed in traces (`err <reason>`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ZeroSize => "zero-size",
            Self::Overflow => "overflow",
            Self::OutOfRange => "out-of-range",
            Self::Reserved => "reserved",
        }
    }
}

impl fmt::Display for RangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ZeroSize => "zero-size range",
            Self::Overflow => "range end overflows u64",
            Self::OutOfRange => "range is outside the VA space",
            Self::Reserved => "range overlaps the reserved cut-out",
        })
    }
}

impl core::error::Error for RangeError {}

/// Error returned by [`GpuVm::sm_map`](crate::GpuVm::sm_map) and friends.
///
/// `E` is the visitor's own error type; the built-in appliers use [`Infallible`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MapError<E = Infallible> {
    /// The request is invalid; nothing changed.
    Range(RangeError),
    /// The node pool held fewer than [`MAX_MAP_NODES`](crate::MAX_MAP_NODES) nodes; nothing changed.
    ReservationTooSmall {
        /// Nodes the worst case needs.
        needed: usize,
        /// Nodes the pool had.
        available: usize,
    },
    /// The node pool ran dry although it reported enough nodes: a broken [`NodePool`](crate::NodePool)
    /// implementation. Steps before this one stay applied; the tree is consistent.
    ReservationExhausted,
    /// The visitor failed. Steps before this one stay applied (as in drm_gpuvm), and so does the
    /// failing step if the visitor applied its op before returning the error; the walk stops there
    /// and the tree is consistent.
    Visitor(E),
}

impl<E: fmt::Display> fmt::Display for MapError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Range(e) => write!(f, "invalid map request: {e}"),
            Self::ReservationTooSmall { needed, available } => {
                write!(
                    f,
                    "map needs {needed} reserved nodes, {available} available"
                )
            }
            Self::ReservationExhausted => f.write_str("node pool ran dry during the walk"),
            Self::Visitor(e) => write!(f, "map step failed: {e}"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> core::error::Error for MapError<E> {}

/// Error returned by [`GpuVm::sm_unmap`](crate::GpuVm::sm_unmap) and friends.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnmapError<E = Infallible> {
    /// The request is invalid; nothing changed.
    Range(RangeError),
    /// The node pool held fewer than [`MAX_UNMAP_NODES`](crate::MAX_UNMAP_NODES) nodes; nothing
    /// changed.
    ReservationTooSmall {
        /// Nodes the worst case needs.
        needed: usize,
        /// Nodes the pool had.
        available: usize,
    },
    /// See [`MapError::ReservationExhausted`].
    ReservationExhausted,
    /// See [`MapError::Visitor`].
    Visitor(E),
}

impl<E: fmt::Display> fmt::Display for UnmapError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Range(e) => write!(f, "invalid unmap request: {e}"),
            Self::ReservationTooSmall { needed, available } => {
                write!(
                    f,
                    "unmap needs {needed} reserved nodes, {available} available"
                )
            }
            Self::ReservationExhausted => f.write_str("node pool ran dry during the walk"),
            Self::Visitor(e) => write!(f, "unmap step failed: {e}"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> core::error::Error for UnmapError<E> {}

/// Error returned when recording an op list ([`GpuVm::sm_map_ops`](crate::GpuVm::sm_map_ops) and
/// friends).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpsError<E = crate::AllocError> {
    /// The request is invalid.
    Range(RangeError),
    /// The sink refused an op (for [`OpList`](crate::OpList): out of memory).
    Sink(E),
}

impl<E: fmt::Display> fmt::Display for OpsError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Range(e) => write!(f, "invalid request: {e}"),
            Self::Sink(e) => write!(f, "recording ops failed: {e}"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> core::error::Error for OpsError<E> {}

/// Error returned by [`GpuVm::apply_ops`](crate::GpuVm::apply_ops).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApplyError<E = Infallible> {
    /// The list was recorded on another VA space. Nothing changed.
    Foreign,
    /// The VA space changed after the list was recorded; the list no longer describes what applying
    /// the request would do. Nothing changed.
    Stale,
    /// Applying a map list failed.
    Map(MapError<E>),
    /// Applying an unmap list failed.
    Unmap(UnmapError<E>),
}

impl<E: fmt::Display> fmt::Display for ApplyError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Foreign => f.write_str("op list was recorded on another VA space"),
            Self::Stale => {
                f.write_str("op list is stale: the VA space changed since it was recorded")
            }
            Self::Map(e) => fmt::Display::fmt(e, f),
            Self::Unmap(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> core::error::Error for ApplyError<E> {}
