//! Interval storage: a treap (randomised binary search tree) over caller-owned nodes.
//!
//! Mappings never overlap, so ordering nodes by start address is enough to answer every interval
//! query: the first mapping overlapping `[a, e)` is the last one starting at or before `a` if it
//! reaches past `a`, else the first one starting in `[a, e)`.
//!
//! Why a treap: insertion and removal are a split and a join, need no memory beyond the nodes
//! themselves (nothing to preallocate that depends on the tree's shape: the maple-tree problem of
//! `pagetables-and-vmbind.md` section 2.1), and the code is short and iterative. Each treap holds
//! one bucket of the directory (`forest.rs`), so it is usually tiny; it keeps the worst case
//! logarithmic when mappings cluster in one bucket.
//!
//! Priorities come from a per-VM pseudo-random generator, not from addresses, so no sequence of
//! requests can make the tree degenerate on purpose: the expected depth is about `2 ln n` (28 at a
//! million mappings). Every operation here is iterative; nothing recurses on tree depth except
//! dropping a whole tree, whose depth is logarithmic with overwhelming probability.

use arrayvec::ArrayVec;

use crate::node::NodePtr;
use crate::va::GpuVa;

pub(crate) type Link<P> = Option<P>;

/// Splits `t` into nodes starting below `key` and nodes starting at or above it.
pub(crate) fn split<D, P: NodePtr<D>>(mut t: Link<P>, key: u64) -> (Link<P>, Link<P>) {
    let mut lo: Link<P> = None;
    let mut hi: Link<P> = None;
    let mut lo_hole = &mut lo;
    let mut hi_hole = &mut hi;
    while let Some(mut n) = t {
        if n.addr < key {
            t = n.right.take();
            lo_hole = &mut lo_hole.insert(n).right;
        } else {
            t = n.left.take();
            hi_hole = &mut hi_hole.insert(n).left;
        }
    }
    (lo, hi)
}

/// Joins two treaps; every key in `a` must be below every key in `b`.
pub(crate) fn merge<D, P: NodePtr<D>>(mut a: Link<P>, mut b: Link<P>) -> Link<P> {
    let mut out: Link<P> = None;
    let mut hole = &mut out;
    loop {
        match (a, b) {
            (None, rest) | (rest, None) => {
                *hole = rest;
                return out;
            }
            (Some(mut x), Some(mut y)) => {
                if x.prio >= y.prio {
                    a = x.right.take();
                    b = Some(y);
                    hole = &mut hole.insert(x).right;
                } else {
                    b = y.left.take();
                    a = Some(x);
                    hole = &mut hole.insert(y).left;
                }
            }
        }
    }
}

/// Detaches the node with the smallest key.
pub(crate) fn pop_min<D, P: NodePtr<D>>(t: &mut Link<P>) -> Link<P> {
    let mut hole = t;
    while hole.as_ref().is_some_and(|n| n.left.is_some()) {
        // The loop condition checked that both the node and its left child exist.
        hole = &mut hole.as_mut()?.left;
    }
    let mut n = hole.take()?;
    *hole = n.right.take();
    Some(n)
}

/// The node with the largest key.
pub(crate) fn max<D, P: NodePtr<D>>(t: &Link<P>) -> Option<&GpuVa<D, P>> {
    let mut n = t.as_deref()?;
    while let Some(r) = n.right.as_deref() {
        n = r;
    }
    Some(n)
}

/// The node with the smallest key.
pub(crate) fn min<D, P: NodePtr<D>>(t: &Link<P>) -> Option<&GpuVa<D, P>> {
    let mut n = t.as_deref()?;
    while let Some(l) = n.left.as_deref() {
        n = l;
    }
    Some(n)
}

/// The node with the largest start `<= key`.
pub(crate) fn floor<D, P: NodePtr<D>>(t: &Link<P>, key: u64) -> Option<&GpuVa<D, P>> {
    let mut cur = t.as_deref();
    let mut best = None;
    while let Some(n) = cur {
        if n.addr <= key {
            best = Some(n);
            cur = n.right.as_deref();
        } else {
            cur = n.left.as_deref();
        }
    }
    best
}

/// The node with the smallest start `>= key`.
pub(crate) fn ceil<D, P: NodePtr<D>>(t: &Link<P>, key: u64) -> Option<&GpuVa<D, P>> {
    let mut cur = t.as_deref();
    let mut best = None;
    while let Some(n) = cur {
        if n.addr >= key {
            best = Some(n);
            cur = n.left.as_deref();
        } else {
            cur = n.right.as_deref();
        }
    }
    best
}

/// The node starting exactly at `key`.
pub(crate) fn get<D, P: NodePtr<D>>(t: &Link<P>, key: u64) -> Option<&GpuVa<D, P>> {
    let mut cur = t.as_deref();
    while let Some(n) = cur {
        if key == n.addr {
            return Some(n);
        }
        cur = if key < n.addr {
            n.left.as_deref()
        } else {
            n.right.as_deref()
        };
    }
    None
}

/// The node starting exactly at `key`, mutably.
pub(crate) fn get_mut<D, P: NodePtr<D>>(t: &mut Link<P>, key: u64) -> Option<&mut GpuVa<D, P>> {
    let mut cur = t.as_deref_mut();
    while let Some(n) = cur {
        if key == n.addr {
            return Some(n);
        }
        cur = if key < n.addr {
            n.left.as_deref_mut()
        } else {
            n.right.as_deref_mut()
        };
    }
    None
}

/// Depth of the deepest node (for tests and statistics; iterative).
pub(crate) fn depth<D, P: NodePtr<D>>(t: &Link<P>) -> usize {
    let mut deepest = 0;
    let mut stack: ArrayVec<(&GpuVa<D, P>, usize), STACK_DEPTH> = ArrayVec::new();
    let mut truncated = false;
    if let Some(n) = t.as_deref() {
        stack.push((n, 1));
    }
    while let Some((n, d)) = stack.pop() {
        deepest = deepest.max(d);
        for c in [n.left.as_deref(), n.right.as_deref()]
            .into_iter()
            .flatten()
        {
            if stack.try_push((c, d + 1)).is_err() {
                truncated = true;
            }
        }
    }
    if truncated {
        usize::MAX
    } else {
        deepest
    }
}

/// Stack depth of [`Iter`] before it falls back to re-descending from the root.
const STACK_DEPTH: usize = 64;

/// In-order iterator over nodes with `lo <= start < hi`.
///
/// Keeps a fixed-size stack (no allocation). If the tree is ever deeper than the stack, the deepest
/// pending ancestors are dropped and the iterator re-descends from the root after the last key it
/// yielded, so it stays correct at any depth.
pub(crate) struct Iter<'a, D, P> {
    root: Option<&'a GpuVa<D, P>>,
    stack: ArrayVec<&'a GpuVa<D, P>, STACK_DEPTH>,
    /// The stack lost entries; when it runs dry, resume after `last`.
    truncated: bool,
    /// Smallest start still wanted (inclusive).
    lo: u64,
    /// First start no longer wanted (exclusive).
    hi: u64,
    done: bool,
}

impl<'a, D, P: NodePtr<D>> Iter<'a, D, P> {
    pub(crate) fn new(root: &'a Link<P>, lo: u64, hi: u64) -> Self {
        let mut it = Self {
            root: root.as_deref(),
            stack: ArrayVec::new(),
            truncated: false,
            lo,
            hi,
            done: lo >= hi,
        };
        if !it.done {
            it.descend(it.root);
        }
        it
    }

    /// Pushes the path to the smallest node `>= lo` below `n`.
    fn descend(&mut self, mut cur: Option<&'a GpuVa<D, P>>) {
        while let Some(n) = cur {
            if n.addr >= self.lo {
                if self.stack.is_full() {
                    self.stack.remove(0);
                    self.truncated = true;
                }
                self.stack.push(n);
                cur = n.left.as_deref();
            } else {
                cur = n.right.as_deref();
            }
        }
    }
}

impl<'a, D, P: NodePtr<D>> Iterator for Iter<'a, D, P> {
    type Item = &'a GpuVa<D, P>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let n = match self.stack.pop() {
            Some(n) => n,
            None if self.truncated => {
                self.truncated = false;
                self.descend(self.root);
                self.stack.pop()?
            }
            None => return None,
        };
        if n.addr >= self.hi {
            self.done = true;
            return None;
        }
        // Everything still wanted starts after `n`.
        match n.addr.checked_add(1) {
            Some(next) => self.lo = next,
            None => self.done = true,
        }
        self.descend(n.right.as_deref());
        Some(n)
    }
}

/// xorshift64*: the treap's priority source. Not cryptographic; it only has to be independent of
/// the addresses callers choose.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) const fn new(seed: u64) -> Self {
        // A zero state would stay zero forever.
        Self(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    pub(crate) fn next_u32(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        // The high half of the product is the best-mixed part; it always fits in 32 bits.
        u32::try_from(r >> 32).unwrap_or_default()
    }
}
