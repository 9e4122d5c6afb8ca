//! One mapping: its plain description ([`Mapping`]) and the tree node that stores it ([`GpuVa`]).

use core::fmt;
use core::num::NonZeroU64;
use core::ops::Range;

use crate::repeat::Repeat;

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
/// Bit 0 is [`VaFlags::INVALIDATED`], bit 1 [`VaFlags::SPARSE`]; bits [`VaFlags::USER_SHIFT`] to
/// [`VaFlags::RESERVED_SHIFT`]` - 1` (24 bits) belong to the driver. The top six bits are gpuva's
/// (a mapping's leaf entry keeps its [`Repeat`] period there): [`VaFlags::from_bits`] drops them,
/// so no flags value carries them. Unlike mainline drm_gpuvm, the pieces a split leaves behind (`prev`/`next`)
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
    /// First bit reserved for gpuva (bits 26 to 31); flags never hold them.
    pub const RESERVED_SHIFT: u32 = 26;
    /// The bits a flags value may hold.
    pub const MASK: u32 = (1 << Self::RESERVED_SHIFT) - 1;

    /// Flags from raw bits; bits from [`VaFlags::RESERVED_SHIFT`] up are dropped.
    #[must_use]
    pub const fn from_bits(bits: u32) -> Self {
        Self(bits & Self::MASK)
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
/// too (`docs/semantics.md`, example E13), and so do we.
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
    /// For a repeat mapping, the period of the object window it repeats (`offset` is then the
    /// window start plus the phase; see [`Repeat`]); `None` for a plain mapping.
    pub repeat: Option<Repeat>,
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
            repeat: None,
        }
    }

    /// The same mapping with `flags`.
    #[must_use]
    pub const fn with_flags(mut self, flags: VaFlags) -> Self {
        self.flags = flags;
        self
    }

    /// The same mapping as a repeat of the window of `repeat.period()` units containing `offset`,
    /// starting at phase `offset mod period` (`None` for a plain mapping again). See [`Repeat`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "alloc")] {
    /// use gpuva::{BoxNode, GpuVm, Mapping, ObjId, Op, Repeat};
    /// let mut vm = GpuVm::<(), BoxNode<()>>::with_granule(0..1 << 32, 0..0, 0x1000)?.without_links();
    /// let (img, tile) = (ObjId::new(1), Repeat::new(0x1_0000));
    /// let mut claim = vm.reserve_boxed(2 * vm.bounds().map_obj)?;
    /// // A 1 MiB sparse image backed everywhere by the 64 KiB tile at offset 0x20_0000.
    /// vm.map(Mapping::new(0x100_0000, 0x10_0000, img, 0x20_0000).with_repeat(tile), &mut claim)?;
    /// // Bind a real page 0x3000 bytes in: the piece after it continues at phase 0x4000.
    /// let ops = vm.sm_map_ops(Mapping::new(0x100_3000, 0x1000, ObjId::new(2), 0))?;
    /// let Op::Remap { prev, next, .. } = ops.ops()[0] else { unreachable!() };
    /// let next = next.ok_or("a next piece")?;
    /// assert_eq!((prev.map(|p| p.offset), next.offset), (Some(0x20_0000), 0x20_4000));
    /// assert_eq!(next.repeat, tile);
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub const fn with_repeat(mut self, repeat: Option<Repeat>) -> Self {
        self.repeat = repeat;
        self
    }

    /// The object offset `k` address units after `addr` (`k` may be a wrapped negative distance):
    /// `offset + k` for a plain mapping (wrapping, as drm_gpuvm), the window start plus
    /// `(phase + k) mod period` for a repeat mapping.
    #[must_use]
    pub const fn offset_after(&self, k: u64) -> u64 {
        match self.repeat {
            None => self.offset.wrapping_add(k),
            Some(r) => r.advance(self.offset, k),
        }
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
    /// has an object at all: drm_gpuvm's `keep` predicate (`docs/semantics.md`, "The keep rule").
    ///
    /// The comparison is `offset - addr` modulo 2^64, so it holds for overlapping and
    /// non-overlapping ranges alike. Two repeat mappings translate alike iff they repeat the same
    /// window (same object, period and window start) at congruent phases (`offset - addr` equal
    /// modulo the period); a repeat and a plain mapping never count as the same backing.
    #[must_use]
    pub fn same_backing(&self, other: &Mapping) -> bool {
        let shift = |m: &Mapping| m.offset.wrapping_sub(m.addr);
        self.obj.is_some()
            && self.obj == other.obj
            && match (self.repeat, other.repeat) {
                (None, None) => shift(self) == shift(other),
                (Some(a), Some(b)) => {
                    a == b
                        && a.window_start(self.offset) == a.window_start(other.offset)
                        && a.phase(shift(self)) == a.phase(shift(other))
                }
                _ => false,
            }
    }
}

/// What the mapping tree stores per entry besides the key (the start address) and the flags
/// (which live in the leaf's tag column: see `btree/leaf.rs`).
pub(crate) struct VaVal<D> {
    pub(crate) len: u64,
    pub(crate) offset: u64,
    pub(crate) obj: Option<ObjId>,
    pub(crate) data: D,
}

impl<D> VaVal<D> {
    pub(crate) fn mapping(&self, addr: u64, tag: Tag) -> Mapping {
        Mapping {
            addr,
            len: self.len,
            obj: self.obj,
            offset: self.offset,
            flags: tag.flags(),
            repeat: tag.repeat(),
        }
    }
}

/// A mapping leaf entry's tag: the flags in bits 0 to 25, and in bits 26 to 31 the repeat code
/// (`log2(period) + 1`, 0 for a plain mapping). Four bytes, like the flags alone.
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub(crate) struct Tag(u32);

impl Tag {
    pub(crate) const fn of(m: &Mapping) -> Self {
        let code = match m.repeat {
            Some(r) => r.code(),
            None => 0,
        };
        Self(m.flags.bits() | code << VaFlags::RESERVED_SHIFT)
    }

    pub(crate) const fn flags(self) -> VaFlags {
        VaFlags::from_bits(self.0)
    }

    pub(crate) const fn repeat(self) -> Option<Repeat> {
        Repeat::from_code(self.0 >> VaFlags::RESERVED_SHIFT)
    }

    /// The same tag with other flags (the repeat code stays).
    pub(crate) const fn with_flags(self, f: VaFlags) -> Self {
        Self(self.0 & !VaFlags::MASK | f.bits())
    }
}

/// A live mapping of a [`GpuVm`](crate::GpuVm), as seen from outside: the mapping and a
/// reference to its driver payload.
///
/// Mappings are stored inline in the leaves of the VA space's B+tree, so this is a view made on
/// the fly, not a node.
pub struct GpuVa<'a, D> {
    mapping: Mapping,
    data: &'a D,
}

impl<D> Clone for GpuVa<'_, D> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<D> Copy for GpuVa<'_, D> {}

impl<'a, D> GpuVa<'a, D> {
    pub(crate) fn new(mapping: Mapping, data: &'a D) -> Self {
        Self { mapping, data }
    }

    /// First address.
    #[must_use]
    pub fn addr(&self) -> u64 {
        self.mapping.addr
    }

    /// Length (never zero for a live mapping).
    #[must_use]
    pub fn length(&self) -> u64 {
        self.mapping.len
    }

    /// One past the last address.
    #[must_use]
    pub fn end(&self) -> u64 {
        self.mapping.end()
    }

    /// `addr..end`.
    #[must_use]
    pub fn range(&self) -> Range<u64> {
        self.mapping.range()
    }

    /// Backing object, if any.
    #[must_use]
    pub fn obj(&self) -> Option<ObjId> {
        self.mapping.obj
    }

    /// Offset of `addr` in the backing object.
    #[must_use]
    pub fn offset(&self) -> u64 {
        self.mapping.offset
    }

    /// Flags.
    #[must_use]
    pub fn flags(&self) -> VaFlags {
        self.mapping.flags
    }

    /// The repeat period of a repeat mapping (see [`Repeat`]).
    #[must_use]
    pub fn repeat(&self) -> Option<Repeat> {
        self.mapping.repeat
    }

    /// The mapping as a plain value.
    #[must_use]
    pub fn mapping(&self) -> Mapping {
        self.mapping
    }

    /// The driver payload.
    #[must_use]
    pub fn data(&self) -> &'a D {
        self.data
    }
}

impl<D: fmt::Debug> fmt::Debug for GpuVa<'_, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuVa")
            .field("range", &self.range())
            .field("obj", &self.mapping.obj)
            .field("offset", &self.mapping.offset)
            .field("flags", &self.mapping.flags)
            .field("repeat", &self.mapping.repeat)
            .field("data", &self.data)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-entry figure the crate docs quote: 24 bytes of value plus an 8-byte key and a
    /// 4-byte flags tag.
    #[test]
    fn entry_value_is_24_bytes_on_64_bit() {
        if core::mem::size_of::<usize>() == 8 {
            assert_eq!(core::mem::size_of::<VaVal<()>>(), 24);
        }
    }
}
