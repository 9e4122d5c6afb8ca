//! The op generators beyond drm_gpuvm (`gpuva::sm`, "Extensions"): unmap of all mappings of an
//! object, prefetch, attribute split, and the merge policy.
//!
//! * one test per documented case (the diagrams in `gpuva/src/sm/mod.rs` name them);
//! * `random_requests_match_the_reference_model`: random sequences of every request kind, links
//!   on and off, merge on and off, each request checked against a page-granular reference of what
//!   it must do to the translations, its ops replayed on an independent mapping list (so the ops
//!   describe exactly the change), the op list equal to the steps, the node bound respected, the
//!   structure intact, and with merging the canonical form;
//! * `extension_bounds_hold_on_full_trees`: the node bounds on trees filled to their height bound;
//! * `rejected_extension_requests_change_nothing`.

use std::collections::BTreeMap;

use gpuva::{
    Apply, BoxNode, GpuVm, Mapping, ObjId, Op, OpsError, RangeError, Request, StepError, VaFlags,
};
use tests::addr_model::{addrs_of, reference, replay, run, Addrs, Vm};
use tests::harness::Rng;

fn obj(n: u64) -> Option<ObjId> {
    ObjId::new(n)
}

fn ops_of(vm: &Vm, req: Request) -> Vec<Op> {
    vm.request_ops(req).expect("valid").ops().to_vec()
}

fn layout(vm: &Vm) -> Vec<(u64, u64, Option<ObjId>, u64)> {
    vm.iter()
        .map(|v| (v.addr(), v.length(), v.obj(), v.offset()))
        .collect()
}

fn vm_with(links: bool, merge: bool, maps: &[Mapping]) -> Vm {
    let mut vm = Vm::new(0..1000, 0..0).expect("geometry").with_merge(merge);
    if !links {
        vm = vm.without_links();
    }
    for m in maps {
        run(&mut vm, Request::Map(*m)).expect("setup");
    }
    vm
}

// ---------------------------------------------------------------------------------------------
// Unmap all mappings of an object.

/// Case O1: the object's mappings go in address order (drm_gpuvm uses link order), one `Unmap`
/// with keep = false each; other objects' mappings and NULL mappings stay.
#[test]
fn unmap_object_in_address_order() {
    for links in [true, false] {
        // Mapped in a different order from the address order.
        let maps = [
            Mapping::new(500, 100, obj(1), 0),
            Mapping::new(100, 100, obj(1), 300),
            Mapping::new(200, 100, obj(2), 0),
            Mapping::new(300, 50, None, 0),
            Mapping::new(350, 50, obj(1), 7),
        ];
        let mut vm = vm_with(links, false, &maps);
        let req = Request::UnmapObject {
            obj: ObjId::new(1).expect("non-zero"),
        };
        let want = [
            Op::Unmap {
                va: Mapping::new(100, 100, obj(1), 300),
                keep: false,
            },
            Op::Unmap {
                va: Mapping::new(350, 50, obj(1), 7),
                keep: false,
            },
            Op::Unmap {
                va: Mapping::new(500, 100, obj(1), 0),
                keep: false,
            },
        ];
        assert_eq!(ops_of(&vm, req), want);
        assert_eq!(vm.nodes_for(&req), 0);
        assert_eq!(run(&mut vm, req).expect("valid"), want);
        assert_eq!(
            layout(&vm),
            [(200, 100, obj(2), 0), (300, 50, None, 0)],
            "links {links}"
        );
        if links {
            // No pin and no mapping left: a zombie, invisible.
            assert!(vm.link(ObjId::new(1).expect("non-zero")).is_none());
        }
        // Again: nothing left to unmap.
        assert_eq!(run(&mut vm, req).expect("valid"), []);
    }
}

/// Case O2: an object with no mapping (never mapped, or already unmapped) is no request at all.
#[test]
fn unmap_object_of_unmapped_object_is_a_noop() {
    let mut vm = vm_with(true, false, &[Mapping::new(0, 10, obj(2), 0)]);
    let gen = vm.generation();
    let req = Request::UnmapObject {
        obj: ObjId::new(9).expect("non-zero"),
    };
    assert_eq!(run(&mut vm, req).expect("valid"), []);
    assert_eq!(vm.generation(), gen);
    assert_eq!(vm.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Prefetch.

/// Case P1: one `Prefetch` per mapping overlapping the range, whole, ascending; nothing changes;
/// holes are skipped.
#[test]
fn prefetch_one_op_per_overlapping_mapping() {
    let maps = [
        Mapping::new(100, 100, obj(1), 0),
        Mapping::new(250, 50, None, 0),
        Mapping::new(300, 100, obj(2), 5),
        Mapping::new(400, 10, obj(3), 0),
    ];
    let mut vm = vm_with(true, false, &maps);
    let before = layout(&vm);
    let gen = vm.generation();
    let req = Request::Prefetch {
        addr: 150,
        len: 200,
    };
    let want: Vec<Op> = maps[..3].iter().map(|m| Op::Prefetch(*m)).collect();
    assert_eq!(ops_of(&vm, req), want);
    assert_eq!(run(&mut vm, req).expect("valid"), want);
    assert_eq!((layout(&vm), vm.generation()), (before, gen));
}

/// Case P2: the range is validated like a map's: the cut-out, zero size, overflow and the space's
/// edges are refused (drm_gpuvm's prefetch validates nothing).
#[test]
fn prefetch_refuses_the_cut_out() {
    let mut vm = Vm::new(0..1000, 500..600).expect("geometry");
    for (addr, len, e) in [
        (450, 100, RangeError::Reserved),
        (10, 0, RangeError::ZeroSize),
        (u64::MAX, 2, RangeError::Overflow),
        (900, 200, RangeError::OutOfRange),
    ] {
        let req = Request::Prefetch { addr, len };
        assert_eq!(run(&mut vm, req), Err(StepError::Range(e)));
        assert_eq!(vm.walk(req, |_| Ok::<_, ()>(())), Err(OpsError::Range(e)));
    }
    // Touching the cut-out's edges is fine.
    assert_eq!(
        run(
            &mut vm,
            Request::Prefetch {
                addr: 400,
                len: 100
            }
        ),
        Ok(vec![])
    );
}

// ---------------------------------------------------------------------------------------------
// Attribute split.

/// Case S1: the range strictly inside one mapping: two cuts, the second one of the first one's
/// `next` piece; three mappings, translations unchanged, every hole empty, keep = true.
#[test]
fn split_inside_one_mapping() {
    for links in [true, false] {
        let mut vm = vm_with(links, false, &[Mapping::new(100, 300, obj(1), 0)]);
        let req = Request::Split {
            addr: 200,
            len: 100,
        };
        let want = [
            Op::Remap {
                unmap: Mapping::new(100, 300, obj(1), 0),
                keep: true,
                prev: Some(Mapping::new(100, 100, obj(1), 0)),
                next: Some(Mapping::new(200, 200, obj(1), 100)),
            },
            Op::Remap {
                unmap: Mapping::new(200, 200, obj(1), 100),
                keep: true,
                prev: Some(Mapping::new(200, 100, obj(1), 100)),
                next: Some(Mapping::new(300, 100, obj(1), 200)),
            },
        ];
        assert_eq!(ops_of(&vm, req), want);
        assert_eq!(run(&mut vm, req).expect("valid"), want);
        assert!(want.iter().all(|op| op.affected().is_empty()));
        assert_eq!(
            layout(&vm),
            [
                (100, 100, obj(1), 0),
                (200, 100, obj(1), 100),
                (300, 100, obj(1), 200)
            ]
        );
        if links {
            let l = vm.link(ObjId::new(1).expect("non-zero")).expect("link");
            assert_eq!(l.mappings(), 3, "pieces stay on their object's link");
        }
        // Attributes can now be changed inside the range only.
        assert!(vm.set_flags(200, 100, VaFlags::from_bits(1 << 5)).is_some());
    }
}

/// Case S2: two mappings, each straddling one edge; mappings inside the range and holes are
/// untouched; NULL mappings split the same way.
#[test]
fn split_straddling_both_edges() {
    let maps = [
        Mapping::new(100, 100, None, 0),
        Mapping::new(200, 50, obj(2), 0),
        Mapping::new(300, 100, obj(3), 40),
    ];
    let mut vm = vm_with(true, false, &maps);
    let req = Request::Split {
        addr: 150,
        len: 200,
    };
    let want = [
        Op::Remap {
            unmap: maps[0],
            keep: true,
            prev: Some(Mapping::new(100, 50, None, 0)),
            next: Some(Mapping::new(150, 50, None, 50)),
        },
        Op::Remap {
            unmap: maps[2],
            keep: true,
            prev: Some(Mapping::new(300, 50, obj(3), 40)),
            next: Some(Mapping::new(350, 50, obj(3), 90)),
        },
    ];
    assert_eq!(ops_of(&vm, req), want);
    assert_eq!(run(&mut vm, req).expect("valid"), want);
    assert_eq!(vm.len(), 5);
}

/// Case S3: edges that already fall on mapping boundaries or in holes: no ops, no change.
#[test]
fn split_on_existing_edges_is_a_noop() {
    let maps = [
        Mapping::new(100, 100, obj(1), 0),
        Mapping::new(300, 100, obj(1), 0),
    ];
    let mut vm = vm_with(true, false, &maps);
    let gen = vm.generation();
    for (addr, len) in [(100, 100), (100, 300), (50, 20), (200, 100)] {
        let req = Request::Split { addr, len };
        assert_eq!(run(&mut vm, req).expect("valid"), [], "{addr} {len}");
    }
    assert_eq!(vm.generation(), gen);
}

// ---------------------------------------------------------------------------------------------
// Merge policy.

fn merge_case(
    maps: &[Mapping],
    req: Mapping,
    want_ops: &[Op],
    want: &[(u64, u64, Option<ObjId>, u64)],
) {
    for links in [true, false] {
        let mut vm = vm_with(links, true, maps);
        assert_eq!(ops_of(&vm, Request::Map(req)), want_ops, "links {links}");
        assert_eq!(run(&mut vm, Request::Map(req)).expect("valid"), want_ops);
        assert_eq!(layout(&vm), want, "links {links}");
        assert!(vm.is_merge_canonical());
        // With the policy off: drm_gpuvm's ops, nothing merged.
        let mut plain = vm_with(links, false, maps);
        let ops = run(&mut plain, Request::Map(req)).expect("valid");
        assert_eq!(ops.last(), Some(&Op::Map(req)));
    }
}

/// Case G1: contiguous with the left neighbour (E11 of drm_gpuvm, which keeps two mappings).
#[test]
fn merge_left_neighbour() {
    merge_case(
        &[Mapping::new(100, 100, obj(1), 0)],
        Mapping::new(200, 100, obj(1), 100),
        &[
            Op::Unmap {
                va: Mapping::new(100, 100, obj(1), 0),
                keep: true,
            },
            Op::Map(Mapping::new(100, 200, obj(1), 0)),
        ],
        &[(100, 200, obj(1), 0)],
    );
}

/// Case G2: contiguous with the right neighbour only; the left one has other flags.
#[test]
fn merge_right_neighbour() {
    let f = VaFlags::from_bits(1 << 4);
    merge_case(
        &[
            Mapping::new(100, 100, obj(1), 0).with_flags(f),
            Mapping::new(300, 100, obj(1), 200),
        ],
        Mapping::new(200, 100, obj(1), 100),
        &[
            Op::Unmap {
                va: Mapping::new(300, 100, obj(1), 200),
                keep: true,
            },
            Op::Map(Mapping::new(200, 200, obj(1), 100)),
        ],
        &[(100, 100, obj(1), 0), (200, 200, obj(1), 100)],
    );
}

/// Case G3: both neighbours qualify: one mapping.
#[test]
fn merge_both_neighbours() {
    merge_case(
        &[
            Mapping::new(100, 100, obj(1), 0),
            Mapping::new(300, 100, obj(1), 200),
        ],
        Mapping::new(200, 100, obj(1), 100),
        &[
            Op::Unmap {
                va: Mapping::new(100, 100, obj(1), 0),
                keep: true,
            },
            Op::Unmap {
                va: Mapping::new(300, 100, obj(1), 200),
                keep: true,
            },
            Op::Map(Mapping::new(100, 300, obj(1), 0)),
        ],
        &[(100, 300, obj(1), 0)],
    );
}

/// Case G4: a map of the same backing strictly inside a mapping (E4: drm_gpuvm leaves three
/// mappings) is one exact `Unmap` with keep = true and a `Map` of the old range: nothing changes.
#[test]
fn merge_inside_same_backing() {
    merge_case(
        &[Mapping::new(100, 300, obj(1), 0)],
        Mapping::new(200, 100, obj(1), 100),
        &[
            Op::Unmap {
                va: Mapping::new(100, 300, obj(1), 0),
                keep: true,
            },
            Op::Map(Mapping::new(100, 300, obj(1), 0)),
        ],
        &[(100, 300, obj(1), 0)],
    );
}

/// Case G5: NULL (sparse) mappings with equal flags merge whatever their offsets; keep = true
/// for them (a sparse PTE is a sparse PTE). A different object in between stops nothing else.
#[test]
fn merge_null_with_equal_flags() {
    let s = VaFlags::SPARSE;
    let maps = [
        Mapping::new(0, 100, None, 0).with_flags(s),
        Mapping::new(100, 100, obj(4), 0),
        Mapping::new(200, 100, None, 200).with_flags(s),
    ];
    let req = Mapping::new(100, 100, None, 0).with_flags(s);
    for links in [true, false] {
        let mut vm = vm_with(links, true, &maps);
        let ops = run(&mut vm, Request::Map(req)).expect("valid");
        assert_eq!(
            ops,
            [
                Op::Unmap {
                    va: maps[0],
                    keep: true
                },
                Op::Unmap {
                    va: maps[1],
                    keep: false
                },
                Op::Unmap {
                    va: maps[2],
                    keep: true
                },
                Op::Map(Mapping::new(0, 300, None, 0u64.wrapping_sub(100)).with_flags(s)),
            ]
        );
        assert_eq!(vm.len(), 1);
    }
}

/// The step API tells a visitor which part of a merged map is new.
#[test]
fn merged_map_step_reports_the_requested_range() {
    struct Seen(Vec<(std::ops::Range<u64>, std::ops::Range<u64>)>);
    impl gpuva::SmVisitor<u64> for Seen {
        type Error = std::convert::Infallible;
        fn step_map<'op>(
            &mut self,
            op: gpuva::OpMap<'op, u64>,
        ) -> Result<gpuva::OpMapped<'op>, Self::Error> {
            self.0.push((op.range(), op.requested()));
            Ok(op.insert(1))
        }
        fn step_remap<'op>(
            &mut self,
            op: gpuva::OpRemap<'op, u64>,
        ) -> Result<gpuva::OpRemapped<'op>, Self::Error> {
            Ok(op.remap())
        }
        fn step_unmap<'op>(
            &mut self,
            op: gpuva::OpUnmap<'op, u64>,
        ) -> Result<gpuva::OpUnmapped<'op>, Self::Error> {
            Ok(op.remove())
        }
    }
    let mut vm = vm_with(false, true, &[Mapping::new(100, 100, obj(1), 0)]);
    let req = Request::Map(Mapping::new(200, 50, obj(1), 100));
    let mut claim = vm.reserve_boxed(vm.nodes_for(&req)).expect("alloc");
    let mut seen = Seen(Vec::new());
    vm.step(req, &mut claim, &mut seen).expect("valid");
    assert_eq!(seen.0, [(100..250, 200..250)]);
    vm.release(claim).expect("own");
}

// ---------------------------------------------------------------------------------------------
// The reference model.

/// Page -> translation (object, object offset of the page, flags); NULL pages have offset 0
/// (their offsets carry no meaning, and merging NULL mappings changes them).
fn random_request(rng: &mut Rng, space: u64, splits: bool) -> Request {
    let addr = rng.below(space);
    let max = if rng.below(6) == 0 { 60 } else { 8 };
    let len = (1 + rng.below(max)).min(space - addr);
    let kind = rng.below(if splits { 12 } else { 9 });
    match kind {
        0..=4 => {
            let o = obj(rng.below(4));
            // Contiguous offsets often, so merges happen.
            let offset = if rng.below(2) == 0 {
                addr
            } else {
                rng.below(16)
            };
            let flags = VaFlags::from_bits(if rng.below(4) == 0 { 1 << 3 } else { 0 });
            Request::Map(Mapping::new(addr, len, o, offset).with_flags(flags))
        }
        5 | 6 => Request::Unmap { addr, len },
        7 => Request::UnmapObject {
            obj: ObjId::new(1 + rng.below(3)).expect("non-zero"),
        },
        8 => Request::Prefetch { addr, len },
        _ => Request::Split { addr, len },
    }
}

/// Random sequences of every request kind against the reference model (see the file docs).
#[test]
fn random_requests_match_the_reference_model() {
    let space = 300;
    for (seed, links, merge, splits) in [
        (1, true, false, true),
        (2, false, false, true),
        (3, true, true, false),
        (4, false, true, false),
        (5, true, true, true),
        (6, false, true, true),
    ] {
        let mut rng = Rng::new(seed);
        let mut vm = Vm::new(0..space, 0..0).expect("geometry").with_merge(merge);
        if !links {
            vm = vm.without_links();
        }
        let mut pages = Addrs::new();
        let mut list = BTreeMap::new();
        for i in 0..3000 {
            let req = random_request(&mut rng, space, splits);
            let walked = ops_of(&vm, req);
            let stepped = run(&mut vm, req).expect("valid request");
            assert_eq!(walked, stepped, "seed {seed} request {i} {req:?}");
            replay(&mut list, &stepped);
            let now: Vec<Mapping> = vm.iter().map(|v| v.mapping()).collect();
            assert!(
                list.values().copied().eq(now.iter().copied()),
                "request {i} {req:?}"
            );
            reference(&mut pages, &req);
            assert_eq!(addrs_of(&vm), pages, "seed {seed} request {i} {req:?}");
            match req {
                Request::Map(m) => {
                    let v = vm.lookup(m.addr).expect("mapped");
                    if merge {
                        assert!(v.end() >= m.end(), "a map ends up in one mapping");
                    } else {
                        assert_eq!(v.range(), m.range());
                    }
                }
                Request::Split { addr, len } => {
                    for at in [addr, addr + len] {
                        assert!(vm.lookup(at).is_none_or(|v| v.addr() == at), "cut at {at}");
                    }
                    assert!(stepped.iter().all(|op| matches!(
                        op,
                        Op::Remap {
                            keep: true,
                            prev: Some(_),
                            next: Some(_),
                            ..
                        }
                    )));
                }
                Request::UnmapObject { obj } => {
                    assert!(vm.iter().all(|v| v.obj() != Some(obj)));
                    assert!(stepped
                        .iter()
                        .all(|op| matches!(op, Op::Unmap { keep: false, .. })));
                    assert!(stepped
                        .windows(2)
                        .all(|w| w[0].affected().end <= w[1].affected().start));
                }
                Request::Prefetch { addr, len } => {
                    let want: Vec<Op> = vm
                        .iter_range(addr..addr + len)
                        .map(|v| Op::Prefetch(v.mapping()))
                        .collect();
                    assert_eq!(stepped, want);
                }
                Request::Unmap { .. } => {}
            }
            if merge && !splits {
                assert!(vm.is_merge_canonical(), "seed {seed} request {i} {req:?}");
            }
        }
    }
}

/// With the policy off, a VA space is exactly drm_gpuvm's: the same ops and the same tree as a
/// VA space that never heard of merging, for maps and unmaps.
#[test]
fn merge_off_is_drm_gpuvm() {
    let mut rng = Rng::new(11);
    let mut a = Vm::new(0..300, 0..0).expect("geometry");
    let mut b = Vm::new(0..300, 0..0).expect("geometry").with_merge(false);
    let mut on = Vm::new(0..300, 0..0).expect("geometry").with_merge(true);
    let mut differ = 0;
    for _ in 0..2000 {
        let req = random_request(&mut rng, 300, false);
        if !matches!(req, Request::Map(_) | Request::Unmap { .. }) {
            continue;
        }
        assert_eq!(run(&mut a, req), run(&mut b, req));
        let _ = run(&mut on, req);
        differ += usize::from(layout(&a) != layout(&on));
    }
    assert_eq!(layout(&a), layout(&b));
    assert!(differ > 0, "the merging space must differ somewhere");
    assert!(on.len() < a.len(), "merging keeps fewer mappings");
}

// ---------------------------------------------------------------------------------------------
// Bounds and refusals.

/// The extension requests and merged maps on trees filled to their height bound (every granule
/// mapped, one mapping each, in ascending, descending and random orders): no request draws more
/// than `nodes_for`, and the split bound is twice an unmap's.
#[test]
fn extension_bounds_hold_on_full_trees() {
    const G: u64 = 0x1000;
    const N: u64 = 8192;
    for (order, links) in [(0, true), (1, true), (2, true), (0, false), (2, false)] {
        let mut vm = GpuVm::<u64, BoxNode<u64>>::with_granule(0..N * G, 0..0, G)
            .expect("geometry")
            .with_merge(true);
        if !links {
            vm = vm.without_links();
        }
        let b = vm.bounds();
        assert_eq!(
            vm.nodes_for(&Request::Split { addr: 0, len: G }),
            2 * b.unmap
        );
        assert_eq!(vm.nodes_for(&Request::Prefetch { addr: 0, len: G }), 0);
        let mut rng = Rng::new(order + 100);
        let mut slots: Vec<u64> = (0..N / 2).collect();
        match order {
            1 => slots.reverse(),
            2 => {
                for i in (1..slots.len()).rev() {
                    let j = usize::try_from(rng.below(i as u64 + 1)).unwrap_or(0);
                    slots.swap(i, j);
                }
            }
            _ => {}
        }
        // Two-granule mappings of objects 1..=5, never mergeable with each other (offset 0).
        for s in &slots {
            let o = obj(1 + s % 5);
            run(&mut vm, Request::Map(Mapping::new(s * 2 * G, 2 * G, o, 0))).expect("fill");
        }
        assert_eq!(vm.len() as u64, N / 2);
        for _ in 0..120 {
            let a = rng.below(N - 64) * G;
            let len = (1 + rng.below(40)) * G;
            let o = obj(1 + rng.below(5));
            for req in [
                Request::Split { addr: a, len },
                Request::Split {
                    addr: a + G,
                    len: G,
                },
                Request::Prefetch { addr: a, len },
                // Contiguous with whatever covers `a - G`'s translation when the object matches.
                Request::Map(Mapping::new(a, G, o, (a / G % 2) * G)),
            ] {
                run(&mut vm, req).expect("valid");
            }
        }
        run(
            &mut vm,
            Request::UnmapObject {
                obj: ObjId::new(3).expect("non-zero"),
            },
        )
        .expect("valid");
        assert!(vm.iter().all(|v| v.obj() != obj(3)));
    }
}

/// Every refused extension request changes nothing: invalid ranges, short and foreign claims.
#[test]
fn rejected_extension_requests_change_nothing() {
    let maps = [
        Mapping::new(100, 300, obj(1), 0),
        Mapping::new(500, 10, obj(2), 0),
    ];
    let mut vm = vm_with(true, true, &maps);
    let mut other = Vm::new(0..1000, 0..0).expect("geometry");
    let snap = |vm: &Vm| (layout(vm), vm.generation(), vm.len(), vm.claimed_nodes());
    let before = snap(&vm);
    let o1 = ObjId::new(1).expect("non-zero");
    for req in [
        Request::Split { addr: 200, len: 0 },
        Request::Split {
            addr: 900,
            len: 200,
        },
        Request::Prefetch {
            addr: u64::MAX,
            len: 1,
        },
    ] {
        assert!(
            matches!(run(&mut vm, req), Err(StepError::Range(_))),
            "{req:?}"
        );
        assert_eq!(snap(&vm), before);
    }
    for req in [
        Request::Split { addr: 200, len: 10 },
        Request::UnmapObject { obj: o1 },
        Request::Prefetch { addr: 0, len: 1000 },
        Request::Map(Mapping::new(400, 100, obj(1), 400)),
    ] {
        let need = vm.nodes_for(&req);
        let mut foreign = other.reserve_boxed(need + 1).expect("alloc");
        let r = vm.step(req, &mut foreign, &mut Apply::new(0));
        assert_eq!(r, Err(StepError::Foreign), "{req:?}");
        other.release(foreign).expect("own");
        if need > 0 {
            let mut short = vm.reserve_boxed(need - 1).expect("alloc");
            let r = vm.step(req, &mut short, &mut Apply::new(0));
            assert!(
                matches!(r, Err(StepError::ReservationTooSmall { .. })),
                "{req:?}"
            );
            vm.release(short).expect("own");
        }
        assert_eq!(snap(&vm), before, "{req:?}");
    }
    // A stale plan of an extension request is refused too.
    let plan = vm
        .request_ops(Request::UnmapObject { obj: o1 })
        .expect("valid");
    run(&mut vm, Request::Split { addr: 200, len: 10 }).expect("valid");
    let mut claim = vm.reserve_boxed(0).expect("alloc");
    let r = vm.apply_ops(&plan, &mut claim, &mut Apply::new(0));
    assert_eq!(r, Err(gpuva::ApplyError::Stale));
}
