//! VMSAv8-64 stage-1 descriptors: attributes, encoding and decoding.
//!
//! Layout (VMSAv8-64 stage 1, as Linux's io-pgtable encodes `ARM_64_LPAE_S1`):
//!
//! ```text
//!  63  55 54 53 52   48 47             g  11 10  9 8  7   6   5  4    2  1 0
//! | ign |UXN|PXN| res | output address | nG| AF | SH |AP2|AP1|NS|AttrIndx|type|
//! ```
//!
//! * type `x0` invalid; `01` block (levels where the format allows blocks); `11` table at levels
//!   0..=2 or page at level 3;
//! * `AttrIndx` 0 = non-cacheable, 1 = write-back cacheable, 2 = device (io-pgtable's MAIR slots);
//! * AP\[1] (unprivileged access) is always set, as io-pgtable does without `IOMMU_PRIV`;
//!   AP\[2] is read-only;
//! * AF is always set, so access-flag faults never happen;
//! * no-execute sets both PXN and UXN.

use core::fmt;

use crate::addr::PhysAddr;
use crate::format::Format;
use crate::level::Level;

const TYPE_MASK: u64 = 0b11;
const TYPE_BLOCK: u64 = 0b01;
const TYPE_TABLE_OR_PAGE: u64 = 0b11;
const ATTR_INDX_SHIFT: u32 = 2;
const ATTR_INDX_MASK: u64 = 0b111 << ATTR_INDX_SHIFT;
const AP_UNPRIV: u64 = 1 << 6;
const AP_RDONLY: u64 = 1 << 7;
const SH_SHIFT: u32 = 8;
const SH_MASK: u64 = 0b11 << SH_SHIFT;
const AF: u64 = 1 << 10;
const NG: u64 = 1 << 11;
const PXN: u64 = 1 << 53;
const UXN: u64 = 1 << 54;
const XN: u64 = PXN | UXN;

/// Memory type, stored as the `AttrIndx` MAIR slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum MemType {
    /// Normal memory, non-cacheable (slot 0; panthor's `UNCACHED`).
    NonCached,
    /// Normal memory, write-back cacheable (slot 1).
    #[default]
    Cached,
    /// Device memory (slot 2).
    Device,
}

impl MemType {
    /// Every memory type, for tests.
    pub const ALL: [MemType; 3] = [MemType::NonCached, MemType::Cached, MemType::Device];

    const fn index(self) -> u64 {
        match self {
            Self::NonCached => 0,
            Self::Cached => 1,
            Self::Device => 2,
        }
    }

    const fn from_index(i: u64) -> Option<Self> {
        match i {
            0 => Some(Self::NonCached),
            1 => Some(Self::Cached),
            2 => Some(Self::Device),
            _ => None,
        }
    }
}

/// Shareability (`SH`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Shareability {
    /// Non-shareable (`00`).
    Non,
    /// Outer shareable (`10`).
    Outer,
    /// Inner shareable (`11`); with Mali MEMATTR this means GPU-internal shareable.
    #[default]
    Inner,
}

impl Shareability {
    /// Every shareability, for tests.
    pub const ALL: [Shareability; 3] =
        [Shareability::Non, Shareability::Outer, Shareability::Inner];

    const fn bits(self) -> u64 {
        match self {
            Self::Non => 0b00,
            Self::Outer => 0b10,
            Self::Inner => 0b11,
        }
    }

    const fn from_bits(b: u64) -> Option<Self> {
        match b {
            0b00 => Some(Self::Non),
            0b10 => Some(Self::Outer),
            0b11 => Some(Self::Inner),
            _ => None,
        }
    }
}

/// Leaf attributes.
///
/// The default is read-write, executable, cacheable, inner-shareable and not global (nG set,
/// as io-pgtable always does for stage 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Attrs {
    /// Read-only (AP\[2]).
    pub read_only: bool,
    /// No-execute (PXN and UXN both set).
    pub no_exec: bool,
    /// Memory type (`AttrIndx`).
    pub mem: MemType,
    /// Shareability (`SH`).
    pub share: Shareability,
    /// Not global (`nG`).
    pub non_global: bool,
}

impl Default for Attrs {
    fn default() -> Self {
        Self {
            read_only: false,
            no_exec: false,
            mem: MemType::Cached,
            share: Shareability::Inner,
            non_global: true,
        }
    }
}

impl Attrs {
    /// The attribute bits of a leaf, excluding type and output address. AF and AP\[1] are always
    /// set.
    #[must_use]
    pub const fn bits(self) -> u64 {
        let mut b = AF | AP_UNPRIV;
        b |= self.mem.index() << ATTR_INDX_SHIFT;
        b |= self.share.bits() << SH_SHIFT;
        if self.read_only {
            b |= AP_RDONLY;
        }
        if self.no_exec {
            b |= XN;
        }
        if self.non_global {
            b |= NG;
        }
        b
    }

    /// Decodes the attribute bits of a leaf; `None` if a field holds a value this crate never
    /// writes (reserved shareability, unknown `AttrIndx`, one XN bit only, AF clear).
    #[must_use]
    pub const fn from_bits(raw: u64) -> Option<Self> {
        if raw & AF == 0 {
            return None;
        }
        let xn = raw & XN;
        if xn != 0 && xn != XN {
            return None;
        }
        let Some(mem) = MemType::from_index((raw & ATTR_INDX_MASK) >> ATTR_INDX_SHIFT) else {
            return None;
        };
        let Some(share) = Shareability::from_bits((raw & SH_MASK) >> SH_SHIFT) else {
            return None;
        };
        Some(Self {
            read_only: raw & AP_RDONLY != 0,
            no_exec: xn == XN,
            mem,
            share,
            non_global: raw & NG != 0,
        })
    }
}

/// A raw 64-bit descriptor, as stored in a table frame.
///
/// `#[repr(transparent)]` over `u64`, so a [`TableMemory`](crate::TableMemory) implementation
/// may view a frame's memory as `[Pte]` (the little-endian byte order the GPU reads is the host's
/// on every platform this crate targets). [`Pte::INVALID`] (all zero) is the empty entry.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct Pte(u64);

impl Pte {
    /// The invalid descriptor.
    pub const INVALID: Pte = Pte(0);

    /// Wraps raw descriptor bits.
    #[must_use]
    pub const fn from_raw(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw descriptor bits.
    #[must_use]
    pub const fn as_raw(self) -> u64 {
        self.0
    }

    /// Whether the valid bit (bit 0) is set.
    #[must_use]
    pub const fn is_valid(self) -> bool {
        self.0 & 1 != 0
    }
}

impl fmt::Debug for Pte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pte({:#018x})", self.0)
    }
}

/// A decoded descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Desc {
    /// Bit 0 clear.
    Invalid,
    /// A next-level table at `pa`.
    Table {
        /// The table frame.
        pa: PhysAddr,
    },
    /// A page (level 3) or block.
    Leaf {
        /// Output address, aligned to the leaf size.
        pa: PhysAddr,
        /// Attributes.
        attrs: Attrs,
        /// Leaf size in bytes.
        size: u64,
    },
    /// Valid, but not something this format writes at this level (a block where the format
    /// allows none, type `01` at level 3, misaligned output address, unknown attribute values).
    Reserved,
}

/// Error returned by [`Format::encode_leaf`] and [`Format::encode_table`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The format allows no leaf (or no table) at this level.
    Level {
        /// The rejected level.
        level: Level,
    },
    /// The address is not aligned to the leaf size (or, for a table, the granule).
    Misaligned {
        /// The rejected address.
        pa: PhysAddr,
    },
    /// The address is at or beyond the format's output-address limit
    /// ([`Format::oa_limit`]).
    OutOfRange {
        /// The rejected address.
        pa: PhysAddr,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Level { level } => write!(f, "no such descriptor at level {level}"),
            Self::Misaligned { pa } => write!(f, "output address {:#x} misaligned", pa.as_u64()),
            Self::OutOfRange { pa } => {
                write!(f, "output address {:#x} beyond the pa width", pa.as_u64())
            }
        }
    }
}

impl core::error::Error for EncodeError {}

impl Format {
    /// Type and attribute bits of a leaf at `level` (no address); the walker ORs in the address.
    pub(crate) const fn leaf_bits(&self, level: Level, attrs: Attrs) -> u64 {
        let ty = if level.is_last() {
            TYPE_TABLE_OR_PAGE
        } else {
            TYPE_BLOCK
        };
        ty | attrs.bits()
    }

    /// A table descriptor without validation (the walker's frames are validated on entry).
    pub(crate) const fn table_raw(&self, pa: u64) -> u64 {
        (pa & self.oa_mask()) | TYPE_TABLE_OR_PAGE
    }

    /// Encodes a leaf (page at level 3, block above) mapping `pa` with `attrs`.
    ///
    /// # Errors
    ///
    /// [`EncodeError::Level`] where this format writes no leaf, [`EncodeError::Misaligned`] if
    /// `pa` is not aligned to the leaf size, [`EncodeError::OutOfRange`] at or past
    /// [`Format::oa_limit`].
    pub fn encode_leaf(
        &self,
        level: Level,
        pa: PhysAddr,
        attrs: Attrs,
    ) -> Result<Pte, EncodeError> {
        if !self.is_leaf_level(level) || level < self.start_level() {
            return Err(EncodeError::Level { level });
        }
        let raw = pa.as_u64();
        if raw >= self.oa_limit() {
            return Err(EncodeError::OutOfRange { pa });
        }
        if raw & (self.entry_size(level) - 1) != 0 {
            return Err(EncodeError::Misaligned { pa });
        }
        Ok(Pte(raw | self.leaf_bits(level, attrs)))
    }

    /// Encodes a table descriptor at `level` pointing at the frame `pa`.
    ///
    /// # Errors
    ///
    /// [`EncodeError::Level`] at level 3 or above the root, [`EncodeError::Misaligned`] if `pa`
    /// is not granule-aligned, [`EncodeError::OutOfRange`] at or past [`Format::oa_limit`].
    pub fn encode_table(&self, level: Level, pa: PhysAddr) -> Result<Pte, EncodeError> {
        if level.is_last() || level < self.start_level() {
            return Err(EncodeError::Level { level });
        }
        let raw = pa.as_u64();
        if raw >= self.oa_limit() {
            return Err(EncodeError::OutOfRange { pa });
        }
        if raw & (self.page_size() - 1) != 0 {
            return Err(EncodeError::Misaligned { pa });
        }
        Ok(Pte(self.table_raw(raw)))
    }

    /// Decodes a descriptor found at `level`. Total: every input has an answer.
    ///
    /// A leaf whose output address is at or beyond [`Format::oa_limit`] decodes as
    /// [`Desc::Reserved`]: this crate never writes one.
    #[must_use]
    pub fn decode(&self, level: Level, pte: Pte) -> Desc {
        let raw = pte.0;
        if raw & 1 == 0 {
            return Desc::Invalid;
        }
        if level < self.start_level() {
            return Desc::Reserved;
        }
        let ty = raw & TYPE_MASK;
        if !level.is_last() && ty == TYPE_TABLE_OR_PAGE {
            return Desc::Table {
                pa: PhysAddr::new(raw & self.oa_mask()),
            };
        }
        let is_leaf_type = if level.is_last() {
            ty == TYPE_TABLE_OR_PAGE
        } else {
            ty == TYPE_BLOCK
        };
        if !is_leaf_type || !self.is_leaf_level(level) {
            return Desc::Reserved;
        }
        let size = self.entry_size(level);
        let oa = raw & self.oa_mask();
        if oa & (size - 1) != 0 || oa >= self.oa_limit() {
            return Desc::Reserved;
        }
        match Attrs::from_bits(raw) {
            Some(attrs) => Desc::Leaf {
                pa: PhysAddr::new(oa),
                attrs,
                size,
            },
            None => Desc::Reserved,
        }
    }
}

/// Every combination of [`Attrs`] fields (72), for exhaustive round-trip tests.
pub fn all_attrs() -> impl Iterator<Item = Attrs> {
    MemType::ALL.into_iter().flat_map(|mem| {
        Shareability::ALL.into_iter().flat_map(move |share| {
            (0u8..8).map(move |bits| Attrs {
                read_only: bits & 1 != 0,
                no_exec: bits & 2 != 0,
                non_global: bits & 4 != 0,
                mem,
                share,
            })
        })
    })
}
