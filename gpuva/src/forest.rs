//! The bucket directory: the VA space cut into equal address buckets, one treap per bucket.
//!
//! A binary tree of a million individually allocated nodes is about 28 levels deep, and each level
//! is a dependent cache miss (measured: about 2.2 µs per random lookup, against 0.6 µs for
//! `BTreeMap`, on this project's machines). The directory turns that into one array index plus a
//! walk of a tiny treap: with a bucket per one or two mappings, a request touches a handful of
//! nodes. The treap inside each bucket keeps the worst case logarithmic when mappings cluster.
//!
//! ```text
//!   dir:   [ b0 ][ b1 ][ b2 ][ b3 ] ...   bucket = (addr - base) >> shift
//!             |           |
//!           treap       treap            a mapping lives in the bucket of its start address;
//!                                        it may extend over later (empty) buckets
//! ```
//!
//! The buckets split an address window `[base, base + span)` evenly; addresses outside it go to the
//! first or last bucket, which keeps the order (so correctness never depends on the window) and
//! only costs speed. A new VM's window is the whole VA space; [`GpuVm::rebucket`] fits it to the
//! mappings that exist, because real VA spaces are huge and sparsely used (a 2^48 space split into
//! 2^19 buckets gives 512 MiB buckets, and a million mappings in 4 GiB would share eight of them).
//!
//! Directory memory is the caller's (like node memory): a `Box<[Option<P>]>`, a kernel
//! allocation, a static slice, or the one-bucket [`OneBucket`] that needs none. Changing it
//! ([`GpuVm::rebucket`](crate::GpuVm::rebucket)) moves nodes only, so it can run under the VM lock
//! with memory allocated before the lock was taken.
//!
//! Finding the previous or next non-empty bucket uses per-group counts of non-empty buckets, so
//! long empty stretches are skipped a group at a time.

use core::fmt;
use core::ops::{Deref, DerefMut};

use crate::node::NodePtr;
use crate::tree;
use crate::va::GpuVa;

/// Number of bucket groups tracked for skipping empty stretches.
const GROUPS: usize = 1024;

/// A directory of one bucket: the whole VA space in one treap; needs no memory at all.
pub struct OneBucket<P>([Option<P>; 1]);

impl<P> OneBucket<P> {
    /// An empty one-bucket directory.
    #[must_use]
    pub const fn new() -> Self {
        Self([None])
    }
}

impl<P> Default for OneBucket<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P> Deref for OneBucket<P> {
    type Target = [Option<P>];
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<P> DerefMut for OneBucket<P> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<P> fmt::Debug for OneBucket<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OneBucket")
    }
}

/// Bucket directory plus the treaps hanging off it.
///
/// # Invariants
///
/// * every node in `dir[b]` has `bucket(addr) == b`;
/// * `counts[g]` is the number of non-empty buckets in group `g`, `occupied` their sum;
/// * `dir` is not empty.
pub(crate) struct Forest<D, P, B> {
    dir: B,
    base: u64,
    shift: u32,
    group_shift: u32,
    counts: [u32; GROUPS],
    /// Sum of `counts`.
    occupied: usize,
    _p: core::marker::PhantomData<fn() -> (D, P)>,
}

impl<D, P: NodePtr<D>, B: DerefMut<Target = [Option<P>]>> Forest<D, P, B> {
    /// A forest over `[base, base + span)` using `dir`, whose buckets must all be empty.
    ///
    /// Returns `dir` back if it is empty or holds a node.
    pub(crate) fn new(dir: B, base: u64, span: u64) -> Result<Self, B> {
        let n = dir.len();
        if n == 0 || dir.iter().any(Option::is_some) {
            return Err(dir);
        }
        let n64 = u64::try_from(n).unwrap_or(u64::MAX);
        // Smallest shift with (span - 1) >> shift < n: every address of the space has a bucket.
        let mut shift = 0u32;
        while shift < 64 && (span.saturating_sub(1) >> shift) >= n64 {
            shift += 1;
        }
        let per_group = n.div_ceil(GROUPS).next_power_of_two();
        Ok(Self {
            dir,
            base,
            shift,
            group_shift: per_group.trailing_zeros(),
            counts: [0; GROUPS],
            occupied: 0,
            _p: core::marker::PhantomData,
        })
    }

    /// Hands the directory back (the caller empties the forest first).
    pub(crate) fn into_dir(self) -> B {
        self.dir
    }

    pub(crate) fn buckets(&self) -> usize {
        self.dir.len()
    }

    /// The bucket of `addr`; addresses below `base` go to bucket 0, past the end to the last.
    fn bucket(&self, addr: u64) -> usize {
        let idx = addr
            .saturating_sub(self.base)
            .checked_shr(self.shift)
            .unwrap_or(0);
        usize::try_from(idx)
            .unwrap_or(usize::MAX)
            .min(self.dir.len() - 1)
    }

    fn group(&self, b: usize) -> usize {
        b >> self.group_shift
    }

    /// Keeps `counts` right after bucket `b` went from `was_empty` to its current state.
    fn note(&mut self, b: usize, was_empty: bool) {
        let is_empty = self.dir[b].is_none();
        let g = self.group(b);
        if was_empty && !is_empty {
            self.counts[g] += 1;
            self.occupied += 1;
        } else if !was_empty && is_empty {
            self.counts[g] -= 1;
            self.occupied -= 1;
        }
    }

    /// The last non-empty bucket before `b`.
    fn prev_nonempty(&self, b: usize) -> Option<usize> {
        let mut i = b;
        while i > 0 {
            i -= 1;
            if self.dir[i].is_some() {
                return Some(i);
            }
            let g = self.group(i);
            if self.counts[g] == 0 {
                // Nothing in this group: jump to the end of the previous one.
                i = g << self.group_shift;
            }
        }
        None
    }

    /// The first non-empty bucket in `b..=last`.
    fn next_nonempty(&self, mut b: usize, last: usize) -> Option<usize> {
        while b <= last {
            if self.dir[b].is_some() {
                return Some(b);
            }
            let g = self.group(b);
            b = if self.counts[g] == 0 {
                (g + 1) << self.group_shift
            } else {
                b + 1
            };
        }
        None
    }

    /// The node with the largest start `<= addr`.
    pub(crate) fn floor(&self, addr: u64) -> Option<&GpuVa<D, P>> {
        let b = self.bucket(addr);
        tree::floor(&self.dir[b], addr).or_else(|| tree::max(&self.dir[self.prev_nonempty(b)?]))
    }

    /// The node starting exactly at `addr`.
    pub(crate) fn get(&self, addr: u64) -> Option<&GpuVa<D, P>> {
        tree::get(&self.dir[self.bucket(addr)], addr)
    }

    /// Whether `a` and `b` fall in the same bucket.
    pub(crate) fn same_bucket(&self, a: u64, b: u64) -> bool {
        self.bucket(a) == self.bucket(b)
    }

    /// The first node with `lo <= start < hi`.
    pub(crate) fn first_in(&self, lo: u64, hi: u64) -> Option<&GpuVa<D, P>> {
        if lo >= hi {
            return None;
        }
        let last = self.bucket(hi - 1);
        let mut b = self.bucket(lo);
        while let Some(nb) = self.next_nonempty(b, last) {
            if let Some(n) = tree::ceil(&self.dir[nb], lo) {
                return (n.addr < hi).then_some(n);
            }
            b = nb + 1;
        }
        None
    }

    /// The node starting exactly at `addr`, mutably.
    pub(crate) fn get_mut(&mut self, addr: u64) -> Option<&mut GpuVa<D, P>> {
        let b = self.bucket(addr);
        tree::get_mut(&mut self.dir[b], addr)
    }

    /// Nodes with `lo <= start < hi`, in order.
    pub(crate) fn iter(&self, lo: u64, hi: u64) -> Iter<'_, D, P, B> {
        let last = self.bucket(hi.saturating_sub(1));
        let first = if lo < hi {
            self.next_nonempty(self.bucket(lo), last)
        } else {
            None
        };
        Iter {
            forest: self,
            cur: first.map(|b| (b, tree::Iter::new(&self.dir[b], lo, hi))),
            lo,
            hi,
            last,
        }
    }

    /// Inserts an unlinked node into its bucket.
    pub(crate) fn insert(&mut self, node: P) {
        debug_assert!(
            node.left.is_none() && node.right.is_none(),
            "inserting a linked node"
        );
        let b = self.bucket(node.addr);
        let was_empty = self.dir[b].is_none();
        let (lo, hi) = tree::split(self.dir[b].take(), node.addr);
        self.dir[b] = tree::merge(tree::merge(lo, Some(node)), hi);
        self.note(b, was_empty);
    }

    /// Detaches the node starting exactly at `addr`.
    pub(crate) fn remove(&mut self, addr: u64) -> Option<P> {
        let b = self.bucket(addr);
        let was_empty = self.dir[b].is_none();
        let (lo, mut hi) = tree::split(self.dir[b].take(), addr);
        let found = if tree::min(&hi).is_some_and(|n| n.addr == addr) {
            tree::pop_min(&mut hi)
        } else {
            None
        };
        self.dir[b] = tree::merge(lo, hi);
        self.note(b, was_empty);
        found
    }

    /// Detaches the node with the smallest start, from any bucket.
    pub(crate) fn pop_min(&mut self) -> Option<P> {
        let b = self.next_nonempty(0, self.dir.len() - 1)?;
        let n = tree::pop_min(&mut self.dir[b]);
        self.note(b, false);
        n
    }

    /// The node with the largest start.
    pub(crate) fn last(&self) -> Option<&GpuVa<D, P>> {
        let n = self.dir.len();
        let b = if self.dir[n - 1].is_some() {
            n - 1
        } else {
            self.prev_nonempty(n - 1)?
        };
        tree::max(&self.dir[b])
    }

    /// Number of non-empty buckets.
    pub(crate) fn occupied(&self) -> usize {
        debug_assert_eq!(
            self.occupied,
            self.counts
                .iter()
                .map(|&c| usize::try_from(c).unwrap_or(usize::MAX))
                .sum::<usize>(),
            "occupied must be the sum of the group counts"
        );
        self.occupied
    }

    /// Depth of the deepest bucket treap.
    pub(crate) fn depth(&self) -> usize {
        self.dir.iter().map(tree::depth).max().unwrap_or(0)
    }
}

/// In-order iterator across buckets.
pub(crate) struct Iter<'a, D, P, B> {
    forest: &'a Forest<D, P, B>,
    cur: Option<(usize, tree::Iter<'a, D, P>)>,
    lo: u64,
    hi: u64,
    last: usize,
}

impl<'a, D, P: NodePtr<D>, B: DerefMut<Target = [Option<P>]>> Iterator for Iter<'a, D, P, B> {
    type Item = &'a GpuVa<D, P>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (b, it) = self.cur.as_mut()?;
            if let Some(n) = it.next() {
                return Some(n);
            }
            let next = self.forest.next_nonempty(*b + 1, self.last);
            self.cur = next.map(|nb| (nb, tree::Iter::new(&self.forest.dir[nb], self.lo, self.hi)));
        }
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    #![allow(
        clippy::disallowed_methods,
        reason = "unit tests may allocate infallibly"
    )]
    extern crate alloc;

    use alloc::boxed::Box;
    use alloc::vec::Vec;

    use crate::{
        alloc_buckets, BoxNode, GpuVm, Mapping, NewError, NodeReserve, ObjId, Op, RetiredList,
    };

    /// Deterministic request generator: a mix of small and very large maps and unmaps, so that
    /// mappings span many buckets and straddlers live far before the request's bucket.
    struct Gen(u64);
    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn directory_matches_one_bucket_op_for_op() {
        const SPACE: u64 = 1 << 20;
        let mut plain = GpuVm::<(), BoxNode<()>>::new(0..SPACE, 0x8000..0x9000).unwrap();
        let mut bucketed =
            GpuVm::<(), BoxNode<()>, _>::with_capacity(0..SPACE, 0x8000..0x9000, 128).unwrap();
        assert_eq!(bucketed.buckets(), 64);
        let mut g = Gen(0x9e37_79b9);
        let mut retired = RetiredList::new();
        for i in 0..4000usize {
            let big = g.next().is_multiple_of(8);
            let addr = g.next() % SPACE;
            let len = if big {
                g.next() % (SPACE / 4) + 1
            } else {
                g.next() % 0x3000 + 1
            };
            let (a, b) = (
                ops_of(&plain, i, addr, len),
                ops_of(&bucketed, i, addr, len),
            );
            assert_eq!(a, b, "request {i}");
            if i.is_multiple_of(3) {
                let r1 = plain.unmap(
                    addr,
                    len,
                    &mut NodeReserve::try_alloc(2).unwrap(),
                    &mut retired,
                );
                let r2 = bucketed.unmap(
                    addr,
                    len,
                    &mut NodeReserve::try_alloc(2).unwrap(),
                    &mut retired,
                );
                assert_eq!(r1, r2);
            } else {
                let m = Mapping::new(addr, len, ObjId::new(g_obj(addr)), addr / 2);
                let r1 = plain.map(m, &mut NodeReserve::try_alloc(3).unwrap(), &mut retired);
                let r2 = bucketed.map(m, &mut NodeReserve::try_alloc(3).unwrap(), &mut retired);
                assert_eq!(r1, r2);
            }
            let sa: Vec<Mapping> = plain.iter().map(|v| v.mapping()).collect();
            let sb: Vec<Mapping> = bucketed.iter().map(|v| v.mapping()).collect();
            assert_eq!(sa, sb, "state after request {i}");
            assert_eq!(plain.len(), bucketed.len());
            let probe = g.next() % SPACE;
            assert_eq!(
                plain.lookup(probe).map(|v| v.mapping()),
                bucketed.lookup(probe).map(|v| v.mapping())
            );
            assert_eq!(
                plain.find_first(probe..probe + 0x5000).map(|v| v.mapping()),
                bucketed
                    .find_first(probe..probe + 0x5000)
                    .map(|v| v.mapping())
            );
        }

        // Growing the directory keeps every mapping and hands the old directory back empty.
        let before: Vec<Mapping> = bucketed.iter().map(|v| v.mapping()).collect();
        let old = bucketed.rebucket(alloc_buckets(2048).unwrap()).unwrap();
        assert_eq!(old.len(), 64);
        assert!(old.iter().all(Option::is_none));
        assert_eq!(bucketed.buckets(), 2048);
        let after: Vec<Mapping> = bucketed.iter().map(|v| v.mapping()).collect();
        assert_eq!(before, after);
    }

    fn g_obj(addr: u64) -> u64 {
        addr % 3
    }

    /// The ops request `i` would emit on `vm` (empty when it is invalid).
    fn ops_of<B: core::ops::DerefMut<Target = [Option<BoxNode<()>>]>>(
        vm: &GpuVm<(), BoxNode<()>, B>,
        i: usize,
        addr: u64,
        len: u64,
    ) -> Vec<Op> {
        let mut ops = Vec::new();
        let r = if i.is_multiple_of(3) {
            vm.sm_unmap_walk(addr, len, |op| -> Result<(), ()> {
                ops.push(op);
                Ok(())
            })
        } else {
            let m = Mapping::new(addr, len, ObjId::new(g_obj(addr)), addr / 2);
            vm.sm_map_walk(m, |op| -> Result<(), ()> {
                ops.push(op);
                Ok(())
            })
        };
        if r.is_err() {
            ops.clear();
        }
        ops
    }

    #[test]
    fn bad_directories_are_refused() {
        let empty: Box<[Option<BoxNode<()>>]> = Box::new([]);
        let r = GpuVm::<(), BoxNode<()>, _>::with_buckets(0..100, 0..0, empty);
        assert_eq!(r.err(), Some(NewError::Directory));
        let mut vm = GpuVm::<(), BoxNode<()>, _>::with_capacity(0..100, 0..0, 8).unwrap();
        let mut retired = RetiredList::new();
        vm.map(
            Mapping::new(0, 10, None, 0),
            &mut NodeReserve::try_alloc(3).unwrap(),
            &mut retired,
        )
        .unwrap();
        let mut full = alloc_buckets::<BoxNode<()>>(4).unwrap();
        full[0] = Some(BoxNode::try_new(()).unwrap());
        let (back, e) = vm.rebucket(full).unwrap_err();
        assert_eq!(e, NewError::Directory);
        assert!(
            back[0].is_some(),
            "the refused directory comes back untouched"
        );
        assert_eq!(vm.len(), 1);
        assert_eq!(vm.iter().count(), 1);
    }
}

#[cfg(all(test, feature = "alloc"))]
mod fit_tests {
    #![allow(
        clippy::disallowed_methods,
        reason = "unit tests may allocate infallibly"
    )]
    extern crate alloc;

    use alloc::vec::Vec;

    use crate::{alloc_buckets, BoxNode, GpuVm, Mapping, NodeReserve, ObjId, RetiredList};

    #[test]
    fn rebucket_fits_the_directory_to_the_used_window() {
        // 4096 page mappings in 16 MiB of a 2^48 space: evenly split buckets are 1 TiB wide and
        // every mapping lands in one bucket.
        let mut vm = GpuVm::<(), BoxNode<()>, _>::with_capacity(0..1 << 48, 0..0, 4096).unwrap();
        let mut retired = RetiredList::new();
        let base = 0x7f00_0000_0000u64;
        for i in 0..4096u64 {
            let m = Mapping::new(base + i * 0x1000, 0x1000, ObjId::new(1), i * 0x1000);
            vm.map(m, &mut NodeReserve::try_alloc(3).unwrap(), &mut retired)
                .unwrap();
        }
        let crowded_depth = vm.depth();
        let advice = vm.rebucket_advice().expect("crowded directory gets advice");
        assert_eq!(advice, 2048);
        let before: Vec<Mapping> = vm.iter().map(|v| v.mapping()).collect();
        vm.rebucket(alloc_buckets(advice).unwrap()).unwrap();
        let after: Vec<Mapping> = vm.iter().map(|v| v.mapping()).collect();
        assert_eq!(before, after);
        assert!(
            vm.depth() <= 4,
            "fitted depth {} (crowded {crowded_depth})",
            vm.depth()
        );
        assert!(crowded_depth > vm.depth());
        assert_eq!(
            vm.rebucket_advice(),
            None,
            "a fitted directory needs no advice"
        );

        // Mappings outside the fitted window still work (they go to the edge buckets).
        let far = Mapping::new(0x1000, 0x1000, ObjId::new(2), 0);
        vm.map(far, &mut NodeReserve::try_alloc(3).unwrap(), &mut retired)
            .unwrap();
        let far_hi = Mapping::new((1 << 48) - 0x2000, 0x1000, ObjId::new(2), 0);
        vm.map(
            far_hi,
            &mut NodeReserve::try_alloc(3).unwrap(),
            &mut retired,
        )
        .unwrap();
        assert_eq!(vm.lookup(0x1800).map(|v| v.mapping()), Some(far));
        assert_eq!(
            vm.lookup((1 << 48) - 0x1800).map(|v| v.mapping()),
            Some(far_hi)
        );
        assert_eq!(vm.find_first(0..1 << 48).map(|v| v.mapping()), Some(far));
        assert_eq!(vm.iter().count(), 4098);
        vm.unmap(
            0,
            1 << 48,
            &mut NodeReserve::<BoxNode<()>>::try_alloc(2).unwrap(),
            &mut retired,
        )
        .unwrap();
        assert!(vm.is_empty());
    }
}
