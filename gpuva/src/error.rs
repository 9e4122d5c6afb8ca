//! Errors, one enum per operation.

use core::convert::Infallible;
use core::fmt;

use crate::va::ObjId;

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
    /// The granule is not a power of two, or the space or cut-out is not aligned to it.
    Granule,
}

impl fmt::Display for NewError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::EmptySpace => "the VA space is empty",
            Self::Overflow => "the VA space end overflows u64",
            Self::InvertedReserve => "the reserved range ends before it starts",
            Self::ReserveOutside => "the reserved range is not inside the VA space",
            Self::Granule => {
                "the granule is not a power of two, or the space or cut-out is not aligned to it"
            }
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
    /// The start or length is not a multiple of the VA space's granule.
    Unaligned,
    /// A repeat mapping without an object (a NULL mapping translates to nothing to repeat).
    RepeatWithoutObject,
    /// A repeat mapping's period is smaller than the VA space's granule (both are powers of two,
    /// so a period at least the granule is a multiple of it).
    RepeatPeriod,
    /// A repeat mapping's offset (its window start plus its phase) is not a multiple of the
    /// granule, so its phase is not page-granular.
    RepeatPhase,
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
            Self::Unaligned => "unaligned",
            Self::RepeatWithoutObject => "repeat-no-object",
            Self::RepeatPeriod => "repeat-period",
            Self::RepeatPhase => "repeat-phase",
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
            Self::Unaligned => "range is not aligned to the VA space's granule",
            Self::RepeatWithoutObject => "repeat mapping without an object",
            Self::RepeatPeriod => "repeat period is smaller than the VA space's granule",
            Self::RepeatPhase => "repeat phase is not aligned to the VA space's granule",
        })
    }
}

impl core::error::Error for RangeError {}

/// Error returned by [`GpuVm::step`](crate::GpuVm::step) and its shorthands.
///
/// `E` is the visitor's own error type; the built-in visitors use [`Infallible`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StepError<E = Infallible> {
    /// The request is invalid; nothing changed.
    Range(RangeError),
    /// The claim belongs to another VA space; nothing changed.
    Foreign,
    /// The claim holds fewer nodes than the request's bound; nothing changed.
    ReservationTooSmall {
        /// Nodes the request's bound needs.
        needed: usize,
        /// Nodes the claim held.
        available: usize,
    },
    /// A map of an object that has no link in this VA space (obtain and pin one in prepare:
    /// [`GpuVm::link_obtain`](crate::GpuVm::link_obtain)); nothing changed.
    NoLink(ObjId),
    /// The visitor failed. Steps before this one stay applied (as in drm_gpuvm), the failing step
    /// was not applied, the walk stopped there, and the tree is consistent. The claim is used up.
    Visitor(E),
}

impl<E: fmt::Display> fmt::Display for StepError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Range(e) => write!(f, "invalid request: {e}"),
            Self::Foreign => f.write_str("the claim belongs to another VA space"),
            Self::ReservationTooSmall { needed, available } => write!(
                f,
                "request needs {needed} claimed nodes, the claim holds {available}"
            ),
            Self::NoLink(obj) => write!(f, "{obj:?} has no link in this VA space"),
            Self::Visitor(e) => write!(f, "step failed: {e}"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> core::error::Error for StepError<E> {}

/// Error returned by the link calls ([`GpuVm::link_obtain`](crate::GpuVm::link_obtain) and
/// friends); nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkError {
    /// The VA space was made without object links.
    LinksDisabled,
    /// The claim or pin belongs to another VA space.
    Foreign,
    /// The claim holds fewer nodes than [`GpuVm::link_nodes`](crate::GpuVm::link_nodes).
    ReservationTooSmall {
        /// Nodes needed.
        needed: usize,
        /// Nodes the claim held.
        available: usize,
    },
    /// The VA space already holds twice as many links as it can hold mappings (the bound its
    /// link tree is sized for).
    TooManyLinks,
    /// The link has `u32::MAX` pins.
    TooManyPins,
    /// The object has no live link.
    NoLink(ObjId),
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LinksDisabled => f.write_str("the VA space keeps no object links"),
            Self::Foreign => f.write_str("the claim or pin belongs to another VA space"),
            Self::ReservationTooSmall { needed, available } => write!(
                f,
                "a link needs {needed} claimed nodes, the claim holds {available}"
            ),
            Self::TooManyLinks => f.write_str("the VA space holds its maximum number of links"),
            Self::TooManyPins => f.write_str("the link has the maximum number of pins"),
            Self::NoLink(obj) => write!(f, "{obj:?} has no link in this VA space"),
        }
    }
}

impl core::error::Error for LinkError {}

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

/// Error returned by [`GpuVm::apply_plan`](crate::GpuVm::apply_plan).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApplyError<E = Infallible> {
    /// The plan was recorded on another VA space. Nothing changed.
    Foreign,
    /// The VA space changed after the plan was recorded; it no longer describes what applying
    /// the request would do. Nothing changed.
    Stale,
    /// Applying the request failed.
    Step(StepError<E>),
}

impl<E: fmt::Display> fmt::Display for ApplyError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Foreign => f.write_str("plan was recorded on another VA space"),
            Self::Stale => f.write_str("plan is stale: the VA space changed since it was recorded"),
            Self::Step(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> core::error::Error for ApplyError<E> {}
