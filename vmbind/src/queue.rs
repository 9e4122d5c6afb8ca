//! Bind queues, submit batches and the ordering of synchronous binds (feature `alloc`).
//!
//! A [`Submit`] is one ioctl's batch: it prepares jobs and resolves their syncs fallibly, then
//! publishes and queues them all once nothing can fail. A [`BindQueue`] holds prepared jobs in
//! submission order. [`BindQueue::poll`], driven by a
//! kernel worker or a simulator, runs the head job once every in-fence has signalled, fails it
//! (VM unchanged, out-fence signalled with the error) when an in-fence signalled an error or its
//! deadline passed, and stops at the first job that must keep waiting: FIFO per queue. Several
//! queues may serve one VM; they are ordered against each other only through fences.
//!
//! # Synchronous binds
//!
//! A synchronous bind runs in the submitting thread ([`run_sync`], which polls the queues and
//! blocks in a caller-supplied wait). [`sync_may_run`] says whether it may run now, under the
//! VM's [`Policy`]:
//!
//! ```text
//!   time ->
//!   queue:  A [0x1000..0x2000] waits on fence f (user space signals it late) ........ runs
//!   sync S [0x9000..0xA000], disjoint from A:
//!     Fifo:          S ............................................ waits for A ... runs
//!     RangeOrdered:  S runs at once
//!   sync T [0x1800..0x1900], overlapping A:
//!     both:          T ............................................ waits for A ... runs
//! ```
//!
//! * **Fifo** (nouveau's contract): a synchronous bind waits until every earlier queued job on
//!   the VM has run or failed, related or not; it observes every earlier bind's effect.
//! * **RangeOrdered**: it waits only for earlier queued jobs whose span
//!   ([`PreparedJob::span`]: the ops' ranges widened to the largest page-table leaf at unaligned
//!   ends) overlaps its own, and runs at once otherwise. It observes the effect of every earlier
//!   bind *on its own range*; elsewhere, earlier queued binds may land after it. Sound because
//!   reservations are worst cases independent of the state and the run stage is immediate: binds
//!   on disjoint spans commute (same final VA tree, same translations).

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

use crate::job::{BindJob, Mode, SyncDesc, SyncKind};
use crate::obj::{ObjRef, ObjectRegistry};
use crate::sync::{Fence, JobFence, Point, SyncError, SyncTable, Syncobj};
use crate::vm::{JobSummary, Mmu, PrepareError, PreparedJob, Vm};
use crate::JobError;
use pagetable::FrameAlloc;

pub use crate::swsync::{SwChain, SwFence, SwSyncobj, SwSyncs};

/// How synchronous binds are ordered against queued ones; see the module docs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Wait for every earlier queued job.
    #[default]
    Fifo,
    /// Wait only for earlier queued jobs whose spans overlap.
    RangeOrdered,
}

/// One resolved in-sync of a queued job.
#[derive(Debug)]
enum Wait<O: Syncobj> {
    /// Wait for this fence.
    Fence(O::Fence),
    /// Wait-for-submit: look the point up again at each poll until a fence is there.
    Future {
        /// The syncobj.
        obj: O,
        /// The point.
        point: u64,
    },
    /// Nothing left to wait for.
    Done,
}

/// What one wait says now.
enum Verdict {
    Pending,
    Ready,
    Failed(i32),
}

impl<O: Syncobj> Wait<O> {
    /// Materialises a future point if it has appeared; then looks at the fence. No allocation.
    fn check(&mut self) -> Verdict {
        if let Self::Future { obj, point } = self {
            match obj.find(*point) {
                Point::Fence(f) => *self = Self::Fence(f),
                Point::Signalled => *self = Self::Done,
                Point::NotSubmitted => return Verdict::Pending,
            }
        }
        match self {
            Self::Fence(f) => fence_verdict(f),
            Self::Future { .. } => Verdict::Pending,
            Self::Done => Verdict::Ready,
        }
    }
}

fn fence_verdict<F: Fence>(f: &F) -> Verdict {
    match f.status() {
        None => Verdict::Pending,
        Some(Ok(())) => Verdict::Ready,
        Some(Err(e)) => Verdict::Failed(e),
    }
}

struct Queued<R, O: Syncobj> {
    job: PreparedJob<R, O::Fence>,
    /// Fences handed to [`BindQueue::submit`].
    fences: Vec<O::Fence>,
    /// In-syncs resolved by [`Submit`].
    waits: Vec<Wait<O>>,
    deadline: u64,
}

impl<R, O: Syncobj> Queued<R, O> {
    /// `None` while it must wait; else whether it may run or must fail. No allocation.
    fn verdict(&mut self, now: u64) -> Option<Result<(), JobError>> {
        let mut ready = true;
        for v in self
            .fences
            .iter()
            .map(fence_verdict)
            .chain(self.waits.iter_mut().map(Wait::check))
        {
            match v {
                Verdict::Failed(e) => return Some(Err(JobError::InFence(e))),
                Verdict::Pending => ready = false,
                Verdict::Ready => {}
            }
        }
        if ready {
            Some(Ok(()))
        } else if now >= self.deadline {
            Some(Err(JobError::Timeout))
        } else {
            None
        }
    }
}

/// A job and its waits, handed back by [`BindQueue::submit`].
pub type Refused<R, O> = (
    PreparedJob<R, <O as Syncobj>::Fence>,
    Vec<<O as Syncobj>::Fence>,
);

/// A FIFO of prepared jobs waiting for their in-fences.
///
/// `O` is the driver's syncobj type ([`Syncobj`]); the jobs' out-fences are its fences. The
/// default is the software implementation ([`SwSyncobj`], whose fence is [`SwFence`]).
pub struct BindQueue<R, O: Syncobj = SwSyncobj> {
    jobs: VecDeque<Queued<R, O>>,
    /// Waits of jobs that left the queue, dropped on the next submit or [`BindQueue::cleanup`]
    /// (dropping a fence may free it: not in the worker). Capacity covers every queued job.
    retired: Vec<Retired<O>>,
    timeout: u64,
}

type Retired<O> = (Vec<<O as Syncobj>::Fence>, Vec<Wait<O>>);

impl<R, O: Syncobj> fmt::Debug for BindQueue<R, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BindQueue")
            .field("queued", &self.jobs.len())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What one [`BindQueue::poll`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Jobs run.
    pub ran: usize,
    /// Jobs failed without running (in-fence error or timeout).
    pub failed: usize,
}

impl<R: ObjRef> BindQueue<R> {
    /// An empty queue of software-fenced jobs ([`SwSyncobj`], [`SwFence`]) whose jobs fail
    /// with [`JobError::Timeout`] `timeout` time units after submission if their in-fences
    /// have not all signalled (a wait-for-submit point that never materialises counts as
    /// unsignalled). For the driver's own syncobj type use [`BindQueue::with_timeout`].
    #[must_use]
    pub fn new(timeout: u64) -> Self {
        Self::with_timeout(timeout)
    }
}

impl<R: ObjRef, O: Syncobj> BindQueue<R, O>
where
    O::Fence: JobFence,
{
    /// An empty queue over syncobj type `O`; see [`BindQueue::new`].
    #[must_use]
    pub fn with_timeout(timeout: u64) -> Self {
        Self {
            jobs: VecDeque::new(),
            retired: Vec::new(),
            timeout,
        }
    }

    /// Queued jobs.
    #[must_use]
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether nothing is queued.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// The timeout given to [`BindQueue::new`].
    #[must_use]
    pub fn timeout(&self) -> u64 {
        self.timeout
    }

    /// Queues `job` (already armed with its out-fence) behind the others, to run once every
    /// fence of `waits` has signalled, at the latest by `now + timeout`.
    ///
    /// This is the low-level entry: the caller resolved the in-syncs and publishes the
    /// out-fence itself. [`Submit`] does both from the job's [`SyncDesc`]s.
    ///
    /// # Errors
    ///
    /// The job and its waits, handed back, if the queue could not grow.
    pub fn submit(
        &mut self,
        job: PreparedJob<R, O::Fence>,
        waits: Vec<O::Fence>,
        now: u64,
    ) -> Result<(), Refused<R, O>> {
        self.cleanup();
        if self.jobs.try_reserve(1).is_err()
            || self.retired.try_reserve(self.jobs.len() + 1).is_err()
        {
            return Err((job, waits));
        }
        self.jobs.push_back(Queued {
            job,
            fences: waits,
            waits: Vec::new(),
            deadline: now.saturating_add(self.timeout),
        });
        Ok(())
    }

    /// The spans of the queued jobs, in order.
    pub fn spans(&self) -> impl Iterator<Item = Option<Range<u64>>> + '_ {
        self.jobs.iter().map(|q| q.job.span())
    }

    /// Whether a synchronous bind of `span` must wait for this queue under `policy`.
    #[must_use]
    pub fn blocks(&self, policy: Policy, span: Option<&Range<u64>>) -> bool {
        match (policy, span) {
            (Policy::Fifo, _) | (Policy::RangeOrdered, None) => !self.is_empty(),
            (Policy::RangeOrdered, Some(s)) => self
                .spans()
                .any(|o| o.is_none_or(|o| o.start < s.end && s.start < o.end)),
        }
    }

    /// Runs or fails jobs from the head while they are ready; the finished jobs go to the
    /// VM's deferred cleanup. Allocates nothing (a worker in the signalling path may call it).
    pub fn poll<M: FrameAlloc, U: Mmu>(
        &mut self,
        vm: &mut Vm<R, M, U, O::Fence>,
        now: u64,
    ) -> Progress {
        self.poll_with(vm, now, |_| {})
    }

    /// [`BindQueue::poll`], calling `each` with the [`JobSummary`] of every job it finished
    /// (run or failed), in order: what the job reserved, used and gives back. Allocates
    /// nothing itself.
    pub fn poll_with<M: FrameAlloc, U: Mmu>(
        &mut self,
        vm: &mut Vm<R, M, U, O::Fence>,
        now: u64,
        mut each: impl FnMut(&JobSummary),
    ) -> Progress {
        let mut p = Progress::default();
        while let Some(head) = self.jobs.front_mut() {
            let Some(verdict) = head.verdict(now) else {
                break;
            };
            let Some(q) = self.jobs.pop_front() else {
                break;
            };
            let Queued {
                job,
                fences,
                waits,
                deadline,
            } = q;
            let done = match verdict {
                Ok(()) => vm.run(job),
                Err(e) => vm.abort(job, e),
            };
            match done {
                Ok(d) => {
                    if verdict.is_ok() {
                        p.ran += 1;
                    } else {
                        p.failed += 1;
                    }
                    each(&d.summary());
                    vm.defer(d);
                    self.retire(fences, waits);
                }
                Err(job) => {
                    // Another VM's job: it cannot make progress here; put it back and stop.
                    // (The slot just popped is free: no allocation.)
                    self.jobs.push_front(Queued {
                        job,
                        fences,
                        waits,
                        deadline,
                    });
                    break;
                }
            }
        }
        p
    }

    /// Keeps a finished job's waits for [`BindQueue::cleanup`]; never allocates (submit
    /// reserved the slot).
    fn retire(&mut self, fences: Vec<O::Fence>, waits: Vec<Wait<O>>) {
        if fences.capacity() == 0 && waits.capacity() == 0 {
            return;
        }
        debug_assert!(self.retired.len() < self.retired.capacity());
        #[expect(clippy::disallowed_methods, reason = "submit reserved the slot")]
        self.retired.push((fences, waits));
    }

    /// Drops the waits of jobs that left the queue (process context; also done by every
    /// submit). Returns how many jobs' waits it dropped.
    pub fn cleanup(&mut self) -> usize {
        let n = self.retired.len();
        self.retired.clear();
        n
    }

    /// Fails every queued job with [`JobError::Canceled`] (queue or VM teardown): VM
    /// unchanged, every out-fence signalled. Returns how many.
    pub fn cancel_all<M: FrameAlloc, U: Mmu>(&mut self, vm: &mut Vm<R, M, U, O::Fence>) -> usize {
        let mut n = 0;
        while let Some(q) = self.jobs.pop_front() {
            match vm.abort(q.job, JobError::Canceled) {
                Ok(d) => {
                    vm.defer(d);
                    self.retire(q.fences, q.waits);
                    n += 1;
                }
                Err(job) => {
                    self.jobs.push_front(Queued { job, ..q });
                    break;
                }
            }
        }
        n
    }
}

/// Whether a synchronous bind of `span` may run now, given the VM's queues and `policy`.
#[must_use]
pub fn sync_may_run<R: ObjRef, O: Syncobj>(
    policy: Policy,
    queues: &[&BindQueue<R, O>],
    span: Option<Range<u64>>,
) -> bool
where
    O::Fence: JobFence,
{
    !queues.iter().any(|q| q.blocks(policy, span.as_ref()))
}

/// Runs a synchronous bind: waits, under `policy`, for the earlier queued jobs of `queues` it
/// must wait for (polling them, so they run or fail), then runs `job` and cleans it up.
///
/// `wait` is the blocking point: called whenever the bind must keep waiting, it blocks until
/// something may have changed (a fence callback, a timer) and returns the current time, or
/// `None` to give up (a signal interrupted the ioctl), in which case the job is aborted with
/// [`JobError::Canceled`] and nothing changed. Queued jobs time out by their queue's timeout,
/// so with a clock that advances the wait ends.
///
/// # Errors
///
/// The job's error: [`JobError::Canceled`] if `wait` gave up, else what its run reported.
pub fn run_sync<R: ObjRef, O: Syncobj, M: FrameAlloc, U: Mmu>(
    vm: &mut Vm<R, M, U, O::Fence>,
    queues: &mut [&mut BindQueue<R, O>],
    policy: Policy,
    job: PreparedJob<R, O::Fence>,
    mut now: u64,
    mut wait: impl FnMut(&mut Vm<R, M, U, O::Fence>) -> Option<u64>,
) -> Result<(), JobError>
where
    O::Fence: JobFence,
{
    let span = job.span();
    loop {
        for q in queues.iter_mut() {
            q.poll(vm, now);
        }
        if !queues.iter().any(|q| q.blocks(policy, span.as_ref())) {
            break;
        }
        match wait(vm) {
            Some(t) => now = now.max(t),
            None => {
                let r = match vm.abort(job, JobError::Canceled) {
                    Ok(d) => finish_now(vm, d),
                    Err(_) => Err(JobError::Canceled),
                };
                return r.and(Err(JobError::Canceled));
            }
        }
    }
    match vm.run(job) {
        Ok(d) => finish_now(vm, d),
        Err(_) => Err(JobError::Canceled),
    }
}

fn finish_now<R: ObjRef, M: FrameAlloc, U: Mmu, F: JobFence>(
    vm: &mut Vm<R, M, U, F>,
    d: crate::vm::DoneJob<R, F>,
) -> Result<(), JobError> {
    let r = d.result();
    if let Err(d) = vm.cleanup(d) {
        // The invalidation failed again: the deferred list retries it.
        vm.defer(d);
    }
    r
}

/// Why [`Submit::add`] or [`Submit::push`] refused. Nothing changed: no VM state, no syncobj.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubmitError<E> {
    /// The job's prepare failed.
    Prepare(PrepareError<E>),
    /// Sync `index` of the job (in-syncs first, then out-syncs) could not be resolved.
    Sync {
        /// Index into `in_syncs`, then `out_syncs` (counted after the in-syncs).
        index: usize,
        /// Why.
        error: SyncError,
    },
    /// A synchronous job carries syncs (refused, as panthor and nouveau do), or was given to
    /// a batch: use [`run_sync`].
    SyncMode,
    /// Batch or queue storage could not be allocated.
    NoMemory,
}

impl<E: fmt::Display> fmt::Display for SubmitError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Prepare(e) => write!(f, "{e}"),
            Self::Sync { index, error } => write!(f, "sync {index}: {error}"),
            Self::SyncMode => f.write_str("synchronous jobs take no syncs and no batch"),
            Self::NoMemory => f.write_str("out of memory"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> core::error::Error for SubmitError<E> {}

type ChainOf<S> = <<S as SyncTable>::Syncobj as Syncobj>::Chain;

/// One out-sync, ready to publish.
struct Out<S: SyncTable> {
    obj: S::Syncobj,
    point: u64,
    chain: Option<ChainOf<S>>,
}

struct Pending<R, S: SyncTable> {
    job: PreparedJob<R, S::Fence>,
    fence: S::Fence,
    waits: Vec<Wait<S::Syncobj>>,
    outs: Vec<Out<S>>,
}

/// A submit context: one VM_BIND ioctl's batch of jobs (panthor's submit context).
///
/// [`Submit::add`] prepares each job (VM reservation, in-sync resolution, the out-fence and the
/// out-syncs' chain nodes), all fallibly, and changes nothing visible. An in-sync resolves
/// against the batch first: a `(handle, point)` that an earlier job of the batch signals (the
/// latest such job) resolves to that job's out-fence, not to the syncobj's current state.
/// [`Submit::push`] reserves the queue's room, then, with nothing left that can fail, publishes
/// every out-sync in job order and queues the jobs. Dropping the context (or a failed `add` or
/// `push`) releases every job of the batch: no syncobj, VM or queue changed.
pub struct Submit<'a, R: ObjRef, M: FrameAlloc, U: Mmu, S: SyncTable> {
    vm: &'a mut Vm<R, M, U, S::Fence>,
    syncs: &'a mut S,
    jobs: Vec<Pending<R, S>>,
    /// `(handle, point, fence)` of every out-sync of the batch so far.
    signals: Vec<(u32, u64, S::Fence)>,
}

impl<R: ObjRef, M: FrameAlloc, U: Mmu, S: SyncTable> fmt::Debug for Submit<'_, R, M, U, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Submit")
            .field("jobs", &self.jobs.len())
            .field("signals", &self.signals.len())
            .finish_non_exhaustive()
    }
}

impl<'a, R: ObjRef, M: FrameAlloc, U: Mmu, S: SyncTable> Submit<'a, R, M, U, S> {
    /// An empty batch for `vm`, resolving syncs in `syncs`.
    pub fn new(vm: &'a mut Vm<R, M, U, S::Fence>, syncs: &'a mut S) -> Self {
        Self {
            vm,
            syncs,
            jobs: Vec::new(),
            signals: Vec::new(),
        }
    }

    /// Jobs in the batch.
    #[must_use]
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether the batch is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// The VM.
    #[must_use]
    pub fn vm(&self) -> &Vm<R, M, U, S::Fence> {
        self.vm
    }

    /// Prepares `job` into the batch and returns its out-fence (not yet published anywhere).
    ///
    /// # Errors
    ///
    /// [`SubmitError`]; this job left nothing behind (the batch's earlier jobs stay).
    pub fn add<G: ObjectRegistry<Ref = R>>(
        &mut self,
        registry: &mut G,
        job: &BindJob<'_>,
    ) -> Result<S::Fence, SubmitError<G::Error>> {
        if job.mode == Mode::Sync {
            return Err(SubmitError::SyncMode);
        }
        let nomem = |_| SubmitError::NoMemory;
        self.jobs.try_reserve(1).map_err(nomem)?;
        self.signals
            .try_reserve(job.out_syncs.len())
            .map_err(nomem)?;
        let mut waits: Vec<Wait<S::Syncobj>> = Vec::new();
        waits.try_reserve_exact(job.in_syncs.len()).map_err(nomem)?;
        let mut outs: Vec<Out<S>> = Vec::new();
        outs.try_reserve_exact(job.out_syncs.len()).map_err(nomem)?;
        let bad = |index, error| SubmitError::Sync { index, error };

        // 1. In-syncs: the batch's own signals first, then the syncobjs.
        for (index, d) in job.in_syncs.iter().enumerate() {
            if let Some((_, _, f)) = self
                .signals
                .iter()
                .rev()
                .find(|(h, p, _)| *h == d.handle && *p == d.point)
            {
                #[expect(clippy::disallowed_methods, reason = "capacity reserved above")]
                waits.push(Wait::Fence(f.clone()));
                continue;
            }
            let obj = self.syncs.lookup(d.handle).map_err(|e| bad(index, e))?;
            check_kind(d, &obj).map_err(|e| bad(index, e))?;
            let w = match obj.find(d.point) {
                Point::Fence(f) => Wait::Fence(f),
                Point::Signalled => continue,
                Point::NotSubmitted if d.flags.wait_for_submit => Wait::Future {
                    obj,
                    point: d.point,
                },
                Point::NotSubmitted => return Err(bad(index, SyncError::NotSubmitted)),
            };
            #[expect(clippy::disallowed_methods, reason = "capacity reserved above")]
            waits.push(w);
        }
        // 2. Out-syncs: references and chain nodes; the job's out-fence.
        for (i, d) in job.out_syncs.iter().enumerate() {
            let index = job.in_syncs.len() + i;
            let obj = self.syncs.lookup(d.handle).map_err(|e| bad(index, e))?;
            check_kind(d, &obj).map_err(|e| bad(index, e))?;
            let chain = if obj.is_timeline() {
                if d.point == 0 {
                    return Err(bad(index, SyncError::Kind));
                }
                Some(self.syncs.alloc_chain().map_err(|e| bad(index, e))?)
            } else {
                None
            };
            #[expect(clippy::disallowed_methods, reason = "capacity reserved above")]
            outs.push(Out {
                obj,
                point: d.point,
                chain,
            });
        }
        let fence = self.syncs.new_fence().map_err(|e| match e {
            SyncError::NoMemory => SubmitError::NoMemory,
            e => bad(0, e),
        })?;
        // 3. The VM's part (nothing above changed anything).
        let prepared = self
            .vm
            .prepare(registry, job)
            .map_err(SubmitError::Prepare)?;
        for d in job.out_syncs {
            #[expect(clippy::disallowed_methods, reason = "capacity reserved above")]
            self.signals.push((d.handle, d.point, fence.clone()));
        }
        #[expect(clippy::disallowed_methods, reason = "capacity reserved above")]
        self.jobs.push(Pending {
            job: prepared,
            fence: fence.clone(),
            waits,
            outs,
        });
        Ok(fence)
    }

    /// Queues the batch on `queue` at time `now`: reserves the room, then (nothing can fail
    /// from here) publishes every out-sync and queues every job, in order.
    ///
    /// # Errors
    ///
    /// [`SubmitError::NoMemory`] if the queue could not grow; the batch is released and
    /// nothing changed.
    pub fn push(
        mut self,
        queue: &mut BindQueue<R, S::Syncobj>,
        now: u64,
    ) -> Result<(), SubmitError<core::convert::Infallible>>
    where
        S::Fence: JobFence,
    {
        queue.cleanup();
        let n = self.jobs.len();
        if queue.jobs.try_reserve(n).is_err()
            || queue.retired.try_reserve(queue.jobs.len() + n).is_err()
        {
            return Err(SubmitError::NoMemory);
        }
        // The point of no return.
        for p in self.jobs.drain(..) {
            let Pending {
                mut job,
                fence,
                waits,
                outs,
            } = p;
            for o in outs {
                o.obj.publish(o.point, o.chain, &fence);
            }
            job.arm(fence);
            queue.jobs.push_back(Queued {
                job,
                fences: Vec::new(),
                waits,
                deadline: now.saturating_add(queue.timeout),
            });
        }
        Ok(())
    }
}

fn check_kind<O: Syncobj>(d: &SyncDesc, obj: &O) -> Result<(), SyncError> {
    match (d.kind, obj.is_timeline()) {
        (SyncKind::Binary, false) if d.point == 0 => Ok(()),
        (SyncKind::Timeline, true) => Ok(()),
        _ => Err(SyncError::Kind),
    }
}

impl<R: ObjRef, M: FrameAlloc, U: Mmu, S: SyncTable> Drop for Submit<'_, R, M, U, S> {
    fn drop(&mut self) {
        // Not pushed: release every job (process context). Their fences were never armed or
        // published, so aborting signals nothing anyone can see.
        for p in self.jobs.drain(..) {
            if let Ok(d) = self.vm.abort(p.job, JobError::Canceled) {
                if let Err(d) = self.vm.cleanup(d) {
                    self.vm.defer(d);
                }
            }
        }
    }
}
