//! The step visitor trait and the built-in visitor that just applies every step.

use core::convert::Infallible;

use super::list::Op;
use super::ops::{OpMap, OpMapped, OpRemap, OpRemapped, OpUnmap, OpUnmapped};
use crate::node::NodePtr;
#[cfg(doc)]
use crate::node::RetiredList;

/// The driver side of split/merge: one call per step, as drm_gpuvm's `sm_step_map/remap/unmap`.
///
/// Each method receives the op by value and must apply it to get the token it returns. A typical
/// run-stage visitor writes or clears PTEs for the op, then applies it; the walker moves removed
/// nodes to the [`RetiredList`] given to the walk.
///
/// If a method returns `Err`, the walk stops: steps already applied stay applied (as in
/// drm_gpuvm; the tree stays consistent), and the error comes back as `MapError::Visitor`.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "alloc")] {
/// use gpuva::{BoxNode, GpuVm, Mapping, NodeReserve, ObjId, RetiredList, SmVisitor};
/// use gpuva::{OpMap, OpMapped, OpRemap, OpRemapped, OpUnmap, OpUnmapped};
///
/// /// Counts the page-table work a request implies, then applies it.
/// struct PteWriter {
///     written: u64,
///     cleared: u64,
/// }
///
/// impl SmVisitor<(), BoxNode<()>> for PteWriter {
///     type Error = core::convert::Infallible;
///     fn step_map<'op>(&mut self, op: OpMap<'op, (), BoxNode<()>>) -> Result<OpMapped<'op>, Self::Error> {
///         self.written += op.mapping().len;
///         Ok(op.insert(()))
///     }
///     fn step_remap<'op>(&mut self, op: OpRemap<'op, (), BoxNode<()>>) -> Result<OpRemapped<'op>, Self::Error> {
///         if !op.keep() {
///             self.cleared += op.hole().end - op.hole().start;
///         }
///         Ok(op.remap())
///     }
///     fn step_unmap<'op>(&mut self, op: OpUnmap<'op, (), BoxNode<()>>) -> Result<OpUnmapped<'op>, Self::Error> {
///         if !op.keep() {
///             self.cleared += op.va().len();
///         }
///         Ok(op.remove())
///     }
/// }
///
/// let mut vm = GpuVm::<(), BoxNode<()>>::new(0..0x10_0000, 0..0)?;
/// let mut retired = RetiredList::new();
/// let obj = ObjId::new(1);
/// let mut w = PteWriter { written: 0, cleared: 0 };
/// let mut pool = NodeReserve::try_alloc(3)?;
/// vm.sm_map(Mapping::new(0x1000, 0x4000, obj, 0), &mut pool, &mut retired, &mut w)?;
/// let mut pool = NodeReserve::try_alloc(3)?;
/// vm.sm_map(Mapping::new(0x2000, 0x1000, ObjId::new(2), 0), &mut pool, &mut retired, &mut w)?;
/// assert_eq!((w.written, w.cleared), (0x5000, 0x1000));
/// assert_eq!(vm.len(), 3);
/// assert_eq!(retired.len(), 1);
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait SmVisitor<D, P: NodePtr<D>> {
    /// The visitor's own failure.
    type Error;

    /// Applies a `Map` step.
    ///
    /// # Errors
    ///
    /// Whatever the driver's step can fail with; it stops the walk.
    fn step_map<'op>(&mut self, op: OpMap<'op, D, P>) -> Result<OpMapped<'op>, Self::Error>;

    /// Applies a `Remap` step.
    ///
    /// # Errors
    ///
    /// Whatever the driver's step can fail with; it stops the walk.
    fn step_remap<'op>(&mut self, op: OpRemap<'op, D, P>) -> Result<OpRemapped<'op>, Self::Error>;

    /// Applies an `Unmap` step.
    ///
    /// # Errors
    ///
    /// Whatever the driver's step can fail with; it stops the walk.
    fn step_unmap<'op>(&mut self, op: OpUnmap<'op, D, P>) -> Result<OpUnmapped<'op>, Self::Error>;
}

/// A visitor that applies every step: for callers that only track VAs.
///
/// The new mapping gets the payload given to [`Apply::new`] (or `D::default()`); split pieces get
/// clones of the old payload.
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

impl<D: Clone + Default, P: NodePtr<D>> SmVisitor<D, P> for Apply<D> {
    type Error = Infallible;

    fn step_map<'op>(&mut self, op: OpMap<'op, D, P>) -> Result<OpMapped<'op>, Infallible> {
        Ok(op.insert(self.data.take().unwrap_or_default()))
    }

    fn step_remap<'op>(&mut self, op: OpRemap<'op, D, P>) -> Result<OpRemapped<'op>, Infallible> {
        Ok(op.remap())
    }

    fn step_unmap<'op>(&mut self, op: OpUnmap<'op, D, P>) -> Result<OpUnmapped<'op>, Infallible> {
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
/// use gpuva::{BoxNode, GpuVm, Mapping, NodeReserve, ObjId, Op, Record, RetiredList};
/// let mut vm = GpuVm::<(), BoxNode<()>>::new(0..0x1000, 0..0)?;
/// let mut retired = RetiredList::new();
/// let mut seen = Vec::new();
/// let req = Mapping::new(0, 0x1000, ObjId::new(1), 0);
/// vm.sm_map(req, &mut NodeReserve::try_alloc(3)?, &mut retired, &mut Record::new(|op| seen.push(op)))?;
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

impl<D: Clone + Default, P: NodePtr<D>, F: FnMut(Op)> SmVisitor<D, P> for Record<F> {
    type Error = Infallible;

    fn step_map<'op>(&mut self, op: OpMap<'op, D, P>) -> Result<OpMapped<'op>, Infallible> {
        (self.sink)(Op::Map(*op.mapping()));
        Ok(op.insert(D::default()))
    }

    fn step_remap<'op>(&mut self, op: OpRemap<'op, D, P>) -> Result<OpRemapped<'op>, Infallible> {
        (self.sink)(Op::Remap {
            unmap: op.va().mapping(),
            keep: op.keep(),
            prev: op.prev().copied(),
            next: op.next().copied(),
        });
        Ok(op.remap())
    }

    fn step_unmap<'op>(&mut self, op: OpUnmap<'op, D, P>) -> Result<OpUnmapped<'op>, Infallible> {
        (self.sink)(Op::Unmap {
            va: op.va().mapping(),
            keep: op.keep(),
        });
        Ok(op.remove())
    }
}
