//! VM_BIND jobs for a Mali CSF-class driver: prepare, run, cleanup.
//!
//! This crate ties [`gpuva`] (the VA tracker) and [`pagetable`] (the GPU page tables) together
//! into bind jobs whose middle stage runs inside the dma-fence signalling path: it allocates
//! nothing, frees nothing and cannot fail on a job that passed prepare.
//!
//! # The job lifecycle
//!
//! ```text
//!  ioctl (process context)            worker (signalling section)        cleanup (process context)
//!  ------------------------            ---------------------------        -------------------------
//!  BindJob { ops, syncs, mode }
//!     |
//!  Vm::prepare ----------------------> PreparedJob
//!   validate every op                     |  (queued: in-fences, ordering)
//!   look objects up (references)          |
//!   reserve the worst case:               v
//!     gpuva nodes + links (pinned)     Vm::run --------------------------> DoneJob
//!     page-table frames (job bound)     begin_signalling                     |
//!   any failure: nothing changed        per op: tables + VA tree, one walk   v
//!     |                                 one TLB invalidation             Vm::cleanup / Vm::defer
//!  PreparedJob::arm(out-fence)          signal the out-fence               free retired tables
//!   (publish: nothing can fail now)     end_signalling                     return unused frames/nodes
//!                                                                         put pins, drain links
//!                                      Vm::abort (timeout, in-fence        drop references, fence
//!                                       error): VM unchanged, fence
//!                                       signalled with the error
//! ```
//!
//! * **prepare** validates every op (alignment to the VM page size, overflow, VA-space bounds,
//!   the kernel cut-out, object bounds through an [`ObjectRegistry`]) and reserves the whole
//!   job's worst case: gpuva nodes as the sum of [`gpuva::GpuVm::nodes_for`] over the ops plus
//!   one link per distinct object (pinned), and page-table frames as [`pagetable::job_bound`]
//!   over the job's table operations (each map a [`pagetable::JobOp::Replace`]). The bounds are pure functions of the ops and the VM
//!   geometry, never of the tree or tables, so a queued job is covered whatever runs before
//!   it. If anything fails, nothing anywhere changed.
//! * **run** applies every op through the gpuva step visitor: each step writes the page tables
//!   first (clear the hole of a split or removed mapping, write the new mapping), then updates
//!   the tree (immediate mode). All table writes of a job share one update context, so the job
//!   owes exactly one TLB invalidation, done before the out-fence is signalled.
//! * **cleanup** frees what the run retired, only after that invalidation completed.
//!
//! [`queue`] adds FIFO bind queues driven by `poll` (in-fences, wait-for-submit points,
//! errors, timeouts), [`queue::Submit`] (one ioctl's batch: sync resolution, in-batch points,
//! publication after nothing can fail), [`queue::run_sync`] and the two orderings of
//! synchronous binds, `Fifo` and `RangeOrdered`, with the contract difference drawn on a
//! timeline. [`sync`] holds the traits a driver implements over its dma-fences and syncobjs;
//! [`swsync`] a software implementation (binary and timeline syncobjs). `docs/vmbind.md` in the
//! repository walks through all of it.
//!
//! # Changes since the first cut (for users of branch `vmbind-v1`)
//!
//! * `JobFence` moved to [`sync`] (still re-exported at the crate root, now also without
//!   `alloc`). New: [`Fence`], [`Syncobj`], [`SyncTable`], [`Point`], [`SyncError`],
//!   [`JobError::errno`], [`SyncFlags`].
//! * [`SyncDesc`] has a new public field `flags` ([`SyncFlags`]); struct literals need it (or
//!   `..Default::default()`); the constructors are unchanged, plus
//!   [`SyncDesc::wait_for_submit`].
//! * `queue::SwFence` now lives in [`swsync`] (re-exported from `queue`); it gained timeline
//!   chain semantics, `try_new` and `ptr_eq`. New: `SwSyncobj`, `SwChain`, `SwSyncs`.
//! * [`queue::BindQueue`] takes a second type parameter, the syncobj type (default
//!   `SwSyncobj`, whose fence is `SwFence`): `BindQueue::new` still builds the software one;
//!   `BindQueue::with_timeout` any other. `submit` is unchanged. New: `blocks`, `timeout`,
//!   `cleanup` (drops the waits of finished jobs; also done by every submit), `cancel_all`.
//! * New: [`queue::Submit`], [`queue::SubmitError`], [`queue::run_sync`].
//! * Prepare finds distinct objects by sorting, so objects are looked up in ascending id order
//!   (errors still name the first op that failed).
//!
//! # Changes since `vmbind-v2`
//!
//! * The page-table reservation counts each map op as one [`pagetable::JobOp::Replace`]
//!   (clear, then map) instead of an unmap and a map; [`pagetable::job_bound`] lets the maps of
//!   a job share their tables (and its clears their block splits) unless a clear overlaps an
//!   earlier map of the job. A job of sixteen scattered one-page binds in one 2 MiB window now
//!   reserves 4 frames, not 64. [`PreparedJob::frames`] is smaller accordingly.
//! * The VM keeps the zeroed frames left unused by cleaned-up jobs and hands them to later
//!   reservations ([`Vm::spare_frames`]), and keeps gpuva spare nodes up to the largest
//!   single-job claim of the last 64 to 128 jobs (at least [`VmConfig::spare_nodes`]). So
//!   [`Vm::memory`]'s frames in use are the tables plus [`Vm::spare_frames`] (they go back to
//!   the allocator when the VM is dropped).
//! * New: [`DoneJob::summary`] and [`JobSummary`] (frames and nodes reserved, used, returned,
//!   retired), [`queue::BindQueue::poll_with`] (a summary per finished job),
//!   [`Vm::set_evicted`] (the link's evicted state, for a shrinker).
//! * A run stage that fails (a broken table memory, or a reservation made short with the
//!   doc-hidden test switch `Vm::set_reservation_shortfall`) no longer trips a debug assertion:
//!   it stops at the failing op, the job and its out-fence carry [`JobError::Fault`], and the
//!   VM becomes unusable (maps refused with [`PrepareError::Unusable`], unmaps still run), in
//!   debug and release builds alike.
//!
//! # Changes since `vmbind-v3`
//!
//! * A job's steps, backing, object references and link pins vectors are taken from the VM at
//!   prepare and given back, emptied, at cleanup (up to 64 elements each): a stream of small
//!   jobs no longer allocates them. No API change.
//! * [`PreparedJob`] and [`DoneJob`] are tickets into a slot table of the VM that holds each
//!   job's state (same names and methods). A ticket dropped without run, abort or cleanup, or
//!   a dropped [`queue::BindQueue`] with queued jobs, no longer loses memory: the VM's drop
//!   releases the job, and the new [`Vm::reclaim_outstanding`] releases every job between
//!   prepare and cleanup (for a teardown). A stale ticket (its job reclaimed) is handed back
//!   by [`Vm::run`], [`Vm::abort`] and [`Vm::cleanup`], like another VM's; [`Vm::defer`] drops
//!   it (it no longer trips a debug assertion for another VM's ticket).
//! * [`swsync`] states that its `try_new`s are fallible in practice, not by guarantee (they
//!   probe the allocator, then call `Rc::new`), and that a kernel driver implements the
//!   [`sync`] traits over its own fallibly allocated fences.
//!
//! # Examples
//!
//! ```
//! # #[cfg(feature = "alloc")] fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use pagetable::{Chunk, Format, PhysAddr, VecPool};
//! use vmbind::{BindJob, BindOp, MapFlags, Mmu, ObjRef, ObjectRegistry, Vm, VmConfig};
//! use gpuva::ObjId;
//!
//! /// An object: one physically contiguous chunk.
//! #[derive(Clone)]
//! struct Bo([Chunk; 1]);
//! impl ObjRef for Bo {
//!     fn size(&self) -> u64 { self.0[0].len }
//!     fn backing(&self) -> &[Chunk] { &self.0 }
//! }
//! struct Handles;
//! impl ObjectRegistry for Handles {
//!     type Ref = Bo;
//!     type Error = &'static str;
//!     fn get(&mut self, obj: ObjId) -> Result<Bo, &'static str> {
//!         Ok(Bo([Chunk::new(PhysAddr::new(obj.get() << 32), 0x10_0000)]))
//!     }
//! }
//! /// An MMU whose invalidations complete at once.
//! struct NoAs;
//! impl pagetable::TlbInvalidate for NoAs {
//!     type Error = ();
//!     fn invalidate(&mut self, _: core::ops::Range<u64>, _: bool) -> Result<(), ()> { Ok(()) }
//! }
//! impl pagetable::UpdateHooks for NoAs {
//!     fn break_before_make(&mut self, _: core::ops::Range<u64>) {}
//! }
//! impl Mmu for NoAs {}
//!
//! let fmt = Format::panthor(48)?;
//! let pool = VecPool::new(fmt.granule(), PhysAddr::new(0x1_0000_0000))?;
//! let mut vm: Vm<Bo, VecPool, NoAs> = Vm::new(VmConfig::new(fmt, 0x1000..1 << 47), pool, NoAs)?;
//! let bo = ObjId::new(3).ok_or("zero id")?;
//! let ops = [
//!     BindOp::Map { va: 0x20_0000, len: 0x4000, obj: bo, offset: 0, flags: MapFlags::default() },
//!     BindOp::Unmap { va: 0x20_1000, len: 0x1000 },
//! ];
//! let job = vm.prepare(&mut Handles, &BindJob::new(&ops))?;   // ioctl
//! let done = vm.run(job).map_err(|_| "foreign job")?;          // worker, signalling section
//! assert_eq!(done.result(), Ok(()));
//! vm.cleanup(done).map_err(|_| "tlb")?;                        // cleanup worker
//!
//! let t = vm.page_table().translate(vm.memory(), pagetable::VirtAddr::new(0x20_2000))?;
//! assert_eq!(t.map(|t| t.pa.as_u64()), Some((3 << 32) + 0x2000));
//! assert_eq!(vm.va_space().len(), 2);
//! # Ok(()) }
//! # #[cfg(not(feature = "alloc"))] fn main() {}
//! ```
//!
//! A driver's ioctl and worker over the software syncobjs: a batch of two jobs, the second
//! waiting on a timeline point the first signals.
//!
//! ```
//! # #[cfg(feature = "alloc")] fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # use pagetable::{Chunk, Format, PhysAddr, VecPool};
//! # use vmbind::{BindJob, BindOp, MapFlags, Mmu, ObjRef, ObjectRegistry, Vm, VmConfig};
//! # use gpuva::ObjId;
//! # #[derive(Clone)] struct Bo([Chunk; 1]);
//! # impl ObjRef for Bo { fn size(&self) -> u64 { self.0[0].len } fn backing(&self) -> &[Chunk] { &self.0 } }
//! # struct Handles;
//! # impl ObjectRegistry for Handles { type Ref = Bo; type Error = &'static str;
//! #   fn get(&mut self, obj: ObjId) -> Result<Bo, &'static str> { Ok(Bo([Chunk::new(PhysAddr::new(obj.get() << 32), 0x10_0000)])) } }
//! # struct NoAs;
//! # impl pagetable::TlbInvalidate for NoAs { type Error = (); fn invalidate(&mut self, _: core::ops::Range<u64>, _: bool) -> Result<(), ()> { Ok(()) } }
//! # impl pagetable::UpdateHooks for NoAs { fn break_before_make(&mut self, _: core::ops::Range<u64>) {} }
//! # impl Mmu for NoAs {}
//! use vmbind::queue::{BindQueue, Submit, SwFence, SwSyncs};
//! use vmbind::{JobFence, Mode, SyncDesc};
//!
//! let fmt = Format::panthor(48)?;
//! let pool = VecPool::new(fmt.granule(), PhysAddr::new(0x1_0000_0000))?;
//! let mut vm: Vm<Bo, VecPool, NoAs, SwFence> =
//!     Vm::new(VmConfig::new(fmt, 0x1000..1 << 47), pool, NoAs)?;
//! let mut syncs = SwSyncs::new();
//! let timeline = syncs.create(true)?;
//! let mut queue = BindQueue::new(1_000); // timeout, in the caller's time units
//! let bo = ObjId::new(3).ok_or("zero id")?;
//!
//! // ioctl: both jobs are prepared (everything fallible) before anything is published.
//! let map = [BindOp::Map { va: 0x20_0000, len: 0x4000, obj: bo, offset: 0, flags: MapFlags::default() }];
//! let unmap = [BindOp::Unmap { va: 0x20_0000, len: 0x1000 }];
//! let (p1, p2) = ([SyncDesc::timeline(timeline, 1)], [SyncDesc::timeline(timeline, 2)]);
//! let mut batch = Submit::new(&mut vm, &mut syncs);
//! let first = batch.add(&mut Handles, &BindJob { ops: &map, in_syncs: &[], out_syncs: &p1, mode: Mode::Async })?;
//! let second = batch.add(&mut Handles, &BindJob { ops: &unmap, in_syncs: &p1, out_syncs: &p2, mode: Mode::Async })?;
//! batch.push(&mut queue, 0)?; // publishes points 1 and 2, queues both jobs
//!
//! // Worker (fence-signalling path): runs what is ready; allocates nothing.
//! assert_eq!(queue.poll(&mut vm, 1).ran, 2);
//! assert_eq!((first.status(), second.status()), (Some(Ok(())), Some(Ok(()))));
//!
//! // Cleanup worker (process context).
//! vm.cleanup_deferred();
//! queue.cleanup();
//! assert_eq!(vm.va_space().len(), 1);
//! # Ok(()) }
//! # #[cfg(not(feature = "alloc"))] fn main() {}
//! ```
//!
//! # Features
//!
//! `alloc` (default) enables the pipeline ([`Vm`] and its jobs hold their ops, backing slices
//! and references in fallibly grown vectors). Without it the crate offers the job descriptions
//! and the traits a driver implements, over `core` alone.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;

use core::fmt;

#[cfg(feature = "alloc")]
mod grow;
mod job;
mod obj;
#[cfg(feature = "alloc")]
pub mod queue;
#[cfg(feature = "alloc")]
pub mod swsync;
pub mod sync;
#[cfg(feature = "alloc")]
mod vm;

pub use gpuva;
pub use pagetable;

pub use job::{BindJob, BindOp, MapFlags, Mode, OpError, SyncDesc, SyncFlags, SyncKind};
pub use obj::{ObjRef, ObjectRegistry};
pub use sync::{Fence, JobFence, Point, SyncError, SyncTable, Syncobj};
#[cfg(feature = "alloc")]
pub use vm::{
    DoneJob, JobSummary, Mmu, NewError, PrepareError, PreparedJob, VaSpace, Vm, VmConfig,
};

/// Why a job failed after prepare; carried by its out-fence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JobError {
    /// A run-stage step failed (impossible on prepared input; the VM is now unusable).
    Fault,
    /// The TLB invalidation did not complete.
    Tlb,
    /// An in-fence did not signal before the job's timeout.
    Timeout,
    /// An in-fence signalled with an error (the driver's errno-like code).
    InFence(i32),
    /// The job was cancelled (its queue or VM was torn down).
    Canceled,
}

impl JobError {
    /// The negative errno-style code its out-fence carries (`-EIO` for a run-stage fault or a
    /// failed invalidation, `-ETIMEDOUT`, the in-fence's own code, `-ECANCELED`).
    #[must_use]
    pub const fn errno(self) -> i32 {
        match self {
            Self::Fault | Self::Tlb => -5,
            Self::Timeout => -110,
            Self::InFence(e) => e,
            Self::Canceled => -125,
        }
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fault => f.write_str("run-stage fault"),
            Self::Tlb => f.write_str("TLB invalidation failed"),
            Self::Timeout => f.write_str("in-fence timed out"),
            Self::InFence(e) => write!(f, "in-fence failed with {e}"),
            Self::Canceled => f.write_str("job cancelled"),
        }
    }
}

impl core::error::Error for JobError {}
