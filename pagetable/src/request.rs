//! Requests before any table is looked at: validation, the backing cursor, and split needs.
//!
//! Both the walker ([`crate::walk`]) and the reservation bounds ([`crate::bound`]) sit on this
//! module, so a request is checked, and a backing is cut into leaves, by one piece of code.

use crate::addr::{Chunk, VirtAddr};
use crate::format::Format;
use crate::level::Level;

/// Why a range request (unmap, protect, a bound) was refused before any table was looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RangeReq {
    Misaligned { va: VirtAddr, len: u64 },
    ZeroLength,
    OutOfRange,
}

/// Why a map request was refused before any table was looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MapReq {
    Range(RangeReq),
    BadChunk { index: usize },
    PaOutOfRange { index: usize },
}

/// A position in a backing: chunk `idx`, `off` bytes in.
///
/// # Invariants
///
/// `off < chunks[idx].len` unless the cursor is past the last chunk.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cursor<'a> {
    chunks: &'a [Chunk],
    idx: usize,
    off: u64,
}

impl<'a> Cursor<'a> {
    pub(crate) const fn new(chunks: &'a [Chunk]) -> Self {
        Self {
            chunks,
            idx: 0,
            off: 0,
        }
    }

    /// The physical address under the cursor (0 past the end).
    pub(crate) fn pa(&self) -> u64 {
        self.chunks
            .get(self.idx)
            .map_or(0, |c| c.pa.as_u64() + self.off)
    }

    /// Bytes left in the current chunk.
    pub(crate) fn remaining(&self) -> u64 {
        self.chunks.get(self.idx).map_or(0, |c| c.len - self.off)
    }

    /// Whether a block of `size` bytes fits here: PA aligned, and the chunk long enough
    /// (panthor's `get_pgsize` rule).
    pub(crate) fn fits(&self, size: u64) -> bool {
        self.pa() & (size - 1) == 0 && self.remaining() >= size
    }

    pub(crate) fn advance(&mut self, mut n: u64) {
        while n > 0 {
            let Some(c) = self.chunks.get(self.idx) else {
                return;
            };
            let r = c.len - self.off;
            if n < r {
                self.off += n;
                return;
            }
            n -= r;
            self.idx += 1;
            self.off = 0;
        }
    }
}

/// Validates a map request; returns its length.
///
/// Every chunk must be non-empty, page-aligned and end at or below the format's output-address
/// limit; the VA must be page-aligned and the range inside the VA space.
pub(crate) fn validate_map(fmt: &Format, va: VirtAddr, backing: &[Chunk]) -> Result<u64, MapReq> {
    let page = fmt.page_size();
    let mut len = 0u64;
    for (index, c) in backing.iter().enumerate() {
        if c.len == 0 || c.len & (page - 1) != 0 || c.pa.as_u64() & (page - 1) != 0 {
            return Err(MapReq::BadChunk { index });
        }
        match c.pa.as_u64().checked_add(c.len) {
            Some(end) if end <= fmt.oa_limit() => {}
            _ => return Err(MapReq::PaOutOfRange { index }),
        }
        len = len
            .checked_add(c.len)
            .ok_or(MapReq::Range(RangeReq::OutOfRange))?;
    }
    validate_range(fmt, va, len).map_err(MapReq::Range)?;
    Ok(len)
}

/// Validates an unmap/protect range (also the second half of [`validate_map`]).
pub(crate) fn validate_range(fmt: &Format, va: VirtAddr, len: u64) -> Result<(), RangeReq> {
    let page = fmt.page_size();
    if (va.as_u64() | len) & (page - 1) != 0 {
        return Err(RangeReq::Misaligned { va, len });
    }
    if len == 0 {
        return Err(RangeReq::ZeroLength);
    }
    match va.as_u64().checked_add(len) {
        Some(end) if end <= fmt.va_limit() => Ok(()),
        _ => Err(RangeReq::OutOfRange),
    }
}

/// Tables needed to split a block at `level` of which `[a, b)` is removed or reprotected (a
/// strict, non-empty part of the block): one table one level down, plus, recursively, the splits
/// of the (at most two) partly covered leaves in it. Calls `on_table(level, window_start)` per
/// table, top first.
pub(crate) fn split_need(
    fmt: &Format,
    level: Level,
    a: u64,
    b: u64,
    on_table: &mut impl FnMut(Level, u64),
) {
    let Some(sub) = level.next() else {
        return;
    };
    on_table(sub, a & !(fmt.entry_size(level) - 1));
    if !sub.is_last() {
        let sz = fmt.entry_size(sub);
        let wa = a & !(sz - 1);
        if a != wa || b < wa + sz {
            split_need(fmt, sub, a, b.min(wa + sz), on_table);
        }
        let wb = (b - 1) & !(sz - 1);
        if wb != wa && b != wb + sz {
            split_need(fmt, sub, wb, b, on_table);
        }
    }
}

/// The VA range a request may write, block splits included: `[a, b)` widened at each end that is
/// not aligned to the format's largest leaf to that leaf's boundary, because splitting a block
/// there replaces (and for a moment unmaps) the whole block. Maps never split; the caller passes
/// `splits = false` for them.
pub(crate) fn write_span(fmt: &Format, a: u64, b: u64, splits: bool) -> (u64, u64) {
    if !splits || fmt.min_block_level().is_last() {
        return (a, b);
    }
    let big = fmt.largest_leaf();
    let lo = a & !(big - 1);
    // OVERFLOW: `b <= va_limit <= 2^48` and `big <= 2^39`.
    let hi = (b + big - 1) & !(big - 1);
    (lo, hi.min(fmt.va_limit()))
}
