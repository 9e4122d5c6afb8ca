//! Translation levels.
//!
//! VMSAv8-64 numbers the levels of a walk 0 (the top, 512 GiB per entry with a 4 KiB granule) to
//! 3 (pages). A short VA space starts lower (see [`Format::start_level`](crate::Format::start_level)),
//! so a walk covers `start_level..=3`; only level 3 holds pages, blocks sit above it.

use core::fmt;

/// A translation level, 0 to 3 (`Level::L3` holds pages; tables and blocks sit above it).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Level(u8);

impl Level {
    /// Level 0: only ever a root table (4 KiB or 16 KiB granule with a 48-bit VA).
    pub const L0: Level = Level(0);
    /// Level 1: 1 GiB entries with a 4 KiB granule.
    pub const L1: Level = Level(1);
    /// Level 2: 2 MiB entries with a 4 KiB granule.
    pub const L2: Level = Level(2);
    /// Level 3: pages.
    pub const L3: Level = Level(3);
    /// Every level, top first.
    pub const ALL: [Level; 4] = [Level::L0, Level::L1, Level::L2, Level::L3];

    /// The level numbered `n`, if `n <= 3`.
    #[must_use]
    pub const fn new(n: u8) -> Option<Level> {
        if n <= 3 {
            Some(Level(n))
        } else {
            None
        }
    }

    /// The level's number, 0 to 3.
    #[must_use]
    pub const fn as_u8(self) -> u8 {
        self.0
    }

    /// The level's number as an index (into [`TableCount::per_level`](crate::TableCount) and
    /// the like).
    #[must_use]
    pub const fn index(self) -> usize {
        self.0 as usize
    }

    /// Whether this is level 3, the page level (no tables below it).
    #[must_use]
    pub const fn is_last(self) -> bool {
        self.0 == 3
    }

    /// The level one step down the walk (towards pages); `None` at level 3.
    #[must_use]
    pub const fn next(self) -> Option<Level> {
        if self.0 < 3 {
            Some(Level(self.0 + 1))
        } else {
            None
        }
    }

    /// The level one step up; `None` at level 0.
    #[must_use]
    pub const fn prev(self) -> Option<Level> {
        if self.0 > 0 {
            Some(Level(self.0 - 1))
        } else {
            None
        }
    }

    /// One step down, for a walker that has already checked `!self.is_last()` (stays at 3).
    pub(crate) const fn child(self) -> Level {
        debug_assert!(self.0 < 3, "no level below 3");
        if self.0 < 3 {
            Level(self.0 + 1)
        } else {
            self
        }
    }
}

impl fmt::Debug for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "L{}", self.0)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "L{}", self.0)
    }
}
