//! Node memory: the fixed-size [`Node`], the handle trait, ready-made handles and node bags.
//!
//! gpuva never allocates. Every node of every tree it keeps (mappings, the object index, object
//! links) is one [`Node`] the caller handed in through a [`NodePtr`]: an owned, exclusive handle
//! (a `Box` with the `alloc` feature, a kernel slab object, a slot of a caller array). All nodes
//! have one size, so one slab cache serves them all.
//!
//! ```text
//!  prepare:  bag = NodeBag::try_alloc(vm.shortfall(need))   (outside the VM lock; may fail)
//!            claim = vm.reserve(need, &mut bag)             (under the lock: moves nodes only)
//!  run:      vm.step(req, &mut claim, visitor)              (nodes come from the VM's spare cache)
//!  cleanup:  vm.release(claim); drop(vm.trim(keep))         (surplus spare nodes handed back)
//! ```

use core::fmt;
use core::ops::{Deref, DerefMut};

use crate::btree::{Branch, Leaf};
use crate::link::{LinkRec, LinkState};
use crate::va::{Tag, VaVal};

/// Entries in a mapping leaf.
pub(crate) const VA_LEAF: usize = 16;
/// Entries in an object-index leaf.
pub(crate) const OBJ_LEAF: usize = 36;
/// Entries in a link leaf.
pub(crate) const LINK_LEAF: usize = 20;
/// Children of a branch keyed by `u64` (mappings, links).
pub(crate) const BR64: usize = 32;
/// Children of a branch keyed by `(object, address)` (the object index).
pub(crate) const BR128: usize = 24;

/// The object index key: `(object id, mapping start)`.
pub(crate) type ObjKey = (u64, u64);

pub(crate) type VaLeaf<D> = Leaf<u64, VaVal<D>, Tag, VA_LEAF>;
pub(crate) type ObjLeaf = Leaf<ObjKey, (), (), OBJ_LEAF>;
pub(crate) type LinkLeaf<L> = Leaf<u64, LinkRec<L>, LinkState, LINK_LEAF>;
pub(crate) type Br64<P> = Branch<u64, P, BR64>;
pub(crate) type Br128<P> = Branch<ObjKey, P, BR128>;

/// What a node holds.
pub(crate) enum Body<D, L, P> {
    /// Unused: in a bag or the spare cache.
    Free,
    VaLeaf(VaLeaf<D>),
    ObjLeaf(ObjLeaf),
    LinkLeaf(LinkLeaf<L>),
    Br64(Br64<P>),
    Br128(Br128<P>),
}

/// One node of gpuva's trees: about 600 bytes on 64-bit targets with `D = ()` and `L = ()`
/// (see [`GpuVm`](crate::GpuVm) for the per-mapping figure).
///
/// The contents are private. A caller only creates unused nodes ([`Node::new`]) and hands them
/// in; gpuva hands them back unused.
pub struct Node<D, L, P> {
    /// Free-list link (bags and the spare cache); `None` while the node is in a tree.
    pub(crate) next: Option<P>,
    pub(crate) body: Body<D, L, P>,
}

impl<D, L, P> Node<D, L, P> {
    /// An unused node.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            next: None,
            body: Body::Free,
        }
    }
}

impl<D, L, P> Default for Node<D, L, P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<D, L, P> fmt::Debug for Node<D, L, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.body {
            Body::Free => "Node(free)",
            Body::VaLeaf(_) => "Node(mapping leaf)",
            Body::ObjLeaf(_) => "Node(object-index leaf)",
            Body::LinkLeaf(_) => "Node(link leaf)",
            Body::Br64(_) | Body::Br128(_) => "Node(branch)",
        })
    }
}

/// An owned, exclusive handle to the memory of one [`Node`].
///
/// Implement it for whatever owns node memory in your environment. Dropping a handle is the only
/// way gpuva ever releases node memory, and it only drops handles outside the run stage (in
/// [`GpuVm::trim`](crate::GpuVm::trim)'s caller, and when a [`GpuVm`](crate::GpuVm) or a
/// [`NodeBag`] is dropped).
///
/// # Contract
///
/// * the handle dereferences to the same node for as long as it exists (`Box` does; so does
///   `&mut T`);
/// * two live handles never reach the same node.
///
/// Safe code cannot break either (`DerefMut` gives exclusive access), so the trait has no unsafe
/// methods; a kernel implementation over raw slab pointers is where the care goes.
pub trait NodePtr<D, L>: DerefMut<Target = Node<D, L, Self>> + Sized {}

/// A handle to a slot of caller-owned node storage, for builds without any allocator.
///
/// # Examples
///
/// ```
/// use gpuva::{Node, NodeBag, RefNode};
/// // The slots must outlive every handle; `ManuallyDrop` (or a `static`) expresses that.
/// let mut slots: core::mem::ManuallyDrop<[Node<(), (), RefNode<'_, ()>>; 4]> =
///     core::mem::ManuallyDrop::new(core::array::from_fn(|_| Node::new()));
/// let mut bag = NodeBag::new();
/// for slot in slots.iter_mut() {
///     bag.push(RefNode::new(slot));
/// }
/// assert_eq!(bag.len(), 4);
/// ```
pub struct RefNode<'a, D, L = ()>(&'a mut Node<D, L, RefNode<'a, D, L>>);

impl<'a, D, L> RefNode<'a, D, L> {
    /// Wraps a slot.
    pub fn new(slot: &'a mut Node<D, L, RefNode<'a, D, L>>) -> Self {
        Self(slot)
    }
}

impl<'a, D, L> Deref for RefNode<'a, D, L> {
    type Target = Node<D, L, RefNode<'a, D, L>>;
    fn deref(&self) -> &Self::Target {
        self.0
    }
}

impl<D, L> DerefMut for RefNode<'_, D, L> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0
    }
}

impl<D, L> NodePtr<D, L> for RefNode<'_, D, L> {}

impl<D, L> fmt::Debug for RefNode<'_, D, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// A heap-allocated node (feature `alloc`), allocated fallibly.
#[cfg(feature = "alloc")]
pub struct BoxNode<D, L = ()>(alloc::boxed::Box<[BoxedNode<D, L>; 1]>);

#[cfg(feature = "alloc")]
type BoxedNode<D, L> = Node<D, L, BoxNode<D, L>>;

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
impl<D, L> BoxNode<D, L> {
    /// Allocates an unused node.
    ///
    /// # Errors
    ///
    /// [`AllocError`] if the allocator fails.
    pub fn try_new() -> Result<Self, AllocError> {
        // Stable Rust has no `Box::try_new`. A one-element Vec reserved with `try_reserve_exact`
        // has capacity exactly 1, so `into_boxed_slice` does not reallocate; the capacity is
        // checked so that a surprising allocator answer cannot turn into an infallible shrink.
        let mut v = alloc::vec::Vec::new();
        v.try_reserve_exact(1).map_err(|_| AllocError)?;
        if v.capacity() != 1 {
            return Err(AllocError);
        }
        #[expect(
            clippy::disallowed_methods,
            reason = "capacity reserved fallibly just above"
        )]
        v.push(Node::new());
        let slice = v.into_boxed_slice();
        slice.try_into().map(Self).map_err(|_| AllocError)
    }
}

#[cfg(feature = "alloc")]
impl<D, L> Deref for BoxNode<D, L> {
    type Target = Node<D, L, BoxNode<D, L>>;
    fn deref(&self) -> &Self::Target {
        let [node] = &*self.0;
        node
    }
}

#[cfg(feature = "alloc")]
impl<D, L> DerefMut for BoxNode<D, L> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        let [node] = &mut *self.0;
        node
    }
}

#[cfg(feature = "alloc")]
impl<D, L> NodePtr<D, L> for BoxNode<D, L> {}

#[cfg(feature = "alloc")]
impl<D, L> fmt::Debug for BoxNode<D, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// A bag of unused nodes, chained through the nodes themselves: pushing and popping never
/// allocate, and any number fits.
///
/// Bags carry nodes into a VA space ([`GpuVm::reserve`](crate::GpuVm::reserve)) and out of it
/// ([`GpuVm::trim`](crate::GpuVm::trim)). Dropping a bag drops its nodes one at a time (no
/// recursion).
pub struct NodeBag<D, L, P: NodePtr<D, L>> {
    head: Option<P>,
    len: usize,
    /// Nodes popped so far (the VA space's spare cache reports it: [`GpuVm::nodes_taken`]).
    ///
    /// [`GpuVm::nodes_taken`]: crate::GpuVm::nodes_taken
    taken: u64,
    _t: core::marker::PhantomData<fn() -> (D, L)>,
}

impl<D, L, P: NodePtr<D, L>> NodeBag<D, L, P> {
    /// An empty bag.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            head: None,
            len: 0,
            taken: 0,
            _t: core::marker::PhantomData,
        }
    }

    /// A bag of `n` nodes made by `alloc`.
    ///
    /// # Errors
    ///
    /// The first error `alloc` returns; the nodes made before it are dropped.
    pub fn try_fill<E>(n: usize, mut alloc: impl FnMut() -> Result<P, E>) -> Result<Self, E> {
        let mut bag = Self::new();
        for _ in 0..n {
            bag.push(alloc()?);
        }
        Ok(bag)
    }

    /// Adds a node; whatever it held is discarded.
    pub fn push(&mut self, mut node: P) {
        node.body = Body::Free;
        node.next = self.head.take();
        self.head = Some(node);
        self.len += 1;
    }

    /// Takes a node out.
    pub fn pop(&mut self) -> Option<P> {
        let mut node = self.head.take()?;
        self.head = node.next.take();
        self.len -= 1;
        self.taken += 1;
        Some(node)
    }

    /// Nodes held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the bag is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Nodes popped from this bag since it was made.
    #[must_use]
    pub fn taken(&self) -> u64 {
        self.taken
    }

    /// Moves every node of `other` into `self`.
    pub fn append(&mut self, other: &mut Self) {
        while let Some(n) = other.pop() {
            self.push(n);
        }
    }
}

#[cfg(feature = "alloc")]
impl<D, L> NodeBag<D, L, BoxNode<D, L>> {
    /// A bag of `n` heap nodes (feature `alloc`).
    ///
    /// # Errors
    ///
    /// [`AllocError`]; nothing is kept.
    pub fn try_alloc(n: usize) -> Result<Self, AllocError> {
        Self::try_fill(n, BoxNode::try_new)
    }
}

impl<D, L, P: NodePtr<D, L>> Default for NodeBag<D, L, P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<D, L, P: NodePtr<D, L>> Drop for NodeBag<D, L, P> {
    fn drop(&mut self) {
        while self.pop().is_some() {}
    }
}

impl<D, L, P: NodePtr<D, L>> fmt::Debug for NodeBag<D, L, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeBag").field("len", &self.len).finish()
    }
}
