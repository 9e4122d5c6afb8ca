//! Software fences, bind queues and the ordering of synchronous binds (feature `alloc`).
//!
//! A [`BindQueue`] holds prepared jobs in submission order. [`BindQueue::poll`], driven by a
//! kernel worker or a simulator, runs the head job once every in-fence has signalled, fails it
//! (VM unchanged, out-fence signalled with the error) when an in-fence signalled an error or its
//! deadline passed, and stops at the first job that must keep waiting: FIFO per queue. Several
//! queues may serve one VM; they are ordered against each other only through fences.
//!
//! # Synchronous binds
//!
//! A synchronous bind runs in the submitting thread. [`sync_may_run`] says whether it may run
//! now, under the VM's [`Policy`]:
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
use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::Cell;
use core::ops::Range;

use crate::obj::ObjRef;
use crate::vm::{JobFence, Mmu, PreparedJob, Vm};
use crate::JobError;
use pagetable::FrameAlloc;

/// A software fence: pending until signalled once, with or without an error. Clones share it.
#[derive(Clone, Debug, Default)]
pub struct SwFence(Rc<FenceCell>);

#[derive(Debug, Default)]
struct FenceCell {
    state: Cell<Option<Result<(), JobError>>>,
    signals: Cell<u32>,
}

impl SwFence {
    /// A pending fence.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// `None` while pending, else how it signalled.
    #[must_use]
    pub fn status(&self) -> Option<Result<(), JobError>> {
        self.0.state.get()
    }

    /// How many times it was signalled (a correct pipeline signals exactly once).
    #[must_use]
    pub fn signal_count(&self) -> u32 {
        self.0.signals.get()
    }
}

impl JobFence for SwFence {
    fn signal(&mut self, result: Result<(), JobError>) {
        self.0.signals.set(self.0.signals.get().saturating_add(1));
        if self.0.state.get().is_none() {
            self.0.state.set(Some(result));
        }
    }
}

/// How synchronous binds are ordered against queued ones; see the module docs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Wait for every earlier queued job.
    #[default]
    Fifo,
    /// Wait only for earlier queued jobs whose spans overlap.
    RangeOrdered,
}

struct Queued<R> {
    job: PreparedJob<R, SwFence>,
    waits: Vec<SwFence>,
    deadline: u64,
}

/// A FIFO of prepared jobs waiting for their in-fences.
pub struct BindQueue<R> {
    jobs: VecDeque<Queued<R>>,
    timeout: u64,
}

impl<R> core::fmt::Debug for BindQueue<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
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
    /// An empty queue whose jobs fail with [`JobError::Timeout`] `timeout` time units after
    /// submission if their in-fences have not all signalled.
    #[must_use]
    pub fn new(timeout: u64) -> Self {
        Self {
            jobs: VecDeque::new(),
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

    /// Queues `job` (already armed with its out-fence) behind the others, to run once every
    /// fence of `waits` has signalled, at the latest by `now + timeout`.
    ///
    /// # Errors
    ///
    /// The job and its waits, handed back, if the queue could not grow.
    #[expect(
        clippy::result_large_err,
        reason = "the caller's values, handed back by value"
    )]
    pub fn submit(
        &mut self,
        job: PreparedJob<R, SwFence>,
        waits: Vec<SwFence>,
        now: u64,
    ) -> Result<(), (PreparedJob<R, SwFence>, Vec<SwFence>)> {
        if self.jobs.try_reserve(1).is_err() {
            return Err((job, waits));
        }
        self.jobs.push_back(Queued {
            job,
            waits,
            deadline: now.saturating_add(self.timeout),
        });
        Ok(())
    }

    /// The spans of the queued jobs, in order.
    pub fn spans(&self) -> impl Iterator<Item = Option<Range<u64>>> + '_ {
        self.jobs.iter().map(|q| q.job.span())
    }

    /// Runs or fails jobs from the head while they are ready; the finished jobs go to the
    /// VM's deferred cleanup. Allocates nothing (a worker in the signalling path may call it).
    pub fn poll<M: FrameAlloc, U: Mmu>(
        &mut self,
        vm: &mut Vm<R, M, U, SwFence>,
        now: u64,
    ) -> Progress {
        let mut p = Progress::default();
        while let Some(head) = self.jobs.front() {
            let failed = head
                .waits
                .iter()
                .find_map(|f| f.status().and_then(Result::err));
            let ready = head.waits.iter().all(|f| f.status().is_some());
            let verdict = match (failed, ready) {
                (Some(e), _) => Some(Err(JobError::InFence(in_fence_code(e)))),
                (None, true) => Some(Ok(())),
                (None, false) if now >= head.deadline => Some(Err(JobError::Timeout)),
                (None, false) => None,
            };
            let Some(verdict) = verdict else { break };
            let Some(q) = self.jobs.pop_front() else {
                break;
            };
            let done = match verdict {
                Ok(()) => {
                    p.ran += 1;
                    vm.run(q.job)
                }
                Err(e) => {
                    p.failed += 1;
                    vm.abort(q.job, e)
                }
            };
            match done {
                Ok(d) => vm.defer(d),
                Err(job) => {
                    // Another VM's job: it cannot make progress here; put it back and stop.
                    self.jobs.push_front(Queued {
                        job,
                        waits: q.waits,
                        deadline: q.deadline,
                    });
                    break;
                }
            }
        }
        p
    }
}

fn in_fence_code(e: JobError) -> i32 {
    match e {
        JobError::InFence(c) => c,
        _ => -5,
    }
}

/// Whether a synchronous bind of `span` may run now, given the VM's queues and `policy`.
#[must_use]
pub fn sync_may_run<R: ObjRef>(
    policy: Policy,
    queues: &[&BindQueue<R>],
    span: Option<Range<u64>>,
) -> bool {
    match policy {
        Policy::Fifo => queues.iter().all(|q| q.is_empty()),
        Policy::RangeOrdered => {
            let Some(s) = span else {
                // A sync-only bind orders against everything.
                return queues.iter().all(|q| q.is_empty());
            };
            queues.iter().all(|q| {
                q.spans()
                    .all(|o| o.is_some_and(|o| o.end <= s.start || s.end <= o.start))
            })
        }
    }
}
