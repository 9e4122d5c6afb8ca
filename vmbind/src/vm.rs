//! [`Vm`]: one GPU VA space (VA tracker plus page tables) and the three stages of its bind jobs.

use alloc::vec::Vec;
use core::fmt;
use core::marker::PhantomData;
use core::ops::Range;

use gpuva::{BoxNode, Claim, GpuVm, LinkError, LinkPin, Mapping, ObjId, Request, SmVisitor};
use gpuva::{OpMap, OpMapped, OpRemap, OpRemapped, OpUnmap, OpUnmapped};
use pagetable::{
    job_bound, Attrs, BoundError, Chunk, Flush, FrameAlloc, JobOp, LockRegion, PageTable, Reclaim,
    Reserve, TlbInvalidate, UpdateContext, UpdateHooks, VirtAddr, WindowRun,
};

use crate::grow::Grown;
use crate::job::{BindJob, BindOp, MapFlags, Mode, OpError};
use crate::obj::{ObjRef, ObjectRegistry};
use crate::sync::JobFence;
use crate::JobError;

/// The driver's MMU for one VM: TLB invalidation, the page-table writer's hooks, an optional
/// lock region, and the fence-signalling annotations.
///
/// [`Vm::run`] calls, in order: [`Mmu::begin_signalling`], [`Mmu::lock`] (if the VM locks),
/// the [`UpdateHooks`] while it writes, [`TlbInvalidate::invalidate`] once for the whole job
/// (for panthor: `UNLOCK`/`FLUSH_MEM` and wait), then [`Mmu::end_signalling`]. None of them may
/// allocate or wait on anything but bounded hardware polls.
pub trait Mmu: TlbInvalidate + UpdateHooks {
    /// Locks `region` against GPU access until the next invalidation (Mali `AS_COMMAND_LOCK`).
    /// Called only if the VM was made with [`VmConfig::lock_region`]. The default does nothing.
    fn lock(&mut self, region: LockRegion) {
        let _ = region;
    }

    /// Entering the fence-signalling critical section (`dma_fence_begin_signalling`). Tests use
    /// it to forbid allocation. The default does nothing.
    fn begin_signalling(&mut self) {}

    /// Leaving it (`dma_fence_end_signalling`). The default does nothing.
    fn end_signalling(&mut self) {}
}

/// Geometry and limits of a [`Vm`].
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// The page-table format; its page size is the VM page size every op must be aligned to.
    pub format: pagetable::Format,
    /// The VA range user binds may touch (inside the format's VA space).
    pub va: Range<u64>,
    /// The kernel cut-out inside `va` (empty for none).
    pub cut_out: Range<u64>,
    /// Most page-table frames reserved by prepared but not yet cleaned-up jobs; prepare says
    /// [`PrepareError::Again`] past it.
    pub frame_cap: u64,
    /// Spare gpuva nodes cleanup keeps cached beyond what claims hold.
    pub spare_nodes: usize,
    /// Whether [`Vm::run`] locks the job's lock region ([`Mmu::lock`]) before writing.
    pub lock_region: bool,
}

impl VmConfig {
    /// A config over `va` with no cut-out, no frame cap worth mentioning, 64 spare nodes and no
    /// lock region.
    #[must_use]
    pub fn new(format: pagetable::Format, va: Range<u64>) -> Self {
        Self {
            format,
            va,
            cut_out: 0..0,
            frame_cap: u64::MAX,
            spare_nodes: 64,
            lock_region: false,
        }
    }
}

/// Why [`Vm::new`] failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NewError {
    /// The VA geometry is unusable (see [`gpuva::NewError`]).
    Va(gpuva::NewError),
    /// The VA range ends beyond the page-table format's VA space.
    OutsideFormat,
    /// The root table could not be allocated.
    Root(pagetable::NewError),
}

impl fmt::Display for NewError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Va(e) => write!(f, "bad VA geometry: {e}"),
            Self::OutsideFormat => f.write_str("VA range beyond the page-table format"),
            Self::Root(e) => write!(f, "root table: {e}"),
        }
    }
}

impl core::error::Error for NewError {}

/// Why [`Vm::prepare`] refused a job. Nothing anywhere changed.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PrepareError<E> {
    /// Op `index` is invalid.
    Op {
        /// Index into [`BindJob::ops`].
        index: usize,
        /// Why.
        error: OpError,
    },
    /// The object of op `index` could not be looked up.
    Object {
        /// Index into [`BindJob::ops`].
        index: usize,
        /// The registry's error.
        error: E,
    },
    /// An object's backing is unusable for the page tables (a chunk misaligned or beyond the
    /// output-address width).
    Backing(BoundError),
    /// Memory (gpuva nodes, table frames, job storage) could not be allocated.
    NoMemory,
    /// The VM's cap on page-table frames in flight would be exceeded: try again after cleanup.
    Again,
    /// The VM is unusable (a run stage failed); only jobs without maps are accepted.
    Unusable,
    /// An object link could not be obtained.
    Link(LinkError),
}

impl<E: fmt::Display> fmt::Display for PrepareError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Op { index, error } => write!(f, "op {index}: {error}"),
            Self::Object { index, error } => write!(f, "op {index}: object lookup: {error}"),
            Self::Backing(e) => write!(f, "object backing: {e}"),
            Self::NoMemory => f.write_str("out of memory"),
            Self::Again => f.write_str("too many page-table frames in flight, try again"),
            Self::Unusable => f.write_str("the VM is unusable"),
            Self::Link(e) => write!(f, "object link: {e}"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> core::error::Error for PrepareError<E> {}

/// One validated op, with everything its run needs.
#[derive(Clone, Debug)]
enum Step {
    Map {
        mapping: Mapping,
        attrs: Attrs,
        /// Range of the job's backing array.
        backing: Range<usize>,
    },
    Unmap {
        va: u64,
        len: u64,
    },
}

/// The per-job vectors of the last cleaned-up job, emptied, for the next prepare to reuse (so a
/// steady stream of small jobs allocates none of them). Vectors larger than
/// [`KEEP_VEC`] elements are freed instead of kept.
struct JobVecs<R> {
    steps: Vec<Step>,
    backing: Vec<Chunk>,
    refs: Vec<(ObjId, Option<R>)>,
    pins: Vec<LinkPin>,
}

impl<R> Default for JobVecs<R> {
    fn default() -> Self {
        Self {
            steps: Vec::new(),
            backing: Vec::new(),
            refs: Vec::new(),
            pins: Vec::new(),
        }
    }
}

/// What one prepare grew of the vectors the VM keeps, undone if it refuses the job (see
/// [`Grown`]): a refusal leaves every kept vector as it was, its buffer included.
struct Growth<R, F> {
    refs: Grown<(ObjId, Option<R>)>,
    steps: Grown<Step>,
    backing: Grown<Chunk>,
    pins: Grown<LinkPin>,
    scratch: Grown<WindowRun>,
    done: Grown<DoneJob<R, F>>,
    slots: Grown<Slot<R>>,
}

impl<R, F> Default for Growth<R, F> {
    fn default() -> Self {
        Self {
            refs: Grown::default(),
            steps: Grown::default(),
            backing: Grown::default(),
            pins: Grown::default(),
            scratch: Grown::default(),
            done: Grown::default(),
            slots: Grown::default(),
        }
    }
}

/// Largest per-job vector (in elements) kept for reuse by [`JobVecs`].
const KEEP_VEC: usize = 64;

/// Keeps `v` (emptied) in `slot` if it is small enough and `slot` has less room; else frees it.
fn keep_vec<T>(slot: &mut Vec<T>, mut v: Vec<T>) {
    v.clear();
    if v.capacity() <= KEEP_VEC && v.capacity() > slot.capacity() {
        *slot = v;
    }
}

/// Everything one job holds from prepare to cleanup.
struct Held<R> {
    steps: Vec<Step>,
    backing: Vec<Chunk>,
    /// One reference per distinct object (all `Some` after prepare), dropped in cleanup.
    refs: Vec<(ObjId, Option<R>)>,
    pins: Vec<LinkPin>,
    claim: Claim,
    reserve: Reserve,
    frames: u64,
    /// Nodes claimed at prepare (after the links took theirs).
    nodes: usize,
    /// Nodes the run drew from the VM's spare cache.
    drawn: usize,
    lock: Option<LockRegion>,
    span: Option<Range<u64>>,
    mode: Mode,
}

impl<R> fmt::Debug for Held<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("steps", &self.steps)
            .field("objects", &self.refs.len())
            .field("claim", &self.claim.nodes())
            .field("frames", &self.frames)
            .field("span", &self.span)
            .field("mode", &self.mode)
            .finish()
    }
}

/// A job's state in its VM's slot table, from prepare to cleanup.
#[derive(Debug)]
struct JobState<R> {
    held: Held<R>,
    /// Retired tables, freed by cleanup (after the run).
    reclaim: Option<Reclaim>,
    /// A flush whose invalidation failed, retried by cleanup.
    pending: Option<Flush>,
    /// Whether the run stage is over (ran or aborted).
    done: bool,
}

/// One entry of the VM's slot table. The generation changes whenever the slot is freed, so a
/// ticket for an earlier job of the slot is stale.
#[derive(Debug)]
struct Slot<R> {
    generation: u32,
    state: Option<JobState<R>>,
}

/// What names a job in its VM: the VM's identity, the slot, the slot's generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ticket {
    vm: usize,
    slot: usize,
    generation: u32,
}

/// A job that passed prepare: validated, its worst case reserved, its objects referenced and
/// linked. Run it with [`Vm::run`] (or fail it with [`Vm::abort`]).
///
/// The reservation itself lives in the VM; this is a ticket for it (and the armed out-fence).
/// A ticket dropped without run or abort leaves its job in the VM, which releases it when it is
/// dropped or when [`Vm::reclaim_outstanding`] is called; nothing is lost.
#[must_use = "a prepared job holds a reservation: run it or abort it"]
#[derive(Debug)]
pub struct PreparedJob<R, F = ()> {
    ticket: Ticket,
    fence: Option<F>,
    span: Option<Range<u64>>,
    mode: Mode,
    frames: u64,
    claimed: usize,
    _ref: PhantomData<fn() -> R>,
}

impl<R, F> PreparedJob<R, F> {
    /// Attaches the out-fence that [`Vm::run`] signals (after prepare, once nothing can fail).
    pub fn arm(&mut self, fence: F) {
        self.fence = Some(fence);
    }

    /// The hull of every VA range the job may change (ops' ranges, widened to the largest
    /// page-table leaf at unaligned ends where blocks may be split); `None` for a job of
    /// sync-only ops.
    #[must_use]
    pub fn span(&self) -> Option<Range<u64>> {
        self.span.clone()
    }

    /// Async or sync.
    #[must_use]
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Page-table frames reserved.
    #[must_use]
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// gpuva nodes claimed (after the links took theirs).
    #[must_use]
    pub fn claimed_nodes(&self) -> usize {
        self.claimed
    }
}

/// A job whose run stage is over (or that was aborted): its out-fence has been signalled, its
/// retired memory waits for [`Vm::cleanup`] (or [`Vm::defer`]).
///
/// Like [`PreparedJob`], a ticket: the retired memory lives in the VM, and a dropped `DoneJob`
/// leaves it there for the VM's drop or [`Vm::reclaim_outstanding`].
#[must_use = "a finished job holds retired memory: clean it up or defer it"]
#[derive(Debug)]
pub struct DoneJob<R, F = ()> {
    ticket: Ticket,
    fence: Option<F>,
    summary: JobSummary,
    retired: usize,
    unused_claim: usize,
    _ref: PhantomData<fn() -> R>,
}

impl<R, F> DoneJob<R, F> {
    /// How the job ended.
    ///
    /// # Errors
    ///
    /// The [`JobError`] its out-fence carried.
    pub fn result(&self) -> Result<(), JobError> {
        self.summary.result
    }

    /// Table frames the job retired (waiting for cleanup).
    #[must_use]
    pub fn retired_frames(&self) -> usize {
        self.retired
    }

    /// Frames left unused in the job's reservation.
    #[must_use]
    pub fn unused_frames(&self) -> usize {
        usize::try_from(self.summary.frames_returned).unwrap_or(usize::MAX)
    }

    /// gpuva nodes left unused in the job's claim.
    #[must_use]
    pub fn unused_nodes(&self) -> usize {
        self.unused_claim
    }

    /// What the job reserved, used and gives back (the per-job slack).
    #[must_use]
    pub fn summary(&self) -> JobSummary {
        self.summary
    }
}

impl<R> JobState<R> {
    /// The ticket's figures, taken when the run stage ends.
    fn summary(&self, result: Result<(), JobError>) -> (JobSummary, usize, usize) {
        let h = &self.held;
        let retired = self.reclaim.as_ref().map_or(0, Reclaim::len)
            + self.pending.as_ref().map_or(0, Flush::retired_len);
        let unused = u64::try_from(h.reserve.len()).unwrap_or(u64::MAX);
        let drawn = h.drawn.min(h.nodes);
        let s = JobSummary {
            result,
            frames_reserved: h.frames,
            frames_used: h.frames.saturating_sub(unused),
            frames_returned: unused,
            frames_retired: u64::try_from(retired).unwrap_or(u64::MAX),
            nodes_reserved: h.nodes,
            nodes_used: drawn,
            nodes_returned: h.nodes - drawn,
        };
        (s, retired, h.claim.nodes())
    }
}

/// A finished job's reservation against its use ([`DoneJob::summary`], and per job from
/// [`BindQueue::poll_with`](crate::queue::BindQueue::poll_with)).
///
/// `frames_used + frames_returned == frames_reserved` and `nodes_used + nodes_returned ==
/// nodes_reserved`; an aborted job uses nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobSummary {
    /// How the job ended.
    pub result: Result<(), JobError>,
    /// Page-table frames reserved by prepare.
    pub frames_reserved: u64,
    /// Frames the run took from the reservation (new tables).
    pub frames_used: u64,
    /// Frames left over, returned by cleanup.
    pub frames_returned: u64,
    /// Table frames the run retired (freed by cleanup after the invalidation).
    pub frames_retired: u64,
    /// gpuva nodes claimed by prepare (after the object links took theirs).
    pub nodes_reserved: usize,
    /// Nodes the run drew from the VM's spare cache (gpuva's [`gpuva::GpuVm::nodes_taken`] across
    /// the run; the claim itself is charged each request's whole bound).
    pub nodes_used: usize,
    /// Nodes not drawn, back in the spare cache after cleanup.
    pub nodes_returned: usize,
}

/// The gpuva VA space of a [`Vm`]: no mapping payload, the object reference as link payload.
pub type VaSpace<R> = GpuVm<(), BoxNode<(), R>, R>;

/// One GPU VA space: the VA tracker and the page tables, kept in step by bind jobs.
///
/// * `R`: the driver's object reference ([`ObjRef`]);
/// * `M`: the table-frame allocator ([`FrameAlloc`]);
/// * `U`: the MMU ([`Mmu`]);
/// * `F`: the jobs' out-fence ([`JobFence`]).
///
/// Locking is the caller's: every stage takes `&mut self` (the driver's VM lock; the run stage
/// must take it from the signalling path, so it must never be held while allocating; prepare
/// allocates its memory before touching the VM... see the crate docs for the exact split).
pub struct Vm<R: ObjRef, M: FrameAlloc, U: Mmu, F: JobFence = ()> {
    va: VaSpace<R>,
    pt: PageTable,
    mem: M,
    mmu: U,
    config: VmConfig,
    frames_in_flight: u64,
    /// Finished jobs waiting for cleanup; prepare keeps `capacity >= len + outstanding`.
    done: Vec<DoneJob<R, F>>,
    /// Jobs prepared and not yet cleaned up or deferred.
    outstanding: usize,
    unusable: bool,
    /// Zeroed frames left over by cleaned-up jobs, handed to the next reservations before the
    /// allocator is asked (at most [`Vm::spare_frames`] of them are kept).
    spare: Reserve,
    /// Scratch of the page-table job bound, kept between prepares.
    scratch: Vec<WindowRun>,
    /// Per-job vectors kept for the next prepare.
    vecs: JobVecs<R>,
    /// Every job from prepare to cleanup; grown (fallibly) by prepare only.
    slots: Vec<Slot<R>>,
    /// Sliding peaks of one job's reservation (frames, nodes): the current window and the
    /// previous one, and jobs cleaned up in the current window.
    peaks: [(u64, usize); 2],
    peak_jobs: u32,
    /// Frames each later prepare reserves below the bound (test switch, see
    /// [`Vm::set_reservation_shortfall`]).
    shortfall: u64,
}

/// Jobs per window of the sliding peak that sizes the spare caches.
const PEAK_WINDOW: u32 = 64;

impl<R: ObjRef, M: FrameAlloc, U: Mmu, F: JobFence> fmt::Debug for Vm<R, M, U, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vm")
            .field("va", &self.va)
            .field("frames_in_flight", &self.frames_in_flight)
            .field("deferred", &self.done.len())
            .field("outstanding", &self.outstanding)
            .field("unusable", &self.unusable)
            .finish_non_exhaustive()
    }
}

/// The run-stage visitor: page tables first, then the VA tree, per step (panthor's order).
struct Writer<'c, 'a, M: pagetable::TableMemory + ?Sized, H: UpdateHooks> {
    ctx: &'c mut UpdateContext<'a, M, H>,
    backing: &'c [Chunk],
    attrs: Attrs,
}

/// A page-table operation failed in the run stage (impossible on prepared input).
#[derive(Debug)]
struct Fault;

impl<M: pagetable::TableMemory + ?Sized, H: UpdateHooks> SmVisitor<()> for Writer<'_, '_, M, H> {
    type Error = Fault;

    fn step_map<'op>(&mut self, op: OpMap<'op, ()>) -> Result<OpMapped<'op>, Fault> {
        let m = *op.mapping();
        self.ctx
            .map(VirtAddr::new(m.addr), self.backing, self.attrs)
            .map_err(|_| Fault)?;
        Ok(op.insert(()))
    }

    fn step_remap<'op>(&mut self, op: OpRemap<'op, ()>) -> Result<OpRemapped<'op>, Fault> {
        // Even when `keep` says the translations would be equal, the hole is cleared and the
        // map step writes it again: one code path, and the job's invalidation covers it.
        let hole = op.hole();
        self.ctx
            .unmap(VirtAddr::new(hole.start), hole.end - hole.start)
            .map_err(|_| Fault)?;
        Ok(op.remap())
    }

    fn step_unmap<'op>(&mut self, op: OpUnmap<'op, ()>) -> Result<OpUnmapped<'op>, Fault> {
        let va = op.va();
        self.ctx
            .unmap(VirtAddr::new(va.addr()), va.length())
            .map_err(|_| Fault)?;
        Ok(op.remove())
    }
}

/// Copies `[offset, offset + len)` of `chunks` into `out` (grown through `grow`); returns the
/// length copied.
fn slice_backing(
    chunks: &[Chunk],
    offset: u64,
    len: u64,
    out: &mut Vec<Chunk>,
    grow: &mut Grown<Chunk>,
) -> Result<u64, ()> {
    let (mut skip, mut left) = (offset, len);
    for c in chunks {
        if left == 0 {
            break;
        }
        if skip >= c.len {
            skip -= c.len;
            continue;
        }
        let take = (c.len - skip).min(left);
        grow.try_reserve(out, 1).map_err(|_| ())?;
        #[expect(clippy::disallowed_methods, reason = "capacity reserved just above")]
        out.push(Chunk::new(
            pagetable::PhysAddr::new(c.pa.as_u64() + skip),
            take,
        ));
        skip = 0;
        left -= take;
    }
    Ok(len - left)
}

/// Widens `[a, b)` at each end not aligned to the format's largest leaf (a block split there
/// rewrites the whole block).
fn widen(fmt: &pagetable::Format, r: Range<u64>) -> Range<u64> {
    let big = fmt.largest_leaf();
    let lo = r.start & !(big - 1);
    let hi = r.end.checked_next_multiple_of(big).unwrap_or(u64::MAX);
    lo..hi.min(fmt.va_limit())
}

fn hull(a: Option<Range<u64>>, b: Range<u64>) -> Option<Range<u64>> {
    Some(match a {
        None => b,
        Some(a) => a.start.min(b.start)..a.end.max(b.end),
    })
}

impl<R: ObjRef, M: FrameAlloc, U: Mmu, F: JobFence> Vm<R, M, U, F> {
    /// A VM over `config`, its tables in `mem` (the root is allocated now), invalidated by
    /// `mmu`.
    ///
    /// # Errors
    ///
    /// [`NewError`]: bad geometry, or the root table could not be allocated.
    pub fn new(config: VmConfig, mut mem: M, mmu: U) -> Result<Self, NewError> {
        let fmt = config.format;
        if config.va.end > fmt.va_limit() {
            return Err(NewError::OutsideFormat);
        }
        let va = GpuVm::with_granule(config.va.clone(), config.cut_out.clone(), fmt.page_size())
            .map_err(NewError::Va)?;
        let pt = PageTable::try_new(fmt, &mut mem).map_err(NewError::Root)?;
        Ok(Self {
            va,
            pt,
            mem,
            mmu,
            config,
            frames_in_flight: 0,
            done: Vec::new(),
            outstanding: 0,
            unusable: false,
            spare: Reserve::new(),
            scratch: Vec::new(),
            vecs: JobVecs::default(),
            slots: Vec::new(),
            peaks: [(0, 0); 2],
            peak_jobs: 0,
            shortfall: 0,
        })
    }

    /// The VA tracker (read-only: every change goes through jobs).
    #[must_use]
    pub fn va_space(&self) -> &VaSpace<R> {
        &self.va
    }

    /// The page tables.
    #[must_use]
    pub fn page_table(&self) -> &PageTable {
        &self.pt
    }

    /// The table memory.
    #[must_use]
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// The MMU.
    #[must_use]
    pub fn mmu(&self) -> &U {
        &self.mmu
    }

    /// The MMU, mutably (e.g. to make invalidations fail in tests).
    pub fn mmu_mut(&mut self) -> &mut U {
        &mut self.mmu
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// Page-table frames reserved by jobs not yet cleaned up.
    #[must_use]
    pub fn frames_in_flight(&self) -> u64 {
        self.frames_in_flight
    }

    /// Finished jobs waiting in the deferred-cleanup list.
    #[must_use]
    pub fn deferred(&self) -> usize {
        self.done.len()
    }

    /// Zeroed table frames the VM keeps from cleaned-up jobs' unused reservations, handed to the
    /// next prepares before the allocator is asked. Cleanup keeps at most the largest single-job
    /// reservation of the last 64 to 128 jobs, and gives the rest back to the allocator.
    #[must_use]
    pub fn spare_frames(&self) -> usize {
        self.spare.len()
    }

    /// Marks the link of `obj` evicted (its pages are gone: the shrinker took them) or valid
    /// again ([`gpuva::GpuVm::set_evicted`]); evicted links are listed by
    /// [`gpuva::GpuVm::evicted_links`]. Changes no mapping or table.
    ///
    /// # Errors
    ///
    /// [`gpuva::LinkError::NoLink`] if `obj` has no link in this VM (nothing changed).
    pub fn set_evicted(&mut self, obj: ObjId, evicted: bool) -> Result<(), LinkError> {
        self.va.set_evicted(obj, evicted)
    }

    /// Test switch: every later prepare reserves `frames` page-table frames fewer than its
    /// bound (saturating; 0 turns it off), so that a simulator or a test can make a run stage
    /// run out of frames. Such a run stops at the op that ran short: the job fails with
    /// [`JobError::Fault`], its out-fence carries it, the VM becomes unusable (see
    /// [`Vm::is_unusable`]); nothing panics, in debug or release builds.
    #[doc(hidden)]
    pub fn set_reservation_shortfall(&mut self, frames: u64) {
        self.shortfall = frames;
    }

    /// Whether a run stage failed on this VM (its page tables may disagree with its VA
    /// tracker): maps are refused from then on, unmaps still run.
    #[must_use]
    pub fn is_unusable(&self) -> bool {
        self.unusable
    }

    /// Prepare (ioctl context, may allocate, may fail): validates every op, reserves the whole
    /// job's worst case, references and links its objects. Runs the deferred cleanups first.
    ///
    /// Reserved: gpuva nodes for every op's request kind plus one link per distinct object;
    /// page-table frames as [`pagetable::job_bound`] over the job's table operations (each map
    /// op a [`JobOp::Replace`]: a clear of its range, whatever was there, then the map). The
    /// frames come from the VM's spare frames first ([`Vm::spare_frames`]), then from the
    /// allocator.
    ///
    /// # Errors
    ///
    /// [`PrepareError`]; nothing has changed (VA tree, tables, frames, spare nodes, object
    /// references, counters).
    pub fn prepare<G: ObjectRegistry<Ref = R>>(
        &mut self,
        registry: &mut G,
        job: &BindJob<'_>,
    ) -> Result<PreparedJob<R, F>, PrepareError<G::Error>> {
        self.cleanup_deferred();
        // The kept vectors are lent to this prepare (a successful one hands them to its job).
        // Whatever it grows of them or of the VM's own vectors it grows into new buffers, so a
        // refusal gives every vector its old buffer back and frees the new ones: the VM keeps
        // exactly the memory it kept before.
        let mut v = core::mem::take(&mut self.vecs);
        let mut g = Growth::default();
        let lens = (self.scratch.len(), self.done.len(), self.slots.len());
        let r = self.prepare_in(registry, job, &mut v, &mut g);
        if r.is_err() {
            g.refs.undo(&mut v.refs, 0);
            g.steps.undo(&mut v.steps, 0);
            g.backing.undo(&mut v.backing, 0);
            g.pins.undo(&mut v.pins, 0);
            g.scratch.undo(&mut self.scratch, lens.0);
            g.done.undo(&mut self.done, lens.1);
            g.slots.undo(&mut self.slots, lens.2);
        }
        self.vecs = v;
        r
    }

    /// [`Vm::prepare`] with the vectors `v` (the job takes them on success), growing vectors
    /// through `g` only.
    fn prepare_in<G: ObjectRegistry<Ref = R>>(
        &mut self,
        registry: &mut G,
        job: &BindJob<'_>,
        v: &mut JobVecs<R>,
        g: &mut Growth<R, F>,
    ) -> Result<PreparedJob<R, F>, PrepareError<G::Error>> {
        let fmt = self.config.format;
        let page = fmt.page_size();
        let nomem = |_| PrepareError::NoMemory;

        // 1. Validate every op against the VA space; look objects up (one reference each).
        // The distinct objects, sorted (O(n log n)); `slots[i]` gets the reference of `ids[i]`
        // when the first op naming it is validated.
        let maps = job
            .ops
            .iter()
            .filter(|op| matches!(op, BindOp::Map { .. }))
            .count();
        let refs = &mut v.refs;
        g.refs.try_reserve(refs, maps).map_err(nomem)?;
        for op in job.ops {
            if let BindOp::Map { obj, .. } = *op {
                #[expect(clippy::disallowed_methods, reason = "capacity reserved above")]
                refs.push((obj, None));
            }
        }
        refs.sort_unstable_by_key(|(obj, _)| *obj);
        refs.dedup_by_key(|(obj, _)| *obj);
        let steps = &mut v.steps;
        g.steps.try_reserve(steps, job.ops.len()).map_err(nomem)?;
        let backing = &mut v.backing;
        let mut need_nodes = 0usize;
        let mut span: Option<Range<u64>> = None;
        for (index, op) in job.ops.iter().enumerate() {
            let bad = |error| PrepareError::Op { index, error };
            match *op {
                BindOp::Map {
                    va,
                    len,
                    obj,
                    offset,
                    flags,
                } => {
                    if self.unusable {
                        return Err(PrepareError::Unusable);
                    }
                    let r = self
                        .va
                        .check_range(va, len)
                        .map_err(|e| bad(OpError::Range(e)))?;
                    if offset & (page - 1) != 0 {
                        return Err(bad(OpError::UnalignedOffset));
                    }
                    let slot = refs
                        .binary_search_by_key(&obj, |(o, _)| *o)
                        .ok()
                        .and_then(|i| refs.get_mut(i))
                        .map(|(_, r)| r)
                        .ok_or(PrepareError::NoMemory)?;
                    if slot.is_none() {
                        let got = registry
                            .get(obj)
                            .map_err(|error| PrepareError::Object { index, error })?;
                        *slot = Some(got);
                    }
                    let Some(o) = slot.as_ref() else {
                        return Err(PrepareError::NoMemory);
                    };
                    let size = o.size();
                    if offset.checked_add(len).is_none_or(|end| end > size) {
                        return Err(bad(OpError::ObjectBounds { size }));
                    }
                    let start = backing.len();
                    let got = slice_backing(o.backing(), offset, len, backing, &mut g.backing)
                        .map_err(|()| PrepareError::NoMemory)?;
                    if got != len {
                        // The object's backing is shorter than its declared size.
                        return Err(bad(OpError::ObjectBounds { size: offset + got }));
                    }
                    let mapping =
                        Mapping::new(va, len, Some(obj), offset).with_flags(flags.va_flags());
                    need_nodes += self.va.nodes_for(&Request::Map(mapping));
                    span = hull(span, widen(&fmt, r));
                    #[expect(clippy::disallowed_methods, reason = "capacity reserved above")]
                    steps.push(Step::Map {
                        mapping,
                        attrs: MapFlags::attrs(flags),
                        backing: start..backing.len(),
                    });
                }
                BindOp::Unmap { va, len } => {
                    let r = self
                        .va
                        .check_range(va, len)
                        .map_err(|e| bad(OpError::Range(e)))?;
                    need_nodes += self.va.nodes_for(&Request::Unmap { addr: va, len });
                    span = hull(span, widen(&fmt, r));
                    #[expect(clippy::disallowed_methods, reason = "capacity reserved above")]
                    steps.push(Step::Unmap { va, len });
                }
                BindOp::SyncOnly => {}
            }
        }
        need_nodes += self.va.link_nodes() * refs.len();

        // 2. The page-table bound over the job's table operations.
        let mut table_ops: Vec<JobOp<'_>> = Vec::new();
        table_ops.try_reserve_exact(steps.len()).map_err(nomem)?;
        for s in steps.iter() {
            #[expect(clippy::disallowed_methods, reason = "capacity reserved above")]
            match s {
                Step::Map {
                    mapping,
                    backing: b,
                    ..
                } => {
                    table_ops.push(JobOp::Replace {
                        va: VirtAddr::new(mapping.addr),
                        backing: backing.get(b.clone()).unwrap_or(&[]),
                    });
                }
                Step::Unmap { va, len } => table_ops.push(JobOp::Unmap {
                    va: VirtAddr::new(*va),
                    len: *len,
                }),
            }
        }
        let frames = loop {
            match job_bound(&fmt, &table_ops, &mut self.scratch) {
                Ok(c) => break c.total().saturating_sub(self.shortfall),
                Err(BoundError::ScratchFull) => {
                    // Grown fallibly and kept for later jobs (a refusal undoes it).
                    let len = self.scratch.len();
                    let want = len.max(4).saturating_mul(4);
                    g.scratch
                        .try_reserve(&mut self.scratch, want - len)
                        .map_err(nomem)?;
                    #[expect(clippy::disallowed_methods, reason = "capacity reserved above")]
                    self.scratch.resize(want, WindowRun::default());
                }
                Err(e) => return Err(PrepareError::Backing(e)),
            }
        };
        let lock = if self.config.lock_region {
            pagetable::job_lock_range(&fmt, &table_ops)
                .map_err(PrepareError::Backing)?
                .and_then(|r| LockRegion::covering(r).ok())
        } else {
            None
        };
        drop(table_ops);
        if self
            .frames_in_flight
            .checked_add(frames)
            .is_none_or(|n| n > self.config.frame_cap)
        {
            return Err(PrepareError::Again);
        }
        // A slot in the deferred-cleanup list, so that `defer` never allocates.
        g.done
            .try_reserve(&mut self.done, self.outstanding + 1)
            .map_err(nomem)?;
        // A slot for the job's state (a free one, or room for one more).
        if !self.slots.iter().any(|s| s.state.is_none()) {
            g.slots.try_reserve(&mut self.slots, 1).map_err(nomem)?;
        }
        let pins = &mut v.pins;
        g.pins.try_reserve(pins, refs.len()).map_err(nomem)?;

        // 3. Reserve: frames, then nodes, then links; each failure undoes the ones before.
        let mut reserve = Reserve::new();
        let want = usize::try_from(frames).unwrap_or(usize::MAX);
        let from_spare = reserve.take_from(&mut self.mem, &mut self.spare, want);
        let fresh = frames - u64::try_from(from_spare).unwrap_or(0);
        if reserve.try_fill(&mut self.mem, fresh).is_err() {
            self.give_back(reserve, from_spare);
            return Err(PrepareError::NoMemory);
        }
        let spare_before = self.va.spare_nodes();
        let claimed_before = self.va.claimed_nodes();
        let mut claim = match self.va.reserve_boxed(need_nodes) {
            Ok(c) => c,
            Err(_) => {
                self.give_back(reserve, from_spare);
                return Err(PrepareError::NoMemory);
            }
        };
        for (obj, r) in refs.iter().filter_map(|(o, r)| Some((o, r.as_ref()?))) {
            match self.va.link_obtain(*obj, &mut claim, || r.clone()) {
                #[expect(clippy::disallowed_methods, reason = "capacity reserved above")]
                Ok(pin) => pins.push(pin),
                Err(e) => {
                    for pin in pins.drain(..) {
                        let _ = self.va.link_put(pin);
                    }
                    self.va.drain_zombies(|_, r| drop(r));
                    let _ = self.va.release(claim);
                    drop(self.va.trim(spare_before.saturating_sub(claimed_before)));
                    self.give_back(reserve, from_spare);
                    return Err(PrepareError::Link(e));
                }
            }
        }
        self.frames_in_flight += frames;
        self.outstanding += 1;
        let claimed = claim.nodes();
        let held = Held {
            steps: core::mem::take(steps),
            backing: core::mem::take(backing),
            refs: core::mem::take(refs),
            pins: core::mem::take(pins),
            nodes: claim.nodes(),
            drawn: 0,
            claim,
            reserve,
            frames,
            lock,
            span: span.clone(),
            mode: job.mode,
        };
        let state = JobState {
            held,
            reclaim: None,
            pending: None,
            done: false,
        };
        let free = self
            .slots
            .iter_mut()
            .enumerate()
            .find(|(_, s)| s.state.is_none());
        let (slot, generation) = if let Some((i, entry)) = free {
            entry.state = Some(state);
            (i, entry.generation)
        } else {
            #[expect(clippy::disallowed_methods, reason = "capacity reserved above")]
            self.slots.push(Slot {
                generation: 0,
                state: Some(state),
            });
            (self.slots.len() - 1, 0)
        };
        Ok(PreparedJob {
            ticket: Ticket {
                vm: self.va.id(),
                slot,
                generation,
            },
            fence: None,
            span,
            mode: job.mode,
            frames,
            claimed,
            _ref: PhantomData,
        })
    }

    /// Whether `t` is this VM's, current (its slot not freed since), and at stage `done`.
    fn is_current(&self, t: Ticket, done: bool) -> bool {
        t.vm == self.va.id()
            && self.slots.get(t.slot).is_some_and(|s| {
                s.generation == t.generation && s.state.as_ref().is_some_and(|j| j.done == done)
            })
    }

    /// Takes the state of the job `t` names out of its slot, if [`Vm::is_current`].
    fn take_state(&mut self, t: Ticket, done: bool) -> Option<JobState<R>> {
        if t.vm != self.va.id() {
            return None;
        }
        let slot = self.slots.get_mut(t.slot)?;
        if slot.generation != t.generation || slot.state.as_ref()?.done != done {
            return None;
        }
        slot.state.take()
    }

    /// Puts a job's state back in its slot (taken by [`Vm::take_state`]).
    fn put_state(&mut self, t: Ticket, state: JobState<R>) {
        if let Some(slot) = self.slots.get_mut(t.slot) {
            slot.state = Some(state);
        }
    }

    /// Frees slot `i`: its generation changes, so tickets for it turn stale.
    fn free_slot(&mut self, i: usize) {
        if let Some(slot) = self.slots.get_mut(i) {
            slot.state = None;
            slot.generation = slot.generation.wrapping_add(1);
        }
    }

    /// Run (the fence-signalling critical section): applies every op to the VA tree and the
    /// page tables together, from the job's reservation only, with one TLB invalidation for the
    /// whole job, then signals the out-fence. Allocates nothing, frees nothing.
    ///
    /// A step cannot fail on a job this VM prepared; if one did anyway (a broken
    /// [`pagetable::TableMemory`]), the job stops there, the VM becomes unusable and the fence
    /// carries [`JobError::Fault`]. A failed invalidation gives [`JobError::Tlb`] and leaves the
    /// retired frames to cleanup, which retries it.
    ///
    /// # Errors
    ///
    /// The job, untouched, if another VM prepared it or its ticket is stale (the job was
    /// released by [`Vm::reclaim_outstanding`]).
    pub fn run(&mut self, job: PreparedJob<R, F>) -> Result<DoneJob<R, F>, PreparedJob<R, F>> {
        let Some(JobState { mut held, .. }) = self.take_state(job.ticket, false) else {
            return Err(job);
        };
        let PreparedJob {
            ticket, mut fence, ..
        } = job;
        self.mmu.begin_signalling();
        if let Some(region) = held.lock {
            self.mmu.lock(region);
        }
        let mut result = Ok(());
        let taken = self.va.nodes_taken();
        let flush = {
            let Held {
                steps,
                backing,
                claim,
                reserve,
                ..
            } = &mut held;
            let mut ctx = self.pt.update(&mut self.mem, reserve, &mut self.mmu);
            for s in steps.iter() {
                let res = match s {
                    Step::Map {
                        mapping,
                        attrs,
                        backing: b,
                    } => {
                        let mut w = Writer {
                            ctx: &mut ctx,
                            backing: backing.get(b.clone()).unwrap_or(&[]),
                            attrs: *attrs,
                        };
                        self.va.step(Request::Map(*mapping), claim, &mut w)
                    }
                    Step::Unmap { va, len } => {
                        let mut w = Writer {
                            ctx: &mut ctx,
                            backing: &[],
                            attrs: Attrs::default(),
                        };
                        self.va.step(
                            Request::Unmap {
                                addr: *va,
                                len: *len,
                            },
                            claim,
                            &mut w,
                        )
                    }
                };
                if res.is_err() {
                    // Impossible on a full reservation (a broken table memory, or the test
                    // switch `set_reservation_shortfall`): stop, report, refuse maps from now.
                    self.unusable = true;
                    result = Err(JobError::Fault);
                    break;
                }
            }
            ctx.finish()
        };
        held.drawn =
            usize::try_from(self.va.nodes_taken().wrapping_sub(taken)).unwrap_or(usize::MAX);
        let (reclaim, pending) = match flush.invalidate(&mut self.mmu) {
            Ok(r) => (Some(r), None),
            Err(e) => {
                if result.is_ok() {
                    result = Err(JobError::Tlb);
                }
                (None, Some(e.flush))
            }
        };
        if let Some(f) = fence.as_mut() {
            f.signal(result);
        }
        self.mmu.end_signalling();
        Ok(self.done_job(ticket, fence, held, reclaim, pending, result))
    }

    /// Puts a job whose run stage ended back in its slot and makes its [`DoneJob`] ticket.
    fn done_job(
        &mut self,
        ticket: Ticket,
        fence: Option<F>,
        held: Held<R>,
        reclaim: Option<Reclaim>,
        pending: Option<Flush>,
        result: Result<(), JobError>,
    ) -> DoneJob<R, F> {
        let state = JobState {
            held,
            reclaim,
            pending,
            done: true,
        };
        let (summary, retired, unused_claim) = state.summary(result);
        self.put_state(ticket, state);
        DoneJob {
            ticket,
            fence,
            summary,
            retired,
            unused_claim,
            _ref: PhantomData,
        }
    }

    /// Fails a prepared job without running it (an in-fence failed or timed out, the queue was
    /// torn down): the VM is unchanged, the out-fence is signalled with `error`, and the
    /// reservation goes to cleanup. Allocates nothing.
    ///
    /// # Errors
    ///
    /// The job, untouched, if another VM prepared it or its ticket is stale (the job was
    /// released by [`Vm::reclaim_outstanding`]).
    pub fn abort(
        &mut self,
        job: PreparedJob<R, F>,
        error: JobError,
    ) -> Result<DoneJob<R, F>, PreparedJob<R, F>> {
        let Some(JobState { held, .. }) = self.take_state(job.ticket, false) else {
            return Err(job);
        };
        let PreparedJob {
            ticket, mut fence, ..
        } = job;
        self.mmu.begin_signalling();
        if let Some(f) = fence.as_mut() {
            f.signal(Err(error));
        }
        self.mmu.end_signalling();
        Ok(self.done_job(ticket, fence, held, None, None, Err(error)))
    }

    /// Queues a finished job for cleanup on the next prepare-side call (or drop). Never
    /// allocates: prepare reserved the slot. Callable from the signalling path.
    ///
    /// Another VM's or a stale ticket is dropped (it holds nothing: its job's state is with
    /// its own VM, or was released already).
    pub fn defer(&mut self, done: DoneJob<R, F>) {
        if !self.is_current(done.ticket, true) {
            return;
        }
        self.outstanding = self.outstanding.saturating_sub(1);
        debug_assert!(self.done.len() < self.done.capacity());
        #[expect(clippy::disallowed_methods, reason = "prepare reserved this slot")]
        self.done.push(done);
    }

    /// Cleanup (process context, after the job's invalidation completed): frees retired
    /// tables, returns the unused reservation, gives the link pins back, drains links left
    /// without mappings, drops the job's object references and its fence.
    ///
    /// # Errors
    ///
    /// The job, handed back, if its invalidation had failed and fails again (retry later), or if
    /// the ticket is another VM's or stale (nothing to retry).
    pub fn cleanup(&mut self, done: DoneJob<R, F>) -> Result<(), DoneJob<R, F>> {
        if !self.is_current(done.ticket, true) {
            return Err(done);
        }
        self.outstanding = self.outstanding.saturating_sub(1);
        self.finish(done).inspect_err(|_| self.outstanding += 1)
    }

    /// Runs every deferred cleanup (also done by prepare and on drop). Returns how many jobs
    /// stay deferred because their invalidation still fails.
    pub fn cleanup_deferred(&mut self) -> usize {
        let mut stuck = 0;
        let mut i = self.done.len();
        while i > 0 {
            i -= 1;
            let d = self.done.swap_remove(i);
            if !self.is_current(d.ticket, true) {
                // Released by `reclaim_outstanding`: nothing left to do.
                continue;
            }
            if let Err(d) = self.finish(d) {
                #[expect(clippy::disallowed_methods, reason = "the slot was just freed")]
                self.done.push(d);
                stuck += 1;
            }
        }
        stuck
    }

    /// Undoes a prepare's frame reservation: the `from_spare` frames go back to the spare
    /// reserve, the rest (freshly allocated) back to the allocator.
    fn give_back(&mut self, mut reserve: Reserve, from_spare: usize) {
        self.spare
            .take_from(&mut self.mem, &mut reserve, from_spare);
        let res = reserve.release(&mut self.mem);
        debug_assert!(res.is_ok(), "reserved frame refused by its own pool");
    }

    fn finish(&mut self, done: DoneJob<R, F>) -> Result<(), DoneJob<R, F>> {
        let Some(mut state) = self.take_state(done.ticket, true) else {
            return Err(done);
        };
        if let Some(flush) = state.pending.take() {
            match flush.invalidate(&mut self.mmu) {
                Ok(r) => state.reclaim = Some(r),
                Err(e) => {
                    state.pending = Some(e.flush);
                    self.put_state(done.ticket, state);
                    return Err(done);
                }
            }
        }
        self.free_slot(done.ticket.slot);
        drop(done.fence);
        self.release(state);
        Ok(())
    }

    /// Gives back everything a job whose invalidation completed holds (its slot already freed).
    fn release(&mut self, state: JobState<R>) {
        let JobState {
            mut held, reclaim, ..
        } = state;
        if let Some(mut r) = reclaim {
            let res = r.release(&mut self.mem);
            debug_assert!(res.is_ok(), "retired frame refused by its own pool");
        }
        // The sliding peak of one job's reservation sizes the spare caches.
        self.peak_jobs += 1;
        if self.peak_jobs > PEAK_WINDOW {
            self.peaks = [(0, 0), self.peaks[0]];
            self.peak_jobs = 1;
        }
        let need_nodes = held.nodes + held.pins.len() * self.va.link_nodes();
        self.peaks[0].0 = self.peaks[0].0.max(held.frames);
        self.peaks[0].1 = self.peaks[0].1.max(need_nodes);
        let keep_frames = self.peaks[0].0.max(self.peaks[1].0);
        let keep_nodes = self.peaks[0].1.max(self.peaks[1].1);
        let room = usize::try_from(keep_frames)
            .unwrap_or(usize::MAX)
            .saturating_sub(self.spare.len());
        self.spare.take_from(&mut self.mem, &mut held.reserve, room);
        let res = held.reserve.release(&mut self.mem);
        debug_assert!(res.is_ok(), "reserved frame refused by its own pool");
        if self.spare.len() > usize::try_from(keep_frames).unwrap_or(usize::MAX) {
            let mut surplus = Reserve::new();
            let n = self.spare.len() - usize::try_from(keep_frames).unwrap_or(0);
            surplus.take_from(&mut self.mem, &mut self.spare, n);
            let _ = surplus.release(&mut self.mem);
        }
        let res = self.va.release(held.claim);
        debug_assert!(res.is_ok());
        for pin in held.pins.drain(..) {
            let res = self.va.link_put(pin);
            debug_assert!(res.is_ok());
        }
        self.va.drain_zombies(|_, r| drop(r));
        drop(self.va.trim(self.config.spare_nodes.max(keep_nodes)));
        self.frames_in_flight = self.frames_in_flight.saturating_sub(held.frames);
        keep_vec(&mut self.vecs.refs, held.refs);
        keep_vec(&mut self.vecs.steps, held.steps);
        keep_vec(&mut self.vecs.backing, held.backing);
        keep_vec(&mut self.vecs.pins, held.pins);
    }

    /// Releases every job between prepare and cleanup, whatever holds its ticket: prepared jobs
    /// are dropped unrun (the VM stays as it was before their prepare), finished ones are
    /// cleaned up, deferred ones too. For a driver tearing a VM or all its queues down, after
    /// it failed what it still holds (e.g. [`BindQueue::cancel_all`]); tickets still held turn
    /// stale ([`Vm::run`], [`Vm::abort`] and [`Vm::cleanup`] hand them back, [`Vm::defer`]
    /// drops them), and the out-fences of prepared jobs still held are not signalled (their
    /// holders do that). A job whose failed invalidation fails again keeps its retired tables
    /// out of use forever (never reused: the GPU may still see them). Returns how many jobs it
    /// released.
    ///
    /// [`BindQueue::cancel_all`]: crate::queue::BindQueue::cancel_all
    pub fn reclaim_outstanding(&mut self) -> usize {
        let mut n = 0;
        for i in 0..self.slots.len() {
            let Some(mut state) = self.slots.get_mut(i).and_then(|s| s.state.take()) else {
                continue;
            };
            self.free_slot(i);
            if let Some(flush) = state.pending.take() {
                match flush.invalidate(&mut self.mmu) {
                    Ok(r) => state.reclaim = Some(r),
                    Err(e) => {
                        let _ = e.flush.forget();
                    }
                }
            }
            self.release(state);
            n += 1;
        }
        // Deferred tickets are stale now; the list keeps its capacity.
        self.done.clear();
        self.outstanding = 0;
        n
    }
}

impl<R: ObjRef, M: FrameAlloc, U: Mmu, F: JobFence> Drop for Vm<R, M, U, F> {
    fn drop(&mut self) {
        self.cleanup_deferred();
        // Jobs still deferred or whose tickets were dropped (including jobs never run); jobs
        // whose invalidation never completed give their retired frames up, never reused.
        self.reclaim_outstanding();
        let _ = self.spare.release(&mut self.mem);
    }
}
