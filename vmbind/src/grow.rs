//! [`Grown`]: growing a vector the VM keeps between jobs so that a refused prepare can undo it.
//!
//! A prepare grows several vectors the VM keeps (the per-job vectors it lends each job, the
//! job-bound scratch, the deferred-cleanup list, the slot table) before a later step may still
//! refuse the job. A plain `try_reserve` would leave such a vector grown (or newly allocated)
//! after the refusal: memory the VM did not hold before, kept for good. [`Grown`] grows the
//! vector into a new buffer instead and keeps the old buffer aside, so the refusal can put the
//! old buffer back, exactly as it was, and free the new one; a prepare that succeeds frees the
//! old buffer (dropping the [`Grown`]).

use alloc::collections::TryReserveError;
use alloc::vec::Vec;

/// The old buffer of one vector a prepare grew (see the module docs).
pub(crate) struct Grown<T> {
    /// The buffer (emptied) the vector had before its first growth in this prepare.
    old: Option<Vec<T>>,
}

impl<T> Default for Grown<T> {
    fn default() -> Self {
        Self { old: None }
    }
}

impl<T> Grown<T> {
    /// Makes room in `v` for `extra` more elements. The first growth moves `v`'s elements into a
    /// new buffer (at least twice the old capacity) and keeps the old buffer aside; later ones
    /// grow the new buffer in place (it is this prepare's own).
    pub(crate) fn try_reserve(
        &mut self,
        v: &mut Vec<T>,
        extra: usize,
    ) -> Result<(), TryReserveError> {
        if v.capacity() - v.len() >= extra {
            return Ok(());
        }
        if self.old.is_some() {
            return v.try_reserve(extra);
        }
        let need = v.len().saturating_add(extra);
        let mut new = Vec::new();
        new.try_reserve_exact(need.max(v.capacity().saturating_mul(2)))?;
        // Fits (reserved just above): moves, allocates nothing.
        new.append(v);
        self.old = Some(core::mem::replace(v, new));
        Ok(())
    }

    /// Undoes the growth of `v`, whose length was `len` when the prepare began: elements past
    /// `len` are dropped, and if `v` was grown its old buffer comes back (holding the first
    /// `len` elements, which it had room for) and the new one is freed. Allocates nothing.
    pub(crate) fn undo(self, v: &mut Vec<T>, len: usize) {
        v.truncate(len);
        if let Some(mut old) = self.old {
            debug_assert!(old.is_empty() && old.capacity() >= v.len());
            // Fits (`old` held these `len` elements when the prepare began): allocates nothing.
            old.append(v);
            *v = old;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undo_gives_the_old_buffer_back() {
        let mut v: Vec<u32> = Vec::new();
        v.try_reserve_exact(3).unwrap();
        v.extend([1, 2]);
        let (ptr, cap) = (v.as_ptr(), v.capacity());
        let mut g = Grown::default();
        g.try_reserve(&mut v, 1).unwrap();
        assert_eq!(v.as_ptr(), ptr, "room enough: the buffer stays");
        v.extend([3]);
        g.try_reserve(&mut v, 5).unwrap();
        assert_ne!(v.as_ptr(), ptr, "grown into a new buffer");
        v.extend([4, 5, 6]);
        g.try_reserve(&mut v, 100).unwrap();
        v.extend([7]);
        g.undo(&mut v, 2);
        assert_eq!((v.as_ptr(), v.capacity()), (ptr, cap));
        assert_eq!(v, [1, 2]);
    }

    #[test]
    fn dropping_keeps_the_growth() {
        let mut v: Vec<u32> = Vec::new();
        let mut g = Grown::default();
        g.try_reserve(&mut v, 4).unwrap();
        v.extend([1, 2, 3, 4]);
        drop(g);
        assert!(v.capacity() >= 4);
        assert_eq!(v, [1, 2, 3, 4]);
    }

    #[test]
    fn undo_of_an_ungrown_vector_only_truncates() {
        let mut v: Vec<u32> = Vec::new();
        v.try_reserve_exact(4).unwrap();
        let (ptr, cap) = (v.as_ptr(), v.capacity());
        let mut g = Grown::default();
        g.try_reserve(&mut v, 4).unwrap();
        v.extend([1, 2, 3]);
        g.undo(&mut v, 0);
        assert_eq!((v.as_ptr(), v.capacity(), v.len()), (ptr, cap, 0));
    }
}
