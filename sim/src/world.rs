//! The simulated machine: physical memory, buffer objects, VMs (each a `vmbind::Vm` with bind
//! queues), syncobjs, GPU queues, the model of what should be mapped, and every check.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::time::Instant;

use gpuva::ObjId;
use pagetable::{Chunk, Format, PhysAddr, TableMemory as _};
use vmbind::queue::{sync_may_run, BindQueue, Policy, SwFence};
use vmbind::{BindJob, BindOp, JobError, JobFence as _, MapFlags, Mode, ObjRef, ObjectRegistry};
use vmbind::{PreparedJob, Vm, VmConfig};

use crate::mmu::{Gpu, MmuHandle};
use crate::phys::{Owner, Phys, TablePool, FRAME};
use crate::timeline::{Lane, Outcome, Signal, Span};

/// How an object's pages are laid out physically.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contiguity {
    /// 2 MiB runs where memory allows (block mappings), else smaller.
    Huge,
    /// 64 KiB runs (sparse tiles).
    Tiles,
    /// Single 4 KiB frames.
    Scattered,
}

/// A buffer object's pages; freed when the last reference goes.
#[derive(Debug)]
pub struct BoInner {
    /// The object's handle.
    pub id: u32,
    size: u64,
    chunks: Vec<Chunk>,
    /// (address, frames) runs to free.
    runs: Vec<(u64, usize)>,
    phys: Rc<RefCell<Phys>>,
    released: std::cell::Cell<bool>,
}

impl BoInner {
    fn release(&self) {
        if !self.released.replace(true) {
            let mut p = self.phys.borrow_mut();
            for &(pa, n) in &self.runs {
                p.free(pa, n);
            }
        }
    }
}

impl Drop for BoInner {
    fn drop(&mut self) {
        self.release();
    }
}

/// A counted reference to a buffer object (what `vmbind` holds while it maps it).
#[derive(Clone, Debug)]
pub struct BoRef(Rc<BoInner>);

impl ObjRef for BoRef {
    fn size(&self) -> u64 {
        self.0.size
    }
    fn backing(&self) -> &[Chunk] {
        &self.0.chunks
    }
}

impl BoRef {
    /// Physical address of byte `off`.
    #[must_use]
    pub fn pa_of(&self, off: u64) -> Option<u64> {
        let mut skip = off;
        for c in &self.0.chunks {
            if skip < c.len {
                return Some(c.pa.as_u64() + skip);
            }
            skip -= c.len;
        }
        None
    }
}

/// A fence signalled at once with `result`.
fn signalled(result: Result<(), JobError>) -> SwFence {
    let mut f = SwFence::new();
    f.signal(result);
    f
}

fn oid(o: ObjId) -> u32 {
    u32::try_from(o.get()).unwrap_or(u32::MAX)
}

struct Handles<'a>(&'a HashMap<u32, BoRef>);

impl ObjectRegistry for Handles<'_> {
    type Ref = BoRef;
    type Error = &'static str;
    fn get(&mut self, obj: ObjId) -> Result<BoRef, &'static str> {
        self.0.get(&oid(obj)).cloned().ok_or("no such object")
    }
}

/// The vmbind VM type the simulator drives.
pub type SimVm = Vm<BoRef, TablePool, MmuHandle, SwFence>;

/// What should be mapped at one page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expect {
    /// Object id.
    pub bo: u32,
    /// Offset of the page in the object.
    pub off: u64,
    /// Physical address of the page.
    pub pa: u64,
    /// Read-only.
    pub ro: bool,
}

/// Test-only fault switches of the simulator itself (the MMU's are in [`crate::mmu::Faults`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorldFaults {
    /// Forget to update the model after unmaps (the checks must then report unexpected faults).
    pub stale_model: bool,
    /// Forget to update the model after maps (missing faults).
    pub forget_maps: bool,
    /// Record every mapped page one frame off (wrong data).
    pub skew_model: bool,
    /// Release an object's pages when its handle closes, even while mapped.
    pub release_early: bool,
    /// GPU jobs complete without signalling their fence.
    pub drop_fence_signal: bool,
    /// The scenario's userspace makes its user queue wait for the next frame's bind before
    /// signalling what that bind waits on: a dependency cycle through a user queue.
    pub fence_cycle: bool,
    /// Cross-group-sync waits get no timeout (a fence that bridges user-queue progress to
    /// kernel fences without a bound).
    pub xgs_no_timeout: bool,
    /// Every later prepare reserves no page-table frames at all
    /// (`Vm::set_reservation_shortfall`): the first run stage that needs a new table runs
    /// out, fails with `JobError::Fault`, and its VM becomes unusable.
    pub reservation_shortfall: bool,
}

/// Hazards: every one fails the run.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Hazards {
    /// A GPU access that read or translated to something other than the model says.
    pub wrong_data: u64,
    /// A GPU access that faulted where the model says mapped.
    pub unexpected_fault: u64,
    /// A GPU access that translated where the model says unmapped.
    pub missing_fault: u64,
    /// A GPU access that reached a page no live object owns.
    pub released_page: u64,
    /// A walk through a freed or reused table frame.
    pub freed_table: u64,
    /// A TLB or walk-cache entry used after its invalidation was reported complete.
    pub stale_tlb: u64,
    /// A run stage that failed (its reservation ran out or a step was refused).
    pub reservation_ran_out: u64,
    /// Allocations inside fence-signalling sections.
    pub run_allocations: u64,
    /// Kernel fences not signalled within the forward-progress bound.
    pub fence_never_signalled: u64,
    /// A fence signalled more than once.
    pub fence_double_signal: u64,
    /// A dependency cycle through at least one pending kernel fence.
    pub fence_cycle: u64,
    /// A bind job (memory management) waiting on a fence that depends on user-queue progress
    /// through a bridge without a timeout.
    pub indefinite_fence: u64,
    /// A block split visible to GPU work in flight (no lock region stalled it).
    pub split_visible: u64,
}

impl Hazards {
    /// The sum.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.wrong_data
            + self.unexpected_fault
            + self.missing_fault
            + self.released_page
            + self.freed_table
            + self.stale_tlb
            + self.reservation_ran_out
            + self.run_allocations
            + self.fence_never_signalled
            + self.fence_double_signal
            + self.fence_cycle
            + self.indefinite_fence
            + self.split_visible
    }

    /// Name and count of each check.
    #[must_use]
    pub fn rows(&self) -> [(&'static str, &'static str, u64); 13] {
        [
            (
                "wrong data",
                "access returned or hit other memory than the model",
                self.wrong_data,
            ),
            (
                "unexpected fault",
                "access faulted where the model maps",
                self.unexpected_fault,
            ),
            (
                "missing fault",
                "access translated where the model has a hole",
                self.missing_fault,
            ),
            (
                "released page",
                "access reached a page no live object owns",
                self.released_page,
            ),
            (
                "freed table",
                "walk through a freed or reused table frame",
                self.freed_table,
            ),
            (
                "stale TLB",
                "cached entry used after its invalidation completed",
                self.stale_tlb,
            ),
            (
                "reservation ran out",
                "a run stage failed",
                self.reservation_ran_out,
            ),
            (
                "run-stage allocation",
                "allocation inside a signalling section",
                self.run_allocations,
            ),
            (
                "fence never signalled",
                "kernel fence pending past the bound",
                self.fence_never_signalled,
            ),
            (
                "fence signalled twice",
                "a fence signalled more than once",
                self.fence_double_signal,
            ),
            (
                "fence cycle",
                "dependency cycle through a pending kernel fence",
                self.fence_cycle,
            ),
            (
                "indefinite fence",
                "bind waits on user-queue progress with no timeout",
                self.indefinite_fence,
            ),
            (
                "split visible mid-update",
                "block split under GPU work in flight, not stalled",
                self.split_visible,
            ),
        ]
    }
}

/// What the bind jobs are for (report rows).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum BindKind {
    /// Sparse residency updates.
    Sparse,
    /// Buffer churn.
    Churn,
    /// A job blocked on a late host fence.
    Blocked,
    /// Eviction by the shrinker.
    Evict,
    /// Revalidation after eviction.
    Revalidate,
}

impl BindKind {
    /// Row label.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Sparse => "sparse tiles",
            Self::Churn => "buffer churn",
            Self::Blocked => "blocked on host",
            Self::Evict => "eviction",
            Self::Revalidate => "revalidation",
        }
    }
}

/// Per-kind bind counters.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct BindRow {
    /// Jobs submitted.
    pub jobs: u64,
    /// Ops in them.
    pub ops: u64,
    /// Run.
    pub ran: u64,
    /// Failed without running (timeout or in-fence error).
    pub failed: u64,
    /// Synchronous.
    pub sync: u64,
}

/// Everything counted.
#[derive(Debug, Default)]
pub struct Stats {
    /// Bind rows.
    pub binds: BTreeMap<BindKind, BindRow>,
    /// Run-stage wall latencies (ns), one per job run.
    pub run_ns: Vec<u64>,
    /// Sync-bind latencies in simulated µs, per policy (Fifo, RangeOrdered).
    pub sync_wait: [Vec<u64>; 2],
    /// Sync binds that had to wait, per policy.
    pub sync_waited: [u64; 2],
    /// Prepare refusals.
    pub prepare_errors: u64,
    /// Frames reserved by prepared jobs (vmbind's job bound).
    pub frames_reserved: u64,
    /// Finished jobs' own summaries (`vmbind::JobSummary`), summed: page-table frames
    /// reserved, used (new tables), retired.
    pub job_frames: (u64, u64, u64),
    /// Binds refused because their VM became unusable (after a failed run stage).
    pub refused_unusable: u64,
    /// Binds refused for want of memory (or over the in-flight frame cap).
    pub refused_no_room: u64,
    /// Sync binds: frames reserved / left unused, summed.
    pub sync_frames: (u64, u64),
    /// GPU jobs run, failed.
    pub gpu_jobs: (u64, u64),
    /// Reads, writes.
    pub accesses: (u64, u64),
    /// Accesses that matched a mapping and the data.
    pub verified: u64,
    /// Faults the model predicted (non-resident tiles, holes).
    pub expected_faults: u64,
    /// Fences created, signalled ok, signalled with error.
    pub fences: (u64, u64, u64),
    /// Bind jobs failed by timeout.
    pub timeouts: u64,
    /// Longest time a kernel fence stayed pending (µs).
    pub max_fence_wait: u64,
    /// Objects created, released.
    pub bos: (u64, u64),
    /// Evictions (handles closed by the shrinker, [`World::close_evicted`]), revalidations
    /// (objects swapped back in, [`World::swap_in`]).
    pub evictions: (u64, u64),
    /// Objects refused for want of physical memory ([`WorldError::NoMemory`]).
    pub no_memory: u64,
    /// Wall time spent in the simulation.
    pub wall_ns: u64,
    /// User submission: user queues, native syncobjs, the cross-group-sync queue.
    pub user: crate::usq::UserStats,
}

struct Inflight {
    ops: Vec<BindOp>,
    fence: SwFence,
    kind: BindKind,
    submitted: u64,
}

struct SyncPending {
    job: Option<PreparedJob<BoRef, SwFence>>,
    ops: Vec<BindOp>,
    kind: BindKind,
    submitted: u64,
    waited: bool,
}

/// One VM of the world.
#[expect(
    missing_debug_implementations,
    reason = "holds a vmbind VM; see World's Debug"
)]
pub struct VmSlot {
    /// The vmbind VM.
    pub vm: SimVm,
    /// Name for the report.
    pub name: String,
    /// Sync-bind ordering policy.
    pub policy: Policy,
    queues: Vec<(BindQueue<BoRef>, VecDeque<Inflight>)>,
    sync: Vec<SyncPending>,
    /// Page -> expected mapping.
    pub model: BTreeMap<u64, Expect>,
    pub(crate) gpu_id: u32,
}

/// A GPU access of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// GPU VA.
    pub va: u64,
    /// `Some(v)`: write `v`; `None`: read.
    pub write: Option<u64>,
}

struct GpuJob {
    vm: usize,
    waits: Vec<SwFence>,
    accesses: Vec<Access>,
    fence: SwFence,
    deadline: u64,
    submitted: u64,
}

pub(crate) struct Tracked {
    pub(crate) fence: SwFence,
    pub(crate) created: u64,
    reported: bool,
    /// What the fence waits on, for the dependency checks.
    pub(crate) deps: Vec<crate::usq::Dep>,
    /// Who signals it.
    pub(crate) kind: crate::usq::FenceKind,
    /// Already counted in a cycle, or as an indefinite wait.
    pub(crate) flagged: (bool, bool),
}

/// The whole simulated machine.
#[expect(
    missing_debug_implementations,
    reason = "large graph of shared state; the report describes it"
)]
pub struct World {
    /// Simulated time, µs.
    pub now: u64,
    /// Physical memory.
    pub phys: Rc<RefCell<Phys>>,
    /// The MMU.
    pub gpu: Rc<RefCell<Gpu>>,
    /// VMs.
    pub vms: Vec<VmSlot>,
    /// Open object handles.
    pub handles: HashMap<u32, BoRef>,
    next_bo: u32,
    /// Object contents as the model knows them: (object, 8-byte word offset) -> value.
    pub(crate) content: HashMap<(u32, u64), u64>,
    /// Syncobjs: handle -> timeline point -> fence.
    syncobjs: HashMap<u32, BTreeMap<u64, SwFence>>,
    gpu_queues: Vec<VecDeque<GpuJob>>,
    pub(crate) fences: Vec<Tracked>,
    /// User submission state (user queues, native syncobjs, cross-group-sync operations).
    pub(crate) user: crate::usq::UserSide,
    /// Cross-group-sync wait timeout (µs).
    pub xgs_timeout: u64,
    /// Bind-queue timeout (µs).
    pub bind_timeout: u64,
    /// GPU job timeout (µs).
    pub gpu_timeout: u64,
    /// Forward-progress bound (µs) for kernel fences.
    pub fence_bound: u64,
    /// Fault switches.
    pub faults: WorldFaults,
    /// Counters.
    pub stats: Stats,
    /// Hazards found by the world (the MMU's are merged in [`World::hazards`]).
    pub(crate) hz: Hazards,
    allocs_at_start: u64,
    /// The bounded record of jobs and fence signals the `--svg` timeline draws.
    pub timeline: crate::timeline::Timeline,
    /// Memory (MiB) and address-space slots the machine was made with.
    pub setup: (u64, usize),
    /// While recording ([`World::record`]): every call the driver of the world makes, as a
    /// scenario file's commands.
    pub(crate) script: Option<crate::script::Recorder>,
}

/// Why a world operation was refused (a scenario error, not a hazard).
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    /// Out of physical memory for an object.
    #[error("out of physical memory for a {0}-byte object")]
    NoMemory(u64),
    /// A VM could not be made.
    #[error("vm: {0}")]
    Vm(String),
    /// Prepare refused a job.
    #[error("prepare: {0}")]
    Prepare(String),
    /// A wait on a syncobj point nobody submitted (wait-before-submit is refused).
    #[error("syncobj {0} point {1} not submitted")]
    NoPoint(u32, u64),
    /// The VM refused a map: a run stage failed on it before (the hazard was counted).
    #[error("the VM is unusable after a failed run stage")]
    Unusable,
    /// Prepare ran out of memory, or hit the VM's cap on frames in flight (`-ENOMEM` or
    /// `-EAGAIN` for the ioctl): userspace sees the bind fail and goes on.
    #[error("prepare: out of memory or over the in-flight frame cap")]
    NoRoom,
}

impl World {
    /// A machine with `mem_mib` MiB of physical memory and `slots` address-space slots.
    #[must_use]
    pub fn new(mem_mib: u64, slots: usize) -> Self {
        let frames = usize::try_from(mem_mib * 256).unwrap_or(usize::MAX);
        let phys = Rc::new(RefCell::new(Phys::new(0x8000_0000, frames)));
        let gpu = Rc::new(RefCell::new(Gpu::new(slots, Rc::clone(&phys))));
        Self {
            now: 0,
            phys,
            gpu,
            vms: Vec::new(),
            handles: HashMap::new(),
            next_bo: 1,
            content: HashMap::new(),
            syncobjs: HashMap::new(),
            gpu_queues: Vec::new(),
            fences: Vec::new(),
            user: crate::usq::UserSide::default(),
            xgs_timeout: 15_000,
            bind_timeout: 20_000,
            gpu_timeout: 20_000,
            fence_bound: 100_000,
            faults: WorldFaults::default(),
            stats: Stats::default(),
            hz: Hazards::default(),
            allocs_at_start: crate::alloc_count::in_section(),
            timeline: crate::timeline::Timeline::default(),
            setup: (mem_mib, slots),
            script: None,
        }
    }

    /// Starts recording every later call that drives the world (setup, binds, GPU jobs, user
    /// queues, host signals, steps) as a scenario file ([`crate::script`]); the current
    /// timeouts are its first commands.
    pub fn record(&mut self) {
        let mut r = crate::script::Recorder::new(self.setup);
        r.timeouts(self);
        self.script = Some(r);
    }

    /// Stops recording and returns the script recorded since [`World::record`].
    ///
    /// # Errors
    ///
    /// The recording could not name something it was given (a fence the world never handed
    /// out); the message says what.
    pub fn take_script(&mut self) -> Result<crate::script::Script, String> {
        self.script
            .take()
            .ok_or_else(|| "the world was not recording".to_owned())?
            .finish()
    }

    /// Runs `f` on the recorder, if recording.
    pub(crate) fn rec(&mut self, f: impl FnOnce(&mut crate::script::Recorder)) {
        if let Some(r) = &mut self.script {
            f(r);
        }
    }

    /// Adds a VM over `va` with `queues` bind queues; returns its index.
    ///
    /// # Errors
    ///
    /// [`WorldError::Vm`] if vmbind refuses the geometry or the root cannot be allocated.
    pub fn add_vm(
        &mut self,
        name: impl Into<String>,
        policy: Policy,
        lock_region: bool,
        queues: usize,
    ) -> Result<usize, WorldError> {
        let name = name.into();
        self.rec(|r| r.vm(&name, policy, lock_region, queues));
        let idx = self.vms.len();
        let id = u32::try_from(idx).unwrap_or(u32::MAX);
        let fmt = Format::panthor(48).map_err(|e| WorldError::Vm(e.to_string()))?;
        let mut cfg = VmConfig::new(fmt, 0x1000..1 << 47);
        cfg.lock_region = lock_region;
        let pool = TablePool::new(Rc::clone(&self.phys), id);
        let mmu = MmuHandle::new(Rc::clone(&self.gpu), Rc::clone(&self.phys), id);
        let vm: SimVm = Vm::new(cfg, pool, mmu).map_err(|e| WorldError::Vm(e.to_string()))?;
        let root = vm.page_table().root().as_u64();
        let start = vm.page_table().format().start_level().as_u8();
        let gpu_id = self.gpu.borrow_mut().add_vm(root, start);
        self.vms.push(VmSlot {
            vm,
            name,
            policy,
            queues: (0..queues.max(1))
                .map(|_| (BindQueue::new(self.bind_timeout), VecDeque::new()))
                .collect(),
            sync: Vec::new(),
            model: BTreeMap::new(),
            gpu_id,
        });
        Ok(idx)
    }

    /// Adds a GPU queue; returns its index.
    pub fn add_gpu_queue(&mut self) -> usize {
        self.rec(crate::script::Recorder::gpu_queue);
        self.gpu_queues.push(VecDeque::new());
        self.gpu_queues.len() - 1
    }

    /// Creates an object of `size` bytes with the given contiguity; returns its handle.
    ///
    /// # Errors
    ///
    /// [`WorldError::NoMemory`] when physical memory runs out (nothing is kept).
    pub fn create_bo(&mut self, size: u64, how: Contiguity) -> Result<u32, WorldError> {
        let id = self.next_bo;
        let mut runs: Vec<(u64, usize)> = Vec::new();
        let mut chunks: Vec<Chunk> = Vec::new();
        let mut left = size;
        let mut ok = true;
        {
            let mut p = self.phys.borrow_mut();
            while left > 0 {
                let mut sizes: &[usize] = match how {
                    Contiguity::Huge => &[512, 16, 1],
                    Contiguity::Tiles => &[16, 1],
                    Contiguity::Scattered => &[1],
                };
                while sizes.len() > 1 && (sizes[0] as u64 * FRAME) > left {
                    sizes = &sizes[1..];
                }
                let got = sizes
                    .iter()
                    .find_map(|&n| p.alloc_run(n, Owner::Data { bo: id }).map(|pa| (pa, n)));
                let Some((pa, n)) = got else {
                    ok = false;
                    break;
                };
                runs.push((pa, n));
                let len = n as u64 * FRAME;
                match chunks.last_mut() {
                    Some(c) if c.pa.as_u64() + c.len == pa => c.len += len,
                    _ => chunks.push(Chunk::new(PhysAddr::new(pa), len)),
                }
                left -= len.min(left);
            }
            if !ok {
                for &(pa, n) in &runs {
                    p.free(pa, n);
                }
            }
        }
        self.rec(|r| r.bo(id, size, how, ok));
        if !ok {
            self.stats.no_memory += 1;
            return Err(WorldError::NoMemory(size));
        }
        self.next_bo += 1;
        let bo = BoRef(Rc::new(BoInner {
            id,
            size,
            chunks,
            runs,
            phys: Rc::clone(&self.phys),
            released: std::cell::Cell::new(false),
        }));
        self.handles.insert(id, bo);
        self.stats.bos.0 += 1;
        Ok(id)
    }

    /// Swap-in of an evicted object: new pages for handle `id`, its contents copied back.
    ///
    /// # Errors
    ///
    /// [`WorldError::NoMemory`].
    pub fn swap_in(&mut self, id: u32, size: u64, how: Contiguity) -> Result<u32, WorldError> {
        self.rec(|r| r.swap_in(id, size, how));
        let rec = self.script.take();
        let saved = self.next_bo;
        self.next_bo = id;
        let r = self.create_bo(size, how);
        self.next_bo = saved;
        self.script = rec;
        r?;
        self.stats.evictions.1 += 1;
        let bo = self
            .handles
            .get(&id)
            .cloned()
            .ok_or(WorldError::NoMemory(size))?;
        let mut p = self.phys.borrow_mut();
        for (&(b, off), &v) in &self.content {
            if b == id {
                if let Some(pa) = bo.pa_of(off) {
                    p.write(pa, v);
                }
            }
        }
        Ok(id)
    }

    /// Runs every VM's deferred cleanups (drops references, frees retired tables).
    pub fn cleanup_all(&mut self) {
        self.rec(crate::script::Recorder::cleanup);
        for v in &mut self.vms {
            v.vm.cleanup_deferred();
        }
    }

    /// Closes a handle: the pages go once no VM maps the object any more.
    pub fn close_bo(&mut self, id: u32) {
        self.rec(|r| r.close(id, false));
        self.close(id);
    }

    /// Closes a handle as the shrinker does after unmapping the object: [`World::close_bo`],
    /// counted as an eviction.
    pub fn close_evicted(&mut self, id: u32) {
        self.rec(|r| r.close(id, true));
        self.close(id);
        self.stats.evictions.0 += 1;
    }

    fn close(&mut self, id: u32) {
        if let Some(b) = self.handles.remove(&id) {
            if self.faults.release_early {
                b.0.release();
            }
            self.stats.bos.1 += 1;
        }
    }

    /// The object's reference, if its handle is open.
    #[must_use]
    pub fn bo(&self, id: u32) -> Option<&BoRef> {
        self.handles.get(&id)
    }

    pub(crate) fn track(
        &mut self,
        f: &SwFence,
        kind: crate::usq::FenceKind,
        deps: Vec<crate::usq::Dep>,
    ) {
        self.stats.fences.0 += 1;
        self.user.graph_dirty = true;
        self.fences.push(Tracked {
            fence: f.clone(),
            created: self.now,
            reported: false,
            deps,
            kind,
            flagged: (false, false),
        });
    }

    /// A host-signalled (user) fence, installed at `handle`/`point`; not a kernel fence, so not
    /// bound by the forward-progress rule.
    pub fn host_fence(&mut self, handle: u32, point: u64) -> SwFence {
        let f = SwFence::new();
        self.rec(|r| r.host_fence(handle, point, &f));
        self.syncobjs
            .entry(handle)
            .or_default()
            .insert(point, f.clone());
        f
    }

    /// The host (userspace) signals `fence`, made by [`World::host_fence`], with `result`.
    pub fn signal_host(&mut self, fence: &SwFence, result: Result<(), JobError>) {
        self.rec(|r| r.signal(fence, result));
        fence.clone().signal(result);
    }

    /// The fence at `handle`/`point`.
    ///
    /// # Errors
    ///
    /// [`WorldError::NoPoint`] if nothing was submitted there.
    pub fn point(&self, handle: u32, point: u64) -> Result<SwFence, WorldError> {
        self.syncobjs
            .get(&handle)
            .and_then(|t| t.get(&point))
            .cloned()
            .ok_or(WorldError::NoPoint(handle, point))
    }

    fn prepare(
        &mut self,
        vm: usize,
        ops: &[BindOp],
        mode: Mode,
    ) -> Result<PreparedJob<BoRef, SwFence>, WorldError> {
        let v = &mut self.vms[vm];
        if self.faults.reservation_shortfall {
            v.vm.set_reservation_shortfall(u64::MAX);
        }
        let mut job = BindJob::new(ops);
        job.mode = mode;
        match v.vm.prepare(&mut Handles(&self.handles), &job) {
            Ok(j) => {
                self.stats.frames_reserved += j.frames();
                Ok(j)
            }
            Err(vmbind::PrepareError::Unusable) => {
                self.stats.refused_unusable += 1;
                Err(WorldError::Unusable)
            }
            Err(vmbind::PrepareError::NoMemory | vmbind::PrepareError::Again) => {
                self.stats.refused_no_room += 1;
                Err(WorldError::NoRoom)
            }
            Err(e) => {
                self.stats.prepare_errors += 1;
                Err(WorldError::Prepare(e.to_string()))
            }
        }
    }

    /// Submits an async bind job on queue `q` of `vm`, waiting on `waits`, its out-fence
    /// installed at `out` (handle, point) if given; returns the out-fence.
    ///
    /// # Errors
    ///
    /// Prepare's refusal (nothing changed).
    pub fn bind_async(
        &mut self,
        vm: usize,
        q: usize,
        ops: &[BindOp],
        waits: Vec<SwFence>,
        out: Option<(u32, u64)>,
        kind: BindKind,
    ) -> Result<SwFence, WorldError> {
        let fence = SwFence::new();
        self.rec(|r| r.bind_async(vm, q, ops, &waits, out, kind, &fence));
        let mut job = match self.prepare(vm, ops, Mode::Async) {
            Ok(j) => j,
            // A driver fails such binds at once; the scenario goes on. The ioctl's error
            // return stands as a fence already signalled with an error, for the callers that
            // wait on the bind.
            Err(e @ (WorldError::Unusable | WorldError::NoRoom)) => {
                let mut f = fence;
                f.signal(Err(if matches!(e, WorldError::Unusable) {
                    JobError::Fault
                } else {
                    JobError::Canceled
                }));
                if let Some((h, p)) = out {
                    self.syncobjs.entry(h).or_default().insert(p, f.clone());
                }
                return Ok(f);
            }
            Err(e) => return Err(e),
        };
        job.arm(fence.clone());
        let now = self.now;
        let mut deps: Vec<crate::usq::Dep> =
            waits.iter().cloned().map(crate::usq::Dep::Fence).collect();
        let (queue, inflight) = &mut self.vms[vm].queues[q];
        // FIFO per queue: the job also waits for the one queued before it.
        if let Some(prev) = inflight.back() {
            deps.push(crate::usq::Dep::Fence(prev.fence.clone()));
        }
        if queue.submit(job, waits, now).is_err() {
            return Err(WorldError::Prepare("queue full".into()));
        }
        inflight.push_back(Inflight {
            ops: ops.to_vec(),
            fence: fence.clone(),
            kind,
            submitted: now,
        });
        let row = self.stats.binds.entry(kind).or_default();
        row.jobs += 1;
        row.ops += ops.len() as u64;
        self.track(&fence, crate::usq::FenceKind::Bind, deps);
        if let Some((h, p)) = out {
            self.syncobjs.entry(h).or_default().insert(p, fence.clone());
        }
        Ok(fence)
    }

    /// Submits a synchronous bind on `vm`: it runs as soon as the VM's policy lets it (at once,
    /// or in a later [`World::step`]); returns its fence (signalled when it has run; already
    /// signalled with an error if prepare refused it for want of room or an unusable VM).
    ///
    /// # Errors
    ///
    /// Prepare's other refusals.
    pub fn bind_sync(
        &mut self,
        vm: usize,
        ops: &[BindOp],
        kind: BindKind,
    ) -> Result<SwFence, WorldError> {
        self.rec(|r| r.bind_sync(vm, ops, kind));
        let mut job = match self.prepare(vm, ops, Mode::Sync) {
            Ok(j) => j,
            Err(WorldError::Unusable) => return Ok(signalled(Err(JobError::Fault))),
            Err(WorldError::NoRoom) => return Ok(signalled(Err(JobError::Canceled))),
            Err(e) => return Err(e),
        };
        let fence = SwFence::new();
        job.arm(fence.clone());
        self.track(&fence, crate::usq::FenceKind::Bind, Vec::new());
        let row = self.stats.binds.entry(kind).or_default();
        row.jobs += 1;
        row.sync += 1;
        row.ops += ops.len() as u64;
        self.vms[vm].sync.push(SyncPending {
            job: Some(job),
            ops: ops.to_vec(),
            kind,
            submitted: self.now,
            waited: false,
        });
        self.run_sync(vm);
        Ok(fence)
    }

    /// Submits a GPU job on GPU queue `q` against `vm`; returns its fence.
    pub fn gpu_job(
        &mut self,
        q: usize,
        vm: usize,
        waits: Vec<SwFence>,
        accesses: Vec<Access>,
    ) -> SwFence {
        let fence = SwFence::new();
        self.rec(|r| r.gpu(q, vm, &waits, &accesses, &fence));
        let mut deps: Vec<crate::usq::Dep> =
            waits.iter().cloned().map(crate::usq::Dep::Fence).collect();
        if let Some(prev) = self.gpu_queues[q].back() {
            deps.push(crate::usq::Dep::Fence(prev.fence.clone()));
        }
        self.track(&fence, crate::usq::FenceKind::Gpu, deps);
        self.gpu_queues[q].push_back(GpuJob {
            vm,
            waits,
            accesses,
            fence: fence.clone(),
            deadline: self.now + self.gpu_timeout,
            submitted: self.now,
        });
        fence
    }

    fn apply_model(&mut self, vm: usize, ops: &[BindOp]) {
        for op in ops {
            match *op {
                BindOp::Map {
                    va,
                    len,
                    obj,
                    offset,
                    flags,
                } => {
                    if self.faults.forget_maps {
                        continue;
                    }
                    let skew = if self.faults.skew_model { FRAME } else { 0 };
                    // The object as the VM holds it (its link's reference): the handle may
                    // be closed already.
                    let linked = self.vms[vm]
                        .vm
                        .va_space()
                        .link(obj)
                        .map(|l| l.data().clone());
                    let Some(bo) = linked.or_else(|| self.handles.get(&oid(obj)).cloned()) else {
                        continue;
                    };
                    let model = &mut self.vms[vm].model;
                    let mut p = 0;
                    while p < len {
                        if let Some(pa) = bo.pa_of(offset + p) {
                            model.insert(
                                va + p,
                                Expect {
                                    bo: oid(obj),
                                    off: offset + p,
                                    pa: pa + skew,
                                    ro: flags.read_only,
                                },
                            );
                        }
                        p += FRAME;
                    }
                }
                BindOp::Unmap { va, len } => {
                    if self.faults.stale_model {
                        continue;
                    }
                    let model = &mut self.vms[vm].model;
                    let keys: Vec<u64> = model.range(va..va + len).map(|(k, _)| *k).collect();
                    for k in keys {
                        model.remove(&k);
                    }
                }
                BindOp::SyncOnly => {}
            }
        }
    }

    fn poll_binds(&mut self) {
        for vm in 0..self.vms.len() {
            for q in 0..self.vms[vm].queues.len() {
                let now = self.now;
                let v = &mut self.vms[vm];
                let (queue, _) = &mut v.queues[q];
                let jf = &mut self.stats.job_frames;
                let t0 = Instant::now();
                let p = queue.poll_with(&mut v.vm, now, |s| {
                    jf.0 += s.frames_reserved;
                    jf.1 += s.frames_used;
                    jf.2 += s.frames_retired;
                });
                let dt = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
                if p.ran > 0 {
                    let per = dt / p.ran as u64;
                    self.stats.run_ns.extend(std::iter::repeat_n(per, p.ran));
                }
                loop {
                    let inflight = &mut self.vms[vm].queues[q].1;
                    let Some(head) = inflight.front() else { break };
                    let Some(status) = head.fence.status() else {
                        break;
                    };
                    let Some(done) = inflight.pop_front() else {
                        break;
                    };
                    let row = self.stats.binds.entry(done.kind).or_default();
                    let outcome = match status {
                        Ok(()) => {
                            row.ran += 1;
                            self.apply_model(vm, &done.ops);
                            Outcome::Done
                        }
                        Err(JobError::Timeout) => {
                            row.failed += 1;
                            self.stats.timeouts += 1;
                            Outcome::TimedOut
                        }
                        Err(JobError::Fault | JobError::Tlb) => {
                            row.failed += 1;
                            self.hz.reservation_ran_out += 1;
                            Outcome::Failed
                        }
                        Err(_) => {
                            row.failed += 1;
                            Outcome::Failed
                        }
                    };
                    self.timeline.span(Span {
                        lane: Lane::Bind { vm, q },
                        submitted: done.submitted,
                        start: now,
                        end: now,
                        outcome,
                    });
                }
            }
        }
    }

    fn run_sync(&mut self, vm: usize) {
        let mut i = 0;
        while i < self.vms[vm].sync.len() {
            let v = &mut self.vms[vm];
            let span = v.sync[i].job.as_ref().and_then(PreparedJob::span);
            let queues: Vec<&BindQueue<BoRef>> = v.queues.iter().map(|(q, _)| q).collect();
            if !sync_may_run(v.policy, &queues, span) {
                v.sync[i].waited = true;
                i += 1;
                continue;
            }
            let mut s = v.sync.remove(i);
            let Some(job) = s.job.take() else { continue };
            let reserved = job.frames();
            let t0 = Instant::now();
            let done = v.vm.run(job);
            let dt = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
            let Ok(done) = done else { continue };
            self.stats.run_ns.push(dt);
            self.stats.sync_frames.0 += reserved;
            self.stats.sync_frames.1 += done.unused_frames() as u64;
            let sum = done.summary();
            self.stats.job_frames.0 += sum.frames_reserved;
            self.stats.job_frames.1 += sum.frames_used;
            self.stats.job_frames.2 += sum.frames_retired;
            let pol = usize::from(v.policy == Policy::RangeOrdered);
            self.stats.sync_wait[pol].push(self.now - s.submitted);
            if s.waited {
                self.stats.sync_waited[pol] += 1;
            }
            let res = done.result();
            if v.vm.cleanup(done).is_err() {
                self.hz.reservation_ran_out += 1;
            }
            let row = self.stats.binds.entry(s.kind).or_default();
            let ok = res.is_ok();
            match res {
                Ok(()) => {
                    row.ran += 1;
                    self.apply_model(vm, &s.ops);
                }
                Err(_) => {
                    row.failed += 1;
                    self.hz.reservation_ran_out += 1;
                }
            }
            self.timeline.span(Span {
                lane: Lane::Sync { vm },
                submitted: s.submitted,
                start: self.now,
                end: self.now,
                outcome: if ok { Outcome::Done } else { Outcome::Failed },
            });
        }
    }

    fn run_gpu(&mut self) {
        for q in 0..self.gpu_queues.len() {
            while let Some(head) = self.gpu_queues[q].front() {
                let failed = head
                    .waits
                    .iter()
                    .find_map(|f| f.status().and_then(Result::err));
                let ready = head.waits.iter().all(|f| f.status().is_some());
                let verdict = match (failed, ready) {
                    (Some(e), _) => Err(e),
                    (None, true) => Ok(()),
                    (None, false) if self.now >= head.deadline => Err(JobError::Timeout),
                    (None, false) => break,
                };
                let Some(mut job) = self.gpu_queues[q].pop_front() else {
                    break;
                };
                self.timeline.span(Span {
                    lane: Lane::Gpu { q },
                    submitted: job.submitted,
                    start: self.now,
                    end: self.now,
                    outcome: match verdict {
                        Ok(()) => Outcome::Done,
                        Err(JobError::Timeout) => Outcome::TimedOut,
                        Err(_) => Outcome::Failed,
                    },
                });
                if verdict.is_ok() {
                    self.stats.gpu_jobs.0 += 1;
                    for a in std::mem::take(&mut job.accesses) {
                        let _ = self.access(job.vm, a);
                    }
                } else {
                    self.stats.gpu_jobs.1 += 1;
                }
                if !self.faults.drop_fence_signal {
                    job.fence.signal(verdict);
                }
            }
        }
    }

    /// One GPU access through the MMU, checked against the model. Returns the value read (or
    /// written) when the access translated and matched the model, `None` otherwise (a fault,
    /// expected or not, or a hazard).
    pub fn access(&mut self, vm: usize, a: Access) -> Option<u64> {
        let page = a.va & !(FRAME - 1);
        let expected = self.vms[vm].model.get(&page).copied();
        let gpu_id = self.vms[vm].gpu_id;
        let res = {
            let mem = self.vms[vm].vm.memory();
            self.gpu.borrow_mut().translate(gpu_id, mem, a.va)
        };
        match a.write {
            Some(_) => self.stats.accesses.1 += 1,
            None => self.stats.accesses.0 += 1,
        }
        let leaf = match (res, expected) {
            (Err(_), None) => {
                self.stats.expected_faults += 1;
                return None;
            }
            (Err(_), Some(_)) => {
                self.hz.unexpected_fault += 1;
                return None;
            }
            (Ok(leaf), _) => leaf,
        };
        let pa = leaf.translate(a.va);
        let owner = self.phys.borrow().owner(pa).map(|(o, _)| o);
        let Some(e) = expected else {
            self.hz.missing_fault += 1;
            if !matches!(owner, Some(Owner::Data { .. })) {
                self.hz.released_page += 1;
            }
            return None;
        };
        if owner != Some(Owner::Data { bo: e.bo }) {
            self.hz.released_page += 1;
            return None;
        }
        let perm = a.write.is_some() && leaf.read_only;
        if perm != (a.write.is_some() && e.ro) {
            if perm {
                self.hz.unexpected_fault += 1;
            } else {
                self.hz.missing_fault += 1;
            }
            return None;
        }
        if perm {
            self.stats.expected_faults += 1;
            return None;
        }
        if pa != e.pa + (a.va - page) {
            self.hz.wrong_data += 1;
            return None;
        }
        let key = (e.bo, (e.off + (a.va - page)) & !7);
        match a.write {
            Some(v) => {
                self.phys.borrow_mut().write(pa, v);
                self.content.insert(key, v);
                self.stats.verified += 1;
                Some(v)
            }
            None => {
                let got = self.phys.borrow().read(pa);
                if got == self.content.get(&key).copied().unwrap_or(0) {
                    self.stats.verified += 1;
                    Some(got)
                } else {
                    self.hz.wrong_data += 1;
                    None
                }
            }
        }
    }

    fn check_fences(&mut self) {
        let now = self.now;
        let bound = self.fence_bound;
        let mut late = 0;
        let mut double = 0;
        let (mut ok, mut err, mut max_wait) = (0, 0, self.stats.max_fence_wait);
        let tl = &mut self.timeline;
        self.fences.retain_mut(|t| match t.fence.status() {
            Some(r) => {
                tl.signal(Signal {
                    created: t.created,
                    at: now,
                    error: r.is_err(),
                    gpu: t.kind == crate::usq::FenceKind::Gpu,
                });
                if r.is_ok() {
                    ok += 1;
                } else {
                    err += 1;
                }
                if t.fence.signal_count() > 1 {
                    double += 1;
                }
                max_wait = max_wait.max(now - t.created);
                false
            }
            None => {
                if !t.reported && now - t.created > bound {
                    t.reported = true;
                    late += 1;
                }
                true
            }
        });
        self.stats.fences.1 += ok;
        self.stats.fences.2 += err;
        self.stats.max_fence_wait = max_wait;
        self.hz.fence_never_signalled += late;
        self.hz.fence_double_signal += double;
    }

    /// Advances simulated time by `dt` µs: bind workers, pending sync binds, GPU queues, fence
    /// checks.
    pub fn step(&mut self, dt: u64) {
        self.rec(|r| r.step(dt));
        let t0 = Instant::now();
        self.now += dt;
        self.poll_binds();
        for vm in 0..self.vms.len() {
            self.run_sync(vm);
        }
        self.run_gpu();
        // Kernel fences to native syncobjs, user queues, native syncobjs back to fences.
        self.run_xgs();
        self.run_user_queues();
        self.run_xgs();
        // Binds waiting on GPU work that just finished.
        self.poll_binds();
        self.check_fences();
        self.check_dependencies();
        self.stats.wall_ns += u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
    }

    /// Runs steps until every queue is idle (or `limit` µs pass), then one last fence check
    /// past the bound.
    pub fn drain(&mut self, dt: u64, limit: u64) {
        self.rec(|r| r.drain(dt, limit));
        let rec = self.script.take();
        let end = self.now + limit;
        while self.now < end && !self.idle() {
            self.step(dt);
        }
        self.script = rec;
        let bound = self.fence_bound;
        self.now += bound + 1;
        self.check_fences();
    }

    /// Bind queues of VM `vm` (0 if there is no such VM).
    #[must_use]
    pub fn bind_queues(&self, vm: usize) -> usize {
        self.vms.get(vm).map_or(0, |v| v.queues.len())
    }

    /// Whether nothing is queued anywhere.
    #[must_use]
    pub fn idle(&self) -> bool {
        self.user.idle()
            && self.gpu_queues.iter().all(VecDeque::is_empty)
            && self
                .vms
                .iter()
                .all(|v| v.sync.is_empty() && v.queues.iter().all(|(q, _)| q.is_empty()))
    }

    /// Every hazard so far, the MMU's included.
    #[must_use]
    pub fn hazards(&self) -> Hazards {
        let mut h = self.hz;
        let g = self.gpu.borrow();
        h.stale_tlb += g.hazards.stale_tlb + g.hazards.stale_walk;
        h.freed_table += g.hazards.freed_table;
        h.split_visible += g.hazards.split_visible;
        h.run_allocations = crate::alloc_count::in_section() - self.allocs_at_start;
        h
    }

    /// For every page of every VM: the MMU's own uncached walk of the tables against the model
    /// (and against `pagetable::translate`). Returns (pages compared, mismatches).
    #[must_use]
    pub fn audit_translations(&self) -> (u64, u64) {
        let (mut n, mut bad) = (0, 0);
        for v in &self.vms {
            let pt = v.vm.page_table();
            let mem = v.vm.memory();
            let root = pt.root().as_u64();
            let start = pt.format().start_level().as_u8();
            let mut pages: Vec<u64> = v.model.keys().copied().collect();
            for l in pt.leaves(
                mem,
                pagetable::VirtAddr::new(0)..pagetable::VirtAddr::new(1 << 47),
            ) {
                let Ok(l) = l else {
                    bad += 1;
                    continue;
                };
                let mut p = l.va.as_u64();
                while p < l.va.as_u64() + l.size {
                    pages.push(p);
                    p += FRAME;
                }
            }
            pages.sort_unstable();
            pages.dedup();
            for p in pages {
                n += 1;
                let mine = crate::mmu::walk_from(mem, root, start, p, |_, _| {}).ok();
                let theirs = pt
                    .translate(mem, pagetable::VirtAddr::new(p))
                    .ok()
                    .flatten()
                    .map(|t| (t.pa.as_u64(), t.attrs.read_only));
                let model = v.model.get(&p).map(|e| (e.pa, e.ro));
                let mine = mine.map(|l| (l.translate(p), l.read_only));
                if mine != model || theirs != model {
                    bad += 1;
                }
            }
            let _ = mem.granule();
        }
        (n, bad)
    }

    /// Live page-table frames over all VMs (audit).
    #[must_use]
    pub fn table_frames(&self) -> usize {
        self.vms
            .iter()
            .map(|v| {
                v.vm.page_table()
                    .audit(v.vm.memory())
                    .map_or(0, |a| a.table_count())
            })
            .sum()
    }

    /// Table-frame counters summed over the VMs' pools.
    #[must_use]
    pub fn pool_stats(&self) -> crate::phys::PoolStats {
        let mut s = crate::phys::PoolStats::default();
        for v in &self.vms {
            let p = v.vm.memory().stats;
            s.allocated += p.allocated;
            s.retired += p.retired;
            s.unused += p.unused;
        }
        s
    }

    /// Maps flags helper.
    #[must_use]
    pub fn map_op(va: u64, len: u64, bo: u32, offset: u64, read_only: bool) -> BindOp {
        BindOp::Map {
            va,
            len,
            obj: ObjId::new(u64::from(bo.max(1))).unwrap_or_else(|| unreachable!()),
            offset,
            flags: MapFlags {
                read_only,
                ..MapFlags::default()
            },
        }
    }

    /// The addresses where `vm` maps object `bo` (through the object's link).
    #[must_use]
    pub fn mappings_of(&self, vm: usize, bo: u32) -> Vec<(u64, u64)> {
        let Some(obj) = ObjId::new(u64::from(bo)) else {
            return Vec::new();
        };
        let va = self.vms[vm].vm.va_space();
        va.link_mappings(obj)
            .map(|m| (m.addr(), m.length()))
            .collect()
    }
}
