//! A leaf: up to `N` sorted keys with their values and a small `Copy` tag per entry.
//!
//! Keys sit in one contiguous array so that a search reads two or three cache lines; values and
//! tags are separate columns. The tag column exists so that a 4-byte field (the VA tree's flags)
//! does not pad every value to the next multiple of 8.

use arrayvec::ArrayVec;

/// One leaf of a [`super::Tree`].
///
/// # Invariants
///
/// `keys[..len]` and `tags[..len]` describe the entries, `len == vals.len()`, keys strictly
/// ascending. Slots past `len` hold stale copies and are never read.
pub(crate) struct Leaf<K, V, T, const N: usize> {
    keys: [K; N],
    tags: [T; N],
    vals: ArrayVec<V, N>,
}

impl<K: Copy + Ord + Default, V, T: Copy + Default, const N: usize> Leaf<K, V, T, N> {
    /// An empty leaf.
    pub(crate) fn new() -> Self {
        Self {
            keys: [K::default(); N],
            tags: [T::default(); N],
            vals: ArrayVec::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.vals.len()
    }

    pub(crate) fn keys(&self) -> &[K] {
        &self.keys[..self.vals.len()]
    }

    pub(crate) fn key(&self, i: usize) -> Option<K> {
        self.keys().get(i).copied()
    }

    pub(crate) fn set_key(&mut self, i: usize, k: K) {
        if i < self.len() {
            self.keys[i] = k;
        }
    }

    pub(crate) fn val(&self, i: usize) -> Option<&V> {
        self.vals.get(i)
    }

    pub(crate) fn tag(&self, i: usize) -> T {
        self.tags[..self.len()].get(i).copied().unwrap_or_default()
    }

    /// The value and tag of entry `i`, both mutably.
    pub(crate) fn entry_mut(&mut self, i: usize) -> Option<(&mut V, &mut T)> {
        let len = self.vals.len();
        let t = self.tags[..len].get_mut(i)?;
        Some((self.vals.get_mut(i)?, t))
    }

    /// Index of the first key `>= k` (`len` if none).
    pub(crate) fn lower_bound(&self, k: K) -> usize {
        // A binary search that compiles to conditional moves: 4-5 steps, nothing mispredicts.
        self.keys().partition_point(|&x| x < k)
    }

    /// The largest key, if any.
    pub(crate) fn last_key(&self) -> Option<K> {
        self.keys().last().copied()
    }

    /// Inserts an entry at `i`. A full leaf or `i > len` hands the entry back.
    pub(crate) fn insert(&mut self, i: usize, k: K, v: V, t: T) -> Result<(), (K, V, T)> {
        let len = self.len();
        if i > len || len == N {
            return Err((k, v, t));
        }
        self.keys.copy_within(i..len, i + 1);
        self.tags.copy_within(i..len, i + 1);
        self.keys[i] = k;
        self.tags[i] = t;
        self.vals.insert(i, v);
        Ok(())
    }

    /// Removes entry `i`.
    pub(crate) fn remove(&mut self, i: usize) -> Option<(K, V, T)> {
        let len = self.len();
        if i >= len {
            return None;
        }
        let (k, t) = (self.keys[i], self.tags[i]);
        self.keys.copy_within(i + 1..len, i);
        self.tags.copy_within(i + 1..len, i);
        let v = self.vals.remove(i);
        Some((k, v, t))
    }

    /// Moves entries `at..` to the end of `dst`, as far as `dst` has room (callers make sure it
    /// has: every use below is sized by the tree's occupancy rules).
    pub(crate) fn move_tail(&mut self, at: usize, dst: &mut Self) {
        let len = self.len();
        if at >= len {
            return;
        }
        let d = dst.len();
        let n = (len - at).min(N - d);
        dst.keys[d..d + n].copy_from_slice(&self.keys[at..at + n]);
        dst.tags[d..d + n].copy_from_slice(&self.tags[at..at + n]);
        for v in self.vals.drain(at..at + n) {
            // Cannot fail: `n` fits in `dst`.
            let pushed = dst.vals.try_push(v);
            debug_assert!(pushed.is_ok(), "leaf move overflowed");
        }
        // Entries past `at + n` (none when sized right) slide down over the moved ones.
        let rest = len - at - n;
        self.keys.copy_within(at + n..at + n + rest, at);
        self.tags.copy_within(at + n..at + n + rest, at);
    }
}

/// An entry handed back by a refused insert.
pub(crate) type Refused<S> = (<S as LeafOps>::K, <S as LeafOps>::V, <S as LeafOps>::T);

/// The leaf operations the tree algorithms use, for every leaf capacity.
pub(crate) trait LeafOps {
    type K: Copy + Ord + Default;
    type V;
    type T: Copy + Default;
    const CAP: usize;
    fn len(&self) -> usize;
    fn keys(&self) -> &[Self::K];
    fn key(&self, i: usize) -> Option<Self::K>;
    fn set_key(&mut self, i: usize, k: Self::K);
    fn val(&self, i: usize) -> Option<&Self::V>;
    fn tag(&self, i: usize) -> Self::T;
    fn entry_mut(&mut self, i: usize) -> Option<(&mut Self::V, &mut Self::T)>;
    fn lower_bound(&self, k: Self::K) -> usize;
    fn insert(&mut self, i: usize, k: Self::K, v: Self::V, t: Self::T)
        -> Result<(), Refused<Self>>;
    fn remove(&mut self, i: usize) -> Option<(Self::K, Self::V, Self::T)>;
    fn move_tail(&mut self, at: usize, dst: &mut Self);
}

impl<K: Copy + Ord + Default, V, T: Copy + Default, const N: usize> LeafOps for Leaf<K, V, T, N> {
    type K = K;
    type V = V;
    type T = T;
    const CAP: usize = N;
    fn len(&self) -> usize {
        Leaf::len(self)
    }
    fn keys(&self) -> &[K] {
        Leaf::keys(self)
    }
    fn key(&self, i: usize) -> Option<K> {
        Leaf::key(self, i)
    }
    fn set_key(&mut self, i: usize, k: K) {
        Leaf::set_key(self, i, k);
    }
    fn val(&self, i: usize) -> Option<&V> {
        Leaf::val(self, i)
    }
    fn tag(&self, i: usize) -> T {
        Leaf::tag(self, i)
    }
    fn entry_mut(&mut self, i: usize) -> Option<(&mut V, &mut T)> {
        Leaf::entry_mut(self, i)
    }
    fn lower_bound(&self, k: K) -> usize {
        Leaf::lower_bound(self, k)
    }
    fn insert(&mut self, i: usize, k: K, v: V, t: T) -> Result<(), (K, V, T)> {
        Leaf::insert(self, i, k, v, t)
    }
    fn remove(&mut self, i: usize) -> Option<(K, V, T)> {
        Leaf::remove(self, i)
    }
    fn move_tail(&mut self, at: usize, dst: &mut Self) {
        Leaf::move_tail(self, at, dst);
    }
}
