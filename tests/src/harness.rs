//! Differential harness: runs requests against a real [`GpuVm`] and the page-granular [`Model`],
//! checking every invariant of issue 2's "Tests" paragraph after every request.
//!
//! Used by the property test (`tests/tests/gpuva_props.rs`), the fuzz target (`fuzz/`, through
//! [`crate::fuzz_body`]) and the corpus replay test. Checks panic with a description: proptest
//! shrinks on panics, libFuzzer records them as crashes.
//!
//! Per request ([`Harness::run`]):
//!
//! 1. validation: the model's `check_range` decides; on an error every entry point (steps, built-in,
//!    walk, op list) must return that error and leave the tree, its generation, the pool and the
//!    retired list untouched, without calling the visitor;
//! 2. the ops recorded by `sm_*_walk` *before* applying equal the op list API's, equal the model's
//!    decision-table ops, have `keep` iff same object and same offset delta, and applied to the
//!    model give exactly the page-by-page next state;
//! 3. the request is applied one of several ways ([`Via`]): the step API with a recording visitor
//!    (which must see the walk's ops), the built-in `Apply`, `apply_ops`, a stale re-apply, a
//!    visitor failing at step N, a pool that lies about its size, a pool that is too small, a
//!    failing op sink;
//! 4. node accounting: nodes taken == nodes inserted (<= 3 map, <= 2 unmap), retired == removed
//!    (with their payloads), `len()` and `generation()` consistent;
//! 5. the tree equals the model mapping by mapping and page by page (through `lookup`, `find`,
//!    `find_prev`/`find_next`, `iter_range`), mappings are disjoint, non-empty, inside the space and
//!    outside the cut-out, and translations outside the request are unchanged.

use std::convert::Infallible;
use std::fmt;
use std::ops::Range;

use gpuva::{
    Apply, ApplyError, BoxNode, GpuVm, MapError, Mapping, NodePool, NodePtr, NodeReserve, ObjId,
    Op, OpMap, OpMapped, OpRemap, OpRemapped, OpUnmap, OpUnmapped, OpsError, RangeError, Request,
    RetiredList, SmVisitor, UnmapError, VaFlags, MAX_MAP_NODES, MAX_UNMAP_NODES,
};

use crate::model::{check_invariants, nodes_inserted, removed_by, Model};

/// The bucket directory of the harness's VA spaces (its size varies with the geometry).
pub type Dir = Box<[Option<BoxNode<u64>>]>;

/// The VA space type the harness drives: payload = the model's mapping id.
pub type Vm = GpuVm<u64, BoxNode<u64>, Dir>;

/// A small deterministic PRNG (SplitMix64) for tests that need reproducible randomness.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Eight random bits.
    pub fn byte(&mut self) -> u8 {
        self.next_u64().to_le_bytes()[0]
    }
}

/// A VA space layout for the harness: `pages` pages of `page` units, with an optional cut-out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// The managed space.
    pub space: Range<u64>,
    /// The cut-out (empty for none).
    pub reserved: Range<u64>,
    /// Address units per page.
    pub page: u64,
    /// Mapping-count hint for the bucket directory ([`GpuVm::with_capacity`]).
    pub dir_hint: usize,
}

/// Pages in every harness geometry.
pub const PAGES: u64 = 64;

/// How many geometries [`Geometry::select`] chooses from.
pub const GEOMETRIES: u8 = 8;

impl Geometry {
    /// One of [`GEOMETRIES`] layouts (`sel` modulo that): 4 KiB pages at 0, at 1 MiB with a cut-out
    /// in the middle, at the start and at the end, at the top of the address space; unit pages at 0
    /// with and without a cut-out, and ending exactly at `u64::MAX` with a cut-out. `sel / 8 % 4`
    /// picks the bucket directory: 1, 2, 8 or 64 buckets (64 pages each, so mappings straddle
    /// buckets).
    #[must_use]
    pub fn select(sel: u8) -> Self {
        const P: u64 = 0x1000;
        const B: u64 = 0x10_0000;
        let (start, reserved, page) = match sel % GEOMETRIES {
            0 => (0, 0..0, P),
            1 => (B, B + 28 * P..B + 32 * P, P),
            2 => (B, B..B + 2 * P, P),
            3 => (B, B + 62 * P..B + 64 * P, P),
            // Ends one page below 2^64: requests at the last page overflow.
            4 => (0u64.wrapping_sub(65 * P), 0..0, P),
            5 => (0, 0..0, 1),
            6 => (0, 30..34, 1),
            _ => (u64::MAX - 64, u64::MAX - 34..u64::MAX - 30, 1),
        };
        let dir_hint = match (sel / GEOMETRIES) % 4 {
            0 => 1,
            1 => 4,
            2 => 16,
            _ => 128,
        };
        Self {
            space: start..start + PAGES * page,
            reserved,
            page,
            dir_hint,
        }
    }

    /// Number of pages (all geometries have [`PAGES`]).
    #[must_use]
    pub fn pages(&self) -> u64 {
        (self.space.end - self.space.start) / self.page
    }

    /// Turns a raw request into a concrete one for this geometry (see [`RawReq`]).
    #[must_use]
    pub fn decode(&self, raw: &RawReq) -> Req {
        let page = self.page;
        let pages = self.pages();
        // Page index relative to the space start, -3 ..= pages + 2, wrapping below address 0.
        let idx = u64::from(raw.start) % (pages + 6);
        let addr = self
            .space
            .start
            .wrapping_add(idx.wrapping_sub(3).wrapping_mul(page));
        let len_pages = if raw.len & 0x80 == 0 {
            if raw.len & 0x78 == 0x78 {
                0
            } else {
                u64::from(raw.len & 7) + 1
            }
        } else {
            u64::from(raw.len & 0x7f) % (pages + 2) + 1
        };
        let len = len_pages * page;
        let obj = match raw.obj % 4 {
            0 => None,
            n => ObjId::new(u64::from(n)),
        };
        let base = obj.map_or(0, |o| o.get() * 0x100 * page);
        let param = u64::from(raw.off >> 2);
        let linear = addr.wrapping_sub(self.space.start);
        let offset = match raw.off & 3 {
            // Same delta for every request on this object: keep = true on overlap.
            0 => base.wrapping_add(linear),
            // Shifted by -32 ..= +31 pages (0 shift when param == 32).
            1 => base
                .wrapping_add(linear)
                .wrapping_add(param.wrapping_sub(32).wrapping_mul(page)),
            2 => param * page,
            // Linear, but wrapping through 2^64 inside the space.
            _ => 0u64.wrapping_sub((param + 1) * page).wrapping_add(linear),
        };
        let flags = match raw.flags % 4 {
            0 => VaFlags::EMPTY,
            1 => VaFlags::SPARSE,
            2 => VaFlags::from_bits(1 << VaFlags::USER_SHIFT),
            _ => VaFlags::INVALIDATED.union(VaFlags::from_bits(2 << VaFlags::USER_SHIFT)),
        };
        let kind = match raw.kind % 16 {
            0..=8 => Kind::Map(Mapping::new(addr, len, obj, offset).with_flags(flags)),
            9..=13 => Kind::Unmap { addr, len },
            14 => Kind::Unmap {
                addr: self.space.start,
                len: self.space.end - self.space.start,
            },
            _ => {
                // The last page of the address space: any non-zero length overflows.
                let top = u64::MAX / page * page;
                if raw.kind & 0x10 == 0 {
                    Kind::Map(Mapping::new(top, len, obj, offset))
                } else {
                    Kind::Unmap { addr: top, len }
                }
            }
        };
        let arg = usize::from(raw.via >> 4);
        let via = match raw.via & 0xf {
            4 => Via::StepBigPool,
            5 => Via::Builtin,
            6 => Via::OpList,
            7 => Via::StaleReapply,
            8 => Via::FailAt(arg % 4),
            9 => Via::Lying(arg % 3),
            10 => Via::Short(arg),
            11 => Via::SinkFail(arg % 4),
            12 => Via::Rebucket(arg),
            _ => Via::Step,
        };
        Req { kind, via }
    }
}

/// A request as raw bytes, so that the fuzzer, proptest and committed seeds share one encoding.
///
/// Decoded by [`Geometry::decode`]: `kind % 16` 0-8 map, 9-13 unmap, 14 unmap the whole space, 15 a
/// request at the top page of the address space (overflows); `start` a page index relative to the
/// space start (`% (pages + 6) - 3`); `len` pages: `0b0xxx_xyyy` gives `yyy + 1` (1-8), except
/// `0x78..=0x7f` which gives 0, and `0b1zzz_zzzz` gives `z % (pages + 2) + 1`; `obj % 4`: 0 is NULL;
/// `off & 3`: 0 linear (keep-friendly), 1 linear shifted by `(off >> 2) - 32` pages, 2 absolute
/// `(off >> 2)` pages, 3 linear wrapping through 2^64; `flags % 4`; `via & 0xf` chooses the [`Via`]
/// (4-12: big pool, built-in, op list, stale, fail at, lying, short, sink fail, rebucket; else
/// steps),
/// `via >> 4` its argument.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[expect(missing_docs, reason = "the fields are described in the type's docs")]
pub struct RawReq {
    pub kind: u8,
    pub start: u8,
    pub len: u8,
    pub obj: u8,
    pub off: u8,
    pub flags: u8,
    pub via: u8,
}

impl RawReq {
    /// Encoded size in bytes.
    pub const SIZE: usize = 7;

    /// Decodes the first [`RawReq::SIZE`] bytes of `b` (missing bytes are zero).
    #[must_use]
    pub fn from_bytes(b: &[u8]) -> Self {
        let g = |i: usize| b.get(i).copied().unwrap_or(0);
        Self {
            kind: g(0),
            start: g(1),
            len: g(2),
            obj: g(3),
            off: g(4),
            flags: g(5),
            via: g(6),
        }
    }

    /// The encoding.
    #[must_use]
    pub fn to_bytes(self) -> [u8; Self::SIZE] {
        [
            self.kind, self.start, self.len, self.obj, self.off, self.flags, self.via,
        ]
    }
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Map a range.
    Map(Mapping),
    /// Unmap a range.
    Unmap {
        /// First address.
        addr: u64,
        /// Length.
        len: u64,
    },
}

impl Kind {
    /// `(addr, len)` of the request.
    #[must_use]
    pub fn addr_len(&self) -> (u64, u64) {
        match *self {
            Kind::Map(m) => (m.addr, m.len),
            Kind::Unmap { addr, len } => (addr, len),
        }
    }

    /// The most nodes applying the request may take.
    #[must_use]
    pub fn max_nodes(&self) -> usize {
        match self {
            Kind::Map(_) => MAX_MAP_NODES,
            Kind::Unmap { .. } => MAX_UNMAP_NODES,
        }
    }
}

/// How a request is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Step API with a recording visitor and a reservation of exactly the worst case.
    Step,
    /// Step API with a 5-node `Vec` pool.
    StepBigPool,
    /// `sm_map` with the built-in [`Apply`] / `unmap`.
    Builtin,
    /// `sm_*_ops`, then `apply_ops` with a recording visitor.
    OpList,
    /// Step API, then re-apply the list recorded before: `Stale` unless nothing changed.
    StaleReapply,
    /// A visitor that fails on its N-th step (0-based).
    FailAt(usize),
    /// A pool claiming the worst case but holding only N nodes.
    Lying(usize),
    /// A pool holding N nodes, taken modulo the worst case: `ReservationTooSmall`.
    Short(usize),
    /// Walk into a sink failing at its N-th op (must not change anything), then apply by steps.
    SinkFail(usize),
    /// Move the mappings to a directory of `2^(N % 7)` buckets (or the advised size) first (must
    /// not change anything, nor make earlier op lists stale), then apply by steps.
    Rebucket(usize),
}

/// One request for [`Harness::run`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Req {
    /// What to do.
    pub kind: Kind,
    /// How to apply it.
    pub via: Via,
}

/// The error a recording visitor returns when told to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepFailed(pub usize);

impl fmt::Display for StepFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {} failed on purpose", self.0)
    }
}

impl std::error::Error for StepFailed {}

/// A step visitor that records every op it applies (and the payload / hole it saw), optionally
/// failing on its N-th call without applying that step.
#[derive(Clone, Debug, Default)]
pub struct Recorder {
    /// Ops applied, as [`Op`] values.
    pub ops: Vec<Op>,
    /// For each applied `Unmap`/`Remap`: the payload of the mapping removed.
    pub removed_data: Vec<u64>,
    /// For each applied `Remap`: [`OpRemap::hole`].
    pub holes: Vec<Range<u64>>,
    /// Payload for the new mapping.
    pub map_data: u64,
    /// Fail (without applying) on this call, counting from 0.
    pub fail_at: Option<usize>,
    /// Calls so far, including a failed one.
    pub calls: usize,
}

impl Recorder {
    /// A recorder giving a new mapping `map_data`.
    #[must_use]
    pub fn new(map_data: u64) -> Self {
        Self {
            map_data,
            ..Self::default()
        }
    }

    /// A recorder that fails on call `n`.
    #[must_use]
    pub fn failing_at(map_data: u64, n: usize) -> Self {
        Self {
            fail_at: Some(n),
            ..Self::new(map_data)
        }
    }

    fn enter(&mut self) -> Result<(), StepFailed> {
        let n = self.calls;
        self.calls += 1;
        if self.fail_at == Some(n) {
            Err(StepFailed(n))
        } else {
            Ok(())
        }
    }
}

impl<P: NodePtr<u64>> SmVisitor<u64, P> for Recorder {
    type Error = StepFailed;

    fn step_map<'op>(&mut self, op: OpMap<'op, u64, P>) -> Result<OpMapped<'op>, StepFailed> {
        self.enter()?;
        self.ops.push(Op::Map(*op.mapping()));
        Ok(op.insert(self.map_data))
    }

    fn step_remap<'op>(&mut self, op: OpRemap<'op, u64, P>) -> Result<OpRemapped<'op>, StepFailed> {
        self.enter()?;
        self.ops.push(Op::Remap {
            unmap: op.va().mapping(),
            keep: op.keep(),
            prev: op.prev().copied(),
            next: op.next().copied(),
        });
        self.removed_data.push(*op.va().data());
        self.holes.push(op.hole());
        Ok(op.remap())
    }

    fn step_unmap<'op>(&mut self, op: OpUnmap<'op, u64, P>) -> Result<OpUnmapped<'op>, StepFailed> {
        self.enter()?;
        self.ops.push(Op::Unmap {
            va: op.va().mapping(),
            keep: op.keep(),
        });
        self.removed_data.push(*op.va().data());
        Ok(op.remove())
    }
}

/// A node pool that claims `claim` nodes whatever it holds: a broken [`NodePool`].
#[derive(Debug)]
pub struct LyingPool<P> {
    /// The nodes it really has.
    pub nodes: Vec<P>,
    /// What [`NodePool::available`] reports.
    pub claim: usize,
}

impl<P> NodePool<P> for LyingPool<P> {
    fn available(&self) -> usize {
        self.claim
    }
    fn take(&mut self) -> Option<P> {
        self.nodes.pop()
    }
}

/// A common view of the errors of every apply entry point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Success.
    Ok,
    /// `Range(e)`.
    Range(RangeError),
    /// `ReservationTooSmall`.
    TooSmall {
        /// Nodes needed.
        needed: usize,
        /// Nodes available.
        available: usize,
    },
    /// `ReservationExhausted`.
    Exhausted,
    /// `Visitor(e)`.
    Visitor(StepFailed),
    /// `ApplyError::Stale`.
    Stale,
    /// A variant this harness does not know (the enums are non-exhaustive).
    Other(String),
}

impl<E: Into<Outcome>> From<Result<(), E>> for Outcome {
    fn from(r: Result<(), E>) -> Self {
        r.map_or_else(Into::into, |()| Outcome::Ok)
    }
}

/// Converts a visitor error into an [`Outcome`].
pub trait IntoOutcome: fmt::Debug {
    /// The outcome.
    fn outcome(self) -> Outcome;
}

impl IntoOutcome for StepFailed {
    fn outcome(self) -> Outcome {
        Outcome::Visitor(self)
    }
}

impl IntoOutcome for Infallible {
    fn outcome(self) -> Outcome {
        match self {}
    }
}

impl<E: IntoOutcome> From<MapError<E>> for Outcome {
    fn from(e: MapError<E>) -> Self {
        match e {
            MapError::Range(r) => Outcome::Range(r),
            MapError::ReservationTooSmall { needed, available } => {
                Outcome::TooSmall { needed, available }
            }
            MapError::ReservationExhausted => Outcome::Exhausted,
            MapError::Visitor(v) => v.outcome(),
            other => Outcome::Other(format!("{other:?}")),
        }
    }
}

impl<E: IntoOutcome> From<UnmapError<E>> for Outcome {
    fn from(e: UnmapError<E>) -> Self {
        match e {
            UnmapError::Range(r) => Outcome::Range(r),
            UnmapError::ReservationTooSmall { needed, available } => {
                Outcome::TooSmall { needed, available }
            }
            UnmapError::ReservationExhausted => Outcome::Exhausted,
            UnmapError::Visitor(v) => v.outcome(),
            other => Outcome::Other(format!("{other:?}")),
        }
    }
}

impl<E: IntoOutcome> From<ApplyError<E>> for Outcome {
    fn from(e: ApplyError<E>) -> Self {
        match e {
            ApplyError::Stale => Outcome::Stale,
            ApplyError::Map(e) => e.into(),
            ApplyError::Unmap(e) => e.into(),
            other => Outcome::Other(format!("{other:?}")),
        }
    }
}

/// Everything observable about a tree: its mappings with payloads, generation and length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// `(mapping, payload)` in iteration order.
    pub mappings: Vec<(Mapping, u64)>,
    /// [`GpuVm::generation`].
    pub generation: u64,
    /// [`GpuVm::len`].
    pub len: usize,
}

impl Snapshot {
    /// Takes a snapshot of `vm`.
    #[must_use]
    pub fn of<P: NodePtr<u64>, B: std::ops::DerefMut<Target = [Option<P>]>>(
        vm: &GpuVm<u64, P, B>,
    ) -> Self {
        Self {
            mappings: vm.iter().map(|v| (v.mapping(), *v.data())).collect(),
            generation: vm.generation(),
            len: vm.len(),
        }
    }
}

/// Counters of what the harness saw, to prove a generator exercises every case.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[expect(missing_docs, reason = "self-describing counters")]
pub struct Stats {
    pub requests: u64,
    pub applied_ok: u64,
    pub range_errors: [u64; 4],
    pub too_small: u64,
    pub exhausted: u64,
    pub visitor_failed: u64,
    pub stale: u64,
    pub sink_failed: u64,
    pub rebuckets: u64,
    pub keep_true: u64,
    pub keep_false: u64,
    /// Decision-table rows A1 A2 A3 B1 B2 B3 C1 C2 C3 seen in map requests.
    pub map_cases: [u64; 9],
    pub unmap_remaps: u64,
    pub unmap_unmaps: u64,
    pub empty_unmaps: u64,
    pub null_maps: u64,
    pub max_len: usize,
}

/// Index into [`Stats::range_errors`].
fn range_error_index(e: RangeError) -> usize {
    match e {
        RangeError::ZeroSize => 0,
        RangeError::Overflow => 1,
        RangeError::OutOfRange => 2,
        _ => 3,
    }
}

/// A [`GpuVm`] and its [`Model`], kept in lockstep.
#[derive(Debug)]
pub struct Harness {
    /// The tree under test.
    pub vm: Vm,
    /// The reference model.
    pub model: Model,
    /// What has been exercised so far.
    pub stats: Stats,
    next_id: u64,
}

fn pool_of(n: usize) -> NodeReserve<BoxNode<u64>> {
    let mut pool = NodeReserve::new();
    for _ in 0..n {
        let node = BoxNode::try_new(0).expect("test allocation");
        assert!(pool.push(node).is_ok(), "reserve holds {MAX_MAP_NODES}");
    }
    pool
}

fn boxes(n: usize) -> Vec<BoxNode<u64>> {
    (0..n)
        .map(|_| BoxNode::try_new(0).expect("test allocation"))
        .collect()
}

impl Harness {
    /// An empty VA space of `geom`.
    ///
    /// # Panics
    ///
    /// If `GpuVm::new` refuses the geometry.
    #[must_use]
    pub fn new(geom: &Geometry) -> Self {
        let vm = Vm::with_capacity(geom.space.clone(), geom.reserved.clone(), geom.dir_hint)
            .expect("valid geometry");
        assert_eq!(vm.buckets(), (geom.dir_hint / 2).max(1));
        assert_eq!(vm.range(), geom.space);
        assert_eq!(
            vm.reserved(),
            (!geom.reserved.is_empty()).then(|| geom.reserved.clone())
        );
        Self {
            vm,
            model: Model::new(geom.space.clone(), geom.reserved.clone(), geom.page),
            stats: Stats::default(),
            next_id: 1,
        }
    }

    fn walk(&self, kind: &Kind) -> Result<Vec<Op>, OpsError<Infallible>> {
        let mut ops = Vec::new();
        let rec = |op| {
            ops.push(op);
            Ok::<(), Infallible>(())
        };
        match *kind {
            Kind::Map(m) => self.vm.sm_map_walk(m, rec),
            Kind::Unmap { addr, len } => self.vm.sm_unmap_walk(addr, len, rec),
        }?;
        Ok(ops)
    }

    fn op_list(&self, kind: &Kind) -> Result<gpuva::OpList, OpsError> {
        match *kind {
            Kind::Map(m) => self.vm.sm_map_ops(m),
            Kind::Unmap { addr, len } => self.vm.sm_unmap_ops(addr, len),
        }
    }

    fn step(
        &mut self,
        kind: &Kind,
        pool: &mut impl NodePool<BoxNode<u64>>,
        retired: &mut RetiredList<u64, BoxNode<u64>>,
        rec: &mut Recorder,
    ) -> Outcome {
        match *kind {
            Kind::Map(m) => self.vm.sm_map(m, pool, retired, rec).into(),
            Kind::Unmap { addr, len } => self.vm.sm_unmap(addr, len, pool, retired, rec).into(),
        }
    }

    /// Runs one request and checks everything (see the module docs).
    ///
    /// # Panics
    ///
    /// On any discrepancy between the tree, the model and the documented semantics.
    pub fn run(&mut self, req: &Req) {
        self.stats.requests += 1;
        let before = Snapshot::of(&self.vm);
        let (addr, len) = req.kind.addr_len();
        let map_id = self.next_id;
        self.next_id += 1;
        let walk = self.walk(&req.kind);
        let list = self.op_list(&req.kind);
        let range = match self.model.check_range(addr, len) {
            Err(e) => {
                assert_eq!(walk, Err(OpsError::Range(e)), "walk of invalid {req:?}");
                assert_eq!(list.err(), Some(OpsError::Range(e)), "ops of {req:?}");
                assert_eq!(self.vm.check_range(addr, len), Err(e));
                self.run_invalid(req, e, map_id, &before);
                self.stats.range_errors[range_error_index(e)] += 1;
                return;
            }
            Ok(r) => r,
        };
        assert_eq!(self.vm.check_range(addr, len), Ok(range.clone()));
        let ops = walk.unwrap_or_else(|e| panic!("walk of valid {req:?} failed: {e:?}"));
        let list = list.unwrap_or_else(|e| panic!("op list of valid {req:?} failed: {e:?}"));
        assert_eq!(list.ops(), ops.as_slice(), "op list != walk for {req:?}");
        assert_eq!(
            list.nodes_needed(),
            ops.iter().map(nodes_inserted).sum::<usize>()
        );
        match req.kind {
            Kind::Map(m) => assert_eq!(list.request(), Request::Map(m)),
            Kind::Unmap { addr, len } => assert_eq!(list.request(), Request::Unmap { addr, len }),
        }

        // The ops are exactly drm_gpuvm's, and describe exactly the change.
        let expected = match req.kind {
            Kind::Map(m) => self.model.expected_map_ops(&m),
            Kind::Unmap { .. } => self.model.expected_unmap_ops(range.clone()),
        };
        assert_eq!(
            ops,
            expected,
            "ops for {req:?} on {:#x?}",
            self.model.mappings()
        );
        self.check_op_shapes(&req.kind, &range, &ops);
        let mut via_ops = self.model.clone();
        if let Err(e) = via_ops.apply_ops(&ops, map_id) {
            panic!("ops for {req:?} do not apply to the model: {e}");
        }
        let mut next = self.model.clone();
        match req.kind {
            Kind::Map(m) => next.map(&m, map_id),
            Kind::Unmap { .. } => next.unmap(range.clone()),
        }
        assert_eq!(
            via_ops.pages(),
            next.pages(),
            "ops for {req:?} do not describe the change"
        );

        let applied = self.apply(req, &ops, list, map_id, &before);

        let mut expected_model = self.model.clone();
        if let Err(e) = expected_model.apply_ops(&ops[..applied], map_id) {
            panic!("prefix of ops for {req:?}: {e}");
        }
        self.model = expected_model;
        let after = Snapshot::of(&self.vm);
        let changed = applied > 0;
        assert_eq!(
            after.generation,
            before.generation + u64::from(changed),
            "generation after {req:?} ({applied} ops applied)"
        );
        self.check_state();
        self.check_outside_unchanged(&before, &range, req, applied == ops.len());
        if applied == ops.len() {
            self.stats.applied_ok += 1;
        }
    }

    /// An invalid request through every entry point: the range error, and nothing changes.
    fn run_invalid(&mut self, req: &Req, e: RangeError, map_id: u64, before: &Snapshot) {
        let n = match req.via {
            Via::Short(n) => n % req.kind.max_nodes(),
            _ => req.kind.max_nodes(),
        };
        // Step API (range validation comes before the reservation check).
        let mut pool = pool_of(n);
        let mut retired = RetiredList::new();
        let mut rec = Recorder::new(map_id);
        let got = self.step(&req.kind, &mut pool, &mut retired, &mut rec);
        assert_eq!(got, Outcome::Range(e), "{req:?}");
        assert_eq!(rec.calls, 0, "visitor called for invalid {req:?}");
        assert_eq!(pool.len(), n, "pool touched by invalid {req:?}");
        assert!(retired.is_empty());
        // Built-in appliers.
        let got: Outcome = match req.kind {
            Kind::Map(m) => self
                .vm
                .sm_map(m, &mut pool, &mut retired, &mut Apply::new(map_id))
                .into(),
            Kind::Unmap { addr, len } => self.vm.unmap(addr, len, &mut pool, &mut retired).into(),
        };
        assert_eq!(got, Outcome::Range(e), "{req:?}");
        if let Kind::Map(m) = req.kind {
            assert_eq!(
                Outcome::from(self.vm.map(m, &mut pool, &mut retired)),
                Outcome::Range(e)
            );
        } else {
            let (addr, len) = req.kind.addr_len();
            assert_eq!(
                Outcome::from(
                    self.vm
                        .sm_unmap(addr, len, &mut pool, &mut retired, &mut rec)
                ),
                Outcome::Range(e)
            );
        }
        assert_eq!(pool.len(), n);
        assert!(retired.is_empty());
        assert_eq!(
            &Snapshot::of(&self.vm),
            before,
            "invalid {req:?} changed the tree"
        );
        self.check_state();
    }

    /// Applies a valid request the way `req.via` says; checks the outcome, the visitor's view and
    /// the node accounting. Returns how many of `ops` were applied.
    fn apply(
        &mut self,
        req: &Req,
        ops: &[Op],
        list: gpuva::OpList,
        map_id: u64,
        before: &Snapshot,
    ) -> usize {
        let max = req.kind.max_nodes();
        let mut retired = RetiredList::new();
        let mut rec = Recorder::new(map_id);
        let (applied, strays) = match req.via {
            Via::Step | Via::StaleReapply | Via::SinkFail(_) | Via::Rebucket(_) => {
                if let Via::SinkFail(k) = req.via {
                    self.check_sink_fail(&req.kind, ops, k, before);
                }
                if let Via::Rebucket(n) = req.via {
                    self.rebucket(n, &list, before);
                }
                let mut pool = pool_of(max);
                let got = self.step(&req.kind, &mut pool, &mut retired, &mut rec);
                assert_eq!(got, Outcome::Ok, "{req:?}");
                self.check_taken(ops, max - pool.len(), max);
                if req.via == Via::StaleReapply {
                    self.check_stale(&list, ops, map_id);
                }
                (ops.len(), 0)
            }
            Via::StepBigPool => {
                let mut pool = boxes(5);
                let got = self.step(&req.kind, &mut pool, &mut retired, &mut rec);
                assert_eq!(got, Outcome::Ok, "{req:?}");
                self.check_taken(ops, 5 - pool.len(), max);
                (ops.len(), 0)
            }
            Via::Builtin => {
                let mut pool = pool_of(max);
                let got: Outcome = match req.kind {
                    Kind::Map(m) => self
                        .vm
                        .sm_map(m, &mut pool, &mut retired, &mut Apply::new(map_id))
                        .into(),
                    Kind::Unmap { addr, len } => {
                        self.vm.unmap(addr, len, &mut pool, &mut retired).into()
                    }
                };
                assert_eq!(got, Outcome::Ok, "{req:?}");
                self.check_taken(ops, max - pool.len(), max);
                // Apply does not record; let the checks below see the walk's ops.
                rec.ops = ops.to_vec();
                rec.removed_data = self.removed_ids(ops);
                (ops.len(), 0)
            }
            Via::OpList => {
                let mut pool = pool_of(max);
                let got: Outcome = self
                    .vm
                    .apply_ops(&list, &mut pool, &mut retired, &mut rec)
                    .into();
                assert_eq!(got, Outcome::Ok, "{req:?}");
                self.check_taken(ops, max - pool.len(), max);
                (ops.len(), 0)
            }
            Via::FailAt(k) => {
                rec = Recorder::failing_at(map_id, k);
                let mut pool = pool_of(max);
                let got = self.step(&req.kind, &mut pool, &mut retired, &mut rec);
                let applied = k.min(ops.len());
                if k < ops.len() {
                    assert_eq!(got, Outcome::Visitor(StepFailed(k)), "{req:?}");
                    self.stats.visitor_failed += 1;
                } else {
                    assert_eq!(got, Outcome::Ok, "{req:?}");
                }
                self.check_taken(&ops[..applied], max - pool.len(), max);
                (applied, 0)
            }
            Via::Lying(n) => {
                let mut pool = LyingPool {
                    nodes: boxes(n),
                    claim: max,
                };
                let got = self.step(&req.kind, &mut pool, &mut retired, &mut rec);
                // Ops apply while the real nodes last; the first that needs more fails unapplied.
                let mut remaining = n;
                let mut fail = None;
                for (i, op) in ops.iter().enumerate() {
                    let need = nodes_inserted(op);
                    if need > remaining {
                        fail = Some((i, remaining));
                        break;
                    }
                    remaining -= need;
                }
                match fail {
                    Some((i, strays)) => {
                        assert_eq!(got, Outcome::Exhausted, "{req:?} with {n} real nodes");
                        assert!(pool.nodes.is_empty());
                        // The visitor was told about the failing step too.
                        assert_eq!(rec.ops.as_slice(), &ops[..=i]);
                        rec.ops.truncate(i);
                        rec.removed_data.truncate(i);
                        self.stats.exhausted += 1;
                        (i, strays)
                    }
                    None => {
                        assert_eq!(got, Outcome::Ok, "{req:?} with {n} real nodes");
                        assert_eq!(pool.nodes.len(), remaining);
                        (ops.len(), 0)
                    }
                }
            }
            Via::Short(n) => {
                let n = n % max;
                let mut pool = pool_of(n);
                let got = self.step(&req.kind, &mut pool, &mut retired, &mut rec);
                assert_eq!(
                    got,
                    Outcome::TooSmall {
                        needed: max,
                        available: n
                    },
                    "{req:?}"
                );
                assert_eq!(pool.len(), n);
                self.stats.too_small += 1;
                (0, 0)
            }
        };
        // The visitor saw exactly the applied prefix of the walk's ops, with the right payloads.
        assert_eq!(
            rec.ops.as_slice(),
            &ops[..applied],
            "visitor's ops, {req:?}"
        );
        let ids = self.removed_ids(&ops[..applied]);
        assert_eq!(
            rec.removed_data, ids,
            "payloads of removed mappings, {req:?}"
        );
        // Retired: stray nodes from a lying pool last, then every removed mapping, most recent first.
        assert_eq!(retired.len(), ids.len() + strays, "retired, {req:?}");
        let got: Vec<(Mapping, u64)> = retired
            .iter()
            .skip(strays)
            .map(|v| (v.mapping(), *v.data()))
            .collect();
        let mut want: Vec<(Mapping, u64)> = ops[..applied]
            .iter()
            .filter_map(removed_by)
            .zip(ids)
            .collect();
        want.reverse();
        assert_eq!(got, want, "retired mappings, {req:?}");
        applied
    }

    /// Model ids (payloads) of the mappings `ops` remove, in op order.
    fn removed_ids(&self, ops: &[Op]) -> Vec<u64> {
        ops.iter()
            .filter_map(removed_by)
            .map(|m| self.model.translation(m.addr).map_or(u64::MAX, |p| p.id))
            .collect()
    }

    fn check_taken(&self, ops: &[Op], taken: usize, max: usize) {
        let inserted: usize = ops.iter().map(nodes_inserted).sum();
        assert_eq!(taken, inserted, "nodes taken vs inserted for {ops:?}");
        assert!(taken <= max, "{taken} nodes taken, bound {max}");
    }

    /// Moves the mappings into a new directory of `2^(n % 7)` buckets, or of the size
    /// `rebucket_advice` gives when `n % 8 == 7` (nothing if it gives none): nothing observable
    /// changes, the old directory comes back empty, and the op list recorded before is still
    /// current.
    fn rebucket(&mut self, n: usize, list: &gpuva::OpList, before: &Snapshot) {
        let buckets = if n % 8 == 7 {
            match self.vm.rebucket_advice() {
                Some(b) => b,
                None => return,
            }
        } else {
            1 << (n % 7)
        };
        let dir = gpuva::alloc_buckets(buckets).expect("test allocation");
        let old = self.vm.rebucket(dir).expect("an empty directory");
        assert!(old.iter().all(Option::is_none), "old directory not emptied");
        assert_eq!(self.vm.buckets(), buckets);
        assert_eq!(
            &Snapshot::of(&self.vm),
            before,
            "rebucket changed the mappings"
        );
        self.stats.rebuckets += 1;
        self.check_state();
        // Still current: recording again gives the same ops.
        let again = match list.request() {
            Request::Map(m) => self.vm.sm_map_ops(m),
            Request::Unmap { addr, len } => self.vm.sm_unmap_ops(addr, len),
        }
        .expect("valid");
        assert_eq!(again.ops(), list.ops());
    }

    /// Walking into a sink that fails at op `k` returns the sink's error after exactly `k` ops.
    fn check_sink_fail(&mut self, kind: &Kind, ops: &[Op], k: usize, before: &Snapshot) {
        let mut seen = Vec::new();
        let sink = |op| {
            if seen.len() == k {
                return Err(k);
            }
            seen.push(op);
            Ok(())
        };
        let got = match *kind {
            Kind::Map(m) => self.vm.sm_map_walk(m, sink),
            Kind::Unmap { addr, len } => self.vm.sm_unmap_walk(addr, len, sink),
        };
        if k < ops.len() {
            assert_eq!(got, Err(OpsError::Sink(k)));
            self.stats.sink_failed += 1;
        } else {
            assert_eq!(got, Ok(()));
        }
        assert_eq!(seen.as_slice(), &ops[..k.min(ops.len())]);
        assert_eq!(&Snapshot::of(&self.vm), before);
    }

    /// Re-applying a list after the request ran: stale iff the request changed the tree.
    fn check_stale(&mut self, list: &gpuva::OpList, ops: &[Op], map_id: u64) {
        let now = Snapshot::of(&self.vm);
        let mut pool = pool_of(MAX_MAP_NODES);
        let mut retired = RetiredList::new();
        let mut rec = Recorder::new(map_id);
        let got: Outcome = self
            .vm
            .apply_ops(list, &mut pool, &mut retired, &mut rec)
            .into();
        if ops.is_empty() {
            // Nothing changed, so the list is still current (and still empty).
            assert_eq!(got, Outcome::Ok);
        } else {
            assert_eq!(got, Outcome::Stale);
            self.stats.stale += 1;
        }
        assert_eq!(rec.calls, 0);
        assert_eq!(pool.len(), MAX_MAP_NODES);
        assert!(retired.is_empty());
        assert_eq!(Snapshot::of(&self.vm), now, "stale apply changed the tree");
    }

    fn check_op_shapes(&mut self, kind: &Kind, r: &Range<u64>, ops: &[Op]) {
        let (a0, e0) = (r.start, r.end);
        let req = match kind {
            Kind::Map(m) => Some(m),
            Kind::Unmap { .. } => None,
        };
        let mut last_end = None;
        for (i, op) in ops.iter().enumerate() {
            let is_last = i + 1 == ops.len();
            if let Op::Map(m) = op {
                assert!(
                    is_last && req == Some(m),
                    "Map must be last and the request"
                );
                assert_eq!(op.affected(), m.range());
                if m.obj.is_none() {
                    self.stats.null_maps += 1;
                }
                continue;
            }
            let (v, keep) = match op {
                Op::Unmap { va, keep } => (va, *keep),
                Op::Remap { unmap, keep, .. } => (unmap, *keep),
                Op::Map(_) => unreachable!(),
            };
            // Ascending, disjoint, overlapping the request.
            assert!(last_end.is_none_or(|e| e <= v.addr), "ops out of order");
            assert!(
                v.addr < e0 && v.end() > a0,
                "op for a non-overlapping {v:?}"
            );
            last_end = Some(v.end());
            // keep iff same (non-NULL) object and the same offset delta.
            let want = req.is_some_and(|q| {
                v.obj.is_some()
                    && v.obj == q.obj
                    && v.offset.wrapping_sub(v.addr) == q.offset.wrapping_sub(q.addr)
            });
            assert_eq!(keep, want, "keep for {op:?}");
            if req.is_some() {
                if keep {
                    self.stats.keep_true += 1;
                } else {
                    self.stats.keep_false += 1;
                }
            }
            // The hole is exactly V ∩ R.
            assert_eq!(op.affected(), v.addr.max(a0)..v.end().min(e0), "{op:?}");
            if req.is_some() {
                let col = match v.end().cmp(&e0) {
                    std::cmp::Ordering::Equal => 0,
                    std::cmp::Ordering::Less => 1,
                    std::cmp::Ordering::Greater => 2,
                };
                let row = match v.addr.cmp(&a0) {
                    std::cmp::Ordering::Equal => 0,
                    std::cmp::Ordering::Less => 1,
                    std::cmp::Ordering::Greater => 2,
                };
                self.stats.map_cases[row * 3 + col] += 1;
            } else if matches!(op, Op::Remap { .. }) {
                self.stats.unmap_remaps += 1;
            } else {
                self.stats.unmap_unmaps += 1;
            }
        }
        if req.is_none() && ops.is_empty() {
            self.stats.empty_unmaps += 1;
        }
        assert_eq!(req.is_some(), matches!(ops.last(), Some(Op::Map(_))));
        let remaps = ops.iter().filter(|o| matches!(o, Op::Remap { .. })).count();
        assert!(remaps <= 2, "at most two remaps: {ops:?}");
    }

    /// The tree equals the model and satisfies the structural invariants; lookups agree.
    ///
    /// # Panics
    ///
    /// On any difference.
    pub fn check_state(&mut self) {
        let snap = Snapshot::of(&self.vm);
        let space = self.model.space();
        let reserved = self.model.reserved();
        let list: Vec<Mapping> = snap.mappings.iter().map(|(m, _)| *m).collect();
        if let Err(e) = check_invariants(&space, &reserved, &list) {
            panic!("tree invariant broken: {e}\n{list:#x?}");
        }
        let want = self.model.mappings();
        assert_eq!(snap.mappings, want, "tree != model");
        assert_eq!(snap.len, want.len(), "len()");
        assert_eq!(self.vm.is_empty(), want.is_empty());
        self.stats.max_len = self.stats.max_len.max(snap.len);

        let page = self.model.page();
        let translate = |v: &gpuva::GpuVa<u64, BoxNode<u64>>, a: u64| {
            (v.obj(), v.offset().wrapping_add(a - v.addr()), v.flags())
        };
        // Page by page, through lookup; boundaries through find_prev / find_next / find.
        let first = space.start / page;
        for p in first.saturating_sub(2)..(space.end / page).saturating_add(2) {
            let Some(a) = p.checked_mul(page) else { break };
            let want_page = self.model.translation(a).filter(|_| space.contains(&a));
            for probe in [a, a + (page - 1)] {
                let got = self.vm.lookup(probe);
                assert_eq!(
                    got.map(|v| (translate(v, a), *v.data())),
                    want_page.map(|w| (w.translation(), w.id)),
                    "lookup({probe:#x})"
                );
            }
            let ends_here = want.iter().find(|(m, _)| m.end() == a).map(|(m, _)| *m);
            assert_eq!(
                self.vm.find_prev(a).map(|v| v.mapping()),
                ends_here,
                "find_prev({a:#x})"
            );
            let starts_here = want.iter().find(|(m, _)| m.addr == a).map(|(m, _)| *m);
            assert_eq!(
                self.vm.find_next(a).map(|v| v.mapping()),
                starts_here,
                "find_next({a:#x})"
            );
        }
        for (m, id) in &want {
            let got = self
                .vm
                .find(m.addr, m.len)
                .map(|v| (v.mapping(), *v.data()));
            assert_eq!(got, Some((*m, *id)), "find of an existing mapping");
            assert!(self.vm.find(m.addr, m.len + page).is_none());
            if m.len > page {
                assert!(self.vm.find(m.addr + page, m.len - page).is_none());
            }
        }
        // A few ranges through iter_range / find_first / is_range_empty.
        let n = space.end / page - space.start / page;
        for (s, l) in [(0, n), (1, 1), (3, 7), (n / 2, n / 3), (n - 1, 1), (10, 20)] {
            let r = space.start + s * page..space.start + (s + l) * page;
            let got: Vec<Mapping> = self.vm.iter_range(r.clone()).map(|v| v.mapping()).collect();
            let want_r: Vec<Mapping> = want
                .iter()
                .map(|(m, _)| *m)
                .filter(|m| m.addr < r.end && m.end() > r.start)
                .collect();
            assert_eq!(got, want_r, "iter_range({r:#x?})");
            assert_eq!(
                self.vm.find_first(r.clone()).map(|v| v.mapping()),
                want_r.first().copied()
            );
            assert_eq!(self.vm.is_range_empty(r.clone()), want_r.is_empty());
        }
        assert!(self.vm.find_first(space.start..space.start).is_none());
    }

    /// Translations outside the request are unchanged; inside, after a complete request, they are
    /// the request's (map) or gone (unmap).
    fn check_outside_unchanged(
        &self,
        before: &Snapshot,
        r: &Range<u64>,
        req: &Req,
        complete: bool,
    ) {
        let page = self.model.page();
        let old = Model::from_mappings(
            self.model.space(),
            self.model.reserved(),
            page,
            &before.mappings,
        )
        .expect("the previous tree was valid");
        let now_list = Snapshot::of(&self.vm).mappings;
        let now = Model::from_mappings(self.model.space(), self.model.reserved(), page, &now_list)
            .expect("the tree is valid");
        let inside = r.start / page..r.end / page;
        for p in old.pages().keys().chain(now.pages().keys()) {
            let (o, n) = (old.pages().get(p), now.pages().get(p));
            if !inside.contains(p) {
                assert_eq!(o, n, "page {p:#x} outside {req:?} changed");
            } else if complete {
                let want = match req.kind {
                    Kind::Map(m) => {
                        Some((m.obj, m.offset.wrapping_add(p * page - m.addr), m.flags))
                    }
                    Kind::Unmap { .. } => None,
                };
                assert_eq!(
                    n.map(|x| x.translation()),
                    want,
                    "page {p:#x} inside {req:?}"
                );
            }
        }
    }

    /// Unmaps everything (around the cut-out) and checks the tree ends empty.
    ///
    /// # Panics
    ///
    /// If anything is left.
    pub fn finish(&mut self) {
        let space = self.model.space();
        let res = self.model.reserved();
        let parts = if res.is_empty() {
            [space.clone(), 0..0]
        } else {
            [space.start..res.start, res.end..space.end]
        };
        for part in parts.into_iter().filter(|p| !p.is_empty()) {
            self.run(&Req {
                kind: Kind::Unmap {
                    addr: part.start,
                    len: part.end - part.start,
                },
                via: Via::Step,
            });
        }
        assert!(
            self.vm.is_empty(),
            "tree not empty after unmapping everything"
        );
        assert!(self.model.is_empty());
        assert_eq!(self.vm.depth(), 0);
    }
}
