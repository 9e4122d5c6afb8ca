//! The `BTreeMap` split tree as a trace replayer ([`sim::ops::Replayer`]), so it replays a trace
//! file timed exactly as `vmsim ops --bench` times gpuva ([`sim::ops::time_run`]).

use std::hint::black_box;
use std::ops::Range;

use gpuva::{Mapping, ObjId, Op};
use sim::ops::{ReplayError, Replayer};
use sim::trace::{Request, Trace};

use crate::split_tree::SplitTree;

/// [`SplitTree`] over a trace's VA space. Requests are validated as gpuva validates them (zero
/// size, overflow, outside the space, overlapping the cut-out: refused, nothing emitted); a
/// valid one runs `sm_map`/`sm_unmap`, its ops handed to `sink`. The tree has no prepare or
/// cleanup stage: it allocates and frees inside its operations, all of which is timed.
#[derive(Debug)]
pub struct SplitTreeReplayer {
    /// The tree.
    pub tree: SplitTree,
    space: Range<u64>,
    reserved: Range<u64>,
}

impl SplitTreeReplayer {
    /// An empty tree over `trace`'s VA space.
    #[must_use]
    pub fn new(trace: &Trace) -> Self {
        let (start, size) = trace.space;
        let reserved = trace.reserve.map_or(0..0, |(a, s)| a..a.saturating_add(s));
        Self {
            tree: SplitTree::new(),
            space: start..start.saturating_add(size),
            reserved,
        }
    }

    /// Whether `[addr, addr + len)` is a valid request range (`GpuVm::check_range`, granule 1).
    #[inline]
    fn valid(&self, addr: u64, len: u64) -> bool {
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        len != 0
            && addr >= self.space.start
            && end <= self.space.end
            && !(addr < self.reserved.end && self.reserved.start < end)
    }

    /// Runs one request, each op to `sink`; `false` if it was refused.
    #[inline]
    pub fn request(&mut self, req: Request, sink: impl FnMut(Op)) -> bool {
        match req {
            Request::Map {
                addr,
                size,
                obj,
                offset,
            } => {
                if !self.valid(addr, size) {
                    return false;
                }
                self.tree
                    .sm_map(Mapping::new(addr, size, ObjId::new(obj), offset), sink);
            }
            Request::Unmap { addr, size } => {
                if !self.valid(addr, size) {
                    return false;
                }
                self.tree.sm_unmap(addr, size, sink);
            }
            // The extension requests have no peer.
            _ => return false,
        }
        true
    }
}

impl Replayer for SplitTreeReplayer {
    #[inline]
    fn replay_request(&mut self, req: Request) -> Result<usize, ReplayError> {
        let mut ops = 0usize;
        self.request(req, |op| {
            black_box(&op);
            ops += 1;
        });
        Ok(ops)
    }

    fn mappings(&self) -> usize {
        self.tree.len()
    }
}

#[cfg(test)]
mod tests {
    use sim::ops::{Driver, Links};
    use sim::trace::parse;

    use super::SplitTreeReplayer;

    /// The peer and `vmsim ops`'s driver emit the same ops and refuse the same requests on a
    /// random trace with refused requests.
    #[test]
    fn replays_like_vmsim() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut text = String::from("space 0x1000 0x10000000\nreserve 0x2000000 0x1000\n");
        for _ in 0..20_000 {
            let addr = (next() % 0x12000) << 12;
            let len = (next() % 9) << 12;
            if next() % 3 == 0 {
                text.push_str(&format!("unmap {addr:#x} {len:#x}\n"));
            } else {
                let (obj, off) = (next() % 5, (next() % 16) << 12);
                text.push_str(&format!("map {addr:#x} {len:#x} {obj} {off:#x}\n"));
            }
        }
        let trace = parse(&text).expect("well-formed");
        let mut d = Driver::new(&trace, Links::On).expect("geometry");
        let mut p = SplitTreeReplayer::new(&trace);
        let (mut want, mut got) = (Vec::new(), Vec::new());
        let mut refused = 0;
        for (i, &req) in trace.requests.iter().enumerate() {
            want.clear();
            got.clear();
            let ok = d.request(req, |op| want.push(op)).expect("replays").is_ok();
            assert_eq!(p.request(req, |op| got.push(op)), ok, "request {i}");
            assert_eq!(want, got, "request {i}");
            refused += usize::from(!ok);
        }
        assert!(refused > 0, "the trace has refused requests");
        assert!(d.vm.iter().map(|v| v.mapping()).eq(p.tree.iter()));
    }
}
