//! The three trackers behind one trait: gpuva, the `BTreeMap` split tree and rangemap.

use std::hint::black_box;

use gpuva::{
    BoxNode, GpuVm, NodePool, NodeReserve, OneBucket, OpMap, OpMapped, OpRemap, OpRemapped,
    OpUnmap, OpUnmapped, Request, RetiredList, SmVisitor, MAX_MAP_NODES, MAX_UNMAP_NODES,
};
use rangemap::RangeMap;

use crate::split_tree::SplitTree;
use crate::workload::SPACE;

/// A VA tracker the benchmarks can drive with a request stream.
pub trait Tracker {
    /// Applies one request with everything a caller pays for it.
    fn apply(&mut self, req: &Request);
    /// Number of live mappings (may walk the whole structure; not for timed code).
    fn live(&self) -> usize;
}

/// The gpuva node type used by the benchmarks (no driver payload).
pub type Node = BoxNode<()>;

/// A visitor that applies every step and hands each op's description to [`black_box`], as the
/// split tree's benchmark sink does, so both trackers really produce their ops.
#[derive(Debug, Default)]
pub struct Touch;

impl SmVisitor<(), Node> for Touch {
    type Error = core::convert::Infallible;

    fn step_map<'op>(&mut self, op: OpMap<'op, (), Node>) -> Result<OpMapped<'op>, Self::Error> {
        black_box(op.mapping());
        Ok(op.insert(()))
    }

    fn step_remap<'op>(
        &mut self,
        op: OpRemap<'op, (), Node>,
    ) -> Result<OpRemapped<'op>, Self::Error> {
        black_box((op.va().mapping(), op.keep(), op.prev(), op.next()));
        Ok(op.remap())
    }

    fn step_unmap<'op>(
        &mut self,
        op: OpUnmap<'op, (), Node>,
    ) -> Result<OpUnmapped<'op>, Self::Error> {
        black_box((op.va().mapping(), op.keep()));
        Ok(op.remove())
    }
}

/// A boxed bucket directory ([`GpuVm::with_capacity`]).
pub type Dir = Box<[Option<Node>]>;

/// gpuva with heap nodes ([`BoxNode`]) and bucket directory `B`: [`OneBucket`] (one treap,
/// [`GpuVm::new`]) or [`Dir`] ([`GpuVm::with_capacity`]).
///
/// [`Tracker::apply`] is the full per-request cost a driver pays: prepare (allocate a
/// [`NodeReserve`] of the worst case), run (walk, apply, retire) and cleanup (free the unused
/// reserved nodes and the retired ones). [`GpuvaTracker::run`] is the run stage alone, with nodes
/// from a prefilled pool and retired nodes kept until [`GpuvaTracker::cleanup`].
#[derive(Debug)]
pub struct GpuvaTracker<B = OneBucket<Node>> {
    /// The VA space.
    pub vm: GpuVm<(), Node, B>,
    retired: RetiredList<(), Node>,
}

impl GpuvaTracker {
    /// An empty VA space over [`SPACE`] with one bucket (a single treap).
    ///
    /// # Panics
    ///
    /// Never: [`SPACE`] is a valid space.
    #[must_use]
    pub fn new() -> Self {
        Self {
            vm: GpuVm::new(SPACE, 0..0).expect("SPACE is a valid VA space"),
            retired: RetiredList::new(),
        }
    }
}

impl GpuvaTracker<Dir> {
    /// An empty VA space over [`SPACE`] with a directory sized for `mappings`
    /// ([`GpuVm::with_capacity`]: about one bucket per two mappings, buckets of equal address width
    /// across the whole space).
    ///
    /// # Panics
    ///
    /// If the directory cannot be allocated.
    #[must_use]
    pub fn with_capacity(mappings: usize) -> Self {
        Self {
            vm: GpuVm::with_capacity(SPACE, 0..0, mappings).expect("directory allocation"),
            retired: RetiredList::new(),
        }
    }

    /// The maintenance step a driver runs outside the fence-signalling path (for example after a
    /// batch of binds): if [`GpuVm::rebucket_advice`] says so, fit a new directory to the mappings.
    ///
    /// # Panics
    ///
    /// If the directory cannot be allocated.
    pub fn maintain(&mut self) {
        if let Some(n) = self.vm.rebucket_advice() {
            let dir = gpuva::alloc_buckets(n).expect("directory allocation");
            let old = self
                .vm
                .rebucket(dir)
                .map_err(|(_, e)| e)
                .expect("fresh directory");
            drop(old);
        }
    }
}

impl<B: core::ops::DerefMut<Target = [Option<Node>]>> GpuvaTracker<B> {
    /// The run stage of one request: nodes come from `pool`, removed nodes are retired.
    ///
    /// # Panics
    ///
    /// If the request is invalid or `pool` holds fewer than the worst case of the request.
    #[inline]
    pub fn run(&mut self, req: &Request, pool: &mut impl NodePool<Node>) {
        match *req {
            Request::Map(m) => self.vm.sm_map(m, pool, &mut self.retired, &mut Touch),
            Request::Unmap { addr, len } => self
                .vm
                .sm_unmap(addr, len, pool, &mut self.retired, &mut Touch)
                .map_err(|_| gpuva::MapError::ReservationExhausted),
        }
        .expect("valid request with a sufficient pool");
    }

    /// Frees the nodes retired by [`GpuvaTracker::run`].
    pub fn cleanup(&mut self) {
        while self.retired.pop().is_some() {}
    }

    /// Nodes retired and not yet freed.
    #[must_use]
    pub fn retired(&self) -> usize {
        self.retired.len()
    }
}

impl Default for GpuvaTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: core::ops::DerefMut<Target = [Option<Node>]>> Tracker for GpuvaTracker<B> {
    #[inline]
    fn apply(&mut self, req: &Request) {
        let worst = match req {
            Request::Map(_) => MAX_MAP_NODES,
            Request::Unmap { .. } => MAX_UNMAP_NODES,
        };
        // Prepare.
        let mut reserve =
            NodeReserve::<Node>::try_alloc(worst).expect("node allocation (benchmark)");
        // Run.
        self.run(req, &mut reserve);
        // Cleanup.
        drop(reserve);
        self.cleanup();
    }

    fn live(&self) -> usize {
        self.vm.len()
    }
}

/// The `BTreeMap` split tree, its ops handed to [`black_box`].
#[derive(Debug, Default)]
pub struct SplitTreeTracker {
    /// The tree.
    pub tree: SplitTree,
}

impl Tracker for SplitTreeTracker {
    #[inline]
    fn apply(&mut self, req: &Request) {
        match *req {
            Request::Map(m) => self.tree.sm_map(m, |op| {
                black_box(op);
            }),
            Request::Unmap { addr, len } => self.tree.sm_unmap(addr, len, |op| {
                black_box(op);
            }),
        }
    }

    fn live(&self) -> usize {
        self.tree.len()
    }
}

/// rangemap with value `(object, offset - address)` (object 0 for NULL mappings): no ops, no
/// per-mapping identity (equal neighbours coalesce), the lower bound of plain range bookkeeping.
#[derive(Debug, Default)]
pub struct RangemapTracker {
    /// The map.
    pub map: RangeMap<u64, (u64, u64)>,
}

impl Tracker for RangemapTracker {
    #[inline]
    fn apply(&mut self, req: &Request) {
        match *req {
            Request::Map(m) => self.map.insert(
                m.range(),
                (m.obj.map_or(0, |o| o.get()), m.offset.wrapping_sub(m.addr)),
            ),
            Request::Unmap { addr, len } => self.map.remove(addr..addr + len),
        }
    }

    fn live(&self) -> usize {
        self.map.iter().count()
    }
}
