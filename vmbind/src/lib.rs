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
//!   over the job's table operations. The bounds are pure functions of the ops and the VM
//!   geometry, never of the tree or tables, so a queued job is covered whatever runs before
//!   it. If anything fails, nothing anywhere changed.
//! * **run** applies every op through the gpuva step visitor: each step writes the page tables
//!   first (clear the hole of a split or removed mapping, write the new mapping), then updates
//!   the tree (immediate mode). All table writes of a job share one update context, so the job
//!   owes exactly one TLB invalidation, done before the out-fence is signalled.
//! * **cleanup** frees what the run retired, only after that invalidation completed.
//!
//! [`queue`] adds software fences, FIFO bind queues driven by `poll` (in-fences, errors,
//! timeouts) and the two orderings of synchronous binds, `Fifo` and `RangeOrdered`, with the
//! contract difference drawn on a timeline.
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
pub use vm::{DoneJob, Mmu, NewError, PrepareError, PreparedJob, VaSpace, Vm, VmConfig};

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
