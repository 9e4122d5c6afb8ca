//! The VA space: [`GpuVm`].

use core::fmt;
use core::marker::PhantomData;
use core::ops::Range;

use crate::btree::{Act, Cursor, Items, LeafCtx, Local, RangeVisit};
use crate::error::{ApplyError, NewError, OpsError, RangeError, StepError};
use crate::index::{LinkTree, ObjTree, VaKind, VaTree};
use crate::link::{LinkRec, LinkState};
use crate::node::{NodeBag, NodePtr, VaLeaf};
use crate::reserve::{Bounds, Claim, ClaimError};
use crate::sm::{Op, OpMap, OpRemap, OpUnmap, Pending, Plan, Request, SmVisitor, Step, Walker};
use crate::va::{GpuVa, Mapping, Tag, VaFlags, VaVal};

/// A GPU virtual address space: the mappings of `[start, end)`, minus an optional kernel-reserved
/// cut-out, kept in B+trees of caller-supplied nodes, with object links.
///
/// `D` is the driver payload stored with every mapping, `L` the payload of every object link,
/// `P` the node handle type (see [`NodePtr`]).
///
/// # Memory
///
/// Mappings are stored inline in leaves of up to 16 entries (36 bytes each with `D = ()`), so a
/// live mapping costs about 38-75 bytes depending on how full the leaves are (at least half off
/// the tree's edges by construction; sequential fills pack them full); with object links every
/// mapping with an object adds an object-index entry (16 bytes) and every object a link entry
/// (29 bytes with `L = ()`). `GpuVm` itself is 256 bytes on 64-bit targets
/// (`tests::gpuvm_is_small`). `BENCHMARKS.md` has the measured figures.
///
/// # Locking
///
/// `GpuVm` has no lock of its own: changing it takes `&mut self`, as drm_gpuvm requires the driver's
/// VM lock. Node memory is reserved in [`Claim`]s: allocate nodes with the lock dropped, then
/// [`GpuVm::reserve`] under it (moves nodes only), so the run stage, which holds the lock, never
/// waits on an allocation.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "alloc")] {
/// use gpuva::{BoxNode, GpuVm, Mapping, ObjId, Request};
///
/// let mut vm = GpuVm::<(), BoxNode<()>>::new(0..1 << 32, 0..0x1000)?;
/// let bo = ObjId::new(7).ok_or("zero id")?;
///
/// // prepare: claim the worst case of the job (a pure function of its requests), pin the link
/// let map = Request::Map(Mapping::new(0x10_0000, 0x4000, Some(bo), 0));
/// let unmap = Request::Unmap { addr: 0x10_1000, len: 0x1000 };
/// let need = vm.nodes_for(&map) + vm.nodes_for(&unmap) + vm.link_nodes();
/// let mut claim = vm.reserve_boxed(need)?;
/// let pin = vm.link_obtain(bo, &mut claim, || ())?;
///
/// // run: no allocation, cannot fail with the claim
/// vm.map(Mapping::new(0x10_0000, 0x4000, Some(bo), 0), &mut claim)?;
/// vm.unmap(0x10_1000, 0x1000, &mut claim)?;
///
/// // cleanup
/// vm.release(claim).ok();
/// vm.link_put(pin).ok();
/// let ranges: Vec<_> = vm.iter().map(|va| (va.range(), va.offset())).collect();
/// assert_eq!(ranges, [(0x10_0000..0x10_1000, 0), (0x10_2000..0x10_4000, 0x2000)]);
/// assert_eq!(vm.link(bo).map(|l| l.mappings()), Some(2));
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct GpuVm<D, P: NodePtr<D, L>, L = ()> {
    space: Range<u64>,
    /// The kernel cut-out; empty when there is none. Never stored as a mapping, so lookups and
    /// iterators never see it (drm_gpuvm's plain iterators do).
    reserved: Range<u64>,
    granule: u64,
    pub(crate) vas: VaTree<D, L, P>,
    pub(crate) objs: ObjTree<D, L, P>,
    pub(crate) links: LinkTree<D, L, P>,
    /// Unused nodes: claims set them aside, splits draw from them, merges give back to them.
    pub(crate) spare: NodeBag<D, L, P>,
    /// Nodes claims hold. Invariant: `spare.len() >= claimed`.
    pub(crate) claimed: usize,
    pub(crate) bounds: Bounds,
    pub(crate) links_on: bool,
    /// The merge policy ([`GpuVm::with_merge`]).
    pub(crate) merge: bool,
    /// Head of the zombie-link chain (raw object id; 0 for none).
    pub(crate) zombies: u64,
    generation: u64,
    /// Identifies this VA space, so claims, pins and plans of another one are refused.
    pub(crate) id: usize,
    _data: PhantomData<fn() -> (D, L)>,
}

/// Source of [`GpuVm`] identities.
static NEXT_VM_ID: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(1);

impl<D, P: NodePtr<D, L>, L> GpuVm<D, P, L> {
    /// A VA space over `space`, with the kernel cut-out `reserved` (an empty range for none), in
    /// units of one (any request alignment).
    ///
    /// The node bounds follow from the space's length: see [`GpuVm::with_granule`] for smaller
    /// reservations when requests are page-aligned.
    ///
    /// # Errors
    ///
    /// [`NewError`] if `space` is empty, `reserved` is inverted, or a non-empty `reserved` is not
    /// inside `space`.
    pub fn new(space: Range<u64>, reserved: Range<u64>) -> Result<Self, NewError> {
        Self::with_granule(space, reserved, 1)
    }

    /// A VA space whose requests must be aligned to `granule` (a power of two; both address and
    /// length), which bounds the number of mappings by `length / granule` and so the node
    /// reservations ([`Bounds`]).
    ///
    /// # Errors
    ///
    /// As [`GpuVm::new`], plus [`NewError::Granule`] if `granule` is not a power of two or the
    /// space or cut-out is not aligned to it.
    pub fn with_granule(
        space: Range<u64>,
        reserved: Range<u64>,
        granule: u64,
    ) -> Result<Self, NewError> {
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
        let mask = granule.wrapping_sub(1);
        if !granule.is_power_of_two()
            || (space.start | space.end | reserved.start | reserved.end) & mask != 0
        {
            return Err(NewError::Granule);
        }
        let max = u128::from((space.end - space.start) / granule);
        Ok(Self {
            space,
            reserved,
            granule,
            vas: VaTree::new(),
            objs: ObjTree::new(),
            links: LinkTree::new(),
            spare: NodeBag::new(),
            claimed: 0,
            bounds: Bounds::new(max, true),
            links_on: true,
            merge: false,
            zombies: 0,
            generation: 0,
            id: NEXT_VM_ID.fetch_add(1, core::sync::atomic::Ordering::Relaxed),
            _data: PhantomData,
        })
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

    /// The same, new VA space without object links: no object index, no link tree, smaller
    /// reservations; maps of objects need no link. For VA bookkeeping without vm_bo semantics.
    /// A VA space that already holds mappings is returned unchanged.
    #[must_use]
    pub fn without_links(mut self) -> Self {
        if self.vas.len() == 0 && self.links.len() == 0 {
            self.links_on = false;
            self.bounds = Bounds::new(self.bounds.max_mappings, false);
        }
        self
    }

    /// Whether this VA space keeps object links.
    #[must_use]
    pub fn has_links(&self) -> bool {
        self.links_on
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

    /// The alignment every request must have.
    #[must_use]
    pub fn granule(&self) -> u64 {
        self.granule
    }

    /// Number of mappings.
    #[must_use]
    pub fn len(&self) -> usize {
        self.vas.len()
    }

    /// Whether there are no mappings.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.vas.len() == 0
    }

    /// A counter bumped by every request that changed the tree; plans use it to detect staleness.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Counts a change of the tree (plans recorded before it become stale).
    pub(crate) fn bump_generation(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// An identity distinct for every VA space created by this program.
    #[must_use]
    pub fn id(&self) -> usize {
        self.id
    }

    /// Heights of the mapping tree, the object index and the link tree (statistics and tests).
    #[must_use]
    pub fn heights(&self) -> [usize; 3] {
        [self.vas.height(), self.objs.height(), self.links.height()]
    }

    /// Checks a request range: `drm_gpuvm_range_valid`, plus the refusal of zero size and of
    /// ranges not aligned to the granule.
    ///
    /// # Errors
    ///
    /// [`RangeError`]: zero size, overflow, outside the VA space, overlapping the cut-out
    /// (touching its edge is fine), or unaligned.
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
        if (addr | len) & (self.granule - 1) != 0 {
            return Err(RangeError::Unaligned);
        }
        Ok(addr..end)
    }

    /// Checks a map request: [`GpuVm::check_range`], then for a repeat mapping
    /// ([`Mapping::repeat`]) that it has an object, that its period is a multiple of the granule
    /// and that its phase (so its offset) is aligned to the granule. The length need not be a
    /// multiple of the period: the pieces of later splits are arbitrary anyway, and a mapping
    /// stores its phase. Whether the window lies inside the object is the caller's to check
    /// (gpuva does not know object sizes).
    ///
    /// # Errors
    ///
    /// [`RangeError`]; the repeat checks come after the range checks.
    pub fn check_map(&self, m: &Mapping) -> Result<Range<u64>, RangeError> {
        let r = self.check_range(m.addr, m.len)?;
        if let Some(rep) = m.repeat {
            if m.obj.is_none() {
                return Err(RangeError::RepeatWithoutObject);
            }
            if rep.period() < self.granule {
                return Err(RangeError::RepeatPeriod);
            }
            if m.offset & (self.granule - 1) != 0 {
                return Err(RangeError::RepeatPhase);
            }
        }
        Ok(r)
    }

    /// The mapping exactly covering `[addr, addr + len)`, if any (`drm_gpuva_find`).
    #[must_use]
    pub fn find(&self, addr: u64, len: u64) -> Option<GpuVa<'_, D>> {
        let (v, t) = self.vas.get(addr)?;
        (v.len == len).then(|| GpuVa::new(v.mapping(addr, t), &v.data))
    }

    /// The payload of the mapping exactly covering `[addr, addr + len)`, mutably.
    pub fn find_mut(&mut self, addr: u64, len: u64) -> Option<&mut D> {
        let (v, _) = self.vas.get_mut(addr)?;
        (v.len == len).then_some(&mut v.data)
    }

    /// Changes the flags of the mapping exactly covering `[addr, addr + len)`; returns the old
    /// flags, or `None` if there is no such mapping. Flags never influence split/merge decisions.
    pub fn set_flags(&mut self, addr: u64, len: u64, flags: VaFlags) -> Option<VaFlags> {
        let (v, t) = self.vas.get_mut(addr)?;
        if v.len != len {
            return None;
        }
        let old = t.flags();
        *t = t.with_flags(flags);
        Some(old)
    }

    /// Sets or clears [`VaFlags::INVALIDATED`] on a mapping (`drm_gpuva_invalidate`); `false` if
    /// there is no mapping exactly covering the range.
    pub fn invalidate(&mut self, addr: u64, len: u64, invalidated: bool) -> bool {
        let Some((v, t)) = self.vas.get_mut(addr) else {
            return false;
        };
        if v.len != len {
            return false;
        }
        let bits = if invalidated {
            t.flags().bits() | VaFlags::INVALIDATED.bits()
        } else {
            t.flags().bits() & !VaFlags::INVALIDATED.bits()
        };
        *t = t.with_flags(VaFlags::from_bits(bits));
        true
    }

    /// The mapping containing `addr`, if any.
    #[must_use]
    pub fn lookup(&self, addr: u64) -> Option<GpuVa<'_, D>> {
        let (k, v, t) = self.vas.floor_entry(addr)?;
        (addr - k < v.len).then(|| GpuVa::new(v.mapping(k, t), &v.data))
    }

    /// The lowest mapping overlapping `range` (`drm_gpuva_find_first`). `None` for an empty range.
    #[must_use]
    pub fn find_first(&self, range: Range<u64>) -> Option<GpuVa<'_, D>> {
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
    pub fn find_prev(&self, addr: u64) -> Option<GpuVa<'_, D>> {
        let va = self.lookup(addr.checked_sub(1)?)?;
        (va.end() == addr).then_some(va)
    }

    /// The mapping that starts exactly at `addr`: the right neighbour of a range ending there.
    ///
    /// Strict, unlike `drm_gpuva_find_next`, which also returns a mapping starting at `addr + 1`.
    #[must_use]
    pub fn find_next(&self, addr: u64) -> Option<GpuVa<'_, D>> {
        let (v, t) = self.vas.get(addr)?;
        Some(GpuVa::new(v.mapping(addr, t), &v.data))
    }

    /// All mappings in ascending address order.
    pub fn iter(&self) -> impl Iterator<Item = GpuVa<'_, D>> + '_ {
        self.starting_in(0, u64::MAX)
    }

    /// The mappings that start in `[lo, hi)`, ascending; one descent, then O(1) per step.
    pub(crate) fn starting_in(&self, lo: u64, hi: u64) -> impl Iterator<Item = GpuVa<'_, D>> + '_ {
        let mut c = self.vas.seek(lo);
        let mut started = false;
        core::iter::from_fn(move || {
            if started && !c.next() {
                return None;
            }
            started = true;
            let (k, v, t) = c.get()?;
            (k < hi).then(|| GpuVa::new(v.mapping(k, t), &v.data))
        })
    }

    /// A cursor at the first mapping starting at or after `addr`: steps forwards and backwards in
    /// address order without descending from the root again.
    #[must_use]
    pub fn cursor(&self, addr: u64) -> VaCursor<'_, D, L, P> {
        VaCursor(self.vas.seek(addr))
    }

    /// The mappings overlapping `range`, in ascending address order (a mapping that straddles
    /// `range.start` comes first). O(log n + k).
    pub fn iter_range(&self, range: Range<u64>) -> impl Iterator<Item = GpuVa<'_, D>> + '_ {
        let straddler = if range.is_empty() {
            None
        } else {
            self.lookup(range.start).filter(|v| v.addr() < range.start)
        };
        let rest = (!range.is_empty()).then(|| self.starting_in(range.start, range.end));
        straddler.into_iter().chain(rest.into_iter().flatten())
    }

    /// Runs one request, applying each step through `visitor` (the step API, the run stage).
    ///
    /// Emits exactly drm_gpuvm's ops (see [`crate::sm`]). Node memory comes from `claim`, which
    /// must cover [`GpuVm::nodes_for`]`(&req)` (checked first, so a request never fails halfway
    /// for lack of nodes) and is used up by that much; removed payloads go to
    /// [`SmVisitor::removed`]. Nothing allocates, nothing is freed. A map of an object needs the
    /// object's link ([`GpuVm::link_obtain`] in prepare) unless the VA space keeps no links.
    ///
    /// Cost: O(log n + k) for k overlapped mappings, plus O(log n) per mapping with an object
    /// for the object index.
    ///
    /// # Errors
    ///
    /// * [`StepError::Range`], [`StepError::Foreign`], [`StepError::ReservationTooSmall`],
    ///   [`StepError::NoLink`]: nothing changed.
    /// * [`StepError::Visitor`]: the visitor failed; earlier steps stay applied, the tree is
    ///   consistent.
    pub fn step<V: SmVisitor<D>>(
        &mut self,
        req: Request,
        claim: &mut Claim,
        visitor: &mut V,
    ) -> Result<(), StepError<V::Error>> {
        let w = match req {
            Request::Map(m) => {
                self.check_map(&m).map_err(StepError::Range)?;
                self.map_walker(m)
            }
            Request::Unmap { addr, len } => {
                let r = self.check_range(addr, len).map_err(StepError::Range)?;
                Walker::unmap(r.start, r.end)
            }
            _ => return self.step_ext(req, claim, visitor),
        };
        let need = self.bounds.for_request(&req);
        self.check_claim(claim, need).map_err(|e| match e {
            ClaimError::Foreign => StepError::Foreign,
            ClaimError::Short { needed, available } => {
                StepError::ReservationTooSmall { needed, available }
            }
        })?;
        // The new mapping's link: it must exist; count the mapping on it now (one lookup), and
        // take the count back if the map step does not happen.
        let mut counted = None;
        if let (true, Some(obj)) = (self.links_on, w.final_map().and_then(|m| m.obj)) {
            match self.links.get_mut(obj.get()) {
                Some((rec, _)) => {
                    rec.add_map();
                    counted = Some(obj.get());
                }
                None => return Err(StepError::NoLink(obj)),
            }
        }
        self.consume(claim, need);
        self.walk_apply(&w, counted, visitor)
            .map_err(StepError::Visitor)
    }

    /// [`GpuVm::step`] of a map with the built-in [`Apply`](crate::Apply) visitor: the new
    /// mapping gets `D::default()`.
    ///
    /// # Errors
    ///
    /// As [`GpuVm::step`] (the visitor cannot fail).
    pub fn map(&mut self, req: Mapping, claim: &mut Claim) -> Result<(), StepError>
    where
        D: Clone + Default,
    {
        self.step(Request::Map(req), claim, &mut crate::Apply::default())
    }

    /// [`GpuVm::step`] of an unmap with the built-in [`Apply`](crate::Apply) visitor.
    ///
    /// # Errors
    ///
    /// As [`GpuVm::step`] (the visitor cannot fail).
    pub fn unmap(&mut self, addr: u64, len: u64, claim: &mut Claim) -> Result<(), StepError>
    where
        D: Clone + Default,
    {
        self.step(
            Request::Unmap { addr, len },
            claim,
            &mut crate::Apply::default(),
        )
    }

    /// Records the ops `req` would produce, in order, into `sink`, without changing anything;
    /// returns the [`Plan`] to apply later. Works without any allocator.
    ///
    /// # Errors
    ///
    /// [`OpsError::Range`] for an invalid request; [`OpsError::Sink`] with the sink's error.
    pub fn walk<E>(
        &self,
        req: Request,
        mut sink: impl FnMut(Op) -> Result<(), E>,
    ) -> Result<Plan, OpsError<E>> {
        let w = match req {
            Request::Map(m) => {
                self.check_map(&m).map_err(OpsError::Range)?;
                self.map_walker(m)
            }
            Request::Unmap { addr, len } => {
                let r = self.check_range(addr, len).map_err(OpsError::Range)?;
                Walker::unmap(r.start, r.end)
            }
            _ => return self.walk_ext(req, sink),
        };
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
        if let Some(m) = w.final_map() {
            sink(Op::Map(m)).map_err(OpsError::Sink)?;
        }
        Ok(Plan {
            request: req,
            vm: self.id,
            generation: self.generation,
            nodes: self.bounds.for_request(&req),
        })
    }

    /// [`GpuVm::walk`] for a map request.
    ///
    /// # Errors
    ///
    /// As [`GpuVm::walk`].
    pub fn sm_map_walk<E>(
        &self,
        req: Mapping,
        sink: impl FnMut(Op) -> Result<(), E>,
    ) -> Result<Plan, OpsError<E>> {
        self.walk(Request::Map(req), sink)
    }

    /// [`GpuVm::walk`] for an unmap request.
    ///
    /// # Errors
    ///
    /// As [`GpuVm::walk`].
    pub fn sm_unmap_walk<E>(
        &self,
        addr: u64,
        len: u64,
        sink: impl FnMut(Op) -> Result<(), E>,
    ) -> Result<Plan, OpsError<E>> {
        self.walk(Request::Unmap { addr, len }, sink)
    }

    /// Records `sm_map(req)` into an [`OpList`](crate::OpList) (feature `alloc`; allocation is
    /// fallible).
    ///
    /// # Errors
    ///
    /// [`OpsError::Range`], or [`OpsError::Sink`] with [`crate::AllocError`].
    #[cfg(feature = "alloc")]
    pub fn sm_map_ops(&self, req: Mapping) -> Result<crate::OpList, OpsError> {
        self.ops(Request::Map(req))
    }

    /// Records `sm_unmap(addr, len)` into an [`OpList`](crate::OpList) (feature `alloc`).
    ///
    /// # Errors
    ///
    /// As [`GpuVm::sm_map_ops`].
    #[cfg(feature = "alloc")]
    pub fn sm_unmap_ops(&self, addr: u64, len: u64) -> Result<crate::OpList, OpsError> {
        self.ops(Request::Unmap { addr, len })
    }

    #[cfg(feature = "alloc")]
    pub(crate) fn ops(&self, req: Request) -> Result<crate::OpList, OpsError> {
        let mut ops = alloc::vec::Vec::new();
        let plan = self.walk(req, |op| {
            ops.try_reserve(1).map_err(|_| crate::AllocError)?;
            #[expect(
                clippy::disallowed_methods,
                reason = "capacity reserved fallibly just above"
            )]
            ops.push(op);
            Ok(())
        })?;
        Ok(crate::OpList { plan, ops })
    }

    /// Applies a recorded plan through `visitor`, which sees exactly the recorded ops.
    ///
    /// # Errors
    ///
    /// [`ApplyError::Foreign`] if the plan was recorded on another VA space, [`ApplyError::Stale`]
    /// if this one changed since (nothing changes in either case); otherwise the errors of
    /// [`GpuVm::step`].
    pub fn apply_plan<V: SmVisitor<D>>(
        &mut self,
        plan: &Plan,
        claim: &mut Claim,
        visitor: &mut V,
    ) -> Result<(), ApplyError<V::Error>> {
        if plan.vm != self.id {
            return Err(ApplyError::Foreign);
        }
        if plan.generation != self.generation {
            return Err(ApplyError::Stale);
        }
        self.step(plan.request, claim, visitor)
            .map_err(ApplyError::Step)
    }

    /// Applies a recorded op list (feature `alloc`): [`GpuVm::apply_plan`] of its plan.
    ///
    /// # Errors
    ///
    /// As [`GpuVm::apply_plan`].
    #[cfg(feature = "alloc")]
    pub fn apply_ops<V: SmVisitor<D>>(
        &mut self,
        ops: &crate::OpList,
        claim: &mut Claim,
        visitor: &mut V,
    ) -> Result<(), ApplyError<V::Error>> {
        self.apply_plan(&ops.plan, claim, visitor)
    }

    /// Removes every mapping (VM teardown), handing each one and its payload to `each`, in address
    /// order. Never allocates; O(n), constant stack. Nodes go to the spare cache
    /// ([`GpuVm::trim`] hands them out); links left without mappings become zombies.
    pub fn clear(&mut self, mut each: impl FnMut(Mapping, D)) {
        if self.vas.len() == 0 {
            return;
        }
        let mut out = NodeBag::new();
        self.vas
            .clear(&mut out, |k, v: VaVal<D>, t| each(v.mapping(k, t), v.data));
        self.objs.clear(&mut out, |_, (), ()| {});
        self.spare.append(&mut out);
        let zombies = &mut self.zombies;
        self.links.for_each_mut(|k, rec, state| {
            rec.set_maps(0);
            queue_zombie(zombies, k, rec, state);
        });
        self.generation = self.generation.wrapping_add(1);
    }

    /// The mutating walk: visits the overlapping mappings in place, in order, lets the visitor
    /// decide each step, and carries it out.
    ///
    /// Nearly every request touches one leaf of the mapping tree (the straddler, the mappings
    /// inside the request and the new entries all live there): that case is one descent
    /// ([`Tree::local`](crate::btree::Tree::local)). Requests that span leaves take the general
    /// path: a floor lookup, a range walk, an insert. Both run the same per-mapping code (`Walk`).
    ///
    /// # Invariants
    ///
    /// The request was validated, its claim covered its bound, a map's object has a link.
    pub(crate) fn walk_apply<V: SmVisitor<D>>(
        &mut self,
        w: &Walker,
        counted: Option<u64>,
        visitor: &mut V,
    ) -> Result<(), V::Error> {
        let (a0, e0) = w.bounds();
        let mut walk = Walk {
            w,
            visitor,
            objs: &mut self.objs,
            links: &mut self.links,
            links_on: self.links_on,
            zombies: &mut self.zombies,
            retired: NodeBag::new(),
            err: None,
            changed: false,
            split_next: None,
            new: None,
            obj_inserts: [None, None],
            new_inserted: false,
        };
        let local = self
            .vas
            .local(a0, |leaf, at| walk.in_leaf(leaf, &at), &mut self.spare);
        if !local {
            // 1. A mapping starting below a0 and reaching past it: shrinks to its prev piece.
            let straddler = self
                .vas
                .floor_entry(a0)
                .filter(|(k, v, _)| *k < a0 && a0 - *k < v.len)
                .map(|(k, _, _)| k);
            if let Some(k) = straddler {
                if let Some((v, t)) = self.vas.get_mut(k) {
                    walk.straddle(k, v, t);
                }
            }
            // 2. Mappings starting inside the request: removed, the last one possibly re-keyed.
            if walk.err.is_none() && walk.split_next.is_none() {
                self.vas.walk_range(a0, e0, &mut walk, &mut self.spare);
            }
            // 3. The new mapping, then a split's next piece: together right after the split
            // mapping's start when both exist (one leaf operation).
            walk.final_map();
            let route =
                walk.split_next.as_ref().map_or(
                    a0,
                    |(s, m, _)| {
                        if walk.new.is_some() {
                            *s
                        } else {
                            m.addr
                        }
                    },
                );
            let bump = if walk.new.is_some() && walk.split_next.is_some() {
                e0.checked_add(1)
            } else {
                None
            };
            let items = walk.take_items();
            if !items.is_empty()
                && self
                    .vas
                    .insert(route, items, bump, &mut self.spare)
                    .is_err()
            {
                debug_assert!(false, "mapping insert ran out of claimed nodes");
            }
        }
        let Walk {
            err,
            changed,
            mut retired,
            obj_inserts,
            new_inserted,
            ..
        } = walk;
        self.spare.append(&mut retired);
        for (key, is_new) in obj_inserts.into_iter().flatten() {
            let mut one = Items::new();
            one.push((key, (), ()));
            if self.objs.insert(key, one, None, &mut self.spare).is_err() {
                debug_assert!(false, "object index insert ran out of claimed nodes");
            }
            if !is_new {
                if let Some((rec, _)) = self.links.get_mut(key.0) {
                    rec.add_map();
                }
            }
        }
        if let (Some(o), false) = (counted, new_inserted) {
            // The map step did not happen: give the count back.
            if let Some((rec, state)) = self.links.get_mut(o) {
                rec.sub_map();
                queue_zombie(&mut self.zombies, o, rec, state);
            }
        }
        if changed {
            self.generation = self.generation.wrapping_add(1);
        }
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Checks the structure (B+tree shape and occupancy, key order, counts, object index and link
    /// counts against the mappings). For tests; O(n).
    ///
    /// # Errors
    ///
    /// A description of the first broken invariant.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), &'static str> {
        self.vas.check()?;
        self.objs.check()?;
        self.links.check()?;
        if self.spare.len() < self.claimed {
            return Err("spare cache below claimed nodes");
        }
        let mut prev_end = None;
        let mut with_obj = 0;
        for va in self.iter() {
            if va.length() == 0 || va.addr().checked_add(va.length()).is_none() {
                return Err("empty or overflowing mapping");
            }
            if prev_end.is_some_and(|e| va.addr() < e) {
                return Err("overlapping mappings");
            }
            if self.check_range(va.addr(), va.length()).is_err() {
                return Err("mapping outside the space, in the cut-out or unaligned");
            }
            prev_end = Some(va.end());
            if let (true, Some(o)) = (self.links_on, va.obj()) {
                with_obj += 1;
                if self.objs.get((o.get(), va.addr())).is_none() {
                    return Err("mapping missing from the object index");
                }
            }
        }
        if self.links_on {
            if self.objs.len() != with_obj {
                return Err("object index has entries without mappings");
            }
            let mut c = self.links.first();
            let mut ok = c.get().is_some();
            while ok {
                if let Some((k, rec, _)) = c.get() {
                    let n = self.objs.seek((k, 0));
                    let mut count = 0u64;
                    let mut n = n;
                    while n.key().is_some_and(|key| key.0 == k) {
                        count += 1;
                        if !n.next() {
                            break;
                        }
                    }
                    if count != rec.maps() {
                        return Err("link mapping count differs from the object index");
                    }
                }
                ok = c.next();
            }
        }
        Ok(())
    }
}

fn val<D>(m: &Mapping, data: D) -> VaVal<D> {
    VaVal {
        len: m.len,
        offset: m.offset,
        obj: m.obj,
        data,
    }
}

/// Queues an idle link on the zombie chain.
pub(crate) fn queue_zombie<L>(
    head: &mut u64,
    key: u64,
    rec: &mut LinkRec<L>,
    state: &mut LinkState,
) {
    if rec.idle() && !state.queued() {
        state.set_queued(true);
        rec.set_next_zombie(*head);
        *head = key;
    }
}

/// A position among the mappings of a [`GpuVm`], from [`GpuVm::cursor`].
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "alloc")] {
/// use gpuva::{BoxNode, GpuVm, Mapping};
/// let mut vm = GpuVm::<(), BoxNode<()>>::new(0..100, 0..0)?.without_links();
/// let mut claim = vm.reserve_boxed(3 * vm.bounds().map_null)?;
/// for a in [10, 20, 30] {
///     vm.map(Mapping::new(a, 5, None, 0), &mut claim)?;
/// }
/// let mut c = vm.cursor(15);
/// assert_eq!(c.get().map(|va| va.addr()), Some(20));
/// assert!(c.prev());
/// assert_eq!(c.get().map(|va| va.addr()), Some(10));
/// assert!(c.next() && c.next());
/// assert_eq!(c.get().map(|va| va.addr()), Some(30));
/// assert!(!c.next());
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct VaCursor<'a, D, L, P: NodePtr<D, L>>(Cursor<'a, D, L, P, VaKind>);

impl<'a, D, L, P: NodePtr<D, L>> VaCursor<'a, D, L, P> {
    /// The mapping at the cursor (`None` past the last one).
    #[must_use]
    pub fn get(&self) -> Option<GpuVa<'a, D>> {
        let (k, v, t) = self.0.get()?;
        Some(GpuVa::new(v.mapping(k, t), &v.data))
    }

    /// Moves to the next mapping; `false` (now past the last one) if there is none.
    #[expect(
        clippy::should_implement_trait,
        reason = "a cursor moves both ways and reports success; it is not an iterator"
    )]
    pub fn next(&mut self) -> bool {
        self.0.next()
    }

    /// Moves to the previous mapping; `false` (staying put) at the first one.
    pub fn prev(&mut self) -> bool {
        self.0.prev()
    }
}

impl<D, L, P: NodePtr<D, L>> fmt::Debug for VaCursor<'_, D, L, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("VaCursor").field(&self.0.key()).finish()
    }
}

/// One request's walk: the per-mapping decisions and their bookkeeping, shared by the one-leaf
/// path and the general path of [`GpuVm::walk_apply`].
struct Walk<'a, D, L, P: NodePtr<D, L>, V: SmVisitor<D>> {
    w: &'a Walker,
    visitor: &'a mut V,
    objs: &'a mut ObjTree<D, L, P>,
    links: &'a mut LinkTree<D, L, P>,
    links_on: bool,
    zombies: &'a mut u64,
    /// Nodes the object index gave back, for the spare cache.
    retired: NodeBag<D, L, P>,
    err: Option<V::Error>,
    changed: bool,
    /// The `next` piece of a mapping that contains the whole request (case B3), to insert after
    /// the walk: (the split mapping's start, the piece, its payload).
    split_next: Option<(u64, Mapping, D)>,
    /// The new mapping and its payload, once its step was applied.
    new: Option<(Mapping, D)>,
    /// Object-index entries of the inserted mappings, added after the mapping tree is done, and
    /// whether the entry is the new mapping (already counted on its link by `step`).
    obj_inserts: [Option<((u64, u64), bool)>; 2],
    /// Whether the new mapping was handed over for insertion.
    new_inserted: bool,
}

impl<D, L, P: NodePtr<D, L>, V: SmVisitor<D>> Walk<'_, D, L, P, V> {
    /// The whole request inside one leaf, if it fits there (see [`Tree::local`]).
    ///
    /// [`Tree::local`]: crate::btree::Tree::local
    fn in_leaf(
        &mut self,
        leaf: &mut VaLeaf<D>,
        at: &LeafCtx<u64>,
    ) -> Local<u64, Items<u64, VaVal<D>, Tag>> {
        let (a0, e0) = self.w.bounds();
        let i = leaf.lower_bound(a0);
        // Decline when the straddler may sit in the previous leaf (nothing starts at a0 here and
        // this is not the first leaf), or mappings inside the request in the next one.
        if (i == 0 && !at.leftmost && leaf.key(0) != Some(a0))
            || (leaf.last_key().is_none_or(|k| k < e0) && at.hi.is_some_and(|h| h < e0))
        {
            return Local::Declined;
        }
        if let Some(s) = i.checked_sub(1) {
            if let (Some(k), Some((v, t))) = (leaf.key(s), leaf.entry_mut(s)) {
                if a0 - k < v.len {
                    self.straddle(k, v, t);
                }
            }
        }
        let mut removed = 0;
        // A key moving up to e0 (a re-keyed next piece, or a split's next piece inserted here)
        // needs the pivots right of this leaf above e0; no key lies between, so that is valid.
        let mut bump = self.split_next.as_ref().and_then(|_| e0.checked_add(1));
        if self.err.is_none() && self.split_next.is_none() {
            while let Some(k) = leaf.key(i).filter(|&k| k < e0) {
                let Some((v, t)) = leaf.entry_mut(i) else {
                    break;
                };
                match RangeVisit::visit(self, k, v, t) {
                    Act::Remove => {
                        if let Some((k, v, t)) = leaf.remove(i) {
                            RangeVisit::removed(self, k, v, t);
                            removed += 1;
                        }
                    }
                    Act::Rekey(nk) => {
                        leaf.set_key(i, nk);
                        bump = nk.checked_add(1);
                        break;
                    }
                    Act::Stop => break,
                }
            }
        }
        self.final_map();
        let items = self.take_items();
        Local::Done {
            removed,
            insert: (!items.is_empty()).then_some((i, items)),
            bump,
        }
    }

    /// The mapping `[k, ..)` straddling the request's start: a `Remap` keeping its prev piece in
    /// place (and, for a request strictly inside it, queueing its next piece).
    fn straddle(&mut self, k: u64, v: &mut VaVal<D>, t: &mut Tag) {
        let old = v.mapping(k, *t);
        let Step::Remap { keep, prev, next } = self.w.step(&old) else {
            debug_assert!(false, "a straddler always keeps a prev piece");
            return;
        };
        let mut pending = Pending::None;
        let r = self
            .visitor
            .step_remap(OpRemap {
                pending: &mut pending,
                node: GpuVa::new(old, &v.data),
                keep,
                prev,
                next,
                _inv: PhantomData,
            })
            .map(drop);
        if let Err(e) = r {
            self.err = Some(e);
            return;
        }
        if let Pending::Remap {
            prev: Some((pm, pd)),
            next,
        } = pending
        {
            v.len = pm.len;
            *t = Tag::of(&pm);
            let old_data = core::mem::replace(&mut v.data, pd);
            self.visitor.removed(old, old_data);
            self.changed = true;
            self.split_next = next.map(|(nm, nd)| (k, nm, nd));
        }
    }

    /// The final `Map` step of a map request, if the walk got that far.
    fn final_map(&mut self) {
        let (None, Some(req)) = (&self.err, self.w.final_map()) else {
            return;
        };
        let mut pending = Pending::None;
        let r = self
            .visitor
            .step_map(OpMap {
                pending: &mut pending,
                mapping: req,
                requested: self.w.requested(),
                _inv: PhantomData,
            })
            .map(drop);
        match (r, pending) {
            (Err(e), _) => self.err = Some(e),
            (Ok(_), Pending::Map(data)) => self.new = Some((req, data)),
            (Ok(_), _) => {}
        }
    }

    /// The entries to insert (the new mapping, then a split's next piece); their object-index
    /// entries are noted for after the mapping tree is done.
    fn take_items(&mut self) -> Items<u64, VaVal<D>, Tag> {
        let mut items = Items::new();
        let new = self.new.take().map(|(m, d)| (m, d, true));
        self.new_inserted |= new.is_some();
        let next = self.split_next.take().map(|(_, m, d)| (m, d, false));
        for (j, (m, data, is_new)) in new.into_iter().chain(next).enumerate() {
            if let (true, Some(o), Some(slot)) = (self.links_on, m.obj, self.obj_inserts.get_mut(j))
            {
                *slot = Some(((o.get(), m.addr), is_new));
            }
            items.push((m.addr, val(&m, data), Tag::of(&m)));
            self.changed = true;
        }
        items
    }
}

impl<D, L, P: NodePtr<D, L>, V: SmVisitor<D>> RangeVisit<u64, VaVal<D>, Tag>
    for Walk<'_, D, L, P, V>
{
    fn visit(&mut self, k: u64, v: &mut VaVal<D>, t: &mut Tag) -> Act<u64> {
        if self.err.is_some() {
            return Act::Stop;
        }
        let old = v.mapping(k, *t);
        let mut pending = Pending::None;
        let r = match self.w.step(&old) {
            Step::Unmap { keep } => self
                .visitor
                .step_unmap(OpUnmap {
                    pending: &mut pending,
                    node: GpuVa::new(old, &v.data),
                    keep,
                    _inv: PhantomData,
                })
                .map(drop),
            Step::Remap { keep, prev, next } => self
                .visitor
                .step_remap(OpRemap {
                    pending: &mut pending,
                    node: GpuVa::new(old, &v.data),
                    keep,
                    prev,
                    next,
                    _inv: PhantomData,
                })
                .map(drop),
        };
        if let Err(e) = r {
            self.err = Some(e);
            return Act::Stop;
        }
        match pending {
            Pending::Unmap => Act::Remove,
            Pending::Remap {
                prev: None,
                next: Some((nm, nd)),
            } => {
                // The mapping moves its start to e0, in place: nothing else starts in between.
                v.len = nm.len;
                v.offset = nm.offset;
                *t = Tag::of(&nm);
                let old_data = core::mem::replace(&mut v.data, nd);
                self.visitor.removed(old, old_data);
                if let (true, Some(o)) = (self.links_on, old.obj) {
                    let o = o.get();
                    let moved =
                        self.objs
                            .rekey((o, k), (o, nm.addr), (o, nm.addr.saturating_add(1)));
                    debug_assert!(moved, "object index lost a mapping");
                }
                self.changed = true;
                Act::Rekey(nm.addr)
            }
            _ => {
                debug_assert!(
                    false,
                    "a mapping starting inside the request has no prev piece"
                );
                Act::Stop
            }
        }
    }

    fn removed(&mut self, k: u64, v: VaVal<D>, t: Tag) {
        let m = v.mapping(k, t);
        if let (true, Some(o)) = (self.links_on, m.obj) {
            let o = o.get();
            let gone = self.objs.remove((o, k), &mut self.retired);
            debug_assert!(gone.is_some(), "object index lost a mapping");
            if let Some((rec, state)) = self.links.get_mut(o) {
                rec.sub_map();
                queue_zombie(self.zombies, o, rec, state);
            }
        }
        self.changed = true;
        self.visitor.removed(m, v.data);
    }
}

#[cfg(feature = "alloc")]
impl<D, L> GpuVm<D, crate::BoxNode<D, L>, L> {
    /// Allocates the [`GpuVm::shortfall`] on the heap and claims `need` nodes (feature `alloc`):
    /// prepare in one call, for code that does not split allocation from the VM lock.
    ///
    /// # Errors
    ///
    /// [`AllocError`](crate::AllocError); nothing changed.
    pub fn reserve_boxed(&mut self, need: usize) -> Result<Claim, crate::AllocError> {
        let mut bag = NodeBag::try_alloc(self.shortfall(need))?;
        self.reserve(need, &mut bag).map_err(|_| crate::AllocError)
    }
}

impl<D, P: NodePtr<D, L>, L> Drop for GpuVm<D, P, L> {
    fn drop(&mut self) {
        // Iterative teardown: every node ends up in one bag, which drops them one at a time.
        let mut out = NodeBag::new();
        self.vas.clear(&mut out, |_, _, _| {});
        self.objs.clear(&mut out, |_, _, _| {});
        self.links.clear(&mut out, |_, _, _| {});
        out.append(&mut self.spare);
    }
}

impl<D, P: NodePtr<D, L>, L> fmt::Debug for GpuVm<D, P, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuVm")
            .field("range", &self.space)
            .field("reserved", &self.reserved)
            .field("granule", &self.granule)
            .field("mappings", &self.vas.len())
            .field("links", &self.links.len())
            .field("spare", &self.spare.len())
            .field("claimed", &self.claimed)
            .field("generation", &self.generation)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "alloc")]
    #[allow(clippy::disallowed_methods, reason = "tests may allocate infallibly")]
    mod random {
        extern crate alloc;
        extern crate std;
        use alloc::collections::BTreeMap;
        use alloc::vec::Vec;

        use crate::{BoxNode, GpuVm, Mapping, ObjId, Request};

        type Vm = GpuVm<u64, BoxNode<u64>>;

        /// Page -> (object, offset of the page, payload id).
        type Model = BTreeMap<u64, (Option<ObjId>, u64, u64)>;

        fn apply_model(model: &mut Model, req: &Request, id: u64) {
            match *req {
                Request::Map(m) => {
                    for p in m.addr..m.end() {
                        model.insert(p, (m.obj, m.offset + (p - m.addr), id));
                    }
                }
                Request::Unmap { addr, len } => {
                    for p in addr..addr + len {
                        model.remove(&p);
                    }
                }
                _ => {}
            }
        }

        /// Random requests over a multi-leaf tree (both the one-leaf and the general path), with
        /// and without links, every page and every structural invariant checked against a
        /// page-granular model.
        #[test]
        fn random_requests_match_a_page_model() {
            for links in [false, true] {
                let mut rng = 0x1234_5678_9abc_def1_u64;
                let mut next = move || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                let pages = 3000;
                let mut vm = Vm::new(0..pages, 0..0).expect("geometry");
                if !links {
                    vm = vm.without_links();
                }
                let mut model = Model::new();
                for id in 1..4000u64 {
                    let addr = next() % pages;
                    let max = if next() % 8 == 0 { 200 } else { 6 };
                    let len = (1 + next() % max).min(pages - addr);
                    let req = if next() % 3 == 0 {
                        Request::Unmap { addr, len }
                    } else {
                        let obj = ObjId::new(next() % 12);
                        Request::Map(Mapping::new(addr, len, obj, next() % 64))
                    };
                    let need = vm.nodes_for(&req) + vm.link_nodes();
                    let mut claim = vm.reserve_boxed(need).expect("memory");
                    let pin = match req {
                        Request::Map(m) if links => m
                            .obj
                            .map(|o| vm.link_obtain(o, &mut claim, || ()).expect("link")),
                        _ => None,
                    };
                    let before = vm.nodes_taken();
                    vm.step(req, &mut claim, &mut crate::Apply::new(id))
                        .expect("step");
                    assert!(
                        vm.nodes_taken() - before <= vm.nodes_for(&req) as u64,
                        "request {id} drew more than its bound"
                    );
                    vm.release(claim).expect("own claim");
                    if let Some(p) = pin {
                        vm.link_put(p).expect("own pin");
                    }
                    apply_model(&mut model, &req, id);
                    if let Err(e) = vm.check_invariants() {
                        panic!("request {id} ({req:?}): {e}");
                    }
                    if id % 97 == 0 || id < 50 {
                        let mut seen = Model::new();
                        for va in vm.iter() {
                            for p in va.range() {
                                seen.insert(
                                    p,
                                    (va.obj(), va.offset() + (p - va.addr()), *va.data()),
                                );
                            }
                        }
                        // Payloads of split pieces are clones of the split mapping's: compare
                        // translations, and payloads only where the model knows them.
                        let strip = |m: &Model| -> Vec<_> {
                            m.iter().map(|(p, (o, off, _))| (*p, *o, *off)).collect()
                        };
                        assert_eq!(strip(&seen), strip(&model), "after request {id}");
                        for (p, (_, _, id)) in &model {
                            assert_eq!(seen.get(p).map(|e| e.2), Some(*id));
                        }
                    }
                }
                assert!(
                    vm.heights()[0] >= 2,
                    "the test must reach a multi-leaf tree"
                );
            }
        }
    }

    /// `GpuVm` is small enough to live on a kernel stack or inside a driver's VM struct.
    #[test]
    fn gpuvm_is_small() {
        let size = core::mem::size_of::<GpuVm<(), crate::RefNode<'static, ()>>>();
        if core::mem::size_of::<usize>() == 8 {
            assert_eq!(size, 256, "GpuVm is {size} bytes: update the docs' figure");
        }
    }
}
