//! A page table's leaves as physically contiguous runs: one descent from the root over the
//! entries that overlap a VA range, decoding one descriptor per run at most rather than one per
//! leaf.
//!
//! [`Format::decode`] reads a leaf's output address only to check its alignment and the
//! output-address limit. So a descriptor whose other bits equal those of the last leaf decoded
//! in its table, with an aligned address below the limit, is a leaf with the same attributes
//! (no decode); and a run's further leaves, `d + size`, `d + 2 * size`, ..., are recognised by
//! their raw bits, eight entries per comparison (which is what counts under the fuzzer's
//! comparison tracing). `tests/tests/leaf_runs.rs` checks that property of `decode` for every
//! format, level and attribute set, and these runs against a per-leaf decode.

use std::ops::Range;

use pagetable::{Attrs, Desc, Format, Level, PhysAddr, Pte, TableMemory};

/// Runs `(va, end, pa, attrs)` in VA order.
pub type Runs = Vec<(u64, u64, u64, Attrs)>;

/// Appends the run `[va, end) -> pa` to `out`, merged into the last run if it continues it
/// (adjacent, physically contiguous, the same attributes).
pub fn push_run(out: &mut Runs, va: u64, end: u64, pa: u64, attrs: Attrs) {
    if let Some(last) = out.last_mut() {
        if last.1 == va && last.3 == attrs && last.2 + (last.1 - last.0) == pa {
            last.1 = end;
            return;
        }
    }
    out.push((va, end, pa, attrs));
}

/// Appends the valid leaves of the tables under `root` that overlap `range`, clipped to it, to
/// `out` as merged runs (see [`push_run`]).
///
/// # Panics
///
/// If a table frame does not resolve or holds a descriptor the format never writes.
pub fn leaf_runs<M: TableMemory + ?Sized>(
    fmt: &Format,
    mem: &M,
    root: PhysAddr,
    range: &Range<u64>,
    out: &mut Runs,
) {
    descend(fmt, mem, root, fmt.start_level(), 0, range, out);
}

/// How many leading entries of `ents` hold `first`, `first + step`, `first + 2 * step`, ...:
/// eight entries per comparison while they match, then one by one.
///
/// ```
/// use pagetable::Pte;
/// use tests::leaf_runs::arithmetic_prefix;
///
/// let ents: Vec<Pte> = (0..20u64).map(|i| Pte::from_raw(0x1003 + 0x1000 * i.min(11))).collect();
/// assert_eq!(arithmetic_prefix(&ents, 0x1003, 0x1000), 12);
/// assert_eq!(arithmetic_prefix(&ents[12..], 0xc003, 0), 8);
/// assert_eq!(arithmetic_prefix(&ents, 0x2003, 0x1000), 0);
/// ```
#[must_use]
pub fn arithmetic_prefix(ents: &[Pte], first: u64, step: u64) -> usize {
    let (chunks, _) = ents.as_chunks::<8>();
    let mut n = 0;
    let mut want = first;
    for chunk in chunks {
        let mut diff = 0;
        let mut w = want;
        for p in chunk {
            diff |= p.as_raw() ^ w;
            w = w.wrapping_add(step);
        }
        // Opaque, so that the optimiser cannot turn the one test back into eight.
        if std::hint::black_box(diff) != 0 {
            break;
        }
        n += 8;
        want = w;
    }
    while let Some(p) = ents.get(n) {
        if p.as_raw() != want {
            break;
        }
        n += 1;
        want = want.wrapping_add(step);
    }
    n
}

/// The entries of `table` (a table at `level` whose first entry maps `base`) that overlap `r`,
/// and the VA the first of them maps (the slice is empty if none overlaps).
///
/// # Panics
///
/// If `table` is not a frame of `mem`.
pub fn entries_over<'m, M: TableMemory + ?Sized>(
    fmt: &Format,
    mem: &'m M,
    table: PhysAddr,
    level: Level,
    base: u64,
    r: &Range<u64>,
) -> (u64, &'m [Pte]) {
    let (entries, _) = mem.frame(table).expect("table frame resolves");
    let size = fmt.entry_size(level);
    let span = size.saturating_mul(entries.len() as u64);
    let (lo, hi) = (r.start.max(base), r.end.min(base.saturating_add(span)));
    if lo >= hi {
        return (base, &[]);
    }
    let first = (lo - base) / size;
    let last = usize::try_from((hi - 1 - base) / size).expect("index fits");
    let ents = &entries[usize::try_from(first).expect("index fits")..=last];
    (base + first * size, ents)
}

fn descend<M: TableMemory + ?Sized>(
    fmt: &Format,
    mem: &M,
    table: PhysAddr,
    level: Level,
    base: u64,
    r: &Range<u64>,
    out: &mut Runs,
) {
    let size = fmt.entry_size(level);
    let (va0, ents) = entries_over(fmt, mem, table, level, base, r);
    let (oa_mask, oa_limit) = (fmt.oa_mask(), fmt.oa_limit());
    // The bits outside the output-address field of the last leaf decoded here, and its attributes.
    let mut last_leaf: Option<(u64, Attrs)> = None;
    let mut i = 0;
    while let Some(&pte) = ents.get(i) {
        let va = va0 + i as u64 * size;
        let (raw, oa) = (pte.as_raw(), pte.as_raw() & oa_mask);
        let desc = match last_leaf {
            Some((bits, attrs))
                if raw & !oa_mask == bits && oa.is_multiple_of(size) && oa < oa_limit =>
            {
                Desc::Leaf {
                    pa: PhysAddr::new(oa),
                    attrs,
                    size,
                }
            }
            _ => fmt.decode(level, pte),
        };
        match desc {
            // Empty entries (most of a sparse table) eight at a time.
            Desc::Invalid => i += arithmetic_prefix(&ents[i..], 0, 0).max(1),
            Desc::Table { pa } => {
                let next = match level {
                    Level::L0 => Level::L1,
                    Level::L1 => Level::L2,
                    _ => Level::L3,
                };
                descend(fmt, mem, pa, next, va, r, out);
                i += 1;
            }
            Desc::Leaf { pa, attrs, size } => {
                last_leaf = Some((raw & !oa_mask, attrs));
                // Leaves continuing this one, up to the output-address limit.
                let room = (oa_limit - pa.as_u64()) / size;
                let room = usize::try_from(room).unwrap_or(usize::MAX);
                let end = ents.len().min(i.saturating_add(room));
                let n = arithmetic_prefix(&ents[i..end], raw, size).max(1);
                let stop = va + n as u64 * size;
                let (s, e) = (va.max(r.start), stop.min(r.end));
                push_run(out, s, e, pa.as_u64() + (s - va), attrs);
                i += n;
            }
            Desc::Reserved => panic!("a descriptor the format never writes at {va:#x}"),
        }
    }
}
