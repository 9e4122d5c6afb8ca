//! Bind jobs as the ioctl hands them over: ops, syncs, mode; and the validation errors.

use core::fmt;

use gpuva::{ObjId, RangeError};

/// Access flags of a map op, turned into page-table attributes and kept in the mapping's
/// [`VaFlags`](gpuva::VaFlags) user bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MapFlags {
    /// The GPU may only read.
    pub read_only: bool,
    /// The GPU may not execute from it.
    pub no_exec: bool,
    /// Normal non-cacheable memory instead of write-back cacheable.
    pub uncached: bool,
}

impl MapFlags {
    /// The flags as gpuva mapping flags (in the driver's bits, from
    /// [`VaFlags::USER_SHIFT`](gpuva::VaFlags::USER_SHIFT) up).
    #[must_use]
    pub const fn va_flags(self) -> gpuva::VaFlags {
        let bits =
            (self.read_only as u32) | ((self.no_exec as u32) << 1) | ((self.uncached as u32) << 2);
        gpuva::VaFlags::from_bits(bits << gpuva::VaFlags::USER_SHIFT)
    }

    /// The leaf attributes the page tables get.
    #[must_use]
    pub fn attrs(self) -> pagetable::Attrs {
        pagetable::Attrs {
            read_only: self.read_only,
            no_exec: self.no_exec,
            mem: if self.uncached {
                pagetable::MemType::NonCached
            } else {
                pagetable::MemType::Cached
            },
            ..pagetable::Attrs::default()
        }
    }
}

/// One operation of a bind job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BindOp {
    /// Map `[va, va + len)` to `obj` starting `offset` bytes into it.
    Map {
        /// First GPU virtual address.
        va: u64,
        /// Length in bytes.
        len: u64,
        /// The object to map.
        obj: ObjId,
        /// Byte offset of `va` inside the object.
        offset: u64,
        /// Access flags.
        flags: MapFlags,
    },
    /// Unmap `[va, va + len)` (whatever is there; holes are fine).
    Unmap {
        /// First GPU virtual address.
        va: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Changes nothing: the job only waits on its in-syncs and signals its out-syncs.
    SyncOnly,
}

impl BindOp {
    /// The VA range the op names (`None` for [`BindOp::SyncOnly`]); wraps only for an op that
    /// failed validation.
    #[must_use]
    pub const fn range(&self) -> Option<core::ops::Range<u64>> {
        match *self {
            Self::Map { va, len, .. } | Self::Unmap { va, len } => Some(va..va.wrapping_add(len)),
            Self::SyncOnly => None,
        }
    }
}

/// Whether the job is queued (`Async`) or the caller waits for it (`Sync`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Queued; completion is reported through the out-syncs only.
    #[default]
    Async,
    /// The submitting thread waits for completion; ordered against queued jobs by the VM's
    /// ordering policy.
    Sync,
}

/// What a sync entry refers to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SyncKind {
    /// A binary syncobj (its point must be 0).
    #[default]
    Binary,
    /// A timeline syncobj, at `point`.
    Timeline,
}

/// Flags of one sync descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SyncFlags {
    /// In-syncs only: a point with no fence yet is not an error; the job waits for the fence
    /// to be submitted (`DRM_SYNCOBJ_WAIT_FLAGS_WAIT_FOR_SUBMIT`), then for the fence, and fails
    /// with [`JobError::Timeout`](crate::JobError::Timeout) if neither happens in time.
    /// Ignored on out-syncs.
    pub wait_for_submit: bool,
}

/// One in- or out-sync of a job: a syncobj handle, its kind and a timeline point (the
/// virtio-gpu / msm descriptor shape), and flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SyncDesc {
    /// The syncobj handle (per-file in a driver).
    pub handle: u32,
    /// Binary or timeline.
    pub kind: SyncKind,
    /// The timeline point (0 for binary syncobjs; 0 on a timeline means its current fence).
    pub point: u64,
    /// Flags.
    pub flags: SyncFlags,
}

impl SyncDesc {
    /// A binary syncobj.
    #[must_use]
    pub const fn binary(handle: u32) -> Self {
        Self {
            handle,
            kind: SyncKind::Binary,
            point: 0,
            flags: SyncFlags {
                wait_for_submit: false,
            },
        }
    }

    /// A timeline syncobj at `point`.
    #[must_use]
    pub const fn timeline(handle: u32, point: u64) -> Self {
        Self {
            handle,
            kind: SyncKind::Timeline,
            point,
            flags: SyncFlags {
                wait_for_submit: false,
            },
        }
    }

    /// The same descriptor, waiting for the point to be submitted (see
    /// [`SyncFlags::wait_for_submit`]).
    #[must_use]
    pub const fn wait_for_submit(mut self) -> Self {
        self.flags.wait_for_submit = true;
        self
    }
}

/// A bind job as the ioctl copied it from user space: borrowed slices, nothing owned.
#[derive(Clone, Copy, Debug, Default)]
pub struct BindJob<'a> {
    /// The ops, applied in order.
    pub ops: &'a [BindOp],
    /// Syncs to wait on before the job runs.
    pub in_syncs: &'a [SyncDesc],
    /// Syncs to signal when the job has run (or failed).
    pub out_syncs: &'a [SyncDesc],
    /// Async or sync.
    pub mode: Mode,
}

impl<'a> BindJob<'a> {
    /// An async job of `ops` with no syncs.
    #[must_use]
    pub const fn new(ops: &'a [BindOp]) -> Self {
        Self {
            ops,
            in_syncs: &[],
            out_syncs: &[],
            mode: Mode::Async,
        }
    }
}

/// Why one op was refused by prepare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpError {
    /// The VA range is invalid for the VA space: zero size, overflow, outside the space,
    /// overlapping the kernel cut-out, or not aligned to the VM page size.
    Range(RangeError),
    /// The object offset is not aligned to the VM page size.
    UnalignedOffset,
    /// `offset + len` overflows or exceeds the object's size.
    ObjectBounds {
        /// The object's size in bytes.
        size: u64,
    },
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Range(e) => write!(f, "{e}"),
            Self::UnalignedOffset => f.write_str("object offset not aligned to the VM page size"),
            Self::ObjectBounds { size } => {
                write!(f, "range leaves the object (size {size:#x})")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_round_trip_into_driver_bits_and_attrs() {
        let f = MapFlags {
            read_only: true,
            no_exec: false,
            uncached: true,
        };
        assert_eq!(f.va_flags().bits() >> gpuva::VaFlags::USER_SHIFT, 0b101);
        let a = f.attrs();
        assert!(a.read_only && !a.no_exec);
        assert_eq!(a.mem, pagetable::MemType::NonCached);
        assert_eq!(BindOp::SyncOnly.range(), None);
        assert_eq!(BindOp::Unmap { va: 8, len: 4 }.range(), Some(8..12));
    }
}
