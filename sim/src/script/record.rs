//! Recording the calls made on a world as a [`Script`] (`World::record`): replaying the script
//! makes the same calls in the same order, so the world ends the same.

use std::collections::HashMap;

use vmbind::queue::{Policy, SwFence};
use vmbind::{BindOp, JobError};

use super::{Cmd, FenceRef, Names, Op, Script, Setup, TimeoutKind};
use crate::usq::{Cond, SyncOp, UserCmd};
use crate::world::{Access, BindKind, Contiguity, World};

/// The script being recorded.
#[derive(Debug)]
pub(crate) struct Recorder {
    setup: Setup,
    names: Names,
    cmds: Vec<Cmd>,
    /// World object id -> object index.
    bo_slot: HashMap<u32, usize>,
    /// Fence index -> the fence, and whether a later command refers to it.
    fences: Vec<(SwFence, bool)>,
    nomem: usize,
    failed: Option<String>,
}

impl Recorder {
    pub(crate) fn new((memory_mib, slots): (u64, usize)) -> Self {
        Self {
            setup: Setup { memory_mib, slots },
            names: Names::default(),
            cmds: Vec::new(),
            bo_slot: HashMap::new(),
            fences: Vec::new(),
            nomem: 0,
            failed: None,
        }
    }

    fn fail(&mut self, what: String) {
        self.failed.get_or_insert(what);
    }

    /// The world's timeouts, as the script's first commands.
    pub(crate) fn timeouts(&mut self, w: &World) {
        for (kind, us) in [
            (TimeoutKind::Bind, w.bind_timeout),
            (TimeoutKind::Gpu, w.gpu_timeout),
            (TimeoutKind::Xgs, w.xgs_timeout),
            (TimeoutKind::Bound, w.fence_bound),
        ] {
            self.cmds.push(Cmd::Timeout { kind, us });
        }
    }

    pub(crate) fn vm(&mut self, name: &str, policy: Policy, lock_region: bool, queues: usize) {
        let i = self.names.vms.len();
        let clean: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let mut n = if clean.starts_with(|c: char| c.is_ascii_alphabetic()) {
            clean
        } else {
            format!("vm{clean}")
        };
        if self.names.vms.contains(&n) {
            n = format!("{n}{i}");
        }
        self.names.vms.push(n);
        let queues = queues.max(1);
        self.names.vm_queues.push(queues);
        self.cmds.push(Cmd::Vm {
            policy,
            lock_region,
            queues,
        });
    }

    pub(crate) fn gpu_queue(&mut self) {
        let n = format!("gq{}", self.names.gpu_queues.len());
        self.names.gpu_queues.push(n);
        self.cmds.push(Cmd::GpuQueue);
    }

    pub(crate) fn bo(&mut self, id: u32, size: u64, how: Contiguity, created: bool) {
        let bo = self.names.bos.len();
        if created {
            self.names.bos.push(format!("bo{id}"));
            self.bo_slot.insert(id, bo);
        } else {
            // Refused for memory: nothing refers to it (the next object gets the id).
            self.nomem += 1;
            self.names.bos.push(format!("nomem{}", self.nomem));
        }
        self.cmds.push(Cmd::Bo { bo, size, how });
    }

    fn slot(&mut self, id: u32) -> usize {
        if let Some(&s) = self.bo_slot.get(&id) {
            return s;
        }
        self.fail(format!("object {id} was not created while recording"));
        0
    }

    pub(crate) fn close(&mut self, id: u32, evicted: bool) {
        let bo = self.slot(id);
        self.cmds.push(Cmd::Close { bo, evicted });
    }

    pub(crate) fn swap_in(&mut self, id: u32, size: u64, how: Contiguity) {
        let bo = self.slot(id);
        self.cmds.push(Cmd::SwapIn { bo, size, how });
    }

    pub(crate) fn cleanup(&mut self) {
        self.cmds.push(Cmd::Cleanup);
    }

    fn bind(&mut self, f: &SwFence) -> Option<usize> {
        self.fences.push((f.clone(), false));
        Some(self.fences.len() - 1)
    }

    fn fence(&mut self, f: &SwFence) -> FenceRef {
        if let Some(i) = self.fences.iter().rposition(|(g, _)| g.ptr_eq(f)) {
            self.fences[i].1 = true;
            return FenceRef::Named(i);
        }
        self.fail("a fence the world did not hand out while recording".into());
        FenceRef::Named(0)
    }

    fn waits(&mut self, w: &[SwFence]) -> Vec<FenceRef> {
        w.iter().map(|f| self.fence(f)).collect()
    }

    fn ops(&mut self, ops: &[BindOp]) -> Vec<Op> {
        ops.iter()
            .map(|op| match *op {
                BindOp::Map {
                    va,
                    len,
                    obj,
                    offset,
                    flags,
                } => Op::Map {
                    va,
                    len,
                    bo: self.slot(u32::try_from(obj.get()).unwrap_or(u32::MAX)),
                    offset,
                    flags,
                },
                BindOp::Unmap { va, len } => Op::Unmap { va, len },
                BindOp::SyncOnly => Op::SyncOnly,
            })
            .collect()
    }

    pub(crate) fn host_fence(&mut self, handle: u32, point: u64, f: &SwFence) {
        let out = self.bind(f);
        self.cmds.push(Cmd::HostFence { handle, point, out });
    }

    pub(crate) fn signal(&mut self, f: &SwFence, result: Result<(), JobError>) {
        let fence = self.fence(f);
        self.cmds.push(Cmd::Signal {
            fence,
            error: result.err().map(JobError::errno),
        });
    }

    #[expect(clippy::too_many_arguments, reason = "World::bind_async's arguments")]
    pub(crate) fn bind_async(
        &mut self,
        vm: usize,
        queue: usize,
        ops: &[BindOp],
        waits: &[SwFence],
        out_point: Option<(u32, u64)>,
        kind: BindKind,
        f: &SwFence,
    ) {
        let ops = self.ops(ops);
        let waits = self.waits(waits);
        let out = self.bind(f);
        self.cmds.push(Cmd::BindAsync {
            vm,
            queue,
            waits,
            out_point,
            kind,
            ops,
            out,
        });
    }

    pub(crate) fn bind_sync(&mut self, vm: usize, ops: &[BindOp], kind: BindKind) {
        let ops = self.ops(ops);
        self.cmds.push(Cmd::BindSync { vm, kind, ops });
    }

    pub(crate) fn gpu(
        &mut self,
        queue: usize,
        vm: usize,
        waits: &[SwFence],
        accesses: &[Access],
        f: &SwFence,
    ) {
        let waits = self.waits(waits);
        let out = self.bind(f);
        self.cmds.push(Cmd::Gpu {
            queue,
            vm,
            waits,
            accesses: accesses.to_vec(),
            out,
        });
    }

    pub(crate) fn native(&mut self, bo: u32, off: u64, wide: bool, views: &[(usize, u64)]) {
        let bo = self.slot(bo);
        let n = format!("ns{}", self.names.natives.len());
        self.names.natives.push(n);
        self.cmds.push(Cmd::Native {
            bo,
            off,
            wide,
            views: views.to_vec(),
        });
    }

    pub(crate) fn user_queue(&mut self, vm: usize, cap: usize) {
        let n = format!("uq{}", self.names.user_queues.len());
        self.names.user_queues.push(n);
        self.cmds.push(Cmd::UserQueue {
            vm,
            cap: cap.max(1),
        });
    }

    pub(crate) fn push(&mut self, uq: usize, cmd: &UserCmd) {
        let mut cmd = cmd.clone();
        if let UserCmd::Run { per_step, .. } = &mut cmd {
            *per_step = (*per_step).max(1);
        }
        self.cmds.push(Cmd::Push { uq, cmd });
    }

    pub(crate) fn kick(&mut self, uq: usize) {
        self.cmds.push(Cmd::Kick { uq });
    }

    pub(crate) fn xgs_wait(&mut self, native: usize, cond: Cond, f: &SwFence) {
        let out = self.bind(f);
        self.cmds.push(Cmd::XgsWait { native, cond, out });
    }

    pub(crate) fn xgs_signal(&mut self, waits: &[SwFence], native: usize, op: SyncOp, f: &SwFence) {
        let waits = self.waits(waits);
        let out = self.bind(f);
        self.cmds.push(Cmd::XgsSignal {
            waits,
            native,
            op,
            out,
        });
    }

    pub(crate) fn step(&mut self, dt: u64) {
        if let Some(Cmd::Step { dt: d, count }) = self.cmds.last_mut() {
            if *d == dt && *count < super::parse::MAX_STEP_COUNT {
                *count += 1;
                return;
            }
        }
        self.cmds.push(Cmd::Step { dt, count: 1 });
    }

    pub(crate) fn drain(&mut self, dt: u64, limit: u64) {
        self.cmds.push(Cmd::Drain { dt, limit });
    }

    /// The script, with names kept only for the fences later commands refer to.
    pub(crate) fn finish(mut self) -> Result<Script, String> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let mut new = Vec::with_capacity(self.fences.len());
        for (_, used) in &self.fences {
            if *used {
                new.push(Some(self.names.fences.len()));
                self.names
                    .fences
                    .push(format!("f{}", self.names.fences.len()));
            } else {
                new.push(None);
            }
        }
        let re_out = |o: &mut Option<usize>| *o = o.and_then(|i| new.get(i).copied().flatten());
        let re_ref = |r: &mut FenceRef| {
            if let FenceRef::Named(i) = r {
                *i = new.get(*i).copied().flatten().unwrap_or(0);
            }
        };
        for c in &mut self.cmds {
            match c {
                Cmd::HostFence { out, .. } | Cmd::XgsWait { out, .. } => re_out(out),
                Cmd::Signal { fence, .. } => re_ref(fence),
                Cmd::BindAsync { waits, out, .. }
                | Cmd::Gpu { waits, out, .. }
                | Cmd::XgsSignal { waits, out, .. } => {
                    waits.iter_mut().for_each(re_ref);
                    re_out(out);
                }
                _ => {}
            }
        }
        let n = self.cmds.len();
        Ok(Script {
            setup: self.setup,
            names: self.names,
            cmds: self.cmds,
            lines: vec![0; n],
        })
    }
}
