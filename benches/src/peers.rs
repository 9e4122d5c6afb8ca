//! The trackers behind one trait: gpuva (with and without object links), the `BTreeMap` split
//! tree and rangemap.

use std::hint::black_box;

use gpuva::{
    BoxNode, GpuVm, OpMap, OpMapped, OpRemap, OpRemapped, OpUnmap, OpUnmapped, Request, SmVisitor,
};
use rangemap::RangeMap;
use sim::ops::Driver;

use crate::split_tree::SplitTree;
use crate::workload::{PAGE, SPACE};

/// A VA tracker the benchmarks can drive with a request stream.
pub trait Tracker {
    /// Applies one request with everything a caller pays for it.
    fn apply(&mut self, req: &Request);
    /// Number of live mappings (may walk the whole structure; not for timed code).
    fn live(&self) -> usize;
}

/// The gpuva node type used by the benchmarks (no driver payload, no link payload).
pub type Node = BoxNode<()>;

/// A visitor that applies every step and hands each op's description to [`black_box`], as the
/// split tree's benchmark sink does, so both trackers really produce their ops.
#[derive(Debug, Default)]
pub struct Touch;

impl SmVisitor<()> for Touch {
    type Error = core::convert::Infallible;

    fn step_map<'op>(&mut self, op: OpMap<'op, ()>) -> Result<OpMapped<'op>, Self::Error> {
        black_box(op.mapping());
        Ok(op.insert(()))
    }

    fn step_remap<'op>(&mut self, op: OpRemap<'op, ()>) -> Result<OpRemapped<'op>, Self::Error> {
        black_box((op.va().mapping(), op.keep(), op.prev(), op.next()));
        Ok(op.remap())
    }

    fn step_unmap<'op>(&mut self, op: OpUnmap<'op, ()>) -> Result<OpUnmapped<'op>, Self::Error> {
        black_box((op.va().mapping(), op.keep()));
        Ok(op.remove())
    }
}

/// gpuva with heap nodes ([`BoxNode`]) over [`SPACE`] at 4 KiB granularity, driven exactly as
/// `vmsim ops --bench` drives it ([`sim::ops::Driver::run`]).
///
/// [`Tracker::apply`] is the full per-request cost a driver pays: prepare (claim the request's
/// bound and, for a map of an object, a link's, allocating the spare cache's shortfall; obtain
/// and pin the link), run (walk and apply) and cleanup (release the claim, put the pin, trim the
/// spare cache). With links off ([`GpuvaTracker::without_links`]) there is no link step.
#[derive(Debug)]
pub struct GpuvaTracker {
    /// The driver (and its VA space: `driver.vm`).
    pub driver: Driver,
}

impl GpuvaTracker {
    /// An empty VA space over [`SPACE`] with object links.
    ///
    /// # Panics
    ///
    /// Never: [`SPACE`] is a valid space.
    #[must_use]
    pub fn new() -> Self {
        Self::from_vm(GpuVm::with_granule(SPACE, 0..0, PAGE).expect("SPACE is a valid VA space"))
    }

    /// An empty VA space over [`SPACE`] without object links (`GpuVm::without_links`).
    ///
    /// # Panics
    ///
    /// Never: [`SPACE`] is a valid space.
    #[must_use]
    pub fn without_links() -> Self {
        Self::from_vm(
            GpuVm::with_granule(SPACE, 0..0, PAGE)
                .expect("SPACE is a valid VA space")
                .without_links(),
        )
    }

    fn from_vm(vm: GpuVm<(), Node>) -> Self {
        Self {
            driver: Driver::from_vm(vm),
        }
    }

    /// The VA space.
    #[must_use]
    pub fn vm(&self) -> &GpuVm<(), Node> {
        &self.driver.vm
    }

    /// The full flow of one request through `visitor`.
    ///
    /// # Panics
    ///
    /// If the request is invalid or memory runs out.
    #[inline]
    pub fn apply_with<V>(&mut self, req: &Request, visitor: &mut V)
    where
        V: SmVisitor<()>,
        V::Error: core::fmt::Display,
    {
        self.driver
            .run(*req, visitor)
            .expect("memory (benchmark)")
            .expect("valid request");
    }
}

impl Default for GpuvaTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl Tracker for GpuvaTracker {
    #[inline]
    fn apply(&mut self, req: &Request) {
        self.apply_with(req, &mut Touch);
    }

    fn live(&self) -> usize {
        self.driver.vm.len()
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
            // The gpuva extension requests have no peer.
            _ => {}
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
            _ => {}
        }
    }

    fn live(&self) -> usize {
        self.map.iter().count()
    }
}
