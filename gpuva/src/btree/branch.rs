//! A branch: up to `N` children separated by pivot keys.
//!
//! ```text
//!   keys:      k0    k1    k2            child i holds keys in [k(i-1), k(i))
//!   children: c0 | c1 | c2 | c3          (c0: below k0; the last child: k(last) and up)
//! ```
//!
//! A pivot is a lower bound of the child to its right and an upper bound (exclusive) of the child
//! to its left; it need not be a key that still exists, which is what lets removals leave
//! ancestors alone.

use arrayvec::ArrayVec;

/// One branch of a [`super::Tree`].
///
/// # Invariants
///
/// `keys[..children.len() - 1]` are the pivots, strictly ascending; slot `N - 1` is never used
/// (a const generic cannot be `N - 1` on stable Rust, so one key slot is spare).
pub(crate) struct Branch<K, P, const N: usize> {
    keys: [K; N],
    children: ArrayVec<P, N>,
}

impl<K: Copy + Ord + Default, P, const N: usize> Branch<K, P, N> {
    pub(crate) fn new() -> Self {
        Self {
            keys: [K::default(); N],
            children: ArrayVec::new(),
        }
    }

    /// Number of children.
    pub(crate) fn len(&self) -> usize {
        self.children.len()
    }

    pub(crate) fn pivots(&self) -> &[K] {
        &self.keys[..self.children.len().saturating_sub(1)]
    }

    pub(crate) fn pivot(&self, i: usize) -> Option<K> {
        self.pivots().get(i).copied()
    }

    pub(crate) fn set_pivot(&mut self, i: usize, k: K) {
        if i + 1 < self.children.len() {
            self.keys[i] = k;
        }
    }

    /// The child whose key range holds `k`: the number of pivots `<= k`.
    pub(crate) fn child_index(&self, k: K) -> usize {
        // A binary search compiled to conditional moves, like `Leaf::lower_bound`.
        self.pivots().partition_point(|&p| p <= k)
    }

    pub(crate) fn child(&self, i: usize) -> Option<&P> {
        self.children.get(i)
    }

    pub(crate) fn child_mut(&mut self, i: usize) -> Option<&mut P> {
        self.children.get_mut(i)
    }

    /// Children `i` and `i + 1`, both mutably.
    pub(crate) fn pair_mut(&mut self, i: usize) -> Option<(&mut P, &mut P)> {
        let (a, b) = self.children.get_mut(i..i + 2)?.split_at_mut(1);
        Some((a.first_mut()?, b.first_mut()?))
    }

    /// The first child of an empty branch.
    pub(crate) fn push_first(&mut self, c: P) -> Result<(), P> {
        if !self.children.is_empty() {
            return Err(c);
        }
        self.children.try_push(c).map_err(|e| e.element())
    }

    /// Inserts child `c` at index `i >= 1`, with pivot `k` between children `i - 1` and `i`.
    pub(crate) fn insert(&mut self, i: usize, k: K, c: P) -> Result<(), P> {
        let len = self.children.len();
        if i == 0 || i > len || len == N {
            return Err(c);
        }
        // Pivots are keys[..len - 1]; the new one goes to keys[i - 1].
        self.keys.copy_within(i - 1..len - 1, i);
        self.keys[i - 1] = k;
        self.children.insert(i, c);
        Ok(())
    }

    /// Inserts child `c` at index 0, with pivot `k` between it and the old first child.
    pub(crate) fn insert_front(&mut self, c: P, k: K) -> Result<(), P> {
        let len = self.children.len();
        if len == N || len == 0 {
            return Err(c);
        }
        self.keys.copy_within(0..len - 1, 1);
        self.keys[0] = k;
        self.children.insert(0, c);
        Ok(())
    }

    /// Removes child `i >= 1` with the pivot to its left.
    pub(crate) fn remove(&mut self, i: usize) -> Option<(K, P)> {
        let len = self.children.len();
        if i == 0 || i >= len {
            return None;
        }
        let k = self.keys[i - 1];
        self.keys.copy_within(i..len - 1, i - 1);
        Some((k, self.children.remove(i)))
    }

    /// Removes child 0 with the pivot to its right.
    pub(crate) fn remove_front(&mut self) -> Option<(P, K)> {
        let len = self.children.len();
        if len < 2 {
            return None;
        }
        let k = self.keys[0];
        self.keys.copy_within(1..len - 1, 0);
        Some((self.children.remove(0), k))
    }

    /// Removes the last child (of at least two) with the pivot to its left.
    pub(crate) fn pop_back(&mut self) -> Option<(K, P)> {
        let len = self.children.len();
        self.remove(len.checked_sub(1)?)
    }

    /// Takes the only child of a one-child branch.
    pub(crate) fn take_only(&mut self) -> Option<P> {
        if self.children.len() == 1 {
            self.children.pop()
        } else {
            None
        }
    }

    /// Moves children `at..` (and the pivots between them) to the end of the empty branch `dst`;
    /// returns the pivot that separated child `at - 1` from child `at`.
    pub(crate) fn split_off(&mut self, at: usize, dst: &mut Self) -> Option<K> {
        let len = self.children.len();
        if at == 0 || at >= len || !dst.children.is_empty() {
            return None;
        }
        let up = self.keys[at - 1];
        let n = len - at;
        dst.keys[..n - 1].copy_from_slice(&self.keys[at..len - 1]);
        for c in self.children.drain(at..) {
            let pushed = dst.children.try_push(c);
            debug_assert!(pushed.is_ok(), "branch split overflowed");
        }
        Some(up)
    }

    /// Appends `sep` and all of `src` (children and pivots) to `self`.
    pub(crate) fn append(&mut self, sep: K, src: &mut Self) {
        let (len, n) = (self.children.len(), src.children.len());
        if len == 0 || n == 0 || len + n > N {
            debug_assert!(false, "bad branch merge");
            return;
        }
        self.keys[len - 1] = sep;
        self.keys[len..len + n - 1].copy_from_slice(&src.keys[..n - 1]);
        for c in src.children.drain(..) {
            let pushed = self.children.try_push(c);
            debug_assert!(pushed.is_ok(), "branch merge overflowed");
        }
    }

    /// Takes all children out (for iterative teardown).
    pub(crate) fn drain(&mut self) -> arrayvec::Drain<'_, P, N> {
        self.children.drain(..)
    }
}

/// The branch operations the tree algorithms use, for every branch capacity.
pub(crate) trait BranchOps {
    type K: Copy + Ord + Default;
    type P;
    const CAP: usize;
    fn len(&self) -> usize;
    fn pivot(&self, i: usize) -> Option<Self::K>;
    fn set_pivot(&mut self, i: usize, k: Self::K);
    fn child_index(&self, k: Self::K) -> usize;
    fn child(&self, i: usize) -> Option<&Self::P>;
    fn child_mut(&mut self, i: usize) -> Option<&mut Self::P>;
    fn pair_mut(&mut self, i: usize) -> Option<(&mut Self::P, &mut Self::P)>;
    fn push_first(&mut self, c: Self::P) -> Result<(), Self::P>;
    fn insert(&mut self, i: usize, k: Self::K, c: Self::P) -> Result<(), Self::P>;
    fn insert_front(&mut self, c: Self::P, k: Self::K) -> Result<(), Self::P>;
    fn remove(&mut self, i: usize) -> Option<(Self::K, Self::P)>;
    fn remove_front(&mut self) -> Option<(Self::P, Self::K)>;
    fn pop_back(&mut self) -> Option<(Self::K, Self::P)>;
    fn take_only(&mut self) -> Option<Self::P>;
    fn split_off(&mut self, at: usize, dst: &mut Self) -> Option<Self::K>;
    fn append(&mut self, sep: Self::K, src: &mut Self);
    fn take_children(&mut self, out: impl FnMut(Self::P));
}

impl<K: Copy + Ord + Default, P, const N: usize> BranchOps for Branch<K, P, N> {
    type K = K;
    type P = P;
    const CAP: usize = N;
    fn len(&self) -> usize {
        Branch::len(self)
    }
    fn pivot(&self, i: usize) -> Option<K> {
        Branch::pivot(self, i)
    }
    fn set_pivot(&mut self, i: usize, k: K) {
        Branch::set_pivot(self, i, k);
    }
    fn child_index(&self, k: K) -> usize {
        Branch::child_index(self, k)
    }
    fn child(&self, i: usize) -> Option<&P> {
        Branch::child(self, i)
    }
    fn child_mut(&mut self, i: usize) -> Option<&mut P> {
        Branch::child_mut(self, i)
    }
    fn pair_mut(&mut self, i: usize) -> Option<(&mut P, &mut P)> {
        Branch::pair_mut(self, i)
    }
    fn push_first(&mut self, c: P) -> Result<(), P> {
        Branch::push_first(self, c)
    }
    fn insert(&mut self, i: usize, k: K, c: P) -> Result<(), P> {
        Branch::insert(self, i, k, c)
    }
    fn insert_front(&mut self, c: P, k: K) -> Result<(), P> {
        Branch::insert_front(self, c, k)
    }
    fn remove(&mut self, i: usize) -> Option<(K, P)> {
        Branch::remove(self, i)
    }
    fn remove_front(&mut self) -> Option<(P, K)> {
        Branch::remove_front(self)
    }
    fn pop_back(&mut self) -> Option<(K, P)> {
        Branch::pop_back(self)
    }
    fn take_only(&mut self) -> Option<P> {
        Branch::take_only(self)
    }
    fn split_off(&mut self, at: usize, dst: &mut Self) -> Option<K> {
        Branch::split_off(self, at, dst)
    }
    fn append(&mut self, sep: K, src: &mut Self) {
        Branch::append(self, sep, src);
    }
    fn take_children(&mut self, mut out: impl FnMut(P)) {
        for c in self.drain() {
            out(c);
        }
    }
}
