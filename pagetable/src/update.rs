//! [`UpdateContext`]: the run stage of one job, ending in a [`Flush`].
//!
//! The context holds everything an update needs (the table and its format, the table memory,
//! the job's [`Reserve`], the driver's [`UpdateHooks`], and the gather of TLB work and retired
//! frames), so each operation takes only its request. It is the crate's form of Tyr's
//! `PtUpdateContext`, except that the end is explicit: [`UpdateContext::finish`] returns a
//! `#[must_use]` [`Flush`] (as the `x86_64` crate's mapper returns a `MapperFlush`), because the
//! invalidation can fail and the retired frames must go somewhere.

use core::marker::PhantomData;

use crate::addr::{u64_from, Chunk, VirtAddr};
use crate::error::{MapError, RangeError};
use crate::flush::{Flush, UpdateHooks};
use crate::gather::Gather;
use crate::mem::TableMemory;
use crate::pte::Attrs;
use crate::request::{validate_map, validate_range, Cursor};
use crate::reserve::{Reserve, Shortfall};
use crate::table::PageTable;
use crate::walk::{map_walk, range_walk, Exec, Plan, RangeOp};

/// The run stage of one job over one [`PageTable`]: any number of map, unmap and protect
/// operations drawing from one reserve into one [`Flush`].
///
/// Made by [`PageTable::update`]. Every operation allocates nothing, frees nothing, and is all
/// or nothing: it plans first (validation, conflicts, the frames it needs against the current
/// state) and writes only if the plan is clean and the reserve holds what it counted; a rejected
/// operation leaves the tables, the reserve and the pending flush exactly as they were, and the
/// context stays usable. With a reserve filled from the per-op bounds ([`map_bound`],
/// [`unmap_bound`], or [`job_bound`] for the whole job) no valid operation is ever rejected for
/// want of frames, whatever earlier jobs did to the tables.
///
/// Dropping the context without [`UpdateContext::finish`] leaks the frames retired so far (they
/// are never reused, which is safe) and skips the invalidation the changes need.
///
/// [`map_bound`]: crate::map_bound
/// [`unmap_bound`]: crate::unmap_bound
/// [`job_bound`]: crate::job_bound
#[must_use = "an update ends with finish(), whose Flush must be invalidated"]
#[derive(Debug)]
pub struct UpdateContext<'a, M: ?Sized, H> {
    pt: &'a mut PageTable,
    mem: &'a mut M,
    reserve: &'a mut Reserve,
    hooks: H,
    gather: Gather,
}

impl<'a, M: TableMemory + ?Sized, H: UpdateHooks> UpdateContext<'a, M, H> {
    pub(crate) fn new(
        pt: &'a mut PageTable,
        mem: &'a mut M,
        reserve: &'a mut Reserve,
        hooks: H,
    ) -> Self {
        Self {
            pt,
            mem,
            reserve,
            hooks,
            gather: Gather::new(),
        }
    }

    fn exec<E>(&mut self, attrs: Attrs, planned: u64) -> Exec<'_, M, H, E> {
        Exec {
            fmt: &self.pt.fmt,
            available: u64_from(self.reserve.len()),
            mem: &mut *self.mem,
            reserve: &mut *self.reserve,
            gather: &mut self.gather,
            hooks: &mut self.hooks,
            attrs,
            planned,
            _error: PhantomData,
        }
    }

    fn ensure<E: crate::error::ExecError>(&self, need: u64) -> Result<(), E> {
        self.reserve
            .ensure(&*self.mem, need, self.pt.fmt.oa_limit())
            .map_err(|f| match f {
                Shortfall::Short { needed, available } => E::exhausted(needed, available),
                Shortfall::BadTable(pa) => E::bad_table(pa),
            })
    }

    /// Maps `[va, va + len)` to `backing` (`len` is the backing's total length) with `attrs`;
    /// see [`PageTable::map`].
    ///
    /// # Errors
    ///
    /// See [`MapError`]; nothing has changed.
    pub fn map(&mut self, va: VirtAddr, backing: &[Chunk], attrs: Attrs) -> Result<(), MapError> {
        let fmt = self.pt.fmt;
        let len = validate_map(&fmt, va, backing)?;
        let (s, e) = (va.as_u64(), va.as_u64() + len);
        let root = self.pt.root;
        let mut plan = Plan::<M, MapError>::new(&fmt, &*self.mem);
        let node = plan.node(root)?;
        map_walk(
            &mut plan,
            node,
            fmt.start_level(),
            s..e,
            &mut Cursor::new(backing),
        )?;
        let need = plan.need;
        self.ensure::<MapError>(need)?;
        let res = map_walk(
            &mut self.exec::<MapError>(attrs, need),
            root,
            fmt.start_level(),
            s..e,
            &mut Cursor::new(backing),
        );
        debug_assert!(res.is_ok(), "map exec failed after a clean plan: {res:?}");
        res?;
        self.gather.touch(s, e);
        Ok(())
    }

    fn range(&mut self, va: VirtAddr, len: u64, op: RangeOp) -> Result<(), RangeError> {
        let fmt = self.pt.fmt;
        validate_range(&fmt, va, len)?;
        let (s, e) = (va.as_u64(), va.as_u64() + len);
        let root = self.pt.root;
        let mut plan = Plan::<M, RangeError>::new(&fmt, &*self.mem);
        let node = plan.node(root)?;
        range_walk(&mut plan, node, fmt.start_level(), s..e, op)?;
        let need = plan.need;
        self.ensure::<RangeError>(need)?;
        let res = range_walk(
            &mut self.exec::<RangeError>(Attrs::default(), need),
            root,
            fmt.start_level(),
            s..e,
            op,
        );
        debug_assert!(res.is_ok(), "range exec failed after a clean plan: {res:?}");
        res
    }

    /// Unmaps `[va, va + len)`; see [`PageTable::unmap`].
    ///
    /// # Errors
    ///
    /// See [`RangeError`]; nothing has changed.
    pub fn unmap(&mut self, va: VirtAddr, len: u64) -> Result<(), RangeError> {
        self.range(va, len, RangeOp::Unmap)
    }

    /// Replaces the attributes of every leaf in `[va, va + len)`; see [`PageTable::protect`].
    ///
    /// # Errors
    ///
    /// See [`RangeError`]; nothing has changed.
    pub fn protect(&mut self, va: VirtAddr, len: u64, attrs: Attrs) -> Result<(), RangeError> {
        self.range(va, len, RangeOp::Protect(attrs))
    }

    /// Frames left in the reserve.
    #[must_use]
    pub fn reserve_len(&self) -> usize {
        self.reserve.len()
    }

    /// The hooks, e.g. to read what a recording hook collected.
    pub fn hooks(&mut self) -> &mut H {
        &mut self.hooks
    }

    /// Ends the update: the invalidation it owes and the frames it retired.
    pub fn finish(self) -> Flush {
        Flush::new(self.gather)
    }
}
