//! Worst-case reservations: `Bound_map`, `Bound_unmap`, the per-job union, and panthor's formula.
//!
//! All bounds are pure functions of (request, backing layout, format): no page-table state goes
//! in, because a queued job runs against a state nobody knows at submit time (earlier queued jobs
//! may map or unmap anything first).
//!
//! * **map**: for every level `k` below the root, count the level-`k` table windows in which the
//!   map puts a leaf at level `k` or deeper. It is computed by the map walker itself running
//!   over absent tables, so a window that will hold a block costs nothing below it. With
//!   4 KiB-only backing this equals panthor's `N1 + N2 + N3`; with 2 MiB-contiguous backing the
//!   L3 term shrinks to the windows that really hold pages.
//! * **unmap / protect**: new tables are needed only to split blocks straddling an end: for
//!   each end not aligned to a table span `S_k` where a block one level up is allowed, one
//!   level-`k` table; windows shared by both ends count once.
//! * **job**: the sum of per-op bounds is always safe. [`job_bound`] takes the per-level union
//!   of windows across a *group* of ops instead. A group ends at a protect, and at an unmap (or
//!   the clear half of a [`JobOp::Replace`]) whose range overlaps a map of the group; other
//!   unmaps go on in the group, their split tables counted as a second per-level union (a block
//!   is split at most once per group: only a map could put one back, and a clear of it would
//!   end the group). Sound because a table is retired only
//!   when nothing is left mapped under it: every table the group's maps created holds a leaf of
//!   one of those maps, and no clear inside the group touches any of them, so each such table
//!   lives until the group ends and is counted once. A clear that does overlap a map of the
//!   group may retire a table a later op then needs again; the next group counts it again.

use crate::addr::{Chunk, VirtAddr};
use crate::error::BoundError;
use crate::format::Format;
use crate::level::Level;
use crate::request::{split_need, validate_map, validate_range, Cursor};
use crate::walk::{map_walk, Absent};

/// A frame count per table level (index = level number; index 0 is always 0 since level-0
/// tables are only ever roots).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableCount {
    /// Frames per level.
    pub per_level: [u64; 4],
}

impl TableCount {
    /// Total frames.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.per_level.iter().sum()
    }

    /// Frames at `level`.
    #[must_use]
    pub fn at(&self, level: Level) -> u64 {
        self.per_level.get(level.index()).copied().unwrap_or(0)
    }

    fn add(&mut self, level: Level) {
        if let Some(c) = self.per_level.get_mut(level.index()) {
            *c += 1;
        }
    }
}

impl core::ops::Add for TableCount {
    type Output = TableCount;

    fn add(mut self, rhs: TableCount) -> TableCount {
        for (a, b) in self.per_level.iter_mut().zip(rhs.per_level) {
            *a += b;
        }
        self
    }
}

/// Runs the map walker over absent tables, calling `on_table(level, window_start)` for every
/// table the map would create.
fn plan_absent(
    fmt: &Format,
    va: VirtAddr,
    backing: &[Chunk],
    on_table: impl FnMut(Level, u64) -> Result<(), BoundError>,
) -> Result<(), BoundError> {
    let len = validate_map(fmt, va, backing)?;
    let s = va.as_u64();
    let mut pass = Absent { fmt, on_table };
    map_walk(
        &mut pass,
        (),
        fmt.start_level(),
        s..s + len,
        &mut Cursor::new(backing),
    )
}

/// `Bound_map`: the most new tables mapping `backing` at `va` can need, over every table state.
///
/// Exact for a map into an unpopulated region (tightness), never exceeded otherwise
/// (sufficiency).
///
/// # Errors
///
/// The request is invalid, as [`PageTable::map`](crate::PageTable::map) would find.
///
/// # Examples
///
/// ```
/// use pagetable::{map_bound, panthor_map_bound, Chunk, Format, PhysAddr, VirtAddr};
///
/// let fmt = Format::panthor(48)?;
/// let va = VirtAddr::new(0x1_0000_0000);
/// // 1 GiB of 2 MiB-aligned memory: 512 blocks under one new L1 and one new L2 table.
/// let blocks = [Chunk::new(PhysAddr::new(0x80_0000_0000), 1 << 30)];
/// assert_eq!(map_bound(&fmt, va, &blocks)?.per_level, [0, 1, 1, 0]);
/// // panthor reserves an L3 table per 2 MiB window as well.
/// assert_eq!(panthor_map_bound(&fmt, va, 1 << 30)?, 514);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn map_bound(fmt: &Format, va: VirtAddr, backing: &[Chunk]) -> Result<TableCount, BoundError> {
    let mut c = TableCount::default();
    plan_absent(fmt, va, backing, |level, _| {
        c.add(level);
        Ok(())
    })?;
    Ok(c)
}

fn unmap_windows(
    fmt: &Format,
    va: VirtAddr,
    len: u64,
    on_table: &mut impl FnMut(Level, u64),
) -> Result<(), BoundError> {
    validate_range(fmt, va, len)?;
    let (a, b) = (va.as_u64(), va.as_u64() + len);
    // The worst case: the largest allowed block around each end. Splitting it needs one table
    // per level down to the first level at which the end is aligned.
    let top = fmt.min_block_level();
    if top.is_last() {
        return Ok(());
    }
    let size = fmt.entry_size(top);
    let wa = a & !(size - 1);
    let wb = (b - 1) & !(size - 1);
    if a != wa || b < wa + size {
        split_need(fmt, top, a, b.min(wa + size), on_table);
    }
    if wb != wa && b != wb + size {
        split_need(fmt, top, wb, b, on_table);
    }
    Ok(())
}

/// `Bound_unmap`: the most tables unmapping `[va, va + len)` can need (block splits at the
/// ends). Also the bound for [`PageTable::protect`](crate::PageTable::protect).
///
/// # Errors
///
/// The range is invalid, as [`PageTable::unmap`](crate::PageTable::unmap) would find.
///
/// # Examples
///
/// ```
/// use pagetable::{unmap_bound, Format, Granule, VirtAddr};
///
/// let panthor = Format::panthor(48)?;
/// // Both ends inside (different) 2 MiB blocks: one L3 table each.
/// assert_eq!(unmap_bound(&panthor, VirtAddr::new(0x1F_F000), 0x2000)?.per_level, [0, 0, 0, 2]);
/// // With 1 GiB blocks, an end inside a 1 GiB block needs an L2 and an L3 table.
/// let gib = Format::new(Granule::K4, 48)?;
/// assert_eq!(unmap_bound(&gib, VirtAddr::new(0x4000_1000), 0x1000)?.per_level, [0, 0, 1, 1]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn unmap_bound(fmt: &Format, va: VirtAddr, len: u64) -> Result<TableCount, BoundError> {
    let mut c = TableCount::default();
    unmap_windows(fmt, va, len, &mut |level, _| c.add(level))?;
    Ok(c)
}

/// `ALIGN(x, 2^shift)`: round up.
const fn align_up(x: u64, shift: u32) -> u64 {
    let m = (1u64 << shift) - 1;
    (x + m) & !m
}

/// `ALIGN_DOWN(x, 2^shift)`.
const fn align_down(x: u64, shift: u32) -> u64 {
    x & !((1u64 << shift) - 1)
}

/// panthor's map reservation, exactly as the kernel computes it (`panthor_vm_prepare_map_op_ctx`):
/// one table per 512 GiB, 1 GiB and 2 MiB window the range touches,
/// `N(39) + N(30) + N(21)` with `N(s) = (ALIGN(va + len, 2^s) - ALIGN_DOWN(va, 2^s)) >> s`.
///
/// The constants are the kernel's (4 KiB granule, 48-bit VA); `fmt` only validates the range.
/// For a VA space of 39 bits or less the kernel still counts an L1 table that such a table
/// never has.
///
/// # Errors
///
/// The range is invalid.
pub fn panthor_map_bound(fmt: &Format, va: VirtAddr, len: u64) -> Result<u64, BoundError> {
    validate_range(fmt, va, len)?;
    let (a, b) = (va.as_u64(), va.as_u64() + len);
    // OVERFLOW: `b <= va_limit <= 2^48`, so rounding up to 2^39 cannot wrap.
    Ok([39u32, 30, 21]
        .iter()
        .map(|&s| (align_up(b, s) - align_down(a, s)) >> s)
        .sum())
}

/// panthor's unmap reservation, exactly as the kernel computes it
/// (`panthor_vm_prepare_unmap_op_ctx`): one L3 table if `va` is not 2 MiB-aligned, one more if
/// `va + len` is not and `ALIGN(va + len, 2 MiB) != ALIGN(va, 2 MiB)`.
///
/// `ALIGN` rounds up, so a 2 MiB-aligned `va` whose unaligned end lies in the same 2 MiB window
/// still counts 1 (the block around the end may need a split).
///
/// # Errors
///
/// The range is invalid.
pub fn panthor_unmap_bound(fmt: &Format, va: VirtAddr, len: u64) -> Result<u64, BoundError> {
    validate_range(fmt, va, len)?;
    let (a, b) = (va.as_u64(), va.as_u64() + len);
    let mut n = 0;
    if a != align_up(a, 21) {
        n += 1;
    }
    if b != align_up(b, 21) && align_up(b, 21) != align_up(a, 21) {
        n += 1;
    }
    Ok(n)
}

/// One operation of a job, for [`job_bound`].
#[derive(Clone, Copy, Debug)]
pub enum JobOp<'a> {
    /// A map of `backing` at `va` (into a range the job knows is empty).
    Map {
        /// First VA.
        va: VirtAddr,
        /// The backing, in VA order.
        backing: &'a [Chunk],
    },
    /// An unmap of the range `backing` covers at `va` (whatever is there), then a map of
    /// `backing` there: what a bind of a possibly occupied range does. Counted as the unmap's
    /// splits plus the map's tables, the map sharing its tables with the job's other maps
    /// (see [`job_bound`]).
    Replace {
        /// First VA.
        va: VirtAddr,
        /// The backing, in VA order.
        backing: &'a [Chunk],
    },
    /// An unmap of `[va, va + len)`.
    Unmap {
        /// First VA.
        va: VirtAddr,
        /// Length.
        len: u64,
    },
    /// A protect of `[va, va + len)`.
    Protect {
        /// First VA.
        va: VirtAddr,
        /// Length.
        len: u64,
    },
}

/// A run of consecutive table windows at one level: scratch element for [`job_bound`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct WindowRun {
    level: u8,
    first: u64,
    last: u64,
}

/// The reservation for a whole job: per-level union of windows over each group of ops (see the
/// module docs: a group ends at a protect, or at a clear overlapping one of its maps), the
/// union of the split windows of its unmaps and replaces, and the split bound of every protect.
/// Never more than the sum of the per-op bounds ([`sum_bound`]).
///
/// `scratch` holds window runs while a group is merged (one run per level per stretch of
/// consecutive windows; a map of uniformly backed memory needs at most 3 or 4) and the VA
/// ranges of the group's maps (one per map, or per stretch of contiguous maps).
///
/// # Errors
///
/// An invalid op, or [`BoundError::ScratchFull`] if `scratch` is too small.
///
/// # Examples
///
/// ```
/// use pagetable::{job_bound, sum_bound, Chunk, Format, JobOp, PhysAddr, VirtAddr, WindowRun};
///
/// let fmt = Format::panthor(48)?;
/// let (a, b) = ([Chunk::new(PhysAddr::new(0x1000_0000), 0x10000)],
///               [Chunk::new(PhysAddr::new(0x2000_0000), 0x10000)]);
/// // Two small maps in the same 2 MiB window share their L1, L2 and L3 tables.
/// let ops = [JobOp::Map { va: VirtAddr::new(0x10_0000), backing: &a },
///            JobOp::Map { va: VirtAddr::new(0x11_0000), backing: &b }];
/// let mut scratch = [WindowRun::default(); 8];
/// assert_eq!(job_bound(&fmt, &ops, &mut scratch)?.total(), 3);
/// assert_eq!(sum_bound(&fmt, &ops)?.total(), 6);
/// // As replaces of disjoint ranges they still share them, and the one 2 MiB block they may
/// // split (one L3 table).
/// let ops = [JobOp::Replace { va: VirtAddr::new(0x10_0000), backing: &a },
///            JobOp::Replace { va: VirtAddr::new(0x11_0000), backing: &b }];
/// assert_eq!(job_bound(&fmt, &ops, &mut scratch)?.total(), 3 + 1);
/// assert_eq!(sum_bound(&fmt, &ops)?.total(), 6 + 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn job_bound(
    fmt: &Format,
    ops: &[JobOp<'_>],
    scratch: &mut [WindowRun],
) -> Result<TableCount, BoundError> {
    let mut total = TableCount::default();
    let mut used = 0usize;
    for op in ops {
        match *op {
            JobOp::Map { va, backing } => {
                group_map(fmt, va, backing, scratch, &mut used)?;
            }
            JobOp::Replace { va, backing } => {
                let len = validate_map(fmt, va, backing)?;
                total = total + group_clear(fmt, va, len, scratch, &mut used)?;
                group_map(fmt, va, backing, scratch, &mut used)?;
            }
            JobOp::Unmap { va, len } => {
                total = total + group_clear(fmt, va, len, scratch, &mut used)?;
            }
            JobOp::Protect { va, len } => {
                total = total + union_count(scratch, &mut used);
                total = total + unmap_bound(fmt, va, len)?;
            }
        }
    }
    Ok(total + union_count(scratch, &mut used))
}

/// Marks a scratch entry holding the VA range `[first, last)` of a map of the group.
const RANGE: u8 = u8::MAX;

/// Flags a scratch run of windows of tables a clear of the group may create by a split.
///
/// Counted apart from the maps' windows: a split table holds no leaf of the group's maps, so a
/// later clear may retire it, and a later map must not count on it. A split at a window happens
/// at most once per group: the block it splits is gone afterwards, and only a map covering the
/// window could bring one back, whose clear would end the group.
const SPLIT: u8 = 0x80;

/// Adds a map's windows and its VA range to the group in `scratch[..used]`.
fn group_map(
    fmt: &Format,
    va: VirtAddr,
    backing: &[Chunk],
    scratch: &mut [WindowRun],
    used: &mut usize,
) -> Result<(), BoundError> {
    let len = validate_map(fmt, va, backing)?;
    plan_absent(fmt, va, backing, |level, ws| {
        let w = ws >> fmt.table_span(level).trailing_zeros();
        push_run(scratch, used, level.as_u8(), w, w + 1, true)
    })?;
    let s = va.as_u64();
    // Extend the previous range if this map continues it (a stretch of contiguous maps).
    push_run(scratch, used, RANGE, s, s + len, false)
}

/// Appends `[first, last]` at `level` (`[first, last)` for [`RANGE`]), or extends the newest
/// entry of that level if it continues it. `windows`: `last` is exclusive on input and stored
/// inclusive.
fn push_run(
    scratch: &mut [WindowRun],
    used: &mut usize,
    level: u8,
    first: u64,
    end: u64,
    windows: bool,
) -> Result<(), BoundError> {
    let last = if windows { end - 1 } else { end };
    // Extend the previous run at this level if contiguous (the walk is in VA order, so runs of
    // one map are produced sorted per level).
    let prev = scratch
        .get_mut(..*used)
        .and_then(|s| s.iter_mut().rev().find(|r| r.level == level));
    if let Some(r) = prev {
        let joins = if windows {
            r.last + 1 == first || r.last == first
        } else {
            r.last == first
        };
        if joins {
            r.last = last;
            return Ok(());
        }
    }
    let slot = scratch.get_mut(*used).ok_or(BoundError::ScratchFull)?;
    *slot = WindowRun { level, first, last };
    *used += 1;
    Ok(())
}

/// A clear of `[va, va + len)` inside the group: its split bound; the group ends first if the
/// range overlaps one of the group's maps (the clear may then retire a table they created).
fn group_clear(
    fmt: &Format,
    va: VirtAddr,
    len: u64,
    scratch: &mut [WindowRun],
    used: &mut usize,
) -> Result<TableCount, BoundError> {
    validate_range(fmt, va, len)?;
    let (a, b) = (va.as_u64(), va.as_u64() + len);
    let overlaps = scratch.get(..*used).is_some_and(|s| {
        s.iter()
            .any(|r| r.level == RANGE && r.first < b && a < r.last)
    });
    let mut c = TableCount::default();
    if overlaps {
        c = union_count(scratch, used);
    }
    // The split tables join the group's union of split windows.
    let mut res = Ok(());
    unmap_windows(fmt, va, len, &mut |level, ws| {
        if res.is_ok() {
            let w = ws >> fmt.table_span(level).trailing_zeros();
            res = push_run(scratch, used, SPLIT | level.as_u8(), w, w + 1, true);
        }
    })?;
    res.map(|()| c)
}

/// Counts the union of `scratch[..used]` per level and empties it.
fn union_count(scratch: &mut [WindowRun], used: &mut usize) -> TableCount {
    let mut c = TableCount::default();
    let Some(runs) = scratch.get_mut(..*used) else {
        return c;
    };
    runs.sort_unstable();
    let mut cur: Option<WindowRun> = None;
    for r in runs.iter().filter(|r| r.level != RANGE) {
        match cur {
            Some(ref mut x) if x.level == r.level && r.first <= x.last + 1 => {
                x.last = x.last.max(r.last)
            }
            _ => {
                if let Some(x) = cur {
                    add_run(&mut c, x);
                }
                cur = Some(*r);
            }
        }
    }
    if let Some(x) = cur {
        add_run(&mut c, x);
    }
    *used = 0;
    c
}

fn add_run(c: &mut TableCount, r: WindowRun) {
    if let Some(n) = c.per_level.get_mut(usize::from(r.level & !SPLIT)) {
        *n += r.last - r.first + 1;
    }
}

/// [`job_bound`] with scratch space allocated fallibly on the heap (feature `alloc`).
///
/// # Errors
///
/// As [`job_bound`]; [`BoundError::ScratchFull`] also if the scratch allocation fails.
#[cfg(feature = "alloc")]
pub fn job_bound_alloc(fmt: &Format, ops: &[JobOp<'_>]) -> Result<TableCount, BoundError> {
    let mut want = 16usize;
    loop {
        let mut v = alloc::vec::Vec::new();
        v.try_reserve_exact(want)
            .map_err(|_| BoundError::ScratchFull)?;
        v.extend(core::iter::repeat_n(WindowRun::default(), want));
        match job_bound(fmt, ops, &mut v) {
            Err(BoundError::ScratchFull) => {
                want = want.checked_mul(4).ok_or(BoundError::ScratchFull)?
            }
            r => return r,
        }
    }
}

/// Reserve needed for `ops` by summing per-op bounds (for comparison with [`job_bound`]).
///
/// # Errors
///
/// An invalid op.
pub fn sum_bound(fmt: &Format, ops: &[JobOp<'_>]) -> Result<TableCount, BoundError> {
    let mut t = TableCount::default();
    for op in ops {
        t = t + match *op {
            JobOp::Map { va, backing } => map_bound(fmt, va, backing)?,
            JobOp::Replace { va, backing } => {
                let len = validate_map(fmt, va, backing)?;
                map_bound(fmt, va, backing)? + unmap_bound(fmt, va, len)?
            }
            JobOp::Unmap { va, len } | JobOp::Protect { va, len } => unmap_bound(fmt, va, len)?,
        };
    }
    Ok(t)
}

/// Bytes covered by `backing` (saturating), a convenience for callers building requests.
#[must_use]
pub fn backing_len(backing: &[Chunk]) -> u64 {
    backing.iter().fold(0u64, |a, c| a.saturating_add(c.len))
}
