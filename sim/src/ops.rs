//! `vmsim ops`: replay a v1 trace through gpuva and print the ops and the final state.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use gpuva::{BoxNode, GpuVm, MapError, Mapping, NodeReserve, ObjId, Op, RetiredList, UnmapError};

use crate::trace::{Request, Trace};

/// The VA space as a driver would set it up: heap nodes and a heap bucket directory, refitted by
/// [`maintain`] between requests.
type Vm = GpuVm<(), BoxNode<()>, Box<[Option<BoxNode<()>>]>>;

/// How often (in requests) the replay runs the maintenance step.
const MAINTAIN_EVERY: usize = 1024;

/// Why a trace could not be replayed at all (as opposed to a request being rejected, which is
/// printed as `err <reason>`).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The `space`/`reserve` geometry is unusable.
    #[error("invalid VA space: {0}")]
    Geometry(#[from] gpuva::NewError),
    /// Node memory could not be reserved.
    #[error("reserving nodes: {0}")]
    Reserve(#[from] gpuva::ReserveError<gpuva::AllocError>),
}

/// A fresh VA space for `trace`.
///
/// # Errors
///
/// [`ReplayError::Geometry`] if the geometry is unusable.
pub fn new_vm(trace: &Trace) -> Result<Vm, ReplayError> {
    let (start, size) = trace.space;
    let (rstart, rsize) = trace.reserve.unwrap_or((start, 0));
    let end = start.checked_add(size).ok_or(gpuva::NewError::Overflow)?;
    let rend = rstart.checked_add(rsize).ok_or(gpuva::NewError::Overflow)?;
    Ok(Vm::with_buckets(
        start..end,
        rstart..rend,
        gpuva::alloc_buckets(1)?,
    )?)
}

/// The maintenance step a driver runs outside the fence-signalling path: refit the bucket
/// directory when gpuva advises it. Changes no mapping and no op.
///
/// # Errors
///
/// [`ReplayError::Geometry`] if the directory cannot be allocated.
pub fn maintain(vm: &mut Vm) -> Result<(), ReplayError> {
    if let Some(n) = vm.rebucket_advice() {
        let dir = gpuva::alloc_buckets(n)?;
        vm.rebucket(dir).map_err(|(_, e)| e)?;
    }
    Ok(())
}

/// Runs one request through the step API; `sink` sees each op. `Ok(Err(reason))` for a rejected
/// request (the VA space is unchanged).
fn run_request(
    vm: &mut Vm,
    req: Request,
    retired: &mut RetiredList<(), BoxNode<()>>,
    sink: impl FnMut(Op),
) -> Result<Result<(), &'static str>, ReplayError> {
    let mut visitor = gpuva::Record::new(sink);
    let rejected = match req {
        Request::Map {
            addr,
            size,
            obj,
            offset,
        } => {
            let mut pool = NodeReserve::try_alloc(gpuva::MAX_MAP_NODES)?;
            match vm.sm_map(
                Mapping::new(addr, size, ObjId::new(obj), offset),
                &mut pool,
                retired,
                &mut visitor,
            ) {
                Ok(()) => None,
                Err(MapError::Range(e)) => Some(e.as_str()),
                Err(_) => Some("internal"),
            }
        }
        Request::Unmap { addr, size } => {
            let mut pool = NodeReserve::try_alloc(gpuva::MAX_UNMAP_NODES)?;
            match vm.sm_unmap(addr, size, &mut pool, retired, &mut visitor) {
                Ok(()) => None,
                Err(UnmapError::Range(e)) => Some(e.as_str()),
                Err(_) => Some("internal"),
            }
        }
    };
    Ok(rejected.map_or(Ok(()), Err))
}

fn obj(m: &Mapping) -> u64 {
    m.obj.map_or(0, ObjId::get)
}

fn piece(p: Option<&Mapping>) -> String {
    p.map_or_else(
        || "-".to_owned(),
        |m| format!("{:#x},{:#x},{},{:#x}", m.addr, m.len, obj(m), m.offset),
    )
}

/// Formats one op as a trace output line (without the newline).
#[must_use]
pub fn format_op(op: &Op) -> String {
    match op {
        Op::Map(m) => format!("map {:#x} {:#x} {} {:#x}", m.addr, m.len, obj(m), m.offset),
        Op::Unmap { va, keep } => {
            format!(
                "unmap {:#x} {:#x} {} {:#x} keep={}",
                va.addr,
                va.len,
                obj(va),
                va.offset,
                u8::from(*keep)
            )
        }
        Op::Remap {
            unmap,
            keep,
            prev,
            next,
        } => format!(
            "remap unmap={},keep={} prev={} next={}",
            piece(Some(unmap)),
            u8::from(*keep),
            piece(prev.as_ref()),
            piece(next.as_ref())
        ),
    }
}

/// Replays `trace` and returns the output text of `vmsim ops`.
///
/// # Errors
///
/// [`ReplayError`] if the geometry is unusable or memory runs out.
pub fn replay(trace: &Trace) -> Result<String, ReplayError> {
    replay_with(trace, Some(MAINTAIN_EVERY))
}

/// [`replay`], running the maintenance step every `maintain_every` requests (or never). The output
/// does not depend on it: that is what the tests check.
///
/// # Errors
///
/// As [`replay`].
pub fn replay_with(trace: &Trace, maintain_every: Option<usize>) -> Result<String, ReplayError> {
    let mut vm = new_vm(trace)?;
    let mut out = String::new();
    let mut retired = RetiredList::new();
    for (i, &req) in trace.requests.iter().enumerate() {
        let _ = writeln!(out, "req {}", i + 1);
        let mut lines = String::new();
        let outcome = run_request(&mut vm, req, &mut retired, |op| {
            let _ = writeln!(lines, "{}", format_op(&op));
        })?;
        match outcome {
            Ok(()) => out.push_str(&lines),
            Err(reason) => {
                let _ = writeln!(out, "err {reason}");
            }
        }
        // Cleanup stage: free what the request removed; now and then, maintenance.
        while retired.pop().is_some() {}
        if maintain_every.is_some_and(|k| (i + 1) % k.max(1) == 0) {
            maintain(&mut vm)?;
        }
    }
    out.push_str("state\n");
    for va in vm.iter() {
        let m = va.mapping();
        let _ = writeln!(
            out,
            "{:#x} {:#x} {} {:#x}",
            m.addr,
            m.len,
            obj(&m),
            m.offset
        );
    }
    Ok(out)
}

/// One timed run: every request computed and applied, nothing printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchRun {
    /// Requests processed.
    pub requests: usize,
    /// Wall time of the whole run.
    pub total: Duration,
    /// Mappings left at the end.
    pub final_mappings: usize,
}

impl BenchRun {
    /// The `--bench` output line.
    #[must_use]
    pub fn line(&self) -> String {
        let total_ns = self.total.as_nanos();
        let per = total_ns / self.requests.max(1) as u128;
        format!(
            "requests {} total_ns {} ns_per_request {} final_mappings {}",
            self.requests, total_ns, per, self.final_mappings
        )
    }
}

/// Times `repeat` runs of `trace`, each on a fresh VA space, and returns the median run.
///
/// Each request pays what a driver pays: reserving nodes (prepare), computing and applying the ops
/// (run), and freeing removed nodes (cleanup); every 1024 requests the directory
/// maintenance step runs too.
///
/// # Errors
///
/// As [`replay`].
pub fn bench(trace: &Trace, repeat: usize) -> Result<BenchRun, ReplayError> {
    let mut runs = Vec::with_capacity(repeat.max(1));
    for _ in 0..repeat.max(1) {
        let mut vm = new_vm(trace)?;
        let mut retired = RetiredList::new();
        let mut ops = 0usize;
        let start = Instant::now();
        for (i, &req) in trace.requests.iter().enumerate() {
            // Rejected requests are part of the workload too; their outcome is not printed.
            let _ = run_request(&mut vm, req, &mut retired, |_| ops += 1)?;
            while retired.pop().is_some() {}
            if (i + 1) % MAINTAIN_EVERY == 0 {
                maintain(&mut vm)?;
            }
        }
        let total = start.elapsed();
        std::hint::black_box(ops);
        runs.push(BenchRun {
            requests: trace.requests.len(),
            total,
            final_mappings: vm.len(),
        });
    }
    runs.sort_by_key(|r| r.total);
    Ok(runs[runs.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::parse;

    /// A deterministic random trace: maps (with and without objects) and unmaps of 1-8 pages over
    /// a 4096-page window in a 2^40 space, so the directory gets crowded, refitted and refitted.
    fn random_trace(requests: usize) -> String {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut t = String::from("space 0 0x10000000000\nreserve 0x1000 0x1000\n");
        for _ in 0..requests {
            let page = 0x100_0000 + next() % 4096;
            let len = 1 + next() % 8;
            if next() % 3 == 0 {
                let _ = writeln!(t, "unmap {:#x} {:#x}", page << 12, len << 12);
            } else {
                let _ = writeln!(
                    t,
                    "map {:#x} {:#x} {} {:#x}",
                    page << 12,
                    len << 12,
                    next() % 4,
                    (next() % 64) << 12
                );
            }
        }
        t
    }

    #[test]
    fn maintenance_never_changes_the_output() {
        let trace = parse(&random_trace(6000)).expect("well-formed");
        let plain = replay_with(&trace, None).expect("replays");
        for every in [1, 7, 64, MAINTAIN_EVERY] {
            assert_eq!(
                replay_with(&trace, Some(every)).expect("replays"),
                plain,
                "maintenance every {every}"
            );
        }
        let mut vm = new_vm(&trace).expect("geometry");
        assert_eq!(vm.buckets(), 1);
        let mut retired = RetiredList::new();
        for &req in &trace.requests {
            let _ = run_request(&mut vm, req, &mut retired, |_| {}).expect("memory");
        }
        maintain(&mut vm).expect("memory");
        assert!(
            vm.buckets() > 1,
            "a crowded one-bucket directory gets refitted"
        );
    }
}
