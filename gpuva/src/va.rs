//! One mapping: its plain description ([`Mapping`]) and the tree node that stores it ([`GpuVa`]).

use core::fmt;
use core::num::NonZeroU64;
use core::ops::Range;

/// Identifies a buffer object (a GEM object in kernel terms).
///
/// gpuva never looks inside objects; it only compares identities to decide `keep` (see
/// [`crate::sm`]). A mapping without an object (a sparse or NULL mapping) has `obj == None`, so the
/// identity is non-zero to keep `Option<ObjId>` as small as a `u64`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjId(NonZeroU64);

impl ObjId {
    /// Makes an object id; `0` means "no object" and gives `None`.
    #[must_use]
    pub const fn new(raw: u64) -> Option<Self> {
        match NonZeroU64::new(raw) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }

    /// The raw, non-zero id.
    #[must_use]
    pub const fn get(self) -> u64 {
        self.0.get()
    }
}

impl fmt::Debug for ObjId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "obj{}", self.0)
    }
}

/// Flags of a mapping, as in `drm_gpuva.flags`.
///
/// Bit 0 is [`VaFlags::INVALIDATED`], bit 1 [`VaFlags::SPARSE`]; bits from [`VaFlags::USER_SHIFT`] up
/// belong to the driver. Unlike mainline drm_gpuvm, the pieces a split leaves behind (`prev`/`next`)
/// inherit the flags of the mapping they came from: every driver that uses flags copies them by hand.
/// Flags never influence `keep` (mainline semantics).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VaFlags(u32);

impl VaFlags {
    /// No flags.
    pub const EMPTY: Self = Self(0);
    /// The backing object was evicted (`DRM_GPUVA_INVALIDATED`).
    pub const INVALIDATED: Self = Self(1 << 0);
    /// A sparse mapping (`DRM_GPUVA_SPARSE`); a pure marker.
    pub const SPARSE: Self = Self(1 << 1);
    /// First bit available to drivers (`DRM_GPUVA_USERBITS`).
    pub const USER_SHIFT: u32 = 2;

    /// Flags from raw bits.
    #[must_use]
    pub const fn from_bits(bits: u32) -> Self {
        Self(bits)
    }

    /// The raw bits.
    #[must_use]
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every bit of `other` is set in `self`.
    #[must_use]
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// `self` with the bits of `other` set.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

impl fmt::Debug for VaFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VaFlags({:#x})", self.0)
    }
}

/// A plain description of a mapping: `[addr, addr + len)` backed by `obj` at `offset`.
///
/// Used for requests, for the pieces of a split, and to describe existing mappings in operations.
/// `offset` is kept even when `obj` is `None`: drm_gpuvm applies offset arithmetic to NULL mappings
/// too (`gpuvm-semantics.md` example E13), and so do we.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Mapping {
    /// First address.
    pub addr: u64,
    /// Length in address units; never zero for a valid mapping.
    pub len: u64,
    /// Backing object, or `None` for a sparse/NULL mapping.
    pub obj: Option<ObjId>,
    /// Offset of `addr` inside `obj`.
    pub offset: u64,
    /// Mapping flags.
    pub flags: VaFlags,
}

impl Mapping {
    /// A mapping of `[addr, addr + len)` to `obj` at `offset`, with no flags.
    #[must_use]
    pub const fn new(addr: u64, len: u64, obj: Option<ObjId>, offset: u64) -> Self {
        Self {
            addr,
            len,
            obj,
            offset,
            flags: VaFlags::EMPTY,
        }
    }

    /// The same mapping with `flags`.
    #[must_use]
    pub const fn with_flags(mut self, flags: VaFlags) -> Self {
        self.flags = flags;
        self
    }

    /// One past the last address. Wraps only for a mapping that was never validated.
    #[must_use]
    pub const fn end(&self) -> u64 {
        self.addr.wrapping_add(self.len)
    }

    /// `addr..end`.
    #[must_use]
    pub const fn range(&self) -> Range<u64> {
        self.addr..self.end()
    }

    /// Whether `self` maps every address it shares with `other` to the same object offset, and
    /// has an object at all: drm_gpuvm's `keep` predicate (`gpuvm-semantics.md` section 2.2).
    ///
    /// The comparison is `offset - addr` modulo 2^64, so it holds for overlapping and
    /// non-overlapping ranges alike.
    #[must_use]
    pub fn same_backing(&self, other: &Mapping) -> bool {
        self.obj.is_some()
            && self.obj == other.obj
            && self.offset.wrapping_sub(self.addr) == other.offset.wrapping_sub(other.addr)
    }
}

/// A mapping stored in a [`GpuVm`](crate::GpuVm): one tree node.
///
/// Node memory is supplied by the caller through a [`NodePtr`](crate::NodePtr) (a `Box`, a kernel
/// `KBox`, a slot of a static array, ...). The node holds the mapping, the driver payload `D` and two
/// child links of the tree; it is 56 bytes on 64-bit targets when `D` is `()`.
///
/// A node moves through a lifecycle, as in the Rust GPUVM binding: a preallocated node (held in a
/// [`NodeReserve`](crate::NodeReserve)) is inserted by the split/merge walker, becomes live, and is
/// handed back detached as a [`GpuVaRemoved`](crate::GpuVaRemoved) when a later request removes it.
///
/// # Invariants
///
/// While the node is live: `len > 0`, `addr + len` does not overflow, and the node lies inside the
/// VA space and outside its reserved cut-out.
pub struct GpuVa<D, P> {
    pub(crate) addr: u64,
    pub(crate) len: u64,
    pub(crate) obj: Option<ObjId>,
    pub(crate) offset: u64,
    pub(crate) flags: VaFlags,
    /// Heap priority of the treap (see `tree.rs`): random, drawn when the node is inserted.
    pub(crate) prio: u32,
    pub(crate) left: Option<P>,
    pub(crate) right: Option<P>,
    pub(crate) data: D,
}

impl<D, P> GpuVa<D, P> {
    /// An unused node carrying `data` until it is inserted (the payload is replaced then).
    pub const fn new(data: D) -> Self {
        Self {
            addr: 0,
            len: 0,
            obj: None,
            offset: 0,
            flags: VaFlags::EMPTY,
            prio: 0,
            left: None,
            right: None,
            data,
        }
    }

    /// First address.
    #[must_use]
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Length.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the length is zero (only for an unused node).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// One past the last address.
    #[must_use]
    pub fn end(&self) -> u64 {
        self.addr.wrapping_add(self.len)
    }

    /// `addr..end`.
    #[must_use]
    pub fn range(&self) -> Range<u64> {
        self.addr..self.end()
    }

    /// Backing object, if any.
    #[must_use]
    pub fn obj(&self) -> Option<ObjId> {
        self.obj
    }

    /// Offset of `addr` in the backing object.
    #[must_use]
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Flags.
    #[must_use]
    pub fn flags(&self) -> VaFlags {
        self.flags
    }

    /// The mapping as a plain value.
    #[must_use]
    pub fn mapping(&self) -> Mapping {
        Mapping {
            addr: self.addr,
            len: self.len,
            obj: self.obj,
            offset: self.offset,
            flags: self.flags,
        }
    }

    /// The driver payload.
    #[must_use]
    pub fn data(&self) -> &D {
        &self.data
    }

    /// The driver payload, mutably. The mapping itself can only change through split/merge.
    pub fn data_mut(&mut self) -> &mut D {
        &mut self.data
    }

    /// Overwrites the mapping fields only; leaves priority, links and payload alone.
    pub(crate) fn set_mapping(&mut self, m: &Mapping) {
        self.addr = m.addr;
        self.len = m.len;
        self.obj = m.obj;
        self.offset = m.offset;
        self.flags = m.flags;
    }

    /// Overwrites the mapping fields and payload; leaves the links alone.
    pub(crate) fn set(&mut self, m: &Mapping, prio: u32, data: D) {
        self.addr = m.addr;
        self.len = m.len;
        self.obj = m.obj;
        self.offset = m.offset;
        self.flags = m.flags;
        self.prio = prio;
        self.data = data;
    }
}

impl<D: fmt::Debug, P> fmt::Debug for GpuVa<D, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuVa")
            .field("range", &self.range())
            .field("obj", &self.obj)
            .field("offset", &self.offset)
            .field("flags", &self.flags)
            .field("data", &self.data)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The memory figure the crate docs and BENCHMARKS.md quote.
    #[test]
    fn node_is_56_bytes_on_64_bit() {
        if core::mem::size_of::<usize>() == 8 {
            assert_eq!(
                core::mem::size_of::<GpuVa<(), crate::RefNode<'static, ()>>>(),
                56
            );
        }
    }
}
