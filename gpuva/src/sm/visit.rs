//! The step visitor trait and the built-in visitors.

use core::convert::Infallible;

use super::list::Op;
use super::ops::{
    OpMap, OpMapped, OpPrefetch, OpPrefetched, OpRemap, OpRemapped, OpUnmap, OpUnmapped,
};
use crate::va::Mapping;

/// The driver side of split/merge: one call per step, as drm_gpuvm's `sm_step_map/remap/unmap`.
///
/// Each method receives the op by value and must apply it to get the token it returns; the node
/// memory every step needs was claimed before the walk began, so a token is never issued for a
/// step that cannot be carried out. A typical run-stage visitor writes or clears PTEs for the op,
/// then applies it.
///
/// If a method returns `Err`, the walk stops: steps already applied stay applied (as in
/// drm_gpuvm; the tree stays consistent), and the error comes back as
/// [`StepError::Visitor`](crate::StepError::Visitor).
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "alloc")] {
/// use gpuva::{BoxNode, GpuVm, Mapping, ObjId, Request, SmVisitor};
/// use gpuva::{OpMap, OpMapped, OpRemap, OpRemapped, OpUnmap, OpUnmapped};
///
/// /// Counts the page-table work a request implies, then applies it.
/// struct PteWriter {
///     written: u64,
///     cleared: u64,
/// }
///
/// impl SmVisitor<()> for PteWriter {
///     type Error = core::convert::Infallible;
///     fn step_map<'op>(&mut self, op: OpMap<'op, ()>) -> Result<OpMapped<'op>, Self::Error> {
///         self.written += op.mapping().len;
///         Ok(op.insert(()))
///     }
///     fn step_remap<'op>(&mut self, op: OpRemap<'op, ()>) -> Result<OpRemapped<'op>, Self::Error> {
///         if !op.keep() {
///             self.cleared += op.hole().end - op.hole().start;
///         }
///         Ok(op.remap())
///     }
///     fn step_unmap<'op>(&mut self, op: OpUnmap<'op, ()>) -> Result<OpUnmapped<'op>, Self::Error> {
///         if !op.keep() {
///             self.cleared += op.va().length();
///         }
///         Ok(op.remove())
///     }
/// }
///
/// let mut vm = GpuVm::<(), BoxNode<()>>::new(0..0x10_0000, 0..0)?.without_links();
/// let mut w = PteWriter { written: 0, cleared: 0 };
/// for req in [
///     Request::Map(Mapping::new(0x1000, 0x4000, ObjId::new(1), 0)),
///     Request::Map(Mapping::new(0x2000, 0x1000, ObjId::new(2), 0)),
/// ] {
///     let mut claim = vm.reserve_boxed(vm.nodes_for(&req))?;
///     vm.step(req, &mut claim, &mut w)?;
///     vm.release(claim).ok();
/// }
/// assert_eq!((w.written, w.cleared), (0x5000, 0x1000));
/// assert_eq!(vm.len(), 3);
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait SmVisitor<D> {
    /// The visitor's own failure.
    type Error;

    /// Applies a `Map` step.
    ///
    /// # Errors
    ///
    /// Whatever the driver's step can fail with; it stops the walk.
    fn step_map<'op>(&mut self, op: OpMap<'op, D>) -> Result<OpMapped<'op>, Self::Error>;

    /// Applies a `Remap` step.
    ///
    /// # Errors
    ///
    /// Whatever the driver's step can fail with; it stops the walk.
    fn step_remap<'op>(&mut self, op: OpRemap<'op, D>) -> Result<OpRemapped<'op>, Self::Error>;

    /// Applies an `Unmap` step.
    ///
    /// # Errors
    ///
    /// Whatever the driver's step can fail with; it stops the walk.
    fn step_unmap<'op>(&mut self, op: OpUnmap<'op, D>) -> Result<OpUnmapped<'op>, Self::Error>;

    /// Handles a `Prefetch` step ([`Request::Prefetch`](super::Request::Prefetch)); nothing in
    /// the VA space changes. The default does nothing.
    ///
    /// # Errors
    ///
    /// Whatever the driver's prefetch can fail with; it stops the walk.
    fn step_prefetch<'op>(
        &mut self,
        op: OpPrefetch<'op, D>,
    ) -> Result<OpPrefetched<'op>, Self::Error> {
        Ok(op.done())
    }

    /// Receives the payload of a mapping the walk removed or split, by value, right after its
    /// step was applied. The default drops it; a run-stage visitor whose payload owns anything
    /// keeps it for cleanup instead (the run stage frees nothing).
    fn removed(&mut self, va: Mapping, data: D) {
        let _ = (va, data);
    }
}

/// A visitor that applies every step: for callers that only track VAs.
///
/// The new mapping gets the payload given to [`Apply::new`] (or `D::default()`); split pieces get
/// clones of the old payload; removed payloads are dropped.
#[derive(Debug)]
pub struct Apply<D> {
    data: Option<D>,
}

impl<D> Apply<D> {
    /// An applier that gives a new mapping `data`.
    pub fn new(data: D) -> Self {
        Self { data: Some(data) }
    }
}

impl<D> Default for Apply<D> {
    fn default() -> Self {
        Self { data: None }
    }
}

impl<D: Clone + Default> SmVisitor<D> for Apply<D> {
    type Error = Infallible;

    fn step_map<'op>(&mut self, op: OpMap<'op, D>) -> Result<OpMapped<'op>, Infallible> {
        Ok(op.insert(self.data.take().unwrap_or_default()))
    }

    fn step_remap<'op>(&mut self, op: OpRemap<'op, D>) -> Result<OpRemapped<'op>, Infallible> {
        Ok(op.remap())
    }

    fn step_unmap<'op>(&mut self, op: OpUnmap<'op, D>) -> Result<OpUnmapped<'op>, Infallible> {
        Ok(op.remove())
    }
}

/// A visitor that hands every op to `sink` as a plain [`Op`], then applies it like [`Apply`]:
/// for tracing, tests and simulators that want to see the steps as they happen.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "alloc")] {
/// use gpuva::{BoxNode, GpuVm, Mapping, ObjId, Op, Record, Request};
/// let mut vm = GpuVm::<(), BoxNode<()>>::new(0..0x1000, 0..0)?.without_links();
/// let mut seen = Vec::new();
/// let req = Mapping::new(0, 0x1000, ObjId::new(1), 0);
/// let mut claim = vm.reserve_boxed(vm.nodes_for(&Request::Map(req)))?;
/// vm.step(Request::Map(req), &mut claim, &mut Record::new(|op| seen.push(op)))?;
/// assert_eq!(seen, [Op::Map(req)]);
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Record<F> {
    sink: F,
}

impl<F: FnMut(Op)> Record<F> {
    /// A recorder feeding `sink`.
    pub fn new(sink: F) -> Self {
        Self { sink }
    }
}

impl<D: Clone + Default, F: FnMut(Op)> SmVisitor<D> for Record<F> {
    type Error = Infallible;

    fn step_map<'op>(&mut self, op: OpMap<'op, D>) -> Result<OpMapped<'op>, Infallible> {
        (self.sink)(Op::Map(*op.mapping()));
        Ok(op.insert(D::default()))
    }

    fn step_remap<'op>(&mut self, op: OpRemap<'op, D>) -> Result<OpRemapped<'op>, Infallible> {
        (self.sink)(Op::Remap {
            unmap: op.va().mapping(),
            keep: op.keep(),
            prev: op.prev().copied(),
            next: op.next().copied(),
        });
        Ok(op.remap())
    }

    fn step_unmap<'op>(&mut self, op: OpUnmap<'op, D>) -> Result<OpUnmapped<'op>, Infallible> {
        (self.sink)(Op::Unmap {
            va: op.va().mapping(),
            keep: op.keep(),
        });
        Ok(op.remove())
    }

    fn step_prefetch<'op>(
        &mut self,
        op: OpPrefetch<'op, D>,
    ) -> Result<OpPrefetched<'op>, Infallible> {
        (self.sink)(Op::Prefetch(op.va().mapping()));
        Ok(op.done())
    }
}
