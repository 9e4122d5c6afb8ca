//! The index: a B+tree over caller-owned [`Node`]s, generic over what it stores.
//!
//! gpuva keeps three of them (see [`crate::vm`]): mappings by start address, the object index by
//! `(object, start)`, and object links by object. All three share this code and one node type.
//!
//! ```text
//!                     [ branch: pivots p0 p1 .. ]            up to 32 children (24 for the
//!                    /        |          \                   object index), at least half full
//!         [leaf k k k ..] [leaf ..]  .. [leaf ..]            up to 16 entries (36 in the object
//!                                                            index, 20 for links), at least half full
//! ```
//!
//! # Shape, and why nothing can push it
//!
//! Every leaf is at the same depth, and every node off the leftmost and rightmost paths is at least
//! half full: inserts split a full node in two halves, removals borrow from or merge with a
//! sibling. So the height is logarithmic in the number of entries for every request sequence;
//! there is no randomness, no seed and no maintenance step. [`max_height`] turns a bound on the
//! number of entries (from the VA space's geometry) into a bound on the height, which is what the
//! reservation contract (see [`crate::reserve`]) is built on.
//!
//! # Edge splits
//!
//! A full node on the rightmost path receiving a new last entry (an ascending fill) keeps its
//! entries and starts a new rightmost node with the new one; the leftmost path mirrors it for
//! descending fills. Sequential fills so pack nodes completely instead of half; the two edge paths
//! are exempt from the half-full rule (leaves hold at least one entry, branches two children), and
//! [`max_height`] counts with that.
//!
//! # Worst case of each operation
//!
//! * search, floor, cursor seek: O(log n), one node per level;
//! * insert: O(log n); it takes at most `height + 1` nodes from the spare cache (one split per
//!   level plus a new root), checked before anything changes;
//! * remove: O(log n); merged-away nodes go back to the spare cache (nothing is freed);
//! * range walk over `k` entries: O(log n + k), rebalancing as it goes;
//! * teardown: O(n), iterative.
//!
//! Recursion is only ever on the tree's height, at most [`MAX_HEIGHT`] levels, with frames of a
//! few words: well under a kilobyte of stack whatever the requests.
//!
//! # Pivots
//!
//! A pivot is only a bound (see [`branch`]): removals never update ancestors. Two operations move
//! a key upwards inside the gap to its successor (the in-place re-key of a `next` piece, and the
//! two-entry insert of a split); they raise the pivots on their path to keep the bound, which is
//! valid because the VA semantics guarantee that nothing lives in that gap. Each level raises its
//! pivot before it rebalances: a merge moves the pivot down into the merged node as a separator,
//! and a copy raised too late would leave the moved key on the wrong side of it.

mod branch;
mod cursor;
mod leaf;
#[cfg(all(test, feature = "alloc"))]
mod tests;

use core::marker::PhantomData;

use arrayvec::ArrayVec;

pub(crate) use branch::{Branch, BranchOps};
pub(crate) use cursor::Cursor;
pub(crate) use leaf::{Leaf, LeafOps};

use crate::node::{Body, Node, NodeBag, NodePtr};

/// Levels a tree can ever have: enough for 2^64 entries at the smallest fanout used.
pub(crate) const MAX_HEIGHT: usize = 20;

/// The widest branch of any tree kind.
const MAX_CHILDREN: usize = crate::node::BR64;

/// The largest height a tree with at most `entries` entries can reach, given the minimum entries
/// of a regular leaf and the minimum children of a regular branch.
///
/// Nodes on the leftmost and rightmost paths are exempt from the half-full rule (see "Edge
/// splits" in the module docs): their leaves hold at least one entry and their branches at least
/// two children. The smallest tree of height `h` is then a root with two edge subtrees, where an
/// edge subtree of height `k` is an edge subtree of height `k - 1` plus one smallest regular
/// subtree of height `k - 1` (`leaf_min * branch_min^(k - 2)` entries).
pub(crate) const fn max_height(entries: u128, leaf_min: u128, branch_min: u128) -> usize {
    if entries == 0 {
        return 0;
    }
    // edge: entries in the smallest edge subtree of height h; regular: in the smallest regular
    // subtree of height h; both start at h = 1.
    let mut h = 1;
    let mut edge: u128 = 1;
    let mut regular: u128 = leaf_min;
    loop {
        // The smallest whole tree of height h + 1: a root over two edge subtrees of height h.
        let smallest = edge.saturating_mul(2);
        if smallest > entries || h >= MAX_HEIGHT {
            return h;
        }
        h += 1;
        edge = edge.saturating_add(regular);
        regular = regular.saturating_mul(branch_min);
    }
}

/// Nodes one insert may take from the spare cache: a split per level plus a new root.
pub(crate) const fn insert_nodes(height: usize) -> usize {
    height + 1
}

/// How one tree kind lays out its nodes.
pub(crate) trait Kind<D, L, P> {
    type K: Copy + Ord + Default + Bump;
    type V;
    type T: Copy + Default;
    type Lf: LeafOps<K = Self::K, V = Self::V, T = Self::T>;
    type Br: BranchOps<K = Self::K, P = P>;
    fn leaf(b: &Body<D, L, P>) -> Option<&Self::Lf>;
    fn leaf_mut(b: &mut Body<D, L, P>) -> Option<&mut Self::Lf>;
    fn branch(b: &Body<D, L, P>) -> Option<&Self::Br>;
    fn branch_mut(b: &mut Body<D, L, P>) -> Option<&mut Self::Br>;
    fn new_leaf() -> Body<D, L, P>;
    fn new_branch() -> Body<D, L, P>;
}

/// Keys that have a successor value (the pivot bump after a re-key).
pub(crate) trait Bump: Sized {
    fn bump(self) -> Option<Self>;
}

impl Bump for u64 {
    fn bump(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl Bump for (u64, u64) {
    fn bump(self) -> Option<Self> {
        Some((self.0, self.1.checked_add(1)?))
    }
}

/// Whether a node lies on the leftmost and/or rightmost path of its tree.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Edge {
    pub(crate) left: bool,
    pub(crate) right: bool,
}

impl Edge {
    const ROOT: Self = Self {
        left: true,
        right: true,
    };

    /// The edge flags of child `ci` of a branch with `len` children.
    fn child(self, ci: usize, len: usize) -> Self {
        Self {
            left: self.left && ci == 0,
            right: self.right && ci + 1 == len,
        }
    }
}

/// Up to two entries inserted next to each other.
pub(crate) type Items<K, V, T> = ArrayVec<(K, V, T), 2>;

type KindItems<D, L, P, Kd> =
    Items<<Kd as Kind<D, L, P>>::K, <Kd as Kind<D, L, P>>::V, <Kd as Kind<D, L, P>>::T>;

/// What a range walk does with an entry.
pub(crate) enum Act<K> {
    /// Take it out (handed to [`RangeVisit::removed`]).
    Remove,
    /// Move its key up to the given one, inside the gap to its successor; the walk ends with it.
    Rekey(K),
    /// Stop the walk here, leaving the entry.
    Stop,
}

/// The callbacks of [`Tree::walk_range`].
pub(crate) trait RangeVisit<K, V, T> {
    fn visit(&mut self, k: K, v: &mut V, t: &mut T) -> Act<K>;
    fn removed(&mut self, k: K, v: V, t: T);
}

/// How a subtree walk ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flow<K> {
    /// The subtree has no more entries in range.
    Exhausted,
    /// The walk is over; a re-key asks for pivots above the path to be at least `bump`.
    Done { bump: Option<K> },
}

/// How fixing an underfull child moved things.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fix {
    /// Nothing to do, or borrowed: every child kept its index.
    Kept,
    /// The child was merged into its left sibling: it is gone, later children moved down one.
    IntoLeft,
    /// The right sibling's entries came into the child (merged or borrowed): rescan it.
    FromRight,
}

/// A B+tree of one [`Kind`].
pub(crate) struct Tree<D, L, P, Kd> {
    root: Option<P>,
    /// Levels: 0 when empty, 1 when the root is a leaf.
    height: usize,
    len: usize,
    _k: Marker<D, L, Kd>,
}

type Marker<D, L, Kd> = PhantomData<fn() -> (D, L, Kd)>;

fn take<D, L, P: NodePtr<D, L>>(spare: &mut NodeBag<D, L, P>, body: Body<D, L, P>) -> Option<P> {
    let mut n = spare.pop()?;
    n.body = body;
    Some(n)
}

impl<D, L, P: NodePtr<D, L>, Kd: Kind<D, L, P>> Tree<D, L, P, Kd> {
    pub(crate) const fn new() -> Self {
        Self {
            root: None,
            height: 0,
            len: 0,
            _k: PhantomData,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn height(&self) -> usize {
        self.height
    }

    pub(crate) fn root(&self) -> Option<&Node<D, L, P>> {
        self.root.as_deref()
    }

    /// A cursor at the first entry `>= k` (or at the end).
    pub(crate) fn seek(&self, k: Kd::K) -> Cursor<'_, D, L, P, Kd> {
        let mut c = Cursor::new(self);
        c.seek(k);
        c
    }

    /// A cursor at the first entry.
    pub(crate) fn first(&self) -> Cursor<'_, D, L, P, Kd> {
        let mut c = Cursor::new(self);
        c.seek_first();
        c
    }

    /// The entry with the greatest key `<= k`, if any, in one descent (two when a stale pivot
    /// routes `k` to a leaf whose keys all exceed it).
    pub(crate) fn floor_entry(&self, k: Kd::K) -> Option<(Kd::K, &Kd::V, Kd::T)> {
        let mut node = self.root.as_deref()?;
        // The subtree holding the keys just below the routed path, for the fallback.
        let mut left: Option<&Node<D, L, P>> = None;
        loop {
            if let Some(br) = Kd::branch(&node.body) {
                let ci = br.child_index(k);
                if ci > 0 {
                    left = br.child(ci - 1).map(|c| &**c);
                }
                node = br.child(ci)?;
                continue;
            }
            let leaf = Kd::leaf(&node.body)?;
            let i = leaf.lower_bound(k);
            if leaf.key(i) == Some(k) {
                return Some((k, leaf.val(i)?, leaf.tag(i)));
            }
            if i > 0 {
                return Some((leaf.key(i - 1)?, leaf.val(i - 1)?, leaf.tag(i - 1)));
            }
            // Every key here exceeds k: the floor is the largest key of the subtree to the left.
            let mut n = left?;
            while let Some(br) = Kd::branch(&n.body) {
                n = br.child(br.len().checked_sub(1)?)?;
            }
            let leaf = Kd::leaf(&n.body)?;
            let j = leaf.len().checked_sub(1)?;
            return Some((leaf.key(j)?, leaf.val(j)?, leaf.tag(j)));
        }
    }

    /// The value and tag stored under exactly `k`.
    pub(crate) fn get(&self, k: Kd::K) -> Option<(&Kd::V, Kd::T)> {
        let mut node = self.root.as_deref()?;
        loop {
            if let Some(br) = Kd::branch(&node.body) {
                node = br.child(br.child_index(k))?;
                continue;
            }
            let leaf = Kd::leaf(&node.body)?;
            let i = leaf.lower_bound(k);
            return (leaf.key(i) == Some(k)).then(|| leaf.val(i).map(|v| (v, leaf.tag(i))))?;
        }
    }

    /// The value and tag under exactly `k`, mutably.
    pub(crate) fn get_mut(&mut self, k: Kd::K) -> Option<(&mut Kd::V, &mut Kd::T)> {
        let mut node = self.root.as_deref_mut()?;
        loop {
            if Kd::leaf(&node.body).is_some() {
                let leaf = Kd::leaf_mut(&mut node.body)?;
                let i = leaf.lower_bound(k);
                if leaf.key(i) != Some(k) {
                    return None;
                }
                return leaf.entry_mut(i);
            }
            let br = Kd::branch_mut(&mut node.body)?;
            let ci = br.child_index(k);
            node = &mut **br.child_mut(ci)?;
        }
    }

    /// Changes key `old` to `new`, which must lie in the gap between `old` and its successor;
    /// pivots on the path are raised to at least `bump` (the caller proves `bump` is at most the
    /// successor). Returns whether `old` was found.
    pub(crate) fn rekey(&mut self, old: Kd::K, new: Kd::K, bump: Kd::K) -> bool {
        let Some(mut node) = self.root.as_deref_mut() else {
            return false;
        };
        loop {
            if Kd::leaf(&node.body).is_some() {
                let Some(leaf) = Kd::leaf_mut(&mut node.body) else {
                    return false;
                };
                let i = leaf.lower_bound(old);
                if leaf.key(i) != Some(old) {
                    return false;
                }
                debug_assert!(
                    leaf.key(i + 1).is_none_or(|n| new < n),
                    "re-key out of order"
                );
                leaf.set_key(i, new);
                return true;
            }
            let Some(br) = Kd::branch_mut(&mut node.body) else {
                return false;
            };
            let ci = br.child_index(old);
            if ci + 1 < br.len() && br.pivot(ci).is_some_and(|p| p < bump) {
                br.set_pivot(ci, bump);
            }
            match br.child_mut(ci) {
                Some(c) => node = &mut **c,
                None => return false,
            }
        }
    }

    /// Inserts `items` (ascending, one or two) where the first belongs, routing by `route` and
    /// raising pivots on the path to at least `bump` (see [`Tree::rekey`]; for a plain insert
    /// `route` is the first key and `bump` is `None`).
    ///
    /// Takes at most [`insert_nodes`]`(height)` nodes from `spare`; if `spare` holds fewer,
    /// nothing changes and the items come back.
    pub(crate) fn insert(
        &mut self,
        route: Kd::K,
        mut items: Items<Kd::K, Kd::V, Kd::T>,
        bump: Option<Kd::K>,
        spare: &mut NodeBag<D, L, P>,
    ) -> Result<(), KindItems<D, L, P, Kd>> {
        if items.is_empty() {
            return Ok(());
        }
        if spare.len() < insert_nodes(self.height) {
            return Err(items);
        }
        let n = items.len();
        if self.root.is_none() {
            let Some(leaf) = take(spare, Kd::new_leaf()) else {
                return Err(items);
            };
            self.root = Some(leaf);
            self.height = 1;
        }
        let Some(root) = self.root.as_mut() else {
            return Err(items);
        };
        let r = insert_rec::<D, L, P, Kd>(
            root,
            self.height,
            Edge::ROOT,
            route,
            &mut items,
            bump,
            spare,
        );
        match r {
            Err(()) => return Err(items),
            Ok(None) => {}
            Ok(Some((k, right))) => {
                // The root split: a new root above the two halves.
                let mut new_root = match take(spare, Kd::new_branch()) {
                    Some(r) => r,
                    None => {
                        debug_assert!(false, "spare checked above");
                        return Err(items);
                    }
                };
                let old = self.root.take();
                if let (Some(br), Some(old)) = (Kd::branch_mut(&mut new_root.body), old) {
                    let first = br.push_first(old);
                    let second = br.insert(1, k, right);
                    debug_assert!(first.is_ok() && second.is_ok());
                }
                self.root = Some(new_root);
                self.height += 1;
            }
        }
        self.len += n;
        Ok(())
    }

    /// Runs `f` on the leaf where `route` belongs, letting it change that leaf (remove entries,
    /// change them in place, ask for up to two entries to be inserted), then splits or rebalances
    /// as needed: one descent for an operation that stays within one leaf. `f` may decline
    /// (changing nothing), and then this returns `false`.
    ///
    /// Takes at most [`insert_nodes`]`(height)` nodes from `spare`; declines up front if `spare`
    /// holds fewer.
    pub(crate) fn local<F>(&mut self, route: Kd::K, f: F, spare: &mut NodeBag<D, L, P>) -> bool
    where
        F: FnOnce(&mut Kd::Lf, LeafCtx<Kd::K>) -> Local<Kd::K, KindItems<D, L, P, Kd>>,
    {
        if spare.len() < insert_nodes(self.height) {
            return false;
        }
        // An empty tree has no leaf to work in: the general path creates the root if needed.
        let Some(root) = self.root.as_mut() else {
            return false;
        };
        let ctx = LeafCtx {
            hi: None,
            leftmost: true,
        };
        let mut f = Some(f);
        let r = local_rec::<D, L, P, Kd, F>(root, self.height, route, ctx, &mut f, spare);
        let Ok((done, _, split)) = r else {
            debug_assert!(false, "local operation ran out of nodes");
            return false;
        };
        if let Some((k, right)) = split {
            if let Some(mut new_root) = take(spare, Kd::new_branch()) {
                let old = self.root.take();
                if let (Some(br), Some(old)) = (Kd::branch_mut(&mut new_root.body), old) {
                    let first = br.push_first(old);
                    let second = br.insert(1, k, right);
                    debug_assert!(first.is_ok() && second.is_ok());
                }
                self.root = Some(new_root);
                self.height += 1;
            }
        }
        self.shrink_root(spare);
        match done {
            Some((removed, added)) => {
                self.len = self.len + added - removed;
                true
            }
            None => false,
        }
    }

    /// Removes the entry under `k`; merged-away nodes go to `spare`.
    pub(crate) fn remove(
        &mut self,
        k: Kd::K,
        spare: &mut NodeBag<D, L, P>,
    ) -> Option<(Kd::K, Kd::V, Kd::T)> {
        let root = self.root.as_mut()?;
        let r = remove_rec::<D, L, P, Kd>(root, self.height, k, spare);
        if r.is_some() {
            self.len -= 1;
            self.shrink_root(spare);
        }
        r
    }

    /// Walks the entries with keys in `[lo, hi)` in order, letting `vis` remove them, re-key the
    /// last one or stop; rebalances as it goes. O(log n + k).
    pub(crate) fn walk_range(
        &mut self,
        lo: Kd::K,
        hi: Kd::K,
        vis: &mut impl RangeVisit<Kd::K, Kd::V, Kd::T>,
        spare: &mut NodeBag<D, L, P>,
    ) {
        let Some(root) = self.root.as_mut() else {
            return;
        };
        let mut removed = 0;
        let mut counting = Counting {
            inner: vis,
            removed: &mut removed,
        };
        walk_rec::<D, L, P, Kd>(root, self.height, lo, hi, &mut counting, spare);
        self.len -= removed;
        self.shrink_root(spare);
    }

    /// Moves every node to `out`, leaving the tree empty, and hands each entry to `each`, in key
    /// order. Iterative: O(n) time, constant stack.
    pub(crate) fn clear(
        &mut self,
        out: &mut NodeBag<D, L, P>,
        mut each: impl FnMut(Kd::K, Kd::V, Kd::T),
    ) {
        // `todo` is a stack of the nodes still to empty, chained through their free-list link;
        // a branch's children go on it last-first, so the leftmost comes off first and entries
        // come out in key order.
        let mut todo: Option<P> = self.root.take();
        while let Some(mut n) = todo {
            todo = n.next.take();
            if let Some(br) = Kd::branch_mut(&mut n.body) {
                let mut kids: ArrayVec<P, MAX_CHILDREN> = ArrayVec::new();
                br.take_children(|c| {
                    // Cannot fail: a branch holds at most MAX_CHILDREN children.
                    let pushed = kids.try_push(c);
                    debug_assert!(pushed.is_ok(), "branch wider than MAX_CHILDREN");
                });
                while let Some(mut c) = kids.pop() {
                    c.next = todo.take();
                    todo = Some(c);
                }
            } else if let Some(leaf) = Kd::leaf_mut(&mut n.body) {
                while let Some((k, v, t)) = leaf.remove(0) {
                    each(k, v, t);
                }
            }
            out.push(n);
        }
        self.height = 0;
        self.len = 0;
    }

    /// Collapses a root branch with one child, and drops an empty root leaf.
    fn shrink_root(&mut self, spare: &mut NodeBag<D, L, P>) {
        loop {
            let Some(root) = self.root.as_mut() else {
                self.height = 0;
                return;
            };
            if let Some(br) = Kd::branch_mut(&mut root.body) {
                let Some(only) = br.take_only() else { return };
                if let Some(old) = self.root.replace(only) {
                    spare.push(old);
                }
                self.height -= 1;
            } else if Kd::leaf(&root.body).is_some_and(|l| l.len() == 0) {
                if let Some(old) = self.root.take() {
                    spare.push(old);
                }
                self.height = 0;
                return;
            } else {
                return;
            }
        }
    }
}

/// Counts removals on their way to the real visitor.
struct Counting<'a, V> {
    inner: &'a mut V,
    removed: &'a mut usize,
}

impl<K, Vl, T, V: RangeVisit<K, Vl, T>> RangeVisit<K, Vl, T> for Counting<'_, V> {
    fn visit(&mut self, k: K, v: &mut Vl, t: &mut T) -> Act<K> {
        self.inner.visit(k, v, t)
    }
    fn removed(&mut self, k: K, v: Vl, t: T) {
        *self.removed += 1;
        self.inner.removed(k, v, t);
    }
}

type Split<K, P> = Option<(K, P)>;

fn insert_rec<D, L, P: NodePtr<D, L>, Kd: Kind<D, L, P>>(
    node: &mut P,
    level: usize,
    edge: Edge,
    route: Kd::K,
    items: &mut Items<Kd::K, Kd::V, Kd::T>,
    bump: Option<Kd::K>,
    spare: &mut NodeBag<D, L, P>,
) -> Result<Split<Kd::K, P>, ()> {
    if level > 1 {
        let br = Kd::branch_mut(&mut node.body).ok_or(())?;
        let ci = br.child_index(route);
        if let Some(b) = bump {
            if ci + 1 < br.len() && br.pivot(ci).is_some_and(|p| p < b) {
                br.set_pivot(ci, b);
            }
        }
        let child_edge = edge.child(ci, br.len());
        let child = br.child_mut(ci).ok_or(())?;
        let Some(split) =
            insert_rec::<D, L, P, Kd>(child, level - 1, child_edge, route, items, bump, spare)?
        else {
            return Ok(None);
        };
        return branch_place::<D, L, P, Kd>(br, ci, edge, split, spare);
    }
    let leaf = Kd::leaf_mut(&mut node.body).ok_or(())?;
    let first = items.first().map(|e| e.0).ok_or(())?;
    let pos = leaf.lower_bound(first);
    leaf_insert::<D, L, P, Kd>(leaf, pos, edge, items, spare)
}

/// Inserts `items` at `pos` of `leaf`, splitting it if they do not fit: in halves, or, for an
/// append to the rightmost leaf (a prepend to the leftmost), leaving the old leaf full and the
/// new entries alone in the new one.
fn leaf_insert<D, L, P: NodePtr<D, L>, Kd: Kind<D, L, P>>(
    leaf: &mut Kd::Lf,
    pos: usize,
    edge: Edge,
    items: &mut Items<Kd::K, Kd::V, Kd::T>,
    spare: &mut NodeBag<D, L, P>,
) -> Result<Split<Kd::K, P>, ()> {
    let n = items.len();
    let len = leaf.len();
    if len + n <= <Kd::Lf as LeafOps>::CAP {
        for (j, (k, v, t)) in items.drain(..).enumerate() {
            let placed = leaf.insert(pos + j, k, v, t);
            debug_assert!(placed.is_ok());
        }
        return Ok(None);
    }
    let mut sib = take(spare, Kd::new_leaf()).ok_or(())?;
    let sl = Kd::leaf_mut(&mut sib.body).ok_or(())?;
    // The left half ends with ceil(total / 2) entries, the right with the rest: both at least half
    // full because total > CAP.
    let total = len + n;
    let left = if edge.right && pos == len {
        // Appending at the right edge (ascending addresses): keep this leaf full.
        len
    } else if edge.left && pos == 0 {
        // Prepending at the left edge (descending addresses): the new entries stay alone.
        n
    } else {
        total.div_ceil(2)
    };
    if pos + n <= left {
        leaf.move_tail(len - (total - left), sl);
        for (j, (k, v, t)) in items.drain(..).enumerate() {
            let placed = leaf.insert(pos + j, k, v, t);
            debug_assert!(placed.is_ok());
        }
    } else if pos >= left {
        leaf.move_tail(left, sl);
        for (j, (k, v, t)) in items.drain(..).enumerate() {
            let placed = sl.insert(pos - left + j, k, v, t);
            debug_assert!(placed.is_ok());
        }
    } else {
        // Two items straddling the middle: the first ends the left half, the second starts the
        // right one.
        leaf.move_tail(pos, sl);
        let mut it = items.drain(..);
        if let Some((k, v, t)) = it.next() {
            let placed = leaf.insert(pos, k, v, t);
            debug_assert!(placed.is_ok());
        }
        if let Some((k, v, t)) = it.next() {
            let placed = sl.insert(0, k, v, t);
            debug_assert!(placed.is_ok());
        }
    }
    let up = sl.key(0).ok_or(())?;
    Ok(Some((up, sib)))
}

/// Places the right half of a split child `ci` next to it in `br`, splitting `br` if full: in
/// halves, or at an edge (see [`leaf_insert`]) leaving two children in the new edge branch.
fn branch_place<D, L, P: NodePtr<D, L>, Kd: Kind<D, L, P>>(
    br: &mut Kd::Br,
    ci: usize,
    edge: Edge,
    (k, right): (Kd::K, P),
    spare: &mut NodeBag<D, L, P>,
) -> Result<Split<Kd::K, P>, ()> {
    if br.len() < <Kd::Br as BranchOps>::CAP {
        let placed = br.insert(ci + 1, k, right);
        debug_assert!(placed.is_ok());
        return Ok(None);
    }
    // Full: split in halves, then place the new child in the half it belongs to.
    let mut sib = take(spare, Kd::new_branch()).ok_or(())?;
    let sb = Kd::branch_mut(&mut sib.body).ok_or(())?;
    let cap = <Kd::Br as BranchOps>::CAP;
    let at = if edge.right && ci + 1 == cap {
        cap - 1
    } else if edge.left && ci == 0 {
        1
    } else {
        cap / 2
    };
    let up = br.split_off(at, sb).ok_or(())?;
    let placed = if ci < at {
        br.insert(ci + 1, k, right)
    } else {
        sb.insert(ci + 1 - at, k, right)
    };
    debug_assert!(placed.is_ok());
    Ok(Some((up, sib)))
}

/// Where a leaf handler of [`Tree::local`] runs.
pub(crate) struct LeafCtx<K> {
    /// Keys to the right of this leaf are at least this (the leaf's exclusive upper bound);
    /// `None` for the rightmost leaf.
    pub(crate) hi: Option<K>,
    /// Whether this is the leftmost leaf (no key anywhere below its first).
    pub(crate) leftmost: bool,
}

/// What a leaf handler of [`Tree::local`] did.
pub(crate) enum Local<K, I> {
    /// Nothing: the operation does not fit in one leaf.
    Declined,
    /// It removed `removed` entries and wants `insert` placed at a position. `bump`: it moved a
    /// key up, or inserts one, inside the gap to the successor of an existing key, so pivots
    /// right of the path must be raised to at least `bump` (see "Pivots" above).
    Done {
        removed: usize,
        insert: Option<(usize, I)>,
        bump: Option<K>,
    },
}

/// (removed, added) if done; the bump to apply above; a split to place above.
type LocalResult<K, P> = Result<(Option<(usize, usize)>, Option<K>, Split<K, P>), ()>;

fn local_rec<D, L, P: NodePtr<D, L>, Kd: Kind<D, L, P>, F>(
    node: &mut P,
    level: usize,
    route: Kd::K,
    ctx: LeafCtx<Kd::K>,
    f: &mut Option<F>,
    spare: &mut NodeBag<D, L, P>,
) -> LocalResult<Kd::K, P>
where
    F: FnOnce(&mut Kd::Lf, LeafCtx<Kd::K>) -> Local<Kd::K, KindItems<D, L, P, Kd>>,
{
    if level > 1 {
        let br = Kd::branch_mut(&mut node.body).ok_or(())?;
        let ci = br.child_index(route);
        let child_ctx = LeafCtx {
            hi: if ci + 1 < br.len() {
                br.pivot(ci)
            } else {
                ctx.hi
            },
            leftmost: ctx.leftmost && ci == 0,
        };
        let child = br.child_mut(ci).ok_or(())?;
        let edge = Edge {
            left: ctx.leftmost,
            right: ctx.hi.is_none(),
        };
        let (done, bump, split) =
            local_rec::<D, L, P, Kd, F>(child, level - 1, route, child_ctx, f, spare)?;
        if let Some(b) = bump {
            if ci + 1 < br.len() && br.pivot(ci).is_some_and(|p| p < b) {
                br.set_pivot(ci, b);
            }
        }
        if let Some(s) = split {
            return Ok((
                done,
                bump,
                branch_place::<D, L, P, Kd>(br, ci, edge, s, spare)?,
            ));
        }
        if done.is_some_and(|(removed, _)| removed > 0) {
            fix::<D, L, P, Kd>(br, ci, level - 1, spare);
        }
        return Ok((done, bump, None));
    }
    let leaf = Kd::leaf_mut(&mut node.body).ok_or(())?;
    let f = f.take().ok_or(())?;
    let edge = Edge {
        left: ctx.leftmost,
        right: ctx.hi.is_none(),
    };
    match f(leaf, ctx) {
        Local::Declined => Ok((None, None, None)),
        Local::Done {
            removed,
            insert,
            bump,
        } => match insert {
            None => Ok((Some((removed, 0)), bump, None)),
            Some((pos, mut items)) => {
                let n = items.len();
                let split = leaf_insert::<D, L, P, Kd>(leaf, pos, edge, &mut items, spare)?;
                Ok((Some((removed, n)), bump, split))
            }
        },
    }
}

fn remove_rec<D, L, P: NodePtr<D, L>, Kd: Kind<D, L, P>>(
    node: &mut P,
    level: usize,
    k: Kd::K,
    spare: &mut NodeBag<D, L, P>,
) -> Option<(Kd::K, Kd::V, Kd::T)> {
    if level > 1 {
        let br = Kd::branch_mut(&mut node.body)?;
        let ci = br.child_index(k);
        let r = remove_rec::<D, L, P, Kd>(br.child_mut(ci)?, level - 1, k, spare)?;
        fix::<D, L, P, Kd>(br, ci, level - 1, spare);
        return Some(r);
    }
    let leaf = Kd::leaf_mut(&mut node.body)?;
    let i = leaf.lower_bound(k);
    if leaf.key(i) != Some(k) {
        return None;
    }
    leaf.remove(i)
}

fn walk_rec<D, L, P: NodePtr<D, L>, Kd: Kind<D, L, P>>(
    node: &mut P,
    level: usize,
    lo: Kd::K,
    hi: Kd::K,
    vis: &mut impl RangeVisit<Kd::K, Kd::V, Kd::T>,
    spare: &mut NodeBag<D, L, P>,
) -> Flow<Kd::K> {
    if level > 1 {
        let Some(br) = Kd::branch_mut(&mut node.body) else {
            return Flow::Done { bump: None };
        };
        let mut ci = br.child_index(lo);
        loop {
            let Some(child) = br.child_mut(ci) else {
                return Flow::Exhausted;
            };
            let flow = walk_rec::<D, L, P, Kd>(child, level - 1, lo, hi, vis, spare);
            // A re-key below raises the pivot after this child before `fix` runs: a merge moves
            // that pivot down into the merged node as a separator, where it must already bound
            // the moved key (raising it afterwards would miss the copy).
            if let Flow::Done { bump: Some(b) } = flow {
                if ci + 1 < br.len() && br.pivot(ci).is_some_and(|p| p < b) {
                    br.set_pivot(ci, b);
                }
            }
            let how = fix::<D, L, P, Kd>(br, ci, level - 1, spare);
            if let Flow::Done { .. } = flow {
                return flow;
            }
            // The child has nothing left in range: go on with the one after it.
            ci = match how {
                Fix::Kept => ci + 1,
                Fix::IntoLeft => ci,
                Fix::FromRight => ci,
            };
            if ci >= br.len() {
                return Flow::Exhausted;
            }
        }
    }
    let Some(leaf) = Kd::leaf_mut(&mut node.body) else {
        return Flow::Done { bump: None };
    };
    let i = leaf.lower_bound(lo);
    loop {
        let Some(k) = leaf.key(i) else {
            return Flow::Exhausted;
        };
        if k >= hi {
            return Flow::Done { bump: None };
        }
        let Some((v, t)) = leaf.entry_mut(i) else {
            return Flow::Exhausted;
        };
        match vis.visit(k, v, t) {
            Act::Remove => {
                if let Some((k, v, t)) = leaf.remove(i) {
                    vis.removed(k, v, t);
                }
            }
            Act::Rekey(nk) => {
                debug_assert!(nk > k && leaf.key(i + 1).is_none_or(|n| nk < n));
                leaf.set_key(i, nk);
                // Pivots above the path must exceed the new key: at least nk + 1, which the
                // successor (strictly above nk) allows.
                return Flow::Done {
                    bump: Bump::bump(nk),
                };
            }
            Act::Stop => return Flow::Done { bump: None },
        }
    }
}

/// Restores the occupancy of child `ci` of `br` (at `child_level`) after removals, by borrowing
/// from or merging with a sibling; prefers the left sibling, whose keys a range walk is done with.
/// A range walk may have taken many entries from the child, so borrowing repeats until the child
/// is half full or the sibling is down to half, when the two fit in one node and merge.
fn fix<D, L, P: NodePtr<D, L>, Kd: Kind<D, L, P>>(
    br: &mut Kd::Br,
    ci: usize,
    child_level: usize,
    spare: &mut NodeBag<D, L, P>,
) -> Fix {
    if br.len() < 2 {
        return Fix::Kept;
    }
    let from_left = ci > 0;
    let li = if from_left { ci - 1 } else { 0 };
    let min = if child_level > 1 {
        <Kd::Br as BranchOps>::CAP / 2
    } else {
        <Kd::Lf as LeafOps>::CAP / 2
    };
    let mut how = Fix::Kept;
    loop {
        let Some((left, right)) = br.pair_mut(li) else {
            return how;
        };
        let size = |n: &P| {
            if child_level > 1 {
                Kd::branch(&n.body).map_or(0, BranchOps::len)
            } else {
                Kd::leaf(&n.body).map_or(0, LeafOps::len)
            }
        };
        let (child, sib) = if from_left {
            (size(right), size(left))
        } else {
            (size(left), size(right))
        };
        if child >= min {
            return how;
        }
        let Some(sep) = br.pivot(li) else {
            return how;
        };
        let Some((left, right)) = br.pair_mut(li) else {
            return how;
        };
        if sib <= min {
            merge::<D, L, P, Kd>(left, right, sep, child_level, spare);
            if let Some((_, gone)) = br.remove(li + 1) {
                spare.push(gone);
            }
            return if from_left {
                Fix::IntoLeft
            } else {
                Fix::FromRight
            };
        }
        match borrow::<D, L, P, Kd>(left, right, sep, child_level, from_left, spare) {
            Some(new_sep) => br.set_pivot(li, new_sep),
            None => return how,
        }
        if !from_left {
            how = Fix::FromRight;
        }
    }
}

/// Moves everything of `right` into `left`, with `sep` the pivot between them.
///
/// For branches, the children meeting at the seam may be underfull: a range walk can leave a
/// branch whose only child it emptied (a node without siblings cannot be fixed in place). They
/// are fixed here, down the seam.
fn merge<D, L, P: NodePtr<D, L>, Kd: Kind<D, L, P>>(
    left: &mut P,
    right: &mut P,
    sep: Kd::K,
    level: usize,
    spare: &mut NodeBag<D, L, P>,
) {
    if level > 1 {
        if let (Some(l), Some(r)) = (
            Kd::branch_mut(&mut left.body),
            Kd::branch_mut(&mut right.body),
        ) {
            let seam = l.len();
            l.append(sep, r);
            fix_seam::<D, L, P, Kd>(l, seam, level - 1, spare);
        }
    } else if let (Some(l), Some(r)) = (Kd::leaf_mut(&mut left.body), Kd::leaf_mut(&mut right.body))
    {
        r.move_tail(0, l);
    }
}

/// Moves one entry (or child) across the pivot `sep` between `left` and `right`: from `left`'s
/// end to `right`'s front when `to_right`, the other way otherwise. Returns the new pivot. For
/// branches, fixes the children at the new seam (see [`merge`]).
fn borrow<D, L, P: NodePtr<D, L>, Kd: Kind<D, L, P>>(
    left: &mut P,
    right: &mut P,
    sep: Kd::K,
    level: usize,
    to_right: bool,
    spare: &mut NodeBag<D, L, P>,
) -> Option<Kd::K> {
    if level > 1 {
        let l = Kd::branch_mut(&mut left.body)?;
        let r = Kd::branch_mut(&mut right.body)?;
        if to_right {
            let (pk, c) = l.pop_back()?;
            r.insert_front(c, sep).ok()?;
            fix_seam::<D, L, P, Kd>(r, 1, level - 1, spare);
            Some(pk)
        } else {
            let (c, rk) = r.remove_front()?;
            l.insert(l.len(), sep, c).ok()?;
            let seam = l.len() - 1;
            fix_seam::<D, L, P, Kd>(l, seam, level - 1, spare);
            Some(rk)
        }
    } else {
        let l = Kd::leaf_mut(&mut left.body)?;
        let r = Kd::leaf_mut(&mut right.body)?;
        if to_right {
            let (k, v, t) = l.remove(l.len().checked_sub(1)?)?;
            r.insert(0, k, v, t).ok()?;
            Some(k)
        } else {
            let (k, v, t) = r.remove(0)?;
            l.insert(l.len(), k, v, t).ok()?;
            r.key(0)
        }
    }
}

/// Fixes the children on both sides of position `seam` of `br` (children `seam - 1` and `seam`),
/// repeating while a merge leaves the merged node underfull.
fn fix_seam<D, L, P: NodePtr<D, L>, Kd: Kind<D, L, P>>(
    br: &mut Kd::Br,
    seam: usize,
    child_level: usize,
    spare: &mut NodeBag<D, L, P>,
) {
    for start in [seam, seam.saturating_sub(1)] {
        let mut i = start;
        // Each round merges two children or ends: at most one round per child.
        for _ in 0..<Kd::Br as BranchOps>::CAP {
            if i >= br.len() {
                break;
            }
            match fix::<D, L, P, Kd>(br, i, child_level, spare) {
                Fix::Kept => break,
                Fix::IntoLeft => i -= 1,
                Fix::FromRight => {}
            }
        }
    }
}

impl<D, L, P: NodePtr<D, L>, Kd: Kind<D, L, P>> Tree<D, L, P, Kd> {
    /// Calls `f` on every entry, in key order, with mutable access to value and tag (not key).
    pub(crate) fn for_each_mut(&mut self, mut f: impl FnMut(Kd::K, &mut Kd::V, &mut Kd::T)) {
        if let Some(root) = self.root.as_mut() {
            each_rec::<D, L, P, Kd>(root, self.height, &mut f);
        }
    }

    /// Checks every structural invariant: equal leaf depth, occupancy, key order inside nodes
    /// and against the pivots, and the entry count. O(n); for tests.
    pub(crate) fn check(&self) -> Result<(), &'static str> {
        let Some(root) = self.root.as_ref() else {
            return if self.len == 0 && self.height == 0 {
                Ok(())
            } else {
                Err("empty tree with entries or height")
            };
        };
        let mut count = 0;
        check_rec::<D, L, P, Kd>(root, self.height, None, None, Edge::ROOT, &mut count)?;
        if count != self.len {
            return Err("entry count differs from len");
        }
        Ok(())
    }
}

fn each_rec<D, L, P: NodePtr<D, L>, Kd: Kind<D, L, P>>(
    node: &mut P,
    level: usize,
    f: &mut impl FnMut(Kd::K, &mut Kd::V, &mut Kd::T),
) {
    if level > 1 {
        if let Some(br) = Kd::branch_mut(&mut node.body) {
            for i in 0..br.len() {
                if let Some(c) = br.child_mut(i) {
                    each_rec::<D, L, P, Kd>(c, level - 1, f);
                }
            }
        }
    } else if let Some(leaf) = Kd::leaf_mut(&mut node.body) {
        for i in 0..leaf.len() {
            let Some(k) = leaf.key(i) else { break };
            if let Some((v, t)) = leaf.entry_mut(i) {
                f(k, v, t);
            }
        }
    }
}

fn check_rec<D, L, P: NodePtr<D, L>, Kd: Kind<D, L, P>>(
    node: &P,
    level: usize,
    lo: Option<Kd::K>,
    hi: Option<Kd::K>,
    edge: Edge,
    count: &mut usize,
) -> Result<(), &'static str> {
    // Nodes on the leftmost or rightmost path may be below half full (edge splits); the root
    // lies on both.
    let exempt = edge.left || edge.right;
    let in_bounds = |k: Kd::K| lo.is_none_or(|l| k >= l) && hi.is_none_or(|h| k < h);
    if level > 1 {
        let br = Kd::branch(&node.body).ok_or("branch expected")?;
        let n = br.len();
        if n < 2 || (!exempt && n < <Kd::Br as BranchOps>::CAP / 2) {
            return Err("underfull branch");
        }
        for i in 0..n {
            let clo = if i == 0 { lo } else { br.pivot(i - 1) };
            let chi = if i + 1 == n { hi } else { br.pivot(i) };
            if let (Some(a), Some(b)) = (clo, chi) {
                if a >= b {
                    return Err("pivots out of order");
                }
            }
            if let Some(p) = br.pivot(i) {
                if !in_bounds(p) {
                    return Err("pivot outside its parent's bounds");
                }
            }
            let c = br.child(i).ok_or("missing child")?;
            check_rec::<D, L, P, Kd>(c, level - 1, clo, chi, edge.child(i, n), count)?;
        }
        return Ok(());
    }
    let leaf = Kd::leaf(&node.body).ok_or("leaf expected at the bottom level")?;
    let n = leaf.len();
    if n == 0 || (!exempt && n < <Kd::Lf as LeafOps>::CAP / 2) {
        return Err("underfull leaf");
    }
    let keys = leaf.keys();
    if keys.windows(2).any(|w| w[0] >= w[1]) {
        return Err("leaf keys out of order");
    }
    if !keys.iter().all(|&k| in_bounds(k)) {
        return Err("leaf key outside its pivots");
    }
    *count += n;
    Ok(())
}
