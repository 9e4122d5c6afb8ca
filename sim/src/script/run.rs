//! Executing a [`Script`] on a fresh world.

use gpuva::ObjId;
use vmbind::queue::SwFence;
use vmbind::{BindOp, JobError};

use super::{Cmd, FenceRef, Op, Script, TimeoutKind};
use crate::world::{World, WorldError};

/// Bounds on what a run may do (the fuzz target runs scripts with small ones; the defaults only
/// keep simulated time from overflowing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// World steps in all (`step` lines and the steps of `drain`).
    pub max_steps: u64,
    /// Simulated time, µs.
    pub max_time_us: u64,
    /// Physical memory, MiB.
    pub max_memory_mib: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_steps: u64::MAX,
            max_time_us: 1 << 52,
            max_memory_mib: super::parse::MAX_MEMORY_MIB,
        }
    }
}

/// Why a command could not be executed.
#[derive(Debug, thiserror::Error)]
pub enum RunErrorKind {
    /// The world refused it (a bind refused by prepare, a VM that could not be made, ...).
    #[error(transparent)]
    World(#[from] WorldError),
    /// The command names an object whose `bo` line found no memory.
    #[error("object `{0}` was not created (out of physical memory)")]
    NotCreated(String),
    /// A [`Limits`] bound.
    #[error("over the run's limit of {0}")]
    Limit(&'static str),
}

/// A command the run stopped at, with its line (0 for a recorded script).
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct RunError {
    /// The command's first line.
    pub line: usize,
    /// What went wrong.
    pub kind: RunErrorKind,
}

/// Runs a script's commands on its own world.
#[expect(
    missing_debug_implementations,
    reason = "holds the world; the report describes it"
)]
pub struct Runner {
    /// The world the script drives.
    pub world: World,
    bos: Vec<Option<u32>>,
    fences: Vec<Option<SwFence>>,
    limits: Limits,
    steps: u64,
    /// Commands executed so far.
    pub executed: usize,
}

impl Runner {
    /// A fresh world with the script's memory and slots, and no limits beyond the defaults.
    #[must_use]
    pub fn new(script: &Script) -> Self {
        Self {
            world: World::new(script.setup.memory_mib, script.setup.slots),
            bos: vec![None; script.names.bos.len()],
            fences: vec![None; script.names.fences.len()],
            limits: Limits::default(),
            steps: 0,
            executed: 0,
        }
    }

    /// [`Runner::new`] under `limits`.
    ///
    /// # Errors
    ///
    /// [`RunErrorKind::Limit`] if the script asks for more memory than `limits` allow (the
    /// world is not made).
    pub fn with_limits(script: &Script, limits: Limits) -> Result<Self, RunError> {
        if script.setup.memory_mib > limits.max_memory_mib {
            return Err(RunError {
                line: 0,
                kind: RunErrorKind::Limit("memory"),
            });
        }
        let mut r = Self::new(script);
        r.limits = limits;
        Ok(r)
    }

    /// Executes every command of `script` in order (the script this runner was made for).
    ///
    /// # Errors
    ///
    /// The first command that fails, with its line; the commands before it have run.
    pub fn run(&mut self, script: &Script) -> Result<(), RunError> {
        for (i, cmd) in script.cmds.iter().enumerate() {
            self.exec(script, cmd).map_err(|kind| RunError {
                line: script.lines.get(i).copied().unwrap_or(0),
                kind,
            })?;
            self.executed += 1;
        }
        Ok(())
    }

    fn bo(&self, script: &Script, bo: usize) -> Result<u32, RunErrorKind> {
        self.bos.get(bo).copied().flatten().ok_or_else(|| {
            RunErrorKind::NotCreated(script.names.bos.get(bo).cloned().unwrap_or_default())
        })
    }

    fn fence(&self, f: FenceRef) -> Result<SwFence, RunErrorKind> {
        match f {
            FenceRef::Named(i) => self
                .fences
                .get(i)
                .cloned()
                .flatten()
                .ok_or(RunErrorKind::Limit("fences")),
            FenceRef::Point(h, p) => Ok(self.world.point(h, p)?),
        }
    }

    fn waits(&self, w: &[FenceRef]) -> Result<Vec<SwFence>, RunErrorKind> {
        w.iter().map(|&f| self.fence(f)).collect()
    }

    fn set(&mut self, out: Option<usize>, f: SwFence) {
        if let Some(slot) = out.and_then(|i| self.fences.get_mut(i)) {
            *slot = Some(f);
        }
    }

    fn ops(&self, script: &Script, ops: &[Op]) -> Result<Vec<BindOp>, RunErrorKind> {
        ops.iter()
            .map(|op| {
                Ok(match *op {
                    Op::Map {
                        va,
                        len,
                        bo,
                        offset,
                        flags,
                    } => BindOp::Map {
                        va,
                        len,
                        obj: ObjId::new(u64::from(self.bo(script, bo)?.max(1)))
                            .unwrap_or_else(|| unreachable!()),
                        offset,
                        flags,
                    },
                    Op::Unmap { va, len } => BindOp::Unmap { va, len },
                    Op::SyncOnly => BindOp::SyncOnly,
                })
            })
            .collect()
    }

    fn step_budget(&mut self, steps: u64, span_us: u64) -> Result<(), RunErrorKind> {
        let steps = self
            .steps
            .checked_add(steps)
            .filter(|&s| s <= self.limits.max_steps)
            .ok_or(RunErrorKind::Limit("steps"))?;
        self.world
            .now
            .checked_add(span_us)
            .filter(|&t| t <= self.limits.max_time_us)
            .ok_or(RunErrorKind::Limit("simulated time"))?;
        self.steps = steps;
        Ok(())
    }

    fn exec(&mut self, script: &Script, cmd: &Cmd) -> Result<(), RunErrorKind> {
        let w = &mut self.world;
        match cmd {
            &Cmd::Timeout { kind, us } => match kind {
                TimeoutKind::Bind => w.bind_timeout = us,
                TimeoutKind::Gpu => w.gpu_timeout = us,
                TimeoutKind::Xgs => w.xgs_timeout = us,
                TimeoutKind::Bound => w.fence_bound = us,
            },
            &Cmd::Vm {
                policy,
                lock_region,
                queues,
            } => {
                let name = script.names.vms.get(w.vms.len()).cloned();
                w.add_vm(name.unwrap_or_default(), policy, lock_region, queues)?;
            }
            Cmd::GpuQueue => {
                w.add_gpu_queue();
            }
            &Cmd::Bo { bo, size, how } => match w.create_bo(size, how) {
                Ok(id) => {
                    if let Some(slot) = self.bos.get_mut(bo) {
                        *slot = Some(id);
                    }
                }
                Err(WorldError::NoMemory(_)) => {}
                Err(e) => return Err(e.into()),
            },
            &Cmd::Close { bo, evicted } => {
                let id = self.bo(script, bo)?;
                if evicted {
                    self.world.close_evicted(id);
                } else {
                    self.world.close_bo(id);
                }
            }
            &Cmd::SwapIn { bo, size, how } => {
                let id = self.bo(script, bo)?;
                match self.world.swap_in(id, size, how) {
                    Ok(_) | Err(WorldError::NoMemory(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Cmd::Cleanup => w.cleanup_all(),
            &Cmd::HostFence { handle, point, out } => {
                let f = w.host_fence(handle, point);
                self.set(out, f);
            }
            &Cmd::Signal { fence, error } => {
                let f = self.fence(fence)?;
                let r = error.map_or(Ok(()), |e| Err(JobError::InFence(e)));
                self.world.signal_host(&f, r);
            }
            Cmd::BindSync { vm, kind, ops } => {
                let ops = self.ops(script, ops)?;
                self.world.bind_sync(*vm, &ops, *kind)?;
            }
            Cmd::BindAsync {
                vm,
                queue,
                waits,
                out_point,
                kind,
                ops,
                out,
            } => {
                let ops = self.ops(script, ops)?;
                let waits = self.waits(waits)?;
                let f = self
                    .world
                    .bind_async(*vm, *queue, &ops, waits, *out_point, *kind)?;
                self.set(*out, f);
            }
            Cmd::Gpu {
                queue,
                vm,
                waits,
                accesses,
                out,
            } => {
                let waits = self.waits(waits)?;
                let f = self.world.gpu_job(*queue, *vm, waits, accesses.clone());
                self.set(*out, f);
            }
            Cmd::Native {
                bo,
                off,
                wide,
                views,
            } => {
                let id = self.bo(script, *bo)?;
                self.world.native_sync(id, *off, *wide, views.clone());
            }
            &Cmd::UserQueue { vm, cap } => {
                w.add_user_queue(vm, cap);
            }
            Cmd::Push { uq, cmd } => {
                // A full ring refuses the command (the world counts it); userspace steps and
                // pushes again, which a script says with its own lines.
                let _ = w.uq_push(*uq, cmd.clone());
            }
            &Cmd::Kick { uq } => w.uq_kick(uq),
            &Cmd::XgsWait { native, cond, out } => {
                let f = w.xgs_wait(native, cond);
                self.set(out, f);
            }
            Cmd::XgsSignal {
                waits,
                native,
                op,
                out,
            } => {
                let waits = self.waits(waits)?;
                let f = self.world.xgs_signal(waits, *native, *op);
                self.set(*out, f);
            }
            &Cmd::Step { dt, count } => {
                for _ in 0..count {
                    self.step_budget(1, dt)?;
                    self.world.step(dt);
                }
            }
            &Cmd::Drain { dt, limit } => {
                let left = self.limits.max_steps.saturating_sub(self.steps);
                let limit = limit.min(left.saturating_mul(dt));
                let bound = self.world.fence_bound;
                self.step_budget(limit / dt.max(1), limit + bound + 1)?;
                self.world.drain(dt, limit);
            }
        }
        Ok(())
    }
}
