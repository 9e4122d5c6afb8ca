//! A read-only cursor: a position in a [`Tree`] that steps to the next or previous entry without
//! descending from the root again (amortised O(1) per step, O(log n) at worst).

use arrayvec::ArrayVec;

use super::{BranchOps, Kind, LeafOps, Tree, MAX_HEIGHT};
use crate::node::NodePtr;

/// A position: an entry of a leaf, or the end (index == leaf length, on the last leaf).
pub(crate) struct Cursor<'a, D, L, P, Kd: Kind<D, L, P>> {
    tree: &'a Tree<D, L, P, Kd>,
    /// The branches above the leaf, with the child index taken in each.
    path: ArrayVec<(&'a Kd::Br, usize), MAX_HEIGHT>,
    leaf: Option<&'a Kd::Lf>,
    idx: usize,
}

impl<D, L, P, Kd: Kind<D, L, P>> Clone for Cursor<'_, D, L, P, Kd> {
    fn clone(&self) -> Self {
        Self {
            tree: self.tree,
            path: self.path.clone(),
            leaf: self.leaf,
            idx: self.idx,
        }
    }
}

impl<'a, D, L, P: NodePtr<D, L>, Kd: Kind<D, L, P>> Cursor<'a, D, L, P, Kd> {
    pub(crate) fn new(tree: &'a Tree<D, L, P, Kd>) -> Self {
        Self {
            tree,
            path: ArrayVec::new(),
            leaf: None,
            idx: 0,
        }
    }

    /// Goes down from the root, choosing each child with `pick`.
    fn descend(&mut self, mut pick: impl FnMut(&Kd::Br) -> usize) {
        self.path.clear();
        self.leaf = None;
        self.idx = 0;
        let Some(mut node) = self.tree.root() else {
            return;
        };
        loop {
            if let Some(br) = Kd::branch(&node.body) {
                let ci = pick(br);
                let Some(child) = br.child(ci) else { return };
                if self.path.try_push((br, ci)).is_err() {
                    return;
                }
                node = child;
            } else {
                self.leaf = Kd::leaf(&node.body);
                return;
            }
        }
    }

    /// Descends the leftmost (`first`) or rightmost path below the top of `path`.
    fn descend_edge(&mut self, first: bool) {
        let Some(&(br, ci)) = self.path.last() else {
            return;
        };
        let Some(mut node) = br.child(ci) else { return };
        loop {
            if let Some(b) = Kd::branch(&node.body) {
                let c = if first { 0 } else { b.len().saturating_sub(1) };
                let Some(child) = b.child(c) else { return };
                if self.path.try_push((b, c)).is_err() {
                    return;
                }
                node = child;
            } else {
                self.leaf = Kd::leaf(&node.body);
                self.idx = if first {
                    0
                } else {
                    self.leaf.map_or(0, |l| l.len().saturating_sub(1))
                };
                return;
            }
        }
    }

    pub(crate) fn seek(&mut self, k: Kd::K) {
        self.descend(|br| br.child_index(k));
        if let Some(leaf) = self.leaf {
            self.idx = leaf.lower_bound(k);
            if self.idx == leaf.len() {
                self.next_leaf();
            }
        }
    }

    pub(crate) fn seek_first(&mut self) {
        self.descend(|_| 0);
    }

    /// Moves to the first entry of the next leaf; stays at the end if there is none.
    fn next_leaf(&mut self) -> bool {
        let Some(j) = self.path.iter().rposition(|&(br, ci)| ci + 1 < br.len()) else {
            return false;
        };
        self.path.truncate(j + 1);
        if let Some(top) = self.path.last_mut() {
            top.1 += 1;
        }
        self.descend_edge(true);
        true
    }

    /// The entry under the cursor.
    pub(crate) fn get(&self) -> Option<(Kd::K, &'a Kd::V, Kd::T)> {
        let leaf = self.leaf?;
        Some((leaf.key(self.idx)?, leaf.val(self.idx)?, leaf.tag(self.idx)))
    }

    pub(crate) fn key(&self) -> Option<Kd::K> {
        self.leaf?.key(self.idx)
    }

    /// Steps forward; `false` at the end.
    pub(crate) fn next(&mut self) -> bool {
        let Some(leaf) = self.leaf else { return false };
        if self.idx + 1 < leaf.len() {
            self.idx += 1;
            return true;
        }
        if self.next_leaf() {
            return true;
        }
        self.idx = leaf.len();
        false
    }

    /// Steps back; `false` (staying put) at the first entry.
    pub(crate) fn prev(&mut self) -> bool {
        if self.leaf.is_none() {
            return false;
        }
        if self.idx > 0 {
            self.idx -= 1;
            return true;
        }
        let Some(j) = self.path.iter().rposition(|&(_, ci)| ci > 0) else {
            return false;
        };
        self.path.truncate(j + 1);
        if let Some(top) = self.path.last_mut() {
            top.1 -= 1;
        }
        self.descend_edge(false);
        true
    }
}
