//! The body of the `vmbind_jobs` fuzz target: arbitrary multi-op bind jobs through `vmbind`'s
//! public API (async batches through `queue::Submit` with in/out syncobjs, low-level
//! `BindQueue::submit` jobs waiting on user fences, synchronous binds through `queue::run_sync`),
//! with random fence signalling (successes and errors), host signals, timeouts, polls, cleanups
//! and injected allocation failures, checked against sequential execution of the jobs that
//! succeeded, in submission order, on a page-granular model.
//!
//! The `fuzz/` crate includes this file (and [`crate::failalloc`]) by path. The input format is
//! hand-written and stable (committed corpus files keep their meaning):
//!
//! * byte 0 configures the VM: bit 0 the ordering policy of synchronous binds (Fifo,
//!   RangeOrdered), bits 1-2 the queue timeout (3, 10, 40 or 1000 ticks), bit 3 the lock region,
//!   bits 4-5 the frame cap (none, 64, 16, 4 frames in flight);
//! * then every [`REC`] bytes are one record `[kind | a << 4, b, c, d]` (see [`Rec`]); a trailing
//!   partial record is ignored; at most [`MAX_RECORDS`] run.
//!
//! Async jobs of queue `q` stay in VA window `q` (queues are ordered against each other only by
//! fences, so their windows are disjoint for submission order to mean something); synchronous
//! binds touch any window and wait, under the policy, for the queued jobs they must. So running
//! the succeeded jobs one by one in submission order must give the final VM.
//!
//! Checked per record (cheap, proportional to the record): every refused `add`, `prepare` or
//! `push` changed nothing (frames in flight, frames in use, spare and claimed nodes, object
//! references, tree generation and length), and an allocation-failure refusal leaks nothing;
//! every synchronous bind returns `Ok` unless it was told to give up. At the end (and at up to
//! [`MAX_FULL_CHECKS`] `Check` records): everything drained, every job's out-fence signalled
//! exactly once, with `Ok` or a legitimate error (never a run-stage fault), jobs without waits
//! succeeded, the VA tree and the decoded page tables equal the model (compared as merged spans
//! and physically contiguous runs, so the cost is that of the mappings, not of the pages), gpuva's and
//! the tables' invariants hold, references and frames are accounted for.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ops::Range;
use std::rc::Rc;

use gpuva::ObjId;
use pagetable::{Chunk, Format, FrameAlloc, PhysAddr, VecPool};
use vmbind::queue::{run_sync, BindQueue, Policy, Submit, SubmitError, SwFence, SwSyncs};
use vmbind::{
    BindJob, BindOp, JobError, JobFence, MapFlags, Mmu, Mode, ObjRef, ObjectRegistry, PrepareError,
    SyncDesc, SyncKind, Vm, VmConfig,
};

use crate::failalloc::{self, Plan};

/// Bytes per record.
pub const REC: usize = 4;
/// Records run per input at most.
pub const MAX_RECORDS: usize = 96;
/// Full-state comparisons per input at most (besides the final one).
pub const MAX_FULL_CHECKS: usize = 1;

const PAGE: u64 = 0x1000;
const MIB2: u64 = 0x20_0000;
const QUEUES: usize = 3;
/// Pages per window (4 MiB); windows start 8 MiB apart.
const WIN_PAGES: u64 = 1024;
const VA_BASE: u64 = 0x40_0000_0000;
const OBJ_SIZE: u64 = 4 * MIB2;
const OBJ_PAGES: u64 = OBJ_SIZE / PAGE;
/// The kernel cut-out: right after the last window.
const CUT: Range<u64> = window(QUEUES).start..window(QUEUES).start + MIB2;
/// Errors user fences are signalled with.
const ERRNOS: [i32; 3] = [-22, -5, -1];
const MAX_OPS: usize = 8;
const MAX_SYNCS: usize = 4;
const MAX_HANDLES: usize = 6;
const MAX_USER: usize = 8;

const fn window(q: usize) -> Range<u64> {
    let start = VA_BASE + (q as u64) * 2 * WIN_PAGES * PAGE;
    start..start + WIN_PAGES * PAGE
}

/// One object's backing, with the offset of each chunk and the total size (so that neither a
/// size query nor a lookup by offset walks the chunks).
#[derive(Debug)]
struct Backing {
    chunks: Box<[Chunk]>,
    /// `starts[i]`: the object offset where `chunks[i]` begins.
    starts: Box<[u64]>,
    size: u64,
}

impl Backing {
    fn new(chunks: Vec<Chunk>) -> Rc<Self> {
        let mut at = 0;
        let starts = chunks
            .iter()
            .map(|c| {
                let s = at;
                at += c.len;
                s
            })
            .collect();
        Rc::new(Self {
            chunks: chunks.into(),
            starts,
            size: at,
        })
    }

    /// The index of the chunk holding byte `off`, and where that chunk begins.
    fn chunk_at(&self, off: u64) -> Option<(usize, u64)> {
        let i = self.starts.partition_point(|&s| s <= off).checked_sub(1)?;
        (off < self.size).then(|| (i, self.starts[i]))
    }
}

/// A counted object reference.
#[derive(Debug)]
pub struct Bo {
    backing: Rc<Backing>,
    live: Rc<Cell<i64>>,
}

impl Clone for Bo {
    fn clone(&self) -> Self {
        self.live.set(self.live.get() + 1);
        Self {
            backing: self.backing.clone(),
            live: self.live.clone(),
        }
    }
}

impl Drop for Bo {
    fn drop(&mut self) {
        self.live.set(self.live.get() - 1);
    }
}

impl ObjRef for Bo {
    fn size(&self) -> u64 {
        self.backing.size
    }
    fn backing(&self) -> &[Chunk] {
        &self.backing.chunks
    }
}

/// The backings of objects 1-4 and 6 (see [`Registry`]).
fn backings() -> [Rc<Backing>; 5] {
    let one = vec![Chunk::new(PhysAddr::new(0x1_0000_0000), OBJ_SIZE)];
    let two: Vec<Chunk> = (0..OBJ_SIZE / 0x1_0000)
        .map(|i| {
            Chunk::new(
                PhysAddr::new(0x2_0000_0000 + (i * 7 % 64) * 0x10_0000),
                0x1_0000,
            )
        })
        .collect();
    let mut three = vec![Chunk::new(PhysAddr::new(0x3_0000_0000), MIB2)];
    three.extend(
        (0..(OBJ_SIZE - MIB2) / PAGE)
            .map(|i| Chunk::new(PhysAddr::new(0x3_8000_0000 + i * 2 * PAGE), PAGE)),
    );
    let four = vec![Chunk::new(PhysAddr::new(0x4_0000_1000), OBJ_SIZE)];
    // Beyond the 40-bit output-address width.
    let six = vec![Chunk::new(PhysAddr::new(1 << 41), OBJ_SIZE)];
    [one, two, three, four, six].map(Backing::new)
}

thread_local! {
    /// Built once per thread: the backings are immutable, so every input shares them.
    static BACKINGS: [Rc<Backing>; 5] = backings();
}

/// Objects 1-4 (different physical layouts, 4 MiB each), 6 (a backing the tables refuse); any
/// other id fails the lookup.
#[derive(Debug)]
pub struct Registry {
    objs: [Rc<Backing>; 5],
    live: Rc<Cell<i64>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// The registry of the fuzz target (its own reference count, the thread's shared backings).
    #[must_use]
    pub fn new() -> Self {
        Self {
            objs: BACKINGS.with(Clone::clone),
            live: Rc::new(Cell::new(0)),
        }
    }

    fn backing_of(&self, obj: u64) -> Option<&Rc<Backing>> {
        match obj {
            1..=4 => self.objs.get(usize::try_from(obj - 1).ok()?),
            6 => self.objs.get(4),
            _ => None,
        }
    }

    /// Object references alive (handed out and not dropped).
    #[must_use]
    pub fn live(&self) -> i64 {
        self.live.get()
    }

    /// The physical address of byte `off` of `obj`.
    ///
    /// # Panics
    ///
    /// If `obj` does not exist or `off` is beyond it.
    #[must_use]
    pub fn pa(&self, obj: u64, off: u64) -> u64 {
        let b = self.backing_of(obj).expect("a mapped object exists");
        let (i, start) = b
            .chunk_at(off)
            .unwrap_or_else(|| panic!("offset {off:#x} beyond object {obj}"));
        b.chunks[i].pa.as_u64() + (off - start)
    }
}

impl ObjectRegistry for Registry {
    type Ref = Bo;
    type Error = &'static str;
    fn get(&mut self, obj: ObjId) -> Result<Bo, &'static str> {
        let backing = self.backing_of(obj.get()).ok_or("no such object")?.clone();
        self.live.set(self.live.get() + 1);
        Ok(Bo {
            backing,
            live: self.live.clone(),
        })
    }
}

/// An MMU whose invalidations complete at once; counts signalling sections.
#[derive(Debug, Default)]
pub struct NoAs {
    depth: u32,
}

impl pagetable::TlbInvalidate for NoAs {
    type Error = ();
    fn invalidate(&mut self, _: Range<u64>, _: bool) -> Result<(), ()> {
        Ok(())
    }
}

impl pagetable::UpdateHooks for NoAs {
    fn break_before_make(&mut self, _: Range<u64>) {}
}

impl Mmu for NoAs {
    fn begin_signalling(&mut self) {
        self.depth += 1;
    }
    fn end_signalling(&mut self) {
        self.depth -= 1;
    }
}

/// The VM type of the target.
pub type FVm = Vm<Bo, VecPool, NoAs, SwFence>;

/// A VM as the target makes it from configuration byte `cfg` (see the module docs), and the
/// queue timeout that byte selects.
///
/// # Panics
///
/// Never (the geometry is fixed and valid).
#[must_use]
pub fn new_vm(cfg: u8) -> (FVm, u64) {
    new_vm_with_frames(cfg, 0)
}

/// [`new_vm`] over a frame pool that already created `frames` frames (free again), so that
/// jobs needing fewer never make it grow its storage.
///
/// # Panics
///
/// If the host cannot allocate the frames.
#[must_use]
pub fn new_vm_with_frames(cfg: u8, frames: usize) -> (FVm, u64) {
    let fmt: Format = Format::panthor(48)
        .and_then(|f| f.with_oa_bits(40))
        .expect("panthor format");
    let mut pool = VecPool::new(fmt.granule(), PhysAddr::new(0x80_0000_0000 >> 2)).expect("pool");
    let got: Vec<PhysAddr> = (0..frames)
        .map(|_| pool.alloc_frame().expect("host memory"))
        .collect();
    for pa in got {
        pool.free_frame(pa).expect("own frame");
    }
    let mut config = VmConfig::new(fmt, 0x1000..1 << 47);
    config.cut_out = CUT;
    config.lock_region = cfg & 8 != 0;
    config.frame_cap = [u64::MAX, 64, 16, 4][usize::from((cfg >> 4) & 3)];
    let timeout = [3, 10, 40, 1000][usize::from((cfg >> 1) & 3)];
    (Vm::new(config, pool, NoAs::default()).expect("vm"), timeout)
}

/// A valid job of up to 8 ops in window `q` from a seed (maps of every object, unmaps, blocks).
#[must_use]
pub fn random_job(seed: u64, q: usize) -> Vec<BindOp> {
    let mut x = seed | 1;
    let mut ops = Vec::new();
    for _ in 0..1 + seed % 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        let kind = if b[0] % 4 == 3 { Rec::UNMAP } else { Rec::MAP };
        let r = Rec {
            kind,
            a: b[4] & 15,
            b: b[1],
            c: b[2],
            d: b[3] & 0x3f,
        };
        ops.push(decode_op(&r).place(q));
    }
    ops
}

/// A span model: start -> (end, object, offset, flags); disjoint spans.
pub type Spans = BTreeMap<u64, (u64, u64, u64, MapFlags)>;

/// A normalised span list: `(start, end, object, offset, flags)`, adjacent spans that continue
/// each other (same object and flags, contiguous offsets) merged. Comparisons cost the number of
/// spans, not of pages.
pub type SpanList = Vec<(u64, u64, u64, u64, MapFlags)>;

/// Normalises spans given in address order (see [`SpanList`]).
fn normalise(it: impl IntoIterator<Item = (u64, u64, u64, u64, MapFlags)>) -> SpanList {
    let mut out: SpanList = Vec::new();
    for (s, e, o, off, f) in it {
        if let Some(last) = out.last_mut() {
            if last.1 == s && last.2 == o && last.4 == f && last.3 + (last.1 - last.0) == off {
                last.1 = e;
                continue;
            }
        }
        out.push((s, e, o, off, f));
    }
    out
}

/// Removes `[a, b)` from `m`, splitting spans that straddle its ends.
fn spans_remove(m: &mut Spans, a: u64, b: u64) {
    if let Some((&s, &(e, o, off, f))) = m.range(..a).next_back() {
        if e > a {
            m.insert(s, (a, o, off, f));
            if e > b {
                m.insert(b, (e, o, off + (b - s), f));
            }
        }
    }
    let inside: Vec<u64> = m.range(a..b).map(|(k, _)| *k).collect();
    for k in inside {
        if let Some((e, o, off, f)) = m.remove(&k) {
            if e > b {
                m.insert(b, (e, o, off + (b - k), f));
            }
        }
    }
}

/// Applies `op` to a span model.
pub fn apply_model(m: &mut Spans, op: &BindOp) {
    match *op {
        BindOp::Map {
            va,
            len,
            obj,
            offset,
            flags,
        } => {
            spans_remove(m, va, va + len);
            m.insert(va, (va + len, obj.get(), offset, flags));
        }
        BindOp::Unmap { va, len } => spans_remove(m, va, va.saturating_add(len)),
        BindOp::SyncOnly => {}
    }
}

/// The model's spans, normalised.
#[must_use]
pub fn model_spans(m: &Spans) -> SpanList {
    normalise(m.iter().map(|(s, (e, o, off, f))| (*s, *e, *o, *off, *f)))
}

/// The VA tree of `vm` as normalised spans.
#[must_use]
pub fn tree_spans(vm: &FVm) -> SpanList {
    normalise(vm.va_space().iter().map(|v| {
        let obj = v.obj().map_or(0, ObjId::get);
        let bits = v.flags().bits() >> gpuva::VaFlags::USER_SHIFT;
        let flags = MapFlags {
            read_only: bits & 1 != 0,
            no_exec: bits & 2 != 0,
            uncached: bits & 4 != 0,
        };
        (v.addr(), v.end(), obj, v.offset(), flags)
    }))
}

pub use crate::leaf_runs::Runs;
use crate::leaf_runs::{leaf_runs, push_run};

/// The page-table leaves of `vm` over the three windows, as merged runs (clipped to the windows):
/// one descent per window that decodes one descriptor per run ([`crate::leaf_runs`]).
///
/// # Panics
///
/// If a table frame does not resolve or holds a descriptor the format never writes.
#[must_use]
pub fn table_runs(vm: &FVm) -> Runs {
    let fmt = vm.config().format;
    let mut out = Runs::new();
    for q in 0..QUEUES {
        leaf_runs(
            &fmt,
            vm.memory(),
            vm.page_table().root(),
            &window(q),
            &mut out,
        );
    }
    out
}

/// What the tables must hold for the model `m`, as merged runs.
///
/// # Panics
///
/// If a span names a missing object or runs beyond it.
#[must_use]
pub fn model_runs(m: &Spans, reg: &Registry) -> Runs {
    let mut out = Runs::new();
    for (&s, &(e, obj, off, f)) in m {
        let attrs = f.attrs();
        let b = reg.backing_of(obj).expect("a mapped object exists");
        let (first, _) = b.chunk_at(off).expect("model span within its object");
        let mut va = s;
        for (c, &c0) in b.chunks[first..].iter().zip(&b.starts[first..]) {
            if va >= e {
                break;
            }
            let from = off + (va - s);
            let take = (c0 + c.len - from).min(e - va);
            push_run(&mut out, va, va + take, c.pa.as_u64() + (from - c0), attrs);
            va += take;
        }
        assert_eq!(va, e, "model span beyond its object");
    }
    out
}

/// One decoded record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rec {
    /// Low nibble of byte 0: what to do (see [`run`]'s match).
    pub kind: u8,
    /// High nibble of byte 0.
    pub a: u8,
    /// Byte 1.
    pub b: u8,
    /// Byte 2.
    pub c: u8,
    /// Byte 3.
    pub d: u8,
}

impl Rec {
    /// Record kinds.
    pub const MAP: u8 = 0;
    /// An unmap op.
    pub const UNMAP: u8 = 3;
    /// A sync-only op, or an invalid op (`a` picks which).
    pub const ODD_OP: u8 = 4;
    /// An in-sync for the pending job.
    pub const IN_SYNC: u8 = 5;
    /// An out-sync for the pending job.
    pub const OUT_SYNC: u8 = 6;
    /// Adds the pending job to the batch (`a & 1`: as a synchronous job, refused).
    pub const ADD: u8 = 7;
    /// Prepares the batch's jobs (`Submit::add`) and pushes it to queue `a % 3`.
    pub const PUSH: u8 = 8;
    /// The pending ops as a synchronous bind (`run_sync`); `b` injects an allocation failure.
    pub const SYNC: u8 = 9;
    /// The pending ops through `Vm::prepare` and `BindQueue::submit` on queue `a % 3`, waiting on
    /// user fences and earlier jobs; `b` injects an allocation failure.
    pub const DIRECT: u8 = 10;
    /// Signals a user fence (`a & 1 == 0`) or host-signals a syncobj.
    pub const SIGNAL: u8 = 11;
    /// Polls queue `a % 4` (3: all).
    pub const POLL: u8 = 12;
    /// Advances the clock by `b`.
    pub const TICK: u8 = 13;
    /// Creates a syncobj (`a & 1`: timeline) and a user fence.
    pub const CREATE: u8 = 14;
    /// Cleans up, and compares the full state (a few times per input).
    pub const CHECK: u8 = 15;

    /// Decodes `REC` bytes.
    #[must_use]
    pub fn from_bytes(b: &[u8]) -> Self {
        Self {
            kind: b[0] & 15,
            a: b[0] >> 4,
            b: b[1],
            c: b[2],
            d: b[3],
        }
    }

    /// Encodes.
    #[must_use]
    pub fn to_bytes(self) -> [u8; REC] {
        [(self.kind & 15) | (self.a << 4), self.b, self.c, self.d]
    }
}

/// A pending op: window-relative until a job places it.
#[derive(Clone, Copy, Debug)]
struct RawOp {
    op: BindOp,
    /// Whether `op` is window-relative (else absolute: an invalid op).
    relative: bool,
    /// The window a synchronous bind puts it in.
    win: usize,
}

impl RawOp {
    fn place(&self, q: usize) -> BindOp {
        if !self.relative {
            return self.op;
        }
        let base = window(q).start;
        match self.op {
            BindOp::Map {
                va,
                len,
                obj,
                offset,
                flags,
            } => BindOp::Map {
                va: va + base,
                len,
                obj,
                offset,
                flags,
            },
            BindOp::Unmap { va, len } => BindOp::Unmap { va: va + base, len },
            BindOp::SyncOnly => BindOp::SyncOnly,
        }
    }
}

fn decode_op(r: &Rec) -> RawOp {
    let win = usize::from(r.d >> 4) % QUEUES;
    let mut len_pages = match r.c {
        0..=0xBF => 1 + u64::from(r.c % 16),
        0xC0..=0xDF => (1 + u64::from(r.c % 4)) * 128,
        _ => 512,
    };
    let mut page = (u64::from(r.b) * 4 + u64::from((r.d >> 2) & 3)) % WIN_PAGES;
    if len_pages == 512 {
        page &= !511;
    }
    len_pages = len_pages.min(WIN_PAGES - page);
    let (va, len) = (page * PAGE, len_pages * PAGE);
    let rel = |op| RawOp {
        op,
        relative: true,
        win,
    };
    let abs = |op| RawOp {
        op,
        relative: false,
        win,
    };
    let obj_of = |d: u8| {
        let n = match d >> 6 {
            3 if d & 0x20 != 0 => 5 + u64::from(d & 1),
            _ => 1 + u64::from(d & 3),
        };
        ObjId::new(n).expect("non-zero")
    };
    let mut off_pages = (u64::from(r.c) * 13 + u64::from(r.b)) % (OBJ_PAGES - len_pages + 1);
    if r.a & 8 != 0 {
        off_pages &= !511;
    }
    let flags = MapFlags {
        read_only: r.a & 1 != 0,
        no_exec: r.a & 2 != 0,
        uncached: r.a & 4 != 0,
    };
    match r.kind {
        0..=2 => rel(BindOp::Map {
            va,
            len,
            obj: obj_of(r.d),
            offset: off_pages * PAGE,
            flags,
        }),
        3 => rel(BindOp::Unmap { va, len }),
        _ => {
            let obj = ObjId::new(1).expect("non-zero");
            let w = window(win).start;
            match r.a & 7 {
                0 => rel(BindOp::SyncOnly),
                1 => abs(BindOp::Unmap {
                    va: w + va + 0x800,
                    len,
                }),
                2 => abs(BindOp::Map {
                    va: w + va,
                    len: 0,
                    obj,
                    offset: 0,
                    flags,
                }),
                3 => abs(BindOp::Unmap {
                    va: u64::MAX - PAGE + 1,
                    len: 2 * PAGE,
                }),
                4 => abs(BindOp::Map {
                    va: CUT.start - PAGE,
                    len: 2 * PAGE,
                    obj,
                    offset: 0,
                    flags,
                }),
                5 => abs(BindOp::Unmap {
                    va: 1 << 47,
                    len: PAGE,
                }),
                6 => abs(BindOp::Map {
                    va: w + va,
                    len,
                    obj,
                    offset: 0x800,
                    flags,
                }),
                _ => abs(BindOp::Map {
                    va: w + va,
                    len,
                    obj,
                    offset: OBJ_SIZE - len + PAGE,
                    flags,
                }),
            }
        }
    }
}

/// One job handed to the VM, in submission order.
#[derive(Debug)]
struct Logged {
    ops: Vec<BindOp>,
    /// The out-fence (a synchronous bind: none, its result is known at once).
    fence: Option<SwFence>,
    /// A synchronous bind's result.
    result: Option<Result<(), JobError>>,
    /// Whether the job had no waits at all (then it must succeed).
    no_waits: bool,
}

impl Logged {
    fn status(&self) -> Option<Result<(), JobError>> {
        self.result
            .or_else(|| self.fence.as_ref().and_then(SwFence::status))
    }
}

/// A pending job of the batch.
#[derive(Debug)]
struct JobDesc {
    ops: Vec<RawOp>,
    ins: Vec<SyncDesc>,
    outs: Vec<SyncDesc>,
    sync_mode: bool,
}

/// What a refused call must leave unchanged (cheap to take).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Cheap {
    frames_in_flight: u64,
    frames_in_use: usize,
    spare: usize,
    claimed: usize,
    generation: u64,
    len: usize,
    links: usize,
    live: i64,
    deferred: usize,
}

fn cheap(vm: &FVm, reg: &Registry) -> Cheap {
    let va = vm.va_space();
    Cheap {
        frames_in_flight: vm.frames_in_flight(),
        frames_in_use: vm.memory().in_use(),
        spare: va.spare_nodes(),
        claimed: va.claimed_nodes(),
        generation: va.generation(),
        len: va.len(),
        links: va.links().count(),
        live: reg.live.get(),
        deferred: vm.deferred(),
    }
}

/// The allocation plan byte `b` asks for (only with the injector installed).
fn plan_of(b: u8, injector: bool) -> Option<Plan> {
    if !injector || b == 0 || b >= 0xC0 {
        return None;
    }
    Some(if b >= 0x80 {
        Plan::From(u64::from(b & 0x3f) + 1)
    } else {
        Plan::Nth(u64::from(b & 0x7f))
    })
}

/// The fuzzing state.
struct World {
    vm: FVm,
    reg: Registry,
    syncs: SwSyncs,
    /// `(handle, timeline)`.
    handles: Vec<(u32, bool)>,
    user: Vec<SwFence>,
    queues: Vec<BindQueue<Bo>>,
    policy: Policy,
    now: u64,
    log: Vec<Logged>,
    ops: Vec<RawOp>,
    ins: Vec<SyncDesc>,
    outs: Vec<SyncDesc>,
    batch: Vec<JobDesc>,
    injector: bool,
    full_checks: usize,
    stats: Stats,
}

/// What an input exercised (to show the seeds reach every path).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[expect(missing_docs, reason = "self-describing counters")]
pub struct Stats {
    pub jobs_ok: u64,
    pub jobs_failed: u64,
    pub add_refused: u64,
    pub prepare_refused: u64,
    pub injected_failures: u64,
    pub sync_binds: u64,
    pub sync_canceled: u64,
    pub timeouts: u64,
    pub in_fence_errors: u64,
    pub again: u64,
}

impl World {
    fn new(cfg: u8) -> Self {
        let (vm, timeout) = new_vm(cfg);
        Self {
            vm,
            reg: Registry::new(),
            syncs: SwSyncs::new(),
            handles: Vec::new(),
            user: Vec::new(),
            queues: (0..QUEUES).map(|_| BindQueue::new(timeout)).collect(),
            policy: if cfg & 1 == 0 {
                Policy::Fifo
            } else {
                Policy::RangeOrdered
            },
            now: 0,
            log: Vec::new(),
            ops: Vec::new(),
            ins: Vec::new(),
            outs: Vec::new(),
            batch: Vec::new(),
            injector: failalloc::installed(),
            full_checks: 0,
            stats: Stats::default(),
        }
    }

    fn sync_desc(&self, r: &Rec) -> SyncDesc {
        let n = self.handles.len();
        let i = usize::from(r.b) % (n + 1);
        let (handle, timeline) = self
            .handles
            .get(i)
            .copied()
            .unwrap_or((0xdead, r.a & 4 != 0));
        let timeline = timeline != (r.a & 2 != 0);
        let mut d = if timeline {
            SyncDesc::timeline(handle, u64::from(r.c % 9))
        } else {
            SyncDesc::binary(handle)
        };
        if d.kind == SyncKind::Binary && r.c >= 0xF0 {
            d.point = 1;
        }
        if r.a & 1 != 0 {
            d = d.wait_for_submit();
        }
        d
    }

    fn take_job(&mut self, sync_mode: bool) -> JobDesc {
        JobDesc {
            ops: std::mem::take(&mut self.ops),
            ins: std::mem::take(&mut self.ins),
            outs: std::mem::take(&mut self.outs),
            sync_mode,
        }
    }

    fn record(&mut self, r: &Rec) {
        match r.kind {
            0..=4 => {
                if self.ops.len() < MAX_OPS {
                    self.ops.push(decode_op(r));
                }
            }
            Rec::IN_SYNC => {
                if self.ins.len() < MAX_SYNCS {
                    let d = self.sync_desc(r);
                    self.ins.push(d);
                }
            }
            Rec::OUT_SYNC => {
                if self.outs.len() < MAX_SYNCS {
                    let d = self.sync_desc(r);
                    self.outs.push(d);
                }
            }
            Rec::ADD => {
                if self.batch.len() < 4 {
                    let j = self.take_job(r.a & 1 != 0);
                    self.batch.push(j);
                }
            }
            Rec::PUSH => self.push(usize::from(r.a) % QUEUES),
            Rec::SYNC => self.sync_bind(r),
            Rec::DIRECT => self.direct(r),
            Rec::SIGNAL => self.signal(r),
            Rec::POLL => {
                let q = usize::from(r.a % 4);
                for (i, queue) in self.queues.iter_mut().enumerate() {
                    if q == 3 || q == i {
                        queue.poll(&mut self.vm, self.now);
                    }
                }
            }
            Rec::TICK => self.now += 1 + u64::from(r.b),
            Rec::CREATE => {
                if self.handles.len() < MAX_HANDLES {
                    let timeline = r.a & 1 != 0;
                    let h = self.syncs.create(timeline).expect("syncobj");
                    self.handles.push((h, timeline));
                }
                if self.user.len() < MAX_USER {
                    self.user.push(SwFence::new());
                }
            }
            _ => {
                self.vm.cleanup_deferred();
                for q in &mut self.queues {
                    q.cleanup();
                }
                if self.full_checks < MAX_FULL_CHECKS {
                    self.full_checks += 1;
                    self.check_contents(false);
                }
            }
        }
    }

    /// `Submit::add` for every job of the batch, then `push`.
    fn push(&mut self, q: usize) {
        let jobs = std::mem::take(&mut self.batch);
        // `add` runs the deferred cleanups first (through prepare): do it here, so that a
        // refused `add` must change nothing at all.
        self.vm.cleanup_deferred();
        let mut batch = Submit::new(&mut self.vm, &mut self.syncs);
        let mut added = Vec::new();
        for j in jobs {
            let ops: Vec<BindOp> = j.ops.iter().map(|o| o.place(q)).collect();
            let job = BindJob {
                ops: &ops,
                in_syncs: &j.ins,
                out_syncs: &j.outs,
                mode: if j.sync_mode { Mode::Sync } else { Mode::Async },
            };
            let before = cheap_of(batch.vm(), &self.reg);
            match batch.add(&mut self.reg, &job) {
                Ok(fence) => {
                    assert!(!j.sync_mode, "a synchronous job was accepted into a batch");
                    added.push(Logged {
                        ops,
                        fence: Some(fence),
                        result: None,
                        no_waits: false,
                    });
                }
                Err(e) => {
                    if j.sync_mode {
                        assert_eq!(e, SubmitError::SyncMode);
                    }
                    if let SubmitError::Prepare(PrepareError::Again) = e {
                        self.stats.again += 1;
                    }
                    self.stats.add_refused += 1;
                    let after = cheap_of(batch.vm(), &self.reg);
                    assert_eq!(after, before, "a refused add changed something ({job:?})");
                }
            }
        }
        match batch.push(&mut self.queues[q], self.now) {
            Ok(()) => self.log.extend(added),
            Err(e) => panic!("push without injected failure: {e:?}"),
        }
    }

    /// A synchronous bind of the pending ops (each in its own window).
    fn sync_bind(&mut self, r: &Rec) {
        let raw = std::mem::take(&mut self.ops);
        self.ins.clear();
        self.outs.clear();
        let ops: Vec<BindOp> = raw.iter().map(|o| o.place(o.win)).collect();
        let job = BindJob {
            ops: &ops,
            mode: Mode::Sync,
            ..BindJob::default()
        };
        let Some(mut prepared) = self.prepare(&job, r.b) else {
            return;
        };
        let fence = SwFence::new();
        prepared.arm(fence.clone());
        self.stats.sync_binds += 1;
        let give_up = r.d == 0xff;
        let step = 1 + self.queues[0].timeout() / 2;
        let mut now = self.now;
        let user = self.user.clone();
        let mut seed = u64::from(r.c) | u64::from(r.d) << 8;
        let mut refs: Vec<&mut BindQueue<Bo>> = self.queues.iter_mut().collect();
        let res = run_sync(&mut self.vm, &mut refs, self.policy, prepared, now, |_| {
            if give_up {
                return None;
            }
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let pending: Vec<&SwFence> = user.iter().filter(|f| f.status().is_none()).collect();
            let pick = (seed >> 33) as usize;
            if !pending.is_empty() && !pick.is_multiple_of(3) {
                let mut f = pending[pick % pending.len()].clone();
                let e = ERRNOS[(pick >> 8) % ERRNOS.len()];
                f.signal(if pick.is_multiple_of(5) {
                    Err(JobError::InFence(e))
                } else {
                    Ok(())
                });
            } else {
                now += step;
            }
            Some(now)
        });
        self.now = self.now.max(now);
        if give_up {
            assert!(
                res == Ok(()) || res == Err(JobError::Canceled),
                "sync bind: {res:?}"
            );
        } else {
            assert_eq!(res, Ok(()), "a synchronous bind failed");
        }
        if res == Err(JobError::Canceled) {
            self.stats.sync_canceled += 1;
        }
        assert_eq!(fence.status(), Some(res));
        self.log.push(Logged {
            ops,
            fence: Some(fence),
            result: Some(res),
            no_waits: false,
        });
    }

    /// `Vm::prepare`, optionally under an injected allocation failure; a refusal must leave
    /// everything unchanged and leak nothing.
    fn prepare(
        &mut self,
        job: &BindJob<'_>,
        inject: u8,
    ) -> Option<vmbind::PreparedJob<Bo, SwFence>> {
        // Prepare runs the deferred cleanups first: do it here, so it changes nothing below.
        self.vm.cleanup_deferred();
        let before = cheap(&self.vm, &self.reg);
        let created = self.vm.memory().created();
        let plan = plan_of(inject, self.injector);
        let (res, report) = failalloc::with_plan(plan.unwrap_or(Plan::Never), || {
            match self.vm.prepare(&mut self.reg, job) {
                Ok(p) => Ok(p),
                Err(e) => {
                    let nomem = e == PrepareError::NoMemory;
                    let again = e == PrepareError::Again;
                    Err((nomem, again, failalloc::report()))
                }
            }
        });
        match res {
            Ok(p) => Some(p),
            Err((nomem, again, at_err)) => {
                self.stats.again += u64::from(again);
                assert_eq!(
                    cheap(&self.vm, &self.reg),
                    before,
                    "a refused prepare changed something ({job:?})"
                );
                if plan.is_some() {
                    assert!(
                        nomem || report.failed == 0,
                        "an allocation failure was reported as something else"
                    );
                    if report.failed > 0 {
                        self.stats.injected_failures += 1;
                    }
                    // A refused prepare gives back whatever it allocated: unless the frame pool
                    // (the driver's allocator) created frames, which stay in it as free frames,
                    // not one heap block may remain. (The pool may still have grown its storage
                    // in place, by bytes, for a frame it then failed to create: no block.)
                    if self.vm.memory().created() == created {
                        assert_eq!(
                            at_err.net_blocks, 0,
                            "a refused prepare kept heap blocks ({job:?}, {plan:?}): {at_err:?}"
                        );
                    }
                } else {
                    assert!(!nomem, "NoMemory without an injected failure");
                }
                self.stats.prepare_refused += 1;
                None
            }
        }
    }

    /// The pending ops through the low-level queue entry, waiting on user fences and earlier
    /// jobs' out-fences.
    fn direct(&mut self, r: &Rec) {
        let q = usize::from(r.a) % QUEUES;
        let raw = std::mem::take(&mut self.ops);
        self.ins.clear();
        self.outs.clear();
        let ops: Vec<BindOp> = raw.iter().map(|o| o.place(q)).collect();
        let Some(mut prepared) = self.prepare(&BindJob::new(&ops), r.b) else {
            return;
        };
        let fence = SwFence::new();
        prepared.arm(fence.clone());
        let mut waits = Vec::new();
        for i in 0..usize::from(r.c & 3) {
            let sel = usize::from(r.c >> 2) + i * 7;
            if r.d & (1 << i) != 0 && !self.log.is_empty() {
                if let Some(f) = &self.log[sel % self.log.len()].fence {
                    waits.push(f.clone());
                }
            } else if !self.user.is_empty() {
                waits.push(self.user[sel % self.user.len()].clone());
            }
        }
        let no_waits = waits.is_empty();
        match self.queues[q].submit(prepared, waits, self.now) {
            Ok(()) => self.log.push(Logged {
                ops,
                fence: Some(fence),
                result: None,
                no_waits,
            }),
            Err(_) => panic!("queue submit failed without an injected failure"),
        }
    }

    fn signal(&mut self, r: &Rec) {
        if r.a & 1 == 0 {
            if !self.user.is_empty() {
                let i = usize::from(r.b) % self.user.len();
                let res = if r.c.is_multiple_of(4) {
                    Err(JobError::InFence(
                        ERRNOS[usize::from(r.c >> 2) % ERRNOS.len()],
                    ))
                } else {
                    Ok(())
                };
                self.user[i].signal(res);
            }
        } else if !self.handles.is_empty() {
            let (h, timeline) = self.handles[usize::from(r.b) % self.handles.len()];
            let point = if timeline { u64::from(r.c % 9) } else { 0 };
            if let Some(obj) = self.syncs.get(h) {
                let _ = obj.host_signal(point);
            }
        }
    }

    /// The VA tree and the decoded tables equal the model of every succeeded job (jobs still
    /// running are not finished: only called when none is queued, or with the pending ones
    /// excluded by status).
    fn check_contents(&self, audit: bool) {
        if self.queues.iter().any(|q| !q.is_empty()) {
            return;
        }
        let va = self.vm.va_space();
        if let Err(e) = va.check_invariants() {
            panic!("gpuva invariants: {e}");
        }
        let mut model = Spans::new();
        for l in &self.log {
            if l.status() == Some(Ok(())) {
                for op in &l.ops {
                    apply_model(&mut model, op);
                }
            }
        }
        assert_eq!(
            tree_spans(&self.vm),
            model_spans(&model),
            "VA tree != sequential execution"
        );
        assert_eq!(
            table_runs(&self.vm),
            model_runs(&model, &self.reg),
            "page tables != sequential execution"
        );
        if !audit {
            return;
        }
        let audit = self
            .vm
            .page_table()
            .audit(self.vm.memory())
            .expect("table audit");
        if self.vm.deferred() == 0 && self.vm.frames_in_flight() == 0 {
            // The VM keeps unused reserved frames (zeroed) for later jobs: in use = tables + spare.
            assert_eq!(
                self.vm.memory().in_use(),
                audit.table_count() + self.vm.spare_frames(),
                "frames in use != tables + spare frames"
            );
        }
    }

    /// Drains everything and checks the final state.
    fn finish(mut self) -> Stats {
        // Jobs left in the batch are never pushed (the ioctl was abandoned).
        self.batch.clear();
        let big = 1 + 4 * self.queues[0].timeout();
        for _ in 0..=self.log.len() + 1 {
            if self.queues.iter().all(BindQueue::is_empty) {
                break;
            }
            self.now += big;
            for q in &mut self.queues {
                q.poll(&mut self.vm, self.now);
            }
        }
        assert!(
            self.queues.iter().all(BindQueue::is_empty),
            "queues did not drain past every timeout"
        );
        self.vm.cleanup_deferred();
        for q in &mut self.queues {
            q.cleanup();
        }
        for (i, l) in self.log.iter().enumerate() {
            let f = l.fence.as_ref().expect("every job has a fence");
            assert_eq!(f.signal_count(), 1, "job {i}: out-fence signalled once");
            match l.status().expect("signalled") {
                Ok(()) => self.stats.jobs_ok += 1,
                Err(e) => {
                    self.stats.jobs_failed += 1;
                    assert!(!l.no_waits, "job {i} without waits failed: {e:?}");
                    match e {
                        JobError::Timeout => self.stats.timeouts += 1,
                        JobError::Canceled => {}
                        JobError::InFence(n) => {
                            assert!(
                                ERRNOS.contains(&n) || n == -110 || n == -125,
                                "job {i}: in-fence error {n} nobody signalled"
                            );
                            self.stats.in_fence_errors += 1;
                        }
                        other => panic!("job {i} failed with {other:?}"),
                    }
                }
            }
        }
        assert!(!self.vm.is_unusable(), "the VM became unusable");
        assert_eq!(self.vm.frames_in_flight(), 0);
        assert_eq!(self.vm.va_space().claimed_nodes(), 0);
        assert_eq!(self.vm.mmu().depth, 0, "signalling sections balanced");
        self.check_contents(true);
        let links = i64::try_from(self.vm.va_space().links().count()).unwrap_or(i64::MAX);
        assert_eq!(
            self.reg.live.get(),
            links,
            "one reference per linked object"
        );
        let reg_live = self.reg.live.clone();
        drop(self.queues);
        drop(self.vm);
        assert_eq!(reg_live.get(), 0, "every reference dropped with the VM");
        self.stats
    }
}

fn cheap_of(vm: &FVm, reg: &Registry) -> Cheap {
    cheap(vm, reg)
}

/// Runs one fuzz input; panics on any violated invariant, never on a bad job.
pub fn run(data: &[u8]) {
    let _ = run_stats(data);
}

/// [`run`], returning what it exercised (`None` for an empty input).
pub fn run_stats(data: &[u8]) -> Option<Stats> {
    let (&cfg, rest) = data.split_first()?;
    let mut w = World::new(cfg);
    for chunk in rest.chunks_exact(REC).take(MAX_RECORDS) {
        w.record(&Rec::from_bytes(chunk));
    }
    Some(w.finish())
}

fn rec(kind: u8, a: u8, b: u8, c: u8, d: u8) -> Rec {
    Rec { kind, a, b, c, d }
}

fn encode(cfg: u8, recs: &[Rec]) -> Vec<u8> {
    let mut out = vec![cfg];
    for r in recs {
        out.extend_from_slice(&r.to_bytes());
    }
    out
}

/// The committed seed corpus: hand-written scenarios for every path, then deterministic random
/// record streams.
#[must_use]
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let map = |b, c, d| rec(Rec::MAP, 0, b, c, d);
    let unmap = |b, c| rec(Rec::UNMAP, 0, b, c, 0);
    let create = |timeline: bool| rec(Rec::CREATE, u8::from(timeline), 0, 0, 0);
    let direct = |q, inject, c, d| rec(Rec::DIRECT, q, inject, c, d);
    let sync = |inject, c, d| rec(Rec::SYNC, 0, inject, c, d);
    let add = rec(Rec::ADD, 0, 0, 0, 0);
    let push = |q| rec(Rec::PUSH, q, 0, 0, 0);
    let poll_all = rec(Rec::POLL, 3, 0, 0, 0);
    let check = rec(Rec::CHECK, 0, 0, 0, 0);
    let in_sync = |h, point, wfs: bool| rec(Rec::IN_SYNC, u8::from(wfs), h, point, 0);
    let out_sync = |h, point| rec(Rec::OUT_SYNC, 0, h, point, 0);
    let signal_user = |i, c| rec(Rec::SIGNAL, 0, i, c, 0);
    let host = |h, point| rec(Rec::SIGNAL, 1, h, point, 0);
    let tick = |n| rec(Rec::TICK, 0, n, 0, 0);
    let mut out: Vec<(String, Vec<u8>)> = vec![
        (
            "direct_map_unmap".into(),
            encode(
                0,
                &[
                    map(4, 3, 1),
                    map(40, 0xC1, 2),
                    unmap(5, 2),
                    direct(0, 0, 0, 0),
                    poll_all,
                    check,
                ],
            ),
        ),
        (
            "block_maps_every_object".into(),
            encode(
                0,
                &[
                    map(0, 0xE0, 0),
                    map(128, 0xE0, 1),
                    direct(1, 0, 0, 0),
                    map(0, 0xE0, 2),
                    map(128, 0xE0, 3),
                    direct(2, 0, 0, 0),
                    poll_all,
                    check,
                    unmap(64, 0xC2),
                    direct(1, 0, 0, 0),
                    poll_all,
                ],
            ),
        ),
        (
            "batch_timeline_chain".into(),
            encode(
                2,
                &[
                    create(true),
                    map(8, 15, 1),
                    out_sync(0, 1),
                    add,
                    unmap(9, 1),
                    in_sync(0, 1, false),
                    out_sync(0, 2),
                    add,
                    push(0),
                    poll_all,
                    check,
                ],
            ),
        ),
        (
            "batch_binary_and_errors".into(),
            encode(
                4,
                &[
                    create(false),
                    create(true),
                    map(1, 1, 1),
                    out_sync(0, 0),
                    add,
                    map(2, 1, 2),
                    in_sync(0, 0, false),
                    in_sync(7, 0, false),
                    add,
                    map(3, 1, 3),
                    in_sync(1, 5, false),
                    add,
                    map(3, 1, 3),
                    in_sync(1, 5, true),
                    out_sync(1, 6),
                    add,
                    rec(Rec::ADD, 1, 0, 0, 0),
                    push(1),
                    tick(50),
                    poll_all,
                    host(1, 5),
                    poll_all,
                ],
            ),
        ),
        (
            "user_fence_errors_and_timeouts".into(),
            encode(
                2,
                &[
                    create(false),
                    create(false),
                    create(false),
                    map(10, 20, 0),
                    direct(0, 0, 3, 0),
                    map(20, 20, 1),
                    direct(0, 0, 0x05, 0),
                    map(30, 5, 2),
                    direct(1, 0, 0x0a, 0),
                    signal_user(0, 1),
                    signal_user(1, 0),
                    poll_all,
                    tick(20),
                    poll_all,
                    check,
                ],
            ),
        ),
        (
            "job_waits_on_job".into(),
            encode(
                6,
                &[
                    create(false),
                    map(10, 20, 0),
                    direct(0, 0, 1, 0),
                    map(10, 20, 1),
                    direct(1, 0, 1, 1),
                    signal_user(0, 1),
                    poll_all,
                    poll_all,
                    check,
                ],
            ),
        ),
        (
            "sync_binds_fifo".into(),
            encode(
                2,
                &[
                    create(false),
                    map(10, 20, 0),
                    direct(0, 0, 1, 0),
                    map(12, 3, 0x11),
                    unmap(50, 4),
                    sync(0, 7, 9),
                    map(100, 3, 0x20),
                    sync(0, 1, 2),
                    check,
                ],
            ),
        ),
        (
            "sync_binds_range_ordered".into(),
            encode(
                3,
                &[
                    create(false),
                    map(10, 20, 0),
                    direct(0, 0, 1, 0),
                    map(13, 3, 0x00),
                    sync(0, 3, 0xff),
                    map(100, 3, 0x10),
                    sync(0, 1, 2),
                    map(12, 3, 0x00),
                    sync(0, 3, 4),
                    check,
                ],
            ),
        ),
        (
            "invalid_ops".into(),
            encode(
                0,
                &(0..8)
                    .flat_map(|a| [rec(Rec::ODD_OP, a, 3, 2, 0), direct(0, 0, 0, 0)])
                    .chain([map(1, 1, 0xE0), direct(0, 0, 0, 0), map(1, 1, 0xE1)])
                    .chain([direct(0, 0, 0, 0), poll_all, check])
                    .collect::<Vec<_>>(),
            ),
        ),
        (
            "frame_cap_again".into(),
            encode(
                0x30,
                &[
                    create(false),
                    map(0, 3, 0),
                    map(200, 3, 1),
                    direct(0, 0, 1, 0),
                    map(0, 3, 0),
                    direct(1, 0, 1, 0),
                    map(0, 3, 2),
                    direct(2, 0, 1, 0),
                    map(100, 3, 3),
                    direct(2, 0, 1, 0),
                    signal_user(0, 1),
                    poll_all,
                    map(100, 3, 3),
                    direct(2, 0, 1, 0),
                    poll_all,
                    check,
                ],
            ),
        ),
        (
            "lock_region".into(),
            encode(
                8,
                &[
                    map(3, 0xC3, 0),
                    direct(2, 0, 0, 0),
                    unmap(5, 9),
                    sync(0, 0, 0),
                ],
            ),
        ),
    ];
    // Allocation failures in prepare: the k-th allocation, and from the k-th on.
    for k in [1u8, 2, 3, 5, 8, 13, 0x81, 0x83] {
        out.push((
            format!("inject_{k:02x}"),
            encode(
                0,
                &[
                    map(4, 3, 1),
                    map(40, 0xC1, 2),
                    unmap(5, 2),
                    direct(0, k, 0, 0),
                    map(4, 3, 3),
                    map(100, 3, 0x10),
                    sync(k, 0, 0),
                    poll_all,
                    check,
                ],
            ),
        ));
    }
    // Deterministic random streams.
    let mut x = 0x5eed_0b1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..24u8 {
        let mut bytes = vec![i];
        let n = 16 + next() % 48;
        for _ in 0..n {
            let v = next();
            let mut r = Rec::from_bytes(&v.to_le_bytes()[..REC]);
            // Keep injection rare and most records meaningful.
            if matches!(r.kind, Rec::SYNC | Rec::DIRECT) && r.b >= 0x20 {
                r.b = 0;
            }
            bytes.extend_from_slice(&r.to_bytes());
        }
        out.push((format!("random_{i:02}"), bytes));
    }
    out
}
