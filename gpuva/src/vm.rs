//! The VA space: [`GpuVm`].

use core::fmt;
use core::marker::PhantomData;
use core::ops::Range;

#[cfg(feature = "alloc")]
use crate::error::ApplyError;
use crate::error::{MapError, NewError, OpsError, RangeError, UnmapError};
use crate::forest::{Forest, OneBucket};
use crate::node::{GpuVaRemoved, NodePool, NodePtr, RetiredList, MAX_MAP_NODES, MAX_UNMAP_NODES};
use crate::sm::{Apply, Op, OpMap, OpRemap, OpUnmap, Pending, SmVisitor, Step, Walker};
use crate::tree::Rng;
use crate::va::{GpuVa, Mapping};

/// A GPU virtual address space: the mappings of `[start, end)`, minus an optional kernel-reserved
/// cut-out, kept in a tree of caller-supplied nodes.
///
/// `D` is the driver payload stored with every mapping; `P` the node handle type (see
/// [`NodePtr`]); `B` the bucket directory (see [`GpuVm::with_buckets`]): the default
/// [`OneBucket`] needs no memory and keeps one treap, a directory with a bucket per one or two
/// mappings makes requests on large VA spaces several times faster.
///
/// # Locking
///
/// `GpuVm` has no lock of its own: changing it takes `&mut self`, as drm_gpuvm requires the driver's
/// VM lock. Reservations ([`crate::NodeReserve`]) are separate values, so a job can be prepared while
/// another job runs on the VA space.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "alloc")] {
/// use gpuva::{BoxNode, GpuVm, Mapping, NodeReserve, ObjId, RetiredList};
///
/// let mut vm = GpuVm::<(), BoxNode<()>>::new(0..1 << 32, 0..0x1000)?;
/// let mut retired = RetiredList::new();
/// let bo = ObjId::new(7);
///
/// // Prepare: reserve the worst case. Run: apply without allocating.
/// let mut nodes = NodeReserve::try_alloc(gpuva::MAX_MAP_NODES)?;
/// vm.map(Mapping::new(0x10_0000, 0x4000, bo, 0), &mut nodes, &mut retired)?;
/// let mut nodes = NodeReserve::try_alloc(gpuva::MAX_UNMAP_NODES)?;
/// vm.unmap(0x10_1000, 0x1000, &mut nodes, &mut retired)?;
///
/// let ranges: Vec<_> = vm.iter().map(|va| (va.range(), va.offset())).collect();
/// assert_eq!(ranges, [(0x10_0000..0x10_1000, 0), (0x10_2000..0x10_4000, 0x2000)]);
/// assert_eq!(retired.len(), 1);
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct GpuVm<D, P: NodePtr<D>, B = OneBucket<P>> {
    space: Range<u64>,
    /// The kernel cut-out; empty when there is none. Never stored as a node, so lookups and
    /// iterators never see it (drm_gpuvm's plain iterators do).
    reserved: Range<u64>,
    forest: Forest<D, P, B>,
    count: usize,
    rng: Rng,
    generation: u64,
    /// Identifies this VA space, so an op list recorded on another one is refused.
    id: usize,
    _data: PhantomData<fn() -> D>,
}

/// Source of [`GpuVm`] identities (op lists remember the VA space they were recorded on).
static NEXT_VM_ID: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(1);

/// Default treap seed; any non-zero value works.
const DEFAULT_SEED: u64 = 0x6a09_e667_f3bc_c908;

/// Why the mutating walk stopped early.
enum WalkError<E> {
    Exhausted,
    Visitor(E),
}

impl<D, P: NodePtr<D>> GpuVm<D, P> {
    /// A VA space over `space`, with the kernel cut-out `reserved` (an empty range for none), and
    /// a one-bucket directory.
    ///
    /// # Errors
    ///
    /// [`NewError`] if `space` is empty, `reserved` is inverted, or a non-empty `reserved` is not
    /// inside `space`.
    pub fn new(space: Range<u64>, reserved: Range<u64>) -> Result<Self, NewError> {
        Self::with_buckets(space, reserved, OneBucket::new())
    }

    /// [`GpuVm::new`] from start and size pairs, as `drm_gpuvm_init` takes them.
    ///
    /// # Errors
    ///
    /// [`NewError::Overflow`] if a start plus its size overflows `u64`; otherwise as [`GpuVm::new`].
    pub fn with_size(
        start: u64,
        size: u64,
        reserve_start: u64,
        reserve_size: u64,
    ) -> Result<Self, NewError> {
        let end = start.checked_add(size).ok_or(NewError::Overflow)?;
        let rend = reserve_start
            .checked_add(reserve_size)
            .ok_or(NewError::Overflow)?;
        Self::new(start..end, reserve_start..rend)
    }
}

#[cfg(feature = "alloc")]
impl<D, P: NodePtr<D>> GpuVm<D, P, alloc::boxed::Box<[Option<P>]>> {
    /// A VA space with a heap directory sized for about `mappings` live mappings (feature `alloc`;
    /// allocated fallibly, here, never later).
    ///
    /// The directory gets a power-of-two number of buckets near `mappings / 2`, 8 bytes each.
    /// [`GpuVm::rebucket`] changes it later if the VA space grows well past that.
    ///
    /// # Errors
    ///
    /// As [`GpuVm::new`], plus [`NewError::OutOfMemory`].
    pub fn with_capacity(
        space: Range<u64>,
        reserved: Range<u64>,
        mappings: usize,
    ) -> Result<Self, NewError> {
        let buckets = (mappings / 2)
            .max(1)
            .checked_next_power_of_two()
            .ok_or(NewError::OutOfMemory)?;
        Self::with_buckets(space, reserved, alloc_buckets(buckets)?)
    }
}

/// A boxed, empty bucket directory of `n` buckets (feature `alloc`), for
/// [`GpuVm::with_buckets`] and [`GpuVm::rebucket`].
///
/// # Errors
///
/// [`NewError::OutOfMemory`]; [`NewError::Directory`] for `n == 0`.
///
/// # Examples
///
/// ```
/// use gpuva::{alloc_buckets, BoxNode, GpuVm};
/// let mut vm = GpuVm::<(), BoxNode<()>, _>::with_capacity(0..1 << 40, 0..0, 1000)?;
/// // ... later, outside the fence-signalling path:
/// if let Some(n) = vm.rebucket_advice() {
///     let dir = alloc_buckets(n)?; // allocate before taking the VM lock
///     let old = vm.rebucket(dir).map_err(|(_, e)| e)?; // under the lock: moves nodes only
///     drop(old); // free after releasing it
/// }
/// # Ok::<(), gpuva::NewError>(())
/// ```
#[cfg(feature = "alloc")]
pub fn alloc_buckets<P>(n: usize) -> Result<alloc::boxed::Box<[Option<P>]>, NewError> {
    if n == 0 {
        return Err(NewError::Directory);
    }
    let mut v = alloc::vec::Vec::new();
    v.try_reserve_exact(n).map_err(|_| NewError::OutOfMemory)?;
    #[expect(
        clippy::disallowed_methods,
        reason = "capacity reserved fallibly just above"
    )]
    v.resize_with(n, || None);
    if v.capacity() != n {
        // `into_boxed_slice` would shrink (reallocate, infallibly): refuse instead.
        return Err(NewError::OutOfMemory);
    }
    Ok(v.into_boxed_slice())
}

impl<D, P: NodePtr<D>, B: core::ops::DerefMut<Target = [Option<P>]>> GpuVm<D, P, B> {
    /// A VA space like [`GpuVm::new`], with `dir` as bucket directory: its length is the bucket
    /// count, and every entry must be `None`.
    ///
    /// # Errors
    ///
    /// As [`GpuVm::new`], plus [`NewError::Directory`] for an empty directory or one holding nodes.
    pub fn with_buckets(space: Range<u64>, reserved: Range<u64>, dir: B) -> Result<Self, NewError> {
        if space.start >= space.end {
            return Err(NewError::EmptySpace);
        }
        if reserved.start > reserved.end {
            return Err(NewError::InvertedReserve);
        }
        let reserved = if reserved.is_empty() { 0..0 } else { reserved };
        if !reserved.is_empty() && (reserved.start < space.start || reserved.end > space.end) {
            return Err(NewError::ReserveOutside);
        }
        let forest = Forest::new(dir, space.start, space.end - space.start)
            .map_err(|_| NewError::Directory)?;
        Ok(Self {
            space,
            reserved,
            forest,
            count: 0,
            rng: Rng::new(DEFAULT_SEED),
            generation: 0,
            id: NEXT_VM_ID.fetch_add(1, core::sync::atomic::Ordering::Relaxed),
            _data: PhantomData,
        })
    }

    /// Reseeds the treap's priority generator (only the tree's shape depends on it).
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.rng = Rng::new(seed);
        self
    }

    /// The managed VA range.
    #[must_use]
    pub fn range(&self) -> Range<u64> {
        self.space.clone()
    }

    /// The kernel-reserved cut-out, if any.
    #[must_use]
    pub fn reserved(&self) -> Option<Range<u64>> {
        (!self.reserved.is_empty()).then(|| self.reserved.clone())
    }

    /// Number of mappings.
    #[must_use]
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are no mappings.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// A counter bumped by every request that changed the tree; op lists use it to detect staleness.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// An identity distinct for every VA space created by this program (op lists use it to refuse
    /// being applied to another VA space).
    #[must_use]
    pub fn id(&self) -> usize {
        self.id
    }

    /// Checks a request range: `drm_gpuvm_range_valid`, plus the refusal of zero size.
    ///
    /// # Errors
    ///
    /// [`RangeError`]: zero size, overflow, outside the VA space, or overlapping the cut-out
    /// (touching its edge is fine).
    pub fn check_range(&self, addr: u64, len: u64) -> Result<Range<u64>, RangeError> {
        if len == 0 {
            return Err(RangeError::ZeroSize);
        }
        let end = addr.checked_add(len).ok_or(RangeError::Overflow)?;
        if addr < self.space.start || end > self.space.end {
            return Err(RangeError::OutOfRange);
        }
        if addr < self.reserved.end && self.reserved.start < end {
            return Err(RangeError::Reserved);
        }
        Ok(addr..end)
    }

    /// The mapping exactly covering `[addr, addr + len)`, if any (`drm_gpuva_find`).
    #[must_use]
    pub fn find(&self, addr: u64, len: u64) -> Option<&GpuVa<D, P>> {
        self.forest
            .floor(addr)
            .filter(|v| v.addr == addr && v.len == len)
    }

    /// The mapping exactly covering `[addr, addr + len)`, mutably (only its payload can change).
    pub fn find_mut(&mut self, addr: u64, len: u64) -> Option<&mut GpuVa<D, P>> {
        self.forest.get_mut(addr).filter(|v| v.len == len)
    }

    /// The mapping containing `addr`, if any.
    #[must_use]
    pub fn lookup(&self, addr: u64) -> Option<&GpuVa<D, P>> {
        self.forest.floor(addr).filter(|v| addr < v.end())
    }

    /// The lowest mapping overlapping `range` (`drm_gpuva_find_first`). `None` for an empty range.
    #[must_use]
    pub fn find_first(&self, range: Range<u64>) -> Option<&GpuVa<D, P>> {
        self.iter_range(range).next()
    }

    /// Whether no mapping overlaps `range` (`drm_gpuvm_interval_empty`).
    #[must_use]
    pub fn is_range_empty(&self, range: Range<u64>) -> bool {
        self.find_first(range).is_none()
    }

    /// The mapping that ends exactly at `addr`: the left neighbour of a range starting there.
    ///
    /// Strict, unlike `drm_gpuva_find_prev`, which also returns a mapping that merely *starts* at
    /// `addr` when nothing covers `addr - 1`.
    #[must_use]
    pub fn find_prev(&self, addr: u64) -> Option<&GpuVa<D, P>> {
        let before = addr.checked_sub(1)?;
        self.forest.floor(before).filter(|v| v.end() == addr)
    }

    /// The mapping that starts exactly at `addr`: the right neighbour of a range ending there.
    ///
    /// Strict, unlike `drm_gpuva_find_next`, which also returns a mapping starting at `addr + 1`.
    #[must_use]
    pub fn find_next(&self, addr: u64) -> Option<&GpuVa<D, P>> {
        self.forest.floor(addr).filter(|v| v.addr == addr)
    }

    /// All mappings in ascending address order.
    pub fn iter(&self) -> impl Iterator<Item = &GpuVa<D, P>> + '_ {
        // A live mapping never starts at u64::MAX: its end would overflow.
        self.forest.iter(0, u64::MAX)
    }

    /// The mappings overlapping `range`, in ascending address order (a mapping that straddles
    /// `range.start` comes first).
    pub fn iter_range(&self, range: Range<u64>) -> impl Iterator<Item = &GpuVa<D, P>> + '_ {
        let straddler = if range.is_empty() {
            None
        } else {
            self.forest
                .floor(range.start)
                .filter(|v| v.addr < range.start && v.end() > range.start)
        };
        straddler
            .into_iter()
            .chain(self.forest.iter(range.start, range.end))
    }

    /// Depth of the deepest bucket treap (1 for a single mapping), for statistics and tests.
    #[doc(hidden)]
    #[must_use]
    pub fn depth(&self) -> usize {
        self.forest.depth()
    }

    /// Number of buckets in the directory.
    #[must_use]
    pub fn buckets(&self) -> usize {
        self.forest.buckets()
    }

    /// Moves every mapping into a new bucket directory `dir`, fitted to the address window the
    /// mappings occupy now, and hands back the old directory, empty.
    ///
    /// Moves nodes only, never allocates: allocate `dir` before taking the VM lock and free the old
    /// directory after releasing it. Takes O(n log n) for n mappings. [`GpuVm::rebucket_advice`]
    /// says when it is worth it.
    ///
    /// # Errors
    ///
    /// `dir` itself with [`NewError::Directory`] if it is empty or holds nodes; nothing changed.
    pub fn rebucket(&mut self, dir: B) -> Result<B, (B, NewError)> {
        let (base, span) = self.fitted_window();
        let mut forest = Forest::new(dir, base, span).map_err(|dir| (dir, NewError::Directory))?;
        while let Some(node) = self.forest.pop_min() {
            forest.insert(node);
        }
        Ok(core::mem::replace(&mut self.forest, forest).into_dir())
    }

    /// The bucket count [`GpuVm::rebucket`] would help with now, if any.
    ///
    /// Advises a power of two near one bucket per two mappings when the directory is less than half
    /// or more than four times that, or when the mappings crowd into fewer than an eighth of the
    /// buckets (the window no longer fits the mappings). A one-bucket VM with few mappings gets no
    /// advice. Cheap: O(1).
    #[must_use]
    pub fn rebucket_advice(&self) -> Option<usize> {
        let want = (self.count / 2).max(1).checked_next_power_of_two()?;
        let have = self.forest.buckets();
        if self.count < 64 && have == 1 {
            return None;
        }
        let badly_sized = have < want / 2 || have > want.saturating_mul(4);
        let crowded = self.count >= 64 && self.forest.occupied() < have.min(self.count) / 8;
        (badly_sized || crowded).then_some(want)
    }

    /// The window the mappings occupy, or the whole VA space when there are none.
    fn fitted_window(&self) -> (u64, u64) {
        match (self.iter().next(), self.forest.last()) {
            (Some(first), Some(last)) => (first.addr, last.end() - first.addr),
            _ => (self.space.start, self.space.end - self.space.start),
        }
    }

    /// Runs `sm_map` for `req`, applying each step through `visitor` (the step API).
    ///
    /// Emits exactly drm_gpuvm's ops (see [`crate::sm`]). New nodes come from `pool`, which must
    /// hold at least [`MAX_MAP_NODES`] (checked first, so a request never fails halfway for lack of
    /// nodes); removed nodes go to `retired`. Nothing allocates.
    ///
    /// # Errors
    ///
    /// * [`MapError::Range`], [`MapError::ReservationTooSmall`]: nothing changed.
    /// * [`MapError::Visitor`]: the visitor failed; earlier steps stay applied, the tree is
    ///   consistent.
    /// * [`MapError::ReservationExhausted`]: `pool` reported nodes it could not hand out.
    pub fn sm_map<V: SmVisitor<D, P>>(
        &mut self,
        req: Mapping,
        pool: &mut impl NodePool<P>,
        retired: &mut RetiredList<D, P>,
        visitor: &mut V,
    ) -> Result<(), MapError<V::Error>> {
        self.check_range(req.addr, req.len)
            .map_err(MapError::Range)?;
        if pool.available() < MAX_MAP_NODES {
            return Err(MapError::ReservationTooSmall {
                needed: MAX_MAP_NODES,
                available: pool.available(),
            });
        }
        self.walk_apply(Walker::map(req), pool, retired, visitor)
            .map_err(|e| match e {
                WalkError::Exhausted => MapError::ReservationExhausted,
                WalkError::Visitor(e) => MapError::Visitor(e),
            })
    }

    /// Runs `sm_unmap` for `[addr, addr + len)`, applying each step through `visitor`.
    ///
    /// Like [`GpuVm::sm_map`] without the final `Map`; `pool` must hold at least
    /// [`MAX_UNMAP_NODES`]. Unmapping a range with no mappings is a successful no-op.
    ///
    /// # Errors
    ///
    /// As [`GpuVm::sm_map`].
    pub fn sm_unmap<V: SmVisitor<D, P>>(
        &mut self,
        addr: u64,
        len: u64,
        pool: &mut impl NodePool<P>,
        retired: &mut RetiredList<D, P>,
        visitor: &mut V,
    ) -> Result<(), UnmapError<V::Error>> {
        let r = self.check_range(addr, len).map_err(UnmapError::Range)?;
        if pool.available() < MAX_UNMAP_NODES {
            return Err(UnmapError::ReservationTooSmall {
                needed: MAX_UNMAP_NODES,
                available: pool.available(),
            });
        }
        self.walk_apply(Walker::unmap(r.start, r.end), pool, retired, visitor)
            .map_err(|e| match e {
                WalkError::Exhausted => UnmapError::ReservationExhausted,
                WalkError::Visitor(e) => UnmapError::Visitor(e),
            })
    }

    /// [`GpuVm::sm_map`] with the built-in [`Apply`] visitor: the new mapping gets `D::default()`.
    ///
    /// # Errors
    ///
    /// As [`GpuVm::sm_map`] (the visitor cannot fail).
    pub fn map(
        &mut self,
        req: Mapping,
        pool: &mut impl NodePool<P>,
        retired: &mut RetiredList<D, P>,
    ) -> Result<(), MapError>
    where
        D: Clone + Default,
    {
        self.sm_map(req, pool, retired, &mut Apply::default())
    }

    /// [`GpuVm::sm_unmap`] with the built-in [`Apply`] visitor.
    ///
    /// # Errors
    ///
    /// As [`GpuVm::sm_unmap`] (the visitor cannot fail).
    pub fn unmap(
        &mut self,
        addr: u64,
        len: u64,
        pool: &mut impl NodePool<P>,
        retired: &mut RetiredList<D, P>,
    ) -> Result<(), UnmapError>
    where
        D: Clone + Default,
    {
        self.sm_unmap(addr, len, pool, retired, &mut Apply::default())
    }

    /// Records the ops `sm_map(req)` would produce, in order, without changing anything.
    ///
    /// Works without any allocator: `sink` decides where the ops go.
    ///
    /// # Errors
    ///
    /// [`OpsError::Range`] for an invalid request; [`OpsError::Sink`] with the sink's error.
    pub fn sm_map_walk<E>(
        &self,
        req: Mapping,
        mut sink: impl FnMut(Op) -> Result<(), E>,
    ) -> Result<(), OpsError<E>> {
        self.check_range(req.addr, req.len)
            .map_err(OpsError::Range)?;
        let w = Walker::map(req);
        self.walk_read(&w, &mut sink)?;
        sink(Op::Map(req)).map_err(OpsError::Sink)
    }

    /// Records the ops `sm_unmap(addr, len)` would produce, in order, without changing anything.
    ///
    /// # Errors
    ///
    /// As [`GpuVm::sm_map_walk`].
    pub fn sm_unmap_walk<E>(
        &self,
        addr: u64,
        len: u64,
        mut sink: impl FnMut(Op) -> Result<(), E>,
    ) -> Result<(), OpsError<E>> {
        let r = self.check_range(addr, len).map_err(OpsError::Range)?;
        self.walk_read(&Walker::unmap(r.start, r.end), &mut sink)
    }

    /// Records `sm_map(req)` into an [`OpList`](crate::OpList) (feature `alloc`; allocation is
    /// fallible).
    ///
    /// # Errors
    ///
    /// [`OpsError::Range`], or [`OpsError::Sink`] with [`crate::AllocError`].
    #[cfg(feature = "alloc")]
    pub fn sm_map_ops(&self, req: Mapping) -> Result<crate::OpList, OpsError> {
        let mut ops = alloc::vec::Vec::new();
        self.sm_map_walk(req, |op| push_op(&mut ops, op))?;
        Ok(crate::OpList {
            request: crate::Request::Map(req),
            vm: self.id,
            generation: self.generation,
            ops,
        })
    }

    /// Records `sm_unmap(addr, len)` into an [`OpList`](crate::OpList) (feature `alloc`).
    ///
    /// # Errors
    ///
    /// As [`GpuVm::sm_map_ops`].
    #[cfg(feature = "alloc")]
    pub fn sm_unmap_ops(&self, addr: u64, len: u64) -> Result<crate::OpList, OpsError> {
        let mut ops = alloc::vec::Vec::new();
        self.sm_unmap_walk(addr, len, |op| push_op(&mut ops, op))?;
        Ok(crate::OpList {
            request: crate::Request::Unmap { addr, len },
            vm: self.id,
            generation: self.generation,
            ops,
        })
    }

    /// Applies a recorded op list through `visitor`, which sees exactly the recorded ops.
    ///
    /// # Errors
    ///
    /// [`ApplyError::Foreign`] if the list was recorded on another VA space, [`ApplyError::Stale`]
    /// if this one changed since (nothing changes in either case); otherwise the errors of
    /// [`GpuVm::sm_map`] / [`GpuVm::sm_unmap`].
    #[cfg(feature = "alloc")]
    pub fn apply_ops<V: SmVisitor<D, P>>(
        &mut self,
        ops: &crate::OpList,
        pool: &mut impl NodePool<P>,
        retired: &mut RetiredList<D, P>,
        visitor: &mut V,
    ) -> Result<(), ApplyError<V::Error>> {
        if ops.vm != self.id {
            return Err(ApplyError::Foreign);
        }
        if ops.generation != self.generation {
            return Err(ApplyError::Stale);
        }
        match ops.request {
            crate::Request::Map(req) => self
                .sm_map(req, pool, retired, visitor)
                .map_err(ApplyError::Map),
            crate::Request::Unmap { addr, len } => self
                .sm_unmap(addr, len, pool, retired, visitor)
                .map_err(ApplyError::Unmap),
        }
    }

    /// Removes every mapping into `retired` (VM teardown). Never allocates.
    pub fn clear(&mut self, retired: &mut RetiredList<D, P>) {
        while let Some(node) = self.forest.pop_min() {
            retired.push(GpuVaRemoved::new(node));
        }
        if self.count != 0 {
            self.generation = self.generation.wrapping_add(1);
        }
        self.count = 0;
    }

    /// The read-only walk: feeds the overlapping mappings to the walker, records its decisions.
    fn walk_read<E>(
        &self,
        w: &Walker,
        sink: &mut impl FnMut(Op) -> Result<(), E>,
    ) -> Result<(), OpsError<E>> {
        let (a0, e0) = w.bounds();
        for v in self.iter_range(a0..e0) {
            let m = v.mapping();
            let op = match w.step(&m) {
                Step::Unmap { keep } => Op::Unmap { va: m, keep },
                Step::Remap { keep, prev, next } => Op::Remap {
                    unmap: m,
                    keep,
                    prev,
                    next,
                },
            };
            sink(op).map_err(OpsError::Sink)?;
        }
        Ok(())
    }

    /// The mutating walk: visits the overlapping mappings in place, in order, lets the visitor
    /// decide each step, and carries it out (removal, in-place remap, or insertion).
    ///
    /// # Invariants
    ///
    /// The request was validated and `pool` reported enough nodes for the worst case.
    fn walk_apply<V: SmVisitor<D, P>>(
        &mut self,
        w: Walker,
        pool: &mut impl NodePool<P>,
        retired: &mut RetiredList<D, P>,
        visitor: &mut V,
    ) -> Result<(), WalkError<V::Error>> {
        let (a0, e0) = w.bounds();
        let mut result = Ok(());
        let mut changed = false;

        // Visit the overlapping mappings in place, in ascending order: the first may start below
        // a0 and straddle it; the others start in [a0, e0). A visited mapping leaves [a0, e0)
        // (removed, shrunk to its prev piece, or moved to its next piece at e0), so looking for
        // the first mapping in [a0, e0) again finds the next one.
        let straddler = self
            .forest
            .floor(a0)
            .filter(|v| v.addr < a0 && v.end() > a0)
            .map(|v| v.addr);
        let mut key = straddler.or_else(|| self.forest.first_in(a0, e0).map(|v| v.addr));
        while let Some(k) = key {
            let Some(node) = self.forest.get(k) else {
                debug_assert!(false, "visited key vanished");
                break;
            };
            let mut pending = Pending::None;
            let r = match w.step(&node.mapping()) {
                Step::Unmap { keep } => visitor
                    .step_unmap(OpUnmap {
                        pending: &mut pending,
                        node,
                        keep,
                        _inv: PhantomData,
                    })
                    .map(drop),
                Step::Remap { keep, prev, next } => visitor
                    .step_remap(OpRemap {
                        pending: &mut pending,
                        node,
                        keep,
                        prev,
                        next,
                        _inv: PhantomData,
                    })
                    .map(drop),
            };
            let applied = match pending {
                Pending::Unmap => match self.forest.remove(k) {
                    Some(node) => {
                        retired.push(GpuVaRemoved::new(node));
                        self.count -= 1;
                        true
                    }
                    None => false,
                },
                Pending::Remap { prev, next } => self.remap_in_place(k, prev, next, pool, retired),
                // Not applied: only possible when the visitor failed (`Map` cannot come from these
                // ops). The mapping was never touched.
                Pending::None | Pending::Map(_) => false,
            };
            changed |= applied;
            match (r, applied) {
                (Err(e), _) => {
                    result = Err(WalkError::Visitor(e));
                    break;
                }
                (Ok(()), false) => {
                    result = Err(WalkError::Exhausted);
                    break;
                }
                (Ok(()), true) => {}
            }
            key = self.forest.first_in(a0, e0).map(|v| v.addr);
        }

        if let (Ok(()), Some(req)) = (&result, w.final_map()) {
            let mut pending = Pending::None;
            let r = visitor
                .step_map(OpMap {
                    pending: &mut pending,
                    mapping: req,
                    _node: PhantomData,
                    _inv: PhantomData,
                })
                .map(drop);
            if let Pending::Map(data) = pending {
                match pool.take() {
                    Some(mut n) => {
                        n.set(&req, self.rng.next_u32(), data);
                        self.forest.insert(n);
                        self.count += 1;
                        changed = true;
                    }
                    None => result = Err(WalkError::Exhausted),
                }
            }
            if let Err(e) = r {
                result = Err(WalkError::Visitor(e));
            }
        }
        if changed {
            self.generation = self.generation.wrapping_add(1);
        }
        result
    }

    /// Carries out a `Remap` of the mapping starting at `k` without taking it out of the tree where
    /// possible: the `prev` piece keeps the old key, so the node stays in place and only shrinks;
    /// a `next`-only piece moves the key forward within the node's bucket without reordering
    /// anything (no other mapping starts inside the old one). A fresh node from `pool` carries the
    /// old mapping and payload to `retired`, so the node accounting is exactly that of drm_gpuvm:
    /// one new node per piece, the old mapping retired.
    ///
    /// Returns `false`, changing nothing, if `pool` cannot supply the nodes.
    fn remap_in_place(
        &mut self,
        k: u64,
        prev: Option<(Mapping, D)>,
        next: Option<(Mapping, D)>,
        pool: &mut impl NodePool<P>,
        retired: &mut RetiredList<D, P>,
    ) -> bool {
        let want = usize::from(prev.is_some()) + usize::from(next.is_some());
        let (a, b) = (pool.take(), if want == 2 { pool.take() } else { None });
        if a.is_none() || (want == 2 && b.is_none()) || want == 0 {
            // A pool that lied about its size: hand whatever it gave to cleanup, change nothing.
            for stray in [a, b].into_iter().flatten() {
                retired.push(GpuVaRemoved::new(stray));
            }
            debug_assert!(want > 0, "a remap without pieces");
            return false;
        }
        let Some(mut carrier) = a else { return false };
        let next_in_place = next
            .as_ref()
            .is_some_and(|(nm, _)| self.forest.same_bucket(k, nm.addr));
        let Some(node) = self.forest.get_mut(k) else {
            retired.push(GpuVaRemoved::new(carrier));
            return false;
        };
        let old = node.mapping();
        match (prev, next) {
            (Some((pm, pd)), next) => {
                // The node becomes its prev piece, in place.
                let old_data = core::mem::replace(&mut node.data, pd);
                node.set_mapping(&pm);
                carrier.set(&old, 0, old_data);
                retired.push(GpuVaRemoved::new(carrier));
                if let (Some((nm, nd)), Some(mut n)) = (next, b) {
                    n.set(&nm, self.rng.next_u32(), nd);
                    self.forest.insert(n);
                    self.count += 1;
                }
            }
            (None, Some((nm, nd))) if next_in_place => {
                // The node becomes its next piece, in place: its key grows from `k` to `nm.addr`,
                // and no other mapping starts in between (it would overlap the old one).
                let old_data = core::mem::replace(&mut node.data, nd);
                node.set_mapping(&nm);
                carrier.set(&old, 0, old_data);
                retired.push(GpuVaRemoved::new(carrier));
            }
            (None, Some((nm, nd))) => {
                if let Some(old_node) = self.forest.remove(k) {
                    retired.push(GpuVaRemoved::new(old_node));
                }
                carrier.set(&nm, self.rng.next_u32(), nd);
                self.forest.insert(carrier);
            }
            (None, None) => {
                retired.push(GpuVaRemoved::new(carrier));
                return false;
            }
        }
        true
    }
}

#[cfg(feature = "alloc")]
fn push_op(ops: &mut alloc::vec::Vec<Op>, op: Op) -> Result<(), crate::AllocError> {
    ops.try_reserve(1).map_err(|_| crate::AllocError)?;
    #[expect(
        clippy::disallowed_methods,
        reason = "capacity reserved fallibly just above"
    )]
    ops.push(op);
    Ok(())
}

impl<D, P: NodePtr<D>, B> fmt::Debug for GpuVm<D, P, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuVm")
            .field("range", &self.space)
            .field("reserved", &self.reserved)
            .field("mappings", &self.count)
            .field("generation", &self.generation)
            .finish()
    }
}
