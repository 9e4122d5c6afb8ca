//! Node memory: the storage trait, ready-made handles, reservations and retired lists.
//!
//! gpuva never allocates. Every tree node is memory the caller handed in as a [`NodePtr`]: an owned,
//! exclusive handle that dereferences to a [`GpuVa`]. In a kernel that is a `KBox` (or a slab
//! handle); with the `alloc` feature it is [`BoxNode`]; with neither, [`RefNode`] hands out the
//! slots of a caller-owned array. Because handles are owned values, a [`NodeReserve`] can be filled
//! in prepare, apart from the VA space and while a job is running on it, and moved into the run stage.
//!
//! ```text
//!  prepare:  NodeReserve::try_fill(3, alloc)  ──┐  (may allocate, may fail)
//!  run:      GpuVm::sm_map(req, &mut reserve) ─┴─> nodes move into the tree; removed nodes move
//!                                                  out as GpuVaRemoved (into a RetiredList)
//!  cleanup:  drop(reserve), drop(retired)          (frees what is left, outside the fence path)
//! ```

use core::fmt;
use core::ops::{Deref, DerefMut};

use arrayvec::ArrayVec;

use crate::va::GpuVa;

/// An owned, exclusive handle to the memory of one tree node.
///
/// Implement it for whatever owns node memory in your environment. Dropping a handle is the only way
/// gpuva ever releases node memory, and gpuva never drops one: it either keeps a handle in the tree
/// or hands it back to the caller.
///
/// The trait has no methods; the `DerefMut` bound is the whole contract. A handle must keep its
/// target at a fixed place for as long as it exists (`Box` does; so does `&mut T`).
pub trait NodePtr<D>: DerefMut<Target = GpuVa<D, Self>> + Sized {}

/// A handle to a slot of caller-owned node storage, for builds without any allocator.
///
/// # Examples
///
/// ```
/// use gpuva::{GpuVa, NodeReserve, RefNode};
/// let mut slots: [GpuVa<(), RefNode<'_, ()>>; 3] = [GpuVa::new(()), GpuVa::new(()), GpuVa::new(())];
/// let mut reserve = NodeReserve::<RefNode<'_, ()>>::new();
/// for slot in slots.iter_mut() {
///     reserve.push(RefNode::new(slot)).ok();
/// }
/// assert_eq!(reserve.len(), 3);
/// ```
pub struct RefNode<'a, D>(&'a mut GpuVa<D, RefNode<'a, D>>);

impl<'a, D> RefNode<'a, D> {
    /// Wraps a slot.
    pub fn new(slot: &'a mut GpuVa<D, RefNode<'a, D>>) -> Self {
        Self(slot)
    }

    /// Gives the slot back.
    pub fn into_inner(self) -> &'a mut GpuVa<D, RefNode<'a, D>> {
        self.0
    }
}

impl<'a, D> Deref for RefNode<'a, D> {
    type Target = GpuVa<D, RefNode<'a, D>>;
    fn deref(&self) -> &Self::Target {
        self.0
    }
}

impl<D> DerefMut for RefNode<'_, D> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0
    }
}

impl<D> NodePtr<D> for RefNode<'_, D> {}

impl<D: fmt::Debug> fmt::Debug for RefNode<'_, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// A heap-allocated node (feature `alloc`).
///
/// Allocated fallibly: [`BoxNode::try_new`] returns [`AllocError`] instead of aborting.
#[cfg(feature = "alloc")]
pub struct BoxNode<D>(alloc::boxed::Box<[GpuVa<D, BoxNode<D>>; 1]>);

/// The allocator could not provide memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocError;

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("out of memory")
    }
}

impl core::error::Error for AllocError {}

#[cfg(feature = "alloc")]
impl<D> BoxNode<D> {
    /// Allocates an unused node carrying `data` (replaced when the node is inserted).
    ///
    /// # Errors
    ///
    /// [`AllocError`] if the allocator fails.
    pub fn try_new(data: D) -> Result<Self, AllocError> {
        // Stable Rust has no `Box::try_new`. A one-element Vec reserved with `try_reserve_exact` has
        // capacity exactly 1, so `into_boxed_slice` does not reallocate; the capacity is checked so
        // that a surprising allocator answer cannot turn into an infallible shrink.
        let mut v = alloc::vec::Vec::new();
        v.try_reserve_exact(1).map_err(|_| AllocError)?;
        if v.capacity() != 1 {
            return Err(AllocError);
        }
        #[expect(
            clippy::disallowed_methods,
            reason = "capacity reserved fallibly just above"
        )]
        v.push(GpuVa::new(data));
        let slice = v.into_boxed_slice();
        slice.try_into().map(Self).map_err(|_| AllocError)
    }
}

#[cfg(feature = "alloc")]
impl<D> Deref for BoxNode<D> {
    type Target = GpuVa<D, BoxNode<D>>;
    fn deref(&self) -> &Self::Target {
        let [node] = &*self.0;
        node
    }
}

#[cfg(feature = "alloc")]
impl<D> DerefMut for BoxNode<D> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        let [node] = &mut *self.0;
        node
    }
}

#[cfg(feature = "alloc")]
impl<D> NodePtr<D> for BoxNode<D> {}

#[cfg(feature = "alloc")]
impl<D: fmt::Debug> fmt::Debug for BoxNode<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// A source of preallocated nodes that the split/merge walker draws from.
///
/// [`NodeReserve`] is the ready-made one (up to [`MAX_MAP_NODES`] nodes, no allocator needed); with
/// the `alloc` feature a `Vec<P>` works too (a per-job pool).
pub trait NodePool<P> {
    /// How many nodes [`NodePool::take`] can still hand out.
    fn available(&self) -> usize;
    /// Hands out one node; `None` only when [`NodePool::available`] is zero.
    fn take(&mut self) -> Option<P>;
}

/// Nodes a map request may need at most: the new mapping plus the `prev` and `next` pieces.
pub const MAX_MAP_NODES: usize = 3;
/// Nodes an unmap request may need at most: the `prev` and `next` pieces (`gpuvm-semantics.md` U2).
pub const MAX_UNMAP_NODES: usize = 2;

/// A reservation of up to `N` preallocated nodes (by default [`MAX_MAP_NODES`]).
///
/// Fill it in prepare, where allocation may fail; the walker only takes from it. Nodes it did not
/// need stay in it, for the caller to reuse or drop in cleanup.
pub struct NodeReserve<P, const N: usize = MAX_MAP_NODES> {
    nodes: ArrayVec<P, N>,
}

impl<P, const N: usize> NodeReserve<P, N> {
    /// An empty reservation.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            nodes: ArrayVec::new_const(),
        }
    }

    /// A reservation holding `count` nodes made by `alloc`.
    ///
    /// # Errors
    ///
    /// The first error `alloc` returns, or [`ReserveError::TooMany`] if `count > N`; nodes made
    /// before the error are dropped.
    pub fn try_fill<E>(
        count: usize,
        mut alloc: impl FnMut() -> Result<P, E>,
    ) -> Result<Self, ReserveError<E>> {
        if count > N {
            return Err(ReserveError::TooMany {
                requested: count,
                capacity: N,
            });
        }
        let mut r = Self::new();
        for _ in 0..count {
            let node = alloc().map_err(ReserveError::Alloc)?;
            // Cannot fail: count <= N was checked above.
            r.nodes.try_push(node).map_err(|_| ReserveError::TooMany {
                requested: count,
                capacity: N,
            })?;
        }
        Ok(r)
    }

    /// Adds a node; hands it back if the reservation is full.
    ///
    /// # Errors
    ///
    /// The node itself, when `N` nodes are already held.
    pub fn push(&mut self, node: P) -> Result<(), P> {
        self.nodes.try_push(node).map_err(|e| e.element())
    }

    /// Nodes held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Takes every node out (for reuse or to free them in cleanup).
    pub fn drain(&mut self) -> impl Iterator<Item = P> + '_ {
        self.nodes.drain(..)
    }
}

#[cfg(feature = "alloc")]
impl<D> NodeReserve<BoxNode<D>> {
    /// A reservation of `count` heap nodes whose payload starts as `D::default()`.
    ///
    /// # Errors
    ///
    /// [`ReserveError::Alloc`] when the allocator fails, [`ReserveError::TooMany`] if `count > N`.
    pub fn try_alloc(count: usize) -> Result<Self, ReserveError<AllocError>>
    where
        D: Default,
    {
        Self::try_fill(count, || BoxNode::try_new(D::default()))
    }
}

impl<P, const N: usize> Default for NodeReserve<P, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P, const N: usize> NodePool<P> for NodeReserve<P, N> {
    fn available(&self) -> usize {
        self.nodes.len()
    }
    fn take(&mut self) -> Option<P> {
        self.nodes.pop()
    }
}

#[cfg(feature = "alloc")]
impl<P> NodePool<P> for alloc::vec::Vec<P> {
    fn available(&self) -> usize {
        self.len()
    }
    fn take(&mut self) -> Option<P> {
        self.pop()
    }
}

impl<P, const N: usize> fmt::Debug for NodeReserve<P, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeReserve")
            .field("len", &self.nodes.len())
            .field("capacity", &N)
            .finish()
    }
}

/// Error returned by [`NodeReserve::try_fill`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReserveError<E> {
    /// The allocator failed.
    Alloc(E),
    /// More nodes were requested than the reservation can hold.
    TooMany {
        /// Nodes requested.
        requested: usize,
        /// The reservation's capacity.
        capacity: usize,
    },
}

impl<E: fmt::Display> fmt::Display for ReserveError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Alloc(e) => write!(f, "node allocation failed: {e}"),
            Self::TooMany {
                requested,
                capacity,
            } => {
                write!(
                    f,
                    "{requested} nodes requested, a reservation holds at most {capacity}"
                )
            }
        }
    }
}

impl<E: fmt::Debug + fmt::Display> core::error::Error for ReserveError<E> {}

/// A node taken out of the tree: detached, waiting to be freed (or reused) in cleanup.
///
/// It still describes the mapping it held and carries its payload, so cleanup can release whatever
/// the payload refers to.
pub struct GpuVaRemoved<D, P>(P, core::marker::PhantomData<fn() -> D>);

impl<D, P> GpuVaRemoved<D, P> {
    pub(crate) fn new(node: P) -> Self {
        Self(node, core::marker::PhantomData)
    }

    /// The node handle, for freeing or for reuse in a later reservation.
    pub fn into_inner(self) -> P {
        self.0
    }
}

impl<D, P: NodePtr<D>> Deref for GpuVaRemoved<D, P> {
    type Target = GpuVa<D, P>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<D, P: fmt::Debug> fmt::Debug for GpuVaRemoved<D, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("GpuVaRemoved").field(&self.0).finish()
    }
}

/// Removed nodes, chained through their own link field: pushing never allocates.
///
/// The run stage pushes every [`GpuVaRemoved`] here; cleanup drains it. Order is last in, first out.
pub struct RetiredList<D, P: NodePtr<D>> {
    head: Option<P>,
    len: usize,
    _data: core::marker::PhantomData<fn() -> D>,
}

impl<D, P: NodePtr<D>> RetiredList<D, P> {
    /// An empty list.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            head: None,
            len: 0,
            _data: core::marker::PhantomData,
        }
    }

    /// Adds a removed node. Never allocates.
    pub fn push(&mut self, node: GpuVaRemoved<D, P>) {
        let mut node = node.0;
        node.left = None;
        node.right = self.head.take();
        self.head = Some(node);
        self.len += 1;
    }

    /// Takes the most recently pushed node.
    pub fn pop(&mut self) -> Option<GpuVaRemoved<D, P>> {
        let mut node = self.head.take()?;
        self.head = node.right.take();
        self.len -= 1;
        Some(GpuVaRemoved::new(node))
    }

    /// Nodes held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the list is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.head.is_none()
    }

    /// The removed mappings, most recent first.
    pub fn iter(&self) -> impl Iterator<Item = &GpuVa<D, P>> + '_ {
        let mut cur = self.head.as_deref();
        core::iter::from_fn(move || {
            let node = cur?;
            cur = node.right.as_deref();
            Some(node)
        })
    }
}

impl<D, P: NodePtr<D>> Default for RetiredList<D, P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<D, P: NodePtr<D>> Drop for RetiredList<D, P> {
    fn drop(&mut self) {
        // Unlink one node at a time so that dropping a long list cannot overflow the stack.
        while self.pop().is_some() {}
    }
}

impl<D, P: NodePtr<D>> fmt::Debug for RetiredList<D, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetiredList")
            .field("len", &self.len)
            .finish()
    }
}
