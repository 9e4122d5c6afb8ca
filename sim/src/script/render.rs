//! Printing a [`Script`] back as a scenario file ([`super::parse`] reads it back to an equal
//! script).

use std::fmt::Write as _;

use vmbind::queue::Policy;

use super::{contiguity_word, kind_word, Cmd, FenceRef, Op, Script, Setup, TimeoutKind};
use crate::usq::{Cond, SyncOp, UserCmd};
use crate::world::Access;

fn fence(s: &Script, f: FenceRef) -> String {
    match f {
        FenceRef::Named(i) => s.names.fences.get(i).cloned().unwrap_or_default(),
        FenceRef::Point(h, p) => format!("{h}@{p}"),
    }
}

fn waits(s: &Script, w: &[FenceRef]) -> String {
    if w.is_empty() {
        return String::new();
    }
    let list: Vec<String> = w.iter().map(|&f| fence(s, f)).collect();
    format!(" wait={}", list.join(","))
}

fn out(s: &Script, o: Option<usize>) -> String {
    o.and_then(|i| s.names.fences.get(i))
        .map_or_else(String::new, |n| format!(" -> {n}"))
}

fn name(list: &[String], i: usize) -> &str {
    list.get(i).map_or("?", String::as_str)
}

fn cond(c: Cond) -> String {
    match c {
        Cond::Gt(v) => format!("gt {v:#x}"),
        Cond::Le(v) => format!("le {v:#x}"),
    }
}

fn sync_op(o: SyncOp) -> String {
    match o {
        SyncOp::Set(v) => format!("set {v:#x}"),
        SyncOp::Add(v) => format!("add {v:#x}"),
    }
}

fn accesses(o: &mut String, acc: &[Access]) {
    for a in acc {
        let _ = match a.write {
            None => writeln!(o, "  read {:#x}", a.va),
            Some(v) => writeln!(o, "  write {:#x} {v:#x}", a.va),
        };
    }
    o.push_str("}\n");
}

fn ops(o: &mut String, s: &Script, ops: &[Op]) {
    for op in ops {
        let _ = match *op {
            Op::Map {
                va,
                len,
                bo,
                offset,
                flags,
            } => {
                let mut f = String::new();
                for (on, w) in [
                    (flags.read_only, " ro"),
                    (flags.no_exec, " noexec"),
                    (flags.uncached, " uncached"),
                ] {
                    if on {
                        f.push_str(w);
                    }
                }
                writeln!(
                    o,
                    "  map {va:#x} {len:#x} {} {offset:#x}{f}",
                    name(&s.names.bos, bo)
                )
            }
            Op::Unmap { va, len } => writeln!(o, "  unmap {va:#x} {len:#x}"),
            Op::SyncOnly => writeln!(o, "  sync-only"),
        };
    }
    o.push_str("}\n");
}

/// Prints `script` as a scenario file, `header` first (each of its lines as a comment).
#[must_use]
#[expect(clippy::too_many_lines, reason = "one arm per command")]
pub fn render(script: &Script, header: &str) -> String {
    let s = script;
    let n = &s.names;
    let mut o = String::new();
    for l in header.lines() {
        let _ = writeln!(o, "# {l}");
    }
    if s.setup != Setup::default() {
        let _ = writeln!(o, "memory {}M", s.setup.memory_mib);
        let _ = writeln!(o, "slots {}", s.setup.slots);
    }
    let (mut vms, mut gpus, mut natives, mut uqs) = (0, 0, 0, 0);
    for c in &s.cmds {
        let _ = match c {
            Cmd::Timeout { kind, us } => {
                let k = match kind {
                    TimeoutKind::Bind => "bind",
                    TimeoutKind::Gpu => "gpu",
                    TimeoutKind::Xgs => "xgs",
                    TimeoutKind::Bound => "bound",
                };
                writeln!(o, "timeout {k} {us}us")
            }
            Cmd::Vm {
                policy,
                lock_region,
                queues,
            } => {
                let pol = match policy {
                    Policy::Fifo => "fifo",
                    Policy::RangeOrdered => "range-ordered",
                };
                let lock = if *lock_region { " lock-region" } else { "" };
                vms += 1;
                writeln!(
                    o,
                    "vm {} {pol}{lock} queues={queues}",
                    name(&n.vms, vms - 1)
                )
            }
            Cmd::GpuQueue => {
                gpus += 1;
                writeln!(o, "gpu-queue {}", name(&n.gpu_queues, gpus - 1))
            }
            Cmd::Bo { bo, size, how } => {
                writeln!(
                    o,
                    "bo {} {size:#x} {}",
                    name(&n.bos, *bo),
                    contiguity_word(*how)
                )
            }
            Cmd::Close { bo, evicted } => {
                let e = if *evicted { " evicted" } else { "" };
                writeln!(o, "close {}{e}", name(&n.bos, *bo))
            }
            Cmd::SwapIn { bo, size, how } => writeln!(
                o,
                "swap-in {} {size:#x} {}",
                name(&n.bos, *bo),
                contiguity_word(*how)
            ),
            Cmd::Cleanup => writeln!(o, "cleanup"),
            Cmd::HostFence {
                handle,
                point,
                out: f,
            } => writeln!(o, "host-fence {handle}@{point}{}", out(s, *f)),
            Cmd::Signal { fence: f, error } => {
                let e = error.map_or_else(String::new, |e| format!(" error={e}"));
                writeln!(o, "signal {}{e}", fence(s, *f))
            }
            Cmd::BindSync {
                vm,
                kind,
                ops: list,
            } => {
                let _ = writeln!(
                    o,
                    "bind-sync {} kind={} {{",
                    name(&n.vms, *vm),
                    kind_word(*kind)
                );
                ops(&mut o, s, list);
                Ok(())
            }
            Cmd::BindAsync {
                vm,
                queue,
                waits: w,
                out_point,
                kind,
                ops: list,
                out: f,
            } => {
                let pt = out_point.map_or_else(String::new, |(h, p)| format!(" out={h}@{p}"));
                let _ = writeln!(
                    o,
                    "bind-async {} queue={queue}{}{pt} kind={}{} {{",
                    name(&n.vms, *vm),
                    waits(s, w),
                    kind_word(*kind),
                    out(s, *f)
                );
                ops(&mut o, s, list);
                Ok(())
            }
            Cmd::Gpu {
                queue,
                vm,
                waits: w,
                accesses: acc,
                out: f,
            } => {
                let _ = writeln!(
                    o,
                    "gpu {} {}{}{} {{",
                    name(&n.gpu_queues, *queue),
                    name(&n.vms, *vm),
                    waits(s, w),
                    out(s, *f)
                );
                accesses(&mut o, acc);
                Ok(())
            }
            Cmd::Native {
                bo,
                off,
                wide,
                views,
            } => {
                natives += 1;
                let mut v = String::new();
                for &(vm, va) in views {
                    let _ = write!(v, " {}@{va:#x}", name(&n.vms, vm));
                }
                writeln!(
                    o,
                    "native {} {} {off:#x} {}{v}",
                    name(&n.natives, natives - 1),
                    name(&n.bos, *bo),
                    if *wide { 64 } else { 32 }
                )
            }
            Cmd::UserQueue { vm, cap } => {
                uqs += 1;
                writeln!(
                    o,
                    "user-queue {} {} {cap}",
                    name(&n.user_queues, uqs - 1),
                    name(&n.vms, *vm)
                )
            }
            Cmd::Push { uq, cmd } => {
                let q = name(&n.user_queues, *uq);
                match cmd {
                    UserCmd::Wait { sync, cond: c } => {
                        writeln!(o, "push {q} wait {} {}", name(&n.natives, *sync), cond(*c))
                    }
                    UserCmd::Sync { sync, op } => {
                        let (w, v) = match op {
                            SyncOp::Set(v) => ("set", v),
                            SyncOp::Add(v) => ("add", v),
                        };
                        writeln!(o, "push {q} {w} {} {v:#x}", name(&n.natives, *sync))
                    }
                    UserCmd::Run {
                        accesses: acc,
                        per_step,
                    } => {
                        let _ = writeln!(o, "push {q} run per-step={per_step} {{");
                        accesses(&mut o, acc);
                        Ok(())
                    }
                }
            }
            Cmd::Kick { uq } => writeln!(o, "kick {}", name(&n.user_queues, *uq)),
            Cmd::XgsWait {
                native,
                cond: c,
                out: f,
            } => writeln!(
                o,
                "xgs-wait {} {}{}",
                name(&n.natives, *native),
                cond(*c),
                out(s, *f)
            ),
            Cmd::XgsSignal {
                waits: w,
                native,
                op,
                out: f,
            } => writeln!(
                o,
                "xgs-signal {} {}{}{}",
                name(&n.natives, *native),
                sync_op(*op),
                waits(s, w),
                out(s, *f)
            ),
            Cmd::Step { dt, count } => {
                if *count == 1 {
                    writeln!(o, "step {dt}us")
                } else {
                    writeln!(o, "step {dt}us {count}")
                }
            }
            Cmd::Drain { dt, limit } => writeln!(o, "drain {dt}us {limit}us"),
        };
    }
    o
}
