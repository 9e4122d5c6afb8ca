//! Allocation-free op sinks for [`gpuva::GpuVm::sm_map_walk`] and friends.

use gpuva::Op;

/// The sink is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

/// A fixed-capacity, stack-allocated op list (an `ArrayVec<Op, N>` without the dependency).
#[derive(Clone, Debug)]
pub struct FixedOps<const N: usize> {
    buf: [Option<Op>; N],
    len: usize,
}

impl<const N: usize> FixedOps<N> {
    /// An empty list.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            buf: [None; N],
            len: 0,
        }
    }

    /// Appends `op`.
    ///
    /// # Errors
    ///
    /// [`Full`] when `N` ops are held.
    pub fn try_push(&mut self, op: Op) -> Result<(), Full> {
        let slot = self.buf.get_mut(self.len).ok_or(Full)?;
        *slot = Some(op);
        self.len += 1;
        Ok(())
    }

    /// Ops held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no op is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every op.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The ops held, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Op> + '_ {
        self.buf[..self.len].iter().flatten()
    }
}

impl<const N: usize> Default for FixedOps<N> {
    fn default() -> Self {
        Self::new()
    }
}
