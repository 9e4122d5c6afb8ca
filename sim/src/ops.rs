//! `vmsim ops`: replay a v1 trace through gpuva and print the ops and the final state.
//!
//! Every request goes through the driver flow of `gpuva` (see its crate docs): **prepare**
//! (claim the request's node bound plus, for a map of an object, a link's, allocating the spare
//! cache's shortfall; obtain and pin the object's link), **run** (`GpuVm::step`), **cleanup**
//! (release the claim, put the pin, trim the spare cache). Rejected requests print
//! `err <reason>` and change nothing.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use gpuva::{BoxNode, GpuVm, LinkPin, Mapping, ObjId, Op, RangeError, SmVisitor, StepError};

use crate::trace::{Request, Trace};

/// The VA space as a driver sets it up: heap nodes ([`BoxNode`]), no payloads.
pub type Vm = GpuVm<(), BoxNode<()>>;

/// Spare nodes a VA space keeps between requests beyond one request's worst case: cleanup trims
/// the cache back to `worst case + SPARE_SLACK`, so a tree whose size wobbles by fewer nodes than
/// this never allocates in prepare nor frees in cleanup.
pub const SPARE_SLACK: usize = 64;

/// Whether the replay keeps object links (drm_gpuvm's vm_bo).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Links {
    /// Every object of the trace is a real object: each map of one obtains and pins its link in
    /// prepare and puts it in cleanup (the default; what a driver does).
    #[default]
    On,
    /// `GpuVm::without_links`: pure VA bookkeeping, no object index, smaller bounds.
    Off,
}

/// Why a trace could not be replayed at all (as opposed to a request being rejected, which is
/// printed as `err <reason>`).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The `space`/`reserve` geometry is unusable.
    #[error("invalid VA space: {0}")]
    Geometry(#[from] gpuva::NewError),
    /// Node memory could not be allocated.
    #[error("allocating nodes: {0}")]
    Alloc(#[from] gpuva::AllocError),
    /// An object link could not be obtained.
    #[error("obtaining a link: {0}")]
    Link(#[from] gpuva::LinkError),
    /// gpuva refused a request for a reason other than its range (a bug: the flow claims enough).
    #[error("request refused: {0}")]
    Step(String),
}

/// A fresh VA space for `trace` (granule 1: traces may hold unaligned requests).
///
/// # Errors
///
/// [`ReplayError::Geometry`] if the geometry is unusable.
pub fn new_vm(trace: &Trace, links: Links) -> Result<Vm, ReplayError> {
    let (start, size) = trace.space;
    let (rstart, rsize) = trace.reserve.unwrap_or((start, 0));
    let vm = Vm::with_size(start, size, rstart, rsize)?.with_merge(trace.merge);
    Ok(match links {
        Links::On => vm,
        Links::Off => vm.without_links(),
    })
}

/// A trace request as a gpuva request, and the object a map needs a link for.
#[must_use]
pub fn to_request(req: Request) -> (gpuva::Request, Option<ObjId>) {
    match req {
        Request::Map {
            addr,
            size,
            obj,
            offset,
        } => {
            let obj = ObjId::new(obj);
            (
                gpuva::Request::Map(Mapping::new(addr, size, obj, offset)),
                obj,
            )
        }
        Request::Unmap { addr, size } => (gpuva::Request::Unmap { addr, len: size }, None),
        Request::UnmapObject { obj } => (gpuva::Request::UnmapObject { obj }, None),
        Request::Prefetch { addr, size } => (gpuva::Request::Prefetch { addr, len: size }, None),
        Request::Split { addr, size } => (gpuva::Request::Split { addr, len: size }, None),
        Request::MapRepeat {
            addr,
            size,
            obj,
            offset,
            period,
        } => {
            let obj = ObjId::new(obj);
            let m = Mapping::new(addr, size, obj, offset).with_repeat(Some(period));
            (gpuva::Request::Map(m), obj)
        }
    }
}

/// A VA space driven through the full per-request driver flow.
#[derive(Debug)]
pub struct Driver {
    /// The VA space.
    pub vm: Vm,
    /// Spare nodes cleanup keeps (the worst request plus [`SPARE_SLACK`]).
    keep: usize,
}

impl Driver {
    /// A driver over a fresh VA space for `trace`.
    ///
    /// # Errors
    ///
    /// [`ReplayError::Geometry`] if the geometry is unusable.
    pub fn new(trace: &Trace, links: Links) -> Result<Self, ReplayError> {
        Ok(Self::from_vm(new_vm(trace, links)?))
    }

    /// A driver over `vm`.
    #[must_use]
    pub fn from_vm(vm: Vm) -> Self {
        let b = vm.bounds();
        let keep = b.map_obj.max(b.unmap) + b.link + SPARE_SLACK;
        Self { vm, keep }
    }

    /// Spare nodes cleanup leaves in the cache.
    #[must_use]
    pub fn keep(&self) -> usize {
        self.keep
    }

    /// Runs one request: prepare, run (each op to `sink`), cleanup. `Ok(Err(reason))` for a
    /// request refused for its range (the VA space is unchanged).
    ///
    /// # Errors
    ///
    /// [`ReplayError`] if memory runs out or gpuva refuses the request for another reason.
    #[inline]
    pub fn request(
        &mut self,
        req: Request,
        sink: impl FnMut(Op),
    ) -> Result<Result<(), &'static str>, ReplayError> {
        let (req, _) = to_request(req);
        Ok(self
            .run(req, &mut gpuva::Record::new(sink))?
            .map_err(RangeError::as_str))
    }

    /// Runs one gpuva request through `visitor` with the whole driver flow: prepare (claim the
    /// bound, allocating what the spare cache lacks; obtain and pin the link of a map's object),
    /// run ([`GpuVm::step`]), cleanup (release the claim, put the pin, trim the cache and free
    /// the surplus). `Ok(Err(e))` for a request refused for its range (nothing changed).
    ///
    /// # Errors
    ///
    /// [`ReplayError`] if memory runs out or gpuva refuses the request for another reason
    /// (including a visitor error).
    #[inline]
    pub fn run<V: SmVisitor<()>>(
        &mut self,
        req: gpuva::Request,
        visitor: &mut V,
    ) -> Result<Result<(), RangeError>, ReplayError>
    where
        V::Error: core::fmt::Display,
    {
        let vm = &mut self.vm;
        let obj = match req {
            gpuva::Request::Map(m) if vm.has_links() => m.obj,
            _ => None,
        };
        // Prepare.
        let need = vm.nodes_for(&req) + obj.map_or(0, |_| vm.link_nodes());
        let mut claim = vm.reserve_boxed(need)?;
        let pin: Option<LinkPin> = match obj {
            Some(o) => Some(vm.link_obtain(o, &mut claim, || ())?),
            None => None,
        };
        // Run.
        let outcome = vm.step(req, &mut claim, visitor);
        // Cleanup.
        let released = vm.release(claim).is_ok();
        if let Some(pin) = pin {
            vm.link_put(pin).map_err(|(_, e)| e)?;
        }
        drop(vm.trim(self.keep));
        debug_assert!(released, "the claim is this VA space's");
        match outcome {
            Ok(()) => Ok(Ok(())),
            Err(StepError::Range(e)) => Ok(Err(e)),
            Err(e) => Err(ReplayError::Step(e.to_string())),
        }
    }
}

fn obj(m: &Mapping) -> u64 {
    m.obj.map_or(0, ObjId::get)
}

/// `<addr><sep><size><sep><obj><sep><offset>`, and for a repeat mapping `<sep>repeat=<period>`
/// (a version 1 mapping prints as it always did).
fn text(m: &Mapping, sep: char) -> String {
    let mut s = format!(
        "{:#x}{sep}{:#x}{sep}{}{sep}{:#x}",
        m.addr,
        m.len,
        obj(m),
        m.offset
    );
    if let Some(r) = m.repeat {
        let _ = write!(s, "{sep}repeat={:#x}", r.period());
    }
    s
}

fn piece(p: Option<&Mapping>) -> String {
    p.map_or_else(|| "-".to_owned(), |m| text(m, ','))
}

/// Formats one op as a trace output line (without the newline).
#[must_use]
pub fn format_op(op: &Op) -> String {
    match op {
        Op::Map(m) => format!("map {}", text(m, ' ')),
        Op::Unmap { va, keep } => format!("unmap {} keep={}", text(va, ' '), u8::from(*keep)),
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
        Op::Prefetch(m) => format!("prefetch {}", text(m, ' ')),
    }
}

/// Replays `trace` (links on) and returns the output text of `vmsim ops`.
///
/// # Errors
///
/// [`ReplayError`] if the geometry is unusable or memory runs out.
pub fn replay(trace: &Trace) -> Result<String, ReplayError> {
    replay_with(trace, Links::On)
}

/// [`replay`] with or without object links. The output does not depend on it: that is what the
/// tests check.
///
/// # Errors
///
/// As [`replay`].
pub fn replay_with(trace: &Trace, links: Links) -> Result<String, ReplayError> {
    let mut d = Driver::new(trace, links)?;
    let mut out = String::new();
    for (i, &req) in trace.requests.iter().enumerate() {
        let _ = writeln!(out, "req {}", i + 1);
        let mut lines = String::new();
        let outcome = d.request(req, |op| {
            let _ = writeln!(lines, "{}", format_op(&op));
        })?;
        match outcome {
            Ok(()) => out.push_str(&lines),
            Err(reason) => {
                let _ = writeln!(out, "err {reason}");
            }
        }
    }
    out.push_str("state\n");
    for va in d.vm.iter() {
        let _ = writeln!(out, "{}", text(&va.mapping(), ' '));
    }
    Ok(out)
}

/// One timed run: every request prepared, computed, applied and cleaned up, nothing printed.
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

    /// Mean nanoseconds per request.
    #[must_use]
    pub fn ns_per_request(&self) -> f64 {
        self.total.as_nanos() as f64 / self.requests.max(1) as f64
    }
}

/// Something that replays trace requests one at a time, as [`time_run`] times them: gpuva through
/// [`Driver`], or a peer (the benches' `BTreeMap` split tree).
pub trait Replayer {
    /// Runs one request with everything a caller pays for it; returns the ops it produced (0 for
    /// a refused request).
    ///
    /// # Errors
    ///
    /// [`ReplayError`] if the replay cannot go on.
    fn replay_request(&mut self, req: Request) -> Result<usize, ReplayError>;

    /// Mappings held.
    fn mappings(&self) -> usize;
}

impl Replayer for Driver {
    #[inline]
    fn replay_request(&mut self, req: Request) -> Result<usize, ReplayError> {
        let mut ops = 0usize;
        // Refused requests are part of the workload too; their outcome is not printed.
        let _ = self.request(req, |op| {
            std::hint::black_box(&op);
            ops += 1;
        })?;
        Ok(ops)
    }

    fn mappings(&self) -> usize {
        self.vm.len()
    }
}

/// Times one run of `trace` through `r` (which should be fresh): the whole request loop, nothing
/// outside it.
///
/// # Errors
///
/// The first [`ReplayError`] of `r`.
pub fn time_run(trace: &Trace, r: &mut impl Replayer) -> Result<BenchRun, ReplayError> {
    let mut ops = 0usize;
    let start = Instant::now();
    for &req in &trace.requests {
        ops += r.replay_request(std::hint::black_box(req))?;
    }
    let total = start.elapsed();
    std::hint::black_box(ops);
    Ok(BenchRun {
        requests: trace.requests.len(),
        total,
        final_mappings: r.mappings(),
    })
}

/// The median of `runs` by total time (for an even count, the slower of the two middle runs).
///
/// # Panics
///
/// If `runs` is empty.
#[must_use]
pub fn median(mut runs: Vec<BenchRun>) -> BenchRun {
    runs.sort_by_key(|r| r.total);
    runs[runs.len() / 2]
}

/// Times `repeat` runs of `trace`, each on a fresh VA space, and returns the median run.
///
/// Each request pays what a driver pays, all of it timed: prepare (claim the bound, allocating
/// the spare cache's shortfall; obtain and pin the link), run (walk and apply), cleanup (release,
/// put the pin, trim the spare cache and free the surplus). Zombie links are drained by the next
/// prepare, inside the timer too. Dropping the VA space at the end is not timed.
///
/// # Errors
///
/// As [`replay`].
pub fn bench(trace: &Trace, repeat: usize, links: Links) -> Result<BenchRun, ReplayError> {
    let mut runs = Vec::with_capacity(repeat.max(1));
    for _ in 0..repeat.max(1) {
        let mut d = Driver::new(trace, links)?;
        runs.push(time_run(trace, &mut d)?);
    }
    Ok(median(runs))
}

#[cfg(test)]
mod tests {

    /// The extension lines of the trace format: `traces/extensions.trace`, byte for byte, with
    /// and without links (written by hand from docs/trace-format.md, "Extensions").
    #[test]
    fn extension_lines_replay_as_documented() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../traces");
        let text = std::fs::read_to_string(dir.join("extensions.trace")).expect("trace");
        let want = std::fs::read_to_string(dir.join("extensions.expected")).expect("expected");
        let trace = crate::trace::parse(&text).expect("parses");
        assert!(trace.merge);
        for links in [Links::On, Links::Off] {
            assert_eq!(
                replay_with(&trace, links).expect("replays"),
                want,
                "{links:?}"
            );
        }
    }

    /// The repeat lines of the trace format: `traces/repeat.trace`, byte for byte, with and
    /// without links (written by hand from docs/trace-format.md, "Repeat mappings").
    #[test]
    fn repeat_lines_replay_as_documented() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../traces");
        let text = std::fs::read_to_string(dir.join("repeat.trace")).expect("trace");
        let want = std::fs::read_to_string(dir.join("repeat.expected")).expect("expected");
        let trace = crate::trace::parse(&text).expect("parses");
        for links in [Links::On, Links::Off] {
            assert_eq!(
                replay_with(&trace, links).expect("replays"),
                want,
                "{links:?}"
            );
        }
    }

    use super::*;
    use crate::trace::parse;

    /// A deterministic random trace: maps (with and without objects) and unmaps of 1-8 pages over
    /// a 4096-page window in a 2^40 space, with a few refused requests.
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
            match next() % 32 {
                0 => {
                    let _ = writeln!(t, "map 0x1000 0x1000 1 0");
                }
                1..=10 => {
                    let _ = writeln!(t, "unmap {:#x} {:#x}", page << 12, len << 12);
                }
                _ => {
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
        }
        t
    }

    #[test]
    fn links_never_change_the_output() {
        let trace = parse(&random_trace(6000)).expect("well-formed");
        let on = replay_with(&trace, Links::On).expect("replays");
        assert_eq!(replay_with(&trace, Links::Off).expect("replays"), on);
        assert!(
            on.contains("err reserved"),
            "the trace has refused requests"
        );
    }

    /// The flow keeps the VA space consistent, never draws more than a request's bound from the
    /// spare cache, leaves nothing claimed, and keeps the cache trimmed.
    #[test]
    fn driver_flow_stays_within_bounds() {
        let trace = parse(&random_trace(3000)).expect("well-formed");
        for links in [Links::On, Links::Off] {
            // Untrimmed, every node leaving the cache is one a request drew.
            let mut untrimmed = Driver::new(&trace, links).expect("geometry");
            untrimmed.keep = usize::MAX;
            let mut d = Driver::new(&trace, links).expect("geometry");
            for (i, &req) in trace.requests.iter().enumerate() {
                let (greq, obj) = to_request(req);
                let vm = &untrimmed.vm;
                let bound = vm.nodes_for(&greq)
                    + obj
                        .filter(|_| vm.has_links())
                        .map_or(0, |_| vm.link_nodes());
                let taken = vm.nodes_taken();
                let a = untrimmed.request(req, |_| {}).expect("replays");
                let drawn = untrimmed.vm.nodes_taken() - taken;
                assert!(
                    drawn <= bound as u64,
                    "{links:?} request {i}: drew {drawn} > {bound}"
                );
                assert_eq!(d.request(req, |_| {}).expect("replays"), a);
                assert!(d.vm.spare_nodes() <= d.keep, "{links:?} request {i}");
                assert_eq!(d.vm.claimed_nodes(), 0, "{links:?} request {i}");
                if i % 97 == 0 {
                    d.vm.check_invariants()
                        .unwrap_or_else(|e| panic!("{links:?} request {i}: {e}"));
                }
            }
            d.vm.check_invariants().expect("consistent at the end");
            assert!(d
                .vm
                .iter()
                .map(|v| v.mapping())
                .eq(untrimmed.vm.iter().map(|v| v.mapping())));
        }
    }
}
