//! Op generators beyond drm_gpuvm's map and unmap: unmap of all mappings of an object, prefetch,
//! attribute split, and the opt-in merge policy (see [`crate::sm`], "Extensions").
//!
//! Every generator drives the one walker ([`Walker`]): an unmap of an object is an exact unmap of
//! each of its mappings, an attribute split is at most two cuts (unmaps of an empty range), a
//! merged map is a map of the range widened over its mergeable neighbours. Prefetch only reads.

use core::marker::PhantomData;

use crate::error::{OpsError, RangeError, StepError};
use crate::node::NodePtr;
use crate::reserve::ClaimError;
use crate::sm::{Op, OpPrefetch, Plan, Request, SmVisitor, Step, Walker};
use crate::va::Mapping;
use crate::vm::GpuVm;

/// Whether the merge policy may join `a` and `b` when they are adjacent in VA (`a` below `b`, or
/// overlapping): the same object and flags, and for an object the same translation
/// ([`Mapping::same_backing`]: `offset - addr`, wrapping; for repeat mappings the same window and
/// a congruent phase; never a repeat with a plain mapping); NULL mappings with equal flags always
/// qualify (they translate to nothing, so their offsets carry no meaning; they are never repeats).
#[must_use]
pub(crate) fn mergeable(a: &Mapping, b: &Mapping) -> bool {
    a.flags == b.flags
        && a.obj == b.obj
        && a.repeat == b.repeat
        && (a.obj.is_none() || a.same_backing(b))
}

impl<D, P: NodePtr<D, L>, L> GpuVm<D, P, L> {
    /// The same VA space with the merge policy on or off (off by default, which is exactly
    /// drm_gpuvm's behaviour).
    ///
    /// With the policy on, a map request `R` whose left neighbour (the mapping covering
    /// `R.addr - 1`) or right neighbour (the mapping covering `R.end()`) is *mergeable* with it
    /// (same object and flags; for an object, contiguous object offsets; NULL mappings with equal
    /// flags always) is run as a map of the range widened over those neighbours, at `R`'s
    /// translation. The ops are drm_gpuvm's ops for the widened map, so any driver applies them;
    /// the widened parts come as `Unmap`/`Remap` steps with keep = true (their page-table entries
    /// already hold the right thing), and [`OpMap::requested`](crate::OpMap::requested) tells
    /// the part that is new. The node bound is a plain map's.
    ///
    /// A VA space that runs only maps, unmaps and unmaps of objects with the policy on from the
    /// start is in *merge canonical form* after every request: no two adjacent mappings are
    /// mergeable. Attribute splits ([`Request::Split`]) and [`GpuVm::set_flags`] may leave
    /// mergeable neighbours on purpose; a later map next to them merges with the nearest only.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "alloc")] {
    /// use gpuva::{BoxNode, GpuVm, Mapping, ObjId, Op, Request};
    /// let mut vm = GpuVm::<(), BoxNode<()>>::new(0..0x10000, 0..0)?
    ///     .without_links()
    ///     .with_merge(true);
    /// let bo = ObjId::new(1);
    /// let mut claim = vm.reserve_boxed(3 * vm.bounds().map_obj)?;
    /// vm.map(Mapping::new(0x1000, 0x1000, bo, 0), &mut claim)?;
    /// vm.map(Mapping::new(0x3000, 0x1000, bo, 0x2000), &mut claim)?;
    /// // The tile in between is contiguous with both: one mapping is left.
    /// let ops = vm.sm_map_ops(Mapping::new(0x2000, 0x1000, bo, 0x1000))?;
    /// assert_eq!(ops.ops(), [
    ///     Op::Unmap { va: Mapping::new(0x1000, 0x1000, bo, 0), keep: true },
    ///     Op::Unmap { va: Mapping::new(0x3000, 0x1000, bo, 0x2000), keep: true },
    ///     Op::Map(Mapping::new(0x1000, 0x3000, bo, 0)),
    /// ]);
    /// vm.apply_ops(&ops, &mut claim, &mut gpuva::Apply::default())?;
    /// assert_eq!(vm.len(), 1);
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn with_merge(mut self, on: bool) -> Self {
        self.merge = on;
        self
    }

    /// Whether the merge policy is on.
    #[must_use]
    pub fn merges(&self) -> bool {
        self.merge
    }

    /// The walker for a validated map request: widened over mergeable neighbours when the merge
    /// policy is on.
    pub(crate) fn map_walker(&self, m: Mapping) -> Walker {
        if !self.merge {
            return Walker::map(m);
        }
        let (mut a, mut e) = (m.addr, m.end());
        if let Some(l) = m.addr.checked_sub(1).and_then(|x| self.lookup(x)) {
            if mergeable(&l.mapping(), &m) {
                a = l.addr();
            }
        }
        if let Some(r) = self.lookup(m.end()) {
            if mergeable(&r.mapping(), &m) {
                e = r.end();
            }
        }
        if (a, e) == (m.addr, m.end()) {
            return Walker::map(m);
        }
        let wide = Mapping {
            addr: a,
            len: e - a,
            offset: m.offset_after((m.addr - a).wrapping_neg()),
            ..m
        };
        Walker::merged(m, wide)
    }

    /// [`GpuVm::step`] for the extension requests.
    pub(crate) fn step_ext<V: SmVisitor<D>>(
        &mut self,
        req: Request,
        claim: &mut crate::Claim,
        visitor: &mut V,
    ) -> Result<(), StepError<V::Error>> {
        let range = self.ext_range(&req).map_err(StepError::Range)?;
        let need = self.bounds.for_request(&req);
        self.check_claim(claim, need).map_err(|e| match e {
            ClaimError::Foreign => StepError::Foreign,
            ClaimError::Short { needed, available } => {
                StepError::ReservationTooSmall { needed, available }
            }
        })?;
        self.consume(claim, need);
        match req {
            Request::Prefetch { .. } => {
                for va in self.iter_range(range.clone()) {
                    let mut seen = false;
                    let r = va.addr().max(range.start)..va.end().min(range.end);
                    visitor
                        .step_prefetch(OpPrefetch {
                            seen: &mut seen,
                            node: va,
                            range: r,
                            _inv: PhantomData,
                        })
                        .map(drop)
                        .map_err(StepError::Visitor)?;
                }
            }
            Request::Split { .. } => {
                for at in [range.start, range.end] {
                    if self.lookup(at).is_some_and(|v| v.addr() < at) {
                        self.walk_apply(&Walker::cut(at), None, visitor)
                            .map_err(StepError::Visitor)?;
                    }
                }
            }
            Request::UnmapObject { obj } => {
                self.unmap_object_walk(obj, visitor)
                    .map_err(StepError::Visitor)?;
            }
            Request::Map(_) | Request::Unmap { .. } => {
                debug_assert!(false, "step_ext called for a core request");
            }
        }
        Ok(())
    }

    /// The validated range of an extension request (empty for an unmap of an object).
    fn ext_range(&self, req: &Request) -> Result<core::ops::Range<u64>, RangeError> {
        match *req {
            Request::Prefetch { addr, len } | Request::Split { addr, len } => {
                self.check_range(addr, len)
            }
            Request::Map(m) => self.check_map(&m),
            Request::Unmap { addr, len } => self.check_range(addr, len),
            Request::UnmapObject { .. } => Ok(0..0),
        }
    }

    /// [`GpuVm::walk`] for the extension requests.
    pub(crate) fn walk_ext<E>(
        &self,
        req: Request,
        mut sink: impl FnMut(Op) -> Result<(), E>,
    ) -> Result<Plan, OpsError<E>> {
        let range = self.ext_range(&req).map_err(OpsError::Range)?;
        match req {
            Request::Prefetch { .. } => {
                for va in self.iter_range(range) {
                    sink(Op::Prefetch(va.mapping())).map_err(OpsError::Sink)?;
                }
            }
            Request::Split { .. } => {
                // The second cut sees the first one's `next` piece when one mapping straddles
                // both edges.
                let mut first_next: Option<Mapping> = None;
                for at in [range.start, range.end] {
                    let Some(mut v) = self.lookup(at).map(|v| v.mapping()) else {
                        continue;
                    };
                    if let Some(n) = first_next.filter(|n| n.addr <= at && at < n.end()) {
                        v = n;
                    }
                    if v.addr >= at {
                        continue;
                    }
                    if let Step::Remap { keep, prev, next } = Walker::cut(at).step(&v) {
                        first_next = next;
                        sink(Op::Remap {
                            unmap: v,
                            keep,
                            prev,
                            next,
                        })
                        .map_err(OpsError::Sink)?;
                    }
                }
            }
            Request::UnmapObject { obj } if self.links_on => {
                // One cursor over the object's index entries, one lookup per mapping.
                let o = obj.get();
                let mut c = self.objs.seek((o, 0));
                while let Some((_, addr)) = c.key().filter(|k| k.0 == o) {
                    if let Some((v, t)) = self.vas.get(addr) {
                        sink(Op::Unmap {
                            va: v.mapping(addr, t),
                            keep: false,
                        })
                        .map_err(OpsError::Sink)?;
                    }
                    if !c.next() {
                        break;
                    }
                }
            }
            Request::UnmapObject { obj } => {
                for v in self.iter().filter(|v| v.obj() == Some(obj)) {
                    sink(Op::Unmap {
                        va: v.mapping(),
                        keep: false,
                    })
                    .map_err(OpsError::Sink)?;
                }
            }
            Request::Map(_) | Request::Unmap { .. } => {
                debug_assert!(false, "walk_ext called for a core request");
            }
        }
        Ok(Plan {
            request: req,
            vm: self.id,
            generation: self.generation(),
            nodes: self.bounds.for_request(&req),
        })
    }

    /// Records the ops of any request into an [`OpList`](crate::OpList) (feature `alloc`;
    /// allocation is fallible): [`GpuVm::sm_map_ops`] and [`GpuVm::sm_unmap_ops`] for every
    /// request kind.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "alloc")] {
    /// use gpuva::{BoxNode, GpuVm, Mapping, ObjId, Op, Request};
    /// let mut vm = GpuVm::<(), BoxNode<()>>::new(0..0x10000, 0..0)?;
    /// let bo = ObjId::new(3).ok_or("zero")?;
    /// let mut claim = vm.reserve_boxed(2 * vm.bounds().map_obj + vm.link_nodes())?;
    /// let pin = vm.link_obtain(bo, &mut claim, || ())?;
    /// vm.map(Mapping::new(0x4000, 0x1000, Some(bo), 0), &mut claim)?;
    /// vm.map(Mapping::new(0x1000, 0x1000, Some(bo), 0x8000), &mut claim)?;
    /// // GEM close: every mapping of the object, in address order.
    /// let ops = vm.request_ops(Request::UnmapObject { obj: bo })?;
    /// assert_eq!(ops.ops(), [
    ///     Op::Unmap { va: Mapping::new(0x1000, 0x1000, Some(bo), 0x8000), keep: false },
    ///     Op::Unmap { va: Mapping::new(0x4000, 0x1000, Some(bo), 0), keep: false },
    /// ]);
    /// assert_eq!(ops.nodes_needed(), 0);
    /// vm.apply_ops(&ops, &mut claim, &mut gpuva::Apply::default())?;
    /// assert!(vm.is_empty());
    /// vm.release(claim).ok();
    /// vm.link_put(pin).ok();
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`OpsError::Range`], or [`OpsError::Sink`] with [`crate::AllocError`].
    #[cfg(feature = "alloc")]
    pub fn request_ops(&self, req: Request) -> Result<crate::OpList, OpsError> {
        self.ops(req)
    }

    /// Whether no two adjacent mappings are mergeable (the merge policy's canonical form; see
    /// [`GpuVm::with_merge`]). For tests; O(n).
    #[doc(hidden)]
    #[must_use]
    pub fn is_merge_canonical(&self) -> bool {
        let mut prev: Option<Mapping> = None;
        for va in self.iter() {
            let m = va.mapping();
            if prev.is_some_and(|p| p.end() == m.addr && mergeable(&p, &m)) {
                return false;
            }
            prev = Some(m);
        }
        true
    }
}
