//! The `BTreeMap` peer: a straightforward split tree with drm_gpuvm's split rules.
//!
//! Mappings are kept in a `BTreeMap` keyed by start address. A request finds the overlapping
//! mappings (the one straddling the request start, then every mapping starting inside the request),
//! emits for each exactly the op drm_gpuvm emits (`Unmap` or `Remap` with `prev`/`next` pieces and
//! `keep`), updates the map, and for a map request emits and inserts `Map` last. This is the code one
//! would write first; its op sequence is checked against gpuva's in the tests below.

use std::collections::BTreeMap;

use gpuva::{Mapping, ObjId, Op, VaFlags};

/// What the map stores per mapping (the key is the start address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    len: u64,
    obj: Option<ObjId>,
    offset: u64,
    flags: VaFlags,
}

impl Entry {
    fn mapping(&self, addr: u64) -> Mapping {
        Mapping::new(addr, self.len, self.obj, self.offset).with_flags(self.flags)
    }

    fn of(m: &Mapping) -> Self {
        Self {
            len: m.len,
            obj: m.obj,
            offset: m.offset,
            flags: m.flags,
        }
    }
}

/// A VA tracker over `BTreeMap<start, mapping>` that emits drm_gpuvm's split/merge ops.
///
/// Requests are assumed valid (non-empty, not overflowing): the benchmarks only issue valid ones.
#[derive(Clone, Debug, Default)]
pub struct SplitTree {
    map: BTreeMap<u64, Entry>,
    /// Start addresses of the mappings overlapping the current request (reused between requests).
    scratch: Vec<u64>,
}

impl SplitTree {
    /// An empty tree.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of mappings.
    #[must_use]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are no mappings.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// All mappings in address order.
    pub fn iter(&self) -> impl Iterator<Item = Mapping> + '_ {
        self.map.iter().map(|(&a, e)| e.mapping(a))
    }

    /// Maps `req`, passing every op to `sink` in drm_gpuvm order (`Map` last).
    pub fn sm_map(&mut self, req: Mapping, sink: impl FnMut(Op)) {
        let mut sink = sink;
        self.walk(req.addr, req.end(), Some(&req), &mut sink);
        sink(Op::Map(req));
        self.map.insert(req.addr, Entry::of(&req));
    }

    /// Unmaps `[addr, addr + len)`, passing every op to `sink`.
    pub fn sm_unmap(&mut self, addr: u64, len: u64, sink: impl FnMut(Op)) {
        let mut sink = sink;
        self.walk(addr, addr + len, None, &mut sink);
    }

    /// Removes or trims every mapping overlapping `[a0, e0)`, emitting one op per mapping.
    fn walk(&mut self, a0: u64, e0: u64, req: Option<&Mapping>, sink: &mut impl FnMut(Op)) {
        self.scratch.clear();
        if let Some((&a, e)) = self.map.range(..a0).next_back() {
            if a + e.len > a0 {
                self.scratch.push(a);
            }
        }
        self.scratch.extend(self.map.range(a0..e0).map(|(&a, _)| a));
        for i in 0..self.scratch.len() {
            let a = self.scratch[i];
            // The straddler keeps its start: trim it in place (its `prev` piece). Every other
            // overlapping mapping leaves the map (its `next` piece, if any, goes back in below).
            let e = if a < a0 {
                let Some(slot) = self.map.get_mut(&a) else {
                    continue;
                };
                let old = *slot;
                slot.len = a0 - a;
                old
            } else {
                let Some(e) = self.map.remove(&a) else {
                    continue;
                };
                e
            };
            let v = e.mapping(a);
            let keep = req.is_some_and(|r| v.same_backing(r));
            let prev = (v.addr < a0).then(|| Mapping {
                len: a0 - v.addr,
                ..v
            });
            let next = (v.end() > e0).then(|| Mapping {
                addr: e0,
                len: v.end() - e0,
                offset: v.offset.wrapping_add(e0 - v.addr),
                ..v
            });
            if prev.is_none() && next.is_none() {
                sink(Op::Unmap { va: v, keep });
            } else {
                sink(Op::Remap {
                    unmap: v,
                    keep,
                    prev,
                    next,
                });
            }
            if let Some(n) = next {
                self.map.insert(n.addr, Entry::of(&n));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use gpuva::{Op, Record, Request};

    use super::SplitTree;
    use crate::peers::{GpuvaTracker, Tracker};
    use crate::workload::{plan, Workload};

    /// Runs set-up and churn of `w` through gpuva (recording each request's ops with `walk`, then
    /// applying it through the full driver flow with a recording visitor) and through the split
    /// tree; every request must give the same op sequence, three times over.
    fn same_ops(w: Workload, n: usize, links: bool) {
        let p = plan(w, n, 4 * n, 7);
        let mut g = if links {
            GpuvaTracker::new()
        } else {
            GpuvaTracker::without_links()
        };
        let mut tree = SplitTree::new();
        let (mut walked, mut stepped, mut got) = (Vec::new(), Vec::new(), Vec::new());
        let mut kinds = [0usize; 3];
        for (i, r) in p.setup.iter().chain(&p.churn).enumerate() {
            walked.clear();
            stepped.clear();
            got.clear();
            g.vm()
                .walk(*r, |op| {
                    walked.push(op);
                    Ok::<(), ()>(())
                })
                .expect("valid request");
            g.apply_with(r, &mut Record::new(|op| stepped.push(op)));
            match *r {
                Request::Map(m) => tree.sm_map(m, |op| got.push(op)),
                Request::Unmap { addr, len } => tree.sm_unmap(addr, len, |op| got.push(op)),
                _ => unreachable!("the workloads hold maps and unmaps only"),
            }
            assert_eq!(walked, got, "{w:?}: request {i} ({r:?})");
            assert_eq!(stepped, got, "{w:?}: request {i} ({r:?})");
            for op in &got {
                kinds[match op {
                    Op::Map(_) => 0,
                    Op::Remap { .. } => 1,
                    Op::Unmap { .. } | Op::Prefetch(_) => 2,
                }] += 1;
            }
        }
        assert!(
            g.vm().iter().map(|v| v.mapping()).eq(tree.iter()),
            "{w:?}: trees differ"
        );
        assert_eq!(g.live(), tree.len());
        g.vm().check_invariants().expect("consistent");
        // The workloads exercise every op kind (dense replaces whole pages: no `Remap`).
        let remaps_expected = w != Workload::Dense;
        assert!(
            kinds[0] > 0 && kinds[2] > 0 && (kinds[1] > 0) == remaps_expected,
            "{w:?}: op kinds {kinds:?}"
        );
    }

    #[test]
    fn same_ops_as_gpuva_churn() {
        same_ops(Workload::Churn, 3000, true);
        same_ops(Workload::Churn, 1000, false);
    }

    #[test]
    fn same_ops_as_gpuva_dense() {
        same_ops(Workload::Dense, 3000, true);
        same_ops(Workload::Dense, 1000, false);
    }

    #[test]
    fn same_ops_as_gpuva_tiles() {
        same_ops(Workload::Tiles, 3000, true);
        same_ops(Workload::Tiles, 1000, false);
    }
}
