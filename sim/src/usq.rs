//! CSF-style user submission: user-mode queues, native syncobjs in GPU-visible memory, and the
//! cross-group-sync (XGS) queue that bridges them and the kernel's fences; plus the two checks
//! over everything pending (dependency cycles and the indefinite-fence rule).
//!
//! # The model
//!
//! * A **native syncobj** is two 8-byte words in a buffer object that the GPU maps: a value
//!   (64-bit, or 32-bit with the upper half ignored and arithmetic wrapping at 2^32) and a
//!   status (non-zero: an error was signalled through it). User queues reach it through their
//!   VM's GPU address, every access going through the MMU and checked like any other; the
//!   kernel (the XGS queue, the simulated host) reaches it through its own CPU mapping.
//! * A **user queue** is a ring of [`UserCmd`]s that the simulated userspace fills directly,
//!   without a system call, then kicks (the doorbell). The firmware runs a kicked queue from its
//!   head: a [`UserCmd::Wait`] blocks until its [`Cond`] holds (re-evaluated every step), a
//!   [`UserCmd::Sync`] sets or adds, a [`UserCmd::Run`] is a GPU job whose accesses spread over
//!   steps (while it runs, every page it touches counts as *in flight* for the MMU: a block
//!   split there must be stalled by a lock region). A wait that reads an error status, or an access
//!   to a syncobj that faults, faults the queue: its remaining commands are dropped.
//! * The **XGS queue** holds kernel operations in both directions: [`World::xgs_wait`] turns
//!   a native condition into a kernel fence (so a VM_BIND job can wait on user-queue work), and
//!   [`World::xgs_signal`] sets or adds to a native syncobj once kernel fences have signalled
//!   (so a user queue can wait on a bind). A wait that does not hold within the XGS timeout
//!   signals its fence with an error; a signal whose fences failed writes the value and an
//!   error status. The operations are independent: ordering comes from their fences.
//!
//! # The checks
//!
//! Every fence the world creates records what it waits on ([`Dep`]). A native condition
//! depends, in each user queue, on the first pending command that would make it hold (its
//! effect simulated from the current value in ring order), and on pending XGS signals that
//! would; a queued command depends on the command before it and, for a wait, on its
//! condition. Over that graph of pending work:
//! * a **cycle** through at least one kernel fence is a hazard (counted once per cycle): only
//!   a timeout can end it;
//! * a **bind job** (memory management: eviction and the shrinker wait on bind fences) whose
//!   dependencies reach an XGS wait without a timeout is an **indefinite fence** hazard: a
//!   kernel fence would then depend on user-queue progress with no bound.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;

use vmbind::queue::SwFence;
use vmbind::{JobError, JobFence as _};

use crate::world::{Access, World};

/// A wait condition on a native syncobj's value (CSF `SYNC_WAIT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cond {
    /// Until the value is greater than this.
    Gt(u64),
    /// Until the value is less than or equal to this.
    Le(u64),
}

const fn mask(v: u64, wide: bool) -> u64 {
    if wide {
        v
    } else {
        v & 0xFFFF_FFFF
    }
}

impl Cond {
    /// Whether `value` satisfies the condition, at the syncobj's width (`wide`: 64-bit).
    #[must_use]
    pub const fn holds(self, value: u64, wide: bool) -> bool {
        match self {
            Self::Gt(x) => mask(value, wide) > mask(x, wide),
            Self::Le(x) => mask(value, wide) <= mask(x, wide),
        }
    }
}

/// An update of a native syncobj (CSF `SYNC_SET` / `SYNC_ADD`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncOp {
    /// Store the value.
    Set(u64),
    /// Add the value (wrapping at the syncobj's width; add `u64::MAX` to subtract one).
    Add(u64),
}

impl SyncOp {
    /// The new value from `old`.
    #[must_use]
    pub const fn apply(self, old: u64, wide: bool) -> u64 {
        match self {
            Self::Set(x) => mask(x, wide),
            Self::Add(x) => mask(old.wrapping_add(x), wide),
        }
    }
}

/// A native syncobj.
#[derive(Clone, Debug)]
pub struct NativeSync {
    /// The object holding it.
    pub bo: u32,
    /// Offset of the value word in the object (the status word follows it).
    pub off: u64,
    /// 64-bit (else 32-bit).
    pub wide: bool,
    /// Where each VM maps it: (VM index, GPU address of the value word).
    pub views: Vec<(usize, u64)>,
}

/// One command of a user queue's ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserCmd {
    /// Block until the syncobj's value satisfies the condition.
    Wait {
        /// Native syncobj index.
        sync: usize,
        /// Condition.
        cond: Cond,
    },
    /// Set or add.
    Sync {
        /// Native syncobj index.
        sync: usize,
        /// Update.
        op: SyncOp,
    },
    /// A GPU job: its accesses, `per_step` of them each step.
    Run {
        /// Accesses through the queue's VM.
        accesses: Vec<Access>,
        /// Accesses per simulated step (at least 1).
        per_step: usize,
    },
}

#[derive(Debug)]
struct UserQueue {
    vm: usize,
    ring: VecDeque<UserCmd>,
    cap: usize,
    kicked: bool,
    faulted: bool,
    /// Progress of the head `Run`.
    pos: usize,
    /// The head `Wait` has blocked at least once.
    blocked: bool,
}

#[derive(Debug)]
enum XgsKind {
    Wait {
        sync: usize,
        cond: Cond,
        deadline: Option<u64>,
    },
    Signal {
        waits: Vec<SwFence>,
        sync: usize,
        op: SyncOp,
    },
}

#[derive(Debug)]
struct XgsOp {
    kind: XgsKind,
    fence: SwFence,
}

/// The world's user-submission state.
#[derive(Debug, Default)]
pub(crate) struct UserSide {
    natives: Vec<NativeSync>,
    queues: Vec<UserQueue>,
    xgs: Vec<XgsOp>,
    /// Something was submitted since the last dependency check.
    pub(crate) graph_dirty: bool,
    scratch: Vec<Range<u64>>,
}

impl UserSide {
    /// Nothing left to run: every live queue empty, no XGS operation pending.
    pub(crate) fn idle(&self) -> bool {
        self.xgs.is_empty() && self.queues.iter().all(|q| q.faulted || q.ring.is_empty())
    }
}

/// What a kernel fence waits on.
#[derive(Clone, Debug)]
pub enum Dep {
    /// Another fence.
    Fence(SwFence),
    /// A native syncobj condition (user-queue progress).
    Native(usize, Cond),
}

/// Who signals a kernel fence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceKind {
    /// A VM_BIND job (async or sync).
    Bind,
    /// A kernel-queued GPU job.
    Gpu,
    /// An XGS wait: signals when a native condition holds; `bounded` if it has a timeout.
    XgsWait {
        /// Has a timeout.
        bounded: bool,
    },
    /// An XGS signal: signals after its fences, having written the native syncobj.
    XgsSignal,
}

/// User-submission counters.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct UserStats {
    /// User queues.
    pub queues: u64,
    /// Commands written into rings by userspace.
    pub pushed: u64,
    /// Commands the firmware completed.
    pub executed: u64,
    /// Doorbell kicks.
    pub kicks: u64,
    /// Pushes refused because the ring was full (userspace waited).
    pub ring_full: u64,
    /// Waits passed, and of them those that had to block first.
    pub waits: (u64, u64),
    /// Set / add commands.
    pub sync_ops: u64,
    /// GPU jobs run from user queues.
    pub runs: u64,
    /// Queues faulted (error status or faulting syncobj access), commands dropped.
    pub faulted: (u64, u64),
    /// XGS waits, signals.
    pub xgs: (u64, u64),
    /// XGS waits that timed out.
    pub xgs_timeouts: u64,
    /// XGS operations that signalled an error.
    pub xgs_errors: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Node {
    /// A pending tracked fence (index into `World::fences`).
    F(usize),
    /// Command `i` of user queue `q`.
    U(usize, usize),
}

impl World {
    /// Declares a native syncobj at offset `off` of object `bo` (64-bit if `wide`), mapped by
    /// the VMs in `views` at the given GPU addresses; its value and status start at zero.
    /// Returns its index.
    pub fn native_sync(
        &mut self,
        bo: u32,
        off: u64,
        wide: bool,
        views: Vec<(usize, u64)>,
    ) -> usize {
        self.rec(|r| r.native(bo, off, wide, &views));
        self.user.natives.push(NativeSync {
            bo,
            off,
            wide,
            views,
        });
        let s = self.user.natives.len() - 1;
        self.native_write(s, Some(0), Some(0));
        s
    }

    /// Adds a user queue on VM `vm` whose ring holds `cap` commands; returns its index.
    pub fn add_user_queue(&mut self, vm: usize, cap: usize) -> usize {
        self.rec(|r| r.user_queue(vm, cap));
        self.user.queues.push(UserQueue {
            vm,
            ring: VecDeque::with_capacity(cap.max(1)),
            cap: cap.max(1),
            kicked: false,
            faulted: false,
            pos: 0,
            blocked: false,
        });
        self.stats.user.queues += 1;
        self.user.queues.len() - 1
    }

    /// Userspace writes a command into queue `q`'s ring (no kernel involvement).
    ///
    /// # Errors
    ///
    /// The command, handed back, if the ring is full or the queue has faulted.
    pub fn uq_push(&mut self, q: usize, cmd: UserCmd) -> Result<(), UserCmd> {
        self.rec(|r| r.push(q, &cmd));
        let u = &mut self.user.queues[q];
        if u.faulted || u.ring.len() >= u.cap {
            if !u.faulted {
                self.stats.user.ring_full += 1;
            }
            return Err(cmd);
        }
        u.ring.push_back(cmd);
        self.stats.user.pushed += 1;
        self.user.graph_dirty = true;
        Ok(())
    }

    /// Rings queue `q`'s doorbell: the firmware runs it from the next step.
    pub fn uq_kick(&mut self, q: usize) {
        self.rec(|r| r.kick(q));
        self.user.queues[q].kicked = true;
        self.stats.user.kicks += 1;
    }

    /// Commands queue `q`'s ring can still take.
    #[must_use]
    pub fn uq_space(&self, q: usize) -> usize {
        let u = &self.user.queues[q];
        u.cap - u.ring.len()
    }

    /// Whether queue `q` has faulted.
    #[must_use]
    pub fn uq_faulted(&self, q: usize) -> bool {
        self.user.queues[q].faulted
    }

    /// A native syncobj's (value, status), read through the kernel's CPU mapping.
    #[must_use]
    pub fn native_value(&self, s: usize) -> (u64, u64) {
        let n = &self.user.natives[s];
        let Some(bo) = self.handles.get(&n.bo) else {
            return (0, 1);
        };
        let p = self.phys.borrow();
        let read = |off: u64| bo.pa_of(off).map_or(0, |pa| p.read(pa));
        (mask(read(n.off), n.wide), read(n.off + 8))
    }

    /// Writes a native syncobj's value and/or status through the kernel's CPU mapping (and
    /// tells the content model, so that GPU reads are checked against it).
    pub fn native_write(&mut self, s: usize, value: Option<u64>, status: Option<u64>) {
        let n = &self.user.natives[s];
        let Some(bo) = self.handles.get(&n.bo) else {
            return;
        };
        let (id, off, wide) = (n.bo, n.off, n.wide);
        for (o, v) in [(off, value.map(|v| mask(v, wide))), (off + 8, status)] {
            let (Some(v), Some(pa)) = (v, bo.pa_of(o)) else {
                continue;
            };
            self.phys.borrow_mut().write(pa, v);
            self.content.insert((id, o & !7), v);
        }
    }

    /// An XGS wait: a kernel fence signalled once syncobj `s` satisfies `cond`, or with
    /// [`JobError::Timeout`] after the XGS timeout, or with [`JobError::Fault`] if the syncobj
    /// carries an error status.
    pub fn xgs_wait(&mut self, s: usize, cond: Cond) -> SwFence {
        let fence = SwFence::new();
        self.rec(|r| r.xgs_wait(s, cond, &fence));
        let deadline = (!self.faults.xgs_no_timeout).then(|| self.now + self.xgs_timeout);
        self.track(
            &fence,
            FenceKind::XgsWait {
                bounded: deadline.is_some(),
            },
            vec![Dep::Native(s, cond)],
        );
        self.user.xgs.push(XgsOp {
            kind: XgsKind::Wait {
                sync: s,
                cond,
                deadline,
            },
            fence: fence.clone(),
        });
        self.stats.user.xgs.0 += 1;
        fence
    }

    /// An XGS signal: once every fence of `waits` has signalled, applies `op` to syncobj `s`
    /// (with an error status if one of them failed) and signals the returned fence.
    pub fn xgs_signal(&mut self, waits: Vec<SwFence>, s: usize, op: SyncOp) -> SwFence {
        let fence = SwFence::new();
        self.rec(|r| r.xgs_signal(&waits, s, op, &fence));
        let deps = waits.iter().cloned().map(Dep::Fence).collect();
        self.track(&fence, FenceKind::XgsSignal, deps);
        self.user.xgs.push(XgsOp {
            kind: XgsKind::Signal { waits, sync: s, op },
            fence: fence.clone(),
        });
        self.stats.user.xgs.1 += 1;
        fence
    }

    /// Runs the XGS operations that can complete now.
    pub(crate) fn run_xgs(&mut self) {
        let now = self.now;
        let mut i = 0;
        while i < self.user.xgs.len() {
            let verdict = match &self.user.xgs[i].kind {
                &XgsKind::Wait {
                    sync,
                    cond,
                    deadline,
                } => {
                    let (v, status) = self.native_value(sync);
                    if status != 0 {
                        Some(Err(JobError::Fault))
                    } else if cond.holds(v, self.user.natives[sync].wide) {
                        Some(Ok(()))
                    } else if deadline.is_some_and(|d| now >= d) {
                        self.stats.user.xgs_timeouts += 1;
                        Some(Err(JobError::Timeout))
                    } else {
                        None
                    }
                }
                XgsKind::Signal { waits, sync, op } => {
                    if waits.iter().all(|f| f.status().is_some()) {
                        let err = waits.iter().find_map(|f| f.status().and_then(Result::err));
                        let (s, op) = (*sync, *op);
                        let (v, _) = self.native_value(s);
                        let new = op.apply(v, self.user.natives[s].wide);
                        self.native_write(s, Some(new), err.map(|_| 1));
                        Some(err.map_or(Ok(()), |e| Err(JobError::InFence(e.errno()))))
                    } else {
                        None
                    }
                }
            };
            match verdict {
                Some(r) => {
                    let mut op = self.user.xgs.remove(i);
                    if r.is_err() {
                        self.stats.user.xgs_errors += 1;
                    }
                    op.fence.signal(r);
                }
                None => i += 1,
            }
        }
    }

    /// A syncobj's value and status as a user queue on `vm` reads them (through the MMU).
    fn gpu_sync_read(&mut self, vm: usize, s: usize) -> Option<(u64, u64)> {
        let va = self.user.natives[s]
            .views
            .iter()
            .find(|(v, _)| *v == vm)
            .map(|&(_, va)| va)?;
        let v = self.access(vm, Access { va, write: None })?;
        let st = self.access(
            vm,
            Access {
                va: va + 8,
                write: None,
            },
        )?;
        Some((mask(v, self.user.natives[s].wide), st))
    }

    fn fault_queue(&mut self, q: usize) {
        let u = &mut self.user.queues[q];
        u.faulted = true;
        u.kicked = false;
        self.stats.user.faulted.0 += 1;
        self.stats.user.faulted.1 += u.ring.len() as u64;
        u.ring.clear();
        self.user.graph_dirty = true;
    }

    /// One step of the firmware: every kicked queue runs from its head until it blocks, its
    /// running job has used this step's share, or its ring is empty; then the MMU learns which
    /// ranges the running jobs are accessing.
    pub(crate) fn run_user_queues(&mut self) {
        for q in 0..self.user.queues.len() {
            let vm = self.user.queues[q].vm;
            if !self.user.queues[q].kicked || self.user.queues[q].faulted {
                continue;
            }
            loop {
                let Some(head) = self.user.queues[q].ring.front() else {
                    self.user.queues[q].kicked = false;
                    break;
                };
                match head {
                    &UserCmd::Wait { sync, cond } => {
                        let Some((v, status)) = self.gpu_sync_read(vm, sync) else {
                            self.fault_queue(q);
                            break;
                        };
                        if status != 0 {
                            self.fault_queue(q);
                            break;
                        }
                        if !cond.holds(v, self.user.natives[sync].wide) {
                            self.user.queues[q].blocked = true;
                            break;
                        }
                        let u = &mut self.user.queues[q];
                        self.stats.user.waits.0 += 1;
                        if std::mem::replace(&mut u.blocked, false) {
                            self.stats.user.waits.1 += 1;
                        }
                    }
                    &UserCmd::Sync { sync, op } => {
                        let Some((v, _)) = self.gpu_sync_read(vm, sync) else {
                            self.fault_queue(q);
                            break;
                        };
                        let Some(&(_, va)) =
                            self.user.natives[sync].views.iter().find(|(v, _)| *v == vm)
                        else {
                            self.fault_queue(q);
                            break;
                        };
                        let new = op.apply(v, self.user.natives[sync].wide);
                        if self
                            .access(
                                vm,
                                Access {
                                    va,
                                    write: Some(new),
                                },
                            )
                            .is_none()
                        {
                            self.fault_queue(q);
                            break;
                        }
                        self.stats.user.sync_ops += 1;
                    }
                    UserCmd::Run { accesses, per_step } => {
                        let pos = self.user.queues[q].pos;
                        let end = (pos + (*per_step).max(1)).min(accesses.len());
                        let batch: Vec<Access> = accesses[pos..end].to_vec();
                        let len = accesses.len();
                        for a in batch {
                            let _ = self.access(vm, a);
                        }
                        self.user.queues[q].pos = end;
                        if end < len {
                            break;
                        }
                        self.user.queues[q].pos = 0;
                        self.stats.user.runs += 1;
                    }
                }
                self.user.queues[q].ring.pop_front();
                self.stats.user.executed += 1;
            }
        }
        // Work in flight: the pages every started job touches (its footprint: a running
        // shader may come back to any of them until it ends).
        for vm in 0..self.vms.len() {
            let mut ranges = std::mem::take(&mut self.user.scratch);
            ranges.clear();
            for u in &self.user.queues {
                if u.vm != vm || u.pos == 0 {
                    continue;
                }
                if let Some(UserCmd::Run { accesses, .. }) = u.ring.front() {
                    let mut pages: Vec<u64> = accesses.iter().map(|a| a.va & !0xFFF).collect();
                    pages.sort_unstable();
                    pages.dedup();
                    for p in pages {
                        match ranges.last_mut() {
                            Some(r) if r.end == p => r.end = p + 0x1000,
                            _ => ranges.push(p..p + 0x1000),
                        }
                    }
                }
            }
            let id = self.vms[vm].gpu_id;
            self.gpu.borrow_mut().set_inflight(id, &ranges);
            self.user.scratch = ranges;
        }
    }

    /// The cycle and indefinite-fence checks over everything pending (when something was
    /// submitted since the last check).
    pub(crate) fn check_dependencies(&mut self) {
        if !std::mem::take(&mut self.user.graph_dirty) {
            return;
        }
        let pending: Vec<usize> = (0..self.fences.len())
            .filter(|&i| self.fences[i].fence.status().is_none())
            .collect();
        let mut succ: HashMap<Node, Vec<Node>> = HashMap::new();
        let mut cycles: Vec<Vec<usize>> = Vec::new();
        let mut color: HashMap<Node, u8> = HashMap::new();
        for &start in &pending {
            let start = Node::F(start);
            if color.contains_key(&start) {
                continue;
            }
            color.insert(start, 1);
            let mut stack: Vec<(Node, usize)> = vec![(start, 0)];
            while let Some(&(n, k)) = stack.last() {
                let next = self.successors(&pending, &mut succ, n).get(k).copied();
                let Some(m) = next else {
                    color.insert(n, 2);
                    stack.pop();
                    continue;
                };
                if let Some(top) = stack.last_mut() {
                    top.1 += 1;
                }
                match color.get(&m) {
                    None => {
                        color.insert(m, 1);
                        stack.push((m, 0));
                    }
                    Some(1) => {
                        let from = stack.iter().position(|e| e.0 == m).unwrap_or(0);
                        let fences: Vec<usize> = stack[from..]
                            .iter()
                            .filter_map(|e| match e.0 {
                                Node::F(i) => Some(i),
                                Node::U(..) => None,
                            })
                            .collect();
                        if !fences.is_empty() {
                            cycles.push(fences);
                        }
                    }
                    Some(_) => {}
                }
            }
        }
        for c in cycles {
            if c.iter().all(|&i| !self.fences[i].flagged.0) {
                self.hz.fence_cycle += 1;
            }
            for i in c {
                self.fences[i].flagged.0 = true;
            }
        }
        // Indefinite fences: bind jobs whose dependencies reach an unbounded XGS wait.
        for &b in &pending {
            if self.fences[b].kind != FenceKind::Bind || self.fences[b].flagged.1 {
                continue;
            }
            let mut seen: HashMap<Node, ()> = HashMap::new();
            let mut todo = vec![Node::F(b)];
            let mut bad = false;
            while let Some(n) = todo.pop() {
                if seen.insert(n, ()).is_some() {
                    continue;
                }
                if let Node::F(i) = n {
                    if self.fences[i].kind == (FenceKind::XgsWait { bounded: false }) {
                        bad = true;
                        break;
                    }
                }
                todo.extend_from_slice(self.successors(&pending, &mut succ, n));
            }
            if bad {
                self.fences[b].flagged.1 = true;
                self.hz.indefinite_fence += 1;
            }
        }
    }

    fn successors<'a>(
        &self,
        pending: &[usize],
        memo: &'a mut HashMap<Node, Vec<Node>>,
        n: Node,
    ) -> &'a [Node] {
        memo.entry(n).or_insert_with(|| {
            let find = |f: &SwFence| {
                pending
                    .iter()
                    .copied()
                    .find(|&i| self.fences[i].fence.ptr_eq(f))
                    .map(Node::F)
            };
            let mut out = Vec::new();
            match n {
                Node::F(i) => {
                    for d in &self.fences[i].deps {
                        match d {
                            Dep::Fence(f) => out.extend(find(f)),
                            &Dep::Native(s, c) => self.writers(pending, s, c, &mut out),
                        }
                    }
                }
                Node::U(q, i) => {
                    if i > 0 {
                        out.push(Node::U(q, i - 1));
                    }
                    if let Some(&UserCmd::Wait { sync, cond }) = self.user.queues[q].ring.get(i) {
                        self.writers(pending, sync, cond, &mut out);
                    }
                }
            }
            out
        })
    }

    /// The pending work that would make `cond` hold on syncobj `s` (nothing if it holds now).
    fn writers(&self, pending: &[usize], s: usize, cond: Cond, out: &mut Vec<Node>) {
        let wide = self.user.natives[s].wide;
        let (v, _) = self.native_value(s);
        if cond.holds(v, wide) {
            return;
        }
        for (q, u) in self.user.queues.iter().enumerate() {
            if u.faulted {
                continue;
            }
            let mut x = v;
            for (i, cmd) in u.ring.iter().enumerate() {
                if let &UserCmd::Sync { sync, op } = cmd {
                    if sync == s {
                        x = op.apply(x, wide);
                        if cond.holds(x, wide) {
                            out.push(Node::U(q, i));
                            break;
                        }
                    }
                }
            }
        }
        for op in &self.user.xgs {
            if let XgsKind::Signal { sync, op: o, .. } = &op.kind {
                if *sync == s && cond.holds(o.apply(v, wide), wide) {
                    out.extend(
                        pending
                            .iter()
                            .copied()
                            .find(|&i| self.fences[i].fence.ptr_eq(&op.fence))
                            .map(Node::F),
                    );
                }
            }
        }
    }
}
