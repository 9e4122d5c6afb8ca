//! Differential harness: runs requests against a real [`GpuVm`] and the page-granular [`Model`]
//! (plus a model of the object links), checking every documented invariant after every request
//! (the full-state comparisons of 5. below after every [`Harness::full_every`]-th request and at
//! the end, for speed in the fuzz target).
//!
//! Used by the property test (`tests/tests/gpuva_props.rs`), the fuzz target (`fuzz/`, through
//! [`crate::fuzz_body`]) and the corpus replay test. Checks panic with a description: proptest
//! shrinks on panics, libFuzzer records them as crashes.
//!
//! Per request ([`Harness::run`]), after the driver's prepare stage (`shortfall`, `reserve` from a
//! bag of exactly the shortfall, `link_obtain` for a map of an object):
//!
//! 1. validation: the model's `check_range` decides; on an error every entry point (steps, the
//!    `map`/`unmap` shorthands, walk, op list) returns that error, without calling the visitor,
//!    and leaves everything unchanged: the counters (generation, len, spare and claimed nodes,
//!    nodes taken, heights, live links) after every request, the whole [`State`] (mappings with
//!    payloads, links with counts, pins, flags, data and addresses) on the requests that run the
//!    full comparisons; as the model does not change either, the next full comparison of 5. also
//!    catches a refusal that changed a mapping;
//! 2. the ops recorded by the walk *before* applying equal the op list's, equal the model's
//!    decision-table ops, have `keep` iff same object and same offset delta, and applied to the
//!    model give exactly the page-by-page next state;
//! 3. the request is applied one of several ways ([`Via`]): the step API with a recording visitor
//!    (which must see the walk's ops), `Apply`, `apply_ops`, `apply_plan`, a stale re-apply, a
//!    visitor failing at step N, a claim too small, a foreign claim, a map without a link, a
//!    failing op sink; link operations and `trim` between requests;
//! 4. accounting: the nodes a request draws from the spare cache (`nodes_taken()` delta) never
//!    exceed `nodes_for(&req)`; the claim is used up by exactly that bound; payloads handed back
//!    through `SmVisitor::removed` are the unmapped/split mappings' in op order;
//! 5. the tree equals the model mapping by mapping and page by page (through `lookup`, `find`,
//!    `find_prev`/`find_next`, `iter_range`), `check_invariants()` holds, heights stay within
//!    `bounds()`, and every link counts exactly the model's mappings of its object, at the model's
//!    addresses.
//!
//! What the previous storage needed and this one does not have is gone from the harness: pools
//! that lie about their size (a claim is checked against the VA space's own spare cache, so there
//! is nothing to lie with), retired lists (payloads come back through `SmVisitor::removed`) and
//! bucket directories (the B+tree has no maintenance step).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::ops::Range;

use gpuva::{
    Apply, ApplyError, BoxNode, Claim, GpuVm, LinkError, LinkPin, Mapping, NodeBag, NodePtr, ObjId,
    Op, OpMap, OpMapped, OpRemap, OpRemapped, OpUnmap, OpUnmapped, OpsError, RangeError, Request,
    SmVisitor, StepError, VaFlags,
};

use crate::model::{check_invariants, removed_by, Model, Page};

/// The node handle of the harness's VA spaces.
pub type Node = BoxNode<u64, u64>;

/// The VA space type the harness drives: mapping payload = the model's mapping id, link payload =
/// a value unique to the link's creation.
pub type Vm = GpuVm<u64, Node, u64>;

/// A bag of harness nodes.
pub type Bag = NodeBag<u64, u64, Node>;

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
    /// The VA space's granule (1 or `page`).
    pub granule: u64,
    /// Whether the VA space keeps object links.
    pub links: bool,
}

/// Pages in every harness geometry.
pub const PAGES: u64 = 64;

/// How many layouts [`Geometry::select`] chooses from (times 4 modes).
pub const GEOMETRIES: u8 = 8;

impl Geometry {
    /// One of [`GEOMETRIES`] layouts (`sel` modulo that): 4 KiB pages at 0, at 1 MiB with a cut-out
    /// in the middle, at the start and at the end, at the top of the address space; unit pages at 0
    /// with and without a cut-out, and ending exactly at `u64::MAX` with a cut-out. `sel / 8 % 4`
    /// picks the mode: 0 links and granule 1, 1 links and granule = page, 2 no links and granule =
    /// page, 3 no links and granule 1. (It used to pick a bucket directory, which no longer exists;
    /// the byte keeps its place in the input encoding.)
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
        let (links, paged) = match (sel / GEOMETRIES) % 4 {
            0 => (true, false),
            1 => (true, true),
            2 => (false, true),
            _ => (false, false),
        };
        Self {
            space: start..start + PAGES * page,
            reserved,
            page,
            granule: if paged { page } else { 1 },
            links,
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
        let mut addr = self
            .space
            .start
            .wrapping_add(idx.wrapping_sub(3).wrapping_mul(page));
        // Rarely, half a page off where the granule is a page: refused as unaligned. (Not on
        // granule-1 geometries, where it would be valid and below the model's resolution.)
        if raw.flags & 0xf0 == 0xf0 && self.granule > 1 {
            addr = addr.wrapping_add(page / 2);
        }
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
            4 => Via::BigClaim(arg),
            5 => Via::Builtin,
            6 => Via::OpList,
            7 => Via::StaleReapply,
            8 => Via::FailAt(arg % 4),
            9 => Via::NoPin,
            10 => Via::Short(arg),
            11 => Via::SinkFail(arg % 4),
            12 => Via::Plan,
            14 => Via::LinkOp(arg),
            15 => Via::Trim(arg),
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
/// `(off >> 2)` pages, 3 linear wrapping through 2^64; `flags % 4` the flags, and `flags & 0xf0 ==
/// 0xf0` moves the start half a page (unaligned on page-granular geometries); `via & 0xf` chooses
/// the [`Via`] (4 big claim, 5 built-in, 6 op list, 7 stale, 8 fail at, 9 no pin, 10 short and
/// foreign claims, 11 sink fail, 12 plan, 14 a link operation first, 15 trim after; else steps),
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

    /// The gpuva request.
    #[must_use]
    pub fn request(&self) -> Request {
        match *self {
            Kind::Map(m) => Request::Map(m),
            Kind::Unmap { addr, len } => Request::Unmap { addr, len },
        }
    }

    /// The object a map request needs a link for.
    #[must_use]
    pub fn map_obj(&self) -> Option<ObjId> {
        match self {
            Kind::Map(m) => m.obj,
            Kind::Unmap { .. } => None,
        }
    }
}

/// How a request is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Step API with a recording visitor and a claim of exactly the bound.
    Step,
    /// Step API with a claim of the bound plus N nodes: exactly N are left afterwards.
    BigClaim(usize),
    /// [`Apply`] through `step`, or the `unmap` shorthand.
    Builtin,
    /// `sm_*_ops`, then `apply_ops` with a recording visitor.
    OpList,
    /// Step API, then re-apply the list recorded before: `Stale` unless nothing changed.
    StaleReapply,
    /// A visitor that fails on its N-th step (0-based).
    FailAt(usize),
    /// No `link_obtain` in prepare: a map of an object without a link is `NoLink`.
    NoPin,
    /// A foreign claim (refused), then a claim of N modulo the bound (`ReservationTooSmall`).
    Short(usize),
    /// Walk into a sink failing at its N-th op (must not change anything), then apply by steps.
    SinkFail(usize),
    /// Walk into a caller buffer, refuse a foreign plan, apply the plan.
    Plan,
    /// A link operation before the request (see [`Harness::link_op`]), then steps.
    LinkOp(usize),
    /// Steps, then `trim(N)` in cleanup.
    Trim(usize),
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

/// A step visitor that records every op it applies (and the hole it saw) and every payload handed
/// back, optionally failing on its N-th call without applying that step.
#[derive(Clone, Debug, Default)]
pub struct Recorder {
    /// Ops applied, as [`Op`] values.
    pub ops: Vec<Op>,
    /// For each applied `Unmap`/`Remap`: the payload the op showed for the mapping it removes.
    pub seen_data: Vec<u64>,
    /// What [`SmVisitor::removed`] handed back, in order.
    pub removed: Vec<(Mapping, u64)>,
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

impl SmVisitor<u64> for Recorder {
    type Error = StepFailed;

    fn step_map<'op>(&mut self, op: OpMap<'op, u64>) -> Result<OpMapped<'op>, StepFailed> {
        self.enter()?;
        self.ops.push(Op::Map(*op.mapping()));
        Ok(op.insert(self.map_data))
    }

    fn step_remap<'op>(&mut self, op: OpRemap<'op, u64>) -> Result<OpRemapped<'op>, StepFailed> {
        self.enter()?;
        self.ops.push(Op::Remap {
            unmap: op.va().mapping(),
            keep: op.keep(),
            prev: op.prev().copied(),
            next: op.next().copied(),
        });
        self.seen_data.push(*op.va().data());
        self.holes.push(op.hole());
        Ok(op.remap())
    }

    fn step_unmap<'op>(&mut self, op: OpUnmap<'op, u64>) -> Result<OpUnmapped<'op>, StepFailed> {
        self.enter()?;
        self.ops.push(Op::Unmap {
            va: op.va().mapping(),
            keep: op.keep(),
        });
        self.seen_data.push(*op.va().data());
        Ok(op.remove())
    }

    fn removed(&mut self, va: Mapping, data: u64) {
        self.removed.push((va, data));
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
    /// A claim (or plan) of another VA space.
    Foreign,
    /// `NoLink(obj)`.
    NoLink(ObjId),
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

impl<E: IntoOutcome> From<StepError<E>> for Outcome {
    fn from(e: StepError<E>) -> Self {
        match e {
            StepError::Range(r) => Outcome::Range(r),
            StepError::ReservationTooSmall { needed, available } => {
                Outcome::TooSmall { needed, available }
            }
            StepError::Foreign => Outcome::Foreign,
            StepError::NoLink(o) => Outcome::NoLink(o),
            StepError::Visitor(v) => v.outcome(),
            other => Outcome::Other(format!("{other:?}")),
        }
    }
}

impl<E: IntoOutcome> From<ApplyError<E>> for Outcome {
    fn from(e: ApplyError<E>) -> Self {
        match e {
            ApplyError::Stale => Outcome::Stale,
            ApplyError::Foreign => Outcome::Foreign,
            ApplyError::Step(e) => e.into(),
            other => Outcome::Other(format!("{other:?}")),
        }
    }
}

/// One live link as the VA space shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkView<L> {
    /// The object.
    pub obj: ObjId,
    /// `Link::mappings`.
    pub mappings: u64,
    /// `Link::pins`.
    pub pins: u32,
    /// `Link::is_external`.
    pub external: bool,
    /// `Link::is_evicted`.
    pub evicted: bool,
    /// `Link::data`.
    pub data: L,
    /// `GpuVm::link_addrs`.
    pub addrs: Vec<u64>,
}

/// Everything observable about a VA space: mappings with payloads, generation, length, the spare
/// cache, claims, nodes taken, links and heights.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State<D, L> {
    /// `(mapping, payload)` in iteration order.
    pub mappings: Vec<(Mapping, D)>,
    /// [`GpuVm::generation`].
    pub generation: u64,
    /// [`GpuVm::len`].
    pub len: usize,
    /// [`GpuVm::spare_nodes`].
    pub spare: usize,
    /// [`GpuVm::claimed_nodes`].
    pub claimed: usize,
    /// [`GpuVm::nodes_taken`].
    pub taken: u64,
    /// [`GpuVm::links`], with each link's addresses.
    pub links: Vec<LinkView<L>>,
    /// [`GpuVm::heights`].
    pub heights: [usize; 3],
}

impl<D: Clone, L: Clone> State<D, L> {
    /// Takes a snapshot of `vm`.
    #[must_use]
    pub fn of<P: NodePtr<D, L>>(vm: &GpuVm<D, P, L>) -> Self {
        let mut mappings = Vec::with_capacity(vm.len());
        mappings.extend(vm.iter().map(|v| (v.mapping(), v.data().clone())));
        Self {
            mappings,
            generation: vm.generation(),
            len: vm.len(),
            spare: vm.spare_nodes(),
            claimed: vm.claimed_nodes(),
            taken: vm.nodes_taken(),
            links: Self::links_of(vm),
            heights: vm.heights(),
        }
    }

    /// The `links` part of [`State::of`] alone.
    #[must_use]
    pub fn links_of<P: NodePtr<D, L>>(vm: &GpuVm<D, P, L>) -> Vec<LinkView<L>> {
        vm.links()
            .map(|l| LinkView {
                obj: l.obj(),
                mappings: l.mappings(),
                pins: l.pins(),
                external: l.is_external(),
                evicted: l.is_evicted(),
                data: l.data().clone(),
                addrs: vm.link_addrs(l.obj()).collect(),
            })
            .collect()
    }
}

/// The harness's snapshot type.
pub type Snapshot = State<u64, u64>;

/// What the harness keeps of the VA space before a request: its counters always (generation,
/// length, spare cache, claims, nodes taken, heights, live links), the whole [`Snapshot`] only
/// when the full comparisons are due. A refusal is proven harmless by the counters after every
/// request, and by the whole snapshot (and the next tree-vs-model comparison, since the model
/// does not change on a refusal) every `full_every`-th.
#[derive(Clone, Debug)]
struct Before {
    generation: u64,
    len: usize,
    counters: Counters,
    snap: Option<Snapshot>,
}

/// The counters of a VA space, cheap to take: see [`Before`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Counters {
    generation: u64,
    len: usize,
    spare: usize,
    claimed: usize,
    taken: u64,
    heights: [usize; 3],
    links: usize,
}

impl Counters {
    fn of(vm: &Vm) -> Self {
        Self {
            generation: vm.generation(),
            len: vm.len(),
            spare: vm.spare_nodes(),
            claimed: vm.claimed_nodes(),
            taken: vm.nodes_taken(),
            heights: vm.heights(),
            links: vm.links().count(),
        }
    }
}

impl Before {
    fn of(vm: &Vm, full: bool) -> Self {
        Self {
            generation: vm.generation(),
            len: vm.len(),
            counters: Counters::of(vm),
            snap: full.then(|| Snapshot::of(vm)),
        }
    }

    fn snap(&self) -> &Snapshot {
        self.snap
            .as_ref()
            .expect("the harness takes a snapshot before every request that needs one")
    }

    /// `vm` is as it was: its counters, and the whole snapshot when one was taken.
    fn assert_unchanged(&self, vm: &Vm, what: &dyn fmt::Display) {
        assert_eq!(Counters::of(vm), self.counters, "{what} changed a counter");
        if let Some(snap) = &self.snap {
            assert_eq!(&Snapshot::of(vm), snap, "{what} changed something");
        }
    }
}

/// Counters of what the harness saw, to prove a generator exercises every case.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[expect(missing_docs, reason = "self-describing counters")]
pub struct Stats {
    pub requests: u64,
    pub applied_ok: u64,
    /// ZeroSize, Overflow, OutOfRange, Reserved, Unaligned.
    pub range_errors: [u64; 5],
    pub too_small: u64,
    pub foreign: u64,
    pub no_link: u64,
    pub visitor_failed: u64,
    pub stale: u64,
    pub sink_failed: u64,
    pub plans: u64,
    pub trims: u64,
    pub keep_true: u64,
    pub keep_false: u64,
    /// Decision-table rows A1 A2 A3 B1 B2 B3 C1 C2 C3 seen in map requests.
    pub map_cases: [u64; 9],
    pub unmap_remaps: u64,
    pub unmap_unmaps: u64,
    pub empty_unmaps: u64,
    pub null_maps: u64,
    pub max_len: usize,
    pub links_created: u64,
    pub pins_held: u64,
    pub pins_put: u64,
    pub zombies_drained: u64,
    pub flag_changes: u64,
    pub flag_refusals: u64,
    /// Links that stayed alive with no mapping because of a pin.
    pub pinned_empty: u64,
    /// Most nodes one request drew from the spare cache.
    pub max_taken: u64,
}

impl Stats {
    /// Adds `o` to `self`.
    pub fn add(&mut self, o: &Stats) {
        macro_rules! sum {
            ($($f:ident),*) => { $( self.$f += o.$f; )* };
        }
        sum!(
            requests,
            applied_ok,
            too_small,
            foreign,
            no_link,
            visitor_failed,
            stale,
            sink_failed,
            plans,
            trims,
            keep_true,
            keep_false,
            unmap_remaps,
            unmap_unmaps,
            empty_unmaps,
            null_maps,
            links_created,
            pins_held,
            pins_put,
            zombies_drained,
            flag_changes,
            flag_refusals,
            pinned_empty
        );
        for (a, b) in self.range_errors.iter_mut().zip(o.range_errors) {
            *a += b;
        }
        for (a, b) in self.map_cases.iter_mut().zip(o.map_cases) {
            *a += b;
        }
        self.max_len = self.max_len.max(o.max_len);
        self.max_taken = self.max_taken.max(o.max_taken);
    }
}

/// Index into [`Stats::range_errors`].
fn range_error_index(e: RangeError) -> usize {
    match e {
        RangeError::ZeroSize => 0,
        RangeError::Overflow => 1,
        RangeError::OutOfRange => 2,
        RangeError::Reserved => 3,
        _ => 4,
    }
}

/// The model of one link the VA space holds (live or zombie).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkModel {
    /// Outstanding pins.
    pub pins: u32,
    /// External flag.
    pub external: bool,
    /// Evicted flag.
    pub evicted: bool,
    /// The payload it was created with.
    pub data: u64,
}

/// Pins the harness holds across requests at most.
const MAX_HELD_PINS: usize = 8;

/// A [`GpuVm`] and its [`Model`], kept in lockstep.
#[derive(Debug)]
pub struct Harness {
    /// The tree under test.
    pub vm: Vm,
    /// The reference model of the mappings.
    pub model: Model,
    /// The model of the links the VA space holds (by raw object id), zombies included.
    pub links: BTreeMap<u64, LinkModel>,
    /// Pins held across requests (from [`Via::LinkOp`]).
    pins: Vec<LinkPin>,
    /// Another VA space of the same geometry: the source of foreign claims, pins and plans.
    other: Vm,
    /// What has been exercised so far.
    pub stats: Stats,
    next_id: u64,
    /// Full-state comparisons (tree vs model page by page, links, lookups, pages outside the
    /// request) run after every `full_every`-th request only, and always at the end
    /// ([`Harness::finish_with`]); 1 (the default) checks after every request. The per-request
    /// checks (validation, ops against the decision table and the model, accounting, refusals
    /// leaving the state unchanged) always run.
    pub full_every: u64,
}

fn vm_of(geom: &Geometry) -> Vm {
    let vm = Vm::with_granule(geom.space.clone(), geom.reserved.clone(), geom.granule)
        .expect("valid geometry");
    if geom.links {
        vm
    } else {
        vm.without_links()
    }
}

impl Harness {
    /// An empty VA space of `geom`.
    ///
    /// # Panics
    ///
    /// If `GpuVm::with_granule` refuses the geometry.
    #[must_use]
    pub fn new(geom: &Geometry) -> Self {
        let vm = vm_of(geom);
        assert_eq!(vm.range(), geom.space);
        assert_eq!(vm.granule(), geom.granule);
        assert_eq!(vm.has_links(), geom.links);
        assert_eq!(
            vm.reserved(),
            (!geom.reserved.is_empty()).then(|| geom.reserved.clone())
        );
        assert_eq!(vm.heights(), [0, 0, 0]);
        let b = vm.bounds();
        assert_eq!(
            b.max_mappings,
            u128::from((geom.space.end - geom.space.start) / geom.granule)
        );
        if !geom.links {
            assert_eq!((b.map_obj, b.link), (b.map_null, 0), "{b:?}");
        }
        Self {
            vm,
            other: vm_of(geom),
            model: Model::new(geom.space.clone(), geom.reserved.clone(), geom.page)
                .with_granule(geom.granule),
            links: BTreeMap::new(),
            pins: Vec::new(),
            stats: Stats::default(),
            next_id: 1,
            full_every: 1,
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

    /// Prepare: claims `need` nodes the way a driver does (a bag of exactly the shortfall), and
    /// updates the link model for the zombies `reserve` drains.
    fn claim(&mut self, need: usize) -> Claim {
        let short = self.vm.shortfall(need);
        let (spare, claimed) = (self.vm.spare_nodes(), self.vm.claimed_nodes());
        assert_eq!(short, (claimed + need).saturating_sub(spare), "shortfall");
        let zombies = self.links.len();
        self.drained_zombies();
        let zombies = zombies > self.links.len();
        let mut bag = Bag::try_alloc(short).expect("test allocation");
        let claim = self
            .vm
            .reserve(need, &mut bag)
            .expect("bag of the shortfall");
        assert!(bag.is_empty(), "reserve took exactly the shortfall");
        assert_eq!(claim.nodes(), need);
        assert_eq!(self.vm.claimed_nodes(), claimed + need);
        // Draining zombies can give link-tree nodes back to the spare cache.
        if zombies {
            assert!(self.vm.spare_nodes() >= spare + short);
        } else {
            assert_eq!(self.vm.spare_nodes(), spare + short);
        }
        claim
    }

    /// The model side of draining zombies: every link with no mapping and no pin goes.
    fn drained_zombies(&mut self) {
        if self.links.is_empty() {
            return;
        }
        let counts = self.model_counts();
        let before = self.links.len();
        self.links
            .retain(|o, l| l.pins > 0 || counts.get(o).copied().unwrap_or(0) > 0);
        self.stats.zombies_drained += (before - self.links.len()) as u64;
    }

    /// Mappings per object in the model.
    fn model_counts(&self) -> BTreeMap<u64, u64> {
        self.model.with_mappings(|ms| {
            let mut c = BTreeMap::new();
            for (m, _) in ms {
                if let Some(o) = m.obj {
                    *c.entry(o.get()).or_insert(0) += 1;
                }
            }
            c
        })
    }

    /// Pins `obj`'s link out of `claim` (creating it with a fresh payload), checking the node
    /// bound and the link's state.
    fn obtain(&mut self, obj: ObjId, claim: &mut Claim) -> LinkPin {
        let data = self.next_id * 1000 + obj.get();
        self.next_id += 1;
        let taken = self.vm.nodes_taken();
        let left = claim.nodes();
        let pin = self
            .vm
            .link_obtain(obj, claim, || data)
            .unwrap_or_else(|e| panic!("link_obtain({obj:?}): {e:?}"));
        let drawn = self.vm.nodes_taken() - taken;
        assert!(
            drawn <= self.vm.link_nodes() as u64,
            "link_obtain drew {drawn} nodes, bound {}",
            self.vm.link_nodes()
        );
        assert_eq!(claim.nodes(), left - self.vm.link_nodes());
        assert_eq!(pin.obj(), obj);
        let e = self.links.entry(obj.get()).or_insert_with(|| {
            self.stats.links_created += 1;
            LinkModel {
                pins: 0,
                external: false,
                evicted: false,
                data,
            }
        });
        e.pins += 1;
        pin
    }

    /// Gives a pin back, checking the link model.
    fn put(&mut self, pin: LinkPin) {
        let obj = pin.obj();
        assert_eq!(self.vm.link_put(pin).map_err(|(_, e)| e), Ok(()));
        let l = self
            .links
            .get_mut(&obj.get())
            .expect("a pinned link exists");
        l.pins -= 1;
        self.stats.pins_put += 1;
    }

    /// A link operation on object `1 + (arg >> 2) % 3`: `arg & 3` 0 pins it (held until a later
    /// put or the end), 1 puts a held pin (and drains zombies when the object is 3), 2 toggles
    /// external, 3 toggles evicted (refused with `NoLink` unless the link is live). With links off,
    /// every one is `LinksDisabled` / `NoLink` and changes nothing.
    ///
    /// # Panics
    ///
    /// On any difference from the link model.
    pub fn link_op(&mut self, arg: usize) {
        let raw = 1 + (arg as u64 >> 2) % 3;
        let obj = ObjId::new(raw).expect("non-zero");
        let links_on = self.vm.has_links();
        match arg & 3 {
            0 if links_on && self.pins.len() < MAX_HELD_PINS => {
                let mut claim = self.claim(self.vm.link_nodes());
                let pin = self.obtain(obj, &mut claim);
                self.pins.push(pin);
                self.stats.pins_held += 1;
                assert_eq!(self.vm.release(claim), Ok(()));
            }
            0 if !links_on => {
                let mut claim = self.claim(0);
                let before = Snapshot::of(&self.vm);
                let r = self.vm.link_obtain(obj, &mut claim, || 0);
                assert_eq!(r, Err(LinkError::LinksDisabled));
                assert_eq!(Snapshot::of(&self.vm), before);
                assert_eq!(self.vm.release(claim), Ok(()));
            }
            1 => {
                if let Some(i) = self.pins.iter().position(|p| p.obj() == obj) {
                    let pin = self.pins.swap_remove(i);
                    self.put(pin);
                }
                if raw == 3 {
                    let counts = self.model_counts();
                    let mut want: Vec<(ObjId, u64)> = self
                        .links
                        .iter()
                        .filter(|(o, l)| l.pins == 0 && counts.get(o).copied().unwrap_or(0) == 0)
                        .filter_map(|(o, l)| Some((ObjId::new(*o)?, l.data)))
                        .collect();
                    let mut got = Vec::new();
                    self.vm.drain_zombies(|o, d| got.push((o, d)));
                    got.sort();
                    want.sort();
                    assert_eq!(got, want, "drained zombies");
                    self.drained_zombies();
                }
            }
            op @ (2 | 3) => {
                let counts = self.model_counts();
                let live = self
                    .links
                    .get(&raw)
                    .filter(|l| l.pins > 0 || counts.get(&raw).copied().unwrap_or(0) > 0);
                match live.copied() {
                    Some(l) => {
                        let on = if op == 2 { !l.external } else { !l.evicted };
                        let r = if op == 2 {
                            self.vm.set_external(obj, on)
                        } else {
                            self.vm.set_evicted(obj, on)
                        };
                        assert_eq!(r, Ok(()));
                        let m = self.links.get_mut(&raw).expect("live");
                        if op == 2 {
                            m.external = on;
                        } else {
                            m.evicted = on;
                        }
                        self.stats.flag_changes += 1;
                    }
                    None => {
                        let before = Snapshot::of(&self.vm);
                        let r = if op == 2 {
                            self.vm.set_external(obj, true)
                        } else {
                            self.vm.set_evicted(obj, true)
                        };
                        assert_eq!(r, Err(LinkError::NoLink(obj)));
                        assert_eq!(Snapshot::of(&self.vm), before, "refused flag change");
                        self.stats.flag_refusals += 1;
                    }
                }
            }
            _ => {}
        }
        if self.full_due() {
            self.check_links();
        }
    }

    /// Whether the full-state comparisons are due after this request (see
    /// [`Harness::full_every`]).
    fn full_due(&self) -> bool {
        self.full_every <= 1 || self.stats.requests.is_multiple_of(self.full_every)
    }

    /// Runs one request and checks everything (see the module docs).
    ///
    /// # Panics
    ///
    /// On any discrepancy between the tree, the models and the documented semantics.
    pub fn run(&mut self, req: &Req) {
        self.stats.requests += 1;
        if let Via::LinkOp(arg) = req.via {
            self.link_op(arg);
        }
        let (addr, len) = req.kind.addr_len();
        let map_id = self.next_id;
        self.next_id += 1;
        let request = req.kind.request();
        let need = self.vm.nodes_for(&request);
        let bounds = self.vm.bounds();
        assert_eq!(need, bounds.for_request(&request));
        let want_need = match req.kind {
            Kind::Map(m) if m.obj.is_some() => bounds.map_obj,
            Kind::Map(_) => bounds.map_null,
            Kind::Unmap { .. } => bounds.unmap,
        };
        assert_eq!(
            need, want_need,
            "nodes_for is the bound of the request kind"
        );

        // Prepare, as a driver does: claim the bound (plus a link), pin the map's object.
        let pin_obj = req
            .kind
            .map_obj()
            .filter(|_| self.vm.has_links() && req.via != Via::NoPin);
        let link_need = if pin_obj.is_some() {
            self.vm.link_nodes()
        } else {
            0
        };
        let run_need = match req.via {
            Via::BigClaim(extra) => need + extra,
            Via::Short(n) => n % need,
            _ => need,
        };
        let claimed0 = self.vm.claimed_nodes();
        let mut claim = self.claim(run_need + link_need);
        let pin = pin_obj.map(|o| self.obtain(o, &mut claim));
        assert_eq!(claim.nodes(), run_need);
        if self.full_due() {
            self.check_links();
        }

        let range = self.model.check_range(addr, len);
        let before = Before::of(&self.vm, self.full_due());
        let walk = self.walk(&req.kind);
        let list = self.op_list(&req.kind);
        let applied = match range {
            Err(e) => {
                assert_eq!(walk, Err(OpsError::Range(e)), "walk of invalid {req:?}");
                assert_eq!(list.err(), Some(OpsError::Range(e)), "ops of {req:?}");
                assert_eq!(self.vm.check_range(addr, len), Err(e));
                self.run_invalid(req, e, map_id, &mut claim, &before);
                self.stats.range_errors[range_error_index(e)] += 1;
                None
            }
            Ok(ref range) => {
                assert_eq!(self.vm.check_range(addr, len), Ok(range.clone()));
                let ops = walk.unwrap_or_else(|e| panic!("walk of valid {req:?} failed: {e:?}"));
                let list =
                    list.unwrap_or_else(|e| panic!("op list of valid {req:?} failed: {e:?}"));
                Some(self.run_valid(req, range, &ops, &list, map_id, &mut claim, &before))
            }
        };

        // Cleanup: give back the rest of the claim and the pin; optionally trim.
        assert_eq!(self.vm.release(claim), Ok(()));
        assert_eq!(self.vm.claimed_nodes(), claimed0, "claims all released");
        if let Some(p) = pin {
            let obj = p.obj();
            self.put(p);
            let empty = self.model_counts().get(&obj.get()).copied().unwrap_or(0) == 0;
            if empty && self.links.get(&obj.get()).is_some_and(|l| l.pins > 0) {
                self.stats.pinned_empty += 1;
            }
        }
        if let Via::Trim(keep) = req.via {
            self.trim(keep);
        }
        if self.full_due() {
            self.check_state();
        }
        if applied.is_some_and(|a| a) {
            self.stats.applied_ok += 1;
        }
    }

    fn trim(&mut self, keep: usize) {
        let (spare, claimed, taken) = (
            self.vm.spare_nodes(),
            self.vm.claimed_nodes(),
            self.vm.nodes_taken(),
        );
        let bag = self.vm.trim(keep);
        let out = spare.saturating_sub(claimed + keep);
        assert_eq!(
            bag.len(),
            out,
            "trim({keep}) of {spare} spare, {claimed} claimed"
        );
        assert_eq!(self.vm.spare_nodes(), spare - out);
        assert_eq!(self.vm.nodes_taken(), taken + out as u64);
        self.stats.trims += 1;
    }

    /// An invalid request through every entry point: the range error, and nothing changes.
    fn run_invalid(
        &mut self,
        req: &Req,
        e: RangeError,
        map_id: u64,
        claim: &mut Claim,
        before: &Before,
    ) {
        let left = claim.nodes();
        let mut rec = Recorder::new(map_id);
        let got: Outcome = self.vm.step(req.kind.request(), claim, &mut rec).into();
        assert_eq!(got, Outcome::Range(e), "{req:?}");
        assert_eq!(rec.calls, 0, "visitor called for invalid {req:?}");
        let got: Outcome = match req.kind {
            Kind::Map(m) => self.vm.map(m, claim).into(),
            Kind::Unmap { addr, len } => self.vm.unmap(addr, len, claim).into(),
        };
        assert_eq!(got, Outcome::Range(e), "{req:?}");
        let got: Outcome = self
            .vm
            .step(req.kind.request(), claim, &mut Apply::new(map_id))
            .into();
        assert_eq!(got, Outcome::Range(e), "{req:?}");
        assert_eq!(claim.nodes(), left, "claim used by invalid {req:?}");
        before.assert_unchanged(&self.vm, &format_args!("invalid {req:?}"));
        assert!(rec.removed.is_empty());
    }

    /// A valid request: the op checks, then applying it the way `req.via` says. Returns whether
    /// the request was applied completely.
    #[expect(clippy::too_many_arguments, reason = "one call site, all context")]
    fn run_valid(
        &mut self,
        req: &Req,
        range: &Range<u64>,
        ops: &[Op],
        list: &gpuva::OpList,
        map_id: u64,
        claim: &mut Claim,
        before: &Before,
    ) -> bool {
        let request = req.kind.request();
        let need = self.vm.nodes_for(&request);
        assert_eq!(list.ops(), ops, "op list != walk for {req:?}");
        assert_eq!(list.nodes_needed(), need, "nodes_needed is the bound");
        assert_eq!(list.plan().nodes_needed(), need);
        assert_eq!(list.request(), request);
        assert_eq!(list.plan().request(), request);

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
        self.check_op_shapes(&req.kind, range, ops);
        // The request changes nothing outside its range and the whole mappings it overlaps.
        let affected = ops
            .iter()
            .filter_map(removed_by)
            .fold(range.clone(), |a, m| {
                a.start.min(m.addr)..a.end.max(m.end())
            });
        let old_local = self.model.mappings_in(&affected).len();

        let applied = self.apply(req, ops, list, map_id, claim, before);

        // The ops describe exactly the change: applied to the model, they give the request's
        // pages inside its range and the old ones around it. Then the model follows what was
        // applied (a prefix, when the visitor failed).
        let saved = self.model.pages_in(&affected);
        if let Err(e) = self.model.apply_ops(ops, map_id) {
            panic!("ops for {req:?} do not apply to the model: {e}");
        }
        self.check_model_change(req, range, &affected, &saved, map_id);
        if applied < ops.len() {
            self.model.restore(&affected, &saved);
            if let Err(e) = self.model.apply_ops(&ops[..applied], map_id) {
                panic!("prefix of ops for {req:?}: {e}");
            }
        }
        if req.via == Via::StaleReapply {
            self.check_stale(list, ops, map_id);
        }
        let changed = applied > 0;
        assert_eq!(
            self.vm.generation(),
            before.generation + u64::from(changed),
            "generation after {req:?} ({applied} ops applied)"
        );
        self.check_local(req, &affected, before.len, old_local);
        if self.full_due() {
            self.check_state();
            self.check_outside_unchanged(before.snap(), range, req, applied == ops.len());
        }
        applied == ops.len()
    }

    /// The model after applying all of a request's `ops`, against the request: inside `range`
    /// its pages (map) or none (unmap), elsewhere in `affected` the `saved` ones.
    fn check_model_change(
        &self,
        req: &Req,
        range: &Range<u64>,
        affected: &Range<u64>,
        saved: &[(u64, Page)],
        map_id: u64,
    ) {
        let page = self.model.page();
        let inside = range.start / page..range.end / page;
        let mut want: Vec<(u64, Page)> = saved
            .iter()
            .filter(|(p, _)| !inside.contains(p))
            .copied()
            .collect();
        if let Kind::Map(m) = req.kind {
            want.extend(inside.map(|p| {
                let page = Page {
                    id: map_id,
                    obj: m.obj,
                    offset: m.offset_after(p * page - m.addr),
                    flags: m.flags,
                    repeat: m.repeat,
                };
                (p, page)
            }));
            want.sort_unstable_by_key(|(p, _)| *p);
        }
        assert_eq!(
            self.model.pages_in(affected),
            want,
            "ops for {req:?} do not describe the change"
        );
    }

    /// The per-request comparison, proportional to the request: the tree's mappings (with
    /// payloads) overlapping `affected` equal the model's, the length moved by the difference,
    /// and the pages at both ends of `affected` and just outside it translate as the model says.
    fn check_local(&self, req: &Req, affected: &Range<u64>, len0: usize, old_local: usize) {
        let want = self.model.mappings_in(affected);
        let got: Vec<(Mapping, u64)> = self
            .vm
            .iter_range(affected.clone())
            .map(|v| (v.mapping(), *v.data()))
            .collect();
        assert_eq!(got, want, "tree != model in {affected:#x?} after {req:?}");
        assert_eq!(
            self.vm.len() + old_local,
            len0 + want.len(),
            "len() after {req:?}"
        );
        let page = self.model.page();
        let ends = [
            affected.start.checked_sub(page),
            Some(affected.start),
            affected.end.checked_sub(page),
            Some(affected.end),
        ];
        for a in ends.into_iter().flatten() {
            self.check_lookup(a);
        }
    }

    /// `lookup` of the first and last address of the page at `a` agrees with the model.
    fn check_lookup(&self, a: u64) {
        let page = self.model.page();
        let space = self.model.space();
        let want = self.model.translation(a).filter(|_| space.contains(&a));
        for probe in [a, a + (page - 1)] {
            let got = self.vm.lookup(probe).map(|v| {
                let t = (v.obj(), v.offset().wrapping_add(a - v.addr()), v.flags());
                (t, *v.data())
            });
            assert_eq!(
                got,
                want.map(|w| (w.translation(), w.id)),
                "lookup({probe:#x})"
            );
        }
    }

    /// Applies a valid request the way `req.via` says; checks the outcome, the visitor's view,
    /// the payloads handed back and the node bound. Returns how many of `ops` were applied.
    fn apply(
        &mut self,
        req: &Req,
        ops: &[Op],
        list: &gpuva::OpList,
        map_id: u64,
        claim: &mut Claim,
        before: &Before,
    ) -> usize {
        let request = req.kind.request();
        let need = self.vm.nodes_for(&request);
        let left = claim.nodes();
        let taken0 = self.vm.nodes_taken();
        let mut rec = Recorder::new(map_id);
        let no_link = req
            .kind
            .map_obj()
            .filter(|o| self.vm.has_links() && !self.links.contains_key(&o.get()));
        // Refusals: nothing changes, the claim is untouched, the visitor is never called.
        let refused = |h: &mut Self, got: Outcome, want: Outcome, rec: &Recorder, claim: &Claim| {
            assert_eq!(got, want, "{req:?}");
            assert_eq!(rec.calls, 0, "visitor called for refused {req:?}");
            assert_eq!(claim.nodes(), left, "claim used by refused {req:?}");
            before.assert_unchanged(&h.vm, &format_args!("refused {req:?}"));
        };
        if let Some(obj) = no_link {
            // Only reachable without a pin: a map of an object with no link is refused.
            assert_eq!(req.via, Via::NoPin);
            let got = self.vm.step(request, claim, &mut rec).into();
            refused(self, got, Outcome::NoLink(obj), &rec, claim);
            let got = self.vm.apply_ops(list, claim, &mut rec).into();
            refused(self, got, Outcome::NoLink(obj), &rec, claim);
            self.stats.no_link += 1;
            return 0;
        }
        let applied = match req.via {
            Via::Short(n) => {
                // A foreign claim first: refused whatever its size.
                let mut foreign = self.other.reserve_boxed(need).expect("test allocation");
                let got = self.vm.step(request, &mut foreign, &mut rec).into();
                refused(self, got, Outcome::Foreign, &rec, claim);
                let got = self.vm.apply_ops(list, &mut foreign, &mut rec).into();
                refused(self, got, Outcome::Foreign, &rec, claim);
                assert_eq!(foreign.nodes(), need, "foreign claim used");
                let foreign = self
                    .vm
                    .release(foreign)
                    .expect_err("a foreign claim is not released here");
                assert_eq!(self.other.release(foreign), Ok(()));
                self.stats.foreign += 1;
                // Then a claim too small: refused, nothing changed.
                let n = n % need;
                let want = Outcome::TooSmall {
                    needed: need,
                    available: n,
                };
                let got = self.vm.step(request, claim, &mut rec).into();
                refused(self, got, want.clone(), &rec, claim);
                let got = self.vm.apply_ops(list, claim, &mut rec).into();
                refused(self, got, want, &rec, claim);
                self.stats.too_small += 1;
                return 0;
            }
            Via::Step
            | Via::NoPin
            | Via::BigClaim(_)
            | Via::StaleReapply
            | Via::SinkFail(_)
            | Via::LinkOp(_)
            | Via::Trim(_) => {
                if let Via::SinkFail(k) = req.via {
                    self.check_sink_fail(&req.kind, ops, k, before);
                }
                let got: Outcome = self.vm.step(request, claim, &mut rec).into();
                assert_eq!(got, Outcome::Ok, "{req:?}");
                ops.len()
            }
            Via::Builtin => {
                let got: Outcome = match req.kind {
                    Kind::Map(m) => self
                        .vm
                        .step(Request::Map(m), claim, &mut Apply::new(map_id)),
                    Kind::Unmap { addr, len } => self.vm.unmap(addr, len, claim),
                }
                .into();
                assert_eq!(got, Outcome::Ok, "{req:?}");
                // Apply does not record; let the checks below see the walk's ops.
                rec.ops = ops.to_vec();
                rec.seen_data = self.removed_ids(ops);
                rec.removed = self.removed_pairs(ops);
                ops.len()
            }
            Via::OpList => {
                let got: Outcome = self.vm.apply_ops(list, claim, &mut rec).into();
                assert_eq!(got, Outcome::Ok, "{req:?}");
                ops.len()
            }
            Via::Plan => {
                // Recorded into a caller buffer; a plan of the other VA space is refused.
                let mut buf = crate::sink::FixedOps::<80>::new();
                let plan = self
                    .vm
                    .walk(request, |op| buf.try_push(op))
                    .expect("80 ops are enough for 64 pages");
                assert!(buf.iter().eq(ops.iter()), "walk into a buffer");
                assert_eq!(plan, *list.plan());
                if let Ok(foreign) = self.other.walk(request, |_| Ok::<(), Infallible>(())) {
                    let got = self.vm.apply_plan(&foreign, claim, &mut rec).into();
                    refused(self, got, Outcome::Foreign, &rec, claim);
                }
                let got: Outcome = self.vm.apply_plan(&plan, claim, &mut rec).into();
                assert_eq!(got, Outcome::Ok, "{req:?}");
                self.stats.plans += 1;
                ops.len()
            }
            Via::FailAt(k) => {
                rec = Recorder::failing_at(map_id, k);
                let got: Outcome = self.vm.step(request, claim, &mut rec).into();
                if k < ops.len() {
                    assert_eq!(got, Outcome::Visitor(StepFailed(k)), "{req:?}");
                    self.stats.visitor_failed += 1;
                    assert_eq!(rec.calls, k + 1, "the walk stops at the failing step");
                } else {
                    assert_eq!(got, Outcome::Ok, "{req:?}");
                }
                if let Err(e) = self.vm.check_invariants() {
                    panic!("after a visitor failure in {req:?}: {e}");
                }
                k.min(ops.len())
            }
        };
        // The bound: a request never draws more than `nodes_for` from the spare cache, and uses
        // up exactly that much of its claim (also when the visitor failed).
        let drawn = self.vm.nodes_taken() - taken0;
        assert!(
            drawn <= need as u64,
            "{req:?} drew {drawn} nodes, bound {need}"
        );
        self.stats.max_taken = self.stats.max_taken.max(drawn);
        assert_eq!(claim.nodes(), left - need, "claim after {req:?}");
        if let Via::BigClaim(extra) = req.via {
            assert_eq!(claim.nodes(), extra);
        }
        // The visitor saw exactly the applied prefix of the walk's ops, with the right payloads,
        // and got the removed payloads back in op order.
        assert_eq!(
            rec.ops.as_slice(),
            &ops[..applied],
            "visitor's ops, {req:?}"
        );
        assert_eq!(
            rec.seen_data,
            self.removed_ids(&ops[..applied]),
            "payloads shown by the ops, {req:?}"
        );
        assert_eq!(
            rec.removed,
            self.removed_pairs(&ops[..applied]),
            "payloads handed back through removed(), {req:?}"
        );
        let holes: Vec<Range<u64>> = ops[..applied]
            .iter()
            .filter(|o| matches!(o, Op::Remap { .. }))
            .map(Op::affected)
            .collect();
        if !matches!(req.via, Via::Builtin) {
            assert_eq!(rec.holes, holes, "OpRemap::hole, {req:?}");
        }
        applied
    }

    /// Model ids (payloads) of the mappings `ops` remove, in op order.
    fn removed_ids(&self, ops: &[Op]) -> Vec<u64> {
        self.removed_pairs(ops)
            .into_iter()
            .map(|(_, id)| id)
            .collect()
    }

    /// The mappings `ops` remove with their model ids, in op order.
    fn removed_pairs(&self, ops: &[Op]) -> Vec<(Mapping, u64)> {
        ops.iter()
            .filter_map(removed_by)
            .map(|m| {
                let id = self.model.translation(m.addr).map_or(u64::MAX, |p| p.id);
                (m, id)
            })
            .collect()
    }

    /// Walking into a sink that fails at op `k` returns the sink's error after exactly `k` ops.
    fn check_sink_fail(&mut self, kind: &Kind, ops: &[Op], k: usize, before: &Before) {
        let mut seen = Vec::new();
        let sink = |op| {
            if seen.len() == k {
                return Err(k);
            }
            seen.push(op);
            Ok(())
        };
        let got = self.vm.walk(kind.request(), sink);
        if k < ops.len() {
            assert_eq!(got, Err(OpsError::Sink(k)));
            self.stats.sink_failed += 1;
        } else {
            assert!(got.is_ok());
        }
        assert_eq!(seen.as_slice(), &ops[..k.min(ops.len())]);
        before.assert_unchanged(&self.vm, &"a failing sink");
    }

    /// Re-applying a list after the request ran: stale iff the request changed the tree.
    fn check_stale(&mut self, list: &gpuva::OpList, ops: &[Op], map_id: u64) {
        let need = list.nodes_needed();
        let mut claim = self.claim(need);
        let now = Snapshot::of(&self.vm);
        let mut rec = Recorder::new(map_id);
        let got: Outcome = self.vm.apply_ops(list, &mut claim, &mut rec).into();
        if ops.is_empty() {
            // Nothing changed, so the list is still current (an unmap of nothing): it applies,
            // changes nothing, and uses up its bound.
            assert_eq!(got, Outcome::Ok);
            assert_eq!(claim.nodes(), 0);
            let mut again = Snapshot::of(&self.vm);
            again.claimed = now.claimed;
            // It may draw a node from the spare cache and give it back (since gpuva 1b652cb an
            // unmap of nothing on an empty tree does): within the bound, the cache unchanged.
            assert!(again.taken - now.taken <= need as u64);
            again.taken = now.taken;
            assert_eq!(again, now, "an empty list changed something");
        } else {
            assert_eq!(got, Outcome::Stale);
            assert_eq!(claim.nodes(), need);
            assert_eq!(Snapshot::of(&self.vm), now, "stale apply changed something");
            self.stats.stale += 1;
        }
        assert_eq!(rec.calls, 0);
        assert_eq!(self.vm.release(claim), Ok(()));
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
                Op::Map(_) | Op::Prefetch(_) => unreachable!(),
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

    /// The links equal the link model: every mapping with an object counted on exactly one link,
    /// at the model's addresses; pins, flags and payloads as set; zombies invisible.
    ///
    /// # Panics
    ///
    /// On any difference.
    pub fn check_links(&self) {
        let mappings = self.model.mappings();
        let counts = self.model_counts();
        if !self.vm.has_links() {
            assert!(self.links.is_empty() && self.pins.is_empty());
            assert_eq!(self.vm.links().count(), 0);
            for o in 1..=3 {
                let obj = ObjId::new(o).expect("non-zero");
                assert!(self.vm.link(obj).is_none());
                assert_eq!(self.vm.link_addrs(obj).count(), 0);
            }
            assert_eq!(self.vm.heights()[1..], [0, 0]);
            return;
        }
        // Every object with a mapping has a link (maps were refused without one).
        for o in counts.keys() {
            assert!(self.links.contains_key(o), "obj{o} mapped without a link");
        }
        let want: Vec<LinkView<u64>> = self
            .links
            .iter()
            .filter(|(o, l)| l.pins > 0 || counts.get(o).copied().unwrap_or(0) > 0)
            .map(|(o, l)| {
                let obj = ObjId::new(*o).expect("non-zero");
                LinkView {
                    obj,
                    mappings: counts.get(o).copied().unwrap_or(0),
                    pins: l.pins,
                    external: l.external,
                    evicted: l.evicted,
                    data: l.data,
                    addrs: mappings
                        .iter()
                        .filter(|(m, _)| m.obj == Some(obj))
                        .map(|(m, _)| m.addr)
                        .collect(),
                }
            })
            .collect();
        let got = Snapshot::links_of(&self.vm);
        assert_eq!(got, want, "links != model");
        let ext: Vec<ObjId> = want.iter().filter(|l| l.external).map(|l| l.obj).collect();
        let evi: Vec<ObjId> = want.iter().filter(|l| l.evicted).map(|l| l.obj).collect();
        assert_eq!(
            self.vm
                .external_links()
                .map(|l| l.obj())
                .collect::<Vec<_>>(),
            ext
        );
        assert_eq!(
            self.vm.evicted_links().map(|l| l.obj()).collect::<Vec<_>>(),
            evi
        );
        for o in 1..=3 {
            let obj = ObjId::new(o).expect("non-zero");
            let w = want.iter().find(|l| l.obj == obj);
            let l = self.vm.link(obj);
            assert_eq!(
                l.is_some(),
                w.is_some(),
                "link({obj:?}): zombies are invisible"
            );
            if let (Some(l), Some(w)) = (l, w) {
                assert_eq!(
                    (l.mappings(), l.pins(), *l.data()),
                    (w.mappings, w.pins, w.data)
                );
            }
            let addrs: Vec<u64> = self.vm.link_addrs(obj).collect();
            let want_addrs = w.map(|w| w.addrs.clone()).unwrap_or_default();
            assert_eq!(addrs, want_addrs, "link_addrs({obj:?})");
            let ms: Vec<(Mapping, u64)> = self
                .vm
                .link_mappings(obj)
                .map(|v| (v.mapping(), *v.data()))
                .collect();
            let want_ms: Vec<(Mapping, u64)> = mappings
                .iter()
                .filter(|(m, _)| m.obj == Some(obj))
                .copied()
                .collect();
            assert_eq!(ms, want_ms, "link_mappings({obj:?})");
        }
    }

    /// The tree equals the model and satisfies the structural invariants; lookups agree.
    ///
    /// # Panics
    ///
    /// On any difference.
    pub fn check_state(&mut self) {
        if let Err(e) = self.vm.check_invariants() {
            panic!("check_invariants: {e}");
        }
        let b = self.vm.bounds();
        let h = self.vm.heights();
        assert!(
            h[0] <= b.va_height && h[1] <= b.obj_height && h[2] <= b.link_height,
            "heights {h:?} beyond {b:?}"
        );
        assert!(self.vm.spare_nodes() >= self.vm.claimed_nodes());
        self.check_links();
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
        // Page by page, through lookup; boundaries through find_prev / find_next / find.
        let first = space.start / page;
        for p in first.saturating_sub(2)..(space.end / page).saturating_add(2) {
            let Some(a) = p.checked_mul(page) else { break };
            self.check_lookup(a);
            // `want` is ascending and disjoint: starts and ends are both sorted.
            let ends_here = want
                .binary_search_by_key(&a, |(m, _)| m.end())
                .ok()
                .map(|i| want[i].0);
            assert_eq!(
                self.vm.find_prev(a).map(|v| v.mapping()),
                ends_here,
                "find_prev({a:#x})"
            );
            let starts_here = want
                .binary_search_by_key(&a, |(m, _)| m.addr)
                .ok()
                .map(|i| want[i].0);
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
        for p in old.pages().chain(now.pages()).map(|(p, _)| p) {
            let (o, n) = (old.page_at(p), now.page_at(p));
            if !inside.contains(&p) {
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

    /// Puts every held pin, empties the VA space (by unmapping everything around the cut-out, or
    /// with `clear` when `by_clear`), drains the zombies and checks that every structure is empty
    /// and every link's payload came back.
    ///
    /// # Panics
    ///
    /// If anything is left.
    pub fn finish_with(&mut self, by_clear: bool) {
        // The full comparison of the last state, unless the last request just did it.
        if !self.full_due() {
            self.check_state();
        }
        for pin in std::mem::take(&mut self.pins) {
            self.put(pin);
        }
        if by_clear {
            let want = self.model.mappings();
            let mut got = Vec::new();
            let taken = self.vm.nodes_taken();
            self.vm.clear(|m, d| got.push((m, d)));
            // `clear` documents address order; it hands them back in another order (the failing
            // test `gpuva_bad_input::clear_hands_back_mappings_in_address_order` reports that).
            // Here: every mapping exactly once, with its payload.
            got.sort_by_key(|(m, _)| m.addr);
            assert_eq!(got, want, "clear hands back every mapping once");
            assert_eq!(self.vm.nodes_taken(), taken, "clear takes no node");
            let space = self.model.space();
            self.model.unmap(space);
        } else {
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
        }
        assert!(self.vm.is_empty(), "tree not empty after emptying");
        assert!(self.model.is_empty());
        // Empty, with only zombies (and pinned links) left: invisible, counted nowhere. The
        // whole-state comparison follows once they are drained.
        if let Err(e) = self.vm.check_invariants() {
            panic!("check_invariants of the emptied space: {e}");
        }
        self.check_links();
        let mut want: Vec<(ObjId, u64)> = self
            .links
            .iter()
            .filter_map(|(o, l)| Some((ObjId::new(*o)?, l.data)))
            .collect();
        let mut got = Vec::new();
        self.vm.drain_zombies(|o, d| got.push((o, d)));
        got.sort();
        want.sort();
        assert_eq!(got, want, "every link drained once, with its payload");
        self.links.clear();
        self.check_state();
        assert_eq!(self.vm.heights(), [0, 0, 0]);
        assert_eq!(self.vm.claimed_nodes(), 0);
        let spare = self.vm.spare_nodes();
        assert_eq!(self.vm.trim(0).len(), spare);
        assert_eq!(self.vm.spare_nodes(), 0);
    }

    /// [`Harness::finish_with`] by unmapping.
    ///
    /// # Panics
    ///
    /// If anything is left.
    pub fn finish(&mut self) {
        self.finish_with(false);
    }
}
