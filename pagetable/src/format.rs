//! Page-table formats: granule, VA width, output-address width, levels and allowed leaf sizes.
//!
//! A [`Format`] is a small runtime value rather than a type-level marker because the VA and PA
//! widths come from the GPU's `MMU_FEATURES` register and the allowed block sizes are policy;
//! every table operation takes its geometry from here.
//!
//! Geometry (the rules Linux's io-pgtable applies to `ARM_64_LPAE_S1`): a descriptor is 8 bytes,
//! so a table of one granule `2^g` holds `2^(g-3)` entries and resolves `b = g - 3` VA bits; the
//! number of levels is `ceil((va_bits - g) / b)`, the walk starts at level `4 - levels` and the
//! root table may be partial. An entry at level `k` spans `2^(g + (3-k)·b)` bytes.
//!
//! ```text
//! 4 KiB granule, 48-bit VA:
//!   L0 (root, 512 entries) -> 512 GiB each
//!   L1 (512 entries)       ->   1 GiB each   (block allowed)
//!   L2 (512 entries)       ->   2 MiB each   (block allowed; panthor's largest leaf)
//!   L3 (512 entries)       ->   4 KiB pages
//! ```

use core::fmt;

use crate::level::Level;

/// Translation granule: the page size, and the size of every table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Granule {
    /// 4 KiB pages, 512 entries per table; leaves of 4 KiB, 2 MiB (L2) and 1 GiB (L1).
    K4,
    /// 16 KiB pages, 2048 entries per table; leaves of 16 KiB and 32 MiB (L2).
    K16,
    /// 64 KiB pages, 8192 entries per table; leaves of 64 KiB and 512 MiB (L2).
    K64,
}

impl Granule {
    /// All granules, for tests and tools.
    pub const ALL: [Granule; 3] = [Granule::K4, Granule::K16, Granule::K64];

    /// log2 of the granule size.
    #[must_use]
    pub const fn shift(self) -> u32 {
        match self {
            Self::K4 => 12,
            Self::K16 => 14,
            Self::K64 => 16,
        }
    }

    /// The granule (page and table) size in bytes.
    #[must_use]
    pub const fn size(self) -> u64 {
        1 << self.shift()
    }

    /// Entries in one full table (`size / 8`).
    #[must_use]
    pub const fn entries(self) -> usize {
        1 << (self.shift() - 3)
    }

    /// VA bits resolved per level.
    #[must_use]
    pub const fn bits_per_level(self) -> u32 {
        self.shift() - 3
    }

    /// The lowest level at which VMSAv8-64 (48-bit OA) allows a block with this granule.
    #[must_use]
    pub const fn min_block_level_arch(self) -> Level {
        match self {
            Self::K4 => Level::L1,
            Self::K16 | Self::K64 => Level::L2,
        }
    }
}

/// Error returned by [`Format::new`], [`Format::with_largest_leaf`] and
/// [`Format::with_oa_bits`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatError {
    /// The VA width is outside 32..=48 bits.
    VaBits {
        /// The rejected width.
        va_bits: u8,
    },
    /// The output-address width is outside 32..=48 bits.
    OaBits {
        /// The rejected width.
        oa_bits: u8,
    },
    /// The leaf size is not a page or block size this granule and VA width allow.
    LeafSize {
        /// The rejected size.
        size: u64,
    },
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::VaBits { va_bits } => write!(f, "unsupported va width {va_bits} (32..=48)"),
            Self::OaBits { oa_bits } => write!(f, "unsupported pa width {oa_bits} (32..=48)"),
            Self::LeafSize { size } => write!(f, "leaf size {size:#x} not allowed for this format"),
        }
    }
}

impl core::error::Error for FormatError {}

/// A VMSAv8-64 stage-1 table format: granule, VA width, output-address width and the allowed
/// leaf sizes.
///
/// # Invariants
///
/// `32 <= va_bits <= 48`; `32 <= oa_bits <= 48`; `start_level = 4 - levels`;
/// `min_block_level` is in `max(start_level, granule minimum)..=3` (3 means pages only). Leaf
/// levels are exactly `min_block_level..=3`, so splitting a block always yields leaves one level
/// down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Format {
    granule: Granule,
    va_bits: u8,
    oa_bits: u8,
    start_level: Level,
    min_block_level: Level,
}

/// Widest output address a descriptor holds: 48 bits (bits `[47:g]`).
pub const OA_BITS: u32 = 48;

impl Format {
    /// A format with every block size the granule allows (4K: 2 MiB and 1 GiB; 16K: 32 MiB;
    /// 64K: 512 MiB) and a 48-bit output address.
    ///
    /// # Errors
    ///
    /// [`FormatError::VaBits`] unless `32 <= va_bits <= 48`.
    pub const fn new(granule: Granule, va_bits: u8) -> Result<Self, FormatError> {
        if va_bits < 32 || va_bits > 48 {
            return Err(FormatError::VaBits { va_bits });
        }
        let g = granule.shift();
        let b = granule.bits_per_level();
        let levels = (va_bits as u32 - g).div_ceil(b);
        // levels is 2..=4 for the accepted widths.
        let start_level = match levels {
            4 => Level::L0,
            3 => Level::L1,
            _ => Level::L2,
        };
        let arch = granule.min_block_level_arch();
        let min_block_level = if arch.as_u8() > start_level.as_u8() {
            arch
        } else {
            start_level
        };
        Ok(Self {
            granule,
            va_bits,
            oa_bits: 48,
            start_level,
            min_block_level,
        })
    }

    /// panthor's configuration: 4 KiB granule, leaves of 4 KiB and 2 MiB, 48-bit output
    /// addresses (narrow it to the GPU's PA width with [`Format::with_oa_bits`]).
    ///
    /// # Errors
    ///
    /// [`FormatError::VaBits`] unless `32 <= va_bits <= 48`.
    pub const fn panthor(va_bits: u8) -> Result<Self, FormatError> {
        match Self::new(Granule::K4, va_bits) {
            Ok(f) => f.with_largest_leaf(1 << 21),
            Err(e) => Err(e),
        }
    }

    /// Restricts (or widens) the allowed leaves to every size up to `size`.
    ///
    /// # Errors
    ///
    /// [`FormatError::LeafSize`] if `size` is not the page size or a block size the granule
    /// allows at a level this VA width has.
    pub const fn with_largest_leaf(self, size: u64) -> Result<Self, FormatError> {
        let mut n = 3u8;
        loop {
            let level = Level::ALL[n as usize];
            if n < self.start_level.as_u8()
                || n < self.granule.min_block_level_arch().as_u8() && n < 3
            {
                return Err(FormatError::LeafSize { size });
            }
            if self.entry_size(level) == size {
                return Ok(Self {
                    min_block_level: level,
                    ..self
                });
            }
            if n == 0 {
                return Err(FormatError::LeafSize { size });
            }
            n -= 1;
        }
    }

    /// Sets the output-address (physical-address) width: mappings of memory at or beyond
    /// `2^oa_bits` are refused, as io-pgtable refuses a PA beyond its `oas`. panthor passes the
    /// PA width from `MMU_FEATURES`.
    ///
    /// # Errors
    ///
    /// [`FormatError::OaBits`] unless `32 <= oa_bits <= 48`.
    pub const fn with_oa_bits(self, oa_bits: u8) -> Result<Self, FormatError> {
        if oa_bits < 32 || oa_bits > 48 {
            return Err(FormatError::OaBits { oa_bits });
        }
        Ok(Self { oa_bits, ..self })
    }

    /// The granule.
    #[must_use]
    pub const fn granule(&self) -> Granule {
        self.granule
    }

    /// VA width in bits.
    #[must_use]
    pub const fn va_bits(&self) -> u8 {
        self.va_bits
    }

    /// Output-address (PA) width in bits.
    #[must_use]
    pub const fn oa_bits(&self) -> u8 {
        self.oa_bits
    }

    /// One past the highest mappable VA (`2^va_bits`).
    #[must_use]
    pub const fn va_limit(&self) -> u64 {
        1 << self.va_bits
    }

    /// One past the highest physical address a descriptor may point at (`2^oa_bits`).
    #[must_use]
    pub const fn oa_limit(&self) -> u64 {
        1 << self.oa_bits
    }

    /// Number of levels walked.
    #[must_use]
    pub const fn levels(&self) -> u8 {
        4 - self.start_level.as_u8()
    }

    /// The level of the root table (L0 for 4K/48-bit, L1 for 64K/48-bit or 4K/39-bit).
    #[must_use]
    pub const fn start_level(&self) -> Level {
        self.start_level
    }

    /// The page size (granule size).
    #[must_use]
    pub const fn page_size(&self) -> u64 {
        self.granule.size()
    }

    /// The lowest (largest-leaf) level at which leaves are written; L3 means pages only.
    #[must_use]
    pub const fn min_block_level(&self) -> Level {
        self.min_block_level
    }

    /// The largest leaf this format writes.
    #[must_use]
    pub const fn largest_leaf(&self) -> u64 {
        self.entry_size(self.min_block_level)
    }

    /// Whether a leaf may be written at `level`.
    #[must_use]
    pub const fn is_leaf_level(&self, level: Level) -> bool {
        level.as_u8() >= self.min_block_level.as_u8()
    }

    /// log2 of the span of one entry at `level`.
    #[must_use]
    pub const fn entry_shift(&self, level: Level) -> u32 {
        self.granule.shift() + (3 - level.as_u8() as u32) * self.granule.bits_per_level()
    }

    /// Span in bytes of one entry at `level` (the leaf size there).
    #[must_use]
    pub const fn entry_size(&self, level: Level) -> u64 {
        1 << self.entry_shift(level)
    }

    /// Span in bytes of a whole table at `level` (for the root: the whole VA space).
    #[must_use]
    pub const fn table_span(&self, level: Level) -> u64 {
        match level.prev() {
            Some(up) if level.as_u8() > self.start_level.as_u8() => self.entry_size(up),
            _ => self.va_limit(),
        }
    }

    /// Entries used in a table at `level` (the root may be partial).
    #[must_use]
    pub const fn table_entries(&self, level: Level) -> usize {
        1 << self.table_bits(level)
    }

    /// log2 of [`Format::table_entries`].
    #[must_use]
    pub const fn table_bits(&self, level: Level) -> u32 {
        if level.as_u8() <= self.start_level.as_u8() {
            self.va_bits as u32 - self.entry_shift(self.start_level)
        } else {
            self.granule.bits_per_level()
        }
    }

    /// Index of `va` in a table at `level`.
    #[must_use]
    pub fn index(&self, va: u64, level: Level) -> usize {
        let mask = (1u64 << self.table_bits(level)) - 1;
        crate::addr::usize_from((va >> self.entry_shift(level)) & mask)
    }

    /// Descriptor output-address field for this granule: bits `[47:g]`.
    #[must_use]
    pub const fn oa_mask(&self) -> u64 {
        ((1u64 << OA_BITS) - 1) & !(self.granule.size() - 1)
    }
}
