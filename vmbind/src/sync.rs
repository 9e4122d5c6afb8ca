//! Sync objects as the pipeline sees them: the traits a driver implements over its dma-fences
//! and drm_syncobjs (core only), and the errors of resolving a job's syncs.
//!
//! A job names its in- and out-syncs by handle ([`SyncDesc`]). The submit path
//! ([`queue::Submit`](crate::queue::Submit), feature `alloc`) turns them into objects in two
//! fallible steps and one infallible one:
//!
//! 1. **resolve** (prepare, may allocate, may fail): every handle is looked up
//!    ([`SyncTable::lookup`]); every in-sync becomes a [`Point`] of its syncobj
//!    ([`Syncobj::find`]): a fence, "already signalled", or "not submitted yet" (an error unless
//!    the in-sync asks for [`SyncFlags::wait_for_submit`], in which case the queue looks again
//!    each time it polls); the job's out-fence is created ([`SyncTable::new_fence`]) and every
//!    timeline out-sync gets its chain node preallocated ([`SyncTable::alloc_chain`]).
//! 2. **publish** (after nothing can fail): every out-sync's syncobj gets the job's out-fence at
//!    its point ([`Syncobj::publish`], which consumes the chain node and cannot fail).
//! 3. **signal** (the run stage, or the failure of a job): the out-fence is signalled once,
//!    with the job's error if it failed ([`JobFence::signal`]).
//!
//! A failure in step 1 drops what step 1 made (references, chain nodes, the fence) and
//! publishes nothing: no syncobj changes.
//!
//! [`SyncDesc`]: crate::SyncDesc
//! [`SyncFlags::wait_for_submit`]: crate::SyncFlags::wait_for_submit

use core::fmt;

use crate::JobError;

/// The completion a job signals at the end of its run stage (the scheduler's finished fence).
///
/// `signal` runs inside the signalling section: it must not allocate, block or drop anything
/// that frees (dropping the fence itself happens in cleanup).
pub trait JobFence {
    /// Signals completion, with the job's error if it failed.
    fn signal(&mut self, result: Result<(), JobError>);
}

impl JobFence for () {
    fn signal(&mut self, _result: Result<(), JobError>) {}
}

/// A fence a job can wait on (a `dma_fence` reference).
///
/// `status` is called by the bind queue's worker: it must not allocate or block
/// (`dma_fence_get_status`).
pub trait Fence: Clone {
    /// `None` while pending; `Some(Ok(()))` once signalled; `Some(Err(errno))` once signalled
    /// with an error (a negative errno-style code, as `dma_fence_get_status` reports it).
    fn status(&self) -> Option<Result<(), i32>>;
}

/// What a syncobj holds at a point (`drm_syncobj_find_fence` without waiting).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Point<F> {
    /// The fence that completes the point.
    Fence(F),
    /// The point is known complete and no fence is kept for it any more (the stub fence).
    Signalled,
    /// No fence has been submitted for the point yet (a binary syncobj without a fence, a
    /// timeline whose last point is lower).
    NotSubmitted,
}

/// A counted reference to one syncobj (a `drm_syncobj` reference).
///
/// Neither method may allocate, block or fail: `find` is called by the queue worker to
/// materialise a wait-for-submit point, and `publish` at the point of no return.
pub trait Syncobj {
    /// The fence type stored in it.
    type Fence: Fence;
    /// A preallocated timeline chain node (`dma_fence_chain`).
    type Chain;

    /// Whether it is a timeline syncobj (else binary).
    fn is_timeline(&self) -> bool;

    /// The fence that completes `point` (a timeline: the earliest chain node at or after it,
    /// which signals once every point up to it has; point 0, or a binary syncobj: the current
    /// fence).
    fn find(&self, point: u64) -> Point<Self::Fence>;

    /// Makes `fence` the syncobj's fence at `point`: a binary syncobj (`chain` is `None`)
    /// replaces its fence; a timeline adds the point, linking `chain` (preallocated by
    /// [`SyncTable::alloc_chain`]) in front of its current chain.
    fn publish(&self, point: u64, chain: Option<Self::Chain>, fence: &Self::Fence);
}

/// The driver's syncobj table for one file, and its fence and chain allocation (prepare only:
/// every method may allocate and fail).
pub trait SyncTable {
    /// The fence type: a job's out-fence, and what in-syncs resolve to.
    type Fence: Fence + JobFence;
    /// A syncobj reference.
    type Syncobj: Syncobj<Fence = Self::Fence>;

    /// Looks `handle` up (`drm_syncobj_find`) and returns a new reference.
    ///
    /// # Errors
    ///
    /// [`SyncError::NoSuchHandle`] (or [`SyncError::NoMemory`]).
    fn lookup(&mut self, handle: u32) -> Result<Self::Syncobj, SyncError>;

    /// A new, unsignalled fence for a job's completion (the scheduler's finished fence).
    ///
    /// # Errors
    ///
    /// [`SyncError::NoMemory`].
    fn new_fence(&mut self) -> Result<Self::Fence, SyncError>;

    /// A chain node for one timeline out-sync (`dma_fence_chain_alloc`).
    ///
    /// # Errors
    ///
    /// [`SyncError::NoMemory`].
    fn alloc_chain(&mut self) -> Result<<Self::Syncobj as Syncobj>::Chain, SyncError>;
}

/// Why a job's syncs could not be resolved. Nothing was published.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SyncError {
    /// No syncobj has this handle (`-ENOENT`).
    NoSuchHandle,
    /// The descriptor's kind does not match the syncobj (a binary descriptor on a timeline or
    /// the reverse), or a binary descriptor names a non-zero point (`-EINVAL`).
    Kind,
    /// An in-sync names a point that has not been submitted, without
    /// [`SyncFlags::wait_for_submit`](crate::SyncFlags::wait_for_submit) (`-EINVAL`).
    NotSubmitted,
    /// A fence, a chain node or job storage could not be allocated (`-ENOMEM`).
    NoMemory,
}

impl SyncError {
    /// The negative errno a driver returns for it.
    #[must_use]
    pub const fn errno(self) -> i32 {
        match self {
            Self::NoSuchHandle => -2,
            Self::Kind | Self::NotSubmitted => -22,
            Self::NoMemory => -12,
        }
    }
}

impl fmt::Display for SyncError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoSuchHandle => "no syncobj with this handle",
            Self::Kind => "sync kind or point does not match the syncobj",
            Self::NotSubmitted => "waiting on a point that was not submitted",
            Self::NoMemory => "out of memory for syncs",
        })
    }
}

impl core::error::Error for SyncError {}
